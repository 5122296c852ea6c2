//! This library's own driver entry points that the tables build on, called through their
//! exported symbols (signatures from CUDA 13.0's cuda.h), so the tables need not know which
//! module implements them.

use std::ffi::{c_int, c_void};

use crate::types::{CUcontext, CUdevice, CUdevice_attribute, CUmodule, CUresult, CUuuid};

// The generated export table (build.rs) declares every export without its signature.
#[allow(clashing_extern_declarations)]
unsafe extern "C" {
    pub(crate) fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult;
    pub(crate) fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult;
    pub(crate) fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult;
    pub(crate) fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult;
    pub(crate) fn cuDriverGetVersion(version: *mut c_int) -> CUresult;
    pub(crate) fn cuDeviceGetCount(count: *mut c_int) -> CUresult;
    pub(crate) fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice) -> CUresult;
    pub(crate) fn cuDeviceGetAttribute(
        value: *mut c_int,
        attrib: CUdevice_attribute,
        dev: CUdevice,
    ) -> CUresult;
}

/// `Ok` for `CUDA_SUCCESS`, the code otherwise.
pub(crate) fn ok(rc: CUresult) -> Result<(), CUresult> {
    match rc {
        CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(e),
    }
}

/// The current context (`cuCtxGetCurrent`), which may be NULL.
pub(crate) fn current_context() -> Result<CUcontext, CUresult> {
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    ok(unsafe { cuCtxGetCurrent(&mut ctx) })?;
    Ok(ctx)
}
