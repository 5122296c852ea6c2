//! Streams. A `CUstream` is the address of a [`StreamObj`]; the legacy default stream (NULL
//! or `CU_STREAM_LEGACY`) is vgpud's stream 0 and the per-thread default stream
//! (`CU_STREAM_PER_THREAD`, or NULL through the `_ptsz`/`_ptds` entry points) is a stream of
//! the thread's own. Work is queued through [`enqueue`], which first queues the legacy
//! stream's implicit synchronisation with the blocking streams ([`crate::legacy`]).
//!
//! vgpud bounds the distinct stream ids a VM uses (`MAX_STREAMS`, 1024, or the host's lower
//! `limits.max_streams`); ids of destroyed streams are reused, so the bound is on streams
//! alive at once.

use std::cell::Cell;
use std::ffi::{c_int, c_uint, c_void};
use std::ops::Deref;
use std::sync::Mutex;

use vgpu_guest::Stream;

use super::context::{current, require_current};
use super::{put, run};
use crate::driver::{self, Driver};
use crate::handles::Registry;
use crate::legacy::{self, Held, Kind};
use crate::types::{CUcontext, CUresult, CUstream};

/// `CU_STREAM_LEGACY`.
pub const STREAM_LEGACY: usize = 0x1;
/// `CU_STREAM_PER_THREAD`.
pub const STREAM_PER_THREAD: usize = 0x2;
/// `CU_STREAM_NON_BLOCKING`.
pub const NON_BLOCKING: u32 = 0x1;

/// A stream a program created.
#[derive(Debug)]
pub struct StreamObj {
    /// vgpud's stream id.
    pub id: u32,
    /// `CU_STREAM_*` flags.
    pub flags: u32,
    /// Priority as asked (clamped to the context's range).
    pub priority: i32,
    /// The context it was created in.
    pub ctx: CUcontext,
}

// SAFETY: `ctx` is an opaque handle (never dereferenced through this struct); the rest is
// plain data.
unsafe impl Send for StreamObj {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for StreamObj {}

/// Streams alive, by handle.
static LIVE: Registry<StreamObj> = Registry::new();
/// Stream ids free for reuse.
static FREE_IDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's per-thread default stream id (0 = not made yet).
    static PER_THREAD: Cell<u32> = const { Cell::new(0) };
}

fn new_id(d: &'static Driver) -> u32 {
    FREE_IDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_else(|| d.dev.create_stream().id())
}

/// The vgpud stream id behind `s`. `per_thread` is set for the `_ptsz`/`_ptds` entry points,
/// where NULL names the per-thread default stream.
pub fn resolve(s: CUstream, per_thread: bool) -> Result<u32, CUresult> {
    target(s, per_thread).map(|(id, ..)| id)
}

/// Whether `s` is a blocking stream (ordered against the legacy stream).
pub(crate) fn is_blocking(s: CUstream, per_thread: bool) -> Result<bool, CUresult> {
    target(s, per_thread).map(|(_, kind, _)| kind == Kind::Blocking)
}

/// The vgpud stream id behind `s`, how it takes part in the legacy stream's synchronisation,
/// and the context whose order it follows (its own, or the thread's current one for the
/// default streams).
fn target(s: CUstream, per_thread: bool) -> Result<(u32, Kind, usize), CUresult> {
    let d = driver::get()?;
    let raw = s as usize;
    if raw == STREAM_PER_THREAD || (raw == 0 && per_thread) {
        let id = PER_THREAD.with(|c| {
            if c.get() == 0 {
                c.set(new_id(d));
            }
            c.get()
        });
        // The per-thread default stream is a blocking stream.
        return Ok((id, Kind::Blocking, current() as usize));
    }
    if raw == 0 || raw == STREAM_LEGACY {
        return Ok((0, Kind::Legacy, current() as usize));
    }
    let o = obj(s).ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
    let kind = if o.flags & NON_BLOCKING != 0 {
        Kind::NonBlocking
    } else {
        Kind::Blocking
    };
    Ok((o.id, kind, o.ctx as usize))
}

/// A stream ready for an operation's work: the legacy stream's implicit waits are queued, and
/// another thread's work is held back until this is dropped. Queue the work, then drop it
/// before waiting for a completion.
#[derive(Debug)]
pub struct Queued {
    stream: Stream<'static>,
    held: Held,
}

impl Queued {
    /// The operation's place in the legacy stream's ordering (for a synchronisation).
    fn seq(&self) -> u64 {
        self.held.seq()
    }
}

impl Deref for Queued {
    type Target = Stream<'static>;
    fn deref(&self) -> &Stream<'static> {
        &self.stream
    }
}

/// Stream `s`, ready for work (see [`Queued`]). `per_thread` as for [`resolve`].
pub fn enqueue(s: CUstream, per_thread: bool) -> Result<Queued, CUresult> {
    let (id, mut kind, ctx) = target(s, per_thread)?;
    let d = driver::get()?;
    if kind == Kind::Legacy {
        super::graph::refuse_legacy(ctx)?;
    } else if super::graph::capture_of(id).is_some() {
        // A capturing stream takes no part in the legacy stream's implicit synchronisation:
        // no join or tail event of the guest's may be captured.
        kind = Kind::NonBlocking;
    }
    let held = legacy::before_work(&d.dev, ctx, kind, id).map_err(|e| driver::error_of(&e))?;
    Ok(Queued {
        stream: d.dev.stream(id),
        held,
    })
}

/// The vgpud stream `id` as a guest stream.
pub fn stream(id: u32) -> Result<Stream<'static>, CUresult> {
    Ok(driver::get()?.dev.stream(id))
}

fn obj(s: CUstream) -> Option<&'static StreamObj> {
    LIVE.get(s as usize)
}

/// # Safety
/// `ph` is NULL or valid for a write.
unsafe fn create(ph: *mut CUstream, flags: c_uint, priority: c_int) -> Result<CUresult, CUresult> {
    require_current()?;
    let d = driver::get()?;
    if ph.is_null() || flags & !NON_BLOCKING != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let obj = LIVE.add(StreamObj {
        id: new_id(d),
        flags,
        priority: priority.clamp(-5, 0),
        ctx: current(),
    });
    let h = Registry::handle(obj) as CUstream;
    // SAFETY: non-NULL and valid for a write (the caller's promise).
    unsafe { ph.write(h) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuStreamCreate`.
///
/// # Safety
/// `ph` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut CUstream, flags: c_uint) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamCreate", || unsafe { create(ph, flags, 0) })
}

/// `cuStreamCreateWithPriority`. Priorities are recorded and reported; vgpud schedules by
/// the VM's priority and pool.
///
/// # Safety
/// `ph` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph: *mut CUstream,
    flags: c_uint,
    priority: c_int,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamCreateWithPriority", || unsafe {
        create(ph, flags, priority)
    })
}

fn destroy(s: CUstream) -> Result<CUresult, CUresult> {
    driver::get()?;
    let o = obj(s).ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)?;
    LIVE.retire(s as usize);
    // Work already queued on the stream still completes; the id is reused only for work
    // queued after it, which vgpud orders after it (a stronger order than CUDA's).
    FREE_IDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(o.id);
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuStreamDestroy_v2`.
#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(s: CUstream) -> CUresult {
    run("cuStreamDestroy_v2", || destroy(s))
}

/// `cuStreamDestroy`.
#[no_mangle]
pub extern "C" fn cuStreamDestroy(s: CUstream) -> CUresult {
    run("cuStreamDestroy", || destroy(s))
}

/// Waits for stream `s`'s earlier work (for the legacy stream, the blocking streams' too).
pub(crate) fn synchronize(s: CUstream, per_thread: bool) -> Result<CUresult, CUresult> {
    require_current()?;
    let (id, kind, ctx) = target(s, per_thread)?;
    super::graph::refuse_if_capturing(id)?;
    // The legacy stream's synchronisation is an operation on it: it waits for the blocking
    // streams' earlier work too. A blocking stream's waits for its own work only.
    let mark = match kind {
        Kind::Legacy => enqueue(s, per_thread)?.seq(),
        Kind::Blocking | Kind::NonBlocking => legacy::mark(),
    };
    stream(id)?
        .synchronize()
        .map_err(|e| driver::error_of(&e))?;
    legacy::synchronized(ctx, kind, id, mark);
    driver::unclaimed_error(driver::get()?)?;
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuStreamSynchronize`.
#[no_mangle]
pub extern "C" fn cuStreamSynchronize(s: CUstream) -> CUresult {
    run("cuStreamSynchronize", || synchronize(s, false))
}

/// `cuStreamSynchronize_ptsz`.
#[no_mangle]
pub extern "C" fn cuStreamSynchronize_ptsz(s: CUstream) -> CUresult {
    run("cuStreamSynchronize_ptsz", || synchronize(s, true))
}

fn query(s: CUstream, per_thread: bool) -> Result<CUresult, CUresult> {
    require_current()?;
    let id = resolve(s, per_thread)?;
    super::graph::refuse_if_capturing(id)?;
    match stream(id)?.query() {
        Ok(true) => Ok(CUresult::CUDA_SUCCESS),
        Ok(false) => Ok(CUresult::CUDA_ERROR_NOT_READY),
        Err(e) => Err(driver::error_of(&e)),
    }
}

/// `cuStreamQuery`.
#[no_mangle]
pub extern "C" fn cuStreamQuery(s: CUstream) -> CUresult {
    run("cuStreamQuery", || query(s, false))
}

/// `cuStreamQuery_ptsz`.
#[no_mangle]
pub extern "C" fn cuStreamQuery_ptsz(s: CUstream) -> CUresult {
    run("cuStreamQuery_ptsz", || query(s, true))
}

/// # Safety
/// `flags` is NULL or valid for a write.
unsafe fn get_flags(
    s: CUstream,
    flags: *mut c_uint,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    resolve(s, per_thread)?;
    // The default streams are blocking streams.
    let f = obj(s).map_or(0, |o| o.flags);
    // SAFETY: forwarded from the caller.
    Ok(unsafe { put(flags, f) })
}

/// `cuStreamGetFlags`.
///
/// # Safety
/// `flags` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetFlags(s: CUstream, flags: *mut c_uint) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetFlags", || unsafe { get_flags(s, flags, false) })
}

/// `cuStreamGetFlags_ptsz`.
///
/// # Safety
/// `flags` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetFlags_ptsz(s: CUstream, flags: *mut c_uint) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetFlags_ptsz", || unsafe {
        get_flags(s, flags, true)
    })
}

/// # Safety
/// `prio` is NULL or valid for a write.
unsafe fn get_priority(
    s: CUstream,
    prio: *mut c_int,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    resolve(s, per_thread)?;
    let p = obj(s).map_or(0, |o| o.priority);
    // SAFETY: forwarded from the caller.
    Ok(unsafe { put(prio, p) })
}

/// `cuStreamGetPriority`.
///
/// # Safety
/// `prio` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetPriority(s: CUstream, prio: *mut c_int) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetPriority", || unsafe {
        get_priority(s, prio, false)
    })
}

/// `cuStreamGetPriority_ptsz`.
///
/// # Safety
/// `prio` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetPriority_ptsz(s: CUstream, prio: *mut c_int) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetPriority_ptsz", || unsafe {
        get_priority(s, prio, true)
    })
}

/// # Safety
/// `pctx` is NULL or valid for a write.
unsafe fn get_ctx(
    s: CUstream,
    pctx: *mut CUcontext,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    resolve(s, per_thread)?;
    let c = match obj(s) {
        Some(o) => o.ctx,
        None => require_current()? as *const _ as CUcontext,
    };
    // SAFETY: forwarded from the caller.
    Ok(unsafe { put(pctx, c) })
}

/// `cuStreamGetCtx`.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCtx(s: CUstream, pctx: *mut CUcontext) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetCtx", || unsafe { get_ctx(s, pctx, false) })
}

/// `cuStreamGetCtx_ptsz`.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCtx_ptsz(s: CUstream, pctx: *mut CUcontext) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetCtx_ptsz", || unsafe { get_ctx(s, pctx, true) })
}

/// # Safety
/// `id` is NULL or valid for a write.
unsafe fn get_id(s: CUstream, out: *mut u64, per_thread: bool) -> Result<CUresult, CUresult> {
    let id = resolve(s, per_thread)?;
    // SAFETY: forwarded from the caller.
    Ok(unsafe { put(out, u64::from(id)) })
}

/// `cuStreamGetId`: vgpud's stream id (unique among the process's live streams).
///
/// # Safety
/// `id` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetId(s: CUstream, id: *mut u64) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetId", || unsafe { get_id(s, id, false) })
}

/// `cuStreamGetId_ptsz`.
///
/// # Safety
/// `id` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamGetId_ptsz(s: CUstream, id: *mut u64) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamGetId_ptsz", || unsafe { get_id(s, id, true) })
}

/// # Safety
/// `status` is NULL or valid for a write.
unsafe fn is_capturing(
    s: CUstream,
    status: *mut c_int,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    let id = resolve(s, per_thread)?;
    let (st, ..) = super::graph::status_of(id);
    // SAFETY: forwarded from the caller.
    Ok(unsafe { put(status, st) })
}

/// `cuStreamIsCapturing`.
///
/// # Safety
/// `status` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(s: CUstream, status: *mut c_int) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamIsCapturing", || unsafe {
        is_capturing(s, status, false)
    })
}

/// `cuStreamIsCapturing_ptsz`.
///
/// # Safety
/// `status` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing_ptsz(s: CUstream, status: *mut c_int) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamIsCapturing_ptsz", || unsafe {
        is_capturing(s, status, true)
    })
}

/// Where `cuStreamGetCaptureInfo*` write (each NULL when the form or the caller has none).
struct CaptureOut {
    status: *mut c_int,
    id: *mut u64,
    graph: *mut *mut c_void,
    deps: *mut *const c_void,
    edges: *mut *const c_void,
    count: *mut usize,
}

/// What `cuStreamGetCaptureInfo*` write: the capture's status, its id and its graph (see
/// [`super::graph`]); its dependencies are reported as none (vgpud tracks them on the host).
///
/// # Safety
/// Every pointer of `o` is NULL or valid for a write of its type.
unsafe fn capture_info(s: CUstream, per_thread: bool, o: CaptureOut) -> Result<CUresult, CUresult> {
    let id = resolve(s, per_thread)?;
    if o.status.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let (status, cap, graph) = super::graph::status_of(id);
    // SAFETY: each is NULL (not wanted) or valid for a write (the caller's promise).
    unsafe {
        put(o.status, status);
        put(o.id, cap);
        put(o.graph, graph);
        put(o.deps, std::ptr::null());
        put(o.edges, std::ptr::null());
        put(o.count, 0);
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuStreamGetCaptureInfo*`: the CUDA 11.3 form (status, id), CUDA 12's `_v2` (graph and
/// dependencies) and CUDA 12.3's `_v3` (edge data), each with its `_ptsz` twin.
macro_rules! capture_info_entry {
    ($name:ident, $pt:expr, short) => {
        /// See [`capture_info`].
        ///
        /// # Safety
        /// Every pointer is NULL or valid for a write of its type.
        #[no_mangle]
        pub unsafe extern "C" fn $name(s: CUstream, status: *mut c_int, id: *mut u64) -> CUresult {
            let n = std::ptr::null_mut();
            let o = CaptureOut {
                status,
                id,
                graph: n,
                deps: n.cast(),
                edges: n.cast(),
                count: n.cast(),
            };
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe { capture_info(s, $pt, o) })
        }
    };
    ($name:ident, $pt:expr, v2) => {
        /// See [`capture_info`].
        ///
        /// # Safety
        /// Every pointer is NULL or valid for a write of its type.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            s: CUstream,
            status: *mut c_int,
            id: *mut u64,
            graph: *mut *mut c_void,
            deps: *mut *const c_void,
            count: *mut usize,
        ) -> CUresult {
            let o = CaptureOut {
                status,
                id,
                graph,
                deps,
                edges: std::ptr::null_mut(),
                count,
            };
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe { capture_info(s, $pt, o) })
        }
    };
    ($name:ident, $pt:expr, v3) => {
        /// See [`capture_info`].
        ///
        /// # Safety
        /// Every pointer is NULL or valid for a write of its type.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            s: CUstream,
            status: *mut c_int,
            id: *mut u64,
            graph: *mut *mut c_void,
            deps: *mut *const c_void,
            edges: *mut *const c_void,
            count: *mut usize,
        ) -> CUresult {
            let o = CaptureOut {
                status,
                id,
                graph,
                deps,
                edges,
                count,
            };
            // SAFETY: forwarded from the caller.
            run(stringify!($name), || unsafe { capture_info(s, $pt, o) })
        }
    };
}
capture_info_entry!(cuStreamGetCaptureInfo, false, short);
capture_info_entry!(cuStreamGetCaptureInfo_ptsz, true, short);
capture_info_entry!(cuStreamGetCaptureInfo_v2, false, v2);
capture_info_entry!(cuStreamGetCaptureInfo_v2_ptsz, true, v2);
capture_info_entry!(cuStreamGetCaptureInfo_v3, false, v3);
capture_info_entry!(cuStreamGetCaptureInfo_v3_ptsz, true, v3);

/// The context a stream belongs to: its own for a created stream, the current one for the
/// legacy and per-thread default streams (NULL when there is none).
pub(crate) fn context_of(s: CUstream) -> Result<CUcontext, CUresult> {
    let raw = s as usize;
    if raw == 0 || raw == STREAM_LEGACY || raw == STREAM_PER_THREAD {
        return Ok(current());
    }
    obj(s)
        .map(|o| o.ctx)
        .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
}
