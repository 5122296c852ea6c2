//! Commands: the ring entries, the command set (declared once, in `table.rs`), status codes,
//! built-in kernels and their packed parameter layouts.
//!
//! Device memory is addressed by device pointers (`u64`), exactly as in the CUDA driver API.
//! Each VM has its own address space; a pointer that names no allocation of this VM is an
//! error for that VM alone.
//!
//! | module    | responsibility |
//! |-----------|----------------|
//! | `entry`   | the 128-byte submission and 32-byte completion entries; body packing |
//! | `declare` | the `commands!` macro: everything derived from a declaration |
//! | `table`   | the declarations: the command set |
//! | `check`   | the field checks declarations apply when decoding |
//! | `class`   | how commands are ordered and scheduled, and what they do to VM resources |
//! | `status`  | completion status codes |
//! | `launch`  | the launch body and its limits |
//! | `builtin` | built-in kernels and their parameters |
//! | `reference` | what each built-in computes (the cpu backend's and test host's kernels) |

#[macro_use]
mod declare;
mod builtin;
mod check;
mod class;
pub mod entry;
mod launch;
pub mod reference;
mod status;
mod table;

pub use builtin::{
    Builtin, BusyParams, ReduceParams, SaxpyParams, SgemmParams, VectorAddParams, BUILTIN_FUNC_FLAG,
};
pub use check::{MAX_EVENTS, MAX_FUNC_NAME, MAX_KERNEL_PARAMS, PROT_READWRITE};
pub use class::{Class, DeviceRanges, Direction, Effect};
pub use entry::{Cqe, Field, Sqe, CQE_SIZE, SQE_BODY, SQE_SIZE};
pub use launch::{LaunchBody, MAX_BLOCK_THREADS, MAX_GRID_DIM, MAX_INLINE_PARAMS};
pub use status::Status;
pub use table::{Command, Handler, Opcode};

/// Submission entry flag for [`Opcode::Synchronize`]: wait for every stream, not only `stream`.
pub const SYNC_ALL_STREAMS: u16 = 1 << 0;
/// Submission entry flag for [`Opcode::ModuleLoad`]: the image is a cubin or fatbin, not PTX
/// text (1.4).
pub const MODULE_BINARY: u16 = 1 << 0;
/// Submission entry flag for [`Opcode::ModuleLoad`]: more of the image follows (1.5).
pub const MODULE_MORE: u16 = 1 << 1;
/// Submission entry flag for [`Opcode::ModuleLoad`]: the entry continues the image of the
/// previous one (1.5).
pub const MODULE_CONT: u16 = 1 << 2;
/// Distinct stream ids one VM may use (until it resets); a command naming one more stream
/// fails with [`Status::InvalidArgument`] (or, past a lower `limits.max_streams` of the host's
/// config, [`Status::LimitExceeded`]). A bound, not a layout: raising it from 64 changed no
/// ABI version (a vgpud from before refuses a 65th id).
pub const MAX_STREAMS: usize = 1024;

#[cfg(test)]
mod tests;
