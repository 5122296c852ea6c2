//! The admin socket: `vgpuctl` sends one request line, gets one JSON line back (what a line
//! may say is [`protocol`]'s). It is a management interface only; no guest data ever crosses
//! it. Read-only and changing requests are served to the same peers (below).
//!
//! Limits (see `docs/operations.md`, "Admin socket"):
//! * only root, vgpud's own uid and members of `[mediator] admin_group` are served (checked
//!   with `SO_PEERCRED` before anything is read); others get `{"error": "permission denied: …"}`;
//! * a request line is at most [`MAX_REQUEST_BYTES`] bytes with its newline and must arrive
//!   within [`REQUEST_TIMEOUT`] of the connection being accepted (the whole line, not each
//!   read); the reply must be taken within [`REPLY_TIMEOUT`];
//! * each connection is served on its own thread, at most [`MAX_CONNECTIONS`] at once; beyond,
//!   a new connection gets an immediate error reply and is closed;
//! * refusals and bad requests are logged at most once a second per peer uid and kind, with
//!   the count of those not logged.

mod protocol;

pub use protocol::{Control, ControlError, Request, MAX_WEIGHT, PROTOCOL_VERSION};

use crate::access::{self, AccessError, PeerCred, SocketPerms};
use crate::config::MediatorConfig;
use crate::deadline_io::{self, Request as Got};
use crate::stats::StatsRegistry;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Longest request line, newline included; a longer one is answered with an error and the
/// connection closed, and no more than this is ever buffered.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Time from accepting a connection to its complete request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for the client to take the whole reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Errors starting the admin socket.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another server answers on the path.
    #[error("admin socket {0} is in use by another server")]
    InUse(PathBuf),
    /// Resolving the owner/group keys, or binding with them, failed.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The accept thread could not be started.
    #[error("starting the admin thread: {0}")]
    Thread(io::Error),
}

/// Answers one request line (without its newline; surrounding white space is ignored) with
/// nothing allowed to change: see [`handle_request_with`].
pub fn handle_request(line: &[u8], stats: &StatsRegistry) -> Value {
    handle_request_with(line, stats, None)
}

/// Answers one request line (see [`protocol`] for what it may say); changing requests go to
/// `control`. Pure apart from `control`, and total: any bytes give a JSON object.
pub fn handle_request_with(
    line: &[u8],
    stats: &StatsRegistry,
    control: Option<&dyn Control>,
) -> Value {
    if line.len() > MAX_REQUEST_BYTES {
        return too_long();
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return json!({"error": "request is not UTF-8; try \"stats\" or \"ping\""});
    };
    match protocol::parse(text) {
        Ok((version, req)) => protocol::answer(version, req, stats, control),
        Err((version, e)) => protocol::error_reply(version, e.code(), &e.to_string()),
    }
}

fn too_long() -> Value {
    json!({"error": ReadError::TooLong.to_string()})
}

/// Binds the admin socket (replacing a stale one) with `[mediator] admin_socket_owner`,
/// `admin_socket_group`, `admin_socket_mode` (default `0600`), and serves it: an accept thread
/// that checks each peer against root, vgpud's uid and `admin_group`, and a thread per
/// admitted connection. Changing requests (`reset`, `set`) are carried out through `control`.
pub fn spawn(
    path: &Path,
    cfg: &MediatorConfig,
    stats: Arc<StatsRegistry>,
    control: Arc<dyn Control>,
) -> Result<(), AdminError> {
    let perms = SocketPerms::for_admin(cfg)?;
    let admin_gid = cfg
        .admin_group
        .as_ref()
        .map(|g| access::resolve_group(g, "mediator.admin_group"))
        .transpose()?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(AccessError::NotASocket(path.to_owned()).into());
        }
        if UnixStream::connect(path).is_ok() {
            return Err(AdminError::InUse(path.to_owned()));
        }
        // A stale socket of a server that died: bind_listener replaces it.
    }
    if let Some(g) = admin_gid {
        let group_can = perms.gid == Some(g) && perms.mode & 0o020 != 0;
        if !group_can && perms.mode & 0o002 == 0 {
            warn!(
                "admin_group {g} is set but the admin socket's group/mode (admin_socket_group, \
                 admin_socket_mode = {:04o}) do not let its members connect; set \
                 admin_socket_group to the same group and admin_socket_mode = \"0660\"",
                perms.mode
            );
        }
    }
    let listener = access::bind_listener(path, &perms)?;
    info!(
        socket = %path.display(),
        mode = format!("{:04o}", perms.mode),
        uid = ?perms.uid,
        gid = ?perms.gid,
        admin_group = ?admin_gid,
        "admin socket"
    );
    let server = Arc::new(Server {
        stats,
        control,
        admin_gid,
        active: AtomicUsize::new(0),
        log: LogLimiter::default(),
    });
    std::thread::Builder::new()
        .name("vgpud-admin".into())
        .spawn(move || server.accept_loop(listener))
        .map_err(AdminError::Thread)?;
    Ok(())
}

struct Server {
    stats: Arc<StatsRegistry>,
    control: Arc<dyn Control>,
    admin_gid: Option<u32>,
    active: AtomicUsize,
    log: LogLimiter,
}

/// What a rate-limited log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Refused,
    Busy,
    BadRequest,
    Accept,
}

/// Allows one log line per second per (kind, uid) and counts the ones it suppresses. Holds at
/// most [`LogLimiter::MAX_KEYS`] keys (then forgets the idle ones), so no peer can grow it.
#[derive(Default)]
struct LogLimiter {
    last: Mutex<HashMap<(Kind, u32), (Instant, u64)>>,
}

impl LogLimiter {
    const PERIOD: Duration = Duration::from_secs(1);
    const MAX_KEYS: usize = 1024;

    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&self, kind: Kind, uid: u32) -> Option<u64> {
        self.allow_at(kind, uid, Instant::now())
    }

    fn allow_at(&self, kind: Kind, uid: u32, now: Instant) -> Option<u64> {
        let mut m = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= Self::MAX_KEYS && !m.contains_key(&(kind, uid)) {
            m.retain(|_, (t, n)| now.duration_since(*t) < Self::PERIOD || *n > 0);
            if m.len() >= Self::MAX_KEYS {
                // Still full: every new uid shares one key (still one line a second).
                return Self::tick(&mut m, (kind, u32::MAX), now);
            }
        }
        Self::tick(&mut m, (kind, uid), now)
    }

    fn tick(
        m: &mut HashMap<(Kind, u32), (Instant, u64)>,
        key: (Kind, u32),
        now: Instant,
    ) -> Option<u64> {
        match m.get_mut(&key) {
            Some((t, n)) if now.duration_since(*t) < Self::PERIOD => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let s = *n;
                (*t, *n) = (now, 0);
                Some(s)
            }
            None => {
                m.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Holds one of the [`MAX_CONNECTIONS`] slots until dropped.
struct Slot(Arc<Server>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    fn accept_loop(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            let c = match conn {
                Ok(c) => c,
                Err(e) => {
                    if let Some(n) = self.log.allow(Kind::Accept, u32::MAX) {
                        warn!(suppressed = n, "admin accept: {e}");
                    }
                    // Out of descriptors (a flood): back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            self.admit(c);
        }
    }

    /// Checks the peer, takes a slot and starts the connection's thread; never blocks (the
    /// accept thread must keep up with a flood).
    fn admit(self: &Arc<Self>, c: UnixStream) {
        let peer = match access::peer_allowed(&c, self.admin_gid) {
            Ok(p) => p,
            Err(e) => {
                let uid = match &e {
                    AccessError::Denied { peer, .. } => peer.uid,
                    _ => u32::MAX,
                };
                if let Some(n) = self.log.allow(Kind::Refused, uid) {
                    warn!(uid, suppressed = n, "admin socket: refused: {e}");
                }
                let msg = match e {
                    AccessError::Denied { .. } => e.to_string(),
                    e => format!("permission denied: {e}"),
                };
                reply_now(&c, &json!({ "error": msg }));
                return;
            }
        };
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONNECTIONS).then_some(n + 1)
            });
        if taken.is_err() {
            if let Some(n) = self.log.allow(Kind::Busy, peer.uid) {
                warn!(
                    uid = peer.uid,
                    suppressed = n,
                    "admin socket: {MAX_CONNECTIONS} connections open, refusing more"
                );
            }
            reply_now(
                &c,
                &json!({"error": format!(
                    "busy: {MAX_CONNECTIONS} admin connections are open; retry later"
                )}),
            );
            return;
        }
        let slot = Slot(self.clone());
        let spawned = std::thread::Builder::new()
            .name("vgpud-admin-conn".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let slot = slot;
                slot.0.serve(c, peer);
            });
        // On failure the closure (with the connection and the slot) is dropped: closed, freed.
        if let Err(e) = spawned {
            if let Some(n) = self.log.allow(Kind::Accept, u32::MAX) {
                warn!(
                    suppressed = n,
                    "admin socket: starting a connection thread: {e}"
                );
            }
        }
    }

    fn serve(&self, c: UnixStream, peer: PeerCred) {
        let reply = match read_request(&c, Instant::now() + REQUEST_TIMEOUT) {
            Ok(line) => {
                let reply = handle_request_with(&line, &self.stats, Some(&*self.control));
                // Changes are logged with who asked (an audit trail); reads are not.
                let req = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|t| protocol::parse(t).ok());
                if let Some((_, req)) = req.filter(|(_, r)| r.changes()) {
                    let outcome = reply.get("error").and_then(Value::as_str).unwrap_or("done");
                    info!(uid = peer.uid, pid = peer.pid, request = ?req, outcome, "admin request");
                }
                reply
            }
            Err(ReadError::Io(e)) => {
                debug!(uid = peer.uid, "admin connection: {e}");
                return;
            }
            Err(e) => {
                if let Some(n) = self.log.allow(Kind::BadRequest, peer.uid) {
                    warn!(
                        uid = peer.uid,
                        pid = peer.pid,
                        suppressed = n,
                        "admin socket: {e}"
                    );
                }
                json!({"error": e.to_string()})
            }
        };
        if let Err(e) = write_reply(&c, &reply, Instant::now() + REPLY_TIMEOUT) {
            debug!(uid = peer.uid, "admin reply: {e}");
        }
    }
}

/// Sends a short reply without blocking (a fresh connection's buffer always has room for it;
/// if not, the peer simply gets no reply), then the connection is closed by the caller.
fn reply_now(c: &UnixStream, v: &Value) {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    let _ = rustix::net::send(
        c,
        &out,
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    );
}

/// Why no request line was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// More than [`MAX_REQUEST_BYTES`] without a newline.
    #[error("request too long: more than {MAX_REQUEST_BYTES} bytes without a newline")]
    TooLong,
    /// The deadline passed first.
    #[error("request not complete within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The connection failed.
    #[error("{0}")]
    Io(io::Error),
}

/// Reads one request line (without its newline; at EOF, what came) before `deadline`, never
/// buffering more than [`MAX_REQUEST_BYTES`]. Bytes after the newline are ignored.
pub fn read_request(c: &UnixStream, deadline: Instant) -> Result<Vec<u8>, ReadError> {
    let newline =
        |b: &[u8], from: usize| b[from..].iter().position(|&x| x == b'\n').map(|i| from + i);
    match deadline_io::read_request(&mut &*c, MAX_REQUEST_BYTES, deadline, newline) {
        Ok(Got::Complete(line) | Got::Eof(line)) => Ok(line),
        Err(deadline_io::ReadError::TooLong) => Err(ReadError::TooLong),
        Err(deadline_io::ReadError::Timeout) => Err(ReadError::Timeout),
        Err(deadline_io::ReadError::Io(e)) => Err(ReadError::Io(e)),
    }
}

/// Writes `v` and a newline before `deadline` (a client that does not read cannot hold the
/// thread longer).
fn write_reply(c: &UnixStream, v: &Value, deadline: Instant) -> io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(io::Error::other)?;
    out.push(b'\n');
    deadline_io::write_all(&mut &*c, &out, deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use proptest::prelude::*;
    use std::io::Write;

    fn registry() -> StatsRegistry {
        let cfg = Config::from_toml(
            "[mediator]\nbackend = \"cpu\"\n[[vm]]\nname = \"a\"\nsocket = \"/tmp/a.sock\"\nvm_id = 1\n",
        )
        .unwrap();
        StatsRegistry::for_config(&cfg)
    }

    #[test]
    fn protocol() {
        let s = registry();
        assert_eq!(handle_request(b"stats", &s), s.to_json());
        assert_eq!(handle_request(b"  stats\r", &s), s.to_json());
        assert_eq!(handle_request(b"ping", &s), json!({"ok": true}));
        let e = handle_request(b"reboot", &s);
        assert!(e["error"]
            .as_str()
            .unwrap()
            .contains("unknown request \"reboot\""));
        let e = handle_request(b"\xff\xfe", &s);
        assert!(e["error"].as_str().unwrap().contains("not UTF-8"));
        let long = "x".repeat(1000);
        let e = handle_request(long.as_bytes(), &s)["error"].to_string();
        assert!(e.len() < 200, "echo is bounded: {e}");
        let e = handle_request(&vec![b'x'; MAX_REQUEST_BYTES + 1], &s);
        assert!(e["error"].as_str().unwrap().contains("too long"));
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_bounded_json_object(line in proptest::collection::vec(any::<u8>(), 0..600)) {
            let s = registry();
            let v = handle_request(&line, &s);
            prop_assert!(v.is_object());
            let is_stats = std::str::from_utf8(&line).map(|t| t.trim() == "stats").unwrap_or(false);
            if !is_stats {
                prop_assert!(v.to_string().len() < 512);
            }
        }
    }

    #[test]
    fn reads_lines_within_the_cap() {
        let far = || Instant::now() + Duration::from_secs(5);
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"stats\nignored").unwrap();
        assert_eq!(read_request(&a, far()).unwrap(), b"stats");

        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"ping").unwrap();
        drop(b);
        assert_eq!(
            read_request(&a, far()).unwrap(),
            b"ping",
            "EOF ends the line"
        );

        let (a, mut b) = UnixStream::pair().unwrap();
        let mut max = vec![b'y'; MAX_REQUEST_BYTES - 1];
        max.push(b'\n');
        b.write_all(&max).unwrap();
        assert_eq!(
            read_request(&a, far()).unwrap().len(),
            MAX_REQUEST_BYTES - 1
        );

        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&vec![b'z'; MAX_REQUEST_BYTES + 10]).unwrap();
        assert!(matches!(read_request(&a, far()), Err(ReadError::TooLong)));
    }

    #[test]
    fn the_deadline_is_per_request_not_per_read() {
        let (a, b) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..20 {
                if (&b).write_all(b"s").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let t0 = Instant::now();
        let r = read_request(&a, Instant::now() + Duration::from_millis(300));
        let took = t0.elapsed();
        assert!(matches!(r, Err(ReadError::Timeout)), "{r:?}");
        assert!(took < Duration::from_millis(600), "{took:?}");
        drop(a);
        trickle.join().unwrap();
    }

    #[test]
    fn log_limiter_one_line_a_second_per_uid() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.allow_at(Kind::Refused, 7, t0), Some(0));
        for i in 1..100 {
            assert_eq!(
                l.allow_at(Kind::Refused, 7, t0 + Duration::from_millis(i)),
                None
            );
        }
        assert_eq!(l.allow_at(Kind::Refused, 8, t0), Some(0), "per uid");
        assert_eq!(l.allow_at(Kind::Busy, 7, t0), Some(0), "per kind");
        assert_eq!(
            l.allow_at(Kind::Refused, 7, t0 + Duration::from_secs(1)),
            Some(99)
        );
        // Many uids: the map stays bounded and they still get at most a line a second.
        let mut lines = 0;
        for uid in 0..10_000 {
            lines += l.allow_at(Kind::Refused, 1000 + uid, t0).is_some() as usize;
        }
        assert!(l.last.lock().unwrap().len() <= LogLimiter::MAX_KEYS + 1);
        assert!(lines <= LogLimiter::MAX_KEYS + 1, "{lines}");
    }
}
