"""tsd.LoraDash on real Trainer runs of the tiny LLaMA (tests/fixtures/tiny-llama).

Needs torch, transformers, peft and the tsd binary (``$TSD_BIN``, ``tsd`` on PATH, or
``target/release/tsd``); skipped without them.

    TSD_BIN=target/release/tsd python -m pytest tests/python -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests" / "fixtures" / "tiny-llama"
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


from tsd import find_tsd_bin  # noqa: E402  (the installed package's binary, or $TSD_BIN)
from conftest import dataset  # noqa: E402  (the Trainer runs' seeded token sequences)

TSD = find_tsd_bin()


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("TSD_BIN", TSD)
    monkeypatch.setenv("TSD_HOME", str(tmp_path / "tsd-home"))


def _model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    return get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=TARGETS))


def _trainer(model, out: Path, dash, steps: int, save_steps: int):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=2e-2,
        warmup_steps=1, logging_steps=1, save_strategy="steps", save_steps=save_steps,
        report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=dataset(48, model.config.vocab_size, 1),
                   callbacks=[dash])


def test_dash_trains_saves_in_tsd_layout_and_folds(tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from tsd.dash import LoraDash

    model = _model()
    dash = LoraDash(model, s=2, t=3, base=str(BASE))
    names = [n for n, _ in model.named_parameters() if "dash" in n]
    assert any(n.endswith("tsd_dash.delta_sigma") for n in names)
    params = dict(model.named_parameters())
    assert all(params[n].requires_grad == n.endswith("delta_sigma") for n in names)
    assert all(params[n].dtype == torch.float32 for n in names)
    from transformers import TrainerCallback

    grads = {}

    class Spy(TrainerCallback):
        """Whether Δσ has a gradient when the optimizer steps (global_step + 1 is the step)."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            g = [p.grad for n, p in model.named_parameters() if n.endswith("tsd_dash.delta_sigma")]
            grads[state.global_step + 1] = all(x is not None for x in g)

    tr = _trainer(model, tmp_path / "run", dash, steps=8, save_steps=2)
    tr.add_callback(Spy())
    tr.train()
    assert grads == {k: k > 3 for k in range(1, 9)}, grads

    assert dash.switch_step == 3 and dash.active
    moved = max(float(v.abs().max()) for v in dash.delta_sigma().values())
    assert moved > 0, "Δσ never moved after the switch"

    # Before the switch: plain PEFT files; after it: tsd's layout, read by tsd.
    assert not (tmp_path / "run" / "checkpoint-2" / "tsd_dash.safetensors").exists()
    ck = tmp_path / "run" / "checkpoint-8"
    assert (ck / "tsd_dash.safetensors").exists()
    cfg = json.loads((ck / "adapter_config.json").read_text())
    assert cfg["r"] == 6 and cfg["lora_alpha"] == 6
    p = subprocess.run([TSD, "inspect", str(ck), "--base", str(BASE), "--json", "--no-null", "--quiet",
                        "--top-s", "2"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert "dash" in json.dumps(rep).lower()

    # The folded adapter is the Dash model: merged logits agree.
    model.eval()
    ids = dataset(2, model.config.vocab_size, 5).ids
    with torch.no_grad():
        want = model(input_ids=ids).logits
    folded = dash.save_folded(tmp_path / "folded")
    fresh = LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    merged = PeftModel.from_pretrained(fresh, str(folded)).merge_and_unload().eval()
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert float((got - want).abs().max()) < 1e-4
    # PEFT loads the checkpoint's fold too (what a PEFT user gets from tsd's layout).
    fresh = LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    ckm = PeftModel.from_pretrained(fresh, str(ck)).eval()
    with torch.no_grad():
        assert float((ckm(input_ids=ids).logits - want).abs().max()) < 1e-4


def test_resume_from_a_dash_checkpoint(tmp_path):
    from tsd.dash import LoraDash

    model = _model()
    dash = LoraDash(model, s=2, t=2, base=str(BASE))
    _trainer(model, tmp_path / "run", dash, steps=4, save_steps=4).train()
    ck = tmp_path / "run" / "checkpoint-4"
    want = dash.delta_sigma()

    model2 = _model()
    dash2 = LoraDash(model2, s=2, t=2, base=str(BASE))
    tr = _trainer(model2, tmp_path / "run", dash2, steps=6, save_steps=2)
    tr._load_from_checkpoint(str(ck))
    assert dash2.active and dash2.switch_step == 2
    for k, v in dash2.delta_sigma().items():
        assert torch.equal(v, want[k])
    tr.train(resume_from_checkpoint=str(ck))
    assert (tmp_path / "run" / "checkpoint-6" / "tsd_dash.safetensors").exists()


def test_trajectory_matches_tsd_train(tmp_path):
    """scripts/compare_trainer_trajectory.py: per-step losses and final ΔW within 1e-4."""
    out = tmp_path / "compare.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_trainer_trajectory.py"),
                        "--out", str(out), "--tsd-bin", TSD], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(out.read_text())
    assert r["pass"] and r["steps"] >= 20 and r["steps_after_switch"] >= 10


def test_named_adapter(tmp_path):
    """A non-default adapter: PEFT saves it in ``checkpoint-N/NAME/``, rewritten there."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from tsd.dash import LoraDash

    torch.manual_seed(0)
    m = LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    model = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), adapter_name="task")
    dash = LoraDash(model, s=2, t=2, base=str(BASE))
    assert dash.adapter_name == "task"
    _trainer(model, tmp_path / "run", dash, steps=4, save_steps=4).train()
    ck = tmp_path / "run" / "checkpoint-4"
    assert (ck / "task" / "tsd_dash.safetensors").exists()
    p = subprocess.run([TSD, "inspect", str(ck), "--adapter-name", "task", "--base", str(BASE), "--json",
                        "--no-null", "--quiet", "--top-s", "2"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
