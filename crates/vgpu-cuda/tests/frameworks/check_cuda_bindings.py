"""NVIDIA's Python bindings of the driver API (cuda-bindings, `cuda.bindings.driver`): start-up,
device queries, a context, allocations, copies, memsets, streams, events, page-locked host
memory, pointer attributes, a PTX module and (with kernels) a launch.

Run natively and through vgpu's libcuda.so.1; `result:` lines must be identical (all exact).
"""
# framework-module: cuda.bindings.driver

import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from fwcheck import Checks, assert_equal, int_checksum  # noqa: E402

from cuda.bindings import driver as drv  # noqa: E402

c = Checks("cuda_bindings")

# y[i] = a * x[i] + i, as nvcc 13.0 writes it for compute_75 (the driver JIT-compiles it).
PTX = b"""
.version 9.0
.target sm_75
.address_size 64

.visible .entry axpb(
	.param .u64 axpb_param_0,
	.param .u64 axpb_param_1,
	.param .f32 axpb_param_2,
	.param .u32 axpb_param_3
)
{
	.reg .pred 	%p<2>;
	.reg .f32 	%f<5>;
	.reg .b32 	%r<6>;
	.reg .b64 	%rd<8>;

	ld.param.u64 	%rd1, [axpb_param_0];
	ld.param.u64 	%rd2, [axpb_param_1];
	ld.param.f32 	%f1, [axpb_param_2];
	ld.param.u32 	%r2, [axpb_param_3];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	setp.ge.s32 	%p1, %r1, %r2;
	@%p1 bra 	$L__BB0_2;

	cvta.to.global.u64 	%rd3, %rd2;
	mul.wide.s32 	%rd4, %r1, 4;
	add.s64 	%rd5, %rd3, %rd4;
	ld.global.f32 	%f2, [%rd5];
	cvt.rn.f32.s32 	%f3, %r1;
	fma.rn.f32 	%f4, %f2, %f1, %f3;
	cvta.to.global.u64 	%rd6, %rd1;
	add.s64 	%rd7, %rd6, %rd4;
	st.global.f32 	[%rd7], %f4;

$L__BB0_2:
	ret;
}
\0"""


def ck(r):
    """The values of a cuda-bindings call; raises on an error code."""
    err, rest = r[0], r[1:]
    if err != drv.CUresult.CUDA_SUCCESS:
        _, name = drv.cuGetErrorName(err)
        raise RuntimeError(f"CUresult {int(err)} ({name.decode() if name else '?'})")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


state = {}


def init():
    ck(drv.cuInit(0))
    ver = ck(drv.cuDriverGetVersion())
    # The driver API of CUDA 13.0 (driver 580): native and vgpu answer 13000.
    c.result("init", f"driver_version={ver}")
    n = ck(drv.cuDeviceGetCount())
    if n < 1:
        raise AssertionError("no device")
    dev = ck(drv.cuDeviceGet(0))
    state["dev"] = dev
    name = ck(drv.cuDeviceGetName(256, dev)).split(b"\0")[0].decode()
    total = ck(drv.cuDeviceTotalMem(dev))
    c.info("init", f"devices={n} name={name!r} total_mem={total}")
    A = drv.CUdevice_attribute
    attrs = [
        "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR",
        "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR",
        "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT",
        "CU_DEVICE_ATTRIBUTE_WARP_SIZE",
        "CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK",
        "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
        "CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING",
        "CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS",
    ]
    vals = [f"{a[len('CU_DEVICE_ATTRIBUTE_'):].lower()}={ck(drv.cuDeviceGetAttribute(getattr(A, a), dev))}" for a in attrs]
    # The attributes depend on the GPU: on vgpud's cpu backend they are its device's.
    c.result("init", " ".join(vals))
    uuid = ck(drv.cuDeviceGetUuid(dev))
    if bytes(uuid.bytes) == bytes(16):
        raise AssertionError("the device's UUID is all zeros")


def context():
    dev = state["dev"]
    ctx = ck(drv.cuDevicePrimaryCtxRetain(dev))
    ck(drv.cuCtxSetCurrent(ctx))
    state["ctx"] = ctx
    cur = ck(drv.cuCtxGetCurrent())
    if int(cur) != int(ctx):
        raise AssertionError("cuCtxGetCurrent is not the primary context")
    got = ck(drv.cuCtxGetDevice())
    if int(got) != int(dev):
        raise AssertionError("cuCtxGetDevice is not device 0")
    flags, active = ck(drv.cuDevicePrimaryCtxGetState(dev))
    if not active:
        raise AssertionError("the retained primary context is not active")
    ck(drv.cuCtxSynchronize())
    c.result("context", f"active={int(active)}")


def memory():
    n = 1 << 18  # 1 MiB of uint32
    free0, total = ck(drv.cuMemGetInfo())
    a = ck(drv.cuMemAlloc(n * 4))
    b = ck(drv.cuMemAlloc(n * 4))
    free1, _ = ck(drv.cuMemGetInfo())
    if not (free1 <= free0 - 2 * n * 4 and total >= free0):
        raise AssertionError(f"cuMemGetInfo: free {free0} -> {free1} after 2 MiB, total {total}")
    host = (np.arange(n, dtype=np.uint64) * 2654435761 % (1 << 32)).astype(np.uint32)
    back = np.zeros_like(host)
    ck(drv.cuMemcpyHtoD(a, host.ctypes.data, host.nbytes))
    ck(drv.cuMemcpyDtoD(b, a, host.nbytes))
    ck(drv.cuMemcpyDtoH(back.ctypes.data, b, back.nbytes))
    assert_equal(back, host, "HtoD, DtoD, DtoH")
    ck(drv.cuMemsetD32(b, 0xDEADBEEF, n // 2))
    ck(drv.cuMemsetD8(drv.CUdeviceptr(int(b) + n * 2), 0x5A, n * 2))
    ck(drv.cuMemcpyDtoH(back.ctypes.data, b, back.nbytes))
    want = np.concatenate([np.full(n // 2, 0xDEADBEEF, np.uint32), np.full(n // 2, 0x5A5A5A5A, np.uint32)])
    assert_equal(back, want, "memsets")
    base, size = ck(drv.cuMemGetAddressRange(drv.CUdeviceptr(int(a) + 100)))
    if int(base) != int(a) or size != n * 4:
        raise AssertionError(f"cuMemGetAddressRange: {int(base):#x}+{size} vs {int(a):#x}+{n * 4}")
    mt = ck(drv.cuPointerGetAttribute(drv.CUpointer_attribute.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, a))
    if int(mt) != int(drv.CUmemorytype.CU_MEMORYTYPE_DEVICE):
        raise AssertionError(f"memory type of a device pointer: {mt}")
    c.result("memory", int_checksum(back))
    ck(drv.cuMemFree(a))
    ck(drv.cuMemFree(b))


def streams_events_pinned():
    n = 1 << 20  # bytes
    s = ck(drv.cuStreamCreate(drv.CUstream_flags.CU_STREAM_NON_BLOCKING))
    e0 = ck(drv.cuEventCreate(drv.CUevent_flags.CU_EVENT_DEFAULT))
    e1 = ck(drv.cuEventCreate(drv.CUevent_flags.CU_EVENT_DEFAULT))
    hp = ck(drv.cuMemHostAlloc(n, 0))
    hb = ck(drv.cuMemAllocHost(n))
    src = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(int(hp)))
    dst = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(int(hb)))
    src[:] = (np.arange(n, dtype=np.uint64) * 31 % 251).astype(np.uint8)
    dst[:] = 0
    d = ck(drv.cuMemAlloc(n))
    ck(drv.cuEventRecord(e0, s))
    ck(drv.cuMemcpyHtoDAsync(d, hp, n, s))
    ck(drv.cuMemsetD8Async(drv.CUdeviceptr(int(d) + n // 2), 7, 4096, s))
    ck(drv.cuMemcpyDtoHAsync(hb, d, n, s))
    ck(drv.cuEventRecord(e1, s))
    ck(drv.cuEventSynchronize(e1))
    ck(drv.cuStreamSynchronize(s))
    want = src.copy()
    want[n // 2 : n // 2 + 4096] = 7
    assert_equal(dst, want, "async copies through page-locked memory")
    if ck(drv.cuEventQuery(e1)) is not None:
        raise AssertionError("cuEventQuery of a completed event")
    ms = ck(drv.cuEventElapsedTime(e0, e1))
    if not ms >= 0:
        raise AssertionError(f"cuEventElapsedTime {ms}")
    c.info("streams_events_pinned", f"elapsed_ms={ms:.3f}")
    c.result("streams_events_pinned", int_checksum(dst))
    ck(drv.cuMemFree(d))
    ck(drv.cuMemFreeHost(hp))
    ck(drv.cuMemFreeHost(hb))
    ck(drv.cuEventDestroy(e0))
    ck(drv.cuEventDestroy(e1))
    ck(drv.cuStreamDestroy(s))


def module():
    m = ck(drv.cuModuleLoadData(PTX))
    f = ck(drv.cuModuleGetFunction(m, b"axpb"))
    state["module"], state["func"] = m, f
    name = ck(drv.cuFuncGetName(f))
    # (offset, size) of each parameter: y, x, a, n.
    layout = [ck(drv.cuFuncGetParamInfo(f, i)) for i in range(4)]
    err = drv.cuFuncGetParamInfo(f, 4)[0]
    if err == drv.CUresult.CUDA_SUCCESS:
        raise AssertionError("cuFuncGetParamInfo found a fifth parameter")
    maxt = ck(drv.cuFuncGetAttribute(drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f))
    if maxt < 256:
        raise AssertionError(f"max threads per block {maxt}")
    c.result("module", f"name={name.decode()} params={layout}")


def kernel():
    f = state["func"]
    n = 10000
    x = (np.arange(n, dtype=np.float32) * 0.5).astype(np.float32)
    y = np.zeros(n, dtype=np.float32)
    dx = ck(drv.cuMemAlloc(x.nbytes))
    dy = ck(drv.cuMemAlloc(y.nbytes))
    ck(drv.cuMemcpyHtoD(dx, x.ctypes.data, x.nbytes))
    args = [
        np.array([int(dy)], dtype=np.uint64),
        np.array([int(dx)], dtype=np.uint64),
        np.array([3.0], dtype=np.float32),
        np.array([n], dtype=np.int32),
    ]
    ptrs = np.array([a.ctypes.data for a in args], dtype=np.uint64)
    ck(drv.cuLaunchKernel(f, (n + 255) // 256, 1, 1, 256, 1, 1, 0, 0, ptrs.ctypes.data, 0))
    ck(drv.cuCtxSynchronize())
    ck(drv.cuMemcpyDtoH(y.ctypes.data, dy, y.nbytes))
    # 3 * (i / 2) + i is exact in float32 for these i.
    want = (np.float32(3.0) * x + np.arange(n, dtype=np.float32)).astype(np.float32)
    assert_equal(y, want, "axpb")
    c.result("kernel", int_checksum(y.view(np.int32)))
    ck(drv.cuMemFree(dx))
    ck(drv.cuMemFree(dy))


c.run("init", init, kernels=False)
c.run("context", context, kernels=False)
c.run("memory", memory, kernels=False)
c.run("streams_events_pinned", streams_events_pinned, kernels=False)
c.run("module", module, kernels=False)
c.run("kernel", kernel)
if "module" in state:
    ck(drv.cuModuleUnload(state["module"]))
if "ctx" in state:
    ck(drv.cuDevicePrimaryCtxRelease(state["dev"]))
c.finish()
