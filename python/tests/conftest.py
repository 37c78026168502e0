"""Real transformers Trainer runs of the committed tiny LLaMA (tests/fixtures/tiny-llama) with PEFT
LoRA, as scripts/make_trainer_run_fixture.py makes the hf-trainer-run fixture."""

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "tiny-llama"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
SEQ_LEN = 24


@pytest.fixture(autouse=True)
def _tsd_home(tmp_path_factory, monkeypatch):
    # The binary's caches (SVDs) in a per-session directory, not the user's.
    home = tmp_path_factory.getbasetemp() / "tsd-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("TSD_HOME", str(home))


def dataset(n, vocab, seed):
    import torch

    class TokenSequences(torch.utils.data.Dataset):
        def __init__(self):
            motif = torch.randint(3, vocab, (4,), generator=torch.Generator().manual_seed(0))
            g = torch.Generator().manual_seed(seed)
            base = motif.repeat(SEQ_LEN // 4 + 1)[:SEQ_LEN]
            noise = torch.randint(3, vocab, (n, SEQ_LEN), generator=g)
            keep = torch.rand((n, SEQ_LEN), generator=g) < 0.7
            self.ids = torch.where(keep, base.expand(n, SEQ_LEN), noise)

        def __len__(self):
            return self.ids.shape[0]

        def __getitem__(self, i):
            ids = self.ids[i]
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    return TokenSequences()


def make_trainer(out, callbacks, *, max_steps=6, save_steps=2, adapter_name="default", **targs):
    """A Trainer of LoRA r = 4 on the tiny LLaMA (CPU, seeded), saving every ``save_steps``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments, set_seed

    set_seed(0)
    model = LlamaForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    model.name_or_path = str(TINY)
    model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES),
        adapter_name=adapter_name,
    )
    kw = dict(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=2e-2,
        warmup_steps=1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_only_model=True,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    kw.update(targs)
    return Trainer(
        model=model,
        args=TrainingArguments(**kw),
        train_dataset=dataset(48, model.config.vocab_size, seed=1),
        callbacks=callbacks,
    )


def wait_for(pred, timeout=120.0):
    t = time.monotonic()
    while not pred():
        if time.monotonic() - t > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)
