//! `vgpu-bench multigpu`: pools over several devices (issue 6), measured on a real vgpud.
//!
//! 1. **Placement**: one pool over devices {0, 1} and four VMs that connect one after another;
//!    vgpud must place them two and two (its admin `stats` and its log both say where).
//! 2. **Independence**: pool A pinned to device 0 and pool B to device 1, one VM each, each
//!    saturating its device with kernels (batches ending in a synchronize, so a batch completes
//!    when its kernels have run). Each pool's throughput when both run at once ÷ its throughput
//!    when it runs alone on the same vgpud. Goal ≥ 0.95.
//!
//! The cpu backend (`cpu_devices = 2`, one slot each; busy kernels) runs anywhere; the cuda
//! backend (`--backend cuda`, sgemm kernels) needs a host with two GPUs.

use crate::vgpud::{Daemon, VmDef};
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use vgpu_abi::cmd::{Builtin, BusyParams, Command, LaunchBody, SgemmParams};
use vgpu_abi::Sqe;
use vgpu_guest::Device;
use zerocopy::IntoBytes;

/// Options of `vgpu-bench multigpu`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Backend of vgpud: cpu (two cpu devices) or cuda (GPUs 0 and 1).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// cpu backend: length of each busy kernel in µs.
    #[arg(long, default_value_t = 2000)]
    pub kernel_us: u32,
    /// cuda backend: edge of the square sgemm each kernel computes.
    #[arg(long, default_value_t = 2048)]
    pub sgemm: u32,
    /// Kernels per batch (each batch ends with a synchronize).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

const SGEMM_BLOCK: u32 = 16;

fn head(o: &Opts) -> String {
    match o.backend.as_str() {
        "cuda" => "[mediator]\nbackend = \"cuda\"\n".into(),
        _ => "[mediator]\nbackend = \"cpu\"\ncpu_devices = 2\ncpu_slots = 1\n".into(),
    }
}

fn vm(name: &str, pool: u32, shm: &str) -> VmDef {
    VmDef {
        name: name.into(),
        extra: format!("pool = {pool}\nmem_quota = \"1GiB\"\nshm_size = \"{shm}\"\n"),
    }
}

/// Each VM's device index from vgpud's `stats`.
fn placement(d: &Daemon) -> Result<Vec<(String, i64)>> {
    let s = d.stats()?;
    s["vms"]
        .as_array()
        .context("stats: vms")?
        .iter()
        .map(|v| {
            Ok((
                v["name"].as_str().context("vm name")?.to_string(),
                v["device"].as_i64().unwrap_or(-1),
            ))
        })
        .collect()
}

fn case_placement(o: &Opts) -> Result<Value> {
    let pools = format!("{}\n[[pool]]\nid = 0\ngpus = [0, 1]\n", head(o));
    let vms: Vec<VmDef> = (0..4).map(|i| vm(&format!("p{i}"), 0, "1MiB")).collect();
    let d = Daemon::with_config("placement", &pools, &vms)?;
    let mut devs = Vec::new();
    for s in &d.sockets {
        devs.push(Device::connect(s).with_context(|| format!("connecting {}", s.display()))?);
    }
    for dev in &devs {
        dev.nop()?;
    }
    let placed = placement(&d)?;
    let on = |i: i64| placed.iter().filter(|(_, dv)| *dv == i).count();
    let (n0, n1) = (on(0), on(1));
    let logged = d.log_lines("VM placed");
    println!("placement: pool over devices {{0, 1}}, four VMs");
    for (name, dev) in &placed {
        println!("  {name} -> device {dev}");
    }
    for l in &logged {
        println!("  log: {}", l.trim());
    }
    let ok = n0 == 2 && n1 == 2 && logged.len() == 4;
    println!(
        "  device 0: {n0} VMs, device 1: {n1} VMs: {}",
        if ok {
            "two and two (met)"
        } else {
            "NOT two and two"
        }
    );
    Ok(json!({
        "placement": placed.iter().map(|(n, d)| json!({"vm": n, "device": d})).collect::<Vec<_>>(),
        "placement_per_device": [n0, n1],
        "placement_logged": logged.len(),
        "placement_ok": ok,
    }))
}

/// A saturating client: batches of kernels + synchronize until `stop`; returns kernels done.
struct Worker {
    dev: Device,
    batch: Vec<Sqe>,
    kernels: usize,
}

impl Worker {
    fn new(o: &Opts, socket: &std::path::Path) -> Result<Self> {
        let dev = Device::connect(socket)?;
        let launch = if o.backend == "cuda" {
            let n = o.sgemm;
            let bytes = u64::from(n) * u64::from(n) * 4;
            let (a, b, c) = (dev.alloc(bytes)?, dev.alloc(bytes)?, dev.alloc(bytes)?);
            for p in [a, b, c] {
                dev.memset_d32(p, 1.0f32.to_bits(), bytes / 4)?;
            }
            let p = SgemmParams {
                a,
                b,
                c,
                m: n,
                n,
                k: n,
                alpha: 1.0,
                beta: 0.0,
                _pad: 0,
            };
            let g = n.div_ceil(SGEMM_BLOCK);
            LaunchBody::new(
                Builtin::Sgemm.handle(),
                [g, g, 1],
                [SGEMM_BLOCK, SGEMM_BLOCK, 1],
                p.as_bytes(),
            )
        } else {
            let p = BusyParams {
                duration_us: o.kernel_us,
                _pad: 0,
            };
            LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], p.as_bytes())
        }
        .context("kernel parameters")?;
        let mut batch: Vec<Sqe> = (0..o.batch)
            .map(|i| Command::Launch { launch }.encode(0, i as u64))
            .collect();
        batch.push(Command::Synchronize { all_streams: false }.encode(0, u64::MAX));
        Ok(Self {
            dev,
            batch,
            kernels: o.batch,
        })
    }

    /// Runs batches until `stop`; returns (kernels completed, seconds).
    fn run(&self, stop: &AtomicBool) -> Result<(usize, f64)> {
        let t0 = Instant::now();
        let mut done = 0;
        while !stop.load(Relaxed) {
            let c = self.dev.submit_batch(&self.batch)?;
            ensure!(
                c.iter().all(|c| c.status == 0),
                "a kernel failed: {:?}",
                c.iter().find(|c| c.status != 0)
            );
            done += self.kernels;
        }
        Ok((done, t0.elapsed().as_secs_f64()))
    }
}

/// Runs the given workers at once for `secs`; returns each one's kernels per second.
fn phase(workers: &[&Worker], secs: f64) -> Result<Vec<f64>> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let hs: Vec<_> = workers.iter().map(|w| s.spawn(|| w.run(&stop))).collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Relaxed);
        hs.into_iter()
            .map(|h| {
                let (n, t) = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
                Ok(n as f64 / t)
            })
            .collect()
    })
}

fn case_independence(o: &Opts) -> Result<Value> {
    let cfg = format!(
        "{}\n[[pool]]\nid = 1\nname = \"A\"\ngpus = [0]\n[[pool]]\nid = 2\nname = \"B\"\ngpus = [1]\n",
        head(o)
    );
    let d = Daemon::with_config(
        "independence",
        &cfg,
        &[vm("a", 1, "4MiB"), vm("b", 2, "4MiB")],
    )?;
    let a = Worker::new(o, &d.sockets[0])?;
    let b = Worker::new(o, &d.sockets[1])?;
    let placed = placement(&d)?;
    // Warm up both devices.
    phase(&[&a, &b], 0.5)?;
    let a_alone = phase(&[&a], o.secs)?[0];
    let b_alone = phase(&[&b], o.secs)?[0];
    let both = phase(&[&a, &b], o.secs)?;
    let (ra, rb) = (both[0] / a_alone, both[1] / b_alone);
    let unit = if o.backend == "cuda" {
        format!("sgemm {}³/s", o.sgemm)
    } else {
        format!("busy {} µs kernels/s", o.kernel_us)
    };
    println!("independence: pool A on device 0, pool B on device 1 ({unit})");
    for (name, dev) in &placed {
        println!("  {name} -> device {dev}");
    }
    println!(
        "  A alone {a_alone:.1}, together {:.1}: {ra:.3}×  (goal ≥ 0.95)",
        both[0]
    );
    println!(
        "  B alone {b_alone:.1}, together {:.1}: {rb:.3}×  (goal ≥ 0.95)",
        both[1]
    );
    Ok(json!({
        "kernel": unit,
        "independence_placement": placed.iter().map(|(n, d)| json!({"vm": n, "device": d})).collect::<Vec<_>>(),
        "pool_a_alone_per_s": a_alone,
        "pool_b_alone_per_s": b_alone,
        "pool_a_together_per_s": both[0],
        "pool_b_together_per_s": both[1],
        "pool_a_ratio": ra,
        "pool_b_ratio": rb,
        "independence_ok": ra >= 0.95 && rb >= 0.95,
    }))
}

/// Runs both cases; the JSON of both.
pub fn run(o: &Opts) -> Result<Value> {
    ensure!(
        o.backend == "cpu" || o.backend == "cuda",
        "--backend must be cpu or cuda, not {:?}",
        o.backend
    );
    let mut v = case_placement(o)?;
    let w = case_independence(o)?;
    let (m, wm) = (
        v.as_object_mut().context("json")?,
        w.as_object().context("json")?,
    );
    m.extend(wm.clone());
    m.insert("backend".into(), json!(o.backend));
    let ok = m["placement_ok"] == json!(true) && m["independence_ok"] == json!(true);
    m.insert("ok".into(), json!(ok));
    Ok(v)
}

/// `vgpu-bench multigpu`: prints, writes JSON, fails when a goal is not met.
pub fn cli(o: &Opts) -> Result<()> {
    let v = run(o)?;
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    ensure!(v["ok"] == json!(true), "multigpu: a goal was not met");
    println!("multigpu: OK");
    Ok(())
}
