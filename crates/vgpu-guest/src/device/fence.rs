//! Fence words (ABI 1.6): a stream's synchronisation is preceded by a `Fence` command, which
//! has the device write a fresh value into a word of staging once the stream's earlier work is
//! done. On CUDA the GPU writes it, so the wait ends as soon as the work has, without the
//! completion's way back through vgpud (and its worker process) to the guest; the
//! synchronisation's completion still comes and is what ends the wait when the word is not
//! written (vgpud skips a fence after a failure, so that the failure is reported).

use std::sync::atomic::{AtomicU32, Ordering};

use vgpu_abi::cmd::{Command, MAX_STREAMS};
use vgpu_abi::{Layout, Opcode, ShmView};

use super::ring::check;
use super::staging::spare_staging;
use super::Device;
use crate::Error;

/// Bytes of one fence word.
const WORD: u64 = 4;
/// Staging of at least this size holds fence words (one per stream id below
/// [`MAX_STREAMS`]: 4 KiB).
const MIN_STAGING: u64 = 64 << 10;

/// The staging bytes `(offset, len)` of the fence words: right below the spare part, at the
/// top of the payload part, whether or not the device takes fences (so that the payload
/// part's size depends on the geometry only).
pub(super) fn area(layout: &Layout) -> Option<(u64, u64)> {
    if layout.staging_size < MIN_STAGING {
        return None;
    }
    let len = MAX_STREAMS as u64 * WORD;
    let below_spare = layout.staging_size - spare_staging(layout).map_or(0, |(_, l)| l);
    Some((below_spare - len, len))
}

/// Whether a word holding `now` has reached `want` (a stream's values grow by one per fence
/// and wrap around).
pub(super) fn reached(now: u32, want: u32) -> bool {
    now.wrapping_sub(want) as i32 >= 0
}

/// The fence words of a device that takes them.
#[derive(Debug)]
pub(super) struct Fences {
    /// Staging offset of the first word.
    staging: u64,
    /// BAR2 offset of the first word.
    bar: usize,
    /// The last value handed out for each stream id.
    last: Box<[AtomicU32]>,
}

impl Fences {
    /// The fence words of a device of ABI minor `abi_minor`, if it takes fences and its
    /// staging area holds them.
    pub(super) fn new(view: ShmView, layout: &Layout, abi_minor: u16) -> Option<Self> {
        // `VGPU_FENCES=0` turns them off (to compare, or to rule them out).
        if abi_minor < 6 || std::env::var_os("VGPU_FENCES").is_some_and(|v| v == "0") {
            return None;
        }
        let (staging, len) = area(layout)?;
        let bar = (layout.staging_offset + staging) as usize;
        // Values go on from what the words hold: an earlier process of this VM may have left
        // values there, and a value already written must never pass for a new one.
        let last = (0..(len / WORD) as usize)
            .map(|i| AtomicU32::new(view.load_u32(bar + i * WORD as usize)))
            .collect();
        Some(Self { staging, bar, last })
    }

    /// A fresh value for `stream`'s word: `(staging offset, BAR2 offset, value)`; `None` for
    /// a stream id without a word.
    fn next(&self, stream: u32) -> Option<(u64, usize, u32)> {
        let w = self.last.get(stream as usize)?;
        let value = w.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let at = stream as u64 * WORD;
        Some((self.staging + at, self.bar + at as usize, value))
    }
}

/// A point in one stream's work: a fence queued there ([`Device::mark_stream`]). Whether the
/// work queued before it has completed is one read of its word ([`Device::passed`]), with no
/// round trip to vgpud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMark {
    /// BAR2 offset of the stream's fence word.
    at: usize,
    /// The value the fence writes.
    value: u32,
}

impl Device {
    /// Queues a fence on `stream` (without waiting for anything) and returns its mark; `None`
    /// where the device takes no fences or the stream id has no word.
    pub fn mark_stream(&self, stream: u32) -> Result<Option<StreamMark>, Error> {
        let Some((staging_offset, at, value)) = self.fences.as_ref().and_then(|f| f.next(stream))
        else {
            return Ok(None);
        };
        self.start_unawaited(
            Command::Fence {
                staging_offset,
                value,
            },
            stream,
        )?;
        Ok(Some(StreamMark { at, value }))
    }

    /// Whether the work queued on the mark's stream before it has completed. False for as long
    /// as the word has not reached the mark's value: when vgpud skipped the fence after a
    /// failure, until a later fence on the stream is written. A mark 2^31 fences old reads as
    /// not reached again (the values wrap): a caller that keeps marks remembers one it saw
    /// passed.
    pub fn passed(&self, m: &StreamMark) -> bool {
        reached(self.view.load_u32(m.at), m.value)
    }

    /// Waits until everything submitted on `stream` so far has completed, through a fence
    /// where the device takes them. Two threads synchronising one stream at once may see
    /// their fences written out of order; a word that went past a waiter's value still means
    /// its work is done (every fence taken later was queued after that work), and one that
    /// did not reach it leaves the waiter to its completion.
    pub(crate) fn synchronize_stream(&self, stream: u32) -> Result<(), Error> {
        let sync = Command::Synchronize { all_streams: false };
        let Some(m) = self.mark_stream(stream)? else {
            return self.exec_on(sync, stream).map(drop);
        };
        let tag = self.start_on(sync, stream)?;
        match self.wait_or_fence(tag, Opcode::Synchronize as u16, (m.at, m.value))? {
            Some(c) => check(Opcode::Synchronize, c).map(drop),
            None => Ok(()),
        }
    }

    /// Whether this device takes fences (ABI 1.6 and a staging area of at least 64 KiB).
    pub fn takes_fences(&self) -> bool {
        self.fences.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reached_wraps() {
        assert!(reached(5, 5));
        assert!(reached(6, 5));
        assert!(!reached(4, 5));
        assert!(reached(2, u32::MAX));
        assert!(!reached(u32::MAX, 2));
        // A stale word far behind is not reached.
        assert!(!reached(0, 1 << 30));
    }
}
