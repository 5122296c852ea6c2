//! `vgpud`: serves the vGPU devices of the VMs named in its config.

use anyhow::{Context, Result};
use clap::Parser;
use rustix::event::{eventfd, EventfdFlags};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use tracing::info;
use vgpu_mediator::admin;
use vgpu_mediator::backend::{select, Backend};
use vgpu_mediator::config::{BackendChoice, Config};
use vgpu_mediator::executor::Executor;
use vgpu_mediator::queue::FifoQueue;
use vgpu_mediator::stats::StatsRegistry;
use vgpu_mediator::transport::Server;

#[derive(Parser, Debug)]
#[command(
    name = "vgpud",
    version,
    about = "vGPU mediator: serves ivshmem-doorbell vGPU devices to VMs"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(short, long)]
    config: PathBuf,
    /// Override the config's backend: auto, cpu or cuda.
    #[arg(long)]
    backend: Option<BackendChoice>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("vgpud: error: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    if args.check {
        println!(
            "vgpud: config {} is valid ({} VMs)",
            args.config.display(),
            cfg.vms.len()
        );
        return Ok(());
    }
    let choice = args.backend.unwrap_or(cfg.mediator.backend);
    let selected = select::open(choice, 0, &cfg.mediator)?;
    info!("backend: {}", selected.why);
    let backend = selected.backend;
    let info = backend.info();

    let mut registry = StatsRegistry::new(&cfg.vms);
    registry.backend = info.backend.to_string();
    registry.device = info.name.clone();
    let registry = Arc::new(registry);

    let control =
        Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).context("eventfd")?);
    let (tx, rx) = mpsc::channel();
    let server = Server::bind_all(&cfg.vms, tx, control.clone())?;
    let server_stop = server.stop_handle();
    if let Some(a) = &cfg.mediator.admin_socket {
        admin::spawn(a, registry.clone())
            .with_context(|| format!("admin socket {}", a.display()))?;
    }
    let cfg = Arc::new(cfg);
    let shutdown = Arc::new(AtomicBool::new(false));
    let exec = Executor::new(
        backend,
        FifoQueue::default(),
        cfg.clone(),
        &registry,
        rx,
        control.clone(),
        shutdown.clone(),
    )?;

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;

    let exec_thread = std::thread::Builder::new()
        .name("vgpud-exec".into())
        .spawn(move || exec.run())?;
    let server_thread = std::thread::Builder::new()
        .name("vgpud-transport".into())
        .spawn(move || server.run())?;
    for vm in &cfg.vms {
        info!(vm = %vm.name, socket = %vm.socket.display(), vm_id = vm.vm_id, "listening");
    }
    info!(
        "vgpud ready: {} VMs, backend {}",
        cfg.vms.len(),
        info.backend
    );

    let sig = signals.forever().next();
    info!("signal {sig:?}: shutting down");
    rustix::io::write(&*server_stop, &1u64.to_le_bytes()).ok();
    server_thread.join().ok();
    shutdown.store(true, Ordering::Relaxed);
    rustix::io::write(&*control, &1u64.to_le_bytes()).ok();
    exec_thread.join().ok();
    if let Some(a) = &cfg.mediator.admin_socket {
        let _ = std::fs::remove_file(a);
    }
    info!("vgpud stopped");
    Ok(())
}
