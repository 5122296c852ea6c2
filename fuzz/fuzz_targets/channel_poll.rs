//! The host's ring reader (`vgpu_mediator::channel::Channel`) against a hostile guest that may
//! write anything anywhere in the shared memory it sees, at any moment between two host steps.
//!
//! One channel is built once per process (lazily, in a thread-local), exactly as the executor's
//! `attach` does: a `SharedRegion` (memfd) of 128 KiB, two non-blocking eventfds, a `VmConfig`
//! from `Config::from_toml` with rings of 4 (SQ) and 8 (CQ) entries, `ChannelParams` and a
//! `VmStats`. Each input starts from the same state: the register page and both rings are
//! zeroed and the channel is reset (`finish_reset`), then polling is switched on.
//!
//! Input: a script of steps, each one opcode byte (taken modulo 13) and its arguments; a step
//! cut short by the end of the input is skipped. The guest "window" is the first
//! `cqe_offset(0) + 8 * 32` bytes of the region: the register page, both ring headers, the SQ
//! and the CQ slots (the staging area is not read by the channel).
//!
//! | op | step | arguments |
//! |----|------|-----------|
//! | 0  | guest writes bytes anywhere in the window | `off: u16le` (mod window), `len: u8`, `len` bytes |
//! | 1  | guest stores a u32 anywhere in the window | `off: u16le` (mod window, 4-aligned), `v: u32le` |
//! | 2  | guest submits an entry at its published SQ tail and bumps the tail | `n: u8` (mod 129), `n` bytes (zero-padded to 128) |
//! | 3  | host `pending()` | |
//! | 4  | host `poll(budget, sink)` | `budget: u8` |
//! | 5  | host `complete(tag, ..)` of one taken job | `sel: u8` (bit 0: Ok or an error status; rest: which job) |
//! | 6  | host `flush_irq()` | |
//! | 7  | guest asks for a reset (bumps `REG_RESET_REQUEST`) | |
//! | 8  | host: `if reset_requested() { finish_reset() }` (taken jobs are forgotten) | |
//! | 9  | guest consumes every completion (CQ head = CQ tail) | |
//! | 10 | guest sets or clears the CQ interrupt flag | `b: u8` (bit 0) |
//! | 11 | host `set_polling(..)` | `b: u8` (bit 0) |
//! | 12 | host `takeable()` and `cq_blocked()` | |
//!
//! Checked after every step, besides "never panics":
//! - the host writes nothing the guest owns: every byte of the window outside the host half of
//!   the register page, the SQ head and flags words, the CQ tail word and the CQ slots is
//!   unchanged by host steps (so every completion lands inside the CQ), and nothing outside
//!   the window changes at all;
//! - `poll` never takes more entries than the CQ can hold once every taken command completes,
//!   judged from the guest's CQ head when it polled; never more than the budget or than the SQ
//!   holds; each taken entry is decoded from the slot it was in (valid ones reach the sink
//!   with their tag, stream and command, invalid ones complete at once with decode's status);
//! - each completion is written to the next CQ slot with the tag and status given, and the
//!   published CQ tail counts it; a poll that takes entries publishes the host's SQ head (the
//!   guest may overwrite either word; the host never reads them back);
//! - an impossible SQ tail or CQ head fences the VM, and a fenced VM takes nothing;
//! - `flush_irq` signals the interrupt eventfd exactly when completions were posted since the
//!   last flush and the guest's CQ interrupt flag is set;
//! - `finish_reset` zeroes both ring headers and rewrites the register page.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::OwnedFd;
use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use vgpu_abi::cmd::{Command, Cqe, Sqe, CQE_SIZE, SQE_SIZE};
use vgpu_abi::layout::{ring_hdr, CQ_FLAG_IRQ};
use vgpu_abi::regs::{GUEST_HALF, REG_RESET_REQUEST};
use vgpu_abi::ring::occupancy;
use vgpu_abi::{DeviceStatus, Layout, RegisterPage, ShmView, Status, MAGIC};
use vgpu_mediator::backend::DeviceInfo;
use vgpu_mediator::channel::{Channel, ChannelParams};
use vgpu_mediator::config::Config;
use vgpu_mediator::queue::Job;
use vgpu_mediator::stats::VmStats;
use vgpu_mediator::transport::SharedRegion;
use zerocopy::FromBytes;

const CONFIG: &str = r#"
[mediator]
backend = "cpu"
[[vm]]
name = "fuzz"
socket = "/nonexistent/vgpu-fuzz.sock"
vm_id = 1
shm_size = "128KiB"
sq_entries = 4
cq_entries = 8
"#;

/// Most steps run per input (keeps every input fast).
const MAX_STEPS: usize = 512;

struct Harness {
    /// Keeps the mapping alive (the channel holds another reference).
    _region: Arc<SharedRegion>,
    view: ShmView,
    layout: Layout,
    ch: Channel,
    stats: Arc<VmStats>,
    /// A second descriptor of the interrupt eventfd, read to see whether the channel signalled.
    irq: OwnedFd,
    /// Bytes the guest can reach: register page, ring headers, SQ and CQ slots.
    window: usize,
    /// Ranges of the window the guest owns (the host must never write them).
    guest_ranges: Vec<(usize, usize)>,
    /// The window as the guest last left it.
    shadow: Vec<u8>,
    scratch: Vec<u8>,
}

/// The harness's model of the channel since its last reset.
#[derive(Default)]
struct Model {
    /// Entries the host has taken (its SQ head).
    sq_head: u32,
    /// `stats.commands` at the last reset: completions written since = its growth.
    commands_base: u64,
    /// Jobs handed to the sink and not completed yet.
    jobs: Vec<u64>,
    /// Completions posted since the last `flush_irq`.
    irq_due: bool,
}

impl Harness {
    fn new() -> Self {
        let cfg = Config::from_toml(CONFIG).expect("harness config");
        let vm = &cfg.vms[0];
        let layout = vm.layout().expect("harness layout");
        let region = Arc::new(SharedRegion::create("fuzz", vm.shm_size.0).expect("memfd region"));
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        let doorbell = eventfd(0, flags).expect("eventfd");
        let irq = eventfd(0, flags).expect("eventfd");
        let irq_reader = irq.try_clone().expect("dup eventfd");
        let params = ChannelParams {
            device: DeviceInfo {
                kind: vgpu_abi::regs::BACKEND_CPU,
                backend: "cpu",
                name: "fuzz device".into(),
                total_mem: 1 << 30,
                caps: 0,
                props: vgpu_abi::DeviceInfoPage::default(),
            },
            capabilities: 0,
            max_kernel_us: 1000,
        };
        let stats = Arc::new(VmStats::default());
        let ch = Channel::new(0, vm, region.clone(), doorbell, irq, &params, stats.clone())
            .expect("channel");
        let window = layout.cqe_offset(0) + layout.cq_entries as usize * CQE_SIZE;
        let sq = layout.sq_offset as usize;
        let cq = layout.cq_offset as usize;
        let mut host = [
            (0, GUEST_HALF),
            (sq + ring_hdr::HEAD, sq + ring_hdr::HEAD + 4),
            (sq + ring_hdr::FLAGS, sq + ring_hdr::FLAGS + 4),
            (cq + ring_hdr::TAIL, cq + ring_hdr::TAIL + 4),
            (layout.cqe_offset(0), window),
        ];
        host.sort();
        let mut guest_ranges = Vec::new();
        let mut at = 0;
        for (a, b) in host {
            if a > at {
                guest_ranges.push((at, a));
            }
            at = at.max(b);
        }
        if at < window {
            guest_ranges.push((at, window));
        }
        let view = region.view();
        Self {
            _region: region,
            view,
            layout,
            ch,
            stats,
            irq: irq_reader,
            window,
            guest_ranges,
            shadow: vec![0; window],
            scratch: vec![0; window],
        }
    }

    fn commands(&self) -> u64 {
        self.stats.commands.load(Relaxed)
    }

    /// Completions written since the last reset: the host's CQ tail.
    fn cq_tail(&self, m: &Model) -> u32 {
        self.commands().wrapping_sub(m.commands_base) as u32
    }

    fn sq_hdr(&self, f: usize) -> usize {
        self.layout.sq_offset as usize + f
    }

    fn cq_hdr(&self, f: usize) -> usize {
        self.layout.cq_offset as usize + f
    }

    /// Whether the interrupt eventfd was signalled since the last call (and clears it).
    fn take_irq(&self) -> bool {
        let mut b = [0u8; 8];
        matches!(rustix::io::read(&self.irq, &mut b), Ok(8))
    }

    /// Records what a guest step wrote: `len` bytes at `off`.
    fn guest_wrote(&mut self, off: usize, len: usize) {
        self.view.read_bytes(off, &mut self.shadow[off..off + len]);
    }

    /// After a host step: nothing the guest owns changed. Then records the window.
    fn host_done(&mut self, what: &str) {
        self.view.read_bytes(0, &mut self.scratch);
        for &(a, b) in &self.guest_ranges {
            if self.scratch[a..b] != self.shadow[a..b] {
                let at = (a..b)
                    .find(|&i| self.scratch[i] != self.shadow[i])
                    .expect("a differing byte");
                panic!("{what} wrote guest-owned byte {at:#x} (guest range {a:#x}..{b:#x})");
            }
        }
        std::mem::swap(&mut self.shadow, &mut self.scratch);
    }

    /// Puts the region and the channel in the same state for every input.
    fn start(&mut self) -> Model {
        self.view.fill(0, self.window, 0);
        self.ch.finish_reset();
        while self.take_irq() {}
        self.ch.set_polling(true);
        self.view.read_bytes(0, &mut self.shadow);
        self.check_after_reset();
        Model {
            commands_base: self.commands(),
            ..Model::default()
        }
    }

    fn check_after_reset(&self) {
        let l = &self.layout;
        for hdr in [l.sq_offset as usize, l.cq_offset as usize] {
            for f in [ring_hdr::TAIL, ring_hdr::HEAD] {
                assert_eq!(self.view.load_u32(hdr + f), 0, "ring index not reset");
            }
        }
        let r: RegisterPage = self.view.read_obj(0);
        assert_eq!(r.magic, MAGIC);
        assert_eq!(
            Layout::from_regs(&r, l.shm_size).as_ref(),
            Ok(l),
            "register page geometry after reset"
        );
        assert_ne!(r.device_status, DeviceStatus::Fenced as u32);
        assert!(!self.ch.is_fenced());
    }

    fn check_outside_window(&self) {
        let mut buf = [0u8; 4096];
        let len = self.view.len();
        let mut off = self.window;
        while off < len {
            let n = buf.len().min(len - off);
            self.view.read_bytes(off, &mut buf[..n]);
            assert!(
                buf[..n].iter().all(|&b| b == 0),
                "the host wrote outside the rings (near {off:#x})"
            );
            off += n;
        }
    }

    /// The SQ occupancy and CQ used count as the channel will judge them now (`None`: the
    /// guest's index is impossible).
    fn rings(&self, m: &Model) -> (Option<u32>, Option<u32>) {
        let tail = self.view.load_u32(self.sq_hdr(ring_hdr::TAIL));
        let head = self.view.load_u32(self.cq_hdr(ring_hdr::HEAD));
        (
            occupancy(tail, m.sq_head, self.layout.sq_entries),
            occupancy(self.cq_tail(m), head, self.layout.cq_entries),
        )
    }

    /// Commands taken and not yet completed, as the channel counts them.
    fn outstanding(&self, m: &Model) -> u32 {
        m.sq_head.wrapping_sub(self.cq_tail(m))
    }

    fn read_cqe(&self, index: u32) -> Cqe {
        let slot = index & (self.layout.cq_entries - 1);
        self.view.read_obj(self.layout.cqe_offset(slot))
    }

    fn poll(&mut self, m: &mut Model, budget: u32) {
        let was_fenced = self.ch.is_fenced();
        let (sq_used, cq_used) = self.rings(m);
        let cq_head = self.view.load_u32(self.cq_hdr(ring_hdr::HEAD));
        let tail0 = self.cq_tail(m);
        let outstanding0 = self.outstanding(m);
        // What each entry the host may take decodes to, from the slots as they are now.
        let expect: Vec<(Sqe, Result<Command, Status>)> = (0..self.layout.sq_entries)
            .map(|i| {
                let slot = m.sq_head.wrapping_add(i) & (self.layout.sq_entries - 1);
                let sqe: Sqe = self.view.read_obj(self.layout.sqe_offset(slot));
                (sqe, Command::decode(&sqe, self.layout.staging_size))
            })
            .collect();
        let mut sunk: Vec<Job> = Vec::new();
        let n = self.ch.poll(budget, &mut |job| sunk.push(job));
        self.host_done("poll");

        if was_fenced {
            assert_eq!(n, 0, "a fenced VM's ring was read");
            return;
        }
        match (sq_used, cq_used) {
            (None, _) => {
                assert_eq!(n, 0);
                assert!(self.ch.is_fenced(), "impossible SQ tail not fenced");
                return;
            }
            (Some(0), _) => {
                assert_eq!(n, 0);
                return;
            }
            (Some(_), None) => {
                assert_eq!(n, 0);
                assert!(self.ch.is_fenced(), "impossible CQ head not fenced");
                return;
            }
            (Some(avail), Some(used)) => {
                assert!(n <= budget, "took {n} > budget {budget}");
                assert!(n <= avail, "took {n} > {avail} entries in the SQ");
                let room = (self.layout.cq_entries - used).saturating_sub(outstanding0);
                assert!(n <= room, "took {n} with CQ room {room}");
            }
        }
        // The central invariant, restated from the guest's side: once everything taken so far
        // completes, the host's CQ tail is at most cq_entries ahead of the head the guest had
        // published when the host polled. It binds a poll that takes entries: a guest that
        // moves its CQ head back (below completions it had consumed) makes earlier work
        // overrun the head it now shows, which only the lying guest can notice.
        let end = tail0.wrapping_add(outstanding0).wrapping_add(n);
        assert!(
            n == 0 || occupancy(end, cq_head, self.layout.cq_entries).is_some(),
            "took more than the CQ can hold: tail {tail0} + outstanding {outstanding0} + {n} vs head {cq_head}"
        );

        // Entries in order: valid ones went to the sink, invalid ones completed right away.
        let mut jobs = sunk.into_iter();
        let mut cq = tail0;
        for (sqe, outcome) in expect.iter().take(n as usize) {
            match outcome {
                Ok(cmd) => {
                    let job = jobs.next().expect("a valid entry did not reach the sink");
                    assert_eq!(job.vm, 0);
                    assert_eq!(job.tag, sqe.tag);
                    assert_eq!(job.stream, sqe.stream);
                    assert_eq!(&job.cmd, cmd);
                    m.jobs.push(job.tag);
                }
                Err(status) => {
                    let cqe = self.read_cqe(cq);
                    let want = Cqe {
                        tag: sqe.tag,
                        status: *status as u32,
                        ..Cqe::default()
                    };
                    assert_eq!(cqe, want, "error completion of an invalid entry");
                    cq = cq.wrapping_add(1);
                    m.irq_due = true;
                }
            }
        }
        assert!(jobs.next().is_none(), "more jobs than entries taken");
        assert_eq!(self.cq_tail(m), cq, "completions written during poll");
        m.sq_head = m.sq_head.wrapping_add(n);
        // The host publishes its head as it takes entries; a poll that takes none leaves the
        // word as it is, guest scribbles included (the host never reads it back).
        if n > 0 {
            assert_eq!(
                self.view.load_u32(self.sq_hdr(ring_hdr::HEAD)),
                m.sq_head,
                "published SQ head"
            );
        }
        if cq != tail0 {
            assert_eq!(self.view.load_u32(self.cq_hdr(ring_hdr::TAIL)), cq);
        }
    }

    fn complete(&mut self, m: &mut Model, sel: u8) {
        if m.jobs.is_empty() {
            return;
        }
        let tag = m.jobs.remove((sel >> 1) as usize % m.jobs.len());
        let outcome = if sel & 1 == 0 {
            Ok((tag ^ 0x5a5a, tag.rotate_left(7)))
        } else {
            Err(Status::from_raw(1 + (sel as u32 >> 1) % 16).expect("a status"))
        };
        let fenced = self.ch.is_fenced();
        let tail0 = self.cq_tail(m);
        self.ch.complete(tag, outcome);
        self.host_done("complete");
        let tail1 = self.cq_tail(m);
        if fenced {
            assert_eq!(tail1, tail0, "a fenced VM got a completion");
            return;
        }
        assert_eq!(tail1, tail0.wrapping_add(1), "completion not written");
        let (status, result0, result1) = match outcome {
            Ok((a, b)) => (Status::Ok, a, b),
            Err(s) => (s, 0, 0),
        };
        let want = Cqe {
            tag,
            status: status as u32,
            flags: 0,
            result0,
            result1,
        };
        assert_eq!(self.read_cqe(tail0), want, "completion in the wrong slot");
        assert_eq!(self.view.load_u32(self.cq_hdr(ring_hdr::TAIL)), tail1);
        m.irq_due = true;
    }

    fn flush_irq(&mut self, m: &mut Model) {
        let wanted = self.view.load_u32(self.cq_hdr(ring_hdr::FLAGS)) & CQ_FLAG_IRQ != 0;
        self.ch.flush_irq();
        self.host_done("flush_irq");
        let fired = self.take_irq();
        assert_eq!(
            fired,
            std::mem::take(&mut m.irq_due) && wanted,
            "interrupt signalled wrongly"
        );
    }

    fn takeable(&mut self, m: &Model) {
        let was_fenced = self.ch.is_fenced();
        let (sq_used, cq_used) = self.rings(m);
        let t = self.ch.takeable();
        let blocked = self.ch.cq_blocked();
        self.host_done("takeable");
        if was_fenced {
            assert_eq!(t, 0);
            return;
        }
        if let (Some(avail), Some(used)) = (sq_used, cq_used) {
            let room = (self.layout.cq_entries - used).saturating_sub(self.outstanding(m));
            assert_eq!(t, avail.min(room), "takeable");
            assert_eq!(blocked, avail > 0 && t == 0, "cq_blocked");
        } else if sq_used != Some(0) {
            assert_eq!(t, 0);
            assert!(self.ch.is_fenced(), "impossible index not fenced");
        }
    }

    fn run(&mut self, data: &[u8]) {
        let mut m = self.start();
        let mut input = Input(data);
        for _ in 0..MAX_STEPS {
            let Some(op) = input.u8() else { break };
            match op % 13 {
                0 => {
                    let (Some(off), Some(len)) = (input.u16(), input.u8()) else {
                        break;
                    };
                    let Some(bytes) = input.bytes(len as usize) else {
                        break;
                    };
                    let off = off as usize % self.window;
                    let n = bytes.len().min(self.window - off);
                    self.view.write_bytes(off, &bytes[..n]);
                    self.guest_wrote(off, n);
                }
                1 => {
                    let (Some(off), Some(v)) = (input.u16(), input.u32()) else {
                        break;
                    };
                    let off = (off as usize % self.window) & !3;
                    self.view.store_u32(off, v);
                    self.guest_wrote(off, 4);
                }
                2 => {
                    let Some(n) = input.u8() else { break };
                    let Some(bytes) = input.bytes(n as usize % (SQE_SIZE + 1)) else {
                        break;
                    };
                    let mut raw = [0u8; SQE_SIZE];
                    raw[..bytes.len()].copy_from_slice(bytes);
                    let sqe = Sqe::read_from_bytes(&raw[..]).expect("128 bytes");
                    let tail_at = self.sq_hdr(ring_hdr::TAIL);
                    let tail = self.view.load_u32(tail_at);
                    let slot = tail & (self.layout.sq_entries - 1);
                    let at = self.layout.sqe_offset(slot);
                    self.view.write_obj(at, &sqe);
                    self.view.store_u32(tail_at, tail.wrapping_add(1));
                    self.guest_wrote(at, SQE_SIZE);
                    self.guest_wrote(tail_at, 4);
                }
                3 => {
                    let was_fenced = self.ch.is_fenced();
                    let (sq_used, _) = self.rings(&m);
                    let p = self.ch.pending();
                    self.host_done("pending");
                    if was_fenced {
                        assert_eq!(p, 0);
                    } else {
                        match sq_used {
                            Some(a) => assert_eq!(p, a, "pending"),
                            None => {
                                assert_eq!(p, 0);
                                assert!(self.ch.is_fenced(), "impossible SQ tail not fenced");
                            }
                        }
                    }
                }
                4 => {
                    let Some(b) = input.u8() else { break };
                    self.poll(&mut m, b as u32);
                }
                5 => {
                    let Some(sel) = input.u8() else { break };
                    self.complete(&mut m, sel);
                }
                6 => self.flush_irq(&mut m),
                7 => {
                    let v = self.view.load_u32(REG_RESET_REQUEST);
                    self.view.store_u32(REG_RESET_REQUEST, v.wrapping_add(1));
                    self.guest_wrote(REG_RESET_REQUEST, 4);
                }
                8 => {
                    if self.ch.reset_requested() {
                        self.ch.finish_reset();
                        self.check_after_reset();
                        // Resetting zeroes both ring headers, guest fields included.
                        let l = self.layout;
                        for hdr in [l.sq_offset as usize, l.cq_offset as usize] {
                            self.shadow[hdr..hdr + ring_hdr::SIZE].fill(0);
                        }
                        self.host_done("finish_reset");
                        m = Model {
                            commands_base: self.commands(),
                            ..Model::default()
                        };
                    } else {
                        self.host_done("reset_requested");
                    }
                }
                9 => {
                    let tail = self.view.load_u32(self.cq_hdr(ring_hdr::TAIL));
                    let at = self.cq_hdr(ring_hdr::HEAD);
                    self.view.store_u32(at, tail);
                    self.guest_wrote(at, 4);
                }
                10 => {
                    let Some(b) = input.u8() else { break };
                    let off = self.cq_hdr(ring_hdr::FLAGS);
                    if b & 1 != 0 {
                        self.view.fetch_or_u32(off, CQ_FLAG_IRQ);
                    } else {
                        self.view.fetch_and_u32(off, !CQ_FLAG_IRQ);
                    }
                    self.guest_wrote(off, 4);
                }
                11 => {
                    let Some(b) = input.u8() else { break };
                    self.ch.set_polling(b & 1 != 0);
                    self.host_done("set_polling");
                }
                _ => self.takeable(&m),
            }
        }
        self.check_outside_window();
    }
}

/// The script being read.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        h.get_or_insert_with(Harness::new).run(data);
    });
});
