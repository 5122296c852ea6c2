//! Commands: the 128-byte submission entry, the 32-byte completion entry, opcodes, status
//! codes, built-in kernels and their packed parameter layouts.
//!
//! Device memory is addressed by device pointers (`u64`), exactly as in the CUDA driver API.
//! Each VM has its own address space; a pointer that names no allocation of this VM is an
//! error for that VM alone.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Size of a submission entry.
pub const SQE_SIZE: usize = 128;
/// Size of a completion entry.
pub const CQE_SIZE: usize = 32;
/// Bytes of kernel parameters carried inline in a launch entry.
pub const MAX_INLINE_PARAMS: usize = 72;
/// Size of the opcode-specific body of a submission entry.
pub const SQE_BODY: usize = SQE_SIZE - 16;

/// Submission entry flag for [`Opcode::Synchronize`]: wait for every stream, not only `stream`.
pub const SYNC_ALL_STREAMS: u16 = 1 << 0;
/// Event ids are chosen by the guest: `0..MAX_EVENTS` per VM (no allocation command).
pub const MAX_EVENTS: u32 = 1024;
/// Distinct stream ids one VM may use (until it resets); a command naming one more stream
/// fails with [`Status::InvalidArgument`].
pub const MAX_STREAMS: usize = 64;
/// Longest function name accepted by [`Opcode::GetFunction`], in bytes.
pub const MAX_FUNC_NAME: u64 = 256;

/// A submission entry (guest → host). Copied out of shared memory once, then validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Sqe {
    /// [`Opcode`] as `u16`.
    pub opcode: u16,
    /// Opcode-specific flags.
    pub flags: u16,
    /// Stream id; commands on one stream complete in order. 0 is the default stream.
    pub stream: u32,
    /// Chosen by the submitter; returned in the completion.
    pub tag: u64,
    /// Opcode-specific body.
    pub body: [u8; SQE_BODY],
}

impl Default for Sqe {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// A completion entry (host → guest).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Cqe {
    /// The submitter's tag.
    pub tag: u64,
    /// [`Status`] as `u32`.
    pub status: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// First result (e.g. the device pointer of an allocation).
    pub result0: u64,
    /// Second result.
    pub result1: u64,
}

/// Operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// Does nothing; completes with `Ok`. The channel's round-trip probe.
    Nop = 0x00,
    /// `result0` = device memory in use by this VM, `result1` = its quota.
    GetInfo = 0x01,
    /// Allocate device memory. Body: `size: u64`. `result0` = device pointer.
    MemAlloc = 0x10,
    /// Free an allocation. Body: `ptr: u64` (the pointer returned by `MemAlloc`).
    MemFree = 0x11,
    /// Fill device memory. Body: `dst: u64, len: u64, value: u32, width: u32` (1 or 4).
    Memset = 0x12,
    /// Staging → device. Body: `dst: u64, staging_offset: u64, len: u64`.
    CopyH2D = 0x13,
    /// Device → staging. Body: `src: u64, staging_offset: u64, len: u64`.
    CopyD2H = 0x14,
    /// Device → device. Body: `dst: u64, src: u64, len: u64`.
    CopyD2D = 0x15,
    /// Load a PTX module. Body: `staging_offset: u64, len: u64` (the PTX text in staging).
    /// `result0` = module handle.
    ModuleLoad = 0x20,
    /// Unload a module (its functions become invalid). Body: `module: u64`.
    ModuleUnload = 0x21,
    /// Look a kernel up by name. Body: `module: u64, staging_offset: u64, name_len: u64`.
    /// `result0` = function handle, `result1` = number of parameters.
    GetFunction = 0x22,
    /// Launch a kernel. Body: [`LaunchBody`].
    Launch = 0x23,
    /// Where a kernel parameter goes in the packed parameters. Body: `func: u64, index: u32`.
    /// `result0` = offset, `result1` = size (bytes).
    FuncParamInfo = 0x24,
    /// Record event `event` on the entry's stream. Body: [`EventBody`].
    EventRecord = 0x30,
    /// Make the entry's stream wait for the event's latest record. Body: [`EventBody`].
    StreamWaitEvent = 0x31,
    /// Completes once the event's latest record has completed. Body: [`EventBody`].
    EventSynchronize = 0x32,
    /// Time between two completed records: `result0` = `end − start` in ns (an `i64`).
    /// Body: [`EventBody`] (`event` = start, `end_event` = end).
    EventElapsed = 0x33,
    /// Completes once every earlier command of `stream` (or of all streams) has completed.
    Synchronize = 0x40,
}

impl Opcode {
    /// Decodes a raw opcode.
    pub fn from_raw(v: u16) -> Option<Self> {
        Some(match v {
            0x00 => Self::Nop,
            0x01 => Self::GetInfo,
            0x10 => Self::MemAlloc,
            0x11 => Self::MemFree,
            0x12 => Self::Memset,
            0x13 => Self::CopyH2D,
            0x14 => Self::CopyD2H,
            0x15 => Self::CopyD2D,
            0x20 => Self::ModuleLoad,
            0x21 => Self::ModuleUnload,
            0x22 => Self::GetFunction,
            0x23 => Self::Launch,
            0x24 => Self::FuncParamInfo,
            0x30 => Self::EventRecord,
            0x31 => Self::StreamWaitEvent,
            0x32 => Self::EventSynchronize,
            0x33 => Self::EventElapsed,
            0x40 => Self::Synchronize,
            _ => return None,
        })
    }
}

/// Completion status codes. Also used in the `last_error` register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The opcode is not one this device knows.
    UnknownOpcode = 1,
    /// A field is out of its allowed range (sizes, dimensions, widths, flags).
    InvalidArgument = 2,
    /// A staging (offset, length) does not lie inside the staging area.
    StagingOutOfRange = 3,
    /// A device pointer range is not inside one allocation of this VM.
    InvalidAddress = 4,
    /// The physical device is out of memory.
    OutOfMemory = 5,
    /// The allocation would exceed this VM's memory quota.
    QuotaExceeded = 6,
    /// The backend does not implement this operation.
    NotSupported = 7,
    /// A kernel faulted (illegal address); the device context is now broken until reset.
    KernelFault = 8,
    /// The device context is broken (an earlier fault); reset the device.
    ContextLost = 9,
    /// The function handle names no function.
    InvalidFunction = 10,
    /// An internal error in vgpud (a bug or a backend failure); logged on the host.
    Internal = 11,
    /// The device was reset while the command was queued; it did not run.
    Aborted = 12,
    /// The work the command asks about has not completed yet (e.g. an event's record).
    NotReady = 13,
    /// A per-VM limit of vgpud's config was reached (allocations, streams, events, modules,
    /// bytes of module images, queued or in-flight work, or a kernel's cost on the cpu device).
    LimitExceeded = 14,
    /// The VM's work ran past its pool's kernel time limit (`max_kernel_ms`); vgpud reset the
    /// device context to stop it. Reset the device to go on.
    KernelTimeout = 15,
    /// The device could not give the VM a context (the host is out of GPU memory or worker
    /// processes); reset the device to try again.
    ContextUnavailable = 16,
}

impl Status {
    /// Decodes a raw status.
    pub fn from_raw(v: u32) -> Option<Self> {
        use Status::*;
        Some(match v {
            0 => Ok,
            1 => UnknownOpcode,
            2 => InvalidArgument,
            3 => StagingOutOfRange,
            4 => InvalidAddress,
            5 => OutOfMemory,
            6 => QuotaExceeded,
            7 => NotSupported,
            8 => KernelFault,
            9 => ContextLost,
            10 => InvalidFunction,
            11 => Internal,
            12 => Aborted,
            13 => NotReady,
            14 => LimitExceeded,
            15 => KernelTimeout,
            16 => ContextUnavailable,
            _ => return None,
        })
    }

    /// A short human description.
    pub fn describe(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "ok",
            UnknownOpcode => "unknown opcode",
            InvalidArgument => "invalid argument",
            StagingOutOfRange => "staging range outside the staging area",
            InvalidAddress => "device address not inside an allocation of this VM",
            OutOfMemory => "device out of memory",
            QuotaExceeded => "VM memory quota exceeded",
            NotSupported => "not supported by this backend",
            KernelFault => "kernel faulted; reset the device",
            ContextLost => "device context lost after a fault; reset the device",
            InvalidFunction => "invalid function handle",
            Internal => "internal mediator error",
            Aborted => "aborted by a device reset",
            NotReady => "not ready: the work has not completed yet",
            LimitExceeded => "a per-VM limit of the host's config was reached",
            KernelTimeout => "the VM's work ran past the kernel time limit; the context was reset",
            ContextUnavailable => "the host could not create a device context; reset to retry",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.describe(), *self as u32)
    }
}

/// Launch entry body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LaunchBody {
    /// Function handle ([`Builtin::handle`] for built-in kernels).
    pub func: u64,
    /// Grid dimensions.
    pub grid: [u32; 3],
    /// Block dimensions.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_mem: u32,
    /// Bytes of `params` in use.
    pub params_len: u32,
    /// Packed kernel parameters (CUDA layout: each at its natural alignment).
    pub params: [u8; MAX_INLINE_PARAMS],
}

/// Three `u64` words, the body of most memory commands.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Words3 {
    /// First word.
    pub a: u64,
    /// Second word.
    pub b: u64,
    /// Third word.
    pub c: u64,
}

/// Memset body.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MemsetBody {
    /// Destination device pointer.
    pub dst: u64,
    /// Length in bytes (a multiple of `width`).
    pub len: u64,
    /// Fill value (low `width` bytes are used).
    pub value: u32,
    /// 1 or 4.
    pub width: u32,
}

/// Body of the event commands.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EventBody {
    /// The event (`< MAX_EVENTS`); the start event of [`Opcode::EventElapsed`].
    pub event: u32,
    /// The end event of [`Opcode::EventElapsed`] (`< MAX_EVENTS`); zero otherwise.
    pub end_event: u32,
}

/// Body of [`Opcode::FuncParamInfo`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ParamInfoBody {
    /// Function handle (a built-in's or one from [`Opcode::GetFunction`]).
    pub func: u64,
    /// Parameter index.
    pub index: u32,
    /// Zero.
    pub _pad: u32,
}

/// Largest block (threads per block) accepted.
pub const MAX_BLOCK_THREADS: u64 = 1024;
/// Largest grid dimension accepted.
pub const MAX_GRID_DIM: u32 = i32::MAX as u32;

/// A decoded, validated command. Produced by [`Command::decode`] from an entry already
/// copied out of shared memory; every range it holds was checked against the staging size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// See [`Opcode::Nop`].
    Nop,
    /// See [`Opcode::GetInfo`].
    GetInfo,
    /// See [`Opcode::MemAlloc`].
    MemAlloc {
        /// Bytes.
        size: u64,
    },
    /// See [`Opcode::MemFree`].
    MemFree {
        /// Pointer returned by `MemAlloc`.
        ptr: u64,
    },
    /// See [`Opcode::Memset`].
    Memset {
        /// Destination.
        dst: u64,
        /// Bytes.
        len: u64,
        /// Value.
        value: u32,
        /// 1 or 4.
        width: u32,
    },
    /// See [`Opcode::CopyH2D`].
    CopyH2D {
        /// Destination device pointer.
        dst: u64,
        /// Offset in staging.
        staging_offset: u64,
        /// Bytes.
        len: u64,
    },
    /// See [`Opcode::CopyD2H`].
    CopyD2H {
        /// Source device pointer.
        src: u64,
        /// Offset in staging.
        staging_offset: u64,
        /// Bytes.
        len: u64,
    },
    /// See [`Opcode::CopyD2D`].
    CopyD2D {
        /// Destination.
        dst: u64,
        /// Source.
        src: u64,
        /// Bytes.
        len: u64,
    },
    /// See [`Opcode::Launch`].
    Launch(LaunchBody),
    /// See [`Opcode::ModuleLoad`].
    ModuleLoad {
        /// Offset of the PTX text in staging.
        staging_offset: u64,
        /// Bytes of PTX text (> 0).
        len: u64,
    },
    /// See [`Opcode::ModuleUnload`].
    ModuleUnload {
        /// Module handle.
        module: u64,
    },
    /// See [`Opcode::GetFunction`].
    GetFunction {
        /// Module handle.
        module: u64,
        /// Offset of the name in staging.
        staging_offset: u64,
        /// Bytes of the name (1..=[`MAX_FUNC_NAME`]).
        name_len: u64,
    },
    /// See [`Opcode::FuncParamInfo`].
    FuncParamInfo {
        /// Function handle.
        func: u64,
        /// Parameter index.
        index: u32,
    },
    /// See [`Opcode::EventRecord`].
    EventRecord {
        /// Event id.
        event: u32,
    },
    /// See [`Opcode::StreamWaitEvent`].
    StreamWaitEvent {
        /// Event id.
        event: u32,
    },
    /// See [`Opcode::EventSynchronize`].
    EventSynchronize {
        /// Event id.
        event: u32,
    },
    /// See [`Opcode::EventElapsed`].
    EventElapsed {
        /// Start event id.
        start: u32,
        /// End event id.
        end: u32,
    },
    /// See [`Opcode::Synchronize`].
    Synchronize {
        /// Every stream rather than the entry's own.
        all_streams: bool,
    },
}

fn staging_ok(off: u64, len: u64, staging_size: u64) -> Result<(), Status> {
    match off.checked_add(len) {
        Some(end) if end <= staging_size => Ok(()),
        _ => Err(Status::StagingOutOfRange),
    }
}

fn dev_range_ok(ptr: u64, len: u64) -> Result<(), Status> {
    ptr.checked_add(len)
        .map(|_| ())
        .ok_or(Status::InvalidAddress)
}

impl Command {
    /// The opcode of this command.
    pub fn opcode(&self) -> Opcode {
        match self {
            Command::Nop => Opcode::Nop,
            Command::GetInfo => Opcode::GetInfo,
            Command::MemAlloc { .. } => Opcode::MemAlloc,
            Command::MemFree { .. } => Opcode::MemFree,
            Command::Memset { .. } => Opcode::Memset,
            Command::CopyH2D { .. } => Opcode::CopyH2D,
            Command::CopyD2H { .. } => Opcode::CopyD2H,
            Command::CopyD2D { .. } => Opcode::CopyD2D,
            Command::Launch(_) => Opcode::Launch,
            Command::ModuleLoad { .. } => Opcode::ModuleLoad,
            Command::ModuleUnload { .. } => Opcode::ModuleUnload,
            Command::GetFunction { .. } => Opcode::GetFunction,
            Command::FuncParamInfo { .. } => Opcode::FuncParamInfo,
            Command::EventRecord { .. } => Opcode::EventRecord,
            Command::StreamWaitEvent { .. } => Opcode::StreamWaitEvent,
            Command::EventSynchronize { .. } => Opcode::EventSynchronize,
            Command::EventElapsed { .. } => Opcode::EventElapsed,
            Command::Synchronize { .. } => Opcode::Synchronize,
        }
    }

    /// Whether this command runs on (and is ordered within) its entry's stream.
    pub fn uses_stream(&self) -> bool {
        matches!(
            self,
            Command::Memset { .. }
                | Command::CopyH2D { .. }
                | Command::CopyD2H { .. }
                | Command::CopyD2D { .. }
                | Command::Launch(_)
                | Command::EventRecord { .. }
                | Command::StreamWaitEvent { .. }
                | Command::Synchronize { all_streams: false }
        )
    }

    /// Validates an entry (already copied out of shared memory) against the staging size.
    pub fn decode(sqe: &Sqe, staging_size: u64) -> Result<Command, Status> {
        let op = Opcode::from_raw(sqe.opcode).ok_or(Status::UnknownOpcode)?;
        let w3 = Words3::read_from_prefix(&sqe.body[..])
            .map_err(|_| Status::Internal)?
            .0;
        let ev = EventBody::read_from_prefix(&sqe.body[..])
            .map_err(|_| Status::Internal)?
            .0;
        let event_ok = |e: u32| {
            if e < MAX_EVENTS {
                Ok(e)
            } else {
                Err(Status::InvalidArgument)
            }
        };
        // Single-event commands leave `end_event` zero.
        let one_event = || {
            if ev.end_event != 0 {
                return Err(Status::InvalidArgument);
            }
            event_ok(ev.event)
        };
        let known_flags = if op == Opcode::Synchronize {
            SYNC_ALL_STREAMS
        } else {
            0
        };
        if sqe.flags & !known_flags != 0 {
            return Err(Status::InvalidArgument);
        }
        Ok(match op {
            Opcode::Nop => Command::Nop,
            Opcode::GetInfo => Command::GetInfo,
            Opcode::MemAlloc => {
                if w3.a == 0 {
                    return Err(Status::InvalidArgument);
                }
                Command::MemAlloc { size: w3.a }
            }
            Opcode::MemFree => Command::MemFree { ptr: w3.a },
            Opcode::Memset => {
                let m = MemsetBody::read_from_prefix(&sqe.body[..])
                    .map_err(|_| Status::Internal)?
                    .0;
                if !(m.width == 1 || m.width == 4) || m.len % m.width as u64 != 0 {
                    return Err(Status::InvalidArgument);
                }
                dev_range_ok(m.dst, m.len)?;
                Command::Memset {
                    dst: m.dst,
                    len: m.len,
                    value: m.value,
                    width: m.width,
                }
            }
            Opcode::CopyH2D => {
                staging_ok(w3.b, w3.c, staging_size)?;
                dev_range_ok(w3.a, w3.c)?;
                Command::CopyH2D {
                    dst: w3.a,
                    staging_offset: w3.b,
                    len: w3.c,
                }
            }
            Opcode::CopyD2H => {
                staging_ok(w3.b, w3.c, staging_size)?;
                dev_range_ok(w3.a, w3.c)?;
                Command::CopyD2H {
                    src: w3.a,
                    staging_offset: w3.b,
                    len: w3.c,
                }
            }
            Opcode::CopyD2D => {
                dev_range_ok(w3.a, w3.c)?;
                dev_range_ok(w3.b, w3.c)?;
                Command::CopyD2D {
                    dst: w3.a,
                    src: w3.b,
                    len: w3.c,
                }
            }
            Opcode::Launch => {
                let l = LaunchBody::read_from_prefix(&sqe.body[..])
                    .map_err(|_| Status::Internal)?
                    .0;
                if l.params_len as usize > MAX_INLINE_PARAMS {
                    return Err(Status::InvalidArgument);
                }
                // Three u32 dimensions multiply to at most 2^96: in u128 the product cannot wrap
                // (in u64, [2^31, 2^31, 4] wrapped to 0 and passed; found by `cargo xtask fuzz`).
                let threads: u128 = l.block.iter().map(|&d| d as u128).product();
                if l.grid.iter().any(|&d| d == 0 || d > MAX_GRID_DIM)
                    || l.block.contains(&0)
                    || threads > MAX_BLOCK_THREADS as u128
                {
                    return Err(Status::InvalidArgument);
                }
                Command::Launch(l)
            }
            Opcode::ModuleLoad => {
                if w3.b == 0 {
                    return Err(Status::InvalidArgument);
                }
                staging_ok(w3.a, w3.b, staging_size)?;
                Command::ModuleLoad {
                    staging_offset: w3.a,
                    len: w3.b,
                }
            }
            Opcode::ModuleUnload => Command::ModuleUnload { module: w3.a },
            Opcode::GetFunction => {
                if w3.c == 0 || w3.c > MAX_FUNC_NAME {
                    return Err(Status::InvalidArgument);
                }
                staging_ok(w3.b, w3.c, staging_size)?;
                Command::GetFunction {
                    module: w3.a,
                    staging_offset: w3.b,
                    name_len: w3.c,
                }
            }
            Opcode::FuncParamInfo => {
                let p = ParamInfoBody::read_from_prefix(&sqe.body[..])
                    .map_err(|_| Status::Internal)?
                    .0;
                if p._pad != 0 {
                    return Err(Status::InvalidArgument);
                }
                Command::FuncParamInfo {
                    func: p.func,
                    index: p.index,
                }
            }
            Opcode::EventRecord => Command::EventRecord {
                event: one_event()?,
            },
            Opcode::StreamWaitEvent => Command::StreamWaitEvent {
                event: one_event()?,
            },
            Opcode::EventSynchronize => Command::EventSynchronize {
                event: one_event()?,
            },
            Opcode::EventElapsed => Command::EventElapsed {
                start: event_ok(ev.event)?,
                end: event_ok(ev.end_event)?,
            },
            Opcode::Synchronize => Command::Synchronize {
                all_streams: sqe.flags & SYNC_ALL_STREAMS != 0,
            },
        })
    }

    /// Encodes this command into a submission entry.
    pub fn encode(&self, stream: u32, tag: u64) -> Sqe {
        let mut sqe = Sqe {
            opcode: self.opcode() as u16,
            stream,
            tag,
            ..Sqe::default()
        };
        let w = |a, b, c| Words3 { a, b, c };
        match self {
            Command::Nop | Command::GetInfo => {}
            Command::MemAlloc { size } => sqe.body[..8].copy_from_slice(&size.to_le_bytes()),
            Command::MemFree { ptr } => sqe.body[..8].copy_from_slice(&ptr.to_le_bytes()),
            Command::Memset {
                dst,
                len,
                value,
                width,
            } => {
                let m = MemsetBody {
                    dst: *dst,
                    len: *len,
                    value: *value,
                    width: *width,
                };
                sqe.body[..24].copy_from_slice(m.as_bytes());
            }
            Command::CopyH2D {
                dst: a,
                staging_offset: b,
                len: c,
            }
            | Command::CopyD2H {
                src: a,
                staging_offset: b,
                len: c,
            }
            | Command::CopyD2D {
                dst: a,
                src: b,
                len: c,
            } => sqe.body[..24].copy_from_slice(w(*a, *b, *c).as_bytes()),
            Command::Launch(l) => sqe.body.copy_from_slice(l.as_bytes()),
            Command::ModuleLoad {
                staging_offset,
                len,
            } => sqe.body[..24].copy_from_slice(w(*staging_offset, *len, 0).as_bytes()),
            Command::ModuleUnload { module } => {
                sqe.body[..8].copy_from_slice(&module.to_le_bytes())
            }
            Command::GetFunction {
                module,
                staging_offset,
                name_len,
            } => sqe.body[..24].copy_from_slice(w(*module, *staging_offset, *name_len).as_bytes()),
            Command::FuncParamInfo { func, index } => {
                let p = ParamInfoBody {
                    func: *func,
                    index: *index,
                    _pad: 0,
                };
                sqe.body[..16].copy_from_slice(p.as_bytes());
            }
            Command::EventRecord { event }
            | Command::StreamWaitEvent { event }
            | Command::EventSynchronize { event } => {
                let e = EventBody {
                    event: *event,
                    end_event: 0,
                };
                sqe.body[..8].copy_from_slice(e.as_bytes());
            }
            Command::EventElapsed { start, end } => {
                let e = EventBody {
                    event: *start,
                    end_event: *end,
                };
                sqe.body[..8].copy_from_slice(e.as_bytes());
            }
            Command::Synchronize { all_streams } => {
                if *all_streams {
                    sqe.flags |= SYNC_ALL_STREAMS;
                }
            }
        }
        sqe
    }
}

/// Function handles of built-in kernels have this bit set.
pub const BUILTIN_FUNC_FLAG: u64 = 1 << 63;

/// Built-in kernels, present on every backend with the same names and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Builtin {
    /// `c[i] = a[i] + b[i]` for `i < n` (f32). Params: [`VectorAddParams`].
    VectorAddF32 = 1,
    /// `y[i] = alpha * x[i] + y[i]` (f32). Params: [`SaxpyParams`].
    Saxpy = 2,
    /// `C = alpha * A·B + beta * C`, row-major f32, A m×k, B k×n, C m×n. Params: [`SgemmParams`].
    Sgemm = 3,
    /// `out[0] = sum(x[0..n])` (f32). Params: [`ReduceParams`].
    ReduceSumF32 = 4,
    /// Occupies the device for `duration_us` microseconds. Params: [`BusyParams`].
    Busy = 5,
    /// Writes through an illegal address: faults and breaks the VM's context. No params.
    Fault = 6,
}

impl Builtin {
    /// All built-ins.
    pub const ALL: [Builtin; 6] = [
        Builtin::VectorAddF32,
        Builtin::Saxpy,
        Builtin::Sgemm,
        Builtin::ReduceSumF32,
        Builtin::Busy,
        Builtin::Fault,
    ];

    /// The function handle to put in [`LaunchBody::func`].
    pub const fn handle(self) -> u64 {
        BUILTIN_FUNC_FLAG | self as u64
    }

    /// Decodes a function handle naming a built-in.
    pub fn from_handle(h: u64) -> Option<Self> {
        if h & BUILTIN_FUNC_FLAG == 0 {
            return None;
        }
        Self::ALL.into_iter().find(|b| b.handle() == h)
    }

    /// The kernel's name (the same on every backend).
    pub fn name(self) -> &'static str {
        match self {
            Builtin::VectorAddF32 => "vector_add_f32",
            Builtin::Saxpy => "saxpy",
            Builtin::Sgemm => "sgemm",
            Builtin::ReduceSumF32 => "reduce_sum_f32",
            Builtin::Busy => "busy",
            Builtin::Fault => "fault",
        }
    }

    /// `(offset, size)` of each kernel parameter in the packed parameters (what
    /// [`Opcode::FuncParamInfo`] reports for a built-in; the CUDA kernels take exactly these).
    pub fn param_layout(self) -> &'static [(u32, u32)] {
        match self {
            Builtin::VectorAddF32 => &[(0, 8), (8, 8), (16, 8), (24, 4)],
            Builtin::Saxpy => &[(0, 8), (8, 8), (16, 4), (20, 4)],
            Builtin::Sgemm => &[
                (0, 8),
                (8, 8),
                (16, 8),
                (24, 4),
                (28, 4),
                (32, 4),
                (36, 4),
                (40, 4),
            ],
            Builtin::ReduceSumF32 => &[(0, 8), (8, 8), (16, 4)],
            Builtin::Busy => &[(0, 4)],
            Builtin::Fault => &[],
        }
    }

    /// Exact parameter bytes the kernel takes.
    pub fn params_len(self) -> usize {
        match self {
            Builtin::VectorAddF32 => core::mem::size_of::<VectorAddParams>(),
            Builtin::Saxpy => core::mem::size_of::<SaxpyParams>(),
            Builtin::Sgemm => core::mem::size_of::<SgemmParams>(),
            Builtin::ReduceSumF32 => core::mem::size_of::<ReduceParams>(),
            Builtin::Busy => core::mem::size_of::<BusyParams>(),
            Builtin::Fault => 0,
        }
    }
}

/// Parameters of [`Builtin::VectorAddF32`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VectorAddParams {
    /// Input a.
    pub a: u64,
    /// Input b.
    pub b: u64,
    /// Output c.
    pub c: u64,
    /// Elements.
    pub n: u32,
    /// Zero.
    pub _pad: u32,
}

/// Parameters of [`Builtin::Saxpy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SaxpyParams {
    /// Input x.
    pub x: u64,
    /// In/out y.
    pub y: u64,
    /// Elements.
    pub n: u32,
    /// Scale.
    pub alpha: f32,
}

/// Parameters of [`Builtin::Sgemm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SgemmParams {
    /// A (m×k).
    pub a: u64,
    /// B (k×n).
    pub b: u64,
    /// C (m×n), in/out.
    pub c: u64,
    /// Rows of A and C.
    pub m: u32,
    /// Columns of B and C.
    pub n: u32,
    /// Columns of A, rows of B.
    pub k: u32,
    /// Scale of A·B.
    pub alpha: f32,
    /// Scale of C.
    pub beta: f32,
    /// Zero.
    pub _pad: u32,
}

/// Parameters of [`Builtin::ReduceSumF32`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReduceParams {
    /// Input.
    pub x: u64,
    /// Output (one f32).
    pub out: u64,
    /// Elements.
    pub n: u32,
    /// Zero.
    pub _pad: u32,
}

/// Parameters of [`Builtin::Busy`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BusyParams {
    /// Microseconds.
    pub duration_us: u32,
    /// Zero.
    pub _pad: u32,
}

impl LaunchBody {
    /// A launch of the built-in `busy` kernel (one thread) that keeps the device busy for
    /// `duration_us`.
    pub fn busy(duration_us: u32) -> Self {
        let p = BusyParams {
            duration_us,
            _pad: 0,
        };
        Self::new(Builtin::Busy.handle(), [1; 3], [1; 3], p.as_bytes())
            .expect("busy parameters fit a launch")
    }

    /// A launch of `func` with the given packed parameters.
    pub fn new(func: u64, grid: [u32; 3], block: [u32; 3], params: &[u8]) -> Option<Self> {
        if params.len() > MAX_INLINE_PARAMS {
            return None;
        }
        let mut p = [0u8; MAX_INLINE_PARAMS];
        p[..params.len()].copy_from_slice(params);
        Some(Self {
            func,
            grid,
            block,
            shared_mem: 0,
            params_len: params.len() as u32,
            params: p,
        })
    }

    /// The parameter bytes in use.
    pub fn params(&self) -> &[u8] {
        &self.params[..(self.params_len as usize).min(MAX_INLINE_PARAMS)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};
    use proptest::prelude::*;

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
        assert_eq!(size_of::<EventBody>(), 8);
        assert_eq!(offset_of!(EventBody, end_event), 4);
        assert_eq!(size_of::<ParamInfoBody>(), 16);
        assert_eq!(offset_of!(ParamInfoBody, index), 8);
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
        for raw in 0..=u16::MAX {
            if let Some(op) = Opcode::from_raw(raw) {
                assert_eq!(op as u16, raw);
            }
        }
        for raw in 0..=16 {
            assert_eq!(Status::from_raw(raw).unwrap() as u32, raw);
        }
        assert_eq!(Status::from_raw(17), None);
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
        s = Command::Launch(l).encode(0, 1);
        assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
        l.params_len = 8;
        l.block = [1024, 2, 1];
        s = Command::Launch(l).encode(0, 1);
        assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
        // 2^31 · 2^31 · 4 = 2^64: a u64 product wraps to 0 (found by the cmd_decode fuzzer).
        l.block = [1 << 31, 1 << 31, 4];
        s = Command::Launch(l).encode(0, 1);
        assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
        s = Command::Nop.encode(0, 1);
        s.flags = 4;
        assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
        // modules: empty PTX, PTX or names outside staging, names too long or empty
        s = Command::ModuleLoad {
            staging_offset: 0,
            len: 0,
        }
        .encode(0, 1);
        assert_eq!(Command::decode(&s, 4096), Err(Status::InvalidArgument));
        s = Command::ModuleLoad {
            staging_offset: 4000,
            len: 97,
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
                .prop_map(|(f, g, b, p)| Command::Launch(LaunchBody::new(f, g, b, &p).unwrap())),
            any::<bool>().prop_map(|all_streams| Command::Synchronize { all_streams }),
            (0u64..1 << 20, 1u64..1 << 20).prop_map(|(staging_offset, len)| {
                Command::ModuleLoad {
                    staging_offset,
                    len,
                }
            }),
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
                    Command::Launch(l) => {
                        prop_assert!(l.params().len() <= MAX_INLINE_PARAMS);
                        prop_assert!(l.block.iter().map(|&b| b as u128).product::<u128>() <= MAX_BLOCK_THREADS as u128);
                    }
                    Command::Memset { len, width, .. } => prop_assert_eq!(len % width as u64, 0),
                    Command::ModuleLoad { staging_offset, len } => {
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
}
