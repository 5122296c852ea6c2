//! The legacy default stream's implicit synchronisation. In CUDA, work queued on the legacy
//! default stream (NULL or `CU_STREAM_LEGACY`, outside the per-thread entry points) waits for
//! all earlier work of the context's *blocking* streams, and work queued on a blocking stream
//! waits for all earlier work of the legacy stream; streams created with
//! `CU_STREAM_NON_BLOCKING` take no part. vgpud's streams know nothing of each other (the legacy
//! stream is its stream 0), so the driver queues the waits itself, with two of vgpud's events:
//!
//! * before legacy work, for each blocking stream with work since it was last joined: a record
//!   of the *join* event on that stream, then a wait for it on stream 0;
//! * before blocking work, when the legacy stream had work the stream has not waited for: a
//!   record of the *tail* event on stream 0 (once per run of legacy work, shared by every
//!   blocking stream), then a wait for it on the blocking stream.
//!
//! A wait is for the event's latest record when it is queued (vgpud's `STREAM_WAIT_EVENT`, as
//! `cuStreamWaitEvent`), so one event serves every join: each record and its wait are queued
//! together, under the lock. Nothing waits for a completion: no round trip is added. The lock
//! is held until the operation's own work is queued too ([`Held`]), so that operations of
//! several threads are ordered one after the other, as CUDA's are.
//!
//! What it costs: nothing while a program has used no blocking stream (the usual single-stream
//! program using the legacy stream only: one atomic load per call); after that, a lock per
//! call, and the two commands of a join or a tail wait only where CUDA would order work across
//! streams. A synchronisation that completed (`cuCtxSynchronize`, `cuStreamSynchronize`) ends
//! what it covered: no join or tail wait is queued for work known complete.
//!
//! The state is per context (a blocking stream belongs to the context it was created in; the
//! legacy and per-thread default streams to the calling thread's current context), the two
//! events are the process's: every context's legacy stream is vgpud's stream 0, so a later
//! record there covers earlier legacy work of every context.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use vgpu_guest::{Device, Error, Event};

/// How a stream takes part in the legacy stream's implicit synchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The legacy default stream (vgpud's stream 0).
    Legacy,
    /// A blocking stream: created without `CU_STREAM_NON_BLOCKING`, or a per-thread default
    /// stream.
    Blocking,
    /// Created with `CU_STREAM_NON_BLOCKING`: not ordered against the legacy stream.
    NonBlocking,
}

/// One command queued ahead of an operation's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Record the join event on blocking stream `id`, then make stream 0 wait for it.
    Join(u32),
    /// Record the tail event on stream 0, after its latest work.
    RecordTail,
    /// Make blocking stream `id` wait for the tail event.
    WaitTail(u32),
}

/// Sequence numbers count the tracked operations of the process. Legacy work before tracking
/// began (a program that used no blocking stream yet) counts as done at this one: any tail
/// recorded later covers it.
const UNTRACKED: u64 = 1;

/// One context's state.
#[derive(Debug)]
struct Order {
    /// The latest legacy operation.
    legacy_last: u64,
    /// Every operation of the context up to this one is known complete.
    complete: u64,
    /// Blocking streams with work the legacy stream has not joined: their latest operation.
    dirty: BTreeMap<u32, u64>,
    /// For each blocking stream, the latest legacy operation it waited for.
    seen: HashMap<u32, u64>,
}

impl Default for Order {
    fn default() -> Self {
        Self {
            legacy_last: UNTRACKED,
            complete: 0,
            dirty: BTreeMap::new(),
            seen: HashMap::new(),
        }
    }
}

impl Order {
    /// Whether work on blocking stream `id` must wait for legacy work.
    fn needs_tail(&self, id: u32) -> bool {
        let seen = self.seen.get(&id).copied().unwrap_or(0);
        self.legacy_last > seen.max(self.complete)
    }
}

/// The process's ordering state, without the device: what to queue before each operation.
#[derive(Debug)]
struct Tracking {
    /// The latest operation's sequence number.
    seq: u64,
    /// The operation that last recorded the tail event (0: never).
    tail: u64,
    ctxs: HashMap<usize, Order>,
}

impl Default for Tracking {
    fn default() -> Self {
        Self {
            seq: UNTRACKED,
            tail: 0,
            ctxs: HashMap::new(),
        }
    }
}

impl Tracking {
    /// The commands to queue before an operation on stream `id` of kind `kind` in context
    /// `ctx` (nothing changes until [`Self::commit`]).
    fn plan(&self, ctx: usize, kind: Kind, id: u32) -> Vec<Step> {
        // A context not seen yet: its legacy stream may have had untracked work.
        let fresh = Order::default();
        let o = self.ctxs.get(&ctx).unwrap_or(&fresh);
        match kind {
            Kind::Legacy => o
                .dirty
                .iter()
                .filter(|&(_, &w)| w > o.complete)
                .map(|(&id, _)| Step::Join(id))
                .collect(),
            Kind::Blocking if o.needs_tail(id) => {
                if self.tail < o.legacy_last {
                    vec![Step::RecordTail, Step::WaitTail(id)]
                } else {
                    vec![Step::WaitTail(id)]
                }
            }
            Kind::Blocking | Kind::NonBlocking => Vec::new(),
        }
    }

    /// Records the operation [`Self::plan`] planned, once its commands were queued; returns its
    /// sequence number.
    fn commit(&mut self, ctx: usize, kind: Kind, id: u32) -> u64 {
        if kind == Kind::NonBlocking {
            return self.seq;
        }
        self.seq += 1;
        let n = self.seq;
        let o = self.ctxs.entry(ctx).or_default();
        match kind {
            Kind::Legacy => {
                o.dirty.clear();
                o.legacy_last = n;
            }
            Kind::Blocking => {
                if o.needs_tail(id) {
                    if self.tail < o.legacy_last {
                        self.tail = n;
                    }
                    o.seen.insert(id, o.legacy_last);
                }
                o.dirty.insert(id, n);
            }
            Kind::NonBlocking => {}
        }
        n
    }

    /// The latest operation's sequence number (taken before a synchronisation).
    fn mark(&self) -> u64 {
        self.seq
    }

    /// A synchronisation of stream `id` of kind `kind` in context `ctx`, which waited for every
    /// operation up to `mark` on it, completed. For the legacy stream that is every operation
    /// of the context (it had joined the blocking streams' work).
    fn synchronized(&mut self, ctx: usize, kind: Kind, id: u32, mark: u64) {
        let Some(o) = self.ctxs.get_mut(&ctx) else {
            return;
        };
        match kind {
            Kind::Legacy => {
                o.complete = o.complete.max(mark);
                o.dirty.retain(|_, &mut w| w > mark);
            }
            Kind::Blocking => {
                if o.dirty.get(&id).is_some_and(|&w| w <= mark) {
                    o.dirty.remove(&id);
                }
            }
            Kind::NonBlocking => {}
        }
    }

    /// A synchronisation of every stream (of every context: vgpud's `SYNCHRONIZE` with the
    /// all-streams flag) that waited for every operation up to `mark` completed.
    fn all_synchronized(&mut self, mark: u64) {
        for o in self.ctxs.values_mut() {
            o.complete = o.complete.max(mark);
            o.dirty.retain(|_, &mut w| w > mark);
        }
    }
}

/// The state and the two events (made at their first use).
#[derive(Default)]
struct Tracker {
    order: Tracking,
    events: Option<(Event<'static>, Event<'static>)>,
}

/// Whether any blocking stream was used: until then legacy work is not tracked.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static TRACKER: Mutex<Option<Tracker>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Tracker>> {
    TRACKER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held while an operation's own work is queued after its implicit waits, so that another
/// thread's operation is ordered wholly before or after it. Drop it before waiting for a
/// completion.
#[must_use = "queue the operation's work while this is held"]
pub struct Held {
    _guard: Option<MutexGuard<'static, Option<Tracker>>>,
    seq: u64,
}

impl Held {
    /// The operation's sequence number (0 when untracked), for [`synchronized`].
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("seq", &self.seq).finish()
    }
}

/// Queues on `dev` what must precede work on stream `id` of kind `kind` in context `ctx`.
/// The caller queues its work while the returned [`Held`] lives.
pub fn before_work(dev: &'static Device, ctx: usize, kind: Kind, id: u32) -> Result<Held, Error> {
    let untracked = Held {
        _guard: None,
        seq: 0,
    };
    match kind {
        Kind::NonBlocking => return Ok(untracked),
        // The single-stream program's path: no lock.
        Kind::Legacy if !ACTIVE.load(Ordering::Acquire) => return Ok(untracked),
        Kind::Legacy | Kind::Blocking => {}
    }
    let mut guard = lock();
    let t = guard.get_or_insert_with(Tracker::default);
    ACTIVE.store(true, Ordering::Release);
    let steps = t.order.plan(ctx, kind, id);
    if !steps.is_empty() {
        if t.events.is_none() {
            t.events = Some((dev.create_event()?, dev.create_event()?));
        }
        let (join, tail) = t.events.as_ref().expect("made above");
        for step in steps {
            // Queued, not waited for: the ring keeps their order, vgpud runs them in it.
            match step {
                Step::Join(s) => {
                    drop(dev.stream(s).record(join)?);
                    drop(dev.stream(0).wait_event(join)?);
                }
                Step::RecordTail => drop(dev.stream(0).record(tail)?),
                Step::WaitTail(s) => drop(dev.stream(s).wait_event(tail)?),
            }
        }
    }
    let seq = t.order.commit(ctx, kind, id);
    Ok(Held {
        _guard: Some(guard),
        seq,
    })
}

/// The latest operation's sequence number: take it before a synchronisation, give it to
/// [`synchronized`] or [`all_synchronized`] once that completed.
pub fn mark() -> u64 {
    lock().as_ref().map_or(0, |t| t.order.mark())
}

/// See [`Tracking::synchronized`].
pub fn synchronized(ctx: usize, kind: Kind, id: u32, mark: u64) {
    if let Some(t) = lock().as_mut() {
        t.order.synchronized(ctx, kind, id, mark);
    }
}

/// See [`Tracking::all_synchronized`].
pub fn all_synchronized(mark: u64) {
    if let Some(t) = lock().as_mut() {
        t.order.all_synchronized(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::*;
    use Step::*;

    /// Plans and commits one operation; returns its plan.
    fn op(o: &mut Tracking, ctx: usize, kind: Kind, id: u32) -> Vec<Step> {
        let p = o.plan(ctx, kind, id);
        o.commit(ctx, kind, id);
        p
    }

    #[test]
    fn the_single_stream_program_queues_nothing() {
        let mut o = Tracking::default();
        for _ in 0..3 {
            assert_eq!(op(&mut o, 1, Legacy, 0), []);
        }
        let mut o = Tracking::default();
        for _ in 0..3 {
            assert_eq!(op(&mut o, 1, NonBlocking, 5), []);
        }
    }

    #[test]
    fn a_blocking_stream_and_the_legacy_stream_wait_for_each_other() {
        let mut o = Tracking::default();
        op(&mut o, 1, Legacy, 0);
        // Blocking work after legacy work waits for it; the tail is recorded once.
        assert_eq!(op(&mut o, 1, Blocking, 7), [RecordTail, WaitTail(7)]);
        assert_eq!(op(&mut o, 1, Blocking, 7), []);
        assert_eq!(op(&mut o, 1, Blocking, 8), [WaitTail(8)]);
        // Legacy work after both joins both, in id order; then nothing is left to join.
        assert_eq!(op(&mut o, 1, Legacy, 0), [Join(7), Join(8)]);
        assert_eq!(op(&mut o, 1, Legacy, 0), []);
        // A new run of legacy work needs a new tail record.
        assert_eq!(op(&mut o, 1, Blocking, 8), [RecordTail, WaitTail(8)]);
        assert_eq!(op(&mut o, 1, Blocking, 7), [WaitTail(7)]);
    }

    #[test]
    fn non_blocking_streams_take_no_part() {
        let mut o = Tracking::default();
        op(&mut o, 1, Legacy, 0);
        assert_eq!(op(&mut o, 1, NonBlocking, 9), []);
        assert_eq!(op(&mut o, 1, Legacy, 0), [], "nothing to join");
        assert_eq!(op(&mut o, 1, NonBlocking, 9), []);
    }

    #[test]
    fn the_first_blocking_work_waits_for_untracked_legacy_work() {
        // Legacy work before tracking began (no blocking stream used yet) is not counted; the
        // first blocking work of each stream waits for it.
        let mut o = Tracking::default();
        assert_eq!(op(&mut o, 1, Blocking, 3), [RecordTail, WaitTail(3)]);
        assert_eq!(op(&mut o, 1, Blocking, 4), [WaitTail(4)]);
        // Another context's first blocking work: the tail already covers it.
        assert_eq!(op(&mut o, 2, Blocking, 5), [WaitTail(5)]);
    }

    #[test]
    fn contexts_are_ordered_apart() {
        let mut o = Tracking::default();
        op(&mut o, 1, Legacy, 0);
        op(&mut o, 2, Legacy, 0);
        op(&mut o, 1, Blocking, 3);
        assert_eq!(op(&mut o, 2, Legacy, 0), [], "context 1's stream");
        assert_eq!(op(&mut o, 1, Legacy, 0), [Join(3)]);
    }

    #[test]
    fn completed_synchronisations_end_what_they_covered() {
        let mut o = Tracking::default();
        op(&mut o, 1, Legacy, 0);
        op(&mut o, 1, Blocking, 3);
        op(&mut o, 1, Blocking, 4);
        // Stream 3 synchronised: only 4 is left to join.
        let m = o.mark();
        o.synchronized(1, Blocking, 3, m);
        assert_eq!(op(&mut o, 1, Legacy, 0), [Join(4)]);
        // Everything synchronised: neither side waits for the other's earlier work any more.
        op(&mut o, 1, Blocking, 3);
        let m = o.mark();
        o.all_synchronized(m);
        assert_eq!(op(&mut o, 1, Legacy, 0), []);
        let m = o.mark();
        o.all_synchronized(m);
        assert_eq!(op(&mut o, 1, Blocking, 4), []);
        // Work after the mark is not covered.
        op(&mut o, 1, Blocking, 3);
        let m = o.mark();
        op(&mut o, 1, Blocking, 4);
        o.synchronized(1, Blocking, 4, m);
        assert_eq!(op(&mut o, 1, Legacy, 0), [Join(3), Join(4)]);
        // The legacy stream synchronised (it joined everything before it).
        op(&mut o, 1, Blocking, 3);
        let p = o.plan(1, Legacy, 0);
        let n = o.commit(1, Legacy, 0);
        assert_eq!(p, [Join(3)]);
        o.synchronized(1, Legacy, 0, n);
        assert_eq!(op(&mut o, 1, Blocking, 3), []);
    }
}
