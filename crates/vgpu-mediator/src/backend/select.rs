//! Picks the backend at start-up: `auto` (cuda where a GPU is usable, else cpu), `cpu` or `cuda`,
//! and where VMs' contexts live (`fault_isolation`: cuda defaults to one worker process per VM,
//! see [`super::isolated`]).

use super::cpu::CpuBackend;
use super::cuda::{self, CudaBackend};
use super::isolated::{IsolatedBackend, WorkerKind, WorkerSpec};
use super::Backend;
use crate::config::{BackendChoice, DeviceWait, FaultIsolation, MediatorConfig};
use std::path::PathBuf;

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

/// The binary workers run: this very executable (still right if the file was replaced).
const SELF_EXE: &str = "/proc/self/exe";

fn worker_spec(cfg: &MediatorConfig, index: usize, kind: WorkerKind) -> WorkerSpec {
    WorkerSpec {
        exe: PathBuf::from(SELF_EXE),
        kind,
        device: index,
        poll_us: cfg.poll_us,
        block: cfg.device_wait == DeviceWait::Block,
        call_timeout: WorkerSpec::call_timeout_for(cfg.max_kernel_us),
    }
}

fn cpu(cfg: &MediatorConfig, index: usize) -> (Box<dyn Backend>, &'static str) {
    let mem = cfg.cpu_device_mem.map(|s| s.0).unwrap_or(CPU_DEVICE_MEM);
    let be = CpuBackend::with_slots(mem, cfg.cpu_slots as usize).numbered(index);
    match cfg
        .fault_isolation
        .unwrap_or(FaultIsolation::default_for(false))
    {
        FaultIsolation::None => (Box::new(be), ""),
        FaultIsolation::Process => {
            let kind = WorkerKind::Cpu {
                mem,
                slots: cfg.cpu_slots,
            };
            let iso = IsolatedBackend::new(
                worker_spec(cfg, index, kind),
                be.info(),
                be.orders_streams(),
            );
            (Box::new(iso), ", each VM in its own worker process")
        }
    }
}

/// Wraps an opened cuda device as configured: by default each VM's context in a worker
/// process (the device opened here only describes it), else every context inside vgpud.
fn cuda(be: CudaBackend, cfg: &MediatorConfig, index: usize) -> (Box<dyn Backend>, &'static str) {
    match cfg
        .fault_isolation
        .unwrap_or(FaultIsolation::default_for(true))
    {
        FaultIsolation::Process => {
            let iso = IsolatedBackend::new(
                worker_spec(
                    cfg,
                    index,
                    WorkerKind::Cuda {
                        accounting: cfg.cuda_kernel_accounting,
                    },
                ),
                be.info(),
                be.orders_streams(),
            );
            (Box::new(iso), ", each VM in its own worker process")
        }
        FaultIsolation::None => (
            Box::new(be.with_blocking_wait(cfg.device_wait == DeviceWait::Block)),
            ", all VMs in vgpud's process (fault_isolation = \"none\": a fault breaks every VM)",
        ),
    }
}

/// Opens device `index` of the chosen backend. `auto` opens cuda where libcuda loads, a GPU is
/// visible and the built-in kernels compile; otherwise cpu, saying why.
pub fn open(
    choice: BackendChoice,
    index: usize,
    cfg: &MediatorConfig,
) -> Result<Selected, SelectError> {
    match choice {
        BackendChoice::Cpu => {
            let (backend, how) = cpu(cfg, index);
            Ok(Selected {
                backend,
                why: format!("cpu (requested){how}"),
            })
        }
        BackendChoice::Cuda => {
            let be = CudaBackend::open(index)
                .map_err(|e| SelectError::CudaUnavailable(e.to_string()))?
                .with_kernel_accounting(cfg.cuda_kernel_accounting);
            let name = be.device_name().to_string();
            let (backend, how) = cuda(be, cfg, index);
            Ok(Selected {
                backend,
                why: format!("cuda (requested), {name}{how}"),
            })
        }
        BackendChoice::Auto => match CudaBackend::open(index)
            .map(|b| b.with_kernel_accounting(cfg.cuda_kernel_accounting))
        {
            Ok(be) => {
                let name = be.device_name().to_string();
                let (backend, how) = cuda(be, cfg, index);
                Ok(Selected {
                    backend,
                    why: format!("auto: cuda, {name}{how}"),
                })
            }
            Err(e) => {
                let (backend, how) = cpu(cfg, index);
                Ok(Selected {
                    backend,
                    why: format!("auto: cpu, {e}{how}"),
                })
            }
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

    #[test]
    fn cpu_runs_in_process_unless_isolation_is_asked_for() {
        let mut cfg = MediatorConfig::default();
        let s = open(BackendChoice::Cpu, 0, &cfg).unwrap();
        assert_eq!(s.why, "cpu (requested)");
        assert!(!s.backend.orders_streams());
        cfg.fault_isolation = Some(FaultIsolation::Process);
        let s = open(BackendChoice::Cpu, 0, &cfg).unwrap();
        assert!(
            s.why.ends_with("each VM in its own worker process"),
            "{}",
            s.why
        );
        assert_eq!(s.backend.info().backend, "cpu");
        // The cpu device still relies on the executor to order streams.
        assert!(!s.backend.orders_streams());
    }
}
