//! An untrusted guest: one client scribbles random bytes over its whole shared memory,
//! rewrites descriptors after ringing, and storms the doorbell, while another client keeps
//! verifying its own results bit-exactly. vgpud must stay up and the good client unharmed.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_abi::cmd::{Builtin, Command, LaunchBody, Sqe, SQE_SIZE};
use vgpu_abi::{DeviceStatus, Layout};
use vgpu_guest::Device;
use zerocopy::IntoBytes;

#[test]
fn hostile_client_cannot_disturb_another() {
    let mut evil_vm = Vm::new("evil", 666);
    evil_vm.quota = 64 << 20;
    let mut d = start_with(
        &[evil_vm, Vm::new("good", 1)],
        ConfigBuilder::new().mediator("max_kernel_us", 2000),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let good_rounds = Arc::new(AtomicU64::new(0));

    let good_sock = d.socket("good");
    let (stop2, rounds2) = (stop.clone(), good_rounds.clone());
    let good = std::thread::spawn(move || {
        let dev = Device::connect(&good_sock).unwrap();
        let mut rng = Rng(99);
        while !stop2.load(Ordering::Relaxed) {
            workload(&dev, &mut rng);
            rounds2.fetch_add(1, Ordering::Relaxed);
        }
        dev
    });

    let evil = Device::connect(&d.socket("evil")).unwrap();
    let shm = evil.shm();
    let info = evil.info();
    let layout = Layout::compute(info.shm_size, info.sq_entries, info.cq_entries).unwrap();
    let mut rng = Rng(0xbad);
    let t0 = Instant::now();
    let mut phase = 0u64;
    while t0.elapsed() < Duration::from_secs(4) {
        phase += 1;
        match phase % 4 {
            // Random bytes over the whole BAR2, then ring.
            0 => {
                let mut buf = vec![0u8; shm.len()];
                buf.chunks_mut(8)
                    .for_each(|c| c.copy_from_slice(&rng.next_u64().to_le_bytes()[..c.len()]));
                shm.write_bytes(0, &buf);
                evil.ring_doorbell();
            }
            // Structurally valid but malicious entries: wild pointers, foreign handles, long
            // busy kernels, staging at the edge; ring; then rewrite them.
            1 => {
                for slot in 0..layout.sq_entries {
                    let cmd = match rng.next_u64() % 5 {
                        0 => Command::CopyD2H {
                            src: rng.next_u64(),
                            staging_offset: rng.next_u64() % layout.staging_size,
                            len: rng.next_u64() % 4096,
                        },
                        1 => Command::MemAlloc {
                            size: rng.next_u64() >> (rng.next_u64() % 64) | 1,
                        },
                        2 => Command::Launch {
                            launch: LaunchBody::new(
                                Builtin::Busy.handle(),
                                [1; 3],
                                [1; 3],
                                &2000u64.to_le_bytes(),
                            )
                            .unwrap(),
                        },
                        3 => Command::Launch {
                            launch: LaunchBody::new(
                                Builtin::Sgemm.handle(),
                                [1; 3],
                                [1; 3],
                                &[0xff; 48],
                            )
                            .unwrap(),
                        },
                        _ => Command::MemFree {
                            ptr: rng.next_u64(),
                        },
                    };
                    let sqe: Sqe = cmd.encode(0, slot as u64);
                    shm.write_bytes(layout.sqe_offset(slot), sqe.as_bytes());
                }
                let tail_off = layout.sq_offset as usize;
                let t = shm.load_u32(tail_off);
                shm.store_u32(
                    tail_off,
                    t.wrapping_add((rng.next_u64() % (layout.sq_entries as u64 + 2)) as u32),
                );
                evil.ring_doorbell();
                for slot in 0..layout.sq_entries {
                    shm.fill(
                        layout.sqe_offset(slot),
                        SQE_SIZE,
                        (rng.next_u64() & 0xff) as u8,
                    );
                }
            }
            // Doorbell storm.
            2 => {
                for _ in 0..5000 {
                    evil.ring_doorbell();
                }
            }
            // Wild ring indices and reset requests.
            _ => {
                shm.store_u32(layout.cq_offset as usize + 64, rng.next_u64() as u32);
                shm.store_u32(layout.sq_offset as usize, rng.next_u64() as u32);
                shm.store_u32(vgpu_abi::regs::REG_RESET_REQUEST, rng.next_u64() as u32);
                evil.ring_doorbell();
            }
        }
        assert!(d.alive(), "vgpud died:\n{}", d.log_text());
    }
    stop.store(true, Ordering::Relaxed);
    let good_dev = good
        .join()
        .expect("the good client saw a wrong result or an error");
    let rounds = good_rounds.load(Ordering::Relaxed);
    assert!(
        rounds >= 5,
        "good client made too little progress: {rounds} rounds"
    );
    assert!(d.alive());
    let gs = d.vm_stats("good");
    assert_eq!(gs.errors, 0, "good client saw errors: {gs:?}");
    let es = d.vm_stats("evil");
    assert!(es.errors > 0 || es.fences > 0, "{es:?}");

    // The hostile VM can recover by resetting its device.
    evil.reset().unwrap();
    assert_eq!(evil.info().status, Some(DeviceStatus::Ready));
    // However the random phases fell (a random reset request can pre-empt each fence, and a
    // loaded machine runs few phases), one certain violation: an SQ tail far ahead.
    shm.store_u32(
        layout.sq_offset as usize + vgpu_abi::layout::ring_hdr::TAIL,
        1 << 30,
    );
    evil.ring_doorbell();
    let t = Instant::now();
    while evil.info().status != Some(DeviceStatus::Fenced) {
        assert!(t.elapsed() < Duration::from_secs(10), "not fenced");
        std::thread::sleep(Duration::from_millis(1));
    }
    evil.reset().unwrap();
    assert_eq!(evil.info().status, Some(DeviceStatus::Ready));
    workload(&evil, &mut Rng(5));
    workload(&good_dev, &mut Rng(6));
    drop((evil, good_dev));
    assert!(
        d.log_text().contains("fencing VM"),
        "expected at least one fence in the log"
    );
    let st = d.stop();
    assert!(st.success());
}
