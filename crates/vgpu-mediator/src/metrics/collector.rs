//! What `GET /metrics` reports: vgpud's own counters ([`StatsRegistry`]), read when scraped and
//! encoded by prometheus-client's OpenMetrics text encoder. Nothing is counted twice: the
//! collector holds no metric of its own, only the registry and the (fixed) pool placement.
//!
//! The list, with units and meaning, is in `docs/operations.md`, "Metrics".

use crate::config::Config;
use crate::stats::{HistogramSnapshot, LatencyHistogram, StatsRegistry, VmStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use vgpu_abi::{DeviceStatus, Status};

/// The two exposition formats [`render`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, what prometheus-client's `encoding::text::encode` writes
    /// (`# UNIT` lines, `info` and `_total`-less counter family names, a final `# EOF`):
    /// what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`encoding::prometheus_text::encode`): for clients
    /// that do not ask for OpenMetrics (`curl`, `promtool check metrics`, older scrapers).
    Prometheus,
}

impl Format {
    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header value asks for: OpenMetrics when it names it (Prometheus
    /// does, ahead of the older format), else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a)
                if a.to_ascii_lowercase()
                    .contains("application/openmetrics-text") =>
            {
                Self::OpenMetrics
            }
            _ => Self::Prometheus,
        }
    }
}

/// The `Content-Type` of OpenMetrics text (prometheus-client has no constant for it).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of one series: (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// Reads the registry at scrape time.
#[derive(Debug)]
pub struct VgpuCollector {
    stats: Arc<StatsRegistry>,
    /// Device indices each pool (by config index) may run on: fixed while vgpud runs (a
    /// reload may not change `gpus`), so taken once from the config.
    pool_devices: Vec<Vec<usize>>,
}

impl VgpuCollector {
    /// A collector of `stats`, with the pool placement of `cfg` (the config `stats` was built
    /// for; its devices named with `StatsRegistry::set_devices`).
    pub fn new(cfg: &Config, stats: Arc<StatsRegistry>) -> Self {
        let devices = stats.devices.len();
        let pool_devices = (0..cfg.pools.len())
            .map(|p| cfg.pool_devices(p, devices))
            .collect();
        Self {
            stats,
            pool_devices,
        }
    }
}

/// The whole exposition of `registry` in `format` (what `GET /metrics` answers).
pub fn render(registry: &Registry, format: Format) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 << 10);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
    }
    Ok(out)
}

/// A registry holding only `collector`.
pub fn registry(collector: VgpuCollector) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(collector));
    r
}

/// One metric family: its descriptor, then one sample per label set.
struct Family<'a> {
    enc: MetricEncoder<'a>,
}

impl<'a> Family<'a> {
    fn new(
        d: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
        unit: Option<&'a Unit>,
        ty: MetricType,
    ) -> Result<Self, fmt::Error> {
        Ok(Self {
            enc: d.encode_descriptor(name, help, unit, ty)?,
        })
    }

    fn counter(&mut self, labels: &Labels, v: impl CounterValue) -> fmt::Result {
        v.encode_as_counter(&mut self.enc.encode_family(labels)?)
    }

    fn gauge(&mut self, labels: &Labels, v: impl EncodeGaugeValue) -> fmt::Result {
        self.enc.encode_family(labels)?.encode_gauge(&v)
    }

    fn histogram(&mut self, labels: &Labels, h: &HistogramSnapshot) -> fmt::Result {
        self.enc
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
    }
}

/// A counter sample's value: integers stay exact, seconds are floats.
trait CounterValue {
    fn encode_as_counter(self, e: &mut MetricEncoder<'_>) -> fmt::Result;
}

impl CounterValue for u64 {
    fn encode_as_counter(self, e: &mut MetricEncoder<'_>) -> fmt::Result {
        e.encode_counter::<NoLabelSet, _, u64>(&self, None)
    }
}

impl CounterValue for f64 {
    fn encode_as_counter(self, e: &mut MetricEncoder<'_>) -> fmt::Result {
        e.encode_counter::<NoLabelSet, _, f64>(&self, None)
    }
}

/// The `status` label of error code `code`: the ABI's name in snake case
/// (`QuotaExceeded` → `quota_exceeded`), else `other`.
fn status_name(code: usize) -> String {
    let Some(st) = u32::try_from(code).ok().and_then(Status::from_raw) else {
        return "other".into();
    };
    let mut out = String::new();
    for (i, c) in format!("{st:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// A per-VM counter: name (without `_total` and unit), help, unit, field.
type VmCounter = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&VmStats) -> u64,
);

const VM_COUNTERS: &[VmCounter] = &[
    (
        "vgpu_vm_commands",
        "Commands completed (any status).",
        None,
        |s| load(&s.commands),
    ),
    (
        "vgpu_vm_host_to_device",
        "Bytes copied from the guest to device memory.",
        Some(Unit::Bytes),
        |s| load(&s.bytes_in),
    ),
    (
        "vgpu_vm_device_to_host",
        "Bytes copied from device memory to the guest.",
        Some(Unit::Bytes),
        |s| load(&s.bytes_out),
    ),
    (
        "vgpu_vm_fences",
        "Times the VM was fenced (a protocol violation; the device stops until a reset).",
        None,
        |s| load(&s.fences),
    ),
    (
        "vgpu_vm_resets",
        "Device resets the guest requested.",
        None,
        |s| load(&s.resets),
    ),
    (
        "vgpu_vm_kernel_timeouts",
        "Resets vgpud forced because the VM's work ran past its kernel time limit.",
        None,
        |s| load(&s.kernel_timeouts),
    ),
    (
        "vgpu_vm_limit_refusals",
        "Commands refused by a per-VM limit ([limits]).",
        None,
        |s| load(&s.limit_refusals),
    ),
    (
        "vgpu_vm_dropped_commands",
        "Queued commands dropped unrun because the VM left, was fenced or reset.",
        None,
        |s| load(&s.dropped_jobs),
    ),
    (
        "vgpu_vm_connects",
        "Connections of the VM since vgpud started.",
        None,
        |s| load(&s.connects),
    ),
];

/// A per-VM gauge: name (with unit), help, unit, value.
type VmGauge = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&VmStats) -> u64,
);

const VM_GAUGES: &[VmGauge] = &[
    (
        "vgpu_vm_queued_commands",
        "Commands queued in vgpud and not yet issued to the device.",
        None,
        |s| load(&s.queued),
    ),
    (
        "vgpu_vm_inflight_commands",
        "Commands issued to the device and not yet retired.",
        None,
        |s| load(&s.inflight),
    ),
    (
        "vgpu_vm_memory_used",
        "Device memory the VM holds now.",
        Some(Unit::Bytes),
        |s| load(&s.mem_used),
    ),
    (
        "vgpu_vm_memory_quota",
        "The VM's device memory quota (mem_quota).",
        Some(Unit::Bytes),
        |s| load(&s.mem_quota),
    ),
    (
        "vgpu_vm_connected",
        "1 while the VM is connected.",
        None,
        |s| s.connected.load(Relaxed) as u64,
    ),
    (
        "vgpu_vm_fenced",
        "1 while the connected VM's device is fenced (stopped until the guest resets it).",
        None,
        |s| {
            (s.connected.load(Relaxed) && s.status.load(Relaxed) == DeviceStatus::Fenced as u32)
                as u64
        },
    ),
    (
        "vgpu_vm_priority",
        "The VM's scheduling class (priority; higher goes first).",
        None,
        |s| s.priority.load(Relaxed) as u64,
    ),
];

/// A per-VM histogram: name (without unit), help, which one.
type VmHistogram = (
    &'static str,
    &'static str,
    fn(&VmStats) -> &LatencyHistogram,
);

impl VgpuCollector {
    /// The label set of VM `i`: name, id, its pool's name, and the device it is placed on
    /// now ("" while not connected).
    fn vm_labels(&self, i: usize) -> Labels {
        let (c, s) = &self.stats.vms[i];
        let pool_id = s.pool_id.load(Relaxed);
        let pool = self
            .stats
            .pools
            .iter()
            .find(|p| p.id == pool_id)
            .map_or_else(|| pool_id.to_string(), |p| p.name.clone());
        let device = s.device.load(Relaxed);
        vec![
            ("vm", c.name.clone()),
            ("vm_id", c.vm_id.to_string()),
            ("pool", pool),
            (
                "device",
                if device >= 0 {
                    device.to_string()
                } else {
                    String::new()
                },
            ),
        ]
    }

    /// Pool `pi`'s device-time counters on the devices it may run on, with their index.
    fn pool_counters(&self, pi: usize) -> impl Iterator<Item = (usize, &AtomicU64)> {
        let allowed = self.pool_devices.get(pi);
        self.stats.pools[pi]
            .device_ns_by_device
            .iter()
            .enumerate()
            .filter(move |(d, _)| allowed.is_some_and(|a| a.contains(d)))
    }

    fn encode_process(&self, d: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.stats;
        let mut f = Family::new(
            d,
            "vgpud_build",
            "vgpud's version and backend.",
            None,
            MetricType::Info,
        )?;
        f.enc.encode_info(&vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("backend", r.backend.clone()),
        ])?;
        let start = r
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Family::new(
            d,
            "vgpud_start_time",
            "When vgpud started, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?
        .gauge(&vec![], start)?;
        Family::new(
            d,
            "vgpud_uptime",
            "Time since vgpud started.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?
        .gauge(&vec![], r.started_mono.elapsed().as_secs_f64())
    }

    fn encode_vms(&self, d: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let vms = &self.stats.vms;
        let labels: Vec<Labels> = (0..vms.len()).map(|i| self.vm_labels(i)).collect();
        for (name, help, unit, get) in VM_COUNTERS {
            let mut f = Family::new(d, name, help, unit.as_ref(), MetricType::Counter)?;
            for ((_, s), l) in vms.iter().zip(&labels) {
                f.counter(l, get(s))?;
            }
        }
        // One series per status that occurred: a VM without errors has none.
        let mut f = Family::new(
            d,
            "vgpu_vm_command_errors",
            "Commands completed with an error status, by status.",
            None,
            MetricType::Counter,
        )?;
        for ((_, s), l) in vms.iter().zip(&labels) {
            for (code, n) in s.errors_by_status.iter().enumerate() {
                let n = load(n);
                if n > 0 {
                    let mut l = l.clone();
                    l.push(("status", status_name(code)));
                    f.counter(&l, n)?;
                }
            }
        }
        let mut f = Family::new(
            d,
            "vgpu_vm_device_time",
            "Device time the VM's commands used (measured per command as it retires).",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for ((_, s), l) in vms.iter().zip(&labels) {
            f.counter(l, seconds(load(&s.device_ns)))?;
        }
        for (name, help, unit, get) in VM_GAUGES {
            let mut f = Family::new(d, name, help, unit.as_ref(), MetricType::Gauge)?;
            for ((_, s), l) in vms.iter().zip(&labels) {
                f.gauge(l, get(s))?;
            }
        }
        let hists: [VmHistogram; 2] = [
            (
                "vgpu_vm_completion_latency",
                "Time from a command being queued in vgpud to its completion being posted \
                 (commands run on the device).",
                |s| &s.completion_latency,
            ),
            (
                "vgpu_vm_queue_wait",
                "Time from a command being queued in vgpud to its being issued to the device \
                 (what the scheduler's latency guarantee bounds).",
                |s| &s.queue_wait,
            ),
        ];
        for (name, help, get) in hists {
            let mut f = Family::new(d, name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for ((_, s), l) in vms.iter().zip(&labels) {
                f.histogram(l, &get(s).snapshot())?;
            }
        }
        Ok(())
    }

    fn encode_pools(&self, d: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.stats;
        let pool_labels = |p: &crate::stats::PoolStats| -> Labels {
            vec![("pool", p.name.clone()), ("pool_id", p.id.to_string())]
        };
        let on_device = |p: &crate::stats::PoolStats, dev: usize| -> Labels {
            let mut l = pool_labels(p);
            l.push(("device", dev.to_string()));
            l
        };
        let mut f = Family::new(
            d,
            "vgpu_pool_weight",
            "The pool's weight (share of device time among backlogged pools of one class).",
            None,
            MetricType::Gauge,
        )?;
        for p in &r.pools {
            f.gauge(&pool_labels(p), p.weight.load(Relaxed))?;
        }
        let mut f = Family::new(
            d,
            "vgpu_pool_device_time",
            "Device time the pool's commands used on the device.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (pi, p) in r.pools.iter().enumerate() {
            for (dev, ns) in self.pool_counters(pi) {
                f.counter(&on_device(p, dev), seconds(load(ns)))?;
            }
        }
        let mut f = Family::new(
            d,
            "vgpu_pool_device_time_share",
            "The pool's part (0..1) of all device time used on the device since vgpud \
             started; over a window: the rate of vgpu_pool_device_time_seconds_total over the \
             device's.",
            None,
            MetricType::Gauge,
        )?;
        for (pi, p) in r.pools.iter().enumerate() {
            for (dev, ns) in self.pool_counters(pi) {
                let total = r.device_ns.get(dev).map_or(0, load);
                let share = if total == 0 {
                    0.0
                } else {
                    load(ns) as f64 / total as f64
                };
                f.gauge(&on_device(p, dev), share)?;
            }
        }
        // docs/scheduling.md, "Fair share": backlogged pools of the top class on a device get
        // weight / Σ weights of the device's time, Σ over the pools that may run there.
        let mut f = Family::new(
            d,
            "vgpu_pool_entitled_share",
            "The pool's entitlement (0..1) on the device: its weight over the sum of the weights \
             of the pools that may run there (what fair share promises while they are all \
             backlogged in one class).",
            None,
            MetricType::Gauge,
        )?;
        for dev in 0..r.devices.len() {
            let on: Vec<usize> = (0..r.pools.len())
                .filter(|&p| self.pool_devices.get(p).is_some_and(|g| g.contains(&dev)))
                .collect();
            let sum: u64 = on
                .iter()
                .map(|&p| r.pools[p].weight.load(Relaxed) as u64)
                .sum();
            for &p in &on {
                let w = r.pools[p].weight.load(Relaxed) as f64;
                let share = if sum == 0 { 0.0 } else { w / sum as f64 };
                f.gauge(&on_device(&r.pools[p], dev), share)?;
            }
        }
        let mut f = Family::new(
            d,
            "vgpu_pool_memory_used",
            "Device memory the pool's VMs hold now, on every device.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for p in &r.pools {
            f.gauge(&pool_labels(p), p.quota.used())?;
        }
        let mut f = Family::new(
            d,
            "vgpu_pool_memory_quota",
            "The pool's device memory quota (absent: no quota).",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for p in &r.pools {
            let limit = p.quota.limit();
            if limit != u64::MAX {
                f.gauge(&pool_labels(p), limit)?;
            }
        }
        Ok(())
    }

    fn encode_devices(&self, d: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.stats;
        let dev_labels = |i: usize| -> Labels { vec![("device", i.to_string())] };
        let mut f = Family::new(
            d,
            "vgpu_device",
            "A device vgpud serves: its index, name and backend.",
            None,
            MetricType::Info,
        )?;
        for (i, name) in r.devices.iter().enumerate() {
            f.enc.encode_family(&dev_labels(i))?.encode_info(&vec![
                ("name", name.clone()),
                ("backend", r.backend.clone()),
            ])?;
        }
        let mut f = Family::new(
            d,
            "vgpu_device_time",
            "Device time of all commands run on the device (summed per command: with \
             concurrent kernels it grows faster than the wall clock).",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (i, ns) in r.device_ns.iter().enumerate() {
            f.counter(&dev_labels(i), seconds(load(ns)))?;
        }
        let mut f = Family::new(
            d,
            "vgpu_device_worker_processes",
            "Worker processes holding the device's VM contexts (fault_isolation = \"process\"); \
             absent where contexts run inside vgpud.",
            None,
            MetricType::Gauge,
        )?;
        for (i, w) in r.device_workers.iter().enumerate() {
            let n = w.load(Relaxed);
            if n >= 0 {
                f.gauge(&dev_labels(i), n)?;
            }
        }
        let mut f = Family::new(
            d,
            "vgpu_device_vms",
            "VMs placed on the device now.",
            None,
            MetricType::Gauge,
        )?;
        for i in 0..r.devices.len() {
            let n = r
                .vms
                .iter()
                .filter(|(_, s)| s.device.load(Relaxed) == i as i64)
                .count();
            f.gauge(&dev_labels(i), n as u64)?;
        }
        Ok(())
    }
}

impl Collector for VgpuCollector {
    fn encode(&self, mut d: DescriptorEncoder) -> fmt::Result {
        self.encode_process(&mut d)?;
        self.encode_vms(&mut d)?;
        self.encode_pools(&mut d)?;
        self.encode_devices(&mut d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        gpus = [1]
        [[vm]]
        name = "a"
        socket = "/nonexistent/a.sock"
        vm_id = 1
        pool = 4
        mem_quota = 65536
        [[vm]]
        name = "b"
        socket = "/nonexistent/b.sock"
        vm_id = 2
        pool = 9
    "#;

    fn setup() -> (Arc<StatsRegistry>, Registry) {
        let cfg = Config::from_toml(CONFIG).unwrap();
        let mut r = StatsRegistry::for_config(&cfg);
        r.backend = "cpu".into();
        r.set_devices(vec!["d0".into(), "d1".into()]);
        let r = Arc::new(r);
        let reg = registry(VgpuCollector::new(&cfg, r.clone()));
        (r, reg)
    }

    fn line<'t>(text: &'t str, start: &str) -> &'t str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in:\n{text}"))
    }

    #[test]
    fn reports_the_registry_as_it_is_when_scraped() {
        let (r, reg) = setup();
        let a = &r.vms[0].1;
        VmStats::bump(&a.commands, 12);
        a.count_error(Status::QuotaExceeded as u32);
        a.count_error(Status::QuotaExceeded as u32);
        a.count_error(999);
        VmStats::bump(&a.bytes_in, 4096);
        a.mem_used.store(1 << 20, Relaxed);
        a.device_ns.fetch_add(1_500_000_000, Relaxed);
        a.device.store(1, Relaxed);
        a.connected.store(true, Relaxed);
        a.completion_latency.observe(Duration::from_micros(30));
        r.pools[0].device_ns_by_device[1].fetch_add(3_000_000_000, Relaxed);
        r.pools[1].device_ns_by_device[1].fetch_add(1_000_000_000, Relaxed);
        r.device_ns[1].fetch_add(4_000_000_000, Relaxed);

        let t = render(&reg, Format::OpenMetrics).unwrap();
        let vm_a = r#"{vm="a",vm_id="1",pool="gold",device="1"}"#;
        assert_eq!(
            line(&t, "vgpu_vm_commands_total{"),
            format!("vgpu_vm_commands_total{vm_a} 12")
        );
        let errors = |status: &str| {
            format!(
                "vgpu_vm_command_errors_total{{vm=\"a\",vm_id=\"1\",pool=\"gold\",device=\"1\",\
                 status=\"{status}\"}}"
            )
        };
        assert!(
            t.contains(&format!("{} 2\n", errors("quota_exceeded"))),
            "{t}"
        );
        assert!(t.contains(&format!("{} 1\n", errors("other"))));
        assert!(
            !t.contains(r#"vgpu_vm_command_errors_total{vm="b""#),
            "no errors, no series"
        );
        assert!(t.contains(&format!("vgpu_vm_host_to_device_bytes_total{vm_a} 4096\n")));
        assert!(t.contains(&format!("vgpu_vm_memory_used_bytes{vm_a} 1048576\n")));
        assert!(t.contains(&format!("vgpu_vm_device_time_seconds_total{vm_a} 1.5\n")));
        let bucket = r#"vgpu_vm_completion_latency_seconds_bucket{le="0.00005",vm="a",vm_id="1",pool="gold",device="1"} 1"#;
        assert!(t.contains(bucket), "{t}");
        // b is not placed: an empty device label.
        assert!(t.contains(r#"vgpu_vm_commands_total{vm="b",vm_id="2",pool="free",device=""} 0"#));
        // gold may run on both devices, free on device 1 only: 3:1 there, gold alone on 0.
        assert!(t.contains(r#"vgpu_pool_entitled_share{pool="gold",pool_id="4",device="0"} 1.0"#));
        assert!(t.contains(r#"vgpu_pool_entitled_share{pool="gold",pool_id="4",device="1"} 0.75"#));
        assert!(t.contains(r#"vgpu_pool_entitled_share{pool="free",pool_id="9",device="1"} 0.25"#));
        assert!(
            !t.contains(r#"pool="free",pool_id="9",device="0""#),
            "free never runs on 0"
        );
        assert!(
            t.contains(r#"vgpu_pool_device_time_share{pool="gold",pool_id="4",device="1"} 0.75"#)
        );
        assert!(
            t.contains(r#"vgpu_pool_device_time_share{pool="gold",pool_id="4",device="0"} 0.0"#)
        );
        assert!(t.contains(r#"vgpu_pool_memory_quota_bytes{pool="gold",pool_id="4"} 1048576"#));
        assert!(
            !t.contains(r#"vgpu_pool_memory_quota_bytes{pool="free""#),
            "no quota"
        );
        assert!(t.contains("vgpu_device_vms{device=\"1\"} 1\n"));
        assert!(
            !t.contains("vgpu_device_worker_processes{"),
            "no workers: no sample"
        );
        r.device_workers[0].store(2, Relaxed);
        let t = render(&reg, Format::OpenMetrics).unwrap();
        assert!(t.contains("vgpu_device_worker_processes{device=\"0\"} 2\n"));
        assert!(t.contains("vgpu_device_vms{device=\"0\"} 0\n"));
        assert!(t.contains(r#"vgpud_build_info{version=""#));
        assert!(t.ends_with("# EOF\n"));

        // A reload's weight shows at the next scrape.
        r.pools[1].weight.store(3, Relaxed);
        let t = render(&reg, Format::Prometheus).unwrap();
        assert!(t.contains(r#"vgpu_pool_entitled_share{pool="gold",pool_id="4",device="1"} 0.5"#));
        assert!(
            t.contains("# TYPE vgpud_build_info gauge\n"),
            "no info type in 0.0.4"
        );
        assert!(!t.contains("# EOF"));
    }

    #[test]
    fn status_labels_are_the_abi_names() {
        assert_eq!(
            status_name(Status::QuotaExceeded as usize),
            "quota_exceeded"
        );
        assert_eq!(
            status_name(Status::UnknownOpcode as usize),
            "unknown_opcode"
        );
        assert_eq!(
            status_name(Status::KernelTimeout as usize),
            "kernel_timeout"
        );
        assert_eq!(status_name(31), "other");
    }

    #[test]
    fn the_format_follows_accept() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                "application/OpenMetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
