//! `cargo xtask libvirt`: the committed libvirt domain (`deploy/libvirt/vm-a.xml`) run by a
//! real libvirt against vgpud on its committed config (`deploy/libvirt/vgpud.toml`).
//!
//! vgpud serves `/run/vgpu/vm-a.sock` owned by `libvirt-qemu`, with no more privilege than
//! `deploy/vgpud.service` gives it (its capability bounding set and `no_new_privs`, through
//! `setpriv`); libvirt defines and starts the
//! domain (TCG, direct kernel boot of the test guest, serial console to a file) with QEMU
//! running unprivileged as libvirt does it; the guest's selftest must pass through the vGPU
//! (the criterion of the `vm e2e` stage); `virsh destroy` must leave vgpud with the VM freed
//! (admin `stats`: not connected, no memory, nothing queued; its fds back to where they were).
//!
//! Needs root and `virsh`; without them it says so and skips. Where no libvirt daemon answers
//! (a container without systemd), it starts `virtlogd` and `libvirtd` (or `virtqemud`) itself
//! and stops them at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::demo::{check_serial, query_stats, vm_stats};
use crate::qemu::{tail, tail_file};
use crate::vgpud::{Vgpud, VmConfig};
use crate::{build, deps, initramfs, kernel, paths, VmOpts};

/// The domain, relative to the workspace root.
const DOMAIN_XML: &str = "deploy/libvirt/vm-a.xml";
/// vgpud's config for it, relative to the workspace root.
const VGPUD_TOML: &str = "deploy/libvirt/vgpud.toml";
/// libvirt's system connection (QEMU as `libvirt-qemu`, as on a real host).
const URI: &str = "qemu:///system";
/// The systemd unit, whose capability restrictions vgpud runs under here.
const UNIT: &str = "deploy/vgpud.service";
/// How soon after `virsh destroy` returns vgpud must have freed the VM.
const FREE_WITHIN: Duration = Duration::from_secs(1);
/// How long a libvirt daemon started here may take to answer.
const DAEMON_START: Duration = Duration::from_secs(30);

fn step(msg: &str) {
    println!("libvirt: {msg}");
}

/// `cargo xtask libvirt`: prints `libvirt: OK`, `libvirt: SKIPPED …` or `libvirt: FAILED …`.
pub fn main(vm: &VmOpts) -> ExitCode {
    if let Some(why) = skip_reason() {
        println!("libvirt: SKIPPED ({why})");
        return ExitCode::SUCCESS;
    }
    let t0 = Instant::now();
    match run(vm) {
        Ok(()) => {
            println!("libvirt: OK ({:.0} s in all)", t0.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("libvirt: FAILED {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn skip_reason() -> Option<String> {
    if !deps::is_root() {
        return Some("not root: libvirt's system instance and /run/vgpu need root".into());
    }
    if deps::which(Path::new("virsh")).is_none() {
        return Some(
            "no virsh: apt-get install libvirt-daemon-system libvirt-clients (.ci/run does)".into(),
        );
    }
    None
}

/// What the test takes from the committed files.
#[derive(Debug, PartialEq)]
struct Setup {
    /// `<name>` of the domain.
    domain: String,
    kernel: PathBuf,
    initrd: PathBuf,
    /// `<shmem><server path=…>`: vgpud's socket for the VM.
    server: PathBuf,
    /// `<serial type='file'><source path=…>`.
    serial: PathBuf,
}

impl Setup {
    fn parse(xml: &str) -> Result<Self> {
        let element = |tag: &str| -> Result<String> {
            let open = format!("<{tag}>");
            let start = xml
                .find(&open)
                .with_context(|| format!("{DOMAIN_XML}: no <{tag}>"))?
                + open.len();
            let end = xml[start..]
                .find(&format!("</{tag}>"))
                .with_context(|| format!("{DOMAIN_XML}: <{tag}> not closed"))?;
            Ok(xml[start..start + end].trim().to_string())
        };
        // The attribute `attr` of the first `<tag …>` after `after`.
        let attribute = |after: &str, tag: &str, attr: &str| -> Result<String> {
            let from = xml
                .find(after)
                .with_context(|| format!("{DOMAIN_XML}: no {after}"))?;
            let rest = &xml[from..];
            let el = rest
                .find(&format!("<{tag} "))
                .with_context(|| format!("{DOMAIN_XML}: no <{tag}> in {after}"))?;
            let el = &rest[el..rest[el..].find('>').map_or(rest.len(), |e| el + e)];
            let key = format!("{attr}='");
            let v = el
                .find(&key)
                .with_context(|| format!("{DOMAIN_XML}: <{tag}> in {after} has no {attr}='…'"))?
                + key.len();
            let len = el[v..]
                .find('\'')
                .with_context(|| format!("{DOMAIN_XML}: {attr}= not closed"))?;
            Ok(el[v..v + len].to_string())
        };
        Ok(Self {
            domain: element("name")?,
            kernel: element("kernel")?.into(),
            initrd: element("initrd")?.into(),
            server: attribute("<shmem ", "server", "path")?.into(),
            serial: attribute("<serial type='file'", "source", "path")?.into(),
        })
    }
}

/// The one `[[vm]]` and the admin socket of `deploy/libvirt/vgpud.toml`.
fn read_vgpud_config(text: &str) -> Result<(VmConfig, PathBuf)> {
    let t: toml::Table = toml::from_str(text).with_context(|| format!("parsing {VGPUD_TOML}"))?;
    let admin = t
        .get("mediator")
        .and_then(|m| m.get("admin_socket"))
        .and_then(|a| a.as_str())
        .with_context(|| format!("{VGPUD_TOML}: no [mediator] admin_socket"))?;
    let vms = t
        .get("vm")
        .and_then(|v| v.as_array())
        .with_context(|| format!("{VGPUD_TOML}: no [[vm]]"))?;
    let [vm] = &vms[..] else {
        bail!("{VGPUD_TOML}: expected one [[vm]], found {}", vms.len());
    };
    let s = |k: &str| vm.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let n = |k: &str| {
        vm.get(k)
            .and_then(|v| v.as_integer())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    };
    Ok((
        VmConfig {
            name: s("name"),
            socket: s("socket").into(),
            vm_id: n("vm_id"),
            pool_id: n("pool"),
            priority: n("priority"),
            mem_quota: s("mem_quota"),
            shm_size: s("shm_size"),
        },
        admin.into(),
    ))
}

/// `virsh -c qemu:///system ARGS`; its output, or an error with it.
fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running virsh")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "virsh {} failed ({}): {}",
            args.join(" "),
            out.status,
            text.trim()
        );
    }
    Ok(text)
}

fn daemon_answers() -> bool {
    Command::new("virsh")
        .args(["-c", URI, "version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The libvirt daemons this stage started (stopped again on drop, by their pid files).
struct Daemons {
    pid_files: Vec<PathBuf>,
}

impl Daemons {
    /// Makes sure a libvirt daemon answers on `qemu:///system`, starting one where none does
    /// (CI containers have no systemd to socket-activate it).
    fn ensure() -> Result<Self> {
        let mut me = Daemons {
            pid_files: Vec::new(),
        };
        if daemon_answers() {
            step("libvirt daemon already running");
            return Ok(me);
        }
        // The modular daemon where installed (libvirt ≥ 9 on newer distributions), else the
        // monolithic one (Debian 12's default).
        let qemu_daemon = if deps::which(Path::new("virtqemud")).is_some() {
            "virtqemud"
        } else {
            "libvirtd"
        };
        // QEMU's stdout/stderr go through virtlogd (qemu.conf `stdio_handler = "logd"`).
        for daemon in ["virtlogd", qemu_daemon] {
            let pid_file = PathBuf::from(format!("/run/{daemon}-xtask.pid"));
            step(&format!("starting {daemon} --daemon"));
            let status = Command::new(daemon)
                .arg("--daemon")
                .arg("--pid-file")
                .arg(&pid_file)
                .stdin(Stdio::null())
                .status()
                .with_context(|| format!("running {daemon}"))?;
            if !status.success() {
                bail!("{daemon} --daemon failed ({status})");
            }
            me.pid_files.push(pid_file);
        }
        let t0 = Instant::now();
        while !daemon_answers() {
            if t0.elapsed() > DAEMON_START {
                bail!("{qemu_daemon} does not answer on {URI} after {DAEMON_START:?}");
            }
            thread::sleep(Duration::from_millis(200));
        }
        step(&format!(
            "{qemu_daemon} answers on {URI} after {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        Ok(me)
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // The QEMU daemon first (the reverse order of starting).
        for pid_file in self.pid_files.iter().rev() {
            if let Ok(pid) = std::fs::read_to_string(pid_file) {
                let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
            }
            let _ = std::fs::remove_file(pid_file);
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The serial log as text with `\n` line ends (empty until QEMU created it).
fn read_serial(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace("\r\n", "\n"))
        .unwrap_or_default()
}

/// The unit's `CapabilityBoundingSet=` and `NoNewPrivileges=` as a `setpriv` command line, so
/// that vgpud serves libvirt's QEMU with no more privilege than the unit gives it (the rest
/// of the unit's sandbox needs systemd). Empty where `setpriv` is missing.
fn unit_restrictions() -> Result<Vec<String>> {
    if deps::which(Path::new("setpriv")).is_none() {
        step("no setpriv (util-linux): vgpud runs with root's full capabilities");
        return Ok(Vec::new());
    }
    let unit = std::fs::read_to_string(paths::root().join(UNIT))?;
    setpriv_args(&unit)
}

fn setpriv_args(unit: &str) -> Result<Vec<String>> {
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    let caps = value("CapabilityBoundingSet")
        .with_context(|| format!("{UNIT}: no CapabilityBoundingSet="))?;
    let mut bounding = String::from("-all");
    for cap in caps.split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .with_context(|| format!("{UNIT}: {cap} is not a CAP_ name"))?;
        bounding.push_str(&format!(",+{}", name.to_lowercase()));
    }
    let mut args = vec!["setpriv".to_string()];
    if value("NoNewPrivileges") == Some("yes") {
        args.push("--no-new-privs".into());
    }
    args.extend(["--bounding-set".into(), bounding, "--inh-caps=-all".into()]);
    Ok(args)
}

/// `user:group mode` of a file, as `stat` prints them.
fn owner_mode(path: &Path) -> String {
    Command::new("stat")
        .args(["-c", "%U:%G %a"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Forgets any domain of that name left by an earlier run.
fn remove_domain(name: &str) {
    let _ = virsh(&["destroy", name]);
    let _ = virsh(&["undefine", name]);
}

pub fn run(vm: &VmOpts) -> Result<()> {
    let t0 = Instant::now();
    let root = paths::root();
    let xml_path = root.join(DOMAIN_XML);
    let toml_path = root.join(VGPUD_TOML);
    let setup = Setup::parse(&std::fs::read_to_string(&xml_path)?)?;
    let (vm_cfg, admin) = read_vgpud_config(&std::fs::read_to_string(&toml_path)?)?;
    if setup.server != vm_cfg.socket {
        bail!(
            "{DOMAIN_XML} connects to {} but {VGPUD_TOML} serves {}",
            setup.server.display(),
            vm_cfg.socket.display()
        );
    }

    deps::ensure_host_tools()?;
    step("building vgpud, vgpuctl (release), vgpu-smi (static)");
    build::cargo_build_release(&["vgpu-mediator", "vgpuctl"])?;
    let guest_bin = build::guest_binary()?;
    let kernel = kernel::ensure_kernel()?;
    let initrd = initramfs::build(
        Some(&guest_bin),
        &kernel.modules,
        &paths::vm_dir().join("initramfs.cpio"),
    )?;
    let kernel = kernel.vmlinuz;
    // Where the domain names them: libvirt's boot-image directory, which libvirt-qemu may
    // read (target/ may sit in a home directory it cannot enter).
    for (from, to) in [(&kernel, &setup.kernel), (&initrd, &setup.initrd)] {
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    step(&format!(
        "guest: {} and {}",
        setup.kernel.display(),
        setup.initrd.display()
    ));

    let daemons = Daemons::ensure()?;
    let version = virsh(&["version"])?;
    for l in version.lines().filter(|l| !l.trim().is_empty()) {
        println!("  {}", l.trim());
    }
    // The security drivers libvirt runs QEMU under (dac: the libvirt-qemu user; apparmor or
    // selinux where the host has them), from its capabilities.
    let caps = virsh(&["capabilities"])?;
    let models: Vec<&str> = caps
        .split("<secmodel>")
        .skip(1)
        .filter_map(|m| m.split("<model>").nth(1)?.split("</model>").next())
        .collect();
    step(&format!("libvirt security drivers: {}", models.join(", ")));

    // vgpud on the committed config, as root (it gives the socket to libvirt-qemu).
    let dir = paths::target_dir().join("vgpu-libvirt");
    std::fs::create_dir_all(&dir)?;
    if let Some(sock_dir) = vm_cfg.socket.parent() {
        std::fs::create_dir_all(sock_dir)?;
    }
    let log = dir.join("vgpud.log");
    let wrapper = unit_restrictions()?;
    step(&format!(
        "starting {}vgpud --config {VGPUD_TOML}",
        wrapper.iter().map(|w| format!("{w} ")).collect::<String>()
    ));
    let mut daemon = Vgpud::start_wrapped(
        &wrapper,
        &build::host_bin("vgpud"),
        &toml_path,
        &[&vm_cfg.socket, &admin],
        &log,
    )?;
    let pid = daemon.pid().ok_or_else(|| anyhow!("vgpud has no pid"))?;
    let fds0 = open_fds(pid);
    step(&format!(
        "{} is {}",
        vm_cfg.socket.display(),
        owner_mode(&vm_cfg.socket)
    ));
    let result = drive(vm, &setup, &vm_cfg, &admin, &xml_path, pid, fds0);
    remove_domain(&setup.domain);
    if let Err(e) = result {
        bail!(
            "{e:#}\nvgpud log {}:\n{}",
            log.display(),
            tail_file(&log, 30)
        );
    }
    if !daemon.is_running() {
        bail!("vgpud died:\n{}", tail_file(&log, 30));
    }
    daemon.stop()?;
    drop(daemons);
    step(&format!("done in {:.1} s", t0.elapsed().as_secs_f64()));
    Ok(())
}

/// Define, start, check the guest, destroy, check that vgpud freed the VM.
fn drive(
    vm: &VmOpts,
    setup: &Setup,
    vm_cfg: &VmConfig,
    admin: &Path,
    xml_path: &Path,
    pid: u32,
    fds0: usize,
) -> Result<()> {
    remove_domain(&setup.domain);
    let _ = std::fs::remove_file(&setup.serial);
    let xml = xml_path.to_string_lossy();
    let t = Instant::now();
    virsh(&["define", &xml])?;
    // Slow where libvirt (re)probes QEMU's capabilities: once per cache, or every time on a
    // host whose /dev/kvm libvirt finds unusable after probing with it (KVM-PVM machines).
    step(&format!(
        "virsh define {DOMAIN_XML}: domain {} ({:.1} s)",
        setup.domain,
        t.elapsed().as_secs_f64()
    ));

    let boot = Instant::now();
    virsh(&["start", &setup.domain])?;
    step(&format!(
        "virsh start {} (serial console: {})",
        setup.domain,
        setup.serial.display()
    ));
    // Who QEMU runs as, and which QEMU: libvirt's choice, not xtask's.
    if let Ok(ps) = Command::new("ps")
        .args(["-C", "qemu-system-x86_64", "-o", "user:16=,args="])
        .output()
    {
        for l in String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains(&setup.domain))
        {
            let short: String = l.chars().take(160).collect();
            println!("  qemu: {short}…");
        }
    }

    // The guest runs the selftest, then holds (vgpu.then=hold) until destroyed.
    let serial = loop {
        let text = read_serial(&setup.serial);
        if text.contains(initramfs::HOLD_MARKER) {
            break text;
        }
        let state = virsh(&["domstate", &setup.domain]).unwrap_or_default();
        if !state.contains("running") {
            bail!(
                "domain {} is {} before the guest finished (serial {}):\n{}",
                setup.domain,
                state.trim(),
                setup.serial.display(),
                tail(&text, 30)
            );
        }
        if boot.elapsed() > vm.timeout() {
            bail!(
                "no {:?} on the serial console within {} s:\n{}",
                initramfs::HOLD_MARKER,
                vm.vm_timeout,
                tail(&text, 30)
            );
        }
        thread::sleep(Duration::from_millis(200));
    };
    check_serial(vm_cfg, &serial).map_err(|why| {
        anyhow!(
            "{}: {why} (serial {})\n{}",
            setup.domain,
            setup.serial.display(),
            tail(&serial, 40)
        )
    })?;
    for l in serial.lines().map(str::trim) {
        if l.starts_with("vgpu: ") || l.starts_with("selftest: ") {
            println!("  [{}] {l}", setup.domain);
        }
    }
    step(&format!(
        "guest selftest PASS through the vGPU, ids match {VGPUD_TOML} ({:.1} s after virsh start)",
        boot.elapsed().as_secs_f64()
    ));

    let stats = query_stats(admin)?;
    let v = vm_stats(&stats, &vm_cfg.name).context("vgpuctl stats does not list the VM")?;
    if v["connected"] != true || v["commands"].as_u64().unwrap_or(0) == 0 {
        bail!("while the domain runs, vgpud shows {v}");
    }
    step(&format!(
        "vgpud: {} connected, {} commands; {} is {}",
        vm_cfg.name,
        v["commands"],
        vm_cfg.socket.display(),
        owner_mode(&vm_cfg.socket)
    ));

    virsh(&["destroy", &setup.domain])?;
    let destroyed = Instant::now();
    loop {
        let stats = query_stats(admin)?;
        let v = vm_stats(&stats, &vm_cfg.name).context("vgpuctl stats does not list the VM")?;
        if v["connected"] == false && v["mem_used"] == 0 && v["queued"] == 0 {
            break;
        }
        if destroyed.elapsed() > FREE_WITHIN {
            bail!("VM not freed {FREE_WITHIN:?} after virsh destroy: {v}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let freed = destroyed.elapsed();
    while open_fds(pid) > fds0 {
        if destroyed.elapsed() > FREE_WITHIN {
            bail!(
                "vgpud holds {} fds after virsh destroy, {fds0} before the VM",
                open_fds(pid)
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
    step(&format!(
        "virsh destroy {}: vgpud freed the VM in {:.1} ms (not connected, no memory, nothing \
         queued; fds back to {fds0})",
        setup.domain,
        freed.as_secs_f64() * 1000.0
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed files agree with each other and with what the test relies on.
    #[test]
    fn committed_files() {
        let root = paths::root();
        let xml = std::fs::read_to_string(root.join(DOMAIN_XML)).unwrap();
        let s = Setup::parse(&xml).unwrap();
        assert_eq!(s.domain, "vgpu-vm-a");
        assert_eq!(s.server, PathBuf::from("/run/vgpu/vm-a.sock"));
        assert!(xml.contains("<model type='ivshmem-doorbell'/>"));
        assert!(xml.contains("<domain type='qemu'>"), "TCG: type='qemu'");
        assert!(
            xml.contains("vgpu.then=hold"),
            "the test destroys a running guest"
        );
        let (vm, admin) =
            read_vgpud_config(&std::fs::read_to_string(root.join(VGPUD_TOML)).unwrap()).unwrap();
        assert_eq!(vm.socket, s.server);
        assert_eq!(vm.name, "vm-a");
        assert_eq!(vm.vm_id, 1);
        assert_eq!(admin, PathBuf::from("/run/vgpu/admin.sock"));
    }

    #[test]
    fn setpriv_from_the_unit() {
        let unit = std::fs::read_to_string(paths::root().join(UNIT)).unwrap();
        assert_eq!(
            setpriv_args(&unit).unwrap(),
            [
                "setpriv",
                "--no-new-privs",
                "--bounding-set",
                "-all,+chown,+fowner",
                "--inh-caps=-all"
            ]
        );
    }

    /// The libvirt XML in README and in docs/operations.md is an excerpt of the committed
    /// domain, line for line (indentation aside), so that what they show is what CI runs.
    #[test]
    fn documented_xml_is_from_the_domain() {
        let root = paths::root();
        let xml = std::fs::read_to_string(root.join(DOMAIN_XML)).unwrap();
        let xml: Vec<&str> = xml.lines().map(str::trim).collect();
        for doc in ["README.md", "docs/operations.md"] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            let blocks: Vec<Vec<&str>> = text
                .split("```xml\n")
                .skip(1)
                .map(|b| {
                    b.split("```")
                        .next()
                        .unwrap()
                        .lines()
                        .map(str::trim)
                        .collect()
                })
                .collect();
            assert!(!blocks.is_empty(), "{doc} has no ```xml block");
            for b in blocks {
                assert!(
                    xml.windows(b.len()).any(|w| w == &b[..]),
                    "{doc}'s xml block is not an excerpt of {DOMAIN_XML}:\n{}",
                    b.join("\n")
                );
            }
        }
    }
}
