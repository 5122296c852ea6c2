//! The driver API of this library against a real vgpud (cpu backend) over its socket, called
//! through the exported C entry points, as a program would.
//!
//! The driver's state is per process, so this file holds one test that walks the API in order.

mod common;

use std::ffi::{c_char, c_int, c_void, CStr};

use vgpucuda::api::context::*;
use vgpucuda::api::copy::cuMemsetD32Async;
use vgpucuda::api::device::*;
use vgpucuda::api::init::*;
use vgpucuda::api::memory::*;
use vgpucuda::api::profiler::{cuProfilerStart, cuProfilerStop};
use vgpucuda::types::{CUcontext, CUresult, CUuuid};

#[test]
fn a_program_walks_the_driver_api_through_vgpud() {
    let dir = tempfile::tempdir().unwrap();
    let (_vgpud, sock) = common::start_vgpud(dir.path());

    // Before cuInit: versions answer, queries say NOT_INITIALIZED.
    let mut v = 0;
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDriverGetVersion(&mut v) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(v, 13000);
    let mut n: c_int = -1;
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetCount(&mut n) },
        CUresult::CUDA_ERROR_NOT_INITIALIZED
    );

    std::env::set_var("VGPU_SOCKET", &sock);
    assert_eq!(
        cuInit(1),
        CUresult::CUDA_ERROR_INVALID_VALUE,
        "flags must be 0"
    );
    assert_eq!(cuInit(0), CUresult::CUDA_SUCCESS);
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuDeviceGetCount(&mut n) }, CUresult::CUDA_SUCCESS);
    assert_eq!(n, 1);
    let mut dev = -1;
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGet(&mut dev, 1) },
        CUresult::CUDA_ERROR_INVALID_DEVICE
    );
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuDeviceGet(&mut dev, 0) }, CUresult::CUDA_SUCCESS);

    let mut name = [0 as c_char; 64];
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetName(name.as_mut_ptr(), 64, dev) },
        CUresult::CUDA_SUCCESS
    );
    // SAFETY: the pointers are valid locals of the right types.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_str().unwrap();
    assert!(name.starts_with("vgpu cpu reference device"), "{name}");
    let mut major = 0;
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetAttribute(&mut major, 75, dev) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(major, 9);
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetAttribute(&mut major, 100_000, dev) },
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    // The device (vgpud's cpu device, like an H200) can map host memory, this driver cannot
    // (cuMemHostGetDevicePointer): the attribute reads 0; unified addressing, which it keeps, 1.
    let mut v = -1;
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetAttribute(&mut v, 19, dev) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(v, 0, "CAN_MAP_HOST_MEMORY");
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetAttribute(&mut v, 41, dev) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(v, 1, "UNIFIED_ADDRESSING");
    let mut total = 0usize;
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceTotalMem_v2(&mut total, dev) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(total, 256 << 20, "the VM's quota");
    let mut u1 = CUuuid { bytes: [0; 16] };
    let mut u2 = CUuuid { bytes: [0; 16] };
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetUuid(&mut u1, dev) },
        CUresult::CUDA_SUCCESS
    );
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDeviceGetUuid_v2(&mut u2, dev) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(u1.bytes, u2.bytes);
    assert_ne!(u1.bytes, [0; 16]);

    // No context yet: memory calls fail, the primary context is inactive.
    let mut p = 0u64;
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemAlloc_v2(&mut p, 64) },
        CUresult::CUDA_ERROR_INVALID_CONTEXT
    );
    let (mut flags, mut active) = (7u32, 7);
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!((flags, active), (0, 0));
    // The profiler switches need a context, and do nothing else (no profiler in a guest).
    assert_eq!(cuProfilerStart(), CUresult::CUDA_ERROR_INVALID_CONTEXT);
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuDevicePrimaryCtxRetain(&mut ctx, dev) },
        CUresult::CUDA_SUCCESS
    );
    assert!(!ctx.is_null());
    assert_eq!(cuCtxSetCurrent(ctx), CUresult::CUDA_SUCCESS);
    assert_eq!(cuProfilerStart(), CUresult::CUDA_SUCCESS);
    assert_eq!(cuProfilerStop(), CUresult::CUDA_SUCCESS);
    let mut cur: CUcontext = std::ptr::null_mut();
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuCtxGetCurrent(&mut cur) }, CUresult::CUDA_SUCCESS);
    assert_eq!(cur, ctx);
    // Another thread has no current context.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut c: CUcontext = 1 as CUcontext;
            // SAFETY: the pointers are valid locals of the right types.
            assert_eq!(unsafe { cuCtxGetCurrent(&mut c) }, CUresult::CUDA_SUCCESS);
            assert!(c.is_null());
        });
    });

    // Memory: real round trips through vgpud.
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemAlloc_v2(&mut p, 0) },
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemAlloc_v2(&mut p, 4096) },
        CUresult::CUDA_SUCCESS
    );
    assert_ne!(p, 0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemcpyHtoD_v2(p, data.as_ptr().cast::<c_void>(), data.len()) },
        CUresult::CUDA_SUCCESS
    );
    let mut back = vec![0u8; 4096];
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemcpyDtoH_v2(back.as_mut_ptr().cast::<c_void>(), p, back.len()) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(back, data);
    assert_eq!(
        cuMemsetD32_v2(p + 2, 1, 1),
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(cuMemsetD32_v2(p, 0xdead_beef, 4), CUresult::CUDA_SUCCESS);
    assert_eq!(cuCtxSynchronize(), CUresult::CUDA_SUCCESS);
    let mut word = [0u8; 4];
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemcpyDtoH_v2(word.as_mut_ptr().cast::<c_void>(), p + 12, 4) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(u32::from_le_bytes(word), 0xdead_beef);
    // Asynchronous work that vgpud refuses (a fill past the allocation's end) is queued
    // without an error; the next synchronising call reports it, once.
    assert_eq!(
        cuMemsetD32Async(p + 4096, 7, 4, std::ptr::null_mut()),
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(cuCtxSynchronize(), CUresult::CUDA_ERROR_INVALID_VALUE);
    assert_eq!(cuCtxSynchronize(), CUresult::CUDA_SUCCESS);
    let (mut free, mut tot) = (0usize, 0usize);
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemGetInfo_v2(&mut free, &mut tot) },
        CUresult::CUDA_SUCCESS
    );
    assert_eq!(tot, 256 << 20);
    // The one allocation of 4096 bytes is all this VM uses: the rest of its quota is free.
    assert_eq!(free, tot - 4096);
    // Out of range of any allocation: refused by vgpud, reported as an invalid value.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemcpyHtoD_v2(p + 4090, data.as_ptr().cast::<c_void>(), 64) },
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(cuMemFree_v2(p), CUresult::CUDA_SUCCESS);
    assert_ne!(cuMemFree_v2(p), CUresult::CUDA_SUCCESS, "double free");
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuMemAlloc_v2(&mut p, 1 << 30) },
        CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        "over the quota"
    );

    // Created contexts stack on the primary one and pop back to it.
    let mut c2: CUcontext = std::ptr::null_mut();
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(
        // SAFETY: the pointers are valid locals of the right types.
        unsafe { cuCtxCreate_v2(&mut c2, 0, dev) },
        CUresult::CUDA_SUCCESS
    );
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuCtxGetCurrent(&mut cur) }, CUresult::CUDA_SUCCESS);
    assert_eq!(cur, c2);
    let mut id1 = 0u64;
    let mut id2 = 0u64;
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuCtxGetId(ctx, &mut id1) }, CUresult::CUDA_SUCCESS);
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuCtxGetId(c2, &mut id2) }, CUresult::CUDA_SUCCESS);
    assert_ne!(id1, id2);
    // SAFETY: any handle may be passed; only live ones are acted on.
    assert_eq!(unsafe { cuCtxDestroy_v2(c2) }, CUresult::CUDA_SUCCESS);
    assert_eq!(
        // SAFETY: as above.
        unsafe { cuCtxDestroy_v2(c2) },
        CUresult::CUDA_ERROR_INVALID_CONTEXT
    );
    // SAFETY: the pointers are valid locals of the right types.
    assert_eq!(unsafe { cuCtxGetCurrent(&mut cur) }, CUresult::CUDA_SUCCESS);
    assert_eq!(cur, ctx);
    assert_eq!(cuDevicePrimaryCtxRelease(dev), CUresult::CUDA_SUCCESS);
    assert_eq!(
        cuDevicePrimaryCtxRelease(dev),
        CUresult::CUDA_ERROR_INVALID_CONTEXT,
        "released more often than retained"
    );
}
