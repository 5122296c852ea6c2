//! Truncated, corrupted and crafted images give errors, never panics or huge allocations:
//! vgpud parses images that guests send.

use proptest::prelude::*;
use vgpu_cubin::{image_len, Error, Fatbin, Image, DEFAULT_DECOMPRESS_LIMIT};

const FIXTURES: [&str; 9] = [
    "kernels.sm90.cubin",
    "kernels.rdc.sm90.cubin",
    "kernels.ptx",
    "kernels.fatbin",
    "kernels.lz4.fatbin",
    "kernels.zstd.fatbin",
    "kernels.dlink.fatbin",
    "big.zstd.fatbin",
    "big.ptx",
];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Everything the crate offers on `bytes`; only panics matter.
fn exercise(bytes: &[u8]) {
    let _ = image_len(bytes);
    let _ = Image::parse_with_limit(bytes, 1 << 20);
    if let Ok(f) = Fatbin::parse(bytes) {
        for e in &f.entries {
            let _ = e.contents(1 << 20);
        }
    }
}

#[test]
fn every_truncation_of_a_binary_fails_cleanly() {
    for name in FIXTURES.iter().filter(|n| !n.ends_with(".ptx")) {
        let bytes = fixture(name);
        // Every length in the headers, then a stride through the rest: cut payloads or tables.
        let cuts = (0..256.min(bytes.len())).chain((256..bytes.len()).step_by(61));
        for cut in cuts {
            let r = Image::parse(&bytes[..cut]);
            assert!(r.is_err(), "{name} cut at {cut} parsed: {r:?}");
        }
    }
}

#[test]
fn truncated_ptx_does_not_panic() {
    for name in ["kernels.ptx", "big.ptx"] {
        let bytes = fixture(name);
        for cut in 0..bytes.len() {
            exercise(&bytes[..cut]);
        }
    }
}

/// A fatbin of one entry with the given flags, declared uncompressed size and payload.
fn fatbin_with(flags: u64, uncompressed: u64, payload: &[u8]) -> Vec<u8> {
    let mut entry = vec![0u8; 64];
    entry[0..2].copy_from_slice(&2u16.to_le_bytes());
    entry[2..4].copy_from_slice(&0x101u16.to_le_bytes());
    entry[4..8].copy_from_slice(&64u32.to_le_bytes());
    entry[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    entry[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    entry[28..32].copy_from_slice(&90u32.to_le_bytes());
    entry[40..48].copy_from_slice(&(flags | 0x11).to_le_bytes());
    entry[56..64].copy_from_slice(&uncompressed.to_le_bytes());
    entry.extend_from_slice(payload);
    let mut out = Vec::new();
    out.extend_from_slice(&0xBA55_ED50u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(entry.len() as u64).to_le_bytes());
    out.extend_from_slice(&entry);
    out
}

#[test]
fn zip_bombs_are_refused() {
    // An LZ4 entry claiming 4 GiB from 16 bytes: beyond what LZ4 can expand to, refused before
    // any allocation.
    let lz4 = fatbin_with(0x2000, 4 << 30, &[0x1f; 16]);
    assert_eq!(
        Image::parse_with_limit(&lz4, u64::MAX),
        Err(Error::BadField {
            what: "LZ4 entry uncompressed size",
            value: 4 << 30
        })
    );
    assert_eq!(
        Image::parse(&lz4),
        Err(Error::TooLarge {
            limit: DEFAULT_DECOMPRESS_LIMIT
        })
    );

    // A real Zstandard frame of 64 KiB of zeros (one RLE block) under a declared size of 0 and of
    // 1 KiB, against a 32 KiB limit.
    let frame = zstd_rle_frame(64 << 10);
    assert_eq!(
        Image::parse_with_limit(&fatbin_with(0x8000, 0, &frame), 32 << 10),
        Err(Error::TooLarge { limit: 32 << 10 })
    );
    let lying = Image::parse_with_limit(&fatbin_with(0x8000, 1024, &frame), 32 << 10);
    assert!(
        matches!(
            lying,
            Err(Error::Decompress {
                codec: "Zstandard",
                ..
            })
        ),
        "{lying:?}"
    );
    // Decoded for real: 64 KiB of zeros is no ELF.
    let zeros = Image::parse_with_limit(&fatbin_with(0x8000, 64 << 10, &frame), 1 << 20);
    assert_eq!(zeros, Err(Error::UnknownFormat));
    // Both codecs flagged at once.
    assert!(matches!(
        Image::parse(&fatbin_with(0xa000, 0, &frame)),
        Err(Error::BadField { .. })
    ));
}

/// A Zstandard frame holding `n` zero bytes as one RLE block (RFC 8878 §3.1.1).
fn zstd_rle_frame(n: u32) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header descriptor: single segment, 4-byte content size.
    f.push(0b1010_0000);
    f.extend_from_slice(&n.to_le_bytes());
    // Block header: last block, type RLE (1), size n.
    let h = 1 | (1 << 1) | (n << 3);
    f.extend_from_slice(&h.to_le_bytes()[..3]);
    f.push(0);
    f
}

#[test]
fn crafted_elf_tables_fail_cleanly() {
    let good = fixture("kernels.sm90.cubin");
    // e_shnum at 60, e_shoff at 40, e_shentsize at 58, e_phoff at 32, e_phnum at 56.
    let patches: [(usize, &[u8]); 7] = [
        (60, &0xfffeu16.to_le_bytes()),
        (40, &u64::MAX.to_le_bytes()),
        (40, &(u64::MAX - 100).to_le_bytes()),
        (58, &8u16.to_le_bytes()),
        (32, &u64::MAX.to_le_bytes()),
        (56, &0xffffu16.to_le_bytes()),
        (62, &0xfffeu16.to_le_bytes()),
    ];
    for (at, value) in patches {
        let mut bad = good.clone();
        bad[at..at + value.len()].copy_from_slice(value);
        exercise(&bad);
        let _ = image_len(&bad);
    }
    // e_shnum 0 with a section 0 whose size claims 2^40 sections.
    let mut bad = good.clone();
    bad[60..62].copy_from_slice(&0u16.to_le_bytes());
    let shoff = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
    bad[shoff + 32..shoff + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(Image::parse(&bad), Err(Error::Truncated { .. })));
}

#[test]
fn fatbin_entry_sizes_are_checked() {
    let good = fixture("kernels.fatbin");
    // The first entry's header size (at 16 + 4) and payload size (16 + 8).
    for (at, value) in [
        (20, 0u32),
        (20, 63),
        (20, u32::MAX),
        (24, u32::MAX),
        (24, 1 << 20),
    ] {
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
        assert!(Image::parse(&bad).is_err(), "field at {at} = {value:#x}");
    }
    // The container's size (at 8) beyond the bytes, and overflowing with the header size.
    for value in [good.len() as u64, u64::MAX] {
        let mut bad = good.clone();
        bad[8..16].copy_from_slice(&value.to_le_bytes());
        assert!(matches!(Image::parse(&bad), Err(Error::Truncated { .. })));
    }
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(image_len(&bad), Err(Error::BadField { .. })));
}

fn any_fixture() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(FIXTURES.to_vec()).prop_map(fixture)
}

/// A fixture with some bytes overwritten, some cut or inserted.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        any_fixture(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..8), 1..12),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, value, how) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match how {
                    // Mostly small overwrites, where headers are: sizes, offsets, counts, flags.
                    0..=4 => bytes[i] = value,
                    5 => bytes[i] = bytes[i].wrapping_add(1),
                    6 => bytes.truncate(i),
                    _ => bytes.insert(i, value),
                }
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(bytes in mutated()) {
        exercise(&bytes);
    }

    #[test]
    fn headers_of_random_bytes_never_panic(
        magic in prop::sample::select(vec![&b"\x50\xed\x55\xba"[..], b"\x7fELF\x02\x01\x01\x41\x08", b"\xb1\x43\x62\x46", b".version 9.0\n"]),
        tail in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&tail);
        exercise(&bytes);
    }
}
