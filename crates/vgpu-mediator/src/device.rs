//! The per-VM virtual device: the backend-neutral checks every command passes before a backend
//! sees it (allocation, module and function ownership, ranges, quota, stream count, sticky
//! faults), and the accounting after.

use crate::backend::{Backend, Issued, VmKey, VmStream};
use crate::config::Limits;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use vgpu_abi::cmd::{Builtin, BusyParams, Command, Effect, MAX_STREAMS};
use vgpu_abi::Status;
use zerocopy::FromBytes;

use crate::backend::vmm;

/// Result of one command: `(result0, result1)` or an error status.
pub type Outcome = Result<(u64, u64), Status>;

/// Result of issuing one command: finished, pending on the device, or an error status.
pub type IssueOutcome = Result<Issued, Status>;

/// The VM's view of its device.
#[derive(Debug)]
pub struct VirtualDevice {
    vm: VmKey,
    allocs: BTreeMap<u64, u64>,
    used: u64,
    quota: u64,
    /// The pool's quota, shared with the pool's other VMs (see [`VirtualDevice::with_pool`]).
    pool: Option<std::sync::Arc<crate::quota::PoolQuota>>,
    max_kernel_us: u32,
    /// Set by a kernel fault; every later command fails until reset.
    broken: bool,
    /// Set when the backend could not create the VM's context; every command but the
    /// queries fails with `ContextUnavailable` until reset.
    unavailable: bool,
    /// Per-VM limits.
    limits: Limits,
    /// Stream ids this VM has used (at most `limits.max_streams`).
    streams: BTreeSet<u32>,
    /// Event ids this VM has recorded (at most `limits.max_events`).
    events: HashSet<u32>,
    /// Loaded modules: the functions looked up in each and the image size.
    modules: HashMap<u64, (Vec<u64>, u64)>,
    /// Bytes of the loaded module images.
    module_bytes: u64,
    /// Bytes of the image arriving in parts (counted against the module bytes limit).
    image_parts: u64,
    /// A part of the image in progress failed: its continuations fail too, until an image
    /// starts anew.
    parts_failed: bool,
    /// Global variables looked up in this VM's modules: address → (size, module). The VM may
    /// copy to and from them as from its allocations.
    globals: BTreeMap<u64, (u64, u64)>,
    /// Functions of this VM's modules, with their module.
    functions: HashMap<u64, u64>,
    /// Error completions posted to the VM so far ([`VirtualDevice::note_errors`]), and their
    /// number at its previous fence: a fence after a failure is skipped.
    errors_posted: u64,
    errors_at_fence: u64,
    /// The VM's staging area as its context maps it (device address, size): host memory the
    /// device reaches directly, the VM's own, which its commands may name like an allocation.
    mapped_staging: Option<(u64, u64)>,
    /// Virtual memory management: reservations, memory handles (their bytes are in `used`)
    /// and mappings.
    vmm: vmm::Vmm,
    /// The VM's graphs (made by its stream captures) and executable graphs (1.7).
    graphs: HashSet<u64>,
    execs: HashSet<u64>,
}

/// Functions one VM may have looked up (over all its loaded modules): a library such as
/// cuBLAS launches thousands of distinct kernels.
pub const MAX_FUNCTIONS: usize = 16_384;
/// Global variables one VM may have looked up (over all its loaded modules).
pub const MAX_GLOBALS: usize = 16_384;
/// Graphs one VM may hold at once, and as many executable graphs (each a host object of the
/// backend's: a captured graph of many nodes, or its recorded commands on the cpu device).
pub const MAX_GRAPHS: usize = 4096;

impl VirtualDevice {
    /// A fresh device with no allocations.
    pub fn new(vm: VmKey, quota: u64, max_kernel_us: u32) -> Self {
        Self {
            vm,
            allocs: BTreeMap::new(),
            used: 0,
            quota,
            pool: None,
            max_kernel_us,
            broken: false,
            unavailable: false,
            limits: Limits::default(),
            streams: BTreeSet::new(),
            events: HashSet::new(),
            modules: HashMap::new(),
            module_bytes: 0,
            image_parts: 0,
            parts_failed: false,
            globals: BTreeMap::new(),
            functions: HashMap::new(),
            errors_posted: 0,
            errors_at_fence: 0,
            mapped_staging: None,
            vmm: vmm::Vmm::default(),
            graphs: HashSet::new(),
            execs: HashSet::new(),
        }
    }

    /// Applies per-VM limits (the defaults of [`Limits`] otherwise).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Marks the VM's context as one the backend could not create.
    pub fn set_unavailable(&mut self) {
        self.unavailable = true;
    }

    /// Memory in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Also charges allocations to the pool quota `pool` (shared with the pool's other VMs).
    /// What the device still holds goes back to it when the device is dropped (the VM left or
    /// reset: its context and memory are gone).
    pub fn with_pool(mut self, pool: std::sync::Arc<crate::quota::PoolQuota>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Changes the VM's quota (a reload); memory held above a lowered quota stays held.
    pub fn set_quota(&mut self, quota: u64) {
        self.quota = quota;
    }

    /// Whether a fault broke the context.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Checks that `[ptr, ptr+len)` lies inside one allocation or one module global of this
    /// VM, or inside adjacent mappings of it with read-write access.
    pub fn check_range(&self, ptr: u64, len: u64) -> Result<(), Status> {
        let end = ptr.checked_add(len).ok_or(Status::InvalidAddress)?;
        let inside =
            |found: Option<(u64, u64)>| found.is_some_and(|(base, size)| end <= base + size);
        let alloc = self.allocs.range(..=ptr).next_back().map(|(&b, &s)| (b, s));
        let global = self
            .globals
            .range(..=ptr)
            .next_back()
            .map(|(&b, &(s, _))| (b, s));
        let mapped = self.mapped_staging.filter(|&(base, _)| ptr >= base);
        if inside(alloc) || inside(global) || inside(mapped) || self.vmm.usable(ptr, len) {
            Ok(())
        } else {
            Err(Status::InvalidAddress)
        }
    }

    /// Marks the context broken (a fault that surfaced after its command completed).
    pub fn set_broken(&mut self) {
        self.broken = true;
    }

    /// Admits `stream` (a new id only while fewer than `max_streams` are in use).
    fn use_stream(&mut self, stream: u32) -> Result<(), Status> {
        if !self.streams.contains(&stream) {
            // Past the ABI's own bound a stream id is invalid; below it, past the host's
            // configured limit, it is a limit.
            if self.streams.len() >= MAX_STREAMS {
                return Err(Status::InvalidArgument);
            }
            if self.streams.len() >= self.limits.max_streams as usize {
                return Err(Status::LimitExceeded);
            }
            self.streams.insert(stream);
        }
        Ok(())
    }

    /// Admits `event` (a new id only while fewer than `max_events` are recorded).
    fn use_event(&mut self, event: u32) -> Result<(), Status> {
        if !self.events.contains(&event) {
            if self.events.len() >= self.limits.max_events as usize {
                return Err(Status::LimitExceeded);
            }
            self.events.insert(event);
        }
        Ok(())
    }

    /// Checks that `func` is a built-in or a function of this VM.
    fn check_function(&self, func: u64) -> Result<Option<Builtin>, Status> {
        if let Some(b) = Builtin::from_handle(func) {
            return Ok(Some(b));
        }
        if self.functions.contains_key(&func) {
            Ok(None)
        } else {
            Err(Status::InvalidFunction)
        }
    }

    /// Where the VM's context maps its staging area (`None`: it does not), from when the
    /// context is ready.
    pub fn set_mapped_staging(&mut self, range: Option<(u64, u64)>) {
        self.mapped_staging = range;
    }

    /// How many error completions the VM's channel has posted (before each command: a fence
    /// is skipped after a new one).
    pub fn note_errors(&mut self, posted: u64) {
        self.errors_posted = posted;
    }

    /// Issues one validated command on `stream`. A fault reported by the backend breaks the
    /// context (sticky until reset).
    pub fn execute<B: Backend + ?Sized>(
        &mut self,
        be: &mut B,
        stream: u32,
        cmd: &Command,
    ) -> IssueOutcome {
        let out = self.issue(be, stream, cmd);
        if let Err(status) = out {
            // NOT_READY is a query's answer, not a refusal.
            if status != Status::NotReady {
                tracing::debug!(vm = ?self.vm, stream, opcode = ?cmd.opcode(), ?status,
                                ranges = ?cmd.device_ranges(), "command refused");
            }
        }
        if matches!(out, Err(Status::KernelFault | Status::ContextLost)) {
            self.broken = true;
        }
        if let (Err(_), Effect::LoadModule { more: true, .. }) = (&out, cmd.effect()) {
            // The backend dropped the image (or never saw this part): its remaining parts
            // must not be taken for a new image.
            self.parts_failed = true;
            self.image_parts = 0;
        }
        out
    }

    /// Admits a command by its declared class, ranges and effect, has the backend run it, and
    /// accounts what it allocated or loaded. Nothing here names a command: a new command with
    /// no new kind of effect needs no change here.
    fn issue<B: Backend + ?Sized>(
        &mut self,
        be: &mut B,
        stream: u32,
        cmd: &Command,
    ) -> IssueOutcome {
        let effect = cmd.effect();
        match effect {
            Effect::Ping => return Ok(Issued::DONE),
            Effect::Info => return Ok(Issued::Done(self.used, self.quota)),
            _ if self.unavailable => return Err(Status::ContextUnavailable),
            _ if self.broken => return Err(Status::ContextLost),
            _ => {}
        }
        if cmd.class().stream {
            self.use_stream(stream)?;
        }
        for (ptr, len) in cmd.device_ranges().iter() {
            self.check_range(ptr, len)?;
        }
        if let Some(answer) = self.admit(&effect)? {
            return Ok(answer);
        }
        let at = VmStream {
            vm: self.vm,
            stream,
        };
        let issued = be.submit(at, cmd);
        match (effect, issued) {
            (Effect::Alloc { size } | Effect::CreateMemory { size }, _) => {
                match issued.and_then(done) {
                    Ok((id, _)) => {
                        if matches!(effect, Effect::Alloc { .. }) {
                            self.allocs.insert(id, size);
                        } else {
                            self.vmm.created(id, size);
                        }
                        self.used += size;
                        Ok(Issued::Done(id, 0))
                    }
                    Err(e) => {
                        // Taken from the pool at admission, never added to `used`.
                        if let Some(p) = &self.pool {
                            p.give_back(size);
                        }
                        Err(e)
                    }
                }
            }
            (_, Err(_)) => issued,
            (Effect::Reserve { size }, Ok(i)) => {
                let (ptr, _) = done(i)?;
                self.vmm.reserved(ptr, size);
                Ok(Issued::Done(ptr, 0))
            }
            (Effect::Unreserve { ptr, .. }, Ok(i)) => {
                done(i)?;
                self.vmm.unreserved(ptr);
                Ok(Issued::DONE)
            }
            (Effect::ReleaseMemory { handle }, Ok(i)) => {
                done(i)?;
                let freed = self.vmm.released(handle);
                self.give_back(freed.unwrap_or(0));
                Ok(Issued::DONE)
            }
            (
                Effect::Map {
                    ptr,
                    size,
                    offset,
                    handle,
                },
                Ok(i),
            ) => {
                done(i)?;
                self.vmm.mapped(ptr, size, offset, handle);
                Ok(Issued::DONE)
            }
            (Effect::Unmap { ptr, size }, Ok(i)) => {
                done(i)?;
                let freed = self.vmm.unmapped(ptr, size);
                self.give_back(freed.iter().map(|&(_, s)| s).sum());
                Ok(Issued::DONE)
            }
            (Effect::SetAccess { ptr, size }, Ok(i)) => {
                done(i)?;
                self.vmm.allow(ptr, size);
                Ok(Issued::DONE)
            }
            (Effect::Transfer { len, .. }, Ok(i)) => Ok(with_result(i, len)),
            (Effect::Free { ptr }, Ok(i)) => {
                done(i)?;
                let size = self.allocs.remove(&ptr).unwrap_or(0);
                self.give_back(size);
                Ok(Issued::DONE)
            }
            (
                Effect::LoadModule {
                    more: true, len, ..
                },
                Ok(i),
            ) => {
                done(i)?;
                self.image_parts += len;
                Ok(Issued::DONE)
            }
            (
                Effect::LoadModule {
                    more: false, len, ..
                },
                Ok(i),
            ) => {
                let m = done(i)?.0;
                let len = std::mem::take(&mut self.image_parts) + len;
                self.modules.insert(m, (Vec::new(), len));
                self.module_bytes += len;
                Ok(Issued::Done(m, 0))
            }
            (Effect::UnloadModule { module }, Ok(i)) => {
                done(i)?;
                let (funcs, len) = self.modules.remove(&module).unwrap_or_default();
                self.module_bytes -= len;
                for f in funcs {
                    self.functions.remove(&f);
                }
                self.globals.retain(|_, &mut (_, m)| m != module);
                Ok(Issued::DONE)
            }
            (Effect::LookupGlobal { module }, Ok(i)) => {
                let (ptr, size) = done(i)?;
                if !self.globals.contains_key(&ptr) {
                    if self.globals.len() >= MAX_GLOBALS {
                        return Err(Status::LimitExceeded);
                    }
                    self.globals.insert(ptr, (size, module));
                }
                Ok(Issued::Done(ptr, size))
            }
            (Effect::LookupFunction { module }, Ok(i)) => {
                let (f, nparams) = done(i)?;
                if !self.functions.contains_key(&f) {
                    if self.functions.len() >= MAX_FUNCTIONS {
                        return Err(Status::InvalidArgument);
                    }
                    self.functions.insert(f, module);
                    self.modules.entry(module).or_default().0.push(f);
                }
                Ok(Issued::Done(f, nparams))
            }
            (Effect::EndCapture, Ok(i)) => {
                let (g, nodes) = done(i)?;
                self.graphs.insert(g);
                Ok(Issued::Done(g, nodes))
            }
            (Effect::Instantiate { .. }, Ok(i)) => {
                let (x, _) = done(i)?;
                self.execs.insert(x);
                Ok(Issued::Done(x, 0))
            }
            (Effect::DestroyExec { exec }, Ok(i)) => {
                done(i)?;
                self.execs.remove(&exec);
                Ok(Issued::DONE)
            }
            (Effect::DestroyGraph { graph }, Ok(i)) => {
                done(i)?;
                self.graphs.remove(&graph);
                Ok(Issued::DONE)
            }
            (_, Ok(i)) => Ok(i),
        }
    }

    /// Memory of `size` bytes the VM no longer holds: off its use and back to its pool.
    fn give_back(&mut self, size: u64) {
        self.used -= size;
        if let Some(p) = &self.pool {
            p.give_back(size);
        }
    }

    /// Checks `size` more bytes against the allocation limit and the quotas, and takes them
    /// from the pool's.
    fn admit_memory(&self, size: u64) -> Result<(), Status> {
        // The byte quota alone does not bound vgpud's own memory: every allocation is an
        // entry here and in the backend, whatever its size.
        if self.allocs.len() + self.vmm.handles() >= self.limits.max_allocations as usize {
            return Err(Status::LimitExceeded);
        }
        if self.used.saturating_add(size) > self.quota {
            return Err(Status::QuotaExceeded);
        }
        if self.pool.as_ref().is_some_and(|p| !p.try_take(size)) {
            return Err(Status::QuotaExceeded);
        }
        Ok(())
    }

    /// The checks of an effect before the backend sees the command. Returns the answer where
    /// the device gives it itself (a built-in's parameter layout is the ABI's).
    fn admit(&mut self, effect: &Effect) -> Result<Option<Issued>, Status> {
        match *effect {
            Effect::Alloc { size } | Effect::CreateMemory { size } => self.admit_memory(size)?,
            Effect::Reserve { size } => self
                .vmm
                .admit_reserve(size, self.limits.max_allocations as usize)?,
            Effect::Unreserve { ptr, size } => self.vmm.admit_unreserve(ptr, size)?,
            Effect::ReleaseMemory { handle } => self.vmm.admit_release(handle)?,
            Effect::Map {
                ptr,
                size,
                offset,
                handle,
            } => self.vmm.admit_map(
                ptr,
                size,
                offset,
                handle,
                self.limits.max_allocations as usize,
            )?,
            Effect::Unmap { ptr, size } | Effect::SetAccess { ptr, size } => {
                self.vmm.cover(ptr, size).map(drop)?
            }
            Effect::Free { ptr } => {
                if !self.allocs.contains_key(&ptr) {
                    return Err(Status::InvalidAddress);
                }
            }
            Effect::LoadModule { len, cont, .. } => {
                if !cont {
                    self.image_parts = 0;
                    self.parts_failed = false;
                } else if self.parts_failed {
                    return Err(Status::InvalidArgument);
                }
                let bytes = self
                    .module_bytes
                    .saturating_add(self.image_parts)
                    .saturating_add(len);
                if self.modules.len() >= self.limits.max_modules as usize
                    || bytes > self.limits.max_module_bytes.0
                {
                    return Err(Status::LimitExceeded);
                }
            }
            Effect::UnloadModule { module }
            | Effect::LookupFunction { module }
            | Effect::LookupGlobal { module } => {
                if !self.modules.contains_key(&module) {
                    return Err(Status::InvalidArgument);
                }
            }
            Effect::Launch(ref l) => {
                if self.check_function(l.func)? == Some(Builtin::Busy) {
                    let p = BusyParams::read_from_bytes(l.params())
                        .map_err(|_| Status::InvalidArgument)?;
                    if p.duration_us > self.max_kernel_us {
                        return Err(Status::InvalidArgument);
                    }
                }
            }
            Effect::LaunchFunction { func } | Effect::FunctionQuery { func } => {
                // Built-ins take the inline launch (their parameters are checked at admission)
                // and have no attributes to read or set.
                if self.check_function(func)?.is_some() {
                    return Err(Status::InvalidFunction);
                }
            }
            Effect::ParamInfo { func, index } => {
                if let Some(b) = self.check_function(func)? {
                    let &(o, s) = b
                        .param_layout()
                        .get(index as usize)
                        .ok_or(Status::InvalidArgument)?;
                    return Ok(Some(Issued::Done(o as u64, s as u64)));
                }
            }
            Effect::RecordEvent { event } => self.use_event(event)?,
            // Graphs: a VM names only its own; each kind is bounded, as modules are.
            Effect::EndCapture => {
                if self.graphs.len() >= MAX_GRAPHS {
                    return Err(Status::LimitExceeded);
                }
            }
            Effect::Instantiate { graph } => {
                if !self.graphs.contains(&graph) {
                    return Err(Status::InvalidArgument);
                }
                if self.execs.len() >= MAX_GRAPHS {
                    return Err(Status::LimitExceeded);
                }
            }
            Effect::DestroyGraph { graph } => {
                if !self.graphs.contains(&graph) {
                    return Err(Status::InvalidArgument);
                }
            }
            Effect::LaunchGraph { exec } | Effect::DestroyExec { exec } => {
                if !self.execs.contains(&exec) {
                    return Err(Status::InvalidArgument);
                }
            }
            Effect::Fence => {
                // The guest that sees its fence word stops waiting for completions: an error
                // completion of earlier work that it has not seen yet would be reported late.
                // After one, the fence is not written and the guest waits for its
                // synchronisation's completion, posted after that error.
                let failed = self.errors_posted != self.errors_at_fence;
                self.errors_at_fence = self.errors_posted;
                if failed {
                    return Ok(Some(Issued::DONE));
                }
            }
            Effect::Ping | Effect::Info | Effect::Transfer { .. } | Effect::Work => {}
        }
        Ok(None)
    }
}

impl Drop for VirtualDevice {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.give_back(self.used);
        }
    }
}

/// The results of a command the backend answered at once (a pending answer to a command
/// whose class is not asynchronous is a backend bug).
fn done(i: Issued) -> Result<(u64, u64), Status> {
    match i {
        Issued::Done(a, b) => Ok((a, b)),
        Issued::Pending(..) => Err(Status::Internal),
    }
}

/// A copy completes with its length in `result0`.
fn with_result(i: Issued, len: u64) -> Issued {
    match i {
        Issued::Done(..) => Issued::Done(len, 0),
        Issued::Pending(t, ..) => Issued::Pending(t, len, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{ContextParams, Staging};
    use vgpu_abi::cmd::LaunchBody;

    /// A cpu device with VM 0's context over 8 KiB of staging (the whole region).
    fn cpu_device() -> (vgpu_abi::ShmView, CpuBackend) {
        let view = vgpu_abi::ShmView::leak_zeroed(8192);
        let st = Staging {
            view,
            offset: 0,
            size: 8192,
        };
        let mut be = CpuBackend::new(1 << 30);
        be.create_context(
            0,
            ContextParams {
                staging: st,
                priority: 0,
                region: None,
            },
        )
        .unwrap();
        (view, be)
    }

    #[test]
    fn fence_skipped_after_an_error_completion() {
        let (view, mut be) = cpu_device();
        let mut d = VirtualDevice::new(0, 1000, 10);
        let fence = |value| Command::Fence {
            staging_offset: 64,
            value,
        };
        d.note_errors(0);
        assert_eq!(d.execute(&mut be, 1, &fence(7)), Ok(Issued::DONE));
        assert_eq!(view.load_u32(64), 7, "written");
        // An error completion was posted since: the next fence completes unwritten.
        d.note_errors(1);
        assert_eq!(d.execute(&mut be, 1, &fence(8)), Ok(Issued::DONE));
        assert_eq!(view.load_u32(64), 7, "skipped after an error");
        // No new error: written again.
        assert_eq!(d.execute(&mut be, 1, &fence(9)), Ok(Issued::DONE));
        assert_eq!(view.load_u32(64), 9);
    }

    /// Graphs and executable graphs are the VM's own: another VM's handle (here, one the
    /// device never gave this VM) is refused before the backend sees it, and a destroyed one
    /// is gone.
    #[test]
    fn graph_handles_are_owned_and_released() {
        let (_, mut be) = cpu_device();
        be.create_context(
            1,
            ContextParams {
                staging: Staging {
                    view: vgpu_abi::ShmView::leak_zeroed(4096),
                    offset: 0,
                    size: 4096,
                },
                priority: 0,
                region: None,
            },
        )
        .unwrap();
        let mut d0 = VirtualDevice::new(0, 1000, 10);
        let mut d1 = VirtualDevice::new(1, 1000, 10);
        let done = |r: IssueOutcome| match r {
            Ok(Issued::Done(a, _)) => a,
            other => panic!("{other:?}"),
        };
        done(d0.execute(&mut be, 2, &Command::StreamBeginCapture));
        let g = done(d0.execute(&mut be, 2, &Command::StreamEndCapture));
        // VM 1 may not instantiate VM 0's graph, even though the backend knows it.
        assert_eq!(
            d1.execute(&mut be, 0, &Command::GraphInstantiate { graph: g }),
            Err(Status::InvalidArgument)
        );
        let x = done(d0.execute(&mut be, 0, &Command::GraphInstantiate { graph: g }));
        for c in [
            Command::GraphLaunch { exec: x },
            Command::GraphExecDestroy { exec: x },
        ] {
            assert_eq!(d1.execute(&mut be, 0, &c), Err(Status::InvalidArgument));
        }
        assert_eq!(
            d1.execute(&mut be, 0, &Command::GraphDestroy { graph: g }),
            Err(Status::InvalidArgument)
        );
        assert_eq!(
            d0.execute(&mut be, 3, &Command::GraphLaunch { exec: x }),
            Ok(Issued::DONE)
        );
        done(d0.execute(&mut be, 0, &Command::GraphDestroy { graph: g }));
        assert_eq!(
            d0.execute(&mut be, 0, &Command::GraphInstantiate { graph: g }),
            Err(Status::InvalidArgument),
            "destroyed"
        );
        // The executable graph outlives its graph, until destroyed itself.
        assert_eq!(
            d0.execute(&mut be, 3, &Command::GraphLaunch { exec: x }),
            Ok(Issued::DONE)
        );
        done(d0.execute(&mut be, 0, &Command::GraphExecDestroy { exec: x }));
        assert_eq!(
            d0.execute(&mut be, 3, &Command::GraphLaunch { exec: x }),
            Err(Status::InvalidArgument)
        );
        assert!(d0.graphs.is_empty() && d0.execs.is_empty());
    }

    #[test]
    fn mapped_staging_is_the_vms_to_name() {
        let mut d = VirtualDevice::new(0, 1000, 10);
        assert_eq!(d.check_range(0x9000_0000, 16), Err(Status::InvalidAddress));
        d.set_mapped_staging(Some((0x9000_0000, 0x1000)));
        assert_eq!(d.check_range(0x9000_0000, 16), Ok(()));
        assert_eq!(d.check_range(0x9000_0ff0, 16), Ok(()));
        // Past its end, or starting before it.
        assert_eq!(d.check_range(0x9000_0ff0, 17), Err(Status::InvalidAddress));
        assert_eq!(d.check_range(0x8fff_fff0, 32), Err(Status::InvalidAddress));
        d.set_mapped_staging(None);
        assert_eq!(d.check_range(0x9000_0000, 16), Err(Status::InvalidAddress));
    }

    #[test]
    fn quota_ownership_and_faults() {
        let (_, mut be) = cpu_device();
        let mut d = VirtualDevice::new(0, 1000, 10);
        let p = d
            .execute(&mut be, 0, &Command::MemAlloc { size: 600 })
            .unwrap();
        let Issued::Done(p, _) = p else {
            panic!("alloc finishes at once")
        };
        assert_eq!(
            d.execute(&mut be, 0, &Command::MemAlloc { size: 401 }),
            Err(Status::QuotaExceeded)
        );
        assert_eq!(
            d.execute(&mut be, 0, &Command::GetInfo),
            Ok(Issued::Done(600, 1000))
        );
        let bad = Command::CopyD2H {
            src: p + 1,
            staging_offset: 0,
            len: 600,
        };
        assert_eq!(d.execute(&mut be, 0, &bad), Err(Status::InvalidAddress));
        assert_eq!(
            d.execute(&mut be, 0, &Command::MemFree { ptr: p + 1 }),
            Err(Status::InvalidAddress)
        );
        d.execute(&mut be, 0, &Command::MemFree { ptr: p }).unwrap();
        assert_eq!(d.used(), 0);
        let busy = LaunchBody::new(
            Builtin::Busy.handle(),
            [1; 3],
            [1; 3],
            &[11, 0, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(
            d.execute(&mut be, 0, &Command::Launch { launch: busy }),
            Err(Status::InvalidArgument)
        );
        let fault = LaunchBody::new(Builtin::Fault.handle(), [1; 3], [1; 3], &[]).unwrap();
        assert_eq!(
            d.execute(&mut be, 0, &Command::Launch { launch: fault }),
            Err(Status::KernelFault)
        );
        assert!(d.is_broken());
        assert_eq!(
            d.execute(&mut be, 0, &Command::MemAlloc { size: 1 }),
            Err(Status::ContextLost)
        );
        assert_eq!(d.execute(&mut be, 0, &Command::Nop), Ok(Issued::DONE));
    }

    #[test]
    fn memory_handles_are_accounted_until_released_and_unmapped() {
        const G: u64 = crate::backend::cpu::VMM_GRANULARITY;
        let view = vgpu_abi::ShmView::leak_zeroed(8192);
        let st = Staging {
            view,
            offset: 0,
            size: 8192,
        };
        // A device of 3 granules; the VM's quota and its pool's are larger.
        let mut be = CpuBackend::new(3 * G);
        be.create_context(
            0,
            ContextParams {
                staging: st,
                priority: 0,
                region: None,
            },
        )
        .unwrap();
        let pool = std::sync::Arc::new(crate::quota::PoolQuota::new(8 * G));
        let mut d = VirtualDevice::new(0, 8 * G, 10).with_pool(pool.clone());
        let mut run = |d: &mut VirtualDevice, c: Command| match d.execute(&mut be, 0, &c) {
            Ok(Issued::Done(a, _)) => Ok(a),
            Ok(Issued::Pending(..)) => panic!("answered at once"),
            Err(e) => Err(e),
        };
        let h = run(&mut d, Command::MemCreate { size: 2 * G }).unwrap();
        // Past the device's memory: refused by the backend, nothing stays taken.
        assert_eq!(
            run(&mut d, Command::MemCreate { size: 2 * G }),
            Err(Status::OutOfMemory)
        );
        assert_eq!((d.used(), pool.used()), (2 * G, 2 * G));
        let va = run(
            &mut d,
            Command::MemAddressReserve {
                size: 2 * G,
                alignment: 0,
                addr: 0,
            },
        )
        .unwrap();
        let map = Command::MemMap {
            ptr: va,
            size: 2 * G,
            offset: 0,
            handle: h,
        };
        run(&mut d, map).unwrap();
        assert_eq!(
            d.check_range(va, 16),
            Err(Status::InvalidAddress),
            "no access yet"
        );
        run(
            &mut d,
            Command::MemSetAccess {
                ptr: va,
                size: 2 * G,
                prot: vgpu_abi::cmd::PROT_READWRITE,
            },
        )
        .unwrap();
        d.check_range(va + G - 8, 16).unwrap();
        run(&mut d, Command::MemRelease { handle: h }).unwrap();
        assert_eq!(d.used(), 2 * G, "mapped: still held");
        run(
            &mut d,
            Command::MemUnmap {
                ptr: va,
                size: 2 * G,
            },
        )
        .unwrap();
        assert_eq!((d.used(), pool.used()), (0, 0));
        assert_eq!(d.check_range(va, 16), Err(Status::InvalidAddress));
        // A device dropped with handles gives their bytes back to the pool.
        run(&mut d, Command::MemCreate { size: G }).unwrap();
        assert_eq!(pool.used(), G);
        drop(d);
        assert_eq!(pool.used(), 0);
    }
}
