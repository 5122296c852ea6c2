//! The worker process: one VM's context on the real backend, fed through the private ring.
//!
//! It consumes requests like vgpud consumes a guest's ring and answers each once its work has
//! retired. Within `poll_us` of its last progress it spins, with `SQ_FLAG_HOST_POLLING` set so
//! that vgpud skips the doorbell; then it clears the flag, re-checks the ring and sleeps on the
//! doorbell eventfd — and, while device work is pending, on its backend's wake fd too
//! (`--block 1`; the executor's rule, see [`crate::backend::Backend::arm_wake`]). Answers
//! posted while vgpud asked for them (`CQ_FLAG_IRQ`) are followed by a write of the wake
//! eventfd vgpud blocks on.

use super::proto::{
    self, WorkerArgs, WorkerKind, FD_DOORBELL, FD_REGION, FD_RING, FD_WAKE, READY_TAG,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::wake::{self, SPIN_BEFORE_BLOCK, SPIN_BEFORE_RETIRE};
use crate::backend::{Backend, ContextParams, Issued, Staging, Token, VmStream, Wake};
use memmap2::{MmapMut, MmapOptions};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{FromRawFd, OwnedFd};
use std::collections::HashSet;
use std::fs::File;
use std::time::{Duration, Instant};
use tracing::{error, warn};
use vgpu_abi::cmd::{Command, Cqe, Sqe};
use vgpu_abi::ring::{CqProducer, SqConsumer};
use vgpu_abi::{ShmView, Status};

/// The VM key of the worker's only context.
const VM: usize = 0;

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bad command line.
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
    /// An fd vgpud should have passed is missing or unusable.
    #[error("fd {fd}: {source}")]
    Fd {
        /// The fd number.
        fd: i32,
        /// Cause.
        source: std::io::Error,
    },
    /// The staging area does not fit the VM's region.
    #[error("staging [{offset:#x}, +{size:#x}) lies outside the {len}-byte region")]
    Staging {
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// Region length.
        len: usize,
    },
    /// The backend could not be opened or the context created.
    #[error("backend: {0}")]
    Backend(String),
    /// vgpud broke the ring protocol.
    #[error("private ring: {0}")]
    Ring(#[from] vgpu_abi::ring::FenceReason),
}

/// Entry point of `vgpud --worker …` (`args` are the arguments after the flag). Returns the
/// process exit code; it returns only on an error (vgpud ends a worker with SIGKILL).
pub fn worker_main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            error!("vgpud worker: {e}");
            2
        }
    }
}

/// Where a worker maps the VM's shared region when that range is free. The context registers
/// the region, and with unified addressing its device address is this address: a guest that
/// maps the region at the same address (vgpu's libcuda does) hands out page-locked host
/// pointers that are also device pointers, as CUDA promises (XLA launches kernels and fills
/// memory through such pointers). Far below where Linux places mappings (under the stack, near
/// 128 TiB) and above where it places programs and their heaps: free in almost every process.
pub const REGION_ADDRESS: usize = 0x5f00_0000_0000;

/// A mapping of one of the passed memfds, the whole file, kept for the worker's life.
enum Mapping {
    /// Where the kernel chose.
    Anywhere(MmapMut),
    /// At [`REGION_ADDRESS`].
    Fixed { ptr: *mut u8, len: usize },
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Mapping::Fixed { ptr, len } = *self {
            // SAFETY: this value made the mapping and nothing uses it once the worker drops it
            // (at its end).
            let _ = unsafe { rustix::mm::munmap(ptr.cast(), len) };
        }
    }
}

/// Maps one of the passed memfds (whole file), at `at` if that range is free; the fd stays
/// open (owned by the returned file) for the worker's life.
fn map(fd: i32, at: Option<usize>) -> Result<(File, Mapping, ShmView), WorkerError> {
    let io = |source| WorkerError::Fd { fd, source };
    // SAFETY: vgpud dup2'ed this fd here before exec (see `spawn`); nothing else in this process
    // refers to it, so this File is its only owner.
    let file = unsafe { File::from_raw_fd(fd) };
    let len = usize::try_from(file.metadata().map_err(io)?.len())
        .map_err(|e| io(std::io::Error::other(e)))?;
    let mut m = match at.and_then(|addr| map_fixed(&file, len, addr)) {
        Some(m) => m,
        None => {
            // SAFETY: a memfd sized by vgpud, which never truncates it; the other side writes
            // it concurrently, which is why it is only accessed through `ShmView`.
            let mm = unsafe { MmapOptions::new().len(len).map_mut(&file).map_err(io)? };
            Mapping::Anywhere(mm)
        }
    };
    let base = match &mut m {
        Mapping::Anywhere(mm) => mm.as_mut_ptr(),
        Mapping::Fixed { ptr, .. } => *ptr,
    };
    // SAFETY: `base` is a live, page-aligned mapping of `len` bytes, kept alive by the caller
    // for as long as the view is used (the whole life of the worker).
    let view = unsafe { ShmView::new(base, len) };
    Ok((file, m, view))
}

/// `len` bytes of `file` mapped shared at exactly `addr`, or `None` when anything is mapped
/// there already.
fn map_fixed(file: &File, len: usize, addr: usize) -> Option<Mapping> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh shared mapping of the memfd where nothing is mapped (FIXED_NOREPLACE
    // refuses a range in use; a kernel that ignores the flag may place it elsewhere, which is
    // checked and undone), so no memory of this process changes under anyone.
    let p = unsafe {
        rustix::mm::mmap(
            addr as *mut std::ffi::c_void,
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
            file,
            0,
        )
    }
    .ok()?;
    if p as usize != addr {
        // SAFETY: the mapping just made, used by nothing.
        let _ = unsafe { rustix::mm::munmap(p, len) };
        return None;
    }
    Some(Mapping::Fixed { ptr: p.cast(), len })
}

fn open_backend(a: &WorkerArgs) -> Result<Box<dyn Backend>, WorkerError> {
    Ok(match a.kind {
        WorkerKind::Cuda { accounting } => Box::new(
            CudaBackend::open(a.device)
                .map_err(|e| WorkerError::Backend(e.to_string()))?
                .with_kernel_accounting(accounting)
                .with_blocking_wait(a.block)
                .with_first_handle(a.first_handle),
        ),
        WorkerKind::Cpu { mem, slots } => Box::new(
            CpuBackend::with_slots(mem, slots as usize)
                .numbered(a.device)
                .with_first_handle(a.first_handle),
        ),
    })
}

fn run(args: &[String]) -> Result<(), WorkerError> {
    let a = WorkerArgs::parse(args)?;
    let t0 = Instant::now();
    let (_region_fd, _region_map, region) = map(FD_REGION, Some(REGION_ADDRESS))?;
    let (_ring_fd, _ring_map, ring) = map(FD_RING, None)?;
    // SAFETY: as for the memfds: placed here by vgpud before exec, owned by nobody else.
    let doorbell = unsafe { OwnedFd::from_raw_fd(FD_DOORBELL) };
    // SAFETY: as for the doorbell.
    let vgpud_wake = unsafe { OwnedFd::from_raw_fd(FD_WAKE) };
    let layout = proto::ring_layout()?;
    if ring.len() as u64 != layout.shm_size {
        return Err(WorkerError::Fd {
            fd: FD_RING,
            source: std::io::Error::other(format!("ring memfd of {} bytes", ring.len())),
        });
    }
    let mut cq = CqProducer::new(ring, layout);
    let sq = SqConsumer::new(ring, layout);
    let answer = |cq: &mut CqProducer, c: Cqe| {
        // vgpud never has more requests outstanding than the ring holds answers.
        while cq.free().map(|f| f == 0).unwrap_or(false) {
            std::thread::sleep(Duration::from_micros(10));
        }
        cq.push(&c);
    };
    let staging_ok = a
        .staging_offset
        .checked_add(a.staging_size)
        .is_some_and(|end| end <= region.len() as u64);
    if !staging_ok {
        return Err(WorkerError::Staging {
            offset: a.staging_offset,
            size: a.staging_size,
            len: region.len(),
        });
    }
    let staging = Staging {
        view: region,
        offset: a.staging_offset,
        size: a.staging_size,
    };
    let ready = open_backend(&a).and_then(|mut be| {
        be.create_context(
            VM,
            ContextParams {
                staging,
                priority: a.priority,
                region: None,
            },
        )
        .map_err(|e| WorkerError::Backend(e.to_string()))?;
        Ok(be)
    });
    let mut be = match ready {
        Ok(be) => be,
        Err(e) => {
            let c = Cqe {
                tag: READY_TAG,
                status: Status::Internal as u32,
                ..Cqe::default()
            };
            answer(&mut cq, c);
            return Err(e);
        }
    };
    // Debug: a guest that resets in a loop starts a worker each time.
    tracing::debug!(
        pid = std::process::id(),
        device = a.device,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "worker: context ready"
    );
    answer(
        &mut cq,
        Cqe {
            tag: READY_TAG,
            result0: be.staging_device_address(VM).unwrap_or(0),
            ..Cqe::default()
        },
    );
    let mut w = Worker {
        be: &mut *be,
        staging_size: a.staging_size,
        pending: Vec::new(),
    };
    let window = Duration::from_micros(a.poll_us);
    let mut sq = sq;
    sq.set_polling(true);
    let mut last_work = Instant::now();
    let mut shared = true;
    loop {
        let mut progress = false;
        let mut answered = false;
        let n = sq.available()?;
        let now_shared = ring.load_u32(proto::REG_SHARED) != 0;
        if now_shared != shared {
            shared = now_shared;
            w.be.set_shared(shared);
        }
        for _ in 0..n {
            let sqe = sq.pop();
            if let Some(c) = w.handle(&sqe) {
                answer(&mut cq, c);
                answered = true;
            }
            progress = true;
        }
        for c in w.retire() {
            answer(&mut cq, c);
            answered = true;
            progress = true;
        }
        if answered {
            // Pairs with vgpud's "ask for the wake fd, fence, look at the answers".
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if cq.irq_wanted() {
                wake::signal(&vgpud_wake);
            }
        }
        if progress {
            last_work = Instant::now();
            continue;
        }
        // Device work may end any moment: polled for at least `SPIN_BEFORE_BLOCK` (the
        // executor's rule) so that work of a few milliseconds never pays a wake-up.
        let spin = if w.pending.is_empty() {
            window
        } else {
            window.max(SPIN_BEFORE_BLOCK)
        };
        if last_work.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        // How long a wake of the device may take to come, where it can be lost.
        let mut recheck = None;
        let device_wake = if w.pending.is_empty() {
            None
        } else if !a.block {
            // `device_wait = "spin"`: keep polling the device (a backend that knows when its
            // work retires, like the cpu backend, lets the worker nap briefly instead).
            match w.be.poll_hint() {
                Some(d) if !d.is_zero() => std::thread::sleep(d.min(Duration::from_micros(100))),
                _ => std::hint::spin_loop(),
            }
            continue;
        } else {
            match (w.be.wake_fd().is_some(), w.be.arm_wake(SPIN_BEFORE_RETIRE)) {
                (true, Wake::Armed(r)) => {
                    recheck = r;
                    w.be.wake_fd()
                }
                // Retirement is near (or the backend cannot signal it): poll.
                _ => {
                    std::hint::spin_loop();
                    continue;
                }
            }
        };
        // Idle, or blocked on the device: clear the flag (with a fence), re-check, then sleep
        // on the doorbell (and the device's wake fd).
        sq.set_polling(false);
        if sq.available()? == 0 {
            let limit = recheck.unwrap_or(Duration::from_secs(1));
            let limit = rustix::time::Timespec {
                tv_sec: limit.as_secs() as _,
                tv_nsec: limit.subsec_nanos() as _,
            };
            let mut fds = vec![PollFd::new(&doorbell, PollFlags::IN)];
            if let Some(fd) = device_wake {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
            }
            match poll(&mut fds, Some(&limit)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => warn!("worker: poll: {e}"),
            }
            wake::drain(&doorbell);
            if let Some(fd) = device_wake {
                wake::drain(fd);
            }
        }
        sq.set_polling(true);
        if device_wake.is_none() {
            last_work = Instant::now();
        }
        // With device work pending no new window: a wake that finds nothing retired (the cpu
        // backend's timer fires `SPIN_BEFORE_RETIRE` early) polls until it does, without
        // spinning `poll_us` first; a wake that finds a request or an answer opens one above.
    }
}

/// The worker's context and the requests it has on the device.
struct Worker<'a> {
    be: &'a mut dyn Backend,
    staging_size: u64,
    /// `(tag, token, stream)` of stream commands still on the device, in issue order.
    pending: Vec<(u64, Token, u32)>,
}

impl Worker<'_> {
    /// Runs one request; returns its answer, or `None` when its work is on the device.
    fn handle(&mut self, sqe: &Sqe) -> Option<Cqe> {
        let tag = sqe.tag;
        let fail = |s: Status| {
            Some(Cqe {
                tag,
                status: s as u32,
                ..Cqe::default()
            })
        };
        let cmd = match Command::decode(sqe, self.staging_size) {
            Ok(c) => c,
            Err(s) => return fail(s),
        };
        let at = VmStream {
            vm: VM,
            stream: sqe.stream,
        };
        let t0 = Instant::now();
        let r = self.be.submit(at, &cmd);
        match r {
            Err(s) => fail(s),
            Ok(Issued::Done(a, b)) => {
                let (r0, r1) = if cmd.class().asynchronous {
                    (t0.elapsed().as_nanos() as u64, 0)
                } else {
                    (a, b)
                };
                Some(Cqe {
                    tag,
                    status: Status::Ok as u32,
                    flags: 0,
                    result0: r0,
                    result1: r1,
                })
            }
            Ok(Issued::Pending(token, ..)) => {
                self.pending.push((tag, token, sqe.stream));
                None
            }
        }
    }

    /// Answers of the device work that retired since the last call. A stream's work retires
    /// in issue order when the backend keeps streams in order, so once one of its commands
    /// still runs the later ones are not polled (each poll may be a driver call).
    fn retire(&mut self) -> Vec<Cqe> {
        let mut out = Vec::new();
        let be = &mut *self.be;
        let in_order = be.orders_streams();
        // A set: a VM may have a thousand streams busy at once.
        let mut blocked: HashSet<u32> = HashSet::new();
        self.pending.retain(|&(tag, token, stream)| {
            if in_order && blocked.contains(&stream) {
                return true;
            }
            match be.poll(VM, token) {
                None => {
                    if in_order {
                        blocked.insert(stream);
                    }
                    true
                }
                Some(r) => {
                    out.push(match r {
                        Ok(ret) => Cqe {
                            tag,
                            result0: ret.device_ns,
                            ..Cqe::default()
                        },
                        Err(s) => Cqe {
                            tag,
                            status: s as u32,
                            ..Cqe::default()
                        },
                    });
                    false
                }
            }
        });
        out
    }
}
