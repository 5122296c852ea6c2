"""The verdicts of the gpu-check stage `tenants` (scripts/gpu-check/run.sh), from what the stage
left in one folder; the Python standard library only.

  python3 tenants_report.py DIR [--weights 3,1] [--tolerance 0.05] [--json FILE]

DIR holds the outputs of tenant_torch.py (native.txt, native-fault.txt, a.txt, b.txt,
fault.txt), their exit statuses (rc-NAME, one integer each) and vgpud's `vgpuctl stats` taken
at the edges of each measured window (snap-NAME.json: {"t": EPOCH, "stats": {...}}):
  alone0/alone1  tenant A alone through vgpu                                (reported)
  w0/w1          A (pool weight wa) and B (pool weight wb), same priority
  p0/p1          the same, B raised above A (strict priority, no starvation guard)
  fault          after B's fault, A still running
Each window's shares come from the VMs' `device_ns` (vgpud's measured device time: CUDA event
pairs around every kernel, `cuda_kernel_accounting`) between its two snapshots.

Checks, one line each, `check NAME PASS|FAIL note`:
  native    the load alone on NVIDIA's driver ran exact (its rate is the reference)
  weights   |share_A - wa/(wa+wb)| <= tolerance (absolute, in share: 0.05 = 5 percentage points)
  priority  share_B >= 1 - tolerance (the top class alone may put work on the device)
  exact     both loads PASS (every product bit-identical to the exact one, operands intact),
            their `result: product` lines equal the native run's, A still finished products
            after B's fault
  fault     B's fault surfaced as CUDA_ERROR_ILLEGAL_ADDRESS (sticky), vgpud kept serving A
Exit status 0 when every check passed.
"""

import argparse
import json
import os
import re
import sys


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def rc_of(d, name):
    t = read(os.path.join(d, f"rc-{name}")).strip()
    return int(t) if re.fullmatch(r"-?\d+", t) else None


def snapshot(d, name):
    """(epoch seconds, {vm name: vm stats}) of snap-NAME.json, or None."""
    t = read(os.path.join(d, f"snap-{name}.json"))
    try:
        s = json.loads(t)
        return float(s["t"]), {v["name"]: v for v in s["stats"]["vms"]}
    except (ValueError, KeyError, TypeError):
        return None


def progress(text):
    """[(epoch, iterations)] of a load's `progress:` lines."""
    return [
        (float(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"^progress: t=([0-9.]+) iterations=(\d+)", text, re.M)
    ]


def iterations_at(points, t):
    """Products finished by time t (linear between progress lines; None outside them)."""
    if not points or t < points[0][0] or t > points[-1][0]:
        return None
    for (t0, i0), (t1, i1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return i0 + (i1 - i0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
    return float(points[-1][1])


def rate(points, t0, t1):
    a, b = iterations_at(points, t0), iterations_at(points, t1)
    if a is None or b is None or t1 <= t0:
        return None
    return (b - a) / (t1 - t0)


def field(text, key):
    """The first line that starts with the word(s) `key` (followed by a blank, a colon or its
    end), or None."""
    m = re.search(rf"^{re.escape(key)}(?:[ :].*)?$", text, re.M)
    return m.group(0) if m else None


def fault_line(text):
    """What a fault run's fault did (`launch=... sync=... after=...`), or None. The warm-up's
    result line starts with `result: fault` too."""
    m = re.search(r"^result: fault (launch=.*)$", text, re.M)
    return m.group(1) if m else None


def load_rate(text):
    m = re.search(r"^load: .* rate=([0-9.]+)/s", text, re.M)
    return float(m.group(1)) if m else None


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


class Window:
    """Device time of VMs a and b between two snapshots."""

    def __init__(self, d, start, end, a="tenant-a", b="tenant-b"):
        s0, s1 = snapshot(d, start), snapshot(d, end)
        self.ok = s0 is not None and s1 is not None
        self.error = "" if self.ok else f"no vgpuctl stats at snap-{start} or snap-{end}"
        if not self.ok:
            return
        self.t0, self.t1 = s0[0], s1[0]
        self.wall = self.t1 - self.t0
        self.ns = {}
        for vm in (a, b):
            if vm in s0[1] and vm in s1[1]:
                self.ns[vm] = s1[1][vm]["device_ns"] - s0[1][vm]["device_ns"]
        self.devices = {vm: s1[1].get(vm, {}).get("device") for vm in (a, b)}
        self.status = {vm: s1[1].get(vm, {}).get("status") for vm in (a, b)}
        total = sum(self.ns.values())
        self.share = {vm: (n / total if total else None) for vm, n in self.ns.items()}
        self.busy = total / 1e9 / self.wall if self.wall > 0 else None

    def json(self):
        if not self.ok:
            return {"error": self.error}
        return {
            "t0": self.t0,
            "t1": self.t1,
            "wall_s": self.wall,
            "device_ns": self.ns,
            "share": self.share,
            "gpu_busy": self.busy,
            "device": self.devices,
            "status": self.status,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--weights", default="3,1", help="pool weights of A and B (default 3,1)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="absolute share (default 0.05)")
    ap.add_argument("--json", help="write the numbers here")
    o = ap.parse_args()
    d = o.dir
    wa, wb = (float(x) for x in o.weights.split(","))
    tol = o.tolerance
    txt = {n: read(os.path.join(d, f"{n}.txt")) for n in ("native", "native-fault", "a", "b", "fault")}
    prog = {n: progress(txt[n]) for n in ("a", "b")}
    checks = []
    res = {"weights": [wa, wb], "tolerance": tol}

    def check(name, ok, note):
        checks.append((name, ok, note))
        res.setdefault("checks", {})[name] = {"pass": ok, "note": note}

    # native: the reference throughput; A alone through vgpu next to it (both reported).
    native_rate = load_rate(txt["native"])
    native_ok = rc_of(d, "native") == 0 and "\nPASS" in "\n" + txt["native"]
    nf = fault_line(txt["native-fault"])
    alone = Window(d, "alone0", "alone1")
    a_alone = rate(prog["a"], alone.t0, alone.t1) if alone.ok else None
    res["native"] = {"rate_per_s": native_rate, "exit": rc_of(d, "native"), "fault": nf}
    res["alone"] = dict(alone.json(), rate_a_per_s=a_alone)
    ratio = a_alone / native_rate if a_alone and native_rate else None
    check(
        "native",
        native_ok,
        f"load alone on NVIDIA's driver: {fmt(native_rate, '.2f')} products/s"
        f"{'' if native_ok else ' (exit ' + str(rc_of(d, 'native')) + ', not exact or not run)'}"
        f"; A alone through vgpu: {fmt(a_alone, '.2f')} ({fmt(ratio)}× native); the fault "
        f"natively: {nf or 'no result line'}",
    )

    # weights.
    w = Window(d, "w0", "w1")
    want = wa / (wa + wb)
    res["weights_window"] = w.json()
    if not w.ok or w.share.get("tenant-a") is None:
        check("weights", False, w.error or f"no device time measured for the two VMs ({w.ns})")
    else:
        ra, rb = rate(prog["a"], w.t0, w.t1), rate(prog["b"], w.t0, w.t1)
        sa = w.share["tenant-a"]
        err = sa - want
        same_gpu = w.devices["tenant-a"] is not None and w.devices["tenant-a"] == w.devices["tenant-b"]
        it_share = ra / (ra + rb) if ra is not None and rb is not None and ra + rb > 0 else None
        res["weights_window"].update(
            expected_share_a=want,
            error=err,
            rate_a_per_s=ra,
            rate_b_per_s=rb,
            products_share_a=it_share,
            combined_vs_native=(ra + rb) / native_rate if ra and rb and native_rate else None,
        )
        ok = abs(err) <= tol and same_gpu
        check(
            "weights",
            ok,
            f"pools {wa:g}:{wb:g}: device time A {w.ns['tenant-a'] / 1e9:.3f} s, B "
            f"{w.ns['tenant-b'] / 1e9:.3f} s over {w.wall:.1f} s: share A {sa:.4f} (want "
            f"{want:.4f}, error {err * 100:+.2f} points, limit ±{tol * 100:g} points); GPU busy "
            f"{fmt(w.busy)}; products/s A {fmt(ra, '.2f')} B {fmt(rb, '.2f')} (share by products "
            f"{fmt(it_share, '.4f')}; together {fmt(res['weights_window']['combined_vs_native'])}"
            f"× native alone)"
            + ("" if same_gpu else f"; NOT ON ONE GPU: devices {w.devices}"),
        )

    # priority: B above A.
    p = Window(d, "p0", "p1")
    res["priority_window"] = p.json()
    if not p.ok or p.share.get("tenant-b") is None:
        check("priority", False, p.error or f"no device time measured for the two VMs ({p.ns})")
    else:
        sb = p.share["tenant-b"]
        ra, rb = rate(prog["a"], p.t0, p.t1), rate(prog["b"], p.t0, p.t1)
        res["priority_window"].update(rate_a_per_s=ra, rate_b_per_s=rb, min_share_b=1 - tol)
        check(
            "priority",
            sb >= 1 - tol,
            f"B (weight {wb:g}) raised above A: share B {sb:.4f} (want >= {1 - tol:.2f}), device "
            f"time A {p.ns['tenant-a'] / 1e9:.3f} s, B {p.ns['tenant-b'] / 1e9:.3f} s over "
            f"{p.wall:.1f} s; products/s A {fmt(ra, '.2f')} B {fmt(rb, '.2f')}",
        )

    # exact: every product of both loads.
    ref = field(txt["native"], "result: product")
    why = []
    for n in ("a", "b"):
        if rc_of(d, n) != 0 or "\nPASS" not in "\n" + txt[n]:
            why.append(f"{n.upper()} exit {rc_of(d, n)}: {field(txt[n], 'FAIL') or field(txt[n], 'load') or 'no PASS'}")
        got = field(txt[n], "result: product")
        if got is None:
            why.append(f"{n.upper()} printed no product line")
        elif ref and got != ref:
            why.append(f"{n.upper()}'s product line differs from the native one ({got})")
    fault_t = None
    m = re.search(r"^fault: t=([0-9.]+)", txt["fault"], re.M)
    if m:
        fault_t = float(m.group(1))
    after = None
    if fault_t is None:
        why.append("no fault time from B's fault run: A's results say nothing about a fault")
    elif prog["a"]:
        after = prog["a"][-1][1] - max((i for t, i in prog["a"] if t <= fault_t), default=0)
        if prog["a"][-1][0] <= fault_t or after <= 0:
            why.append("A finished no products after B's fault")
    stats = {}
    for n in ("a", "b"):
        m = re.search(r"^load: iterations=(\d+) mismatched=(\d+)", txt[n], re.M)
        stats[n] = (int(m.group(1)), int(m.group(2))) if m else None
    res["exact"] = {
        "a": stats["a"],
        "b": stats["b"],
        "a_products_after_fault": after,
        "native_product": ref,
    }
    check(
        "exact",
        not why,
        "; ".join(why)
        or f"A {stats['a'][0]} products, B {stats['b'][0]}, none mismatched; A finished {after} "
        f"after B's fault; product digests equal native's",
    )

    # fault: B's error, and vgpud kept A going.
    # The fault's own line (the warm-up's line starts the same way).
    fr = fault_line(txt["fault"])
    fs = snapshot(d, "fault")
    why = []
    if rc_of(d, "fault") != 0 or "sync=CUDA_ERROR_ILLEGAL_ADDRESS" not in (fr or ""):
        why.append(f"B's fault run exit {rc_of(d, 'fault')}: {fr or field(txt['fault'], 'FAIL') or 'no result line'}")
    a_state = fs[1].get("tenant-a", {}) if fs else {}
    if not fs:
        why.append("no vgpuctl stats after the fault (vgpud gone?)")
    elif not a_state.get("connected") or a_state.get("status") != "ready":
        why.append(f"A after B's fault: connected {a_state.get('connected')}, status {a_state.get('status')}")
    b_state = fs[1].get("tenant-b", {}) if fs else {}
    res["fault"] = {
        "result": fr,
        "native_result": nf,
        "exit": rc_of(d, "fault"),
        "a_after": {k: a_state.get(k) for k in ("status", "connected", "errors")},
        "b_after": {k: b_state.get(k) for k in ("status", "connected", "errors", "resets")},
    }
    same = " (as natively)" if fr and fr == nf else f" (natively: {nf})"
    check(
        "fault",
        not why,
        "; ".join(why)
        or f"B: {fr}{same}; A stayed ready through it, "
        f"B {b_state.get('status')} ({b_state.get('errors')} errors)",
    )

    res["ok"] = all(ok for _, ok, _ in checks)
    if o.json:
        with open(o.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    for name, ok, note in checks:
        print(f"check {name} {'PASS' if ok else 'FAIL'} {note}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
