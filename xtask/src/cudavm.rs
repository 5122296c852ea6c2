//! `cargo xtask cuda-vm` (a stage of `cargo xtask test`): an nvcc-built CUDA program inside a
//! VM. The guest image gets vgpu's `libcuda.so.1` installed as a distribution installs a
//! driver (`scripts/guest-image.sh`: the default library directory, a `libcuda.so` link, the
//! loader's cache), the programs and the libraries `ldd` lists for them. The guest runs them
//! with no `LD_LIBRARY_PATH` and no `VGPU_SOCKET`: the loader finds the driver through its
//! cache and the driver finds the vGPU on PCI, through VFIO (the VM has a virtual IOMMU).
//!
//! vgpud runs the cpu backend, so the program is `tests/cuda/runtime_basics.cu` (start-up,
//! device queries, allocations, copies, memsets, streams, events; the cpu backend runs no
//! program kernels), built with NVIDIA's toolkit (the pip wheels of `cargo xtask
//! cuda-programs`) with the runtime linked statically and shared: the shared build's
//! `libcudart.so.13` sits in a directory only the image's `/etc/ld.so.conf.d` names. Both must
//! print PASS, and vgpud must have counted the VM's commands. The GPU host runs the same with
//! `tests/cuda-gpu/vecadd.cu` on the cuda backend (`run.sh --only cuda-vm`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::qemu::{self, tail, tail_file, VmSpec};
use crate::vgpud::{self, Config, Vgpud, VmConfig};
use crate::{build, cudaprog, demo, deps, gpucheck, initramfs, kernel, paths, VmOpts};

/// The CUDA C++ program the guest runs (a CI program: no kernels of its own).
const PROGRAM: &str = "crates/vgpu-cuda/tests/cuda/runtime_basics.cu";
/// Where `scripts/guest-image.sh` installs programs in the image.
const GUEST_BIN_DIR: &str = "/usr/bin";
/// The loader-cache entry the image must have (as `ldconfig -p` prints it in the guest).
pub const LIBCUDA_ENTRY: &str =
    "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1";

/// The builds of [`PROGRAM`]: name suffix and nvcc flags.
const BUILDS: &[(&str, &[&str])] = &[("static", &[]), ("shared", &["-cudart", "shared"])];

fn step(msg: &str) {
    println!("cuda-vm: {msg}");
}

/// `cargo xtask cuda-vm`.
pub fn run(vm: &VmOpts) -> Result<()> {
    let t0 = Instant::now();
    deps::ensure_host_tools()?;
    let tk = cudaprog::toolkit()?;
    step("building vgpud, vgpuctl and the guest driver (release)");
    build::cargo_build_release(&["vgpu-mediator", "vgpuctl", "vgpu-cuda", "vgpu-nvml"])?;

    let work = paths::target_dir().join("cuda-vm");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let links = work.join("link");
    cudaprog::link_dir(&tk, &links)?;
    let src = paths::root().join(PROGRAM);
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut exes = Vec::new();
    for (suffix, flags) in BUILDS {
        let exe = work.join(format!("{stem}-{suffix}"));
        step(&format!("nvcc {} -> {}", src.display(), exe.display()));
        cudaprog::compile(&tk, &src, &exe, &links, flags)?;
        exes.push(exe);
    }

    step("installing libcuda.so.1, libnvidia-ml.so.1 and the programs into the guest image (scripts/guest-image.sh)");
    // Stripped, as a distribution ships them (and a smaller initramfs for TCG to unpack).
    let lib = work.join("libvgpucuda.so");
    gpucheck::install(&build::host_bin("libvgpucuda.so"), &lib)?;
    let nvml = work.join("libvgpunvml.so");
    gpucheck::install(&build::host_bin("libvgpunvml.so"), &nvml)?;
    let layer = work.join("cuda-layer.cpio");
    guest_image(&lib, &nvml, &exes, &tk.lib, &layer)?;
    let kernel = kernel::ensure_kernel()?;
    let base = initramfs::build(None, &kernel.modules, &work.join("base.cpio"))?;
    let initrd = initramfs::append(&base, &[&layer], &work.join("initramfs.cpio"))?;

    let sock_dir = vgpud::socket_dir(&work, "vgpu-cuda-vm")?;
    let vm_cfg = VmConfig {
        name: "vm-a".into(),
        socket: sock_dir.join("vm-a.sock"),
        vm_id: 1,
        pool_id: 0,
        priority: 0,
        mem_quota: "512MiB".into(),
        shm_size: "64MiB".into(),
    };
    let config = Config {
        backend: "cpu".into(),
        admin_socket: sock_dir.join("admin.sock"),
        vms: vec![vm_cfg.clone()],
    };
    let log = work.join("vgpud.log");
    let mut daemon = Vgpud::start(
        &build::host_bin("vgpud"),
        &config,
        &work.join("vgpud.toml"),
        &log,
    )?;

    let programs: Vec<String> = exes
        .iter()
        .map(|e| {
            let name = e.file_name().unwrap_or_default().to_string_lossy();
            format!("{GUEST_BIN_DIR}/{name}")
        })
        .collect();
    step(&format!(
        "booting a VM (accel {:?}, timeout {} s) that runs {}",
        vm.accel,
        vm.vm_timeout,
        programs.join(", ")
    ));
    let spec = VmSpec {
        name: "cuda-vm".into(),
        kernel: kernel.vmlinuz,
        initrd,
        extra_append: format!("vgpu.run={}", programs.join(",")),
        socket: Some(vm_cfg.socket.clone()),
        iommu: true,
        log: work.join("cuda-vm.serial.log"),
        timeout: vm.timeout(),
        accel: vm.accel,
    };
    let out = qemu::run(&spec)?;
    let names: Vec<&str> = programs
        .iter()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .collect();
    let fail = |why: String| {
        anyhow!(
            "{why} (qemu {}, serial log {})\n{}{}vgpud log {}:\n{}",
            out.status,
            out.log.display(),
            tail(&out.serial, 40),
            tail(&out.stderr, 10),
            log.display(),
            tail_file(&log, 20)
        )
    };
    check_serial(&out.serial, &names).map_err(fail)?;
    for l in out.serial.lines().map(str::trim) {
        if l.starts_with(initramfs::LDCACHE_MARKER)
            || l.starts_with(initramfs::VGPU_DRIVER_MARKER)
            || l.starts_with("device: ")
        {
            println!("  [guest] {l}");
        }
    }
    if !daemon.is_running() {
        bail!(
            "vgpud died while the VM ran; its log {}:\n{}",
            log.display(),
            tail_file(&log, 40)
        );
    }
    let stats = demo::query_stats(&config.admin_socket)?;
    let commands = demo::vm_stats(&stats, &vm_cfg.name)
        .and_then(|v| v["commands"].as_u64())
        .unwrap_or(0);
    if commands == 0 {
        bail!("vgpud counted no commands for the VM: the programs did not reach the vGPU");
    }
    daemon.stop()?;
    step(&format!(
        "OK: {} passed in the guest with libcuda.so.1 from the loader cache, {commands} commands \
         on the vGPU (VM {:.1} s, stage {:.1} s)",
        names.join(" and "),
        out.elapsed.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs `scripts/guest-image.sh`: `lib` as the guest's `libcuda.so.1`, `nvml` as its
/// `libnvidia-ml.so.1`, `exes` with the libraries ldd finds for them (`cudart_dir`, the
/// toolkit's, on its path for the shared runtime), into the cpio archive `out`.
fn guest_image(
    lib: &Path,
    nvml: &Path,
    exes: &[PathBuf],
    cudart_dir: &Path,
    out: &Path,
) -> Result<()> {
    let script = paths::root().join("scripts/guest-image.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg("--libcuda")
        .arg(lib)
        .arg("--libnvml")
        .arg(nvml)
        .arg("--out")
        .arg(out)
        .args(exes)
        .env("LD_LIBRARY_PATH", cudart_dir)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        bail!("{} failed ({}):\n{text}", script.display(), o.status);
    }
    for l in text.lines() {
        println!("  {l}");
    }
    Ok(())
}

/// What one guest program printed: the lines between `/init`'s `running <name>` and
/// `<name> exit=<code>`, and the code (`None` when it never ended).
pub fn program_output<'a>(serial: &'a str, name: &str) -> (Vec<&'a str>, Option<&'a str>) {
    let start = format!("vgpu-guest: running {name}");
    let end = format!("vgpu-guest: {name} exit=");
    let mut lines = Vec::new();
    let mut inside = false;
    for l in serial.lines() {
        let t = l.trim_end();
        if !inside {
            inside = t == start || t.starts_with(&format!("{start} "));
            continue;
        }
        if let Some(code) = t.strip_prefix(&end) {
            return (lines, Some(code));
        }
        lines.push(t);
    }
    (lines, None)
}

/// The pass criterion of the guest's serial console: the image's loader cache has
/// [`LIBCUDA_ENTRY`] (made when the image was built), each of `programs` exited 0 having
/// printed PASS and no FAILED line, and the vGPU ended up bound to `vfio-pci`. The error says what was wrong.
pub fn check_serial(serial: &str, programs: &[&str]) -> std::result::Result<(), String> {
    if serial.contains("vgpu-guest: no ld.so.cache in the image") {
        return Err("the image came without an ld.so.cache (ldconfig -r failed?)".into());
    }
    let entry = format!("{}{LIBCUDA_ENTRY}", initramfs::LDCACHE_MARKER);
    if !serial.lines().any(|l| l.trim_end() == entry) {
        return Err(format!("no `{entry}` on the serial console"));
    }
    for name in programs {
        let (lines, code) = program_output(serial, name);
        let Some(code) = code else {
            return Err(format!("{name} did not run to its end in the guest"));
        };
        if let Some(l) = lines.iter().find(|l| l.starts_with("FAILED")) {
            return Err(format!("{name}: {l}"));
        }
        if code != "0" {
            return Err(format!("{name} exited with {code} in the guest"));
        }
        // Not necessarily the last line: the kernel's warnings share the console.
        if !lines.iter().any(|l| l.trim() == "PASS") {
            return Err(format!("{name} did not print PASS"));
        }
    }
    // The driver binds the device to vfio-pci when it reaches it through VFIO (the VM has a
    // virtual IOMMU and the modules), as vgpu-smi does.
    let driver = serial
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(initramfs::VGPU_DRIVER_MARKER))
        .and_then(|rest| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix("driver="))
        });
    match driver {
        Some("vfio-pci") => {}
        Some(other) => {
            return Err(format!(
                "the vGPU is bound to {other}, not vfio-pci: the driver did not use VFIO"
            ))
        }
        None => return Err("no `vgpu-guest: vGPU ... driver=` line".into()),
    }
    if !serial.contains(&format!("{}0", initramfs::EXIT_MARKER)) {
        return Err("the guest's programs did not all exit 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "vgpu-guest: init\n\
        vgpu-guest: ld.so.cache: libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n\
        vgpu-guest: ld.so.cache: libcuda.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so\n\
        vgpu-guest: running rb-static \n\
        device: vgpu, cc 9.0\n\
        PASS\n\
        vgpu-guest: rb-static exit=0\n\
        vgpu-guest: running rb-shared \n\
        device: vgpu, cc 9.0\n\
        [   12.5] some kernel line\n\
        PASS\n\
        vgpu-guest: rb-shared exit=0\n\
        vgpu-guest: vGPU 0000:00:03.0 driver=vfio-pci\n\
        vgpu-guest: exit=0\n";

    /// A shared object with `soname`, built with the C compiler (None: no compiler here).
    fn shared_object(dir: &Path, soname: &str) -> Option<PathBuf> {
        let src = dir.join("f.c");
        std::fs::write(&src, "int vgpu_test_fn(void) { return 1; }\n").unwrap();
        let out = dir.join(format!("{soname}.built"));
        let ok = Command::new("cc")
            .args(["-shared", "-fPIC", &format!("-Wl,-soname,{soname}"), "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(out)
    }

    /// The members `cpio -t -v` lists (None: no cpio here).
    fn cpio_listing(archive: &Path) -> Option<String> {
        let out = Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(archive)
            .output()
            .ok()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn guest_image_installs_libcuda_and_nvml_with_cache_entries() {
        // ldconfig -r needs root or user namespaces; CI runs as root.
        if !deps::is_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-guest-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some(lib) = shared_object(&dir, "libcuda.so.1") else {
            return;
        };
        let nvml = shared_object(&dir, "libnvidia-ml.so.1").unwrap();
        let prog = PathBuf::from("/usr/bin/env");
        let layer = dir.join("layer.cpio");
        guest_image(&lib, &nvml, &[prog], &dir, &layer).unwrap();
        let Some(listing) = cpio_listing(&layer) else {
            return;
        };
        for want in [
            "usr/lib/x86_64-linux-gnu/libcuda.so.1",
            "usr/lib/x86_64-linux-gnu/libcuda.so -> libcuda.so.1",
            "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
            "usr/lib/x86_64-linux-gnu/libnvidia-ml.so -> libnvidia-ml.so.1",
            "usr/bin/env",
            "lib64/ld-linux-x86-64.so.2",
            "libc.so.6",
            "etc/ld.so.conf",
            "etc/ld.so.conf.d/x86_64-linux-gnu.conf",
            "etc/ld.so.cache",
        ] {
            assert!(listing.contains(want), "no {want} in\n{listing}");
        }
        // A library that is not libcuda.so.1 (another SONAME) gets no such cache entry: refused.
        let wrong = shared_object(&dir, "libother.so.1").unwrap();
        let env = [PathBuf::from("/usr/bin/env")];
        let e = guest_image(&wrong, &nvml, &env, &dir, &layer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no libcuda.so.1"), "{e}");
        // Likewise for NVML.
        let e = guest_image(&lib, &wrong, &env, &dir, &layer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no libnvidia-ml.so.1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn program_output_is_cut_at_the_markers() {
        let (lines, code) = program_output(GOOD, "rb-shared");
        assert_eq!(code, Some("0"));
        assert_eq!(lines.first(), Some(&"device: vgpu, cc 9.0"));
        assert_eq!(lines.last(), Some(&"PASS"));
        assert_eq!(lines.len(), 3);
        assert_eq!(program_output(GOOD, "rb").1, None);
    }

    #[test]
    fn serial_check() {
        check_serial(GOOD, &["rb-static", "rb-shared"]).unwrap();
        let e = check_serial(GOOD, &["rb-static", "other"]).unwrap_err();
        assert!(e.contains("other did not run"), "{e}");
        let no_cache = GOOD.replace("libcuda.so.1 (libc6", "libfoo.so.1 (libc6");
        assert!(check_serial(&no_cache, &["rb-static"])
            .unwrap_err()
            .contains("ld.so.cache"));
        let failed = GOOD.replacen(
            "PASS\n",
            "FAILED x.cu:1: cudaMalloc\n1 check(s) failed\n",
            1,
        );
        let e = check_serial(&failed, &["rb-static"]).unwrap_err();
        assert!(e.contains("FAILED x.cu:1"), "{e}");
        let exit1 = GOOD.replace("rb-shared exit=0", "rb-shared exit=1");
        assert!(check_serial(&exit1, &["rb-shared"])
            .unwrap_err()
            .contains("exited with 1"));
        let polled = GOOD.replace("driver=vfio-pci", "driver=none");
        assert!(check_serial(&polled, &["rb-static"])
            .unwrap_err()
            .contains("VFIO"));
        let booted_cache =
            format!("vgpu-guest: no ld.so.cache in the image: running ldconfig\n{GOOD}");
        assert!(check_serial(&booted_cache, &["rb-static"]).is_err());
    }
}
