"""Training-data format fixtures for tests/data_formats.rs, written and read back by the real
Hugging Face `datasets` library (and pyarrow for Parquet):

- every schema tsd reads (alpaca, text, prompt_completion, chat_prompt_completion, messages) as
  JSON (a list), JSON Lines and Parquet (`Dataset.to_parquet`: pyarrow, snappy, nested
  `messages` as a list of structs), a ShareGPT `conversations` file, messages whose contents are
  lists of parts, a JSON Lines file with blank lines and a `.json` file holding JSON Lines;
- malformed files (a field missing on row 3, mixed schemas, a bad JSON line, a wrong type, a
  message without a role, a single top-level object);
- a Hugging Face cache tree under `hub/`: `datasets--tsd-fixtures--chat` (README.md `configs:`
  with two configs, train/test splits, JSON Lines: `datasets` infers one format for a repo from
  its first config's files), files symlinked into `blobs/` as
  huggingface_hub stores them) and `datasets--tsd-fixtures--plain` (no `configs:`, the default
  `data/{split}-00000-of-00001.parquet` pattern, nested `messages` in Parquet);
- `expected.json`: for every good file the rows `datasets.load_dataset("json"|"parquet",
  data_files=…, split="train")` returns, and for every (repo, config, split) of the cache tree the
  files and rows `datasets.load_dataset(<snapshot dir>, name=config, split=split)` resolves and
  returns.

Usage (the venv of scripts/requirements-fixtures.txt):
    python scripts/make_data_format_fixtures.py tests/fixtures/data-formats
"""

import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile

OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/data-formats")
CACHE = tempfile.mkdtemp(prefix="tsd-datasets-cache-")
os.environ["HF_DATASETS_CACHE"] = CACHE
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402

assert datasets.__version__ == "5.2.0", datasets.__version__
datasets.disable_progress_bars()

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city"}},
                "required": ["city"],
            },
        },
    }
]


def msg(role, content):
    return {"role": role, "content": content}


SCHEMAS = {
    "alpaca": [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "answer": "5"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue.", "answer": "blue"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!", "answer": "hi"},
    ],
    "text": [
        {"text": "The sky is blue.", "id": 0},
        {"text": "Grass is green.\nIt grows.", "id": 1},
        {"text": "Unicode: é ü 日本 🙂", "id": 2},
    ],
    "prompt_completion": [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": "2 + 2 =", "completion": " 4"},
        {"prompt": "Capital of France:", "completion": " Paris"},
        {"prompt": "Opposite of hot:", "completion": " cold"},
    ],
    "chat_prompt_completion": [
        {
            "prompt": [msg("system", "Be brief."), msg("user", "Weather in Paris?")],
            "completion": [msg("assistant", "Sunny.")],
            "tools": TOOLS,
        },
        {
            "prompt": [msg("system", "Be brief."), msg("user", "Weather in Oslo?")],
            "completion": [msg("assistant", "Snow.")],
            "tools": TOOLS,
        },
    ],
    "messages": [
        {
            "messages": [msg("system", "You are helpful."), msg("user", "Hi"), msg("assistant", "Hello!")],
            "tools": json.dumps(TOOLS),
        },
        {
            "messages": [msg("user", "2+2?"), msg("assistant", "4"), msg("user", "3+3?"), msg("assistant", "6")],
            "tools": json.dumps(TOOLS),
        },
    ],
}

EXTRA_GOOD = {
    # A column absent from a row (`datasets` fills it with null) and messages whose key sets
    # differ (`datasets` keeps them as JSON, as written).
    "messages_sparse.jsonl": [
        {
            "messages": [
                msg("user", "Weather?"),
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "Sunny", "name": "get_weather"},
            ],
            "id": 7,
        },
        {"messages": [msg("user", "Hi"), msg("assistant", "Hello")]},
    ],
    "sharegpt.jsonl": [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Thanks"}, {"from": "gpt", "value": "Welcome."}]},
    ],
    "messages_parts.jsonl": [
        {"messages": [msg("user", [{"type": "text", "text": "Describe this."}]), msg("assistant", [{"type": "text", "text": "A cat."}])]},
        {"messages": [msg("user", [{"type": "text", "text": "And this?"}]), msg("assistant", [{"type": "text", "text": "A dog."}])]},
    ],
}


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_jsonl(path, rows, blank_lines=False):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    text = ("\n\n".join(lines) if blank_lines else "\n".join(lines)) + "\n"
    path.write_text(text, encoding="utf-8")


def write_parquet(path, rows):
    datasets.Dataset.from_list(rows).to_parquet(str(path))


def loaded(path):
    kind = "parquet" if path.suffix == ".parquet" else "json"
    ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    return ds.to_list()


def blob_link(repo_dir, snap, rel, data):
    """A file of a cached snapshot as huggingface_hub stores it: the content in blobs/, a relative
    symlink from snapshots/<sha>/<rel>."""
    digest = hashlib.sha256(data).hexdigest()
    blob = repo_dir / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = snap / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def cache_repo(root, repo, files):
    """`datasets--ORG--NAME` with refs/main and one snapshot of `files` (rel path → bytes)."""
    repo_dir = root / ("datasets--" + repo.replace("/", "--"))
    sha = hashlib.sha1(repo.encode()).hexdigest()
    snap = repo_dir / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    for rel, data in sorted(files.items()):
        blob_link(repo_dir, snap, rel, data)
    return snap


def file_bytes(writer, rows, suffix):
    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / ("f" + suffix)
        writer(p, rows)
        return p.read_bytes()


# One config's splits share one set of features in `datasets`: string contents here too.
CHAT_TEST = [{"messages": [msg("user", "Bye"), msg("assistant", "Goodbye!")], "tools": json.dumps(TOOLS)}]

CHAT_README = """---
license: apache-2.0
configs:
- config_name: chat
  default: true
  data_files:
  - split: train
    path: chat/train-*.jsonl
  - split: test
    path: chat/test.jsonl
- config_name: completion
  data_files:
  - split: train
    path:
    - completion/train_a.jsonl
    - completion/train_b.jsonl
  - split: test
    path: "completion/test*.jsonl"
---

# tsd-fixtures/chat

Two configs: `chat` (messages) and `completion` (prompt/completion).
"""

PLAIN_README = """---
license: apache-2.0
---

# tsd-fixtures/plain

No `configs:`: the default data-file patterns apply.
"""


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    expected = {"datasets_version": datasets.__version__, "files": {}, "hub": {}}

    good = []
    for name, rows in SCHEMAS.items():
        for suffix, writer in [(".json", write_json), (".jsonl", write_jsonl), (".parquet", write_parquet)]:
            p = OUT / f"{name}{suffix}"
            writer(p, rows)
            good.append(p)
    for name, rows in EXTRA_GOOD.items():
        write_jsonl(OUT / name, rows)
        good.append(OUT / name)
    write_parquet(OUT / "sharegpt.parquet", EXTRA_GOOD["sharegpt.jsonl"])
    good.append(OUT / "sharegpt.parquet")
    # JSON Lines told from content: blank lines, and a `.json` name.
    write_jsonl(OUT / "text_blank_lines.jsonl", SCHEMAS["text"], blank_lines=True)
    write_jsonl(OUT / "text_lines_named.json", SCHEMAS["text"])
    good += [OUT / "text_blank_lines.jsonl", OUT / "text_lines_named.json"]

    for p in good:
        expected["files"][p.name] = loaded(p)

    bad = OUT / "bad"
    bad.mkdir()
    pc = [dict(r) for r in SCHEMAS["prompt_completion"]]
    del pc[3]["completion"]
    write_jsonl(bad / "missing_field.jsonl", pc)
    write_jsonl(bad / "mixed.jsonl", SCHEMAS["text"][:2] + SCHEMAS["prompt_completion"][:1])
    lines = [json.dumps(r) for r in SCHEMAS["text"]]
    lines[2] = lines[2][:-5]
    (bad / "bad_line.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(bad / "wrong_type.jsonl", [{"text": "a"}, {"text": 3}])
    write_jsonl(bad / "no_role.jsonl", [{"messages": [msg("user", "a")]}, {"messages": [{"content": "b"}]}])
    (bad / "one_object.json").write_text(json.dumps({"data": SCHEMAS["text"]}, indent=1) + "\n")
    write_jsonl(bad / "no_schema.jsonl", [{"question": "a", "label": 1}])

    hub = OUT / "hub"
    chat_rows = SCHEMAS["messages"]
    chat = cache_repo(
        hub,
        "tsd-fixtures/chat",
        {
            "README.md": CHAT_README.encode(),
            ".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n",
            "chat/train-00000-of-00002.jsonl": file_bytes(write_jsonl, chat_rows[:1], ".jsonl"),
            "chat/train-00001-of-00002.jsonl": file_bytes(write_jsonl, chat_rows[1:], ".jsonl"),
            "chat/test.jsonl": file_bytes(write_jsonl, CHAT_TEST, ".jsonl"),
            "completion/train_a.jsonl": file_bytes(write_jsonl, SCHEMAS["prompt_completion"][:2], ".jsonl"),
            "completion/train_b.jsonl": file_bytes(write_jsonl, SCHEMAS["prompt_completion"][2:], ".jsonl"),
            "completion/test-1.jsonl": file_bytes(write_jsonl, SCHEMAS["prompt_completion"][:1], ".jsonl"),
        },
    )
    plain = cache_repo(
        hub,
        "tsd-fixtures/plain",
        {
            "README.md": PLAIN_README.encode(),
            "data/train-00000-of-00001.parquet": file_bytes(write_parquet, chat_rows, ".parquet"),
            "data/test-00000-of-00001.parquet": file_bytes(write_parquet, CHAT_TEST, ".parquet"),
        },
    )
    # No README `configs:`, no README at all: split keywords in file names (dev → validation,
    # a stray LICENSE and notes beside the data) and in directory names.
    keywords = cache_repo(
        hub,
        "tsd-fixtures/keywords",
        {
            "LICENSE": b"Apache-2.0\n",
            "notes.md": b"# notes\n",
            "train.jsonl": file_bytes(write_jsonl, SCHEMAS["text"][:2], ".jsonl"),
            "dev-0.jsonl": file_bytes(write_jsonl, SCHEMAS["text"][2:], ".jsonl"),
            "my_test.jsonl": file_bytes(write_jsonl, SCHEMAS["text"][:1], ".jsonl"),
        },
    )
    dirs = cache_repo(
        hub,
        "tsd-fixtures/dirs",
        {
            "README.md": b"# dirs\n",
            "train/b.json": file_bytes(write_json, SCHEMAS["alpaca"][1:], ".json"),
            "train/a.json": file_bytes(write_json, SCHEMAS["alpaca"][:1], ".json"),
            "valid/x.json": file_bytes(write_json, SCHEMAS["alpaca"][:2], ".json"),
            "train.md": b"not data\n",
        },
    )
    for repo, snap, configs in [
        ("tsd-fixtures/keywords", keywords, ["default"]),
        ("tsd-fixtures/dirs", dirs, ["default"]),
        ("tsd-fixtures/chat", chat, ["chat", "completion"]),
        ("tsd-fixtures/plain", plain, ["default"]),
    ]:
        expected["hub"][repo] = {"snapshot": str(snap.relative_to(OUT)), "configs": {}}
        for config in configs:
            builder = datasets.load_dataset_builder(str(snap), name=config)
            splits = {}
            for split, files in builder.config.data_files.items():
                rows = datasets.load_dataset(str(snap), name=config, split=split).to_list()
                rel = [os.path.relpath(f, snap) for f in files]
                splits[str(split)] = {"files": rel, "rows": rows}
            expected["hub"][repo]["configs"][config] = splits
        default = datasets.load_dataset_builder(str(snap)).config.name
        expected["hub"][repo]["default_config"] = default

    (OUT / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(CACHE, ignore_errors=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
