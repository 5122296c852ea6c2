//! Copies and memsets beyond the synchronous basics: the stream-ordered (`Async`) forms, the
//! unified-address forms (`cuMemcpy`, direction from the pointers), copies between contexts
//! (`cuMemcpyPeer*`), 16-bit memsets.
//!
//! Host memory is the guest's: a copy to or from it goes through the staging area. An
//! asynchronous host copy therefore first waits for the stream's earlier work and then copies
//! (the bytes are in place when the call returns, which CUDA allows); device-to-device copies
//! and memsets are queued on the stream without waiting.

use std::ffi::c_void;

use super::context::{self, require_current};
use super::memory::{is_device, ready};
use super::run;
use super::stream::{enqueue, resolve, stream};
use crate::types::{CUcontext, CUdeviceptr, CUresult, CUstream};
use crate::{driver, pinned};

pub(crate) fn dev_err(e: vgpu_guest::Error) -> CUresult {
    driver::error_of(&e)
}

/// Waits for the earlier work of stream `s` before a bounce-buffered host copy. The legacy
/// stream needs no wait: the copy's own commands run on it, in order, after the waits for the
/// blocking streams that [`enqueue`] queued.
pub(crate) fn drain(s: CUstream, per_thread: bool) -> Result<(), CUresult> {
    // A capture cannot replay a copy through the bounce buffer (only page-locked memory in
    // staging stays where the graph reads and writes it).
    super::graph::refuse_if_capturing(resolve(s, per_thread)?)?;
    let id = enqueue(s, per_thread)?.id();
    if id == 0 {
        return Ok(());
    }
    stream(id)?.synchronize().map_err(dev_err)
}

/// Which way a copy between host and device memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// Host → device.
    ToDevice,
    /// Device → host.
    ToHost,
}

/// A copy between device memory `dev` and host memory `host` on stream `s`: page-locked memory
/// in staging is one DMA command queued on the stream (waited for with `wait`); other host
/// memory goes through the bounce buffer once the stream's earlier work is done, and is in
/// place when the call returns.
///
/// # Safety
/// `host` is valid for `n` bytes (reads for [`Way::ToDevice`], writes for [`Way::ToHost`]).
pub(crate) unsafe fn host_copy(
    way: Way,
    dev: CUdeviceptr,
    host: *mut c_void,
    n: usize,
    s: CUstream,
    pt: bool,
    wait: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if n == 0 {
        return Ok(CUresult::CUDA_SUCCESS);
    }
    if host.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if let Some(off) = pinned::staging_of(host as usize, n) {
        let st = enqueue(s, pt)?;
        let queued = match way {
            Way::ToDevice => st.copy_htod_staged(dev, off, n as u64),
            Way::ToHost => st.copy_dtoh_staged(dev, off, n as u64),
        };
        drop(st);
        let p = queued.map_err(dev_err)?;
        // A staging copy completes when its bytes have moved (vgpud needs that too, to know
        // when staging may be reused), so its completion is what a synchronous copy waits for.
        if wait {
            p.wait().map_err(dev_err)?;
        }
        return Ok(CUresult::CUDA_SUCCESS);
    }
    drain(s, pt)?;
    let d = ready()?;
    let moved = match way {
        Way::ToDevice => {
            // SAFETY: valid for `n` bytes of reads (the caller's promise).
            let data = unsafe { std::slice::from_raw_parts(host.cast::<u8>(), n) };
            d.dev.copy_htod(dev, data)
        }
        Way::ToHost => {
            // SAFETY: valid for `n` bytes of writes (the caller's promise), not aliased by
            // anything this call reads.
            let out = unsafe { std::slice::from_raw_parts_mut(host.cast::<u8>(), n) };
            d.dev.copy_dtoh(out, dev)
        }
    };
    moved.map_err(dev_err)?;
    Ok(CUresult::CUDA_SUCCESS)
}

/// A device-to-device copy on stream `s`; with `sync`, waited for as `cuMemcpyDtoD` is (until
/// vgpud took it).
pub(crate) fn dtod(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: CUstream,
    pt: bool,
    sync: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if n == 0 {
        return Ok(CUresult::CUDA_SUCCESS);
    }
    // The stream's ordering hold ends with this statement, before any wait.
    let p = enqueue(s, pt)?
        .copy_dtod(dst, src, n as u64)
        .map_err(dev_err)?;
    if sync {
        p.wait().map_err(dev_err)?;
    }
    Ok(CUresult::CUDA_SUCCESS)
}

fn dtod_async(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: CUstream,
    pt: bool,
) -> Result<CUresult, CUresult> {
    dtod(dst, src, n, s, pt, false)
}

macro_rules! htod_async {
    ($name:ident, $pt:expr) => {
        /// Host → device on a stream (see the module's note on host copies).
        ///
        /// # Safety
        /// `src` is valid for `n` bytes of reads.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dst: CUdeviceptr,
            src: *const c_void,
            n: usize,
            s: CUstream,
        ) -> CUresult {
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe {
                host_copy(Way::ToDevice, dst, src.cast_mut(), n, s, $pt, false)
            })
        }
    };
}
htod_async!(cuMemcpyHtoDAsync_v2, false);
htod_async!(cuMemcpyHtoDAsync_v2_ptsz, true);

macro_rules! dtoh_async {
    ($name:ident, $pt:expr) => {
        /// Device → host on a stream (see the module's note on host copies).
        ///
        /// # Safety
        /// `dst` is valid for `n` bytes of writes.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dst: *mut c_void,
            src: CUdeviceptr,
            n: usize,
            s: CUstream,
        ) -> CUresult {
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe {
                host_copy(Way::ToHost, src, dst, n, s, $pt, false)
            })
        }
    };
}
dtoh_async!(cuMemcpyDtoHAsync_v2, false);
dtoh_async!(cuMemcpyDtoHAsync_v2_ptsz, true);

/// `cuMemcpyHtoD_v2_ptds`: on the per-thread default stream, returns once the bytes are on
/// the device.
///
/// # Safety
/// `src` is valid for `n` bytes of reads.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2_ptds(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    run("cuMemcpyHtoD_v2_ptds", || {
        // SAFETY: forwarded from the caller.
        unsafe {
            host_copy(
                Way::ToDevice,
                dst,
                src.cast_mut(),
                n,
                std::ptr::null_mut(),
                true,
                true,
            )
        }
    })
}

/// `cuMemcpyDtoH_v2_ptds`: on the per-thread default stream.
///
/// # Safety
/// `dst` is valid for `n` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2_ptds(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
) -> CUresult {
    run("cuMemcpyDtoH_v2_ptds", || {
        // SAFETY: forwarded from the caller.
        unsafe { host_copy(Way::ToHost, src, dst, n, std::ptr::null_mut(), true, true) }
    })
}

/// `cuMemcpyDtoD_v2_ptds`: on the per-thread default stream, waited for as `cuMemcpyDtoD_v2`
/// is (until vgpud took it).
#[no_mangle]
pub extern "C" fn cuMemcpyDtoD_v2_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    run("cuMemcpyDtoD_v2_ptds", || {
        dtod(dst, src, n, std::ptr::null_mut(), true, true)
    })
}

/// `cuMemcpyDtoDAsync_v2`.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: CUstream,
) -> CUresult {
    run("cuMemcpyDtoDAsync_v2", || dtod_async(dst, src, n, s, false))
}

/// `cuMemcpyDtoDAsync_v2_ptsz`.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoDAsync_v2_ptsz(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: CUstream,
) -> CUresult {
    run("cuMemcpyDtoDAsync_v2_ptsz", || {
        dtod_async(dst, src, n, s, true)
    })
}

/// A copy between the device memory of two contexts. Every context of the process runs on
/// the VM's one context in vgpud, so it is a device-to-device copy on stream `s`; with `sync`,
/// waited for as `cuMemcpyDtoD` is (until vgpud took it).
#[allow(clippy::too_many_arguments)]
fn peer(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    n: usize,
    s: CUstream,
    pt: bool,
    sync: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if context::resolve(dst_ctx).is_none() || context::resolve(src_ctx).is_none() {
        return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
    }
    dtod(dst, src, n, s, pt, sync)
}

/// `cuMemcpyPeer`.
#[no_mangle]
pub extern "C" fn cuMemcpyPeer(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    n: usize,
) -> CUresult {
    run("cuMemcpyPeer", || {
        peer(
            dst,
            dst_ctx,
            src,
            src_ctx,
            n,
            std::ptr::null_mut(),
            false,
            true,
        )
    })
}

/// `cuMemcpyPeer_ptds`.
#[no_mangle]
pub extern "C" fn cuMemcpyPeer_ptds(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    n: usize,
) -> CUresult {
    run("cuMemcpyPeer_ptds", || {
        peer(
            dst,
            dst_ctx,
            src,
            src_ctx,
            n,
            std::ptr::null_mut(),
            true,
            true,
        )
    })
}

/// `cuMemcpyPeerAsync`.
#[no_mangle]
pub extern "C" fn cuMemcpyPeerAsync(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    n: usize,
    s: CUstream,
) -> CUresult {
    run("cuMemcpyPeerAsync", || {
        peer(dst, dst_ctx, src, src_ctx, n, s, false, false)
    })
}

/// `cuMemcpyPeerAsync_ptsz`.
#[no_mangle]
pub extern "C" fn cuMemcpyPeerAsync_ptsz(
    dst: CUdeviceptr,
    dst_ctx: CUcontext,
    src: CUdeviceptr,
    src_ctx: CUcontext,
    n: usize,
    s: CUstream,
) -> CUresult {
    run("cuMemcpyPeerAsync_ptsz", || {
        peer(dst, dst_ctx, src, src_ctx, n, s, true, false)
    })
}

/// A unified-address copy: the direction follows from which pointers are device memory
/// (allocations of this process); host-to-host copies are plain memory copies.
///
/// # Safety
/// Host pointers are valid for `n` bytes (reads of `src`, writes of `dst`).
unsafe fn unified(
    dst: u64,
    src: u64,
    n: usize,
    s: Option<(CUstream, bool)>,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if n == 0 {
        return Ok(CUresult::CUDA_SUCCESS);
    }
    match (is_device(dst), is_device(src)) {
        (true, true) => match s {
            Some((s, pt)) => dtod_async(dst, src, n, s, pt),
            None => {
                // On the legacy stream, waited for.
                let st = enqueue(std::ptr::null_mut(), false)?;
                let p = st.copy_dtod(dst, src, n as u64).map_err(dev_err)?;
                drop(st);
                p.wait().map_err(dev_err)?;
                Ok(CUresult::CUDA_SUCCESS)
            }
        },
        (dev_dst, dev_src) => {
            let (st, pt, wait) = match s {
                Some((st, pt)) => (st, pt, false),
                None => (std::ptr::null_mut(), false, true),
            };
            if dev_dst {
                // SAFETY: `src` is host memory valid for n bytes (the caller's promise).
                unsafe { host_copy(Way::ToDevice, dst, src as *mut c_void, n, st, pt, wait) }
            } else if dev_src {
                // SAFETY: `dst` is host memory valid for n bytes (the caller's promise).
                unsafe { host_copy(Way::ToHost, src, dst as *mut c_void, n, st, pt, wait) }
            } else {
                if let Some((st, pt)) = s {
                    drain(st, pt)?;
                }
                if dst == 0 || src == 0 {
                    return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
                }
                // SAFETY: both host memory valid for n bytes; `copy` allows overlap.
                unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
                Ok(CUresult::CUDA_SUCCESS)
            }
        }
    }
}

/// `cuMemcpy`.
///
/// # Safety
/// Host pointers are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuMemcpy", || unsafe { unified(dst, src, n, None) })
}

/// `cuMemcpy_ptds`.
///
/// # Safety
/// Host pointers are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    // SAFETY: forwarded from the caller; the per-thread stream orders it.
    run("cuMemcpy_ptds", || unsafe {
        unified(dst, src, n, Some((std::ptr::null_mut(), true)))
    })
}

/// `cuMemcpyAsync`.
///
/// # Safety
/// Host pointers are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: CUstream,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuMemcpyAsync", || unsafe {
        unified(dst, src, n, Some((s, false)))
    })
}

/// `cuMemcpyAsync_ptsz`.
///
/// # Safety
/// Host pointers are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyAsync_ptsz(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: CUstream,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuMemcpyAsync_ptsz", || unsafe {
        unified(dst, src, n, Some((s, true)))
    })
}

/// `count` elements of `width` bytes (1 or 4) at `dst`, all `value`, queued on stream `s`.
pub(crate) fn memset_on(
    dst: CUdeviceptr,
    value: u32,
    width: u64,
    count: usize,
    s: CUstream,
    pt: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if !dst.is_multiple_of(width) {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if count == 0 {
        return Ok(CUresult::CUDA_SUCCESS);
    }
    let st = enqueue(s, pt)?;
    let queued = if width == 4 {
        st.memset_d32(dst, value, count as u64)
    } else {
        st.memset_d8(dst, value as u8, count as u64)
    };
    drop(queued.map_err(dev_err)?);
    Ok(CUresult::CUDA_SUCCESS)
}

fn memset8_async(
    dst: CUdeviceptr,
    v: u8,
    n: usize,
    s: CUstream,
    pt: bool,
) -> Result<CUresult, CUresult> {
    memset_on(dst, u32::from(v), 1, n, s, pt)
}

fn memset32_async(
    dst: CUdeviceptr,
    v: u32,
    n: usize,
    s: CUstream,
    pt: bool,
) -> Result<CUresult, CUresult> {
    memset_on(dst, v, 4, n, s, pt)
}

/// 16-bit fills have no device command: equal bytes are a byte fill, an even count on a
/// 4-byte boundary a 32-bit fill, anything else a copy of the pattern from the host.
pub(crate) fn memset16(
    dst: CUdeviceptr,
    v: u16,
    n: usize,
    s: CUstream,
    pt: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if !dst.is_multiple_of(2) {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let [lo, hi] = v.to_le_bytes();
    if lo == hi {
        return memset8_async(dst, lo, n * 2, s, pt);
    }
    if dst.is_multiple_of(4) && n.is_multiple_of(2) {
        let w = u32::from(v) | (u32::from(v) << 16);
        return memset32_async(dst, w, n / 2, s, pt);
    }
    let mut pattern: Vec<u8> = std::iter::repeat_n([lo, hi], n).flatten().collect();
    let len = pattern.len();
    // SAFETY: `pattern` holds exactly `len` bytes and is not page-locked memory.
    unsafe {
        host_copy(
            Way::ToDevice,
            dst,
            pattern.as_mut_ptr().cast::<c_void>(),
            len,
            s,
            pt,
            true,
        )
    }
}

macro_rules! memset_entry {
    ($name:ident, $t:ty, $f:ident, $pt:expr) => {
        /// A memset on a stream.
        #[no_mangle]
        pub extern "C" fn $name(dst: CUdeviceptr, v: $t, n: usize, s: CUstream) -> CUresult {
            run(stringify!($name), || $f(dst, v, n, s, $pt))
        }
    };
    ($name:ident, $t:ty, $f:ident, sync $pt:expr) => {
        /// A memset ordered like a synchronous call.
        #[no_mangle]
        pub extern "C" fn $name(dst: CUdeviceptr, v: $t, n: usize) -> CUresult {
            run(stringify!($name), || {
                $f(dst, v, n, std::ptr::null_mut(), $pt)?;
                stream(resolve(std::ptr::null_mut(), $pt)?)?
                    .synchronize()
                    .map_err(dev_err)?;
                Ok(CUresult::CUDA_SUCCESS)
            })
        }
    };
}
memset_entry!(cuMemsetD8Async, u8, memset8_async, false);
memset_entry!(cuMemsetD8Async_ptsz, u8, memset8_async, true);
memset_entry!(cuMemsetD16Async, u16, memset16, false);
memset_entry!(cuMemsetD16Async_ptsz, u16, memset16, true);
memset_entry!(cuMemsetD32Async, u32, memset32_async, false);
memset_entry!(cuMemsetD32Async_ptsz, u32, memset32_async, true);
memset_entry!(cuMemsetD16_v2, u16, memset16, sync false);
memset_entry!(cuMemsetD8_v2_ptds, u8, memset8_async, sync true);
memset_entry!(cuMemsetD16_v2_ptds, u16, memset16, sync true);
memset_entry!(cuMemsetD32_v2_ptds, u32, memset32_async, sync true);
