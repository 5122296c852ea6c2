//! 2D memsets (`cuMemsetD2D8/16/32` and their `Async` forms): `height` rows of `width`
//! elements, `pitch` bytes apart. Rows that follow each other (`pitch` = the row's bytes, or
//! one row) are one fill; otherwise each row is one fill command, all queued on the stream
//! (vgpud has no strided fill).

use super::context::require_current;
use super::copy::{dev_err, memset16, memset_on};
use super::memory::extent_of;
use super::run;
use super::stream::{enqueue, resolve, stream};
use crate::types::{CUdeviceptr, CUresult, CUstream};

/// The fills a valid, non-empty 2D memset is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fills {
    /// Fill commands.
    pub count: u64,
    /// Elements each.
    pub elems: u64,
    /// Bytes from one fill's start to the next.
    pub pitch: u64,
}

/// Checks a 2D memset of `height` rows of `width` elements of `elem` bytes at `dst`, rows
/// `pitch` bytes apart (the pitch is unused for one row, as NVIDIA's driver documents);
/// `alloc` answers the allocation holding an address. `None` for a memset of nothing.
pub fn fills(
    dst: u64,
    pitch: u64,
    elem: u64,
    width: u64,
    height: u64,
    alloc: impl Fn(u64) -> Option<(u64, u64)>,
) -> Result<Option<Fills>, &'static str> {
    if !dst.is_multiple_of(elem) {
        return Err("the destination is not aligned to the element size");
    }
    let row = width.checked_mul(elem).ok_or("the row's size overflows")?;
    if height > 1 {
        if pitch < row {
            return Err("the pitch is less than the row's bytes");
        }
        if !pitch.is_multiple_of(elem) {
            return Err("the pitch is not a multiple of the element size");
        }
    }
    if width == 0 || height == 0 {
        return Ok(None);
    }
    let span = (height - 1)
        .checked_mul(pitch)
        .and_then(|s| s.checked_add(row))
        .ok_or("the rows' span overflows")?;
    let end = dst.checked_add(span).ok_or("the rows' span overflows")?;
    match alloc(dst) {
        Some((b, size)) if end <= b + size => {}
        Some(_) => return Err("the rows run past the end of the allocation"),
        None => return Err("the destination is not an allocation of this process"),
    }
    Ok(Some(if height == 1 || pitch == row {
        Fills {
            count: 1,
            elems: width * height,
            pitch: row,
        }
    } else {
        Fills {
            count: height,
            elems: width,
            pitch,
        }
    }))
}

/// A 2D memset of `elem`-byte elements (1, 2 or 4) of `value`, queued on stream `s`; with
/// `sync`, waited for.
#[allow(clippy::too_many_arguments)]
fn memset_2d(
    dst: CUdeviceptr,
    pitch: usize,
    value: u32,
    elem: u64,
    width: usize,
    height: usize,
    s: CUstream,
    pt: bool,
    sync: bool,
) -> Result<CUresult, CUresult> {
    require_current()?;
    let f = match fills(
        dst,
        pitch as u64,
        elem,
        width as u64,
        height as u64,
        extent_of,
    ) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(CUresult::CUDA_SUCCESS),
        Err(_) => return Err(CUresult::CUDA_ERROR_INVALID_VALUE),
    };
    let n = f.elems as usize;
    let [lo, hi] = (value as u16).to_le_bytes();
    // A 16-bit pattern of two different bytes is a 32-bit fill where rows start 4-aligned
    // with an even count; otherwise the pattern is copied in from the host, so the first row
    // is filled that way and copied on the device to the others.
    let direct16 =
        lo == hi || (dst.is_multiple_of(4) && f.pitch.is_multiple_of(4) && n.is_multiple_of(2));
    if elem == 2 && !direct16 && f.count > 1 {
        memset16(dst, value as u16, n, s, pt)?;
        let st = enqueue(s, pt)?;
        for r in 1..f.count {
            drop(
                st.copy_dtod(dst + r * f.pitch, dst, f.elems * 2)
                    .map_err(dev_err)?,
            );
        }
    } else {
        for r in 0..f.count {
            let at = dst + r * f.pitch;
            match elem {
                2 => memset16(at, value as u16, n, s, pt)?,
                _ => memset_on(at, value, elem, n, s, pt)?,
            };
        }
    }
    if sync {
        stream(resolve(s, pt)?)?.synchronize().map_err(dev_err)?;
    }
    Ok(CUresult::CUDA_SUCCESS)
}

macro_rules! memset_2d_entry {
    ($name:ident, $t:ty, $elem:expr, stream $pt:expr) => {
        /// A 2D memset on a stream (see the module's notes).
        #[no_mangle]
        pub extern "C" fn $name(
            dst: CUdeviceptr,
            pitch: usize,
            v: $t,
            width: usize,
            height: usize,
            s: CUstream,
        ) -> CUresult {
            run(stringify!($name), || {
                memset_2d(
                    dst,
                    pitch,
                    u32::from(v),
                    $elem,
                    width,
                    height,
                    s,
                    $pt,
                    false,
                )
            })
        }
    };
    ($name:ident, $t:ty, $elem:expr, sync $pt:expr) => {
        /// A 2D memset ordered like a synchronous call (see the module's notes).
        #[no_mangle]
        pub extern "C" fn $name(
            dst: CUdeviceptr,
            pitch: usize,
            v: $t,
            width: usize,
            height: usize,
        ) -> CUresult {
            run(stringify!($name), || {
                let s = std::ptr::null_mut();
                memset_2d(dst, pitch, u32::from(v), $elem, width, height, s, $pt, true)
            })
        }
    };
}
memset_2d_entry!(cuMemsetD2D8_v2, u8, 1, sync false);
memset_2d_entry!(cuMemsetD2D8_v2_ptds, u8, 1, sync true);
memset_2d_entry!(cuMemsetD2D16_v2, u16, 2, sync false);
memset_2d_entry!(cuMemsetD2D16_v2_ptds, u16, 2, sync true);
memset_2d_entry!(cuMemsetD2D32_v2, u32, 4, sync false);
memset_2d_entry!(cuMemsetD2D32_v2_ptds, u32, 4, sync true);
memset_2d_entry!(cuMemsetD2D8Async, u8, 1, stream false);
memset_2d_entry!(cuMemsetD2D8Async_ptsz, u8, 1, stream true);
memset_2d_entry!(cuMemsetD2D16Async, u16, 2, stream false);
memset_2d_entry!(cuMemsetD2D16Async_ptsz, u16, 2, stream true);
memset_2d_entry!(cuMemsetD2D32Async, u32, 4, stream false);
memset_2d_entry!(cuMemsetD2D32Async_ptsz, u32, 4, stream true);

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: u64 = 0x7000_0000;

    /// One device allocation: 64 KiB at `DEV`.
    fn alloc(p: u64) -> Option<(u64, u64)> {
        (DEV..DEV + (64 << 10))
            .contains(&p)
            .then_some((DEV, 64 << 10))
    }

    #[test]
    fn pitched_rows_are_one_fill_each_and_packed_rows_one_fill() {
        assert_eq!(
            fills(DEV, 512, 4, 100, 8, alloc),
            Ok(Some(Fills {
                count: 8,
                elems: 100,
                pitch: 512
            }))
        );
        assert_eq!(
            fills(DEV, 400, 4, 100, 8, alloc),
            Ok(Some(Fills {
                count: 1,
                elems: 800,
                pitch: 400
            }))
        );
        assert_eq!(
            fills(DEV, 0, 1, 100, 1, alloc),
            Ok(Some(Fills {
                count: 1,
                elems: 100,
                pitch: 100
            })),
            "one row: the pitch is unused"
        );
    }

    #[test]
    fn rows_wider_than_the_pitch_are_invalid() {
        assert_eq!(
            fills(DEV, 399, 4, 100, 2, alloc),
            Err("the pitch is less than the row's bytes")
        );
        assert_eq!(
            fills(DEV, 64, 1, 65, 2, alloc),
            Err("the pitch is less than the row's bytes")
        );
    }

    #[test]
    fn alignment_follows_the_element_size() {
        assert_eq!(
            fills(DEV + 2, 512, 4, 4, 2, alloc),
            Err("the destination is not aligned to the element size")
        );
        assert_eq!(
            fills(DEV + 1, 512, 2, 4, 2, alloc),
            Err("the destination is not aligned to the element size")
        );
        assert_eq!(
            fills(DEV, 514, 4, 4, 2, alloc),
            Err("the pitch is not a multiple of the element size")
        );
        assert!(fills(DEV + 2, 514, 2, 4, 2, alloc).unwrap().is_some());
        assert!(fills(DEV + 3, 513, 1, 4, 2, alloc).unwrap().is_some());
    }

    #[test]
    fn rows_must_stay_in_their_allocation() {
        assert!(fills(DEV, 1024, 1, 1024, 64, alloc).unwrap().is_some());
        assert_eq!(
            fills(DEV, 1024, 1, 1024, 65, alloc),
            Err("the rows run past the end of the allocation")
        );
        assert_eq!(
            fills(0x1000, 16, 1, 16, 2, alloc),
            Err("the destination is not an allocation of this process")
        );
        assert_eq!(
            fills(DEV, u64::MAX / 2, 1, 16, 3, alloc),
            Err("the rows' span overflows")
        );
    }

    #[test]
    fn empty_memsets_do_nothing() {
        assert_eq!(fills(DEV, 64, 4, 0, 5, alloc), Ok(None));
        assert_eq!(fills(DEV, 64, 4, 5, 0, alloc), Ok(None));
    }
}
