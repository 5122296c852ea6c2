//! The geometry of pitched (2D and 3D) copies and fills: which byte ranges a copy of
//! `width × height × depth` bytes moves between two pitched layouts, as runs of bytes that are
//! contiguous on both sides. vgpud has no strided command, so each run is one command: rows
//! that follow each other in both layouts merge into one run, so a copy between tightly packed
//! layouts is a single command however many rows it has.

/// The size of a pitched copy: `width` bytes per row, `height` rows per slice, `depth` slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes per row.
    pub width: u64,
    /// Rows per slice.
    pub height: u64,
    /// Slices.
    pub depth: u64,
}

/// Where the rows of one side lie, from the side's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pitch {
    /// Bytes from a row to the next.
    pub row: u64,
    /// Bytes from a slice to the next.
    pub slice: u64,
}

impl Extent {
    /// Whether the copy moves no bytes.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0 || self.depth == 0
    }

    /// Bytes the copy moves; `None` on overflow.
    pub fn bytes(&self) -> Option<u64> {
        self.width.checked_mul(self.height)?.checked_mul(self.depth)
    }

    /// Bytes from the first byte of a side to the end of its last row (0 for an empty copy);
    /// `None` on overflow.
    pub fn span(&self, p: Pitch) -> Option<u64> {
        if self.is_empty() {
            return Some(0);
        }
        (self.depth - 1)
            .checked_mul(p.slice)?
            .checked_add((self.height - 1).checked_mul(p.row)?)?
            .checked_add(self.width)
    }
}

/// A contiguous piece of a copy: `len` bytes from source offset `src` to destination offset
/// `dst` (offsets from each side's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Offset in the source.
    pub src: u64,
    /// Offset in the destination.
    pub dst: u64,
    /// Bytes.
    pub len: u64,
}

/// The runs of a copy, in row order (see [`runs`]).
#[derive(Debug, Clone)]
pub struct Runs {
    extent: Extent,
    src: Pitch,
    dst: Pitch,
    /// Next row, as (slice, row).
    next: (u64, u64),
}

/// The runs of a copy of `extent` from layout `src` to layout `dst`; rows contiguous with the
/// previous row on both sides join its run. The caller has checked that the spans do not
/// overflow ([`Extent::span`]).
pub fn runs(extent: Extent, src: Pitch, dst: Pitch) -> Runs {
    Runs {
        extent,
        src,
        dst,
        next: if extent.is_empty() {
            (extent.depth, 0)
        } else {
            (0, 0)
        },
    }
}

impl Runs {
    /// The next row's offsets, advancing past it.
    fn row(&mut self) -> Option<(u64, u64)> {
        let (z, y) = self.next;
        if z >= self.extent.depth {
            return None;
        }
        self.next = if y + 1 < self.extent.height {
            (z, y + 1)
        } else {
            (z + 1, 0)
        };
        Some((
            z * self.src.slice + y * self.src.row,
            z * self.dst.slice + y * self.dst.row,
        ))
    }

    /// The offsets of the row after the current position, without advancing.
    fn peek(&self) -> Option<(u64, u64)> {
        self.clone().row()
    }
}

impl Iterator for Runs {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        let (src, dst) = self.row()?;
        let mut run = Run {
            src,
            dst,
            len: self.extent.width,
        };
        while let Some((s, d)) = self.peek() {
            if s != run.src + run.len || d != run.dst + run.len {
                break;
            }
            self.row();
            run.len += self.extent.width;
        }
        Some(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(width: u64, height: u64, depth: u64) -> Extent {
        Extent {
            width,
            height,
            depth,
        }
    }

    fn pitch(row: u64, slice: u64) -> Pitch {
        Pitch { row, slice }
    }

    #[test]
    fn packed_layouts_are_one_run() {
        let e = ext(64, 10, 3);
        let packed = pitch(64, 640);
        let r: Vec<Run> = runs(e, packed, packed).collect();
        assert_eq!(
            r,
            vec![Run {
                src: 0,
                dst: 0,
                len: 1920
            }]
        );
    }

    #[test]
    fn a_pitched_side_makes_one_run_per_row() {
        let e = ext(100, 3, 1);
        let r: Vec<Run> = runs(e, pitch(100, 0), pitch(512, 0)).collect();
        assert_eq!(
            r,
            vec![
                Run {
                    src: 0,
                    dst: 0,
                    len: 100
                },
                Run {
                    src: 100,
                    dst: 512,
                    len: 100
                },
                Run {
                    src: 200,
                    dst: 1024,
                    len: 100
                },
            ]
        );
    }

    #[test]
    fn packed_slices_of_padded_volumes_join_within_a_slice_only() {
        // Rows are packed (pitch == width) but each slice has two rows of padding.
        let e = ext(8, 2, 3);
        let src = pitch(8, 32);
        let dst = pitch(8, 16);
        let r: Vec<Run> = runs(e, src, dst).collect();
        assert_eq!(
            r,
            vec![
                Run {
                    src: 0,
                    dst: 0,
                    len: 16
                },
                Run {
                    src: 32,
                    dst: 16,
                    len: 16
                },
                Run {
                    src: 64,
                    dst: 32,
                    len: 16
                },
            ],
            "the destination is packed, the source is not: one run per slice"
        );
        let total: u64 = r.iter().map(|r| r.len).sum();
        assert_eq!(total, e.bytes().unwrap());
    }

    #[test]
    fn every_byte_is_moved_once_and_runs_stay_inside_the_spans() {
        for (e, s, d) in [
            (ext(3, 5, 2), pitch(4, 24), pitch(3, 15)),
            (ext(7, 1, 4), pitch(0, 7), pitch(9, 9)),
            (ext(5, 4, 1), pitch(5, 0), pitch(5, 0)),
            (ext(1, 9, 3), pitch(2, 20), pitch(1, 9)),
        ] {
            let r: Vec<Run> = runs(e, s, d).collect();
            let total: u64 = r.iter().map(|r| r.len).sum();
            assert_eq!(total, e.bytes().unwrap(), "{e:?}");
            let (ss, ds) = (e.span(s).unwrap(), e.span(d).unwrap());
            for run in &r {
                assert!(
                    run.src + run.len <= ss && run.dst + run.len <= ds,
                    "{run:?}"
                );
            }
        }
    }

    #[test]
    fn empty_copies_have_no_runs_and_no_span() {
        for e in [ext(0, 4, 4), ext(4, 0, 4), ext(4, 4, 0)] {
            assert!(e.is_empty());
            assert_eq!(runs(e, pitch(4, 16), pitch(4, 16)).count(), 0);
            assert_eq!(e.span(pitch(4, 16)), Some(0));
        }
    }

    #[test]
    fn spans_that_overflow_are_none() {
        assert_eq!(ext(1, 3, 1).span(pitch(u64::MAX / 2 + 1, 0)), None);
        assert_eq!(ext(1, 1, 2).span(pitch(1, u64::MAX)), None);
        assert_eq!(ext(u64::MAX, 2, 1).bytes(), None);
        assert_eq!(ext(10, 3, 2).span(pitch(16, 64)), Some(64 + 32 + 10));
    }
}
