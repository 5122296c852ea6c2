//! `vgpud`: serves the vGPU devices of the VMs named in its config.

use anyhow::{Context, Result};
use clap::Parser;
use rustix::event::{eventfd, EventfdFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use tracing::{error, info};
use vgpu_mediator::admin;
use vgpu_mediator::backend::{isolated, select};
use vgpu_mediator::config::{self, BackendChoice, Config};
use vgpu_mediator::executor::{pin_current_thread, Executor};
use vgpu_mediator::metrics;
use vgpu_mediator::router::{ExecHandle, Router};
use vgpu_mediator::sched::{DeviceDefaults, Scheduler};
use vgpu_mediator::sd_notify;
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
    // A fixed mmap threshold: buffers of 128 KiB and more (the cpu device's memory, staging
    // copies) are mmapped and go back to the system when freed. glibc's dynamic threshold
    // would otherwise grow and keep them in a thread's arena, which `malloc_trim` does not
    // shrink: vgpud's footprint after its VMs left varied from 5 to 31 MiB (the soak).
    // SAFETY: mallopt only changes malloc's tuning; it is called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
    // The sockets vgpud creates are its owner's alone until their configured owner, group and
    // mode are applied (see `access::bind_listener`); vgpud writes no other files.
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `vgpud --worker …`: one VM's device context in its own process (fault isolation).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(isolated::WORKER_FLAG) {
        std::process::exit(isolated::worker_main(&argv[2..]));
    }
    if let Err(e) = run(Args::parse()) {
        eprintln!("vgpud: error: {e:#}");
        std::process::exit(2);
    }
}

fn new_eventfd() -> Result<Arc<rustix::fd::OwnedFd>> {
    Ok(Arc::new(
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).context("eventfd")?,
    ))
}

fn run(args: Args) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    if args.check {
        println!(
            "vgpud: config {} is valid ({} VMs, {} pools)",
            args.config.display(),
            cfg.vms.len(),
            cfg.pools.len()
        );
        return Ok(());
    }
    let choice = args.backend.unwrap_or(cfg.mediator.backend);
    let devices = select::device_count(choice, &cfg.mediator)?;
    cfg.check_devices(devices)?;
    let mut backends = Vec::with_capacity(devices);
    for index in 0..devices {
        let selected = select::open(choice, index, &cfg.mediator)?;
        info!(device = index, "backend: {}", selected.why);
        backends.push(selected.backend);
    }
    let infos: Vec<_> = backends.iter().map(|b| b.info()).collect();

    let mut registry = StatsRegistry::for_config(&cfg);
    registry.backend = infos[0].backend.to_string();
    registry.device = infos[0].name.clone();
    registry.set_devices(infos.iter().map(|i| i.name.clone()).collect());
    let registry = Arc::new(registry);

    let transport_wake = new_eventfd()?;
    let (tx, rx) = mpsc::channel();
    let server = Server::bind_all(&cfg.vms, tx, transport_wake.clone())?;
    let server_stop = server.stop_handle();
    if let Some(m) = &cfg.mediator.metrics_listen {
        metrics::spawn(m, &cfg, registry.clone()).with_context(|| format!("metrics_listen {m}"))?;
    }
    let cfg = Arc::new(cfg);
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut exec_threads = Vec::new();
    for (index, backend) in backends.into_iter().enumerate() {
        let queue = Scheduler::new(&cfg, DeviceDefaults::of(&cfg, infos[index].backend));
        info!(device = index, name = %infos[index].name, depth = queue.params().depth,
              reserve = queue.params().reserve, policy = ?cfg.scheduler.policy, "scheduler");
        let (etx, erx) = mpsc::channel();
        let wake = new_eventfd()?;
        let exec = Executor::new(
            backend,
            queue,
            cfg.clone(),
            registry.clone(),
            erx,
            wake.clone(),
            shutdown.clone(),
            index,
        )?;
        handles.push(ExecHandle { tx: etx, wake });
        let cpu = cfg.mediator.executor_cpu(index);
        let (pinned_tx, pinned_rx) = mpsc::channel();
        exec_threads.push(
            std::thread::Builder::new()
                .name(format!("vgpud-exec-{index}"))
                .spawn(move || {
                    let pinned = cpu.map_or(Ok(()), pin_current_thread);
                    let ok = pinned.is_ok();
                    let _ = pinned_tx.send(pinned);
                    if ok {
                        exec.run();
                    }
                })?,
        );
        pinned_rx
            .recv()
            .context("executor thread ended at start")?
            .with_context(|| format!("device {index}"))?;
    }
    let router = Arc::new(
        Router::new(cfg.clone(), handles, registry.clone()).persisting_to(args.config.clone()),
    );
    // Bound once the router exists: the admin socket's changing requests go through it.
    if let Some(a) = &cfg.mediator.admin_socket {
        admin::spawn(a, &cfg.mediator, registry.clone(), router.clone())
            .with_context(|| format!("admin socket {}", a.display()))?;
    }

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;

    let router_thread = {
        let router = router.clone();
        std::thread::Builder::new()
            .name("vgpud-router".into())
            .spawn(move || router.run(rx, transport_wake))?
    };
    let server_thread = std::thread::Builder::new()
        .name("vgpud-transport".into())
        .spawn(move || server.run())?;
    for vm in &cfg.vms {
        info!(vm = %vm.name, socket = %vm.socket.display(), vm_id = vm.vm_id, "listening");
    }
    info!(
        "vgpud ready: {} VMs, {} pools, {} device(s), backend {}",
        cfg.vms.len(),
        cfg.pools.len(),
        devices,
        infos[0].backend
    );
    // systemd (Type=notify): started only now, with every socket bound and every executor
    // running, so that units ordered after vgpud (the VMs) find their sockets.
    tell_systemd(sd_notify::ready(&format!(
        "serving {} VMs on {} device(s)",
        cfg.vms.len(),
        devices
    )));

    let mut last = None;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            tell_systemd(sd_notify::reloading());
            reload(&args.config, &router);
            // Ready again whether or not the reload was applied: a refused reload leaves vgpud
            // serving on its running configuration.
            tell_systemd(sd_notify::ready("reload done"));
            continue;
        }
        last = Some(sig);
        break;
    }
    tell_systemd(sd_notify::stopping());
    info!("signal {last:?}: shutting down");
    rustix::io::write(&*server_stop, &1u64.to_le_bytes()).ok();
    server_thread.join().ok();
    router_thread.join().ok();
    shutdown.store(true, Ordering::Relaxed);
    router.wake_all();
    for t in exec_threads {
        t.join().ok();
    }
    if let Some(a) = &cfg.mediator.admin_socket {
        let _ = std::fs::remove_file(a);
    }
    if let Some(config::MetricsListen::Unix(p)) = &cfg.mediator.metrics_listen {
        let _ = std::fs::remove_file(p);
    }
    info!("vgpud stopped");
    Ok(())
}

/// A failed notification is logged, not fatal: vgpud serves its VMs either way, and systemd
/// reports a unit that never became ready on its own.
fn tell_systemd(result: Result<bool, sd_notify::NotifyError>) {
    if let Err(e) = result {
        error!("sd_notify: {e}");
    }
}

/// SIGHUP: re-reads the config and applies what may change at run time; anything else is
/// refused with a logged error and vgpud keeps running on the configuration it has.
fn reload(path: &Path, router: &Router) {
    info!("SIGHUP: reloading {}", path.display());
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("reload refused, keeping the running configuration: {e}");
            return;
        }
    };
    match router.reload(new) {
        Ok(()) => info!("reload applied (weights, priorities, quotas, scheduler settings)"),
        Err(e) => error!("reload refused, keeping the running configuration: {e}"),
    }
}
