//! `vgpu-bench tenancy`: what a hostile neighbour costs a VM. A victim VM measures small round
//! trips (a 4 KiB copy and a NOP) alone, then while a neighbour on the same device runs kernels
//! that never end (each stopped by the kernel time limit, then reset), then while a neighbour
//! resets its device in a loop (a new worker process each time). Ratios of the victim's p99
//! against its p99 alone, in the same run.

use crate::stats::{summarize, Summary};
use crate::vgpud::{Daemon, VmDef};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::LaunchBody;
use vgpu_abi::Status;
use vgpu_guest::Device;

/// Options of `vgpu-bench tenancy`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Backend: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Seconds of each contended phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// The kernel time limit, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub limit_ms: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// The acceptance bound: the victim's p99 under attack at most this many times its p99 alone.
const GOAL: f64 = 2.0;

/// The victim's round trips for `d` (at least `min` of them).
fn victim_round_trips(dev: &Device, buf: u64, d: Duration, min: usize) -> Result<Vec<u64>> {
    let data = vec![7u8; 4096];
    let mut v = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < d || v.len() < min {
        let t = Instant::now();
        dev.copy_htod(buf, &data)?;
        dev.nop()?;
        v.push(t.elapsed().as_nanos() as u64);
    }
    Ok(v)
}

/// Runs `attack` on its own thread for the duration of the victim's measurement.
fn contended(
    dev: &Device,
    buf: u64,
    secs: u64,
    attack: impl FnOnce(Arc<AtomicBool>) -> Result<u64> + Send + 'static,
) -> Result<(Vec<u64>, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let h = std::thread::spawn(move || attack(s2));
    std::thread::sleep(Duration::from_millis(200));
    let v = victim_round_trips(dev, buf, Duration::from_secs(secs), 1000);
    stop.store(true, Ordering::Relaxed);
    let n = h
        .join()
        .map_err(|_| anyhow::anyhow!("attacker panicked"))??;
    Ok((v?, n))
}

pub fn run(o: &Opts) -> Result<Value> {
    if o.backend != "cpu" && o.backend != "cuda" {
        bail!("--backend must be cpu or cuda");
    }
    // Two slots on the cpu device: like a GPU, it runs a neighbour's work next to a long
    // kernel (one slot is strictly serial, where only the limit bounds the wait).
    let head = format!(
        "[mediator]\nbackend = \"{}\"\nfault_isolation = \"process\"\nmax_kernel_us = 600000000\n\
         cpu_slots = 2\n[limits]\nmax_kernel_ms = {}\n",
        o.backend, o.limit_ms
    );
    let vm = |name: &str| VmDef {
        name: name.into(),
        extra: "mem_quota = \"1GiB\"\nshm_size = \"4MiB\"\n".into(),
    };
    let d = Daemon::with_config(
        "tenancy",
        &head,
        &[vm("victim"), vm("runaway"), vm("storm")],
    )?;
    let victim = Device::connect(&d.socket("victim"))?;
    let buf = victim.alloc(4096)?;
    victim_round_trips(&victim, buf, Duration::from_millis(300), 500)?;
    let mut alone = victim_round_trips(&victim, buf, Duration::from_secs(o.seconds), 1000)?;

    let limit = Duration::from_millis(o.limit_ms);
    let stops = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (sock, stops2) = (d.socket("runaway"), stops.clone());
    let (mut runaway, timeouts) = contended(&victim, buf, o.seconds, move |stop| {
        let dev = Device::connect(&sock)?;
        dev.set_eager_wait(false);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            // After a reset the VM's new context may still be starting (a worker process
            // creating a CUDA context): a NOP is answered once it serves, so the clock below
            // counts only the kernel.
            dev.nop()?;
            let t0 = Instant::now();
            let e = match dev
                .stream(0)
                .launch_body(LaunchBody::busy(600_000_000))?
                .wait()
            {
                Ok(_) => bail!("a 10-minute kernel completed"),
                Err(e) => e,
            };
            if e.status() != Some(Status::KernelTimeout) {
                bail!("runaway kernel ended with {e}, not KERNEL_TIMEOUT");
            }
            let after = t0.elapsed().saturating_sub(limit);
            stops2.lock().expect("stops").push(after.as_nanos() as u64);
            dev.reset()?;
            n += 1;
        }
        Ok(n)
    })?;

    let sock = d.socket("storm");
    let (mut storm, resets) = contended(&victim, buf, o.seconds, move |stop| {
        let dev = Device::connect(&sock)?;
        dev.set_eager_wait(false);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            dev.reset()?;
            dev.alloc(64)?;
            n += 1;
        }
        Ok(n)
    })?;
    let stats = d.stats()?;
    let timeouts_seen = stats["vms"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "runaway"))
        .map(|v| v["kernel_timeouts"].clone())
        .unwrap_or(Value::Null);

    let (a, r, s) = (
        summarize(&mut alone),
        summarize(&mut runaway),
        summarize(&mut storm),
    );
    let mut stops = std::mem::take(&mut *stops.lock().expect("stops"));
    if stops.is_empty() {
        bail!("the runaway neighbour was never stopped by the time limit");
    }
    let stop_after = summarize(&mut stops);
    let ratio = |x: &Summary| x.p99_us / a.p99_us;
    let js = |x: &Summary| json!({"p50": x.p50_us, "p99": x.p99_us, "mean": x.mean_us, "n": x.n});
    let met = |x: f64| if x <= GOAL { "MET" } else { "NOT MET" };
    println!(
        "tenancy ({} backend, kernel time limit {} ms, {} s per phase): victim round trip = 4 KiB copy + NOP",
        o.backend, o.limit_ms, o.seconds
    );
    println!(
        "  alone                      p50 {:8.1} us  p99 {:8.1} us",
        a.p50_us, a.p99_us
    );
    println!(
        "  neighbour runs away ({timeouts:3}x) p50 {:8.1} us  p99 {:8.1} us  p99 ratio {:.2} (goal <= {GOAL}: {})",
        r.p50_us,
        r.p99_us,
        ratio(&r),
        met(ratio(&r))
    );
    println!(
        "  neighbour resets ({resets:4}x)   p50 {:8.1} us  p99 {:8.1} us  p99 ratio {:.2} (goal <= {GOAL}: {})",
        s.p50_us,
        s.p99_us,
        ratio(&s),
        met(ratio(&s))
    );
    println!(
        "  runaway stopped {:.1} ms (p50) / {:.1} ms (p99) after the limit",
        stop_after.p50_us / 1e3,
        stop_after.p99_us / 1e3
    );
    Ok(json!({
        "bench": "tenancy",
        "backend": o.backend,
        "limit_ms": o.limit_ms,
        "seconds_per_phase": o.seconds,
        "victim_alone_us": js(&a),
        "victim_runaway_us": js(&r),
        "victim_reset_storm_us": js(&s),
        "p99_ratio_runaway": ratio(&r),
        "p99_ratio_reset_storm": ratio(&s),
        "goal_p99_ratio": GOAL,
        "runaway_timeouts": timeouts,
        "runaway_timeouts_vgpud": timeouts_seen,
        "runaway_stopped_after_limit_ms": {"p50": stop_after.p50_us / 1e3, "p99": stop_after.p99_us / 1e3},
        "storm_resets": resets,
    }))
}

pub fn cli(o: &Opts) -> Result<()> {
    let v = run(o)?;
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&v)? + "\n")?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
