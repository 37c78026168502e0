#!/usr/bin/env python3
"""TsdCallback's overhead on the training step: the tiny LLaMA (tests/fixtures/tiny-llama), LoRA
r = 4 on q,k,v,up,down, CPU, a Trainer run of STEPS steps saving every SAVE steps, with and without
``TsdCallback``, alternated ROUNDS times. Per step: wall time from on_step_begin to on_step_end of
every step (the training step itself, the save excluded: the Trainer saves after on_step_end) and
the run's train_runtime (saves, logging and the callback's hooks included); the callback's own
seconds inside its hooks. Writes reproductions/bench/callback_overhead.json.

Usage (the tsd package installed, e.g. by scripts/python-tests.sh, in a venv with torch,
transformers and peft)::

    python benches/callback_overhead.py [--steps 120 --save 10 --rounds 3]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python" / "tests"))

from conftest import make_trainer  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from tsd.callback import TsdCallback  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t)


def one(steps, save, with_cb, nice, threads, idle):
    with tempfile.TemporaryDirectory() as d:
        timer = StepTimer()
        cbs = [timer]
        cb = None
        if with_cb:
            cb = TsdCallback(
                base=str(ROOT / "tests/fixtures/tiny-llama"), nice=nice, idle=idle, threads=threads
            )
            cbs.append(cb)
        t = make_trainer(Path(d) / "run", cbs, max_steps=steps, save_steps=save, logging_steps=1)
        out = t.train()
        res = {
            "median_step_s": statistics.median(timer.times[1:]),
            "mean_step_s": statistics.fmean(timer.times[1:]),
            "train_runtime_s": out.metrics["train_runtime"],
        }
        if cb is not None:
            res["hook_seconds"] = cb.hook_seconds
            res["tracks"] = len(cb.track_runs)
            res["track_seconds"] = [round(r["seconds"], 3) for r in cb.track_runs]
            res["tsd_entries"] = sum("tsd/checkpoint_step" in e for e in t.state.log_history)
            res["failures"] = cb.failures
        return res


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--save", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--no-idle", action="store_true", help="TsdCallback(idle=False): nice only")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first [default: 1]")
    ap.add_argument("--threads", type=int, default=None, help="TsdCallback(threads=…) [default: every core]")
    ap.add_argument("--out", type=Path, default=ROOT / "reproductions/bench/callback_overhead.json")
    a = ap.parse_args()
    os.environ.setdefault("TSD_HOME", tempfile.mkdtemp(prefix="tsd-home-"))
    idle = not a.no_idle
    for _ in range(a.warmup):
        for k in ("without", "with"):
            one(a.steps, a.save, k == "with", a.nice, a.threads, idle)
    runs = {"without": [], "with": []}
    for _ in range(a.rounds):
        for k in ("without", "with"):
            runs[k].append(one(a.steps, a.save, k == "with", a.nice, a.threads, idle))
            print(k, json.dumps(runs[k][-1]), flush=True)
    med = lambda k, f: statistics.median(r[f] for r in runs[k])  # noqa: E731
    step_without, step_with = med("without", "median_step_s"), med("with", "median_step_s")
    rt_without, rt_with = med("without", "train_runtime_s"), med("with", "train_runtime_s")
    hooks = statistics.median(sum(r["hook_seconds"].values()) for r in runs["with"])
    summary = {
        "command": "python benches/callback_overhead.py " + " ".join(sys.argv[1:]),
        "setting": f"tiny LLaMA, LoRA r=4 q,k,v,up,down, CPU f32, batch 8 x 24 tokens, {a.steps} steps, save every {a.save}, logging every step, {a.rounds} rounds alternated after {a.warmup} unrecorded; TsdCallback(nice={a.nice}, idle={idle}, threads={a.threads})",
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end",
        "median_step_s": {"without": step_without, "with": step_with},
        "step_overhead_pct": 100 * (step_with / step_without - 1),
        "train_runtime_s": {"without": rt_without, "with": rt_with},
        "runtime_overhead_pct": 100 * (rt_with / rt_without - 1),
        "hook_seconds_per_run": hooks,
        "hook_pct_of_runtime": 100 * hooks / rt_with,
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
