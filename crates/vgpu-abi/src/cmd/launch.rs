//! The launch command's body: a kernel, its grid and block, and its packed parameters.

use super::builtin::{Builtin, BusyParams};
use super::entry::Field;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of kernel parameters carried inline in a launch entry.
pub const MAX_INLINE_PARAMS: usize = 72;
/// Largest block (threads per block) accepted.
pub const MAX_BLOCK_THREADS: u64 = 1024;
/// Largest grid dimension accepted.
pub const MAX_GRID_DIM: u32 = i32::MAX as u32;

/// The body of [`super::Opcode::Launch`] (the whole entry body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LaunchBody {
    /// Function handle ([`Builtin::handle`] for built-in kernels).
    pub func: u64,
    /// Grid dimensions.
    pub grid: [u32; 3],
    /// Block dimensions.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_mem: u32,
    /// Bytes of `params` in use.
    pub params_len: u32,
    /// Packed kernel parameters (CUDA layout: each at its natural alignment).
    pub params: [u8; MAX_INLINE_PARAMS],
}

impl Field for LaunchBody {
    const SIZE: usize = core::mem::size_of::<LaunchBody>();
    const ALIGN: usize = 8;
    fn read(bytes: &[u8]) -> Self {
        // Exactly `SIZE` bytes (the body reader slices them), so this cannot fail.
        Self::read_from_bytes(bytes).expect("a launch body is SIZE bytes")
    }
    fn write(&self, bytes: &mut [u8]) {
        bytes.copy_from_slice(self.as_bytes());
    }
}

impl LaunchBody {
    /// A launch of the built-in `busy` kernel (one thread) that keeps the device busy for
    /// `duration_us`.
    pub fn busy(duration_us: u32) -> Self {
        let p = BusyParams {
            duration_us,
            _pad: 0,
        };
        Self::new(Builtin::Busy.handle(), [1; 3], [1; 3], p.as_bytes())
            .expect("busy parameters fit a launch")
    }

    /// A launch of `func` with the given packed parameters.
    pub fn new(func: u64, grid: [u32; 3], block: [u32; 3], params: &[u8]) -> Option<Self> {
        if params.len() > MAX_INLINE_PARAMS {
            return None;
        }
        let mut p = [0u8; MAX_INLINE_PARAMS];
        p[..params.len()].copy_from_slice(params);
        Some(Self {
            func,
            grid,
            block,
            shared_mem: 0,
            params_len: params.len() as u32,
            params: p,
        })
    }

    /// The parameter bytes in use.
    pub fn params(&self) -> &[u8] {
        &self.params[..(self.params_len as usize).min(MAX_INLINE_PARAMS)]
    }
}
