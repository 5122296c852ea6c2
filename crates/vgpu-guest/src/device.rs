//! The vGPU as a program sees it: commands in, completions out.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vgpu_abi::cmd::{
    BusyParams, Command, LaunchBody, ReduceParams, SaxpyParams, SgemmParams, VectorAddParams,
};
use vgpu_abi::regs::{self, off};
use vgpu_abi::ring::{CqConsumer, SqProducer};
use vgpu_abi::{
    Builtin, Cqe, DeviceStatus, Layout, LayoutError, Opcode, RegisterPage, ShmView, Sqe, Status,
};
use zerocopy::IntoBytes;

use crate::transport::{PciTransport, SocketTransport, Transport};
use crate::wait::Backoff;
use crate::Error;

/// Default time to wait for one completion (TCG VMs are slow).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest piece of a host ↔ device copy staged at once.
pub const MAX_COPY_CHUNK: u64 = 1 << 20;
/// Threads per block used by the typed built-in helpers for 1-D kernels.
const BLOCK_1D: u32 = 256;
/// The longest single wait on the completion interrupt (the interrupt usually ends it; the
/// bound keeps fence and timeout checks going).
const IRQ_WAIT: Duration = Duration::from_millis(2);
/// Block edge used by [`Device::sgemm`].
const BLOCK_2D: u32 = 16;

/// A fresh reading of the device's register page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The VM's id.
    pub vm_id: u32,
    /// The VM's pool.
    pub pool_id: u32,
    /// The VM's priority (0 = lowest).
    pub priority: u32,
    /// The device status, when it is a known value (see `status_raw` for the exact value).
    pub status: Option<DeviceStatus>,
    /// The raw device status register.
    pub status_raw: u32,
    /// Last error code (a [`Status`] or a fence reason); 0 = none.
    pub last_error: u32,
    /// `CAP_*` bits (see [`vgpu_abi::regs`]).
    pub capabilities: u64,
    /// ABI version, `major << 16 | minor`.
    pub abi_version: u32,
    /// The VM's name.
    pub vm_name: String,
    /// The backing device's name.
    pub device_name: String,
    /// Backend id (1 = cpu, 2 = cuda).
    pub backend: u32,
    /// This VM's device memory quota in bytes.
    pub mem_quota: u64,
    /// Size of the staging area in bytes.
    pub staging_size: u64,
    /// Incremented at each (re)initialisation of the device.
    pub generation: u32,
    /// Total memory of the physical device backing this vGPU.
    pub device_total_mem: u64,
    /// Size of BAR2 in bytes.
    pub shm_size: u64,
    /// Submission ring entries.
    pub sq_entries: u32,
    /// Completion ring entries.
    pub cq_entries: u32,
    /// Longest busy kernel accepted, in microseconds.
    pub max_kernel_us: u32,
}

impl DeviceInfo {
    fn from_regs(r: &RegisterPage) -> Self {
        Self {
            vm_id: r.vm_id,
            pool_id: r.pool_id,
            priority: r.priority,
            status: DeviceStatus::from_raw(r.device_status),
            status_raw: r.device_status,
            last_error: r.last_error,
            capabilities: r.capabilities,
            abi_version: r.abi_version,
            vm_name: regs::get_str(&r.vm_name),
            device_name: regs::get_str(&r.device_name),
            backend: r.backend,
            mem_quota: r.mem_quota,
            staging_size: r.staging_size,
            generation: r.generation,
            device_total_mem: r.device_total_mem,
            shm_size: r.shm_size,
            sq_entries: r.sq_entries,
            cq_entries: r.cq_entries,
            max_kernel_us: r.max_kernel_us,
        }
    }

    /// The status as a lower-case word (`ready`, `fenced`, … or `unknown(N)`).
    pub fn status_name(&self) -> String {
        match DeviceStatus::from_raw(self.status_raw) {
            Some(s) => s.name().to_string(),
            None => format!("unknown({})", self.status_raw),
        }
    }

    /// The backend as a word (`cpu`, `cuda` or `unknown(N)`).
    pub fn backend_name(&self) -> String {
        match self.backend {
            regs::BACKEND_CPU => "cpu".into(),
            regs::BACKEND_CUDA => "cuda".into(),
            b => format!("unknown({b})"),
        }
    }

    /// The ABI version as `major.minor`.
    pub fn abi_version_string(&self) -> String {
        format!("{}.{}", self.abi_version >> 16, self.abi_version & 0xffff)
    }

    /// The last error as text (a status description, a fence reason, or the number).
    pub fn last_error_string(&self) -> String {
        if self.last_error == 0 {
            return "none".into();
        }
        if let Some(r) = vgpu_abi::ring::FenceReason::from_raw(self.last_error) {
            return format!("{r} ({:#x})", self.last_error);
        }
        match Status::from_raw(self.last_error) {
            Some(s) => s.to_string(),
            None => format!("code {}", self.last_error),
        }
    }
}

/// The ring state shared by all threads using a [`Device`].
#[derive(Debug)]
struct Rings {
    sq: SqProducer,
    cq: CqConsumer,
    /// Commands in flight, by internal tag: `None` until the completion arrives, then its
    /// arrival sequence number and the entry.
    pending: HashMap<u64, Option<(u64, Cqe)>>,
    /// Arrival counter of completions.
    seq: u64,
    /// Whether the guest asked for completion interrupts (re-applied after a reset).
    irq: bool,
    /// Threads blocked on the completion interrupt in [`Device::block`] (the interrupt stays
    /// armed while there is one).
    irq_waiters: u32,
}

impl Rings {
    fn new(view: ShmView, layout: Layout) -> Self {
        Self {
            sq: SqProducer::new(view, layout),
            cq: CqConsumer::new(view, layout),
            pending: HashMap::new(),
            seq: 0,
            irq: false,
            irq_waiters: 0,
        }
    }

    /// Moves every posted completion into `pending`. Completions for tags nobody waits for
    /// (already timed out, or invented by the host) are dropped.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(c) = self.cq.pop() {
            if let Some(slot @ None) = self.pending.get_mut(&c.tag) {
                *slot = Some((self.seq, c));
                self.seq += 1;
                n += 1;
            }
        }
        n
    }

    /// Takes a completed entry out of `pending`.
    fn take(&mut self, tag: u64) -> Option<(u64, Cqe)> {
        match self.pending.get(&tag) {
            Some(Some(_)) => self.pending.remove(&tag).flatten(),
            _ => None,
        }
    }
}

/// A handle on one vGPU. Thread-safe: commands from several threads may be in flight at once.
///
/// Every method that waits gives up after the timeout ([`DEFAULT_TIMEOUT`] unless changed
/// with [`Device::set_timeout`]) with [`Error::Timeout`], and fails early with
/// [`Error::Fenced`] when vgpud fences the VM.
#[derive(Debug)]
pub struct Device {
    /// Owns the shared-memory mapping that `view` points into; declared first so that
    /// nothing below can outlive it in use.
    transport: Box<dyn Transport>,
    view: ShmView,
    layout: Layout,
    /// Where the doorbell rings: vgpud's peer id and vector, read once when the device is
    /// opened (the page is the guest's own memory; a program that scribbled over it must
    /// still be able to ring, for example to ask for the reset that repairs it).
    doorbell: (u16, u16),
    rings: Mutex<Rings>,
    /// Held by the staged copies, which use the first `2 * chunk` bytes of staging.
    staging_lock: Mutex<()>,
    next_tag: AtomicU64,
    commands: AtomicU64,
    timeout: Duration,
    /// Whether the transport delivers completion interrupts (cleared at the first
    /// `NotSupported`); long waits then block on the interrupt instead of sleeping.
    irq_usable: std::sync::atomic::AtomicBool,
    /// Whether waits for completions spin briefly before blocking (see `set_eager_wait`).
    eager_wait: std::sync::atomic::AtomicBool,
    /// Next stream id handed out by `create_stream`.
    pub(crate) next_stream: AtomicU32,
    /// Next never-used event id, and ids given back.
    pub(crate) next_event: AtomicU32,
    pub(crate) events: Mutex<Vec<u32>>,
}

fn check(op: Opcode, cqe: Cqe) -> Result<Cqe, Error> {
    match Status::from_raw(cqe.status) {
        Some(Status::Ok) => Ok(cqe),
        Some(status) => Err(Error::Command { op, status }),
        None => Err(Error::UnknownStatus {
            op,
            raw: cqe.status,
        }),
    }
}

fn grid_1d(n: u32) -> [u32; 3] {
    [n.div_ceil(BLOCK_1D).max(1), 1, 1]
}

impl Device {
    /// Finds the vGPU among the PCI devices in sysfs (the first ivshmem device whose BAR2
    /// holds the vgpu magic).
    pub fn open_pci() -> Result<Device, Error> {
        Self::open_pci_in(Path::new(crate::transport::pci::SYSFS_PCI_DEVICES))
    }

    /// Like [`Device::open_pci`], scanning another sysfs PCI devices directory.
    pub fn open_pci_in(devices_dir: &Path) -> Result<Device, Error> {
        Self::from_transport(Box::new(PciTransport::scan(devices_dir)?))
    }

    /// Opens the vGPU at one sysfs PCI device directory.
    pub fn open_pci_at(dir: &Path) -> Result<Device, Error> {
        Self::from_transport(Box::new(PciTransport::open(dir)?))
    }

    /// Attaches to a vgpud socket as an ivshmem client process. The connection stays open
    /// for the `Device`'s lifetime; dropping the `Device` disconnects (vgpud then frees the
    /// VM's device resources).
    pub fn connect(socket: &Path) -> Result<Device, Error> {
        Self::from_transport(Box::new(SocketTransport::connect(socket)?))
    }

    /// Builds a device over any transport: checks the magic, the ABI version and the ring
    /// geometry, and attaches to the rings at their published indices.
    pub(crate) fn from_transport(transport: Box<dyn Transport>) -> Result<Device, Error> {
        let view = transport.shm();
        if view.len() < core::mem::size_of::<RegisterPage>() {
            return Err(LayoutError::BadShmSize(view.len() as u64).into());
        }
        let regs: RegisterPage = view.read_obj(0);
        vgpu_abi::check_compat(regs.magic, regs.abi_version)?;
        let layout = Layout::from_regs(&regs, view.len() as u64)?;
        Ok(Device {
            transport,
            view,
            layout,
            doorbell: (regs.host_peer_id as u16, regs.doorbell_vector as u16),
            rings: Mutex::new(Rings::new(view, layout)),
            staging_lock: Mutex::new(()),
            next_tag: AtomicU64::new(1),
            commands: AtomicU64::new(0),
            timeout: DEFAULT_TIMEOUT,
            irq_usable: std::sync::atomic::AtomicBool::new(true),
            eager_wait: std::sync::atomic::AtomicBool::new(true),
            next_stream: AtomicU32::new(1),
            next_event: AtomicU32::new(0),
            events: Mutex::new(Vec::new()),
        })
    }

    /// A description of how the device is reached.
    pub fn transport_description(&self) -> String {
        self.transport.describe()
    }

    /// The validated BAR2 geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// A fresh reading of the register page.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo::from_regs(&self.view.read_obj::<RegisterPage>(0))
    }

    /// Sets how long to wait for a completion (or for the device to make progress).
    pub fn set_timeout(&mut self, d: Duration) {
        self.timeout = d;
    }

    /// The current timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Number of commands this handle has submitted.
    pub fn commands_submitted(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    // ---- internals -------------------------------------------------------------------

    fn lock(&self) -> MutexGuard<'_, Rings> {
        // A panic while holding the lock leaves the ring state consistent (every update is
        // a single push/pop), so poisoning is ignored.
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails when the device will not answer: fenced, or stopped by vgpud.
    fn fenced(&self) -> Result<(), Error> {
        let status = self.view.load_u32(off::DEVICE_STATUS);
        if status == DeviceStatus::Fenced as u32 {
            return Err(Error::Fenced {
                reason: self.view.load_u32(off::LAST_ERROR),
            });
        }
        if status == DeviceStatus::Stopped as u32 {
            return Err(Error::Stopped);
        }
        Ok(())
    }

    /// Rings the doorbell of the peer and vector the register page named when the device was
    /// opened.
    pub fn ring_doorbell(&self) {
        self.transport.ring(self.doorbell.0, self.doorbell.1);
    }

    /// Pushes one entry (with a fresh internal tag), publishes it and rings the doorbell if
    /// vgpud is not polling. Returns the internal tag.
    fn start(&self, mut sqe: Sqe) -> Result<u64, Error> {
        self.fenced()?;
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        sqe.tag = tag;
        let mut backoff = Backoff::new();
        let t0 = Instant::now();
        loop {
            let ring = {
                let mut r = self.lock();
                r.drain();
                if r.sq.free() > 0 {
                    r.pending.insert(tag, None);
                    r.sq.push(&sqe);
                    Some(r.sq.publish())
                } else {
                    None
                }
            };
            match ring {
                Some(ring) => {
                    self.commands.fetch_add(1, Ordering::Relaxed);
                    if ring {
                        self.ring_doorbell();
                    }
                    return Ok(tag);
                }
                None => {
                    self.fenced()?;
                    if t0.elapsed() > self.timeout {
                        return Err(Error::timeout("a free submission-ring slot", self.timeout));
                    }
                    backoff.snooze();
                }
            }
        }
    }

    /// Waits for the completion of internal tag `tag` (`opcode` only names it in errors).
    fn wait(&self, tag: u64, opcode: impl Into<u16>) -> Result<Cqe, Error> {
        let opcode: u16 = opcode.into();
        let mut backoff = self.completion_backoff();
        let t0 = Instant::now();
        let mut polls = 0u32;
        loop {
            let seen = {
                let mut r = self.lock();
                r.drain();
                if let Some((_, c)) = r.take(tag) {
                    return Ok(c);
                }
                polls = polls.wrapping_add(1);
                // The status register and the clock are read every 64 polls only.
                let give_up = if !polls.is_multiple_of(64) {
                    None
                } else if let Err(e) = self.fenced() {
                    Some(e)
                } else if t0.elapsed() > self.timeout {
                    let name = match Opcode::from_raw(opcode) {
                        Some(op) => format!("{op:?}"),
                        None => format!("opcode {opcode:#x}"),
                    };
                    Some(Error::timeout(
                        format!("the completion of {name} (tag {tag})"),
                        self.timeout,
                    ))
                } else {
                    None
                };
                if let Some(e) = give_up {
                    r.pending.remove(&tag);
                    return Err(e);
                }
                r.seq
            };
            backoff.snooze_or(|d| self.block(d, true, seen));
        }
    }

    /// Submits a command, waits, and turns an error status into an error.
    fn exec(&self, cmd: Command) -> Result<Cqe, Error> {
        self.exec_on(cmd, 0)
    }

    /// Submits a command on `stream`, waits, and turns an error status into an error.
    pub(crate) fn exec_on(&self, cmd: Command, stream: u32) -> Result<Cqe, Error> {
        let op = cmd.opcode();
        let tag = self.start(cmd.encode(stream, 0))?;
        check(op, self.wait(tag, op as u16)?)
    }

    /// Submits a command on `stream` without waiting; returns the internal tag to pass to
    /// [`Device::wait_tag`] (or [`Device::forget_tag`]).
    pub(crate) fn start_on(&self, cmd: Command, stream: u32) -> Result<u64, Error> {
        self.start(cmd.encode(stream, 0))
    }

    /// Waits for the command started with `tag` and checks its status.
    pub(crate) fn wait_tag(&self, tag: u64, op: Opcode) -> Result<Cqe, Error> {
        check(op, self.wait(tag, op as u16)?)
    }

    /// Stops waiting for `tag` (its completion, when it comes, is dropped).
    pub(crate) fn forget_tag(&self, tag: u64) {
        self.lock().pending.remove(&tag);
    }

    /// Staging bytes `[off, off+len)` reserved for small command payloads (PTX text, names):
    /// the first bytes of staging, under the staging lock.
    pub(crate) fn with_staging<T>(
        &self,
        data: &[u8],
        f: impl FnOnce(u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if data.len() as u64 > self.layout.staging_size {
            return Err(Error::InvalidArgument(format!(
                "{} bytes do not fit the {}-byte staging area",
                data.len(),
                self.layout.staging_size
            )));
        }
        let _g = self.staging_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.view
            .write_bytes(self.layout.staging_offset as usize, data);
        f(0)
    }

    /// Submits one already-encoded entry and waits for its completion, which is returned
    /// whatever its status. The entry's tag is replaced by a unique internal one on the
    /// ring; the returned completion carries the caller's tag again.
    pub fn submit(&self, sqe: &Sqe) -> Result<Cqe, Error> {
        let tag = self.start(*sqe)?;
        let mut c = self.wait(tag, sqe.opcode)?;
        c.tag = sqe.tag;
        Ok(c)
    }

    /// Submits many entries and collects exactly one completion per entry, returned in
    /// arrival order. As many entries as fit are pushed at once and published together
    /// (one doorbell per batch, and none while vgpud polls); batches larger than the ring
    /// are fed as slots free up. Tags are handled as in [`Device::submit`]: each returned
    /// completion carries the tag of the entry it answers. The timeout applies to each
    /// stretch without progress.
    pub fn submit_batch(&self, sqes: &[Sqe]) -> Result<Vec<Cqe>, Error> {
        let n = sqes.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        self.fenced()?;
        let base = self.next_tag.fetch_add(n as u64, Ordering::Relaxed);
        let mut pushed = 0usize;
        let mut waiting: Vec<u64> = Vec::new();
        let mut out: Vec<Cqe> = Vec::with_capacity(n);
        let mut backoff = self.completion_backoff();
        let mut last_progress = Instant::now();
        loop {
            let mut ring = false;
            let mut progress = false;
            let seen;
            {
                let mut r = self.lock();
                r.drain();
                seen = r.seq;
                // Collect what has arrived, in arrival order.
                let mut got: Vec<(u64, Cqe)> = Vec::new();
                waiting.retain(|&t| match r.take(t) {
                    Some(x) => {
                        got.push(x);
                        false
                    }
                    None => true,
                });
                got.sort_by_key(|&(seq, _)| seq);
                for (_, mut c) in got {
                    c.tag = sqes[(c.tag - base) as usize].tag;
                    out.push(c);
                    progress = true;
                }
                // Push as many as fit, publish once.
                let k = (r.sq.free() as usize).min(n - pushed);
                for (i, sqe) in sqes.iter().enumerate().skip(pushed).take(k) {
                    let tag = base + i as u64;
                    let mut s = *sqe;
                    s.tag = tag;
                    r.pending.insert(tag, None);
                    r.sq.push(&s);
                    waiting.push(tag);
                }
                if k > 0 {
                    pushed += k;
                    ring = r.sq.publish();
                    progress = true;
                    self.commands.fetch_add(k as u64, Ordering::Relaxed);
                }
                if out.len() == n {
                    return Ok(out);
                }
                if !progress {
                    let give_up = if let Err(e) = self.fenced() {
                        Some(e)
                    } else if last_progress.elapsed() > self.timeout {
                        Some(Error::timeout(
                            format!("batch completions ({} of {n} done)", out.len()),
                            self.timeout,
                        ))
                    } else {
                        None
                    };
                    if let Some(e) = give_up {
                        for t in &waiting {
                            r.pending.remove(t);
                        }
                        return Err(e);
                    }
                }
            }
            if ring {
                self.ring_doorbell();
            }
            if progress {
                last_progress = Instant::now();
                backoff.reset();
            } else {
                // While entries still wait for ring space, look again after `d`: space frees as
                // vgpud takes entries, which raises no interrupt.
                backoff.snooze_or(|d| self.block(d, pushed == n, seen));
            }
        }
    }

    /// Resets the device: asks vgpud (through the reset-request register and the doorbell)
    /// to destroy and recreate this VM's device context, waits until the generation changes
    /// and the status is `ready`, then re-attaches to the (zeroed) rings. Commands still in
    /// flight complete with [`Status::Aborted`]. This also clears a fence.
    pub fn reset(&self) -> Result<(), Error> {
        let mut r = self.lock();
        let old_gen = self.view.load_u32(off::GENERATION);
        let req = self.view.load_u32(regs::REG_RESET_REQUEST);
        self.view
            .store_u32(regs::REG_RESET_REQUEST, req.wrapping_add(1));
        vgpu_abi::shm::full_fence();
        self.ring_doorbell();
        let mut backoff = Backoff::new();
        let t0 = Instant::now();
        loop {
            let gen = self.view.load_u32(off::GENERATION);
            let status = self.view.load_u32(off::DEVICE_STATUS);
            if gen != old_gen && status == DeviceStatus::Ready as u32 {
                break;
            }
            if status == DeviceStatus::Stopped as u32 {
                return Err(Error::Stopped);
            }
            if t0.elapsed() > self.timeout {
                return Err(Error::timeout(
                    format!("the device reset (generation {old_gen} -> {gen}, status {status})"),
                    self.timeout,
                ));
            }
            backoff.snooze();
        }
        let regs: RegisterPage = self.view.read_obj(0);
        let layout = Layout::from_regs(&regs, self.view.len() as u64)?;
        if layout != self.layout {
            return Err(LayoutError::Inconsistent("ring geometry changed across a reset").into());
        }
        let (irq, irq_waiters) = (r.irq, r.irq_waiters);
        let mut pending = std::mem::take(&mut r.pending);
        let mut seq = r.seq;
        for (tag, slot) in pending.iter_mut() {
            if slot.is_none() {
                *slot = Some((
                    seq,
                    Cqe {
                        tag: *tag,
                        status: Status::Aborted as u32,
                        ..Cqe::default()
                    },
                ));
                seq += 1;
            }
        }
        *r = Rings::new(self.view, self.layout);
        r.pending = pending;
        r.seq = seq;
        r.irq = irq;
        r.irq_waiters = irq_waiters;
        if irq || irq_waiters > 0 {
            r.cq.set_irq(true);
        }
        Ok(())
    }

    // ---- commands --------------------------------------------------------------------

    /// Does nothing on the device: one round trip.
    pub fn nop(&self) -> Result<(), Error> {
        self.exec(Command::Nop).map(drop)
    }

    /// Device memory `(used, quota)` of this VM, in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64), Error> {
        let c = self.exec(Command::GetInfo)?;
        Ok((c.result0, c.result1))
    }

    /// Allocates `size` bytes of device memory; returns the device pointer.
    pub fn alloc(&self, size: u64) -> Result<u64, Error> {
        if size == 0 {
            return Err(Error::InvalidArgument("alloc of 0 bytes".into()));
        }
        Ok(self.exec(Command::MemAlloc { size })?.result0)
    }

    /// Frees an allocation made by [`Device::alloc`].
    pub fn free(&self, ptr: u64) -> Result<(), Error> {
        self.exec(Command::MemFree { ptr }).map(drop)
    }

    /// Sets `len` bytes at `dst` to `value`.
    pub fn memset_d8(&self, dst: u64, value: u8, len: u64) -> Result<(), Error> {
        self.exec(Command::Memset {
            dst,
            len,
            value: value as u32,
            width: 1,
        })
        .map(drop)
    }

    /// Sets `count` 32-bit words at `dst` to `value`.
    pub fn memset_d32(&self, dst: u64, value: u32, count: u64) -> Result<(), Error> {
        let len = count
            .checked_mul(4)
            .ok_or_else(|| Error::InvalidArgument(format!("memset of {count} words")))?;
        self.exec(Command::Memset {
            dst,
            len,
            value,
            width: 4,
        })
        .map(drop)
    }

    /// Size of a copy chunk: half the staging area, at most [`MAX_COPY_CHUNK`].
    fn chunk(&self) -> u64 {
        (self.layout.staging_size / 2).clamp(1, MAX_COPY_CHUNK)
    }

    fn dev_addr(base: u64, off: usize) -> Result<u64, Error> {
        base.checked_add(off as u64).ok_or_else(|| {
            Error::InvalidArgument(format!("device range {base:#x}+{off:#x} overflows"))
        })
    }

    /// Waits for every tag in `inflight`, keeping the first error (so that staging is free
    /// again before returning).
    fn finish(
        &self,
        inflight: &mut VecDeque<u64>,
        op: Opcode,
        mut err: Option<Error>,
    ) -> Result<(), Error> {
        while let Some(t) = inflight.pop_front() {
            if let Err(e) = self.wait(t, op as u16).and_then(|c| check(op, c)) {
                err.get_or_insert(e);
            }
        }
        err.map_or(Ok(()), Err)
    }

    /// Copies host memory to the device through the staging area: in chunks of at most
    /// half the staging area (1 MiB at most), two in flight, a half reused only once its
    /// command has completed. Uses (and clobbers) the first two chunks of staging.
    pub fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<(), Error> {
        if src.is_empty() {
            return Ok(());
        }
        Self::dev_addr(dst, src.len())?;
        let _g = self.staging_lock.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = self.chunk() as usize;
        let mut inflight: VecDeque<u64> = VecDeque::new();
        let mut err = None;
        for (i, piece) in src.chunks(chunk).enumerate() {
            if inflight.len() == 2 {
                let t = inflight.pop_front().expect("two in flight");
                if let Err(e) = self
                    .wait(t, Opcode::CopyH2D as u16)
                    .and_then(|c| check(Opcode::CopyH2D, c))
                {
                    err = Some(e);
                    break;
                }
            }
            let soff = (i % 2) * chunk;
            self.view
                .write_bytes(self.layout.staging_offset as usize + soff, piece);
            let cmd = Command::CopyH2D {
                dst: dst + (i * chunk) as u64,
                staging_offset: soff as u64,
                len: piece.len() as u64,
            };
            match self.start(cmd.encode(0, 0)) {
                Ok(t) => inflight.push_back(t),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        self.finish(&mut inflight, Opcode::CopyH2D, err)
    }

    /// Copies device memory to the host through the staging area (chunked and pipelined as
    /// [`Device::copy_htod`]).
    pub fn copy_dtoh(&self, out: &mut [u8], src: u64) -> Result<(), Error> {
        if out.is_empty() {
            return Ok(());
        }
        Self::dev_addr(src, out.len())?;
        let _g = self.staging_lock.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = self.chunk() as usize;
        let total = out.len();
        let n = total.div_ceil(chunk);
        let len_of = |i: usize| chunk.min(total - i * chunk);
        let issue = |i: usize| {
            let cmd = Command::CopyD2H {
                src: src + (i * chunk) as u64,
                staging_offset: ((i % 2) * chunk) as u64,
                len: len_of(i) as u64,
            };
            self.start(cmd.encode(0, 0))
        };
        let mut inflight: VecDeque<u64> = VecDeque::new();
        for i in 0..n.min(2) {
            match issue(i) {
                Ok(t) => inflight.push_back(t),
                Err(e) => return self.finish(&mut inflight, Opcode::CopyD2H, Some(e)),
            }
        }
        for i in 0..n {
            let t = inflight.pop_front().expect("chunk in flight");
            if let Err(e) = self
                .wait(t, Opcode::CopyD2H as u16)
                .and_then(|c| check(Opcode::CopyD2H, c))
            {
                return self.finish(&mut inflight, Opcode::CopyD2H, Some(e));
            }
            let soff = self.layout.staging_offset as usize + (i % 2) * chunk;
            self.view
                .read_bytes(soff, &mut out[i * chunk..i * chunk + len_of(i)]);
            if i + 2 < n {
                match issue(i + 2) {
                    Ok(t) => inflight.push_back(t),
                    Err(e) => return self.finish(&mut inflight, Opcode::CopyD2H, Some(e)),
                }
            }
        }
        Ok(())
    }

    /// Copies `len` bytes from device memory at `src` to `dst`.
    pub fn copy_dtod(&self, dst: u64, src: u64, len: u64) -> Result<(), Error> {
        self.exec(Command::CopyD2D { dst, src, len }).map(drop)
    }

    /// Launches the kernel `func` with packed parameters (at most 72 bytes).
    pub fn launch(
        &self,
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> Result<(), Error> {
        let body = LaunchBody::new(func, grid, block, params).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} bytes of kernel parameters, at most {} fit",
                params.len(),
                vgpu_abi::cmd::MAX_INLINE_PARAMS
            ))
        })?;
        self.exec(Command::Launch { launch: body }).map(drop)
    }

    /// Launches a built-in kernel.
    pub fn launch_builtin(
        &self,
        k: Builtin,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> Result<(), Error> {
        self.launch(k.handle(), grid, block, params)
    }

    /// `y[i] = alpha * x[i] + y[i]` for `i < n` (f32).
    pub fn saxpy(&self, x: u64, y: u64, n: u32, alpha: f32) -> Result<(), Error> {
        let p = SaxpyParams { x, y, n, alpha };
        self.launch_builtin(Builtin::Saxpy, grid_1d(n), [BLOCK_1D, 1, 1], p.as_bytes())
    }

    /// `C = alpha * A·B + beta * C`, row-major f32, A m×k, B k×n, C m×n.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        a: u64,
        b: u64,
        c: u64,
        m: u32,
        n: u32,
        k: u32,
        alpha: f32,
        beta: f32,
    ) -> Result<(), Error> {
        let p = SgemmParams {
            a,
            b,
            c,
            m,
            n,
            k,
            alpha,
            beta,
            _pad: 0,
        };
        let grid = [n.div_ceil(BLOCK_2D).max(1), m.div_ceil(BLOCK_2D).max(1), 1];
        self.launch_builtin(Builtin::Sgemm, grid, [BLOCK_2D, BLOCK_2D, 1], p.as_bytes())
    }

    /// `c[i] = a[i] + b[i]` for `i < n` (f32).
    pub fn vector_add(&self, a: u64, b: u64, c: u64, n: u32) -> Result<(), Error> {
        let p = VectorAddParams {
            a,
            b,
            c,
            n,
            _pad: 0,
        };
        self.launch_builtin(
            Builtin::VectorAddF32,
            grid_1d(n),
            [BLOCK_1D, 1, 1],
            p.as_bytes(),
        )
    }

    /// `out[0] = sum(x[0..n])` (f32).
    pub fn reduce_sum(&self, x: u64, out: u64, n: u32) -> Result<(), Error> {
        let p = ReduceParams { x, out, n, _pad: 0 };
        self.launch_builtin(
            Builtin::ReduceSumF32,
            grid_1d(n),
            [BLOCK_1D, 1, 1],
            p.as_bytes(),
        )
    }

    /// Occupies the device for `us` microseconds.
    pub fn busy(&self, us: u32) -> Result<(), Error> {
        let p = BusyParams {
            duration_us: us,
            _pad: 0,
        };
        self.launch_builtin(Builtin::Busy, [1, 1, 1], [1, 1, 1], p.as_bytes())
    }

    /// Launches the kernel that faults (breaks the VM's device context until reset).
    pub fn fault(&self) -> Result<(), Error> {
        self.launch_builtin(Builtin::Fault, [1, 1, 1], [1, 1, 1], &[])
    }

    /// Waits until every earlier command on every stream has completed.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.exec(Command::Synchronize { all_streams: true })
            .map(drop)
    }

    // ---- staging and raw access ------------------------------------------------------

    /// Size of the staging area in bytes.
    pub fn staging_size(&self) -> u64 {
        self.layout.staging_size
    }

    fn staging_range(&self, off: u64, len: usize) -> Result<usize, Error> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.layout.staging_size => {
                Ok((self.layout.staging_offset + off) as usize)
            }
            _ => Err(Error::InvalidArgument(format!(
                "staging range {off:#x}+{len:#x} outside the {:#x}-byte staging area",
                self.layout.staging_size
            ))),
        }
    }

    /// Writes `data` into the staging area at `off` (for raw `CopyH2D` commands). Note that
    /// [`Device::copy_htod`] / [`Device::copy_dtoh`] use the start of staging.
    pub fn write_staging(&self, off: u64, data: &[u8]) -> Result<(), Error> {
        let at = self.staging_range(off, data.len())?;
        self.view.write_bytes(at, data);
        Ok(())
    }

    /// Reads the staging area at `off` into `out`.
    pub fn read_staging(&self, off: u64, out: &mut [u8]) -> Result<(), Error> {
        let at = self.staging_range(off, out.len())?;
        self.view.read_bytes(at, out);
        Ok(())
    }

    /// A raw view of all of BAR2, for hostile tests and benchmarks.
    ///
    /// A [`ShmView`] carries no lifetime, so once this is called the shared memory stays
    /// mapped in this process even after the `Device` is dropped (dropping still disconnects).
    pub fn shm(&self) -> ShmView {
        self.transport.keep_mapped();
        self.view
    }

    /// Asks for (or stops asking for) an interrupt when completions are posted.
    pub fn enable_irq(&self, on: bool) {
        let mut r = self.lock();
        r.irq = on;
        r.cq.set_irq(on);
    }

    /// Whether waits for completions spin briefly (30 µs) before blocking: on by default (the
    /// lowest latency); off, they block at once (on the completion interrupt where the
    /// transport has one), for a client that must not take CPU time from others.
    pub fn set_eager_wait(&self, on: bool) {
        self.eager_wait.store(on, Ordering::Relaxed);
    }

    fn completion_backoff(&self) -> Backoff {
        if self.eager_wait.load(Ordering::Relaxed) {
            Backoff::new()
        } else {
            Backoff::blocking()
        }
    }

    /// Blocks waiting for a completion: on the completion interrupt where the transport has
    /// one (armed here while any thread waits; the interrupt ends the wait as soon as vgpud
    /// posts), else by sleeping `d`. The interrupt wait lasts `d`, or, for a waiter that
    /// blocks without spinning ([`Device::set_eager_wait`] off) when only a completion can end
    /// the wait (`only_completions`), up to [`IRQ_WAIT`]: such a waiter then wakes once per
    /// completion instead of every few microseconds. (An eager waiter keeps the short, growing
    /// waits: on an H200 host, one long wait made 64 MiB copies 2–3% slower, probably as the
    /// CPU went deeper idle; see BENCHMARKS.md.) A caller that asked for interrupts itself
    /// ([`Device::enable_irq`]) keeps them: this then only sleeps.
    fn block(&self, d: Duration, only_completions: bool, seen: u64) {
        if !self.irq_usable.load(Ordering::Relaxed) {
            std::thread::sleep(d);
            return;
        }
        let epoch = {
            let mut r = self.lock();
            if r.irq {
                // The caller takes the interrupts itself (`enable_irq`): never consume them.
                drop(r);
                std::thread::sleep(d);
                return;
            }
            // Read before the re-check below: an interrupt another thread takes after it
            // (perhaps for our completion) ends our wait at once.
            let epoch = self.transport.irq_epoch();
            // Arm, then look again: a completion posted before the host saw the flag raised no
            // interrupt. The fence orders the flag before the re-check's load (the RMW alone
            // does not in the language's memory model; `tests/loom_wait.rs`). A completion that
            // another thread moved into `pending` since the caller looked (`seq` moved) raised
            // no interrupt for us either.
            r.irq_waiters += 1;
            r.cq.set_irq(true);
            vgpu_abi::shm::full_fence();
            if r.drain() > 0 || r.seq != seen {
                Self::unwait(&mut r);
                return;
            }
            epoch
        };
        let long = only_completions && !self.eager_wait.load(Ordering::Relaxed);
        let bound = if long { d.max(IRQ_WAIT) } else { d };
        match self.transport.wait_irq_since(epoch, bound) {
            Ok(_) => {}
            Err(Error::NotSupported(_)) => {
                self.irq_usable.store(false, Ordering::Relaxed);
                std::thread::sleep(d);
            }
            Err(_) => std::thread::sleep(d),
        }
        Self::unwait(&mut self.lock());
    }

    /// One thread stopped waiting on the interrupt: disarm it when it was the last.
    fn unwait(r: &mut Rings) {
        r.irq_waiters -= 1;
        if r.irq_waiters == 0 && !r.irq {
            r.cq.set_irq(false);
        }
    }

    /// Waits for a completion interrupt; `Ok(false)` on timeout. Socket transport only
    /// (PCI: [`Error::NotSupported`]).
    pub fn wait_irq(&self, timeout: Duration) -> Result<bool, Error> {
        self.transport.wait_irq(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn device_is_send_and_sync() {
        assert_send_sync::<Device>();
    }

    #[test]
    fn status_mapping() {
        let ok = Cqe::default();
        assert!(check(Opcode::Nop, ok).is_ok());
        let bad = Cqe {
            status: Status::QuotaExceeded as u32,
            ..Cqe::default()
        };
        assert!(matches!(
            check(Opcode::MemAlloc, bad),
            Err(Error::Command {
                op: Opcode::MemAlloc,
                status: Status::QuotaExceeded
            })
        ));
        let odd = Cqe {
            status: 999,
            ..Cqe::default()
        };
        assert!(matches!(
            check(Opcode::Nop, odd),
            Err(Error::UnknownStatus { raw: 999, .. })
        ));
    }

    #[test]
    fn grids() {
        assert_eq!(grid_1d(0), [1, 1, 1]);
        assert_eq!(grid_1d(256), [1, 1, 1]);
        assert_eq!(grid_1d(257), [2, 1, 1]);
    }
}
