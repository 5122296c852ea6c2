"""One tenant of the gpu-check stage `tenants`: a PyTorch process that either keeps the GPU busy
with verified work (`load`) or faults on purpose (`fault`). Run natively or through vgpu's
libcuda.so.1 (VGPU_SOCKET, vgpu's folder first on LD_LIBRARY_PATH); nothing is downloaded.

  load  [--seconds S] [--stop-file F] [--n N] [--round R] [--seed K]
        Multiplies two N x N float32 matrices of small integers (-4..4) over and over. Every
        partial sum is an integer below 2**24, so the product is exact in float32 whatever
        the order of the additions: the first GPU product is checked against the CPU's
        (float64) element by element, and every later one must be bit-identical to it. The
        comparison stays on the GPU (a mismatch count per product); the process reads the
        count once per round of R products, so that its work stays queued on the device
        between rounds (a saturating tenant). Stops after S seconds or, at the end of a round,
        once the file F exists.
        Prints `steady: t=EPOCH` when the timed loop starts, `progress: t=EPOCH iterations=I
        mismatched=M` after every round, then `load: iterations=I mismatched=M seconds=S
        rate=X/s` and PASS (every product exact) or FAIL.
  fault [--n N] [--hold S]
        Does some correct work (R products checked as above), then launches an out-of-bounds
        kernel through the driver API (ctypes on libcuda.so.1, the library PyTorch uses: a
        PTX store 4 TiB past one of PyTorch's allocations, the conformance suite's
        oob_write.ptx) and synchronises. Prints `fault: t=EPOCH` when the fault surfaced and
        `result: fault launch=E1 sync=E2 after=E3` (CUDA error names), and PASS when the
        synchronisation reported CUDA_ERROR_ILLEGAL_ADDRESS and the error stuck (a later
        synchronisation fails too), FAIL otherwise. Then stays connected S seconds (the host
        can see the broken context) and exits without PyTorch's teardown.

`result:` lines are exact (integers, digests): the native run and every tenant print the same
ones for the same N and seed. `info:` lines are not compared.
"""

import argparse
import ctypes
import os
import sys
import time

# cuBLAS's deterministic workspace (PyTorch's reproducibility notes); set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

CUDA_SUCCESS = 0
CUDA_ERROR_ILLEGAL_ADDRESS = 700

# crates/vgpu-mediator/kernels/ptx/oob_write.ptx: p[offset] = 0xdeadbeef.
OOB_PTX = b"""
.version 8.0
.target sm_90
.address_size 64

.visible .entry oob_write(
	.param .u64 oob_write_param_0,
	.param .u64 oob_write_param_1
)
{
	.reg .b32 	%r<2>;
	.reg .b64 	%rd<6>;

	ld.param.u64 	%rd1, [oob_write_param_0];
	ld.param.u64 	%rd2, [oob_write_param_1];
	cvta.to.global.u64 	%rd3, %rd1;
	shl.b64 	%rd4, %rd2, 2;
	add.s64 	%rd5, %rd3, %rd4;
	mov.u32 	%r1, -559038737;
	st.volatile.global.u32 	[%rd5], %r1;
	ret;
}
"""
# Elements past the allocation (4 TiB of 4-byte words): no mapping of the context is there.
OOB_OFFSET = 1 << 40


def now():
    return f"{time.time():.6f}"


def matrices(n, seed):
    """Two n x n float32 matrices of integers in -4..4 (CPU), from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-4, 5, (n, n), generator=g, dtype=torch.int32).to(torch.float32)
    b = torch.randint(-4, 5, (n, n), generator=g, dtype=torch.int32).to(torch.float32)
    return a, b


def digest(t):
    """Exact digest of an integer-valued tensor (int64 arithmetic, no numpy): element count,
    sum, sum of absolute values and a position-weighted sum (a transposed or shifted product
    changes the last one)."""
    v = t.detach().cpu().to(torch.int64).flatten()
    w = torch.arange(v.numel(), dtype=torch.int64) % 7 - 3
    return f"n={v.numel()} sum={int(v.sum())} abs={int(v.abs().sum())} w={int((v * w).sum())}"


def setup(n, seed):
    """The operands on the GPU and the first GPU product, checked against the exact CPU one."""
    if not torch.cuda.is_available():
        raise SystemExit("FAIL: torch.cuda.is_available() is False")
    torch.backends.cuda.matmul.allow_tf32 = False
    p = torch.cuda.get_device_properties(0)
    print(
        f"info: torch={torch.__version__} cuda={torch.version.cuda} device={p.name!r} "
        f"sms={p.multi_processor_count} n={n} seed={seed} pid={os.getpid()}",
        flush=True,
    )
    a, b = matrices(n, seed)
    want = a.double() @ b.double()
    if want.abs().max() >= 2**24:
        raise SystemExit(f"FAIL: n={n} too large for exact float32 sums")
    ga, gb = a.cuda(), b.cuda()
    ref = ga @ gb
    got = ref.double().cpu()
    if not torch.equal(got, want):
        bad = int((got != want).sum())
        raise SystemExit(f"FAIL: the GPU product differs from the exact CPU one in {bad} elements")
    print(f"result: product n={n} seed={seed} {digest(ref)}", flush=True)
    return ga, gb, ref


def load(args):
    ga, gb, ref = setup(args.n, args.seed)
    ref_bits = ref.view(torch.int32)
    out = torch.empty_like(ref)
    mismatched = torch.zeros((), dtype=torch.int64, device="cuda")
    # One round before the clock starts: cuBLAS and the comparison kernels are loaded.
    for _ in range(2):
        torch.mm(ga, gb, out=out)
        mismatched += (out.view(torch.int32) != ref_bits).sum()
    warm = int(mismatched.item())
    iterations, bad = 2, warm
    t0 = time.monotonic()
    print(f"steady: t={now()}", flush=True)
    stop = False
    while not stop:
        for _ in range(args.round):
            torch.mm(ga, gb, out=out)
            mismatched += (out.view(torch.int32) != ref_bits).sum()
        # The only synchronisation of the round.
        bad = int(mismatched.item())
        iterations += args.round
        print(f"progress: t={now()} iterations={iterations} mismatched={bad}", flush=True)
        elapsed = time.monotonic() - t0
        stop = elapsed >= args.seconds or bool(args.stop_file and os.path.exists(args.stop_file))
    elapsed = time.monotonic() - t0
    timed = iterations - 2
    print(
        f"load: iterations={iterations} mismatched={bad} seconds={elapsed:.3f} "
        f"rate={timed / elapsed:.3f}/s flops={2.0 * args.n**3 * timed / elapsed:.4g}/s",
        flush=True,
    )
    # The operands must not have changed either.
    a, b = matrices(args.n, args.seed)
    intact = torch.equal(ga.cpu(), a) and torch.equal(gb.cpu(), b)
    if bad == 0 and intact:
        print(f"result: load exact n={args.n} seed={args.seed}")
        print("PASS", flush=True)
        return 0
    print(f"FAIL load: {bad} mismatched products of {iterations}; operands intact: {intact}")
    return 1


class Driver:
    """The few driver-API functions the fault needs, from the libcuda.so.1 PyTorch loaded."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        for name, args in {
            "cuCtxGetCurrent": [ctypes.POINTER(ctypes.c_void_p)],
            "cuModuleLoadData": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p],
            "cuModuleGetFunction": [
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_void_p,
                ctypes.c_char_p,
            ],
            "cuLaunchKernel": [ctypes.c_void_p]
            + [ctypes.c_uint] * 7
            + [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p],
            "cuCtxSynchronize": [],
            "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        }.items():
            f = getattr(self.lib, name)
            f.argtypes = args
            f.restype = ctypes.c_int

    def name(self, code):
        s = ctypes.c_char_p()
        if self.lib.cuGetErrorName(code, ctypes.byref(s)) != CUDA_SUCCESS or not s.value:
            return f"CUresult({code})"
        return s.value.decode()


def fault(args):
    ga, gb, ref = setup(args.n, args.seed)
    # Correct work first: a round of products, each exact.
    out = torch.empty_like(ref)
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for _ in range(args.round):
        torch.mm(ga, gb, out=out)
        bad += (out.view(torch.int32) != ref.view(torch.int32)).sum()
    if int(bad.item()) != 0:
        print(f"FAIL fault: the correct work before the fault was not exact ({int(bad.item())})")
        return 1
    print(f"result: fault warm-up exact rounds={args.round}", flush=True)
    torch.cuda.synchronize()

    d = Driver()
    ctx = ctypes.c_void_p()
    rc = d.lib.cuCtxGetCurrent(ctypes.byref(ctx))
    if rc != CUDA_SUCCESS or not ctx.value:
        print(f"FAIL fault: no current context after PyTorch's work ({d.name(rc)})")
        return 1
    mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
    rc = d.lib.cuModuleLoadData(ctypes.byref(mod), OOB_PTX + b"\0")
    if rc != CUDA_SUCCESS:
        print(f"FAIL fault: cuModuleLoadData -> {d.name(rc)}")
        return 1
    rc = d.lib.cuModuleGetFunction(ctypes.byref(fn), mod, b"oob_write")
    if rc != CUDA_SUCCESS:
        print(f"FAIL fault: cuModuleGetFunction -> {d.name(rc)}")
        return 1
    ptr = ctypes.c_uint64(out.data_ptr())
    off = ctypes.c_uint64(OOB_OFFSET)
    params = (ctypes.c_void_p * 2)(
        ctypes.cast(ctypes.byref(ptr), ctypes.c_void_p),
        ctypes.cast(ctypes.byref(off), ctypes.c_void_p),
    )
    print(
        f"info: launching oob_write at {ptr.value:#x} + {OOB_OFFSET} words "
        f"(4 TiB past a {out.numel() * 4}-byte allocation)",
        flush=True,
    )
    launch = d.lib.cuLaunchKernel(fn, 1, 1, 1, 1, 1, 1, 0, None, params, None)
    sync = d.lib.cuCtxSynchronize() if launch == CUDA_SUCCESS else launch
    print(f"fault: t={now()}", flush=True)
    after = d.lib.cuCtxSynchronize()
    try:
        torch.cuda.synchronize()
        torch_after = "no error"
    except RuntimeError as e:
        torch_after = str(e).splitlines()[0]
    print(f"info: torch.cuda.synchronize() after the fault: {torch_after}")
    print(f"result: fault launch={d.name(launch)} sync={d.name(sync)} after={d.name(after)}")
    # The error must surface (at the launch or the synchronisation) as an illegal address and
    # stay: the context is broken for this process only.
    first = launch if launch != CUDA_SUCCESS else sync
    if first == CUDA_ERROR_ILLEGAL_ADDRESS and after != CUDA_SUCCESS:
        print("PASS", flush=True)
        rc = 0
    else:
        print(
            f"FAIL fault: expected CUDA_ERROR_ILLEGAL_ADDRESS, sticky; got launch "
            f"{d.name(launch)}, sync {d.name(sync)}, after {d.name(after)}",
            flush=True,
        )
        rc = 1
    time.sleep(args.hold)
    return rc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["load", "fault"])
    p.add_argument("--seconds", type=float, default=10.0, help="load: longest run (default 10)")
    p.add_argument("--stop-file", help="load: stop at the end of the round once this file exists")
    p.add_argument("--n", type=int, default=4096, help="matrix size (default 4096)")
    p.add_argument("--round", type=int, default=128, help="products per synchronisation")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hold", type=float, default=0.0, help="fault: seconds to stay after it")
    args = p.parse_args()
    if args.n < 1 or args.round < 1:
        p.error("--n and --round must be positive")
    rc = load(args) if args.mode == "load" else fault(args)
    sys.stdout.flush()
    sys.stderr.flush()
    if args.mode == "fault":
        # PyTorch's teardown on a broken context only adds noise (and may abort).
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
