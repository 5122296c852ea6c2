//! Kernel launches. Parameters are packed by the layout vgpud reported for the function
//! (`kernelParams`, one pointer per parameter) or taken as one packed buffer (`extra` with
//! `CU_LAUNCH_PARAM_BUFFER_POINTER`/`_SIZE`). A launch is queued on its stream without waiting.

use std::ffi::{c_uint, c_void};

use vgpu_abi::cmd::{LaunchBody, MAX_INLINE_PARAMS, MAX_KERNEL_PARAMS};

use super::context::require_current;
use super::guard;
use super::module::{function, ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES, ATTR_MAX_THREADS_PER_BLOCK};
use super::stream::{enqueue, resolve};
use crate::driver;
use crate::params::{arena_for, ARENA};
use crate::types::{CUfunction, CUresult, CUstream};

/// `CU_LAUNCH_PARAM_END`.
const PARAM_END: usize = 0x00;
/// `CU_LAUNCH_PARAM_BUFFER_POINTER`.
const PARAM_BUFFER_POINTER: usize = 0x01;
/// `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const PARAM_BUFFER_SIZE: usize = 0x02;
/// `CU_LAUNCH_PARAM_END_AS_INT`'s longest list walked (a list without an end is an error).
const MAX_EXTRA: usize = 64;

/// The packed parameters of a launch.
///
/// # Safety
/// `params` is NULL or holds one valid pointer per parameter of `layout`, each to that many
/// bytes; `extra` is NULL or a `CU_LAUNCH_PARAM_END`-terminated list whose buffer entries point
/// to the buffer and to its `size_t` size.
unsafe fn pack(
    layout: &[(u32, u32)],
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<Vec<u8>, CUresult> {
    if !params.is_null() {
        let len = layout
            .iter()
            .map(|&(o, s)| o as usize + s as usize)
            .max()
            .unwrap_or(0);
        let mut buf = vec![0u8; len];
        for (i, &(o, s)) in layout.iter().enumerate() {
            // SAFETY: one pointer per parameter (the caller's promise).
            let src = unsafe { *params.add(i) };
            if src.is_null() {
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
            }
            // SAFETY: `src` points to the parameter's `s` bytes; `buf` holds o + s bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.cast::<u8>(),
                    buf.as_mut_ptr().add(o as usize),
                    s as usize,
                )
            };
        }
        return Ok(buf);
    }
    if extra.is_null() {
        return if layout.is_empty() {
            Ok(Vec::new())
        } else {
            Err(CUresult::CUDA_ERROR_INVALID_VALUE)
        };
    }
    let (mut ptr, mut size): (*const u8, Option<usize>) = (std::ptr::null(), None);
    let mut i = 0;
    loop {
        if i >= MAX_EXTRA {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: a terminated list (the caller's promise); entries come in pairs.
        let key = unsafe { *extra.add(i) } as usize;
        match key {
            PARAM_END => break,
            PARAM_BUFFER_POINTER => {
                // SAFETY: as above.
                ptr = unsafe { *extra.add(i + 1) }.cast();
            }
            PARAM_BUFFER_SIZE => {
                // SAFETY: as above; the value points to a size_t.
                let p = unsafe { *extra.add(i + 1) }.cast::<usize>();
                if p.is_null() {
                    return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
                }
                // SAFETY: points to the buffer's size_t size (the caller's promise).
                size = Some(unsafe { p.read_unaligned() });
            }
            _ => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        }
        i += 2;
    }
    match (ptr.is_null(), size) {
        (false, Some(n)) => {
            // SAFETY: the buffer holds `n` bytes (the caller's promise).
            Ok(unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec())
        }
        _ => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
    }
}

/// # Safety
/// As [`pack`].
#[allow(clippy::too_many_arguments)]
unsafe fn launch(
    f: CUfunction,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    cluster: [c_uint; 3],
    s: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    let func = function(f.cast())?;
    if !driver::get()?.runs_kernels {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            if crate::unsupported::warnings_enabled() {
                eprintln!(
                    "vgpu libcuda: this vGPU (vgpud's cpu reference device) runs no program kernels: \
                     launches answer CUDA_ERROR_NOT_SUPPORTED"
                );
            }
        });
        return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
    }
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { pack(func.params(), params, extra) }?;
    if grid.contains(&0) || block.contains(&0) {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // A launch the driver would refuse fails at the call, as NVIDIA's does, not later on the
    // stream: the function's limits are read once and cached.
    let threads = block.iter().map(|&b| u64::from(b)).product::<u64>();
    let max_threads = func.attribute(ATTR_MAX_THREADS_PER_BLOCK)?;
    if threads > max_threads.max(0) as u64 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    if shared > 0 {
        let max_shared = func.attribute(ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES)?;
        if u64::from(shared) > max_shared.max(0) as u64 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
    }
    if cluster != [0; 3] {
        // A grid of whole clusters (the driver checks the function and the device take it).
        if cluster.contains(&0) || grid.iter().zip(cluster).any(|(&g, c)| g % c != 0) {
            return Err(CUresult::CUDA_ERROR_INVALID_CLUSTER_SIZE);
        }
    }
    // Clusters travel in the indirect launch only (ABI 1.6).
    if bytes.len() > MAX_INLINE_PARAMS || cluster != [0; 3] {
        return launch_indirect(
            func.handle(),
            grid,
            block,
            shared,
            cluster,
            s,
            per_thread,
            &bytes,
        );
    }
    let mut body = LaunchBody::new(func.handle(), grid, block, &bytes)
        .ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)?;
    body.shared_mem = shared;
    let st = enqueue(s, per_thread)?;
    // Queued: its completion is not waited for.
    drop(st.launch_body(body).map_err(|e| driver::error_of(&e))?);
    Ok(CUresult::CUDA_SUCCESS)
}

/// A launch whose parameters go through the staging arena ([`crate::params`]).
#[allow(clippy::too_many_arguments)]
fn launch_indirect(
    func: u64,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    cluster: [c_uint; 3],
    s: CUstream,
    per_thread: bool,
    bytes: &[u8],
) -> Result<CUresult, CUresult> {
    if bytes.len() > MAX_KERNEL_PARAMS as usize {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let d = driver::get()?;
    // A bad handle fails before any space is taken.
    resolve(s, per_thread)?;
    let mut guard = ARENA.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(arena_for(&d.dev).ok_or(CUresult::CUDA_ERROR_NOT_SUPPORTED)?);
    }
    let arena = guard.as_mut().expect("made above");
    // Space first: waiting for it (for earlier launches to retire) must not hold back other
    // threads' work, as the stream's ordering (`enqueue`) would while it is held.
    let (off, end) = arena
        .reserve(bytes.len() as u64)
        .map_err(|e| driver::error_of(&e))?;
    let queued = d
        .dev
        .write_staging(off, bytes)
        .map_err(|e| driver::error_of(&e))
        .and_then(|()| {
            let st = enqueue(s, per_thread)?;
            st.launch_indirect(func, grid, block, shared, cluster, off, bytes.len() as u32)
                .map_err(|e| driver::error_of(&e))
        });
    match queued {
        Ok(p) => {
            arena.commit(end, p);
            Ok(CUresult::CUDA_SUCCESS)
        }
        Err(e) => {
            arena.cancel(end);
            Err(e)
        }
    }
}

macro_rules! launch_kernel {
    ($name:ident, $pt:expr) => {
        /// `cuLaunchKernel`: `f` is a `CUfunction` or a `CUkernel`.
        ///
        /// # Safety
        /// `params` and `extra` as the CUDA driver API describes them.
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            shared: c_uint,
            s: CUstream,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            guard(stringify!($name), || {
                // SAFETY: forwarded from the caller.
                unsafe {
                    launch(
                        f,
                        [gx, gy, gz],
                        [bx, by, bz],
                        shared,
                        [0; 3],
                        s,
                        params,
                        extra,
                        $pt,
                    )
                }
                .unwrap_or_else(|e| e)
            })
        }
    };
}
launch_kernel!(cuLaunchKernel, false);
launch_kernel!(cuLaunchKernel_ptsz, true);

/// `CUlaunchConfig` (CUDA 12.0+), with the attribute id read as a plain integer.
#[repr(C)]
pub struct LaunchConfig {
    pub(crate) grid: [c_uint; 3],
    pub(crate) block: [c_uint; 3],
    pub(crate) shared: c_uint,
    pub(crate) stream: CUstream,
    pub(crate) attrs: *const LaunchAttribute,
    pub(crate) num_attrs: c_uint,
}

/// `CUlaunchAttribute`: an id and a 64-byte value.
#[repr(C)]
pub struct LaunchAttribute {
    pub(crate) id: u32,
    _pad: [u8; 4],
    pub(crate) value: [u8; 64],
}

/// `CU_LAUNCH_ATTRIBUTE_*` ids a launch may carry here: none (0); hints a launch on vgpud's
/// device may ignore without changing what it computes: programmatic stream serialization (6:
/// it only allows the kernel to start before the previous one on its stream ends, so a launch
/// that waits for it, as every launch here does, computes the same; the kernel's
/// `cudaGridDependencySynchronize` then returns at once), the stream priority (8; vgpud
/// schedules by the VM's priority and pool), the memory synchronisation domain and its map (9,
/// 10), the preferred shared memory carveout (14). The cluster shape ([`CLUSTER_DIMENSION`])
/// goes to vgpud with the launch. The others (cooperative, cluster scheduling preferences,
/// programmatic events, completion events) change what a launch means and are refused.
const IGNORABLE_ATTRIBUTES: [u32; 6] = [0, 6, 8, 9, 10, 14];
/// `CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION`: three `unsigned int`s, x, y, z.
const CLUSTER_DIMENSION: u32 = 4;

/// # Safety
/// `config` is NULL or a valid `CUlaunchConfig` whose `attrs` holds `numAttrs` entries;
/// `params` and `extra` as for [`launch`].
unsafe fn launch_ex(
    config: *const LaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    per_thread: bool,
) -> Result<CUresult, CUresult> {
    if config.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and valid (the caller's promise).
    let c = unsafe { &*config };
    if c.num_attrs > 0 && c.attrs.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let mut cluster = [0; 3];
    for i in 0..c.num_attrs as usize {
        // SAFETY: `attrs` holds `num_attrs` entries (the caller's promise).
        let a = unsafe { &*c.attrs.add(i) };
        let id = a.id;
        if id == CLUSTER_DIMENSION {
            for (k, d) in cluster.iter_mut().enumerate() {
                let b = &a.value[k * 4..k * 4 + 4];
                *d = u32::from_le_bytes(b.try_into().expect("4 bytes"));
            }
            continue;
        }
        if !IGNORABLE_ATTRIBUTES.contains(&id) {
            return Err(crate::unsupported::report_owned(format!(
                "cuLaunchKernelEx attribute {id}"
            )));
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        launch(
            f, c.grid, c.block, c.shared, cluster, c.stream, params, extra, per_thread,
        )
    }
}

/// `cuLaunchKernelEx`: a launch described by a `CUlaunchConfig`.
///
/// # Safety
/// As [`launch_ex`].
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const LaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    guard("cuLaunchKernelEx", || {
        // SAFETY: forwarded from the caller.
        unsafe { launch_ex(config, f, params, extra, false) }.unwrap_or_else(|e| e)
    })
}

/// `cuLaunchKernelEx_ptsz`.
///
/// # Safety
/// As [`launch_ex`].
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const LaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    guard("cuLaunchKernelEx_ptsz", || {
        // SAFETY: forwarded from the caller.
        unsafe { launch_ex(config, f, params, extra, true) }.unwrap_or_else(|e| e)
    })
}
