//! Waiting without burning a CPU forever: spin briefly, then yield, then block with a growing
//! interval (capped at 1 ms, and at a fraction of the time already waited so that a long wait
//! overshoots its completion by a few percent at most). Where the transport has completion
//! interrupts the block is a wait on the interrupt, which ends as soon as vgpud signals; such a
//! wait may then last longer once the wait is long ([`irq_block`]): it costs no latency, and a
//! long wait (a kernel of a second) wakes tens of times instead of a thousand.

use std::time::{Duration, Instant};

/// How long to spin before yielding.
const SPIN: Duration = Duration::from_micros(30);
/// How many times to yield before sleeping.
const YIELDS: u32 = 16;
/// First sleep.
const SLEEP_MIN: Duration = Duration::from_micros(10);
/// Longest sleep.
const SLEEP_MAX: Duration = Duration::from_millis(1);
/// A sleep never exceeds the time already waited divided by this (bounds the overshoot).
const SLEEP_FRACTION: u32 = 16;
/// A wait that has lasted this long is for long work (a kernel, a large copy): its blocks on
/// the interrupt grow past [`SLEEP_MAX`]. Shorter waits keep their short blocks (on an H200
/// host, longer blocks during short waits made 64 MiB copies 2–3% slower; BENCHMARKS.md).
const LONG_WAIT: Duration = Duration::from_millis(16);
/// The longest single block on the interrupt: what still bounds a wait that only the interrupt
/// ends is the fence and timeout checks between blocks.
const IRQ_WAIT_MAX: Duration = Duration::from_millis(100);
/// Past [`LONG_WAIT`], a block on the interrupt may last the time waited divided by this. Not
/// [`SLEEP_FRACTION`]: that bounds how far a sleep overshoots the completion, and the
/// interrupt ends a block at the completion; what is left to bound is how late a fence or a
/// timeout is noticed.
const IRQ_BLOCK_FRACTION: u32 = 4;

/// How long one block on the completion interrupt may last, for a back-off that offered `d`
/// after `waited`, with at least `floor`: past [`LONG_WAIT`], a quarter of the time waited, up
/// to [`IRQ_WAIT_MAX`] (the interrupt ends the block as soon as vgpud posts).
pub(crate) fn irq_block(d: Duration, waited: Duration, floor: Duration) -> Duration {
    let b = d.max(floor);
    if waited >= LONG_WAIT {
        b.max((waited / IRQ_BLOCK_FRACTION).min(IRQ_WAIT_MAX))
    } else {
        b
    }
}

/// How a thread waits for the device (a CUDA context's `CU_CTX_SCHED_*`, see
/// [`crate::Device::set_wait_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WaitPolicy {
    /// Spin briefly (30 µs), yield a few times, then block (the default: lowest latency for
    /// short work, no CPU burnt on long work).
    Eager = 0,
    /// Block at once (on the completion interrupt where the transport has one), for a client
    /// that must not take CPU time from others (`CU_CTX_SCHED_BLOCKING_SYNC`).
    Block = 1,
    /// Spin until done (`CU_CTX_SCHED_SPIN`): what NVIDIA's driver does by default; a long
    /// wait ends as soon as the work does, at the price of a core.
    Spin = 2,
    /// Yield the CPU between looks until done (`CU_CTX_SCHED_YIELD`).
    Yield = 3,
}

impl WaitPolicy {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Block,
            2 => Self::Spin,
            3 => Self::Yield,
            _ => Self::Eager,
        }
    }
}

/// A spin → yield → sleep back-off.
#[derive(Debug)]
pub(crate) struct Backoff {
    start: Instant,
    spins: u32,
    spinning: bool,
    yields: u32,
    sleep: Duration,
    /// Whether to spin and yield before blocking (see [`Backoff::blocking`]).
    eager: bool,
    /// Never block: spin (or yield) for as long as the wait lasts.
    endless: Option<WaitPolicy>,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            spins: 0,
            spinning: true,
            yields: 0,
            sleep: SLEEP_MIN,
            eager: true,
            endless: None,
        }
    }

    /// The back-off of a waiter with policy `p`.
    pub(crate) fn for_policy(p: WaitPolicy) -> Self {
        match p {
            WaitPolicy::Eager => Self::new(),
            WaitPolicy::Block => Self::blocking(),
            WaitPolicy::Spin | WaitPolicy::Yield => Self {
                endless: Some(p),
                ..Self::new()
            },
        }
    }

    /// A back-off that blocks at once (no spinning, no yields): for a waiter that must not
    /// take CPU from others, at the price of a wake-up per wait.
    pub(crate) fn blocking() -> Self {
        Self {
            spinning: false,
            yields: YIELDS,
            eager: false,
            ..Self::new()
        }
    }

    /// Starts over (call after progress).
    pub(crate) fn reset(&mut self) {
        let endless = self.endless;
        *self = if self.eager {
            Self::new()
        } else {
            Self::blocking()
        };
        self.endless = endless;
    }

    /// Whether the next snooze blocks (spinning and yielding are over).
    pub(crate) fn is_blocking(&self) -> bool {
        !self.spinning && self.yields >= YIELDS
    }

    /// Waits a little, longer each call.
    pub(crate) fn snooze(&mut self) {
        self.snooze_or(|d, _| {
            std::thread::sleep(d);
        });
    }

    /// As [`Backoff::snooze`], but a blocking wait of at most `d` goes through `block`, which
    /// also gets the time waited so far (for example a wait on the completion interrupt, which
    /// may end early and so may last longer, see [`irq_block`]).
    pub(crate) fn snooze_or(&mut self, block: impl FnOnce(Duration, Duration)) {
        // While spinning, check again after a single pause: a PAUSE costs ~140 cycles on
        // recent x86, so batching many would add microseconds to every round trip. The clock is
        // read only every 64 spins.
        self.spins = self.spins.wrapping_add(1);
        match self.endless {
            Some(WaitPolicy::Spin) => return std::hint::spin_loop(),
            Some(_) => return std::thread::yield_now(),
            None => {}
        }
        if self.spinning && self.spins.is_multiple_of(64) && self.start.elapsed() >= SPIN {
            self.spinning = false;
        }
        if self.spinning {
            std::hint::spin_loop();
        } else if self.yields < YIELDS {
            self.yields += 1;
            std::thread::yield_now();
        } else {
            let waited = self.start.elapsed();
            let cap = (waited / SLEEP_FRACTION).max(SLEEP_MIN);
            block(self.sleep.min(cap), waited);
            self.sleep = (self.sleep * 2).min(SLEEP_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        let t = Instant::now();
        let mut calls = 0u32;
        let mut longest = Duration::ZERO;
        while b.sleep < SLEEP_MAX {
            let waited = b.start.elapsed();
            b.snooze_or(|d, _| {
                assert!(d <= (waited / SLEEP_FRACTION).max(SLEEP_MIN) + Duration::from_micros(50));
                longest = longest.max(d);
                std::thread::sleep(d);
            });
            calls += 1;
            assert!(calls < 1_000_000, "never reached the sleep cap");
        }
        // Spin (30 µs) + 16 yields + 7 doubling sleeps (10 µs .. 640 µs): well under a second.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(longest > SLEEP_MIN, "sleeps grow");
        // Once enough time has passed the full cap applies.
        b.start = Instant::now() - SLEEP_MAX * (SLEEP_FRACTION + 1);
        let s = Instant::now();
        b.snooze();
        assert_eq!(b.sleep, SLEEP_MAX, "the sleep is capped");
        assert!(s.elapsed() >= SLEEP_MAX);
        b.reset();
        assert_eq!((b.sleep, b.yields), (SLEEP_MIN, 0));
    }

    #[test]
    fn spinning_and_yielding_waiters_never_block() {
        for p in [WaitPolicy::Spin, WaitPolicy::Yield] {
            let mut b = Backoff::for_policy(p);
            b.start = Instant::now() - Duration::from_secs(1);
            for _ in 0..10_000 {
                b.snooze_or(|_, _| panic!("{p:?} blocked"));
            }
            assert!(!b.is_blocking());
            b.reset();
            b.start = Instant::now() - Duration::from_secs(1);
            b.snooze_or(|_, _| panic!("{p:?} blocked after a reset"));
        }
        let mut b = Backoff::for_policy(WaitPolicy::Block);
        let mut blocked = false;
        b.snooze_or(|_, _| blocked = true);
        assert!(blocked, "a blocking waiter blocks at once");
    }

    #[test]
    fn interrupt_blocks_grow_only_in_long_waits() {
        let us = Duration::from_micros;
        let ms = Duration::from_millis;
        // Short waits: what the back-off offered, or the floor.
        assert_eq!(irq_block(us(40), ms(1), Duration::ZERO), us(40));
        assert_eq!(irq_block(us(40), ms(1), ms(2)), ms(2));
        assert_eq!(irq_block(us(40), ms(15), Duration::ZERO), us(40));
        // Long waits: a quarter of the time waited, up to the maximum.
        assert_eq!(irq_block(ms(1), ms(32), Duration::ZERO), ms(8));
        assert_eq!(irq_block(ms(1), ms(200), Duration::ZERO), ms(50));
        assert_eq!(
            irq_block(ms(1), Duration::from_secs(60), ms(2)),
            IRQ_WAIT_MAX
        );
    }
}
