//! The driver API entry points this library implements, one module per area of the API.
//! Every entry point runs its body through [`guard`], so that a panic becomes an error code
//! instead of unwinding into C.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::types::CUresult;

pub mod callback;
pub mod context;
pub mod copy;
pub mod copy2d;
pub mod device;
pub mod error;
pub mod event;
pub mod graph;
pub mod host_memory;
pub mod init;
pub mod launch;
pub mod memory;
pub mod mempool;
pub mod memset2d;
pub mod module;
pub mod occupancy;
pub mod proc;
pub mod profiler;
pub mod stream;
pub mod tensormap;
pub mod vmm;

/// The CUDA version this library implements (`CUDA_VERSION` of the CUDA 13.0 headers).
pub const IMPLEMENTED_VERSION: i32 = 13000;

/// Runs an entry point's body; a panic is reported once on stderr and answered
/// `CUDA_ERROR_UNKNOWN`.
pub(crate) fn guard(name: &'static str, body: impl FnOnce() -> CUresult) -> CUresult {
    let rc = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(rc) => rc,
        Err(_) => {
            eprintln!("vgpu libcuda: internal error in {name} (CUDA_ERROR_UNKNOWN)");
            CUresult::CUDA_ERROR_UNKNOWN
        }
    };
    if crate::unsupported::tracing() {
        eprintln!("vgpu libcuda: {name} -> {rc:?}");
    }
    rc
}

/// [`guard`] for a body that answers its error as `Err`.
pub(crate) fn run(
    name: &'static str,
    body: impl FnOnce() -> Result<CUresult, CUresult>,
) -> CUresult {
    guard(name, || body().unwrap_or_else(|e| e))
}

/// Writes `v` through an out-pointer the caller passed; `CUDA_ERROR_INVALID_VALUE` for NULL.
///
/// # Safety
/// `p` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> CUresult {
    if p.is_null() {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: non-NULL, and the caller promises it is valid for a write of T.
    unsafe { p.write(v) };
    CUresult::CUDA_SUCCESS
}
