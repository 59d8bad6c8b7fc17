"""GPU memory, from nvidia-smi: the one place that runs it, for the model chain's memory check and the health check.

`query()` runs nvidia-smi once and never raises: the GPUs it reported, or why there are none (no nvidia-smi on
PATH, it could not start, it failed, it printed no GPU's figures, it printed without end, it did not answer in
time). It runs in a session of its own; once it exits, or at the time bound, or past MAX_OUTPUT_BYTES, its whole
process group is killed (what a wrapper started goes with it), and a process stuck in the driver is waited for
only _REAP_S. `read_all()` and `free_mb()` are the model chain's async view of it: run in a thread, cached for
CACHE_S, None when unknown.

An endpoint names its GPU (`gpu: 0` or `gpu: GPU-<uuid>`); without one, the roomiest GPU stands in.

Start-up cost matters here as in the health check, which imports this module on every cron run: no asyncio,
logging, typing or subprocess until they are needed (subprocess only where there is an nvidia-smi to run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

# Not typing's TYPE_CHECKING, NamedTuple: the cron health check never imports typing (see selfheal/_typing.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    import subprocess
    import threading
    from collections.abc import Mapping
    from typing import NamedTuple
else:
    from .._typing import NamedTuple

QUERY = ("--query-gpu=index,uuid,memory.free,memory.total", "--format=csv,noheader,nounits")
TIMEOUT_S = 5.0  # the model chain's bound on one run (the caller's time left, when shorter)
CACHE_S = 5.0  # how long the model chain reuses one reading of every GPU
# nvidia-smi's answer is about 70 bytes a GPU: far more is a wrapper gone wrong, never held whole.
MAX_OUTPUT_BYTES = 256 * 1024
NO_TOOL = "no nvidia-smi on PATH"
_REAP_S = 0.5  # how long a killed nvidia-smi is waited for (a hang in the driver is not waited out)
_POLL_S = 0.01  # how often a running nvidia-smi is looked at for its exit (and a reading for being cancelled)
_STDERR_KEPT = 4096  # bytes of stderr kept: its last line says why nvidia-smi failed


class GpuReading(NamedTuple):
    """One GPU: nvidia-smi's index of it, its UUID, and its free and total memory in MiB (total None when not
    reported). `gpu_index`, not `index`: a tuple's own index() would be hidden."""

    gpu_index: int
    uuid: str
    free_mb: int
    total_mb: int | None = None


class Answer(NamedTuple):
    """One run of nvidia-smi: `tool` (None: there is no nvidia-smi on PATH), the GPUs it reported, and when it
    reported none, why (one line, for a person); `timed_out` when it did not answer within the bound."""

    tool: str | None
    gpus: tuple[GpuReading, ...] = ()
    problem: str = ""
    timed_out: bool = False


_seen: dict[str, tuple[float, tuple[GpuReading, ...] | None]] = {}


def _logger() -> logging.Logger:
    """This module's logger; logging is imported on the first message (the cron health check need not pay)."""
    import logging  # noqa: PLC0415

    return logging.getLogger(__name__)


def _mib(field: str) -> int | None:
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    return int(field) if field.isascii() and field.isdigit() else None


def parse(text: str) -> tuple[GpuReading, ...]:
    """nvidia-smi's answer to QUERY: `index, uuid, memory.free, memory.total` (MiB) a line; the total may be
    missing or not a number (then None). Any other line is skipped: `[N/A]` or `[Not Supported]` for the free
    memory, a message, garbage, a row of another shape."""
    found: list[GpuReading] = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) not in (3, 4):
            continue
        index, free = _mib(fields[0]), _mib(fields[2])
        if index is not None and free is not None:
            found.append(GpuReading(index, fields[1], free, _mib(fields[3]) if len(fields) == 4 else None))
    return tuple(found)


def find_tool(env: Mapping[str, str]) -> str | None:
    """nvidia-smi on env's PATH, as the shell finds it (shutil.which without shutil's import); None if none."""
    for folder in os.get_exec_path(dict(env)):
        candidate = os.path.join(folder or ".", "nvidia-smi")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def query(
    *, timeout_s: float = TIMEOUT_S, env: Mapping[str, str] | None = None, stop: threading.Event | None = None
) -> Answer:
    """Run nvidia-smi once (found on env's PATH, run with env), for at most `timeout_s` seconds, or until `stop`
    is set; never raises."""
    env = os.environ if env is None else env
    tool = find_tool(env)
    if tool is None:
        return Answer(None, problem=NO_TOOL)
    import subprocess  # noqa: PLC0415 - only where there is an nvidia-smi to run

    try:
        proc = subprocess.Popen(
            [tool, *QUERY],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,  # its own group, so that what it starts is stopped with it
        )
    except (OSError, ValueError) as exc:
        return Answer(tool, problem=f"nvidia-smi could not run: {tool}: {getattr(exc, 'strerror', None) or exc}")
    try:
        out, err, ended = _collect(proc, time.monotonic() + timeout_s, stop)
    finally:
        _end(proc)
    if ended == "timeout":
        return Answer(tool, problem=f"nvidia-smi did not answer within {timeout_s:g} s", timed_out=True)
    if ended == "stopped":
        return Answer(tool, problem="nvidia-smi was stopped: the reading was cancelled")
    if ended == "over":
        return Answer(tool, problem=f"nvidia-smi printed over {MAX_OUTPUT_BYTES} bytes: not a reading of GPUs")
    stdout = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        said = (err.decode("utf-8", "replace").strip() or stdout.strip()).splitlines()[-1:] or ["no output"]
        code = "unknown: it did not end when killed" if proc.returncode is None else proc.returncode
        return Answer(tool, problem=f"nvidia-smi failed (exit {code}): {said[0]}")
    gpus = parse(stdout)
    return Answer(tool, gpus, "" if gpus else f"nvidia-smi printed no memory figures: {stdout.strip()[:100]!r}")


def _collect(proc: subprocess.Popen[bytes], deadline: float, stop: threading.Event | None) -> tuple[bytes, bytes, str]:
    """nvidia-smi's stdout and stderr and how the reading ended: `exited` (everything it printed before it exited
    is read; a child of a wrapper still holding the pipe is not waited for), `timeout`, `over` or `stopped`."""
    import selectors  # noqa: PLC0415

    if proc.stdout is None or proc.stderr is None:  # pragma: no cover - started with PIPE
        raise RuntimeError("nvidia-smi's pipes missing")
    out, err = bytearray(), bytearray()
    into = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    with selectors.DefaultSelector() as sel:
        for fd in into:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while True:
            exited = _exited(proc)  # before the read: what it printed before exiting is in the pipes by now
            got = False
            for key, _ in sel.select(0 if exited else min(max(deadline - time.monotonic(), 0.0), _POLL_S)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                got = True
                into[key.fd].extend(chunk)
                del err[:-_STDERR_KEPT]
            if len(out) > MAX_OUTPUT_BYTES:
                return b"", b"", "over"
            if exited and not got:
                return bytes(out), bytes(err), "exited"
            if stop is not None and stop.is_set():
                return b"", b"", "stopped"
            if time.monotonic() >= deadline:
                return b"", b"", "timeout"


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether nvidia-smi has exited, seen without reaping it where the platform allows: until it is reaped its pid,
    and so its group's id, belong to it, and the group can be killed without hitting a stranger."""
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return proc.poll() is not None
    try:
        return waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Kill nvidia-smi's group (it, and what a wrapper of it left running), then reap it; a process stuck in the
    driver does not die at once, and is waited for only _REAP_S."""
    import subprocess  # noqa: PLC0415 - imported by the caller already

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(_REAP_S)
    except subprocess.TimeoutExpired:
        _logger().warning("nvidia-smi (pid %d) did not end when killed (stuck in the driver?); left", proc.pid)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


async def read_all(*, fresh: bool = False, timeout_s: float | None = None) -> tuple[GpuReading, ...] | None:
    """Every GPU nvidia-smi reports; None when it cannot tell (see query) or takes longer than `timeout_s` (the
    caller's time left; at most TIMEOUT_S). A reading is reused for CACHE_S unless `fresh`; a run cut by the
    caller's shorter bound is not kept: it says nothing about the GPUs."""
    import asyncio  # noqa: PLC0415 - the model chain's path; the health check runs query() itself
    import threading  # noqa: PLC0415

    seen = _seen.get("all")
    if not fresh and seen is not None and time.monotonic() - seen[0] < CACHE_S:
        return seen[1]
    limit = TIMEOUT_S if timeout_s is None else max(min(timeout_s, TIMEOUT_S), 0.001)
    stop = threading.Event()
    try:
        answer = await asyncio.to_thread(query, timeout_s=limit, stop=stop)
    except BaseException:
        stop.set()  # cancelled: the thread stops nvidia-smi and what it started at once
        raise
    if answer.timed_out and limit < TIMEOUT_S:
        return None
    if answer.problem and answer.tool is not None:
        _logger().warning("GPU memory unknown: %s", answer.problem)
    readings = answer.gpus or None
    _seen["all"] = (time.monotonic(), readings)
    return readings


def select(readings: tuple[GpuReading, ...], gpu: int | str | None) -> GpuReading | None:
    """The GPU an endpoint runs on: by index or UUID (`GPU-` prefix optional); the roomiest when unset."""
    if not readings:
        return None
    if gpu is None:
        return max(readings, key=lambda r: r.free_mb)
    if isinstance(gpu, int) or _mib(gpu) is not None:
        return next((r for r in readings if r.gpu_index == int(gpu)), None)
    want = gpu.lower().removeprefix("gpu-")
    return next((r for r in readings if r.uuid.lower().removeprefix("gpu-") == want), None)


async def free_mb(gpu: int | str | None, *, fresh: bool = False, timeout_s: float | None = None) -> int | None:
    """Free MiB on the endpoint's GPU; None when it cannot be read (no nvidia-smi, no such GPU, or not within
    `timeout_s` seconds)."""
    readings = await read_all(fresh=fresh, timeout_s=timeout_s)
    if readings is None:
        return None
    found = select(readings, gpu)
    if found is None:
        _logger().warning("nvidia-smi reports no GPU %r (it reports %s)", gpu, [r.gpu_index for r in readings])
        return None
    return found.free_mb


def clear() -> None:
    """Forget the last reading (tests, and after a change of GPUs)."""
    _seen.clear()
