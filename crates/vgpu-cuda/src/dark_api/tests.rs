//! The tables' shapes against the measurements on driver 580 (shared/driver-api-probe.md §4),
//! and the behaviour of the slots with known meaning.

use std::ffi::c_void;

use super::*;
use crate::types::{CUcontext, CUmodule, CUresult};

/// (id, has a size word, words, NULL slots) as measured.
const SHAPES: [([u8; 16], bool, usize, &[usize]); 10] = [
    (ids::CUDART_INTERFACE, true, 13, &[10]),
    (ids::TOOLS_RUNTIME_CALLBACK_HOOKS, true, 7, &[]),
    (ids::TOOLS_TLS, true, 3, &[]),
    (ids::CONTEXT_LOCAL_STORAGE, false, 4, &[3]),
    (ids::CONTEXT_CHECKS, true, 15, &[]),
    (ids::INTEGRITY_CHECK, true, 3, &[]),
    (ids::T21318C60, true, 93, &[91]),
    (ids::T69A28E9F, true, 34, &[]),
    (ids::DA9151D3, true, 7, &[]),
    (ids::T1734DC26, true, 17, &[]),
];

/// The words of table `id`, read through the address callers get.
fn words(id: &[u8; 16], n: usize) -> &'static [*const c_void] {
    let p = table(id).expect("a known table");
    // SAFETY: every table is a static of at least `n` words (checked against its length by
    // `statics_have_the_measured_length`).
    unsafe { std::slice::from_raw_parts(p.cast::<*const c_void>(), n) }
}

fn static_len(id: &[u8; 16]) -> usize {
    match *id {
        ids::CUDART_INTERFACE => cudart::TABLE.0.len(),
        ids::TOOLS_RUNTIME_CALLBACK_HOOKS => tools::CALLBACK_HOOKS.0.len(),
        ids::TOOLS_TLS => tools::TLS.0.len(),
        ids::CONTEXT_LOCAL_STORAGE => cls::TABLE.0.len(),
        ids::CONTEXT_CHECKS => context_checks::TABLE.0.len(),
        ids::INTEGRITY_CHECK => integrity::TABLE.0.len(),
        ids::T21318C60 => opaque::T21318C60.0.len(),
        ids::T69A28E9F => opaque::T69A28E9F.0.len(),
        ids::DA9151D3 => opaque::DA9151D3.0.len(),
        ids::T1734DC26 => opaque::T1734DC26.0.len(),
        _ => unreachable!(),
    }
}

#[test]
fn uuids_are_the_drivers_bytes() {
    assert_eq!(
        ids::CUDART_INTERFACE,
        [
            0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd,
            0x9d, 0xf9
        ]
    );
    assert_eq!(ids::CONTEXT_LOCAL_STORAGE[..4], [0xc6, 0x93, 0x33, 0x6e]);
}

#[test]
fn statics_have_the_measured_length() {
    for (id, _, n, _) in SHAPES {
        assert_eq!(static_len(&id), n, "{id:02x?}");
    }
}

#[test]
fn every_table_has_the_measured_shape() {
    for (id, sized, n, nulls) in SHAPES {
        let w = words(&id, n);
        let first_code = if sized {
            assert_eq!(w[0] as usize, n * 8, "size word of {id:02x?}");
            1
        } else {
            0
        };
        for (i, &word) in w.iter().enumerate().skip(first_code) {
            assert_eq!(word.is_null(), nulls.contains(&i), "{id:02x?}[{i}]");
        }
    }
}

#[test]
fn every_request_gets_the_same_address() {
    for (id, ..) in SHAPES {
        assert_eq!(table(&id), table(&id));
    }
}

#[test]
fn code_slots_are_distinct_functions() {
    for (id, sized, n, _) in SHAPES {
        let mut code: Vec<_> = words(&id, n)
            .iter()
            .skip(usize::from(sized))
            .filter(|w| !w.is_null())
            .collect();
        let all = code.len();
        code.sort();
        code.dedup();
        assert_eq!(code.len(), all, "{id:02x?}");
    }
}

#[test]
fn an_unknown_id_is_not_found() {
    assert_eq!(table(&[0; 16]), None);
    assert_eq!(table(&uuid("0ca50b8c-1004-929a-89a7-d0df10e77286")), None);
    let id = crate::types::CUuuid { bytes: [1; 16] };
    let mut t: *const c_void = std::ptr::null();
    // SAFETY: valid pointers.
    let rc = unsafe { crate::api::proc::cuGetExportTable(&mut t, &id) };
    assert_eq!(rc, CUresult::CUDA_ERROR_NOT_FOUND);
}

#[test]
fn cu_get_export_table_hands_out_the_tables() {
    let id = crate::types::CUuuid {
        bytes: ids::INTEGRITY_CHECK.map(|b| b as _),
    };
    let mut t: *const c_void = std::ptr::null();
    // SAFETY: valid pointers.
    let rc = unsafe { crate::api::proc::cuGetExportTable(&mut t, &id) };
    assert_eq!(rc, CUresult::CUDA_SUCCESS);
    assert_eq!(Some(t), table(&ids::INTEGRITY_CHECK));
}

type NoArgs = unsafe extern "C" fn() -> CUresult;

#[test]
fn unknown_slots_answer_not_supported_and_say_which() {
    let w = words(&ids::T21318C60, 93);
    // SAFETY: unknown slots take no arguments and answer a CUresult (unknown::slot).
    let f: NoArgs = unsafe { std::mem::transmute(w[5]) };
    // SAFETY: as above.
    assert_eq!(unsafe { f() }, CUresult::CUDA_ERROR_NOT_SUPPORTED);
    // SAFETY: as above.
    assert_eq!(unsafe { f() }, CUresult::CUDA_ERROR_NOT_SUPPORTED);
    let reported = crate::unsupported::reported();
    assert!(
        reported.contains(&"export table 21318c60[5]"),
        "{reported:?}"
    );
    assert_eq!(
        unknown::name(unknown::TOOLS_TLS, 1),
        "export table 42d85a81[1]"
    );
}

#[test]
fn decoded_cublas_slots_answer_without_a_context() {
    // TOOLS_TLS [2]: the thread's current context, here none (NULL written, success).
    type Out = unsafe extern "C" fn(*mut crate::types::CUcontext) -> CUresult;
    let f: Out = slot(&ids::TOOLS_TLS, 3, 2);
    let mut ctx = 1usize as crate::types::CUcontext;
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { f(&mut ctx) }, CUresult::CUDA_SUCCESS);
    assert!(ctx.is_null());
    // 21318c60 [4]: no context is number 0; a NULL out-pointer is refused.
    type Number = unsafe extern "C" fn(crate::types::CUcontext, *mut u64) -> CUresult;
    let g: Number = slot(&ids::T21318C60, 93, 4);
    let mut n = 7u64;
    // SAFETY: a valid out-pointer; the context is only looked up, never dereferenced.
    let rc = unsafe { g(std::ptr::null_mut(), &mut n) };
    assert_eq!(rc, CUresult::CUDA_SUCCESS);
    assert_eq!(n, 0);
    // SAFETY: as above.
    let rc = unsafe { g(0x1234usize as crate::types::CUcontext, &mut n) };
    assert_eq!(rc, CUresult::CUDA_SUCCESS);
    assert_eq!(n, 0);
    // SAFETY: NULL is allowed and refused.
    let rc = unsafe { g(std::ptr::null_mut(), std::ptr::null_mut()) };
    assert_eq!(rc, CUresult::CUDA_ERROR_INVALID_VALUE);
    // 21318c60 [39]: hands its second argument back through its third.
    type Pass = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut *mut c_void) -> CUresult;
    let p: Pass = slot(&ids::T21318C60, 93, 39);
    let mut x = 0u8;
    let mut back = std::ptr::null_mut();
    let xp = (&mut x as *mut u8).cast::<c_void>();
    // SAFETY: valid pointers; the first argument is not looked at.
    let rc = unsafe { p(std::ptr::null_mut(), xp, &mut back) };
    assert_eq!(rc, CUresult::CUDA_SUCCESS);
    assert_eq!(back, xp);
    // SAFETY: NULL is allowed and refused.
    let rc = unsafe { p(xp, std::ptr::null_mut(), &mut back) };
    assert_eq!(rc, CUresult::CUDA_ERROR_INVALID_VALUE);
    // 21318c60 [51]: a record of a stream needs a context or a stream, and somewhere to go.
    type Record = unsafe extern "C" fn(
        crate::types::CUcontext,
        crate::types::CUstream,
        *mut *const c_void,
    ) -> CUresult;
    let r: Record = slot(&ids::T21318C60, 93, 51);
    let mut out = std::ptr::null();
    // SAFETY: a valid out-pointer; NULL handles are allowed.
    let rc = unsafe { r(std::ptr::null_mut(), std::ptr::null_mut(), &mut out) };
    assert_eq!(rc, CUresult::CUDA_ERROR_INVALID_HANDLE);
    let none = std::ptr::null_mut();
    // SAFETY: NULL is allowed and refused.
    let rc = unsafe { r(none, none.cast(), none.cast()) };
    assert_eq!(rc, CUresult::CUDA_ERROR_INVALID_VALUE);
}

fn slot<F>(id: &[u8; 16], n: usize, i: usize) -> F {
    let w = words(id, n)[i];
    assert!(!w.is_null());
    assert_eq!(
        std::mem::size_of::<F>(),
        std::mem::size_of::<*const c_void>()
    );
    // SAFETY: callers name the slot's real signature; sizes checked above.
    unsafe { std::mem::transmute_copy(&w) }
}

type Put =
    unsafe extern "C" fn(CUcontext, *mut c_void, *mut c_void, Option<cls::Destructor>) -> CUresult;
type Delete = unsafe extern "C" fn(CUcontext, *mut c_void) -> CUresult;
type Get = unsafe extern "C" fn(*mut *mut c_void, CUcontext, *mut c_void) -> CUresult;

fn fake(addr: usize) -> CUcontext {
    std::ptr::without_provenance_mut(addr)
}

#[test]
fn context_local_storage_keeps_values_per_context_and_key() {
    let put: Put = slot(&ids::CONTEXT_LOCAL_STORAGE, 4, 0);
    let delete: Delete = slot(&ids::CONTEXT_LOCAL_STORAGE, 4, 1);
    let get: Get = slot(&ids::CONTEXT_LOCAL_STORAGE, 4, 2);
    let (a, b) = (fake(0x1000), fake(0x2000));
    let key = std::ptr::without_provenance_mut(7);
    let mut v: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid out-pointers; the contexts are only keys.
    unsafe {
        assert_eq!(get(&mut v, a, key), CUresult::CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(
            put(a, key, std::ptr::without_provenance_mut(42), None),
            CUresult::CUDA_SUCCESS
        );
        assert_eq!(get(&mut v, a, key), CUresult::CUDA_SUCCESS);
        assert_eq!(v as usize, 42);
        assert_eq!(get(&mut v, b, key), CUresult::CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(
            get(&mut v, a, std::ptr::without_provenance_mut(8)),
            CUresult::CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(
            put(a, key, std::ptr::without_provenance_mut(43), None),
            CUresult::CUDA_SUCCESS
        );
        assert_eq!(get(&mut v, a, key), CUresult::CUDA_SUCCESS);
        assert_eq!(v as usize, 43);
        assert_eq!(delete(a, key), CUresult::CUDA_SUCCESS);
        assert_eq!(get(&mut v, a, key), CUresult::CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(delete(a, key), CUresult::CUDA_SUCCESS);
        assert_eq!(
            get(std::ptr::null_mut(), a, key),
            CUresult::CUDA_ERROR_INVALID_VALUE
        );
    }
}

#[test]
fn context_local_storage_without_a_context_fails() {
    let get: Get = slot(&ids::CONTEXT_LOCAL_STORAGE, 4, 2);
    let mut v: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid out-pointer. No context is current on a test thread (or contexts are
    // not implemented yet): either way NULL cannot name one.
    let rc = unsafe { get(&mut v, std::ptr::null_mut(), std::ptr::null_mut()) };
    assert_ne!(rc, CUresult::CUDA_SUCCESS);
}

static DESTROYED: std::sync::Mutex<Vec<(usize, usize, usize)>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn record_destruction(ctx: CUcontext, key: *mut c_void, value: *mut c_void) {
    DESTROYED
        .lock()
        .unwrap()
        .push((ctx as usize, key as usize, value as usize));
}

#[test]
fn a_destroyed_context_calls_its_destructors_once() {
    let put: Put = slot(&ids::CONTEXT_LOCAL_STORAGE, 4, 0);
    let get: Get = slot(&ids::CONTEXT_LOCAL_STORAGE, 4, 2);
    let (c, other) = (fake(0x3000), fake(0x4000));
    let key = std::ptr::without_provenance_mut(9);
    let val = std::ptr::without_provenance_mut(99);
    // SAFETY: the contexts are only keys; the destructor matches the C signature.
    unsafe {
        assert_eq!(
            put(c, key, val, Some(record_destruction)),
            CUresult::CUDA_SUCCESS
        );
        assert_eq!(
            put(other, key, val, Some(record_destruction)),
            CUresult::CUDA_SUCCESS
        );
    }
    // SAFETY: the test owns the context `c` names, and its destructor only records the call.
    unsafe {
        context_destroyed(c);
        context_destroyed(c);
    }
    let d = DESTROYED.lock().unwrap().clone();
    assert_eq!(d, vec![(0x3000, 9, 99)]);
    let mut v: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    unsafe {
        assert_eq!(get(&mut v, c, key), CUresult::CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(get(&mut v, other, key), CUresult::CUDA_SUCCESS);
    }
}

#[test]
fn context_checks_report_nothing_set() {
    type Check = unsafe extern "C" fn(CUcontext, *mut u32, *mut *const c_void) -> CUresult;
    let check: Check = slot(&ids::CONTEXT_CHECKS, 15, 2);
    let three: unsafe extern "C" fn() -> u32 = slot(&ids::CONTEXT_CHECKS, 15, 3);
    let mut out = 7u32;
    let mut detail: *const c_void = std::ptr::null();
    // SAFETY: valid out-pointers.
    unsafe {
        assert_eq!(
            check(std::ptr::null_mut(), &mut out, &mut detail),
            CUresult::CUDA_SUCCESS
        );
        assert_eq!(out, 0);
        assert_eq!(three(), 0);
    }
}

#[test]
fn the_tools_buffers_are_static_and_zeroed() {
    type Buf = unsafe extern "C" fn(*mut *mut c_void, *mut usize);
    for (i, len) in [(2, 1024), (6, 14)] {
        let f: Buf = slot(&ids::TOOLS_RUNTIME_CALLBACK_HOOKS, 7, i);
        let (mut p1, mut p2) = (std::ptr::null_mut(), std::ptr::null_mut());
        let mut n = 0usize;
        // SAFETY: valid out-pointers; the buffer holds `len` u64s.
        unsafe {
            f(&mut p1, &mut n);
            f(&mut p2, std::ptr::null_mut());
            assert!(std::slice::from_raw_parts(p1.cast::<u64>(), len)
                .iter()
                .all(|&w| w == 0));
        }
        assert!(!p1.is_null());
        assert_eq!(p1, p2);
        assert_eq!(n, len);
    }
}

#[test]
fn cudart_interface_slots() {
    type Load = unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult;
    type Primary = unsafe extern "C" fn(*mut CUcontext, crate::types::CUdevice) -> CUresult;
    type Ext1 = unsafe extern "C" fn(
        *mut CUmodule,
        *const c_void,
        *mut c_void,
        *mut c_void,
        u32,
    ) -> CUresult;
    type Ext2 = unsafe extern "C" fn(
        *const c_void,
        *mut CUmodule,
        *mut c_void,
        *mut c_void,
        u32,
    ) -> CUresult;
    let id = &ids::CUDART_INTERFACE;
    let load: Load = slot(id, 13, 1);
    let primary: Primary = slot(id, 13, 2);
    let ext1: Ext1 = slot(id, 13, 6);
    let fn7: unsafe extern "C" fn(usize) -> CUresult = slot(id, 13, 7);
    let ext2: Ext2 = slot(id, 13, 8);
    let compilers: NoArgs = slot(id, 13, 12);

    #[repr(C)]
    struct Wrapper(u32, u32, *const c_void, *const c_void);
    let image = [0u8; 64];
    let good = Wrapper(0x4662_43b1, 1, image.as_ptr().cast(), std::ptr::null());
    let bad = Wrapper(0x1234, 1, image.as_ptr().cast(), std::ptr::null());
    let mut m: CUmodule = std::ptr::null_mut();
    let mut direct: CUmodule = std::ptr::null_mut();
    let null: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid pointers; the image is what cuModuleLoadData gets in both calls.
    unsafe {
        assert_eq!(
            load(std::ptr::null_mut(), (&raw const good).cast()),
            CUresult::CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            load(&mut m, (&raw const bad).cast()),
            CUresult::CUDA_ERROR_INVALID_IMAGE
        );
        // The wrapper's data goes to cuModuleLoadData as it is.
        assert_eq!(
            load(&mut m, (&raw const good).cast()),
            super::driver::cuModuleLoadData(&mut direct, image.as_ptr().cast())
        );
        assert_eq!(
            ext1(&mut m, (&raw const good).cast(), null, null, 0),
            super::driver::cuModuleLoadData(&mut direct, image.as_ptr().cast())
        );
        assert_eq!(
            ext2(image.as_ptr().cast(), &mut m, null, null, 0),
            super::driver::cuModuleLoadData(&mut direct, image.as_ptr().cast())
        );
        assert_eq!(
            ext1(&mut m, (&raw const good).cast(), null, null, 1),
            CUresult::CUDA_ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            ext2(image.as_ptr().cast(), &mut m, null, null, 1),
            CUresult::CUDA_ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            primary(std::ptr::null_mut(), 0),
            CUresult::CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(fn7(5), CUresult::CUDA_SUCCESS);
        assert_eq!(compilers(), CUresult::CUDA_SUCCESS);
    }
}

#[test]
fn the_skip_init_probe_is_not_found() {
    assert!(table(&ids::F8CFF951).is_none());
}
