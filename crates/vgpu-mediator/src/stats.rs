//! Per-VM accounting, shared between the executor (writer) and the admin socket (reader).

use crate::config::{Config, VmConfig};
use crate::quota::PoolQuota;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use vgpu_abi::DeviceStatus;

/// Counters of one VM. They survive the VM's disconnects (totals since vgpud started).
#[derive(Debug, Default)]
pub struct VmStats {
    /// Commands completed (any status).
    pub commands: AtomicU64,
    /// Commands completed with an error status.
    pub errors: AtomicU64,
    /// Bytes copied host → device.
    pub bytes_in: AtomicU64,
    /// Bytes copied device → host.
    pub bytes_out: AtomicU64,
    /// Device memory in use now.
    pub mem_used: AtomicU64,
    /// Time the device spent on this VM's commands, in nanoseconds.
    pub device_ns: AtomicU64,
    /// Connections so far.
    pub connects: AtomicU64,
    /// Times the VM was fenced.
    pub fences: AtomicU64,
    /// Resets requested by the guest.
    pub resets: AtomicU64,
    /// Connected now.
    pub connected: AtomicBool,
    /// Current [`DeviceStatus`].
    pub status: AtomicU32,
    /// Last error code.
    pub last_error: AtomicU32,
    /// Commands queued and not yet run.
    pub queued: AtomicU64,
    /// The device the VM is placed on while connected, else -1.
    pub device: AtomicI64,
    /// Pool id in force (follows reloads).
    pub pool_id: AtomicU32,
    /// Priority in force (follows reloads).
    pub priority: AtomicU32,
    /// Memory quota in force (follows reloads).
    pub mem_quota: AtomicU64,
    /// Queued commands dropped unrun because the VM left or reset.
    pub dropped_jobs: AtomicU64,
    /// Commands refused by a per-VM limit (`[limits]`).
    pub limit_refusals: AtomicU64,
    /// Resets vgpud forced because the VM's work ran past its kernel time limit.
    pub kernel_timeouts: AtomicU64,
    /// The VM's throttled log lines.
    pub log: std::sync::Mutex<crate::throttle::VmLog>,
}

impl VmStats {
    /// Counts one occurrence of a throttled log line of this VM; `Some(n)`: log it now, for
    /// `n` occurrences.
    pub fn log_hit(
        &self,
        pick: impl FnOnce(&mut crate::throttle::VmLog) -> &mut crate::throttle::Throttle,
    ) -> Option<u64> {
        let mut l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        pick(&mut l).hit()
    }

    fn for_vm(c: &VmConfig) -> Self {
        let s = Self::default();
        s.device.store(-1, Relaxed);
        s.set_config(c);
        s
    }

    /// Records the values of `c` that a reload may change.
    pub fn set_config(&self, c: &VmConfig) {
        self.pool_id.store(c.pool_id, Relaxed);
        self.priority.store(c.priority, Relaxed);
        self.mem_quota.store(c.mem_quota.0, Relaxed);
    }
}

/// One pool: its quota (shared by its VMs on every device) and counters.
#[derive(Debug)]
pub struct PoolStats {
    /// Pool id.
    pub id: u32,
    /// Pool name.
    pub name: String,
    /// Weight in force.
    pub weight: AtomicU32,
    /// Memory quota and usage of the pool's VMs together.
    pub quota: Arc<PoolQuota>,
    /// Device time of the pool's commands, in nanoseconds.
    pub device_ns: AtomicU64,
}

impl VmStats {
    /// Adds one to a counter.
    pub fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// Every VM's counters, in config order.
#[derive(Debug)]
pub struct StatsRegistry {
    /// Backend name.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// Every device's name, by index.
    pub devices: Vec<String>,
    /// VMs.
    pub vms: Vec<(VmConfig, Arc<VmStats>)>,
    /// Pools, in config order (empty when built from VMs alone).
    pub pools: Vec<PoolStats>,
}

impl StatsRegistry {
    /// One fresh counter set per VM.
    pub fn new(vms: &[VmConfig]) -> Self {
        Self {
            backend: String::new(),
            device: String::new(),
            devices: Vec::new(),
            vms: vms
                .iter()
                .map(|v| (v.clone(), Arc::new(VmStats::for_vm(v))))
                .collect(),
            pools: Vec::new(),
        }
    }

    /// Counters for every VM and pool of `cfg`.
    pub fn for_config(cfg: &Config) -> Self {
        let mut r = Self::new(&cfg.vms);
        r.pools = cfg
            .pools
            .iter()
            .map(|p| PoolStats {
                id: p.id,
                name: p.name.clone(),
                weight: AtomicU32::new(p.weight),
                quota: Arc::new(PoolQuota::new(p.mem_quota.0)),
                device_ns: AtomicU64::new(0),
            })
            .collect();
        r
    }

    /// Takes over what a reload may change (weights, quotas, priorities, pools of VMs).
    /// `cfg` has the same VMs and pools as the one this registry was built for.
    pub fn apply(&self, cfg: &Config) {
        for ((_, s), c) in self.vms.iter().zip(&cfg.vms) {
            s.set_config(c);
        }
        for (p, c) in self.pools.iter().zip(&cfg.pools) {
            p.weight.store(c.weight, Relaxed);
            p.quota.set_limit(c.mem_quota.0);
        }
    }

    /// The JSON `vgpuctl stats` prints.
    pub fn to_json(&self) -> Value {
        let vms: Vec<Value> = self
            .vms
            .iter()
            .map(|(c, s)| {
                let status = DeviceStatus::from_raw(s.status.load(Relaxed))
                    .map(|d| d.name())
                    .unwrap_or("unknown");
                let device = s.device.load(Relaxed);
                json!({
                    "name": c.name,
                    "vm_id": c.vm_id,
                    "pool_id": s.pool_id.load(Relaxed),
                    "priority": s.priority.load(Relaxed),
                    "device": (device >= 0).then_some(device),
                    "socket": c.socket,
                    "connected": s.connected.load(Relaxed),
                    "status": if s.connected.load(Relaxed) { status } else { "disconnected" },
                    "last_error": s.last_error.load(Relaxed),
                    "commands": s.commands.load(Relaxed),
                    "errors": s.errors.load(Relaxed),
                    "bytes_in": s.bytes_in.load(Relaxed),
                    "bytes_out": s.bytes_out.load(Relaxed),
                    "mem_used": s.mem_used.load(Relaxed),
                    "mem_quota": s.mem_quota.load(Relaxed),
                    "device_ns": s.device_ns.load(Relaxed),
                    "connects": s.connects.load(Relaxed),
                    "fences": s.fences.load(Relaxed),
                    "resets": s.resets.load(Relaxed),
                    "dropped_jobs": s.dropped_jobs.load(Relaxed),
                    "limit_refusals": s.limit_refusals.load(Relaxed),
                    "kernel_timeouts": s.kernel_timeouts.load(Relaxed),
                    "queued": s.queued.load(Relaxed),
                })
            })
            .collect();
        let pools: Vec<Value> = self
            .pools
            .iter()
            .map(|p| {
                let limit = p.quota.limit();
                json!({
                    "id": p.id,
                    "name": p.name,
                    "weight": p.weight.load(Relaxed),
                    "mem_used": p.quota.used(),
                    "mem_quota": (limit != u64::MAX).then_some(limit),
                    "device_ns": p.device_ns.load(Relaxed),
                })
            })
            .collect();
        json!({
            "backend": self.backend,
            "device": self.device,
            "devices": self.devices,
            "vms": vms,
            "pools": pools,
        })
    }
}
