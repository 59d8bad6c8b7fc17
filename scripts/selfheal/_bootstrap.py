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
# The standard descriptors (0, 1, 2) that were closed when this process started, now on /dev/null: a script
# reading `-` says "standard input is closed" rather than "empty".
CLOSED_AT_START: set[int] = set()


def standard_streams() -> None:
    """File descriptors 0, 1 and 2 that were closed (`>&-`, `<&-`, a daemon that closed them) opened on
    /dev/null, before anything else opens a file. Otherwise the first file a script opens gets the free number:
    a state file then receives what is printed, and a command it runs inherits that file as its own stdout. The
    stream of a closed descriptor is made again on it (Python sets it to None): what is written there is
    dropped, as on a closed terminal, and reading it is reading an empty input."""
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            CLOSED_AT_START.add(fd)
            opened = os.open(os.devnull, flags)  # the lowest free number: `fd`, as the ones below it are open
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
            # Handed on, as a standard descriptor is: os.open's are close-on-exec, and a command the script
            # runs with this one inherited would start with it closed again.
            os.set_inheritable(fd, True)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            stream = open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)


def bootstrap() -> None:
    standard_streams()
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
