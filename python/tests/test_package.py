"""The package: the binary it installed, and the wrappers that read its --json."""

import subprocess
import sys
from pathlib import Path

import pytest

import tsd
from conftest import FIXTURES, TINY


def test_the_installed_binary_is_found_and_runs():
    b = Path(tsd.find_tsd_bin())
    assert b.is_file()
    assert tsd.version().startswith("tsd ")
    # `python -m tsd` is the binary too.
    out = subprocess.run([sys.executable, "-m", "tsd", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("tsd ")


def test_tsd_bin_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("TSD_BIN", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        tsd.find_tsd_bin()


def test_inspect_reads_the_json_with_its_schema_version():
    r = tsd.inspect(FIXTURES / "peft-lora", base=str(TINY))
    assert r["schema_version"] == tsd.SCHEMA_VERSIONS["inspect"]
    assert len(r["modules"]) > 0 and all("tsd" in m for m in r["modules"])


def test_track_and_report_of_a_trainer_run(tmp_path):
    run = FIXTURES / "hf-trainer-run"
    t = tsd.track(run, base=str(TINY))
    assert t["schema_version"] == tsd.SCHEMA_VERSIONS["track"]
    assert [p["step"] for p in t["points"]] == [2, 4, 6]
    html = tsd.report(run, tmp_path / "r.html", base=str(TINY))
    assert html.read_text().startswith("<!")
    saved = tsd.track_path_for(html)
    assert saved == tmp_path / "r.track.json" and saved.is_file()


def test_errors_and_other_schema_versions_are_raised():
    with pytest.raises(tsd.TsdError) as e:
        tsd.track(FIXTURES / "no-such-run")
    assert e.value.returncode != 0
    with pytest.raises(tsd.SchemaError):
        tsd.check_schema({"schema_version": 999}, "track")
    with pytest.raises(tsd.SchemaError):
        tsd.check_schema({}, "inspect")
