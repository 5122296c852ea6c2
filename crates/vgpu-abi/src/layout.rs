//! BAR2 geometry: where the rings and the staging area sit, computed by the host from the
//! region size and checked by the guest before it trusts it.

use crate::cmd::{CQE_SIZE, SQE_SIZE};
use crate::regs::RegisterPage;
use crate::PAGE;

/// Staging area alignment (so DMA from it starts on a large boundary).
pub const STAGING_ALIGN: u64 = 64 * 1024;
/// Smallest BAR2 accepted.
pub const MIN_SHM_SIZE: u64 = 128 * 1024;
/// Largest BAR2 accepted (QEMU and the guest's address space both have limits).
pub const MAX_SHM_SIZE: u64 = 1 << 34;
/// Largest ring accepted.
pub const MAX_RING_ENTRIES: u32 = 1 << 16;

/// Offsets inside a ring header. Each index lives on its own cache line.
pub mod ring_hdr {
    /// Producer index (SQ: guest; CQ: host). Free-running `u32`.
    pub const TAIL: usize = 0;
    /// Consumer index (SQ: host; CQ: guest). Free-running `u32`.
    pub const HEAD: usize = 64;
    /// Flags (SQ: host-written `SQ_FLAG_*`; CQ: guest-written `CQ_FLAG_*`).
    pub const FLAGS: usize = 128;
    /// Size of a ring header.
    pub const SIZE: usize = crate::PAGE;
}

/// SQ flag (host-written): vgpud is polling this ring, the guest need not ring the doorbell.
pub const SQ_FLAG_HOST_POLLING: u32 = 1 << 0;
/// CQ flag (guest-written): the guest wants an interrupt when completions are posted.
pub const CQ_FLAG_IRQ: u32 = 1 << 0;

/// Errors of a layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The region size is not a power of two, or out of range.
    #[error("shared-memory size {0} must be a power of two between {MIN_SHM_SIZE} and {MAX_SHM_SIZE} bytes")]
    BadShmSize(u64),
    /// Ring sizes are not powers of two, or the CQ is smaller than the SQ.
    #[error(
        "ring sizes sq={sq} cq={cq} must be powers of two in 2..={MAX_RING_ENTRIES}, with cq >= sq"
    )]
    BadRingSize {
        /// SQ entries.
        sq: u32,
        /// CQ entries.
        cq: u32,
    },
    /// The rings leave no staging area.
    #[error("rings of {sq}+{cq} entries leave no staging area in {shm} bytes")]
    NoStaging {
        /// SQ entries.
        sq: u32,
        /// CQ entries.
        cq: u32,
        /// Region size.
        shm: u64,
    },
    /// A register the guest read disagrees with the layout rules.
    #[error("register page geometry is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// Where everything is in BAR2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Total size (power of two).
    pub shm_size: u64,
    /// SQ header offset.
    pub sq_offset: u64,
    /// SQ entries.
    pub sq_entries: u32,
    /// CQ header offset.
    pub cq_offset: u64,
    /// CQ entries.
    pub cq_entries: u32,
    /// Staging offset.
    pub staging_offset: u64,
    /// Staging size.
    pub staging_size: u64,
}

const fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

impl Layout {
    /// Computes the layout the host publishes.
    pub fn compute(shm_size: u64, sq_entries: u32, cq_entries: u32) -> Result<Self, LayoutError> {
        if !shm_size.is_power_of_two() || !(MIN_SHM_SIZE..=MAX_SHM_SIZE).contains(&shm_size) {
            return Err(LayoutError::BadShmSize(shm_size));
        }
        let ring_ok = |n: u32| n.is_power_of_two() && (2..=MAX_RING_ENTRIES).contains(&n);
        if !ring_ok(sq_entries) || !ring_ok(cq_entries) || cq_entries < sq_entries {
            return Err(LayoutError::BadRingSize {
                sq: sq_entries,
                cq: cq_entries,
            });
        }
        let sq_offset = PAGE as u64;
        let sq_end = sq_offset + ring_hdr::SIZE as u64 + sq_entries as u64 * SQE_SIZE as u64;
        let cq_offset = align_up(sq_end, PAGE as u64);
        let cq_end = cq_offset + ring_hdr::SIZE as u64 + cq_entries as u64 * CQE_SIZE as u64;
        let staging_offset = align_up(cq_end, STAGING_ALIGN);
        if staging_offset >= shm_size {
            return Err(LayoutError::NoStaging {
                sq: sq_entries,
                cq: cq_entries,
                shm: shm_size,
            });
        }
        Ok(Self {
            shm_size,
            sq_offset,
            sq_entries,
            cq_offset,
            cq_entries,
            staging_offset,
            staging_size: shm_size - staging_offset,
        })
    }

    /// Offset of SQ entry `i` (already masked).
    pub fn sqe_offset(&self, slot: u32) -> usize {
        (self.sq_offset as usize + ring_hdr::SIZE) + slot as usize * SQE_SIZE
    }

    /// Offset of CQ entry `i` (already masked).
    pub fn cqe_offset(&self, slot: u32) -> usize {
        (self.cq_offset as usize + ring_hdr::SIZE) + slot as usize * CQE_SIZE
    }

    /// Writes the geometry into a register page.
    pub fn fill(&self, regs: &mut RegisterPage) {
        regs.shm_size = self.shm_size;
        regs.sq_offset = self.sq_offset;
        regs.sq_entries = self.sq_entries;
        regs.cq_offset = self.cq_offset;
        regs.cq_entries = self.cq_entries;
        regs.staging_offset = self.staging_offset;
        regs.staging_size = self.staging_size;
        regs.sqe_size = SQE_SIZE as u32;
        regs.cqe_size = CQE_SIZE as u32;
    }

    /// Guest side: rebuilds the layout from the registers and checks that it is exactly what
    /// the host would compute for a region of `bar_size` bytes, so that no offset can point
    /// outside the mapping.
    pub fn from_regs(regs: &RegisterPage, bar_size: u64) -> Result<Self, LayoutError> {
        if regs.shm_size != bar_size {
            return Err(LayoutError::Inconsistent(
                "shm_size differs from the BAR size",
            ));
        }
        if regs.sqe_size != SQE_SIZE as u32 || regs.cqe_size != CQE_SIZE as u32 {
            return Err(LayoutError::Inconsistent("entry sizes"));
        }
        let l = Self::compute(bar_size, regs.sq_entries, regs.cq_entries)?;
        if l.sq_offset != regs.sq_offset
            || l.cq_offset != regs.cq_offset
            || l.staging_offset != regs.staging_offset
            || l.staging_size != regs.staging_size
        {
            return Err(LayoutError::Inconsistent("ring or staging offsets"));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_layout_is_pinned() {
        let l = Layout::compute(16 << 20, 256, 512).unwrap();
        assert_eq!(l.sq_offset, 0x1000);
        assert_eq!(l.sqe_offset(0), 0x2000);
        assert_eq!(l.cq_offset, 0xA000);
        assert_eq!(l.cqe_offset(0), 0xB000);
        assert_eq!(l.staging_offset, 0x10000);
        assert_eq!(l.staging_size, (16 << 20) - 0x10000);
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(matches!(
            Layout::compute(3 << 20, 256, 512),
            Err(LayoutError::BadShmSize(_))
        ));
        assert!(matches!(
            Layout::compute(1 << 16, 2, 2),
            Err(LayoutError::BadShmSize(_))
        ));
        assert!(matches!(
            Layout::compute(1 << 20, 256, 128),
            Err(LayoutError::BadRingSize { .. })
        ));
        assert!(matches!(
            Layout::compute(1 << 20, 100, 128),
            Err(LayoutError::BadRingSize { .. })
        ));
        assert!(matches!(
            Layout::compute(1 << 17, 1024, 4096),
            Err(LayoutError::NoStaging { .. })
        ));
    }

    #[test]
    fn guest_checks_registers() {
        let l = Layout::compute(1 << 20, 64, 128).unwrap();
        let mut r = RegisterPage::default();
        l.fill(&mut r);
        assert_eq!(Layout::from_regs(&r, 1 << 20), Ok(l));
        assert!(Layout::from_regs(&r, 1 << 21).is_err());
        r.staging_size += 1;
        assert!(Layout::from_regs(&r, 1 << 20).is_err());
    }

    proptest! {
        #[test]
        fn layout_never_overlaps(shift in 17u32..31, sq in 1u32..12, cq_extra in 0u32..3) {
            let sq = 1u32 << sq;
            let cq = sq << cq_extra;
            if let Ok(l) = Layout::compute(1u64 << shift, sq, cq) {
                prop_assert!(l.sqe_offset(sq - 1) as u64 + SQE_SIZE as u64 <= l.cq_offset);
                prop_assert!(l.cqe_offset(cq - 1) as u64 + CQE_SIZE as u64 <= l.staging_offset);
                prop_assert_eq!(l.staging_offset + l.staging_size, l.shm_size);
                prop_assert_eq!(l.staging_offset % STAGING_ALIGN, 0);
            }
        }
    }
}
