//! vgpud, the vGPU mediator.
//!
//! Data flows one way: [`transport`] (the ivshmem-doorbell server) → [`channel`] (one per VM:
//! ring reader, validation, completions) → [`queue`] / [`sched`] (the scheduler) → [`executor`]
//! (one per device) → [`backend`]. [`router`] places each connecting VM on a device and hands
//! its events to that device's executor. [`device`] holds each VM's backend-neutral device
//! state (allocations, quota, faults) and [`quota`] the pool quotas its memory is charged to;
//! [`stats`] and [`admin`] expose accounting, [`metrics`] the same to Prometheus. [`testkit`]
//! is for code that starts a real vgpud (tests, benchmarks): its config file and its stats,
//! typed. [`sd_notify`] tells systemd when vgpud is ready, reloading or stopping.
//!
//! Layers, lowest first; a module uses only modules of lower layers (`layers.rs` holds the
//! table and a test that checks every source file against it):
//!
//! | layer | modules |
//! |---|---|
//! | 8 | [`testkit`] |
//! | 7 | [`router`] |
//! | 6 | [`executor`] |
//! | 5 | [`channel`], [`sched`] |
//! | 4 | [`device`], [`queue`] |
//! | 3 | [`backend`] |
//! | 2 | [`transport`], [`admin`], [`metrics`] |
//! | 1 | [`access`], [`stats`] |
//! | 0 | [`config`], [`throttle`], [`quota`], [`sd_notify`], [`deadline_io`] |
//!
//! The binary (`main.rs`) wires them: transport → router → executors.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod access;
pub mod admin;
pub mod backend;
pub mod channel;
pub mod config;
pub mod deadline_io;
pub mod device;
pub mod executor;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod queue;
pub mod quota;
pub mod router;
pub mod sched;
pub mod sd_notify;
pub mod stats;
pub mod testkit;
pub mod throttle;
pub mod transport;
