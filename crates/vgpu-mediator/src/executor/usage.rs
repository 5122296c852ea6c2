//! What each VM uses of the device, published in its register page (ABI 1.6) so that a guest
//! that only asks (NVML: `nvmlDeviceGetMemoryInfo`, `nvmlDeviceGetUtilizationRates`) needs no
//! ring and no round trip: the memory its allocations hold (kept current by `dispatch` before
//! the completion of each allocation or free is written) and its utilisation, the share of a
//! window of [`USAGE_WINDOW`] that the device spent on its commands.
//!
//! The device time counted is the scheduler's (`VmStats::device_ns`): a command's, charged
//! when it completes. Work that spans windows is charged to the window it completes in, so one
//! window may hold more than its length: the share is capped at the whole window.

use super::Executor;
use crate::backend::Backend;
use crate::queue::WorkQueue;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Length of a utilisation window: NVML's sample periods are 1/6 s to 1 s.
pub(super) const USAGE_WINDOW: Duration = Duration::from_millis(500);

/// A VM's current utilisation window.
#[derive(Debug, Clone, Copy)]
pub(super) struct UsageWindow {
    /// When it started.
    since: Instant,
    /// The VM's device time (`VmStats::device_ns`) then.
    ns_then: u64,
    /// The VM's device time when it connected.
    ns_at_attach: u64,
}

impl UsageWindow {
    /// A first window starting now, for a VM that connected with `device_ns` of device time
    /// counted so far (the counter runs across connections).
    pub(super) fn new(device_ns: u64) -> Self {
        Self {
            since: Instant::now(),
            ns_then: device_ns,
            ns_at_attach: device_ns,
        }
    }

    /// Ends the window at `now` if it lasted [`USAGE_WINDOW`], with `device_ns` counted by
    /// then: `(permille, window_ms, device_ns since the VM connected)` to publish.
    fn end(&mut self, now: Instant, device_ns: u64) -> Option<(u32, u32, u64)> {
        let len = now.saturating_duration_since(self.since);
        if len < USAGE_WINDOW {
            return None;
        }
        let busy = device_ns.saturating_sub(self.ns_then);
        let len_ns = u64::try_from(len.as_nanos()).unwrap_or(u64::MAX).max(1);
        let permille = (u128::from(busy) * 1000 / u128::from(len_ns)).min(1000) as u32;
        let window_ms = u32::try_from(len.as_millis()).unwrap_or(u32::MAX);
        self.since = now;
        self.ns_then = device_ns;
        Some((
            permille,
            window_ms,
            device_ns.saturating_sub(self.ns_at_attach),
        ))
    }

    /// When the window ends.
    fn due(&self) -> Instant {
        self.since + USAGE_WINDOW
    }
}

impl<B: Backend + ?Sized, Q: WorkQueue> Executor<B, Q> {
    /// Ends and publishes every VM's utilisation window that is over.
    pub(super) fn publish_usage(&mut self, now: Instant) {
        for (vm, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot.as_mut() else { continue };
            let ns = self.stats[vm].device_ns.load(Relaxed);
            if let Some((permille, window_ms, total)) = slot.usage.end(now, ns) {
                slot.ch.set_busy(permille, window_ms, total);
            }
        }
    }

    /// When the executor must wake to end a window: the earliest end among VMs that used the
    /// device in their current window or whose published utilisation is not zero yet (so that
    /// a VM that went idle is seen at 0). `None` when every VM idles at 0: an idle device
    /// costs no wake-ups.
    pub(super) fn usage_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(vm, s)| s.as_ref().map(|s| (vm, s)))
            .filter(|(vm, s)| {
                s.ch.busy_permille() > 0
                    || self.stats[*vm].device_ns.load(Relaxed) != s.usage.ns_then
            })
            .map(|(_, s)| s.usage.due())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_the_share_of_device_time_in_it() {
        let mut w = UsageWindow::new(5_000);
        let t0 = w.since;
        assert_eq!(w.end(t0 + USAGE_WINDOW / 2, 10_000), None, "not over yet");
        // 125 ms of device time in 500 ms: 250‰.
        let end = t0 + USAGE_WINDOW;
        assert_eq!(
            w.end(end, 5_000 + 125_000_000),
            Some((250, 500, 125_000_000))
        );
        // Idle next: 0‰, the total since attach unchanged.
        assert_eq!(
            w.end(end + USAGE_WINDOW, 5_000 + 125_000_000),
            Some((0, 500, 125_000_000))
        );
    }

    #[test]
    fn work_charged_late_never_reads_as_more_than_the_window() {
        let mut w = UsageWindow::new(0);
        let end = w.since + USAGE_WINDOW;
        assert_eq!(w.end(end, 3_000_000_000), Some((1000, 500, 3_000_000_000)));
    }

    #[test]
    fn a_longer_window_is_measured_by_its_real_length() {
        let mut w = UsageWindow::new(0);
        let end = w.since + USAGE_WINDOW * 2;
        assert_eq!(w.end(end, 500_000_000), Some((500, 1000, 500_000_000)));
    }
}
