//! vgpu's guest CUDA driver: a shared object with SONAME `libcuda.so.1` that implements the CUDA
//! driver API on top of the vGPU channel, so that programs built with a stock CUDA toolkit run
//! unchanged inside a VM (over the vGPU PCI device) or as a host process or container attached
//! to a vgpud socket (`VGPU_SOCKET`).
//!
//! Layers, top to bottom (see docs/guest-cuda.md):
//! - the ABI layer: every function NVIDIA's driver exports is exported here ([`exports`]);
//!   what is not implemented answers `CUDA_ERROR_NOT_SUPPORTED` ([`unsupported`]);
//!   `cuGetProcAddress` answers from a table derived from the real driver ([`proc_address`]);
//! - the private tables the CUDA runtime asks for with `cuGetExportTable` ([`dark_api`]);
//! - the entry points themselves ([`api`]);
//! - what vgpu's `libnvidia-ml.so.1` in the same process asks for: the device this library
//!   opened, so that the process attaches once ([`shared`]).

// The exported names are the driver API's own.
#![allow(non_snake_case)]

pub mod api;
pub mod dark_api;
pub mod driver;
// The generated export table declares every export without its signature; modules that call
// an export declare it with the real one.
#[allow(clashing_extern_declarations)]
pub mod exports;
pub mod features;
pub mod handles;
pub mod legacy;
pub mod params;
pub mod pinned;
pub mod proc_address;
pub mod rows;
pub mod shared;
pub mod unsupported;

pub use cudarc::driver::sys as types;
