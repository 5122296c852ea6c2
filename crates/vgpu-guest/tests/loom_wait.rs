//! Model checking of the guest library's completion wait with loom (`RUSTFLAGS="--cfg loom"`;
//! `cargo xtask test` runs it in its own stage, see docs/architecture.md, "Model-checked
//! protocols").
//!
//! What is modelled: several threads of one `Device` waiting for their completions, each
//! blocking on the completion interrupt (`Device::wait` → `Backoff::snooze_or` →
//! `Device::block`), the interrupt armed while any thread waits (`irq_waiters`,
//! `Device::unwait`), the transports' interrupt wait (`IrqEventfd::epoch`,
//! `IrqEventfd::wait_since`, shared by the socket and the VFIO transports: an interrupt another
//! thread took ends a stale wait), and
//! vgpud posting completions (`Channel::complete` + `Channel::flush_irq`).
//!
//! How: the ring calls are the shipped code (`vgpu_abi::ring::{CqProducer, CqConsumer}` on a
//! loom-backed `ModelMem`, see tests/loom_ring.rs). `Device` and the transport cannot run under
//! loom (a mapping, eventfds, `poll`), so the steps around the ring calls are a faithful model:
//! each function below names the one it mirrors and keeps its steps in the same order under
//! the same locks, and `cross_check` (plain `cargo test`) fails when the real functions change
//! those steps. Every snooze blocks (a `Backoff::blocking` waiter: spinning and yielding only
//! add looks at the ring, which cannot lose a completion), and an interrupt wait has no
//! timeout: a waiter that only a timeout would wake is a lost wake-up, which loom reports as a
//! deadlock.
//!
//! Property: a waiter whose completion was published either sees it or is woken. (A wait with
//! a fence word, `Device::wait_or_fence`, also ends when the word is reached; that only ends a
//! wait sooner, so the model leaves it out.)
//!
//! Findings (`cross_check` says when the code changes):
//! 1. Fixed: there was no fence between arming the interrupt (`set_irq(true)`, a `SeqCst`
//!    RMW) and the re-check (an acquire load of the tail): the same gap as tests/loom_ring.rs
//!    `irq_handshake_unfenced`. `unfenced_one_waiter` keeps showing it; the shipped wait fences.
//! 2. Fixed: `Device::block` re-checked with `drain() > 0`, which counts only the completions
//!    *it* moves into `pending`. Another thread may have drained this waiter's completion
//!    between its `take` in `Device::wait` and the re-check, posted while nobody had the
//!    interrupt armed (so no interrupt comes): the waiter blocked with its completion already in
//!    `pending` until its wait timed out (`without_seq_check_completion_drained_by_another`).
//!    The shipped re-check also ends the wait when `Rings::seq` moved since the caller looked.
//! 3. Fixed: `IrqEventfd::wait_since` held one lock while it blocked in `poll`. Waiter A
//!    could drain B's completion into `pending`, take the interrupt meant for B, and block
//!    again holding that lock; B, whose epoch was stale, could not even look at the epoch
//!    until A's poll ended: its completion waited for A's timeout (up to `IRQ_WAIT`, or the
//!    back-off's sleep) or A's own completion (`locked_transport_waiter_behind_irq_lock`).
//!    Now one thread polls and the others wait on a condition variable that the poller
//!    signals after bumping the epoch (`as_shipped_waiter_not_stuck`).
//!
//! Findings 2 and 3 cost latency (every real wait is bounded), not correctness.
//!
//! Mutants (each must make loom fail): no re-check after arming, the epoch read after the
//! re-check, every waiter disarming the interrupt on its way out, a wait that ignores the
//! epoch.

#![cfg_attr(not(loom), allow(dead_code, unused_imports))]

/// Source-order checks of the steps the model mirrors (run by plain `cargo test`).
#[cfg(not(loom))]
mod cross_check {
    /// The body of `fn name` in `src` (to the closing brace at the signature's indentation).
    fn body<'a>(src: &'a str, name: &str) -> &'a str {
        let start = src
            .find(&format!("fn {name}("))
            .unwrap_or_else(|| panic!("fn {name} not found"));
        let indent = src[..start].rsplit('\n').next().unwrap_or("").to_string();
        let rest = &src[start..];
        let end = rest[1..]
            .find(&format!("\n{indent}}}\n"))
            .map_or(rest.len(), |e| e + 2 + indent.len() + 2);
        &rest[..end]
    }

    /// Asserts that `steps` occur in `text` in this order.
    fn in_order(what: &str, text: &str, steps: &[&str]) {
        let mut at = 0;
        for s in steps {
            match text[at..].find(s) {
                Some(i) => at += i + s.len(),
                None => panic!(
                    "{what}: step `{s}` not found after the previous steps; the loom model \
                     mirrors this sequence: update tests/loom_wait.rs with the change\n{text}"
                ),
            }
        }
    }

    const DEVICE: &str = include_str!("../src/device.rs");
    const RING: &str = include_str!("../src/device/ring.rs");
    const IRQ: &str = include_str!("../src/transport/irq.rs");
    const WAIT: &str = include_str!("../src/wait.rs");

    #[test]
    fn wait_sequence() {
        in_order(
            "Device::wait_inner",
            body(RING, "wait_inner"),
            &[
                "let mut r = self.lock()",
                "r.drain()",
                "r.take(tag)",
                "return Ok(Some(c))",
                "r.seq",
                "snooze_or(|d, waited| self.block(d, waited, true, seen))",
            ],
        );
        in_order(
            "Backoff::snooze_or",
            body(WAIT, "snooze_or"),
            &["spin_loop()", "yield_now()", "block("],
        );
        in_order(
            "Rings::drain",
            body(RING, "drain"),
            &["self.cq.pop()", "self.pending.get_mut(&c.tag)"],
        );
    }

    #[test]
    fn block_sequence() {
        let b = body(DEVICE, "block");
        in_order(
            "Device::block",
            b,
            &[
                "let mut r = self.lock()",
                "if r.irq",
                "return",
                "self.transport.irq_epoch()",
                "r.irq_waiters += 1",
                "r.cq.set_irq(true)",
                "if r.drain() > 0",
                "Self::unwait(&mut r)",
                "return",
                "epoch",
                "self.transport.wait_irq_since(epoch, bound)",
                "Self::unwait(&mut self.lock())",
            ],
        );
        let arm = &b[b.find("r.cq.set_irq(true)").unwrap()..b.find("r.drain()").unwrap()];
        assert!(
            arm.contains("full_fence()"),
            "Device::block no longer fences after arming: `AS_SHIPPED` models that fence"
        );
        assert!(
            b.contains("r.seq != seen"),
            "Device::block no longer looks at `Rings::seq`: `AS_SHIPPED` models that check"
        );
        in_order(
            "Device::unwait",
            body(DEVICE, "unwait"),
            &[
                "r.irq_waiters -= 1",
                "if r.irq_waiters == 0 && !r.irq",
                "r.cq.set_irq(false)",
            ],
        );
    }

    #[test]
    fn irq_wait_sequence() {
        let w = body(IRQ, "wait_since");
        in_order(
            "IrqEventfd::wait_since",
            w,
            &[
                "let mut polling = self.poller.lock()",
                "loop",
                "if self.epoch() != epoch",
                "return Ok(true)",
                "if !*polling",
                "*polling = true",
                "drop(polling)",
                "self.poll_and_read(",
                "= false",
                "self.changed.notify_all()",
                "return r",
                ".wait_timeout(polling",
            ],
        );
        in_order(
            "IrqEventfd::poll_and_read",
            body(IRQ, "poll_and_read"),
            &[
                "rustix::event::poll(",
                "rustix::io::read(",
                "self.taken.fetch_add(1",
            ],
        );
        in_order(
            "IrqEventfd::epoch",
            body(IRQ, "epoch"),
            &["self.taken.load("],
        );
    }
}

#[cfg(loom)]
mod model {
    use loom::sync::atomic::AtomicU64;
    use loom::sync::{Condvar, Mutex};
    use loom::thread;
    use std::collections::HashMap;
    use std::sync::atomic::Ordering::SeqCst;
    // std's `Arc`, not loom's: loom's panics when dropped while a failing model unwinds
    // (after a deadlock), which aborts the `should_panic` tests.
    use std::sync::Arc;
    use vgpu_abi::cmd::Cqe;
    use vgpu_abi::ring::{CqConsumer, CqProducer};
    use vgpu_abi::shm::full_fence;
    use vgpu_abi::shm::model::ModelMem;
    use vgpu_abi::{Layout, ShmView};

    fn layout() -> Layout {
        Layout::compute(128 * 1024, 2, 2).unwrap()
    }

    /// A view of `mem`, which must outlive every use of the view.
    fn view(mem: &ModelMem) -> ShmView {
        // SAFETY: `run` keeps `mem` until every model thread has finished (or the model
        // failed, after which no thread runs again).
        unsafe { mem.view() }
    }

    fn cqe(tag: u64) -> Cqe {
        Cqe {
            tag,
            status: 0,
            result0: tag * 3,
            ..Cqe::default()
        }
    }

    /// Which interrupt wait the transport does.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Transport {
        /// `IrqEventfd::wait_since` as shipped (the fix of finding 3): one poller, the others
        /// wait for the poller to stop and look at the epoch again.
        Shipped,
        /// Before the fix: every waiter takes one lock and holds it while it polls.
        Locked,
    }

    /// The protocol as shipped, or with one change (a fix or a deliberate bug).
    #[derive(Debug, Clone, Copy)]
    struct Variant {
        /// `full_fence()` between arming the interrupt and the re-check (not shipped).
        arm_fence: bool,
        /// The re-check also ends the wait when another thread moved a completion into
        /// `pending` since the caller last looked (`Rings::seq` moved; not shipped).
        seq_check: bool,
        transport: Transport,
        /// Re-check the ring after arming (mutant: false).
        recheck: bool,
        /// Read the epoch before the re-check (mutant: after it).
        epoch_first: bool,
        /// The interrupt stays armed while any thread waits (mutant: each unwait disarms).
        count_waiters: bool,
        /// An interrupt taken since the epoch ends the wait (mutant: false).
        use_epoch: bool,
    }

    /// Findings 1 and 2 were fixed in the shipped code: it fences after arming and looks at
    /// `Rings::seq`.
    const AS_SHIPPED: Variant = Variant {
        arm_fence: true,
        seq_check: true,
        transport: Transport::Shipped,
        recheck: true,
        epoch_first: true,
        count_waiters: true,
        use_epoch: true,
    };

    /// Before the fixes: no fence after arming (finding 1), no `seq` check (finding 2).
    const UNFENCED: Variant = Variant {
        arm_fence: false,
        seq_check: false,
        ..AS_SHIPPED
    };

    /// The fence of finding 1 without the `seq` check of finding 2.
    const FENCED: Variant = Variant {
        seq_check: false,
        ..AS_SHIPPED
    };

    /// With the fixes of findings 1 and 2 (as shipped now): the base the mutants change.
    const FIXED: Variant = AS_SHIPPED;

    /// Mirrors `Rings` (the fields the wait uses).
    struct Rings {
        cq: CqConsumer,
        pending: HashMap<u64, Option<Cqe>>,
        /// Arrival counter of completions (`Rings::seq`).
        seq: u64,
        irq_waiters: u32,
    }

    impl Rings {
        /// Mirrors `Rings::drain`.
        fn drain(&mut self) -> usize {
            let mut n = 0;
            while let Some(c) = self.cq.pop() {
                if let Some(slot @ None) = self.pending.get_mut(&c.tag) {
                    *slot = Some(c);
                    self.seq += 1;
                    n += 1;
                }
            }
            n
        }

        /// Mirrors `Rings::take`.
        fn take(&mut self, tag: u64) -> Option<Cqe> {
            match self.pending.get(&tag) {
                Some(Some(_)) => self.pending.remove(&tag).flatten(),
                _ => None,
            }
        }
    }

    /// The transport's interrupt side: the eventfd vgpud writes, and the waiters' state.
    #[derive(Default)]
    struct Irq {
        /// The eventfd's counter (vgpud adds, a read takes all).
        counter: Mutex<u64>,
        readable: Condvar,
        /// The lock of the `Locked` transport.
        irq_lock: Mutex<()>,
        /// `IrqEventfd::taken`.
        irq_taken: AtomicU64,
        /// `IrqEventfd::poller`: whether a thread is polling the eventfd.
        poller: Mutex<bool>,
        /// `IrqEventfd::changed`.
        epoch_changed: Condvar,
    }

    impl Irq {
        /// vgpud's eventfd write (`signal_eventfd`).
        fn signal(&self) {
            *self.counter.lock().unwrap() += 1;
            self.readable.notify_all();
        }

        /// `poll` for `POLLIN` without a timeout, then `read` (takes the whole count).
        fn poll_and_read(&self) {
            let mut c = self.counter.lock().unwrap();
            while *c == 0 {
                c = self.readable.wait(c).unwrap();
            }
            *c = 0;
        }

        /// Mirrors `IrqEventfd::epoch`.
        fn irq_epoch(&self) -> u64 {
            self.irq_taken.load(SeqCst)
        }

        /// Mirrors `IrqEventfd::wait_since` (without its timeout, see the module
        /// docs), or the proposed variant.
        fn wait_irq_since(&self, epoch: u64, v: Variant) {
            match v.transport {
                Transport::Locked => {
                    let _g = self.irq_lock.lock().unwrap();
                    // "Another waiter took an interrupt meanwhile (perhaps ours)".
                    if v.use_epoch && self.irq_epoch() != epoch {
                        return;
                    }
                    self.poll_and_read();
                    self.irq_taken.fetch_add(1, SeqCst);
                }
                Transport::Shipped => {
                    let mut polling = self.poller.lock().unwrap();
                    loop {
                        if v.use_epoch && self.irq_epoch() != epoch {
                            return;
                        }
                        if !*polling {
                            *polling = true;
                            drop(polling);
                            self.poll_and_read();
                            self.irq_taken.fetch_add(1, SeqCst);
                            *self.poller.lock().unwrap() = false;
                            self.epoch_changed.notify_all();
                            return;
                        }
                        polling = self.epoch_changed.wait(polling).unwrap();
                    }
                }
            }
        }
    }

    /// Mirrors the parts of `Device` the wait uses.
    struct Device {
        rings: Mutex<Rings>,
        irq: Irq,
    }

    impl Device {
        /// Mirrors `Device::wait` (a blocking back-off: every snooze blocks).
        fn wait(&self, tag: u64, v: Variant) -> Cqe {
            loop {
                let seen = {
                    let mut r = self.rings.lock().unwrap();
                    r.drain();
                    if let Some(c) = r.take(tag) {
                        return c;
                    }
                    r.seq
                };
                self.block(seen, v);
            }
        }

        /// Mirrors `Device::block` (interrupts usable, `enable_irq` off). `seen`: `Rings::seq`
        /// when the caller last looked (used by the `seq_check` fix only).
        fn block(&self, seen: u64, v: Variant) {
            let epoch = {
                let mut r = self.rings.lock().unwrap();
                let early = v.epoch_first.then(|| self.irq.irq_epoch());
                r.irq_waiters += 1;
                r.cq.set_irq(true);
                if v.arm_fence {
                    full_fence();
                }
                let drained = if v.recheck { r.drain() } else { 0 };
                if drained > 0 || (v.seq_check && r.seq != seen) {
                    Self::unwait(&mut r, v);
                    return;
                }
                early.unwrap_or_else(|| self.irq.irq_epoch())
            };
            self.irq.wait_irq_since(epoch, v);
            Self::unwait(&mut self.rings.lock().unwrap(), v);
        }

        /// Mirrors `Device::unwait`.
        fn unwait(r: &mut Rings, v: Variant) {
            r.irq_waiters -= 1;
            if r.irq_waiters == 0 || !v.count_waiters {
                r.cq.set_irq(false);
            }
        }
    }

    /// vgpud: `Channel::complete` (push) then `Channel::flush_irq` (fence, flag, signal).
    fn post(cq: &mut CqProducer, irq: &Irq, tag: u64) {
        assert!(cq.free().unwrap() > 0);
        cq.push(&cqe(tag));
        full_fence();
        if cq.irq_wanted() {
            irq.signal();
        }
    }

    /// How vgpud orders the completions of the waiters.
    #[derive(Clone, Copy, PartialEq)]
    enum Scenario {
        /// One waiter, one completion.
        One,
        /// Two waiters; both completions posted, second waiter's first.
        TwoIndependent,
        /// Two waiters; the second one's completion, and the first one's only after the
        /// second waiter returned (so only its own wake-up can end its wait).
        TwoDependent,
    }

    fn run(v: Variant, s: Scenario) {
        let l = layout();
        let mem = ModelMem::rings(&l);
        let waiters: &[u64] = if s == Scenario::One { &[1] } else { &[1, 2] };
        let dev = Arc::new(Device {
            rings: Mutex::new(Rings {
                cq: CqConsumer::new(view(&mem), l),
                // `Device::start` registered each tag before publishing its entry.
                pending: waiters.iter().map(|&t| (t, None)).collect(),
                seq: 0,
                irq_waiters: 0,
            }),
            irq: Irq::default(),
        });
        let handles: Vec<_> = waiters
            .iter()
            .map(|&tag| {
                // The ring view inside `dev` points into `mem`, which outlives every thread.
                let d = dev.clone();
                thread::spawn(move || assert_eq!(d.wait(tag, v), cqe(tag)))
            })
            .collect();
        let mut cq = CqProducer::new(view(&mem), l);
        let mut handles = handles.into_iter();
        match s {
            Scenario::One => post(&mut cq, &dev.irq, 1),
            Scenario::TwoIndependent => {
                post(&mut cq, &dev.irq, 2);
                post(&mut cq, &dev.irq, 1);
            }
            Scenario::TwoDependent => {
                let first = handles.next().unwrap();
                post(&mut cq, &dev.irq, 2);
                handles.next().unwrap().join().unwrap();
                post(&mut cq, &dev.irq, 1);
                first.join().unwrap();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        let r = dev.rings.lock().unwrap();
        assert_eq!(r.irq_waiters, 0);
        assert!(r.pending.is_empty());
    }

    // ---- what holds -----------------------------------------------------------------------

    #[test]
    fn one_waiter() {
        loom::model(|| run(FENCED, Scenario::One));
    }

    /// The interrupt stays armed while any waiter waits, and an interrupt one waiter takes
    /// ends the other's stale wait.
    #[test]
    fn two_waiters() {
        loom::model(|| run(FIXED, Scenario::TwoIndependent));
    }

    /// Finding 3 fixed: a waiter is woken by its own completion alone, not kept behind
    /// another waiter's poll.
    #[test]
    fn as_shipped_waiter_not_stuck() {
        loom::model(|| run(AS_SHIPPED, Scenario::TwoDependent));
    }

    // ---- findings -------------------------------------------------------------------------

    /// Finding 1 (module docs, fixed): without the fence the re-check may miss the completion
    /// while vgpud misses the flag.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn unfenced_one_waiter() {
        loom::model(|| run(UNFENCED, Scenario::One));
    }

    /// The shipped wait, one waiter: no lost interrupt.
    #[test]
    fn as_shipped_one_waiter() {
        loom::model(|| run(AS_SHIPPED, Scenario::One));
    }

    /// Finding 3 (module docs, fixed): with one lock held across the poll, a waiter is stuck
    /// behind another's poll until it ends.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn locked_transport_waiter_behind_irq_lock() {
        let v = Variant {
            transport: Transport::Locked,
            ..FIXED
        };
        loom::model(move || run(v, Scenario::TwoDependent));
    }

    /// Finding 2 (module docs, fixed): without the `seq` check a waiter blocks although
    /// another thread already moved its completion into `pending`.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn without_seq_check_completion_drained_by_another() {
        loom::model(|| run(FENCED, Scenario::TwoIndependent));
    }

    // ---- mutants --------------------------------------------------------------------------

    #[test]
    #[should_panic(expected = "deadlock")]
    fn mutant_no_recheck_after_arming() {
        let v = Variant {
            recheck: false,
            ..FIXED
        };
        loom::model(move || run(v, Scenario::One));
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn mutant_epoch_read_after_recheck() {
        let v = Variant {
            epoch_first: false,
            ..FIXED
        };
        loom::model(move || run(v, Scenario::TwoIndependent));
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn mutant_any_waiter_disarms() {
        let v = Variant {
            count_waiters: false,
            ..FIXED
        };
        loom::model(move || run(v, Scenario::TwoIndependent));
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn mutant_wait_ignores_epoch() {
        let v = Variant {
            use_epoch: false,
            ..FIXED
        };
        loom::model(move || run(v, Scenario::TwoIndependent));
    }
}
