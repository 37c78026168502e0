#!/usr/bin/env python3
"""Generate the tiny Llama / PEFT test fixtures under ``tests/fixtures/``.

Everything is written by the real Hugging Face libraries (transformers + PEFT),
so the Rust side can be tested against what those libraries actually produce:

* ``tiny-llama/``          random ``LlamaForCausalLM`` (float32, single file)
* ``tiny-llama-bf16/``     the same weights cast to bfloat16
* ``tiny-llama-sharded/``  the same float32 weights in exactly two shards
* ``tiny-llama-ft/``       tiny-llama with a dense, seeded perturbation of the
                           adapted projections (a stand-in "full fine-tune")
* ``peft-lora/``           LoRA r=4, alpha=8, non-zero B
* ``peft-rslora/``         rsLoRA r=8, alpha=16, rank_pattern / alpha_pattern
* ``peft-dora/``           DoRA r=4, alpha=8, with a perturbed magnitude vector
* ``expected.json``        per-module reference numbers (see ``module_record``)

The base model is built from a ``LlamaConfig`` in code; nothing is fetched from
the Hugging Face Hub.  Output is deterministic for a given set of library
versions (see ``scripts/requirements-fixtures.txt``).

Usage (from the repository root, with the fixtures virtualenv)::

    python scripts/make_peft_fixtures.py [--out tests/fixtures]
"""

import argparse
import json
import os
import re
import sys
import warnings
from pathlib import Path

# PEFT stores ``target_modules`` as a Python set, so the order written to
# adapter_config.json depends on string hashing.  Pin the hash seed (it must be
# set before the interpreter starts) so repeated runs produce identical files.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

import numpy as np  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
NUM_SHARDS = 2
# Relative size of the dense "fine-tune" perturbation: ||E||_F = FT_REL * ||W||_F.
FT_REL = 0.01
# Relative (multiplicative) noise applied to the DoRA magnitude vector.  Right
# after initialisation PEFT sets magnitude = ||W + s*B@A||_row, which makes the
# DoRA merge identical to a plain LoRA merge; the noise stands in for training.
DORA_MAGNITUDE_NOISE = 0.05

ADAPTERS = {
    "peft-lora": dict(seed=1, config=dict(r=4, lora_alpha=8)),
    "peft-rslora": dict(
        seed=2,
        config=dict(
            r=8,
            lora_alpha=16,
            use_rslora=True,
            rank_pattern={"v_proj": 2},
            alpha_pattern={"down_proj": 3},
        ),
    ),
    "peft-dora": dict(seed=3, config=dict(r=4, lora_alpha=8, use_dora=True)),
}
BASE_SEED = 0
NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9][0-9.e+-]*,?\s*)+)\]")
FT_SEED = 4


def dump_json(obj) -> str:
    """Indented JSON with every list of numbers kept on one line (floats round-trip exactly)."""
    text = json.dumps(obj, indent=1)
    return NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def tiny_llama_config() -> LlamaConfig:
    """The fixed tiny Llama architecture used by every fixture."""
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        dtype=torch.float32,
    )


def load_base(base_dir: Path) -> LlamaForCausalLM:
    """Load the float32 base from disk and make adapters record it relative to their own dir."""
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # PEFT copies ``name_or_path`` into adapter_config.json's base_model_name_or_path;
    # every adapter dir is a sibling of the base dir.
    model.name_or_path = f"../{base_dir.name}"
    return model


def linear_weights(model: torch.nn.Module, names) -> dict:
    """float64 copies of the ``.weight`` of the named Linear modules."""
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach().to(torch.float64).clone() for n in names}


def spectral_record(w: torch.Tensor, dw: torch.Tensor) -> dict:
    """sigma, change rates delta_i = |u_i^T dW v_i| / sigma_i and top-8 indices (all float64)."""
    w64 = w.numpy().astype(np.float64)
    dw64 = dw.numpy().astype(np.float64)
    u, s, vt = np.linalg.svd(w64, full_matrices=False)
    # diag(U^T dW V) without forming the full product.
    proj = np.einsum("ij,ij->j", u, dw64 @ vt.T)
    delta = np.abs(proj) / s
    top8 = np.argsort(-delta, kind="stable")[:8]
    return {
        "delta_w_fro": float(np.linalg.norm(dw64)),
        "sigma": s.tolist(),
        "delta": delta.tolist(),
        "top8": [int(i) for i in top8],
    }


def save_base_models(out: Path) -> LlamaForCausalLM:
    """Write tiny-llama, tiny-llama-bf16 and tiny-llama-sharded; return the float32 model."""
    torch.manual_seed(BASE_SEED)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    model.save_pretrained(out / "tiny-llama")

    total_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    model.save_pretrained(out / "tiny-llama-sharded", max_shard_size=total_bytes // NUM_SHARDS + 64 * 1024)
    index = json.loads((out / "tiny-llama-sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    if len(shards) != NUM_SHARDS:
        raise SystemExit(f"expected {NUM_SHARDS} shards, got {shards}")

    bf16 = LlamaForCausalLM(tiny_llama_config())
    bf16.load_state_dict(model.state_dict())
    bf16.to(torch.bfloat16).save_pretrained(out / "tiny-llama-bf16")
    return model


def make_adapter(out: Path, name: str, spec: dict) -> dict:
    """Create, save and merge one PEFT adapter; return its expected.json entry."""
    base = load_base(out / "tiny-llama")
    torch.manual_seed(spec["seed"])
    config = LoraConfig(
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        init_lora_weights=False,
        **spec["config"],
    )
    model = get_peft_model(base, config).eval()
    lora_layers = {
        n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLayer)
    }
    use_dora = bool(config.use_dora)
    if use_dora:
        with torch.no_grad():
            for layer in lora_layers.values():
                mag = layer.lora_magnitude_vector["default"].weight
                mag.mul_(1.0 + DORA_MAGNITUDE_NOISE * torch.randn_like(mag))
    # No embedding layers are adapted; skip PEFT's probe of the base config for resized vocabularies.
    model.save_pretrained(out / name, save_embedding_layers=False)

    modules = {}
    for path, layer in sorted(lora_layers.items()):
        a = layer.lora_A["default"].weight.detach().to(torch.float64)
        b = layer.lora_B["default"].weight.detach().to(torch.float64)
        scaling = float(layer.scaling["default"])
        modules[path] = {
            "shape": list(layer.get_base_layer().weight.shape),
            "r": int(layer.r["default"]),
            "alpha": layer.lora_alpha["default"],
            "scaling": scaling,
            "lora_delta_fro": float(torch.linalg.norm(scaling * (b @ a))),
            "dora": use_dora,
        }

    base_w = linear_weights(model.base_model.model, modules)
    merged = model.merge_and_unload()
    merged_w = linear_weights(merged, modules)
    for path, rec in modules.items():
        rec.update(spectral_record(base_w[path], merged_w[path] - base_w[path]))

    return {
        "dir": name,
        "base_dir": "tiny-llama",
        "kind": "dora" if use_dora else "lora",
        "dora": use_dora,
        "use_rslora": bool(config.use_rslora),
        "seed": spec["seed"],
        "modules": modules,
    }


def make_finetune(out: Path, base: LlamaForCausalLM) -> dict:
    """Write tiny-llama-ft (dense perturbation of the target projections); return its expected.json entry."""
    paths = [
        n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in TARGET_MODULES
    ]
    ft = LlamaForCausalLM(tiny_llama_config()).eval()
    ft.load_state_dict(base.state_dict())
    ft_modules = dict(ft.named_modules())
    gen = torch.Generator().manual_seed(FT_SEED)
    with torch.no_grad():
        for path in sorted(paths):
            w = ft_modules[path].weight
            e = torch.randn(w.shape, generator=gen, dtype=torch.float32)
            w.add_(e * (FT_REL * torch.linalg.norm(w) / torch.linalg.norm(e)))
    ft.save_pretrained(out / "tiny-llama-ft")

    base_w = linear_weights(base, paths)
    ft_w = linear_weights(ft, paths)
    modules = {}
    for path in sorted(paths):
        modules[path] = {
            "shape": list(base_w[path].shape),
            "r": None,
            "alpha": None,
            "scaling": None,
            "dora": False,
            **spectral_record(base_w[path], ft_w[path] - base_w[path]),
        }
    return {
        "dir": "tiny-llama-ft",
        "base_dir": "tiny-llama",
        "kind": "dense",
        "dora": False,
        "relative_perturbation": FT_REL,
        "seed": FT_SEED,
        "modules": modules,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"), help="output directory")
    args = parser.parse_args()

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    # Files are overwritten in place (save_pretrained also drops stale shards); other files
    # in these directories, such as a tokenizer added by hand, are left alone.
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    base = save_base_models(out)
    entries = {name: make_adapter(out, name, spec) for name, spec in ADAPTERS.items()}
    entries["tiny-llama-ft"] = make_finetune(out, base)

    expected = {
        "description": (
            "Reference numbers written by scripts/make_peft_fixtures.py. Paths are relative to this "
            "file's directory. Per module: shape [out,in]; r/alpha/scaling read from the live PEFT "
            "module (null for dense); delta_w_fro = ||dW||_F with dW = merge_and_unload() weight minus "
            "base weight (float32 merge, differenced in float64); lora_delta_fro = ||scaling*B@A||_F in "
            "float64 from the adapter factors (for DoRA this is NOT the merged dW); sigma = all singular "
            "values of the float32 base W computed in float64, descending; delta_i = |u_i^T dW v_i| / "
            "sigma_i; top8 = indices of the 8 largest delta, descending. adapter_config.json's "
            "base_model_name_or_path is relative to the adapter directory."
        ),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "base": {
            "dir": "tiny-llama",
            "bf16_dir": "tiny-llama-bf16",
            "sharded_dir": "tiny-llama-sharded",
            "seed": BASE_SEED,
        },
        "target_modules": TARGET_MODULES,
        "adapters": entries,
    }
    (out / "expected.json").write_text(dump_json(expected))


if __name__ == "__main__":
    main()
