//! What the read commands show, from vgpud's stats JSON: one row per VM and per pool, with
//! rates from two snapshots. Read leniently (a missing field shows as `?`), so that vgpuctl
//! keeps working against a vgpud that adds fields.

use serde_json::Value;
use std::time::Instant;

/// The stats field with a VM's p99 command latency in microseconds, where vgpud has it.
pub const P99_FIELD: &str = "latency_p99_us";

/// Stats taken at one time.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When they were taken.
    pub at: Instant,
    /// vgpud's stats payload.
    pub stats: Value,
}

/// One VM's line.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub name: String,
    pub state: String,
    pub pool: String,
    pub priority: String,
    pub device: String,
    pub mem_used: u64,
    pub mem_quota: u64,
    /// Commands completed per second since the previous snapshot.
    pub cmds_per_s: Option<f64>,
    /// The VM's part of all the device time used since the previous snapshot (0..=1).
    pub share: Option<f64>,
    pub p99_us: Option<f64>,
}

/// One pool's line.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRow {
    pub name: String,
    pub weight: String,
    pub mem_used: u64,
    pub mem_quota: Option<u64>,
    pub share: Option<f64>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The name of the pool with id `id`.
pub fn pool_name(stats: &Value, id: &Value) -> String {
    stats["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"] == *id)
        .map_or_else(|| text(id), |p| text(&p["name"]))
}

/// `field` summed over the entries of `list` in `prev` and `cur` matched by name: the growth
/// per entry, `None` for an entry `prev` lacks.
fn deltas(prev: Option<&Snapshot>, cur: &Snapshot, list: &str, field: &str) -> Vec<Option<u64>> {
    let before = |name: &Value| {
        prev?.stats[list]
            .as_array()?
            .iter()
            .find(|e| e["name"] == *name)
            .map(|e| num(&e[field]))
    };
    cur.stats[list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| before(&e["name"]).map(|b| num(&e[field]).saturating_sub(b)))
        .collect()
}

fn shares(d: &[Option<u64>]) -> Vec<Option<f64>> {
    let total: u64 = d.iter().flatten().sum();
    d.iter()
        .map(|x| {
            x.map(|x| {
                if total == 0 {
                    0.0
                } else {
                    x as f64 / total as f64
                }
            })
        })
        .collect()
}

/// The VMs' rows; rates need `prev`.
pub fn vm_rows(prev: Option<&Snapshot>, cur: &Snapshot) -> Vec<VmRow> {
    let secs = prev.map(|p| cur.at.saturating_duration_since(p.at).as_secs_f64());
    let cmds = deltas(prev, cur, "vms", "commands");
    let shares = shares(&deltas(prev, cur, "vms", "device_ns"));
    cur.stats["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, vm)| VmRow {
            name: text(&vm["name"]),
            state: text(&vm["status"]),
            pool: pool_name(&cur.stats, &vm["pool_id"]),
            priority: text(&vm["priority"]),
            device: text(&vm["device"]),
            mem_used: num(&vm["mem_used"]),
            mem_quota: num(&vm["mem_quota"]),
            cmds_per_s: match (cmds[i], secs) {
                (Some(n), Some(s)) if s > 0.0 => Some(n as f64 / s),
                _ => None,
            },
            share: shares[i],
            p99_us: vm.get(P99_FIELD).and_then(Value::as_f64),
        })
        .collect()
}

/// The pools' rows; shares need `prev`.
pub fn pool_rows(prev: Option<&Snapshot>, cur: &Snapshot) -> Vec<PoolRow> {
    let shares = shares(&deltas(prev, cur, "pools", "device_ns"));
    cur.stats["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| PoolRow {
            name: text(&p["name"]),
            weight: text(&p["weight"]),
            mem_used: num(&p["mem_used"]),
            mem_quota: p["mem_quota"].as_u64(),
            share: shares[i],
        })
        .collect()
}

/// Whether any VM's stats carry a p99 latency.
pub fn has_p99(stats: &Value) -> bool {
    stats["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|vm| vm.get(P99_FIELD).is_some())
}

/// `n` bytes in binary units (`512 B`, `1.5 KiB`, `256.0 MiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A rate or share for a table cell: `-` before there are two snapshots.
pub fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// `vgpuctl list`: a plain table of the VMs.
pub fn list_text(stats: &Value) -> String {
    let mut out = format!(
        "backend: {}  devices: {}\n",
        text(&stats["backend"]),
        stats["devices"]
            .as_array()
            .map(|d| d.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| text(&stats["device"]))
    );
    out += &format!(
        "{:<16} {:>6} {:<12} {:>4} {:<13} {:>3} {:>10} {:>7} {:>11} {:>11}\n",
        "NAME",
        "VM_ID",
        "POOL",
        "PRIO",
        "STATUS",
        "DEV",
        "COMMANDS",
        "ERRORS",
        "MEM_USED",
        "MEM_QUOTA"
    );
    for vm in stats["vms"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<16} {:>6} {:<12} {:>4} {:<13} {:>3} {:>10} {:>7} {:>11} {:>11}\n",
            text(&vm["name"]),
            text(&vm["vm_id"]),
            pool_name(stats, &vm["pool_id"]),
            text(&vm["priority"]),
            text(&vm["status"]),
            text(&vm["device"]),
            num(&vm["commands"]),
            num(&vm["errors"]),
            bytes(num(&vm["mem_used"])),
            bytes(num(&vm["mem_quota"])),
        );
    }
    out
}

/// `vgpuctl show VM`: one field a line, by field name; sizes and times also in units.
pub fn show_text(vm: &Value) -> String {
    let mut out = String::new();
    for (k, v) in vm.as_object().into_iter().flatten() {
        let shown = match k.as_str() {
            "mem_used" | "mem_quota" | "bytes_in" | "bytes_out" => {
                format!("{} ({})", num(v), bytes(num(v)))
            }
            "device_ns" => format!("{} ({:.3} s)", num(v), num(v) as f64 / 1e9),
            _ => text(v),
        };
        out += &format!("{k:<16} {shown}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn stats(cmds: u64, ns_a: u64, ns_b: u64) -> Value {
        json!({
            "backend": "cpu", "device": "cpu0", "devices": ["cpu0"],
            "vms": [
                {"name": "a", "status": "ready", "pool_id": 1, "priority": 2, "device": 0,
                 "commands": cmds, "device_ns": ns_a, "mem_used": 2048, "mem_quota": 1 << 20},
                {"name": "b", "status": "disconnected", "pool_id": 1, "priority": 0,
                 "device": null, "commands": 0, "device_ns": ns_b, "mem_used": 0, "mem_quota": 1 << 20},
            ],
            "pools": [{"id": 1, "name": "gold", "weight": 3, "mem_used": 2048, "mem_quota": null,
                       "device_ns": ns_a + ns_b}],
        })
    }

    #[test]
    fn rates_come_from_two_snapshots() {
        let t0 = Instant::now();
        let a = Snapshot {
            at: t0,
            stats: stats(100, 0, 0),
        };
        let b = Snapshot {
            at: t0 + Duration::from_secs(2),
            stats: stats(300, 300, 100),
        };
        let first = vm_rows(None, &a);
        assert_eq!(first[0].cmds_per_s, None);
        assert_eq!(first[0].pool, "gold");
        let r = vm_rows(Some(&a), &b);
        assert_eq!(r[0].cmds_per_s, Some(100.0));
        assert_eq!(r[0].share, Some(0.75));
        assert_eq!(r[1].share, Some(0.25));
        assert_eq!(
            (r[1].device.as_str(), r[1].state.as_str()),
            ("-", "disconnected")
        );
        assert!(!has_p99(&b.stats));
        let p = pool_rows(Some(&a), &b);
        assert_eq!((p[0].share, p[0].mem_quota), (Some(1.0), None));
    }

    #[test]
    fn bytes_are_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
    }

    #[test]
    fn list_names_pools() {
        let t = list_text(&stats(1, 0, 0));
        assert!(t.contains("gold"), "{t}");
        assert!(t.lines().count() == 4, "{t}");
    }
}
