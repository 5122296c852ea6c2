//! Tensor maps (1.7): the descriptor a Hopper kernel's tensor memory accelerator reads. Its
//! 128 bytes are in a format only NVIDIA's driver knows, so the device encodes it
//! ([`crate::Opcode::TensorMapEncode`]): the guest writes a [`TensorMapRequest`] into staging,
//! vgpud answers the encoded map after it, and the guest hands those bytes to the program.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Most dimensions a tensor map has (`CUtensorMap`'s rank).
pub const MAX_RANK: usize = 5;
/// Bytes of an encoded tensor map (`sizeof(CUtensorMap)`).
pub const TENSOR_MAP_BYTES: usize = 128;
/// Where the encoded map goes, from the command's staging offset (after the request).
pub const MAP_OFFSET: u64 = 256;
/// Bytes of staging one [`crate::Opcode::TensorMapEncode`] uses from its offset.
pub const STAGING_BYTES: u64 = MAP_OFFSET + TENSOR_MAP_BYTES as u64;

/// [`TensorMapRequest::kind`]: `cuTensorMapEncodeTiled`.
pub const KIND_TILED: u32 = 0;
/// [`TensorMapRequest::kind`]: `cuTensorMapEncodeIm2col`.
pub const KIND_IM2COL: u32 = 1;

/// What `cuTensorMapEncodeTiled` or `cuTensorMapEncodeIm2col` was given, as the guest writes
/// it into staging (little-endian, 184 bytes). Fields a kind does not use are zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TensorMapRequest {
    /// [`KIND_TILED`] or [`KIND_IM2COL`].
    pub kind: u32,
    /// `CUtensorMapDataType`.
    pub data_type: u32,
    /// Dimensions, `1..=MAX_RANK` (im2col: `3..=MAX_RANK`).
    pub rank: u32,
    /// `CUtensorMapInterleave`.
    pub interleave: u32,
    /// `CUtensorMapSwizzle`.
    pub swizzle: u32,
    /// `CUtensorMapL2promotion`.
    pub l2_promotion: u32,
    /// `CUtensorMapFloatOOBfill`.
    pub oob_fill: u32,
    /// Im2col: channels per pixel.
    pub channels_per_pixel: u32,
    /// Im2col: pixels per column.
    pub pixels_per_column: u32,
    /// Zero.
    pub reserved: u32,
    /// The tensor's device address.
    pub global_address: u64,
    /// Elements per dimension (`rank` used).
    pub global_dim: [u64; MAX_RANK],
    /// Bytes between consecutive elements of dimensions 1.. (`rank - 1` used).
    pub global_strides: [u64; MAX_RANK - 1],
    /// Tiled: the box's elements per dimension.
    pub box_dim: [u32; MAX_RANK],
    /// Elements stepped over per dimension.
    pub element_strides: [u32; MAX_RANK],
    /// Im2col: the bounding box's lower corner (`rank - 2` used).
    pub lower_corner: [i32; MAX_RANK - 2],
    /// Im2col: the bounding box's upper corner (`rank - 2` used).
    pub upper_corner: [i32; MAX_RANK - 2],
}

/// Bits of one element of a `CUtensorMapDataType` (None: a type this ABI does not know).
pub fn element_bits(data_type: u32) -> Option<u64> {
    Some(match data_type {
        // UINT8
        0 => 8,
        // UINT16, FLOAT16, BFLOAT16
        1 | 6 | 9 => 16,
        // UINT32, INT32, FLOAT32, FLOAT32_FTZ, TFLOAT32, TFLOAT32_FTZ
        2 | 3 | 7 | 10 | 11 | 12 => 32,
        // UINT64, INT64, FLOAT64
        4 | 5 | 8 => 64,
        // 16U4_ALIGN8B, 16U4_ALIGN16B: 4-bit elements; 16U6_ALIGN16B: 6-bit elements
        13 | 14 => 4,
        15 => 6,
        _ => return None,
    })
}

impl TensorMapRequest {
    /// The request's bytes as they go into staging.
    pub fn to_bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    /// A request read back from staging (None: too few bytes).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(r, _)| r)
    }

    /// The dimensions in use (None: a rank out of `1..=MAX_RANK`).
    pub fn rank(&self) -> Option<usize> {
        let r = self.rank as usize;
        (1..=MAX_RANK).contains(&r).then_some(r)
    }

    /// Bytes from [`Self::global_address`] to just past the tensor's last element. None: a
    /// field makes no tensor (unknown kind or type, a rank out of range, a zero dimension, a
    /// product past 64 bits).
    pub fn extent(&self) -> Option<u64> {
        if self.kind != KIND_TILED && self.kind != KIND_IM2COL {
            return None;
        }
        let rank = self.rank()?;
        let bits = element_bits(self.data_type)?;
        let dims = &self.global_dim[..rank];
        if dims.contains(&0) {
            return None;
        }
        // Dimension 0 is contiguous; the others step by their stride.
        let mut end = dims[0].checked_mul(bits)?.div_ceil(8);
        for (d, s) in dims[1..].iter().zip(&self.global_strides) {
            end = end.checked_add((d - 1).checked_mul(*s)?)?;
        }
        Some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiled_2d(rows: u64, cols: u64) -> TensorMapRequest {
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
            global_address: 0x7000_0000_0000,
            global_dim: [cols, rows, 0, 0, 0],
            global_strides: [cols * 2, 0, 0, 0],
            box_dim: [64, 64, 0, 0, 0],
            element_strides: [1, 1, 0, 0, 0],
            lower_corner: [0; 3],
            upper_corner: [0; 3],
        }
    }

    #[test]
    fn the_request_is_184_bytes_and_fits_before_the_map() {
        assert_eq!(size_of::<TensorMapRequest>(), 184);
        assert!(size_of::<TensorMapRequest>() as u64 <= MAP_OFFSET);
        let r = tiled_2d(3, 5);
        assert_eq!(TensorMapRequest::from_bytes(r.to_bytes()), Some(r));
        assert_eq!(TensorMapRequest::from_bytes(&r.to_bytes()[..100]), None);
    }

    #[test]
    fn extent_is_the_last_element_past_the_start() {
        // A dense 128 x 256 bf16 matrix: every byte of it.
        assert_eq!(tiled_2d(128, 256).extent(), Some(128 * 256 * 2));
        // Rows padded to 1024 bytes: the last row ends after its 512 bytes.
        let mut r = tiled_2d(4, 256);
        r.global_strides[0] = 1024;
        assert_eq!(r.extent(), Some(3 * 1024 + 512));
        // 4-bit elements: half a byte each, rounded up.
        r.data_type = 13;
        r.global_dim = [33, 1, 0, 0, 0];
        assert_eq!(r.extent(), Some(17));
    }

    #[test]
    fn requests_that_make_no_tensor_have_no_extent() {
        let ok = tiled_2d(4, 4);
        for bad in [
            TensorMapRequest { rank: 0, ..ok },
            TensorMapRequest { rank: 6, ..ok },
            TensorMapRequest { kind: 7, ..ok },
            TensorMapRequest {
                data_type: 99,
                ..ok
            },
            TensorMapRequest {
                global_dim: [4, 0, 0, 0, 0],
                ..ok
            },
            TensorMapRequest {
                global_dim: [4, u64::MAX, 0, 0, 0],
                ..ok
            },
        ] {
            assert_eq!(bad.extent(), None, "{bad:?}");
        }
    }
}
