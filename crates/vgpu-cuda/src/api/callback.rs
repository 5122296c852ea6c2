//! Host functions on streams: `cuLaunchHostFunc` and `cuStreamAddCallback`.
//!
//! CUDA runs the function once the stream's earlier work completed, and holds the stream's
//! later work until it returned. vgpud cannot express the second half: its only way to make a
//! stream wait is `STREAM_WAIT_EVENT`, a device-side wait for the latest record of an event
//! *at the time the wait is issued*, and every command completes on device progress alone, so
//! nothing the guest queues can stay blocked until a host function returns. Holding the work
//! back in the guest instead would take every submission path (and stream and context
//! synchronisation) waiting for the stream's pending functions.
//!
//! So the call waits for the stream's earlier work and runs the function itself, on the
//! calling thread, before it returns: both orders hold, at the price of the caller waiting
//! (docs/guest-cuda.md). A function that calls the CUDA API (which CUDA forbids) is not
//! refused.

use std::ffi::{c_uint, c_void};

use super::context::{self, require_current};
use super::run;
use super::stream::synchronize;
use crate::driver;
use crate::types::{CUhostFn, CUresult, CUstream, CUstreamCallback};

/// Waits for the earlier work of stream `s` (the legacy stream's implicit order included).
fn drain(s: CUstream, pt: bool) -> Result<(), CUresult> {
    synchronize(s, pt).map(drop)
}

/// `cuLaunchHostFunc`: not called when the context broke (as CUDA documents).
///
/// # Safety
/// `f` is NULL or a function that may be called with `data`.
unsafe fn host_func(
    s: CUstream,
    f: CUhostFn,
    data: *mut c_void,
    pt: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    let f = f.ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
    drain(s, pt)?;
    // SAFETY: the program's function with its own data, called once, as it asked.
    unsafe { f(data) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuStreamAddCallback`: the callback gets the stream's status, `CUDA_SUCCESS` or the
/// context's error; the call answers the same.
///
/// # Safety
/// `cb` is NULL or a function that may be called with `s`, a status and `data`.
unsafe fn add_callback(
    s: CUstream,
    cb: CUstreamCallback,
    data: *mut c_void,
    flags: c_uint,
    pt: bool,
) -> Result<CUresult, CUresult> {
    // Not `require_current`: a broken context is reported to the callback, not instead of it.
    context::resolve(context::current()).ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
    let d = driver::get()?;
    if flags != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let cb = cb.ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
    super::stream::resolve(s, pt)?;
    let status = d.sticky().and_then(|()| drain(s, pt));
    let code = status.err().unwrap_or(CUresult::CUDA_SUCCESS);
    // SAFETY: the program's callback with its own data, called once, as it asked.
    unsafe { cb(s, code, data) };
    status.map(|()| CUresult::CUDA_SUCCESS)
}

/// `cuLaunchHostFunc`.
///
/// # Safety
/// `f` is NULL or a function that may be called with `data`.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc(s: CUstream, f: CUhostFn, data: *mut c_void) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuLaunchHostFunc", || unsafe {
        host_func(s, f, data, false)
    })
}

/// `cuLaunchHostFunc_ptsz`.
///
/// # Safety
/// `f` is NULL or a function that may be called with `data`.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc_ptsz(
    s: CUstream,
    f: CUhostFn,
    data: *mut c_void,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuLaunchHostFunc_ptsz", || unsafe {
        host_func(s, f, data, true)
    })
}

/// `cuStreamAddCallback`.
///
/// # Safety
/// `cb` is NULL or a function that may be called with `s`, a status and `data`.
#[no_mangle]
pub unsafe extern "C" fn cuStreamAddCallback(
    s: CUstream,
    cb: CUstreamCallback,
    data: *mut c_void,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamAddCallback", || unsafe {
        add_callback(s, cb, data, flags, false)
    })
}

/// `cuStreamAddCallback_ptsz`.
///
/// # Safety
/// `cb` is NULL or a function that may be called with `s`, a status and `data`.
#[no_mangle]
pub unsafe extern "C" fn cuStreamAddCallback_ptsz(
    s: CUstream,
    cb: CUstreamCallback,
    data: *mut c_void,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamAddCallback_ptsz", || unsafe {
        add_callback(s, cb, data, flags, true)
    })
}
