//! `cargo xtask gpu-check`: prepares the self-contained folder that runs the GPU-host suite
//! (issue 4) on a host with no Rust toolchain, no QEMU and no network, and runs it where a GPU
//! is usable here (or with `--run`).
//!
//! The folder (default `<target>/gpu-check`, `--out-dir` elsewhere, e.g. a git-ignored folder
//! inside the repo so that it travels with the working tree):
//!
//! ```text
//! run.sh                  the suite: env, conformance tests, benchmarks, one VM (see its header)
//! bin/                    vgpud, vgpuctl, vgpu-bench (release, stripped)
//! tests/                  GPU test executables (cargo test --release --no-run), MISSING if any is
//! ptx/                    crates/vgpu-mediator/kernels/ptx/*.ptx (the suite's PTX tests)
//! vm/                     vmlinuz + initramfs.cpio (busybox + static vgpu-smi + static ldconfig)
//! lib/                    libvgpucuda.so (the guest driver)
//! cuda*/, frameworks/     CUDA C++ programs and framework scripts (crates/vgpu-cuda/tests/),
//!                         built or run there (stages `cuda`, `cuda-bench`, `frameworks`;
//!                         `tenants`: tenant_torch.py in two VMs, tenants_report.py's verdicts)
//! guest-image.sh          scripts/guest-image.sh: libcuda.so.1 + programs as a cpio to append
//!                         to vm/initramfs.cpio (stage `cuda-vm`)
//! qemu-bundle.tar.gz      scripts/qemu-bundle.sh's QEMU with its libraries, module and firmware
//! MANIFEST                commit, build date, contents and sizes
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{build, deps, initramfs, kernel, paths};

/// Test targets of `vgpu-mediator` that the GPU host runs with `VGPU_TEST_BACKEND=cuda`.
const GPU_TESTS: &[&str] = &[
    "conformance",
    "attacks",
    "tenancy",
    "quiet",
    "vmm",
    "tensormap",
    "graphs",
];
/// The folder should stay well inside what travels to the GPU host (64 MiB with the tree).
const SIZE_BUDGET: u64 = 60 << 20;
/// The GPU-host script, kept in `scripts/` so it can be read and linted there.
const RUN_SH: &str = include_str!("../../scripts/gpu-check/run.sh");
/// What installs vgpu's libcuda.so.1 and the `cuda-vm` stage's programs into the guest image.
const GUEST_IMAGE_SH: &str = include_str!("../../scripts/guest-image.sh");

/// Options of `cargo xtask gpu-check`.
#[derive(clap::Args, Clone, Debug)]
pub struct Opts {
    /// Where to prepare the folder (default: <target dir>/gpu-check).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Run the suite here after preparing it (the default when `nvidia-smi` works here).
    #[arg(long, conflicts_with = "no_run")]
    pub run: bool,
    /// Only prepare the folder, even where a GPU is usable.
    #[arg(long)]
    pub no_run: bool,
    /// Results of a local run (default: <out-dir>-results).
    #[arg(long)]
    pub results: Option<PathBuf>,
}

pub fn main(o: &Opts) -> ExitCode {
    let dir = o
        .out_dir
        .clone()
        .unwrap_or_else(|| paths::target_dir().join("gpu-check"));
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir().unwrap_or_default().join(dir)
    };
    if let Err(e) = prepare(&dir) {
        eprintln!("xtask gpu-check: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let gpu_here = !o.no_run && (o.run || nvidia_smi_works());
    let results = o.results.clone().unwrap_or_else(|| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push("-results");
        dir.with_file_name(name)
    });
    if !gpu_here {
        println!(
            "gpu-check: no GPU here (nvidia-smi does not work; --run forces a run). On the GPU host:\n\
             \n    bash {}/run.sh OUTDIR\n\n\
             (copy {} there first: it needs no Rust, no QEMU and no network; OUTDIR gets \
             report.txt, report.json and the logs; exit status 0 = all passed)",
            dir.display(),
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "gpu-check: running {}/run.sh {}",
        dir.display(),
        results.display()
    );
    match Command::new("bash")
        .arg(dir.join("run.sh"))
        .arg(&results)
        .status()
    {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!(
                "gpu-check: FAILED ({s}); see {}",
                results.join("report.txt").display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("gpu-check: cannot run bash: {e}");
            ExitCode::FAILURE
        }
    }
}

fn nvidia_smi_works() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn step(msg: &str) {
    println!("gpu-check: {msg}");
}

/// Builds everything and lays the folder out afresh.
pub fn prepare(dir: &Path) -> Result<()> {
    step("checking host tools");
    deps::ensure_host_tools()?;
    clear_dir(dir)?;
    for sub in ["bin", "tests", "vm"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let mut manifest = vec![
        format!("commit: {}", git_describe()),
        format!("built: {} on {}", utc_now(), os_name()),
    ];

    step("building vgpud, vgpuctl, vgpu-bench and the guest driver (release)");
    build::cargo_build_release(&["vgpu-mediator", "vgpuctl", "vgpu-bench", "vgpu-cuda"])?;
    for bin in ["vgpud", "vgpuctl", "vgpu-bench"] {
        install(&build::host_bin(bin), &dir.join("bin").join(bin))?;
    }
    // The guest driver and the CUDA C++ programs of the `cuda` stage (compiled there).
    std::fs::create_dir_all(dir.join("lib"))?;
    install(
        &build::host_bin("libvgpucuda.so"),
        &dir.join("lib/libvgpucuda.so"),
    )?;
    // The Python scripts of the `frameworks` and `tenants` stages (PyTorch, CuPy, numba-cuda,
    // JAX), run there with the host's own Python and frameworks.
    for sub in [
        "cuda",
        "cuda-gpu",
        "cuda-bench",
        "cuda-common",
        "frameworks",
    ] {
        let src = paths::root().join("crates/vgpu-cuda/tests").join(sub);
        std::fs::create_dir_all(dir.join(sub))?;
        for e in std::fs::read_dir(&src).with_context(|| format!("listing {}", src.display()))? {
            let p = e?.path();
            if p.extension()
                .is_some_and(|x| x == "cu" || x == "cuh" || x == "h" || x == "py")
            {
                std::fs::copy(&p, dir.join(sub).join(p.file_name().unwrap_or_default()))?;
            }
        }
    }

    step("building the GPU test executables (release)");
    let mut missing = Vec::new();
    for (name, exe) in test_executables()? {
        match exe {
            Some(exe) => {
                install(&exe, &dir.join("tests").join(name))?;
                manifest.push(format!("test: {name} ({})", exe.display()));
            }
            None => {
                println!(
                    "gpu-check: WARNING: test `{name}` (crates/vgpu-mediator/tests/{name}.rs) does \
                     not exist yet: the folder runs without it and its report says MISSING"
                );
                missing.push(name);
            }
        }
    }
    if !missing.is_empty() {
        std::fs::write(dir.join("tests/MISSING"), missing.join("\n") + "\n")?;
    }

    // PTX the conformance suite loads (VGPU_PTX_DIR on the GPU host).
    let ptx_src = paths::root().join("crates/vgpu-mediator/kernels/ptx");
    std::fs::create_dir_all(dir.join("ptx"))?;
    if ptx_src.is_dir() {
        for e in std::fs::read_dir(&ptx_src)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "ptx") {
                std::fs::copy(&p, dir.join("ptx").join(p.file_name().unwrap_or_default()))?;
            }
        }
    }

    step("building vgpu-smi (static)");
    let guest = build::guest_binary()?;
    step("preparing the guest kernel");
    let k = kernel::ensure_kernel()?;
    initramfs::build(Some(&guest), &k.modules, &dir.join("vm/initramfs.cpio"))?;
    std::fs::copy(&k.vmlinuz, dir.join("vm/vmlinuz"))
        .with_context(|| format!("copying {}", k.vmlinuz.display()))?;

    step("bundling QEMU (scripts/qemu-bundle.sh)");
    let bundle = qemu_bundle()?;
    std::fs::copy(&bundle, dir.join("qemu-bundle.tar.gz"))?;
    manifest.push(format!("qemu: {}", qemu_version()));

    for (name, text) in [("run.sh", RUN_SH), ("guest-image.sh", GUEST_IMAGE_SH)] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        set_mode(&path, 0o755)?;
    }

    let files = list_files(dir)?;
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    manifest.push(format!("files ({} bytes in all):", total));
    for (p, s) in &files {
        manifest.push(format!("  {s:>10}  {p}"));
    }
    std::fs::write(dir.join("MANIFEST"), manifest.join("\n") + "\n")?;
    for (p, s) in &files {
        println!("  {:>7.1} MiB  {p}", *s as f64 / (1 << 20) as f64);
    }
    println!(
        "gpu-check: {} ready: {:.1} MiB{}",
        dir.display(),
        total as f64 / (1 << 20) as f64,
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (MISSING: {})", missing.join(", "))
        }
    );
    if total > SIZE_BUDGET {
        println!(
            "gpu-check: WARNING: over the {} MiB budget for the trip to the GPU host",
            SIZE_BUDGET >> 20
        );
    }
    Ok(())
}

/// Empties `dir` for a fresh layout, refusing to wipe a folder that is not ours.
fn clear_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let ours = dir.join("MANIFEST").is_file() && dir.join("run.sh").is_file();
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !ours && !empty {
            bail!(
                "{} exists and is not a gpu-check folder (no MANIFEST and run.sh): not wiping it",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Copies a binary, stripped of symbols and debug info when `strip` is there.
pub fn install(src: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    let stripped = Command::new("strip")
        .arg("--strip-all")
        .arg(dst)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        println!(
            "gpu-check: WARNING: could not strip {} (binutils missing?): copied as is",
            dst.display()
        );
    }
    set_mode(dst, 0o755)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Each of [`GPU_TESTS`] with its release test executable (`None`: no such test file yet).
fn test_executables() -> Result<Vec<(&'static str, Option<PathBuf>)>> {
    let tests_dir = paths::root().join("crates/vgpu-mediator/tests");
    let present: Vec<&str> = GPU_TESTS
        .iter()
        .copied()
        .filter(|t| tests_dir.join(format!("{t}.rs")).is_file())
        .collect();
    let mut found = std::collections::HashMap::new();
    if !present.is_empty() {
        let mut cmd = Command::new(paths::cargo());
        cmd.current_dir(paths::root()).args([
            "test",
            "--release",
            "--no-run",
            "--message-format=json-render-diagnostics",
            "-p",
            "vgpu-mediator",
        ]);
        for t in &present {
            cmd.args(["--test", t]);
        }
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo test --no-run")?;
        if !out.status.success() {
            bail!("`cargo test --release --no-run` failed ({})", out.status);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((name, exe)) = test_artifact(line) {
                found.insert(name, exe);
            }
        }
    }
    GPU_TESTS
        .iter()
        .map(|&t| {
            if !present.contains(&t) {
                return Ok((t, None));
            }
            match found.remove(t) {
                Some(exe) => Ok((t, Some(exe))),
                None => bail!("cargo built no executable for test `{t}`"),
            }
        })
        .collect()
}

/// `(test name, executable)` from one line of cargo's JSON messages, for test targets.
fn test_artifact(line: &str) -> Option<(String, PathBuf)> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" {
        return None;
    }
    let kinds = v["target"]["kind"].as_array()?;
    if !kinds.iter().any(|k| k == "test") {
        return None;
    }
    let exe = v["executable"].as_str()?;
    Some((
        v["target"]["name"].as_str()?.to_string(),
        PathBuf::from(exe),
    ))
}

/// `<target>/qemu-bundle.tar.gz`, rebuilt when QEMU or the script is newer.
fn qemu_bundle() -> Result<PathBuf> {
    let script = paths::root().join("scripts/qemu-bundle.sh");
    let out = paths::target_dir().join("qemu-bundle");
    let tar = paths::target_dir().join("qemu-bundle.tar.gz");
    let qemu = deps::which(&deps::qemu_binary()).unwrap_or_default();
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (mtime(&tar), mtime(&script), mtime(&qemu)) {
        (Some(t), Some(s), Some(q)) => t > s && t > q,
        _ => false,
    };
    if fresh {
        println!("gpu-check: reusing {}", tar.display());
        return Ok(tar);
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg("--tar").arg(&out);
    if std::env::var_os("VGPU_QEMU").is_some() {
        cmd.env("QEMU_BIN", &qemu);
    }
    let status = cmd.status().context("running scripts/qemu-bundle.sh")?;
    if !status.success() {
        bail!("scripts/qemu-bundle.sh failed ({status})");
    }
    Ok(tar)
}

fn qemu_version() -> String {
    Command::new(deps::qemu_binary())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn git_describe() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .current_dir(paths::root())
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!(
                "{rev}{}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            )
        }
        None => "unknown (not a git checkout)".into(),
    }
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown OS".into())
}

/// Every file under `dir`, relative path and size, sorted.
fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                out.push((rel, e.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_executables_in_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"conformance","kind":["test"]},"executable":"/t/release/deps/conformance-abc"}"#;
        assert_eq!(
            test_artifact(line),
            Some((
                "conformance".into(),
                PathBuf::from("/t/release/deps/conformance-abc")
            ))
        );
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"vgpu_abi","kind":["lib"]},"executable":null}"#;
        assert_eq!(test_artifact(lib), None);
        assert_eq!(test_artifact("not json"), None);
    }

    #[test]
    fn scripts_are_valid_bash() {
        for script in [RUN_SH, GUEST_IMAGE_SH] {
            let status = Command::new("bash")
                .args(["-n", "-c", script])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// The stages run.sh defines (`stage_NAME() {`).
    fn defined_stages() -> Vec<&'static str> {
        RUN_SH
            .lines()
            .filter_map(|l| l.strip_prefix("stage_")?.strip_suffix("() {"))
            .collect()
    }

    #[test]
    fn every_stage_is_run_and_documented() {
        let stages = defined_stages();
        assert!(stages.contains(&"tenants"), "{stages:?}");
        let run_list = RUN_SH
            .lines()
            .find_map(|l| l.strip_prefix("for s in ")?.strip_suffix("; do"))
            .expect("run.sh's loop over its stages");
        let run: Vec<&str> = run_list.split_whitespace().collect();
        // The header's "stages, in order:" paragraph, up to the usage's blank comment line.
        let header: String = RUN_SH
            .lines()
            .skip_while(|l| !l.contains("stages, in order:"))
            .take_while(|l| l.trim() != "#" && !l.starts_with("# Writes"))
            .collect::<Vec<_>>()
            .join(" ");
        for s in &stages {
            assert!(
                run.contains(s),
                "stage {s} is not in run.sh's loop: {run:?}"
            );
            assert!(
                header.contains(&format!(" {s},")) || header.contains(&format!(" {s} ")),
                "stage {s} is not in run.sh's header: {header}"
            );
        }
        assert_eq!(run.len(), stages.len(), "{run:?} vs {stages:?}");
    }

    #[test]
    fn the_tenants_stage_has_its_scripts() {
        let fw = paths::root().join("crates/vgpu-cuda/tests/frameworks");
        for script in ["tenant_torch.py", "tenants_report.py"] {
            assert!(fw.join(script).is_file(), "{script} missing");
            assert!(
                RUN_SH.contains(&format!("frameworks/{script}")),
                "run.sh does not run {script}"
            );
        }
    }

    #[test]
    fn refuses_to_wipe_foreign_folders() {
        let d = std::env::temp_dir().join(format!("xtask-gc-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("precious"), b"x").unwrap();
        assert!(clear_dir(&d).is_err());
        assert!(d.join("precious").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
