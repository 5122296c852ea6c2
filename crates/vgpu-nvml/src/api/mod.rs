//! The NVML entry points this library implements, one module per area of the API. Every entry
//! point runs its body through [`run`], so that a panic becomes an error code instead of
//! unwinding into C.

use std::ffi::{c_char, c_uint};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::types::NvmlReturn;

pub mod device;
pub mod system;
pub mod topology;
pub mod usage;

/// Runs an entry point's body; an error is its answer, a panic is reported once on stderr and
/// answered `NVML_ERROR_UNKNOWN`.
pub(crate) fn run(name: &'static str, body: impl FnOnce() -> Result<(), NvmlReturn>) -> NvmlReturn {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => NvmlReturn::SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => {
            eprintln!("vgpu libnvidia-ml: internal error in {name} (NVML_ERROR_UNKNOWN)");
            NvmlReturn::UNKNOWN
        }
    }
}

/// Writes `v` through an out-pointer the caller passed; `NVML_ERROR_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `p` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> Result<(), NvmlReturn> {
    if p.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, and the caller promises it is valid for a write of T.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Copies `s` and its NUL into the caller's buffer of `len` bytes:
/// `NVML_ERROR_INVALID_ARGUMENT` for NULL, `NVML_ERROR_INSUFFICIENT_SIZE` when it does not fit.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes of writes.
pub(crate) unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), NvmlReturn> {
    if buf.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    if (len as usize) < s.len() + 1 {
        return Err(NvmlReturn::INSUFFICIENT_SIZE);
    }
    // SAFETY: the buffer holds at least `s.len() + 1` bytes (checked) and is the caller's.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    Ok(())
}

/// `s` as a fixed C string field, NUL-padded (truncated to leave the NUL).
pub(crate) fn c_field<const N: usize>(s: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_go_out_whole_or_not_at_all() {
        let mut b = [0x55 as c_char; 8];
        // SAFETY: `b` has 8 bytes.
        unsafe {
            assert_eq!(put_str(b.as_mut_ptr(), 8, "1234567"), Ok(()));
            assert_eq!(b[7], 0);
            assert_eq!(
                put_str(b.as_mut_ptr(), 7, "1234567"),
                Err(NvmlReturn::INSUFFICIENT_SIZE)
            );
            assert_eq!(
                put_str(std::ptr::null_mut(), 8, "x"),
                Err(NvmlReturn::INVALID_ARGUMENT)
            );
        }
        let f: [c_char; 4] = c_field("abcdef");
        assert_eq!(f, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
    }

    #[test]
    fn a_panic_is_an_unknown_error() {
        assert_eq!(run("t", || panic!("boom")), NvmlReturn::UNKNOWN);
        assert_eq!(
            run("t", || Err(NvmlReturn::NOT_FOUND)),
            NvmlReturn::NOT_FOUND
        );
    }
}
