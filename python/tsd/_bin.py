"""Where the ``tsd`` binary is: the one this package installed, as ruff's ``find_ruff_bin`` does."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

_EXE = "tsd" + (".exe" if sys.platform == "win32" else "")


def find_tsd_bin() -> str:
    """The path of the ``tsd`` binary.

    ``$TSD_BIN`` when set; else the binary installed with this package (the interpreter's scripts
    directory, then the user scheme's, then the one beside ``sys.executable``); else ``tsd`` on
    ``PATH``. Raises ``FileNotFoundError`` saying how to get one.
    """
    env = os.environ.get("TSD_BIN")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"TSD_BIN={env} is not a file")
        return env
    candidates = [Path(sysconfig.get_path("scripts")) / _EXE]
    if sys.version_info >= (3, 10):
        user_scheme = sysconfig.get_preferred_scheme("user")
    elif os.name == "nt":
        user_scheme = "nt_user"
    elif sys.platform == "darwin" and sys._framework:  # type: ignore[attr-defined]
        user_scheme = "osx_framework_user"
    else:
        user_scheme = "posix_user"
    candidates.append(Path(sysconfig.get_path("scripts", scheme=user_scheme)) / _EXE)
    candidates.append(Path(sys.executable).parent / _EXE)
    for c in candidates:
        if c.is_file():
            return str(c)
    found = shutil.which(_EXE)
    if found:
        return found
    raise FileNotFoundError(
        "no tsd binary: install this package with `pip install .` (or a tsd wheel), "
        "put `tsd` on PATH (`cargo install --path . --locked`), or set TSD_BIN"
    )
