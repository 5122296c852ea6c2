"""PyTorch performance, run natively and through vgpu by the gpu-check stage `fw-bench`:

- ResNet-50 inference (torchvision, random weights), batch 64, bf16, channels-last: images/s;
- GPT-2 small (transformers' GPT2LMHeadModel from its default config, random weights), greedy
  decoding with batch 1 in eager mode, one token per forward with the KV cache: tokens/s;
- a ResNet-50 training step, batch 32, bf16 autocast, SGD with momentum: steps/s.

Each iteration is timed on its own, from before its first launch to after a synchronisation,
so `metric NAME P50 P99 UNIT` gives the rate at the median iteration and at the 99th
percentile (the slow tail). Nothing is downloaded; the weights come from fixed seeds, and
`result:` lines (GPT-2's greedy tokens) let the stage compare the two runs. Prints PASS last.
`python bench_torch.py [resnet50|gpt2|train ...]` runs a subset.
"""
# framework-module: torch

import hashlib
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

dev = torch.device("cuda")


def percentile(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def timed(step, warmup, iters):
    """Seconds of each of `iters` calls of `step` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def metric(name, per_iter, times, unit):
    """Prints the rate (`per_iter` units per iteration) at the median and the p99 iteration."""
    p50, p99 = percentile(times, 50), percentile(times, 99)
    print(f"metric {name} {per_iter / p50:.3f} {per_iter / p99:.3f} {unit}", flush=True)
    print(f"info {name}: iteration p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms, n={len(times)}")


def resnet50():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(dev, memory_format=torch.channels_last)
    model = model.to(torch.bfloat16).eval()
    x = torch.randn(64, 3, 224, 224, device=dev).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.no_grad():
            model(x)

    metric("resnet50_infer_bf16_b64", 64, timed(step, 10, 50), "images/s")


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).to(dev).eval()
    prompt = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1)).to(dev)
    tokens, times = [], []
    with torch.no_grad():
        for run in range(2):  # the first run warms up
            out = model(prompt, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            got = []
            for _ in range(128):
                t = time.perf_counter()
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                got.append(int(nxt.item()))  # the greedy step's one synchronisation
                if run:
                    times.append(time.perf_counter() - t)
            tokens = got
    digest = hashlib.sha256(str(tokens).encode()).hexdigest()[:16]
    print(f"result: gpt2 greedy tokens {digest} first {tokens[:8]}")
    metric("gpt2_decode_b1", 1, times, "tokens/s")


def train():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(dev, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 3, 224, 224, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (32,), generator=g).to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    metric("resnet50_train_step_b32_bf16", 1, timed(step, 5, 30), "steps/s")


BENCHES = {"resnet50": resnet50, "gpt2": gpt2, "train": train}


def main():
    names = sys.argv[1:] or list(BENCHES)
    failed = []
    for n in names:
        try:
            BENCHES[n]()
        except Exception as e:  # noqa: BLE001 - each benchmark reports its own failure
            print(f"FAIL {n}: {type(e).__name__}: {e}", flush=True)
            failed.append(n)
    if failed:
        print(f"{len(failed)} benchmark(s) failed: {' '.join(failed)}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
