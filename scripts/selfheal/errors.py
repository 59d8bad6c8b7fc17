"""The skill's own errors, grouped by what the caller does next.

Each carries the data a message needs and the process exit code of DESIGN.md:
2 usage or configuration, 3 failed, 4 not attempted (try later).
"""

from __future__ import annotations

import signal as _signal
from pathlib import Path

TYPE_CHECKING = False  # not typing's: see selfheal/__init__.py
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_NOT_ATTEMPTED = 4


def _rebuilt(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """An error as pickle made it, without its __init__ (whose parameters are not its args)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class SelfHealError(Exception):
    """Base of every error the skill raises on purpose."""

    exit_code: int = EXIT_FAILED

    def __reduce__(self) -> tuple[Any, ...]:
        # Whole through pickle, though most subclasses' __init__ takes other arguments than the message:
        # the default calls __init__(*args), which failed, and one raised in a ProcessPoolExecutor's worker
        # broke the whole pool (BrokenProcessPool for every job).
        return _rebuilt, (type(self), self.args, dict(self.__dict__))


class UsageError(SelfHealError, ValueError):
    """The caller asked for something that cannot work as asked (bad flag, bad id)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration file or value is wrong; the message names the file, key path and value."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        key: str | None = None,
        value: object = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.detail = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.value = value
        self.line = line
        self.column = column
        where = self.file or "<config>"
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        parts = [where]
        if key:
            parts.append(key)
        super().__init__(": ".join([*parts, message]))


class InvalidIdError(UsageError):
    """An id that would become a file name is not safe to use as one."""

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        self.value = value
        super().__init__(f"invalid {kind} id {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ - and no leading dot")


class StateError(SelfHealError):
    """A state file under the state root could not be used."""


class CorruptStateError(StateError):
    """A state file could not be parsed; it was moved aside, never silently reset."""

    def __init__(self, path: Path, quarantined_to: Path | None, detail: str) -> None:
        self.path = path
        self.quarantined_to = quarantined_to
        self.detail = detail
        moved = f"; moved to {quarantined_to}" if quarantined_to else ""
        super().__init__(f"state file {path} is unreadable ({detail}){moved}")


class UnsafeStateError(StateError):
    """A path under the state root is not safe to use: a planted symbolic link, a hard link, something that
    is not a plain file or folder, or a folder that another user owns. Nothing is read or written through
    it; fixing it is the user's job (exit 2, like a configuration error)."""

    exit_code = EXIT_USAGE

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"refused to use {path}: it {problem}; self-heal never follows links under its state root")


class StateWriteError(StateError, OSError):
    """A state file or folder could not be written (disk full, read-only, no permission): also an OSError,
    with the errno of the cause, so code that handles OS errors handles this one too."""

    def __init__(self, path: Path, exc: OSError, doing: str = "write") -> None:
        OSError.__init__(self, exc.errno, exc.strerror)
        self.path = path
        self.doing = doing
        self.reason = exc.strerror or str(exc)

    def __str__(self) -> str:
        return f"cannot {self.doing} {self.path}: {self.reason}"


class FleetUnavailable(StateError):
    """Fleet mode's database could not be reached, or failed during a statement (state/pg.py raises it; this
    base lets code that never imports psycopg tell an outage apart)."""


class NotAttempted(SelfHealError):
    """Nothing was run because running now would be pointless or unsafe; try later."""

    exit_code = EXIT_NOT_ATTEMPTED


class LockBusy(NotAttempted):
    """Another process holds the lock for this task or file."""

    def __init__(self, what: str, holder: str | None = None) -> None:
        self.what = what
        self.holder = holder
        suffix = f" (held by {holder})" if holder else ""
        super().__init__(f"{what} is busy{suffix}; try again later")


class Interrupted(BaseException):
    """A signal asked this process to stop; not an Exception, so no retry loop swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        try:
            self.signame = _signal.Signals(signum).name
        except ValueError:
            self.signame = f"signal {signum}"
        super().__init__(f"interrupted by {self.signame}")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, dict(self.__dict__))  # as SelfHealError's
