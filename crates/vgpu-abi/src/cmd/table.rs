//! The command set: one declaration per command (the syntax is in `declare.rs`). Adding a
//! command is a declaration here, the guest's call, and each backend's handler method.

use super::check;
use super::class::{Class, DeviceRanges, Direction, Effect};
use super::entry::Sqe;
use super::launch::LaunchBody;
use super::status::Status;
use super::{MODULE_BINARY, MODULE_CONT, MODULE_MORE, SYNC_ALL_STREAMS};
use crate::tensormap;

commands! {
    /// Does nothing; completes with `Ok`. The channel's round-trip probe.
    Nop = 0x00 => fn nop {}
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::Ping;

    /// `result0` = device memory in use by this VM, `result1` = its quota.
    GetInfo = 0x01 => fn get_info {}
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::Info;

    /// Allocates device memory. `result0` = the device pointer.
    MemAlloc = 0x10 => fn mem_alloc {
        /// Bytes (> 0).
        size: u64,
    }
        flags {} check(_s) { check::nonzero(size)?; } ranges []
        class Class::HOST;
        effect Effect::Alloc { size };

    /// Frees an allocation (the pointer `MemAlloc` returned). Waits for the VM's work on the
    /// device first.
    MemFree = 0x11 => fn mem_free {
        /// The allocation's pointer.
        ptr: u64,
    }
        flags {} check(_s) {} ranges []
        class Class { waits_for_device: true, ..Class::HOST };
        effect Effect::Free { ptr };

    /// Fills device memory with a 1- or 4-byte value.
    Memset = 0x12 => fn memset {
        /// Destination.
        dst: u64,
        /// Bytes (a multiple of `width`).
        len: u64,
        /// Fill value (its low `width` bytes).
        value: u32,
        /// 1 or 4.
        width: u32,
    }
        flags {}
        check(_s) { check::memset_width(len, width)?; check::device(dst, len)?; }
        ranges [(dst, len)]
        class Class::STREAM_WORK;
        effect Effect::Work;

    /// Staging → device. `result0` = bytes moved.
    CopyH2D = 0x13 => fn copy_h2d {
        /// Destination device pointer.
        dst: u64,
        /// Offset in staging.
        staging_offset: u64,
        /// Bytes.
        len: u64,
    }
        flags {}
        check(s) { check::staging(staging_offset, len, s)?; check::device(dst, len)?; }
        ranges [(dst, len)]
        class Class::STREAM_WORK;
        effect Effect::Transfer { len, dir: Direction::In };

    /// Device → staging. `result0` = bytes moved.
    CopyD2H = 0x14 => fn copy_d2h {
        /// Source device pointer.
        src: u64,
        /// Offset in staging.
        staging_offset: u64,
        /// Bytes.
        len: u64,
    }
        flags {}
        check(s) { check::staging(staging_offset, len, s)?; check::device(src, len)?; }
        ranges [(src, len)]
        class Class::STREAM_WORK;
        effect Effect::Transfer { len, dir: Direction::Out };

    /// Device → device. `result0` = bytes moved.
    CopyD2D = 0x15 => fn copy_d2d {
        /// Destination.
        dst: u64,
        /// Source.
        src: u64,
        /// Bytes.
        len: u64,
    }
        flags {}
        check(_s) { check::device(dst, len)?; check::device(src, len)?; }
        ranges [(dst, len), (src, len)]
        class Class::STREAM_WORK;
        effect Effect::Transfer { len, dir: Direction::Device };

    /// Loads a module from staging: PTX text, or (with the binary flag) a cubin or fatbin
    /// image as the CUDA toolkit makes it. `result0` = the module handle. An image larger than
    /// staging arrives in parts (1.5): every part but the last has the `more` flag (vgpud
    /// keeps its bytes, `result0` = 0), every part but the first the `cont` flag; the last
    /// part loads the whole image. An entry without `cont` starts a new image (what an
    /// unfinished one gathered is dropped).
    ModuleLoad = 0x20 => fn module_load {
        /// Offset of the image in staging.
        staging_offset: u64,
        /// Bytes of the image (> 0).
        len: u64,
    }
        flags {
            /// A cubin or fatbin image (taken as is), not PTX text (1.4).
            binary = MODULE_BINARY,
            /// More of the image follows (1.5).
            more = MODULE_MORE,
            /// Continues the image of the VM's previous module load (1.5).
            cont = MODULE_CONT,
        }
        check(s) { check::nonzero(len)?; check::staging(staging_offset, len, s)?; }
        ranges []
        class Class::HOST;
        effect Effect::LoadModule { len, more, cont };

    /// Unloads a module (its functions become invalid). Waits for the VM's work on the
    /// device first.
    ModuleUnload = 0x21 => fn module_unload {
        /// Module handle.
        module: u64,
    }
        flags {} check(_s) {} ranges []
        class Class { waits_for_device: true, ..Class::HOST };
        effect Effect::UnloadModule { module };

    /// Looks a kernel up by name. `result0` = the function handle, `result1` = its number
    /// of parameters.
    GetFunction = 0x22 => fn get_function {
        /// Module handle.
        module: u64,
        /// Offset of the name in staging.
        staging_offset: u64,
        /// Bytes of the name (1..=[`check::MAX_FUNC_NAME`]).
        name_len: u64,
    }
        flags {}
        check(s) { check::name_len(name_len)?; check::staging(staging_offset, name_len, s)?; }
        ranges []
        class Class::HOST;
        effect Effect::LookupFunction { module };

    /// Looks a module's global variable (`__device__` or `__constant__`) up by name (1.5).
    /// `result0` = its device address, `result1` = its size in bytes. The VM may copy to and
    /// from it until the module is unloaded.
    ModuleGetGlobal = 0x28 => fn module_get_global {
        /// Module handle.
        module: u64,
        /// Offset of the name in staging.
        staging_offset: u64,
        /// Bytes of the name (1..=[`check::MAX_FUNC_NAME`]).
        name_len: u64,
    }
        flags {}
        check(s) { check::name_len(name_len)?; check::staging(staging_offset, name_len, s)?; }
        ranges []
        class Class::HOST;
        effect Effect::LookupGlobal { module };

    /// Launches a kernel on the entry's stream.
    Launch = 0x23 => fn launch {
        /// The kernel, its shape and its packed parameters.
        launch: LaunchBody,
    }
        flags {} check(_s) { check::launch(&launch)?; } ranges []
        class Class::STREAM_WORK;
        effect Effect::Launch(launch);

    /// Launches a kernel whose packed parameters are in staging (1.4): for parameters larger
    /// than a launch entry holds, up to [`check::MAX_KERNEL_PARAMS`] bytes. vgpud reads them
    /// when it issues the launch; the guest may reuse the bytes once the launch completed.
    LaunchIndirect = 0x25 => fn launch_indirect {
        /// Function handle (a module's function; built-ins take [`Opcode::Launch`]).
        func: u64,
        /// Offset of the packed parameters in staging.
        staging_offset: u64,
        /// Bytes of packed parameters.
        params_len: u32,
        /// Dynamic shared memory in bytes.
        shared_mem: u32,
        /// Grid x.
        grid_x: u32,
        /// Grid y.
        grid_y: u32,
        /// Grid z.
        grid_z: u32,
        /// Block x.
        block_x: u32,
        /// Block y.
        block_y: u32,
        /// Block z.
        block_z: u32,
        /// Thread block cluster x (1.6; all three 0: no cluster).
        cluster_x: u32,
        /// Cluster y.
        cluster_y: u32,
        /// Cluster z.
        cluster_z: u32,
    }
        flags {}
        check(s) {
            check::kernel_params(params_len)?;
            check::staging(staging_offset, params_len as u64, s)?;
            check::dims([grid_x, grid_y, grid_z], [block_x, block_y, block_z])?;
            check::cluster([grid_x, grid_y, grid_z], [cluster_x, cluster_y, cluster_z])?;
        }
        ranges []
        class Class::STREAM_WORK;
        effect Effect::LaunchFunction { func };

    /// Where a kernel parameter goes in the packed parameters. `result0` = its offset,
    /// `result1` = its size in bytes.
    FuncParamInfo = 0x24 => fn func_param_info {
        /// Function handle.
        func: u64,
        /// Parameter index.
        index: u32,
    }
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::ParamInfo { func, index };

    /// A function attribute (`CUfunction_attribute`, 1.4). `result0` = its value (an `i32`).
    FuncGetAttribute = 0x26 => fn func_get_attribute {
        /// Function handle.
        func: u64,
        /// The attribute's number.
        attribute: u32,
    }
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::FunctionQuery { func };

    /// Sets a function attribute (`CUfunction_attribute`, the settable ones: the dynamic
    /// shared memory limit, the shared memory carveout, …; 1.4).
    FuncSetAttribute = 0x27 => fn func_set_attribute {
        /// Function handle.
        func: u64,
        /// The attribute's number.
        attribute: u32,
        /// Its new value.
        value: u32,
    }
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::FunctionQuery { func };

    /// Records `event` on the entry's stream: it completes once everything issued earlier on
    /// the stream has.
    EventRecord = 0x30 => fn event_record {
        /// Event id (< [`check::MAX_EVENTS`]).
        event: u32,
    }
        flags {} check(_s) { check::event(event)?; } ranges []
        class Class::STREAM_WORK;
        effect Effect::RecordEvent { event };

    /// Makes the entry's stream wait (on the device) for the event's latest record.
    StreamWaitEvent = 0x31 => fn stream_wait_event {
        /// Event id.
        event: u32,
    }
        flags {} check(_s) { check::event(event)?; } ranges []
        class Class { barrier: true, ..Class::STREAM_WORK };
        effect Effect::Work;

    /// Completes once the event's latest record has completed.
    EventSynchronize = 0x32 => fn event_synchronize {
        /// Event id.
        event: u32,
    }
        flags {} check(_s) { check::event(event)?; } ranges []
        class Class { stream: false, barrier: true, ..Class::STREAM_WORK };
        effect Effect::Work;

    /// Whether the event's latest record has completed, without waiting (`cuEventQuery`,
    /// 1.4): completes with `Ok` if so (or if it was never recorded), with `NOT_READY` if not.
    /// A record still queued behind other work of its stream is not seen: the guest knows
    /// which of its records vgpud has taken.
    EventQuery = 0x34 => fn event_query {
        /// Event id.
        event: u32,
    }
        flags {} check(_s) { check::event(event)?; } ranges []
        class Class::HOST;
        effect Effect::Work;

    /// Time between two completed records: `result0` = `end − start` in ns (an `i64`).
    EventElapsed = 0x33 => fn event_elapsed {
        /// Start event id.
        start: u32,
        /// End event id.
        end: u32,
    }
        flags {} check(_s) { check::event(start)?; check::event(end)?; } ranges []
        class Class { barrier: true, ..Class::HOST };
        effect Effect::Work;

    /// Completes once every earlier command of the entry's stream (or of all the VM's
    /// streams) has completed.
    Synchronize = 0x40 => fn synchronize {}
        flags {
            /// Every stream rather than the entry's own.
            all_streams = SYNC_ALL_STREAMS,
        }
        check(_s) {} ranges []
        class Class {
            stream: !all_streams,
            barrier: all_streams,
            control: true,
            asynchronous: true,
            waits_for_device: false,
        };
        effect Effect::Work;

    /// Whether every earlier command of the entry's stream has completed (`cuStreamQuery`):
    /// completes with `Ok` if so, with `NOT_READY` if not, without waiting for the stream.
    /// It is ordered after the stream's earlier commands are issued; on a device that does not
    /// order streams itself (cpu) that is after they retired, so it answers `Ok`.
    StreamQuery = 0x41 => fn stream_query {}
        flags {} check(_s) {} ranges []
        class Class { stream: true, ..Class::HOST };
        effect Effect::Work;

    /// Writes `value` (4 bytes, little-endian) into staging at `staging_offset` once every
    /// earlier command of the entry's stream has completed, without vgpud in between on a
    /// device that can (CUDA: the GPU writes it, `cuStreamWriteValue32`): a guest waiting for
    /// its stream watches the word and need not wait for a completion (1.6). A hint, never an
    /// error: when a command of the VM failed since its previous fence (a completion with an
    /// error status was posted, or the device refused work the guest has not seen refused
    /// yet), nothing is written, so the guest falls back to the completion of the
    /// synchronisation it issued next, which reports that error. Completes at once.
    Fence = 0x42 => fn fence {
        /// Offset in staging (a multiple of 4).
        staging_offset: u64,
        /// The value written.
        value: u32,
    }
        flags {}
        check(s) { check::fence(staging_offset, s)?; }
        ranges []
        class Class {
            stream: true,
            barrier: false,
            control: true,
            asynchronous: true,
            waits_for_device: false,
        };
        effect Effect::Fence;

    /// The granularity of virtual memory management (1.6): `result0` = the minimum,
    /// `result1` = the recommended granularity in bytes of device memory made by
    /// [`Opcode::MemCreate`] (sizes, reservations and mappings are multiples of the minimum).
    MemGranularity = 0x50 => fn mem_granularity {}
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::Work;

    /// Reserves a range of device addresses, with no memory behind it (1.6). `result0` = its
    /// start. The VM may map memory of its own into it ([`Opcode::MemMap`]).
    MemAddressReserve = 0x51 => fn mem_address_reserve {
        /// Bytes (> 0, a multiple of the minimum granularity).
        size: u64,
        /// Alignment of the start (0: the granularity; else a power of two).
        alignment: u64,
        /// A wished-for start (0: none); a hint the device may ignore.
        addr: u64,
    }
        flags {}
        check(_s) { check::nonzero(size)?; check::alignment(alignment)?; }
        ranges []
        class Class::HOST;
        effect Effect::Reserve { size };

    /// Frees a reservation (exactly as [`Opcode::MemAddressReserve`] answered it; nothing may
    /// be mapped in it any more) (1.6).
    MemAddressFree = 0x52 => fn mem_address_free {
        /// The reservation's start.
        ptr: u64,
        /// Its size.
        size: u64,
    }
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::Unreserve { ptr, size };

    /// Creates device memory without an address (`cuMemCreate`, pinned on the VM's device;
    /// 1.6). `result0` = its handle. It counts against the VM's quota and allocation limit
    /// until it is released and unmapped.
    MemCreate = 0x53 => fn mem_create {
        /// Bytes (> 0, a multiple of the minimum granularity).
        size: u64,
    }
        flags {} check(_s) { check::nonzero(size)?; } ranges []
        class Class::HOST;
        effect Effect::CreateMemory { size };

    /// Releases a handle of [`Opcode::MemCreate`] (1.6): the memory is freed once no range
    /// maps it any more. Waits for the VM's work on the device first.
    MemRelease = 0x54 => fn mem_release {
        /// The handle.
        handle: u64,
    }
        flags {} check(_s) {} ranges []
        class Class { waits_for_device: true, ..Class::HOST };
        effect Effect::ReleaseMemory { handle };

    /// Maps `size` bytes of a handle's memory from `offset` at `[ptr, ptr + size)`, inside
    /// one reservation of the VM and over no other mapping (1.6). The range becomes usable
    /// once [`Opcode::MemSetAccess`] allowed it.
    MemMap = 0x55 => fn mem_map {
        /// Start (a multiple of the minimum granularity).
        ptr: u64,
        /// Bytes (a multiple of the minimum granularity).
        size: u64,
        /// Offset in the handle's memory (CUDA: 0).
        offset: u64,
        /// The handle.
        handle: u64,
    }
        flags {}
        check(_s) { check::nonzero(size)?; check::device(ptr, size)?; }
        ranges []
        class Class::HOST;
        effect Effect::Map { ptr, size, offset, handle };

    /// Unmaps `[ptr, ptr + size)`: exactly one or more whole, adjacent mappings (1.6). Waits
    /// for the VM's work on the device first.
    MemUnmap = 0x56 => fn mem_unmap {
        /// Start of the first mapping.
        ptr: u64,
        /// Bytes up to the end of the last.
        size: u64,
    }
        flags {} check(_s) { check::device(ptr, size)?; } ranges []
        class Class { waits_for_device: true, ..Class::HOST };
        effect Effect::Unmap { ptr, size };

    /// Lets the VM's device read and write `[ptr, ptr + size)`: exactly one or more whole,
    /// adjacent mappings (1.6). Copies, memsets and launches may then name the range.
    MemSetAccess = 0x57 => fn mem_set_access {
        /// Start of the first mapping.
        ptr: u64,
        /// Bytes up to the end of the last.
        size: u64,
        /// `CUmemAccess_flags`: 3, read and write (the only value accepted).
        prot: u32,
    }
        flags {}
        check(_s) { check::device(ptr, size)?; check::prot(prot)?; }
        ranges []
        class Class::HOST;
        effect Effect::SetAccess { ptr, size };

    /// Encodes a tensor map (1.7): `cuTensorMapEncodeTiled` or `cuTensorMapEncodeIm2col` in
    /// the VM's context. The request ([`tensormap::TensorMapRequest`]) is at `staging_offset`;
    /// the encoded [`tensormap::TENSOR_MAP_BYTES`] go to `staging_offset +`
    /// [`tensormap::MAP_OFFSET`]. The tensor's address is not checked (as NVIDIA's driver does
    /// not): a map is an address a kernel of the VM's context may use, as any pointer it is
    /// given.
    TensorMapEncode = 0x58 => fn tensor_map_encode {
        /// Offset of the request in staging ([`tensormap::STAGING_BYTES`] used).
        staging_offset: u64,
    }
        flags {}
        check(s) { check::staging(staging_offset, tensormap::STAGING_BYTES, s)?; }
        ranges []
        class Class::HOST;
        effect Effect::Work;

    /// Starts capturing the entry's stream into a graph (1.7): the stream's later work is
    /// recorded, not run, until [`Opcode::StreamEndCapture`] on it. A stream that waits for an
    /// event recorded in the capture ([`Opcode::StreamWaitEvent`]) joins it. Ordered after the
    /// stream's earlier work was issued; that work still runs. A stream already capturing:
    /// `INVALID_ARGUMENT`.
    StreamBeginCapture = 0x60 => fn stream_begin_capture {}
        flags {} check(_s) {} ranges []
        class Class { stream: true, ..Class::HOST };
        effect Effect::Work;

    /// Ends the capture the entry's stream began (1.7). `result0` = the graph handle,
    /// `result1` = its number of nodes (on the cpu device, of recorded commands). A
    /// capture that was invalidated (work it could not record, a synchronisation of a
    /// capturing stream) completes with `CAPTURE_INVALIDATED` and leaves no graph; a stream
    /// that began no capture, `INVALID_ARGUMENT`. Every stream that joined the capture stops
    /// capturing.
    StreamEndCapture = 0x61 => fn stream_end_capture {}
        flags {} check(_s) {} ranges []
        class Class { stream: true, ..Class::HOST };
        effect Effect::EndCapture;

    /// Makes an executable graph of one of the VM's graphs (1.7). `result0` = its handle.
    GraphInstantiate = 0x62 => fn graph_instantiate {
        /// The graph ([`Opcode::StreamEndCapture`]'s handle).
        graph: u64,
    }
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::Instantiate { graph };

    /// Runs an executable graph on the entry's stream (1.7): its work, in its order, after
    /// the stream's earlier work; the stream's later work waits for it. On a capturing
    /// stream the launch is recorded.
    GraphLaunch = 0x63 => fn graph_launch {
        /// The executable graph ([`Opcode::GraphInstantiate`]'s handle).
        exec: u64,
    }
        flags {} check(_s) {} ranges []
        class Class::STREAM_WORK;
        effect Effect::LaunchGraph { exec };

    /// Destroys an executable graph (1.7). Waits for the VM's work on the device first (a
    /// launch of it may still run).
    GraphExecDestroy = 0x64 => fn graph_exec_destroy {
        /// The executable graph.
        exec: u64,
    }
        flags {} check(_s) {} ranges []
        class Class { waits_for_device: true, ..Class::HOST };
        effect Effect::DestroyExec { exec };

    /// Destroys a graph (1.7); its executable graphs stay usable.
    GraphDestroy = 0x65 => fn graph_destroy {
        /// The graph.
        graph: u64,
    }
        flags {} check(_s) {} ranges []
        class Class::HOST;
        effect Effect::DestroyGraph { graph };
}
