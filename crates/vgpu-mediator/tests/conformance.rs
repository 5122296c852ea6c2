//! The conformance suite: the same process-client tests against whichever backend
//! `VGPU_TEST_BACKEND` names (`cpu`, the default, in CI; `cuda` on the GPU host). Results are
//! checked exactly against the CPU reference kernels.
//!
//! PTX tests run only on the cuda backend; elsewhere they print `SKIPPED (no GPU): …` to
//! stderr. On the GPU host, `VGPU_VGPUD` names the vgpud binary and `VGPU_PTX_DIR` the folder
//! holding `kernels/ptx/*.ptx` when the test binary runs away from its build tree.
//! `VGPU_TEST_ISOLATION=process|none` sets `[mediator] fault_isolation` (e.g. `process` runs
//! the cpu backend's contexts in worker processes too).

mod common;

/// Prints a skip notice straight to the process's stderr (not captured by the test harness,
/// so a skipped test is visible in every run).
macro_rules! skipped {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

use common::{bytes_f32, f32_bytes, workload, Rng, Vm};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::reference as kernels;
use vgpu_abi::cmd::{Command, LaunchBody, MAX_STREAMS};
use vgpu_abi::regs::CAP_MODULES;
use vgpu_abi::{Builtin, DeviceStatus, Status};
use vgpu_guest::compute::Launch;
use vgpu_guest::{Device, Error};

fn backend() -> String {
    std::env::var("VGPU_TEST_BACKEND").unwrap_or_else(|_| "cpu".into())
}

fn is_cuda() -> bool {
    backend() == "cuda"
}

/// Skips a GPU-only test visibly.
fn skip_without_gpu(test: &str) -> bool {
    if is_cuda() {
        return false;
    }
    skipped!(
        "SKIPPED (no GPU): {test} (VGPU_TEST_BACKEND={}; run with VGPU_TEST_BACKEND=cuda on a GPU host)",
        backend()
    );
    true
}

fn ptx(name: &str) -> String {
    let dir = std::env::var("VGPU_PTX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels/ptx"));
    let p = dir.join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Starts vgpud on the suite's backend and waits until it is ready.
fn start(vms: &[Vm]) -> common::Vgpud {
    start_with(vms, common::ConfigBuilder::new())
}

/// [`start`] with more config (`extra`'s keys win).
fn start_with(vms: &[Vm], extra: common::ConfigBuilder) -> common::Vgpud {
    // Several cpu execution slots, so that streams can overlap there as on a GPU.
    // VGPU_TEST_ISOLATION=process|none sets `fault_isolation` (else the backend's default).
    let cfg = common::ConfigBuilder::new()
        .mediator("max_kernel_us", 2_000_000)
        .mediator("cpu_slots", 4)
        .merge(common::isolation())
        .merge(extra);
    // VGPU_TEST_LOG_DIR keeps vgpud's logs (for the GPU host's report).
    let log = std::env::var("VGPU_TEST_LOG_DIR").ok().map(|l| {
        std::fs::create_dir_all(&l).unwrap();
        PathBuf::from(l).join(format!("vgpud-{}.log", vms[0].name))
    });
    common::launch(
        vms,
        cfg,
        common::Launch {
            log,
            args: vec!["--backend".into(), backend()],
            ready_within: Duration::from_secs(60),
        },
    )
}

fn connect(d: &common::Vgpud, name: &str) -> Device {
    let dev = Device::connect(&d.socket(name)).unwrap();
    let info = dev.info();
    assert_eq!(info.backend_name(), backend(), "vgpud runs another backend");
    dev
}

fn status_of(e: Error) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("expected a command error, got {e:?}"))
}

fn busy_body(us: u32) -> LaunchBody {
    LaunchBody::new(
        Builtin::Busy.handle(),
        [1; 3],
        [1; 3],
        &(us as u64).to_le_bytes(),
    )
    .unwrap()
}

fn read_u32s(dev: &Device, p: u64, n: usize) -> Vec<u32> {
    let mut b = vec![0u8; n * 4];
    dev.copy_dtoh(&mut b, p).unwrap();
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

// ---- memory ---------------------------------------------------------------------------

#[test]
fn allocs_copies_memset_and_quota() {
    let mut vm = Vm::new("mem", 1);
    vm.quota = 64 << 20;
    let d = start(&[vm]);
    let dev = connect(&d, "mem");
    assert_eq!(dev.mem_info().unwrap(), (0, 64 << 20));
    // Copies of many sizes, larger than staging too (chunked, pipelined).
    let mut rng = Rng(11);
    for len in [1usize, 3, 4096, 65537, (1 << 20) + 7, 5 << 20] {
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let p = dev.alloc(len as u64).unwrap();
        dev.copy_htod(p, &data).unwrap();
        let mut back = vec![0u8; len];
        dev.copy_dtoh(&mut back, p).unwrap();
        assert!(back == data, "round trip of {len} bytes");
        let q = dev.alloc(len as u64).unwrap();
        dev.copy_dtod(q, p, len as u64).unwrap();
        let mut back = vec![0u8; len];
        dev.copy_dtoh(&mut back, q).unwrap();
        assert!(back == data, "d2d of {len} bytes");
        dev.free(p).unwrap();
        dev.free(q).unwrap();
    }
    assert_eq!(dev.mem_info().unwrap().0, 0);
    // memset, 8 and 32 bits, inside an allocation.
    let p = dev.alloc(4096).unwrap();
    dev.memset_d8(p, 0xab, 4096).unwrap();
    dev.memset_d32(p + 1024, 0x1234_5678, 256).unwrap();
    let mut b = vec![0u8; 4096];
    dev.copy_dtoh(&mut b, p).unwrap();
    assert!(b[..1024].iter().all(|&x| x == 0xab));
    assert!(b[1024..2048]
        .chunks(4)
        .all(|c| c == 0x1234_5678u32.to_le_bytes()));
    assert!(b[2048..].iter().all(|&x| x == 0xab));
    // Ranges, ownership and quota.
    assert_eq!(
        status_of(dev.memset_d8(p + 4000, 0, 97).unwrap_err()),
        Status::InvalidAddress
    );
    assert_eq!(
        status_of(dev.alloc(64 << 20).unwrap_err()),
        Status::QuotaExceeded
    );
    let big = dev.alloc(60 << 20).unwrap();
    assert_eq!(dev.mem_info().unwrap().0, (60 << 20) + 4096);
    dev.free(big).unwrap();
    dev.free(p).unwrap();
    assert_eq!(status_of(dev.free(p).unwrap_err()), Status::InvalidAddress);
    assert_eq!(d.vm_stats("mem").mem_used, 0);
    drop(dev);
    d.stop();
}

// ---- built-in kernels -----------------------------------------------------------------

#[test]
fn builtins_match_the_reference_exactly() {
    let d = start(&[Vm::new("k", 1)]);
    let dev = connect(&d, "k");
    let mut rng = Rng(3);
    workload(&dev, &mut rng);
    // sgemm: both kernel paths (256-thread blocks take the tiled one), partial tiles, k not a
    // multiple of the tile depth, beta != 0.
    let (m, n, k) = (200usize, 130usize, 37usize);
    let a = rng.f32s(m * k);
    let b = rng.f32s(k * n);
    let c = rng.f32s(m * n);
    let mut want = c.clone();
    kernels::sgemm(m, n, k, 1.25, &a, &b, -0.5, &mut want);
    let pa = dev.alloc((m * k * 4) as u64).unwrap();
    let pb = dev.alloc((k * n * 4) as u64).unwrap();
    let pc = dev.alloc((m * n * 4) as u64).unwrap();
    dev.copy_htod(pa, &f32_bytes(&a)).unwrap();
    dev.copy_htod(pb, &f32_bytes(&b)).unwrap();
    let params = vgpu_abi::cmd::SgemmParams {
        a: pa,
        b: pb,
        c: pc,
        m: m as u32,
        n: n as u32,
        k: k as u32,
        alpha: 1.25,
        beta: -0.5,
        _pad: 0,
    };
    for (grid, block) in [
        ([9u32, 13, 1], [16u32, 16, 1]),
        ([1, 1, 1], [256, 1, 1]),
        ([3, 2, 1], [8, 8, 1]),
        ([1, 1, 1], [1, 1, 1]),
    ] {
        dev.copy_htod(pc, &f32_bytes(&c)).unwrap();
        dev.launch_builtin(
            Builtin::Sgemm,
            grid,
            block,
            zerocopy::IntoBytes::as_bytes(&params),
        )
        .unwrap();
        let mut out = vec![0u8; m * n * 4];
        dev.copy_dtoh(&mut out, pc).unwrap();
        assert!(
            bytes_f32(&out) == want,
            "sgemm grid {grid:?} block {block:?}"
        );
    }
    // reduce over a large input (values on a 2^-24 grid: the f64 sum is exact).
    let nx = (1usize << 20) + 3;
    let x = rng.f32s(nx);
    let px = dev.alloc((nx * 4) as u64).unwrap();
    dev.copy_htod(px, &f32_bytes(&x)).unwrap();
    for block in [256u32, 1024, 1] {
        dev.launch_builtin(
            Builtin::ReduceSumF32,
            [64, 1, 1],
            [block, 1, 1],
            zerocopy::IntoBytes::as_bytes(&vgpu_abi::cmd::ReduceParams {
                x: px,
                out: pc,
                n: nx as u32,
                _pad: 0,
            }),
        )
        .unwrap();
        let mut s = [0u8; 4];
        dev.copy_dtoh(&mut s, pc).unwrap();
        assert_eq!(
            f32::from_le_bytes(s),
            kernels::reduce_sum(&x),
            "reduce, block {block}"
        );
    }
    // vector add and saxpy with odd sizes and tiny grids (grid-stride).
    let nv = 100_003usize;
    let va = rng.f32s(nv);
    let vb = rng.f32s(nv);
    let (p1, p2) = (
        dev.alloc((nv * 4) as u64).unwrap(),
        dev.alloc((nv * 4) as u64).unwrap(),
    );
    dev.copy_htod(p1, &f32_bytes(&va)).unwrap();
    dev.copy_htod(p2, &f32_bytes(&vb)).unwrap();
    dev.launch_builtin(
        Builtin::Saxpy,
        [3, 1, 1],
        [64, 1, 1],
        zerocopy::IntoBytes::as_bytes(&vgpu_abi::cmd::SaxpyParams {
            x: p1,
            y: p2,
            n: nv as u32,
            alpha: -3.75,
        }),
    )
    .unwrap();
    let mut want = vb.clone();
    kernels::saxpy(-3.75, &va, &mut want);
    let mut out = vec![0u8; nv * 4];
    dev.copy_dtoh(&mut out, p2).unwrap();
    assert!(bytes_f32(&out) == want, "saxpy");
    // busy takes at least its time.
    let t0 = Instant::now();
    dev.busy(20_000).unwrap();
    dev.synchronize().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(20));
    drop(dev);
    d.stop();
}

// ---- streams and events -----------------------------------------------------------------

#[test]
fn streams_keep_order_and_overlap() {
    let d = start(&[Vm::new("s", 1)]);
    let dev = connect(&d, "s");
    let p = dev.alloc(4096).unwrap();
    let q = dev.alloc(4096).unwrap();
    dev.memset_d32(p, 0, 1024).unwrap();
    dev.memset_d32(q, 0, 1024).unwrap();
    let s1 = dev.create_stream();
    let s2 = dev.create_stream();
    // On s1: a long busy kernel, then two memsets and a copy; order is kept.
    let t0 = Instant::now();
    let busy = s1.launch_body(busy_body(300_000)).unwrap();
    let m1 = s1.memset_d32(p, 1, 1024).unwrap();
    let m2 = s1.memset_d32(p, 2, 512).unwrap();
    let c1 = s1.copy_dtod(q, p, 4096).unwrap();
    // s2 is not held behind s1.
    s2.memset_d32(q + 2048, 9, 4).unwrap().wait().unwrap();
    s2.synchronize().unwrap();
    let other = t0.elapsed();
    assert!(
        other < Duration::from_millis(250),
        "another stream waited for s1's busy kernel ({other:?})"
    );
    // STREAM_QUERY: where the device orders streams (cuda) it answers at once, and s1's
    // kernel still runs; the cpu device answers it once s1's earlier commands retired.
    let done = s1.query().unwrap();
    if is_cuda() {
        assert!(!done, "s1 reported idle while its busy kernel runs");
        assert!(
            t0.elapsed() < Duration::from_millis(300),
            "the query waited"
        );
    } else {
        assert!(done && t0.elapsed() >= Duration::from_millis(300));
    }
    s1.synchronize().unwrap();
    assert!(s1.query().unwrap() && s2.query().unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(300));
    for p in [busy, m1, m2, c1] {
        p.wait().unwrap();
    }
    let v = read_u32s(&dev, q, 1024);
    assert!(v[..512].iter().all(|&x| x == 2), "s1 order");
    assert!(v[512..].iter().all(|&x| x == 1), "s1 order");
    // Too many distinct streams.
    for i in 0..MAX_STREAMS as u32 + 4 {
        let r = dev.stream(1000 + i).memset_d32(p, i, 1).unwrap().wait();
        // 0, s1 and s2 are in use already.
        if (i as usize) + 3 < MAX_STREAMS {
            r.unwrap();
        } else {
            assert_eq!(status_of(r.unwrap_err()), Status::InvalidArgument);
        }
    }
    drop(dev);
    d.stop();
}

/// A VM uses 300 streams at once (each with work queued behind a busy kernel, none waited for
/// until all are queued), every stream's results are right, and `[limits] max_streams` refuses
/// the first id past it with LIMIT_EXCEEDED without disturbing the streams in use.
/// A stream's synchronisation ends at its fence word (ABI 1.6), written only once the
/// stream's work is done; after a failure of the VM the fence is skipped, so the failure is
/// seen by that synchronisation, never later.
#[test]
fn stream_synchronize_through_fences() {
    let d = start(&[Vm::new("f", 1)]);
    let dev = connect(&d, "f");
    assert!(
        dev.takes_fences(),
        "a 1.6 device with this staging takes fences"
    );
    let p = dev.alloc(4096).unwrap();
    let s = dev.create_stream();
    for round in 0..3u32 {
        let t0 = Instant::now();
        let busy = s.launch_body(busy_body(100_000)).unwrap();
        let m = s.memset_d32(p, round + 1, 1024).unwrap();
        drop((busy, m));
        s.synchronize().unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "round {round}: the synchronisation ended before the busy kernel ({:?})",
            t0.elapsed()
        );
        assert!(read_u32s(&dev, p, 1024).iter().all(|&x| x == round + 1));
        assert_eq!(dev.take_unclaimed_error(), None);
    }
    // Refused by vgpud (memory of no allocation of this VM), never waited for.
    drop(s.memset_d32(0x10, 0, 4).unwrap());
    s.synchronize().unwrap();
    assert_eq!(dev.take_unclaimed_error(), Some(Status::InvalidAddress));
    // Accepted by vgpud, refused by the device: a launch asking for more shared memory than
    // any GPU has (the cpu device refuses every user kernel).
    let m = dev.load_module(&ptx("vector_add.ptx")).unwrap();
    let f = m.function("vadd").unwrap();
    let l = Launch::new(&f)
        .grid([1, 1, 1])
        .block([32, 1, 1])
        .shared_mem(64 << 20)
        .arg_ptr(p)
        .arg_ptr(p)
        .arg_ptr(p)
        .arg_u32(0);
    drop(s.launch(&l).unwrap());
    s.synchronize().unwrap();
    assert!(
        dev.take_unclaimed_error().is_some(),
        "the refused launch is reported by the synchronisation after it"
    );
    // And the next one is fast again and clean.
    s.memset_d32(p, 7, 1024).unwrap().wait().unwrap();
    s.synchronize().unwrap();
    assert_eq!(dev.take_unclaimed_error(), None);
    assert!(read_u32s(&dev, p, 1024).iter().all(|&x| x == 7));
    drop(m);
    drop(dev);
    d.stop();
}

#[test]
fn three_hundred_streams_at_once_and_the_stream_limit() {
    const N: usize = 300;
    // The default stream and the N others.
    let limit = N as i64 + 1;
    let d = start_with(
        &[Vm::new("many", 1)],
        common::ConfigBuilder::new().limits("max_streams", limit),
    );
    let dev = connect(&d, "many");
    // 256 words per stream.
    const WORDS: usize = 256;
    let bytes = (N * WORDS * 4) as u64;
    let p = dev.alloc(bytes).unwrap();
    let q = dev.alloc(bytes).unwrap();
    dev.memset_d32(p, 0, (N * WORDS) as u64).unwrap();
    dev.memset_d32(q, 0, (N * WORDS) as u64).unwrap();
    let streams: Vec<_> = (0..N).map(|_| dev.create_stream()).collect();
    let mut queued = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let (pi, qi) = (p + (i * WORDS * 4) as u64, q + (i * WORDS * 4) as u64);
        // In stream order: a short busy kernel, a fill, a second fill of the first half, then
        // the copy of both halves. A stream that did not keep its order shows 0s or the first
        // fill where the second one belongs.
        queued.push(s.launch_body(busy_body(200)).unwrap());
        queued.push(s.memset_d32(pi, i as u32 + 1, WORDS as u64).unwrap());
        queued.push(
            s.memset_d32(pi, 1_000_000 + i as u32, WORDS as u64 / 2)
                .unwrap(),
        );
        queued.push(s.copy_dtod(qi, pi, (WORDS * 4) as u64).unwrap());
    }
    for c in queued {
        c.wait().unwrap();
    }
    // A stream command's completion says vgpud issued it (on the cuda backend its work may
    // still run): every stream is synchronised before the results are read, and each stream's
    // synchronisation answers.
    for s in &streams {
        s.synchronize().unwrap();
    }
    dev.synchronize().unwrap();
    let v = read_u32s(&dev, q, N * WORDS);
    for (i, block) in v.chunks_exact(WORDS).enumerate() {
        let (first, second) = block.split_at(WORDS / 2);
        assert!(
            first.iter().all(|&x| x == 1_000_000 + i as u32)
                && second.iter().all(|&x| x == i as u32 + 1),
            "stream {i}: {:?}…",
            &block[..4]
        );
    }
    // One more id is past the configured limit (not the ABI's bound): LIMIT_EXCEEDED.
    let refused = dev.stream(50_000).memset_d32(p, 7, 1).unwrap().wait();
    assert_eq!(status_of(refused.unwrap_err()), Status::LimitExceeded);
    // The refusal touched nothing else: the streams in use still work.
    streams[N - 1].memset_d32(q, 42, 1).unwrap().wait().unwrap();
    assert_eq!(read_u32s(&dev, q, 1), [42]);
    drop(dev);
    d.stop();
}

#[test]
fn events_record_wait_synchronize_elapsed() {
    let d = start(&[Vm::new("e", 1)]);
    let dev = connect(&d, "e");
    let s1 = dev.create_stream();
    let s2 = dev.create_stream();
    let (e0, e1, never) = (
        dev.create_event().unwrap(),
        dev.create_event().unwrap(),
        dev.create_event().unwrap(),
    );
    // Elapsed time covers the busy kernel between the two records.
    s1.record(&e0).unwrap().wait().unwrap();
    s1.launch_body(busy_body(50_000)).unwrap().wait().unwrap();
    s1.record(&e1).unwrap().wait().unwrap();
    e1.synchronize().unwrap();
    let dt = e1.elapsed_since(&e0).unwrap();
    assert!(
        dt >= Duration::from_micros(49_000) && dt < Duration::from_secs(5),
        "{dt:?}"
    );
    assert!(e0.elapsed_ns_since(&e1).unwrap() < 0);
    // An event never recorded: synchronize and wait are no-ops, elapsed is an error.
    never.synchronize().unwrap();
    s2.wait_event(&never).unwrap().wait().unwrap();
    assert_eq!(
        status_of(never.elapsed_since(&e0).unwrap_err()),
        Status::InvalidArgument
    );
    // Cross-stream: s2 copies only after s1's memset, which follows a busy kernel.
    let p = dev.alloc(256).unwrap();
    let q = dev.alloc(256).unwrap();
    dev.memset_d32(p, 0, 64).unwrap();
    dev.memset_d32(q, 0, 64).unwrap();
    let b = s1.launch_body(busy_body(100_000)).unwrap();
    let m = s1.memset_d32(p, 7, 64).unwrap();
    s1.record(&e1).unwrap().wait().unwrap();
    s2.wait_event(&e1).unwrap().wait().unwrap();
    s2.copy_dtod(q, p, 256).unwrap().wait().unwrap();
    s2.synchronize().unwrap();
    assert!(read_u32s(&dev, q, 64).iter().all(|&x| x == 7));
    b.wait().unwrap();
    m.wait().unwrap();
    // Event ids are bounded.
    let bad = dev.submit(&Command::EventRecord { event: 5000 }.encode(0, 9));
    assert_eq!(
        Status::from_raw(bad.unwrap().status),
        Some(Status::InvalidArgument)
    );
    drop((e0, e1, never));
    drop(dev);
    d.stop();
}

// ---- isolation ------------------------------------------------------------------------

#[test]
fn fault_is_contained_to_its_vm() {
    let d = start(&[Vm::new("a", 1), Vm::new("b", 2)]);
    let a = connect(&d, "a");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sock_b = d.socket("b");
    let stop_b = stop.clone();
    let b = std::thread::spawn(move || {
        let dev = Device::connect(&sock_b).unwrap();
        let mut rng = Rng(99);
        let mut rounds = 0;
        while !stop_b.load(std::sync::atomic::Ordering::SeqCst) || rounds < 3 {
            workload(&dev, &mut rng);
            rounds += 1;
        }
        assert_eq!(dev.info().status, Some(DeviceStatus::Ready));
        rounds
    });
    for round in 0..3 {
        let p = a.alloc(1 << 20).unwrap();
        a.memset_d8(p, 1, 1 << 20).unwrap();
        // The fault surfaces at the launch (cpu) or at the next synchronisation (cuda).
        let first = match a.fault() {
            Err(e) => status_of(e),
            Ok(()) => status_of(a.synchronize().unwrap_err()),
        };
        assert_eq!(first, Status::KernelFault, "round {round}");
        assert_eq!(status_of(a.alloc(16).unwrap_err()), Status::ContextLost);
        assert_eq!(a.info().status, Some(DeviceStatus::Error));
        a.reset().unwrap();
        assert_eq!(a.info().status, Some(DeviceStatus::Ready));
        assert_eq!(a.mem_info().unwrap().0, 0, "reset freed A's memory");
        workload(&a, &mut Rng(round));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = b.join().expect("B saw exact results throughout");
    assert!(rounds >= 3);
    assert_eq!(d.vm_stats("b").errors, 0);
    drop(a);
    d.stop();
}

#[test]
fn disconnect_mid_work_frees_everything() {
    let mut vm = Vm::new("gone", 1);
    vm.quota = 512 << 20;
    let d = start(&[vm]);
    for round in 0..2 {
        let dev = connect(&d, "gone");
        assert_eq!(dev.mem_info().unwrap(), (0, 512 << 20), "round {round}");
        let p = dev.alloc(400 << 20).unwrap();
        dev.memset_d8(p, 3, 400 << 20).unwrap();
        let s = dev.create_stream();
        let busy = s.launch_body(busy_body(200_000)).unwrap();
        let copy = s.copy_dtod(p + (200 << 20), p, 100 << 20).unwrap();
        drop((busy, copy));
        drop(dev);
        let t0 = Instant::now();
        while d.vm_stats("gone").connected || d.vm_stats("gone").mem_used != 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "not released");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut d = d;
    assert!(d.alive());
    let st = d.stop();
    assert!(st.success());
}

// ---- modules --------------------------------------------------------------------------

#[test]
fn modules_load_everywhere_and_run_where_the_backend_has_them() {
    let d = start(&[Vm::new("m", 1)]);
    let dev = connect(&d, "m");
    let caps = dev.info().capabilities;
    assert_eq!(caps & CAP_MODULES != 0, is_cuda());
    // Built-in functions answer parameter info on every backend.
    let f = dev.builtin_function(Builtin::Sgemm).unwrap();
    assert_eq!(f.params_len(), 44);
    if !is_cuda() {
        // The cpu device records what a module declares and refuses to run its kernels.
        let m = dev.load_module(&ptx("vector_add.ptx")).unwrap();
        let f = m.function("vadd").unwrap();
        assert_eq!(f.params(), &[(0, 8), (8, 8), (16, 8), (24, 4)]);
        let (a, b, c) = (
            dev.alloc(64).unwrap(),
            dev.alloc(64).unwrap(),
            dev.alloc(64).unwrap(),
        );
        let l = Launch::new(&f).arg_ptr(a).arg_ptr(b).arg_ptr(c).arg_u32(16);
        let e = dev.stream(0).launch(&l).unwrap().wait().unwrap_err();
        assert_eq!(status_of(e), Status::NotSupported);
    }
    // Bad PTX is an error for the caller only.
    let e = dev.load_module("this is not PTX").unwrap_err();
    assert_eq!(status_of(e), Status::InvalidArgument);
    let m = dev.load_module(&ptx("vector_add.ptx")).unwrap();
    assert_eq!(
        status_of(m.function("no_such_kernel").unwrap_err()),
        Status::InvalidFunction
    );
    let f = m.function("vadd").unwrap();
    let h = f.handle();
    m.unload().unwrap();
    let after = dev.exec_raw(Command::FuncParamInfo { func: h, index: 0 });
    assert_eq!(after, Status::InvalidFunction);
    drop(dev);
    d.stop();
}

#[test]
fn images_larger_than_staging_load_in_parts_and_globals_are_ranges() {
    let d = start(&[Vm::new("big", 1), Vm::new("other", 2)]);
    let dev = connect(&d, "big");
    let staging = dev.info().staging_size;
    // A module image three times the staging area: PTX whose tail is a long comment, and a
    // module-scope global.
    let mut text = ptx("vector_add.ptx");
    text.push_str("\n.visible .global .align 4 .b32 gdata[64];\n// ");
    text.extend(std::iter::repeat_n('x', 3 * staging as usize));
    text.push('\n');
    let m = dev.load_module(&text).unwrap();
    let f = m.function("vadd").unwrap();
    assert_eq!(f.params(), &[(0, 8), (8, 8), (16, 8), (24, 4)]);

    // The global is device memory the VM may copy to and from.
    let (g, size) = dev.module_global(m.handle(), "gdata").unwrap();
    assert_eq!(size, 256);
    let data: Vec<u8> = (0..=255).collect();
    dev.copy_htod(g, &data).unwrap();
    let mut back = vec![0u8; 256];
    dev.copy_dtoh(&mut back, g).unwrap();
    assert_eq!(back, data);
    // Past its end, and for another VM, it is no range.
    let e = dev.copy_htod(g + 200, &data[..100]).unwrap_err();
    assert_eq!(status_of(e), Status::InvalidAddress);
    let other = connect(&d, "other");
    assert_eq!(
        other.exec_raw(Command::CopyD2D {
            dst: g,
            src: g,
            len: 4
        }),
        Status::InvalidAddress
    );
    let e = dev.module_global(m.handle(), "no_such_global").unwrap_err();
    assert_eq!(status_of(e), Status::NotFound);

    // A continuation with no image started is refused, and so are its own continuations,
    // while a new image loads as before.
    dev.write_staging(0, b"junk").unwrap();
    let part = |more, cont| Command::ModuleLoad {
        staging_offset: 0,
        len: 4,
        binary: false,
        more,
        cont,
    };
    assert_eq!(dev.exec_raw(part(true, true)), Status::InvalidArgument);
    assert_eq!(dev.exec_raw(part(false, true)), Status::InvalidArgument);
    let m2 = dev.load_module(&text).unwrap();
    m2.function("vadd").unwrap();

    // Unloading the module ends the global's range.
    let h = m.handle();
    m.unload().unwrap();
    let e = dev.copy_htod(g, &data).unwrap_err();
    assert_eq!(status_of(e), Status::InvalidAddress);
    assert_eq!(
        status_of(dev.module_global(h, "gdata").unwrap_err()),
        Status::InvalidArgument
    );
    drop(m2);
    drop((dev, other));
    d.stop();
}

trait Raw {
    fn exec_raw(&self, c: Command) -> Status;
}

impl Raw for Device {
    fn exec_raw(&self, c: Command) -> Status {
        Status::from_raw(self.submit(&c.encode(0, 1)).unwrap().status).unwrap()
    }
}

#[test]
fn ptx_vector_add_and_foreign_handles() {
    if skip_without_gpu("ptx_vector_add_and_foreign_handles") {
        return;
    }
    let d = start(&[Vm::new("p", 1), Vm::new("q", 2)]);
    let dev = connect(&d, "p");
    let other = connect(&d, "q");
    let m = dev.load_module(&ptx("vector_add.ptx")).unwrap();
    let f = m.function("vadd").unwrap();
    assert_eq!(f.params(), &[(0, 8), (8, 8), (16, 8), (24, 4)]);
    let n = 1_000_003usize;
    let mut rng = Rng(5);
    let (a, b) = (rng.f32s(n), rng.f32s(n));
    let pa = dev.alloc((n * 4) as u64).unwrap();
    let pb = dev.alloc((n * 4) as u64).unwrap();
    let pc = dev.alloc((n * 4) as u64).unwrap();
    dev.copy_htod(pa, &f32_bytes(&a)).unwrap();
    dev.copy_htod(pb, &f32_bytes(&b)).unwrap();
    let l = Launch::new(&f)
        .grid([512, 1, 1])
        .block([256, 1, 1])
        .arg_ptr(pa)
        .arg_ptr(pb)
        .arg_ptr(pc)
        .arg_u32(n as u32);
    dev.launch_function(&l).unwrap();
    let mut out = vec![0u8; n * 4];
    dev.copy_dtoh(&mut out, pc).unwrap();
    let mut want = vec![0f32; n];
    kernels::vector_add(&a, &b, &mut want);
    assert!(bytes_f32(&out) == want, "vadd");
    // The other VM cannot use these handles (and its device is unaffected).
    let body = l.pack().unwrap();
    assert_eq!(
        other.exec_raw(Command::Launch { launch: body }),
        Status::InvalidFunction
    );
    assert_eq!(
        other.exec_raw(Command::FuncParamInfo {
            func: f.handle(),
            index: 0
        }),
        Status::InvalidFunction
    );
    assert_eq!(
        other.exec_raw(Command::ModuleUnload { module: m.handle() }),
        Status::InvalidArgument
    );
    // Too few parameter bytes.
    let mut short = body;
    short.params_len = 20;
    assert_eq!(
        dev.exec_raw(Command::Launch { launch: short }),
        Status::InvalidArgument
    );
    other.nop().unwrap();
    assert_eq!(other.info().status, Some(DeviceStatus::Ready));
    // Handles are unique across VMs (each context numbers its own from a distinct base).
    let m2 = other.load_module(&ptx("vector_add.ptx")).unwrap();
    let f2 = m2.function("vadd").unwrap();
    assert_ne!(m2.handle(), m.handle());
    assert_ne!(f2.handle(), f.handle());
    drop(m2);
    drop(m);
    drop((dev, other));
    d.stop();
}

#[test]
fn ptx_mixed_parameter_types() {
    if skip_without_gpu("ptx_mixed_parameter_types") {
        return;
    }
    let d = start(&[Vm::new("x", 1)]);
    let dev = connect(&d, "x");
    let m = dev.load_module(&ptx("mixed_params.ptx")).unwrap();
    let f = m.function("mixed").unwrap();
    assert_eq!(
        f.params(),
        &[
            (0, 1),
            (2, 2),
            (4, 4),
            (8, 8),
            (16, 4),
            (24, 8),
            (32, 8),
            (40, 8),
            (48, 1)
        ]
    );
    let ou = dev.alloc(40).unwrap();
    let of = dev.alloc(16).unwrap();
    let l = Launch::new(&f)
        .arg_u8(0xa5)
        .arg_u16(0xbeef)
        .arg_u32(0xdead_beef)
        .arg_u64(0x0123_4567_89ab_cdef)
        .arg_f32(-1.5)
        .arg_f64(std::f64::consts::PI)
        .arg_ptr(ou)
        .arg_ptr(of)
        .arg(vgpu_guest::Arg::Bytes(vec![(-7i8) as u8]));
    dev.launch_function(&l).unwrap();
    let mut b = vec![0u8; 40];
    dev.copy_dtoh(&mut b, ou).unwrap();
    let u: Vec<u64> = b
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        u,
        vec![
            0xa5,
            0xbeef,
            0xdead_beef,
            0x0123_4567_89ab_cdef,
            (-7i64) as u64
        ]
    );
    let mut b = vec![0u8; 16];
    dev.copy_dtoh(&mut b, of).unwrap();
    assert_eq!(f64::from_le_bytes(b[..8].try_into().unwrap()), -1.5);
    assert_eq!(
        f64::from_le_bytes(b[8..].try_into().unwrap()),
        std::f64::consts::PI
    );
    drop(m);
    drop(dev);
    d.stop();
}

#[test]
fn ptx_shared_memory() {
    if skip_without_gpu("ptx_shared_memory") {
        return;
    }
    let d = start(&[Vm::new("sh", 1)]);
    let dev = connect(&d, "sh");
    let m = dev.load_module(&ptx("shared_reverse.ptx")).unwrap();
    let f = m.function("block_reverse").unwrap();
    let (n, bd) = (10_000usize, 128usize);
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let px = dev.alloc((n * 4) as u64).unwrap();
    let po = dev.alloc((n * 4) as u64).unwrap();
    dev.copy_htod(px, &f32_bytes(&x)).unwrap();
    let blocks = n.div_ceil(bd);
    let l = Launch::new(&f)
        .grid([blocks as u32, 1, 1])
        .block([bd as u32, 1, 1])
        .shared_mem((bd * 4) as u32)
        .arg_ptr(px)
        .arg_ptr(po)
        .arg_u32(n as u32);
    dev.launch_function(&l).unwrap();
    let mut want = vec![0f32; n];
    for blk in 0..blocks {
        for t in 0..bd {
            let (i, j) = (blk * bd + t, blk * bd + bd - 1 - t);
            if j < n {
                want[j] = if i < n { x[i] } else { 0.0 } + blk as f32;
            }
        }
    }
    let mut out = vec![0u8; n * 4];
    dev.copy_dtoh(&mut out, po).unwrap();
    assert!(bytes_f32(&out) == want, "block_reverse");
    // Too much dynamic shared memory is refused, not a crash.
    let huge = l.clone().shared_mem(1 << 30);
    assert_eq!(
        status_of(dev.launch_function(&huge).unwrap_err()),
        Status::InvalidArgument
    );
    dev.nop().unwrap();
    drop(m);
    drop(dev);
    d.stop();
}

#[test]
fn ptx_fault_is_contained() {
    if skip_without_gpu("ptx_fault_is_contained") {
        return;
    }
    let d = start(&[Vm::new("f", 1), Vm::new("g", 2)]);
    let dev = connect(&d, "f");
    let other = connect(&d, "g");
    let keep = other.alloc(4096).unwrap();
    other.memset_d32(keep, 0x5555_aaaa, 1024).unwrap();
    let m = dev.load_module(&ptx("oob_write.ptx")).unwrap();
    let f = m.function("oob_write").unwrap();
    let p = dev.alloc(4096).unwrap();
    let l = Launch::new(&f).arg_ptr(p).arg_u64(1 << 40);
    let first = match dev.launch_function(&l) {
        Err(e) => status_of(e),
        Ok(()) => status_of(dev.synchronize().unwrap_err()),
    };
    assert_eq!(first, Status::KernelFault);
    assert_eq!(dev.info().status, Some(DeviceStatus::Error));
    dev.reset().unwrap();
    // The reset destroyed the module with the context: unloading it now is an error.
    assert_eq!(status_of(m.unload().unwrap_err()), Status::InvalidArgument);
    workload(&dev, &mut Rng(1));
    assert!(read_u32s(&other, keep, 1024)
        .iter()
        .all(|&v| v == 0x5555_aaaa));
    workload(&other, &mut Rng(2));
    assert_eq!(d.vm_stats("g").errors, 0);
    drop((dev, other));
    d.stop();
}

#[test]
fn ptx_sources_and_modules_are_in_the_repo() {
    // Runs everywhere: the committed PTX declares the kernels the tests launch.
    for (file, entry) in [
        ("vector_add", "vadd"),
        ("mixed_params", "mixed"),
        ("shared_reverse", "block_reverse"),
        ("oob_write", "oob_write"),
    ] {
        let text = ptx(&format!("{file}.ptx"));
        assert!(
            text.contains(&format!(".entry {entry}(")),
            "{file}.ptx lacks .entry {entry}"
        );
        assert!(text.contains(".target sm_"), "{file}.ptx has no target");
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("kernels/ptx/{file}.cu"));
        assert!(src.exists(), "{} missing", src.display());
    }
}

/// A rough figure, not a pass/fail check: `cargo test -- --ignored sgemm_4096`.
#[test]
#[ignore = "timing; run by hand on the GPU host"]
fn sgemm_4096_timing() {
    let n = 4096u32;
    let d = start(&[Vm {
        quota: 1 << 30,
        ..Vm::new("t", 1)
    }]);
    let dev = connect(&d, "t");
    let bytes = (n as u64) * (n as u64) * 4;
    let (a, b, c) = (
        dev.alloc(bytes).unwrap(),
        dev.alloc(bytes).unwrap(),
        dev.alloc(bytes).unwrap(),
    );
    dev.memset_d32(a, 1.0f32.to_bits(), bytes / 4).unwrap();
    dev.memset_d32(b, 0.5f32.to_bits(), bytes / 4).unwrap();
    dev.sgemm(a, b, c, n, n, n, 1.0, 0.0).unwrap();
    dev.synchronize().unwrap();
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        dev.sgemm(a, b, c, n, n, n, 1.0, 0.0).unwrap();
    }
    dev.synchronize().unwrap();
    let dt = t0.elapsed() / reps;
    let mut out = [0u8; 4];
    dev.copy_dtoh(&mut out, c + bytes - 4).unwrap();
    assert_eq!(f32::from_le_bytes(out), n as f32 * 0.5);
    let tflops = 2.0 * (n as f64).powi(3) / dt.as_secs_f64() / 1e12;
    eprintln!(
        "sgemm {n}^3 on {}: {dt:?} per call, {tflops:.2} TFLOP/s",
        backend()
    );
    drop(dev);
    d.stop();
}
