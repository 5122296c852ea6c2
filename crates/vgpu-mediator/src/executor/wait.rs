//! How the executor sleeps: one epoll set over the VMs' doorbells, the control eventfd (events
//! from the router) and a timerfd that bounds the sleep while work is on the device.

use rustix::event::epoll;
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// epoll key of the control eventfd.
const CONTROL_KEY: u64 = u64::MAX;
/// epoll key of the timerfd that wakes the executor when device work may have retired.
const TIMER_KEY: u64 = u64::MAX - 1;

/// The executor's epoll set and timerfd. A doorbell's key is its VM's index.
pub(super) struct Waiter {
    epoll: OwnedFd,
    timer: OwnedFd,
    /// Written after each event sent to the executor; drained here.
    control: Arc<OwnedFd>,
}

impl Waiter {
    /// An epoll set watching `control` and a disarmed timerfd.
    pub(super) fn new(control: Arc<OwnedFd>) -> rustix::io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &*control,
            epoll::EventData::new_u64(CONTROL_KEY),
            epoll::EventFlags::IN,
        )?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &timer,
            epoll::EventData::new_u64(TIMER_KEY),
            epoll::EventFlags::IN,
        )?;
        Ok(Self {
            epoll,
            timer,
            control,
        })
    }

    /// Wakes the executor when VM `vm` rings `doorbell`.
    pub(super) fn watch_doorbell(
        &self,
        doorbell: BorrowedFd<'_>,
        vm: usize,
    ) -> rustix::io::Result<()> {
        epoll::add(
            &self.epoll,
            doorbell,
            epoll::EventData::new_u64(vm as u64),
            // Edge-triggered: the doorbell is never read (see `Channel::doorbell_fd`).
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
    }

    /// Stops watching a doorbell (its VM left).
    pub(super) fn unwatch(&self, doorbell: BorrowedFd<'_>) -> rustix::io::Result<()> {
        epoll::delete(&self.epoll, doorbell)
    }

    /// Arms the timerfd to fire after `d` (`None`: disarm). Unlike an epoll timeout, which
    /// has millisecond resolution, it wakes the executor within microseconds of a short
    /// kernel's end.
    fn arm_timer(&self, d: Option<Duration>) {
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = match d {
            // A zero it_value would disarm the timer: fire after 1 ns instead.
            Some(d) => rustix::time::Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos().max(u32::from(d.as_secs() == 0)) as _,
            },
            None => zero,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: value,
        };
        if let Err(e) = timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec) {
            warn!("timerfd_settime: {e}");
        }
    }

    /// Sleeps until a doorbell rings, an event arrives or `timeout` passes (`None`: no
    /// timeout).
    pub(super) fn sleep(&self, timeout: Option<Duration>) {
        let mut events = Vec::with_capacity(64);
        self.arm_timer(timeout);
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            None,
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return,
            Err(e) => {
                warn!("epoll_wait: {e}");
                std::thread::sleep(Duration::from_millis(1));
                return;
            }
        }
        for ev in &events {
            let key = ev.data.u64();
            if key == CONTROL_KEY {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&*self.control, &mut b);
            } else if key == TIMER_KEY {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.timer, &mut b);
            }
            // A doorbell needs nothing: waking up was the point, the rings are read next.
        }
    }
}
