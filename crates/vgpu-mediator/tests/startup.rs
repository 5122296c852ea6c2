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
    // Written by hand: the builder cannot leave out a VM's socket and id.
    let (code, err) = run_vgpud("[[vm]]\nname = \"a\"\n", dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("missing field"), "{err}");

    let missing_dir = ConfigBuilder::new().vm(VmEntry::new("a", "/nonexistent-dir/a.sock", 1));
    let (code, err) = run_vgpud(&missing_dir.to_toml().unwrap(), dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");

    let (code, err) = run_vgpud(
        &config_text(
            dir.path(),
            &[Vm::new("x", 1), Vm::new("y", 1)],
            ConfigBuilder::new(),
        ),
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("duplicate vm_id"), "{err}");

    let mut bad = Vm::new("z", 1);
    bad.shm = 3 << 20;
    let (code, err) = run_vgpud(
        &config_text(dir.path(), &[bad], ConfigBuilder::new()),
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("power of two"), "{err}");

    // A socket already served by a running vgpud (the config of that vgpud with another
    // admin socket).
    let vms = [Vm::new("busy", 1)];
    let d = start(&vms);
    let admin2 = ConfigBuilder::new().admin_socket(&d.dir.path().join("admin2.sock"));
    let (code, err) = run_vgpud(&config_text(d.dir.path(), &vms, admin2), dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("already in use"), "{err}");
    d.stop();
}

#[test]
fn executor_cpus_pin_or_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_vgpud(
        &config_text(
            dir.path(),
            &[Vm::new("a", 1)],
            ConfigBuilder::new().mediator("executor_cpus", vec![1023]),
        ),
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("executor_cpus: CPU 1023 is not one this process may run on"),
        "{err}"
    );

    // A CPU it may run on: the executor thread is pinned there. vgpud is ready (what `start`
    // waits for) only once each executor thread runs, named and pinned: one look suffices.
    let cpu = *allowed_cpus().last().unwrap();
    let d = start_with(
        &[Vm::new("a", 1)],
        ConfigBuilder::new().mediator("executor_cpus", vec![cpu as i64]),
    );
    let exec: Vec<std::path::PathBuf> = std::fs::read_dir(format!("/proc/{}/task", d.child.id()))
        .unwrap()
        .map(|t| t.unwrap().path())
        .filter(|t| {
            std::fs::read_to_string(t.join("comm")).is_ok_and(|n| n.trim() == "vgpud-exec-0")
        })
        .collect();
    assert_eq!(exec.len(), 1, "one executor thread:\n{}", d.log_text());
    assert_eq!(
        cpus_allowed(&exec[0]),
        cpu.to_string(),
        "executor thread affinity"
    );
    d.stop();
}
