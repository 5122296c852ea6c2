//! The guest kernel: Debian's cloud kernel, downloaded once with apt and cached under `target/`.
//!
//! `$VGPU_KERNEL` overrides the whole thing with a `vmlinuz` path (for hosts without apt).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{deps, paths};

const META_PACKAGE: &str = "linux-image-cloud-amd64";
const FALLBACK_PACKAGE: &str = "linux-image-6.1.0-56-cloud-amd64";

/// Returns the path of a cached guest `vmlinuz`, downloading it when needed.
pub fn ensure_kernel() -> Result<PathBuf> {
    if let Some(k) = std::env::var_os("VGPU_KERNEL") {
        let k = PathBuf::from(k);
        if !k.is_file() {
            bail!("VGPU_KERNEL={} is not a file", k.display());
        }
        return Ok(k);
    }
    let cache = paths::vm_dir().join("cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let package = match resolve_package()? {
        Some(p) => p,
        None => {
            // No apt lists: use any kernel cached earlier before giving up.
            if let Some(k) = any_cached_kernel(&cache) {
                return Ok(k);
            }
            FALLBACK_PACKAGE.to_string()
        }
    };
    let vmlinuz = cache.join(&package).join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    download_and_extract(&package, &cache, &vmlinuz)?;
    Ok(vmlinuz)
}

/// The versioned kernel package `linux-image-cloud-amd64` depends on; `None` when apt knows
/// nothing (no package lists and not root to fetch them).
fn resolve_package() -> Result<Option<String>> {
    if let Some(p) = query_depends()? {
        return Ok(Some(p));
    }
    if deps::is_root() {
        deps::apt_update_once()?;
        if let Some(p) = query_depends()? {
            return Ok(Some(p));
        }
        println!("kernel: could not resolve {META_PACKAGE}; using {FALLBACK_PACKAGE}");
        return Ok(Some(FALLBACK_PACKAGE.to_string()));
    }
    Ok(None)
}

fn query_depends() -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["depends", META_PACKAGE])
        .stderr(Stdio::null())
        .output()
        .context("running apt-cache (not Debian? set VGPU_KERNEL=/path/to/vmlinuz)")?;
    Ok(parse_depends(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|p| p.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
}

fn any_cached_kernel(cache: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vmlinuz"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn download_and_extract(package: &str, cache: &Path, vmlinuz: &Path) -> Result<()> {
    let start = Instant::now();
    println!("kernel: apt-get download {package}");
    let deb = find_deb(cache, package);
    let deb = match deb {
        Some(d) => d,
        None => {
            let out = Command::new("apt-get")
                .args(["download", package])
                .current_dir(cache)
                .stdin(Stdio::null())
                .output()
                .context("running apt-get download")?;
            if !out.status.success() {
                bail!(
                    "`apt-get download {package}` failed ({}): {}\n\
                     hint: run `apt-get update` as root, or set VGPU_KERNEL=/path/to/vmlinuz",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            find_deb(cache, package)
                .with_context(|| format!("apt-get download left no {package}_*.deb"))?
        }
    };
    let extract = cache.join(format!("{package}.extract"));
    let _ = std::fs::remove_dir_all(&extract);
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&extract)
        .status()
        .context("running dpkg -x")?;
    if !status.success() {
        bail!("`dpkg -x {}` failed ({status})", deb.display());
    }
    let boot = extract.join("boot");
    let image = std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    let dir = vmlinuz.parent().expect("vmlinuz has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("vmlinuz.tmp");
    std::fs::copy(&image, &tmp)?;
    std::fs::rename(&tmp, vmlinuz)?;
    // Keep only the kernel; the modules are not used by the initramfs.
    let _ = std::fs::remove_dir_all(&extract);
    let _ = std::fs::remove_file(&deb);
    println!(
        "kernel: {} ready in {:.1} s",
        vmlinuz.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(parse_depends("N: Unable to locate package\n"), None);
    }
}
