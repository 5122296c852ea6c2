//! `cargo xtask bench <name> [--json FILE]`: build `vgpu-bench` and run it, output streamed,
//! exit code propagated. `wait` is run here: its host stage is `vgpu-bench wait`, its VM stage
//! boots a guest ([`wait_vm`]).

mod wait_vm;

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context;

use crate::{build, paths};

pub fn main(name: &str, json: Option<&Path>, rest: &[String]) -> ExitCode {
    if name == "wait" {
        return match wait(json, rest) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("xtask bench wait: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The benchmarks that start a real vgpud (sched, gpu, multigpu) run the one next to
    // vgpu-bench: build both packages.
    if let Err(e) = build::cargo_build_release(&["vgpu-bench", "vgpu-mediator"]) {
        eprintln!("xtask bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let bin = build::host_bin("vgpu-bench");
    let mut cmd = Command::new(&bin);
    cmd.arg(name);
    if let Some(json) = json {
        cmd.arg("--json").arg(json);
    }
    cmd.args(rest);
    match cmd.status() {
        Ok(status) => match status.code() {
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => {
                eprintln!("xtask bench: vgpu-bench was killed ({status})");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("xtask bench: cannot run {}: {e}", bin.display());
            ExitCode::FAILURE
        }
    }
}

/// `bench wait`: the host stage (`vgpu-bench wait --stage host`, with `rest`: vgpud's and the
/// worker's CPU while a VM waits on a long kernel, round trips and launch rates, block vs spin)
/// and the VM stage ([`wait_vm`]: a guest in a VM waiting on MSI-X vs polling). One JSON file
/// with both, under `"host"` and `"vm"`. Ok(false) when a stage ran but failed.
fn wait(json: Option<&Path>, rest: &[String]) -> anyhow::Result<bool> {
    build::cargo_build_release(&["vgpu-bench", "vgpu-mediator"])?;
    let dir = paths::target_dir().join("bench-wait");
    std::fs::create_dir_all(&dir)?;
    let (host_json, vm_json) = (dir.join("host.json"), dir.join("vm.json"));
    let _ = std::fs::remove_file(&host_json);
    let _ = std::fs::remove_file(&vm_json);
    let host_ok = Command::new(build::host_bin("vgpu-bench"))
        .args(["wait", "--stage", "host", "--json"])
        .arg(&host_json)
        .args(rest)
        .status()
        .context("running vgpu-bench wait")?
        .success();
    let vm = wait_vm::run(Some(&vm_json), &[]);
    if let Err(e) = &vm {
        eprintln!("xtask bench wait: VM stage: {e:#}");
    }
    if let Some(out) = json {
        let read = |p: &Path| -> serde_json::Value {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        let host = read(&host_json);
        let doc = serde_json::json!({
            "bench": "wait",
            "host": host.get("host").cloned().unwrap_or(host),
            "vm": read(&vm_json),
        });
        std::fs::write(out, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        println!("xtask bench wait: wrote {}", out.display());
    }
    Ok(host_ok && vm.is_ok())
}
