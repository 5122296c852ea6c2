//! Compiles the built-in kernels (`kernels/builtins.cu`) with NVRTC into a cubin for the device.

use cudarc::nvrtc::{result, sys};
use std::ffi::CString;

/// The CUDA C source of the built-in kernels (shared with the native benchmark).
pub const BUILTINS_CU: &str = include_str!("../../../kernels/builtins.cu");

/// The NVRTC options for compute capability `major.minor` (also reported by the native
/// benchmark, which compiles the same source with [`compile_cubin`]).
pub fn options(major: i32, minor: i32) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
    ]
}

/// Compiles `src` for compute capability `major.minor`; returns the cubin, or NVRTC's log.
pub fn compile_cubin(src: &str, name: &str, major: i32, minor: i32) -> Result<Vec<u8>, String> {
    let src = CString::new(src).map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let name = CString::new(name).map_err(|_| "kernel file name contains a NUL".to_string())?;
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let opts = options(major, minor);
    // SAFETY: `prog` was created above and is destroyed only at the end of this function;
    // `src` and `name` outlive it.
    let out = unsafe { compile(prog, &opts) };
    // SAFETY: as above; destroyed exactly once.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` is a live program.
unsafe fn compile(prog: sys::nvrtcProgram, opts: &[String]) -> Result<Vec<u8>, String> {
    // SAFETY: `prog` is live (the caller's contract); options contain no NUL.
    if let Err(e) = unsafe { result::compile_program(prog, opts) } {
        // SAFETY: `prog` is live.
        let log = unsafe { result::get_program_log(prog) }.unwrap_or_default();
        let log: Vec<u8> = log
            .into_iter()
            .map(|c| c as u8)
            .take_while(|&c| c != 0)
            .collect();
        return Err(format!(
            "NVRTC could not compile the built-in kernels ({e:?}):\n{}",
            String::from_utf8_lossy(&log)
        ));
    }
    let mut size = 0usize;
    // SAFETY: `prog` is live and compiled; `size` is a valid out-pointer.
    let r = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(format!("nvrtcGetCUBINSize: {r:?} (size {size})"));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: the buffer holds exactly the `size` bytes NVRTC announced.
    let r = unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcGetCUBIN: {r:?}"));
    }
    Ok(cubin)
}
