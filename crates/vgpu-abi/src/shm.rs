//! A view of shared memory that the other side may change at any moment.
//!
//! Nothing here ever hands out `&[u8]` or `&T` over shared memory: indices and flags are read
//! and written with atomics, and everything else is copied in or out with raw-pointer copies.
//! Every offset is bounds-checked; an out-of-range offset is a bug in the caller (offsets come
//! from a validated [`crate::Layout`] or from commands already checked against it) and panics
//! rather than touching memory outside the mapping.
//!
//! Built with `RUSTFLAGS="--cfg loom"` (model checking only), a view can instead be backed by
//! a [`model::ModelMem`] of loom cells, so that loom checks the ring code in [`crate::ring`]
//! as it ships: every method below keeps its orderings, and [`full_fence`] becomes loom's
//! fence. See `tests/loom_ring.rs` and docs/architecture.md, "Model-checked protocols".

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A raw view of a shared-memory mapping. It does not own the mapping.
#[derive(Debug, Clone, Copy)]
pub struct ShmView {
    base: NonNull<u8>,
    len: usize,
    /// Model checking only: the loom-backed memory this view reads and writes instead.
    #[cfg(loom)]
    model: Option<NonNull<model::ModelMem>>,
}

// SAFETY: a ShmView is a pointer and a length; all access through it is atomic or a raw copy,
// which is sound to perform from any thread (the memory is shared with another process anyway).
unsafe impl Send for ShmView {}
// SAFETY: as above; no method hands out references into the memory.
unsafe impl Sync for ShmView {}

impl ShmView {
    /// Wraps a mapping.
    ///
    /// # Safety
    /// `base` must point to a mapping of at least `len` readable and writable bytes, aligned
    /// to 8 bytes, that stays mapped for as long as this view (and every copy of it) is used.
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        let base = NonNull::new(base).expect("shared memory base is null");
        assert_eq!(
            base.as_ptr() as usize % 8,
            0,
            "shared memory must be 8-byte aligned"
        );
        Self {
            base,
            len,
            #[cfg(loom)]
            model: None,
        }
    }

    /// A view of a fresh zeroed buffer of `len` bytes that is never freed, so that no copy of
    /// the view can outlive its memory: shared memory for tests and tools, without `unsafe`
    /// at their call sites. Each call leaks its buffer; use it for bounded, test-sized needs.
    pub fn leak_zeroed(len: usize) -> Self {
        let buf: &'static mut [u64] = Vec::leak(vec![0u64; len.div_ceil(8)]);
        // SAFETY: the buffer is 8-aligned, at least `len` bytes long, readable and writable,
        // and leaked: it stays allocated for the rest of the process.
        unsafe { Self::new(buf.as_mut_ptr().cast(), len) }
    }

    /// The model memory behind this view, if any (model checking only).
    #[cfg(loom)]
    #[inline]
    fn model(&self) -> Option<&model::ModelMem> {
        // SAFETY: `ModelMem::view`'s contract keeps the model memory alive while the view is
        // used, and the model memory is only ever shared (never mutably borrowed).
        self.model.map(|m| unsafe { m.as_ref() })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn check(&self, off: usize, size: usize, align: usize) {
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.len) && off.is_multiple_of(align),
            "shared-memory access out of range: off={off} size={size} len={}",
            self.len
        );
    }

    #[cfg(not(loom))]
    #[inline]
    fn a32(&self, off: usize) -> &AtomicU32 {
        self.raw_a32(off)
    }

    /// Model checking: the same atomic operations, on a loom atomic when the view is a model.
    #[cfg(loom)]
    #[inline]
    fn a32(&self, off: usize) -> model::A32<'_> {
        match self.model() {
            Some(m) => {
                self.check(off, 4, 4);
                model::A32::Model(m.atomic(off))
            }
            None => model::A32::Raw(self.raw_a32(off)),
        }
    }

    #[inline]
    fn raw_a32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and aligned (checked above); the mapping outlives `self` (contract of
        // `new`). AtomicU32 has the layout of u32 and tolerates concurrent access by the peer.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    #[inline]
    fn a64(&self, off: usize) -> &AtomicU64 {
        #[cfg(loom)]
        assert!(
            self.model.is_none(),
            "shm model: 64-bit atomics are not modelled (off={off:#x})"
        );
        self.check(off, 8, 8);
        // SAFETY: as in `a32`, for 8 bytes at an 8-aligned offset.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    /// Atomic load with acquire ordering.
    #[inline]
    pub fn load_u32(&self, off: usize) -> u32 {
        self.a32(off).load(Ordering::Acquire)
    }

    /// Atomic store with release ordering.
    #[inline]
    pub fn store_u32(&self, off: usize, v: u32) {
        self.a32(off).store(v, Ordering::Release)
    }

    /// Atomic fetch-or (sequentially consistent).
    #[inline]
    pub fn fetch_or_u32(&self, off: usize, v: u32) -> u32 {
        self.a32(off).fetch_or(v, Ordering::SeqCst)
    }

    /// Atomic fetch-and (sequentially consistent).
    #[inline]
    pub fn fetch_and_u32(&self, off: usize, v: u32) -> u32 {
        self.a32(off).fetch_and(v, Ordering::SeqCst)
    }

    /// Atomic load with acquire ordering.
    #[inline]
    pub fn load_u64(&self, off: usize) -> u64 {
        self.a64(off).load(Ordering::Acquire)
    }

    /// Atomic store with release ordering.
    #[inline]
    pub fn store_u64(&self, off: usize, v: u64) {
        self.a64(off).store(v, Ordering::Release)
    }

    /// Copies `dst.len()` bytes out of shared memory.
    #[inline]
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len(), 1);
        #[cfg(loom)]
        if let Some(m) = self.model() {
            return m.read_bytes(off, dst);
        }
        // SAFETY: the source range is inside the mapping (checked); `dst` is private memory
        // that cannot overlap the shared mapping's range as seen through this view.
        unsafe {
            core::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        }
    }

    /// Copies `dst.len()` bytes out of shared memory like [`ShmView::read_bytes`], with stores
    /// that bypass the CPU caches where the CPU has them (x86-64). For a destination larger
    /// than the caches (a device-to-host copy of many megabytes staged in chunks) this saves
    /// the read of each destination line before its write: a third of the memory traffic.
    /// The stores are fenced before this returns.
    pub fn read_bytes_streaming(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len(), 1);
        #[cfg(loom)]
        if let Some(m) = self.model() {
            return m.read_bytes(off, dst);
        }
        // SAFETY: the source range is inside the mapping (checked); `dst` is private memory
        // that cannot overlap it, valid for `dst.len()` bytes of writes.
        unsafe { stream_copy(self.base.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into shared memory.
    #[inline]
    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        self.check(off, src.len(), 1);
        #[cfg(loom)]
        if let Some(m) = self.model() {
            return m.write_bytes(off, src);
        }
        // SAFETY: the destination range is inside the mapping (checked); `src` is private.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len())
        }
    }

    /// Fills a range with `byte`.
    pub fn fill(&self, off: usize, len: usize, byte: u8) {
        self.check(off, len, 1);
        #[cfg(loom)]
        if let Some(m) = self.model() {
            return m.write_bytes(off, &vec![byte; len]);
        }
        // SAFETY: the range is inside the mapping (checked).
        unsafe { core::ptr::write_bytes(self.base.as_ptr().add(off), byte, len) }
    }

    /// Copies a plain-data value out of shared memory (one copy; then it is private).
    #[inline]
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, off: usize) -> T {
        let mut v = T::new_zeroed();
        self.read_bytes(off, v.as_mut_bytes());
        v
    }

    /// Copies a plain-data value into shared memory.
    #[inline]
    pub fn write_obj<T: IntoBytes + Immutable>(&self, off: usize, v: &T) {
        self.write_bytes(off, v.as_bytes());
    }

    /// A raw pointer to `len` bytes at `off`, for DMA engines and bulk copies. The caller must
    /// treat the memory as shared (no references, raw copies only).
    pub fn raw_range(&self, off: usize, len: usize) -> *mut u8 {
        #[cfg(loom)]
        assert!(
            self.model.is_none(),
            "shm model: raw ranges are not modelled"
        );
        self.check(off, len, 1);
        // SAFETY: in bounds (checked), so the add stays inside the allocation.
        unsafe { self.base.as_ptr().add(off) }
    }
}

/// A full memory fence, for the "publish index, then check the peer's flag" handshakes.
#[inline]
pub fn full_fence() {
    #[cfg(not(loom))]
    use core::sync::atomic::fence;
    // Model checking: loom's fence (only callable inside `loom::model`).
    #[cfg(loom)]
    use model::fence;
    fence(Ordering::SeqCst);
}

/// Model checking only (`RUSTFLAGS="--cfg loom"`): shared memory made of loom cells.
///
/// A [`ModelMem`] holds the words a model touches, each declared up front as either an
/// *atomic* word (a loom `AtomicU32`: ring indices and flags) or a *data* word (a loom
/// `UnsafeCell<u32>`: ring entries). A [`ShmView`] made by [`ModelMem::view`] runs the real
/// accessors — same offsets, bounds checks and orderings — on those cells, so loom explores
/// every interleaving and every value the memory model allows a load to return, and reports a
/// data word read while its write may still be invisible (no happens-before) as a race: that
/// is the "consumer reads a slot before the producer's payload is visible" bug. Byte copies
/// over an atomic word (register page, header resets) are modelled as relaxed word accesses.
/// Touching an undeclared word panics: the model does not silently invent memory.
///
/// [`set_weakening`] lets a test weaken the orderings of every view and drop [`full_fence`],
/// to show that the models fail without them (see `tests/loom_ring.rs`).
#[cfg(loom)]
pub mod model {
    use super::ShmView;
    use crate::layout::{ring_hdr, Layout};
    use crate::{cmd, CACHE_LINE};
    use core::ptr::NonNull;
    use core::sync::atomic::Ordering;
    use std::cell::Cell;
    use std::collections::BTreeMap;

    /// Deliberate weakenings, to show that a model catches the bug each one introduces.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Weakening {
        /// `store_u32` uses `Relaxed` instead of `Release`.
        pub relaxed_stores: bool,
        /// `load_u32` uses `Relaxed` instead of `Acquire`.
        pub relaxed_loads: bool,
        /// [`super::full_fence`] does nothing.
        pub no_fence: bool,
    }

    std::thread_local! {
        // loom runs every model thread on the thread that called `loom::model`.
        static WEAKENING: Cell<Weakening> = const { Cell::new(Weakening {
            relaxed_stores: false,
            relaxed_loads: false,
            no_fence: false,
        }) };
    }

    /// Sets the weakening used by models run on this thread (default: none).
    pub fn set_weakening(w: Weakening) {
        WEAKENING.with(|c| c.set(w));
    }

    fn weakening() -> Weakening {
        WEAKENING.with(Cell::get)
    }

    /// [`super::full_fence`] under loom.
    pub(super) fn fence(order: Ordering) {
        if !weakening().no_fence {
            loom::sync::atomic::fence(order);
        }
    }

    /// Applies the weakening to an ordering (stores and loads; read-modify-writes keep theirs).
    fn weaken(order: Ordering) -> Ordering {
        let w = weakening();
        match order {
            Ordering::Release if w.relaxed_stores => Ordering::Relaxed,
            Ordering::Acquire if w.relaxed_loads => Ordering::Relaxed,
            o => o,
        }
    }

    /// The 32-bit atomic behind an offset: the real one, or a loom one in a model.
    pub(super) enum A32<'a> {
        Raw(&'a core::sync::atomic::AtomicU32),
        Model(&'a loom::sync::atomic::AtomicU32),
    }

    impl A32<'_> {
        pub(super) fn load(&self, order: Ordering) -> u32 {
            match self {
                A32::Raw(a) => a.load(order),
                A32::Model(a) => a.load(weaken(order)),
            }
        }
        pub(super) fn store(&self, v: u32, order: Ordering) {
            match self {
                A32::Raw(a) => a.store(v, order),
                A32::Model(a) => a.store(v, weaken(order)),
            }
        }
        pub(super) fn fetch_or(&self, v: u32, order: Ordering) -> u32 {
            match self {
                A32::Raw(a) => a.fetch_or(v, order),
                A32::Model(a) => a.fetch_or(v, order),
            }
        }
        pub(super) fn fetch_and(&self, v: u32, order: Ordering) -> u32 {
            match self {
                A32::Raw(a) => a.fetch_and(v, order),
                A32::Model(a) => a.fetch_and(v, order),
            }
        }
    }

    enum Word {
        Atomic(loom::sync::atomic::AtomicU32),
        Data(loom::cell::UnsafeCell<u32>),
    }

    /// Shared memory of loom cells (see the module docs). All words start at zero.
    pub struct ModelMem {
        len: usize,
        /// By 4-aligned offset.
        words: BTreeMap<usize, Word>,
    }

    impl core::fmt::Debug for ModelMem {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("ModelMem")
                .field("len", &self.len)
                .field("words", &self.words.len())
                .finish()
        }
    }

    impl ModelMem {
        /// An empty model of a `len`-byte region: declare the words it uses next.
        pub fn new(len: usize) -> Self {
            Self {
                len,
                words: BTreeMap::new(),
            }
        }

        fn declare(mut self, off: usize, len: usize, atomic: bool) -> Self {
            assert!(off.is_multiple_of(4) && len.is_multiple_of(4) && off + len <= self.len);
            for w in (off..off + len).step_by(4) {
                let word = if atomic {
                    Word::Atomic(loom::sync::atomic::AtomicU32::new(0))
                } else {
                    Word::Data(loom::cell::UnsafeCell::new(0))
                };
                assert!(
                    self.words.insert(w, word).is_none(),
                    "word {w:#x} declared twice"
                );
            }
            self
        }

        /// Declares `len` bytes at `off` as atomic words.
        pub fn atomics(self, off: usize, len: usize) -> Self {
            self.declare(off, len, true)
        }

        /// Declares `len` bytes at `off` as data words (race-checked by loom).
        pub fn data(self, off: usize, len: usize) -> Self {
            self.declare(off, len, false)
        }

        /// Both rings of `layout`: the index and flag words of each header are atomic, every
        /// entry slot is data. Nothing else is modelled.
        pub fn rings(layout: &Layout) -> Self {
            let mut m = Self::new(layout.shm_size as usize);
            for hdr in [layout.sq_offset as usize, layout.cq_offset as usize] {
                for field in [ring_hdr::TAIL, ring_hdr::HEAD, ring_hdr::FLAGS] {
                    debug_assert!(field % CACHE_LINE == 0);
                    m = m.atomics(hdr + field, 4);
                }
            }
            m = m.data(
                layout.sqe_offset(0),
                layout.sq_entries as usize * cmd::SQE_SIZE,
            );
            m.data(
                layout.cqe_offset(0),
                layout.cq_entries as usize * cmd::CQE_SIZE,
            )
        }

        /// A view of this memory, for the real ring code to run on.
        ///
        /// # Safety
        /// `self` must outlive every use of the view and of its copies (keep it in an `Arc`
        /// that the thread using the view holds).
        pub unsafe fn view(&self) -> ShmView {
            ShmView {
                base: NonNull::dangling(),
                len: self.len,
                model: Some(NonNull::from(self)),
            }
        }

        fn word(&self, off: usize) -> &Word {
            self.words
                .get(&off)
                .unwrap_or_else(|| panic!("shm model: offset {off:#x} is not modelled"))
        }

        pub(super) fn atomic(&self, off: usize) -> &loom::sync::atomic::AtomicU32 {
            match self.word(off) {
                Word::Atomic(a) => a,
                Word::Data(_) => panic!("shm model: atomic access to data word {off:#x}"),
            }
        }

        fn load_word(&self, off: usize) -> u32 {
            match self.word(off) {
                Word::Atomic(a) => a.load(Ordering::Relaxed),
                // SAFETY: loom checks that this read does not race with a write; the pointer
                // is valid while the cell lives (during the closure).
                Word::Data(c) => c.with(|p| unsafe { *p }),
            }
        }

        fn store_word(&self, off: usize, v: u32) {
            match self.word(off) {
                Word::Atomic(a) => a.store(v, Ordering::Relaxed),
                // SAFETY: loom checks that this write does not race with any other access; the
                // pointer is valid while the cell lives (during the closure).
                Word::Data(c) => c.with_mut(|p| unsafe { *p = v }),
            }
        }

        pub(super) fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            let mut i = 0;
            while i < dst.len() {
                let w = (off + i) & !3;
                let bytes = self.load_word(w).to_ne_bytes();
                let from = off + i - w;
                let n = (4 - from).min(dst.len() - i);
                dst[i..i + n].copy_from_slice(&bytes[from..from + n]);
                i += n;
            }
        }

        pub(super) fn write_bytes(&self, off: usize, src: &[u8]) {
            let mut i = 0;
            while i < src.len() {
                let w = (off + i) & !3;
                let from = off + i - w;
                let n = (4 - from).min(src.len() - i);
                let mut bytes = if n == 4 {
                    [0; 4]
                } else {
                    self.load_word(w).to_ne_bytes()
                };
                bytes[from..from + n].copy_from_slice(&src[i..i + n]);
                self.store_word(w, u32::from_ne_bytes(bytes));
                i += n;
            }
        }
    }
}

/// Copies `len` bytes from `src` to `dst` with non-temporal stores (SSE2, part of every
/// x86-64 CPU): 16-byte aligned stores in 64-byte groups, the unaligned head and tail copied
/// normally, then a store fence so that the bytes are ordered before any later store (a
/// release that publishes them).
///
/// # Safety
/// `src` is valid for `len` bytes of reads, `dst` for `len` bytes of writes, and they do not
/// overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_copy(src: *const u8, dst: *mut u8, len: usize) {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let head = dst.align_offset(16).min(len);
    // SAFETY: both ranges valid for `len >= head` bytes and disjoint (the caller's promise).
    unsafe { core::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i + 64 <= len {
        // SAFETY: `[i, i + 64)` lies inside both ranges; `dst + i` is 16-byte aligned (`head`
        // aligned it and `i` moves in multiples of 16); unaligned loads need no alignment.
        unsafe {
            let s = src.add(i).cast::<__m128i>();
            let d = dst.add(i).cast::<__m128i>();
            let (a, b, c, e) = (
                _mm_loadu_si128(s),
                _mm_loadu_si128(s.add(1)),
                _mm_loadu_si128(s.add(2)),
                _mm_loadu_si128(s.add(3)),
            );
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
        i += 64;
    }
    // SAFETY: the tail `[i, len)` lies inside both ranges.
    unsafe { core::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i) };
    // SAFETY: a fence has no preconditions (SSE, part of x86-64).
    unsafe { _mm_sfence() };
}

/// Elsewhere a plain copy.
///
/// # Safety
/// As the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn stream_copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_view(f: impl FnOnce(ShmView)) {
        let mut buf = vec![0u64; 512];
        // SAFETY: the buffer outlives the view, is 8-aligned and 4096 bytes long.
        let v = unsafe { ShmView::new(buf.as_mut_ptr().cast(), 4096) };
        f(v);
        drop(buf);
    }

    #[test]
    fn access() {
        with_view(|v| {
            v.store_u32(8, 7);
            assert_eq!(v.load_u32(8), 7);
            v.store_u64(16, u64::MAX);
            assert_eq!(v.load_u64(16), u64::MAX);
            v.write_bytes(100, b"hello");
            let mut b = [0u8; 5];
            v.read_bytes(100, &mut b);
            assert_eq!(&b, b"hello");
            assert_eq!(v.fetch_or_u32(8, 8), 7);
            assert_eq!(v.fetch_and_u32(8, !1), 15);
            assert_eq!(v.load_u32(8), 14);
        });
    }

    /// Every offset and length, aligned or not, gives the bytes a plain copy gives.
    #[test]
    fn streaming_reads_copy_exactly() {
        with_view(|v| {
            let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 251) as u8).collect();
            v.write_bytes(0, &pattern);
            for off in [0, 1, 15, 16, 17, 63, 64, 100] {
                for len in [0, 1, 15, 16, 63, 64, 65, 127, 128, 200, 1000, 3996] {
                    for dst_skew in [0, 1, 8, 15] {
                        let mut out = vec![0xAAu8; len + 16];
                        v.read_bytes_streaming(off, &mut out[dst_skew..dst_skew + len]);
                        assert_eq!(
                            &out[dst_skew..dst_skew + len],
                            &pattern[off..off + len],
                            "off {off} len {len} skew {dst_skew}"
                        );
                        assert!(out[..dst_skew].iter().all(|&b| b == 0xAA), "before");
                        assert!(out[dst_skew + len..].iter().all(|&b| b == 0xAA), "after");
                    }
                }
            }
        });
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn streaming_read_out_of_range_panics() {
        with_view(|v| {
            let mut b = [0u8; 32];
            v.read_bytes_streaming(4080, &mut b);
        });
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_panics() {
        with_view(|v| {
            v.load_u32(4096);
        });
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn overflow_panics() {
        with_view(|v| {
            let mut b = [0u8; 2];
            v.read_bytes(usize::MAX, &mut b);
        });
    }
}
