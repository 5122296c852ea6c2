//! `cargo xtask bench <name> [--json FILE]`: build `vgpu-bench` and run it, output streamed,
//! exit code propagated. `wait` is run here: its VM stage boots a guest ([`wait_vm`]).

mod wait_vm;

use std::path::Path;
use std::process::{Command, ExitCode};

use crate::build;

pub fn main(name: &str, json: Option<&Path>, rest: &[String]) -> ExitCode {
    if name == "wait" {
        return match wait_vm::run(json, rest) {
            Ok(()) => ExitCode::SUCCESS,
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
