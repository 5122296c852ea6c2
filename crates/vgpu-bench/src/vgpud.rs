//! Starts a real vgpud (cpu backend) for a benchmark and stops it afterwards.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running vgpud with one VM socket per client.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    /// The VM sockets.
    pub sockets: Vec<PathBuf>,
}

fn vgpud_path() -> Result<PathBuf> {
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

impl Daemon {
    /// Starts vgpud serving `n` VMs with `shm` bytes of BAR2 each.
    pub fn start(n: usize, shm: u64, poll_us: u64) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vgpu-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cfg = format!("[mediator]\nbackend = \"cpu\"\npoll_us = {poll_us}\n");
        let mut sockets = Vec::new();
        for i in 0..n {
            let s = dir.join(format!("vm{i}.sock"));
            cfg += &format!(
                "[[vm]]\nname = \"bench{i}\"\nsocket = \"{}\"\nvm_id = {}\nmem_quota = \"4GiB\"\nshm_size = {shm}\n",
                s.display(),
                i + 1
            );
            sockets.push(s);
        }
        let cfg_path = dir.join("vgpud.toml");
        std::fs::write(&cfg_path, cfg)?;
        let child = Command::new(vgpud_path()?)
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting vgpud")?;
        let d = Self {
            child,
            dir,
            sockets,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&self) -> Result<()> {
        let t0 = Instant::now();
        while !self.sockets.iter().all(|s| Path::new(s).exists()) {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("vgpud did not create its sockets within 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
