//! Reading a request from, and writing a reply to, a client vgpud does not trust, with a cap on
//! the bytes held and one deadline for the whole exchange (not per read or write, so a client
//! trickling a byte at a time cannot hold a thread longer). The admin socket and the metrics
//! endpoint both serve their clients this way.

use std::io;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A connection whose reads and writes can be bounded in time.
pub trait Conn {
    /// Bounds the next reads.
    fn set_read_timeout(&self, d: Duration) -> io::Result<()>;
    /// Bounds the next writes.
    fn set_write_timeout(&self, d: Duration) -> io::Result<()>;
    /// One read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// One write.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl Conn for &UnixStream {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        UnixStream::set_read_timeout(self, Some(d))
    }
    fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        UnixStream::set_write_timeout(self, Some(d))
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(self, buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(self, buf)
    }
}

/// Why no request was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cap was reached before the request's end.
    #[error("request longer than the cap")]
    TooLong,
    /// The deadline passed first.
    #[error("request not complete in time")]
    Timeout,
    /// The connection failed.
    #[error("{0}")]
    Io(io::Error),
}

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `end` found the request's end: the bytes up to it (what follows is dropped).
    Complete(Vec<u8>),
    /// The client closed first: what came.
    Eof(Vec<u8>),
}

/// Reads before `deadline`, holding at most `max` bytes, until `end(bytes, from)` — asked after
/// each read with every byte so far and where this read's bytes start — returns the length
/// of the request.
pub fn read_request(
    c: &mut impl Conn,
    max: usize,
    deadline: Instant,
    end: impl Fn(&[u8], usize) -> Option<usize>,
) -> Result<Request, ReadError> {
    let mut buf = vec![0u8; max];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        c.set_read_timeout(left).map_err(ReadError::Io)?;
        let n = match c.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout)
            }
            Err(e) => return Err(ReadError::Io(e)),
        };
        if n == 0 {
            buf.truncate(len);
            return Ok(Request::Eof(buf));
        }
        let from = len;
        len += n;
        if let Some(at) = end(&buf[..len], from) {
            buf.truncate(at);
            return Ok(Request::Complete(buf));
        }
        if len == max {
            return Err(ReadError::TooLong);
        }
    }
}

/// Writes `out` before `deadline` (a client that does not read cannot hold the thread longer).
pub fn write_all(c: &mut impl Conn, out: &[u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "reply not taken in time",
            ));
        }
        c.set_write_timeout(left)?;
        match c.write(&out[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
