//! Process clients against a real vgpud: the same protocol QEMU speaks, on the cpu backend.

mod common;

use common::*;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::{Builtin, Command, LaunchBody, Opcode, Sqe};
use vgpu_abi::{DeviceStatus, Status};
use vgpu_guest::{Device, Error};
use zerocopy::IntoBytes;

fn status_of(e: Error) -> Status {
    match e {
        Error::Command { status, .. } => status,
        other => panic!("expected a command error, got {other:?}"),
    }
}

#[test]
fn ids_workload_and_accounting() {
    let mut vm = Vm::new("alpha", 42);
    vm.pool_id = 3;
    vm.priority = 5;
    let d = start(&[vm]);
    let dev = Device::connect(&d.socket("alpha")).unwrap();
    let info = dev.info();
    assert_eq!((info.vm_id, info.pool_id, info.priority), (42, 3, 5));
    assert_eq!(info.vm_name, "alpha");
    workload(&dev, &mut Rng(7));
    assert_eq!(dev.mem_info().unwrap(), (0, 256 << 20));
    // Copies larger than staging are chunked.
    let big: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
    let p = dev.alloc(big.len() as u64).unwrap();
    dev.copy_htod(p, &big).unwrap();
    let mut back = vec![0u8; big.len()];
    dev.copy_dtoh(&mut back, p).unwrap();
    assert!(back == big, "chunked copy");
    let s = d.vm_stats("alpha");
    assert!(s.commands > 20);
    assert_eq!(s.errors, 0);
    assert_eq!(s.mem_used, big.len() as u64);
    assert!(s.bytes_in >= big.len() as u64);
    assert!(s.connected);
    drop(dev);
    d.stop();
}

#[test]
fn bad_commands_get_error_completions() {
    let mut small = Vm::new("small", 1);
    small.quota = 1 << 20;
    let d = start(&[small, Vm::new("other", 2)]);
    let dev = Device::connect(&d.socket("small")).unwrap();
    let other = Device::connect(&d.socket("other")).unwrap();
    let raw = |sqe: Sqe| Status::from_raw(dev.submit(&sqe).unwrap().status).unwrap();

    let mut s = Command::Nop.encode(0, 1);
    s.opcode = 0x7777;
    assert_eq!(raw(s), Status::UnknownOpcode);
    let stg = dev.staging_size();
    let p = dev.alloc(4096).unwrap();
    assert_eq!(
        raw(Command::CopyH2D {
            dst: p,
            staging_offset: stg - 10,
            len: 11
        }
        .encode(0, 2)),
        Status::StagingOutOfRange
    );
    assert_eq!(
        raw(Command::CopyH2D {
            dst: p + 4000,
            staging_offset: 0,
            len: 97
        }
        .encode(0, 3)),
        Status::InvalidAddress
    );
    assert_eq!(
        raw(Command::MemFree { ptr: 12345 }.encode(0, 4)),
        Status::InvalidAddress
    );
    // Another VM's pointer is not ours.
    let theirs = other.alloc(4096).unwrap();
    assert_eq!(
        status_of(dev.copy_dtod(p, theirs, 16).unwrap_err()),
        Status::InvalidAddress
    );
    assert_eq!(
        status_of(dev.free(theirs).unwrap_err()),
        Status::InvalidAddress
    );
    // Quota.
    assert_eq!(
        status_of(dev.alloc(2 << 20).unwrap_err()),
        Status::QuotaExceeded
    );
    // Wrong parameter sizes and unknown functions.
    let l = LaunchBody::new(Builtin::Saxpy.handle(), [1; 3], [1; 3], &[0; 5]).unwrap();
    assert_eq!(
        raw(Command::Launch { launch: l }.encode(0, 5)),
        Status::InvalidArgument
    );
    let l = LaunchBody::new(0x1234, [1; 3], [1; 3], &[]).unwrap();
    assert_eq!(
        raw(Command::Launch { launch: l }.encode(0, 6)),
        Status::InvalidFunction
    );
    // A busy kernel longer than the device limit.
    assert_eq!(
        status_of(dev.busy(5_000_000).unwrap_err()),
        Status::InvalidArgument
    );
    // The device still works, and the other VM was never disturbed.
    dev.nop().unwrap();
    other.free(theirs).unwrap();
    assert_eq!(d.vm_stats("other").errors, 0);
    assert!(d.vm_stats("small").errors >= 9);
    assert_eq!(dev.info().status, Some(DeviceStatus::Ready));
    drop((dev, other));
    d.stop();
}

#[test]
fn fault_breaks_only_this_context_until_reset() {
    let d = start(&[Vm::new("a", 1), Vm::new("b", 2)]);
    let a = Device::connect(&d.socket("a")).unwrap();
    let b = Device::connect(&d.socket("b")).unwrap();
    let pa = a.alloc(64).unwrap();
    assert_eq!(status_of(a.fault().unwrap_err()), Status::KernelFault);
    assert_eq!(a.info().status, Some(DeviceStatus::Error));
    assert_eq!(
        status_of(a.memset_d8(pa, 1, 64).unwrap_err()),
        Status::ContextLost
    );
    workload(&b, &mut Rng(3));
    a.reset().unwrap();
    assert_eq!(a.info().status, Some(DeviceStatus::Ready));
    assert_eq!(
        a.mem_info().unwrap().0,
        0,
        "allocations are gone after reset"
    );
    workload(&a, &mut Rng(4));
    assert_eq!(d.vm_stats("a").resets, 1);
    drop((a, b));
    d.stop();
}

#[test]
fn completion_interrupts_reach_the_client() {
    let d = start(&[Vm::new("irq", 1)]);
    let dev = Device::connect(&d.socket("irq")).unwrap();
    assert!(
        !dev.wait_irq(Duration::from_millis(50)).unwrap(),
        "no interrupt before asking"
    );
    dev.enable_irq(true);
    dev.nop().unwrap();
    assert!(
        dev.wait_irq(Duration::from_secs(5)).unwrap(),
        "completion interrupt"
    );
    drop(dev);
    d.stop();
}

#[test]
fn disconnect_frees_everything_and_the_socket_serves_the_next_boot() {
    let mut vm = Vm::new("cycle", 9);
    vm.quota = 8 << 20;
    let d = start(&[vm]);
    for round in 0..3 {
        let dev = Device::connect(&d.socket("cycle")).unwrap();
        assert_eq!(dev.mem_info().unwrap().0, 0, "round {round}: fresh device");
        // Take most of the quota and leave without freeing.
        dev.alloc(6 << 20).unwrap();
        // Leave with work still queued: 50 busy kernels of 2 ms published straight into the
        // ring (no waiting), so most are still queued when the connection closes.
        let shm = dev.shm();
        let layout = dev.layout();
        let tail_off = layout.sq_offset as usize;
        let tail = shm.load_u32(tail_off);
        for i in 0..50u32 {
            let l = LaunchBody::new(
                Builtin::Busy.handle(),
                [1; 3],
                [1; 3],
                &2000u64.to_le_bytes(),
            )
            .unwrap();
            let slot = tail.wrapping_add(i) & (layout.sq_entries - 1);
            shm.write_obj(
                layout.sqe_offset(slot),
                &Command::Launch { launch: l }.encode(0, i as u64),
            );
        }
        shm.store_u32(tail_off, tail.wrapping_add(50));
        dev.ring_doorbell();
        // Leave once vgpud has taken the work into its queue (100 ms of kernels on one slot),
        // so that leaving drops queued work whatever the timing.
        let t0 = Instant::now();
        while d.vm_stats("cycle").queued == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "vgpud took no work");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(dev);
        let t0 = Instant::now();
        while d.vm_stats("cycle").connected {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(d.vm_stats("cycle").mem_used, 0);
        assert_eq!(d.vm_stats("cycle").queued, 0);
    }
    let dropped = d.vm_stats("cycle").dropped_jobs;
    assert!(
        dropped > 0,
        "queued work of departed clients is dropped, not run:\n{}",
        d.log_text()
    );
    assert_eq!(d.vm_stats("cycle").connects, 3);
    // A second client while one is attached is refused; the first keeps working.
    let first = Device::connect(&d.socket("cycle")).unwrap();
    assert!(Device::connect(&d.socket("cycle")).is_err());
    first.nop().unwrap();
    drop(first);
    let st = d.stop();
    assert!(st.success(), "clean exit on SIGTERM: {st:?}");
}

#[test]
fn async_batches_complete_in_order_per_stream() {
    let d = start(&[Vm::new("batch", 1)]);
    let dev = Device::connect(&d.socket("batch")).unwrap();
    let sqes: Vec<Sqe> = (0..5000u64)
        .map(|i| Command::Nop.encode((i % 3) as u32, i))
        .collect();
    let cqes = dev.submit_batch(&sqes).unwrap();
    assert_eq!(cqes.len(), 5000);
    for s in 0..3u64 {
        let tags: Vec<u64> = cqes.iter().map(|c| c.tag).filter(|t| t % 3 == s).collect();
        assert!(
            tags.windows(2).all(|w| w[0] < w[1]),
            "stream {s} out of order"
        );
        assert_eq!(tags.len(), sqes.iter().filter(|q| q.tag % 3 == s).count());
    }
    assert!(cqes.iter().all(|c| c.status == 0));
    let _ = Opcode::Nop;
    drop(dev);
    d.stop();
}

#[test]
fn idle_vgpud_burns_no_cpu() {
    let d = start(&[Vm::new("idle", 1)]);
    let dev = Device::connect(&d.socket("idle")).unwrap();
    dev.nop().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let ticks = || {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", d.child.id())).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let t0 = ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks() - t0;
    assert!(used <= 3, "idle vgpud used {used} clock ticks in 1 s");
    drop(dev);
    d.stop();
}

/// A wait with no time limit (vgpu's libcuda waits as NVIDIA's driver does) goes on while
/// vgpud is only slow (here stopped), and ends with `Stopped` once vgpud is gone.
#[test]
fn a_wait_without_limit_ends_when_vgpud_is_gone() {
    let mut d = start(&[Vm::new("gone", 1)]);
    let mut dev = Device::connect(&d.socket("gone")).unwrap();
    dev.set_timeout(Duration::MAX);
    dev.nop().unwrap();
    signal(&d.child, rustix::process::Signal::STOP);
    // The signal takes effect asynchronously: the nop must be sent once every thread of
    // vgpud is stopped.
    let tasks = format!("/proc/{}/task", d.child.id());
    let stopped = || {
        std::fs::read_dir(&tasks).unwrap().all(|t| {
            std::fs::read_to_string(t.unwrap().path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                == Some(true)
        })
    };
    let t0 = Instant::now();
    while !stopped() {
        assert!(t0.elapsed() < Duration::from_secs(10), "vgpud did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(dev.nop());
    });
    // Past the second after which a wait looks at the socket: vgpud is there, the wait goes on.
    if let Ok(r) = rx.recv_timeout(Duration::from_millis(2500)) {
        panic!("the wait ended while vgpud was only stopped: {r:?}");
    }
    let _ = d.child.kill();
    let _ = d.child.wait();
    let t0 = Instant::now();
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the wait did not end after vgpud was killed");
    assert!(matches!(got, Err(Error::Stopped)), "{got:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    waiter.join().unwrap();
}

/// A stream mark (a fence queued without waiting) passes once the work queued before it on its
/// stream is done, and only then; a mark on an idle stream passes at once.
#[test]
fn a_stream_mark_passes_when_the_work_before_it_is_done() {
    let d = start(&[Vm::new("marks", 3)]);
    let dev = Device::connect(&d.socket("marks")).unwrap();
    assert!(dev.takes_fences(), "the cpu backend takes fences");
    // 0.8 s of device work on stream 1 (the cpu backend's longest kernel is 1 s), then its
    // mark: the check right after cannot see it passed unless this thread stalls that long.
    let p = vgpu_abi::cmd::BusyParams {
        duration_us: 800_000,
        _pad: 0,
    };
    let busy = LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], p.as_bytes()).unwrap();
    let t0 = Instant::now();
    let running = dev.stream(1).launch_body(busy).unwrap();
    let behind = dev
        .mark_stream(1)
        .unwrap()
        .expect("stream 1 has a fence word");
    let idle = dev
        .mark_stream(2)
        .unwrap()
        .expect("stream 2 has a fence word");
    assert!(!dev.passed(&behind), "passed while the busy kernel runs");
    let until = |m, what: &str| {
        while !dev.passed(m) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{what} never passed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    until(&idle, "the idle stream's mark");
    until(&behind, "the busy stream's mark");
    assert!(
        t0.elapsed() >= Duration::from_millis(790),
        "passed after {:?}, before the kernel's 0.8 s",
        t0.elapsed()
    );
    running.wait().unwrap();
    drop(dev);
    d.stop();
}
