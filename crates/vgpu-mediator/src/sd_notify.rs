//! The systemd readiness protocol (`sd_notify`): state lines such as `READY=1` sent as one
//! datagram to the unix socket named by `$NOTIFY_SOCKET`.
//!
//! systemd sets `$NOTIFY_SOCKET` for a `Type=notify` service; anywhere else it is unset and
//! every call here does nothing. The protocol is a single `sendto` (see `sd_notify(3)`), too
//! small to be worth a dependency: a path, or an abstract address when the value starts with
//! `@`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` holds something that is no socket address.
    #[error("${NOTIFY_SOCKET_ENV}={0:?} is neither an absolute path nor an abstract name (@…)")]
    BadAddress(String),
    /// The datagram could not be sent.
    #[error("sending {state:?} to ${NOTIFY_SOCKET_ENV} {addr:?}: {source}")]
    Send {
        /// The state lines.
        state: String,
        /// `$NOTIFY_SOCKET`.
        addr: String,
        /// Cause.
        source: io::Error,
    },
}

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket name (without the leading NUL byte).
    Abstract(Vec<u8>),
}

impl Address {
    fn parse(value: &str) -> Result<Self, NotifyError> {
        if let Some(name) = value.strip_prefix('@') {
            Ok(Self::Abstract(name.as_bytes().to_vec()))
        } else if value.starts_with('/') {
            Ok(Self::Path(PathBuf::from(value)))
        } else {
            Err(NotifyError::BadAddress(value.to_string()))
        }
    }
}

/// Sends `state` (newline-separated `KEY=value` lines, e.g. `"READY=1\nSTATUS=serving"`) to
/// the service manager. Returns `Ok(false)` when `$NOTIFY_SOCKET` is unset (not run by
/// systemd), `Ok(true)` when the datagram was sent.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(value) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return Ok(false);
    };
    let value = value.to_string_lossy().into_owned();
    if value.is_empty() {
        return Ok(false);
    }
    send(&Address::parse(&value)?, state).map_err(|source| NotifyError::Send {
        state: state.to_string(),
        addr: value,
        source,
    })?;
    Ok(true)
}

fn send(addr: &Address, state: &str) -> io::Result<()> {
    // An unbound datagram socket: systemd identifies the sender by SO_PEERCRED-like ancillary
    // credentials it enables on its side, not by our address.
    let sock = UnixDatagram::unbound()?;
    let sent = match addr {
        Address::Path(p) => sock.send_to(state.as_bytes(), p)?,
        Address::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &a)?
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

/// `READY=1` with a `STATUS=` line (shown by `systemctl status`).
pub fn ready(status: &str) -> Result<bool, NotifyError> {
    notify(&format!("READY=1\nSTATUS={status}"))
}

/// `RELOADING=1` at the start of a reload. `MONOTONIC_USEC` is the time of the request,
/// which systemd 253+ requires with `RELOADING=1` (older versions ignore it).
pub fn reloading() -> Result<bool, NotifyError> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
}

/// `STOPPING=1` when shutdown begins.
pub fn stopping() -> Result<bool, NotifyError> {
    notify("STOPPING=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Address::parse("/run/systemd/notify").unwrap(),
            Address::Path("/run/systemd/notify".into())
        );
        assert_eq!(
            Address::parse("@/org/freedesktop/systemd1/notify/1").unwrap(),
            Address::Abstract(b"/org/freedesktop/systemd1/notify/1".to_vec())
        );
        assert!(matches!(
            Address::parse("relative"),
            Err(NotifyError::BadAddress(_))
        ));
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(&Address::Path(path), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("vgpu-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&Address::Abstract(name.into_bytes()), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
