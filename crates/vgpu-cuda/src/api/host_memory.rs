//! Page-locked ("pinned") host memory and pointer attributes.
//!
//! `cuMemHostAlloc` / `cuMemAllocHost` carve page-locked memory out of BAR2's staging area
//! ([`crate::pinned`]): vgpud registered it with CUDA, so a copy between it and the device is
//! one DMA command queued on the stream. When that area is full (or the BAR is too small to
//! have one) the allocation is ordinary page-aligned guest memory, which copies move through
//! the bounce buffer. Where vgpud maps the staging area into the VM's context (the cuda
//! backend, ABI 1.6), page-locked memory from staging is also mapped memory:
//! `cuMemHostGetDevicePointer` answers its device address, where kernels read and write it
//! directly (zero-copy); the guest-memory fallback and registered program memory are not.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;

use super::context::{current, require_current};
use super::memory::allocation_of;
use super::run;
use crate::pinned;
use crate::types::{CUdeviceptr, CUresult};

/// Page size of host allocations.
const PAGE: usize = 4096;
/// `CU_MEMHOSTALLOC_*` flags (portable, devicemap, write-combined).
const ALLOC_FLAGS: u32 = 0x7;
/// `CU_MEMHOSTREGISTER_*` flags (portable, devicemap, iomemory, read-only).
const REGISTER_FLAGS: u32 = 0xf;

/// Who owns a range of host memory the driver knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Page-locked memory in BAR2's staging area.
    Staging,
    /// Page-aligned guest memory the driver allocated.
    Heap,
    /// The program's own memory, registered.
    Registered,
}

/// One range of host memory the driver knows.
#[derive(Debug, Clone, Copy)]
struct HostRange {
    size: usize,
    flags: u32,
    owner: Owner,
}

static HOST: Mutex<BTreeMap<usize, HostRange>> = Mutex::new(BTreeMap::new());

fn host_range_of(p: usize) -> Option<(usize, HostRange)> {
    let h = HOST.lock().unwrap_or_else(|e| e.into_inner());
    h.range(..=p)
        .next_back()
        .map(|(&b, &r)| (b, r))
        .filter(|&(b, r)| p - b < r.size.max(1))
}

/// # Safety
/// `pp` is NULL or valid for a write.
unsafe fn host_alloc(pp: *mut *mut c_void, size: usize, flags: u32) -> Result<CUresult, CUresult> {
    require_current()?;
    if pp.is_null() || flags & !ALLOC_FLAGS != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if size == 0 {
        // SAFETY: non-NULL and valid for a write (the caller's promise).
        unsafe { pp.write(std::ptr::null_mut()) };
        return Ok(CUresult::CUDA_SUCCESS);
    }
    let (p, owner) = match pinned::with_heap(|h| h.alloc(size as u64)).flatten() {
        Some(addr) => (addr as *mut u8, Owner::Staging),
        None => {
            let layout = Layout::from_size_align(size, PAGE)
                .map_err(|_| CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            if p.is_null() {
                return Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY);
            }
            (p, Owner::Heap)
        }
    };
    HOST.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(p as usize, HostRange { size, flags, owner });
    // SAFETY: non-NULL and valid for a write (the caller's promise).
    unsafe { pp.write(p.cast()) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuMemHostAlloc`.
///
/// # Safety
/// `pp` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    size: usize,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuMemHostAlloc", || unsafe { host_alloc(pp, size, flags) })
}

/// `cuMemAllocHost_v2`.
///
/// # Safety
/// `pp` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuMemAllocHost_v2", || unsafe { host_alloc(pp, size, 0) })
}

/// `cuMemFreeHost`: only what `cuMemHostAlloc` returned.
#[no_mangle]
pub extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    run("cuMemFreeHost", || {
        let mut h = HOST.lock().unwrap_or_else(|e| e.into_inner());
        match h.get(&(p as usize)).copied() {
            Some(r) if r.owner == Owner::Staging => {
                h.remove(&(p as usize));
                pinned::with_heap(|heap| heap.free(p as usize));
                Ok(CUresult::CUDA_SUCCESS)
            }
            Some(r) if r.owner == Owner::Heap => {
                let layout = Layout::from_size_align(r.size, PAGE)
                    .map_err(|_| CUresult::CUDA_ERROR_INVALID_VALUE)?;
                h.remove(&(p as usize));
                // SAFETY: allocated by `host_alloc` with this very layout, freed once (it was
                // just removed from the table).
                unsafe { std::alloc::dealloc(p.cast(), layout) };
                Ok(CUresult::CUDA_SUCCESS)
            }
            _ => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        }
    })
}

/// `cuMemHostGetFlags`.
///
/// # Safety
/// `flags` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetFlags(flags: *mut c_uint, p: *mut c_void) -> CUresult {
    run("cuMemHostGetFlags", || {
        let (_, r) = host_range_of(p as usize).ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { super::put(flags, r.flags) })
    })
}

/// `cuMemHostRegister_v2`: recorded (the memory is the guest's and is copied through
/// staging); `CU_MEMHOSTREGISTER_DEVICEMAP` is honoured as far as `cuMemHostGetDevicePointer`
/// goes (not at all, see the module note) and IOMEMORY is refused.
#[no_mangle]
pub extern "C" fn cuMemHostRegister_v2(p: *mut c_void, size: usize, flags: c_uint) -> CUresult {
    run("cuMemHostRegister_v2", || {
        require_current()?;
        if p.is_null() || size == 0 || flags & !REGISTER_FLAGS != 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        if flags & 0x4 != 0 {
            return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
        }
        let mut h = HOST.lock().unwrap_or_else(|e| e.into_inner());
        let start = p as usize;
        let overlaps = h
            .range(..start + size)
            .next_back()
            .is_some_and(|(&b, r)| b + r.size > start);
        if overlaps {
            return Err(CUresult::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
        }
        h.insert(
            start,
            HostRange {
                size,
                flags,
                owner: Owner::Registered,
            },
        );
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemHostUnregister`.
#[no_mangle]
pub extern "C" fn cuMemHostUnregister(p: *mut c_void) -> CUresult {
    run("cuMemHostUnregister", || {
        let mut h = HOST.lock().unwrap_or_else(|e| e.into_inner());
        match h.get(&(p as usize)) {
            Some(r) if r.owner == Owner::Registered => {
                h.remove(&(p as usize));
                Ok(CUresult::CUDA_SUCCESS)
            }
            _ => Err(CUresult::CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED),
        }
    })
}

/// The device address of page-locked host memory at `p`: staging memory that vgpud maps into
/// the VM's context. Guest memory the device cannot reach answers NOT_SUPPORTED; memory this
/// driver does not know, INVALID_VALUE.
fn device_pointer(p: usize) -> Result<u64, CUresult> {
    match host_range_of(p) {
        None => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        Some((_, r)) if r.owner != Owner::Staging => Err(crate::unsupported::report_owned(
            "cuMemHostGetDevicePointer of host memory outside the staging area".into(),
        )),
        Some(_) => pinned::device_address_of(p, 1).ok_or_else(|| {
            crate::unsupported::report_owned(
                "cuMemHostGetDevicePointer (vgpud does not map staging into this device)".into(),
            )
        }),
    }
}

/// # Safety
/// `pdptr` is NULL or valid for a write.
unsafe fn host_get_device_pointer(
    pdptr: *mut CUdeviceptr,
    p: *mut c_void,
    flags: c_uint,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if pdptr.is_null() || flags != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let d = device_pointer(p as usize)?;
    // SAFETY: non-NULL, valid for a write (the caller's promise).
    Ok(unsafe { super::put(pdptr, d) })
}

/// `cuMemHostGetDevicePointer_v2`: the device address of page-locked memory (see the module
/// documentation).
///
/// # Safety
/// `pdptr` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer_v2(
    pdptr: *mut CUdeviceptr,
    p: *mut c_void,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuMemHostGetDevicePointer_v2", || unsafe {
        host_get_device_pointer(pdptr, p, flags)
    })
}

/// `cuMemHostGetDevicePointer` (the pre-3.2 name).
///
/// # Safety
/// `pdptr` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer(
    pdptr: *mut CUdeviceptr,
    p: *mut c_void,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuMemHostGetDevicePointer", || unsafe {
        host_get_device_pointer(pdptr, p, flags)
    })
}

/// `CU_POINTER_ATTRIBUTE_*` numbers answered.
mod attr {
    pub const CONTEXT: i32 = 1;
    pub const MEMORY_TYPE: i32 = 2;
    pub const DEVICE_POINTER: i32 = 3;
    pub const HOST_POINTER: i32 = 4;
    pub const SYNC_MEMOPS: i32 = 6;
    pub const BUFFER_ID: i32 = 7;
    pub const IS_MANAGED: i32 = 8;
    pub const DEVICE_ORDINAL: i32 = 9;
    pub const IS_LEGACY_CUDA_IPC_CAPABLE: i32 = 10;
    pub const RANGE_START_ADDR: i32 = 11;
    pub const RANGE_SIZE: i32 = 12;
    pub const MAPPED: i32 = 13;
}

/// What is known of a pointer.
enum Class {
    Device { base: u64, size: u64 },
    Host { base: usize, size: usize },
    Unknown,
}

fn classify(p: u64) -> Class {
    // Page-locked memory first: where it is mapped at its device address, its pointers are
    // also inside the mapped staging area, device memory for copies, but host memory here.
    if let Some((base, r)) = host_range_of(p as usize) {
        return Class::Host { base, size: r.size };
    }
    if let Some((base, size)) = allocation_of(p) {
        return Class::Device { base, size };
    }
    Class::Unknown
}

/// Writes attribute `a` of `p` to `data`. `Ok(false)` for a pointer the driver does not know
/// (pageable host memory, or nothing).
///
/// # Safety
/// `data` is valid for a write of the attribute's type (at most 8 bytes).
unsafe fn write_attr(a: i32, p: u64, data: *mut c_void) -> Result<bool, CUresult> {
    let class = classify(p);
    // SAFETY: `data` is valid for the attribute's type (the caller's promise); each
    // attribute is written with its own C type.
    unsafe {
        match (a, &class) {
            (_, Class::Unknown) => return Ok(false),
            (attr::CONTEXT, _) => data.cast::<*mut c_void>().write(current().cast()),
            (attr::MEMORY_TYPE, Class::Device { .. }) => data.cast::<c_uint>().write(2),
            (attr::MEMORY_TYPE, Class::Host { .. }) => data.cast::<c_uint>().write(1),
            (attr::DEVICE_POINTER, Class::Device { .. }) => data.cast::<u64>().write(p),
            (attr::DEVICE_POINTER, Class::Host { .. }) => match device_pointer(p as usize) {
                Ok(d) => data.cast::<u64>().write(d),
                Err(e) => return Err(e),
            },
            (attr::HOST_POINTER, Class::Host { .. }) => data.cast::<u64>().write(p),
            (attr::HOST_POINTER, Class::Device { .. }) => {
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE)
            }
            (attr::SYNC_MEMOPS | attr::IS_MANAGED | attr::IS_LEGACY_CUDA_IPC_CAPABLE, _) => {
                data.cast::<c_int>().write(0)
            }
            (attr::BUFFER_ID, Class::Device { base, .. }) => data.cast::<u64>().write(*base),
            (attr::BUFFER_ID, Class::Host { base, .. }) => data.cast::<u64>().write(*base as u64),
            (attr::DEVICE_ORDINAL, _) => data.cast::<c_int>().write(0),
            (attr::RANGE_START_ADDR, Class::Device { base, .. }) => data.cast::<u64>().write(*base),
            (attr::RANGE_START_ADDR, Class::Host { base, .. }) => {
                data.cast::<u64>().write(*base as u64)
            }
            (attr::RANGE_SIZE, Class::Device { size, .. }) => {
                data.cast::<usize>().write(*size as usize)
            }
            (attr::RANGE_SIZE, Class::Host { size, .. }) => data.cast::<usize>().write(*size),
            (attr::MAPPED, _) => data.cast::<c_int>().write(1),
            _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        }
    }
    Ok(true)
}

/// `cuPointerGetAttribute`: `CUDA_ERROR_INVALID_VALUE` for a pointer the driver does not know,
/// as NVIDIA's answers for pageable host memory.
///
/// # Safety
/// `data` is valid for a write of the attribute's type.
#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttribute(
    data: *mut c_void,
    attribute: c_int,
    p: CUdeviceptr,
) -> CUresult {
    run("cuPointerGetAttribute", || {
        // No current context needed: NVIDIA's answers any thread (XLA asks from its transfer
        // threads).
        crate::driver::get()?;
        if data.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: forwarded from the caller.
        match unsafe { write_attr(attribute, p, data) }? {
            true => Ok(CUresult::CUDA_SUCCESS),
            false => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        }
    })
}

/// `cuPointerGetAttributes`: for a pointer the driver does not know, success with memory type
/// 0 ("unregistered") and zeroed values, as NVIDIA's answers (what PyTorch's pinned-memory
/// check relies on).
///
/// # Safety
/// `attrs` holds `n` attributes and `data` `n` pointers, each valid for its attribute's type.
#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttributes(
    n: c_uint,
    attrs: *const c_int,
    data: *mut *mut c_void,
    p: CUdeviceptr,
) -> CUresult {
    run("cuPointerGetAttributes", || {
        // As cuPointerGetAttribute: any thread.
        crate::driver::get()?;
        if n > 0 && (attrs.is_null() || data.is_null()) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        for i in 0..n as usize {
            // SAFETY: `attrs` and `data` hold `n` entries (the caller's promise).
            let (a, d) = unsafe { (*attrs.add(i), *data.add(i)) };
            if d.is_null() {
                continue;
            }
            // SAFETY: `d` is valid for the attribute's type (the caller's promise). An
            // attribute the pointer lacks (the host address of device memory) reads as zero
            // instead of failing the whole query, as NVIDIA's does.
            if !unsafe { write_attr(a, p, d) }.unwrap_or(false) {
                // SAFETY: as above; every attribute's type is at most 8 bytes.
                unsafe {
                    match a {
                        attr::CONTEXT
                        | attr::DEVICE_POINTER
                        | attr::HOST_POINTER
                        | attr::BUFFER_ID
                        | attr::RANGE_START_ADDR
                        | attr::RANGE_SIZE => d.cast::<u64>().write(0),
                        attr::DEVICE_ORDINAL => d.cast::<c_int>().write(-2),
                        _ => d.cast::<c_uint>().write(0),
                    }
                }
            }
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}
