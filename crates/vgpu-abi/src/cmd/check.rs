//! The field checks a command's declaration applies when its entry is decoded. Each returns
//! the status the guest gets for a field out of range.

use super::launch::{LaunchBody, MAX_BLOCK_THREADS, MAX_GRID_DIM, MAX_INLINE_PARAMS};
use super::status::Status;

/// Event ids are chosen by the guest: `0..MAX_EVENTS` per VM (no allocation command).
pub const MAX_EVENTS: u32 = 1024;
/// Longest symbol name accepted by [`super::Opcode::GetFunction`] and
/// [`super::Opcode::ModuleGetGlobal`], in bytes (4096 since 1.5: the mangled names of templated
/// library kernels run past a thousand).
pub const MAX_FUNC_NAME: u64 = 4096;

/// Largest packed kernel parameters of [`super::Opcode::LaunchIndirect`] (CUDA 12.1's limit).
pub const MAX_KERNEL_PARAMS: u32 = 32764;

/// Packed kernel parameters of at most [`MAX_KERNEL_PARAMS`] bytes.
pub fn kernel_params(len: u32) -> Result<(), Status> {
    if len <= MAX_KERNEL_PARAMS {
        Ok(())
    } else {
        Err(Status::InvalidArgument)
    }
}

/// A launch shape: every grid dimension in `1..=MAX_GRID_DIM`, every block dimension non-zero
/// and at most [`MAX_BLOCK_THREADS`] threads per block.
pub fn dims(grid: [u32; 3], block: [u32; 3]) -> Result<(), Status> {
    // Three u32 dimensions multiply to at most 2^96: in u128 the product cannot wrap.
    let threads: u128 = block.iter().map(|&d| d as u128).product();
    if grid.iter().any(|&d| d == 0 || d > MAX_GRID_DIM)
        || block.contains(&0)
        || threads > MAX_BLOCK_THREADS as u128
    {
        return Err(Status::InvalidArgument);
    }
    Ok(())
}

/// Blocks in one thread block cluster at most (NVIDIA's non-portable maximum on Hopper is 16).
pub const MAX_CLUSTER_BLOCKS: u32 = 32;

/// A cluster shape: all zero (no cluster), or every dimension at least 1, dividing the grid's,
/// at most [`MAX_CLUSTER_BLOCKS`] blocks (whether the function and device take it is the
/// device's check).
pub fn cluster(grid: [u32; 3], cluster: [u32; 3]) -> Result<(), Status> {
    if cluster == [0; 3] {
        return Ok(());
    }
    // As in `dims`: in u128 the product of three u32 cannot wrap.
    let blocks: u128 = cluster.iter().map(|&d| d as u128).product();
    if cluster.contains(&0)
        || blocks > MAX_CLUSTER_BLOCKS as u128
        || grid.iter().zip(cluster).any(|(&g, c)| g % c != 0)
    {
        return Err(Status::InvalidArgument);
    }
    Ok(())
}

/// `[off, off + len)` lies inside a staging area of `staging_size` bytes.
pub fn staging(off: u64, len: u64, staging_size: u64) -> Result<(), Status> {
    match off.checked_add(len) {
        Some(end) if end <= staging_size => Ok(()),
        _ => Err(Status::StagingOutOfRange),
    }
}

/// A fence word: 4 aligned bytes inside staging.
pub fn fence(off: u64, staging_size: u64) -> Result<(), Status> {
    if !off.is_multiple_of(4) {
        return Err(Status::StagingOutOfRange);
    }
    staging(off, 4, staging_size)
}

/// `[ptr, ptr + len)` does not wrap (whether it names memory of the VM is the host's check).
pub fn device(ptr: u64, len: u64) -> Result<(), Status> {
    ptr.checked_add(len)
        .map(|_| ())
        .ok_or(Status::InvalidAddress)
}

/// A count or size that must not be zero.
pub fn nonzero(v: u64) -> Result<(), Status> {
    if v == 0 {
        Err(Status::InvalidArgument)
    } else {
        Ok(())
    }
}

/// An event id below [`MAX_EVENTS`].
pub fn event(e: u32) -> Result<(), Status> {
    if e < MAX_EVENTS {
        Ok(())
    } else {
        Err(Status::InvalidArgument)
    }
}

/// A memset element width (1 or 4 bytes) that divides the length.
pub fn memset_width(len: u64, width: u32) -> Result<(), Status> {
    if (width == 1 || width == 4) && len.is_multiple_of(width as u64) {
        Ok(())
    } else {
        Err(Status::InvalidArgument)
    }
}

/// A function name length: 1..=[`MAX_FUNC_NAME`] bytes.
pub fn name_len(len: u64) -> Result<(), Status> {
    if (1..=MAX_FUNC_NAME).contains(&len) {
        Ok(())
    } else {
        Err(Status::InvalidArgument)
    }
}

/// A launch's shape and parameter length are inside the device's limits.
pub fn launch(l: &LaunchBody) -> Result<(), Status> {
    if l.params_len as usize > MAX_INLINE_PARAMS {
        return Err(Status::InvalidArgument);
    }
    // In u64 the thread count of [2^31, 2^31, 4] wrapped to 0 and passed (found by
    // `cargo xtask fuzz`); `dims` multiplies in u128.
    dims(l.grid, l.block)
}

/// A reservation's alignment: 0 (the granularity) or a power of two.
pub fn alignment(a: u64) -> Result<(), Status> {
    if a == 0 || a.is_power_of_two() {
        Ok(())
    } else {
        Err(Status::InvalidArgument)
    }
}

/// `CU_MEM_ACCESS_FLAGS_PROT_READWRITE`, the one access [`super::Opcode::MemSetAccess`] grants.
pub const PROT_READWRITE: u32 = 3;

/// An access protection [`super::Opcode::MemSetAccess`] grants: read and write. Read-only
/// and no access would need the VM's ranges checked per direction; they are refused.
pub fn prot(p: u32) -> Result<(), Status> {
    if p == PROT_READWRITE {
        Ok(())
    } else {
        Err(Status::NotSupported)
    }
}
