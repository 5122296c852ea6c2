//! The crate's error type.

use std::time::Duration;
use vgpu_abi::{AbiError, LayoutError, Opcode, Status};

/// Everything that can go wrong talking to a vGPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No vGPU device was found.
    #[error("no vGPU found: {0}")]
    NotFound(String),
    /// The device speaks another ABI, or is not a vGPU.
    #[error(transparent)]
    Abi(#[from] AbiError),
    /// The register page describes a geometry that does not fit the shared memory.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The ivshmem server broke its protocol.
    #[error("ivshmem protocol error: {0}")]
    Protocol(String),
    /// Nothing happened within the timeout.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },
    /// A command completed with an error status.
    #[error("{op:?} failed: {status}")]
    Command {
        /// The command's opcode.
        op: Opcode,
        /// Its completion status.
        status: Status,
    },
    /// A command completed with a status code this library does not know.
    #[error("{op:?} failed with unknown status code {raw}")]
    UnknownStatus {
        /// The command's opcode.
        op: Opcode,
        /// The raw status code.
        raw: u32,
    },
    /// vgpud fenced this VM (it broke the ring protocol); reset the device.
    #[error("device is fenced (reason {reason:#x}{}); reset it", fence_name(*reason))]
    Fenced {
        /// The `last_error` register (a `FenceReason` code).
        reason: u32,
    },
    /// vgpud stopped serving the device (shut down or restarted): nothing will answer again.
    /// Restart the VM or, for a process client, connect again.
    #[error("the vGPU device stopped: vgpud shut down; restart the VM (or reconnect)")]
    Stopped,
    /// The operation is not available on this transport or device.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// An argument was rejected before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn fence_name(reason: u32) -> String {
    vgpu_abi::ring::FenceReason::from_raw(reason)
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The completion status, when this is a command failure with a known status.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Command { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            what: format!("{} (after {:?})", what.into(), after),
        }
    }
}
