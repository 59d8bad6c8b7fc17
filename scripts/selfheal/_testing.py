"""The test switch: with it on, retries still happen and are recorded, but nobody waits.

On when SELFHEAL_TESTING=1 is in the environment at import, or via set_testing() / no_waits().
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

P = ParamSpec("P")
T = TypeVar("T")


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


class _NoWaits:
    """What no_waits() gives: a block (`with`) or a decorator. As a decorator, each call of the function runs in
    a block of its own; for a coroutine function, while the coroutine runs (contextlib's decorator ended the
    block when the coroutine was made, before its body ran, so an async test waited for real)."""

    def __init__(self, attempts: int | None) -> None:
        self._attempts = attempts
        self._open: list[_Block] = []

    def __enter__(self) -> None:
        block = _Block(self._attempts)
        self._open.append(block)
        _blocks.append(block)  # list.append and list.remove are atomic: no lock needed across threads

    def __exit__(self, *exc: object) -> None:
        _blocks.remove(self._open.pop())

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        attempts = self._attempts
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with _NoWaits(attempts):
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            with _NoWaits(attempts):
                return fn(*args, **kwargs)

        return wrapper


def no_waits(*, attempts: int | None = None) -> _NoWaits:
    """`with no_waits():` retries still happen, nobody waits; the previous setting comes back after, also
    when blocks in several threads overlap. `@no_waits()` on a test function (sync or async) does the same
    for each of its calls. `attempts`, if given, caps every retryable class's attempts inside."""
    _check_attempts(attempts)
    return _NoWaits(attempts)
