//! A view of shared memory that the other side may change at any moment.
//!
//! Nothing here ever hands out `&[u8]` or `&T` over shared memory: indices and flags are read
//! and written with atomics, and everything else is copied in or out with raw-pointer copies.
//! Every offset is bounds-checked; an out-of-range offset is a bug in the caller (offsets come
//! from a validated [`crate::Layout`] or from commands already checked against it) and panics
//! rather than touching memory outside the mapping.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A raw view of a shared-memory mapping. It does not own the mapping.
#[derive(Debug, Clone, Copy)]
pub struct ShmView {
    base: NonNull<u8>,
    len: usize,
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
        Self { base, len }
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

    #[inline]
    fn a32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and aligned (checked above); the mapping outlives `self` (contract of
        // `new`). AtomicU32 has the layout of u32 and tolerates concurrent access by the peer.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    #[inline]
    fn a64(&self, off: usize) -> &AtomicU64 {
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
        // SAFETY: the source range is inside the mapping (checked); `dst` is private memory
        // that cannot overlap the shared mapping's range as seen through this view.
        unsafe {
            core::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        }
    }

    /// Copies `src` into shared memory.
    #[inline]
    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        self.check(off, src.len(), 1);
        // SAFETY: the destination range is inside the mapping (checked); `src` is private.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len())
        }
    }

    /// Fills a range with `byte`.
    pub fn fill(&self, off: usize, len: usize, byte: u8) {
        self.check(off, len, 1);
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
        self.check(off, len, 1);
        // SAFETY: in bounds (checked), so the add stays inside the allocation.
        unsafe { self.base.as_ptr().add(off) }
    }
}

/// A full memory fence, for the "publish index, then check the peer's flag" handshakes.
#[inline]
pub fn full_fence() {
    core::sync::atomic::fence(Ordering::SeqCst);
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
