//! BAR0 register access: the one place with raw pointers into a device register mapping.

use memmap2::MmapRaw;

/// A mapping of the ivshmem register BAR (BAR0).
#[derive(Debug)]
pub(crate) struct RegisterBar {
    map: MmapRaw,
    /// Bytes of the mapping that may be accessed (at most the mapping's length).
    len: usize,
}

impl RegisterBar {
    /// Wraps a mapping of which the first `len` bytes are registers.
    pub(crate) fn new(map: MmapRaw, len: usize) -> Self {
        let len = len.min(map.len());
        Self { map, len }
    }

    /// Volatile 32-bit write at `off`. Panics if `off` is not an aligned in-range register.
    pub(crate) fn write_u32(&self, off: usize, v: u32) {
        assert!(
            off & 3 == 0 && off.checked_add(4).is_some_and(|e| e <= self.len),
            "BAR0 register offset {off:#x} out of range (len {:#x})",
            self.len
        );
        // SAFETY: `off + 4 <= len <= map.len()` and `off` is 4-aligned (checked above); the
        // mapping is page-aligned, so the pointer is aligned for u32, and it stays mapped while
        // `self.map` lives. Device registers must be written with a single volatile access.
        unsafe { core::ptr::write_volatile(self.map.as_mut_ptr().add(off).cast::<u32>(), v) }
    }

    /// Volatile 32-bit read at `off`. Panics if `off` is not an aligned in-range register.
    pub(crate) fn read_u32(&self, off: usize) -> u32 {
        assert!(
            off & 3 == 0 && off.checked_add(4).is_some_and(|e| e <= self.len),
            "BAR0 register offset {off:#x} out of range (len {:#x})",
            self.len
        );
        // SAFETY: as in `write_u32`: in range, aligned, mapped while `self` lives.
        unsafe { core::ptr::read_volatile(self.map.as_ptr().add(off).cast::<u32>()) }
    }
}
