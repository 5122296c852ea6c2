//! `cuGetErrorName` and `cuGetErrorString`, with NVIDIA's driver's own names and descriptions
//! (`data/error-table.tsv`, made on the GPU host by `gen/error_table.c`).

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use super::{guard, put};
use crate::types::CUresult;

const TABLE_TSV: &str = include_str!("../../data/error-table.tsv");

/// code → (name, description), NUL-terminated for C.
fn table() -> &'static HashMap<u32, (CString, CString)> {
    static T: OnceLock<HashMap<u32, (CString, CString)>> = OnceLock::new();
    T.get_or_init(|| {
        TABLE_TSV
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                let code = f.next()?.parse().ok()?;
                let name = CString::new(f.next()?).ok()?;
                let desc = CString::new(f.next().unwrap_or("")).ok()?;
                Some((code, (name, desc)))
            })
            .collect()
    })
}

/// The driver's name of `code` ("CUDA_ERROR_INVALID_VALUE"), if it has one.
pub fn name(code: u32) -> Option<&'static str> {
    table().get(&code).and_then(|(n, _)| n.to_str().ok())
}

fn lookup(code: u32, out: *mut *const c_char, desc: bool) -> CUresult {
    match table().get(&code) {
        Some((n, d)) => {
            let s = if desc { d } else { n };
            // SAFETY: forwarded from the entry point's caller.
            unsafe { put(out, s.as_ptr()) }
        }
        None => {
            // SAFETY: as above; NVIDIA's driver also clears the string on an unknown code.
            let _ = unsafe { put(out, std::ptr::null()) };
            CUresult::CUDA_ERROR_INVALID_VALUE
        }
    }
}

/// `cuGetErrorName`. The code is taken as an integer: a program may pass any value.
///
/// # Safety
/// `p_str` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: u32, p_str: *mut *const c_char) -> CUresult {
    guard("cuGetErrorName", || lookup(error, p_str, false))
}

/// `cuGetErrorString`.
///
/// # Safety
/// `p_str` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: u32, p_str: *mut *const c_char) -> CUresult {
    guard("cuGetErrorString", || lookup(error, p_str, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptions_are_the_drivers() {
        assert_eq!(name(0), Some("CUDA_SUCCESS"));
        assert_eq!(name(1), Some("CUDA_ERROR_INVALID_VALUE"));
        assert_eq!(name(801), Some("CUDA_ERROR_NOT_SUPPORTED"));
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: a valid out-pointer.
        let rc = unsafe { cuGetErrorString(1, &mut p) };
        assert_eq!(rc, CUresult::CUDA_SUCCESS);
        // SAFETY: the table's strings are NUL-terminated and live forever.
        let s = unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap();
        assert_eq!(s, "invalid argument");
    }
}
