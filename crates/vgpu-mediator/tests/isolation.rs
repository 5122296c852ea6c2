//! Fault isolation through worker processes (`fault_isolation = "process"`), on the cpu
//! backend so that it runs everywhere: real vgpud, real workers, real fds and signals.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::{Builtin, LaunchBody};
use vgpu_abi::{DeviceStatus, Status};
use vgpu_guest::{Device, Error};

fn isolated() -> ConfigBuilder {
    ConfigBuilder::new()
        .mediator("fault_isolation", "process")
        .mediator("max_kernel_us", 5_000_000)
}

fn status_of(e: Error) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("expected a command error, got {e:?}"))
}

/// Process ids whose parent is `parent`.
fn children(parent: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if ppid == Some(parent) && !zombie {
            out.insert(pid);
        }
    }
    out
}

/// Waits until vgpud has exactly `n` live workers; returns them.
fn workers(d: &Vgpud, n: usize) -> BTreeSet<u32> {
    let t0 = Instant::now();
    loop {
        let w = children(d.child.id());
        if w.len() == n {
            return w;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "expected {n} workers, have {w:?}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether an fd target is a shared library: the dynamic loader holds one open for the instant
/// it maps it (glibc loads `libgcc_s` lazily, e.g. when a thread exits), which a listing can
/// catch (seen: a worker listed with fd 6 = libgcc_s.so.1).
fn is_shared_library(target: &str) -> bool {
    let name = target.rsplit('/').next().unwrap_or(target);
    target.starts_with('/') && (name.ends_with(".so") || name.contains(".so."))
}

/// `fd number → link target` of a process, shared libraries being loaded left out.
fn fds(pid: u32) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let t = std::fs::read_link(e.path()).ok()?;
            Some((n, t.display().to_string()))
        })
        .filter(|(_, t)| !is_shared_library(t))
        .collect();
    v.sort();
    v
}

#[test]
fn each_vm_gets_a_worker_holding_only_its_own_memory() {
    let d = start_with(&[Vm::new("iso-a", 1), Vm::new("iso-b", 2)], isolated());
    let a = Device::connect(&d.socket("iso-a")).unwrap();
    let b = Device::connect(&d.socket("iso-b")).unwrap();
    let ws = workers(&d, 2);
    // Work answered: each worker's context (and its backend's own fds) exists.
    workload(&a, &mut Rng(1));
    workload(&b, &mut Rng(2));
    let mut regions = BTreeSet::new();
    for &w in &ws {
        let f = fds(w);
        let numbers: Vec<u32> = f.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6, 7], "worker {w} holds {f:?}");
        assert!(f[3].1.contains("memfd:vgpu-iso-"), "fd 3 = {}", f[3].1);
        assert!(
            f[4].1.contains("memfd:vgpu-worker-ring"),
            "fd 4 = {}",
            f[4].1
        );
        assert!(f[5].1.contains("eventfd"), "fd 5 = {}", f[5].1);
        // vgpud's wake eventfd, and the worker's own: its cpu backend's timerfd.
        assert!(f[6].1.contains("eventfd"), "fd 6 = {}", f[6].1);
        assert!(f[7].1.contains("timerfd"), "fd 7 = {}", f[7].1);
        regions.insert(f[3].1.clone());
        let cmdline = std::fs::read_to_string(format!("/proc/{w}/cmdline")).unwrap();
        assert!(cmdline.contains("--worker"), "{cmdline:?}");
    }
    assert_eq!(
        regions.len(),
        2,
        "each worker maps its own VM's region: {regions:?}"
    );
    assert!(d.log_text().contains("each VM in its own worker process"));
    drop((a, b));
    // A VM that leaves takes its worker with it.
    workers(&d, 0);
    assert!(d.stop().success());
}

#[test]
fn reset_kills_the_worker_even_mid_kernel_and_starts_a_fresh_one() {
    let d = start_with(&[Vm::new("rst", 1)], isolated());
    let dev = Device::connect(&d.socket("rst")).unwrap();
    let old = workers(&d, 1);
    let p = dev.alloc(1 << 20).unwrap();
    dev.memset_d8(p, 7, 1 << 20).unwrap();
    // A 4 s kernel is on the device when the guest resets.
    let s = dev.create_stream();
    let busy = LaunchBody::new(
        Builtin::Busy.handle(),
        [1; 3],
        [1; 3],
        &4_000_000u64.to_le_bytes(),
    )
    .unwrap();
    let pending = s.launch_body(busy).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    dev.reset().unwrap();
    // The first command after the reset runs on the fresh worker.
    dev.nop().unwrap();
    let took = t0.elapsed();
    drop(pending);
    eprintln!("reset + first command (kill, respawn, context ready) took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "reset waited for the kernel: {took:?}"
    );
    assert_eq!(dev.info().status, Some(DeviceStatus::Ready));
    assert_eq!(dev.mem_info().unwrap().0, 0);
    let new = workers(&d, 1);
    assert!(
        old.is_disjoint(&new),
        "same worker after reset: {old:?} {new:?}"
    );
    workload(&dev, &mut Rng(3));
    drop(dev);
    assert!(d.stop().success());
}

#[test]
fn a_worker_that_dies_loses_only_its_vm_and_never_hangs_vgpud() {
    let d = start_with(&[Vm::new("die", 1), Vm::new("live", 2)], isolated());
    let a = Device::connect(&d.socket("die")).unwrap();
    let before = workers(&d, 1);
    let b = Device::connect(&d.socket("live")).unwrap();
    let both = workers(&d, 2);
    let a_worker = *before.iter().next().unwrap();
    let keep = b.alloc(4096).unwrap();
    b.memset_d32(keep, 0x1234_5678, 1024).unwrap();
    let p = a.alloc(4096).unwrap();
    // Work on A's device when its worker dies: it fails, it does not hang.
    let s = a.create_stream();
    let busy = LaunchBody::new(
        Builtin::Busy.handle(),
        [1; 3],
        [1; 3],
        &2_000_000u64.to_le_bytes(),
    )
    .unwrap();
    let pending = s.launch_body(busy).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(a_worker as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let t0 = Instant::now();
    assert_eq!(status_of(pending.wait().unwrap_err()), Status::ContextLost);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(
        status_of(a.memset_d8(p, 1, 16).unwrap_err()),
        Status::ContextLost
    );
    assert_eq!(a.info().status, Some(DeviceStatus::Error));
    // B never noticed.
    let mut back = vec![0u8; 4096];
    b.copy_dtoh(&mut back, keep).unwrap();
    assert!(back.chunks(4).all(|c| c == 0x1234_5678u32.to_le_bytes()));
    workload(&b, &mut Rng(4));
    assert_eq!(d.vm_stats("live").errors, 0);
    // A resets onto a fresh worker and carries on.
    a.reset().unwrap();
    assert_eq!(a.info().status, Some(DeviceStatus::Ready));
    workload(&a, &mut Rng(5));
    let after = workers(&d, 2);
    assert!(!after.contains(&a_worker));
    assert!(
        after.is_superset(&(&both - &before)),
        "B's worker was replaced"
    );
    let mut d = d;
    assert!(d.alive());
    drop((a, b));
    assert!(d.stop().success());
}

/// The cost of isolation on the GPU host (`VGPU_TEST_BACKEND=cuda`, run with `--ignored
/// --nocapture`): a null kernel's launch + completion round trip and the rate of 10 000
/// asynchronous launches, with every context inside vgpud and with one worker per VM.
#[test]
#[ignore = "timing; run by hand on the GPU host"]
fn isolation_cost_on_the_gpu() {
    use vgpu_abi::cmd::Command;
    if std::env::var("VGPU_TEST_BACKEND").as_deref() != Ok("cuda") {
        eprintln!("SKIPPED (no GPU): isolation_cost_on_the_gpu (set VGPU_TEST_BACKEND=cuda)");
        return;
    }
    let run = |mode: &str| {
        let cfg = ConfigBuilder::new()
            .backend("cuda")
            .mediator("fault_isolation", mode);
        let how = Launch {
            ready_within: Duration::from_secs(60),
            ..Launch::default()
        };
        let d = launch(&[Vm::new("cost", 1)], cfg, how);
        let dev = Device::connect(&d.socket("cost")).unwrap();
        for _ in 0..500 {
            dev.busy(0).unwrap();
        }
        let mut rt: Vec<Duration> = (0..5000)
            .map(|_| {
                let t = Instant::now();
                dev.busy(0).unwrap();
                t.elapsed()
            })
            .collect();
        rt.sort();
        let body =
            LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], &0u64.to_le_bytes()).unwrap();
        let sqes: Vec<_> = (0..10_000u64)
            .map(|i| Command::Launch { launch: body }.encode(0, i))
            .collect();
        let t = Instant::now();
        let cqes = dev.submit_batch(&sqes).unwrap();
        let rate = sqes.len() as f64 / t.elapsed().as_secs_f64();
        assert!(cqes.iter().all(|c| c.status == 0));
        drop(dev);
        d.stop();
        (rt[rt.len() / 2], rt[rt.len() * 99 / 100], rate)
    };
    let none = run("none");
    let proc = run("process");
    for (m, (p50, p99, rate)) in [("none", none), ("process", proc)] {
        eprintln!("fault_isolation={m:8} null launch round trip p50 {p50:?} p99 {p99:?}, async {rate:.0} launches/s");
    }
    eprintln!(
        "process/none: round trip p50 {:.2}x, async rate {:.2}x",
        proc.0.as_secs_f64() / none.0.as_secs_f64(),
        proc.2 / none.2
    );
}

#[test]
fn workers_do_not_inherit_the_executor_pinning() {
    let cpus = allowed_cpus();
    let last = *cpus.last().unwrap();
    let cfg = isolated().mediator("executor_cpus", vec![last as i64]);
    let d = start_with(&[Vm::new("pin-a", 1)], cfg);
    let a = Device::connect(&d.socket("pin-a")).unwrap();
    a.nop().unwrap();
    let w = workers(&d, 1);
    let proc_dir = |pid: u32| std::path::PathBuf::from(format!("/proc/{pid}"));
    let main = cpus_allowed(&proc_dir(d.child.id()));
    for pid in w {
        assert_eq!(
            cpus_allowed(&proc_dir(pid)),
            main,
            "worker {pid} has vgpud's CPUs"
        );
    }
    if cpus.len() > 1 {
        assert_ne!(main, last.to_string(), "vgpud's main thread is not pinned");
    }
    drop(a);
    d.stop();
}
