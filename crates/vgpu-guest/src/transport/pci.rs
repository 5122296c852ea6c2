//! The PCI transport: a program inside the VM maps the ivshmem device's BARs through sysfs
//! (`resource0` = registers, `resource2` = shared memory) and polls the completion ring.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use vgpu_abi::ivshmem::{self, PCI_DEVICE, PCI_VENDOR, REG_DOORBELL};
use vgpu_abi::{RegisterPage, ShmView};

use super::mmio::RegisterBar;
use super::{SharedMapping, Transport};
use crate::Error;

/// Where sysfs lists PCI devices.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// A vGPU reached through its PCI BARs (sysfs `resource0` and `resource2`).
#[derive(Debug)]
pub struct PciTransport {
    dir: PathBuf,
    bar0: RegisterBar,
    bar2: SharedMapping,
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
    /// `/sys/bus/pci/devices/0000:00:04.0`): checks its ids, enables it, maps BAR0 and BAR2
    /// and checks the vgpu magic and ABI version in BAR2.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let vendor = read_hex_id(&dir.join("vendor"))?;
        let device = read_hex_id(&dir.join("device"))?;
        if (vendor, device) != (PCI_VENDOR, PCI_DEVICE) {
            return Err(Error::NotFound(format!(
                "{} is PCI {vendor:04x}:{device:04x}, not an ivshmem device {PCI_VENDOR:04x}:{PCI_DEVICE:04x}",
                dir.display()
            )));
        }
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
        let t = Self {
            dir: dir.to_path_buf(),
            bar0,
            bar2: SharedMapping::new(bar2, size2),
        };
        let shm = t.bar2.view();
        vgpu_abi::check_compat(
            shm.load_u64(vgpu_abi::regs::off::MAGIC),
            shm.load_u32(vgpu_abi::regs::off::ABI_VERSION),
        )?;
        Ok(t)
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

    fn wait_irq(&self, _timeout: Duration) -> Result<bool, Error> {
        Err(Error::NotSupported(
            "interrupts on the PCI transport (needs VFIO); poll instead",
        ))
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
}
