//! Kernel launches. Parameters are packed by the layout vgpud reported for the function
//! (`kernelParams`, one pointer per parameter) or taken as one packed buffer (`extra` with
//! `CU_LAUNCH_PARAM_BUFFER_POINTER`/`_SIZE`). A launch is queued on its stream without waiting.

use std::ffi::{c_uint, c_void};

use vgpu_abi::cmd::{LaunchBody, MAX_INLINE_PARAMS, MAX_KERNEL_PARAMS};

use super::context::require_current;
use super::guard;
use super::module::{
    function, get_attribute, ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES, ATTR_MAX_THREADS_PER_BLOCK,
};
use super::stream::{resolve, stream};
use crate::driver;
use crate::params::{arena_for, ARENA};
use crate::types::{CUfunction, CUresult, CUstream};

/// `CU_LAUNCH_PARAM_END`.
const PARAM_END: usize = 0x00;
/// `CU_LAUNCH_PARAM_BUFFER_POINTER`.
const PARAM_BUFFER_POINTER: usize = 0x01;
/// `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const PARAM_BUFFER_SIZE: usize = 0x02;
/// `CU_LAUNCH_PARAM_END_AS_INT`'s longest list walked (a list without an end is an error).
const MAX_EXTRA: usize = 64;

/// The packed parameters of a launch.
///
/// # Safety
/// `params` is NULL or holds one valid pointer per parameter of `layout`, each to that many
/// bytes; `extra` is NULL or a `CU_LAUNCH_PARAM_END`-terminated list whose buffer entries point
/// to the buffer and to its `size_t` size.
unsafe fn pack(
    layout: &[(u32, u32)],
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<Vec<u8>, CUresult> {
    if !params.is_null() {
        let len = layout
            .iter()
            .map(|&(o, s)| o as usize + s as usize)
            .max()
            .unwrap_or(0);
        let mut buf = vec![0u8; len];
        for (i, &(o, s)) in layout.iter().enumerate() {
            // SAFETY: one pointer per parameter (the caller's promise).
            let src = unsafe { *params.add(i) };
            if src.is_null() {
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
            }
            // SAFETY: `src` points to the parameter's `s` bytes; `buf` holds o + s bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.cast::<u8>(),
                    buf.as_mut_ptr().add(o as usize),
                    s as usize,
                )
            };
        }
        return Ok(buf);
    }
    if extra.is_null() {
        return if layout.is_empty() {
            Ok(Vec::new())
        } else {
            Err(CUresult::CUDA_ERROR_INVALID_VALUE)
        };
    }
    let (mut ptr, mut size): (*const u8, Option<usize>) = (std::ptr::null(), None);
    let mut i = 0;
    loop {
        if i >= MAX_EXTRA {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: a terminated list (the caller's promise); entries come in pairs.
        let key = unsafe { *extra.add(i) } as usize;
        match key {
            PARAM_END => break,
            PARAM_BUFFER_POINTER => {
                // SAFETY: as above.
                ptr = unsafe { *extra.add(i + 1) }.cast();
            }
            PARAM_BUFFER_SIZE => {
                // SAFETY: as above; the value points to a size_t.
                let p = unsafe { *extra.add(i + 1) }.cast::<usize>();
                if p.is_null() {
                    return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
                }
                // SAFETY: points to the buffer's size_t size (the caller's promise).
                size = Some(unsafe { p.read_unaligned() });
            }
            _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        }
        i += 2;
    }
    match (ptr.is_null(), size) {
        (false, Some(n)) => {
            // SAFETY: the buffer holds `n` bytes (the caller's promise).
            Ok(unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec())
        }
        _ => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
    }
}

/// # Safety
/// As [`pack`].
#[allow(clippy::too_many_arguments)]
unsafe fn launch(
    f: CUfunction,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    s: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    let func = function(f.cast())?;
    if !driver::get()?.runs_kernels {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            if crate::unsupported::warnings_enabled() {
                eprintln!(
                    "vgpu libcuda: this vGPU (vgpud's cpu reference device) runs no program kernels: \
                     launches answer CUDA_ERROR_NOT_SUPPORTED"
                );
            }
        });
        return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
    }
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { pack(func.params(), params, extra) }?;
    if grid.contains(&0) || block.contains(&0) {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // A launch the driver would refuse fails at the call, as NVIDIA's does, not later on the
    // stream: the function's limits are read once and cached.
    let threads = block.iter().map(|&b| u64::from(b)).product::<u64>();
    let max_threads = get_attribute(f.cast(), ATTR_MAX_THREADS_PER_BLOCK)?;
    if threads > max_threads.max(0) as u64 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if shared > 0 {
        let max_shared = get_attribute(f.cast(), ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES)?;
        if u64::from(shared) > max_shared.max(0) as u64 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
    }
    if bytes.len() > MAX_INLINE_PARAMS {
        return launch_indirect(func.handle(), grid, block, shared, s, per_thread, &bytes);
    }
    let mut body = LaunchBody::new(func.handle(), grid, block, &bytes)
        .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
    body.shared_mem = shared;
    let st = stream(resolve(s, per_thread)?)?;
    // Queued: its completion is not waited for.
    drop(st.launch_body(body).map_err(|e| driver::error_of(&e))?);
    Ok(CUresult::CUDA_SUCCESS)
}

/// A launch whose parameters go through the staging arena ([`crate::params`]).
fn launch_indirect(
    func: u64,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    s: CUstream,
    per_thread: bool,
    bytes: &[u8],
) -> Result<CUresult, CUresult> {
    if bytes.len() > MAX_KERNEL_PARAMS as usize {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver::get()?;
    let st = stream(resolve(s, per_thread)?)?;
    let mut guard = ARENA.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(arena_for(&d.dev).ok_or(CUresult::CUDA_ERROR_NOT_SUPPORTED)?);
    }
    let arena = guard.as_mut().expect("made above");
    let (off, end) = arena
        .reserve(bytes.len() as u64)
        .map_err(|e| driver::error_of(&e))?;
    let queued = d
        .dev
        .write_staging(off, bytes)
        .and_then(|()| st.launch_indirect(func, grid, block, shared, off, bytes.len() as u32));
    match queued {
        Ok(p) => {
            arena.commit(end, p);
            Ok(CUresult::CUDA_SUCCESS)
        }
        Err(e) => {
            arena.cancel(end);
            Err(driver::error_of(&e))
        }
    }
}

macro_rules! launch_kernel {
    ($name:ident, $pt:expr) => {
        /// `cuLaunchKernel`: `f` is a `CUfunction` or a `CUkernel`.
        ///
        /// # Safety
        /// `params` and `extra` as the CUDA driver API describes them.
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            shared: c_uint,
            s: CUstream,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            guard(stringify!($name), || {
                // SAFETY: forwarded from the caller.
                unsafe { launch(f, [gx, gy, gz], [bx, by, bz], shared, s, params, extra, $pt) }
                    .unwrap_or_else(|e| e)
            })
        }
    };
}
launch_kernel!(cuLaunchKernel, false);
launch_kernel!(cuLaunchKernel_ptsz, true);
