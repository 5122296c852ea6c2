//! Built-in kernels: present on every backend with the same names, parameters and results.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Function handles of built-in kernels have this bit set.
pub const BUILTIN_FUNC_FLAG: u64 = 1 << 63;

/// Built-in kernels, present on every backend with the same names and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Builtin {
    /// `c[i] = a[i] + b[i]` for `i < n` (f32). Params: [`VectorAddParams`].
    VectorAddF32 = 1,
    /// `y[i] = alpha * x[i] + y[i]` (f32). Params: [`SaxpyParams`].
    Saxpy = 2,
    /// `C = alpha * A·B + beta * C`, row-major f32, A m×k, B k×n, C m×n. Params: [`SgemmParams`].
    Sgemm = 3,
    /// `out[0] = sum(x[0..n])` (f32). Params: [`ReduceParams`].
    ReduceSumF32 = 4,
    /// Occupies the device for `duration_us` microseconds. Params: [`BusyParams`].
    Busy = 5,
    /// Writes through an illegal address: faults and breaks the VM's context. No params.
    Fault = 6,
}

impl Builtin {
    /// All built-ins.
    pub const ALL: [Builtin; 6] = [
        Builtin::VectorAddF32,
        Builtin::Saxpy,
        Builtin::Sgemm,
        Builtin::ReduceSumF32,
        Builtin::Busy,
        Builtin::Fault,
    ];

    /// The function handle to put in [`LaunchBody::func`].
    pub const fn handle(self) -> u64 {
        BUILTIN_FUNC_FLAG | self as u64
    }

    /// Decodes a function handle naming a built-in.
    pub fn from_handle(h: u64) -> Option<Self> {
        if h & BUILTIN_FUNC_FLAG == 0 {
            return None;
        }
        Self::ALL.into_iter().find(|b| b.handle() == h)
    }

    /// The kernel's name (the same on every backend).
    pub fn name(self) -> &'static str {
        match self {
            Builtin::VectorAddF32 => "vector_add_f32",
            Builtin::Saxpy => "saxpy",
            Builtin::Sgemm => "sgemm",
            Builtin::ReduceSumF32 => "reduce_sum_f32",
            Builtin::Busy => "busy",
            Builtin::Fault => "fault",
        }
    }

    /// `(offset, size)` of each kernel parameter in the packed parameters (what
    /// [`super::Opcode::FuncParamInfo`] reports for a built-in; the CUDA kernels take exactly these).
    pub fn param_layout(self) -> &'static [(u32, u32)] {
        match self {
            Builtin::VectorAddF32 => &[(0, 8), (8, 8), (16, 8), (24, 4)],
            Builtin::Saxpy => &[(0, 8), (8, 8), (16, 4), (20, 4)],
            Builtin::Sgemm => &[
                (0, 8),
                (8, 8),
                (16, 8),
                (24, 4),
                (28, 4),
                (32, 4),
                (36, 4),
                (40, 4),
            ],
            Builtin::ReduceSumF32 => &[(0, 8), (8, 8), (16, 4)],
            Builtin::Busy => &[(0, 4)],
            Builtin::Fault => &[],
        }
    }

    /// Exact parameter bytes the kernel takes.
    pub fn params_len(self) -> usize {
        match self {
            Builtin::VectorAddF32 => core::mem::size_of::<VectorAddParams>(),
            Builtin::Saxpy => core::mem::size_of::<SaxpyParams>(),
            Builtin::Sgemm => core::mem::size_of::<SgemmParams>(),
            Builtin::ReduceSumF32 => core::mem::size_of::<ReduceParams>(),
            Builtin::Busy => core::mem::size_of::<BusyParams>(),
            Builtin::Fault => 0,
        }
    }
}

/// Parameters of [`Builtin::VectorAddF32`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VectorAddParams {
    /// Input a.
    pub a: u64,
    /// Input b.
    pub b: u64,
    /// Output c.
    pub c: u64,
    /// Elements.
    pub n: u32,
    /// Zero.
    pub _pad: u32,
}

/// Parameters of [`Builtin::Saxpy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SaxpyParams {
    /// Input x.
    pub x: u64,
    /// In/out y.
    pub y: u64,
    /// Elements.
    pub n: u32,
    /// Scale.
    pub alpha: f32,
}

/// Parameters of [`Builtin::Sgemm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SgemmParams {
    /// A (m×k).
    pub a: u64,
    /// B (k×n).
    pub b: u64,
    /// C (m×n), in/out.
    pub c: u64,
    /// Rows of A and C.
    pub m: u32,
    /// Columns of B and C.
    pub n: u32,
    /// Columns of A, rows of B.
    pub k: u32,
    /// Scale of A·B.
    pub alpha: f32,
    /// Scale of C.
    pub beta: f32,
    /// Zero.
    pub _pad: u32,
}

/// Parameters of [`Builtin::ReduceSumF32`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReduceParams {
    /// Input.
    pub x: u64,
    /// Output (one f32).
    pub out: u64,
    /// Elements.
    pub n: u32,
    /// Zero.
    pub _pad: u32,
}

/// Parameters of [`Builtin::Busy`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BusyParams {
    /// Microseconds.
    pub duration_us: u32,
    /// Zero.
    pub _pad: u32,
}
