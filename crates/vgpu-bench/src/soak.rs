//! `vgpu-bench soak`: a real vgpud serving one VM per client, with `--clients` process clients
//! doing random valid work for `--minutes`, and one hostile client, while vgpud's resources are
//! watched.
//!
//! * **Good clients** (threads, one `Device` each, each with its own seeded RNG) loop over random
//!   operations: allocations and frees of random sizes, H2D / D2H / D2D copies, memsets, the
//!   built-in kernels, several streams with events (record, wait, synchronize, elapsed time),
//!   short busy kernels, batches of entries, module loads (cuda only: the PTX of
//!   `crates/vgpu-mediator/kernels/ptx/`), faults, device resets (some with work in flight),
//!   disconnects (some with work in flight) and reconnects, and probes of the per-VM limits.
//!   Each client keeps a host *shadow* of all its device memory, updated by the reference
//!   kernels (`vgpu_mediator::backend::kernels`); every read back is compared with it bit for
//!   bit. Every operation has one predicted outcome: `QUOTA_EXCEEDED`, `LIMIT_EXCEEDED`,
//!   `ABORTED`, `KERNEL_FAULT`, … are counted where the work really crossed a limit (or was
//!   reset, or faulted on purpose); any other error, a wrong result, or a command that does not
//!   complete within `--hang-secs` is a failure.
//! * **The hostile client** is a child process (this binary, `--hostile-child`), respawned for
//!   the whole run and sometimes SIGKILLed in the middle of what it does. It scribbles random
//!   bytes over its shared memory, rewrites ring indices, submits malformed and malicious
//!   entries (through the rings directly and through the library), storms the doorbell, writes
//!   the reset-request register, tries `ftruncate` and new seals on its memfd (through a raw
//!   ivshmem connection, as a QEMU could), floods its VM's limits, disconnects with work in
//!   flight, and checks after a reset that its device works again (bit-exactly).
//! * **vgpud's resources** — RSS, open fds, threads, worker processes (its children) and, where
//!   `nvidia-smi` works, the GPU memory used — are read once every kind of client has been
//!   served once (a warm-up round, so one-time allocations are not counted) and again after
//!   every client left; fds, threads and workers must be back where they started, RSS within
//!   `--rss-tolerance-pct`, GPU memory at its baseline. vgpud must stay up and stop cleanly.
//!
//! Exit status 0 only when nothing failed; the summary (and `--json`) says what ran.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vgpu_guest::transport::socket::read_setup;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vgpu_abi::cmd::reference as kernels;
use vgpu_abi::cmd::{
    Builtin, Command, LaunchBody, SaxpyParams, VectorAddParams, MAX_STREAMS, SQE_SIZE,
};
use vgpu_abi::ivshmem::MEDIATOR_PEER_ID;
use vgpu_abi::regs::{self, CAP_MODULES};
use vgpu_abi::{Cqe, RegisterPage, Sqe, Status};
use vgpu_guest::{Device, Error as GuestError, Launch};
use zerocopy::IntoBytes;

use crate::vgpud::{Daemon, VmDef};

/// Device memory quota of each good VM.
const GOOD_QUOTA: u64 = 32 << 20;
/// BAR2 of each good VM (about 960 KiB of staging: large copies go in several chunks).
const GOOD_SHM: u64 = 1 << 20;
/// Quota and BAR2 of the hostile VM.
const HOSTILE_QUOTA: u64 = 16 << 20;
const HOSTILE_SHM: u64 = 256 << 10;
/// `[mediator] max_kernel_us`: the longest busy kernel accepted.
const MAX_KERNEL_US: u32 = 20_000;
/// `[limits]` of the config, probed by the clients.
const LIMIT_ALLOCS: usize = 48;
const LIMIT_STREAMS: usize = 8;
/// Buffers a good client holds at most in its normal work (well below `LIMIT_ALLOCS`).
const MAX_BUFS: usize = 20;
/// Stream ids 1..=STREAM_IDS are used by the normal work (with 0: below `LIMIT_STREAMS`).
const STREAM_IDS: u32 = 4;
/// Largest element count of a 1-D kernel, largest sgemm edge.
const MAX_ELEMS: u64 = 1 << 18;
const MAX_GEMM: u64 = 48;
/// How long counts may take to settle (start and end).
const SETTLE: Duration = Duration::from_secs(5);
/// Failure messages kept per tally (all are counted).
const MAX_MESSAGES: usize = 40;

const PTX_VADD: &str = include_str!("../../vgpu-mediator/kernels/ptx/vector_add.ptx");
const PTX_REVERSE: &str = include_str!("../../vgpu-mediator/kernels/ptx/shared_reverse.ptx");

/// Options of `vgpu-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// How long the clients run, in minutes (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// vgpud backend: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Clients doing random valid work, one VM each (one more VM serves the hostile client).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seed of the clients' RNGs (client i uses a mix of this and i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// vgpud's `fault_isolation`: process or none (default: the backend's default).
    #[arg(long)]
    pub isolation: Option<String>,
    /// A command that has not completed after this many seconds is a hang.
    #[arg(long, default_value_t = 30)]
    pub hang_secs: u64,
    /// Seconds of the warm-up round: every operation once, then random work by every client
    /// at once (so that vgpud's one-time allocations — malloc arenas, table capacities — are
    /// made before its resources are first read).
    #[arg(long, default_value_t = 5.0)]
    pub warmup_secs: f64,
    /// Largest growth of vgpud's RSS from start to end, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub rss_tolerance_pct: f64,
    /// Leave the hostile client out.
    #[arg(long)]
    pub no_hostile: bool,
    /// Internal: run one life of the hostile client against this VM socket.
    #[arg(long, hide = true)]
    pub hostile_child: Option<PathBuf>,
    /// Internal: how long that life lasts in ms (0: every hostile action once).
    #[arg(long, hide = true, default_value_t = 0)]
    pub hostile_life_ms: u64,
}

/// `vgpu-bench soak` from the command line.
pub fn cli(o: &Opts) -> Result<()> {
    if let Some(socket) = &o.hostile_child {
        return hostile_child(o, socket);
    }
    let summary = run(o)?;
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if summary["passed"] != true {
        // The summary said why; exit non-zero without an error trace on top.
        std::process::exit(1);
    }
    Ok(())
}

// ---- random numbers ---------------------------------------------------------------------------

/// xorshift64* seeded through splitmix64.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    /// In `lo..=hi` (both ≥ 1), uniform in the bit length: small values as likely as large.
    fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let bits = |v: u64| 64 - v.leading_zeros() as u64;
        let b = self.range(bits(lo), bits(hi));
        let from = lo.max(1 << (b - 1));
        let to = hi.min(if b == 64 { u64::MAX } else { (1 << b) - 1 });
        self.range(from, to)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.index(i + 1));
        }
    }
    /// A float on the 2⁻²⁴ grid in [-0.5, 0.5): sums of many of them are exact in f64.
    fn nice_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    fn nice_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 4);
        while v.len() < len {
            v.extend_from_slice(&self.nice_f32().to_le_bytes());
        }
        v.truncate(len);
        v
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

fn mix(seed: u64, i: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03)
}

// ---- results ----------------------------------------------------------------------------------

/// Why an operation failed the run.
#[derive(Debug)]
enum Fail {
    /// Data read back differs from what the reference computes.
    Wrong(String),
    /// An error the operation does not explain.
    Unexpected(String),
    /// A command that did not complete in time.
    Hang(String),
}

impl Fail {
    fn from_err(what: impl std::fmt::Display, e: GuestError) -> Fail {
        match e {
            GuestError::Timeout { .. } => Fail::Hang(format!("{what}: {e}")),
            _ => Fail::Unexpected(format!("{what}: {e}")),
        }
    }
}

type R<T> = std::result::Result<T, Fail>;

fn ok<T>(what: impl std::fmt::Display, r: std::result::Result<T, GuestError>) -> R<T> {
    r.map_err(|e| Fail::from_err(what, e))
}

/// Counters of one client (or of all, merged).
#[derive(Debug, Default, Clone)]
struct Tally {
    /// Operations done, by kind.
    ops: BTreeMap<String, u64>,
    /// Error statuses that the work explains, by status.
    statuses: BTreeMap<String, u64>,
    /// Things worth knowing that are not failures (limits not enforced yet, retries, …).
    notes: BTreeMap<String, u64>,
    wrong: u64,
    hangs: u64,
    failures: u64,
    messages: Vec<String>,
    commands: u64,
    bytes_checked: u64,
}

impl Tally {
    fn op(&mut self, k: &str) {
        *self.ops.entry(k.to_string()).or_default() += 1;
    }
    fn status(&mut self, s: Status) {
        *self.statuses.entry(format!("{s:?}")).or_default() += 1;
    }
    fn note(&mut self, k: &str) {
        *self.notes.entry(k.to_string()).or_default() += 1;
    }
    fn fail(&mut self, who: &str, f: Fail) {
        self.failures += 1;
        let msg = match f {
            Fail::Wrong(m) => {
                self.wrong += 1;
                format!("{who}: WRONG RESULT: {m}")
            }
            Fail::Hang(m) => {
                self.hangs += 1;
                format!("{who}: HANG: {m}")
            }
            Fail::Unexpected(m) => format!("{who}: {m}"),
        };
        eprintln!("soak: {msg}");
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg);
        }
    }
    fn merge(&mut self, o: &Tally) {
        for (k, v) in &o.ops {
            *self.ops.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.notes {
            *self.notes.entry(k.clone()).or_default() += v;
        }
        self.wrong += o.wrong;
        self.hangs += o.hangs;
        self.failures += o.failures;
        self.commands += o.commands;
        self.bytes_checked += o.bytes_checked;
        for m in &o.messages {
            if self.messages.len() < MAX_MESSAGES {
                self.messages.push(m.clone());
            }
        }
    }
    fn ops_total(&self) -> u64 {
        self.ops.values().sum()
    }
    fn to_json(&self) -> Value {
        json!({
            "ops": self.ops,
            "statuses": self.statuses,
            "notes": self.notes,
            "wrong_results": self.wrong,
            "hangs": self.hangs,
            "failures": self.failures,
            "messages": self.messages,
            "commands": self.commands,
            "bytes_checked": self.bytes_checked,
        })
    }
    fn from_json(v: &Value) -> Tally {
        let map = |k: &str| -> BTreeMap<String, u64> {
            v[k].as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Tally {
            ops: map("ops"),
            statuses: map("statuses"),
            notes: map("notes"),
            wrong: n("wrong_results"),
            hangs: n("hangs"),
            failures: n("failures"),
            messages: v["messages"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            commands: n("commands"),
            bytes_checked: n("bytes_checked"),
        }
    }
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- the shared run state ---------------------------------------------------------------------

/// What every client thread shares.
struct Env {
    cuda: bool,
    hang: Duration,
    t0: Instant,
    /// The clients stop starting operations at this instant (warm-up: after their list).
    deadline: Instant,
    stop: AtomicBool,
}

/// What a client is doing, for the watchdog.
#[derive(Default)]
struct Progress {
    last_ms: AtomicU64,
    op: Mutex<&'static str>,
    finished: AtomicBool,
}

impl Progress {
    fn tick(&self, env: &Env, op: &'static str) {
        self.last_ms
            .store(env.t0.elapsed().as_millis() as u64, Relaxed);
        *self.op.lock().unwrap_or_else(|e| e.into_inner()) = op;
    }
}

// ---- good clients -----------------------------------------------------------------------------

/// The operations of a good client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Alloc,
    Free,
    H2d,
    D2h,
    D2d,
    Memset,
    VectorAdd,
    Saxpy,
    Sgemm,
    Reduce,
    Busy,
    Streams,
    MemInfo,
    Batch,
    Module,
    Reset,
    ResetInflight,
    Reconnect,
    Fault,
    ProbeQuota,
    ProbeAllocs,
    ProbeStreams,
    ProbeBusy,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Alloc => "alloc",
            Op::Free => "free",
            Op::H2d => "h2d",
            Op::D2h => "d2h",
            Op::D2d => "d2d",
            Op::Memset => "memset",
            Op::VectorAdd => "vector_add",
            Op::Saxpy => "saxpy",
            Op::Sgemm => "sgemm",
            Op::Reduce => "reduce_sum",
            Op::Busy => "busy",
            Op::Streams => "streams",
            Op::MemInfo => "get_info",
            Op::Batch => "batch",
            Op::Module => "module",
            Op::Reset => "reset",
            Op::ResetInflight => "reset_inflight",
            Op::Reconnect => "reconnect",
            Op::Fault => "fault",
            Op::ProbeQuota => "probe_quota",
            Op::ProbeAllocs => "probe_allocs",
            Op::ProbeStreams => "probe_streams",
            Op::ProbeBusy => "probe_busy",
        }
    }
}

/// Relative frequency of each operation (per mille, roughly).
const WEIGHTS: &[(Op, u64)] = &[
    (Op::Alloc, 110),
    (Op::Free, 60),
    (Op::H2d, 90),
    (Op::D2h, 110),
    (Op::D2d, 60),
    (Op::Memset, 60),
    (Op::VectorAdd, 40),
    (Op::Saxpy, 40),
    (Op::Sgemm, 30),
    (Op::Reduce, 30),
    (Op::Busy, 30),
    (Op::Streams, 90),
    (Op::MemInfo, 30),
    (Op::Batch, 30),
    (Op::Module, 30),
    (Op::Reset, 8),
    (Op::ResetInflight, 5),
    (Op::Reconnect, 10),
    (Op::Fault, 4),
    (Op::ProbeQuota, 8),
    (Op::ProbeAllocs, 3),
    (Op::ProbeStreams, 3),
    (Op::ProbeBusy, 5),
];

/// The warm-up round: every operation at least once.
const WARMUP: &[Op] = &[
    Op::Alloc,
    Op::Alloc,
    Op::Alloc,
    Op::Alloc,
    Op::H2d,
    Op::D2h,
    Op::D2d,
    Op::Memset,
    Op::VectorAdd,
    Op::Saxpy,
    Op::Sgemm,
    Op::Reduce,
    Op::Busy,
    Op::Streams,
    Op::MemInfo,
    Op::Batch,
    Op::Module,
    Op::ProbeQuota,
    Op::ProbeAllocs,
    Op::ProbeBusy,
    Op::ProbeStreams,
    Op::Alloc,
    Op::Fault,
    Op::Alloc,
    Op::ResetInflight,
    Op::Alloc,
    Op::Reset,
    Op::Alloc,
    Op::Free,
    Op::Reconnect,
    Op::Alloc,
    Op::Streams,
    Op::D2h,
];

/// One device allocation and the host's copy of what it must hold.
#[derive(Debug)]
struct Buf {
    ptr: u64,
    data: Vec<u8>,
}

/// What a connection holds on the device.
#[derive(Debug, Default)]
struct State {
    bufs: Vec<Buf>,
    used: u64,
    streams: BTreeSet<u32>,
    modules: bool,
}

impl State {
    /// After a reset: the context and its memory are gone.
    fn clear(&mut self) {
        self.bufs.clear();
        self.used = 0;
        self.streams.clear();
    }
}

/// A range of `n` f32 elements at element offset `off` of buffer `bi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    bi: usize,
    off: usize,
    n: usize,
}

impl Span {
    fn overlaps(&self, o: &Span) -> bool {
        self.bi == o.bi && self.off < o.off + o.n && o.off < self.off + self.n
    }
    /// Overlapping but not the very same range (a race for an elementwise kernel).
    fn partly(&self, o: &Span) -> bool {
        self.overlaps(o) && self != o
    }
    fn bytes(&self) -> std::ops::Range<usize> {
        self.off * 4..(self.off + self.n) * 4
    }
}

/// One client's thread state.
struct Cx<'e> {
    who: String,
    rng: Rng,
    t: Tally,
    env: &'e Env,
}

fn floats(b: &[u8]) -> Vec<f32> {
    kernels::to_f32s(b)
}

/// Finite and small: safe kernel input (no NaN payloads or infinities whose propagation may
/// differ between devices, no overflow).
fn is_nice(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite() && x.abs() <= 65536.0)
}

/// Whether the f64 sum of `v` is exact in any order (every partial sum is a multiple of the
/// smallest bit and below the bound): then every device's reduction gives the reference bits.
fn sum_exact(v: &[f32]) -> bool {
    let (mut lo, mut hi) = (i32::MAX, i32::MIN);
    for x in v {
        if !x.is_finite() {
            return false;
        }
        let b = x.to_bits();
        let exp = ((b >> 23) & 0xff) as i32;
        let mant = b & 0x7f_ffff;
        if exp == 0 && mant == 0 {
            continue;
        }
        let (lsb, msb) = if exp == 0 {
            (
                -149 + mant.trailing_zeros() as i32,
                -149 + 31 - mant.leading_zeros() as i32,
            )
        } else {
            let full = mant | 1 << 23;
            (exp - 150 + full.trailing_zeros() as i32, exp - 127)
        };
        lo = lo.min(lsb);
        hi = hi.max(msb);
    }
    if lo == i32::MAX {
        return true;
    }
    let grow = 64 - (v.len() as u64).leading_zeros() as i32;
    hi + 1 + grow - lo <= 53
}

fn compare(what: &str, got: &[u8], want: &[u8]) -> R<()> {
    if got == want {
        return Ok(());
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let w = |v: &[u8]| {
        let s = i & !3;
        v.get(s..(s + 8).min(v.len()))
            .map(|b| format!("{b:02x?}"))
            .unwrap_or_default()
    };
    Err(Fail::Wrong(format!(
        "{what}: first difference at byte {i} of {}: got {} want {}",
        want.len(),
        w(got),
        w(want)
    )))
}

impl Cx<'_> {
    fn done(&self) -> bool {
        self.env.stop.load(Relaxed) || Instant::now() >= self.env.deadline
    }

    fn pick_op(&mut self) -> Op {
        let total: u64 = WEIGHTS.iter().map(|w| w.1).sum();
        let mut x = self.rng.below(total);
        let mut op = Op::D2h;
        for &(o, w) in WEIGHTS {
            if x < w {
                op = o;
                break;
            }
            x -= w;
        }
        match op {
            // On cuda each of these costs a context (a worker process): a quarter as often, so
            // that the clients spend their time on work rather than on context start-ups.
            Op::Reset | Op::ResetInflight | Op::Reconnect | Op::Fault | Op::ProbeStreams
                if self.env.cuda && !self.rng.chance(0.25) =>
            {
                Op::D2h
            }
            o => o,
        }
    }

    fn connect(&mut self, socket: &Path) -> R<(Device, State)> {
        let t0 = Instant::now();
        loop {
            match Device::connect(socket) {
                Ok(mut d) => {
                    d.set_timeout(self.env.hang);
                    // Most clients block at once (2 cores for 17 clients and vgpud); some spin.
                    d.set_eager_wait(self.rng.chance(0.2));
                    self.t.op("connect");
                    let info = d.info();
                    let st = State {
                        modules: info.capabilities & CAP_MODULES != 0,
                        ..State::default()
                    };
                    if self.env.cuda && info.backend != regs::BACKEND_CUDA {
                        return Err(Fail::Unexpected(format!(
                            "vgpud serves the {} backend, not cuda",
                            info.backend_name()
                        )));
                    }
                    if info.mem_quota != GOOD_QUOTA {
                        return Err(Fail::Unexpected(format!(
                            "mem_quota register {} (config {GOOD_QUOTA})",
                            info.mem_quota
                        )));
                    }
                    return Ok((d, st));
                }
                Err(e) => {
                    if t0.elapsed() > Duration::from_secs(10) {
                        return Err(Fail::Unexpected(format!(
                            "connecting to {}: {e}",
                            socket.display()
                        )));
                    }
                    self.t.note("connect_retry");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    // ---- helpers: each does one device operation and keeps the shadow in step ----------------

    fn alloc_size(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=5 => self.rng.log_range(1, 16 << 10),
            6..=8 => self.rng.log_range(16 << 10, 512 << 10),
            _ => self.rng.log_range(512 << 10, 4 << 20),
        }
    }

    /// Allocates `size` bytes and fills them; `None` when the quota refused it (as it must
    /// exactly when the allocation would cross it).
    fn alloc_buf(&mut self, dev: &Device, st: &mut State, size: u64) -> R<Option<usize>> {
        let over = st.used + size > GOOD_QUOTA;
        let r = dev.alloc(size);
        self.t.op("alloc");
        match r {
            Ok(ptr) if !over => {
                st.used += size;
                st.bufs.push(Buf {
                    ptr,
                    data: vec![0; size as usize],
                });
                let bi = st.bufs.len() - 1;
                // Device memory starts undefined (cuda): give it known contents.
                if size <= (256 << 10) && self.rng.chance(0.5) {
                    let data = self.rng.nice_bytes(size as usize);
                    self.h2d(dev, st, bi, 0, &data)?;
                } else {
                    let v = self.rng.below(255) as u8;
                    self.memset8(dev, st, bi, 0, size as usize, v)?;
                }
                Ok(Some(bi))
            }
            Ok(ptr) => {
                // Keep the shadow honest so that it is freed with the rest.
                st.used += size;
                st.bufs.push(Buf {
                    ptr,
                    data: vec![0; size as usize],
                });
                Err(Fail::Unexpected(format!(
                    "alloc of {size} B succeeded with {} B of the {GOOD_QUOTA} B quota in use",
                    st.used - size
                )))
            }
            Err(e) if over && e.status() == Some(Status::QuotaExceeded) => {
                self.t.status(Status::QuotaExceeded);
                Ok(None)
            }
            Err(e) => Err(Fail::from_err(
                format!("alloc of {size} B ({} B in use)", st.used),
                e,
            )),
        }
    }

    fn h2d(&mut self, dev: &Device, st: &mut State, bi: usize, off: usize, data: &[u8]) -> R<()> {
        let b = &mut st.bufs[bi];
        ok(
            format!("h2d of {} B at +{off}", data.len()),
            dev.copy_htod(b.ptr + off as u64, data),
        )?;
        b.data[off..off + data.len()].copy_from_slice(data);
        self.t.op("h2d");
        Ok(())
    }

    fn d2h_check(&mut self, dev: &Device, st: &State, bi: usize, off: usize, len: usize) -> R<()> {
        let b = &st.bufs[bi];
        let mut out = vec![0u8; len];
        ok(
            format!("d2h of {len} B at +{off}"),
            dev.copy_dtoh(&mut out, b.ptr + off as u64),
        )?;
        self.t.op("d2h");
        self.t.bytes_checked += len as u64;
        compare(
            &format!("d2h of {len} B at +{off} of a {}-byte buffer", b.data.len()),
            &out,
            &b.data[off..off + len],
        )
    }

    fn memset8(
        &mut self,
        dev: &Device,
        st: &mut State,
        bi: usize,
        off: usize,
        len: usize,
        v: u8,
    ) -> R<()> {
        let b = &mut st.bufs[bi];
        ok(
            format!("memset_d8 of {len} B"),
            dev.memset_d8(b.ptr + off as u64, v, len as u64),
        )?;
        b.data[off..off + len].fill(v);
        self.t.op("memset_d8");
        Ok(())
    }

    /// Gives the span nice values (an H2D) unless it has them.
    fn ensure_nice(&mut self, dev: &Device, st: &mut State, s: Span) -> R<()> {
        if is_nice(&floats(&st.bufs[s.bi].data[s.bytes()])) {
            return Ok(());
        }
        let data = self.rng.nice_bytes(s.n * 4);
        self.h2d(dev, st, s.bi, s.off * 4, &data)
    }

    fn ptr(st: &State, s: Span) -> u64 {
        st.bufs[s.bi].ptr + (s.off * 4) as u64
    }

    /// A span of `n` elements in a random buffer large enough.
    fn span(&mut self, st: &State, n: usize) -> Option<Span> {
        let fits: Vec<usize> = (0..st.bufs.len())
            .filter(|&i| st.bufs[i].data.len() / 4 >= n)
            .collect();
        if fits.is_empty() {
            return None;
        }
        let bi = fits[self.rng.index(fits.len())];
        let elems = st.bufs[bi].data.len() / 4;
        let off = self.rng.below((elems - n + 1) as u64) as usize;
        Some(Span { bi, off, n })
    }

    /// An element count that at least one buffer holds.
    fn count(&mut self, st: &State) -> Option<usize> {
        let most = st.bufs.iter().map(|b| b.data.len() / 4).max()?;
        if most == 0 {
            return None;
        }
        Some(self.rng.log_range(1, (most as u64).min(MAX_ELEMS)) as usize)
    }

    fn maybe_check(&mut self, dev: &Device, st: &State, s: Span) -> R<()> {
        if self.rng.chance(0.5) {
            self.d2h_check(dev, st, s.bi, s.off * 4, s.n * 4)?;
        }
        Ok(())
    }

    fn write_floats(st: &mut State, s: Span, v: &[f32]) {
        kernels::from_f32s(v, &mut st.bufs[s.bi].data[s.bytes()]);
    }

    fn read_floats(st: &State, s: Span) -> Vec<f32> {
        floats(&st.bufs[s.bi].data[s.bytes()])
    }

    fn reset(&mut self, dev: &Device, st: &mut State) -> R<()> {
        ok("reset", dev.reset())?;
        self.t.op("reset");
        st.clear();
        let (used, quota) = ok("get_info after a reset", dev.mem_info())?;
        if used != 0 || quota != GOOD_QUOTA {
            return Err(Fail::Wrong(format!(
                "after a reset get_info says {used} B used of {quota} (want 0 of {GOOD_QUOTA})"
            )));
        }
        Ok(())
    }

    // ---- the operations ------------------------------------------------------------------------

    fn run_op(&mut self, dev: &Device, st: &mut State, op: Op) -> R<()> {
        let needs_buf = matches!(
            op,
            Op::Free
                | Op::H2d
                | Op::D2h
                | Op::D2d
                | Op::Memset
                | Op::VectorAdd
                | Op::Saxpy
                | Op::Sgemm
                | Op::Reduce
                | Op::Streams
                | Op::Module
        );
        if needs_buf && st.bufs.is_empty() {
            let size = self.alloc_size();
            self.alloc_buf(dev, st, size)?;
            return Ok(());
        }
        match op {
            Op::Alloc => {
                if st.bufs.len() >= MAX_BUFS {
                    return self.run_op(dev, st, Op::Free);
                }
                let size = self.alloc_size();
                self.alloc_buf(dev, st, size).map(drop)
            }
            Op::Free => {
                let bi = self.rng.index(st.bufs.len());
                let b = st.bufs.swap_remove(bi);
                ok("free", dev.free(b.ptr))?;
                st.used -= b.data.len() as u64;
                self.t.op("free");
                Ok(())
            }
            Op::H2d => {
                let bi = self.rng.index(st.bufs.len());
                let size = st.bufs[bi].data.len();
                let len = self.rng.log_range(1, size as u64) as usize;
                let off = self.rng.below((size - len + 1) as u64) as usize;
                let data = if self.rng.chance(0.5) {
                    self.rng.nice_bytes(len)
                } else {
                    self.rng.bytes(len)
                };
                self.h2d(dev, st, bi, off, &data)
            }
            Op::D2h => {
                let bi = self.rng.index(st.bufs.len());
                let size = st.bufs[bi].data.len();
                let (off, len) = if self.rng.chance(0.2) {
                    (0, size)
                } else {
                    let len = self.rng.log_range(1, size as u64) as usize;
                    (self.rng.below((size - len + 1) as u64) as usize, len)
                };
                self.d2h_check(dev, st, bi, off, len)
            }
            Op::D2d => self.op_d2d(dev, st),
            Op::Memset => {
                let bi = self.rng.index(st.bufs.len());
                let size = st.bufs[bi].data.len();
                if size >= 4 && self.rng.chance(0.5) {
                    let words = size / 4;
                    let n = self.rng.log_range(1, words as u64) as usize;
                    let off = self.rng.below((words - n + 1) as u64) as usize;
                    let v = if self.rng.chance(0.7) {
                        self.rng.nice_f32().to_bits()
                    } else {
                        self.rng.next_u64() as u32
                    };
                    let b = &mut st.bufs[bi];
                    ok(
                        format!("memset_d32 of {n} words"),
                        dev.memset_d32(b.ptr + (off * 4) as u64, v, n as u64),
                    )?;
                    for w in b.data[off * 4..(off + n) * 4].chunks_exact_mut(4) {
                        w.copy_from_slice(&v.to_le_bytes());
                    }
                    self.t.op("memset_d32");
                    Ok(())
                } else {
                    let len = self.rng.log_range(1, size as u64) as usize;
                    let off = self.rng.below((size - len + 1) as u64) as usize;
                    // Any byte but 0xff (whose f32 pattern is a NaN).
                    let v = self.rng.below(255) as u8;
                    self.memset8(dev, st, bi, off, len, v)
                }
            }
            Op::VectorAdd => self.op_vector_add(dev, st),
            Op::Saxpy => self.op_saxpy(dev, st),
            Op::Sgemm => self.op_sgemm(dev, st),
            Op::Reduce => self.op_reduce(dev, st),
            Op::Busy => {
                let us = self.rng.below(2000) as u32;
                ok(format!("busy {us} µs"), dev.busy(us))?;
                self.t.op("busy");
                Ok(())
            }
            Op::Streams => self.op_streams(dev, st),
            Op::MemInfo => {
                let (used, quota) = ok("get_info", dev.mem_info())?;
                self.t.op("get_info");
                if (used, quota) != (st.used, GOOD_QUOTA) {
                    return Err(Fail::Wrong(format!(
                        "get_info: {used} B used of {quota}, want {} of {GOOD_QUOTA}",
                        st.used
                    )));
                }
                Ok(())
            }
            Op::Batch => self.op_batch(dev, st),
            Op::Module => self.op_module(dev, st),
            Op::Reset => self.reset(dev, st),
            Op::ResetInflight => self.op_reset_inflight(dev, st),
            Op::Reconnect => unreachable!("handled by the client loop"),
            Op::Fault => self.op_fault(dev, st),
            Op::ProbeQuota => self.op_probe_quota(dev, st),
            Op::ProbeAllocs => self.op_probe_allocs(dev, st),
            Op::ProbeStreams => self.op_probe_streams(dev, st),
            Op::ProbeBusy => {
                let us = if self.rng.chance(0.2) {
                    u32::MAX
                } else {
                    MAX_KERNEL_US + 1 + self.rng.below(10_000) as u32
                };
                self.t.op("probe_busy");
                match dev.busy(us) {
                    Err(e)
                        if matches!(
                            e.status(),
                            Some(Status::InvalidArgument | Status::LimitExceeded)
                        ) =>
                    {
                        self.t.status(e.status().expect("matched"));
                        Ok(())
                    }
                    Ok(()) => Err(Fail::Unexpected(format!(
                        "a busy kernel of {us} µs was accepted (max_kernel_us = {MAX_KERNEL_US})"
                    ))),
                    Err(e) => Err(Fail::from_err(format!("busy {us} µs"), e)),
                }
            }
        }
    }

    fn op_d2d(&mut self, dev: &Device, st: &mut State) -> R<()> {
        for _ in 0..4 {
            let (s, d) = (self.rng.index(st.bufs.len()), self.rng.index(st.bufs.len()));
            let (ss, ds) = (st.bufs[s].data.len(), st.bufs[d].data.len());
            let len = self.rng.log_range(1, ss.min(ds).min(2 << 20) as u64) as usize;
            let so = self.rng.below((ss - len + 1) as u64) as usize;
            let dof = self.rng.below((ds - len + 1) as u64) as usize;
            if s == d && so < dof + len && dof < so + len {
                continue; // overlapping copies are undefined on a GPU
            }
            ok(
                format!("d2d of {len} B"),
                dev.copy_dtod(
                    st.bufs[d].ptr + dof as u64,
                    st.bufs[s].ptr + so as u64,
                    len as u64,
                ),
            )?;
            if s == d {
                st.bufs[s].data.copy_within(so..so + len, dof);
            } else {
                let src = st.bufs[s].data[so..so + len].to_vec();
                st.bufs[d].data[dof..dof + len].copy_from_slice(&src);
            }
            self.t.op("d2d");
            if self.rng.chance(0.3) {
                self.d2h_check(dev, st, d, dof, len)?;
            }
            return Ok(());
        }
        Ok(())
    }

    fn op_vector_add(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let Some(n) = self.count(st) else {
            return Ok(());
        };
        let (Some(mut a), Some(mut b), Some(c)) =
            (self.span(st, n), self.span(st, n), self.span(st, n))
        else {
            return Ok(());
        };
        if c.partly(&a) {
            a = c;
        }
        if c.partly(&b) {
            b = c;
        }
        self.ensure_nice(dev, st, a)?;
        self.ensure_nice(dev, st, b)?;
        let (pa, pb, pc) = (Self::ptr(st, a), Self::ptr(st, b), Self::ptr(st, c));
        ok(
            format!("vector_add n={n}"),
            dev.vector_add(pa, pb, pc, n as u32),
        )?;
        let (va, vb) = (Self::read_floats(st, a), Self::read_floats(st, b));
        let mut vc = vec![0f32; n];
        kernels::vector_add(&va, &vb, &mut vc);
        Self::write_floats(st, c, &vc);
        self.t.op("vector_add");
        self.maybe_check(dev, st, c)
    }

    fn op_saxpy(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let Some(n) = self.count(st) else {
            return Ok(());
        };
        let (Some(mut x), Some(y)) = (self.span(st, n), self.span(st, n)) else {
            return Ok(());
        };
        if y.partly(&x) {
            x = y;
        }
        self.ensure_nice(dev, st, x)?;
        self.ensure_nice(dev, st, y)?;
        let alpha = [0.5f32, 1.0, 1.5, -2.0, 0.25, 3.0][self.rng.index(6)];
        let (px, py) = (Self::ptr(st, x), Self::ptr(st, y));
        if self.rng.chance(0.3) {
            // The typed path: the layout asked from vgpud (FUNC_PARAM_INFO), arguments packed.
            let f = ok("saxpy function", dev.builtin_function(Builtin::Saxpy))?;
            let l = Launch::new(&f)
                .grid([(n as u32).div_ceil(256), 1, 1])
                .block([256, 1, 1])
                .arg_ptr(px)
                .arg_ptr(py)
                .arg_u32(n as u32)
                .arg_f32(alpha);
            ok(format!("saxpy (typed) n={n}"), dev.launch_function(&l))?;
        } else {
            ok(format!("saxpy n={n}"), dev.saxpy(px, py, n as u32, alpha))?;
        }
        let vx = Self::read_floats(st, x);
        let mut vy = Self::read_floats(st, y);
        kernels::saxpy(alpha, &vx, &mut vy);
        Self::write_floats(st, y, &vy);
        self.t.op("saxpy");
        self.maybe_check(dev, st, y)
    }

    fn op_sgemm(&mut self, dev: &Device, st: &mut State) -> R<()> {
        for _ in 0..4 {
            let m = self.rng.range(1, MAX_GEMM) as usize;
            let n = self.rng.range(1, MAX_GEMM) as usize;
            let k = self.rng.range(1, MAX_GEMM) as usize;
            let (Some(a), Some(b), Some(c)) = (
                self.span(st, m * k),
                self.span(st, k * n),
                self.span(st, m * n),
            ) else {
                continue;
            };
            if c.overlaps(&a) || c.overlaps(&b) {
                continue;
            }
            for s in [a, b, c] {
                self.ensure_nice(dev, st, s)?;
            }
            let alpha = [0.5f32, 1.0, -1.5, 2.0][self.rng.index(4)];
            let beta = [0.0f32, 1.0, 0.5, -2.0][self.rng.index(4)];
            let (pa, pb, pc) = (Self::ptr(st, a), Self::ptr(st, b), Self::ptr(st, c));
            ok(
                format!("sgemm {m}x{n}x{k}"),
                dev.sgemm(pa, pb, pc, m as u32, n as u32, k as u32, alpha, beta),
            )?;
            let (va, vb) = (Self::read_floats(st, a), Self::read_floats(st, b));
            let mut vc = Self::read_floats(st, c);
            kernels::sgemm(m, n, k, alpha, &va, &vb, beta, &mut vc);
            Self::write_floats(st, c, &vc);
            self.t.op("sgemm");
            return self.maybe_check(dev, st, c);
        }
        Ok(())
    }

    fn op_reduce(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let Some(n) = self.count(st) else {
            return Ok(());
        };
        for _ in 0..4 {
            let (Some(x), Some(out)) = (self.span(st, n), self.span(st, 1)) else {
                return Ok(());
            };
            if out.overlaps(&x) {
                continue;
            }
            self.ensure_nice(dev, st, x)?;
            if !sum_exact(&Self::read_floats(st, x)) {
                let data = self.rng.nice_bytes(n * 4);
                self.h2d(dev, st, x.bi, x.off * 4, &data)?;
            }
            let (px, po) = (Self::ptr(st, x), Self::ptr(st, out));
            ok(
                format!("reduce_sum n={n}"),
                dev.reduce_sum(px, po, n as u32),
            )?;
            let s = kernels::reduce_sum(&Self::read_floats(st, x));
            Self::write_floats(st, out, &[s]);
            self.t.op("reduce_sum");
            return self.maybe_check(dev, st, out);
        }
        Ok(())
    }

    /// Work on 1–4 streams at once (each stream on its own buffers, so the result does not
    /// depend on how the streams interleave), with events recorded, waited for, synchronized
    /// and timed.
    fn op_streams(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let k = self.rng.range(1, STREAM_IDS as u64) as usize;
        let mut ids: Vec<u32> = (1..=STREAM_IDS).collect();
        self.rng.shuffle(&mut ids);
        ids.truncate(k);
        let owner: Vec<usize> = (0..st.bufs.len()).map(|_| self.rng.index(k + 1)).collect();
        let mut pending = Vec::new();
        let mut events: Vec<(usize, vgpu_guest::Event<'_>)> = Vec::new();
        for (si, &id) in ids.iter().enumerate() {
            let s = dev.stream(id);
            let before = pending.len();
            let mine: Vec<usize> = (0..st.bufs.len()).filter(|&i| owner[i] == si).collect();
            for _ in 0..self.rng.range(1, 6) {
                let what = self.rng.below(8);
                let pick = |rng: &mut Rng| mine[rng.index(mine.len())];
                match what {
                    0 | 1 if !mine.is_empty() => {
                        let bi = pick(&mut self.rng);
                        let words = st.bufs[bi].data.len() / 4;
                        if words == 0 {
                            continue;
                        }
                        let n = self.rng.log_range(1, words as u64) as usize;
                        let off = self.rng.below((words - n + 1) as u64) as usize;
                        let v = self.rng.nice_f32().to_bits();
                        let p = ok(
                            "stream memset",
                            s.memset_d32(st.bufs[bi].ptr + (off * 4) as u64, v, n as u64),
                        )?;
                        pending.push((p, "stream memset_d32"));
                        for w in st.bufs[bi].data[off * 4..(off + n) * 4].chunks_exact_mut(4) {
                            w.copy_from_slice(&v.to_le_bytes());
                        }
                        self.t.op("stream_memset");
                    }
                    2 if !mine.is_empty() => {
                        let (sb, db) = (pick(&mut self.rng), pick(&mut self.rng));
                        let (ss, ds) = (st.bufs[sb].data.len(), st.bufs[db].data.len());
                        let len = self.rng.log_range(1, ss.min(ds) as u64) as usize;
                        let so = self.rng.below((ss - len + 1) as u64) as usize;
                        let dof = self.rng.below((ds - len + 1) as u64) as usize;
                        if sb == db && so < dof + len && dof < so + len {
                            continue;
                        }
                        let p = ok(
                            "stream d2d",
                            s.copy_dtod(
                                st.bufs[db].ptr + dof as u64,
                                st.bufs[sb].ptr + so as u64,
                                len as u64,
                            ),
                        )?;
                        pending.push((p, "stream d2d"));
                        let src = st.bufs[sb].data[so..so + len].to_vec();
                        st.bufs[db].data[dof..dof + len].copy_from_slice(&src);
                        self.t.op("stream_d2d");
                    }
                    3 | 4 if !mine.is_empty() => {
                        // vector_add or saxpy on this stream's buffers.
                        let most = mine.iter().map(|&i| st.bufs[i].data.len() / 4).max();
                        let Some(most) = most.filter(|&m| m > 0) else {
                            continue;
                        };
                        let n = self.rng.log_range(1, (most as u64).min(1 << 16)) as usize;
                        let fits: Vec<usize> = mine
                            .iter()
                            .copied()
                            .filter(|&i| st.bufs[i].data.len() / 4 >= n)
                            .collect();
                        let span = |rng: &mut Rng| {
                            let bi = fits[rng.index(fits.len())];
                            let e = st.bufs[bi].data.len() / 4;
                            Span {
                                bi,
                                off: rng.below((e - n + 1) as u64) as usize,
                                n,
                            }
                        };
                        let (mut a, mut b, c) = (
                            span(&mut self.rng),
                            span(&mut self.rng),
                            span(&mut self.rng),
                        );
                        if c.partly(&a) {
                            a = c;
                        }
                        if c.partly(&b) {
                            b = c;
                        }
                        // Inputs not nice: make them so on this very stream first (saxpy
                        // reads y = c as well).
                        let inputs = if what == 3 { [a, b] } else { [a, c] };
                        for x in inputs {
                            if !is_nice(&Self::read_floats(st, x)) {
                                let v = self.rng.nice_f32();
                                let p = ok(
                                    "stream memset",
                                    s.memset_d32(Self::ptr(st, x), v.to_bits(), x.n as u64),
                                )?;
                                pending.push((p, "stream memset_d32"));
                                Self::write_floats(st, x, &vec![v; x.n]);
                                self.t.op("stream_memset");
                            }
                        }
                        let body = if what == 3 {
                            let p = VectorAddParams {
                                a: Self::ptr(st, a),
                                b: Self::ptr(st, b),
                                c: Self::ptr(st, c),
                                n: n as u32,
                                _pad: 0,
                            };
                            LaunchBody::new(
                                Builtin::VectorAddF32.handle(),
                                [(n as u32).div_ceil(256), 1, 1],
                                [256, 1, 1],
                                p.as_bytes(),
                            )
                        } else {
                            let p = SaxpyParams {
                                x: Self::ptr(st, a),
                                y: Self::ptr(st, c),
                                n: n as u32,
                                alpha: 1.5,
                            };
                            LaunchBody::new(
                                Builtin::Saxpy.handle(),
                                [(n as u32).div_ceil(128), 1, 1],
                                [128, 1, 1],
                                p.as_bytes(),
                            )
                        }
                        .expect("built-in parameters fit");
                        let p = ok("stream launch", s.launch_body(body))?;
                        pending.push((p, "stream launch"));
                        let va = Self::read_floats(st, a);
                        if what == 3 {
                            let vb = Self::read_floats(st, b);
                            let mut vc = vec![0f32; n];
                            kernels::vector_add(&va, &vb, &mut vc);
                            Self::write_floats(st, c, &vc);
                            self.t.op("stream_vector_add");
                        } else {
                            // With a == c this is y = 1.5·y + y, as on the device.
                            let mut vc = Self::read_floats(st, c);
                            kernels::saxpy(1.5, &va, &mut vc);
                            Self::write_floats(st, c, &vc);
                            self.t.op("stream_saxpy");
                        }
                    }
                    5 => {
                        let us = self.rng.below(300) as u32;
                        let body = LaunchBody::busy(us);
                        pending.push((ok("stream busy", s.launch_body(body))?, "stream busy"));
                        self.t.op("stream_busy");
                    }
                    6 => {
                        let e = ok("create_event", dev.create_event())?;
                        pending.push((ok("event record", s.record(&e))?, "event record"));
                        events.push((si, e));
                        self.t.op("event_record");
                    }
                    7 if !events.is_empty() => {
                        let i = self.rng.index(events.len());
                        let p = ok("stream wait event", s.wait_event(&events[i].1))?;
                        pending.push((p, "stream wait event"));
                        self.t.op("event_wait");
                    }
                    _ => {}
                }
            }
            // vgpud counts a stream once a command named it.
            if pending.len() > before {
                st.streams.insert(id);
            }
        }
        self.rng.shuffle(&mut pending);
        for (p, what) in pending {
            ok(what, p.wait())?;
        }
        // Elapsed time between the first and last record of one stream is never negative.
        for si in 0..k {
            let mine: Vec<&vgpu_guest::Event<'_>> =
                events.iter().filter(|e| e.0 == si).map(|e| &e.1).collect();
            if mine.len() >= 2 {
                let ns = ok(
                    "event elapsed",
                    mine[mine.len() - 1].elapsed_ns_since(mine[0]),
                )?;
                self.t.op("event_elapsed");
                if ns < 0 {
                    return Err(Fail::Wrong(format!(
                        "{ns} ns between two records in order on one stream"
                    )));
                }
            }
        }
        if events.len() >= 2 {
            // Across streams: any sign, but it must answer.
            let (i, j) = (self.rng.index(events.len()), self.rng.index(events.len()));
            ok(
                "event elapsed (two streams)",
                events[i].1.elapsed_ns_since(&events[j].1),
            )?;
            self.t.op("event_elapsed");
        }
        for (_, e) in &events {
            if self.rng.chance(0.3) {
                ok("event synchronize", e.synchronize())?;
                self.t.op("event_synchronize");
            }
        }
        if self.rng.chance(0.5) {
            for &id in &ids {
                ok("stream synchronize", dev.stream(id).synchronize())?;
                st.streams.insert(id);
            }
        }
        ok("synchronize", dev.synchronize())?;
        self.t.op("streams");
        if !st.bufs.is_empty() && self.rng.chance(0.5) {
            let bi = self.rng.index(st.bufs.len());
            let len = st.bufs[bi].data.len();
            self.d2h_check(dev, st, bi, 0, len)?;
        }
        Ok(())
    }

    fn op_batch(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let n = self.rng.range(1, 64) as usize;
        let sqes: Vec<Sqe> = (0..n)
            .map(|i| {
                let c = if self.rng.chance(0.5) {
                    Command::Nop
                } else {
                    Command::GetInfo
                };
                c.encode(0, 1000 + i as u64)
            })
            .collect();
        let cqes: Vec<Cqe> = ok(format!("batch of {n}"), dev.submit_batch(&sqes))?;
        self.t.op("batch");
        if cqes.len() != n {
            return Err(Fail::Wrong(format!(
                "{} completions for {n} entries",
                cqes.len()
            )));
        }
        let mut seen = vec![false; n];
        for c in &cqes {
            let i = c.tag.wrapping_sub(1000) as usize;
            if i >= n || seen[i] || c.status != 0 {
                return Err(Fail::Wrong(format!("batch completion {c:?}")));
            }
            seen[i] = true;
            if sqes[i].opcode == Command::GetInfo.opcode() as u16
                && (c.result0, c.result1) != (st.used, GOOD_QUOTA)
            {
                return Err(Fail::Wrong(format!(
                    "batched get_info: {} used of {}, want {} of {GOOD_QUOTA}",
                    c.result0, c.result1, st.used
                )));
            }
        }
        Ok(())
    }

    /// cuda: a PTX module loaded, a kernel of it launched (checked), the module unloaded.
    fn op_module(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let reverse = self.rng.chance(0.5);
        let (ptx, name) = if reverse {
            (PTX_REVERSE, "block_reverse")
        } else {
            (PTX_VADD, "vadd")
        };
        let m = ok(format!("module load ({name})"), dev.load_module(ptx))?;
        self.t.op("module_load");
        let f = ok(format!("get function {name}"), m.function(name))?;
        for _ in 0..self.rng.range(1, 3) {
            let Some(n) = self.count(st) else { break };
            let n = n.min(1 << 16);
            if reverse {
                let (Some(inp), Some(out)) = (self.span(st, n), self.span(st, n)) else {
                    break;
                };
                if inp.overlaps(&out) {
                    continue;
                }
                self.ensure_nice(dev, st, inp)?;
                let block = [32u32, 64, 128, 256][self.rng.index(4)] as usize;
                let grid = n.div_ceil(block);
                let l = Launch::new(&f)
                    .grid([grid as u32, 1, 1])
                    .block([block as u32, 1, 1])
                    .shared_mem(block as u32 * 4)
                    .arg_ptr(Self::ptr(st, inp))
                    .arg_ptr(Self::ptr(st, out))
                    .arg_u32(n as u32);
                ok(format!("block_reverse n={n}"), dev.launch_function(&l))?;
                let vi = Self::read_floats(st, inp);
                let mut vo = Self::read_floats(st, out);
                for b in 0..grid {
                    for t in 0..block {
                        let (i, j) = (b * block + t, b * block + block - 1 - t);
                        if j < n {
                            vo[j] = vi.get(i).copied().unwrap_or(0.0) + b as f32;
                        }
                    }
                }
                Self::write_floats(st, out, &vo);
                self.t.op("module_block_reverse");
                self.maybe_check(dev, st, out)?;
            } else {
                let (Some(mut a), Some(mut b), Some(c)) =
                    (self.span(st, n), self.span(st, n), self.span(st, n))
                else {
                    break;
                };
                if c.partly(&a) {
                    a = c;
                }
                if c.partly(&b) {
                    b = c;
                }
                self.ensure_nice(dev, st, a)?;
                self.ensure_nice(dev, st, b)?;
                let l = Launch::new(&f)
                    .grid([(n as u32).div_ceil(256).min(64), 1, 1])
                    .block([256, 1, 1])
                    .arg_ptr(Self::ptr(st, a))
                    .arg_ptr(Self::ptr(st, b))
                    .arg_ptr(Self::ptr(st, c))
                    .arg_u32(n as u32);
                ok(format!("vadd n={n}"), dev.launch_function(&l))?;
                let (va, vb) = (Self::read_floats(st, a), Self::read_floats(st, b));
                let mut vc = vec![0f32; n];
                kernels::vector_add(&va, &vb, &mut vc);
                Self::write_floats(st, c, &vc);
                self.t.op("module_vadd");
                self.maybe_check(dev, st, c)?;
            }
        }
        if self.rng.chance(0.7) {
            ok("module unload", m.unload())?;
        } else {
            drop(m); // unloaded by Drop
        }
        self.t.op("module_unload");
        Ok(())
    }

    /// Busy kernels queued on a stream, then a reset: each completes or is aborted.
    fn op_reset_inflight(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let id = self.rng.range(1, STREAM_IDS as u64) as u32;
        let s = dev.stream(id);
        let mut pending = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            let us = self.rng.range(100, 3000) as u32;
            let body = LaunchBody::busy(us);
            pending.push(ok("stream busy", s.launch_body(body))?);
        }
        self.reset(dev, st)?;
        for p in pending {
            match p.wait() {
                Ok(_) => self.t.op("inflight_completed"),
                Err(e) if e.status() == Some(Status::Aborted) => self.t.status(Status::Aborted),
                Err(e) => return Err(Fail::from_err("busy in flight across a reset", e)),
            }
        }
        self.t.op("reset_inflight");
        Ok(())
    }

    /// The fault kernel: the context breaks (KERNEL_FAULT, then CONTEXT_LOST) until a reset.
    fn op_fault(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let lost = [Status::KernelFault, Status::ContextLost];
        let mut faulted = false;
        for (what, r) in [
            ("fault", dev.fault()),
            ("synchronize after a fault", dev.synchronize()),
        ] {
            match r {
                Ok(()) => {}
                Err(e) if e.status().is_some_and(|s| lost.contains(&s)) => {
                    faulted = true;
                    self.t.status(e.status().expect("matched"));
                }
                Err(e) => return Err(Fail::from_err(what, e)),
            }
        }
        if !faulted {
            return Err(Fail::Wrong(
                "the fault kernel and the synchronize after it both succeeded".into(),
            ));
        }
        match dev.alloc(64) {
            Err(e) if e.status() == Some(Status::ContextLost) => self.t.status(Status::ContextLost),
            Ok(_) => {
                return Err(Fail::Wrong(
                    "an allocation succeeded on a faulted context".into(),
                ))
            }
            Err(e) => return Err(Fail::from_err("alloc on a faulted context", e)),
        }
        self.t.op("fault");
        self.reset(dev, st)
    }

    fn op_probe_quota(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let rest = GOOD_QUOTA - st.used;
        self.t.op("probe_quota");
        if rest > 0 && rest <= (8 << 20) && st.bufs.len() < MAX_BUFS && self.rng.chance(0.4) {
            // Exactly the rest of the quota fits; one byte more does not.
            let Some(bi) = self.alloc_buf(dev, st, rest)? else {
                return Err(Fail::Unexpected(format!(
                    "alloc of the last {rest} B of the quota refused"
                )));
            };
            if self.alloc_buf(dev, st, 1)?.is_some() {
                return Err(Fail::Unexpected(
                    "alloc beyond a full quota succeeded".into(),
                ));
            }
            let b = st.bufs.swap_remove(bi);
            ok("free", dev.free(b.ptr))?;
            st.used -= b.data.len() as u64;
            return Ok(());
        }
        let size = if self.rng.chance(0.2) {
            1 << 40
        } else {
            rest + 1 + self.rng.below(1 << 20)
        };
        match self.alloc_buf(dev, st, size)? {
            None => Ok(()),
            Some(_) => Err(Fail::Unexpected(format!(
                "alloc of {size} B beyond the quota succeeded"
            ))),
        }
    }

    /// Allocates small buffers until `[limits] max_allocations` refuses one.
    fn op_probe_allocs(&mut self, dev: &Device, st: &mut State) -> R<()> {
        let mut extra = Vec::new();
        let mut refused = false;
        let mut out = Ok(());
        while st.bufs.len() + extra.len() <= LIMIT_ALLOCS {
            let held = st.bufs.len() + extra.len();
            if st.used + 256 > GOOD_QUOTA {
                break;
            }
            match dev.alloc(256) {
                Ok(p) => {
                    extra.push(p);
                    st.used += 256;
                }
                Err(e) if e.status() == Some(Status::LimitExceeded) && held >= LIMIT_ALLOCS => {
                    self.t.status(Status::LimitExceeded);
                    refused = true;
                    break;
                }
                Err(e) => {
                    out = Err(Fail::from_err(
                        format!("alloc number {} (limit {LIMIT_ALLOCS})", held + 1),
                        e,
                    ));
                    break;
                }
            }
        }
        if !refused && out.is_ok() && st.used + 256 <= GOOD_QUOTA {
            out = Err(Fail::Unexpected(format!(
                "max_allocations not enforced: allocation {} of a limit of {LIMIT_ALLOCS} succeeded",
                LIMIT_ALLOCS + 1
            )));
        }
        for p in extra {
            ok("free", dev.free(p))?;
            st.used -= 256;
        }
        self.t.op("probe_allocs");
        out
    }

    /// Uses new stream ids until `[limits] max_streams` refuses one, then resets (which
    /// forgets the streams).
    fn op_probe_streams(&mut self, dev: &Device, st: &mut State) -> R<()> {
        ok("synchronize stream 0", dev.stream(0).synchronize())?;
        st.streams.insert(0);
        let mut refused = false;
        let mut id = 1000u32;
        while st.streams.len() < (LIMIT_STREAMS + 2).min(MAX_STREAMS) {
            let count = st.streams.len() + 1;
            match dev.stream(id).synchronize() {
                Ok(()) => {
                    st.streams.insert(id);
                }
                Err(e)
                    if matches!(
                        e.status(),
                        Some(Status::LimitExceeded | Status::InvalidArgument)
                    ) =>
                {
                    if count <= LIMIT_STREAMS {
                        return Err(Fail::Unexpected(format!(
                            "stream number {count} refused ({e}); the limit is {LIMIT_STREAMS}"
                        )));
                    }
                    self.t.status(e.status().expect("matched"));
                    refused = true;
                    break;
                }
                Err(e) => return Err(Fail::from_err(format!("stream number {count}"), e)),
            }
            id += 1;
        }
        if !refused {
            return Err(Fail::Unexpected(format!(
                "max_streams not enforced: {} streams in use, the limit is {LIMIT_STREAMS}",
                st.streams.len()
            )));
        }
        self.t.op("probe_streams");
        self.reset(dev, st)
    }

    /// How a connection ends: everything freed, or memory left for vgpud to free, or work
    /// still in flight.
    fn leave(&mut self, dev: Device, st: &mut State) -> R<()> {
        match self.rng.below(5) {
            0 | 1 => {
                for b in st.bufs.drain(..) {
                    ok("free before leaving", dev.free(b.ptr))?;
                    self.t.op("free");
                }
                st.used = 0;
            }
            2 => {
                let s = dev.stream(self.rng.range(1, STREAM_IDS as u64) as u32);
                for _ in 0..self.rng.range(1, 8) {
                    let body = LaunchBody::busy(self.rng.range(100, 2000) as u32);
                    // Dropped at once: the command stays queued in vgpud as the client leaves.
                    drop(ok("stream busy", s.launch_body(body))?);
                }
                self.t.op("leave_inflight");
            }
            _ => self.t.op("leave_holding_memory"),
        }
        self.t.commands += dev.commands_submitted();
        drop(dev);
        Ok(())
    }
}

/// One good client: connects, works until the deadline (the warm-up: through the list of every
/// operation first), leaves.
fn good_client(
    env: &Env,
    prog: &Progress,
    socket: &Path,
    seed: u64,
    who: String,
    warmup: bool,
) -> Tally {
    let mut cx = Cx {
        who,
        rng: Rng::new(seed),
        t: Tally::default(),
        env,
    };
    let mut plan = warmup.then(|| {
        WARMUP
            .iter()
            .copied()
            .collect::<std::collections::VecDeque<_>>()
    });
    'conn: loop {
        if cx.t.failures > 10 || (plan.is_none() && cx.done()) {
            break;
        }
        prog.tick(env, "connect");
        let (dev, mut st) = match cx.connect(socket) {
            Ok(x) => x,
            Err(f) => {
                let who = cx.who.clone();
                cx.t.fail(&who, f);
                break;
            }
        };
        loop {
            let op = match plan.as_mut() {
                Some(p) if !p.is_empty() => p.pop_front().expect("not empty"),
                Some(_) => {
                    // The warm-up list is done: random work until the warm-up's deadline.
                    plan = None;
                    continue;
                }
                None if cx.done() => {
                    if let Err(f) = cx.leave(dev, &mut st) {
                        let who = cx.who.clone();
                        cx.t.fail(&who, f);
                    }
                    break 'conn;
                }
                None => cx.pick_op(),
            };
            let op = if op == Op::Module && !st.modules {
                Op::VectorAdd
            } else {
                op
            };
            prog.tick(env, op.name());
            if op == Op::Reconnect {
                cx.t.op("reconnect");
                if let Err(f) = cx.leave(dev, &mut st) {
                    let who = cx.who.clone();
                    cx.t.fail(&who, f);
                }
                continue 'conn;
            }
            if let Err(f) = cx.run_op(&dev, &mut st, op) {
                let who = format!("{} ({})", cx.who, op.name());
                cx.t.fail(&who, f);
                cx.t.commands += dev.commands_submitted();
                // A fresh connection: the state here is no longer known.
                continue 'conn;
            }
        }
    }
    prog.finished.store(true, Relaxed);
    cx.t
}

// ---- the hostile client -----------------------------------------------------------------------

/// The hostile actions.
const HOSTILE: &[&str] = &[
    "scribble",
    "malicious_ring",
    "malformed_submit",
    "wild_indices",
    "doorbell_storm",
    "reset_request",
    "reset_and_check",
    "alloc_flood",
    "stream_flood",
    "fault",
    "leave_inflight",
    "memfd",
    "exit_abruptly",
];

/// One life of the hostile client (a child process): random hostile actions on its VM until
/// `--hostile-life-ms` passed (or each once), then a JSON tally on stdout.
fn hostile_child(o: &Opts, socket: &Path) -> Result<()> {
    let mut rng = Rng::new(o.seed);
    let mut t = Tally::default();
    let hang = Duration::from_secs(o.hang_secs);
    let life = Duration::from_millis(o.hostile_life_ms);
    let t0 = Instant::now();
    let mut todo: Vec<&str> = if o.hostile_life_ms == 0 {
        HOSTILE
            .iter()
            .copied()
            .filter(|a| *a != "exit_abruptly")
            .collect()
    } else {
        Vec::new()
    };
    let mut first = true;
    loop {
        if o.hostile_life_ms == 0 {
            if todo.is_empty() {
                break;
            }
        } else if !first && t0.elapsed() >= life {
            break;
        }
        first = false;
        let mut session: Vec<&str> = if o.hostile_life_ms == 0 {
            std::mem::take(&mut todo)
        } else {
            (0..rng.range(1, 8))
                .map(|_| HOSTILE[rng.index(HOSTILE.len())])
                .collect()
        };
        if let Some(i) = session.iter().position(|a| *a == "memfd") {
            session.remove(i);
            if let Err(e) = hostile_memfd(&mut rng, &mut t, socket) {
                t.fail("hostile memfd", Fail::Unexpected(format!("{e:#}")));
            }
            t.op("hostile.memfd");
        }
        if session.is_empty() {
            continue;
        }
        match hostile_session(&mut rng, &mut t, socket, hang, &session) {
            Ok(true) => {}
            Ok(false) => {
                // exit_abruptly: the tally so far, then gone, work in flight and all.
                println!("{}", t.to_json());
                std::process::exit(0);
            }
            Err(f) => t.fail(
                &format!(
                    "hostile (--seed {} --hostile-life-ms {}, session {session:?})",
                    o.seed, o.hostile_life_ms
                ),
                f,
            ),
        }
        // The tally so far after every session: a life that is SIGKILLed still reports what
        // it saw (the manager takes the last complete line).
        println!("{}", t.to_json());
        std::thread::sleep(Duration::from_millis(rng.range(0, 3)));
    }
    println!("{}", t.to_json());
    Ok(())
}

fn connect_retry(socket: &Path, t: &mut Tally) -> R<Device> {
    let t0 = Instant::now();
    loop {
        match Device::connect(socket) {
            Ok(d) => return Ok(d),
            Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                return Err(Fail::Unexpected(format!(
                    "connecting to {}: {e}",
                    socket.display()
                )))
            }
            Err(_) => {
                t.note("connect_retry");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One connection of the hostile client doing `actions`; `Ok(false)`: exit the process now.
fn hostile_session(
    rng: &mut Rng,
    t: &mut Tally,
    socket: &Path,
    hang: Duration,
    actions: &[&str],
) -> R<bool> {
    let mut dev = connect_retry(socket, t)?;
    dev.set_timeout(hang);
    dev.set_eager_wait(false);
    let shm = dev.shm();
    let layout = dev.layout();
    // Whether raw writes may have broken the library's view of the rings (then only a reset
    // makes library calls meaningful again).
    let mut dirty = false;
    let repair_doorbell = || {
        shm.store_u32(
            std::mem::offset_of!(RegisterPage, host_peer_id),
            MEDIATOR_PEER_ID as u32,
        );
        shm.store_u32(std::mem::offset_of!(RegisterPage, doorbell_vector), 0);
    };
    let bad_sqe = |rng: &mut Rng| -> Sqe {
        let cmd = match rng.below(9) {
            0 => Command::CopyD2H {
                src: rng.next_u64(),
                staging_offset: rng.below(layout.staging_size + 4096),
                len: rng.below(1 << 20),
            },
            1 => Command::CopyH2D {
                dst: rng.next_u64() >> rng.below(64),
                staging_offset: rng.next_u64(),
                len: rng.next_u64(),
            },
            2 => Command::MemAlloc {
                size: rng.next_u64() >> rng.below(64) | 1,
            },
            3 => Command::MemFree {
                ptr: rng.next_u64(),
            },
            4 => Command::Memset {
                dst: rng.next_u64(),
                len: rng.next_u64() >> rng.below(64),
                value: rng.next_u64() as u32,
                width: rng.below(6) as u32,
            },
            5 => Command::Launch {
                launch: LaunchBody::busy(rng.below(MAX_KERNEL_US as u64 * 2) as u32),
            },
            6 => {
                let len = rng.index(73);
                Command::Launch {
                    launch: LaunchBody::new(
                        Builtin::ALL[rng.index(Builtin::ALL.len())].handle(),
                        [rng.next_u64() as u32, rng.below(3) as u32, 1],
                        [rng.below(2048) as u32, 1, 1],
                        &rng.bytes(len),
                    )
                    .expect("at most 72 bytes"),
                }
            }
            7 => Command::EventElapsed {
                start: rng.next_u64() as u32,
                end: rng.below(2000) as u32,
            },
            _ => Command::GetFunction {
                module: rng.next_u64(),
                staging_offset: rng.next_u64(),
                name_len: rng.next_u64(),
            },
        };
        let mut sqe = cmd.encode(rng.next_u64() as u32 >> rng.below(32), rng.next_u64());
        match rng.below(4) {
            0 => sqe.opcode = rng.next_u64() as u16,
            1 => sqe.flags = rng.next_u64() as u16,
            2 => sqe.body = rng.bytes(sqe.body.len()).try_into().expect("body size"),
            _ => {}
        }
        sqe
    };
    for &a in actions {
        t.op(&format!("hostile.{a}"));
        match a {
            "scribble" => {
                let (off, len) = if rng.chance(0.5) {
                    (0, shm.len())
                } else {
                    let len = rng.log_range(1, shm.len() as u64) as usize;
                    (rng.index(shm.len() - len + 1), len)
                };
                shm.write_bytes(off, &rng.bytes(len));
                dev.ring_doorbell();
                dirty = true;
            }
            "malicious_ring" => {
                for slot in 0..layout.sq_entries {
                    let sqe = bad_sqe(rng);
                    shm.write_bytes(layout.sqe_offset(slot), sqe.as_bytes());
                }
                let tail = layout.sq_offset as usize;
                let v = shm.load_u32(tail);
                shm.store_u32(
                    tail,
                    v.wrapping_add(rng.below(layout.sq_entries as u64 + 2) as u32),
                );
                dev.ring_doorbell();
                // Rewritten after the doorbell: vgpud must have copied what it validated.
                for slot in 0..layout.sq_entries {
                    shm.fill(layout.sqe_offset(slot), SQE_SIZE, rng.next_u64() as u8);
                }
                dirty = true;
            }
            "wild_indices" => {
                shm.store_u32(layout.cq_offset as usize + 64, rng.next_u64() as u32);
                shm.store_u32(layout.sq_offset as usize, rng.next_u64() as u32);
                if rng.chance(0.5) {
                    shm.store_u32(layout.sq_offset as usize + 128, rng.next_u64() as u32);
                }
                dev.ring_doorbell();
                dirty = true;
            }
            "doorbell_storm" => {
                for _ in 0..rng.range(1000, 20_000) {
                    dev.ring_doorbell();
                }
            }
            "reset_request" => {
                shm.store_u32(regs::REG_RESET_REQUEST, rng.next_u64() as u32);
                dev.ring_doorbell();
                dirty = true;
            }
            "exit_abruptly" => {
                if rng.chance(0.5) {
                    for _ in 0..rng.range(1, 32) {
                        shm.store_u32(layout.sq_offset as usize, rng.next_u64() as u32);
                    }
                    dev.ring_doorbell();
                }
                return Ok(false);
            }
            _ => {
                // The actions below go through the library: first a reset, which must bring
                // the device back whatever was written over it. The library rings the peer and
                // vector named in the register page: where the scribbles hit those, a guest
                // puts back what its ivshmem connection told it (else its doorbell goes
                // nowhere and vgpud only sees the reset request when another VM wakes it).
                if dirty {
                    repair_doorbell();
                }
                if dirty || rng.chance(0.3) {
                    ok("hostile reset", dev.reset())?;
                    t.op("hostile.reset");
                    dirty = false;
                }
                match a {
                    "malformed_submit" => {
                        let sqes: Vec<Sqe> = (0..rng.range(1, 64)).map(|_| bad_sqe(rng)).collect();
                        let c = ok("malformed batch", dev.submit_batch(&sqes))?;
                        for c in c {
                            match Status::from_raw(c.status) {
                                Some(s) => t.status(s),
                                None => t.note("unknown status"),
                            }
                        }
                        // A malformed entry may have been the fault kernel.
                        dirty = true;
                    }
                    "reset_and_check" => {
                        repair_doorbell();
                        ok("hostile reset", dev.reset())?;
                        dirty = false;
                        hostile_check(rng, &dev).map_err(|f| match f {
                            Fail::Wrong(m) => Fail::Wrong(format!("after a reset: {m}")),
                            Fail::Hang(m) => Fail::Hang(format!("after a reset: {m}")),
                            Fail::Unexpected(m) => Fail::Unexpected(format!("after a reset: {m}")),
                        })?;
                    }
                    "alloc_flood" => {
                        for _ in 0..rng.range(10, 200) {
                            match dev.alloc(rng.log_range(1, 8 << 20)) {
                                Ok(_) => t.op("hostile.alloc"),
                                Err(e) => match e.status() {
                                    Some(s @ (Status::QuotaExceeded | Status::LimitExceeded)) => {
                                        t.status(s)
                                    }
                                    _ => return Err(Fail::from_err("hostile alloc", e)),
                                },
                            }
                        }
                    }
                    "stream_flood" => {
                        for _ in 0..rng.range(10, 100) {
                            let id = rng.next_u64() as u32;
                            match dev.stream(id).synchronize() {
                                Ok(()) => {}
                                Err(e) => match e.status() {
                                    Some(s @ (Status::LimitExceeded | Status::InvalidArgument)) => {
                                        t.status(s)
                                    }
                                    _ => return Err(Fail::from_err("hostile stream", e)),
                                },
                            }
                        }
                    }
                    "fault" => {
                        let _ = dev.fault();
                        let _ = dev.synchronize();
                        dirty = true;
                    }
                    "leave_inflight" => {
                        for _ in 0..rng.range(1, 32) {
                            let body =
                                LaunchBody::busy(rng.range(1000, MAX_KERNEL_US as u64) as u32);
                            let s = dev.stream(rng.range(0, 3) as u32);
                            drop(ok("hostile busy", s.launch_body(body))?);
                        }
                        return Ok(true); // dropped with the work queued
                    }
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_micros(rng.range(0, 2000)));
    }
    Ok(true)
}

/// After a reset, the hostile VM's device must work, bit-exactly.
fn hostile_check(rng: &mut Rng, dev: &Device) -> R<()> {
    let n = rng.range(1, 8192) as usize;
    let x: Vec<f32> = (0..n).map(|_| rng.nice_f32()).collect();
    let y: Vec<f32> = (0..n).map(|_| rng.nice_f32()).collect();
    let px = ok("alloc", dev.alloc(n as u64 * 4))?;
    let py = ok("alloc", dev.alloc(n as u64 * 4))?;
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    ok("h2d", dev.copy_htod(px, &bytes(&x)))?;
    ok("h2d", dev.copy_htod(py, &bytes(&y)))?;
    ok("saxpy", dev.saxpy(px, py, n as u32, 2.0))?;
    let mut out = vec![0u8; n * 4];
    ok("d2h", dev.copy_dtoh(&mut out, py))?;
    let mut want = y;
    kernels::saxpy(2.0, &x, &mut want);
    compare("hostile saxpy", &out, &bytes(&want))?;
    ok("free", dev.free(px))?;
    ok("free", dev.free(py))
}

/// Receives one ivshmem server message: an i64 and at most one fd.
fn hostile_memfd(rng: &mut Rng, t: &mut Tally, socket: &Path) -> Result<()> {
    use rustix::fs::SealFlags;
    let t0 = Instant::now();
    let (sock, shm, doorbell) = loop {
        let attempt = (|| -> Result<_> {
            let sock = UnixStream::connect(socket)?;
            sock.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut setup = read_setup(&sock)?;
            let doorbell = setup
                .peers
                .get_mut(&MEDIATOR_PEER_ID)
                .and_then(|v| (!v.is_empty()).then(|| v.swap_remove(0)))
                .context("no doorbell")?;
            Ok((sock, setup.shm, doorbell))
        })();
        match attempt {
            Ok(x) => break x,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => {
                t.note("connect_retry");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let ring = || {
        let _ = rustix::io::write(&doorbell, &1u64.to_ne_bytes());
    };
    let len = rustix::fs::fstat(&shm)?.st_size as u64;
    let seals = rustix::fs::fcntl_get_seals(&shm)?;
    for (flag, name) in [
        (SealFlags::SHRINK, "shrink"),
        (SealFlags::GROW, "grow"),
        (SealFlags::SEAL, "seal"),
    ] {
        if !seals.contains(flag) {
            t.note(&format!("memfd without F_SEAL_{}", name.to_uppercase()));
        }
    }
    let targets = [0, len / 2, len.saturating_sub(4096), len + 4096, len * 2];
    for _ in 0..rng.range(1, 3) {
        let to = targets[rng.index(targets.len())];
        match rustix::fs::ftruncate(&shm, to) {
            Ok(()) => {
                t.fail(
                    "hostile memfd",
                    Fail::Unexpected(format!(
                        "ftruncate of the VM's memfd from {len} to {to} B succeeded"
                    )),
                );
                ring();
                std::thread::sleep(Duration::from_millis(20));
                let _ = rustix::fs::ftruncate(&shm, len);
            }
            Err(e) => t.note(&format!("ftruncate refused ({e})")),
        }
    }
    for (flag, name) in [
        (SealFlags::WRITE, "write"),
        (SealFlags::FUTURE_WRITE, "future_write"),
    ] {
        if rng.chance(0.5) {
            match rustix::fs::fcntl_add_seals(&shm, flag) {
                Ok(()) => t.note(&format!("memfd accepted F_SEAL_{}", name.to_uppercase())),
                Err(_) => t.note("add_seals refused"),
            }
        }
    }
    for _ in 0..rng.range(1, 100) {
        ring();
    }
    if rng.chance(0.3) {
        // The ivshmem protocol has no client → server data: vgpud must drop us.
        let _ = rustix::io::write(sock.as_fd(), b"hostile bytes");
        t.op("hostile.socket_write");
    }
    drop(sock);
    Ok(())
}

/// Respawns the hostile child for the whole run, killing some lives in the middle.
fn hostile_manager(env: &Env, prog: &Progress, socket: &Path, o: &Opts, warmup: bool) -> Tally {
    let mut t = Tally::default();
    let mut rng = Rng::new(mix(o.seed, 0xbad));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            t.fail("hostile", Fail::Unexpected(format!("current_exe: {e}")));
            prog.finished.store(true, Relaxed);
            return t;
        }
    };
    let mut life = 0u64;
    loop {
        // The warm-up's first life does every action once.
        let all_once = warmup && life == 0;
        if !all_once && (env.stop.load(Relaxed) || Instant::now() >= env.deadline) {
            break;
        }
        life += 1;
        prog.tick(env, "hostile life");
        let ms = if all_once { 0 } else { rng.range(200, 3000) };
        let kill_after =
            (!all_once && rng.chance(0.3)).then(|| Duration::from_millis(rng.range(5, ms.max(6))));
        let child = Proc::new(&exe)
            .args(["soak", "--hostile-child"])
            .arg(socket)
            .args(["--seed", &mix(o.seed, life).to_string()])
            .args(["--hostile-life-ms", &ms.to_string()])
            .args(["--hang-secs", &o.hang_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                t.fail(
                    "hostile",
                    Fail::Unexpected(format!("spawning the child: {e}")),
                );
                break;
            }
        };
        // Drain the pipes as it runs (a full pipe would stall it).
        let mut out_pipe = child.stdout.take().expect("piped");
        let mut err_pipe = child.stderr.take().expect("piped");
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out_pipe.read_to_string(&mut s);
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let started = Instant::now();
        let limit = Duration::from_millis(ms) + env.hang * 2 + Duration::from_secs(10);
        let mut killed = false;
        let mut hung = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(e) => {
                    t.fail(
                        "hostile",
                        Fail::Unexpected(format!("waiting for the child: {e}")),
                    );
                    break None;
                }
            }
            if !killed && kill_after.is_some_and(|k| started.elapsed() >= k) {
                let _ = child.kill();
                killed = true;
            }
            if !killed && started.elapsed() > limit {
                hung = true;
                let _ = child.kill();
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = out_t.join().unwrap_or_default();
        let err = err_t.join().unwrap_or_default();
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(5)..].join(" | ")
        };
        if hung {
            t.fail(
                "hostile",
                Fail::Hang(format!(
                    "a hostile life of {ms} ms still running after {:?}: {}",
                    started.elapsed(),
                    tail(&err)
                )),
            );
        }
        let parsed = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok());
        match (status, parsed) {
            (Some(s), Some(v)) if s.success() => {
                t.merge(&Tally::from_json(&v));
                t.op("hostile.life");
            }
            (Some(_), v) if killed && !hung => {
                if let Some(v) = v {
                    t.merge(&Tally::from_json(&v));
                }
                t.op("hostile.killed");
            }
            (Some(s), _) if !hung => t.fail(
                "hostile",
                Fail::Unexpected(format!("the hostile child exited with {s}: {}", tail(&err))),
            ),
            _ => {}
        }
    }
    prog.finished.store(true, Relaxed);
    t
}

// ---- vgpud's resources ------------------------------------------------------------------------

/// What vgpud holds, read from /proc (and nvidia-smi).
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    rss_kib: u64,
    /// VmRSS's parts: anonymous, file-backed, shared memory (the VMs' memfds).
    rss_anon_kib: u64,
    rss_file_kib: u64,
    rss_shmem_kib: u64,
    fds: usize,
    threads: usize,
    workers: usize,
    gpu_mib: Option<Vec<u64>>,
}

impl Figures {
    fn read(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status (is vgpud gone?)"))?;
        let kib = |key: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        let rss_kib = kib("VmRSS:").context("no VmRSS")?;
        let count = |d: String| -> Result<usize> {
            Ok(std::fs::read_dir(&d)
                .with_context(|| format!("listing {d}"))?
                .count())
        };
        Ok(Self {
            rss_kib,
            rss_anon_kib: kib("RssAnon:").unwrap_or(0),
            rss_file_kib: kib("RssFile:").unwrap_or(0),
            rss_shmem_kib: kib("RssShmem:").unwrap_or(0),
            fds: count(format!("/proc/{pid}/fd"))?,
            threads: count(format!("/proc/{pid}/task"))?,
            workers: children(pid),
            gpu_mib: gpu_memory_used(),
        })
    }

    /// Counts other than RSS and GPU memory.
    fn counts(&self) -> (usize, usize, usize) {
        (self.fds, self.threads, self.workers)
    }

    fn line(&self) -> String {
        let gpu = match &self.gpu_mib {
            Some(v) => format!(
                ", GPU memory used {} MiB",
                v.iter().map(u64::to_string).collect::<Vec<_>>().join("+")
            ),
            None => String::new(),
        };
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            "RSS {:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1}), {} fds, {} threads, {} worker processes{gpu}",
            mib(self.rss_kib),
            mib(self.rss_anon_kib),
            mib(self.rss_file_kib),
            mib(self.rss_shmem_kib),
            self.fds,
            self.threads,
            self.workers
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "rss_kib": self.rss_kib,
            "rss_anon_kib": self.rss_anon_kib,
            "rss_file_kib": self.rss_file_kib,
            "rss_shmem_kib": self.rss_shmem_kib,
            "fds": self.fds,
            "threads": self.threads,
            "workers": self.workers,
            "gpu_mem_used_mib": self.gpu_mib,
        })
    }
}

/// vgpud's resident memory by mapping (`/proc/PID/smaps`): the largest `n`, as
/// `(what, KiB)`; anonymous mappings are named by their address range.
fn rss_by_mapping(pid: u32, n: usize) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            name = match fields.get(5) {
                Some(p) => p.to_string(),
                None => format!("anon {first}"),
            };
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if kib > 0 {
                out.push((name.clone(), kib));
            }
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.1));
    out.truncate(n);
    out
}

/// Processes whose parent is `pid` (zombies included: not yet reaped is not yet gone).
fn children(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| {
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .count()
}

/// `nvidia-smi --query-gpu=memory.used` per GPU in MiB, where nvidia-smi works.
fn gpu_memory_used() -> Option<Vec<u64>> {
    let out = Proc::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    (!v.is_empty()).then_some(v)
}

/// Reads the figures until the counts settle: equal to `target` when one is given, else equal
/// in three readings in a row; at most [`SETTLE`]. Returns the last reading.
fn settle(pid: u32, target: Option<&Figures>) -> Result<Figures> {
    let t0 = Instant::now();
    let mut last = Figures::read(pid)?;
    let mut same = 0;
    loop {
        let done = match target {
            Some(t) => {
                last.counts() == t.counts()
                    && match (&last.gpu_mib, &t.gpu_mib) {
                        (Some(a), Some(b)) => a.iter().zip(b).all(|(x, y)| x <= y),
                        _ => true,
                    }
            }
            None => same >= 2,
        };
        if done || t0.elapsed() >= SETTLE {
            return Ok(last);
        }
        std::thread::sleep(Duration::from_millis(250));
        let next = Figures::read(pid)?;
        same = if next.counts() == last.counts() {
            same + 1
        } else {
            0
        };
        last = next;
    }
}

// ---- the run ----------------------------------------------------------------------------------

fn config(o: &Opts) -> Result<(String, Vec<VmDef>)> {
    let backend = match o.backend.as_str() {
        b @ ("cpu" | "cuda") => b,
        b => bail!("--backend must be cpu or cuda, not {b:?}"),
    };
    let isolation = match o.isolation.as_deref() {
        None => String::new(),
        Some(i @ ("process" | "none")) => format!("fault_isolation = \"{i}\"\n"),
        Some(i) => bail!("--isolation must be process or none, not {i:?}"),
    };
    if backend == "cuda" && o.isolation.as_deref() == Some("none") {
        bail!(
            "--isolation none on cuda: a kernel fault breaks every VM's context there (by \
             design), and this soak's clients fault on purpose"
        );
    }
    let head = format!(
        "[mediator]\nbackend = \"{backend}\"\npoll_us = 50\nmax_kernel_us = {MAX_KERNEL_US}\n\
         {isolation}\n[limits]\nmax_allocations = {LIMIT_ALLOCS}\nmax_streams = {LIMIT_STREAMS}\n"
    );
    let mut vms: Vec<VmDef> = (0..o.clients)
        .map(|i| VmDef {
            name: format!("soak{i:02}"),
            extra: format!("mem_quota = {GOOD_QUOTA}\nshm_size = {GOOD_SHM}\n"),
        })
        .collect();
    vms.push(VmDef {
        name: "hostile".into(),
        extra: format!("mem_quota = {HOSTILE_QUOTA}\nshm_size = {HOSTILE_SHM}\n"),
    });
    Ok((head, vms))
}

/// One round of every client, concurrently: the warm-up (`warmup`) or the soak itself.
/// Returns the good clients' tally, the hostile tally, and failures of the run itself.
fn round(
    o: &Opts,
    d: &mut Daemon,
    env: &Arc<Env>,
    warmup: bool,
    run_failures: &mut Vec<String>,
) -> (Tally, Tally) {
    let mut progs: Vec<Arc<Progress>> = Vec::new();
    let mut good = Vec::new();
    for i in 0..o.clients {
        let prog = Arc::new(Progress::default());
        progs.push(prog.clone());
        let env = env.clone();
        let socket = d.socket(&format!("soak{i:02}"));
        let seed = mix(o.seed, i as u64 + if warmup { 1000 } else { 0 });
        good.push(
            std::thread::Builder::new()
                .name(format!("soak{i:02}"))
                .spawn(move || {
                    good_client(&env, &prog, &socket, seed, format!("soak{i:02}"), warmup)
                })
                .expect("spawning a client thread"),
        );
    }
    let hostile = (!o.no_hostile).then(|| {
        let prog = Arc::new(Progress::default());
        progs.push(prog.clone());
        let env = env.clone();
        let socket = d.socket("hostile");
        let o = o.clone();
        std::thread::Builder::new()
            .name("hostile".into())
            .spawn(move || hostile_manager(&env, &prog, &socket, &o, warmup))
            .expect("spawning the hostile thread")
    });
    let names: Vec<String> = (0..o.clients)
        .map(|i| format!("soak{i:02}"))
        .chain(std::iter::once("hostile".to_string()))
        .collect();
    // Watch: vgpud alive, every client making progress; a line every 10 s.
    let stuck_after = env.hang + Duration::from_secs(15);
    let mut last_report = Instant::now();
    let mut vgpud_dead = false;
    let mut given_up = false;
    loop {
        if progs.iter().all(|p| p.finished.load(Relaxed)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if !vgpud_dead {
            if let Ok(Some(st)) = d.try_wait() {
                vgpud_dead = true;
                run_failures.push(format!("vgpud exited during the run: {st}"));
                eprintln!("soak: vgpud exited: {st}\n{}", d.log_tail(30));
                env.stop.store(true, Relaxed);
            }
        }
        let now_ms = env.t0.elapsed().as_millis() as u64;
        for (p, name) in progs.iter().zip(&names) {
            let idle = Duration::from_millis(now_ms.saturating_sub(p.last_ms.load(Relaxed)));
            if !p.finished.load(Relaxed) && idle > stuck_after && !given_up {
                let op = *p.op.lock().unwrap_or_else(|e| e.into_inner());
                run_failures.push(format!(
                    "HANG: {name} made no progress for {idle:?} (in {op})"
                ));
                env.stop.store(true, Relaxed);
                given_up = true;
            }
        }
        if given_up {
            // Give the others a moment to leave, then report without the stuck one.
            std::thread::sleep(env.hang);
            break;
        }
        if !warmup && last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let left = env.deadline.saturating_duration_since(Instant::now());
            println!(
                "soak: {:.0} s in, {:.0} s left; vgpud {}",
                env.t0.elapsed().as_secs_f64(),
                left.as_secs_f64(),
                Figures::read(d.pid())
                    .map(|f| f.line())
                    .unwrap_or_else(|e| format!("{e:#}"))
            );
        }
    }
    let mut tally = Tally::default();
    for h in good {
        if h.is_finished() {
            match h.join() {
                Ok(t) => tally.merge(&t),
                Err(_) => run_failures.push("a client thread panicked".into()),
            }
        }
    }
    let mut htally = Tally::default();
    if let Some(h) = hostile {
        if h.is_finished() {
            match h.join() {
                Ok(t) => htally = t,
                Err(_) => run_failures.push("the hostile thread panicked".into()),
            }
        }
    }
    (tally, htally)
}

fn run(o: &Opts) -> Result<Value> {
    anyhow::ensure!(o.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(o.minutes > 0.0, "--minutes must be positive");
    let (head, vms) = config(o)?;
    let cuda = o.backend == "cuda";
    println!(
        "soak: vgpud ({} backend{}) with {} VMs: {} clients doing random work{}, {} min, seed {}",
        o.backend,
        o.isolation
            .as_deref()
            .map(|i| format!(", fault_isolation {i}"))
            .unwrap_or_default(),
        vms.len(),
        o.clients,
        if o.no_hostile { "" } else { " + 1 hostile" },
        o.minutes,
        o.seed
    );
    let mut d = Daemon::with_config_at("soak", &head, &vms, "info")?;
    let pid = d.pid();
    let mut run_failures: Vec<String> = Vec::new();
    let hang = Duration::from_secs(o.hang_secs);

    // Warm-up: every kind of client served once, every operation done once, then a few
    // seconds of everything at once.
    let t_warm = Instant::now();
    let env = Arc::new(Env {
        cuda,
        hang,
        t0: Instant::now(),
        deadline: Instant::now() + Duration::from_secs_f64(o.warmup_secs.max(0.0)),
        stop: AtomicBool::new(false),
    });
    let (warm, warm_h) = round(o, &mut d, &env, true, &mut run_failures);
    println!(
        "soak: warm-up round: {} operations, hostile {} actions, in {:.1} s",
        warm.ops_total(),
        warm_h.ops_total(),
        t_warm.elapsed().as_secs_f64()
    );
    let start = settle(pid, None)?;
    let start_maps = rss_by_mapping(pid, 8);
    println!("soak: vgpud at the start: {}", start.line());

    // The soak.
    let dur = Duration::from_secs_f64(o.minutes * 60.0);
    let env = Arc::new(Env {
        cuda,
        hang,
        t0: Instant::now(),
        deadline: Instant::now() + dur,
        stop: AtomicBool::new(false),
    });
    let (good, hostile) = round(o, &mut d, &env, false, &mut run_failures);
    let elapsed = env.t0.elapsed().as_secs_f64();
    // The figures below are the soak's; what failed in the warm-up fails the run too.
    for (t, who) in [(&warm, "warm-up"), (&warm_h, "hostile warm-up")] {
        for m in &t.messages {
            run_failures.push(format!("{who}: {m}"));
        }
        if t.failures as usize > t.messages.len() {
            run_failures.push(format!(
                "{who}: {} more failures",
                t.failures as usize - t.messages.len()
            ));
        }
    }
    let hostile_all = hostile;

    // Every client has left: resources back?
    let alive = matches!(d.try_wait(), Ok(None));
    let end = if alive {
        Some(settle(pid, Some(&start))?)
    } else {
        None
    };
    let mut checks = serde_json::Map::new();
    if let Some(end) = &end {
        println!("soak: vgpud at the end:   {}", end.line());
        let growth = (end.rss_kib as f64 - start.rss_kib as f64) / start.rss_kib as f64 * 100.0;
        let mut check = |name: &str, good: bool, what: String| {
            checks.insert(name.into(), json!(good));
            if !good {
                run_failures.push(what);
            }
        };
        check(
            "fds",
            end.fds == start.fds,
            format!(
                "vgpud's open fds: {} at the start, {} at the end",
                start.fds, end.fds
            ),
        );
        check(
            "threads",
            end.threads == start.threads,
            format!(
                "vgpud's threads: {} at the start, {} at the end",
                start.threads, end.threads
            ),
        );
        check(
            "workers",
            end.workers == start.workers,
            format!(
                "vgpud's worker processes: {} at the start, {} at the end",
                start.workers, end.workers
            ),
        );
        if growth > o.rss_tolerance_pct {
            let fmt = |v: &[(String, u64)]| {
                v.iter()
                    .map(|(k, v)| format!("{k} {v} KiB"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "soak: vgpud's largest mappings at the start: {}",
                fmt(&start_maps)
            );
            println!(
                "soak: vgpud's largest mappings at the end:   {}",
                fmt(&rss_by_mapping(pid, 8))
            );
        }
        check(
            "rss",
            growth <= o.rss_tolerance_pct,
            format!(
                "vgpud's RSS grew {growth:.1} % ({} → {} KiB; at most {} % allowed)",
                start.rss_kib, end.rss_kib, o.rss_tolerance_pct
            ),
        );
        if let (Some(a), Some(b)) = (&start.gpu_mib, &end.gpu_mib) {
            check(
                "gpu_memory",
                b.iter().zip(a).all(|(e, s)| e <= s),
                format!("GPU memory used: {a:?} MiB at the start, {b:?} MiB at the end"),
            );
        }
    }

    // vgpud's own accounting: nothing connected, nothing held, no good VM fenced.
    let mut stats = Value::Null;
    if alive {
        match d.stats() {
            Ok(s) => {
                for v in s["vms"].as_array().cloned().unwrap_or_default() {
                    let name = v["name"].as_str().unwrap_or("?").to_string();
                    if v["connected"] == true {
                        run_failures.push(format!("vgpud still reports {name} connected"));
                    }
                    if v["mem_used"].as_u64().unwrap_or(0) != 0 {
                        run_failures.push(format!(
                            "vgpud still accounts {} B of device memory to {name}",
                            v["mem_used"]
                        ));
                    }
                    if name != "hostile" && v["fences"].as_u64().unwrap_or(0) != 0 {
                        run_failures.push(format!("good VM {name} was fenced: {v}"));
                    }
                }
                stats = s;
            }
            Err(e) => run_failures.push(format!("vgpud's admin socket: {e:#}")),
        }
    }
    let panics = d.log_lines("panicked");
    if !panics.is_empty() {
        run_failures.push(format!("vgpud's log: {}", panics.join(" | ")));
    }
    let log_copy = std::env::temp_dir().join(format!("vgpu-soak-{}-vgpud.log", std::process::id()));
    let _ = std::fs::copy(&d.log, &log_copy);
    match d.stop_within(Duration::from_secs(10)) {
        Ok(st) if st.success() => {}
        Ok(st) => run_failures.push(format!("vgpud exited with {st} on SIGTERM")),
        Err(e) => run_failures.push(format!("stopping vgpud: {e:#}")),
    }

    // Summary.
    let ops = good.ops_total();
    let hostile_failures: Vec<String> = hostile_all.messages.clone();
    let failures = good.failures + hostile_all.failures + run_failures.len() as u64;
    let wrong = good.wrong + hostile_all.wrong + warm.wrong + warm_h.wrong;
    let passed = failures == 0 && wrong == 0;
    println!(
        "soak: {} good-client operations in {elapsed:.1} s = {:.0} ops/s ({} commands = {:.0}/s), {:.1} MiB read back and compared",
        ops,
        ops as f64 / elapsed,
        good.commands,
        good.commands as f64 / elapsed,
        good.bytes_checked as f64 / (1 << 20) as f64
    );
    println!("soak: ops by kind: {}", fmt_map(&good.ops));
    println!(
        "soak: error statuses explained by the work: {}",
        fmt_map(&good.statuses)
    );
    println!("soak: wrong results: {wrong}");
    println!("soak: notes: {}", fmt_map(&good.notes));
    println!("soak: hostile actions: {}", fmt_map(&hostile_all.ops));
    println!("soak: hostile statuses: {}", fmt_map(&hostile_all.statuses));
    println!("soak: hostile notes: {}", fmt_map(&hostile_all.notes));
    let all_msgs: Vec<String> = good
        .messages
        .iter()
        .chain(&hostile_failures)
        .chain(&run_failures)
        .cloned()
        .collect();
    for m in &all_msgs {
        println!("soak: FAILURE: {m}");
    }
    if !passed {
        println!("soak: vgpud's log: {}", log_copy.display());
    } else {
        let _ = std::fs::remove_file(&log_copy);
    }
    println!(
        "soak: {}",
        if passed {
            "PASSED".to_string()
        } else {
            format!("FAILED ({failures} failures)")
        }
    );
    Ok(json!({
        "backend": o.backend,
        "isolation": o.isolation,
        "clients": o.clients,
        "hostile": !o.no_hostile,
        "minutes": o.minutes,
        "seed": o.seed,
        "duration_s": elapsed,
        "ops_total": ops,
        "ops_per_s": ops as f64 / elapsed,
        "commands": good.commands,
        "commands_per_s": good.commands as f64 / elapsed,
        "good": good.to_json(),
        "wrong_results": wrong,
        "hostile_tally": hostile_all.to_json(),
        "vgpud_start": start.to_json(),
        "vgpud_end": end.as_ref().map(Figures::to_json),
        "rss_growth_pct": end.as_ref().map(|e| (e.rss_kib as f64 - start.rss_kib as f64) / start.rss_kib as f64 * 100.0),
        "checks": checks,
        "vgpud_stats": stats,
        "failures": all_msgs,
        "passed": passed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sums() {
        let mut r = Rng::new(3);
        let v: Vec<f32> = (0..100_000).map(|_| r.nice_f32()).collect();
        assert!(sum_exact(&v));
        assert!(!sum_exact(&[1e30, 1e-30]));
        assert!(!sum_exact(&[f32::NAN]));
        assert!(sum_exact(&[0.0, -0.0]));
        assert!(sum_exact(&[1.0, 2.0, 3.5]));
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let v = r.log_range(3, 5000);
            assert!((3..=5000).contains(&v));
            let w = r.range(1, 1);
            assert_eq!(w, 1);
        }
        assert!(r.log_range(1, u64::MAX) >= 1);
    }

    #[test]
    fn spans() {
        let a = Span {
            bi: 0,
            off: 0,
            n: 4,
        };
        let b = Span {
            bi: 0,
            off: 3,
            n: 4,
        };
        let c = Span {
            bi: 1,
            off: 0,
            n: 4,
        };
        assert!(a.partly(&b) && !a.partly(&a) && !a.overlaps(&c));
    }

    #[test]
    fn children_of_nobody() {
        assert_eq!(children(u32::MAX), 0);
    }
}
