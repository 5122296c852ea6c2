//! The staging arena for launch parameters too large for a launch entry: a ring in the part of
//! staging the guest library leaves to its caller (`Device::spare_staging`). vgpud reads a
//! launch's parameters when it issues the launch, so a slot is reused only once its launch
//! completed: allocations are freed in order as the completions of their launches arrive,
//! and an allocation that finds the ring full waits for the oldest one.

use std::collections::VecDeque;
use std::sync::Mutex;

use vgpu_guest::{Device, Error, Pending};

/// Slots are 64-byte aligned (a cache line: no two launches share one).
const ALIGN: u64 = 64;

/// One allocation: ring positions `[start, end)` (free-running) and its launch.
struct Slot {
    end: u64,
    launch: Pending<'static>,
}

/// The ring.
pub struct Arena {
    /// Staging offset of the ring.
    base: u64,
    /// Ring size in bytes.
    size: u64,
    /// Next free position (free-running).
    head: u64,
    /// Oldest position still in use (free-running).
    tail: u64,
    slots: VecDeque<Slot>,
}

/// The process's arena, made on first use.
pub static ARENA: Mutex<Option<Arena>> = Mutex::new(None);

impl Arena {
    /// The arena over `(offset, len)` of staging.
    pub fn new(base: u64, size: u64) -> Self {
        Self {
            base,
            size,
            head: 0,
            tail: 0,
            slots: VecDeque::new(),
        }
    }

    /// Frees the slots whose launches completed, oldest first; with `block`, first waits for
    /// the oldest launch. A launch's error is returned once (it is that launch's own error).
    fn reclaim(&mut self, block: bool) -> Result<(), Error> {
        let mut err = None;
        if block {
            if let Some(s) = self.slots.pop_front() {
                self.tail = s.end;
                if let Err(e) = s.launch.wait() {
                    err.get_or_insert(e);
                }
            }
        }
        while let Some(front) = self.slots.front_mut() {
            match front.launch.try_wait() {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
            let s = self.slots.pop_front().expect("front exists");
            self.tail = s.end;
        }
        if self.slots.is_empty() {
            self.tail = self.head;
        }
        err.map_or(Ok(()), Err)
    }

    /// Reserves `len` bytes: the staging offset to write them at and the ring position its
    /// slot ends at (pass it to [`Arena::commit`]). Waits for launches to complete while the
    /// ring is full.
    pub fn reserve(&mut self, len: u64) -> Result<(u64, u64), Error> {
        let len = len.div_ceil(ALIGN) * ALIGN;
        if len > self.size {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes of launch parameters exceed the {}-byte arena",
                self.size
            )));
        }
        let mut reclaim_err = None;
        loop {
            if let Err(e) = self.reclaim(false) {
                reclaim_err.get_or_insert(e);
            }
            // A slot never wraps: skip to the ring's start when it would.
            let at = self.head % self.size;
            let start = if at + len > self.size {
                self.head + (self.size - at)
            } else {
                self.head
            };
            if start + len - self.tail <= self.size {
                self.head = start + len;
                // An error of an earlier launch belongs to that launch; it does not stop this
                // one (the sticky error surfaces at the next synchronising call).
                let _ = reclaim_err;
                return Ok((self.base + start % self.size, start + len));
            }
            if self.slots.is_empty() {
                // Nothing in flight holds space: only the skipped end of the ring was in the
                // way; start the next lap empty.
                self.head = start;
                self.tail = start;
                continue;
            }
            if let Err(e) = self.reclaim(true) {
                reclaim_err.get_or_insert(e);
            }
        }
    }

    /// Records the launch that uses the slot ending at `end`.
    pub fn commit(&mut self, end: u64, launch: Pending<'static>) {
        self.slots.push_back(Slot { end, launch });
    }

    /// Gives back the last reservation (its launch was refused before it was queued).
    pub fn cancel(&mut self, end: u64) {
        if self.head == end {
            self.head = self.slots.back().map_or(self.tail, |s| s.end);
        }
    }
}

/// The ring's share of the spare staging area: an eighth, 8 MiB at most (the rest is for
/// page-locked host memory, [`crate::pinned`]).
pub fn arena_len(spare: u64) -> u64 {
    (spare / 8).min(8 << 20) / ALIGN * ALIGN
}

/// The arena for `dev`, if its staging area has room for one.
pub fn arena_for(dev: &Device) -> Option<Arena> {
    dev.spare_staging()
        .map(|(off, len)| Arena::new(off, arena_len(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_aligned_inside_the_ring_and_never_wrap() {
        let mut a = Arena::new(1 << 20, 4096);
        let mut last_end = 0;
        for len in [1u64, 63, 64, 65, 1000, 4096, 3000, 17] {
            let (off, end) = a.reserve(len).unwrap();
            assert!(
                off >= 1 << 20 && off + len <= (1 << 20) + 4096,
                "{off} {len}"
            );
            assert_eq!((off - (1 << 20)) % ALIGN, 0);
            assert!(end > last_end);
            last_end = end;
            // Nothing is in flight, so every reservation fits at once.
            assert!(a.slots.is_empty());
        }
        assert!(a.reserve(4097).is_err());
    }

    #[test]
    fn a_cancelled_reservation_is_given_back() {
        let mut a = Arena::new(0, 4096);
        let (_, end) = a.reserve(100).unwrap();
        a.cancel(end);
        assert_eq!(a.head, 0);
        let (off, _) = a.reserve(100).unwrap();
        assert_eq!(off, 0);
    }
}
