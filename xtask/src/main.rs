//! Project automation: `cargo xtask <command>`.
//!
//! - `deps`: install the host tools the VM tests need (QEMU, busybox-static, cpio).
//! - `demo`: build everything, start vgpud, boot two VMs under QEMU and check what they saw.
//! - `test`: `cargo test --workspace --all-targets`, the loom models, the VM end-to-end and kill tests.
//! - `cuda-vm`: an nvcc-built CUDA program in a VM, vgpu's libcuda.so.1 installed in its image.
//! - `vm-kill`: SIGKILL a VM's QEMU mid-copy and mid-kernel; vgpud must free it within 1 s.
//! - `bench`: build and run `vgpu-bench`.
//! - `vm-smoke`: boot the guest kernel with a busybox-only initramfs (no vgpud needed).
//! - `gpu-check`: prepare (and where a GPU is usable, run) the GPU-host suite folder.
//! - `fuzz`: run the cargo-fuzz targets for a bounded time.
//! - `soak`: random valid work from many process clients plus a hostile one, resources checked.
//! - `libvirt`: the committed libvirt domain run by a real libvirt against vgpud (root only).

mod bench;
mod build;
mod cudaprog;
mod cudavm;
mod demo;
mod deps;
mod elf;
mod frameworks;
mod fuzz;
mod gpucheck;
mod initramfs;
mod kernel;
mod libvirt;
mod paths;
mod qemu;
mod soak;
mod test;
mod vgpud;
mod vmkill;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "vgpu project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that boots VMs.
#[derive(clap::Args, Clone, Debug)]
pub struct VmOpts {
    /// QEMU accelerator. KVM on the project's machines is KVM-PVM, which cannot boot stock kernels.
    #[arg(long, value_enum, default_value_t = qemu::Accel::Tcg)]
    pub accel: qemu::Accel,
    /// Per-VM timeout in seconds; a VM still running after it is killed.
    #[arg(long, default_value_t = 120)]
    pub vm_timeout: u64,
}

impl VmOpts {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.vm_timeout)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Install (as root) or check the host tools the VM tests need.
    Deps,
    /// Build, start vgpud, boot two VMs and check that each sees its own vGPU.
    Demo {
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Run the workspace tests, then the VM end-to-end test.
    Test {
        /// Skip the VM end-to-end test.
        #[arg(long)]
        no_vm: bool,
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Build and run a benchmark of `vgpu-bench` (e.g. `channel`).
    Bench {
        /// Benchmark name.
        name: String,
        /// Write machine-readable results to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Further arguments passed to `vgpu-bench` unchanged.
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Boot the guest kernel with a busybox-only initramfs (checks the VM tooling, no vgpud), or
    /// with any static guest binary as /bin/vgpu-smi, optionally on a vgpud socket.
    VmSmoke {
        /// Static binary to put in the initramfs as /bin/vgpu-smi (its exit status must be 0).
        #[arg(long)]
        guest_bin: Option<std::path::PathBuf>,
        /// Attach an ivshmem-doorbell device on this (already listening) socket.
        #[arg(long)]
        socket: Option<std::path::PathBuf>,
        /// Arguments for the guest binary, comma-separated (kernel `vgpu.args=`).
        #[arg(long)]
        args: Option<String>,
        /// Give the VM a virtual IOMMU and the VFIO modules (the guest then takes MSI-X
        /// completion interrupts instead of polling).
        #[arg(long)]
        iommu: bool,
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Prepare the self-contained GPU-host folder (binaries, tests, guest, QEMU bundle, run.sh)
    /// and run it where a GPU is usable (or with --run).
    GpuCheck(gpucheck::Opts),
    /// SIGKILL a VM's QEMU mid-copy and mid-kernel: vgpud frees it within 1 s, the socket
    /// serves the next boot, a bystander keeps passing (also a stage of `test`).
    VmKill {
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Build the CUDA C++ programs of crates/vgpu-cuda/tests/cuda with NVIDIA's toolkit (pip
    /// wheels) and run them through vgpu's libcuda.so.1 against vgpud's cpu backend.
    CudaPrograms,
    /// Run cuda-bindings, CuPy and numba-cuda (pip wheels) through vgpu's libcuda.so.1 against
    /// vgpud's cpu backend: start-up, queries, allocations, copies, streams, events (also a
    /// stage of `test`).
    FrameworksCpu,
    /// Boot a VM whose image has vgpu's libcuda.so.1 installed (default library directory,
    /// libcuda.so link, ld.so.cache) and an nvcc-built CUDA program, and run it against
    /// vgpud's cpu backend (also a stage of `test`).
    CudaVm {
        #[command(flatten)]
        vm: VmOpts,
    },
    /// Run the cargo-fuzz targets (what a guest or an admin client controls) for a bounded time.
    Fuzz(fuzz::Opts),
    /// Many process clients doing random valid work plus a hostile one against a real vgpud;
    /// checks results and that vgpud's resources come back to where they started.
    Soak(soak::Opts),
    /// Run `deploy/libvirt/vm-a.xml` under libvirt (virsh define / start / destroy) against
    /// vgpud on `deploy/libvirt/vgpud.toml`; skips when not root or without virsh.
    Libvirt {
        #[command(flatten)]
        vm: VmOpts,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Deps => report(deps::ensure_host_tools()),
        Command::Demo { vm } => demo::main(&vm),
        Command::Test { no_vm, vm } => test::main(no_vm, &vm),
        Command::Bench { name, json, rest } => bench::main(&name, json.as_deref(), &rest),
        Command::VmSmoke {
            guest_bin,
            socket,
            args,
            iommu,
            vm,
        } => report(demo::vm_smoke(
            guest_bin.as_deref(),
            socket.as_deref(),
            args.as_deref(),
            iommu,
            &vm,
        )),
        Command::GpuCheck(o) => gpucheck::main(&o),
        Command::VmKill { vm } => report(vmkill::run(&vm)),
        Command::Fuzz(o) => fuzz::main(&o),
        Command::Soak(o) => soak::main(&o),
        Command::Libvirt { vm } => libvirt::main(&vm),
        Command::CudaPrograms => report(cudaprog::run()),
        Command::FrameworksCpu => report(frameworks::run()),
        Command::CudaVm { vm } => report(cudavm::run(&vm)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
