//! `vgpu-bench wait`: what waiting for the device costs (issue 12, item 3).
//!
//! Stage `host`: two vgpuds side by side in one run, identical but for `[mediator]
//! device_wait` — `spin` (the executor and the worker poll the device while work is pending,
//! as before the quiet host) and `block` (they poll for `poll_us`, then block on the backend's
//! wake fd) — each serving one VM (a process client in this process). Rounds alternate between
//! them; in each round, on each:
//!
//! * **CPU per pending second**: one VM launches a `busy` kernel of `--kernel-ms` and waits
//!   for it; vgpud's and its workers' CPU time meanwhile (all their threads, from
//!   `/proc/<pid>/task/<tid>/schedstat`) divided by the wall time is the share of a core that
//!   waiting costs the host (goal: under 5 % with `block`). On the cpu backend a busy kernel
//!   is a timed occupation of an execution slot that burns no CPU itself, so all of it is
//!   waiting overhead; on the cuda backend the kernel runs on the GPU.
//! * **sync null-kernel round trip**: batches `[Launch busy(0), Synchronize]`, p50 / p99 (the
//!   shape of `vgpu-bench gpu`'s `sync_launch`);
//! * **async launch rate**: one batch of `--async-launches` `Launch busy(0)` + `Synchronize`
//!   (`vgpu-bench gpu`'s `async_launch`).
//!
//! Ratios are block / spin (goal: no regression beyond noise). The VM stage (a guest waiting
//! in a VM, interrupt vs polling) is a separate stage of the same benchmark.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;
use vgpu_abi::cmd::{BusyParams, Command, LaunchBody};
use vgpu_abi::{Builtin, Sqe, Status};
use vgpu_guest::Device;
use vgpu_mediator::testkit::{child_processes, cpu_ns};
use zerocopy::IntoBytes;

use crate::stats::summarize;
use crate::vgpud::{Daemon, VmDef};

/// The goal for the host's CPU while a VM waits on a long kernel, in % of a core.
const GOAL_CPU_PCT: f64 = 5.0;
/// The two ways of waiting compared, "before" first.
const MODES: [&str; 2] = ["spin", "block"];

/// Which stages run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Every stage.
    All,
    /// vgpud and its workers on this host.
    Host,
}

/// Options of `vgpu-bench wait`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Which stage(s) to run.
    #[arg(long, value_enum, default_value_t = Stage::All)]
    pub stage: Stage,
    /// vgpud's backend (`cuda` on the GPU host).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Length of the long kernel the VM waits on, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub kernel_ms: u32,
    /// Rounds (each: both vgpuds, one after the other).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Synchronous round trips per round and vgpud.
    #[arg(long, default_value_t = 2000)]
    pub sync_iters: usize,
    /// Launches in each asynchronous batch.
    #[arg(long, default_value_t = 10_000)]
    pub async_launches: usize,
    /// Extra `[mediator]` line of both vgpuds' config (repeatable), e.g.
    /// `fault_isolation = "none"` (the default here is `process`: vgpud and a worker) or
    /// `poll_us = 2000` (default 50).
    #[arg(long = "mediator", value_name = "KEY = VALUE")]
    pub mediator: Vec<String>,
}

/// Runs the benchmark from the command line.
pub fn cli(o: &Opts) -> Result<()> {
    let mut out = serde_json::Map::new();
    if matches!(o.stage, Stage::All | Stage::Host) {
        out.insert("host".into(), host(o)?);
    }
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&Value::Object(out))? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// One vgpud of the comparison, its VM attached.
struct Side {
    mode: &'static str,
    dev: Device,
    daemon: Daemon,
    /// CPU share of a core per round while the long kernel ran, in %.
    cpu_pct: Vec<f64>,
    /// Round trips, ns.
    sync_ns: Vec<u64>,
    /// Launches per second, per round.
    async_rate: Vec<f64>,
}

fn launch(duration_us: u32) -> Result<Sqe> {
    let p = BusyParams {
        duration_us,
        _pad: 0,
    };
    let body = LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], p.as_bytes())
        .context("busy parameters")?;
    Ok(Command::Launch { launch: body }.encode(0, 0))
}

fn sync() -> Sqe {
    Command::Synchronize { all_streams: true }.encode(0, 0)
}

impl Side {
    fn start(o: &Opts, mode: &'static str) -> Result<Self> {
        let explicit = |k: &str| o.mediator.iter().any(|l| l.trim_start().starts_with(k));
        let mut head = format!(
            "[mediator]\nbackend = \"{}\"\ndevice_wait = \"{mode}\"\nmax_kernel_us = {}\n",
            o.backend,
            (o.kernel_ms as u64 * 1000 * 4).max(1_000_000)
        );
        // Defaults of this benchmark that `--mediator` may override.
        for (k, v) in [("fault_isolation", "\"process\""), ("poll_us", "50")] {
            if !explicit(k) {
                head.push_str(&format!("{k} = {v}\n"));
            }
        }
        head.push_str(&o.mediator.join("\n"));
        let vm = VmDef {
            name: format!("wait-{mode}"),
            extra: "mem_quota = \"1GiB\"\nshm_size = \"16MiB\"\n".into(),
        };
        let daemon = Daemon::with_config(&format!("wait-{mode}"), &head, &[vm])?;
        let dev = Device::connect(&daemon.sockets[0])
            .with_context(|| format!("attaching to the {mode} vgpud"))?;
        let s = Self {
            mode,
            dev,
            daemon,
            cpu_pct: Vec::new(),
            sync_ns: Vec::new(),
            async_rate: Vec::new(),
        };
        // Warm: the context (a worker process) is up and every path has run once.
        s.batch(&[launch(0)?, sync()], "warm-up")?;
        s.batch(&[launch(1000)?, sync()], "warm-up")?;
        Ok(s)
    }

    fn batch(&self, sqes: &[Sqe], what: &str) -> Result<()> {
        let cqes = self.dev.submit_batch(sqes)?;
        ensure!(cqes.len() == sqes.len(), "{what}: lost completions");
        for c in &cqes {
            if c.status != Status::Ok as u32 {
                bail!(
                    "{what} ({} vgpud) failed: status {}\n{}",
                    self.mode,
                    c.status,
                    self.daemon.log_tail(20)
                );
            }
        }
        Ok(())
    }

    /// vgpud and its workers, as they are now.
    fn processes(&self) -> Vec<u32> {
        let pid = self.daemon.pid();
        std::iter::once(pid).chain(child_processes(pid)).collect()
    }

    fn round(&mut self, o: &Opts) -> Result<()> {
        // CPU while the VM waits on one long kernel.
        let long = [launch(o.kernel_ms.saturating_mul(1000))?, sync()];
        let pids = self.processes();
        let cpu0: u64 = pids.iter().map(|&p| cpu_ns(p)).sum();
        let t0 = Instant::now();
        self.batch(&long, "the long kernel")?;
        let wall = t0.elapsed();
        let cpu1: u64 = pids.iter().map(|&p| cpu_ns(p)).sum();
        self.cpu_pct
            .push(cpu1.saturating_sub(cpu0) as f64 / wall.as_nanos() as f64 * 100.0);
        // Sync round trips.
        let pair = [launch(0)?, sync()];
        for _ in 0..o.sync_iters {
            let t = Instant::now();
            self.batch(&pair, "busy(0) + synchronize")?;
            self.sync_ns.push(t.elapsed().as_nanos() as u64);
        }
        // Async launches.
        let mut sqes = vec![launch(0)?; o.async_launches.max(1)];
        sqes.push(sync());
        let t = Instant::now();
        self.batch(&sqes, "async launches")?;
        self.async_rate
            .push(o.async_launches.max(1) as f64 / t.elapsed().as_secs_f64());
        Ok(())
    }

    fn result(&mut self) -> Value {
        let s = summarize(&mut self.sync_ns);
        json!({
            "cpu_pct_of_core_per_pending_s": median(&self.cpu_pct),
            "cpu_pct_rounds": self.cpu_pct,
            "sync_launch_p50_us": s.p50_us,
            "sync_launch_p99_us": s.p99_us,
            "async_launch_per_s": median(&self.async_rate),
            "async_launch_rounds": self.async_rate,
        })
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The host stage: see the module documentation.
fn host(o: &Opts) -> Result<Value> {
    ensure!(o.rounds > 0 && o.sync_iters > 0, "nothing to measure");
    let mut sides = Vec::new();
    for mode in MODES {
        sides.push(Side::start(o, mode)?);
    }
    for r in 0..o.rounds {
        for s in &mut sides {
            s.round(o)?;
        }
        println!("wait host: round {}/{} done", r + 1, o.rounds);
    }
    let results: Vec<Value> = sides.iter_mut().map(Side::result).collect();
    let (spin, block) = (&results[0], &results[1]);
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let ratio = |k: &str| num(block, k) / num(spin, k);
    let block_cpu = num(block, "cpu_pct_of_core_per_pending_s");
    let met = block_cpu < GOAL_CPU_PCT;
    let isolation = o
        .mediator
        .iter()
        .find(|l| l.trim_start().starts_with("fault_isolation"))
        .map_or("fault_isolation = \"process\"".to_string(), |l| {
            l.trim().to_string()
        });
    println!(
        "\nwait (host), backend {}, {isolation}, one VM, {} ms kernel, {} rounds:",
        o.backend, o.kernel_ms, o.rounds
    );
    println!(
        "  {:<36} {:>12} {:>12} {:>8}",
        "metric", "spin", "block", "ratio"
    );
    for (k, label) in [
        (
            "cpu_pct_of_core_per_pending_s",
            "host CPU while waiting (% of a core)",
        ),
        ("sync_launch_p50_us", "sync null kernel p50 (us)"),
        ("sync_launch_p99_us", "sync null kernel p99 (us)"),
        ("async_launch_per_s", "async launches (per s)"),
    ] {
        println!(
            "  {label:<36} {:>12.2} {:>12.2} {:>8.3}",
            num(spin, k),
            num(block, k),
            ratio(k)
        );
    }
    println!(
        "  goal: block < {GOAL_CPU_PCT} % of a core: {}",
        if met { "MET" } else { "NOT MET" }
    );
    println!("  ratio = block / spin (round trips: lower is better; launch rate: higher)");
    Ok(json!({
        "backend": o.backend,
        "isolation": isolation,
        "mediator_extra": o.mediator,
        "kernel_ms": o.kernel_ms,
        "rounds": o.rounds,
        "sync_iters": o.sync_iters,
        "async_launches": o.async_launches,
        "spin": spin,
        "block": block,
        "ratio_block_over_spin": {
            "sync_launch_p50_us": ratio("sync_launch_p50_us"),
            "sync_launch_p99_us": ratio("sync_launch_p99_us"),
            "async_launch_per_s": ratio("async_launch_per_s"),
        },
        "goal_cpu_pct": GOAL_CPU_PCT,
        "goal_met": met,
    }))
}
