//! Where this library reads the vGPU from.
//!
//! vgpud takes one client per VM socket, and a process must not attach twice: PyTorch asks NVML
//! for the device count before it initialises CUDA, and CUDA next. So when `libcuda.so.1` is
//! vgpu's, this library asks it for the device (its `vgpuSharedBar2_v1`, see
//! `crates/vgpu-cuda/src/shared.rs`) and reads the BAR2 it mapped. Only where no vgpu
//! `libcuda.so.1` can be loaded does it open the device itself, the same way
//! ([`Device::open_default`]). Either way it only reads the register page and the device-info
//! page that vgpud writes: no ring, no round trip.

use std::ffi::{c_int, c_void, CStr};

use vgpu_abi::{DeviceInfoPage, ShmView};
use vgpu_guest::device::device_info_page;
use vgpu_guest::{Device, DeviceInfo};

/// Why there is no device to answer for.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// vgpu's libcuda.so.1 found no usable vGPU.
    #[error("vgpu's libcuda.so.1 found no usable vGPU")]
    SharedNoDevice,
    /// Opening the device here failed.
    #[error("no vGPU: {0}")]
    Open(#[from] vgpu_guest::Error),
    /// The device publishes no device-info page.
    #[error("the vGPU publishes no device-info page (vgpud older than ABI 1.4)")]
    NoInfoPage,
}

/// `vgpuSharedBar2_v1` of vgpu's libcuda.so.1.
type SharedBar2 = unsafe extern "C" fn(len: *mut usize) -> *mut u8;
/// `vgpuCudaInitialised_v1` of vgpu's libcuda.so.1.
type CudaInitialised = extern "C" fn() -> c_int;

/// The device as this library reads it.
pub enum Source {
    /// BAR2 as vgpu's libcuda.so.1 in this process mapped it (for the life of the process).
    Shared {
        /// BAR2.
        view: ShmView,
        /// Whether the program initialised CUDA (it then runs on the device).
        cuda_initialised: CudaInitialised,
    },
    /// A device this library opened (no vgpu libcuda.so.1 here): closed at the last
    /// `nvmlShutdown`, which lets another process attach to the VM's socket.
    Own(Box<Device>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shared { .. } => f.write_str("Source::Shared"),
            Self::Own(d) => write!(f, "Source::Own({})", d.transport_description()),
        }
    }
}

/// The name programs load the CUDA driver by.
const LIBCUDA: &CStr = c"libcuda.so.1";

/// vgpu's libcuda.so.1's sharing entry points, when that is the library `libcuda.so.1` loads.
fn vgpu_libcuda() -> Option<(SharedBar2, CudaInitialised)> {
    // SAFETY: a NUL-terminated name; loading runs the library's initialisers, which for vgpu's
    // libcuda (and NVIDIA's) do no more than set up the library.
    let h = unsafe { libc::dlopen(LIBCUDA.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return None;
    }
    let sym = |name: &CStr| {
        // SAFETY: `h` is a live handle and `name` NUL-terminated.
        unsafe { libc::dlsym(h, name.as_ptr()) }
    };
    let (bar2, init) = (sym(c"vgpuSharedBar2_v1"), sym(c"vgpuCudaInitialised_v1"));
    if bar2.is_null() || init.is_null() {
        // Another libcuda.so.1 (not vgpu's): not ours to keep loaded.
        // SAFETY: `h` came from dlopen above and nothing of the library is used.
        unsafe { libc::dlclose(h) };
        return None;
    }
    // The handle is kept (never closed), so the library and BAR2's mapping stay.
    // SAFETY: both symbols are vgpu's exports with exactly these signatures
    // (crates/vgpu-cuda/src/shared.rs).
    unsafe {
        Some((
            std::mem::transmute::<*mut c_void, SharedBar2>(bar2),
            std::mem::transmute::<*mut c_void, CudaInitialised>(init),
        ))
    }
}

impl Source {
    /// Finds the device: through vgpu's libcuda.so.1 when it is there, else directly.
    pub fn open() -> Result<Source, SourceError> {
        let src = match vgpu_libcuda() {
            Some((bar2, cuda_initialised)) => {
                let mut len = 0usize;
                // SAFETY: `len` is valid for a write.
                let base = unsafe { bar2(&mut len) };
                if base.is_null() {
                    return Err(SourceError::SharedNoDevice);
                }
                // SAFETY: libcuda keeps BAR2 mapped (`len` bytes, page-aligned) for the life
                // of the process, and this library keeps libcuda loaded.
                let view = unsafe { ShmView::new(base, len) };
                Source::Shared {
                    view,
                    cuda_initialised,
                }
            }
            None => Source::Own(Box::new(Device::open_default()?)),
        };
        if src.info_page().is_none() {
            return Err(SourceError::NoInfoPage);
        }
        Ok(src)
    }

    /// A fresh reading of the register page.
    pub fn regs(&self) -> DeviceInfo {
        match self {
            Self::Shared { view, .. } => DeviceInfo::read(*view),
            Self::Own(d) => d.info(),
        }
    }

    /// A fresh reading of the device-info page (vgpud rewrites its memory figure when the VM's
    /// quota is reloaded).
    pub fn info_page(&self) -> Option<DeviceInfoPage> {
        match self {
            Self::Shared { view, .. } => device_info_page(*view),
            Self::Own(d) => d.device_info_page(),
        }
    }

    /// Whether this process runs on the device: it initialised CUDA through vgpu's libcuda.
    pub fn runs_cuda_here(&self) -> bool {
        match self {
            Self::Shared {
                cuda_initialised, ..
            } => cuda_initialised() != 0,
            Self::Own(_) => false,
        }
    }
}
