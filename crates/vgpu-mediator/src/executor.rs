//! The executor: one thread per device. It owns the channels, the queue and the backend.
//!
//! Loop: take new entries from every channel (round-robin, bounded per channel), run queued
//! jobs on the backend, post completions. After the last work it keeps polling for
//! `poll_us` (guests see `SQ_FLAG_HOST_POLLING` and skip the doorbell); then it clears the
//! flag, re-checks every ring, and sleeps on the doorbell eventfds — no CPU burnt while idle.

use crate::backend::{Backend, Issued, Token};
use crate::channel::{Channel, ChannelParams};
use crate::config::Config;
use crate::device::VirtualDevice;
use crate::queue::{Gate, WorkQueue};
use crate::stats::{StatsRegistry, VmStats};
use crate::transport::Event;
use rustix::event::epoll;
use rustix::fd::OwnedFd;
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

struct Slot {
    ch: Channel,
    dev: VirtualDevice,
}

/// A command whose work is still on the device.
struct InFlight {
    vm: usize,
    stream: u32,
    tag: u64,
    token: Token,
    results: (u64, u64),
}

/// Executor errors (start-up only; at run time every failure is contained to one VM).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// epoll could not be set up.
    #[error("epoll: {0}")]
    Epoll(#[from] rustix::io::Errno),
}

/// The executor of one device.
pub struct Executor<B: Backend, Q: WorkQueue> {
    backend: B,
    queue: Q,
    cfg: Arc<Config>,
    stats: Vec<Arc<VmStats>>,
    slots: Vec<Option<Slot>>,
    events: Receiver<Event>,
    control: Arc<OwnedFd>,
    epoll: OwnedFd,
    shutdown: Arc<AtomicBool>,
    params: ChannelParams,
    poll_window: Duration,
    gate: Gate,
    inflight: Vec<InFlight>,
}

impl<B: Backend, Q: WorkQueue> Executor<B, Q> {
    /// Builds an executor. `control` is the eventfd the transport writes after each event.
    pub fn new(
        backend: B,
        queue: Q,
        cfg: Arc<Config>,
        stats: &StatsRegistry,
        events: Receiver<Event>,
        control: Arc<OwnedFd>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, ExecutorError> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &*control,
            epoll::EventData::new_u64(CONTROL_KEY),
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
            gate: Gate::new(backend.orders_streams()),
            inflight: Vec::new(),
            backend,
            queue,
            poll_window: Duration::from_micros(cfg.mediator.poll_us),
            slots: (0..cfg.vms.len()).map(|_| None).collect(),
            stats: stats.vms.iter().map(|(_, s)| s.clone()).collect(),
            cfg,
            events,
            control,
            epoll,
            shutdown,
            params,
        })
    }

    fn handle_events(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Event::Connected(s) => self.attach(s),
                Event::Disconnected(vm) => self.detach(vm),
            }
        }
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
        let mut ch = ch;
        if let Err(e) = self.backend.create_context(vm, ch.staging()) {
            error!(vm = %cfg.name, "{e}");
            ch.set_broken();
        }
        if let Err(e) = epoll::add(
            &self.epoll,
            ch.doorbell_fd(),
            epoll::EventData::new_u64(vm as u64),
            epoll::EventFlags::IN,
        ) {
            error!(vm = %cfg.name, "epoll add: {e}");
        }
        stats.connected.store(true, Relaxed);
        VmStats::bump(&stats.connects, 1);
        stats.mem_used.store(0, Relaxed);
        info!(vm = %cfg.name, vm_id = cfg.vm_id, pool_id = cfg.pool_id, priority = cfg.priority,
              shm = cfg.shm_size.0, backend = self.params.device.backend, "VM attached");
        ch.set_polling(true);
        self.slots[vm] = Some(Slot {
            ch,
            dev: VirtualDevice::new(vm, cfg.mem_quota.0, self.cfg.mediator.max_kernel_us),
        });
        let _ = s.ready.send(());
    }

    fn detach(&mut self, vm: usize) {
        let Some(slot) = self.slots[vm].take() else {
            return;
        };
        let _ = epoll::delete(&self.epoll, slot.ch.doorbell_fd());
        self.forget_inflight(vm);
        let dropped = self.queue.remove_vm(vm);
        self.backend.destroy_context(vm);
        let st = &self.stats[vm];
        st.connected.store(false, Relaxed);
        st.mem_used.store(0, Relaxed);
        st.queued.store(0, Relaxed);
        info!(vm = %slot.ch.name(), dropped_jobs = dropped, "VM detached; context and memory freed");
    }

    /// Drops the pending work of a VM that left or reset (its context is destroyed next, which
    /// waits for whatever still runs on the device).
    fn forget_inflight(&mut self, vm: usize) {
        self.inflight.retain(|f| f.vm != vm);
        self.gate.forget_vm(vm);
    }

    fn reset(&mut self, vm: usize) {
        self.forget_inflight(vm);
        let dropped = self.queue.remove_vm(vm);
        self.backend.destroy_context(vm);
        let Some(slot) = self.slots[vm].as_mut() else {
            return;
        };
        let cfg = &self.cfg.vms[vm];
        slot.ch.finish_reset();
        slot.dev = VirtualDevice::new(vm, cfg.mem_quota.0, self.cfg.mediator.max_kernel_us);
        if let Err(e) = self.backend.create_context(vm, slot.ch.staging()) {
            error!(vm = %cfg.name, "{e}");
            slot.ch.set_broken();
        }
        self.stats[vm].mem_used.store(0, Relaxed);
        self.stats[vm].queued.store(0, Relaxed);
        info!(vm = %cfg.name, dropped_jobs = dropped, "reset done");
    }

    /// One ingestion pass over every channel. Returns entries taken.
    fn poll_channels(&mut self) -> u32 {
        let mut taken = 0;
        for vm in 0..self.slots.len() {
            let reset = matches!(&self.slots[vm], Some(s) if s.ch.reset_requested());
            if reset {
                self.reset(vm);
                taken += 1;
            }
            if let Some(slot) = self.slots[vm].as_mut() {
                let q = &mut self.queue;
                taken += slot.ch.poll(POLL_BUDGET, &mut |job| q.push(job));
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
            let Some(slot) = self.slots[job.vm].as_mut() else {
                continue;
            };
            let st = &self.stats[job.vm];
            st.queued.fetch_sub(1, Relaxed);
            if slot.ch.is_fenced() {
                continue;
            }
            let t0 = Instant::now();
            let out = slot.dev.execute(&mut self.backend, job.stream, &job.cmd);
            let out = match out {
                Ok(Issued::Done(a, b)) => {
                    st.device_ns
                        .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
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
                    });
                    Self::account(st, slot, &job.cmd);
                    continue;
                }
                Err(e) => Err(e),
            };
            if out.is_ok() {
                Self::account(st, slot, &job.cmd);
            }
            if out == Err(Status::KernelFault) {
                warn!(vm = %slot.ch.name(), "kernel fault: context broken until the guest resets");
                slot.ch.set_broken();
            }
            slot.ch.complete(job.tag, out);
        }
        ran
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
        let mut done = 0;
        let mut i = 0;
        while i < self.inflight.len() {
            let f = &self.inflight[i];
            let Some(res) = self.backend.poll(f.vm, f.token) else {
                i += 1;
                continue;
            };
            let f = self.inflight.swap_remove(i);
            done += 1;
            self.gate.retired(f.vm, f.stream);
            let Some(slot) = self.slots[f.vm].as_mut() else {
                continue;
            };
            let out = match res {
                Ok(r) => {
                    self.stats[f.vm].device_ns.fetch_add(r.device_ns, Relaxed);
                    Ok(f.results)
                }
                Err(e) => {
                    if e == Status::KernelFault || e == Status::ContextLost {
                        warn!(vm = %slot.ch.name(), "device fault: context broken until the guest resets");
                        slot.dev.set_broken();
                        slot.ch.set_broken();
                    }
                    Err(e)
                }
            };
            slot.ch.complete(f.tag, out);
        }
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
        (!self.queue.is_empty() && self.inflight.is_empty())
            || self
                .slots
                .iter_mut()
                .flatten()
                .any(|s| s.ch.reset_requested() || s.ch.pending() > 0)
    }

    fn sleep(&mut self, timeout: Option<Duration>) {
        let mut events = Vec::with_capacity(64);
        let timeout = timeout.map(|d| rustix::event::Timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        });
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
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
            } else if let Some(Some(slot)) = self.slots.get(key as usize) {
                slot.ch.drain_doorbell();
            }
        }
    }

    /// Runs until shutdown; then frees every VM.
    pub fn run(mut self) {
        info!(backend = self.params.device.backend, device = %self.params.device.name, "executor running");
        let mut last_work = Instant::now();
        loop {
            if self.shutdown.load(Relaxed) {
                break;
            }
            self.handle_events();
            let taken = self.poll_channels();
            let retired = self.retire();
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
                    Some(d) if d.is_zero() => continue,
                    Some(d) => Some(d),
                    None => Some(Duration::ZERO),
                }
            };
            self.set_polling(false);
            if self.anything_pending() {
                self.set_polling(true);
                continue;
            }
            self.sleep(hint);
            self.set_polling(true);
            last_work = Instant::now();
        }
        for vm in 0..self.slots.len() {
            self.detach(vm);
        }
        info!("executor stopped");
    }
}
