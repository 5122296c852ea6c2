//! The kernel time limit: a VM whose work on the device makes no progress for longer than its
//! pool's `max_kernel_ms` is stopped.

use super::Executor;
use crate::backend::Backend;
use crate::queue::WorkQueue;
use crate::stats::VmStats;
use std::time::{Duration, Instant};
use tracing::warn;
use vgpu_abi::Status;

/// How often, at most, the executor compares pending work with the kernel time limits.
const LIMIT_CHECK_EVERY: Duration = Duration::from_millis(1);

impl<B: Backend + ?Sized, Q: WorkQueue> Executor<B, Q> {
    /// Enforces the kernel time limit: a VM whose work on the device has made no progress for
    /// longer than its pool's `max_kernel_ms` is stopped (its context killed and recreated,
    /// its pending commands completed with `KERNEL_TIMEOUT`, the device in the error state
    /// until the guest resets). Returns how many VMs were stopped.
    pub(super) fn enforce_time_limits(&mut self) -> usize {
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
    pub(super) fn time_limit_deadlines(&self) -> impl Iterator<Item = (usize, Instant)> + '_ {
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
        self.end_stopped_work(vm, Status::KernelTimeout);
        self.drop_work(vm);
        if let Some(slot) = self.slots[vm].as_mut() {
            slot.ch.set_error(Status::KernelTimeout);
        }
        self.new_context(vm);
        if let Some(slot) = self.slots[vm].as_mut() {
            slot.dev.set_broken();
        }
    }
}
