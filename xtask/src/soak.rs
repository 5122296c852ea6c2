//! `cargo xtask soak [--minutes N] [--backend cpu|cuda] [--clients N] [--seed S] [--json FILE]`:
//! `cargo xtask bench soak` with its options spelled out — a real vgpud with one VM per client,
//! the clients doing random valid work checked bit-exactly, one hostile client, and vgpud's
//! RSS, fds, threads, worker processes (and GPU memory) compared before and after. The defaults
//! are `vgpu-bench soak`'s (2 minutes, cpu, 16 clients). Exit status non-zero on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::bench;

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// How long the clients run, in minutes (fractions allowed).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// vgpud backend: cpu or cuda.
    #[arg(long)]
    pub backend: Option<String>,
    /// Clients doing random valid work (one VM each, plus one VM for the hostile client).
    #[arg(long)]
    pub clients: Option<usize>,
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
    let mut args = Vec::new();
    let mut opt = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            args.extend([format!("--{name}"), v]);
        }
    };
    opt("minutes", o.minutes.map(|m| m.to_string()));
    opt("backend", o.backend.clone());
    opt("clients", o.clients.map(|c| c.to_string()));
    opt("seed", o.seed.map(|s| s.to_string()));
    args.extend(o.rest.iter().cloned());
    bench::main("soak", o.json.as_deref(), &args)
}
