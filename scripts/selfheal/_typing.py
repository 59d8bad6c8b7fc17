"""`typing.NamedTuple` without importing `typing`: the cron health check, started every few minutes, pays
2.5-3 ms for `typing` at each start and needs nothing else from it (a test checks it is not imported).

Use it as

    TYPE_CHECKING = False  # mypy and ruff take a module-level TYPE_CHECKING as true
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from .._typing import NamedTuple

so that mypy checks against the real one. At run time `class X(NamedTuple)` makes the same class CPython
3.11's `typing.NamedTupleMeta` makes: a `collections.namedtuple` with the annotated fields, their defaults,
and the class body's methods, properties and docstring.
"""

from __future__ import annotations

import collections


class _NamedTupleMeta(type):
    def __new__(mcs, typename: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
        annotations = dict(ns.get("__annotations__", {}))  # type: ignore[call-overload]
        fields = list(annotations)
        defaults = [ns[name] for name in fields if name in ns]
        if any(name not in ns for name in fields[len(fields) - len(defaults) :]):
            raise TypeError(f"{typename}: a field without a default follows one with a default")
        cls = collections.namedtuple(typename, fields, defaults=defaults, module=str(ns["__module__"]))  # type: ignore[misc]
        cls.__annotations__ = annotations
        for key, value in ns.items():
            if key not in ("__module__", "__annotations__") and key not in fields:
                setattr(cls, key, value)
        return cls


NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
