//! Virtual memory management (ABI 1.6): address reservations, memory without an address
//! (handles), and mappings of the one into the other. Each method is one command, submitted
//! and awaited on the default stream.

use vgpu_abi::cmd::{Command, PROT_READWRITE};
use vgpu_abi::regs::off;

use super::Device;
use crate::Error;

/// The ABI minor version that added the commands.
const VMM_MINOR: u16 = 6;

impl Device {
    /// Whether the device offers virtual memory management (ABI 1.6 or later). An older vgpud
    /// would answer the commands UNKNOWN_OPCODE and note it as its last error: they are not
    /// sent to it.
    pub fn has_vmm(&self) -> bool {
        self.view.load_u32(off::ABI_VERSION) as u16 >= VMM_MINOR
    }

    fn vmm(&self, cmd: Command) -> Result<vgpu_abi::Cqe, Error> {
        if !self.has_vmm() {
            return Err(Error::NotSupported(
                "virtual memory management needs vgpud of ABI 1.6 or later",
            ));
        }
        self.exec(cmd)
    }

    /// `(minimum, recommended)` granularity in bytes of [`Device::mem_create`]'s memory: sizes,
    /// reservations and mappings are multiples of the minimum.
    pub fn mem_granularity(&self) -> Result<(u64, u64), Error> {
        let c = self.vmm(Command::MemGranularity)?;
        Ok((c.result0, c.result1))
    }

    /// Reserves `size` bytes of device addresses aligned to `alignment` (0: the granularity;
    /// else a power of two), near `addr` if the device can (0: anywhere); returns the start.
    pub fn mem_address_reserve(&self, size: u64, alignment: u64, addr: u64) -> Result<u64, Error> {
        let c = self.vmm(Command::MemAddressReserve {
            size,
            alignment,
            addr,
        })?;
        Ok(c.result0)
    }

    /// Frees a reservation (exactly as reserved, with nothing mapped in it).
    pub fn mem_address_free(&self, ptr: u64, size: u64) -> Result<(), Error> {
        self.vmm(Command::MemAddressFree { ptr, size }).map(drop)
    }

    /// Creates `size` bytes of device memory without an address; returns its handle.
    pub fn mem_create(&self, size: u64) -> Result<u64, Error> {
        Ok(self.vmm(Command::MemCreate { size })?.result0)
    }

    /// Releases a handle; its memory is freed once nothing maps it.
    pub fn mem_release(&self, handle: u64) -> Result<(), Error> {
        self.vmm(Command::MemRelease { handle }).map(drop)
    }

    /// Maps `size` bytes of `handle`'s memory from `offset` at `ptr`, inside a reservation.
    pub fn mem_map(&self, ptr: u64, size: u64, offset: u64, handle: u64) -> Result<(), Error> {
        self.vmm(Command::MemMap {
            ptr,
            size,
            offset,
            handle,
        })
        .map(drop)
    }

    /// Unmaps `[ptr, ptr + size)`: whole, adjacent mappings.
    pub fn mem_unmap(&self, ptr: u64, size: u64) -> Result<(), Error> {
        self.vmm(Command::MemUnmap { ptr, size }).map(drop)
    }

    /// Lets the device read and write the mappings of `[ptr, ptr + size)`: from then on
    /// copies, memsets and kernels may use the range as device memory.
    pub fn mem_set_access(&self, ptr: u64, size: u64) -> Result<(), Error> {
        self.vmm(Command::MemSetAccess {
            ptr,
            size,
            prot: PROT_READWRITE,
        })
        .map(drop)
    }
}
