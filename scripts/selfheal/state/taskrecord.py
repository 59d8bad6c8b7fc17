"""A task of the task tree as a typed record (a row of the fourth source document's `tasks` table); its
states are in `taskstates`. The rules that move a task between states live in `selfheal.tasks.tree`; the store that
keeps the records, in `taskdb`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..clock import utc_iso
from .records import Fields, split
from .taskstates import EXEC_STATES, NEW, PRIORITIES, SCHEMA, STATUS_OF, TYPES, VOID

# -- the record ----------------------------------------------------------------------------------------


@dataclass
class Task:
    """One task. Timestamps are wall-clock seconds (`*_ts`) with ISO copies for people reading the file."""

    name: str
    type: str = "regular"
    priority: str = "P1"
    exec_state: str = NEW
    display_name: str | None = None
    description: str | None = None
    parent: str | None = None
    root: str = ""
    level: int = 1
    run: dict[str, Any] | None = None  # {"kind": argv|shell|plan, "argv"|"shell"|"plan": ..., "cwd", ...}
    success_criteria: str | None = None
    fix_suggestion: str | None = None
    analysis: str | None = None
    plan: str | None = None  # the source document's fix plan: text, not something that runs
    solution: str | None = None
    retry_count: int = 0
    execution_count: int = 0
    last_result: str | None = None
    last_error: str | None = None
    last_error_class: str | None = None
    failed_step: str | None = None
    source: dict[str, Any] | None = None  # for a FIX task: which task, step and failure made it
    incident: str | None = None
    fix_record: str | None = None  # the fix record (fixes/FIX-...json) self-heal made for this task's failure
    requeued: bool = False  # a person handed it back from REQUIRES_MANUAL; the next run starts fresh
    created_ts: float = 0.0
    updated_ts: float = 0.0
    last_executed_ts: float | None = None
    started_ts: float | None = None
    ended_ts: float | None = None
    heartbeat_ts: float | None = None
    activity_ts: float | None = None  # last output, or a retry wait in progress: proof of work, not just life
    runner: dict[str, Any] | None = None  # {"pid", "create_time", "host"} of the process running it
    run_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer version wrote: kept, not dropped

    @property
    def status(self) -> str:
        return STATUS_OF[self.exec_state]

    @property
    def is_void(self) -> bool:
        return self.exec_state == VOID

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data.update(self.extra)
        data["schema"] = SCHEMA
        data["status"] = self.status
        data["is_void"] = self.is_void
        for key in ("created", "updated", "last_executed", "started", "ended", "heartbeat", "activity"):
            ts = data.get(f"{key}_ts")
            data[key] = utc_iso(ts) if ts else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str, *, file_name: str | None = None) -> Task:
        """Check a record read from `where` (a file, a row); a wrong one is reported with where, key and value.

        `file_name`: the record came from `<name>.json`, whose stem must be the task's name."""
        fields = Fields(data, where, "a task")
        known = {k: v for k, v in data.items() if k in FIELDS}
        bad = fields.bad
        if not isinstance(known.get("name"), str):
            raise bad("name", "missing or not a string")
        for key, allowed in (("exec_state", EXEC_STATES), ("type", TYPES), ("priority", PRIORITIES)):
            fields.choice(key, allowed)
        for key in ("retry_count", "execution_count", "level"):
            fields.count(key)
        fields.array("history")
        known["run"] = check_run_spec(known.get("run"), str(where))
        task = cls(**known, extra=split(data, FIELDS, DERIVED))
        if file_name is not None and file_name != f"{task.name}.json":
            raise bad("name", f"does not match the file name {file_name}")
        return task


RUN_KINDS = ("argv", "shell", "plan")


def check_run_spec(run: Any, where: str) -> dict[str, Any] | None:
    """A task's run spec as read (from a file, a row): what runs (`argv`, a list of strings; `shell`, a command
    line; `plan`, a workflow file) and how (`cwd`, `timeout_s` > 0, `max_attempts` >= 1, `target`). A wrong one
    is reported with where, key and value, before anything runs it; keys a newer version wrote are kept."""
    if run is None:
        return None
    fields = Fields(run, where, "a run spec", inside="run")
    bad = fields.bad
    kind = fields.choice("kind", RUN_KINDS)
    if kind is None:
        raise bad("kind", f"missing: must be one of {', '.join(RUN_KINDS)}")
    if kind == "argv":
        argv = fields.array("argv")
        if not argv or not all(type(a) is str and "\0" not in a for a in argv) or not argv[0]:
            raise bad("argv", "must be a non-empty list of strings without NUL bytes")
    else:
        text = fields.text(kind)
        if not isinstance(text, str) or not text.strip() or "\0" in text:
            raise bad(kind, "must be a non-empty string without NUL bytes")
    fields.text("cwd", optional=True)
    fields.text("target", optional=True)
    timeout = fields.number("timeout_s", optional=True)
    if timeout is not None and not timeout > 0:
        raise bad("timeout_s", "must be a number > 0 or null")
    attempts = fields.whole("max_attempts", optional=True)
    if attempts is not None and attempts < 1:
        raise bad("max_attempts", "must be a whole number >= 1 or null")
    return dict(run)


FIELDS = frozenset(f.name for f in dataclasses.fields(Task)) - {"extra"}
# Written for people and tools reading the file; recomputed from the fields, never read back.
DERIVED = frozenset(
    {"schema", "status", "is_void", "created", "updated", "last_executed", "started", "ended", "heartbeat", "activity"}
)


TYPE_RANK = {t: i for i, t in enumerate(TYPES)}
PRIORITY_RANK = {p: i for i, p in enumerate(PRIORITIES)}


def rank(task: Task) -> tuple[int, int, int, float, str]:
    """The source document's ORDER BY: type (fix, regular, creative), priority, deeper level, oldest (then name).

    The same order as `taskdb.ORDER_BY`, for tasks already in memory."""
    return (TYPE_RANK[task.type], PRIORITY_RANK[task.priority], -task.level, task.created_ts, task.name)
