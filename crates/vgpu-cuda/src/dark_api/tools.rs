//! The tools tables: TOOLS_RUNTIME_CALLBACK_HOOKS (a094798c, 7 words) and TOOLS_TLS (42d85a81,
//! 3 words). They serve profilers and tools; with none attached, cudart needs only the two
//! buffers of the hooks table.

use std::cell::UnsafeCell;
use std::ffi::c_void;

use super::unknown::{self, unknown_slots};
use super::Table;
use crate::types::{CUcontext, CUresult};

pub(crate) static CALLBACK_HOOKS: Table<7> = Table({
    let mut w = Table::<7>::sized();
    w[2] = buffer1 as *const c_void;
    w[6] = buffer2 as *const c_void;
    unknown_slots!(w, unknown::TOOLS_RUNTIME_CALLBACK_HOOKS; 1 3 4 5);
    w
});

pub(crate) static TLS: Table<3> = Table({
    let mut w = Table::<3>::sized();
    w[2] = thread_context as *const c_void;
    unknown_slots!(w, unknown::TOOLS_TLS; 1);
    w
});

/// TOOLS_TLS [2] `(CUcontext *out)`, which cuBLAS calls on each of its calls: the calling
/// thread's current context (NULL when it has none), always success. Measured on driver 580:
/// called with four pointers to sentinel bytes it wrote the current context's address through
/// the first and touched nothing else.
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe extern "C" fn thread_context(out: *mut CUcontext) -> CUresult {
    if !out.is_null() {
        // SAFETY: non-NULL, valid for a write (the caller's promise).
        unsafe { out.write(crate::api::context::current()) };
    }
    CUresult::CUDA_SUCCESS
}

/// A zeroed buffer cudart may write into, of `N` words. The count it is told ([`BUFFER1_LEN`],
/// [`BUFFER2_LEN`]) is the peers' (ZLUDA counts 4-byte words, smolvm bytes); the buffers have 8
/// bytes per counted unit so that any reading of the unit fits.
#[repr(C, align(16))]
struct Buffer<const N: usize>(UnsafeCell<[u64; N]>);

// SAFETY: this library never reads or writes the buffer; it only hands out its address, and
// what the caller does with it is the caller's, as with the driver's own buffer.
unsafe impl<const N: usize> Sync for Buffer<N> {}

const BUFFER1_LEN: usize = 1024;
const BUFFER2_LEN: usize = 14;
static BUFFER1: Buffer<BUFFER1_LEN> = Buffer(UnsafeCell::new([0; BUFFER1_LEN]));
static BUFFER2: Buffer<BUFFER2_LEN> = Buffer(UnsafeCell::new([0; BUFFER2_LEN]));

/// # Safety
/// `ptr` and `size` are NULL or valid for a write.
unsafe fn hand_out(ptr: *mut *mut c_void, size: *mut usize, buf: *mut c_void, len: usize) {
    if !ptr.is_null() {
        // SAFETY: non-NULL, valid for a write (the caller's promise).
        unsafe { ptr.write(buf) };
    }
    if !size.is_null() {
        // SAFETY: as above.
        unsafe { size.write(len) };
    }
}

/// [2] `(void**, size_t*)`: a static zeroed buffer and its size.
///
/// # Safety
/// `ptr` and `size` are NULL or valid for a write.
unsafe extern "C" fn buffer1(ptr: *mut *mut c_void, size: *mut usize) {
    // SAFETY: forwarded from the caller.
    unsafe { hand_out(ptr, size, BUFFER1.0.get().cast(), BUFFER1_LEN) }
}

/// [6] `(void**, size_t*)`: as [2], another buffer.
///
/// # Safety
/// `ptr` and `size` are NULL or valid for a write.
unsafe extern "C" fn buffer2(ptr: *mut *mut c_void, size: *mut usize) {
    // SAFETY: forwarded from the caller.
    unsafe { hand_out(ptr, size, BUFFER2.0.get().cast(), BUFFER2_LEN) }
}
