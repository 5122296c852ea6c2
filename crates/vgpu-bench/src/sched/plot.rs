//! The scheduler benchmark's plot, drawn into an RGB raster and written as a PNG without any
//! library (zlib "stored" blocks: larger files, no compressor needed). No text: the legend is
//! printed by the benchmark and in `docs/scheduling.md`.

use anyhow::Result;
use std::path::Path;

const W: usize = 1200;
const H: usize = 500;
const MARGIN: usize = 40;

/// Colours: HP cases (alone, priority, fifo, reserve) and pools 0, 1, 2.
pub const CASE_COLOURS: [[u8; 3]; 4] = [[0, 0, 0], [31, 90, 220], [220, 40, 40], [20, 150, 60]];
pub const POOL_COLOURS: [[u8; 3]; 3] = [[240, 140, 0], [130, 60, 180], [0, 150, 150]];

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }

    fn dot(&mut self, x: i64, y: i64, c: [u8; 3], thick: i64) {
        for dx in 0..thick {
            for dy in 0..thick {
                let (x, y) = (x + dx, y + dy);
                if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
                    let i = (y as usize * W + x as usize) * 3;
                    self.px[i..i + 3].copy_from_slice(&c);
                }
            }
        }
    }

    /// A line; `dash` > 0 draws `dash` pixels on, `dash` off.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: [u8; 3], thick: i64, dash: usize) {
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) as usize).max(1);
        for i in 0..=n {
            if dash > 0 && (i / dash) % 2 == 1 {
                continue;
            }
            let t = i as f64 / n as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            self.dot(x.round() as i64, y.round() as i64, c, thick);
        }
    }
}

/// A panel: pixel box and data ranges.
struct Panel {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    dx: (f64, f64),
    dy: (f64, f64),
}

impl Panel {
    fn map(&self, x: f64, y: f64) -> (f64, f64) {
        let fx = (x - self.dx.0) / (self.dx.1 - self.dx.0);
        let fy = (y - self.dy.0) / (self.dy.1 - self.dy.0);
        (
            self.x0 + fx.clamp(0.0, 1.0) * (self.x1 - self.x0),
            self.y1 - fy.clamp(0.0, 1.0) * (self.y1 - self.y0),
        )
    }

    fn frame(&self, c: &mut Canvas, xgrid: &[f64], ygrid: &[f64]) {
        let grey = [220, 220, 220];
        for &x in xgrid {
            c.line(self.map(x, self.dy.0), self.map(x, self.dy.1), grey, 1, 0);
        }
        for &y in ygrid {
            c.line(self.map(self.dx.0, y), self.map(self.dx.1, y), grey, 1, 0);
        }
        let k = [0, 0, 0];
        c.line((self.x0, self.y1), (self.x1, self.y1), k, 2, 0);
        c.line((self.x0, self.y0), (self.x0, self.y1), k, 2, 0);
    }
}

/// Left: CDFs of the high-priority round trips (ns) per case, log x from 50 µs, grid at
/// 100 µs / 1 ms / 10 ms. Right: each pool's share per window over time (grid every 0.1 and
/// every second), with the entitlement step functions dashed.
pub fn sched_png(
    path: &Path,
    cdfs: &[Vec<u64>],
    shares: &[(f64, Vec<f64>)],
    entitlement: &[(f64, Vec<f64>)],
    t_end: f64,
) -> Result<()> {
    let mut c = Canvas::new();
    let half = W / 2;
    let max_ns = cdfs.iter().flatten().copied().max().unwrap_or(1_000_000) as f64;
    let left = Panel {
        x0: MARGIN as f64,
        x1: (half - MARGIN / 2) as f64,
        y0: MARGIN as f64,
        y1: (H - MARGIN) as f64,
        dx: (50e3f64.log10(), (max_ns * 1.2).log10().max(6.0)),
        dy: (0.0, 1.0),
    };
    left.frame(&mut c, &[5.0, 6.0, 7.0], &[0.5, 0.9, 0.99]);
    for (k, samples) in cdfs.iter().enumerate() {
        let mut s = samples.clone();
        s.sort_unstable();
        let n = s.len().max(1) as f64;
        let mut prev: Option<(f64, f64)> = None;
        for (i, &v) in s.iter().enumerate() {
            let p = left.map((v.max(1) as f64).log10(), (i + 1) as f64 / n);
            if let Some(q) = prev {
                c.line(q, p, CASE_COLOURS[k % 4], 2, 0);
            }
            prev = Some(p);
        }
    }
    let right = Panel {
        x0: (half + MARGIN / 2) as f64,
        x1: (W - MARGIN) as f64,
        y0: MARGIN as f64,
        y1: (H - MARGIN) as f64,
        dx: (0.0, t_end),
        dy: (0.0, 0.8),
    };
    let secs: Vec<f64> = (1..t_end.ceil() as usize).map(|s| s as f64).collect();
    let tenths: Vec<f64> = (1..8).map(|i| i as f64 / 10.0).collect();
    right.frame(&mut c, &secs, &tenths);
    for (k, pair) in entitlement.windows(2).enumerate() {
        let _ = k;
        for p in 0..pair[0].1.len() {
            let a = right.map(pair[0].0, pair[0].1[p]);
            let b = right.map(pair[1].0, pair[0].1[p]);
            c.line(a, b, POOL_COLOURS[p % 3], 1, 6);
        }
    }
    for pair in shares.windows(2) {
        for p in 0..pair[0].1.len() {
            let a = right.map(pair[0].0, pair[0].1[p]);
            let b = right.map(pair[1].0, pair[1].1[p]);
            c.line(a, b, POOL_COLOURS[p % 3], 2, 0);
        }
    }
    std::fs::write(path, encode_png(&c.px, W, H))?;
    Ok(())
}

fn crc32(data: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for d in data {
        for &b in *d {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// An 8-bit RGB PNG of `rgb` (`w × h × 3` bytes).
fn encode_png(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut raw = Vec::with_capacity((w * 3 + 1) * h);
    for row in rgb.chunks(w * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_png_header() {
        assert_eq!(crc32(&[b"IEND"]), 0xae42_6082);
        let p = encode_png(&[255; 2 * 2 * 3], 2, 2);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&p[12..16], b"IHDR");
        assert_eq!(&p[p.len() - 8..p.len() - 4], b"IEND");
    }
}
