//! Thin wrappers over the CUDA driver API (cudarc's `sys` bindings, loaded at run time). This
//! module and [`super::nvrtc`] hold the backend's `unsafe` code; everything above them deals in
//! `Result<_, CUresult>` and opaque handles.
//!
//! Handles (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`) are raw driver
//! pointers. The driver validates them, and the callers in [`super`] only pass handles they
//! created and have not destroyed yet.

use cudarc::driver::sys::{
    self, CUcontext, CUdevice, CUdevice_attribute, CUdeviceptr, CUevent, CUfunction, CUjit_option,
    CUmodule, CUresult, CUstream,
};
use std::ffi::{c_void, CStr};
use std::mem::MaybeUninit;
use std::ptr;

/// A driver call's result.
pub type CuResult<T> = Result<T, CUresult>;

fn check(r: CUresult) -> CuResult<()> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(r)
    }
}

/// Whether `libcuda.so.1` can be loaded (never panics, unlike the first driver call when the
/// library is missing).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// Whether `libnvrtc.so` can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// `cuInit(0)`; call only after [`driver_present`].
pub fn init() -> CuResult<()> {
    // SAFETY: cuInit has no pointer arguments; the library is present (checked by callers).
    check(unsafe { sys::cuInit(0) })
}

/// Number of CUDA devices.
pub fn device_count() -> CuResult<usize> {
    let mut n = 0i32;
    // SAFETY: `n` is a valid out-pointer for the duration of the call.
    check(unsafe { sys::cuDeviceGetCount(&mut n) })?;
    Ok(n.max(0) as usize)
}

/// Device handle of ordinal `i`.
pub fn device(i: usize) -> CuResult<CUdevice> {
    let mut d = MaybeUninit::uninit();
    // SAFETY: `d` is a valid out-pointer; an out-of-range ordinal is an error, not UB.
    check(unsafe { sys::cuDeviceGet(d.as_mut_ptr(), i as i32) })?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { d.assume_init() })
}

/// The device's name.
pub fn device_name(d: CUdevice) -> CuResult<String> {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer is 256 bytes and its length is passed; the driver NUL-terminates.
    check(unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, d) })?;
    // SAFETY: NUL-terminated within the buffer (the driver guarantees it for len > 0).
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

/// The device's memory in bytes.
pub fn device_total_mem(d: CUdevice) -> CuResult<u64> {
    let mut n = 0usize;
    // SAFETY: `n` is a valid out-pointer.
    check(unsafe { sys::cuDeviceTotalMem_v2(&mut n, d) })?;
    Ok(n as u64)
}

/// A device attribute.
pub fn device_attribute(d: CUdevice, a: CUdevice_attribute) -> CuResult<i32> {
    let mut v = 0i32;
    // SAFETY: `v` is a valid out-pointer.
    check(unsafe { sys::cuDeviceGetAttribute(&mut v, a, d) })?;
    Ok(v)
}

/// Creates a context on `d` (it becomes current on this thread).
pub fn ctx_create(d: CUdevice) -> CuResult<CUcontext> {
    let mut c = ptr::null_mut();
    // SAFETY: `c` is a valid out-pointer; NULL creation parameters are allowed (no affinity,
    // no CIG); flags 0 = automatic scheduling.
    check(unsafe { sys::cuCtxCreate_v4(&mut c, ptr::null_mut(), 0, d) })?;
    Ok(c)
}

/// Pops the current context off this thread's stack (contexts are made current with
/// [`ctx_set_current`] only, so the stack never holds a stale one).
pub fn ctx_pop() -> CuResult<()> {
    let mut c = ptr::null_mut();
    // SAFETY: `c` is a valid out-pointer.
    check(unsafe { sys::cuCtxPopCurrent_v2(&mut c) })
}

/// Leaves no context current on this thread.
pub fn ctx_clear_current() -> CuResult<()> {
    // SAFETY: NULL is allowed: it unbinds (pops) the current context.
    check(unsafe { sys::cuCtxSetCurrent(ptr::null_mut()) })
}

/// Makes `c` current on this thread.
pub fn ctx_set_current(c: CUcontext) -> CuResult<()> {
    // SAFETY: `c` is a live context created by `ctx_create` (callers' invariant).
    check(unsafe { sys::cuCtxSetCurrent(c) })
}

/// Waits for all work of the current context.
pub fn ctx_synchronize() -> CuResult<()> {
    // SAFETY: no arguments; acts on the current context.
    check(unsafe { sys::cuCtxSynchronize() })
}

/// Destroys a context and everything in it (memory, streams, events, modules).
pub fn ctx_destroy(c: CUcontext) -> CuResult<()> {
    // SAFETY: `c` is a live context; the caller drops every handle of it afterwards.
    check(unsafe { sys::cuCtxDestroy_v2(c) })
}

/// `(least, greatest)` stream priority of the current context (e.g. `(0, -5)`).
pub fn stream_priority_range() -> CuResult<(i32, i32)> {
    let (mut least, mut greatest) = (0i32, 0i32);
    // SAFETY: both are valid out-pointers.
    check(unsafe { sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest) })?;
    Ok((least, greatest))
}

/// Page-locks `[p, p+len)` for DMA in the current context.
///
/// The caller keeps the range mapped until [`host_unregister`] (or the context's destruction).
pub fn host_register(p: *mut u8, len: usize) -> CuResult<()> {
    // SAFETY: the caller guarantees `[p, p+len)` is a live mapping; the driver pins its pages
    // and never dereferences beyond it. Flags 0: pinned for this context.
    check(unsafe { sys::cuMemHostRegister_v2(p.cast(), len, 0) })
}

/// Undoes [`host_register`].
pub fn host_unregister(p: *mut u8) -> CuResult<()> {
    // SAFETY: `p` was registered by `host_register` in the current context.
    check(unsafe { sys::cuMemHostUnregister(p.cast()) })
}

/// A stream with the given priority that does not synchronise with the legacy stream.
pub fn stream_create(priority: i32) -> CuResult<CUstream> {
    let mut s = ptr::null_mut();
    let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
    // SAFETY: `s` is a valid out-pointer.
    check(unsafe { sys::cuStreamCreateWithPriority(&mut s, flags, priority) })?;
    Ok(s)
}

/// An event with timing enabled.
pub fn event_create() -> CuResult<CUevent> {
    let mut e = ptr::null_mut();
    // SAFETY: `e` is a valid out-pointer; flags 0 = default (timing on).
    check(unsafe { sys::cuEventCreate(&mut e, 0) })?;
    Ok(e)
}

/// An event without timing (cheaper to record and to query): completion tokens.
pub fn event_create_untimed() -> CuResult<CUevent> {
    let mut e = ptr::null_mut();
    let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
    // SAFETY: `e` is a valid out-pointer.
    check(unsafe { sys::cuEventCreate(&mut e, flags) })?;
    Ok(e)
}

/// Records `e` on `s`.
pub fn event_record(e: CUevent, s: CUstream) -> CuResult<()> {
    // SAFETY: live event and stream of the current context.
    check(unsafe { sys::cuEventRecord(e, s) })
}

/// Whether `e` completed: `Ok(true)`, `Ok(false)` (not ready) or the error it ended with.
pub fn event_query(e: CUevent) -> CuResult<bool> {
    // SAFETY: live event of the current context.
    match unsafe { sys::cuEventQuery(e) } {
        CUresult::CUDA_SUCCESS => Ok(true),
        CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        r => Err(r),
    }
}

/// Milliseconds between two completed events.
pub fn event_elapsed_ms(start: CUevent, end: CUevent) -> CuResult<f32> {
    let mut ms = 0f32;
    // SAFETY: `ms` is a valid out-pointer; live events of the current context.
    check(unsafe { sys::cuEventElapsedTime_v2(&mut ms, start, end) })?;
    Ok(ms)
}

/// Makes `s` wait for `e`'s latest record.
pub fn stream_wait_event(s: CUstream, e: CUevent) -> CuResult<()> {
    // SAFETY: live stream and event of the current context.
    check(unsafe { sys::cuStreamWaitEvent(s, e, 0) })
}

/// Allocates device memory.
pub fn mem_alloc(size: u64) -> CuResult<CUdeviceptr> {
    let mut p = 0;
    let size = usize::try_from(size).map_err(|_| CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
    // SAFETY: `p` is a valid out-pointer.
    check(unsafe { sys::cuMemAlloc_v2(&mut p, size) })?;
    Ok(p)
}

/// Frees device memory.
pub fn mem_free(p: CUdeviceptr) -> CuResult<()> {
    // SAFETY: `p` was returned by `mem_alloc` in the current context and not freed since.
    check(unsafe { sys::cuMemFree_v2(p) })
}

/// Fills `len` bytes with `v`.
pub fn memset_d8(dst: CUdeviceptr, v: u8, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: `[dst, dst+len)` lies in one allocation of the current context (checked by the
    // virtual device); device memory is never dereferenced on the host.
    check(unsafe { sys::cuMemsetD8Async(dst, v, len as usize, s) })
}

/// Fills `count` 32-bit words with `v`.
pub fn memset_d32(dst: CUdeviceptr, v: u32, count: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: as `memset_d8`; the range is `count * 4` bytes of one allocation.
    check(unsafe { sys::cuMemsetD32Async(dst, v, count as usize, s) })
}

/// Host → device, asynchronous on `s`.
///
/// The caller keeps `[src, src+len)` mapped (and, for zero-copy DMA, registered) until the
/// copy has completed (an event recorded after it has).
pub fn memcpy_htod(dst: CUdeviceptr, src: *const u8, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: `src` points to `len` bytes of the VM's shared region, which stays mapped while
    // the VM's context lives (the caller's invariant); the device range was checked.
    check(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast::<c_void>(), len as usize, s) })
}

/// Device → host, asynchronous on `s` (same contract as [`memcpy_htod`]).
pub fn memcpy_dtoh(dst: *mut u8, src: CUdeviceptr, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: `dst` points to `len` bytes of the VM's shared region, mapped while the context
    // lives; the guest may race on those bytes but they are plain shared memory (no Rust
    // references exist to them).
    check(unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast::<c_void>(), src, len as usize, s) })
}

/// Device → device, asynchronous on `s`.
pub fn memcpy_dtod(dst: CUdeviceptr, src: CUdeviceptr, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: both ranges lie in allocations of the current context (checked).
    check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, len as usize, s) })
}

/// Loads a module image (PTX text or a cubin). `image` must end with a NUL for PTX. On failure
/// the JIT's error log comes back with the error.
pub fn module_load(image: &[u8]) -> Result<CUmodule, (CUresult, String)> {
    let mut m = ptr::null_mut();
    let mut log = vec![0u8; 8192];
    let mut opts = [
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    let mut vals: [*mut c_void; 2] = [log.as_mut_ptr().cast(), log.len() as *mut c_void];
    // SAFETY: `image` is a complete, NUL-terminated PTX text or cubin that outlives the call;
    // the option arrays have 2 entries each, the log buffer is 8 KiB as announced, and the
    // size option is passed by value in the pointer slot as the API specifies.
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            &mut m,
            image.as_ptr().cast(),
            opts.len() as u32,
            opts.as_mut_ptr(),
            vals.as_mut_ptr(),
        )
    };
    match check(r) {
        Ok(()) => Ok(m),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((e, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

/// Unloads a module.
pub fn module_unload(m: CUmodule) -> CuResult<()> {
    // SAFETY: `m` is a live module of the current context; its functions are forgotten.
    check(unsafe { sys::cuModuleUnload(m) })
}

/// A kernel of `m` by name.
pub fn module_function(m: CUmodule, name: &CStr) -> CuResult<CUfunction> {
    let mut f = ptr::null_mut();
    // SAFETY: valid out-pointer, live module, NUL-terminated name.
    check(unsafe { sys::cuModuleGetFunction(&mut f, m, name.as_ptr()) })?;
    Ok(f)
}

/// `(offset, size)` of every parameter of `f` (at most `max`).
pub fn function_params(f: CUfunction, max: usize) -> CuResult<Vec<(usize, usize)>> {
    let mut out = Vec::new();
    for i in 0..max {
        let (mut off, mut size) = (0usize, 0usize);
        // SAFETY: valid out-pointers and a live function.
        let r = unsafe { sys::cuFuncGetParamInfo(f, i, &mut off, &mut size) };
        match r {
            CUresult::CUDA_SUCCESS => out.push((off, size)),
            // Past the last parameter.
            CUresult::CUDA_ERROR_INVALID_VALUE => return Ok(out),
            e => return Err(e),
        }
    }
    Ok(out)
}

/// Launches `f` on `s`. `params[i]` points at the bytes of parameter `i`.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    f: CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    s: CUstream,
    params: &mut [*mut c_void],
) -> CuResult<()> {
    let kp = if params.is_empty() {
        ptr::null_mut()
    } else {
        params.as_mut_ptr()
    };
    // SAFETY: `f` and `s` are live handles of the current context; `params` has exactly one
    // pointer per kernel parameter (the function's parameter count, from
    // `function_params`), each pointing at at least that parameter's size of readable bytes
    // that outlive the call (the driver copies them before returning).
    check(unsafe {
        sys::cuLaunchKernel(
            f,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shared_mem,
            s,
            kp,
            ptr::null_mut(),
        )
    })
}
