//! Backends run validated commands on a device. Everything above this trait (transport,
//! channels, queue, executor) is the same whichever backend runs underneath.
//!
//! The executor has already checked every device range against the VM's allocation table and
//! quota (see [`crate::device`]); a backend still never trusts a pointer it cannot resolve.

pub mod cpu;
pub mod kernels;

use vgpu_abi::cmd::LaunchBody;
use vgpu_abi::{ShmView, Status};

/// Index of a VM (its position in the config).
pub type VmKey = usize;

/// What a backend says about its device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// [`vgpu_abi::regs::BACKEND_CPU`] or [`vgpu_abi::regs::BACKEND_CUDA`].
    pub kind: u32,
    /// Short backend name ("cpu", "cuda").
    pub backend: &'static str,
    /// Device name.
    pub name: String,
    /// Device memory in bytes.
    pub total_mem: u64,
}

/// A VM's staging area: the part of its shared memory that commands copy from and to.
#[derive(Debug, Clone, Copy)]
pub struct Staging {
    /// The whole shared region.
    pub view: ShmView,
    /// Offset of the staging area in it.
    pub offset: u64,
    /// Size of the staging area.
    pub size: u64,
}

impl Staging {
    /// Absolute offset in the region of a staging offset already validated against `size`.
    pub fn abs(&self, off: u64) -> usize {
        debug_assert!(off <= self.size);
        (self.offset + off) as usize
    }
}

/// Backend errors outside a command (context creation).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device could not give the VM a context.
    #[error("creating a device context: {0}")]
    Context(String),
}

/// A device that runs the vGPU command set.
pub trait Backend: Send {
    /// The device.
    fn info(&self) -> DeviceInfo;
    /// Gives a VM its own context (address space) bound to its staging area.
    fn create_context(&mut self, vm: VmKey, staging: Staging) -> Result<(), BackendError>;
    /// Destroys a VM's context and frees all its memory.
    fn destroy_context(&mut self, vm: VmKey);
    /// Allocates `size` bytes; returns the device pointer.
    fn alloc(&mut self, vm: VmKey, size: u64) -> Result<u64, Status>;
    /// Frees an allocation.
    fn free(&mut self, vm: VmKey, ptr: u64) -> Result<(), Status>;
    /// Fills `len` bytes at `dst` with `value` of `width` bytes.
    fn memset(
        &mut self,
        vm: VmKey,
        dst: u64,
        len: u64,
        value: u32,
        width: u32,
    ) -> Result<(), Status>;
    /// Staging → device.
    fn copy_h2d(&mut self, vm: VmKey, dst: u64, staging_off: u64, len: u64) -> Result<(), Status>;
    /// Device → staging.
    fn copy_d2h(&mut self, vm: VmKey, src: u64, staging_off: u64, len: u64) -> Result<(), Status>;
    /// Device → device.
    fn copy_d2d(&mut self, vm: VmKey, dst: u64, src: u64, len: u64) -> Result<(), Status>;
    /// Runs a kernel to completion.
    fn launch(&mut self, vm: VmKey, launch: &LaunchBody) -> Result<(), Status>;
    /// Waits for everything the VM queued on the device.
    fn synchronize(&mut self, vm: VmKey) -> Result<(), Status>;
}
