//! The fds behind [`super::Backend::wake_fd`]: an eventfd that a completion writes (the cuda
//! backend's host function, a worker process's answer) or a timerfd armed for a known end
//! (the cpu backend's execution slots). Both are non-blocking and drained the same way.

use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use std::time::Duration;

/// How long before a predicted retirement a waiter stops sleeping and polls: a wake-up's
/// latency (tens of microseconds, more on a loaded host) must not land on the guest waiting.
pub const SPIN_BEFORE_RETIRE: Duration = Duration::from_micros(200);

/// How long pending device work is polled after the last progress before a waiter (the
/// executor, a worker process) blocks on the device's wake: the chain of wake-ups behind a
/// blocked wait (the CUDA helper thread, the worker, vgpud) costs 50-250 µs on a virtualised
/// host, paid in full by work of a few milliseconds. Measured on an H200 (cuda-bench): 64 MiB
/// page-locked copies (1.2 ms) at 0.93 of native when blocking after 200 µs, 0.99 after 2 ms;
/// cuBLAS SGEMM 4096³ (2.7 ms) at 0.92 after 2 ms, 0.99 spinning. Five milliseconds of polling
/// cost a waiter 0.5 % of a core over a one-second wait.
pub const SPIN_BEFORE_BLOCK: Duration = Duration::from_millis(5);

/// A non-blocking, close-on-exec eventfd for completions to write.
pub fn event() -> rustix::io::Result<OwnedFd> {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
}

/// Makes an eventfd readable. Never blocks: a saturated counter (`EAGAIN`) is readable anyway.
pub fn signal(fd: impl AsFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Consumes what made a wake fd (eventfd or timerfd) readable; never blocks.
pub fn drain(fd: impl AsFd) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

/// A non-blocking, close-on-exec timerfd on the monotonic clock, disarmed.
pub fn timer() -> rustix::io::Result<OwnedFd> {
    timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )
}

/// Arms `timer` to fire once after `d` (`None`: disarm). Re-arming resets its count, so a
/// timer that fired and was not drained is not readable after a later arm for the future.
pub fn arm_timer(timer: impl AsFd, d: Option<Duration>) -> rustix::io::Result<()> {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let value = match d {
        // A zero it_value would disarm the timer: fire after 1 ns instead.
        Some(d) => Timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos().max(u32::from(d.as_secs() == 0)) as _,
        },
        None => zero,
    };
    let spec = Itimerspec {
        it_interval: zero,
        it_value: value,
    };
    timerfd_settime(timer, TimerfdTimerFlags::empty(), &spec).map(|_| ())
}

/// Whether `fd` is readable now (tests and the cpu backend's own checks).
pub fn readable(fd: impl AsFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_signals_and_drains() {
        let e = event().unwrap();
        assert!(!readable(&e));
        signal(&e);
        signal(&e);
        assert!(readable(&e));
        drain(&e);
        assert!(!readable(&e));
    }

    #[test]
    fn timer_fires_once_and_rearming_resets_it() {
        let t = timer().unwrap();
        arm_timer(&t, Some(Duration::ZERO)).unwrap();
        // Blocks until the 1 ns timer fired: no sleep, no race.
        let mut fds = [rustix::event::PollFd::new(&t, rustix::event::PollFlags::IN)];
        rustix::event::poll(&mut fds, None).unwrap();
        assert!(readable(&t));
        arm_timer(&t, Some(Duration::from_secs(3600))).unwrap();
        assert!(!readable(&t), "a re-armed timer forgets its expiry");
        arm_timer(&t, None).unwrap();
        assert!(!readable(&t));
    }
}
