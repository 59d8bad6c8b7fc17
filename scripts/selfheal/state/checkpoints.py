"""A multi-step task's checkpoint (`checkpoints/<task>.json` and its journal) as typed records: the task's
own fields (`Checkpoint`) and one `StepRecord` per step. How it is saved (two slots and a journal) is
durable/checkpoint.py's; what the states mean and how a task moves between them, durable/workflow.py's.

Keys a newer version wrote are kept (`extra`) and written back. The step keys `ran`, `compensated`,
`fallback`, `converted` and `done_seq` are written only once they have a value, as before.

A step's outputs come back in the order the step gave them: the checkpoint's writer sorts every object's
keys (its SHA-256 is of that canonical form), so a step whose outputs (or a dict inside them) are not in
sorted order also gets `outputs_order`, the order of each such dict's keys (`key_order`), which reading
puts back. A checkpoint without it (older, or all in sorted order) reads as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .records import Fields, Spec, split

StepState = Literal["pending", "running", "done", "failed", "compensated", "compensation_failed"]
PENDING: StepState = "pending"
RUNNING: StepState = "running"
DONE: StepState = "done"
FAILED: StepState = "failed"
COMPENSATED: StepState = "compensated"
COMPENSATION_FAILED: StepState = "compensation_failed"
STEP_STATES: tuple[StepState, ...] = (PENDING, RUNNING, DONE, FAILED, COMPENSATED, COMPENSATION_FAILED)

TaskStatus = Literal["running", "completed", "failed", "compensating", "interrupted", "dead_letter"]
TASK_RUNNING: TaskStatus = "running"
TASK_COMPLETED: TaskStatus = "completed"
TASK_FAILED: TaskStatus = "failed"
TASK_COMPENSATING: TaskStatus = "compensating"
TASK_INTERRUPTED: TaskStatus = "interrupted"
TASK_DEAD_LETTER: TaskStatus = "dead_letter"
TASK_STATUSES: tuple[TaskStatus, ...] = (
    TASK_RUNNING,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_COMPENSATING,
    TASK_INTERRUPTED,
    TASK_DEAD_LETTER,
)


@dataclass
class StepRecord:
    """One step's progress. `started`/`ended` are UTC ISO times, `duration_s` seconds; `attempts` counts
    every attempt so far (on disk before each starts, so a crash never resets the budget)."""

    state: StepState = PENDING
    attempts: int = 0
    run_id: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    ended: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    error_class: str | None = None
    reason: str | None = None
    ran: bool | None = None  # it ran to its end (its side effects happened): it must stay compensable
    compensated: bool | None = None  # a failed step that ran was undone
    fallback: bool | None = None  # its result came from its fallback
    converted: list[str] | None = None  # outputs JSON could not hold, kept as text
    # A plan that runs steps at once: when this one finished among them (1, 2, ...), so compensation can
    # undo them in the reverse order of their completion. Sequential plans never write it.
    done_seq: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "state": self.state,
            "attempts": self.attempts,
            "run_id": self.run_id,
            "outputs": self.outputs,
            "started": self.started,
            "ended": self.ended,
            "duration_s": self.duration_s,
            "exit_code": self.exit_code,
            "error_class": self.error_class,
            "reason": self.reason,
        }
        for key in _SOMETIMES:
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        order = key_order(self.outputs)
        if order is not None:
            data[_OUTPUTS_ORDER] = order
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path, inside: str = "") -> StepRecord:
        f = Fields(data, where, "a step", inside=inside)
        values = f.read(_STEP_SPEC)  # one pass: a checkpoint of 10,000 steps reads 10,000 of these
        converted = values["converted"]
        if converted is not None and not all(type(c) is str for c in converted):
            raise f.bad("converted", "must be a list of strings")
        order = data.get(_OUTPUTS_ORDER)
        if order is not None:
            values["outputs"] = in_order(values["outputs"], order)
        extra = split(data, _STEP_FIELDS, (_OUTPUTS_ORDER,))
        return cls(state=f.choice("state", STEP_STATES, PENDING), **values, extra=extra)

    @property
    def undo_due(self) -> bool:
        """Done steps are undone; so is a step that ran to its end and failed afterwards (its outputs were
        missing): its side effects happened all the same."""
        if self.state == DONE:
            return True
        return self.state == FAILED and bool(self.ran) and not self.compensated


_SOMETIMES = ("ran", "compensated", "fallback", "converted", "done_seq")
_OUTPUTS_ORDER = "outputs_order"


def key_order(value: Any) -> Any:
    """What sorting the keys of `value`'s objects would lose, or None when nothing: for an object, its keys in
    order, each `[key, order]` where its value has an order of its own; for a list, `{index: order}` of
    the items that have one. Lists themselves keep their order: only objects are sorted."""
    if isinstance(value, dict):
        entries: list[Any] = []
        nested = False
        for key, item in value.items():
            inner = key_order(item)
            nested = nested or inner is not None
            entries.append(str(key) if inner is None else [str(key), inner])
        keys = [str(key) for key in value]
        return entries if nested or keys != sorted(keys) else None
    if isinstance(value, list):
        found = {str(i): inner for i, item in enumerate(value) if (inner := key_order(item)) is not None}
        return found or None
    return None


def in_order(value: Any, order: Any) -> Any:
    """`value` with its objects' keys put back in `order` (key_order's form). Only an order: an entry that is
    not one, or names a key that is not there, is passed over, and keys it does not name follow those it does
    (a hand-edited or stale order changes no value, and never makes a checkpoint unreadable)."""
    if isinstance(value, dict) and isinstance(order, list):
        out: dict[str, Any] = {}
        for entry in order:
            if isinstance(entry, str):
                key, inner = entry, None
            elif isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
                key, inner = entry
            else:
                continue
            if key in value and key not in out:
                out[key] = value[key] if inner is None else in_order(value[key], inner)
        for key, item in value.items():
            out.setdefault(key, item)
        return out
    if isinstance(value, list) and isinstance(order, dict):
        items = list(value)
        for index, inner in order.items():
            # isdecimal: what int() reads; a bounded length: int() refuses thousands of digits.
            if isinstance(index, str) and index.isdecimal() and len(index) < 19 and int(index) < len(items):
                items[int(index)] = in_order(items[int(index)], inner)
        return items
    return value


_STEP_FIELDS = frozenset(f.name for f in dataclasses.fields(StepRecord)) - {"extra"}
_STEP_SPEC: Spec = (
    ("attempts", "count", 0),
    ("run_id", "text?", None),
    ("outputs", "object", None),
    ("started", "text?", None),
    ("ended", "text?", None),
    ("duration_s", "number?", None),
    ("exit_code", "whole?", None),
    ("error_class", "text?", None),
    ("reason", "text?", None),
    ("ran", "flag?", None),
    ("compensated", "flag?", None),
    ("fallback", "flag?", None),
    ("converted", "list?", None),
    ("done_seq", "whole?", None),
)


@dataclass
class PlanRef:
    """The plan a checkpoint was made with: its name, file (None for a Python workflow) and digest."""

    name: str
    path: str | None = None
    digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "digest": self.digest, **self.extra}


@dataclass
class Checkpoint:
    """A task's checkpoint: its own fields, and its steps in plan order (`order`, the keys of `steps`)."""

    task: str
    plan: PlanRef
    order: list[str]
    steps: dict[str, StepRecord]
    status: TaskStatus = TASK_RUNNING
    runs: int = 0
    resumes_without_progress: int = 0
    done_at_last_run: int = 0
    created: str | None = None
    updated: str | None = None
    incident: str | None = None  # the id of the task's last incident
    extra: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str) -> StepRecord:
        return self.steps[name]

    def first_unfinished(self) -> str | None:
        """The first step in plan order that is not done: where a resume starts."""
        return next((n for n in self.order if self.steps[n].state != DONE), None)

    def first_failed(self) -> str | None:
        return next((n for n in self.order if self.steps[n].state == FAILED), None)

    def done_count(self) -> int:
        return sum(1 for s in self.steps.values() if s.state == DONE)

    def top_json(self) -> dict[str, Any]:
        """The task's own fields, without `steps` and `order` (what a journaled save compares)."""
        data: dict[str, Any] = {
            "task": self.task,
            "plan": self.plan.to_json(),
            "status": self.status,
            "runs": self.runs,
            "resumes_without_progress": self.resumes_without_progress,
            "done_at_last_run": self.done_at_last_run,
            "created": self.created,
            "updated": self.updated,
            "incident": self.incident,
        }
        data.update(self.extra)
        return data

    def to_json(self) -> dict[str, Any]:
        data = self.top_json()
        data["order"] = list(self.order)
        data["steps"] = {name: record.to_json() for name, record in self.steps.items()}
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path, *, task: str | None = None) -> Checkpoint:
        """Check a checkpoint read from `where`; RecordError names where, the key and the value. `task`:
        the task it must belong to."""
        f = Fields(data, where, "a checkpoint")
        f.require("task", "steps")
        name = f.text("task")
        if task is not None and name != task:
            raise f.bad("task", f"not a checkpoint of task {task!r}")
        raw_steps = f.object("steps")
        steps = {str(k): StepRecord.from_json(v, where, f"steps.{k}") for k, v in raw_steps.items()}
        order = f.array("order")
        if not all(isinstance(n, str) for n in order) or sorted(order) != sorted(steps):
            raise f.bad("order", "must list the names of the steps, each once")
        plan = Fields(f.object("plan"), where, "a plan", inside="plan")
        return cls(
            task=name,
            plan=PlanRef(
                name=plan.text("name", ""),
                path=plan.text("path", optional=True),
                digest=plan.text("digest", optional=True),
                extra=split(plan.data, ("name", "path", "digest")),
            ),
            order=list(order),
            steps=steps,
            status=f.choice("status", TASK_STATUSES, TASK_RUNNING),
            runs=f.count("runs"),
            resumes_without_progress=f.count("resumes_without_progress"),
            done_at_last_run=f.count("done_at_last_run"),
            created=f.text("created", optional=True),
            updated=f.text("updated", optional=True),
            incident=f.text("incident", optional=True),
            extra=split(data, _CHECKPOINT_FIELDS),
        )


_CHECKPOINT_FIELDS = frozenset(f.name for f in dataclasses.fields(Checkpoint)) - {"extra"}
