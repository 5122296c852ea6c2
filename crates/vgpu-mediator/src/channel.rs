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
use vgpu_abi::info::INFO_OFFSET;
use vgpu_abi::regs::{self, put_str, RegisterPage};
use vgpu_abi::ring::{reset_rings, CqProducer, FenceReason, SqConsumer};
use vgpu_abi::{abi_version, DeviceInfoPage, DeviceStatus, Layout, ShmView, Status, MAGIC};

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
    /// The host copy of the device-info page.
    info: DeviceInfoPage,
    /// Commands taken from the SQ whose completion is not yet written (CQ slots reserved).
    outstanding: u32,
    /// Last reset-request counter acted on.
    reset_seen: u32,
    fenced: bool,
    irq_due: bool,
    /// The interrupt eventfd could not be written without blocking: never signal it again.
    irq_broken: bool,
    /// Completions posted with an error status of failed work (not `NOT_READY`, a query's
    /// answer): fences after one are skipped ([`crate::device::VirtualDevice::note_errors`]).
    errors_posted: u64,
    stats: Arc<VmStats>,
}

/// The VM's device-info page: the device's, with the VM's own UUID and its quota as the
/// device's memory.
fn vm_info(device: &DeviceInfoPage, vm_name: &str, mem_quota: u64) -> DeviceInfoPage {
    DeviceInfoPage {
        total_mem: mem_quota.min(device.total_mem),
        uuid: vgpu_abi::info::vgpu_uuid(&device.uuid, vm_name),
        ..*device
    }
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
            capabilities: params.capabilities | regs::CAP_DEVICE_INFO,
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
        let info = vm_info(&params.device.props, &cfg.name, cfg.mem_quota.0);
        view.write_obj(INFO_OFFSET, &info);
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
            info,
            outstanding: 0,
            reset_seen: view.load_u32(regs::REG_RESET_REQUEST),
            fenced: false,
            irq_due: false,
            irq_broken: false,
            errors_posted: 0,
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

    /// The VM's BAR2 geometry.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// How many completions with the error status of failed work it has posted.
    pub fn errors_posted(&self) -> u64 {
        self.errors_posted
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
        self.info.total_mem = mem_quota.min(self.regs.device_total_mem);
        self.view.store_u64(
            INFO_OFFSET + std::mem::offset_of!(DeviceInfoPage, total_mem),
            self.info.total_mem,
        );
    }

    /// Publishes where the VM's staging area is mapped into its device context (1.6; 0: not
    /// mapped), in the device-info page and the host copy.
    pub fn set_staging_device_address(&mut self, addr: u64) {
        self.info.staging_device_address = addr;
        self.view.store_u64(
            INFO_OFFSET + std::mem::offset_of!(DeviceInfoPage, staging_device_address),
            addr,
        );
    }

    /// Publishes the device memory the VM's allocations hold (1.6), in the register page and
    /// the host copy (so that a reset's rewrite of the host half keeps it).
    pub fn set_mem_used(&mut self, bytes: u64) {
        self.regs.mem_used = bytes;
        self.view.store_u64(regs::off::MEM_USED, bytes);
    }

    /// Publishes the VM's utilisation over the window that just ended (`permille` of
    /// `window_ms`) and its device time since it connected (1.6).
    pub fn set_busy(&mut self, permille: u32, window_ms: u32, device_ns: u64) {
        self.regs.busy_permille = permille;
        self.regs.busy_window_ms = window_ms;
        self.regs.device_ns = device_ns;
        self.view.store_u32(regs::off::BUSY_PERMILLE, permille);
        self.view.store_u32(regs::off::BUSY_WINDOW_MS, window_ms);
        self.view.store_u64(regs::off::DEVICE_NS, device_ns);
    }

    /// The utilisation last published, in thousandths of its window.
    pub fn busy_permille(&self) -> u32 {
        self.regs.busy_permille
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
        self.view.write_obj(INFO_OFFSET, &self.info);
        self.set_status(DeviceStatus::Ready, 0);
        VmStats::bump(&self.stats.resets, 1);
        if let Some(times) = self.stats.log_hit(|l| &mut l.reset) {
            info!(vm = %self.name, generation = self.regs.generation, times, "device reset");
        }
    }

    /// The host reset the VM's context (an operator's reset): a new generation, and the error
    /// state with `ABORTED` until the guest resets (which re-initialises the rings: they stay
    /// as they are here, the guest's producer state must not be pulled from under it). Returns
    /// the new generation.
    /// A fenced VM stays fenced (its fence reason stays in `last_error`): its rings are not
    /// read until it resets either way.
    pub fn reset_by_host(&mut self) -> u32 {
        self.regs.generation = self.regs.generation.wrapping_add(1);
        self.view
            .store_u32(regs::off::GENERATION, self.regs.generation);
        if !self.fenced {
            self.set_error(Status::Aborted);
        }
        self.regs.generation
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
        if status != Status::Ok && status != Status::NotReady {
            self.errors_posted += 1;
        }
        if status != Status::Ok {
            self.stats.count_error(status as u32);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::config::Config;
    use rustix::event::{eventfd, EventfdFlags};
    use vgpu_abi::cmd::Sqe;
    use vgpu_abi::layout::{ring_hdr, CQ_FLAG_IRQ, SQ_FLAG_HOST_POLLING};
    use vgpu_abi::regs::{get_str, CAP_RESET};
    use vgpu_abi::ring::{CqConsumer, SqProducer};

    const CONFIG: &str = r#"
        [mediator]
        backend = "cpu"
        [[vm]]
        name = "chan"
        socket = "/nonexistent/chan.sock"
        vm_id = 3
        pool_id = 5
        priority = 2
        mem_quota = 4096
        shm_size = 131072
        sq_entries = 4
        cq_entries = 4
    "#;

    /// A channel over a fresh memfd region, and the guest's side of its rings.
    struct H {
        view: ShmView,
        layout: Layout,
        ch: Channel,
        stats: Arc<VmStats>,
        /// Another descriptor of the interrupt eventfd, read to see whether it was signalled.
        irq: OwnedFd,
        sq: SqProducer,
        cq: CqConsumer,
    }

    impl H {
        fn new() -> Self {
            let irq = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
            Self::with_irq(irq)
        }

        fn with_irq(irq: OwnedFd) -> Self {
            let cfg = Config::from_toml(CONFIG).unwrap();
            let vm = &cfg.vms[0];
            let region = Arc::new(SharedRegion::create(&vm.name, vm.shm_size.0).unwrap());
            let doorbell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
            let irq_reader = irq.try_clone().unwrap();
            let params = ChannelParams {
                device: CpuBackend::new(1 << 30).info(),
                capabilities: CAP_RESET,
                max_kernel_us: 1000,
            };
            let stats = Arc::new(VmStats::default());
            let ch = Channel::new(0, vm, region, doorbell, irq, &params, stats.clone()).unwrap();
            let view = ch.region().view();
            let layout = vm.layout().unwrap();
            Self {
                view,
                layout,
                ch,
                stats,
                irq: irq_reader,
                sq: SqProducer::new(view, layout),
                cq: CqConsumer::new(view, layout),
            }
        }

        fn regs(&self) -> RegisterPage {
            self.view.read_obj(0)
        }

        fn push(&mut self, sqe: &Sqe) {
            self.sq.push(sqe);
            self.sq.publish();
        }

        fn push_nops(&mut self, tags: std::ops::Range<u64>) {
            for t in tags {
                self.push(&Command::Nop.encode(0, t));
            }
        }

        fn poll(&mut self, budget: u32) -> Vec<Job> {
            let mut jobs = Vec::new();
            let n = self.ch.poll(budget, &mut |j| jobs.push(j));
            assert!(n as usize >= jobs.len());
            jobs
        }

        fn cq_tags(&mut self) -> Vec<(u64, u32)> {
            std::iter::from_fn(|| self.cq.pop())
                .map(|c| (c.tag, c.status))
                .collect()
        }

        fn hdr(&self, ring: u64, field: usize) -> u32 {
            self.view.load_u32(ring as usize + field)
        }

        /// Whether the interrupt eventfd was signalled since the last look.
        fn took_irq(&self) -> bool {
            let mut b = [0u8; 8];
            rustix::io::read(&self.irq, &mut b).is_ok()
        }
    }

    #[test]
    fn new_publishes_the_register_page_and_empty_rings() {
        let h = H::new();
        let r = h.regs();
        assert_eq!(r.magic, MAGIC);
        assert_eq!(r.abi_version, abi_version());
        assert_eq!(r.device_status, DeviceStatus::Ready as u32);
        assert_eq!((r.vm_id, r.pool_id, r.priority), (3, 5, 2));
        assert_eq!((r.mem_quota, r.max_kernel_us), (4096, 1000));
        assert_eq!(
            (r.capabilities, r.generation),
            (CAP_RESET | regs::CAP_DEVICE_INFO, 1)
        );
        assert_eq!(r.device_total_mem, 1 << 30);
        assert_eq!(get_str(&r.vm_name), "chan");
        // The device-info page: the VM's quota as its memory, its own UUID.
        let info: DeviceInfoPage = h.view.read_obj(INFO_OFFSET);
        assert_eq!(info.total_mem, 4096);
        assert_eq!(info.attribute(75), Some(9), "compute capability major");
        assert_eq!(info.driver_version, 13000);
        let physical = vgpu_abi::info::vgpu_uuid(&[0; 16], "cpu reference device");
        assert_eq!(info.uuid, vgpu_abi::info::vgpu_uuid(&physical, "chan"));
        assert!(get_str(&r.device_name).starts_with("vgpu cpu reference device"));
        assert_eq!(Layout::from_regs(&r, h.layout.shm_size), Ok(h.layout));
        for ring in [h.layout.sq_offset, h.layout.cq_offset] {
            assert_eq!(h.hdr(ring, ring_hdr::TAIL), 0);
            assert_eq!(h.hdr(ring, ring_hdr::HEAD), 0);
        }
        assert_eq!(h.stats.status.load(Relaxed), DeviceStatus::Ready as u32);
        assert_eq!((h.ch.vm(), h.ch.name()), (0, "chan"));
        let st = h.ch.staging();
        assert_eq!(
            (st.offset, st.size),
            (h.layout.staging_offset, h.layout.staging_size)
        );
    }

    #[test]
    fn usage_is_published_and_survives_a_guest_scribbling_before_a_reset() {
        let mut h = H::new();
        assert_eq!(
            h.regs().usage().map(|u| (u.mem_used, u.busy)),
            Some((0, None))
        );
        h.ch.set_mem_used(3 << 20);
        h.ch.set_busy(250, 500, 1_000_000);
        let u = h.regs().usage().expect("this vgpud speaks 1.6");
        assert_eq!(
            (u.mem_used, u.busy, u.device_ns),
            (3 << 20, Some((250, 500)), 1_000_000)
        );
        assert_eq!(h.ch.busy_permille(), 250);
        // A reset rewrites the host half from vgpud's copy, not from what the guest left there.
        h.view.store_u64(regs::off::MEM_USED, 7);
        h.ch.finish_reset();
        assert_eq!(h.regs().usage().map(|u| u.mem_used), Some(3 << 20));
    }

    #[test]
    fn poll_queues_valid_entries_and_answers_invalid_ones_at_once() {
        let mut h = H::new();
        h.push(&Command::Nop.encode(0, 1));
        h.push(&Sqe {
            opcode: 0xffff,
            tag: 2,
            ..Sqe::default()
        });
        h.push(&Command::MemAlloc { size: 64 }.encode(7, 3));
        assert_eq!(h.ch.pending(), 3);
        let jobs = h.poll(8);
        let got: Vec<(usize, u64, u32, Command)> = jobs
            .iter()
            .map(|j| (j.vm, j.tag, j.stream, j.cmd))
            .collect();
        assert_eq!(
            got,
            [
                (0, 1, 0, Command::Nop),
                (0, 3, 7, Command::MemAlloc { size: 64 })
            ]
        );
        assert_eq!(h.cq_tags(), [(2, Status::UnknownOpcode as u32)]);
        assert_eq!(h.regs().last_error, Status::UnknownOpcode as u32);
        assert_eq!(
            h.hdr(h.layout.sq_offset, ring_hdr::HEAD),
            3,
            "SQ head published"
        );
        assert_eq!(h.stats.queued.load(Relaxed), 2);
        assert_eq!(h.stats.errors.load(Relaxed), 1);
        assert_eq!(h.stats.commands.load(Relaxed), 1);
        // The queued ones complete later, with their results.
        h.ch.complete(3, Ok((0xabc, 64)));
        h.ch.complete(1, Err(Status::Internal));
        let cqes: Vec<Cqe> = std::iter::from_fn(|| h.cq.pop()).collect();
        assert_eq!(
            (
                cqes[0].tag,
                cqes[0].status,
                cqes[0].result0,
                cqes[0].result1
            ),
            (3, 0, 0xabc, 64)
        );
        assert_eq!((cqes[1].tag, cqes[1].status), (1, Status::Internal as u32));
        assert_eq!(h.stats.commands.load(Relaxed), 3);
        assert_eq!(h.ch.pending(), 0);
    }

    #[test]
    fn poll_keeps_to_its_budget_and_to_the_room_in_the_cq() {
        let mut h = H::new();
        h.push_nops(0..4);
        assert_eq!(h.poll(2).len(), 2, "budget");
        assert_eq!(h.ch.takeable(), 2);
        assert_eq!(h.poll(8).len(), 2);
        // Four taken, none completed: the CQ's four slots are all spoken for.
        h.push_nops(4..8);
        assert_eq!((h.ch.pending(), h.ch.takeable()), (4, 0));
        assert!(h.ch.cq_blocked());
        assert!(h.poll(8).is_empty());
        for t in 0..2 {
            h.ch.complete(t, Ok((0, 0)));
        }
        assert_eq!(
            h.ch.takeable(),
            0,
            "two completions the guest has not consumed"
        );
        assert_eq!(h.cq_tags().len(), 2);
        assert_eq!(h.ch.takeable(), 2);
        assert!(!h.ch.cq_blocked());
        let tags: Vec<u64> = h.poll(8).iter().map(|j| j.tag).collect();
        assert_eq!(tags, [4, 5]);
        assert!(!h.ch.is_fenced());
    }

    #[test]
    fn an_impossible_sq_tail_fences_the_vm() {
        let mut h = H::new();
        h.view
            .store_u32(h.layout.sq_offset as usize + ring_hdr::TAIL, 5);
        assert_eq!(h.ch.pending(), 0);
        assert!(h.ch.is_fenced());
        let r = h.regs();
        assert_eq!(r.device_status, DeviceStatus::Fenced as u32);
        assert_eq!(r.last_error, FenceReason::SqIndexOutOfRange as u32);
        assert_eq!(h.stats.fences.load(Relaxed), 1);
        // Fenced: nothing more is read, nothing is written, and the fence is counted once.
        h.view
            .store_u32(h.layout.sq_offset as usize + ring_hdr::TAIL, 1);
        assert!(h.poll(8).is_empty());
        h.ch.fence(FenceReason::CqIndexOutOfRange);
        assert_eq!(h.stats.fences.load(Relaxed), 1);
        assert_eq!(h.regs().last_error, FenceReason::SqIndexOutOfRange as u32);
    }

    #[test]
    fn an_impossible_cq_head_fences_the_vm() {
        let mut h = H::new();
        h.push_nops(0..1);
        h.view
            .store_u32(h.layout.cq_offset as usize + ring_hdr::HEAD, 3);
        assert!(h.poll(8).is_empty());
        assert!(h.ch.is_fenced());
        assert_eq!(h.regs().last_error, FenceReason::CqIndexOutOfRange as u32);
        assert_eq!(h.ch.takeable(), 0);
    }

    #[test]
    fn completions_interrupt_once_per_flush_and_only_when_asked() {
        let mut h = H::new();
        h.push_nops(0..3);
        assert_eq!(h.poll(8).len(), 3);
        h.ch.complete(0, Ok((0, 0)));
        h.ch.flush_irq();
        assert!(!h.took_irq(), "the guest did not ask for interrupts");
        h.cq.set_irq(true);
        h.ch.flush_irq();
        assert!(!h.took_irq(), "nothing posted since the last flush");
        h.ch.complete(1, Ok((0, 0)));
        h.ch.complete(2, Ok((0, 0)));
        h.ch.flush_irq();
        let mut b = [0u8; 8];
        rustix::io::read(&h.irq, &mut b).unwrap();
        assert_eq!(
            u64::from_le_bytes(b),
            1,
            "one interrupt for both completions"
        );
        assert_eq!(h.cq_tags().len(), 3);
    }

    #[test]
    fn an_interrupt_eventfd_made_to_block_fences_the_vm() {
        // What a hostile client can do to the file it shares: make it blocking and fill it.
        let irq = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&irq, &(u64::MAX - 1).to_le_bytes()).unwrap();
        let mut h = H::with_irq(irq);
        h.push_nops(0..1);
        assert_eq!(h.poll(8).len(), 1);
        h.cq.set_irq(true);
        h.ch.complete(0, Ok((0, 0)));
        h.ch.flush_irq();
        assert!(h.ch.is_fenced());
        assert_eq!(h.regs().last_error, FenceReason::IrqBlocked as u32);
    }

    #[test]
    fn reset_rewrites_the_host_half_and_empties_the_rings() {
        let mut h = H::new();
        h.push_nops(0..2);
        assert_eq!(h.poll(8).len(), 2);
        h.ch.fence(FenceReason::SqIndexOutOfRange);
        // A hostile guest scribbles over the host's half of the register page.
        h.view.write_bytes(0, &[0xee; 64]);
        assert!(!h.ch.reset_requested());
        let req = h.view.load_u32(regs::REG_RESET_REQUEST);
        h.view
            .store_u32(regs::REG_RESET_REQUEST, req.wrapping_add(1));
        assert!(h.ch.reset_requested());
        h.ch.finish_reset();
        assert!(!h.ch.reset_requested());
        assert!(!h.ch.is_fenced());
        let r = h.regs();
        assert_eq!((r.magic, r.vm_id, r.generation), (MAGIC, 3, 2));
        assert_eq!(
            (r.device_status, r.last_error),
            (DeviceStatus::Ready as u32, 0)
        );
        assert_eq!(Layout::from_regs(&r, h.layout.shm_size), Ok(h.layout));
        for ring in [h.layout.sq_offset, h.layout.cq_offset] {
            assert_eq!(h.hdr(ring, ring_hdr::TAIL), 0);
            assert_eq!(h.hdr(ring, ring_hdr::HEAD), 0);
        }
        assert_eq!(h.stats.resets.load(Relaxed), 1);
        // Commands taken before the reset are forgotten: completing one writes nothing.
        h.ch.complete(0, Ok((0, 0)));
        assert_eq!(h.hdr(h.layout.cq_offset, ring_hdr::TAIL), 0);
        // The rings work again from zero.
        h.sq = SqProducer::new(h.view, h.layout);
        h.cq = CqConsumer::new(h.view, h.layout);
        h.push_nops(10..11);
        assert_eq!(h.poll(8)[0].tag, 10);
    }

    #[test]
    fn identity_status_and_polling_registers() {
        let mut h = H::new();
        h.ch.set_identity(7, 1, 1 << 20);
        let r = h.regs();
        assert_eq!((r.pool_id, r.priority, r.mem_quota), (7, 1, 1 << 20));
        h.ch.set_broken();
        assert_eq!(h.regs().device_status, DeviceStatus::Error as u32);
        assert_eq!(h.regs().last_error, Status::KernelFault as u32);
        h.ch.set_unavailable();
        assert_eq!(h.regs().last_error, Status::ContextUnavailable as u32);
        assert_eq!(
            h.stats.last_error.load(Relaxed),
            Status::ContextUnavailable as u32
        );
        // A reset keeps the reloaded identity (the host copy is rewritten).
        let req = h.view.load_u32(regs::REG_RESET_REQUEST);
        h.view
            .store_u32(regs::REG_RESET_REQUEST, req.wrapping_add(1));
        h.ch.finish_reset();
        let r = h.regs();
        assert_eq!((r.pool_id, r.priority, r.mem_quota), (7, 1, 1 << 20));
        assert_eq!(r.device_status, DeviceStatus::Ready as u32);

        let flags = h.layout.sq_offset as usize + ring_hdr::FLAGS;
        h.ch.set_polling(true);
        assert_ne!(h.view.load_u32(flags) & SQ_FLAG_HOST_POLLING, 0);
        h.ch.set_polling(false);
        assert_eq!(h.view.load_u32(flags) & SQ_FLAG_HOST_POLLING, 0);

        // Stopping tells the guest, wakes it if it sleeps on its interrupt, and fences.
        h.ch.set_polling(true);
        h.view
            .fetch_or_u32(h.layout.cq_offset as usize + ring_hdr::FLAGS, CQ_FLAG_IRQ);
        h.ch.stop();
        assert_eq!(h.regs().device_status, DeviceStatus::Stopped as u32);
        assert_eq!(h.view.load_u32(flags) & SQ_FLAG_HOST_POLLING, 0);
        assert!(h.took_irq());
        assert!(h.ch.is_fenced());
        h.ch.set_polling(true);
        assert_eq!(
            h.view.load_u32(flags) & SQ_FLAG_HOST_POLLING,
            0,
            "not once stopped"
        );
    }
}
