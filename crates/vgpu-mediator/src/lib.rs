//! vgpud, the vGPU mediator.
//!
//! Data flows one way: [`transport`] (the ivshmem-doorbell server) → [`channel`] (one per VM:
//! ring reader, validation, completions) → [`queue`] / [`sched`] (the scheduler) → [`executor`] (one per device) →
//! [`backend`]. [`device`] holds each VM's backend-neutral device state (allocations, quota,
//! faults); [`stats`] and [`admin`] expose accounting.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod access;
pub mod admin;
pub mod backend;
pub mod channel;
pub mod config;
pub mod device;
pub mod executor;
pub mod queue;
pub mod quota;
pub mod router;
pub mod sched;
pub mod stats;
pub mod throttle;
pub mod transport;
