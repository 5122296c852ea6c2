//! Stream capture and graphs (ABI 1.7) through a real vgpud, on whichever backend
//! `VGPU_TEST_BACKEND` names (`cpu` in CI, `cuda` on the GPU host, where the capture is the
//! driver's own and a launch one `cuGraphLaunch`), in vgpud's process and with a worker
//! process per VM: a capture of staging copies, a memset and a built-in kernel across two
//! streams, replayed with new inputs; what a capture refuses; handles after a reset.

mod common;

use common::{f32_bytes, Vm};
use vgpu_abi::cmd::{LaunchBody, SaxpyParams};
use vgpu_abi::{Builtin, Status};
use vgpu_guest::{Device, Error};
use vgpu_mediator::testkit::ConfigBuilder;
use zerocopy::IntoBytes;

fn status_of(e: Error) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("expected a command error, got {e:?}"))
}

const N: usize = 1024;

fn capture_and_replay(cfg: ConfigBuilder) {
    // Room for spare staging (the upper half of at least 4 MiB), where the graph's page-locked
    // bytes live.
    let vm = Vm {
        shm: 16 << 20,
        ..Vm::new("a", 1)
    };
    let d = common::start_with(&[vm], cfg);
    let dev = Device::connect(&d.socket("a")).unwrap();
    assert!(dev.has_graphs());
    let (spare, len) = dev.spare_staging().expect("spare staging");
    let bytes = (N * 4) as u64;
    assert!(len >= 2 * bytes);
    let (input, output) = (spare, spare + bytes);
    let x = dev.alloc(bytes).unwrap();
    let y = dev.alloc(bytes).unwrap();
    let (s, side) = (dev.create_stream(), dev.create_stream());
    let (fork, join) = (dev.create_event().unwrap(), dev.create_event().unwrap());

    // out = 3·in + 1: in → x (staging); fork: side fills y with 1.0; join; y += 3x; y → out.
    dev.begin_capture(s.id()).unwrap();
    drop(s.copy_htod_staged(x, input, bytes).unwrap());
    drop(s.record(&fork).unwrap());
    drop(side.wait_event(&fork).unwrap());
    drop(side.memset_d32(y, 1.0f32.to_bits(), N as u64).unwrap());
    drop(side.record(&join).unwrap());
    drop(s.wait_event(&join).unwrap());
    let p = SaxpyParams {
        x,
        y,
        n: N as u32,
        alpha: 3.0,
    };
    let body = LaunchBody::new(
        Builtin::Saxpy.handle(),
        [4, 1, 1],
        [256, 1, 1],
        p.as_bytes(),
    )
    .unwrap();
    drop(s.launch_body(body).unwrap());
    drop(s.copy_dtoh_staged(y, output, bytes).unwrap());
    // A query of a capturing stream (here the joined one) is refused and invalidates the
    // capture (vgpu's libcuda refuses it before it is sent).
    assert_eq!(
        status_of(side.query().unwrap_err()),
        Status::CaptureUnsupported
    );
    assert_eq!(
        status_of(dev.end_capture(s.id()).unwrap_err()),
        Status::CaptureInvalidated
    );

    // Again, unbroken.
    dev.begin_capture(s.id()).unwrap();
    drop(s.copy_htod_staged(x, input, bytes).unwrap());
    drop(s.record(&fork).unwrap());
    drop(side.wait_event(&fork).unwrap());
    drop(side.memset_d32(y, 1.0f32.to_bits(), N as u64).unwrap());
    drop(side.record(&join).unwrap());
    drop(s.wait_event(&join).unwrap());
    drop(s.launch_body(body).unwrap());
    drop(s.copy_dtoh_staged(y, output, bytes).unwrap());
    let (g, nodes) = dev.end_capture(s.id()).unwrap();
    // The two copies, the memset and the launch at least (the driver makes the event record
    // and wait edges; the cpu device counts them as commands).
    assert!(nodes >= 4, "{nodes} nodes");
    assert_eq!(
        status_of(dev.end_capture(s.id()).unwrap_err()),
        Status::InvalidArgument,
        "no capture any more"
    );
    let exec = dev.graph_instantiate(g).unwrap();
    dev.graph_destroy(g).unwrap();
    for round in 0..4 {
        let v: Vec<f32> = (0..N).map(|i| (i % 17) as f32 + round as f32).collect();
        dev.write_staging(input, &f32_bytes(&v)).unwrap();
        let on = if round % 2 == 0 { s } else { side };
        drop(on.graph_launch(exec).unwrap());
        on.synchronize().unwrap();
        let mut out = vec![0u8; bytes as usize];
        dev.read_staging(output, &mut out).unwrap();
        let got: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let want: Vec<f32> = v.iter().map(|a| 3.0 * a + 1.0).collect();
        assert_eq!(got, want, "round {round}");
    }
    dev.graph_exec_destroy(exec).unwrap();
    assert_eq!(
        status_of(dev.graph_instantiate(g).unwrap_err()),
        Status::InvalidArgument
    );
}

#[test]
fn capture_and_replay_in_vgpud() {
    capture_and_replay(common::isolation());
}

#[test]
fn capture_and_replay_in_a_worker_process() {
    capture_and_replay(ConfigBuilder::new().mediator("fault_isolation", "process"));
}
