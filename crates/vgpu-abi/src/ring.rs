//! The submission and completion rings (NVMe / io_uring style).
//!
//! Indices are free-running `u32`s; a slot is `index & (entries - 1)`. The producer owns the
//! tail, the consumer the head, each on its own cache line. Each side keeps its own index in
//! private memory and only *publishes* it to shared memory, so a peer scribbling over the
//! header can never make a side lose track of its own position; a peer index that is
//! impossible (`tail - head > entries`) is a protocol violation and fences the VM.

use crate::cmd::{Cqe, Sqe};
use crate::layout::{ring_hdr, Layout, CQ_FLAG_IRQ, SQ_FLAG_HOST_POLLING};
use crate::shm::{full_fence, ShmView};

/// Why a VM was fenced (stored in `last_error`; distinct from [`crate::Status`] codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u32)]
pub enum FenceReason {
    /// The guest's SQ tail is more than `sq_entries` ahead of the host's head.
    #[error("submission ring tail out of range")]
    SqIndexOutOfRange = 0x101,
    /// The guest's CQ head is behind the oldest completion or ahead of the host's tail.
    #[error("completion ring head out of range")]
    CqIndexOutOfRange = 0x102,
    /// The VM's interrupt eventfd would have blocked vgpud's write (its counter was driven to
    /// the maximum and its file made blocking by someone holding it): no well-behaved QEMU
    /// does that.
    #[error("interrupt eventfd tampered with")]
    IrqBlocked = 0x103,
}

impl FenceReason {
    /// Decodes a `last_error` value.
    pub fn from_raw(v: u32) -> Option<Self> {
        match v {
            0x101 => Some(Self::SqIndexOutOfRange),
            0x102 => Some(Self::CqIndexOutOfRange),
            0x103 => Some(Self::IrqBlocked),
            _ => None,
        }
    }
}

/// Number of occupied slots given a producer and consumer index, or `None` when the pair is
/// impossible for a ring of `entries` slots.
#[inline]
pub fn occupancy(tail: u32, head: u32, entries: u32) -> Option<u32> {
    let n = tail.wrapping_sub(head);
    (n <= entries).then_some(n)
}

/// Zeroes both ring headers (host, at set-up and reset).
pub fn reset_rings(view: &ShmView, l: &Layout) {
    view.fill(l.sq_offset as usize, ring_hdr::SIZE, 0);
    view.fill(l.cq_offset as usize, ring_hdr::SIZE, 0);
}

/// Host side of the submission ring.
#[derive(Debug)]
pub struct SqConsumer {
    view: ShmView,
    layout: Layout,
    head: u32,
}

impl SqConsumer {
    /// Starts at index 0 (call [`reset_rings`] first).
    pub fn new(view: ShmView, layout: Layout) -> Self {
        Self {
            view,
            layout,
            head: 0,
        }
    }

    fn hdr(&self, field: usize) -> usize {
        self.layout.sq_offset as usize + field
    }

    /// Entries published by the guest and not yet consumed.
    pub fn available(&self) -> Result<u32, FenceReason> {
        let tail = self.view.load_u32(self.hdr(ring_hdr::TAIL));
        occupancy(tail, self.head, self.layout.sq_entries).ok_or(FenceReason::SqIndexOutOfRange)
    }

    /// Copies the next entry out of shared memory (once) and frees its slot.
    /// Call only when [`Self::available`] said there is one.
    pub fn pop(&mut self) -> Sqe {
        let slot = self.head & (self.layout.sq_entries - 1);
        let sqe: Sqe = self.view.read_obj(self.layout.sqe_offset(slot));
        self.head = self.head.wrapping_add(1);
        self.view.store_u32(self.hdr(ring_hdr::HEAD), self.head);
        sqe
    }

    /// Publishes whether the host is polling (so the guest may skip the doorbell).
    pub fn set_polling(&self, on: bool) {
        let off = self.hdr(ring_hdr::FLAGS);
        if on {
            self.view.fetch_or_u32(off, SQ_FLAG_HOST_POLLING);
        } else {
            self.view.fetch_and_u32(off, !SQ_FLAG_HOST_POLLING);
            full_fence();
        }
    }
}

/// Host side of the completion ring.
#[derive(Debug)]
pub struct CqProducer {
    view: ShmView,
    layout: Layout,
    tail: u32,
}

impl CqProducer {
    /// Starts at index 0 (call [`reset_rings`] first).
    pub fn new(view: ShmView, layout: Layout) -> Self {
        Self {
            view,
            layout,
            tail: 0,
        }
    }

    fn hdr(&self, field: usize) -> usize {
        self.layout.cq_offset as usize + field
    }

    /// Free slots, judged from the guest's published head.
    pub fn free(&self) -> Result<u32, FenceReason> {
        let head = self.view.load_u32(self.hdr(ring_hdr::HEAD));
        occupancy(self.tail, head, self.layout.cq_entries)
            .map(|used| self.layout.cq_entries - used)
            .ok_or(FenceReason::CqIndexOutOfRange)
    }

    /// Writes a completion and publishes it. The caller reserved the slot (checked `free`).
    pub fn push(&mut self, cqe: &Cqe) {
        let slot = self.tail & (self.layout.cq_entries - 1);
        self.view.write_obj(self.layout.cqe_offset(slot), cqe);
        self.tail = self.tail.wrapping_add(1);
        self.view.store_u32(self.hdr(ring_hdr::TAIL), self.tail);
    }

    /// Whether the guest asked for an interrupt on completion.
    pub fn irq_wanted(&self) -> bool {
        self.view.load_u32(self.hdr(ring_hdr::FLAGS)) & CQ_FLAG_IRQ != 0
    }
}

/// Guest side of the submission ring.
#[derive(Debug)]
pub struct SqProducer {
    view: ShmView,
    layout: Layout,
    tail: u32,
}

impl SqProducer {
    /// Attaches at the indices currently published (a fresh device has both at 0).
    pub fn new(view: ShmView, layout: Layout) -> Self {
        let tail = view.load_u32(layout.sq_offset as usize + ring_hdr::TAIL);
        Self { view, layout, tail }
    }

    /// Free slots.
    pub fn free(&self) -> u32 {
        let head = self
            .view
            .load_u32(self.layout.sq_offset as usize + ring_hdr::HEAD);
        let used = self.tail.wrapping_sub(head).min(self.layout.sq_entries);
        self.layout.sq_entries - used
    }

    /// Writes an entry (not yet visible to the host). The caller checked `free`.
    pub fn push(&mut self, sqe: &Sqe) {
        let slot = self.tail & (self.layout.sq_entries - 1);
        self.view.write_obj(self.layout.sqe_offset(slot), sqe);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes everything pushed so far. Returns whether the doorbell must be rung (the host
    /// is not polling). The fence pairs with the host's "clear polling flag, fence, recheck".
    pub fn publish(&mut self) -> bool {
        self.view
            .store_u32(self.layout.sq_offset as usize + ring_hdr::TAIL, self.tail);
        full_fence();
        self.view
            .load_u32(self.layout.sq_offset as usize + ring_hdr::FLAGS)
            & SQ_FLAG_HOST_POLLING
            == 0
    }
}

/// Guest side of the completion ring.
#[derive(Debug)]
pub struct CqConsumer {
    view: ShmView,
    layout: Layout,
    head: u32,
}

impl CqConsumer {
    /// Attaches at the indices currently published.
    pub fn new(view: ShmView, layout: Layout) -> Self {
        let head = view.load_u32(layout.cq_offset as usize + ring_hdr::HEAD);
        Self { view, layout, head }
    }

    /// Takes the next completion, if any.
    pub fn pop(&mut self) -> Option<Cqe> {
        let tail = self
            .view
            .load_u32(self.layout.cq_offset as usize + ring_hdr::TAIL);
        if tail == self.head {
            return None;
        }
        let slot = self.head & (self.layout.cq_entries - 1);
        let cqe = self.view.read_obj(self.layout.cqe_offset(slot));
        self.head = self.head.wrapping_add(1);
        self.view
            .store_u32(self.layout.cq_offset as usize + ring_hdr::HEAD, self.head);
        Some(cqe)
    }

    /// Asks for (or stops asking for) an interrupt when completions are posted.
    pub fn set_irq(&self, on: bool) {
        let off = self.layout.cq_offset as usize + ring_hdr::FLAGS;
        if on {
            self.view.fetch_or_u32(off, CQ_FLAG_IRQ);
        } else {
            self.view.fetch_and_u32(off, !CQ_FLAG_IRQ);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use proptest::prelude::*;

    struct Mem(ShmView);
    impl Mem {
        fn new(size: usize) -> Self {
            Mem(ShmView::leak_zeroed(size))
        }
        fn view(&mut self) -> ShmView {
            self.0
        }
    }

    #[test]
    fn occupancy_math() {
        assert_eq!(occupancy(5, 5, 8), Some(0));
        assert_eq!(occupancy(13, 5, 8), Some(8));
        assert_eq!(occupancy(14, 5, 8), None);
        assert_eq!(occupancy(4, 5, 8), None);
        assert_eq!(occupancy(2, u32::MAX - 1, 8), Some(4));
    }

    proptest! {
        /// Any tail within `entries` of head is accepted and counts exactly; any other is refused.
        #[test]
        fn occupancy_wraps(head in any::<u32>(), n in 0u32..64, shift in 1u32..8) {
            let entries = 1u32 << shift;
            let tail = head.wrapping_add(n);
            if n <= entries {
                prop_assert_eq!(occupancy(tail, head, entries), Some(n));
            } else {
                prop_assert_eq!(occupancy(tail, head, entries), None);
            }
        }

        /// Guest and host agree on every entry through many wraps of a small ring.
        #[test]
        fn rings_roundtrip(batches in proptest::collection::vec(1usize..8, 1..40)) {
            let layout = Layout::compute(1 << 17, 8, 8).unwrap();
            let mut mem = Mem::new(1 << 17);
            let v = mem.view();
            reset_rings(&v, &layout);
            let mut sqp = SqProducer::new(v, layout);
            let mut sqc = SqConsumer::new(v, layout);
            let mut cqp = CqProducer::new(v, layout);
            let mut cqc = CqConsumer::new(v, layout);
            let mut tag = 0u64;
            for b in batches {
                let b = b.min(sqp.free() as usize);
                for _ in 0..b {
                    sqp.push(&Command::Nop.encode(0, tag));
                    tag += 1;
                }
                sqp.publish();
                let n = sqc.available().unwrap();
                prop_assert_eq!(n as usize, b);
                for _ in 0..n {
                    let s = sqc.pop();
                    prop_assert!(cqp.free().unwrap() > 0);
                    cqp.push(&Cqe { tag: s.tag, ..Cqe::default() });
                }
                let mut got = 0;
                while let Some(c) = cqc.pop() {
                    prop_assert_eq!(c.tag, tag - b as u64 + got);
                    got += 1;
                }
                prop_assert_eq!(got as usize, b);
            }
        }

        /// Whatever a hostile guest writes over the ring headers, the host either reads a
        /// count within the ring or detects the violation.
        #[test]
        fn hostile_indices_are_detected(tail in any::<u32>(), cq_head in any::<u32>()) {
            let layout = Layout::compute(1 << 17, 16, 32).unwrap();
            let mut mem = Mem::new(1 << 17);
            let v = mem.view();
            reset_rings(&v, &layout);
            let sqc = SqConsumer::new(v, layout);
            let cqp = CqProducer::new(v, layout);
            v.store_u32(layout.sq_offset as usize, tail);
            v.store_u32(layout.cq_offset as usize + ring_hdr::HEAD, cq_head);
            match sqc.available() {
                Ok(n) => prop_assert!(n <= 16 && n == tail),
                Err(e) => prop_assert_eq!(e, FenceReason::SqIndexOutOfRange),
            }
            match cqp.free() {
                Ok(n) => prop_assert!(n <= 32),
                Err(e) => prop_assert_eq!(e, FenceReason::CqIndexOutOfRange),
            }
        }
    }

    #[test]
    fn polling_flag_suppresses_doorbell() {
        let layout = Layout::compute(1 << 17, 8, 8).unwrap();
        let mut mem = Mem::new(1 << 17);
        let v = mem.view();
        reset_rings(&v, &layout);
        let mut sqp = SqProducer::new(v, layout);
        let sqc = SqConsumer::new(v, layout);
        sqp.push(&Command::Nop.encode(0, 1));
        assert!(sqp.publish(), "host idle: ring");
        sqc.set_polling(true);
        sqp.push(&Command::Nop.encode(0, 2));
        assert!(!sqp.publish(), "host polling: skip the doorbell");
        sqc.set_polling(false);
        assert!(sqp.publish());
    }
}
