//! Entry-point lookup: `cuGetProcAddress` (the CUDA 11 signature) and `cuGetProcAddress_v2`,
//! and the private tables of `cuGetExportTable`. All of them work before `cuInit`: the CUDA
//! runtime looks everything up first.

use std::ffi::{c_char, c_int, c_void, CStr};

use super::guard;
use crate::proc_address::{self, QueryResult};
use crate::types::{CUresult, CUuuid};

/// CUresult values the table records as numbers.
fn result_of(rc: u32) -> CUresult {
    match rc {
        0 => CUresult::CUDA_SUCCESS,
        1 => CUresult::CUDA_ERROR_INVALID_VALUE,
        500 => CUresult::CUDA_ERROR_NOT_FOUND,
        _ => CUresult::CUDA_ERROR_UNKNOWN,
    }
}

/// # Safety
/// `symbol` is NULL or a NUL-terminated string; `pfn` and `status` are NULL or valid for a
/// write.
/// `v1` is the CUDA 11 entry point, which reports a symbol it cannot hand out as
/// `CUDA_ERROR_NOT_FOUND` and leaves `*pfn` alone; `_v2` answers success with `*pfn = NULL`
/// and the reason in `*status` (both measured on NVIDIA's driver). Any error leaves the
/// out-pointers untouched.
unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
    v1: bool,
) -> CUresult {
    if symbol.is_null() || pfn.is_null() {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: non-NULL and NUL-terminated (the caller's promise).
    let name = unsafe { CStr::from_ptr(symbol) };
    let answer = match name.to_str() {
        Ok(s) => proc_address::lookup(s, version, flags),
        Err(_) => proc_address::lookup("", version, flags),
    };
    if answer.rc != 0 {
        return result_of(answer.rc);
    }
    if v1 && answer.status != QueryResult::Success {
        return CUresult::CUDA_ERROR_NOT_FOUND;
    }
    let f = answer
        .export
        .map_or(std::ptr::null_mut(), |(_, f)| f as *mut c_void);
    // SAFETY: `pfn` is non-NULL and valid for a write (the caller's promise).
    unsafe { pfn.write(f) };
    if !status.is_null() {
        // SAFETY: non-NULL, valid for a write (the caller's promise).
        unsafe { status.write(answer.status as c_int) };
    }
    CUresult::CUDA_SUCCESS
}

/// `cuGetProcAddress_v2`.
///
/// # Safety
/// As [`get_proc_address`].
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
    symbol_status: *mut c_int,
) -> CUresult {
    guard("cuGetProcAddress_v2", || {
        // SAFETY: forwarded from the caller.
        unsafe { get_proc_address(symbol, pfn, cuda_version, flags, symbol_status, false) }
    })
}

/// `cuGetProcAddress` (CUDA 11.3's signature, without the status out-pointer).
///
/// # Safety
/// As [`get_proc_address`].
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CUresult {
    guard("cuGetProcAddress", || {
        // SAFETY: forwarded from the caller; no status pointer.
        unsafe { get_proc_address(symbol, pfn, cuda_version, flags, std::ptr::null_mut(), true) }
    })
}

/// `cuGetExportTable`: the private tables the CUDA runtime needs ([`crate::dark_api`]),
/// `CUDA_ERROR_NOT_FOUND` for any other id.
///
/// # Safety
/// `table` is NULL or valid for a write; `id` is NULL or points to a `CUuuid`.
#[no_mangle]
pub unsafe extern "C" fn cuGetExportTable(
    table: *mut *const c_void,
    id: *const CUuuid,
) -> CUresult {
    guard("cuGetExportTable", || {
        if table.is_null() || id.is_null() {
            return CUresult::CUDA_ERROR_INVALID_VALUE;
        }
        // SAFETY: non-NULL, points to a CUuuid (the caller's promise).
        let bytes = unsafe { (*id).bytes }.map(|b| b as u8);
        match crate::dark_api::table(&bytes) {
            Some(t) => {
                // SAFETY: non-NULL, valid for a write (the caller's promise).
                unsafe { table.write(t) };
                CUresult::CUDA_SUCCESS
            }
            None => {
                // SAFETY: non-NULL, valid for a write (the caller's promise). A caller that
                // looks at the pointer rather than the result finds no table.
                unsafe { table.write(std::ptr::null()) };
                if crate::unsupported::tracing() {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    eprintln!("vgpu libcuda: cuGetExportTable: no table {hex}");
                }
                CUresult::CUDA_ERROR_NOT_FOUND
            }
        }
    })
}
