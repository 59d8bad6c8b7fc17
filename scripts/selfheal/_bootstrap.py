"""Make a script run with the skill's own environment, wherever the skill folder was copied.

Order: the skill's .venv (re-executing the script with it), else this interpreter if it has the
dependencies, else one line telling the user to run install.sh, and exit 2. Standard library only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

SKILL_ROOT = Path(__file__).resolve().parents[2]
_REQUIRED = ("yaml", "filelock", "psutil")
_GUARD = "SELFHEAL_BOOTSTRAPPED"


def bootstrap() -> None:
    venv_python = SKILL_ROOT / ".venv" / "bin" / "python"
    in_venv = Path(sys.prefix).resolve() == (SKILL_ROOT / ".venv").resolve()
    # The guard is for this process only (it stops a second hop after the exec): taken out of the environment, so
    # a self-heal script this one starts (a task, a workflow step, a command under retry_run.py) hops on its own.
    hopped = os.environ.pop(_GUARD, None) == "1"
    if not in_venv and venv_python.exists() and not hopped:
        os.environ[_GUARD] = "1"
        script = os.path.abspath(sys.argv[0])
        # A broken venv cannot be exec'd: fall through and try this interpreter.
        with contextlib.suppress(OSError):
            os.execv(str(venv_python), [str(venv_python), script, *sys.argv[1:]])  # noqa: S606
        os.environ.pop(_GUARD, None)
    missing = [m for m in _REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        sys.stderr.write(
            f"self-heal: missing Python packages ({', '.join(missing)}); run: bash {SKILL_ROOT}/install.sh\n"
        )
        raise SystemExit(2)
