"""What the framework checks (check_*.py) share: sub-tests reported one by one, and
deterministic `result:` lines.

Every sub-test prints `PASS name` or `FAIL name: exception`; one that raises does not stop the
next (a driver function missing for one feature must not hide the others). `result:` lines
hold only values that the native run and the vgpu run must print identically: exact integers,
or floating-point checksums rounded to a stated number of significant digits where the order
of floating-point operations may differ. `info:` and `time:` lines are not compared.

VGPU_FW_KERNELS=0 skips the sub-tests that launch kernels (vgpud's cpu backend, in CI, runs
copies, memsets and events but no program kernels); they print `SKIP name`.
"""

import os
import sys
import time
import traceback

KERNELS = os.environ.get("VGPU_FW_KERNELS", "1") != "0"

# Significant digits of the floating-point checksums (the tolerance native vs vgpu): the same
# library on the same GPU computes the same bits, so rounding only absorbs a different choice
# of algorithm (a cuBLAS heuristic, an atomic's order) at a relative 1e-4 or so.
SIG = 5


def fmt(x, sig=SIG):
    """A float rounded to `sig` significant digits, as text."""
    x = float(x)
    if x != x:
        return "nan"
    if x == 0:
        return "0"
    return f"{x:.{sig - 1}e}"


def checksum(a, sig=SIG):
    """Sum, sum of absolute values and a position-weighted sum of a float array (numpy,
    computed in float64), rounded: a transposed or shifted result changes the last one."""
    import numpy as np

    f = np.asarray(a, dtype=np.float64).ravel()
    w = (np.arange(f.size, dtype=np.float64) % 7) - 3.0
    return f"sum={fmt(f.sum(), sig)} abs={fmt(np.abs(f).sum(), sig)} w={fmt((f * w).sum(), sig)}"


def int_checksum(a):
    """Exact digest of an integer array: its length, sum and SHA-256 (as little-endian int64)."""
    import hashlib

    import numpy as np

    v = np.asarray(a).astype("<i8").ravel()
    return f"n={v.size} sum={int(v.sum())} sha={hashlib.sha256(v.tobytes()).hexdigest()[:16]}"


def assert_close(got, want, rtol, atol=0.0, what="result"):
    """Raises AssertionError naming the worst element when got and want differ beyond
    |got - want| <= atol + rtol * |want|."""
    import numpy as np

    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        raise AssertionError(f"{what}: shape {g.shape} != {w.shape}")
    err = np.abs(g - w)
    lim = atol + rtol * np.abs(w)
    bad = err > lim
    if bad.any():
        i = np.unravel_index(np.argmax(err - lim), g.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {g.size} elements off (rtol {rtol}, atol {atol}); "
            f"worst at {tuple(int(j) for j in i)}: {g[i]!r} vs {w[i]!r}"
        )


def assert_equal(got, want, what="result"):
    import numpy as np

    g = np.asarray(got)
    w = np.asarray(want)
    if g.shape != w.shape or not np.array_equal(g, w):
        raise AssertionError(f"{what}: differs from the reference ({g.shape} vs {w.shape})")


class Checks:
    """One framework's sub-tests: `run(name, fn)` each, then `finish()`."""

    def __init__(self, framework):
        self.framework = framework
        self.passed = []
        self.failed = []
        self.skipped = []
        self.t0 = time.monotonic()

    def result(self, sub, text):
        """A line the native and the vgpu run must print identically."""
        print(f"result: {self.framework}.{sub} {text}", flush=True)

    def info(self, sub, text):
        """A line for the reader, not compared (device names, memory sizes, versions)."""
        print(f"info: {self.framework}.{sub} {text}", flush=True)

    def run(self, name, fn, kernels=True):
        """Runs fn(); it raises (AssertionError or the framework's error) to fail."""
        full = f"{self.framework}.{name}"
        if kernels and not KERNELS:
            print(f"SKIP {full} (launches kernels; VGPU_FW_KERNELS=0)", flush=True)
            self.skipped.append(name)
            return
        t = time.monotonic()
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - every failure is reported, then the next
            if isinstance(e, KeyboardInterrupt):
                raise
            msg = f"{type(e).__name__}: {e}".replace("\n", " | ")
            print(f"FAIL {full}: {msg[:2000]}", flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            self.failed.append(name)
            return
        print(f"time: {full} {(time.monotonic() - t) * 1000:.1f} ms", flush=True)
        print(f"PASS {full}", flush=True)
        self.passed.append(name)

    def finish(self):
        """Prints the summary and exits: 0 when no sub-test failed and at least one ran."""
        n = len(self.passed)
        print(
            f"{self.framework}: {n} passed, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped ({time.monotonic() - self.t0:.1f} s)",
            flush=True,
        )
        if self.failed:
            print(f"{self.framework}: FAILED: {' '.join(self.failed)}", flush=True)
        ok = not self.failed and n > 0
        print("PASS" if ok else "FAIL", flush=True)
        sys.exit(0 if ok else 1)
