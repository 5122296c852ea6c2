//! The register page at BAR2 offset 0.
//!
//! The host half (`0x000..0x800`) is written by vgpud only; the guest reads it. vgpud never
//! reads the host half back to make a decision: it keeps the authoritative copy. The guest
//! half (`0x800..0x1000`) is written by the guest and read (as untrusted input) by vgpud.

use core::mem::offset_of;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Offset of the guest-written half of the register page.
pub const GUEST_HALF: usize = 0x800;
/// Guest half: reset request counter. The guest increments it and rings the doorbell; vgpud
/// destroys and recreates the VM's context when it differs from the last value it acted on.
pub const REG_RESET_REQUEST: usize = GUEST_HALF;

/// Capability: built-in kernels (see [`crate::cmd::Builtin`]).
pub const CAP_BUILTIN_KERNELS: u64 = 1 << 0;
/// Capability: vgpud signals the guest's interrupt vector when the completion ring asks for it.
pub const CAP_COMPLETION_IRQ: u64 = 1 << 1;
/// Capability: vgpud polls the submission ring after work and sets `SQ_FLAG_HOST_POLLING`.
pub const CAP_HOST_POLLING: u64 = 1 << 2;
/// Capability: reset through [`REG_RESET_REQUEST`].
pub const CAP_RESET: u64 = 1 << 3;
/// Capability: the VM's own module kernels run (cuda backend only; the cpu device loads
/// modules and refuses to run their kernels).
pub const CAP_MODULES: u64 = 1 << 4;
/// Capability: the device-info page at [`crate::info::INFO_OFFSET`] is filled in.
pub const CAP_DEVICE_INFO: u64 = 1 << 5;

/// Device status as published in the register page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, num_enum::TryFromPrimitive)]
#[repr(u32)]
pub enum DeviceStatus {
    /// Being set up or reset; do not submit.
    Reset = 0,
    /// Accepting commands.
    Ready = 1,
    /// The device context broke (for example a kernel faulted); commands fail until reset.
    Error = 2,
    /// The VM broke the ring protocol; vgpud no longer reads its rings until reset or reboot.
    Fenced = 3,
    /// vgpud stopped serving the device (it was shut down): nothing will answer again. A
    /// running QEMU cannot rejoin a restarted vgpud; the VM (or process client) must restart.
    Stopped = 4,
}

impl DeviceStatus {
    /// Decodes a raw register value.
    pub fn from_raw(v: u32) -> Option<Self> {
        Self::try_from(v).ok()
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Ready => "ready",
            Self::Error => "error",
            Self::Fenced => "fenced",
            Self::Stopped => "stopped",
        }
    }
}

/// The host-written half of the register page. All fields little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RegisterPage {
    /// [`crate::MAGIC`].
    pub magic: u64,
    /// `major << 16 | minor`.
    pub abi_version: u32,
    /// [`DeviceStatus`] as `u32`.
    pub device_status: u32,
    /// The VM's id (authoritative copy in vgpud's config).
    pub vm_id: u32,
    /// The VM's pool.
    pub pool_id: u32,
    /// The VM's priority (0 = lowest).
    pub priority: u32,
    /// Last error: a [`crate::cmd::Status`] or a [`crate::ring::FenceReason`] code; 0 = none.
    pub last_error: u32,
    /// `CAP_*` bits.
    pub capabilities: u64,
    /// Size of BAR2 in bytes (a power of two).
    pub shm_size: u64,
    /// Offset of the submission ring header.
    pub sq_offset: u64,
    /// Offset of the completion ring header.
    pub cq_offset: u64,
    /// Offset of the staging area.
    pub staging_offset: u64,
    /// Size of the staging area.
    pub staging_size: u64,
    /// Submission ring entries (a power of two).
    pub sq_entries: u32,
    /// Completion ring entries (a power of two, at least `sq_entries`).
    pub cq_entries: u32,
    /// Size of one submission entry (128).
    pub sqe_size: u32,
    /// Size of one completion entry (32).
    pub cqe_size: u32,
    /// Device memory quota of this VM in bytes.
    pub mem_quota: u64,
    /// Longest busy kernel accepted, in microseconds.
    pub max_kernel_us: u32,
    /// Peer id to ring (vgpud's).
    pub host_peer_id: u32,
    /// Vector to ring.
    pub doorbell_vector: u32,
    /// Incremented each time the device is (re)initialised: connect or reset.
    pub generation: u32,
    /// Backend kind: 1 = cpu, 2 = cuda.
    pub backend: u32,
    /// Reserved, zero.
    pub _reserved0: u32,
    /// Total device memory of the physical device backing this vGPU.
    pub device_total_mem: u64,
    /// The VM's name, NUL-padded UTF-8.
    pub vm_name: [u8; 32],
    /// The backing device's name, NUL-padded UTF-8.
    pub device_name: [u8; 64],
    /// Device memory the VM's allocations hold now, in bytes (1.6; see [`Usage`]).
    pub mem_used: u64,
    /// Device time of the VM's commands that completed in the last utilisation window, in
    /// thousandths of the window, at most 1000 (1.6).
    pub busy_permille: u32,
    /// Length of that window in milliseconds; 0 until the first window since the VM connected
    /// (or reset) ended (1.6).
    pub busy_window_ms: u32,
    /// Device time of the VM's commands that completed since it connected, in nanoseconds
    /// (1.6).
    pub device_ns: u64,
}

impl Default for RegisterPage {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// The first minor version whose register page has the usage fields (`mem_used`,
/// `busy_permille`, `busy_window_ms`, `device_ns`). Before it those bytes were reserved (zero),
/// which a guest must not read as "nothing in use".
pub const USAGE_MINOR: u16 = 6;

/// What the VM uses of the device now, as vgpud keeps it current in the register page (1.6):
/// a process that only asks (NVML) reads it without a ring or a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Device memory the VM's allocations hold, in bytes.
    pub mem_used: u64,
    /// Share of the last window (thousandths) the device spent on the VM's commands, and the
    /// window's length in milliseconds; `None` until a first window ended.
    pub busy: Option<(u32, u32)>,
    /// Device time of the VM's commands since it connected, in nanoseconds.
    pub device_ns: u64,
}

impl RegisterPage {
    /// The usage fields, when the device speaks a minor version that has them.
    pub fn usage(&self) -> Option<Usage> {
        let minor = self.abi_version as u16;
        let major = (self.abi_version >> 16) as u16;
        (major == crate::ABI_MAJOR && minor >= USAGE_MINOR).then(|| Usage {
            mem_used: self.mem_used,
            busy: (self.busy_window_ms > 0)
                .then(|| (self.busy_permille.min(1000), self.busy_window_ms)),
            device_ns: self.device_ns,
        })
    }
}

/// Backend id of the cpu reference backend, as in [`RegisterPage::backend`].
pub const BACKEND_CPU: u32 = 1;
/// Backend id of the cuda backend.
pub const BACKEND_CUDA: u32 = 2;

/// Byte offsets of the register page fields (pinned by tests and documented in `docs/abi.md`).
pub mod off {
    use super::*;
    /// `magic`
    pub const MAGIC: usize = offset_of!(RegisterPage, magic);
    /// `abi_version`
    pub const ABI_VERSION: usize = offset_of!(RegisterPage, abi_version);
    /// `device_status`
    pub const DEVICE_STATUS: usize = offset_of!(RegisterPage, device_status);
    /// `vm_id`
    pub const VM_ID: usize = offset_of!(RegisterPage, vm_id);
    /// `pool_id`
    pub const POOL_ID: usize = offset_of!(RegisterPage, pool_id);
    /// `priority`
    pub const PRIORITY: usize = offset_of!(RegisterPage, priority);
    /// `last_error`
    pub const LAST_ERROR: usize = offset_of!(RegisterPage, last_error);
    /// `generation`
    pub const GENERATION: usize = offset_of!(RegisterPage, generation);
    /// `mem_used` (1.6)
    pub const MEM_USED: usize = offset_of!(RegisterPage, mem_used);
    /// `busy_permille` (1.6)
    pub const BUSY_PERMILLE: usize = offset_of!(RegisterPage, busy_permille);
    /// `busy_window_ms` (1.6)
    pub const BUSY_WINDOW_MS: usize = offset_of!(RegisterPage, busy_window_ms);
    /// `device_ns` (1.6)
    pub const DEVICE_NS: usize = offset_of!(RegisterPage, device_ns);
}

/// Copies a string into a NUL-padded fixed-size field (truncating at a char boundary).
pub fn put_str<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// Reads a NUL-padded string field (lossy).
pub fn get_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_pinned() {
        assert_eq!(off::MAGIC, 0x00);
        assert_eq!(off::ABI_VERSION, 0x08);
        assert_eq!(off::DEVICE_STATUS, 0x0C);
        assert_eq!(off::VM_ID, 0x10);
        assert_eq!(off::POOL_ID, 0x14);
        assert_eq!(off::PRIORITY, 0x18);
        assert_eq!(off::LAST_ERROR, 0x1C);
        assert_eq!(offset_of!(RegisterPage, capabilities), 0x20);
        assert_eq!(offset_of!(RegisterPage, shm_size), 0x28);
        assert_eq!(offset_of!(RegisterPage, sq_offset), 0x30);
        assert_eq!(offset_of!(RegisterPage, cq_offset), 0x38);
        assert_eq!(offset_of!(RegisterPage, staging_offset), 0x40);
        assert_eq!(offset_of!(RegisterPage, staging_size), 0x48);
        assert_eq!(offset_of!(RegisterPage, sq_entries), 0x50);
        assert_eq!(offset_of!(RegisterPage, cq_entries), 0x54);
        assert_eq!(offset_of!(RegisterPage, sqe_size), 0x58);
        assert_eq!(offset_of!(RegisterPage, cqe_size), 0x5C);
        assert_eq!(offset_of!(RegisterPage, mem_quota), 0x60);
        assert_eq!(offset_of!(RegisterPage, max_kernel_us), 0x68);
        assert_eq!(offset_of!(RegisterPage, host_peer_id), 0x6C);
        assert_eq!(offset_of!(RegisterPage, doorbell_vector), 0x70);
        assert_eq!(off::GENERATION, 0x74);
        assert_eq!(offset_of!(RegisterPage, backend), 0x78);
        assert_eq!(offset_of!(RegisterPage, device_total_mem), 0x80);
        assert_eq!(offset_of!(RegisterPage, vm_name), 0x88);
        assert_eq!(offset_of!(RegisterPage, device_name), 0xA8);
        assert_eq!(off::MEM_USED, 0xE8);
        assert_eq!(off::BUSY_PERMILLE, 0xF0);
        assert_eq!(off::BUSY_WINDOW_MS, 0xF4);
        assert_eq!(off::DEVICE_NS, 0xF8);
        assert_eq!(core::mem::size_of::<RegisterPage>(), 0x100);
        const { assert!(core::mem::size_of::<RegisterPage>() <= GUEST_HALF) };
    }

    #[test]
    fn usage_needs_a_device_of_1_6() {
        let mut r = RegisterPage {
            mem_used: 3 << 20,
            busy_permille: 1200,
            busy_window_ms: 500,
            device_ns: 77,
            ..Default::default()
        };
        r.abi_version = (1 << 16) | 5;
        assert_eq!(r.usage(), None, "1.5 had no usage fields");
        r.abi_version = 2 << 16 | 9;
        assert_eq!(r.usage(), None, "another major says nothing");
        r.abi_version = (1 << 16) | 6;
        let u = r.usage().expect("1.6 has them");
        assert_eq!(u.mem_used, 3 << 20);
        assert_eq!(u.busy, Some((1000, 500)), "a share is at most the window");
        assert_eq!(u.device_ns, 77);
        r.busy_window_ms = 0;
        assert_eq!(r.usage().unwrap().busy, None, "no window ended yet");
    }

    #[test]
    fn strings() {
        let f: [u8; 8] = put_str("vm-a");
        assert_eq!(get_str(&f), "vm-a");
        let f: [u8; 4] = put_str("hé€");
        assert_eq!(get_str(&f), "hé");
        assert_eq!(get_str(&[b'a'; 4]), "aaaa");
    }

    #[test]
    fn status_roundtrip() {
        for s in [
            DeviceStatus::Reset,
            DeviceStatus::Ready,
            DeviceStatus::Error,
            DeviceStatus::Fenced,
            DeviceStatus::Stopped,
        ] {
            assert_eq!(DeviceStatus::from_raw(s as u32), Some(s));
        }
        assert_eq!(DeviceStatus::from_raw(9), None);
    }
}
