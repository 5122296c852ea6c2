//! The channel's physical limit: two processes bouncing a counter through one shared page,
//! both spinning, with the same atomic primitives the rings use.

use anyhow::{Context, Result};
use memmap2::MmapMut;
use std::fs::File;
use std::process::{Child, Command};
use std::time::Instant;
use vgpu_abi::ShmView;

const PING: usize = 0;
const PONG: usize = 64;
/// Value that tells the child to exit.
const QUIT: u64 = u64::MAX;

struct Shared {
    _map: MmapMut,
    view: ShmView,
}

fn map(file: &File) -> Result<Shared> {
    // SAFETY: a 4 KiB shared file mapping we keep alive next to the view; the other process
    // only touches it through atomics, and so do we (ShmView never hands out references).
    let mut map = unsafe { MmapMut::map_mut(file)? };
    // SAFETY: `map` is a live, page-aligned 4096-byte mapping stored in the same struct.
    let view = unsafe { ShmView::new(map.as_mut_ptr(), map.len()) };
    Ok(Shared { _map: map, view })
}

/// Runs the child side (`vgpu-bench pingpong-child PATH`).
pub fn child(path: &str) -> Result<()> {
    let f = File::options().read(true).write(true).open(path)?;
    let s = map(&f)?;
    let mut last = 0;
    loop {
        let v = s.view.load_u64(PING);
        if v != last {
            if v == QUIT {
                return Ok(());
            }
            last = v;
            s.view.store_u64(PONG, v);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Measures `iters` round trips; returns per-round-trip nanoseconds.
pub fn run(iters: usize, warmup: usize) -> Result<Vec<u64>> {
    let fd = rustix::fs::memfd_create("vgpu-pingpong", rustix::fs::MemfdFlags::empty())?;
    rustix::fs::ftruncate(&fd, 4096)?;
    let file = File::from(fd);
    let s = map(&file)?;
    use std::os::fd::AsRawFd;
    let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
    let exe = std::env::current_exe()?;
    let mut child: Child = Command::new(exe)
        .args(["pingpong-child", &path])
        .spawn()
        .context("spawning the ping-pong child")?;
    let mut out = Vec::with_capacity(iters);
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    for i in 1..=(warmup + iters) as u64 {
        let t0 = Instant::now();
        s.view.store_u64(PING, i);
        while s.view.load_u64(PONG) != i {
            std::hint::spin_loop();
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("ping-pong child stopped answering");
            }
        }
        if i as usize > warmup {
            out.push(t0.elapsed().as_nanos() as u64);
        }
    }
    s.view.store_u64(PING, QUIT);
    child.wait()?;
    Ok(out)
}
