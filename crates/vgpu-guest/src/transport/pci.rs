//! The PCI transport: a program inside the VM reaches the ivshmem device's BARs (BAR0 =
//! registers, BAR2 = shared memory) through VFIO, which also gives it MSI-X vector 0 as the
//! completion interrupt ([`super::vfio`]), or, where VFIO is not usable (no virtual IOMMU, no
//! `vfio-pci` module), maps them through sysfs (`resource0`, `resource2`) and polls.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use vgpu_abi::ivshmem::{self, PCI_DEVICE, PCI_VENDOR, REG_DOORBELL};
use vgpu_abi::{RegisterPage, ShmView};

use super::mmio::RegisterBar;
use super::vfio::{VfioDevice, VfioFds};
use super::{irq::IrqEventfd, SharedMapping, Transport};
use crate::Error;

/// How long an eager waiter polls before it arms MSI-X: in a VM the interrupt is delivered on
/// the vCPU (an injection, the guest's handler, VFIO's eventfd, a wake-up), which under TCG
/// costs a few hundred microseconds of the vCPU per interrupt, more than a short command's
/// whole round trip when polled. Work that takes longer is waited for on the interrupt.
const MSIX_POLL_FIRST: Duration = Duration::from_millis(1);

/// Where sysfs lists PCI devices.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The register BAR: mapped, or (VFIO with a BAR0 the kernel does not let us map) read and
/// written through the VFIO device fd at the region's offset.
#[derive(Debug)]
enum Registers {
    Mapped(RegisterBar),
    Vfio { device: File, offset: u64 },
}

impl Registers {
    fn write_u32(&self, off: usize, v: u32) {
        match self {
            Registers::Mapped(bar) => bar.write_u32(off, v),
            // A doorbell is a hint (the rings in BAR2 are the state), so a failed write loses
            // nothing a later doorbell or vgpud's polling does not recover.
            Registers::Vfio { device, offset } => {
                let _ = device.write_all_at(&v.to_le_bytes(), offset + off as u64);
            }
        }
    }

    fn read_u32(&self, off: usize) -> u32 {
        match self {
            Registers::Mapped(bar) => bar.read_u32(off),
            Registers::Vfio { device, offset } => {
                let mut b = [0u8; 4];
                match device.read_exact_at(&mut b, offset + off as u64) {
                    Ok(()) => u32::from_le_bytes(b),
                    Err(_) => u32::MAX,
                }
            }
        }
    }
}

/// How completions reach a waiter on the PCI transport.
#[derive(Debug)]
enum Wait {
    /// MSI-X vector 0 through VFIO (the device fd and the container and group fds keep the
    /// device and its interrupt set-up ours: closing them disables MSI-X).
    Msix {
        irq: IrqEventfd,
        _device: File,
        _fds: VfioFds,
    },
    /// Polling: why VFIO was not usable.
    Poll { why: String },
}

/// A vGPU reached through its PCI BARs (through VFIO, or sysfs `resource0` and `resource2`).
#[derive(Debug)]
pub struct PciTransport {
    dir: PathBuf,
    bar0: Registers,
    bar2: SharedMapping,
    wait: Wait,
}

fn read_hex_id(path: &Path) -> Result<u16, Error> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u16::from_str_radix(t, 16)
        .map_err(|_| Error::InvalidArgument(format!("{}: not a hex PCI id: {s:?}", path.display())))
}

/// Whether the sysfs device directory is an ivshmem device (`1af4:1110`).
pub fn is_ivshmem(dir: &Path) -> bool {
    matches!(
        (
            read_hex_id(&dir.join("vendor")),
            read_hex_id(&dir.join("device"))
        ),
        (Ok(PCI_VENDOR), Ok(PCI_DEVICE))
    )
}

fn open_rw(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// Maps `len` bytes of `file` shared, read/write.
fn map(file: &File, len: usize) -> std::io::Result<MmapRaw> {
    MmapOptions::new().len(len).map_raw(file)
}

impl PciTransport {
    /// Opens the ivshmem device at a sysfs device directory (e.g.
    /// `/sys/bus/pci/devices/0000:00:04.0`): checks its ids, reaches BAR0 and BAR2 through
    /// VFIO (with MSI-X completion interrupts) or else through sysfs (polling), and checks the
    /// vgpu magic and ABI version in BAR2.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let vendor = read_hex_id(&dir.join("vendor"))?;
        let device = read_hex_id(&dir.join("device"))?;
        if (vendor, device) != (PCI_VENDOR, PCI_DEVICE) {
            return Err(Error::NotFound(format!(
                "{} is PCI {vendor:04x}:{device:04x}, not an ivshmem device {PCI_VENDOR:04x}:{PCI_DEVICE:04x}",
                dir.display()
            )));
        }
        let t = match VfioDevice::open(dir) {
            Ok(v) => Self::from_vfio(dir, v)?,
            Err(e) => Self::open_sysfs(dir, e.to_string())?,
        };
        t.bar2.check_compat()?;
        Ok(t)
    }

    fn from_vfio(dir: &Path, v: VfioDevice) -> Result<Self, Error> {
        let bar0 = match v.bar0_map {
            Some(map) => Registers::Mapped(RegisterBar::new(map, ivshmem::BAR0_SIZE)),
            None => Registers::Vfio {
                device: v
                    .device
                    .try_clone()
                    .map_err(|e| Error::io("duplicating the VFIO device fd", e))?,
                offset: v.bar0.offset,
            },
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            bar0,
            bar2: SharedMapping::new(v.bar2, v.bar2_len),
            wait: Wait::Msix {
                irq: v.irq,
                _device: v.device,
                _fds: v.fds,
            },
        })
    }

    /// Maps the BARs through sysfs; `why` says why VFIO was not used.
    fn open_sysfs(dir: &Path, why: String) -> Result<Self, Error> {
        // Enabling makes the BARs decode. An already-enabled device (or a driver holding it)
        // may refuse with EBUSY; the mmap below says whether it worked.
        if let Ok(mut f) = OpenOptions::new().write(true).open(dir.join("enable")) {
            let _ = f.write_all(b"1");
        }

        let r0 = dir.join("resource0");
        let f0 = open_rw(&r0)?;
        let size0 = f0
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", r0.display()), e))?
            .len() as usize;
        let want0 = if size0 == 0 {
            ivshmem::BAR0_SIZE
        } else {
            size0
        };
        let bar0 = match map(&f0, want0) {
            Ok(m) => m,
            Err(_) => map(&f0, want0.next_multiple_of(vgpu_abi::PAGE))
                .map_err(|e| Error::io(format!("mapping {}", r0.display()), e))?,
        };
        let bar0 = RegisterBar::new(bar0, want0);

        let r2 = dir.join("resource2");
        let f2 = open_rw(&r2)?;
        let size2 = f2
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", r2.display()), e))?
            .len() as usize;
        if size2 < core::mem::size_of::<RegisterPage>() {
            return Err(Error::NotFound(format!(
                "{}: BAR2 is {size2} bytes, too small for a vGPU",
                dir.display()
            )));
        }
        let bar2 =
            map(&f2, size2).map_err(|e| Error::io(format!("mapping {}", r2.display()), e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            bar0: Registers::Mapped(bar0),
            bar2: SharedMapping::new(bar2, size2),
            wait: Wait::Poll { why },
        })
    }

    /// Scans a sysfs PCI devices directory (normally [`SYSFS_PCI_DEVICES`]) and opens the
    /// first ivshmem device (in name order) whose BAR2 holds the vgpu magic.
    pub fn scan(devices: &Path) -> Result<Self, Error> {
        let rd = std::fs::read_dir(devices)
            .map_err(|e| Error::io(format!("listing {}", devices.display()), e))?;
        let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        let mut tried = Vec::new();
        for d in dirs.iter().filter(|d| is_ivshmem(d)) {
            match Self::open(d) {
                Ok(t) => return Ok(t),
                Err(e) => tried.push(format!("{}: {e}", d.display())),
            }
        }
        if tried.is_empty() {
            Err(Error::NotFound(format!(
                "no PCI device {PCI_VENDOR:04x}:{PCI_DEVICE:04x} (ivshmem) under {}",
                devices.display()
            )))
        } else {
            Err(Error::NotFound(format!(
                "no ivshmem device under {} holds a usable vGPU: {}",
                devices.display(),
                tried.join("; ")
            )))
        }
    }

    /// The sysfs directory of the device.
    pub fn sysfs_dir(&self) -> &Path {
        &self.dir
    }

    /// Our peer id as the ivshmem server assigned it (BAR0 `IVPosition`).
    pub fn iv_position(&self) -> u32 {
        self.bar0.read_u32(ivshmem::REG_IV_POSITION)
    }
}

impl Transport for PciTransport {
    fn shm(&self) -> ShmView {
        self.bar2.view()
    }

    fn keep_mapped(&self) {
        self.bar2.keep_mapped();
    }

    fn ring(&self, peer: u16, vector: u16) {
        self.bar0
            .write_u32(REG_DOORBELL, ivshmem::doorbell_value(peer, vector));
    }

    fn wait_irq(&self, timeout: Duration) -> Result<bool, Error> {
        self.wait_irq_since(self.irq_epoch(), timeout)
    }

    fn irq_epoch(&self) -> u64 {
        match &self.wait {
            Wait::Msix { irq, .. } => irq.epoch(),
            Wait::Poll { .. } => 0,
        }
    }

    fn wait_irq_since(&self, epoch: u64, timeout: Duration) -> Result<bool, Error> {
        match &self.wait {
            Wait::Msix { irq, .. } => irq.wait_since(epoch, timeout),
            Wait::Poll { .. } => Err(Error::NotSupported(
                "interrupts on the PCI transport without VFIO; poll instead",
            )),
        }
    }

    fn wait_kind(&self) -> Option<&'static str> {
        match &self.wait {
            Wait::Msix { .. } => Some("msi-x"),
            Wait::Poll { .. } => None,
        }
    }

    fn poll_before_irq(&self) -> Duration {
        MSIX_POLL_FIRST
    }

    fn poll_reason(&self) -> Option<String> {
        match &self.wait {
            Wait::Msix { .. } => None,
            Wait::Poll { why } => Some(why.clone()),
        }
    }

    fn describe(&self) -> String {
        format!(
            "pci {}",
            self.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.dir.display().to_string())
        )
    }

    fn map_again_at(&self, addr: usize) -> Option<ShmView> {
        use std::os::fd::AsFd;
        let f = open_rw(&self.dir.join("resource2")).ok()?;
        super::map_fixed(f.as_fd(), self.bar2.view().len(), addr)
    }
}
