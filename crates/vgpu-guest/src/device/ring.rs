//! The rings and tags: submission with a fresh internal tag, matching completions to their
//! waiters, waiting (spinning, then blocking through `Device::block`), raw and batched
//! submission, and the reset that re-attaches to the rings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::MutexGuard;
use std::time::Instant;

use vgpu_abi::cmd::Command;
use vgpu_abi::regs::{self, off};
use vgpu_abi::ring::{CqConsumer, SqProducer};
use vgpu_abi::{Cqe, DeviceStatus, Layout, Opcode, ShmView, Sqe, Status};

use super::regs::check_layout_unchanged;
use super::Device;
use crate::wait::Backoff;
use crate::Error;

/// The tags put on the ring: each command in flight gets one that no other command of this
/// handle has, so that a completion finds exactly its waiter whatever tag the caller chose.
#[derive(Debug)]
pub(super) struct Tags(AtomicU64);

impl Tags {
    pub(super) fn new() -> Self {
        Self(AtomicU64::new(1))
    }

    /// Takes `n` consecutive fresh tags and returns the first. The counter wraps after 2^64
    /// tags (so tags stay unique among the commands any one handle can have in flight).
    pub(super) fn take(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed)
    }

    /// The position of `tag` in the run that [`Tags::take`] started at `base` (modular, like
    /// the counter).
    fn index(base: u64, tag: u64) -> usize {
        tag.wrapping_sub(base) as usize
    }
}

/// The ring state shared by all threads using a [`Device`].
#[derive(Debug)]
pub(super) struct Rings {
    sq: SqProducer,
    pub(super) cq: CqConsumer,
    /// Commands in flight, by internal tag: `None` until the completion arrives, then its
    /// arrival sequence number and the entry.
    pending: HashMap<u64, Option<(u64, Cqe)>>,
    /// Arrival counter of completions.
    pub(super) seq: u64,
    /// Whether the guest asked for completion interrupts (re-applied after a reset).
    pub(super) irq: bool,
    /// Threads blocked on the completion interrupt in [`Device::block`] (the interrupt stays
    /// armed while there is one).
    pub(super) irq_waiters: u32,
    /// The first error status among completions nobody waited for (commands queued without
    /// waiting), until [`Device::take_unclaimed_error`] takes it.
    unclaimed_error: Option<Status>,
}

impl Rings {
    pub(super) fn new(view: ShmView, layout: Layout) -> Self {
        Self {
            sq: SqProducer::new(view, layout),
            cq: CqConsumer::new(view, layout),
            pending: HashMap::new(),
            seq: 0,
            irq: false,
            irq_waiters: 0,
            unclaimed_error: None,
        }
    }

    /// Moves every posted completion into `pending`. Completions for tags nobody waits for
    /// (queued without waiting, already timed out, or invented by the host) are dropped; the
    /// first error among them is kept for [`Device::take_unclaimed_error`].
    pub(super) fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(c) = self.cq.pop() {
            match self.pending.get_mut(&c.tag) {
                Some(slot @ None) => {
                    *slot = Some((self.seq, c));
                    self.seq += 1;
                    n += 1;
                }
                Some(Some(_)) => {}
                None => {
                    if self.unclaimed_error.is_none() && c.status != Status::Ok as u32 {
                        self.unclaimed_error =
                            Some(Status::from_raw(c.status).unwrap_or(Status::Internal));
                    }
                }
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

/// Turns an error status into an error.
pub(super) fn check(op: Opcode, cqe: Cqe) -> Result<Cqe, Error> {
    match Status::from_raw(cqe.status) {
        Some(Status::Ok) => Ok(cqe),
        Some(status) => Err(Error::Command { op, status }),
        None => Err(Error::UnknownStatus {
            op,
            raw: cqe.status,
        }),
    }
}

impl Device {
    /// Number of commands this handle has submitted.
    pub fn commands_submitted(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// The first error of a command whose completion nobody waited for (one queued without
    /// waiting: a launch, an asynchronous copy), once: what a driver reports at the next
    /// synchronising call, as CUDA reports the errors of asynchronous work.
    pub fn take_unclaimed_error(&self) -> Option<Status> {
        let mut r = self.lock();
        r.drain();
        r.unclaimed_error.take()
    }

    /// The ring state, shared by every thread of this handle.
    pub(super) fn lock(&self) -> MutexGuard<'_, Rings> {
        // A panic while holding the lock leaves the ring state consistent (every update is
        // a single push/pop), so poisoning is ignored.
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pushes one entry (with a fresh internal tag), publishes it and rings the doorbell if
    /// vgpud is not polling. Returns the internal tag.
    pub(super) fn start(&self, sqe: Sqe) -> Result<u64, Error> {
        self.start_with(sqe, true)
    }

    /// Submits `cmd` on `stream` and never waits for it: its completion is dropped when it
    /// comes (an error status is kept for [`Device::take_unclaimed_error`]).
    pub(super) fn start_unawaited(&self, cmd: Command, stream: u32) -> Result<(), Error> {
        self.start_with(cmd.encode(stream, 0), false).map(drop)
    }

    /// Pushes one entry (with a fresh internal tag), publishes it and rings the doorbell if
    /// vgpud is not polling; `awaited`: a waiter will come for its completion.
    fn start_with(&self, mut sqe: Sqe, awaited: bool) -> Result<u64, Error> {
        self.fenced()?;
        let tag = self.tags.take(1);
        sqe.tag = tag;
        let mut backoff = Backoff::new();
        let t0 = Instant::now();
        loop {
            let ring = {
                let mut r = self.lock();
                r.drain();
                if r.sq.free() > 0 {
                    if awaited {
                        r.pending.insert(tag, None);
                    }
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
                    if let Some(e) = self.give_up(t0, || "a free submission-ring slot".into()) {
                        return Err(e);
                    }
                    backoff.snooze();
                }
            }
        }
    }

    /// Waits for the completion of internal tag `tag` (`opcode` only names it in errors).
    pub(super) fn wait(&self, tag: u64, opcode: impl Into<u16>) -> Result<Cqe, Error> {
        let c = self.wait_inner(tag, opcode.into(), None)?;
        Ok(c.expect("a wait without a fence ends with the completion"))
    }

    /// Waits for the completion of `tag` or, if sooner, for the fence word at BAR2 offset
    /// `fence.0` to reach `fence.1`: then `None`, and the completion is dropped when it
    /// comes, as an unawaited one's.
    pub(super) fn wait_or_fence(
        &self,
        tag: u64,
        opcode: u16,
        fence: (usize, u32),
    ) -> Result<Option<Cqe>, Error> {
        self.wait_inner(tag, opcode, Some(fence))
    }

    fn wait_inner(
        &self,
        tag: u64,
        opcode: u16,
        fence: Option<(usize, u32)>,
    ) -> Result<Option<Cqe>, Error> {
        let mut backoff = self.completion_backoff();
        let t0 = Instant::now();
        let mut polls = 0u32;
        loop {
            let seen = {
                let mut r = self.lock();
                r.drain();
                if let Some((_, c)) = r.take(tag) {
                    return Ok(Some(c));
                }
                if let Some((at, value)) = fence {
                    if super::fence::reached(self.view.load_u32(at), value) {
                        r.pending.remove(&tag);
                        return Ok(None);
                    }
                }
                polls = polls.wrapping_add(1);
                // While spinning, the status register and the clock are read every 64 polls
                // only; once blocking (a block may last up to 100 ms), at every poll.
                let give_up = if !polls.is_multiple_of(64) && !backoff.is_blocking() {
                    None
                } else {
                    self.give_up(t0, || {
                        let name = match Opcode::from_raw(opcode) {
                            Some(op) => format!("{op:?}"),
                            None => format!("opcode {opcode:#x}"),
                        };
                        format!("the completion of {name} (tag {tag})")
                    })
                };
                if let Some(e) = give_up {
                    r.pending.remove(&tag);
                    return Err(e);
                }
                r.seq
            };
            backoff.snooze_or(|d, waited| self.block(d, waited, true, seen));
        }
    }

    /// Submits a command, waits, and turns an error status into an error.
    pub(super) fn exec(&self, cmd: Command) -> Result<Cqe, Error> {
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

    /// The completion of the command started with `tag`, checked without waiting: `None`
    /// while it has not arrived; once returned it is gone.
    pub(crate) fn try_take_tag(&self, tag: u64, op: Opcode) -> Option<Result<Cqe, Error>> {
        let mut r = self.lock();
        r.drain();
        r.take(tag).map(|(_, c)| check(op, c))
    }

    /// Stops waiting for `tag` (its completion, when it comes, is dropped).
    pub(crate) fn forget_tag(&self, tag: u64) {
        self.lock().pending.remove(&tag);
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
        let base = self.tags.take(n as u64);
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
                    c.tag = sqes[Tags::index(base, c.tag)].tag;
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
                    let give_up = self.give_up(last_progress, || {
                        format!("batch completions ({} of {n} done)", out.len())
                    });
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
                backoff.snooze_or(|d, waited| self.block(d, waited, pushed == n, seen));
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
        check_layout_unchanged(self.view, self.layout)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_abi::layout::MIN_SHM_SIZE;
    use vgpu_abi::ring::CqProducer;

    #[test]
    fn tags_are_taken_in_runs() {
        let t = Tags::new();
        assert_eq!(t.take(1), 1);
        let base = t.take(5);
        assert_eq!(base, 2);
        assert_eq!(t.take(1), 7);
        assert_eq!(Tags::index(base, base + 4), 4);
    }

    #[test]
    fn a_run_across_the_wrap_keeps_its_positions() {
        let t = Tags(AtomicU64::new(u64::MAX - 1));
        let base = t.take(4);
        assert_eq!(base, u64::MAX - 1);
        // The run is MAX-1, MAX, 0, 1; the next one starts after it.
        assert_eq!(t.take(1), 2);
        for i in 0..4u64 {
            assert_eq!(Tags::index(base, base.wrapping_add(i)), i as usize);
        }
    }

    #[test]
    fn tags_taken_by_several_threads_are_distinct() {
        let t = Tags::new();
        let mut all: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).map(|_| t.take(1)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4000);
    }

    /// Runs `f` with guest-side ring state and the host's completion producer over a zeroed
    /// buffer laid out like a BAR2 of `MIN_SHM_SIZE` bytes.
    fn with_rings(f: impl FnOnce(&mut Rings, &mut CqProducer)) {
        let view = vgpu_abi::ShmView::leak_zeroed(MIN_SHM_SIZE as usize);
        let layout = Layout::compute(MIN_SHM_SIZE, 4, 8).unwrap();
        let mut rings = Rings::new(view, layout);
        let mut host = CqProducer::new(view, layout);
        f(&mut rings, &mut host);
    }

    fn cqe(tag: u64, result0: u64) -> Cqe {
        Cqe {
            tag,
            result0,
            ..Cqe::default()
        }
    }

    #[test]
    fn completions_reach_only_the_tags_waited_for() {
        with_rings(|r, host| {
            r.pending.insert(10, None);
            r.pending.insert(11, None);
            r.pending.insert(12, None);
            // Out of order, one for a tag nobody waits for, and a second one for tag 11.
            for c in [cqe(12, 1), cqe(99, 2), cqe(11, 3), cqe(11, 4)] {
                host.push(&c);
            }
            assert_eq!(r.drain(), 2);
            assert_eq!(r.seq, 2);
            assert!(!r.pending.contains_key(&99));
            // Tag 10 is still in flight: nothing to take, and it stays pending.
            assert_eq!(r.take(10), None);
            assert!(r.pending.contains_key(&10));
            // Arrival order is kept; the duplicate for 11 was dropped.
            assert_eq!(r.take(12), Some((0, cqe(12, 1))));
            assert_eq!(r.take(11), Some((1, cqe(11, 3))));
            assert_eq!(r.take(11), None);
            assert_eq!(r.drain(), 0);
        });
    }

    #[test]
    fn a_completion_after_its_waiter_gave_up_is_dropped() {
        with_rings(|r, host| {
            r.pending.insert(5, None);
            // What `forget_tag` and a timed-out wait do.
            r.pending.remove(&5);
            host.push(&cqe(5, 0));
            assert_eq!(r.drain(), 0);
            assert_eq!(r.take(5), None);
            assert!(r.pending.is_empty());
        });
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
}
