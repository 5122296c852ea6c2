//! The completion interrupt as an eventfd, whoever signals it: vgpud directly (the socket
//! transport, where the eventfd is our ivshmem vector 0) or the guest kernel's VFIO driver on
//! MSI-X vector 0 (the PCI transport). Both wait the same way.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::Error;

/// An interrupt eventfd and the bookkeeping that lets several threads wait on it.
///
/// One waiter at a time polls the eventfd (a blocking read of a drained eventfd would hang);
/// the others wait on a condition variable that the poller signals when it stops polling, and
/// look at the epoch again: an interrupt the poller took may have been theirs. None of them is
/// kept behind the poller's `poll` (`tests/loom_wait.rs`, finding 3).
#[derive(Debug)]
pub(crate) struct IrqEventfd {
    fd: OwnedFd,
    /// Whether a waiter is polling the eventfd.
    poller: Mutex<bool>,
    /// Signalled when the poller stops polling (it took an interrupt, or its wait ended).
    changed: Condvar,
    /// Interrupts taken so far (see [`super::Transport::irq_epoch`]).
    taken: AtomicU64,
}

impl IrqEventfd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            poller: Mutex::new(false),
            changed: Condvar::new(),
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
        let mut polling = self.poller.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Another waiter took an interrupt meanwhile (perhaps ours): let the caller look.
            if self.epoch() != epoch {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !*polling {
                *polling = true;
                drop(polling);
                let r = self.poll_and_read(left);
                *self.poller.lock().unwrap_or_else(|e| e.into_inner()) = false;
                self.changed.notify_all();
                return r;
            }
            if left.is_zero() {
                return Ok(false);
            }
            polling = self
                .changed
                .wait_timeout(polling, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The poller's wait: `poll` the eventfd up to `timeout`, then read it (counting the
    /// interrupt taken).
    fn poll_and_read(&self, timeout: Duration) -> Result<bool, Error> {
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        loop {
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
                        // Readable a moment ago and we are its only reader: a signal
                        // interrupted the read, or nothing is there after all.
                        Err(Errno::INTR | Errno::AGAIN) => Ok(false),
                        Err(e) => Err(Error::io("reading the interrupt eventfd", e)),
                    };
                }
                // A signal: poll again for the same time (an early return would only
                // make the caller look and block again).
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

    /// A waiter that another one's poll would have kept (finding 3 of tests/loom_wait.rs):
    /// the second waiter sees the first one's interrupt at once, not after its poll.
    #[test]
    fn a_waiter_is_not_kept_behind_the_poller() {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        let irq = IrqEventfd::new(fd);
        let e = irq.epoch();
        std::thread::scope(|s| {
            let poller = s.spawn(|| irq.wait_since(e, Duration::from_secs(30)));
            // Once the poller polls, a second waiter waits on the condition variable.
            let t0 = Instant::now();
            while !*irq.poller.lock().unwrap() {
                assert!(t0.elapsed() < Duration::from_secs(10));
                std::thread::yield_now();
            }
            let second = s.spawn(|| irq.wait_since(e, Duration::from_secs(30)));
            rustix::io::write(irq.fd(), &1u64.to_ne_bytes()).unwrap();
            assert!(poller.join().unwrap().unwrap());
            assert!(second.join().unwrap().unwrap());
            assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        });
        assert_eq!(irq.epoch(), e + 1);
    }

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
