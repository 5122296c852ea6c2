//! Picks the backend at start-up: `auto` (cuda where a GPU is usable, else cpu), `cpu` or `cuda`.

use super::cpu::CpuBackend;
use super::cuda::{self, CudaBackend};
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

/// How many devices `choice` offers here: cuda (and `auto` where cuda is usable) the CUDA
/// devices, cpu one per configured cpu device.
pub fn device_count(choice: BackendChoice, cfg: &MediatorConfig) -> Result<usize, SelectError> {
    let cpu = cfg.cpu_devices.max(1) as usize;
    match choice {
        BackendChoice::Cpu => Ok(cpu),
        BackendChoice::Auto => Ok(cuda::probe().unwrap_or(cpu)),
        BackendChoice::Cuda => {
            cuda::probe().map_err(|e| SelectError::CudaUnavailable(e.to_string()))
        }
    }
}

fn cpu(cfg: &MediatorConfig, index: usize) -> Box<dyn Backend> {
    let mem = cfg.cpu_device_mem.map(|s| s.0).unwrap_or(CPU_DEVICE_MEM);
    Box::new(CpuBackend::with_slots(mem, cfg.cpu_slots as usize).numbered(index))
}

/// Opens device `index` of the chosen backend. `auto` opens cuda where libcuda loads, a GPU is
/// visible and the built-in kernels compile; otherwise cpu, saying why.
pub fn open(
    choice: BackendChoice,
    index: usize,
    cfg: &MediatorConfig,
) -> Result<Selected, SelectError> {
    match choice {
        BackendChoice::Cpu => Ok(Selected {
            backend: cpu(cfg, index),
            why: "cpu (requested)".into(),
        }),
        BackendChoice::Cuda => {
            let be = CudaBackend::open(index)
                .map_err(|e| SelectError::CudaUnavailable(e.to_string()))?;
            let why = format!("cuda (requested), {}", be.device_name());
            Ok(Selected {
                backend: Box::new(be),
                why,
            })
        }
        BackendChoice::Auto => match CudaBackend::open(index) {
            Ok(be) => {
                let why = format!("auto: cuda, {}", be.device_name());
                Ok(Selected {
                    backend: Box::new(be),
                    why,
                })
            }
            Err(e) => Ok(Selected {
                backend: cpu(cfg, index),
                why: format!("auto: cpu, {e}"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_gpu_is_a_clear_error_and_auto_falls_back() {
        let cfg = MediatorConfig::default();
        if cuda::probe().is_ok() {
            eprintln!(
                "SKIPPED (GPU present): cuda_without_gpu_is_a_clear_error_and_auto_falls_back"
            );
            return;
        }
        let e = open(BackendChoice::Cuda, 0, &cfg)
            .err()
            .expect("no GPU here");
        assert!(e.to_string().contains("backend cuda requested, but"), "{e}");
        assert!(device_count(BackendChoice::Cuda, &cfg).is_err());
        let s = open(BackendChoice::Auto, 0, &cfg).unwrap();
        assert!(s.why.starts_with("auto: cpu, "), "{}", s.why);
        assert_eq!(s.backend.info().backend, "cpu");
        assert_eq!(
            device_count(BackendChoice::Auto, &cfg).unwrap(),
            device_count(BackendChoice::Cpu, &cfg).unwrap()
        );
    }
}
