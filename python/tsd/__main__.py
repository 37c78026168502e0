"""``python -m tsd ARGS`` runs the binary with ARGS."""

import os
import sys

from tsd._bin import find_tsd_bin


def _run() -> None:
    tsd = find_tsd_bin()
    if sys.platform == "win32":
        import subprocess

        sys.exit(subprocess.call([tsd, *sys.argv[1:]]))
    os.execvp(tsd, [tsd, *sys.argv[1:]])


if __name__ == "__main__":
    _run()
