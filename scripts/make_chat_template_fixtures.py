"""Expected chat-template renderings and tokenizations from real transformers, for tests/chat_template.rs.

For each tokenizer — the default model (SmolLM2-135M-Instruct, its GGUF as tsd provisions it), the
committed small tokenizers of tests/fixtures/chat-tokenizers/{llama3,llama3_1,qwen2_5}, and two
directories written here under tests/fixtures/chat/ whose tokenizer_config.json holds the template
inline (a string) or as a list of named templates ("default", used without tools, and "tool_use",
used with them) — and for each conversation, with
add_generation_prompt false and true: `apply_chat_template(..., tokenize=False)` (the text) and
`tokenize=True` (the ids). For TRL 1.16's training templates (`{% generation %}` markers) on the
llama3 and qwen2_5 tokenizers: the ids and `assistant_masks` of
`return_assistant_tokens_mask=True, return_dict=True`.

JSON objects in the conversations are written with their keys in sorted order: tsd reads JSON
without keeping key order (serde_json's map is sorted), so `tojson` of an object matches
transformers only when the caller's keys were sorted.

Usage (the venv of scripts/requirements-fixtures.txt):
    python scripts/make_chat_template_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
(default: ~/.cache/tsd/models/SmolLM2-135M-Instruct.Q4_1.gguf) — writes
tests/fixtures/chat/expected.json and tests/fixtures/chat/{inline,named}/.
"""

import json
import pathlib
import shutil
import sys

import transformers
import trl
from transformers import AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKS = ROOT / "tests/fixtures/chat-tokenizers"
OUT = ROOT / "tests/fixtures/chat"
TRL_TEMPLATES = pathlib.Path(trl.__file__).parent / "chat_templates"

# Keys in the order OpenAI-style tool schemas write them (not sorted): templates see dicts in
# insertion order, and so must tsd.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Météo actuelle d'une ville — « current weather » 🌤",
            "parameters": {
                "type": "object",
                "properties": {
                    "unit": {"type": "string", "enum": ["°C", "°F"]},
                    "city": {"type": "string", "description": "Nom de la ville, e.g. Zürich"},
                },
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS = {
    "basic": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital."},
    ],
    "system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 * 3?"},
        {"role": "assistant", "content": "2 * 3 = 6."},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Is the answer yes?"},
        {"role": "assistant", "content": "The answer is yes."},
        {"role": "user", "content": "Thanks."},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français. 東京 🙂"},
        {"role": "user", "content": "Ça va ? naïve café — ありがとう 👍🏽"},
        {"role": "assistant", "content": "Très bien 👍 « merci » — どういたしまして"},
    ],
    "whitespace": [
        {"role": "user", "content": "  padded question \n"},
        {"role": "assistant", "content": "\n  padded answer  \n\n"},
        {"role": "user", "content": "\tand tab\t"},
        {"role": "assistant", "content": " two  spaces "},
    ],
    "empty_assistant": [
        {"role": "user", "content": "Say nothing."},
        {"role": "assistant", "content": ""},
    ],
    "null_keys": [
        {"role": "user", "content": "Hi", "name": None},
        {"role": "assistant", "content": "Hi there.", "tool_calls": None},
    ],
}

# Tool use (Qwen2.5 and Llama 3.1 templates only): a tool call, its answer, the reply.
TOOL_CONVERSATION = [
    {"role": "user", "content": "Quel temps fait-il à Zürich ?"},
    {
        "content": None,
        "role": "assistant",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"unit": "°C", "city": "Zürich"}},
            }
        ],
    },
    {"role": "tool", "content": '{"temperature": 21, "ciel": "ensoleillé ☀️"}'},
    {"role": "assistant", "content": "Il fait 21 °C à Zürich ☀️."},
]

# A template printing Python-isms (None, True, floats, lists, tools passed as None).
PROBE = (
    "{{ tools is defined }}|{{ tools is none }}|{{ none }}|{{ true }}|{{ 1.0 }}|{{ 2.50 }}|"
    "{{ messages[0].content.split(' ') }}|{{ messages[0].content | tojson }}|"
    "{{ {'b': [1, 2.5, none, false]} | tojson(indent=2) }}|{{ bos_token is defined }}|{{ eos_token }}|"
    "{% for m in messages %}{{ loop.index0 }}:{{ m.role | upper }}{% if not loop.last %},{% endif %}{% endfor %}|"
    "{{ {'z': 1, 'a': 2} | tojson }}|{% for k, v in {'z': 1, 'a': 2}.items() %}{{ k }}{{ v }}{% endfor %}\n"
)


def write_tokenizer_dirs():
    """tests/fixtures/chat/{inline,named}: tokenizer_config.json holding the template inline."""
    qwen = json.loads((TOKS / "qwen2_5/tokenizer_config.json").read_text())
    inline = OUT / "inline"
    inline.mkdir(parents=True, exist_ok=True)
    shutil.copy(TOKS / "qwen2_5/tokenizer.json", inline / "tokenizer.json")
    qwen["chat_template"] = (TOKS / "qwen2_5/chat_template.jinja").read_text()
    (inline / "tokenizer_config.json").write_text(json.dumps(qwen, indent=2, ensure_ascii=False) + "\n")

    llama = json.loads((TOKS / "llama3/tokenizer_config.json").read_text())
    named = OUT / "named"
    named.mkdir(parents=True, exist_ok=True)
    shutil.copy(TOKS / "llama3/tokenizer.json", named / "tokenizer.json")
    llama["chat_template"] = [
        {"name": "rag", "template": "{{ raise_exception('not this one') }}"},
        {"name": "default", "template": (TOKS / "llama3/chat_template.jinja").read_text()},
        {"name": "tool_use", "template": (TOKS / "llama3_1/chat_template.jinja").read_text()},
    ]
    (named / "tokenizer_config.json").write_text(json.dumps(llama, indent=2, ensure_ascii=False) + "\n")
    return {"inline": inline, "named": named}


def load_all(gguf):
    toks = {"smollm2": AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)}
    for name in ["llama3", "llama3_1", "qwen2_5"]:
        toks[name] = AutoTokenizer.from_pretrained(str(TOKS / name))
    for name, d in write_tokenizer_dirs().items():
        toks[name] = AutoTokenizer.from_pretrained(str(d))
    return toks


def case(tok, conv, tools, gen, chat_template=None, mask=False):
    kw = dict(tools=tools, add_generation_prompt=gen, chat_template=chat_template)
    text = tok.apply_chat_template(conv, tokenize=False, **kw)
    out = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=mask, **kw)
    row = {"text": text, "ids": list(out["input_ids"])}
    if mask:
        row["assistant_masks"] = list(out["assistant_masks"])
    return row


def main(gguf):
    toks = load_all(gguf)
    cases = []
    for tname, tok in toks.items():
        convs = dict(CONVERSATIONS)
        if tname in ("qwen2_5", "llama3_1", "inline", "named"):
            convs["tools"] = TOOL_CONVERSATION
        for cname, conv in convs.items():
            tools = TOOLS if cname == "tools" else None
            for gen in (False, True):
                row = case(tok, conv, tools, gen)
                cases.append({"tokenizer": tname, "conversation": cname, "add_generation_prompt": gen, **row})
    # TRL's training templates: the same text as the plain templates, plus assistant masks.
    training = []
    for tname, template in [("llama3", "llama3_training.jinja"), ("qwen2_5", "qwen2_5_training.jinja")]:
        tok = toks[tname]
        source = (TRL_TEMPLATES / template).read_text()
        convs = dict(CONVERSATIONS)
        if tname == "qwen2_5":
            convs["tools"] = TOOL_CONVERSATION
        for cname, conv in convs.items():
            tools = TOOLS if cname == "tools" else None
            for gen in (False, True):
                row = case(tok, conv, tools, gen, chat_template=source, mask=True)
                plain = case(tok, conv, tools, gen)
                assert row["text"] == plain["text"], (tname, cname, gen)
                training.append(
                    {"tokenizer": tname, "template": template, "conversation": cname, "add_generation_prompt": gen, **row}
                )
    probe = case(toks["qwen2_5"], CONVERSATIONS["basic"], None, False, chat_template=PROBE)
    special = {name: dict(tok.special_tokens_map) for name, tok in toks.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "expected.json", "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f' "transformers": {json.dumps(transformers.__version__)},\n "trl": {json.dumps(trl.__version__)},\n')
        f.write(f' "special_tokens": {json.dumps(special, ensure_ascii=False)},\n')
        f.write(f' "tools": {json.dumps(TOOLS, ensure_ascii=False)},\n')
        trl_sources = {t: (TRL_TEMPLATES / t).read_text() for t in ["llama3_training.jinja", "qwen2_5_training.jinja"]}
        f.write(f' "training_templates": {json.dumps(trl_sources, ensure_ascii=False)},\n')
        convs = {**CONVERSATIONS, "tools": TOOL_CONVERSATION}
        f.write(f' "conversations": {json.dumps(convs, ensure_ascii=False)},\n')
        f.write(f' "probe": {json.dumps({"template": PROBE, **probe}, ensure_ascii=False)},\n')
        for key, rows in [("cases", cases), ("training", training)]:
            f.write(f' "{key}": [\n')
            f.write(",\n".join("  " + json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows))
            f.write("\n ]" + (",\n" if key == "cases" else "\n"))
        f.write("}\n")
    print(f"{len(cases)} cases, {len(training)} training cases -> {OUT / 'expected.json'}")


if __name__ == "__main__":
    default = pathlib.Path.home() / ".cache/tsd/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default)
