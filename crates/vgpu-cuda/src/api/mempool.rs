//! Stream-ordered allocation and memory pools: `cuMemAllocAsync`, `cuMemFreeAsync`,
//! `cuMemAllocFromPoolAsync`, the device's default and current pool, `cuMemPoolCreate` with its
//! attributes, access and trimming.
//!
//! A pool lives in this process, on top of vgpud's plain allocations (`cuMemAlloc`, at the
//! GPU's own addresses): an allocation takes a block the pool holds or, when none fits, a new
//! one from vgpud; a free puts the block back in its pool without a round trip. When a block
//! may be used again follows CUDA's stream-ordering promise:
//!
//! * on the stream it was freed on, at once (the stream runs its work in order);
//! * on any other stream once the freeing stream's work up to the free is done: the free
//!   queues a fence there ([`vgpu_guest::Device::mark_stream`]) and the block is taken when its
//!   word is written — one read, no round trip. Without fences (`VGPU_FENCES=0`) blocks are
//!   reused on their own stream only.
//!
//! Sizes are rounded up to a class (512 bytes at least, four classes per doubling up to 2 MiB,
//! then whole 2 MiB), and a block serves requests of its own class.
//!
//! What differs from NVIDIA's driver, and why: freed blocks stay in their pool whatever the
//! release threshold (CUDA gives memory above it back at each synchronisation; here that would
//! cost a round trip per block on a path programs use for speed). A pool gives its blocks back
//! to vgpud on `cuMemPoolTrimTo`, when it is destroyed, and when any allocation of this library
//! (`cuMemAlloc` too, [`memory::alloc`]) finds the VM's memory full: then every pool's free
//! blocks go back and the allocation is tried once more. A second free of a block is refused
//! (`CUDA_ERROR_INVALID_VALUE`).
//! Allocation and free during stream capture answer `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`
//! (the capture happens on the host, which would not see the guest's pool). Pools of host
//! memory and shareable pool handles answer `CUDA_ERROR_NOT_SUPPORTED`.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::{Mutex, MutexGuard};

use vgpu_guest::device::StreamMark;

use super::memory::{self, ready};
use super::stream::{enqueue, resolve};
use super::vmm::{RawAccessDesc, RawLocation};
use super::{put, run};
use crate::driver::{self, Driver};
use crate::handles::Registry;
use crate::types::{CUdevice, CUdeviceptr, CUresult, CUstream};

/// `CUmemoryPool`: the address of a [`PoolObj`].
type CUmemoryPool = *mut c_void;

/// `CU_MEM_ALLOCATION_TYPE_PINNED`.
const TYPE_PINNED: c_uint = 1;
/// `CU_MEM_LOCATION_TYPE_DEVICE`.
const LOCATION_DEVICE: c_uint = 1;
/// `CU_MEM_ACCESS_FLAGS_PROT_READWRITE`.
const PROT_READWRITE: c_uint = 3;

/// `CUmemPool_attribute` (CUDA 13.0).
const ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: c_int = 1;
const ATTR_REUSE_ALLOW_OPPORTUNISTIC: c_int = 2;
const ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: c_int = 3;
const ATTR_RELEASE_THRESHOLD: c_int = 4;
const ATTR_RESERVED_MEM_CURRENT: c_int = 5;
const ATTR_RESERVED_MEM_HIGH: c_int = 6;
const ATTR_USED_MEM_CURRENT: c_int = 7;
const ATTR_USED_MEM_HIGH: c_int = 8;

/// Smallest size class.
const MIN_CLASS: u64 = 512;
/// From this size on, classes are whole multiples of it.
const LARGE_CLASS: u64 = 2 << 20;

/// The size class of a request of `n` bytes (> 0): 512 bytes at least, four classes per
/// doubling below 2 MiB, whole 2 MiB above. `None` when it does not fit in 64 bits.
pub fn class_of(n: u64) -> Option<u64> {
    if n <= MIN_CLASS {
        return Some(MIN_CLASS);
    }
    if n >= LARGE_CLASS {
        return n.checked_next_multiple_of(LARGE_CLASS);
    }
    let step = n.next_power_of_two() / 8;
    Some(n.next_multiple_of(step))
}

/// `CUmemPoolProps` (CUDA 13.0's layout) with its enums as the integers a program may pass.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawPoolProps {
    /// `CUmemAllocationType`.
    alloc_type: c_uint,
    /// `CUmemAllocationHandleType` bits.
    handle_types: c_uint,
    location: RawLocation,
    win32_security_attributes: *mut c_void,
    /// Most bytes the pool may reserve (0: no limit of its own).
    max_size: usize,
    /// `CU_MEM_POOL_CREATE_USAGE_*` bits.
    usage: u16,
    reserved: [u8; 54],
}

const _: () = assert!(std::mem::size_of::<RawPoolProps>() == 88);

/// What a pool handle points at (the pool's state is in [`State`], by handle).
#[derive(Debug)]
pub struct PoolObj {
    /// Never read: gives each leaked object its own address.
    _id: u64,
}

/// Live pool handles.
static LIVE: Registry<PoolObj> = Registry::new();

/// A freed block kept for reuse.
#[derive(Debug, Clone, Copy)]
struct Freed {
    ptr: u64,
    size: u64,
    /// The vgpud stream it was freed on.
    stream: u32,
    /// The fence queued there at the free, when the device takes fences.
    mark: Option<StreamMark>,
    /// The mark was seen passed (remembered: a fence word's values wrap after 2^31 more).
    done: bool,
}

impl Freed {
    /// Whether the freeing stream's work up to the free is known to be done.
    fn settled(&mut self, d: &Driver) -> bool {
        if !self.done {
            self.done = self.mark.is_some_and(|m| d.dev.passed(&m));
        }
        self.done
    }
}

/// One pool.
#[derive(Debug)]
struct Pool {
    /// The device's default pool (cannot be destroyed).
    default: bool,
    release_threshold: u64,
    /// The three `REUSE_*` attributes (kept and reported; reuse follows the rules above).
    reuse: [bool; 3],
    /// Most bytes it may reserve (0: no limit of its own).
    max_size: u64,
    reserved: u64,
    reserved_high: u64,
    used: u64,
    used_high: u64,
    free: Vec<Freed>,
}

impl Pool {
    fn new(default: bool, max_size: u64) -> Self {
        Self {
            default,
            release_threshold: 0,
            reuse: [true; 3],
            max_size,
            reserved: 0,
            reserved_high: 0,
            used: 0,
            used_high: 0,
            free: Vec::new(),
        }
    }

    fn take(&mut self, size: u64) {
        self.used += size;
        self.used_high = self.used_high.max(self.used);
    }

    /// Counts `size` more bytes reserved (before the allocation is made, so that two threads
    /// cannot both pass the pool's limit).
    fn reserve(&mut self, size: u64) {
        self.reserved += size;
        self.reserved_high = self.reserved_high.max(self.reserved);
    }

    /// Takes out every free block.
    fn drain(&mut self) -> Vec<Freed> {
        for f in &self.free {
            self.reserved -= f.size;
        }
        std::mem::take(&mut self.free)
    }

    /// Takes out free blocks whose free is done on its stream (or that no fence marks: vgpud's
    /// free waits for the VM's work, so no release below makes the caller wait for the device)
    /// until at most `keep` bytes stay reserved.
    fn trim(&mut self, d: &Driver, keep: u64) -> Vec<Freed> {
        let mut out = Vec::new();
        let mut i = 0;
        while self.reserved > keep && i < self.free.len() {
            let f = &mut self.free[i];
            if f.mark.is_none() || f.settled(d) {
                let f = self.free.swap_remove(i);
                self.reserved -= f.size;
                out.push(f);
            } else {
                i += 1;
            }
        }
        out
    }
}

/// Every pool of this process and the allocations they handed out.
#[derive(Debug, Default)]
struct State {
    pools: HashMap<usize, Pool>,
    /// Allocations handed out and not freed: pointer → (pool handle, size class).
    live: HashMap<u64, (usize, u64)>,
    /// The default pool's handle, once asked for.
    default: Option<usize>,
    /// The device's current pool (`cuDeviceSetMemPool`); the default pool when `None`.
    current: Option<usize>,
}

impl State {
    fn default_pool(&mut self) -> usize {
        if let Some(h) = self.default {
            return h;
        }
        let h = new_handle();
        self.pools.insert(h, Pool::new(true, 0));
        self.default = Some(h);
        h
    }

    fn current_pool(&mut self) -> usize {
        match self.current {
            Some(h) if self.pools.contains_key(&h) => h,
            _ => self.default_pool(),
        }
    }

    /// The pool behind handle `p`.
    fn pool(&mut self, p: CUmemoryPool) -> Result<(usize, &mut Pool), CUresult> {
        let h = p as usize;
        match self.pools.get_mut(&h) {
            Some(pool) => Ok((h, pool)),
            None => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        }
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the pools' state.
fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    f(state().get_or_insert_with(State::default))
}

fn new_handle() -> usize {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Registry::handle(LIVE.add(PoolObj { _id: id }))
}

/// Gives blocks back to vgpud. The first failure is returned after all were tried.
fn release(d: &Driver, blocks: Vec<Freed>) -> Result<(), CUresult> {
    let mut out = Ok(());
    for f in blocks {
        if let Err(e) = memory::release(d, f.ptr) {
            out = out.and(Err(e));
        }
    }
    out
}

impl State {
    /// Whether `p` is a block waiting in a pool (freed, not handed out).
    fn idle(&self, p: u64) -> bool {
        self.pools
            .values()
            .any(|pool| pool.free.iter().any(|f| f.ptr == p))
    }
}

/// What `cuMemFree` of `p` is, as far as pools know.
pub(crate) enum Owner {
    /// Not pool memory.
    None,
    /// A pool allocation: it has left its pool (counts included) and goes back to vgpud.
    Taken,
    /// A block already freed to its pool: freeing it again is an error.
    Idle,
}

/// Takes `p` out of its pool if it is a live pool allocation (one step under the lock, so
/// that two frees of it cannot both take it).
pub(crate) fn take_for_free(p: u64) -> Owner {
    // Every `cuMemFree` asks: a process that never used a pool has no state to look at.
    let mut g = state();
    let Some(s) = g.as_mut() else {
        return Owner::None;
    };
    if let Some((h, size)) = s.live.remove(&p) {
        if let Some(pool) = s.pools.get_mut(&h) {
            pool.used -= size;
            pool.reserved -= size;
        }
        Owner::Taken
    } else if s.idle(p) {
        Owner::Idle
    } else {
        Owner::None
    }
}

/// Gives every pool's free blocks back to vgpud, whatever their marks (vgpud's free waits for
/// the VM's work): what an allocation that found the VM's memory full does before it tries
/// again. Whether any block went back.
pub(crate) fn release_idle(d: &Driver) -> bool {
    let all = with_state(|st| {
        st.pools
            .values_mut()
            .flat_map(Pool::drain)
            .collect::<Vec<_>>()
    });
    let any = !all.is_empty();
    // A block vgpud refuses to free is gone from the pool either way: nothing is to be gained
    // from keeping it.
    let _ = release(d, all);
    any
}

/// Allocates `size` bytes for work on stream `s` from `pool` (the device's current pool when
/// `None`).
///
/// # Safety
/// `dptr` is NULL or valid for a write.
unsafe fn alloc_async(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: Option<CUmemoryPool>,
    s: CUstream,
    pt: bool,
) -> Result<CUresult, CUresult> {
    let d = ready()?;
    if dptr.is_null() || size == 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let sid = resolve(s, pt)?;
    super::graph::refuse_if_capturing(sid)?;
    let class = class_of(size as u64).ok_or(CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
    let (h, reused, surplus) = with_state(|st| -> Result<_, CUresult> {
        let h = match pool {
            Some(p) => st.pool(p)?.0,
            None => st.current_pool(),
        };
        let pool = st.pools.get_mut(&h).expect("checked");
        let reusable = pool
            .free
            .iter_mut()
            .position(|f| f.size == class && (f.stream == sid || f.settled(d)));
        if let Some(i) = reusable {
            let f = pool.free.swap_remove(i);
            pool.take(class);
            st.live.insert(f.ptr, (h, class));
            return Ok((h, Some(f.ptr), Vec::new()));
        }
        let mut surplus = Vec::new();
        if pool.max_size != 0 && pool.reserved + class > pool.max_size {
            // Room in the pool's own limit: its free blocks of other classes go back first.
            surplus = pool.trim(d, pool.max_size - class.min(pool.max_size));
            if pool.reserved + class > pool.max_size {
                for f in surplus {
                    pool.reserved += f.size;
                    pool.free.push(f);
                }
                return Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY);
            }
        }
        // Counted before the allocation is made: a second thread sees the pool's limit taken.
        pool.reserve(class);
        Ok((h, None, surplus))
    })?;
    if let Some(p) = reused {
        // SAFETY: non-NULL (checked), valid for a write (the caller's promise).
        return Ok(unsafe { put(dptr, p) });
    }
    let made = release(d, surplus).and_then(|()| memory::alloc(d, class));
    let p = with_state(|st| {
        let p = match made {
            Ok(p) => p,
            Err(e) => {
                if let Some(pool) = st.pools.get_mut(&h) {
                    pool.reserved -= class;
                }
                return Err(e);
            }
        };
        // The pool may have been destroyed meanwhile: an explicit one's allocation fails, the
        // current pool's is counted in the default pool, where cuMemAllocAsync now takes from.
        let h = match (st.pools.contains_key(&h), pool) {
            (true, _) => h,
            (false, None) => {
                let h = st.default_pool();
                st.pools.get_mut(&h).expect("made").reserve(class);
                h
            }
            (false, Some(_)) => return Ok(Err(p)),
        };
        st.pools.get_mut(&h).expect("present").take(class);
        st.live.insert(p, (h, class));
        Ok(Ok(p))
    })?;
    let p = match p {
        Ok(p) => p,
        Err(orphan) => {
            memory::release(d, orphan)?;
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
    };
    // SAFETY: non-NULL (checked), valid for a write (the caller's promise).
    Ok(unsafe { put(dptr, p) })
}

/// Frees `p` in stream order on `s`: a pool block goes back to its pool; memory of
/// `cuMemAlloc` goes back to vgpud (whose free waits for the VM's work).
fn free_async(p: CUdeviceptr, s: CUstream, pt: bool) -> Result<CUresult, CUresult> {
    let d = ready()?;
    if p == 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let sid = resolve(s, pt)?;
    super::graph::refuse_if_capturing(sid)?;
    let Some((h, size)) = with_state(|st| match st.live.get(&p) {
        Some(&entry) => Ok(Some(entry)),
        // Freed to its pool already.
        None if st.idle(p) => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        None => Ok(None),
    })?
    else {
        if memory::allocation_base(p) {
            memory::release(d, p)?;
            return Ok(CUresult::CUDA_SUCCESS);
        }
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    };
    // The fence marks the free's place in the stream (the ordering hold keeps other threads'
    // work of the legacy stream from coming between).
    let mark = {
        let q = enqueue(s, pt)?;
        d.dev
            .mark_stream(q.id())
            .map_err(|e| driver::error_of(&e))?
    };
    let orphan = with_state(|st| {
        if st.live.remove(&p).is_none() {
            // Freed by another thread meanwhile.
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        match st.pools.get_mut(&h) {
            Some(pool) => {
                pool.used -= size;
                pool.free.push(Freed {
                    ptr: p,
                    size,
                    stream: sid,
                    mark,
                    done: false,
                });
                Ok(false)
            }
            None => Ok(true),
        }
    })?;
    if orphan {
        // Its pool was destroyed while it was allocated.
        memory::release(d, p)?;
    }
    Ok(CUresult::CUDA_SUCCESS)
}

macro_rules! alloc_entry {
    ($name:ident, $pt:expr) => {
        /// `cuMemAllocAsync`: from the device's current pool, in stream order.
        ///
        /// # Safety
        /// `dptr` is NULL or valid for a write.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            size: usize,
            s: CUstream,
        ) -> CUresult {
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe {
                alloc_async(dptr, size, None, s, $pt)
            })
        }
    };
}
alloc_entry!(cuMemAllocAsync, false);
alloc_entry!(cuMemAllocAsync_ptsz, true);

macro_rules! alloc_from_pool_entry {
    ($name:ident, $pt:expr) => {
        /// `cuMemAllocFromPoolAsync`.
        ///
        /// # Safety
        /// `dptr` is NULL or valid for a write.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            size: usize,
            pool: CUmemoryPool,
            s: CUstream,
        ) -> CUresult {
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe {
                alloc_async(dptr, size, Some(pool), s, $pt)
            })
        }
    };
}
alloc_from_pool_entry!(cuMemAllocFromPoolAsync, false);
alloc_from_pool_entry!(cuMemAllocFromPoolAsync_ptsz, true);

macro_rules! free_entry {
    ($name:ident, $pt:expr) => {
        /// `cuMemFreeAsync`.
        #[no_mangle]
        pub extern "C" fn $name(p: CUdeviceptr, s: CUstream) -> CUresult {
            run(stringify!($name), || free_async(p, s, $pt))
        }
    };
}
free_entry!(cuMemFreeAsync, false);
free_entry!(cuMemFreeAsync_ptsz, true);

/// The one device vgpu shows.
fn check_device(dev: CUdevice) -> Result<(), CUresult> {
    driver::get()?;
    if dev == 0 {
        Ok(())
    } else {
        Err(CUresult::CUDA_ERROR_INVALID_DEVICE)
    }
}

/// A location and allocation type naming the device's pinned memory.
///
/// # Safety
/// `loc` is NULL or valid for a read.
unsafe fn check_location(loc: *const RawLocation, alloc_type: c_uint) -> Result<(), CUresult> {
    driver::get()?;
    if loc.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and valid for a read (the caller's promise); plain integers.
    let l = unsafe { loc.read() };
    match (l.type_, alloc_type) {
        (LOCATION_DEVICE, TYPE_PINNED) if l.id == 0 => Ok(()),
        (LOCATION_DEVICE, TYPE_PINNED) => Err(CUresult::CUDA_ERROR_INVALID_DEVICE),
        (LOCATION_DEVICE, _) => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        // Host memory pools (`CU_MEM_LOCATION_TYPE_HOST`, `_HOST_NUMA`, `_HOST_NUMA_CURRENT`).
        (2..=4, _) => Err(CUresult::CUDA_ERROR_NOT_SUPPORTED),
        _ => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
    }
}

/// Writes the handle of the pool `pick` chooses to `out`.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn put_pool(out: *mut CUmemoryPool, pick: fn(&mut State) -> usize) -> CUresult {
    let h = with_state(pick);
    // SAFETY: forwarded from the caller.
    unsafe { put(out, h as CUmemoryPool) }
}

/// Makes `pool` the one `cuMemAllocAsync` takes from.
fn set_current(pool: CUmemoryPool) -> Result<CUresult, CUresult> {
    with_state(|st| {
        let (h, _) = st.pool(pool)?;
        st.current = Some(h);
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuDeviceGetDefaultMemPool`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(
    out: *mut CUmemoryPool,
    dev: CUdevice,
) -> CUresult {
    run("cuDeviceGetDefaultMemPool", || {
        check_device(dev)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put_pool(out, State::default_pool) })
    })
}

/// `cuDeviceGetMemPool`: the device's current pool.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(out: *mut CUmemoryPool, dev: CUdevice) -> CUresult {
    run("cuDeviceGetMemPool", || {
        check_device(dev)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put_pool(out, State::current_pool) })
    })
}

/// `cuDeviceSetMemPool`: the pool `cuMemAllocAsync` takes from.
#[no_mangle]
pub extern "C" fn cuDeviceSetMemPool(dev: CUdevice, pool: CUmemoryPool) -> CUresult {
    run("cuDeviceSetMemPool", || {
        check_device(dev)?;
        set_current(pool)
    })
}

/// `cuMemGetDefaultMemPool` (CUDA 13.0): the default pool of a location.
///
/// # Safety
/// `out` is NULL or valid for a write; `loc` NULL or valid for a read.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetDefaultMemPool(
    out: *mut CUmemoryPool,
    loc: *const RawLocation,
    alloc_type: c_uint,
) -> CUresult {
    run("cuMemGetDefaultMemPool", || {
        // SAFETY: forwarded from the caller.
        unsafe { check_location(loc, alloc_type) }?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put_pool(out, State::default_pool) })
    })
}

/// `cuMemGetMemPool` (CUDA 13.0): the current pool of a location.
///
/// # Safety
/// `out` is NULL or valid for a write; `loc` NULL or valid for a read.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetMemPool(
    out: *mut CUmemoryPool,
    loc: *const RawLocation,
    alloc_type: c_uint,
) -> CUresult {
    run("cuMemGetMemPool", || {
        // SAFETY: forwarded from the caller.
        unsafe { check_location(loc, alloc_type) }?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put_pool(out, State::current_pool) })
    })
}

/// `cuMemSetMemPool` (CUDA 13.0): sets the current pool of a location.
///
/// # Safety
/// `loc` is NULL or valid for a read.
#[no_mangle]
pub unsafe extern "C" fn cuMemSetMemPool(
    loc: *const RawLocation,
    alloc_type: c_uint,
    pool: CUmemoryPool,
) -> CUresult {
    run("cuMemSetMemPool", || {
        // SAFETY: forwarded from the caller.
        unsafe { check_location(loc, alloc_type) }?;
        set_current(pool)
    })
}

/// `cuMemPoolCreate`: a pool of the device's pinned memory, without shareable handles.
///
/// # Safety
/// `out` is NULL or valid for a write; `props` NULL or valid for a read of a
/// `CUmemPoolProps`.
#[no_mangle]
pub unsafe extern "C" fn cuMemPoolCreate(out: *mut CUmemoryPool, props: *const c_void) -> CUresult {
    run("cuMemPoolCreate", || {
        driver::get()?;
        if out.is_null() || props.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL and valid for a read (the caller's promise); every field is a
        // plain integer or a pointer that is never dereferenced.
        let p = unsafe { props.cast::<RawPoolProps>().read_unaligned() };
        // SAFETY: a local.
        unsafe { check_location(&p.location, p.alloc_type) }?;
        if p.handle_types != 0 || p.usage != 0 {
            return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
        }
        let h = new_handle();
        with_state(|st| st.pools.insert(h, Pool::new(false, p.max_size as u64)));
        // SAFETY: non-NULL (checked), valid for a write (the caller's promise).
        Ok(unsafe { put(out, h as CUmemoryPool) })
    })
}

/// `cuMemPoolDestroy`: its free blocks go back to vgpud now; blocks still allocated from it
/// go back when they are freed.
#[no_mangle]
pub extern "C" fn cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult {
    run("cuMemPoolDestroy", || {
        let d = driver::get()?;
        let blocks = with_state(|st| {
            let (h, p) = st.pool(pool)?;
            if p.default {
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
            }
            let p = st.pools.remove(&h).expect("present");
            if st.current == Some(h) {
                st.current = None;
            }
            LIVE.retire(h);
            Ok(p.free)
        })?;
        release(d, blocks)?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemPoolTrimTo`: gives free blocks back to vgpud until at most `keep` bytes stay
/// reserved; blocks whose free has not been reached on its stream yet stay.
#[no_mangle]
pub extern "C" fn cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) -> CUresult {
    run("cuMemPoolTrimTo", || {
        let d = driver::get()?;
        let blocks = with_state(|st| st.pool(pool).map(|(_, p)| p.trim(d, keep as u64)))?;
        release(d, blocks)?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemPoolSetAttribute`.
///
/// # Safety
/// `value` is NULL or valid for a read of the attribute's type (`int` or `cuuint64_t`).
#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAttribute(
    pool: CUmemoryPool,
    attr: c_int,
    value: *const c_void,
) -> CUresult {
    run("cuMemPoolSetAttribute", || {
        driver::get()?;
        if value.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        with_state(|st| {
            let (_, p) = st.pool(pool)?;
            let flag = || {
                // SAFETY: non-NULL and valid for an int, the type of the flag attributes (the
                // caller's promise).
                unsafe { value.cast::<c_int>().read_unaligned() != 0 }
            };
            let word = || {
                // SAFETY: non-NULL and valid for a cuuint64_t, the type of the other
                // attributes (the caller's promise).
                unsafe { value.cast::<u64>().read_unaligned() }
            };
            match attr {
                ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
                | ATTR_REUSE_ALLOW_OPPORTUNISTIC
                | ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => p.reuse[attr as usize - 1] = flag(),
                ATTR_RELEASE_THRESHOLD => p.release_threshold = word(),
                // The high-water marks may only be reset (to the current value), with 0.
                ATTR_RESERVED_MEM_HIGH if word() == 0 => p.reserved_high = p.reserved,
                ATTR_USED_MEM_HIGH if word() == 0 => p.used_high = p.used,
                _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
            }
            Ok(CUresult::CUDA_SUCCESS)
        })
    })
}

/// `cuMemPoolGetAttribute`.
///
/// # Safety
/// `value` is NULL or valid for a write of the attribute's type (`int` or `cuuint64_t`).
#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    pool: CUmemoryPool,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    run("cuMemPoolGetAttribute", || {
        driver::get()?;
        if value.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        with_state(|st| {
            let (_, p) = st.pool(pool)?;
            let word = match attr {
                ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
                | ATTR_REUSE_ALLOW_OPPORTUNISTIC
                | ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => {
                    let v = c_int::from(p.reuse[attr as usize - 1]);
                    // SAFETY: non-NULL, valid for an int (the caller's promise).
                    unsafe { value.cast::<c_int>().write_unaligned(v) };
                    return Ok(CUresult::CUDA_SUCCESS);
                }
                ATTR_RELEASE_THRESHOLD => p.release_threshold,
                ATTR_RESERVED_MEM_CURRENT => p.reserved,
                ATTR_RESERVED_MEM_HIGH => p.reserved_high,
                ATTR_USED_MEM_CURRENT => p.used,
                ATTR_USED_MEM_HIGH => p.used_high,
                _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
            };
            // SAFETY: non-NULL, valid for a cuuint64_t (the caller's promise).
            unsafe { value.cast::<u64>().write_unaligned(word) };
            Ok(CUresult::CUDA_SUCCESS)
        })
    })
}

/// `cuMemPoolSetAccess`: the device itself keeps read-write access (the only access there
/// is with one device).
///
/// # Safety
/// `map` is NULL or valid for reads of `count` descriptors.
#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAccess(
    pool: CUmemoryPool,
    map: *const RawAccessDesc,
    count: usize,
) -> CUresult {
    run("cuMemPoolSetAccess", || {
        driver::get()?;
        with_state(|st| st.pool(pool).map(drop))?;
        if count > 0 && map.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        for i in 0..count {
            // SAFETY: `count` descriptors (the caller's promise); plain integers.
            let a = unsafe { map.add(i).read_unaligned() };
            match (a.location.type_, a.location.id, a.flags) {
                (LOCATION_DEVICE, 0, PROT_READWRITE) => {}
                (LOCATION_DEVICE, 0, _) => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
                (LOCATION_DEVICE, _, _) => return Err(CUresult::CUDA_ERROR_INVALID_DEVICE),
                _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
            }
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuMemPoolGetAccess`: read-write for the device.
///
/// # Safety
/// `flags` is NULL or valid for a write; `loc` NULL or valid for a read.
#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAccess(
    flags: *mut c_uint,
    pool: CUmemoryPool,
    loc: *const RawLocation,
) -> CUresult {
    run("cuMemPoolGetAccess", || {
        driver::get()?;
        with_state(|st| st.pool(pool).map(drop))?;
        if flags.is_null() || loc.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL and valid for a read (the caller's promise).
        let l = unsafe { loc.read_unaligned() };
        match (l.type_, l.id) {
            // SAFETY: non-NULL, valid for a write (the caller's promise).
            (LOCATION_DEVICE, 0) => Ok(unsafe { put(flags, PROT_READWRITE) }),
            (LOCATION_DEVICE, _) => Err(CUresult::CUDA_ERROR_INVALID_DEVICE),
            _ => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes() {
        assert_eq!(class_of(1), Some(512));
        assert_eq!(class_of(512), Some(512));
        assert_eq!(class_of(513), Some(640));
        assert_eq!(class_of(1000), Some(1024));
        assert_eq!(class_of(1025), Some(1280));
        assert_eq!(class_of((1 << 20) + 1), Some(1280 << 10));
        assert_eq!(class_of(2 << 20), Some(2 << 20));
        assert_eq!(class_of((2 << 20) + 1), Some(4 << 20));
        assert_eq!(class_of(u64::MAX), None);
        // Every class holds its request and wastes at most a quarter of it (below 2 MiB).
        for n in (1..(2u64 << 20)).step_by(997) {
            let c = class_of(n).unwrap();
            assert!(c >= n && (n <= MIN_CLASS || c - n <= n / 4), "{n} -> {c}");
            assert_eq!(class_of(c), Some(c), "a class is its own class");
        }
    }
}
