#!/usr/bin/env python3
"""Evaluation speed, tsd against transformers in one invocation (issue 11).

generate: transformers' `generate` at batch 1 with 4 beams and at most 32 new tokens, as
LLM-Adapters' `commonsense_evaluate.py` calls it (its prompt template, `GenerationConfig(num_beams=4)`,
no sampling, the text after "### Response:", the first label in it), then `tsd eval --protocol
generate` on the same examples at several `--batch-size`s. Records seconds per example for each,
the ratio, and whether every extracted prediction (and every response text) is identical.
Writes reproductions/bench/eval_generate.json.

loglik: `tsd eval --protocol loglik` with the shortcut (`--loglik-path auto`) and with the KV-cache
path (`--loglik-path general`) on the same examples: examples/s and the largest |Δ loglik| of any
label. Writes reproductions/bench/eval_loglik.json.

tsd's seconds are the process's wall time less that of a `--limit 0` run (model and tokenizer
loading, the least of two), so both sides are timed on evaluation alone; transformers' model is
loaded before timing. Wall times are recorded too.

Usage: python benches/eval_generate.py [--data DIR] [--per-task 8] [--batch-sizes 1,4,8,16]
       (python from a venv made from scripts/requirements-fixtures.txt; tsd built with
       `cargo build --release`)
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
LABELS = {
    "boolq": ["true", "false"],
    "piqa": ["solution1", "solution2"],
    "social_i_qa": ["answer1", "answer2", "answer3", "answer4", "answer5"],
    "winogrande": ["option1", "option2"],
    "ARC-Easy": ["answer1", "answer2", "answer3", "answer4", "answer5"],
    "ARC-Challenge": ["answer1", "answer2", "answer3", "answer4", "answer5"],
    "openbookqa": ["answer1", "answer2", "answer3", "answer4", "answer5"],
}
IND = " " * 16


def generate_prompt(instruction: str, input: str = "") -> str:
    """LLM-Adapters' template, byte for byte (its triple-quoted strings keep 16 spaces)."""
    if input:
        return (
            "Below is an instruction that describes a task, paired with an input that provides further "
            "context. Write a response that appropriately completes the request.\n\n"
            f"{IND}### Instruction:\n{IND}{instruction}\n\n{IND}### Input:\n{IND}{input}\n\n"
            f"{IND}### Response:\n{IND}"
        )
    return (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        f"the request. \n\n{IND}### Instruction:\n{IND}{instruction}\n\n{IND}### Response:\n{IND}"
    )


def extract_answer(task: str, text: str):
    found = re.findall("|".join(LABELS[task]), text)
    return found[0] if found else None


def run_tsd(tsd: Path, args: list) -> tuple:
    t = time.perf_counter()
    out = subprocess.run([str(tsd), "eval", "-q", "--json", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - t, json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=Path.home() / ".cache/tsd/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("TSD_DATA", ROOT.parent / "shared/data/commonsense")))
    ap.add_argument("--tasks", default="boolq,ARC-Easy")
    ap.add_argument("--per-task", type=int, default=8, help="generate: first N test examples per task")
    ap.add_argument("--loglik-per-task", type=int, default=48, help="loglik: first N test examples per task")
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-batch", type=int, default=16,
                    help="also time transformers generate on batches of this size (left-padded), 0 to skip")
    ap.add_argument("--tsd", type=Path, default=ROOT / "target/release/tsd")
    ap.add_argument("--out", type=Path, default=ROOT / "reproductions/bench/eval_generate.json")
    ap.add_argument("--loglik-out", type=Path, default=ROOT / "reproductions/bench/eval_loglik.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tasks = a.tasks.split(",")
    examples = {t: json.loads((a.data / t / "test.json").read_text())[: a.per_task] for t in tasks}
    n = sum(len(v) for v in examples.values())

    with tempfile.TemporaryDirectory() as d:
        shutil.copy(a.gguf, Path(d) / a.gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=a.gguf.name)
        model = LlamaForCausalLM.from_pretrained(d, gguf_file=a.gguf.name, torch_dtype=torch.float32).eval()
    hf = {}
    hf_seconds = []
    for t, exs in examples.items():
        for i, ex in enumerate(exs):
            inputs = tokenizer([generate_prompt(ex["instruction"], ex.get("input", ""))], return_tensors="pt")
            cfg = GenerationConfig(num_beams=4, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     generation_config=cfg, max_new_tokens=32)
            hf_seconds.append(time.perf_counter() - start)
            text = tokenizer.batch_decode(out, skip_special_tokens=True)[0]
            response = text.split("### Response:")[1].strip()
            hf[(t, i)] = (response, extract_answer(t, response))

    # transformers at the same batch size as tsd's batched search (left-padded, as batched
    # generation needs); its answers may differ from batch 1 by padding, so only its speed counts.
    hf_batched = None
    if a.hf_batch > 0:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        prompts = [generate_prompt(ex["instruction"], ex.get("input", "")) for exs in examples.values() for ex in exs]
        cfg = GenerationConfig(num_beams=4, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        start = time.perf_counter()
        for k in range(0, len(prompts), a.hf_batch):
            inputs = tokenizer(prompts[k:k + a.hf_batch], return_tensors="pt", padding=True)
            with torch.no_grad():
                model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               generation_config=cfg, max_new_tokens=32)
        hf_batched = {"batch_size": a.hf_batch, "seconds_per_example": (time.perf_counter() - start) / n}

    common = ["--data", str(a.data), "--tasks", a.tasks]
    # Loading time: the least of `--limit 0` runs just before and just after the timed ones (the
    # machine is shared: one run can be slow, and the page cache may warm up in between).
    def startup_runs() -> list:
        return [run_tsd(a.tsd, [*common, "--limit", "0"])[0] for _ in range(2)]

    startups = startup_runs()
    timed = []
    for b in [int(x) for x in a.batch_sizes.split(",")]:
        with tempfile.TemporaryDirectory() as pd:
            wall, _ = run_tsd(a.tsd, [*common, "--limit", str(a.per_task), "--protocol", "generate",
                                      "--batch-size", str(b), "--predictions", pd])
            same_pred = same_text = 0
            for t in tasks:
                for line in (Path(pd) / f"{t}.jsonl").read_text().splitlines():
                    p = json.loads(line)
                    want = hf[(t, p["index"])]
                    same_text += p["output"].strip() == want[0]
                    same_pred += p["prediction"] == want[1]
        timed.append((b, wall, same_pred, same_text))
    startups += startup_runs()
    startup = min(startups)
    runs = []
    for b, wall, same_pred, same_text in timed:
        per = (wall - startup) / n
        runs.append({"batch_size": b, "wall_s": wall, "seconds_per_example": per,
                     "speedup_vs_transformers": (sum(hf_seconds) / n) / per,
                     "speedup_vs_transformers_same_batch": (hf_batched["seconds_per_example"] / per
                                                            if hf_batched and hf_batched["batch_size"] == b else None),
                     "identical_predictions": same_pred, "identical_responses": same_text})
    rec = {
        "what": "commonsense generate: transformers generate (batch 1, num_beams=4, max_new_tokens=32, "
                "LLM-Adapters template) vs tsd eval --protocol generate, same examples, one invocation",
        "model": a.gguf.name, "tasks": tasks, "examples": n, "threads": a.threads,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "transformers_seconds_per_example": sum(hf_seconds) / n,
        "transformers_seconds": hf_seconds,
        "transformers_batched": hf_batched,
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "load_average": os.getloadavg(),
        "tsd_startup_s": startup,
        "tsd_startup_samples_s": startups,
        "tsd": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    tmp.replace(a.out)
    print(json.dumps(rec, indent=2))

    paths = {}
    for path in ["auto", "general"]:
        with tempfile.TemporaryDirectory() as pd:
            wall, res = run_tsd(a.tsd, [*common, "--limit", str(a.loglik_per_task), "--protocol", "loglik",
                                        "--loglik-path", path, "--predictions", pd])
            scores = {}
            for t in tasks:
                for line in (Path(pd) / f"{t}.jsonl").read_text().splitlines():
                    p = json.loads(line)
                    scores[(t, p["index"])] = (p["prediction"], [lab["loglik"] for lab in p["labels"]])
        m = sum(r["examples"] for r in res)
        paths[path] = {"wall_s": wall, "examples": m, "examples_per_s": m / (wall - startup),
                       "accuracy": {r["task"]: r["accuracy"] for r in res}, "scores": scores}
    fast, gen = paths["auto"]["scores"], paths["general"]["scores"]
    lrec = {
        "what": "tsd eval --protocol loglik: --loglik-path auto (one batched pass when labels differ only in "
                "the last token) vs general (KV-cache path, one example at a time)",
        "model": a.gguf.name, "tasks": tasks, "threads": a.threads, "tsd_startup_s": startup,
        "shortcut": {k: v for k, v in paths["auto"].items() if k != "scores"},
        "general": {k: v for k, v in paths["general"].items() if k != "scores"},
        "speedup": paths["auto"]["examples_per_s"] / paths["general"]["examples_per_s"],
        "identical_predictions": sum(fast[k][0] == gen[k][0] for k in gen),
        "max_abs_loglik_difference": max(abs(x - y) for k in gen for x, y in zip(fast[k][1], gen[k][1])),
    }
    tmp = a.loglik_out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(lrec, indent=2) + "\n")
    tmp.replace(a.loglik_out)
    print(json.dumps(lrec, indent=2))


if __name__ == "__main__":
    main()
