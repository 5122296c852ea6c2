//! Thin wrappers over the CUDA driver API (cudarc's `sys` bindings, loaded at run time). This
//! module and [`super::nvrtc`] hold the workspace's CUDA `unsafe` code: the cuda backend and the
//! native side of `vgpu-bench` (which must make the very calls the backend makes, to compare
//! like with like) both go through them, and everything above them deals in
//! `Result<_, CUresult>`, opaque handles and the owning host-memory types [`HostMem`] and
//! [`RegisteredMap`].
//!
//! Handles (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`) are raw driver
//! pointers. The driver validates them, and callers only pass handles they created and have not
//! destroyed yet, with the context they belong to current on the calling thread.
//!
//! That contract is why the functions taking handles are safe `fn`s although clippy cannot see
//! the handles are never dereferenced on the host (`not_unsafe_ptr_arg_deref`, allowed below).
//! The few that take host pointers into memory the caller keeps mapped are `unsafe fn`s
//! ([`memcpy_htod`], [`memcpy_dtoh`], [`host_register`], [`launch`]): the cuda backend's
//! zero-copy path, whose guest memory has no Rust owner. Everything else uses the
//! borrow-checked forms instead:
//! [`memcpy_htod_sync`], [`memcpy_dtoh_sync`], [`Kernel::launch`], [`HostMem`],
//! [`RegisteredMap`].

#![allow(clippy::not_unsafe_ptr_arg_deref)]

use cudarc::driver::sys::{self, CUjit_option};
use std::ffi::{c_void, CStr};
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};

/// The driver's handle and enum types, re-exported so that callers need no cudarc of their own.
pub use cudarc::driver::sys::{
    CUcontext, CUdevice, CUdevice_attribute, CUdeviceptr, CUevent, CUfunction, CUgraph,
    CUgraphExec, CUmodule, CUresult, CUstream,
};

/// A driver call's result.
pub type CuResult<T> = Result<T, CUresult>;

fn check(r: CUresult) -> CuResult<()> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(r)
    }
}

/// Whether `libcuda.so.1` can be loaded (never panics, unlike the first driver call when the
/// library is missing).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// Whether `libnvrtc.so` can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// `cuInit(0)`; call only after [`driver_present`].
pub fn init() -> CuResult<()> {
    // SAFETY: cuInit has no pointer arguments; the library is present (checked by callers).
    check(unsafe { sys::cuInit(0) })
}

/// Number of CUDA devices.
pub fn device_count() -> CuResult<usize> {
    let mut n = 0i32;
    // SAFETY: `n` is a valid out-pointer for the duration of the call.
    check(unsafe { sys::cuDeviceGetCount(&mut n) })?;
    Ok(n.max(0) as usize)
}

/// Device handle of ordinal `i`.
pub fn device(i: usize) -> CuResult<CUdevice> {
    let mut d = MaybeUninit::uninit();
    // SAFETY: `d` is a valid out-pointer; an out-of-range ordinal is an error, not UB.
    check(unsafe { sys::cuDeviceGet(d.as_mut_ptr(), i as i32) })?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { d.assume_init() })
}

/// The device's name.
pub fn device_name(d: CUdevice) -> CuResult<String> {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer is 256 bytes and its length is passed; the driver NUL-terminates.
    check(unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, d) })?;
    // SAFETY: NUL-terminated within the buffer (the driver guarantees it for len > 0).
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

/// The device's memory in bytes.
pub fn device_total_mem(d: CUdevice) -> CuResult<u64> {
    let mut n = 0usize;
    // SAFETY: `n` is a valid out-pointer.
    check(unsafe { sys::cuDeviceTotalMem_v2(&mut n, d) })?;
    Ok(n as u64)
}

/// A device attribute.
pub fn device_attribute(d: CUdevice, a: CUdevice_attribute) -> CuResult<i32> {
    let mut v = 0i32;
    // SAFETY: `v` is a valid out-pointer.
    check(unsafe { sys::cuDeviceGetAttribute(&mut v, a, d) })?;
    Ok(v)
}

/// A driver entry point by its C name, typed `F`: for the prototypes whose enums the binding's
/// Rust enums cannot carry (a value an enum does not declare may not be held by it), called
/// with raw integers instead.
///
/// # Safety
/// `F` is the symbol's C prototype; the driver library is loaded (a device exists).
unsafe fn raw_entry<F: Copy>(name: &[u8]) -> CuResult<F> {
    // SAFETY: the caller names the symbol's prototype.
    let f = unsafe { sys::culib().get::<F>(name) };
    f.map(|f| *f).map_err(|_| CUresult::CUDA_ERROR_NOT_FOUND)
}

/// A device attribute by its number, for every attribute the driver defines, including those
/// the Rust enum of this binding lacks (an enum may not hold a value it does not declare).
pub fn device_attribute_raw(d: CUdevice, a: i32) -> CuResult<i32> {
    type GetAttribute = unsafe extern "C" fn(*mut i32, i32, CUdevice) -> CUresult;
    // SAFETY: the symbol's C type takes the attribute as a 32-bit enum, passed as an i32.
    let f: GetAttribute = unsafe { raw_entry(b"cuDeviceGetAttribute\0")? };
    let mut v = 0i32;
    // SAFETY: `v` is a valid out-pointer; an unknown attribute is an error, not UB.
    check(unsafe { f(&mut v, a, d) })?;
    Ok(v)
}

/// Encodes a tensor map as `req` asks (`cuTensorMapEncodeTiled` or `cuTensorMapEncodeIm2col`).
/// The enums go to the driver as the raw numbers the guest gave (an unknown one is the
/// driver's error), through the symbols' C types: this binding's Rust enums may not hold a
/// value they do not declare.
pub fn tensor_map_encode(
    req: &vgpu_abi::tensormap::TensorMapRequest,
) -> CuResult<[u8; vgpu_abi::tensormap::TENSOR_MAP_BYTES]> {
    use vgpu_abi::tensormap::{KIND_IM2COL, KIND_TILED};
    type Tiled = unsafe extern "C" fn(
        *mut sys::CUtensorMap,
        u32,
        u32,
        *mut std::ffi::c_void,
        *const u64,
        *const u64,
        *const u32,
        *const u32,
        u32,
        u32,
        u32,
        u32,
    ) -> CUresult;
    type Im2col = unsafe extern "C" fn(
        *mut sys::CUtensorMap,
        u32,
        u32,
        *mut std::ffi::c_void,
        *const u64,
        *const u64,
        *const i32,
        *const i32,
        u32,
        u32,
        *const u32,
        u32,
        u32,
        u32,
        u32,
    ) -> CUresult;
    let r = req;
    // Aligned to 128 bytes, as the driver requires of a CUtensorMap.
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let addr = r.global_address as *mut std::ffi::c_void;
    let res = match r.kind {
        KIND_TILED => {
            // SAFETY: the symbol's C type takes its enums as 32-bit values, passed as u32.
            let f: Tiled = unsafe { raw_entry(b"cuTensorMapEncodeTiled\0")? };
            // SAFETY: `map` is a valid, aligned out-pointer; the arrays hold MAX_RANK entries,
            // at least the `rank` the driver reads (it refuses a larger rank); the global
            // address is only encoded, never dereferenced on the host.
            unsafe {
                f(
                    &mut map,
                    r.data_type,
                    r.rank,
                    addr,
                    r.global_dim.as_ptr(),
                    r.global_strides.as_ptr(),
                    r.box_dim.as_ptr(),
                    r.element_strides.as_ptr(),
                    r.interleave,
                    r.swizzle,
                    r.l2_promotion,
                    r.oob_fill,
                )
            }
        }
        KIND_IM2COL => {
            // SAFETY: as for the tiled encoder.
            let f: Im2col = unsafe { raw_entry(b"cuTensorMapEncodeIm2col\0")? };
            // SAFETY: as for the tiled encoder; the corners hold MAX_RANK - 2 entries, the most
            // the driver reads (rank - 2).
            unsafe {
                f(
                    &mut map,
                    r.data_type,
                    r.rank,
                    addr,
                    r.global_dim.as_ptr(),
                    r.global_strides.as_ptr(),
                    r.lower_corner.as_ptr(),
                    r.upper_corner.as_ptr(),
                    r.channels_per_pixel,
                    r.pixels_per_column,
                    r.element_strides.as_ptr(),
                    r.interleave,
                    r.swizzle,
                    r.l2_promotion,
                    r.oob_fill,
                )
            }
        }
        _ => CUresult::CUDA_ERROR_INVALID_VALUE,
    };
    check(res)?;
    let mut out = [0u8; vgpu_abi::tensormap::TENSOR_MAP_BYTES];
    for (o, w) in out.chunks_exact_mut(8).zip(map.opaque) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    Ok(out)
}

/// A function attribute by its number (every `CUfunction_attribute`, whatever this binding's
/// enum declares).
pub fn func_attribute(f: CUfunction, a: i32) -> CuResult<i32> {
    type GetAttribute = unsafe extern "C" fn(*mut i32, i32, CUfunction) -> CUresult;
    // SAFETY: the symbol's C type takes the attribute as a 32-bit enum, passed as an i32.
    let get: GetAttribute = unsafe { raw_entry(b"cuFuncGetAttribute\0")? };
    let mut v = 0i32;
    // SAFETY: `v` is a valid out-pointer; an unknown attribute or function is an error.
    check(unsafe { get(&mut v, a, f) })?;
    Ok(v)
}

/// Sets a function attribute by its number.
pub fn func_set_attribute(f: CUfunction, a: i32, v: i32) -> CuResult<()> {
    type SetAttribute = unsafe extern "C" fn(CUfunction, i32, i32) -> CUresult;
    // SAFETY: as in `func_attribute`.
    let set: SetAttribute = unsafe { raw_entry(b"cuFuncSetAttribute\0")? };
    // SAFETY: plain values; an unknown attribute or a bad value is an error.
    check(unsafe { set(f, a, v) })
}

/// The device's UUID.
pub fn device_uuid(d: CUdevice) -> CuResult<[u8; 16]> {
    let mut u = MaybeUninit::<sys::CUuuid>::zeroed();
    // SAFETY: `u` is a valid out-pointer.
    check(unsafe { sys::cuDeviceGetUuid_v2(u.as_mut_ptr(), d) })?;
    // SAFETY: initialised (zeroed, then written by the successful call).
    Ok(unsafe { u.assume_init() }.bytes.map(|b| b as u8))
}

/// The CUDA driver API version (`major * 1000 + minor * 10`, e.g. 13000).
pub fn driver_version() -> CuResult<i32> {
    let mut v = 0i32;
    // SAFETY: `v` is a valid out-pointer.
    check(unsafe { sys::cuDriverGetVersion(&mut v) })?;
    Ok(v)
}

/// Retains `d`'s primary context (the one the CUDA runtime shares; not made current). Undo
/// with [`primary_ctx_release`].
pub fn primary_ctx_retain(d: CUdevice) -> CuResult<CUcontext> {
    let mut c = ptr::null_mut();
    // SAFETY: `c` is a valid out-pointer; an invalid device is an error, not UB.
    check(unsafe { sys::cuDevicePrimaryCtxRetain(&mut c, d) })?;
    Ok(c)
}

/// Drops one reference to `d`'s primary context (destroyed with the last one).
pub fn primary_ctx_release(d: CUdevice) -> CuResult<()> {
    // SAFETY: no pointer arguments; the caller retained the context once per release.
    check(unsafe { sys::cuDevicePrimaryCtxRelease_v2(d) })
}

/// Creates a context on `d` (it becomes current on this thread).
pub fn ctx_create(d: CUdevice) -> CuResult<CUcontext> {
    let mut c = ptr::null_mut();
    // SAFETY: `c` is a valid out-pointer; NULL creation parameters are allowed (no affinity,
    // no CIG); flags 0 = automatic scheduling.
    check(unsafe { sys::cuCtxCreate_v4(&mut c, ptr::null_mut(), 0, d) })?;
    Ok(c)
}

/// Pops the current context off this thread's stack (contexts are made current with
/// [`ctx_set_current`] only, so the stack never holds a stale one).
pub fn ctx_pop() -> CuResult<()> {
    let mut c = ptr::null_mut();
    // SAFETY: `c` is a valid out-pointer.
    check(unsafe { sys::cuCtxPopCurrent_v2(&mut c) })
}

/// Leaves no context current on this thread.
pub fn ctx_clear_current() -> CuResult<()> {
    // SAFETY: NULL is allowed: it unbinds (pops) the current context.
    check(unsafe { sys::cuCtxSetCurrent(ptr::null_mut()) })
}

/// Makes `c` current on this thread.
pub fn ctx_set_current(c: CUcontext) -> CuResult<()> {
    // SAFETY: `c` is a live context created by `ctx_create` (callers' invariant).
    check(unsafe { sys::cuCtxSetCurrent(c) })
}

/// Waits for all work of the current context.
pub fn ctx_synchronize() -> CuResult<()> {
    // SAFETY: no arguments; acts on the current context.
    check(unsafe { sys::cuCtxSynchronize() })
}

/// Destroys a context and everything in it (memory, streams, events, modules).
pub fn ctx_destroy(c: CUcontext) -> CuResult<()> {
    // SAFETY: `c` is a live context; the caller drops every handle of it afterwards.
    check(unsafe { sys::cuCtxDestroy_v2(c) })
}

/// `(least, greatest)` stream priority of the current context (e.g. `(0, -5)`).
pub fn stream_priority_range() -> CuResult<(i32, i32)> {
    let (mut least, mut greatest) = (0i32, 0i32);
    // SAFETY: both are valid out-pointers.
    check(unsafe { sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest) })?;
    Ok((least, greatest))
}

/// Page-locks `[p, p+len)` for DMA in the current context.
///
/// # Safety
/// `[p, p+len)` is a live mapping, and the caller keeps it mapped until [`host_unregister`]
/// (or the context's destruction).
pub unsafe fn host_register(p: *mut u8, len: usize) -> CuResult<()> {
    // SAFETY: the caller guarantees `[p, p+len)` is a live mapping; the driver pins its pages
    // and never dereferences beyond it. Mapped into the device's address space, so that the
    // device itself may write it (`stream_write_value32`).
    check(unsafe { sys::cuMemHostRegister_v2(p.cast(), len, sys::CU_MEMHOSTREGISTER_DEVICEMAP) })
}

/// The device address of host memory registered by [`host_register`] (`p` inside it).
pub fn host_device_pointer(p: *mut u8) -> CuResult<CUdeviceptr> {
    let mut d: CUdeviceptr = 0;
    // SAFETY: `d` is a valid out-pointer; the driver only looks `p` up among its
    // registrations, it does not dereference it.
    check(unsafe { sys::cuMemHostGetDevicePointer_v2(&mut d, p.cast(), 0) })?;
    Ok(d)
}

type WriteValue32 = unsafe extern "C" fn(CUstream, CUdeviceptr, u32, std::ffi::c_uint) -> CUresult;

/// `cuStreamWriteValue32` as of CUDA 12 (the `_v2` entry point: stream memory operations
/// always enabled; the unversioned symbol, which cudarc would load, needs a driver module
/// option for them), looked up once.
fn write_value32_fn() -> CuResult<WriteValue32> {
    static F: std::sync::OnceLock<Result<usize, CUresult>> = std::sync::OnceLock::new();
    let f = (*F.get_or_init(|| {
        let mut p: *mut c_void = ptr::null_mut();
        let mut found = MaybeUninit::uninit();
        // SAFETY: a NUL-terminated name and valid out-pointers.
        check(unsafe {
            sys::cuGetProcAddress_v2(
                c"cuStreamWriteValue32".as_ptr(),
                &mut p,
                12000,
                sys::CUdriverProcAddress_flags::CU_GET_PROC_ADDRESS_DEFAULT as u64,
                found.as_mut_ptr(),
            )
        })?;
        if p.is_null() {
            return Err(CUresult::CUDA_ERROR_NOT_FOUND);
        }
        Ok(p as usize)
    }))?;
    // SAFETY: the driver returned this entry point for `cuStreamWriteValue32` at version
    // 12000, whose prototype is `WriteValue32`.
    Ok(unsafe { std::mem::transmute::<usize, WriteValue32>(f) })
}

/// Has the device write `value` at `addr` (device-visible memory, for example registered host
/// memory's [`host_device_pointer`]) once `s`'s earlier work is done, after a memory barrier,
/// so that the earlier work's writes are visible before it. (The entry point of CUDA 12 takes
/// no other flag: `CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER` is INVALID_VALUE there, measured
/// on the H200.)
pub fn stream_write_value32(s: CUstream, addr: CUdeviceptr, value: u32) -> CuResult<()> {
    let f = write_value32_fn()?;
    let flags = sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32;
    // SAFETY: a live stream of the current context; `addr` is device-visible memory the
    // caller keeps registered while work is queued (the driver checks the address).
    check(unsafe { f(s, addr, value, flags) })
}

/// Undoes [`host_register`].
pub fn host_unregister(p: *mut u8) -> CuResult<()> {
    // SAFETY: `p` was registered by `host_register` in the current context.
    check(unsafe { sys::cuMemHostUnregister(p.cast()) })
}

/// A stream with the given priority that does not synchronise with the legacy stream.
pub fn stream_create(priority: i32) -> CuResult<CUstream> {
    let mut s = ptr::null_mut();
    let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
    // SAFETY: `s` is a valid out-pointer.
    check(unsafe { sys::cuStreamCreateWithPriority(&mut s, flags, priority) })?;
    Ok(s)
}

/// Destroys a stream (work already queued on it still completes).
pub fn stream_destroy(s: CUstream) -> CuResult<()> {
    // SAFETY: `s` is a live stream of the current context, destroyed once.
    check(unsafe { sys::cuStreamDestroy_v2(s) })
}

/// Waits for all work queued on `s`.
pub fn stream_synchronize(s: CUstream) -> CuResult<()> {
    // SAFETY: `s` is a live stream of the current context.
    check(unsafe { sys::cuStreamSynchronize(s) })
}

/// An event with timing enabled.
pub fn event_create() -> CuResult<CUevent> {
    event_create_with(true, false)
}

/// An event without timing (cheaper to record and to query): completion tokens.
pub fn event_create_untimed() -> CuResult<CUevent> {
    event_create_with(false, false)
}

/// An event, timed or not; `blocking`: [`event_synchronize`] on it sleeps until the GPU
/// signals its completion instead of spinning (`CU_EVENT_BLOCKING_SYNC`).
pub fn event_create_with(timed: bool, blocking: bool) -> CuResult<CUevent> {
    let mut flags = 0u32;
    if !timed {
        flags |= sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
    }
    if blocking {
        flags |= sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32;
    }
    let mut e = ptr::null_mut();
    // SAFETY: `e` is a valid out-pointer; the flags are valid `CUevent_flags` bits.
    check(unsafe { sys::cuEventCreate(&mut e, flags) })?;
    Ok(e)
}

/// Waits until `e`'s latest record completed (sleeping when `e` is a blocking event). Any
/// thread may call it while the event lives, with the event's context current on it.
pub fn event_synchronize(e: CUevent) -> CuResult<()> {
    // SAFETY: live event of the current context.
    check(unsafe { sys::cuEventSynchronize(e) })
}

/// Records `e` on `s`.
pub fn event_record(e: CUevent, s: CUstream) -> CuResult<()> {
    // SAFETY: live event and stream of the current context.
    check(unsafe { sys::cuEventRecord(e, s) })
}

/// Whether `e` completed: `Ok(true)`, `Ok(false)` (not ready) or the error it ended with.
pub fn event_query(e: CUevent) -> CuResult<bool> {
    // SAFETY: live event of the current context.
    match unsafe { sys::cuEventQuery(e) } {
        CUresult::CUDA_SUCCESS => Ok(true),
        CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        r => Err(r),
    }
}

/// Milliseconds between two completed events.
pub fn event_elapsed_ms(start: CUevent, end: CUevent) -> CuResult<f32> {
    let mut ms = 0f32;
    // SAFETY: `ms` is a valid out-pointer; live events of the current context.
    check(unsafe { sys::cuEventElapsedTime_v2(&mut ms, start, end) })?;
    Ok(ms)
}

/// Makes `s` wait for `e`'s latest record.
pub fn stream_wait_event(s: CUstream, e: CUevent) -> CuResult<()> {
    // SAFETY: live stream and event of the current context.
    check(unsafe { sys::cuStreamWaitEvent(s, e, 0) })
}

/// Begins capturing `s` into a graph, in relaxed mode: vgpud's own calls on its worker
/// thread (allocations, synchronisations of other streams) must not invalidate the VM's
/// capture; the guest enforces the mode the program asked for.
pub fn stream_begin_capture(s: CUstream) -> CuResult<()> {
    let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
    // SAFETY: live stream of the current context.
    check(unsafe { sys::cuStreamBeginCapture_v2(s, mode) })
}

/// Ends the capture `s` began; returns its graph.
pub fn stream_end_capture(s: CUstream) -> CuResult<CUgraph> {
    let mut g = ptr::null_mut();
    // SAFETY: live stream of the current context; `g` is a valid out-pointer.
    check(unsafe { sys::cuStreamEndCapture(s, &mut g) })?;
    Ok(g)
}

/// The id of the capture `s` takes part in, `None` when it is not capturing (a capture that
/// was invalidated counts: it is still in progress until it ends).
pub fn stream_capture_id(s: CUstream) -> CuResult<Option<u64>> {
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    let mut id = 0;
    // SAFETY: live stream of the current context; `status` and `id` are valid out-pointers,
    // the others NULL (not wanted).
    check(unsafe {
        sys::cuStreamGetCaptureInfo_v3(
            s,
            &mut status,
            &mut id,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    })?;
    Ok((status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE).then_some(id))
}

/// Makes an executable graph of `g`.
pub fn graph_instantiate(g: CUgraph) -> CuResult<CUgraphExec> {
    let mut x = ptr::null_mut();
    // SAFETY: live graph; `x` is a valid out-pointer.
    check(unsafe { sys::cuGraphInstantiateWithFlags(&mut x, g, 0) })?;
    Ok(x)
}

/// Launches executable graph `x` on `s`.
pub fn graph_launch(x: CUgraphExec, s: CUstream) -> CuResult<()> {
    // SAFETY: live executable graph and stream of the current context.
    check(unsafe { sys::cuGraphLaunch(x, s) })
}

/// Destroys an executable graph.
pub fn graph_exec_destroy(x: CUgraphExec) -> CuResult<()> {
    // SAFETY: live executable graph, destroyed once.
    check(unsafe { sys::cuGraphExecDestroy(x) })
}

/// How many nodes a graph has.
pub fn graph_node_count(g: CUgraph) -> CuResult<u64> {
    let mut n = 0usize;
    // SAFETY: live graph; a NULL node array asks for the count only, written to `n`.
    check(unsafe { sys::cuGraphGetNodes(g, ptr::null_mut(), &mut n) })?;
    Ok(n as u64)
}

/// Destroys a graph.
pub fn graph_destroy(g: CUgraph) -> CuResult<()> {
    // SAFETY: live graph, destroyed once.
    check(unsafe { sys::cuGraphDestroy(g) })
}

/// Allocates device memory.
pub fn mem_alloc(size: u64) -> CuResult<CUdeviceptr> {
    let mut p = 0;
    let size = usize::try_from(size).map_err(|_| CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
    // SAFETY: `p` is a valid out-pointer.
    check(unsafe { sys::cuMemAlloc_v2(&mut p, size) })?;
    Ok(p)
}

/// Frees device memory.
pub fn mem_free(p: CUdeviceptr) -> CuResult<()> {
    // SAFETY: `p` was returned by `mem_alloc` in the current context and not freed since.
    check(unsafe { sys::cuMemFree_v2(p) })
}

/// The properties of pinned device memory on device `dev`, as [`mem_create`] makes it.
fn pinned_on(dev: CUdevice) -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct of integers and a pointer; all-zero is its default.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    prop
}

/// `(minimum, recommended)` granularity of [`mem_create`]'s memory on `dev`.
pub fn mem_granularity(dev: CUdevice) -> CuResult<(u64, u64)> {
    use sys::CUmemAllocationGranularity_flags::*;
    let prop = pinned_on(dev);
    let mut g = [0usize; 2];
    for (i, o) in [
        CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
    ]
    .into_iter()
    .enumerate()
    {
        // SAFETY: `g[i]` is a valid out-pointer, `prop` a valid property struct.
        check(unsafe { sys::cuMemGetAllocationGranularity(&mut g[i], &prop, o) })?;
    }
    Ok((g[0] as u64, g[1] as u64))
}

/// Reserves `size` bytes of device addresses (`addr`: a hint, 0 for none).
pub fn mem_address_reserve(size: u64, alignment: u64, addr: u64) -> CuResult<CUdeviceptr> {
    let mut p = 0;
    let size = usize::try_from(size).map_err(|_| CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
    let alignment = usize::try_from(alignment).map_err(|_| CUresult::CUDA_ERROR_INVALID_VALUE)?;
    // SAFETY: `p` is a valid out-pointer; addresses are only reserved, never dereferenced.
    check(unsafe { sys::cuMemAddressReserve(&mut p, size, alignment, addr, 0) })?;
    Ok(p)
}

/// Frees a reservation of [`mem_address_reserve`].
pub fn mem_address_free(p: CUdeviceptr, size: u64) -> CuResult<()> {
    // SAFETY: the driver checks the range; nothing is dereferenced on the host.
    check(unsafe { sys::cuMemAddressFree(p, size as usize) })
}

/// Creates `size` bytes of pinned device memory on `dev`; returns its handle.
pub fn mem_create(dev: CUdevice, size: u64) -> CuResult<u64> {
    let prop = pinned_on(dev);
    let size = usize::try_from(size).map_err(|_| CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
    let mut h = 0;
    // SAFETY: `h` is a valid out-pointer, `prop` a valid property struct.
    check(unsafe { sys::cuMemCreate(&mut h, size, &prop, 0) })?;
    Ok(h)
}

/// Releases a handle of [`mem_create`].
pub fn mem_release(h: u64) -> CuResult<()> {
    // SAFETY: a handle the caller created and has not released; the driver validates it.
    check(unsafe { sys::cuMemRelease(h) })
}

/// Maps `size` bytes of `h`'s memory from `offset` at `p`.
pub fn mem_map(p: CUdeviceptr, size: u64, offset: u64, h: u64) -> CuResult<()> {
    // SAFETY: the driver checks the range and the handle; nothing is dereferenced on the host.
    check(unsafe { sys::cuMemMap(p, size as usize, offset as usize, h, 0) })
}

/// Unmaps `[p, p + size)`.
pub fn mem_unmap(p: CUdeviceptr, size: u64) -> CuResult<()> {
    // SAFETY: the driver checks the range; nothing is dereferenced on the host.
    check(unsafe { sys::cuMemUnmap(p, size as usize) })
}

/// Lets device `dev` read and write the mappings of `[p, p + size)`.
pub fn mem_set_access_rw(p: CUdeviceptr, size: u64, dev: CUdevice) -> CuResult<()> {
    let desc = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: dev,
        },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: `desc` is one valid descriptor for the duration of the call.
    check(unsafe { sys::cuMemSetAccess(p, size as usize, &desc, 1) })
}

/// Fills `len` bytes with `v`.
pub fn memset_d8(dst: CUdeviceptr, v: u8, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: `[dst, dst+len)` lies in one allocation of the current context (checked by the
    // virtual device); device memory is never dereferenced on the host.
    check(unsafe { sys::cuMemsetD8Async(dst, v, len as usize, s) })
}

/// Fills `count` 32-bit words with `v`.
pub fn memset_d32(dst: CUdeviceptr, v: u32, count: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: as `memset_d8`; the range is `count * 4` bytes of one allocation.
    check(unsafe { sys::cuMemsetD32Async(dst, v, count as usize, s) })
}

/// Host → device, asynchronous on `s`.
///
/// The caller keeps `[src, src+len)` mapped (and, for zero-copy DMA, registered) until the
/// copy has completed (an event recorded after it has).
///
/// # Safety
/// `[src, src+len)` is readable memory that stays mapped until the copy has completed.
pub unsafe fn memcpy_htod(dst: CUdeviceptr, src: *const u8, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: `src` points to `len` bytes of the VM's shared region, which stays mapped while
    // the VM's context lives (the caller's invariant); the device range was checked.
    check(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast::<c_void>(), len as usize, s) })
}

/// Device → host, asynchronous on `s` (same contract as [`memcpy_htod`]).
///
/// # Safety
/// `[dst, dst+len)` is writable memory that stays mapped until the copy has completed, and no
/// Rust reference to it is used meanwhile.
pub unsafe fn memcpy_dtoh(dst: *mut u8, src: CUdeviceptr, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: `dst` points to `len` bytes of the VM's shared region, mapped while the context
    // lives; the guest may race on those bytes but they are plain shared memory (no Rust
    // references exist to them).
    check(unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast::<c_void>(), src, len as usize, s) })
}

/// Host → device on `s`, waiting for the copy (and all else queued on `s`) to complete, so
/// `src` is borrowed for no longer than the DMA reads it.
pub fn memcpy_htod_sync(dst: CUdeviceptr, src: &[u8], s: CUstream) -> CuResult<()> {
    // SAFETY: `src` is borrowed until the stream (and so the copy) has completed.
    unsafe { memcpy_htod(dst, src.as_ptr(), src.len() as u64, s)? };
    stream_synchronize(s)
}

/// Device → host on `s`, waiting as [`memcpy_htod_sync`] does (`dst` is borrowed mutably until
/// the DMA has written it).
pub fn memcpy_dtoh_sync(dst: &mut [u8], src: CUdeviceptr, s: CUstream) -> CuResult<()> {
    // SAFETY: `dst` is borrowed mutably until the stream (and so the copy) has completed.
    unsafe { memcpy_dtoh(dst.as_mut_ptr(), src, dst.len() as u64, s)? };
    stream_synchronize(s)
}

/// Device → device, asynchronous on `s`.
pub fn memcpy_dtod(dst: CUdeviceptr, src: CUdeviceptr, len: u64, s: CUstream) -> CuResult<()> {
    // SAFETY: both ranges lie in allocations of the current context (checked).
    check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, len as usize, s) })
}

/// Loads a module image (PTX text or a cubin). `image` must end with a NUL for PTX. On failure
/// the JIT's error log comes back with the error.
pub fn module_load(image: &[u8]) -> Result<CUmodule, (CUresult, String)> {
    let mut m = ptr::null_mut();
    let mut log = vec![0u8; 8192];
    let mut opts = [
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    let mut vals: [*mut c_void; 2] = [log.as_mut_ptr().cast(), log.len() as *mut c_void];
    // SAFETY: `image` is a complete, NUL-terminated PTX text or cubin that outlives the call;
    // the option arrays have 2 entries each, the log buffer is 8 KiB as announced, and the
    // size option is passed by value in the pointer slot as the API specifies.
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            &mut m,
            image.as_ptr().cast(),
            opts.len() as u32,
            opts.as_mut_ptr(),
            vals.as_mut_ptr(),
        )
    };
    match check(r) {
        Ok(()) => Ok(m),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((e, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

/// Unloads a module.
pub fn module_unload(m: CUmodule) -> CuResult<()> {
    // SAFETY: `m` is a live module of the current context; its functions are forgotten.
    check(unsafe { sys::cuModuleUnload(m) })
}

/// A kernel of `m` by name.
pub fn module_function(m: CUmodule, name: &CStr) -> CuResult<CUfunction> {
    let mut f = ptr::null_mut();
    // SAFETY: valid out-pointer, live module, NUL-terminated name.
    check(unsafe { sys::cuModuleGetFunction(&mut f, m, name.as_ptr()) })?;
    Ok(f)
}

/// The device address and size of module `m`'s global variable `name`.
pub fn module_global(m: CUmodule, name: &CStr) -> CuResult<(u64, u64)> {
    let (mut ptr, mut size) = (0, 0usize);
    // SAFETY: valid out-pointers, live module, NUL-terminated name.
    check(unsafe { sys::cuModuleGetGlobal_v2(&mut ptr, &mut size, m, name.as_ptr()) })?;
    Ok((ptr, size as u64))
}

/// `(offset, size)` of every parameter of `f` (at most `max`).
pub fn function_params(f: CUfunction, max: usize) -> CuResult<Vec<(usize, usize)>> {
    let mut out = Vec::new();
    for i in 0..max {
        let (mut off, mut size) = (0usize, 0usize);
        // SAFETY: valid out-pointers and a live function.
        let r = unsafe { sys::cuFuncGetParamInfo(f, i, &mut off, &mut size) };
        match r {
            CUresult::CUDA_SUCCESS => out.push((off, size)),
            // Past the last parameter.
            CUresult::CUDA_ERROR_INVALID_VALUE => return Ok(out),
            e => return Err(e),
        }
    }
    Ok(out)
}

/// Launches `f` on `s`, in thread block clusters of shape `cluster` if given. `params[i]`
/// points at the bytes of parameter `i`.
///
/// # Safety
/// `params` has one pointer per parameter of `f`, each to at least that parameter's size of
/// readable bytes that outlive the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn launch(
    f: CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    cluster: Option<[u32; 3]>,
    s: CUstream,
    params: &mut [*mut c_void],
) -> CuResult<()> {
    let kp = if params.is_empty() {
        ptr::null_mut()
    } else {
        params.as_mut_ptr()
    };
    if let Some([x, y, z]) = cluster {
        // SAFETY: all-zero is a valid `CUlaunchAttribute` (a plain id and a byte union).
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attr.value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x, y, z };
        let config = sys::CUlaunchConfig {
            gridDimX: grid[0],
            gridDimY: grid[1],
            gridDimZ: grid[2],
            blockDimX: block[0],
            blockDimY: block[1],
            blockDimZ: block[2],
            sharedMemBytes: shared_mem,
            hStream: s,
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as below; `config` and its one attribute outlive the call.
        return check(unsafe { sys::cuLaunchKernelEx(&config, f, kp, ptr::null_mut()) });
    }
    // SAFETY: `f` and `s` are live handles of the current context; `params` has exactly one
    // pointer per kernel parameter (the function's parameter count, from
    // `function_params`), each pointing at at least that parameter's size of readable bytes
    // that outlive the call (the driver copies them before returning).
    check(unsafe {
        sys::cuLaunchKernel(
            f,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shared_mem,
            s,
            kp,
            ptr::null_mut(),
        )
    })
}

/// A kernel of a loaded module with its parameter layout (`cuFuncGetParamInfo`), so that its
/// launches can be checked against it.
///
/// Its fields are private: [`Kernel::launch`] is sound only with the complete layout of `f`.
pub struct Kernel {
    f: CUfunction,
    params: Vec<(usize, usize)>,
}

impl Kernel {
    /// Kernel `name` of `m`; `CUDA_ERROR_NOT_SUPPORTED` when it has more than `max_params`
    /// parameters (a partial layout would make the driver read past the pointer array).
    pub fn get(m: CUmodule, name: &CStr, max_params: usize) -> CuResult<Self> {
        let f = module_function(m, name)?;
        let params = function_params(f, max_params.saturating_add(1))?;
        if params.len() > max_params {
            return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
        }
        Ok(Self { f, params })
    }

    /// `(offset, size)` of each parameter in the packed parameter bytes.
    pub fn params(&self) -> &[(usize, usize)] {
        &self.params
    }

    /// Launches it on `s` with its parameters taken from `packed` (the layout of the packed
    /// parameter structs: parameter `i` at `params[i].0`), one pointer per parameter as a CUDA
    /// program passes them. `CUDA_ERROR_INVALID_VALUE` when a parameter lies outside `packed`.
    pub fn launch(
        &self,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        s: CUstream,
        packed: &[u8],
    ) -> CuResult<()> {
        let mut ptrs = Vec::with_capacity(self.params.len());
        for &(off, size) in &self.params {
            if off.checked_add(size).is_none_or(|end| end > packed.len()) {
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
            }
            // The driver only reads through these, and copies them before returning.
            ptrs.push(packed[off..].as_ptr() as *mut c_void);
        }
        // SAFETY: one pointer per parameter of `f`, each inside `packed` (checked above),
        // which outlives the call.
        unsafe { launch(self.f, grid, block, shared_mem, None, s, &mut ptrs) }
    }
}

/// Page-locked host memory from `cuMemHostAlloc` (flags 0: portable to no other context),
/// zeroed, freed on drop.
///
/// Drop it while the context it was allocated in is alive: destroying or releasing the context
/// frees the memory itself.
pub struct HostMem {
    ptr: NonNull<u8>,
    len: usize,
}

impl HostMem {
    /// Allocates `len` (> 0) bytes in the current context.
    pub fn new(len: usize) -> CuResult<Self> {
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer; flags 0 = plain page-locked memory.
        check(unsafe { sys::cuMemHostAlloc(&mut p, len, 0) })?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
        // The driver hands out uninitialised memory; slices of it must not exist before it is
        // written once.
        // SAFETY: `ptr` points at `len` writable bytes owned by nobody else yet.
        unsafe { ptr.as_ptr().write_bytes(0, len) };
        Ok(Self { ptr, len })
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its bytes. Copies into or out of it ([`memcpy_htod`], [`memcpy_dtoh`]) must have
    /// completed (their stream synchronised) before they are read or written here.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points at `len` initialised bytes owned by this value until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Its bytes, writable (same rule as [`HostMem::as_slice`]).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated by `cuMemHostAlloc` in `new` and freed exactly once, here; nothing
        // borrows it any more. A failure (a context already gone) is of no use at teardown.
        let _ = unsafe { sys::cuMemFreeHost(self.ptr.as_ptr().cast()) };
    }
}

/// A host mapping page-locked with [`host_register`] in the current context for as long as
/// this value lives: owning the mapping keeps it mapped until after [`host_unregister`].
///
/// Drop it while that context is current (or already destroyed, which unregisters it anyway).
pub struct RegisteredMap {
    map: memmap2::MmapMut,
}

impl RegisteredMap {
    /// Registers the whole of `map`.
    pub fn new(mut map: memmap2::MmapMut) -> CuResult<Self> {
        // SAFETY: `map` is a live mapping that this value owns until after it unregisters it.
        unsafe { host_register(map.as_mut_ptr(), map.len())? };
        Ok(Self { map })
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Its bytes (same rule as [`HostMem::as_slice`] for copies in flight).
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// Its bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

impl Drop for RegisteredMap {
    fn drop(&mut self) {
        // Unregistered before `map` (a field) is unmapped, right after this.
        let _ = host_unregister(self.map.as_mut_ptr());
    }
}
