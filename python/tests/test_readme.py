"""README's "Use from Python" Trainer example, run as a user pastes it (from the repository root)."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_the_readme_trainer_example_runs_and_logs_tsd_metrics(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use from Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "TsdCallback" in code and len(code.strip().splitlines()) <= 12
    code = code.replace('"out"', repr(str(tmp_path / "out")))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=os.environ)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "'tsd/checkpoint_step'" in p.stdout
    assert (tmp_path / "out" / "tsd-report.html").is_file()
