//! The vGPU as a program sees it: commands in, completions out.
//!
//! [`Device`] is the handle; its work is split by responsibility:
//!
//! - this file: opening the handle over a transport, and the transport's two signals: the
//!   doorbell out and the completion interrupt in (how a waiter blocks);
//! - `regs`: the register page (validated when opening, read fresh for [`DeviceInfo`] and
//!   the fence check);
//! - `ring`: the rings and tags: submission, tag allocation, matching completions to
//!   waiters, waiting, and the reset that re-attaches to the rings;
//! - `staging`: the staging area: chunked, pipelined host ↔ device copies and raw access;
//! - `commands`: one typed command per method (memory, launches);
//! - `builtins`: the built-in kernels with typed parameters;
//! - `vmm`: virtual memory management (reservations, memory handles, mappings);
//! - `graph`: stream capture and graphs.
//!
//! `fn block` stays in this file: `crates/vgpu-abi/tests/loom_ring.rs` and
//! `tests/loom_wait.rs` check its steps against their loom models by reading this file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use vgpu_abi::{Layout, ShmView};

use crate::transport::{PciTransport, SocketTransport, Transport};
use crate::wait::{irq_block, Backoff, WaitPolicy};
use crate::Error;

mod builtins;
mod commands;
mod fence;
mod graph;
mod regs;
mod ring;
mod staging;
mod tensormap;
mod vmm;

pub use fence::StreamMark;
pub use regs::{device_info_page, DeviceInfo};
pub use staging::MAX_COPY_CHUNK;

use ring::{Rings, Tags};

/// The environment variable naming the vgpud socket of a host process or container
/// ([`Device::open_default`]).
pub const SOCKET_ENV: &str = "VGPU_SOCKET";

/// Default time to wait for one completion (TCG VMs are slow).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest single wait on the completion interrupt (the interrupt usually ends it; the
/// bound keeps fence and timeout checks going).
const IRQ_WAIT: Duration = Duration::from_millis(2);

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
    tags: Tags,
    commands: AtomicU64,
    timeout: Duration,
    /// Whether the transport delivers completion interrupts (cleared at the first
    /// `NotSupported`); long waits then block on the interrupt instead of sleeping.
    irq_usable: AtomicBool,
    /// How waits for completions wait ([`WaitPolicy`] as `u8`, see `set_wait_policy`).
    wait_policy: AtomicU8,
    /// Asked at the start of each wait, on the waiting thread (see `set_wait_policy_source`).
    policy_source: std::sync::OnceLock<fn() -> Option<WaitPolicy>>,
    /// Next stream id handed out by `create_stream`.
    pub(crate) next_stream: AtomicU32,
    /// Next never-used event id, and ids given back.
    pub(crate) next_event: AtomicU32,
    pub(crate) events: Mutex<Vec<u32>>,
    /// The streams' fence words, where the device takes them (ABI 1.6).
    fences: Option<fence::Fences>,
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

    /// Finds the device the way the guest's libraries do (`libcuda.so.1`, `libnvidia-ml.so.1`):
    /// the vgpud socket named by [`SOCKET_ENV`] for a host process or container, else the vGPU
    /// PCI device of a VM.
    pub fn open_default() -> Result<Device, Error> {
        match std::env::var_os(SOCKET_ENV) {
            Some(p) if !p.is_empty() => Self::connect(Path::new(&p)),
            _ => Self::open_pci(),
        }
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
        let opened = regs::read_at_open(view)?;
        let layout = opened.layout;
        let fences = fence::Fences::new(view, &layout, opened.abi_minor);
        Ok(Device {
            transport,
            view,
            layout,
            doorbell: opened.doorbell,
            rings: Mutex::new(Rings::new(view, layout)),
            staging_lock: Mutex::new(()),
            tags: Tags::new(),
            commands: AtomicU64::new(0),
            timeout: DEFAULT_TIMEOUT,
            irq_usable: AtomicBool::new(true),
            wait_policy: AtomicU8::new(WaitPolicy::Eager as u8),
            policy_source: std::sync::OnceLock::new(),
            next_stream: AtomicU32::new(1),
            next_event: AtomicU32::new(0),
            events: Mutex::new(Vec::new()),
            fences,
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

    /// Sets how long to wait for a completion (or for the device to make progress).
    pub fn set_timeout(&mut self, d: Duration) {
        self.timeout = d;
    }

    /// The current timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A raw view of all of BAR2, for hostile tests and benchmarks.
    ///
    /// A [`ShmView`] carries no lifetime, so once this is called the shared memory stays
    /// mapped in this process even after the `Device` is dropped (dropping still disconnects).
    pub fn shm(&self) -> ShmView {
        self.transport.keep_mapped();
        self.view
    }

    /// The whole shared region (BAR2) mapped a second time, at `addr`, for the rest of the
    /// process: the same bytes at another address. `None` when that range is in use here or the
    /// transport cannot map its region again (VFIO). vgpu's libcuda puts page-locked memory
    /// where the device sees it, so that a host pointer is also a device pointer.
    pub fn map_region_at(&self, addr: u64) -> Option<ShmView> {
        self.transport.map_again_at(usize::try_from(addr).ok()?)
    }

    // ---- doorbell and completion interrupt -------------------------------------------

    /// Rings the doorbell of the peer and vector the register page named when the device was
    /// opened.
    pub fn ring_doorbell(&self) {
        self.transport.ring(self.doorbell.0, self.doorbell.1);
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
        let p = if on {
            WaitPolicy::Eager
        } else {
            WaitPolicy::Block
        };
        self.set_wait_policy(p);
    }

    /// How waits for completions (and fence words) wait from now on: see [`WaitPolicy`].
    pub fn set_wait_policy(&self, p: WaitPolicy) {
        self.wait_policy.store(p as u8, Ordering::Relaxed);
    }

    /// Where a waiting thread's [`WaitPolicy`] comes from: `source` is called on that thread at
    /// the start of each wait (a CUDA driver answers by the thread's current context); `None`
    /// from it, or no source, means the policy set with [`Device::set_wait_policy`]. Set once;
    /// later calls are ignored.
    pub fn set_wait_policy_source(&self, source: fn() -> Option<WaitPolicy>) {
        let _ = self.policy_source.set(source);
    }

    /// The [`WaitPolicy`] a wait on this thread uses now.
    pub fn wait_policy(&self) -> WaitPolicy {
        self.policy_source
            .get()
            .and_then(|f| f())
            .unwrap_or_else(|| WaitPolicy::from_u8(self.wait_policy.load(Ordering::Relaxed)))
    }

    fn completion_backoff(&self) -> Backoff {
        Backoff::for_policy(self.wait_policy())
    }

    /// Blocks waiting for a completion: on the completion interrupt where the transport has
    /// one (armed here while any thread waits; the interrupt ends the wait as soon as vgpud
    /// posts), else by sleeping `d`. An eager waiter sleeps instead during the first
    /// [`Transport::poll_before_irq`] of its wait (`waited` so far): where an interrupt costs
    /// more than a short poll (in a VM, MSI-X delivery runs on the vCPU), short commands are
    /// polled and only long waits arm the interrupt. The interrupt wait lasts `d`, or, for a
    /// waiter that blocks without spinning ([`Device::set_eager_wait`] off) when only a
    /// completion can end the wait (`only_completions`), up to [`IRQ_WAIT`]: such a waiter
    /// then wakes once per completion instead of every few microseconds. (An eager waiter
    /// keeps the short, growing waits: on an H200 host, one long wait made 64 MiB copies 2–3%
    /// slower, probably as the CPU went deeper idle; see BENCHMARKS.md.) Either grows with the
    /// time waited once the wait is long ([`crate::wait::irq_block`]), so that a waiter on a
    /// kernel of a second wakes tens of times, not a thousand. A caller that asked for
    /// interrupts itself ([`Device::enable_irq`]) keeps them: this then only sleeps.
    fn block(&self, d: Duration, waited: Duration, only_completions: bool, seen: u64) {
        if !self.irq_usable.load(Ordering::Relaxed) {
            std::thread::sleep(d);
            return;
        }
        let eager = self.wait_policy() != WaitPolicy::Block;
        if eager && waited < self.transport.poll_before_irq() {
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
        let bound = match (only_completions, eager) {
            (false, _) => d,
            (true, true) => irq_block(d, waited, Duration::ZERO),
            (true, false) => irq_block(d, waited, IRQ_WAIT),
        };
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

    /// Whether waits for completions may block on the transport's completion interrupt (the
    /// default; it is used where the transport has one) or always poll (spin, yield, sleep).
    pub fn use_interrupts(&self, on: bool) {
        self.irq_usable.store(on, Ordering::Relaxed);
    }

    /// How a wait for a completion ends: `"msi-x"` (PCI device driven through VFIO),
    /// `"eventfd"` (socket transport), or `"poll"` (no interrupt, or turned off with
    /// [`Device::use_interrupts`]).
    pub fn wait_mode(&self) -> &'static str {
        match self.transport.wait_kind() {
            Some(kind) if self.irq_usable.load(Ordering::Relaxed) => kind,
            _ => "poll",
        }
    }

    /// [`Device::wait_mode`], and for a transport that could have had an interrupt, why it
    /// has none: `poll (no VFIO: the vfio-pci driver is not loaded (modprobe vfio-pci))`.
    pub fn wait_description(&self) -> String {
        match self.transport.poll_reason() {
            Some(why) => format!("{} (no VFIO: {why})", self.wait_mode()),
            None => self.wait_mode().to_string(),
        }
    }

    /// Waits for a completion interrupt; `Ok(false)` on timeout. Socket transport, and PCI
    /// through VFIO (else [`Error::NotSupported`]).
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
}
