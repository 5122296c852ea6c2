//! Fault isolation: each VM's device context in its own **worker process**.
//!
//! CUDA's sticky errors are per process: a kernel that faults in one context breaks every
//! context of the process. [`IsolatedBackend`] therefore runs each VM's context in a worker
//! (the same `vgpud` binary started with [`WORKER_FLAG`], see [`worker_main`]) that opens the
//! real backend for its device and creates exactly one context, bound to the VM's shared region
//! (the worker maps the VM's memfd itself, so the cuda backend still page-locks it and DMAs
//! straight from / to guest memory).
//!
//! * `create_context` spawns the worker and waits for its "ready"; `destroy_context` SIGKILLs
//!   it (a kernel that never ends is no obstacle) and a reaper thread collects it. A reset is
//!   kill + respawn.
//! * Requests travel over a private ring of the vGPU ABI ([`proto`]). Stream commands are
//!   issued without waiting (many in flight; [`Backend::poll`] takes the answers); the few
//!   whose result the trait needs at once (alloc, free, modules, functions, elapsed time) wait
//!   for their answer — bounded: a worker that does not answer in time is killed.
//! * A worker that dies fails all its VM's work with [`Status::ContextLost`]; vgpud never
//!   panics or hangs on it.
//! * Module and function handles are unique across VMs: each worker numbers its own from its
//!   context's serial number in bits 32..63 (given on its command line), so commands pass to
//!   the worker unchanged. Device pointers are each worker's own (ownership is enforced per VM
//!   by [`crate::device`]).

mod link;
pub mod proto;
mod spawn;
mod worker;

pub use link::LinkError;
pub use proto::{WorkerArgs, WorkerKind, WORKER_FLAG};
pub use worker::{worker_main, WorkerError};

use super::{
    wake, Backend, BackendError, ContextParams, DeviceInfo, Issued, Retired, Token, VmKey,
    VmStream, Wake,
};
use link::WorkerLink;
use rustix::fd::{BorrowedFd, OwnedFd};
use spawn::Reaper;
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::{Command, Cqe};
use vgpu_abi::Status;

/// How long a new worker may take to open its device and create its context.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What workers to start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The `vgpud` binary (`/proc/self/exe` in vgpud itself).
    pub exe: PathBuf,
    /// The backend each worker runs.
    pub kind: WorkerKind,
    /// Device index.
    pub device: usize,
    /// Worker's ring polling window after its last work, in microseconds.
    pub poll_us: u64,
    /// Whether vgpud and the workers block on wake fds while device work is pending
    /// (`device_wait = "block"`).
    pub block: bool,
    /// Longest time vgpud waits for an answer it needs at once (then the worker is killed).
    pub call_timeout: Duration,
}

impl WorkerSpec {
    /// A call timeout generous for a VM whose queued kernels each run up to `max_kernel_us`
    /// (a free or an unload waits for the VM's work on the device).
    pub fn call_timeout_for(max_kernel_us: u32) -> Duration {
        Duration::from_secs(10) + Duration::from_micros(max_kernel_us as u64) * 4
    }
}

/// One VM's worker.
struct Worker {
    link: WorkerLink,
    /// Tokens issued and not yet answered through `poll`.
    pending: HashSet<Token>,
    /// Set while the worker has not yet said that its context is ready: when it started.
    starting: Option<Instant>,
    /// Where the worker's context maps the VM's staging area (its "ready" answer; 0: not).
    staging_dev: u64,
}

/// Runs each VM's context in its own worker process. See the module documentation.
pub struct IsolatedBackend {
    spec: WorkerSpec,
    info: DeviceInfo,
    orders_streams: bool,
    workers: HashMap<VmKey, Worker>,
    next_tag: u64,
    next_serial: u64,
    reaper: Reaper,
    /// Whether several VMs share the device (passed on to every worker).
    shared: bool,
    /// The wake eventfd every worker holds ([`proto::FD_WAKE`]); `None` when it could not be
    /// made (then vgpud polls the workers' answers).
    wake: Option<OwnedFd>,
    /// Workers were asked to write `wake` with their next answers ([`Backend::arm_wake`]);
    /// cleared at the next poll, so that a vgpud that polls costs the workers no writes.
    armed: bool,
}

/// Longest vgpud blocks on the workers' wake fd: a worker that died writes nothing, and
/// its VM's pending work must fail with `ContextLost` (found by the next poll) soon after.
const LIVENESS_RECHECK: Duration = Duration::from_millis(50);

/// Largest context serial (handles keep bit 63 clear for built-ins).
const MAX_SERIAL: u64 = (1 << 31) - 1;

impl IsolatedBackend {
    /// A backend whose device is described by `info` (taken from the real backend, opened once
    /// in vgpud) and whose streams are ordered by the device when `orders_streams`.
    pub fn new(spec: WorkerSpec, info: DeviceInfo, orders_streams: bool) -> Self {
        Self {
            spec,
            info,
            orders_streams,
            workers: HashMap::new(),
            next_tag: 1,
            next_serial: 1,
            reaper: Reaper::new(),
            shared: true,
            wake: wake::event().ok(),
            armed: false,
        }
    }

    /// The process id of VM `vm`'s worker (tests, logs).
    pub fn worker_pid(&self, vm: VmKey) -> Option<u32> {
        self.workers.get(&vm).map(|w| w.link.pid())
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    /// Issues a stream command; its answer is taken by `poll`.
    fn issue(&mut self, vm: VmKey, stream: u32, cmd: Command) -> Result<Issued, Status> {
        let tag = self.tag();
        let timeout = self.spec.call_timeout;
        let w = self.workers.get_mut(&vm).ok_or(Status::Internal)?;
        w.link
            .submit(&cmd, stream, tag, timeout, &mut self.reaper)?;
        w.pending.insert(tag);
        Ok(Issued::Pending(tag, 0, 0))
    }

    /// Sends a command and waits for its answer.
    fn call(&mut self, vm: VmKey, stream: u32, cmd: Command) -> Result<(u64, u64), Status> {
        let tag = self.tag();
        let timeout = self.spec.call_timeout;
        // The executor sends nothing before `context_ready`; should a call come first anyway,
        // it waits for the start here rather than reach a worker without a context.
        if self.workers.get(&vm).is_some_and(|w| w.starting.is_some()) {
            let w = self.workers.get_mut(&vm).ok_or(Status::Internal)?;
            let ready = w
                .link
                .wait(proto::READY_TAG, START_TIMEOUT, &mut self.reaper);
            match ready {
                Ok(c) if outcome(&c).is_ok() => {
                    w.starting = None;
                    w.staging_dev = c.result0;
                }
                _ => return Err(Status::ContextUnavailable),
            }
        }
        let w = self.workers.get_mut(&vm).ok_or(Status::Internal)?;
        let reaper = &mut self.reaper;
        w.link.submit(&cmd, stream, tag, timeout, reaper)?;
        let c = w.link.wait(tag, timeout, reaper)?;
        outcome(&c)
    }
}

/// The results of an answer, or its error status.
fn outcome(c: &Cqe) -> Result<(u64, u64), Status> {
    match Status::from_raw(c.status) {
        Some(Status::Ok) => Ok((c.result0, c.result1)),
        Some(s) => Err(s),
        None => Err(Status::Internal),
    }
}

impl Drop for IsolatedBackend {
    fn drop(&mut self) {
        for (_, mut w) in self.workers.drain() {
            w.link.kill(&mut self.reaper);
        }
    }
}

impl Backend for IsolatedBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn worker_processes(&self) -> Option<usize> {
        Some(self.workers.len())
    }

    fn create_context(&mut self, vm: VmKey, params: ContextParams) -> Result<(), BackendError> {
        if self.workers.contains_key(&vm) {
            return Err(BackendError::Context(format!(
                "vm {vm} already has a context"
            )));
        }
        let region = params.region.as_ref().ok_or_else(|| {
            BackendError::Context("isolated contexts need the VM's shared-memory fd".into())
        })?;
        let args = WorkerArgs {
            kind: self.spec.kind,
            device: self.spec.device,
            priority: params.priority,
            staging_offset: params.staging.offset,
            staging_size: params.staging.size,
            poll_us: self.spec.poll_us,
            block: self.spec.block,
            first_handle: (self.next_serial << 32) | 1,
        };
        // The worker is started and not waited for: creating a CUDA context takes a good
        // part of a second, which the executor must not spend away from the device's other
        // VMs. It says when the context is ready (`context_ready`).
        let wake = self.wake.as_ref().ok_or_else(|| {
            BackendError::Context("no wake eventfd for the worker (out of fds?)".into())
        })?;
        let link = WorkerLink::spawn(&self.spec.exe, &args, region.fd().as_fd(), wake.as_fd())
            .map_err(|e| BackendError::Context(e.to_string()))?;
        link.set_shared(self.shared);
        let serial = self.next_serial;
        self.next_serial = if serial >= MAX_SERIAL { 1 } else { serial + 1 };
        self.workers.insert(
            vm,
            Worker {
                link,
                pending: HashSet::new(),
                starting: Some(Instant::now()),
                staging_dev: 0,
            },
        );
        Ok(())
    }

    fn context_ready(&mut self, vm: VmKey) -> Option<Result<(), BackendError>> {
        let Some(w) = self.workers.get_mut(&vm) else {
            return Some(Err(BackendError::Context(format!("vm {vm} has no worker"))));
        };
        let Some(t0) = w.starting else {
            return Some(Ok(()));
        };
        let pid = w.link.pid();
        let fail = |why: String| {
            BackendError::Context(format!(
                "worker {pid} for vm {vm}: {why} (its log is in vgpud's)"
            ))
        };
        let err = match w.link.try_take(proto::READY_TAG) {
            None if t0.elapsed() > START_TIMEOUT => {
                fail(format!("no context after {START_TIMEOUT:?}"))
            }
            None => return None,
            Some(Ok(c)) => match outcome(&c) {
                Ok(_) => {
                    w.starting = None;
                    w.staging_dev = c.result0;
                    tracing::debug!(
                        vm,
                        pid,
                        ms = t0.elapsed().as_secs_f64() * 1e3,
                        "worker process ready"
                    );
                    return Some(Ok(()));
                }
                Err(s) => fail(format!("context not created: {}", s.describe())),
            },
            Some(Err(_)) => fail("exited before its context was ready".into()),
        };
        if let Some(mut w) = self.workers.remove(&vm) {
            w.link.kill(&mut self.reaper);
        }
        Some(Err(err))
    }

    fn destroy_context(&mut self, vm: VmKey) {
        if let Some(mut w) = self.workers.remove(&vm) {
            w.link.kill(&mut self.reaper);
        }
    }

    fn destroy_stops_work(&self) -> bool {
        true
    }

    fn staging_device_address(&self, vm: VmKey) -> Option<u64> {
        let w = self.workers.get(&vm)?;
        (w.starting.is_none() && w.staging_dev != 0).then_some(w.staging_dev)
    }

    fn calls_wait_for_device(&self) -> bool {
        // A call waits for the worker's answer, which waits for the device where the worker's
        // backend does.
        matches!(self.spec.kind, WorkerKind::Cuda { .. })
    }

    fn kill_context(&mut self, vm: VmKey) -> bool {
        self.destroy_context(vm);
        true
    }

    fn submit(&mut self, at: VmStream, cmd: &Command) -> Result<Issued, Status> {
        // The worker runs the command through its own backend's dispatch; vgpud only chooses
        // whether to wait for the answer.
        if cmd.class().asynchronous {
            self.issue(at.vm, at.stream, *cmd)
        } else {
            self.call(at.vm, at.stream, *cmd)
                .map(|(a, b)| Issued::Done(a, b))
        }
    }

    fn poll(&mut self, vm: VmKey, token: Token) -> Option<Result<Retired, Status>> {
        if self.armed {
            self.armed = false;
            for w in self.workers.values() {
                w.link.set_wake(false);
            }
        }
        let Some(w) = self.workers.get_mut(&vm) else {
            return Some(Err(Status::Aborted));
        };
        if !w.pending.contains(&token) {
            return Some(Err(Status::Internal));
        }
        let r = w.link.try_take(token)?;
        w.pending.remove(&token);
        if r.is_err() {
            w.link.kill(&mut self.reaper);
        }
        Some(
            r.and_then(|c| outcome(&c))
                .map(|(device_ns, _)| Retired { device_ns }),
        )
    }

    fn poll_hint(&self) -> Option<Duration> {
        self.workers
            .values()
            .any(|w| !w.pending.is_empty())
            .then_some(Duration::ZERO)
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(|w| w.as_fd())
    }

    fn arm_wake(&mut self, _early: Duration) -> Wake {
        // A worker cannot say when its device work ends, only that it has: each worker with
        // work in flight writes the wake fd once it posted answers. Its own wait on its device
        // is the worker's business (it blocks on its backend's wake fd in turn). While a worker
        // with work in flight still polls, it expects its answer soon (the same rule, applied
        // in the worker): vgpud polls with it instead of paying a wake-up — on a host short of
        // cores, the worker's answer is late because it waits for a CPU, not for the device.
        let busy = || self.workers.values().filter(|w| !w.pending.is_empty());
        if busy().any(|w| w.link.worker_polling()) {
            return Wake::Poll;
        }
        let mut ready = false;
        for w in self.workers.values_mut().filter(|w| !w.pending.is_empty()) {
            ready |= w.link.arm_wake();
        }
        self.armed = true;
        if ready {
            Wake::Poll
        } else {
            Wake::Armed(Some(LIVENESS_RECHECK))
        }
    }

    fn orders_streams(&self) -> bool {
        self.orders_streams
    }

    fn set_shared(&mut self, shared: bool) {
        self.shared = shared;
        for w in self.workers.values() {
            w.link.set_shared(shared);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_outcomes() {
        let ok = Cqe {
            tag: 1,
            status: 0,
            flags: 0,
            result0: 7,
            result1: 9,
        };
        assert_eq!(outcome(&ok), Ok((7, 9)));
        let fault = Cqe {
            status: Status::KernelFault as u32,
            ..ok
        };
        assert_eq!(outcome(&fault), Err(Status::KernelFault));
        let junk = Cqe {
            status: 0xdead,
            ..ok
        };
        assert_eq!(outcome(&junk), Err(Status::Internal));
    }
}
