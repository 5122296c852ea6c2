//! Fatbin containers: the header, its entries, and decompressing them.
//!
//! Layout (all little-endian), as nvcc 13.0 writes it and ZLUDA reads it
//! (`cuda_types/src/dark_api.rs` `FatbinHeader`/`FatbinFileHeader`, `dark_api/src/fatbin.rs`):
//!
//! * header, 16 bytes: magic `0xBA55ED50` u32, version u16 (1), header size u16 (16),
//!   size of the entries that follow u64. The container is `header size + that` bytes long.
//! * each entry: a header (64 bytes for ELF, 80 for PTX: the length is in the header) with kind u16
//!   at 0 (1 PTX, 2 ELF), version u16 at 2 (`0x101`), header size u32 at 4, payload size u32 at 8
//!   (the bytes after the header, padding included: the next entry starts at header size + this),
//!   compressed size u32 at 16 (0 unless compressed), sm arch u32 at 28 (90 for sm_90 SASS and for
//!   compute_90 PTX), flags u64 at 40 (0x1 64-bit, 0x10 Linux, `0x2000` LZ4, `0x8000` Zstandard,
//!   `0x100000` arch-specific "a" target, `0x200000` family-specific "f" target; the last two
//!   observed in nvcc 13.0's output, `tests/fixtures/variants.zstd.fatbin`), uncompressed size
//!   u64 at 56 (0 unless compressed). ELF entries for sm_100 and later have 112-byte headers.
//! * an LZ4 payload is one raw LZ4 *block* (no frame header, no size prefix) of compressed-size
//!   bytes that decodes to exactly uncompressed-size bytes; a Zstandard payload is one standard
//!   frame (magic `28 B5 2F FD`). Both observed in the fixtures (`tests/fixtures`).
//! * What nvcc 13.0 compresses: by default (and with `--compress-mode=default` or `balance`) the
//!   PTX entries, with Zstandard, leaving the fixtures' ELF entries as they are;
//!   `-Xfatbin -compress-all` compresses every entry, with Zstandard, or with LZ4 under
//!   `--compress-mode=speed`.

use std::borrow::Cow;
use std::io::Read;

use crate::bytes::{slice, u16_at, u32_at, u64_at};
use crate::error::{Error, Result};

/// Magic of a fatbin container's header.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// Magic of the `__fatBinC_Wrapper_t` struct that nvcc's host code passes to
/// `__cudaRegisterFatBinary` (and that `cuModuleLoadData` also accepts).
pub const WRAPPER_MAGIC: u32 = 0x4662_43B1;
/// Entry flag: the payload is an LZ4 block.
pub const FLAG_LZ4: u64 = 0x2000;
/// Entry flag: the payload is a Zstandard frame.
pub const FLAG_ZSTD: u64 = 0x8000;
/// Entry flag: code for an architecture-specific target (`sm_90a`, `compute_100a`).
pub const FLAG_ARCH_SPECIFIC: u64 = 0x10_0000;
/// Entry flag: code for a family-specific target (`sm_100f`, `compute_100f`).
pub const FLAG_FAMILY_SPECIFIC: u64 = 0x20_0000;
/// Size of the container header.
pub const HEADER_SIZE: usize = 16;
/// Smallest entry header (ELF entries; PTX entries have 80 bytes).
pub const ENTRY_HEADER_MIN: usize = 64;
/// Default ceiling on the bytes decompressed for one image, all its entries together. Real
/// images are far smaller (a large library's biggest entry is tens of MiB); the ceiling bounds
/// the memory and time a hostile "zip bomb" can cost vgpud (Zstandard's RLE blocks expand a few
/// bytes to 128 KiB).
pub const DEFAULT_DECOMPRESS_LIMIT: u64 = 512 << 20;
/// LZ4 cannot expand one input byte into more than 255 output bytes; a declared size beyond
/// this ratio is a lie, and refusing it keeps the up-front allocation honest.
const LZ4_MAX_RATIO: u64 = 255;

/// The `__fatBinC_Wrapper_t` struct (24 bytes): what nvcc's host code registers. Its pointers
/// are the guest process's addresses; following them is the caller's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrapper {
    /// 1: `data` points at one fatbin. 2 (relocatable device code, `-rdc`): `data` points at the
    /// module's own fatbin and `prelinked` at a NULL-terminated array of pointers to the fatbins
    /// the device link produced.
    pub version: u32,
    /// Address of the fatbin container.
    pub data: u64,
    /// Version 1: a file name pointer or NULL. Version 2: the prelinked fatbin array.
    pub prelinked: u64,
}

impl Wrapper {
    /// Size of the struct in memory.
    pub const SIZE: usize = 24;

    /// Reads the wrapper from its first [`Wrapper::SIZE`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Wrapper> {
        let magic = u32_at(bytes, 0, "fatbin wrapper")?;
        if magic != WRAPPER_MAGIC {
            return Err(Error::BadField {
                what: "fatbin wrapper magic",
                value: magic.into(),
            });
        }
        let version = u32_at(bytes, 4, "fatbin wrapper")?;
        if !(1..=2).contains(&version) {
            return Err(Error::BadField {
                what: "fatbin wrapper version",
                value: version.into(),
            });
        }
        Ok(Wrapper {
            version,
            data: u64_at(bytes, 8, "fatbin wrapper")?,
            prelinked: u64_at(bytes, 16, "fatbin wrapper")?,
        })
    }
}

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// PTX text for a virtual architecture (`compute_XY`).
    Ptx,
    /// An ELF cubin with SASS for a real architecture (`sm_XY`).
    Elf,
    /// A kind this crate does not know (kept so that walking goes on).
    Other(u16),
}

/// How an entry's payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// As is.
    None,
    /// One raw LZ4 block.
    Lz4,
    /// One Zstandard frame.
    Zstd,
}

/// One entry of a fatbin container, borrowed from the container's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// PTX, ELF or unknown.
    pub kind: EntryKind,
    /// The architecture: 90 for `sm_90` SASS or `compute_90` PTX.
    pub arch: u32,
    /// The raw flags (see [`FLAG_LZ4`], [`FLAG_ZSTD`]).
    pub flags: u64,
    /// How [`Entry::payload`] is stored.
    pub compression: Compression,
    /// The stored bytes: compressed-size bytes when compressed, else the whole payload, padded
    /// with NULs to a multiple of 8 bytes (PTX text is NUL-terminated before the padding).
    pub payload: &'a [u8],
    /// The size once decompressed, as declared (0 for an uncompressed entry).
    pub uncompressed_size: u64,
    /// Offset of the entry's header in the container.
    pub offset: usize,
}

impl<'a> Entry<'a> {
    /// What the entry holds for which target; `None` for an [`EntryKind::Other`] entry.
    pub fn source(&self) -> Option<crate::Source> {
        let code = match self.kind {
            EntryKind::Elf => crate::Code::Sass,
            EntryKind::Ptx => crate::Code::Ptx,
            EntryKind::Other(_) => return None,
        };
        Some(crate::Source {
            code,
            arch: self.arch,
            variant: self.variant(),
        })
    }

    /// Plain, family- or architecture-specific, from the flags.
    pub fn variant(&self) -> crate::Variant {
        if self.flags & FLAG_ARCH_SPECIFIC != 0 {
            crate::Variant::ArchSpecific
        } else if self.flags & FLAG_FAMILY_SPECIFIC != 0 {
            crate::Variant::FamilySpecific
        } else {
            crate::Variant::Base
        }
    }

    /// The entry's contents, decompressed if need be, at most `limit` bytes
    /// ([`DEFAULT_DECOMPRESS_LIMIT`] is a sensible one).
    pub fn contents(&self, limit: u64) -> Result<Cow<'a, [u8]>> {
        match self.compression {
            Compression::None => Ok(Cow::Borrowed(self.payload)),
            Compression::Lz4 => {
                decompress_lz4(self.payload, self.uncompressed_size, limit).map(Cow::Owned)
            }
            Compression::Zstd => {
                decompress_zstd(self.payload, self.uncompressed_size, limit).map(Cow::Owned)
            }
        }
    }
}

/// A parsed fatbin container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatbin<'a> {
    /// The header's version (1).
    pub version: u16,
    /// The container's whole length: header size + entries size.
    pub len: usize,
    /// Its entries, in order.
    pub entries: Vec<Entry<'a>>,
}

/// Reads the 16-byte container header: `(header_size, entries_size)`.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<(u16, u64)> {
    let magic = u32_at(bytes, 0, "fatbin header")?;
    if magic != FATBIN_MAGIC {
        return Err(Error::BadField {
            what: "fatbin magic",
            value: magic.into(),
        });
    }
    let version = u16_at(bytes, 4, "fatbin header")?;
    if version != 1 {
        return Err(Error::BadField {
            what: "fatbin version",
            value: version.into(),
        });
    }
    let header_size = u16_at(bytes, 6, "fatbin header")?;
    if usize::from(header_size) < HEADER_SIZE {
        return Err(Error::BadField {
            what: "fatbin header size",
            value: header_size.into(),
        });
    }
    Ok((header_size, u64_at(bytes, 8, "fatbin header")?))
}

impl<'a> Fatbin<'a> {
    /// Parses a container that starts at `bytes[0]`; bytes after its end are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Fatbin<'a>> {
        let (header_size, entries_size) = parse_header(bytes)?;
        let body = slice(bytes, header_size.into(), entries_size, "fatbin entries")?;
        let base = usize::from(header_size);
        let mut entries = Vec::new();
        let mut pos = 0usize;
        // Fewer bytes than an entry header left: padding, as ZLUDA treats it.
        while body.len() - pos >= ENTRY_HEADER_MIN {
            let (entry, len) = parse_entry(&body[pos..], base + pos)?;
            pos += len;
            entries.push(entry);
        }
        Ok(Fatbin {
            version: 1,
            len: base + body.len(),
            entries,
        })
    }
}

/// The entry at the start of `rest`, and its length (header and payload) within `rest`.
fn parse_entry(rest: &[u8], offset: usize) -> Result<(Entry<'_>, usize)> {
    const W: &str = "fatbin entry header";
    let kind = match u16_at(rest, 0, W)? {
        1 => EntryKind::Ptx,
        2 => EntryKind::Elf,
        k => EntryKind::Other(k),
    };
    let header_size = u64::from(u32_at(rest, 4, W)?);
    if header_size < ENTRY_HEADER_MIN as u64 {
        return Err(Error::BadField {
            what: "fatbin entry header size",
            value: header_size,
        });
    }
    let payload_size = u64::from(u32_at(rest, 8, W)?);
    let compressed_size = u64::from(u32_at(rest, 16, W)?);
    let arch = u32_at(rest, 28, W)?;
    let flags = u64_at(rest, 40, W)?;
    let uncompressed_size = u64_at(rest, 56, W)?;
    let payload = slice(rest, header_size, payload_size, "fatbin entry payload")?;
    // Within rest.len(): the slice above checked it.
    let len = (header_size + payload_size) as usize;
    let compression = match (flags & FLAG_LZ4 != 0, flags & FLAG_ZSTD != 0) {
        (false, false) => Compression::None,
        (true, false) => Compression::Lz4,
        (false, true) => Compression::Zstd,
        (true, true) => {
            return Err(Error::BadField {
                what: "fatbin entry compression flags",
                value: flags,
            })
        }
    };
    let payload = if compression == Compression::None {
        payload
    } else {
        slice(payload, 0, compressed_size, "fatbin compressed payload")?
    };
    let entry = Entry {
        kind,
        arch,
        flags,
        compression,
        payload,
        uncompressed_size,
        offset,
    };
    Ok((entry, len))
}

fn decompress_lz4(input: &[u8], declared: u64, limit: u64) -> Result<Vec<u8>> {
    if declared > limit {
        return Err(Error::TooLarge { limit });
    }
    let bound = (input.len() as u64)
        .saturating_mul(LZ4_MAX_RATIO)
        .saturating_add(16);
    if declared > bound {
        return Err(Error::BadField {
            what: "LZ4 entry uncompressed size",
            value: declared,
        });
    }
    // At most the limit, which callers keep within memory.
    let len = usize::try_from(declared).map_err(|_| Error::TooLarge { limit })?;
    let mut out = vec![0u8; len];
    let n = lz4_flex::block::decompress_into(input, &mut out).map_err(|e| Error::Decompress {
        codec: "LZ4",
        reason: e.to_string(),
    })?;
    if n as u64 != declared {
        return Err(Error::Decompress {
            codec: "LZ4",
            reason: format!("{n} bytes out, {declared} declared"),
        });
    }
    Ok(out)
}

fn decompress_zstd(input: &[u8], declared: u64, limit: u64) -> Result<Vec<u8>> {
    let err = |e: &dyn std::fmt::Display| Error::Decompress {
        codec: "Zstandard",
        reason: e.to_string(),
    };
    let cap = if declared == 0 {
        limit
    } else {
        declared.min(limit)
    };
    let decoder = ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| err(&e))?;
    // The frame's own content size (0 when absent), refused before decoding anything.
    if decoder.decoder.content_size() > cap {
        return Err(if declared == 0 || declared > limit {
            Error::TooLarge { limit }
        } else {
            err(&"frame larger than declared")
        });
    }
    let mut out = Vec::new();
    // One byte more than allowed tells "too large" from "exactly at the cap"; growth is driven by
    // what really decodes, not by the declared size.
    decoder
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| err(&e))?;
    if out.len() as u64 > cap {
        return Err(if cap == limit {
            Error::TooLarge { limit }
        } else {
            err(&"more bytes than declared")
        });
    }
    if declared != 0 && out.len() as u64 != declared {
        return Err(err(&format_args!(
            "{} bytes out, {declared} declared",
            out.len()
        )));
    }
    Ok(out)
}
