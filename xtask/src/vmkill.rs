//! The VM kill test (a stage of `cargo xtask test`): a VM whose QEMU is SIGKILLed in the middle
//! of a large copy, then of a long kernel. vgpud must free the VM (context, memory, queued
//! work, fds) within 1 s, the same socket must serve the VM's next boot, and a bystander
//! client's self-tests must pass throughout.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::demo::{query_stats, vm_stats};
use crate::qemu::{self, tail_file, VmSpec};
use crate::vgpud::{Config, Vgpud, VmConfig};
use crate::{build, deps, initramfs, kernel, paths, VmOpts};

/// How soon after QEMU dies vgpud must have freed the VM.
const FREE_WITHIN: Duration = Duration::from_secs(1);

fn step(msg: &str) {
    println!("vm-kill: {msg}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Waits until `pattern` appears in the file at `log` (a QEMU serial log) or `child` exits.
fn wait_for_line(child: &mut Child, log: &Path, pattern: &str, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(pattern)) {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "QEMU exited ({st}) before {pattern:?}:\n{}",
                tail_file(log, 30)
            );
        }
        if t0.elapsed() > timeout {
            bail!("no {pattern:?} within {timeout:?}:\n{}", tail_file(log, 30));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(vm: &VmOpts) -> Result<()> {
    deps::ensure_host_tools()?;
    build::cargo_build_release(&["vgpu-mediator", "vgpuctl"])?;
    let guest_bin = build::guest_binary()?;
    let kernel = kernel::ensure_kernel()?;
    // No virtual IOMMU and no VFIO modules: these guests poll, which keeps the polling path
    // covered by a VM test (the demo's guests take MSI-X interrupts).
    let initrd = initramfs::build(
        Some(&guest_bin),
        &[],
        &paths::vm_dir().join("initramfs-poll.cpio"),
    )?;

    let dir = paths::target_dir().join("vgpu-vm-kill");
    std::fs::create_dir_all(&dir)?;
    let sock_dir = std::env::temp_dir().join(format!("vgpu-kill-{}", std::process::id()));
    std::fs::create_dir_all(&sock_dir)?;
    let vmc = |name: &str, vm_id| VmConfig {
        name: name.to_string(),
        socket: sock_dir.join(format!("{name}.sock")),
        vm_id,
        pool_id: 0,
        priority: 0,
        mem_quota: "256MiB".into(),
        shm_size: "16MiB".into(),
    };
    let config = Config {
        backend: "cpu".into(),
        admin_socket: sock_dir.join("admin.sock"),
        vms: vec![vmc("victim", 1), vmc("bystander", 2)],
    };
    let log = dir.join("vgpud.log");
    let mut daemon = Vgpud::start(
        &build::host_bin("vgpud"),
        &config,
        &dir.join("vgpud.toml"),
        &log,
    )?;
    let pid = daemon.pid().ok_or_else(|| anyhow!("vgpud has no pid"))?;
    let victim_sock = config.vms[0].socket.clone();

    // The bystander: a process client running the self-test (bit-exact checks) in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU32::new(0));
    let bystander = {
        let (stop, passes) = (stop.clone(), passes.clone());
        let (bin, sock) = (guest_bin.clone(), config.vms[1].socket.clone());
        thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new(&bin)
                    .arg("--socket")
                    .arg(&sock)
                    .arg("selftest")
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "bystander selftest failed:\n{}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
                passes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    let spec = |name: &str, args: &str| VmSpec {
        name: name.into(),
        kernel: kernel.vmlinuz.clone(),
        initrd: initrd.clone(),
        extra_append: format!("vgpu.args={args}"),
        socket: Some(victim_sock.clone()),
        iommu: false,
        log: dir.join(format!("{name}.serial.log")),
        timeout: vm.timeout(),
        accel: vm.accel,
    };
    let result = (|| -> Result<()> {
        // One boot first, so that the fd baseline includes what vgpud keeps per VM socket.
        boot_selftest(&spec("boot-0", "selftest"))?;
        let fds0 = open_fds(pid);
        for (mode, args) in [
            ("copy", "stress,--copy-mib,8"),
            ("kernel", "stress,--kernel-ms,800"),
        ] {
            let s = spec(&format!("kill-{mode}"), args);
            step(&format!("{mode}: booting a VM that keeps the device busy"));
            let serial = File::create(&s.log)?;
            let mut qemu = qemu::command(&s)
                .stdin(Stdio::null())
                .stdout(Stdio::from(serial.try_clone()?))
                .stderr(Stdio::from(serial))
                .spawn()
                .context("starting QEMU")?;
            let r = wait_for_line(&mut qemu, &s.log, "stress: running", s.timeout);
            if r.is_err() {
                let _ = qemu.kill();
                let _ = qemu.wait();
            }
            r?;
            // In the middle of the work: a copy or a kernel is in flight.
            thread::sleep(Duration::from_millis(300));
            qemu.kill()?;
            let killed = Instant::now();
            qemu.wait()?;
            loop {
                let stats = query_stats(&config.admin_socket)?;
                let v = vm_stats(&stats, "victim").ok_or_else(|| anyhow!("no victim stats"))?;
                if v["connected"] == false && v["mem_used"] == 0 && v["queued"] == 0 {
                    break;
                }
                if killed.elapsed() > FREE_WITHIN {
                    bail!("{mode}: VM not freed {FREE_WITHIN:?} after SIGKILL: {v}");
                }
                thread::sleep(Duration::from_millis(5));
            }
            let freed = killed.elapsed();
            while open_fds(pid) > fds0 {
                if killed.elapsed() > FREE_WITHIN {
                    bail!("{mode}: vgpud holds {} fds, {fds0} before", open_fds(pid));
                }
                thread::sleep(Duration::from_millis(5));
            }
            step(&format!(
                "{mode}: QEMU SIGKILLed mid-{mode}; vgpud freed the VM in {:.1} ms, fds back to {fds0}",
                freed.as_secs_f64() * 1000.0
            ));
            boot_selftest(&spec(&format!("reboot-{mode}"), "selftest"))?;
            step(&format!(
                "{mode}: the same socket served the next boot (selftest PASS)"
            ));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let by = bystander
        .join()
        .map_err(|_| anyhow!("bystander thread panicked"))?;
    if let Err(e) = result.and(by) {
        bail!(
            "{e:#}\nvgpud log {}:\n{}",
            log.display(),
            tail_file(&log, 30)
        );
    }
    step(&format!(
        "bystander: {} self-tests passed throughout",
        passes.load(Ordering::Relaxed)
    ));
    if !daemon.is_running() {
        bail!("vgpud died:\n{}", tail_file(&log, 30));
    }
    daemon.stop()?;
    let _ = std::fs::remove_dir_all(&sock_dir);
    Ok(())
}

/// Boots a VM running the self-test and checks that it passed, polling (no IOMMU).
fn boot_selftest(spec: &VmSpec) -> Result<()> {
    let out = qemu::run(spec)?;
    let polled = out
        .serial
        .lines()
        .any(|l| l.trim().starts_with("wait: poll"));
    if !out.serial.contains("selftest: PASS") || !polled {
        bail!(
            "{}: expected \"wait: poll\" and \"selftest: PASS\" (log {}):\n{}",
            spec.name,
            out.log.display(),
            qemu::tail(&out.serial, 30)
        );
    }
    Ok(())
}
