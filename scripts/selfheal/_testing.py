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


class _Block:
    """One open no_waits() block; compared by identity, so list.remove() takes out this one (atomically)."""

    __slots__ = ("attempts",)

    def __init__(self, attempts: int | None) -> None:
        self.attempts = attempts


# The no_waits() blocks open now, oldest first, in any thread: each holds its own `attempts` cap. Not a saved
# copy of the switch restored on exit: two threads' blocks overlapping (A in, B in, A out, B out) put back what
# each saw on entry, so waits came back inside B's block and the switch stayed on after both.
_blocks: list[_Block] = []


def _check_attempts(attempts: int | None) -> None:
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")


def set_testing(enabled: bool, *, attempts: int | None = None) -> None:
    """Turn waits off (or back on). `attempts`, if given, caps every retryable class's attempts.
    An open no_waits() block keeps waits off until it ends."""
    _check_attempts(attempts)
    _switch.enabled = enabled
    _switch.attempts = attempts if enabled else None


def is_testing() -> bool:
    """Whether waits are off now: set_testing(True), SELFHEAL_TESTING=1, or an open no_waits() block."""
    return _switch.enabled or bool(_blocks)


def testing_attempts() -> int | None:
    """The newest open no_waits() block's cap, else set_testing()'s."""
    blocks = _blocks[-1:]  # one read: another thread's block may end meanwhile
    if blocks:
        return blocks[0].attempts
    return _switch.attempts if _switch.enabled else None


@contextlib.contextmanager
def no_waits(*, attempts: int | None = None) -> Iterator[None]:
    """`with no_waits():` retries still happen, nobody waits; the previous setting comes back after, also
    when blocks in several threads overlap."""
    _check_attempts(attempts)
    block = _Block(attempts)
    _blocks.append(block)  # list.append and list.remove are atomic: no lock needed across threads
    try:
        yield
    finally:
        _blocks.remove(block)
