//! The executor: one thread per device. It owns the channels, the queue and the backend.
//!
//! Loop: take new entries from every channel (round-robin, bounded per channel), run queued
//! jobs on the backend, post completions. After the last work it keeps polling for
//! `poll_us` (guests see `SQ_FLAG_HOST_POLLING` and skip the doorbell); then it clears the
//! flag, re-checks every ring, and sleeps on the doorbell eventfds — no CPU burnt while idle.
//! Work on the device is waited for the same way: polled for that window and at least
//! `SPIN_BEFORE_BLOCK` after the last progress (a short command retires inside it, and a
//! wake-up would only add its latency), then the executor blocks until the backend's wake fd
//! says a piece retired (`device_wait = "block"`, see [`Backend::arm_wake`] and
//! docs/architecture.md, "Waiting for the device"); a backend without one bounds the sleep with
//! its [`Backend::poll_hint`] (a timerfd).
//!
//! The queue decides what runs (see [`crate::sched`]); the executor tells it how much device
//! time each job took, and takes no more from a VM's ring than the queue has room for.
//!
//! This file is the run loop and the executor's state; the rest is split by responsibility:
//! `lifecycle` (a VM's attach, detach, reset and context), `dispatch` (running jobs and
//! retiring them), `time_limit` (stopping runaway work), `usage` (the memory and utilisation
//! each VM's register page shows) and `wait` (epoll and timerfd).
//! The module's root is `executor.rs` rather than `executor/mod.rs` because the loom model
//! (`vgpu-abi/tests/loom_ring.rs`) mirrors `run` and `anything_pending` and reads them from
//! this file by path.

mod dispatch;
mod lifecycle;
#[cfg(test)]
mod tests;
mod time_limit;
mod usage;
mod wait;

use crate::backend::wake::{SPIN_BEFORE_BLOCK, SPIN_BEFORE_RETIRE};
use crate::backend::{Backend, Token, Wake};
use crate::channel::{Channel, ChannelParams};
use crate::config::{Config, DeviceWait};
use crate::device::VirtualDevice;
use crate::queue::{Gate, WorkQueue};
use crate::stats::{StatsRegistry, VmStats};
use crate::transport::Event;
use rustix::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;
use vgpu_abi::regs::{CAP_BUILTIN_KERNELS, CAP_COMPLETION_IRQ, CAP_HOST_POLLING, CAP_RESET};
use wait::Waiter;

/// Entries taken from one channel per round (keeps one VM from hogging ingestion).
const POLL_BUDGET: u32 = 32;
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
    /// An operator reset a VM's device (`vgpuctl reset`); the outcome (the new generation)
    /// goes back on `reply`.
    Reset {
        /// The VM.
        vm: usize,
        /// Where the outcome goes.
        reply: std::sync::mpsc::Sender<Result<u32, HostResetError>>,
    },
}

/// Why an operator's reset was not done; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostResetError {
    /// The VM is not attached to this device (it left meanwhile).
    #[error("the VM is not attached")]
    NotAttached,
    /// Its context is still being created.
    #[error("its device context is still being created; retry")]
    Starting,
    /// It has work running that this backend cannot stop.
    #[error(
        "it has work running on the device that this backend cannot stop \
         (fault_isolation = \"process\" can); retry when it is done"
    )]
    CannotStopWork,
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
    /// Its current utilisation window (published in its register page when it ends).
    usage: usage::UsageWindow,
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
    /// When it was queued in vgpud (for the completion latency).
    enqueued: Instant,
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

/// The executor of one device.
pub struct Executor<B: Backend + ?Sized, Q: WorkQueue> {
    backend: Box<B>,
    queue: Q,
    cfg: Arc<Config>,
    registry: Arc<StatsRegistry>,
    stats: Vec<Arc<VmStats>>,
    slots: Vec<Option<Slot>>,
    events: Receiver<ExecEvent>,
    wait: Waiter,
    device_index: usize,
    shutdown: Arc<AtomicBool>,
    params: ChannelParams,
    poll_window: Duration,
    gate: Gate,
    inflight: Vec<InFlight>,
    /// When the kernel time limits are next looked at.
    next_limit_check: Instant,
    /// Pending device work is waited for on the backend's wake fd (it has one and
    /// `device_wait = "block"`).
    blocking: bool,
}

impl<B: Backend + ?Sized, Q: WorkQueue> Executor<B, Q> {
    /// Builds the executor of device `device_index`. `control` is the eventfd written after
    /// each event sent on `events`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: Box<B>,
        queue: Q,
        cfg: Arc<Config>,
        registry: Arc<StatsRegistry>,
        events: Receiver<ExecEvent>,
        control: Arc<OwnedFd>,
        shutdown: Arc<AtomicBool>,
        device_index: usize,
    ) -> Result<Self, ExecutorError> {
        let mut wait = Waiter::new(control)?;
        let blocking = match backend.wake_fd() {
            Some(fd) if cfg.mediator.device_wait == DeviceWait::Block => {
                wait.watch_wake(fd)?;
                true
            }
            _ => false,
        };
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
            blocking,
            backend,
            queue,
            poll_window: Duration::from_micros(cfg.mediator.poll_us),
            slots: (0..cfg.vms.len()).map(|_| None).collect(),
            stats: registry.vms.iter().map(|(_, s)| s.clone()).collect(),
            registry,
            cfg,
            events,
            wait,
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
                ExecEvent::Reset { vm, reply } => {
                    let _ = reply.send(self.host_reset(vm));
                }
            }
        }
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

    /// Sleeps until a doorbell rings, an event arrives or `timeout` passes.
    fn sleep(&self, timeout: Option<Duration>) {
        self.wait.sleep(timeout);
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
            self.publish_workers();
            self.publish_usage(Instant::now());
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
            } else if self.blocking {
                // Device work may end any moment after it was issued: keep polling it for
                // `SPIN_BEFORE_BLOCK`, so that short work (a null kernel's round trip, a copy
                // of a few milliseconds) never pays a wake-up.
                if last_work.elapsed() < SPIN_BEFORE_BLOCK {
                    continue;
                }
                match self.backend.arm_wake(SPIN_BEFORE_RETIRE) {
                    // Retirement is near, or happened: poll it rather than pay a wake-up.
                    Wake::Poll => continue,
                    Wake::Armed(recheck) => recheck,
                }
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
            // A VM's utilisation window ends while asleep: its share is published then (an
            // idle device whose VMs all read 0 sets no such timer).
            if let Some(d) = self.usage_deadline() {
                cap(d.saturating_duration_since(now));
            }
            self.set_polling(false);
            if self.anything_pending() {
                self.set_polling(true);
                continue;
            }
            self.sleep(hint);
            self.set_polling(true);
            // No new polling window here: a wake that finds work opens one (above), and one
            // on a timer alone (a full CQ, a context starting) goes back to sleep at once
            // instead of spinning `poll_us` for nothing every time.
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
