//! One executor driven in-process: the cpu backend, a memfd region and eventfds handed over as
//! the transport would, and a guest made of the ABI's ring producer and consumer.

use super::{ExecEvent, Executor};
use crate::backend::cpu::CpuBackend;
use crate::config::Config;
use crate::sched::{DeviceDefaults, Scheduler};
use crate::stats::{StatsRegistry, VmStats};
use crate::transport::{Event, Setup, SharedRegion};
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::{Command, Cqe, Sqe};
use vgpu_abi::layout::{ring_hdr, SQ_FLAG_HOST_POLLING};
use vgpu_abi::regs::{off, CAP_RESET, REG_RESET_REQUEST};
use vgpu_abi::ring::{CqConsumer, FenceReason, SqProducer};
use vgpu_abi::{DeviceStatus, Layout, RegisterPage, ShmView, Status, MAGIC};

/// How long anything the executor should do may take (generous: the host is shared).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Two VMs of one pool with a 1 MiB quota; `a` has a quota of its own of 512 KiB, `b` the
/// pool's whole 1 MiB. `poll_us = 0`: the
/// executor sleeps as soon as it is idle, so doorbells and timers are what wake it.
const CONFIG: &str = r#"
[mediator]
backend = "cpu"
poll_us = 0
[[pool]]
id = 0
name = "p"
mem_quota = 1048576
[[vm]]
name = "a"
socket = "/nonexistent/a.sock"
vm_id = 1
mem_quota = 524288
shm_size = 131072
sq_entries = 4
cq_entries = 4
[[vm]]
name = "b"
socket = "/nonexistent/b.sock"
vm_id = 2
mem_quota = 1048576
shm_size = 131072
sq_entries = 4
cq_entries = 4
"#;

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn new_eventfd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
}

/// An executor thread and what the router would hold of it.
struct Rig {
    cfg: Arc<Config>,
    registry: Arc<StatsRegistry>,
    events: Sender<ExecEvent>,
    control: Arc<OwnedFd>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Rig {
    fn start() -> Self {
        let cfg = Arc::new(Config::from_toml(CONFIG).expect("test config"));
        let registry = Arc::new(StatsRegistry::for_config(&cfg));
        let (tx, rx) = mpsc::channel();
        let control = Arc::new(new_eventfd());
        let shutdown = Arc::new(AtomicBool::new(false));
        let exec = Executor::new(
            Box::new(CpuBackend::new(64 << 20)),
            Scheduler::new(&cfg, DeviceDefaults::of(&cfg, "cpu")),
            cfg.clone(),
            registry.clone(),
            rx,
            control.clone(),
            shutdown.clone(),
            0,
        )
        .expect("executor");
        let thread = std::thread::spawn(move || exec.run());
        Self {
            cfg,
            registry,
            events: tx,
            control,
            shutdown,
            thread: Some(thread),
        }
    }

    fn send(&self, ev: ExecEvent) {
        self.events.send(ev).expect("executor gone");
        rustix::io::write(&*self.control, &1u64.to_le_bytes()).expect("control eventfd");
    }

    /// Connects VM `vm` as the transport does, and waits until its device is initialised.
    fn attach(&self, vm: usize) -> Guest {
        let c = &self.cfg.vms[vm];
        let region = Arc::new(SharedRegion::create(&c.name, c.shm_size.0).expect("memfd"));
        let (doorbell, irq) = (new_eventfd(), new_eventfd());
        let guest_doorbell = doorbell.try_clone().expect("dup");
        let (ready, ready_rx) = mpsc::sync_channel(1);
        self.send(ExecEvent::Transport(Event::Connected(Setup {
            vm,
            region: region.clone(),
            doorbell,
            irq,
            ready,
        })));
        ready_rx.recv_timeout(TIMEOUT).expect("attach acknowledged");
        Guest::new(region, c.layout().expect("layout"), guest_doorbell)
    }

    fn detach(&self, vm: usize) {
        self.send(ExecEvent::Transport(Event::Disconnected(vm)));
    }

    fn stats(&self, vm: usize) -> &VmStats {
        &self.registry.vms[vm].1
    }

    fn pool_used(&self) -> u64 {
        self.registry.pools[0].quota.used()
    }

    /// Shuts the executor down and waits for its thread.
    fn stop(&mut self) {
        self.shutdown.store(true, Relaxed);
        let _ = rustix::io::write(&*self.control, &1u64.to_le_bytes());
        if let Some(t) = self.thread.take() {
            t.join().expect("executor thread panicked");
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The guest's side of one VM's BAR2.
struct Guest {
    /// Keeps the mapping alive (the executor holds another reference).
    _region: Arc<SharedRegion>,
    view: ShmView,
    layout: Layout,
    sq: SqProducer,
    cq: CqConsumer,
    doorbell: OwnedFd,
    next_tag: u64,
}

impl Guest {
    fn new(region: Arc<SharedRegion>, layout: Layout, doorbell: OwnedFd) -> Self {
        let view = region.view();
        Self {
            _region: region,
            view,
            layout,
            sq: SqProducer::new(view, layout),
            cq: CqConsumer::new(view, layout),
            doorbell,
            next_tag: 1,
        }
    }

    fn regs(&self) -> RegisterPage {
        self.view.read_obj(0)
    }

    fn status(&self) -> u32 {
        self.view.load_u32(off::DEVICE_STATUS)
    }

    fn ring(&self) {
        rustix::io::write(&self.doorbell, &1u64.to_le_bytes()).expect("doorbell");
    }

    fn sq_head(&self) -> u32 {
        self.view
            .load_u32(self.layout.sq_offset as usize + ring_hdr::HEAD)
    }

    fn cq_tail(&self) -> u32 {
        self.view
            .load_u32(self.layout.cq_offset as usize + ring_hdr::TAIL)
    }

    /// Writes an entry and publishes it, ringing the doorbell when the host is not polling.
    fn submit_sqe(&mut self, sqe: &Sqe) {
        self.sq.push(sqe);
        if self.sq.publish() {
            self.ring();
        }
    }

    fn submit(&mut self, cmd: Command) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.submit_sqe(&cmd.encode(0, tag));
        tag
    }

    fn wait_cqe(&mut self) -> Cqe {
        let mut got = None;
        eventually("a completion", || {
            got = self.cq.pop();
            got.is_some()
        });
        got.expect("popped")
    }

    /// Submits `cmd` and waits for its completion.
    fn call(&mut self, cmd: Command) -> Result<(u64, u64), Status> {
        let tag = self.submit(cmd);
        let cqe = self.wait_cqe();
        assert_eq!(cqe.tag, tag, "completion of another command");
        match Status::from_raw(cqe.status).expect("a known status") {
            Status::Ok => Ok((cqe.result0, cqe.result1)),
            s => Err(s),
        }
    }

    fn alloc(&mut self, size: u64) -> Result<u64, Status> {
        self.call(Command::MemAlloc { size }).map(|(p, _)| p)
    }

    fn staging(&self, off: u64) -> usize {
        (self.layout.staging_offset + off) as usize
    }

    /// Asks for a reset and waits until the device is ready again, as the guest library does;
    /// the rings start over from zero.
    fn reset(&mut self) {
        let gen = self.regs().generation;
        let req = self.view.load_u32(REG_RESET_REQUEST);
        self.view.store_u32(REG_RESET_REQUEST, req.wrapping_add(1));
        vgpu_abi::shm::full_fence();
        self.ring();
        eventually("the reset", || {
            self.regs().generation != gen && self.status() == DeviceStatus::Ready as u32
        });
        self.sq = SqProducer::new(self.view, self.layout);
        self.cq = CqConsumer::new(self.view, self.layout);
    }
}

#[test]
fn attach_publishes_the_device_and_runs_commands() {
    let rig = Rig::start();
    let mut g = rig.attach(0);
    let r = g.regs();
    assert_eq!(r.magic, MAGIC);
    assert_eq!(r.device_status, DeviceStatus::Ready as u32);
    assert_eq!((r.vm_id, r.mem_quota, r.generation), (1, 524288, 1));
    assert_ne!(r.capabilities & CAP_RESET, 0);
    assert_eq!(Layout::from_regs(&r, g.layout.shm_size), Ok(g.layout));
    let st = rig.stats(0);
    assert!(st.connected.load(Relaxed));
    assert_eq!(st.device.load(Relaxed), 0);
    assert_eq!(st.connects.load(Relaxed), 1);

    assert_eq!(g.call(Command::Nop), Ok((0, 0)));
    let p = g.alloc(4096).expect("alloc");
    assert_eq!(rig.pool_used(), 4096, "charged to the pool");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    g.view.write_bytes(g.staging(0), &data);
    let h2d = Command::CopyH2D {
        dst: p,
        staging_offset: 0,
        len: 4096,
    };
    assert!(g.call(h2d).is_ok());
    let d2h = Command::CopyD2H {
        src: p,
        staging_offset: 8192,
        len: 4096,
    };
    assert!(g.call(d2h).is_ok());
    let mut back = vec![0u8; 4096];
    g.view.read_bytes(g.staging(8192), &mut back);
    assert_eq!(
        back, data,
        "the bytes made the round trip through the device"
    );
    assert_eq!(g.call(Command::GetInfo), Ok((4096, 524288)));

    // An entry that does not decode completes with an error and sets last_error.
    let bad = Sqe {
        opcode: 0xffff,
        tag: 99,
        ..Sqe::default()
    };
    g.submit_sqe(&bad);
    let cqe = g.wait_cqe();
    assert_eq!((cqe.tag, cqe.status), (99, Status::UnknownOpcode as u32));
    assert_eq!(g.regs().last_error, Status::UnknownOpcode as u32);

    assert!(g.call(Command::MemFree { ptr: p }).is_ok());
    assert_eq!(rig.pool_used(), 0);
    assert_eq!(st.commands.load(Relaxed), 7);
    assert_eq!(st.errors.load(Relaxed), 1);
    assert_eq!(st.bytes_in.load(Relaxed), 4096);
    assert_eq!(st.bytes_out.load(Relaxed), 4096);
    assert_eq!(st.mem_used.load(Relaxed), 0);
    assert_eq!(st.queued.load(Relaxed), 0);
    assert_eq!(st.inflight.load(Relaxed), 0);
    // The six that ran (not the one that did not decode) waited and completed once each.
    assert_eq!(st.completion_latency.snapshot().count, 6);
    assert_eq!(st.queue_wait.snapshot().count, 6);
}

#[test]
fn quotas_hold_per_vm_and_per_pool() {
    let rig = Rig::start();
    let mut a = rig.attach(0);
    let mut b = rig.attach(1);
    assert_eq!(
        a.alloc(600 << 10),
        Err(Status::QuotaExceeded),
        "a's own quota"
    );
    let pb = b.alloc(768 << 10).expect("within b's quota");
    assert_eq!(a.alloc(300 << 10), Err(Status::QuotaExceeded), "the pool's");
    assert!(b.call(Command::MemFree { ptr: pb }).is_ok());
    assert!(a.alloc(300 << 10).is_ok());
    assert_eq!(rig.pool_used(), 300 << 10);
    assert_eq!(rig.stats(0).mem_used.load(Relaxed), 300 << 10);
}

#[test]
fn a_doorbell_wakes_the_sleeping_executor() {
    let rig = Rig::start();
    let mut g = rig.attach(0);
    let flags = g.layout.sq_offset as usize + ring_hdr::FLAGS;
    eventually("the executor to stop polling", || {
        g.view.load_u32(flags) & SQ_FLAG_HOST_POLLING == 0
    });
    // Well past the re-check before its sleep: only the doorbell can wake it now.
    std::thread::sleep(Duration::from_millis(20));
    g.sq.push(&Command::Nop.encode(0, 5));
    assert!(
        g.sq.publish(),
        "the guest must ring: the host said it is not polling"
    );
    g.ring();
    assert_eq!(g.wait_cqe().tag, 5);
}

#[test]
fn a_full_cq_holds_entries_in_the_ring_until_the_guest_consumes() {
    let rig = Rig::start();
    let mut g = rig.attach(0);
    let tags: Vec<u64> = (0..4).map(|_| g.submit(Command::Nop)).collect();
    eventually("four completions", || g.cq_tail() == 4);
    let more: Vec<u64> = (0..4).map(|_| g.submit(Command::Nop)).collect();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(g.sq_head(), 4, "taken with no room in the CQ");
    assert_eq!(g.cq_tail(), 4);
    assert_eq!(g.status(), DeviceStatus::Ready as u32);
    // Consuming rings nothing: the executor looks again by itself.
    for t in tags {
        assert_eq!(g.wait_cqe().tag, t);
    }
    for t in more {
        assert_eq!(g.wait_cqe().tag, t, "in submission order");
    }
}

#[test]
fn a_reset_gives_the_vm_a_fresh_device() {
    let rig = Rig::start();
    let mut g = rig.attach(0);
    let p = g.alloc(4096).expect("alloc");
    g.reset();
    assert_eq!(g.regs().generation, 2);
    assert_eq!(g.sq_head(), 0);
    assert_eq!(g.cq_tail(), 0);
    let st = rig.stats(0);
    assert_eq!(st.resets.load(Relaxed), 1);
    assert_eq!(st.mem_used.load(Relaxed), 0);
    assert_eq!(g.call(Command::GetInfo), Ok((0, 524288)));
    // Checked after a command: the old device is dropped just after the guest sees Ready.
    assert_eq!(rig.pool_used(), 0, "the old device gave its memory back");
    assert_eq!(
        g.call(Command::MemFree { ptr: p }),
        Err(Status::InvalidAddress),
        "the old allocation is gone"
    );
}

#[test]
fn a_fenced_vm_is_not_read_and_the_others_go_on() {
    let rig = Rig::start();
    let mut a = rig.attach(0);
    let mut b = rig.attach(1);
    // An SQ tail more than sq_entries ahead of the host's head breaks the ring protocol.
    a.view
        .store_u32(a.layout.sq_offset as usize + ring_hdr::TAIL, 5);
    a.ring();
    eventually("the fence", || a.status() == DeviceStatus::Fenced as u32);
    assert_eq!(a.regs().last_error, FenceReason::SqIndexOutOfRange as u32);
    assert_eq!(rig.stats(0).fences.load(Relaxed), 1);
    assert_eq!(
        b.call(Command::Nop),
        Ok((0, 0)),
        "another VM is not affected"
    );
    a.reset();
    assert_eq!(a.call(Command::Nop), Ok((0, 0)), "a reset lifts the fence");
}

#[test]
fn detach_frees_the_vm_and_a_new_connection_starts_clean() {
    let rig = Rig::start();
    let mut g = rig.attach(0);
    g.alloc(4096).expect("alloc");
    rig.detach(0);
    let st = rig.stats(0);
    eventually("the detach", || !st.connected.load(Relaxed));
    assert_eq!(st.device.load(Relaxed), -1);
    assert_eq!(st.mem_used.load(Relaxed), 0);
    let mut g = rig.attach(0);
    // After the next attach: the old device is dropped just after `connected` is cleared.
    assert_eq!(rig.pool_used(), 0);
    assert_eq!(g.regs().generation, 1);
    assert_eq!(g.call(Command::GetInfo), Ok((0, 524288)));
    assert_eq!(st.connects.load(Relaxed), 2);
}

#[test]
fn a_reload_reaches_the_guest() {
    let rig = Rig::start();
    let mut g = rig.attach(0);
    let text = CONFIG.replacen("mem_quota = 524288", "mem_quota = 262144\npriority = 3", 1);
    let new = Arc::new(Config::from_toml(&text).expect("reloaded config"));
    rig.send(ExecEvent::Reload(new));
    eventually("the new registers", || {
        let r = g.regs();
        r.priority == 3 && r.mem_quota == 262144
    });
    assert_eq!(g.call(Command::GetInfo), Ok((0, 262144)));
    assert_eq!(g.alloc(300 << 10), Err(Status::QuotaExceeded));
}

#[test]
fn shutdown_tells_every_guest_and_frees_every_vm() {
    let mut rig = Rig::start();
    let a = rig.attach(0);
    let b = rig.attach(1);
    rig.stop();
    for g in [&a, &b] {
        assert_eq!(g.status(), DeviceStatus::Stopped as u32);
    }
    assert!(!rig.stats(0).connected.load(Relaxed));
    assert!(!rig.stats(1).connected.load(Relaxed));
}
