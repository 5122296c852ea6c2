//! The executor: one thread per device. It owns the channels, the queue and the backend.
//!
//! Loop: take new entries from every channel (round-robin, bounded per channel), run queued
//! jobs on the backend, post completions. After the last work it keeps polling for
//! `poll_us` (guests see `SQ_FLAG_HOST_POLLING` and skip the doorbell); then it clears the
//! flag, re-checks every ring, and sleeps on the doorbell eventfds — no CPU burnt while idle;
//! while work is on the device, a timerfd wakes it when the earliest piece may have retired.
//!
//! The queue decides what runs (see [`crate::sched`]); the executor tells it how much device
//! time each job took, and takes no more from a VM's ring than the queue has room for.

use crate::backend::{Backend, Issued, Token};
use crate::channel::{Channel, ChannelParams};
use crate::config::Config;
use crate::device::VirtualDevice;
use crate::queue::{Gate, WorkQueue};
use crate::quota::PoolQuota;
use crate::sched::is_control;
use crate::stats::{StatsRegistry, VmStats};
use crate::transport::Event;
use rustix::event::epoll;
use rustix::fd::OwnedFd;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use vgpu_abi::regs::{CAP_BUILTIN_KERNELS, CAP_COMPLETION_IRQ, CAP_HOST_POLLING, CAP_RESET};
use vgpu_abi::Status;

/// Entries taken from one channel per round (keeps one VM from hogging ingestion).
const POLL_BUDGET: u32 = 32;
/// Jobs run per round before the channels are polled again.
const RUN_BUDGET: usize = 64;
/// epoll key of the control eventfd.
const CONTROL_KEY: u64 = u64::MAX;
/// How close to the earliest retirement of device work the executor stops sleeping and polls.
const SPIN_BEFORE_RETIRE: Duration = Duration::from_micros(200);
/// epoll key of the timerfd that wakes the executor when device work may have retired.
const TIMER_KEY: u64 = u64::MAX - 1;
/// How often, at most, the executor compares pending work with the kernel time limits.
const LIMIT_CHECK_EVERY: Duration = Duration::from_millis(1);
/// Resets of a VM whose context is a process come at most this often.
const RESET_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often the executor looks whether a context being created is ready.
const START_RECHECK: Duration = Duration::from_millis(1);
/// How often the executor looks again at a VM whose SQ waits on its full CQ.
const CQ_RECHECK: Duration = Duration::from_millis(1);

/// What reaches an executor besides doorbells.
#[derive(Debug)]
pub enum ExecEvent {
    /// A VM placed on this device connected or left.
    Transport(Event),
    /// The configuration was reloaded (only run-time-safe changes; see
    /// [`Config::unsafe_changes`]).
    Reload(Arc<Config>),
}

struct Slot {
    ch: Channel,
    dev: VirtualDevice,
    /// When the VM's work on the device last made progress (a piece of it retired, or it
    /// had none): the kernel time limit counts from here.
    progress: Instant,
    /// The backend is still creating the VM's context: nothing is taken from its ring yet.
    starting: bool,
    /// When the VM's context was last (re)created.
    last_reset: Instant,
}

/// A command whose work is still on the device.
struct InFlight {
    vm: usize,
    stream: u32,
    tag: u64,
    token: Token,
    results: (u64, u64),
    control: bool,
    /// When it was issued to the backend.
    issued: Instant,
}

/// Executor errors (start-up only; at run time every failure is contained to one VM).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// epoll or the timerfd could not be set up.
    #[error("epoll: {0}")]
    Epoll(#[from] rustix::io::Errno),
    /// `executor_cpus` names a CPU this process may not run on.
    #[error("executor_cpus: CPU {cpu} is not one this process may run on (allowed: {allowed})")]
    Cpu {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs the process may run on.
        allowed: String,
    },
}

/// Pins the calling thread to `cpu`, which must be in the thread's current affinity set
/// (checked first, so a bad `executor_cpus` is a clear error rather than `EINVAL`).
pub fn pin_current_thread(cpu: usize) -> Result<(), ExecutorError> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let now = sched_getaffinity(None)?;
    if cpu >= CpuSet::MAX_CPU || !now.is_set(cpu) {
        let allowed: Vec<String> = (0..CpuSet::MAX_CPU)
            .filter(|&c| now.is_set(c))
            .map(|c| c.to_string())
            .collect();
        return Err(ExecutorError::Cpu {
            cpu,
            allowed: allowed.join(","),
        });
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)?;
    Ok(())
}

/// A pool-quota-less VM (a registry built without pools) is charged to this unlimited quota.
fn unlimited() -> Arc<PoolQuota> {
    Arc::new(PoolQuota::new(u64::MAX))
}

/// The executor of one device.
pub struct Executor<B: Backend, Q: WorkQueue> {
    backend: B,
    queue: Q,
    cfg: Arc<Config>,
    registry: Arc<StatsRegistry>,
    stats: Vec<Arc<VmStats>>,
    slots: Vec<Option<Slot>>,
    events: Receiver<ExecEvent>,
    control: Arc<OwnedFd>,
    epoll: OwnedFd,
    timer: OwnedFd,
    device_index: usize,
    shutdown: Arc<AtomicBool>,
    params: ChannelParams,
    poll_window: Duration,
    gate: Gate,
    inflight: Vec<InFlight>,
    /// When the kernel time limits are next looked at.
    next_limit_check: Instant,
}

impl<B: Backend, Q: WorkQueue> Executor<B, Q> {
    /// Builds the executor of device `device_index`. `control` is the eventfd written after
    /// each event sent on `events`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: B,
        queue: Q,
        cfg: Arc<Config>,
        registry: Arc<StatsRegistry>,
        events: Receiver<ExecEvent>,
        control: Arc<OwnedFd>,
        shutdown: Arc<AtomicBool>,
        device_index: usize,
    ) -> Result<Self, ExecutorError> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &*control,
            epoll::EventData::new_u64(CONTROL_KEY),
            epoll::EventFlags::IN,
        )?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &timer,
            epoll::EventData::new_u64(TIMER_KEY),
            epoll::EventFlags::IN,
        )?;
        let device = backend.info();
        let params = ChannelParams {
            capabilities: CAP_BUILTIN_KERNELS
                | CAP_COMPLETION_IRQ
                | CAP_HOST_POLLING
                | CAP_RESET
                | device.caps,
            device,
            max_kernel_us: cfg.mediator.max_kernel_us,
        };
        Ok(Self {
            gate: Gate::new(backend.orders_streams())
                .holding_blocking_calls(backend.calls_wait_for_device()),
            inflight: Vec::new(),
            next_limit_check: Instant::now(),
            backend,
            queue,
            poll_window: Duration::from_micros(cfg.mediator.poll_us),
            slots: (0..cfg.vms.len()).map(|_| None).collect(),
            stats: registry.vms.iter().map(|(_, s)| s.clone()).collect(),
            registry,
            cfg,
            events,
            control,
            epoll,
            timer,
            device_index,
            shutdown,
            params,
        })
    }

    fn handle_events(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                ExecEvent::Transport(Event::Connected(s)) => self.attach(s),
                ExecEvent::Transport(Event::Disconnected(vm)) => self.detach(vm),
                ExecEvent::Reload(cfg) => self.reload(cfg),
            }
        }
    }

    /// The quota of VM `vm`'s pool as configured now.
    fn pool_quota(&self, vm: usize) -> Arc<PoolQuota> {
        let pool = self.cfg.vm_pool(vm);
        self.registry
            .pools
            .get(pool)
            .map(|p| p.quota.clone())
            .unwrap_or_else(unlimited)
    }

    /// A fresh virtual device for `vm`, charged to its pool's quota.
    fn new_device(&self, vm: usize) -> VirtualDevice {
        VirtualDevice::new(
            vm,
            self.cfg.vms[vm].mem_quota.0,
            self.cfg.mediator.max_kernel_us,
        )
        .with_pool(self.pool_quota(vm))
        .with_limits(self.cfg.limits.clone())
    }

    /// Applies a reloaded config: the queue's weights, priorities and limits, each VM's quota
    /// and the registers its guest reads.
    fn reload(&mut self, cfg: Arc<Config>) {
        self.queue.reconfigure(&cfg);
        for (vm, slot) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = slot {
                let c = &cfg.vms[vm];
                slot.dev.set_quota(c.mem_quota.0);
                slot.ch.set_identity(c.pool_id, c.priority, c.mem_quota.0);
            }
        }
        self.cfg = cfg;
        info!(device = self.device_index, "configuration reloaded");
    }
    fn attach(&mut self, s: crate::transport::Setup) {
        let vm = s.vm;
        self.detach(vm);
        let cfg = &self.cfg.vms[vm];
        let stats = self.stats[vm].clone();
        let ch = match Channel::new(
            vm,
            cfg,
            s.region,
            s.doorbell,
            s.irq,
            &self.params,
            stats.clone(),
        ) {
            Ok(ch) => ch,
            Err(e) => {
                error!(vm = %cfg.name, "cannot set up channel: {e}");
                return;
            }
        };
        if let Err(e) = epoll::add(
            &self.epoll,
            ch.doorbell_fd(),
            epoll::EventData::new_u64(vm as u64),
            // Edge-triggered: the doorbell is never read (see `Channel::doorbell_fd`).
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        ) {
            error!(vm = %cfg.name, "epoll add: {e}");
        }
        stats.connected.store(true, Relaxed);
        VmStats::bump(&stats.connects, 1);
        stats.mem_used.store(0, Relaxed);
        if let Some(times) = stats.log_hit(|l| &mut l.attach) {
            info!(vm = %cfg.name, vm_id = cfg.vm_id, pool_id = cfg.pool_id, priority = cfg.priority,
                  shm = cfg.shm_size.0, backend = self.params.device.backend,
                  device = self.device_index, times, "VM attached");
        }
        ch.set_polling(true);
        stats.device.store(self.device_index as i64, Relaxed);
        self.slots[vm] = Some(Slot {
            ch,
            dev: self.new_device(vm),
            progress: Instant::now(),
            starting: false,
            last_reset: Instant::now(),
        });
        self.new_context(vm);
        self.update_shared();
        let _ = s.ready.send(());
    }

    /// Tells the backend whether this device has several VMs now (it may skip per-kernel
    /// accounting while one VM has the device alone).
    fn update_shared(&mut self) {
        let n = self.slots.iter().flatten().count();
        self.backend.set_shared(n > 1);
    }

    fn detach(&mut self, vm: usize) {
        let Some(slot) = self.slots[vm].take() else {
            return;
        };
        let _ = epoll::delete(&self.epoll, slot.ch.doorbell_fd());
        let dropped = self.drop_work(vm);
        self.backend.destroy_context(vm);
        let st = self.stats[vm].clone();
        st.connected.store(false, Relaxed);
        st.device.store(-1, Relaxed);
        self.update_shared();
        if let Some(times) = st.log_hit(|l| &mut l.attach) {
            info!(vm = %slot.ch.name(), dropped_jobs = dropped, times,
                  "VM detached; context and memory freed");
        }
        drop(slot);
        // What the VM's tables held goes back to the system, not only to malloc's free lists,
        // so that vgpud's footprint follows its tenants.
        // SAFETY: malloc_trim only releases free heap memory; it is safe to call at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Drops everything of a VM that left, reset or was stopped: its pending and queued work
    /// (its context is destroyed next) and its memory figures. Returns the queued jobs dropped.
    fn drop_work(&mut self, vm: usize) -> usize {
        self.inflight.retain(|f| f.vm != vm);
        self.gate.forget_vm(vm);
        let dropped = self.queue.remove_vm(vm);
        let st = &self.stats[vm];
        VmStats::bump(&st.dropped_jobs, dropped as u64);
        st.mem_used.store(0, Relaxed);
        st.queued.store(0, Relaxed);
        dropped
    }

    /// Gives VM `vm` (attached) a fresh virtual device — the old one gives its memory back to
    /// the pool as it is dropped — and starts its backend context. A context the backend
    /// cannot create leaves the device unavailable until the guest resets.
    fn new_context(&mut self, vm: usize) {
        let dev = self.new_device(vm);
        let Some(slot) = self.slots[vm].as_mut() else {
            return;
        };
        slot.dev = dev;
        slot.progress = Instant::now();
        slot.last_reset = Instant::now();
        slot.starting = false;
        let params = crate::backend::ContextParams {
            staging: slot.ch.staging(),
            priority: self.cfg.vms[vm].priority,
            region: Some(slot.ch.region().clone()),
        };
        match self.backend.create_context(vm, params) {
            Ok(()) => slot.starting = true,
            Err(e) => {
                error!(vm = %slot.ch.name(), "{e}");
                slot.ch.set_unavailable();
                slot.dev.set_unavailable();
            }
        }
        self.check_started(vm);
    }

    fn reset(&mut self, vm: usize) {
        let dropped = self.drop_work(vm);
        self.backend.destroy_context(vm);
        let Some(slot) = self.slots[vm].as_mut() else {
            return;
        };
        slot.ch.finish_reset();
        self.new_context(vm);
        tracing::debug!(vm = %self.cfg.vms[vm].name, dropped_jobs = dropped, "reset done");
    }

    /// Looks whether VM `vm`'s context, being created, is ready; a failure makes the device
    /// unavailable until the guest resets. Returns whether the VM is still starting.
    fn check_started(&mut self, vm: usize) -> bool {
        let Some(slot) = self.slots[vm].as_mut() else {
            return false;
        };
        if !slot.starting {
            return false;
        }
        match self.backend.context_ready(vm) {
            None => return true,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                error!(vm = %slot.ch.name(), "{e}");
                slot.ch.set_unavailable();
                slot.dev.set_unavailable();
            }
        }
        slot.starting = false;
        false
    }

    /// Whether a VM asked for a reset that waits for its context's start or for the reset
    /// interval (see [`Executor::reset_ready`]; one that waits for device work is woken by it).
    fn resets_waiting(&self) -> bool {
        self.backend.destroy_stops_work()
            && self.slots.iter().enumerate().any(|(vm, s)| {
                s.as_ref().is_some_and(|s| s.ch.reset_requested()) && !self.reset_ready(vm)
            })
    }

    /// Whether any VM's context is still being created.
    fn check_all_started(&mut self) -> bool {
        let mut any = false;
        for vm in 0..self.slots.len() {
            any |= self.check_started(vm);
        }
        any
    }

    /// Whether a reset the VM asked for can be done now. Where destroying a context does not
    /// stop its work, the reset waits until the VM's pending work retired: the device is busy
    /// with it either way, and a guest that could reset it away would hide that device time
    /// from the scheduler (and stack unbounded work on the device by resetting in a loop).
    ///
    /// Where a context is a process (`destroy_stops_work`), a reset waits for the previous
    /// context to be ready and comes at most every [`RESET_MIN_INTERVAL`]: each costs the host
    /// a process start, and a guest resetting in a loop must not turn that into a CPU storm.
    fn reset_ready(&self, vm: usize) -> bool {
        Self::reset_ready_of(self.slots[vm].as_ref(), &self.backend, &self.inflight, vm)
    }

    fn reset_ready_of(slot: Option<&Slot>, backend: &B, inflight: &[InFlight], vm: usize) -> bool {
        let Some(slot) = slot else { return false };
        if backend.destroy_stops_work() {
            !slot.starting && slot.last_reset.elapsed() >= RESET_MIN_INTERVAL
        } else {
            !inflight.iter().any(|f| f.vm == vm)
        }
    }

    /// Enforces the kernel time limit: a VM whose work on the device has made no progress for
    /// longer than its pool's `max_kernel_ms` is stopped (its context killed and recreated,
    /// its pending commands completed with `KERNEL_TIMEOUT`, the device in the error state
    /// until the guest resets). Returns how many VMs were stopped.
    fn enforce_time_limits(&mut self) -> usize {
        let now = Instant::now();
        if self.inflight.is_empty() || now < self.next_limit_check {
            return 0;
        }
        self.next_limit_check = now + LIMIT_CHECK_EVERY;
        let over: Vec<usize> = self
            .time_limit_deadlines()
            .filter(|&(_, deadline)| now > deadline)
            .map(|(vm, _)| vm)
            .collect();
        for &vm in &over {
            self.stop_runaway(vm);
        }
        over.len()
    }

    /// `(vm, when its kernel time limit passes)` for every VM with work on the device.
    fn time_limit_deadlines(&self) -> impl Iterator<Item = (usize, Instant)> + '_ {
        self.slots.iter().enumerate().filter_map(|(vm, slot)| {
            let slot = slot.as_ref()?;
            let limit = self.cfg.kernel_limit(vm)?;
            if slot.dev.is_broken() {
                return None;
            }
            let oldest = self
                .inflight
                .iter()
                .filter(|f| f.vm == vm)
                .map(|f| f.issued)
                .min()?;
            Some((vm, oldest.max(slot.progress) + limit))
        })
    }

    fn stop_runaway(&mut self, vm: usize) {
        let name = self.cfg.vms[vm].name.clone();
        let limit_ms = self.cfg.kernel_limit(vm).map_or(0, |d| d.as_millis());
        let st = self.stats[vm].clone();
        VmStats::bump(&st.kernel_timeouts, 1);
        if !self.backend.kill_context(vm) {
            // The work cannot be stopped here; the VM is failed so that it queues no more, and
            // the device stays busy until its kernel ends.
            if let Some(times) = st.log_hit(|l| &mut l.limit) {
                warn!(vm = %name, limit_ms, times,
                      "kernel time limit passed; this backend cannot stop running work \
                       (fault_isolation = \"process\" can): the VM is failed, its kernel runs on");
            }
            if let Some(slot) = self.slots[vm].as_mut() {
                slot.dev.set_broken();
                slot.ch.set_error(Status::KernelTimeout);
            }
            return;
        }
        if let Some(times) = st.log_hit(|l| &mut l.limit) {
            warn!(vm = %name, limit_ms, times,
                  "kernel time limit passed: the VM's context was killed; it must reset");
        }
        // Its pending commands end now, with the reason.
        let mut mine = Vec::new();
        self.inflight.retain(|f| {
            if f.vm == vm {
                mine.push((f.tag, f.control, f.issued));
                false
            } else {
                true
            }
        });
        let now = Instant::now();
        for &(_, control, issued) in &mine {
            let ns = now.saturating_duration_since(issued).as_nanos() as u64;
            self.charge(vm, control, ns);
        }
        self.drop_work(vm);
        if let Some(slot) = self.slots[vm].as_mut() {
            for (tag, ..) in mine {
                slot.ch.complete(tag, Err(Status::KernelTimeout));
            }
            slot.ch.set_error(Status::KernelTimeout);
        }
        self.new_context(vm);
        if let Some(slot) = self.slots[vm].as_mut() {
            slot.dev.set_broken();
        }
    }

    /// One ingestion pass over every channel. Returns entries taken.
    fn poll_channels(&mut self) -> u32 {
        let mut taken = 0;
        for vm in 0..self.slots.len() {
            let reset = matches!(&self.slots[vm], Some(s) if s.ch.reset_requested());
            if reset {
                if !self.reset_ready(vm) {
                    // Nothing more is taken from its ring until its work retired.
                    continue;
                }
                self.reset(vm);
                taken += 1;
            }
            if let Some(slot) = self.slots[vm].as_mut().filter(|s| !s.starting) {
                let q = &mut self.queue;
                // A VM at its queued limit keeps the rest in its ring (backpressure).
                let budget = q.room(vm).min(POLL_BUDGET as usize) as u32;
                if budget > 0 {
                    taken += slot.ch.poll(budget, &mut |job| q.push(job));
                }
            }
        }
        taken
    }

    fn run_jobs(&mut self) -> usize {
        let mut ran = 0;
        while ran < RUN_BUDGET {
            // A VM that left (or a new one) is noticed between jobs, so a departed VM's queued
            // work is dropped instead of run.
            self.handle_events();
            let Some(job) = self.queue.pop(&mut self.gate) else {
                break;
            };
            ran += 1;
            let control = is_control(&job.cmd);
            let Some(slot) = self.slots[job.vm].as_mut() else {
                self.queue.finished(job.vm, control, 0);
                continue;
            };
            let st = &self.stats[job.vm];
            st.queued.fetch_sub(1, Relaxed);
            // A fenced VM's jobs, and those of a VM whose reset waits, are dropped unrun.
            if slot.ch.is_fenced() || slot.ch.reset_requested() {
                self.queue.finished(job.vm, control, 0);
                continue;
            }
            let t0 = Instant::now();
            let out = slot.dev.execute(&mut self.backend, job.stream, &job.cmd);
            let out = match out {
                Ok(Issued::Done(a, b)) => {
                    let ns = t0.elapsed().as_nanos() as u64;
                    st.device_ns.fetch_add(ns, Relaxed);
                    self.charge(job.vm, control, ns);
                    Ok((a, b))
                }
                Ok(Issued::Pending(token, a, b)) => {
                    self.gate.issued(job.vm, job.stream);
                    self.inflight.push(InFlight {
                        vm: job.vm,
                        stream: job.stream,
                        tag: job.tag,
                        token,
                        results: (a, b),
                        control,
                        issued: Instant::now(),
                    });
                    Self::account(st, slot, &job.cmd);
                    continue;
                }
                Err(e) => {
                    self.charge(job.vm, control, t0.elapsed().as_nanos() as u64);
                    Err(e)
                }
            };
            let Some(slot) = self.slots[job.vm].as_mut() else {
                continue;
            };
            let st = &self.stats[job.vm];
            if out.is_ok() {
                Self::account(st, slot, &job.cmd);
            }
            if out == Err(Status::KernelFault) {
                if let Some(times) = st.log_hit(|l| &mut l.fault) {
                    warn!(vm = %slot.ch.name(), times, "kernel fault: context broken until the guest resets");
                }
                slot.ch.set_broken();
            }
            if out == Err(Status::LimitExceeded) {
                VmStats::bump(&st.limit_refusals, 1);
            }
            slot.ch.complete(job.tag, out);
        }
        ran
    }

    /// Tells the queue a job left the device after `ns` of device time, and counts it for the
    /// VM's pool.
    fn charge(&mut self, vm: usize, control: bool, ns: u64) {
        self.queue.finished(vm, control, ns);
        if let Some(p) = self.registry.pools.get(self.cfg.vm_pool(vm)) {
            p.device_ns.fetch_add(ns, Relaxed);
        }
    }

    /// Byte and memory accounting of a command that was issued without error.
    fn account(st: &VmStats, slot: &Slot, cmd: &vgpu_abi::cmd::Command) {
        use vgpu_abi::cmd::Command::*;
        match *cmd {
            CopyH2D { len, .. } => VmStats::bump(&st.bytes_in, len),
            CopyD2H { len, .. } => VmStats::bump(&st.bytes_out, len),
            MemAlloc { .. } | MemFree { .. } => st.mem_used.store(slot.dev.used(), Relaxed),
            _ => {}
        }
    }

    /// Completes every pending command whose work retired. Returns how many.
    fn retire(&mut self) -> usize {
        // On a device that keeps each stream in order, a stream's commands retire in issue
        // order: once one of them is still running, the later ones of that stream are not
        // asked (each poll may cost a driver call), so a pass costs one poll per busy stream.
        let in_order = self.gate.device_orders_streams;
        let mut blocked: Vec<(usize, u32)> = Vec::new();
        let mut done = 0;
        let mut keep = Vec::with_capacity(self.inflight.len());
        for f in std::mem::take(&mut self.inflight) {
            let key = (f.vm, f.stream);
            if in_order && blocked.contains(&key) {
                keep.push(f);
                continue;
            }
            let Some(res) = self.backend.poll(f.vm, f.token) else {
                if in_order {
                    blocked.push(key);
                }
                keep.push(f);
                continue;
            };
            done += 1;
            self.gate.retired(f.vm, f.stream);
            let ns = res.map(|r| r.device_ns).unwrap_or(0);
            self.charge(f.vm, f.control, ns);
            let Some(slot) = self.slots[f.vm].as_mut() else {
                continue;
            };
            slot.progress = Instant::now();
            let out = match res {
                Ok(_) => {
                    self.stats[f.vm].device_ns.fetch_add(ns, Relaxed);
                    Ok(f.results)
                }
                Err(e) => {
                    if e == Status::KernelFault || e == Status::ContextLost {
                        if let Some(times) = self.stats[f.vm].log_hit(|l| &mut l.fault) {
                            warn!(vm = %slot.ch.name(), times,
                                  "device fault: context broken until the guest resets");
                        }
                        slot.dev.set_broken();
                        slot.ch.set_broken();
                    }
                    Err(e)
                }
            };
            slot.ch.complete(f.tag, out);
        }
        self.inflight = keep;
        done
    }

    fn flush_irqs(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.ch.flush_irq();
        }
    }

    fn set_polling(&self, on: bool) {
        for slot in self.slots.iter().flatten() {
            slot.ch.set_polling(on);
        }
    }

    fn anything_pending(&mut self) -> bool {
        // Queued jobs held behind pending device work wait for it (the sleep is bounded by the
        // backend's hint); with nothing on the device every queued job is runnable.
        // A VM at its queued limit waits for its queue to drain, not for its ring.
        let q = &self.queue;
        let (backend, inflight) = (&self.backend, &self.inflight);
        (!q.is_empty() && inflight.is_empty())
            || self.slots.iter_mut().enumerate().any(|(vm, s)| {
                let ready = Self::reset_ready_of(s.as_ref(), backend, inflight, vm);
                s.as_mut().is_some_and(|s| {
                    (s.ch.reset_requested() && ready)
                        || (!s.starting && q.room(vm) > 0 && s.ch.takeable() > 0)
                })
            })
    }

    fn any_cq_blocked(&mut self) -> bool {
        self.slots
            .iter_mut()
            .any(|s| s.as_mut().is_some_and(|s| !s.starting && s.ch.cq_blocked()))
    }

    /// Arms the timerfd to fire after `d` (`None`: disarm). Unlike an epoll timeout, which
    /// has millisecond resolution, it wakes the executor within microseconds of a short
    /// kernel's end.
    fn arm_timer(&self, d: Option<Duration>) {
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = match d {
            // A zero it_value would disarm the timer: fire after 1 ns instead.
            Some(d) => rustix::time::Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos().max(u32::from(d.as_secs() == 0)) as _,
            },
            None => zero,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: value,
        };
        if let Err(e) = timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec) {
            warn!("timerfd_settime: {e}");
        }
    }

    fn sleep(&mut self, timeout: Option<Duration>) {
        let mut events = Vec::with_capacity(64);
        self.arm_timer(timeout);
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            None,
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return,
            Err(e) => {
                warn!("epoll_wait: {e}");
                std::thread::sleep(Duration::from_millis(1));
                return;
            }
        }
        for ev in &events {
            let key = ev.data.u64();
            if key == CONTROL_KEY {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&*self.control, &mut b);
            } else if key == TIMER_KEY {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.timer, &mut b);
            }
            // A doorbell needs nothing: waking up was the point, the rings are read next.
        }
    }

    /// Runs until shutdown; then frees every VM.
    pub fn run(mut self) {
        info!(backend = self.params.device.backend, device = %self.params.device.name,
              index = self.device_index, cpu = ?self.cfg.mediator.executor_cpu(self.device_index),
              "executor running");
        let mut last_work = Instant::now();
        loop {
            if self.shutdown.load(Relaxed) {
                break;
            }
            self.handle_events();
            let starting = self.check_all_started();
            // Work that retired is completed and signalled first: a waiting guest should not
            // wait for this round's ingestion and dispatch of other VMs' work.
            let retired = self.retire() + self.enforce_time_limits();
            if retired > 0 {
                self.flush_irqs();
            }
            let taken = self.poll_channels();
            let ran = self.run_jobs();
            self.flush_irqs();
            if taken > 0 || ran > 0 || retired > 0 {
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < self.poll_window {
                std::hint::spin_loop();
                continue;
            }
            // Idle: stop advertising polling, then re-check (pairs with the guest's
            // publish-then-check-flag), then sleep on the doorbells.
            // Pending device work bounds the sleep: wake when it may have retired.
            let hint = if self.inflight.is_empty() {
                None
            } else {
                match self.backend.poll_hint() {
                    // Retirement is near (or unknown): keep polling rather than pay a wake-up,
                    // whose latency (tens of µs, more in a VM) would land on the guest waiting.
                    Some(d) if d <= SPIN_BEFORE_RETIRE => continue,
                    // Far off: sleep, but wake that much early and poll the rest.
                    Some(d) => Some(d - SPIN_BEFORE_RETIRE),
                    None => Some(Duration::ZERO),
                }
            };
            // A guest that leaves its CQ full is looked at again after a short sleep: no signal
            // says when it consumes its completions, and spinning on it would burn a core.
            let mut hint = hint;
            let mut cap = |d: Duration| hint = Some(hint.map_or(d, |h| h.min(d)));
            if self.any_cq_blocked() {
                cap(CQ_RECHECK);
            }
            // A context being created says nothing when it is ready, nor does the end of a
            // deferred reset's interval: look again soon.
            if starting || self.resets_waiting() {
                cap(START_RECHECK);
            }
            // A kernel time limit that passes while asleep is acted on when it does.
            let now = Instant::now();
            if let Some(d) = self.time_limit_deadlines().map(|(_, t)| t).min() {
                cap(d.saturating_duration_since(now));
            }
            self.set_polling(false);
            if self.anything_pending() {
                self.set_polling(true);
                continue;
            }
            self.sleep(hint);
            self.set_polling(true);
            last_work = Instant::now();
        }
        for slot in self.slots.iter_mut().flatten() {
            slot.ch.stop();
        }
        for vm in 0..self.slots.len() {
            self.detach(vm);
        }
        info!("executor stopped");
    }
}
