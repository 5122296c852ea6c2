//! `Command::decode` on an arbitrary submission entry: what a guest writes into an SQ slot.
//!
//! Input: 128 bytes read as an [`Sqe`], then optionally 8 bytes (little-endian) of staging-area
//! size; without them the staging size of the default 16 MiB layout is used. Shorter inputs
//! are zero-padded.
//!
//! Checked, besides "never panics":
//! - an error is never `Status::Internal` (that would be a decoder bug, not a guest's fault);
//! - what decode accepts keeps every staging range inside the staging area, device ranges from
//!   overflowing, launches inside the block/grid/parameter limits, event ids below MAX_EVENTS;
//! - the declared classifiers answer, and declared device ranges do not wrap;
//! - round trip: `encode` of the decoded command, with the entry's stream and tag, gives back
//!   the whole entry (decode refuses non-zero bytes after a command's fields) and decodes to
//!   the same command.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vgpu_abi::cmd::{
    Command, Sqe, Status, MAX_BLOCK_THREADS, MAX_EVENTS, MAX_FUNC_NAME, MAX_GRID_DIM,
    MAX_INLINE_PARAMS, SQE_SIZE,
};
use vgpu_abi::Layout;
use zerocopy::FromBytes;

fn check_accepted(cmd: &Command, staging: u64) {
    let inside = |off: u64, len: u64| off.checked_add(len).is_some_and(|end| end <= staging);
    match *cmd {
        Command::CopyH2D {
            dst: dev,
            staging_offset,
            len,
        }
        | Command::CopyD2H {
            src: dev,
            staging_offset,
            len,
        } => {
            assert!(inside(staging_offset, len), "staging range outside");
            assert!(dev.checked_add(len).is_some(), "device range overflows");
        }
        Command::CopyD2D { dst, src, len } => {
            assert!(dst.checked_add(len).is_some() && src.checked_add(len).is_some());
        }
        Command::Memset {
            dst, len, width, ..
        } => {
            assert!(width == 1 || width == 4);
            assert_eq!(len % width as u64, 0);
            assert!(dst.checked_add(len).is_some());
        }
        Command::MemAlloc { size } => assert!(size > 0),
        Command::Launch { launch: l } => {
            assert!(l.params_len as usize <= MAX_INLINE_PARAMS);
            assert_eq!(l.params().len(), l.params_len as usize);
            assert!(l.grid.iter().all(|&g| (1..=MAX_GRID_DIM).contains(&g)));
            assert!(l.block.iter().all(|&b| b > 0));
            assert!(
                l.block.iter().map(|&b| b as u128).product::<u128>() <= MAX_BLOCK_THREADS as u128
            );
        }
        Command::ModuleLoad {
            staging_offset,
            len,
            ..
        } => assert!(len > 0 && inside(staging_offset, len)),
        Command::GetFunction {
            staging_offset,
            name_len,
            ..
        }
        | Command::ModuleGetGlobal {
            staging_offset,
            name_len,
            ..
        } => {
            assert!((1..=MAX_FUNC_NAME).contains(&name_len));
            assert!(inside(staging_offset, name_len));
        }
        Command::LaunchIndirect {
            staging_offset,
            params_len,
            grid_x,
            grid_y,
            grid_z,
            block_x,
            block_y,
            block_z,
            ..
        } => {
            assert!(params_len <= vgpu_abi::cmd::MAX_KERNEL_PARAMS);
            assert!(inside(staging_offset, params_len as u64));
            assert!([grid_x, grid_y, grid_z]
                .iter()
                .all(|&g| (1..=MAX_GRID_DIM).contains(&g)));
            let threads: u128 = [block_x, block_y, block_z]
                .iter()
                .map(|&b| b as u128)
                .product();
            assert!(threads > 0 && threads <= MAX_BLOCK_THREADS as u128);
        }
        Command::EventRecord { event }
        | Command::StreamWaitEvent { event }
        | Command::EventSynchronize { event }
        | Command::EventQuery { event } => assert!(event < MAX_EVENTS),
        Command::EventElapsed { start, end } => assert!(start < MAX_EVENTS && end < MAX_EVENTS),
        Command::Fence { staging_offset, .. } => {
            assert!(staging_offset % 4 == 0 && inside(staging_offset, 4))
        }
        Command::MemAddressReserve {
            size, alignment, ..
        } => assert!(size > 0 && (alignment == 0 || alignment.is_power_of_two())),
        Command::MemCreate { size } => assert!(size > 0),
        Command::MemMap { ptr, size, .. } => assert!(size > 0 && ptr.checked_add(size).is_some()),
        Command::MemUnmap { ptr, size } => assert!(ptr.checked_add(size).is_some()),
        Command::MemSetAccess { ptr, size, prot } => {
            assert!(ptr.checked_add(size).is_some() && prot == vgpu_abi::cmd::PROT_READWRITE)
        }
        Command::TensorMapEncode { staging_offset } => {
            assert!(inside(staging_offset, vgpu_abi::tensormap::STAGING_BYTES))
        }
        Command::Nop
        | Command::GetInfo
        | Command::MemGranularity
        | Command::MemAddressFree { .. }
        | Command::MemRelease { .. }
        | Command::MemFree { .. }
        | Command::ModuleUnload { .. }
        | Command::FuncParamInfo { .. }
        | Command::FuncGetAttribute { .. }
        | Command::FuncSetAttribute { .. }
        | Command::Synchronize { .. }
        | Command::StreamQuery
        | Command::StreamBeginCapture
        | Command::StreamEndCapture
        | Command::GraphInstantiate { .. }
        | Command::GraphLaunch { .. }
        | Command::GraphExecDestroy { .. }
        | Command::GraphDestroy { .. } => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut raw = [0u8; SQE_SIZE];
    let n = data.len().min(SQE_SIZE);
    raw[..n].copy_from_slice(&data[..n]);
    let sqe = Sqe::read_from_bytes(&raw[..]).expect("128 bytes");
    let staging = match data.get(SQE_SIZE..SQE_SIZE + 8) {
        Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        None => {
            Layout::compute(16 << 20, 256, 512)
                .expect("default layout")
                .staging_size
        }
    };

    let cmd = match Command::decode(&sqe, staging) {
        Ok(cmd) => cmd,
        Err(status) => {
            assert_ne!(status, Status::Ok);
            assert_ne!(
                status,
                Status::Internal,
                "decode failed internally: {sqe:?}"
            );
            assert_eq!(Status::from_raw(status as u32), Some(status));
            return;
        }
    };
    check_accepted(&cmd, staging);
    // The classifiers answer for every accepted command, and its device ranges do not wrap.
    let _ = (cmd.class(), cmd.effect());
    for (ptr, len) in cmd.device_ranges().iter() {
        assert!(ptr.checked_add(len).is_some(), "declared range wraps");
    }
    let op = cmd.opcode();
    assert_eq!(op as u16, sqe.opcode);

    let re = cmd.encode(sqe.stream, sqe.tag);
    assert_eq!(re.opcode, sqe.opcode);
    assert_eq!(re.flags, sqe.flags, "flags not reproduced");
    assert_eq!(re.stream, sqe.stream);
    assert_eq!(re.tag, sqe.tag);
    assert_eq!(
        Command::decode(&re, staging),
        Ok(cmd),
        "re-encoded entry decodes differently"
    );
    // Decode accepts only bodies whose bytes after the fields are zero, so encode gives
    // back the whole body.
    assert_eq!(
        re.body, sqe.body,
        "{op:?}: encode does not reproduce the body decode accepted"
    );
    assert!(re.body[op.body_len()..].iter().all(|&b| b == 0));
    // encode ∘ decode is idempotent.
    assert_eq!(cmd.encode(sqe.stream, sqe.tag), re);
});
