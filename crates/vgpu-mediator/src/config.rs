//! vgpud's configuration: a TOML file naming the VMs it serves.
//!
//! ```toml
//! [mediator]
//! backend = "auto"          # auto | cpu | cuda
//! admin_socket = "/run/vgpu/admin.sock"
//! metrics_listen = "127.0.0.1:9400" # Prometheus `GET /metrics`: TCP address or unix socket path
//! poll_us = 50              # how long to keep polling rings after the last work
//! executor_cpus = [3]       # pin device i's executor thread to CPU executor_cpus[i % len]
//! fault_isolation = "process" # process (cuda default) | none: see `FaultIsolation`
//! device_wait = "block"     # block | spin: how pending device work is waited for (`DeviceWait`)
//!
//! [scheduler]
//! policy = "priority"       # priority | fifo
//! reserve_slots = 1         # execution slots held back for the highest class
//!
//! [[pool]]
//! id = 0
//! name = "gold"
//! gpus = [0, 1]             # device indices (empty or absent: every device)
//! weight = 3
//! mem_quota = "8GiB"
//!
//! [[vm]]
//! name = "vm-a"
//! socket = "/run/vgpu/vm-a.sock"
//! vm_id = 1
//! pool = 0                  # alias: pool_id
//! priority = 2
//! mem_quota = "256MiB"
//! shm_size = "16MiB"
//! ```
//!
//! Without any `[[pool]]`, every `pool_id` the VMs name is an implicit pool of weight 1, no
//! memory quota and every device. See `docs/scheduling.md`.

use serde::Deserialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use vgpu_abi::Layout;

/// Configuration errors; each names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config {path}: {msg}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// Parser message.
        msg: String,
    },
    /// The values are inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A byte size: an integer, or a string such as `"16MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(v) => Ok(ByteSize(v)),
            Raw::Str(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"123"`, `"64KiB"`, `"16MiB"`, `"2GiB"` (also `K`, `M`, `G`, `KB`… as binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 4096, \"64KiB\", \"16MiB\""))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        "T" | "TB" | "TiB" => 1 << 40,
        u => return Err(format!("invalid size {s:?}: unknown unit {u:?}")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Which backend runs the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// cuda where a GPU is usable, else cpu.
    #[default]
    Auto,
    /// The cpu reference backend.
    Cpu,
    /// The cuda backend.
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(format!("unknown backend {s:?}: expected auto, cpu or cuda")),
        }
    }
}

/// Where each VM's device context lives (`[mediator] fault_isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultIsolation {
    /// Each VM's context in its own worker process: a fault (CUDA's errors are sticky per
    /// process) breaks only that VM, and a reset kills and respawns the worker.
    Process,
    /// Every context inside vgpud: faster, but a kernel fault in one VM breaks every VM of
    /// the process (trusted tenants only, and to measure the cost of isolation).
    None,
}

impl FaultIsolation {
    /// The isolation used when the config names none: `process` for cuda, `none` for cpu
    /// (whose faults are already contained to their VM).
    pub fn default_for(cuda: bool) -> Self {
        if cuda {
            Self::Process
        } else {
            Self::None
        }
    }
}

/// How the executor and the worker processes wait for pending device work once the polling
/// window after the last progress has passed (`[mediator] device_wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceWait {
    /// Block until the backend signals a retirement (its wake fd): no CPU burnt on long work.
    #[default]
    Block,
    /// Keep polling the device while work is pending (one core per waiter; kept to measure
    /// the blocking path against it side by side).
    Spin,
}

fn default_poll_us() -> u64 {
    50
}
fn default_max_kernel_us() -> u32 {
    1_000_000
}
fn default_shm() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_quota() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_sq() -> u32 {
    256
}
fn default_cq() -> u32 {
    512
}
fn default_one() -> u32 {
    1
}
fn default_weight() -> u32 {
    1
}
fn default_unlimited() -> ByteSize {
    ByteSize(u64::MAX)
}
fn default_max_wait_ms() -> u64 {
    1000
}
fn default_vm_max_queued() -> u32 {
    256
}

/// A file mode for a socket: a string of octal digits (`"0660"`) or a TOML integer (`0o660`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Str(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Int(v) => v,
            Raw::Str(s) => u32::from_str_radix(s.trim(), 8).map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid mode {s:?}: expected octal, e.g. \"0660\""
                ))
            })?,
        };
        if v > 0o777 {
            return Err(serde::de::Error::custom(format!(
                "invalid mode {v:#o}: only permission bits (at most 0777)"
            )));
        }
        Ok(FileMode(v))
    }
}

/// Where the Prometheus metrics endpoint listens (`[mediator] metrics_listen`): a TCP address
/// (`"127.0.0.1:9400"`, `"[::1]:9400"`) or the absolute path of a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A TCP address (IP and port; host names are not resolved, so the address is what it says).
    Tcp(std::net::SocketAddr),
    /// A unix socket, created like the admin socket (mode 0600, vgpud's user).
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<std::net::SocketAddr>() {
            return Ok(Self::Tcp(a));
        }
        if s.starts_with('/') {
            // sun_path holds 108 bytes with the terminating NUL.
            if s.len() > 107 {
                return Err(format!("unix socket path {s:?} is longer than 107 bytes"));
            }
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        Err(format!(
            "invalid metrics_listen {s:?}: expected IP:PORT (\"127.0.0.1:9400\", \"[::1]:9400\") \
             or an absolute unix socket path"
        ))
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "http://{a}/metrics"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A user or group: a name (looked up when vgpud starts) or a numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Principal {
    /// A numeric uid or gid.
    Id(u32),
    /// A user or group name.
    Name(String),
}

/// Per-VM limits (`[limits]`, the same for every VM); each refusal is
/// `Status::LimitExceeded` for that VM only.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Device allocations one VM may hold at once (bounds vgpud's own memory per VM, which the
    /// byte quota alone does not: a million one-byte allocations are a million entries).
    #[serde(default = "default_max_allocations")]
    pub max_allocations: u32,
    /// Streams one VM may use (at most the ABI's `MAX_STREAMS`).
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Event ids one VM may use (at most the ABI's `MAX_EVENTS`).
    #[serde(default = "default_max_events")]
    pub max_events: u32,
    /// Modules one VM may have loaded at once.
    #[serde(default = "default_max_modules")]
    pub max_modules: u32,
    /// Bytes of module images one VM may have loaded at once.
    #[serde(default = "default_max_module_bytes")]
    pub max_module_bytes: ByteSize,
    /// Kernel time limit in ms for pools that set none (`[[pool]] max_kernel_ms`): a VM whose
    /// work makes no progress on the device for this long is reset. 0: no limit.
    #[serde(default = "default_max_kernel_ms")]
    pub max_kernel_ms: u64,
}

fn default_max_allocations() -> u32 {
    65_536
}
fn default_max_streams() -> u32 {
    vgpu_abi::cmd::MAX_STREAMS as u32
}
fn default_max_events() -> u32 {
    vgpu_abi::cmd::MAX_EVENTS
}
// PyTorch training ResNet-50 (cuDNN, cuBLAS, PyTorch's own kernels, each library's kernels
// loaded as they are first used) loads about 120 modules; 64 refused its bf16 GEMMs (H200,
// 2026-11-30). A limit that bounds a VM's host-side driver state, well above any framework.
fn default_max_modules() -> u32 {
    4096
}
fn default_max_module_bytes() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_max_kernel_ms() -> u64 {
    10_000
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_allocations: default_max_allocations(),
            max_streams: default_max_streams(),
            max_events: default_max_events(),
            max_modules: default_max_modules(),
            max_module_bytes: default_max_module_bytes(),
            max_kernel_ms: default_max_kernel_ms(),
        }
    }
}

/// How a pool's VMs share a device. Only `Context` is served today: validation refuses
/// `Shared` with a clear error until a backend implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A device context per VM (the default): separate address spaces and faults.
    #[default]
    Context,
    /// One device context for the pool's VMs (trusted tenants): concurrent kernels and
    /// device-level stream priorities, but a fault in one VM breaks the pool's context.
    Shared,
}

/// One `[[pool]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique pool id (what `[[vm]] pool` names; also the guest's `pool_id` register).
    pub id: u32,
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Device indices the pool may use; empty = every device.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Share of device time against the other pools on a device (> 0).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Device memory all the pool's VMs together may hold (default: unlimited).
    #[serde(default = "default_unlimited")]
    pub mem_quota: ByteSize,
    /// Context per VM (default) or shared by the pool.
    #[serde(default)]
    pub isolation: Isolation,
    /// Kernel time limit in ms for this pool's VMs (default: `[limits] max_kernel_ms`).
    #[serde(default)]
    pub max_kernel_ms: Option<u64>,
}

/// Which order the scheduler dispatches in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Strict priority classes, weighted fair share between pools, round-robin in a pool.
    #[default]
    Priority,
    /// Arrival order across all VMs (for comparison): the queued, in-flight and depth limits
    /// apply, but not the reserve, the starvation guard or the `device_queue_us` budget.
    Fifo,
}

/// `[scheduler]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `priority` (default) or `fifo`.
    #[serde(default)]
    pub policy: Policy,
    /// Starvation guard: a job of a lower class that waited this long is dispatched before
    /// higher classes (oldest first). 0 turns the guard off.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Jobs one VM may have queued in vgpud; beyond, its commands wait in its ring.
    #[serde(default = "default_vm_max_queued")]
    pub vm_max_queued: u32,
    /// Jobs one VM may have on the device at once (0: only the device depth limits).
    #[serde(default)]
    pub vm_max_inflight: u32,
    /// Jobs on one device at once (default: `cpu_slots` on the cpu backend, else
    /// [`crate::sched::DEFAULT_DEVICE_DEPTH`]). A short
    /// device queue is what lets a higher class overtake: running work is never preempted.
    #[serde(default)]
    pub device_depth: Option<u32>,
    /// Device time, in µs, that the jobs on one device may add up to (estimated from each VM's
    /// measured job times): the device queue stays short in time, whatever the kernels' sizes.
    /// At least two jobs are always allowed, so the device never idles between them.
    /// Default: 0 (off) on the cpu backend, 2000 otherwise.
    #[serde(default)]
    pub device_queue_us: Option<u64>,
    /// Execution slots (of the device depth) that only the reserve class may use.
    #[serde(default)]
    pub reserve_slots: u32,
    /// Lowest priority of the reserve class (default: the highest VM priority configured).
    #[serde(default)]
    pub reserve_priority: Option<u32>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Priority,
            max_wait_ms: default_max_wait_ms(),
            vm_max_queued: default_vm_max_queued(),
            vm_max_inflight: 0,
            device_depth: None,
            device_queue_us: None,
            reserve_slots: 0,
            reserve_priority: None,
        }
    }
}

/// `[mediator]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediatorConfig {
    /// Backend choice.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Admin socket for `vgpuctl` (optional).
    pub admin_socket: Option<PathBuf>,
    /// Owner of the admin socket file (default: vgpud's user).
    #[serde(default)]
    pub admin_socket_owner: Option<Principal>,
    /// Group of the admin socket file (default: vgpud's group).
    #[serde(default)]
    pub admin_socket_group: Option<Principal>,
    /// Mode of the admin socket file (default `0600`: only its owner may connect).
    #[serde(default)]
    pub admin_socket_mode: Option<FileMode>,
    /// Besides root and vgpud's own user, peers whose group (primary or supplementary) is this
    /// one may use the admin socket; everyone else is refused (checked with `SO_PEERCRED`).
    #[serde(default)]
    pub admin_group: Option<Principal>,
    /// The Prometheus metrics endpoint (`GET /metrics`, see `metrics.rs`); absent: none.
    #[serde(default)]
    pub metrics_listen: Option<MetricsListen>,
    /// Polling window after the last work, in microseconds (0 = never poll).
    #[serde(default = "default_poll_us")]
    pub poll_us: u64,
    /// Longest busy kernel accepted.
    #[serde(default = "default_max_kernel_us")]
    pub max_kernel_us: u32,
    /// "Device memory" of each cpu backend device (default 16 GiB).
    #[serde(default)]
    pub cpu_device_mem: Option<ByteSize>,
    /// Execution slots of each cpu backend device (kernels running at once).
    #[serde(default = "default_one")]
    pub cpu_slots: u32,
    /// How many devices the cpu backend offers (to exercise multi-GPU placement).
    #[serde(default = "default_one")]
    pub cpu_devices: u32,
    /// Where VMs' device contexts live; absent: [`FaultIsolation::default_for`] the backend
    /// (`process` for cuda; an explicit `process` also runs cpu contexts in workers).
    #[serde(default)]
    pub fault_isolation: Option<FaultIsolation>,
    /// cuda: while several VMs share a GPU, launches, memsets and device copies complete when
    /// they retired on it, timed by CUDA events (the scheduler's guarantees need it; a VM alone
    /// on its GPU is never accounted); false: launches always complete at once, unaccounted.
    #[serde(default = "default_true")]
    pub cuda_kernel_accounting: bool,
    /// How pending device work is waited for once the polling window has passed.
    #[serde(default)]
    pub device_wait: DeviceWait,
    /// CPUs the executor threads are pinned to: device `i`'s executor runs on
    /// `executor_cpus[i % len]`. Empty (the default): not pinned. A polling executor on a core
    /// of its own wakes no sleeping CPU and is never delayed by the VMs' vCPU threads.
    #[serde(default)]
    pub executor_cpus: Vec<usize>,
}

/// The highest CPU number `executor_cpus` may name.
pub const MAX_CPU: usize = 1023;

fn default_true() -> bool {
    true
}

impl Default for MediatorConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            admin_socket: None,
            admin_socket_owner: None,
            admin_socket_group: None,
            admin_socket_mode: None,
            admin_group: None,
            metrics_listen: None,
            poll_us: default_poll_us(),
            max_kernel_us: default_max_kernel_us(),
            cpu_device_mem: None,
            cpu_slots: 1,
            cpu_devices: 1,
            fault_isolation: None,
            cuda_kernel_accounting: true,
            device_wait: DeviceWait::Block,
            executor_cpus: Vec::new(),
        }
    }
}

impl MediatorConfig {
    /// The CPU device `index`'s executor is pinned to, if any.
    pub fn executor_cpu(&self, index: usize) -> Option<usize> {
        (!self.executor_cpus.is_empty())
            .then(|| self.executor_cpus[index % self.executor_cpus.len()])
    }
}

/// One `[[vm]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Unique name (also shown to the guest).
    pub name: String,
    /// The UNIX socket QEMU connects to (the VM's identity).
    pub socket: PathBuf,
    /// Unique VM id.
    pub vm_id: u32,
    /// Pool id (`pool` or `pool_id` in the file).
    #[serde(default, alias = "pool")]
    pub pool_id: u32,
    /// Priority (0 = lowest).
    #[serde(default)]
    pub priority: u32,
    /// Device memory quota.
    #[serde(default = "default_quota")]
    pub mem_quota: ByteSize,
    /// BAR2 size (a power of two).
    #[serde(default = "default_shm")]
    pub shm_size: ByteSize,
    /// Submission ring entries.
    #[serde(default = "default_sq")]
    pub sq_entries: u32,
    /// Completion ring entries.
    #[serde(default = "default_cq")]
    pub cq_entries: u32,
    /// Owner of the socket file (e.g. libvirt's `libvirt-qemu`; default: vgpud's user).
    #[serde(default)]
    pub socket_owner: Option<Principal>,
    /// Group of the socket file (default: vgpud's group).
    #[serde(default)]
    pub socket_group: Option<Principal>,
    /// Mode of the socket file (default `0600`: only its owner may connect).
    #[serde(default)]
    pub socket_mode: Option<FileMode>,
}

impl VmConfig {
    /// The BAR2 layout this VM gets.
    pub fn layout(&self) -> Result<Layout, vgpu_abi::LayoutError> {
        Layout::compute(self.shm_size.0, self.sq_entries, self.cq_entries)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[mediator]`.
    #[serde(default)]
    pub mediator: MediatorConfig,
    /// `[scheduler]`.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// `[limits]`: per-VM limits.
    #[serde(default)]
    pub limits: Limits,
    /// `[[pool]]` entries; after loading, also the implicit pools (one per `pool_id` the VMs
    /// name when the file has no `[[pool]]`).
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    /// `[[vm]]` entries.
    #[serde(default, rename = "vm")]
    pub vms: Vec<VmConfig>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
        cfg.finish()
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            msg: e.to_string(),
        })?;
        cfg.finish()
    }

    /// Adds the implicit pools, then validates.
    fn finish(mut self) -> Result<Self, ConfigError> {
        if self.pools.is_empty() {
            let ids: BTreeSet<u32> = self.vms.iter().map(|v| v.pool_id).collect();
            self.pools = ids
                .into_iter()
                .map(|id| PoolConfig {
                    id,
                    name: format!("pool-{id}"),
                    gpus: Vec::new(),
                    weight: 1,
                    mem_quota: default_unlimited(),
                    isolation: Isolation::Context,
                    max_kernel_ms: None,
                })
                .collect();
        }
        for p in &mut self.pools {
            if p.name.is_empty() {
                p.name = format!("pool-{}", p.id);
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Index in `pools` of the pool with id `id`.
    pub fn pool_index(&self, id: u32) -> Option<usize> {
        self.pools.iter().position(|p| p.id == id)
    }

    /// Index in `pools` of VM `vm`'s pool (validated to exist).
    pub fn vm_pool(&self, vm: usize) -> usize {
        self.pool_index(self.vms[vm].pool_id)
            .expect("validated: every VM's pool exists")
    }

    /// Kernel time limit of VM `vm` (its pool's, else `[limits]`); `None`: no limit.
    pub fn kernel_limit(&self, vm: usize) -> Option<std::time::Duration> {
        let ms = self.pools[self.vm_pool(vm)]
            .max_kernel_ms
            .unwrap_or(self.limits.max_kernel_ms);
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }

    /// Checks the pools' device lists against the devices present.
    pub fn check_devices(&self, devices: usize) -> Result<(), ConfigError> {
        for p in &self.pools {
            if let Some(g) = p.gpus.iter().find(|&&g| g as usize >= devices) {
                return Err(ConfigError::Invalid(format!(
                    "pool {:?}: gpu {g} out of range: this host has {devices} device(s) (0..={})",
                    p.name,
                    devices.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }

    /// The devices pool `pool` (an index) may use, out of `devices`.
    pub fn pool_devices(&self, pool: usize, devices: usize) -> Vec<usize> {
        let g = &self.pools[pool].gpus;
        if g.is_empty() {
            (0..devices).collect()
        } else {
            g.iter()
                .map(|&d| d as usize)
                .filter(|&d| d < devices)
                .collect()
        }
    }

    /// What a reload from `self` to `new` would change that cannot change while vgpud runs
    /// (sockets, ids, names, sizes, backend, devices, pool sets). Empty: `new` may be applied.
    pub fn unsafe_changes(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        let (a, b) = (&self.mediator, &new.mediator);
        let mut diff = |what: &str, changed: bool| {
            if changed {
                out.push(what.to_string());
            }
        };
        diff("mediator.backend", a.backend != b.backend);
        diff("mediator.admin_socket", a.admin_socket != b.admin_socket);
        diff(
            "mediator.admin_socket_owner/admin_socket_group/admin_socket_mode/admin_group",
            a.admin_socket_owner != b.admin_socket_owner
                || a.admin_socket_group != b.admin_socket_group
                || a.admin_socket_mode != b.admin_socket_mode
                || a.admin_group != b.admin_group,
        );
        diff(
            "mediator.metrics_listen",
            a.metrics_listen != b.metrics_listen,
        );
        diff("mediator.max_kernel_us", a.max_kernel_us != b.max_kernel_us);
        diff("mediator.cpu_slots", a.cpu_slots != b.cpu_slots);
        diff("mediator.cpu_devices", a.cpu_devices != b.cpu_devices);
        diff(
            "mediator.cuda_kernel_accounting",
            a.cuda_kernel_accounting != b.cuda_kernel_accounting,
        );
        diff(
            "mediator.fault_isolation",
            a.fault_isolation != b.fault_isolation,
        );
        diff("mediator.device_wait", a.device_wait != b.device_wait);
        diff(
            "mediator.cpu_device_mem",
            a.cpu_device_mem != b.cpu_device_mem,
        );
        diff("mediator.executor_cpus", a.executor_cpus != b.executor_cpus);
        diff("the number of [[vm]]", self.vms.len() != new.vms.len());
        for (x, y) in self.vms.iter().zip(&new.vms) {
            let v = &x.name;
            diff(&format!("vm {v:?}: name"), x.name != y.name);
            diff(&format!("vm {v:?}: socket"), x.socket != y.socket);
            diff(
                &format!("vm {v:?}: socket_owner/socket_group/socket_mode"),
                x.socket_owner != y.socket_owner
                    || x.socket_group != y.socket_group
                    || x.socket_mode != y.socket_mode,
            );
            diff(&format!("vm {v:?}: vm_id"), x.vm_id != y.vm_id);
            diff(&format!("vm {v:?}: shm_size"), x.shm_size != y.shm_size);
            diff(
                &format!("vm {v:?}: sq_entries/cq_entries"),
                x.sq_entries != y.sq_entries || x.cq_entries != y.cq_entries,
            );
        }
        let ids = |c: &Config| c.pools.iter().map(|p| p.id).collect::<BTreeSet<_>>();
        diff("the set of pool ids", ids(self) != ids(new));
        for p in &self.pools {
            if let Some(q) = new.pools.iter().find(|q| q.id == p.id) {
                diff(&format!("pool {}: gpus", p.id), p.gpus != q.gpus);
                diff(
                    &format!("pool {}: isolation", p.id),
                    p.isolation != q.isolation,
                );
            }
        }
        out
    }

    /// Checks everything that does not need the file system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.vms.is_empty() {
            return bad("no [[vm]] entries: vgpud has nothing to serve".into());
        }
        let m = &self.mediator;
        if m.cpu_slots == 0 || m.cpu_slots > 1024 {
            return bad(format!("cpu_slots = {} must be 1..=1024", m.cpu_slots));
        }
        if m.cpu_devices == 0 || m.cpu_devices > 64 {
            return bad(format!("cpu_devices = {} must be 1..=64", m.cpu_devices));
        }
        if let Some(c) = m.executor_cpus.iter().find(|&&c| c > MAX_CPU) {
            return bad(format!("executor_cpus: CPU {c} is above {MAX_CPU}"));
        }
        let l = &self.limits;
        if l.max_streams == 0 || l.max_streams as usize > vgpu_abi::cmd::MAX_STREAMS {
            return bad(format!(
                "limits.max_streams = {} must be 1..={}",
                l.max_streams,
                vgpu_abi::cmd::MAX_STREAMS
            ));
        }
        if l.max_events == 0 || l.max_events > vgpu_abi::cmd::MAX_EVENTS {
            return bad(format!(
                "limits.max_events = {} must be 1..={}",
                l.max_events,
                vgpu_abi::cmd::MAX_EVENTS
            ));
        }
        if l.max_allocations == 0 || l.max_modules == 0 {
            return bad("limits.max_allocations and max_modules must be > 0".into());
        }
        let s = &self.scheduler;
        if s.vm_max_queued == 0 {
            return bad("scheduler.vm_max_queued must be > 0".into());
        }
        if s.device_depth == Some(0) {
            return bad("scheduler.device_depth must be > 0".into());
        }
        if let Some(d) = s.device_depth {
            if s.reserve_slots >= d {
                return bad(format!(
                    "scheduler.reserve_slots = {} must be below device_depth = {d}",
                    s.reserve_slots
                ));
            }
        }
        let mut pools: HashMap<u32, &PoolConfig> = HashMap::new();
        let mut pool_names = HashSet::new();
        for p in &self.pools {
            if pools.insert(p.id, p).is_some() {
                return bad(format!("duplicate pool id {}", p.id));
            }
            if !pool_names.insert(p.name.as_str()) {
                return bad(format!("duplicate pool name {:?}", p.name));
            }
            if p.weight == 0 || p.weight > 1_000_000 {
                return bad(format!(
                    "pool {:?}: weight {} must be 1..=1000000",
                    p.name, p.weight
                ));
            }
            if p.mem_quota.0 == 0 {
                return bad(format!("pool {:?}: mem_quota must be > 0", p.name));
            }
            if p.isolation == Isolation::Shared {
                // Refused rather than silently served with a context per VM: a pool that asks
                // for concurrent kernels and one fault domain must not get something else.
                return bad(format!(
                    "pool {:?}: isolation = \"shared\" (one device context for the pool's VMs) \
                     is not implemented by any backend yet; use \"context\" (a context per VM)",
                    p.name
                ));
            }
            let mut seen = HashSet::new();
            if let Some(g) = p.gpus.iter().find(|g| !seen.insert(**g)) {
                return bad(format!("pool {:?}: gpu {g} listed twice", p.name));
            }
        }
        let (mut names, mut ids, mut socks) = (HashSet::new(), HashSet::new(), HashSet::new());
        for vm in &self.vms {
            let Some(pool) = pools.get(&vm.pool_id) else {
                let known: BTreeSet<u32> = pools.keys().copied().collect();
                return bad(format!(
                    "vm {:?}: unknown pool {} (pools: {known:?})",
                    vm.name, vm.pool_id
                ));
            };
            if vm.mem_quota.0 > pool.mem_quota.0 {
                return bad(format!(
                    "vm {:?}: mem_quota {} is above its pool {:?}'s mem_quota {}",
                    vm.name, vm.mem_quota.0, pool.name, pool.mem_quota.0
                ));
            }
            if vm.name.is_empty() || vm.name.len() > 31 {
                return bad(format!("vm name {:?} must be 1..=31 bytes", vm.name));
            }
            if !names.insert(vm.name.as_str()) {
                return bad(format!("duplicate vm name {:?}", vm.name));
            }
            if !ids.insert(vm.vm_id) {
                return bad(format!("duplicate vm_id {} (vm {:?})", vm.vm_id, vm.name));
            }
            if !socks.insert(vm.socket.as_path()) {
                return bad(format!(
                    "duplicate socket {} (vm {:?})",
                    vm.socket.display(),
                    vm.name
                ));
            }
            if vm.mem_quota.0 == 0 {
                return bad(format!("vm {:?}: mem_quota must be > 0", vm.name));
            }
            if let Err(e) = vm.layout() {
                return bad(format!("vm {:?}: {e}", vm.name));
            }
        }
        if let Some(a) = &self.mediator.admin_socket {
            if socks.contains(a.as_path()) {
                return bad(format!("admin_socket {} is also a vm socket", a.display()));
            }
        }
        if let Some(MetricsListen::Unix(p)) = &self.mediator.metrics_listen {
            if socks.contains(p.as_path()) || self.mediator.admin_socket.as_deref() == Some(p) {
                return bad(format!(
                    "metrics_listen {} is also a vm socket or the admin socket",
                    p.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [mediator]
        backend = "cpu"
        [[vm]]
        name = "a"
        socket = "/tmp/a.sock"
        vm_id = 1
        pool_id = 3
        priority = 2
        mem_quota = "64MiB"
        shm_size = 1048576
        [[vm]]
        name = "b"
        socket = "/tmp/b.sock"
        vm_id = 2
    "#;

    #[test]
    fn parses_and_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.mediator.backend, BackendChoice::Cpu);
        assert_eq!(c.vms[0].mem_quota.0, 64 << 20);
        assert_eq!(c.vms[0].shm_size.0, 1 << 20);
        assert_eq!(c.vms[1].shm_size.0, 16 << 20);
        assert_eq!(c.vms[1].priority, 0);
        assert_eq!(c.mediator.poll_us, 50);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    fn expect_invalid(text: &str, needle: &str) {
        match Config::from_toml(text) {
            Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn rejects_bad_configs() {
        expect_invalid("", "no [[vm]]");
        expect_invalid(&GOOD.replace("vm_id = 2", "vm_id = 1"), "duplicate vm_id");
        expect_invalid(&GOOD.replace("\"b\"", "\"a\""), "duplicate vm name");
        expect_invalid(
            &GOOD.replace("/tmp/b.sock", "/tmp/a.sock"),
            "duplicate socket",
        );
        expect_invalid(&GOOD.replace("1048576", "1000000"), "power of two");
        expect_invalid(&GOOD.replace("\"cpu\"", "\"tpu\""), "unknown variant");
        expect_invalid(&GOOD.replace("pool_id = 3", "pool_ = 3"), "unknown field");
        expect_invalid(&GOOD.replace("\"64MiB\"", "\"64 parsecs\""), "unknown unit");
    }

    #[test]
    fn fault_isolation_key() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.mediator.fault_isolation, None);
        assert_eq!(FaultIsolation::default_for(true), FaultIsolation::Process);
        assert_eq!(FaultIsolation::default_for(false), FaultIsolation::None);
        let with = |v: &str| {
            GOOD.replace(
                "backend = \"cpu\"",
                &format!("backend = \"cpu\"\nfault_isolation = {v}"),
            )
        };
        let p = Config::from_toml(&with("\"process\"")).unwrap();
        assert_eq!(p.mediator.fault_isolation, Some(FaultIsolation::Process));
        let n = Config::from_toml(&with("\"none\"")).unwrap();
        assert_eq!(n.mediator.fault_isolation, Some(FaultIsolation::None));
        expect_invalid(&with("\"thread\""), "unknown variant");
        assert_eq!(
            p.unsafe_changes(&n),
            vec!["mediator.fault_isolation".to_string()]
        );
    }

    #[test]
    fn device_wait_key() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.mediator.device_wait, DeviceWait::Block);
        let with = |v: &str| {
            GOOD.replace(
                "backend = \"cpu\"",
                &format!("backend = \"cpu\"\ndevice_wait = {v}"),
            )
        };
        let s = Config::from_toml(&with("\"spin\"")).unwrap();
        assert_eq!(s.mediator.device_wait, DeviceWait::Spin);
        expect_invalid(&with("\"nap\""), "unknown variant");
        assert_eq!(
            c.unsafe_changes(&s),
            vec!["mediator.device_wait".to_string()]
        );
    }

    #[test]
    fn metrics_listen_key() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.mediator.metrics_listen, None, "no endpoint by default");
        let with = |v: &str| {
            GOOD.replace(
                "backend = \"cpu\"",
                &format!("backend = \"cpu\"\nmetrics_listen = {v}"),
            )
        };
        let tcp = Config::from_toml(&with("\"127.0.0.1:9400\"")).unwrap();
        assert_eq!(
            tcp.mediator.metrics_listen,
            Some(MetricsListen::Tcp("127.0.0.1:9400".parse().unwrap()))
        );
        let v6 = Config::from_toml(&with("\"[::1]:9400\"")).unwrap();
        assert!(matches!(v6.mediator.metrics_listen, Some(MetricsListen::Tcp(a)) if a.is_ipv6()));
        let unix = Config::from_toml(&with("\"/run/vgpu/metrics.sock\"")).unwrap();
        assert_eq!(
            unix.mediator.metrics_listen,
            Some(MetricsListen::Unix("/run/vgpu/metrics.sock".into()))
        );
        // Host names are not resolved; relative paths and a missing port are refused.
        expect_invalid(&with("\"localhost:9400\""), "invalid metrics_listen");
        expect_invalid(&with("\"metrics.sock\""), "invalid metrics_listen");
        expect_invalid(&with("\"127.0.0.1\""), "invalid metrics_listen");
        expect_invalid(&with("9400"), "metrics_listen");
        expect_invalid(
            &with(&format!("\"/{}\"", "x".repeat(120))),
            "longer than 107",
        );
        expect_invalid(&with("\"/tmp/a.sock\""), "is also a vm socket");
        assert_eq!(
            tcp.unsafe_changes(&unix),
            vec!["mediator.metrics_listen".to_string()]
        );
    }

    #[test]
    fn executor_cpus_key() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.mediator.executor_cpu(0), None, "not pinned by default");
        let with = |v: &str| {
            GOOD.replace(
                "backend = \"cpu\"",
                &format!("backend = \"cpu\"\nexecutor_cpus = {v}"),
            )
        };
        let p = Config::from_toml(&with("[3, 5]")).unwrap();
        let cpus: Vec<_> = (0..3).map(|i| p.mediator.executor_cpu(i)).collect();
        assert_eq!(cpus, vec![Some(3), Some(5), Some(3)]);
        expect_invalid(&with("[1, 4096]"), "CPU 4096 is above");
        expect_invalid(&with("[-1]"), "executor_cpus");
        assert_eq!(
            c.unsafe_changes(&p),
            vec!["mediator.executor_cpus".to_string()]
        );
    }

    const POOLS: &str = r#"
        [mediator]
        backend = "cpu"
        cpu_slots = 4
        cpu_devices = 2
        [scheduler]
        policy = "fifo"
        reserve_slots = 1
        [[pool]]
        id = 7
        name = "gold"
        gpus = [1]
        weight = 3
        mem_quota = "1GiB"
        isolation = "context"
        [[pool]]
        id = 8
        [[vm]]
        name = "a"
        socket = "/tmp/a.sock"
        vm_id = 1
        pool = 7
        mem_quota = "512MiB"
        [[vm]]
        name = "b"
        socket = "/tmp/b.sock"
        vm_id = 2
        pool_id = 8
    "#;

    #[test]
    fn pools_and_scheduler() {
        let c = Config::from_toml(POOLS).unwrap();
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.pools[0].isolation, Isolation::Context);
        assert_eq!(c.pools[1].isolation, Isolation::Context);
        assert_eq!(c.pools[1].name, "pool-8");
        assert_eq!(c.pools[1].weight, 1);
        assert_eq!(c.vms[0].pool_id, 7, "`pool` is `pool_id`");
        assert_eq!(c.vm_pool(1), 1);
        assert_eq!(c.scheduler.policy, Policy::Fifo);
        assert_eq!(c.scheduler.reserve_slots, 1);
        assert_eq!((c.mediator.cpu_slots, c.mediator.cpu_devices), (4, 2));
        assert_eq!(c.pool_devices(0, 2), vec![1]);
        assert_eq!(c.pool_devices(1, 2), vec![0, 1]);
        assert!(c.check_devices(2).is_ok());
        let e = c.check_devices(1).unwrap_err().to_string();
        assert!(e.contains("gpu 1 out of range"), "{e}");
        // Without [[pool]]: one implicit pool per pool_id, weight 1, no quota.
        let g = Config::from_toml(GOOD).unwrap();
        let ids: Vec<u32> = g.pools.iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![0, 3]);
        assert!(g
            .pools
            .iter()
            .all(|p| p.weight == 1 && p.mem_quota.0 == u64::MAX));
    }

    #[test]
    fn rejects_bad_pools() {
        expect_invalid(&POOLS.replace("pool = 7", "pool = 9"), "unknown pool 9");
        expect_invalid(&POOLS.replace("id = 8", "id = 7"), "duplicate pool id 7");
        expect_invalid(
            &POOLS.replace("\"512MiB\"", "\"2GiB\""),
            "above its pool \"gold\"'s mem_quota",
        );
        expect_invalid(&POOLS.replace("weight = 3", "weight = 0"), "weight 0");
        expect_invalid(
            &POOLS.replace("gpus = [1]", "gpus = [1, 1]"),
            "gpu 1 listed twice",
        );
        expect_invalid(
            &POOLS.replace("isolation = \"context\"", "isolation = \"none\""),
            "unknown variant",
        );
        expect_invalid(
            &POOLS.replace("isolation = \"context\"", "isolation = \"shared\""),
            "isolation = \"shared\" (one device context for the pool's VMs) is not implemented",
        );
        expect_invalid(&POOLS.replace("\"fifo\"", "\"lottery\""), "unknown variant");
        expect_invalid(
            &POOLS.replace("cpu_slots = 4", "cpu_slots = 0"),
            "cpu_slots",
        );
        expect_invalid(
            &POOLS.replace("pool_id = 8", "pool_id = 8\n        pool = 8"),
            "duplicate field",
        );
        expect_invalid(
            &POOLS.replace(
                "reserve_slots = 1",
                "reserve_slots = 2\n        device_depth = 2",
            ),
            "reserve_slots",
        );
    }

    #[test]
    fn reload_safety() {
        let a = Config::from_toml(POOLS).unwrap();
        let safe = Config::from_toml(
            &POOLS
                .replace("weight = 3", "weight = 5")
                .replace("\"512MiB\"", "\"256MiB\"")
                .replace("pool_id = 8", "pool_id = 8\n        priority = 4"),
        )
        .unwrap();
        assert!(a.unsafe_changes(&safe).is_empty());
        let bad = Config::from_toml(
            &POOLS
                .replace("/tmp/b.sock", "/tmp/c.sock")
                .replace("vm_id = 1", "vm_id = 5")
                .replace("gpus = [1]", "gpus = [0]"),
        )
        .unwrap();
        let ch = a.unsafe_changes(&bad);
        assert!(ch.iter().any(|c| c.contains("socket")), "{ch:?}");
        assert!(ch.iter().any(|c| c.contains("vm_id")), "{ch:?}");
        assert!(ch.iter().any(|c| c.contains("gpus")), "{ch:?}");
    }
}
