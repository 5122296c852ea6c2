//! The device-info page: a read-only description of the vGPU that vgpud writes once when it
//! sets the device up, so that a guest answers device queries (attributes, name, UUID, PCI ids,
//! memory) without a round trip, and a process that only queries needs no ring.
//!
//! It lives in the host half of the register page, at [`INFO_OFFSET`]; vgpud never reads it
//! back. Present when the register page's capabilities have [`crate::regs::CAP_DEVICE_INFO`].

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Offset of the [`DeviceInfoPage`] in BAR2.
pub const INFO_OFFSET: usize = 0x100;
/// Attribute slots: `attributes[a]` is the value of the CUDA driver's `CUdevice_attribute` `a`
/// (slot 0 is unused). CUDA 13.0 defines attributes up to 147.
pub const ATTR_SLOTS: usize = 192;

/// What the guest's driver reports about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DeviceInfoPage {
    /// The host driver's CUDA version (`cuDriverGetVersion`, e.g. 13000).
    pub driver_version: u32,
    /// Number of valid slots in `attributes` (attributes at or above it read as 0).
    pub attr_count: u32,
    /// The device memory the guest sees: the VM's quota, at most the physical device's.
    pub total_mem: u64,
    /// The vGPU's UUID (stable per VM and physical device; not the physical GPU's).
    pub uuid: [u8; 16],
    /// A locally unique id (Windows LUID; zero on Linux).
    pub luid: [u8; 8],
    /// LUID node mask (zero on Linux).
    pub luid_node_mask: u32,
    /// PCI domain of the physical device.
    pub pci_domain: u32,
    /// PCI bus of the physical device.
    pub pci_bus: u32,
    /// PCI device of the physical device.
    pub pci_device: u32,
    /// Device name, NUL-padded UTF-8.
    pub name: [u8; 256],
    /// `CUdevice_attribute` values, indexed by attribute.
    pub attributes: [i32; ATTR_SLOTS],
    /// The device address of the VM's staging area in its context (1.6): the device reads and
    /// writes that host memory directly, so staging bytes at offset `o` are device memory at
    /// this address + `o` (CUDA's mapped host memory). 0: not mapped (the cpu backend, a
    /// context not ready yet, a device that cannot).
    pub staging_device_address: u64,
}

impl Default for DeviceInfoPage {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl DeviceInfoPage {
    /// The value of attribute `a`, if the page has that slot.
    pub fn attribute(&self, a: usize) -> Option<i32> {
        (a > 0 && a < self.attr_count as usize && a < ATTR_SLOTS).then(|| self.attributes[a])
    }
}

/// A UUID for the vGPU of VM `vm_name` on the physical device `device_uuid`: the same for the
/// same pair (so that a program or an operator sees one identity across reboots), different
/// between VMs and devices. Two 64-bit FNV-1a hashes with RFC 4122 version 8 (custom) and
/// variant bits.
pub fn vgpu_uuid(device_uuid: &[u8; 16], vm_name: &str) -> [u8; 16] {
    fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
        let mut h = seed;
        for p in parts {
            for &b in *p {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let parts: [&[u8]; 3] = [b"vgpu", device_uuid, vm_name.as_bytes()];
    let a = fnv(0xcbf2_9ce4_8422_2325, &parts);
    let b = fnv(0x6c62_272e_07bb_0142, &parts);
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a.to_be_bytes());
    u[8..].copy_from_slice(&b.to_be_bytes());
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::{RegisterPage, GUEST_HALF};

    #[test]
    fn the_page_fits_between_the_registers_and_the_guest_half() {
        const { assert!(core::mem::size_of::<RegisterPage>() <= INFO_OFFSET) };
        const { assert!(INFO_OFFSET + core::mem::size_of::<DeviceInfoPage>() <= GUEST_HALF) };
        assert_eq!(
            core::mem::size_of::<DeviceInfoPage>(),
            56 + 256 + 4 * ATTR_SLOTS + 8
        );
    }

    #[test]
    fn attributes_outside_the_valid_slots_are_absent() {
        let mut p = DeviceInfoPage {
            attr_count: 148,
            ..Default::default()
        };
        p.attributes[75] = 9;
        assert_eq!(p.attribute(75), Some(9));
        assert_eq!(p.attribute(0), None);
        assert_eq!(p.attribute(148), None);
        assert_eq!(p.attribute(10_000), None);
    }

    #[test]
    fn vgpu_uuids_are_stable_and_distinct() {
        let d = [7u8; 16];
        assert_eq!(vgpu_uuid(&d, "vm-a"), vgpu_uuid(&d, "vm-a"));
        assert_ne!(vgpu_uuid(&d, "vm-a"), vgpu_uuid(&d, "vm-b"));
        assert_ne!(vgpu_uuid(&d, "vm-a"), vgpu_uuid(&[8u8; 16], "vm-a"));
        assert_eq!(vgpu_uuid(&d, "vm-a")[6] >> 4, 8);
    }
}
