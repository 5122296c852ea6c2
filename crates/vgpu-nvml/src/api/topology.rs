//! How the device is connected to others: a VM or container sees one vGPU, so there is no
//! peer to reach, no NVLink exposed and no other GPU near it. The answers say so.

use std::ffi::c_uint;

use super::device::device_info;
use super::{put, run};
use crate::types::{
    NvmlDevice, NvmlReturn, P2P_CAPS_INDEX_UNKNOWN, P2P_STATUS_NOT_SUPPORTED, TOPOLOGY_INTERNAL,
    TOPOLOGY_SYSTEM,
};

/// `nvmlDeviceGetP2PStatus`: peer-to-peer between the vGPU and itself is not a capability it
/// has: `NVML_P2P_STATUS_NOT_SUPPORTED` for every capability index.
///
/// # Safety
/// `status` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetP2PStatus(
    device1: NvmlDevice,
    device2: NvmlDevice,
    index: c_uint,
    status: *mut c_uint,
) -> NvmlReturn {
    run("nvmlDeviceGetP2PStatus", || {
        device_info(device1)?;
        device_info(device2)?;
        if index >= P2P_CAPS_INDEX_UNKNOWN {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        // SAFETY: forwarded from the caller.
        unsafe { put(status, P2P_STATUS_NOT_SUPPORTED) }
    })
}

/// `nvmlDeviceGetNvLinkState`: the vGPU exposes no NVLink: `NVML_ERROR_NOT_SUPPORTED` (after
/// the argument checks), as NVML answers for a GPU without NVLink.
///
/// # Safety
/// `active` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: NvmlDevice,
    _link: c_uint,
    active: *mut c_uint,
) -> NvmlReturn {
    run("nvmlDeviceGetNvLinkState", || {
        device_info(device)?;
        if active.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        Err(NvmlReturn::NOT_SUPPORTED)
    })
}

/// `nvmlDeviceGetTopologyCommonAncestor`: the only pair is the vGPU with itself, which shares
/// its board: `NVML_TOPOLOGY_INTERNAL`.
///
/// # Safety
/// `level` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
    device1: NvmlDevice,
    device2: NvmlDevice,
    level: *mut c_uint,
) -> NvmlReturn {
    run("nvmlDeviceGetTopologyCommonAncestor", || {
        device_info(device1)?;
        device_info(device2)?;
        // SAFETY: forwarded from the caller.
        unsafe { put(level, TOPOLOGY_INTERNAL) }
    })
}

/// `nvmlDeviceGetTopologyNearestGpus`: no other GPU, at any level: a count of 0.
///
/// # Safety
/// `count` is NULL or valid for a read and a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTopologyNearestGpus(
    device: NvmlDevice,
    level: c_uint,
    count: *mut c_uint,
    _devices: *mut NvmlDevice,
) -> NvmlReturn {
    run("nvmlDeviceGetTopologyNearestGpus", || {
        device_info(device)?;
        if level > TOPOLOGY_SYSTEM || !level.is_multiple_of(10) {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        // SAFETY: forwarded from the caller.
        unsafe { put(count, 0) }
    })
}
