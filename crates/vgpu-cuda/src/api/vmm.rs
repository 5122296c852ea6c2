//! Virtual memory management: `cuMemAddressReserve`, `cuMemCreate`, `cuMemMap`,
//! `cuMemSetAccess` and their inverses, each one vgpud command (ABI 1.6) that the host runs as
//! the driver call in the VM's context, so the addresses are the GPU's own. XLA refuses to
//! start without them; PyTorch's expandable segments allocate with them.
//!
//! This module keeps the process's view: reservations, handles (with the references
//! `cuMemRetainAllocationHandle` adds, answered here) and mappings, which join the device
//! memory the unified-address copies, `cuPointerGetAttribute` and `cuMemGetAddressRange` know
//! ([`mapping_of`]). Memory is pinned device memory of device 0, read-write for it; what that
//! excludes (host memory, other devices, read-only access, shareable handles, compression)
//! answers `CUDA_ERROR_NOT_SUPPORTED`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_uint, c_ulonglong, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::{put, run};
use crate::driver::{self, Driver};
use crate::types::{CUdeviceptr, CUresult};

/// A handle of `cuMemCreate` (`CUmemGenericAllocationHandle`).
type Handle = c_ulonglong;

/// `CU_MEM_ALLOCATION_TYPE_PINNED`.
const TYPE_PINNED: c_uint = 1;
/// `CU_MEM_LOCATION_TYPE_DEVICE`.
const LOCATION_DEVICE: c_uint = 1;
/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`: may be requested (PyTorch does); exporting
/// answers `CUDA_ERROR_NOT_SUPPORTED`.
const HANDLE_POSIX_FD: c_uint = 1;
/// `CU_MEM_ACCESS_FLAGS_PROT_READWRITE`.
const PROT_READWRITE: c_uint = 3;
/// `CU_MEM_ALLOC_GRANULARITY_MINIMUM` and `_RECOMMENDED`.
const GRANULARITY_MINIMUM: c_int = 0;
const GRANULARITY_RECOMMENDED: c_int = 1;

/// `CUmemLocation` with its enum as the integer a program may pass.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawLocation {
    /// `CUmemLocationType`.
    pub type_: c_uint,
    /// The device ordinal (for a device location).
    pub id: c_int,
}

/// `CUmemAllocationProp` (CUDA 13.0's layout) with its enums as the integers a program may
/// pass: a value that names no enumerator must be an error, not undefined behaviour.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawProp {
    /// `CUmemAllocationType`.
    pub type_: c_uint,
    /// `CUmemAllocationHandleType` bits.
    pub requested_handle_types: c_uint,
    /// Where the memory lives.
    pub location: RawLocation,
    /// Windows only.
    pub win32_handle_meta_data: *mut c_void,
    /// `allocFlags.compressionType`.
    pub compression_type: u8,
    /// `allocFlags.gpuDirectRDMACapable`.
    pub gpu_direct_rdma_capable: u8,
    /// `allocFlags.usage`.
    pub usage: u16,
    /// `allocFlags.reserved`.
    pub reserved: [u8; 4],
}

/// `CUmemAccessDesc` with its enums as integers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawAccessDesc {
    /// Who gets the access.
    pub location: RawLocation,
    /// `CUmemAccess_flags`.
    pub flags: c_uint,
}

const _: () = assert!(std::mem::size_of::<RawProp>() == 32);
const _: () = assert!(
    std::mem::size_of::<RawProp>() == std::mem::size_of::<crate::types::CUmemAllocationProp>()
);
const _: () = assert!(
    std::mem::size_of::<RawAccessDesc>() == std::mem::size_of::<crate::types::CUmemAccessDesc>()
);

/// A handle this process created.
#[derive(Debug, Clone, Copy)]
struct Created {
    /// The shareable handle types requested (reported back, never exportable).
    handle_types: c_uint,
    /// `cuMemCreate`'s reference and those `cuMemRetainAllocationHandle` added.
    refs: u32,
    /// vgpud was told to release it (its memory goes once the last mapping does).
    host_released: bool,
    /// Mappings of it.
    maps: u32,
}

/// A mapping: `size` bytes of `handle`, and the device's access.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    size: u64,
    handle: Handle,
    /// `CUmemAccess_flags` granted to device 0 (0 until `cuMemSetAccess`).
    access: c_uint,
}

#[derive(Default)]
struct Tables {
    reserved: BTreeMap<u64, u64>,
    handles: HashMap<Handle, Created>,
    maps: BTreeMap<u64, Mapped>,
}

static TABLES: OnceLock<Mutex<Tables>> = OnceLock::new();

fn tables() -> MutexGuard<'static, Tables> {
    TABLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl Tables {
    /// The mapping holding `p`: its start and what it maps.
    fn mapping(&self, p: u64) -> Option<(u64, Mapped)> {
        self.maps
            .range(..=p)
            .next_back()
            .map(|(&b, &m)| (b, m))
            .filter(|&(b, m)| p - b < m.size)
    }

    /// The run of adjacent mappings around `p`: `(start, size)`.
    fn run(&self, p: u64) -> Option<(u64, u64)> {
        let (mut start, m) = self.mapping(p)?;
        let mut end = start + m.size;
        while let Some((&b, m)) = self.maps.range(..start).next_back() {
            if b + m.size != start {
                break;
            }
            start = b;
        }
        while let Some(m) = self.maps.get(&end) {
            end += m.size;
        }
        Some((start, end - start))
    }

    /// Forgets a handle nothing refers to or maps any more.
    fn collect(&mut self, h: Handle) {
        if self
            .handles
            .get(&h)
            .is_some_and(|c| c.refs == 0 && c.maps == 0)
        {
            self.handles.remove(&h);
        }
    }
}

/// The adjacent mappings around `p`, `(start, size)` of their whole run: how far a 2D copy or
/// memset from `p` may reach (the device sees one range; NVIDIA's driver copies across
/// mappings too).
pub fn mapped_run_of(p: u64) -> Option<(u64, u64)> {
    let t = TABLES.get()?.lock().unwrap_or_else(|e| e.into_inner());
    t.run(p)
}

/// The mapping holding `p`, `(start, size)`: device memory for the unified-address copies,
/// `cuPointerGetAttribute` and `cuMemGetAddressRange`.
pub fn mapping_of(p: u64) -> Option<(u64, u64)> {
    let t = TABLES.get()?.lock().unwrap_or_else(|e| e.into_inner());
    t.mapping(p).map(|(b, m)| (b, m.size))
}

fn dev_err(e: vgpu_guest::Error) -> CUresult {
    driver::error_of(&e)
}

/// `(minimum, recommended)` granularity, asked of vgpud once. An older vgpud (before ABI 1.6)
/// does not know the command: `CUDA_ERROR_NOT_SUPPORTED`, and so for every call here.
pub fn granularity(d: &Driver) -> Result<(u64, u64), CUresult> {
    static G: OnceLock<(u64, u64)> = OnceLock::new();
    if let Some(&g) = G.get() {
        return Ok(g);
    }
    let g = d.dev.mem_granularity().map_err(dev_err)?;
    if g.0 == 0 || !g.0.is_power_of_two() {
        return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
    }
    Ok(*G.get_or_init(|| g))
}

/// Whether the device offers virtual memory management (`cuDeviceGetAttribute`).
pub fn supported() -> bool {
    driver::get().is_ok_and(|d| granularity(d).is_ok())
}

/// The driver, once `cuInit` ran, with a device that offers virtual memory management. These
/// calls need no current context, as NVIDIA's do not.
fn ready() -> Result<&'static Driver, CUresult> {
    let d = driver::get()?;
    granularity(d)?;
    Ok(d)
}

/// Checks what `cuMemCreate` or `cuMemGetAllocationGranularity` is asked for: pinned memory
/// of device 0. Returns the shareable handle types requested.
fn check_prop(p: *const RawProp) -> Result<c_uint, CUresult> {
    if p.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, and the caller promises a valid CUmemAllocationProp, whose layout
    // RawProp has (checked above), with integers where it has enums.
    let p = unsafe { p.read() };
    match p.type_ {
        TYPE_PINNED => {}
        0 => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        _ => return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED),
    }
    match (p.location.type_, p.location.id) {
        (LOCATION_DEVICE, 0) => {}
        (LOCATION_DEVICE, _) => return Err(CUresult::CUDA_ERROR_INVALID_DEVICE),
        (0, _) => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        // Host and NUMA-node memory.
        _ => return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED),
    }
    // Windows handles, fabric handles (multi-node NVLink), compressible memory, tile pools
    // and GPUDirect RDMA (the device attribute says 0) are not offered.
    if p.requested_handle_types & !HANDLE_POSIX_FD != 0
        || p.compression_type != 0
        || p.usage != 0
        || p.gpu_direct_rdma_capable != 0
    {
        return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
    }
    Ok(p.requested_handle_types)
}

/// `cuMemGetAllocationGranularity`: what the host's GPU answers (2 MiB, minimum and
/// recommended, on an H100 or H200 with driver 580; the cpu device answers the same).
///
/// # Safety
/// `granularity` is NULL or valid for a write; `prop` is NULL or a valid property struct.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const RawProp,
    option: c_int,
) -> CUresult {
    run("cuMemGetAllocationGranularity", || {
        let d = ready()?;
        check_prop(prop)?;
        let (min, rec) = self::granularity(d)?;
        let g = match option {
            GRANULARITY_MINIMUM => min,
            GRANULARITY_RECOMMENDED => rec,
            _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        };
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(granularity, g as usize) })
    })
}

/// `cuMemAddressReserve`: `addr` is a hint. No flags are defined.
///
/// # Safety
/// `ptr` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    addr: CUdeviceptr,
    flags: c_ulonglong,
) -> CUresult {
    run("cuMemAddressReserve", || {
        let d = ready()?;
        if ptr.is_null() || size == 0 || flags != 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        if alignment != 0 && !alignment.is_power_of_two() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let p = d
            .dev
            .mem_address_reserve(size as u64, alignment as u64, addr)
            .map_err(dev_err)?;
        tables().reserved.insert(p, size as u64);
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(ptr, p) })
    })
}

/// `cuMemAddressFree`: a whole reservation, with nothing mapped in it.
#[no_mangle]
pub extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    run("cuMemAddressFree", || {
        let d = ready()?;
        if tables().reserved.get(&ptr) != Some(&(size as u64)) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        d.dev.mem_address_free(ptr, size as u64).map_err(dev_err)?;
        tables().reserved.remove(&ptr);
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemCreate`: pinned memory of device 0 (see [`check_prop`]); `size` a multiple of the
/// granularity. No flags are defined.
///
/// # Safety
/// `handle` is NULL or valid for a write; `prop` is NULL or a valid property struct.
#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut Handle,
    size: usize,
    prop: *const RawProp,
    flags: c_ulonglong,
) -> CUresult {
    run("cuMemCreate", || {
        let d = ready()?;
        if handle.is_null() || size == 0 || flags != 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let handle_types = check_prop(prop)?;
        let h = d.dev.mem_create(size as u64).map_err(dev_err)?;
        tables().handles.insert(
            h,
            Created {
                handle_types,
                refs: 1,
                host_released: false,
                maps: 0,
            },
        );
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(handle, h) })
    })
}

/// `cuMemRelease`: drops one reference; with the last, the memory is freed once no range maps
/// it.
#[no_mangle]
pub extern "C" fn cuMemRelease(handle: Handle) -> CUresult {
    run("cuMemRelease", || {
        let d = ready()?;
        let last = {
            let mut t = tables();
            let c = t
                .handles
                .get_mut(&handle)
                .filter(|c| c.refs > 0)
                .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
            c.refs -= 1;
            c.refs == 0 && !c.host_released
        };
        if last {
            if let Err(e) = d.dev.mem_release(handle) {
                if let Some(c) = tables().handles.get_mut(&handle) {
                    c.refs += 1;
                }
                return Err(dev_err(e));
            }
            if let Some(c) = tables().handles.get_mut(&handle) {
                c.host_released = true;
            }
        }
        tables().collect(handle);
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemMap`: `size` bytes of the handle from `offset` (0, as NVIDIA's requires) at `ptr`,
/// inside a reservation. No flags are defined.
#[no_mangle]
pub extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: Handle,
    flags: c_ulonglong,
) -> CUresult {
    run("cuMemMap", || {
        let d = ready()?;
        if size == 0 || offset != 0 || flags != 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        if tables().handles.get(&handle).is_none_or(|c| c.refs == 0) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        d.dev
            .mem_map(ptr, size as u64, offset as u64, handle)
            .map_err(dev_err)?;
        let mut t = tables();
        if let Some(c) = t.handles.get_mut(&handle) {
            c.maps += 1;
        }
        t.maps.insert(
            ptr,
            Mapped {
                size: size as u64,
                handle,
                access: 0,
            },
        );
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemUnmap`: whole mappings. Waits for the device's work first (vgpud holds it until the
/// VM's work retired).
#[no_mangle]
pub extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    run("cuMemUnmap", || {
        let d = ready()?;
        let end = ptr
            .checked_add(size as u64)
            .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        d.dev.mem_unmap(ptr, size as u64).map_err(dev_err)?;
        let mut t = tables();
        let gone: Vec<u64> = t.maps.range(ptr..end).map(|(&b, _)| b).collect();
        for b in gone {
            if let Some(m) = t.maps.remove(&b) {
                if let Some(c) = t.handles.get_mut(&m.handle) {
                    c.maps -= 1;
                }
                t.collect(m.handle);
            }
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemSetAccess`: read-write access for device 0 (the one device). Read-only or no access,
/// and access from the host or another device, are `CUDA_ERROR_NOT_SUPPORTED`.
///
/// # Safety
/// `desc` is NULL or valid for `count` reads.
#[no_mangle]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: CUdeviceptr,
    size: usize,
    desc: *const RawAccessDesc,
    count: usize,
) -> CUresult {
    run("cuMemSetAccess", || {
        let d = ready()?;
        if desc.is_null() || count == 0 || size == 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL and valid for `count` descriptors (the caller's promise).
        let descs = unsafe { std::slice::from_raw_parts(desc, count) };
        for a in descs {
            match (a.location.type_, a.location.id) {
                (LOCATION_DEVICE, 0) => {}
                (LOCATION_DEVICE, _) => return Err(CUresult::CUDA_ERROR_INVALID_DEVICE),
                (0, _) => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
                _ => return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED),
            }
            match a.flags {
                PROT_READWRITE => {}
                0..=2 => return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED),
                _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
            }
        }
        d.dev.mem_set_access(ptr, size as u64).map_err(dev_err)?;
        let end = ptr + size as u64;
        for (_, m) in tables().maps.range_mut(ptr..end) {
            m.access = PROT_READWRITE;
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemGetAccess`: device 0's access to the mapping holding `ptr` (the host has none).
///
/// # Safety
/// `flags` is NULL or valid for a write; `location` is NULL or valid for a read.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetAccess(
    flags: *mut c_ulonglong,
    location: *const RawLocation,
    ptr: CUdeviceptr,
) -> CUresult {
    run("cuMemGetAccess", || {
        ready()?;
        if flags.is_null() || location.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let (_, m) = tables()
            .mapping(ptr)
            .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: non-NULL and valid for a read (the caller's promise).
        let loc = unsafe { location.read() };
        let access = match (loc.type_, loc.id) {
            (LOCATION_DEVICE, 0) => m.access,
            (LOCATION_DEVICE, _) => return Err(CUresult::CUDA_ERROR_INVALID_DEVICE),
            (0, _) => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
            _ => 0,
        };
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(flags, access as c_ulonglong) })
    })
}

/// `cuMemRetainAllocationHandle`: the handle mapped at `addr` (any address of a mapping), with
/// one more reference that `cuMemRelease` must drop.
///
/// # Safety
/// `handle` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(
    handle: *mut Handle,
    addr: *mut c_void,
) -> CUresult {
    run("cuMemRetainAllocationHandle", || {
        ready()?;
        if handle.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let mut t = tables();
        let (_, m) = t
            .mapping(addr as u64)
            .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        let c = t
            .handles
            .get_mut(&m.handle)
            .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        c.refs += 1;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(handle, m.handle) })
    })
}

/// `cuMemGetAllocationPropertiesFromHandle`: what `cuMemCreate` was asked for.
///
/// # Safety
/// `prop` is NULL or valid for a write of a `CUmemAllocationProp`.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationPropertiesFromHandle(
    prop: *mut RawProp,
    handle: Handle,
) -> CUresult {
    run("cuMemGetAllocationPropertiesFromHandle", || {
        ready()?;
        let c = *tables()
            .handles
            .get(&handle)
            .filter(|c| c.refs > 0)
            .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        let p = RawProp {
            type_: TYPE_PINNED,
            requested_handle_types: c.handle_types,
            location: RawLocation {
                type_: LOCATION_DEVICE,
                id: 0,
            },
            win32_handle_meta_data: std::ptr::null_mut(),
            compression_type: 0,
            gpu_direct_rdma_capable: 0,
            usage: 0,
            reserved: [0; 4],
        };
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(prop, p) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop() -> RawProp {
        RawProp {
            type_: TYPE_PINNED,
            requested_handle_types: 0,
            location: RawLocation {
                type_: LOCATION_DEVICE,
                id: 0,
            },
            win32_handle_meta_data: std::ptr::null_mut(),
            compression_type: 0,
            gpu_direct_rdma_capable: 0,
            usage: 0,
            reserved: [0; 4],
        }
    }

    #[test]
    fn pinned_memory_of_device_0_only() {
        assert_eq!(check_prop(&prop()), Ok(0));
        let with = |f: fn(&mut RawProp)| {
            let mut p = prop();
            f(&mut p);
            check_prop(&p)
        };
        assert_eq!(with(|p| p.requested_handle_types = HANDLE_POSIX_FD), Ok(1));
        use CUresult::*;
        assert_eq!(check_prop(std::ptr::null()), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(with(|p| p.type_ = 0), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(with(|p| p.type_ = 7), Err(CUDA_ERROR_NOT_SUPPORTED));
        assert_eq!(with(|p| p.location.id = 1), Err(CUDA_ERROR_INVALID_DEVICE));
        assert_eq!(
            with(|p| p.location.type_ = 2),
            Err(CUDA_ERROR_NOT_SUPPORTED)
        );
        // Fabric handles, compression, GPUDirect RDMA.
        assert_eq!(
            with(|p| p.requested_handle_types = 8),
            Err(CUDA_ERROR_NOT_SUPPORTED)
        );
        assert_eq!(
            with(|p| p.compression_type = 1),
            Err(CUDA_ERROR_NOT_SUPPORTED)
        );
        assert_eq!(
            with(|p| p.gpu_direct_rdma_capable = 1),
            Err(CUDA_ERROR_NOT_SUPPORTED)
        );
    }

    #[test]
    fn handles_live_while_referenced_or_mapped() {
        let mut t = Tables::default();
        t.handles.insert(
            5,
            Created {
                handle_types: 0,
                refs: 0,
                host_released: true,
                maps: 1,
            },
        );
        t.maps.insert(
            1 << 40,
            Mapped {
                size: 2 << 20,
                handle: 5,
                access: 0,
            },
        );
        assert_eq!(
            t.mapping((1 << 40) + (2 << 20) - 1).map(|(b, _)| b),
            Some(1 << 40)
        );
        assert!(t.mapping((1 << 40) + (2 << 20)).is_none());
        assert!(t.mapping((1 << 40) - 1).is_none());
        // Runs of adjacent mappings: two after this one, a gap, one more.
        let m = |handle| Mapped {
            size: 2 << 20,
            handle,
            access: 0,
        };
        t.maps.insert((1 << 40) + (2 << 20), m(6));
        t.maps.insert((1 << 40) + (4 << 20), m(7));
        t.maps.insert((1 << 40) + (8 << 20), m(8));
        assert_eq!(t.run((1 << 40) + (5 << 20)), Some((1 << 40, 6 << 20)));
        assert_eq!(t.run(1 << 40), Some((1 << 40, 6 << 20)));
        assert_eq!(t.run((1 << 40) + (6 << 20)), None, "the gap");
        assert_eq!(
            t.run((1 << 40) + (9 << 20)),
            Some(((1 << 40) + (8 << 20), 2 << 20))
        );
        t.collect(5);
        assert!(t.handles.contains_key(&5), "still mapped");
        t.handles.get_mut(&5).unwrap().maps = 0;
        t.collect(5);
        assert!(!t.handles.contains_key(&5));
    }
}
