//! The guest kernel: Debian's cloud kernel, downloaded once with apt and cached under `target/`,
//! with the modules `vfio-pci` needs (the guest's MSI-X completion interrupts without a module
//! of ours; the cloud kernel has them, and `CONFIG_INTEL_IOMMU=y`).
//!
//! `$VGPU_KERNEL` overrides the whole thing with a `vmlinuz` path (for hosts without apt), and
//! `$VGPU_KERNEL_MODULES` names a folder of `.ko` files for it, loaded in name order (without
//! it the guest has no VFIO and polls).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{deps, paths};

const META_PACKAGE: &str = "linux-image-cloud-amd64";
const FALLBACK_PACKAGE: &str = "linux-image-6.1.0-56-cloud-amd64";

/// The modules (paths inside the package's `lib/modules/<version>/`) that `vfio-pci` needs, in
/// load order: each one's `depends=` comes before it (checked when they are extracted).
const VFIO_MODULES: &[&str] = &[
    "kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/vfio/vfio.ko",
    "kernel/drivers/vfio/vfio_virqfd.ko",
    "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "kernel/drivers/vfio/pci/vfio-pci.ko",
];

/// A guest kernel and the modules the initramfs loads, in load order.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
}

/// Returns a cached guest kernel with its VFIO modules, downloading it when needed.
pub fn ensure_kernel() -> Result<Kernel> {
    if let Some(k) = std::env::var_os("VGPU_KERNEL") {
        let k = PathBuf::from(k);
        if !k.is_file() {
            bail!("VGPU_KERNEL={} is not a file", k.display());
        }
        let modules = match std::env::var_os("VGPU_KERNEL_MODULES") {
            Some(dir) => modules_in(Path::new(&dir))?,
            None => Vec::new(),
        };
        return Ok(Kernel {
            vmlinuz: k,
            modules,
        });
    }
    let cache = paths::vm_dir().join("cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let package = match resolve_package()? {
        Some(p) => p,
        None => {
            // No apt lists: use any kernel cached earlier before giving up.
            if let Some(k) = any_cached_kernel(&cache) {
                return cached(&k);
            }
            FALLBACK_PACKAGE.to_string()
        }
    };
    let vmlinuz = cache.join(&package).join("vmlinuz");
    if let Ok(k) = cached(&vmlinuz) {
        return Ok(k);
    }
    download_and_extract(&package, &cache, &vmlinuz)?;
    cached(&vmlinuz)
}

/// The kernel cached at `vmlinuz` with its modules (in `modules/` beside it, all of them).
fn cached(vmlinuz: &Path) -> Result<Kernel> {
    let dir = vmlinuz
        .parent()
        .expect("vmlinuz has a parent")
        .join("modules");
    let modules = modules_in(&dir).unwrap_or_default();
    if !vmlinuz.is_file() || modules.len() != VFIO_MODULES.len() {
        bail!(
            "no complete kernel cache at {} (the kernel and its {} VFIO modules in {}): \
             run once as root, or where apt can resolve {META_PACKAGE}, to download it",
            vmlinuz.display(),
            VFIO_MODULES.len(),
            dir.display()
        );
    }
    Ok(Kernel {
        vmlinuz: vmlinuz.to_path_buf(),
        modules,
    })
}

/// The `.ko` files in `dir`, in name order (the load order).
fn modules_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ko"))
        .collect();
    found.sort();
    Ok(found)
}

/// A module's `depends=` list from its `.modinfo` strings.
fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A module's name as `depends=` spells it: the file name without `.ko`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file)
}

/// Copies [`VFIO_MODULES`] from an extracted package into `dir` as `NN-name.ko` (so that name
/// order is load order), checking that each module's dependencies load before it.
fn copy_modules(extract: &Path, dir: &Path) -> Result<()> {
    let base = std::fs::read_dir(extract.join("lib/modules"))
        .with_context(|| format!("no lib/modules in {}", extract.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .with_context(|| format!("no lib/modules/<version> in {}", extract.display()))?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for (i, m) in VFIO_MODULES.iter().enumerate() {
        let src = base.join(m);
        let bytes = std::fs::read(&src).with_context(|| {
            format!(
                "reading {} (compressed modules are not supported)",
                src.display()
            )
        })?;
        for dep in module_depends(&bytes) {
            let earlier = VFIO_MODULES[..i]
                .iter()
                .any(|e| module_name(e).replace('-', "_") == dep.replace('-', "_"));
            if !earlier {
                bail!("module {m} depends on {dep}, which VFIO_MODULES does not load before it");
            }
        }
        std::fs::write(tmp.join(format!("{i:02}-{}.ko", module_name(m))), bytes)?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    Ok(())
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
    copy_modules(&extract, &dir.join("modules"))?;
    std::fs::rename(&tmp, vmlinuz)?;
    // Keep only the kernel and the VFIO modules.
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

    #[test]
    fn reads_module_depends() {
        let ko = b"\x7fELF...\0license=GPL v2\0depends=vfio,vfio_virqfd,irqbypass\0retpoline=Y\0";
        assert_eq!(module_depends(ko), ["vfio", "vfio_virqfd", "irqbypass"]);
        assert!(module_depends(b"\0depends=\0name=vfio\0").is_empty());
        assert_eq!(
            module_name("kernel/drivers/vfio/pci/vfio-pci-core.ko"),
            "vfio-pci-core"
        );
    }
}
