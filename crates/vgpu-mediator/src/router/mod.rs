//! Routes transport events to the executors of several devices: a VM that connects is placed
//! on the least-loaded device of its pool ([`Placement`]) and stays there until it leaves; a
//! configuration reload reaches every executor.
//!
//! The router sits above the executors (it feeds them), not in the scheduler below them: the
//! scheduler decides what one device runs next and knows nothing of devices or VMs' placement.

mod placement;

use crate::config::Config;
use crate::executor::ExecEvent;
use crate::stats::StatsRegistry;
use crate::transport::Event;
pub use placement::{Placement, PlacementError};
use rustix::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use tracing::{error, info, warn};

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file changes what cannot change while vgpud runs.
    #[error("these changes need a restart of vgpud: {}", .0.join(", "))]
    Unsafe(Vec<String>),
    /// The new file names devices this host does not have.
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
}

/// How to reach one executor.
#[derive(Debug, Clone)]
pub struct ExecHandle {
    /// Its event queue.
    pub tx: Sender<ExecEvent>,
    /// The eventfd that wakes it after an event.
    pub wake: Arc<OwnedFd>,
}

impl ExecHandle {
    fn send(&self, ev: ExecEvent) {
        if self.tx.send(ev).is_ok() {
            let _ = rustix::io::write(&*self.wake, &1u64.to_le_bytes());
        }
    }
}

/// The router; shared by the routing thread and the reload path.
#[derive(Debug)]
pub struct Router {
    cfg: RwLock<Arc<Config>>,
    placement: Mutex<Placement>,
    execs: Vec<ExecHandle>,
    registry: Arc<StatsRegistry>,
}

impl Router {
    /// A router over `execs` (one per device, by index).
    pub fn new(cfg: Arc<Config>, execs: Vec<ExecHandle>, registry: Arc<StatsRegistry>) -> Self {
        Self {
            placement: Mutex::new(Placement::new(execs.len(), cfg.vms.len())),
            cfg: RwLock::new(cfg),
            execs,
            registry,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forwards one transport event to the executor of the VM's device.
    pub fn route(&self, ev: Event) {
        let mut placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            Event::Connected(setup) => {
                let vm = setup.vm;
                if let Some(old) = placement.release(vm) {
                    self.execs[old].send(ExecEvent::Transport(Event::Disconnected(vm)));
                }
                let cfg = self.config();
                let pool = cfg.vm_pool(vm);
                let allowed = cfg.pool_devices(pool, self.execs.len());
                match placement.place(vm, &allowed) {
                    Ok(dev) => {
                        info!(vm = %cfg.vms[vm].name, device = dev, pool = %cfg.pools[pool].name,
                              vms_on_device = placement.load()[dev], "VM placed");
                        self.registry.vms[vm].1.device.store(dev as i64, Relaxed);
                        self.execs[dev].send(ExecEvent::Transport(Event::Connected(setup)));
                    }
                    Err(e) => error!(vm = %cfg.vms[vm].name, "cannot place VM: {e}"),
                }
            }
            Event::Disconnected(vm) => match placement.release(vm) {
                Some(dev) => self.execs[dev].send(ExecEvent::Transport(Event::Disconnected(vm))),
                None => warn!(vm, "disconnect of a VM that was not placed"),
            },
        }
    }

    /// Applies `new` if it changes only what may change at run time (weights, priorities,
    /// quotas, pool membership, scheduler settings); every executor takes it over.
    pub fn reload(&self, new: Config) -> Result<(), ReloadError> {
        new.check_devices(self.execs.len())?;
        let changes = self.config().unsafe_changes(&new);
        if !changes.is_empty() {
            return Err(ReloadError::Unsafe(changes));
        }
        self.registry.apply(&new);
        let new = Arc::new(new);
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        for e in &self.execs {
            e.send(ExecEvent::Reload(new.clone()));
        }
        Ok(())
    }

    /// Routes events from the transport until it hangs up. `wake` is the eventfd the
    /// transport writes after each event (drained here).
    pub fn run(&self, events: Receiver<Event>, wake: Arc<OwnedFd>) {
        while let Ok(ev) = events.recv() {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&*wake, &mut b);
            self.route(ev);
        }
    }

    /// Wakes every executor (after the shutdown flag is set).
    pub fn wake_all(&self) {
        for e in &self.execs {
            let _ = rustix::io::write(&*e.wake, &1u64.to_le_bytes());
        }
    }
}
