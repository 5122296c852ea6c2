//! Slots whose meaning nobody has worked out: each answers `CUDA_ERROR_NOT_SUPPORTED` and
//! reports itself once, named by its table's id and its index (`export table 21318c60[4]`), so a
//! program that needs one says which.

use std::sync::atomic::{AtomicU64, Ordering};

use super::ids;
use crate::types::CUresult;

/// The tables with such slots, by the index [`slot`] is instantiated with.
pub(crate) const CUDART_INTERFACE: usize = 0;
pub(crate) const TOOLS_RUNTIME_CALLBACK_HOOKS: usize = 1;
pub(crate) const TOOLS_TLS: usize = 2;
pub(crate) const CONTEXT_CHECKS: usize = 3;
pub(crate) const INTEGRITY_CHECK: usize = 4;
pub(crate) const T21318C60: usize = 5;
pub(crate) const T69A28E9F: usize = 6;
pub(crate) const DA9151D3: usize = 7;
pub(crate) const T1734DC26: usize = 8;

const TABLES: [[u8; 16]; 9] = [
    ids::CUDART_INTERFACE,
    ids::TOOLS_RUNTIME_CALLBACK_HOOKS,
    ids::TOOLS_TLS,
    ids::CONTEXT_CHECKS,
    ids::INTEGRITY_CHECK,
    ids::T21318C60,
    ids::T69A28E9F,
    ids::DA9151D3,
    ids::T1734DC26,
];

/// The slots already reported, a bit per slot: the hot path (some of these slots are called on
/// every cuBLAS call) is one atomic load. Two words cover the largest table (93 words); a slot
/// beyond them is still reported, through the name set alone.
static SEEN: [[AtomicU64; 2]; TABLES.len()] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; TABLES.len()];

/// The name a slot is reported under.
pub(crate) fn name(table: usize, slot: usize) -> String {
    let id = TABLES[table];
    format!(
        "export table {:02x}{:02x}{:02x}{:02x}[{slot}]",
        id[0], id[1], id[2], id[3]
    )
}

fn called(table: usize, slot: usize) -> CUresult {
    let bit = 1u64 << (slot % 64);
    let first = match SEEN[table].get(slot / 64) {
        Some(w) => {
            w.load(Ordering::Relaxed) & bit == 0 && w.fetch_or(bit, Ordering::Relaxed) & bit == 0
        }
        None => true,
    };
    if first {
        return crate::unsupported::report_owned(name(table, slot));
    }
    CUresult::CUDA_ERROR_NOT_SUPPORTED
}

/// Slot `SLOT` of table `TABLE`. It takes no arguments: under the x86-64 System V ABI the caller
/// owns its arguments, so a function that ignores them may be called with any.
pub(crate) unsafe extern "C" fn slot<const TABLE: usize, const SLOT: usize>() -> CUresult {
    called(TABLE, SLOT)
}

/// Fills the listed slots of `$words` (a table under construction) with [`slot`] functions.
macro_rules! unknown_slots {
    ($words:ident, $table:expr; $($slot:literal)*) => {
        $(
            $words[$slot] = $crate::dark_api::unknown::slot::<{ $table }, $slot>
                as *const std::ffi::c_void;
        )*
    };
}
pub(crate) use unknown_slots;
