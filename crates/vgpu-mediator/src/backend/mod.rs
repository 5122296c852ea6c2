//! Backends run validated commands on a device. Everything above this trait (transport,
//! channels, queue, executor) is the same whichever backend runs underneath.
//!
//! The executor has already checked every device range against the VM's allocation table and
//! quota (see [`crate::device`]); a backend still never trusts a pointer it cannot resolve.

pub mod cpu;
pub mod cuda;
pub mod isolated;
pub mod kernels;
pub mod select;

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
    /// Extra `CAP_*` bits this backend offers (e.g. [`vgpu_abi::regs::CAP_MODULES`]).
    pub caps: u64,
}

/// Names one piece of work a backend put on the device and has not retired yet.
pub type Token = u64;

/// What a backend did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// It finished; complete the command now with these results.
    Done(u64, u64),
    /// It is on the device; complete the command with these results once
    /// [`Backend::poll`] says `token` retired.
    Pending(Token, u64, u64),
}

impl Issued {
    /// A finished command with no results.
    pub const DONE: Issued = Issued::Done(0, 0);
}

/// How a pending piece of work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// Device time it took, in nanoseconds (as measured by the device where it can).
    pub device_ns: u64,
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

    /// Copies `[off, off+len)` of staging out of shared memory (once; the guest may change it
    /// at any time). The range was validated by `Command::decode`; it is checked again here.
    pub fn read(&self, off: u64, len: u64) -> Result<Vec<u8>, Status> {
        match off.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => return Err(Status::StagingOutOfRange),
        }
        let mut v = vec![0u8; len as usize];
        self.view.read_bytes(self.abs(off), &mut v);
        Ok(v)
    }
}

/// What a backend needs to give a VM its context.
#[derive(Debug, Clone)]
pub struct ContextParams {
    /// The VM's staging area.
    pub staging: Staging,
    /// The VM's priority (0 = lowest); the cuda backend maps it onto CUDA stream priorities.
    pub priority: u32,
    /// The VM's whole shared region (its memfd), for backends that run the VM's work in
    /// another process ([`isolated`]); `None` where the caller has no memfd (unit tests).
    pub region: Option<std::sync::Arc<crate::transport::SharedRegion>>,
}

/// A kernel name from guest bytes: non-empty, no NUL, printable ASCII only.
pub fn kernel_name(bytes: &[u8]) -> Result<std::ffi::CString, Status> {
    if bytes.is_empty() || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Status::InvalidArgument);
    }
    std::ffi::CString::new(bytes).map_err(|_| Status::InvalidArgument)
}

/// Backend errors outside a command (context creation).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device could not give the VM a context.
    #[error("creating a device context: {0}")]
    Context(String),
}

/// A device that runs the vGPU command set.
///
/// Operations either finish before they return ([`Issued::Done`]) or leave work on the device
/// ([`Issued::Pending`]); the executor polls pending tokens and completes the command when its
/// token retires. A backend for which [`Backend::orders_streams`] is false relies on the
/// executor never to issue a command of a stream while an earlier one of that stream is pending.
pub trait Backend: Send {
    /// The device.
    fn info(&self) -> DeviceInfo;
    /// Gives a VM its own context (address space) bound to its staging area.
    fn create_context(&mut self, vm: VmKey, params: ContextParams) -> Result<(), BackendError>;
    /// Destroys a VM's context and frees all its memory.
    fn destroy_context(&mut self, vm: VmKey);
    /// Whether the context [`Backend::create_context`] started for `vm` is ready: `None` while
    /// it is still being created (nothing may be sent for the VM yet), `Some(Err)` when that
    /// failed (the context is gone). A backend that creates contexts before returning from
    /// `create_context` is always ready.
    fn context_ready(&mut self, vm: VmKey) -> Option<Result<(), BackendError>> {
        let _ = vm;
        Some(Ok(()))
    }
    /// Allocates `size` bytes; returns the device pointer.
    fn alloc(&mut self, vm: VmKey, size: u64) -> Result<u64, Status>;
    /// Frees an allocation.
    fn free(&mut self, vm: VmKey, ptr: u64) -> Result<(), Status>;
    /// Fills `len` bytes at `dst` with `value` of `width` bytes.
    fn memset(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        dst: u64,
        len: u64,
        value: u32,
        width: u32,
    ) -> Result<Issued, Status>;
    /// Staging → device.
    fn copy_h2d(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        dst: u64,
        staging_off: u64,
        len: u64,
    ) -> Result<Issued, Status>;
    /// Device → staging.
    fn copy_d2h(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        src: u64,
        staging_off: u64,
        len: u64,
    ) -> Result<Issued, Status>;
    /// Device → device.
    fn copy_d2d(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        dst: u64,
        src: u64,
        len: u64,
    ) -> Result<Issued, Status>;
    /// Launches a kernel on the op's stream.
    fn launch(&mut self, vm: VmKey, op: &StreamOp, launch: &LaunchBody) -> Result<Issued, Status>;
    /// Completes once everything the VM issued earlier on the op's stream (or on every stream,
    /// when `all_streams`) has finished.
    fn synchronize(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        all_streams: bool,
    ) -> Result<Issued, Status>;
    /// Loads a PTX module from `[staging_off, +len)` of the VM's staging; returns its handle
    /// (never one with [`vgpu_abi::cmd::BUILTIN_FUNC_FLAG`], unique across VMs).
    fn module_load(&mut self, vm: VmKey, staging_off: u64, len: u64) -> Result<u64, Status> {
        let _ = (vm, staging_off, len);
        Err(Status::NotSupported)
    }
    /// Unloads a module of this VM; its functions become invalid.
    fn module_unload(&mut self, vm: VmKey, module: u64) -> Result<(), Status> {
        let _ = (vm, module);
        Err(Status::NotSupported)
    }
    /// Looks up a kernel of a module of this VM by the name at `[staging_off, +len)`; returns
    /// `(function handle, number of parameters)`.
    fn get_function(
        &mut self,
        vm: VmKey,
        module: u64,
        staging_off: u64,
        len: u64,
    ) -> Result<(u64, u32), Status> {
        let _ = (vm, module, staging_off, len);
        Err(Status::NotSupported)
    }
    /// `(offset, size)` of parameter `index` of a function of this VM (not a built-in: those
    /// are answered from the ABI).
    fn func_param_info(&mut self, vm: VmKey, func: u64, index: u32) -> Result<(u64, u64), Status> {
        let _ = (vm, func, index);
        Err(Status::NotSupported)
    }
    /// Records `event` on the op's stream: it completes once everything issued earlier on
    /// that stream has.
    fn event_record(&mut self, vm: VmKey, op: &StreamOp, event: u32) -> Result<Issued, Status> {
        let _ = (vm, op, event);
        Err(Status::NotSupported)
    }
    /// Makes the op's stream wait (on the device) for the event's latest record. An event
    /// never recorded is complete.
    fn stream_wait_event(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        event: u32,
    ) -> Result<Issued, Status> {
        let _ = (vm, op, event);
        Err(Status::NotSupported)
    }
    /// Completes once the event's latest record has completed (at once if never recorded).
    fn event_synchronize(&mut self, vm: VmKey, event: u32) -> Result<Issued, Status> {
        let _ = (vm, event);
        Err(Status::NotSupported)
    }
    /// Nanoseconds from the record of `start` to that of `end` (both completed; else
    /// [`Status::NotReady`], or [`Status::InvalidArgument`] if one was never recorded).
    fn event_elapsed(&mut self, vm: VmKey, start: u32, end: u32) -> Result<i64, Status> {
        let _ = (vm, start, end);
        Err(Status::NotSupported)
    }
    /// Whether `token` (of `vm`) retired: `None` while it still runs, else how it ended. An
    /// error here (a kernel that faulted after its launch completed) breaks the VM's context.
    fn poll(&mut self, vm: VmKey, token: Token) -> Option<Result<Retired, Status>>;
    /// How long the executor may sleep before some pending token could retire: `None` when
    /// nothing is pending, zero when the backend cannot tell (the executor then keeps polling).
    fn poll_hint(&self) -> Option<std::time::Duration>;
    /// Whether the device itself keeps each stream's commands in order (CUDA streams do). When
    /// false the executor holds a stream's next command until its pending one retires.
    fn orders_streams(&self) -> bool;
    /// Whether more than one VM uses this device now. A backend may skip per-kernel accounting
    /// while one VM has the device to itself (nothing to schedule against), and must account
    /// again once it is shared. The default ignores it.
    fn set_shared(&mut self, shared: bool) {
        let _ = shared;
    }
    /// Whether freeing memory or unloading a module waits for the VM's work on the device
    /// (CUDA synchronises them): the executor then holds those commands until that work
    /// retired instead of waiting inside the call.
    fn calls_wait_for_device(&self) -> bool {
        false
    }
    /// Whether [`Backend::destroy_context`] also stops the VM's work on the device at once (a
    /// killed worker process) instead of leaving it to end. When false, a reset waits for the
    /// VM's pending work to retire first, so that the device time it still takes is the VM's.
    fn destroy_stops_work(&self) -> bool {
        false
    }
    /// Stops the VM's work on the device now and destroys its context (a kernel time limit).
    /// Returns false where the backend cannot stop running work (a CUDA context inside vgpud:
    /// only a process holding a context can be made to drop it); then nothing is done.
    fn kill_context(&mut self, vm: VmKey) -> bool {
        let _ = vm;
        false
    }
}

/// Where a command runs: its VM-local stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamOp {
    /// The submission entry's stream (0 = the default stream).
    pub stream: u32,
}

/// A backend chosen at run time (`--backend auto|cpu|cuda`).
impl Backend for Box<dyn Backend> {
    fn info(&self) -> DeviceInfo {
        (**self).info()
    }
    fn create_context(&mut self, vm: VmKey, params: ContextParams) -> Result<(), BackendError> {
        (**self).create_context(vm, params)
    }
    fn destroy_context(&mut self, vm: VmKey) {
        (**self).destroy_context(vm)
    }
    fn context_ready(&mut self, vm: VmKey) -> Option<Result<(), BackendError>> {
        (**self).context_ready(vm)
    }
    fn alloc(&mut self, vm: VmKey, size: u64) -> Result<u64, Status> {
        (**self).alloc(vm, size)
    }
    fn free(&mut self, vm: VmKey, ptr: u64) -> Result<(), Status> {
        (**self).free(vm, ptr)
    }
    fn memset(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        dst: u64,
        len: u64,
        value: u32,
        width: u32,
    ) -> Result<Issued, Status> {
        (**self).memset(vm, op, dst, len, value, width)
    }
    fn copy_h2d(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        dst: u64,
        staging_off: u64,
        len: u64,
    ) -> Result<Issued, Status> {
        (**self).copy_h2d(vm, op, dst, staging_off, len)
    }
    fn copy_d2h(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        src: u64,
        staging_off: u64,
        len: u64,
    ) -> Result<Issued, Status> {
        (**self).copy_d2h(vm, op, src, staging_off, len)
    }
    fn copy_d2d(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        dst: u64,
        src: u64,
        len: u64,
    ) -> Result<Issued, Status> {
        (**self).copy_d2d(vm, op, dst, src, len)
    }
    fn launch(&mut self, vm: VmKey, op: &StreamOp, launch: &LaunchBody) -> Result<Issued, Status> {
        (**self).launch(vm, op, launch)
    }
    fn synchronize(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        all_streams: bool,
    ) -> Result<Issued, Status> {
        (**self).synchronize(vm, op, all_streams)
    }
    fn module_load(&mut self, vm: VmKey, staging_off: u64, len: u64) -> Result<u64, Status> {
        (**self).module_load(vm, staging_off, len)
    }
    fn module_unload(&mut self, vm: VmKey, module: u64) -> Result<(), Status> {
        (**self).module_unload(vm, module)
    }
    fn get_function(
        &mut self,
        vm: VmKey,
        module: u64,
        staging_off: u64,
        len: u64,
    ) -> Result<(u64, u32), Status> {
        (**self).get_function(vm, module, staging_off, len)
    }
    fn func_param_info(&mut self, vm: VmKey, func: u64, index: u32) -> Result<(u64, u64), Status> {
        (**self).func_param_info(vm, func, index)
    }
    fn event_record(&mut self, vm: VmKey, op: &StreamOp, event: u32) -> Result<Issued, Status> {
        (**self).event_record(vm, op, event)
    }
    fn stream_wait_event(
        &mut self,
        vm: VmKey,
        op: &StreamOp,
        event: u32,
    ) -> Result<Issued, Status> {
        (**self).stream_wait_event(vm, op, event)
    }
    fn event_synchronize(&mut self, vm: VmKey, event: u32) -> Result<Issued, Status> {
        (**self).event_synchronize(vm, event)
    }
    fn event_elapsed(&mut self, vm: VmKey, start: u32, end: u32) -> Result<i64, Status> {
        (**self).event_elapsed(vm, start, end)
    }
    fn poll(&mut self, vm: VmKey, token: Token) -> Option<Result<Retired, Status>> {
        (**self).poll(vm, token)
    }
    fn poll_hint(&self) -> Option<std::time::Duration> {
        (**self).poll_hint()
    }
    fn orders_streams(&self) -> bool {
        (**self).orders_streams()
    }
    fn set_shared(&mut self, shared: bool) {
        (**self).set_shared(shared)
    }
    fn calls_wait_for_device(&self) -> bool {
        (**self).calls_wait_for_device()
    }
    fn destroy_stops_work(&self) -> bool {
        (**self).destroy_stops_work()
    }
    fn kill_context(&mut self, vm: VmKey) -> bool {
        (**self).kill_context(vm)
    }
}
