//! Log throttling: what a guest can trigger at will (fences, resets, refused connections)
//! logs at most one line per interval, carrying the count of the ones it stood for, so that no
//! client can flood the host's log.

use std::time::{Duration, Instant};

/// The interval used for guest-triggered log lines.
pub const GUEST_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One throttled kind of log line.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(GUEST_LOG_INTERVAL)
    }
}

impl Throttle {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            pending: 0,
        }
    }

    /// Counts one occurrence; returns `Some(n)` when a line should be logged now, `n` being
    /// the occurrences it stands for (this one included).
    pub fn hit(&mut self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Counts one occurrence of a process-wide throttled line (`static T: Mutex<Throttle>`).
pub fn hit(t: &std::sync::Mutex<Throttle>) -> Option<u64> {
    t.lock().unwrap_or_else(|e| e.into_inner()).hit()
}

/// The throttled log lines of one VM; kept across its connections (a client that reconnects in
/// a loop must not get a fresh allowance each time).
#[derive(Debug, Default)]
pub struct VmLog {
    /// "fencing VM".
    pub fence: Throttle,
    /// "device reset".
    pub reset: Throttle,
    /// "VM attached" / "VM detached".
    pub attach: Throttle,
    /// Kernel faults.
    pub fault: Throttle,
    /// Limits and time limits hit.
    pub limit: Throttle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit_at(t0), Some(1));
        for i in 1..1000 {
            assert_eq!(t.hit_at(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.hit_at(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(t.hit_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.hit_at(t0 + Duration::from_secs(20)), Some(2));
    }
}
