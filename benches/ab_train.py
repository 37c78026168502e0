#!/usr/bin/env python3
"""Two tsd binaries' training step side by side, interleaved (an A/B of a change).

Each round runs `tsd bench train --single METHOD` once with A and once with B (fresh processes,
order alternating) and reads each one's median step (wall), median CPU seconds per step (all
threads) and peak RSS. Reports B/A per round, the median and its distribution-free ~95 % interval
(binomial order statistics, as benches/ab_generate.py). Timing only: whether a change keeps the
bits is for the tests and for comparing `tsd train` checkpoints. Standard library only.

Usage: python3 benches/ab_train.py --a OLD_TSD --b NEW_TSD [--rounds 9] [--steps 6]
         [--method lora] [--out FILE] [--label-a COMMIT] [--label-b COMMIT]
"""

import argparse
import json
import os
import statistics
import subprocess

from ab_generate import median_interval, version


def step(tsd: str, method: str, steps: int) -> dict:
    """One `tsd bench train --single` process's record (stdout JSON)."""
    p = subprocess.run([tsd, "bench", "train", "--single", method, "--steps", str(steps)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{tsd} bench train exited {p.returncode}: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the baseline tsd binary")
    ap.add_argument("--b", required=True, help="the changed tsd binary")
    ap.add_argument("--rounds", type=int, default=9, help="A and B once each per round [default: 9]")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per process [default: 6]")
    ap.add_argument("--method", default="lora", help="lora or lora-dash [default: lora]")
    ap.add_argument("--out", default=None, help="where to write the record [default: print only]")
    ap.add_argument("--label-a", default="", help="what binary A is, for the record (e.g. its commit)")
    ap.add_argument("--label-b", default="", help="what binary B is, for the record (e.g. its commit)")
    a = ap.parse_args()
    wall = {"a": [], "b": []}
    cpu = {"a": [], "b": []}
    rss = {"a": [], "b": []}
    load_before = os.getloadavg()
    for r in range(a.rounds):
        for side in (("a", "b") if r % 2 == 0 else ("b", "a")):
            rec = step(getattr(a, side), a.method, a.steps)
            wall[side].append(rec["median_step_seconds"])
            cpu[side].append(statistics.median(rec["step_cpu_seconds"]))
            rss[side].append(rec["peak_rss_bytes"])
    wall_ratio = [b / x for x, b in zip(wall["a"], wall["b"])]
    cpu_ratio = [b / x for x, b in zip(cpu["a"], cpu["b"])]
    out = {
        "what": f"tsd bench train --single {a.method} --steps {a.steps}, binary B against binary A, "
                "interleaved rounds (order alternating); each process's median step (wall), median "
                "CPU seconds per step (all threads) and peak RSS",
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "threads": os.cpu_count(),
        "a": {"label": a.label_a, "version": version(a.a)},
        "b": {"label": a.label_b, "version": version(a.b)},
        "rounds": a.rounds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "median_step_s": wall,
        "median_step_cpu_s": cpu,
        "peak_rss_bytes": rss,
        "b_over_a_step_per_round": wall_ratio,
        "b_over_a_step_median": statistics.median(wall_ratio),
        "b_over_a_step_ci95": median_interval(wall_ratio),
        "b_over_a_cpu_median": statistics.median(cpu_ratio),
        "b_over_a_cpu_ci95": median_interval(cpu_ratio),
        "b_over_a_peak_rss_median": statistics.median(b / x for x, b in zip(rss["a"], rss["b"])),
    }
    text = json.dumps(out, indent=2)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
