//! The NVML types and constants this library uses, as NVML 13's `nvml.h` lays them out
//! (`#[repr(C)]`, field for field; sizes pinned by the tests below).

use std::ffi::c_char;

/// `nvmlReturn_t` (a C enum: an `int`-sized value).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmlReturn(pub u32);

impl NvmlReturn {
    /// `NVML_SUCCESS`
    pub const SUCCESS: Self = Self(0);
    /// `NVML_ERROR_UNINITIALIZED`
    pub const UNINITIALIZED: Self = Self(1);
    /// `NVML_ERROR_INVALID_ARGUMENT`
    pub const INVALID_ARGUMENT: Self = Self(2);
    /// `NVML_ERROR_NOT_SUPPORTED`
    pub const NOT_SUPPORTED: Self = Self(3);
    /// `NVML_ERROR_NO_PERMISSION`
    pub const NO_PERMISSION: Self = Self(4);
    /// `NVML_ERROR_ALREADY_INITIALIZED`
    pub const ALREADY_INITIALIZED: Self = Self(5);
    /// `NVML_ERROR_NOT_FOUND`
    pub const NOT_FOUND: Self = Self(6);
    /// `NVML_ERROR_INSUFFICIENT_SIZE`
    pub const INSUFFICIENT_SIZE: Self = Self(7);
    /// `NVML_ERROR_DRIVER_NOT_LOADED`
    pub const DRIVER_NOT_LOADED: Self = Self(9);
    /// `NVML_ERROR_GPU_IS_LOST`
    pub const GPU_IS_LOST: Self = Self(15);
    /// `NVML_ERROR_ARGUMENT_VERSION_MISMATCH`
    pub const ARGUMENT_VERSION_MISMATCH: Self = Self(25);
    /// `NVML_ERROR_UNKNOWN`
    pub const UNKNOWN: Self = Self(999);
}

/// What an `nvmlDevice_t` points to. Opaque to programs; this library has one device, whose
/// handle is the address of [`crate::state::HANDLE`].
#[repr(C)]
pub struct DeviceSt {
    pub(crate) _private: u8,
}

/// `nvmlDevice_t`
pub type NvmlDevice = *mut DeviceSt;

/// `NVML_INIT_FLAG_NO_GPUS`: initialisation succeeds without a device.
pub const INIT_FLAG_NO_GPUS: u32 = 1;

/// `NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE`
pub const BUS_ID_LEGACY_LEN: usize = 16;
/// `NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE`
pub const BUS_ID_LEN: usize = 32;

/// `nvmlPciInfo_t` (the layout of `nvmlDeviceGetPciInfo_v3`; `_v2` has the same size, the
/// first version ends after `pciSubSystemId` plus 16 reserved bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PciInfo {
    /// `domain:bus:device.0` with a 4-digit domain.
    pub bus_id_legacy: [c_char; BUS_ID_LEGACY_LEN],
    /// PCI domain.
    pub domain: u32,
    /// PCI bus.
    pub bus: u32,
    /// PCI device.
    pub device: u32,
    /// Device id << 16 | vendor id.
    pub pci_device_id: u32,
    /// Subsystem device id << 16 | subsystem vendor id.
    pub pci_sub_system_id: u32,
    /// `domain:bus:device.0` with an 8-digit domain.
    pub bus_id: [c_char; BUS_ID_LEN],
}

/// Bytes of `nvmlPciInfo_t` the first `nvmlDeviceGetPciInfo` wrote (its struct had 16
/// reserved bytes where `busId` now starts: those are left alone).
pub const PCI_INFO_V1_WRITTEN: usize = std::mem::offset_of!(PciInfo, bus_id);

/// `nvmlMemory_t`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Total device memory.
    pub total: u64,
    /// Unallocated device memory.
    pub free: u64,
    /// Allocated device memory.
    pub used: u64,
}

/// `nvmlMemory_v2_t`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryV2 {
    /// Must be [`MEMORY_V2_VERSION`].
    pub version: u32,
    /// Total device memory.
    pub total: u64,
    /// Memory reserved for the driver or firmware.
    pub reserved: u64,
    /// Unallocated device memory.
    pub free: u64,
    /// Allocated device memory.
    pub used: u64,
}

/// `nvmlMemory_v2` (`NVML_STRUCT_VERSION(Memory, 2)`: the size with the version in the top
/// byte).
pub const MEMORY_V2_VERSION: u32 = std::mem::size_of::<MemoryV2>() as u32 | (2 << 24);

/// `nvmlUtilization_t`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utilization {
    /// Percent of the sample period a kernel ran.
    pub gpu: u32,
    /// Percent of the sample period device memory was read or written.
    pub memory: u32,
}

/// `nvmlProcessInfo_v1_t` (the unversioned process queries).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessInfoV1 {
    /// Process id.
    pub pid: u32,
    /// Device memory the process uses.
    pub used_gpu_memory: u64,
}

/// `nvmlProcessInfo_t` = `nvmlProcessInfo_v2_t` (the `_v2` and `_v3` process queries).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Device memory the process uses.
    pub used_gpu_memory: u64,
    /// MIG GPU instance, `0xFFFFFFFF` without MIG.
    pub gpu_instance_id: u32,
    /// MIG compute instance, `0xFFFFFFFF` without MIG.
    pub compute_instance_id: u32,
}

/// `NVML_VALUE_NOT_AVAILABLE` as an unsigned 64-bit field holds it.
pub const VALUE_NOT_AVAILABLE_U64: u64 = u64::MAX;
/// No MIG instance.
pub const NO_MIG_INSTANCE: u32 = 0xFFFF_FFFF;

/// `nvmlBrandType_t` values.
pub mod brand {
    /// `NVML_BRAND_UNKNOWN`
    pub const UNKNOWN: u32 = 0;
    /// `NVML_BRAND_QUADRO`
    pub const QUADRO: u32 = 1;
    /// `NVML_BRAND_TESLA`
    pub const TESLA: u32 = 2;
    /// `NVML_BRAND_GEFORCE`
    pub const GEFORCE: u32 = 5;
    /// `NVML_BRAND_TITAN`
    pub const TITAN: u32 = 6;
    /// `NVML_BRAND_NVIDIA_RTX`
    pub const NVIDIA_RTX: u32 = 13;
    /// `NVML_BRAND_NVIDIA`
    pub const NVIDIA: u32 = 14;
}

/// `nvmlDeviceArchitecture_t` values.
pub mod arch {
    /// `NVML_DEVICE_ARCH_KEPLER`
    pub const KEPLER: u32 = 2;
    /// `NVML_DEVICE_ARCH_MAXWELL`
    pub const MAXWELL: u32 = 3;
    /// `NVML_DEVICE_ARCH_PASCAL`
    pub const PASCAL: u32 = 4;
    /// `NVML_DEVICE_ARCH_VOLTA`
    pub const VOLTA: u32 = 5;
    /// `NVML_DEVICE_ARCH_TURING`
    pub const TURING: u32 = 6;
    /// `NVML_DEVICE_ARCH_AMPERE`
    pub const AMPERE: u32 = 7;
    /// `NVML_DEVICE_ARCH_ADA`
    pub const ADA: u32 = 8;
    /// `NVML_DEVICE_ARCH_HOPPER`
    pub const HOPPER: u32 = 9;
    /// `NVML_DEVICE_ARCH_BLACKWELL`
    pub const BLACKWELL: u32 = 10;
    /// `NVML_DEVICE_ARCH_UNKNOWN`
    pub const UNKNOWN: u32 = 0xFFFF_FFFF;
}

/// `NVML_P2P_STATUS_NOT_SUPPORTED`
pub const P2P_STATUS_NOT_SUPPORTED: u32 = 5;
/// `NVML_P2P_CAPS_INDEX_UNKNOWN`: the first index that is not a capability.
pub const P2P_CAPS_INDEX_UNKNOWN: u32 = 5;
/// `NVML_TOPOLOGY_INTERNAL`: the same board.
pub const TOPOLOGY_INTERNAL: u32 = 0;
/// `NVML_TOPOLOGY_SYSTEM`: the widest `nvmlGpuTopologyLevel_t`.
pub const TOPOLOGY_SYSTEM: u32 = 50;

/// `nvmlGpuFabricInfo_t` (the unversioned fabric query).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuFabricInfo {
    /// The cluster the GPU belongs to (zero: none).
    pub cluster_uuid: [u8; 16],
    /// Probe error status.
    pub status: u32,
    /// The fabric clique.
    pub clique_id: u32,
    /// `NVML_GPU_FABRIC_STATE_*` (an `unsigned char`).
    pub state: u8,
}

/// `nvmlGpuFabricInfo_v3_t` = `nvmlGpuFabricInfoV_t`; the `_v2` struct is the same without
/// `health_summary` (and 4 bytes shorter).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuFabricInfoV3 {
    /// [`GPU_FABRIC_INFO_V2_VERSION`] or [`GPU_FABRIC_INFO_V3_VERSION`].
    pub version: u32,
    /// The cluster the GPU belongs to (zero: none).
    pub cluster_uuid: [u8; 16],
    /// Probe error status.
    pub status: u32,
    /// The fabric clique.
    pub clique_id: u32,
    /// `NVML_GPU_FABRIC_STATE_*` (an `unsigned char`).
    pub state: u8,
    /// `NVML_GPU_FABRIC_HEALTH_MASK_*` bits.
    pub health_mask: u32,
    /// `NVML_GPU_FABRIC_HEALTH_SUMMARY_*` (v3 only).
    pub health_summary: u8,
}

/// Bytes of `nvmlGpuFabricInfo_v2_t`.
pub const GPU_FABRIC_INFO_V2_SIZE: usize = std::mem::offset_of!(GpuFabricInfoV3, health_summary);
/// `nvmlGpuFabricInfo_v2`
pub const GPU_FABRIC_INFO_V2_VERSION: u32 = GPU_FABRIC_INFO_V2_SIZE as u32 | (2 << 24);
/// `nvmlGpuFabricInfo_v3`
pub const GPU_FABRIC_INFO_V3_VERSION: u32 =
    std::mem::size_of::<GpuFabricInfoV3>() as u32 | (3 << 24);
/// `NVML_GPU_FABRIC_STATE_NOT_SUPPORTED`
pub const GPU_FABRIC_STATE_NOT_SUPPORTED: u8 = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_are_nvml_13s() {
        assert_eq!(size_of::<PciInfo>(), 68);
        assert_eq!(offset_of!(PciInfo, domain), 16);
        assert_eq!(offset_of!(PciInfo, bus_id), 36);
        assert_eq!(size_of::<Memory>(), 24);
        assert_eq!(size_of::<MemoryV2>(), 40);
        assert_eq!(offset_of!(MemoryV2, total), 8);
        assert_eq!(MEMORY_V2_VERSION, 0x0200_0028);
        assert_eq!(size_of::<Utilization>(), 8);
        assert_eq!(size_of::<ProcessInfoV1>(), 16);
        assert_eq!(size_of::<ProcessInfo>(), 24);
        assert_eq!(offset_of!(ProcessInfo, gpu_instance_id), 16);
        assert_eq!(size_of::<GpuFabricInfo>(), 28);
        assert_eq!(offset_of!(GpuFabricInfoV3, state), 28);
        assert_eq!(offset_of!(GpuFabricInfoV3, health_mask), 32);
        assert_eq!(GPU_FABRIC_INFO_V2_SIZE, 36);
        assert_eq!(size_of::<GpuFabricInfoV3>(), 40);
    }
}
