//! The scheduler: which queued job a device runs next. The policy and its guarantees are stated
//! in `docs/scheduling.md`; in short, per device:
//!
//! * **strict priority** between classes (a VM's `priority`, higher first): only the highest
//!   class with queued work may put work on the device; lower classes are held back (running
//!   kernels are never preempted, so the only delay a higher class sees is what already runs);
//! * a **starvation guard**: a lower-class job that has waited `max_wait_ms` goes first;
//! * **weighted fair share** between pools by measured device time (virtual time = device time
//!   ÷ weight, charged when a job retires, estimated while it runs), work-conserving: an idle
//!   pool's share goes to the busy ones, and a pool that comes back starts level with them;
//! * **round-robin** among a pool's VMs;
//! * each VM's jobs are offered to the [`Gate`] in push order (stream order is kept);
//! * limits: jobs queued per VM, jobs in flight per VM and on the device (`device_depth`), of
//!   which `reserve_slots` only the reserve class may use.
//!
//! Control commands (nop, info, alloc, free, synchronize) never occupy the device and are not
//! held back by the device limits (only by stream order).

use crate::config::{Config, Policy};
use crate::queue::{Gate, Job, WorkQueue};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::Command;

/// Default device depth (jobs) of a backend other than cpu. The device's queue is kept short
/// in *time* by [`DEFAULT_DEVICE_QUEUE_US`]; this only caps the count.
pub const DEFAULT_DEVICE_DEPTH: u32 = 64;

/// Default device-time budget of the jobs on a device other than cpu, in µs.
pub const DEFAULT_DEVICE_QUEUE_US: u64 = 2000;

/// Jobs always allowed on a device whatever the time budget, so the next kernel is queued
/// while the current one runs (no idle gap between them).
const MIN_DEVICE_JOBS: u32 = 2;

/// Weight of the newest sample in a VM's per-job device-time estimate.
const EWMA_NEW: f64 = 0.25;

/// The scheduler's knobs, taken from the config (and again on every reload).
#[derive(Debug, Clone)]
pub struct SchedParams {
    /// Dispatch order.
    pub policy: Policy,
    /// Starvation guard (`None`: off).
    pub max_wait: Option<Duration>,
    /// Jobs one VM may have queued.
    pub vm_max_queued: usize,
    /// Jobs one VM may have on the device.
    pub vm_max_inflight: u32,
    /// Jobs on the device at once.
    pub depth: u32,
    /// Estimated device time the jobs on the device may add up to, in ns (0: no limit).
    pub queue_ns: f64,
    /// Slots of `depth` only the reserve class may use.
    pub reserve: u32,
    /// Lowest priority of the reserve class.
    pub reserve_priority: u32,
    /// Each VM's pool (index into `weights`).
    pub vm_pool: Vec<usize>,
    /// Each VM's priority.
    pub vm_priority: Vec<u32>,
    /// Each pool's weight.
    pub weights: Vec<u32>,
}

/// What a device's limits are when the config does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDefaults {
    /// Jobs on the device at once.
    pub depth: u32,
    /// Device-time budget of those jobs, in µs (0: none).
    pub queue_us: u64,
}

impl DeviceDefaults {
    /// The defaults of a device of the backend that runs (`"cpu"`, `"cuda"`; `--backend` may
    /// override the file's choice): on the cpu backend its slot count and no time budget (the
    /// slots are the limit); otherwise [`DEFAULT_DEVICE_DEPTH`] and [`DEFAULT_DEVICE_QUEUE_US`].
    pub fn of(cfg: &Config, backend: &str) -> Self {
        if backend == "cpu" {
            Self {
                depth: cfg.mediator.cpu_slots,
                queue_us: 0,
            }
        } else {
            Self {
                depth: DEFAULT_DEVICE_DEPTH,
                queue_us: DEFAULT_DEVICE_QUEUE_US,
            }
        }
    }
}

impl SchedParams {
    /// The parameters `cfg` asks for, with `defaults` where it names no device depth or
    /// device-time budget.
    pub fn from_config(cfg: &Config, defaults: DeviceDefaults) -> Self {
        let s = &cfg.scheduler;
        let depth = s.device_depth.unwrap_or(defaults.depth).max(1);
        let queue_us = s.device_queue_us.unwrap_or(defaults.queue_us);
        Self {
            policy: s.policy,
            max_wait: (s.max_wait_ms > 0).then(|| Duration::from_millis(s.max_wait_ms)),
            vm_max_queued: s.vm_max_queued as usize,
            vm_max_inflight: if s.vm_max_inflight == 0 {
                u32::MAX
            } else {
                s.vm_max_inflight
            },
            depth,
            queue_ns: queue_us as f64 * 1e3,
            // At least one slot stays usable by every class.
            reserve: s.reserve_slots.min(depth - 1),
            reserve_priority: s
                .reserve_priority
                .unwrap_or_else(|| cfg.vms.iter().map(|v| v.priority).max().unwrap_or(0)),
            vm_pool: (0..cfg.vms.len()).map(|v| cfg.vm_pool(v)).collect(),
            vm_priority: cfg.vms.iter().map(|v| v.priority).collect(),
            weights: cfg.pools.iter().map(|p| p.weight.max(1)).collect(),
        }
    }
}

/// Whether a command only touches vgpud's bookkeeping, never the device's execution units.
pub fn is_control(cmd: &Command) -> bool {
    cmd.class().control
}

#[derive(Debug, Default)]
struct VmQueue {
    /// `(arrival sequence, job)` in push order.
    jobs: VecDeque<(u64, Job)>,
    /// Jobs popped and not yet finished.
    inflight: u32,
    /// Estimated device time of those jobs.
    inflight_est: f64,
    /// Per-job device time estimate: `[control, device work]`.
    est: [f64; 2],
}

#[derive(Debug, Default, Clone)]
struct PoolState {
    /// Device time charged ÷ weight, in ns.
    vtime: f64,
    /// Estimated device time of the pool's jobs in flight, in ns.
    inflight_est: f64,
    /// Jobs queued.
    queued: usize,
    /// Jobs in flight.
    inflight: u32,
    /// The VM served last (round-robin cursor).
    last: Option<usize>,
}

impl PoolState {
    fn active(&self) -> bool {
        self.queued > 0 || self.inflight > 0
    }
}

/// The per-device scheduler; see the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    p: SchedParams,
    defaults: DeviceDefaults,
    vms: Vec<VmQueue>,
    pools: Vec<PoolState>,
    /// Each pool's VMs, in index order.
    members: Vec<Vec<usize>>,
    /// Jobs popped and not yet finished, on this device.
    inflight: u32,
    queued: usize,
    seq: u64,
}

impl Scheduler {
    /// A scheduler for `cfg`'s VMs and pools on a device with `defaults`.
    pub fn new(cfg: &Config, defaults: DeviceDefaults) -> Self {
        let mut s = Self::with_params(SchedParams::from_config(cfg, defaults), defaults.depth);
        s.defaults = defaults;
        s
    }

    /// A scheduler with explicit parameters.
    pub fn with_params(p: SchedParams, default_depth: u32) -> Self {
        let defaults = DeviceDefaults {
            depth: default_depth,
            queue_us: (p.queue_ns / 1e3) as u64,
        };
        let mut s = Self {
            vms: (0..p.vm_pool.len()).map(|_| VmQueue::default()).collect(),
            pools: vec![PoolState::default(); p.weights.len()],
            members: Vec::new(),
            p,
            defaults,
            inflight: 0,
            queued: 0,
            seq: 0,
        };
        s.index_members();
        s
    }

    fn index_members(&mut self) {
        self.members = vec![Vec::new(); self.p.weights.len()];
        for (vm, &pool) in self.p.vm_pool.iter().enumerate() {
            self.members[pool].push(vm);
        }
    }

    /// The parameters in force.
    pub fn params(&self) -> &SchedParams {
        &self.p
    }

    /// Replaces the parameters (a reload). Queued and in-flight work stays; a VM that changed
    /// pool takes its queued and in-flight work along.
    pub fn set_params(&mut self, p: SchedParams) {
        assert_eq!(p.vm_pool.len(), self.vms.len(), "the VM set never changes");
        if p.weights.len() != self.pools.len() {
            self.pools.resize(p.weights.len(), PoolState::default());
        }
        for vm in 0..self.vms.len() {
            let (old, new) = (self.p.vm_pool[vm], p.vm_pool[vm]);
            if old != new {
                let q = &self.vms[vm];
                let (n, est, inf) = (q.jobs.len(), q.inflight_est, q.inflight);
                self.pools[old].queued -= n;
                self.pools[old].inflight_est -= est;
                self.pools[old].inflight -= inf;
                let catch_up = !self.pools[new].active() && (n > 0 || inf > 0);
                if catch_up {
                    self.pools[new].vtime = self.pools[new].vtime.max(self.floor(new));
                }
                self.pools[new].queued += n;
                self.pools[new].inflight_est += est;
                self.pools[new].inflight += inf;
            }
        }
        self.p = p;
        self.index_members();
    }

    /// Jobs on the device now.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// A pool's virtual time so far (device ns ÷ weight).
    pub fn pool_vtime(&self, pool: usize) -> f64 {
        self.pools[pool].vtime
    }

    fn key(&self, pool: usize) -> f64 {
        let st = &self.pools[pool];
        st.vtime + st.inflight_est / self.p.weights[pool] as f64
    }

    /// The lowest key among the active pools other than `except` (0 when none is active).
    fn floor(&self, except: usize) -> f64 {
        (0..self.pools.len())
            .filter(|&p| p != except && self.pools[p].active())
            .map(|p| self.key(p))
            .min_by(f64::total_cmp)
            .unwrap_or(self.pools[except].vtime)
    }

    /// Whether `vm`'s device work may be dispatched now, given the device's load.
    fn device_room(&self, vm: usize) -> bool {
        let limit = if self.p.vm_priority[vm] >= self.p.reserve_priority {
            self.p.depth
        } else {
            self.p.depth - self.p.reserve
        };
        let count_ok = self.inflight < limit && self.vms[vm].inflight < self.p.vm_max_inflight;
        if !count_ok || self.p.queue_ns <= 0.0 || self.inflight < MIN_DEVICE_JOBS {
            return count_ok;
        }
        let queued_ns: f64 = self.pools.iter().map(|p| p.inflight_est).sum();
        queued_ns + self.vms[vm].est[1] <= self.p.queue_ns
    }

    /// The first job of `vm`, in push order, that the gate admits; device work only when
    /// `device_ok`. Stops at the first device job it may not take, so nothing behind it can
    /// overtake it.
    fn candidate(&self, vm: usize, device_ok: bool, gate: &mut Gate) -> Option<usize> {
        for (i, (_, job)) in self.vms[vm].jobs.iter().enumerate() {
            if !device_ok && !is_control(&job.cmd) {
                return None;
            }
            if gate.admits(job) {
                return Some(i);
            }
        }
        None
    }

    fn take(&mut self, vm: usize, i: usize) -> Job {
        let (_, job) = self.vms[vm].jobs.remove(i).expect("candidate index");
        let pool = self.p.vm_pool[vm];
        let est = self.vms[vm].est[usize::from(!is_control(&job.cmd))];
        let q = &mut self.vms[vm];
        q.inflight += 1;
        q.inflight_est += est;
        let ps = &mut self.pools[pool];
        ps.queued -= 1;
        ps.inflight += 1;
        ps.inflight_est += est;
        ps.last = Some(vm);
        self.inflight += 1;
        self.queued -= 1;
        job
    }

    fn pop_fifo(&mut self, gate: &mut Gate) -> Option<(usize, usize)> {
        let mut best: Option<(u64, usize, usize)> = None;
        for vm in 0..self.vms.len() {
            if self.vms[vm].jobs.is_empty() {
                continue;
            }
            let ok = self.inflight < self.p.depth && self.vms[vm].inflight < self.p.vm_max_inflight;
            if let Some(i) = self.candidate(vm, ok, gate) {
                let seq = self.vms[vm].jobs[i].0;
                if best.is_none_or(|b| seq < b.0) {
                    best = Some((seq, vm, i));
                }
            }
        }
        best.map(|(_, vm, i)| (vm, i))
    }

    fn pop_priority(&mut self, gate: &mut Gate) -> Option<(usize, usize)> {
        let top = (0..self.vms.len())
            .filter(|&v| !self.vms[v].jobs.is_empty())
            .map(|v| self.p.vm_priority[v])
            .max()?;
        // Starvation guard: the oldest lower-class job past its maximum wait goes first.
        if let Some(max_wait) = self.p.max_wait {
            let now = Instant::now();
            let mut best: Option<(u64, usize, usize)> = None;
            for vm in 0..self.vms.len() {
                let Some((_, head)) = self.vms[vm].jobs.front() else {
                    continue;
                };
                if self.p.vm_priority[vm] >= top || now.duration_since(head.enqueued) < max_wait {
                    continue;
                }
                if let Some(i) = self.candidate(vm, self.device_room(vm), gate) {
                    let (seq, job) = &self.vms[vm].jobs[i];
                    if now.duration_since(job.enqueued) >= max_wait
                        && best.is_none_or(|b| *seq < b.0)
                    {
                        best = Some((*seq, vm, i));
                    }
                }
            }
            if let Some((_, vm, i)) = best {
                return Some((vm, i));
            }
        }
        // Classes from the highest down; only the highest may use the device.
        let mut classes: Vec<u32> = (0..self.vms.len())
            .filter(|&v| !self.vms[v].jobs.is_empty())
            .map(|v| self.p.vm_priority[v])
            .collect();
        classes.sort_unstable_by(|a, b| b.cmp(a));
        classes.dedup();
        let mut pools: Vec<usize> = (0..self.pools.len())
            .filter(|&p| self.pools[p].queued > 0)
            .collect();
        pools.sort_by(|&a, &b| self.key(a).total_cmp(&self.key(b)).then(a.cmp(&b)));
        for class in classes {
            for &pool in &pools {
                let members = &self.members[pool];
                let n = members.len();
                let start = members
                    .iter()
                    .position(|&v| self.pools[pool].last.is_none_or(|l| v > l))
                    .unwrap_or(0);
                for k in 0..n {
                    let vm = members[(start + k) % n];
                    if self.p.vm_priority[vm] != class || self.vms[vm].jobs.is_empty() {
                        continue;
                    }
                    let device_ok = class == top && self.device_room(vm);
                    if let Some(i) = self.candidate(vm, device_ok, gate) {
                        return Some((vm, i));
                    }
                }
            }
        }
        None
    }
}

impl WorkQueue for Scheduler {
    fn push(&mut self, job: Job) {
        let (vm, pool) = (job.vm, self.p.vm_pool[job.vm]);
        if !self.pools[pool].active() {
            // Coming back from idle: start level with the busy pools, never with credit saved
            // up while idle (work conservation must not turn into a burst later).
            self.pools[pool].vtime = self.pools[pool].vtime.max(self.floor(pool));
        }
        self.seq += 1;
        self.vms[vm].jobs.push_back((self.seq, job));
        self.pools[pool].queued += 1;
        self.queued += 1;
    }

    fn pop(&mut self, gate: &mut Gate) -> Option<Job> {
        if self.queued == 0 {
            return None;
        }
        gate.begin();
        let (vm, i) = match self.p.policy {
            Policy::Fifo => self.pop_fifo(gate),
            Policy::Priority => self.pop_priority(gate),
        }?;
        Some(self.take(vm, i))
    }

    fn remove_vm(&mut self, vm: usize) -> usize {
        let pool = self.p.vm_pool[vm];
        let q = std::mem::take(&mut self.vms[vm]);
        let n = q.jobs.len();
        let ps = &mut self.pools[pool];
        ps.queued -= n;
        ps.inflight -= q.inflight;
        ps.inflight_est = (ps.inflight_est - q.inflight_est).max(0.0);
        self.inflight -= q.inflight;
        self.queued -= n;
        n
    }

    fn len(&self) -> usize {
        self.queued
    }

    fn room(&self, vm: usize) -> usize {
        self.p.vm_max_queued.saturating_sub(self.vms[vm].jobs.len())
    }

    fn finished(&mut self, vm: usize, control: bool, device_ns: u64) {
        let pool = self.p.vm_pool[vm];
        let q = &mut self.vms[vm];
        if q.inflight == 0 {
            return; // its VM left or reset since: already forgotten
        }
        let share = q.inflight_est / q.inflight as f64;
        q.inflight -= 1;
        q.inflight_est = if q.inflight == 0 {
            0.0
        } else {
            (q.inflight_est - share).max(0.0)
        };
        let k = usize::from(!control);
        q.est[k] = if q.est[k] == 0.0 {
            device_ns as f64
        } else {
            q.est[k] * (1.0 - EWMA_NEW) + device_ns as f64 * EWMA_NEW
        };
        let w = self.p.weights[pool] as f64;
        let ps = &mut self.pools[pool];
        ps.inflight -= 1;
        ps.inflight_est = if ps.inflight == 0 {
            0.0
        } else {
            (ps.inflight_est - share).max(0.0)
        };
        ps.vtime += device_ns as f64 / w;
        self.inflight -= 1;
    }

    fn reconfigure(&mut self, cfg: &Config) {
        self.set_params(SchedParams::from_config(cfg, self.defaults));
    }
}

#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod tests;
