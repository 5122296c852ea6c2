//! Host tools the VM tests need: QEMU, a static busybox, cpio, and the apt machinery to get them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use crate::elf;

/// Where Debian's `busybox-static` puts its binary.
const DEBIAN_BUSYBOX: &str = "/bin/busybox";

/// The static busybox for the initramfs: `$VGPU_BUSYBOX`, else `/bin/busybox`.
pub fn busybox() -> PathBuf {
    std::env::var_os("VGPU_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEBIAN_BUSYBOX))
}

/// Where glibc's `ldconfig` is: Debian's is the binary itself, Ubuntu's a shell script that
/// runs `ldconfig.real`. glibc builds it statically.
const LDCONFIGS: &[&str] = &["/sbin/ldconfig", "/sbin/ldconfig.real"];

/// A static `ldconfig` for the initramfs (the guest's `/init` lists the loader cache with it):
/// `$VGPU_LDCONFIG`, else the first static one of [`LDCONFIGS`].
pub fn static_ldconfig() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VGPU_LDCONFIG") {
        let p = PathBuf::from(p);
        if !p.is_file() || !elf::is_static(&p).unwrap_or(false) {
            bail!("VGPU_LDCONFIG={} is not a static executable", p.display());
        }
        return Ok(p);
    }
    LDCONFIGS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file() && elf::is_static(p).unwrap_or(false))
        .with_context(|| {
            format!(
                "no static ldconfig at {} (glibc's libc-bin package; or set VGPU_LDCONFIG)",
                LDCONFIGS.join(" or ")
            )
        })
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// True when this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The QEMU binary: `$VGPU_QEMU`, else `qemu-system-x86_64` from `PATH`.
pub fn qemu_binary() -> PathBuf {
    match std::env::var_os("VGPU_QEMU") {
        Some(q) => PathBuf::from(q),
        None => PathBuf::from("qemu-system-x86_64"),
    }
}

/// Finds `name` in `PATH` (or checks it directly when it contains a slash).
pub fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What is missing, as Debian package names.
fn missing_packages() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if std::env::var_os("VGPU_QEMU").is_none() && which(Path::new("qemu-system-x86_64")).is_none() {
        missing.push("qemu-system-x86");
    }
    let busybox = busybox();
    let busybox_ok = busybox.is_file() && elf::is_static(&busybox).unwrap_or(false);
    if !busybox_ok {
        missing.push("busybox-static");
    }
    if which(Path::new("cpio")).is_none() {
        missing.push("cpio");
    }
    missing
}

/// Runs `apt-get update` once per process (root only).
pub fn apt_update_once() -> Result<()> {
    if APT_UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    println!("deps: apt-get update");
    run_apt(&["update"])
}

fn run_apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running apt-get {}", args.join(" ")))?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Makes sure QEMU, a static `/bin/busybox` and `cpio` are present, installing them with apt when
/// running as root.
pub fn ensure_host_tools() -> Result<()> {
    // Overrides point at a bundle; apt cannot fix them.
    if let Some(b) = std::env::var_os("VGPU_BUSYBOX") {
        let b = PathBuf::from(b);
        if !b.is_file() || !elf::is_static(&b).unwrap_or(false) {
            bail!("VGPU_BUSYBOX={} is not a static executable", b.display());
        }
    }
    if let Some(q) = std::env::var_os("VGPU_QEMU") {
        if which(Path::new(&q)).is_none() {
            bail!("VGPU_QEMU={} not found", Path::new(&q).display());
        }
    }
    let missing = missing_packages();
    if missing.is_empty() {
        println!("deps: qemu, busybox-static, cpio present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing host tools; install them with: sudo apt-get install -y {} \
             (or run as root to let xtask install them)",
            missing.join(" ")
        );
    }
    apt_update_once()?;
    println!("deps: apt-get install {}", missing.join(" "));
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    run_apt(&args)?;
    let still = missing_packages();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}
