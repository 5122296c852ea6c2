//! Modules and libraries of device code.

use std::ffi::c_int;

use super::{guard, put};
use crate::driver;
use crate::types::CUresult;

/// `CU_MODULE_EAGER_LOADING`.
pub const EAGER_LOADING: c_int = 1;
/// `CU_MODULE_LAZY_LOADING`.
pub const LAZY_LOADING: c_int = 2;

/// The loading mode `CUDA_MODULE_LOADING` asks for: `EAGER`, else lazy (NVIDIA's default
/// since CUDA 12.2).
pub fn loading_mode() -> c_int {
    match std::env::var("CUDA_MODULE_LOADING").as_deref() {
        Ok(v) if v.eq_ignore_ascii_case("eager") => EAGER_LOADING,
        _ => LAZY_LOADING,
    }
}

/// `cuModuleGetLoadingMode`.
///
/// # Safety
/// `mode` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetLoadingMode(mode: *mut c_int) -> CUresult {
    guard("cuModuleGetLoadingMode", || {
        if let Err(e) = driver::get() {
            return e;
        }
        // SAFETY: forwarded from the caller.
        unsafe { put(mode, loading_mode()) }
    })
}
