//! The cpu reference backend: device memory is host memory it owns, kernels are the reference
//! implementations in [`vgpu_abi::cmd::reference`]. It defines the semantics every backend must match.

use super::capture::{Captures, Route};
use super::images::{self, Images};
use super::vmm::Vmm;
use super::{
    kernel_name, read_tensor_map_request, wake, write_tensor_map, Backend, BackendError,
    ContextParams, DeviceInfo, Handler, ImageParts, Issued, Retired, Staging, Token, VmKey,
    VmStream, Wake,
};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use vgpu_abi::cmd::reference as kernels;
use vgpu_abi::cmd::{
    Builtin, BusyParams, Command, LaunchBody, ReduceParams, SaxpyParams, SgemmParams,
    VectorAddParams,
};
use vgpu_abi::regs::BACKEND_CPU;
use vgpu_abi::tensormap::{TensorMapRequest, TENSOR_MAP_BYTES};
use vgpu_abi::Status;
use zerocopy::FromBytes;

/// Device addresses start here (never 0, so a zero pointer is always invalid).
const ADDR_BASE: u64 = 0x0000_7f00_0000_0000;
/// Allocations are aligned to this and separated by a guard gap, so an off-by-one pointer never
/// lands in a neighbour.
const ALIGN: u64 = 256;
const GUARD: u64 = 64 * 1024;
/// The granularity of virtual memory management: sizes, reservations, mappings and offsets are
/// multiples of it. An H100's or H200's (driver 580), minimum and recommended alike.
pub const VMM_GRANULARITY: u64 = 2 << 20;
/// The most element operations (multiply-adds for sgemm, elements otherwise) one built-in
/// kernel may cost. The cpu device runs kernels on the executor thread, so an unbounded one
/// would stall every VM of the device: at about 1 ns per operation this bounds a kernel to
/// tens of milliseconds. Beyond it a launch fails with `LIMIT_EXCEEDED`.
pub const MAX_KERNEL_OPS: u64 = 1 << 26;

struct Ctx {
    staging: Staging,
    bufs: BTreeMap<u64, Vec<u8>>,
    /// When each event was last recorded.
    events: HashMap<u32, Instant>,
    /// The module images the VM loaded (recorded, never run).
    images: Images,
    /// An image arriving in parts.
    parts: ImageParts,
    /// Virtual memory management: what the VM reserved, created and mapped.
    vmm: Vmm,
    /// The memory of the VM's handles (created, not yet freed).
    handle_mem: HashMap<u64, Vec<u8>>,
    /// Stream captures in progress, graphs and executable graphs (1.7).
    captures: Captures,
}

/// A busy kernel occupying execution slot `slot` from `started` until `until`.
#[derive(Debug, Clone, Copy)]
struct Running {
    vm: VmKey,
    stream: u32,
    slot: usize,
    started: Instant,
    until: Instant,
}

/// The cpu backend.
pub struct CpuBackend {
    ctxs: HashMap<VmKey, Ctx>,
    next_addr: u64,
    total_mem: u64,
    used_mem: u64,
    /// When each execution slot is next free. A busy kernel takes the slot that frees first and
    /// holds it for its whole duration (kernels are never preempted), like a GPU's SMs.
    slots: Vec<Instant>,
    running: HashMap<Token, Running>,
    next_token: Token,
    /// Which cpu device this is (several model a multi-GPU host).
    index: usize,
    /// The next module or function handle.
    next_handle: u64,
    /// The wake fd: a timerfd armed for the end of the kernel whose slot frees first, so that
    /// waiting on a cpu device takes the same blocking path as on a GPU. `None` when no timerfd
    /// could be made (then callers poll, bounded by `poll_hint`).
    wake: Option<OwnedFd>,
}

impl CpuBackend {
    /// A symbol name (a kernel's or a global's) from staging, checked as every backend
    /// checks one ([`kernel_name`]).
    fn symbol(&mut self, vm: VmKey, off: u64, len: u64) -> Result<String, Status> {
        let name = kernel_name(&self.ctx(vm)?.staging.read(off, len)?)?;
        name.into_string().map_err(|_| Status::InvalidArgument)
    }

    /// A device with `total_mem` bytes of "device" memory and one execution slot.
    pub fn new(total_mem: u64) -> Self {
        Self::with_slots(total_mem, 1)
    }

    /// A device with `total_mem` bytes of "device" memory and `slots` execution slots (at least 1).
    pub fn with_slots(total_mem: u64, slots: usize) -> Self {
        Self {
            ctxs: HashMap::new(),
            next_addr: ADDR_BASE,
            total_mem,
            used_mem: 0,
            slots: vec![Instant::now(); slots.max(1)],
            running: HashMap::new(),
            next_token: 1,
            index: 0,
            next_handle: 1,
            wake: wake::timer().ok(),
        }
    }

    /// Hands out module and function handles from `first` on (a worker process's are
    /// numbered apart from every other worker's, so that handles are unique across VMs).
    pub fn with_first_handle(mut self, first: u64) -> Self {
        self.next_handle = first.max(1);
        self
    }

    fn handle(&mut self) -> u64 {
        let h = self.next_handle;
        self.next_handle += 1;
        h
    }

    /// The same device, as device `index` of several (named after it).
    pub fn numbered(mut self, index: usize) -> Self {
        self.index = index;
        self
    }

    /// Execution slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Puts a busy kernel of `dur` on the slot that frees first; returns its token.
    fn occupy(&mut self, at: VmStream, dur: Duration) -> Token {
        let now = Instant::now();
        let slot = (0..self.slots.len())
            .min_by_key(|&i| self.slots[i])
            .expect("at least one slot");
        let started = self.slots[slot].max(now);
        let until = started + dur;
        self.slots[slot] = until;
        let token = self.next_token;
        self.next_token += 1;
        self.running.insert(
            token,
            Running {
                vm: at.vm,
                stream: at.stream,
                slot,
                started,
                until,
            },
        );
        token
    }

    /// Takes VM `vm`'s kernels off the slots, running or waiting, and moves the kernels that
    /// waited behind them forward (a killed context's work ends at once).
    fn evict(&mut self, vm: VmKey) {
        self.running.retain(|_, r| r.vm != vm);
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            let mut on: Vec<&mut Running> = self
                .running
                .values_mut()
                .filter(|r| r.slot == slot)
                .collect();
            on.sort_by_key(|r| r.started);
            let mut free = now;
            for r in on {
                if r.started > now {
                    let dur = r.until - r.started;
                    r.started = free;
                    r.until = r.started + dur;
                }
                free = free.max(r.until);
            }
            self.slots[slot] = free;
        }
    }

    fn ctx(&mut self, vm: VmKey) -> Result<&mut Ctx, Status> {
        self.ctxs.get_mut(&vm).ok_or(Status::Internal)
    }
}

impl Ctx {
    /// Calls `f(offset, bytes)` on the bytes of `[ptr, ptr+len)` in order, `offset` counting
    /// from `ptr`: one slice inside an allocation, or one per mapping the range crosses.
    fn each(
        &mut self,
        ptr: u64,
        len: u64,
        mut f: impl FnMut(usize, &mut [u8]),
    ) -> Result<(), Status> {
        if let Ok(b) = self.range(ptr, len) {
            f(0, b);
            return Ok(());
        }
        let pieces = self.vmm.pieces(ptr, len).ok_or(Status::InvalidAddress)?;
        let mut done = 0usize;
        for (h, off, n) in pieces {
            let mem = self.handle_mem.get_mut(&h).ok_or(Status::Internal)?;
            let b = mem
                .get_mut(off as usize..(off + n) as usize)
                .ok_or(Status::Internal)?;
            f(done, b);
            done += n as usize;
        }
        Ok(())
    }

    /// A copy of the bytes `[ptr, ptr+len)`.
    fn read(&mut self, ptr: u64, len: u64) -> Result<Vec<u8>, Status> {
        // The range is checked before anything of its length is allocated (a kernel's
        // parameters name it).
        self.each(ptr, len, |_, _| {})?;
        let mut v = vec![0u8; usize::try_from(len).map_err(|_| Status::InvalidAddress)?];
        self.each(ptr, len, |off, b| v[off..off + b.len()].copy_from_slice(b))?;
        Ok(v)
    }

    /// Writes `data` at `ptr`.
    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), Status> {
        self.each(ptr, data.len() as u64, |off, b| {
            b.copy_from_slice(&data[off..off + b.len()])
        })
    }

    /// The bytes `[ptr, ptr+len)` if they lie inside one allocation.
    fn range(&mut self, ptr: u64, len: u64) -> Result<&mut [u8], Status> {
        let (&base, buf) = self
            .bufs
            .range_mut(..=ptr)
            .next_back()
            .ok_or(Status::InvalidAddress)?;
        let start = ptr - base;
        let end = start.checked_add(len).ok_or(Status::InvalidAddress)?;
        if end > buf.len() as u64 {
            return Err(Status::InvalidAddress);
        }
        Ok(&mut buf[start as usize..end as usize])
    }

    /// Reads `n` f32s at `ptr`; a bad pointer inside a kernel is an illegal-address fault.
    fn load(&mut self, ptr: u64, n: u32) -> Result<Vec<f32>, Status> {
        let b = self
            .read(ptr, n as u64 * 4)
            .map_err(|_| Status::KernelFault)?;
        Ok(kernels::to_f32s(&b))
    }

    fn store(&mut self, ptr: u64, v: &[f32]) -> Result<(), Status> {
        let mut b = vec![0u8; v.len() * 4];
        kernels::from_f32s(v, &mut b);
        self.write(ptr, &b).map_err(|_| Status::KernelFault)
    }
}

fn params<T: FromBytes>(l: &LaunchBody, b: Builtin) -> Result<T, Status> {
    if l.params().len() != b.params_len() {
        return Err(Status::InvalidArgument);
    }
    T::read_from_bytes(l.params()).map_err(|_| Status::InvalidArgument)
}

/// What a built-in launch costs in element operations (see [`MAX_KERNEL_OPS`]).
fn kernel_ops(l: &LaunchBody, b: Builtin) -> Result<u64, Status> {
    Ok(match b {
        Builtin::VectorAddF32 => params::<VectorAddParams>(l, b)?.n as u64,
        Builtin::Saxpy => params::<SaxpyParams>(l, b)?.n as u64,
        Builtin::ReduceSumF32 => params::<ReduceParams>(l, b)?.n as u64,
        Builtin::Sgemm => {
            let p: SgemmParams = params(l, b)?;
            // m*n*k multiply-adds, plus reading and writing C.
            (p.m as u64 * p.n as u64).saturating_mul(p.k as u64 + 1)
        }
        Builtin::Busy | Builtin::Fault => 0,
    })
}

/// The device-info page of the cpu reference device. It describes a compute capability 9.0
/// device with a Hopper GPU's limits, so that programs built for the GPU hosts (sm_90) start up
/// and size their launches as they would there; its multiprocessors are its execution slots.
/// Values are `CUdevice_attribute` numbers of the CUDA 13.0 headers.
fn describe(total_mem: u64, slots: usize) -> vgpu_abi::DeviceInfoPage {
    const ATTRS: &[(usize, i32)] = &[
        (1, 1024),        // MAX_THREADS_PER_BLOCK
        (2, 1024),        // MAX_BLOCK_DIM_X
        (3, 1024),        // MAX_BLOCK_DIM_Y
        (4, 64),          // MAX_BLOCK_DIM_Z
        (5, i32::MAX),    // MAX_GRID_DIM_X
        (6, 65535),       // MAX_GRID_DIM_Y
        (7, 65535),       // MAX_GRID_DIM_Z
        (8, 49152),       // MAX_SHARED_MEMORY_PER_BLOCK
        (9, 65536),       // TOTAL_CONSTANT_MEMORY
        (10, 32),         // WARP_SIZE
        (11, i32::MAX),   // MAX_PITCH
        (12, 65536),      // MAX_REGISTERS_PER_BLOCK
        (13, 1_980_000),  // CLOCK_RATE (kHz)
        (14, 512),        // TEXTURE_ALIGNMENT
        (15, 1),          // GPU_OVERLAP
        (17, 0),          // KERNEL_EXEC_TIMEOUT
        (18, 0),          // INTEGRATED
        (19, 1),          // CAN_MAP_HOST_MEMORY
        (20, 0),          // COMPUTE_MODE (default)
        (21, 131072),     // MAXIMUM_TEXTURE1D_WIDTH
        (22, 131072),     // MAXIMUM_TEXTURE2D_WIDTH
        (23, 65536),      // MAXIMUM_TEXTURE2D_HEIGHT
        (24, 16384),      // MAXIMUM_TEXTURE3D_WIDTH
        (25, 16384),      // MAXIMUM_TEXTURE3D_HEIGHT
        (26, 16384),      // MAXIMUM_TEXTURE3D_DEPTH
        (30, 512),        // SURFACE_ALIGNMENT
        (31, 1),          // CONCURRENT_KERNELS
        (32, 0),          // ECC_ENABLED
        (35, 0),          // TCC_DRIVER
        (36, 2_619_000),  // MEMORY_CLOCK_RATE (kHz)
        (37, 5120),       // GLOBAL_MEMORY_BUS_WIDTH
        (38, 52_428_800), // L2_CACHE_SIZE
        (39, 2048),       // MAX_THREADS_PER_MULTIPROCESSOR
        (40, 2),          // ASYNC_ENGINE_COUNT
        (41, 1),          // UNIFIED_ADDRESSING
        (75, 9),          // COMPUTE_CAPABILITY_MAJOR
        (76, 0),          // COMPUTE_CAPABILITY_MINOR
        (78, 1),          // STREAM_PRIORITIES_SUPPORTED
        (79, 1),          // GLOBAL_L1_CACHE_SUPPORTED
        (80, 1),          // LOCAL_L1_CACHE_SUPPORTED
        (81, 233_472),    // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        (82, 65536),      // MAX_REGISTERS_PER_MULTIPROCESSOR
        (83, 0),          // MANAGED_MEMORY
        (84, 0),          // MULTI_GPU_BOARD
        (85, 0),          // MULTI_GPU_BOARD_GROUP_ID
        (87, 64),         // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
        (95, 1),          // COOPERATIVE_LAUNCH
        (97, 232_448),    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        (102, 1),         // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        (106, 32),        // MAX_BLOCKS_PER_MULTIPROCESSOR
        (111, 1024),      // RESERVED_SHARED_MEMORY_PER_BLOCK
        (120, 1),         // CLUSTER_LAUNCH
        (123, 1),         // DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED
        (125, 0),         // IPC_EVENT_SUPPORTED
        (127, 1),         // MEM_SYNC_DOMAIN_COUNT
        (131, -1),        // NUMA_ID
        (134, -1),        // HOST_NUMA_ID
    ];
    let mut p = vgpu_abi::DeviceInfoPage {
        driver_version: crate::backend::CPU_DRIVER_VERSION,
        attr_count: 148,
        total_mem,
        name: vgpu_abi::regs::put_str("vgpu cpu reference device"),
        ..Default::default()
    };
    for &(a, v) in ATTRS {
        p.attributes[a] = v;
    }
    // MULTIPROCESSOR_COUNT: the execution slots.
    p.attributes[16] = slots as i32;
    p.uuid = vgpu_abi::info::vgpu_uuid(&[0; 16], "cpu reference device");
    p
}

impl Backend for CpuBackend {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: BACKEND_CPU,
            backend: "cpu",
            name: if self.index == 0 {
                format!("vgpu cpu reference device ({} slots)", self.slots.len())
            } else {
                format!(
                    "vgpu cpu reference device {} ({} slots)",
                    self.index,
                    self.slots.len()
                )
            },
            total_mem: self.total_mem,
            caps: 0,
            props: describe(self.total_mem, self.slots.len()),
        }
    }

    fn create_context(&mut self, vm: VmKey, params: ContextParams) -> Result<(), BackendError> {
        let staging = params.staging;
        if self.ctxs.contains_key(&vm) {
            return Err(BackendError::Context(format!(
                "vm {vm} already has a context"
            )));
        }
        self.ctxs.insert(
            vm,
            Ctx {
                staging,
                bufs: BTreeMap::new(),
                events: HashMap::new(),
                images: Images::default(),
                parts: ImageParts::default(),
                vmm: Vmm::default(),
                handle_mem: HashMap::new(),
                captures: Captures::default(),
            },
        );
        Ok(())
    }

    fn destroy_context(&mut self, vm: VmKey) {
        // Destroying a context waits for its running kernels, as on a GPU: the slots stay taken
        // until they end; only the tokens are forgotten.
        self.running.retain(|_, r| r.vm != vm);
        if let Some(ctx) = self.ctxs.remove(&vm) {
            // The handles' memory is the context's too: a reset or a disconnect frees it.
            let freed: u64 = ctx.bufs.values().map(|b| b.len() as u64).sum::<u64>()
                + ctx.handle_mem.values().map(|b| b.len() as u64).sum::<u64>();
            self.used_mem -= freed;
        }
    }

    fn kill_context(&mut self, vm: VmKey) -> bool {
        self.evict(vm);
        self.destroy_context(vm);
        true
    }

    fn submit(&mut self, at: VmStream, cmd: &Command) -> Result<Issued, Status> {
        // A capturing stream's work is recorded, not run (1.7).
        match self.ctx(at.vm)?.captures.route(at.stream, cmd)? {
            Route::Done => Ok(Issued::DONE),
            Route::Run => cmd.dispatch(self, at),
        }
    }

    fn poll(&mut self, _vm: VmKey, token: Token) -> Option<Result<Retired, Status>> {
        let Some(r) = self.running.get(&token) else {
            return Some(Err(Status::Internal));
        };
        if Instant::now() < r.until {
            return None;
        }
        let r = self.running.remove(&token).expect("present");
        Some(Ok(Retired {
            device_ns: (r.until - r.started).as_nanos() as u64,
        }))
    }

    fn poll_hint(&self) -> Option<Duration> {
        let now = Instant::now();
        self.running
            .values()
            .map(|r| r.until.saturating_duration_since(now))
            .min()
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(|w| w.as_fd())
    }

    fn arm_wake(&mut self, early: Duration) -> Wake {
        let (Some(timer), Some(d)) = (&self.wake, self.poll_hint()) else {
            return Wake::Poll;
        };
        if d <= early {
            return Wake::Poll;
        }
        match wake::arm_timer(timer, Some(d - early)) {
            // The kernel's own timer: it cannot be lost.
            Ok(()) => Wake::Armed(None),
            Err(_) => Wake::Poll,
        }
    }

    fn orders_streams(&self) -> bool {
        false
    }
}

/// The commands, one method each ([`Command::dispatch`] calls them).
/// Logs (throttled) that a VM asked the cpu device to run one of its own kernels.
fn refuse_user_kernel(vm: VmKey) -> Status {
    use std::sync::Mutex;
    static LOG: Mutex<crate::throttle::Throttle> = Mutex::new(crate::throttle::Throttle::new(
        crate::throttle::GUEST_LOG_INTERVAL,
    ));
    if let Some(times) = crate::throttle::hit(&LOG) {
        tracing::info!(
            vm,
            times,
            "cpu reference device: a VM's own kernels are not run here (NOT_SUPPORTED)"
        );
    }
    Status::NotSupported
}

/// The cpu device's encoding of a tensor map (no kernel of it reads one): the request's first
/// 120 bytes, then a 64-bit FNV-1a hash of all of it, so that different requests give
/// different maps.
fn cpu_tensor_map(req: &TensorMapRequest) -> [u8; TENSOR_MAP_BYTES] {
    let bytes = req.to_bytes();
    let mut map = [0u8; TENSOR_MAP_BYTES];
    map[..TENSOR_MAP_BYTES - 8].copy_from_slice(&bytes[..TENSOR_MAP_BYTES - 8]);
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    map[TENSOR_MAP_BYTES - 8..].copy_from_slice(&hash.to_le_bytes());
    map
}

impl Handler for CpuBackend {
    type Ctx = VmStream;
    type Out = Issued;

    fn mem_alloc(&mut self, at: VmStream, size: u64) -> Result<Issued, Status> {
        let vm = at.vm;
        if self.used_mem.saturating_add(size) > self.total_mem {
            return Err(Status::OutOfMemory);
        }
        let len = usize::try_from(size).map_err(|_| Status::OutOfMemory)?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|_| Status::OutOfMemory)?;
        buf.resize(len, 0u8);
        let addr = self.next_addr;
        let span = size.div_ceil(ALIGN) * ALIGN + GUARD;
        self.next_addr = self
            .next_addr
            .checked_add(span)
            .ok_or(Status::OutOfMemory)?;
        self.ctx(vm)?.bufs.insert(addr, buf);
        self.used_mem += size;
        Ok(Issued::Done(addr, 0))
    }

    fn mem_free(&mut self, at: VmStream, ptr: u64) -> Result<Issued, Status> {
        let vm = at.vm;
        let buf = self
            .ctx(vm)?
            .bufs
            .remove(&ptr)
            .ok_or(Status::InvalidAddress)?;
        self.used_mem -= buf.len() as u64;
        Ok(Issued::DONE)
    }

    fn memset(
        &mut self,
        at: VmStream,
        dst: u64,
        len: u64,
        value: u32,
        width: u32,
    ) -> Result<Issued, Status> {
        let vm = at.vm;
        let pattern = match width {
            1 => [value as u8; 4],
            4 => value.to_le_bytes(),
            _ => return Err(Status::InvalidArgument),
        };
        // A piece of a mapped range may start inside an element: the pattern follows the
        // offset from `dst`.
        self.ctx(vm)?.each(dst, len, |off, b| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = pattern[(off + i) % 4];
            }
        })?;
        Ok(Issued::DONE)
    }

    fn copy_h2d(
        &mut self,
        at: VmStream,
        dst: u64,
        staging_offset: u64,
        len: u64,
    ) -> Result<Issued, Status> {
        let vm = at.vm;
        let ctx = self.ctx(vm)?;
        let staging = ctx.staging;
        ctx.each(dst, len, |off, b| {
            staging
                .view
                .read_bytes(staging.abs(staging_offset + off as u64), b)
        })?;
        Ok(Issued::DONE)
    }

    fn copy_d2h(
        &mut self,
        at: VmStream,
        src: u64,
        staging_offset: u64,
        len: u64,
    ) -> Result<Issued, Status> {
        let vm = at.vm;
        let ctx = self.ctx(vm)?;
        let staging = ctx.staging;
        ctx.each(src, len, |off, b| {
            staging
                .view
                .write_bytes(staging.abs(staging_offset + off as u64), b)
        })?;
        Ok(Issued::DONE)
    }

    fn copy_d2d(&mut self, at: VmStream, dst: u64, src: u64, len: u64) -> Result<Issued, Status> {
        let vm = at.vm;
        let ctx = self.ctx(vm)?;
        let tmp = ctx.read(src, len)?;
        ctx.write(dst, &tmp)?;
        Ok(Issued::DONE)
    }

    fn launch(&mut self, at: VmStream, l: LaunchBody) -> Result<Issued, Status> {
        let (vm, l) = (at.vm, &l);
        let Some(b) = Builtin::from_handle(l.func) else {
            return Err(if self.ctx(vm)?.images.get(l.func).is_some() {
                refuse_user_kernel(vm)
            } else {
                Status::InvalidFunction
            });
        };
        if b == Builtin::Busy {
            let p: BusyParams = params(l, b)?;
            self.ctx(vm)?;
            // A timed occupation of a slot: the device is busy, the host CPU is not.
            let token = self.occupy(at, Duration::from_micros(p.duration_us as u64));
            return Ok(Issued::Pending(token, 0, 0));
        }
        if kernel_ops(l, b)? > MAX_KERNEL_OPS {
            return Err(Status::LimitExceeded);
        }
        let ctx = self.ctx(vm)?;
        match b {
            Builtin::VectorAddF32 => {
                let p: VectorAddParams = params(l, b)?;
                let (a, bb) = (ctx.load(p.a, p.n)?, ctx.load(p.b, p.n)?);
                let mut c = ctx.load(p.c, p.n)?;
                kernels::vector_add(&a, &bb, &mut c);
                ctx.store(p.c, &c)
            }
            Builtin::Saxpy => {
                let p: SaxpyParams = params(l, b)?;
                let x = ctx.load(p.x, p.n)?;
                let mut y = ctx.load(p.y, p.n)?;
                kernels::saxpy(p.alpha, &x, &mut y);
                ctx.store(p.y, &y)
            }
            Builtin::Sgemm => {
                let p: SgemmParams = params(l, b)?;
                let count = |r: u32, c: u32| r.checked_mul(c).ok_or(Status::InvalidArgument);
                let a = ctx.load(p.a, count(p.m, p.k)?)?;
                let bm = ctx.load(p.b, count(p.k, p.n)?)?;
                let mut c = ctx.load(p.c, count(p.m, p.n)?)?;
                let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
                kernels::sgemm(m, n, k, p.alpha, &a, &bm, p.beta, &mut c);
                ctx.store(p.c, &c)
            }
            Builtin::ReduceSumF32 => {
                let p: ReduceParams = params(l, b)?;
                let x = ctx.load(p.x, p.n)?;
                ctx.store(p.out, &[kernels::reduce_sum(&x)])
            }
            Builtin::Busy => unreachable!("handled above"),
            Builtin::Fault => {
                let _: [u8; 0] = params(l, b)?;
                Err(Status::KernelFault)
            }
        }
        .map(|()| Issued::DONE)
    }

    fn synchronize(&mut self, at: VmStream, _all_streams: bool) -> Result<Issued, Status> {
        let vm = at.vm;
        // The executor holds a stream's later commands while a busy kernel of it is pending
        // (`orders_streams` is false), so everything issued earlier has finished by now.
        self.ctx(vm).map(|_| Issued::DONE)
    }

    fn fence(&mut self, at: VmStream, staging_offset: u64, value: u32) -> Result<Issued, Status> {
        // As for a synchronisation: the stream's earlier work has finished by now.
        let staging = self.ctx(at.vm)?.staging;
        staging.view.store_u32(staging.abs(staging_offset), value);
        Ok(Issued::DONE)
    }

    // Events: the executor issues a command of a stream only once everything earlier on that
    // stream has retired (`orders_streams` is false), so a record completes when it is issued.

    fn event_record(&mut self, at: VmStream, event: u32) -> Result<Issued, Status> {
        self.ctx(at.vm)?.events.insert(event, Instant::now());
        Ok(Issued::DONE)
    }

    fn stream_query(&mut self, at: VmStream) -> Result<Issued, Status> {
        self.ctx(at.vm)?;
        let busy = self
            .running
            .values()
            .any(|r| r.vm == at.vm && r.stream == at.stream);
        if busy {
            Err(Status::NotReady)
        } else {
            Ok(Issued::DONE)
        }
    }

    fn stream_wait_event(&mut self, at: VmStream, _event: u32) -> Result<Issued, Status> {
        let vm = at.vm;
        // Every record issued so far has completed.
        self.ctx(vm).map(|_| Issued::DONE)
    }

    fn event_query(&mut self, at: VmStream, _event: u32) -> Result<Issued, Status> {
        // A record runs once the work before it on its stream retired (this device holds a
        // stream's next command until then): a record vgpud took has completed.
        self.ctx(at.vm).map(|_| Issued::DONE)
    }

    fn event_synchronize(&mut self, at: VmStream, _event: u32) -> Result<Issued, Status> {
        let vm = at.vm;
        self.ctx(vm).map(|_| Issued::DONE)
    }

    fn module_load(
        &mut self,
        at: VmStream,
        staging_offset: u64,
        len: u64,
        binary: bool,
        more: bool,
        cont: bool,
    ) -> Result<Issued, Status> {
        let c = self.ctx(at.vm)?;
        let Some(bytes) = c.parts.add(&c.staging, staging_offset, len, more, cont)? else {
            return Ok(Issued::DONE);
        };
        let image = images::parse(&bytes, binary)?;
        let h = self.handle();
        self.ctx(at.vm)?.images.load(h, image);
        Ok(Issued::Done(h, 0))
    }

    fn module_unload(&mut self, at: VmStream, module: u64) -> Result<Issued, Status> {
        let c = self.ctx(at.vm)?;
        let mut freed = 0;
        for addr in c.images.unload(module)? {
            freed += c.bufs.remove(&addr).map_or(0, |b| b.len() as u64);
        }
        self.used_mem -= freed;
        Ok(Issued::DONE)
    }

    fn module_get_global(
        &mut self,
        at: VmStream,
        module: u64,
        staging_offset: u64,
        name_len: u64,
    ) -> Result<Issued, Status> {
        let name = self.symbol(at.vm, staging_offset, name_len)?;
        let name = name.as_str();
        let (addr, size) = self.ctx(at.vm)?.images.global(module, name)?;
        if let Some(addr) = addr {
            return Ok(Issued::Done(addr, size));
        }
        // The image's initial values are not kept: a global starts zeroed (as a `__device__`
        // variable without an initialiser does).
        let Issued::Done(addr, _) = self.mem_alloc(at, size.max(1))? else {
            return Err(Status::Internal);
        };
        self.ctx(at.vm)?.images.place_global(module, name, addr);
        Ok(Issued::Done(addr, size))
    }

    fn get_function(
        &mut self,
        at: VmStream,
        module: u64,
        staging_offset: u64,
        name_len: u64,
    ) -> Result<Issued, Status> {
        let name = self.symbol(at.vm, staging_offset, name_len)?;
        let h = self.handle();
        let (f, n) = self.ctx(at.vm)?.images.function(module, &name, h)?;
        Ok(Issued::Done(f, n))
    }

    fn func_param_info(&mut self, at: VmStream, func: u64, index: u32) -> Result<Issued, Status> {
        let (o, s) = self.ctx(at.vm)?.images.param(func, index)?;
        Ok(Issued::Done(o, s))
    }

    fn func_get_attribute(
        &mut self,
        at: VmStream,
        func: u64,
        attribute: u32,
    ) -> Result<Issued, Status> {
        let v = self.ctx(at.vm)?.images.attribute(func, attribute)?;
        Ok(Issued::Done(v as u32 as u64, 0))
    }

    fn func_set_attribute(
        &mut self,
        at: VmStream,
        func: u64,
        attribute: u32,
        value: u32,
    ) -> Result<Issued, Status> {
        self.ctx(at.vm)?
            .images
            .set_attribute(func, attribute, value as i32)?;
        Ok(Issued::DONE)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_indirect(
        &mut self,
        at: VmStream,
        func: u64,
        _staging_offset: u64,
        _params_len: u32,
        _shared_mem: u32,
        _grid_x: u32,
        _grid_y: u32,
        _grid_z: u32,
        _block_x: u32,
        _block_y: u32,
        _block_z: u32,
        _cluster_x: u32,
        _cluster_y: u32,
        _cluster_z: u32,
    ) -> Result<Issued, Status> {
        if self.ctx(at.vm)?.images.get(func).is_some() {
            Err(refuse_user_kernel(at.vm))
        } else {
            Err(Status::InvalidFunction)
        }
    }

    // Stream capture and graphs (1.7): a capturing stream's work is recorded by `submit`
    // (see [`Captures`]); a launch replays the recording on the launch stream.

    fn stream_begin_capture(&mut self, at: VmStream) -> Result<Issued, Status> {
        self.ctx(at.vm)?.captures.begin(at.stream)?;
        Ok(Issued::DONE)
    }

    fn stream_end_capture(&mut self, at: VmStream) -> Result<Issued, Status> {
        let h = self.handle();
        let (g, nodes) = self.ctx(at.vm)?.captures.end(at.stream, h)?;
        Ok(Issued::Done(g, nodes))
    }

    fn graph_instantiate(&mut self, at: VmStream, graph: u64) -> Result<Issued, Status> {
        let h = self.handle();
        let x = self.ctx(at.vm)?.captures.instantiate(graph, h)?;
        Ok(Issued::Done(x, 0))
    }

    fn graph_launch(&mut self, at: VmStream, exec: u64) -> Result<Issued, Status> {
        let cmds = self.ctx(at.vm)?.captures.exec(exec)?;
        // Each command as if it came on the launch stream, in order; the first failure ends
        // the launch with its status (a user kernel: NOT_SUPPORTED, as outside a graph). Busy
        // kernels take their slots as they come; the launch is pending until the last ends.
        let mut last: Option<Token> = None;
        for cmd in cmds.iter() {
            if let Issued::Pending(t, ..) = cmd.dispatch(self, at)? {
                let until =
                    |b: &Self, t: Option<Token>| t.and_then(|t| b.running.get(&t)).map(|r| r.until);
                if until(self, Some(t)) >= until(self, last) {
                    // Forgotten, not ended: its slot stays taken until its time is up.
                    if let Some(old) = last.replace(t) {
                        self.running.remove(&old);
                    }
                } else {
                    self.running.remove(&t);
                }
            }
        }
        Ok(match last {
            Some(t) => Issued::Pending(t, 0, 0),
            None => Issued::DONE,
        })
    }

    fn graph_exec_destroy(&mut self, at: VmStream, exec: u64) -> Result<Issued, Status> {
        self.ctx(at.vm)?.captures.destroy_exec(exec)?;
        Ok(Issued::DONE)
    }

    fn graph_destroy(&mut self, at: VmStream, graph: u64) -> Result<Issued, Status> {
        self.ctx(at.vm)?.captures.destroy_graph(graph)?;
        Ok(Issued::DONE)
    }

    // Virtual memory management, as CUDA's driver does it on an H100 or H200: 2 MiB
    // granularity, memory zeroed at creation, a mapping usable once access was granted.

    fn mem_granularity(&mut self, at: VmStream) -> Result<Issued, Status> {
        self.ctx(at.vm)?;
        Ok(Issued::Done(VMM_GRANULARITY, VMM_GRANULARITY))
    }

    fn mem_address_reserve(
        &mut self,
        at: VmStream,
        size: u64,
        alignment: u64,
        _addr: u64,
    ) -> Result<Issued, Status> {
        // The wished-for address is a hint (CUDA's too): ranges come from the device's one
        // address space, in order.
        self.ctx(at.vm)?;
        if !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(Status::InvalidArgument);
        }
        let start = self
            .next_addr
            .checked_next_multiple_of(alignment.max(VMM_GRANULARITY))
            .ok_or(Status::OutOfMemory)?;
        self.next_addr = start
            .checked_add(size)
            .and_then(|e| e.checked_add(GUARD))
            .ok_or(Status::OutOfMemory)?;
        self.ctx(at.vm)?.vmm.reserved(start, size);
        Ok(Issued::Done(start, 0))
    }

    fn mem_address_free(&mut self, at: VmStream, ptr: u64, size: u64) -> Result<Issued, Status> {
        let c = self.ctx(at.vm)?;
        c.vmm.admit_unreserve(ptr, size)?;
        c.vmm.unreserved(ptr);
        Ok(Issued::DONE)
    }

    fn mem_create(&mut self, at: VmStream, size: u64) -> Result<Issued, Status> {
        self.ctx(at.vm)?;
        if !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(Status::InvalidArgument);
        }
        if self.used_mem.saturating_add(size) > self.total_mem {
            return Err(Status::OutOfMemory);
        }
        let len = usize::try_from(size).map_err(|_| Status::OutOfMemory)?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|_| Status::OutOfMemory)?;
        buf.resize(len, 0u8);
        let h = self.handle();
        let c = self.ctx(at.vm)?;
        c.vmm.created(h, size);
        c.handle_mem.insert(h, buf);
        self.used_mem += size;
        Ok(Issued::Done(h, 0))
    }

    fn mem_release(&mut self, at: VmStream, handle: u64) -> Result<Issued, Status> {
        let c = self.ctx(at.vm)?;
        c.vmm.admit_release(handle)?;
        if c.vmm.released(handle).is_some() {
            let freed = c.handle_mem.remove(&handle).map_or(0, |b| b.len() as u64);
            self.used_mem -= freed;
        }
        Ok(Issued::DONE)
    }

    fn mem_map(
        &mut self,
        at: VmStream,
        ptr: u64,
        size: u64,
        offset: u64,
        handle: u64,
    ) -> Result<Issued, Status> {
        let c = self.ctx(at.vm)?;
        if [ptr, size, offset]
            .iter()
            .any(|v| !v.is_multiple_of(VMM_GRANULARITY))
        {
            return Err(Status::InvalidArgument);
        }
        c.vmm.admit_map(ptr, size, offset, handle, usize::MAX)?;
        c.vmm.mapped(ptr, size, offset, handle);
        Ok(Issued::DONE)
    }

    fn mem_unmap(&mut self, at: VmStream, ptr: u64, size: u64) -> Result<Issued, Status> {
        let c = self.ctx(at.vm)?;
        c.vmm.cover(ptr, size)?;
        let mut freed = 0;
        for (h, _) in c.vmm.unmapped(ptr, size) {
            freed += c.handle_mem.remove(&h).map_or(0, |b| b.len() as u64);
        }
        self.used_mem -= freed;
        Ok(Issued::DONE)
    }

    fn mem_set_access(
        &mut self,
        at: VmStream,
        ptr: u64,
        size: u64,
        _prot: u32,
    ) -> Result<Issued, Status> {
        // The command's check admits read-write only.
        let c = self.ctx(at.vm)?;
        c.vmm.cover(ptr, size)?;
        c.vmm.allow(ptr, size);
        Ok(Issued::DONE)
    }

    fn tensor_map_encode(&mut self, at: VmStream, staging_offset: u64) -> Result<Issued, Status> {
        let c = self.ctx(at.vm)?;
        let req = read_tensor_map_request(&c.staging, staging_offset)?;
        write_tensor_map(&c.staging, staging_offset, &cpu_tensor_map(&req))?;
        Ok(Issued::DONE)
    }

    fn event_elapsed(&mut self, at: VmStream, start: u32, end: u32) -> Result<Issued, Status> {
        let vm = at.vm;
        let ev = &self.ctx(vm)?.events;
        let (s, e) = match (ev.get(&start), ev.get(&end)) {
            (Some(s), Some(e)) => (*s, *e),
            _ => return Err(Status::InvalidArgument),
        };
        let ns = if e >= s {
            (e - s).as_nanos() as i64
        } else {
            -((s - e).as_nanos() as i64)
        };
        Ok(Issued::Done(ns as u64, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_abi::cmd::PROT_READWRITE;

    fn at(vm: VmKey) -> VmStream {
        VmStream { vm, stream: 0 }
    }

    /// The pointer an allocation answered with.
    fn ptr(i: Issued) -> u64 {
        match i {
            Issued::Done(p, _) => p,
            Issued::Pending(..) => panic!("allocations finish at once"),
        }
    }
    use zerocopy::IntoBytes;

    fn with_backend(f: impl FnOnce(&mut CpuBackend, Staging, ContextParams)) {
        let view = vgpu_abi::ShmView::leak_zeroed(8192);
        let staging = Staging {
            view,
            offset: 4096,
            size: 4096,
        };
        let mut b = CpuBackend::new(1 << 20);
        let params = ContextParams {
            staging,
            priority: 0,
            region: None,
        };
        b.create_context(0, params.clone()).unwrap();
        b.create_context(1, params.clone()).unwrap();
        f(&mut b, staging, params);
    }

    #[test]
    fn wake_fd_fires_when_the_first_slot_frees() {
        with_backend(|be, _, _| {
            let busy = |us: u32| {
                launch(
                    Builtin::Busy,
                    BusyParams {
                        duration_us: us,
                        _pad: 0,
                    }
                    .as_bytes(),
                )
            };
            assert_eq!(be.arm_wake(Duration::ZERO), Wake::Poll, "nothing pending");
            let Issued::Pending(t, ..) = be.launch(at(0), busy(20_000)).unwrap() else {
                panic!("busy kernels are pending")
            };
            let until = be.running[&t].until;
            // Within `early` of the end: keep polling.
            assert_eq!(be.arm_wake(Duration::from_secs(1)), Wake::Poll);
            assert_eq!(be.arm_wake(Duration::ZERO), Wake::Armed(None));
            let fd = be.wake_fd().expect("a timerfd");
            assert!(!wake::readable(fd));
            // Blocks until the timer fired (no sleep to race with), then the kernel retired.
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut fds, None).unwrap();
            assert!(Instant::now() >= until);
            wake::drain(be.wake_fd().unwrap());
            assert!(be.poll(0, t).is_some_and(|r| r.is_ok()));
            assert_eq!(be.arm_wake(Duration::ZERO), Wake::Poll);
        });
    }

    fn launch(b: Builtin, p: &[u8]) -> LaunchBody {
        LaunchBody::new(b.handle(), [1; 3], [1; 3], p).unwrap()
    }

    /// A capture records; each launch of its graph replays the work on the launch stream,
    /// reading staging and device memory as they are then.
    #[test]
    fn a_captured_graph_replays_its_work() {
        with_backend(|be, st, _| {
            let on = |stream| VmStream { vm: 0, stream };
            let x = be.mem_alloc(at(0), 16).map(ptr).unwrap();
            let y = be.mem_alloc(at(0), 16).map(ptr).unwrap();
            let sub = |be: &mut CpuBackend, at, c: Command| be.submit(at, &c);
            sub(be, on(1), Command::StreamBeginCapture).unwrap();
            // In: staging [0, 16) → x; x doubled by saxpy into y (y = 2x + y, y zeroed
            // first); y → staging [16, 32). Fork: stream 2 fills x's last word after an
            // event of stream 1, and stream 1 waits for it again.
            let ops = [
                (
                    1,
                    Command::CopyH2D {
                        dst: x,
                        staging_offset: 0,
                        len: 16,
                    },
                ),
                (1, Command::EventRecord { event: 3 }),
                (2, Command::StreamWaitEvent { event: 3 }),
                (
                    2,
                    Command::Memset {
                        dst: x + 12,
                        len: 4,
                        value: 9f32.to_bits(),
                        width: 4,
                    },
                ),
                (2, Command::EventRecord { event: 4 }),
                (1, Command::StreamWaitEvent { event: 4 }),
                (
                    1,
                    Command::Memset {
                        dst: y,
                        len: 16,
                        value: 0,
                        width: 1,
                    },
                ),
                (
                    1,
                    Command::Launch {
                        launch: launch(
                            Builtin::Saxpy,
                            SaxpyParams {
                                x,
                                y,
                                n: 4,
                                alpha: 2.0,
                            }
                            .as_bytes(),
                        ),
                    },
                ),
                (
                    1,
                    Command::CopyD2H {
                        src: y,
                        staging_offset: 16,
                        len: 16,
                    },
                ),
            ];
            let input = |v: [f32; 4]| {
                let mut b = [0u8; 16];
                kernels::from_f32s(&v, &mut b);
                st.view.write_bytes(st.abs(0), &b);
            };
            let output = || {
                let mut b = [0u8; 16];
                st.view.read_bytes(st.abs(16), &mut b);
                kernels::to_f32s(&b)
            };
            input([1., 2., 3., 4.]);
            for (s, c) in ops {
                assert_eq!(sub(be, on(s), c), Ok(Issued::DONE), "{c:?}");
            }
            // Nothing ran.
            assert_eq!(output(), vec![0.; 4]);
            assert_eq!(be.ctx(0).unwrap().read(x, 16).unwrap(), vec![0; 16]);
            let Issued::Done(g, _) = sub(be, on(1), Command::StreamEndCapture).unwrap() else {
                panic!("end capture answers at once")
            };
            let Issued::Done(exec, _) =
                sub(be, on(0), Command::GraphInstantiate { graph: g }).unwrap()
            else {
                panic!("instantiate answers at once")
            };
            for (i, v) in [[1., 2., 3., 4.], [10., 20., 30., 40.]]
                .into_iter()
                .enumerate()
            {
                input(v);
                let stream = 5 + i as u32;
                assert_eq!(
                    sub(be, on(stream), Command::GraphLaunch { exec }),
                    Ok(Issued::DONE)
                );
                assert_eq!(output(), vec![2. * v[0], 2. * v[1], 2. * v[2], 18.]);
            }
            // Querying a capturing stream is refused and invalidates the capture.
            sub(be, on(1), Command::StreamBeginCapture).unwrap();
            assert_eq!(
                sub(be, on(1), Command::StreamQuery),
                Err(Status::CaptureUnsupported)
            );
            assert_eq!(
                sub(be, on(1), Command::StreamEndCapture),
                Err(Status::CaptureInvalidated)
            );
            sub(be, on(0), Command::GraphExecDestroy { exec }).unwrap();
            assert_eq!(
                sub(be, on(0), Command::GraphLaunch { exec }),
                Err(Status::InvalidArgument)
            );
            // A reset forgets everything.
            be.destroy_context(0);
        });
    }

    #[test]
    fn copies_and_kernels() {
        with_backend(|be, st, params0| {
            let x = be.mem_alloc(at(0), 16).map(ptr).unwrap();
            let y = be.mem_alloc(at(0), 16).map(ptr).unwrap();
            let mut bytes = [0u8; 16];
            kernels::from_f32s(&[1., 2., 3., 4.], &mut bytes);
            st.view.write_bytes(st.abs(0), &bytes);
            be.copy_h2d(at(0), x, 0, 16).unwrap();
            be.memset(at(0), y, 16, 1.0f32.to_bits(), 4).unwrap();
            let p = SaxpyParams {
                x,
                y,
                n: 4,
                alpha: 2.0,
            };
            be.launch(at(0), launch(Builtin::Saxpy, p.as_bytes()))
                .unwrap();
            be.copy_d2h(at(0), y, 100, 16).unwrap();
            let mut out = [0u8; 16];
            st.view.read_bytes(st.abs(100), &mut out);
            assert_eq!(kernels::to_f32s(&out), vec![3., 5., 7., 9.]);
            // another VM cannot see this VM's memory
            assert_eq!(be.copy_d2h(at(1), y, 0, 16), Err(Status::InvalidAddress));
            assert_eq!(be.mem_free(at(1), y), Err(Status::InvalidAddress));
            // kernels fault on bad pointers
            let p = SaxpyParams {
                x,
                y: y + 8,
                n: 4,
                alpha: 2.0,
            };
            assert_eq!(
                be.launch(at(0), launch(Builtin::Saxpy, p.as_bytes())),
                Err(Status::KernelFault)
            );
            assert_eq!(
                be.launch(at(0), launch(Builtin::Fault, &[])),
                Err(Status::KernelFault)
            );
            assert_eq!(
                be.launch(at(0), launch(Builtin::Saxpy, &[0; 3])),
                Err(Status::InvalidArgument)
            );
            let mut l = launch(Builtin::Busy, &[0; 8]);
            l.func = 77;
            assert_eq!(be.launch(at(0), l), Err(Status::InvalidFunction));
            // out of range of one allocation
            assert_eq!(be.copy_d2d(at(0), x, y, 17), Err(Status::InvalidAddress));
            be.copy_d2d(at(0), x, y, 16).unwrap();
            be.mem_free(at(0), x).unwrap();
            assert_eq!(be.mem_free(at(0), x), Err(Status::InvalidAddress));
            assert_eq!(
                be.mem_alloc(at(0), 2 << 20).map(ptr),
                Err(Status::OutOfMemory)
            );
            // a busy kernel occupies the one slot; a second one queues behind it
            let busy = launch(
                Builtin::Busy,
                BusyParams {
                    duration_us: 2000,
                    _pad: 0,
                }
                .as_bytes(),
            );
            let Issued::Pending(t1, ..) = be.launch(at(0), busy).unwrap() else {
                panic!("busy kernels are pending")
            };
            let Issued::Pending(t2, ..) = be.launch(at(1), busy).unwrap() else {
                panic!("busy kernels are pending")
            };
            // Deterministic (no sleeps to race with): the second starts where the first ends.
            let (r1, r2) = (be.running[&t1], be.running[&t2]);
            assert_eq!(r2.started, r1.until, "second kernel waits for the slot");
            assert!(be.poll_hint().unwrap() <= Duration::from_millis(2));
            let retire = |be: &mut CpuBackend, vm, t| loop {
                if let Some(r) = be.poll(vm, t) {
                    return r.unwrap();
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            assert_eq!(retire(be, 0, t1).device_ns, 2_000_000);
            assert!(Instant::now() >= r1.until);
            retire(be, 1, t2);
            assert!(Instant::now() >= r2.until);
            assert_eq!(be.poll_hint(), None);
            // Killing a context takes its kernels off the slot: the one queued behind moves up.
            let long = launch(
                Builtin::Busy,
                BusyParams {
                    duration_us: 60_000_000,
                    _pad: 0,
                }
                .as_bytes(),
            );
            let Issued::Pending(t3, ..) = be.launch(at(0), long).unwrap() else {
                panic!("busy kernels are pending")
            };
            let Issued::Pending(t4, ..) = be.launch(at(1), busy).unwrap() else {
                panic!("busy kernels are pending")
            };
            assert!(be.running[&t4].started >= be.running[&t3].until);
            assert!(be.kill_context(0));
            assert!(!be.running.contains_key(&t3));
            assert!(be.running[&t4].until <= Instant::now() + Duration::from_millis(2));
            retire(be, 1, t4);
            be.create_context(0, params0.clone()).unwrap();
            be.destroy_context(0);
            assert_eq!(be.used_mem, 0);
        });
    }

    #[test]
    fn mapped_memory_behaves_as_device_memory() {
        with_backend(|_, st, _| {
            const G: u64 = VMM_GRANULARITY;
            let mut b = CpuBackend::new(8 * G);
            let view = st.view;
            let params = ContextParams {
                staging: st,
                priority: 0,
                region: None,
            };
            b.create_context(0, params.clone()).unwrap();
            b.create_context(1, params).unwrap();
            let be = &mut b;
            assert_eq!(be.mem_granularity(at(0)), Ok(Issued::Done(G, G)));
            assert_eq!(
                be.mem_address_reserve(at(0), G + 1, 0, 0),
                Err(Status::InvalidArgument),
                "not a multiple of the granularity"
            );
            let va = be.mem_address_reserve(at(0), 4 * G, 0, 0).map(ptr).unwrap();
            assert!(va.is_multiple_of(G));
            let aligned = be
                .mem_address_reserve(at(0), G, 1 << 30, 0)
                .map(ptr)
                .unwrap();
            assert!(aligned.is_multiple_of(1 << 30));
            let h1 = be.mem_create(at(0), G).map(ptr).unwrap();
            let h2 = be.mem_create(at(0), 2 * G).map(ptr).unwrap();
            assert_eq!(be.used_mem, 3 * G);
            assert_eq!(
                be.mem_create(at(0), 6 * G),
                Err(Status::OutOfMemory),
                "past the device's memory"
            );
            // Another VM's handle and range are not this one's.
            assert_eq!(
                be.mem_map(at(1), va, G, 0, h1),
                Err(Status::InvalidArgument)
            );
            assert_eq!(
                be.mem_map(at(0), va + 1, G, 0, h1),
                Err(Status::InvalidArgument),
                "unaligned"
            );
            be.mem_map(at(0), va, G, 0, h1).unwrap();
            be.mem_map(at(0), va + G, 2 * G, 0, h2).unwrap();
            assert_eq!(
                be.mem_map(at(0), va + 2 * G, G, 0, h1),
                Err(Status::InvalidArgument),
                "overlaps"
            );
            // Mapped but not accessible yet.
            assert_eq!(be.memset(at(0), va, 16, 7, 1), Err(Status::InvalidAddress));
            be.mem_set_access(at(0), va, 3 * G, PROT_READWRITE).unwrap();
            // A copy and a memset across the two mappings.
            let data: Vec<u8> = (0..64u8).collect();
            view.write_bytes(st.abs(0), &data);
            be.copy_h2d(at(0), va + G - 32, 0, 64).unwrap();
            be.memset(at(0), va + G - 2, 4, 0xa1b2_c3d4, 4).unwrap();
            be.copy_d2h(at(0), va + G - 32, 100, 64).unwrap();
            let mut back = [0u8; 64];
            view.read_bytes(st.abs(100), &mut back);
            let mut want = data.clone();
            want[30..34].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
            assert_eq!(&back[..], &want[..]);
            assert_eq!(be.ctx(0).unwrap().handle_mem[&h2][..32], want[32..]);
            assert_eq!(be.copy_d2h(at(1), va, 0, 16), Err(Status::InvalidAddress));
            // Released while mapped: still there until unmapped.
            be.mem_release(at(0), h1).unwrap();
            assert_eq!(
                be.mem_release(at(0), h1),
                Err(Status::InvalidArgument),
                "twice"
            );
            be.copy_d2d(at(0), va + G, va, 16).unwrap();
            assert_eq!(
                be.mem_unmap(at(0), va, 2 * G),
                Err(Status::InvalidAddress),
                "part of a mapping"
            );
            assert_eq!(
                be.mem_address_free(at(0), va, 4 * G),
                Err(Status::InvalidArgument),
                "still mapped"
            );
            be.mem_unmap(at(0), va, G).unwrap();
            assert_eq!(be.used_mem, 2 * G, "h1 freed by its unmap");
            assert_eq!(be.mem_unmap(at(0), va, G), Err(Status::InvalidAddress));
            assert_eq!(be.memset(at(0), va, 16, 7, 1), Err(Status::InvalidAddress));
            be.copy_d2h(at(0), va + G, 0, 16).unwrap();
            // A reset drops the rest.
            be.destroy_context(0);
            assert_eq!(be.used_mem, 0);
        });
    }
}
