//! The queue seam (`crate::queue`: `Job`, `Gate`, `WorkQueue`) driven through the real queue,
//! the scheduler: they live here because the scheduler sits above the queue.

use crate::config::Policy;
use crate::queue::{Gate, Job, WorkQueue};
use crate::sched::{SchedParams, Scheduler};
use std::time::Instant;
use vgpu_abi::cmd::Command;

fn job(vm: usize, tag: u64) -> Job {
    Job {
        vm,
        tag,
        stream: 0,
        cmd: Command::Nop,
        enqueued: Instant::now(),
    }
}

/// vgpud's queue for `vms` VMs of one pool and one class, with no limit that could hold a
/// job back: what these tests see is the gate and each policy's order.
fn queue(policy: Policy, vms: usize) -> Scheduler {
    let p = SchedParams {
        policy,
        max_wait: None,
        vm_max_queued: 1 << 20,
        vm_max_inflight: u32::MAX,
        depth: 64,
        queue_ns: 0.0,
        reserve: 0,
        reserve_priority: 0,
        vm_pool: vec![0; vms],
        vm_priority: vec![0; vms],
        weights: vec![1],
    };
    Scheduler::with_params(p, 64)
}

const POLICIES: [Policy; 2] = [Policy::Fifo, Policy::Priority];

#[test]
fn barriers_and_calls_that_wait_for_the_device() {
    let with = |cmd| Job { cmd, ..job(0, 0) };
    assert!(with(Command::Synchronize { all_streams: true }).is_barrier());
    assert!(!with(Command::Synchronize { all_streams: false }).is_barrier());
    assert!(with(Command::EventSynchronize { event: 1 }).is_barrier());
    assert!(!with(Command::Nop).is_barrier());
    assert!(with(Command::MemFree { ptr: 0x1000 }).waits_for_device());
    assert!(with(Command::ModuleUnload { module: 1 }).waits_for_device());
    assert!(!with(Command::MemAlloc { size: 64 }).waits_for_device());
}

#[test]
fn fifo_order_across_vms_and_removal() {
    let mut q = queue(Policy::Fifo, 2);
    for t in 0..6 {
        q.push(job((t % 2) as usize, t));
    }
    assert_eq!(q.len(), 6);
    assert_eq!(q.remove_vm(1), 3);
    let mut g = Gate::new(false);
    let tags: Vec<u64> = std::iter::from_fn(|| q.pop(&mut g))
        .map(|j| j.tag)
        .collect();
    assert_eq!(tags, vec![0, 2, 4]);
    assert!(q.is_empty());
}

#[test]
fn gate_keeps_stream_order_and_barriers() {
    for policy in POLICIES {
        let mut q = queue(policy, 2);
        let on = |vm, tag, stream| Job {
            stream,
            ..job(vm, tag)
        };
        q.push(on(0, 1, 1)); // stream 1 is busy: held
        q.push(on(0, 2, 2)); // stream 2 is free
        q.push(Job {
            cmd: Command::Synchronize { all_streams: true },
            ..job(0, 3)
        }); // waits for everything before it
        q.push(on(0, 4, 2)); // behind the barrier
        q.push(on(1, 5, 1)); // another VM's stream 1 is free
        let mut g = Gate::new(false);
        g.issued(0, 1);
        let mut pop = |g: &mut Gate| q.pop(g).map(|j| j.tag);
        assert_eq!(pop(&mut g), Some(2), "{policy:?}");
        assert_eq!(pop(&mut g), Some(5), "{policy:?}");
        assert_eq!(pop(&mut g), None, "{policy:?}");
        g.retired(0, 1);
        assert_eq!(pop(&mut g), Some(1), "{policy:?}");
        g.issued(0, 1);
        assert_eq!(
            pop(&mut g),
            None,
            "{policy:?}: the barrier waits for the pending command"
        );
        g.retired(0, 1);
        assert_eq!(pop(&mut g), Some(3), "{policy:?}");
        assert_eq!(pop(&mut g), Some(4), "{policy:?}");
        // A device that orders streams itself admits everything.
        let mut g = Gate::new(true);
        g.issued(0, 0);
        q.push(job(0, 6));
        assert_eq!(q.pop(&mut g).map(|j| j.tag), Some(6), "{policy:?}");
    }
}

#[test]
fn gate_holds_blocking_calls_behind_device_work() {
    for policy in POLICIES {
        let mut q = queue(policy, 2);
        let free = |vm, tag| Job {
            cmd: Command::MemFree { ptr: 0x1000 },
            ..job(vm, tag)
        };
        q.push(free(0, 1)); // would wait inside cuMemFree for VM 0's kernel
        q.push(job(0, 2)); // behind it, in order
        q.push(free(1, 3)); // VM 1 has nothing on the device
        let mut g = Gate::new(true).holding_blocking_calls(true);
        g.issued(0, 5);
        let mut pop = |g: &mut Gate| q.pop(g).map(|j| j.tag);
        assert_eq!(pop(&mut g), Some(3), "{policy:?}");
        assert_eq!(
            pop(&mut g),
            None,
            "{policy:?}: held until VM 0's work retired"
        );
        g.retired(0, 5);
        assert_eq!(pop(&mut g), Some(1), "{policy:?}");
        assert_eq!(pop(&mut g), Some(2), "{policy:?}");
    }
}
