//! Routes transport events to the executors of several devices: a VM that connects is placed
//! on the least-loaded device of its pool ([`Placement`]) and stays there until it leaves; a
//! configuration reload reaches every executor. It is also what the admin socket's changing
//! requests reach ([`Control`]): run-time settings and an operator's reset.
//!
//! The router sits above the executors (it feeds them), not in the scheduler below them: the
//! scheduler decides what one device runs next and knows nothing of devices or VMs' placement.

mod persist;
mod placement;

use crate::admin::{Control, ControlError};
use crate::config::Config;
use crate::executor::{ExecEvent, HostResetError};
use crate::stats::StatsRegistry;
use crate::transport::Event;
pub use persist::{PersistError, Setting};
pub use placement::{Placement, PlacementError};
use rustix::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
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
    /// Held while a new configuration is made and applied, so that two changes (admin
    /// requests, a SIGHUP) cannot each start from the same old one and lose the other.
    edit: Mutex<()>,
    /// The config file, where `set … --persist` writes (None: persisting is refused).
    config_path: Option<PathBuf>,
}

/// How long an admin reset waits for the executor to carry it out.
const RESET_REPLY_WITHIN: Duration = Duration::from_secs(5);

impl Router {
    /// A router over `execs` (one per device, by index).
    pub fn new(cfg: Arc<Config>, execs: Vec<ExecHandle>, registry: Arc<StatsRegistry>) -> Self {
        Self {
            placement: Mutex::new(Placement::new(execs.len(), cfg.vms.len())),
            cfg: RwLock::new(cfg),
            execs,
            registry,
            edit: Mutex::new(()),
            config_path: None,
        }
    }

    /// Lets admin `set` requests that ask for it write their value to the config file at
    /// `path` too (the file a SIGHUP re-reads).
    pub fn persisting_to(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
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
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        self.apply(new)
    }

    /// Applies the configuration in force changed by `change` (checked as a file would be),
    /// exactly as a reload of it: the run-time settings an operator sets over the admin socket.
    /// With `persist`, the setting is written to the config file first; if that fails,
    /// nothing changes.
    pub fn update(
        &self,
        change: impl FnOnce(&mut Config),
        persist: Option<Setting<'_>>,
    ) -> Result<(), ControlError> {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = (*self.config()).clone();
        change(&mut new);
        new.validate()
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        if let Some(setting) = persist {
            let path = self.config_path.as_ref().ok_or_else(|| {
                ControlError::Unsupported(
                    "persist: this vgpud does not know its config file".into(),
                )
            })?;
            persist::write(path, setting).map_err(|e| ControlError::Persist(e.to_string()))?;
        }
        self.apply(new)
            .map_err(|e| ControlError::Invalid(e.to_string()))
    }

    fn apply(&self, new: Config) -> Result<(), ReloadError> {
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

    /// Resets VM `vm`'s device on the executor it is placed on.
    pub fn reset_vm(&self, vm: usize) -> Result<u32, ControlError> {
        let name = || self.config().vms[vm].name.clone();
        // The placement lock is held while the request is sent, so that the VM cannot move
        // to another device between the look-up and the send.
        let rx = {
            let placement = self.placement.lock().unwrap_or_else(|e| e.into_inner());
            let dev = placement
                .device_of(vm)
                .ok_or_else(|| ControlError::NotConnected(name()))?;
            let (reply, rx) = std::sync::mpsc::channel();
            self.execs[dev].send(ExecEvent::Reset { vm, reply });
            rx
        };
        match rx.recv_timeout(RESET_REPLY_WITHIN) {
            Ok(Ok(generation)) => Ok(generation),
            Ok(Err(HostResetError::NotAttached)) => Err(ControlError::NotConnected(name())),
            Ok(Err(e)) => Err(ControlError::Busy(e.to_string())),
            Err(_) => Err(ControlError::Busy(format!(
                "the device's executor did not answer within {RESET_REPLY_WITHIN:?}"
            ))),
        }
    }

    /// Wakes every executor (after the shutdown flag is set).
    pub fn wake_all(&self) {
        for e in &self.execs {
            let _ = rustix::io::write(&*e.wake, &1u64.to_le_bytes());
        }
    }
}

/// The admin socket's changing requests.
impl Control for Router {
    fn set_priority(&self, vm: usize, priority: u32, persist: bool) -> Result<(), ControlError> {
        let name = self.config().vms[vm].name.clone();
        let setting = Setting::VmPriority {
            vm: &name,
            priority,
        };
        self.update(
            |c| c.vms[vm].priority = priority,
            persist.then_some(setting),
        )?;
        info!(vm = %name, priority, persist, "priority set by the operator");
        Ok(())
    }

    fn set_weight(&self, pool: usize, weight: u32, persist: bool) -> Result<(), ControlError> {
        let name = self.config().pools[pool].name.clone();
        let setting = Setting::PoolWeight {
            pool: &name,
            weight,
        };
        self.update(
            |c| c.pools[pool].weight = weight,
            persist.then_some(setting),
        )?;
        info!(pool = %name, weight, persist, "weight set by the operator");
        Ok(())
    }

    fn reset(&self, vm: usize) -> Result<u32, ControlError> {
        self.reset_vm(vm)
    }
}
