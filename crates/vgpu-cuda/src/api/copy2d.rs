//! 2D and 3D copies (`cuMemcpy2D*`, `cuMemcpy3D*`) between host and device memory. CUDA
//! arrays are not offered: a copy to or from one answers `CUDA_ERROR_NOT_SUPPORTED`.
//!
//! vgpud has no strided command, so a copy is the runs of bytes that are contiguous on both
//! sides ([`crate::rows`]), one command each: a copy between packed layouts is one command,
//! a pitched one a command per row, all queued on the stream without a round trip each.
//!
//! Host memory on one side: page-locked memory (in staging) is moved by staging copies straight
//! from or into its rows. Other host memory of more than one run is packed into a bounce
//! buffer taken from the page-locked heap (two halves, one filled while the other's commands
//! run) and moved from there; a single run goes the way of a 1D copy. Either way a copy of
//! such memory is complete when the call returns, as for 1D copies.

use std::collections::VecDeque;
use std::ffi::c_void;

use vgpu_guest::{Pending, Stream};

use super::context::require_current;
use super::copy::{dev_err, drain, host_copy, Way};
use super::memory::extent_of;
use super::run;
use super::stream::enqueue;
use crate::rows::{runs, Extent, Pitch, Run};
use crate::types::{CUresult, CUstream};
use crate::{driver, pinned};

/// `CU_MEMORYTYPE_HOST`.
const HOST: u32 = 1;
/// `CU_MEMORYTYPE_DEVICE`.
const DEVICE: u32 = 2;
/// `CU_MEMORYTYPE_ARRAY`.
const ARRAY: u32 = 3;
/// `CU_MEMORYTYPE_UNIFIED`.
const UNIFIED: u32 = 4;
/// `CU_DEVICE_ATTRIBUTE_MAX_PITCH`.
const ATTR_MAX_PITCH: usize = 11;

/// `CUDA_MEMCPY2D_v2`, with the memory types as plain numbers: a C enum may hold any value,
/// which a Rust enum must not.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Memcpy2D {
    pub src_x: usize,
    pub src_y: usize,
    pub src_type: u32,
    pub src_host: *const c_void,
    pub src_device: u64,
    pub src_array: *mut c_void,
    pub src_pitch: usize,
    pub dst_x: usize,
    pub dst_y: usize,
    pub dst_type: u32,
    pub dst_host: *mut c_void,
    pub dst_device: u64,
    pub dst_array: *mut c_void,
    pub dst_pitch: usize,
    pub width: usize,
    pub height: usize,
}

/// `CUDA_MEMCPY3D_v2`, with the memory types as plain numbers (see [`Memcpy2D`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Memcpy3D {
    pub src_x: usize,
    pub src_y: usize,
    pub src_z: usize,
    pub src_lod: usize,
    pub src_type: u32,
    pub src_host: *const c_void,
    pub src_device: u64,
    pub src_array: *mut c_void,
    pub reserved0: *mut c_void,
    pub src_pitch: usize,
    pub src_height: usize,
    pub dst_x: usize,
    pub dst_y: usize,
    pub dst_z: usize,
    pub dst_lod: usize,
    pub dst_type: u32,
    pub dst_host: *mut c_void,
    pub dst_device: u64,
    pub dst_array: *mut c_void,
    pub reserved1: *mut c_void,
    pub dst_pitch: usize,
    pub dst_height: usize,
    pub width: usize,
    pub height: usize,
    pub depth: usize,
}

/// Why a copy's description is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `CUDA_ERROR_INVALID_VALUE`, for the reason given.
    #[error("invalid copy: {0}")]
    Invalid(&'static str),
    /// A CUDA array on one side: `CUDA_ERROR_NOT_SUPPORTED`.
    #[error("CUDA arrays are not supported")]
    Array,
}

/// One side of a copy as described: a 2D side has no slices (`z` 0, `height` 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideDesc {
    pub x: u64,
    pub y: u64,
    pub z: u64,
    pub lod: u64,
    pub kind: u32,
    pub host: u64,
    pub device: u64,
    pub pitch: u64,
    /// Rows per slice (`srcHeight`/`dstHeight`; 0 = not specified).
    pub height: u64,
}

/// A copy as described, 2D or 3D.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub src: SideDesc,
    pub dst: SideDesc,
    pub extent: Extent,
    /// Whether a reserved field is set.
    pub reserved: bool,
}

impl From<&Memcpy2D> for Desc {
    fn from(c: &Memcpy2D) -> Self {
        let side = |x: usize, y: usize, kind, host: u64, device, pitch: usize| SideDesc {
            x: x as u64,
            y: y as u64,
            z: 0,
            lod: 0,
            kind,
            host,
            device,
            pitch: pitch as u64,
            height: 0,
        };
        Desc {
            src: side(
                c.src_x,
                c.src_y,
                c.src_type,
                c.src_host as u64,
                c.src_device,
                c.src_pitch,
            ),
            dst: side(
                c.dst_x,
                c.dst_y,
                c.dst_type,
                c.dst_host as u64,
                c.dst_device,
                c.dst_pitch,
            ),
            extent: Extent {
                width: c.width as u64,
                height: c.height as u64,
                depth: 1,
            },
            reserved: false,
        }
    }
}

impl From<&Memcpy3D> for Desc {
    fn from(c: &Memcpy3D) -> Self {
        Desc {
            src: SideDesc {
                x: c.src_x as u64,
                y: c.src_y as u64,
                z: c.src_z as u64,
                lod: c.src_lod as u64,
                kind: c.src_type,
                host: c.src_host as u64,
                device: c.src_device,
                pitch: c.src_pitch as u64,
                height: c.src_height as u64,
            },
            dst: SideDesc {
                x: c.dst_x as u64,
                y: c.dst_y as u64,
                z: c.dst_z as u64,
                lod: c.dst_lod as u64,
                kind: c.dst_type,
                host: c.dst_host as u64,
                device: c.dst_device,
                pitch: c.dst_pitch as u64,
                height: c.dst_height as u64,
            },
            extent: Extent {
                width: c.width as u64,
                height: c.height as u64,
                depth: c.depth as u64,
            },
            reserved: !c.reserved0.is_null() || !c.reserved1.is_null(),
        }
    }
}

/// Which memory a side's first byte is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mem {
    /// Host memory at this address.
    Host(u64),
    /// Device memory at this address.
    Device(u64),
}

/// One side of a valid copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    /// Its first byte.
    pub mem: Mem,
    /// Its rows and slices.
    pub pitch: Pitch,
}

/// A valid, non-empty copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub src: Side,
    pub dst: Side,
    pub extent: Extent,
}

fn invalid(why: &'static str) -> PlanError {
    PlanError::Invalid(why)
}

/// Resolves one side: its first byte, where its bytes are, and that they fit the pitches and
/// (for device memory) one allocation. `alloc` answers the allocation holding an address.
fn side(
    d: &SideDesc,
    e: Extent,
    max_pitch: u64,
    alloc: &impl Fn(u64) -> Option<(u64, u64)>,
) -> Result<Side, PlanError> {
    let several_rows = e.height > 1 || e.depth > 1;
    let row_end =
        d.x.checked_add(e.width)
            .ok_or(invalid("x + width overflows"))?;
    if d.pitch == 0 {
        if several_rows {
            return Err(invalid("a pitch is 0 but more than one row is copied"));
        }
    } else if d.pitch < row_end {
        return Err(invalid("a pitch is less than x + width"));
    }
    if d.pitch > max_pitch {
        return Err(invalid("a pitch exceeds the device's maximum pitch"));
    }
    if e.depth > 1 && d.height == 0 {
        return Err(invalid(
            "a slice height is 0 but more than one slice is copied",
        ));
    }
    if d.height != 0 && d.height < d.y.saturating_add(e.height) {
        return Err(invalid("a slice height is less than y + height"));
    }
    let pitch = Pitch {
        row: d.pitch,
        slice: d
            .height
            .checked_mul(d.pitch)
            .ok_or(invalid("slice size overflows"))?,
    };
    let rows_before =
        d.z.checked_mul(d.height)
            .and_then(|r| r.checked_add(d.y))
            .ok_or(invalid("the start overflows"))?;
    let offset = rows_before
        .checked_mul(d.pitch)
        .and_then(|o| o.checked_add(d.x))
        .ok_or(invalid("the start overflows"))?;
    let span = e.span(pitch).ok_or(invalid("the copy's span overflows"))?;
    let base = if d.kind == HOST { d.host } else { d.device };
    if base == 0 {
        return Err(invalid("a NULL pointer"));
    }
    let start = base
        .checked_add(offset)
        .ok_or(invalid("the start overflows"))?;
    let end = start
        .checked_add(span)
        .ok_or(invalid("the end overflows"))?;
    let found = alloc(start);
    let device = match d.kind {
        DEVICE => true,
        UNIFIED => found.is_some(),
        _ => false,
    };
    if !device {
        if found.is_some() {
            return Err(invalid("a host pointer is device memory"));
        }
        return Ok(Side {
            mem: Mem::Host(start),
            pitch,
        });
    }
    match found {
        Some((b, size)) if end <= b + size => Ok(Side {
            mem: Mem::Device(start),
            pitch,
        }),
        Some(_) => Err(invalid("the rows run past the end of the allocation")),
        None => Err(invalid(
            "a device pointer is not an allocation of this process",
        )),
    }
}

/// Checks a copy as NVIDIA's driver documents it and resolves its sides; `None` for a copy of
/// no bytes.
pub fn plan(
    d: &Desc,
    max_pitch: u64,
    alloc: impl Fn(u64) -> Option<(u64, u64)>,
) -> Result<Option<Plan>, PlanError> {
    for s in [&d.src, &d.dst] {
        match s.kind {
            HOST | DEVICE | UNIFIED => {}
            ARRAY => return Err(PlanError::Array),
            _ => return Err(invalid("an unknown memory type")),
        }
        if s.lod != 0 {
            return Err(invalid("a level of detail is not 0"));
        }
    }
    if d.reserved {
        return Err(invalid("a reserved field is set"));
    }
    if d.extent.is_empty() {
        return Ok(None);
    }
    d.extent
        .bytes()
        .ok_or(invalid("the copy's size overflows"))?;
    Ok(Some(Plan {
        src: side(&d.src, d.extent, max_pitch, &alloc)?,
        dst: side(&d.dst, d.extent, max_pitch, &alloc)?,
        extent: d.extent,
    }))
}

/// Commands whose completions are waited for (a bounded number kept at once); dropping the
/// queue waits for the rest, so that a bounce buffer they use outlives them.
struct Waits {
    q: VecDeque<Pending<'static>>,
}

/// Completions kept before the oldest is waited for.
const MAX_WAITS: usize = 64;

impl Waits {
    fn new() -> Self {
        Self { q: VecDeque::new() }
    }

    fn push(&mut self, p: Pending<'static>) -> Result<(), CUresult> {
        self.q.push_back(p);
        if self.q.len() > MAX_WAITS {
            if let Some(p) = self.q.pop_front() {
                p.wait().map_err(dev_err)?;
            }
        }
        Ok(())
    }

    /// Waits for every command queued; the first error is returned after all were waited for.
    fn finish(&mut self) -> Result<(), CUresult> {
        let mut err = None;
        while let Some(p) = self.q.pop_front() {
            if let Err(e) = p.wait() {
                err.get_or_insert(dev_err(e));
            }
        }
        err.map_or(Ok(()), Err)
    }
}

impl Drop for Waits {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Largest bounce buffer taken from the page-locked heap.
const MAX_BOUNCE: u64 = 4 << 20;
/// Smallest bounce buffer worth taking.
const MIN_BOUNCE: u64 = 64 << 10;

/// A bounce buffer in the page-locked heap, freed on drop.
struct Bounce {
    addr: usize,
    staging: u64,
    /// Bytes in each of its two halves.
    half: u64,
}

impl Bounce {
    /// A buffer for a copy of `bytes`, as large as the heap gives (up to [`MAX_BOUNCE`]);
    /// `None` when it cannot give [`MIN_BOUNCE`].
    fn take(bytes: u64) -> Option<Bounce> {
        let mut len = bytes.div_ceil(2 * pinned::PAGE) * 2 * pinned::PAGE;
        len = len.clamp(MIN_BOUNCE, MAX_BOUNCE);
        while len >= MIN_BOUNCE {
            if let Some(addr) = pinned::with_heap(|h| h.alloc(len)).flatten() {
                let Some(staging) = pinned::staging_of(addr, len as usize) else {
                    pinned::with_heap(|h| h.free(addr));
                    return None;
                };
                return Some(Bounce {
                    addr,
                    staging,
                    half: len / 2,
                });
            }
            len /= 2;
        }
        None
    }

    /// Address of byte `at` of half `k`.
    fn ptr(&self, k: usize, at: u64) -> *mut u8 {
        (self.addr + k * self.half as usize + at as usize) as *mut u8
    }

    /// Staging offset of byte `at` of half `k`.
    fn staging(&self, k: usize, at: u64) -> u64 {
        self.staging + k as u64 * self.half + at
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        pinned::with_heap(|h| h.free(self.addr));
    }
}

/// How a copy is ordered and waited for.
#[derive(Debug, Clone, Copy)]
struct Order {
    /// The stream as the program named it.
    s: CUstream,
    /// Whether NULL names the per-thread default stream.
    pt: bool,
    /// Whether the call returns only once the copy is done (the synchronous forms).
    sync: bool,
}

/// Host → device through the bounce buffer: rows are packed into one half while the other's
/// staging copies run.
///
/// # Safety
/// The host rows of `plan` are valid for reads.
unsafe fn bounced_to_device(
    st: &Stream<'static>,
    b: &Bounce,
    runs: impl Iterator<Item = Run>,
    host: u64,
    dev: u64,
) -> Result<(), CUresult> {
    let mut waits = [Waits::new(), Waits::new()];
    let (mut k, mut pos) = (0usize, 0u64);
    for r in runs {
        let mut done = 0;
        while done < r.len {
            if pos == b.half {
                k ^= 1;
                pos = 0;
                waits[k].finish()?;
            }
            let n = (r.len - done).min(b.half - pos);
            // SAFETY: the source row is valid for reads (the caller's promise); the bounce
            // half has `half - pos >= n` bytes from `pos`, and no command reads them now (its
            // earlier commands were waited for).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (host + r.src + done) as *const u8,
                    b.ptr(k, pos),
                    n as usize,
                );
            }
            let p = st
                .copy_htod_staged(dev + r.dst + done, b.staging(k, pos), n)
                .map_err(dev_err)?;
            waits[k].push(p)?;
            pos += n;
            done += n;
        }
    }
    let (a, c) = waits.split_at_mut(1);
    let first = a[0].finish();
    c[0].finish().and(first)
}

/// Device → host through the bounce buffer: staging copies fill one half while the other's
/// bytes are unpacked into the host rows.
///
/// # Safety
/// The host rows of `plan` are valid for writes.
unsafe fn bounced_to_host(
    st: &Stream<'static>,
    b: &Bounce,
    runs: impl Iterator<Item = Run>,
    dev: u64,
    host: u64,
) -> Result<(), CUresult> {
    let mut waits = [Waits::new(), Waits::new()];
    // Per half: (host offset, offset in the half, bytes) of the pieces it holds.
    let mut pieces: [Vec<(u64, u64, u64)>; 2] = [Vec::new(), Vec::new()];
    let unpack = |k: usize, w: &mut Waits, p: &mut Vec<(u64, u64, u64)>| {
        w.finish()?;
        for &(h, at, n) in p.iter() {
            // SAFETY: the host row is valid for writes (the caller's promise); the half's
            // bytes arrived (its commands completed).
            unsafe {
                std::ptr::copy_nonoverlapping(b.ptr(k, at), (host + h) as *mut u8, n as usize)
            };
        }
        p.clear();
        Ok::<(), CUresult>(())
    };
    let (mut k, mut pos) = (0usize, 0u64);
    for r in runs {
        let mut done = 0;
        while done < r.len {
            if pos == b.half {
                k ^= 1;
                pos = 0;
                unpack(k, &mut waits[k], &mut pieces[k])?;
            }
            let n = (r.len - done).min(b.half - pos);
            let p = st
                .copy_dtoh_staged(dev + r.src + done, b.staging(k, pos), n)
                .map_err(dev_err)?;
            waits[k].push(p)?;
            pieces[k].push((r.dst + done, pos, n));
            pos += n;
            done += n;
        }
    }
    // The other half was filled first.
    let o = k ^ 1;
    unpack(o, &mut waits[o], &mut pieces[o])?;
    unpack(k, &mut waits[k], &mut pieces[k])
}

/// Runs a valid copy.
///
/// # Safety
/// Host sides are valid for the reads or writes of the copy's rows.
unsafe fn execute(p: &Plan, o: Order) -> Result<CUresult, CUresult> {
    let all = || runs(p.extent, p.src.pitch, p.dst.pitch);
    let single = all().nth(1).is_none();
    match (p.src.mem, p.dst.mem) {
        (Mem::Host(src), Mem::Host(dst)) => {
            drain(o.s, o.pt)?;
            for r in all() {
                // SAFETY: both rows valid (the caller's promise); `copy` allows overlap.
                unsafe {
                    std::ptr::copy(
                        (src + r.src) as *const u8,
                        (dst + r.dst) as *mut u8,
                        r.len as usize,
                    )
                };
            }
        }
        (Mem::Device(src), Mem::Device(dst)) => {
            let st = enqueue(o.s, o.pt)?;
            let mut waits = Waits::new();
            for r in all() {
                let q = st
                    .copy_dtod(dst + r.dst, src + r.src, r.len)
                    .map_err(dev_err)?;
                if o.sync {
                    waits.push(q)?;
                }
            }
            waits.finish()?;
        }
        (Mem::Host(host), Mem::Device(dev)) | (Mem::Device(dev), Mem::Host(host)) => {
            let way = if matches!(p.dst.mem, Mem::Device(_)) {
                Way::ToDevice
            } else {
                Way::ToHost
            };
            let host_pitch = match way {
                Way::ToDevice => p.src.pitch,
                Way::ToHost => p.dst.pitch,
            };
            if single {
                let n = p.extent.bytes().unwrap_or(0) as usize;
                // SAFETY: one run: `n` bytes of host memory valid (the caller's promise).
                return unsafe { host_copy(way, dev, host as *mut c_void, n, o.s, o.pt, o.sync) };
            }
            let span = p.extent.span(host_pitch).unwrap_or(0) as usize;
            if let Some(off) = pinned::staging_of(host as usize, span) {
                // Page-locked rows: staging copies straight from or into them.
                let st = enqueue(o.s, o.pt)?;
                let mut waits = Waits::new();
                for r in all() {
                    let q = match way {
                        Way::ToDevice => st.copy_htod_staged(dev + r.dst, off + r.src, r.len),
                        Way::ToHost => st.copy_dtoh_staged(dev + r.src, off + r.dst, r.len),
                    }
                    .map_err(dev_err)?;
                    if o.sync {
                        waits.push(q)?;
                    }
                }
                waits.finish()?;
            } else if let Some(b) = Bounce::take(p.extent.bytes().unwrap_or(0)) {
                let st = enqueue(o.s, o.pt)?;
                // SAFETY: the host rows are valid (the caller's promise).
                unsafe {
                    match way {
                        Way::ToDevice => bounced_to_device(&st, &b, all(), host, dev)?,
                        Way::ToHost => bounced_to_host(&st, &b, all(), dev, host)?,
                    }
                }
            } else {
                // No page-locked heap to bounce through: row by row through staging, after
                // the stream's earlier work.
                drain(o.s, o.pt)?;
                let d = driver::get()?;
                for r in all() {
                    match way {
                        Way::ToDevice => {
                            // SAFETY: a host row valid for reads (the caller's promise).
                            let row = unsafe {
                                std::slice::from_raw_parts(
                                    (host + r.src) as *const u8,
                                    r.len as usize,
                                )
                            };
                            d.dev.copy_htod(dev + r.dst, row).map_err(dev_err)?;
                        }
                        Way::ToHost => {
                            // SAFETY: a host row valid for writes (the caller's promise).
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(
                                    (host + r.dst) as *mut u8,
                                    r.len as usize,
                                )
                            };
                            d.dev.copy_dtoh(row, dev + r.src).map_err(dev_err)?;
                        }
                    }
                }
            }
        }
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// Checks and runs a copy described by `d`.
///
/// # Safety
/// Host sides are valid for the reads or writes of the copy's rows.
unsafe fn copy(name: &'static str, d: &Desc, o: Order) -> Result<CUresult, CUresult> {
    require_current()?;
    let drv = driver::get()?;
    let max_pitch = drv
        .info
        .attribute(ATTR_MAX_PITCH)
        .filter(|&m| m > 0)
        .map_or(i32::MAX as u64, |m| m as u64);
    match plan(d, max_pitch, extent_of) {
        Ok(None) => Ok(CUresult::CUDA_SUCCESS),
        // SAFETY: forwarded from the caller.
        Ok(Some(p)) => unsafe { execute(&p, o) },
        Err(PlanError::Invalid(_)) => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        Err(PlanError::Array) => Err(crate::unsupported::report_owned(format!(
            "{name} with a CUDA array"
        ))),
    }
}

/// # Safety
/// `p` is NULL or a valid `CUDA_MEMCPY2D` whose host sides are valid for the copy.
unsafe fn copy_2d(name: &'static str, p: *const Memcpy2D, o: Order) -> Result<CUresult, CUresult> {
    require_current()?;
    // SAFETY: NULL or valid for a read (the caller's promise).
    let c = unsafe { p.as_ref() }.ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
    // SAFETY: forwarded from the caller.
    unsafe { copy(name, &Desc::from(c), o) }
}

/// # Safety
/// `p` is NULL or a valid `CUDA_MEMCPY3D` whose host sides are valid for the copy.
unsafe fn copy_3d(name: &'static str, p: *const Memcpy3D, o: Order) -> Result<CUresult, CUresult> {
    require_current()?;
    // SAFETY: NULL or valid for a read (the caller's promise).
    let c = unsafe { p.as_ref() }.ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
    // SAFETY: forwarded from the caller.
    unsafe { copy(name, &Desc::from(c), o) }
}

macro_rules! copy_sync {
    ($name:ident, $f:ident, $t:ty, $pt:expr) => {
        /// A synchronous pitched copy (see the module's notes).
        ///
        /// # Safety
        /// `p` is NULL or a valid descriptor whose host sides are valid for the copy.
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *const $t) -> CUresult {
            let o = Order {
                s: std::ptr::null_mut(),
                pt: $pt,
                sync: true,
            };
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe { $f(stringify!($name), p, o) })
        }
    };
}

macro_rules! copy_async {
    ($name:ident, $f:ident, $t:ty, $pt:expr) => {
        /// A pitched copy on a stream (see the module's notes).
        ///
        /// # Safety
        /// `p` is NULL or a valid descriptor whose host sides are valid for the copy.
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *const $t, s: CUstream) -> CUresult {
            let o = Order {
                s,
                pt: $pt,
                sync: false,
            };
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe { $f(stringify!($name), p, o) })
        }
    };
}

// cuMemcpy2D may refuse pitches cuMemAllocPitch would not hand out for device-to-device
// copies on NVIDIA's driver; here every pitch works, so the aligned and unaligned forms agree.
copy_sync!(cuMemcpy2D_v2, copy_2d, Memcpy2D, false);
copy_sync!(cuMemcpy2D_v2_ptds, copy_2d, Memcpy2D, true);
copy_sync!(cuMemcpy2DUnaligned_v2, copy_2d, Memcpy2D, false);
copy_sync!(cuMemcpy2DUnaligned_v2_ptds, copy_2d, Memcpy2D, true);
copy_async!(cuMemcpy2DAsync_v2, copy_2d, Memcpy2D, false);
copy_async!(cuMemcpy2DAsync_v2_ptsz, copy_2d, Memcpy2D, true);
copy_sync!(cuMemcpy3D_v2, copy_3d, Memcpy3D, false);
copy_sync!(cuMemcpy3D_v2_ptds, copy_3d, Memcpy3D, true);
copy_async!(cuMemcpy3DAsync_v2, copy_3d, Memcpy3D, false);
copy_async!(cuMemcpy3DAsync_v2_ptsz, copy_3d, Memcpy3D, true);

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::types::{CUDA_MEMCPY2D_st, CUDA_MEMCPY3D_st};

    #[test]
    fn descriptors_have_the_driver_api_layout() {
        assert_eq!(size_of::<Memcpy2D>(), size_of::<CUDA_MEMCPY2D_st>());
        assert_eq!(size_of::<Memcpy3D>(), size_of::<CUDA_MEMCPY3D_st>());
        macro_rules! same {
            ($ours:ty, $theirs:ty, $($a:ident = $b:ident),*) => {
                $(assert_eq!(offset_of!($ours, $a), offset_of!($theirs, $b), stringify!($a));)*
            };
        }
        same!(
            Memcpy2D,
            CUDA_MEMCPY2D_st,
            src_x = srcXInBytes,
            src_y = srcY,
            src_type = srcMemoryType,
            src_host = srcHost,
            src_device = srcDevice,
            src_array = srcArray,
            src_pitch = srcPitch,
            dst_x = dstXInBytes,
            dst_y = dstY,
            dst_type = dstMemoryType,
            dst_host = dstHost,
            dst_device = dstDevice,
            dst_array = dstArray,
            dst_pitch = dstPitch,
            width = WidthInBytes,
            height = Height
        );
        same!(
            Memcpy3D,
            CUDA_MEMCPY3D_st,
            src_x = srcXInBytes,
            src_y = srcY,
            src_z = srcZ,
            src_lod = srcLOD,
            src_type = srcMemoryType,
            src_host = srcHost,
            src_device = srcDevice,
            src_array = srcArray,
            reserved0 = reserved0,
            src_pitch = srcPitch,
            src_height = srcHeight,
            dst_x = dstXInBytes,
            dst_y = dstY,
            dst_z = dstZ,
            dst_lod = dstLOD,
            dst_type = dstMemoryType,
            dst_host = dstHost,
            dst_device = dstDevice,
            dst_array = dstArray,
            reserved1 = reserved1,
            dst_pitch = dstPitch,
            dst_height = dstHeight,
            width = WidthInBytes,
            height = Height,
            depth = Depth
        );
    }

    /// One device allocation: 1 MiB at 0x7000_0000.
    fn alloc(p: u64) -> Option<(u64, u64)> {
        (0x7000_0000..0x7010_0000)
            .contains(&p)
            .then_some((0x7000_0000, 1 << 20))
    }

    const DEV: u64 = 0x7000_0000;
    const HOSTP: u64 = 0x10_0000;

    fn side(kind: u32, pitch: u64) -> SideDesc {
        SideDesc {
            x: 0,
            y: 0,
            z: 0,
            lod: 0,
            kind,
            host: HOSTP,
            device: DEV,
            pitch,
            height: 0,
        }
    }

    /// A 2D copy of `width × height` from host rows of `sp` bytes to device rows of `dp`.
    fn h2d(width: u64, height: u64, sp: u64, dp: u64) -> Desc {
        Desc {
            src: side(HOST, sp),
            dst: side(DEVICE, dp),
            extent: Extent {
                width,
                height,
                depth: 1,
            },
            reserved: false,
        }
    }

    fn why(d: &Desc) -> &'static str {
        match plan(d, i32::MAX as u64, alloc) {
            Err(PlanError::Invalid(w)) => w,
            other => panic!("{d:?} gave {other:?}"),
        }
    }

    #[test]
    fn a_pitched_copy_resolves_its_sides() {
        let mut d = h2d(100, 4, 100, 512);
        d.dst.x = 12;
        d.dst.y = 2;
        let p = plan(&d, i32::MAX as u64, alloc).unwrap().unwrap();
        assert_eq!(p.src.mem, Mem::Host(HOSTP));
        assert_eq!(p.dst.mem, Mem::Device(DEV + 2 * 512 + 12));
        assert_eq!(p.dst.pitch, Pitch { row: 512, slice: 0 });
    }

    #[test]
    fn width_beyond_a_pitch_is_invalid() {
        assert_eq!(
            why(&h2d(600, 2, 600, 512)),
            "a pitch is less than x + width"
        );
        assert_eq!(why(&h2d(100, 2, 64, 512)), "a pitch is less than x + width");
        let mut d = h2d(500, 2, 500, 512);
        d.dst.x = 13;
        assert_eq!(why(&d), "a pitch is less than x + width", "x counts");
    }

    #[test]
    fn a_zero_pitch_is_only_for_one_row() {
        assert!(plan(&h2d(64, 1, 0, 0), i32::MAX as u64, alloc)
            .unwrap()
            .is_some());
        assert_eq!(
            why(&h2d(64, 2, 0, 512)),
            "a pitch is 0 but more than one row is copied"
        );
    }

    #[test]
    fn pitches_above_the_maximum_are_invalid() {
        let d = h2d(64, 2, 1 << 20, 64);
        assert!(matches!(plan(&d, 1 << 20, alloc), Ok(Some(_))));
        assert_eq!(
            plan(&d, (1 << 20) - 1, alloc),
            Err(PlanError::Invalid(
                "a pitch exceeds the device's maximum pitch"
            ))
        );
    }

    #[test]
    fn device_rows_must_stay_in_their_allocation() {
        // 2048 rows of 512 bytes are exactly the 1 MiB allocation.
        assert!(plan(&h2d(512, 2048, 512, 512), i32::MAX as u64, alloc)
            .unwrap()
            .is_some());
        assert_eq!(
            why(&h2d(512, 2049, 512, 512)),
            "the rows run past the end of the allocation"
        );
        let mut d = h2d(16, 1, 16, 16);
        d.dst.device = 0x9000_0000;
        assert_eq!(
            why(&d),
            "a device pointer is not an allocation of this process"
        );
    }

    #[test]
    fn host_and_unified_sides_are_told_apart() {
        let mut d = h2d(16, 1, 16, 16);
        d.src.host = DEV;
        assert_eq!(why(&d), "a host pointer is device memory");
        d.src.host = 0;
        assert_eq!(why(&d), "a NULL pointer");
        let mut d = h2d(16, 2, 16, 16);
        d.src.kind = UNIFIED;
        d.src.device = DEV + 64;
        d.dst.kind = UNIFIED;
        d.dst.device = HOSTP;
        let p = plan(&d, i32::MAX as u64, alloc).unwrap().unwrap();
        assert_eq!(
            (p.src.mem, p.dst.mem),
            (Mem::Device(DEV + 64), Mem::Host(HOSTP))
        );
    }

    #[test]
    fn memory_types_levels_and_reserved_fields_are_checked() {
        let mut d = h2d(16, 1, 16, 16);
        d.src.kind = 0;
        assert_eq!(why(&d), "an unknown memory type");
        d.src.kind = 5;
        assert_eq!(why(&d), "an unknown memory type");
        d.src.kind = ARRAY;
        assert_eq!(plan(&d, i32::MAX as u64, alloc), Err(PlanError::Array));
        let mut d = h2d(16, 1, 16, 16);
        d.dst.lod = 1;
        assert_eq!(why(&d), "a level of detail is not 0");
        let mut d = h2d(16, 1, 16, 16);
        d.reserved = true;
        assert_eq!(why(&d), "a reserved field is set");
    }

    #[test]
    fn empty_copies_succeed_without_a_plan() {
        for (w, h) in [(0, 5), (5, 0)] {
            // Pitches are not looked at for a copy of nothing.
            assert_eq!(plan(&h2d(w, h, 1, 1), i32::MAX as u64, alloc), Ok(None));
        }
    }

    #[test]
    fn slices_need_a_height_that_holds_the_rows() {
        let mut d = h2d(64, 4, 64, 64);
        d.extent.depth = 3;
        assert_eq!(
            why(&d),
            "a slice height is 0 but more than one slice is copied"
        );
        d.src.height = 4;
        d.dst.height = 4;
        let p = plan(&d, i32::MAX as u64, alloc).unwrap().unwrap();
        assert_eq!(
            p.src.pitch,
            Pitch {
                row: 64,
                slice: 256
            }
        );
        d.src.y = 1;
        assert_eq!(why(&d), "a slice height is less than y + height");
        d.src.y = 0;
        d.dst.z = 2;
        d.dst.height = 5;
        let p = plan(&d, i32::MAX as u64, alloc).unwrap().unwrap();
        assert_eq!(p.dst.mem, Mem::Device(DEV + 2 * 5 * 64));
    }

    #[test]
    fn overflowing_descriptions_are_invalid_not_wrapped() {
        let mut d = h2d(16, 2, 16, 16);
        d.dst.y = u64::MAX / 8;
        assert_eq!(why(&d), "the start overflows");
        let mut d = h2d(16, 1, 16, 16);
        d.src.x = u64::MAX - 8;
        d.src.pitch = 0;
        assert_eq!(why(&d), "x + width overflows");
    }
}
