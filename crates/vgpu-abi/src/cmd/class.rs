//! What the host needs to know about a command beyond its fields: how it is ordered and
//! scheduled ([`Class`]) and what it does to the VM's resources ([`Effect`]). Each command
//! declares both (see `table.rs`); nothing else classifies commands.

use super::launch::LaunchBody;

/// How a command is ordered, scheduled and answered. Every field must be stated for every
/// command, so a new command cannot silently fall into a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Runs on its entry's stream, after the stream's earlier commands (and a new stream id
    /// counts against the VM's stream limit).
    pub stream: bool,
    /// On a device that does not order streams itself, waits until every earlier command of
    /// the VM, on every stream, has retired (it names work another stream may have issued).
    pub barrier: bool,
    /// Uses no execution units (vgpud's bookkeeping, or an answer the device gives at once):
    /// the scheduler runs it while the device is full and charges it as control work.
    pub control: bool,
    /// Issued without waiting: it completes when the backend reports its work retired
    /// (otherwise the backend's answer is its result).
    pub asynchronous: bool,
    /// The backend's answer waits for the VM's work on the device (CUDA's `cuMemFree` and
    /// `cuModuleUnload` synchronise), so vgpud holds it until that work retired.
    pub waits_for_device: bool,
}

impl Class {
    /// Answered from vgpud's bookkeeping or by one call that returns at once.
    pub const HOST: Class = Class {
        stream: false,
        barrier: false,
        control: true,
        asynchronous: false,
        waits_for_device: false,
    };
    /// Work on the entry's stream that occupies the device (copies, memsets, kernels).
    pub const STREAM_WORK: Class = Class {
        stream: true,
        barrier: false,
        control: false,
        asynchronous: true,
        waits_for_device: false,
    };
}

/// Which way a transfer moves bytes (for the VM's byte counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest → device.
    In,
    /// Device → guest.
    Out,
    /// Device → device.
    Device,
}

/// What a command does to the resources vgpud accounts per VM, beyond its device ranges
/// ([`super::Command::device_ranges`]). The VM's device admits and accounts commands by
/// their effect, never by their opcode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Answered by the VM's device itself, even when its context is broken.
    Ping,
    /// The VM's memory in use and its quota, answered by the VM's device.
    Info,
    /// Allocates `size` bytes of device memory (quota, allocation limit); the result is the
    /// new pointer.
    Alloc {
        /// Bytes.
        size: u64,
    },
    /// Frees the allocation at `ptr` (one of this VM's).
    Free {
        /// The pointer the allocation returned.
        ptr: u64,
    },
    /// Loads a module image of `len` bytes (module limits); the result is its handle. An
    /// image may come in parts; the last one loads it.
    LoadModule {
        /// Bytes of the image (of this part).
        len: u64,
        /// More of the image follows.
        more: bool,
        /// Continues the image of the previous load.
        cont: bool,
    },
    /// Unloads one of the VM's modules; its functions become invalid.
    UnloadModule {
        /// Module handle.
        module: u64,
    },
    /// Looks a function up in one of the VM's modules; the result is its handle.
    LookupFunction {
        /// Module handle.
        module: u64,
    },
    /// Looks a global variable up in one of the VM's modules; the result is its address and
    /// size, a range the VM may then copy to and from.
    LookupGlobal {
        /// Module handle.
        module: u64,
    },
    /// Where a parameter of a built-in or of one of the VM's functions goes.
    ParamInfo {
        /// Function handle.
        func: u64,
        /// Parameter index.
        index: u32,
    },
    /// Launches a built-in or one of the VM's functions.
    Launch(LaunchBody),
    /// Reads or sets an attribute of one of the VM's functions (not a built-in).
    FunctionQuery {
        /// The function.
        func: u64,
    },
    /// Launches one of the VM's functions (not a built-in) with parameters from staging.
    LaunchFunction {
        /// The function.
        func: u64,
    },
    /// Records an event (event limit).
    RecordEvent {
        /// Event id.
        event: u32,
    },
    /// Moves `len` bytes; completes with `len` in `result0`.
    Transfer {
        /// Bytes.
        len: u64,
        /// Which way.
        dir: Direction,
    },
    /// Writes a fence word into the VM's staging once its stream's earlier work is done (a
    /// hint: skipped, with a plain completion, when a command of the VM failed since its
    /// previous fence, so that the guest waits for the completion that reports it).
    Fence,
    /// Reserves `size` bytes of device addresses (reservation limits); the result is the
    /// range's start (1.6).
    Reserve {
        /// Bytes.
        size: u64,
    },
    /// Frees one of the VM's reservations, with nothing mapped in it (1.6).
    Unreserve {
        /// Its start.
        ptr: u64,
        /// Its size.
        size: u64,
    },
    /// Creates `size` bytes of device memory without an address (quota, allocation limit);
    /// the result is its handle (1.6).
    CreateMemory {
        /// Bytes.
        size: u64,
    },
    /// Releases one of the VM's memory handles; its memory is freed once unmapped (1.6).
    ReleaseMemory {
        /// The handle.
        handle: u64,
    },
    /// Maps one of the VM's handles inside one of its reservations, over no other mapping
    /// (1.6).
    Map {
        /// Start.
        ptr: u64,
        /// Bytes.
        size: u64,
        /// Offset in the handle's memory.
        offset: u64,
        /// The handle.
        handle: u64,
    },
    /// Unmaps whole, adjacent mappings of the VM covering exactly the range (1.6).
    Unmap {
        /// Start.
        ptr: u64,
        /// Bytes.
        size: u64,
    },
    /// Makes whole, adjacent mappings of the VM covering exactly the range usable by its
    /// commands (1.6).
    SetAccess {
        /// Start.
        ptr: u64,
        /// Bytes.
        size: u64,
    },
    /// Ends a stream capture; the result is a new graph of the VM's (graph limit, 1.7).
    EndCapture,
    /// Makes an executable graph of one of the VM's graphs; the result is its handle (1.7).
    Instantiate {
        /// The graph.
        graph: u64,
    },
    /// Launches one of the VM's executable graphs (1.7).
    LaunchGraph {
        /// The executable graph.
        exec: u64,
    },
    /// Destroys one of the VM's executable graphs (1.7).
    DestroyExec {
        /// The executable graph.
        exec: u64,
    },
    /// Destroys one of the VM's graphs (1.7).
    DestroyGraph {
        /// The graph.
        graph: u64,
    },
    /// Other work on the VM's context: nothing to account beyond its ranges.
    Work,
}

/// The device ranges a command touches: at most [`DeviceRanges::MAX`] `(pointer, length)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceRanges {
    ranges: [(u64, u64); DeviceRanges::MAX],
    len: usize,
}

impl DeviceRanges {
    /// Most ranges one command declares.
    pub const MAX: usize = 2;

    /// The ranges a declaration names (at most [`DeviceRanges::MAX`]: a declaration naming
    /// more is a bug the command tests catch).
    pub fn new(ranges: &[(u64, u64)]) -> Self {
        assert!(
            ranges.len() <= Self::MAX,
            "a command declares too many ranges"
        );
        let mut r = Self::default();
        r.ranges[..ranges.len()].copy_from_slice(ranges);
        r.len = ranges.len();
        r
    }

    /// The ranges.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges[..self.len].iter().copied()
    }
}
