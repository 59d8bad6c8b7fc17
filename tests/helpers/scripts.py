"""Run one of the skill's scripts against a test's state folder: the one helper the tests share.

`run_script("tasks.py", "list", home=home)` runs it as a user would, in a new process: the interpreter, the
bootstrap, real signals, real exit codes, stdin/stdout as pipes. Tests whose subject is those (a signal, a
closed pipe, a killed process, the cold start, the environment a cron line gives) run it that way.

`call_script(...)` runs the same `main()` through the same `cli.run_main` in this process, with the same
arguments, environment (the test's SELFHEAL_HOME and nothing else of SELFHEAL_*), stdin, and captured stdout and
stderr, and returns the same `CompletedProcess`; it saves the 0.2-0.5 s an interpreter and the library's imports
cost per call, where the process adds nothing to what the test checks (a report's content, an exit code, a
message). What a script changes in the process is put back afterwards: the environment, the signal handlers it
installs, the logging handlers, the working folder, sys.argv and the standard streams.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
PYTHON = sys.executable
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_modules: dict[str, ModuleType] = {}


def script_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for running a script as a user would, against a test state root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env["SELFHEAL_HOME"] = str(home)
    env.update(extra)
    return env


def _environment(home: Path, env: Mapping[str, str] | None, drop: tuple[str, ...]) -> dict[str, str]:
    """script_env(home) without the variables in `drop` (this machine's settings that are not the test's),
    then `env` on top."""
    built = script_env(home)
    for name in drop:
        built.pop(name, None)
    built.update(env or {})
    return built


def run_script(
    name: str,
    *args: str,
    home: Path,
    env: Mapping[str, str] | None = None,
    drop: tuple[str, ...] = (),
    stdin: str | bytes | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
    binary: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """scripts/<name> in a new process; stdout and stderr captured (str, or bytes with binary=True)."""
    return subprocess.run(
        [PYTHON, str(SCRIPTS / name), *args],
        input=stdin,
        capture_output=True,
        text=not binary,
        env=_environment(home, env, drop),
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def _module(name: str) -> ModuleType:
    """The script as a module (imported once per test session; its main() reads settings on each call)."""
    found = _modules.get(name)
    if found is None:
        path = SCRIPTS / name
        spec = importlib.util.spec_from_file_location(f"_selfheal_script_{path.stem}", path)
        assert spec is not None and spec.loader is not None, path
        found = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(found)
        _modules[name] = found
    return found


class _Captured(io.TextIOWrapper):
    """A text stream over bytes, as a pipe is: `.buffer` takes the bytes a script streams through."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="surrogateescape", newline="\n", write_through=True)

    def value(self) -> bytes:
        self.flush()
        raw = self.buffer
        assert isinstance(raw, io.BytesIO)
        return raw.getvalue()


@contextlib.contextmanager
def _process_state(environ: dict[str, str], argv: list[str], cwd: Path | None) -> Iterator[None]:
    saved_env = dict(os.environ)
    saved_argv = sys.argv
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    root = logging.getLogger()
    saved_logging = list(root.handlers), root.level
    saved_cwd = os.getcwd()
    root.handlers[:] = []  # as in a new process: the script's own logging setup takes effect (pytest's is back after)
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = argv
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        for sig, handler in saved_handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])


def call_script(
    name: str,
    *args: str,
    home: Path,
    env: Mapping[str, str] | None = None,
    drop: tuple[str, ...] = (),
    stdin: str | bytes | None = None,
    cwd: Path | None = None,
    binary: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """scripts/<name>'s main() in this process, as run_script would run it; the same CompletedProcess."""
    from selfheal import cli

    module = _module(name)
    out, err = _Captured(), _Captured()
    data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
    with _process_state(_environment(home, env, drop), [str(SCRIPTS / name), *args], cwd):
        sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        sys.stdout, sys.stderr = out, err
        try:
            code = cli.run_main(module.main, list(args))
        except SystemExit as exc:  # argparse's usage errors, --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    stdout, stderr = out.value(), err.value()
    if binary:
        return subprocess.CompletedProcess([name, *args], code, stdout, stderr)
    return subprocess.CompletedProcess(
        [name, *args], code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
    )
