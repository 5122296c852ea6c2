//! Signalling an eventfd that a client also holds, without ever blocking.
//!
//! A VM's interrupt eventfd is one open file shared with its QEMU. File-status flags belong to
//! the open file, not to a descriptor, so the client can clear `O_NONBLOCK` under vgpud; and
//! it can drive the counter to its maximum, at which point a write of 1 would wait for a
//! reader that never comes. No per-call flag makes an eventfd write non-blocking (a check
//! before the write races with the client), so the write is bounded instead: a per-thread
//! POSIX timer aimed at the writing thread fires a signal whose handler does nothing and is
//! installed without `SA_RESTART`; a write that blocks returns `EINTR`, and the caller stops
//! signalling that VM. The timer repeats until disarmed, so even a signal that fires before
//! the write starts cannot leave it blocked.
//!
//! Cost when nothing is wrong: two `timer_settime` calls around the write.

use rustix::fd::AsFd;
use std::cell::RefCell;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::sync::Once;
use std::time::Duration;

/// How long one write may block before it is abandoned. An honest eventfd write never blocks.
const WRITE_BOUND: Duration = Duration::from_millis(10);

/// Why an eventfd was not signalled.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The write would have blocked: the client has made the file blocking and filled its
    /// counter. The caller stops signalling it.
    #[error("the eventfd write blocked (its counter is full and its file was made blocking)")]
    Blocked,
    /// The write failed otherwise.
    #[error("eventfd write: {0}")]
    Io(rustix::io::Errno),
    /// The per-thread timer could not be set up.
    #[error("setting up the write timer: {0}")]
    Timer(std::io::Error),
}

fn guard_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn interrupt_only(_: libc::c_int) {}

fn install_handler() -> Result<(), NotifyError> {
    static ONCE: Once = Once::new();
    static FAILED: AtomicI32 = AtomicI32::new(0);
    ONCE.call_once(|| {
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags) that is then
        // filled in; the handler only returns, which is async-signal-safe; no SA_RESTART, so a
        // blocked write returns EINTR.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = interrupt_only as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(guard_signal(), &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(1);
            FAILED.store(e, Relaxed);
        }
    });
    let failed = FAILED.load(Relaxed);
    if failed != 0 {
        return Err(NotifyError::Timer(std::io::Error::from_raw_os_error(
            failed,
        )));
    }
    Ok(())
}

/// A POSIX timer that signals the thread that created it.
struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    fn new() -> Result<Self, NotifyError> {
        install_handler()?;
        // SAFETY: a zeroed `sigevent` is valid; the fields the kernel reads for SIGEV_THREAD_ID
        // are set below; `timer_create` writes the new timer's id into `id`.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = guard_signal();
            sev.sigev_notify_thread_id = libc::gettid();
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) != 0 {
                return Err(NotifyError::Timer(std::io::Error::last_os_error()));
            }
            Ok(Self(id))
        }
    }

    /// Arms the timer to fire after `d` and every `d` after that (`None`: disarm).
    fn set(&self, d: Option<Duration>) {
        let ts = d.map_or(
            libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            |d| libc::timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            },
        );
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `self.0` is a live timer of this process; `spec` is a valid value.
        unsafe {
            libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut());
        }
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: `self.0` was created by `timer_create` and is deleted once.
        unsafe {
            libc::timer_delete(self.0);
        }
    }
}

thread_local! {
    static TIMER: RefCell<Option<ThreadTimer>> = const { RefCell::new(None) };
}

/// Adds 1 to the eventfd `fd` (a client also holds it), returning within about
/// [`WRITE_BOUND`] whatever the client did to the file.
pub fn signal_eventfd(fd: impl AsFd) -> Result<(), NotifyError> {
    TIMER.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_none() {
            *t = Some(ThreadTimer::new()?);
        }
        let timer = t.as_ref().expect("created above");
        timer.set(Some(WRITE_BOUND));
        let r = rustix::io::write(fd.as_fd(), &1u64.to_le_bytes());
        timer.set(None);
        match r {
            Ok(_) => Ok(()),
            // EAGAIN: a non-blocking file whose counter is full; EINTR: the timer broke a
            // blocked write. Either way the client is holding the counter at its maximum.
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                Err(NotifyError::Blocked)
            }
            Err(e) => Err(NotifyError::Io(e)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};
    use std::time::Instant;

    #[test]
    fn signals_a_healthy_eventfd() {
        let fd = eventfd(0, EventfdFlags::NONBLOCK).unwrap();
        signal_eventfd(&fd).unwrap();
        signal_eventfd(&fd).unwrap();
        let mut b = [0u8; 8];
        rustix::io::read(&fd, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 2);
    }

    #[test]
    fn a_full_blocking_eventfd_does_not_block_the_writer() {
        // What a hostile client does: clear O_NONBLOCK (shared by every fd of the file) and
        // fill the counter to its maximum.
        let fd = eventfd(0, EventfdFlags::empty()).unwrap();
        rustix::io::write(&fd, &(u64::MAX - 1).to_le_bytes()).unwrap();
        for _ in 0..3 {
            let t0 = Instant::now();
            assert!(matches!(signal_eventfd(&fd), Err(NotifyError::Blocked)));
            assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        }
        // The thread's later blocking calls are not disturbed by a stray timer signal.
        std::thread::sleep(Duration::from_millis(50));
        let mut b = [0u8; 8];
        rustix::io::read(&fd, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), u64::MAX - 1);
        signal_eventfd(&fd).unwrap();
    }
}
