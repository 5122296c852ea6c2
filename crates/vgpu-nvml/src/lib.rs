//! vgpu's guest NVML: a shared object with SONAME `libnvidia-ml.so.1` that answers the NVML
//! queries frameworks make (PyTorch, JAX, CuPy, `pynvml`) about the vGPU, so that they find and
//! describe it as they would a GPU: its name, UUID and PCI location, its memory (the VM's quota)
//! and what is in use, its utilisation, the processes on it.
//!
//! Everything comes from BAR2's register page and device-info page, which vgpud writes and
//! keeps current (docs/abi.md): a query is a read of shared memory, never a ring command.
//!
//! Layers, top to bottom (see docs/guest-cuda.md, "NVML"):
//! - the ABI layer: every function NVML 13 exports is exported here ([`exports`]); what is not
//!   implemented answers `NVML_ERROR_NOT_SUPPORTED` ([`unsupported`]);
//! - the entry points ([`api`]);
//! - the process-wide state ([`state`]) and where the device is read from ([`source`]).

// The exported names are NVML's own.
#![allow(non_snake_case)]

pub mod api;
pub mod exports;
pub mod source;
pub mod state;
pub mod types;
pub mod unsupported;
