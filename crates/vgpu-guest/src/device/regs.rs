//! The register page: checked once when the device is opened (magic, ABI version, geometry),
//! read fresh for [`DeviceInfo`] and for the fence check before and while waiting.

use std::time::{Duration, Instant};

use vgpu_abi::info::INFO_OFFSET;
use vgpu_abi::regs::{self, off, Usage};
use vgpu_abi::{DeviceInfoPage, DeviceStatus, Layout, LayoutError, RegisterPage, ShmView, Status};

use super::Device;
use crate::Error;

/// A fresh reading of the device's register page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The VM's id.
    pub vm_id: u32,
    /// The VM's pool.
    pub pool_id: u32,
    /// The VM's priority (0 = lowest).
    pub priority: u32,
    /// The device status, when it is a known value (see `status_raw` for the exact value).
    pub status: Option<DeviceStatus>,
    /// The raw device status register.
    pub status_raw: u32,
    /// Last error code (a [`Status`] or a fence reason); 0 = none.
    pub last_error: u32,
    /// `CAP_*` bits (see [`vgpu_abi::regs`]).
    pub capabilities: u64,
    /// ABI version, `major << 16 | minor`.
    pub abi_version: u32,
    /// The VM's name.
    pub vm_name: String,
    /// The backing device's name.
    pub device_name: String,
    /// Backend id (1 = cpu, 2 = cuda).
    pub backend: u32,
    /// This VM's device memory quota in bytes.
    pub mem_quota: u64,
    /// Size of the staging area in bytes.
    pub staging_size: u64,
    /// Incremented at each (re)initialisation of the device.
    pub generation: u32,
    /// Total memory of the physical device backing this vGPU.
    pub device_total_mem: u64,
    /// Size of BAR2 in bytes.
    pub shm_size: u64,
    /// Submission ring entries.
    pub sq_entries: u32,
    /// Completion ring entries.
    pub cq_entries: u32,
    /// Longest busy kernel accepted, in microseconds.
    pub max_kernel_us: u32,
    /// What the VM uses of the device now (memory, utilisation), when vgpud publishes it
    /// (ABI 1.6).
    pub usage: Option<Usage>,
}

impl DeviceInfo {
    /// A fresh reading of the register page of a BAR2 mapped elsewhere in this process (vgpu's
    /// `libnvidia-ml.so.1` reads the mapping `libcuda.so.1` opened; see [`Device::open_default`]).
    pub fn read(view: ShmView) -> Self {
        Self::from_regs(&view.read_obj::<RegisterPage>(0))
    }

    fn from_regs(r: &RegisterPage) -> Self {
        Self {
            vm_id: r.vm_id,
            pool_id: r.pool_id,
            priority: r.priority,
            status: DeviceStatus::from_raw(r.device_status),
            status_raw: r.device_status,
            last_error: r.last_error,
            capabilities: r.capabilities,
            abi_version: r.abi_version,
            vm_name: regs::get_str(&r.vm_name),
            device_name: regs::get_str(&r.device_name),
            backend: r.backend,
            mem_quota: r.mem_quota,
            staging_size: r.staging_size,
            generation: r.generation,
            device_total_mem: r.device_total_mem,
            shm_size: r.shm_size,
            sq_entries: r.sq_entries,
            cq_entries: r.cq_entries,
            max_kernel_us: r.max_kernel_us,
            usage: r.usage(),
        }
    }

    /// The status as a lower-case word (`ready`, `fenced`, … or `unknown(N)`).
    pub fn status_name(&self) -> String {
        match DeviceStatus::from_raw(self.status_raw) {
            Some(s) => s.name().to_string(),
            None => format!("unknown({})", self.status_raw),
        }
    }

    /// The backend as a word (`cpu`, `cuda` or `unknown(N)`).
    pub fn backend_name(&self) -> String {
        match self.backend {
            regs::BACKEND_CPU => "cpu".into(),
            regs::BACKEND_CUDA => "cuda".into(),
            b => format!("unknown({b})"),
        }
    }

    /// The ABI version as `major.minor`.
    pub fn abi_version_string(&self) -> String {
        format!("{}.{}", self.abi_version >> 16, self.abi_version & 0xffff)
    }

    /// The last error as text (a status description, a fence reason, or the number).
    pub fn last_error_string(&self) -> String {
        if self.last_error == 0 {
            return "none".into();
        }
        if let Some(r) = vgpu_abi::ring::FenceReason::from_raw(self.last_error) {
            return format!("{r} ({:#x})", self.last_error);
        }
        match Status::from_raw(self.last_error) {
            Some(s) => s.to_string(),
            None => format!("code {}", self.last_error),
        }
    }
}

/// The device-info page of a BAR2 mapping, when vgpud publishes one (capability
/// `CAP_DEVICE_INFO`, ABI 1.4).
pub fn device_info_page(view: ShmView) -> Option<DeviceInfoPage> {
    let caps = view.load_u64(std::mem::offset_of!(RegisterPage, capabilities));
    (caps & regs::CAP_DEVICE_INFO != 0).then(|| view.read_obj(INFO_OFFSET))
}

/// What opening a device takes from the register page, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Opened {
    /// The ring and staging geometry, consistent with the size of the mapping.
    pub(super) layout: Layout,
    /// vgpud's peer id and doorbell vector.
    pub(super) doorbell: (u16, u16),
    /// The device's ABI minor version (what it understands beyond 1.0).
    pub(super) abi_minor: u16,
}

/// Reads the register page of a freshly mapped BAR2 and checks the magic, the ABI version and
/// the ring geometry, so that no offset used later can point outside the mapping.
pub(super) fn read_at_open(view: ShmView) -> Result<Opened, Error> {
    if view.len() < core::mem::size_of::<RegisterPage>() {
        return Err(LayoutError::BadShmSize(view.len() as u64).into());
    }
    let regs: RegisterPage = view.read_obj(0);
    vgpu_abi::check_compat(regs.magic, regs.abi_version)?;
    let layout = Layout::from_regs(&regs, view.len() as u64)?;
    Ok(Opened {
        layout,
        doorbell: (regs.host_peer_id as u16, regs.doorbell_vector as u16),
        abi_minor: regs.abi_version as u16,
    })
}

/// Reads the geometry again (after a reset) and fails unless it is still `expected`: the rings
/// are re-attached at the same offsets, and the staging code relies on an unchanged area.
pub(super) fn check_layout_unchanged(view: ShmView, expected: Layout) -> Result<(), Error> {
    let regs: RegisterPage = view.read_obj(0);
    let layout = Layout::from_regs(&regs, view.len() as u64)?;
    if layout != expected {
        return Err(LayoutError::Inconsistent("ring geometry changed across a reset").into());
    }
    Ok(())
}

impl Device {
    /// A fresh reading of the register page.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo::from_regs(&self.view.read_obj::<RegisterPage>(0))
    }

    /// The device-info page (what a CUDA driver reports about the device), when vgpud
    /// publishes one (capability `CAP_DEVICE_INFO`, ABI 1.4).
    pub fn device_info_page(&self) -> Option<DeviceInfoPage> {
        device_info_page(self.view)
    }

    /// Where the VM's context maps the staging area into the device's address space (ABI 1.6):
    /// staging offset `o` is device memory at the answer + `o` (CUDA's mapped host memory).
    /// `None` where it is not mapped (the cpu backend, an older vgpud) or not yet: vgpud
    /// publishes it once the context is ready, before it answers the VM's first command.
    pub fn staging_device_address(&self) -> Option<u64> {
        let page: RegisterPage = self.view.read_obj(0);
        let minor = page.abi_version as u16;
        if minor < 6 || page.capabilities & regs::CAP_DEVICE_INFO == 0 {
            return None;
        }
        let at = INFO_OFFSET + std::mem::offset_of!(DeviceInfoPage, staging_device_address);
        Some(self.view.load_u64(at)).filter(|&a| a != 0)
    }

    /// Fails when the device will not answer: fenced, or stopped by vgpud.
    pub(super) fn fenced(&self) -> Result<(), Error> {
        let status = self.view.load_u32(off::DEVICE_STATUS);
        if status == DeviceStatus::Fenced as u32 {
            return Err(Error::Fenced {
                reason: self.view.load_u32(off::LAST_ERROR),
            });
        }
        if status == DeviceStatus::Stopped as u32 {
            return Err(Error::Stopped);
        }
        Ok(())
    }

    /// Why a wait that began at `t0` should end without what it waits for: the VM fenced, the
    /// device stopped, vgpud gone (its socket closed: looked at only once the wait lasted
    /// [`PEER_CHECK_AFTER`], a system call each time), or the timeout passed (`what` names
    /// what was waited for).
    pub(super) fn give_up(&self, t0: Instant, what: impl FnOnce() -> String) -> Option<Error> {
        if let Err(e) = self.fenced() {
            return Some(e);
        }
        let waited = t0.elapsed();
        if waited > self.timeout {
            return Some(Error::timeout(what(), self.timeout));
        }
        if waited > PEER_CHECK_AFTER && !self.transport.peer_alive() {
            return Some(Error::Stopped);
        }
        None
    }
}

/// How long a wait goes before it checks that vgpud is still there.
const PEER_CHECK_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testhost::register_page;
    use vgpu_abi::ring::FenceReason;
    use vgpu_abi::AbiError;

    const SIZE: u64 = vgpu_abi::layout::MIN_SHM_SIZE;

    /// Runs `f` on a view of a zeroed, 8-aligned buffer of `len` bytes holding `regs`.
    fn with_page(len: usize, regs: Option<&RegisterPage>, f: impl FnOnce(ShmView)) {
        let view = vgpu_abi::ShmView::leak_zeroed(len);
        if let Some(r) = regs {
            view.write_obj(0, r);
        }
        f(view);
    }

    #[test]
    fn a_good_page_gives_its_layout_and_doorbell() {
        let mut regs = register_page(SIZE, 4, 8);
        regs.host_peer_id = 9;
        regs.doorbell_vector = 1;
        with_page(SIZE as usize, Some(&regs), |v| {
            let o = read_at_open(v).unwrap();
            assert_eq!(o.layout, Layout::compute(SIZE, 4, 8).unwrap());
            assert_eq!(o.doorbell, (9, 1));
        });
    }

    #[test]
    fn a_mapping_smaller_than_the_register_page_is_refused() {
        let len = core::mem::size_of::<RegisterPage>() - 8;
        with_page(len, None, |v| {
            assert!(matches!(
                read_at_open(v),
                Err(Error::Layout(LayoutError::BadShmSize(n))) if n == len as u64
            ));
        });
    }

    #[test]
    fn bad_magic_and_other_major_are_refused() {
        let mut regs = register_page(SIZE, 4, 8);
        regs.magic ^= 1;
        with_page(SIZE as usize, Some(&regs), |v| {
            assert!(matches!(
                read_at_open(v),
                Err(Error::Abi(AbiError::BadMagic { .. }))
            ));
        });
        let mut regs = register_page(SIZE, 4, 8);
        regs.abi_version = (vgpu_abi::ABI_MAJOR as u32 + 1) << 16;
        with_page(SIZE as usize, Some(&regs), |v| {
            assert!(matches!(
                read_at_open(v),
                Err(Error::Abi(AbiError::VersionMismatch { .. }))
            ));
        });
    }

    #[test]
    fn geometry_that_does_not_fit_the_mapping_is_refused() {
        // Each register disagrees with what the host computes for this mapping.
        let bad: [fn(&mut RegisterPage); 5] = [
            |r| r.shm_size *= 2,
            |r| r.sq_entries = 3,
            |r| r.cq_entries = r.sq_entries / 2,
            |r| r.staging_offset += 4096,
            |r| r.sqe_size += 1,
        ];
        for (i, spoil) in bad.iter().enumerate() {
            let mut regs = register_page(SIZE, 4, 8);
            spoil(&mut regs);
            with_page(SIZE as usize, Some(&regs), |v| {
                assert!(
                    matches!(read_at_open(v), Err(Error::Layout(_))),
                    "spoiled register set {i} was accepted"
                );
            });
        }
    }

    #[test]
    fn a_reset_that_changes_the_geometry_is_refused() {
        let regs = register_page(SIZE, 4, 8);
        with_page(SIZE as usize, Some(&regs), |v| {
            let layout = read_at_open(v).unwrap().layout;
            check_layout_unchanged(v, layout).unwrap();
            v.write_obj(0, &register_page(SIZE, 2, 8));
            assert!(matches!(
                check_layout_unchanged(v, layout),
                Err(Error::Layout(LayoutError::Inconsistent(_)))
            ));
        });
    }

    #[test]
    fn info_words() {
        let mut regs = register_page(SIZE, 4, 8);
        regs.backend = 77;
        regs.abi_version = 3 << 16 | 14;
        regs.device_status = DeviceStatus::Fenced as u32;
        let mut i = DeviceInfo::from_regs(&regs);
        assert_eq!(i.status, Some(DeviceStatus::Fenced));
        assert_eq!(i.status_name(), "fenced");
        assert_eq!(i.backend_name(), "unknown(77)");
        assert_eq!(i.abi_version_string(), "3.14");
        assert_eq!(i.last_error_string(), "none");
        i.last_error = Status::QuotaExceeded as u32;
        assert_eq!(i.last_error_string(), Status::QuotaExceeded.to_string());
        let reason = FenceReason::CqIndexOutOfRange;
        i.last_error = reason as u32;
        assert!(i.last_error_string().starts_with(&reason.to_string()));
        i.last_error = 0xdead_beef;
        assert!(
            FenceReason::from_raw(i.last_error).is_none()
                && Status::from_raw(i.last_error).is_none()
        );
        assert_eq!(i.last_error_string(), format!("code {}", 0xdead_beef_u32));
    }
}
