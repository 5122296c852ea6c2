//! vgpud under a service manager: the `sd_notify` states it sends to `$NOTIFY_SOCKET`
//! (`READY=1` once its sockets listen, `RELOADING=1` then `READY=1` around a SIGHUP reload,
//! `STOPPING=1` on SIGTERM), received here as systemd would, on a datagram socket.

mod common;

use common::{config, signal, wait_timeout, Vm};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vgpu_mediator::testkit::ConfigBuilder;

/// The next notification (one datagram), or a panic naming what was expected.
fn recv(sock: &UnixDatagram, expecting: &str, log: &Path) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no notification ({expecting} expected): {e}\nvgpud log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn notifies_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let vms = [Vm::new("a", 1), Vm::new("b", 2)];
    let cfg_path = dir.path().join("vgpud.toml");
    config(dir.path(), &vms, ConfigBuilder::new())
        .write(&cfg_path)
        .unwrap();
    let sockets: Vec<PathBuf> = vms
        .iter()
        .map(|v| dir.path().join(format!("{}.sock", v.name)))
        .chain([dir.path().join("admin.sock")])
        .collect();

    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = dir.path().join("vgpud.log");
    let bin = std::env::var_os("VGPU_VGPUD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vgpud")));
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // READY=1 is the first thing vgpud says, and only once every socket is there.
    let first = recv(&notify, "READY=1", &log);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first notification is not READY=1: {first:?}"
    );
    assert!(
        first.lines().any(|l| l.starts_with("STATUS=")),
        "no STATUS= with READY=1: {first:?}"
    );
    for s in &sockets {
        assert!(
            is_socket(s),
            "READY=1 sent before {} was bound",
            s.display()
        );
    }
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains(common::READY_LINE),
        "READY=1 sent before vgpud logged {:?}:\n{log_text}",
        common::READY_LINE
    );

    // A reload: RELOADING=1 (with the time systemd 253+ wants), then READY=1 again.
    signal(&child, rustix::process::Signal::HUP);
    let reloading = recv(&notify, "RELOADING=1", &log);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "SIGHUP did not send RELOADING=1 first: {reloading:?}"
    );
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|us| us > 0))),
        "RELOADING=1 without MONOTONIC_USEC: {reloading:?}"
    );
    let again = recv(&notify, "READY=1 after the reload", &log);
    assert!(
        again.lines().any(|l| l == "READY=1"),
        "no READY=1 after the reload: {again:?}"
    );

    // Shutdown: STOPPING=1, then a clean exit.
    signal(&child, rustix::process::Signal::TERM);
    let stopping = recv(&notify, "STOPPING=1", &log);
    assert_eq!(stopping, "STOPPING=1");
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("vgpud did not exit");
    assert!(status.success(), "vgpud exited with {status}");
}

#[test]
fn without_notify_socket_nothing_changes() {
    // Plain start (no $NOTIFY_SOCKET): the usual readiness line, a clean stop.
    let mut d = common::start(&[Vm::new("a", 1)]);
    assert!(d.alive());
    let status = d.stop();
    assert!(status.success(), "vgpud exited with {status}");
}
