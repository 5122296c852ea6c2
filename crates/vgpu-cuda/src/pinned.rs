//! Page-locked host memory carved from BAR2: the part of the staging area the guest library
//! leaves to this driver ([`vgpu_guest::Device::spare_staging`]), after the launch-parameter
//! ring. vgpud registered all of BAR2 with CUDA, so a copy between such memory and the device
//! is one DMA command on the stream, without a bounce buffer and without waiting.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Allocation granularity.
pub const PAGE: u64 = 4096;

/// A first-fit heap over one range of staging.
#[derive(Debug)]
pub struct Heap {
    /// Address of the range in this process.
    base: usize,
    /// Staging offset of the range.
    staging: u64,
    /// Bytes in the range.
    len: u64,
    /// Free runs: offset in the range → length.
    free: BTreeMap<u64, u64>,
    /// Allocations: offset in the range → length.
    used: BTreeMap<u64, u64>,
}

/// The process's heap, made at the first page-locked allocation.
pub static HEAP: Mutex<Option<Heap>> = Mutex::new(None);

impl Heap {
    /// A heap over `len` bytes at address `base`, which is staging offset `staging`.
    pub fn new(base: usize, staging: u64, len: u64) -> Self {
        let len = len / PAGE * PAGE;
        let mut free = BTreeMap::new();
        if len > 0 {
            free.insert(0, len);
        }
        Self {
            base,
            staging,
            len,
            free,
            used: BTreeMap::new(),
        }
    }

    /// `size` bytes (rounded up to pages): their address, or `None` when no free run fits.
    pub fn alloc(&mut self, size: u64) -> Option<usize> {
        let size = size.max(1).div_ceil(PAGE) * PAGE;
        let (&off, &run) = self.free.iter().find(|(_, &run)| run >= size)?;
        self.free.remove(&off);
        if run > size {
            self.free.insert(off + size, run - size);
        }
        self.used.insert(off, size);
        Some(self.base + off as usize)
    }

    /// Frees the allocation at `addr`; false when `addr` is not one.
    pub fn free(&mut self, addr: usize) -> bool {
        let Some(off) = addr.checked_sub(self.base).map(|o| o as u64) else {
            return false;
        };
        let Some(mut size) = self.used.remove(&off) else {
            return false;
        };
        let mut start = off;
        // Merge with the free run after, then with the one before.
        if let Some(next) = self.free.remove(&(off + size)) {
            size += next;
        }
        if let Some((&prev, &prev_len)) = self.free.range(..off).next_back() {
            if prev + prev_len == off {
                self.free.remove(&prev);
                start = prev;
                size += prev_len;
            }
        }
        self.free.insert(start, size);
        true
    }

    /// The staging offset of `[addr, addr + len)` when the range lies in one allocation.
    pub fn staging_of(&self, addr: usize, len: usize) -> Option<u64> {
        let off = addr.checked_sub(self.base)? as u64;
        let end = off.checked_add(len as u64)?;
        let (&a, &size) = self.used.range(..=off).next_back()?;
        (end <= a + size && end <= self.len).then_some(self.staging + off)
    }

    /// Whether `addr` lies in an allocation (its start and length).
    pub fn allocation_of(&self, addr: usize) -> Option<(usize, u64)> {
        let off = addr.checked_sub(self.base)? as u64;
        let (&a, &size) = self.used.range(..=off).next_back()?;
        (off < a + size).then_some((self.base + a as usize, size))
    }
}

/// Runs `f` on the process's heap, made on first use from the device's spare staging (after
/// the launch-parameter ring); `None` when the device has no spare staging.
pub fn with_heap<T>(f: impl FnOnce(&mut Heap) -> T) -> Option<T> {
    let mut g = HEAP.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        let d = crate::driver::get().ok()?;
        let (off, len) = d.dev.spare_staging()?;
        let ring = crate::params::arena_len(len);
        let (off, len) = (off + ring, len - ring);
        let base = match aliased_staging(d) {
            Some(staging) => staging + off as usize,
            None => d.staging_ptr(off, len) as usize,
        };
        *g = Some(Heap::new(base, off, len));
    }
    g.as_mut().map(f)
}

/// This process's address of the staging area mapped again where the device reaches it, when
/// vgpud maps it into the VM's context (ABI 1.6) and that range is free here: page-locked
/// memory taken from that mapping has one address for host and device, as CUDA's unified
/// addressing promises (XLA hands such host pointers to kernels and memsets). Otherwise the
/// heap is in the device's one mapping and its device addresses differ
/// ([`device_address_of`]).
fn aliased_staging(d: &crate::driver::Driver) -> Option<usize> {
    let dev = d.staging_device_address()?;
    let region = dev.checked_sub(d.dev.layout().staging_offset)?;
    let view = d.dev.map_region_at(region)?;
    Some(view.raw_range(d.dev.layout().staging_offset as usize, 0) as usize)
}

/// Where the device reaches the staging area (vgpud maps it into the VM's context, ABI 1.6),
/// when it does and this process has a heap in it: then page-locked memory is mapped memory.
pub fn device_address_of_heap() -> Option<u64> {
    with_heap(|_| ())?;
    crate::driver::get().ok()?.staging_device_address()
}

/// The device address of page-locked host bytes `[addr, addr + len)` (one allocation of the
/// heap), where the device reaches the staging area.
pub fn device_address_of(addr: usize, len: usize) -> Option<u64> {
    let off = staging_of(addr, len)?;
    Some(crate::driver::get().ok()?.staging_device_address()? + off)
}

/// The staging offset of host bytes `[addr, addr + len)` when they are page-locked memory of
/// this driver (one allocation of the heap).
pub fn staging_of(addr: usize, len: usize) -> Option<u64> {
    let g = HEAP.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()?.staging_of(addr, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_pages_and_free_runs_merge() {
        let mut h = Heap::new(0x10000, 1 << 20, 16 * PAGE);
        let a = h.alloc(1).unwrap();
        let b = h.alloc(PAGE + 1).unwrap();
        let c = h.alloc(PAGE).unwrap();
        assert_eq!((a, b, c), (0x10000, 0x11000, 0x13000));
        assert_eq!(h.staging_of(b + 10, 100), Some((1 << 20) + PAGE + 10));
        assert_eq!(
            h.staging_of(b + 10, 2 * PAGE as usize),
            None,
            "runs past its allocation"
        );
        assert!(h.alloc(13 * PAGE).is_none(), "12 pages are left");
        assert!(h.free(b));
        assert!(!h.free(b), "freed once");
        assert!(h.free(a));
        assert!(h.free(c));
        assert_eq!(h.free.len(), 1, "everything merged back: {:?}", h.free);
        assert!(h.alloc(16 * PAGE).is_some());
    }
}
