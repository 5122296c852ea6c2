//! vgpud's end of one worker: the private ring (vgpud produces requests and consumes answers,
//! exactly like a guest), the doorbell, the process, and bounded waits.

use super::proto::{self, FD_COUNT};
use super::spawn::{self, Reaper};
use crate::transport::SharedRegion;
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use tracing::warn;
use vgpu_abi::cmd::{Command, Cqe};
use vgpu_abi::layout::{ring_hdr, SQ_FLAG_HOST_POLLING};
use vgpu_abi::ring::{reset_rings, CqConsumer, SqProducer};
use vgpu_abi::Status;

/// How long a wait spins before it starts to sleep.
const SPIN: Duration = Duration::from_micros(50);
/// Longest sleep between two looks at the completion ring.
const MAX_NAP: Duration = Duration::from_millis(1);
/// How often a wait (or a poll) asks whether the worker still lives.
const LIVENESS_EVERY: Duration = Duration::from_millis(5);

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A memfd, eventfd or the process could not be created.
    #[error("starting a worker: {0}")]
    Io(#[from] std::io::Error),
    /// The private ring geometry is invalid.
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
}

/// One worker process and its private ring.
pub(super) struct WorkerLink {
    child: Option<Child>,
    pid: u32,
    /// Kept mapped for the rings below.
    _ring: SharedRegion,
    sq: SqProducer,
    cq: CqConsumer,
    doorbell: OwnedFd,
    /// Answers taken off the ring and not yet asked for.
    answers: HashMap<u64, Cqe>,
    /// Requests pushed whose answer has not been taken off the ring.
    outstanding: u32,
    cq_entries: u32,
    /// Offset of the private SQ's flags word (`SQ_FLAG_HOST_POLLING`: the worker is polling).
    sq_flags: usize,
    last_liveness: Instant,
    /// The worker is gone (died or killed); everything fails with `ContextLost`.
    lost: bool,
}

impl WorkerLink {
    /// Starts a worker for a VM whose shared region is `region`.
    pub(super) fn spawn(
        exe: &Path,
        args: &proto::WorkerArgs,
        region: BorrowedFd<'_>,
        wake: BorrowedFd<'_>,
    ) -> Result<Self, LinkError> {
        let layout = proto::ring_layout()?;
        let ring = SharedRegion::create("worker-ring", proto::RING_SIZE)?;
        let view = ring.view();
        reset_rings(&view, &layout);
        let doorbell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(std::io::Error::from)?;
        let fds: [BorrowedFd<'_>; FD_COUNT] = [region, ring.fd(), doorbell.as_fd(), wake];
        let child = spawn::spawn(exe, &args.to_args(), fds)?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            sq: SqProducer::new(view, layout),
            cq: CqConsumer::new(view, layout),
            _ring: ring,
            doorbell,
            answers: HashMap::new(),
            outstanding: 0,
            cq_entries: layout.cq_entries,
            sq_flags: layout.sq_offset as usize + ring_hdr::FLAGS,
            last_liveness: Instant::now(),
            lost: false,
        })
    }

    /// Tells the worker whether its device is shared with other VMs (read before each command).
    pub(super) fn set_shared(&self, shared: bool) {
        self._ring
            .view()
            .store_u32(proto::REG_SHARED, u32::from(shared));
    }

    /// Whether the worker is polling its ring now (it sets `SQ_FLAG_HOST_POLLING` while it
    /// spins, within its window after progress or just before its device work retires, and
    /// clears it before it sleeps): its answer is expected soon.
    pub(super) fn worker_polling(&self) -> bool {
        self._ring.view().load_u32(self.sq_flags) & SQ_FLAG_HOST_POLLING != 0
    }

    /// Asks the worker to write the wake fd after its next answers (`on`), or stops asking.
    pub(super) fn set_wake(&self, on: bool) {
        self.cq.set_irq(on);
    }

    /// Asks for the wake fd, then looks once more: true when an answer is already here (or
    /// the worker is gone), so that the caller polls instead of blocking. The full fence pairs
    /// with the worker's "publish the answer, fence, read the flag": either the worker sees the
    /// flag and writes the fd, or this sees its answer.
    pub(super) fn arm_wake(&mut self) -> bool {
        self.set_wake(true);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.drain();
        !self.answers.is_empty() || !self.check_alive(true)
    }

    /// The worker's process id.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Takes every answer off the ring.
    fn drain(&mut self) {
        while let Some(c) = self.cq.pop() {
            self.outstanding = self.outstanding.saturating_sub(1);
            self.answers.insert(c.tag, c);
        }
    }

    /// Whether the worker still runs (asked at most every [`LIVENESS_EVERY`] unless `now`).
    fn check_alive(&mut self, now: bool) -> bool {
        if self.lost {
            return false;
        }
        if !now && self.last_liveness.elapsed() < LIVENESS_EVERY {
            return true;
        }
        self.last_liveness = Instant::now();
        let exited = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => None,
            Some(Ok(Some(st))) => Some(st.to_string()),
            Some(Err(e)) => Some(e.to_string()),
            None => Some("gone".into()),
        };
        if let Some(how) = exited {
            warn!(pid = self.pid, "worker exited unexpectedly ({how})");
            self.lost = true;
            self.child = None;
        }
        !self.lost
    }

    /// Kills the worker (SIGKILL; reaped by `reaper`). Everything fails from now on.
    pub(super) fn kill(&mut self, reaper: &mut Reaper) {
        self.lost = true;
        if let Some(c) = self.child.take() {
            reaper.kill(c);
        }
    }

    /// The answer for `tag`, if it arrived (never waits). `Err(ContextLost)` once the worker
    /// is gone and the answer never came.
    pub(super) fn try_take(&mut self, tag: u64) -> Option<Result<Cqe, Status>> {
        self.drain();
        if let Some(c) = self.answers.remove(&tag) {
            return Some(Ok(c));
        }
        if !self.check_alive(false) {
            // A last look: the worker may have answered just before it died.
            self.drain();
            return Some(self.answers.remove(&tag).ok_or(Status::ContextLost));
        }
        None
    }

    /// Sends one request. Waits (bounded by `timeout`) for room when the worker has
    /// [`proto::RING_CQ`] requests unanswered; a worker that does not make room is killed.
    pub(super) fn submit(
        &mut self,
        cmd: &Command,
        stream: u32,
        tag: u64,
        timeout: Duration,
        reaper: &mut Reaper,
    ) -> Result<(), Status> {
        if self.lost {
            return Err(Status::ContextLost);
        }
        let t0 = Instant::now();
        let mut nap = Duration::from_micros(1);
        loop {
            self.drain();
            if self.outstanding < self.cq_entries && self.sq.free() > 0 {
                break;
            }
            if !self.check_alive(false) {
                return Err(Status::ContextLost);
            }
            if t0.elapsed() > timeout {
                warn!(
                    pid = self.pid,
                    "worker answers nothing for {timeout:?}: killing it"
                );
                self.kill(reaper);
                return Err(Status::ContextLost);
            }
            nap = Self::pause(t0, nap);
        }
        self.sq.push(&cmd.encode(stream, tag));
        self.outstanding += 1;
        if self.sq.publish() {
            if let Err(e) = rustix::io::write(&self.doorbell, &1u64.to_le_bytes()) {
                // EAGAIN: the counter is saturated, so the worker has a wake-up pending anyway.
                if e != rustix::io::Errno::AGAIN {
                    warn!(pid = self.pid, "worker doorbell: {e}");
                }
            }
        }
        Ok(())
    }

    /// Waits for the answer to `tag` (spin, then naps up to [`MAX_NAP`]). After `timeout`, or
    /// when the worker dies, the worker is killed and the result is `ContextLost`.
    pub(super) fn wait(
        &mut self,
        tag: u64,
        timeout: Duration,
        reaper: &mut Reaper,
    ) -> Result<Cqe, Status> {
        let t0 = Instant::now();
        let mut nap = Duration::from_micros(1);
        loop {
            if let Some(r) = self.try_take(tag) {
                if r.is_err() {
                    self.kill(reaper);
                }
                return r;
            }
            if t0.elapsed() > timeout {
                warn!(
                    pid = self.pid,
                    "worker did not answer within {timeout:?}: killing it"
                );
                self.kill(reaper);
                return Err(Status::ContextLost);
            }
            nap = Self::pause(t0, nap);
        }
    }

    /// Spins for [`SPIN`], then sleeps with a doubling nap up to [`MAX_NAP`].
    fn pause(t0: Instant, nap: Duration) -> Duration {
        if t0.elapsed() < SPIN {
            std::hint::spin_loop();
            return nap;
        }
        std::thread::sleep(nap);
        (nap * 2).min(MAX_NAP)
    }
}
