"""Run one of the skill's scripts against a test's state folder: the one helper the tests share.

`run_script("tasks.py", "list", home=home)` runs it as a user would, in a new process: the interpreter, the
bootstrap, real signals, real exit codes, stdin/stdout as pipes. Tests whose subject is those (a signal, a
closed pipe, a killed process, the cold start, the environment a cron line gives) run it that way.

`call_script(...)` runs the same `main()` through the same `cli.run_main` in this process, with the same
arguments, environment (the test's SELFHEAL_HOME and nothing else of SELFHEAL_*), stdin, and captured stdout and
stderr, and returns the same `CompletedProcess`; it saves the 0.2-0.5 s an interpreter and the library's imports
cost per call, where the process adds nothing to what the test checks (a report's content, an exit code, a
message).

The script starts as in a new process: the test switch as its environment says (SELFHEAL_TESTING is read at
import), nothing the library remembers per process (settings, folders walked, warnings given once: see
_PER_PROCESS), no fleet database connection, no redactor installed yet. What it changes in the process is put
back afterwards: the environment, the signal handlers it installs, the logging handlers (its own are closed), the
library's memory, the fleet connections (its own are closed), the redactor, the test switch, being a child
subreaper (the orphans it adopted meanwhile are reaped, as init would), the pipes it left open (closed, as its
exit would), the working folder, sys.argv and the standard streams. What reaches file descriptors 1 and 2 during
the call (a command started with the streams inherited) is kept, after what it wrote to sys.stdout/sys.stderr.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import importlib.util
import io
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

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


def imported_by(
    name: str, *args: str, home: Path, watch: tuple[str, ...], env: Mapping[str, str] | None = None
) -> list[str]:
    """Which of the modules in `watch` a new interpreter holds after running scripts/<name> ARGS, as
    `python name ARGS` runs it (exec'd from its folder: runpy.run_path would import pkgutil, and typing with
    it). The environment is script_env(home), or `env` as given."""
    code = (
        "import sys\n"
        f"sys.argv = {[name, *args]!r}\n"
        f"source = compile(open({name!r}).read(), {name!r}, 'exec')\n"
        "try:\n"
        f"    exec(source, {{'__name__': '__main__', '__file__': {name!r}}})\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {tuple(watch)!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code],
        cwd=SCRIPTS,
        env=dict(env) if env is not None else script_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("["), f"{name} {' '.join(args)}: no list of modules printed:\n{proc.stderr}"
    return list(ast.literal_eval(lines[-1]))


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


def _open_pipes() -> set[int]:
    """This process's file descriptors that are pipes."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.fstat(int(name)).st_mode):
                found.add(int(name))
    return found


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


def _reap_adopted(before: set[int]) -> None:
    """Orphans the script adopted as a subreaper and that have ended since: reaped, as init reaps them once
    the script's process is gone (the test's own children, there before the call, are left to the test)."""
    for pid in _children() - before:
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                os.waitpid(pid, os.WNOHANG)


# What the library remembers per process (module, name): empty when a script starts, as in a new process, so
# that what it does once per process (a walk that tightens a loose folder, a warning named once, a reading
# taken again) happens in the call as it would in its own process; the test's own memory is back after.
_PER_PROCESS = (
    ("selfheal.core.config", "_cache"),
    ("selfheal.core.runs", "_parsed"),
    ("selfheal.core.breaker", "_seen_open"),
    ("selfheal.core.breaker", "_orphans"),
    ("selfheal.core.fleet", "_down"),
    ("selfheal.core.fleet", "_warned"),
    ("selfheal.models.gpu", "_seen"),
    ("selfheal.models.llm", "_told"),
    ("selfheal.models.openclaw_chain", "_read"),
    ("selfheal.core.config", "_warned_task_policies"),
    ("selfheal.state.root", "_swept"),
)


def _databases(saved: dict[Any, Any] | None) -> dict[Any, Any]:
    """The fleet database connections this process holds (selfheal.state.pg, once imported). With None: those
    held now, then none, as a new process starts; with what that returned: the connections opened since are
    closed, as an exit closes them, and the held ones are back."""
    pg = sys.modules.get("selfheal.state.pg")
    if pg is None:
        return {}
    with pg._databases_lock:
        held = dict(pg._databases)
        pg._databases.clear()
        if saved is not None:
            pg._databases.update(saved)
    if saved is not None:
        for database in held.values():
            if all(database is not kept for kept in saved.values()):
                database.close()
    return held


@contextlib.contextmanager
def _library_state(environ: Mapping[str, str]) -> Iterator[None]:
    """The library's process-wide state as a new process starts with it, and as it was afterwards."""
    from selfheal import _testing
    from selfheal.core import process
    from selfheal.state import redact, root

    saved_switch = (_testing._switch.enabled, _testing._switch.attempts)
    remembered = [getattr(sys.modules[m], n) for m, n in _PER_PROCESS if m in sys.modules]
    saved_memory = [(held, held.copy()) for held in remembered]
    for held, _ in saved_memory:
        held.clear()
    with root._dirs_lock:
        saved_dirs = dict(root._dirs)
        root._dirs.clear()
    saved_redactor = redact._installed
    saved_databases = _databases(None)
    was_subreaper = process.is_subreaper()
    children, pipes = _children(), _open_pipes()
    _testing._switch.enabled = environ.get("SELFHEAL_TESTING", "") not in ("", "0")
    _testing._switch.attempts = None
    redact.install(None)
    try:
        yield
    finally:
        _testing._switch.enabled, _testing._switch.attempts = saved_switch
        for held, saved in saved_memory:
            held.clear()
            held.update(saved)
        with root._dirs_lock:
            for fd, _ in root._dirs.values():
                os.close(fd)  # the folders the script walked: closed, as its exit closes them
            root._dirs.clear()
            root._dirs.update(saved_dirs)
        redact.install(saved_redactor)
        _databases(saved_databases)
        if not was_subreaper and process.is_subreaper():
            ctypes.CDLL(None, use_errno=True).prctl(process._PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
            _reap_adopted(children)
        for fd in _open_pipes() - pipes:
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def _process_state(environ: dict[str, str], argv: list[str], cwd: Path | None) -> Iterator[None]:
    saved_env = dict(os.environ)
    saved_argv = sys.argv
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    root = logging.getLogger()
    saved_logging = list(root.handlers), root.level
    saved_cwd = os.getcwd()
    was_subreaper = _subreaper()
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
        for handler in root.handlers:
            if handler not in saved_logging[0]:
                handler.close()
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
        if not was_subreaper:
            _subreaper(False)  # the script made this process one (scripts do): orphans are init's again after


def _subreaper(set_to: bool | None = None) -> bool:
    """Whether this process is a child subreaper (Linux prctl); with `set_to`, made one or not first. A test
    process left one by a script called in it gathered every later test's orphans as zombies it never reaped:
    their pids were never freed."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if set_to is not None:
        libc.prctl(36, int(set_to), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    flag = ctypes.c_int(0)
    libc.prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    return bool(flag.value)


@contextlib.contextmanager
def _descriptors() -> Iterator[list[bytes]]:
    """File descriptors 1 and 2 on files of their own for the call: what reaches them rather than sys.stdout
    and sys.stderr (a command the script starts with its streams inherited, a write to sys.__stderr__) is kept,
    as a new process's pipes keep it; afterwards the list holds those bytes (stdout's, stderr's)."""
    written: list[bytes] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            yield written
        finally:
            for fd, old in ((1, saved[0]), (2, saved[1])):
                os.dup2(old, fd)
                os.close(old)
            for held in (out, err):
                held.seek(0)
                written.append(held.read())


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
    environ = _environment(home, env, drop)
    with (
        _descriptors() as inherited,
        _process_state(environ, [str(SCRIPTS / name), *args], cwd),
        _library_state(environ),
    ):
        sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        sys.stdout, sys.stderr = out, err
        try:
            code = cli.run_main(module.main, list(args))
        except SystemExit as exc:  # argparse's usage errors, --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    stdout, stderr = out.value() + inherited[0], err.value() + inherited[1]
    if binary:
        return subprocess.CompletedProcess([name, *args], code, stdout, stderr)
    return subprocess.CompletedProcess(
        [name, *args], code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
    )


def mypy_strict(program: Path, home: Path) -> list[str]:
    """`mypy --strict program` as a user of the library runs it (MYPYPATH the scripts folder): the lines it
    printed about `program`. mypy's incremental cache is kept between runs, next to the test OpenClaw: the
    standard library's and the library's types are checked again only where their sources changed (a cold
    run took 8-10 s of CPU); give `program` new text each run so it is always checked and its notes printed."""
    from helpers.openclaw import cache_root

    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache_root() / "mypy"), str(program)],
        capture_output=True,
        text=True,
        env={"MYPYPATH": str(SCRIPTS), "PATH": "/usr/bin:/bin", "HOME": str(home)},
        check=False,
    )
    return [line for line in proc.stdout.splitlines() if line.startswith(str(program))]
