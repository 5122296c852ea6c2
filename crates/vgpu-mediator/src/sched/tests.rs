//! Policy tests: unit cases and properties, on a simulated device with a virtual clock.

use super::*;
use proptest::prelude::*;
use vgpu_abi::cmd::{Builtin, LaunchBody};

fn params(prio: &[u32], pool: &[usize], weights: &[u32], depth: u32) -> SchedParams {
    SchedParams {
        policy: Policy::Priority,
        max_wait: None,
        vm_max_queued: 1 << 20,
        vm_max_inflight: u32::MAX,
        depth,
        queue_ns: 0.0,
        reserve: 0,
        reserve_priority: prio.iter().copied().max().unwrap_or(0),
        vm_pool: pool.to_vec(),
        vm_priority: prio.to_vec(),
        weights: weights.to_vec(),
    }
}

fn kernel(vm: usize, tag: u64, stream: u32) -> Job {
    Job {
        vm,
        tag,
        stream,
        cmd: Command::Launch {
            launch: LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], &[0; 8]).unwrap(),
        },
        enqueued: Instant::now(),
    }
}

fn control(vm: usize, tag: u64, stream: u32) -> Job {
    Job {
        cmd: Command::Nop,
        ..kernel(vm, tag, stream)
    }
}

/// Per-VM kernel durations (ns) used by the simulations: deliberately unequal.
const COSTS: [u64; 6] = [300_000, 1_000_000, 700_000, 450_000, 900_000, 150_000];

fn cost(vm: usize) -> u64 {
    COSTS[vm % COSTS.len()]
}

/// A device with a virtual clock: dispatches whatever the scheduler hands out, runs each
/// kernel of VM `v` for `cost(v)` ns, retires the earliest, repeats.
struct Sim {
    s: Scheduler,
    gate: Gate,
    now: u64,
    /// `(end, vm, stream)`.
    running: Vec<(u64, usize, u32)>,
    /// `(end, vm, device ns)` of every retired kernel.
    log: Vec<(u64, usize, u64)>,
}

impl Sim {
    fn new(s: Scheduler) -> Self {
        Self {
            s,
            gate: Gate::new(false),
            now: 0,
            running: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Dispatches everything the scheduler allows now; returns the jobs in dispatch order.
    fn dispatch(&mut self) -> Vec<Job> {
        let mut out = Vec::new();
        while let Some(j) = self.s.pop(&mut self.gate) {
            if is_control(&j.cmd) {
                self.s.finished(j.vm, true, 0);
            } else {
                self.gate.issued(j.vm, j.stream);
                self.running.push((self.now + cost(j.vm), j.vm, j.stream));
            }
            out.push(j);
        }
        out
    }

    /// Retires the earliest running kernel; returns its VM.
    fn retire_one(&mut self) -> Option<usize> {
        let i = (0..self.running.len()).min_by_key(|&i| self.running[i].0)?;
        let (end, vm, stream) = self.running.swap_remove(i);
        self.now = self.now.max(end);
        self.gate.retired(vm, stream);
        self.s.finished(vm, false, cost(vm));
        self.log.push((end, vm, cost(vm)));
        Some(vm)
    }
}

/// Keeps every VM in `busy` saturated (`per_vm` jobs queued on 4 streams) for `until` ns.
fn saturate(sim: &mut Sim, busy: &[usize], per_vm: usize, tag: &mut u64) {
    for &vm in busy {
        let queued = sim.s.vms[vm].jobs.len();
        for _ in queued..per_vm {
            *tag += 1;
            sim.s.push(kernel(vm, *tag, (*tag % 4) as u32));
        }
    }
}

/// Device time per pool in `[from, to)` (by end time).
fn shares(sim: &Sim, pools: &[usize], npools: usize, from: u64, to: u64) -> Vec<f64> {
    let mut t = vec![0f64; npools];
    for &(end, vm, ns) in &sim.log {
        if end >= from && end < to {
            t[pools[vm]] += ns as f64;
        }
    }
    let sum: f64 = t.iter().sum();
    t.iter().map(|x| x / sum.max(1.0)).collect()
}

#[test]
fn strict_priority_and_hold_back() {
    // vm0 and vm2 low, vm1 high; one pool; depth 2.
    let mut s = Scheduler::with_params(params(&[0, 5, 0], &[0, 0, 0], &[1], 2), 2);
    let mut g = Gate::new(false);
    s.push(kernel(0, 1, 0));
    s.push(kernel(0, 2, 1));
    s.push(kernel(1, 3, 0));
    s.push(kernel(1, 4, 0)); // same stream as tag 3: waits for it
    let a = s.pop(&mut g).unwrap();
    assert_eq!(a.tag, 3, "the high class goes first");
    g.issued(1, 0);
    // The high class still has a job queued (blocked by its stream): the low class is held
    // back although a slot is free.
    assert!(
        s.pop(&mut g).is_none(),
        "low-priority dispatch is held back"
    );
    // A control command of the low class is not device work: it passes (but never overtakes
    // device work queued before it in its own VM).
    s.push(control(0, 6, 2));
    s.push(control(2, 5, 0));
    assert_eq!(s.pop(&mut g).unwrap().tag, 5);
    assert!(s.pop(&mut g).is_none());
    s.finished(2, true, 0);
    g.retired(1, 0);
    s.finished(1, false, 1000);
    assert_eq!(s.pop(&mut g).unwrap().tag, 4);
    g.issued(1, 0);
    // No high job queued any more: the low class takes the free slot.
    assert_eq!(s.pop(&mut g).unwrap().tag, 1);
    g.issued(0, 0);
    assert!(s.pop(&mut g).is_none(), "device depth 2 reached");
    assert_eq!(s.inflight(), 2);
}

#[test]
fn reserve_keeps_slots_for_the_high_class() {
    let mut p = params(&[0, 0, 9], &[0, 0, 0], &[1], 4);
    p.reserve = 1;
    let mut sim = Sim::new(Scheduler::with_params(p, 4));
    let mut tag = 0;
    saturate(&mut sim, &[0, 1], 16, &mut tag);
    let first = sim.dispatch();
    assert_eq!(first.len(), 3, "low classes get depth − reserve slots");
    sim.s.push(kernel(2, 999, 0));
    let hp = sim.dispatch();
    assert_eq!(
        hp.len(),
        1,
        "the high class starts at once on the reserved slot"
    );
    assert_eq!(hp[0].tag, 999);
}

#[test]
fn weighted_shares_by_device_time() {
    // Three pools 1:2:3, two VMs each, unequal kernel lengths; depth 4.
    let pools = [0, 0, 1, 1, 2, 2];
    let mut sim = Sim::new(Scheduler::with_params(
        params(&[0; 6], &pools, &[1, 2, 3], 4),
        4,
    ));
    let mut tag = 0;
    let all: Vec<usize> = (0..6).collect();
    while sim.now < 3_000_000_000 {
        saturate(&mut sim, &all, 8, &mut tag);
        sim.dispatch();
        sim.retire_one();
    }
    for w in 0..3u64 {
        let sh = shares(&sim, &pools, 3, w * 1_000_000_000, (w + 1) * 1_000_000_000);
        for (p, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            assert!(
                (sh[p] - want).abs() < 0.01,
                "window {w}: pool {p} share {:.4} vs {want:.4} ({sh:?})",
                sh[p]
            );
        }
    }
}

#[test]
fn idle_pool_share_is_handed_over_and_taken_back_without_a_burst() {
    let pools = [0, 1];
    let mut sim = Sim::new(Scheduler::with_params(
        params(&[0, 0], &pools, &[1, 1], 4),
        4,
    ));
    let mut tag = 0;
    // Both busy 1 s, then pool 1 idle 1 s, then both busy again.
    let phase = |sim: &mut Sim, busy: &[usize], until: u64, tag: &mut u64| {
        while sim.now < until {
            saturate(sim, busy, 8, tag);
            sim.dispatch();
            if sim.retire_one().is_none() {
                break;
            }
        }
    };
    phase(&mut sim, &[0, 1], 1_000_000_000, &mut tag);
    phase(&mut sim, &[0], 2_000_000_000, &mut tag);
    let sh = shares(&sim, &pools, 2, 1_010_000_000, 2_000_000_000);
    assert!(
        sh[0] > 0.99,
        "work-conserving: the idle pool's share goes to the busy one"
    );
    phase(&mut sim, &[0, 1], 3_000_000_000, &mut tag);
    // Within 20 ms of coming back, pool 1 has its half again — and not more (no saved credit).
    let sh = shares(&sim, &pools, 2, 2_020_000_000, 2_200_000_000);
    assert!(
        (sh[1] - 0.5).abs() < 0.02,
        "share after coming back: {sh:?}"
    );
}

#[test]
fn device_time_budget_keeps_the_device_queue_short() {
    let mut p = params(&[0], &[0], &[1], 64);
    p.queue_ns = 2_500_000.0; // 2.5 ms of estimated device time
    let mut s = Scheduler::with_params(p, 64);
    let mut g = Gate::new(true);
    for t in 0..40 {
        s.push(kernel(0, t, 0));
    }
    // Nothing measured yet: the estimate is 0, so the count limit alone applies.
    for _ in 0..4 {
        s.pop(&mut g).unwrap();
    }
    // Teach the estimate that this VM's kernels take 1 ms.
    for _ in 0..4 {
        s.finished(0, false, 1_000_000);
        s.push(kernel(0, 100, 0));
    }
    for _ in 0..20 {
        assert!(s.pop(&mut g).is_some());
        s.finished(0, false, 1_000_000);
    }
    // Two 1 ms kernels fit in 2.5 ms, a third does not; two are allowed whatever the budget.
    assert!(s.pop(&mut g).is_some());
    assert!(s.pop(&mut g).is_some());
    assert!(
        s.pop(&mut g).is_none(),
        "a third 1 ms kernel exceeds the budget"
    );
    s.finished(0, false, 1_000_000);
    assert!(s.pop(&mut g).is_some(), "room again once one retired");
}

#[test]
fn round_robin_inside_a_pool() {
    let mut s = Scheduler::with_params(params(&[0; 3], &[0, 0, 0], &[1], 64), 64);
    let mut g = Gate::new(true);
    for t in 0..9 {
        s.push(kernel((t % 3) as usize, t, 0));
    }
    // Push order interleaves anyway; push VM 0's extra jobs first to see the rotation.
    let mut s2 = Scheduler::with_params(params(&[0; 3], &[0, 0, 0], &[1], 64), 64);
    for t in 0..3 {
        s2.push(kernel(0, t, 0));
    }
    for t in 3..6 {
        s2.push(kernel(1, t, 0));
    }
    s2.push(kernel(2, 6, 0));
    let vms: Vec<usize> = std::iter::from_fn(|| s2.pop(&mut g))
        .map(|j| j.vm)
        .collect();
    assert_eq!(vms, vec![0, 1, 2, 0, 1, 0, 1]);
    assert_eq!(s.len(), 9);
}

#[test]
fn fifo_policy_is_arrival_order() {
    let mut p = params(&[0, 9], &[0, 1], &[1, 5], 64);
    p.policy = Policy::Fifo;
    let mut s = Scheduler::with_params(p, 64);
    let mut g = Gate::new(true);
    for t in 0..6 {
        s.push(kernel((t % 2) as usize, t, 0));
    }
    let tags: Vec<u64> = std::iter::from_fn(|| s.pop(&mut g))
        .map(|j| j.tag)
        .collect();
    assert_eq!(tags, (0..6).collect::<Vec<_>>());
}

#[test]
fn starvation_guard_serves_an_aged_low_job() {
    let mut p = params(&[0, 9], &[0, 0], &[1], 1);
    p.max_wait = Some(Duration::from_millis(20));
    let mut s = Scheduler::with_params(p, 1);
    let mut g = Gate::new(true);
    s.push(kernel(0, 100, 0));
    for t in 0..4 {
        s.push(kernel(1, t, 0));
    }
    assert_eq!(s.pop(&mut g).unwrap().tag, 0, "high first");
    s.finished(1, false, 10);
    std::thread::sleep(Duration::from_millis(25));
    assert_eq!(
        s.pop(&mut g).unwrap().tag,
        100,
        "the aged low job overtakes"
    );
    s.finished(0, false, 10);
    assert_eq!(s.pop(&mut g).unwrap().tag, 1);
}

#[test]
fn per_vm_limits() {
    let mut p = params(&[0, 0], &[0, 0], &[1], 8);
    p.vm_max_queued = 3;
    p.vm_max_inflight = 2;
    let mut s = Scheduler::with_params(p, 8);
    let mut g = Gate::new(true);
    for t in 0..3 {
        s.push(kernel(0, t, t as u32));
    }
    assert_eq!(s.room(0), 0);
    assert_eq!(s.room(1), 3);
    s.push(kernel(1, 10, 0));
    let vms: Vec<usize> = std::iter::from_fn(|| s.pop(&mut g)).map(|j| j.vm).collect();
    assert_eq!(
        vms.iter().filter(|&&v| v == 0).count(),
        2,
        "in-flight limit 2"
    );
    assert!(vms.contains(&1));
    assert_eq!(s.room(0), 2);
    s.finished(0, false, 5);
    assert_eq!(s.pop(&mut g).unwrap().tag, 2);
    assert_eq!(s.remove_vm(0), 0);
    assert_eq!(s.inflight(), 1, "vm 0's in-flight work is forgotten");
}

#[test]
fn reload_moves_a_vm_between_pools_and_changes_weights() {
    let mut s = Scheduler::with_params(params(&[0, 0], &[0, 1], &[1, 1], 4), 4);
    let mut g = Gate::new(true);
    s.push(kernel(0, 1, 0));
    let _ = s.pop(&mut g).unwrap();
    s.push(kernel(0, 2, 0));
    s.set_params(params(&[0, 3], &[1, 1], &[1, 4], 4));
    assert_eq!(s.pools[0].queued + s.pools[0].inflight as usize, 0);
    assert_eq!(s.pools[1].queued, 1);
    assert_eq!(s.pools[1].inflight, 1);
    s.finished(0, false, 4000);
    assert_eq!(
        s.pool_vtime(1),
        1000.0,
        "charged to the new pool at its new weight"
    );
    assert_eq!(s.pop(&mut g).unwrap().tag, 2);
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        vm: usize,
        stream: u32,
        barrier: bool,
        ctl: bool,
    },
    Retire,
    Remove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..4, 0u32..3, any::<bool>(), any::<bool>()).prop_map(|(vm, stream, b, c)| Op::Push {
            vm,
            stream,
            barrier: b && c,
            ctl: c
        }),
        4 => Just(Op::Retire),
        1 => (0usize..4).prop_map(Op::Remove),
    ]
}

proptest! {
    /// Under any mix of pushes, retirements and removals, with any priorities, pools, reserve
    /// and policy: each stream's jobs leave in push order, a barrier never passes earlier
    /// pending work, the device never holds more than its depth, the low classes never more
    /// than depth − reserve, and the counters stay consistent.
    #[test]
    fn invariants(
        prio in proptest::collection::vec(0u32..3, 4),
        pool in proptest::collection::vec(0usize..2, 4),
        w in (1u32..5, 1u32..5),
        depth in 1u32..5,
        reserve in 0u32..3,
        fifo in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut p = params(&prio, &pool, &[w.0, w.1], depth);
        p.reserve = reserve.min(depth - 1);
        p.vm_max_inflight = 3;
        if fifo { p.policy = Policy::Fifo; }
        let reserve = p.reserve;
        let top = p.reserve_priority;
        let mut s = Scheduler::with_params(p, depth);
        let mut g = Gate::new(false);
        let mut tag = 0u64;
        let mut pushed: Vec<Vec<u64>> = vec![Vec::new(); 4 * 3];
        let mut popped: Vec<Vec<u64>> = vec![Vec::new(); 4 * 3];
        let mut running: Vec<(usize, u32)> = Vec::new();
        let mut barrier_tags = std::collections::HashSet::new();
        for o in ops {
            match o {
                Op::Push { vm, stream, barrier, ctl } => {
                    tag += 1;
                    let mut j = if ctl { control(vm, tag, stream) } else { kernel(vm, tag, stream) };
                    if barrier {
                        j.cmd = Command::Synchronize { all_streams: true };
                        barrier_tags.insert(tag);
                    }
                    pushed[vm * 3 + stream as usize].push(tag);
                    s.push(j);
                }
                Op::Retire => {
                    if !running.is_empty() {
                        let (vm, st) = running.remove(0);
                        g.retired(vm, st);
                        s.finished(vm, false, 1000);
                    }
                }
                Op::Remove(vm) => {
                    running.retain(|&(v, _)| v != vm);
                    g.forget_vm(vm);
                    s.remove_vm(vm);
                    for st in 0..3 {
                        pushed[vm * 3 + st].clear();
                        popped[vm * 3 + st].clear();
                    }
                }
            }
            while let Some(j) = s.pop(&mut g) {
                if barrier_tags.contains(&j.tag) {
                    prop_assert!(running.iter().all(|&(v, _)| v != j.vm), "barrier passed pending work");
                }
                popped[j.vm * 3 + j.stream as usize].push(j.tag);
                if is_control(&j.cmd) {
                    s.finished(j.vm, true, 0);
                } else {
                    g.issued(j.vm, j.stream);
                    running.push((j.vm, j.stream));
                    let n = running.len() as u32;
                    prop_assert!(n <= depth);
                    if prio[j.vm] < top && !fifo {
                        prop_assert!(n <= depth - reserve, "low class used the reserve");
                    }
                }
            }
            prop_assert_eq!(s.inflight() as usize, running.len());
            let queued: usize = s.vms.iter().map(|q| q.jobs.len()).sum();
            prop_assert_eq!(queued, s.len());
        }
        for k in 0..12 {
            prop_assert!(pushed[k].starts_with(&popped[k]), "stream order broken: {:?} vs {:?}", pushed[k], popped[k]);
        }
    }

    /// Saturating pools with any weights get device time in proportion to them.
    #[test]
    fn shares_follow_weights(w in proptest::collection::vec(1u32..6, 2..4), depth in 1u32..5) {
        let n = w.len();
        let pools: Vec<usize> = (0..n).collect();
        let mut sim = Sim::new(Scheduler::with_params(params(&vec![0; n], &pools, &w, depth), depth));
        let mut tag = 0;
        while sim.now < 2_000_000_000 {
            saturate(&mut sim, &pools, 6, &mut tag);
            sim.dispatch();
            sim.retire_one();
        }
        let sh = shares(&sim, &pools, n, 500_000_000, 2_000_000_000);
        let total: u32 = w.iter().sum();
        for p in 0..n {
            let want = w[p] as f64 / total as f64;
            prop_assert!((sh[p] - want).abs() < 0.02, "pool {} share {:.4} vs {:.4}", p, sh[p], want);
        }
    }
}
