//! Latency summaries.

/// p50/p99/mean of a set of samples in nanoseconds, reported in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Samples.
    pub n: usize,
}

/// Summarises samples (ns). Sorts them.
pub fn summarize(samples: &mut [u64]) -> Summary {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i] as f64 / 1000.0
    };
    Summary {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        mean_us: samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0,
        n: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        v.reverse();
        let s = summarize(&mut v);
        assert_eq!(s.p50_us, 51.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.mean_us, 50.5);
    }
}
