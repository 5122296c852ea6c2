//! Initialisation, error strings and the system's versions.

use std::ffi::{c_char, c_int, c_uint, CStr};

use super::{put, put_str, run};
use crate::state;
use crate::types::NvmlReturn;

/// The CUDA version the guest's driver implements: what vgpu's `libcuda.so.1` answers to
/// `cuDriverGetVersion` (CUDA 13.0), which is what NVML reports as the CUDA driver version.
pub const CUDA_DRIVER_VERSION: c_int = 13000;

/// The NVML API version this library implements (`NVML_API_VERSION_STR` of NVML 13).
pub const NVML_VERSION: &str = "13";

/// `nvmlInit_v2`: finds the device (through vgpu's `libcuda.so.1` in this process where it is
/// there); `NVML_ERROR_DRIVER_NOT_LOADED` without one. Reference-counted.
#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    run("nvmlInit_v2", || err(state::init(0)))
}

/// `nvmlInit` (the first version, which initialised every device at once): the same here.
#[no_mangle]
pub extern "C" fn nvmlInit() -> NvmlReturn {
    run("nvmlInit", || err(state::init(0)))
}

/// `nvmlInitWithFlags`: with `NVML_INIT_FLAG_NO_GPUS` it succeeds without a device (count 0);
/// `NVML_INIT_FLAG_NO_ATTACH` changes nothing here (nothing is attached: queries read memory).
#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(flags: c_uint) -> NvmlReturn {
    run("nvmlInitWithFlags", || err(state::init(flags)))
}

/// `nvmlShutdown`: once per successful init; the last one lets the device go.
/// `NVML_ERROR_UNINITIALIZED` when nothing is initialised.
#[no_mangle]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    run("nvmlShutdown", || err(state::shutdown()))
}

fn err(r: NvmlReturn) -> Result<(), NvmlReturn> {
    if r == NvmlReturn::SUCCESS {
        Ok(())
    } else {
        Err(r)
    }
}

/// The text of an NVML error code (this library's own wording).
pub fn error_text(code: u32) -> &'static CStr {
    match code {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        5 => c"Already Initialized",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        8 => c"Insufficient External Power",
        9 => c"Driver Not Loaded",
        10 => c"Timeout",
        11 => c"Interrupt issue",
        12 => c"NVML Shared Library Not Found",
        13 => c"Function Not Found",
        14 => c"Corrupted infoROM",
        15 => c"GPU is lost",
        16 => c"Reset required",
        17 => c"Blocked by the operating system",
        18 => c"Library and driver versions differ",
        19 => c"In use by another client",
        20 => c"Insufficient Memory",
        21 => c"No data",
        22 => c"vGPU operation not available with ECC enabled",
        23 => c"Insufficient resources",
        24 => c"Frequency not supported",
        25 => c"Argument version mismatch",
        26 => c"Deprecated",
        27 => c"Not ready",
        28 => c"No GPU found",
        29 => c"Invalid state",
        30 => c"Reset type not supported",
        _ => c"Unknown Error",
    }
}

/// `nvmlErrorString`: a static string for any code (works before `nvmlInit`).
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: c_uint) -> *const c_char {
    error_text(result).as_ptr()
}

/// `nvmlSystemGetCudaDriverVersion`: the CUDA version of the guest's driver (works before
/// `nvmlInit`, as NVIDIA's does).
///
/// # Safety
/// `version` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> NvmlReturn {
    // SAFETY: forwarded from the caller.
    run("nvmlSystemGetCudaDriverVersion", || unsafe {
        put(version, CUDA_DRIVER_VERSION)
    })
}

/// `nvmlSystemGetCudaDriverVersion_v2`: the same.
///
/// # Safety
/// `version` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> NvmlReturn {
    // SAFETY: forwarded from the caller.
    run("nvmlSystemGetCudaDriverVersion_v2", || unsafe {
        put(version, CUDA_DRIVER_VERSION)
    })
}

/// `nvmlSystemGetNVMLVersion`: the NVML API version, `"13"` (NVIDIA appends its kernel
/// driver's version, which a vGPU has none of).
///
/// # Safety
/// `version` is NULL or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    // SAFETY: forwarded from the caller.
    run("nvmlSystemGetNVMLVersion", || unsafe {
        put_str(version, length, NVML_VERSION)
    })
}

/// `nvmlSystemGetDriverVersion`: NVIDIA's kernel driver version. A vGPU has no NVIDIA kernel
/// driver in the guest and the device-info page does not carry the host's, so after the usual
/// checks: `NVML_ERROR_NOT_SUPPORTED`.
///
/// # Safety
/// `version` is NULL or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    _length: c_uint,
) -> NvmlReturn {
    run("nvmlSystemGetDriverVersion", || {
        state::initialised()?;
        if version.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        Err(NvmlReturn::NOT_SUPPORTED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_text() {
        for c in (0..=30).chain([999, 12345]) {
            assert!(!error_text(c).to_bytes().is_empty(), "{c}");
        }
        assert_eq!(error_text(3), c"Not Supported");
        // SAFETY: nvmlErrorString returns a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(nvmlErrorString(9)) };
        assert_eq!(s, c"Driver Not Loaded");
    }

    #[test]
    fn the_cuda_version_is_what_vgpus_libcuda_implements() {
        assert_eq!(CUDA_DRIVER_VERSION, vgpucuda::api::IMPLEMENTED_VERSION);
    }
}
