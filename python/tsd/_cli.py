"""Thin typed wrappers around the ``tsd`` binary: each runs one command with ``--json`` and returns
the parsed record, after checking its ``schema_version``. No math happens here: tsd computes,
Python reads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from tsd._bin import find_tsd_bin

PathLike = Union[str, "os.PathLike[str]"]

#: The ``schema_version`` of each ``--json`` record this layer understands (tsd's
#: ``INSPECT_SCHEMA_VERSION`` and ``TRACK_SCHEMA_VERSION``).
SCHEMA_VERSIONS: Dict[str, int] = {"inspect": 1, "track": 1}

#: A parsed ``--json`` record: the binary's JSON as dicts and lists.
Record = Dict[str, Any]


class TsdError(RuntimeError):
    """The binary exited non-zero. ``returncode`` is its exit status (2: a usage or input error,
    as the CLI documents), ``stderr`` what it printed."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str):
        self.args_ = list(args)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        super().__init__(f"tsd exited {returncode}: {' '.join(args[1:3])} …\n" + "\n".join(tail))


class SchemaError(RuntimeError):
    """The binary's JSON carries a schema version this Python layer does not read."""


def run_tsd(
    args: Iterable[PathLike],
    *,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess:
    """Runs ``tsd ARGS`` and returns the completed process (stdout and stderr as text); raises
    :class:`TsdError` on a non-zero exit."""
    cmd = [find_tsd_bin(), *(os.fspath(a) for a in args)]
    full_env = None if env is None else {**os.environ, **env}
    p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if p.returncode != 0:
        raise TsdError(cmd, p.returncode, p.stderr)
    return p


def check_schema(record: Record, kind: str) -> Record:
    """Returns ``record`` when its ``schema_version`` is the one this layer reads for ``kind``."""
    want = SCHEMA_VERSIONS[kind]
    got = record.get("schema_version")
    if got != want:
        raise SchemaError(
            f"tsd {kind} --json has schema_version {got!r}; this tsd Python package reads {want} "
            "(the binary and the package come from different versions: reinstall the package)"
        )
    return record


def _opt(flag: str, value: Optional[PathLike]) -> List[str]:
    return [] if value is None else [flag, os.fspath(value)]


def _json(args: List[str], kind: str, env: Optional[Mapping[str, str]]) -> Record:
    out = run_tsd(args, env=env).stdout
    return check_schema(json.loads(out), kind)


def inspect(
    adapter: PathLike,
    base: Optional[str] = None,
    reference: Optional[PathLike] = None,
    *,
    top_s: Optional[int] = None,
    null: bool = True,
    extra_args: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
) -> Record:
    """``tsd inspect ADAPTER --json``: per-module TSDs, amplification, capture against
    ``reference``, summaries and parameter counts (README, Commands)."""
    args = ["inspect", os.fspath(adapter), "--json", "-q", *_opt("--base", base)]
    args += _opt("--reference", reference) + _opt("--top-s", None if top_s is None else str(top_s))
    args += ([] if null else ["--no-null"]) + list(extra_args)
    return _json(args, "inspect", env)


def track(
    run: PathLike,
    base: Optional[str] = None,
    reference: Optional[PathLike] = None,
    *,
    adapter_name: Optional[str] = None,
    top_s: int = 8,
    null: bool = True,
    extra_args: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
) -> Record:
    """``tsd track RUN --json``: the track record (``points`` per checkpoint, ``tsd_sets``,
    ``skipped``, and each checkpoint's full inspect report under ``reports``) of a tsd run, a
    Trainer output directory or a directory of adapters."""
    args = ["track", os.fspath(run), "--json", "-q", "--top-s", str(top_s)]
    args += _opt("--base", base) + _opt("--reference", reference)
    args += _opt("--adapter-name", adapter_name) + ([] if null else ["--no-null"]) + list(extra_args)
    return _json(args, "track", env)


def report(
    run: PathLike,
    output: PathLike,
    base: Optional[str] = None,
    reference: Optional[PathLike] = None,
    *,
    track: Optional[PathLike] = None,
    adapter_name: Optional[str] = None,
    extra_args: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
) -> Path:
    """``tsd report RUN -o OUTPUT``: the self-contained HTML report. Without ``track`` it tracks
    the checkpoints and saves the record beside the page (``FILE.track.json``); with it, renders
    that saved record. Returns the page's path."""
    args = ["report", os.fspath(run), "-q", "-o", os.fspath(output)]
    args += _opt("--base", base) + _opt("--reference", reference) + _opt("--track", track)
    args += _opt("--adapter-name", adapter_name) + list(extra_args)
    run_tsd(args, env=env)
    return Path(output)


def track_path_for(report_html: PathLike) -> Path:
    """Where ``tsd report -o FILE.html`` saves its track record: ``FILE.track.json``."""
    p = Path(report_html)
    return p.with_name(p.stem + ".track.json")


def version() -> str:
    """The binary's ``tsd --version`` line."""
    return run_tsd(["--version"]).stdout.strip()
