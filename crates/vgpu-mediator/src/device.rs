//! The per-VM virtual device: the backend-neutral checks every command passes before a backend
//! sees it (allocation ownership, ranges, quota, sticky faults), and the accounting after.

use crate::backend::{Backend, Issued, StreamOp, VmKey};
use std::collections::BTreeMap;
use vgpu_abi::cmd::{Builtin, BusyParams, Command};
use vgpu_abi::Status;
use zerocopy::FromBytes;

/// Result of one command: `(result0, result1)` or an error status.
pub type Outcome = Result<(u64, u64), Status>;

/// Result of issuing one command: finished, pending on the device, or an error status.
pub type IssueOutcome = Result<Issued, Status>;

/// The VM's view of its device.
#[derive(Debug)]
pub struct VirtualDevice {
    vm: VmKey,
    allocs: BTreeMap<u64, u64>,
    used: u64,
    quota: u64,
    max_kernel_us: u32,
    /// Set by a kernel fault; every later command fails until reset.
    broken: bool,
}

impl VirtualDevice {
    /// A fresh device with no allocations.
    pub fn new(vm: VmKey, quota: u64, max_kernel_us: u32) -> Self {
        Self {
            vm,
            allocs: BTreeMap::new(),
            used: 0,
            quota,
            max_kernel_us,
            broken: false,
        }
    }

    /// Memory in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Whether a fault broke the context.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Checks that `[ptr, ptr+len)` lies inside one allocation of this VM.
    pub fn check_range(&self, ptr: u64, len: u64) -> Result<(), Status> {
        let (&base, &size) = self
            .allocs
            .range(..=ptr)
            .next_back()
            .ok_or(Status::InvalidAddress)?;
        let end = ptr.checked_add(len).ok_or(Status::InvalidAddress)?;
        if end > base + size {
            return Err(Status::InvalidAddress);
        }
        Ok(())
    }

    /// Marks the context broken (a fault that surfaced after its command completed).
    pub fn set_broken(&mut self) {
        self.broken = true;
    }

    /// Issues one validated command on `stream`.
    pub fn execute<B: Backend + ?Sized>(
        &mut self,
        be: &mut B,
        stream: u32,
        cmd: &Command,
    ) -> IssueOutcome {
        let vm = self.vm;
        let op = &StreamOp { stream };
        match *cmd {
            Command::Nop => return Ok(Issued::DONE),
            Command::GetInfo => return Ok(Issued::Done(self.used, self.quota)),
            _ if self.broken => return Err(Status::ContextLost),
            _ => {}
        }
        match *cmd {
            Command::Nop | Command::GetInfo => unreachable!("handled above"),
            Command::MemAlloc { size } => {
                if self.used.saturating_add(size) > self.quota {
                    return Err(Status::QuotaExceeded);
                }
                let ptr = be.alloc(vm, size)?;
                self.allocs.insert(ptr, size);
                self.used += size;
                Ok(Issued::Done(ptr, 0))
            }
            Command::MemFree { ptr } => {
                let size = *self.allocs.get(&ptr).ok_or(Status::InvalidAddress)?;
                be.free(vm, ptr)?;
                self.allocs.remove(&ptr);
                self.used -= size;
                Ok(Issued::DONE)
            }
            Command::Memset {
                dst,
                len,
                value,
                width,
            } => {
                self.check_range(dst, len)?;
                be.memset(vm, op, dst, len, value, width)
            }
            Command::CopyH2D {
                dst,
                staging_offset,
                len,
            } => {
                self.check_range(dst, len)?;
                be.copy_h2d(vm, op, dst, staging_offset, len)
                    .map(|i| with_result(i, len))
            }
            Command::CopyD2H {
                src,
                staging_offset,
                len,
            } => {
                self.check_range(src, len)?;
                be.copy_d2h(vm, op, src, staging_offset, len)
                    .map(|i| with_result(i, len))
            }
            Command::CopyD2D { dst, src, len } => {
                self.check_range(dst, len)?;
                self.check_range(src, len)?;
                be.copy_d2d(vm, op, dst, src, len)
                    .map(|i| with_result(i, len))
            }
            Command::Launch(ref l) => {
                if l.func == Builtin::Busy.handle() {
                    let p = BusyParams::read_from_bytes(l.params())
                        .map_err(|_| Status::InvalidArgument)?;
                    if p.duration_us > self.max_kernel_us {
                        return Err(Status::InvalidArgument);
                    }
                }
                match be.launch(vm, op, l) {
                    Err(Status::KernelFault) => {
                        self.broken = true;
                        Err(Status::KernelFault)
                    }
                    r => r,
                }
            }
            Command::Synchronize { all_streams } => be.synchronize(vm, op, all_streams),
        }
    }
}

/// A copy completes with its length in `result0`.
fn with_result(i: Issued, len: u64) -> Issued {
    match i {
        Issued::Done(..) => Issued::Done(len, 0),
        Issued::Pending(t, ..) => Issued::Pending(t, len, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Staging;
    use vgpu_abi::cmd::LaunchBody;

    #[test]
    fn quota_ownership_and_faults() {
        let mut mem = vec![0u64; 1024];
        // SAFETY: `mem` outlives the view; 8 KiB, 8-aligned.
        let view = unsafe { vgpu_abi::ShmView::new(mem.as_mut_ptr().cast(), 8192) };
        let st = Staging {
            view,
            offset: 0,
            size: 8192,
        };
        let mut be = CpuBackend::new(1 << 30);
        be.create_context(0, st).unwrap();
        let mut d = VirtualDevice::new(0, 1000, 10);
        let p = d
            .execute(&mut be, 0, &Command::MemAlloc { size: 600 })
            .unwrap();
        let Issued::Done(p, _) = p else {
            panic!("alloc finishes at once")
        };
        assert_eq!(
            d.execute(&mut be, 0, &Command::MemAlloc { size: 401 }),
            Err(Status::QuotaExceeded)
        );
        assert_eq!(
            d.execute(&mut be, 0, &Command::GetInfo),
            Ok(Issued::Done(600, 1000))
        );
        let bad = Command::CopyD2H {
            src: p + 1,
            staging_offset: 0,
            len: 600,
        };
        assert_eq!(d.execute(&mut be, 0, &bad), Err(Status::InvalidAddress));
        assert_eq!(
            d.execute(&mut be, 0, &Command::MemFree { ptr: p + 1 }),
            Err(Status::InvalidAddress)
        );
        d.execute(&mut be, 0, &Command::MemFree { ptr: p }).unwrap();
        assert_eq!(d.used(), 0);
        let busy = LaunchBody::new(
            Builtin::Busy.handle(),
            [1; 3],
            [1; 3],
            &[11, 0, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(
            d.execute(&mut be, 0, &Command::Launch(busy)),
            Err(Status::InvalidArgument)
        );
        let fault = LaunchBody::new(Builtin::Fault.handle(), [1; 3], [1; 3], &[]).unwrap();
        assert_eq!(
            d.execute(&mut be, 0, &Command::Launch(fault)),
            Err(Status::KernelFault)
        );
        assert!(d.is_broken());
        assert_eq!(
            d.execute(&mut be, 0, &Command::MemAlloc { size: 1 }),
            Err(Status::ContextLost)
        );
        assert_eq!(d.execute(&mut be, 0, &Command::Nop), Ok(Issued::DONE));
        drop(mem);
    }
}
