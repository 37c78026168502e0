"""README's "Use from Python" Trainer example, run as a user pastes it (from the repository root)."""

import json
import os
import re
import subprocess
import sys

from conftest import ROOT


def test_the_readme_trainer_example_runs_and_logs_tsd_metrics(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use from Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "TsdCallback" in code and "LoraDash" in code and len(code.strip().splitlines()) <= 14
    code = code.replace('"out"', repr(str(tmp_path / "out")))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=os.environ)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "'tsd/checkpoint_step'" in p.stdout
    out = tmp_path / "out"
    assert (out / "tsd-report.html").is_file()
    # The track (what `tsd track` computes afterwards) saw the Dash term move after the switch.
    track = json.loads((out / "tsd-report.track.json").read_text())
    after = [p for p in track["points"] if p["step"] > 10]
    assert after and all(p["mean_dash_delta_sigma"] and p["mean_dash_delta_sigma"] > 0 for p in after)
    # The folded adapter is a plain PEFT LoRA of rank r + s.
    cfg = json.loads((out / "folded" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 + 2
