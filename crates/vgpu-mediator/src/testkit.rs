//! For code that starts a real vgpud and watches it (the integration tests, `vgpu-bench`): its
//! config file built from typed values ([`ConfigBuilder`], written by the `toml` crate, so names
//! and paths are always quoted right), its admin `stats` reply as typed data
//! ([`StatsSnapshot`]), and the CPU time it and its worker processes spend ([`cpu_ns`],
//! [`child_processes`]).
//!
//! The builder is deliberately open: a section's keys take any TOML value (vgpud's own parser,
//! [`crate::config::Config`], is what judges them), so a test can also write the config a
//! bad-config test needs.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// What can go wrong building a config or asking vgpud for its stats.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The config could not be written as TOML (e.g. an integer above `i64::MAX`).
    #[error("writing the config as TOML: {0}")]
    Write(#[from] toml::ser::Error),
    /// A config fragment was not TOML of the shape of a vgpud config.
    #[error("reading a config fragment: {0}")]
    Read(#[from] toml::de::Error),
    /// A file or the admin socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// vgpud's reply was not the stats JSON this module knows.
    #[error("stats reply {line:?}: {source}")]
    Stats {
        /// The reply line.
        line: String,
        /// Cause.
        source: serde_json::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}

/// A byte size as vgpud's config takes it: a number of bytes or a string such as `"16MiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// With a unit, e.g. `"256MiB"`.
    Text(String),
}

impl From<u64> for Size {
    fn from(v: u64) -> Self {
        Self::Bytes(v)
    }
}

impl From<&str> for Size {
    fn from(v: &str) -> Self {
        Self::Text(v.to_string())
    }
}

/// One `[[vm]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    /// Unique name.
    pub name: String,
    /// The socket QEMU or a process client connects to.
    pub socket: PathBuf,
    /// Unique VM id.
    pub vm_id: u32,
    /// Pool id (vgpud's default: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<u32>,
    /// Priority (vgpud's default: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Device memory quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_quota: Option<Size>,
    /// BAR2 size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Size>,
    /// Any other key of the entry (`socket_mode`, `sq_entries`, …).
    #[serde(flatten)]
    pub extra: Table,
}

impl VmEntry {
    /// A VM with vgpud's defaults for everything but its identity.
    pub fn new(name: &str, socket: impl Into<PathBuf>, vm_id: u32) -> Self {
        Self {
            name: name.to_string(),
            socket: socket.into(),
            vm_id,
            pool_id: None,
            priority: None,
            mem_quota: None,
            shm_size: None,
            extra: Table::new(),
        }
    }

    /// Sets the pool.
    pub fn pool(mut self, id: u32) -> Self {
        self.pool_id = Some(id);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, p: u32) -> Self {
        self.priority = Some(p);
        self
    }

    /// Sets the memory quota.
    pub fn mem_quota(mut self, s: impl Into<Size>) -> Self {
        self.mem_quota = Some(s.into());
        self
    }

    /// Sets the BAR2 size.
    pub fn shm_size(mut self, s: impl Into<Size>) -> Self {
        self.shm_size = Some(s.into());
        self
    }

    /// Sets any other key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// One `[[pool]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolEntry {
    /// Pool id.
    pub id: u32,
    /// Name (vgpud's default: `pool-<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Device indices (vgpud's default: every device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<u32>>,
    /// Weight (vgpud's default: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Memory quota of the pool's VMs together (vgpud's default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_quota: Option<Size>,
    /// Any other key of the entry.
    #[serde(flatten)]
    pub extra: Table,
}

impl PoolEntry {
    /// A pool with vgpud's defaults for everything but its id.
    pub fn new(id: u32) -> Self {
        Self {
            id,
            name: None,
            gpus: None,
            weight: None,
            mem_quota: None,
            extra: Table::new(),
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Sets the devices.
    pub fn gpus(mut self, gpus: &[u32]) -> Self {
        self.gpus = Some(gpus.to_vec());
        self
    }

    /// Sets the weight.
    pub fn weight(mut self, w: u32) -> Self {
        self.weight = Some(w);
        self
    }

    /// Sets the memory quota.
    pub fn mem_quota(mut self, s: impl Into<Size>) -> Self {
        self.mem_quota = Some(s.into());
        self
    }

    /// Sets any other key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// A vgpud config file: `[mediator]`, `[scheduler]`, `[limits]`, `[[pool]]`, `[[vm]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigBuilder {
    #[serde(skip_serializing_if = "Table::is_empty")]
    mediator: Table,
    #[serde(skip_serializing_if = "Table::is_empty")]
    scheduler: Table,
    #[serde(skip_serializing_if = "Table::is_empty")]
    limits: Table,
    #[serde(rename = "pool", skip_serializing_if = "Vec::is_empty")]
    pools: Vec<PoolEntry>,
    #[serde(rename = "vm", skip_serializing_if = "Vec::is_empty")]
    vms: Vec<VmEntry>,
}

impl ConfigBuilder {
    /// An empty config (vgpud's defaults, no VM yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a config, or a fragment of one, written as TOML text.
    pub fn from_toml(text: &str) -> Result<Self, TestkitError> {
        Ok(toml::from_str(text)?)
    }

    /// `[mediator] backend`.
    pub fn backend(self, backend: &str) -> Self {
        self.mediator("backend", backend)
    }

    /// `[mediator] admin_socket`.
    pub fn admin_socket(self, path: &Path) -> Self {
        self.mediator("admin_socket", path.to_string_lossy().into_owned())
    }

    /// Sets a key of `[mediator]`.
    pub fn mediator(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.mediator.insert(key.to_string(), value.into());
        self
    }

    /// Sets a key of `[scheduler]`.
    pub fn scheduler(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.scheduler.insert(key.to_string(), value.into());
        self
    }

    /// Sets a key of `[limits]`.
    pub fn limits(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.limits.insert(key.to_string(), value.into());
        self
    }

    /// Adds a `[[pool]]`.
    pub fn pool(mut self, pool: PoolEntry) -> Self {
        self.pools.push(pool);
        self
    }

    /// Adds a `[[vm]]`.
    pub fn vm(mut self, vm: VmEntry) -> Self {
        self.vms.push(vm);
        self
    }

    /// The `[[vm]]` entries so far.
    pub fn vms(&self) -> &[VmEntry] {
        &self.vms
    }

    /// `self` with `other` on top: `other`'s keys replace `self`'s, its pools and VMs come after.
    pub fn merge(mut self, other: ConfigBuilder) -> Self {
        self.mediator.extend(other.mediator);
        self.scheduler.extend(other.scheduler);
        self.limits.extend(other.limits);
        self.pools.extend(other.pools);
        self.vms.extend(other.vms);
        self
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> Result<String, TestkitError> {
        Ok(toml::to_string(self)?)
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) -> Result<(), TestkitError> {
        std::fs::write(path, self.to_toml()?).map_err(io(format!("writing {}", path.display())))
    }
}

/// vgpud's reply to `stats` on its admin socket (`vgpuctl stats`), field for field as
/// [`crate::stats::StatsRegistry::to_json`] writes it: an unknown field is an error, so the
/// two cannot drift apart unnoticed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSnapshot {
    /// Backend name of device 0.
    pub backend: String,
    /// Name of device 0.
    pub device: String,
    /// Every device's name, by index.
    pub devices: Vec<String>,
    /// The VMs, in config order.
    pub vms: Vec<VmSnapshot>,
    /// The pools, in config order (with the implicit ones).
    pub pools: Vec<PoolSnapshot>,
}

/// One VM in [`StatsSnapshot`]; counters are totals since vgpud started.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// Name.
    pub name: String,
    /// VM id.
    pub vm_id: u32,
    /// Pool id in force.
    pub pool_id: u32,
    /// Priority in force.
    pub priority: u32,
    /// The device it is placed on while connected.
    pub device: Option<usize>,
    /// Its socket.
    pub socket: PathBuf,
    /// Connected now.
    pub connected: bool,
    /// The device status's name (`ready`, `error`, …), `disconnected` while not connected.
    pub status: String,
    /// Last error code.
    pub last_error: u32,
    /// Commands completed (any status).
    pub commands: u64,
    /// Commands completed with an error status.
    pub errors: u64,
    /// Bytes copied host → device.
    pub bytes_in: u64,
    /// Bytes copied device → host.
    pub bytes_out: u64,
    /// Device memory in use now.
    pub mem_used: u64,
    /// Memory quota in force.
    pub mem_quota: u64,
    /// Device time of its commands, in ns.
    pub device_ns: u64,
    /// Connections so far.
    pub connects: u64,
    /// Times it was fenced.
    pub fences: u64,
    /// Resets the guest asked for.
    pub resets: u64,
    /// Queued commands dropped unrun because it left or reset.
    pub dropped_jobs: u64,
    /// Commands refused by a `[limits]` limit.
    pub limit_refusals: u64,
    /// Resets forced by the kernel time limit.
    pub kernel_timeouts: u64,
    /// Commands queued in vgpud now.
    pub queued: u64,
    /// p99 completion latency in µs (the bound of its histogram bucket), over vgpud's life;
    /// `None` before the first completion.
    pub latency_p99_us: Option<u64>,
}

/// One pool in [`StatsSnapshot`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSnapshot {
    /// Pool id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Weight in force.
    pub weight: u32,
    /// Memory its VMs hold now.
    pub mem_used: u64,
    /// Its memory quota (none: unlimited).
    pub mem_quota: Option<u64>,
    /// Device time of its commands, in ns.
    pub device_ns: u64,
}

impl StatsSnapshot {
    /// Parses a `stats` reply line.
    pub fn parse(line: &str) -> Result<Self, TestkitError> {
        serde_json::from_str(line).map_err(|source| TestkitError::Stats {
            line: line.to_string(),
            source,
        })
    }

    /// Asks the vgpud serving `admin_socket` for its stats.
    pub fn request(admin_socket: &Path) -> Result<Self, TestkitError> {
        let what = || format!("stats from {}", admin_socket.display());
        let mut c = UnixStream::connect(admin_socket).map_err(io(what()))?;
        writeln!(c, "stats").map_err(io(what()))?;
        let mut line = String::new();
        BufReader::new(&c)
            .read_line(&mut line)
            .map_err(io(what()))?;
        Self::parse(&line)
    }

    /// The VM named `name`.
    pub fn vm(&self, name: &str) -> Option<&VmSnapshot> {
        self.vms.iter().find(|v| v.name == name)
    }
}

/// Nanoseconds process `pid` has spent on a CPU, all its threads together, from
/// `/proc/<pid>/task/<tid>/schedstat` (scheduler accounting in nanoseconds, not sampled ticks).
/// A thread that ended since the last look took its time with it (vgpud's long-lived threads
/// are what is measured); a process that is gone counts 0.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The child processes of `pid` (vgpud's workers: started by its executor threads, and
/// `children` lists each thread's own).
pub fn child_processes(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::stats::StatsRegistry;

    #[test]
    fn builds_a_config_vgpud_reads() {
        let cfg = ConfigBuilder::new()
            .backend("cpu")
            .admin_socket(Path::new("/run/a dir/admin \"x\".sock"))
            .mediator("cpu_slots", 4)
            .mediator("executor_cpus", vec![Value::from(1)])
            .scheduler("policy", "fifo")
            .limits("max_streams", 8)
            .pool(PoolEntry::new(3).gpus(&[0]).weight(2).mem_quota("1GiB"))
            .vm(VmEntry::new("vm-a", "/run/vm-a.sock", 1)
                .pool(3)
                .priority(2)
                .mem_quota(64u64 << 20)
                .shm_size("1MiB")
                .set("socket_mode", "0660"));
        let text = cfg.to_toml().unwrap();
        let c = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(
            c.mediator.admin_socket.as_deref(),
            Some(Path::new("/run/a dir/admin \"x\".sock"))
        );
        assert_eq!(
            (c.mediator.cpu_slots, &c.mediator.executor_cpus[..]),
            (4, &[1][..])
        );
        assert_eq!(c.scheduler.policy, crate::config::Policy::Fifo);
        assert_eq!(c.limits.max_streams, 8);
        assert_eq!(
            (c.pools[0].id, c.pools[0].weight, &c.pools[0].gpus[..]),
            (3, 2, &[0][..])
        );
        assert_eq!(c.pools[0].mem_quota.0, 1 << 30);
        let v = &c.vms[0];
        assert_eq!(
            (v.name.as_str(), v.vm_id, v.pool_id, v.priority),
            ("vm-a", 1, 3, 2)
        );
        assert_eq!((v.mem_quota.0, v.shm_size.0), (64 << 20, 1 << 20));
        assert_eq!(v.socket_mode.map(|m| m.0), Some(0o660));
        // What it writes, it reads back.
        assert_eq!(ConfigBuilder::from_toml(&text).unwrap(), cfg);
    }

    #[test]
    fn fragments_merge() {
        let head = ConfigBuilder::from_toml(
            "[mediator]\nbackend = \"cpu\"\npoll_us = 50\n[scheduler]\npolicy = \"fifo\"\n",
        )
        .unwrap();
        let cfg = ConfigBuilder::new()
            .backend("cuda")
            .mediator("poll_us", 7)
            .merge(head)
            .vm(VmEntry::new("a", "/tmp/a.sock", 1).set("pool", 0));
        let c = Config::from_toml(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(c.mediator.backend, crate::config::BackendChoice::Cpu);
        assert_eq!(c.mediator.poll_us, 50);
        assert!(ConfigBuilder::from_toml("[mediatr]\n").is_err());
    }

    /// The snapshot reads exactly what the admin socket writes (every field, no more).
    #[test]
    fn snapshot_matches_the_stats_json() {
        let cfg = Config::from_toml(
            "[[pool]]\nid = 0\nmem_quota = \"1GiB\"\n[[pool]]\nid = 1\n\
             [[vm]]\nname = \"a\"\nsocket = \"/tmp/a.sock\"\nvm_id = 1\n\
             [[vm]]\nname = \"b\"\nsocket = \"/tmp/b.sock\"\nvm_id = 2\npool = 1\n",
        )
        .unwrap();
        let mut r = StatsRegistry::for_config(&cfg);
        r.backend = "cpu".into();
        r.devices = vec!["cpu0".into()];
        r.vms[1]
            .1
            .device
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let s = StatsSnapshot::parse(&r.to_json().to_string()).unwrap();
        assert_eq!(s.vms.len(), 2);
        let (a, b) = (s.vm("a").unwrap(), s.vm("b").unwrap());
        assert_eq!((a.device, b.device, b.pool_id), (None, Some(0), 1));
        assert_eq!(a.status, "disconnected");
        assert_eq!(a.mem_quota, 1 << 30);
        assert_eq!(s.pools[0].mem_quota, Some(1 << 30));
        assert_eq!(s.pools[1].mem_quota, None);
        assert_eq!(s.devices, ["cpu0"]);
    }
}
