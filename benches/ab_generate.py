#!/usr/bin/env python3
"""Two tsd binaries' `tsd eval --protocol generate` side by side, interleaved (an A/B of a change).

Each round runs A and B once each on the same examples, alternating which goes first, and times
each process's wall clock (start-up included), CPU seconds and peak RSS (its own rusage, from
wait4). `--per-task 0` times start-up alone (the model loaded, nothing evaluated). Reports B/A per round, the median and its distribution-free ~95 % interval (binomial order
statistics), and whether the two gave identical responses on every example (a change meant to
keep the outputs must). Standard library only.

Usage: python3 benches/ab_generate.py --a OLD_TSD --b NEW_TSD [--rounds 9] [--batch-size 16]
         [--per-task 8] [--tasks boolq,ARC-Easy] [--data DIR] [--out FILE]
         [--label-a COMMIT] [--label-b COMMIT]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def version(tsd: str) -> str:
    """The binary's `--version` line."""
    return subprocess.run([tsd, "--version"], capture_output=True, text=True).stdout.strip()


def median_interval(xs: list, level: float = 0.95):
    """Order statistics (lo, hi, coverage) around the median: the widest symmetric pair whose
    binomial coverage reaches `level`, or None below 6 values."""
    n = len(xs)
    if n < 6:
        return None
    s = sorted(xs)
    cdf = lambda k: sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # noqa: E731
    best = None
    for k in range(0, n // 2):
        cover = 1 - 2 * cdf(k)
        if cover >= level:
            best = (s[k], s[n - 1 - k], cover)
    return best


def run(tsd: str, args: list, pred_dir: str) -> tuple:
    """(wall s, CPU s, peak RSS bytes, {(task, index): output}) of one `tsd eval` process (its own
    rusage, from wait4)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([tsd, "eval", "-q", "--json", *args, "--predictions", pred_dir],
                             stdout=out, stderr=err)
        _, status, use = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{tsd} eval exited {p.returncode}: {err.read().decode()[-2000:]}")
    cpu = use.ru_utime + use.ru_stime
    rss = use.ru_maxrss * 1024  # KiB on Linux
    outputs = {}
    for f in Path(pred_dir).glob("*.jsonl"):
        for line in filter(None, f.read_text().splitlines()):
            pred = json.loads(line)
            outputs[(f.stem, pred["index"])] = pred["output"]
    return wall, cpu, rss, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the baseline tsd binary")
    ap.add_argument("--b", required=True, help="the changed tsd binary")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--per-task", type=int, default=8)
    ap.add_argument("--tasks", default="boolq,ARC-Easy")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("TSD_DATA", ROOT.parent / "shared/data/commonsense")))
    ap.add_argument("--out", type=Path, default=None, help="where to write the record [default: print only]")
    ap.add_argument("--label-a", default="", help="what binary A is, for the record (e.g. its commit)")
    ap.add_argument("--label-b", default="", help="what binary B is, for the record (e.g. its commit)")
    a = ap.parse_args()
    args = ["--data", str(a.data), "--tasks", a.tasks, "--limit", str(a.per_task), "--protocol", "generate",
            "--batch-size", str(a.batch_size)]
    walls = {"a": [], "b": []}
    cpus = {"a": [], "b": []}
    rss = {"a": [], "b": []}
    identical = True
    for r in range(a.rounds):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        outs = {}
        for side in order:
            with tempfile.TemporaryDirectory() as d:
                w, c, m, o = run(getattr(a, side), args, d)
            walls[side].append(w)
            cpus[side].append(c)
            rss[side].append(m)
            outs[side] = o
        identical &= outs["a"] == outs["b"]
    wall_ratio = [b / x for x, b in zip(walls["a"], walls["b"])]
    cpu_ratio = [b / x for x, b in zip(cpus["a"], cpus["b"])]
    rec = {
        "what": "tsd eval --protocol generate, binary B against binary A, interleaved rounds (order alternating); "
                "wall and CPU seconds of the whole process, start-up included",
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "args": args[2:],
        "a": {"label": a.label_a, "version": version(a.a)},
        "b": {"label": a.label_b, "version": version(a.b)},
        "rounds": a.rounds,
        "load_average": os.getloadavg(),
        "wall_s": walls,
        "cpu_s": cpus,
        "peak_rss_bytes": rss,
        "b_over_a_wall_per_round": wall_ratio,
        "b_over_a_wall_median": statistics.median(wall_ratio),
        "b_over_a_wall_ci95": median_interval(wall_ratio),
        "b_over_a_cpu_median": statistics.median(cpu_ratio),
        "b_over_a_cpu_ci95": median_interval(cpu_ratio),
        "identical_outputs": identical,
    }
    text = json.dumps(rec, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
