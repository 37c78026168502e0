#!/usr/bin/env python3
"""tsd's trainer against transformers ``Trainer`` + PEFT + ``tsd.LoraDash``, step by step.

The same LoRA-Dash run, twice, on the committed tiny LLaMA (``tests/fixtures/tiny-llama``, its
``max_position_embeddings`` raised to 512 in a copy so that the Alpaca template fits: RoPE has no
learned positions, the weights are the same):

1. transformers ``Trainer`` with a PEFT LoRA (r = 4, α = 8, dropout 0, q/k/v/up/down) and
   ``LoraDash(s=2, t=T)``, the data order fixed by a sampler;
2. ``tsd train --method lora-dash`` started from the PEFT-initialised adapter (``--init-adapter``)
   with the same order (``--data-order``).

What differs between the two loops by default, and what this check sets (README, Training: tsd
against PEFT):

* loss normalisation under gradient accumulation: tsd averages the micro-batches' mean losses;
  transformers ≥ 4.46 divides the summed token loss by the tokens of the whole accumulated batch
  (``num_items_in_batch``). Equal when every micro-batch has the same token count; here: no
  accumulation (micro-batch = batch = 2).
* ``max_grad_norm``: both 1.0 by default; torch's ``clip_grad_norm_`` scales by
  ``max/(norm + 1e-6)``, tsd by ``max/norm`` (a relative 1e-6/norm difference when clipping).
* AdamW: both PyTorch's decoupled AdamW, β = (0.9, 0.999), ε = 1e-8, weight decay 0 (tsd's
  default 0; HF's 0); HF's default ``optim`` is ``adamw_torch_fused`` (set to ``adamw_torch`` here;
  the same arithmetic). A parameter added at the switch (Δσ) starts its own bias correction in
  both (PyTorch's per-parameter ``step``; tsd's per-slot ``t``).
* padding: tsd right-pads with the pad id (else EOS) and masks pads out of the loss; LLM-Adapters
  and HF collators pad left to a multiple of 8. With causal attention and the attention mask the
  loss is the same; here the collator pads right like tsd.
* warm-up: both HF's ``get_linear_schedule_with_warmup`` — step 1 runs at lr 0 (tsd's default
  ``--warmup-steps`` is 100, HF's 0).
* data order: tsd's seeded length-grouped shuffle vs HF's ``RandomSampler``: fixed here.
* dropout: 0 (masks differ by construction).

Output: JSON with per-step losses of both, their largest relative difference, and the final ΔW of
every module (LoRA + Dash) compared by relative Frobenius norm.

    TSD_BIN=target/release/tsd python scripts/compare_trainer_trajectory.py \\
        --out reproductions/trajectory/compare.json
    TSD_BIN=target/release/tsd python scripts/compare_trainer_trajectory.py --max-grad-norm 0.05 \\
        --out reproductions/trajectory/compare-clipped.json   # clipping at (almost) every step
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

IND = " " * 16
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def train_prompt(instruction: str, output: str) -> str:
    """LLM-Adapters' training template without input (src/train/data.rs, byte for byte)."""
    return (
        "Below is an instruction that describes a task. Write a response that appropriately "
        f"completes the request.  \n\n{IND}### Instruction:\n{IND}{instruction}\n{IND}\n"
        f"{IND}### Response:\n{IND}{output}"
    )


def make_examples(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    words = ["red", "blue", "cat", "dog", "sun", "rain", "tree", "stone", "fish", "bird", "moon", "salt"]
    out = []
    for i in range(n):
        k = torch.randint(0, len(words), (3 + i % 4,), generator=g).tolist()
        ans = int(torch.randint(1, 5, (1,), generator=g))
        out.append({
            "instruction": "Which one? " + " ".join(words[j] for j in k),
            "input": "",
            "output": f"the correct answer is answer{ans}",
            "answer": f"answer{ans}",
        })
    return out


def tokenize(tok, eos: int, ex: dict, cutoff: int) -> list[int]:
    """tsd's tokenize_example with train_on_inputs (no special tokens from this tokenizer)."""
    ids = tok.encode(train_prompt(ex["instruction"], ex["output"]), add_special_tokens=False).ids[:cutoff]
    if (not ids or ids[-1] != eos) and len(ids) < cutoff:
        ids.append(eos)
    return ids


def run_peft(base: Path, data: list[list[int]], order: list[list[int]], a, work: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments, set_seed

    from tsd.dash import LoraDash

    set_seed(a.seed)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0,
                                             target_modules=TARGETS))
    init = work / "peft-init"
    model.save_pretrained(init)
    dash = LoraDash(model, s=a.dash_s, t=a.dash_t, base=str(base))
    flat = [i for mb in order for i in mb]
    pad = a.pad_id

    class Seq(torch.utils.data.Dataset):
        def __len__(self):
            return len(flat)

        def __getitem__(self, k):  # position k of the fixed order
            return {"input_ids": data[flat[k]]}

    def collate(items):
        t = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), t), pad, dtype=torch.long)
        mask = torch.zeros((len(items), t), dtype=torch.long)
        labels = torch.full((len(items), t), -100, dtype=torch.long)
        for r, x in enumerate(items):
            n = len(x["input_ids"])
            ids[r, :n] = torch.tensor(x["input_ids"])
            mask[r, :n] = 1
            labels[r, :n] = torch.tensor(x["input_ids"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    losses: list[float] = []

    class Recording(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = out[0] if return_outputs else out
            losses.append(float(loss.detach()))
            return out

    args = TrainingArguments(
        output_dir=str(work / "hf-run"),
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        learning_rate=a.lr,
        warmup_steps=a.warmup,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=a.max_grad_norm,
        optim="adamw_torch",
        adam_epsilon=1e-8,
        logging_steps=1,
        save_strategy="steps",
        save_steps=a.steps,
        report_to=[],
        use_cpu=True,
        seed=a.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    t0 = time.time()
    Recording(model=model, args=args, train_dataset=Seq(), data_collator=collate,
              callbacks=[dash]).train()
    secs = time.time() - t0
    dw, parts = {}, {}
    for module, mod in dash.layers.items():
        n = dash.adapter_name
        lora = ((mod.lora_B[n].weight @ mod.lora_A[n].weight) * mod.scaling[n]).detach().double()
        dash_w = mod.tsd_dash.delta_weight().detach().double()
        dw[module] = lora + dash_w
        parts[module] = (lora, dash_w)
    picks = {m: mod.tsd_dash.index.tolist() for m, mod in dash.layers.items()}
    ds = {m: mod.tsd_dash.delta_sigma.detach().tolist() for m, mod in dash.layers.items()}
    ckpt = work / "hf-run" / f"checkpoint-{a.steps}"
    return {"losses": losses, "dw": dw, "parts": parts, "picks": picks, "delta_sigma": ds, "init": init,
            "seconds": secs, "checkpoint": ckpt, "dash": dash, "model": model}


def run_tsd(tsd_bin: str, base: Path, data_file: Path, order_file: Path, init: Path, a, work: Path) -> dict:
    out = work / "tsd-run"
    cfg = work / "tsd-config.json"
    cfg.write_text(json.dumps({"max_grad_norm": a.max_grad_norm}))
    cmd = [tsd_bin, "train", "--config", str(cfg), "--model", str(base), "--data", str(data_file),
           "--out", str(out), "--method", "lora-dash", "--rank", str(a.rank), "--alpha", str(a.alpha),
           "--dropout", "0", "--targets", ",".join(TARGETS), "--dash-s", str(a.dash_s),
           "--dash-t", str(a.dash_t), "--lr", str(a.lr), "--warmup-steps", str(a.warmup),
           "--max-steps", str(a.steps), "--batch-size", str(a.batch), "--micro-batch-size", str(a.batch),
           "--cutoff-len", str(a.cutoff), "--val-size", "0", "--seed", str(a.seed),
           "--save-every", str(a.steps), "--init-adapter", str(init), "--data-order", str(order_file),
           "--cpu", "--quiet"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TSD_HOME": str(work / "tsd-home")})
    if p.returncode != 0:
        raise SystemExit(f"tsd train failed ({p.returncode}):\n{p.stderr}")
    secs = time.time() - t0
    rec = json.loads((out / "record.json").read_text())
    ck = sorted((out / "checkpoints").glob("step-*"))[-1]
    t = load_file(str(ck / "tsd_dash.safetensors"))
    scaling = a.alpha / a.rank
    dw, parts, picks, ds = {}, {}, {}, {}
    for k in t:
        if not k.endswith(".lora_A.weight"):
            continue
        m = k[len("base_model.model."):-len(".lora_A.weight")]
        p_ = f"base_model.model.{m}."
        w = scaling * t[p_ + "lora_B.weight"].double() @ t[p_ + "lora_A.weight"].double()
        u, vt, s = t[p_ + "lora_dash_u"].double(), t[p_ + "lora_dash_vt"].double(), t[p_ + "lora_dash_delta_sigma"].double()
        dw[m] = w + (u * s) @ vt
        parts[m] = (w, (u * s) @ vt)
        picks[m] = t[p_ + "lora_dash_index"].tolist()
        ds[m] = t[p_ + "lora_dash_delta_sigma"].tolist()
    return {"losses": [s["loss"] for s in rec["steps"]], "lr": [s["lr"] for s in rec["steps"]],
            "grad_norm": [s["grad_norm"] for s in rec["steps"]],
            "dw": dw, "parts": parts, "picks": picks, "delta_sigma": ds, "seconds": secs,
            "switch_step": (rec.get("dash_switch") or {}).get("step")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "reproductions" / "trajectory" / "compare.json")
    ap.add_argument("--base", type=Path, default=ROOT / "tests" / "fixtures" / "tiny-llama")
    ap.add_argument("--tsd-bin", default=os.environ.get("TSD_BIN") or shutil.which("tsd")
                    or str(ROOT / "target" / "release" / "tsd"))
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--dash-t", type=int, default=12)
    ap.add_argument("--dash-s", type=int, default=2)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--cutoff", type=int, default=320)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--keep", type=Path, help="keep the working directory here [default: a temporary one]")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)

    from tokenizers import Tokenizer

    work = Path(tempfile.mkdtemp(prefix="tsd-traj-")) if a.keep is None else a.keep
    if a.keep is not None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    try:
        base = work / "tiny-llama-512"
        base.mkdir()
        for f in ("model.safetensors", "tokenizer.json", "generation_config.json"):
            shutil.copy(a.base / f, base / f)
        cfg = json.loads((a.base / "config.json").read_text())
        cfg["max_position_embeddings"] = 512
        (base / "config.json").write_text(json.dumps(cfg, indent=2))
        eos = cfg["eos_token_id"]
        a.pad_id = cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else eos

        examples = make_examples(a.examples, a.seed)
        data_file = work / "data.json"
        data_file.write_text(json.dumps(examples, indent=1))
        tok = Tokenizer.from_file(str(base / "tokenizer.json"))
        data = [tokenize(tok, eos, ex, a.cutoff) for ex in examples]
        g = torch.Generator().manual_seed(a.seed + 1)
        flat: list[int] = []
        while len(flat) < a.steps * a.batch:
            flat += torch.randperm(len(examples), generator=g).tolist()
        order = [flat[k * a.batch:(k + 1) * a.batch] for k in range(a.steps)]
        order_file = work / "order.json"
        order_file.write_text(json.dumps(order))

        hf = run_peft(base, data, order, a, work)
        ts = run_tsd(a.tsd_bin, base, data_file, order_file, hf["init"], a, work)

        # tsd reads the Trainer's Dash checkpoint (tsd's layout) as the same adapter.
        ins = subprocess.run([a.tsd_bin, "inspect", str(hf["checkpoint"]), "--base", str(base), "--json",
                              "--no-null", "--quiet", "--top-s", str(a.dash_s)],
                             capture_output=True, text=True, env={**os.environ, "TSD_HOME": str(work / "tsd-home")})
        inspect_ok = ins.returncode == 0
        if not inspect_ok:
            print(ins.stderr, file=sys.stderr)

        rel_loss = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(hf["losses"], ts["losses"])]
        rel_dw = {}
        for m, w in ts["dw"].items():
            h = hf["dw"][m]
            rel_dw[m] = float((h - w).norm() / w.norm().clamp_min(1e-30))
        rel_parts = {}
        for m, (wl, wd) in ts["parts"].items():
            hl, hd = hf["parts"][m]
            rel_parts[m] = {"lora": float((hl - wl).norm() / wl.norm().clamp_min(1e-30)),
                            "dash": float((hd - wd).norm() / wd.norm().clamp_min(1e-30))}
        same_picks = all(sorted(hf["picks"][m]) == sorted(ts["picks"][m]) for m in ts["picks"])
        ds_moved = max(abs(x) for v in hf["delta_sigma"].values() for x in v)
        after = sum(1 for k in range(len(ts["losses"])) if k + 1 > a.dash_t)
        result = {
            "schema_version": 1,
            "what": "tsd train vs transformers Trainer + PEFT + tsd.LoraDash, LoRA-Dash on the tiny LLaMA",
            "command": "TSD_BIN=target/release/tsd python scripts/compare_trainer_trajectory.py",
            "settings": {k: getattr(a, k) for k in ("steps", "dash_t", "dash_s", "rank", "alpha", "lr", "warmup",
                                                     "batch", "max_grad_norm", "cutoff", "examples", "seed")},
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                         "peft": __import__("peft").__version__},
            "steps": len(ts["losses"]),
            "steps_after_switch": after,
            "tsd_switch_step": ts["switch_step"],
            "peft_loss": hf["losses"],
            "tsd_loss": ts["losses"],
            "loss_rel_diff": rel_loss,
            "tsd_grad_norm": ts["grad_norm"],
            "clipped_steps": sum(1 for g in ts["grad_norm"] if g > a.max_grad_norm),
            "max_loss_rel_diff": max(rel_loss),
            "delta_w_rel_diff": rel_dw,
            "max_delta_w_rel_diff": max(rel_dw.values()),
            "delta_w_parts_rel_diff": rel_parts,
            "max_lora_part_rel_diff": max(v["lora"] for v in rel_parts.values()),
            "max_dash_part_rel_diff": max(v["dash"] for v in rel_parts.values()),
            "same_picks": same_picks,
            "picks_peft": hf["picks"],
            "picks_tsd": ts["picks"],
            "max_abs_delta_sigma": ds_moved,
            "tsd_inspect_reads_trainer_checkpoint": inspect_ok,
            "seconds": {"peft": round(hf["seconds"], 2), "tsd": round(ts["seconds"], 2)},
            "tolerance": a.tolerance,
        }
        result["pass"] = bool(
            len(hf["losses"]) == len(ts["losses"]) >= 20 and after >= 10 and same_picks and inspect_ok
            and result["max_loss_rel_diff"] < a.tolerance and result["max_delta_w_rel_diff"] < a.tolerance
            and result["max_lora_part_rel_diff"] < a.tolerance and result["max_dash_part_rel_diff"] < a.tolerance
        )
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"steps {result['steps']} ({after} after the switch at {ts['switch_step']}); "
              f"max loss rel diff {result['max_loss_rel_diff']:.2e}; max ΔW rel diff "
              f"{result['max_delta_w_rel_diff']:.2e} (LoRA part {result['max_lora_part_rel_diff']:.2e}, Dash part "
              f"{result['max_dash_part_rel_diff']:.2e}); clipped steps {result['clipped_steps']}; same picks {same_picks}; max |Δσ| {ds_moved:.2e}; "
              f"pass {result['pass']}; wrote {a.out}")
        if not result["pass"]:
            raise SystemExit(1)
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
