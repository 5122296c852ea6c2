//! A pool's memory quota, shared by the pool's VMs on every device (hence atomics: each device's
//! executor thread allocates for its own VMs).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes a pool's VMs hold together, against the pool's limit.
#[derive(Debug)]
pub struct PoolQuota {
    limit: AtomicU64,
    used: AtomicU64,
}

impl PoolQuota {
    /// A quota of `limit` bytes (`u64::MAX`: unlimited), nothing used.
    pub fn new(limit: u64) -> Self {
        Self {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        }
    }

    /// Takes `size` bytes if they fit under the limit; `false` (nothing taken) if not.
    pub fn try_take(&self, size: u64) -> bool {
        let limit = self.limit.load(Relaxed);
        self.used
            .fetch_update(Relaxed, Relaxed, |u| {
                u.checked_add(size).filter(|&n| n <= limit)
            })
            .is_ok()
    }

    /// Returns `size` bytes taken earlier.
    pub fn give_back(&self, size: u64) {
        // Never below zero, even if a caller returns more than it took.
        let _ = self
            .used
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(size)));
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit.load(Relaxed)
    }

    /// Changes the limit (a reload). Memory already held above a lowered limit stays held;
    /// only new allocations are refused until enough is freed.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn take_and_give_back() {
        let q = PoolQuota::new(100);
        assert!(q.try_take(60));
        assert!(!q.try_take(41), "over the limit");
        assert_eq!(q.used(), 60);
        assert!(q.try_take(40));
        q.give_back(60);
        assert!(q.try_take(60));
        q.set_limit(50);
        assert!(!q.try_take(1), "lowered below the usage");
        q.give_back(1000);
        assert_eq!(q.used(), 0);
        assert_eq!(q.limit(), 50);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let q = Arc::new(PoolQuota::new(1000));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || (0..1000).filter(|_| q.try_take(7)).count())
            })
            .collect();
        let got: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(got, 1000 / 7);
        assert_eq!(q.used(), (1000 / 7) * 7);
    }
}
