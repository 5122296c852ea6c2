//! Per-VM accounting, shared between the executor (writer) and the admin socket (reader).

use crate::config::VmConfig;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
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
}

impl VmStats {
    /// Adds one to a counter.
    pub fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// Every VM's counters, in config order.
#[derive(Debug, Clone)]
pub struct StatsRegistry {
    /// Backend name.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// VMs.
    pub vms: Vec<(VmConfig, Arc<VmStats>)>,
}

impl StatsRegistry {
    /// One fresh counter set per VM.
    pub fn new(vms: &[VmConfig]) -> Self {
        Self {
            backend: String::new(),
            device: String::new(),
            vms: vms
                .iter()
                .map(|v| (v.clone(), Arc::new(VmStats::default())))
                .collect(),
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
                json!({
                    "name": c.name,
                    "vm_id": c.vm_id,
                    "pool_id": c.pool_id,
                    "priority": c.priority,
                    "socket": c.socket,
                    "connected": s.connected.load(Relaxed),
                    "status": if s.connected.load(Relaxed) { status } else { "disconnected" },
                    "last_error": s.last_error.load(Relaxed),
                    "commands": s.commands.load(Relaxed),
                    "errors": s.errors.load(Relaxed),
                    "bytes_in": s.bytes_in.load(Relaxed),
                    "bytes_out": s.bytes_out.load(Relaxed),
                    "mem_used": s.mem_used.load(Relaxed),
                    "mem_quota": c.mem_quota.0,
                    "device_ns": s.device_ns.load(Relaxed),
                    "connects": s.connects.load(Relaxed),
                    "fences": s.fences.load(Relaxed),
                    "resets": s.resets.load(Relaxed),
                    "queued": s.queued.load(Relaxed),
                })
            })
            .collect();
        json!({ "backend": self.backend, "device": self.device, "vms": vms })
    }
}
