//! Helper threads that each block on one completion at a time (for the cuda backend: a
//! blocking-sync CUDA event recorded on one stream when the executor blocks) and write a wake eventfd
//! once it happened. One lane (thread) per key (for the cuda backend: one of a VM's few lanes,
//! not one per stream), started at its first use.
//!
//! The device handle a lane waits on is *lent* to it: the backend must not reuse it (record it
//! again) until the lane gave it back ([`WaitPool::take_done`]), nor destroy what it belongs to
//! before [`WaitPool::quiesce`] returned. Every finished wait writes the eventfd, so a lane
//! still busy with an older handle (whose work retired meanwhile) wakes its waiter anyway, and
//! that waiter then lends the lane the stream's new head: no wake-up is lost.
//!
//! What the lanes wait on is generic so that this machinery is tested without a GPU.

use rustix::fd::OwnedFd;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One lane's shared state.
struct LaneState<T> {
    /// Lent, not yet picked up by the thread.
    request: Option<T>,
    /// Being waited on by the thread.
    busy: Option<T>,
    /// Waited on and finished: to be given back.
    done: Vec<T>,
    /// The lane is being removed: the thread ends.
    stop: bool,
}

struct Lane<T> {
    state: Arc<(Mutex<LaneState<T>>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Blocking waits on helper threads, each ending with a write of one wake eventfd.
pub struct WaitPool<K, T> {
    wake: Arc<OwnedFd>,
    wait: Arc<dyn Fn(&T) + Send + Sync>,
    lanes: HashMap<K, Lane<T>>,
}

/// A lane's thread could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting a wait thread: {0}")]
pub struct SpawnError(#[from] std::io::Error);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking `wait` poisons nothing this module relies on: the state stays consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Eq + Hash + Copy, T: Copy + PartialEq + Send + 'static> WaitPool<K, T> {
    /// Lanes that run `wait` (which blocks until its argument completed, or failed) and then
    /// write `wake`.
    pub fn new(wake: Arc<OwnedFd>, wait: impl Fn(&T) + Send + Sync + 'static) -> Self {
        Self {
            wake,
            wait: Arc::new(wait),
            lanes: HashMap::new(),
        }
    }

    /// Lends `item` to lane `key` unless the lane already waits on something (whose end writes
    /// the eventfd too). Starts the lane at its first use.
    pub fn wait_for(&mut self, key: K, item: T) -> Result<(), SpawnError> {
        if !self.lanes.contains_key(&key) {
            let lane = self.start_lane()?;
            self.lanes.insert(key, lane);
        }
        let lane = &self.lanes[&key];
        let (m, cv) = &*lane.state;
        let mut s = lock(m);
        if s.request.is_none() && s.busy.is_none() {
            s.request = Some(item);
            cv.notify_all();
        }
        Ok(())
    }

    fn start_lane(&self) -> Result<Lane<T>, SpawnError> {
        let state = Arc::new((
            Mutex::new(LaneState {
                request: None,
                busy: None,
                done: Vec::new(),
                stop: false,
            }),
            Condvar::new(),
        ));
        let (st, wake, wait) = (state.clone(), self.wake.clone(), self.wait.clone());
        let thread = std::thread::Builder::new()
            .name("vgpud-wait".into())
            .spawn(move || lane_main(&st, &wake, &*wait))?;
        Ok(Lane {
            state,
            thread: Some(thread),
        })
    }

    /// Whether `item` is lent to a lane (requested or being waited on): not to be reused yet.
    pub fn is_lent(&self, item: &T) -> bool {
        self.lanes.values().any(|l| {
            let s = lock(&l.state.0);
            s.request.as_ref() == Some(item) || s.busy.as_ref() == Some(item)
        })
    }

    /// The items whose waits finished since the last call (given back to the caller).
    pub fn take_done(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for l in self.lanes.values() {
            out.append(&mut lock(&l.state.0).done);
        }
        out
    }

    /// Waits (at most `limit`) until the lanes of the keys `which` selects waited out what
    /// they were lent, then ends them; returns their items. The caller made those complete
    /// first (e.g. synchronised the context they belong to). A lane still busy after `limit`
    /// is left to end on its own (false is returned): its thread is detached.
    pub fn quiesce(&mut self, which: impl Fn(&K) -> bool, limit: Duration) -> (Vec<T>, bool) {
        let keys: Vec<K> = self.lanes.keys().filter(|k| which(k)).copied().collect();
        let (mut items, mut all) = (Vec::new(), true);
        let deadline = Instant::now() + limit;
        for k in keys {
            let mut lane = self.lanes.remove(&k).expect("listed");
            let (m, cv) = &*lane.state;
            let mut s = lock(m);
            // A request not yet picked up is simply taken back.
            items.extend(s.request.take());
            while s.busy.is_some() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s = cv
                    .wait_timeout(s, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            items.append(&mut s.done);
            s.stop = true;
            cv.notify_all();
            let idle = s.busy.is_none();
            drop(s);
            if idle {
                if let Some(t) = lane.thread.take() {
                    let _ = t.join();
                }
            } else {
                all = false;
            }
        }
        (items, all)
    }
}

impl<K, T> Drop for WaitPool<K, T> {
    fn drop(&mut self) {
        // Lanes end once their current wait (if any) ends; they are not joined here, since
        // that wait may be on work that never ends.
        for l in self.lanes.values() {
            let (m, cv) = &*l.state;
            lock(m).stop = true;
            cv.notify_all();
        }
    }
}

fn lane_main<T: Copy>(state: &(Mutex<LaneState<T>>, Condvar), wake: &OwnedFd, wait: &dyn Fn(&T)) {
    let (m, cv) = state;
    let mut s = lock(m);
    loop {
        if s.stop {
            return;
        }
        let Some(item) = s.request.take() else {
            s = cv.wait(s).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        // Lent (`busy`) while it is waited on, without the lock held.
        s.busy = Some(item);
        drop(s);
        wait(&item);
        s = lock(m);
        s.busy = None;
        s.done.push(item);
        cv.notify_all();
        // Given back before the signal: whoever it wakes finds the item in `done`.
        super::wake::signal(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::wake;
    use std::collections::HashSet;

    /// Completions the test controls: a wait on `n` returns once `n` is in the set.
    #[derive(Default)]
    struct Gates(Mutex<HashSet<u64>>, Condvar);

    impl Gates {
        fn open(&self, n: u64) {
            lock(&self.0).insert(n);
            self.1.notify_all();
        }
        fn wait(&self, n: u64) {
            let mut s = lock(&self.0);
            while !s.contains(&n) {
                s = self.1.wait(s).unwrap();
            }
        }
    }

    fn block_until_readable(fd: &OwnedFd) {
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        rustix::event::poll(&mut fds, None).unwrap();
    }

    #[test]
    fn a_finished_wait_writes_the_eventfd_and_gives_the_item_back() {
        let gates = Arc::new(Gates::default());
        let wake = Arc::new(wake::event().unwrap());
        let g = gates.clone();
        let mut pool: WaitPool<u32, u64> = WaitPool::new(wake.clone(), move |&n| g.wait(n));
        pool.wait_for(1, 10).unwrap();
        pool.wait_for(2, 20).unwrap();
        // Busy: a second item for lane 1 is not taken (the first one's end wakes anyway).
        pool.wait_for(1, 11).unwrap();
        assert!(pool.is_lent(&10) && pool.is_lent(&20) && !pool.is_lent(&11));
        assert!(!wake::readable(&*wake));
        gates.open(20);
        block_until_readable(&wake);
        wake::drain(&*wake);
        assert_eq!(pool.take_done(), vec![20], "given back before the signal");
        assert!(!pool.is_lent(&20) && pool.is_lent(&10));
        // Lane 2 is idle again and takes a new item.
        pool.wait_for(2, 21).unwrap();
        assert!(pool.is_lent(&21));
        gates.open(10);
        gates.open(21);
        let (items, all) = pool.quiesce(|_| true, Duration::from_secs(60));
        assert!(all);
        let mut items = items;
        items.extend(pool.take_done());
        items.sort();
        assert_eq!(items, vec![10, 21]);
        assert!(!pool.is_lent(&10) && !pool.is_lent(&21));
    }

    #[test]
    fn quiesce_takes_back_requests_and_leaves_a_stuck_lane_behind() {
        let gates = Arc::new(Gates::default());
        let wake = Arc::new(wake::event().unwrap());
        let g = gates.clone();
        let mut pool: WaitPool<u32, u64> = WaitPool::new(wake.clone(), move |&n| g.wait(n));
        pool.wait_for(7, 70).unwrap();
        // Lane 7's thread picks 70 up (busy) at some point; either way quiesce must not hang.
        let (items, all) = pool.quiesce(|&k| k == 7, Duration::from_millis(20));
        if all {
            assert_eq!(items, vec![70], "taken back before the thread picked it up");
        } else {
            assert!(items.is_empty(), "still waited on: not given back");
        }
        assert!(!pool.is_lent(&70), "the lane is gone");
        gates.open(70);
    }
}
