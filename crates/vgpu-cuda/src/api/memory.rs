//! Device memory: allocation at the real device addresses of the VM's context, synchronous
//! copies and memsets. Host memory on the guest's side of a copy is pageable memory, moved
//! through the staging area.

use std::collections::BTreeMap;
use std::ffi::{c_uint, c_void};
use std::sync::Mutex;

use super::context::require_current;
use super::copy::{host_copy, Way};
use super::stream::{enqueue, Queued};
use super::{put, run};
use crate::driver::{self, Driver};
use crate::types::{CUdeviceptr, CUresult};

/// Device allocations of this process: base → size.
static ALLOCATIONS: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

/// Module globals looked up: address → size. Device memory too, for unified addressing, but
/// not the program's to free.
static GLOBALS: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

fn holding(map: &Mutex<BTreeMap<u64, u64>>, p: u64) -> Option<(u64, u64)> {
    let a = map.lock().unwrap_or_else(|e| e.into_inner());
    a.range(..=p)
        .next_back()
        .map(|(&b, &s)| (b, s))
        .filter(|&(b, s)| p - b < s)
}

/// The allocation (or module global, mapped staging area, or mapping of reserved addresses)
/// holding `p`: (base, size).
pub fn allocation_of(p: u64) -> Option<(u64, u64)> {
    holding(&ALLOCATIONS, p)
        .or_else(|| holding(&GLOBALS, p))
        .or_else(|| mapped_staging_holding(p))
        .or_else(|| super::vmm::mapping_of(p))
}

/// The mapped staging area (page-locked host memory seen at its device address, ABI 1.6) when
/// it holds `p`: copies and memsets through that address are device memory operations. Not
/// for a pointer this process's page-locked memory hands out, where it is mapped at its device
/// address ([`crate::pinned`]): that is host memory to copies, as page-locked memory is to
/// NVIDIA's driver.
fn mapped_staging_holding(p: u64) -> Option<(u64, u64)> {
    let (base, size) = driver::get().ok()?.mapped_staging()?;
    if p < base || p - base >= size {
        return None;
    }
    let host = usize::try_from(p).ok();
    (host.and_then(|h| crate::pinned::staging_of(h, 1)).is_none()).then_some((base, size))
}

/// How far device memory from `p` reaches, `(start, size)`: the allocation, module global or
/// mapped staging area holding it, or the run of adjacent mappings around it (a 2D copy or
/// memset may cross mappings, as on NVIDIA's driver).
pub fn extent_of(p: u64) -> Option<(u64, u64)> {
    holding(&ALLOCATIONS, p)
        .or_else(|| holding(&GLOBALS, p))
        .or_else(|| mapped_staging_holding(p))
        .or_else(|| super::vmm::mapped_run_of(p))
}

/// Records a module global's device memory.
pub(crate) fn add_global(p: u64, size: u64) {
    GLOBALS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(p, size);
}

/// Forgets a module global (its module was unloaded).
pub(crate) fn remove_global(p: u64) {
    GLOBALS.lock().unwrap_or_else(|e| e.into_inner()).remove(&p);
}

/// Whether `p` is device memory this process allocated.
pub fn is_device(p: u64) -> bool {
    allocation_of(p).is_some()
}

/// The driver, when the calling thread has a context.
pub(crate) fn ready() -> Result<&'static Driver, CUresult> {
    require_current()?;
    driver::get()
}

fn dev_err(e: vgpu_guest::Error) -> CUresult {
    driver::error_of(&e)
}

/// Allocates `bytes` (> 0) of device memory and records the allocation. When the VM's memory
/// is full, the blocks memory pools keep for reuse go back to vgpud first and the allocation
/// is tried once more (NVIDIA's pools give unused memory back at each synchronisation; these
/// keep it until it is needed).
pub(crate) fn alloc(d: &Driver, bytes: u64) -> Result<u64, CUresult> {
    let p = match d.dev.alloc(bytes).map_err(dev_err) {
        Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY) if super::mempool::release_idle(d) => {
            d.dev.alloc(bytes).map_err(dev_err)?
        }
        r => r?,
    };
    ALLOCATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(p, bytes);
    Ok(p)
}

/// The legacy default stream, where the synchronous calls run, ready for work (after the
/// blocking streams' earlier work).
fn legacy_stream() -> Result<Queued, CUresult> {
    enqueue(std::ptr::null_mut(), false)
}

/// `cuMemAlloc_v2`. A zero-byte request is `CUDA_ERROR_INVALID_VALUE`, as NVIDIA's is.
///
/// # Safety
/// `dptr` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    run("cuMemAlloc_v2", || {
        let d = ready()?;
        super::graph::unsafe_call()?;
        if dptr.is_null() || bytes == 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let p = alloc(d, bytes as u64)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(dptr, p) })
    })
}

/// Rows of a pitched allocation start at multiples of this many bytes: the texture alignment
/// (`CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT`, 512 on the GPUs vgpu serves), which also meets
/// the texture pitch alignment NVIDIA's driver promises for these pitches.
const PITCH_ALIGN: u64 = 512;

/// The pitch of a pitched allocation of rows of `width` bytes of `elem`-byte elements
/// (4, 8 or 16, as NVIDIA's driver requires): `width` rounded up to [`PITCH_ALIGN`]; `None`
/// for an invalid request.
pub fn pitch_for(width: u64, height: u64, elem: u32) -> Option<u64> {
    if width == 0 || height == 0 || !matches!(elem, 4 | 8 | 16) {
        return None;
    }
    let pitch = width.checked_next_multiple_of(PITCH_ALIGN)?;
    pitch.checked_mul(height)?;
    Some(pitch)
}

/// `cuMemAllocPitch_v2`: `height` rows of `width` bytes, `pitch` bytes apart (a multiple of
/// 512).
///
/// # Safety
/// `dptr` and `pitch` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    run("cuMemAllocPitch_v2", || {
        let d = ready()?;
        if dptr.is_null() || pitch.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let p = pitch_for(width as u64, height as u64, elem)
            .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        let ptr = alloc(d, p * height as u64)?;
        // SAFETY: both non-NULL and valid for writes (the caller's promise).
        unsafe {
            dptr.write(ptr);
            pitch.write(p as usize);
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemFree_v2`. Freeing NULL succeeds.
#[no_mangle]
pub extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    run("cuMemFree_v2", || {
        let d = ready()?;
        super::graph::unsafe_call()?;
        if dptr == 0 {
            return Ok(CUresult::CUDA_SUCCESS);
        }
        match super::mempool::take_for_free(dptr) {
            // Freed to its pool already.
            super::mempool::Owner::Idle => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
            super::mempool::Owner::Taken | super::mempool::Owner::None => release(d, dptr)?,
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// Frees allocation `p` (vgpud waits for the VM's work on the device first) and forgets it.
pub(crate) fn release(d: &Driver, p: u64) -> Result<(), CUresult> {
    d.dev.free(p).map_err(dev_err)?;
    ALLOCATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&p);
    Ok(())
}

/// Whether `p` is the start of an allocation of `cuMemAlloc` (or a pool's).
pub(crate) fn allocation_base(p: u64) -> bool {
    ALLOCATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&p)
}

/// `cuMemGetInfo_v2`: free and total memory of the VM's quota.
///
/// # Safety
/// `free` and `total` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    run("cuMemGetInfo_v2", || {
        let d = ready()?;
        if free.is_null() || total.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // vgpud's GET_INFO answers the VM's memory in use and its quota (docs/abi.md); what
        // is free is the rest of the quota.
        let (used, quota) = d.dev.mem_info().map_err(dev_err)?;
        let t = quota.min(d.info.total_mem);
        // SAFETY: both non-NULL and valid for writes (the caller's promise).
        unsafe {
            free.write(t.saturating_sub(used) as usize);
            total.write(t as usize);
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemcpyHtoD_v2`: returns once the bytes are on the device.
///
/// # Safety
/// `src` is valid for `bytes` bytes of reads.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
) -> CUresult {
    run("cuMemcpyHtoD_v2", || {
        // SAFETY: forwarded from the caller; the legacy stream, waited for.
        unsafe {
            host_copy(
                Way::ToDevice,
                dst,
                src.cast_mut(),
                bytes,
                std::ptr::null_mut(),
                false,
                true,
            )
        }
    })
}

/// `cuMemcpyDtoH_v2`.
///
/// # Safety
/// `dst` is valid for `bytes` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
) -> CUresult {
    run("cuMemcpyDtoH_v2", || {
        // SAFETY: forwarded from the caller; the legacy stream, waited for.
        unsafe {
            host_copy(
                Way::ToHost,
                src,
                dst,
                bytes,
                std::ptr::null_mut(),
                false,
                true,
            )
        }
    })
}

/// `cuMemcpyDtoD_v2`: ordered after earlier work, like NVIDIA's (it runs on the legacy
/// stream, after the blocking streams' earlier work); returns once vgpud answered it.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> CUresult {
    run("cuMemcpyDtoD_v2", || {
        super::copy::dtod(dst, src, bytes, std::ptr::null_mut(), false, true)
    })
}

/// `cuMemsetD8_v2`.
#[no_mangle]
pub extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: u8, count: usize) -> CUresult {
    run("cuMemsetD8_v2", || {
        ready()?;
        if count == 0 {
            return Ok(CUresult::CUDA_SUCCESS);
        }
        let st = legacy_stream()?;
        let p = st.memset_d8(dst, value, count as u64).map_err(dev_err)?;
        drop(st);
        p.wait().map_err(dev_err)?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemsetD32_v2`: `dst` must be 4-byte aligned.
#[no_mangle]
pub extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, value: c_uint, count: usize) -> CUresult {
    run("cuMemsetD32_v2", || {
        ready()?;
        if !dst.is_multiple_of(4) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        if count == 0 {
            return Ok(CUresult::CUDA_SUCCESS);
        }
        let st = legacy_stream()?;
        let p = st.memset_d32(dst, value, count as u64).map_err(dev_err)?;
        drop(st);
        p.wait().map_err(dev_err)?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemGetAddressRange_v2`: the allocation holding `dptr`.
///
/// # Safety
/// `base` and `size` are NULL (not wanted) or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetAddressRange_v2(
    base: *mut CUdeviceptr,
    size: *mut usize,
    dptr: CUdeviceptr,
) -> CUresult {
    run("cuMemGetAddressRange_v2", || {
        ready()?;
        let (b, s) = allocation_of(dptr).ok_or(CUresult::CUDA_ERROR_NOT_FOUND)?;
        // SAFETY: each is NULL or valid for a write (the caller's promise).
        unsafe {
            if !base.is_null() {
                base.write(b);
            }
            if !size.is_null() {
                size.write(s as usize);
            }
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pitches_are_widths_rounded_up_to_512_bytes() {
        assert_eq!(pitch_for(1, 1, 4), Some(512));
        assert_eq!(pitch_for(512, 7, 8), Some(512));
        assert_eq!(pitch_for(513, 7, 16), Some(1024));
        assert_eq!(pitch_for(4000, 1000, 4), Some(4096));
    }

    #[test]
    fn invalid_pitched_requests_have_no_pitch() {
        assert_eq!(pitch_for(0, 4, 4), None, "no width");
        assert_eq!(pitch_for(4, 0, 4), None, "no rows");
        for elem in [0, 1, 2, 3, 12, 32] {
            assert_eq!(pitch_for(64, 4, elem), None, "element size {elem}");
        }
        assert_eq!(pitch_for(u64::MAX - 5, 1, 4), None, "the pitch overflows");
        assert_eq!(pitch_for(1 << 40, 1 << 40, 4), None, "the size overflows");
    }
}
