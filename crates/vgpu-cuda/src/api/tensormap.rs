//! Tensor maps: `cuTensorMapEncodeTiled`, `cuTensorMapEncodeIm2col` and
//! `cuTensorMapReplaceAddress`. A `CUtensorMap` is 128 bytes in a format only NVIDIA's driver
//! knows, so vgpud encodes it in the VM's context (ABI 1.7, one round trip). Encoding is a pure
//! function of its arguments: each answer is kept, and a program that encodes the same map for
//! every launch (a GEMM library does) asks vgpud once. The kept requests also let
//! `cuTensorMapReplaceAddress` re-encode a map this library made with another address.
//!
//! As in NVIDIA's driver the address is only encoded, never checked (a map may be made before
//! its memory, then pointed at it). `cuTensorMapEncodeIm2colWide` (Blackwell) stays
//! `CUDA_ERROR_NOT_SUPPORTED`.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

use vgpu_abi::tensormap::{TensorMapRequest, KIND_IM2COL, KIND_TILED, MAX_RANK, TENSOR_MAP_BYTES};

use super::run;
use crate::driver;
use crate::types::CUresult;

/// `cuuint64_t`.
type U64 = u64;
/// An encoded map, as the program's `CUtensorMap` holds it.
type Map = [u8; TENSOR_MAP_BYTES];

/// Most answers kept; past it the cache starts over (a program making ever new maps pays a
/// round trip each, as it would without the cache).
const MAX_KEPT: usize = 4096;

/// The answers kept: request → map, and map → request for `cuTensorMapReplaceAddress`.
#[derive(Default)]
struct Kept {
    maps: HashMap<TensorMapRequest, Map>,
    requests: HashMap<Map, TensorMapRequest>,
}

fn kept() -> MutexGuard<'static, Kept> {
    static KEPT: OnceLock<Mutex<Kept>> = OnceLock::new();
    KEPT.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The map of `req`: kept, or encoded by vgpud.
fn encode(req: &TensorMapRequest) -> Result<Map, CUresult> {
    if let Some(m) = kept().maps.get(req) {
        return Ok(*m);
    }
    let d = driver::get()?;
    let map = d
        .dev
        .tensor_map_encode(req)
        .map_err(|e| driver::error_of(&e))?;
    let mut k = kept();
    if k.maps.len() >= MAX_KEPT {
        k.maps.clear();
        k.requests.clear();
    }
    k.maps.insert(*req, map);
    k.requests.insert(map, *req);
    Ok(map)
}

/// Copies `n` entries of a caller's array into `out` (NULL or `n` past `out`'s length: an
/// invalid value).
///
/// # Safety
/// `p` is NULL or valid for reads of `n` entries.
unsafe fn read_array<T: Copy>(p: *const T, n: usize, out: &mut [T]) -> Result<(), CUresult> {
    if n == 0 {
        return Ok(());
    }
    if p.is_null() || n > out.len() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, and the caller promises `n` readable entries.
    out[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
    Ok(())
}

/// Writes `map` into the program's `CUtensorMap`.
///
/// # Safety
/// `p` is valid for a write of 128 bytes.
unsafe fn put_map(p: *mut c_void, map: &Map) {
    // SAFETY: the caller promises 128 writable bytes; a CUtensorMap needs no more alignment
    // than bytes for this copy.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), p.cast::<u8>(), map.len()) };
}

/// The fields both encoders share.
struct Common {
    tensor_map: *mut c_void,
    data_type: c_uint,
    rank: c_uint,
    global_address: *mut c_void,
    global_dim: *const U64,
    global_strides: *const U64,
    element_strides: *const c_uint,
    interleave: c_uint,
    swizzle: c_uint,
    l2_promotion: c_uint,
    oob_fill: c_uint,
}

impl Common {
    /// The request these fields make, with `kind`'s fields still zero.
    ///
    /// # Safety
    /// The arrays are NULL or valid for reads of their entries for `rank`.
    unsafe fn request(&self, kind: u32, min_rank: usize) -> Result<TensorMapRequest, CUresult> {
        let rank = self.rank as usize;
        if self.tensor_map.is_null() || !(min_rank..=MAX_RANK).contains(&rank) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let mut r = TensorMapRequest {
            kind,
            data_type: self.data_type,
            rank: self.rank,
            interleave: self.interleave,
            swizzle: self.swizzle,
            l2_promotion: self.l2_promotion,
            oob_fill: self.oob_fill,
            channels_per_pixel: 0,
            pixels_per_column: 0,
            reserved: 0,
            global_address: self.global_address as u64,
            global_dim: [0; MAX_RANK],
            global_strides: [0; MAX_RANK - 1],
            box_dim: [0; MAX_RANK],
            element_strides: [0; MAX_RANK],
            lower_corner: [0; MAX_RANK - 2],
            upper_corner: [0; MAX_RANK - 2],
        };
        // SAFETY: forwarded from the caller, `rank` entries each (rank - 1 strides).
        unsafe {
            read_array(self.global_dim, rank, &mut r.global_dim)?;
            read_array(self.global_strides, rank - 1, &mut r.global_strides)?;
            read_array(self.element_strides, rank, &mut r.element_strides)?;
        }
        Ok(r)
    }

    /// Encodes `req` (this call's request, completed) into the program's `CUtensorMap`.
    ///
    /// # Safety
    /// `tensor_map` is 128 writable bytes (checked non-NULL by [`Self::request`]).
    unsafe fn encode_into(&self, req: &TensorMapRequest) -> Result<CUresult, CUresult> {
        let map = encode(req)?;
        // SAFETY: the caller's promise.
        unsafe { put_map(self.tensor_map, &map) };
        Ok(CUresult::CUDA_SUCCESS)
    }
}

/// `cuTensorMapEncodeTiled`.
///
/// # Safety
/// `tensor_map` is NULL or 128 writable bytes; the arrays are NULL or hold `rank` entries
/// (`global_strides`: `rank - 1`).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuTensorMapEncodeTiled(
    tensor_map: *mut c_void,
    data_type: c_uint,
    rank: c_uint,
    global_address: *mut c_void,
    global_dim: *const U64,
    global_strides: *const U64,
    box_dim: *const c_uint,
    element_strides: *const c_uint,
    interleave: c_uint,
    swizzle: c_uint,
    l2_promotion: c_uint,
    oob_fill: c_uint,
) -> CUresult {
    run("cuTensorMapEncodeTiled", || {
        let c = Common {
            tensor_map,
            data_type,
            rank,
            global_address,
            global_dim,
            global_strides,
            element_strides,
            interleave,
            swizzle,
            l2_promotion,
            oob_fill,
        };
        // SAFETY: the caller passes arrays of `rank` entries (CUDA's contract).
        let mut req = unsafe { c.request(KIND_TILED, 1)? };
        // SAFETY: as above.
        unsafe { read_array(box_dim, rank as usize, &mut req.box_dim)? };
        // SAFETY: the caller's CUtensorMap is 128 writable bytes.
        unsafe { c.encode_into(&req) }
    })
}

/// `cuTensorMapEncodeIm2col`.
///
/// # Safety
/// As [`cuTensorMapEncodeTiled`]; the corners are NULL or hold `rank - 2` entries.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuTensorMapEncodeIm2col(
    tensor_map: *mut c_void,
    data_type: c_uint,
    rank: c_uint,
    global_address: *mut c_void,
    global_dim: *const U64,
    global_strides: *const U64,
    lower_corner: *const c_int,
    upper_corner: *const c_int,
    channels_per_pixel: c_uint,
    pixels_per_column: c_uint,
    element_strides: *const c_uint,
    interleave: c_uint,
    swizzle: c_uint,
    l2_promotion: c_uint,
    oob_fill: c_uint,
) -> CUresult {
    run("cuTensorMapEncodeIm2col", || {
        let c = Common {
            tensor_map,
            data_type,
            rank,
            global_address,
            global_dim,
            global_strides,
            element_strides,
            interleave,
            swizzle,
            l2_promotion,
            oob_fill,
        };
        // SAFETY: the caller passes arrays of `rank` entries (CUDA's contract).
        let mut req = unsafe { c.request(KIND_IM2COL, 3)? };
        req.channels_per_pixel = channels_per_pixel;
        req.pixels_per_column = pixels_per_column;
        let corners = rank as usize - 2;
        // SAFETY: the corners have `rank - 2` entries (CUDA's contract).
        unsafe {
            read_array(lower_corner, corners, &mut req.lower_corner)?;
            read_array(upper_corner, corners, &mut req.upper_corner)?;
        }
        // SAFETY: the caller's CUtensorMap is 128 writable bytes.
        unsafe { c.encode_into(&req) }
    })
}

/// `cuTensorMapReplaceAddress`: the map, made by this library, re-encoded for another address.
///
/// # Safety
/// `tensor_map` is NULL or 128 readable and writable bytes.
#[no_mangle]
pub unsafe extern "C" fn cuTensorMapReplaceAddress(
    tensor_map: *mut c_void,
    global_address: *mut c_void,
) -> CUresult {
    run("cuTensorMapReplaceAddress", || {
        if tensor_map.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let mut map = [0u8; TENSOR_MAP_BYTES];
        // SAFETY: the caller's CUtensorMap is 128 readable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(tensor_map.cast::<u8>(), map.as_mut_ptr(), map.len())
        };
        // A map this library did not make (or no longer keeps) cannot be read.
        let Some(mut req) = kept().requests.get(&map).copied() else {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        };
        req.global_address = global_address as u64;
        let map = encode(&req)?;
        // SAFETY: as above, writable.
        unsafe { put_map(tensor_map, &map) };
        Ok(CUresult::CUDA_SUCCESS)
    })
}
