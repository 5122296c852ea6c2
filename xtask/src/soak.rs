//! `cargo xtask soak [--minutes N] [--backend cpu|cuda] [--clients 16] [--json FILE]`: builds
//! release `vgpud` and `vgpu-bench`, then runs `vgpu-bench soak` — a real vgpud with one VM per
//! client, the clients doing random valid work checked bit-exactly, one hostile client, and
//! vgpud's RSS, fds, threads, worker processes (and GPU memory) compared before and after.
//! Output streamed, exit status propagated (non-zero on any failure).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::build;

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// How long the clients run, in minutes (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// vgpud backend: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Clients doing random valid work (one VM each, plus one VM for the hostile client).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seed of the clients' random work (the run prints it; the same seed, the same choices).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Further arguments for `vgpu-bench soak` (e.g. `-- --isolation process`).
    #[arg(last = true)]
    pub rest: Vec<String>,
}

pub fn main(o: &Opts) -> ExitCode {
    let t0 = Instant::now();
    // vgpu-bench starts the vgpud next to it: build both.
    if let Err(e) = build::cargo_build_release(&["vgpu-bench", "vgpu-mediator"]) {
        eprintln!("xtask soak: {e:#}");
        return ExitCode::FAILURE;
    }
    let built = t0.elapsed();
    let bin = build::host_bin("vgpu-bench");
    let mut cmd = Command::new(&bin);
    cmd.arg("soak")
        .args(["--minutes", &o.minutes.to_string()])
        .args(["--backend", &o.backend])
        .args(["--clients", &o.clients.to_string()]);
    if let Some(seed) = o.seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    if let Some(json) = &o.json {
        cmd.arg("--json").arg(json);
    }
    cmd.args(&o.rest);
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xtask soak: cannot run {}: {e}", bin.display());
            return ExitCode::FAILURE;
        }
    };
    let total = t0.elapsed();
    println!(
        "xtask soak: {} in {:.0} s ({:.0} s building, {:.0} s in vgpu-bench soak)",
        if status.success() { "passed" } else { "FAILED" },
        total.as_secs_f64(),
        built.as_secs_f64(),
        (total - built).as_secs_f64()
    );
    match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            eprintln!("xtask soak: vgpu-bench was killed ({status})");
            ExitCode::FAILURE
        }
    }
}
