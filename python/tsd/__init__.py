"""tsd: task-specific directions (TSD) for LoRA and LoRA-Dash, from Python.

The math lives in the ``tsd`` binary installed with this package; this layer finds it
(:func:`find_tsd_bin`), runs it and reads its ``--json`` (:func:`inspect`, :func:`track`,
:func:`report`), and tracks a ``transformers.Trainer`` run live (:class:`TsdCallback`, imported
on first use so ``import tsd`` needs no transformers), and adds LoRA-Dash to any PEFT LoRA model
(:class:`LoraDash`, imported on first use too).
"""

from tsd._bin import find_tsd_bin
from tsd._cli import (
    SCHEMA_VERSIONS,
    SchemaError,
    TsdError,
    check_schema,
    inspect,
    report,
    run_tsd,
    track,
    track_path_for,
    version,
)

__all__ = [
    "SCHEMA_VERSIONS",
    "SchemaError",
    "LoraDash",
    "TsdCallback",
    "TsdError",
    "check_schema",
    "find_tsd_bin",
    "inspect",
    "report",
    "run_tsd",
    "track",
    "track_path_for",
    "version",
]


def __getattr__(name: str):
    if name == "TsdCallback":
        from tsd.callback import TsdCallback

        return TsdCallback
    if name == "LoraDash":
        from tsd.dash import LoraDash

        return LoraDash
    raise AttributeError(f"module 'tsd' has no attribute {name!r}")
