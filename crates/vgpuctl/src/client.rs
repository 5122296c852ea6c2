//! One request to vgpud's admin socket (protocol version 2: a JSON object per line; see
//! `docs/operations.md`, "Admin socket"), with errors an operator can act on.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The protocol version vgpuctl speaks.
pub const PROTOCOL_VERSION: u64 = 2;
/// How long vgpud may take to answer (a reset waits up to 5 s for its executor).
const REPLY_WITHIN: Duration = Duration::from_secs(10);

/// vgpud's admin socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the socket at `socket` (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Sends `request` (a version 2 request without its `version`, added here) and returns
    /// the reply; an error reply becomes an error naming vgpud's message and code.
    pub fn call(&self, mut request: Value) -> Result<Value> {
        request["version"] = json!(PROTOCOL_VERSION);
        let reply = self.raw(&request.to_string())?;
        if let Some(e) = reply.get("error") {
            let msg = e.as_str().map_or_else(|| e.to_string(), str::to_owned);
            match reply.get("code").and_then(Value::as_str) {
                Some(code) => bail!("vgpud: {msg} ({code})"),
                // A refusal before the request was read (permission, busy) has no code.
                None => bail!("vgpud: {msg}"),
            }
        }
        match reply.get("version").and_then(Value::as_u64) {
            Some(PROTOCOL_VERSION) => Ok(reply),
            other => bail!(
                "vgpud answered in protocol version {other:?}, not {PROTOCOL_VERSION}: is it \
                 older than this vgpuctl? (`vgpuctl stats` and `list` work with any vgpud)"
            ),
        }
    }

    /// `stats`: the payload (VMs, pools, devices).
    pub fn stats(&self) -> Result<Value> {
        let v = self.call(json!({"request": "stats"}))?;
        v.get("stats")
            .cloned()
            .ok_or_else(|| anyhow!("vgpud's stats reply has no \"stats\": {v}"))
    }

    /// Sends one raw line and parses the reply line.
    pub fn raw(&self, line: &str) -> Result<Value> {
        let c = connect(&self.socket)?;
        c.set_read_timeout(Some(REPLY_WITHIN))?;
        c.set_write_timeout(Some(REPLY_WITHIN))?;
        // A refusal (permission, busy) may come, and the connection close, before the request
        // is written: the write then fails, but the reply is there to read.
        let sent = writeln!(&c, "{line}");
        let mut reply = String::new();
        let read = BufReader::new(&c).read_line(&mut reply);
        if reply.is_empty() {
            sent.with_context(|| format!("sending to {}", self.socket.display()))?;
            read.with_context(|| format!("reading vgpud's reply on {}", self.socket.display()))?;
            bail!("vgpud closed {} without answering", self.socket.display());
        }
        serde_json::from_str(&reply)
            .with_context(|| format!("vgpud sent invalid JSON: {:?}", reply.trim_end()))
    }
}

/// Connects, turning the usual failures into what to do about them.
fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).map_err(|e| {
        let s = socket.display();
        match e.kind() {
            io::ErrorKind::NotFound => anyhow!(
                "no admin socket at {s}: is vgpud running, with `admin_socket = \"{s}\"` in \
                 its [mediator] config? (--admin-socket or VGPU_ADMIN_SOCKET names it)"
            ),
            io::ErrorKind::PermissionDenied => anyhow!(
                "permission denied connecting to {s}: run as root or vgpud's user, or as a \
                 member of its admin_group (the socket's group and mode must let you connect)"
            ),
            io::ErrorKind::ConnectionRefused => {
                anyhow!("nothing answers on {s}: vgpud is not running (the socket file is stale)")
            }
            _ => anyhow!(e).context(format!("connecting to vgpud's admin socket {s}")),
        }
    })
}
