//! `cargo xtask cuda-programs` (a stage of `cargo xtask test`): CUDA C++ programs built with
//! NVIDIA's own toolkit (the pip wheels of CUDA 13.0, the GPU hosts' version) run unchanged
//! through vgpu's guest driver (`libcuda.so.1` = target/release/libvgpucuda.so) against a
//! vgpud on the cpu backend: runtime start-up, device queries, allocations, copies, streams,
//! events, kernel registration and error paths. Each program in `crates/vgpu-cuda/tests/cuda/`
//! is built with the runtime linked statically (nvcc's default) and shared, with compressed
//! fatbins, relocatable device code and the per-thread default stream, and run with lazy and
//! eager module loading; each run must exit 0 printing `PASS`. Then NVIDIA's Python bindings
//! of NVML (the `nvidia-ml-py` wheel) query the device through vgpu's `libnvidia-ml.so.1`
//! (`crates/vgpu-nvml/tests/pynvml_check.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::vgpud::{Config, Vgpud, VmConfig};
use crate::{build, paths};

/// The CUDA toolkit wheels, pinned to the GPU hosts' CUDA 13.0 (nvcc 13.0.88, runtime
/// 13.0.96). `nvidia-nvvm` and `nvidia-cuda-crt` must be pinned too: unpinned, pip takes a
/// newer cicc whose PTX this ptxas rejects.
pub const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
];

/// NVIDIA's Python bindings of NVML, for the NVML check (pure Python).
pub const PYNVML_WHEELS: &[&str] = &["nvidia-ml-py==13.580.82"];

/// Where the toolkit's nvcc, headers and libraries are.
pub struct Toolkit {
    pub nvcc: PathBuf,
    pub include: PathBuf,
    pub lib: PathBuf,
}

fn step(msg: &str) {
    println!("cuda-programs: {msg}");
}

/// The toolkit under `dir` (a `nvidia/cu13` folder of the wheels), if complete.
fn toolkit_at(dir: &Path) -> Option<Toolkit> {
    let t = Toolkit {
        nvcc: dir.join("bin/nvcc"),
        include: dir.join("include"),
        lib: dir.join("lib"),
    };
    (t.nvcc.is_file() && t.include.join("cuda_runtime.h").is_file()).then_some(t)
}

/// The `nvidia/cu13` folder inside a virtual environment.
fn find_cu13(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13"))
        .find(|p| p.is_dir())
}

/// The toolkit: `VGPU_CUDA_TOOLKIT` (a folder with bin/nvcc, include, lib), else the wheels in
/// `target/cuda-toolkit` (a Python virtual environment, made and filled on first use).
pub fn toolkit() -> Result<Toolkit> {
    if let Some(dir) = std::env::var_os("VGPU_CUDA_TOOLKIT") {
        let dir = PathBuf::from(dir);
        return toolkit_at(&dir)
            .with_context(|| format!("VGPU_CUDA_TOOLKIT={}: no bin/nvcc", dir.display()));
    }
    let venv = paths::target_dir().join("cuda-toolkit");
    if let Some(t) = find_cu13(&venv).and_then(|d| toolkit_at(&d)) {
        return Ok(t);
    }
    step(&format!(
        "installing the CUDA 13.0 toolkit wheels into {}",
        venv.display()
    ));
    make_venv(&venv, WHEELS)?;
    find_cu13(&venv)
        .and_then(|d| toolkit_at(&d))
        .context("the wheels installed no nvidia/cu13/bin/nvcc")
}

/// Makes a Python virtual environment at `venv` and installs `wheels` into it.
pub(crate) fn make_venv(venv: &Path, wheels: &[&str]) -> Result<()> {
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv (apt-get install python3-venv)")?;
    if !ok.success() {
        bail!(
            "python3 -m venv {} failed (apt-get install python3-venv)",
            venv.display()
        );
    }
    let ok = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(wheels)
        .status()
        .context("running pip")?;
    if !ok.success() {
        bail!("pip install {} failed", wheels.join(" "));
    }
    Ok(())
}

/// A Python with `pynvml` ([`PYNVML_WHEELS`]): the virtual environment `target/pynvml`,
/// made and filled on first use.
fn pynvml_python() -> Result<PathBuf> {
    let venv = paths::target_dir().join("pynvml");
    let python = venv.join("bin/python3");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import pynvml"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        step(&format!(
            "installing {} into {}",
            PYNVML_WHEELS.join(" "),
            venv.display()
        ));
        let _ = std::fs::remove_dir_all(&venv);
        make_venv(&venv, PYNVML_WHEELS)?;
    }
    Ok(python)
}

/// Runs `crates/vgpu-nvml/tests/pynvml_check.py` with `libdir` (vgpu's libnvidia-ml.so.1 and
/// libcuda.so.1) on its library path, against VM socket `socket` of `quota` bytes.
fn pynvml_check(libdir: &Path, socket: &Path, quota: u64) -> Result<()> {
    let python = pynvml_python()?;
    let script = paths::root().join("crates/vgpu-nvml/tests/pynvml_check.py");
    let o = Command::new(&python)
        .arg(&script)
        .env("LD_LIBRARY_PATH", libdir)
        .env("VGPU_SOCKET", socket)
        .env("VGPU_EXPECT_TOTAL", quota.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    passed(&script, &o).map(drop)
}

/// One way of building and running the programs.
struct Variant {
    name: &'static str,
    flags: &'static [&'static str],
    /// `CUDA_MODULE_LOADING` for the run (the runtime's default, lazy, when `None`).
    loading: Option<&'static str>,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "static",
        flags: &[],
        loading: None,
    },
    Variant {
        name: "shared",
        flags: &["-cudart", "shared"],
        loading: None,
    },
    Variant {
        name: "eager",
        flags: &[],
        loading: Some("EAGER"),
    },
    Variant {
        name: "compressed",
        flags: &["-Xfatbin", "-compress-all"],
        loading: None,
    },
    Variant {
        name: "rdc",
        flags: &["-rdc=true"],
        loading: None,
    },
    // The runtime then calls the driver's per-thread entry points (`_ptds`/`_ptsz`).
    Variant {
        name: "per-thread",
        flags: &["--default-stream", "per-thread"],
        loading: None,
    },
];

/// The programs' sources.
fn programs() -> Result<Vec<PathBuf>> {
    let dir = paths::root().join("crates/vgpu-cuda/tests/cuda");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    v.sort();
    Ok(v)
}

/// Builds `src` for sm_90 with nvcc and `flags` (the runtime static unless `-cudart shared`);
/// `libdir` holds the `libcudart.so` link of [`link_dir`].
pub fn compile(tk: &Toolkit, src: &Path, out: &Path, libdir: &Path, flags: &[&str]) -> Result<()> {
    let o = Command::new(&tk.nvcc)
        .arg("-arch=sm_90")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .arg(format!("-I{}", tk.include.display()))
        .arg(format!(
            "-I{}",
            paths::root()
                .join("crates/vgpu-cuda/tests/cuda-common")
                .display()
        ))
        .arg(format!("-L{}", libdir.display()))
        .arg(format!("-L{}", tk.lib.display()))
        .output()
        .with_context(|| format!("running {}", tk.nvcc.display()))?;
    if !o.status.success() {
        bail!(
            "nvcc {} failed:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// Makes `dir` the folder nvcc links `-cudart shared` against: `-lcudart` needs a
/// `libcudart.so`, and the wheel ships only `libcudart.so.13`.
pub fn link_dir(tk: &Toolkit, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join("libcudart.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(tk.lib.join("libcudart.so.13"), &link)
        .with_context(|| format!("linking {}", link.display()))
}

/// Runs `exe` with the guest driver first on its library path; returns its output.
fn run_program(exe: &Path, libpath: &str, socket: &Path, loading: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(exe);
    if let Some(mode) = loading {
        cmd.env("CUDA_MODULE_LOADING", mode);
    }
    let mut child = cmd
        .env("LD_LIBRARY_PATH", libpath)
        .env("VGPU_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let t = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within 60 s", exe.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output()?;
    passed(exe, &o)
}

/// The output of `what`, which passed when it exited with success and its last line of
/// standard output is `PASS`; otherwise an error holding the output.
fn passed(what: &Path, o: &std::process::Output) -> Result<String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let ok = o.status.success()
        && String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .is_some_and(|l| l.trim() == "PASS");
    if !ok {
        bail!("{} failed ({}):\n{text}", what.display(), o.status);
    }
    Ok(text)
}

/// The VM's device memory quota.
const QUOTA: u64 = 512 << 20;

pub fn run() -> Result<()> {
    let tk = toolkit()?;
    step("building vgpud and the guest driver (release)");
    build::cargo_build_release(&["vgpu-mediator", "vgpu-cuda", "vgpu-nvml"])?;
    let work = paths::target_dir().join("cuda-programs");
    let _ = std::fs::remove_dir_all(&work);
    let libcuda_dir = work.join("libcuda");
    let links = work.join("link");
    std::fs::create_dir_all(&libcuda_dir)?;
    let lib = paths::target_dir().join("release/libvgpucuda.so");
    std::os::unix::fs::symlink(&lib, libcuda_dir.join("libcuda.so.1"))?;
    std::os::unix::fs::symlink(&lib, libcuda_dir.join("libcuda.so"))?;
    let nvml = paths::target_dir().join("release/libvgpunvml.so");
    std::os::unix::fs::symlink(&nvml, libcuda_dir.join("libnvidia-ml.so.1"))?;
    link_dir(&tk, &links)?;

    let socket = work.join("vm-a.sock");
    let config = Config {
        backend: "cpu".into(),
        admin_socket: work.join("admin.sock"),
        vms: vec![VmConfig {
            name: "vm-a".into(),
            socket: socket.clone(),
            vm_id: 1,
            pool_id: 0,
            priority: 0,
            mem_quota: format!("{}MiB", QUOTA >> 20),
            shm_size: "16MiB".into(),
        }],
    };
    let vgpud = Vgpud::start(
        &build::host_bin("vgpud"),
        &config,
        &work.join("vgpud.toml"),
        &work.join("vgpud.log"),
    )?;
    let libpath = format!("{}:{}", libcuda_dir.display(), tk.lib.display());
    let mut failed = Vec::new();
    let mut passed = 0;
    for src in programs()? {
        let stem = src
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for v in VARIANTS {
            let name = format!("{stem} ({})", v.name);
            let exe = work.join(format!("{stem}-{}", v.name));
            let r = compile(&tk, &src, &exe, &links, v.flags)
                .and_then(|()| run_program(&exe, &libpath, &socket, v.loading));
            match r {
                Ok(_) => {
                    step(&format!("{name}: PASS"));
                    passed += 1;
                }
                Err(e) => {
                    step(&format!("{name}: FAILED: {e:#}"));
                    failed.push(name);
                }
            }
        }
    }
    match pynvml_check(&libcuda_dir, &socket, QUOTA) {
        Ok(()) => {
            step("pynvml: PASS");
            passed += 1;
        }
        Err(e) => {
            step(&format!("pynvml: FAILED: {e:#}"));
            failed.push("pynvml".into());
        }
    }
    vgpud.stop()?;
    if failed.is_empty() {
        step(&format!("{passed} passed"));
        Ok(())
    } else {
        bail!("{} failed: {}", failed.len(), failed.join(", "))
    }
}
