//! What the VM uses of the device: memory, utilisation, the processes on it. vgpud keeps the
//! figures current in the register page (ABI 1.6); a device of an older vgpud has no such
//! fields, and these queries answer `NVML_ERROR_NOT_SUPPORTED` there.

use std::ffi::c_uint;

use vgpu_abi::regs::Usage;

use super::device::info_of;
use super::{put, run};
use crate::source::Source;
use crate::state;
use crate::types::{
    Memory, MemoryV2, NvmlDevice, NvmlReturn, ProcessInfo, ProcessInfoV1, Utilization,
    MEMORY_V2_VERSION, NO_MIG_INSTANCE,
};

/// The usage fields of the device's register page; `NVML_ERROR_NOT_SUPPORTED` before ABI 1.6.
fn usage_of(src: &Source) -> Result<Usage, NvmlReturn> {
    src.regs().usage.ok_or(NvmlReturn::NOT_SUPPORTED)
}

/// Total (the VM's quota, from the device-info page), used (the VM's allocations) and free.
fn memory(h: NvmlDevice) -> Result<Memory, NvmlReturn> {
    memory_of(&*state::device(h)?)
}

fn memory_of(src: &Source) -> Result<Memory, NvmlReturn> {
    let total = info_of(src)?.total_mem;
    let used = usage_of(src)?.mem_used;
    Ok(Memory {
        total,
        used,
        free: total.saturating_sub(used),
    })
}

/// `nvmlDeviceGetMemoryInfo`: the VM's quota as the total, its allocations as used.
///
/// # Safety
/// `out` is NULL or valid for a write of `nvmlMemory_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: NvmlDevice,
    out: *mut Memory,
) -> NvmlReturn {
    run("nvmlDeviceGetMemoryInfo", || {
        let m = memory(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put(out, m) }
    })
}

/// `nvmlDeviceGetMemoryInfo_v2`: as the first version, with nothing reserved (vgpud keeps its
/// own memory out of the VM's quota). The caller sets `version` to `nvmlMemory_v2`; another
/// value is `NVML_ERROR_ARGUMENT_VERSION_MISMATCH`.
///
/// # Safety
/// `out` is NULL or valid for reads and writes of `nvmlMemory_v2_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: NvmlDevice,
    out: *mut MemoryV2,
) -> NvmlReturn {
    run("nvmlDeviceGetMemoryInfo_v2", || {
        state::device(device)?;
        if out.is_null() {
            return Err(NvmlReturn::INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL and valid for reads (the caller's promise).
        let version = unsafe { std::ptr::addr_of!((*out).version).read_unaligned() };
        if version != MEMORY_V2_VERSION {
            return Err(NvmlReturn::ARGUMENT_VERSION_MISMATCH);
        }
        let m = memory(device)?;
        let v = MemoryV2 {
            version,
            total: m.total,
            reserved: 0,
            free: m.free,
            used: m.used,
        };
        // SAFETY: forwarded from the caller.
        unsafe { put(out, v) }
    })
}

/// `nvmlDeviceGetUtilizationRates`: `gpu` is the share of vgpud's last window (half a second)
/// that the device spent on the VM's commands, rounded to a percent (0 until a first window
/// ended). vgpud does not time device memory traffic, so `memory` is 0.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: NvmlDevice,
    out: *mut Utilization,
) -> NvmlReturn {
    run("nvmlDeviceGetUtilizationRates", || {
        let u = utilization_of(&*state::device(device)?)?;
        // SAFETY: forwarded from the caller.
        unsafe { put(out, u) }
    })
}

fn utilization_of(src: &Source) -> Result<Utilization, NvmlReturn> {
    info_of(src)?;
    let u = usage_of(src)?;
    let gpu = u.busy.map_or(0, |(permille, _)| (permille + 5) / 10);
    Ok(Utilization { gpu, memory: 0 })
}

/// The processes running on the device, as far as the guest can know: this process, once it
/// initialised CUDA through vgpu's `libcuda.so.1` (a vgpud socket takes one client, and a VM's
/// rings serve one process), with the VM's device memory in use (not available before ABI 1.6).
fn compute_processes(h: NvmlDevice) -> Result<Vec<(u32, u64)>, NvmlReturn> {
    let src = state::device(h)?;
    info_of(&src)?;
    if !src.runs_cuda_here() {
        return Ok(Vec::new());
    }
    let used = src
        .regs()
        .usage
        .map_or(crate::types::VALUE_NOT_AVAILABLE_U64, |u| u.mem_used);
    Ok(vec![(std::process::id(), used)])
}

/// Writes `procs` into the caller's array of `*count` entries, NVML's way: `*count` becomes the
/// number of processes; `NVML_ERROR_INSUFFICIENT_SIZE` when they do not fit (then nothing is
/// written to `infos`, which may be NULL when `*count` is 0).
///
/// # Safety
/// `count` is NULL or valid for a read and a write; `infos` is NULL or valid for `*count`
/// writes of `T`.
unsafe fn put_processes<T>(
    procs: &[(u32, u64)],
    count: *mut c_uint,
    infos: *mut T,
    make: impl Fn(u32, u64) -> T,
) -> Result<(), NvmlReturn> {
    if count.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL and valid (the caller's promise).
    let room = unsafe { count.read() } as usize;
    // SAFETY: as above.
    unsafe { count.write(procs.len() as c_uint) };
    if procs.len() > room {
        return Err(NvmlReturn::INSUFFICIENT_SIZE);
    }
    if procs.is_empty() {
        return Ok(());
    }
    if infos.is_null() {
        return Err(NvmlReturn::INVALID_ARGUMENT);
    }
    for (i, &(pid, mem)) in procs.iter().enumerate() {
        // SAFETY: `i < procs.len() <= room`, and `infos` holds `room` entries.
        unsafe { infos.add(i).write_unaligned(make(pid, mem)) };
    }
    Ok(())
}

fn info_v2(pid: u32, used_gpu_memory: u64) -> ProcessInfo {
    ProcessInfo {
        pid,
        used_gpu_memory,
        gpu_instance_id: NO_MIG_INSTANCE,
        compute_instance_id: NO_MIG_INSTANCE,
    }
}

fn info_v1(pid: u32, used_gpu_memory: u64) -> ProcessInfoV1 {
    ProcessInfoV1 {
        pid,
        used_gpu_memory,
    }
}

/// `nvmlDeviceGetComputeRunningProcesses_v3`: see [`compute_processes`].
///
/// # Safety
/// `count` is NULL or valid for a read and a write; `infos` is NULL or valid for `*count`
/// entries.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    run("nvmlDeviceGetComputeRunningProcesses_v3", || {
        let p = compute_processes(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_processes(&p, count, infos, info_v2) }
    })
}

/// `nvmlDeviceGetComputeRunningProcesses_v2`: the same entries.
///
/// # Safety
/// As [`nvmlDeviceGetComputeRunningProcesses_v3`].
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    run("nvmlDeviceGetComputeRunningProcesses_v2", || {
        let p = compute_processes(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_processes(&p, count, infos, info_v2) }
    })
}

/// `nvmlDeviceGetComputeRunningProcesses` (the first version's 16-byte entries).
///
/// # Safety
/// As [`nvmlDeviceGetComputeRunningProcesses_v3`], with `nvmlProcessInfo_v1_t` entries.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut ProcessInfoV1,
) -> NvmlReturn {
    run("nvmlDeviceGetComputeRunningProcesses", || {
        let p = compute_processes(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_processes(&p, count, infos, info_v1) }
    })
}

/// The graphics processes: none (a vGPU runs no graphics).
fn graphics_processes(h: NvmlDevice) -> Result<Vec<(u32, u64)>, NvmlReturn> {
    info_of(&*state::device(h)?)?;
    Ok(Vec::new())
}

/// `nvmlDeviceGetGraphicsRunningProcesses_v3`: none.
///
/// # Safety
/// As [`nvmlDeviceGetComputeRunningProcesses_v3`].
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    run("nvmlDeviceGetGraphicsRunningProcesses_v3", || {
        let p = graphics_processes(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_processes(&p, count, infos, info_v2) }
    })
}

/// `nvmlDeviceGetGraphicsRunningProcesses_v2`: none.
///
/// # Safety
/// As [`nvmlDeviceGetComputeRunningProcesses_v3`].
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v2(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    run("nvmlDeviceGetGraphicsRunningProcesses_v2", || {
        let p = graphics_processes(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_processes(&p, count, infos, info_v2) }
    })
}

/// `nvmlDeviceGetGraphicsRunningProcesses`: none.
///
/// # Safety
/// As [`nvmlDeviceGetComputeRunningProcesses`].
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut ProcessInfoV1,
) -> NvmlReturn {
    run("nvmlDeviceGetGraphicsRunningProcesses", || {
        let p = graphics_processes(device)?;
        // SAFETY: forwarded from the caller.
        unsafe { put_processes(&p, count, infos, info_v1) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_int;
    use vgpu_abi::info::INFO_OFFSET;
    use vgpu_abi::regs::{RegisterPage, CAP_DEVICE_INFO};
    use vgpu_abi::{DeviceInfoPage, DeviceStatus, ShmView};

    extern "C" fn no_cuda() -> c_int {
        0
    }

    /// A device of ABI 1.`minor` whose VM has 1 GiB and uses 300 MiB at 42.6% utilisation.
    fn device(minor: u16) -> Source {
        let view = ShmView::leak_zeroed(4096);
        let regs = RegisterPage {
            abi_version: (1 << 16) | u32::from(minor),
            device_status: DeviceStatus::Ready as u32,
            capabilities: CAP_DEVICE_INFO,
            mem_used: 300 << 20,
            busy_permille: 426,
            busy_window_ms: 500,
            ..Default::default()
        };
        view.write_obj(0, &regs);
        let info = DeviceInfoPage {
            total_mem: 1 << 30,
            ..Default::default()
        };
        view.write_obj(INFO_OFFSET, &info);
        Source::Shared {
            view,
            cuda_initialised: no_cuda,
        }
    }

    #[test]
    fn memory_and_utilisation_come_from_the_register_page() {
        let src = device(6);
        assert_eq!(
            memory_of(&src),
            Ok(Memory {
                total: 1 << 30,
                used: 300 << 20,
                free: (1 << 30) - (300 << 20)
            })
        );
        assert_eq!(utilization_of(&src), Ok(Utilization { gpu: 43, memory: 0 }));
    }

    #[test]
    fn an_older_vgpud_has_no_usage_figures() {
        let src = device(5);
        assert_eq!(memory_of(&src), Err(NvmlReturn::NOT_SUPPORTED));
        assert_eq!(utilization_of(&src), Err(NvmlReturn::NOT_SUPPORTED));
    }

    #[test]
    fn a_stopped_device_is_lost() {
        let src = device(6);
        let Source::Shared { view, .. } = &src else {
            unreachable!()
        };
        view.store_u32(
            vgpu_abi::regs::off::DEVICE_STATUS,
            DeviceStatus::Stopped as u32,
        );
        assert_eq!(memory_of(&src), Err(NvmlReturn::GPU_IS_LOST));
    }

    #[test]
    fn process_arrays_follow_nvmls_size_protocol() {
        let procs = [(42u32, 7u64)];
        let mut n: c_uint = 0;
        // SAFETY: `n` is valid; `infos` is NULL with a count of 0.
        let r =
            unsafe { put_processes(&procs, &mut n, std::ptr::null_mut::<ProcessInfo>(), info_v2) };
        assert_eq!((r, n), (Err(NvmlReturn::INSUFFICIENT_SIZE), 1));
        let mut out = [ProcessInfo::default(); 2];
        n = 2;
        // SAFETY: `out` has 2 entries.
        let r = unsafe { put_processes(&procs, &mut n, out.as_mut_ptr(), info_v2) };
        assert_eq!((r, n), (Ok(()), 1));
        assert_eq!(out[0], info_v2(42, 7));
        assert_eq!(out[0].gpu_instance_id, NO_MIG_INSTANCE);
        // None running: success with a count of 0, even without an array.
        n = 0;
        // SAFETY: `n` is valid.
        let r =
            unsafe { put_processes(&[], &mut n, std::ptr::null_mut::<ProcessInfoV1>(), info_v1) };
        assert_eq!((r, n), (Ok(()), 0));
        // SAFETY: a NULL count is refused before anything is read.
        let r = unsafe { put_processes(&procs, std::ptr::null_mut(), out.as_mut_ptr(), info_v2) };
        assert_eq!(r, Err(NvmlReturn::INVALID_ARGUMENT));
    }
}
