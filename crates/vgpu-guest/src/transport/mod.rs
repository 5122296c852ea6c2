//! How the guest reaches the device: through the PCI device's BARs inside a VM ([`pci`], with
//! MSI-X completion interrupts where the device can be driven through VFIO, [`vfio`]), or as
//! an ivshmem client process on the vgpud socket ([`socket`]). Both give a shared-memory
//! mapping (BAR2) and a way to ring a peer's doorbell, and most give a completion interrupt
//! as an eventfd; everything above is the same.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use memmap2::MmapRaw;
use vgpu_abi::ShmView;

use crate::Error;

mod irq;
pub(crate) mod mmio;
pub mod pci;
pub mod socket;
pub mod vfio;

pub use pci::PciTransport;
pub use socket::SocketTransport;

/// A shared-memory mapping (BAR2) that can be made permanent: once [`Self::keep_mapped`] was
/// called it is never unmapped, so views of it handed out to callers can never dangle.
#[derive(Debug)]
pub(crate) struct SharedMapping {
    /// Always `Some` until dropped.
    map: Option<MmapRaw>,
    len: usize,
    keep: AtomicBool,
}

impl SharedMapping {
    /// Wraps a read/write shared mapping of `len` bytes.
    pub(crate) fn new(map: MmapRaw, len: usize) -> Self {
        assert!(len <= map.len());
        Self {
            map: Some(map),
            len,
            keep: AtomicBool::new(false),
        }
    }

    /// A view of the mapping, valid while `self` lives (or forever after `keep_mapped`).
    pub(crate) fn view(&self) -> ShmView {
        let map = self.map.as_ref().expect("mapping present until drop");
        // SAFETY: `map` is a read/write mapping of at least `len` bytes (checked in `new`),
        // page-aligned (so 8-aligned), and stays mapped while `self` lives; views never
        // outlive `self` inside this crate, and views handed to callers are only handed out
        // after `keep_mapped`, which makes the mapping permanent.
        unsafe { ShmView::new(map.as_mut_ptr(), self.len) }
    }

    /// Checks the vgpu magic and ABI version at the start of the mapping.
    pub(crate) fn check_compat(&self) -> Result<(), Error> {
        let v = self.view();
        vgpu_abi::check_compat(
            v.load_u64(vgpu_abi::regs::off::MAGIC),
            v.load_u32(vgpu_abi::regs::off::ABI_VERSION),
        )?;
        Ok(())
    }

    /// Never unmap this mapping (it is leaked when `self` is dropped).
    pub(crate) fn keep_mapped(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        if self.keep.load(Ordering::SeqCst) {
            std::mem::forget(self.map.take());
        }
    }
}

/// A way to reach one vGPU device.
///
/// The transport owns the shared-memory mapping; [`Transport::shm`] views of it are valid for
/// as long as the transport lives, or forever after [`Transport::keep_mapped`].
pub(crate) trait Transport: Send + Sync + Debug {
    /// The whole shared-memory region (BAR2). Valid while `self` lives.
    fn shm(&self) -> ShmView;
    /// Keeps the shared memory mapped for the rest of the process, even after the transport
    /// is dropped (the connection still closes on drop).
    fn keep_mapped(&self);
    /// Rings `vector` of `peer` (the doorbell). A peer or vector the transport does not know
    /// is silently dropped, as QEMU does.
    fn ring(&self, peer: u16, vector: u16);
    /// Waits for our interrupt vector 0 to fire; `Ok(false)` on timeout.
    fn wait_irq(&self, timeout: Duration) -> Result<bool, Error>;
    /// How many interrupts any waiter of this transport has taken so far.
    fn irq_epoch(&self) -> u64 {
        0
    }
    /// As [`Transport::wait_irq`], but returns `Ok(true)` at once if an interrupt was taken
    /// since [`Transport::irq_epoch`] returned `epoch`: with several threads waiting on one
    /// device, the one that takes an interrupt may not be the one it was for.
    fn wait_irq_since(&self, epoch: u64, timeout: Duration) -> Result<bool, Error> {
        let _ = epoch;
        self.wait_irq(timeout)
    }
    /// What [`Transport::wait_irq`] waits on ("msi-x", "eventfd"), or `None` when the
    /// transport has no interrupt and waiters poll.
    fn wait_kind(&self) -> Option<&'static str> {
        None
    }
    /// How long an eager waiter polls before it arms the interrupt: zero where an interrupt is
    /// as cheap as a wake-up from a sleep (an eventfd on the host).
    fn poll_before_irq(&self) -> Duration {
        Duration::ZERO
    }
    /// Why the transport has no interrupt, where it could have one.
    fn poll_reason(&self) -> Option<String> {
        None
    }
    /// A short description ("pci 0000:00:04.0", "socket /run/vgpu/vm1.sock").
    fn describe(&self) -> String;
    /// Whether vgpud is still there, as far as the transport can tell (a socket's peer closes
    /// it when vgpud exits, even when it is killed; a PCI device cannot tell).
    fn peer_alive(&self) -> bool {
        true
    }
    /// Maps the whole shared region a second time, at `addr`, for the rest of the process;
    /// `None` when that range is in use or the transport cannot map its region again.
    fn map_again_at(&self, addr: usize) -> Option<ShmView> {
        let _ = addr;
        None
    }
}

/// Maps `len` bytes of `fd` (shared, read-write) at exactly `addr` for the rest of the process
/// (never unmapped): `None` when anything is mapped there already.
pub(crate) fn map_fixed(
    fd: std::os::fd::BorrowedFd<'_>,
    len: usize,
    addr: usize,
) -> Option<ShmView> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a new shared mapping where nothing is mapped (FIXED_NOREPLACE refuses a range in
    // use; a kernel that ignores the flag may place it elsewhere, which is checked and undone),
    // so no memory of this process changes under anyone.
    let p = unsafe {
        rustix::mm::mmap(
            addr as *mut std::ffi::c_void,
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
            fd,
            0,
        )
    }
    .ok()?;
    if p as usize != addr {
        // SAFETY: the mapping just made, which nothing uses.
        let _ = unsafe { rustix::mm::munmap(p, len) };
        return None;
    }
    // SAFETY: a page-aligned read-write mapping of `len` bytes that is never unmapped.
    Some(unsafe { ShmView::new(p.cast(), len) })
}
