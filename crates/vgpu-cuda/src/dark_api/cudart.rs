//! CUDART_INTERFACE (6bd5fb6c): how cudart loads the fatbins a program registers and finds a
//! device's primary context. 13 words; [10] is NULL in the driver's table.

use std::ffi::{c_uint, c_void};

use super::driver::{self, ok};
use super::unknown::{self, unknown_slots};
use super::Table;
use crate::api::guard;
use crate::types::{CUcontext, CUdevice, CUmodule, CUresult};

pub(crate) static TABLE: Table<13> = Table({
    let mut w = Table::<13>::sized();
    w[1] = get_module_from_cubin as *const c_void;
    w[2] = primary_context as *const c_void;
    w[6] = get_module_from_cubin_ext1 as *const c_void;
    w[7] = fn7 as *const c_void;
    w[8] = get_module_from_cubin_ext2 as *const c_void;
    w[12] = load_compilers as *const c_void;
    unknown_slots!(w, unknown::CUDART_INTERFACE; 3 4 5 9 11);
    w
});

/// `__fatBinC_Wrapper_t`, what nvcc emits around each fatbin and cudart registers.
#[repr(C)]
struct FatbinWrapper {
    magic: c_uint,
    _version: c_uint,
    data: *const c_void,
    _filename_or_fatbins: *const c_void,
}

const FATBIN_WRAPPER_MAGIC: c_uint = 0x4662_43b1;

/// Loads the fatbin a wrapper points to.
///
/// # Safety
/// `module` is NULL or valid for a write; `wrapper` is NULL or points to a wrapper.
unsafe fn load_wrapped(module: *mut CUmodule, wrapper: *const FatbinWrapper) -> CUresult {
    if module.is_null() || wrapper.is_null() {
        return CUresult::CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: non-NULL, points to a wrapper (the caller's promise).
    let w = unsafe { &*wrapper };
    if w.magic != FATBIN_WRAPPER_MAGIC || w.data.is_null() {
        return CUresult::CUDA_ERROR_INVALID_IMAGE;
    }
    // SAFETY: `module` is valid for a write; `data` is the fatbin nvcc put in the program.
    unsafe { driver::cuModuleLoadData(module, w.data) }
}

/// [1] `(CUmodule*, wrapper*)`: loads a registered fatbin as a module.
///
/// # Safety
/// As [`load_wrapped`].
unsafe extern "C" fn get_module_from_cubin(
    module: *mut CUmodule,
    wrapper: *const FatbinWrapper,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    guard("CUDART_INTERFACE[1]", || unsafe {
        load_wrapped(module, wrapper)
    })
}

/// [2] `(CUcontext*, CUdevice)`: the device's primary context, *not* activated (the driver
/// leaves its flags and activity as they were; cudart retains it itself later).
///
/// The driver API has no call that names a primary context without retaining it, so this
/// retains and at once releases it: the reference count ends where it was, and a primary
/// context's handle is the same across activations.
///
/// # Safety
/// `pctx` is NULL or valid for a write.
unsafe extern "C" fn primary_context(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    guard("CUDART_INTERFACE[2]", || {
        if pctx.is_null() {
            return CUresult::CUDA_ERROR_INVALID_VALUE;
        }
        let mut ctx: CUcontext = std::ptr::null_mut();
        let r = (|| {
            // SAFETY: a valid out-pointer.
            ok(unsafe { driver::cuDevicePrimaryCtxRetain(&mut ctx, dev) })?;
            // SAFETY: plain value argument; balances the retain above.
            ok(unsafe { driver::cuDevicePrimaryCtxRelease_v2(dev) })
        })();
        match r {
            Ok(()) => {
                // SAFETY: non-NULL, valid for a write (the caller's promise).
                unsafe { pctx.write(ctx) };
                CUresult::CUDA_SUCCESS
            }
            Err(e) => e,
        }
    })
}

/// [6] `(CUmodule*, wrapper*, a3, a4, u32)`: [1] with options nobody has decoded; only the
/// plain form (all of them zero) is supported.
///
/// # Safety
/// As [`load_wrapped`].
unsafe extern "C" fn get_module_from_cubin_ext1(
    module: *mut CUmodule,
    wrapper: *const FatbinWrapper,
    arg3: *mut c_void,
    arg4: *mut c_void,
    arg5: c_uint,
) -> CUresult {
    guard("CUDART_INTERFACE[6]", || {
        if !arg3.is_null() || !arg4.is_null() || arg5 != 0 {
            return crate::unsupported::report("CUDART_INTERFACE[6] with options");
        }
        // SAFETY: forwarded from the caller.
        unsafe { load_wrapped(module, wrapper) }
    })
}

/// [7] `(usize)`: nothing to do. The driver's is `void`; answering success keeps a caller that
/// reads the return register happy too.
unsafe extern "C" fn fn7(_arg: usize) -> CUresult {
    CUresult::CUDA_SUCCESS
}

/// [8] `(fatbin*, CUmodule*, a3, a4, u32)`: loads a fatbin given directly (not its wrapper);
/// only the plain form is supported, as for [6].
///
/// # Safety
/// `module` is NULL or valid for a write; `fatbin` is NULL or an image `cuModuleLoadData`
/// accepts.
unsafe extern "C" fn get_module_from_cubin_ext2(
    fatbin: *const c_void,
    module: *mut CUmodule,
    arg3: *mut c_void,
    arg4: *mut c_void,
    arg5: c_uint,
) -> CUresult {
    guard("CUDART_INTERFACE[8]", || {
        if !arg3.is_null() || !arg4.is_null() || arg5 != 0 {
            return crate::unsupported::report("CUDART_INTERFACE[8] with options");
        }
        if module.is_null() || fatbin.is_null() {
            return CUresult::CUDA_ERROR_INVALID_VALUE;
        }
        // SAFETY: valid pointers (the caller's promise).
        unsafe { driver::cuModuleLoadData(module, fatbin) }
    })
}

/// [12] `()`: NVIDIA's driver loads its PTX compiler, libnvvm and tileir here; the host
/// compiles for us, so there is nothing to load.
unsafe extern "C" fn load_compilers() -> CUresult {
    CUresult::CUDA_SUCCESS
}
