#!/usr/bin/env python3
"""Time torch's dense float32 SVD on CPU as a reference for tsd's own SVD.

For each shape, ``torch.linalg.svd(W, full_matrices=False)`` is timed on a
seeded random normal W.  Shapes with both sides <= 2048 get one warm-up call
and the median of three timed calls; larger ones a single timed call.  The
result goes to ``reproductions/bench/torch_svd.json`` with the torch version,
thread count, CPU model and the load average around the run.

Other work on the machine (a concurrent build) inflates the timings badly,
since OpenMP threads that lose their core stall each other.  Every timed run
therefore records ``other_cpu_share``: the share of the machine's CPU time that
other processes used while it ran (0 = quiet machine), and OpenMP's wait policy
defaults to PASSIVE (set OMP_WAIT_POLICY=ACTIVE to override): with spinning
threads a 2048x2048 SVD took ~3x longer than with passive ones when other
processes held ~65% of the 2 cores.

Usage (from the repository root)::

    python benches/torch_svd.py [--threads 2] [--out reproductions/bench/torch_svd.json]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

# OMP_WAIT_POLICY is read when the OpenMP runtime starts, so set it before importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

SHAPES = [(1024, 1024), (2048, 2048), (4096, 4096), (11008, 4096), (4096, 11008)]
SMALL = 2048
REPEATS = 3


def cpu_model() -> str:
    """The ``Model name`` line of ``lscpu``."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_ticks() -> tuple:
    """(all CPUs' total ticks, their busy ticks, this process's ticks) from /proc."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields)
    busy = total - fields[3] - fields[4]  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return total, busy, int(own[11]) + int(own[12])  # utime + stime, all threads


def time_svd(w: torch.Tensor) -> dict:
    """One reduced SVD of ``w``: wall-clock seconds and the CPU share other processes took meanwhile."""
    total0, busy0, own0 = cpu_ticks()
    start = time.perf_counter()
    torch.linalg.svd(w, full_matrices=False)
    seconds = time.perf_counter() - start
    total1, busy1, own1 = cpu_ticks()
    other = ((busy1 - busy0) - (own1 - own0)) / max(total1 - total0, 1)
    return {"seconds": seconds, "other_cpu_share": round(max(other, 0.0), 3)}


def bench_shape(rows: int, cols: int, seed: int) -> dict:
    """Time one shape; returns the per-run records and the reported seconds."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    if max(rows, cols) <= SMALL:
        time_svd(w)
        runs = [time_svd(w) for _ in range(REPEATS)]
        seconds = statistics.median(r["seconds"] for r in runs)
    else:
        runs = [time_svd(w)]
        seconds = runs[0]["seconds"]
    return {"shape": [rows, cols], "seconds": seconds, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("reproductions/bench/torch_svd.json"), help="output JSON")
    parser.add_argument("--note", default="", help="free-text note on the machine state, stored in the JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = []
    for i, (rows, cols) in enumerate(SHAPES):
        rec = bench_shape(rows, cols, seed=i)
        print(
            f"{rows}x{cols}: {rec['seconds']:.3f} s  "
            f"runs={[(round(r['seconds'], 3), r['other_cpu_share']) for r in rec['runs']]}",
            flush=True,
        )
        results.append(rec)
    load_after = os.getloadavg()

    report = {
        "op": "torch.linalg.svd(W, full_matrices=False)",
        "dtype": "float32",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "method": f"max side <= {SMALL}: 1 warm-up, median of {REPEATS}; larger: 1 timed run",
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "note": args.note,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
