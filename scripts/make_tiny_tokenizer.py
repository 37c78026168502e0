#!/usr/bin/env python3
"""Writes tests/fixtures/tiny-llama/tokenizer.json: a character-level tokenizer for the tiny test
model (vocab 128): <unk>=0, <s>=1, </s>=2, printable ASCII 32..126 = 3..97, newline = 98.

Usage: python scripts/make_tiny_tokenizer.py
"""

from pathlib import Path

from tokenizers import Tokenizer, models

ROOT = Path(__file__).resolve().parent.parent

vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for c in range(32, 127):
    vocab[chr(c)] = len(vocab)
vocab["\n"] = len(vocab)
tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
tok.add_special_tokens(["<unk>", "<s>", "</s>"])
tok.save(str(ROOT / "tests" / "fixtures" / "tiny-llama" / "tokenizer.json"))
