//! Tests of the command set.
use super::*;
use core::mem::{offset_of, size_of};
use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

#[test]
fn sizes_are_pinned() {
    assert_eq!(size_of::<Sqe>(), SQE_SIZE);
    assert_eq!(size_of::<Cqe>(), CQE_SIZE);
    assert_eq!(size_of::<LaunchBody>(), SQE_BODY);
    assert_eq!(offset_of!(Sqe, opcode), 0);
    assert_eq!(offset_of!(Sqe, flags), 2);
    assert_eq!(offset_of!(Sqe, stream), 4);
    assert_eq!(offset_of!(Sqe, tag), 8);
    assert_eq!(offset_of!(Sqe, body), 16);
    assert_eq!(offset_of!(Cqe, tag), 0);
    assert_eq!(offset_of!(Cqe, status), 8);
    assert_eq!(offset_of!(Cqe, result0), 16);
    assert_eq!(offset_of!(Cqe, result1), 24);
    assert_eq!(offset_of!(LaunchBody, grid), 8);
    assert_eq!(offset_of!(LaunchBody, block), 20);
    assert_eq!(offset_of!(LaunchBody, shared_mem), 32);
    assert_eq!(offset_of!(LaunchBody, params_len), 36);
    assert_eq!(offset_of!(LaunchBody, params), 40);
    assert_eq!(size_of::<VectorAddParams>(), 32);
    assert_eq!(size_of::<SaxpyParams>(), 24);
    assert_eq!(size_of::<SgemmParams>(), 48);
    assert_eq!(size_of::<ReduceParams>(), 24);
    assert_eq!(size_of::<BusyParams>(), 8);
}

#[test]
fn builtin_param_layouts_match_the_packed_structs() {
    assert_eq!(
        Builtin::VectorAddF32.param_layout(),
        &[
            (offset_of!(VectorAddParams, a) as u32, 8),
            (offset_of!(VectorAddParams, b) as u32, 8),
            (offset_of!(VectorAddParams, c) as u32, 8),
            (offset_of!(VectorAddParams, n) as u32, 4)
        ]
    );
    assert_eq!(offset_of!(SaxpyParams, alpha), 20);
    assert_eq!(offset_of!(SgemmParams, beta), 40);
    assert_eq!(offset_of!(ReduceParams, n), 16);
    for b in Builtin::ALL {
        let end = b
            .param_layout()
            .iter()
            .map(|&(o, s)| o + s)
            .max()
            .unwrap_or(0);
        assert!(end as usize <= b.params_len(), "{b:?}");
        assert!(
            b.params_len() - end as usize <= 4,
            "{b:?}: only tail padding"
        );
    }
}

#[test]
fn opcodes_roundtrip() {
    let mut known = 0;
    for raw in 0..=u16::MAX {
        if let Some(op) = Opcode::from_raw(raw) {
            assert_eq!(op as u16, raw);
            known += 1;
        }
    }
    assert_eq!(known, Opcode::ALL.len());
    for raw in 0..=19 {
        assert_eq!(Status::from_raw(raw).unwrap() as u32, raw);
    }
    assert_eq!(Status::from_raw(20), None);
}

#[test]
fn builtin_handles() {
    for b in Builtin::ALL {
        assert_eq!(Builtin::from_handle(b.handle()), Some(b));
        assert!(b.params_len() <= MAX_INLINE_PARAMS);
    }
    assert_eq!(Builtin::from_handle(1), None);
    assert_eq!(Builtin::from_handle(BUILTIN_FUNC_FLAG | 99), None);
}

#[test]
fn rejects_bad_entries() {
    let mut s = Sqe {
        opcode: 0x77,
        ..Sqe::default()
    };
    assert_eq!(Command::decode(&s, 4096), Err(Status::UnknownOpcode));
    s = Command::CopyH2D {
        dst: 0x1000,
        staging_offset: 4000,
        len: 97,
    }
    .encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::StagingOutOfRange));
    s = Command::CopyD2H {
        src: 0x1000,
        staging_offset: u64::MAX,
        len: 2,
    }
    .encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::StagingOutOfRange));
    s = Command::Memset {
        dst: 0,
        len: 6,
        value: 0,
        width: 4,
    }
    .encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    s = Command::MemAlloc { size: 0 }.encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    let mut l = LaunchBody::new(Builtin::Busy.handle(), [1; 3], [1; 3], &[0; 8]).unwrap();
    l.params_len = 73;
    s = Command::Launch { launch: l }.encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    l.params_len = 8;
    l.block = [1024, 2, 1];
    s = Command::Launch { launch: l }.encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    // 2^31 · 2^31 · 4 = 2^64: a u64 product wraps to 0 (found by the cmd_decode fuzzer).
    l.block = [1 << 31, 1 << 31, 4];
    s = Command::Launch { launch: l }.encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    s = Command::Nop.encode(0, 1);
    s.flags = 4;
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    // modules: empty PTX, PTX or names outside staging, names too long or empty
    s = Command::ModuleLoad {
        staging_offset: 0,
        len: 0,
        binary: false,
        more: false,
        cont: false,
    }
    .encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    s = Command::ModuleLoad {
        staging_offset: 4000,
        len: 97,
        binary: true,
        more: true,
        cont: true,
    }
    .encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::StagingOutOfRange));
    for (off, len, want) in [
        (0, 0, Status::InvalidArgument),
        (0, MAX_FUNC_NAME + 1, Status::InvalidArgument),
        (4090, 7, Status::StagingOutOfRange),
    ] {
        s = Command::GetFunction {
            module: 1,
            staging_offset: off,
            name_len: len,
        }
        .encode(0, 1);
        assert_eq!(Command::decode(&s, 4096), Err(want));
    }
    s = Command::FuncParamInfo { func: 1, index: 0 }.encode(0, 1);
    s.body[12] = 1;
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    // events: ids are bounded; single-event commands leave the second id zero
    s = Command::EventRecord { event: MAX_EVENTS }.encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    s = Command::EventElapsed {
        start: 1,
        end: MAX_EVENTS,
    }
    .encode(0, 1);
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    s = Command::EventSynchronize { event: 3 }.encode(0, 1);
    s.body[4] = 1;
    assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
    s.body[4] = 0;
    assert_eq!(
        Command::decode(&s, 4096),
        Ok(Command::EventSynchronize { event: 3 })
    );
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Nop),
        Just(Command::GetInfo),
        (1u64..).prop_map(|size| Command::MemAlloc { size }),
        any::<u64>().prop_map(|ptr| Command::MemFree { ptr }),
        (
            0u64..1 << 40,
            0u64..1 << 20,
            any::<u32>(),
            prop_oneof![Just(1u32), Just(4)]
        )
            .prop_map(|(dst, n, value, width)| Command::Memset {
                dst,
                len: n * width as u64,
                value,
                width
            }),
        (0u64..1 << 40, 0u64..1 << 20, 0u64..1 << 20).prop_map(|(dst, o, len)| {
            Command::CopyH2D {
                dst,
                staging_offset: o,
                len,
            }
        }),
        (0u64..1 << 40, 0u64..1 << 20, 0u64..1 << 20).prop_map(|(src, o, len)| {
            Command::CopyD2H {
                src,
                staging_offset: o,
                len,
            }
        }),
        (0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 30)
            .prop_map(|(dst, src, len)| Command::CopyD2D { dst, src, len }),
        (
            any::<u64>(),
            [1u32..1000, 1u32..1000, 1u32..4],
            [1u32..32, 1u32..8, 1u32..4],
            proptest::collection::vec(any::<u8>(), 0..=MAX_INLINE_PARAMS)
        )
            .prop_map(|(f, g, b, p)| Command::Launch {
                launch: LaunchBody::new(f, g, b, &p).unwrap()
            }),
        any::<bool>().prop_map(|all_streams| Command::Synchronize { all_streams }),
        (0u64..1 << 20, 1u64..1 << 20, any::<[bool; 3]>()).prop_map(
            |(staging_offset, len, [binary, more, cont])| Command::ModuleLoad {
                staging_offset,
                len,
                binary,
                more,
                cont,
            }
        ),
        (any::<u64>(), 0u64..1 << 20, 1u64..=MAX_FUNC_NAME).prop_map(
            |(module, staging_offset, name_len)| Command::ModuleGetGlobal {
                module,
                staging_offset,
                name_len,
            }
        ),
        any::<u64>().prop_map(|module| Command::ModuleUnload { module }),
        (any::<u64>(), 0u64..1 << 20, 1u64..=MAX_FUNC_NAME).prop_map(
            |(module, staging_offset, name_len)| Command::GetFunction {
                module,
                staging_offset,
                name_len,
            }
        ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(func, index)| Command::FuncParamInfo { func, index }),
        (0..MAX_EVENTS).prop_map(|event| Command::EventRecord { event }),
        (0..MAX_EVENTS).prop_map(|event| Command::StreamWaitEvent { event }),
        (0..MAX_EVENTS).prop_map(|event| Command::EventSynchronize { event }),
        (0..MAX_EVENTS, 0..MAX_EVENTS)
            .prop_map(|(start, end)| Command::EventElapsed { start, end }),
    ]
}

proptest! {
    /// Every valid command survives encode → decode unchanged.
    #[test]
    fn encode_decode_roundtrip(cmd in arb_command(), stream in any::<u32>(), tag in any::<u64>()) {
        let sqe = cmd.encode(stream, tag);
        prop_assert_eq!(sqe.tag, tag);
        prop_assert_eq!(sqe.stream, stream);
        let back = Command::decode(&sqe, 1 << 21).unwrap();
        prop_assert_eq!(back, cmd);
    }

    /// Decoding arbitrary bytes never panics, and whatever it accepts keeps staging
    /// ranges inside the staging area and device ranges from overflowing.
    #[test]
    fn decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), SQE_SIZE), staging in 0u64..1 << 24) {
        let sqe = Sqe::read_from_bytes(&bytes[..]).unwrap();
        if let Ok(cmd) = Command::decode(&sqe, staging) {
            match cmd {
                Command::CopyH2D { staging_offset, len, dst } |
                Command::CopyD2H { staging_offset, len, src: dst } => {
                    prop_assert!(staging_offset + len <= staging);
                    prop_assert!(dst.checked_add(len).is_some());
                }
                Command::Launch { launch: l } => {
                    prop_assert!(l.params().len() <= MAX_INLINE_PARAMS);
                    prop_assert!(l.block.iter().map(|&b| b as u128).product::<u128>() <= MAX_BLOCK_THREADS as u128);
                }
                Command::Memset { len, width, .. } => prop_assert_eq!(len % width as u64, 0),
                Command::ModuleLoad {
                    staging_offset,
                    len,
                    ..
                } => {
                    prop_assert!(len > 0 && staging_offset + len <= staging);
                }
                Command::GetFunction { staging_offset, name_len, .. } => {
                    prop_assert!(name_len > 0 && name_len <= MAX_FUNC_NAME);
                    prop_assert!(staging_offset + name_len <= staging);
                }
                Command::EventRecord { event } | Command::StreamWaitEvent { event }
                | Command::EventSynchronize { event } => prop_assert!(event < MAX_EVENTS),
                Command::EventElapsed { start, end } => {
                    prop_assert!(start < MAX_EVENTS && end < MAX_EVENTS);
                }
                _ => {}
            }
        }
    }
}

/// The body layout each declaration yields: fields in order at natural alignment, pinned
/// byte for byte (this is the ABI `docs/abi.md` documents).
#[test]
fn body_layouts_are_pinned() {
    let body = |c: Command| c.encode(0, 0).body;
    let le = |b: &[u8], at: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[at..at + n]);
        u64::from_le_bytes(v)
    };
    let b = body(Command::Memset {
        dst: 0x1111,
        len: 0x2222,
        value: 0x33,
        width: 4,
    });
    assert_eq!(
        [le(&b, 0, 8), le(&b, 8, 8), le(&b, 16, 4), le(&b, 20, 4)],
        [0x1111, 0x2222, 0x33, 4]
    );
    let b = body(Command::GetFunction {
        module: 7,
        staging_offset: 8,
        name_len: 9,
    });
    assert_eq!([le(&b, 0, 8), le(&b, 8, 8), le(&b, 16, 8)], [7, 8, 9]);
    let b = body(Command::EventElapsed { start: 5, end: 6 });
    assert_eq!([le(&b, 0, 4), le(&b, 4, 4)], [5, 6]);
    let b = body(Command::FuncParamInfo { func: 3, index: 2 });
    assert_eq!([le(&b, 0, 8), le(&b, 8, 4)], [3, 2]);
    let l = LaunchBody::busy(10);
    assert_eq!(&body(Command::Launch { launch: l })[..], l.as_bytes());
    let s = Command::Synchronize { all_streams: true }.encode(0, 0);
    assert_eq!((s.flags, s.body), (SYNC_ALL_STREAMS, [0; SQE_BODY]));
    for op in Opcode::ALL {
        assert!(op.body_len() <= SQE_BODY, "{op:?}");
    }
    assert_eq!(Opcode::Memset.body_len(), 24);
    assert_eq!(Opcode::EventRecord.body_len(), 4);
    assert_eq!(Opcode::Launch.body_len(), SQE_BODY);
}

/// A byte after a command's fields must be zero (reserved for later ABI versions).
#[test]
fn trailing_body_bytes_are_refused() {
    for op in Opcode::ALL {
        let len = op.body_len();
        if len == SQE_BODY {
            continue;
        }
        let mut s = Sqe {
            opcode: *op as u16,
            ..Sqe::default()
        };
        s.body[SQE_BODY - 1] = 1;
        assert_eq!(
            Command::decode(&s, 4096),
            Err(Status::InvalidArgument),
            "{op:?}"
        );
        s.body[SQE_BODY - 1] = 0;
        s.body[len] = 1;
        assert_eq!(
            Command::decode(&s, 4096),
            Err(Status::InvalidArgument),
            "{op:?}"
        );
    }
}

/// The classes the host orders and schedules by, pinned for every command.
#[test]
fn classes_are_pinned() {
    let l = LaunchBody::busy(1);
    // (command, stream, barrier, control, asynchronous, waits_for_device)
    let table = [
        (Command::Nop, false, false, true, false, false),
        (Command::GetInfo, false, false, true, false, false),
        (
            Command::MemAlloc { size: 1 },
            false,
            false,
            true,
            false,
            false,
        ),
        (Command::MemFree { ptr: 1 }, false, false, true, false, true),
        (
            Command::Memset {
                dst: 0,
                len: 4,
                value: 0,
                width: 4,
            },
            true,
            false,
            false,
            true,
            false,
        ),
        (
            Command::CopyD2D {
                dst: 0,
                src: 0,
                len: 1,
            },
            true,
            false,
            false,
            true,
            false,
        ),
        (
            Command::Launch { launch: l },
            true,
            false,
            false,
            true,
            false,
        ),
        (
            Command::ModuleUnload { module: 1 },
            false,
            false,
            true,
            false,
            true,
        ),
        (
            Command::EventRecord { event: 1 },
            true,
            false,
            false,
            true,
            false,
        ),
        (
            Command::StreamWaitEvent { event: 1 },
            true,
            true,
            false,
            true,
            false,
        ),
        (
            Command::EventSynchronize { event: 1 },
            false,
            true,
            false,
            true,
            false,
        ),
        (
            Command::EventElapsed { start: 0, end: 1 },
            false,
            true,
            true,
            false,
            false,
        ),
        (
            Command::Synchronize { all_streams: false },
            true,
            false,
            true,
            true,
            false,
        ),
        (
            Command::Synchronize { all_streams: true },
            false,
            true,
            true,
            true,
            false,
        ),
    ];
    for (cmd, stream, barrier, control, asynchronous, waits_for_device) in table {
        let want = Class {
            stream,
            barrier,
            control,
            asynchronous,
            waits_for_device,
        };
        assert_eq!(cmd.class(), want, "{cmd:?}");
    }
}

/// What dispatch calls: the handler method the command names, with its fields.
#[test]
fn dispatch_calls_the_named_method() {
    struct Rec(Vec<String>);
    impl Handler for Rec {
        type Ctx = u32;
        type Out = u64;
        fn mem_alloc(&mut self, cx: u32, size: u64) -> Result<u64, Status> {
            self.0.push(format!("alloc {cx} {size}"));
            Ok(size * 2)
        }
        fn synchronize(&mut self, cx: u32, all_streams: bool) -> Result<u64, Status> {
            self.0.push(format!("sync {cx} {all_streams}"));
            Ok(0)
        }
    }
    let mut h = Rec(Vec::new());
    assert_eq!(Command::MemAlloc { size: 21 }.dispatch(&mut h, 3), Ok(42));
    assert_eq!(
        Command::Synchronize { all_streams: true }.dispatch(&mut h, 4),
        Ok(0)
    );
    assert_eq!(
        Command::MemFree { ptr: 1 }.dispatch(&mut h, 5),
        Err(Status::NotSupported),
        "what a handler does not implement is not supported"
    );
    assert_eq!(h.0, ["alloc 3 21", "sync 4 true"]);
}

#[test]
fn device_ranges_and_effects() {
    let c = Command::CopyD2D {
        dst: 10,
        src: 20,
        len: 5,
    };
    assert_eq!(
        c.device_ranges().iter().collect::<Vec<_>>(),
        [(10, 5), (20, 5)]
    );
    assert_eq!(
        c.effect(),
        Effect::Transfer {
            len: 5,
            dir: Direction::Device
        }
    );
    assert_eq!(Command::Nop.device_ranges().iter().count(), 0);
    assert_eq!(
        Command::MemAlloc { size: 9 }.effect(),
        Effect::Alloc { size: 9 }
    );
}

/// docs/abi.md has a row for every declared command, with its opcode.
#[test]
fn every_command_is_documented() {
    let doc = include_str!("../../../../docs/abi.md");
    for op in Opcode::ALL {
        let mut name = String::new();
        let mut prev_lower = false;
        for c in op.name().chars() {
            if c.is_ascii_uppercase() && prev_lower {
                name.push('_');
            }
            prev_lower = c.is_ascii_lowercase();
            name.push(c.to_ascii_uppercase());
        }
        let row = format!("| `{:#04x}` | {name}", *op as u16);
        assert!(doc.contains(&row), "docs/abi.md lacks the row {row:?}");
    }
}

#[test]
fn cluster_shapes() {
    use super::check::cluster;
    assert_eq!(cluster([16, 1, 1], [0, 0, 0]), Ok(()));
    assert_eq!(cluster([16, 1, 1], [2, 1, 1]), Ok(()));
    assert_eq!(cluster([16, 4, 1], [4, 2, 1]), Ok(()));
    // Partly zero, not dividing the grid, too many blocks.
    assert_eq!(cluster([16, 1, 1], [2, 0, 1]), Err(Status::InvalidArgument));
    assert_eq!(cluster([17, 1, 1], [2, 1, 1]), Err(Status::InvalidArgument));
    assert_eq!(
        cluster([64, 1, 1], [64, 1, 1]),
        Err(Status::InvalidArgument)
    );
    // A block count past 2^64 (in u64 it overflowed; found by `cargo xtask fuzz` in CI).
    assert_eq!(
        cluster([u32::MAX; 3], [u32::MAX; 3]),
        Err(Status::InvalidArgument)
    );
}

/// The virtual memory management commands (1.6): their checks, classes and effects.
#[test]
fn vmm_commands_decode_checked() {
    let rt = |c: Command| Command::decode(&c.encode(0, 1), 4096);
    let reserve = |alignment| Command::MemAddressReserve {
        size: 2 << 20,
        alignment,
        addr: 0,
    };
    for a in [0, 1, 4096, 2 << 20, 1 << 40] {
        assert_eq!(rt(reserve(a)), Ok(reserve(a)), "alignment {a}");
    }
    assert_eq!(rt(reserve(3)), Err(Status::InvalidArgument));
    assert_eq!(rt(reserve(3 << 20)), Err(Status::InvalidArgument));
    let zero = Command::MemAddressReserve {
        size: 0,
        alignment: 0,
        addr: 0,
    };
    assert_eq!(rt(zero), Err(Status::InvalidArgument));
    assert_eq!(
        rt(Command::MemCreate { size: 0 }),
        Err(Status::InvalidArgument)
    );
    let map = Command::MemMap {
        ptr: u64::MAX - 10,
        size: 2 << 20,
        offset: 0,
        handle: 1,
    };
    assert_eq!(rt(map), Err(Status::InvalidAddress), "wraps");
    let access = |prot| Command::MemSetAccess {
        ptr: 1 << 40,
        size: 2 << 20,
        prot,
    };
    assert_eq!(rt(access(PROT_READWRITE)), Ok(access(PROT_READWRITE)));
    for p in [0, 1, 2, 7] {
        assert_eq!(rt(access(p)), Err(Status::NotSupported), "prot {p}");
    }
    // Freeing calls wait for the VM's device work, as MEM_FREE does.
    assert!(Command::MemRelease { handle: 1 }.class().waits_for_device);
    assert!(
        Command::MemUnmap { ptr: 0, size: 1 }
            .class()
            .waits_for_device
    );
    assert!(!map.class().waits_for_device);
    assert_eq!(
        Command::MemCreate { size: 9 }.effect(),
        Effect::CreateMemory { size: 9 }
    );
    assert_eq!(
        map.effect(),
        Effect::Map {
            ptr: u64::MAX - 10,
            size: 2 << 20,
            offset: 0,
            handle: 1
        }
    );
    // Their device ranges are the device's own to check: none is declared.
    assert_eq!(map.device_ranges().iter().count(), 0);
}

/// Stream capture and graphs (1.7): their classes and effects.
#[test]
fn graph_commands_decode_classified() {
    let rt = |c: Command| Command::decode(&c.encode(3, 1), 4096);
    for c in [
        Command::StreamBeginCapture,
        Command::StreamEndCapture,
        Command::GraphInstantiate { graph: 7 },
        Command::GraphLaunch { exec: 9 },
        Command::GraphExecDestroy { exec: 9 },
        Command::GraphDestroy { graph: 7 },
    ] {
        assert_eq!(rt(c), Ok(c));
    }
    // Beginning and ending a capture are ordered on their stream and answered at once.
    for c in [Command::StreamBeginCapture, Command::StreamEndCapture] {
        let k = c.class();
        assert!(k.stream && !k.asynchronous && !k.barrier, "{c:?}");
    }
    assert_eq!(Command::StreamEndCapture.effect(), Effect::EndCapture);
    // A launch is stream work like a kernel's.
    let launch = Command::GraphLaunch { exec: 9 };
    assert_eq!(launch.class(), Class::STREAM_WORK);
    assert_eq!(launch.effect(), Effect::LaunchGraph { exec: 9 });
    assert!(
        Command::GraphExecDestroy { exec: 9 }
            .class()
            .waits_for_device
    );
    assert_eq!(
        Command::GraphInstantiate { graph: 7 }.effect(),
        Effect::Instantiate { graph: 7 }
    );
    assert_eq!(
        Command::GraphDestroy { graph: 7 }.effect(),
        Effect::DestroyGraph { graph: 7 }
    );
    assert_eq!(Opcode::GraphLaunch as u16, 0x63);
}
