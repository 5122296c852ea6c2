//! Tests of the whole library against the in-process fake host ([`crate::testhost`]): the
//! ivshmem set-up protocol over real sockets, sysfs discovery over a fake sysfs tree, and
//! the command paths over real shared memory.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vgpu_abi::cmd::Command;
use vgpu_abi::layout::ring_hdr;
use vgpu_abi::{Builtin, Opcode, RegisterPage, Sqe, Status};

use crate::testhost::{
    memfd_device, register_page, send_msg, write_regs, FakeHost, FakeServer, HostOpts,
};
use crate::transport::socket::read_setup;
use crate::{selftest, Device, Error};

/// 256 KiB region, 8-entry SQ, 16-entry CQ: staging is 192 KiB, copy chunks 96 KiB.
const SMALL: (u64, u32, u32) = (256 << 10, 8, 16);

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    (a, b)
}

fn eventfd() -> std::os::fd::OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
}

// ---- ivshmem set-up protocol ---------------------------------------------------------

#[test]
fn setup_sequence_is_parsed() {
    let (client, server) = pair();
    let shm = memfd_device(SMALL.0, SMALL.1, SMALL.2);
    let (db, irq, other) = (eventfd(), eventfd(), eventfd());
    let s = server.as_fd();
    send_msg(s, 0, None);
    send_msg(s, 0, None);
    send_msg(s, -1, Some(shm.as_fd()));
    send_msg(s, 5, Some(other.as_fd())); // some other peer: tolerated
    send_msg(s, 1, Some(db.as_fd()));
    send_msg(s, 0, Some(irq.as_fd()));
    let setup = read_setup(&client).unwrap();
    assert_eq!(setup.own_id, 0);
    assert_eq!(setup.own.len(), 1);
    assert_eq!(setup.peers[&1].len(), 1);
    assert_eq!(setup.peers[&5].len(), 1);
    // The received shm fd is the same memory: its size and its magic.
    let f = File::from(setup.shm);
    assert_eq!(f.metadata().unwrap().len(), SMALL.0);
    let mut magic = [0u8; 8];
    f.read_exact_at(&mut magic, 0).unwrap();
    assert_eq!(u64::from_le_bytes(magic), vgpu_abi::MAGIC);
    // Ringing the received doorbell fd increments the server's eventfd.
    rustix::io::write(&setup.peers[&1][0], &1u64.to_ne_bytes()).unwrap();
    let mut b = [0u8; 8];
    rustix::io::read(&db, &mut b).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 1);
}

#[test]
fn setup_message_split_across_reads() {
    let (client, mut server) = pair();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        // Version 0 in two pieces.
        server.write_all(&[0, 0, 0, 0]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        server.write_all(&[0, 0, 0, 0]).unwrap();
        // Then a bad version in one piece, to end the test.
        server.write_all(&0i64.to_le_bytes()).unwrap();
        server
    });
    // The split version parses as 0; the id message is next (0 without fd) and then the
    // socket stays quiet: that is the timeout, not a protocol error about the split.
    let r = read_setup(&client);
    let _server = t.join().unwrap();
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
}

#[test]
fn setup_rejects_other_protocol_version() {
    let (client, server) = pair();
    send_msg(server.as_fd(), 1, None);
    let e = read_setup(&client).unwrap_err();
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("version 1")),
        "{e}"
    );
}

#[test]
fn setup_without_mediator_is_an_error() {
    let (client, server) = pair();
    let shm = memfd_device(SMALL.0, SMALL.1, SMALL.2);
    let irq = eventfd();
    let s = server.as_fd();
    send_msg(s, 0, None);
    send_msg(s, 0, None);
    send_msg(s, -1, Some(shm.as_fd()));
    send_msg(s, 0, Some(irq.as_fd()));
    let e = read_setup(&client).unwrap_err();
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("mediator")),
        "{e}"
    );
}

#[test]
fn setup_mediator_that_left_is_an_error() {
    let (client, server) = pair();
    let shm = memfd_device(SMALL.0, SMALL.1, SMALL.2);
    let (db, irq) = (eventfd(), eventfd());
    let s = server.as_fd();
    send_msg(s, 0, None);
    send_msg(s, 0, None);
    send_msg(s, -1, Some(shm.as_fd()));
    send_msg(s, 1, Some(db.as_fd()));
    send_msg(s, 1, None); // peer 1 left
    send_msg(s, 0, Some(irq.as_fd()));
    assert!(matches!(read_setup(&client), Err(Error::Protocol(_))));
}

#[test]
fn setup_eof_and_silence_are_clear_errors() {
    let (client, server) = pair();
    send_msg(server.as_fd(), 0, None);
    drop(server);
    let e = read_setup(&client).unwrap_err();
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("closed")),
        "{e}"
    );

    let (client, _server) = pair();
    let t = Instant::now();
    let e = read_setup(&client).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn setup_eventfd_before_shm_is_an_error() {
    let (client, server) = pair();
    let db = eventfd();
    let s = server.as_fd();
    send_msg(s, 0, None);
    send_msg(s, 0, None);
    send_msg(s, 1, Some(db.as_fd()));
    assert!(matches!(read_setup(&client), Err(Error::Protocol(_))));
}

// ---- socket transport + device -------------------------------------------------------

struct Rig {
    server: FakeServer,
    host: FakeHost,
    dev: Device,
}

fn rig_with(geom: (u64, u32, u32), polling: bool) -> Rig {
    let shm = memfd_device(geom.0, geom.1, geom.2);
    let server = FakeServer::start(shm);
    let irq = server.irq.try_clone().unwrap();
    let host = FakeHost::start(
        &server.shm,
        HostOpts {
            irq: Some(irq),
            polling,
            lazy_kernels: false,
        },
    );
    let mut dev = Device::connect(&server.path).unwrap();
    dev.set_timeout(Duration::from_secs(10));
    Rig { server, host, dev }
}

fn rig() -> Rig {
    rig_with(SMALL, false)
}

#[test]
fn info_reads_the_register_page() {
    let r = rig();
    let i = r.dev.info();
    assert_eq!((i.vm_id, i.pool_id, i.priority), (7, 2, 3));
    assert_eq!(i.vm_name, "test-vm");
    assert_eq!(i.device_name, "fake cpu device");
    assert_eq!(i.status_name(), "ready");
    assert_eq!(i.backend_name(), "cpu");
    assert_eq!(i.abi_version_string(), "1.7");
    assert_eq!(i.staging_size, (256 << 10) - (64 << 10));
    assert_eq!(r.dev.staging_size(), i.staging_size);
    assert!(r.dev.transport_description().starts_with("socket "));
}

#[test]
fn doorbell_rung_only_when_host_not_polling() {
    let r = rig_with(SMALL, false);
    r.server.doorbell_count();
    r.dev.nop().unwrap();
    assert!(r.server.doorbell_count() >= 1, "idle host must be rung");

    let r = rig_with(SMALL, true);
    r.dev.nop().unwrap();
    r.dev.nop().unwrap();
    assert_eq!(
        r.server.doorbell_count(),
        0,
        "polling host must not be rung"
    );
    r.dev.ring_doorbell();
    assert_eq!(r.server.doorbell_count(), 1);
}

#[test]
fn memory_and_copies_of_all_sizes() {
    let r = rig();
    let d = &r.dev;
    let chunk = (d.staging_size() / 2) as usize;
    assert_eq!(d.mem_info().unwrap(), (0, 64 << 20));
    for len in [
        0usize,
        1,
        7,
        chunk - 1,
        chunk,
        chunk + 1,
        2 * chunk,
        3 * chunk + 5,
        d.staging_size() as usize + 4097,
        (1 << 20) + 3,
    ] {
        let p = d.alloc(len.max(1) as u64).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        d.copy_htod(p, &data).unwrap();
        let mut back = vec![0xEEu8; len];
        d.copy_dtoh(&mut back, p).unwrap();
        assert!(back == data, "round trip of {len} bytes");
        d.free(p).unwrap();
    }
    assert_eq!(d.mem_info().unwrap().0, 0);
}

#[test]
fn memset_and_d2d() {
    let r = rig();
    let d = &r.dev;
    let a = d.alloc(64).unwrap();
    let b = d.alloc(64).unwrap();
    d.memset_d8(a, 0x11, 64).unwrap();
    d.memset_d32(a + 8, 0x0403_0201, 2).unwrap();
    d.copy_dtod(b, a, 64).unwrap();
    let mut out = [0u8; 64];
    d.copy_dtoh(&mut out, b).unwrap();
    assert_eq!(&out[..8], &[0x11; 8]);
    assert_eq!(&out[8..16], &[1, 2, 3, 4, 1, 2, 3, 4]);
    assert_eq!(&out[16..], &[0x11; 48]);
}

#[test]
fn command_errors_carry_op_and_status() {
    let r = rig();
    let d = &r.dev;
    let e = d.free(0xdead_0000).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Command {
                op: Opcode::MemFree,
                status: Status::InvalidAddress
            }
        ),
        "{e}"
    );
    assert_eq!(e.status(), Some(Status::InvalidAddress));
    let e = d.alloc(1 << 40).unwrap_err();
    assert_eq!(e.status(), Some(Status::QuotaExceeded));
    assert!(matches!(d.alloc(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        d.launch(Builtin::Busy.handle(), [1; 3], [1; 3], &[0; 73]),
        Err(Error::InvalidArgument(_))
    ));
    // Copies to a bad address fail cleanly, and the device stays usable.
    let e = d.copy_htod(0x10, &[0u8; 300_000]).unwrap_err();
    assert_eq!(e.status(), Some(Status::InvalidAddress));
    let mut out = vec![0u8; 300_000];
    let e = d.copy_dtoh(&mut out, 0x10).unwrap_err();
    assert_eq!(e.status(), Some(Status::InvalidAddress));
    d.nop().unwrap();
}

#[test]
fn builtin_kernels() {
    let r = rig();
    let d = &r.dev;
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let x = d.alloc(16).unwrap();
    let y = d.alloc(16).unwrap();
    let c = d.alloc(16).unwrap();
    let o = d.alloc(4).unwrap();
    d.copy_htod(x, &f(&[1., 2., 3., 4.])).unwrap();
    d.copy_htod(y, &f(&[10., 20., 30., 40.])).unwrap();
    d.saxpy(x, y, 4, 2.0).unwrap();
    d.vector_add(x, y, c, 4).unwrap();
    d.reduce_sum(c, o, 4).unwrap();
    let mut out = [0u8; 4];
    d.copy_dtoh(&mut out, o).unwrap();
    // y = [12 24 36 48]; c = [13 26 39 52]; sum = 130
    assert_eq!(f32::from_le_bytes(out), 130.0);
    d.busy(10).unwrap();
    d.synchronize().unwrap();
}

#[test]
fn raw_submit_keeps_caller_tag_and_status() {
    let r = rig();
    let mut s = Sqe {
        opcode: 0x77,
        tag: 0xABCD,
        ..Sqe::default()
    };
    let c = r.dev.submit(&s).unwrap();
    assert_eq!(c.tag, 0xABCD);
    assert_eq!(c.status, Status::UnknownOpcode as u32);
    s = Command::GetInfo.encode(0, 42);
    let c = r.dev.submit(&s).unwrap();
    assert_eq!((c.tag, c.status, c.result1), (42, 0, 64 << 20));
}

#[test]
fn batch_larger_than_the_ring() {
    let r = rig();
    let n = 100;
    let sqes: Vec<Sqe> = (0..n)
        .map(|i| {
            if i % 10 == 3 {
                Sqe {
                    opcode: 0x99,
                    tag: 1000 + i,
                    ..Sqe::default()
                }
            } else {
                Command::Nop.encode(0, 1000 + i)
            }
        })
        .collect();
    let cqes = r.dev.submit_batch(&sqes).unwrap();
    assert_eq!(cqes.len(), n as usize);
    let mut tags: Vec<u64> = cqes.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, (1000..1000 + n).collect::<Vec<_>>());
    for c in &cqes {
        let want = if (c.tag - 1000) % 10 == 3 {
            Status::UnknownOpcode as u32
        } else {
            0
        };
        assert_eq!(c.status, want, "tag {}", c.tag);
    }
    // Stream order on a serial host: arrival order is submission order.
    assert!(cqes.windows(2).all(|w| w[0].tag < w[1].tag));
    let mb = r.host.ctl.max_batch.load(Ordering::SeqCst);
    assert!((1..=8).contains(&mb), "host saw {mb} at once");
    assert!(r.dev.submit_batch(&[]).unwrap().is_empty());
    assert_eq!(r.dev.commands_submitted(), n);
}

#[test]
fn batch_publishes_several_entries_at_once() {
    let r = rig();
    r.host.ctl.paused.store(true, Ordering::SeqCst);
    let sqes: Vec<Sqe> = (0..6).map(|i| Command::Nop.encode(0, i)).collect();
    std::thread::scope(|s| {
        let h = s.spawn(|| r.dev.submit_batch(&sqes));
        std::thread::sleep(Duration::from_millis(50));
        r.host.ctl.paused.store(false, Ordering::SeqCst);
        assert_eq!(h.join().unwrap().unwrap().len(), 6);
    });
    assert_eq!(r.host.ctl.max_batch.load(Ordering::SeqCst), 6);
    // One batch, one doorbell (the host was idle, so it is rung).
    assert_eq!(r.server.doorbell_count(), 1);
}

#[test]
fn timeout_then_recovery() {
    let mut r = rig();
    r.dev.set_timeout(Duration::from_millis(100));
    r.host.ctl.paused.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let e = r.dev.nop().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    r.host.ctl.paused.store(false, Ordering::SeqCst);
    r.dev.set_timeout(Duration::from_secs(10));
    // The timed-out command's late completion is dropped; the next one matches its own.
    assert_eq!(r.dev.mem_info().unwrap(), (0, 64 << 20));
    r.dev.nop().unwrap();
}

#[test]
fn fence_is_reported_and_reset_clears_it() {
    let r = rig();
    let d = &r.dev;
    let p = d.alloc(4096).unwrap();
    let shm = d.shm();
    let sq = d.layout().sq_offset as usize;
    // A hostile guest publishes an impossible tail.
    shm.store_u32(sq + ring_hdr::TAIL, 1000);
    let t0 = Instant::now();
    while d.info().status != Some(vgpu_abi::DeviceStatus::Fenced) {
        assert!(t0.elapsed() < Duration::from_secs(5), "host did not fence");
        std::thread::sleep(Duration::from_millis(1));
    }
    let e = d.nop().unwrap_err();
    assert!(
        matches!(e, Error::Fenced { reason } if reason == vgpu_abi::ring::FenceReason::SqIndexOutOfRange as u32),
        "{e}"
    );
    assert!(e.to_string().contains("submission ring tail"), "{e}");
    let gen = d.info().generation;
    d.reset().unwrap();
    assert_eq!(d.info().generation, gen + 1);
    d.nop().unwrap();
    // The reset destroyed the context: memory is gone.
    assert_eq!(d.mem_info().unwrap().0, 0);
    assert!(d.free(p).is_err());
}

#[test]
fn kernel_fault_then_reset() {
    let r = rig();
    let d = &r.dev;
    let e = d.fault().unwrap_err();
    assert_eq!(e.status(), Some(Status::KernelFault));
    assert_eq!(d.info().status_name(), "error");
    let x = d.alloc(16).unwrap();
    assert_eq!(
        d.saxpy(x, x, 4, 1.0).unwrap_err().status(),
        Some(Status::ContextLost)
    );
    d.reset().unwrap();
    assert_eq!(d.info().status_name(), "ready");
    let x = d.alloc(16).unwrap();
    d.saxpy(x, x, 4, 1.0).unwrap();
}

#[test]
fn reset_aborts_commands_in_flight() {
    let r = rig();
    r.host.ctl.paused.store(true, Ordering::SeqCst);
    let sqes: Vec<Sqe> = (0..3).map(|i| Command::Nop.encode(0, i)).collect();
    std::thread::scope(|s| {
        let h = s.spawn(|| r.dev.submit_batch(&sqes));
        std::thread::sleep(Duration::from_millis(50));
        // The host is paused but still handles reset requests.
        r.dev.reset().unwrap();
        let c = h.join().unwrap().unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|c| c.status == Status::Aborted as u32));
    });
    r.host.ctl.paused.store(false, Ordering::SeqCst);
    r.dev.nop().unwrap();
}

#[test]
fn completion_interrupts() {
    let r = rig();
    assert!(!r.dev.wait_irq(Duration::from_millis(20)).unwrap());
    r.dev.enable_irq(true);
    r.dev.nop().unwrap();
    assert!(r.dev.wait_irq(Duration::from_secs(5)).unwrap());
    r.dev.enable_irq(false);
    r.dev.nop().unwrap();
    assert!(!r.dev.wait_irq(Duration::from_millis(20)).unwrap());
}

/// A polling guest never raises the interrupt flag, so vgpud sends it no interrupt; a guest
/// that waits on the interrupt raises it while it waits and clears it afterwards.
#[test]
fn the_guest_asks_for_interrupts_only_while_an_interrupt_waiter_waits() {
    let r = rig();
    let irq_flag = || vgpu_abi::ring::CqProducer::new(r.dev.shm(), r.dev.layout()).irq_wanted();
    // Blocking at once, so that both waits below reach their blocking step.
    r.dev.set_eager_wait(false);
    r.dev.use_interrupts(false);
    assert_eq!(r.dev.wait_mode(), "poll");
    r.dev.busy(20_000).unwrap();
    assert_eq!(r.host.ctl.irqs.load(Ordering::SeqCst), 0);
    assert!(!irq_flag());

    r.dev.use_interrupts(true);
    assert_eq!(r.dev.wait_mode(), "eventfd");
    assert_eq!(r.dev.wait_description(), "eventfd");
    r.host.ctl.paused.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| r.dev.nop());
        // The command cannot complete while the host is paused: the waiter arms the interrupt.
        let t0 = Instant::now();
        while !irq_flag() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never armed");
            std::hint::spin_loop();
        }
        r.host.ctl.paused.store(false, Ordering::SeqCst);
        waiter.join().unwrap().unwrap();
    });
    assert!(!irq_flag(), "the flag is cleared once nobody waits");
}

#[test]
fn an_interrupt_taken_by_another_waiter_ends_a_stale_wait() {
    use crate::transport::socket::SocketTransport;
    use crate::transport::Transport;
    let server = FakeServer::start(memfd_device(SMALL.0, SMALL.1, SMALL.2));
    let t = SocketTransport::connect(&server.path).unwrap();
    let epoch = t.irq_epoch();
    rustix::io::write(&server.irq, &1u64.to_ne_bytes()).unwrap();
    // One waiter takes the interrupt ...
    assert!(t.wait_irq(Duration::from_secs(5)).unwrap());
    assert_eq!(t.irq_epoch(), epoch + 1);
    // ... so a waiter that looked at its completions before that does not sleep through it.
    let t0 = Instant::now();
    assert!(t.wait_irq_since(epoch, Duration::from_secs(5)).unwrap());
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // With nothing taken since, the wait runs to its timeout.
    assert!(!t
        .wait_irq_since(t.irq_epoch(), Duration::from_millis(20))
        .unwrap());
}

#[test]
fn blocking_waiters_share_the_interrupt() {
    let r = rig();
    r.dev.set_eager_wait(false);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let d = &r.dev;
            s.spawn(move || {
                for i in 0..200u64 {
                    let batch: Vec<Sqe> = (0..4)
                        .map(|k| Command::Nop.encode(0, t * 1000 + i * 4 + k))
                        .collect();
                    let c = d.submit_batch(&batch).unwrap();
                    assert_eq!(c.len(), 4);
                }
            });
        }
    });
    // The last waiter disarmed the interrupt.
    let cq = r.dev.layout().cq_offset as usize;
    let flags = r.dev.shm().load_u32(cq + ring_hdr::FLAGS);
    assert_eq!(flags & vgpu_abi::layout::CQ_FLAG_IRQ, 0);
}

#[test]
fn many_threads_share_one_device() {
    let r = rig();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let d = &r.dev;
            s.spawn(move || {
                let p = d.alloc(200_000).unwrap();
                for i in 0..20u8 {
                    d.nop().unwrap();
                    let data = vec![t.wrapping_mul(17).wrapping_add(i); 200_000];
                    d.copy_htod(p, &data).unwrap();
                    let mut back = vec![0; 200_000];
                    d.copy_dtoh(&mut back, p).unwrap();
                    assert!(back == data);
                    let b: Vec<Sqe> = (0..20).map(|k| Command::Nop.encode(0, k)).collect();
                    assert_eq!(d.submit_batch(&b).unwrap().len(), 20);
                }
                d.free(p).unwrap();
            });
        }
    });
    assert_eq!(r.dev.mem_info().unwrap().0, 0);
}

#[test]
fn staging_access_is_bounds_checked() {
    let r = rig();
    let d = &r.dev;
    let s = d.staging_size();
    d.write_staging(s - 4, b"abcd").unwrap();
    let mut b = [0u8; 4];
    d.read_staging(s - 4, &mut b).unwrap();
    assert_eq!(&b, b"abcd");
    assert!(matches!(
        d.write_staging(s - 3, b"abcd"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        d.read_staging(u64::MAX, &mut b),
        Err(Error::InvalidArgument(_))
    ));
    // A raw copy out of staging written by hand.
    let p = d.alloc(4).unwrap();
    let c = d
        .submit(
            &Command::CopyH2D {
                dst: p,
                staging_offset: s - 4,
                len: 4,
            }
            .encode(0, 1),
        )
        .unwrap();
    assert_eq!(c.status, 0);
    let mut out = [0u8; 4];
    d.copy_dtoh(&mut out, p).unwrap();
    assert_eq!(&out, b"abcd");
}

#[test]
fn dropping_the_device_disconnects() {
    let Rig {
        mut server,
        host,
        dev,
    } = rig();
    dev.nop().unwrap();
    assert!(!server.disconnected.load(Ordering::SeqCst));
    drop(dev);
    assert!(server.wait_disconnect());
    drop(host);
}

#[test]
fn raw_view_outlives_the_device() {
    let Rig {
        mut server,
        host,
        dev,
    } = rig();
    let shm = dev.shm();
    drop(dev);
    // Disconnected, but the view handed out stays valid.
    assert!(server.wait_disconnect());
    assert_eq!(shm.load_u64(0), vgpu_abi::MAGIC);
    drop(host);
}

#[test]
fn unknown_device_status_is_kept_raw() {
    let r = rig();
    let shm = r.dev.shm();
    shm.store_u32(vgpu_abi::regs::off::DEVICE_STATUS, 77);
    let i = r.dev.info();
    assert_eq!(i.status, None);
    assert_eq!(i.status_raw, 77);
    assert_eq!(i.status_name(), "unknown(77)");
}

#[test]
fn connect_to_nothing_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Device::connect(&dir.path().join("none.sock")).unwrap_err();
    assert!(
        matches!(&e, Error::Io { context, .. } if context.contains("none.sock")),
        "{e}"
    );
}

#[test]
fn selftest_passes_against_the_fake_host() {
    let r = rig_with((16 << 20, 64, 128), false);
    let mut out = Vec::new();
    let ok = selftest::run(&r.dev, &selftest::Options::default(), &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(ok, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "vgpu: vm_id=7 pool_id=2 priority=3 name=test-vm");
    assert!(text.contains("selftest: saxpy n=65536 ok"), "{text}");
    assert!(text.contains("selftest: sgemm m=n=k=64 ok"), "{text}");
    assert_eq!(lines[1], "wait: eventfd");
    assert!(
        text.contains("selftest: completion interrupt (eventfd) ok"),
        "{text}"
    );
    let last = lines.last().unwrap();
    let n = r.dev.commands_submitted();
    assert_eq!(*last, format!("selftest: PASS ({n} commands)"));
    assert_eq!(r.dev.mem_info().unwrap().0, 0);
}

#[test]
fn selftest_fails_on_wrong_results() {
    // A host whose kernels complete OK without doing the work: the checks must notice.
    let shm = memfd_device(16 << 20, 64, 128);
    let server = FakeServer::start(shm);
    let _host = FakeHost::start(
        &server.shm,
        HostOpts {
            lazy_kernels: true,
            ..HostOpts::default()
        },
    );
    let dev = Device::connect(&server.path).unwrap();
    let mut out = Vec::new();
    let ok = selftest::run(&dev, &selftest::Options::default(), &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(!ok, "{text}");
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("selftest: FAIL saxpy: element"), "{text}");
    // Everything it allocated was freed despite the failure.
    assert_eq!(dev.mem_info().unwrap().0, 0);
}

#[test]
fn selftest_reports_a_dead_device() {
    let mut r = rig();
    r.host.ctl.paused.store(true, Ordering::SeqCst);
    r.dev.set_timeout(Duration::from_millis(100));
    let mut out = Vec::new();
    assert!(!selftest::run(
        &r.dev,
        &selftest::Options::default(),
        &mut out
    ));
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("selftest: FAIL nop: timed out"),
        "{text}"
    );
}

// ---- PCI transport over a fake sysfs -------------------------------------------------

fn fake_pci_dev(
    root: &Path,
    name: &str,
    vendor: &str,
    device: &str,
    regs: Option<&RegisterPage>,
    size: u64,
) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
    std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
    std::fs::write(d.join("enable"), "0\n").unwrap();
    let r0 = File::create(d.join("resource0")).unwrap();
    r0.set_len(4096).unwrap();
    let r2 = File::create(d.join("resource2")).unwrap();
    r2.set_len(size).unwrap();
    if let Some(r) = regs {
        write_regs(&r2, r);
    }
    d
}

fn fake_sysfs() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let (size, sq, cq) = SMALL;
    fake_pci_dev(root, "0000:00:02.0", "0x8086", "0x1237", None, 4096);
    fake_pci_dev(root, "0000:00:03.0", "0x1af4", "0x1110", None, size);
    fake_pci_dev(
        root,
        "0000:00:05.0",
        "0x1af4",
        "0x1110",
        Some(&register_page(size, sq, cq)),
        size,
    );
    t
}

#[test]
fn pci_scan_picks_the_device_with_the_magic() {
    let t = fake_sysfs();
    let dev = Device::open_pci_in(t.path()).unwrap();
    assert_eq!(dev.transport_description(), "pci 0000:00:05.0");
    assert_eq!(dev.info().vm_id, 7);
    // The device was enabled.
    let en = std::fs::read_to_string(t.path().join("0000:00:05.0/enable")).unwrap();
    assert!(en.starts_with('1'), "{en:?}");
    // The doorbell lands in BAR0 at 0xC: (peer 1 << 16) | vector 0.
    dev.ring_doorbell();
    let r0 = File::open(t.path().join("0000:00:05.0/resource0")).unwrap();
    let mut b = [0u8; 4];
    r0.read_exact_at(&mut b, vgpu_abi::ivshmem::REG_DOORBELL as u64)
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(b),
        vgpu_abi::ivshmem::doorbell_value(1, 0)
    );
    assert!(matches!(
        dev.wait_irq(Duration::from_millis(1)),
        Err(Error::NotSupported(_))
    ));
    // No IOMMU group in the fake sysfs: no VFIO, so the device is polled, and says why.
    assert_eq!(dev.wait_mode(), "poll");
    let why = dev.wait_description();
    assert!(
        why.starts_with("poll (no VFIO: ") && why.contains("IOMMU group"),
        "{why}"
    );
}

#[test]
fn pci_device_runs_commands_through_bar2() {
    let t = fake_sysfs();
    let dir = t.path().join("0000:00:05.0");
    let r2 = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("resource2"))
        .unwrap();
    let _host = FakeHost::start(&r2, HostOpts::default());
    let dev = Device::open_pci_at(&dir).unwrap();
    let p = dev.alloc(300_000).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    dev.copy_htod(p, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.copy_dtoh(&mut back, p).unwrap();
    assert!(back == data);
    dev.free(p).unwrap();
    // The doorbell register holds the last doorbell written.
    let mut b = [0u8; 4];
    File::open(dir.join("resource0"))
        .unwrap()
        .read_exact_at(&mut b, 0xC)
        .unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x0001_0000);
}

#[test]
fn pci_errors_are_specific() {
    let t = fake_sysfs();
    let e = Device::open_pci_at(&t.path().join("0000:00:03.0")).unwrap_err();
    assert!(
        matches!(e, Error::Abi(vgpu_abi::AbiError::BadMagic { found: 0 })),
        "{e}"
    );
    let e = Device::open_pci_at(&t.path().join("0000:00:02.0")).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound(m) if m.contains("8086:1237")),
        "{e}"
    );

    // Another major version.
    let (size, sq, cq) = SMALL;
    let mut regs = register_page(size, sq, cq);
    regs.abi_version = 2 << 16;
    let d = fake_pci_dev(
        t.path(),
        "0000:00:06.0",
        "0x1af4",
        "0x1110",
        Some(&regs),
        size,
    );
    let e = Device::open_pci_at(&d).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Abi(vgpu_abi::AbiError::VersionMismatch { dev_major: 2, .. })
        ),
        "{e}"
    );

    // Geometry that does not match the BAR.
    let mut regs = register_page(size, sq, cq);
    regs.staging_size += 4096;
    let d = fake_pci_dev(
        t.path(),
        "0000:00:07.0",
        "0x1af4",
        "0x1110",
        Some(&regs),
        size,
    );
    let e = Device::open_pci_at(&d).unwrap_err();
    assert!(matches!(e, Error::Layout(_)), "{e}");

    // Nothing to find.
    let empty = tempfile::tempdir().unwrap();
    let e = Device::open_pci_in(empty.path()).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound(m) if m.contains("1af4:1110")),
        "{e}"
    );
    // Only ivshmem devices without the magic: the message says what was tried.
    let only = tempfile::tempdir().unwrap();
    fake_pci_dev(only.path(), "0000:00:03.0", "0x1af4", "0x1110", None, size);
    let e = Device::open_pci_in(only.path()).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound(m) if m.contains("0000:00:03.0") && m.contains("magic")),
        "{e}"
    );
}

// ---- functions, typed arguments, streams, events ------------------------------------

#[test]
fn builtin_function_layout_and_typed_launch() {
    use crate::compute::Launch;
    let r = rig();
    let d = &r.dev;
    let f = d.builtin_function(Builtin::Saxpy).unwrap();
    assert_eq!(f.params(), &[(0, 8), (8, 8), (16, 4), (20, 4)]);
    assert_eq!(f.params_len(), 24);
    let x = d.alloc(16).unwrap();
    let y = d.alloc(16).unwrap();
    let b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    d.copy_htod(x, &b(&[1., 2., 3., 4.])).unwrap();
    d.copy_htod(y, &b(&[1., 1., 1., 1.])).unwrap();
    let l = Launch::new(&f)
        .grid([1, 1, 1])
        .block([4, 1, 1])
        .arg_ptr(x)
        .arg_ptr(y)
        .arg_u32(4)
        .arg_f32(0.5);
    d.launch_function(&l).unwrap();
    let mut out = [0u8; 16];
    d.copy_dtoh(&mut out, y).unwrap();
    assert_eq!(out, b(&[1.5, 2., 2.5, 3.])[..]);
    // Wrong arity and wrong sizes are refused before anything is sent.
    let sent = d.commands_submitted();
    let short = Launch::new(&f).arg_ptr(x);
    assert!(matches!(
        d.launch_function(&short),
        Err(Error::InvalidArgument(_))
    ));
    let wide = Launch::new(&f)
        .arg_ptr(x)
        .arg_ptr(y)
        .arg_u64(4)
        .arg_f32(1.0);
    assert!(matches!(
        d.launch_function(&wide),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(d.commands_submitted(), sent);
    // Parameter info past the last parameter, of an unknown function.
    let e = d.exec_on(
        Command::FuncParamInfo {
            func: Builtin::Saxpy.handle(),
            index: 4,
        },
        0,
    );
    assert_eq!(e.unwrap_err().status(), Some(Status::InvalidArgument));
    let e = d.exec_on(Command::FuncParamInfo { func: 77, index: 0 }, 0);
    assert_eq!(e.unwrap_err().status(), Some(Status::InvalidFunction));
    // The fake host, like the cpu backend, has no PTX.
    let e = d.load_module(".version 8.0\n").unwrap_err();
    assert_eq!(e.status(), Some(Status::NotSupported));
}

#[test]
fn streams_and_events() {
    let r = rig();
    let d = &r.dev;
    let s1 = d.create_stream();
    let s2 = d.create_stream();
    assert_ne!(s1.id(), s2.id());
    assert_ne!(s1.id(), 0);
    let p = d.alloc(64).unwrap();
    let (e0, e1) = (d.create_event().unwrap(), d.create_event().unwrap());
    assert_ne!(e0.id(), e1.id());
    s1.record(&e0).unwrap().wait().unwrap();
    let queued = s1.memset_d32(p, 7, 16).unwrap();
    s1.launch_body(
        vgpu_abi::cmd::LaunchBody::new(
            Builtin::Busy.handle(),
            [1; 3],
            [1; 3],
            &2000u64.to_le_bytes(),
        )
        .unwrap(),
    )
    .unwrap()
    .wait()
    .unwrap();
    queued.wait().unwrap();
    s1.record(&e1).unwrap().wait().unwrap();
    s2.wait_event(&e1).unwrap().wait().unwrap();
    s2.synchronize().unwrap();
    let dt = e1.elapsed_since(&e0).unwrap();
    assert!(dt >= Duration::from_micros(2000), "{dt:?}");
    assert!(e0.elapsed_since(&e1).is_err(), "negative spans are errors");
    let mut out = [0u8; 64];
    d.copy_dtoh(&mut out, p).unwrap();
    assert!(out.chunks(4).all(|c| c == 7u32.to_le_bytes()));
    // Event ids are recycled.
    let id = e1.id();
    drop(e1);
    assert_eq!(d.create_event().unwrap().id(), id);
}

#[test]
fn vmm_commands_are_not_sent_to_a_device_before_abi_1_6() {
    use std::os::unix::fs::FileExt;
    let r = rig();
    // The fake host answers none of them: each reaches it and fails NOT_SUPPORTED.
    assert_eq!(
        r.dev.mem_granularity().unwrap_err().status(),
        Some(Status::NotSupported)
    );
    let sent = r.host.ctl.executed.load(Ordering::SeqCst);
    assert!(sent >= 1);
    // A 1.5 device: refused in the guest, nothing sent.
    let v: u32 = (vgpu_abi::ABI_MAJOR as u32) << 16 | 5;
    r.server
        .shm
        .write_all_at(&v.to_le_bytes(), vgpu_abi::regs::off::ABI_VERSION as u64)
        .unwrap();
    assert!(!r.dev.has_vmm());
    assert!(matches!(
        r.dev.mem_create(2 << 20),
        Err(Error::NotSupported(_))
    ));
    assert!(matches!(
        r.dev.mem_granularity(),
        Err(Error::NotSupported(_))
    ));
    assert_eq!(r.host.ctl.executed.load(Ordering::SeqCst), sent);
}

/// A policy source, asked on the waiting thread, decides over the policy set for the device;
/// where it has no answer the set one stands.
#[test]
fn a_wait_policy_source_decides_per_thread() {
    use crate::WaitPolicy;
    thread_local! {
        static MINE: std::cell::Cell<Option<WaitPolicy>> = const { std::cell::Cell::new(None) };
    }
    fn source() -> Option<WaitPolicy> {
        MINE.with(|m| m.get())
    }
    let r = rig();
    r.dev.set_wait_policy(WaitPolicy::Block);
    assert_eq!(r.dev.wait_policy(), WaitPolicy::Block);
    r.dev.set_wait_policy_source(source);
    assert_eq!(
        r.dev.wait_policy(),
        WaitPolicy::Block,
        "no answer: the set policy"
    );
    MINE.with(|m| m.set(Some(WaitPolicy::Spin)));
    assert_eq!(r.dev.wait_policy(), WaitPolicy::Spin);
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(r.dev.wait_policy(), WaitPolicy::Block, "another thread"));
    });
    r.dev.nop().unwrap();
}
