//! The built-in kernels with typed parameters: each helper packs its parameter block and picks
//! a grid that covers the data.

use vgpu_abi::cmd::{BusyParams, ReduceParams, SaxpyParams, SgemmParams, VectorAddParams};
use vgpu_abi::Builtin;
use zerocopy::IntoBytes;

use super::Device;
use crate::Error;

/// Threads per block used by the typed built-in helpers for 1-D kernels.
const BLOCK_1D: u32 = 256;
/// Block edge used by [`Device::sgemm`].
const BLOCK_2D: u32 = 16;

/// The 1-D grid of [`BLOCK_1D`]-thread blocks that covers `n` items (at least one block).
fn grid_1d(n: u32) -> [u32; 3] {
    [n.div_ceil(BLOCK_1D).max(1), 1, 1]
}

impl Device {
    /// `y[i] = alpha * x[i] + y[i]` for `i < n` (f32).
    pub fn saxpy(&self, x: u64, y: u64, n: u32, alpha: f32) -> Result<(), Error> {
        let p = SaxpyParams { x, y, n, alpha };
        self.launch_builtin(Builtin::Saxpy, grid_1d(n), [BLOCK_1D, 1, 1], p.as_bytes())
    }

    /// `C = alpha * A·B + beta * C`, row-major f32, A m×k, B k×n, C m×n.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        a: u64,
        b: u64,
        c: u64,
        m: u32,
        n: u32,
        k: u32,
        alpha: f32,
        beta: f32,
    ) -> Result<(), Error> {
        let p = SgemmParams {
            a,
            b,
            c,
            m,
            n,
            k,
            alpha,
            beta,
            _pad: 0,
        };
        let grid = [n.div_ceil(BLOCK_2D).max(1), m.div_ceil(BLOCK_2D).max(1), 1];
        self.launch_builtin(Builtin::Sgemm, grid, [BLOCK_2D, BLOCK_2D, 1], p.as_bytes())
    }

    /// `c[i] = a[i] + b[i]` for `i < n` (f32).
    pub fn vector_add(&self, a: u64, b: u64, c: u64, n: u32) -> Result<(), Error> {
        let p = VectorAddParams {
            a,
            b,
            c,
            n,
            _pad: 0,
        };
        self.launch_builtin(
            Builtin::VectorAddF32,
            grid_1d(n),
            [BLOCK_1D, 1, 1],
            p.as_bytes(),
        )
    }

    /// `out[0] = sum(x[0..n])` (f32).
    pub fn reduce_sum(&self, x: u64, out: u64, n: u32) -> Result<(), Error> {
        let p = ReduceParams { x, out, n, _pad: 0 };
        self.launch_builtin(
            Builtin::ReduceSumF32,
            grid_1d(n),
            [BLOCK_1D, 1, 1],
            p.as_bytes(),
        )
    }

    /// Occupies the device for `us` microseconds.
    pub fn busy(&self, us: u32) -> Result<(), Error> {
        let p = BusyParams {
            duration_us: us,
            _pad: 0,
        };
        self.launch_builtin(Builtin::Busy, [1, 1, 1], [1, 1, 1], p.as_bytes())
    }

    /// Launches the kernel that faults (breaks the VM's device context until reset).
    pub fn fault(&self) -> Result<(), Error> {
        self.launch_builtin(Builtin::Fault, [1, 1, 1], [1, 1, 1], &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids() {
        assert_eq!(grid_1d(0), [1, 1, 1]);
        assert_eq!(grid_1d(256), [1, 1, 1]);
        assert_eq!(grid_1d(257), [2, 1, 1]);
    }
}
