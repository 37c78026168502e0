#!/usr/bin/env python3
"""README's per-host performance row, read from the records benches/host_records.sh wrote.

Every figure printed here comes from a JSON record in DIR (nothing is typed in): the training
step against PyTorch + PEFT run just before and after it (a range over the two), peak memory,
the step's FLOP/s against the roofline, LoRA-Dash's overhead (per-round median and interval, in
wall and CPU time, beside what its arithmetic predicts), the bf16 path against PyTorch's bf16
autocast, bf16 accuracy against f32 beside PyTorch's, and batched beam search against
transformers. Each line names its target and says whether this host meets it.

Usage: python3 benches/host_summary.py DIR   (standard library only)
"""

import json
import sys
from pathlib import Path


def load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def span(a: float, b: float, unit: str = "×") -> str:
    lo, hi = sorted((a, b))
    return f"{lo:.2f}{unit}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}{unit}"


def verdict(ok: bool, floor_ok: bool | None = None) -> str:
    """`met`, or how it was missed: against the floor where the target has one."""
    if ok:
        return "met"
    if floor_ok is None:
        return "NOT met"
    return "NOT met (floor held)" if floor_ok else "NOT met, below the floor"


def training(side: Path, label: str, target: float | None, floor: float | None) -> list[str]:
    """The tsd-vs-PyTorch rows of one train_side_by_side.sh directory."""
    train, before, after = (load(side / f) for f in ("train.json", "peft_before.json", "peft_after.json"))
    if not (train and before and after):
        return [f"| {label} | no record in {side.name}/ | | |"]
    tsd = train["lora"]
    speed = [tsd["tokens_per_s"] / p["tokens_per_s"] for p in (before, after)]
    mem = [tsd["peak_rss_bytes"] / p["peak_rss_bytes"] for p in (before, after)]
    note = ""
    if target is not None:
        note = verdict(min(speed) >= target, None if floor is None else min(speed) >= floor)
    rows = [
        f"| {label}: speed vs PyTorch + PEFT (run before / after) | "
        f"{'≥ %.1f× (floor %.1f×)' % (target, floor) if target else 'compared separately'} | "
        f"**{span(*speed)}** ({tsd['tokens_per_s']:.0f} tokens/s against {before['tokens_per_s']:.0f} / "
        f"{after['tokens_per_s']:.0f}) | {note} |",
        f"| {label}: peak memory vs PyTorch + PEFT | {'≤ 0.7×' if target else 'stated'} | "
        f"**{span(*mem)}** ({tsd['peak_rss_bytes'] / 1e9:.2f} GB) | "
        f"{verdict(max(mem) <= 0.7) if target else ''} |",
    ]
    flops = train.get("lora_achieved_flops_per_s")
    if flops:
        frac = train.get("lora_fraction_of_best_measured_product_rate")
        peak = train.get("lora_fraction_of_theoretical_peak")
        where = ""
        if frac is not None:
            where = f": {100 * frac:.0f} % of the best measured product rate, {100 * peak:.0f} % of the theoretical peak"
        rows.append(f"| {label}: the step's FLOP/s against the machine | stated | {flops / 1e9:.0f} GFLOP/s{where} | |")
    return rows


def dash(side: Path) -> list[str]:
    train = load(side / "train.json")
    if not train or train.get("dash_step_overhead_per_round_ci95") is None:
        return ["| LoRA-Dash step over LoRA | ≤ +3 % | no record | |"]
    n = len(train["dash_step_overhead_per_round"])
    lo, hi, cov = train["dash_step_overhead_per_round_ci95"]
    med = train["dash_step_overhead_per_round_median"]
    text = f"wall: median {pct(med)} over {n} rounds ({100 * cov:.1f} % interval {pct(lo)} … {pct(hi)})"
    cpu = train.get("dash_cpu_overhead_per_round_ci95")
    if cpu:
        clo, chi, ccov = cpu
        text += f"; CPU time: median {pct(train['dash_cpu_overhead_per_round_median'])} ({100 * ccov:.1f} % interval {pct(clo)} … {pct(chi)})"
    arith = train.get("dash_arithmetic_overhead")
    if arith is not None:
        text += f"; its extra arithmetic: {pct(arith)}"
    if hi <= 0.03:
        note = "met (interval inside)"
    elif med <= 0.03:
        note = "median inside, interval not"
    else:
        note = "NOT met"
    return [f"| LoRA-Dash step over LoRA (s = 8) | ≤ +3 % | {text} | {note} |"]


def bf16_accuracy(rec) -> list[str]:
    acc = (rec or {}).get("accuracy")
    if not acc or "tsd_bf16_vs_tsd_f32" not in acc:
        return []

    def cmp(c) -> str:
        return (f"KL mean {c['kl_mean']:.2e} nats, top-1 agreement {100 * c['top1_agreement']:.1f} %, "
                f"loss {c['loss_diff']:+.2e}")

    text = f"tsd bf16 vs f32: {cmp(acc['tsd_bf16_vs_tsd_f32'])}"
    if acc.get("torch_bf16_vs_torch_f32"):
        text += f"; PyTorch bf16 autocast vs f32 (control): {cmp(acc['torch_bf16_vs_torch_f32'])}"
    if acc.get("tsd_f32_vs_torch_f32"):
        text += f"; tsd f32 vs PyTorch f32: KL mean {acc['tsd_f32_vs_torch_f32']['kl_mean']:.1e}"
    return [f"| bf16 products: logits and loss against f32 on {acc['batch']}×{acc['seq_len']} tokens of {acc['text']} | evidence | {text} | |"]


def generate(rec) -> list[str]:
    if not rec:
        return ["| `generate` batch 16 vs transformers batch 1 / batch 16 | ≥ 5× / ≥ 1.5× | no record | |"]
    b16 = next((r for r in rec["tsd"] if r["batch_size"] == 16), None)
    if not b16:
        return ["| `generate` batch 16 | | no batch-16 run in the record | |"]
    one, same = b16["speedup_vs_transformers"], b16["speedup_vs_transformers_same_batch"]
    ok = one >= 5 and same >= 1.5
    floor = one >= 3 and same >= 1.2
    return [
        f"| `generate` batch 16 vs transformers batch 1 / batch 16 | ≥ 5× / ≥ 1.5× (floors 3× / 1.2×) | "
        f"**{one:.2f}× / {same:.2f}×**; {b16['identical_responses']} of {rec['examples']} responses identical to transformers' batch 1 | "
        f"{verdict(ok, floor)} |"
    ]


def main() -> None:
    d = Path(sys.argv[1])
    host = (d / "host.txt").read_text().strip().splitlines() if (d / "host.txt").exists() else []
    print(f"# Performance records of {d.name}\n")
    print("\n".join(f"    {line}" for line in host))
    print("\n| measure | target | this host | verdict |\n|---|---|---|---|")
    rows = training(d / "train-side-by-side", "LoRA step, f32", 1.3, 1.0)
    rows += dash(d / "train-side-by-side")
    rows += training(d / "train-side-by-side-bf16", "LoRA step, bf16 products vs bf16 autocast", None, None) if (d / "train-side-by-side-bf16").exists() else []
    rows += bf16_accuracy(load(d / "bf16.json"))
    rows += generate(load(d / "eval_generate.json"))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
