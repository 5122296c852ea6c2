//! Driving the ivshmem device through the kernel's `vfio-pci` driver, so that a program in the
//! VM gets MSI-X completion interrupts without a kernel module of ours.
//!
//! The VM needs a virtual IOMMU (QEMU `-machine q35 -device intel-iommu,intremap=on`, guest
//! kernel `intel_iommu=on`; Debian's kernels have no VFIO no-IOMMU mode) and the `vfio-pci`
//! module. Then: bind the device to `vfio-pci` (through `driver_override`, so only this
//! device), open the VFIO container and the device's IOMMU group, take the device fd, map
//! BAR0 and BAR2 through it, set Bus Master Enable (without it the device sends no MSI-X
//! message) and attach an eventfd to MSI-X vector 0. The device raises nothing by DMA, so the
//! IOMMU gets no mappings.
//!
//! This module holds every VFIO `ioctl`; each is one `unsafe` block on a `#[repr(C)]`
//! argument of the size the kernel reads or writes.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};
use rustix::event::{eventfd, EventfdFlags};

use super::irq::IrqEventfd;

/// Where the VFIO container device lives.
const VFIO_CONTAINER: &str = "/dev/vfio/vfio";
/// The sysfs directory of the `vfio-pci` driver (present once the module is loaded).
const VFIO_PCI_DRIVER: &str = "/sys/bus/pci/drivers/vfio-pci";
/// Where the kernel is asked to probe a device again (after `driver_override` was set).
const DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";

// From <linux/vfio.h>: `_IO(VFIO_TYPE, VFIO_BASE + n)` with VFIO_TYPE ';' and VFIO_BASE 100.
const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}
const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);

/// What `VFIO_GET_API_VERSION` answers.
const VFIO_API_VERSION: i32 = 0;
/// IOMMU backends (`VFIO_CHECK_EXTENSION`, `VFIO_SET_IOMMU`), the newer preferred.
const VFIO_TYPE1_IOMMU: u64 = 1;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
/// `vfio_group_status.flags`: every device of the group is bound to VFIO (or to no driver).
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
/// `vfio_region_info.flags`: the region may be mapped through the device fd.
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;

/// vfio-pci's region indices: the BARs by number, then ROM (6), then config space.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
enum RegionIndex {
    Bar0 = 0,
    Bar2 = 2,
    Config = 7,
}
/// vfio-pci's interrupt indices: INTx (0), MSI (1), MSI-X (2).
const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
/// `vfio_irq_set.flags`: the data are eventfds, to be signalled when the interrupt fires.
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// PCI config space: the command register and its Memory Space and Bus Master bits.
const PCI_COMMAND: u64 = 0x4;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;

/// Why the device cannot be driven through VFIO (the PCI transport then polls).
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// No IOMMU group: the VM has no (enabled) virtual IOMMU.
    #[error(
        "{0} has no IOMMU group: the VM needs a virtual IOMMU (QEMU -device intel-iommu,intremap=on, guest kernel intel_iommu=on)"
    )]
    NoIommuGroup(PathBuf),
    /// The `vfio-pci` driver is not loaded.
    #[error("the vfio-pci driver is not loaded (modprobe vfio-pci)")]
    NoDriver,
    /// Another driver holds the device.
    #[error("{device} is bound to {driver}, not vfio-pci")]
    OtherDriver {
        /// The device's sysfs directory.
        device: PathBuf,
        /// The driver that holds it.
        driver: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel speaks another VFIO API.
    #[error("VFIO API version {0}, this library speaks {VFIO_API_VERSION}")]
    ApiVersion(i32),
    /// The kernel's VFIO has no type1 IOMMU backend (`vfio_iommu_type1` not loaded).
    #[error("VFIO has no type1 IOMMU (modprobe vfio_iommu_type1)")]
    NoType1,
    /// Another device of the IOMMU group is bound to a host driver.
    #[error("IOMMU group {0} is not viable: another device in it is bound to a host driver")]
    NotViable(String),
    /// A region (BAR, config space) cannot be used as needed.
    #[error("VFIO region {index}: {why}")]
    Region {
        /// The VFIO region index.
        index: u32,
        /// What is wrong with it.
        why: String,
    },
    /// The device has no MSI-X vector 0.
    #[error("the device has no MSI-X vector (QEMU ivshmem-doorbell needs vectors=1 or more)")]
    NoMsix,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VfioError {
    let what = what.into();
    move |source| VfioError::Io { what, source }
}

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

/// `struct vfio_irq_set` with room for exactly one eventfd in its trailing `data`.
#[repr(C)]
struct IrqSetOne {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fd: i32,
}

/// An `ioctl` whose argument is a plain value (or none).
fn ioctl_val(fd: &impl AsRawFd, req: u64, arg: u64, what: &str) -> Result<i32, VfioError> {
    // SAFETY: the VFIO requests passed here (`VFIO_GET_API_VERSION`, `VFIO_CHECK_EXTENSION`,
    // `VFIO_SET_IOMMU`) take their argument by value and touch no memory of ours.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as libc::c_ulong) };
    if r < 0 {
        return Err(io_err(what)(std::io::Error::last_os_error()));
    }
    Ok(r)
}

/// An `ioctl` whose argument points at `arg`, which the kernel may read and write.
///
/// # Safety
/// `req` must be a request whose argument is a pointer to a `T` (the kernel reads and writes
/// at most `size_of::<T>()` bytes there, as `argsz` inside `T` says where there is one).
unsafe fn ioctl_ptr<T>(
    fd: &impl AsRawFd,
    req: u64,
    arg: &mut T,
    what: &str,
) -> Result<i32, VfioError> {
    // SAFETY: `arg` is a live, exclusive `T`; the caller promises the request accesses no
    // more than a `T` through it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        return Err(io_err(what)(std::io::Error::last_os_error()));
    }
    Ok(r)
}

fn argsz<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// Where a region lies in the device fd and how large it is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) mmap: bool,
}

/// The container and group fds, kept open while the device is used: closing them releases
/// the device (and its MSI-X).
#[derive(Debug)]
pub(crate) struct VfioFds {
    _container: OwnedFd,
    _group: OwnedFd,
}

/// The device opened through VFIO: its fds, BAR2 mapped, BAR0 mapped or reached through the
/// device fd, and MSI-X vector 0 on an eventfd.
#[derive(Debug)]
pub(crate) struct VfioDevice {
    pub(crate) fds: VfioFds,
    /// The device fd: regions are read, written and mapped at their offsets in it.
    pub(crate) device: File,
    pub(crate) bar0: Region,
    /// BAR0 mapped, where the kernel allows it (it does for a page-aligned BAR0).
    pub(crate) bar0_map: Option<MmapRaw>,
    pub(crate) bar2: MmapRaw,
    pub(crate) bar2_len: usize,
    /// MSI-X vector 0.
    pub(crate) irq: IrqEventfd,
}

/// The driver bound to the device at `dir`, if any.
fn driver_of(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn write_sysfs(path: &Path, value: &str) -> Result<(), VfioError> {
    std::fs::write(path, value).map_err(io_err(format!("writing {value:?} to {}", path.display())))
}

/// Makes sure `vfio-pci` holds the device at `dir`: a device no driver holds is bound to it
/// through its `driver_override` (which, unlike `new_id`, binds no other device).
fn bind_vfio_pci(dir: &Path, name: &str) -> Result<(), VfioError> {
    match driver_of(dir) {
        Some(d) if d == "vfio-pci" => return Ok(()),
        Some(driver) => {
            return Err(VfioError::OtherDriver {
                device: dir.to_path_buf(),
                driver,
            })
        }
        None => {}
    }
    if !dir.join("iommu_group").exists() {
        return Err(VfioError::NoIommuGroup(dir.to_path_buf()));
    }
    if !Path::new(VFIO_PCI_DRIVER).exists() {
        return Err(VfioError::NoDriver);
    }
    write_sysfs(&dir.join("driver_override"), "vfio-pci")?;
    write_sysfs(Path::new(DRIVERS_PROBE), name)?;
    match driver_of(dir) {
        Some(d) if d == "vfio-pci" => Ok(()),
        other => Err(VfioError::OtherDriver {
            device: dir.to_path_buf(),
            driver: other.unwrap_or_else(|| "no driver (vfio-pci refused it)".into()),
        }),
    }
}

fn open_dev(path: &str) -> Result<OwnedFd, VfioError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(io_err(format!("opening {path}")))
}

fn region_info(device: &File, index: RegionIndex) -> Result<Region, VfioError> {
    let mut info = RegionInfo {
        argsz: argsz::<RegionInfo>(),
        index: index as u32,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_REGION_INFO takes a `struct vfio_region_info`, which
    // `RegionInfo` is; with `argsz` its size the kernel writes no capability chain past it.
    unsafe {
        ioctl_ptr(
            device,
            VFIO_DEVICE_GET_REGION_INFO,
            &mut info,
            "VFIO_DEVICE_GET_REGION_INFO",
        )?
    };
    Ok(Region {
        offset: info.offset,
        size: info.size,
        mmap: info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
    })
}

impl VfioDevice {
    /// Opens the PCI device at sysfs directory `dir` through VFIO (binding it to `vfio-pci`
    /// first if no driver holds it) and attaches an eventfd to MSI-X vector 0.
    pub(crate) fn open(dir: &Path) -> Result<Self, VfioError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bind_vfio_pci(dir, &name)?;
        let group = std::fs::read_link(dir.join("iommu_group"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| VfioError::NoIommuGroup(dir.to_path_buf()))?;

        let container = open_dev(VFIO_CONTAINER)?;
        let version = ioctl_val(&container, VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")?;
        if version != VFIO_API_VERSION {
            return Err(VfioError::ApiVersion(version));
        }
        let iommu = [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU]
            .into_iter()
            .find(|&t| {
                ioctl_val(&container, VFIO_CHECK_EXTENSION, t, "VFIO_CHECK_EXTENSION")
                    .is_ok_and(|r| r > 0)
            })
            .ok_or(VfioError::NoType1)?;

        let group_fd = open_dev(&format!("/dev/vfio/{group}"))?;
        let mut status = GroupStatus {
            argsz: argsz::<GroupStatus>(),
            ..Default::default()
        };
        // SAFETY: VFIO_GROUP_GET_STATUS takes a `struct vfio_group_status`, which
        // `GroupStatus` is.
        unsafe {
            ioctl_ptr(
                &group_fd,
                VFIO_GROUP_GET_STATUS,
                &mut status,
                "VFIO_GROUP_GET_STATUS",
            )?
        };
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable(group));
        }
        let mut container_raw: i32 = container.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one `int` (the container fd) at its argument.
        unsafe {
            ioctl_ptr(
                &group_fd,
                VFIO_GROUP_SET_CONTAINER,
                &mut container_raw,
                "VFIO_GROUP_SET_CONTAINER",
            )?
        };
        ioctl_val(&container, VFIO_SET_IOMMU, iommu, "VFIO_SET_IOMMU")?;

        let cname = CString::new(name.clone()).map_err(|_| VfioError::Region {
            index: 0,
            why: format!("device name {name:?} holds a NUL"),
        })?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated device name at its argument,
        // which `cname` is and outlives the call.
        let raw = unsafe {
            libc::ioctl(
                group_fd.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD as _,
                cname.as_ptr(),
            )
        };
        if raw < 0 {
            return Err(io_err(format!("VFIO_GROUP_GET_DEVICE_FD {name}"))(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a non-negative return of VFIO_GROUP_GET_DEVICE_FD is a new fd that nothing
        // else owns.
        let device = File::from(unsafe { OwnedFd::from_raw_fd(raw) });

        let bar0 = region_info(&device, RegionIndex::Bar0)?;
        if bar0.size < vgpu_abi::ivshmem::BAR0_SIZE as u64 {
            return Err(VfioError::Region {
                index: RegionIndex::Bar0 as u32,
                why: format!("BAR0 is {} bytes", bar0.size),
            });
        }
        let bar0_map = if bar0.mmap {
            MmapOptions::new()
                .offset(bar0.offset)
                .len(bar0.size as usize)
                .map_raw(&device)
                .ok()
        } else {
            None
        };
        let bar2 = region_info(&device, RegionIndex::Bar2)?;
        if !bar2.mmap {
            return Err(VfioError::Region {
                index: RegionIndex::Bar2 as u32,
                why: "BAR2 cannot be mapped".into(),
            });
        }
        let bar2_len = usize::try_from(bar2.size).map_err(|_| VfioError::Region {
            index: RegionIndex::Bar2 as u32,
            why: format!("BAR2 of {} bytes", bar2.size),
        })?;
        let bar2_map = MmapOptions::new()
            .offset(bar2.offset)
            .len(bar2_len)
            .map_raw(&device)
            .map_err(io_err("mapping BAR2 through VFIO"))?;

        // Bus Master Enable: the device's MSI-X messages are memory writes it masters.
        let config = region_info(&device, RegionIndex::Config)?;
        let mut cmd = [0u8; 2];
        device
            .read_exact_at(&mut cmd, config.offset + PCI_COMMAND)
            .map_err(io_err("reading PCI_COMMAND"))?;
        let cmd = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        device
            .write_all_at(&cmd.to_le_bytes(), config.offset + PCI_COMMAND)
            .map_err(io_err("writing PCI_COMMAND"))?;

        let mut info = IrqInfo {
            argsz: argsz::<IrqInfo>(),
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            ..Default::default()
        };
        // SAFETY: VFIO_DEVICE_GET_IRQ_INFO takes a `struct vfio_irq_info`, which `IrqInfo` is.
        unsafe {
            ioctl_ptr(
                &device,
                VFIO_DEVICE_GET_IRQ_INFO,
                &mut info,
                "VFIO_DEVICE_GET_IRQ_INFO",
            )?
        };
        if info.count == 0 {
            return Err(VfioError::NoMsix);
        }
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| io_err("creating the MSI-X eventfd")(e.into()))?;
        let mut set = IrqSetOne {
            argsz: argsz::<IrqSetOne>(),
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            fd: efd.as_raw_fd(),
        };
        // SAFETY: VFIO_DEVICE_SET_IRQS takes a `struct vfio_irq_set` followed by `count`
        // (here 1) `int` eventfds, which `IrqSetOne` is, and `argsz` says so.
        unsafe {
            ioctl_ptr(
                &device,
                VFIO_DEVICE_SET_IRQS,
                &mut set,
                "VFIO_DEVICE_SET_IRQS",
            )?
        };

        Ok(Self {
            fds: VfioFds {
                _container: container,
                _group: group_fd,
            },
            device,
            bar0,
            bar0_map,
            bar2: bar2_map,
            bar2_len,
            irq: IrqEventfd::new(efd),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_vfio_h() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(core::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(core::mem::size_of::<IrqSetOne>(), 24);
    }

    #[test]
    fn a_device_without_iommu_group_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        match VfioDevice::open(dir.path()) {
            Err(VfioError::NoIommuGroup(p)) => assert_eq!(p, dir.path()),
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("driver_override").exists());
    }
}
