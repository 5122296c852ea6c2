//! Every `vgpuctl` subcommand against a live vgpud (cpu backend), with a guest `Device` where
//! the change must reach it: `set … priority` moves the guest's priority register, `reset`
//! fails the guest's next command and shows a new generation, and the guest goes on after
//! its own reset.
//!
//! vgpud is the binary `VGPU_VGPUD` names, else the `vgpud` built beside this `vgpuctl`
//! (`cargo test --workspace` builds it; `cargo test -p vgpuctl` alone needs
//! `cargo build -p vgpu-mediator` first, and says so).

use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vgpu_guest::Device;
use vgpu_mediator::testkit::{ConfigBuilder, PoolEntry, VmEntry};

struct Vgpud {
    child: Child,
    dir: tempfile::TempDir,
}

impl Vgpud {
    fn admin(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }
    fn socket(&self, vm: &str) -> PathBuf {
        self.dir.path().join(format!("{vm}.sock"))
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vgpud.log")).unwrap_or_default()
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vgpud_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VGPU_VGPUD") {
        return p.into();
    }
    let beside = Path::new(env!("CARGO_BIN_EXE_vgpuctl")).with_file_name("vgpud");
    assert!(
        beside.exists(),
        "no vgpud at {}: run `cargo build -p vgpu-mediator` (or set VGPU_VGPUD)",
        beside.display()
    );
    beside
}

/// vgpud with pools `gold` (id 1, weight 3) and `free` (id 2), VMs `a` (gold, priority 1) and
/// `b` (free), serving until dropped.
fn vgpud() -> Vgpud {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = ConfigBuilder::new()
        .backend("cpu")
        // Long enough for the busy kernel that `reset` must stop.
        .mediator("max_kernel_us", 5_000_000)
        .admin_socket(&d.join("admin.sock"))
        .pool(PoolEntry::new(1).name("gold").weight(3))
        .pool(PoolEntry::new(2).name("free"))
        .vm(VmEntry::new("a", d.join("a.sock"), 1).pool(1).priority(1))
        .vm(VmEntry::new("b", d.join("b.sock"), 2).pool(2));
    cfg.write(&d.join("vgpud.toml")).unwrap();
    let child = Command::new(vgpud_bin())
        .arg("--config")
        .arg(d.join("vgpud.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("vgpud.log")).unwrap())
        .spawn()
        .unwrap();
    let mut v = Vgpud { child, dir };
    let t0 = Instant::now();
    while !v.log().contains("vgpud ready") {
        assert!(
            v.child.try_wait().unwrap().is_none(),
            "vgpud exited:\n{}",
            v.log()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "vgpud not ready:\n{}",
            v.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    v
}

fn ctl_at(admin: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
        .arg("--admin-socket")
        .arg(admin)
        .args(args)
        .output()
        .unwrap()
}

/// Runs vgpuctl; returns stdout, failing with stderr if it failed.
fn ok(d: &Vgpud, args: &[&str]) -> String {
    let o = ctl_at(&d.admin(), args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(
        o.status.success(),
        "vgpuctl {args:?} failed: {err}\n{}",
        d.log()
    );
    out
}

/// Runs vgpuctl expecting failure; returns stderr.
fn fails(d: &Vgpud, args: &[&str]) -> String {
    let o = ctl_at(&d.admin(), args);
    assert_eq!(o.status.code(), Some(1), "vgpuctl {args:?}: {o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
}

fn vm<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

fn pool<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn read_commands_text_and_json() {
    let d = vgpud();
    assert_eq!(ok(&d, &["ping"]).trim(), "vgpud is up");
    let _dev = Device::connect(&d.socket("a")).unwrap();

    let stats = json(&ok(&d, &["stats"]));
    assert_eq!(vm(&stats, "a")["status"], "ready");
    assert_eq!(json(&ok(&d, &["stats", "--json"]))["vms"], stats["vms"]);

    let list = ok(&d, &["list"]);
    let a = list.lines().find(|l| l.starts_with("a ")).expect(&list);
    for want in ["gold", "ready", "1.0 GiB"] {
        assert!(a.contains(want), "{want:?} not in {a:?}");
    }
    assert!(list
        .lines()
        .any(|l| l.starts_with("b ") && l.contains("disconnected")));
    let lj = json(&ok(&d, &["list", "--json"]));
    assert_eq!(lj["pools"].as_array().unwrap().len(), 2);

    let show = json(&ok(&d, &["show", "a", "--json"]));
    assert_eq!(show["name"], "a");
    assert_eq!(show["pool"], "gold");
    assert_eq!(show["pool_weight"], 3);
    assert_eq!(show["priority"], 1);
    assert_eq!(show["device"], 0);
    assert_eq!(show["connected"], true);
    let text = ok(&d, &["show", "a"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("pool ") && l.ends_with("gold")),
        "{text}"
    );
    assert!(text.contains("mem_quota"), "{text}");
}

#[test]
fn set_priority_reaches_the_guest_register_and_the_stats() {
    let d = vgpud();
    let dev = Device::connect(&d.socket("a")).unwrap();
    assert_eq!(dev.info().priority, 1);
    let out = ok(&d, &["set", "a", "priority", "7"]);
    assert!(out.contains("priority 7"), "{out}");
    until("the guest's priority register follows", || {
        dev.info().priority == 7
    });
    assert_eq!(vm(&json(&ok(&d, &["stats"])), "a")["priority"], 7);
    assert_eq!(json(&ok(&d, &["show", "a", "--json"]))["priority"], 7);
    // The device goes on working under its new priority.
    let p = dev.alloc(4096).unwrap();
    dev.free(p).unwrap();
    // A VM that is not connected takes the value too (its guest reads it when it connects).
    ok(&d, &["set", "b", "priority", "3"]);
    let b = Device::connect(&d.socket("b")).unwrap();
    assert_eq!(b.info().priority, 3);
}

#[test]
fn set_weight_shows_in_the_stats() {
    let d = vgpud();
    let out = ok(&d, &["set", "pool", "gold", "weight", "9"]);
    assert!(out.contains("weight 9"), "{out}");
    let stats = json(&ok(&d, &["stats"]));
    assert_eq!(pool(&stats, "gold")["weight"], 9);
    assert_eq!(pool(&stats, "free")["weight"], 1);
    assert_eq!(json(&ok(&d, &["show", "a", "--json"]))["pool_weight"], 9);
    // Changes are logged with the peer that asked.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("admin request") && l.contains("SetWeight"))
        .unwrap_or_else(|| panic!("no audit line:\n{log}"));
    assert!(
        line.contains("uid=") && line.contains("outcome=\"done\""),
        "{line}"
    );
}

#[test]
fn set_persist_writes_the_config_file_and_survives_a_reload() {
    let d = vgpud();
    let file = d.dir.path().join("vgpud.toml");
    let before = std::fs::read_to_string(&file).unwrap();
    let out = ok(&d, &["set", "a", "priority", "6", "--persist"]);
    assert!(out.contains("written to vgpud's config file"), "{out}");
    ok(&d, &["set", "pool", "free", "weight", "4", "--persist"]);
    ok(&d, &["set", "pool", "gold", "weight", "8"]);
    let after: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    let vm_a = &after["vm"].as_array().unwrap()[0];
    assert_eq!(
        (vm_a["name"].as_str(), vm_a["priority"].as_integer()),
        (Some("a"), Some(6))
    );
    let pools = after["pool"].as_array().unwrap();
    assert_eq!(pools[1]["weight"].as_integer(), Some(4));
    assert_eq!(
        pools[0]["weight"].as_integer(),
        Some(3),
        "not persisted: the file keeps 3"
    );
    assert_ne!(before, toml::to_string(&after).unwrap());
    // A reload re-reads the file: the persisted values stay, the other goes back.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.child.id() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    until("the reload", || d.log().contains("reload applied"));
    let stats = json(&ok(&d, &["stats"]));
    assert_eq!(vm(&stats, "a")["priority"], 6);
    assert_eq!(pool(&stats, "free")["weight"], 4);
    assert_eq!(pool(&stats, "gold")["weight"], 3);
    // A file vgpud cannot write: refused, nothing changed.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let e = fails(&d, &["set", "a", "priority", "9", "--persist"]);
    assert!(
        e.contains("persist_failed") && e.contains("nothing changed"),
        "{e}"
    );
    assert_eq!(vm(&json(&ok(&d, &["stats"])), "a")["priority"], 6);
}

#[test]
fn reset_aborts_the_context_and_the_guest_goes_on() {
    let d = vgpud();
    let dev = Device::connect(&d.socket("a")).unwrap();
    let p = dev.alloc(1 << 20).unwrap();
    dev.copy_htod(p, &[7u8; 64]).unwrap();
    let before = dev.info();
    assert_eq!(json(&ok(&d, &["show", "a", "--json"]))["mem_used"], 1 << 20);

    let out = ok(&d, &["reset", "a"]);
    assert!(
        out.contains(&format!("generation {}", before.generation + 1)),
        "{out}"
    );
    let after = dev.info();
    assert_eq!(after.generation, before.generation + 1, "{after:?}");
    assert_eq!(after.status_name(), "error");
    assert_eq!(after.last_error, vgpu_abi::Status::Aborted as u32);
    // The old context is gone: its memory is freed and its handles are dead.
    assert_eq!(json(&ok(&d, &["show", "a", "--json"]))["mem_used"], 0);
    let e = dev.copy_htod(p, &[1u8; 64]).unwrap_err();
    assert!(e.to_string().contains("context lost"), "{e}");

    // The guest resets, as after any lost context, and goes on.
    dev.reset().unwrap();
    assert_eq!(dev.info().status_name(), "ready");
    assert!(dev.info().generation > after.generation);
    let q = dev.alloc(4096).unwrap();
    dev.copy_htod(q, &[9u8; 16]).unwrap();
    let mut back = [0u8; 16];
    dev.copy_dtoh(&mut back, q).unwrap();
    assert_eq!(back, [9u8; 16]);

    // A VM with no device cannot be reset.
    let e = fails(&d, &["reset", "b"]);
    assert!(
        e.contains("VM \"b\" is not connected") && e.contains("not_connected"),
        "{e}"
    );
}

#[test]
fn reset_aborts_work_on_the_device() {
    let d = vgpud();
    let dev = Device::connect(&d.socket("a")).unwrap();
    let kernel = Duration::from_secs(3);
    let t0 = Instant::now();
    let p = dev
        .stream(0)
        .launch_body(vgpu_abi::cmd::LaunchBody::busy(kernel.as_micros() as u32))
        .unwrap();
    // The kernel is on the device once vgpud took it (the cpu device runs it on a slot).
    std::thread::sleep(Duration::from_millis(200));
    ok(&d, &["reset", "a"]);
    match p.wait().unwrap_err() {
        vgpu_guest::Error::Command { status, .. } => {
            assert_eq!(status, vgpu_abi::Status::Aborted)
        }
        other => panic!("expected ABORTED, got {other}"),
    }
    assert!(
        t0.elapsed() < kernel,
        "the kernel was stopped, not waited for"
    );
    dev.reset().unwrap();
    dev.nop().unwrap();
}

#[test]
fn errors_are_clear_and_change_nothing() {
    let d = vgpud();
    let before = json(&ok(&d, &["stats"]));
    let e = fails(&d, &["show", "nosuch"]);
    assert!(
        e.contains("no VM named \"nosuch\" (VMs: a, b)") && e.contains("unknown_vm"),
        "{e}"
    );
    let e = fails(&d, &["reset", "nosuch"]);
    assert!(e.contains("unknown_vm"), "{e}");
    let e = fails(&d, &["set", "nosuch", "priority", "2"]);
    assert!(e.contains("unknown_vm"), "{e}");
    let e = fails(&d, &["set", "pool", "nosuch", "weight", "2"]);
    assert!(
        e.contains("no pool named \"nosuch\" (pools: gold, free)"),
        "{e}"
    );
    let e = fails(&d, &["set", "pool", "gold", "weight", "0"]);
    assert!(
        e.contains("out_of_range") && e.contains("1..=1000000"),
        "{e}"
    );
    let e = fails(&d, &["set", "pool", "gold", "weight", "1000001"]);
    assert!(e.contains("out_of_range"), "{e}");
    let e = fails(&d, &["set", "a", "priority", "-1"]);
    assert!(e.contains("priority must be an integer"), "{e}");
    let e = fails(&d, &["set", "a", "weight", "2"]);
    assert!(e.contains("usage: vgpuctl set VM priority N"), "{e}");
    assert_eq!(json(&ok(&d, &["stats"])), before, "nothing changed");

    let e = String::from_utf8_lossy(&ctl_at(&d.dir.path().join("missing.sock"), &["list"]).stderr)
        .into_owned();
    assert!(
        e.contains("no admin socket at") && e.contains("is vgpud running"),
        "{e}"
    );
}

#[test]
fn an_unprivileged_peer_is_told_permission_denied() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run vgpuctl as another uid");
        return;
    }
    let d = vgpud();
    let o = Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
        .arg("--admin-socket")
        .arg(d.admin())
        .arg("list")
        .uid(65534)
        .gid(65534)
        .output();
    let Ok(o) = o else {
        eprintln!("skipped: cannot run vgpuctl as uid 65534: {o:?}");
        return;
    };
    let e = String::from_utf8_lossy(&o.stderr);
    if e.contains("os error 13") && e.contains("exec") {
        eprintln!("skipped: vgpuctl is not executable by uid 65534");
        return;
    }
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    // The socket file is 0600 root's: the connect itself is refused.
    assert!(
        e.contains("permission denied connecting to") && e.contains("admin_group"),
        "{e}"
    );
}

/// `top` on a pseudo-terminal: it draws the VMs, redraws, quits on `q` and leaves the
/// terminal as it found it (alternate screen left, cursor shown).
#[test]
fn top_draws_on_a_terminal_and_quits_on_q() {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    let d = vgpud();
    let dev = Device::connect(&d.socket("a")).unwrap();
    dev.nop().unwrap();
    let (mut master, slave) = {
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: 30,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors it opened into `m` and `s`; the name and
        // termios pointers may be null, `ws` is a valid winsize.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
        unsafe {
            (
                std::fs::File::from(OwnedFd::from_raw_fd(m)),
                OwnedFd::from_raw_fd(s),
            )
        }
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgpuctl"))
        .arg("--admin-socket")
        .arg(d.admin())
        .args(["top", "--interval", "0.2"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let reader = {
        let mut m = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child closed its side.
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            all
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    master.write_all(b"q").unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "top did not quit on q"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    drop(master);
    let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    for want in [
        "VMs 1/2 connected",
        "gold",
        "free",
        "ready",
        "disconnected",
        "CMD/S",
    ] {
        assert!(out.contains(want), "{want:?} not drawn:\n{out:?}");
    }
    assert!(
        out.contains("\x1b[?1049h"),
        "the alternate screen was not entered"
    );
    let left = out
        .rfind("\x1b[?1049l")
        .expect("the alternate screen was left");
    assert!(left > out.rfind("\x1b[?1049h").unwrap());
}
