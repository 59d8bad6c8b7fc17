"""Time as a parameter: every wait and every timestamp goes through a Clock, so tests can replace it."""

from __future__ import annotations

import math
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


# The range ISO 8601's four-digit years can write, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z (seconds).
_FIRST_TS = -62_135_596_800.0
_LAST_TS = 253_402_300_799.0
FAR_FUTURE = "far-future"
FAR_PAST = "far-past"
INVALID_TIME = "invalid-time"


def utc_iso(ts: float, *, millis: bool = False) -> str:
    """`2026-06-10T03:12:18Z` (or with .123 milliseconds) for a wall-clock timestamp in seconds.

    Never raises: a stored time past year 9999 (a breaker tripped `--for 1e300` by an older version or
    by hand) reads `far-future`, one before year 1 `far-past`, and NaN or a non-number `invalid-time`.
    """
    try:
        ts = float(ts)
    except (TypeError, ValueError, OverflowError):
        return INVALID_TIME
    if math.isnan(ts):
        return INVALID_TIME
    if ts > _LAST_TS:
        return FAR_FUTURE
    if ts < _FIRST_TS:
        return FAR_PAST
    try:
        t = time.gmtime(ts)
    except (OverflowError, OSError, ValueError):  # a platform whose time_t is narrower than the range above
        return FAR_FUTURE if ts > 0 else FAR_PAST
    # Not strftime's %Y: glibc's leaves years before 1000 unpadded.
    base = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    if millis:
        return f"{base}.{int((ts % 1) * 1000):03d}Z"
    return base + "Z"


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))
