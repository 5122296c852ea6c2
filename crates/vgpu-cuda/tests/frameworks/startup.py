"""Start-up cost of a framework: `python startup.py NAME` imports it, runs its first kernel
(PyTorch's `torch.ones(1, device="cuda")`-style) and waits for it, then prints
`startup: NAME import=S first_kernel=S total=S` (seconds). With VGPU_FW_KERNELS=0 the first
"kernel" is a host-to-device copy (vgpud's cpu backend runs no program kernels).
"""

import os
import sys
import time

KERNELS = os.environ.get("VGPU_FW_KERNELS", "1") != "0"


def torch_first():
    import torch

    t = time.monotonic()
    if KERNELS:
        torch.ones(1, device="cuda")
    else:
        torch.tensor([1.0]).to("cuda")
    torch.cuda.synchronize()
    return t


def cupy_first():
    import cupy

    t = time.monotonic()
    if KERNELS:
        cupy.ones(1)
    else:
        cupy.asarray([1.0])
    cupy.cuda.Device().synchronize()
    return t


def jax_first():
    import jax.numpy as jnp

    t = time.monotonic()
    (jnp.ones(1) + 1).block_until_ready()
    return t


def numba_first():
    import numpy as np

    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack  # numba-cuda 0.30.4 on NumPy 2.5: see check_numba.py
    from numba import cuda

    t = time.monotonic()
    d = cuda.to_device(np.ones(1))
    if KERNELS:

        @cuda.jit
        def one(x):
            x[0] = 1.0

        one[1, 1](d)
    cuda.synchronize()
    return t


def cuda_bindings_first():
    from cuda.bindings import driver as drv

    t = time.monotonic()
    drv.cuInit(0)
    _, dev = drv.cuDeviceGet(0)
    _, ctx = drv.cuDevicePrimaryCtxRetain(dev)
    drv.cuCtxSetCurrent(ctx)
    _, p = drv.cuMemAlloc(4)
    drv.cuMemsetD32(p, 1, 1)
    drv.cuCtxSynchronize()
    return t


FIRST = {
    "torch": torch_first,
    "cupy": cupy_first,
    "jax": jax_first,
    "numba": numba_first,
    "cuda_bindings": cuda_bindings_first,
}


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in FIRST:
        sys.exit(f"usage: startup.py {{{','.join(FIRST)}}}")
    t0 = time.monotonic()
    t1 = FIRST[name]()  # imports, then starts the clock of the first kernel
    t2 = time.monotonic()
    print(f"startup: {name} import={t1 - t0:.3f} first_kernel={t2 - t1:.3f} total={t2 - t0:.3f}", flush=True)


if __name__ == "__main__":
    main()
