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
    let _ = Image::parse_for_arch(bytes, 90);
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
        // Every cut through a stretch of declarations, then a stride (odd, so that it lands on
        // every kind of token).
        for cut in (0..1024.min(bytes.len())).chain((1024..bytes.len()).step_by(7)) {
            exercise(&bytes[..cut]);
        }
    }
}

/// A fatbin entry (kind ELF, sm_90) with the given flags, declared uncompressed size and payload.
fn entry_with(flags: u64, uncompressed: u64, payload: &[u8]) -> Vec<u8> {
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
    entry
}

/// A fatbin container around `entries`.
fn container(entries: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xBA55_ED50u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    out.extend_from_slice(entries);
    out
}

fn fatbin_with(flags: u64, uncompressed: u64, payload: &[u8]) -> Vec<u8> {
    container(&entry_with(flags, uncompressed, payload))
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
    // The limit holds for all entries together: the zstd fixture's sm_90 entry (13,904 bytes
    // decompressed) 100 times is 1.4 MB.
    let zstd = fixture("kernels.zstd.fatbin");
    let sm90 = Fatbin::parse(&zstd).unwrap().entries[2];
    let raw = &zstd[sm90.offset..sm90.offset + 64 + sm90.payload.len().next_multiple_of(8)];
    let many = container(&raw.repeat(100));
    assert_eq!(
        Image::parse_with_limit(&many, 2 << 20)
            .unwrap()
            .modules
            .len(),
        100
    );
    assert_eq!(
        Image::parse_with_limit(&many, 1 << 20),
        Err(Error::TooLarge { limit: 1 << 20 })
    );
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

/// A minimal CUDA ELF: sections null, .shstrtab, .strtab, .symtab, .nv.global (NOBITS), with
/// `symbols` as (name offset in .strtab, st_info, st_other, st_shndx, st_size).
fn elf_with(strtab: &[u8], symbols: &[(u32, u8, u8, u16, u64)]) -> Vec<u8> {
    let shstrtab = b"\0.shstrtab\0.strtab\0.symtab\0.nv.global\0";
    let mut symtab = vec![0u8; 24];
    for &(name, info, other, shndx, size) in symbols {
        symtab.extend_from_slice(&name.to_le_bytes());
        symtab.extend_from_slice(&[info, other]);
        symtab.extend_from_slice(&shndx.to_le_bytes());
        symtab.extend_from_slice(&0u64.to_le_bytes());
        symtab.extend_from_slice(&size.to_le_bytes());
    }
    let mut out = vec![0u8; 64];
    let mut place = |bytes: &[u8]| {
        let at = out.len() as u64;
        out.extend_from_slice(bytes);
        at
    };
    let (o_shstr, o_str, o_sym) = (place(shstrtab), place(strtab), place(&symtab));
    let shoff = out.len() as u64;
    // (name, type, offset, size, link, entsize)
    let headers: [(u32, u32, u64, u64, u32, u64); 5] = [
        (0, 0, 0, 0, 0, 0),
        (1, 3, o_shstr, shstrtab.len() as u64, 0, 0),
        (11, 3, o_str, strtab.len() as u64, 0, 0),
        (19, 2, o_sym, symtab.len() as u64, 2, 24),
        (27, 8, 0, 0x1000, 0, 0),
    ];
    for (name, ty, offset, size, link, entsize) in headers {
        let mut sh = [0u8; 64];
        sh[0..4].copy_from_slice(&name.to_le_bytes());
        sh[4..8].copy_from_slice(&ty.to_le_bytes());
        sh[24..32].copy_from_slice(&offset.to_le_bytes());
        sh[32..40].copy_from_slice(&size.to_le_bytes());
        sh[40..44].copy_from_slice(&link.to_le_bytes());
        sh[56..64].copy_from_slice(&entsize.to_le_bytes());
        out.extend_from_slice(&sh);
    }
    out[0..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x41");
    out[8] = 8;
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&190u16.to_le_bytes());
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[48..52].copy_from_slice(&0x5a00u32.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[58..60].copy_from_slice(&64u16.to_le_bytes());
    out[60..62].copy_from_slice(&5u16.to_le_bytes());
    out[62..64].copy_from_slice(&1u16.to_le_bytes());
    out
}

#[test]
fn hand_made_elf() {
    let elf = elf_with(
        b"\0counter\0k\0",
        &[(1, 0x11, 0, 4, 4), (9, 0x12, 0x10, 0, 0)],
    );
    let image = Image::parse(&elf).unwrap();
    assert_eq!(image.modules[0].source, vgpu_cubin::Source::sass(90));
    assert_eq!(image.global("counter").map(|g| g.size), Some(4));
    let k = image.kernel("k").unwrap();
    assert!(k.params.is_empty() && k.registers.is_none() && k.static_shared.is_none());
}

#[test]
fn names_shared_by_many_symbols_are_refused() {
    // 20,000 globals all named by one 100 KiB string: copying each name would take 2 GB.
    let mut strtab = vec![0u8];
    strtab.extend(std::iter::repeat_n(b'g', 100 << 10));
    strtab.push(0);
    let symbols = vec![(1, 0x11, 0, 4, 4); 20_000];
    let elf = elf_with(&strtab, &symbols);
    assert!(matches!(
        Image::parse(&elf),
        Err(Error::BadField {
            what: "ELF names (total length)",
            ..
        })
    ));
}

#[test]
fn one_long_ptx_statement_is_linear() {
    // Half a million tokens without a `;`: quadratic work here would not finish.
    let mut ptx = b".version 9.0\n.target sm_90\n.global .u32 ".to_vec();
    for _ in 0..500_000 {
        ptx.extend_from_slice(b"x ");
    }
    let _ = Image::parse(&ptx);
    ptx.extend_from_slice(b";\n.entry k(");
    for _ in 0..100_000 {
        ptx.extend_from_slice(b".param .u8 p,");
    }
    ptx.extend_from_slice(b".param .u8 last) {}");
    let _ = Image::parse(&ptx);
}
