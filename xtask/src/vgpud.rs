//! vgpud as a child process: its config file, start, wait until ready, stop with SIGTERM.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::qemu::tail_file;

/// Longest UNIX socket path we put in a config (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 100;

/// Where a test's sockets go: `dir`, or a folder in /tmp named after `tag` and this process
/// when `dir` would make the socket paths too long.
pub fn socket_dir(dir: &Path, tag: &str) -> Result<PathBuf> {
    if dir.join("admin.sock").as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok(dir.to_path_buf());
    }
    let d = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// One `[[vm]]` entry of vgpud's config.
#[derive(Clone, Debug, Serialize)]
pub struct VmConfig {
    pub name: String,
    pub socket: PathBuf,
    pub vm_id: u32,
    pub pool_id: u32,
    pub priority: u32,
    pub mem_quota: String,
    pub shm_size: String,
}

/// vgpud's config file.
#[derive(Clone, Debug)]
pub struct Config {
    pub backend: String,
    pub admin_socket: PathBuf,
    pub vms: Vec<VmConfig>,
}

impl Config {
    /// The TOML text vgpud reads. (xtask does not link vgpud's crate, which would build the
    /// whole mediator for every `cargo xtask`; `vgpu_mediator::testkit` is the same for code
    /// that does.)
    pub fn to_toml(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Mediator<'a> {
            backend: &'a str,
            admin_socket: &'a Path,
        }
        #[derive(Serialize)]
        struct File<'a> {
            mediator: Mediator<'a>,
            #[serde(rename = "vm")]
            vms: &'a [VmConfig],
        }
        let file = File {
            mediator: Mediator {
                backend: &self.backend,
                admin_socket: &self.admin_socket,
            },
            vms: &self.vms,
        };
        toml::to_string(&file).context("writing vgpud's config as TOML")
    }
}

/// A running vgpud. Dropping it kills the process if it was not stopped.
pub struct Vgpud {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Vgpud {
    /// Writes `config` to `config_path`, removes stale sockets, starts `bin` with its stderr
    /// (and stdout) in `log`, and waits until every VM socket listens (30 s at most).
    pub fn start(bin: &Path, config: &Config, config_path: &Path, log: &Path) -> Result<Self> {
        std::fs::write(config_path, config.to_toml()?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        for sock in config
            .vms
            .iter()
            .map(|v| &v.socket)
            .chain([&config.admin_socket])
        {
            let _ = std::fs::remove_file(sock);
        }
        let sockets: Vec<&Path> = config.vms.iter().map(|v| v.socket.as_path()).collect();
        Self::start_file(bin, config_path, &sockets, log)
    }

    /// Starts `bin` on an existing config file, its stderr (and stdout) in `log`, and waits
    /// until each of `sockets` listens (30 s at most).
    pub fn start_file(
        bin: &Path,
        config_path: &Path,
        sockets: &[&Path],
        log: &Path,
    ) -> Result<Self> {
        Self::start_wrapped(&[], bin, config_path, sockets, log)
    }

    /// [`Vgpud::start_file`] with `bin` run by a wrapper command (`wrapper[0]`, its arguments,
    /// then `bin` and vgpud's arguments), e.g. `setpriv` restricting its capabilities.
    pub fn start_wrapped(
        wrapper: &[String],
        bin: &Path,
        config_path: &Path,
        sockets: &[&Path],
        log: &Path,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("--config")
            .arg(config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Vgpud {
            child: Some(child),
            log: log.to_path_buf(),
        };
        me.wait_ready(sockets, Duration::from_secs(30))?;
        Ok(me)
    }

    fn wait_ready(&mut self, sockets: &[&Path], timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "vgpud exited early ({status}); its log {}:\n{}",
                    self.log.display(),
                    tail_file(&self.log, 40)
                );
            }
            if sockets.iter().all(|s| is_listening(s)) {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                let missing: Vec<String> = sockets
                    .iter()
                    .filter(|s| !is_listening(s))
                    .map(|s| s.display().to_string())
                    .collect();
                bail!(
                    "vgpud not ready after {} s (not listening: {}); its log {}:\n{}",
                    timeout.as_secs(),
                    missing.join(", "),
                    self.log.display(),
                    tail_file(&self.log, 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("vgpud was already stopped"),
        }
    }

    /// Whether the process is still running.
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and requires a clean (status 0) exit within 10 s.
    pub fn stop(mut self) -> Result<()> {
        let mut child = self.child.take().context("vgpud was already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "vgpud had already exited ({status}) before SIGTERM; its log:\n{}",
                tail_file(&self.log, 40)
            );
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "vgpud did not exit within 10 s of SIGTERM (killed); its log:\n{}",
                    tail_file(&self.log, 40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!(
                "vgpud exited with {status} after SIGTERM; its log:\n{}",
                tail_file(&self.log, 40)
            );
        }
        Ok(())
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// True when a UNIX socket bound at `path` is listening. Checked in `/proc/net/unix` so that no
/// probe connection reaches vgpud (it would count as a VM connecting); falls back to connecting
/// where `/proc/net/unix` cannot be read.
pub fn is_listening(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    match std::fs::read_to_string("/proc/net/unix") {
        Ok(table) => listening_in_table(&table, path),
        Err(_) => std::os::unix::net::UnixStream::connect(path).is_ok(),
    }
}

/// `/proc/net/unix`: `Num RefCount Protocol Flags Type St Inode Path`; a listening socket has
/// `__SO_ACCEPTCON` (0x10000) in Flags.
fn listening_in_table(table: &str, path: &Path) -> bool {
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 8
            && cols[7..].join(" ") == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & 0x10000 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_listening_socket() {
        let dir = std::env::temp_dir().join(format!("xtask-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        assert!(!is_listening(&path));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path));
        drop(listener);
        assert!(!is_listening(&path));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_toml_shape() {
        let c = Config {
            backend: "auto".into(),
            admin_socket: "/t/admin \"a\".sock".into(),
            vms: vec![VmConfig {
                name: "vm-a".into(),
                socket: "/t/vm-a.sock".into(),
                vm_id: 1,
                pool_id: 0,
                priority: 2,
                mem_quota: "256MiB".into(),
                shm_size: "16MiB".into(),
            }],
        };
        let t: toml::Table = toml::from_str(&c.to_toml().unwrap()).unwrap();
        let m = t["mediator"].as_table().unwrap();
        assert_eq!(m["backend"].as_str(), Some("auto"));
        assert_eq!(m["admin_socket"].as_str(), Some("/t/admin \"a\".sock"));
        let vms = t["vm"].as_array().unwrap();
        assert_eq!(vms.len(), 1);
        let vm = vms[0].as_table().unwrap();
        assert_eq!(vm["name"].as_str(), Some("vm-a"));
        assert_eq!(vm["socket"].as_str(), Some("/t/vm-a.sock"));
        assert_eq!(vm["vm_id"].as_integer(), Some(1));
        assert_eq!(vm["priority"].as_integer(), Some(2));
        assert_eq!(vm["shm_size"].as_str(), Some("16MiB"));
    }
}
