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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsRawFd;

    #[test]
    fn a_region_is_zeroed_sealed_and_one_memory_with_its_file() {
        let r = SharedRegion::create("t", 128 << 10).unwrap();
        assert_eq!(r.len(), 128 << 10);
        assert!(!r.is_empty());
        let name = std::fs::read_link(format!("/proc/self/fd/{}", r.fd().as_raw_fd())).unwrap();
        assert!(
            name.to_string_lossy().contains("memfd:vgpu-t"),
            "{}",
            name.display()
        );
        let mut b = [0xffu8; 64];
        r.view().read_bytes((128 << 10) - 64, &mut b);
        assert_eq!(b, [0; 64]);

        // Whoever holds the file can neither resize it nor lift the seals.
        let seals = rustix::fs::fcntl_get_seals(r.fd()).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
        assert!(ftruncate(r.fd(), 4096).is_err(), "shrunk");
        assert!(ftruncate(r.fd(), 1 << 20).is_err(), "grown");
        assert!(
            fcntl_add_seals(r.fd(), SealFlags::WRITE).is_err(),
            "resealed"
        );
        assert_eq!(rustix::fs::fstat(r.fd()).unwrap().st_size, 128 << 10);

        // vgpud's view and the client's file are the same memory, both ways.
        r.view().write_bytes(4096, b"host");
        let mut got = [0u8; 4];
        rustix::io::pread(r.fd(), &mut got, 4096).unwrap();
        assert_eq!(&got, b"host");
        rustix::io::pwrite(r.fd(), b"guest", 8192).unwrap();
        let mut got = [0u8; 5];
        r.view().read_bytes(8192, &mut got);
        assert_eq!(&got, b"guest");
    }
}
