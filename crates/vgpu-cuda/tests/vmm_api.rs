//! Virtual memory management through the exported C entry points against a real vgpud (cpu
//! backend), as XLA's and PyTorch's allocators call it: granularity, reserve, create, map, set
//! access, use the range as device memory (copies, memsets, pointer queries), retain, unmap,
//! release, free.
//!
//! The driver's state is per process, so this file holds one test.

mod common;

use std::ffi::c_void;

use vgpucuda::api::context::*;
use vgpucuda::api::device::*;
use vgpucuda::api::host_memory::cuPointerGetAttribute;
use vgpucuda::api::init::*;
use vgpucuda::api::memory::*;
use vgpucuda::api::memset2d::cuMemsetD2D8_v2;
use vgpucuda::api::vmm::*;
use vgpucuda::types::{CUcontext, CUresult};

use CUresult::*;

const G: usize = 2 << 20;

fn prop() -> RawProp {
    RawProp {
        type_: 1,
        requested_handle_types: 0,
        location: RawLocation { type_: 1, id: 0 },
        win32_handle_meta_data: std::ptr::null_mut(),
        compression_type: 0,
        gpu_direct_rdma_capable: 0,
        usage: 0,
        reserved: [0; 4],
    }
}

fn rw() -> RawAccessDesc {
    RawAccessDesc {
        location: RawLocation { type_: 1, id: 0 },
        flags: 3,
    }
}

fn create(size: usize, p: &RawProp) -> Result<u64, CUresult> {
    let mut h = 0;
    // SAFETY: valid locals of the right types.
    match unsafe { cuMemCreate(&mut h, size, p, 0) } {
        CUDA_SUCCESS => Ok(h),
        e => Err(e),
    }
}

fn reserve(size: usize, alignment: usize) -> Result<u64, CUresult> {
    let mut p = 0;
    // SAFETY: a valid local.
    match unsafe { cuMemAddressReserve(&mut p, size, alignment, 0, 0) } {
        CUDA_SUCCESS => Ok(p),
        e => Err(e),
    }
}

fn set_access(p: u64, size: usize, d: &[RawAccessDesc]) -> CUresult {
    // SAFETY: `d` is valid for `d.len()` reads.
    unsafe { cuMemSetAccess(p, size, d.as_ptr(), d.len()) }
}

fn htod(p: u64, data: &[u8]) -> CUresult {
    // SAFETY: `data` is valid for its length.
    unsafe { cuMemcpyHtoD_v2(p, data.as_ptr().cast::<c_void>(), data.len()) }
}

fn dtoh(out: &mut [u8], p: u64) -> CUresult {
    // SAFETY: `out` is valid for its length.
    unsafe { cuMemcpyDtoH_v2(out.as_mut_ptr().cast::<c_void>(), p, out.len()) }
}

#[test]
fn a_program_reserves_maps_and_uses_device_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (_vgpud, sock) = common::start_vgpud(dir.path());
    std::env::set_var("VGPU_SOCKET", &sock);
    assert_eq!(cuInit(0), CUDA_SUCCESS);
    let mut dev = -1;
    // SAFETY: a valid local.
    assert_eq!(unsafe { cuDeviceGet(&mut dev, 0) }, CUDA_SUCCESS);
    let mut v = -1;
    // SAFETY: a valid local.
    assert_eq!(
        // SAFETY: a valid local.
        unsafe { cuDeviceGetAttribute(&mut v, 102, dev) },
        CUDA_SUCCESS
    );
    assert_eq!(v, 1, "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED");
    // SAFETY: a valid local.
    assert_eq!(
        // SAFETY: a valid local.
        unsafe { cuDeviceGetAttribute(&mut v, 103, dev) },
        CUDA_SUCCESS
    );
    assert_eq!(
        v, 0,
        "HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: no export"
    );

    // Granularity needs no context.
    let mut g = 0usize;
    for option in [0, 1] {
        // SAFETY: valid locals.
        assert_eq!(
            // SAFETY: valid locals.
            unsafe { cuMemGetAllocationGranularity(&mut g, &prop(), option) },
            CUDA_SUCCESS
        );
        assert_eq!(g, G);
    }
    // SAFETY: valid locals.
    assert_eq!(
        // SAFETY: valid locals.
        unsafe { cuMemGetAllocationGranularity(&mut g, &prop(), 2) },
        CUDA_ERROR_INVALID_VALUE
    );
    let host = RawProp {
        location: RawLocation { type_: 2, id: 0 },
        ..prop()
    };
    // SAFETY: valid locals.
    assert_eq!(
        // SAFETY: valid locals.
        unsafe { cuMemGetAllocationGranularity(&mut g, &host, 0) },
        CUDA_ERROR_NOT_SUPPORTED
    );

    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: a valid local.
    assert_eq!(
        // SAFETY: a valid local.
        unsafe { cuDevicePrimaryCtxRetain(&mut ctx, dev) },
        CUDA_SUCCESS
    );
    assert_eq!(cuCtxSetCurrent(ctx), CUDA_SUCCESS);

    // Reserve 4 granules, back the first three with two handles (PyTorch's expandable
    // segments: adjacent handles in one reservation).
    let va = reserve(4 * G, 0).unwrap();
    assert_eq!(va % G as u64, 0);
    assert_eq!(reserve(4 * G, 3), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(create(G + 1, &prop()), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(
        create(
            G,
            &RawProp {
                requested_handle_types: 8,
                ..prop()
            }
        ),
        Err(CUDA_ERROR_NOT_SUPPORTED),
        "fabric handles"
    );
    let h1 = create(G, &prop()).unwrap();
    let h2 = create(
        2 * G,
        &RawProp {
            requested_handle_types: 1,
            ..prop()
        },
    )
    .unwrap();
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: valid locals.
    assert_eq!(
        // SAFETY: valid locals.
        unsafe { cuMemGetInfo_v2(&mut free, &mut total) },
        CUDA_SUCCESS
    );
    assert_eq!(total - free, 3 * G, "handles are memory in use");
    let mut got = prop();
    got.type_ = 0;
    // SAFETY: a valid local.
    assert_eq!(
        // SAFETY: a valid local.
        unsafe { cuMemGetAllocationPropertiesFromHandle(&mut got, h2) },
        CUDA_SUCCESS
    );
    assert_eq!(
        (
            got.type_,
            got.requested_handle_types,
            got.location.type_,
            got.location.id
        ),
        (1, 1, 1, 0)
    );

    assert_eq!(
        cuMemMap(va, G, G, h1, 0),
        CUDA_ERROR_INVALID_VALUE,
        "offset"
    );
    assert_eq!(cuMemMap(va, G, 0, h1 ^ 0x77, 0), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(cuMemMap(va, G, 0, h1, 0), CUDA_SUCCESS);
    assert_eq!(cuMemMap(va + G as u64, 2 * G, 0, h2, 0), CUDA_SUCCESS);
    assert_eq!(
        cuMemMap(va + 2 * G as u64, G, 0, h1, 0),
        CUDA_ERROR_INVALID_VALUE,
        "overlap"
    );
    // Mapped, no access yet: copies fail.
    assert_eq!(htod(va, &[1; 16]), CUDA_ERROR_INVALID_VALUE);
    let ro = RawAccessDesc { flags: 1, ..rw() };
    assert_eq!(set_access(va, 3 * G, &[ro]), CUDA_ERROR_NOT_SUPPORTED);
    assert_eq!(set_access(va, 3 * G, &[rw()]), CUDA_SUCCESS);
    let mut flags = 9u64;
    // SAFETY: valid locals.
    assert_eq!(
        // SAFETY: valid locals.
        unsafe { cuMemGetAccess(&mut flags, &rw().location, va + 5) },
        CUDA_SUCCESS
    );
    assert_eq!(flags, 3);

    // Device memory through the mapped range: copies across the two handles, memsets,
    // device-to-device copies, pointer queries.
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 1) as u8).collect();
    let at = va + G as u64 - 4096;
    assert_eq!(htod(at, &data), CUDA_SUCCESS);
    let mut back = vec![0u8; data.len()];
    assert_eq!(dtoh(&mut back, at), CUDA_SUCCESS);
    assert!(back == data);
    assert_eq!(cuMemsetD8_v2(va + G as u64 - 2, 0xee, 4), CUDA_SUCCESS);
    let mut b4 = [0u8; 4];
    assert_eq!(dtoh(&mut b4, va + G as u64 - 2), CUDA_SUCCESS);
    assert_eq!(b4, [0xee; 4]);
    let mut plain = 0;
    // SAFETY: a valid local.
    assert_eq!(unsafe { cuMemAlloc_v2(&mut plain, 8192) }, CUDA_SUCCESS);
    assert_eq!(cuMemcpyDtoD_v2(plain, at, 8192), CUDA_SUCCESS);
    assert_eq!(dtoh(&mut back, plain), CUDA_SUCCESS);
    assert_eq!(back[..4094], data[..4094]);
    // A 2D memset whose rows cross from h1's mapping into h2's (the 2D paths bound a range by
    // the run of adjacent mappings, as the device does).
    let mut before = vec![0u8; 2048];
    assert_eq!(dtoh(&mut before, va + G as u64 - 768), CUDA_SUCCESS);
    assert_eq!(
        cuMemsetD2D8_v2(va + G as u64 - 768, 1024, 0x3c, 512, 2),
        CUDA_SUCCESS
    );
    let mut rows = vec![0u8; 2048];
    assert_eq!(dtoh(&mut rows, va + G as u64 - 768), CUDA_SUCCESS);
    assert!(rows[..512].iter().all(|&b| b == 0x3c));
    assert!(rows[1024..1536].iter().all(|&b| b == 0x3c));
    assert!(rows[512..1024] == before[512..1024], "between the rows");
    assert!(rows[1536..] == before[1536..], "after the rows");
    assert_eq!(
        cuMemsetD2D8_v2(va + 3 * G as u64 - 256, 512, 0, 512, 1),
        CUDA_ERROR_INVALID_VALUE,
        "past the last mapping"
    );
    let (mut base, mut size) = (0u64, 0usize);
    // SAFETY: valid locals.
    assert_eq!(
        // SAFETY: valid locals.
        unsafe { cuMemGetAddressRange_v2(&mut base, &mut size, va + G as u64 + 7) },
        CUDA_SUCCESS
    );
    assert_eq!(
        (base, size),
        (va + G as u64, 2 * G),
        "the mapping holding it"
    );
    let mut mem_type = 0u32;
    // SAFETY: the attribute (MEMORY_TYPE) is an unsigned int.
    assert_eq!(
        // SAFETY: the attribute (MEMORY_TYPE) is an unsigned int.
        unsafe { cuPointerGetAttribute((&mut mem_type as *mut u32).cast(), 2, va + 100) },
        CUDA_SUCCESS
    );
    assert_eq!(mem_type, 2, "CU_MEMORYTYPE_DEVICE");

    // Retain adds a reference: the handle outlives one release.
    let mut r = 0;
    // SAFETY: a valid local; the address is only looked up.
    assert_eq!(
        // SAFETY: a valid local; the address is only looked up.
        unsafe { cuMemRetainAllocationHandle(&mut r, (va + 3) as *mut c_void) },
        CUDA_SUCCESS
    );
    assert_eq!(r, h1);
    assert_eq!(cuMemRelease(h1), CUDA_SUCCESS);
    // SAFETY: a valid local.
    assert_eq!(
        // SAFETY: a valid local.
        unsafe { cuMemGetAllocationPropertiesFromHandle(&mut got, h1) },
        CUDA_SUCCESS,
        "still referenced"
    );
    assert_eq!(cuMemRelease(h1), CUDA_SUCCESS);
    assert_eq!(
        cuMemRelease(h1),
        CUDA_ERROR_INVALID_VALUE,
        "no reference left"
    );
    // Released but mapped: still usable until unmapped.
    assert_eq!(dtoh(&mut b4, va), CUDA_SUCCESS);

    assert_eq!(
        cuMemUnmap(va, 2 * G),
        CUDA_ERROR_INVALID_VALUE,
        "part of h2's"
    );
    assert_eq!(
        cuMemAddressFree(va, 4 * G),
        CUDA_ERROR_INVALID_VALUE,
        "mapped"
    );
    assert_eq!(cuMemUnmap(va, G), CUDA_SUCCESS);
    assert_eq!(dtoh(&mut b4, va), CUDA_ERROR_INVALID_VALUE, "unmapped");
    // SAFETY: valid locals.
    assert_eq!(
        // SAFETY: valid locals.
        unsafe { cuMemGetAddressRange_v2(&mut base, &mut size, va) },
        CUDA_ERROR_NOT_FOUND
    );
    assert_eq!(cuMemUnmap(va + G as u64, 2 * G), CUDA_SUCCESS);
    assert_eq!(cuMemRelease(h2), CUDA_SUCCESS);
    assert_eq!(cuMemFree_v2(plain), CUDA_SUCCESS);
    // SAFETY: valid locals.
    assert_eq!(
        // SAFETY: valid locals.
        unsafe { cuMemGetInfo_v2(&mut free, &mut total) },
        CUDA_SUCCESS
    );
    assert_eq!(total, free, "everything freed");
    assert_eq!(cuMemAddressFree(va, 4 * G), CUDA_SUCCESS);
    assert_eq!(cuMemAddressFree(va, 4 * G), CUDA_ERROR_INVALID_VALUE);
    // Exporting a handle is not offered: the generated stub answers.
    let h = create(G, &prop()).unwrap();
    let export = vgpucuda::exports::by_name("cuMemExportToShareableHandle").unwrap();
    // SAFETY: the stub is an `extern "C" fn() -> CUresult` (it ignores the arguments a
    // program would pass).
    let export: unsafe extern "C" fn() -> CUresult = unsafe { std::mem::transmute(export) };
    // SAFETY: as above.
    assert_eq!(unsafe { export() }, CUDA_ERROR_NOT_SUPPORTED);
    assert_eq!(cuMemRelease(h), CUDA_SUCCESS);
}
