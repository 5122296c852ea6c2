//! Contexts: the device's primary context (what the CUDA runtime uses), contexts a program
//! creates itself, and each thread's context stack.
//!
//! Every context of the process runs on the VM's one context in vgpud, so all of them share
//! one device address space; they differ in their flags, limits and identity, which is what
//! programs observe of them without a second device.

use std::cell::RefCell;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::device::DEVICE;
use super::{put, run};
use crate::driver;
use crate::handles::Registry;
use crate::types::{CUcontext, CUdevice, CUresult};
use vgpu_guest::WaitPolicy;

/// One context. Its address is its `CUcontext` handle.
#[derive(Debug)]
pub struct Context {
    /// Unique id (`cuCtxGetId`).
    pub id: u64,
    /// `CU_CTX_*` flags.
    pub flags: Mutex<u32>,
    /// `CUlimit` values, by limit number (`None`: the limit is not supported).
    limits: Mutex<[Option<usize>; 10]>,
}

/// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`.
const ATTR_MAX_SHARED_OPTIN: usize = 97;
/// `CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE`.
const ATTR_MAX_PERSISTING_L2: usize = 108;

/// A new context's limits, as NVIDIA's driver 580 answered them on an H200 (`drvapi.cu` prints
/// them natively and through vgpu): stack 1 KiB, printf FIFO 8 650 752 bytes, malloc heap
/// 8 MiB, device-runtime sync depth not supported, 2048 pending launches, L2 fetch granularity
/// 64, the persisting L2 cache at 30 % of the device's maximum (11 796 480 of 39 321 600
/// bytes there), the shared memory size at the device's opt-in maximum, not a
/// CUDA-in-graphics context, its shared memory fallback not supported. They are the context's
/// values for the program to read; kernels run with the host's.
fn default_limits() -> [Option<usize>; 10] {
    let attr = |a| {
        driver::get()
            .ok()
            .and_then(|d| d.info.attribute(a))
            .map_or(0, |v| v.max(0) as usize)
    };
    [
        Some(1024),
        Some(8_650_752),
        Some(8 << 20),
        None,
        Some(2048),
        Some(64),
        Some(attr(ATTR_MAX_PERSISTING_L2) / 10 * 3),
        Some(attr(ATTR_MAX_SHARED_OPTIN)),
        Some(0),
        None,
    ]
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Context {
    fn new(flags: u32) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            flags: Mutex::new(flags),
            limits: Mutex::new(default_limits()),
        }
    }
    fn handle(&'static self) -> CUcontext {
        self as *const Context as CUcontext
    }
}

/// The primary context and its state.
struct Primary {
    ctx: &'static Context,
    retained: u32,
}

static PRIMARY: Mutex<Option<Primary>> = Mutex::new(None);

/// Contexts alive: the primary one once made, and every created one not yet destroyed.
static LIVE: Registry<Context> = Registry::new();

thread_local! {
    static STACK: RefCell<Vec<CUcontext>> = const { RefCell::new(Vec::new()) };
}

fn primary() -> &'static Context {
    let mut p = PRIMARY.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = p
        .get_or_insert_with(|| {
            let ctx = LIVE.add(Context::new(0));
            Primary { ctx, retained: 0 }
        })
        .ctx;
    ctx
}

/// The context behind a handle, if it is alive.
pub fn resolve(c: CUcontext) -> Option<&'static Context> {
    LIVE.get(c as usize)
}

/// The calling thread's current context (NULL when none, and while the thread's locals are
/// being destroyed: the runtime unloads its modules from a destructor at exit).
pub fn current() -> CUcontext {
    STACK
        .try_with(|s| s.borrow().last().copied())
        .ok()
        .flatten()
        .unwrap_or(std::ptr::null_mut())
}

/// The current context, or `CUDA_ERROR_INVALID_CONTEXT` when the thread has none, or the
/// device's sticky error when its context broke.
pub fn require_current() -> Result<&'static Context, CUresult> {
    let c = resolve(current()).ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
    driver::get()?.sticky()?;
    Ok(c)
}

/// `CU_CTX_SCHED_MASK` and its values.
const SCHED_MASK: u32 = 0x07;
const SCHED_SPIN: u32 = 0x01;
const SCHED_YIELD: u32 = 0x02;
const SCHED_BLOCKING_SYNC: u32 = 0x04;

/// How a thread of context `c` waits for the device, by the context's `CU_CTX_SCHED_*` flag as
/// NVIDIA documents it: spin, yield, or block; automatic (0) spins unless the process has
/// more contexts than the machine has logical CPUs, then yields.
pub fn wait_policy(c: &Context) -> WaitPolicy {
    if let Some(p) = *WAIT_OVERRIDE {
        return p;
    }
    let flags = *c.flags.lock().unwrap_or_else(|e| e.into_inner());
    match flags & SCHED_MASK {
        SCHED_SPIN => WaitPolicy::Spin,
        SCHED_YIELD => WaitPolicy::Yield,
        SCHED_BLOCKING_SYNC => WaitPolicy::Block,
        _ => {
            if LIVE.len() > *CPUS {
                WaitPolicy::Yield
            } else {
                WaitPolicy::Spin
            }
        }
    }
}

/// Logical CPUs this process may use, asked once: the answer costs file reads (cgroup
/// quotas) and system calls, far more than a wait it would decide.
static CPUS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

/// `VGPU_CUDA_WAIT` = `spin`, `yield`, `block` or `eager` (spin 30 µs, then block): how every
/// wait waits, whatever the contexts' flags say.
static WAIT_OVERRIDE: std::sync::LazyLock<Option<WaitPolicy>> =
    std::sync::LazyLock::new(|| match std::env::var("VGPU_CUDA_WAIT").ok()?.as_str() {
        "spin" => Some(WaitPolicy::Spin),
        "yield" => Some(WaitPolicy::Yield),
        "block" => Some(WaitPolicy::Block),
        "eager" => Some(WaitPolicy::Eager),
        _ => None,
    });

thread_local! {
    /// A policy for this thread's waits that beats its context's, while set (a wait for an event
    /// created with `CU_EVENT_BLOCKING_SYNC`).
    static WAIT_FOR: std::cell::Cell<Option<WaitPolicy>> = const { std::cell::Cell::new(None) };
}

/// How the calling thread waits for the device now: by its current context's scheduling flag
/// ([`wait_policy`]); `None` without a current context. The device asks it at the start of each
/// wait, on the waiting thread (`vgpu_guest::Device::set_wait_policy_source`).
pub fn current_wait_policy() -> Option<WaitPolicy> {
    WAIT_FOR
        .try_with(|w| w.get())
        .ok()
        .flatten()
        .or_else(|| resolve(current()).map(wait_policy))
}

/// Runs `f` with this thread's waits done as `p`.
pub fn waiting_as<T>(p: WaitPolicy, f: impl FnOnce() -> T) -> T {
    let before = WAIT_FOR.with(|w| w.replace(Some(p)));
    let out = f();
    WAIT_FOR.with(|w| w.set(before));
    out
}

fn check_device(dev: CUdevice) -> Result<(), CUresult> {
    driver::get()?;
    if dev == DEVICE {
        Ok(())
    } else {
        Err(CUresult::CUDA_ERROR_INVALID_DEVICE)
    }
}

/// `cuDevicePrimaryCtxRetain`: the primary context, retained, not made current.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    run("cuDevicePrimaryCtxRetain", || {
        check_device(dev)?;
        if pctx.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let ctx = primary();
        if let Some(p) = PRIMARY.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            p.retained += 1;
        }
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pctx, ctx.handle()) })
    })
}

fn primary_release(dev: CUdevice) -> Result<CUresult, CUresult> {
    check_device(dev)?;
    let mut p = PRIMARY.lock().unwrap_or_else(|e| e.into_inner());
    match p.as_mut() {
        Some(p) if p.retained > 0 => {
            p.retained -= 1;
            Ok(CUresult::CUDA_SUCCESS)
        }
        _ => Err(CUresult::CUDA_ERROR_INVALID_CONTEXT),
    }
}

/// `cuDevicePrimaryCtxRelease`.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    run("cuDevicePrimaryCtxRelease", || primary_release(dev))
}

/// `cuDevicePrimaryCtxRelease_v2`.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    run("cuDevicePrimaryCtxRelease_v2", || primary_release(dev))
}

/// `cuDevicePrimaryCtxGetState`: its flags and whether it is retained.
///
/// # Safety
/// `flags` and `active` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    run("cuDevicePrimaryCtxGetState", || {
        check_device(dev)?;
        if flags.is_null() || active.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let f = *primary().flags.lock().unwrap_or_else(|e| e.into_inner());
        let on = PRIMARY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|p| p.retained > 0);
        // SAFETY: both non-NULL and valid for writes (the caller's promise).
        unsafe {
            flags.write(f);
            active.write(c_int::from(on));
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

fn primary_set_flags(dev: CUdevice, flags: c_uint) -> Result<CUresult, CUresult> {
    check_device(dev)?;
    // CU_CTX_SCHED_MASK | CU_CTX_MAP_HOST | CU_CTX_LMEM_RESIZE_TO_MAX | CU_CTX_COREDUMP_ENABLE
    // | CU_CTX_USER_COREDUMP_ENABLE | CU_CTX_SYNC_MEMOPS
    if flags & !0x3f & !0x80 & !0x10 & !0x20 != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    *primary().flags.lock().unwrap_or_else(|e| e.into_inner()) = flags;
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuDevicePrimaryCtxSetFlags`.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) -> CUresult {
    run("cuDevicePrimaryCtxSetFlags", || {
        primary_set_flags(dev, flags)
    })
}

/// `cuDevicePrimaryCtxSetFlags_v2`.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) -> CUresult {
    run("cuDevicePrimaryCtxSetFlags_v2", || {
        primary_set_flags(dev, flags)
    })
}

/// `cuCtxGetCurrent`: NULL (and success) when the thread has no context.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    run("cuCtxGetCurrent", || {
        driver::get()?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(pctx, current()) })
    })
}

/// `cuCtxSetCurrent`: replaces the top of the thread's stack (NULL pops it).
#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    run("cuCtxSetCurrent", || {
        driver::get()?;
        if !ctx.is_null() && resolve(ctx).is_none() {
            return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
        }
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            s.pop();
            if !ctx.is_null() {
                s.push(ctx);
            }
        });
        Ok(CUresult::CUDA_SUCCESS)
    })
}

fn push(ctx: CUcontext) -> Result<CUresult, CUresult> {
    driver::get()?;
    if resolve(ctx).is_none() {
        return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
    }
    STACK.with(|s| s.borrow_mut().push(ctx));
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuCtxPushCurrent_v2`.
#[no_mangle]
pub extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    run("cuCtxPushCurrent_v2", || push(ctx))
}

/// `cuCtxPushCurrent`.
#[no_mangle]
pub extern "C" fn cuCtxPushCurrent(ctx: CUcontext) -> CUresult {
    run("cuCtxPushCurrent", || push(ctx))
}

/// # Safety
/// `pctx` is NULL or valid for a write.
unsafe fn pop(pctx: *mut CUcontext) -> Result<CUresult, CUresult> {
    driver::get()?;
    let top = STACK
        .with(|s| s.borrow_mut().pop())
        .ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
    if !pctx.is_null() {
        // SAFETY: non-NULL, valid for a write (the caller's promise).
        unsafe { pctx.write(top) };
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuCtxPopCurrent_v2`.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuCtxPopCurrent_v2", || unsafe { pop(pctx) })
}

/// `cuCtxPopCurrent`.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent(pctx: *mut CUcontext) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuCtxPopCurrent", || unsafe { pop(pctx) })
}

/// # Safety
/// `dev` is NULL or valid for a write.
unsafe fn ctx_device(dev: *mut CUdevice, ctx: CUcontext) -> Result<CUresult, CUresult> {
    driver::get()?;
    let c = if ctx.is_null() { current() } else { ctx };
    resolve(c).ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
    // SAFETY: forwarded from the caller.
    Ok(unsafe { put(dev, DEVICE) })
}

/// `cuCtxGetDevice`: the current context's device.
///
/// # Safety
/// `dev` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuCtxGetDevice", || unsafe {
        ctx_device(dev, std::ptr::null_mut())
    })
}

/// `cuCtxGetDevice_v2`: `ctx`'s device (NULL = the current context).
///
/// # Safety
/// `dev` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice_v2(dev: *mut CUdevice, ctx: CUcontext) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuCtxGetDevice_v2", || unsafe { ctx_device(dev, ctx) })
}

/// `cuCtxGetFlags`.
///
/// # Safety
/// `flags` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut c_uint) -> CUresult {
    run("cuCtxGetFlags", || {
        let c = require_current()?;
        let f = *c.flags.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(flags, f) })
    })
}

/// `cuCtxGetId`.
///
/// # Safety
/// `id` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetId(ctx: CUcontext, id: *mut u64) -> CUresult {
    run("cuCtxGetId", || {
        driver::get()?;
        let c = resolve(if ctx.is_null() { current() } else { ctx })
            .ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(id, c.id) })
    })
}

/// `cuCtxGetApiVersion`: 3020, the API version of contexts made through the `_v2` entry
/// points (every context of this library).
///
/// # Safety
/// `version` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetApiVersion(ctx: CUcontext, version: *mut c_uint) -> CUresult {
    run("cuCtxGetApiVersion", || {
        driver::get()?;
        resolve(if ctx.is_null() { current() } else { ctx })
            .ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(version, 3020) })
    })
}

/// `cuCtxGetStreamPriorityRange`: 0 (lowest) to -5 (highest), the range NVIDIA's driver
/// reports on the Hopper GPUs vgpu runs on.
///
/// # Safety
/// Each pointer is NULL (not wanted) or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CUresult {
    run("cuCtxGetStreamPriorityRange", || {
        require_current()?;
        // SAFETY: each is NULL or valid for a write (the caller's promise).
        unsafe {
            if !least.is_null() {
                least.write(0);
            }
            if !greatest.is_null() {
                greatest.write(-5);
            }
        }
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuCtxGetLimit`.
///
/// # Safety
/// `value` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetLimit(value: *mut usize, limit: c_int) -> CUresult {
    run("cuCtxGetLimit", || {
        let c = require_current()?;
        let l = c.limits.lock().unwrap_or_else(|e| e.into_inner());
        let v = usize::try_from(limit)
            .ok()
            .and_then(|i| l.get(i).copied().flatten())
            .ok_or(CUresult::CUDA_ERROR_UNSUPPORTED_LIMIT)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(value, v) })
    })
}

/// `cuCtxSetLimit`: recorded; the limits apply to kernels on the host, which keep the host's.
#[no_mangle]
pub extern "C" fn cuCtxSetLimit(limit: c_int, value: usize) -> CUresult {
    run("cuCtxSetLimit", || {
        let c = require_current()?;
        // CU_LIMIT_SHMEM_SIZE and CU_LIMIT_CIG_ENABLED can only be queried.
        if limit == 7 || limit == 8 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let mut l = c.limits.lock().unwrap_or_else(|e| e.into_inner());
        let slot = usize::try_from(limit)
            .ok()
            .and_then(|i| l.get_mut(i))
            .filter(|v| v.is_some())
            .ok_or(CUresult::CUDA_ERROR_UNSUPPORTED_LIMIT)?;
        *slot = Some(value);
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuCtxSynchronize`: waits for all work of the device.
#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    run("cuCtxSynchronize", || {
        require_current()?;
        synchronize_all()
    })
}

/// `cuCtxSynchronize_v2`: waits for all work of `ctx` (NULL = the current context).
#[no_mangle]
pub extern "C" fn cuCtxSynchronize_v2(ctx: CUcontext) -> CUresult {
    run("cuCtxSynchronize_v2", || {
        driver::get()?;
        resolve(if ctx.is_null() { current() } else { ctx })
            .ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
        synchronize_all()
    })
}

/// Waits for every stream of the VM (every context's: they share vgpud's streams); what it
/// covered needs no implicit legacy-stream wait any more.
fn synchronize_all() -> Result<CUresult, CUresult> {
    super::graph::unsafe_call()?;
    let d = driver::get()?;
    let mark = crate::legacy::mark();
    d.dev.synchronize().map_err(|e| driver::error_of(&e))?;
    crate::legacy::all_synchronized(mark);
    driver::unclaimed_error(d)?;
    Ok(CUresult::CUDA_SUCCESS)
}

/// # Safety
/// `pctx` is NULL or valid for a write.
unsafe fn create(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> Result<CUresult, CUresult> {
    check_device(dev)?;
    if pctx.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let ctx = LIVE.add(Context::new(flags));
    STACK.with(|s| s.borrow_mut().push(ctx.handle()));
    // SAFETY: non-NULL, valid for a write (the caller's promise).
    unsafe { pctx.write(ctx.handle()) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuCtxCreate_v2`: a new context, made current.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(
    pctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuCtxCreate_v2", || unsafe { create(pctx, flags, dev) })
}

/// `CUctxCreateParams` of the CUDA 13.0 headers.
#[repr(C)]
pub struct CtxCreateParams {
    exec_affinity_params: *mut c_void,
    num_exec_affinity_params: c_int,
    cig_params: *mut c_void,
}

/// `cuCtxCreate_v4` (CUDA 13's `cuCtxCreate`): as [`cuCtxCreate_v2`]; execution affinity
/// (SM partitions) and CUDA-in-graphics contexts are not available on a vGPU.
///
/// # Safety
/// `pctx` is NULL or valid for a write; `params` is NULL or points to a `CUctxCreateParams`.
#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut CUcontext,
    params: *mut CtxCreateParams,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    run("cuCtxCreate_v4", || {
        // SAFETY: NULL or a valid `CUctxCreateParams` (the caller's promise).
        if let Some(p) = unsafe { params.as_ref() } {
            if p.num_exec_affinity_params != 0 || !p.cig_params.is_null() {
                return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { create(pctx, flags, dev) }
    })
}

/// `cuCtxDestroy_v2`: the context is popped from the calling thread's stack. Its memory is
/// the VM's (one address space), so nothing is freed with it.
///
/// # Safety
/// `ctx` is any value; only a live context's handle is acted on.
#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    run("cuCtxDestroy_v2", || {
        driver::get()?;
        if resolve(ctx).is_none() || ctx == primary().handle() {
            return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
        }
        LIVE.retire(ctx as usize);
        STACK.with(|s| s.borrow_mut().retain(|&c| c != ctx));
        // SAFETY: the context is gone: the runtime's state kept for it may be freed.
        unsafe { crate::dark_api::context_destroyed(ctx) };
        // The Context stays leaked: a stale handle must never point at reused memory.
        Ok(CUresult::CUDA_SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduling_flags_choose_how_waits_wait() {
        let policy = |flags| wait_policy(&Context::new(flags));
        assert_eq!(policy(SCHED_SPIN), WaitPolicy::Spin);
        assert_eq!(policy(SCHED_YIELD), WaitPolicy::Yield);
        assert_eq!(policy(SCHED_BLOCKING_SYNC), WaitPolicy::Block);
        // Other flag bits do not matter.
        assert_eq!(policy(SCHED_BLOCKING_SYNC | 0x08), WaitPolicy::Block);
        // Automatic: spin while the process has no more contexts than logical CPUs.
        if LIVE.len() <= *CPUS {
            assert_eq!(policy(0), WaitPolicy::Spin);
        }
    }
}
