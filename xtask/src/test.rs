//! `cargo xtask test`: the workspace's cargo tests, then the VM end-to-end test (the demo).

use std::process::{Command, ExitCode};

use crate::{demo, paths, VmOpts};

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

    if no_vm {
        println!("xtask test: stage `vm e2e` skipped (--no-vm)");
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
