//! The completion interrupt as an eventfd, whoever signals it: vgpud directly (the socket
//! transport, where the eventfd is our ivshmem vector 0) or the guest kernel's VFIO driver on
//! MSI-X vector 0 (the PCI transport). Both wait the same way.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::Error;

/// An interrupt eventfd and the bookkeeping that lets several threads wait on it.
#[derive(Debug)]
pub(crate) struct IrqEventfd {
    fd: OwnedFd,
    /// Serialises waits so a readable eventfd is read by one waiter only (a blocking read of
    /// a drained eventfd would hang).
    lock: Mutex<()>,
    /// Interrupts taken so far (see [`super::Transport::irq_epoch`]).
    taken: AtomicU64,
}

impl IrqEventfd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            lock: Mutex::new(()),
            taken: AtomicU64::new(0),
        }
    }

    /// The eventfd (to signal it in tests).
    #[cfg(test)]
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How many interrupts any waiter has taken so far.
    pub(crate) fn epoch(&self) -> u64 {
        self.taken.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for the eventfd to fire and consumes it; `Ok(true)` at once if
    /// an interrupt was taken since [`Self::epoch`] returned `epoch`, `Ok(false)` on timeout.
    pub(crate) fn wait_since(&self, epoch: u64, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Another waiter took an interrupt meanwhile (perhaps ours): let the caller look.
            if self.epoch() != epoch {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    let mut b = [0u8; 8];
                    return match rustix::io::read(self.fd.as_fd(), &mut b) {
                        Ok(_) => {
                            self.taken.fetch_add(1, Ordering::SeqCst);
                            Ok(true)
                        }
                        Err(Errno::INTR) => continue,
                        Err(e) => Err(Error::io("reading the interrupt eventfd", e)),
                    };
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::io("polling the interrupt eventfd", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};

    #[test]
    fn wait_takes_one_signal_and_times_out_after() {
        let fd = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        let irq = IrqEventfd::new(fd);
        assert!(!irq
            .wait_since(irq.epoch(), Duration::from_millis(1))
            .unwrap());
        rustix::io::write(irq.fd(), &1u64.to_ne_bytes()).unwrap();
        let e = irq.epoch();
        assert!(irq.wait_since(e, Duration::from_secs(10)).unwrap());
        assert_eq!(irq.epoch(), e + 1);
        // Taken since `e`: a waiter that looked before returns at once.
        assert!(irq.wait_since(e, Duration::ZERO).unwrap());
        assert!(!irq
            .wait_since(irq.epoch(), Duration::from_millis(1))
            .unwrap());
    }
}
