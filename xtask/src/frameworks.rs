//! `cargo xtask frameworks-cpu` (a stage of `cargo xtask test`): the Python GPU frameworks
//! that fit CI's budget, pip wheels pinned to the GPU hosts' stack (CUDA 13.0, driver 580),
//! run unmodified through vgpu's guest driver (`libcuda.so.1` = target/release/libvgpucuda.so)
//! against a vgpud on the cpu backend: start-up, device queries, allocations, copies, memsets,
//! streams, events, page-locked host memory, a module load. The scripts are the GPU host's
//! (`crates/vgpu-cuda/tests/frameworks/check_*.py`, the gpu-check stage `frameworks`), run with
//! `VGPU_FW_KERNELS=0`: the cpu backend runs no program kernels, so the sub-tests that launch
//! one are skipped. Each script must exit 0 printing `PASS` (no sub-test failed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::vgpud::{socket_dir, Config, Vgpud, VmConfig};
use crate::{build, paths};

/// The wheels, pinned: the versions the GPU host's driver-API probe ran
/// (`shared/driver-api-probe.md`: cuda-bindings 13.3.1, cupy-cuda13x 14.2.0, numba 0.68.0 +
/// numba-cuda 0.30.4), the CUDA 13.0 runtime and NVVM numba-cuda loads at import (13.0.96 and
/// 13.0.88, as `cuda-programs`), NVRTC (CuPy's and numba's compiler) and nvJitLink (numba's
/// linker: without it numba links with the driver's `cuLink*`, which this driver lacks), and
/// what pip resolved for their dependencies.
/// NumPy 2.4 still has `row_stack`, which numba-cuda 0.30.4 needs (2.5 removed it).
pub const WHEELS: &[&str] = &[
    "cuda-bindings==13.3.1",
    "cuda-core==1.2.2",
    "cuda-pathfinder==1.9.1",
    "cupy-cuda13x==14.2.0",
    "numba==0.68.0",
    "numba-cuda==0.30.4",
    "llvmlite==0.50.0",
    "numpy==2.4.6",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-nvjitlink==13.0.88",
];

/// The scripts run here (those of frameworks whose wheels fit CI; PyTorch's and JAX's do not).
const SCRIPTS: &[&str] = &["check_cuda_bindings.py", "check_cupy.py", "check_numba.py"];

/// How long one script may run (they take seconds; a hang must not eat CI's budget).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn step(msg: &str) {
    println!("frameworks-cpu: {msg}");
}

/// The virtual environment's Python, made and filled on first use (or when the pins change).
fn venv() -> Result<PathBuf> {
    let venv = paths::target_dir().join("frameworks-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("vgpu-wheels.txt");
    let want = WHEELS.join("\n") + "\n";
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(python);
    }
    step(&format!(
        "installing {} into {}",
        WHEELS.join(" "),
        venv.display()
    ));
    let _ = std::fs::remove_dir_all(&venv);
    crate::cudaprog::make_venv(&venv, WHEELS)?;
    std::fs::write(&stamp, want)?;
    Ok(python)
}

/// Runs `script` with the guest driver first on the library path; returns its output, or an
/// error holding it when the script failed, timed out or did not end with `PASS`.
fn run_script(
    python: &Path,
    script: &Path,
    libdir: &Path,
    socket: &Path,
    out_path: &Path,
) -> Result<String> {
    let out = std::fs::File::create(out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    let mut child = Command::new(python)
        // -B: no __pycache__ in the source tree; -u: output in order with the driver's.
        .args(["-u", "-B"])
        .arg(script)
        .env("LD_LIBRARY_PATH", libdir)
        .env("VGPU_SOCKET", socket)
        .env("VGPU_FW_KERNELS", "0")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(out_path).unwrap_or_default();
    let Some(status) = status else {
        bail!(
            "did not finish within {} s:\n{text}",
            SCRIPT_TIMEOUT.as_secs()
        );
    };
    let passed = status.success() && text.lines().any(|l| l == "PASS");
    if !passed {
        bail!("{status}:\n{text}");
    }
    Ok(text)
}

pub fn run() -> Result<()> {
    let python = venv()?;
    step("building vgpud and the guest driver (release)");
    build::cargo_build_release(&["vgpu-mediator", "vgpu-cuda"])?;
    let work = paths::target_dir().join("frameworks-cpu");
    let _ = std::fs::remove_dir_all(&work);
    let libdir = work.join("libcuda");
    std::fs::create_dir_all(&libdir)?;
    let lib = paths::target_dir().join("release/libvgpucuda.so");
    std::os::unix::fs::symlink(&lib, libdir.join("libcuda.so.1"))?;
    // numba-cuda opens the unversioned name.
    std::os::unix::fs::symlink(&lib, libdir.join("libcuda.so"))?;
    let sockets = socket_dir(&work, "vgpu-frameworks")?;
    let socket = sockets.join("vm-a.sock");
    let config = Config {
        backend: "cpu".into(),
        admin_socket: sockets.join("admin.sock"),
        vms: vec![VmConfig {
            name: "vm-a".into(),
            socket: socket.clone(),
            vm_id: 1,
            pool_id: 0,
            priority: 0,
            mem_quota: "1GiB".into(),
            shm_size: "16MiB".into(),
        }],
    };
    let scripts = paths::root().join("crates/vgpu-cuda/tests/frameworks");
    let mut failed = Vec::new();
    for name in SCRIPTS {
        // A vgpud per script: one process at a time uses a VM's socket, and each script
        // starts from a fresh VM.
        let vgpud = Vgpud::start(
            &build::host_bin("vgpud"),
            &config,
            &work.join("vgpud.toml"),
            &work.join(format!("vgpud-{name}.log")),
        )?;
        let t = Instant::now();
        let out = work.join(name.replace(".py", ".out"));
        match run_script(&python, &scripts.join(name), &libdir, &socket, &out) {
            Ok(text) => {
                let summary = text
                    .lines()
                    .rev()
                    .find(|l| l.contains(" passed, "))
                    .unwrap_or("");
                step(&format!(
                    "{name}: PASS ({summary}; {:.1} s)",
                    t.elapsed().as_secs_f64()
                ));
            }
            Err(e) => {
                step(&format!("{name}: FAILED: {e:#}"));
                failed.push(*name);
            }
        }
        vgpud.stop()?;
    }
    if failed.is_empty() {
        step(&format!("{} scripts passed", SCRIPTS.len()));
        Ok(())
    } else {
        bail!("{} failed: {}", failed.len(), failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every framework script (the GPU host's too, which CI cannot run) parses, and names the
    /// module the gpu-check stage imports to decide whether to run it.
    #[test]
    fn framework_scripts_parse_and_name_their_module() {
        let dir = paths::root().join("crates/vgpu-cuda/tests/frameworks");
        let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "py"))
            .collect();
        scripts.sort();
        assert!(scripts.len() >= 7, "{scripts:?}");
        let status = Command::new("python3")
            .args([
                "-c",
                "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f).read(), f)",
            ])
            .args(&scripts)
            .status()
            .expect("python3");
        assert!(status.success(), "a framework script does not parse");
        for s in scripts.iter().filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("check_"))
        }) {
            let text = std::fs::read_to_string(s).unwrap();
            assert!(
                text.lines().any(|l| l.starts_with("# framework-module: ")),
                "{} has no `# framework-module:` line",
                s.display()
            );
        }
        for name in SCRIPTS {
            assert!(dir.join(name).is_file(), "{name}");
        }
    }
}
