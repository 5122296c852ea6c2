//! One VM's virtual memory management (ABI 1.6): its address reservations, the memory handles
//! it created and its mappings, and which ranges its commands may therefore name. The VM's
//! device ([`crate::device`]) checks every command against it before a backend sees it; the
//! cpu backend keeps one per context too, to resolve mapped addresses to its memory.

use std::collections::{BTreeMap, HashMap};
use vgpu_abi::Status;

/// Addresses one VM may hold reserved at once. A reservation costs no memory, but on a shared
/// CUDA process it takes from the address space every VM's context allocates in; 16 TiB is
/// over a hundred times an H200's memory (PyTorch reserves about 1.125 times the device's
/// memory per stream it allocates on).
pub const MAX_RESERVED_BYTES: u64 = 1 << 44;

/// A memory handle of the VM.
#[derive(Debug, Clone, Copy)]
struct Handle {
    size: u64,
    /// Mappings of it.
    maps: u32,
    /// Released by the VM: gone once `maps` is 0.
    released: bool,
}

/// A mapping of the VM: `size` bytes of `handle` at its key.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    size: u64,
    handle: u64,
    /// Where in the handle's memory the mapping starts.
    offset: u64,
    /// Read-write access was granted: the VM's commands may name it.
    access: bool,
}

/// What [`Vmm::leftovers`] says is left to undo.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Mappings `(start, size)`.
    pub maps: Vec<(u64, u64)>,
    /// Handles not released.
    pub handles: Vec<u64>,
    /// Reservations `(start, size)`.
    pub reserved: Vec<(u64, u64)>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Vmm {
    /// Reservations: start → size.
    reserved: BTreeMap<u64, u64>,
    reserved_bytes: u64,
    handles: HashMap<u64, Handle>,
    /// Mappings by start; they never overlap.
    maps: BTreeMap<u64, Mapping>,
}

impl Vmm {
    /// Memory handles held (they count against the allocation limit).
    pub fn handles(&self) -> usize {
        self.handles.len()
    }

    /// Checks a reservation of `size` bytes against the limits (`max` entries).
    pub fn admit_reserve(&self, size: u64, max: usize) -> Result<(), Status> {
        if self.reserved.len() >= max
            || self.reserved_bytes.saturating_add(size) > MAX_RESERVED_BYTES
        {
            return Err(Status::LimitExceeded);
        }
        Ok(())
    }

    /// Records a reservation the backend made.
    pub fn reserved(&mut self, ptr: u64, size: u64) {
        if self.reserved.insert(ptr, size).is_none() {
            self.reserved_bytes += size;
        }
    }

    /// Checks that `[ptr, ptr + size)` is exactly a reservation of the VM with nothing mapped.
    pub fn admit_unreserve(&self, ptr: u64, size: u64) -> Result<(), Status> {
        if self.reserved.get(&ptr) != Some(&size) {
            return Err(Status::InvalidAddress);
        }
        let end = ptr + size;
        if self.maps.range(ptr..end).next().is_some() {
            return Err(Status::InvalidArgument);
        }
        Ok(())
    }

    /// Forgets a reservation the backend freed.
    pub fn unreserved(&mut self, ptr: u64) {
        if let Some(size) = self.reserved.remove(&ptr) {
            self.reserved_bytes -= size;
        }
    }

    /// Records a handle the backend created.
    pub fn created(&mut self, handle: u64, size: u64) {
        self.handles.insert(
            handle,
            Handle {
                size,
                maps: 0,
                released: false,
            },
        );
    }

    /// Checks that `handle` is one of the VM's, not yet released.
    pub fn admit_release(&self, handle: u64) -> Result<(), Status> {
        match self.handles.get(&handle) {
            Some(h) if !h.released => Ok(()),
            _ => Err(Status::InvalidArgument),
        }
    }

    /// Marks a handle released; returns its size if that freed it (nothing maps it).
    pub fn released(&mut self, handle: u64) -> Option<u64> {
        self.handles.get_mut(&handle)?.released = true;
        self.collect(handle)
    }

    /// Drops a released handle nothing maps any more; returns its size.
    fn collect(&mut self, handle: u64) -> Option<u64> {
        match self.handles.get(&handle) {
            Some(h) if h.released && h.maps == 0 => {
                let size = h.size;
                self.handles.remove(&handle);
                Some(size)
            }
            _ => None,
        }
    }

    /// Checks a mapping: the VM's live handle, inside its memory, inside one reservation of
    /// the VM, over no other mapping, and fewer than `max` mappings held.
    pub fn admit_map(
        &self,
        ptr: u64,
        size: u64,
        offset: u64,
        handle: u64,
        max: usize,
    ) -> Result<(), Status> {
        let h = match self.handles.get(&handle) {
            Some(h) if !h.released => h,
            _ => return Err(Status::InvalidArgument),
        };
        if offset.checked_add(size).is_none_or(|e| e > h.size) {
            return Err(Status::InvalidArgument);
        }
        let end = ptr.checked_add(size).ok_or(Status::InvalidAddress)?;
        let inside = self
            .reserved
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&b, &s)| end <= b + s);
        if !inside {
            return Err(Status::InvalidAddress);
        }
        if self.overlaps(ptr, size) {
            return Err(Status::InvalidArgument);
        }
        if self.maps.len() >= max {
            return Err(Status::LimitExceeded);
        }
        Ok(())
    }

    /// Records a mapping the backend made (not accessible yet).
    pub fn mapped(&mut self, ptr: u64, size: u64, offset: u64, handle: u64) {
        if let Some(h) = self.handles.get_mut(&handle) {
            h.maps += 1;
        }
        self.maps.insert(
            ptr,
            Mapping {
                size,
                handle,
                offset,
                access: false,
            },
        );
    }

    /// The starts of the whole, adjacent mappings that cover exactly `[ptr, ptr + size)`.
    pub fn cover(&self, ptr: u64, size: u64) -> Result<Vec<u64>, Status> {
        let end = ptr.checked_add(size).ok_or(Status::InvalidAddress)?;
        let mut at = ptr;
        let mut starts = Vec::new();
        for (&b, m) in self.maps.range(ptr..end) {
            if b != at {
                return Err(Status::InvalidAddress);
            }
            starts.push(b);
            at = b + m.size;
        }
        if starts.is_empty() || at != end {
            return Err(Status::InvalidAddress);
        }
        Ok(starts)
    }

    /// Removes the mappings covering `[ptr, ptr + size)` (checked with [`Vmm::cover`]);
    /// returns the released handles this freed, with their sizes.
    pub fn unmapped(&mut self, ptr: u64, size: u64) -> Vec<(u64, u64)> {
        let starts = self.cover(ptr, size).unwrap_or_default();
        let mut freed = Vec::new();
        for s in starts {
            if let Some(m) = self.maps.remove(&s) {
                if let Some(h) = self.handles.get_mut(&m.handle) {
                    h.maps -= 1;
                }
                freed.extend(self.collect(m.handle).map(|size| (m.handle, size)));
            }
        }
        freed
    }

    /// Grants access to the mappings covering `[ptr, ptr + size)` (checked with
    /// [`Vmm::cover`]).
    pub fn allow(&mut self, ptr: u64, size: u64) {
        for s in self.cover(ptr, size).unwrap_or_default() {
            if let Some(m) = self.maps.get_mut(&s) {
                m.access = true;
            }
        }
    }

    /// Whether `[ptr, ptr + len)` lies inside adjacent mappings the VM may access.
    pub fn usable(&self, ptr: u64, len: u64) -> bool {
        self.pieces(ptr, len).is_some()
    }

    /// The pieces of `[ptr, ptr + len)` in adjacent accessible mappings, in order: `(handle,
    /// offset in the handle's memory, bytes)`; `None` if the range leaves them.
    pub fn pieces(&self, ptr: u64, len: u64) -> Option<Vec<(u64, u64, u64)>> {
        let end = ptr.checked_add(len)?;
        let mut at = ptr;
        let mut out = Vec::new();
        loop {
            let (&b, m) = self.maps.range(..=at).next_back()?;
            let m_end = b + m.size;
            if !m.access || m_end <= at {
                return None;
            }
            let upto = end.min(m_end);
            out.push((m.handle, m.offset + (at - b), upto - at));
            if end <= m_end {
                return Some(out);
            }
            at = m_end;
        }
    }

    /// Whether any mapping overlaps `[ptr, ptr + size)`.
    pub fn overlaps(&self, ptr: u64, size: u64) -> bool {
        let end = ptr.saturating_add(size);
        self.maps
            .range(..ptr)
            .next_back()
            .is_some_and(|(&b, m)| b + m.size > ptr)
            || self.maps.range(ptr..end).next().is_some()
    }

    /// What is left to undo, in order: the mappings, the handles not yet released, the
    /// reservations (a backend whose context does not take them with it frees them).
    pub fn leftovers(&self) -> Leftovers {
        let mut handles: Vec<u64> = self
            .handles
            .iter()
            .filter(|(_, h)| !h.released)
            .map(|(&h, _)| h)
            .collect();
        handles.sort_unstable();
        Leftovers {
            maps: self.maps.iter().map(|(&p, m)| (p, m.size)).collect(),
            handles,
            reserved: self.reserved.iter().map(|(&p, &s)| (p, s)).collect(),
        }
    }

    /// Whether `handle` is one of the VM's, not released.
    pub fn live(&self, handle: u64) -> bool {
        self.handles.get(&handle).is_some_and(|h| !h.released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = 2 << 20;

    #[test]
    fn mappings_own_ranges_until_unmapped_and_handles_until_both() {
        let mut v = Vmm::default();
        let base = 1 << 40;
        v.admit_reserve(4 * MB2, 8).unwrap();
        v.reserved(base, 4 * MB2);
        v.created(7, MB2);
        v.created(8, 2 * MB2);
        // Outside the reservation, a foreign handle, past the handle's memory.
        assert_eq!(
            v.admit_map(base + 3 * MB2, 2 * MB2, 0, 8, 8),
            Err(Status::InvalidAddress)
        );
        assert_eq!(
            v.admit_map(base, MB2, 0, 9, 8),
            Err(Status::InvalidArgument)
        );
        assert_eq!(
            v.admit_map(base, MB2, MB2, 7, 8),
            Err(Status::InvalidArgument)
        );
        v.admit_map(base, MB2, 0, 7, 8).unwrap();
        v.mapped(base, MB2, 0, 7);
        v.admit_map(base + MB2, 2 * MB2, 0, 8, 8).unwrap();
        v.mapped(base + MB2, 2 * MB2, 0, 8);
        // Overlaps, from below and from inside.
        assert_eq!(
            v.admit_map(base + 2 * MB2, MB2, 0, 7, 8),
            Err(Status::InvalidArgument)
        );
        assert_eq!(
            v.admit_map(base, MB2, 0, 8, 8),
            Err(Status::InvalidArgument)
        );
        // Not usable before access is granted; then across both mappings, not past them.
        assert!(!v.usable(base, 16));
        assert_eq!(v.cover(base, MB2 + 1), Err(Status::InvalidAddress));
        assert_eq!(v.cover(base + 1, MB2), Err(Status::InvalidAddress));
        assert_eq!(v.cover(base, 3 * MB2), Ok(vec![base, base + MB2]));
        v.allow(base, 3 * MB2);
        assert!(v.usable(base + MB2 - 8, 16), "across the two mappings");
        assert_eq!(
            v.pieces(base + MB2 - 8, 16),
            Some(vec![(7, MB2 - 8, 8), (8, 0, 8)])
        );
        assert!(v.usable(base, 3 * MB2));
        assert!(!v.usable(base, 3 * MB2 + 1));
        assert!(!v.usable(base - 1, 2));
        v.created(9, MB2);
        assert_eq!(
            v.leftovers(),
            Leftovers {
                maps: vec![(base, MB2), (base + MB2, 2 * MB2)],
                handles: vec![7, 8, 9],
                reserved: vec![(base, 4 * MB2)],
            }
        );
        assert_eq!(v.released(9), Some(MB2));
        // A reservation with mappings in it cannot be freed; a wrong size is no reservation.
        assert_eq!(
            v.admit_unreserve(base, 4 * MB2),
            Err(Status::InvalidArgument)
        );
        assert_eq!(v.admit_unreserve(base, MB2), Err(Status::InvalidAddress));
        // Released while mapped: the memory stays until the unmap.
        v.admit_release(7).unwrap();
        assert_eq!(v.released(7), None);
        assert_eq!(v.admit_release(7), Err(Status::InvalidArgument), "twice");
        assert!(v.usable(base, 16));
        assert_eq!(v.unmapped(base, MB2), vec![(7, MB2)]);
        assert!(!v.usable(base, 16));
        assert!(v.usable(base + MB2, 16));
        assert_eq!(v.cover(base, MB2), Err(Status::InvalidAddress), "twice");
        assert_eq!(
            v.unmapped(base + MB2, 2 * MB2),
            vec![],
            "handle 8 not released"
        );
        assert_eq!(v.released(8), Some(2 * MB2));
        assert_eq!(v.handles(), 0);
        v.admit_unreserve(base, 4 * MB2).unwrap();
        v.unreserved(base);
        assert_eq!(v.reserved_bytes, 0);
    }

    #[test]
    fn reservations_are_bounded() {
        let mut v = Vmm::default();
        assert_eq!(
            v.admit_reserve(MAX_RESERVED_BYTES + 1, 8),
            Err(Status::LimitExceeded)
        );
        v.reserved(1 << 40, MAX_RESERVED_BYTES);
        assert_eq!(v.admit_reserve(MB2, 8), Err(Status::LimitExceeded));
        v.unreserved(1 << 40);
        v.admit_reserve(MB2, 8).unwrap();
        v.reserved(1 << 40, MB2);
        assert_eq!(v.admit_reserve(MB2, 1), Err(Status::LimitExceeded), "count");
    }
}
