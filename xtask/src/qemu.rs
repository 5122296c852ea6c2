//! Boots one VM under QEMU: serial console captured to a log file, optional vGPU
//! (`ivshmem-doorbell` on a vgpud socket), a hard timeout.
//!
//! `$VGPU_QEMU` overrides the QEMU binary and `$VGPU_QEMU_DATADIR` adds `-L <dir>` (firmware),
//! for a QEMU bundle on a host without Debian's packages (also set `QEMU_MODULE_DIR` there).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::deps;

/// QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation (works everywhere; the default).
    Tcg,
    /// KVM (real hosts only: the project's KVM-PVM machines cannot boot stock kernels).
    Kvm,
}

impl Accel {
    fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// One VM to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to `console=ttyS0 panic=-1 quiet`.
    pub extra_append: String,
    /// vgpud's socket for this VM; `None` boots without a vGPU.
    pub socket: Option<PathBuf>,
    /// A virtual IOMMU (`intel-iommu` with interrupt remapping, guest `intel_iommu=on`): what
    /// lets the guest drive the vGPU through `vfio-pci` and take MSI-X completion interrupts.
    /// Without it the guest polls.
    pub iommu: bool,
    /// Serial console (and QEMU's stderr) is written here.
    pub log: PathBuf,
    pub timeout: Duration,
    pub accel: Accel,
}

/// What a finished VM left behind.
#[derive(Debug)]
pub struct VmOutput {
    pub name: String,
    /// Everything the guest wrote to its serial console.
    pub serial: String,
    /// QEMU's own stderr.
    pub stderr: String,
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub log: PathBuf,
}

/// The QEMU command line for `spec`.
pub fn command(spec: &VmSpec) -> Command {
    let mut cmd = Command::new(deps::qemu_binary());
    if let Some(dir) = std::env::var_os("VGPU_QEMU_DATADIR") {
        cmd.arg("-L").arg(dir);
    }
    let mut append = String::from("console=ttyS0 panic=-1 quiet");
    if spec.iommu {
        // no_timer_check: with interrupt remapping the kernel panics ("timer doesn't work
        // through Interrupt-remapped IO-APIC") when its boot-time check of the timer interrupt,
        // a short busy wait, runs slower than it expects, as under TCG on a loaded host.
        append.push_str(" intel_iommu=on no_timer_check");
    }
    if !spec.extra_append.is_empty() {
        append.push(' ');
        append.push_str(&spec.extra_append);
    }
    // Interrupt remapping under KVM needs the IOAPIC in QEMU (split irqchip); TCG has no
    // in-kernel irqchip to split.
    let machine = if spec.iommu && spec.accel == Accel::Kvm {
        "q35,kernel-irqchip=split"
    } else {
        "q35"
    };
    cmd.args(["-accel", spec.accel.as_str()])
        .args(["-machine", machine, "-m", "256M", "-smp", "1"]);
    if spec.iommu {
        // Before every other device: QEMU wants the IOMMU created before the devices it covers.
        cmd.args(["-device", "intel-iommu,intremap=on"]);
    }
    cmd.args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .arg("-append")
        .arg(append);
    if let Some(sock) = &spec.socket {
        // QEMU option values escape a comma by doubling it.
        let path = sock.to_string_lossy().replace(',', ",,");
        cmd.arg("-chardev")
            .arg(format!("socket,id=vgpu0,path={path}"))
            .args(["-device", "ivshmem-doorbell,chardev=vgpu0,vectors=1"]);
    }
    cmd
}

/// Boots the VM and waits until QEMU exits or the timeout expires (then it is killed and this
/// fails). A non-zero QEMU exit status is returned, not an error: callers judge the serial output.
pub fn run(spec: &VmSpec) -> Result<VmOutput> {
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log =
        File::create(&spec.log).with_context(|| format!("creating {}", spec.log.display()))?;
    let log = Arc::new(Mutex::new(log));
    let mut cmd = command(spec);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let out = tee(child.stdout.take().expect("piped"), log.clone());
    let err = tee(child.stderr.take().expect("piped"), log.clone());

    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() >= spec.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let serial = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let elapsed = start.elapsed();
    let Some(status) = status else {
        bail!(
            "VM {} timed out after {} s and was killed (log {})\n{}",
            spec.name,
            spec.timeout.as_secs(),
            spec.log.display(),
            tail(&format!("{serial}{stderr}"), 30)
        );
    };
    Ok(VmOutput {
        name: spec.name.clone(),
        serial,
        stderr,
        status,
        elapsed,
        log: spec.log.clone(),
    })
}

/// Copies `r` into the shared log and returns all of it as text.
fn tee(mut r: impl Read + Send + 'static, log: Arc<Mutex<File>>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    if let Ok(mut f) = log.lock() {
                        let _ = f.write_all(&buf[..n]);
                    }
                }
            }
        }
        // The serial console uses CRLF line ends.
        String::from_utf8_lossy(&all).replace("\r\n", "\n")
    })
}

/// The last `n` lines of `text`, indented.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("    | {l}\n"))
        .collect()
}

/// Reads a log file's last `n` lines (empty when unreadable).
pub fn tail_file(path: &Path, n: usize) -> String {
    std::fs::read(path)
        .map(|b| tail(&String::from_utf8_lossy(&b), n))
        .unwrap_or_default()
}
