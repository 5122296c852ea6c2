//! The admin socket against a real vgpud: bounded request lines, a deadline per request, a
//! thread per connection with a cap, the peer-credential check, the socket file's
//! owner/group/mode, and bounded logging of refusals.
//!
//! Tests that need a second identity (an unprivileged peer) re-run this test binary as
//! `admin_client_helper` under uid 65534; they need root and are skipped (with a printed
//! reason) otherwise.

mod common;

use common::{start_with, ConfigBuilder, StatsSnapshot, Vgpud, Vm};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn vgpud(cfg: ConfigBuilder) -> Vgpud {
    start_with(&[Vm::new("a", 1)], cfg)
}

fn mediator(key: &str, value: impl Into<toml::Value>) -> ConfigBuilder {
    ConfigBuilder::new().mediator(key, value)
}

/// The reply parsed as vgpud's stats (panics with the reply if it is not).
fn stats_of(v: &serde_json::Value) -> StatsSnapshot {
    StatsSnapshot::parse(&v.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// One request, one reply line (parsed), with a read timeout.
fn request(sock: &Path, req: &str) -> serde_json::Value {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A refusal (busy) may be sent, and the connection closed, before the request is
    // written: the write then fails (EPIPE) but the reply is there to read.
    let _ = writeln!(c, "{req}");
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn read_reply(c: &UnixStream) -> serde_json::Value {
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn error_of(v: &serde_json::Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {v}"))
}

/// A `/proc/PID/status` field in KiB (`VmRSS`: resident memory; `VmHWM`: its peak).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// How many of `pid`'s threads are named `name` (as `/proc` has it: the first 15 bytes).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// After the reply: the server closes the connection (EOF, or a reset where it left input
/// unread).
fn assert_closed(c: &UnixStream) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    match (&mut &*c).read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection still open: {other:?}"),
    }
}

#[test]
fn protocol_is_unchanged() {
    let d = vgpud(ConfigBuilder::new());
    let s = stats_of(&request(&d.admin(), "stats"));
    assert_eq!(s.vms.len(), 1, "{s:?}");
    assert_eq!(request(&d.admin(), "ping"), serde_json::json!({"ok": true}));
    let e = request(&d.admin(), "frobnicate");
    assert!(error_of(&e).contains("unknown request"), "{e}");
    // A request ended by EOF instead of a newline is still answered.
    let mut c = UnixStream::connect(d.admin()).unwrap();
    c.write_all(b"ping").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_reply(&c), serde_json::json!({"ok": true}));
    assert_eq!(d.stats().vms.len(), 1, "the harness's client works");
}

/// Version 2: JSON requests naming their version, replies carrying it, errors with a code;
/// a refused change changes nothing. (vgpuctl's tests drive the same requests end to end.)
#[test]
fn protocol_version_2() {
    use serde_json::json;
    let d = vgpud(ConfigBuilder::new());
    let req = |v: serde_json::Value| request(&d.admin(), &v.to_string());
    assert_eq!(
        req(json!({"version": 2, "request": "ping"})),
        json!({"version": 2, "ok": true})
    );
    let s = req(json!({"version": 2, "request": "stats"}));
    assert_eq!(s["version"], 2);
    assert_eq!(stats_of(&s["stats"]).vms.len(), 1);
    let show = req(json!({"version": 2, "request": "show", "vm": "a"}));
    assert_eq!(
        (show["version"].clone(), show["vm"]["name"].clone()),
        (json!(2), json!("a"))
    );
    assert_eq!(show["vm"]["pool"], "pool-0", "{show}");

    let code = |v: serde_json::Value| {
        let r = req(v);
        assert_eq!(r["version"], 2, "{r}");
        assert!(r["error"].is_string(), "{r}");
        r["code"].as_str().unwrap().to_string()
    };
    assert_eq!(code(json!({"request": "ping"})), "bad_version");
    assert_eq!(
        code(json!({"version": 9, "request": "ping"})),
        "bad_version"
    );
    assert_eq!(
        code(json!({"version": 2, "request": "show", "vm": "zz"})),
        "unknown_vm"
    );
    assert_eq!(
        code(json!({"version": 2, "request": "reset", "vm": "a"})),
        "not_connected"
    );
    assert_eq!(
        code(json!({"version": 2, "request": "set", "pool": "zz", "weight": 2})),
        "unknown_pool"
    );
    assert_eq!(
        code(json!({"version": 2, "request": "set", "vm": "a", "priority": 5, "persist": 1})),
        "bad_request"
    );
    assert_eq!(
        code(json!({"version": 2, "request": "set", "vm": "a", "priority": -5})),
        "out_of_range"
    );
    assert_eq!(d.vm_stats("a").priority, 0, "nothing changed");
    let ok = req(json!({"version": 2, "request": "set", "vm": "a", "priority": 5}));
    assert_eq!(
        ok,
        json!({"version": 2, "ok": true, "vm": "a", "priority": 5, "persisted": false})
    );
    assert_eq!(d.vm_stats("a").priority, 5);
    // Version 1 replies are unchanged by all this.
    assert_eq!(request(&d.admin(), "ping"), json!({"ok": true}));
}

/// (a) A 64 MiB line without a newline: vgpud never holds more than the cap, answers with an
/// error and closes the connection.
#[test]
fn long_line_is_refused_without_buffering() {
    let d = vgpud(ConfigBuilder::new());
    request(&d.admin(), "stats"); // warm up (first connection thread, stats JSON)
    let pid = d.child.id();
    // Peak RSS from here on: reset the high-water mark (where allowed) and also sample VmRSS.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let (hwm_before, before) = (status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS"));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let on = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let c = UnixStream::connect(d.admin()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..64 {
            match (&w).write_all(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(_) => return (sent, true),
            }
        }
        (sent, false)
    });
    let t0 = Instant::now();
    let mut line = String::new();
    let read = BufReader::new(&c).read_line(&mut line);
    let took = t0.elapsed();
    let (sent, cut_off) = writer.join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(status_kib(pid, "VmRSS"));
    let hwm_growth = status_kib(pid, "VmHWM").saturating_sub(hwm_before);
    let growth = peak.saturating_sub(before).max(hwm_growth);
    println!(
        "64 MiB line: reply {line:?} after {took:?}, client wrote {} KiB before the close, \
         vgpud RSS {before} KiB, peak {peak} KiB, VmHWM +{hwm_growth} KiB: growth {growth} KiB",
        sent >> 10
    );
    assert!(growth < 4096, "vgpud grew by {growth} KiB");
    read.unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(error_of(&reply).contains("too long"), "{reply}");
    assert_closed(&c);
    assert!(
        cut_off,
        "vgpud took all {sent} bytes instead of closing the connection"
    );
    assert!(
        d.log_text().contains("request too long"),
        "{}",
        d.log_text()
    );
    // vgpud still serves.
    assert_eq!(request(&d.admin(), "ping"), serde_json::json!({"ok": true}));
}

/// (b) Clients trickling a byte every 4 s hold their own connection only, and only until the
/// request deadline: `stats` from another client is answered at once.
#[test]
fn trickling_clients_do_not_delay_others() {
    let d = vgpud(ConfigBuilder::new());
    let mut tricklers = Vec::new();
    for _ in 0..4 {
        let c = UnixStream::connect(d.admin()).unwrap();
        let w = c.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..3 {
                if (&w).write_all(b"s").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(4));
            }
        });
        tricklers.push((c, t, Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t0 = Instant::now();
        let s = request(&d.admin(), "stats");
        worst = worst.max(t0.elapsed());
        stats_of(&s);
    }
    println!("stats latency with 4 trickling clients connected: worst of 5 {worst:?}");
    assert!(worst < Duration::from_secs(1), "stats took {worst:?}");
    // Each trickler is answered with a timeout error about 2 s after it connected, then
    // closed, although it keeps sending.
    let mut threads = Vec::new();
    for (c, t, since) in tricklers {
        c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let reply = read_reply(&c);
        let held = since.elapsed();
        assert!(error_of(&reply).contains("not complete within"), "{reply}");
        assert!(held < Duration::from_millis(3500), "held {held:?}");
        assert_closed(&c);
        threads.push(t);
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// Beyond the cap of concurrent connections, a new one is refused at once, not queued.
#[test]
fn connections_beyond_the_cap_are_refused_at_once() {
    let d = vgpud(ConfigBuilder::new());
    let held: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(d.admin()).unwrap())
        .collect();
    // Each admitted connection holds a slot and has its thread ("vgpud-admin-conn", 15 bytes
    // of it in /proc): once there are 16, the cap is reached.
    let t0 = Instant::now();
    while threads_named(d.child.id(), "vgpud-admin-con") < 16 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "connections not admitted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let c = UnixStream::connect(d.admin()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reply = read_reply(&c);
    assert!(error_of(&reply).contains("busy"), "{reply}");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_closed(&c);
    // The held connections time out (2 s) and free their slots.
    drop(held);
    let t0 = Instant::now();
    loop {
        let v = request(&d.admin(), "ping");
        if v.get("ok").is_some() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "still busy: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (d) Owner, group and mode from the config; 0600 by default.
#[test]
fn admin_socket_file_has_the_configured_owner_group_and_mode() {
    let d = vgpud(ConfigBuilder::new());
    let m = std::fs::symlink_metadata(d.admin()).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600, "default mode");
    assert_eq!(m.uid(), rustix::process::geteuid().as_raw());
    drop(d);

    let (uid, gid) = if is_root() {
        (NOBODY, 4242)
    } else {
        println!("not root: only our own uid/gid can be given to the socket");
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    };
    let d = vgpud(
        ConfigBuilder::new()
            .mediator("admin_socket_owner", uid)
            .mediator("admin_socket_group", gid)
            .mediator("admin_socket_mode", "0660"),
    );
    let m = std::fs::symlink_metadata(d.admin()).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o660, uid, gid),
        "mode, owner, group"
    );
    let names: Vec<String> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "no temporary socket left: {names:?}"
    );
    assert_eq!(request(&d.admin(), "ping"), serde_json::json!({"ok": true}));
}

/// An unknown group name stops vgpud at start-up with an error naming the key.
#[test]
fn unknown_group_name_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vgpud.toml");
    let text = common::config_text(
        dir.path(),
        &[Vm::new("a", 1)],
        mediator("admin_socket_group", "no-such-group-vgpu"),
    );
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("vgpud.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = common::wait_timeout(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "vgpud started: {err}");
    assert!(
        err.contains("mediator.admin_socket_group: no group named \"no-such-group-vgpu\""),
        "{err}"
    );
    assert!(!dir.path().join("admin.sock").exists());
}

// ---- an unprivileged peer -------------------------------------------------------------------

/// Not a test by itself: the client run by `as_peer` (in a child process under another uid).
/// Makes `VGPU_ADMIN_HELPER_N` requests and prints each reply line.
#[test]
#[ignore = "helper: run by the tests below as another user"]
fn admin_client_helper() {
    let Ok(sock) = std::env::var("VGPU_ADMIN_HELPER_SOCK") else {
        return;
    };
    let n: usize = std::env::var("VGPU_ADMIN_HELPER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let flood_ms: Option<u64> = std::env::var("VGPU_ADMIN_HELPER_FLOOD_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let once = || -> std::io::Result<String> {
        let c = UnixStream::connect(&sock)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        // The server may answer and close before the request is written: ignore EPIPE.
        let _ = (&c).write_all(b"stats\n");
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    };
    let mut out = std::io::stdout().lock();
    if let Some(ms) = flood_ms {
        // As many connections as possible for `ms`: print the counts only.
        let (t0, mut total, mut denied) = (Instant::now(), 0u64, 0u64);
        while t0.elapsed() < Duration::from_millis(ms) {
            total += 1;
            denied += once().is_ok_and(|l| l.contains("permission denied")) as u64;
        }
        writeln!(out, "FLOOD {total} {denied}").unwrap();
        return;
    }
    for _ in 0..n {
        match once() {
            Ok(l) => writeln!(out, "REPLY {l}").unwrap(),
            Err(e) => writeln!(out, "IOERR {e}").unwrap(),
        }
    }
}

/// This test binary, where `uid` can execute it (copied next to `dir` when not).
fn helper_exe(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let reachable = exe
        .ancestors()
        .skip(1)
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable && std::fs::metadata(&exe).unwrap().permissions().mode() & 0o005 == 0o005 {
        return exe;
    }
    let copy = dir.join("admin-helper");
    std::fs::copy(&exe, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// Runs `admin_client_helper` as `uid`/`gid` with supplementary `groups` and the helper's
/// settings in `env`; its output lines (`REPLY …`, `IOERR …`, `FLOOD …`).
fn run_peer(d: &Vgpud, uid: u32, gid: u32, groups: &[u32], env: &[(&str, String)]) -> Vec<String> {
    // The peer must reach the socket through the test's (0700) directory.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let groups: Vec<rustix::process::Gid> = groups
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    let (ruid, rgid) = (
        rustix::process::Uid::from_raw(uid),
        rustix::process::Gid::from_raw(gid),
    );
    let mut cmd = Command::new(helper_exe(d.dir.path()));
    cmd.args([
        "--exact",
        "admin_client_helper",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("VGPU_ADMIN_HELPER_SOCK", d.admin())
    .envs(env.iter().map(|(k, v)| (k, v)))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec; it only makes the setgroups,
    // setgid and setuid system calls (async-signal-safe, no allocation: `groups` was built
    // before the fork, no locks taken).
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::set_thread_groups(&groups)?;
            rustix::thread::set_thread_gid(rgid)?;
            rustix::thread::set_thread_uid(ruid)?;
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helper failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| {
            ["REPLY ", "IOERR ", "FLOOD "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// `n` requests as `uid`/`gid`/`groups`: one reply line each.
fn as_peer(d: &Vgpud, uid: u32, gid: u32, groups: &[u32], n: usize) -> Vec<String> {
    let lines = run_peer(
        d,
        uid,
        gid,
        groups,
        &[("VGPU_ADMIN_HELPER_N", n.to_string())],
    );
    assert_eq!(lines.len(), n, "{lines:?}");
    lines
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("SKIP {test}: needs root to run a peer under another uid (uid {NOBODY})");
    true
}

/// (c) A peer that is neither root, nor vgpud's uid, nor in admin_group is refused, even
/// where the socket file's mode lets it connect; members of admin_group (primary or
/// supplementary group) are served.
#[test]
fn peers_outside_admin_group_are_refused() {
    if skip_unless_root("peers_outside_admin_group_are_refused") {
        return;
    }
    // Mode 0666 on purpose: only the credential check stands between the peer and vgpud.
    let d = vgpud(mediator("admin_socket_mode", "0666").mediator("admin_group", 4242));
    let refused = as_peer(&d, NOBODY, NOBODY, &[], 1);
    assert!(
        refused[0].starts_with("REPLY {\"error\":\"permission denied: uid 65534"),
        "{refused:?}"
    );
    assert!(refused[0].contains("admin_group 4242"), "{refused:?}");
    for (gid, groups) in [
        (4242, &[][..]),
        (NOBODY, &[4242][..]),
        (NOBODY, &[7, 4242][..]),
    ] {
        let served = as_peer(&d, NOBODY, gid, groups, 1);
        assert!(
            served[0].starts_with("REPLY {") && served[0].contains("\"vms\""),
            "gid {gid} groups {groups:?}: {served:?}"
        );
    }
    // Without admin_group: only root and vgpud's uid.
    let d = vgpud(mediator("admin_socket_mode", "0666"));
    let refused = as_peer(&d, NOBODY, NOBODY, &[4242], 1);
    assert!(refused[0].contains("permission denied"), "{refused:?}");
    assert!(
        d.log_text().contains("admin socket: refused"),
        "{}",
        d.log_text()
    );
}

/// A flood of refused connections is answered, each with the error, but logged at most once a
/// second per uid.
#[test]
fn refusal_floods_log_a_bounded_number_of_lines() {
    if skip_unless_root("refusal_floods_log_a_bounded_number_of_lines") {
        return;
    }
    let d = vgpud(mediator("admin_socket_mode", "0666"));
    let flood_ms = 2500;
    let out = run_peer(
        &d,
        NOBODY,
        NOBODY,
        &[],
        &[("VGPU_ADMIN_HELPER_FLOOD_MS", flood_ms.to_string())],
    );
    let counts: Vec<u64> = out[0]
        .strip_prefix("FLOOD ")
        .unwrap_or_else(|| panic!("{out:?}"))
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let (total, denied) = (counts[0], counts[1]);
    assert!(total >= 100, "only {total} connections in {flood_ms} ms");
    assert_eq!(denied, total, "every connection is refused with the error");
    std::thread::sleep(Duration::from_millis(200));
    let log = d.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin socket: refused"))
        .collect();
    println!(
        "{total} refused connections in {flood_ms} ms: {} log line(s)",
        lines.len()
    );
    // One line a second (the first at once): at most 4 for 2.5 s; the later ones count the
    // refusals they stand for.
    assert!(
        (2..=4).contains(&lines.len()),
        "{} lines:\n{log}",
        lines.len()
    );
    assert!(
        lines[1..].iter().all(|l| !l.contains("suppressed=0")),
        "{lines:?}"
    );
    // The flood left vgpud serving.
    assert_eq!(request(&d.admin(), "ping"), serde_json::json!({"ok": true}));
}
