//! vgpud refuses bad start-up conditions with a clear message and exit code 2.

mod common;

use common::*;
use std::process::Command;

fn run_vgpud(cfg_text: &str, dir: &std::path::Path) -> (i32, String) {
    let cfg = dir.join("cfg.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_missing_dir_socket_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_vgpud("[[vm]]\nname = \"a\"\n", dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("missing field"), "{err}");

    let (code, err) = run_vgpud(
        "[[vm]]\nname = \"a\"\nsocket = \"/nonexistent-dir/a.sock\"\nvm_id = 1\n",
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");

    let (code, err) = run_vgpud(
        &config_text(dir.path(), &[Vm::new("x", 1), Vm::new("y", 1)], ""),
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("duplicate vm_id"), "{err}");

    let mut bad = Vm::new("z", 1);
    bad.shm = 3 << 20;
    let (code, err) = run_vgpud(&config_text(dir.path(), &[bad], ""), dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("power of two"), "{err}");

    // A socket already served by a running vgpud.
    let d = start(&[Vm::new("busy", 1)]);
    let text = std::fs::read_to_string(d.dir.path().join("vgpud.toml")).unwrap();
    let (code, err) = run_vgpud(&text.replace("admin.sock", "admin2.sock"), dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("already in use"), "{err}");
    d.stop();
}

#[test]
fn executor_cpus_pin_or_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_vgpud(
        &config_text(dir.path(), &[Vm::new("a", 1)], "executor_cpus = [1023]"),
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("executor_cpus: CPU 1023 is not one this process may run on"),
        "{err}"
    );

    // A CPU it may run on: the executor thread is pinned there.
    let cpu = *allowed_cpus().last().unwrap();
    let d = start_with(&[Vm::new("a", 1)], &format!("executor_cpus = [{cpu}]"));
    let tasks = format!("/proc/{}/task", d.child.id());
    // The sockets exist before the executor threads start, and a thread pins itself once it
    // runs: look until the thread is there with the affinity it set (or 10 s have passed).
    let t0 = std::time::Instant::now();
    let mut exec_cpus = None;
    while exec_cpus.as_deref() != Some(cpu.to_string().as_str())
        && t0.elapsed() < std::time::Duration::from_secs(10)
    {
        for t in std::fs::read_dir(&tasks).unwrap() {
            let t = t.unwrap().path();
            let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
            if name.trim() == "vgpud-exec-0" {
                exec_cpus = Some(cpus_allowed(&t));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(exec_cpus, Some(cpu.to_string()), "executor thread affinity");
    d.stop();
}
