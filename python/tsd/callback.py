"""``TsdCallback``: task-specific directions tracked live while a transformers ``Trainer`` trains.

On every save (main process only) it snapshots the new checkpoint's adapter files into
``OUTPUT_DIR/tsd/NAME/checkpoint-N/`` (NAME: the output directory's own name) (hard links, else copies) before ``on_save`` returns,
so ``save_total_limit`` deleting ``checkpoint-N`` cannot break the read. A background thread then
runs ``tsd track`` on the snapshots in a child process (niced; training never waits, a failure is
logged, never raised) and hands each new checkpoint's summary to the next ``on_log``: ``tsd/...``
keys with ``tsd/checkpoint_step`` go into the ``logs`` dict the later callbacks receive (the
callback moves itself before the reporting integrations, so W&B / TensorBoard get them through
``report_to``) and into the ``state.log_history`` entry of that log (the Trainer stores a copy of
``logs`` there before ``on_log`` runs, so both are written). At the end of training it waits for
the last track and writes ``OUTPUT_DIR/tsd-report.html`` and its track record
``OUTPUT_DIR/tsd-report.track.json`` — what ``tsd report OUTPUT_DIR`` computes afterwards when no
checkpoint was deleted (with ``save_total_limit`` it covers every checkpoint, the deleted ones too).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from transformers import TrainerCallback

from tsd._bin import find_tsd_bin
from tsd._cli import SchemaError, check_schema, track_path_for

logger = logging.getLogger("tsd")

#: Under ``output_dir``: the callback's working directory (snapshots, the latest track record).
WORK_DIR = "tsd"
#: Written into ``output_dir`` at the end of training.
REPORT_FILE = "tsd-report.html"

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files a checkpoint's adapter is read from (weights, config, tsd's LoRA-Dash tensors); pickles
# (optimizer.pt, training_args.bin, …) and tokenizer files are left out.
_ADAPTER_FILE = re.compile(r"^(adapter_config\.json|.*\.safetensors)$")

# TrackPoint fields pushed as tsd/<name> (numbers only; absent ones are left out).
_POINT_KEYS = (
    "modules",
    "mean_top_delta",
    "mean_delta_fro",
    "mean_amplification",
    "stability_prev",
    "stability_final",
    "mean_recall",
    "mean_accuracy",
    "near_null_picks",
    "mean_dash_delta_sigma",
)
_NULL_KEYS = (
    "mean_accuracy",
    "mean_null",
    "mean_null_p95",
    "mean_kappa",
    "above_null",
    "not_above_null",
    "untestable",
)


def point_metrics(point: Dict[str, Any]) -> Dict[str, float]:
    """The ``tsd/...`` log entries of one track point (``tsd track --json``'s ``points[i]``)."""
    out: Dict[str, float] = {"tsd/checkpoint_step": point["step"]}
    for k in _POINT_KEYS:
        v = point.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"tsd/{k}"] = v
    for k in _NULL_KEYS:
        v = (point.get("null") or {}).get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"tsd/null_{k}"] = v
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def snapshot_checkpoint(checkpoint: Path, dest: Path) -> bool:
    """Copies (hard links) a checkpoint's adapter files and ``trainer_state.json`` into ``dest``,
    atomically: written into a temporary sibling and renamed. Returns False when the checkpoint
    holds no adapter (nothing written)."""
    dirs = [checkpoint] + sorted(p for p in checkpoint.iterdir() if p.is_dir())
    files = []
    for d in dirs:
        if not (d / "adapter_config.json").is_file():
            continue
        files += [p for p in d.iterdir() if p.is_file() and _ADAPTER_FILE.match(p.name)]
    if not files:
        return False
    state = checkpoint / "trainer_state.json"
    if state.is_file():
        files.append(state)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for f in files:
            to = tmp / f.relative_to(checkpoint)
            to.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(f, to)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


class TsdCallback(TrainerCallback):
    """Tracks task-specific directions of a PEFT LoRA while a ``Trainer`` trains (module docs).

    Args:
        base: the base model tsd reads (a local directory, a tsd model spec such as ``default``,
            or a hub id in tsd's cache) [default: the adapters' ``base_model_name_or_path`` when it
            resolves locally].
        reference: an adapter, a run or a fine-tuned model for TSD capture (``--reference``).
        adapter_name: the adapter subfolder to read in each checkpoint (PEFT's folder for a
            named adapter) [default: the checkpoint's root, else its only adapter subfolder].
        top_s: size of the TSD sets.
        report: write the HTML report and track record at the end of training.
        nice: niceness of the tracking process (it shares the machine with training).
        idle: on Linux, run the tracking process under ``SCHED_IDLE``, so that it only takes CPU
            time training leaves idle (its threads inherit it; ``nice`` applies elsewhere).
        threads: ``RAYON_NUM_THREADS`` of the tracking process [default: tsd's, every core].
        extra_args: more arguments for ``tsd track`` (``["--no-null"]``, ``["--tsd-by",
            "enrichment"]``).
        wait_at_end: seconds ``on_train_end`` waits for the last track (None: until it ends).
    """

    def __init__(
        self,
        base: Optional[str] = None,
        reference: Optional[str] = None,
        *,
        adapter_name: Optional[str] = None,
        top_s: int = 8,
        report: bool = True,
        nice: int = 10,
        idle: bool = True,
        threads: Optional[int] = None,
        extra_args: Sequence[str] = (),
        wait_at_end: Optional[float] = None,
        tsd_bin: Optional[str] = None,
    ):
        self.base = None if base is None else os.fspath(base)
        self.reference = None if reference is None else os.fspath(reference)
        self.adapter_name = adapter_name
        self.top_s = top_s
        self.report = report
        self.nice = nice
        self.idle = idle
        self.threads = threads
        self.extra_args = list(extra_args)
        self.wait_at_end = wait_at_end
        self.tsd_bin = tsd_bin
        self._active = False
        self._lock = threading.Condition()
        self._dirty = False
        self._stop = False
        self._busy = False
        self._thread: Optional[threading.Thread] = None
        self._pending: List[Dict[str, Any]] = []
        self._pushed_step = -1
        self._latest: Optional[Dict[str, Any]] = None
        self._failures: List[str] = []
        #: Seconds spent inside this callback's hooks on the training thread, by hook.
        self.hook_seconds: Dict[str, float] = {}
        #: The tsd commands run in the background and their wall times (seconds).
        self.track_runs: List[Dict[str, Any]] = []

    # -- paths ----------------------------------------------------------------------------------

    def _paths(self, args) -> None:
        self.output_dir = Path(args.output_dir)
        self.work = self.output_dir / WORK_DIR
        # Named as the output directory, so the report names the run as `tsd report OUTPUT_DIR` does.
        self.snapshots = self.work / (self.output_dir.resolve().name or "run")
        self.track_file = self.work / "track.json"

    def _timed(self, hook: str, t0: float) -> None:
        self.hook_seconds[hook] = self.hook_seconds.get(hook, 0.0) + time.perf_counter() - t0

    # -- Trainer events -------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        t0 = time.perf_counter()
        self._active = bool(state.is_world_process_zero)
        if not self._active:
            return
        try:
            self._begin(args, state)
        except Exception as e:  # noqa: BLE001 — tracking must never stop training
            logger.warning("tsd: tracking is off for this run: %s", e)
            self._active = False
        self._timed("on_train_begin", t0)

    def _begin(self, args, state) -> None:
        self.tsd_bin = self.tsd_bin or find_tsd_bin()
        self._paths(args)
        self.snapshots.mkdir(parents=True, exist_ok=True)
        step = state.global_step
        # A fresh run (step 0) owns none of the snapshots there; a resumed one keeps those up to its
        # step and drops the abandoned branch past it.
        for d in self.snapshots.iterdir():
            m = _CHECKPOINT.match(d.name)
            if d.is_dir() and (m is None or int(m.group(1)) > step or step == 0):
                shutil.rmtree(d, ignore_errors=True)
        # Checkpoints of the run so far that were saved without this callback (or deleted since).
        if step > 0:
            for d in self.output_dir.iterdir():
                m = _CHECKPOINT.match(d.name)
                if m and int(m.group(1)) <= step and not (self.snapshots / d.name).exists():
                    if (d / "trainer_state.json").is_file():
                        snapshot_checkpoint(d, self.snapshots / d.name)
        # What an earlier part of a resumed run already logged (restored with the Trainer state).
        done = [e["tsd/checkpoint_step"] for e in state.log_history if "tsd/checkpoint_step" in e]
        self._pushed_step = max(done, default=-1)
        self._move_before_reporters()
        self._thread = threading.Thread(target=self._worker, name="tsd-track", daemon=True)
        self._thread.start()
        if any(self.snapshots.iterdir()):
            self._kick()

    def _move_before_reporters(self) -> None:
        """Puts this callback first in the Trainer's callback list (after those that rewrite
        checkpoints in ``on_save``, such as ``LoraDash``), so the reporting integrations (added
        before user callbacks) receive the ``logs`` it extends. The handler is the caller's
        ``self`` (``CallbackHandler.call_event``); the list is replaced, not mutated, so the loop
        that is calling us goes on over the old one."""
        from transformers.trainer_callback import CallbackHandler

        f = sys._getframe(1)
        for _ in range(6):
            if f is None:
                break
            h = f.f_locals.get("self")
            if isinstance(h, CallbackHandler):
                # Callbacks that rewrite a checkpoint in on_save (LoraDash) stay before this one.
                writers = [c for c in h.callbacks if getattr(c, "tsd_writes_checkpoints", False)]
                rest = [c for c in h.callbacks if c is not self and c not in writers]
                h.callbacks = writers + [self] + rest
                return
            f = f.f_back
        logger.info("tsd: callback handler not found; tsd/ metrics reach the callbacks after this one")

    def on_save(self, args, state, control, **kwargs):
        if not self._active:
            return
        t0 = time.perf_counter()
        name = f"checkpoint-{state.global_step}"
        ck = self.output_dir / name
        try:
            if not ck.is_dir():
                logger.warning("tsd: %s not found after the save; not tracked", ck)
            elif snapshot_checkpoint(ck, self.snapshots / name):
                self._kick()
            else:
                logger.warning("tsd: %s holds no adapter; not tracked", ck)
        except Exception as e:  # noqa: BLE001
            logger.warning("tsd: could not snapshot %s: %s", ck, e)
        self._timed("on_save", t0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._active or logs is None:
            return
        t0 = time.perf_counter()
        with self._lock:
            point = self._pending.pop(0) if self._pending else None
        if point is not None:
            metrics = point_metrics(point)
            logs.update(metrics)
            # Trainer.log appended {**logs, "step": …} before calling on_log: extend that copy too.
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(metrics)
            else:
                state.log_history.append({**metrics, "step": state.global_step})
        self._timed("on_log", t0)

    def on_train_end(self, args, state, control, **kwargs):
        if not self._active:
            return
        self._finish()
        # Whatever the last track found after the last log.
        with self._lock:
            rest, self._pending = self._pending, []
        for point in rest:
            state.log_history.append({**point_metrics(point), "step": state.global_step})
        if self.report:
            self._write_report()
        self._active = False

    # -- the background tracker -------------------------------------------------------------------

    def _kick(self) -> None:
        with self._lock:
            self._dirty = True
            self._lock.notify_all()

    def _finish(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(self.wait_at_end)
            if self._thread.is_alive():
                logger.warning("tsd: the last track did not end in %ss; not waited for", self.wait_at_end)

    def _command(self) -> List[str]:
        cmd = [self.tsd_bin, "track", str(self.snapshots), "--json", "-q", "--top-s", str(self.top_s)]
        if self.base is not None:
            cmd += ["--base", self.base]
        if self.reference is not None:
            cmd += ["--reference", self.reference]
        if self.adapter_name is not None:
            cmd += ["--adapter-name", self.adapter_name]
        return cmd + self.extra_args

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._dirty and not self._stop:
                    self._lock.wait()
                if not self._dirty:
                    return
                self._dirty = False
            try:
                self._track_once()
            except Exception as e:  # noqa: BLE001 — logged, never raised
                self._failures.append(str(e))
                logger.warning("tsd: tracking failed (training goes on): %s", e)

    def _lower_priority(self) -> None:
        """In the child before exec, so every thread tsd starts inherits it (Linux scheduling
        attributes are per thread): ``SCHED_IDLE`` where asked and available, else ``nice``."""
        try:
            if self.idle and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            elif self.nice:
                os.nice(self.nice)
        except OSError:
            pass

    def _track_once(self) -> None:
        env = dict(os.environ)
        if self.threads is not None:
            env["RAYON_NUM_THREADS"] = str(self.threads)
        cmd = self._command()
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(
                cmd, stdout=out, stderr=err, env=env, text=True, preexec_fn=self._lower_priority
            )
            rc = p.wait()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        self.track_runs.append({"command": cmd, "seconds": time.perf_counter() - t0, "rc": rc})
        if rc != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {rc}: {stderr.strip()[-2000:]}")
        for line in stderr.splitlines():
            if line.startswith("warning:"):
                logger.info("tsd: %s", line)
        record = check_schema(json.loads(stdout), "track")
        tmp = self.track_file.with_name(self.track_file.name + ".tmp")
        tmp.write_text(stdout)
        os.replace(tmp, self.track_file)
        with self._lock:
            self._latest = record
            for point in record["points"]:
                if point["step"] > self._pushed_step:
                    self._pending.append(point)
                    self._pushed_step = point["step"]

    # -- the end ----------------------------------------------------------------------------------

    def _write_report(self) -> None:
        if self._latest is None:
            logger.warning("tsd: no checkpoint was tracked; no report written")
            return
        html = self.output_dir / REPORT_FILE
        saved = track_path_for(html)
        cmd = [self.tsd_bin, "report", str(self.snapshots), "-q", "--track", str(self.track_file), "-o", str(html)]
        if self.base is not None:
            cmd += ["--base", self.base]
        if self.adapter_name is not None:
            cmd += ["--adapter-name", self.adapter_name]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
            shutil.copyfile(self.track_file, saved)
            logger.info("tsd: wrote %s and %s", html, saved)
        except Exception as e:  # noqa: BLE001
            self._failures.append(str(e))
            logger.warning("tsd: could not write the report: %s", e)

    @property
    def failures(self) -> List[str]:
        """Messages of the tracks and reports that failed (each was logged as a warning)."""
        return list(self._failures)

    @property
    def latest_track(self) -> Optional[Dict[str, Any]]:
        """The newest track record (``tsd track --json`` of the snapshots so far)."""
        return self._latest


__all__ = ["TsdCallback", "point_metrics", "snapshot_checkpoint", "SchemaError"]
