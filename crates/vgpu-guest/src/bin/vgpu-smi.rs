//! `vgpu-smi`: show the vGPU, run a self-test through it, measure round trips.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use vgpu_guest::{selftest, Device};

#[derive(Parser, Debug)]
#[command(name = "vgpu-smi", version, about = "Inspect and exercise a vGPU")]
struct Cli {
    /// Attach to a vgpud socket as an ivshmem client process instead of using PCI.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Use this PCI device (a sysfs directory such as /sys/bus/pci/devices/0000:00:04.0).
    #[arg(
        long,
        global = true,
        value_name = "SYSFS_DIR",
        conflicts_with = "socket"
    )]
    device: Option<PathBuf>,
    /// How long to wait for a completion, in milliseconds.
    #[arg(long, global = true, value_name = "N")]
    timeout_ms: Option<u64>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the device (the default).
    Info,
    /// Run a workload through the vGPU and check every result on the CPU.
    Selftest {
        /// Edge of the square sgemm.
        #[arg(long, default_value_t = 64)]
        sgemm: u32,
        /// Elements of the vector kernels.
        #[arg(long, default_value_t = 65536)]
        n: u32,
    },
    /// Keep the device busy until killed (to test what the host does when a VM dies in the
    /// middle of its work): copies of `--copy-mib` MiB, or busy kernels of `--kernel-ms`.
    /// Prints `stress: running` once work has gone through.
    Stress {
        /// Size of each host-to-device copy, in MiB.
        #[arg(long, conflicts_with = "kernel_ms")]
        copy_mib: Option<u32>,
        /// Duration of each busy kernel, in milliseconds.
        #[arg(long)]
        kernel_ms: Option<u32>,
    },
    /// Measure synchronous nop round trips.
    BenchNop {
        /// Round trips to measure.
        #[arg(long, default_value_t = 10000)]
        iters: u32,
    },
}

fn open(cli: &Cli) -> anyhow::Result<Device> {
    let mut dev = if let Some(s) = &cli.socket {
        Device::connect(s).with_context(|| format!("attaching to {}", s.display()))?
    } else if let Some(d) = &cli.device {
        Device::open_pci_at(d).with_context(|| format!("opening {}", d.display()))?
    } else {
        Device::open_pci()?
    };
    if let Some(ms) = cli.timeout_ms {
        dev.set_timeout(Duration::from_millis(ms));
    }
    Ok(dev)
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn info(dev: &Device) -> anyhow::Result<()> {
    let i = dev.info();
    let mem = match dev.mem_info() {
        Ok((used, quota)) => format!("{} / {}", human(used), human(quota)),
        Err(e) => format!("unavailable ({e})"),
    };
    let rows: [(&str, String); 13] = [
        ("Name", i.vm_name.clone()),
        ("VM id", i.vm_id.to_string()),
        ("Pool id", i.pool_id.to_string()),
        ("Priority", i.priority.to_string()),
        ("Status", i.status_name()),
        ("Last error", i.last_error_string()),
        ("Backend", i.backend_name()),
        ("Device", i.device_name.clone()),
        ("Device memory", human(i.device_total_mem)),
        ("ABI version", i.abi_version_string()),
        ("Memory used / quota", mem),
        ("Staging", human(dev.staging_size())),
        ("Transport", dev.transport_description()),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let v = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let line = format!("+-{}-+-{}-+", "-".repeat(w), "-".repeat(v));
    println!("{line}");
    println!(
        "| {:<w$} | {:<v$} |",
        "vGPU",
        format!("generation {}", i.generation)
    );
    println!("{line}");
    for (k, val) in &rows {
        println!("| {k:<w$} | {val:<v$} |");
    }
    println!("{line}");
    Ok(())
}

fn bench_nop(dev: &Device, iters: u32) -> anyhow::Result<()> {
    let iters = iters.max(1);
    for _ in 0..iters.min(100) {
        dev.nop()?;
    }
    let mut t: Vec<Duration> = Vec::with_capacity(iters as usize);
    let all = Instant::now();
    for _ in 0..iters {
        let s = Instant::now();
        dev.nop()?;
        t.push(s.elapsed());
    }
    let total = all.elapsed();
    t.sort();
    let pct = |p: f64| {
        let i = ((t.len() as f64 * p).ceil() as usize).clamp(1, t.len()) - 1;
        t[i].as_secs_f64() * 1e6
    };
    println!(
        "bench-nop: iters={iters} p50={:.2}us p99={:.2}us min={:.2}us max={:.2}us rate={:.0}/s",
        pct(0.50),
        pct(0.99),
        t[0].as_secs_f64() * 1e6,
        t[t.len() - 1].as_secs_f64() * 1e6,
        iters as f64 / total.as_secs_f64()
    );
    Ok(())
}

/// The error and its causes on one line, skipping a cause whose text is already shown.
fn chain(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
    }
    s
}

fn stress(dev: &Device, copy_mib: Option<u32>, kernel_ms: Option<u32>) -> anyhow::Result<()> {
    let copy = copy_mib.map(|m| vec![0x5au8; (m as usize) << 20]);
    let ptr = match &copy {
        Some(c) => dev.alloc(c.len() as u64)?,
        None => 0,
    };
    let mut first = true;
    loop {
        match &copy {
            Some(c) => dev.copy_htod(ptr, c)?,
            None => dev.busy(kernel_ms.unwrap_or(100).saturating_mul(1000))?,
        }
        if std::mem::take(&mut first) {
            println!("stress: running");
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dev = match open(&cli) {
        Ok(d) => d,
        Err(e) => {
            if matches!(cli.cmd, Some(Cmd::Selftest { .. })) {
                println!("selftest: FAIL {}", chain(&e));
            } else {
                eprintln!("vgpu-smi: {}", chain(&e));
            }
            return ExitCode::FAILURE;
        }
    };
    let r = match cli.cmd {
        None | Some(Cmd::Info) => info(&dev),
        Some(Cmd::Selftest { sgemm, n }) => {
            let ok = selftest::run(&dev, &selftest::Options { n, sgemm }, std::io::stdout());
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Some(Cmd::BenchNop { iters }) => bench_nop(&dev, iters),
        Some(Cmd::Stress {
            copy_mib,
            kernel_ms,
        }) => stress(&dev, copy_mib, kernel_ms),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpu-smi: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}
