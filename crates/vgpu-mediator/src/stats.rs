//! Per-VM accounting, shared between the executor (writer) and the admin socket and the
//! metrics endpoint (readers).

use crate::config::{Config, VmConfig};
use crate::quota::PoolQuota;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use vgpu_abi::DeviceStatus;

/// Upper bounds of the latency histograms' buckets, in microseconds: 10 µs to 10 s in 1-2.5-5
/// steps (a control command on the cpu backend takes ~10 µs; a kernel past `max_kernel_us`
/// is stopped long before 10 s). Above the last: the `+Inf` bucket.
pub const LATENCY_BUCKETS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with the fixed buckets [`LATENCY_BUCKETS_US`], written by the executor
/// thread and read at scrape time without a lock: one relaxed atomic add per bucket hit and one
/// for the sum. A reader may see a sample in a bucket and not yet in the sum (or the reverse);
/// the count is derived from the buckets, so count and `+Inf` bucket always agree.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of all samples, in nanoseconds (wraps after 584 years of latency).
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS_US.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// A copy of a [`LatencyHistogram`]'s values.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, samples in that bucket alone), the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the samples, in seconds.
    pub sum_seconds: f64,
    /// Number of samples.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // A sample equal to a bound belongs to that bound's bucket (`le`).
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b.saturating_mul(1000) < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The values now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let bounds = LATENCY_BUCKETS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(b, n)| (b, n.load(Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

impl HistogramSnapshot {
    /// The upper bound (seconds) of the bucket that holds quantile `q` of the samples: the
    /// quantile to the buckets' resolution, never below it. `None` without samples; infinite
    /// when the quantile lies past the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.buckets.iter().find_map(|&(bound, n)| {
            seen += n;
            (seen >= rank).then_some(bound)
        })
    }
}

/// Error status codes counted one by one (the ABI's codes are 1..=16); larger ones share the
/// last slot.
pub const ERROR_STATUS_SLOTS: usize = 32;

/// Counters of one VM. They survive the VM's disconnects (totals since vgpud started).
#[derive(Debug, Default)]
pub struct VmStats {
    /// Commands completed (any status).
    pub commands: AtomicU64,
    /// Commands completed with an error status.
    pub errors: AtomicU64,
    /// The same by status code (index: the code; codes from [`ERROR_STATUS_SLOTS`] on share
    /// the last slot).
    pub errors_by_status: [AtomicU64; ERROR_STATUS_SLOTS],
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
    /// Commands issued to the device and not yet retired (work left running on it).
    pub inflight: AtomicU64,
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
    /// Time from a command being queued in vgpud to its completion being written, for
    /// commands run on the device (run at once or retired later; not those refused before
    /// they were queued, nor those dropped unrun).
    pub completion_latency: LatencyHistogram,
    /// Time from a command being queued in vgpud to its being issued to the device: what
    /// the scheduler's latency promise bounds (`docs/scheduling.md`, "Guarantees").
    pub queue_wait: LatencyHistogram,
    /// The VM's throttled log lines.
    pub log: std::sync::Mutex<crate::throttle::VmLog>,
}

impl VmStats {
    /// Counts one command that completed with error `status` (a non-zero status code).
    pub fn count_error(&self, status: u32) {
        Self::bump(&self.errors, 1);
        let i = (status as usize).min(ERROR_STATUS_SLOTS - 1);
        Self::bump(&self.errors_by_status[i], 1);
    }

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
    /// The same by device index (fair share is per device; set with
    /// [`StatsRegistry::set_devices`]; empty: not counted).
    pub device_ns_by_device: Vec<AtomicU64>,
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
    /// Device time of every command run on each device, in nanoseconds, by device index
    /// (set with [`StatsRegistry::set_devices`]; empty: not counted).
    pub device_ns: Vec<AtomicU64>,
    /// Worker processes holding each device's contexts (fault isolation), by device index;
    /// -1 where the backend runs contexts inside vgpud.
    pub device_workers: Vec<AtomicI64>,
    /// When vgpud started (the registry is made at start-up).
    pub started: SystemTime,
    /// The same instant on the monotonic clock, for the uptime.
    pub started_mono: Instant,
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
            device_ns: Vec::new(),
            device_workers: Vec::new(),
            started: SystemTime::now(),
            started_mono: Instant::now(),
        }
    }

    /// Names the devices (by index) and gives each, and each pool on each, a device-time
    /// counter.
    pub fn set_devices(&mut self, names: Vec<String>) {
        let counters = || names.iter().map(|_| AtomicU64::new(0)).collect();
        self.device_ns = counters();
        self.device_workers = names.iter().map(|_| AtomicI64::new(-1)).collect();
        for p in &mut self.pools {
            p.device_ns_by_device = counters();
        }
        self.devices = names;
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
                device_ns_by_device: Vec::new(),
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
                    // To the histogram's bucket bound, over vgpud's life (vgpuctl top).
                    "latency_p99_us": s
                        .completion_latency
                        .snapshot()
                        .quantile_bound(0.99)
                        .filter(|b| b.is_finite())
                        .map(|b| (b * 1e6).round() as u64),
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [mediator]
        backend = "cpu"
        [[pool]]
        id = 4
        name = "gold"
        weight = 3
        mem_quota = 1048576
        [[pool]]
        id = 9
        name = "free"
        [[vm]]
        name = "a"
        socket = "/nonexistent/a.sock"
        vm_id = 1
        pool = 4
        priority = 2
        mem_quota = 65536
        [[vm]]
        name = "b"
        socket = "/nonexistent/b.sock"
        vm_id = 2
        pool = 9
    "#;

    fn registry() -> StatsRegistry {
        let mut r = StatsRegistry::for_config(&Config::from_toml(CONFIG).unwrap());
        r.backend = "cpu".into();
        r.device = "dev0".into();
        r.devices = vec!["dev0".into(), "dev1".into()];
        r
    }

    #[test]
    fn one_counter_set_per_vm_and_pool_with_the_configured_values() {
        let r = registry();
        assert_eq!(r.vms.len(), 2);
        let a = &r.vms[0].1;
        assert_eq!(a.device.load(Relaxed), -1, "not placed");
        assert!(!a.connected.load(Relaxed));
        assert_eq!((a.pool_id.load(Relaxed), a.priority.load(Relaxed)), (4, 2));
        assert_eq!(a.mem_quota.load(Relaxed), 65536);
        let ids: Vec<(u32, &str)> = r.pools.iter().map(|p| (p.id, p.name.as_str())).collect();
        assert_eq!(ids, [(4, "gold"), (9, "free")]);
        assert_eq!(r.pools[0].weight.load(Relaxed), 3);
        assert_eq!(r.pools[0].quota.limit(), 1048576);
        assert_eq!(r.pools[1].quota.limit(), u64::MAX, "no quota");
        assert!(
            StatsRegistry::new(&r.vms.iter().map(|v| v.0.clone()).collect::<Vec<_>>())
                .pools
                .is_empty()
        );
    }

    #[test]
    fn a_reload_takes_over_weights_quotas_and_priorities_and_keeps_usage() {
        let r = registry();
        assert!(r.pools[0].quota.try_take(4096));
        let text = CONFIG
            .replace("weight = 3", "weight = 5")
            .replace("mem_quota = 1048576", "mem_quota = 2048")
            .replace("priority = 2", "priority = 7");
        r.apply(
            &Config::from_toml(&text.replace("mem_quota = 65536", "mem_quota = 1024")).unwrap(),
        );
        assert_eq!(r.vms[0].1.priority.load(Relaxed), 7);
        assert_eq!(r.vms[0].1.mem_quota.load(Relaxed), 1024);
        assert_eq!(r.pools[0].weight.load(Relaxed), 5);
        assert_eq!(r.pools[0].quota.limit(), 2048);
        assert_eq!(r.pools[0].quota.used(), 4096, "held memory stays held");
        assert!(!r.pools[0].quota.try_take(1));
    }

    #[test]
    fn the_json_reports_counters_status_and_placement() {
        let r = registry();
        let a = &r.vms[0].1;
        VmStats::bump(&a.commands, 10);
        VmStats::bump(&a.commands, 2);
        VmStats::bump(&a.errors, 1);
        VmStats::bump(&a.bytes_in, 4096);
        a.device_ns.fetch_add(1500, Relaxed);
        a.connected.store(true, Relaxed);
        a.status.store(DeviceStatus::Fenced as u32, Relaxed);
        a.device.store(1, Relaxed);
        // b is disconnected: its last status is not reported as current.
        r.vms[1].1.status.store(DeviceStatus::Ready as u32, Relaxed);
        assert!(r.pools[0].quota.try_take(512));
        r.pools[0].device_ns.fetch_add(1500, Relaxed);

        let j = r.to_json();
        assert_eq!(j["backend"], "cpu");
        assert_eq!(j["devices"], serde_json::json!(["dev0", "dev1"]));
        let ja = &j["vms"][0];
        assert_eq!(ja["name"], "a");
        assert_eq!(ja["commands"], 12);
        assert_eq!(ja["errors"], 1);
        assert_eq!(ja["bytes_in"], 4096);
        assert_eq!(ja["device_ns"], 1500);
        assert_eq!(ja["status"], "fenced");
        assert_eq!(ja["device"], 1);
        assert_eq!(ja["mem_quota"], 65536);
        let jb = &j["vms"][1];
        assert_eq!(jb["status"], "disconnected");
        assert!(jb["device"].is_null());
        assert_eq!(jb["commands"], 0);
        let gold = &j["pools"][0];
        assert_eq!(
            (gold["mem_used"].as_u64(), gold["mem_quota"].as_u64()),
            (Some(512), Some(1048576))
        );
        assert_eq!(gold["device_ns"], 1500);
        assert!(j["pools"][1]["mem_quota"].is_null(), "unlimited");
    }

    #[test]
    fn the_latency_histogram_buckets_by_upper_bound() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot().quantile_bound(0.99), None);
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(10)); // on the bound: that bucket
        h.observe(Duration::from_nanos(10_001));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS_US.len() + 1);
        assert_eq!(s.buckets[0], (10e-6, 2));
        assert_eq!(s.buckets[1], (25e-6, 1));
        let at = |secs: f64| s.buckets.iter().find(|b| b.0 == secs).unwrap().1;
        assert_eq!(at(5e-3), 1);
        assert_eq!(at(f64::INFINITY), 1);
        assert_eq!(s.count, 5);
        // 5 samples: the median is the 3rd (25 µs bucket), the p80 the 4th (5 ms bucket), the
        // p99 the 5th (past the last bound).
        assert_eq!(s.quantile_bound(0.5), Some(25e-6));
        assert_eq!(s.quantile_bound(0.8), Some(5e-3));
        assert_eq!(s.quantile_bound(0.99), Some(f64::INFINITY));
        assert!(
            (s.sum_seconds - 60.003_025_001).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
    }

    #[test]
    fn devices_get_a_time_counter_each() {
        let mut r = registry();
        r.set_devices(vec!["d0".into(), "d1".into(), "d2".into()]);
        assert_eq!(r.devices.len(), 3);
        assert_eq!(r.device_ns.len(), 3);
        assert!(r.device_workers.iter().all(|w| w.load(Relaxed) == -1));
        assert!(r.pools.iter().all(|p| p.device_ns_by_device.len() == 3));
    }

    #[test]
    fn a_vms_log_lines_are_throttled_per_kind() {
        let r = registry();
        let a = &r.vms[0].1;
        assert_eq!(a.log_hit(|l| &mut l.fence), Some(1));
        assert_eq!(a.log_hit(|l| &mut l.fence), None, "within the interval");
        assert_eq!(a.log_hit(|l| &mut l.reset), Some(1), "another kind");
        assert_eq!(r.vms[1].1.log_hit(|l| &mut l.fence), Some(1), "another VM");
    }
}
