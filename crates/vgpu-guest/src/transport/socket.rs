//! The socket transport: a process on the host attaches to a VM's vgpud socket as an
//! ivshmem client, exactly as QEMU does, and gets the same shared memory and doorbells.
//!
//! Server → client messages are little-endian `i64`s, each in its own `sendmsg`, optionally
//! with one fd by `SCM_RIGHTS`: protocol version `0`; our peer id; `-1` with the shared
//! memory; for every other peer its id once per vector with that peer's doorbell eventfd;
//! our own id once per vector with our interrupt eventfd. A peer id without an fd means
//! that peer left. The client never sends anything; closing the socket disconnects.

use std::collections::BTreeMap;
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use memmap2::MmapOptions;
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use vgpu_abi::ivshmem::{MEDIATOR_PEER_ID, PROTOCOL_VERSION, VECTORS};
use vgpu_abi::{RegisterPage, ShmView};

use super::irq::IrqEventfd;
use super::{SharedMapping, Transport};
use crate::Error;

/// How long to wait for each set-up message before declaring the server dead.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One server message: a value and at most one fd.
type Msg = (i64, Option<OwnedFd>);

/// Receives exactly one 8-byte message and the fd that came with it.
fn recv_msg(sock: &UnixStream) -> Result<Msg, Error> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    while got < buf.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            sock,
            &mut [std::io::IoSliceMut::new(&mut buf[got..])],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        );
        let m = match r {
            Ok(m) => m,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                return Err(Error::timeout(
                    "a set-up message from the ivshmem server",
                    SETUP_TIMEOUT,
                ))
            }
            Err(e) => return Err(Error::io("receiving from the ivshmem server", e)),
        };
        for msg in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = msg {
                fds.extend(it);
            }
        }
        if m.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::Protocol(
                "server sent more file descriptors than one message may carry".into(),
            ));
        }
        if m.bytes == 0 {
            return Err(Error::Protocol(format!(
                "server closed the connection during set-up (after {got} bytes of a message)"
            )));
        }
        got += m.bytes;
    }
    if fds.len() > 1 {
        return Err(Error::Protocol(format!(
            "a message carried {} file descriptors, at most one is allowed",
            fds.len()
        )));
    }
    Ok((i64::from_le_bytes(buf), fds.pop()))
}

/// What the set-up messages gave us (public for tools and tests that speak the protocol
/// themselves, e.g. to behave as a hostile client would).
#[derive(Debug)]
pub struct Setup {
    /// Our peer id.
    pub own_id: u16,
    /// The shared-memory fd.
    pub shm: OwnedFd,
    /// Doorbell eventfds of the other peers, one per vector.
    pub peers: BTreeMap<u16, Vec<OwnedFd>>,
    /// Our own interrupt eventfds, one per vector.
    pub own: Vec<OwnedFd>,
}

fn peer_id(v: i64) -> Result<u16, Error> {
    u16::try_from(v).map_err(|_| Error::Protocol(format!("peer id {v} out of range")))
}

/// Reads the set-up sequence until we have the shared memory, the mediator's doorbell and
/// our own interrupt eventfd.
pub fn read_setup(sock: &UnixStream) -> Result<Setup, Error> {
    let (version, fd) = recv_msg(sock)?;
    if version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "unsupported ivshmem protocol version {version} (expected {PROTOCOL_VERSION})"
        )));
    }
    if fd.is_some() {
        return Err(Error::Protocol("protocol version came with an fd".into()));
    }
    let (own, fd) = recv_msg(sock)?;
    let own_id = peer_id(own)?;
    if fd.is_some() {
        return Err(Error::Protocol("our peer id came with an fd".into()));
    }
    if own_id == MEDIATOR_PEER_ID {
        return Err(Error::Protocol(format!(
            "server assigned us peer id {own_id}, which is the mediator's"
        )));
    }
    let mut shm: Option<OwnedFd> = None;
    let mut peers: BTreeMap<u16, Vec<OwnedFd>> = BTreeMap::new();
    let mut own_fds: Vec<OwnedFd> = Vec::new();
    while own_fds.len() < VECTORS as usize {
        match recv_msg(sock)? {
            (-1, Some(fd)) => {
                if shm.replace(fd).is_some() {
                    return Err(Error::Protocol("shared memory sent twice".into()));
                }
            }
            (-1, None) => {
                return Err(Error::Protocol(
                    "shared-memory message without an fd".into(),
                ))
            }
            (v, _) if v < -1 => return Err(Error::Protocol(format!("unexpected value {v}"))),
            (v, Some(fd)) => {
                if shm.is_none() {
                    return Err(Error::Protocol(format!(
                        "eventfd for peer {v} before the shared memory"
                    )));
                }
                let id = peer_id(v)?;
                if id == own_id {
                    own_fds.push(fd);
                } else {
                    peers.entry(id).or_default().push(fd);
                }
            }
            (v, None) => {
                // That peer left.
                let id = peer_id(v)?;
                peers.remove(&id);
            }
        }
    }
    let shm = shm.ok_or_else(|| Error::Protocol("no shared memory received".into()))?;
    if !matches!(peers.get(&MEDIATOR_PEER_ID), Some(v) if !v.is_empty()) {
        return Err(Error::Protocol(format!(
            "the mediator (peer {MEDIATOR_PEER_ID}) is not connected: the server sent no doorbell eventfd for it"
        )));
    }
    Ok(Setup {
        own_id,
        shm,
        peers,
        own: own_fds,
    })
}

/// A vGPU reached as an ivshmem client on a vgpud socket.
#[derive(Debug)]
pub struct SocketTransport {
    path: PathBuf,
    /// Kept open for the transport's lifetime: closing it disconnects from vgpud (and vgpud
    /// closing it means vgpud is gone, [`Transport::peer_alive`]).
    sock: UnixStream,
    /// The shared memory's fd, to map it again ([`Transport::map_again_at`]).
    shm_file: File,
    shm: SharedMapping,
    own_id: u16,
    peers: BTreeMap<u16, Vec<OwnedFd>>,
    /// Our vector 0: vgpud signals it when it posts completions we asked to be told of.
    irq: IrqEventfd,
}

impl SocketTransport {
    /// Connects to an ivshmem server socket (vgpud's socket for one VM).
    pub fn connect(path: &Path) -> Result<Self, Error> {
        let sock = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connecting to vgpud socket {}", path.display()), e))?;
        Self::from_stream(sock, path)
    }

    /// Runs the client side of the set-up on an already connected stream.
    pub fn from_stream(sock: UnixStream, path: &Path) -> Result<Self, Error> {
        sock.set_read_timeout(Some(SETUP_TIMEOUT))
            .map_err(|e| Error::io("setting the socket receive timeout", e))?;
        let mut s = read_setup(&sock)?;
        let file = File::from(s.shm);
        let len = file
            .metadata()
            .map_err(|e| Error::io("fstat of the shared-memory fd", e))?
            .len();
        let len = usize::try_from(len)
            .map_err(|_| Error::Protocol(format!("shared memory of {len} bytes")))?;
        if len < core::mem::size_of::<RegisterPage>() {
            return Err(Error::Protocol(format!(
                "shared memory of {len} bytes is too small for a vGPU"
            )));
        }
        let shm = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| Error::io("mapping the shared memory", e))?;
        let irq = s.own.swap_remove(0);
        let t = Self {
            path: path.to_path_buf(),
            sock,
            shm_file: file,
            shm: SharedMapping::new(shm, len),
            own_id: s.own_id,
            peers: s.peers,
            irq: IrqEventfd::new(irq),
        };
        t.shm.check_compat()?;
        Ok(t)
    }

    /// Our peer id on the socket.
    pub fn own_id(&self) -> u16 {
        self.own_id
    }
}

impl Transport for SocketTransport {
    fn shm(&self) -> ShmView {
        self.shm.view()
    }

    fn keep_mapped(&self) {
        self.shm.keep_mapped();
    }

    fn ring(&self, peer: u16, vector: u16) {
        if let Some(fd) = self.peers.get(&peer).and_then(|v| v.get(vector as usize)) {
            // An eventfd write only fails when the counter would overflow, in which case the
            // peer has a wake-up pending anyway.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    fn wait_irq(&self, timeout: Duration) -> Result<bool, Error> {
        self.wait_irq_since(self.irq_epoch(), timeout)
    }

    fn irq_epoch(&self) -> u64 {
        self.irq.epoch()
    }

    fn wait_irq_since(&self, epoch: u64, timeout: Duration) -> Result<bool, Error> {
        self.irq.wait_since(epoch, timeout)
    }

    fn wait_kind(&self) -> Option<&'static str> {
        Some("eventfd")
    }

    fn describe(&self) -> String {
        format!("socket {}", self.path.display())
    }

    fn peer_alive(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.sock, PollFlags::RDHUP)];
        // Zero timeout: only asks. vgpud never writes on the socket after the set-up, so
        // RDHUP/HUP (or an error) can only mean it closed its end.
        match poll(
            &mut fds,
            Some(&Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        ) {
            Ok(0) => true,
            Ok(_) => !fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => true,
        }
    }

    fn map_again_at(&self, addr: usize) -> Option<ShmView> {
        use std::os::fd::AsFd;
        super::map_fixed(self.shm_file.as_fd(), self.shm.view().len(), addr)
    }
}
