//! The occupancy calculator: how many blocks of a function fit on one multiprocessor, and what
//! follows from that (a block size that fills it, the dynamic shared memory a block may have,
//! how many clusters fit on the device).
//!
//! The rules are those of NVIDIA's occupancy calculator, `cuda_occupancy.h` of the CUDA 13.0
//! toolkit, for the architectures the CUDA 13 driver runs on (compute capability 7.0 and up):
//! - a block takes its threads in whole warps, out of the multiprocessor's warp slots;
//! - registers are allocated per warp (registers per thread × warp size, rounded up to 256),
//!   and each of the 4 sub-partitions of a multiprocessor holds a quarter of its registers, so
//!   a warp's allocation must fit in one quarter; the per-block register limit is checked with
//!   the warps rounded up to a multiple of 4, as the hardware checks it;
//! - shared memory is allocated per block in units of 128 bytes (256 before compute capability
//!   8.0), counting the block's static, dynamic and the driver's reserved shared memory; the
//!   multiprocessor's share of its unified L1/shared memory is one of the architecture's
//!   carveout sizes: the function's preferred carveout rounded up to one, or the full size
//!   without a preference, or the smallest that holds one block when the preferred one does
//!   not;
//! - a dynamic shared memory size above the function's limit
//!   (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`) gives no blocks at all;
//! - at most the device's blocks per multiprocessor.
//!
//! The calculator's two remaining limits never bind here: block barriers (the driver's count
//! of a function's named barriers is not an attribute; one barrier per block, the calculator's
//! default, leaves at least two per block slot on every architecture) and virtual resources
//! (none unless a function declares them, which no attribute reports).
//!
//! Clusters (compute capability 9.0 and up) are placed within one GPC (graphics processing
//! cluster) of the device. Which multiprocessors make up each GPC is not something the driver
//! API reports; the model here is the Hopper whitepaper's: GPCs of at most 9 TPCs of 2
//! multiprocessors, the device's TPCs spread over as few GPCs as possible, as evenly as
//! possible. Clusters of 1 or 2 blocks do not depend on the layout (a GPC holds whole TPCs);
//! bigger ones may differ by about one cluster per GPC from NVIDIA's driver, which knows the
//! chip's real layout (an H100 SXM's 132 multiprocessors are not spread evenly).

/// Why a query has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An argument, or the device's or function's description, is out of range.
    #[error("invalid argument")]
    InvalidValue,
    /// A cluster shape the device or function does not allow.
    #[error("invalid cluster size")]
    InvalidClusterSize,
    /// A compute capability whose allocation rules the calculator does not know.
    #[error("compute capability {0}.{1} is unknown to the occupancy calculator")]
    UnknownArchitecture(i32, i32),
}

/// What the calculator needs to know of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// Compute capability.
    pub major: i32,
    pub minor: i32,
    pub max_threads_per_block: i32,
    pub max_threads_per_sm: i32,
    pub regs_per_block: i32,
    pub regs_per_sm: i32,
    pub warp_size: i32,
    /// Shared memory a block gets without opting in.
    pub shared_per_block: u64,
    /// Unified L1/shared memory a multiprocessor may give to shared memory.
    pub shared_per_sm: u64,
    /// Shared memory a block may opt into (without the reserved part).
    pub shared_per_block_optin: u64,
    /// Shared memory the driver reserves in every block (1 KiB since compute capability 8.0).
    pub reserved_shared_per_block: u64,
    pub max_blocks_per_sm: i32,
    pub sm_count: i32,
    /// Whether the device launches thread block clusters.
    pub cluster_launch: bool,
}

/// What the calculator needs to know of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// `CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK`.
    pub max_threads_per_block: i32,
    /// `CU_FUNC_ATTRIBUTE_NUM_REGS`.
    pub num_regs: i32,
    /// `CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES`.
    pub static_shared: u64,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    pub max_dynamic_shared: u64,
    /// `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT`: a percentage, or -1 for none.
    pub carveout: i32,
    /// `CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH`/`_HEIGHT`/`_DEPTH` (zeros: none required).
    pub required_cluster: [u32; 3],
    /// `CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED`.
    pub non_portable_cluster: bool,
}

/// The allocation rules of one architecture, which no attribute reports.
#[derive(Debug)]
struct Arch {
    /// Shared memory is allocated to a block in multiples of this.
    smem_granularity: u64,
    /// Most registers one thread may have.
    max_regs_per_thread: i32,
    /// A warp's registers are allocated in multiples of this.
    reg_granularity: i32,
    /// Register file partitions of a multiprocessor.
    sub_partitions: i32,
    /// The sizes (KiB) the shared memory part of the unified L1/shared memory can take.
    carveouts_kib: &'static [u64],
    /// Blocks per multiprocessor, where the device does not report it.
    max_blocks_per_sm: i32,
}

const VOLTA: &[u64] = &[0, 8, 16, 32, 64, 96];
const TURING: &[u64] = &[32, 64];
const A100: &[u64] = &[0, 8, 16, 32, 64, 100, 132, 164];
const AMPERE_100K: &[u64] = &[0, 8, 16, 32, 64, 100];
const HOPPER: &[u64] = &[0, 8, 16, 32, 64, 100, 132, 164, 196, 228];

fn arch(major: i32, minor: i32) -> Result<Arch, Error> {
    let (carveouts_kib, max_blocks_per_sm) = match (major, minor) {
        (7, 5) => (TURING, 16),
        (7, _) => (VOLTA, 32),
        (8, 0) => (A100, 32),
        (8, 7) => (A100, 16),
        (8, 9) => (AMPERE_100K, 24),
        (8, _) => (AMPERE_100K, 16),
        (9, _) => (HOPPER, 32),
        (10, 1) | (11, 0) => (HOPPER, 24),
        (10 | 11, 0 | 1 | 3) => (HOPPER, 32),
        (12, 0 | 1) => (AMPERE_100K, 24),
        _ => return Err(Error::UnknownArchitecture(major, minor)),
    };
    Ok(Arch {
        smem_granularity: if major >= 8 { 128 } else { 256 },
        max_regs_per_thread: 256,
        reg_granularity: 256,
        sub_partitions: 4,
        carveouts_kib,
        max_blocks_per_sm,
    })
}

impl Arch {
    /// The smallest carveout that holds `bytes`, if one does.
    fn carveout_at_least(&self, bytes: u64) -> Option<u64> {
        self.carveouts_kib
            .iter()
            .map(|k| k << 10)
            .find(|&c| c >= bytes)
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl Device {
    fn check(&self) -> Result<Arch, Error> {
        let positive = [
            self.max_threads_per_block,
            self.max_threads_per_sm,
            self.regs_per_block,
            self.regs_per_sm,
            self.warp_size,
            self.sm_count,
        ];
        if positive.iter().any(|&v| v <= 0) || self.shared_per_block == 0 || self.shared_per_sm == 0
        {
            return Err(Error::InvalidValue);
        }
        arch(self.major, self.minor)
    }

    fn max_blocks_per_sm(&self, a: &Arch) -> i32 {
        if self.max_blocks_per_sm > 0 {
            self.max_blocks_per_sm
        } else {
            a.max_blocks_per_sm
        }
    }

    /// The most shared memory one block may take, reserved part included: the opt-in limit
    /// once a block may need more than the default (`need` bytes, without the reserved part).
    fn shared_limit_per_block(&self, need: u64) -> u64 {
        let base = if need > self.shared_per_block {
            self.shared_per_block_optin
        } else {
            self.shared_per_block
        };
        base + self.reserved_shared_per_block
    }

    /// The shared memory part of a multiprocessor a carveout preference asks for.
    fn preferred_shared(&self, a: &Arch, carveout: i32) -> Result<u64, Error> {
        let want = match carveout {
            -1 => self.shared_per_sm,
            0..=100 => carveout as u64 * self.shared_per_sm / 100,
            _ => return Err(Error::InvalidValue),
        };
        // A device larger than the architecture's table keeps its own size.
        Ok(a.carveout_at_least(want).unwrap_or(want))
    }

    /// The multiprocessors of each GPC (see the module's description).
    pub fn gpc_sizes(&self) -> Vec<i32> {
        const TPCS_PER_GPC: i32 = 9;
        let sms = self.sm_count.max(1);
        let tpcs = (sms + 1) / 2;
        let gpcs = (tpcs + TPCS_PER_GPC - 1) / TPCS_PER_GPC;
        let mut sizes: Vec<i32> = (0..gpcs)
            .map(|g| 2 * (tpcs / gpcs + i32::from(g < tpcs % gpcs)))
            .collect();
        // An odd count: one TPC has a single multiprocessor.
        if sms % 2 == 1 {
            if let Some(last) = sizes.iter_mut().rev().find(|s| **s > 0) {
                *last -= 1;
            }
        }
        sizes
    }
}

impl Function {
    fn check(&self) -> Result<(), Error> {
        if self.max_threads_per_block <= 0 || self.num_regs < 0 {
            return Err(Error::InvalidValue);
        }
        Ok(())
    }
}

/// Blocks of `f` with `block_size` threads and `dynamic_shared` bytes of dynamic shared memory
/// that fit on one multiprocessor at once: 0 when one does not.
pub fn active_blocks(
    d: &Device,
    f: &Function,
    block_size: i32,
    dynamic_shared: u64,
) -> Result<i32, Error> {
    if block_size <= 0 {
        return Err(Error::InvalidValue);
    }
    let a = d.check()?;
    f.check()?;
    // A block the function or device cannot launch.
    if block_size > d.max_threads_per_block || block_size > f.max_threads_per_block {
        return Ok(0);
    }
    let warps = (block_size + d.warp_size - 1) / d.warp_size;
    let by_warps = d.max_threads_per_sm / d.warp_size / warps;
    let by_regs = blocks_by_registers(d, f, &a, warps);
    let by_blocks = d.max_blocks_per_sm(&a);
    let by_shared = blocks_by_shared_memory(d, f, &a, dynamic_shared)?;
    Ok(by_warps.min(by_regs).min(by_blocks).min(by_shared))
}

fn blocks_by_registers(d: &Device, f: &Function, a: &Arch, warps: i32) -> i32 {
    let per_warp = round_up(
        f.num_regs as u64 * d.warp_size as u64,
        a.reg_granularity as u64,
    );
    let per_block = per_warp * warps as u64;
    // The hardware's check counts warps as if spread over every sub-partition.
    let checked = per_warp * round_up(warps as u64, a.sub_partitions as u64);
    let limit = d.regs_per_block as u64;
    if checked > limit || per_block > limit || f.num_regs > a.max_regs_per_thread {
        return 0;
    }
    if per_warp == 0 {
        return i32::MAX;
    }
    let per_partition = d.regs_per_sm as u64 / a.sub_partitions as u64;
    let warps_per_sm = per_partition / per_warp * a.sub_partitions as u64;
    (warps_per_sm / warps as u64) as i32
}

fn blocks_by_shared_memory(
    d: &Device,
    f: &Function,
    a: &Arch,
    dynamic_shared: u64,
) -> Result<i32, Error> {
    if dynamic_shared > f.max_dynamic_shared {
        return Ok(0);
    }
    let preferred = d.preferred_shared(a, f.carveout)?;
    let fixed = f.static_shared + d.reserved_shared_per_block;
    let per_block = round_up(fixed + dynamic_shared, a.smem_granularity);
    let limit = d.shared_limit_per_block(fixed + f.max_dynamic_shared);
    if per_block > limit {
        return Ok(0);
    }
    if per_block == 0 {
        return Ok(i32::MAX);
    }
    // A preference too small for one block gives way to the smallest carveout that holds one.
    let available = if preferred >= per_block {
        preferred
    } else {
        match a.carveout_at_least(per_block) {
            Some(c) => c,
            None => return Ok(0),
        }
    };
    Ok((available / per_block).min(i32::MAX as u64) as i32)
}

/// The block size that puts the most threads on a multiprocessor (the largest such), and the
/// grid that fills the device with it: `(min_grid_size, block_size)`. `dynamic_shared` gives
/// the dynamic shared memory a block of each size needs; `block_size_limit` (0: none) caps
/// the sizes tried.
pub fn potential_block_size(
    d: &Device,
    f: &Function,
    mut dynamic_shared: impl FnMut(i32) -> u64,
    block_size_limit: i32,
) -> Result<(i32, i32), Error> {
    d.check()?;
    f.check()?;
    if block_size_limit < 0 {
        return Err(Error::InvalidValue);
    }
    let mut limit = d.max_threads_per_block.min(f.max_threads_per_block);
    if block_size_limit > 0 {
        limit = limit.min(block_size_limit);
    }
    let step = d.warp_size;
    let (mut best_size, mut best_blocks, mut best_threads) = (0, 0, 0);
    let mut aligned = (limit + step - 1) / step * step;
    while aligned > 0 {
        let size = limit.min(aligned);
        let blocks = active_blocks(d, f, size, dynamic_shared(size))?;
        let threads = size.saturating_mul(blocks);
        if threads > best_threads {
            (best_size, best_blocks, best_threads) = (size, blocks, threads);
        }
        if best_threads == d.max_threads_per_sm {
            break;
        }
        aligned -= step;
    }
    Ok((best_blocks.saturating_mul(d.sm_count), best_size))
}

/// The most dynamic shared memory each block may have so that `num_blocks` blocks of
/// `block_size` threads fit on one multiprocessor.
pub fn available_dynamic_shared(
    d: &Device,
    f: &Function,
    num_blocks: i32,
    block_size: i32,
) -> Result<u64, Error> {
    if num_blocks <= 0 {
        return Err(Error::InvalidValue);
    }
    if active_blocks(d, f, block_size, 0)? < num_blocks {
        return Err(Error::InvalidValue);
    }
    let a = d.check()?;
    let limit = d.shared_limit_per_block(d.shared_per_sm);
    // One block may have everything a block may take; more share the preferred carveout.
    let per_sm = if num_blocks == 1 {
        limit
    } else {
        match d.preferred_shared(&a, f.carveout)? {
            0 => a.carveout_at_least(1).unwrap_or(0),
            p => p,
        }
    };
    let share = per_sm / num_blocks as u64 / a.smem_granularity * a.smem_granularity;
    Ok(share
        .min(limit)
        .saturating_sub(f.static_shared)
        .min(f.max_dynamic_shared))
}

/// The largest cluster (in blocks) `f` may be launched with.
fn max_cluster_size(d: &Device, f: &Function) -> i32 {
    if !d.cluster_launch {
        1
    } else if f.non_portable_cluster && matches!(d.major, 9 | 10) {
        16
    } else {
        8
    }
}

/// The cluster shape a launch of `f` uses: its required one, else `asked` (the launch's
/// cluster dimension attribute), else single blocks.
pub fn cluster_shape(d: &Device, f: &Function, asked: Option<[u32; 3]>) -> Result<i32, Error> {
    let required = (f.required_cluster != [0; 3]).then_some(f.required_cluster);
    let shape = match (asked, required) {
        (Some(a), Some(r)) if a != r => return Err(Error::InvalidClusterSize),
        (_, Some(r)) => r,
        (Some(a), None) => a,
        (None, None) => [1, 1, 1],
    };
    if shape.contains(&0) {
        return Err(Error::InvalidClusterSize);
    }
    let size = shape.iter().map(|&v| u64::from(v)).product::<u64>();
    if size > max_cluster_size(d, f) as u64 {
        return Err(Error::InvalidClusterSize);
    }
    Ok(size as i32)
}

/// Clusters of `cluster_size` blocks (of `block_size` threads and `dynamic_shared` bytes) that
/// fit on the device at once: in each GPC, its multiprocessors' blocks over the cluster size.
pub fn active_clusters(
    d: &Device,
    f: &Function,
    block_size: i32,
    dynamic_shared: u64,
    cluster_size: i32,
) -> Result<i32, Error> {
    if cluster_size <= 0 {
        return Err(Error::InvalidClusterSize);
    }
    let per_sm = active_blocks(d, f, block_size, dynamic_shared)? as i64;
    let clusters: i64 = d
        .gpc_sizes()
        .iter()
        .map(|&sms| per_sm * sms as i64 / cluster_size as i64)
        .sum();
    Ok(clusters.min(i32::MAX as i64) as i32)
}

/// The largest cluster of blocks (of `block_size` threads and `dynamic_shared` bytes) `f` can
/// be launched with: its required cluster size if it has one, else the largest the device
/// allows that fits in a GPC; 0 when not even one block fits on a multiprocessor.
pub fn potential_cluster_size(
    d: &Device,
    f: &Function,
    block_size: i32,
    dynamic_shared: u64,
) -> Result<i32, Error> {
    let per_sm = active_blocks(d, f, block_size, dynamic_shared)? as i64;
    let biggest_gpc = d.gpc_sizes().into_iter().max().unwrap_or(0) as i64;
    let room = per_sm * biggest_gpc;
    let want = if f.required_cluster != [0; 3] {
        cluster_shape(d, f, None)? as i64
    } else {
        (max_cluster_size(d, f) as i64).min(room)
    };
    Ok(if want <= room { want as i32 } else { 0 })
}

#[cfg(test)]
mod tests {
    //! Known answers worked out by hand from the calculator's rules for an H200 (compute
    //! capability 9.0, 132 multiprocessors, 64 Ki registers and 2048 threads and 32 blocks per
    //! multiprocessor, 228 KiB of shared memory per multiprocessor, 227 KiB per block opted
    //! in, 1 KiB reserved per block).
    use super::*;
    use std::collections::BTreeMap;

    /// GPC sizes → how many GPCs have that size.
    fn gpc_histogram(d: &Device) -> BTreeMap<i32, usize> {
        let mut m = BTreeMap::new();
        for s in d.gpc_sizes() {
            *m.entry(s).or_insert(0) += 1;
        }
        m
    }

    const H200: Device = Device {
        major: 9,
        minor: 0,
        max_threads_per_block: 1024,
        max_threads_per_sm: 2048,
        regs_per_block: 65536,
        regs_per_sm: 65536,
        warp_size: 32,
        shared_per_block: 48 << 10,
        shared_per_sm: 228 << 10,
        shared_per_block_optin: 227 << 10,
        reserved_shared_per_block: 1 << 10,
        max_blocks_per_sm: 32,
        sm_count: 132,
        cluster_launch: true,
    };

    /// A kernel with `regs` registers per thread, no static shared memory and the default
    /// 48 KiB dynamic shared memory limit.
    fn kernel(regs: i32) -> Function {
        Function {
            max_threads_per_block: 1024,
            num_regs: regs,
            static_shared: 0,
            max_dynamic_shared: 48 << 10,
            carveout: -1,
            required_cluster: [0; 3],
            non_portable_cluster: false,
        }
    }

    fn blocks(f: &Function, block: i32, dynamic: u64) -> i32 {
        active_blocks(&H200, f, block, dynamic).unwrap()
    }

    #[test]
    fn warps_limit_small_register_counts() {
        // 256 threads = 8 warps of the 64 warp slots: 8 blocks. 32 registers per thread =
        // 1024 per warp: 16 warps per 16 Ki-register sub-partition, 64 per SM: 8 blocks too.
        assert_eq!(blocks(&kernel(32), 256, 0), 8);
        // 1024 threads = 32 warps: 2 blocks.
        assert_eq!(blocks(&kernel(16), 1024, 0), 2);
        // One warp: 64 warp slots, but only 32 blocks per SM.
        assert_eq!(blocks(&kernel(0), 32, 0), 32);
        assert_eq!(blocks(&kernel(8), 64, 0), 32);
    }

    #[test]
    fn registers_are_allocated_per_warp_in_units_of_256() {
        // 64 registers = 2048 per warp: 8 warps per sub-partition, 32 per SM: 4 blocks of 8.
        assert_eq!(blocks(&kernel(64), 256, 0), 4);
        // 37 registers = 1184 per warp, allocated as 1280: 12 warps per sub-partition (not
        // 13), 48 per SM: 12 blocks of 4 warps.
        assert_eq!(blocks(&kernel(37), 128, 0), 12);
        // 255 registers = 8160, allocated as 8192 per warp: 2 warps per sub-partition, one
        // block of 8 warps; a ninth warp is over the 64 Ki registers of a block.
        assert_eq!(blocks(&kernel(255), 256, 0), 1);
        assert_eq!(blocks(&kernel(255), 288, 0), 0);
        // 96 registers = 3072 per warp: 5 warps per sub-partition, 20 per SM; a block of 17
        // warps counts as 20 in the hardware's per-block check (3072 × 20 = 61440 fits): 1.
        assert_eq!(blocks(&kernel(96), 17 * 32, 0), 1);
        // More than 256 registers per thread cannot be.
        assert_eq!(blocks(&kernel(257), 32, 0), 0);
    }

    #[test]
    fn shared_memory_counts_the_reserved_kilobyte_and_the_granularity() {
        // 48 KiB dynamic + 1 KiB reserved = 50176 bytes: 233472 / 50176 = 4 blocks.
        assert_eq!(blocks(&kernel(32), 128, 48 << 10), 4);
        // 22276 + 1024 = 23300 bytes, allocated as 23424 (183 × 128): 9 blocks (10 without
        // the granularity).
        assert_eq!(blocks(&kernel(32), 128, 22276), 9);
        // 12 KiB static + 1 KiB reserved = 13312 bytes: 17 blocks of 2 warps.
        let f = Function {
            static_shared: 12 << 10,
            max_dynamic_shared: 36 << 10,
            ..kernel(16)
        };
        assert_eq!(blocks(&f, 64, 0), 17);
        // Over the function's dynamic limit: none.
        assert_eq!(blocks(&kernel(32), 128, (48 << 10) + 1), 0);
    }

    #[test]
    fn opting_in_allows_a_block_the_whole_carveout() {
        let f = Function {
            max_dynamic_shared: 227 << 10,
            ..kernel(32)
        };
        // 227 KiB + 1 KiB reserved = the whole 228 KiB: one block.
        assert_eq!(blocks(&f, 128, 227 << 10), 1);
        assert_eq!(blocks(&f, 128, (227 << 10) + 1), 0);
        // 100 KiB + 1 KiB: 2 blocks.
        assert_eq!(blocks(&f, 128, 100 << 10), 2);
    }

    #[test]
    fn a_carveout_preference_limits_shared_memory() {
        // 50 % of 228 KiB = 114 KiB, rounded up to the 132 KiB configuration: 2 blocks of
        // 50176 bytes (4 without a preference).
        let half = Function {
            carveout: 50,
            ..kernel(32)
        };
        assert_eq!(blocks(&half, 128, 48 << 10), 2);
        // 0 %: the smallest configuration that holds one block, 64 KiB: 1 block.
        let none = Function {
            carveout: 0,
            ..kernel(32)
        };
        assert_eq!(blocks(&none, 128, 48 << 10), 1);
        let bad = Function {
            carveout: 101,
            ..kernel(32)
        };
        assert_eq!(active_blocks(&H200, &bad, 128, 0), Err(Error::InvalidValue));
    }

    #[test]
    fn blocks_the_function_cannot_launch_fit_nowhere() {
        let bounded = Function {
            max_threads_per_block: 128,
            ..kernel(32)
        };
        assert_eq!(blocks(&bounded, 128, 0), 16);
        assert_eq!(blocks(&bounded, 160, 0), 0);
        assert_eq!(blocks(&kernel(32), 1056, 0), 0);
        assert_eq!(
            active_blocks(&H200, &kernel(32), 0, 0),
            Err(Error::InvalidValue)
        );
    }

    #[test]
    fn potential_block_size_picks_the_most_threads() {
        // 32 registers: 1024 threads × 2 blocks fill the SM at once.
        assert_eq!(
            potential_block_size(&H200, &kernel(32), |_| 0, 0),
            Ok((2 * 132, 1024))
        );
        // 37 registers: 48 warps at most; 768 threads × 2 blocks is the first (largest)
        // size that reaches them (1024 × 1 has only 32 warps).
        assert_eq!(
            potential_block_size(&H200, &kernel(37), |_| 0, 0),
            Ok((2 * 132, 768))
        );
        // A limit of 200 threads: 200 (7 warps) × 9 blocks = 1800 threads, 192 × 10 = 1920,
        // and 128 × 16 fills the SM.
        assert_eq!(
            potential_block_size(&H200, &kernel(32), |_| 0, 200),
            Ok((16 * 132, 128))
        );
        // 128 bytes of dynamic shared memory per thread under the 48 KiB limit: blocks over
        // 384 threads cannot launch; 352 threads (45056 + 1024 bytes) × 5 blocks = 1760
        // threads beats 384 × 4, 288 × 6 and 192 × 9 (1728).
        assert_eq!(
            potential_block_size(&H200, &kernel(32), |b| 128 * b as u64, 0),
            Ok((5 * 132, 352))
        );
    }

    #[test]
    fn available_dynamic_shared_memory() {
        // One block: everything up to the function's limit.
        assert_eq!(
            available_dynamic_shared(&H200, &kernel(32), 1, 128),
            Ok(48 << 10)
        );
        let f = Function {
            max_dynamic_shared: 227 << 10,
            ..kernel(32)
        };
        assert_eq!(available_dynamic_shared(&H200, &f, 1, 128), Ok(227 << 10));
        // More blocks share the 228 KiB carveout, in 128-byte units: 233472 / 2 and
        // 233472 / 3 (77824 = 608 × 128).
        assert_eq!(available_dynamic_shared(&H200, &f, 2, 128), Ok(116736));
        assert_eq!(available_dynamic_shared(&H200, &f, 3, 128), Ok(77824));
        // Less the static shared memory: 233472 / 4 = 58368, less 12 KiB.
        let g = Function {
            static_shared: 12 << 10,
            max_dynamic_shared: (227 << 10) - (12 << 10),
            ..kernel(32)
        };
        assert_eq!(available_dynamic_shared(&H200, &g, 4, 128), Ok(46080));
        // 17 blocks of 4 warps do not fit (16 do).
        assert_eq!(
            available_dynamic_shared(&H200, &f, 17, 128),
            Err(Error::InvalidValue)
        );
        assert!(available_dynamic_shared(&H200, &f, 16, 128).is_ok());
        assert_eq!(
            available_dynamic_shared(&H200, &f, 0, 128),
            Err(Error::InvalidValue)
        );
    }

    #[test]
    fn an_h200_has_eight_gpcs() {
        // 66 TPCs over 8 GPCs of at most 9: two of 9 TPCs, six of 8.
        assert_eq!(gpc_histogram(&H200), BTreeMap::from([(16, 6), (18, 2)]));
        let one = Device {
            sm_count: 1,
            ..H200
        };
        assert_eq!(one.gpc_sizes(), [1]);
        let odd = Device {
            sm_count: 19,
            ..H200
        };
        assert_eq!(odd.gpc_sizes().iter().sum::<i32>(), 19);
        assert_eq!(odd.gpc_sizes().len(), 2);
    }

    #[test]
    fn clusters() {
        let f = kernel(32);
        let one_block = Function {
            max_dynamic_shared: 227 << 10,
            ..f
        };
        let big = 200 << 10;
        // Single blocks: blocks per SM × SMs.
        assert_eq!(active_clusters(&H200, &f, 256, 0, 1), Ok(8 * 132));
        // Pairs: every GPC holds whole TPCs, so half of all blocks.
        assert_eq!(active_clusters(&H200, &one_block, 128, big, 2), Ok(66));
        assert_eq!(active_clusters(&H200, &f, 128, 48 << 10, 2), Ok(4 * 66));
        // Bigger clusters stay within a GPC: 18-SM GPCs hold 4 clusters of 4 and 2 of 8,
        // 16-SM GPCs 4 and 2.
        assert_eq!(active_clusters(&H200, &one_block, 128, big, 4), Ok(32));
        assert_eq!(active_clusters(&H200, &one_block, 128, big, 8), Ok(16));
        assert_eq!(
            active_clusters(&H200, &one_block, 128, big, 3),
            Ok(2 * 6 + 6 * 5)
        );
    }

    #[test]
    fn cluster_shapes() {
        let f = kernel(32);
        assert_eq!(cluster_shape(&H200, &f, None), Ok(1));
        assert_eq!(cluster_shape(&H200, &f, Some([2, 2, 2])), Ok(8));
        assert_eq!(
            cluster_shape(&H200, &f, Some([4, 4, 1])),
            Err(Error::InvalidClusterSize)
        );
        let np = Function {
            non_portable_cluster: true,
            ..f
        };
        assert_eq!(cluster_shape(&H200, &np, Some([4, 4, 1])), Ok(16));
        assert_eq!(
            cluster_shape(&H200, &np, Some([4, 4, 2])),
            Err(Error::InvalidClusterSize)
        );
        assert_eq!(
            cluster_shape(&H200, &f, Some([2, 0, 1])),
            Err(Error::InvalidClusterSize)
        );
        let req = Function {
            required_cluster: [2, 1, 1],
            ..f
        };
        assert_eq!(cluster_shape(&H200, &req, None), Ok(2));
        assert_eq!(cluster_shape(&H200, &req, Some([2, 1, 1])), Ok(2));
        assert_eq!(
            cluster_shape(&H200, &req, Some([4, 1, 1])),
            Err(Error::InvalidClusterSize)
        );
        let old = Device {
            cluster_launch: false,
            ..H200
        };
        assert_eq!(cluster_shape(&old, &f, Some([1, 1, 1])), Ok(1));
        assert_eq!(
            cluster_shape(&old, &f, Some([2, 1, 1])),
            Err(Error::InvalidClusterSize)
        );
    }

    #[test]
    fn potential_cluster_sizes() {
        let f = kernel(32);
        // The portable maximum, 8; 16 where the function allows non-portable sizes.
        assert_eq!(potential_cluster_size(&H200, &f, 128, 0), Ok(8));
        let np = Function {
            non_portable_cluster: true,
            max_dynamic_shared: 227 << 10,
            ..f
        };
        assert_eq!(potential_cluster_size(&H200, &np, 128, 200 << 10), Ok(16));
        let req = Function {
            required_cluster: [2, 1, 1],
            ..f
        };
        assert_eq!(potential_cluster_size(&H200, &req, 128, 0), Ok(2));
        // No block fits: no cluster.
        assert_eq!(potential_cluster_size(&H200, &f, 128, 1 << 20), Ok(0));
        // A one-SM device holds clusters of its blocks per SM at most.
        let one = Device {
            sm_count: 1,
            ..H200
        };
        let one_block = Function {
            max_dynamic_shared: 227 << 10,
            ..f
        };
        assert_eq!(
            potential_cluster_size(&one, &one_block, 128, 200 << 10),
            Ok(1)
        );
        assert_eq!(potential_cluster_size(&one, &f, 128, 48 << 10), Ok(4));
    }

    #[test]
    fn other_architectures() {
        // An A100 (8.0): 164 KiB of shared memory per SM, 163 KiB opt-in.
        let a100 = Device {
            major: 8,
            minor: 0,
            shared_per_sm: 164 << 10,
            shared_per_block_optin: 163 << 10,
            sm_count: 108,
            cluster_launch: false,
            ..H200
        };
        // 167936 / 50176 = 3 blocks of 48 KiB + 1 KiB.
        assert_eq!(active_blocks(&a100, &kernel(32), 128, 48 << 10), Ok(3));
        let unknown = Device { major: 6, ..H200 };
        assert_eq!(
            active_blocks(&unknown, &kernel(32), 128, 0),
            Err(Error::UnknownArchitecture(6, 0))
        );
    }
}
