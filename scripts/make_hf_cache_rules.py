#!/usr/bin/env python3
"""Writes tests/fixtures/hf-cache-rules.json: how the real huggingface_hub resolves (1) its cache
root from the environment and (2) revisions in a cache laid out as tests/hf_cache.rs lays it out,
so that the Rust test checks tsd's choices against huggingface_hub's own, not against a reading
of its code.

(1) For each environment (paths under a base directory that is also HOME), a fresh interpreter
prints `huggingface_hub.constants.HF_HUB_CACHE`; the fixture stores it relative to the base.
(2) In a cache with snapshots A, B, C of one repo, refs main -> A, dev -> B, v1.0 -> C,
refs/pr/1 -> B, `try_to_load_from_cache(..., revision=R)` gives the snapshot (or None) per R.

Usage (from a venv made from scripts/requirements-fixtures.txt, at the repository root):
    python scripts/make_hf_cache_rules.py
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import huggingface_hub
from huggingface_hub import try_to_load_from_cache

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hf-cache-rules.json"
REPO = "tsd-test/tiny-llama"
A, B, C = "a" * 40, "b" * 40, "c" * 40
CLEARED = ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"]

# Variables as the test sets them; "{base}" is the base directory (also HOME).
ENVS = [
    {"HF_HUB_CACHE": "{base}/hub-cache", "HF_HOME": "{base}/hf-home", "XDG_CACHE_HOME": "{base}/xdg"},
    {"HUGGINGFACE_HUB_CACHE": "{base}/hub-cache", "HF_HOME": "{base}/hf-home"},
    {"HF_HOME": "{base}/hf-home", "XDG_CACHE_HOME": "{base}/xdg"},
    {"XDG_CACHE_HOME": "{base}/xdg"},
    {},
    {"HF_HUB_CACHE": "~/hub-cache"},
    {"HF_HOME": "$HOME/hf-home"},
]
REVISIONS = ["main", "dev", "v1.0", "refs/pr/1", B, "v2", "aaaaaaa", "d" * 40]


def cache_root(base: str, env: dict) -> str:
    e = {k: v for k, v in os.environ.items() if k not in CLEARED}
    e["HOME"] = base
    e.update({k: v.replace("{base}", base) for k, v in env.items()})
    code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    out = subprocess.run([sys.executable, "-c", code], env=e, check=True, capture_output=True, text=True)
    return os.path.relpath(out.stdout.strip(), base)


def revision_rules() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        repo = Path(cache) / ("models--" + REPO.replace("/", "--"))
        for sha in (A, B, C):
            snap = repo / "snapshots" / sha
            snap.mkdir(parents=True)
            (snap / "config.json").write_text("{}")
        for name, sha in [("main", A), ("dev", B), ("v1.0", C), ("refs/pr/1", B)]:
            ref = repo / "refs" / name
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(sha)
        rules = {}
        for rev in REVISIONS:
            got = try_to_load_from_cache(REPO, "config.json", cache_dir=cache, revision=rev)
            rules[rev] = Path(got).parent.name if isinstance(got, str) else None
        return rules


with tempfile.TemporaryDirectory() as base:
    roots = [{"env": env, "root": cache_root(base, env)} for env in ENVS]
OUT.write_text(
    json.dumps(
        {
            "huggingface_hub": huggingface_hub.__version__,
            "roots": roots,
            "revisions": revision_rules(),
        },
        indent=1,
    )
    + "\n"
)
print(f"wrote {OUT}")
