//! `cargo xtask demo`: two VMs share vgpud; each must see its own identity and pass the guest
//! selftest, and the host must have counted their commands. Also the VM-only smoke boot.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::qemu::{self, tail, tail_file, VmOutput, VmSpec};
use crate::vgpud::{Config, Vgpud, VmConfig};
use crate::{build, deps, initramfs, kernel, paths, VmOpts};

/// `cargo xtask demo`: runs the demo and prints `demo: OK` or `demo: FAILED <reason>` last.
pub fn main(vm: &VmOpts) -> ExitCode {
    match run(vm) {
        Ok(()) => {
            println!("demo: OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_failure(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints the whole error (it carries log tails), then the one-line verdict.
pub fn print_failure(e: &anyhow::Error) {
    println!("demo: error details:");
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        if i == 0 {
            println!("{text}");
        } else {
            println!("caused by: {text}");
        }
    }
    let reason = e.to_string();
    println!(
        "demo: FAILED {}",
        reason.lines().next().unwrap_or("unknown error")
    );
}

fn step(msg: &str) {
    println!("demo: {msg}");
}

/// The demo from start to end; `Ok` only when every check passed.
pub fn run(vm: &VmOpts) -> Result<()> {
    let t0 = Instant::now();
    step("checking host tools");
    deps::ensure_host_tools()?;

    step("building vgpud, vgpuctl (release)");
    build::cargo_build_release(&["vgpu-mediator", "vgpuctl"])?;
    step("building vgpu-smi (static, release)");
    let guest_bin = build::guest_binary()?;

    step("preparing guest kernel");
    let kernel = kernel::ensure_kernel()?;
    step("building initramfs");
    let initrd = initramfs::build(
        Some(&guest_bin),
        &kernel.modules,
        &paths::vm_dir().join("initramfs.cpio"),
    )?;

    let dir = paths::target_dir().join("vgpu-demo");
    std::fs::create_dir_all(&dir)?;
    let config = demo_config(&dir)?;
    let config_path = dir.join("vgpud.toml");
    let log = dir.join("vgpud.log");
    step(&format!("starting vgpud ({})", config_path.display()));
    let mut daemon = Vgpud::start(&build::host_bin("vgpud"), &config, &config_path, &log)?;

    step(&format!(
        "booting {} VMs (accel {:?}, timeout {} s)",
        config.vms.len(),
        vm.accel,
        vm.vm_timeout
    ));
    let specs: Vec<VmSpec> = config
        .vms
        .iter()
        .map(|c| VmSpec {
            name: c.name.clone(),
            kernel: kernel.vmlinuz.clone(),
            initrd: initrd.clone(),
            extra_append: String::new(),
            socket: Some(c.socket.clone()),
            iommu: true,
            log: dir.join(format!("{}.serial.log", c.name)),
            timeout: vm.timeout(),
            accel: vm.accel,
        })
        .collect();
    let outputs = boot_all(&specs);

    let mut failures = Vec::new();
    for (cfg, out) in config.vms.iter().zip(outputs) {
        match out.and_then(|o| check_guest(cfg, &o).map(|()| o)) {
            Ok(o) => {
                // What the guest itself printed: the ids it read from the device and its verdict.
                for l in o.serial.lines().map(str::trim) {
                    if l.starts_with("vgpu: ")
                        || l.starts_with("wait: ")
                        || l.starts_with("selftest: ")
                    {
                        println!("  [{}] {l}", o.name);
                    }
                }
                step(&format!(
                    "{}: selftest PASS, ids match the config ({:.1} s)",
                    o.name,
                    o.elapsed.as_secs_f64()
                ))
            }
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        let details: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
        bail!(
            "{}\n{}\nvgpud log {}:\n{}",
            failures
                .iter()
                .map(|e| e.to_string().lines().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join("; "),
            details.join("\n"),
            log.display(),
            tail_file(&log, 40)
        );
    }
    if !daemon.is_running() {
        bail!(
            "vgpud died while the VMs ran; its log {}:\n{}",
            log.display(),
            tail_file(&log, 40)
        );
    }

    step("querying vgpuctl stats");
    let stats = query_stats(&config.admin_socket)?;
    print_stats(&stats);
    check_stats(&config, &stats)
        .map_err(|e| anyhow!("{e}\nvgpud log {}:\n{}", log.display(), tail_file(&log, 40)))?;

    step("stopping vgpud (SIGTERM)");
    daemon.stop()?;
    step(&format!("done in {:.1} s", t0.elapsed().as_secs_f64()));
    Ok(())
}

/// The two demo VMs, sockets in `dir` (or in /tmp when `dir` makes the paths too long).
fn demo_config(dir: &Path) -> Result<Config> {
    let sock_dir = crate::vgpud::socket_dir(dir, "vgpu-demo")?;
    let vm = |name: &str, vm_id, pool_id, priority| VmConfig {
        name: name.to_string(),
        socket: sock_dir.join(format!("{name}.sock")),
        vm_id,
        pool_id,
        priority,
        mem_quota: "256MiB".into(),
        shm_size: "16MiB".into(),
    };
    Ok(Config {
        backend: "auto".into(),
        admin_socket: sock_dir.join("admin.sock"),
        vms: vec![vm("vm-a", 1, 0, 2), vm("vm-b", 2, 1, 0)],
    })
}

/// Boots every VM at once and returns their outputs in order.
fn boot_all(specs: &[VmSpec]) -> Vec<Result<VmOutput>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| s.spawn(move || qemu::run(spec)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("VM thread panicked")))
            })
            .collect()
    })
}

/// The guest must report exactly its configured identity and a passing selftest.
fn check_guest(cfg: &VmConfig, out: &VmOutput) -> Result<()> {
    check_serial(cfg, &out.serial).map_err(|why| {
        anyhow!(
            "{}: {why} (qemu {}, serial log {})\n{}{}",
            cfg.name,
            out.status,
            out.log.display(),
            tail(&out.serial, 40),
            tail(&out.stderr, 10)
        )
    })
}

/// The pass criterion of a guest's serial console (`serial` with `\n` line ends): exactly one
/// identity line matching `cfg`, the guest waited on MSI-X interrupts (`wait: msi-x`: the VM
/// has a virtual IOMMU and the VFIO modules), `selftest: PASS` and no `selftest: FAIL`,
/// `vgpu-smi` exited with 0. The error says what was wrong.
pub fn check_serial(cfg: &VmConfig, serial: &str) -> std::result::Result<(), String> {
    let idents: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.find("vgpu: vm_id=").map(|i| &l[i..]))
        .collect();
    let [ident] = idents[..] else {
        return Err(format!(
            "expected one `vgpu: vm_id=...` line, got {}",
            idents.len()
        ));
    };
    let want = [
        ("vm_id", cfg.vm_id.to_string()),
        ("pool_id", cfg.pool_id.to_string()),
        ("priority", cfg.priority.to_string()),
        ("name", cfg.name.clone()),
    ];
    for (key, value) in &want {
        let got = field(ident, key);
        if got != Some(value.as_str()) {
            return Err(format!(
                "guest saw {key}={} but the config says {value}",
                got.unwrap_or("<missing>")
            ));
        }
    }
    if let Some(line) = serial
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("wait: "))
    {
        if line != "wait: msi-x" {
            return Err(format!(
                "the guest does not wait on MSI-X interrupts: `{line}`"
            ));
        }
    } else {
        return Err("no `wait: ...` line on the serial console".into());
    }
    if let Some(line) = serial.lines().find(|l| l.contains("selftest: FAIL")) {
        return Err(format!("guest {}", line.trim()));
    }
    if !serial.lines().any(|l| l.contains("selftest: PASS")) {
        return Err("no `selftest: PASS` on the serial console".into());
    }
    if !serial.contains(&format!("{}0", initramfs::EXIT_MARKER)) {
        return Err("vgpu-smi did not exit with status 0".into());
    }
    Ok(())
}

/// The value of `key=value` in a space-separated line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

pub fn query_stats(admin: &Path) -> Result<Value> {
    let bin = build::host_bin("vgpuctl");
    let out = Command::new(&bin)
        .arg("--admin-socket")
        .arg(admin)
        .arg("stats")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "vgpuctl stats failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "vgpuctl stats printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })
}

pub fn vm_stats<'a>(stats: &'a Value, name: &str) -> Option<&'a Value> {
    stats["vms"]
        .as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
}

fn print_stats(stats: &Value) {
    println!(
        "demo: host view (vgpuctl stats, backend {})",
        stats["backend"].as_str().unwrap_or("?")
    );
    println!(
        "  {:<8} {:>5} {:>4} {:>4} {:>9} {:>6} {:>12} {:>12} {:>9}",
        "name", "vm_id", "pool", "prio", "commands", "errors", "bytes_in", "bytes_out", "connected"
    );
    for v in stats["vms"].as_array().into_iter().flatten() {
        let n = |k: &str| v[k].to_string();
        println!(
            "  {:<8} {:>5} {:>4} {:>4} {:>9} {:>6} {:>12} {:>12} {:>9}",
            v["name"].as_str().unwrap_or("?"),
            n("vm_id"),
            n("pool_id"),
            n("priority"),
            n("commands"),
            n("errors"),
            n("bytes_in"),
            n("bytes_out"),
            n("connected")
        );
    }
}

/// Both VMs must be known to vgpud with their ids and must have run commands.
fn check_stats(config: &Config, stats: &Value) -> Result<()> {
    for cfg in &config.vms {
        let v = vm_stats(stats, &cfg.name)
            .with_context(|| format!("vgpuctl stats does not list {}", cfg.name))?;
        if v["vm_id"].as_u64() != Some(u64::from(cfg.vm_id))
            || v["pool_id"].as_u64() != Some(u64::from(cfg.pool_id))
            || v["priority"].as_u64() != Some(u64::from(cfg.priority))
        {
            bail!("vgpuctl stats shows other ids for {}: {v}", cfg.name);
        }
        let commands = v["commands"].as_u64().unwrap_or(0);
        if commands == 0 {
            bail!("vgpud counted no commands for {}", cfg.name);
        }
    }
    Ok(())
}

/// `cargo xtask vm-smoke`: kernel + initramfs (busybox only, or with `guest_bin`), optionally with
/// a vGPU on `socket` and a virtual IOMMU with the VFIO modules (`iommu`); `/init` must run to the end (and `guest_bin`, when given, exit 0).
pub fn vm_smoke(
    guest_bin: Option<&Path>,
    socket: Option<&Path>,
    args: Option<&str>,
    iommu: bool,
    vm: &VmOpts,
) -> Result<()> {
    deps::ensure_host_tools()?;
    let t = Instant::now();
    let kernel = kernel::ensure_kernel()?;
    println!(
        "vm-smoke: kernel {} ({:.1} s)",
        kernel.vmlinuz.display(),
        t.elapsed().as_secs_f64()
    );
    let dir = paths::vm_dir();
    let modules: &[std::path::PathBuf] = if iommu { &kernel.modules } else { &[] };
    let initrd = initramfs::build(guest_bin, modules, &dir.join("smoke-initramfs.cpio"))?;
    let spec = VmSpec {
        name: "smoke".into(),
        kernel: kernel.vmlinuz,
        initrd,
        extra_append: args.map(|a| format!("vgpu.args={a}")).unwrap_or_default(),
        socket: socket.map(Path::to_path_buf),
        iommu,
        log: dir.join("smoke.serial.log"),
        timeout: vm.timeout(),
        accel: vm.accel,
    };
    let out = qemu::run(&spec)?;
    let want_exit = if guest_bin.is_some() { "0" } else { "127" };
    let ok = out.serial.contains(initramfs::INIT_MARKER)
        && out
            .serial
            .contains(&format!("{}{want_exit}", initramfs::EXIT_MARKER));
    if !ok || !out.status.success() {
        bail!(
            "guest /init did not run to the end with exit={want_exit} (qemu {}):\n{}{}",
            out.status,
            tail(&out.serial, 30),
            tail(&out.stderr, 10)
        );
    }
    println!(
        "vm-smoke: OK, booted and powered off in {:.1} s (serial log {})",
        out.elapsed.as_secs_f64(),
        out.log.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn field_parsing() {
        let l = "vgpu: vm_id=1 pool_id=0 priority=2 name=vm-a";
        assert_eq!(field(l, "vm_id"), Some("1"));
        assert_eq!(field(l, "pool_id"), Some("0"));
        assert_eq!(field(l, "name"), Some("vm-a"));
        assert_eq!(field(l, "vm"), None);
    }

    #[test]
    fn guest_check() {
        let cfg = VmConfig {
            name: "vm-b".into(),
            socket: PathBuf::from("/x"),
            vm_id: 2,
            pool_id: 1,
            priority: 0,
            mem_quota: String::new(),
            shm_size: String::new(),
        };
        let status = std::process::Command::new("true").status().unwrap();
        let mut out = VmOutput {
            name: "vm-b".into(),
            serial: "vgpu-guest: init\nvgpu: vm_id=2 pool_id=1 priority=0 name=vm-b\n\
                     wait: msi-x\nselftest: PASS (12 commands)\nvgpu-guest: exit=0\n"
                .into(),
            stderr: String::new(),
            status,
            elapsed: std::time::Duration::ZERO,
            log: PathBuf::from("/x.log"),
        };
        check_guest(&cfg, &out).unwrap();
        let good = out.serial.clone();
        out.serial = good.replace("pool_id=1", "pool_id=0");
        assert!(check_guest(&cfg, &out).is_err());
        out.serial = good.replace("wait: msi-x", "wait: poll (no VFIO: no IOMMU group)");
        let e = check_guest(&cfg, &out).unwrap_err().to_string();
        assert!(e.contains("MSI-X"), "{e}");
    }
}
