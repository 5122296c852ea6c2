//! Backends run validated commands on a device. Everything above this trait (transport,
//! channels, queue, executor) is the same whichever backend runs underneath.
//!
//! The executor has already checked every device range against the VM's allocation table and
//! quota (see [`crate::device`]); a backend still never trusts a pointer it cannot resolve.
//! Each backend implements the commands as the methods of [`Handler`], one per command.

pub mod capture;
pub mod cpu;
pub mod cuda;
pub mod images;
pub mod isolated;
pub mod select;
pub mod vmm;
pub mod waiters;
pub mod wake;

use vgpu_abi::cmd::Command;
use vgpu_abi::tensormap::{self, TensorMapRequest};
use vgpu_abi::{ShmView, Status};

pub use vgpu_abi::cmd::Handler;

/// The CUDA version the cpu reference device reports as its driver's: the API of the CUDA 13.0
/// headers, which its description follows.
pub const CPU_DRIVER_VERSION: u32 = 13000;

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
    /// The device as the guest's driver describes it: attributes, driver version, PCI ids,
    /// and the physical device's UUID and memory (each VM's page is made from it).
    pub props: vgpu_abi::DeviceInfoPage,
}

/// Names one piece of work a backend put on the device and has not retired yet.
pub type Token = u64;

/// What [`Backend::arm_wake`] arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// [`Backend::wake_fd`] becomes readable when pending work may have retired: block on it,
    /// for at most the given time where that signal could be lost (a worker process that
    /// died; a context the driver tore down) and must be looked for by polling.
    Armed(Option<std::time::Duration>),
    /// Retirement is near or has happened: keep polling.
    Poll,
}

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

/// The tensor map request of a [`vgpu_abi::Opcode::TensorMapEncode`] at `off` in staging, read
/// once; one that describes no tensor ([`TensorMapRequest::extent`]) is an invalid argument.
pub fn read_tensor_map_request(staging: &Staging, off: u64) -> Result<TensorMapRequest, Status> {
    let bytes = staging.read(off, size_of::<TensorMapRequest>() as u64)?;
    let req = TensorMapRequest::from_bytes(&bytes).ok_or(Status::Internal)?;
    req.extent().ok_or(Status::InvalidArgument)?;
    Ok(req)
}

/// Writes an encoded tensor map where the request at `off` says the guest reads it.
pub fn write_tensor_map(staging: &Staging, off: u64, map: &[u8]) -> Result<(), Status> {
    let at = off
        .checked_add(tensormap::MAP_OFFSET)
        .filter(|a| {
            a.checked_add(map.len() as u64)
                .is_some_and(|e| e <= staging.size)
        })
        .ok_or(Status::StagingOutOfRange)?;
    staging.view.write_bytes(staging.abs(at), map);
    Ok(())
}

/// Most bytes one module image may have (the parts of one sent together). The per-VM limit
/// on loaded image bytes (`limits.max_module_bytes`) is checked before, by the VM's device.
pub const MAX_IMAGE: u64 = 1 << 30;

/// A module image that arrives in parts (`MODULE_MORE`/`MODULE_CONT`): the bytes gathered
/// so far.
#[derive(Debug, Default)]
pub struct ImageParts {
    bytes: Vec<u8>,
    /// A first part was taken and no part failed since.
    open: bool,
}

impl ImageParts {
    /// Adds `[off, off+len)` of staging to the image: a new one unless `cont`. Returns the
    /// whole image when no `more` follows. A part that fails (past [`MAX_IMAGE`], a bad read,
    /// a continuation of nothing) drops what was gathered, and so do its continuations.
    pub fn add(
        &mut self,
        staging: &Staging,
        off: u64,
        len: u64,
        more: bool,
        cont: bool,
    ) -> Result<Option<Vec<u8>>, Status> {
        if !cont {
            self.bytes = Vec::new();
            self.open = true;
        }
        let r = self.take(staging, off, len, more);
        if r.is_err() || !more {
            self.bytes = Vec::new();
            self.open = false;
        }
        r
    }

    fn take(
        &mut self,
        staging: &Staging,
        off: u64,
        len: u64,
        more: bool,
    ) -> Result<Option<Vec<u8>>, Status> {
        if !self.open || (self.bytes.len() as u64).saturating_add(len) > MAX_IMAGE {
            return Err(Status::InvalidArgument);
        }
        let part = staging.read(off, len)?;
        if self.bytes.is_empty() && !more {
            return Ok(Some(part));
        }
        self.bytes.extend_from_slice(&part);
        Ok((!more).then(|| std::mem::take(&mut self.bytes)))
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

/// Whose command it is and where it runs: the VM and the submission entry's stream (0 = the
/// default stream; commands that are not stream-ordered ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmStream {
    /// The VM.
    pub vm: VmKey,
    /// The stream.
    pub stream: u32,
}

/// A device that runs the vGPU command set.
///
/// A backend implements each command as a method of [`Handler`] (the command set's one trait,
/// declared with the commands) and answers [`Backend::submit`] with
/// [`Command::dispatch`](vgpu_abi::cmd::Command::dispatch); a backend that runs commands
/// elsewhere (a worker process, [`isolated`]) forwards the command whole.
///
/// Commands either finish before they return ([`Issued::Done`]) or leave work on the device
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
    /// Where the VM's staging area appears in its context's device address space, once the
    /// context is ready: the device reads and writes that host memory directly (CUDA's mapped
    /// host memory). `None` where it does not.
    fn staging_device_address(&self, vm: VmKey) -> Option<u64> {
        let _ = vm;
        None
    }
    /// Runs one command the VM's device admitted ([`crate::device`] checked its ranges, handles
    /// and quota). Commands whose class is not asynchronous answer with [`Issued::Done`] and
    /// their results.
    fn submit(&mut self, at: VmStream, cmd: &Command) -> Result<Issued, Status>;
    /// Whether `token` (of `vm`) retired: `None` while it still runs, else how it ended. An
    /// error here (a kernel that faulted after its launch completed) breaks the VM's context.
    fn poll(&mut self, vm: VmKey, token: Token) -> Option<Result<Retired, Status>>;
    /// How long the executor may sleep before some pending token could retire: `None` when
    /// nothing is pending, zero when the backend cannot tell (the executor then keeps polling,
    /// unless the backend has a [`Backend::wake_fd`]).
    fn poll_hint(&self) -> Option<std::time::Duration>;
    /// An fd that becomes readable once [`Backend::arm_wake`] said [`Wake::Armed`] and some
    /// pending work may have retired; the same fd for the backend's whole life. Whoever waits
    /// on it drains it with [`wake::drain`] after it fired. `None`: the backend cannot say
    /// when its work retires (the executor polls, bounded by [`Backend::poll_hint`]).
    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// Called with work pending, when the caller is about to block on [`Backend::wake_fd`]:
    /// makes the fd readable no later than `early` before the earliest pending work may
    /// retire (a backend that cannot predict retirement signals when it happened). Answers
    /// [`Wake::Poll`] when something retires within `early` or already has: the caller keeps
    /// polling instead of blocking. A spurious wake-up is allowed; a missed one is not.
    fn arm_wake(&mut self, early: std::time::Duration) -> Wake {
        let _ = early;
        Wake::Poll
    }
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
    /// Worker processes holding this device's contexts now; `None` where the backend runs
    /// the contexts inside vgpud (for the metrics).
    fn worker_processes(&self) -> Option<usize> {
        None
    }
}
