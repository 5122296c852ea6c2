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
    /// How to wait for completions: on the completion interrupt where there is one (`auto`:
    /// MSI-X through VFIO in a VM, the eventfd on a socket), or always `poll`.
    #[arg(long, global = true, value_enum, default_value_t = WaitArg::Auto)]
    wait: WaitArg,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum WaitArg {
    Auto,
    Poll,
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
    /// Measure what waiting costs: this process's CPU time while it waits for busy kernels,
    /// the round trip of a nop, and how late the completion of a 5 ms kernel reaches the
    /// waiter; with the completion interrupt (where there is one) and polling. Prints one
    /// `bench-wait: {json}` line per mode.
    BenchWait {
        /// Duration of each busy kernel, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        kernel_ms: u32,
        /// Busy kernels waited for per mode.
        #[arg(long, default_value_t = 3)]
        kernels: u32,
        /// Nop round trips per mode.
        #[arg(long, default_value_t = 2000)]
        iters: u32,
        /// 5 ms busy kernels per mode whose completion latency is measured.
        #[arg(long, default_value_t = 200)]
        medium: u32,
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
    if cli.wait == WaitArg::Poll {
        dev.use_interrupts(false);
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
    // The register page's figures (ABI 1.6): what NVML reports, without a round trip.
    let util = match i.usage.map(|u| u.busy) {
        Some(Some((permille, ms))) => {
            format!("{}.{}% of the last {ms} ms", permille / 10, permille % 10)
        }
        Some(None) => "no window ended yet".into(),
        None => format!("not published (vgpud speaks {})", i.abi_version_string()),
    };
    let rows: [(&str, String); 15] = [
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
        ("Utilisation", util),
        ("Staging", human(dev.staging_size())),
        ("Transport", dev.transport_description()),
        ("Wait", dev.wait_description()),
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
    println!("wait: {}", dev.wait_description());
    Ok(())
}

/// Sorted times of `iters` synchronous commands `cmd` (after a warm-up of up to 100), and how
/// long they all took.
fn round_trips(
    iters: u32,
    mut cmd: impl FnMut() -> Result<(), vgpu_guest::Error>,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let iters = iters.max(1);
    for _ in 0..iters.min(100) {
        cmd()?;
    }
    let mut t: Vec<Duration> = Vec::with_capacity(iters as usize);
    let all = Instant::now();
    for _ in 0..iters {
        let s = Instant::now();
        cmd()?;
        t.push(s.elapsed());
    }
    let total = all.elapsed();
    t.sort();
    Ok((t, total))
}

/// The `p` quantile of sorted durations, in microseconds.
fn quantile_us(t: &[Duration], p: f64) -> f64 {
    let i = ((t.len() as f64 * p).ceil() as usize).clamp(1, t.len()) - 1;
    t[i].as_secs_f64() * 1e6
}

/// CPU time this process has used (user + system), from `/proc/self/stat` (fields 14 and 15,
/// in clock ticks of 1/100 s: `USER_HZ` is 100 on every Linux architecture we run on).
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/self/stat has no `)`")?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.iter().sum::<u64>();
    Ok(Duration::from_millis(ticks * 10))
}

/// The busy kernel whose completion latency `bench-wait` measures: longer than the time a
/// waiter polls before it arms MSI-X (1 ms), so that with interrupts the interrupt ends it.
const MEDIUM_KERNEL_US: u32 = 5000;

fn bench_wait(
    dev: &Device,
    kernel_ms: u32,
    kernels: u32,
    iters: u32,
    medium: u32,
) -> anyhow::Result<()> {
    let kernels = kernels.max(1);
    let mut modes = vec![dev.wait_mode()];
    if modes[0] != "poll" {
        modes.push("poll");
    }
    for mode in modes {
        dev.use_interrupts(mode != "poll");
        // Warm-up: the first launch of a kernel may take a slow path on the host.
        dev.busy(1000)?;
        let cpu0 = cpu_time()?;
        let wall0 = Instant::now();
        for _ in 0..kernels {
            dev.busy(kernel_ms.saturating_mul(1000))?;
        }
        let waited = wall0.elapsed();
        let cpu = cpu_time()?.saturating_sub(cpu0);
        let (t, _) = round_trips(iters, || dev.nop())?;
        // How long after its 5 ms the medium kernel's completion reached the waiter.
        let (m, _) = round_trips(medium, || dev.busy(MEDIUM_KERNEL_US))?;
        let late = |p| quantile_us(&m, p) - f64::from(MEDIUM_KERNEL_US);
        println!(
            "bench-wait: {{\"wait\":\"{mode}\",\"kernels\":{kernels},\"kernel_ms\":{kernel_ms},\
             \"waited_s\":{:.3},\"cpu_s\":{:.3},\"cpu_pct\":{:.2},\"nop_iters\":{},\
             \"nop_p50_us\":{:.1},\"nop_p99_us\":{:.1},\"busy5ms_iters\":{},\
             \"busy5ms_late_p50_us\":{:.1},\"busy5ms_late_p99_us\":{:.1}}}",
            waited.as_secs_f64(),
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / waited.as_secs_f64(),
            t.len(),
            quantile_us(&t, 0.50),
            quantile_us(&t, 0.99),
            m.len(),
            late(0.50),
            late(0.99),
        );
    }
    Ok(())
}

fn bench_nop(dev: &Device, iters: u32) -> anyhow::Result<()> {
    let (t, total) = round_trips(iters, || dev.nop())?;
    let pct = |p: f64| quantile_us(&t, p);
    println!(
        "bench-nop: iters={iters} p50={:.2}us p99={:.2}us min={:.2}us max={:.2}us rate={:.0}/s",
        pct(0.50),
        pct(0.99),
        t[0].as_secs_f64() * 1e6,
        t[t.len() - 1].as_secs_f64() * 1e6,
        t.len() as f64 / total.as_secs_f64()
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
        Some(Cmd::BenchWait {
            kernel_ms,
            kernels,
            iters,
            medium,
        }) => bench_wait(&dev, kernel_ms, kernels, iters, medium),
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
