//! The library as programs load it, against a real vgpud (cpu backend) this test starts.
//!
//! Each half that calls the libraries runs in a child process of this test binary (the loader
//! reads `LD_LIBRARY_PATH` when a process starts; `VGPU_SOCKET` is read when the device is
//! opened), as `cudarc_client.rs` of vgpu-cuda does:
//! - [`own_connection_child`] loads `libvgpunvml.so` by its file name with no vgpu
//!   `libcuda.so.1` to be found, so the library attaches to the socket itself: identity, memory
//!   and error codes, and that the last `nvmlShutdown` lets the socket go;
//! - [`shared_connection_child`] loads `libnvidia-ml.so.1` and `libcuda.so.1` by name from a
//!   directory of links to the built libraries, as PyTorch does (NVML first, then CUDA): one
//!   connection for both, the memory in use rising with an allocation through CUDA and falling
//!   with its free, this process listed on the device, utilisation after work.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vgpu_mediator::testkit::{ConfigBuilder, VmEntry};

/// Set in a child's environment: the halves that call the libraries run only there.
const CHILD_ENV: &str = "VGPU_NVML_CHILD";
/// The VM's quota: what NVML must report as the device's total memory.
const QUOTA: u64 = 256 << 20;
/// The VM's name (its vGPU UUID derives from it).
const VM: &str = "vm-nvml";

// NVML return codes (nvml.h).
const SUCCESS: u32 = 0;
const UNINITIALIZED: u32 = 1;
const INVALID_ARGUMENT: u32 = 2;
const NOT_SUPPORTED: u32 = 3;
const NOT_FOUND: u32 = 6;
const INSUFFICIENT_SIZE: u32 = 7;
const ARGUMENT_VERSION_MISMATCH: u32 = 25;

type Dev = *mut c_void;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MemoryV2 {
    version: u32,
    total: u64,
    reserved: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: u32,
    bus: u32,
    device: u32,
    pci_device_id: u32,
    pci_sub_system_id: u32,
    bus_id: [c_char; 32],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct ProcessInfo {
    pid: u32,
    used_gpu_memory: u64,
    gpu_instance_id: u32,
    compute_instance_id: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Utilization {
    gpu: u32,
    memory: u32,
}

/// A library opened with dlopen, never closed.
struct Lib(*mut c_void);

impl Lib {
    fn open(name: &str) -> Lib {
        let c = CString::new(name).unwrap();
        // SAFETY: a NUL-terminated name.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "dlopen {name}: {}", dlerror());
        Lib(h)
    }

    fn has(&self, name: &str) -> bool {
        let c = CString::new(name).unwrap();
        // SAFETY: a live handle and a NUL-terminated name.
        !unsafe { libc::dlsym(self.0, c.as_ptr()) }.is_null()
    }

    /// The function `name`, as `F`.
    ///
    /// # Safety
    /// `F` is the function's real type (an `unsafe extern "C" fn`).
    unsafe fn f<F: Copy>(&self, name: &str) -> F {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        let c = CString::new(name).unwrap();
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        assert!(!p.is_null(), "dlsym {name}: {}", dlerror());
        // SAFETY: a function pointer of the caller's type `F` (pointer-sized, checked).
        unsafe { std::mem::transmute_copy(&p) }
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL and NUL-terminated.
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

/// The NVML entry points the children call.
struct Nvml {
    init: unsafe extern "C" fn() -> u32,
    init_flags: unsafe extern "C" fn(c_uint) -> u32,
    shutdown: unsafe extern "C" fn() -> u32,
    count: unsafe extern "C" fn(*mut c_uint) -> u32,
    by_index: unsafe extern "C" fn(c_uint, *mut Dev) -> u32,
    by_uuid: unsafe extern "C" fn(*const c_char, *mut Dev) -> u32,
    by_bus_id: unsafe extern "C" fn(*const c_char, *mut Dev) -> u32,
    name: unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> u32,
    uuid: unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> u32,
    pci: unsafe extern "C" fn(Dev, *mut PciInfo) -> u32,
    memory: unsafe extern "C" fn(Dev, *mut Memory) -> u32,
    memory_v2: unsafe extern "C" fn(Dev, *mut MemoryV2) -> u32,
    util: unsafe extern "C" fn(Dev, *mut Utilization) -> u32,
    procs: unsafe extern "C" fn(Dev, *mut c_uint, *mut ProcessInfo) -> u32,
    cc: unsafe extern "C" fn(Dev, *mut c_int, *mut c_int) -> u32,
    cuda_version: unsafe extern "C" fn(*mut c_int) -> u32,
    error_string: unsafe extern "C" fn(u32) -> *const c_char,
}

impl Nvml {
    fn load(lib: &Lib) -> Nvml {
        // SAFETY: each type is the function's signature in nvml.h.
        unsafe {
            Nvml {
                init: lib.f("nvmlInit_v2"),
                init_flags: lib.f("nvmlInitWithFlags"),
                shutdown: lib.f("nvmlShutdown"),
                count: lib.f("nvmlDeviceGetCount_v2"),
                by_index: lib.f("nvmlDeviceGetHandleByIndex_v2"),
                by_uuid: lib.f("nvmlDeviceGetHandleByUUID"),
                by_bus_id: lib.f("nvmlDeviceGetHandleByPciBusId_v2"),
                name: lib.f("nvmlDeviceGetName"),
                uuid: lib.f("nvmlDeviceGetUUID"),
                pci: lib.f("nvmlDeviceGetPciInfo_v3"),
                memory: lib.f("nvmlDeviceGetMemoryInfo"),
                memory_v2: lib.f("nvmlDeviceGetMemoryInfo_v2"),
                util: lib.f("nvmlDeviceGetUtilizationRates"),
                procs: lib.f("nvmlDeviceGetComputeRunningProcesses_v3"),
                cc: lib.f("nvmlDeviceGetCudaComputeCapability"),
                cuda_version: lib.f("nvmlSystemGetCudaDriverVersion_v2"),
                error_string: lib.f("nvmlErrorString"),
            }
        }
    }

    fn handle(&self) -> Dev {
        let mut d: Dev = std::ptr::null_mut();
        // SAFETY: `d` is valid for a write.
        assert_eq!(unsafe { (self.by_index)(0, &mut d) }, SUCCESS);
        d
    }

    /// A string query into a buffer of `len` bytes.
    fn string(
        &self,
        f: unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> u32,
        d: Dev,
        len: u32,
    ) -> Result<String, u32> {
        let mut buf = vec![0 as c_char; len as usize];
        // SAFETY: `buf` holds `len` bytes.
        match unsafe { f(d, buf.as_mut_ptr(), len) } {
            // SAFETY: the library wrote a NUL-terminated string into `buf`.
            SUCCESS => Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned()),
            e => Err(e),
        }
    }

    fn memory(&self, d: Dev) -> Memory {
        let mut m = Memory::default();
        // SAFETY: `m` is valid for a write.
        assert_eq!(unsafe { (self.memory)(d, &mut m) }, SUCCESS);
        assert_eq!(m.free + m.used, m.total, "{m:?}");
        m
    }

    fn processes(&self, d: Dev) -> Vec<ProcessInfo> {
        let mut n: c_uint = 0;
        // SAFETY: `n` is valid; a NULL array with a count of 0 asks for the count.
        let r = unsafe { (self.procs)(d, &mut n, std::ptr::null_mut()) };
        if r == SUCCESS {
            assert_eq!(n, 0);
            return Vec::new();
        }
        assert_eq!(r, INSUFFICIENT_SIZE);
        let mut v = vec![ProcessInfo::default(); n as usize];
        // SAFETY: `v` holds `n` entries.
        assert_eq!(unsafe { (self.procs)(d, &mut n, v.as_mut_ptr()) }, SUCCESS);
        v.truncate(n as usize);
        v
    }
}

/// The UUID vgpud gives the VM's vGPU on the cpu reference device, as NVML writes it.
fn expected_uuid() -> String {
    let physical = vgpu_abi::info::vgpu_uuid(&[0; 16], "cpu reference device");
    let u = vgpu_abi::info::vgpu_uuid(&physical, VM);
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A built library next to the test binary (cargo builds both with this crate's tests).
fn built(name: &str) -> PathBuf {
    let lib = std::env::current_exe().unwrap().with_file_name(name);
    assert!(
        lib.exists(),
        "{} missing (cargo builds it with the crate's tests)",
        lib.display()
    );
    lib
}

/// vgpud next to the test binaries (build it first: `cargo build -p vgpu-mediator`), or
/// `VGPU_VGPUD`.
fn vgpud_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VGPU_VGPUD") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("vgpud");
    assert!(
        bin.exists(),
        "{} missing: cargo build -p vgpu-mediator, or set VGPU_VGPUD",
        bin.display()
    );
    bin
}

struct Vgpud(Child);

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts vgpud (cpu backend) with one VM of [`QUOTA`]; returns it and the VM's socket.
fn start_vgpud(dir: &Path) -> (Vgpud, PathBuf) {
    let sock = dir.join("vm.sock");
    let cfg = dir.join("vgpud.toml");
    ConfigBuilder::new()
        .backend("cpu")
        .vm(VmEntry::new(VM, &sock, 1)
            .mem_quota(QUOTA)
            .shm_size("16MiB"))
        .write(&cfg)
        .unwrap();
    let child = Command::new(vgpud_bin())
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vgpud.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "vgpud did not listen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (Vgpud(child), sock)
}

/// Runs child test `name` of this binary with `VGPU_SOCKET` and `LD_LIBRARY_PATH` set;
/// asserts that it passed.
fn run_child(name: &str, sock: &Path, libdir: &Path) {
    let mut path = libdir.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LD_LIBRARY_PATH", path)
        .env("VGPU_SOCKET", sock)
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{name} failed:\n{text}");
    assert!(text.contains("1 passed"), "{name} did not run:\n{text}");
}

#[test]
fn nvml_attaches_by_itself_where_no_vgpu_libcuda_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (_vgpud, sock) = start_vgpud(dir.path());
    let empty = dir.path().join("lib");
    std::fs::create_dir(&empty).unwrap();
    run_child("own_connection_child", &sock, &empty);
}

#[test]
fn nvml_and_libcuda_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_vgpud, sock) = start_vgpud(dir.path());
    let libdir = dir.path().join("lib");
    std::fs::create_dir(&libdir).unwrap();
    for (link, lib) in [
        ("libcuda.so.1", "libvgpucuda.so"),
        ("libnvidia-ml.so.1", "libvgpunvml.so"),
    ] {
        std::os::unix::fs::symlink(built(lib), libdir.join(link)).unwrap();
    }
    run_child("shared_connection_child", &sock, &libdir);
}

/// The client half of [`nvml_attaches_by_itself_where_no_vgpu_libcuda_is_found`].
#[test]
#[ignore = "run by nvml_attaches_by_itself_where_no_vgpu_libcuda_is_found"]
fn own_connection_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let lib = Lib::open(built("libvgpunvml.so").to_str().unwrap());
    let n = Nvml::load(&lib);
    // Every NVML 13 function is there; the unimplemented ones say so.
    let names = include_str!("../data/nvml-exports.txt");
    for name in names
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(lib.has(name), "{name} is not exported");
    }
    // SAFETY: the signatures are nvml.h's; every pointer passed is valid or deliberately NULL.
    unsafe {
        let mut c: c_uint = 7;
        // Before nvmlInit.
        assert_eq!((n.count)(&mut c), UNINITIALIZED);
        assert_eq!((n.shutdown)(), UNINITIALIZED);
        let mut v: c_int = 0;
        assert_eq!((n.cuda_version)(&mut v), SUCCESS, "works before nvmlInit");
        assert_eq!(v, 13000);
        assert_eq!(
            CStr::from_ptr((n.error_string)(NOT_SUPPORTED)),
            c"Not Supported"
        );

        assert_eq!((n.init)(), SUCCESS);
        assert_eq!((n.init)(), SUCCESS, "reference-counted");
        assert_eq!((n.count)(&mut c), SUCCESS);
        assert_eq!(c, 1);
        assert_eq!((n.count)(std::ptr::null_mut()), INVALID_ARGUMENT);
        let mut d: Dev = std::ptr::null_mut();
        assert_eq!((n.by_index)(1, &mut d), INVALID_ARGUMENT);
        assert_eq!((n.by_index)(0, std::ptr::null_mut()), INVALID_ARGUMENT);
        let d = n.handle();

        // Identity, from the device-info page vgpud wrote.
        assert_eq!(
            n.string(n.name, d, 96).unwrap(),
            "vgpu cpu reference device"
        );
        let uuid = n.string(n.uuid, d, 96).unwrap();
        assert_eq!(uuid, expected_uuid());
        assert_eq!(n.string(n.name, d, 5), Err(INSUFFICIENT_SIZE));
        assert_eq!(
            n.string(n.uuid, d, uuid.len() as u32),
            Err(INSUFFICIENT_SIZE),
            "no room for the NUL"
        );
        assert_eq!((n.name)(d, std::ptr::null_mut(), 96), INVALID_ARGUMENT);
        let bogus = 0x10usize as Dev;
        assert_eq!(n.string(n.name, bogus, 96), Err(INVALID_ARGUMENT));
        let mut found: Dev = std::ptr::null_mut();
        let cu = CString::new(uuid.to_uppercase()).unwrap();
        assert_eq!((n.by_uuid)(cu.as_ptr(), &mut found), SUCCESS);
        assert_eq!(found, d);
        assert_eq!(
            (n.by_uuid)(
                c"GPU-00000000-0000-0000-0000-000000000000".as_ptr(),
                &mut found
            ),
            NOT_FOUND
        );
        assert_eq!((n.by_uuid)(std::ptr::null(), &mut found), INVALID_ARGUMENT);
        let mut pci: PciInfo = std::mem::zeroed();
        assert_eq!((n.pci)(d, &mut pci), SUCCESS);
        let bus = CStr::from_ptr(pci.bus_id.as_ptr()).to_owned();
        assert_eq!((n.by_bus_id)(bus.as_ptr(), &mut found), SUCCESS, "{bus:?}");
        assert_eq!(
            (n.by_bus_id)(c"0000:ff:1f.0".as_ptr(), &mut found),
            NOT_FOUND
        );
        let (mut major, mut minor) = (0, 0);
        assert_eq!((n.cc)(d, &mut major, &mut minor), SUCCESS);
        assert_eq!(
            (major, minor),
            (9, 0),
            "the cpu device describes compute capability 9.0"
        );

        // Memory: the VM's quota, nothing in use yet.
        let m = n.memory(d);
        assert_eq!((m.total, m.used), (QUOTA, 0));
        let mut m2 = MemoryV2 {
            version: 0x0200_0028,
            ..Default::default()
        };
        assert_eq!((n.memory_v2)(d, &mut m2), SUCCESS);
        assert_eq!(
            (m2.total, m2.reserved, m2.free, m2.used),
            (QUOTA, 0, QUOTA, 0)
        );
        let mut m2 = MemoryV2 {
            version: 1,
            ..Default::default()
        };
        assert_eq!((n.memory_v2)(d, &mut m2), ARGUMENT_VERSION_MISMATCH);
        assert_eq!((n.memory)(d, std::ptr::null_mut()), INVALID_ARGUMENT);
        let mut u = Utilization {
            gpu: 77,
            memory: 77,
        };
        assert_eq!((n.util)(d, &mut u), SUCCESS);
        assert_eq!((u.gpu, u.memory), (0, 0), "nothing ran");
        assert!(n.processes(d).is_empty(), "no CUDA in this process");

        // No NVLink fabric: a v3 struct filled in as NVML describes a GPU outside one.
        let fabric: unsafe extern "C" fn(Dev, *mut [u32; 10]) -> u32 =
            lib.f("nvmlDeviceGetGpuFabricInfoV");
        let mut f = [0x5555_5555u32; 10];
        f[0] = 40 | 3 << 24;
        assert_eq!(fabric(d, &mut f), SUCCESS);
        assert_eq!(&f[1..5], &[0; 4], "no cluster");
        assert_eq!(f[5], NOT_SUPPORTED, "status");
        assert_eq!(f[7] & 0xff, 0, "state NVML_GPU_FABRIC_STATE_NOT_SUPPORTED");
        f[0] = 7;
        assert_eq!(fabric(d, &mut f), ARGUMENT_VERSION_MISMATCH);

        // Unimplemented: NOT_SUPPORTED.
        let temp: unsafe extern "C" fn(Dev, c_uint, *mut c_uint) -> u32 =
            lib.f("nvmlDeviceGetTemperature");
        let mut t = 0;
        assert_eq!(temp(d, 0, &mut t), NOT_SUPPORTED);

        assert_eq!((n.shutdown)(), SUCCESS);
        assert_eq!((n.count)(&mut c), SUCCESS, "one init is still open");
        assert_eq!((n.shutdown)(), SUCCESS);
        assert_eq!((n.count)(&mut c), UNINITIALIZED);
        assert_eq!(n.string(n.name, d, 96), Err(UNINITIALIZED));
        assert_eq!((n.shutdown)(), UNINITIALIZED);
    }
    // The last shutdown closed the connection: another client may attach now.
    let sock = std::env::var_os("VGPU_SOCKET").unwrap();
    let dev = vgpu_guest::Device::connect(Path::new(&sock)).expect("the socket was let go");
    drop(dev);
    // SAFETY: as above.
    unsafe {
        assert_eq!((n.init_flags)(1), SUCCESS);
        let mut c: c_uint = 0;
        assert_eq!((n.count)(&mut c), SUCCESS);
        assert_eq!(c, 1, "attached again");
        assert_eq!((n.shutdown)(), SUCCESS);
    }
}

type CuResult = c_int;

/// The client half of [`nvml_and_libcuda_share_one_connection`].
#[test]
#[ignore = "run by nvml_and_libcuda_share_one_connection"]
fn shared_connection_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // PyTorch's order: NVML first (device count without initialising CUDA), then CUDA.
    let nvml_lib = Lib::open("libnvidia-ml.so.1");
    let n = Nvml::load(&nvml_lib);
    // SAFETY: the signatures are nvml.h's and cuda.h's; every pointer passed is valid.
    unsafe {
        assert_eq!((n.init)(), SUCCESS);
        let mut c: c_uint = 0;
        assert_eq!((n.count)(&mut c), SUCCESS);
        assert_eq!(c, 1);
        let d = n.handle();
        assert_eq!(n.memory(d).used, 0);
        assert!(n.processes(d).is_empty(), "CUDA is not initialised yet");

        let cuda = Lib::open("libcuda.so.1");
        let cu_init: unsafe extern "C" fn(c_uint) -> CuResult = cuda.f("cuInit");
        let retain: unsafe extern "C" fn(*mut *mut c_void, c_int) -> CuResult =
            cuda.f("cuDevicePrimaryCtxRetain");
        let set_current: unsafe extern "C" fn(*mut c_void) -> CuResult = cuda.f("cuCtxSetCurrent");
        let alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult = cuda.f("cuMemAlloc_v2");
        let free: unsafe extern "C" fn(u64) -> CuResult = cuda.f("cuMemFree_v2");
        let memset: unsafe extern "C" fn(u64, u8, usize) -> CuResult = cuda.f("cuMemsetD8_v2");
        let sync: unsafe extern "C" fn() -> CuResult = cuda.f("cuCtxSynchronize");
        let get_uuid: unsafe extern "C" fn(*mut [u8; 16], c_int) -> CuResult =
            cuda.f("cuDeviceGetUuid_v2");
        let get_bus: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult =
            cuda.f("cuDeviceGetPCIBusId");

        // One connection: had NVML attached on its own, vgpud would refuse libcuda's.
        assert_eq!(cu_init(0), 0, "cuInit after nvmlInit");
        let mut ctx = std::ptr::null_mut();
        assert_eq!(retain(&mut ctx, 0), 0);
        assert_eq!(set_current(ctx), 0);

        // NVML and CUDA name the same device.
        let mut u = [0u8; 16];
        assert_eq!(get_uuid(&mut u, 0), 0);
        let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            n.string(n.uuid, d, 96).unwrap().replace('-', ""),
            format!("GPU{hex}")
        );
        let mut bus = [0 as c_char; 32];
        assert_eq!(get_bus(bus.as_mut_ptr(), 32, 0), 0);
        let mut found: Dev = std::ptr::null_mut();
        assert_eq!(
            (n.by_bus_id)(bus.as_ptr(), &mut found),
            SUCCESS,
            "PyTorch looks the device up by CUDA's bus id"
        );
        assert_eq!(found, d);

        // Memory in use follows CUDA's allocations at once (vgpud publishes it before the
        // allocation's completion).
        let size = 64usize << 20;
        let mut p = 0u64;
        assert_eq!(alloc(&mut p, size), 0);
        let m = n.memory(d);
        assert_eq!((m.total, m.used), (QUOTA, size as u64));
        let procs = n.processes(d);
        assert_eq!(procs.len(), 1, "{procs:?}");
        assert_eq!(procs[0].pid, std::process::id());
        assert_eq!(procs[0].used_gpu_memory, size as u64);
        assert_eq!(
            (procs[0].gpu_instance_id, procs[0].compute_instance_id),
            (u32::MAX, u32::MAX)
        );

        // Utilisation: device time over vgpud's half-second windows.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(1300) {
            assert_eq!(memset(p, 7, size), 0);
            assert_eq!(sync(), 0);
        }
        let mut util = Utilization::default();
        assert_eq!((n.util)(d, &mut util), SUCCESS);
        println!("utilisation after 1.3 s of memsets: {util:?}");
        assert!(util.gpu > 0 && util.gpu <= 100, "{util:?}");
        // Idle: the next windows read 0 (vgpud wakes to publish them).
        let t = Instant::now();
        loop {
            assert_eq!((n.util)(d, &mut util), SUCCESS);
            if util.gpu == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "utilisation stuck at {util:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        assert_eq!(free(p), 0);
        assert_eq!(n.memory(d).used, 0);
        assert_eq!((n.shutdown)(), SUCCESS);
    }
}
