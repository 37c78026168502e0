#!/usr/bin/env python3
"""torch.matmul on given product shapes, the PyTorch peer of `tsd bench roofline`.

`tsd bench roofline --torch-python PATH` runs this file (compiled into the binary, fed on stdin)
with the shapes it times itself, the same thread count (torch.set_num_threads) and the same number
of samples. Each product is [m, k] @ [k, n] in float32 (and bfloat16 with --bf16); a shape whose
`rhs_transposed` is true multiplies by the transpose of an [n, k] weight, as a linear's forward
does. A sample repeats the product until it lasts >= 10 ms, after one warm-up product; the median
sample and the fastest are reported. Prints JSON on stdout.

Usage: python benches/torch_matmul.py --shapes '[{"name": "up", "m": 512, "k": 576, "n": 1536,
       "rhs_transposed": true}]' [--threads 2 --runs 10 --bf16]
"""

import argparse
import json
import statistics
import time

import torch


def time_samples(f, runs: int) -> list:
    t = time.perf_counter()
    f()
    once = max(time.perf_counter() - t, 1e-7)
    reps = min(max(1, int(0.01 / once + 0.999)), 10_000)
    secs = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        secs.append((time.perf_counter() - t) / reps)
    return secs


def samples(s: dict, dtype: torch.dtype, runs: int) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["m"], s["k"], generator=g).to(dtype)
    if s["rhs_transposed"]:
        w = torch.randn(s["n"], s["k"], generator=g).to(dtype).t()
    else:
        w = torch.randn(s["k"], s["n"], generator=g).to(dtype)
    with torch.inference_mode():
        return time_samples(lambda: torch.matmul(x, w), runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", required=True, help="JSON list of {name, m, k, n, rhs_transposed}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--bf16", action="store_true", help="also time bfloat16")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = []
    for s in json.loads(a.shapes):
        f32 = samples(s, torch.float32, a.runs)
        r = {"name": s["name"], "f32_median_seconds": statistics.median(f32), "f32_best_seconds": min(f32)}
        if a.bf16:
            bf16 = samples(s, torch.bfloat16, a.runs)
            r["bf16_median_seconds"] = statistics.median(bf16)
            r["bf16_best_seconds"] = min(bf16)
        results.append(r)
    cap = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpu_capability": cap, "results": results}))


if __name__ == "__main__":
    main()
