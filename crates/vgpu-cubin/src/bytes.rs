//! Bounds-checked little-endian reads: every offset and length read from an image goes through
//! these, so a hostile value yields [`Error::Truncated`] instead of a panic.

use crate::error::{Error, Result};

/// `len` bytes at `off`, or `Truncated` naming `what`.
pub(crate) fn slice<'a>(
    data: &'a [u8],
    off: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8]> {
    let truncated = || Error::Truncated {
        what,
        needed: off.saturating_add(len),
        available: data.len() as u64,
    };
    let end = off.checked_add(len).ok_or_else(truncated)?;
    if end > data.len() as u64 {
        return Err(truncated());
    }
    // Both fit in usize: they are at most data.len().
    Ok(&data[off as usize..end as usize])
}

pub(crate) fn u8_at(data: &[u8], off: u64, what: &'static str) -> Result<u8> {
    Ok(slice(data, off, 1, what)?[0])
}

pub(crate) fn u16_at(data: &[u8], off: u64, what: &'static str) -> Result<u16> {
    let b = slice(data, off, 2, what)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

pub(crate) fn u32_at(data: &[u8], off: u64, what: &'static str) -> Result<u32> {
    let b = slice(data, off, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) fn u64_at(data: &[u8], off: u64, what: &'static str) -> Result<u64> {
    let b = slice(data, off, 8, what)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}
