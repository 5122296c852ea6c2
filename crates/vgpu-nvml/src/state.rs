//! The library's process-wide state: the reference count of `nvmlInit` / `nvmlShutdown`
//! and the device they opened.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::source::Source;
use crate::types::{DeviceSt, NvmlDevice, NvmlReturn, INIT_FLAG_NO_GPUS};

/// The one device's handle: its address is the `nvmlDevice_t` programs get.
pub static HANDLE: DeviceSt = DeviceSt { _private: 0 };

/// The `nvmlDevice_t` of the device.
pub fn handle() -> NvmlDevice {
    std::ptr::addr_of!(HANDLE).cast_mut()
}

#[derive(Debug, Default)]
struct State {
    /// Successful `nvmlInit*` calls not yet matched by `nvmlShutdown`.
    refs: u32,
    /// The device; `None` when initialised with `NVML_INIT_FLAG_NO_GPUS` and none was found.
    source: Option<Arc<Source>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    refs: 0,
    source: None,
});

fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `nvmlInit*`: the first call finds the device; later ones count.
pub fn init(flags: u32) -> NvmlReturn {
    let mut st = lock();
    if st.refs > 0 {
        st.refs += 1;
        return NvmlReturn::SUCCESS;
    }
    match Source::open() {
        Ok(src) => st.source = Some(Arc::new(src)),
        Err(e) => {
            if crate::unsupported::warnings_enabled() {
                eprintln!("vgpu libnvidia-ml: {e}");
            }
            if flags & INIT_FLAG_NO_GPUS == 0 {
                return NvmlReturn::DRIVER_NOT_LOADED;
            }
            st.source = None;
        }
    }
    st.refs = 1;
    NvmlReturn::SUCCESS
}

/// `nvmlShutdown`: the last one closes the device (when this library opened it).
pub fn shutdown() -> NvmlReturn {
    let mut st = lock();
    if st.refs == 0 {
        return NvmlReturn::UNINITIALIZED;
    }
    st.refs -= 1;
    if st.refs == 0 {
        st.source = None;
    }
    NvmlReturn::SUCCESS
}

/// Whether NVML is initialised.
pub fn initialised() -> Result<(), NvmlReturn> {
    if lock().refs == 0 {
        return Err(NvmlReturn::UNINITIALIZED);
    }
    Ok(())
}

/// The number of devices (0 or 1); `NVML_ERROR_UNINITIALIZED` before `nvmlInit`.
pub fn count() -> Result<u32, NvmlReturn> {
    let st = lock();
    if st.refs == 0 {
        return Err(NvmlReturn::UNINITIALIZED);
    }
    Ok(u32::from(st.source.is_some()))
}

/// The device, when NVML is initialised and there is one.
pub fn source() -> Result<Arc<Source>, NvmlReturn> {
    let st = lock();
    if st.refs == 0 {
        return Err(NvmlReturn::UNINITIALIZED);
    }
    st.source.clone().ok_or(NvmlReturn::INVALID_ARGUMENT)
}

/// The device named by handle `h`: `NVML_ERROR_UNINITIALIZED` before `nvmlInit`,
/// `NVML_ERROR_INVALID_ARGUMENT` for anything but the handle this library gave out.
pub fn device(h: NvmlDevice) -> Result<Arc<Source>, NvmlReturn> {
    let src = source()?;
    if h != handle() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    Ok(src)
}
