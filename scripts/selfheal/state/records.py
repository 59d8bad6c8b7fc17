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


_MISSING: Any = object()
# The kinds JSON gives, compared exactly (type(), not isinstance()): a bool is not a number, and it is faster.
_NUMBERS = frozenset({int, float})
# Fields.read's kinds: the JSON types each accepts, and what the message says otherwise.
KINDS: dict[str, tuple[frozenset[type], str]] = {
    "text": (frozenset({str}), "must be a string"),
    "number": (_NUMBERS, "must be a number"),
    "count": (frozenset({int}), "must be a whole number >= 0"),
    "whole": (frozenset({int}), "must be a whole number"),
    "flag": (frozenset({bool}), "must be true or false"),
    "list": (frozenset({list}), "must be a list"),
    "object": (frozenset({dict}), "must be an object"),
}
Spec = tuple[tuple[str, str, Any], ...]


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

    def read(self, spec: Spec) -> dict[str, Any]:
        """Every field `spec` names, checked, in one pass (for records read on every request): each entry is
        (key, kind, default), a kind one of `KINDS`, ending in `?` where null is allowed too. A missing
        key takes its default (a fresh empty list or object for those kinds)."""
        data, out = self.data, {}
        for key, kind, default in spec:
            value = data.get(key, _MISSING)
            if value is _MISSING:
                value = [] if kind == "list" else {} if kind == "object" else default
            elif value is None and kind[-1] == "?":
                pass
            else:
                types, why = KINDS[kind.rstrip("?")]
                if type(value) not in types or (kind == "count" and value < 0):
                    raise self.bad(key, why + (" or null" if kind[-1] == "?" else ""))
            out[key] = value
        return out

    def _get(self, key: str, value: Any, default: Any, optional: bool, *, ok: bool, why: str) -> Any:
        """`value` is data[key], or _MISSING; `ok`, whether it is of the kind asked for."""
        if value is _MISSING:
            return default
        if value is None and optional:
            return None
        if not ok:
            raise self.bad(key, why + (" or null" if optional else ""))
        return value

    def text(self, key: str, default: Any = None, *, optional: bool = False) -> Any:
        value = self.data.get(key, _MISSING)
        return self._get(key, value, default, optional, ok=type(value) is str, why="must be a string")

    def choice(self, key: str, allowed: Iterable[str], default: Any = None) -> Any:
        value = self.data.get(key, _MISSING)
        allowed = tuple(allowed)
        return self._get(key, value, default, False, ok=value in allowed, why=f"must be one of {', '.join(allowed)}")

    def count(self, key: str, default: Any = 0, *, optional: bool = False) -> Any:
        """A whole number >= 0."""
        value = self.data.get(key, _MISSING)
        ok = type(value) is int and value >= 0
        return self._get(key, value, default, optional, ok=ok, why="must be a whole number >= 0")

    def whole(self, key: str, default: Any = None, *, optional: bool = False) -> Any:
        value = self.data.get(key, _MISSING)
        return self._get(key, value, default, optional, ok=type(value) is int, why="must be a whole number")

    def number(self, key: str, default: Any = None, *, optional: bool = False) -> Any:
        """A number (seconds, a timestamp): int or float, never a bool."""
        value = self.data.get(key, _MISSING)
        return self._get(key, value, default, optional, ok=type(value) in _NUMBERS, why="must be a number")

    def flag(self, key: str, default: Any = False, *, optional: bool = False) -> Any:
        value = self.data.get(key, _MISSING)
        return self._get(key, value, default, optional, ok=type(value) is bool, why="must be true or false")

    def array(self, key: str, *, optional: bool = False) -> Any:
        """A list; missing: an empty one (None, if optional)."""
        value = self.data.get(key, _MISSING)
        return self._get(key, value, None if optional else [], optional, ok=type(value) is list, why="must be a list")

    def object(self, key: str, *, optional: bool = False) -> Any:
        """A JSON object; missing: an empty one (None, if optional)."""
        value = self.data.get(key, _MISSING)
        return self._get(
            key, value, None if optional else {}, optional, ok=type(value) is dict, why="must be an object"
        )
