//! Tensor maps (ABI 1.7): the device encodes them, since only NVIDIA's driver knows their
//! format (see `vgpu_abi::tensormap`).

use vgpu_abi::cmd::Command;
use vgpu_abi::regs::off;
use vgpu_abi::tensormap::{TensorMapRequest, MAP_OFFSET, STAGING_BYTES, TENSOR_MAP_BYTES};

use super::Device;
use crate::Error;

/// The ABI minor version that added [`Command::TensorMapEncode`].
const TENSOR_MAP_MINOR: u16 = 7;

impl Device {
    /// Whether the device encodes tensor maps (ABI 1.7 or later; an older vgpud would answer
    /// UNKNOWN_OPCODE and note it as its last error, so the command is not sent to it).
    pub fn has_tensor_maps(&self) -> bool {
        self.view.load_u32(off::ABI_VERSION) as u16 >= TENSOR_MAP_MINOR
    }

    /// The 128-byte tensor map the device encodes for `req`.
    pub fn tensor_map_encode(
        &self,
        req: &TensorMapRequest,
    ) -> Result<[u8; TENSOR_MAP_BYTES], Error> {
        if !self.has_tensor_maps() {
            return Err(Error::NotSupported(
                "tensor maps need vgpud of ABI 1.7 or later",
            ));
        }
        req.extent().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the tensor map request describes no tensor: {req:?}"
            ))
        })?;
        // The request, then room up to the map: one payload of STAGING_BYTES.
        let mut payload = vec![0u8; STAGING_BYTES as usize];
        payload[..size_of::<TensorMapRequest>()].copy_from_slice(req.to_bytes());
        self.with_staging(&payload, |off| {
            self.exec(Command::TensorMapEncode {
                staging_offset: off,
            })?;
            let mut map = [0u8; TENSOR_MAP_BYTES];
            self.read_staging(off + MAP_OFFSET, &mut map)?;
            Ok(map)
        })
    }
}
