"""An incident (`incidents/<id>.json`) as a typed record: what a person needs when nothing automatic can save
a task. Writing one and notifying about it is durable/incident.py's.

Keys a newer version wrote are kept (`extra`) and written back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import Fields, split


@dataclass
class Incident:
    """`kind`: failed or dead_letter. `created` is UTC ISO time; `notified` what the notifier did, if any."""

    id: str
    task: str
    kind: str
    summary: str
    error: str | None
    error_class: str | None
    failed_step: str | None
    last_completed_step: str | None
    resume_command: str
    compensated: list[str] = field(default_factory=list)
    compensation_failures: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    plan: str | None = None
    created: str = ""
    notified: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> Incident:
        """Check an incident read from `where`; RecordError names where, the key and the value."""
        f = Fields(data, where, "an incident")
        f.require("id", "task", "kind", "summary", "resume_command")
        compensated = f.array("compensated")
        if not all(isinstance(c, str) for c in compensated):
            raise f.bad("compensated", "must be a list of step names")
        failures = f.array("compensation_failures")
        if not all(isinstance(c, dict) for c in failures):
            raise f.bad("compensation_failures", "must be a list of objects")
        return cls(
            id=f.text("id"),
            task=f.text("task"),
            kind=f.text("kind"),
            summary=f.text("summary"),
            error=f.text("error", optional=True),
            error_class=f.text("error_class", optional=True),
            failed_step=f.text("failed_step", optional=True),
            last_completed_step=f.text("last_completed_step", optional=True),
            resume_command=f.text("resume_command"),
            compensated=compensated,
            compensation_failures=failures,
            context=f.object("context"),
            plan=f.text("plan", optional=True),
            created=f.text("created", ""),
            notified=f.object("notified", optional=True),
            extra=split(data, _FIELDS),
        )


_FIELDS = frozenset(f.name for f in dataclasses.fields(Incident)) - {"extra"}
