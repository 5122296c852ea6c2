//! What this library shares with vgpu's `libnvidia-ml.so.1` in the same process.
//!
//! vgpud takes one client per VM socket, so a process must not attach twice: when PyTorch asks
//! NVML for the device count before it initialises CUDA, and CUDA next, both must use one
//! connection. vgpu's NVML library loads `libcuda.so.1` and, when it is this library, asks it
//! for the device through these exports instead of opening its own. NVML only reads BAR2's
//! register page and device-info page (both written by vgpud); it never touches the rings.
//!
//! The names are vgpu's own (NVIDIA's driver has none of them), versioned so that a later
//! change of meaning gets a new name rather than a silent mismatch.

use std::ffi::c_int;

/// Opens the device as `cuInit` would, without initialising the driver API for the program,
/// and returns the address of BAR2's mapping in this process (mapped for the life of the
/// process), its length in `*len`; NULL when there is no usable vGPU.
///
/// # Safety
/// `len` is valid for a write of a `usize`.
#[no_mangle]
pub unsafe extern "C" fn vgpuSharedBar2_v1(len: *mut usize) -> *mut u8 {
    let opened = std::panic::catch_unwind(crate::driver::open_shared);
    let Ok(Ok(d)) = opened else {
        return std::ptr::null_mut();
    };
    if len.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: non-NULL, and the caller promises it is valid for a write.
    unsafe { len.write(d.view.len()) };
    d.view.raw_range(0, d.view.len())
}

/// Whether the program called `cuInit` successfully in this process (it then counts as a
/// process running on the device): 1 or 0.
#[no_mangle]
pub extern "C" fn vgpuCudaInitialised_v1() -> c_int {
    c_int::from(crate::driver::initialised())
}
