"""CuPy: runtime and device queries, copies between host and device, memsets (`cupy.zeros`,
`fill(0)`), page-locked host memory and streams with events, the memory pool, an NVRTC-compiled module
loaded with its functions' attributes and a global (no launch), and with kernels:
elementwise operations and `ElementwiseKernel`, reductions and `ReductionKernel`, `RawKernel`
and `RawModule` (NVRTC), `cupy.matmul` (cuBLAS).

Run natively and through vgpu's libcuda.so.1; `result:` lines must be identical: integer
results exact, float results rounded to 5 significant digits (fwcheck.SIG).
"""
# framework-module: cupy

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from fwcheck import Checks, assert_close, assert_equal, checksum, int_checksum  # noqa: E402

import cupy as cp  # noqa: E402
import cupyx  # noqa: E402

c = Checks("cupy")


def device():
    rt = cp.cuda.runtime
    n = rt.getDeviceCount()
    if n < 1:
        raise AssertionError("no device")
    p = rt.getDeviceProperties(0)
    # CuPy's runtime is its own (13.2 for cupy-cuda13x 14.2); the driver's API is 13.0.
    c.result("device", f"runtime={rt.runtimeGetVersion()} driver={rt.driverGetVersion()}")
    c.result(
        "device",
        f"cc={p['major']}.{p['minor']} sms={p['multiProcessorCount']} warp={p['warpSize']} "
        f"max_threads={p['maxThreadsPerBlock']}",
    )
    name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
    free, total = rt.memGetInfo()
    c.info("device", f"devices={n} name={name!r} total={p['totalGlobalMem']} free={free}")
    if not 0 < free <= total:
        raise AssertionError(f"memGetInfo: free {free}, total {total}")
    if cp.cuda.Device(0).compute_capability != f"{p['major']}{p['minor']}":
        raise AssertionError("Device.compute_capability disagrees with the properties")


def copies():
    rng = np.random.default_rng(11)
    out = []
    for dt in (np.int8, np.int32, np.int64, np.float32, np.float64):
        a = (rng.standard_normal(50_000) * 1000).astype(dt)
        d = cp.asarray(a)
        assert_equal(cp.asnumpy(d), a, f"asarray/asnumpy {np.dtype(dt).name}")
        out.append(d)
    m = rng.standard_normal((256, 300)).astype(np.float32)
    dm = cp.asarray(m[:, ::3])  # NumPy makes it contiguous, CuPy copies it
    assert_equal(dm.get(), m[:, ::3], "a strided host view")
    # A device-to-device copy through the runtime's memcpy.
    a = out[2]
    b = cp.empty_like(a)
    b.data.copy_from_device(a.data, a.nbytes)
    assert_equal(b.get(), a.get(), "device to device")
    c.result("copies", f"{int_checksum(b.get())} {checksum(dm.get())}")


def memsets():
    z = cp.zeros((1000, 333), dtype=cp.float32)
    if cp.asnumpy(z).any():
        raise AssertionError("cupy.zeros is not zero")
    a = cp.asarray(np.arange(10_000, dtype=np.int32))
    a.fill(0)
    if cp.asnumpy(a).any():
        raise AssertionError("fill(0) left values")
    b = cp.asarray(np.ones(4096, dtype=np.uint8))
    b.data.memset_async(0x5A, 2048)
    want = np.ones(4096, dtype=np.uint8)
    want[:2048] = 0x5A
    assert_equal(cp.asnumpy(b), want, "MemoryPointer.memset_async")
    c.result("memsets", int_checksum(cp.asnumpy(b)))


def pinned_streams():
    n = 1 << 20
    h = cupyx.empty_pinned(n, dtype=np.uint32)
    h[:] = np.arange(n, dtype=np.uint32) * 2654435761
    back = cupyx.zeros_pinned(n, dtype=np.uint32)
    s = cp.cuda.Stream(non_blocking=True)
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    with s:
        e0.record()
        d = cp.empty(n, dtype=np.uint32)
        d.set(h, stream=s)
        d.get(stream=s, out=back)
        e1.record()
    e1.synchronize()
    s.synchronize()
    assert_equal(back, h, "copies on a stream through pinned memory")
    ms = cp.cuda.get_elapsed_time(e0, e1)
    if not ms >= 0:
        raise AssertionError(f"elapsed time {ms}")
    if not e1.done:
        raise AssertionError("a completed event is not done")
    c.info("pinned_streams", f"elapsed_ms={ms:.3f}")
    c.result("pinned_streams", int_checksum(back))


def memory_pool():
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.used_bytes()
    a = cp.empty(1 << 22, dtype=cp.uint8)
    if pool.used_bytes() - before < 1 << 22:
        raise AssertionError("the pool does not count the allocation")
    del a
    pool.free_all_blocks()
    if pool.total_bytes() > before + (1 << 20):
        raise AssertionError(f"the pool kept {pool.total_bytes()} bytes after free_all_blocks")
    c.result("memory_pool", "ok")


def elementwise():
    rng = np.random.default_rng(12)
    x, y, z = (rng.standard_normal(200_000).astype(np.float32) for _ in range(3))
    dx, dy, dz = cp.asarray(x), cp.asarray(y), cp.asarray(z)
    r1 = (dx * dy + dz).get()
    assert_close(r1, x.astype(np.float64) * y + z, rtol=1e-5, atol=1e-6, what="x*y+z")
    sq = cp.ElementwiseKernel("float32 a, float32 b", "float32 out", "out = (a - b) * (a - b)", "vgpu_sqdiff")
    r2 = sq(dx, dy).get()
    assert_close(r2, (x.astype(np.float64) - y) ** 2, rtol=1e-5, atol=1e-6, what="ElementwiseKernel")
    r3 = cp.sin(dx).get()
    assert_close(r3, np.sin(x.astype(np.float64)), rtol=1e-5, atol=1e-6, what="sin")
    ints = cp.arange(100_000, dtype=cp.int64) * 7 % 1000
    c.result("elementwise", f"{checksum(r1)} {checksum(r2)} {checksum(r3)} {int_checksum(ints.get())}")


def reductions():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((500, 400)).astype(np.float32)
    v = rng.integers(-(1 << 20), 1 << 20, size=1_000_003, dtype=np.int64)
    dx, dv = cp.asarray(x), cp.asarray(v)
    s = float(dx.sum())
    assert_close(s, x.astype(np.float64).sum(), rtol=0, atol=1e-2, what="sum")
    cols = dx.sum(axis=0).get()
    assert_close(cols, x.astype(np.float64).sum(axis=0), rtol=1e-4, atol=1e-4, what="sum(axis=0)")
    if int(dv.sum()) != int(v.sum()) or int(dv.max()) != int(v.max()) or int(dv.argmax()) != int(v.argmax()):
        raise AssertionError("integer sum/max/argmax")
    l2 = cp.ReductionKernel("float32 x", "float32 y", "x * x", "a + b", "y = sqrt(a)", "0", "vgpu_l2")
    n = float(l2(dx))
    assert_close(n, np.sqrt((x.astype(np.float64) ** 2).sum()), rtol=1e-5, what="ReductionKernel")
    c.result(
        "reductions",
        f"sum={float(s):.3e} cols: {checksum(cols)} l2={n:.5e} int_sum={int(dv.sum())} "
        f"max={int(dv.max())} argmax={int(dv.argmax())}",
    )


RAW = r"""
extern "C" __global__ void saxpy(float a, const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"""

MODULE = r"""
template <typename T> __global__ void scale(T *x, T k, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= k;
}
extern "C" __global__ void iota(int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i * 3 - 7;
}
__device__ int counter;
extern "C" __global__ void count(int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&counter, 1);
}
"""


def module():
    # NVRTC compiles, the driver loads the image (cuModuleLoadData), the functions' attributes
    # and a module global (cuModuleGetGlobal), written and read back by copies: no launch.
    m = cp.RawModule(code=MODULE, name_expressions=["scale<float>"])
    iota = m.get_function("iota")
    scale = m.get_function("scale<float>")
    attrs = iota.attributes
    if attrs["max_threads_per_block"] < 256:
        raise AssertionError(f"iota: {attrs}")
    if scale.attributes["max_threads_per_block"] < 256:
        raise AssertionError(f"scale<float>: {scale.attributes}")
    # (CuPy records no size for a global: its MemoryPointer says 0 bytes.)
    cnt = cp.ndarray((1,), cp.int32, m.get_global("counter"))
    cnt.set(np.array([12345], dtype=np.int32))
    if int(cnt.get()[0]) != 12345:
        raise AssertionError("the module global did not keep its value")
    c.result("module", f"counter={int(cnt.get()[0])}")
    c.info("module", f"iota {attrs}")


def raw_kernels():
    n = 100_000
    k = cp.RawKernel(RAW, "saxpy")
    x = cp.arange(n, dtype=cp.float32) * 0.5
    y = cp.ones(n, dtype=cp.float32)
    k(((n + 255) // 256,), (256,), (cp.float32(2.0), x, y, cp.int32(n)))
    want = 2.0 * (np.arange(n, dtype=np.float32) * 0.5) + 1.0
    assert_equal(y.get(), want.astype(np.float32), "RawKernel saxpy")
    m = cp.RawModule(code=MODULE, name_expressions=["scale<float>", "scale<int>"])
    iota = m.get_function("iota")
    xi = cp.empty(n, dtype=cp.int32)
    iota(((n + 255) // 256,), (256,), (xi, cp.int32(n)))
    m.get_function("scale<int>")(((n + 255) // 256,), (256,), (xi, cp.int32(2), cp.int32(n)))
    want_i = (np.arange(n, dtype=np.int64) * 3 - 7) * 2
    assert_equal(xi.get(), want_i.astype(np.int32), "RawModule iota + scale<int>")
    xf = cp.ones(n, dtype=cp.float32)
    m.get_function("scale<float>")(((n + 255) // 256,), (256,), (xf, cp.float32(1.5), cp.int32(n)))
    assert_equal(xf.get(), np.full(n, 1.5, np.float32), "scale<float>")
    counter = m.get_global("counter")
    cnt = cp.ndarray((1,), cp.int32, counter)
    cnt.fill(0)
    m.get_function("count")(((n + 255) // 256,), (256,), (cp.int32(n),))
    if int(cnt.get()[0]) != n:
        raise AssertionError(f"module global counter {int(cnt.get()[0])} != {n}")
    c.result("raw_kernels", f"{int_checksum(y.get().view(np.int32))} {int_checksum(xi.get())} counter={int(cnt.get()[0])}")


def matmul():
    rng = np.random.default_rng(14)
    a = rng.standard_normal((512, 384)).astype(np.float32)
    b = rng.standard_normal((384, 256)).astype(np.float32)
    r = cp.matmul(cp.asarray(a), cp.asarray(b)).get()
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert_close(r, ref, rtol=1e-3, atol=1e-3, what="float32 matmul")
    a64 = rng.standard_normal((200, 300))
    b64 = rng.standard_normal((300, 100))
    r64 = cp.matmul(cp.asarray(a64), cp.asarray(b64)).get()
    assert_close(r64, a64 @ b64, rtol=1e-10, atol=1e-10, what="float64 matmul")
    bat = rng.standard_normal((8, 64, 32)).astype(np.float32)
    rb = cp.matmul(cp.asarray(bat), cp.asarray(bat).transpose(0, 2, 1)).get()
    assert_close(rb, bat.astype(np.float64) @ bat.astype(np.float64).transpose(0, 2, 1), rtol=1e-3, atol=1e-3, what="batched")
    c.result("matmul", f"f32: {checksum(r)} f64: {checksum(r64)} batched: {checksum(rb)}")


c.run("device", device, kernels=False)
c.run("copies", copies, kernels=False)
c.run("memsets", memsets, kernels=False)
c.run("pinned_streams", pinned_streams, kernels=False)
c.run("memory_pool", memory_pool, kernels=False)
c.run("module", module, kernels=False)
c.run("elementwise", elementwise)
c.run("reductions", reductions)
c.run("raw_kernels", raw_kernels)
c.run("matmul", matmul)
c.finish()
