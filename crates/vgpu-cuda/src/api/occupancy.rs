//! Occupancy queries (`cuOccupancy*`), answered here without a round trip: from the function's
//! attributes (read from vgpud once and cached, [`FuncObj::attribute`]) and the device-info
//! page, by the occupancy calculator's rules ([`calc`]). cuBLASLt asks
//! `cuOccupancyMaxActiveClusters` for every GEMM, and the runtime's
//! `cudaOccupancyMaxPotentialBlockSize` asks `cuOccupancyMaxActiveBlocksPerMultiprocessor` once
//! per candidate block size: each costs no more than a computation.

use std::ffi::{c_int, c_uint, c_void};

use super::context::require_current;
use super::launch::LaunchConfig;
use super::module::{function, FuncObj};
use super::{put, run};
use crate::driver;
use crate::types::{
    CUdevice_attribute as D, CUfunction, CUfunction_attribute as F, CUoccupancyB2DSize,
    CUoccupancy_flags as Flags, CUresult,
};

pub mod calc;

impl From<calc::Error> for CUresult {
    fn from(e: calc::Error) -> Self {
        match e {
            calc::Error::InvalidValue => CUresult::CUDA_ERROR_INVALID_VALUE,
            calc::Error::InvalidClusterSize => CUresult::CUDA_ERROR_INVALID_CLUSTER_SIZE,
            calc::Error::UnknownArchitecture(..) => {
                crate::unsupported::report_owned(format!("occupancy queries: {e}"))
            }
        }
    }
}

/// `CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION`.
const LAUNCH_CLUSTER_DIMENSION: u32 = 4;
/// `CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT`.
const LAUNCH_CARVEOUT: u32 = 14;

/// The device as the calculator sees it, from the device-info page.
fn device() -> Result<calc::Device, CUresult> {
    let info = &driver::get()?.info;
    let a = |attr: D| info.attribute(attr as usize).unwrap_or(0);
    let bytes = |attr: D| a(attr).max(0) as u64;
    Ok(calc::Device {
        major: a(D::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        minor: a(D::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        max_threads_per_block: a(D::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
        max_threads_per_sm: a(D::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR),
        regs_per_block: a(D::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK),
        regs_per_sm: a(D::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR),
        warp_size: a(D::CU_DEVICE_ATTRIBUTE_WARP_SIZE),
        shared_per_block: bytes(D::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK),
        shared_per_sm: bytes(D::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
        shared_per_block_optin: bytes(D::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
        reserved_shared_per_block: bytes(D::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK),
        max_blocks_per_sm: a(D::CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR),
        sm_count: a(D::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        cluster_launch: a(D::CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH) != 0,
    })
}

/// The function as the calculator sees it, without its cluster attributes (`clusters`: with
/// them; they are read only for cluster queries, so that the other queries of a device
/// without clusters never ask for them).
fn describe(f: &FuncObj, clusters: bool) -> Result<calc::Function, CUresult> {
    let a = |attr: F| f.attribute(attr as c_int);
    let carveout = a(F::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT)?;
    let mut desc = calc::Function {
        max_threads_per_block: a(F::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        num_regs: a(F::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
        static_shared: a(F::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?.max(0) as u64,
        max_dynamic_shared: a(F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)?.max(0) as u64,
        // Anything but a percentage is "no preference" (-1, the default).
        carveout: if (0..=100).contains(&carveout) {
            carveout
        } else {
            -1
        },
        required_cluster: [0; 3],
        non_portable_cluster: false,
    };
    if clusters {
        desc.required_cluster = [
            a(F::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH)?.max(0) as u32,
            a(F::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT)?.max(0) as u32,
            a(F::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH)?.max(0) as u32,
        ];
        desc.non_portable_cluster = a(F::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED)? != 0;
    }
    Ok(desc)
}

/// The device and the function `h` (a `CUfunction` or `CUkernel`), for a query in the current
/// context.
fn inputs(h: CUfunction, clusters: bool) -> Result<(calc::Device, calc::Function), CUresult> {
    require_current()?;
    let f = function(h.cast::<c_void>())?;
    Ok((device()?, describe(f, clusters)?))
}

fn check_flags(flags: c_uint) -> Result<(), CUresult> {
    // CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE concerns partitioned global caching, which no
    // architecture of the CUDA 13 driver has: it changes no answer.
    if flags == Flags::CU_OCCUPANCY_DEFAULT as c_uint
        || flags == Flags::CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE as c_uint
    {
        Ok(())
    } else {
        Err(CUresult::CUDA_ERROR_INVALID_VALUE)
    }
}

fn max_active_blocks(
    out: *mut c_int,
    f: CUfunction,
    block_size: c_int,
    dynamic_shared: usize,
    flags: c_uint,
) -> Result<CUresult, CUresult> {
    check_flags(flags)?;
    let (d, func) = inputs(f, false)?;
    let n = calc::active_blocks(&d, &func, block_size, dynamic_shared as u64)?;
    // SAFETY: `out` is NULL or valid for a write (the entry point's caller's promise).
    Ok(unsafe { put(out, n) })
}

/// `cuOccupancyMaxActiveBlocksPerMultiprocessor`.
///
/// # Safety
/// `num_blocks` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    num_blocks: *mut c_int,
    func: CUfunction,
    block_size: c_int,
    dynamic_smem_size: usize,
) -> CUresult {
    run("cuOccupancyMaxActiveBlocksPerMultiprocessor", || {
        max_active_blocks(num_blocks, func, block_size, dynamic_smem_size, 0)
    })
}

/// `cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags`.
///
/// # Safety
/// `num_blocks` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    num_blocks: *mut c_int,
    func: CUfunction,
    block_size: c_int,
    dynamic_smem_size: usize,
    flags: c_uint,
) -> CUresult {
    run(
        "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
        || max_active_blocks(num_blocks, func, block_size, dynamic_smem_size, flags),
    )
}

/// # Safety
/// `min_grid` and `block` are NULL or valid for writes; `b2d` is NULL or a function that may be
/// called with any block size.
unsafe fn potential_block_size(
    min_grid: *mut c_int,
    block: *mut c_int,
    f: CUfunction,
    b2d: CUoccupancyB2DSize,
    dynamic_shared: usize,
    limit: c_int,
    flags: c_uint,
) -> Result<CUresult, CUresult> {
    if min_grid.is_null() || block.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    check_flags(flags)?;
    let (d, func) = inputs(f, false)?;
    let shared = |size: c_int| match b2d {
        // SAFETY: the caller's function, which takes any block size (its promise).
        Some(b2d) => (unsafe { b2d(size) }) as u64,
        None => dynamic_shared as u64,
    };
    let (grid, size) = calc::potential_block_size(&d, &func, shared, limit)?;
    // SAFETY: both non-NULL and valid for writes (the caller's promise).
    unsafe {
        min_grid.write(grid);
        block.write(size);
    }
    Ok(CUresult::CUDA_SUCCESS)
}

/// `cuOccupancyMaxPotentialBlockSize`.
///
/// # Safety
/// `min_grid_size` and `block_size` are NULL or valid for writes; `b2d` is NULL or a function
/// that may be called with any block size.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSize(
    min_grid_size: *mut c_int,
    block_size: *mut c_int,
    func: CUfunction,
    b2d: CUoccupancyB2DSize,
    dynamic_smem_size: usize,
    block_size_limit: c_int,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuOccupancyMaxPotentialBlockSize", || unsafe {
        potential_block_size(
            min_grid_size,
            block_size,
            func,
            b2d,
            dynamic_smem_size,
            block_size_limit,
            0,
        )
    })
}

/// `cuOccupancyMaxPotentialBlockSizeWithFlags`.
///
/// # Safety
/// As [`cuOccupancyMaxPotentialBlockSize`].
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialBlockSizeWithFlags(
    min_grid_size: *mut c_int,
    block_size: *mut c_int,
    func: CUfunction,
    b2d: CUoccupancyB2DSize,
    dynamic_smem_size: usize,
    block_size_limit: c_int,
    flags: c_uint,
) -> CUresult {
    // SAFETY: forwarded from the caller.
    run("cuOccupancyMaxPotentialBlockSizeWithFlags", || unsafe {
        potential_block_size(
            min_grid_size,
            block_size,
            func,
            b2d,
            dynamic_smem_size,
            block_size_limit,
            flags,
        )
    })
}

/// `cuOccupancyAvailableDynamicSMemPerBlock`.
///
/// # Safety
/// `dynamic_smem_size` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyAvailableDynamicSMemPerBlock(
    dynamic_smem_size: *mut usize,
    func: CUfunction,
    num_blocks: c_int,
    block_size: c_int,
) -> CUresult {
    run("cuOccupancyAvailableDynamicSMemPerBlock", || {
        let (d, f) = inputs(func, false)?;
        let n = calc::available_dynamic_shared(&d, &f, num_blocks, block_size)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(dynamic_smem_size, n as usize) })
    })
}

/// What a launch configuration says to the cluster queries: the block size, the dynamic
/// shared memory, the cluster dimension attribute if any, and a carveout attribute if any.
struct Launch {
    block_size: c_int,
    shared: u64,
    cluster: Option<[u32; 3]>,
    carveout: Option<i32>,
}

/// # Safety
/// `config` is NULL or a valid `CUlaunchConfig` whose `attrs` holds `numAttrs` entries.
unsafe fn launch(config: *const LaunchConfig) -> Result<Launch, CUresult> {
    if config.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and valid (the caller's promise).
    let c = unsafe { &*config };
    if c.block.contains(&0) || c.num_attrs > 0 && c.attrs.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let threads = c.block.iter().map(|&b| u64::from(b)).product::<u64>();
    let mut l = Launch {
        // Too many threads for an int are too many for any block: no blocks fit.
        block_size: c_int::try_from(threads).unwrap_or(c_int::MAX),
        shared: u64::from(c.shared),
        cluster: None,
        carveout: None,
    };
    for i in 0..c.num_attrs as usize {
        // SAFETY: `attrs` holds `num_attrs` entries (the caller's promise).
        let a = unsafe { &*c.attrs.add(i) };
        let word = |k: usize| u32::from_ne_bytes(a.value[4 * k..4 * k + 4].try_into().unwrap());
        match a.id {
            LAUNCH_CLUSTER_DIMENSION => l.cluster = Some([word(0), word(1), word(2)]),
            LAUNCH_CARVEOUT => l.carveout = Some(word(0) as i32),
            // Other attributes do not change where blocks fit.
            _ => {}
        }
    }
    Ok(l)
}

/// The inputs of a cluster query: device, function (with the launch's carveout preference, if
/// it has one) and launch.
///
/// # Safety
/// As [`launch`].
unsafe fn cluster_inputs(
    f: CUfunction,
    config: *const LaunchConfig,
) -> Result<(calc::Device, calc::Function, Launch), CUresult> {
    let (d, mut func) = inputs(f, true)?;
    // SAFETY: forwarded from the caller.
    let l = unsafe { launch(config) }?;
    if let Some(c) = l.carveout {
        if (0..=100).contains(&c) {
            func.carveout = c;
        }
    }
    Ok((d, func, l))
}

/// `cuOccupancyMaxPotentialClusterSize`: the cluster dimensions of `config` are ignored, as
/// NVIDIA documents.
///
/// # Safety
/// `cluster_size` is NULL or valid for a write; `config` is NULL or a valid `CUlaunchConfig`.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxPotentialClusterSize(
    cluster_size: *mut c_int,
    func: CUfunction,
    config: *const LaunchConfig,
) -> CUresult {
    run("cuOccupancyMaxPotentialClusterSize", || {
        // SAFETY: forwarded from the caller.
        let (d, f, l) = unsafe { cluster_inputs(func, config) }?;
        let n = calc::potential_cluster_size(&d, &f, l.block_size, l.shared)?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(cluster_size, n) })
    })
}

/// `cuOccupancyMaxActiveClusters`: clusters of the function's required shape, else of the
/// launch's cluster dimension attribute. A launch with neither is no cluster launch: 0 and
/// success, as NVIDIA's driver 580 answers it (measured on an H200 by
/// `tests/cuda-gpu/occupancy.cu`; its documentation calls it an error).
///
/// # Safety
/// `num_clusters` is NULL or valid for a write; `config` is NULL or a valid `CUlaunchConfig`.
#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveClusters(
    num_clusters: *mut c_int,
    func: CUfunction,
    config: *const LaunchConfig,
) -> CUresult {
    run("cuOccupancyMaxActiveClusters", || {
        // SAFETY: forwarded from the caller.
        let (d, f, l) = unsafe { cluster_inputs(func, config) }?;
        let n = if l.cluster.is_none() && f.required_cluster == [0; 3] {
            0
        } else {
            let size = calc::cluster_shape(&d, &f, l.cluster)?;
            calc::active_clusters(&d, &f, l.block_size, l.shared, size)?
        };
        // SAFETY: forwarded from the caller.
        Ok(unsafe { put(num_clusters, n) })
    })
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::super::launch::LaunchAttribute;
    use super::*;
    use crate::types::{CUlaunchAttribute, CUlaunchConfig};

    #[test]
    fn launch_configurations_are_read_with_the_headers_layout() {
        assert_eq!(size_of::<LaunchConfig>(), size_of::<CUlaunchConfig>());
        assert_eq!(
            offset_of!(LaunchConfig, shared),
            offset_of!(CUlaunchConfig, sharedMemBytes)
        );
        assert_eq!(
            offset_of!(LaunchConfig, attrs),
            offset_of!(CUlaunchConfig, attrs)
        );
        assert_eq!(
            offset_of!(LaunchConfig, num_attrs),
            offset_of!(CUlaunchConfig, numAttrs)
        );
        assert_eq!(size_of::<LaunchAttribute>(), size_of::<CUlaunchAttribute>());
        assert_eq!(
            offset_of!(LaunchAttribute, value),
            offset_of!(CUlaunchAttribute, value)
        );
    }

    #[test]
    fn a_cluster_dimension_attribute_is_read() {
        let mut attrs = [
            // SAFETY: all-zero bytes are a valid attribute.
            unsafe { std::mem::zeroed::<CUlaunchAttribute>() },
            // SAFETY: as above.
            unsafe { std::mem::zeroed::<CUlaunchAttribute>() },
        ];
        attrs[0].id = crate::types::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PRIORITY;
        attrs[1].id = crate::types::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attrs[1].value.clusterDim.x = 2;
        attrs[1].value.clusterDim.y = 3;
        attrs[1].value.clusterDim.z = 1;
        let cfg = CUlaunchConfig {
            gridDimX: 6,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 32,
            blockDimY: 4,
            blockDimZ: 2,
            sharedMemBytes: 4096,
            hStream: std::ptr::null_mut(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: 2,
        };
        // SAFETY: a valid configuration with two valid attributes, read as the same layout.
        let l = unsafe { launch((&cfg as *const CUlaunchConfig).cast()) }.unwrap();
        assert_eq!(l.block_size, 256);
        assert_eq!(l.shared, 4096);
        assert_eq!(l.cluster, Some([2, 3, 1]));
        assert_eq!(l.carveout, None);
        // SAFETY: a NULL configuration is refused before it is read.
        assert!(unsafe { launch(std::ptr::null()) }.is_err());
    }
}
