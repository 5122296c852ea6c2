//! How the device is connected to others: a VM or container sees one vGPU, so there is no
//! peer to reach, no NVLink exposed and no other GPU near it. The answers say so.

use std::ffi::c_uint;

use super::device::device_info;
use super::{put, run};
use crate::types::{
    GpuFabricInfo, GpuFabricInfoV3, NvmlDevice, NvmlReturn, GPU_FABRIC_INFO_V2_SIZE,
    GPU_FABRIC_INFO_V2_VERSION, GPU_FABRIC_INFO_V3_VERSION, GPU_FABRIC_STATE_NOT_SUPPORTED,
    P2P_CAPS_INDEX_UNKNOWN, P2P_STATUS_NOT_SUPPORTED, TOPOLOGY_INTERNAL, TOPOLOGY_SYSTEM,
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

/// `nvmlDeviceGetGpuFabricInfoV`: the vGPU belongs to no NVLink fabric (multi-node NVLink):
/// success, with the probe state `NVML_GPU_FABRIC_STATE_NOT_SUPPORTED`, a zero cluster UUID and
/// status `NVML_ERROR_NOT_SUPPORTED`, as NVML describes a GPU outside any fabric (NCCL, XLA and
/// PyTorch read the state). `version` is `nvmlGpuFabricInfo_v2` or `_v3`; another is
/// `NVML_ERROR_ARGUMENT_VERSION_MISMATCH`.
///
/// # Safety
/// `info` is NULL or valid for reads and writes of the struct of its version.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfoV(
    device: NvmlDevice,
    info: *mut GpuFabricInfoV3,
) -> NvmlReturn {
    run("nvmlDeviceGetGpuFabricInfoV", || {
        device_info(device)?;
        if info.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL and valid for reads (the caller's promise).
        let version = unsafe { std::ptr::addr_of!((*info).version).read_unaligned() };
        let len = match version {
            GPU_FABRIC_INFO_V2_VERSION => GPU_FABRIC_INFO_V2_SIZE,
            GPU_FABRIC_INFO_V3_VERSION => std::mem::size_of::<GpuFabricInfoV3>(),
            _ => return Err(NvmlReturn::ARGUMENT_VERSION_MISMATCH),
        };
        let v = GpuFabricInfoV3 {
            version,
            status: NvmlReturn::NOT_SUPPORTED.0,
            state: GPU_FABRIC_STATE_NOT_SUPPORTED,
            ..Default::default()
        };
        // SAFETY: `v` has at least `len` bytes; `info` is valid for `len` bytes of writes (the
        // struct of its version, the caller's promise).
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::ptr::addr_of!(v).cast::<u8>(),
                info.cast::<u8>(),
                len,
            )
        };
        Ok(())
    })
}

/// `nvmlDeviceGetGpuFabricInfo` (the unversioned struct): as [`nvmlDeviceGetGpuFabricInfoV`].
///
/// # Safety
/// `info` is NULL or valid for a write of `nvmlGpuFabricInfo_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfo(
    device: NvmlDevice,
    info: *mut GpuFabricInfo,
) -> NvmlReturn {
    run("nvmlDeviceGetGpuFabricInfo", || {
        device_info(device)?;
        let v = GpuFabricInfo {
            status: NvmlReturn::NOT_SUPPORTED.0,
            state: GPU_FABRIC_STATE_NOT_SUPPORTED,
            ..Default::default()
        };
        // SAFETY: forwarded from the caller.
        unsafe { put(info, v) }
    })
}
