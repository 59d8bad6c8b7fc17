"""The test switch: with it on, retries still happen and are recorded, but nobody waits.

On when SELFHEAL_TESTING=1 is in the environment at import, or via set_testing() / no_waits().
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class _Switch:
    enabled: bool
    attempts: int | None


_switch = _Switch(enabled=os.environ.get("SELFHEAL_TESTING", "") not in ("", "0"), attempts=None)


def set_testing(enabled: bool, *, attempts: int | None = None) -> None:
    """Turn waits off (or back on). `attempts`, if given, caps every retryable class's attempts."""
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    _switch.enabled = enabled
    _switch.attempts = attempts if enabled else None


def is_testing() -> bool:
    return _switch.enabled


def testing_attempts() -> int | None:
    return _switch.attempts if _switch.enabled else None


@contextlib.contextmanager
def no_waits(*, attempts: int | None = None) -> Iterator[None]:
    """`with no_waits():` retries still happen, nobody waits; the previous setting comes back after."""
    saved = (_switch.enabled, _switch.attempts)
    set_testing(True, attempts=attempts)
    try:
        yield
    finally:
        _switch.enabled, _switch.attempts = saved
