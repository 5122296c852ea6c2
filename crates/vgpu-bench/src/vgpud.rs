//! Starts a real vgpud for a benchmark, talks to its admin socket, and stops it afterwards.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use vgpu_mediator::testkit::{ConfigBuilder, VmEntry};

/// A running vgpud.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    /// The VM sockets, in config order.
    pub sockets: Vec<PathBuf>,
    /// vgpud's log (stderr).
    pub log: PathBuf,
}

/// vgpud's log level: `RUST_LOG`, else `info`.
fn log_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
}

/// The vgpud to start: `$VGPUD`, else the one next to this executable.
pub fn vgpud_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VGPUD") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join("vgpud");
    if !p.exists() {
        bail!(
            "vgpud not found next to {} (build it, or set VGPUD)",
            exe.display()
        );
    }
    Ok(p)
}

/// One `[[vm]]` of a benchmark config.
#[derive(Debug, Clone)]
pub struct VmDef {
    /// VM name (its socket is `<name>.sock`).
    pub name: String,
    /// Further keys of the entry (pool, priority, shm_size, …), as TOML `key = value` lines.
    pub extra: String,
}

/// The config of `head` (TOML text without `[[vm]]` entries) and `vms`, their sockets in `dir`.
fn config(dir: &Path, head: &str, vms: &[VmDef]) -> Result<ConfigBuilder> {
    let mut cfg = ConfigBuilder::from_toml(head).context("the benchmark's vgpud config")?;
    for (i, v) in vms.iter().enumerate() {
        let mut vm = VmEntry::new(&v.name, dir.join(format!("{}.sock", v.name)), i as u32 + 1);
        vm.extra = toml::from_str(&v.extra)
            .with_context(|| format!("the keys of VM {:?}: {:?}", v.name, v.extra))?;
        cfg = cfg.vm(vm);
    }
    Ok(cfg)
}

impl Daemon {
    /// Starts vgpud (cpu backend) serving `n` VMs with `shm` bytes of BAR2 each.
    pub fn start(n: usize, shm: u64, poll_us: u64) -> Result<Self> {
        let dir = Self::dir("channel")?;
        let cfg = (0..n).fold(
            ConfigBuilder::new()
                .backend("cpu")
                .mediator("poll_us", i64::try_from(poll_us)?),
            |cfg, i| {
                let name = format!("bench{i}");
                let socket = dir.join(format!("{name}.sock"));
                cfg.vm(VmEntry::new(&name, socket, i as u32 + 1)
                    .mem_quota("4GiB")
                    .shm_size(shm))
            },
        );
        Self::launch(dir, cfg, &log_level())
    }

    /// Starts vgpud with `head` (the config without its `[[vm]]` entries, as TOML text; the
    /// admin socket is added) and `vms`.
    pub fn with_config(tag: &str, head: &str, vms: &[VmDef]) -> Result<Self> {
        Self::with_config_at(tag, head, vms, &log_level())
    }

    /// As [`Daemon::with_config`], with vgpud's log level (`RUST_LOG`) given.
    pub fn with_config_at(tag: &str, head: &str, vms: &[VmDef], log_level: &str) -> Result<Self> {
        let dir = Self::dir(tag)?;
        let cfg = config(&dir, head, vms)?;
        Self::launch(dir, cfg, log_level)
    }

    /// The folder of a benchmark's vgpud: its config, sockets and log.
    fn dir(tag: &str) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("vgpu-bench-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Writes `cfg` with an admin socket in `dir`, starts vgpud on it and waits until its
    /// sockets exist.
    fn launch(dir: PathBuf, cfg: ConfigBuilder, log_level: &str) -> Result<Self> {
        let cfg = cfg.admin_socket(&dir.join("admin.sock"));
        let sockets = cfg.vms().iter().map(|v| v.socket.clone()).collect();
        let cfg_path = dir.join("vgpud.toml");
        cfg.write(&cfg_path)?;
        let log = dir.join("vgpud.log");
        let child = Command::new(vgpud_path()?)
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", log_level)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting vgpud")?;
        let mut d = Self {
            child,
            dir,
            sockets,
            log,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn admin(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// The socket of the VM named `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let t0 = Instant::now();
        while !self.sockets.iter().all(|s| Path::new(s).exists()) || !self.admin().exists() {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "vgpud exited ({st}) during start-up:\n{}",
                    self.log_tail(20)
                );
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("vgpud did not create its sockets within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// vgpud's `stats` (admin socket) as JSON.
    pub fn stats(&self) -> Result<Value> {
        let mut c = UnixStream::connect(self.admin())?;
        writeln!(c, "stats")?;
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// The last `n` lines of vgpud's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The lines of vgpud's log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// vgpud's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// vgpud's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Stops vgpud: SIGTERM, then up to `grace` for it to exit. Still running after that, it
    /// is killed (SIGKILL) and this is an error.
    pub fn stop_within(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.child.try_wait()? {
            return Ok(st);
        }
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("vgpud did not exit within {grace:?} of SIGTERM (killed)")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Signal only a vgpud still running (one already reaped may have lost its pid).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&self.child),
                rustix::process::Signal::TERM,
            );
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_mediator::config::Config;

    /// A benchmark's head and VM keys, as the benchmarks write them, make a config vgpud takes.
    #[test]
    fn head_and_vm_keys_make_a_valid_config() {
        let head = "[mediator]\nbackend = \"cpu\"\npoll_us = 2000\nexecutor_cpus = [1]\n\
                    [scheduler]\npolicy = \"priority\"\nreserve_slots = 1\n\
                    [[pool]]\nid = 0\nweight = 1\n[[pool]]\nid = 1\nweight = 2\n";
        let vms = [
            VmDef {
                name: "hp".into(),
                extra: "priority = 5\nshm_size = \"1MiB\"\n".into(),
            },
            VmDef {
                name: "lp".into(),
                extra: "pool = 1\nmem_quota = \"1GiB\"\n".into(),
            },
        ];
        let dir = Path::new("/tmp/bench dir");
        let cfg = config(dir, head, &vms)
            .unwrap()
            .admin_socket(&dir.join("admin.sock"));
        let c = Config::from_toml(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(c.mediator.poll_us, 2000);
        assert_eq!(c.mediator.admin_socket, Some(dir.join("admin.sock")));
        assert_eq!(c.scheduler.reserve_slots, 1);
        assert_eq!(c.pools.len(), 2);
        assert_eq!((c.vms[0].vm_id, c.vms[0].priority), (1, 5));
        assert_eq!((c.vms[1].vm_id, c.vms[1].pool_id), (2, 1));
        assert_eq!(c.vms[1].socket, dir.join("lp.sock"));
        assert!(config(
            dir,
            head,
            &[VmDef {
                name: "x".into(),
                extra: "pool 1".into()
            }]
        )
        .is_err());
    }
}
