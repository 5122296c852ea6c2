//! 263e8860 (ZLUDA: CONTEXT_CHECKS; 15 words): cudart asks [2] about a context on some calls
//! and [3] once per copy. Both report "nothing set", as the driver always did in the peers'
//! traces.

use std::ffi::c_void;

use super::unknown::{self, unknown_slots};
use super::Table;
use crate::types::{CUcontext, CUresult};

pub(crate) static TABLE: Table<15> = Table({
    let mut w = Table::<15>::sized();
    w[2] = context_check as *const c_void;
    w[3] = check3 as *const c_void;
    unknown_slots!(w, unknown::CONTEXT_CHECKS; 1 4 5 6 7 8 9 10 11 12 13 14);
    w
});

/// [2] `(CUcontext, u32* out, void**)`: `*out = 0`, success.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe extern "C" fn context_check(
    _ctx: CUcontext,
    out: *mut u32,
    _detail: *mut *const c_void,
) -> CUresult {
    if !out.is_null() {
        // SAFETY: non-NULL, valid for a write (the caller's promise).
        unsafe { out.write(0) };
    }
    CUresult::CUDA_SUCCESS
}

/// [3] `()` → 0.
unsafe extern "C" fn check3() -> u32 {
    0
}
