//! Starts a real vgpud for a benchmark, talks to its admin socket, and stops it afterwards.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running vgpud.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    /// The VM sockets, in config order.
    pub sockets: Vec<PathBuf>,
    /// vgpud's log (stderr).
    pub log: PathBuf,
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
    /// Further `key = value` lines of the entry (pool, priority, shm_size, …).
    pub extra: String,
}

impl Daemon {
    /// Starts vgpud (cpu backend) serving `n` VMs with `shm` bytes of BAR2 each.
    pub fn start(n: usize, shm: u64, poll_us: u64) -> Result<Self> {
        let vms: Vec<VmDef> = (0..n)
            .map(|i| VmDef {
                name: format!("bench{i}"),
                extra: format!("mem_quota = \"4GiB\"\nshm_size = {shm}\n"),
            })
            .collect();
        Self::with_config(
            "channel",
            &format!("[mediator]\nbackend = \"cpu\"\npoll_us = {poll_us}\n"),
            &vms,
        )
    }

    /// Starts vgpud with `head` (everything before the `[[vm]]` entries; an `admin_socket`
    /// line is added to `[mediator]`, which `head` must open first) and `vms`.
    pub fn with_config(tag: &str, head: &str, vms: &[VmDef]) -> Result<Self> {
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        Self::with_config_at(tag, head, vms, &level)
    }

    /// As [`Daemon::with_config`], with vgpud's log level (`RUST_LOG`) given.
    pub fn with_config_at(tag: &str, head: &str, vms: &[VmDef], log_level: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vgpu-bench-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let admin = dir.join("admin.sock");
        let head = head.replacen(
            "[mediator]\n",
            &format!("[mediator]\nadmin_socket = \"{}\"\n", admin.display()),
            1,
        );
        let mut cfg = head;
        let mut sockets = Vec::new();
        for (i, v) in vms.iter().enumerate() {
            let s = dir.join(format!("{}.sock", v.name));
            cfg += &format!(
                "\n[[vm]]\nname = \"{}\"\nsocket = \"{}\"\nvm_id = {}\n{}",
                v.name,
                s.display(),
                i + 1,
                v.extra
            );
            sockets.push(s);
        }
        let cfg_path = dir.join("vgpud.toml");
        std::fs::write(&cfg_path, cfg)?;
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
