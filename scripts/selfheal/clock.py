"""Time as a parameter: every wait and every timestamp goes through a Clock, so tests can replace it."""

from __future__ import annotations

import time

TYPE_CHECKING = False  # not typing's: see selfheal/__init__.py
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # Clock is only a type: nothing checks isinstance against it


class Clock(Protocol):
    """monotonic() for deadlines and durations, time() for persisted timestamps, sleep() to wait (seconds)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio  # noqa: PLC0415 - 30 ms at start-up; whoever awaits this has it loaded already

        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


def utc_iso(ts: float, *, millis: bool = False) -> str:
    """`2026-06-10T03:12:18Z` (or with .123 milliseconds) for a wall-clock timestamp."""
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    if millis:
        return f"{base}.{int((ts % 1) * 1000):03d}Z"
    return base + "Z"


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))
