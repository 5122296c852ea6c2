//! Finding the device and what it is: count, handles, name, UUID, PCI location, compute
//! capability, brand and architecture, all from the device-info page.

use std::ffi::{c_char, c_int, c_uint, CStr};

use vgpu_abi::regs::get_str;
use vgpu_abi::{DeviceInfoPage, DeviceStatus};

use super::{c_field, put, put_str, run};
use crate::source::Source;
use crate::state;
use crate::types::{arch, brand, NvmlDevice, NvmlReturn, PciInfo, PCI_INFO_V1_WRITTEN};

/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR` / `_MINOR`: the slots of the device-info page.
const ATTR_CC_MAJOR: usize = 75;
const ATTR_CC_MINOR: usize = 76;

/// The device's info page, checked usable: `NVML_ERROR_GPU_IS_LOST` once vgpud stopped
/// serving it (nothing it says can be relied on any more).
pub(crate) fn info_of(src: &Source) -> Result<DeviceInfoPage, NvmlReturn> {
    if src.regs().status == Some(DeviceStatus::Stopped) {
        return Err(NvmlReturn::GPU_IS_LOST);
    }
    src.info_page().ok_or(NvmlReturn::GPU_IS_LOST)
}

/// The device of handle `h` and its info page.
pub(crate) fn device_info(h: NvmlDevice) -> Result<DeviceInfoPage, NvmlReturn> {
    info_of(&*state::device(h)?)
}

/// The UUID as NVML writes it: `GPU-` and the 16 bytes as 8-4-4-4-12 lower-case hex.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The PCI bus id, `domain:bus:device.0`, with a domain of `domain_digits` hex digits
/// (upper case, as NVML writes it).
pub fn bus_id(p: &DeviceInfoPage, domain_digits: usize) -> String {
    format!(
        "{:0w$X}:{:02X}:{:02X}.0",
        p.pci_domain,
        p.pci_bus,
        p.pci_device,
        w = domain_digits
    )
}

/// Whether `id` names the device's PCI location: `domain:bus:device.function` or
/// `bus:device.function` (domain 0), hex of any width and case, function 0.
pub fn bus_id_matches(p: &DeviceInfoPage, id: &str) -> bool {
    let (head, function) = match id.trim().rsplit_once('.') {
        Some(x) => x,
        None => return false,
    };
    let parts: Vec<&str> = head.split(':').collect();
    let nums: Option<Vec<u32>> = parts
        .iter()
        .chain([&function])
        .map(|s| u32::from_str_radix(s, 16).ok())
        .collect();
    let Some(nums) = nums else { return false };
    let (domain, bus, dev, func) = match nums[..] {
        [d, b, v, f] => (d, b, v, f),
        [b, v, f] => (0, b, v, f),
        _ => return false,
    };
    (domain, bus, dev, func) == (p.pci_domain, p.pci_bus, p.pci_device, 0)
}

/// The architecture of compute capability `major.minor`.
pub fn architecture(major: i32, minor: i32) -> u32 {
    match (major, minor) {
        (3, _) => arch::KEPLER,
        (5, _) => arch::MAXWELL,
        (6, _) => arch::PASCAL,
        (7, 0 | 2) => arch::VOLTA,
        (7, 5) => arch::TURING,
        (8, 9) => arch::ADA,
        (8, _) => arch::AMPERE,
        (9, _) => arch::HOPPER,
        (10..=12, _) => arch::BLACKWELL,
        _ => arch::UNKNOWN,
    }
}

/// The brand a device of this name is sold under (NVML's brand comes from the board; the
/// device-info page has only its name): a device that is no NVIDIA product, such as the cpu
/// reference device, is `NVML_BRAND_UNKNOWN`.
pub fn brand_of(name: &str) -> u32 {
    let has = |w: &str| name.split_whitespace().any(|t| t.eq_ignore_ascii_case(w));
    if has("GeForce") {
        brand::GEFORCE
    } else if has("TITAN") {
        brand::TITAN
    } else if has("Quadro") {
        brand::QUADRO
    } else if has("Tesla") {
        brand::TESLA
    } else if name.starts_with("NVIDIA RTX") {
        brand::NVIDIA_RTX
    } else if name.starts_with("NVIDIA ") {
        brand::NVIDIA
    } else {
        brand::UNKNOWN
    }
}

/// `nvmlDeviceGetCount_v2`: 1 (the vGPU), or 0 after `nvmlInitWithFlags(NVML_INIT_FLAG_NO_GPUS)`
/// found none.
///
/// # Safety
/// `count` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> NvmlReturn {
    // SAFETY: forwarded from the caller.
    run("nvmlDeviceGetCount_v2", || unsafe {
        put(count, state::count()?)
    })
}

/// `nvmlDeviceGetCount`: the same.
///
/// # Safety
/// `count` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> NvmlReturn {
    // SAFETY: forwarded from the caller.
    run("nvmlDeviceGetCount", || unsafe {
        put(count, state::count()?)
    })
}

fn by_index(index: c_uint, device: *mut NvmlDevice) -> Result<(), NvmlReturn> {
    if index >= state::count()? {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    // SAFETY: forwarded from the caller (NULL or valid for a write).
    unsafe { put(device, state::handle()) }
}

/// `nvmlDeviceGetHandleByIndex_v2`: index 0 is the vGPU.
///
/// # Safety
/// `device` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    run("nvmlDeviceGetHandleByIndex_v2", || by_index(index, device))
}

/// `nvmlDeviceGetHandleByIndex`: the same.
///
/// # Safety
/// `device` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    run("nvmlDeviceGetHandleByIndex", || by_index(index, device))
}

/// Reads the caller's NUL-terminated string; `NVML_ERROR_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `s` is NULL or NUL-terminated.
unsafe fn arg_str(s: *const c_char) -> Result<String, NvmlReturn> {
    if s.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL and NUL-terminated (the caller's promise).
    Ok(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
}

/// The handle of the device `matches` picks: `NVML_ERROR_NOT_FOUND` when it is not the vGPU.
fn find(
    device: *mut NvmlDevice,
    matches: impl FnOnce(&DeviceInfoPage) -> bool,
) -> Result<(), NvmlReturn> {
    if device.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    let src = state::source().map_err(|e| match e {
        // Initialised without a device: nothing matches.
        NvmlReturn::INVALID_ARGUMENT => NvmlReturn::NOT_FOUND,
        e => e,
    })?;
    if !matches(&info_of(&src)?) {
        return Err(NvmlReturn::NOT_FOUND);
    }
    // SAFETY: non-NULL (checked), valid for a write (the caller's promise).
    unsafe { put(device, state::handle()) }
}

/// `nvmlDeviceGetHandleByUUID`: the vGPU's UUID as [`nvmlDeviceGetUUID`] writes it (any case).
///
/// # Safety
/// `uuid` is NULL or NUL-terminated; `device` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    run("nvmlDeviceGetHandleByUUID", || {
        state::initialised()?;
        // SAFETY: forwarded from the caller.
        let want = unsafe { arg_str(uuid) }?;
        find(device, |p| {
            want.trim().eq_ignore_ascii_case(&uuid_string(&p.uuid))
        })
    })
}

fn by_bus_id(id: *const c_char, device: *mut NvmlDevice) -> Result<(), NvmlReturn> {
    state::initialised()?;
    // SAFETY: forwarded from the caller.
    let want = unsafe { arg_str(id) }?;
    find(device, |p| bus_id_matches(p, &want))
}

/// `nvmlDeviceGetHandleByPciBusId_v2`: the forms `domain:bus:device.function` and
/// `bus:device.function`, as [`nvmlDeviceGetPciInfo_v3`] and `cuDeviceGetPCIBusId` write them.
///
/// # Safety
/// `id` is NULL or NUL-terminated; `device` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    id: *const c_char,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    run("nvmlDeviceGetHandleByPciBusId_v2", || by_bus_id(id, device))
}

/// `nvmlDeviceGetHandleByPciBusId`: the same.
///
/// # Safety
/// `id` is NULL or NUL-terminated; `device` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    id: *const c_char,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    run("nvmlDeviceGetHandleByPciBusId", || by_bus_id(id, device))
}

/// `nvmlDeviceGetName`: the device's name from the device-info page.
///
/// # Safety
/// `name` is NULL or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: NvmlDevice,
    name: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    run("nvmlDeviceGetName", || {
        let p = device_info(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_str(name, length, &get_str(&p.name)) }
    })
}

/// `nvmlDeviceGetUUID`: the vGPU's UUID (the same bytes `cuDeviceGetUuid` gives), as
/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
///
/// # Safety
/// `uuid` is NULL or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: NvmlDevice,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    run("nvmlDeviceGetUUID", || {
        let p = device_info(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_str(uuid, length, &uuid_string(&p.uuid)) }
    })
}

/// The PCI description of the device. The device-info page has the physical device's PCI
/// location but not its PCI ids: `pciDeviceId` and `pciSubSystemId` are 0.
fn pci_info(p: &DeviceInfoPage, domain_digits: usize) -> PciInfo {
    PciInfo {
        bus_id_legacy: c_field(&bus_id(p, 4)),
        domain: p.pci_domain,
        bus: p.pci_bus,
        device: p.pci_device,
        pci_device_id: 0,
        pci_sub_system_id: 0,
        bus_id: c_field(&bus_id(p, domain_digits)),
    }
}

/// Writes the first `bytes` of `v` through `out`.
///
/// # Safety
/// `out` is NULL or valid for `bytes` bytes of writes; `bytes <= size_of::<PciInfo>()`.
unsafe fn put_pci(out: *mut PciInfo, v: PciInfo, bytes: usize) -> Result<(), NvmlReturn> {
    if out.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    debug_assert!(bytes <= std::mem::size_of::<PciInfo>());
    // SAFETY: `v` is a local of at least `bytes` bytes; `out` is valid for `bytes` (the caller's
    // promise).
    unsafe {
        std::ptr::copy_nonoverlapping(std::ptr::addr_of!(v).cast::<u8>(), out.cast::<u8>(), bytes)
    };
    Ok(())
}

/// `nvmlDeviceGetPciInfo_v3`: the physical device's PCI location; `busId` with an 8-digit
/// domain.
///
/// # Safety
/// `pci` is NULL or valid for a write of `nvmlPciInfo_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: NvmlDevice,
    pci: *mut PciInfo,
) -> NvmlReturn {
    run("nvmlDeviceGetPciInfo_v3", || {
        let p = device_info(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_pci(pci, pci_info(&p, 8), std::mem::size_of::<PciInfo>()) }
    })
}

/// `nvmlDeviceGetPciInfo_v2`: as `_v3`, with the 4-digit domain `busId` of that version.
///
/// # Safety
/// `pci` is NULL or valid for a write of `nvmlPciInfo_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(
    device: NvmlDevice,
    pci: *mut PciInfo,
) -> NvmlReturn {
    run("nvmlDeviceGetPciInfo_v2", || {
        let p = device_info(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_pci(pci, pci_info(&p, 4), std::mem::size_of::<PciInfo>()) }
    })
}

/// `nvmlDeviceGetPciInfo` (the first version): its struct ends with reserved bytes where
/// `busId` now lies, so only the fields before it are written.
///
/// # Safety
/// `pci` is NULL or valid for writes of the first version's struct.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo(device: NvmlDevice, pci: *mut PciInfo) -> NvmlReturn {
    run("nvmlDeviceGetPciInfo", || {
        let p = device_info(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_pci(pci, pci_info(&p, 4), PCI_INFO_V1_WRITTEN) }
    })
}

/// `nvmlDeviceGetIndex`: 0, the only device.
///
/// # Safety
/// `index` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: NvmlDevice, index: *mut c_uint) -> NvmlReturn {
    run("nvmlDeviceGetIndex", || {
        device_info(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put(index, 0) }
    })
}

/// `nvmlDeviceGetMinorNumber`: the minor number of `/dev/nvidiaN`. A vGPU has no such device
/// node, so after the usual checks: `NVML_ERROR_NOT_SUPPORTED`.
///
/// # Safety
/// `minor` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: NvmlDevice,
    minor: *mut c_uint,
) -> NvmlReturn {
    run("nvmlDeviceGetMinorNumber", || {
        device_info(device)?;
        if minor.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        Err(NvmlReturn::NOT_SUPPORTED)
    })
}

/// `nvmlDeviceGetCudaComputeCapability`: from the device-info page's attributes (what
/// `cuDeviceGetAttribute` answers).
///
/// # Safety
/// `major` and `minor` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: NvmlDevice,
    major: *mut c_int,
    minor: *mut c_int,
) -> NvmlReturn {
    run("nvmlDeviceGetCudaComputeCapability", || {
        let p = device_info(device)?;
        if major.is_null() || minor.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        let (Some(ma), Some(mi)) = (p.attribute(ATTR_CC_MAJOR), p.attribute(ATTR_CC_MINOR)) else {
            return Err(NvmlReturn::NOT_SUPPORTED);
        };
        // SAFETY: both non-NULL (checked) and valid for writes (the caller's promise).
        unsafe {
            put(major, ma)?;
            put(minor, mi)
        }
    })
}

/// `nvmlDeviceGetArchitecture`: from the compute capability.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: NvmlDevice,
    out: *mut c_uint,
) -> NvmlReturn {
    run("nvmlDeviceGetArchitecture", || {
        let p = device_info(device)?;
        let a = |i| p.attribute(i).unwrap_or(0);
        // SAFETY: forwarded from the caller.
        unsafe { put(out, architecture(a(ATTR_CC_MAJOR), a(ATTR_CC_MINOR))) }
    })
}

/// `nvmlDeviceGetBrand`: from the device's name ([`brand_of`]).
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBrand(device: NvmlDevice, out: *mut c_uint) -> NvmlReturn {
    run("nvmlDeviceGetBrand", || {
        let p = device_info(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put(out, brand_of(&get_str(&p.name))) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> DeviceInfoPage {
        DeviceInfoPage {
            pci_domain: 0,
            pci_bus: 0x1b,
            pci_device: 3,
            uuid: [
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef,
            ],
            ..Default::default()
        }
    }

    #[test]
    fn uuids_read_as_nvml_writes_them() {
        assert_eq!(
            uuid_string(&page().uuid),
            "GPU-12345678-9abc-def0-0123-456789abcdef"
        );
    }

    #[test]
    fn bus_ids_in_every_form_cuda_and_nvml_write() {
        let p = page();
        assert_eq!(bus_id(&p, 8), "00000000:1B:03.0");
        assert_eq!(bus_id(&p, 4), "0000:1B:03.0");
        for id in ["00000000:1B:03.0", "0000:1b:03.0", "1b:03.0", "0:1B:3.0"] {
            assert!(bus_id_matches(&p, id), "{id}");
        }
        for id in [
            "0000:1b:03.1",
            "0001:1b:03.0",
            "1b:04.0",
            "",
            "1b:03",
            "zz:03.0",
            "a:b:c:d.0",
        ] {
            assert!(!bus_id_matches(&p, id), "{id}");
        }
    }

    #[test]
    fn architectures_and_brands() {
        assert_eq!(architecture(9, 0), arch::HOPPER);
        assert_eq!(architecture(8, 9), arch::ADA);
        assert_eq!(architecture(8, 6), arch::AMPERE);
        assert_eq!(architecture(7, 5), arch::TURING);
        assert_eq!(architecture(12, 0), arch::BLACKWELL);
        assert_eq!(architecture(0, 0), arch::UNKNOWN);
        assert_eq!(brand_of("NVIDIA H200"), brand::NVIDIA);
        assert_eq!(brand_of("NVIDIA GeForce RTX 4090"), brand::GEFORCE);
        assert_eq!(brand_of("Tesla V100-SXM2-16GB"), brand::TESLA);
        assert_eq!(brand_of("NVIDIA RTX A6000"), brand::NVIDIA_RTX);
        assert_eq!(brand_of("vgpu cpu reference device"), brand::UNKNOWN);
    }
}
