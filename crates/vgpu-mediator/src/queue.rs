//! The work queue between the channels and the executor.
//!
//! It sits behind [`WorkQueue`] so the scheduler (pools, priorities, fair shares) can replace
//! the plain FIFO without touching the channels or the executor.

use std::collections::VecDeque;
use std::time::Instant;
use vgpu_abi::cmd::Command;

/// One validated command of one VM.
#[derive(Debug, Clone)]
pub struct Job {
    /// VM index (config order).
    pub vm: usize,
    /// The submitter's tag.
    pub tag: u64,
    /// Stream id.
    pub stream: u32,
    /// The command.
    pub cmd: Command,
    /// When it was queued.
    pub enqueued: Instant,
}

/// What the executor needs from a queue.
pub trait WorkQueue: Send {
    /// Adds a job.
    fn push(&mut self, job: Job);
    /// The next job to run, if any.
    fn pop(&mut self) -> Option<Job>;
    /// Drops every job of `vm` (it left or reset); returns how many.
    fn remove_vm(&mut self, vm: usize) -> usize;
    /// Jobs queued.
    fn len(&self) -> usize;
    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// First in, first out across all VMs. Keeps each stream's order trivially.
#[derive(Debug, Default)]
pub struct FifoQueue {
    q: VecDeque<Job>,
}

impl WorkQueue for FifoQueue {
    fn push(&mut self, job: Job) {
        self.q.push_back(job);
    }
    fn pop(&mut self) -> Option<Job> {
        self.q.pop_front()
    }
    fn remove_vm(&mut self, vm: usize) -> usize {
        let before = self.q.len();
        self.q.retain(|j| j.vm != vm);
        before - self.q.len()
    }
    fn len(&self) -> usize {
        self.q.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(vm: usize, tag: u64) -> Job {
        Job {
            vm,
            tag,
            stream: 0,
            cmd: Command::Nop,
            enqueued: Instant::now(),
        }
    }

    #[test]
    fn fifo_order_and_removal() {
        let mut q = FifoQueue::default();
        for t in 0..6 {
            q.push(job((t % 2) as usize, t));
        }
        assert_eq!(q.remove_vm(1), 3);
        let tags: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|j| j.tag).collect();
        assert_eq!(tags, vec![0, 2, 4]);
        assert!(q.is_empty());
    }
}
