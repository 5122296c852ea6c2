//! The scheduler end to end: a real vgpud (cpu backend) with process clients. Priorities,
//! pool quotas, multi-device placement, SIGHUP reload and config validation.

mod common;

use common::*;
use std::time::{Duration, Instant};
use vgpu_abi::Status;
use vgpu_guest::{Device, Error};

fn status_of(e: Error) -> Status {
    match e {
        Error::Command { status, .. } => status,
        other => panic!("expected a command error, got {other:?}"),
    }
}

fn wait_for(what: &str, d: &Vgpud, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One slot: a high-priority kernel overtakes a long backlog of low-priority kernels (it waits
/// at most for the one that runs), where `fifo` makes it wait for the whole backlog.
#[test]
fn high_priority_overtakes_a_low_priority_backlog() {
    for (policy, fast) in [("priority", true), ("fifo", false)] {
        let mut hp = Vm::new("hp", 1);
        hp.priority = 3;
        let d = start_with(
            &[hp, Vm::new("lp", 2)],
            &format!("cpu_slots = 1\n[scheduler]\npolicy = \"{policy}\"\n"),
        );
        let hpd = Device::connect(&d.socket("hp")).unwrap();
        let lpd = Device::connect(&d.socket("lp")).unwrap();
        // 30 × 2 ms on two streams: a 60 ms backlog.
        let backlog = std::thread::spawn(move || {
            let sqes: Vec<_> = (0..30u64)
                .map(|i| busy_sqe(2000, (i % 2) as u32, i))
                .collect();
            let c = lpd.submit_batch(&sqes).unwrap();
            assert!(c.iter().all(|c| c.status == 0));
        });
        // Wait until the backlog is queued in vgpud.
        wait_for("the backlog", &d, || {
            d.vm_stats("lp")["queued"].as_u64().unwrap() >= 20
        });
        let t0 = Instant::now();
        hpd.busy(1000).unwrap();
        let dt = t0.elapsed();
        if fast {
            assert!(
                dt < Duration::from_millis(15),
                "priority: high-priority kernel took {dt:?}"
            );
        } else {
            assert!(
                dt > Duration::from_millis(25),
                "fifo: high-priority kernel took only {dt:?}"
            );
        }
        backlog.join().unwrap();
        d.stop();
    }
}

fn busy_sqe(us: u32, stream: u32, tag: u64) -> vgpu_abi::cmd::Sqe {
    use vgpu_abi::cmd::{Builtin, BusyParams, Command, LaunchBody};
    use zerocopy::IntoBytes;
    let p = BusyParams {
        duration_us: us,
        _pad: 0,
    };
    let l = LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], p.as_bytes()).unwrap();
    Command::Launch { launch: l }.encode(stream, tag)
}

const POOLS: &str = "[[pool]]\nid = 0\nname = \"small\"\nmem_quota = \"1MiB\"\n\
                     [[pool]]\nid = 1\nname = \"big\"\n";

/// A pool's quota is shared by its VMs: an allocation over it fails in that VM only, and freed
/// memory (or a VM that leaves) returns to it.
#[test]
fn pool_quota_is_shared_and_returned() {
    let mut a = Vm::new("a", 1);
    a.quota = 1 << 20;
    let mut b = Vm::new("b", 2);
    b.quota = 1 << 20;
    let mut c = Vm::new("c", 3);
    c.pool_id = 1;
    let d = start_with(&[a, b, c], POOLS);
    let da = Device::connect(&d.socket("a")).unwrap();
    let db = Device::connect(&d.socket("b")).unwrap();
    let dc = Device::connect(&d.socket("c")).unwrap();
    let pa = da.alloc(768 << 10).unwrap();
    // b is under its own quota, but the pool has only 256 KiB left.
    assert_eq!(
        status_of(db.alloc(512 << 10).unwrap_err()),
        Status::QuotaExceeded
    );
    let pb = db.alloc(256 << 10).unwrap();
    // Another pool is not affected.
    let pc = dc.alloc(8 << 20).unwrap();
    let pool = |i: usize| d.stats()["pools"][i]["mem_used"].as_u64().unwrap();
    assert_eq!(pool(0), 1 << 20);
    assert_eq!(pool(1), 8 << 20);
    // Freed memory returns to the pool.
    da.free(pa).unwrap();
    let pb2 = db.alloc(512 << 10).unwrap();
    assert_eq!(pool(0), 768 << 10);
    // A VM that leaves returns its memory too.
    drop(db);
    wait_for("b's memory to return", &d, || pool(0) == 0);
    da.alloc(1 << 20).unwrap();
    let _ = (pb, pb2, pc);
    workload(&dc, &mut Rng(3));
    d.stop();
}

/// Several cpu devices: a pool over devices {0,1} places its VMs two and two (least loaded
/// first); a pool pinned to device 1 stays there. Placement is logged and in `stats`.
#[test]
fn vms_are_placed_on_the_least_loaded_device_of_their_pool() {
    let mut vms: Vec<Vm> = ["v0", "v1", "v2", "v3"]
        .iter()
        .enumerate()
        .map(|(i, n)| Vm::new(n, i as u32 + 1))
        .collect();
    let mut pinned = Vm::new("pinned", 9);
    pinned.pool_id = 1;
    vms.push(pinned);
    let d = start_with(
        &vms,
        "cpu_devices = 2\ncpu_slots = 2\n[[pool]]\nid = 0\ngpus = [0, 1]\n\
         [[pool]]\nid = 1\ngpus = [1]\n",
    );
    let s = d.stats();
    assert_eq!(s["devices"].as_array().unwrap().len(), 2, "{s}");
    let devs: Vec<Device> = ["v0", "v1", "v2", "v3", "pinned"]
        .iter()
        .map(|n| Device::connect(&d.socket(n)).unwrap())
        .collect();
    let placed = |n: &str| d.vm_stats(n)["device"].as_i64();
    let on: Vec<i64> = ["v0", "v1", "v2", "v3"]
        .iter()
        .map(|n| placed(n).unwrap())
        .collect();
    assert_eq!(on.iter().filter(|&&x| x == 0).count(), 2, "{on:?}");
    assert_eq!(on.iter().filter(|&&x| x == 1).count(), 2, "{on:?}");
    assert_eq!(placed("pinned"), Some(1));
    for (i, dev) in devs.iter().enumerate() {
        workload(dev, &mut Rng(i as u64 + 1));
    }
    let log = d.log_text();
    assert_eq!(log.matches("VM placed").count(), 5, "{log}");
    assert!(log.contains("vm=pinned device=1"), "{log}");
    // Leaving frees the placement; the next VM goes to the emptier device.
    let left = on[0];
    drop(devs);
    wait_for("disconnects", &d, || placed("v0").is_none());
    let again = Device::connect(&d.socket("v1")).unwrap();
    assert!(placed("v1").is_some());
    let _ = left;
    drop(again);
    d.stop();
}

/// SIGHUP applies priorities, quotas and weights (the guest's registers follow) and refuses
/// unsafe changes with a logged error while vgpud keeps running.
#[test]
fn sighup_reloads_what_is_safe() {
    let mut a = Vm::new("a", 1);
    a.priority = 1;
    a.quota = 4 << 20;
    let vms = [a, Vm::new("b", 2)];
    let d = start_with(&vms, "[[pool]]\nid = 0\nweight = 2\n");
    let dev = Device::connect(&d.socket("a")).unwrap();
    assert_eq!(dev.info().priority, 1);
    assert_eq!(dev.mem_info().unwrap(), (0, 4 << 20));
    let cfg_path = d.dir.path().join("vgpud.toml");
    let write = |vms: &[Vm], extra: &str| {
        std::fs::write(&cfg_path, config_text(d.dir.path(), vms, extra)).unwrap();
        signal(&d.child, rustix::process::Signal::HUP);
    };

    let mut a2 = Vm::new("a", 1);
    a2.priority = 6;
    a2.quota = 1 << 20;
    let vms2 = [a2, Vm::new("b", 2)];
    write(&vms2, "[[pool]]\nid = 0\nweight = 5\n");
    wait_for("the new priority register", &d, || dev.info().priority == 6);
    assert_eq!(dev.mem_info().unwrap(), (0, 1 << 20));
    assert_eq!(
        status_of(dev.alloc(2 << 20).unwrap_err()),
        Status::QuotaExceeded
    );
    let s = d.stats();
    assert_eq!(s["pools"][0]["weight"], 5);
    assert_eq!(d.vm_stats("a")["priority"], 6);
    assert_eq!(d.vm_stats("a")["mem_quota"], 1 << 20);

    // Unsafe: a VM's id changes. Refused, logged, nothing applied, vgpud alive.
    let mut a3 = Vm::new("a", 7);
    a3.priority = 2;
    write(&[a3, Vm::new("b", 2)], "[[pool]]\nid = 0\nweight = 5\n");
    wait_for("the refusal", &d, || {
        d.log_text().contains("reload refused")
    });
    assert!(d.log_text().contains("vm_id"), "{}", d.log_text());
    // Invalid: refused too.
    std::fs::write(&cfg_path, "[[vm]]\nname = 1\n").unwrap();
    signal(&d.child, rustix::process::Signal::HUP);
    wait_for("the second refusal", &d, || {
        d.log_text().matches("reload refused").count() >= 2
    });
    let mut dd = d;
    assert!(dd.alive());
    assert_eq!(dev.info().priority, 6);
    workload(&dev, &mut Rng(5));
    drop(dev);
    dd.stop();
}

fn run_vgpud(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vgpud.toml");
    std::fs::write(&cfg, text.replace("DIR", &dir.path().display().to_string())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Bad pool configurations stop vgpud with exit code 2 and a clear message.
#[test]
fn bad_pool_configs_exit_2() {
    let vm = "[[vm]]\nname = \"a\"\nsocket = \"DIR/a.sock\"\nvm_id = 1\npool = 4\nmem_quota = \"2MiB\"\n";
    let cases = [
        (
            format!("[mediator]\nbackend = \"cpu\"\n[[pool]]\nid = 3\n{vm}"),
            "unknown pool 4",
        ),
        (
            format!("[mediator]\nbackend = \"cpu\"\n[[pool]]\nid = 4\nmem_quota = \"1MiB\"\n{vm}"),
            "above its pool",
        ),
        (
            format!("[mediator]\nbackend = \"cpu\"\n[[pool]]\nid = 4\ngpus = [2]\n{vm}"),
            "gpu 2 out of range",
        ),
        (
            format!("[mediator]\nbackend = \"cpu\"\n[[pool]]\nid = 4\n[[pool]]\nid = 4\n{vm}"),
            "duplicate pool id 4",
        ),
    ];
    for (text, want) in cases {
        let (code, err) = run_vgpud(&text);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
}
