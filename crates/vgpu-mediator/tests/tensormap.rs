//! Tensor maps (ABI 1.7) through a real vgpud, on whichever backend `VGPU_TEST_BACKEND` names
//! (`cpu` in CI; `cuda` on the GPU host, where vgpud calls the driver's encoder in the VM's
//! context): a map is encoded for any address (as NVIDIA's driver does, it is not checked); a
//! request that describes no tensor and values the encoder refuses are errors.

mod common;

use common::Vm;
use vgpu_abi::cmd::Command;
use vgpu_abi::tensormap::{TensorMapRequest, KIND_TILED, TENSOR_MAP_BYTES};
use vgpu_abi::Status;
use vgpu_guest::{Device, Error};

fn status_of(e: Error) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("expected a command error, got {e:?}"))
}

/// A tiled map of a dense `rows` x `cols` bf16 matrix at `addr`, 64 x 64 boxes, 128-byte
/// swizzle (as a Hopper GEMM asks for).
fn bf16_matrix(addr: u64, rows: u64, cols: u64) -> TensorMapRequest {
    TensorMapRequest {
        kind: KIND_TILED,
        data_type: 9,
        rank: 2,
        interleave: 0,
        swizzle: 3,
        l2_promotion: 2,
        oob_fill: 0,
        channels_per_pixel: 0,
        pixels_per_column: 0,
        reserved: 0,
        global_address: addr,
        global_dim: [cols, rows, 0, 0, 0],
        global_strides: [cols * 2, 0, 0, 0],
        box_dim: [64, 64, 0, 0, 0],
        element_strides: [1, 1, 0, 0, 0],
        lower_corner: [0; 3],
        upper_corner: [0; 3],
    }
}

#[test]
fn maps_are_encoded_and_bad_requests_refused() {
    let d = common::start(&[Vm::new("a", 1), Vm::new("b", 2)]);
    let a = Device::connect(&d.socket("a")).unwrap();
    let b = Device::connect(&d.socket("b")).unwrap();
    assert!(a.has_tensor_maps());
    let buf = a.alloc(256 * 256 * 2).unwrap();

    let req = bf16_matrix(buf, 256, 256);
    let map = a.tensor_map_encode(&req).unwrap();
    assert_ne!(
        map, [0u8; TENSOR_MAP_BYTES],
        "an encoded map is not all zero"
    );
    // The same request encodes the same map; another address another one.
    assert_eq!(a.tensor_map_encode(&req).unwrap(), map);
    let half = bf16_matrix(buf + 128 * 256 * 2, 128, 256);
    assert_ne!(a.tensor_map_encode(&half).unwrap(), map);
    if common::backend() == "cpu" {
        assert_eq!(
            map[..120],
            req.to_bytes()[..120],
            "the cpu device's encoding"
        );
    }

    // Another VM's memory or none at all: encoded all the same (a kernel of the VM's context
    // reading through it faults in that context, as with any wild pointer).
    assert_ne!(b.tensor_map_encode(&req).unwrap(), [0u8; TENSOR_MAP_BYTES]);
    let nowhere = bf16_matrix(0, 16, 16);
    a.tensor_map_encode(&nowhere).unwrap();
    // A swizzle the encoder does not know (the driver's INVALID_VALUE on the GPU).
    let bad = TensorMapRequest { swizzle: 77, ..req };
    if common::backend() == "cuda" {
        assert_eq!(
            status_of(a.tensor_map_encode(&bad).unwrap_err()),
            Status::InvalidArgument
        );
    }
    // No tensor at all: refused in the guest, before any command.
    let flat = TensorMapRequest { rank: 0, ..req };
    assert!(matches!(
        a.tensor_map_encode(&flat).unwrap_err(),
        Error::InvalidArgument(_)
    ));
    a.free(buf).unwrap();
}

#[test]
fn a_request_that_describes_no_tensor_is_refused_by_vgpud() {
    let d = common::start(&[Vm::new("a", 1)]);
    let dev = Device::connect(&d.socket("a")).unwrap();
    let req = TensorMapRequest {
        global_dim: [16, 0, 0, 0, 0],
        ..bf16_matrix(0, 16, 16)
    };
    dev.write_staging(0, req.to_bytes()).unwrap();
    // A raw entry: the guest library would refuse the request before sending it.
    let c = dev
        .submit(&Command::TensorMapEncode { staging_offset: 0 }.encode(0, 1))
        .unwrap();
    assert_eq!(Status::from_raw(c.status), Some(Status::InvalidArgument));
}
