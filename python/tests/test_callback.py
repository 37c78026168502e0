"""TsdCallback on real Trainer runs of the tiny LLaMA."""

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import TrainerCallback

import tsd
from conftest import TINY, make_trainer, wait_for
from tsd.callback import TsdCallback

BASE = str(TINY)


class Recorder(TrainerCallback):
    """Keeps every `logs` dict it receives (a copy), as a reporting integration would send it."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs or {}))


class WaitForTrack(TrainerCallback):
    """Holds each step until the callback has tracked the checkpoints saved so far, so that the
    test sees metrics arrive while training runs whatever the machine's speed."""

    def __init__(self, cb):
        self.cb = cb

    def on_save(self, args, state, control, **kw):
        wait_for(lambda: self.cb._pushed_step >= state.global_step or self.cb.failures)


def tsd_entries(history):
    return [e for e in history if "tsd/checkpoint_step" in e]


def strip_page(page, *paths):
    page = page.replace("&#x2f;", "/").replace("&#x27;", "'").replace("&quot;", '"')
    for p in paths:
        page = page.replace(str(p), "RUN")
    return "\n".join(l for l in page.splitlines() if not l.startswith('<p class="meta prov">'))


def test_metrics_reach_logs_and_log_history_while_training_and_the_end_matches_tsd(tmp_path):
    out = tmp_path / "run"
    cb = TsdCallback(base=BASE)
    rec = Recorder()
    # The recorder comes before TsdCallback, as report_to's integrations do: the callback moves
    # itself ahead of them.
    trainer = make_trainer(out, [rec, cb, WaitForTrack(cb)], max_steps=6, save_steps=2)
    trainer.train()
    hist = trainer.state.log_history
    entries = tsd_entries(hist)
    assert [e["tsd/checkpoint_step"] for e in entries] == [2, 4, 6]
    # Delivered with a later training log, not only at the end.
    assert all(e["step"] <= 6 for e in entries) and entries[0]["step"] < 6
    assert any("loss" in e for e in entries), "riding on the Trainer's own log entries"
    for e in entries:
        assert e["tsd/mean_delta_fro"] > 0 and e["tsd/modules"] == 10
    got = [l for l in rec.logs if "tsd/checkpoint_step" in l]
    assert [l["tsd/checkpoint_step"] for l in got] == [2, 4, 6]
    assert not cb.failures
    # The end: the report and its track record, equal to what tsd computes afterwards.
    html, saved = out / "tsd-report.html", out / "tsd-report.track.json"
    record = json.loads(saved.read_text())
    after = tsd.track(out, base=BASE)
    for k in ("points", "tsd_sets", "top_s", "base", "kind", "schema_version"):
        assert record[k] == after[k], k
    assert [p["step"] for p in record["points"]] == [2, 4, 6]
    assert [p["mean_delta_fro"] for p in record["points"]] == [e["tsd/mean_delta_fro"] for e in entries]
    again = tsd.report(out, tmp_path / "after.html", base=BASE)
    snaps = out / "tsd" / "run"
    assert strip_page(html.read_text(), snaps) == strip_page(again.read_text(), out)


def test_save_total_limit_deletions_do_not_lose_checkpoints(tmp_path):
    out = tmp_path / "run"
    cb = TsdCallback(base=BASE)
    t = make_trainer(out, [cb, WaitForTrack(cb)], max_steps=8, save_steps=1, save_total_limit=2)
    t.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-7", "checkpoint-8"]
    assert not cb.failures
    record = json.loads((out / "tsd-report.track.json").read_text())
    assert [p["step"] for p in record["points"]] == list(range(1, 9))
    steps = [e["tsd/checkpoint_step"] for e in tsd_entries(t.state.log_history)]
    assert steps == list(range(1, 9))
    # The snapshots are a run tsd reads like any other, deleted checkpoints included.
    assert tsd.track(out / "tsd" / "run", base=BASE)["points"] == record["points"]


def test_resumed_run_tracks_every_checkpoint_once(tmp_path):
    out = tmp_path / "run"

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                control.should_training_stop = True
                control.should_save = True

    cb = TsdCallback(base=BASE)
    make_trainer(out, [cb, WaitForTrack(cb), StopAt()], max_steps=8, save_steps=2, save_only_model=False).train()
    assert sorted(p.name for p in (out / "tsd" / "run").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    cb2 = TsdCallback(base=BASE)
    t = make_trainer(out, [cb2, WaitForTrack(cb2)], max_steps=8, save_steps=2, save_only_model=False)
    t.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    steps = [e["tsd/checkpoint_step"] for e in tsd_entries(t.state.log_history)]
    assert steps == [2, 4, 6, 8], steps
    record = json.loads((out / "tsd-report.track.json").read_text())
    assert [p["step"] for p in record["points"]] == [2, 4, 6, 8]
    assert not cb2.failures


def test_a_named_adapter_is_tracked(tmp_path):
    out = tmp_path / "run"
    cb = TsdCallback(base=BASE, adapter_name="my_task")
    make_trainer(out, [cb], max_steps=4, save_steps=2, adapter_name="my_task").train()
    assert (out / "checkpoint-2" / "my_task" / "adapter_model.safetensors").is_file()
    assert not cb.failures, cb.failures
    record = json.loads((out / "tsd-report.track.json").read_text())
    assert [p["step"] for p in record["points"]] == [2, 4]
    after = tsd.track(out, base=BASE, adapter_name="my_task")
    assert record["points"] == after["points"]


def test_only_the_main_process_tracks(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    cb = TsdCallback(base=BASE)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    state = TrainerState(is_world_process_zero=False, is_local_process_zero=False)
    control = TrainerControl()
    cb.on_train_begin(args, state, control)
    state.global_step = 2
    cb.on_save(args, state, control)
    logs = {"loss": 1.0}
    cb.on_log(args, state, control, logs=logs)
    cb.on_train_end(args, state, control)
    assert logs == {"loss": 1.0} and not (tmp_path / "run").exists()


def test_a_failing_track_is_logged_and_training_goes_on(tmp_path, caplog):
    out = tmp_path / "run"
    cb = TsdCallback(base=str(tmp_path / "no-such-base"))
    with caplog.at_level(logging.WARNING, logger="tsd"):
        t = make_trainer(out, [cb], max_steps=4, save_steps=2)
        t.train()
    assert t.state.global_step == 4
    assert cb.failures and "tracking failed" in caplog.text
    assert not tsd_entries(t.state.log_history)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_tracking_process_runs_under_sched_idle():
    """The child that runs `tsd track` takes only CPU time training leaves idle; idle=False niced."""
    import sys

    probe = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0), os.nice(0))"]
    idle = subprocess.run(probe, preexec_fn=TsdCallback()._lower_priority, capture_output=True, text=True)
    assert idle.stdout.split()[0] == str(os.SCHED_IDLE)
    niced = TsdCallback(idle=False, nice=7)._lower_priority
    out = subprocess.run(probe, preexec_fn=niced, capture_output=True, text=True).stdout.split()
    assert out[0] == str(os.SCHED_OTHER) and int(out[1]) >= 7


def test_ddp_rank_zero_tracks_and_no_other_rank_does(tmp_path):
    """A real 2-process DDP run (torch.distributed.run, CPU, gloo): rank 0 tracks every checkpoint
    and gets the tsd/ metrics; rank 1 tracks nothing; one report in output_dir."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    here = Path(__file__).parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(here / "ddp_run.py"), str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r0 = json.loads((out / "rank-0.json").read_text())
    r1 = json.loads((out / "rank-1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["tracks"] >= 1 and "tsd/checkpoint_step" in r0["tsd_keys"]
    assert r1["tracks"] == 0 and r1["tsd_keys"] == []
    track = json.loads((out / "tsd-report.track.json").read_text())
    assert [pt["step"] for pt in track["points"]] == [2, 4]
    assert (out / "tsd-report.html").is_file()
