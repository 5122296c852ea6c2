//! The vGPU device ABI, shared by the host mediator (`vgpud`) and the guest library.
//!
//! The device is a stock QEMU `ivshmem-doorbell` PCI device (`1af4:1110`). Its BAR2 is a
//! shared-memory region laid out as described in `docs/abi.md`:
//!
//! ```text
//! 0x0000  register page (host half 0x000..0x800, guest half 0x800..0x1000)
//! 0x1000  submission ring header (tail | head | flags, each on its own cache line)
//! 0x2000  submission ring entries (sq_entries x 128 bytes)
//!   ...   completion ring header (tail | head | flags), then entries (cq_entries x 32 bytes)
//!   ...   staging area (the rest of BAR2, 64 KiB aligned)
//! ```
//!
//! This crate does no I/O. The one module with `unsafe` code is [`shm`], the volatile/atomic
//! view of memory that the other side may change at any time.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod cmd;
pub mod info;
pub mod ivshmem;
pub mod layout;
pub mod regs;
pub mod ring;
pub mod shm;

pub use cmd::{Builtin, Cqe, Opcode, Sqe, Status};
pub use info::DeviceInfoPage;
pub use layout::{Layout, LayoutError};
pub use regs::{DeviceStatus, RegisterPage};
pub use shm::ShmView;

/// `"VGPUBAR2"` read as a little-endian `u64`: the first 8 bytes of BAR2.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VGPUBAR2");

/// ABI major version. A guest built for another major version must refuse the device.
pub const ABI_MAJOR: u16 = 1;
/// ABI minor version. Minor versions only add (new opcodes, new capability bits).
pub const ABI_MINOR: u16 = 7;

/// The encoded ABI version as stored in the register page: `major << 16 | minor`.
pub const fn abi_version() -> u32 {
    ((ABI_MAJOR as u32) << 16) | ABI_MINOR as u32
}

/// Cache-line size used to keep producer and consumer indices apart.
pub const CACHE_LINE: usize = 64;
/// Page size used for the layout.
pub const PAGE: usize = 4096;

/// Error raised when a device speaks another ABI, or is no vGPU at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// BAR2 does not start with [`MAGIC`].
    #[error("no vGPU magic in BAR2 (found {found:#018x}, expected {MAGIC:#018x}): not a vgpu device, or vgpud has not set it up")]
    BadMagic {
        /// The value found.
        found: u64,
    },
    /// The device speaks another major version.
    #[error("vGPU ABI mismatch: device speaks {dev_major}.{dev_minor}, this guest was built for {ABI_MAJOR}.{ABI_MINOR}; update the guest library or vgpud")]
    VersionMismatch {
        /// Device major.
        dev_major: u16,
        /// Device minor.
        dev_minor: u16,
    },
}

/// Checks the magic and ABI version read from a register page.
pub fn check_compat(magic: u64, version: u32) -> Result<(), AbiError> {
    if magic != MAGIC {
        return Err(AbiError::BadMagic { found: magic });
    }
    let dev_major = (version >> 16) as u16;
    let dev_minor = version as u16;
    if dev_major != ABI_MAJOR {
        return Err(AbiError::VersionMismatch {
            dev_major,
            dev_minor,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_is_ascii() {
        assert_eq!(&MAGIC.to_le_bytes(), b"VGPUBAR2");
    }

    #[test]
    fn compat() {
        assert!(check_compat(MAGIC, abi_version()).is_ok());
        assert!(check_compat(MAGIC, (1 << 16) | 7).is_ok());
        assert!(matches!(
            check_compat(MAGIC, 2 << 16),
            Err(AbiError::VersionMismatch { dev_major: 2, .. })
        ));
        assert!(matches!(
            check_compat(0, abi_version()),
            Err(AbiError::BadMagic { found: 0 })
        ));
    }
}
