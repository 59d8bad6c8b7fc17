"""What every typed record of the state root shares: reading its fields with a check, keeping unknown keys.

A record is a dataclass with `from_json(data, where)` and `to_json()`. Reading checks each field it knows
(`Fields`): a wrong one raises RecordError, which names where the record came from (a file, a row), the
key and the value. Keys the record does not know were written by a newer version: they are kept in its
`extra` and written back as they were, so an older reader never drops what a newer writer saved.
The records themselves live beside this module: `taskrecord` (a task and its run spec), `fixes` (a fix
record), `breakers` (a circuit breaker), `checkpoints` (a workflow's checkpoint and its steps), `runs`
(a live run).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StateError

T = TypeVar("T")


class RecordError(StateError):
    """A saved record has a field of the wrong type or value; `where`, `key` and `value` say which."""

    def __init__(self, where: str | Path, key: str, why: str, value: Any) -> None:
        self.where = str(where)
        self.key = key
        self.why = why
        self.value = value
        super().__init__(f"{where}: {key}: {why} (value {value!r})")

    @property
    def detail(self) -> str:
        """The message without the place: for a caller that names the file itself."""
        return f"{self.key}: {self.why} (value {self.value!r})"


def split(data: Mapping[str, Any], known: Collection[str], derived: Collection[str] = ()) -> dict[str, Any]:
    """The keys of `data` a record does not know (nor recomputes: `derived`): a newer version's, to keep."""
    return {k: v for k, v in data.items() if k not in known and k not in derived}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Fields:
    """The fields of one record read from `data`, each checked as it is taken.

    Every getter returns the default when the key is missing (an older version did not write it), and raises
    RecordError when the key is there with a value of the wrong kind. `None` is accepted only where a getter
    says `optional=True`."""

    def __init__(self, data: Any, where: str | Path, what: str = "record", *, inside: str = "") -> None:
        """`inside`: the key path of a record nested in another (`permits.<id>`), named before each key."""
        self.prefix = f"{inside}." if inside else ""
        if not isinstance(data, Mapping):
            raise RecordError(where, inside or "(top level)", f"must be a JSON object ({what})", data)
        self.data = data
        self.where = where

    def bad(self, key: str, why: str) -> RecordError:
        return RecordError(self.where, self.prefix + key, why, self.data.get(key))

    def require(self, *keys: str) -> None:
        """These keys must be present (a record without them is not this kind of record)."""
        for key in keys:
            if key not in self.data:
                raise self.bad(key, "missing")

    def _get(self, key: str, default: Any, optional: bool, ok: bool, why: str) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if value is None and optional:
            return None
        if not ok:
            raise self.bad(key, why + (" or null" if optional else ""))
        return value

    def text(self, key: str, default: Any = None, *, optional: bool = False) -> Any:
        value = self.data.get(key)
        return self._get(key, default, optional, isinstance(value, str), "must be a string")

    def choice(self, key: str, allowed: Iterable[str], default: Any = None) -> Any:
        allowed = tuple(allowed)
        return self._get(key, default, False, self.data.get(key) in allowed, f"must be one of {', '.join(allowed)}")

    def count(self, key: str, default: Any = 0, *, optional: bool = False) -> Any:
        """A whole number >= 0."""
        value = self.data.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return self._get(key, default, optional, ok, "must be a whole number >= 0")

    def whole(self, key: str, default: Any = None, *, optional: bool = False) -> Any:
        value = self.data.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool)
        return self._get(key, default, optional, ok, "must be a whole number")

    def number(self, key: str, default: Any = None, *, optional: bool = False) -> Any:
        """A number (seconds, a timestamp): int or float, never a bool."""
        return self._get(key, default, optional, _is_number(self.data.get(key)), "must be a number")

    def flag(self, key: str, default: Any = False, *, optional: bool = False) -> Any:
        value = self.data.get(key)
        return self._get(key, default, optional, isinstance(value, bool), "must be true or false")

    def array(self, key: str, *, optional: bool = False) -> Any:
        """A list; missing: an empty one (None, if optional)."""
        value = self.data.get(key)
        return self._get(key, None if optional else [], optional, isinstance(value, list), "must be a list")

    def object(self, key: str, *, optional: bool = False) -> Any:
        """A JSON object; missing: an empty one (None, if optional)."""
        value = self.data.get(key)
        return self._get(key, None if optional else {}, optional, isinstance(value, dict), "must be an object")

    def any(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)
