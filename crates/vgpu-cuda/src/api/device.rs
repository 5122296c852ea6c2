//! Device queries, answered from the device-info page read at `cuInit` (no round trip). The
//! process sees one device, ordinal 0.

use std::ffi::{c_char, c_int, c_uint, CStr};

use super::{put, run};
use crate::driver;
use crate::types::{CUdevice, CUresult, CUuuid};

/// The one device's handle.
pub const DEVICE: CUdevice = 0;

/// The driver, if `dev` is its device.
fn device(dev: CUdevice) -> Result<&'static driver::Driver, CUresult> {
    let d = driver::get()?;
    if dev != DEVICE {
        return Err(CUresult::CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(d)
}

/// Writes `s` into the caller's buffer of `len` bytes, truncated to `len - 1` bytes and
/// NUL-terminated.
///
/// # Safety
/// `out` is NULL or valid for `len` bytes of writes.
unsafe fn put_c_str(out: *mut c_char, len: c_int, s: &str) -> Result<CUresult, CUresult> {
    if out.is_null() || len <= 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    // SAFETY: `out` is valid for `len` bytes (the caller's promise) and n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), out, n);
        out.add(n).write(0);
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuDeviceGetCount`.
///
/// # Safety
/// `count` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    run("cuDeviceGetCount", || {
        driver::get()?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(count, 1) })
    })
}

/// `cuDeviceGet`.
///
/// # Safety
/// `device` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    run("cuDeviceGet", || {
        driver::get()?;
        if ordinal != 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_DEVICE);
        }
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(device, DEVICE) })
    })
}

/// `cuDeviceGetName`: the name, truncated to `len - 1` bytes and NUL-terminated.
///
/// # Safety
/// `name` is NULL or valid for `len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    run("cuDeviceGetName", || {
        let d = device(dev)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_c_str(name, len, &vgpu_abi::regs::get_str(&d.info.name)) }
    })
}

/// `cuDeviceGetAttribute`. The attribute is taken as an integer: a program may pass any value,
/// and an unknown one is `CUDA_ERROR_INVALID_VALUE`.
///
/// # Safety
/// `pi` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    run("cuDeviceGetAttribute", || {
        let d = device(dev)?;
        let a = usize::try_from(attrib).map_err(|_| CUresult::CUDA_ERROR_INVALID_VALUE)?;
        let v = d
            .info
            .attribute(a)
            .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        // What the host GPU supports but this driver does not offer reads as absent.
        let v = if crate::features::unsupported(a) {
            0
        } else if a == crate::features::CAN_MAP_HOST_MEMORY {
            i32::from(v != 0 && crate::pinned::device_address_of_heap().is_some())
        } else if a == crate::features::MEMORY_POOLS {
            // Pools are this library's own, on any device vgpud serves.
            1
        } else if a == crate::features::VIRTUAL_MEMORY_MANAGEMENT {
            // The host GPU's answer, if vgpud offers the commands.
            i32::from(v != 0 && super::vmm::supported())
        } else {
            v
        };
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pi, v) })
    })
}

/// `cuDeviceTotalMem_v2`: the VM's quota (at most the physical device's memory).
///
/// # Safety
/// `bytes` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    run("cuDeviceTotalMem_v2", || {
        let d = device(dev)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(bytes, d.info.total_mem as usize) })
    })
}

/// `cuDeviceTotalMem` (the CUDA 3.1 signature: a 32-bit count, saturated).
///
/// # Safety
/// `bytes` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    run("cuDeviceTotalMem", || {
        let d = device(dev)?;
        let v = u32::try_from(d.info.total_mem).unwrap_or(u32::MAX);
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(bytes, v) })
    })
}

fn uuid(dev: CUdevice, out: *mut CUuuid) -> Result<CUresult, CUresult> {
    let d = device(dev)?;
    let u = CUuuid {
        bytes: d.info.uuid.map(|b| b as c_char),
    };
    // SAFETY: `out` is NULL or valid for a write (the entry point's caller's promise).
    Ok(unsafe { put(out, u) })
}

/// `cuDeviceGetUuid`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(out: *mut CUuuid, dev: CUdevice) -> CUresult {
    run("cuDeviceGetUuid", || uuid(dev, out))
}

/// `cuDeviceGetUuid_v2`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(out: *mut CUuuid, dev: CUdevice) -> CUresult {
    run("cuDeviceGetUuid_v2", || uuid(dev, out))
}

/// The PCI bus id string, `dddd:bb:dd.0`.
fn pci_bus_id(d: &driver::Driver) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.0",
        d.info.pci_domain, d.info.pci_bus, d.info.pci_device
    )
}

/// `cuDeviceGetPCIBusId`.
///
/// # Safety
/// `out` is NULL or valid for `len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(
    out: *mut c_char,
    len: c_int,
    dev: CUdevice,
) -> CUresult {
    run("cuDeviceGetPCIBusId", || {
        let d = device(dev)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_c_str(out, len, &pci_bus_id(d)) }
    })
}

/// `cuDeviceGetByPCIBusId`: accepts the forms `dddd:bb:dd.f`, `bb:dd.f`, in any case.
///
/// # Safety
/// `dev` is NULL or valid for a write; `id` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, id: *const c_char) -> CUresult {
    run("cuDeviceGetByPCIBusId", || {
        let d = driver::get()?;
        if id.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL and NUL-terminated (the caller's promise).
        let want = unsafe { CStr::from_ptr(id) }
            .to_string_lossy()
            .to_ascii_lowercase();
        let ours = pci_bus_id(d);
        if want == ours || ours.ends_with(&format!(":{want}")) && want.len() == 7 {
            // SAFETY: forwarded from the caller.
            Ok(unsafe { put(dev, DEVICE) })
        } else {
            Err(CUresult::CUDA_ERROR_INVALID_DEVICE)
        }
    })
}

/// `cuDeviceComputeCapability` (deprecated; from the attributes).
///
/// # Safety
/// `major` and `minor` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceComputeCapability(
    major: *mut c_int,
    minor: *mut c_int,
    dev: CUdevice,
) -> CUresult {
    run("cuDeviceComputeCapability", || {
        let d = device(dev)?;
        if major.is_null() || minor.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let a = |i| d.info.attribute(i).unwrap_or(0);
        // SAFETY: both non-NULL and valid for writes (the caller's promise).
        unsafe {
            major.write(a(75));
            minor.write(a(76));
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuDeviceCanAccessPeer`: one device, so no peer.
///
/// # Safety
/// `can` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceCanAccessPeer(
    can: *mut c_int,
    dev: CUdevice,
    peer: CUdevice,
) -> CUresult {
    run("cuDeviceCanAccessPeer", || {
        device(dev)?;
        device(peer)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(can, 0) })
    })
}
