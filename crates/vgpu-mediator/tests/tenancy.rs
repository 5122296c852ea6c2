//! Tenancy under failure: a runaway kernel hits the kernel time limit while a neighbour keeps
//! its latency; a client killed in the middle of its work is freed at once and its socket
//! serves the next one; a guest learns that vgpud went away instead of hanging.

mod common;

use common::*;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::LaunchBody;
use vgpu_abi::{DeviceStatus, Status};
use vgpu_guest::{Device, Error};

/// The tests of this file run one at a time: two of them measure a neighbour's latency, which
/// a concurrent test on the same small machine would disturb.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() * 99 / 100]
}

/// Round trips of a small copy and a NOP, as the neighbour's "normal work".
fn neighbour_round_trips(dev: &Device, buf: u64, n: usize) -> Vec<Duration> {
    let data = vec![7u8; 4096];
    (0..n)
        .map(|_| {
            let t0 = Instant::now();
            dev.copy_htod(buf, &data).unwrap();
            dev.nop().unwrap();
            t0.elapsed()
        })
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A VM whose kernel never ends is stopped by the kernel time limit with a clear status, again
/// and again, while a neighbour on the same device keeps its latency.
#[test]
fn kernel_time_limit_stops_a_runaway_and_spares_the_neighbour() {
    let _serial = serial();
    let limit = Duration::from_millis(300);
    // Two execution slots: like a GPU, the device runs another context's work next to a long
    // kernel (a one-slot device is strictly serial: there the limit is all that bounds the
    // neighbour's wait).
    let d = start_with(
        &[Vm::new("runaway", 1), Vm::new("victim", 2)],
        ConfigBuilder::new()
            .mediator("max_kernel_us", 600_000_000)
            .mediator("cpu_slots", 2)
            .limits("max_kernel_ms", 300),
    );
    let victim = Device::connect(&d.socket("victim")).unwrap();
    let buf = victim.alloc(4096).unwrap();
    neighbour_round_trips(&victim, buf, 200);
    let alone = p99(neighbour_round_trips(&victim, buf, 2000));

    let stop = Arc::new(AtomicBool::new(false));
    let timeouts = Arc::new(AtomicU64::new(0));
    let sock = d.socket("runaway");
    let (stop2, timeouts2) = (stop.clone(), timeouts.clone());
    let runaway = std::thread::spawn(move || {
        let dev = Device::connect(&sock).unwrap();
        // Waits without spinning: on a 2-core machine a spinning waiter would take the CPU
        // the neighbour and vgpud need, which is not what this test measures.
        dev.set_eager_wait(false);
        while !stop2.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            // 10 minutes: only the time limit ends it.
            let e = dev
                .stream(0)
                .launch_body(LaunchBody::busy(600_000_000))
                .unwrap()
                .wait()
                .unwrap_err();
            let took = t0.elapsed();
            assert_eq!(e.status(), Some(Status::KernelTimeout), "{e}");
            assert!(took >= limit && took < limit * 4, "stopped after {took:?}");
            let info = dev.info();
            assert_eq!(info.status, Some(DeviceStatus::Error));
            assert_eq!(info.last_error, Status::KernelTimeout as u32);
            // Until it resets, its context is gone.
            dev.nop().unwrap();
            assert_eq!(
                dev.alloc(16).unwrap_err().status(),
                Some(Status::ContextLost)
            );
            dev.reset().unwrap();
            timeouts2.fetch_add(1, Ordering::Relaxed);
        }
    });
    std::thread::sleep(limit / 2);
    let t0 = Instant::now();
    let mut under = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        under.extend(neighbour_round_trips(&victim, buf, 200));
    }
    stop.store(true, Ordering::Relaxed);
    runaway.join().unwrap();
    let contended = p99(under);
    let n = timeouts.load(Ordering::Relaxed);
    eprintln!(
        "neighbour p99 alone {alone:?}, while a runaway hit the limit {n} times: {contended:?}"
    );
    assert!(n >= 3, "only {n} time-limit resets in 3 s");
    assert_eq!(d.vm_stats("runaway").kernel_timeouts, n);
    // What this test guards against is the neighbour being stalled: by the runaway until the
    // limit (300 ms), or by a context's start (tens of ms). The ratio goal (p99 under 2× alone)
    // is measured by `vgpu-bench tenancy` in a release build; the p99s of a debug build on a
    // 2-core machine move by milliseconds with whatever else runs, so the bound here is 2× the
    // alone p99 but at least 5 ms.
    let bound = (2 * alone).max(Duration::from_millis(5));
    assert!(
        contended < bound,
        "neighbour p99 {contended:?} vs alone {alone:?}"
    );
}

/// The work of [`killed_client_is_freed_and_its_socket_serves_the_next`]'s child process:
/// attach and keep the device busy until killed.
#[test]
#[ignore = "run as a child process by the kill test"]
fn child_client() {
    let Ok(sock) = std::env::var("VGPU_CHILD_SOCKET") else {
        return;
    };
    let dev = Device::connect(std::path::Path::new(&sock)).unwrap();
    let mode = std::env::var("VGPU_CHILD_MODE").unwrap();
    let len = 8 << 20;
    let p = dev.alloc(len as u64).unwrap();
    let data = vec![0x5au8; len];
    loop {
        match mode.as_str() {
            "copy" => dev.copy_htod(p, &data).unwrap(),
            _ => dev.busy(2_000_000).unwrap(),
        }
    }
}

/// A client killed in the middle of a large copy or of a long kernel (what a SIGKILLed QEMU
/// looks like to vgpud): its context, memory, queued work and fds are freed within 1 s, the
/// same socket serves the next client, and a neighbour's results stay bit-exact throughout.
#[test]
fn killed_client_is_freed_and_its_socket_serves_the_next() {
    let _serial = serial();
    let mut big = Vm::new("victim", 1);
    big.shm = 16 << 20;
    let d = start_with(
        &[big, Vm::new("bystander", 2)],
        ConfigBuilder::new().mediator("max_kernel_us", 5_000_000),
    );
    let pid = d.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let (stop2, rounds2, sock) = (stop.clone(), rounds.clone(), d.socket("bystander"));
    let bystander = std::thread::spawn(move || {
        let dev = Device::connect(&sock).unwrap();
        let mut rng = Rng(5);
        while !stop2.load(Ordering::Relaxed) {
            workload(&dev, &mut rng);
            rounds2.fetch_add(1, Ordering::Relaxed);
        }
    });
    // The baseline: the bystander attached, and the victim attached once and gone again (so
    // that it counts what an attached VM holds at rest). The executor closes a departed VM's
    // files right after it marks the VM disconnected: a count taken in between is only higher.
    drop(Device::connect(&d.socket("victim")).unwrap());
    let t0 = Instant::now();
    loop {
        let s = d.stats();
        let (victim, bystander) = (s.vm("victim").unwrap(), s.vm("bystander").unwrap());
        if victim.connects == 1 && !victim.connected && bystander.connected {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    let fds0 = open_fds(pid);
    for mode in ["copy", "kernel"] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_client", "--ignored", "--nocapture"])
            .env("VGPU_CHILD_SOCKET", d.socket("victim"))
            .env("VGPU_CHILD_MODE", mode)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let busy = |s: &VmSnapshot| match mode {
            "copy" => s.bytes_in > (64 << 20),
            _ => s.device_ns > 0 || s.commands > 2,
        };
        let t0 = Instant::now();
        while !busy(&d.vm_stats("victim")) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{mode}: the child never got going"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if mode == "kernel" {
            std::thread::sleep(Duration::from_millis(300));
        }
        signal(&child, rustix::process::Signal::KILL);
        let killed = Instant::now();
        child.wait().unwrap();
        loop {
            let s = d.vm_stats("victim");
            if !s.connected && s.mem_used == 0 && s.queued == 0 {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "{mode}: not freed in 1 s: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let freed = killed.elapsed();
        // fds come back as the last references go (the executor's and the transport's).
        while open_fds(pid) > fds0 {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "{mode}: fds {} > {fds0}",
                open_fds(pid)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        eprintln!("{mode}: freed {freed:?} after SIGKILL");
        // The same socket serves the next client at once.
        let next = Device::connect(&d.socket("victim")).unwrap();
        workload(&next, &mut Rng(6));
        drop(next);
    }
    stop.store(true, Ordering::Relaxed);
    bystander.join().unwrap();
    assert!(rounds.load(Ordering::Relaxed) > 0);
}

/// vgpud stopping (SIGTERM) while a guest runs: the guest gets `Error::Stopped` at once,
/// including a thread blocked waiting for a long kernel. Killed outright (SIGKILL), nothing
/// can tell the guest: it gets its timeout error instead of hanging.
#[test]
fn a_guest_learns_that_vgpud_went_away() {
    let _serial = serial();
    let d = start_with(
        &[Vm::new("g", 1)],
        ConfigBuilder::new().mediator("max_kernel_us", 5_000_000),
    );
    let mut dev = Device::connect(&d.socket("g")).unwrap();
    dev.set_timeout(Duration::from_secs(30));
    dev.nop().unwrap();
    // A thread blocked in a synchronize behind a 3 s kernel (a launch alone on a GPU may
    // complete at once; the synchronize waits for the kernel on every backend).
    drop(
        dev.stream(0)
            .launch_body(LaunchBody::busy(3_000_000))
            .unwrap(),
    );
    let (t0, e) = std::thread::scope(|s| {
        let waiter = s.spawn(|| dev.synchronize());
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        assert!(d.stop().success());
        (t0, waiter.join().unwrap().unwrap_err())
    });
    assert!(matches!(e, Error::Stopped), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(matches!(dev.nop().unwrap_err(), Error::Stopped));
    assert_eq!(dev.info().status, Some(DeviceStatus::Stopped));
    drop(dev);

    let d = start(&[Vm::new("h", 1)]);
    let mut dev = Device::connect(&d.socket("h")).unwrap();
    dev.set_timeout(Duration::from_secs(1));
    dev.nop().unwrap();
    let mut d = d;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let t0 = Instant::now();
    let e = dev.nop().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// Run as a child by [`vm_sockets_have_the_configured_owner_group_and_mode`]: tries to
/// connect to `VGPU_CHILD_CONNECT` and exits 13 if that was refused for permissions, 0 if it
/// connected.
#[test]
#[ignore = "run as a child process by the socket permission test"]
fn child_connect() {
    let Ok(sock) = std::env::var("VGPU_CHILD_CONNECT") else {
        return;
    };
    match std::os::unix::net::UnixStream::connect(sock) {
        Ok(_) => std::process::exit(0),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => std::process::exit(13),
        Err(e) => panic!("connect: {e}"),
    }
}

/// Who may connect to a VM's socket is the config's `socket_owner` / `socket_group` /
/// `socket_mode` (default 0600): libvirt's QEMU user, or a container's, gets exactly its VM.
#[test]
fn vm_sockets_have_the_configured_owner_group_and_mode() {
    let _serial = serial();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let shared = Vm::new("shared", 1)
        .set("socket_group", 4242)
        .set("socket_mode", "0660");
    let d = start(&[shared, Vm::new("private", 2)]);
    let meta = std::fs::metadata(d.socket("shared")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 4242);
    let meta = std::fs::metadata(d.socket("private")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "the default");
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED (not root): connecting as another user needs root");
        return;
    }
    // The dir of the sockets must be searchable by the other users for the test.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let try_as = |uid: u32, gid: u32, sock: &str| -> i32 {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_connect", "--ignored", "--nocapture"])
            .env("VGPU_CHILD_CONNECT", d.socket(sock))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid) between fork and
        // exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.status().unwrap().code().unwrap()
    };
    assert_eq!(
        try_as(65534, 65534, "shared"),
        13,
        "not in the group: refused"
    );
    assert_eq!(try_as(65534, 4242, "shared"), 0, "in the group: connects");
    assert_eq!(try_as(65534, 4242, "private"), 13, "0600: only the owner");
}

/// A VM that resets in a loop, each reset a new worker process (`fault_isolation =
/// "process"`), does not stall a neighbour on the same device: workers start without the
/// executor waiting for them, and resets come at most every 100 ms.
#[test]
fn a_reset_storm_does_not_stall_the_neighbour() {
    let _serial = serial();
    let d = start_with(
        &[Vm::new("storm", 1), Vm::new("victim", 2)],
        ConfigBuilder::new()
            .mediator("fault_isolation", "process")
            .mediator("cpu_slots", 2),
    );
    let victim = Device::connect(&d.socket("victim")).unwrap();
    let buf = victim.alloc(4096).unwrap();
    neighbour_round_trips(&victim, buf, 200);
    let alone = p99(neighbour_round_trips(&victim, buf, 2000));
    let stop = Arc::new(AtomicBool::new(false));
    let resets = Arc::new(AtomicU64::new(0));
    let (stop2, resets2, sock) = (stop.clone(), resets.clone(), d.socket("storm"));
    let storm = std::thread::spawn(move || {
        let dev = Device::connect(&sock).unwrap();
        dev.set_eager_wait(false);
        while !stop2.load(Ordering::Relaxed) {
            dev.reset().unwrap();
            // The new context serves once its worker is up.
            dev.alloc(64).unwrap();
            resets2.fetch_add(1, Ordering::Relaxed);
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let mut under = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        under.extend(neighbour_round_trips(&victim, buf, 200));
    }
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    let contended = p99(under);
    let n = resets.load(Ordering::Relaxed);
    eprintln!("neighbour p99 alone {alone:?}, during {n} resets (a worker each): {contended:?}");
    assert!(n >= 5, "only {n} resets in 3 s");
    // As in the runaway test: a stall, not a ratio (see there). Each reset forks and execs a
    // worker, CPU that a 2-core host under other load takes from the neighbour too (its p99
    // reached 10 ms with 4.5 ms alone while builds ran); the floor is above that noise.
    let bound = (2 * alone).max(Duration::from_millis(20));
    assert!(
        contended < bound,
        "neighbour p99 {contended:?} vs alone {alone:?}"
    );
}
