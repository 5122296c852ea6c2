//! Running queued jobs on the backend and completing them: at once for work that finished as
//! it was issued, when it retired for work left on the device.

use super::{Executor, InFlight, Slot};
use crate::backend::{Backend, Issued};
use crate::queue::WorkQueue;
use crate::sched::is_control;
use crate::stats::VmStats;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tracing::warn;
use vgpu_abi::Status;

/// Jobs run per round before the channels are polled again.
const RUN_BUDGET: usize = 64;

impl<B: Backend + ?Sized, Q: WorkQueue> Executor<B, Q> {
    pub(super) fn run_jobs(&mut self) -> usize {
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
            st.queue_wait
                .observe(t0.saturating_duration_since(job.enqueued));
            slot.dev.note_errors(slot.ch.errors_posted());
            let out = slot.dev.execute(&mut *self.backend, job.stream, &job.cmd);
            let out = match out {
                Ok(Issued::Done(a, b)) => {
                    let ns = t0.elapsed().as_nanos() as u64;
                    st.device_ns.fetch_add(ns, Relaxed);
                    self.charge(job.vm, control, ns);
                    Ok((a, b))
                }
                Ok(Issued::Pending(token, a, b)) => {
                    self.gate.issued(job.vm, job.stream);
                    VmStats::bump(&st.inflight, 1);
                    self.inflight.push(InFlight {
                        vm: job.vm,
                        stream: job.stream,
                        tag: job.tag,
                        token,
                        results: (a, b),
                        control,
                        issued: Instant::now(),
                        enqueued: job.enqueued,
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
            st.completion_latency.observe(job.enqueued.elapsed());
        }
        ran
    }

    /// Tells the queue a job left the device after `ns` of device time, and counts it for the
    /// VM's pool.
    pub(super) fn charge(&mut self, vm: usize, control: bool, ns: u64) {
        self.queue.finished(vm, control, ns);
        if let Some(p) = self.registry.pools.get(self.cfg.vm_pool(vm)) {
            p.device_ns.fetch_add(ns, Relaxed);
            if let Some(d) = p.device_ns_by_device.get(self.device_index) {
                d.fetch_add(ns, Relaxed);
            }
        }
        if let Some(d) = self.registry.device_ns.get(self.device_index) {
            d.fetch_add(ns, Relaxed);
        }
    }

    /// Byte and memory accounting of a command that was issued without error.
    fn account(st: &VmStats, slot: &mut Slot, cmd: &vgpu_abi::cmd::Command) {
        use vgpu_abi::cmd::{Direction, Effect};
        match cmd.effect() {
            Effect::Transfer {
                len,
                dir: Direction::In,
            } => VmStats::bump(&st.bytes_in, len),
            Effect::Transfer {
                len,
                dir: Direction::Out,
            } => VmStats::bump(&st.bytes_out, len),
            Effect::Alloc { .. }
            | Effect::Free { .. }
            | Effect::CreateMemory { .. }
            | Effect::ReleaseMemory { .. }
            | Effect::Unmap { .. } => {
                // Before the completion is written: a guest that reads its register page
                // right after the allocation returned sees it counted.
                let used = slot.dev.used();
                st.mem_used.store(used, Relaxed);
                slot.ch.set_mem_used(used);
            }
            _ => {}
        }
    }

    /// Completes every pending command whose work retired. Returns how many.
    pub(super) fn retire(&mut self) -> usize {
        // On a device that keeps each stream in order, a stream's commands retire in issue
        // order: once one of them is still running, the later ones of that stream are not
        // asked (each poll may cost a driver call), so a pass costs one poll per busy stream.
        let in_order = self.gate.device_orders_streams;
        // A set: a VM may have a thousand streams busy at once.
        let mut blocked: HashSet<(usize, u32)> = HashSet::new();
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
                    blocked.insert(key);
                }
                keep.push(f);
                continue;
            };
            done += 1;
            self.gate.retired(f.vm, f.stream);
            self.stats[f.vm].inflight.fetch_sub(1, Relaxed);
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
            self.stats[f.vm]
                .completion_latency
                .observe(f.enqueued.elapsed());
        }
        self.inflight = keep;
        done
    }
}
