"""Free GPU memory, from nvidia-smi: which GPU an endpoint runs on, and how much room it has.

An endpoint names its GPU (`gpu: 0` or `gpu: GPU-<uuid>`); without one, the roomiest GPU stands in.
Readings are kept for a few seconds (nvidia-smi takes about 100 ms); a wait for memory reads afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

CACHE_S = 5.0  # how long one reading of every GPU is reused
_QUERY = ("--query-gpu=index,uuid,memory.free", "--format=csv,noheader,nounits")
_TIMEOUT_S = 5.0
# nvidia-smi's answer is about 60 bytes a GPU: far more is a wrapper gone wrong, never held whole.
_MAX_OUTPUT_BYTES = 256 * 1024
_REAP_S = 0.5  # how long a killed nvidia-smi is waited for (a hang in the driver is not waited out)


@dataclass(frozen=True)
class GpuReading:
    """One GPU: its index, its UUID and its free memory in MiB."""

    index: int
    uuid: str
    free_mb: int


_seen: dict[str, tuple[float, tuple[GpuReading, ...] | None]] = {}


def parse(text: str) -> tuple[GpuReading, ...]:
    """nvidia-smi's CSV (`index, uuid, memory.free` per line); a line with only a number is that GPU's free
    memory (older scripts query memory.free alone). Lines that say anything else are skipped."""
    found: list[GpuReading] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit() and parts[-1].isdigit():
            found.append(GpuReading(int(parts[0]), parts[1], int(parts[-1])))
        elif len(parts) == 1 and parts[0].isdigit():
            found.append(GpuReading(len(found), "", int(parts[0])))
    return tuple(found)


async def read_all(*, fresh: bool = False, timeout_s: float | None = None) -> tuple[GpuReading, ...] | None:
    """Every GPU nvidia-smi reports; None when there is no nvidia-smi, it fails, or it takes longer than
    `timeout_s` (the caller's time left; at most 5 s). A run cut by the caller's shorter bound is not kept:
    it says nothing about the GPUs."""
    now = time.monotonic()
    seen = _seen.get("all")
    if not fresh and seen is not None and now - seen[0] < CACHE_S:
        return seen[1]
    limit = _TIMEOUT_S if timeout_s is None else max(min(timeout_s, _TIMEOUT_S), 0.001)
    tool = shutil.which("nvidia-smi")
    readings: tuple[GpuReading, ...] | None = None
    if tool is not None:
        try:
            # In a session of its own, so that what it started goes with it when it is stopped (a wrapper's
            # child holding the pipe would otherwise keep the reading open long after the time is up).
            proc = await asyncio.create_subprocess_exec(
                tool,
                *_QUERY,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                out = await asyncio.wait_for(_output(proc), limit)
            except BaseException:
                await _stop(proc)
                raise
            if out is None:
                log.warning("nvidia-smi printed over %d bytes: not a reading of GPUs", _MAX_OUTPUT_BYTES)
            readings = parse(out.decode("utf-8", "replace")) if out is not None and proc.returncode == 0 else None
            readings = readings or None
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            if isinstance(exc, asyncio.TimeoutError) and limit < _TIMEOUT_S:
                return None
            readings = None
    _seen["all"] = (time.monotonic(), readings)
    return readings


async def _output(proc: asyncio.subprocess.Process) -> bytes | None:
    """What nvidia-smi printed, once it has exited; None (and it is stopped) past _MAX_OUTPUT_BYTES."""
    pipe = proc.stdout
    if pipe is None:  # started with stdout=PIPE: never so
        await proc.wait()
        return b""
    out = await pipe.read(_MAX_OUTPUT_BYTES + 1)
    while len(out) <= _MAX_OUTPUT_BYTES:
        more = await pipe.read(_MAX_OUTPUT_BYTES + 1 - len(out))
        if not more:
            await proc.wait()
            return out
        out += more
    await _stop(proc)
    return None


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Kill nvidia-smi and what it started (its own session, started by us), and reap it; the wait is bounded,
    since a process stuck in the driver does not die at once and the caller's time is up."""
    # The whole group, also after nvidia-smi itself has exited: a child of a wrapper may still hold the pipe
    # (a group's id is never given to another process while one of its members lives).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)

    async def reap() -> None:
        # What is left in the pipe is read to its end, so the pipe closes as well as the process.
        while proc.stdout is not None and await proc.stdout.read(65536):
            pass
        await proc.wait()

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reap(), _REAP_S)


def select(readings: tuple[GpuReading, ...], gpu: int | str | None) -> GpuReading | None:
    """The GPU an endpoint runs on: by index or UUID (`GPU-` prefix optional); the roomiest when unset."""
    if not readings:
        return None
    if gpu is None:
        return max(readings, key=lambda r: r.free_mb)
    if isinstance(gpu, int) or gpu.isdigit():
        return next((r for r in readings if r.index == int(gpu)), None)
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
        log.warning("nvidia-smi reports no GPU %r (it reports %s)", gpu, [r.index for r in readings])
        return None
    return found.free_mb


def clear() -> None:
    """Forget the last reading (tests, and after a change of GPUs)."""
    _seen.clear()
