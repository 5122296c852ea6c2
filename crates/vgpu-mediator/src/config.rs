//! vgpud's configuration: a TOML file naming the VMs it serves.
//!
//! ```toml
//! [mediator]
//! backend = "auto"          # auto | cpu
//! admin_socket = "/run/vgpu/admin.sock"
//! poll_us = 50              # how long to keep polling rings after the last work
//!
//! [[vm]]
//! name = "vm-a"
//! socket = "/run/vgpu/vm-a.sock"
//! vm_id = 1
//! pool_id = 0
//! priority = 2
//! mem_quota = "256MiB"
//! shm_size = "16MiB"
//! ```

use serde::Deserialize;
use std::collections::HashSet;
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

/// `[mediator]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediatorConfig {
    /// Backend choice.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Admin socket for `vgpuctl` (optional).
    pub admin_socket: Option<PathBuf>,
    /// Polling window after the last work, in microseconds (0 = never poll).
    #[serde(default = "default_poll_us")]
    pub poll_us: u64,
    /// Longest busy kernel accepted.
    #[serde(default = "default_max_kernel_us")]
    pub max_kernel_us: u32,
    /// Execution slots of the cpu backend's device (reported; used by the scheduler later).
    #[serde(default)]
    pub cpu_device_mem: Option<ByteSize>,
}

impl Default for MediatorConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            admin_socket: None,
            poll_us: default_poll_us(),
            max_kernel_us: default_max_kernel_us(),
            cpu_device_mem: None,
        }
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
    /// Pool id.
    #[serde(default)]
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
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            msg: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything that does not need the file system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.vms.is_empty() {
            return bad("no [[vm]] entries: vgpud has nothing to serve".into());
        }
        let (mut names, mut ids, mut socks) = (HashSet::new(), HashSet::new(), HashSet::new());
        for vm in &self.vms {
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
        expect_invalid(&GOOD.replace("pool_id = 3", "pool = 3"), "unknown field");
        expect_invalid(&GOOD.replace("\"64MiB\"", "\"64 parsecs\""), "unknown unit");
    }
}
