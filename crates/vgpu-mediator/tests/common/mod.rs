//! A real vgpud (the binary built from this crate) on real sockets, for integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vgpu_abi::cmd::reference as kernels;
use vgpu_guest::Device;

/// A VM entry for the test config.
pub struct Vm {
    pub name: &'static str,
    pub vm_id: u32,
    pub pool_id: u32,
    pub priority: u32,
    pub quota: u64,
    pub shm: u64,
    /// More keys of the `[[vm]]` table, as TOML lines.
    pub extra: String,
}

impl Vm {
    pub fn new(name: &'static str, vm_id: u32) -> Self {
        Self {
            name,
            vm_id,
            pool_id: 0,
            priority: 0,
            quota: 256 << 20,
            shm: 1 << 20,
            extra: String::new(),
        }
    }
}

pub struct Vgpud {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Vgpud {
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }
    pub fn admin(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    /// `stats` JSON from the admin socket.
    pub fn stats(&self) -> serde_json::Value {
        use std::io::{BufRead, BufReader, Write};
        let mut c = std::os::unix::net::UnixStream::connect(self.admin()).unwrap();
        writeln!(c, "stats").unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
    pub fn vm_stats(&self, name: &str) -> serde_json::Value {
        self.stats()["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap()
    }
    pub fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, rustix::process::Signal::TERM);
        wait_timeout(&mut self.child, Duration::from_secs(10))
            .expect("vgpud did not exit on SIGTERM")
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(c: &Child, s: rustix::process::Signal) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(c), s);
}

pub fn wait_timeout(c: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if t0.elapsed() > d {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `fault_isolation = "…"` from `VGPU_TEST_ISOLATION` (empty when unset: the default).
pub fn isolation_line() -> String {
    match std::env::var("VGPU_TEST_ISOLATION") {
        Ok(v) if !v.is_empty() => format!("fault_isolation = \"{v}\""),
        _ => String::new(),
    }
}

/// The backend the tests run on: `VGPU_TEST_BACKEND` (`cpu`, the default, in CI; `cuda` on
/// the GPU host).
pub fn backend() -> String {
    std::env::var("VGPU_TEST_BACKEND").unwrap_or_else(|_| "cpu".into())
}

/// Skips (visibly) a test whose subject is the cpu device itself.
pub fn cpu_only(test: &str) -> bool {
    if backend() == "cpu" {
        return false;
    }
    eprintln!("SKIPPED (cpu backend only): {test}");
    true
}

pub fn config_text(dir: &Path, vms: &[Vm], extra: &str) -> String {
    let mut s = format!(
        "[mediator]\nbackend = \"{}\"\nadmin_socket = \"{}\"\n{extra}\n",
        backend(),
        dir.join("admin.sock").display()
    );
    for v in vms {
        s += &format!(
            "[[vm]]\nname = \"{}\"\nsocket = \"{}\"\nvm_id = {}\npool_id = {}\npriority = {}\nmem_quota = {}\nshm_size = {}\n{}\n",
            v.name,
            dir.join(format!("{}.sock", v.name)).display(),
            v.vm_id,
            v.pool_id,
            v.priority,
            v.quota,
            v.shm,
            v.extra
        );
    }
    s
}

/// Starts vgpud and waits until every VM socket exists.
pub fn start(vms: &[Vm]) -> Vgpud {
    start_with(vms, "")
}

pub fn start_with(vms: &[Vm], extra: &str) -> Vgpud {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vgpud.toml");
    std::fs::write(&cfg, config_text(dir.path(), vms, extra)).unwrap();
    let log = dir.path().join("vgpud.log");
    // VGPU_VGPUD runs the tests against another vgpud: the GPU host's, or an older build (to
    // show that a test catches the defect it was written for).
    let bin = std::env::var_os("VGPU_VGPUD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vgpud")));
    let child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Vgpud { child, dir, log };
    let t0 = Instant::now();
    while !vms.iter().all(|v| d.socket(v.name).exists()) || !d.admin().exists() {
        assert!(d.alive(), "vgpud exited early:\n{}", d.log_text());
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "vgpud not ready:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    d
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A workload whose results are checked bit-exactly against the reference kernels.
pub fn workload(dev: &Device, rng: &mut Rng) {
    let n = 4096usize;
    let x = rng.f32s(n);
    let y = rng.f32s(n);
    let px = dev.alloc((n * 4) as u64).unwrap();
    let py = dev.alloc((n * 4) as u64).unwrap();
    dev.copy_htod(px, &f32_bytes(&x)).unwrap();
    dev.copy_htod(py, &f32_bytes(&y)).unwrap();
    dev.saxpy(px, py, n as u32, 1.5).unwrap();
    let mut out = vec![0u8; n * 4];
    dev.copy_dtoh(&mut out, py).unwrap();
    let mut want = y.clone();
    kernels::saxpy(1.5, &x, &mut want);
    assert_eq!(bytes_f32(&out), want, "saxpy");

    let (m, k, nn) = (17usize, 9usize, 13usize);
    let a = rng.f32s(m * k);
    let b = rng.f32s(k * nn);
    let c = rng.f32s(m * nn);
    let (pa, pb, pc) = (
        dev.alloc((m * k * 4) as u64).unwrap(),
        dev.alloc((k * nn * 4) as u64).unwrap(),
        dev.alloc((m * nn * 4) as u64).unwrap(),
    );
    dev.copy_htod(pa, &f32_bytes(&a)).unwrap();
    dev.copy_htod(pb, &f32_bytes(&b)).unwrap();
    dev.copy_htod(pc, &f32_bytes(&c)).unwrap();
    dev.sgemm(pa, pb, pc, m as u32, nn as u32, k as u32, 0.5, 2.0)
        .unwrap();
    let mut out = vec![0u8; m * nn * 4];
    dev.copy_dtoh(&mut out, pc).unwrap();
    let mut want = c.clone();
    kernels::sgemm(m, nn, k, 0.5, &a, &b, 2.0, &mut want);
    assert_eq!(bytes_f32(&out), want, "sgemm");

    dev.vector_add(px, px, py, n as u32).unwrap();
    dev.reduce_sum(py, pc, n as u32).unwrap();
    let mut s = [0u8; 4];
    dev.copy_dtoh(&mut s, pc).unwrap();
    let doubled: Vec<f32> = x.iter().map(|v| v + v).collect();
    assert_eq!(
        f32::from_le_bytes(s),
        kernels::reduce_sum(&doubled),
        "reduce"
    );

    dev.memset_d32(pa, 0xdead_beef, (m * k) as u64).unwrap();
    dev.copy_dtod(pb, pa, 64).unwrap();
    let mut out = vec![0u8; 64];
    dev.copy_dtoh(&mut out, pb).unwrap();
    assert!(
        out.chunks(4).all(|c| c == 0xdead_beef_u32.to_le_bytes()),
        "memset/d2d"
    );
    for p in [px, py, pa, pb, pc] {
        dev.free(p).unwrap();
    }
}

/// The CPUs this test process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(None).unwrap();
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect()
}

/// `Cpus_allowed_list` of the task whose `/proc/…` directory is `dir` (a process: its main
/// thread; `/proc/PID/task/TID`: that thread).
pub fn cpus_allowed(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .unwrap()
}
