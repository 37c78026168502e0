#!/usr/bin/env python3
"""Train a small demo PEFT LoRA on SmolLM2-135M-Instruct (GGUF) and write reference numbers.

This produces two artefacts that tie tsd to independent Python implementations:

* ``data/adapters/smollm2-arc-lora/``   a real, trained PEFT LoRA adapter
  (r=4, alpha=8, dropout 0.05 on q/k/v/up/down_proj) for tsd's default model,
  SmolLM2-135M-Instruct.Q4_1.gguf, trained briefly on ARC-Easy with the
  LLM-Adapters Alpaca prompt.  The LoRA factors are stored in float16 so the
  adapter stays under 2 MB; ``base_model_name_or_path`` is ``"default"`` (the
  tsd name of that model).  It is a demo adapter, not a reproduction.
* ``tests/fixtures/smollm2-expected.json``  per adapted module, in float64
  numpy: singular values of the base weight W as dequantized by transformers'
  own GGUF loader (which also undoes llama.cpp's Q/K row permutation), the
  Frobenius norms of W and of dW = scaling * B @ A (B, A read back from the
  SAVED float16 safetensors), and the 8 largest change rates
  delta_i = |u_i^T dW v_i| / sigma_i.

The GGUF file is read in place through a symlink in a temporary directory;
nothing from the Hugging Face Hub is fetched.  The run is deterministic for a
given seed, library versions (scripts/requirements-fixtures.txt, which includes
``gguf``) and thread count (2).

Usage (from the repository root, with the fixtures virtualenv)::

    python scripts/train_smollm2_peft_lora.py
"""

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

# PEFT stores ``target_modules`` as a Python set, so the order written to
# adapter_config.json depends on string hashing.  Pin the hash seed (it must be
# set before the interpreter starts) so repeated runs produce identical files.
# OMP_WAIT_POLICY=PASSIVE (unless set) keeps torch's 2 OpenMP threads from
# spin-waiting: on a busy 2-core machine spinning made some steps ~10x slower.
# It changes scheduling only, not the numbers.
if os.environ.get("PYTHONHASHSEED") != "0" or "OMP_WAIT_POLICY" not in os.environ:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

DEFAULT_GGUF = Path.home() / ".cache/tsd/models/SmolLM2-135M-Instruct.Q4_1.gguf"
EXPECTED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# tsd's data directory rule: $TSD_DATA, else ../shared/data/commonsense (LLM-Adapters layout).
DEFAULT_DATA = Path(os.environ.get("TSD_DATA") or "../shared/data/commonsense") / "ARC-Easy/train.json"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.05)
ADAPTER_NAME = "default"  # PEFT's adapter name, also tsd's name of the base model
NUM_THREADS = 2
LOG_EVERY = 10

# The Alpaca templates used by LLM-Adapters (generate_prompt in finetune.py).
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)

NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9][0-9.e+-]*,?\s*)+)\]")


def dump_json(obj) -> str:
    """Indented JSON with every list of numbers kept on one line (floats round-trip exactly)."""
    text = json.dumps(obj, indent=1)
    return NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def generate_prompt(ex: dict) -> str:
    if ex.get("input"):
        return PROMPT_WITH_INPUT.format(**ex)
    return PROMPT_NO_INPUT.format(instruction=ex["instruction"], output=ex["output"])


def tokenize(tokenizer, text: str, cutoff: int) -> list:
    """LLM-Adapters style: truncate to ``cutoff``, append EOS if it still fits; loss on everything."""
    ids = tokenizer(text, truncation=True, max_length=cutoff, add_special_tokens=True)["input_ids"]
    if ids[-1] != tokenizer.eos_token_id and len(ids) < cutoff:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def collate(batch: list, pad_id: int) -> dict:
    """Right-pad; padded positions are masked out of attention and loss."""
    n = max(len(x) for x in batch)
    input_ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, ids in enumerate(batch):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = t
        labels[i, : len(ids)] = t
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def load_base(gguf: Path, tmp: Path):
    """Load tokenizer and float32 model through transformers' GGUF loader (symlink, no copy)."""
    (tmp / gguf.name).symlink_to(gguf.resolve())
    tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
    model = LlamaForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
    return tokenizer, model


def train(model, tokenizer, examples: list, args) -> list:
    """Plain AdamW loop over seeded shuffled batches; returns the per-step losses."""
    encoded = [tokenize(tokenizer, generate_prompt(ex), args.cutoff) for ex in examples]
    order_rng = random.Random(args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    model.train()
    losses, order = [], []
    for step in range(1, args.steps + 1):
        if len(order) < args.batch_size:
            perm = list(range(len(encoded)))
            order_rng.shuffle(perm)
            order += perm
        idx, order = order[: args.batch_size], order[args.batch_size :]
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step == 1 or step % LOG_EVERY == 0 or step == args.steps:
            print(f"step {step:4d}  loss {losses[-1]:.4f}", flush=True)
    model.eval()
    return losses


def save_adapter(model, out: Path) -> None:
    """save_pretrained with float16 LoRA factors and base_model_name_or_path = "default"."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(torch.float16)
    model.peft_config[ADAPTER_NAME].base_model_name_or_path = "default"
    # No embedding layers are adapted; skip PEFT's probe of the base config for resized vocabularies.
    model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)


def module_records(model, adapter_file: Path, scaling: float) -> dict:
    """Per adapted module: spectra of W and change rates of dW = scaling * B @ A (saved fp16 factors)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    records = {}
    with safe_open(adapter_file, framework="np") as f:
        keys = set(f.keys())
        for name, layer in layers:
            path = name.removeprefix("base_model.model.")
            key_a = f"base_model.model.{path}.lora_A.weight"
            key_b = f"base_model.model.{path}.lora_B.weight"
            assert key_a in keys and key_b in keys, path
            a = f.get_tensor(key_a).astype(np.float64)
            b = f.get_tensor(key_b).astype(np.float64)
            w32 = layer.get_base_layer().weight.detach()
            assert w32.dtype == torch.float32 and not w32.requires_grad
            w = w32.numpy().astype(np.float64)
            dw = scaling * (b @ a)
            u, s, vt = np.linalg.svd(w, full_matrices=False)
            proj = np.einsum("ij,ij->j", u, dw @ vt.T)  # diag(U^T dW V)
            delta = np.abs(proj) / s
            top8 = np.argsort(-delta, kind="stable")[:8]
            records[path] = {
                "shape": list(w.shape),
                "w_fro": float(np.linalg.norm(w)),
                "sigma_head": s[:5].tolist(),
                "sigma_tail": s[-5:].tolist(),
                "delta_w_fro": float(np.linalg.norm(dw)),
                "top8": [int(i) for i in top8],
                "top8_delta": [float(delta[i]) for i in top8],
            }
    return records


def write_readme(out: Path, args, losses: list) -> None:
    first10 = float(np.mean(losses[:LOG_EVERY]))
    last10 = float(np.mean(losses[-LOG_EVERY:]))
    text = f"""# smollm2-arc-lora

A small, real PEFT LoRA adapter for tsd's default model, **SmolLM2-135M-Instruct**
(`SmolLM2-135M-Instruct.Q4_1.gguf`; `base_model_name_or_path` is `"default"`, the
tsd name of that model).  It is a **demo adapter, not a reproduction** of any
paper's result: it was trained for only {args.steps} steps on CPU so that tsd has a
genuinely trained adapter (not random factors) to analyse.

* LoRA r={LORA['r']}, lora_alpha={LORA['lora_alpha']} (scaling {LORA['lora_alpha'] / LORA['r']}),
  lora_dropout={LORA['lora_dropout']}, target_modules {TARGET_MODULES}, task_type CAUSAL_LM.
* Base weights: the Q4_1 GGUF dequantized to float32 by transformers' GGUF loader.
* Data: {args.steps * args.batch_size} examples in seeded shuffled order (reshuffled per pass) from the
  first {args.num_examples} of LLM-Adapters' `commonsense/ARC-Easy/train.json`, LLM-Adapters'
  Alpaca prompt with EOS appended, loss on the whole sequence, cutoff {args.cutoff} tokens.
* AdamW lr {args.lr}, batch {args.batch_size}, {args.steps} steps, seed {args.seed}, {NUM_THREADS} CPU threads.
* Loss: first step {losses[0]:.4f}, last step {losses[-1]:.4f}
  (mean of first {LOG_EVERY} steps {first10:.4f}, of last {LOG_EVERY} steps {last10:.4f}).
  The whole script takes about 5-10 minutes on 2 CPU cores.
* The LoRA factors were cast to float16 before `save_pretrained` to keep the
  file under 2 MB; tensor names and metadata are PEFT's own.

Made (from the repository root) with:

```
python scripts/train_smollm2_peft_lora.py{args.cmdline}
```

Reference numbers for this adapter are in `tests/fixtures/smollm2-expected.json`.
"""
    (out / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF, help="SmolLM2-135M-Instruct GGUF file")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LLM-Adapters ARC-Easy train.json")
    parser.add_argument("--out", type=Path, default=Path("data/adapters/smollm2-arc-lora"), help="adapter dir")
    parser.add_argument(
        "--expected", type=Path, default=Path("tests/fixtures/smollm2-expected.json"), help="reference JSON"
    )
    parser.add_argument("--num-examples", type=int, default=400, help="use the first N training examples")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cutoff", type=int, default=256, help="max tokens per example")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    defaults = {a.dest: a.default for a in parser._actions}
    args.cmdline = "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in defaults and v != defaults[k]
    )

    t0 = time.time()
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    gguf_sha = sha256(args.gguf)
    if gguf_sha != EXPECTED_GGUF_SHA256:
        print(f"warning: {args.gguf} sha256 {gguf_sha} != expected {EXPECTED_GGUF_SHA256}", file=sys.stderr)
    examples = json.loads(args.data.read_text())[: args.num_examples]

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, base = load_base(args.gguf, Path(tmp))
    print(f"loaded {args.gguf.name} in {time.time() - t0:.1f} s", flush=True)

    config = LoraConfig(target_modules=TARGET_MODULES, task_type="CAUSAL_LM", **LORA)
    torch.manual_seed(args.seed)
    model = get_peft_model(base, config)
    model.print_trainable_parameters()

    t1 = time.time()
    losses = train(model, tokenizer, examples, args)
    train_s = time.time() - t1
    print(f"trained {args.steps} steps in {train_s:.1f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    # README.md too: PEFT's save_pretrained would otherwise prepend model-card front matter
    # (with the temporary base path) to an existing one.  Ours replaces its card right away.
    for stale in ["adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "README.md"]:
        (args.out / stale).unlink(missing_ok=True)
    save_adapter(model, args.out)
    write_readme(args.out, args, losses)
    adapter_file = args.out / "adapter_model.safetensors"
    scaling = LORA["lora_alpha"] / LORA["r"]
    modules = module_records(model, adapter_file, scaling)
    total_s = time.time() - t0

    expected = {
        "description": (
            "Reference numbers written by scripts/train_smollm2_peft_lora.py for the PEFT LoRA in "
            "data/adapters/smollm2-arc-lora on SmolLM2-135M-Instruct.Q4_1.gguf. W is the base weight as "
            "dequantized by transformers' GGUF loader (float32, Hugging Face layout with llama.cpp's Q/K "
            "row permutation undone), cast to float64. dW = scaling * B @ A in float64 from the float16 "
            "factors read back from the saved adapter_model.safetensors, scaling = lora_alpha / r. Per "
            "module: shape [out,in]; w_fro = ||W||_F; sigma_head / sigma_tail = 5 largest / 5 smallest "
            "singular values of W (descending, numpy LAPACK SVD in float64); delta_w_fro = ||dW||_F; "
            "delta_i = |u_i^T dW v_i| / sigma_i (no epsilon); top8 = indices of the 8 largest delta "
            "(descending, stable), top8_delta = those delta values. Module order is model order."
        ),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "gguf": {"file": args.gguf.name, "sha256": gguf_sha},
        "adapter_dir": "data/adapters/smollm2-arc-lora",
        "adapter_dtype": "float16",
        "r": LORA["r"],
        "lora_alpha": LORA["lora_alpha"],
        "scaling": scaling,
        "target_modules": TARGET_MODULES,
        "training": {
            "data": "commonsense/ARC-Easy/train.json",
            "data_sha256": sha256(args.data),
            "num_examples": len(examples),
            "prompt": "LLM-Adapters Alpaca template, loss on the whole sequence, EOS appended",
            "cutoff": args.cutoff,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "optimizer": "AdamW",
            "lr": args.lr,
            "lora_dropout": LORA["lora_dropout"],
            "seed": args.seed,
            "num_threads": NUM_THREADS,
        },
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "first10_mean_loss": float(np.mean(losses[:LOG_EVERY])),
        "last10_mean_loss": float(np.mean(losses[-LOG_EVERY:])),
        "modules": modules,
    }
    args.expected.parent.mkdir(parents=True, exist_ok=True)
    args.expected.write_text(dump_json(expected))
    print(
        f"wrote {args.out} ({adapter_file.stat().st_size} bytes adapter), {args.expected} "
        f"({len(modules)} modules); loss {losses[0]:.4f} -> {losses[-1]:.4f}; total {total_s:.1f} s"
    )


if __name__ == "__main__":
    main()
