//! Test support: a tiny in-process stand-in for vgpud (an ivshmem server speaking the set-up
//! protocol, and a host loop that serves the rings with CPU semantics), so that the guest
//! library is tested without the real mediator.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use vgpu_abi::cmd::{
    reference, BusyParams, Command, Handler, LaunchBody, ReduceParams, SaxpyParams, SgemmParams,
    VectorAddParams,
};
use vgpu_abi::regs::{self, off};
use vgpu_abi::ring::{reset_rings, CqProducer, SqConsumer};
use vgpu_abi::{Builtin, Cqe, DeviceStatus, Layout, RegisterPage, ShmView, Status};
use zerocopy::FromBytes;

/// Sends one ivshmem message: an i64 and optionally one fd.
pub(crate) fn send_msg(sock: BorrowedFd<'_>, v: i64, fd: Option<BorrowedFd<'_>>) {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        assert!(anc.push(SendAncillaryMessage::ScmRights(&fds)));
    }
    let bytes = v.to_le_bytes();
    let n = rustix::net::sendmsg(sock, &[IoSlice::new(&bytes)], &mut anc, SendFlags::empty())
        .expect("sendmsg");
    assert_eq!(n, 8);
}

/// A register page as vgpud would publish it for a region of `size` bytes.
pub(crate) fn register_page(size: u64, sq: u32, cq: u32) -> RegisterPage {
    let layout = Layout::compute(size, sq, cq).expect("layout");
    let mut r = RegisterPage {
        magic: vgpu_abi::MAGIC,
        abi_version: vgpu_abi::abi_version(),
        device_status: DeviceStatus::Ready as u32,
        vm_id: 7,
        pool_id: 2,
        priority: 3,
        capabilities: regs::CAP_BUILTIN_KERNELS | regs::CAP_RESET | regs::CAP_COMPLETION_IRQ,
        mem_quota: 64 << 20,
        max_kernel_us: 1_000_000,
        host_peer_id: 1,
        doorbell_vector: 0,
        generation: 1,
        backend: regs::BACKEND_CPU,
        device_total_mem: 1 << 30,
        vm_name: regs::put_str("test-vm"),
        device_name: regs::put_str("fake cpu device"),
        ..RegisterPage::default()
    };
    layout.fill(&mut r);
    r
}

/// A memfd of `size` bytes holding a register page.
pub(crate) fn memfd_device(size: u64, sq: u32, cq: u32) -> File {
    let fd = rustix::fs::memfd_create("vgpu-test", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(size).expect("set_len");
    write_regs(&f, &register_page(size, sq, cq));
    f
}

/// Writes a register page at the start of a file.
pub(crate) fn write_regs(f: &File, r: &RegisterPage) {
    use std::os::unix::fs::FileExt;
    f.write_all_at(zerocopy::IntoBytes::as_bytes(r), 0)
        .expect("write regs");
}

/// An owned shared mapping of a file, for the fake host.
pub(crate) struct Mapping {
    map: MmapRaw,
}

impl Mapping {
    pub(crate) fn new(f: &File) -> Self {
        let len = f.metadata().unwrap().len() as usize;
        Self {
            map: MmapOptions::new().len(len).map_raw(f).expect("map"),
        }
    }
    pub(crate) fn view(&self) -> ShmView {
        // SAFETY: the mapping is page-aligned, `len` bytes, and lives as long as `self`; the
        // test keeps `self` alive while the view is used.
        unsafe { ShmView::new(self.map.as_mut_ptr(), self.map.len()) }
    }
}

/// Knobs of the fake host.
#[derive(Default)]
pub(crate) struct HostOpts {
    /// Signalled (eventfd write) when the guest asks for completion interrupts.
    pub irq: Option<OwnedFd>,
    /// Set the host-polling flag (the guest then skips the doorbell).
    pub polling: bool,
    /// Complete kernel launches with `Ok` without running them (a broken device).
    pub lazy_kernels: bool,
}

/// Shared controls and counters of a running fake host.
#[derive(Default)]
pub(crate) struct HostCtl {
    pub stop: AtomicBool,
    /// While set, the host does not consume the submission ring.
    pub paused: AtomicBool,
    /// Commands executed.
    pub executed: AtomicU64,
    /// Largest number of entries found published at once.
    pub max_batch: AtomicU64,
    /// Completion interrupts signalled (the guest had asked for them).
    pub irqs: AtomicU64,
}

/// A fake vgpud serving one VM's rings on a thread.
pub(crate) struct FakeHost {
    pub ctl: Arc<HostCtl>,
    handle: Option<JoinHandle<()>>,
}

impl FakeHost {
    pub(crate) fn start(f: &File, opts: HostOpts) -> Self {
        let map = Mapping::new(f);
        // Set the rings up before the guest can attach (as vgpud does before it hands out
        // the memory), not racing with it on the host thread.
        let view = map.view();
        let regs: RegisterPage = view.read_obj(0);
        let layout = Layout::from_regs(&regs, view.len() as u64).expect("host layout");
        reset_rings(&view, &layout);
        SqConsumer::new(view, layout).set_polling(opts.polling);
        let ctl = Arc::new(HostCtl::default());
        let c = ctl.clone();
        let handle = std::thread::spawn(move || host_loop(map, opts, c));
        Self {
            ctl,
            handle: Some(handle),
        }
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Mem {
    allocs: BTreeMap<u64, Vec<u8>>,
    next: u64,
    used: u64,
    quota: u64,
    /// When each event was last recorded (the fake host runs everything in order).
    events: std::collections::HashMap<u32, std::time::Instant>,
}

impl Mem {
    fn find(&mut self, ptr: u64, len: u64) -> Result<&mut [u8], Status> {
        let (&base, buf) = self
            .allocs
            .range_mut(..=ptr)
            .next_back()
            .ok_or(Status::InvalidAddress)?;
        let o = (ptr - base) as usize;
        let end = o.checked_add(len as usize).ok_or(Status::InvalidAddress)?;
        if end > buf.len() {
            return Err(Status::InvalidAddress);
        }
        Ok(&mut buf[o..end])
    }
    fn f32s(&mut self, ptr: u64, n: u32) -> Result<Vec<f32>, Status> {
        let b = self.find(ptr, n as u64 * 4)?;
        Ok(b.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    fn put_f32s(&mut self, ptr: u64, v: &[f32]) -> Result<(), Status> {
        let b = self.find(ptr, v.len() as u64 * 4)?;
        for (c, x) in b.chunks_mut(4).zip(v) {
            c.copy_from_slice(&x.to_le_bytes());
        }
        Ok(())
    }
}

fn params<T: FromBytes>(p: &[u8]) -> Result<T, Status> {
    T::read_from_bytes(p).map_err(|_| Status::InvalidArgument)
}

/// Runs a built-in with the reference kernels (the cpu backend's own).
fn run_kernel(k: Builtin, p: &[u8], mem: &mut Mem) -> Result<(), Status> {
    match k {
        Builtin::VectorAddF32 => {
            let p: VectorAddParams = params(p)?;
            let a = mem.f32s(p.a, p.n)?;
            let b = mem.f32s(p.b, p.n)?;
            let mut c = mem.f32s(p.c, p.n)?;
            reference::vector_add(&a, &b, &mut c);
            mem.put_f32s(p.c, &c)
        }
        Builtin::Saxpy => {
            let p: SaxpyParams = params(p)?;
            let x = mem.f32s(p.x, p.n)?;
            let mut y = mem.f32s(p.y, p.n)?;
            reference::saxpy(p.alpha, &x, &mut y);
            mem.put_f32s(p.y, &y)
        }
        Builtin::Sgemm => {
            let p: SgemmParams = params(p)?;
            let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
            let a = mem.f32s(p.a, p.m * p.k)?;
            let b = mem.f32s(p.b, p.k * p.n)?;
            let mut c = mem.f32s(p.c, p.m * p.n)?;
            reference::sgemm(m, n, k, p.alpha, &a, &b, p.beta, &mut c);
            mem.put_f32s(p.c, &c)
        }
        Builtin::ReduceSumF32 => {
            let p: ReduceParams = params(p)?;
            let s = reference::reduce_sum(&mem.f32s(p.x, p.n)?);
            mem.put_f32s(p.out, &[s])
        }
        Builtin::Busy => {
            let p: BusyParams = params(p)?;
            std::thread::sleep(Duration::from_micros(p.duration_us as u64));
            Ok(())
        }
        Builtin::Fault => Err(Status::KernelFault),
    }
}

/// The fake host's device: the commands it serves, with CPU semantics, everything in order.
/// What it does not implement (PTX modules) is not supported, as on the cpu backend.
struct FakeDevice<'a> {
    view: &'a ShmView,
    /// Offset of staging in the region.
    staging: usize,
    mem: &'a mut Mem,
    broken: &'a mut bool,
    /// Launches complete without running (throughput tests).
    lazy: bool,
}

impl Handler for FakeDevice<'_> {
    type Ctx = ();
    type Out = (u64, u64);

    fn nop(&mut self, _: ()) -> Result<(u64, u64), Status> {
        Ok((0, 0))
    }
    fn get_info(&mut self, _: ()) -> Result<(u64, u64), Status> {
        Ok((self.mem.used, self.mem.quota))
    }
    fn mem_alloc(&mut self, _: (), size: u64) -> Result<(u64, u64), Status> {
        let mem = &mut *self.mem;
        if mem.used + size > mem.quota {
            return Err(Status::QuotaExceeded);
        }
        let ptr = mem.next;
        mem.next += size.next_multiple_of(256) + 256;
        mem.allocs.insert(ptr, vec![0; size as usize]);
        mem.used += size;
        Ok((ptr, 0))
    }
    fn mem_free(&mut self, _: (), ptr: u64) -> Result<(u64, u64), Status> {
        let b = self.mem.allocs.remove(&ptr).ok_or(Status::InvalidAddress)?;
        self.mem.used -= b.len() as u64;
        Ok((0, 0))
    }
    fn memset(
        &mut self,
        _: (),
        dst: u64,
        len: u64,
        value: u32,
        width: u32,
    ) -> Result<(u64, u64), Status> {
        let b = self.mem.find(dst, len)?;
        if width == 1 {
            b.fill(value as u8);
        } else {
            for c in b.chunks_mut(4) {
                c.copy_from_slice(&value.to_le_bytes());
            }
        }
        Ok((0, 0))
    }
    fn copy_h2d(
        &mut self,
        _: (),
        dst: u64,
        staging_offset: u64,
        len: u64,
    ) -> Result<(u64, u64), Status> {
        let b = self.mem.find(dst, len)?;
        self.view
            .read_bytes(self.staging + staging_offset as usize, b);
        Ok((0, 0))
    }
    fn copy_d2h(
        &mut self,
        _: (),
        src: u64,
        staging_offset: u64,
        len: u64,
    ) -> Result<(u64, u64), Status> {
        let b = self.mem.find(src, len)?;
        self.view
            .write_bytes(self.staging + staging_offset as usize, b);
        Ok((0, 0))
    }
    fn copy_d2d(&mut self, _: (), dst: u64, src: u64, len: u64) -> Result<(u64, u64), Status> {
        let tmp = self.mem.find(src, len)?.to_vec();
        self.mem.find(dst, len)?.copy_from_slice(&tmp);
        Ok((0, 0))
    }
    fn launch(&mut self, _: (), l: LaunchBody) -> Result<(u64, u64), Status> {
        let k = Builtin::from_handle(l.func).ok_or(Status::InvalidFunction)?;
        if l.params().len() != k.params_len() {
            return Err(Status::InvalidArgument);
        }
        if *self.broken {
            return Err(Status::ContextLost);
        }
        if self.lazy {
            return Ok((0, 0));
        }
        let r = run_kernel(k, l.params(), self.mem);
        if r == Err(Status::KernelFault) {
            *self.broken = true;
            self.view
                .store_u32(off::DEVICE_STATUS, DeviceStatus::Error as u32);
            self.view
                .store_u32(off::LAST_ERROR, Status::KernelFault as u32);
        }
        r.map(|_| (0, 0))
    }
    fn func_param_info(&mut self, _: (), func: u64, index: u32) -> Result<(u64, u64), Status> {
        let k = Builtin::from_handle(func).ok_or(Status::InvalidFunction)?;
        let &(o, s) = k
            .param_layout()
            .get(index as usize)
            .ok_or(Status::InvalidArgument)?;
        Ok((o as u64, s as u64))
    }
    fn event_record(&mut self, _: (), event: u32) -> Result<(u64, u64), Status> {
        self.mem.events.insert(event, std::time::Instant::now());
        Ok((0, 0))
    }
    fn stream_wait_event(&mut self, _: (), _event: u32) -> Result<(u64, u64), Status> {
        Ok((0, 0))
    }
    fn event_synchronize(&mut self, _: (), _event: u32) -> Result<(u64, u64), Status> {
        Ok((0, 0))
    }
    fn event_elapsed(&mut self, _: (), start: u32, end: u32) -> Result<(u64, u64), Status> {
        match (self.mem.events.get(&start), self.mem.events.get(&end)) {
            (Some(s), Some(e)) => {
                let ns = if e >= s {
                    (*e - *s).as_nanos() as i64
                } else {
                    -((*s - *e).as_nanos() as i64)
                };
                Ok((ns as u64, 0))
            }
            _ => Err(Status::InvalidArgument),
        }
    }
    fn synchronize(&mut self, _: (), _all_streams: bool) -> Result<(u64, u64), Status> {
        Ok((0, 0))
    }
    fn fence(&mut self, _: (), staging_offset: u64, value: u32) -> Result<(u64, u64), Status> {
        // Commands run in order as they are taken: the stream's earlier work is done.
        self.view
            .store_u32(self.staging + staging_offset as usize, value);
        Ok((0, 0))
    }
}

fn fence(view: &ShmView, reason: vgpu_abi::ring::FenceReason) {
    view.store_u32(off::LAST_ERROR, reason as u32);
    view.store_u32(off::DEVICE_STATUS, DeviceStatus::Fenced as u32);
}

fn host_loop(map: Mapping, opts: HostOpts, ctl: Arc<HostCtl>) {
    let view = map.view();
    let regs: RegisterPage = view.read_obj(0);
    let layout = Layout::from_regs(&regs, view.len() as u64).expect("host layout");
    let new_mem = || Mem {
        allocs: BTreeMap::new(),
        next: 0x7000_0000_0000,
        used: 0,
        quota: regs.mem_quota,
        events: Default::default(),
    };
    let mut sqc = SqConsumer::new(view, layout);
    let mut cqp = CqProducer::new(view, layout);
    let mut mem = new_mem();
    let mut broken = false;
    let mut last_reset = view.load_u32(regs::REG_RESET_REQUEST);
    let idle = || std::thread::sleep(Duration::from_micros(50));
    while !ctl.stop.load(Ordering::SeqCst) {
        let rr = view.load_u32(regs::REG_RESET_REQUEST);
        if rr != last_reset {
            last_reset = rr;
            view.store_u32(off::DEVICE_STATUS, DeviceStatus::Reset as u32);
            reset_rings(&view, &layout);
            sqc = SqConsumer::new(view, layout);
            cqp = CqProducer::new(view, layout);
            sqc.set_polling(opts.polling);
            mem = new_mem();
            broken = false;
            view.store_u32(off::LAST_ERROR, 0);
            let g = view.load_u32(off::GENERATION);
            view.store_u32(off::GENERATION, g.wrapping_add(1));
            view.store_u32(off::DEVICE_STATUS, DeviceStatus::Ready as u32);
            continue;
        }
        if ctl.paused.load(Ordering::SeqCst)
            || view.load_u32(off::DEVICE_STATUS) == DeviceStatus::Fenced as u32
        {
            idle();
            continue;
        }
        let n = match sqc.available() {
            Ok(0) => {
                idle();
                continue;
            }
            Ok(n) => n,
            Err(r) => {
                fence(&view, r);
                continue;
            }
        };
        ctl.max_batch.fetch_max(n as u64, Ordering::SeqCst);
        'entries: for _ in 0..n {
            loop {
                match cqp.free() {
                    Ok(0) if ctl.stop.load(Ordering::SeqCst) => return,
                    Ok(0) => idle(),
                    Ok(_) => break,
                    Err(r) => {
                        fence(&view, r);
                        break 'entries;
                    }
                }
            }
            let sqe = sqc.pop();
            let mut dev = FakeDevice {
                view: &view,
                staging: layout.staging_offset as usize,
                mem: &mut mem,
                broken: &mut broken,
                lazy: opts.lazy_kernels,
            };
            let r =
                Command::decode(&sqe, layout.staging_size).and_then(|c| c.dispatch(&mut dev, ()));
            let cqe = match r {
                Ok((r0, r1)) => Cqe {
                    tag: sqe.tag,
                    result0: r0,
                    result1: r1,
                    ..Cqe::default()
                },
                Err(s) => Cqe {
                    tag: sqe.tag,
                    status: s as u32,
                    ..Cqe::default()
                },
            };
            cqp.push(&cqe);
            ctl.executed.fetch_add(1, Ordering::SeqCst);
            if cqp.irq_wanted() {
                if let Some(fd) = &opts.irq {
                    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
                    ctl.irqs.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A fake ivshmem server on a UNIX socket in a temp dir: accepts one client, sends the
/// set-up sequence, then keeps the connection until the client leaves.
pub(crate) struct FakeServer {
    pub _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
    /// The mediator's doorbell eventfd (the client rings it).
    pub doorbell: OwnedFd,
    /// The client's interrupt eventfd (the host signals it).
    pub irq: OwnedFd,
    /// Set once the client has disconnected.
    pub disconnected: Arc<AtomicBool>,
    pub shm: File,
    handle: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub(crate) fn start(shm: File) -> Self {
        use rustix::event::{eventfd, EventfdFlags};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let doorbell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        let irq = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        let disconnected = Arc::new(AtomicBool::new(false));
        let (d2, i2, s2, dc) = (
            doorbell.try_clone().unwrap(),
            irq.try_clone().unwrap(),
            shm.try_clone().unwrap(),
            disconnected.clone(),
        );
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let c = conn.as_fd();
            send_msg(c, 0, None);
            send_msg(c, 0, None);
            send_msg(c, -1, Some(s2.as_fd()));
            send_msg(c, 1, Some(d2.as_fd()));
            send_msg(c, 0, Some(i2.as_fd()));
            let mut b = [0u8; 1];
            // A client never sends; EOF means it left.
            let _ = std::io::Read::read(&mut conn, &mut b);
            dc.store(true, Ordering::SeqCst);
        });
        Self {
            _dir: dir,
            path,
            doorbell,
            irq,
            disconnected,
            shm,
            handle: Some(handle),
        }
    }

    /// Waits until the client has disconnected (or 5 s pass).
    pub(crate) fn wait_disconnect(&mut self) -> bool {
        for _ in 0..500 {
            if self.disconnected.load(Ordering::SeqCst) {
                if let Some(h) = self.handle.take() {
                    h.join().unwrap();
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Reads (and clears) the mediator's doorbell counter; 0 when it was not rung.
    pub(crate) fn doorbell_count(&self) -> u64 {
        let mut b = [0u8; 8];
        match rustix::io::read(&self.doorbell, &mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }
}
