//! One channel per connected VM: reads its submission ring, validates each entry (copied out of
//! shared memory exactly once), hands valid commands to the queue, answers invalid ones with an
//! error completion, writes completions, and fences a VM that breaks the ring protocol.

use crate::backend::{DeviceInfo, Staging};
use crate::config::VmConfig;
use crate::queue::Job;
use crate::stats::VmStats;
use crate::transport::notify::NotifyError;
use crate::transport::SharedRegion;
use rustix::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};
use vgpu_abi::cmd::{Command, Cqe};
use vgpu_abi::regs::{self, put_str, RegisterPage};
use vgpu_abi::ring::{reset_rings, CqProducer, FenceReason, SqConsumer};
use vgpu_abi::{abi_version, DeviceStatus, Layout, ShmView, Status, MAGIC};

/// Static facts the register page publishes.
#[derive(Debug, Clone)]
pub struct ChannelParams {
    /// The device behind the vGPU.
    pub device: DeviceInfo,
    /// `CAP_*` bits.
    pub capabilities: u64,
    /// Longest busy kernel.
    pub max_kernel_us: u32,
}

/// A connected VM's channel.
pub struct Channel {
    vm: usize,
    name: String,
    region: Arc<SharedRegion>,
    view: ShmView,
    layout: Layout,
    sq: SqConsumer,
    cq: CqProducer,
    doorbell: OwnedFd,
    irq: OwnedFd,
    regs: RegisterPage,
    /// Commands taken from the SQ whose completion is not yet written (CQ slots reserved).
    outstanding: u32,
    /// Last reset-request counter acted on.
    reset_seen: u32,
    fenced: bool,
    irq_due: bool,
    /// The interrupt eventfd could not be written without blocking: never signal it again.
    irq_broken: bool,
    stats: Arc<VmStats>,
}

impl Channel {
    /// Initialises the VM's BAR2 (register page, empty rings) and wraps it.
    pub fn new(
        vm: usize,
        cfg: &VmConfig,
        region: Arc<SharedRegion>,
        doorbell: OwnedFd,
        irq: OwnedFd,
        params: &ChannelParams,
        stats: Arc<VmStats>,
    ) -> Result<Self, vgpu_abi::LayoutError> {
        let layout = cfg.layout()?;
        let view = region.view();
        let mut r = RegisterPage {
            magic: MAGIC,
            abi_version: abi_version(),
            device_status: DeviceStatus::Ready as u32,
            vm_id: cfg.vm_id,
            pool_id: cfg.pool_id,
            priority: cfg.priority,
            capabilities: params.capabilities,
            mem_quota: cfg.mem_quota.0,
            max_kernel_us: params.max_kernel_us,
            host_peer_id: vgpu_abi::ivshmem::MEDIATOR_PEER_ID as u32,
            doorbell_vector: 0,
            generation: 1,
            backend: params.device.kind,
            device_total_mem: params.device.total_mem,
            vm_name: put_str(&cfg.name),
            device_name: put_str(&params.device.name),
            ..RegisterPage::default()
        };
        layout.fill(&mut r);
        reset_rings(&view, &layout);
        view.write_obj(0, &r);
        stats.status.store(DeviceStatus::Ready as u32, Relaxed);
        stats.last_error.store(0, Relaxed);
        Ok(Self {
            vm,
            name: cfg.name.clone(),
            region,
            view,
            sq: SqConsumer::new(view, layout),
            cq: CqProducer::new(view, layout),
            layout,
            doorbell,
            irq,
            regs: r,
            outstanding: 0,
            reset_seen: view.load_u32(regs::REG_RESET_REQUEST),
            fenced: false,
            irq_due: false,
            irq_broken: false,
            stats,
        })
    }

    /// VM index.
    pub fn vm(&self) -> usize {
        self.vm
    }

    /// VM name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The staging area, for the backend.
    pub fn staging(&self) -> Staging {
        Staging {
            view: self.view,
            offset: self.layout.staging_offset,
            size: self.layout.staging_size,
        }
    }

    /// The region (kept alive while the backend may DMA from it).
    pub fn region(&self) -> &Arc<SharedRegion> {
        &self.region
    }

    /// The doorbell eventfd, for an edge-triggered epoll: vgpud never reads it. The client
    /// holds the same open file and could make a read block (clear `O_NONBLOCK`, drain the
    /// counter first); an edge-triggered wait needs no read, and the ring is the truth anyway.
    pub fn doorbell_fd(&self) -> BorrowedFd<'_> {
        use rustix::fd::AsFd;
        self.doorbell.as_fd()
    }

    /// Whether the VM is fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    fn set_status(&mut self, s: DeviceStatus, err: u32) {
        self.regs.device_status = s as u32;
        self.regs.last_error = err;
        self.view.store_u32(regs::off::LAST_ERROR, err);
        self.view.store_u32(regs::off::DEVICE_STATUS, s as u32);
        self.stats.status.store(s as u32, Relaxed);
        self.stats.last_error.store(err, Relaxed);
    }

    /// Fences the VM: its rings are no longer read until it resets or reconnects.
    pub fn fence(&mut self, reason: FenceReason) {
        if self.fenced {
            return;
        }
        if let Some(times) = self.stats.log_hit(|l| &mut l.fence) {
            warn!(vm = %self.name, times, "fencing VM: {reason}");
        }
        self.fenced = true;
        self.sq.set_polling(false);
        self.set_status(DeviceStatus::Fenced, reason as u32);
        VmStats::bump(&self.stats.fences, 1);
    }

    /// Publishes a reloaded pool id, priority and memory quota in the register page (the host
    /// copy follows too, so a reset keeps them).
    pub fn set_identity(&mut self, pool_id: u32, priority: u32, mem_quota: u64) {
        self.regs.pool_id = pool_id;
        self.regs.priority = priority;
        self.regs.mem_quota = mem_quota;
        self.view.store_u32(regs::off::POOL_ID, pool_id);
        self.view.store_u32(regs::off::PRIORITY, priority);
        self.view
            .store_u64(std::mem::offset_of!(RegisterPage, mem_quota), mem_quota);
    }

    /// vgpud is shutting down: tells the guest that nothing will answer again, and wakes it
    /// if it sleeps on its interrupt.
    pub fn stop(&mut self) {
        self.sq.set_polling(false);
        self.set_status(DeviceStatus::Stopped, 0);
        self.fenced = true;
        vgpu_abi::shm::full_fence();
        if !self.irq_broken && self.cq.irq_wanted() {
            let _ = crate::transport::notify::signal_eventfd(&self.irq);
        }
    }

    /// Marks the device context broken (a kernel faulted).
    pub fn set_broken(&mut self) {
        self.set_error(Status::KernelFault);
    }

    /// Puts the device in the error state with `why` in its last-error register.
    pub fn set_error(&mut self, why: Status) {
        self.set_status(DeviceStatus::Error, why as u32);
    }

    /// Marks the device as one without a context (the backend could not create it).
    pub fn set_unavailable(&mut self) {
        self.set_error(Status::ContextUnavailable);
    }

    /// Whether the guest asked for a reset since the last one acted on.
    pub fn reset_requested(&self) -> bool {
        self.view.load_u32(regs::REG_RESET_REQUEST) != self.reset_seen
    }

    /// Re-initialises the rings and status after a reset (the caller reset the context).
    pub fn finish_reset(&mut self) {
        self.reset_seen = self.view.load_u32(regs::REG_RESET_REQUEST);
        reset_rings(&self.view, &self.layout);
        self.sq = SqConsumer::new(self.view, self.layout);
        self.cq = CqProducer::new(self.view, self.layout);
        self.outstanding = 0;
        self.fenced = false;
        self.irq_due = false;
        // Rewrite the whole host half: a hostile guest may have scribbled over it.
        self.regs.generation = self.regs.generation.wrapping_add(1);
        self.regs.device_status = DeviceStatus::Reset as u32;
        self.regs.last_error = 0;
        self.view.write_obj(0, &self.regs);
        self.set_status(DeviceStatus::Ready, 0);
        VmStats::bump(&self.stats.resets, 1);
        if let Some(times) = self.stats.log_hit(|l| &mut l.reset) {
            info!(vm = %self.name, generation = self.regs.generation, times, "device reset");
        }
    }

    /// Entries waiting in the SQ (0 when fenced; fences on a broken index).
    pub fn pending(&mut self) -> u32 {
        if self.fenced {
            return 0;
        }
        match self.sq.available() {
            Ok(n) => n,
            Err(r) => {
                self.fence(r);
                0
            }
        }
    }

    /// Entries [`Channel::poll`] could take now: those waiting in the SQ for which the CQ has
    /// room once everything already taken completes.
    pub fn takeable(&mut self) -> u32 {
        let avail = self.pending();
        if avail == 0 {
            return 0;
        }
        match self.cq.free() {
            Ok(free) => avail.min(free.saturating_sub(self.outstanding)),
            Err(r) => {
                self.fence(r);
                0
            }
        }
    }

    /// Whether entries wait in the SQ that cannot be taken because the guest has not consumed
    /// its completions. No interrupt or doorbell need come when it does, so the executor
    /// looks again after a short sleep rather than spinning on it.
    pub fn cq_blocked(&mut self) -> bool {
        self.pending() > 0 && self.takeable() == 0
    }

    /// Takes up to `budget` entries: valid ones go to `sink`, invalid ones complete with an error
    /// right away. Returns how many entries were taken.
    pub fn poll(&mut self, budget: u32, sink: &mut dyn FnMut(Job)) -> u32 {
        let avail = self.pending();
        if avail == 0 {
            return 0;
        }
        let cq_free = match self.cq.free() {
            Ok(n) => n,
            Err(r) => {
                self.fence(r);
                return 0;
            }
        };
        // Never take more than the CQ can hold once every taken command completes.
        let room = cq_free.saturating_sub(self.outstanding);
        let n = avail.min(room).min(budget);
        let staging = self.layout.staging_size;
        for _ in 0..n {
            let sqe = self.sq.pop();
            self.outstanding += 1;
            match Command::decode(&sqe, staging) {
                Ok(cmd) => {
                    VmStats::bump(&self.stats.queued, 1);
                    sink(Job {
                        vm: self.vm,
                        tag: sqe.tag,
                        stream: sqe.stream,
                        cmd,
                        enqueued: Instant::now(),
                    })
                }
                Err(status) => self.complete(sqe.tag, Err(status)),
            }
        }
        n
    }

    /// Writes a completion for a command taken earlier.
    pub fn complete(&mut self, tag: u64, outcome: Result<(u64, u64), Status>) {
        if self.fenced || self.outstanding == 0 {
            return;
        }
        self.outstanding -= 1;
        let (status, r0, r1) = match outcome {
            Ok((a, b)) => (Status::Ok, a, b),
            Err(s) => (s, 0, 0),
        };
        if status != Status::Ok {
            VmStats::bump(&self.stats.errors, 1);
            self.regs.last_error = status as u32;
            self.view.store_u32(regs::off::LAST_ERROR, status as u32);
            self.stats.last_error.store(status as u32, Relaxed);
        }
        VmStats::bump(&self.stats.commands, 1);
        self.cq.push(&Cqe {
            tag,
            status: status as u32,
            flags: 0,
            result0: r0,
            result1: r1,
        });
        self.irq_due = true;
    }

    /// Signals the VM's interrupt vector once for all completions posted since the last call,
    /// if the guest asked for interrupts.
    pub fn flush_irq(&mut self) {
        if !std::mem::take(&mut self.irq_due) {
            return;
        }
        // The completions' tail store must be visible before the flag is read: a guest that sets
        // the flag and then re-checks the tail either sees the completion or gets the interrupt.
        vgpu_abi::shm::full_fence();
        if self.irq_broken || !self.cq.irq_wanted() {
            return;
        }
        match crate::transport::notify::signal_eventfd(&self.irq) {
            Ok(()) => {}
            Err(NotifyError::Blocked) => {
                self.irq_broken = true;
                self.fence(FenceReason::IrqBlocked);
            }
            Err(e) => {
                self.irq_broken = true;
                warn!(vm = %self.name, "interrupts disabled: {e}");
            }
        }
    }

    /// Publishes whether vgpud is polling this VM's SQ.
    pub fn set_polling(&self, on: bool) {
        if !self.fenced {
            self.sq.set_polling(on);
        }
    }
}
