//! The last step of a staged device-to-host copy: the guest copying each chunk out of the
//! staging area into the caller's memory. Plain copies (the baseline) and copies with
//! streaming stores ([`vgpu_abi::ShmView::read_bytes_streaming`], what
//! `vgpu_guest::Device::copy_dtoh` uses from 8 MiB on) alternate in one run, over the same
//! pattern as the guest's: four 2 MiB chunks of a shared memfd mapping, each rewritten before
//! it is read (as the device's DMA does), into one destination buffer.

use anyhow::Result;
use memmap2::MmapMut;
use serde_json::{json, Value};
use std::fs::File;
use std::time::Instant;
use vgpu_abi::ShmView;

/// Options of `vgpu-bench copy-out`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Bytes per copy (the destination buffer).
    #[arg(long, default_value_t = 64 << 20)]
    pub bytes: usize,
    /// Copies of each kind (they alternate).
    #[arg(long, default_value_t = 15)]
    pub rounds: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A staging chunk's size and how many the guest keeps in flight (`vgpu_guest` staging).
const CHUNK: usize = 2 << 20;
const DEPTH: usize = 4;

/// One copy of `out.len()` bytes out of the chunks; returns GB/s of the copying alone (the
/// rewrite of each chunk before it is read is not timed).
fn copy_once(view: &ShmView, out: &mut [u8], streaming: bool, stamp: u8) -> f64 {
    let mut copying = std::time::Duration::ZERO;
    for (i, piece) in out.chunks_mut(CHUNK).enumerate() {
        let at = (i % DEPTH) * CHUNK;
        // The device's write of the chunk: one byte per cache line is enough to take the
        // lines away from this core's caches, as a DMA write does.
        for line in (0..piece.len()).step_by(64) {
            view.write_bytes(at + line, &[stamp]);
        }
        let t = Instant::now();
        if streaming {
            view.read_bytes_streaming(at, piece);
        } else {
            view.read_bytes(at, piece);
        }
        copying += t.elapsed();
    }
    out.len() as f64 / copying.as_secs_f64() / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(o: &Opts) -> Result<Value> {
    anyhow::ensure!(
        o.bytes > 0 && o.rounds > 0,
        "--bytes and --rounds must be > 0"
    );
    let fd = rustix::fs::memfd_create("vgpu-copyout", rustix::fs::MemfdFlags::empty())?;
    rustix::fs::ftruncate(&fd, (CHUNK * DEPTH) as u64)?;
    let file = File::from(fd);
    // SAFETY: a private memfd no other process maps, kept alive (`_map`) as long as the view.
    let mut map = unsafe { MmapMut::map_mut(&file)? };
    // SAFETY: `map` is a live, page-aligned mapping of `map.len()` bytes that outlives `view`.
    let view = unsafe { ShmView::new(map.as_mut_ptr(), map.len()) };
    let mut out = vec![0u8; o.bytes];
    // Pages of the destination are faulted in before the first timed copy.
    copy_once(&view, &mut out, false, 1);
    let (mut plain, mut streaming) = (Vec::new(), Vec::new());
    for r in 0..o.rounds {
        let stamp = (r % 250) as u8 + 2;
        // Each copy must have moved the chunks' new bytes (the first of every line).
        let last = (o.bytes - 1) / CHUNK * CHUNK;
        plain.push(copy_once(&view, &mut out, false, stamp));
        anyhow::ensure!(
            out[0] == stamp && out[last] == stamp,
            "plain copy: stale bytes"
        );
        streaming.push(copy_once(&view, &mut out, true, stamp + 1));
        anyhow::ensure!(
            out[0] == stamp + 1 && out[last] == stamp + 1,
            "streaming copy: stale bytes"
        );
    }
    let (p, s) = (median(&mut plain), median(&mut streaming));
    println!(
        "copy-out: {} MiB in {} KiB chunks, {} rounds each, alternating",
        o.bytes >> 20,
        CHUNK >> 10,
        o.rounds
    );
    println!("  plain copies (baseline)      median {p:6.2} GB/s");
    println!(
        "  streaming stores             median {s:6.2} GB/s   ratio {:.3}",
        s / p
    );
    drop(map);
    Ok(json!({
        "bytes": o.bytes,
        "chunk": CHUNK,
        "rounds": o.rounds,
        "plain_gbps_median": p,
        "streaming_gbps_median": s,
        "ratio": s / p,
        "plain_gbps": plain,
        "streaming_gbps": streaming,
    }))
}
