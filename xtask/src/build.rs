//! Cargo builds of the project's binaries: host (vgpud, vgpuctl, vgpu-bench) and the static guest
//! binary (vgpu-smi).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;

/// The guest target: glibc, linked statically so the initramfs needs no libraries.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Host binaries, by name, in `target/release/`.
pub fn host_bin(name: &str) -> PathBuf {
    paths::target_dir().join("release").join(name)
}

/// `cargo build --release -p <pkg>...` in the workspace root.
pub fn cargo_build_release(packages: &[&str]) -> Result<()> {
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::root()).args(["build", "--release"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(
        cmd,
        &format!("cargo build --release -p {}", packages.join(" -p ")),
    )
}

/// Builds the static `vgpu-smi` and returns its path.
pub fn guest_binary() -> Result<PathBuf> {
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push(' ');
    }
    flags.push_str("-C target-feature=+crt-static -C strip=debuginfo");
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::root())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", flags)
        .args([
            "build",
            "--release",
            "-p",
            "vgpu-guest",
            "--bin",
            "vgpu-smi",
        ])
        .args(["--target", GUEST_TARGET]);
    run(
        cmd,
        "cargo build --release -p vgpu-guest --bin vgpu-smi (static)",
    )?;
    let bin = paths::target_dir()
        .join(GUEST_TARGET)
        .join("release")
        .join("vgpu-smi");
    if !bin.is_file() {
        bail!("the guest build left no {}", bin.display());
    }
    Ok(bin)
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}
