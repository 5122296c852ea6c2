"""JAX (jax-cuda13-plugin): the GPU backend and its devices, host-device transfers, `jnp.dot`
(full fp32 precision and JAX's default), a `jit`-compiled function and its gradient.

Run natively and through vgpu's libcuda.so.1; `result:` lines must be identical: integer
results exact, float results rounded to 5 significant digits (fwcheck.SIG; JAX's default
precision, which may use TF32 on this GPU, to 3). Every sub-test checks its values against a
NumPy float64 reference with the tolerance it states. JAX's default memory preallocation is
left on (75 % of what the device reports: the VM's quota through vgpu).
"""
# framework-module: jax

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from fwcheck import Checks, assert_close, assert_equal, checksum, int_checksum  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

c = Checks("jax")
HIGHEST = jax.lax.Precision.HIGHEST


def devices():
    devs = jax.devices()
    if not devs or devs[0].platform != "gpu":
        raise AssertionError(f"no GPU backend: {devs}")
    c.result("devices", f"platform={devs[0].platform} n={len(devs)}")
    c.info("devices", f"kind={devs[0].device_kind!r} jax={jax.__version__} backend={jax.default_backend()}")


def transfers():
    rng = np.random.default_rng(21)
    a = rng.integers(-(1 << 40), 1 << 40, size=100_000, dtype=np.int64)
    f = rng.standard_normal((300, 200)).astype(np.float32)
    # int64 needs x64; int32 halves are what JAX keeps by default.
    a32 = (a % (1 << 31)).astype(np.int32)
    da = jax.device_put(a32)
    df = jax.device_put(f)
    assert_equal(np.asarray(da), a32, "int32 round trip")
    assert_equal(np.asarray(df), f, "float32 round trip")
    c.result("transfers", f"{int_checksum(np.asarray(da))} {checksum(np.asarray(df))}")


def dot():
    rng = np.random.default_rng(22)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    r = np.asarray(jnp.dot(a, b, precision=HIGHEST))
    assert_close(r, ref, rtol=1e-4, atol=1e-3, what="jnp.dot (HIGHEST)")
    # JAX's default precision may round inputs to TF32 (10-bit mantissa): about 1e-3 of
    # each |term|, atol 0.2 at |entries| ~ 23.
    d = np.asarray(jnp.dot(a, b))
    assert_close(d, ref, rtol=1e-2, atol=0.2, what="jnp.dot (default precision)")
    c.result("dot", f"highest: {checksum(r)} default: {checksum(d, 3)}")


@jax.jit
def layer(x, w, b):
    return jnp.tanh(jnp.dot(x, w, precision=HIGHEST) + b).sum(axis=1)


def loss(w, x, y):
    return jnp.mean((jnp.tanh(jnp.dot(x, w, precision=HIGHEST)) - y) ** 2)


def jit():
    rng = np.random.default_rng(23)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    w = (rng.standard_normal((128, 64)) * 0.1).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    y = rng.standard_normal((256, 64)).astype(np.float32)
    out = np.asarray(layer(x, w, b))
    x64, w64, b64, y64 = (v.astype(np.float64) for v in (x, w, b, y))
    ref = np.tanh(x64 @ w64 + b64).sum(axis=1)
    assert_close(out, ref, rtol=1e-4, atol=1e-4, what="jit layer")
    out2 = np.asarray(layer(x * 2, w, b))  # the compiled function again, new data
    assert_close(out2, np.tanh(2 * x64 @ w64 + b64).sum(axis=1), rtol=1e-4, atol=1e-4, what="jit layer, second call")
    grad = np.asarray(jax.jit(jax.grad(loss))(w, x, y))
    t = np.tanh(x64 @ w64)
    gref = x64.T @ (2 * (t - y64) * (1 - t**2)) / t.size
    assert_close(grad, gref, rtol=1e-3, atol=1e-6, what="jit(grad)")
    c.result("jit", f"layer: {checksum(out)} again: {checksum(out2)} grad: {checksum(grad)}")


c.run("devices", devices)
c.run("transfers", transfers)
c.run("dot", dot)
c.run("jit", jit)
c.finish()
