"""The task tree (`tasks/<name>.json`): parent and child tasks, exec states and the order they run in.

The fourth source document's task-state manager, on plain files instead of PostgreSQL. A task has a
type (fix, regular, creative), a priority (P0-P2), an exec state, an optional parent, and optionally
something to run (a command, a shell string, or a workflow plan). Every change goes through
`TaskStore.transaction()`: it holds one lock over the whole tree (so a claim has exactly one winner and a
parent check sees every child), works on a snapshot, and writes what changed only if the block ends
without an error, so a refused change leaves every file as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..core.config import Config, get_config
from ..core.process import identify
from ..errors import CorruptStateError, LockBusy, StateError, UsageError
from ..state.redact import active as active_redactor
from ..state.root import StateRoot, ensure_dir, file_lock, fsync_dir, read_json, validate_id, write_json

# -- states --------------------------------------------------------------------------------------------

NEW = "NEW"
PROCESSING = "PROCESSING"
END = "END"
ERROR_FIX_PENDING = "ERROR_FIX_PENDING"
NORMAL_CRASH = "NORMAL_CRASH"
REQUIRES_MANUAL = "REQUIRES_MANUAL"
VOID = "VOID"
EXEC_STATES = (NEW, PROCESSING, END, ERROR_FIX_PENDING, NORMAL_CRASH, REQUIRES_MANUAL, VOID)

# The source document's `status` column, derived from the exec state so the two never disagree.
STATUS_OF = {
    NEW: "pending",
    PROCESSING: "running",
    END: "completed",
    ERROR_FIX_PENDING: "failed",
    NORMAL_CRASH: "failed",
    REQUIRES_MANUAL: "failed",
    VOID: "voided",
}

# Which exec state may follow which. END and VOID are final (END may still be voided); a task that needs
# a person leaves REQUIRES_MANUAL only when a person hands it back (ERROR_FIX_PENDING), ends or voids it.
TRANSITIONS: dict[str, frozenset[str]] = {
    NEW: frozenset({PROCESSING, END, REQUIRES_MANUAL, VOID}),
    PROCESSING: frozenset({END, ERROR_FIX_PENDING, NORMAL_CRASH, REQUIRES_MANUAL, VOID}),
    ERROR_FIX_PENDING: frozenset({PROCESSING, END, NORMAL_CRASH, REQUIRES_MANUAL, VOID}),
    NORMAL_CRASH: frozenset({PROCESSING, END, ERROR_FIX_PENDING, REQUIRES_MANUAL, VOID}),
    REQUIRES_MANUAL: frozenset({ERROR_FIX_PENDING, END, VOID}),
    END: frozenset({VOID}),
    VOID: frozenset(),
}

# `tasks.py mark NAME VERB`: the source document's mark_start / mark_end / mark_error_fix_pending / ...
VERBS = {
    "start": PROCESSING,
    "end": END,
    "error": ERROR_FIX_PENDING,
    "crash": NORMAL_CRASH,
    "manual": REQUIRES_MANUAL,
    "void": VOID,
}

ACTIONABLE_STATES = frozenset({NEW, ERROR_FIX_PENDING, NORMAL_CRASH})
# A parent runs only when every child is in one of these (the source document's gate).
CHILD_SETTLED = frozenset({END, VOID, REQUIRES_MANUAL})
OPEN_STATES = frozenset({NEW, PROCESSING, ERROR_FIX_PENDING, NORMAL_CRASH})

TYPES = ("fix", "regular", "creative")
PRIORITIES = ("P0", "P1", "P2")
RUN_KINDS = ("argv", "shell", "plan")
SCHEMA = 1
HISTORY_KEEP = 30
TEXT_FIELDS = ("display_name", "description", "success_criteria", "fix_suggestion", "analysis", "plan", "solution")


# -- errors --------------------------------------------------------------------------------------------


class TaskError(UsageError):
    """A task command that cannot be done as asked; nothing was changed (exit 2)."""


class UnknownTask(TaskError):
    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else "; `tasks.py list` shows the tasks"
        super().__init__(f"no task named {name!r}{hint}")


class TaskExists(TaskError):
    def __init__(self, name: str, exec_state: str) -> None:
        self.name = name
        super().__init__(f"task {name!r} already exists ({exec_state}); pick another name, or void it first")


class IllegalTransition(TaskError):
    def __init__(self, name: str, current: str, wanted: str) -> None:
        self.name, self.current, self.wanted = name, current, wanted
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing: it is final"
        super().__init__(f"task {name!r} is {current} and cannot become {wanted} (from {current}: {allowed})")


class BadParent(TaskError):
    """A parent that does not exist, is void, or would make the task its own ancestor."""


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
    def from_json(cls, data: dict[str, Any], path: Path) -> Task:
        """Check a record read from `path`; a wrong one is reported with the file, key and value."""
        known = {k: v for k, v in data.items() if k in _FIELDS}
        extra = {k: v for k, v in data.items() if k not in _FIELDS and k not in _DERIVED}

        def bad(key: str, why: str) -> StateError:
            return StateError(f"task file {path}: {key}: {why} (value {data.get(key)!r})")

        if not isinstance(known.get("name"), str):
            raise bad("name", "missing or not a string")
        checks = (("exec_state", EXEC_STATES), ("type", TYPES), ("priority", PRIORITIES))
        for key, allowed in checks:
            if key in known and known[key] not in allowed:
                raise bad(key, f"must be one of {', '.join(allowed)}")
        for key in ("retry_count", "execution_count", "level"):
            if key in known and (not isinstance(known[key], int) or isinstance(known[key], bool) or known[key] < 0):
                raise bad(key, "must be a whole number >= 0")
        if not isinstance(known.get("history", []), list):
            raise bad("history", "must be a list")
        task = cls(**known, extra=extra)
        if task.name != path.stem:
            raise bad("name", f"does not match the file name {path.name}")
        return task


_FIELDS = frozenset(f.name for f in dataclasses.fields(Task)) - {"extra"}
# Written for people and tools reading the file; recomputed from the fields, never read back.
_DERIVED = frozenset(
    {"schema", "status", "is_void", "created", "updated", "last_executed", "started", "ended", "heartbeat", "activity"}
)
_TYPE_RANK = {t: i for i, t in enumerate(TYPES)}
_PRIORITY_RANK = {p: i for i, p in enumerate(PRIORITIES)}


# -- the tree ------------------------------------------------------------------------------------------


def _rank(task: Task) -> tuple[int, int, int, float, str]:
    """The source document's ORDER BY: type (fix, regular, creative), priority, deeper level, oldest."""
    return (_TYPE_RANK[task.type], _PRIORITY_RANK[task.priority], -task.level, task.created_ts, task.name)


class TaskTree:
    """Every task, as read at one moment, with the questions the rules ask of it.

    Mutating methods only exist for use inside `TaskStore.transaction()`, which saves what they touched.
    """

    def __init__(self, tasks: dict[str, Task], clock: Clock) -> None:
        self.tasks = tasks
        self.clock = clock
        self.changed: dict[str, Task] = {}
        self.archived: list[Task] = []
        self._children: dict[str, list[str]] | None = None

    # -- questions ----------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, name: str) -> Task:
        validate_id(name, "task")
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(name, self.tasks) from None

    def children(self, name: str) -> list[Task]:
        if self._children is None:
            index: dict[str, list[str]] = {}
            for task in self.tasks.values():
                if task.parent is not None:
                    index.setdefault(task.parent, []).append(task.name)
            self._children = index
        return sorted((self.tasks[n] for n in self._children.get(name, [])), key=_rank)

    def descendants(self, name: str) -> list[Task]:
        out: list[Task] = []
        stack = [name]
        seen = {name}
        while stack:
            for child in self.children(stack.pop()):
                if child.name not in seen:  # a hand-edited cycle must not loop forever
                    seen.add(child.name)
                    out.append(child)
                    stack.append(child.name)
        return out

    def ancestors(self, name: str) -> list[Task]:
        out: list[Task] = []
        seen = {name}
        parent = self.tasks[name].parent if name in self.tasks else None
        while parent is not None and parent in self.tasks and parent not in seen:
            seen.add(parent)
            out.append(self.tasks[parent])
            parent = self.tasks[parent].parent
        return out

    def roots(self) -> list[Task]:
        return sorted((t for t in self.tasks.values() if t.parent is None or t.parent not in self.tasks), key=_rank)

    def waiting_on(self, name: str) -> list[Task]:
        """The children that keep a parent from running (not END, VOID or REQUIRES_MANUAL)."""
        return [c for c in self.children(name) if c.exec_state not in CHILD_SETTLED]

    def is_actionable(self, task: Task) -> bool:
        return task.exec_state in ACTIONABLE_STATES and not self.waiting_on(task.name)

    def actionable(self, *, types: Iterable[str] | None = None, limit: int | None = None) -> list[Task]:
        """Tasks that can run now, in the order they should: see `_rank`."""
        wanted = set(types) if types is not None else None
        found = [t for t in self.tasks.values() if (wanted is None or t.type in wanted) and self.is_actionable(t)]
        found.sort(key=_rank)
        return found if limit is None else found[:limit]

    def ordered(self) -> list[Task]:
        return sorted(self.tasks.values(), key=_rank)

    def finished_trees(self, *, unchanged_since: float) -> list[Task]:
        """Top-level tasks whose whole tree is END or VOID and unchanged since `unchanged_since`."""
        out = []
        for root in self.roots():
            members = [root, *self.descendants(root.name)]
            if all(t.exec_state in (END, VOID) for t in members) and max(t.updated_ts for t in members) < (
                unchanged_since
            ):
                out.append(root)
        return out

    # -- changes ------------------------------------------------------------------------------------

    def archive(self, name: str) -> list[Task]:
        """Take a finished tree out of the live set (saved to tasks/archive/ with the transaction)."""
        members = [self.get(name), *self.descendants(name)]
        for task in members:
            del self.tasks[task.name]
            self.changed.pop(task.name, None)
        self.archived += members
        self._children = None
        return members

    def archive_finished(self, *, older_than_s: float) -> list[Task]:
        """Archive every finished tree unchanged for `older_than_s`: the live set stays what is live, so
        every claim stays cheap however long the tree has been in use (taskwarrior keeps its completed
        tasks apart for the same reason)."""
        done: list[Task] = []
        for root in self.finished_trees(unchanged_since=self.clock.time() - older_than_s):
            done += self.archive(root.name)
        return done

    def _touch(self, task: Task, what: str, reason: str | None, *, by: str | None = None) -> None:
        now = self.clock.time()
        task.updated_ts = now
        entry = {"ts": utc_iso(now), "what": what}
        if reason:
            entry["reason"] = reason[:300]
        if by:
            entry["by"] = by
        task.history = [*task.history, entry][-HISTORY_KEEP:]
        self.changed[task.name] = task
        self._children = None

    def add(self, task: Task, *, by: str | None = None) -> Task:
        validate_id(task.name, "task")
        if task.name in self.tasks:
            raise TaskExists(task.name, self.tasks[task.name].exec_state)
        if task.type not in TYPES:
            raise TaskError(f"--type must be one of {', '.join(TYPES)}, not {task.type!r}")
        if task.priority not in PRIORITIES:
            raise TaskError(f"--priority must be one of {', '.join(PRIORITIES)}, not {task.priority!r}")
        if task.run and active_redactor().obj(task.run) != task.run:
            # Saved, it would be masked (no secret reaches a file) and the task would run with *** instead.
            raise TaskError(
                f"the command of task {task.name!r} holds a secret (a key, token or password); keys come only "
                "from the environment: write it as --shell 'cmd --token \"$MY_TOKEN\"' so the shell reads it "
                "when the task runs"
            )
        now = self.clock.time()
        task.created_ts = task.updated_ts = now
        task.exec_state = NEW
        self._place(task, task.parent)
        self.tasks[task.name] = task
        self._touch(task, f"created ({task.type}, {task.priority})", None, by=by)
        return task

    def _place(self, task: Task, parent_name: str | None) -> None:
        if parent_name is None:
            task.parent, task.root, task.level = None, task.name, 1
            return
        validate_id(parent_name, "task")
        if parent_name == task.name:
            raise BadParent(f"task {task.name!r} cannot be its own parent")
        if parent_name not in self.tasks:
            raise BadParent(f"parent {parent_name!r} does not exist; `tasks.py list` shows the tasks")
        parent = self.tasks[parent_name]
        if parent.exec_state == VOID:
            raise BadParent(f"parent {parent_name!r} is VOID; a void task takes no new children")
        if any(a.name == task.name for a in self.ancestors(parent_name)):
            raise BadParent(
                f"task {task.name!r} cannot go under {parent_name!r}: {parent_name!r} is its descendant, "
                "so the task would become its own ancestor"
            )
        task.parent, task.root, task.level = parent.name, parent.root or parent.name, parent.level + 1

    def reparent(self, name: str, parent_name: str | None, *, by: str | None = None) -> Task:
        """Move a task (and its subtree) under another parent, or to the top with None."""
        task = self.get(name)
        before = task.parent
        self._place(task, parent_name)
        self._touch(task, f"moved from {before or '(top)'} to {parent_name or '(top)'}", None, by=by)
        for child in self.descendants(name):  # parents come before their children in this list
            child.root, child.level = task.root, self.tasks[child.parent or name].level + 1
            self.changed[child.name] = child
        return task

    def transition(self, name: str, wanted: str, reason: str | None = None, *, by: str | None = None) -> Task:
        """Move a task to another exec state, if the table allows it; refuse with a clear message if not."""
        task = self.get(name)
        if wanted not in EXEC_STATES:
            raise TaskError(f"unknown exec state {wanted!r}; one of {', '.join(EXEC_STATES)}")
        current = task.exec_state
        if wanted not in TRANSITIONS[current]:
            raise IllegalTransition(name, current, wanted)
        now = self.clock.time()
        task.exec_state = wanted
        if current == REQUIRES_MANUAL and wanted in (ERROR_FIX_PENDING, NORMAL_CRASH):
            # A person handed it back: a fresh failure budget, or the next failure would hand it back again.
            task.retry_count = 0
            task.requeued = True
        if wanted == PROCESSING:
            task.started_ts = task.heartbeat_ts = task.activity_ts = now
            task.last_executed_ts = now
            task.ended_ts = None
        elif current == PROCESSING:
            task.ended_ts = now
            task.runner = None
        if wanted in (END, VOID):
            task.runner = None
        self._touch(task, f"{current} -> {wanted}", reason, by=by)
        return task

    def void(self, name: str, reason: str | None = None, *, by: str | None = None) -> list[Task]:
        """Void a task and every unfinished task under it (their parent no longer wants them done)."""
        task = self.transition(name, VOID, reason, by=by)
        voided = [task]
        for child in self.descendants(name):
            if child.exec_state not in (END, VOID):
                voided.append(self.transition(child.name, VOID, f"parent {name} voided", by=by))
        return voided

    def update(self, name: str, *, by: str | None = None, **fields: Any) -> Task:
        task = self.get(name)
        for key, value in fields.items():
            if key not in {f.name for f in dataclasses.fields(Task)}:
                raise TaskError(f"unknown task field {key!r}")
            setattr(task, key, value)
        self._touch(task, "updated " + ", ".join(sorted(fields)), None, by=by)
        return task

    def quiet_update(self, name: str, **fields: Any) -> Task:
        """A heartbeat: saved, but not worth a history entry."""
        task = self.get(name)
        for key, value in fields.items():
            setattr(task, key, value)
        self.changed[name] = task
        return task

    def unique_name(self, base: str) -> str:
        """`base` if free, else `base-2`, `base-3`, ...; always a valid id (cut to fit 128 characters)."""
        base = safe_name(base)
        if base not in self.tasks:
            return base
        n = 2
        while True:
            suffix = f"-{n}"
            candidate = base[: 128 - len(suffix)] + suffix
            if candidate not in self.tasks:
                return candidate
            n += 1


def safe_name(text: str) -> str:
    """Make any text a valid task id: unsafe characters become `_`, cut to 128."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "task"
    return cleaned[:128]


# -- the store -----------------------------------------------------------------------------------------


def runner_identity() -> dict[str, Any]:
    """This process as a task's runner: pid, start time and host."""
    me = identify(os.getpid())
    return {
        "pid": os.getpid(),
        "create_time": me.create_time if me else None,
        "host": socket.gethostname(),
    }


class TaskStore:
    """The task files of one state root."""

    def __init__(self, state: StateRoot | None = None, config: Config | None = None, clock: Clock = SYSTEM_CLOCK):
        self.state = (state or StateRoot.from_env()).ensure()
        self.config = config or get_config()
        self.clock = clock
        self.folder = self.state.sub("tasks")
        self.problems: list[str] = []  # unreadable task files met while loading (each was moved aside)

    def path(self, name: str) -> Path:
        return self.folder / f"{validate_id(name, 'task')}.json"

    def log_path(self, name: str) -> Path:
        return self.folder / f"{validate_id(name, 'task')}.log"

    @property
    def archive_folder(self) -> Path:
        return self.folder / "archive"

    def archived(self, name: str) -> list[Path]:
        """The archived records of tasks once named `name`, oldest first."""
        validate_id(name, "task")
        return sorted(self.archive_folder.glob(f"{name}.*.json"), key=lambda p: p.name)

    def _load(self) -> TaskTree:
        tasks: dict[str, Task] = {}
        try:
            names = sorted(e.name for e in os.scandir(self.folder) if e.name.endswith(".json") and e.name[0] != ".")
        except FileNotFoundError:
            names = []
        for file_name in names:
            path = self.folder / file_name
            try:
                data = _read_record(path)
                if data is None:
                    continue
                task = Task.from_json(data, path)
            except CorruptStateError as exc:
                self.problems.append(str(exc))
                continue
            except (StateError, TypeError) as exc:
                # Parseable but wrong: left in place (a person may want to fix it by hand), reported each time.
                self.problems.append(str(exc))
                continue
            tasks[task.name] = task
        return TaskTree(tasks, self.clock)

    def snapshot(self) -> TaskTree:
        """Every task as it is now, without the lock: for reading only (each file is replaced atomically)."""
        return self._load()

    def get(self, name: str) -> Task:
        validate_id(name, "task")
        data = read_json(self.path(name))
        if data is None:
            raise UnknownTask(name, (p.stem for p in self.folder.glob("*.json")))
        return Task.from_json(data, self.path(name))

    @contextlib.contextmanager
    def transaction(self, *, timeout_s: float = 30.0) -> Iterator[TaskTree]:
        """Hold the tree's lock, yield a fresh snapshot, save what changed if the block succeeds."""
        try:
            with file_lock(self.state.lock_file("tasks", "tree"), timeout=timeout_s, what="the task tree"):
                tree = self._load()
                yield tree
                self._save(tree)
        except LockBusy as exc:
            exc.args = (f"the task tree stayed locked for {timeout_s:g}s; try again later",)
            raise

    def _save(self, tree: TaskTree, *, durable: bool = True) -> None:
        # Children before parents, so a crash part-way never leaves a parent pointing at a missing child.
        for task in sorted(tree.changed.values(), key=lambda t: -t.level):
            write_json(self.path(task.name), task.to_json(), durable=durable)
        tree.changed.clear()
        if tree.archived:
            self._move_to_archive(tree.archived)
            tree.archived = []

    def _move_to_archive(self, tasks: list[Task]) -> None:
        """Each record (and its log) to archive/<name>.<ended>.json: the name is free for a new task."""
        folder = ensure_dir(self.archive_folder)
        for task in sorted(tasks, key=lambda t: -t.level):
            stem = f"{task.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(task.updated_ts))}"
            n = 1
            while (folder / f"{stem}.json").exists():
                n += 1
                stem = f"{task.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(task.updated_ts))}-{n}"
            for suffix in (".json", ".log"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.folder / f"{task.name}{suffix}", folder / f"{stem}{suffix}")
        fsync_dir(folder)
        fsync_dir(self.folder)

    def touch_running(self, name: str, runner: dict[str, Any], **fields: Any) -> bool:
        """A heartbeat from the task's runner: update one record, without fsync. False when the task is no
        longer this runner's (voided, taken over as stuck): the runner should then stop what it runs."""
        with file_lock(self.state.lock_file("tasks", "tree"), timeout=30.0, what="the task tree"):
            try:
                task = self.get(name)
            except (UnknownTask, StateError):
                return False
            if task.exec_state != PROCESSING or not same_runner(task.runner, runner):
                return False
            for key, value in fields.items():
                setattr(task, key, value)
            write_json(self.path(name), task.to_json(), durable=False)
            return True


def _read_record(path: Path) -> dict[str, Any] | None:
    """The common case fast (one read, one parse); anything odd goes through read_json, which knows how
    to tell a file being replaced from a corrupt one and moves only a corrupt one aside."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return read_json(path)
    return data if isinstance(data, dict) else read_json(path)


def same_runner(recorded: dict[str, Any] | None, runner: dict[str, Any]) -> bool:
    if not recorded:
        return False
    return bool(
        recorded.get("pid") == runner.get("pid")
        and recorded.get("host") == runner.get("host")
        and recorded.get("create_time") == runner.get("create_time")
    )
