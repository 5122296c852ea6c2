//! Tables nobody has decoded: only their measured shapes, every code slot an [`unknown`]
//! reporter.
//!
//! [`unknown`]: super::unknown

use super::unknown::{self, unknown_slots};
use super::Table;
use crate::api::context;
use crate::types::{CUcontext, CUresult, CUstream};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Slot [91] is not code in the driver's table (its value was not recorded): NULL here.
/// Slots [4], [39] and [51] are decoded (cuBLAS calls them).
pub(crate) static T21318C60: Table<93> = Table({
    let mut w = Table::<93>::sized();
    w[4] = context_number as *const std::ffi::c_void;
    w[39] = pass_pointer as *const std::ffi::c_void;
    w[51] = stream_record as *const std::ffi::c_void;
    unknown_slots!(w, unknown::T21318C60;
        1 2 3 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        31 32 33 34 35 36 37 38 40 41 42 43 44 45 46 47 48 49 50 52 53 54 55 56 57 58 59 60
        61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90
        92);
    w
});

pub(crate) static T69A28E9F: Table<34> = Table({
    let mut w = Table::<34>::sized();
    unknown_slots!(w, unknown::T69A28E9F;
        1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        31 32 33);
    w
});

/// 17 words on driver 580 (size word 136, 16 code slots); PyTorch's bf16 GEMM called [4] and
/// [13] once each there (the probe of 2026-11-30, `torch` with a bf16 matmul).
pub(crate) static T1734DC26: Table<17> = Table({
    let mut w = Table::<17>::sized();
    unknown_slots!(w, unknown::T1734DC26; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    w
});

pub(crate) static DA9151D3: Table<7> = Table({
    let mut w = Table::<7>::sized();
    unknown_slots!(w, unknown::DA9151D3; 1 2 3 4 5 6);
    w
});

/// 21318c60 [4] `(CUcontext ctx, u64 *out)`: the context's number, as `cuCtxGetId` numbers it
/// (the current context for NULL); 0 for what is no context. Measured on driver 580: it wrote
/// 0 for a NULL or bogus context and success; the primary context is number 1 there, as here.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe extern "C" fn context_number(ctx: CUcontext, out: *mut u64) -> CUresult {
    if out.is_null() {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    let c = if ctx.is_null() {
        context::current()
    } else {
        ctx
    };
    let n = context::resolve(c).map_or(0, |c| c.id);
    // SAFETY: non-NULL, valid for a write (the caller's promise).
    unsafe { out.write(n) };
    CUresult::CUDA_SUCCESS
}

/// The record 21318c60 [51] hands out for a stream: 64 words, in the shape NVIDIA's driver 580
/// gave on an H200 (`[0]` 1, `[2]` the stream's context, `[5]` 1, the rest 0 as read there).
#[repr(C, align(16))]
struct StreamRecord([u64; 64]);

/// One record per (context, stream), kept for the life of the process (a stale stream handle
/// must never name freed memory; there are as many as the program's streams).
static STREAM_RECORDS: Mutex<BTreeMap<(usize, usize), &'static StreamRecord>> =
    Mutex::new(BTreeMap::new());

/// 21318c60 [51] `(CUcontext ctx, CUstream stream, void **out)`: a record of the stream (the
/// context's legacy stream for NULL) in `*out`. Measured on driver 580 (`(ctx, NULL)`,
/// `(NULL, stream)` and `(ctx, stream)` gave records holding the context; `(NULL, NULL)`
/// answered `CUDA_ERROR_INVALID_HANDLE`). cuBLAS asks it before its GEMMs.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe extern "C" fn stream_record(
    ctx: CUcontext,
    stream: CUstream,
    out: *mut *const StreamRecord,
) -> CUresult {
    if out.is_null() {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    if ctx.is_null() && stream.is_null() {
        return CUresult::CUDA_ERROR_INVALID_HANDLE;
    }
    let ctx = if ctx.is_null() {
        match crate::api::stream::context_of(stream) {
            Ok(c) => c,
            Err(e) => return e,
        }
    } else {
        ctx
    };
    if context::resolve(ctx).is_none() {
        return CUresult::CUDA_ERROR_INVALID_CONTEXT;
    }
    let mut records = STREAM_RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    let r = *records
        .entry((ctx as usize, stream as usize))
        .or_insert_with(|| {
            let mut w = [0u64; 64];
            w[0] = 1;
            w[2] = ctx as u64;
            w[5] = 1;
            Box::leak(Box::new(StreamRecord(w)))
        });
    // SAFETY: non-NULL, valid for a write (the caller's promise).
    unsafe { out.write(r) };
    CUresult::CUDA_SUCCESS
}

/// 21318c60 [39] `(any, void *p, void **out)`: `*out = p`. Measured on driver 580: whatever the
/// first argument (a context, a stream, a stream record, NULL), it wrote the second argument's
/// value through the third and answered success; NULL for either of those answered
/// `CUDA_ERROR_INVALID_VALUE`. cuBLAS calls it before its GEMMs.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe extern "C" fn pass_pointer(
    _first: *mut std::ffi::c_void,
    p: *mut std::ffi::c_void,
    out: *mut *mut std::ffi::c_void,
) -> CUresult {
    if p.is_null() || out.is_null() {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: non-NULL, valid for a write (the caller's promise).
    unsafe { out.write(p) };
    CUresult::CUDA_SUCCESS
}
