//! The device attributes that advertise what this driver does not offer.
//!
//! The device-info page carries the host GPU's attributes as its driver answers them, so an H200
//! says it supports virtual memory management, memory pools, managed memory and mapped host
//! memory. Through vgpu most of those entry points answer `CUDA_ERROR_NOT_SUPPORTED`; frameworks read the
//! attributes to choose an allocator (XLA's and PyTorch's virtual-memory allocators, the runtime's
//! `cudaMallocAsync` pools, numba's mapped arrays), so `cuDeviceGetAttribute` answers 0 for them
//! and programs take the path that works instead of failing on the first such call.

use crate::types::CUdevice_attribute as A;

/// Each attribute answered 0, with the entry points it would promise.
pub const UNSUPPORTED: &[(A, &str)] = &[
    (A::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, "cuMemAllocManaged"),
    (
        A::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS,
        "cuMemAllocManaged",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST,
        "cuMemAllocManaged",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS,
        "kernels reading the guest's pageable memory",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES,
        "kernels reading the guest's pageable memory",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM,
        "registered host memory at its host address on the device",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1,
        "cuStreamWriteValue*/cuStreamWaitValue*",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS,
        "cuStreamWriteValue64/cuStreamWaitValue64",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR,
        "cuStreamWaitValue32 with NOR",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
        "cuMemExportToShareableHandle",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_WIN32_HANDLE_SUPPORTED,
        "cuMemExportToShareableHandle",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_WIN32_KMT_HANDLE_SUPPORTED,
        "cuMemExportToShareableHandle",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED,
        "cuMemExportToShareableHandle",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED,
        "cuMemCreate",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_GENERIC_COMPRESSION_SUPPORTED,
        "cuMemCreate of compressible memory",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_TIMELINE_SEMAPHORE_INTEROP_SUPPORTED,
        "cuImportExternalSemaphore",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES,
        "cuMemPoolCreate",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED,
        "GPUDirect RDMA",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS,
        "cuFlushGPUDirectRDMAWrites",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING,
        "GPUDirect RDMA",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
        "cuMemGetHandleForAddressRange",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED,
        "cuIpcGetEventHandle",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_MULTICAST_SUPPORTED,
        "cuMulticastCreate",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
        "cuMemCreate on host memory",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HOST_NUMA_MEMORY_POOLS_SUPPORTED,
        "cuMemPoolCreate on host memory",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HOST_MEMORY_POOLS_SUPPORTED,
        "cuMemPoolCreate on host memory",
    ),
    (
        A::CU_DEVICE_ATTRIBUTE_HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
        "cuMemCreate on host memory",
    ),
];

/// `CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY`: answered by whether vgpud maps the VM's staging
/// area into its context (`cuMemHostGetDevicePointer` on page-locked memory), not from here.
pub const CAN_MAP_HOST_MEMORY: usize = A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY as usize;

/// `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED`: answered 1, whatever the host's GPU says:
/// stream-ordered allocation and pools are this library's own ([`crate::api::mempool`]).
pub const MEMORY_POOLS: usize = A::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED as usize;

/// `CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED`: answered 1 only where the host's
/// GPU supports it and vgpud offers the commands (ABI 1.6: `cuMemAddressReserve`,
/// `cuMemCreate`, `cuMemMap`, `cuMemSetAccess`, …), else 0: XLA then refuses to start,
/// PyTorch keeps its plain allocator.
pub const VIRTUAL_MEMORY_MANAGEMENT: usize =
    A::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED as usize;

/// Whether attribute number `attr` advertises something this driver does not offer.
pub fn unsupported(attr: usize) -> bool {
    UNSUPPORTED.iter().any(|&(a, _)| a as usize == attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_choices_are_refused_and_the_limits_kept() {
        // CUDA 13.0's numbers (cuda.h): what frameworks read to pick an allocator.
        for n in [83, 89] {
            assert!(unsupported(n), "attribute {n}");
        }
        // Memory pools are offered (this library's own: `api::mempool`).
        assert!(!unsupported(115));
        assert_eq!(MEMORY_POOLS, 115);
        // Virtual memory management is offered (where vgpud has it: `api::device`), its
        // shareable handles are not.
        assert!(!unsupported(102));
        assert_eq!(VIRTUAL_MEMORY_MANAGEMENT, 102);
        assert!(unsupported(
            A::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED as usize
        ));
        // Limits and capabilities the driver does honour.
        for a in [
            A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING,
            A::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
            A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            A::CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED,
        ] {
            assert!(!unsupported(a as usize), "{a:?}");
        }
    }
}
