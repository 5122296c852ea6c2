//! Events. A `CUevent` is the address of an [`EventObj`] holding one of vgpud's event ids.
//! A record is queued on its stream without waiting. Its completion on the ring says that vgpud
//! took it (issued it to the device, or will not, for an error), not that the device reached
//! it: `cuEventQuery` first looks for that completion without a round trip (a record vgpud has
//! not taken is not complete), then asks vgpud (`EVENT_QUERY`); `cuEventSynchronize` waits for
//! the device (`EVENT_SYNCHRONIZE`).

use std::ffi::c_uint;
use std::sync::Mutex;

use vgpu_guest::{Event, Pending, WaitPolicy};

use super::context::{require_current, waiting_as};
use super::run;
use super::stream::{enqueue, resolve};
use crate::driver;
use crate::handles::Registry;
use crate::types::{CUevent, CUresult, CUstream};

/// `CU_EVENT_DISABLE_TIMING`.
pub const DISABLE_TIMING: u32 = 0x2;
/// `CU_EVENT_BLOCKING_SYNC`: a wait for the event blocks (whatever its context's flags).
const BLOCKING_SYNC: u32 = 0x1;
/// Every `CU_EVENT_*` flag (default, blocking sync, disable timing, interprocess).
const KNOWN_FLAGS: u32 = 0x7;

/// An event a program created.
#[derive(Debug)]
pub struct EventObj {
    ev: Event<'static>,
    flags: u32,
    state: Mutex<Record>,
}

/// The state of an event's latest record.
#[derive(Debug, Default)]
struct Record {
    /// Never recorded: queries succeed, timing fails.
    recorded: bool,
    /// The latest record's completion, until it is seen.
    pending: Option<Pending<'static>>,
}

static LIVE: Registry<EventObj> = Registry::new();

fn obj(e: CUevent) -> Result<&'static EventObj, CUresult> {
    LIVE.get(e as usize)
        .ok_or(CUresult::CUDA_ERROR_INVALID_HANDLE)
}

/// `cuEventCreate`.
///
/// # Safety
/// `ph` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(ph: *mut CUevent, flags: c_uint) -> CUresult {
    run("cuEventCreate", || {
        require_current()?;
        let d = driver::get()?;
        if ph.is_null() || flags & !KNOWN_FLAGS != 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let ev = d.dev.create_event().map_err(|e| driver::error_of(&e))?;
        let o = LIVE.add(EventObj {
            ev,
            flags,
            state: Mutex::new(Record::default()),
        });
        let h = Registry::handle(o) as CUevent;
        // SAFETY: non-NULL and valid for a write (the caller's promise).
        unsafe { ph.write(h) };
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// `cuEventDestroy_v2`. The event's id stays in use (its EventObj is kept) so that a stale
/// handle never names another event.
#[no_mangle]
pub extern "C" fn cuEventDestroy_v2(e: CUevent) -> CUresult {
    run("cuEventDestroy_v2", || {
        obj(e)?;
        LIVE.retire(e as usize);
        Ok(CUresult::CUDA_SUCCESS)
    })
}

fn record(e: CUevent, s: CUstream, per_thread: bool) -> Result<CUresult, CUresult> {
    require_current()?;
    let o = obj(e)?;
    let st = enqueue(s, per_thread)?;
    let p = st.record(&o.ev).map_err(|e| driver::error_of(&e))?;
    super::graph::recorded(o.ev.id(), st.id());
    drop(st);
    let mut r = o.state.lock().unwrap_or_else(|p| p.into_inner());
    r.recorded = true;
    r.pending = Some(p);
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuEventRecord`.
#[no_mangle]
pub extern "C" fn cuEventRecord(e: CUevent, s: CUstream) -> CUresult {
    run("cuEventRecord", || record(e, s, false))
}

/// `cuEventRecord_ptsz`.
#[no_mangle]
pub extern "C" fn cuEventRecord_ptsz(e: CUevent, s: CUstream) -> CUresult {
    run("cuEventRecord_ptsz", || record(e, s, true))
}

/// `cuEventRecordWithFlags`: `CU_EVENT_RECORD_DEFAULT` only.
#[no_mangle]
pub extern "C" fn cuEventRecordWithFlags(e: CUevent, s: CUstream, flags: c_uint) -> CUresult {
    run("cuEventRecordWithFlags", || {
        if flags != 0 {
            return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
        }
        record(e, s, false)
    })
}

/// `cuEventRecordWithFlags_ptsz`.
#[no_mangle]
pub extern "C" fn cuEventRecordWithFlags_ptsz(e: CUevent, s: CUstream, flags: c_uint) -> CUresult {
    run("cuEventRecordWithFlags_ptsz", || {
        if flags != 0 {
            return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
        }
        record(e, s, true)
    })
}

/// Whether vgpud took `o`'s latest record (an error of the record is the answer's).
fn taken(o: &EventObj, wait: bool) -> Result<bool, CUresult> {
    let p = {
        let mut r = o.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = r.pending.as_mut() else {
            return Ok(true);
        };
        if !wait {
            return match p.try_wait() {
                Ok(Some(_)) => {
                    r.pending = None;
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => {
                    r.pending = None;
                    Err(driver::error_of(&e))
                }
            };
        }
        r.pending.take().expect("present")
    };
    p.wait().map(|_| true).map_err(|e| driver::error_of(&e))
}

/// Whether `o`'s latest record has completed on the device.
fn complete(o: &EventObj) -> Result<bool, CUresult> {
    super::graph::refuse_captured_event(o.ev.id())?;
    if !taken(o, false)? {
        return Ok(false);
    }
    o.ev.query().map_err(|e| driver::error_of(&e))
}

/// `cuEventQuery`: success once the latest record completed (or if never recorded).
#[no_mangle]
pub extern "C" fn cuEventQuery(e: CUevent) -> CUresult {
    run("cuEventQuery", || {
        let o = obj(e)?;
        if complete(o)? {
            Ok(CUresult::CUDA_SUCCESS)
        } else {
            Ok(CUresult::CUDA_ERROR_NOT_READY)
        }
    })
}

fn synchronize(o: &EventObj) -> Result<(), CUresult> {
    super::graph::refuse_captured_event(o.ev.id())?;
    let wait = || {
        taken(o, true)?;
        o.ev.synchronize().map_err(|e| driver::error_of(&e))
    };
    if o.flags & BLOCKING_SYNC != 0 {
        waiting_as(WaitPolicy::Block, wait)
    } else {
        wait()
    }
}

/// `cuEventSynchronize`.
#[no_mangle]
pub extern "C" fn cuEventSynchronize(e: CUevent) -> CUresult {
    run("cuEventSynchronize", || {
        synchronize(obj(e)?)?;
        driver::unclaimed_error(driver::get()?)?;
        Ok(CUresult::CUDA_SUCCESS)
    })
}

/// # Safety
/// `ms` is NULL or valid for a write.
unsafe fn elapsed(ms: *mut f32, start: CUevent, end: CUevent) -> Result<CUresult, CUresult> {
    let (s, e) = (obj(start)?, obj(end)?);
    if ms.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if (s.flags | e.flags) & DISABLE_TIMING != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_HANDLE);
    }
    let recorded = |o: &EventObj| o.state.lock().unwrap_or_else(|p| p.into_inner()).recorded;
    if !recorded(s) || !recorded(e) {
        return Err(CUresult::CUDA_ERROR_INVALID_HANDLE);
    }
    if !complete(s)? || !complete(e)? {
        return Err(CUresult::CUDA_ERROR_NOT_READY);
    }
    let ns =
        e.ev.elapsed_ns_since(&s.ev)
            .map_err(|x| driver::error_of(&x))?;
    // SAFETY: non-NULL and valid for a write (the caller's promise).
    unsafe { ms.write(ns as f32 / 1e6) };
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuEventElapsedTime`: milliseconds between two completed records.
///
/// # Safety
/// `ms` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuEventElapsedTime", || unsafe { elapsed(ms, start, end) })
}

/// `cuEventElapsedTime_v2`.
///
/// # Safety
/// `ms` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuEventElapsedTime_v2", || unsafe {
        elapsed(ms, start, end)
    })
}

fn wait_event(
    s: CUstream,
    e: CUevent,
    flags: c_uint,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    let o = obj(e)?;
    if flags & !0x1 != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let was_recorded = o.state.lock().unwrap_or_else(|p| p.into_inner()).recorded;
    super::graph::before_wait(o.ev.id(), resolve(s, per_thread)?, was_recorded)?;
    let st = enqueue(s, per_thread)?;
    // The wait is device-side; its completion is of no interest.
    drop(st.wait_event(&o.ev).map_err(|e| driver::error_of(&e))?);
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuStreamWaitEvent`.
#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(s: CUstream, e: CUevent, flags: c_uint) -> CUresult {
    run("cuStreamWaitEvent", || wait_event(s, e, flags, false))
}

/// `cuStreamWaitEvent_ptsz`.
#[no_mangle]
pub extern "C" fn cuStreamWaitEvent_ptsz(s: CUstream, e: CUevent, flags: c_uint) -> CUresult {
    run("cuStreamWaitEvent_ptsz", || wait_event(s, e, flags, true))
}
