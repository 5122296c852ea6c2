//! Transport: vgpud as the ivshmem-doorbell server.
//!
//! One UNIX socket per VM (the socket is the VM's identity); for each connection a fresh
//! power-of-two memfd and a pair of eventfds (the VM's doorbell into vgpud, vgpud's interrupt
//! into the VM). The transport thread accepts connections and notices departures; it hands
//! the resources to the executor as [`Event`]s and never touches the rings itself.

mod ivshmem;
pub mod notify;
mod region;
mod server;

pub use ivshmem::{send_msg, send_setup};
pub use region::SharedRegion;
pub use server::{Event, Server, Setup, REATTACH_GRACE};

/// Transport errors.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The directory that should hold a socket does not exist.
    #[error("vm {vm:?}: socket directory {dir} does not exist (create it, or fix `socket` in the config)")]
    MissingDir {
        /// VM name.
        vm: String,
        /// Directory.
        dir: std::path::PathBuf,
    },
    /// Another process is serving the socket.
    #[error("vm {vm:?}: socket {path} is already in use by a running server (another vgpud?)")]
    InUse {
        /// VM name.
        vm: String,
        /// Path.
        path: std::path::PathBuf,
    },
    /// Something that is not a socket sits at the path.
    #[error("vm {vm:?}: {path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// VM name.
        vm: String,
        /// Path.
        path: std::path::PathBuf,
    },
    /// The socket's owner, group or mode could not be applied (the error names the VM's key).
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}
