//! A vgpud (cpu backend) for the tests that call this library's entry points in-process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// vgpud built next to this test (cargo builds the workspace's binaries for `cargo test
/// --workspace`), or `VGPU_VGPUD`.
pub fn vgpud_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VGPU_VGPUD") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("vgpud");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build -p vgpu-mediator) or set VGPU_VGPUD",
        bin.display()
    );
    bin
}

pub struct Vgpud(Child);
impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_vgpud(dir: &Path) -> (Vgpud, PathBuf) {
    let sock = dir.join("vm-a.sock");
    let cfg = dir.join("vgpud.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mediator]\nbackend = \"cpu\"\n\n[[vm]]\nname = \"vm-a\"\nsocket = {:?}\nvm_id = 1\n\
             pool = 0\nshm_size = \"16MiB\"\nmem_quota = \"256MiB\"\n",
            sock
        ),
    )
    .unwrap();
    let child = Command::new(vgpud_bin())
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vgpud.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "vgpud did not listen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (Vgpud(child), sock)
}
