//! PTX modules, functions with typed arguments, streams and events.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use vgpu_guest::compute::Launch;
//! let dev = vgpu_guest::Device::open_pci()?;
//! let module = dev.load_module(&std::fs::read_to_string("vector_add.ptx")?)?;
//! let f = module.function("vadd")?; // learns the parameter layout from vgpud
//! let (a, b, c) = (dev.alloc(4096)?, dev.alloc(4096)?, dev.alloc(4096)?);
//! let s = dev.create_stream();
//! let launch = Launch::new(&f).grid([4, 1, 1]).block([256, 1, 1])
//!     .arg_ptr(a).arg_ptr(b).arg_ptr(c).arg_u32(1024);
//! let queued = s.launch(&launch)?; // queued on the stream, in order
//! drop(queued);
//! s.synchronize()?;
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use vgpu_abi::cmd::{Command, LaunchBody, MAX_EVENTS, MAX_INLINE_PARAMS};
use vgpu_abi::{Builtin, Opcode, Status};

use crate::{Device, Error};

/// A loaded PTX module. Unloaded when dropped (or explicitly with [`Module::unload`]).
#[derive(Debug)]
pub struct Module<'d> {
    dev: &'d Device,
    handle: u64,
    loaded: bool,
}

/// A kernel and its parameter layout, as vgpud reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    handle: u64,
    name: String,
    /// `(offset, size)` of each parameter in the packed parameters.
    params: Vec<(u32, u32)>,
}

/// One kernel argument. Its size must equal the size of the parameter it fills.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// `unsigned char` / `signed char`.
    U8(u8),
    /// `unsigned short`.
    U16(u16),
    /// `unsigned int`.
    U32(u32),
    /// `int`.
    I32(i32),
    /// `unsigned long long`.
    U64(u64),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
    /// A device pointer.
    Ptr(u64),
    /// Raw bytes (a struct passed by value).
    Bytes(Vec<u8>),
}

impl Arg {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Arg::U8(v) => vec![*v],
            Arg::U16(v) => v.to_le_bytes().to_vec(),
            Arg::U32(v) => v.to_le_bytes().to_vec(),
            Arg::I32(v) => v.to_le_bytes().to_vec(),
            Arg::U64(v) | Arg::Ptr(v) => v.to_le_bytes().to_vec(),
            Arg::I64(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
            Arg::F64(v) => v.to_le_bytes().to_vec(),
            Arg::Bytes(b) => b.clone(),
        }
    }
}

/// A kernel launch being put together: function, geometry and typed arguments.
#[derive(Debug, Clone)]
pub struct Launch<'f> {
    func: &'f Function,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    args: Vec<Arg>,
}

impl<'f> Launch<'f> {
    /// A launch of `func` with a 1×1×1 grid and block and no arguments yet.
    pub fn new(func: &'f Function) -> Self {
        Self {
            func,
            grid: [1; 3],
            block: [1; 3],
            shared_mem: 0,
            args: Vec::new(),
        }
    }
    /// Grid dimensions.
    pub fn grid(mut self, g: [u32; 3]) -> Self {
        self.grid = g;
        self
    }
    /// Block dimensions.
    pub fn block(mut self, b: [u32; 3]) -> Self {
        self.block = b;
        self
    }
    /// Dynamic shared memory in bytes.
    pub fn shared_mem(mut self, bytes: u32) -> Self {
        self.shared_mem = bytes;
        self
    }
    /// The next argument.
    pub fn arg(mut self, a: Arg) -> Self {
        self.args.push(a);
        self
    }
    /// A device pointer argument.
    pub fn arg_ptr(self, p: u64) -> Self {
        self.arg(Arg::Ptr(p))
    }
    /// A `u8` argument.
    pub fn arg_u8(self, v: u8) -> Self {
        self.arg(Arg::U8(v))
    }
    /// A `u16` argument.
    pub fn arg_u16(self, v: u16) -> Self {
        self.arg(Arg::U16(v))
    }
    /// A `u32` argument.
    pub fn arg_u32(self, v: u32) -> Self {
        self.arg(Arg::U32(v))
    }
    /// An `i32` argument.
    pub fn arg_i32(self, v: i32) -> Self {
        self.arg(Arg::I32(v))
    }
    /// A `u64` argument.
    pub fn arg_u64(self, v: u64) -> Self {
        self.arg(Arg::U64(v))
    }
    /// An `f32` argument.
    pub fn arg_f32(self, v: f32) -> Self {
        self.arg(Arg::F32(v))
    }
    /// An `f64` argument.
    pub fn arg_f64(self, v: f64) -> Self {
        self.arg(Arg::F64(v))
    }

    /// Packs the arguments at the offsets vgpud reported into a launch entry body.
    pub fn pack(&self) -> Result<LaunchBody, Error> {
        let f = self.func;
        if self.args.len() != f.params.len() {
            return Err(Error::InvalidArgument(format!(
                "{} takes {} parameters, {} arguments given",
                f.name,
                f.params.len(),
                self.args.len()
            )));
        }
        let end = f.params_len();
        if end > MAX_INLINE_PARAMS {
            return Err(Error::InvalidArgument(format!(
                "{} takes {end} bytes of parameters, at most {MAX_INLINE_PARAMS} fit a launch",
                f.name
            )));
        }
        let mut buf = vec![0u8; end];
        for (i, (a, &(off, size))) in self.args.iter().zip(&f.params).enumerate() {
            let b = a.bytes();
            if b.len() != size as usize {
                return Err(Error::InvalidArgument(format!(
                    "parameter {i} of {} is {size} bytes, the argument {a:?} is {}",
                    f.name,
                    b.len()
                )));
            }
            buf[off as usize..off as usize + b.len()].copy_from_slice(&b);
        }
        let mut body = LaunchBody::new(f.handle, self.grid, self.block, &buf)
            .ok_or_else(|| Error::InvalidArgument("parameters too large".into()))?;
        body.shared_mem = self.shared_mem;
        Ok(body)
    }
}

impl Function {
    /// The function handle (for [`Device::launch`]).
    pub fn handle(&self) -> u64 {
        self.handle
    }
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `(offset, size)` of each parameter.
    pub fn params(&self) -> &[(u32, u32)] {
        &self.params
    }
    /// Bytes of packed parameters the kernel takes.
    pub fn params_len(&self) -> usize {
        self.params
            .iter()
            .map(|&(o, s)| (o + s) as usize)
            .max()
            .unwrap_or(0)
    }
}

impl Module<'_> {
    /// The module handle.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// Looks a kernel up by name and learns its parameter layout from vgpud.
    pub fn function(&self, name: &str) -> Result<Function, Error> {
        let module = self.handle;
        let c = self.dev.with_staging(name.as_bytes(), |off| {
            self.dev.exec_on(
                Command::GetFunction {
                    module,
                    staging_offset: off,
                    name_len: name.len() as u64,
                },
                0,
            )
        })?;
        self.dev.function_layout(c.result0, name, c.result1 as u32)
    }

    /// Unloads the module (its functions become invalid).
    pub fn unload(mut self) -> Result<(), Error> {
        self.loaded = false;
        self.dev
            .exec_on(
                Command::ModuleUnload {
                    module: self.handle,
                },
                0,
            )
            .map(drop)
    }
}

impl Drop for Module<'_> {
    fn drop(&mut self) {
        if self.loaded {
            let _ = self.dev.exec_on(
                Command::ModuleUnload {
                    module: self.handle,
                },
                0,
            );
        }
    }
}

/// A stream: commands submitted on it run in submission order; other streams may overlap.
#[derive(Debug, Clone, Copy)]
pub struct Stream<'d> {
    dev: &'d Device,
    id: u32,
}

/// A command submitted without waiting. [`Pending::wait`] waits for its completion; dropping
/// it stops waiting (the command still runs).
#[derive(Debug)]
#[must_use = "wait for the command, or drop it to ignore its completion"]
pub struct Pending<'d> {
    dev: &'d Device,
    tag: u64,
    op: Opcode,
    done: bool,
}

impl Pending<'_> {
    /// The completion if it has arrived, without waiting: `Ok(None)` while the command
    /// runs. Once it returned the completion (or its error), later calls answer `Ok(None)`.
    pub fn try_wait(&mut self) -> Result<Option<vgpu_abi::Cqe>, Error> {
        if self.done {
            return Ok(None);
        }
        match self.dev.try_take_tag(self.tag, self.op) {
            None => Ok(None),
            Some(r) => {
                self.done = true;
                r.map(Some)
            }
        }
    }

    /// Whether the completion was taken ([`Pending::wait`] or [`Pending::try_wait`]).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Waits for the completion; an error status becomes an error.
    pub fn wait(mut self) -> Result<vgpu_abi::Cqe, Error> {
        if self.done {
            return Err(Error::InvalidArgument(
                "the completion was already taken by try_wait".into(),
            ));
        }
        self.done = true;
        self.dev.wait_tag(self.tag, self.op)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.dev.forget_tag(self.tag);
        }
    }
}

impl<'d> Stream<'d> {
    /// The stream id carried by every entry submitted on it.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn submit(&self, cmd: Command) -> Result<Pending<'d>, Error> {
        let op = cmd.opcode();
        let tag = self.dev.start_on(cmd, self.id)?;
        Ok(Pending {
            dev: self.dev,
            tag,
            op,
            done: false,
        })
    }

    /// Queues a launch of a PTX function (or a built-in looked up with
    /// [`Device::builtin_function`]).
    pub fn launch(&self, l: &Launch<'_>) -> Result<Pending<'d>, Error> {
        self.submit(Command::Launch { launch: l.pack()? })
    }

    /// Queues a launch of an already packed body.
    pub fn launch_body(&self, body: LaunchBody) -> Result<Pending<'d>, Error> {
        self.submit(Command::Launch { launch: body })
    }

    /// Queues a copy of staging bytes `[staging_offset, staging_offset + len)` to the device
    /// (host memory the caller keeps in staging, see [`Device::spare_staging`]): vgpud moves
    /// them when the copy runs, in stream order.
    pub fn copy_htod_staged(
        &self,
        dst: u64,
        staging_offset: u64,
        len: u64,
    ) -> Result<Pending<'d>, Error> {
        self.submit(Command::CopyH2D {
            dst,
            staging_offset,
            len,
        })
    }

    /// Queues a copy from the device into staging bytes `[staging_offset, staging_offset +
    /// len)`, in stream order.
    pub fn copy_dtoh_staged(
        &self,
        src: u64,
        staging_offset: u64,
        len: u64,
    ) -> Result<Pending<'d>, Error> {
        self.submit(Command::CopyD2H {
            src,
            staging_offset,
            len,
        })
    }

    /// Queues a launch of `func` whose packed parameters are staging bytes
    /// `[staging_offset, staging_offset + params_len)` (see [`Device::spare_staging`]); they
    /// must stay unchanged until the launch completed. `cluster`: the thread block cluster
    /// shape (`[0; 3]`: none; a device of ABI 1.6 or later).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_indirect(
        &self,
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        cluster: [u32; 3],
        staging_offset: u64,
        params_len: u32,
    ) -> Result<Pending<'d>, Error> {
        self.submit(Command::LaunchIndirect {
            func,
            staging_offset,
            params_len,
            shared_mem,
            grid_x: grid[0],
            grid_y: grid[1],
            grid_z: grid[2],
            block_x: block[0],
            block_y: block[1],
            block_z: block[2],
            cluster_x: cluster[0],
            cluster_y: cluster[1],
            cluster_z: cluster[2],
        })
    }

    /// Queues filling `len` bytes at `dst` with `value`.
    pub fn memset_d8(&self, dst: u64, value: u8, len: u64) -> Result<Pending<'d>, Error> {
        self.submit(Command::Memset {
            dst,
            len,
            value: u32::from(value),
            width: 1,
        })
    }

    /// Queues filling `count` 32-bit words at `dst` with `value`.
    pub fn memset_d32(&self, dst: u64, value: u32, count: u64) -> Result<Pending<'d>, Error> {
        let len = count
            .checked_mul(4)
            .ok_or_else(|| Error::InvalidArgument(format!("memset of {count} words")))?;
        self.submit(Command::Memset {
            dst,
            len,
            value,
            width: 4,
        })
    }

    /// Queues a device-to-device copy.
    pub fn copy_dtod(&self, dst: u64, src: u64, len: u64) -> Result<Pending<'d>, Error> {
        self.submit(Command::CopyD2D { dst, src, len })
    }

    /// Queues a launch of executable graph `exec` (a device of ABI 1.7 or later, see
    /// [`Device::has_graphs`]).
    pub fn graph_launch(&self, exec: u64) -> Result<Pending<'d>, Error> {
        self.submit(Command::GraphLaunch { exec })
    }

    /// Queues a record of `e` after everything queued so far on this stream.
    pub fn record(&self, e: &Event<'_>) -> Result<Pending<'d>, Error> {
        self.submit(Command::EventRecord { event: e.id })
    }

    /// Makes later work of this stream wait (on the device) for `e`'s latest record.
    pub fn wait_event(&self, e: &Event<'_>) -> Result<Pending<'d>, Error> {
        self.submit(Command::StreamWaitEvent { event: e.id })
    }

    /// Whether everything submitted on this stream so far has completed, without waiting for
    /// it (`cuStreamQuery`).
    pub fn query(&self) -> Result<bool, Error> {
        match self.dev.exec_on(Command::StreamQuery, self.id) {
            Ok(_) => Ok(true),
            Err(Error::Command {
                status: Status::NotReady,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until everything submitted on this stream so far has completed.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.dev.synchronize_stream(self.id)
    }
}

/// An event (a guest-chosen id below [`MAX_EVENTS`]); its id goes back to the device's free
/// list when dropped.
#[derive(Debug)]
pub struct Event<'d> {
    dev: &'d Device,
    id: u32,
}

impl Event<'_> {
    /// The event id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether the event's latest record that vgpud took has completed, without waiting
    /// (`cuEventQuery`).
    pub fn query(&self) -> Result<bool, Error> {
        match self.dev.exec_on(Command::EventQuery { event: self.id }, 0) {
            Ok(_) => Ok(true),
            Err(Error::Command {
                status: Status::NotReady,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until the event's latest record has completed.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.dev
            .exec_on(Command::EventSynchronize { event: self.id }, 0)
            .map(drop)
    }

    /// Device time from `start`'s record to this event's record (both synchronised first).
    /// Negative spans (this one recorded earlier) are an error.
    pub fn elapsed_since(&self, start: &Event<'_>) -> Result<Duration, Error> {
        let ns = self.elapsed_ns_since(start)?;
        u64::try_from(ns)
            .map(Duration::from_nanos)
            .map_err(|_| Error::InvalidArgument(format!("event recorded {ns} ns before start")))
    }

    /// Signed nanoseconds from `start`'s record to this event's record.
    pub fn elapsed_ns_since(&self, start: &Event<'_>) -> Result<i64, Error> {
        start.synchronize()?;
        self.synchronize()?;
        let c = self.dev.exec_on(
            Command::EventElapsed {
                start: start.id,
                end: self.id,
            },
            0,
        )?;
        Ok(c.result0 as i64)
    }
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        self.dev.release_event(self.id);
    }
}

impl Device {
    /// Loads a PTX module (the text goes through staging).
    pub fn load_module(&self, ptx: &str) -> Result<Module<'_>, Error> {
        if ptx.is_empty() {
            return Err(Error::InvalidArgument("empty PTX".into()));
        }
        self.load_image_as(ptx.as_bytes(), false)
    }

    /// Loads a cubin or fatbin image, as the CUDA toolkit makes it, into a module.
    pub fn load_image(&self, image: &[u8]) -> Result<Module<'_>, Error> {
        if image.is_empty() {
            return Err(Error::InvalidArgument("empty image".into()));
        }
        self.load_image_as(image, true)
    }

    fn load_image_as(&self, image: &[u8], binary: bool) -> Result<Module<'_>, Error> {
        // An image larger than the payload area goes in parts (ABI 1.5): vgpud gathers them
        // and loads the image with the last one.
        if image.len() as u64 > self.payload_room() && self.info().abi_version & 0xffff < 5 {
            return Err(Error::InvalidArgument(format!(
                "a {}-byte image does not fit the {} bytes of staging for payloads and this vgpud (ABI {}) takes no images in parts",
                image.len(),
                self.payload_room(),
                self.info().abi_version_string(),
            )));
        }
        let c = self.with_staging_parts(image, |off, len, first, last| {
            self.exec_on(
                Command::ModuleLoad {
                    staging_offset: off,
                    len,
                    binary,
                    more: !last,
                    cont: !first,
                },
                0,
            )
        })?;
        let handle = c.result0;
        Ok(Module {
            dev: self,
            handle,
            loaded: true,
        })
    }

    /// Looks the global variable `name` of module `module` up: its device address and size.
    pub fn module_global(&self, module: u64, name: &str) -> Result<(u64, u64), Error> {
        let c = self.with_staging(name.as_bytes(), |off| {
            self.exec_on(
                Command::ModuleGetGlobal {
                    module,
                    staging_offset: off,
                    name_len: name.len() as u64,
                },
                0,
            )
        })?;
        Ok((c.result0, c.result1))
    }

    /// Unloads the module `handle` (for a caller that keeps its [`Module`] alive elsewhere, as
    /// a driver keeping handles does; the [`Module`] must then not be used or dropped).
    pub fn unload_module(&self, handle: u64) -> Result<(), Error> {
        self.exec_on(Command::ModuleUnload { module: handle }, 0)
            .map(drop)
    }

    /// A function attribute (`CUfunction_attribute` number) of a module's function.
    pub fn func_attribute(&self, func: u64, attribute: u32) -> Result<i32, Error> {
        let c = self.exec_on(Command::FuncGetAttribute { func, attribute }, 0)?;
        Ok(c.result0 as u32 as i32)
    }

    /// Sets a function attribute of a module's function.
    pub fn set_func_attribute(&self, func: u64, attribute: u32, value: i32) -> Result<(), Error> {
        self.exec_on(
            Command::FuncSetAttribute {
                func,
                attribute,
                value: value as u32,
            },
            0,
        )
        .map(drop)
    }

    /// A built-in kernel as a [`Function`], its layout asked from vgpud.
    pub fn builtin_function(&self, b: Builtin) -> Result<Function, Error> {
        self.function_layout(b.handle(), b.name(), b.param_layout().len() as u32)
    }

    /// Asks vgpud where each of `count` parameters of `handle` goes.
    fn function_layout(&self, handle: u64, name: &str, count: u32) -> Result<Function, Error> {
        let mut params = Vec::with_capacity(count as usize);
        for index in 0..count {
            let c = self.exec_on(
                Command::FuncParamInfo {
                    func: handle,
                    index,
                },
                0,
            )?;
            let (off, size) = (c.result0, c.result1);
            if off > u32::MAX as u64 || size > u32::MAX as u64 {
                return Err(Error::Protocol(format!(
                    "parameter {index} of {name}: offset {off}, size {size}"
                )));
            }
            params.push((off as u32, size as u32));
        }
        Ok(Function {
            handle,
            name: name.to_string(),
            params,
        })
    }

    /// A new stream (ids are handed out from 1; 0 is the default stream). vgpud accepts a
    /// bounded number of distinct stream ids per VM.
    pub fn create_stream(&self) -> Stream<'_> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        Stream { dev: self, id }
    }

    /// The stream with id `id` (0 = the default stream).
    pub fn stream(&self, id: u32) -> Stream<'_> {
        Stream { dev: self, id }
    }

    /// A new event (one of [`MAX_EVENTS`] ids).
    pub fn create_event(&self) -> Result<Event<'_>, Error> {
        let mut free = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let id = match free.pop() {
            Some(id) => id,
            None => {
                let next = self.next_event.fetch_add(1, Ordering::Relaxed);
                if next >= MAX_EVENTS {
                    self.next_event.store(MAX_EVENTS, Ordering::Relaxed);
                    return Err(Error::InvalidArgument(format!(
                        "all {MAX_EVENTS} event ids are in use"
                    )));
                }
                next
            }
        };
        Ok(Event { dev: self, id })
    }

    fn release_event(&self, id: u32) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
    }

    /// Launches a packed body on the default stream and waits.
    pub fn launch_body(&self, body: LaunchBody) -> Result<(), Error> {
        self.exec_on(Command::Launch { launch: body }, 0).map(drop)
    }

    /// Launches a PTX function (or built-in [`Function`]) on the default stream and waits.
    pub fn launch_function(&self, l: &Launch<'_>) -> Result<(), Error> {
        self.launch_body(l.pack()?)
    }
}
