//! The ivshmem server → client messages: little-endian `i64`s, each in its own `sendmsg`,
//! optionally carrying one file descriptor by `SCM_RIGHTS`.

use rustix::fd::BorrowedFd;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use vgpu_abi::ivshmem::{CLIENT_PEER_ID, MEDIATOR_PEER_ID, PROTOCOL_VERSION};

/// Sends one message.
pub fn send_msg(
    sock: BorrowedFd<'_>,
    value: i64,
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let bytes = value.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(std::io::Error::other("control buffer too small"));
        }
    }
    let n = sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)?;
    if n != bytes.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "short ivshmem message",
        ));
    }
    Ok(())
}

/// Sends the whole set-up to a newly connected client (QEMU or a process): protocol version,
/// its own id, the shared memory, vgpud's doorbell eventfd (how the client rings us: peer 1,
/// vector 0) and the client's own interrupt eventfd (vector 0).
pub fn send_setup(
    sock: BorrowedFd<'_>,
    shm: BorrowedFd<'_>,
    mediator_doorbell: BorrowedFd<'_>,
    client_irq: BorrowedFd<'_>,
) -> std::io::Result<()> {
    send_msg(sock, PROTOCOL_VERSION, None)?;
    send_msg(sock, CLIENT_PEER_ID as i64, None)?;
    send_msg(sock, -1, Some(shm))?;
    send_msg(sock, MEDIATOR_PEER_ID as i64, Some(mediator_doorbell))?;
    send_msg(sock, CLIENT_PEER_ID as i64, Some(client_irq))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::{AsFd, OwnedFd};
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::IoSliceMut;
    use std::os::unix::net::UnixStream;

    /// One server message as a client receives it: the value and the fd it carried.
    fn recv(sock: &UnixStream) -> (i64, Option<OwnedFd>) {
        let mut buf = [0u8; 8];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let r = recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        assert_eq!(r.bytes, 8, "one i64 per message");
        let mut fds = Vec::new();
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        assert!(fds.len() <= 1, "at most one fd per message");
        (i64::from_le_bytes(buf), fds.pop())
    }

    /// A memfd of `size` bytes: fds told apart by their size.
    fn memfd(size: u64) -> OwnedFd {
        let fd = memfd_create("ivshmem-test", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, size).unwrap();
        fd
    }

    #[test]
    fn the_setup_is_five_messages_with_each_fd_in_its_place() {
        let (server, client) = UnixStream::pair().unwrap();
        let (shm, doorbell, irq) = (memfd(4096), memfd(8192), memfd(12288));
        send_setup(server.as_fd(), shm.as_fd(), doorbell.as_fd(), irq.as_fd()).unwrap();
        let got: Vec<(i64, Option<u64>)> = (0..5)
            .map(|_| recv(&client))
            .map(|(v, fd)| (v, fd.map(|f| rustix::fs::fstat(&f).unwrap().st_size as u64)))
            .collect();
        assert_eq!(
            got,
            [
                (PROTOCOL_VERSION, None),
                (CLIENT_PEER_ID as i64, None),
                (-1, Some(4096)),
                (MEDIATOR_PEER_ID as i64, Some(8192)),
                (CLIENT_PEER_ID as i64, Some(12288)),
            ]
        );
        client.set_nonblocking(true).unwrap();
        let mut b = [0u8; 8];
        assert!(
            std::io::Read::read(&mut &client, &mut b).is_err(),
            "nothing after the set-up"
        );
    }

    /// (Rust ignores SIGPIPE in its binaries, so this does not show `NOSIGNAL` at work; vgpud
    /// sends with it so that a library user that keeps SIGPIPE is not killed either.)
    #[test]
    fn a_client_that_left_is_an_error() {
        let (server, client) = UnixStream::pair().unwrap();
        drop(client);
        let e = send_msg(server.as_fd(), 1, None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
