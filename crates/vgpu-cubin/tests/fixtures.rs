//! The parser against images nvcc 13.0 built from `tests/fixtures/kernels.cu` and `big.cu`
//! (`tests/fixtures/make-fixtures.sh`). The expected layouts are the `EIATTR_KPARAM_INFO` records
//! that `cuobjdump -elf` (nvidia-cuda-cuobjdump 13.2.51) prints for the same files, and agree
//! with the C layout of the parameters in the sources.

use vgpu_cubin::{
    detect, image_len, Compression, EntryKind, Error, Fatbin, Format, Global, GlobalSpace, Image,
    ImageLen, Kernel, Param, Source, Variant, Wrapper, DEFAULT_DECOMPRESS_LIMIT,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn p(offset: u32, size: u32) -> Param {
    Param { offset, size }
}

/// The kernels of kernels.cu with their parameter layouts, in no particular order.
fn expected_kernels() -> Vec<(&'static str, Vec<Param>, u32)> {
    vec![
        // (int, float, char, double, short)
        (
            "k_scalars",
            vec![p(0, 4), p(4, 4), p(8, 1), p(16, 8), p(24, 2)],
            26,
        ),
        // (const float*, float*, unsigned long long)
        ("k_pointers", vec![p(0, 8), p(8, 8), p(16, 8)], 24),
        // (char, struct { int32_t; double; }, int)
        ("k_struct", vec![p(0, 1), p(8, 16), p(24, 4)], 28),
        ("k_empty", vec![], 0),
        ("_Z9k_mangledi", vec![p(0, 4)], 4),
        ("_Z9k_boundedPi", vec![p(0, 8)], 8),
        // (int, int*)
        ("k_local", vec![p(0, 4), p(8, 8)], 16),
    ]
}

fn check_kernels(kernels: &[Kernel], what: &str) {
    let mut names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = expected_kernels().iter().map(|k| k.0).collect();
    want.sort_unstable();
    assert_eq!(
        names, want,
        "{what}: kernel names (device functions like _Z6helperi and their copies like $k_local$_Z4fillPii are none)"
    );
    for (name, params, size) in expected_kernels() {
        let k = kernels.iter().find(|k| k.name == name).unwrap();
        assert_eq!(k.params, params, "{what}: {name} params");
        assert_eq!(k.param_size, size, "{what}: {name} param size");
        let bounds = if name == "_Z9k_boundedPi" {
            Some([128, 1, 1])
        } else {
            None
        };
        assert_eq!(k.max_threads, bounds, "{what}: {name} launch bounds");
        assert_eq!(k.req_threads, None);
    }
}

fn check_globals(globals: &[Global], what: &str) {
    let mut got: Vec<_> = globals
        .iter()
        .map(|g| (g.name.as_str(), g.size, g.space, g.managed))
        .collect();
    got.sort_unstable_by_key(|g| g.0);
    let (global, constant) = (GlobalSpace::Global, GlobalSpace::Constant);
    let want = [
        ("_ZN2ns6scopedE", 4, global, false),
        ("const_coeffs", 64, constant, false),
        ("dev_counter", 4, global, false),
        ("dev_init", 24, global, false),
        ("dev_table", 400, global, false),
        ("managed_flag", 4, global, true),
    ];
    assert_eq!(got, want, "{what}: globals");
}

fn check_image(image: &Image, what: &str) {
    check_kernels(&image.kernels, what);
    check_globals(&image.globals, what);
    for m in &image.modules {
        check_kernels(&m.kernels, &format!("{what} {:?}", m.source));
        check_globals(&m.globals, &format!("{what} {:?}", m.source));
    }
}

#[test]
fn cubin() {
    let bytes = fixture("kernels.sm90.cubin");
    assert_eq!(detect(&bytes), Some(Format::Elf));
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.format, Format::Elf);
    assert_eq!(image.modules.len(), 1);
    assert_eq!(image.modules[0].source, Source::sass(90));
    assert_eq!(image.sm_versions(), [90]);
    assert!(!image.has_ptx());
    check_image(&image, "cubin");
    let bounded = image.kernel("_Z9k_boundedPi").unwrap();
    // 1 KiB tile plus the 1 KiB that sm_90 reserves, per `cuobjdump -elf` ("smem=2048").
    assert_eq!(bounded.static_shared, Some(2048));
    // Register counts as cuobjdump prints them (EIATTR_REGCOUNT).
    let regs = |n: &str| image.kernel(n).unwrap().registers;
    assert_eq!(regs("k_scalars"), Some(8));
    assert_eq!(regs("k_pointers"), Some(12));
    assert_eq!(regs("k_empty"), Some(4));
    assert_eq!(regs("_Z9k_boundedPi"), Some(10));
    // Only k_local has a stack frame: its 128-byte array ("frame size: 0x80").
    for k in &image.kernels {
        let frame = if k.name == "k_local" { 128 } else { 0 };
        assert_eq!(k.frame_size, Some(frame), "{}", k.name);
    }
    assert_eq!(image.kernel("k_scalars").unwrap().static_shared, None);
    assert!(image.kernel("_Z6helperi").is_none());
    assert!(image.global("dev_counter").is_some() && image.global("nope").is_none());
}

#[test]
fn ptx() {
    let mut bytes = fixture("kernels.ptx");
    assert_eq!(detect(&bytes), Some(Format::Ptx));
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.modules[0].source, Source::ptx(90));
    assert!(image.has_ptx() && image.sm_versions().is_empty());
    check_image(&image, "ptx");
    // NUL-terminated, with garbage after the NUL, parses the same.
    let plain = image.clone();
    bytes.extend_from_slice(b"\0\xff\xfe garbage");
    assert_eq!(Image::parse(&bytes).unwrap(), plain);
}

fn entry_summary(f: &Fatbin) -> Vec<(EntryKind, u32, Compression)> {
    f.entries
        .iter()
        .map(|e| (e.kind, e.arch, e.compression))
        .collect()
}

#[test]
fn fatbin_uncompressed() {
    let bytes = fixture("kernels.fatbin");
    assert_eq!(detect(&bytes), Some(Format::Fatbin));
    let fatbin = Fatbin::parse(&bytes).unwrap();
    assert_eq!(fatbin.len, bytes.len());
    let none = Compression::None;
    assert_eq!(
        entry_summary(&fatbin),
        [
            (EntryKind::Elf, 80, none),
            (EntryKind::Ptx, 90, none),
            (EntryKind::Elf, 90, none)
        ]
    );
    // The sm_90 entry is the very cubin that `-cubin -arch=sm_90` makes.
    let sm90 = fatbin.entries[2]
        .contents(DEFAULT_DECOMPRESS_LIMIT)
        .unwrap();
    assert_eq!(&*sm90, &fixture("kernels.sm90.cubin")[..]);

    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.format, Format::Fatbin);
    assert_eq!(image.sm_versions(), [80, 90]);
    assert!(image.has_ptx());
    check_image(&image, "fatbin");
    let sources = |arch| image.for_arch(arch).map(|m| m.source);
    assert_eq!(sources(90), Some(Source::sass(90)));
    // SASS runs on later minors of its major version, never across majors: PTX is JIT-compiled.
    assert_eq!(sources(89), Some(Source::sass(80)));
    assert_eq!(sources(86), Some(Source::sass(80)));
    assert_eq!(sources(100), Some(Source::ptx(90)));
    assert_eq!(sources(120), Some(Source::ptx(90)));
    assert_eq!(sources(75), None);
}

fn check_compressed(name: &str, codec: Compression) {
    let bytes = fixture(name);
    let fatbin = Fatbin::parse(&bytes).unwrap();
    assert_eq!(
        entry_summary(&fatbin),
        [
            (EntryKind::Elf, 80, codec),
            (EntryKind::Ptx, 90, codec),
            (EntryKind::Elf, 90, codec)
        ],
        "{name}"
    );
    // Decompressed, each entry is byte for byte the uncompressed fatbin's, but for the padding
    // of an uncompressed payload to 8 bytes (PTX: text and NUL, 4,239 bytes, padded to 4,240).
    let plain_bytes = fixture("kernels.fatbin");
    let plain = Fatbin::parse(&plain_bytes).unwrap();
    for (c, u) in fatbin.entries.iter().zip(&plain.entries) {
        let c = c.contents(DEFAULT_DECOMPRESS_LIMIT).unwrap();
        let u = u.contents(DEFAULT_DECOMPRESS_LIMIT).unwrap();
        assert_eq!(*c, u[..c.len()], "{name}");
        assert!(
            u.len() - c.len() < 8 && u[c.len()..].iter().all(|&b| b == 0),
            "{name}"
        );
    }
    let image = Image::parse(&bytes).unwrap();
    check_image(&image, name);
    assert_eq!(image.modules, Image::parse(&plain_bytes).unwrap().modules);
    // A ceiling below an entry's size refuses the image.
    assert_eq!(
        Image::parse_with_limit(&bytes, 4096),
        Err(vgpu_cubin::Error::TooLarge { limit: 4096 })
    );
}

#[test]
fn fatbin_lz4() {
    check_compressed("kernels.lz4.fatbin", Compression::Lz4);
}

#[test]
fn fatbin_zstd() {
    check_compressed("kernels.zstd.fatbin", Compression::Zstd);
}

#[test]
fn relocatable_cubin() {
    let image = Image::parse(&fixture("kernels.rdc.sm90.cubin")).unwrap();
    check_image(&image, "rdc");
    // Register counts are there before linking (by symbol index, which differs from the linked
    // cubin's); the shared section holds only the 1 KiB tile.
    assert_eq!(image.kernel("k_scalars").unwrap().registers, Some(8));
    assert_eq!(image.kernel("k_pointers").unwrap().registers, Some(12));
    assert_eq!(
        image.kernel("_Z9k_boundedPi").unwrap().static_shared,
        Some(1024)
    );
}

#[test]
fn device_linked_fatbin() {
    let bytes = fixture("kernels.dlink.fatbin");
    let fatbin = Fatbin::parse(&bytes).unwrap();
    assert_eq!(
        entry_summary(&fatbin),
        [(EntryKind::Elf, 90, Compression::None)]
    );
    let image = Image::parse(&bytes).unwrap();
    check_image(&image, "dlink");
    assert_eq!(
        image.kernel("_Z9k_boundedPi").unwrap().static_shared,
        Some(2048)
    );
}

#[test]
fn large_parameter() {
    // SASS records a parameter this big as EIATTR_KPARAM_INFO_V2; PTX as `.b8 [32752]`.
    let image = Image::parse(&fixture("big.zstd.fatbin")).unwrap();
    assert_eq!(image.modules.len(), 2);
    for m in &image.modules {
        let [k] = m.kernels.as_slice() else {
            panic!("{:?}", m.kernels)
        };
        assert_eq!(k.name, "k_big");
        assert_eq!(k.params, [p(0, 32752), p(32752, 8)], "{:?}", m.source);
        assert_eq!(k.param_size, 32760);
    }
    let ptx = Image::parse(&fixture("big.ptx")).unwrap();
    assert_eq!(
        ptx.kernels,
        image
            .modules
            .iter()
            .find(|m| m.source == Source::ptx(90))
            .unwrap()
            .kernels
    );
}

#[test]
fn lengths() {
    for name in [
        "kernels.sm90.cubin",
        "kernels.rdc.sm90.cubin",
        "kernels.fatbin",
        "kernels.lz4.fatbin",
        "kernels.zstd.fatbin",
        "kernels.dlink.fatbin",
        "big.zstd.fatbin",
    ] {
        let mut bytes = fixture(name);
        let len = bytes.len();
        assert_eq!(image_len(&bytes), Ok(ImageLen::Exact(len)), "{name}");
        // What follows the image in memory does not matter.
        bytes.extend_from_slice(&[0xa5; 4096]);
        assert_eq!(image_len(&bytes), Ok(ImageLen::Exact(len)), "{name}");
        // A caller that reads only what it is asked for gets there from 4 bytes.
        let mut have = 4;
        let mut rounds = 0;
        loop {
            match image_len(&bytes[..have]).unwrap() {
                ImageLen::Exact(n) => {
                    assert_eq!(n, len, "{name}");
                    break;
                }
                ImageLen::NeedMore(n) => {
                    assert!(n > have && n <= bytes.len(), "{name}: {have} → {n}");
                    have = n;
                }
            }
            rounds += 1;
            assert!(rounds < 10, "{name}");
        }
    }
    let mut ptx = fixture("kernels.ptx");
    assert_eq!(image_len(&ptx), Ok(ImageLen::NeedMore(ptx.len() + 1)));
    ptx.push(0);
    assert_eq!(image_len(&ptx), Ok(ImageLen::Exact(ptx.len())));
}

#[test]
fn wrapper() {
    let mut w = Vec::new();
    w.extend_from_slice(&0x4662_43b1u32.to_le_bytes());
    w.extend_from_slice(&2u32.to_le_bytes());
    w.extend_from_slice(&0x7f00_1000u64.to_le_bytes());
    w.extend_from_slice(&0x7f00_2000u64.to_le_bytes());
    assert_eq!(detect(&w), Some(Format::Wrapper));
    assert_eq!(image_len(&w), Ok(ImageLen::Exact(Wrapper::SIZE)));
    assert_eq!(
        Wrapper::parse(&w),
        Ok(Wrapper {
            version: 2,
            data: 0x7f00_1000,
            prelinked: 0x7f00_2000
        })
    );
    assert_eq!(Image::parse(&w), Err(vgpu_cubin::Error::Wrapper));
    w[4] = 3;
    assert!(Wrapper::parse(&w).is_err());
    assert!(Wrapper::parse(&w[..20]).is_err());
}

#[test]
fn architecture_variants() {
    let image = Image::parse(&fixture("variants.zstd.fatbin")).unwrap();
    let (base, a, f) = (
        Variant::Base,
        Variant::ArchSpecific,
        Variant::FamilySpecific,
    );
    let sass = |arch, variant| Source {
        variant,
        ..Source::sass(arch)
    };
    let got: Vec<Source> = image.modules.iter().map(|m| m.source).collect();
    let ptx100f = Source {
        variant: f,
        ..Source::ptx(100)
    };
    assert_eq!(
        got,
        [
            sass(90, a),
            sass(90, base),
            sass(100, a),
            ptx100f,
            sass(100, f),
            sass(103, base)
        ]
    );
    assert_eq!(image.sm_versions(), [90, 100, 103]);
    let chosen = |arch| image.for_arch(arch).map(|m| m.source);
    assert_eq!(chosen(90), Some(sass(90, a)));
    assert_eq!(chosen(100), Some(sass(100, a)));
    assert_eq!(chosen(103), Some(sass(103, base)));
    // A later Blackwell minor without its own SASS runs the family's (not the 'a' build), and
    // family PTX stays within the family.
    assert_eq!(chosen(101), Some(sass(100, f)));
    assert_eq!(chosen(110), None);
    assert_eq!(chosen(89), None);
    // Every module has both kernels, with the same layout, and k_cluster its cluster shape.
    for m in &image.modules {
        let mut got: Vec<_> = m
            .kernels
            .iter()
            .map(|k| (k.name.as_str(), k.params.clone(), k.cluster_dims))
            .collect();
        got.sort_unstable_by_key(|k| k.0);
        let want = [
            ("k_cluster", vec![p(0, 8)], Some([2, 1, 1])),
            ("k_variant", vec![p(0, 8)], None),
        ];
        assert_eq!(got, want, "{:?}", m.source);
    }
}

#[test]
fn compatibility_rules() {
    let with = |variant, source: Source| Source { variant, ..source };
    let (a, f) = (Variant::ArchSpecific, Variant::FamilySpecific);
    let sass80 = Source::sass(80);
    assert!(sass80.runs_on(86) && sass80.runs_on(89) && !sass80.runs_on(90));
    assert!(!Source::sass(86).runs_on(80));
    assert!(Source::ptx(80).runs_on(120) && !Source::ptx(90).runs_on(89));
    assert!(with(a, Source::sass(90)).runs_on(90));
    assert!(!with(a, Source::ptx(100)).runs_on(103));
    assert!(with(f, Source::sass(100)).runs_on(103));
    assert!(!with(f, Source::ptx(100)).runs_on(120));
}

#[test]
fn parse_for_arch_takes_one_entry() {
    let bytes = fixture("kernels.zstd.fatbin");
    let sources = |arch| -> Result<Vec<Source>, Error> {
        Ok(Image::parse_for_arch(&bytes, arch)?
            .modules
            .iter()
            .map(|m| m.source)
            .collect())
    };
    assert_eq!(sources(90), Ok(vec![Source::sass(90)]));
    assert_eq!(sources(86), Ok(vec![Source::sass(80)]));
    assert_eq!(sources(100), Ok(vec![Source::ptx(90)]));
    assert_eq!(sources(75), Err(Error::NoCodeFor { arch: 75 }));
    let sm90 = Image::parse_for_arch(&bytes, 90).unwrap();
    check_image(&sm90, "zstd for sm_90");
    let module = &sm90.modules[0];
    assert_eq!(module.kernel("k_struct"), sm90.kernel("k_struct"));
    assert_eq!(module.global("dev_table").map(|g| g.size), Some(400));
    assert!(module.kernel("_Z6helperi").is_none() && module.global("nope").is_none());

    // The other entries are not even decompressed: breaking the sm_80 one's Zstandard frame
    // breaks a whole parse, not the sm_90 one's.
    let mut broken = bytes.clone();
    let sm80 = Fatbin::parse(&bytes).unwrap().entries[0];
    broken[sm80.offset + 64..sm80.offset + 64 + 16].fill(0xee);
    assert!(matches!(
        Image::parse(&broken),
        Err(Error::Decompress { .. })
    ));
    assert!(Image::parse_for_arch(&broken, 90).is_ok());
    assert!(Image::parse_for_arch(&broken, 80).is_err());

    let variants = fixture("variants.zstd.fatbin");
    let family = Image::parse_for_arch(&variants, 101).unwrap();
    let want = Source {
        variant: Variant::FamilySpecific,
        ..Source::sass(100)
    };
    assert_eq!(
        family.modules.iter().map(|m| m.source).collect::<Vec<_>>(),
        [want]
    );

    // A bare cubin or PTX text is taken whole, if the device can run it.
    let cubin = fixture("kernels.sm90.cubin");
    assert_eq!(Image::parse_for_arch(&cubin, 90), Image::parse(&cubin));
    assert_eq!(
        Image::parse_for_arch(&cubin, 80),
        Err(Error::NoCodeFor { arch: 80 })
    );
    let ptx = fixture("kernels.ptx");
    assert_eq!(Image::parse_for_arch(&ptx, 120), Image::parse(&ptx));
    assert_eq!(
        Image::parse_for_arch(&ptx, 89),
        Err(Error::NoCodeFor { arch: 89 })
    );
    assert_eq!(
        Error::NoCodeFor { arch: 121 }.to_string(),
        "no code for compute capability 12.1"
    );
}
