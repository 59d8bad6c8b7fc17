"""A conversation snapshot (`sessions/<id>.json`) as a typed record, and the line a listing shows for it.
Saving, marking and listing them is durable/snapshot.py's.

Keys a newer version wrote are kept (`extra`) and written back when a snapshot is changed in place
(marked interrupted); a new save replaces the whole snapshot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import Fields, split


@dataclass(frozen=True)
class SnapshotInfo:
    """One line of a listing: what a snapshot is, without its messages. Times are wall-clock seconds."""

    session_id: str
    saved: float
    interrupted: bool
    interrupted_at: float | None
    reason: str
    message_count: int
    age_s: float

    @property
    def since(self) -> float:
        """The time the listing sorts by: when it was interrupted, else when it was saved."""
        return self.interrupted_at if self.interrupted and self.interrupted_at is not None else self.saved

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "saved": self.saved,
            "interrupted": self.interrupted,
            "interrupted_at": self.interrupted_at,
            "reason": self.reason,
            "message_count": self.message_count,
            "age_s": round(self.age_s, 3),
        }


@dataclass(frozen=True)
class Snapshot:
    """A saved session. `message_count` counts every message given to save(); `messages` holds the last ones."""

    session_id: str
    saved: float
    message_count: int
    messages: list[dict[str, Any]]
    state: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    interrupted_at: float | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def info(self, now: float) -> SnapshotInfo:
        info = SnapshotInfo(
            self.session_id, self.saved, self.interrupted, self.interrupted_at, self.reason, self.message_count, 0.0
        )
        return dataclasses.replace(info, age_s=now - info.since)

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "session_id": self.session_id,
            "saved": self.saved,
            "message_count": self.message_count,
            "messages": self.messages,
            "state": self.state,
            "interrupted": self.interrupted,
            "interrupted_at": self.interrupted_at,
            "reason": self.reason,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: Any, where: str | Path, *, session_id: str) -> Snapshot:
        """Check a snapshot read from `where` (the file of `session_id`); RecordError names where, the key and
        the value of anything that is not a snapshot as this module writes them."""
        f = Fields(data, where, "a snapshot")
        f.require("saved", "message_count", "messages", "state", "interrupted")
        interrupted_at = f.number("interrupted_at", optional=True)
        return cls(
            session_id=session_id,
            saved=float(f.number("saved")),
            message_count=f.count("message_count"),
            messages=f.array("messages"),
            state=f.object("state"),
            interrupted=f.flag("interrupted"),
            interrupted_at=None if interrupted_at is None else float(interrupted_at),
            reason=f.text("reason", ""),
            extra=split(data, _FIELDS),
        )


_FIELDS = frozenset(f.name for f in dataclasses.fields(Snapshot)) - {"extra"}
