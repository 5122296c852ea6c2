//! `vgpu-bench channel`: the channel's costs with process clients on the cpu backend, each
//! next to the raw two-process shared-memory ping-pong measured in the same run.

use crate::stats::{summarize, Summary};
use crate::{pingpong, vgpud::Daemon};
use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use vgpu_abi::cmd::Command;
use vgpu_guest::Device;

/// Knobs.
pub struct Opts {
    /// Round trips per latency measurement.
    pub iters: usize,
    /// Commands in the throughput run.
    pub async_cmds: usize,
    /// Bytes per copy in the bandwidth run.
    pub copy_bytes: usize,
}

fn line(name: &str, s: &Summary) {
    println!(
        "  {name:<28} p50 {:>8.3} µs   p99 {:>8.3} µs   mean {:>8.3} µs   (n={})",
        s.p50_us, s.p99_us, s.mean_us, s.n
    );
}

/// Runs the benchmark; returns the JSON report.
pub fn run(o: &Opts) -> Result<serde_json::Value> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("channel benchmark: process client ↔ vgpud (cpu backend), {cores} cores");

    let mut raw = pingpong::run(o.iters, o.iters / 10)?;
    let raw = summarize(&mut raw);
    line("raw shm ping-pong", &raw);

    let d = Daemon::start(1, 64 << 20, 50)?;
    let dev = Device::connect(&d.sockets[0])?;
    for _ in 0..o.iters / 10 {
        dev.nop()?;
    }
    let mut rtt = Vec::with_capacity(o.iters);
    for _ in 0..o.iters {
        let t0 = Instant::now();
        dev.nop()?;
        rtt.push(t0.elapsed().as_nanos() as u64);
    }
    let nul = summarize(&mut rtt);
    line("null command round trip", &nul);
    println!(
        "  null − raw at p50: {:+.3} µs   (ratio {:.2}×)",
        nul.p50_us - raw.p50_us,
        nul.p50_us / raw.p50_us
    );

    // Batched asynchronous throughput: one doorbell (at most) per batch.
    let sqes: Vec<_> = (0..o.async_cmds as u64)
        .map(|i| Command::Nop.encode(0, i))
        .collect();
    dev.submit_batch(&sqes[..o.async_cmds.min(4096)])?;
    let t0 = Instant::now();
    let cqes = dev.submit_batch(&sqes)?;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(cqes.len() == sqes.len(), "lost completions");
    anyhow::ensure!(cqes.iter().all(|c| c.status == 0), "a nop failed");
    let cmds_per_s = sqes.len() as f64 / secs;
    println!(
        "  async nop throughput         {:>12.0} cmds/s ({} cmds)",
        cmds_per_s,
        sqes.len()
    );

    // Staging copy bandwidth (guest buffer → staging → device memory and back).
    let n = o.copy_bytes;
    let buf: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
    let mut back = vec![0u8; n];
    let ptr = dev.alloc(n as u64)?;
    dev.copy_htod(ptr, &buf)?;
    let reps = 4;
    let t0 = Instant::now();
    for _ in 0..reps {
        dev.copy_htod(ptr, &buf)?;
    }
    let h2d = (n * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
    let t0 = Instant::now();
    for _ in 0..reps {
        dev.copy_dtoh(&mut back, ptr)?;
    }
    let d2h = (n * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
    anyhow::ensure!(back == buf, "copy round trip corrupted data");
    dev.free(ptr)?;
    println!(
        "  staging copy host→device     {h2d:>12.2} GB/s ({} MiB × {reps})",
        n >> 20
    );
    println!("  staging copy device→host     {d2h:>12.2} GB/s");
    drop(dev);
    drop(d);

    let delta = nul.p50_us - raw.p50_us;
    let verdict = if delta <= 2.0 { "MET" } else { "NOT MET" };
    println!("  goal null_rtt_p50 within 2 µs of raw_pingpong_p50: {verdict} ({delta:+.3} µs)");
    Ok(json!({
        "bench": "channel",
        "cores": cores,
        "raw_pingpong_p50_us": raw.p50_us,
        "raw_pingpong_p99_us": raw.p99_us,
        "null_rtt_p50_us": nul.p50_us,
        "null_rtt_p99_us": nul.p99_us,
        "null_rtt_mean_us": nul.mean_us,
        "null_minus_raw_p50_us": delta,
        "async_cmds_per_s": cmds_per_s,
        "staging_copy_gbps": h2d,
        "staging_copy_d2h_gbps": d2h,
        "copy_bytes": n,
        "iters": o.iters,
    }))
}
