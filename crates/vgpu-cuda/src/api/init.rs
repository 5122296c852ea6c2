//! Initialisation and versions: `cuInit`, `cuDriverGetVersion`.

use std::ffi::c_int;

use super::{guard, put, IMPLEMENTED_VERSION};
use crate::types::CUresult;

/// `cuInit`: flags must be 0.
#[no_mangle]
pub extern "C" fn cuInit(flags: u32) -> CUresult {
    guard("cuInit", || {
        if flags != 0 {
            return CUresult::CUDA_ERROR_INVALID_VALUE;
        }
        match crate::driver::init() {
            Ok(_) => CUresult::CUDA_SUCCESS,
            Err(e) => e,
        }
    })
}

/// `cuDriverGetVersion`: the CUDA version this library implements. Works before `cuInit`, as
/// NVIDIA's does (CuPy calls it first).
///
/// # Safety
/// `version` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    // SAFETY: forwarded from the caller.
    guard("cuDriverGetVersion", || unsafe {
        put(version, IMPLEMENTED_VERSION)
    })
}
