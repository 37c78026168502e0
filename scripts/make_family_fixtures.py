#!/usr/bin/env python3
"""Tiny random checkpoints of every model variant tsd supports, with transformers' logits.

For each variant this writes ``tests/fixtures/families/<variant>/``:

* ``config.json``        as a user would have it: the variants named ``legacy`` are written in the
                         pre-transformers-5 form (top-level ``rope_theta``, ``rope_scaling``), the
                         others exactly as ``save_pretrained`` of transformers 5.24 writes them
                         (``rope_parameters``);
* ``model.safetensors``  bfloat16 weights written by ``save_pretrained`` (small; both sides
                         compute in float32 from these exact values);
* ``logits.json``        transformers' float32 logits for a fixed batch of token ids, every
                         position, computed by a model *reloaded from that directory*; the model's
                         ``num_parameters()``; and an ablation: the largest logit change when the
                         variant's feature is removed (rope_type → default at the same base, a non-default base →
                         10000, biases → zero), which
                         shows that the fixture can tell the feature apart.

Weights are drawn from N(0, 0.2) (norm weights 1 + N(0, 0.1), biases N(0, 0.2) — transformers
initialises biases to zero, which would hide them), and q_proj / k_proj are scaled by 2.5 so that
attention is sharp and the rotary frequencies decide the logits. Sequences are 40 tokens, long
enough that the three llama3 frequency bands (kept, interpolated, divided by ``factor``) all
change the result (the script asserts each band is present).

Usage (from the repository root, in a virtualenv made from scripts/requirements-fixtures.txt):

    python scripts/make_family_fixtures.py [--out tests/fixtures/families]
"""

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
SEQ = 40
VOCAB = 32
QK_SCALE = 2.5

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)

# name → (config class, model class, config kwargs, legacy rope fields or None, ablation)
VARIANTS = {
    # Llama 1/2: default RoPE with a non-default base, legacy top-level rope_theta.
    "llama-rope-theta-legacy": (
        LlamaConfig, LlamaForCausalLM,
        dict(rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
        {"rope_theta": 1000.0},
        "rope_theta",
    ),
    # Position interpolation, legacy `rope_scaling: {type: linear}` (e.g. long-context Llama 2).
    "llama-linear-legacy": (
        LlamaConfig, LlamaForCausalLM,
        dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
        {"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 4.0}},
        "rope",
    ),
    # Llama 3.1 / 3.2 as their config.json spells it: rope_theta + rope_scaling {rope_type: llama3}.
    "llama3-rope-scaling-legacy": (
        LlamaConfig, LlamaForCausalLM,
        dict(num_attention_heads=2, num_key_value_heads=1,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64}),
        {"rope_theta": 500000.0,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
        "rope",
    ),
    # The same kind of model as transformers 5 writes it: rope_parameters only.
    "llama3-rope-parameters": (
        LlamaConfig, LlamaForCausalLM,
        dict(num_attention_heads=2, num_key_value_heads=1,
             rope_parameters={"rope_type": "llama3", "rope_theta": 200000.0, "factor": 16.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 3.0,
                              "original_max_position_embeddings": 48}),
        None,
        "rope",
    ),
    # head_dim 16 while hidden_size / num_attention_heads = 8.
    "llama-head-dim": (
        LlamaConfig, LlamaForCausalLM,
        dict(head_dim=16),
        None,
        None,
    ),
    "llama-attention-bias": (
        LlamaConfig, LlamaForCausalLM,
        dict(attention_bias=True),
        None,
        "bias",
    ),
    "llama-mlp-bias": (
        LlamaConfig, LlamaForCausalLM,
        dict(mlp_bias=True),
        None,
        "bias",
    ),
    # Qwen2: q/k/v biases (o_proj none), tied embeddings as Qwen2-0.5B.
    "qwen2": (
        Qwen2Config, Qwen2ForCausalLM,
        dict(tie_word_embeddings=True,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        None,
        "bias",
    ),
    # Mistral with an explicit head_dim and a window exactly as long as the test sequences.
    "mistral": (
        MistralConfig, MistralForCausalLM,
        dict(head_dim=16, sliding_window=SEQ),
        None,
        None,
    ),
}


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(QK_SCALE)
            # Exactly representable in bfloat16, the dtype written to disk.
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def llama3_bands(rope: dict, head_dim: int) -> list:
    """How many frequencies fall in each llama3 band (kept, interpolated, divided)."""
    base = rope["rope_theta"]
    old = rope["original_max_position_embeddings"]
    low, high = old / rope["low_freq_factor"], old / rope["high_freq_factor"]
    bands = [0, 0, 0]
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        bands[0 if wavelen < high else 2 if wavelen > low else 1] += 1
    return bands


def logits_of(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits.double()


def make(name: str, spec, out: Path, gen: torch.Generator) -> dict:
    cfg_cls, model_cls, kwargs, legacy, ablation = spec
    cfg = cfg_cls(**{**COMMON, **kwargs})
    model = model_cls(cfg).eval()
    randomise(model, gen)
    rope = cfg.rope_parameters
    if rope["rope_type"] == "llama3":
        bands = llama3_bands(rope, cfg.head_dim)
        assert all(bands), f"{name}: a llama3 band is empty: {bands}"
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    model.to(torch.bfloat16).save_pretrained(d)
    (d / "generation_config.json").unlink(missing_ok=True)
    if legacy is not None:
        config = json.loads((d / "config.json").read_text())
        del config["rope_parameters"]
        config.update(legacy)
        (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
    logits = logits_of(d, ids)
    reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    # The reloaded model must read the rope settings as written (legacy form included).
    got = {k: v for k, v in reloaded.config.rope_parameters.items() if k != "type"}
    assert got == rope, (got, rope)
    record = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "variant": name,
        "num_parameters": reloaded.num_parameters(),
        "input_ids": ids.tolist(),
        "logits": [[[round(x, 5) for x in row] for row in seq] for seq in logits.tolist()],
    }
    if ablation is not None:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            for f in d.iterdir():
                shutil.copy(f, t / f.name)
            config = json.loads((t / "config.json").read_text())
            change = ""
            if ablation in ("rope", "rope_theta"):
                for k in ("rope_scaling", "rope_parameters", "rope_theta"):
                    config.pop(k, None)
                theta = 10000.0 if ablation == "rope_theta" else rope["rope_theta"]
                config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
                change = f"rope_type default, rope_theta {theta}"
                (t / "config.json").write_text(json.dumps(config))
                other = logits_of(t, ids)
            else:
                m = AutoModelForCausalLM.from_pretrained(t, dtype=torch.float32).eval()
                with torch.no_grad():
                    for n, p in m.named_parameters():
                        if n.endswith(".bias"):
                            p.zero_()
                    other = m(ids).logits.double()
                change = "every base-layer bias set to zero"
        record["ablation"] = {
            "change": change,
            "max_abs_diff": (other - logits).abs().max().item(),
        }
    (d / "logits.json").write_text(json.dumps(record) + "\n")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "families")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20261201)
    for name, spec in VARIANTS.items():
        r = make(name, spec, a.out, gen)
        abl = r.get("ablation", {}).get("max_abs_diff")
        print(f"{name}: {r['num_parameters']} parameters, ablation max |Δlogit| = {abl}")


if __name__ == "__main__":
    main()
