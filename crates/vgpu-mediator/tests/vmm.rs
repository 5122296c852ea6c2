//! Virtual memory management (ABI 1.6) through a real vgpud, on whichever backend
//! `VGPU_TEST_BACKEND` names (`cpu` in CI, `cuda` on the GPU host, where every command is the
//! driver's call in the VM's context): reserve, create, map, grant access, use the mapped
//! range as device memory, unmap, release, free; quotas and limits; another VM's handles and
//! ranges; a reset freeing everything.

mod common;

use common::{f32_bytes, Vm};
use std::time::{Duration, Instant};
use vgpu_abi::cmd::SaxpyParams;
use vgpu_abi::{Builtin, Status};
use vgpu_guest::{Device, Error};
use vgpu_mediator::testkit::{ConfigBuilder, PoolEntry};
use zerocopy::IntoBytes;

fn status_of(e: Error) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("expected a command error, got {e:?}"))
}

fn connect(d: &common::Vgpud, name: &str) -> Device {
    let dev = Device::connect(&d.socket(name)).unwrap();
    assert_eq!(dev.info().backend_name(), common::backend());
    dev
}

/// The device's minimum granularity (2 MiB on the cpu device, as on an H100/H200).
fn granularity(dev: &Device) -> u64 {
    let (min, rec) = dev.mem_granularity().unwrap();
    assert!(min.is_power_of_two() && rec >= min && rec.is_multiple_of(min));
    if common::backend() == "cpu" {
        assert_eq!((min, rec), (2 << 20, 2 << 20));
    }
    min
}

fn wait_for(what: &str, d: &common::Vgpud, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reserve_create_map_use_unmap_release_free() {
    let d = common::start(&[Vm::new("a", 1)]);
    let dev = connect(&d, "a");
    let g = granularity(&dev);
    let va = dev.mem_address_reserve(4 * g, 0, 0).unwrap();
    assert!(va.is_multiple_of(g));
    assert_eq!(
        status_of(dev.mem_create(g + 1).unwrap_err()),
        Status::InvalidArgument,
        "not a multiple of the granularity"
    );
    let h1 = dev.mem_create(g).unwrap();
    let h2 = dev.mem_create(2 * g).unwrap();
    assert_eq!(
        dev.mem_info().unwrap().0,
        3 * g,
        "handles count as memory in use"
    );
    assert_eq!(d.vm_stats("a").mem_used, 3 * g);

    // Mappings: inside the reservation, over no other one, of the VM's own handles.
    assert_eq!(
        status_of(dev.mem_map(va + 3 * g, 2 * g, 0, h2).unwrap_err()),
        Status::InvalidAddress,
        "past the reservation"
    );
    assert_eq!(
        status_of(dev.mem_map(va, g, 0, h1 ^ 0x5555).unwrap_err()),
        Status::InvalidArgument,
        "no such handle"
    );
    dev.mem_map(va, g, 0, h1).unwrap();
    dev.mem_map(va + g, 2 * g, 0, h2).unwrap();
    assert_eq!(
        status_of(dev.mem_map(va + 2 * g, g, 0, h1).unwrap_err()),
        Status::InvalidArgument,
        "overlaps h2's mapping"
    );
    // Mapped, but not usable before access is granted.
    assert_eq!(
        status_of(dev.copy_htod(va, &[1, 2, 3]).unwrap_err()),
        Status::InvalidAddress
    );
    assert_eq!(
        status_of(dev.mem_set_access(va, 2 * g).unwrap_err()),
        Status::InvalidAddress,
        "part of a mapping"
    );
    dev.mem_set_access(va, 3 * g).unwrap();

    // The mapped range is device memory: copies, memsets and kernels, across the two handles.
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    let at = va + g - 4096;
    dev.copy_htod(at, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.copy_dtoh(&mut back, at).unwrap();
    assert!(back == data, "round trip across the mappings");
    dev.memset_d32(va + g - 8, 0xdead_beef, 4).unwrap();
    let mut b = [0u8; 16];
    dev.copy_dtoh(&mut b, va + g - 8).unwrap();
    assert!(b.chunks(4).all(|c| c == 0xdead_beefu32.to_le_bytes()));
    let plain = dev.alloc(8192).unwrap();
    dev.copy_dtod(plain, at, 8192).unwrap();
    let mut b2 = vec![0u8; 8192];
    dev.copy_dtoh(&mut b2, plain).unwrap();
    assert_eq!(b2[..4088], data[..4088]);
    // saxpy with x in a plain allocation and y across the two mappings.
    let n = 1024usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.5).collect();
    let yp = va + g - 2048;
    dev.copy_htod(plain, &f32_bytes(&x)).unwrap();
    dev.copy_htod(yp, &f32_bytes(&y)).unwrap();
    let p = SaxpyParams {
        x: plain,
        y: yp,
        n: n as u32,
        alpha: 3.0,
    };
    dev.launch_builtin(Builtin::Saxpy, [4, 1, 1], [256, 1, 1], p.as_bytes())
        .unwrap();
    dev.synchronize().unwrap();
    let mut out = vec![0u8; n * 4];
    dev.copy_dtoh(&mut out, yp).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(x, y)| 3.0 * x + y).collect();
    assert_eq!(common::bytes_f32(&out), want);

    // Unmapping and freeing take whole mappings and reservations.
    assert_eq!(
        status_of(dev.mem_unmap(va, 2 * g).unwrap_err()),
        Status::InvalidAddress,
        "part of h2's mapping"
    );
    assert_eq!(
        status_of(dev.mem_address_free(va, 4 * g).unwrap_err()),
        Status::InvalidArgument,
        "still mapped"
    );
    // Released while mapped: the memory stays, and stays usable, until the unmap.
    dev.mem_release(h1).unwrap();
    assert_eq!(
        status_of(dev.mem_release(h1).unwrap_err()),
        Status::InvalidArgument,
        "released twice"
    );
    assert_eq!(dev.mem_info().unwrap().0, 3 * g + 8192);
    dev.copy_dtoh(&mut b, va).unwrap();
    dev.mem_unmap(va, g).unwrap();
    assert_eq!(dev.mem_info().unwrap().0, 2 * g + 8192, "h1 freed");
    assert_eq!(
        status_of(dev.copy_dtoh(&mut b, va).unwrap_err()),
        Status::InvalidAddress,
        "unmapped"
    );
    assert_eq!(
        status_of(dev.mem_unmap(va, g).unwrap_err()),
        Status::InvalidAddress,
        "unmapped twice"
    );
    dev.copy_dtoh(&mut b, va + g).unwrap();
    dev.mem_unmap(va + g, 2 * g).unwrap();
    assert_eq!(dev.mem_info().unwrap().0, 2 * g + 8192, "h2 not released");
    dev.mem_release(h2).unwrap();
    dev.free(plain).unwrap();
    assert_eq!(dev.mem_info().unwrap().0, 0);
    dev.mem_address_free(va, 4 * g).unwrap();
    assert_eq!(
        status_of(dev.mem_address_free(va, 4 * g).unwrap_err()),
        Status::InvalidAddress,
        "freed twice"
    );
    // An aligned reservation.
    let big = dev.mem_address_reserve(g, 1 << 30, 0).unwrap();
    assert!(big.is_multiple_of(1 << 30));
    dev.mem_address_free(big, g).unwrap();
    assert_eq!(d.vm_stats("a").mem_used, 0);
    drop(dev);
    d.stop();
}

#[test]
fn another_vms_handles_and_ranges_are_refused_and_a_reset_frees_everything() {
    let d = common::start(&[Vm::new("a", 1), Vm::new("b", 2)]);
    let a = connect(&d, "a");
    let b = connect(&d, "b");
    let g = granularity(&a);
    let va = a.mem_address_reserve(2 * g, 0, 0).unwrap();
    let h = a.mem_create(g).unwrap();
    a.mem_map(va, g, 0, h).unwrap();
    a.mem_set_access(va, g).unwrap();
    a.copy_htod(va, &[9; 64]).unwrap();

    let vb = b.mem_address_reserve(2 * g, 0, 0).unwrap();
    let hb = b.mem_create(g).unwrap();
    // With a worker process per VM (the cuda default) each VM has an address space and
    // handle numbers of its own: a's numbers may be b's too, and then name b's own things.
    let same_handle = h == hb;
    let same_range = va < vb + 2 * g && vb < va + 2 * g;
    type Try<'a> = Box<dyn Fn() -> Result<(), Error> + 'a>;
    let attempts: Vec<(&str, bool, Try)> = vec![
        (
            "map a's handle",
            same_handle,
            Box::new(|| b.mem_map(vb, g, 0, h)),
        ),
        (
            "release a's handle",
            same_handle,
            Box::new(|| b.mem_release(h)),
        ),
        (
            "map into a's range",
            same_range,
            Box::new(|| b.mem_map(va + g, g, 0, hb)),
        ),
        (
            "unmap a's range",
            same_range,
            Box::new(|| b.mem_unmap(va, g)),
        ),
        (
            "grant access to a's range",
            same_range,
            Box::new(|| b.mem_set_access(va, g)),
        ),
        (
            "free a's reservation",
            same_range,
            Box::new(|| b.mem_address_free(va, 2 * g)),
        ),
        (
            "read a's mapping",
            same_range,
            Box::new(|| b.copy_dtoh(&mut [0u8; 64], va)),
        ),
        (
            "fill a's mapping",
            same_range,
            Box::new(|| b.memset_d8(va, 0, 64)),
        ),
    ];
    for (what, shared_number, attempt) in attempts {
        if shared_number {
            eprintln!("not tried (b has the same number of its own): {what}");
            continue;
        }
        let want = if what.contains("handle") {
            Status::InvalidArgument
        } else {
            Status::InvalidAddress
        };
        assert_eq!(status_of(attempt().unwrap_err()), want, "{what}");
    }
    let mut back = [0u8; 64];
    a.copy_dtoh(&mut back, va).unwrap();
    assert_eq!(back, [9; 64], "a's memory untouched");

    // A reset frees a's reservations, handles and mappings (and its quota).
    a.reset().unwrap();
    assert_eq!(a.mem_info().unwrap().0, 0);
    wait_for("a's memory to be freed", &d, || {
        d.vm_stats("a").mem_used == 0
    });
    assert_eq!(
        status_of(a.copy_dtoh(&mut back, va).unwrap_err()),
        Status::InvalidAddress
    );
    assert_eq!(
        status_of(a.mem_release(h).unwrap_err()),
        Status::InvalidArgument
    );
    assert_eq!(
        status_of(a.mem_unmap(va, g).unwrap_err()),
        Status::InvalidAddress
    );
    // b is untouched by a's reset.
    b.mem_map(vb, g, 0, hb).unwrap();
    b.mem_set_access(vb, g).unwrap();
    b.memset_d8(vb, 5, 64).unwrap();
    b.copy_dtoh(&mut back, vb).unwrap();
    assert_eq!(back, [5; 64]);
    // And a starts afresh.
    let va2 = a.mem_address_reserve(g, 0, 0).unwrap();
    let h2 = a.mem_create(g).unwrap();
    a.mem_map(va2, g, 0, h2).unwrap();
    a.mem_set_access(va2, g).unwrap();
    a.copy_dtoh(&mut back, va2).unwrap();
    drop((a, b));
    d.stop();
}

#[test]
fn handles_count_against_quotas_and_limits() {
    // 2 MiB granularity: a's quota holds two handles, the pool three (and 1 MiB); three
    // entries at most of each kind.
    let g: u64 = 2 << 20;
    let mut a = Vm::new("a", 1);
    a.quota = 2 * g;
    let mut b = Vm::new("b", 2);
    b.quota = 3 * g + (1 << 20);
    let cfg = ConfigBuilder::new()
        .pool(PoolEntry::new(0).name("p").mem_quota(3 * g + (1 << 20)))
        .limits("max_allocations", 3);
    let d = common::start_with(&[a, b], cfg);
    let a = connect(&d, "a");
    let b = connect(&d, "b");
    assert_eq!(granularity(&a), g, "the test's sizes assume 2 MiB");
    let h1 = a.mem_create(g).unwrap();
    assert_eq!(
        status_of(a.mem_create(2 * g).unwrap_err()),
        Status::QuotaExceeded,
        "a's own quota"
    );
    let h2 = a.mem_create(g).unwrap();
    assert_eq!(a.mem_info().unwrap(), (2 * g, 2 * g));
    let hb = b.mem_create(g).unwrap();
    assert_eq!(
        status_of(b.mem_create(g).unwrap_err()),
        Status::QuotaExceeded,
        "the pool's quota"
    );
    assert_eq!(d.stats().pools[0].mem_used, 3 * g);
    // Released and unmapped: back to both quotas.
    a.mem_release(h1).unwrap();
    assert_eq!(d.stats().pools[0].mem_used, 2 * g);
    let hb2 = b.mem_create(g).unwrap();
    // The allocation limit counts handles with allocations.
    let p = b.alloc(4096).unwrap();
    assert_eq!(status_of(b.alloc(4096).unwrap_err()), Status::LimitExceeded);
    b.free(p).unwrap();
    // Reservations and mappings have the same limit each.
    let r: Vec<u64> = (0..3)
        .map(|_| b.mem_address_reserve(g, 0, 0).unwrap())
        .collect();
    assert_eq!(
        status_of(b.mem_address_reserve(g, 0, 0).unwrap_err()),
        Status::LimitExceeded
    );
    b.mem_map(r[0], g, 0, hb).unwrap();
    b.mem_map(r[1], g, 0, hb).unwrap();
    b.mem_map(r[2], g, 0, hb2).unwrap();
    // A VM that leaves gives its memory back to the pool.
    drop(b);
    wait_for("b's memory to return", &d, || {
        d.stats().pools[0].mem_used == g
    });
    let _ = h2;
    drop(a);
    d.stop();
}
