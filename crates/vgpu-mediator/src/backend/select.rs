//! Picks the backend at start-up: `auto` (cuda where a GPU is usable, else cpu), `cpu` or `cuda`.

use super::cpu::CpuBackend;
use super::Backend;
use crate::config::{BackendChoice, MediatorConfig};

/// Default "device memory" of the cpu backend.
pub const CPU_DEVICE_MEM: u64 = 16 << 30;

/// Why no backend could be opened.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// `cuda` was asked for and is not usable here.
    #[error("backend cuda requested, but {0}; use --backend cpu or auto")]
    CudaUnavailable(String),
}

/// An opened backend and a sentence saying why it was chosen (logged at start-up).
pub struct Selected {
    /// The backend of one device.
    pub backend: Box<dyn Backend>,
    /// Why this backend (e.g. "auto: no libcuda").
    pub why: String,
}

/// How many devices `choice` offers here (the cpu backend: one per configured cpu device).
pub fn device_count(choice: BackendChoice, cfg: &MediatorConfig) -> Result<usize, SelectError> {
    let _ = cfg;
    match choice {
        BackendChoice::Cpu | BackendChoice::Auto => Ok(1),
        BackendChoice::Cuda => Err(SelectError::CudaUnavailable(
            "this vgpud has no cuda backend yet".into(),
        )),
    }
}

/// Opens device `index` of the chosen backend.
pub fn open(
    choice: BackendChoice,
    index: usize,
    cfg: &MediatorConfig,
) -> Result<Selected, SelectError> {
    let _ = index;
    let mem = cfg.cpu_device_mem.map(|s| s.0).unwrap_or(CPU_DEVICE_MEM);
    match choice {
        BackendChoice::Cpu => Ok(Selected {
            backend: Box::new(CpuBackend::new(mem)),
            why: "cpu (requested)".into(),
        }),
        BackendChoice::Auto => Ok(Selected {
            backend: Box::new(CpuBackend::new(mem)),
            why: "cpu (auto: this vgpud has no cuda backend built in yet)".into(),
        }),
        BackendChoice::Cuda => Err(SelectError::CudaUnavailable(
            "this vgpud has no cuda backend yet".into(),
        )),
    }
}
