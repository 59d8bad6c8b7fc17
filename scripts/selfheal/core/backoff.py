"""Backoff delays and Retry-After parsing: pure functions, seconds everywhere."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping

from .config import Policy

# An exponent beyond this cannot matter (any cap is reached long before) and would overflow.
_MAX_EXPONENT = 60


def exponential(policy: Policy, failures: int) -> float:
    """The un-jittered delay after the `failures`-th failure of a class: base * multiplier^(n-1), capped."""
    n = min(max(failures, 1), _MAX_EXPONENT + 1)
    return min(policy.cap_s, policy.base_s * policy.multiplier ** (n - 1))


def compute_delay(
    policy: Policy,
    failures: int,
    *,
    rng: random.Random | None = None,
    previous: float | None = None,
) -> float:
    """Seconds to wait after the `failures`-th failure (1-based) of one class, under `policy`'s jitter.

    full: uniform(0, d); equal: d/2 + uniform(0, d/2); none: d; decorrelated: uniform(base, 3 * previous);
    a number f: d + uniform(-f * d, f * d) (the second document's +-25%, the third's +-10%); all clamped to
    [0, cap_s].
    """
    uniform = (rng or random).uniform
    ceiling = exponential(policy, failures)
    jitter = policy.jitter or "full"
    if isinstance(jitter, float):
        delay = ceiling + uniform(-jitter * ceiling, jitter * ceiling)
    elif jitter == "none":
        delay = ceiling
    elif jitter == "full":
        delay = uniform(0.0, ceiling)
    elif jitter == "equal":
        delay = ceiling / 2 + uniform(0.0, ceiling / 2)
    else:  # decorrelated (AWS architecture blog): grows from base, wanders, never past the cap
        low = policy.base_s
        high = max(low, 3 * (previous if previous is not None and previous > 0 else low))
        delay = uniform(low, high)
    return max(0.0, min(policy.cap_s, delay))


_NUMBER = re.compile(r"\s*[+]?(\d+(\.\d*)?|\.\d+)\s*\Z")


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds the server asks us to wait, from `retry-after-ms`, `retry-after` seconds or HTTP date.

    `headers` must have lower-case names. Returns None when absent or unparseable; a date in the past
    gives 0. `now` is wall-clock time (time.time()).
    """
    ms = headers.get("retry-after-ms")
    if ms is not None and _NUMBER.match(ms):
        value = float(ms) / 1000.0
        if math.isfinite(value):
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    if _NUMBER.match(raw):
        value = float(raw)
        return value if math.isfinite(value) else None
    import email.utils  # noqa: PLC0415 - 2.5 ms at start-up; only an HTTP date needs it

    try:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        when = email.utils.mktime_tz(parsed)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return max(0.0, float(when) - now)
