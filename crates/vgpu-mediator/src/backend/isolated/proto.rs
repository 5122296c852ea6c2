//! The vgpud ↔ worker protocol: fd numbers, the private ring's geometry, the worker's command
//! line, and which commands vgpud issues without waiting.
//!
//! The private ring memfd is laid out exactly like a VM's BAR2 ([`vgpu_abi::Layout`]): vgpud
//! is its producer (like a guest), the worker its consumer (like vgpud). Each request is a
//! [`Command`] encoded with [`Command::encode`]; the worker answers each with one `Cqe` carrying
//! the request's tag once the work has **retired**:
//! * commands vgpud waits for (`Class::asynchronous` false): `result0` / `result1` are the results;
//! * stream commands (`Class::asynchronous` true): `result0` is the device time in nanoseconds (their
//!   results are always zero on every backend).
//!
//! Once its context exists, the worker posts one `Cqe` with tag [`READY_TAG`] (status `Ok`, or
//! the error that prevented the context, after which it exits).

use std::os::fd::RawFd;
use vgpu_abi::Layout;

/// The flag that makes `vgpud` a worker (first argument; hidden from `--help`).
pub const WORKER_FLAG: &str = "--worker";
/// The VM's shared region (its BAR2 memfd) in the worker.
pub const FD_REGION: RawFd = 3;
/// The private ring memfd in the worker.
pub const FD_RING: RawFd = 4;
/// The doorbell eventfd (vgpud → worker) in the worker.
pub const FD_DOORBELL: RawFd = 5;
/// The wake eventfd (worker → vgpud): written after the worker posted answers while vgpud
/// asked for it (`CQ_FLAG_IRQ` in the private ring, set by a vgpud that blocks on it). One for
/// all of a device's workers: all a worker can do with it is wake vgpud.
pub const FD_WAKE: RawFd = 6;
/// The fds the worker receives, in order of their numbers from [`FD_REGION`].
pub const FD_COUNT: usize = 4;

/// Size of the private ring memfd.
pub const RING_SIZE: u64 = 512 << 10;
/// Submission entries of the private ring.
pub const RING_SQ: u32 = 1024;
/// Completion entries of the private ring (vgpud never has more requests outstanding).
pub const RING_CQ: u32 = 1024;
/// Tag of the worker's "context ready" completion.
pub const READY_TAG: u64 = u64::MAX;
/// Offset in the private ring's register page (its guest half, written by vgpud) of the
/// "device shared" flag: 1 while several VMs use the worker's device ([`Backend::set_shared`]).
///
/// [`Backend::set_shared`]: crate::backend::Backend::set_shared
pub const REG_SHARED: usize = vgpu_abi::regs::GUEST_HALF + 0x40;

/// Protocol errors (a bad worker command line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// An argument is missing, unknown or malformed.
    #[error("worker argument: {0}")]
    Arg(String),
    /// The private ring geometry is invalid (a bug).
    #[error("private ring layout: {0}")]
    Layout(#[from] vgpu_abi::LayoutError),
}

/// The private ring's layout.
pub fn ring_layout() -> Result<Layout, ProtoError> {
    Ok(Layout::compute(RING_SIZE, RING_SQ, RING_CQ)?)
}

/// Which backend a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// The cuda backend.
    Cuda {
        /// Launches, memsets and device copies complete when retired, timed by CUDA events.
        accounting: bool,
    },
    /// The cpu backend (tests, and `fault_isolation = "process"` with `backend = "cpu"`).
    Cpu {
        /// "Device memory".
        mem: u64,
        /// Execution slots.
        slots: u32,
    },
}

/// Everything a worker needs besides its fds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// Backend.
    pub kind: WorkerKind,
    /// Device index.
    pub device: usize,
    /// The VM's priority.
    pub priority: u32,
    /// Offset of staging in the VM's region.
    pub staging_offset: u64,
    /// Size of staging.
    pub staging_size: u64,
    /// How long the worker keeps polling its ring after the last work, in microseconds.
    pub poll_us: u64,
    /// Whether the worker blocks on its backend's wake fd once `poll_us` passed with device
    /// work pending (`device_wait = "block"`), instead of polling the device.
    pub block: bool,
    /// The first module or function handle the worker gives out (its context's serial number
    /// in bits 32..63), so that handles are unique across VMs without translation.
    pub first_handle: u64,
}

impl WorkerArgs {
    /// The command line after [`WORKER_FLAG`].
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--backend".into(),
            match self.kind {
                WorkerKind::Cuda { .. } => "cuda".into(),
                WorkerKind::Cpu { .. } => "cpu".into(),
            },
            "--device".into(),
            self.device.to_string(),
            "--priority".into(),
            self.priority.to_string(),
            "--staging-offset".into(),
            self.staging_offset.to_string(),
            "--staging-size".into(),
            self.staging_size.to_string(),
            "--poll-us".into(),
            self.poll_us.to_string(),
            "--block".into(),
            u8::from(self.block).to_string(),
            "--first-handle".into(),
            self.first_handle.to_string(),
        ];
        if let WorkerKind::Cuda { accounting } = self.kind {
            v.extend([
                "--kernel-accounting".into(),
                u8::from(accounting).to_string(),
            ]);
        }
        if let WorkerKind::Cpu { mem, slots } = self.kind {
            v.extend([
                "--cpu-mem".into(),
                mem.to_string(),
                "--cpu-slots".into(),
                slots.to_string(),
            ]);
        }
        v
    }

    /// Parses what [`WorkerArgs::to_args`] wrote.
    pub fn parse(args: &[String]) -> Result<Self, ProtoError> {
        let mut get = std::collections::HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let v = it
                .next()
                .ok_or_else(|| ProtoError::Arg(format!("{k} needs a value")))?;
            if get.insert(k.as_str(), v.as_str()).is_some() {
                return Err(ProtoError::Arg(format!("{k} given twice")));
            }
        }
        let mut take = |k: &str| {
            get.remove(k)
                .ok_or_else(|| ProtoError::Arg(format!("missing {k}")))
        };
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, ProtoError> {
            v.parse()
                .map_err(|_| ProtoError::Arg(format!("{k} {v:?} is not a number")))
        }
        let backend = take("--backend")?;
        let device = num("--device", take("--device")?)?;
        let priority = num("--priority", take("--priority")?)?;
        let staging_offset = num("--staging-offset", take("--staging-offset")?)?;
        let staging_size = num("--staging-size", take("--staging-size")?)?;
        let poll_us = num("--poll-us", take("--poll-us")?)?;
        let block = num::<u8>("--block", take("--block")?)? != 0;
        let first_handle = num("--first-handle", take("--first-handle")?)?;
        let kind = match backend {
            "cuda" => WorkerKind::Cuda {
                accounting: num::<u8>("--kernel-accounting", take("--kernel-accounting")?)? != 0,
            },
            "cpu" => WorkerKind::Cpu {
                mem: num("--cpu-mem", take("--cpu-mem")?)?,
                slots: num("--cpu-slots", take("--cpu-slots")?)?,
            },
            b => return Err(ProtoError::Arg(format!("unknown backend {b:?}"))),
        };
        if let Some(k) = get.keys().next() {
            return Err(ProtoError::Arg(format!("unknown argument {k}")));
        }
        Ok(Self {
            kind,
            device,
            priority,
            staging_offset,
            staging_size,
            poll_us,
            block,
            first_handle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip_and_reject_garbage() {
        for kind in [
            WorkerKind::Cuda { accounting: true },
            WorkerKind::Cuda { accounting: false },
            WorkerKind::Cpu {
                mem: 1 << 30,
                slots: 4,
            },
        ] {
            let a = WorkerArgs {
                kind,
                device: 3,
                priority: 2,
                staging_offset: 0x10000,
                staging_size: 123456,
                poll_us: 50,
                block: true,
                first_handle: 7 << 32 | 1,
            };
            assert_eq!(WorkerArgs::parse(&a.to_args()), Ok(a.clone()));
            let mut extra = a.to_args();
            extra.extend(["--bogus".into(), "1".into()]);
            assert!(WorkerArgs::parse(&extra).is_err());
            let mut short = a.to_args();
            short.pop();
            assert!(WorkerArgs::parse(&short).is_err());
        }
        let bad: Vec<String> = ["--backend", "tpu"].iter().map(|s| s.to_string()).collect();
        assert!(WorkerArgs::parse(&bad).is_err());
    }

    #[test]
    fn ring_geometry_is_valid() {
        let l = ring_layout().unwrap();
        assert!(l.cq_entries >= l.sq_entries);
        assert_eq!(l.shm_size, RING_SIZE);
    }
}
