//! The reference implementations of the built-in kernels: what each built-in computes, bit for
//! bit on the cpu backend and the guest's test host. The cuda backend's kernels compute the
//! same functions; results are defined independently of grid and block (grid-stride loops).

/// `c[i] = a[i] + b[i]`.
pub fn vector_add(a: &[f32], b: &[f32], c: &mut [f32]) {
    for ((c, a), b) in c.iter_mut().zip(a).zip(b) {
        *c = a + b;
    }
}

/// `y[i] = alpha * x[i] + y[i]`.
pub fn saxpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = alpha.mul_add(*x, *y);
    }
}

/// `C = alpha * A·B + beta * C`, row-major; A is m×k, B is k×n, C is m×n. Each dot product
/// is accumulated in f32 over k ascending.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    let mut acc = vec![0f32; n];
    for i in 0..m {
        acc.iter_mut().for_each(|v| *v = 0.0);
        for p in 0..k {
            let aip = a[i * k + p];
            let brow = &b[p * n..(p + 1) * n];
            for (acc, b) in acc.iter_mut().zip(brow) {
                *acc = aip.mul_add(*b, *acc);
            }
        }
        let crow = &mut c[i * n..(i + 1) * n];
        for (c, acc) in crow.iter_mut().zip(&acc) {
            *c = alpha * acc + beta * *c;
        }
    }
}

/// Sum of `x`, accumulated in f64 and rounded once to f32.
pub fn reduce_sum(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64).sum::<f64>() as f32
}

/// Little-endian bytes → f32s.
pub fn to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// f32s → little-endian bytes, into `out` (same length × 4).
pub fn from_f32s(v: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(4).zip(v) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases() {
        let mut c = [0.0; 3];
        vector_add(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0], &mut c);
        assert_eq!(c, [11.0, 22.0, 33.0]);
        let mut y = [1.0, 1.0];
        saxpy(2.0, &[3.0, 4.0], &mut y);
        assert_eq!(y, [7.0, 9.0]);
        // [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50]
        let mut c = [1.0; 4];
        sgemm(
            2,
            2,
            2,
            1.0,
            &[1., 2., 3., 4.],
            &[5., 6., 7., 8.],
            2.0,
            &mut c,
        );
        assert_eq!(c, [21.0, 24.0, 45.0, 52.0]);
        // non-square: (1x3)·(3x2)
        let mut c = [0.0; 2];
        sgemm(
            1,
            2,
            3,
            0.5,
            &[1., 2., 3.],
            &[1., 0., 0., 1., 1., 1.],
            0.0,
            &mut c,
        );
        assert_eq!(c, [2.0, 2.5]);
        assert_eq!(reduce_sum(&[0.5; 1000]), 500.0);
        let mut b = [0u8; 8];
        from_f32s(&[1.5, -2.0], &mut b);
        assert_eq!(to_f32s(&b), vec![1.5, -2.0]);
    }
}
