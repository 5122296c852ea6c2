//! `cargo xtask bench wait`, the VM stage: what waiting costs a guest. One VM under QEMU
//! (TCG unless `--accel kvm`) with a virtual IOMMU and the VFIO modules runs
//! `vgpu-smi bench-wait` against vgpud on the cpu backend: the guest process's CPU time while
//! it waits for long `busy` kernels, the round trip of a nop, and how late a 5 ms kernel's
//! completion reaches the waiter, first waiting on MSI-X interrupts, then polling. Under TCG the figures say whether the mechanism works and what it
//! costs relative to polling, not what KVM would give.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::qemu::{self, tail, tail_file, Accel, VmSpec};
use crate::vgpud::{Config, Vgpud, VmConfig};
use crate::{build, deps, initramfs, kernel, paths};

/// The guest prints one of these per wait mode, followed by a JSON object.
const RESULT_PREFIX: &str = "bench-wait: ";

/// Arguments of `vgpu-smi bench-wait` (`rest` may add more, e.g. `--kernel-ms 500`).
const DEFAULT_ARGS: &[&str] = &["--kernel-ms", "1000", "--kernels", "3", "--iters", "2000"];

/// The guest must wait on interrupts below this share of a core while its kernels run.
const GOAL_PCT: f64 = 5.0;

pub fn run(json_out: Option<&Path>, rest: &[String]) -> Result<()> {
    deps::ensure_host_tools()?;
    build::cargo_build_release(&["vgpu-mediator", "vgpuctl"])?;
    let guest_bin = build::guest_binary()?;
    let kernel = kernel::ensure_kernel()?;
    let dir = paths::target_dir().join("vgpu-bench-wait");
    std::fs::create_dir_all(&dir)?;
    let initrd = initramfs::build(
        Some(&guest_bin),
        &kernel.modules,
        &dir.join("initramfs.cpio"),
    )?;

    let sock_dir = std::env::temp_dir().join(format!("vgpu-bench-wait-{}", std::process::id()));
    std::fs::create_dir_all(&sock_dir)?;
    let config = Config {
        backend: "cpu".into(),
        admin_socket: sock_dir.join("admin.sock"),
        vms: vec![VmConfig {
            name: "bench".into(),
            socket: sock_dir.join("bench.sock"),
            vm_id: 1,
            pool_id: 0,
            priority: 0,
            mem_quota: "64MiB".into(),
            shm_size: "16MiB".into(),
        }],
    };
    let log = dir.join("vgpud.log");
    let daemon = Vgpud::start(
        &build::host_bin("vgpud"),
        &config,
        &dir.join("vgpud.toml"),
        &log,
    )?;
    let mut args: Vec<String> = vec!["bench-wait".into()];
    args.extend(DEFAULT_ARGS.iter().map(|s| s.to_string()));
    args.extend(rest.iter().cloned());
    let accel = match std::env::var("VGPU_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    };
    let spec = VmSpec {
        name: "bench-wait".into(),
        kernel: kernel.vmlinuz.clone(),
        initrd,
        extra_append: format!("vgpu.args={}", args.join(",")),
        socket: Some(config.vms[0].socket.clone()),
        iommu: true,
        log: dir.join("bench-wait.serial.log"),
        timeout: Duration::from_secs(300),
        accel,
    };
    println!(
        "bench wait (vm): one VM ({accel:?}, virtual IOMMU), vgpu-smi {}",
        args.join(" ")
    );
    let out = qemu::run(&spec);
    let _ = daemon.stop();
    let _ = std::fs::remove_dir_all(&sock_dir);
    let out = out?;
    let results = parse_results(&out.serial);
    if results.is_empty() || !out.serial.contains(&format!("{}0", initramfs::EXIT_MARKER)) {
        bail!(
            "the guest printed no results or failed (log {}):\n{}vgpud log:\n{}",
            out.log.display(),
            tail(&out.serial, 30),
            tail_file(&log, 20)
        );
    }
    const COLUMNS: [&str; 7] = [
        "waited_s",
        "cpu_s",
        "cpu_pct",
        "nop_p50_us",
        "nop_p99_us",
        "busy5ms_late_p50_us",
        "busy5ms_late_p99_us",
    ];
    println!("  {:<6} {}", "wait", COLUMNS.join(" "));
    for r in &results {
        let cells = COLUMNS.map(|c| {
            let w = c.len();
            format!("{:>w$.2}", r[c].as_f64().unwrap_or(f64::NAN))
        });
        println!(
            "  {:<6} {}",
            r["wait"].as_str().unwrap_or("?"),
            cells.join(" ")
        );
    }
    let msix = results.iter().find(|r| r["wait"] == "msi-x");
    let verdict = match msix.and_then(|r| r["cpu_pct"].as_f64()) {
        Some(p) if p < GOAL_PCT => {
            format!("msi-x waits cost {p:.2}% of a core (goal < {GOAL_PCT}%)")
        }
        Some(p) => format!("msi-x waits cost {p:.2}% of a core: over the goal of {GOAL_PCT}%"),
        None => "the guest did not wait on MSI-X (no msi-x result)".into(),
    };
    println!("bench wait (vm): {verdict}");
    if let Some(path) = json_out {
        let doc = json!({
            "bench": "wait",
            "stage": "vm",
            "accel": format!("{accel:?}").to_lowercase(),
            "machine": machine(),
            "guest_args": args,
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("bench wait (vm): wrote {}", path.display());
    }
    if msix.is_none() {
        bail!("{verdict}");
    }
    Ok(())
}

/// The JSON objects of the guest's `bench-wait:` lines, in order.
fn parse_results(serial: &str) -> Vec<Value> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix(RESULT_PREFIX))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

/// The host's CPU model and core count.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_result_lines() {
        let serial = "vgpu-guest: init\nbench-wait: {\"wait\":\"msi-x\",\"cpu_pct\":1.5}\n\
                      noise\n  bench-wait: {\"wait\":\"poll\",\"cpu_pct\":30.0}\nbench-wait: {bad\n";
        let r = parse_results(serial);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["wait"], "msi-x");
        assert_eq!(r[1]["cpu_pct"], 30.0);
    }
}
