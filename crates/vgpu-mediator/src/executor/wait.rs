//! How the executor sleeps: one epoll set over the VMs' doorbells, the control eventfd (events
//! from the router), the backend's wake fd (device work retired) and a timerfd that bounds the
//! sleep while work is on the device.

use crate::backend::wake;
use rustix::event::epoll;
use rustix::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// epoll key of the control eventfd.
const CONTROL_KEY: u64 = u64::MAX;
/// epoll key of the timerfd that wakes the executor when device work may have retired.
const TIMER_KEY: u64 = u64::MAX - 1;
/// epoll key of the backend's wake fd.
const WAKE_KEY: u64 = u64::MAX - 2;

/// The executor's epoll set and timerfd. A doorbell's key is its VM's index.
pub(super) struct Waiter {
    epoll: OwnedFd,
    timer: OwnedFd,
    /// Written after each event sent to the executor; drained here.
    control: Arc<OwnedFd>,
    /// A duplicate of the backend's wake fd (same open file: draining it here drains the
    /// backend's), when it has one.
    wake: Option<OwnedFd>,
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
        let timer = wake::timer()?;
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
            wake: None,
        })
    }

    /// Also wakes when `fd` (the backend's [`crate::backend::Backend::wake_fd`]) is readable.
    pub(super) fn watch_wake(&mut self, fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
        let dup = rustix::io::fcntl_dupfd_cloexec(fd, 0)?;
        epoll::add(
            &self.epoll,
            &dup,
            epoll::EventData::new_u64(WAKE_KEY),
            epoll::EventFlags::IN,
        )?;
        self.wake = Some(dup);
        Ok(())
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
        if let Err(e) = wake::arm_timer(&self.timer, d) {
            warn!("timerfd_settime: {e}");
        }
    }

    /// Sleeps until a doorbell rings, an event arrives, the backend's wake fd fires or
    /// `timeout` passes (`None`: no timeout).
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
                wake::drain(&self.timer);
            } else if key == WAKE_KEY {
                if let Some(w) = &self.wake {
                    wake::drain(w);
                }
            }
            // A doorbell needs nothing: waking up was the point, the rings are read next.
        }
    }
}
