"""Tokenizer directories for the chat-template and SFT fixtures: a small byte-level BPE trained
here, given the special tokens, post-processor and `tokenizer_config.json` of Llama 3 / 3.1
Instruct and Qwen2.5 Instruct, with those models' real chat templates (the copies TRL 1.16 ships
in `trl/chat_templates/`, which TRL compares tokenizers' templates against byte for byte).

The real tokenizers are gated (Llama) or large; what the fixtures test is the template, the
special tokens and the BOS rules around them, which these small tokenizers carry exactly. The
vocabulary is not the models'.

Usage (the venv of scripts/requirements-fixtures.txt):
    python scripts/make_chat_tokenizers.py tests/fixtures/chat-tokenizers
"""

import json
import pathlib
import sys

import trl
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TEMPLATES = pathlib.Path(trl.__file__).parent / "chat_templates"
DATA = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/llm-adapters"

LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus():
    """Deterministic training text: the committed LLM-Adapters fixture rows, plus chat words."""
    lines = []
    for p in sorted(DATA.rglob("*.json")):
        for ex in json.loads(p.read_text()):
            lines += [ex.get("instruction", ""), ex.get("input", ""), ex.get("output", "")]
    lines += [
        "You are a helpful assistant. What is the capital of France? Paris is the capital.",
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024",
        "Environment: ipython tool_call function name arguments parameters",
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "Hello! How can I help you today? 2 * 3 = 6. The answer is yes.",
    ]
    return [l for l in lines if l]


def train(special):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def save(out, tok, template, **special):
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.chat_template = (TEMPLATES / template).read_text()
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)


def main(out):
    out = pathlib.Path(out)
    llama = train(LLAMA3_SPECIAL)
    # Llama 3's tokenizer.json prepends <|begin_of_text|> to every encoding (add_special_tokens).
    bos = llama.token_to_id("<|begin_of_text|>")
    llama.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    save(out / "llama3", llama, "llama3.jinja", **kw)
    save(out / "llama3_1", llama, "llama3_1.jinja", **kw)
    qwen = train(QWEN_SPECIAL)
    save(out / "qwen2_5", qwen, "qwen2_5.jinja", eos_token="<|im_end|>", pad_token="<|endoftext|>")


if __name__ == "__main__":
    main(sys.argv[1])
