//! What a program gets from an NVML function this library does not implement:
//! `NVML_ERROR_NOT_SUPPORTED`, and one line on stderr per function the first time it is called
//! (`VGPU_NVML_LOG=off` silences it).

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::types::NvmlReturn;

/// Names already reported.
static REPORTED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// Whether `VGPU_NVML_LOG` allows warnings (anything but `off`, `0` or `none`).
pub fn warnings_enabled() -> bool {
    !matches!(
        std::env::var("VGPU_NVML_LOG").as_deref(),
        Ok("off" | "0" | "none")
    )
}

/// Records a call of the unimplemented function `name` and answers it.
pub fn report(name: &'static str) -> NvmlReturn {
    let first = REPORTED.lock().map(|mut s| s.insert(name)).unwrap_or(false);
    if first && warnings_enabled() {
        eprintln!("vgpu libnvidia-ml: {name} is not supported (NVML_ERROR_NOT_SUPPORTED)");
    }
    NvmlReturn::NOT_SUPPORTED
}

/// The unimplemented functions called so far, in name order.
pub fn reported() -> Vec<&'static str> {
    REPORTED
        .lock()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}
