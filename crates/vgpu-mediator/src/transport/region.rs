//! A VM's shared memory: an anonymous memfd, mapped once by vgpud.

use memmap2::{MmapMut, MmapOptions};
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use std::fs::File;
use vgpu_abi::ShmView;

/// The memfd and vgpud's mapping of it. Dropping it unmaps and closes (the memory is freed once
/// QEMU has also let go).
#[derive(Debug)]
pub struct SharedRegion {
    map: MmapMut,
    file: File,
    view: ShmView,
}

impl SharedRegion {
    /// Creates a zero-filled region of `size` bytes.
    pub fn create(name: &str, size: u64) -> std::io::Result<Self> {
        let fd = memfd_create(format!("vgpu-{name}"), MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, size)?;
        let file = File::from(fd);
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        // SAFETY: the memfd is ours and sized to `len`; nobody truncates it (vgpud owns the only
        // writable fd that could, and never does). Other processes may write the memory
        // concurrently, which is why it is only ever accessed through `ShmView`.
        let mut map = unsafe { MmapOptions::new().len(len).map_mut(&file)? };
        // SAFETY: `map` is a live mapping of `len` bytes, page-aligned, and `view` is stored next
        // to it in `self`, which never hands the view out past its own lifetime except to holders
        // of an `Arc<SharedRegion>`.
        let view = unsafe { ShmView::new(map.as_mut_ptr(), len) };
        Ok(Self { map, file, view })
    }

    /// The view of the whole region. Valid while `self` lives.
    pub fn view(&self) -> ShmView {
        self.view
    }

    /// The memfd (sent to the client).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the region is empty (never, for a valid layout).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
