//! `cargo xtask test`: the workspace's cargo tests, the loom model checks, the CUDA C++
//! programs and the Python frameworks (cuda-bindings, CuPy, numba-cuda) through the guest
//! driver, then the VM end-to-end test (the demo), the VM kill test and a CUDA program inside
//! a VM.

use std::process::{Command, ExitCode};

use crate::{cudavm, demo, paths, vmkill, VmOpts};

pub fn main(no_vm: bool, vm: &VmOpts) -> ExitCode {
    let mut results: Vec<(&str, bool)> = Vec::new();

    println!("xtask test: stage `cargo tests`: cargo test --workspace --all-targets");
    let ok = Command::new(paths::cargo())
        .current_dir(paths::root())
        .args(["test", "--workspace", "--all-targets"])
        .status()
        .map(|s| s.success())
        .unwrap_or_else(|e| {
            eprintln!("xtask test: cannot run cargo: {e}");
            false
        });
    results.push(("cargo tests", ok));

    results.push(("loom models", loom()));

    println!("xtask test: stage `cuda programs`: CUDA C++ programs through vgpu's libcuda.so.1");
    let ok = match crate::cudaprog::run() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cuda-programs: FAILED: {e:#}");
            false
        }
    };
    results.push(("cuda programs", ok));

    println!(
        "xtask test: stage `frameworks cpu`: cuda-bindings, CuPy and numba-cuda through vgpu's libcuda.so.1"
    );
    let ok = match crate::frameworks::run() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("frameworks-cpu: FAILED: {e:#}");
            false
        }
    };
    results.push(("frameworks cpu", ok));

    if no_vm {
        println!("xtask test: stages `vm e2e`, `vm kill` and `cuda vm` skipped (--no-vm)");
    } else {
        println!("xtask test: stage `vm e2e`: two VMs under QEMU against vgpud");
        let ok = match demo::run(vm) {
            Ok(()) => {
                println!("demo: OK");
                true
            }
            Err(e) => {
                demo::print_failure(&e);
                false
            }
        };
        results.push(("vm e2e", ok));
        println!("xtask test: stage `vm kill`: QEMU SIGKILLed mid-copy and mid-kernel");
        let ok = match vmkill::run(vm) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("vm-kill: FAILED: {e:#}");
                false
            }
        };
        results.push(("vm kill", ok));
        println!(
            "xtask test: stage `cuda vm`: an nvcc-built CUDA program in a VM on the installed libcuda.so.1"
        );
        let ok = match cudavm::run(vm) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("cuda-vm: FAILED: {e:#}");
                false
            }
        };
        results.push(("cuda vm", ok));
    }

    for (name, ok) in &results {
        println!("xtask test: {name}: {}", if *ok { "ok" } else { "FAILED" });
    }
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    println!(
        "xtask test: {} passed, {failed} failed",
        results.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Preemption bound of the loom stage unless `LOOM_MAX_PREEMPTIONS` is set: every property and
/// every deliberate bug of the models is decided within it (docs/architecture.md,
/// "Model-checked protocols", has the timings of deeper bounds).
const LOOM_PREEMPTIONS: &str = "2";

/// The loom model checks (`tests/loom_*.rs`), built with `--cfg loom` in their own target
/// directory (`<target>/loom`) so that the normal build is not invalidated. The dev profile:
/// compiling the dependencies dominates, and the models run in seconds unoptimised.
fn loom() -> bool {
    let preemptions =
        std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| LOOM_PREEMPTIONS.to_string());
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(f) if !f.trim().is_empty() => format!("{f} --cfg loom"),
        _ => "--cfg loom".to_string(),
    };
    let target = paths::target_dir().join("loom");
    println!(
        "xtask test: stage `loom models`: RUSTFLAGS=\"{rustflags}\" LOOM_MAX_PREEMPTIONS={preemptions} \
         cargo test -p vgpu-abi -p vgpu-guest --test loom_ring --test loom_wait (target {})",
        target.display()
    );
    let start = std::time::Instant::now();
    let ok = Command::new(paths::cargo())
        .current_dir(paths::root())
        .env("RUSTFLAGS", rustflags)
        .env("LOOM_MAX_PREEMPTIONS", preemptions)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "test",
            "-p",
            "vgpu-abi",
            "-p",
            "vgpu-guest",
            "--test",
            "loom_ring",
            "--test",
            "loom_wait",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or_else(|e| {
            eprintln!("xtask test: cannot run cargo: {e}");
            false
        });
    println!(
        "xtask test: stage `loom models` took {:.0} s",
        start.elapsed().as_secs_f64()
    );
    ok
}
