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
    run: RunSpec | None = None  # what it runs (a mapping given here is checked and made a RunSpec)
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

    def __post_init__(self) -> None:
        given: Any = self.run  # code and tests may give the mapping a file would hold
        if given is not None and not isinstance(given, RunSpec):
            self.run = RunSpec.from_json(given, f"task {self.name!r}")

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
        if self.run is not None:
            data["run"] = self.run.to_json()
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
        if known.get("run") is not None:
            known["run"] = RunSpec.from_json(known["run"], str(where))
        task = cls(**known, extra=split(data, FIELDS, DERIVED))
        if file_name is not None and file_name != f"{task.name}.json":
            raise bad("name", f"does not match the file name {file_name}")
        return task


RUN_KINDS = ("argv", "shell", "plan")
# The run spec's keys, in the order they are written; the kind names which of argv, shell and plan is set.
RUN_KEYS = ("kind", "argv", "shell", "plan", "cwd", "timeout_s", "max_attempts", "target", "evidence")
_RUN_OPTIONS = ("cwd", "timeout_s", "max_attempts", "target")


@dataclass(frozen=True)
class RunSpec:
    """What a task runs and how: a command as an argv list (`argv`), a command line for /bin/sh (`shell`), or
    a workflow plan file (`plan`, run through the resumable executor); in `cwd`, each try within `timeout_s`,
    at most `max_attempts` tries, its model or service named `target` for the breakers.

    Checked when it is made and each time it is read (a file, a row): a wrong one is reported with where, key
    and value before anything runs it. Keys a newer version wrote are kept in `extra`."""

    kind: str
    argv: tuple[str, ...] | None = None
    shell: str | None = None
    plan: str | None = None
    cwd: str | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    target: str | None = None
    # Files the command leaves that tell what went wrong (screenshots, HTML dumps): glob patterns, relative to
    # cwd (a plan's: its folder). A fix record lists the matches as evidence. Written only when set.
    evidence: tuple[str, ...] | None = None
    # Which optional keys the record holds (null or not), so a record is written back in the shape it was read.
    written: tuple[str, ...] = _RUN_OPTIONS
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A spec made in code is held to the rules a read one is (from_json has checked those already)."""
        value = getattr(self, self.kind, None) if self.kind in RUN_KINDS else None
        if not value or (self.kind == "argv" and not all(type(a) is str and a for a in value[:1])):
            raise ValueError(f"a run spec of kind {self.kind!r} needs its {self.kind}: got {value!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"a run spec's timeout_s must be > 0, got {self.timeout_s!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"a run spec's max_attempts must be >= 1, got {self.max_attempts!r}")

    @classmethod
    def command(
        cls,
        argv: list[str] | tuple[str, ...],
        *,
        cwd: str | None = None,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        target: str | None = None,
    ) -> RunSpec:
        """An argv command (the common case in code: `RunSpec.command(["python3", "job.py"], cwd=...)`)."""
        return cls("argv", tuple(argv), cwd=cwd, timeout_s=timeout_s, max_attempts=max_attempts, target=target)

    def process_argv(self) -> list[str]:
        """The argv a process is started with: the command, or the line through /bin/sh. Not for a plan."""
        if self.kind == "argv":
            return list(self.argv or ())
        if self.kind == "shell":
            return ["/bin/sh", "-c", str(self.shell)]
        raise ValueError("a plan is run by the workflow executor, not as a process")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind == "argv":
            data["argv"] = list(self.argv) if self.argv is not None else None
        else:
            data[self.kind] = getattr(self, self.kind)
        for key in self.written:
            data[key] = getattr(self, key)
        if self.evidence is not None:
            data["evidence"] = list(self.evidence)
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunSpec:
        """A run spec read from `where`; wrong ones raise RecordError naming where, key and value."""
        checked = check_run_spec(data, where)
        kind = checked["kind"]
        return cls(
            kind=kind,
            argv=tuple(checked["argv"]) if kind == "argv" else None,
            shell=checked["shell"] if kind == "shell" else None,
            plan=checked["plan"] if kind == "plan" else None,
            cwd=checked.get("cwd"),
            timeout_s=checked.get("timeout_s"),
            max_attempts=checked.get("max_attempts"),
            target=checked.get("target"),
            evidence=tuple(checked["evidence"]) if checked.get("evidence") is not None else None,
            written=tuple(k for k in _RUN_OPTIONS if k in checked),
            extra={k: v for k, v in checked.items() if k not in RUN_KEYS},
        )


def check_run_spec(run: Any, where: str) -> dict[str, Any]:
    """A run spec as read (from a file, a row): what runs (`argv`, a list of strings; `shell`, a command line;
    `plan`, a workflow file) and how (`cwd`, `timeout_s` > 0, `max_attempts` >= 1, `target`). A wrong one is
    reported with where, key and value, before anything runs it; keys a newer version wrote are kept."""
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
    for other in RUN_KINDS:
        if other != kind and run.get(other) is not None:
            raise bad(other, f"a {kind} run spec cannot also have {other}")
    fields.text("cwd", optional=True)
    fields.text("target", optional=True)
    timeout = fields.number("timeout_s", optional=True)
    if timeout is not None and not timeout > 0:
        raise bad("timeout_s", "must be a number > 0 or null")
    attempts = fields.whole("max_attempts", optional=True)
    if attempts is not None and attempts < 1:
        raise bad("max_attempts", "must be a whole number >= 1 or null")
    evidence = run.get("evidence")
    if evidence is not None and (
        not isinstance(evidence, list)
        or not evidence
        or not all(type(p) is str and p.strip() and "\0" not in p for p in evidence)
    ):
        raise bad("evidence", 'must be a non-empty list of file patterns, e.g. ["shots/*.png"]')
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
