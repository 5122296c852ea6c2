"""numba-cuda: device detection and queries, device arrays and copies, streams and events,
page-locked (pinned and registered) host arrays, a kernel compiled and loaded (no launch), and
with kernels: `@cuda.jit` kernels (1D, 2D, shared memory and atomics), a kernel on a stream, a
mapped host array written by a kernel, `cuda.reduce`.

Run natively and through vgpu's libcuda.so.1; `result:` lines must be identical: integer
results exact, float results rounded to 5 significant digits (fwcheck.SIG).

numba 0.68 + numba-cuda 0.30.4 use `np.row_stack`, which NumPy 2.5 removed: where it is
missing, this script sets `np.row_stack = np.vstack` before importing numba (and says so).
"""
# framework-module: numba.cuda

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

if not hasattr(np, "row_stack"):
    # An environment incompatibility, not vgpu's: numba-cuda's typing registry names it.
    np.row_stack = np.vstack
    print("info: numba shim: numpy lacks row_stack; set np.row_stack = np.vstack", flush=True)

from fwcheck import Checks, assert_close, assert_equal, checksum, int_checksum  # noqa: E402

from numba import cuda  # noqa: E402

c = Checks("numba")


def detect():
    if not cuda.is_available():
        raise AssertionError("cuda.is_available() is False")
    if not cuda.detect():
        raise AssertionError("cuda.detect() found no supported device")
    dev = cuda.get_current_device()
    c.info("detect", f"name={dev.name.decode() if isinstance(dev.name, bytes) else dev.name!r}")
    cc = dev.compute_capability
    c.result(
        "detect",
        f"cc={cc[0]}.{cc[1]} warp={dev.WARP_SIZE} max_threads={dev.MAX_THREADS_PER_BLOCK} "
        f"max_block_dim_x={dev.MAX_BLOCK_DIM_X}",
    )
    free, total = cuda.current_context().get_memory_info()
    if not 0 < free <= total:
        raise AssertionError(f"memory info: free {free}, total {total}")
    c.info("detect", f"free={free} total={total}")


def device_arrays():
    rng = np.random.default_rng(1)
    a = rng.integers(-(1 << 30), 1 << 30, size=100_000, dtype=np.int64)
    d = cuda.to_device(a)
    assert_equal(d.copy_to_host(), a, "to_device / copy_to_host")
    e = cuda.device_array_like(d)
    e.copy_to_device(d)  # device to device
    assert_equal(e.copy_to_host(), a, "copy_to_device from a device array")
    assert_equal(e[1000:2000].copy_to_host(), a[1000:2000], "a slice")
    f = cuda.device_array((300, 200), dtype=np.float32, order="C")
    m = rng.standard_normal((300, 200)).astype(np.float32)
    f.copy_to_device(m)
    assert_equal(f.copy_to_host(), m, "a 2D array")
    # A row of a C-ordered 2D array is contiguous; a column is not (numba copies it whole).
    assert_equal(f[7].copy_to_host(), m[7], "a row")
    out = np.empty_like(a)
    e.copy_to_host(out)
    c.result("device_arrays", f"{int_checksum(out)} {checksum(f.copy_to_host())}")


def streams_events():
    s = cuda.stream()
    n = 1 << 20
    h = cuda.pinned_array(n, dtype=np.uint32)
    h[:] = np.arange(n, dtype=np.uint32) * 2654435761
    back = cuda.pinned_array(n, dtype=np.uint32)
    e0, e1 = cuda.event(), cuda.event()
    e0.record(stream=s)
    d = cuda.to_device(h, stream=s)
    d2 = cuda.device_array_like(d, stream=s)
    d2.copy_to_device(d, stream=s)
    d2.copy_to_host(back, stream=s)
    e1.record(stream=s)
    e1.synchronize()
    s.synchronize()
    assert_equal(back, h, "copies on a stream")
    ms = cuda.event_elapsed_time(e0, e1)
    if not ms >= 0:
        raise AssertionError(f"elapsed time {ms}")
    if not e1.query():
        raise AssertionError("a completed event queries as pending")
    with s.auto_synchronize():
        cuda.to_device(h[: n // 2], stream=s).copy_to_host(back[: n // 2], stream=s)
    c.info("streams_events", f"elapsed_ms={ms:.3f}")
    c.result("streams_events", int_checksum(back))


def pinned():
    # cuda.pinned registers existing host memory (cuMemHostRegister) for the block.
    a = np.arange(1 << 18, dtype=np.float64) * 0.25
    b = np.zeros_like(a)
    with cuda.pinned(a, b):
        d = cuda.to_device(a)
        d.copy_to_host(b)
    assert_equal(b, a, "registered host memory")
    c.result("pinned", checksum(b))


@cuda.jit
def _add(x, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] + y[i]


@cuda.jit
def _scale2d(m, k):
    i, j = cuda.grid(2)
    if i < m.shape[0] and j < m.shape[1]:
        m[i, j] = m[i, j] * k + i - j


@cuda.jit
def _block_sums(x, sums, total):
    # Each block sums its 256 values in shared memory; thread 0 adds it to the total.
    buf = cuda.shared.array(256, dtype=np.int64)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    buf[t] = x[i] if i < x.size else 0
    cuda.syncthreads()
    step = 128
    while step > 0:
        if t < step:
            buf[t] += buf[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        sums[cuda.blockIdx.x] = buf[0]
        cuda.atomic.add(total, 0, buf[0])


def _axpy(a, x, y):
    i = cuda.grid(1)
    if i < y.size:
        y[i] = a * x[i] + y[i]


def compile_load():
    # A kernel compiled for a signature (NVVM, then nvJitLink or the driver's linker) and
    # loaded into the context (cuLibraryLoadData or cuModuleLoadData): no launch.
    k = cuda.jit("void(float32, float32[:], float32[:])")(_axpy)
    (kern,) = k.overloads.values()
    kern.bind()
    maxt = kern.max_threads_per_block
    if maxt < 256:
        raise AssertionError(f"max threads per block {maxt}")
    c.info("compile_load", f"regs={kern.regs_per_thread} max_threads={maxt}")
    c.result("compile_load", f"overloads={len(k.overloads)}")


def kernels():
    rng = np.random.default_rng(2)
    n = 100_000
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    out = cuda.device_array(n, dtype=np.float32)
    _add[(n + 255) // 256, 256](cuda.to_device(x), cuda.to_device(y), out)
    got = out.copy_to_host()
    assert_equal(got, x + y, "vector add")  # one float32 addition: exact
    m = rng.standard_normal((123, 77)).astype(np.float32)
    dm = cuda.to_device(m)
    _scale2d[(8, 5), (16, 16)](dm, np.float32(3.0))
    want = m * np.float32(3.0) + np.arange(123, dtype=np.float32)[:, None] - np.arange(77, dtype=np.float32)[None, :]
    assert_close(dm.copy_to_host(), want, rtol=1e-6, atol=1e-5, what="2D kernel")
    v = rng.integers(-1000, 1000, size=n, dtype=np.int64)
    blocks = (n + 255) // 256
    sums = cuda.device_array(blocks, dtype=np.int64)
    total = cuda.to_device(np.zeros(1, dtype=np.int64))
    _block_sums[blocks, 256](cuda.to_device(v), sums, total)
    want_sums = np.add.reduceat(v, np.arange(0, n, 256))
    assert_equal(sums.copy_to_host(), want_sums, "block sums (shared memory)")
    t = int(total.copy_to_host()[0])
    if t != int(v.sum()):
        raise AssertionError(f"atomic total {t} != {int(v.sum())}")
    c.result("kernels", f"add: {checksum(got)} 2d: {checksum(dm.copy_to_host())} sums: {int_checksum(sums.copy_to_host())} total={t}")


def kernel_on_stream():
    s = cuda.stream()
    n = 1 << 16
    x = cuda.pinned_array(n, dtype=np.float32)
    x[:] = np.linspace(-1, 1, n, dtype=np.float32)
    dx = cuda.to_device(x, stream=s)
    out = cuda.device_array(n, dtype=np.float32, stream=s)
    _add[(n + 127) // 128, 128, s](dx, dx, out)
    back = cuda.pinned_array(n, dtype=np.float32)
    out.copy_to_host(back, stream=s)
    s.synchronize()
    assert_equal(back, x + x, "a kernel between async copies")
    c.result("kernel_on_stream", checksum(back))


def mapped():
    # Host memory the kernel reads and writes in place (cuMemHostAlloc DEVICEMAP +
    # cuMemHostGetDevicePointer).
    n = 4096
    a = cuda.mapped_array(n, dtype=np.float32)
    b = cuda.mapped_array(n, dtype=np.float32)
    o = cuda.mapped_array(n, dtype=np.float32)
    a[:] = np.arange(n, dtype=np.float32)
    b[:] = 2.0
    _add[n // 256, 256](a, b, o)
    cuda.synchronize()
    assert_equal(np.array(o), np.arange(n, dtype=np.float32) + 2, "mapped arrays")
    c.result("mapped", checksum(np.array(o)))


def reduce():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 1 << 20, size=1 << 18, dtype=np.int64)
    r = cuda.reduce(lambda p, q: p + q)
    got = int(r(v))
    if got != int(v.sum()):
        raise AssertionError(f"cuda.reduce: {got} != {int(v.sum())}")
    c.result("reduce", f"sum={got}")


c.run("detect", detect, kernels=False)
c.run("device_arrays", device_arrays, kernels=False)
c.run("streams_events", streams_events, kernels=False)
c.run("pinned", pinned, kernels=False)
c.run("compile_load", compile_load, kernels=False)
c.run("kernels", kernels)
c.run("kernel_on_stream", kernel_on_stream)
c.run("mapped", mapped)
c.run("reduce", reduce)
c.finish()
