//! `vgpu-bench`: benchmarks with their baselines measured side by side in one run.

mod channel;
mod copyout;
mod gpu;
mod multigpu;
mod pingpong;
mod sched;
mod soak;
mod stats;
mod tenancy;
mod vgpud;
mod wait;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "vgpu-bench", about = "vgpu benchmarks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The channel: null round trip vs raw shared-memory ping-pong, async throughput, copies.
    Channel {
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Round trips per latency measurement.
        #[arg(long, default_value_t = 100_000)]
        iters: usize,
        /// Commands in the throughput run.
        #[arg(long, default_value_t = 500_000)]
        async_cmds: usize,
        /// Bytes per copy (bandwidth run).
        #[arg(long, default_value_t = 64 << 20)]
        copy_bytes: usize,
    },
    /// A staged device-to-host copy's last step: plain copies vs streaming stores, one run.
    CopyOut(copyout::Opts),
    /// vgpu (process client, vgpud cuda backend) vs native CUDA on the same GPU (exit 2: no GPU).
    Gpu(gpu::Opts),
    /// The scheduler: priority latency, fair shares between pools, idle hand-over (cpu backend).
    Sched(sched::Opts),
    /// Pools over several devices: placement two and two, independence of pinned pools.
    Multigpu(multigpu::Opts),
    /// Many process clients doing random valid work plus a hostile one; vgpud's resources checked.
    Soak(soak::Opts),
    /// A victim VM's latency next to a kernel that never ends and next to a reset storm.
    Tenancy(tenancy::Opts),
    /// What waiting for the device costs: host CPU while a VM waits on a long kernel, round
    /// trips and launch rate, `device_wait` spin vs block side by side.
    Wait(wait::Opts),
    /// Internal: the other process of the raw ping-pong.
    #[command(hide = true)]
    PingpongChild {
        /// The shared page.
        path: String,
    },
}

fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Channel {
            json,
            iters,
            async_cmds,
            copy_bytes,
        } => {
            let v = channel::run(&channel::Opts {
                iters,
                async_cmds,
                copy_bytes,
            })?;
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&v)? + "\n")?;
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Cmd::CopyOut(o) => {
            let v = copyout::run(&o)?;
            if let Some(p) = &o.json {
                std::fs::write(p, serde_json::to_string_pretty(&v)? + "\n")?;
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Cmd::Gpu(o) => gpu::cli(&o),
        Cmd::Sched(o) => sched::cli(&o),
        Cmd::Multigpu(o) => multigpu::cli(&o),
        Cmd::Soak(o) => soak::cli(&o),
        Cmd::Tenancy(o) => tenancy::cli(&o),
        Cmd::Wait(o) => wait::cli(&o),
        Cmd::PingpongChild { path } => pingpong::child(&path),
    }
}
