//! The driver's process-wide state: the device connection `cuInit` opens and the device-info
//! snapshot every query answers from.
//!
//! The device is the vGPU PCI device inside a VM, or the vgpud socket named by `VGPU_SOCKET`
//! for a host process or container. One device per process (ordinal 0).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use vgpu_abi::regs::off;
use vgpu_abi::{DeviceInfoPage, DeviceStatus, ShmView, Status};
use vgpu_guest::{Device, Error};

use crate::types::CUresult;

/// The environment variable naming the vgpud socket of a host process or container.
pub use vgpu_guest::SOCKET_ENV;

/// An open device and what it reported when it was opened.
pub struct Driver {
    /// The channel to vgpud.
    pub dev: Device,
    /// The device-info page as read at `cuInit`.
    pub info: DeviceInfoPage,
    /// BAR2, for the device status register (and for vgpu's NVML in this process).
    pub(crate) view: ShmView,
    /// Whether the device runs a program's own kernels (`CAP_MODULES`: the cuda backend; the
    /// cpu reference device loads modules but runs only its built-ins).
    pub runs_kernels: bool,
    /// Where the VM's context maps the staging area (ABI 1.6), looked up once.
    mapped_staging: OnceLock<Option<u64>>,
}

impl Driver {
    /// The device address of the staging area in the VM's context, where vgpud maps it (the
    /// cuda backend, ABI 1.6). Looked up once, after a round trip if it is not published yet
    /// (vgpud publishes it when the context is ready); a reset's new context, after a sticky
    /// error, is not looked at again.
    pub fn staging_device_address(&self) -> Option<u64> {
        *self.mapped_staging.get_or_init(|| {
            if !self.runs_kernels {
                return None;
            }
            self.dev.staging_device_address().or_else(|| {
                self.dev.nop().ok()?;
                self.dev.staging_device_address()
            })
        })
    }

    /// The staging area as the device sees it, `(device address, size)`, where it is mapped.
    pub fn mapped_staging(&self) -> Option<(u64, u64)> {
        Some((self.staging_device_address()?, self.dev.staging_size()))
    }

    /// This process's address of staging bytes `[off, off + len)` (inside BAR2's mapping).
    pub fn staging_ptr(&self, off: u64, len: u64) -> *mut u8 {
        let at = self.dev.layout().staging_offset + off;
        self.view.raw_range(at as usize, len as usize)
    }

    /// The error every call answers once the device context broke (a kernel faulted or ran
    /// past its time limit, vgpud fenced or stopped the device): sticky, as in CUDA, until the
    /// device is reset.
    pub fn sticky(&self) -> Result<(), CUresult> {
        let status = self.view.load_u32(off::DEVICE_STATUS);
        match DeviceStatus::from_raw(status) {
            Some(DeviceStatus::Ready | DeviceStatus::Reset) => Ok(()),
            Some(DeviceStatus::Error) => {
                let why = Status::from_raw(self.view.load_u32(off::LAST_ERROR));
                Err(match why {
                    Some(Status::KernelTimeout) => CUresult::CUDA_ERROR_LAUNCH_TIMEOUT,
                    Some(Status::ContextUnavailable) => CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE,
                    _ => CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
                })
            }
            Some(DeviceStatus::Fenced | DeviceStatus::Stopped) | None => {
                Err(CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE)
            }
        }
    }
}

static DRIVER: OnceLock<Result<Driver, CUresult>> = OnceLock::new();
/// Whether the program called `cuInit` successfully. The device may be open before that: vgpu's
/// `libnvidia-ml.so.1` in the same process opens it through [`open_shared`] (one connection
/// per process: vgpud takes one client per VM).
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The environment variable that bounds each wait of the driver, in seconds.
pub const TIMEOUT_ENV: &str = "VGPU_CUDA_TIMEOUT";

/// How long one wait may last: as NVIDIA's driver, which waits for a kernel however long it
/// runs, without a limit unless [`TIMEOUT_ENV`] sets one. A wait still ends when vgpud fences
/// the VM, stops, or (a host process's socket) goes away.
fn wait_limit() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map_or(Duration::MAX, Duration::from_secs_f64)
}

fn open() -> Result<Driver, CUresult> {
    let mut dev = Device::open_default().map_err(|e| {
        if crate::unsupported::warnings_enabled() {
            eprintln!("vgpu libcuda: no vGPU: {e}");
        }
        CUresult::CUDA_ERROR_NO_DEVICE
    })?;
    let Some(info) = dev.device_info_page() else {
        if crate::unsupported::warnings_enabled() {
            eprintln!(
                "vgpu libcuda: the vGPU publishes no device-info page (vgpud older than ABI 1.4)"
            );
        }
        return Err(CUresult::CUDA_ERROR_NO_DEVICE);
    };
    // The process keeps the device for its whole life: BAR2 stays mapped.
    let view = dev.shm();
    let runs_kernels = dev.info().capabilities & vgpu_abi::regs::CAP_MODULES != 0;
    // A thread waits as its current context's scheduling flag says.
    dev.set_wait_policy_source(crate::api::context::current_wait_policy);
    dev.set_timeout(wait_limit());
    Ok(Driver {
        dev,
        info,
        view,
        runs_kernels,
        mapped_staging: OnceLock::new(),
    })
}

/// Opens the device once (`cuInit`); later calls return the first outcome.
pub fn init() -> Result<&'static Driver, CUresult> {
    let d = open_shared()?;
    INITIALISED.store(true, Ordering::Release);
    Ok(d)
}

/// Opens the device once without initialising the driver API for the program: what vgpu's
/// NVML library in this process shares ([`crate::shared`]).
pub fn open_shared() -> Result<&'static Driver, CUresult> {
    DRIVER.get_or_init(open).as_ref().map_err(|e| *e)
}

/// Whether the program initialised the driver API (`cuInit` succeeded).
pub fn initialised() -> bool {
    INITIALISED.load(Ordering::Acquire)
}

/// The open device; `CUDA_ERROR_NOT_INITIALIZED` before a successful `cuInit`.
pub fn get() -> Result<&'static Driver, CUresult> {
    match DRIVER.get() {
        Some(Ok(d)) if initialised() => Ok(d),
        Some(_) | None => Err(CUresult::CUDA_ERROR_NOT_INITIALIZED),
    }
}

/// The CUDA error for a failed device operation: the device's sticky error when its context
/// broke (the operation failed because of it), else the operation's own.
pub fn error_of(e: &Error) -> CUresult {
    if let Some(Ok(d)) = DRIVER.get() {
        if let Err(sticky) = d.sticky() {
            return sticky;
        }
    }
    match e {
        Error::Command { status, .. } => status_error(*status),
        Error::InvalidArgument(_) => CUresult::CUDA_ERROR_INVALID_VALUE,
        Error::NotSupported(_) => CUresult::CUDA_ERROR_NOT_SUPPORTED,
        Error::Timeout { .. } => CUresult::CUDA_ERROR_LAUNCH_TIMEOUT,
        Error::Fenced { .. } | Error::Stopped => CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE,
        Error::NotFound(_) => CUresult::CUDA_ERROR_NO_DEVICE,
        _ => CUresult::CUDA_ERROR_UNKNOWN,
    }
}

/// The CUDA error for a command's failure status.
fn status_error(status: Status) -> CUresult {
    match status {
        Status::InvalidArgument | Status::StagingOutOfRange => CUresult::CUDA_ERROR_INVALID_VALUE,
        Status::InvalidAddress => CUresult::CUDA_ERROR_INVALID_VALUE,
        Status::OutOfMemory | Status::QuotaExceeded | Status::LimitExceeded => {
            CUresult::CUDA_ERROR_OUT_OF_MEMORY
        }
        Status::NotSupported | Status::UnknownOpcode => CUresult::CUDA_ERROR_NOT_SUPPORTED,
        Status::KernelFault => CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        Status::KernelTimeout => CUresult::CUDA_ERROR_LAUNCH_TIMEOUT,
        Status::InvalidFunction => CUresult::CUDA_ERROR_INVALID_HANDLE,
        Status::NotReady => CUresult::CUDA_ERROR_NOT_READY,
        Status::NotFound => CUresult::CUDA_ERROR_NOT_FOUND,
        Status::CaptureInvalidated => CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        Status::CaptureUnsupported => CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        Status::ContextLost | Status::ContextUnavailable | Status::Aborted => {
            CUresult::CUDA_ERROR_CONTEXT_IS_DESTROYED
        }
        Status::Ok | Status::Internal => CUresult::CUDA_ERROR_UNKNOWN,
    }
}

/// After a synchronising call: the error of earlier asynchronous work that vgpud refused (a
/// launch, a copy or a memset queued without waiting), reported once, as CUDA reports errors
/// of asynchronous work at the next synchronising call. The device's sticky error, when its
/// context broke, comes first.
pub fn unclaimed_error(d: &Driver) -> Result<(), CUresult> {
    d.sticky()?;
    match d.dev.take_unclaimed_error() {
        Some(status) => Err(status_error(status)),
        None => Ok(()),
    }
}
