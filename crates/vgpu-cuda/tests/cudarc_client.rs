//! A driver-API client in Rust, cudarc with dynamic loading, on this library as a program finds
//! it: cudarc opens `libcuda.so` by name (dlopen), so a directory holding `libcuda.so` and
//! `libcuda.so.1` links to target/<profile>/libvgpucuda.so goes first on `LD_LIBRARY_PATH`.
//! The loader reads that variable when a process starts, so the test runs its client half
//! ([`cudarc_child`], ignored on its own) in a child process of this test binary started with
//! it and `VGPU_SOCKET` set, against a vgpud (cpu backend) this half starts.

mod common;

use std::path::PathBuf;
use std::process::Command;

use cudarc::driver::sys::{self, CUdevice_attribute};
use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig};
use cudarc::nvrtc::Ptx;

/// Set in the child's environment: the client half runs only there.
const CHILD_ENV: &str = "VGPU_CUDARC_CHILD";

/// The library as cargo built it for this test: next to the test binary in deps/ (cargo
/// copies it up to target/<profile> only for `cargo build`, so that copy may be stale).
fn guest_driver() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let lib = exe.with_file_name("libvgpucuda.so");
    assert!(
        lib.exists(),
        "{} missing (cargo builds it with the crate's tests)",
        lib.display()
    );
    lib
}

#[test]
fn cudarc_loads_the_guest_driver_by_name() {
    let lib = guest_driver();
    let dir = tempfile::tempdir().unwrap();
    let (_vgpud, sock) = common::start_vgpud(dir.path());
    let libdir = dir.path().join("lib");
    std::fs::create_dir(&libdir).unwrap();
    for name in ["libcuda.so", "libcuda.so.1"] {
        std::os::unix::fs::symlink(&lib, libdir.join(name)).unwrap();
    }
    let mut path = libdir.into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "cudarc_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LD_LIBRARY_PATH", path)
        .env("VGPU_SOCKET", &sock)
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the client failed:\n{text}");
    assert!(
        text.contains("cudarc loaded ") && text.contains("1 passed"),
        "the client did not run:\n{text}"
    );
}

/// The files this process has mapped.
fn mapped_files() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let mut v: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    v.dedup();
    v
}

/// Kernels built by nvcc 13.0 for sm_90 (vgpu-cubin's fixture): `k_pointers` uses 12
/// registers; `k_bounded` (`_Z9k_boundedPi`) 10, `__launch_bounds__(128)` and a 1 KiB tile.
const KERNELS: &[u8] = include_bytes!("../../vgpu-cubin/tests/fixtures/kernels.sm90.cubin");

extern "C" fn no_dynamic_shared(_block_size: std::ffi::c_int) -> usize {
    0
}

/// `cuOccupancyMaxActiveClusters` of `f` for blocks of 256 threads in clusters of `x` blocks.
fn active_clusters(f: &CudaFunction, stream: sys::CUstream, x: u32) -> (sys::CUresult, i32) {
    // SAFETY: all-zero bytes are a valid launch attribute (id 0, "ignore", and its value).
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x, y: 1, z: 1 };
    let cfg = sys::CUlaunchConfig {
        gridDimX: 64 * x,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: 256,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    let mut n = -1;
    // SAFETY: a valid out-pointer, a live function and a configuration whose one attribute is
    // initialised.
    let rc = unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &cfg) };
    (rc, n)
}

#[test]
#[ignore = "the client half of cudarc_loads_the_guest_driver_by_name, which runs it"]
fn cudarc_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        // `--include-ignored` without the parent: nothing sets up the library path.
        println!("cudarc_child: runs only as cudarc_loads_the_guest_driver_by_name's child");
        return;
    }
    let ctx = CudaContext::new(0).expect("context");
    // cudarc opened this library (the links resolve to it), not NVIDIA's driver
    // (libcuda.so.<version>).
    let files = mapped_files();
    let name = |p: &PathBuf| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let ours = files
        .iter()
        .find(|p| name(p) == "libvgpucuda.so")
        .expect("libvgpucuda.so is not mapped");
    assert!(
        !files.iter().any(|p| name(p).starts_with("libcuda.so")),
        "another libcuda is mapped: {files:?}"
    );
    println!("cudarc loaded {}", ours.display());
    assert!(ctx.name().unwrap().starts_with("vgpu cpu reference device"));
    assert_eq!(
        ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .unwrap(),
        9
    );

    // Data round trips on the default stream and on a stream of its own.
    let stream = ctx.default_stream();
    let host: Vec<u32> = (0..10_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let mut dev = stream.clone_htod(&host).unwrap();
    assert_eq!(stream.clone_dtoh(&dev).unwrap(), host);
    stream.memset_zeros(&mut dev).unwrap();
    assert!(stream.clone_dtoh(&dev).unwrap().iter().all(|&v| v == 0));
    let mut zeros = stream.alloc_zeros::<u8>(4096).unwrap();
    assert_eq!(stream.clone_dtoh(&zeros).unwrap(), vec![0u8; 4096]);
    let bytes: Vec<u8> = (0..4096).map(|i| (i * 7) as u8).collect();
    stream.memcpy_htod(&bytes, &mut zeros).unwrap();
    let other = ctx.new_stream().unwrap();
    let copy = other.clone_dtod(&zeros).unwrap();
    assert_eq!(other.clone_dtoh(&copy).unwrap(), bytes);
    other.synchronize().unwrap();
    stream.synchronize().unwrap();

    // Occupancy, computed by the guest driver from the kernels' attributes (the cpu device
    // describes an sm_90 GPU with the configured number of multiprocessors).
    let sms = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .unwrap() as u32;
    let module = ctx.load_module(Ptx::from_binary(KERNELS.to_vec())).unwrap();
    let k = module.load_function("k_pointers").unwrap();
    // 128 threads = 4 warps of the 64 slots: 16 blocks (12 registers per thread, 512 per
    // warp, leave room for 128 warps).
    assert_eq!(
        k.occupancy_max_active_blocks_per_multiprocessor(128, 0, None)
            .unwrap(),
        16
    );
    assert_eq!(
        k.occupancy_max_active_blocks_per_multiprocessor(1024, 0, None)
            .unwrap(),
        2
    );
    // 48 KiB of dynamic shared memory + 1 KiB reserved per block: 4 in 228 KiB; 1 byte more
    // is over the kernel's default 48 KiB limit.
    assert_eq!(
        k.occupancy_max_active_blocks_per_multiprocessor(128, 48 << 10, None)
            .unwrap(),
        4
    );
    assert_eq!(
        k.occupancy_max_active_blocks_per_multiprocessor(128, (48 << 10) + 1, None)
            .unwrap(),
        0
    );
    // 1024 threads × 2 blocks fill a multiprocessor.
    assert_eq!(
        k.occupancy_max_potential_block_size(no_dynamic_shared, 0, 0, None)
            .unwrap(),
        (2 * sms, 1024)
    );
    assert_eq!(
        k.occupancy_available_dynamic_smem_per_block(1, 128)
            .unwrap(),
        48 << 10
    );
    let cfg = LaunchConfig {
        grid_dim: (sms, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // Without a cluster attribute it is no cluster launch: 0, as NVIDIA's driver answers.
    assert_eq!(k.occupancy_max_active_clusters(cfg, &stream).unwrap(), 0);
    assert_eq!(
        k.occupancy_max_potential_cluster_size(cfg, &stream)
            .unwrap(),
        8
    );
    // Through the raw entry points: a cluster dimension attribute, clusters larger than the
    // portable 8 blocks, unknown flags. 8 blocks of 256 threads per multiprocessor make 4
    // pairs.
    assert_eq!(
        active_clusters(&k, stream.cu_stream(), 2),
        (sys::CUresult::CUDA_SUCCESS, (4 * sms) as i32)
    );
    assert_eq!(
        active_clusters(&k, stream.cu_stream(), 16).0,
        sys::CUresult::CUDA_ERROR_INVALID_CLUSTER_SIZE
    );
    let mut n = -1;
    // SAFETY: a valid out-pointer and a live function.
    let rc = unsafe {
        sys::cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
            &mut n,
            k.cu_function(),
            128,
            0,
            2,
        )
    };
    assert_eq!(rc, sys::CUresult::CUDA_ERROR_INVALID_VALUE);
    // SAFETY: a valid out-pointer and a live function.
    let rc =
        unsafe { sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut n, k.cu_function(), 0, 0) };
    assert_eq!(rc, sys::CUresult::CUDA_ERROR_INVALID_VALUE);

    // Bounded to 128 threads: larger blocks fit nowhere, and 128 is the best size.
    let b = module.load_function("_Z9k_boundedPi").unwrap();
    assert_eq!(
        b.occupancy_max_active_blocks_per_multiprocessor(128, 0, None)
            .unwrap(),
        16
    );
    assert_eq!(
        b.occupancy_max_active_blocks_per_multiprocessor(256, 0, None)
            .unwrap(),
        0
    );
    assert_eq!(
        b.occupancy_max_potential_block_size(no_dynamic_shared, 0, 0, None)
            .unwrap(),
        (16 * sms, 128)
    );

    pools(stream.cu_stream());
}

/// Memory pools through the driver API: what the CUDA C++ program (`cuda/mempool.cu`, which
/// also runs on NVIDIA's driver) leaves out: double frees refused, a pool's own size limit,
/// access for the pool's device.
fn pools(s: sys::CUstream) {
    use std::ptr;
    let ok = sys::CUresult::CUDA_SUCCESS;
    let invalid = sys::CUresult::CUDA_ERROR_INVALID_VALUE;
    let mut p = 0;
    // SAFETY: every call below gets valid out-pointers, a live stream and pools this function
    // made; the zeroed structs are plain C data.
    unsafe {
        assert_eq!(sys::cuMemAllocAsync(&mut p, 4000, s), ok);
        assert_eq!(sys::cuMemFreeAsync(p, s), ok);
        // Freed to the pool already: a second free of either kind is refused, and the block
        // still serves the next allocation of its size.
        assert_eq!(sys::cuMemFreeAsync(p, s), invalid);
        assert_eq!(sys::cuMemFree_v2(p), invalid);
        let mut q = 0;
        assert_eq!(sys::cuMemAllocAsync(&mut q, 4000, s), ok);
        assert_eq!(q, p, "the block freed on this stream is used again");
        assert_eq!(sys::cuMemFree_v2(q), ok);
        assert_eq!(sys::cuMemFree_v2(q), invalid);
        assert_eq!(sys::cuMemFreeAsync(0, s), invalid);

        // A pool of at most 4 MiB: two 2 MiB blocks fit, a third does not until one is freed.
        let mut props: sys::CUmemPoolProps = std::mem::zeroed();
        props.allocType = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        props.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        props.location.id = 0;
        props.maxSize = 4 << 20;
        let mut pool = ptr::null_mut();
        assert_eq!(sys::cuMemPoolCreate(&mut pool, &props), ok);
        let (mut a, mut b, mut c) = (0, 0, 0);
        assert_eq!(sys::cuMemAllocFromPoolAsync(&mut a, 2 << 20, pool, s), ok);
        assert_eq!(sys::cuMemAllocFromPoolAsync(&mut b, 2 << 20, pool, s), ok);
        assert_eq!(
            sys::cuMemAllocFromPoolAsync(&mut c, 2 << 20, pool, s),
            sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
        );
        assert_eq!(sys::cuMemFreeAsync(a, s), ok);
        assert_eq!(sys::cuMemAllocFromPoolAsync(&mut c, 2 << 20, pool, s), ok);
        assert_eq!(c, a);
        // A block of another class needs the room of the free ones: none is free.
        let mut d = 0;
        assert_eq!(
            sys::cuMemAllocFromPoolAsync(&mut d, 1 << 20, pool, s),
            sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
        );

        // The pool's device has read-write access; other devices do not exist.
        let mut access: sys::CUmemAccessDesc = std::mem::zeroed();
        access.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        access.location.id = 0;
        access.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        assert_eq!(sys::cuMemPoolSetAccess(pool, &access, 1), ok);
        access.location.id = 1;
        assert_eq!(
            sys::cuMemPoolSetAccess(pool, &access, 1),
            sys::CUresult::CUDA_ERROR_INVALID_DEVICE
        );
        // Host memory pools are not offered.
        props.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST;
        let mut host_pool = ptr::null_mut();
        assert_eq!(
            sys::cuMemPoolCreate(&mut host_pool, &props),
            sys::CUresult::CUDA_ERROR_NOT_SUPPORTED
        );

        // Destroyed with blocks still allocated: they go back to vgpud when freed.
        assert_eq!(sys::cuMemPoolDestroy(pool), ok);
        assert_eq!(sys::cuMemFreeAsync(b, s), ok);
        assert_eq!(sys::cuMemFreeAsync(c, s), ok);
        assert_eq!(sys::cuMemPoolDestroy(pool), invalid);
        assert_eq!(sys::cuStreamSynchronize(s), ok);
    }
}
