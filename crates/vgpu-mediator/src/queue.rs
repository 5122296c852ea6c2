//! The work queue between the channels and the executor.
//!
//! It sits behind [`WorkQueue`], which vgpud's scheduler ([`crate::sched::Scheduler`]: pools,
//! priorities, fair shares, limits) implements; [`Gate`] keeps each stream's order on a device
//! that does not keep it itself.

use std::collections::{HashMap, HashSet};
use std::time::Instant;
use vgpu_abi::cmd::Command;

/// One validated command of one VM.
#[derive(Debug, Clone)]
pub struct Job {
    /// VM index (config order).
    pub vm: usize,
    /// The submitter's tag.
    pub tag: u64,
    /// Stream id.
    pub stream: u32,
    /// The command.
    pub cmd: Command,
    /// When it was queued.
    pub enqueued: Instant,
}

impl Job {
    /// Whether this job waits for every earlier command of its VM, on every stream. Event
    /// waits and queries name an event that another stream may record, so on a device that does
    /// not order streams itself they wait for everything issued before them.
    pub fn is_barrier(&self) -> bool {
        self.cmd.class().barrier
    }
}

impl Job {
    /// Whether the backend answers this job with a call that waits for the VM's work on the
    /// device (CUDA's `cuMemFree` and `cuModuleUnload` synchronise), on the executor thread.
    pub fn waits_for_device(&self) -> bool {
        self.cmd.class().waits_for_device
    }
}

/// What the executor needs from a queue.
pub trait WorkQueue: Send {
    /// Adds a job.
    fn push(&mut self, job: Job);
    /// The next job to run that `gate` admits, if any. A queue offers each VM's jobs to the
    /// gate in the order they were pushed (the gate's answers depend on that order) and never
    /// returns a job the gate refused.
    fn pop(&mut self, gate: &mut Gate) -> Option<Job>;
    /// Drops every job of `vm` (it left or reset); returns how many.
    fn remove_vm(&mut self, vm: usize) -> usize;
    /// Jobs queued.
    fn len(&self) -> usize;
    /// How many more jobs `vm` may queue now (the executor leaves the rest in its ring).
    fn room(&self, vm: usize) -> usize {
        let _ = vm;
        usize::MAX
    }
    /// A job handed out by [`WorkQueue::pop`] left the device: it completed (or failed) after
    /// `device_ns` of measured device time. Called exactly once per popped job, unless its VM
    /// was removed ([`WorkQueue::remove_vm`]) in between. `control` says whether the job was a
    /// control command ([`crate::sched::is_control`]).
    fn finished(&mut self, vm: usize, control: bool, device_ns: u64) {
        let _ = (vm, control, device_ns);
    }
    /// Applies a reloaded configuration (weights, priorities, limits).
    fn reconfigure(&mut self, cfg: &crate::config::Config) {
        let _ = cfg;
    }
    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps each stream's order while commands are pending on a device that does not order
/// streams itself (the cpu backend): a stream with a pending command runs nothing else until it
/// retires, and a synchronize-all-streams waits for everything its VM issued before it.
///
/// The executor records what is pending; a queue asks [`Gate::admits`] about candidate jobs,
/// each VM's in push order, after one [`Gate::begin`] per pop.
#[derive(Debug, Default)]
pub struct Gate {
    /// Whether the device keeps stream order itself (then only the scheduler's limits apply).
    pub device_orders_streams: bool,
    /// Whether the backend's answer to a job that [`Job::waits_for_device`] blocks until the
    /// VM's device work ends: such a job is held until that work retired, so the executor
    /// never waits on one VM's kernels.
    pub hold_blocking_calls: bool,
    /// `(vm, stream)` with a pending command.
    busy: HashMap<(usize, u32), u32>,
    /// Pending commands per VM.
    pending: HashMap<usize, u32>,
    // Scratch of one pop:
    refused_streams: HashSet<(usize, u32)>,
    refused_vms: HashSet<usize>,
    barred_vms: HashSet<usize>,
}

impl Gate {
    /// A gate for a device that does (or does not) keep each stream's order itself.
    pub fn new(device_orders_streams: bool) -> Self {
        Self {
            device_orders_streams,
            ..Self::default()
        }
    }

    /// Also holds the jobs that [`Job::waits_for_device`] while their VM has device work.
    pub fn holding_blocking_calls(mut self, on: bool) -> Self {
        self.hold_blocking_calls = on;
        self
    }

    /// Records a command of `(vm, stream)` left pending on the device.
    pub fn issued(&mut self, vm: usize, stream: u32) {
        *self.busy.entry((vm, stream)).or_default() += 1;
        *self.pending.entry(vm).or_default() += 1;
    }

    /// Records that a pending command of `(vm, stream)` retired.
    pub fn retired(&mut self, vm: usize, stream: u32) {
        if let Some(n) = self.busy.get_mut(&(vm, stream)) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&(vm, stream));
            }
        }
        if let Some(n) = self.pending.get_mut(&vm) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&vm);
            }
        }
    }

    /// Forgets everything pending of `vm` (it left or reset).
    pub fn forget_vm(&mut self, vm: usize) {
        self.busy.retain(|&(v, _), _| v != vm);
        self.pending.remove(&vm);
    }

    /// Commands of `vm` pending on the device.
    pub fn pending(&self, vm: usize) -> u32 {
        self.pending.get(&vm).copied().unwrap_or(0)
    }

    /// Starts one pop: forgets what earlier pops refused.
    pub fn begin(&mut self) {
        self.refused_streams.clear();
        self.refused_vms.clear();
        self.barred_vms.clear();
    }

    /// Whether `job` may run now. Call it on each VM's jobs in their push order.
    pub fn admits(&mut self, job: &Job) -> bool {
        let (vm, key) = (job.vm, (job.vm, job.stream));
        if self.barred_vms.contains(&vm) {
            return false;
        }
        if self.hold_blocking_calls && job.waits_for_device() && self.pending(vm) > 0 {
            self.barred_vms.insert(vm);
            return false;
        }
        if self.device_orders_streams {
            return true;
        }
        if job.is_barrier() {
            if self.pending(vm) > 0 || self.refused_vms.contains(&vm) {
                self.barred_vms.insert(vm);
                return false;
            }
            return true;
        }
        if self.busy.contains_key(&key) || self.refused_streams.contains(&key) {
            self.refused_streams.insert(key);
            self.refused_vms.insert(vm);
            return false;
        }
        true
    }
}
