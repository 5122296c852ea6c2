//! Stream capture and CUDA graphs, over vgpud's capture commands (ABI 1.7): vgpud captures the
//! stream on the host, in the VM's CUDA context, so a graph launch is one real `cuGraphLaunch`.
//! This module keeps what CUDA's driver knows of captures on the guest side and enforces its
//! rules: which streams capture (the one that began, and those that joined by waiting for an
//! event recorded in the capture), the capture mode of each capture and of each thread, and
//! which calls a capture forbids (a synchronisation or query of a capturing stream, a pageable
//! copy, "unsafe" calls such as `cuCtxSynchronize` under a global capture): those answer
//! `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` and invalidate the capture, whose end then answers
//! `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`. Nothing of the guest's own (fences, the legacy
//! stream's joins) is queued on a capturing stream.
//!
//! A `CUgraph` is a guest object (the capture's graph exists on the host only once it ended,
//! but `cuStreamGetCaptureInfo` hands it out before); a `CUgraphExec` is vgpud's handle.
//! Explicit graph building (`cuGraphCreate`, `cuGraphAdd*Node`) and `cuGraphExecUpdate` are not
//! offered (NOT_SUPPORTED stubs).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_char, c_uint, c_ulonglong, c_void};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

use super::context::require_current;
use super::run;
use super::stream::{self, enqueue, resolve};
use crate::driver;
use crate::handles::Registry;
use crate::types::{CUresult, CUstream};

/// `CU_STREAM_CAPTURE_MODE_GLOBAL`.
const MODE_GLOBAL: u32 = 0;
/// `CU_STREAM_CAPTURE_MODE_RELAXED` (thread-local, 1, lies between).
const MODE_RELAXED: u32 = 2;
/// `CU_STREAM_CAPTURE_STATUS_ACTIVE` / `_INVALIDATED`.
const STATUS_ACTIVE: i32 = 1;
const STATUS_INVALIDATED: i32 = 2;

/// A graph: what a capture produced (vgpud's handle, 0 while the capture runs or when it was
/// invalidated).
#[derive(Debug)]
pub struct GraphObj {
    host: AtomicU64,
    /// Its number of nodes (as vgpud counted them when the capture ended).
    nodes: AtomicU64,
}

static GRAPHS: Registry<GraphObj> = Registry::new();

/// One capture in progress.
#[derive(Debug)]
struct Capture {
    /// vgpud's stream that began it.
    origin: u32,
    mode: u32,
    thread: ThreadId,
    /// The context of the stream that began it.
    ctx: usize,
    /// It began on a blocking stream: legacy-stream work of its context would join it.
    blocking: bool,
    invalid: bool,
    graph: &'static GraphObj,
}

#[derive(Debug, Default)]
struct State {
    /// Captures by their id (unique in the process, never 0).
    captures: HashMap<u64, Capture>,
    /// Capturing streams (vgpud ids) → their capture.
    streams: HashMap<u32, u64>,
    /// Events (vgpud ids) whose latest record is in a capture in progress → that capture.
    events: HashMap<u32, u64>,
    next_id: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// Captures in progress: 0 lets every hook return at once.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's capture mode (`cuThreadExchangeStreamCaptureMode`).
    static THREAD_MODE: Cell<u32> = const { Cell::new(MODE_GLOBAL) };
}

impl State {
    /// Invalidates capture `cap` (while it is in progress) and answers `err`: what an
    /// operation the capture forbids gets.
    fn refuse(&mut self, cap: u64, err: CUresult) -> Result<(), CUresult> {
        if let Some(c) = self.captures.get_mut(&cap) {
            c.invalid = true;
        }
        Err(err)
    }
}

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(State::default))
}

fn idle() -> bool {
    ACTIVE.load(Ordering::Acquire) == 0
}

/// The capture vgpud stream `id` takes part in, if any.
pub(crate) fn capture_of(id: u32) -> Option<u64> {
    if idle() {
        return None;
    }
    with_state(|s| s.streams.get(&id).copied())
}

/// Refuses an operation that would wait for vgpud stream `id` while it captures (a
/// synchronisation, a query, a copy through the bounce buffer), invalidating its capture.
pub(crate) fn refuse_if_capturing(id: u32) -> Result<(), CUresult> {
    if idle() {
        return Ok(());
    }
    with_state(|s| match s.streams.get(&id) {
        Some(&cap) => s.refuse(cap, CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED),
        None => Ok(()),
    })
}

/// Legacy-stream work in context `ctx` while a blocking stream of it captures: CUDA's implicit
/// synchronisation would join the legacy stream to the capture, which it forbids.
pub(crate) fn refuse_legacy(ctx: usize) -> Result<(), CUresult> {
    if idle() {
        return Ok(());
    }
    with_state(|s| {
        let mut hit = false;
        for c in s.captures.values_mut() {
            if c.blocking && c.ctx == ctx {
                c.invalid = true;
                hit = true;
            }
        }
        if hit {
            Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_IMPLICIT)
        } else {
            Ok(())
        }
    })
}

/// A "potentially unsafe" call (a context synchronisation, an allocation or free): refused
/// while this thread's mode says a capture forbids it (CUDA's rules: in global mode a
/// capture of this thread that is not relaxed, or a global capture of any thread; in
/// thread-local mode a capture of this thread that is not relaxed; in relaxed mode never).
/// The captures that forbid it are invalidated.
pub(crate) fn unsafe_call() -> Result<(), CUresult> {
    if idle() {
        return Ok(());
    }
    // At exit, with the thread's locals gone, as a thread that never chose a mode.
    let mode = THREAD_MODE.try_with(Cell::get).unwrap_or(MODE_GLOBAL);
    if mode == MODE_RELAXED {
        return Ok(());
    }
    let me = std::thread::current().id();
    with_state(|s| {
        let mut hit = false;
        for c in s.captures.values_mut() {
            let mine = c.thread == me && c.mode != MODE_RELAXED;
            let global = c.thread != me && c.mode == MODE_GLOBAL && mode == MODE_GLOBAL;
            if mine || global {
                c.invalid = true;
                hit = true;
            }
        }
        if hit {
            Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        } else {
            Ok(())
        }
    })
}

/// Event `event` was recorded on vgpud stream `id`.
pub(crate) fn recorded(event: u32, id: u32) {
    if idle() {
        return;
    }
    with_state(|s| match s.streams.get(&id) {
        Some(&cap) => s.events.insert(event, cap),
        None => s.events.remove(&event),
    });
}

/// Refuses event `event` when its latest record is in a capture in progress: it may not be
/// queried, synchronised or timed (`CUDA_ERROR_CAPTURED_EVENT`), and trying invalidates that
/// capture, as on NVIDIA's driver.
pub(crate) fn refuse_captured_event(event: u32) -> Result<(), CUresult> {
    if idle() {
        return Ok(());
    }
    with_state(|s| match s.events.get(&event) {
        Some(&cap) => s.refuse(cap, CUresult::CUDA_ERROR_CAPTURED_EVENT),
        None => Ok(()),
    })
}

/// vgpud stream `id` is about to wait for event `event` (`was_recorded`: it has a record at
/// all). A stream outside any capture that waits for an event of a capture joins it; a
/// capturing stream may wait only for its own capture's events (else
/// `CUDA_ERROR_STREAM_CAPTURE_ISOLATION`, and the capture is invalidated).
pub(crate) fn before_wait(event: u32, id: u32, was_recorded: bool) -> Result<(), CUresult> {
    if idle() {
        return Ok(());
    }
    with_state(|s| {
        let of_event = s.events.get(&event).copied();
        match (s.streams.get(&id).copied(), of_event) {
            (None, Some(cap)) => {
                s.streams.insert(id, cap);
                Ok(())
            }
            (Some(mine), Some(cap)) if mine == cap => Ok(()),
            (Some(_), None) if !was_recorded => Ok(()),
            (Some(mine), _) => s.refuse(mine, CUresult::CUDA_ERROR_STREAM_CAPTURE_ISOLATION),
            (None, None) => Ok(()),
        }
    })
}

/// The legacy default stream (which may not capture) for these entry points.
fn is_legacy(s: CUstream, per_thread: bool) -> bool {
    let raw = s as usize;
    raw == stream::STREAM_LEGACY || (raw == 0 && !per_thread)
}

fn begin(s: CUstream, mode: u32, per_thread: bool) -> Result<CUresult, CUresult> {
    require_current()?;
    if mode > MODE_RELAXED {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if is_legacy(s, per_thread) {
        return Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    let d = driver::get()?;
    if !d.dev.has_graphs() {
        return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
    }
    let id = resolve(s, per_thread)?;
    if capture_of(id).is_some() {
        return Err(CUresult::CUDA_ERROR_ILLEGAL_STATE);
    }
    // The stream's legacy-stream waits are queued first: they precede the capture.
    let q = enqueue(s, per_thread)?;
    drop(q);
    d.dev.begin_capture(id).map_err(|e| driver::error_of(&e))?;
    let blocking =
        stream::is_blocking(s, per_thread).map_err(|_| CUresult::CUDA_ERROR_INVALID_HANDLE)?;
    let graph = GRAPHS.add(GraphObj {
        host: AtomicU64::new(0),
        nodes: AtomicU64::new(0),
    });
    with_state(|st| {
        st.next_id += 1;
        let cap = st.next_id;
        st.captures.insert(
            cap,
            Capture {
                origin: id,
                mode,
                thread: std::thread::current().id(),
                ctx: stream::context_of(s).map_or(0, |c| c as usize),
                blocking,
                invalid: false,
                graph,
            },
        );
        st.streams.insert(id, cap);
    });
    ACTIVE.fetch_add(1, Ordering::AcqRel);
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuStreamBeginCapture` (CUDA 10.0, no mode: global).
#[no_mangle]
pub extern "C" fn cuStreamBeginCapture(s: CUstream) -> CUresult {
    run("cuStreamBeginCapture", || begin(s, MODE_GLOBAL, false))
}

/// `cuStreamBeginCapture_ptsz`.
#[no_mangle]
pub extern "C" fn cuStreamBeginCapture_ptsz(s: CUstream) -> CUresult {
    run("cuStreamBeginCapture_ptsz", || begin(s, MODE_GLOBAL, true))
}

/// `cuStreamBeginCapture_v2`.
#[no_mangle]
pub extern "C" fn cuStreamBeginCapture_v2(s: CUstream, mode: c_uint) -> CUresult {
    run("cuStreamBeginCapture_v2", || begin(s, mode, false))
}

/// `cuStreamBeginCapture_v2_ptsz`.
#[no_mangle]
pub extern "C" fn cuStreamBeginCapture_v2_ptsz(s: CUstream, mode: c_uint) -> CUresult {
    run("cuStreamBeginCapture_v2_ptsz", || begin(s, mode, true))
}

/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn end(s: CUstream, out: *mut *mut c_void, per_thread: bool) -> Result<CUresult, CUresult> {
    require_current()?;
    if out.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if is_legacy(s, per_thread) {
        return Err(CUresult::CUDA_ERROR_ILLEGAL_STATE);
    }
    let d = driver::get()?;
    let id = resolve(s, per_thread)?;
    let taken = with_state(|st| {
        let &cap = st
            .streams
            .get(&id)
            .ok_or(CUresult::CUDA_ERROR_ILLEGAL_STATE)?;
        let c = st.captures.get(&cap).expect("a capturing stream's capture");
        if c.origin != id {
            return Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
        }
        if c.mode != MODE_RELAXED && c.thread != std::thread::current().id() {
            return Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
        }
        let c = st.captures.remove(&cap).expect("present");
        st.streams.retain(|_, k| *k != cap);
        st.events.retain(|_, k| *k != cap);
        Ok(c)
    })?;
    ACTIVE.fetch_sub(1, Ordering::AcqRel);
    // SAFETY: non-NULL and valid for a write (the caller's promise).
    unsafe { out.write(std::ptr::null_mut()) };
    let graph = taken.graph;
    let ended = d.dev.end_capture(id).map_err(|e| driver::error_of(&e));
    let result = match ended {
        Ok((h, _)) if taken.invalid => {
            let _ = d.dev.graph_destroy(h);
            Err(CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)
        }
        Ok((h, nodes)) => {
            graph.nodes.store(nodes, Ordering::Release);
            graph.host.store(h, Ordering::Release);
            // SAFETY: as above.
            unsafe { out.write(Registry::handle(graph) as *mut c_void) };
            return Ok(CUresult::CUDA_SUCCESS);
        }
        Err(e) => Err(e),
    };
    GRAPHS.retire(Registry::handle(graph));
    result
}

/// `cuStreamEndCapture`.
///
/// # Safety
/// `graph` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(s: CUstream, graph: *mut *mut c_void) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamEndCapture", || unsafe { end(s, graph, false) })
}

/// `cuStreamEndCapture_ptsz`.
///
/// # Safety
/// `graph` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture_ptsz(s: CUstream, graph: *mut *mut c_void) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuStreamEndCapture_ptsz", || unsafe { end(s, graph, true) })
}

/// What `cuStreamIsCapturing` and `cuStreamGetCaptureInfo*` report of vgpud stream `id`:
/// `(status, capture id, graph)`.
pub(crate) fn status_of(id: u32) -> (i32, u64, *mut c_void) {
    if idle() {
        return (0, 0, std::ptr::null_mut());
    }
    with_state(|s| {
        let Some(&cap) = s.streams.get(&id) else {
            return (0, 0, std::ptr::null_mut());
        };
        let c = &s.captures[&cap];
        let status = if c.invalid {
            STATUS_INVALIDATED
        } else {
            STATUS_ACTIVE
        };
        (status, cap, Registry::handle(c.graph) as *mut c_void)
    })
}

/// # Safety
/// `mode` is NULL or valid for a read and a write.
unsafe fn exchange_mode(mode: *mut c_uint) -> Result<CUresult, CUresult> {
    if mode.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and valid (the caller's promise).
    let want = unsafe { mode.read() };
    if want > MODE_RELAXED {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let old = THREAD_MODE.with(|m| m.replace(want));
    // SAFETY: as above.
    unsafe { mode.write(old) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuThreadExchangeStreamCaptureMode`: sets this thread's capture mode, answers the old one.
///
/// # Safety
/// `mode` is NULL or valid for a read and a write.
#[no_mangle]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_uint) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuThreadExchangeStreamCaptureMode", || unsafe {
        exchange_mode(mode)
    })
}

/// The graph behind a `CUgraph`, with its host handle (0: none; never happens for a graph
/// `cuStreamEndCapture` handed out).
fn graph(g: *mut c_void) -> Result<&'static GraphObj, CUresult> {
    GRAPHS
        .get(g as usize)
        .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)
}

/// `CUDA_GRAPH_INSTANTIATE_FLAG_*` vgpu takes: auto-free on launch (1; a captured graph has
/// no memory nodes), upload (2; nothing to upload ahead) and node priorities (8; vgpud
/// schedules by the VM's priority). Device launch (4) is refused.
const FLAGS_TAKEN: u64 = 1 | 2 | 8;

/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn instantiate(
    out: *mut *mut c_void,
    g: *mut c_void,
    flags: u64,
) -> Result<CUresult, CUresult> {
    require_current()?;
    if out.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if flags & !FLAGS_TAKEN != 0 {
        return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
    }
    let host = graph(g)?.host.load(Ordering::Acquire);
    if host == 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver::get()?;
    let x = d
        .dev
        .graph_instantiate(host)
        .map_err(|e| driver::error_of(&e))?;
    // SAFETY: non-NULL and valid for a write (the caller's promise). vgpud's handles are
    // never 0.
    unsafe { out.write(x as usize as *mut c_void) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuGraphInstantiate` and `_v2` (CUDA 10/11: error node and log buffer, left empty).
///
/// # Safety
/// `out` and `err_node` are NULL or valid for a write; `log` is NULL or valid for `size` bytes.
unsafe fn instantiate_logged(
    out: *mut *mut c_void,
    g: *mut c_void,
    err_node: *mut *mut c_void,
    log: *mut c_char,
    size: usize,
) -> Result<CUresult, CUresult> {
    if !err_node.is_null() {
        // SAFETY: valid for a write (the caller's promise).
        unsafe { err_node.write(std::ptr::null_mut()) };
    }
    if !log.is_null() && size > 0 {
        // SAFETY: valid for `size` bytes (the caller's promise): an empty log.
        unsafe { log.write(0) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { instantiate(out, g, 0) }
}

/// `cuGraphInstantiate`.
///
/// # Safety
/// See [`instantiate_logged`].
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate(
    out: *mut *mut c_void,
    g: *mut c_void,
    err_node: *mut *mut c_void,
    log: *mut c_char,
    size: usize,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuGraphInstantiate", || unsafe {
        instantiate_logged(out, g, err_node, log, size)
    })
}

/// `cuGraphInstantiate_v2`.
///
/// # Safety
/// See [`instantiate_logged`].
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    out: *mut *mut c_void,
    g: *mut c_void,
    err_node: *mut *mut c_void,
    log: *mut c_char,
    size: usize,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuGraphInstantiate_v2", || unsafe {
        instantiate_logged(out, g, err_node, log, size)
    })
}

/// `cuGraphInstantiateWithFlags`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    out: *mut *mut c_void,
    g: *mut c_void,
    flags: c_ulonglong,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuGraphInstantiateWithFlags", || unsafe {
        instantiate(out, g, flags)
    })
}

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`.
#[repr(C)]
pub struct InstantiateParams {
    flags: u64,
    upload_stream: CUstream,
    err_node_out: *mut c_void,
    result_out: c_uint,
}

/// # Safety
/// `out` is NULL or valid for a write; `p` is NULL or valid for a read and a write.
unsafe fn instantiate_with_params(
    out: *mut *mut c_void,
    g: *mut c_void,
    p: *mut InstantiateParams,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    if p.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and valid (the caller's promise).
    let params = unsafe { &mut *p };
    if params.flags & 2 != 0 {
        resolve(params.upload_stream, per_thread)?;
    }
    // SAFETY: forwarded from the caller.
    let r = unsafe { instantiate(out, g, params.flags) };
    params.err_node_out = std::ptr::null_mut();
    // CUDA_GRAPH_INSTANTIATE_SUCCESS / _ERROR.
    params.result_out = u32::from(r.is_err());
    r
}

/// `cuGraphInstantiateWithParams`.
///
/// # Safety
/// See [`instantiate_with_params`].
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(
    out: *mut *mut c_void,
    g: *mut c_void,
    p: *mut InstantiateParams,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuGraphInstantiateWithParams", || unsafe {
        instantiate_with_params(out, g, p, false)
    })
}

/// `cuGraphInstantiateWithParams_ptsz`.
///
/// # Safety
/// See [`instantiate_with_params`].
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams_ptsz(
    out: *mut *mut c_void,
    g: *mut c_void,
    p: *mut InstantiateParams,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuGraphInstantiateWithParams_ptsz", || unsafe {
        instantiate_with_params(out, g, p, true)
    })
}

fn exec_handle(x: *mut c_void) -> Result<u64, CUresult> {
    if x.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    Ok(x as usize as u64)
}

fn launch(x: *mut c_void, s: CUstream, per_thread: bool) -> Result<CUresult, CUresult> {
    require_current()?;
    let exec = exec_handle(x)?;
    let st = enqueue(s, per_thread)?;
    // Stream work like a kernel's: a failure vgpud reports later surfaces at the next
    // synchronisation.
    drop(st.graph_launch(exec).map_err(|e| driver::error_of(&e))?);
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuGraphLaunch`.
#[no_mangle]
pub extern "C" fn cuGraphLaunch(x: *mut c_void, s: CUstream) -> CUresult {
    run("cuGraphLaunch", || launch(x, s, false))
}

/// `cuGraphLaunch_ptsz`.
#[no_mangle]
pub extern "C" fn cuGraphLaunch_ptsz(x: *mut c_void, s: CUstream) -> CUresult {
    run("cuGraphLaunch_ptsz", || launch(x, s, true))
}

/// `cuGraphUpload`: vgpud's graphs are on the device once instantiated; only checked.
fn upload(x: *mut c_void, s: CUstream, per_thread: bool) -> Result<CUresult, CUresult> {
    require_current()?;
    exec_handle(x)?;
    resolve(s, per_thread)?;
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuGraphUpload`.
#[no_mangle]
pub extern "C" fn cuGraphUpload(x: *mut c_void, s: CUstream) -> CUresult {
    run("cuGraphUpload", || upload(x, s, false))
}

/// `cuGraphUpload_ptsz`.
#[no_mangle]
pub extern "C" fn cuGraphUpload_ptsz(x: *mut c_void, s: CUstream) -> CUresult {
    run("cuGraphUpload_ptsz", || upload(x, s, true))
}

/// `cuGraphExecDestroy`.
#[no_mangle]
pub extern "C" fn cuGraphExecDestroy(x: *mut c_void) -> CUresult {
    run("cuGraphExecDestroy", || {
        let exec = exec_handle(x)?;
        let d = driver::get()?;
        d.dev
            .graph_exec_destroy(exec)
            .map_err(|e| driver::error_of(&e))?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuGraphGetNodes`: the number of nodes (`nodes` NULL), as PyTorch asks to warn of an empty
/// capture. The nodes themselves are the host driver's, in the VM's context: handing them
/// out (`nodes` not NULL, a graph with nodes) answers `CUDA_ERROR_NOT_SUPPORTED`.
///
/// # Safety
/// `count` is NULL or valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn cuGraphGetNodes(
    g: *mut c_void,
    nodes: *mut *mut c_void,
    count: *mut usize,
) -> CUresult {
    run("cuGraphGetNodes", || {
        let o = graph(g)?;
        if count.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let n = o.nodes.load(Ordering::Acquire) as usize;
        if !nodes.is_null() && n > 0 {
            return Err(crate::unsupported::report_owned(
                "cuGraphGetNodes with a node array (graph nodes stay on the host)".into(),
            ));
        }
        // SAFETY: non-NULL and valid (the caller's promise).
        unsafe { count.write(n) };
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuGraphDestroy`.
#[no_mangle]
pub extern "C" fn cuGraphDestroy(g: *mut c_void) -> CUresult {
    run("cuGraphDestroy", || {
        let o = graph(g)?;
        let host = o.host.load(Ordering::Acquire);
        if host == 0 {
            // The graph of a capture still in progress.
            return Err(CUresult::CUDA_ERROR_ILLEGAL_STATE);
        }
        let d = driver::get()?;
        GRAPHS.retire(g as usize);
        d.dev
            .graph_destroy(host)
            .map_err(|e| driver::error_of(&e))?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}
