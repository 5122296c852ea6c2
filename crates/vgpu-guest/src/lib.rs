//! Guest side of the vGPU.
//!
//! A program finds the vGPU (a stock QEMU `ivshmem-doorbell` PCI device, `1af4:1110`, whose
//! BAR2 starts with the vgpu magic) or attaches to a vgpud UNIX socket directly as an ivshmem
//! client, and then talks to it through [`Device`]: commands go into the submission ring,
//! the doorbell is rung when vgpud is not polling, and completions are read from the
//! completion ring by a waiter that spins briefly, then blocks: on the completion interrupt
//! where there is one (MSI-X through VFIO in a VM, an eventfd on the socket), else by
//! sleeping ([`Device::wait_mode`]). Everything above the [`transport`] is the same for both
//! ways in.
//!
//! ```no_run
//! # fn main() -> Result<(), vgpu_guest::Error> {
//! let dev = vgpu_guest::Device::open_pci()?;
//! let p = dev.alloc(1024)?;
//! dev.copy_htod(p, &[1u8; 1024])?;
//! let mut back = vec![0u8; 1024];
//! dev.copy_dtoh(&mut back, p)?;
//! dev.free(p)?;
//! # Ok(()) }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

pub mod compute;
pub mod device;
pub mod error;
pub mod selftest;
pub mod transport;
mod wait;

#[cfg(test)]
mod testhost;
#[cfg(test)]
mod tests;

pub use compute::{Arg, Event, Function, Launch, Module, Pending, Stream};
pub use device::{Device, DeviceInfo, DEFAULT_TIMEOUT, SOCKET_ENV};
pub use error::Error;
pub use vgpu_abi::{Builtin, Cqe, DeviceStatus, Opcode, Sqe, Status};
pub use wait::WaitPolicy;
