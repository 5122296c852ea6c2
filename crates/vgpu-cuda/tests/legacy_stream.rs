//! The legacy default stream's implicit synchronisation, seen in the commands the driver
//! queues (vgpud's cpu backend runs copies and memsets at once, so the data alone cannot show
//! a missing wait): what each call adds to the ring, with the data checked at the end.
//!
//! The driver's state is per process, so this file holds one test.

mod common;

use vgpucuda::api::context::*;
use vgpucuda::api::copy::*;
use vgpucuda::api::init::*;
use vgpucuda::api::memory::*;
use vgpucuda::api::stream::*;
use vgpucuda::types::{CUcontext, CUresult, CUstream};

const OK: CUresult = CUresult::CUDA_SUCCESS;
const N: usize = 4096;

/// Commands this process has put on the ring so far.
fn submitted() -> u64 {
    vgpucuda::driver::get().unwrap().dev.commands_submitted()
}

/// Runs `f` and returns how many commands it queued.
fn queued(f: impl FnOnce() -> CUresult) -> u64 {
    let before = submitted();
    assert_eq!(f(), OK);
    submitted() - before
}

#[test]
fn the_legacy_stream_and_blocking_streams_wait_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_vgpud, sock) = common::start_vgpud(dir.path());
    std::env::set_var("VGPU_SOCKET", &sock);
    assert_eq!(cuInit(0), OK);
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuDevicePrimaryCtxRetain(&mut ctx, 0) }, OK);
    assert_eq!(cuCtxSetCurrent(ctx), OK);
    let (mut a, mut b) = (0u64, 0u64);
    // SAFETY: valid locals.
    assert_eq!(unsafe { cuMemAlloc_v2(&mut a, N) }, OK);
    // SAFETY: valid locals.
    assert_eq!(unsafe { cuMemAlloc_v2(&mut b, N) }, OK);
    let legacy: CUstream = std::ptr::null_mut();
    let legacy_handle = 0x1 as CUstream;

    // A program on the legacy stream alone pays nothing: one command per call.
    for v in 1..=3 {
        assert_eq!(queued(|| cuMemsetD8Async(a, v, N, legacy)), 1);
    }
    assert_eq!(queued(|| cuMemsetD8Async(a, 4, N, legacy_handle)), 1);
    assert_eq!(queued(|| cuMemsetD8_v2(a, 5, N)), 1);

    let (mut s, mut nb): (CUstream, CUstream) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: valid locals.
    assert_eq!(unsafe { cuStreamCreate(&mut s, 0) }, OK);
    // SAFETY: valid locals.
    assert_eq!(unsafe { cuStreamCreate(&mut nb, NON_BLOCKING) }, OK);
    // A non-blocking stream takes no part, either way.
    assert_eq!(queued(|| cuMemsetD8Async(b, 6, N, nb)), 1);
    assert_eq!(queued(|| cuMemsetD8Async(a, 7, N, legacy)), 1);

    // The first blocking work waits for the legacy stream's earlier work: a tail record on
    // the legacy stream and a wait for it, then the memset.
    assert_eq!(queued(|| cuMemsetD8Async(a, 8, N, s)), 3);
    assert_eq!(
        queued(|| cuMemsetD8Async(a, 9, N, s)),
        1,
        "already after it"
    );
    assert_eq!(queued(|| cuMemsetD8Async(b, 10, N, nb)), 1);
    // Legacy work waits for the blocking stream: a record on it and a wait on the legacy
    // stream, then the copy (b = a's 9s). Once joined, nothing more.
    assert_eq!(queued(|| cuMemcpyDtoDAsync_v2(b, a, N, legacy)), 3);
    assert_eq!(queued(|| cuMemsetD8Async(a, 11, N / 2, legacy)), 1);
    // Blocking work after legacy work waits for it again.
    assert_eq!(queued(|| cuMemsetD8Async(a, 12, N / 4, s)), 3);
    // The per-thread default stream is a blocking stream: it waits for the same tail.
    assert_eq!(queued(|| cuMemsetD8Async_ptsz(b, 13, N / 8, legacy)), 2);

    // A synchronised stream is not joined again; the per-thread stream still is. A stream's
    // synchronisation is two commands: its fence and the SYNCHRONIZE (ABI 1.6).
    assert_eq!(queued(|| cuStreamSynchronize(s)), 2);
    assert_eq!(queued(|| cuMemsetD8Async(a, 14, 1, legacy)), 3);
    // After a context synchronisation nothing waits for work before it.
    assert_eq!(queued(|| cuCtxSynchronize()), 1);
    assert_eq!(queued(|| cuMemsetD8Async(b, 15, 1, s)), 1);
    assert_eq!(queued(|| cuMemsetD8Async(b, 16, 1, nb)), 1);
    // …but legacy work waits for the blocking work queued since.
    assert_eq!(queued(|| cuMemsetD8Async(a, 17, 1, legacy)), 3);
    // The legacy stream's synchronisation joins the blocking streams first.
    assert_eq!(queued(|| cuMemsetD8Async(b, 18, 2, s)), 3);
    assert_eq!(queued(|| cuStreamSynchronize(legacy)), 4);
    // …and ends them: neither side waits for the other's earlier work now.
    assert_eq!(queued(|| cuMemsetD8Async(b, 19, 3, s)), 1);

    // The data, in the order the calls were made.
    let mut out = vec![0u8; N];
    assert_eq!(
        // SAFETY: `out` holds N bytes.
        unsafe { cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), b, N) },
        OK
    );
    let mut want = vec![9u8; N];
    want[..N / 8].fill(13);
    want[..3].fill(19);
    assert_eq!(out, want);
    assert_eq!(
        // SAFETY: `out` holds N bytes.
        unsafe { cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), a, N) },
        OK
    );
    let mut want = vec![9u8; N];
    want[..N / 2].fill(11);
    want[..N / 4].fill(12);
    want[0] = 17;
    assert_eq!(out, want);
}
