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
