//! The staging area: host ↔ device copies staged through it in chunks, four in flight, and raw
//! access for hand-made `CopyH2D` / `CopyD2H` commands and small command payloads.

use std::collections::VecDeque;

use vgpu_abi::cmd::Command;
use vgpu_abi::{Layout, Opcode};

use super::ring::check;
use super::Device;
use crate::Error;

/// Largest piece of a host ↔ device copy staged at once.
pub const MAX_COPY_CHUNK: u64 = 2 << 20;

/// Chunks of a copy in flight at once: while the guest copies one chunk into or out of
/// staging, the device moves the others.
const DEPTH: usize = 4;

/// Device-to-host copies of at least this many bytes write the caller's memory with stores
/// that bypass the caches ([`vgpu_abi::ShmView::read_bytes_streaming`]): a destination this
/// large does not stay in them anyway, and a plain store first reads each line it writes.
/// Smaller copies keep the bytes in the caches for the caller, who usually reads them next.
const STREAM_FROM: usize = 8 << 20;

/// Size of a copy chunk for `room` bytes of staging: a quarter of it, so that [`DEPTH`]
/// chunks are in flight without overlapping, and at most [`MAX_COPY_CHUNK`].
fn chunk_size(room: u64) -> u64 {
    (room / DEPTH as u64).clamp(1, MAX_COPY_CHUNK)
}

/// The BAR2 offset of staging bytes `[off, off + len)`, when they lie inside the staging area
/// of `layout`.
fn staging_range(layout: &Layout, off: u64, len: usize) -> Result<usize, Error> {
    match off.checked_add(len as u64) {
        Some(end) if end <= layout.staging_size => Ok((layout.staging_offset + off) as usize),
        _ => Err(Error::InvalidArgument(format!(
            "staging range {off:#x}+{len:#x} outside the {:#x}-byte staging area",
            layout.staging_size
        ))),
    }
}

/// See [`Device::spare_staging`].
pub(super) fn spare_staging(layout: &Layout) -> Option<(u64, u64)> {
    let s = layout.staging_size;
    (s >= 4 << 20).then(|| {
        let len = s / 2;
        (s - len, len)
    })
}

/// See [`Device::payload_room`]: below the spare part and the fence words.
pub(super) fn payload_room(layout: &Layout) -> u64 {
    let below_spare = layout.staging_size - spare_staging(layout).map_or(0, |(_, len)| len);
    below_spare - super::fence::area(layout).map_or(0, |(_, len)| len)
}

/// Checks that device addresses `[base, base + len)` do not wrap around.
fn dev_addr(base: u64, len: usize) -> Result<u64, Error> {
    base.checked_add(len as u64)
        .ok_or_else(|| Error::InvalidArgument(format!("device range {base:#x}+{len:#x} overflows")))
}

impl Device {
    /// Size of the staging area in bytes.
    pub fn staging_size(&self) -> u64 {
        self.layout.staging_size
    }

    /// Writes `data` into the staging area at `off` (for raw `CopyH2D` commands). Note that
    /// [`Device::copy_htod`] / [`Device::copy_dtoh`] use the start of staging.
    pub fn write_staging(&self, off: u64, data: &[u8]) -> Result<(), Error> {
        let at = staging_range(&self.layout, off, data.len())?;
        self.view.write_bytes(at, data);
        Ok(())
    }

    /// Reads the staging area at `off` into `out`.
    pub fn read_staging(&self, off: u64, out: &mut [u8]) -> Result<(), Error> {
        let at = staging_range(&self.layout, off, out.len())?;
        self.view.read_bytes(at, out);
        Ok(())
    }

    /// Staging bytes `[off, off+len)` reserved for small command payloads (PTX text, names):
    /// the first bytes of staging, under the staging lock.
    pub(crate) fn with_staging<T>(
        &self,
        data: &[u8],
        f: impl FnOnce(u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let room = self.payload_room();
        if data.len() as u64 > room {
            return Err(Error::InvalidArgument(format!(
                "{} bytes do not fit the {room} bytes of the staging area for command payloads",
                data.len(),
            )));
        }
        let _g = self.staging_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.view
            .write_bytes(self.layout.staging_offset as usize, data);
        f(0)
    }

    /// Sends `data` through the payload area in parts of at most [`Device::payload_room`]
    /// bytes, in order, under the staging lock throughout (so that no other payload comes
    /// between two parts): `f(offset, len, first, last)` issues the command of each part.
    /// Returns the last part's result.
    pub(crate) fn with_staging_parts<T>(
        &self,
        data: &[u8],
        mut f: impl FnMut(u64, u64, bool, bool) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let room = self.payload_room().max(1) as usize;
        let count = data.len().div_ceil(room).max(1);
        let _g = self.staging_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = None;
        for (i, part) in data.chunks(room).enumerate() {
            self.view
                .write_bytes(self.layout.staging_offset as usize, part);
            out = Some(f(0, part.len() as u64, i == 0, i + 1 == count)?);
        }
        out.ok_or_else(|| Error::InvalidArgument("empty payload".into()))
    }

    /// Bytes of staging for one command payload (the lower part, below
    /// [`Device::spare_staging`]).
    pub(crate) fn payload_room(&self) -> u64 {
        payload_room(&self.layout)
    }

    /// Staging bytes this library never uses, `(offset, len)`, for what a caller manages
    /// itself (launch parameters, which vgpud reads when it issues the launch; page-locked
    /// host memory that copies move to and from the device directly): the upper half of a
    /// staging area of at least 4 MiB. Copies use four chunks of at most 2 MiB at the start;
    /// command payloads (module images, names) stay in the lower half.
    pub fn spare_staging(&self) -> Option<(u64, u64)> {
        spare_staging(&self.layout)
    }

    /// Size of a copy chunk for this device's staging area (its payload part).
    fn chunk(&self) -> u64 {
        chunk_size(self.payload_room())
    }

    /// Waits for every tag in `inflight`, keeping the first error (so that staging is free
    /// again before returning).
    fn finish(
        &self,
        inflight: &mut VecDeque<u64>,
        op: Opcode,
        mut err: Option<Error>,
    ) -> Result<(), Error> {
        while let Some(t) = inflight.pop_front() {
            if let Err(e) = self.wait(t, op as u16).and_then(|c| check(op, c)) {
                err.get_or_insert(e);
            }
        }
        err.map_or(Ok(()), Err)
    }

    /// Copies host memory to the device through the staging area: in chunks of at most a
    /// quarter of its payload part (2 MiB at most), four in flight, a chunk's bytes reused
    /// only once its command has completed. Uses (and clobbers) the first four chunks of
    /// staging.
    pub fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<(), Error> {
        if src.is_empty() {
            return Ok(());
        }
        dev_addr(dst, src.len())?;
        let _g = self.staging_lock.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = self.chunk() as usize;
        let mut inflight: VecDeque<u64> = VecDeque::new();
        let mut err = None;
        for (i, piece) in src.chunks(chunk).enumerate() {
            if inflight.len() == DEPTH {
                let t = inflight.pop_front().expect("DEPTH in flight");
                if let Err(e) = self
                    .wait(t, Opcode::CopyH2D as u16)
                    .and_then(|c| check(Opcode::CopyH2D, c))
                {
                    err = Some(e);
                    break;
                }
            }
            let soff = (i % DEPTH) * chunk;
            self.view
                .write_bytes(self.layout.staging_offset as usize + soff, piece);
            let cmd = Command::CopyH2D {
                dst: dst + (i * chunk) as u64,
                staging_offset: soff as u64,
                len: piece.len() as u64,
            };
            match self.start(cmd.encode(0, 0)) {
                Ok(t) => inflight.push_back(t),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        self.finish(&mut inflight, Opcode::CopyH2D, err)
    }

    /// Copies device memory to the host through the staging area (chunked and pipelined as
    /// [`Device::copy_htod`]).
    pub fn copy_dtoh(&self, out: &mut [u8], src: u64) -> Result<(), Error> {
        if out.is_empty() {
            return Ok(());
        }
        dev_addr(src, out.len())?;
        let _g = self.staging_lock.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = self.chunk() as usize;
        let total = out.len();
        let n = total.div_ceil(chunk);
        let len_of = |i: usize| chunk.min(total - i * chunk);
        let issue = |i: usize| {
            let cmd = Command::CopyD2H {
                src: src + (i * chunk) as u64,
                staging_offset: ((i % DEPTH) * chunk) as u64,
                len: len_of(i) as u64,
            };
            self.start(cmd.encode(0, 0))
        };
        let mut inflight: VecDeque<u64> = VecDeque::new();
        for i in 0..n.min(DEPTH) {
            match issue(i) {
                Ok(t) => inflight.push_back(t),
                Err(e) => return self.finish(&mut inflight, Opcode::CopyD2H, Some(e)),
            }
        }
        for i in 0..n {
            let t = inflight.pop_front().expect("chunk in flight");
            if let Err(e) = self
                .wait(t, Opcode::CopyD2H as u16)
                .and_then(|c| check(Opcode::CopyD2H, c))
            {
                return self.finish(&mut inflight, Opcode::CopyD2H, Some(e));
            }
            let soff = self.layout.staging_offset as usize + (i % DEPTH) * chunk;
            let to = &mut out[i * chunk..i * chunk + len_of(i)];
            if total >= STREAM_FROM {
                self.view.read_bytes_streaming(soff, to);
            } else {
                self.view.read_bytes(soff, to);
            }
            if i + DEPTH < n {
                match issue(i + DEPTH) {
                    Ok(t) => inflight.push_back(t),
                    Err(e) => return self.finish(&mut inflight, Opcode::CopyD2H, Some(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_chunks_fit_the_payload_room_and_a_chunk_is_at_most_2_mib() {
        for staging in [
            2,
            3,
            4096,
            192 << 10,
            2 << 20,
            (2 << 20) + 2,
            16 << 20,
            1 << 40,
        ] {
            let c = chunk_size(staging);
            assert!(
                c >= 1 && (DEPTH as u64 * c <= staging || staging < DEPTH as u64),
                "chunk {c} for {staging} bytes"
            );
            assert!(c <= MAX_COPY_CHUNK);
        }
        assert_eq!(chunk_size(192 << 10), 48 << 10);
        assert_eq!(chunk_size(8 << 20), MAX_COPY_CHUNK);
        assert_eq!(chunk_size(16 << 20), MAX_COPY_CHUNK);
        // A degenerate area still gives progress (the layout rules never publish one).
        assert_eq!(chunk_size(1), 1);
        assert_eq!(chunk_size(0), 1);
    }

    #[test]
    fn staging_ranges_stay_inside_the_area() {
        let layout = Layout::compute(vgpu_abi::layout::MIN_SHM_SIZE, 4, 8).unwrap();
        let (base, size) = (layout.staging_offset as usize, layout.staging_size);
        assert_eq!(staging_range(&layout, 0, 0).unwrap(), base);
        assert_eq!(
            staging_range(&layout, 0, size as usize).unwrap(),
            base,
            "the whole area"
        );
        assert_eq!(
            staging_range(&layout, size - 4, 4).unwrap(),
            base + size as usize - 4
        );
        assert_eq!(
            staging_range(&layout, size, 0).unwrap(),
            base + size as usize
        );
        for (off, len) in [
            (size - 3, 4),
            (size, 1),
            (0, size as usize + 1),
            (u64::MAX, 1),
        ] {
            assert!(
                matches!(
                    staging_range(&layout, off, len),
                    Err(Error::InvalidArgument(_))
                ),
                "{off:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn device_ranges_that_wrap_are_refused() {
        assert_eq!(dev_addr(0x1000, 16).unwrap(), 0x1010);
        assert_eq!(dev_addr(u64::MAX - 1, 1).unwrap(), u64::MAX);
        assert!(matches!(
            dev_addr(u64::MAX, 1),
            Err(Error::InvalidArgument(_))
        ));
    }
}
