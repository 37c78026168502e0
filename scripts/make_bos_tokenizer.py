#!/usr/bin/env python3
"""Writes tests/fixtures/tiny-llama-bos/: tiny-llama's tokenizer.json with the post-processor a
LLaMA tokenizer.json carries (TemplateProcessing: `<s>` before every sequence), and expected.json:
the ids Python `tokenizers` gives for the loglik protocol's pieces of one boolq example: the
evaluation prompt with the tokenizer's default (`add_special_tokens=True`, so `<s>` first) and each
label continuation with `add_special_tokens=False` (no `<s>` in the middle of a scored sequence).

The prompt is LLM-Adapters' `commonsense_evaluate.py` `generate_prompt(instruction)` (no input).

Usage (from a venv made from scripts/requirements-fixtures.txt, at the repository root):
    python scripts/make_bos_tokenizer.py
"""

import json
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "fixtures" / "tiny-llama" / "tokenizer.json"
OUT = ROOT / "tests" / "fixtures" / "tiny-llama-bos"

INSTRUCTION = "Is 2 even? Answer format: true/false"
LABELS = ["true", "false"]


def generate_prompt(instruction: str) -> str:
    return f"""Below is an instruction that describes a task. Write a response that appropriately completes the request. 

                ### Instruction:
                {instruction}

                ### Response:
                """  # noqa: W291 (the trailing space is LLM-Adapters')


tok = Tokenizer.from_file(str(SRC))
bos = tok.token_to_id("<s>")
tok.post_processor = TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
)
OUT.mkdir(parents=True, exist_ok=True)
tok.save(str(OUT / "tokenizer.json"))

prompt = generate_prompt(INSTRUCTION)
expected = {
    "tokenizers_version": __import__("tokenizers").__version__,
    "bos_id": bos,
    "instruction": INSTRUCTION,
    "prompt_ids": tok.encode(prompt).ids,
    "continuations": {
        label: tok.encode(f"the correct answer is {label}", add_special_tokens=False).ids
        for label in LABELS
    },
    # What the bug gave: the continuation with the tokenizer's default, `<s>` first.
    "continuations_with_special_tokens": {
        label: tok.encode(f"the correct answer is {label}").ids for label in LABELS
    },
}
(OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
print(f"wrote {OUT}")
