//! Typed commands, one per method, each submitted and awaited on the default stream: device
//! memory, fills and copies inside the device, kernel launches with packed parameters (the
//! built-in helpers launch through [`Device::launch`] too) and synchronisation.

use vgpu_abi::cmd::{Command, LaunchBody};
use vgpu_abi::Builtin;

use super::Device;
use crate::Error;

impl Device {
    /// Does nothing on the device: one round trip.
    pub fn nop(&self) -> Result<(), Error> {
        self.exec(Command::Nop).map(drop)
    }

    /// Device memory `(used, quota)` of this VM, in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64), Error> {
        let c = self.exec(Command::GetInfo)?;
        Ok((c.result0, c.result1))
    }

    /// Allocates `size` bytes of device memory; returns the device pointer.
    pub fn alloc(&self, size: u64) -> Result<u64, Error> {
        if size == 0 {
            return Err(Error::InvalidArgument("alloc of 0 bytes".into()));
        }
        Ok(self.exec(Command::MemAlloc { size })?.result0)
    }

    /// Frees an allocation made by [`Device::alloc`].
    pub fn free(&self, ptr: u64) -> Result<(), Error> {
        self.exec(Command::MemFree { ptr }).map(drop)
    }

    /// Sets `len` bytes at `dst` to `value`.
    pub fn memset_d8(&self, dst: u64, value: u8, len: u64) -> Result<(), Error> {
        self.exec(Command::Memset {
            dst,
            len,
            value: value as u32,
            width: 1,
        })
        .map(drop)
    }

    /// Sets `count` 32-bit words at `dst` to `value`.
    pub fn memset_d32(&self, dst: u64, value: u32, count: u64) -> Result<(), Error> {
        let len = count
            .checked_mul(4)
            .ok_or_else(|| Error::InvalidArgument(format!("memset of {count} words")))?;
        self.exec(Command::Memset {
            dst,
            len,
            value,
            width: 4,
        })
        .map(drop)
    }

    /// Copies `len` bytes from device memory at `src` to `dst`.
    pub fn copy_dtod(&self, dst: u64, src: u64, len: u64) -> Result<(), Error> {
        self.exec(Command::CopyD2D { dst, src, len }).map(drop)
    }

    /// Launches the kernel `func` with packed parameters (at most 72 bytes).
    pub fn launch(
        &self,
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> Result<(), Error> {
        let body = LaunchBody::new(func, grid, block, params).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} bytes of kernel parameters, at most {} fit",
                params.len(),
                vgpu_abi::cmd::MAX_INLINE_PARAMS
            ))
        })?;
        self.exec(Command::Launch { launch: body }).map(drop)
    }

    /// Launches a built-in kernel.
    pub fn launch_builtin(
        &self,
        k: Builtin,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> Result<(), Error> {
        self.launch(k.handle(), grid, block, params)
    }

    /// Waits until every earlier command on every stream has completed.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.exec(Command::Synchronize { all_streams: true })
            .map(drop)
    }
}
