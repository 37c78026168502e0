"""Ground truth of what TRL's `SFTTrainer` trains on: `tests/fixtures/sft/`.

Writes small JSON Lines datasets under `tests/fixtures/sft/data/` (text, prompt/completion,
conversational prompt/completion, messages), then, for each tokenizer (SmolLM2-135M-Instruct from
its GGUF, and the committed Llama 3 / Qwen2.5 chat fixture tokenizers), each dataset, each relevant
loss setting and two `max_length` values, builds a real `SFTTrainer` (tiny random
`LlamaForCausalLM`, no training) and records from `trainer.train_dataset` every row's `input_ids`
and `labels`, the source rows the fully-masked filter dropped, what `trainer.data_collator` makes
of the first two rows, or the error TRL raised. Output: `tests/fixtures/sft/expected.json`.

Nothing here re-implements TRL: `rows`, `dropped_rows`, `collator` and `error` come from the
trainer. The per-row `prompt`/`rendered` diagnostics are recomputed with the same tokenizer calls
TRL makes (`trl.data_utils._tokenize`), for readers; the script checks they agree with the trainer.

Usage (the venv of scripts/requirements-fixtures.txt):
    python scripts/make_sft_fixtures.py [--gguf ~/.cache/tsd/models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import pathlib
import sys
import tempfile
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/sft"
DATA = OUT / "data"
CHAT_TOKENIZERS = ROOT / "tests/fixtures/chat-tokenizers"

MAX_LENGTHS = [1024, 32]  # 1024 is SFTConfig's default; 32 truncates the long rows (and chat rows)

LONG_TEXT = (
    "Low-rank adaptation freezes the pretrained weights and trains two small matrices per layer "
    "instead, so a seven billion parameter model can be fine-tuned on a single consumer graphics "
    "card. The update is the product of the two matrices, scaled by alpha over the rank, and it can "
    "be merged back into the base weights after training, so inference costs nothing extra."
)

TEXT_ROWS = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "Q: What is 2 + 2?\nA: 4"},
    {"text": "Café crème brûlée, naïve façade. 東京は晴れ。 Party time 🎉🚀"},
    {"text": "This row already ends with the ChatML end token.<|im_end|>"},
    {"text": "This row already ends with the Llama 3 end token.<|eot_id|>"},
    {"text": LONG_TEXT},
    {"text": "A special token string <|im_start|> in the middle of plain text."},
    {"text": "  Leading spaces, a blank line\n\nand a trailing newline.\n"},
]

PC_ROWS = [
    {"prompt": "The answer is", "completion": " yes"},
    {"prompt": "Answer:", "completion": "yes"},
    {"prompt": "The answer is ", "completion": "yes"},  # " " + "yes" merge into " yes"
    {"prompt": "Hello wor", "completion": "ld!"},  # "wor" + "ld" merge into "world"
    {"prompt": "Q: What is the capital of France?\nA:", "completion": " Paris."},
    {"prompt": "Say party in emoji:", "completion": " 🎉🥳 ¡Fiesta!"},
    {"prompt": "Finish the sentence: the end", "completion": " is near.<|im_end|>"},
    {"prompt": LONG_TEXT + "\nSummary:", "completion": " LoRA trains small matrices."},
    {"prompt": "Explain LoRA in one paragraph:", "completion": " " + LONG_TEXT},
]

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731

CHAT_PC_ROWS = [
    {"prompt": [U("What color is the sky?")], "completion": [A("Blue.")]},
    {"prompt": [S("You are terse."), U("2+2?")], "completion": [A("4")]},
    {
        "prompt": [U("Hi!"), A("Hello! How can I help you today?"), U("Name a prime number.")],
        "completion": [A("7 is prime.")],
    },
    {"prompt": [U("Say thank you in Japanese.")], "completion": [A("ありがとう 🙏")]},
    {"prompt": [U("Any tips?")], "completion": [A("  Sleep well.\n")]},
    {"prompt": [U(LONG_TEXT + " Summarize.")], "completion": [A("LoRA trains small matrices.")]},
    {"prompt": [U("Explain LoRA.")], "completion": [A(LONG_TEXT)]},
]

MESSAGES_ROWS = [
    {"messages": [U("What color is the sky?"), A("Blue.")]},
    {"messages": [S("You are a pirate."), U("Where is the treasure?"), A("Arr, under the palm tree!")]},
    {
        "messages": [
            U("Hi!"),
            A("Hello! How can I help you today?"),
            U("What is 2 * 3?"),
            A("2 * 3 = 6."),
        ]
    },
    {"messages": [U("Say thank you in Japanese."), A("ありがとう 🙏")]},
    {"messages": [U("Any tips?"), A("  Sleep well.\n")]},
    {"messages": [U("Explain LoRA."), A(LONG_TEXT)]},
    {"messages": [S("Answer in one word."), U("Capital of France?"), A("Paris.")]},
]

DATASETS = {
    "text.jsonl": TEXT_ROWS,
    "prompt_completion.jsonl": PC_ROWS,
    "chat_prompt_completion.jsonl": CHAT_PC_ROWS,
    "messages.jsonl": MESSAGES_ROWS,
}


def write_data():
    DATA.mkdir(parents=True, exist_ok=True)
    for name, rows in DATASETS.items():
        with open(DATA / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def settings_for(dataset, tok_name):
    """Loss settings recorded per dataset: (completion_only_loss, assistant_only_loss)."""
    s = [(None, False)]  # SFTConfig defaults
    if dataset in ("prompt_completion.jsonl", "chat_prompt_completion.jsonl"):
        s.append((False, False))
    if dataset in ("chat_prompt_completion.jsonl", "messages.jsonl"):
        s.append((None, True))  # on SmolLM2 TRL refuses it: recorded as the error
    return s


def load_tokenizers(gguf):
    from transformers import AutoTokenizer

    gguf = pathlib.Path(gguf).expanduser()
    return {
        "smollm2": (
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name),
            {"source": f"~/.cache/tsd/models/{gguf.name}", "sha256": sha256(gguf)},
        ),
        "llama3": (
            AutoTokenizer.from_pretrained(str(CHAT_TOKENIZERS / "llama3")),
            {"source": "tests/fixtures/chat-tokenizers/llama3"},
        ),
        "qwen2_5": (
            AutoTokenizer.from_pretrained(str(CHAT_TOKENIZERS / "qwen2_5")),
            {"source": "tests/fixtures/chat-tokenizers/qwen2_5"},
        ),
    }


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tiny_model(vocab_size):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    return LlamaForCausalLM(cfg)


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_case(tok, dataset_path, max_length, completion_only_loss, assistant_only_loss, tmp):
    import copy

    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    tok = copy.deepcopy(tok)  # the trainer sets pad_token on it
    ds = load_dataset("json", data_files=str(dataset_path), split="train", cache_dir=os.path.join(tmp, "hf"))
    n_source = len(ds)
    # A row index to find the rows the fully-masked filter drops. TRL ignores unknown columns.
    ds = ds.add_column("source_row", list(range(n_source)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = SFTConfig(
            output_dir=os.path.join(tmp, "out"),
            report_to=[],
            max_length=max_length,
            completion_only_loss=completion_only_loss,
            assistant_only_loss=assistant_only_loss,
            per_device_train_batch_size=2,
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
        )
    cap = Capture()
    trl_logger = logging.getLogger("trl")
    trl_logger.addHandler(cap)
    case = {"error": None}
    try:
        with warnings.catch_warnings(record=True) as w, contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("always")
            trainer = SFTTrainer(
                model=tiny_model(len(tok)), args=args, train_dataset=ds, processing_class=tok
            )
    except Exception as e:  # noqa: BLE001 -- TRL's refusal is the ground truth recorded
        case["error"] = f"{type(e).__name__}: {e}"
        return case, None
    finally:
        trl_logger.removeHandler(cap)
    td = trainer.train_dataset
    kept = list(td["source_row"])
    case["completion_only_loss_used"] = trainer.completion_only_loss
    case["chat_template_swapped"] = trainer.chat_template is not None
    case["rows"] = [
        {"source_row": r["source_row"], "input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in td
    ]
    case["dropped_rows"] = [i for i in range(n_source) if i not in kept]
    first = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in td.select(range(min(2, len(td))))]
    batch = trainer.data_collator(first) if first else {}
    case["collator_first_batch"] = {k: v.tolist() for k, v in batch.items()}
    case["pad_token"] = trainer._tokenizer.pad_token
    case["pad_token_id"] = trainer._tokenizer.pad_token_id
    # TRL's "tokenized prompt is not a prefix" warning is `warning_once` (once per process, not per case): left
    # out here; `diagnostics[...][i].prompt_is_prefix` records it per row instead.
    logs = [m for m in cap.messages if "is not a prefix of the tokenized" not in m]
    logs += [str(x.message) for x in w if "deprecat" not in str(x.message).lower()]
    case["warnings"] = sorted(set(logs))
    return case, trainer


def diagnostics(tok, rows, dataset, trainer_chat_template):
    """Per source row: the string(s) TRL tokenizes and, for prompt/completion data, the prompt ids and
    the common prefix with the prompt+completion ids (recomputed with TRL's own `_tokenize`)."""
    from trl.data_utils import _tokenize, common_prefix_length

    out = []
    eos = tok.eos_token
    for r in rows:
        d = {}
        if "text" in r:
            t = r["text"] if r["text"].endswith(eos) else r["text"] + eos
            d["rendered"] = t
        elif "messages" in r:
            d["rendered"] = tok.apply_chat_template(r["messages"], tokenize=False, chat_template=trainer_chat_template)
            d["chat"] = True
        else:
            if isinstance(r["prompt"], list):
                p = tok.apply_chat_template(
                    r["prompt"], tokenize=False, add_generation_prompt=True, chat_template=trainer_chat_template
                )
                pc = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False, chat_template=trainer_chat_template)
                pids = _tokenize(tok, r["prompt"], add_generation_prompt=True, chat_template=trainer_chat_template)["input_ids"]
                pcids = _tokenize(tok, r["prompt"] + r["completion"], chat_template=trainer_chat_template)["input_ids"]
                d["chat"] = True
            else:
                c = r["completion"] if r["completion"].endswith(eos) else r["completion"] + eos
                p, pc = r["prompt"], r["prompt"] + c
                pids = _tokenize(tok, p)["input_ids"]
                pcids = _tokenize(tok, pc)["input_ids"]
            k = common_prefix_length(pids, pcids)
            d["rendered_prompt"] = p
            d["rendered"] = pc
            d["prompt_ids"] = list(pids)
            d["common_prefix_len"] = k
            d["prompt_is_prefix"] = k == len(pids)
            d["prompt_tail_left_out"] = list(pids[k:])  # prompt tokens replaced by merged ones in prompt+completion
        out.append(d)
    return out


def dumps(obj, indent=0):
    """JSON with dicts indented and lists of scalars (token ids) on one line."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {dumps(v, indent + 2)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(x, (dict, list)) for x in obj):
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        if all(isinstance(x, list) and all(not isinstance(y, (dict, list)) for y in x) for x in obj):
            return "[" + ",".join(json.dumps(x, separators=(",", ":")) for x in obj) + "]"
        items = [f"{pad}  {dumps(v, indent + 2)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default="~/.cache/tsd/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    a = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import pyarrow
    import tokenizers
    import torch
    import transformers
    import trl

    datasets.disable_caching()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)

    write_data()
    toks = load_tokenizers(a.gguf)
    expected = {
        "generated_by": "scripts/make_sft_fixtures.py",
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__.split("+")[0],
            "pyarrow": pyarrow.__version__,
        },
        "max_lengths": MAX_LENGTHS,
        "tokenizers": {},
        "diagnostics": {},
        "cases": [],
    }
    default_ids = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tname, (tok, info) in toks.items():
            plain = tok("x")["input_ids"]
            expected["tokenizers"][tname] = {
                **info,
                "eos_token": tok.eos_token,
                "eos_token_id": tok.eos_token_id,
                "bos_token": tok.bos_token,
                "bos_token_id": tok.bos_token_id,
                "pad_token_before_trl": tok.pad_token,
                "plain_encoding_adds_bos": tok.bos_token_id is not None and plain[0] == tok.bos_token_id,
                "vocab_size": len(tok),
            }
            for dname in DATASETS:
                for col, aol in settings_for(dname, tname):
                    for ml in MAX_LENGTHS:
                        print(f"{tname} {dname} max_length={ml} completion_only_loss={col} assistant_only_loss={aol}", file=sys.stderr)
                        case, trainer = run_case(tok, DATA / dname, ml, col, aol, tmp)
                        expected["cases"].append(
                            {
                                "tokenizer": tname,
                                "dataset": dname,
                                "settings": {"max_length": ml, "completion_only_loss": col, "assistant_only_loss": aol},
                                **case,
                            }
                        )
                        if trainer is not None:
                            t = expected["tokenizers"][tname]
                            t["pad_token_used"] = case["pad_token"]
                            t["pad_token_id_used"] = case["pad_token_id"]
                        if trainer is not None and ml == MAX_LENGTHS[0]:
                            key = f"{tname}/{dname}"
                            if not aol and col is None:
                                diag = diagnostics(tok, DATASETS[dname], dname, None)
                                check(diag, case, tok)
                                expected["diagnostics"][key] = diag
                                default_ids[key] = [r["input_ids"] for r in case["rows"]]
                            if aol:
                                # The training template renders the same tokens; only the labels differ.
                                assert [r["input_ids"] for r in case["rows"]] == default_ids[key], key
                                t = expected["tokenizers"][tname]
                                t["training_chat_template_file"] = template_file(trainer.chat_template)
                                t["training_chat_template"] = trainer.chat_template
    text = dumps(expected) + "\n"
    (OUT / "expected.json").write_text(text, encoding="utf-8")
    print(f"wrote {OUT / 'expected.json'} ({len(text.encode()) // 1024} KiB, {len(expected['cases'])} cases)", file=sys.stderr)


def template_file(text):
    import trl

    for p in sorted((pathlib.Path(trl.__file__).parent / "chat_templates").glob("*.jinja")):
        if p.read_text(encoding="utf-8") == text:
            return f"trl/chat_templates/{p.name}"
    return None


def check(diag, case, tok):
    """The recomputed diagnostics agree with the trainer's rows (max_length 1024: nothing truncated):
    the rendered string, tokenized as TRL does, gives the row's input_ids."""
    assert len(case["rows"]) == len(diag) and not case["dropped_rows"]
    for r in case["rows"]:
        d = diag[r["source_row"]]
        assert len(r["input_ids"]) < 1024
        chat = d.get("chat", False)
        ids = tok(d["rendered"], add_special_tokens=not chat)["input_ids"]
        assert ids == r["input_ids"], (d["rendered"], ids, r["input_ids"])
        if "prompt_ids" in d:
            k = d["common_prefix_len"]
            assert r["input_ids"][:k] == d["prompt_ids"][:k]


if __name__ == "__main__":
    main()
