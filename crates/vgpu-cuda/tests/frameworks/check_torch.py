"""PyTorch: device queries, copies (pinned, non_blocking), the first kernel, matmul (cuBLAS and
cuBLASLt: fp32, a linear layer's bias epilogue, bf16), conv2d (cuDNN), a training step
(autograd, BatchNorm, Adam), cumsum and sort (CUB), pin_memory + non_blocking copies around a
kernel on a side stream, torch.cuda.graph capture and replay.

Run natively and through vgpu's libcuda.so.1; `result:` lines must be identical: integer
results exact, float results rounded to 5 significant digits (fwcheck.SIG; bf16 results and
training losses to 4). Every sub-test also checks its values against a CPU reference (float64
where it can), with the tolerance it states. Models are built from code with random weights
from fixed seeds; nothing is downloaded. TF32 is off (cuBLAS and cuDNN) and cuDNN is
deterministic, so native and vgpu runs compute the same bits.
"""
# framework-module: torch

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# cuBLAS's deterministic workspace (PyTorch's reproducibility notes); set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402

from fwcheck import Checks, assert_close, assert_equal, checksum, int_checksum  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

c = Checks("torch")
dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False


def np64(t):
    return t.detach().cpu().double().numpy()


def device():
    if not torch.cuda.is_available():
        raise AssertionError("torch.cuda.is_available() is False")
    n = torch.cuda.device_count()
    p = torch.cuda.get_device_properties(0)
    c.result("device", f"cc={p.major}.{p.minor} sms={p.multi_processor_count}")
    c.info(
        "device",
        f"devices={n} name={p.name!r} total={p.total_memory} torch={torch.__version__} "
        f"cuda={torch.version.cuda} cudnn={torch.backends.cudnn.version()}",
    )
    free, total = torch.cuda.mem_get_info()
    if not 0 < free <= total:
        raise AssertionError(f"mem_get_info: free {free}, total {total}")
    c.info("device", f"free={free} total={total}")


def copies():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1000, 1000, generator=g)
    d = x.to(dev)
    e = torch.empty_like(d)
    e.copy_(d)  # same dtype, contiguous: a device-to-device memcpy
    back = e.cpu()
    assert_equal(back.numpy(), x.numpy(), "host to device to device to host")
    i = torch.randint(-(1 << 40), 1 << 40, (100_000,), generator=g)
    p = i.pin_memory()
    di = p.to(dev, non_blocking=True)
    out = torch.empty(i.shape, dtype=i.dtype, pin_memory=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out.copy_(di, non_blocking=True)
    end.record()
    end.synchronize()
    assert_equal(out.numpy(), i.numpy(), "pinned non_blocking copies")
    if not start.elapsed_time(end) >= 0:
        raise AssertionError("negative elapsed time")
    used = torch.cuda.memory_allocated()
    if used < x.numel() * 4 * 2:
        raise AssertionError(f"memory_allocated {used} is below what the tensors hold")
    c.result("copies", f"{checksum(back)} {int_checksum(out)}")


def first_kernel():
    t = torch.ones(1, device=dev)
    torch.cuda.synchronize()
    if t.item() != 1.0:
        raise AssertionError("torch.ones(1) on the GPU is not 1")
    c.result("first_kernel", f"ones={t.item()}")


def matmul():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(1024, 512, generator=g)
    b = torch.randn(512, 256, generator=g)
    w = torch.randn(384, 512, generator=g)
    bias = torch.randn(384, generator=g)
    ref = a.double() @ b.double()
    da, db = a.to(dev), b.to(dev)
    r = (da @ db).cpu()
    assert_close(r.numpy(), ref.numpy(), rtol=1e-4, atol=1e-3, what="fp32 matmul")
    # A linear layer with a bias: addmm, which PyTorch runs through cuBLASLt's bias epilogue.
    lin = F.linear(da, w.to(dev), bias.to(dev)).cpu()
    lref = a.double() @ w.double().t() + bias.double()
    assert_close(lin.numpy(), lref.numpy(), rtol=1e-4, atol=1e-3, what="linear (addmm + bias)")
    # bf16 inputs, fp32 accumulation: errors of about 2**-8 of each |term| (atol 1.0 at
    # |entries| ~ 23).
    h = (da.bfloat16() @ db.bfloat16()).float().cpu()
    assert_close(h.numpy(), ref.numpy(), rtol=2e-2, atol=1.0, what="bf16 matmul")
    lt = None
    if hasattr(torch.backends.cuda, "preferred_blas_library"):
        # The same product with cuBLASLt asked for by name.
        old = torch.backends.cuda.preferred_blas_library()
        try:
            torch.backends.cuda.preferred_blas_library("cublaslt")
            lt = (da @ db).cpu()
        finally:
            torch.backends.cuda.preferred_blas_library(old)
        assert_close(lt.numpy(), ref.numpy(), rtol=1e-4, atol=1e-3, what="fp32 matmul (cublaslt)")
        c.info("matmul", f"preferred_blas_library={old}")
    torch.cuda.synchronize()
    c.result("matmul", f"fp32: {checksum(r)} linear: {checksum(lin)} bf16: {checksum(h, 4)}")
    if lt is not None:
        c.result("matmul", f"cublaslt: {checksum(lt)}")


def conv2d():
    if not torch.backends.cudnn.is_available():
        raise AssertionError("cuDNN is not available")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 32, 32, generator=g)
    w = torch.randn(16, 3, 3, 3, generator=g)
    b = torch.randn(16, generator=g)
    y = F.conv2d(x.to(dev), w.to(dev), b.to(dev), padding=1).cpu()
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    assert_close(y.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4, what="conv2d fp32")
    w2 = torch.randn(32, 8, 3, 3, generator=g)
    x2 = torch.randn(4, 16, 20, 20, generator=g)
    # Strided and grouped, fp16 in channels-last layout.
    y2 = F.conv2d(
        x2.to(dev).half().to(memory_format=torch.channels_last), w2.to(dev).half(), stride=2, padding=1, groups=2
    ).float().cpu()
    ref2 = F.conv2d(x2.double(), w2.double(), stride=2, padding=1, groups=2)
    assert_close(y2.numpy(), ref2.numpy(), rtol=1e-2, atol=5e-2, what="conv2d fp16 grouped")
    c.result("conv2d", f"fp32: {checksum(y)} fp16: {checksum(y2, 4)}")


def make_model():
    return nn.Sequential(
        # No bias before BatchNorm: its gradient would be 0 in float64 and rounding noise in
        # fp32, which Adam scales up to whole steps.
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )


def train_step():
    torch.manual_seed(3)
    model = make_model()
    ref_model = make_model()
    ref_model.load_state_dict(model.state_dict())
    model = model.to(dev)
    ref_model = ref_model.double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(4)
    losses, ref_losses = [], []
    for _ in range(5):
        x = torch.randn(16, 3, 16, 16, generator=g)
        t = torch.randn(16, 10, generator=g)
        for m, o, xs, ts, out in ((model, opt, x.to(dev), t.to(dev), losses), (ref_model, ref_opt, x.double(), t.double(), ref_losses)):
            o.zero_grad(set_to_none=True)
            loss = F.mse_loss(m(xs), ts)
            loss.backward()
            o.step()
            out.append(loss.item())
    # Five Adam steps (lr 1e-2) in fp32 on the GPU next to float64 on the CPU: losses within
    # 1e-3 relative, parameters within a tenth of a step.
    assert_close(losses, ref_losses, rtol=1e-3, atol=1e-5, what="training losses")
    params = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    ref_params = torch.cat([p.detach().flatten() for p in ref_model.parameters()])
    assert_close(params.numpy(), ref_params.numpy(), rtol=1e-3, atol=1e-3, what="parameters after 5 steps")
    # Autograd through a known derivative: d/dx sum(x^3) = 3 x^2.
    x = torch.linspace(-2, 2, 1001, device=dev, requires_grad=True)
    (x**3).sum().backward()
    assert_close(np64(x.grad), 3 * np64(x.detach()) ** 2, rtol=1e-6, atol=1e-6, what="autograd x^3")
    c.result("train_step", "losses: " + " ".join(f"{v:.4e}" for v in losses) + f" params: {checksum(params, 4)}")


def cumsum_sort():
    g = torch.Generator().manual_seed(5)
    v = torch.randint(-1000, 1000, (1_000_003,), generator=g)
    dv = v.to(dev)
    vn = v.numpy()
    cs = torch.cumsum(dv, 0).cpu().numpy()
    assert_equal(cs, np.cumsum(vn), "cumsum int64")
    sv, si = torch.sort(dv, stable=True)
    assert_equal(sv.cpu().numpy(), np.sort(vn, kind="stable"), "sort values")
    assert_equal(si.cpu().numpy(), np.argsort(vn, kind="stable"), "stable sort indices")
    f = torch.randn(300_000, generator=g)
    fs, _ = torch.sort(f.to(dev), descending=True)
    assert_equal(fs.cpu().numpy(), np.sort(f.numpy())[::-1], "float sort descending")
    u = torch.unique(dv).cpu().numpy()
    assert_equal(u, np.unique(vn), "unique")
    fc = torch.cumsum(torch.ones(100_000, device=dev), 0).cpu().numpy()
    assert_equal(fc, np.arange(1, 100_001, dtype=np.float32), "float cumsum of ones")
    c.result("cumsum_sort", f"cumsum: {int_checksum(cs)} idx: {int_checksum(si.cpu())} unique: {int_checksum(u)}")
    c.result("cumsum_sort", f"fsort: {checksum(fs.cpu())}")


def pinned_nonblocking():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 1 << 20, generator=g).pin_memory()
    if not x.is_pinned():
        raise AssertionError("pin_memory() returned unpinned memory")
    out = torch.empty(x.shape, pin_memory=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        d = x.to(dev, non_blocking=True)
        y = d * 2 + 1
        out.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record(s)
    done.synchronize()
    assert_equal(out.numpy(), (x * 2 + 1).numpy(), "pinned non_blocking round trip")
    # The other way round: many small non_blocking copies on the default stream, then one sync.
    parts = [torch.arange(i * 1000, (i + 1) * 1000, dtype=torch.int64).pin_memory() for i in range(32)]
    dev_parts = [p.to(dev, non_blocking=True) for p in parts]
    whole = torch.cat(dev_parts).cpu()
    assert_equal(whole.numpy(), np.arange(32_000), "32 non_blocking uploads")
    c.result("pinned_nonblocking", f"{checksum(out)} {int_checksum(whole)}")


def cuda_graph():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev)
    static_in = torch.zeros(32, 64, device=dev)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = model(static_in) * 2
    g = torch.Generator().manual_seed(8)
    outs = []
    for _ in range(3):
        data = torch.randn(32, 64, generator=g).to(dev)
        static_in.copy_(data)
        graph.replay()
        with torch.no_grad():
            eager = model(data) * 2
        torch.cuda.synchronize()
        assert_close(np64(static_out), np64(eager), rtol=1e-5, atol=1e-6, what="graph replay vs eager")
        outs.append(static_out.cpu().clone())
    c.result("cuda_graph", checksum(torch.stack(outs)))


c.run("device", device, kernels=False)
c.run("copies", copies, kernels=False)
c.run("first_kernel", first_kernel)
c.run("matmul", matmul)
c.run("conv2d", conv2d)
c.run("train_step", train_step)
c.run("cumsum_sort", cumsum_sort)
c.run("pinned_nonblocking", pinned_nonblocking)
c.run("cuda_graph", cuda_graph)
c.finish()
