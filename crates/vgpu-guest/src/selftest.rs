//! The `vgpu-smi selftest` workload: runs real work through the vGPU and checks every result
//! against a CPU computation in the guest.
//!
//! Reference computations are plain f32. `sgemm` is computed in i-k-j order with an f32
//! accumulator per output element (`acc[i][j] += a[i][p] * b[p][j]` for p ascending), then
//! `c = alpha * acc + beta * c`; it is compared with a tolerance of 1e-3 relative to the sum of
//! the magnitudes of the terms (`|alpha| * Σ|a·b| + |beta·c|`), so any summation order the
//! device uses passes. Element-wise kernels use 1e-4 relative plus 1e-6 absolute; the
//! reduction uses 1e-4 relative to `Σ|x|`.

use std::io::Write;

use crate::compute::Launch;
use crate::{Device, Error};
use vgpu_abi::regs::CAP_MODULES;

/// PTX of `vadd(const float* a, const float* b, float* c, unsigned n)`, the same file the
/// host's conformance suite uses (`crates/vgpu-mediator/kernels/ptx/vector_add.cu`).
const VECTOR_ADD_PTX: &str = include_str!("../../vgpu-mediator/kernels/ptx/vector_add.ptx");

/// Options of the self-test.
#[derive(Debug, Clone)]
pub struct Options {
    /// Elements of the vector kernels.
    pub n: u32,
    /// Edge of the square sgemm.
    pub sgemm: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            n: 65536,
            sgemm: 64,
        }
    }
}

/// A simple deterministic generator (xorshift64).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed` (any value, including 0).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A float in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` floats in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn close(got: f32, want: f32, scale: f32, rel: f32) -> bool {
    (got - want).abs() <= rel * scale + 1e-6
}

/// Compares element-wise; the error names the first mismatch.
fn compare(what: &str, got: &[f32], want: &[f32], scale: &[f32], rel: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} results, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        if !close(g, w, s, rel) {
            return Err(format!("{what}: element {i} is {g}, expected {w}"));
        }
    }
    Ok(())
}

/// CPU reference sgemm (i-k-j order, f32 accumulate) and the magnitude scale per element.
#[allow(clippy::too_many_arguments)]
fn sgemm_ref(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut acc = vec![0f32; m * n];
    let mut mag = vec![0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..n {
                acc[i * n + j] += aip * b[p * n + j];
                mag[i * n + j] += (aip * b[p * n + j]).abs();
            }
        }
    }
    let out = acc
        .iter()
        .zip(c)
        .map(|(s, c)| alpha * s + beta * c)
        .collect();
    let scale = mag
        .iter()
        .zip(c)
        .map(|(m, c)| alpha.abs() * m + (beta * c).abs())
        .collect();
    (out, scale)
}

struct Run<'a, W: Write> {
    dev: &'a Device,
    out: W,
    allocs: Vec<u64>,
}

impl<W: Write> Run<'_, W> {
    fn step(&mut self, line: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.out, "selftest: {line}");
        let _ = self.out.flush();
    }

    fn alloc(&mut self, size: u64) -> Result<u64, String> {
        let p = self
            .dev
            .alloc(size)
            .map_err(|e| format!("alloc {size} bytes: {e}"))?;
        self.allocs.push(p);
        Ok(p)
    }

    fn upload(&self, p: u64, v: &[f32]) -> Result<(), String> {
        self.dev
            .copy_htod(p, &to_bytes(v))
            .map_err(|e| format!("copy to device: {e}"))
    }

    fn download(&self, p: u64, n: usize) -> Result<Vec<f32>, String> {
        let mut b = vec![0u8; n * 4];
        self.dev
            .copy_dtoh(&mut b, p)
            .map_err(|e| format!("copy from device: {e}"))?;
        Ok(from_bytes(&b))
    }

    fn body(&mut self, opts: &Options) -> Result<(), String> {
        let e = |what: &'static str| move |err: Error| format!("{what}: {err}");
        let info = self.dev.info();
        let mut rng = XorShift::new(info.vm_id as u64);

        self.dev.nop().map_err(e("nop"))?;
        self.step(format_args!("nop ok"));
        let (used0, quota) = self.dev.mem_info().map_err(e("mem_info"))?;
        self.step(format_args!("mem_info used={used0} quota={quota} ok"));

        // saxpy
        let n = opts.n as usize;
        let bytes = n as u64 * 4;
        let x = rng.vec(n);
        let y = rng.vec(n);
        let alpha = 1.75f32;
        let px = self.alloc(bytes)?;
        let py = self.alloc(bytes)?;
        self.upload(px, &x)?;
        self.upload(py, &y)?;
        self.dev.saxpy(px, py, opts.n, alpha).map_err(e("saxpy"))?;
        let got = self.download(py, n)?;
        let want: Vec<f32> = x.iter().zip(&y).map(|(x, y)| alpha * x + y).collect();
        let scale: Vec<f32> = x
            .iter()
            .zip(&y)
            .map(|(x, y)| (alpha * x).abs() + y.abs())
            .collect();
        compare("saxpy", &got, &want, &scale, 1e-4)?;
        self.step(format_args!("saxpy n={n} ok"));

        // vector_add: c = x + y'
        let pc = self.alloc(bytes)?;
        self.dev
            .vector_add(px, py, pc, opts.n)
            .map_err(e("vector_add"))?;
        let c = self.download(pc, n)?;
        let want: Vec<f32> = x.iter().zip(&got).map(|(a, b)| a + b).collect();
        let scale: Vec<f32> = x.iter().zip(&got).map(|(a, b)| a.abs() + b.abs()).collect();
        compare("vector_add", &c, &want, &scale, 1e-4)?;
        self.step(format_args!("vector_add n={n} ok"));

        // reduce_sum over x
        let pout = self.alloc(4)?;
        self.dev
            .reduce_sum(px, pout, opts.n)
            .map_err(e("reduce_sum"))?;
        let s = self.download(pout, 1)?[0];
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let mag: f64 = x.iter().map(|&v| v.abs() as f64).sum();
        if (s as f64 - want).abs() > 1e-4 * mag + 1e-3 {
            return Err(format!("reduce_sum: got {s}, expected {want}"));
        }
        self.step(format_args!("reduce_sum n={n} ok"));

        // sgemm
        let d = opts.sgemm as usize;
        let (ga, gb, gc) = (rng.vec(d * d), rng.vec(d * d), rng.vec(d * d));
        let (galpha, gbeta) = (1.5f32, 0.5f32);
        let mb = (d * d * 4) as u64;
        let (pa, pb, pgc) = (self.alloc(mb)?, self.alloc(mb)?, self.alloc(mb)?);
        self.upload(pa, &ga)?;
        self.upload(pb, &gb)?;
        self.upload(pgc, &gc)?;
        let s = opts.sgemm;
        self.dev
            .sgemm(pa, pb, pgc, s, s, s, galpha, gbeta)
            .map_err(e("sgemm"))?;
        let got = self.download(pgc, d * d)?;
        let (want, scale) = sgemm_ref(&ga, &gb, &gc, d, d, d, galpha, gbeta);
        compare("sgemm", &got, &want, &scale, 1e-3)?;
        self.step(format_args!("sgemm m=n=k={d} ok"));

        // memset: bytes, then words over the middle
        let mlen = 4096u64 + 12;
        let pm = self.alloc(mlen)?;
        self.dev.memset_d8(pm, 0xA5, mlen).map_err(e("memset_d8"))?;
        self.dev
            .memset_d32(pm + 4, 0xDEAD_BEEF, 1000)
            .map_err(e("memset_d32"))?;
        let mut mb = vec![0u8; mlen as usize];
        self.dev
            .copy_dtoh(&mut mb, pm)
            .map_err(e("copy from device"))?;
        for (i, &b) in mb.iter().enumerate() {
            let want = if (4..4004).contains(&i) {
                0xDEAD_BEEFu32.to_le_bytes()[(i - 4) % 4]
            } else {
                0xA5
            };
            if b != want {
                return Err(format!(
                    "memset: byte {i} is {b:#04x}, expected {want:#04x}"
                ));
            }
        }
        self.step(format_args!("memset ok"));

        // d2d
        let pd = self.alloc(bytes)?;
        self.dev.copy_dtod(pd, px, bytes).map_err(e("copy_dtod"))?;
        let back = self.download(pd, n)?;
        if back.iter().zip(&x).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err("copy_dtod: copy differs from source".into());
        }
        self.step(format_args!("copy_dtod {bytes} bytes ok"));

        // A PTX module, where the device runs them (the cuda backend).
        if info.capabilities & CAP_MODULES != 0 {
            let m = self
                .dev
                .load_module(VECTOR_ADD_PTX)
                .map_err(e("load PTX module"))?;
            let f = m.function("vadd").map_err(e("get function vadd"))?;
            let pp = self.alloc(bytes)?;
            let l = Launch::new(&f)
                .grid([opts.n.div_ceil(256), 1, 1])
                .block([256, 1, 1])
                .arg_ptr(px)
                .arg_ptr(pd)
                .arg_ptr(pp)
                .arg_u32(opts.n);
            self.dev.launch_function(&l).map_err(e("launch vadd"))?;
            let got = self.download(pp, n)?;
            // x + x, exact in f32.
            let want: Vec<f32> = x.iter().map(|v| v + v).collect();
            if got
                .iter()
                .zip(&want)
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return Err("PTX vadd: result differs from x + x".into());
            }
            m.unload().map_err(e("unload PTX module"))?;
            self.step(format_args!("ptx module vadd n={n} ok"));
        } else {
            self.step(format_args!(
                "ptx module skipped: the {} backend runs no PTX",
                info.backend_name()
            ));
        }

        // A chunked, pipelined round trip of several staging chunks and an odd tail.
        let big = ((3u64 << 20) + 12345)
            .min(quota.saturating_sub(used0 + 6 * bytes) / 2)
            .max(1);
        let pbig = self.alloc(big)?;
        let data: Vec<u8> = (0..big).map(|_| rng.next_u64() as u8).collect();
        self.dev.copy_htod(pbig, &data).map_err(e("copy_htod"))?;
        let mut back = vec![0u8; big as usize];
        self.dev
            .copy_dtoh(&mut back, pbig)
            .map_err(e("copy_dtoh"))?;
        if back != data {
            return Err(format!("copy round trip of {big} bytes differs"));
        }
        self.step(format_args!("copy round trip {big} bytes ok"));

        self.dev.synchronize().map_err(e("synchronize"))?;
        for p in std::mem::take(&mut self.allocs) {
            self.dev.free(p).map_err(e("free"))?;
        }
        let (used, _) = self.dev.mem_info().map_err(e("mem_info"))?;
        if used != used0 {
            return Err(format!(
                "memory in use is {used} bytes after freeing everything, was {used0} before"
            ));
        }
        self.step(format_args!("free ok, mem used={used}"));
        let mode = self.dev.wait_mode();
        if mode != "poll" {
            // With the flag held up (`enable_irq`), the completion must raise the interrupt.
            self.dev.enable_irq(true);
            let r = self.dev.nop().and_then(|()| {
                self.dev
                    .wait_irq(std::time::Duration::from_secs(10).min(self.dev.timeout()))
            });
            self.dev.enable_irq(false);
            if !r.map_err(e("completion interrupt"))? {
                return Err(format!("completion interrupt: no {mode} interrupt came"));
            }
            self.step(format_args!("completion interrupt ({mode}) ok"));
        }
        Ok(())
    }
}

/// Runs the self-test, printing one line per step to `out`, first the identity line
/// `vgpu: vm_id=… pool_id=… priority=… name=…` and how completions are awaited
/// (`wait: msi-x`, `wait: eventfd` or `wait: poll …`, see [`Device::wait_description`]), last `selftest: PASS (N commands)` or
/// `selftest: FAIL reason`. Returns whether it passed.
pub fn run(dev: &Device, opts: &Options, mut out: impl Write) -> bool {
    let info = dev.info();
    let _ = writeln!(
        out,
        "vgpu: vm_id={} pool_id={} priority={} name={}",
        info.vm_id, info.pool_id, info.priority, info.vm_name
    );
    let _ = writeln!(out, "wait: {}", dev.wait_description());
    let before = dev.commands_submitted();
    let mut run = Run {
        dev,
        out: &mut out,
        allocs: Vec::new(),
    };
    let r = run.body(opts);
    // Best effort: do not leak device memory on failure.
    for p in std::mem::take(&mut run.allocs) {
        let _ = dev.free(p);
    }
    match r {
        Ok(()) => {
            let _ = writeln!(
                out,
                "selftest: PASS ({} commands)",
                dev.commands_submitted() - before
            );
            true
        }
        Err(reason) => {
            let _ = writeln!(out, "selftest: FAIL {reason}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_deterministic_and_in_range() {
        let a = XorShift::new(7).vec(1000);
        let b = XorShift::new(7).vec(1000);
        assert_eq!(a, b);
        assert_ne!(a, XorShift::new(8).vec(1000));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        // Not degenerate.
        assert!(a.iter().any(|&v| v > 0.5) && a.iter().any(|&v| v < -0.5));
        assert!(XorShift::new(0).next_u64() != 0);
    }

    #[test]
    fn sgemm_reference() {
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]
        let (c, _) = sgemm_ref(
            &[1., 2., 3., 4.],
            &[5., 6., 7., 8.],
            &[1., 1., 1., 1.],
            2,
            2,
            2,
            2.0,
            -1.0,
        );
        assert_eq!(c, vec![37., 43., 85., 99.]);
    }

    #[test]
    fn compare_catches_mismatch() {
        assert!(compare("t", &[1.0, 2.0], &[1.0, 2.0], &[1.0, 2.0], 1e-4).is_ok());
        let e = compare("t", &[1.0, 2.1], &[1.0, 2.0], &[1.0, 2.0], 1e-4).unwrap_err();
        assert!(e.contains("element 1"), "{e}");
    }
}
