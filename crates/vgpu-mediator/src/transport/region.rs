//! A VM's shared memory: an anonymous memfd, mapped once by vgpud.

use memmap2::{MmapMut, MmapOptions};
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
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
    /// Creates a zero-filled region of `size` bytes, sealed against any change of its size.
    pub fn create(name: &str, size: u64) -> std::io::Result<Self> {
        let fd = memfd_create(
            format!("vgpu-{name}"),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        ftruncate(&fd, size)?;
        // The client gets this very file: without the seals it could shrink it under vgpud's
        // mapping, and vgpud's next access would die of SIGBUS. The seals hold for every fd
        // of the file, and F_SEAL_SEAL stops anyone from removing them.
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let file = File::from(fd);
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        // SAFETY: the memfd is ours, sized to `len`, and sealed against shrinking and growing
        // before any other process gets it, so the mapping stays backed for its whole life.
        // Other processes may write the memory concurrently, which is why it is only ever
        // accessed through `ShmView`.
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
