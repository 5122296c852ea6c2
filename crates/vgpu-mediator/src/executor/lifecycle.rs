//! A VM's life on the executor: attach (channel, doorbell, device, context), detach, the
//! guest's reset, and the (re)creation of its backend context, which may finish later.

use super::{Executor, HostResetError, InFlight, Slot};
use crate::backend::{Backend, ContextParams};
use crate::channel::Channel;
use crate::device::VirtualDevice;
use crate::queue::WorkQueue;
use crate::quota::PoolQuota;
use crate::stats::VmStats;
use crate::transport::Setup;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use vgpu_abi::Status;

/// Resets of a VM whose context is a process come at most this often.
const RESET_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A pool-quota-less VM (a registry built without pools) is charged to this unlimited quota.
fn unlimited() -> Arc<PoolQuota> {
    Arc::new(PoolQuota::new(u64::MAX))
}

impl<B: Backend + ?Sized, Q: WorkQueue> Executor<B, Q> {
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

    pub(super) fn attach(&mut self, s: Setup) {
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
        if let Err(e) = self.wait.watch_doorbell(ch.doorbell_fd(), vm) {
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
            usage: super::usage::UsageWindow::new(stats.device_ns.load(Relaxed)),
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

    pub(super) fn detach(&mut self, vm: usize) {
        let Some(slot) = self.slots[vm].take() else {
            return;
        };
        let _ = self.wait.unwatch(slot.ch.doorbell_fd());
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

    /// Publishes the backend's worker process count for the metrics when it changed (once a
    /// round: workers come and go with attaches, resets, time limits and crashes alike).
    pub(super) fn publish_workers(&self) {
        let Some(w) = self.registry.device_workers.get(self.device_index) else {
            return;
        };
        let n = self
            .backend
            .worker_processes()
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        if w.load(Relaxed) != n {
            w.store(n, Relaxed);
        }
    }

    /// Drops everything of a VM that left, reset or was stopped: its pending and queued work
    /// (its context is destroyed next) and its memory figures. Returns the queued jobs dropped.
    pub(super) fn drop_work(&mut self, vm: usize) -> usize {
        self.inflight.retain(|f| f.vm != vm);
        self.gate.forget_vm(vm);
        let dropped = self.queue.remove_vm(vm);
        let st = &self.stats[vm];
        VmStats::bump(&st.dropped_jobs, dropped as u64);
        st.mem_used.store(0, Relaxed);
        st.queued.store(0, Relaxed);
        st.inflight.store(0, Relaxed);
        dropped
    }

    /// Gives VM `vm` (attached) a fresh virtual device — the old one gives its memory back to
    /// the pool as it is dropped — and starts its backend context. A context the backend
    /// cannot create leaves the device unavailable until the guest resets.
    pub(super) fn new_context(&mut self, vm: usize) {
        let dev = self.new_device(vm);
        let Some(slot) = self.slots[vm].as_mut() else {
            return;
        };
        slot.dev = dev;
        // The fresh device holds no memory: the register page says so before the guest can
        // send anything to it.
        slot.ch.set_mem_used(0);
        slot.progress = Instant::now();
        slot.last_reset = Instant::now();
        slot.starting = false;
        let params = ContextParams {
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

    pub(super) fn reset(&mut self, vm: usize) {
        let dropped = self.drop_work(vm);
        self.backend.destroy_context(vm);
        let Some(slot) = self.slots[vm].as_mut() else {
            return;
        };
        slot.ch.finish_reset();
        self.new_context(vm);
        tracing::debug!(vm = %self.cfg.vms[vm].name, dropped_jobs = dropped, "reset done");
    }

    /// An operator's reset (`vgpuctl reset`): the VM's work is aborted — commands on the
    /// device complete with `ABORTED`, queued ones and any it sends next with `CONTEXT_LOST` —
    /// its context is destroyed and a fresh one created (its memory freed), and the register
    /// page shows a new generation and the error state with `last_error = ABORTED`. The guest
    /// goes on as after any lost context: it resets the device (its rings are its own, so vgpud
    /// does not re-initialise them under it). Returns the new generation.
    ///
    /// Work already on the device is stopped where the backend can stop it; where it cannot,
    /// the reset is refused (resetting around it would hide that device time from the
    /// scheduler, as [`Executor::reset_ready`] explains for guest resets).
    pub(super) fn host_reset(&mut self, vm: usize) -> Result<u32, HostResetError> {
        let Some(slot) = self.slots[vm].as_ref() else {
            return Err(HostResetError::NotAttached);
        };
        if slot.starting {
            return Err(HostResetError::Starting);
        }
        if self.inflight.iter().any(|f| f.vm == vm) {
            if !self.backend.kill_context(vm) {
                return Err(HostResetError::CannotStopWork);
            }
        } else {
            self.backend.destroy_context(vm);
        }
        let aborted = self.end_stopped_work(vm, Status::Aborted);
        self.gate.forget_vm(vm);
        self.stats[vm].mem_used.store(0, Relaxed);
        let slot = self.slots[vm].as_mut().expect("checked above");
        let generation = slot.ch.reset_by_host();
        warn!(vm = %self.cfg.vms[vm].name, aborted, generation,
              "device reset by the operator; the guest must reset to go on");
        self.new_context(vm);
        if let Some(slot) = self.slots[vm].as_mut() {
            // Queued commands and any sent before the guest resets fail with CONTEXT_LOST:
            // the handles they name died with the old context.
            slot.dev.set_broken();
        }
        Ok(generation)
    }

    /// Ends VM `vm`'s commands pending on the device after its work there was stopped (its
    /// context killed): each is charged the device time up to now (it held the device that
    /// long) and completes with `status`. Returns how many there were.
    pub(super) fn end_stopped_work(&mut self, vm: usize, status: Status) -> usize {
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
        if let Some(slot) = self.slots[vm].as_mut() {
            for &(tag, ..) in &mine {
                slot.ch.complete(tag, Err(status));
            }
        }
        mine.len()
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
            Some(Ok(())) => {
                let addr = self.backend.staging_device_address(vm);
                slot.ch.set_staging_device_address(addr.unwrap_or(0));
                let size = slot.ch.layout().staging_size;
                slot.dev.set_mapped_staging(addr.map(|a| (a, size)));
            }
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
    pub(super) fn resets_waiting(&self) -> bool {
        self.backend.destroy_stops_work()
            && self.slots.iter().enumerate().any(|(vm, s)| {
                s.as_ref().is_some_and(|s| s.ch.reset_requested()) && !self.reset_ready(vm)
            })
    }

    /// Whether any VM's context is still being created.
    pub(super) fn check_all_started(&mut self) -> bool {
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
    pub(super) fn reset_ready(&self, vm: usize) -> bool {
        Self::reset_ready_of(self.slots[vm].as_ref(), &self.backend, &self.inflight, vm)
    }

    pub(super) fn reset_ready_of(
        slot: Option<&Slot>,
        backend: &B,
        inflight: &[InFlight],
        vm: usize,
    ) -> bool {
        let Some(slot) = slot else { return false };
        if backend.destroy_stops_work() {
            !slot.starting && slot.last_reset.elapsed() >= RESET_MIN_INTERVAL
        } else {
            !inflight.iter().any(|f| f.vm == vm)
        }
    }
}
