//! The Prometheus metrics endpoint (`[mediator] metrics_listen`): `GET /metrics` over plain
//! HTTP/1.x on a TCP address or a unix socket, answered with [`collector`]'s exposition of
//! vgpud's counters. A read-only view of accounting; no guest data ever crosses it.
//!
//! The server is written out here rather than taken from a crate: it answers one fixed
//! resource, one request per connection, and must have exactly the admin socket's limits
//! (`admin.rs`) — a cap on the request, one deadline for the whole request, a cap on
//! connection threads — with the same code shape, so both front doors can be read and tested
//! alike. A small server crate (`tiny_http`) brings its own threads and its own notion of
//! timeouts, which would have to be checked against these limits and pinned across its
//! updates; the few lines below are cheaper to keep.
//!
//! Limits:
//! * the request head (request line and headers) is at most [`MAX_REQUEST_BYTES`] bytes and
//!   must arrive within [`REQUEST_TIMEOUT`] of the connection being accepted (the whole head,
//!   not each read); beyond the cap the answer is `431`, past the deadline `408`;
//! * the reply must be taken within [`REPLY_TIMEOUT`];
//! * each connection is served on its own thread, at most [`MAX_CONNECTIONS`] at once;
//!   beyond, a new connection gets an immediate `503` and is closed;
//! * one request per connection (`Connection: close`), request bodies are never read;
//! * `GET` and `HEAD` of `/metrics` (a query string is ignored); other paths `404`, other
//!   methods `405`;
//! * the format follows the `Accept` header: OpenMetrics 1.0 text when it names
//!   `application/openmetrics-text` (as Prometheus does), else the Prometheus text format 0.0.4
//!   (what `curl` and `promtool check metrics` get).
//!
//! A unix socket is created like the admin socket's default: vgpud's user only (mode 0600),
//! so a local agent of that user (or root) scrapes it.

pub mod collector;

use crate::access::{self, AccessError, SocketPerms};
use crate::config::{Config, MetricsListen};
use crate::deadline_io::{self, Conn, Request};
use crate::stats::StatsRegistry;
use prometheus_client::registry::Registry;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub use collector::{Format, OPENMETRICS_CONTENT_TYPE};

/// Longest request head (request line and headers, up to the empty line); Prometheus sends
/// ~300 bytes.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Time from accepting a connection to its complete request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for the client to take the whole reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once (a scraper or two, and `curl`).
pub const MAX_CONNECTIONS: usize = 8;
/// The one resource served.
pub const PATH: &str = "/metrics";

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The TCP address could not be bound.
    #[error("binding metrics_listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// Another server answers on the unix socket.
    #[error("metrics socket {0} is in use by another server")]
    InUse(PathBuf),
    /// Creating the unix socket failed.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The accept thread could not be started.
    #[error("starting the metrics thread: {0}")]
    Thread(io::Error),
}

/// Where the endpoint listens once bound (a TCP port of 0 is resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// TCP address.
    Tcp(SocketAddr),
    /// Unix socket path.
    Unix(PathBuf),
}

/// Binds `listen` and serves `GET /metrics` on a thread of its own, from `stats` (built for
/// `cfg`, devices named).
pub fn spawn(
    listen: &MetricsListen,
    cfg: &Config,
    stats: Arc<StatsRegistry>,
) -> Result<Bound, MetricsError> {
    let (listener, bound) = match listen {
        MetricsListen::Tcp(addr) => {
            let l = TcpListener::bind(addr).map_err(|source| MetricsError::Bind {
                addr: *addr,
                source,
            })?;
            let a = l.local_addr().map_err(|source| MetricsError::Bind {
                addr: *addr,
                source,
            })?;
            (Listener::Tcp(l), Bound::Tcp(a))
        }
        MetricsListen::Unix(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() && UnixStream::connect(path).is_ok() {
                    return Err(MetricsError::InUse(path.clone()));
                }
                // A stale socket is replaced, anything else refused, by bind_listener.
            }
            let l = access::bind_listener(path, &SocketPerms::default())?;
            (Listener::Unix(l), Bound::Unix(path.clone()))
        }
    };
    let registry = collector::registry(collector::VgpuCollector::new(cfg, stats));
    let server = Arc::new(Server {
        registry,
        active: AtomicUsize::new(0),
        accept_log: Mutex::new(crate::throttle::Throttle::new(Duration::from_secs(10))),
    });
    std::thread::Builder::new()
        .name("vgpud-metrics".into())
        .spawn(move || server.accept_loop(listener))
        .map_err(MetricsError::Thread)?;
    match &bound {
        Bound::Tcp(a) => info!("metrics: http://{a}{PATH}"),
        Bound::Unix(p) => info!("metrics: unix socket {} (GET {PATH})", p.display()),
    }
    Ok(bound)
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Self::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Self::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }
}

/// One connection, TCP or unix.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn for Stream {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(Some(d)),
            Self::Unix(s) => s.set_read_timeout(Some(d)),
        }
    }

    fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(Some(d)),
            Self::Unix(s) => s.set_write_timeout(Some(d)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
    }
}

struct Server {
    registry: Registry,
    active: AtomicUsize,
    /// Accept failures (a descriptor flood) are logged at most once per interval.
    accept_log: Mutex<crate::throttle::Throttle>,
}

/// Holds one of the [`MAX_CONNECTIONS`] slots until dropped.
struct Slot(Arc<Server>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    fn accept_loop(self: Arc<Self>, listener: Listener) {
        loop {
            match listener.accept() {
                Ok(c) => self.admit(c),
                Err(e) => {
                    if let Some(n) = crate::throttle::hit(&self.accept_log) {
                        warn!(times = n, "metrics accept: {e}");
                    }
                    // Out of descriptors (a flood): back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Takes a slot and starts the connection's thread; never blocks (the accept thread must
    /// keep up with a flood).
    fn admit(self: &Arc<Self>, c: Stream) {
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONNECTIONS).then_some(n + 1)
            });
        if taken.is_err() {
            debug!("metrics: {MAX_CONNECTIONS} connections open, refusing one");
            reply_now(&c, &Reply::error(503, "Service Unavailable", "busy"));
            return;
        }
        let slot = Slot(self.clone());
        let spawned = std::thread::Builder::new()
            .name("vgpud-metrics-conn".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let slot = slot;
                slot.0.serve(c);
            });
        // On failure the closure (with the connection and the slot) is dropped: closed, freed.
        if let Err(e) = spawned {
            if let Some(n) = crate::throttle::hit(&self.accept_log) {
                warn!(times = n, "metrics: starting a connection thread: {e}");
            }
        }
    }

    fn serve(&self, mut c: Stream) {
        let reply = match read_head(&mut c, Instant::now() + REQUEST_TIMEOUT) {
            Ok(head) => route(&head, |f| collector::render(&self.registry, f)),
            Err(HeadError::Io(e)) => {
                debug!("metrics connection: {e}");
                return;
            }
            Err(HeadError::TooLong) => Reply::error(
                431,
                "Request Header Fields Too Large",
                "request head too long",
            ),
            Err(HeadError::Timeout) => Reply::error(408, "Request Timeout", "request too slow"),
        };
        if let Err(e) =
            deadline_io::write_all(&mut c, &reply.to_bytes(), Instant::now() + REPLY_TIMEOUT)
        {
            debug!("metrics reply: {e}");
            return;
        }
        if reply.status != 200 {
            linger(&mut c);
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: &'static str,
    /// Content type.
    pub content_type: &'static str,
    /// Extra header lines (without CRLF).
    pub headers: Vec<String>,
    /// Body.
    pub body: String,
    /// `false` for `HEAD`: the headers say the body's length, the body is not sent.
    pub send_body: bool,
}

impl Reply {
    fn error(status: u16, reason: &'static str, msg: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: format!("{msg}\n"),
            send_body: true,
        }
    }

    /// The response as sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if self.send_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Answers one request head (the bytes up to the empty line): `GET`/`HEAD /metrics` → 200
/// with `render`'s text in the format the `Accept` header asks for; other paths 404, other
/// methods 405, anything that is not an HTTP/1.x request line 400. Pure: the caller reads
/// and writes.
pub fn route(head: &[u8], render: impl FnOnce(Format) -> Result<String, std::fmt::Error>) -> Reply {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Reply::error(400, "Bad Request", "request line is not UTF-8");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reply::error(400, "Bad Request", "expected: METHOD TARGET HTTP/1.x");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Reply::error(400, "Bad Request", "only HTTP/1.0 and HTTP/1.1 are served");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != PATH {
        return Reply::error(404, "Not Found", "not found; the metrics are at /metrics");
    }
    let send_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            let mut r = Reply::error(405, "Method Not Allowed", "only GET and HEAD");
            r.headers.push("Allow: GET, HEAD".into());
            return r;
        }
    };
    let format = Format::from_accept(header(head, "accept"));
    match render(format) {
        Ok(body) => Reply {
            status: 200,
            reason: "OK",
            content_type: format.content_type(),
            headers: Vec::new(),
            body,
            send_body,
        },
        Err(_) => Reply::error(500, "Internal Server Error", "encoding the metrics failed"),
    }
}

/// The value of the first header `name` (lower case) in `head`, if it is UTF-8.
fn header<'h>(head: &'h [u8], name: &str) -> Option<&'h str> {
    std::str::from_utf8(head)
        .ok()?
        .lines()
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
}

/// Why no request head was read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// More than [`MAX_REQUEST_BYTES`] without the empty line.
    #[error("request head longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    /// The deadline passed first.
    #[error("request head not complete within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The connection failed (or closed before a request line came).
    #[error("{0}")]
    Io(io::Error),
}

/// Reads a request head (up to and including the empty line; at EOF, what came if it holds a
/// request line) before `deadline`, never buffering more than [`MAX_REQUEST_BYTES`].
fn read_head(c: &mut Stream, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    // The end may straddle two reads: look again from 3 bytes back.
    let end = |b: &[u8], from: usize| {
        let from = from.saturating_sub(3);
        find_end(&b[from..]).map(|i| from + i)
    };
    match deadline_io::read_request(c, MAX_REQUEST_BYTES, deadline, end) {
        Ok(Request::Complete(head)) => Ok(head),
        Ok(Request::Eof(head)) if head.contains(&b'\n') => Ok(head),
        Ok(Request::Eof(_)) => Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
        Err(deadline_io::ReadError::TooLong) => Err(HeadError::TooLong),
        Err(deadline_io::ReadError::Timeout) => Err(HeadError::Timeout),
        Err(deadline_io::ReadError::Io(e)) => Err(HeadError::Io(e)),
    }
}

/// The length up to and including the head's empty line (`\r\n\r\n`, or bare `\n\n`).
fn find_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Most bytes read and thrown away after an error reply.
const LINGER_BYTES: usize = 64 << 10;
/// Longest wait for them.
const LINGER_TIME: Duration = Duration::from_secs(1);

/// After an error reply to a request that was not read to its end (too long, a body, a bad
/// line): closes the sending side and reads what the client still sends, a bounded amount
/// for a bounded time, before the connection is closed. Closing a TCP socket with unread
/// bytes sends a reset, which may destroy the reply before the client has read it.
fn linger(c: &mut Stream) {
    let _ = match c {
        Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
    };
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || c.set_read_timeout(left).is_err() {
            return;
        }
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends a short reply without blocking (a fresh connection's buffer has room for it; if
/// not, the peer gets no reply), then the connection is closed by the caller.
fn reply_now(c: &Stream, r: &Reply) {
    let _ = rustix::net::send(
        c,
        &r.to_bytes(),
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(f: Format) -> Result<String, std::fmt::Error> {
        Ok(format!("{f:?}"))
    }

    #[test]
    fn routes_get_and_head_of_metrics_only() {
        let r = route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", body);
        assert_eq!((r.status, r.body.as_str()), (200, "Prometheus"));
        assert_eq!(
            r.content_type,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE
        );
        let r = route(
            b"GET /metrics?x HTTP/1.0\r\naccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
            body,
        );
        assert_eq!((r.status, r.body.as_str()), (200, "OpenMetrics"));
        assert_eq!(r.content_type, OPENMETRICS_CONTENT_TYPE);
        let head = route(b"HEAD /metrics HTTP/1.1\r\n\r\n", body);
        let bytes = String::from_utf8(head.to_bytes()).unwrap();
        assert!(bytes.contains("Content-Length: 10\r\n"), "{bytes}");
        assert!(bytes.ends_with("\r\n\r\n"), "no body: {bytes}");

        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n", body).status, 404);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n", body).status, 404);
        let r = route(b"DELETE /metrics HTTP/1.1\r\n\r\n", body);
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, ["Allow: GET, HEAD"]);
        for bad in [
            &b""[..],
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"\xff /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(route(bad, body).status, 400, "{bad:?}");
        }
        let failing = |_| Err(std::fmt::Error);
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n", failing).status, 500);
    }

    #[test]
    fn the_end_of_a_head() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    fn pair() -> (Stream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Stream::Unix(a), b)
    }

    #[test]
    fn reads_a_head_within_the_cap_across_reads() {
        let far = || Instant::now() + Duration::from_secs(5);
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || {
            for part in [
                &b"GET /metrics HTTP/1.1\r"[..],
                b"\n",
                b"Host: x\r\n\r",
                b"\n",
            ] {
                b.write_all(part).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            b
        });
        let head = read_head(&mut a, far()).unwrap();
        assert!(head.ends_with(b"Host: x\r\n\r\n"), "{head:?}");
        drop(t.join().unwrap());

        let (mut a, mut b) = pair();
        b.write_all(&vec![b'x'; MAX_REQUEST_BYTES + 1]).unwrap();
        assert!(matches!(read_head(&mut a, far()), Err(HeadError::TooLong)));

        let (mut a, mut b) = pair();
        b.write_all(b"GET /metrics HTTP/1.0\r\n").unwrap();
        drop(b);
        assert!(
            read_head(&mut a, far()).is_ok(),
            "EOF after a line ends the head"
        );
        let (mut a, b) = pair();
        drop(b);
        assert!(matches!(read_head(&mut a, far()), Err(HeadError::Io(_))));
    }

    #[test]
    fn the_deadline_is_per_head_not_per_read() {
        let (mut a, b) = pair();
        let trickle = std::thread::spawn(move || {
            for _ in 0..20 {
                if (&b).write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let t0 = Instant::now();
        let r = read_head(&mut a, Instant::now() + Duration::from_millis(300));
        assert!(matches!(r, Err(HeadError::Timeout)), "{r:?}");
        assert!(
            t0.elapsed() < Duration::from_millis(600),
            "{:?}",
            t0.elapsed()
        );
        drop(a);
        trickle.join().unwrap();
    }
}
