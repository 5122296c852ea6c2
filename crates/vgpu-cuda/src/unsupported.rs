//! What a program gets from a driver function this library does not implement:
//! `CUDA_ERROR_NOT_SUPPORTED`, and one line on stderr per function the first time it is called
//! (`VGPU_CUDA_LOG=off` silences it; `VGPU_CUDA_LOG=trace` also prints every call of an
//! implemented entry point with its result).

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::types::CUresult;

/// Names already reported.
static REPORTED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// Whether `VGPU_CUDA_LOG` allows warnings (anything but `off`, `0` or `none`).
pub fn warnings_enabled() -> bool {
    !matches!(
        std::env::var("VGPU_CUDA_LOG").as_deref(),
        Ok("off" | "0" | "none")
    )
}

/// Whether `VGPU_CUDA_LOG=trace` asks for one line per call of an implemented entry point
/// (its name and result), for finding what a program asked before it failed. Read once.
pub fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var("VGPU_CUDA_LOG").as_deref() == Ok("trace"))
}

/// Records a call of the unimplemented function `name` and answers it.
pub fn report(name: &'static str) -> CUresult {
    let first = REPORTED.lock().map(|mut s| s.insert(name)).unwrap_or(false);
    if first && warnings_enabled() {
        eprintln!("vgpu libcuda: {name} is not supported (CUDA_ERROR_NOT_SUPPORTED)");
    }
    CUresult::CUDA_ERROR_NOT_SUPPORTED
}

/// As [`report`], for a name made at run time (a private table's slot, `export table
/// 21318c60[4]`). Each distinct name is kept for the life of the process, like the static ones.
pub fn report_owned(name: String) -> CUresult {
    let first = REPORTED
        .lock()
        .map(|mut s| {
            !s.contains(name.as_str()) && s.insert(Box::leak(name.clone().into_boxed_str()))
        })
        .unwrap_or(false);
    if first && warnings_enabled() {
        eprintln!("vgpu libcuda: {name} is not supported (CUDA_ERROR_NOT_SUPPORTED)");
    }
    CUresult::CUDA_ERROR_NOT_SUPPORTED
}

/// The unimplemented functions called so far, in name order.
pub fn reported() -> Vec<&'static str> {
    REPORTED
        .lock()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}
