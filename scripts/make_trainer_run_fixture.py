#!/usr/bin/env python3
"""Write ``tests/fixtures/hf-trainer-run/``: a real Hugging Face ``Trainer`` run with PEFT LoRA.

The base is the committed random tiny LLaMA (``tests/fixtures/tiny-llama``, made by
``scripts/make_peft_fixtures.py``). The run trains LoRA (r = 4, alpha = 8, q/k/v/up/down) for 6
optimizer steps on seeded random token sequences, logs every step, evaluates every 2 steps (so
``eval_loss`` appears in ``log_history``) and saves every 2 steps: ``checkpoint-2``, ``checkpoint-4``,
``checkpoint-6``, each holding what ``Trainer`` writes for a PEFT model (``adapter_config.json``,
``adapter_model.safetensors``, ``README.md``, ``trainer_state.json``, ``training_args.bin``).
``save_only_model=True`` leaves out ``optimizer.pt``, ``scheduler.pt`` and ``rng_state.pth`` to keep
the fixture small; ``training_args.bin`` (a pickle) is kept on purpose: tsd must never read it.

``base_model_name_or_path`` is written as ``../tiny-llama``: relative to the run directory, which is
where tsd looks for a relative base of a Trainer run.

Usage (from the repository root, in a virtualenv made from scripts/requirements-fixtures.txt)::

    python scripts/make_trainer_run_fixture.py [--out tests/fixtures/hf-trainer-run]
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

# PEFT stores ``target_modules`` as a set: pin the hash seed so adapter_config.json is stable.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM, Trainer, TrainingArguments, set_seed  # noqa: E402

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
SEQ_LEN = 24
TRAIN_EXAMPLES = 48
EVAL_EXAMPLES = 8
STEPS = 6
SAVE_EVERY = 2


class TokenSequences(torch.utils.data.Dataset):
    """Seeded random token ids; the labels are the inputs (causal LM loss)."""

    def __init__(self, n: int, vocab: int, seed: int):
        # A repeated 4-token motif (the same in every split) with noise, so there is something to learn.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/hf-trainer-run"))
    ap.add_argument("--base", type=Path, default=Path("tests/fixtures/tiny-llama"))
    args = ap.parse_args()

    set_seed(0)
    torch.use_deterministic_algorithms(True)
    model = LlamaForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    # PEFT copies ``name_or_path`` into adapter_config.json's base_model_name_or_path.
    model.name_or_path = f"../{args.base.name}"
    model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES),
    )
    vocab = model.config.vocab_size
    if args.out.exists():
        shutil.rmtree(args.out)
    targs = TrainingArguments(
        output_dir=str(args.out),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=2e-2,
        warmup_steps=1,
        lr_scheduler_type="linear",
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=SAVE_EVERY,
        save_strategy="steps",
        save_steps=SAVE_EVERY,
        save_only_model=True,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=TokenSequences(TRAIN_EXAMPLES, vocab, seed=1),
        eval_dataset=TokenSequences(EVAL_EXAMPLES, vocab, seed=2),
    )
    trainer.train()
    for ck in sorted(args.out.glob("checkpoint-*")):
        for f in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            if (ck / f).exists():
                raise SystemExit(f"{ck / f}: save_only_model=True should have left it out")
        print(ck, sorted(p.name for p in ck.iterdir()))


if __name__ == "__main__":
    main()
