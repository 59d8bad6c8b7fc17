"""The task tree's rules: parent and child tasks, checked exec states, the order they run in, and its store.

The fourth source document's task-state manager, on SQLite (`<state>/tasks.db`, see
`selfheal.state.taskdb`). A task has a type (fix, regular, creative), a priority (P0-P2), an exec state,
an optional parent, and optionally something to run (a command, a shell string, or a workflow plan).
Every change goes through `TaskStore.transaction()`: one write transaction over the database (so a claim
has exactly one winner and a parent check sees every child) that saves what the block changed only if
it ends without an error; a refused change rolls back and leaves the database as it was. The common
paths never read the whole tree: a claim is one UPDATE (its pick a subquery), a heartbeat one UPDATE, a
listing streams.

In fleet mode (store.url) the tree lives in the fleet's PostgreSQL instead (`state.pg.PgTaskDB`, the same
statements): claims skip rows another host is claiming (FOR UPDATE SKIP LOCKED), adding a child changes (and
locks) its parent's row, whose open_children the claim's lock rechecks, and a running task whose heartbeat
is older than `tasks.lease_s` (the database's clock) is taken back by the next claim on any host. With the
database down this host claims nothing (FleetTreeDown, exit 4).
"""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import errno
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..core.config import Config, get_config
from ..core.fleet import fleet_database, host_id, mark_down
from ..core.process import identify
from ..errors import FleetUnavailable, InvalidIdError, LockBusy, NotAttempted, StateError, UsageError
from ..state import layout
from ..state.redact import active as active_redactor
from ..state.root import StateRoot, ensure_dir, file_lock, fsync_dir, loads, read_bytes, validate_id
from ..state.runs import boot_id
from ..state.taskdb import TaskDB, TaskImportRefused, task_row
from ..state.taskrecord import FIELDS, RunSpec, Task, rank
from ..state.taskstates import (
    ACTIONABLE_STATES,
    CHILD_SETTLED,
    END,
    ERROR_FIX_PENDING,
    EXEC_STATES,
    HISTORY_KEEP,
    NEW,
    NORMAL_CRASH,
    OPEN_STATES,
    PRIORITIES,
    PROCESSING,
    REQUIRES_MANUAL,
    RUN_KINDS,
    SCHEMA,
    STATUS_OF,
    TEXT_FIELDS,
    TRANSITIONS,
    TYPES,
    VERBS,
    VOID,
)

__all__ = [
    "ACTIONABLE_STATES",
    "CHILD_SETTLED",
    "END",
    "ERROR_FIX_PENDING",
    "EXEC_STATES",
    "HISTORY_KEEP",
    "NEW",
    "NORMAL_CRASH",
    "OPEN_STATES",
    "PRIORITIES",
    "PROCESSING",
    "REQUIRES_MANUAL",
    "RUN_KINDS",
    "SCHEMA",
    "SIZE_CAPS",
    "STATUS_OF",
    "TEXT_FIELDS",
    "TRANSITIONS",
    "TYPES",
    "VERBS",
    "VOID",
    "BadParent",
    "FleetTreeDown",
    "IllegalTransition",
    "RunSpec",
    "Task",
    "TaskError",
    "TaskExists",
    "TaskStore",
    "TaskTooLarge",
    "TaskTree",
    "UnknownTask",
    "check_sizes",
    "operand",
    "rank",
    "runner_identity",
    "safe_name",
    "same_runner",
]

logger = logging.getLogger(__name__)
IMPORT_KEY = "json_import"  # meta: absent (not yet looked), "moving:<backup folder>", or "done"
ARCHIVE_KEY = "archive_checked_ts"  # meta: when run-next last looked for finished trees to archive
FLEET_IMPORT_KEY = "fleet_import"  # meta of tasks.db: the id of its import into the fleet's tree
ARCHIVE_EVERY_S = 3600.0  # run-next looks for finished trees at most this often (a claim stays one query)

# -- size caps -------------------------------------------------------------------------------------------
# What one field of a task may hold, in bytes of UTF-8 (as stored), when a person, an agent or a script writes
# it: every listing, tree, claim and health check carries these texts, so none may grow without bound. Each
# cap is far above what its field is for. A tree saved before the caps keeps its larger texts (they load,
# list and run); only a text being added or changed is measured.
TITLE_MAX_BYTES = 1024  # one line: GitHub's issue titles stop at 256 characters (at most 1 KiB of UTF-8)
TEXT_MAX_BYTES = 65536  # a paragraph or a few pages: GitHub's issue and comment bodies stop at 65,536 characters
# An argv (each argument and its NUL, as exec counts them) or a shell line: under the 128 KiB that Linux takes
# in one argument, so a command that was accepted can run; a crontab line stops at 1,000 characters.
COMMAND_MAX_BYTES = 65536
TARGET_MAX_BYTES = 128  # a circuit breaker's name, which names a state file: an id's 128 characters
EVIDENCE_MAX_BYTES = 4096  # file patterns, counted as a command's arguments: PATH_MAX for all of them
_LONG_TEXT = "a paragraph or a few pages; put more in a file and name it"
_CAPS: dict[str, tuple[int, str]] = {
    "display_name": (TITLE_MAX_BYTES, "a title is one line; the description holds the rest"),
    **{f: (TEXT_MAX_BYTES, _LONG_TEXT) for f in TEXT_FIELDS if f != "display_name"},
    "last_result": (TEXT_MAX_BYTES, _LONG_TEXT),
    "run": (COMMAND_MAX_BYTES, "each argument and its NUL, as exec counts them; put a longer command in a script"),
    "shell": (COMMAND_MAX_BYTES, "put a longer command in a script"),
    "target": (TARGET_MAX_BYTES, "it names a circuit breaker, and its state file"),
    "evidence": (EVIDENCE_MAX_BYTES, "each pattern and its NUL"),
}
SIZE_CAPS: dict[str, int] = {field: cap for field, (cap, _) in _CAPS.items()}


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
        # Voiding keeps the name (a void task is still in the tree): only archiving a finished tree frees it.
        super().__init__(
            f"task {name!r} already exists ({exec_state}); pick another name (a name is free again once its "
            "whole tree is END or VOID and archived: `tasks.py archive --older-than 0`)"
        )


class IllegalTransition(TaskError):
    def __init__(self, name: str, current: str, wanted: str) -> None:
        self.name, self.current, self.wanted = name, current, wanted
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing: it is final"
        super().__init__(f"task {name!r} is {current} and cannot become {wanted} (from {current}: {allowed})")


class BadParent(TaskError):
    """A parent that does not exist, is void, or would make the task its own ancestor."""


class TaskTooLarge(TaskError):
    """A text over its size cap (SIZE_CAPS): nothing was written (exit 2). `where` (a line of `add --from
    FILE`) prefixes the message."""

    def __init__(self, task: str, field: str, size: int, cap: int, *, where: str | None = None) -> None:
        self.task, self.field, self.size, self.cap, self.where = task, field, size, cap, where
        what = f"task {task!r}: {field}: {size} bytes, over the cap of {cap} bytes ({_CAPS[field][1]})"
        super().__init__(f"{where}: {what}; nothing was added" if where else f"{what}; nothing was written")


def check_sizes(task: str, fields: dict[str, Any]) -> None:
    """Refuse (TaskTooLarge) a text among `fields` (a task's fields by name) over its cap. What a task runs
    (`run`, a RunSpec or its mapping) is measured by its parts: the command (`run` or `shell`, the keys of
    `add --from`), `target` and `evidence`."""
    for field, value in fields.items():
        if field == "run" and value is not None:
            spec = value if isinstance(value, RunSpec) else RunSpec.from_json(value, f"task {task!r}")
            parts = {"run": spec.argv, "shell": spec.shell, "target": spec.target, "evidence": spec.evidence}
            for part, text in parts.items():
                _check_size(task, part, text)
        elif field in SIZE_CAPS:
            _check_size(task, field, value)


def _check_size(task: str, field: str, value: str | Iterable[str] | None) -> None:
    cap = SIZE_CAPS[field]
    if value is None:
        return
    if isinstance(value, str):
        if len(value) * 4 <= cap:  # no character takes more than 4 bytes: a short text is not encoded
            return
        size = len(value.encode("utf-8", "surrogatepass"))
    else:  # an argv or a list of patterns: each item and its NUL, as exec counts its arguments
        size = sum(len(v.encode("utf-8", "surrogatepass")) + 1 for v in value)
    if size > cap:
        raise TaskTooLarge(task, field, size, cap)


class FleetTreeDown(NotAttempted):
    """Fleet mode, and the fleet's database does not answer: this host claims nothing from the shared tree
    (exit 4, try later); runs already going finish and record their outcome once it is back."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(
            "the fleet's task tree is unreachable: this host claims no task from it until the database answers"
            " again; runs already going finish and record their outcome when it is back (`tasks.py fleet status`"
            f" shows it): {why}"
        )


# -- the tree ------------------------------------------------------------------------------------------


def history_entry(now: float, what: str, reason: str | None, by: str | None) -> dict[str, Any]:
    entry = {"ts": utc_iso(now), "what": what}
    if reason:
        entry["reason"] = reason[:300]
    if by:
        entry["by"] = by
    return entry


class _TaskView(collections.abc.Mapping[str, Task]):
    """`tree.tasks`: the tasks by name, read from the database as asked (iterating reads every name)."""

    def __init__(self, tree: TaskTree) -> None:
        self._tree = tree

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tree.get(name)
        except (UnknownTask, InvalidIdError):
            raise KeyError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tree

    def __iter__(self) -> Iterator[str]:
        self._tree.flush()
        return iter(self._tree.store.db.names())

    def __len__(self) -> int:
        return len(self._tree)


class TaskTree:
    """The task tree as one transaction (or, for a snapshot, one reader) sees it, with the questions the rules
    ask of it. Tasks are read as needed and kept (one object per task); inside a transaction, whatever was
    changed on them is written before the next query and at the end, so queries see the changes.

    Mutating methods only exist for use inside `TaskStore.transaction()`.
    """

    def __init__(self, store: TaskStore, *, writable: bool) -> None:
        self.store = store
        self.clock = store.clock
        self.writable = writable
        self.tasks: collections.abc.Mapping[str, Task] = _TaskView(self)
        self.archived: list[Task] = []
        self._loaded: dict[str, Task] = {}
        self._rows: dict[str, tuple[Any, ...] | None] = {}  # as last written (None: not in the database yet)
        self._log_moves: list[tuple[Path, Path]] = []

    @property
    def db(self) -> TaskDB:
        return self.store.db

    def _keep(self, task: Task) -> Task:
        held = self._loaded.get(task.name)
        if held is not None:
            return held
        self._loaded[task.name] = task
        self._rows[task.name] = task_row(task)
        return task

    def flush(self) -> None:
        """Write every task changed since it was read or last written (inside a transaction)."""
        if not self.writable:
            return
        for name, task in self._loaded.items():
            row = task_row(task)
            before = self._rows[name]
            if row == before:
                continue
            if _mask_texts(task):
                row = task_row(task)
            if before is None:
                self.db.insert_row(row)
            else:
                self.db.update_row(row)
            self._rows[name] = row

    def release(self) -> None:
        """Write what changed and forget the tasks read so far (a bulk add keeps its memory flat)."""
        self.flush()
        self._loaded.clear()
        self._rows.clear()

    # -- questions ----------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self._loaded:
            return True
        try:
            validate_id(name, "task")
        except InvalidIdError:
            return False
        return self.db.exists(name)

    def __len__(self) -> int:
        self.flush()
        return self.db.count()

    def get(self, name: str) -> Task:
        validate_id(name, "task")
        held = self._loaded.get(name)
        if held is not None:
            return held
        task = self.db.get(name)
        if task is None:
            self.flush()
            raise UnknownTask(name, self.db.names())
        return self._keep(task)

    def children(self, name: str) -> list[Task]:
        self.flush()
        return [self._keep(t) for t in self.db.children(name)]

    def descendants(self, name: str) -> list[Task]:
        out: list[Task] = []
        stack = [name]
        seen = {name}
        while stack:
            for child in self.children(stack.pop()):
                if child.name not in seen:
                    seen.add(child.name)
                    out.append(child)
                    stack.append(child.name)
        return out

    def ancestors(self, name: str) -> list[Task]:
        out: list[Task] = []
        seen = {name}
        parent = self.get(name).parent if name in self else None
        while parent is not None and parent in self and parent not in seen:
            seen.add(parent)
            task = self.get(parent)
            out.append(task)
            parent = task.parent
        return out

    def roots(self) -> list[Task]:
        self.flush()
        return [self._keep(t) for t in self.db.roots()]

    def waiting_on(self, name: str) -> list[Task]:
        """The children that keep a parent from running (not END, VOID or REQUIRES_MANUAL)."""
        self.flush()
        return [self._keep(t) for t in self.db.waiting_on(name)]

    def is_actionable(self, task: Task) -> bool:
        return task.exec_state in ACTIONABLE_STATES and not self.waiting_on(task.name)

    def actionable(self, *, types: Iterable[str] | None = None, limit: int | None = None) -> list[Task]:
        """Tasks that can run now, in the order they should (one query: `taskdb.ORDER_BY` and the gate)."""
        self.flush()
        wanted = sorted(set(types)) if types is not None else None
        return [self._keep(t) for t in self.db.actionable(wanted, limit=limit)]

    def ordered(self) -> list[Task]:
        self.flush()
        return [self._keep(t) for t in self.db.iter_ordered()]

    def finished_trees(self, *, unchanged_since: float) -> list[Task]:
        """Top-level tasks whose whole tree is END or VOID and unchanged since `unchanged_since`."""
        self.flush()
        return sorted((self.get(n) for n in self.db.finished_roots(unchanged_since)), key=rank)

    # -- changes ------------------------------------------------------------------------------------

    def archive(self, name: str) -> list[Task]:
        """Take a finished tree out of the live table into tasks_archive; its logs go to tasks/archive/."""
        members = [self.get(name), *self.descendants(name)]
        self.flush()
        now = self.clock.time()
        folder = self.store.archive_folder
        for task in sorted(members, key=lambda t: -t.level):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(task.updated_ts))
            log_file: str | None = None
            source = self.store.log_path(task.name)
            if source.exists():
                stem, n = f"{task.name}.{stamp}", 1
                taken = {t for _, t in self._log_moves}
                while (folder / f"{stem}.log").exists() or folder / f"{stem}.log" in taken:
                    n += 1
                    stem = f"{task.name}.{stamp}-{n}"
                self._log_moves.append((source, folder / f"{stem}.log"))
                log_file = str(folder / f"{stem}.log")
            self.db.archive(task, archived_ts=now, log_file=log_file)
        self.db.delete([t.name for t in sorted(members, key=lambda t: -t.level)])
        for task in members:
            self._loaded.pop(task.name, None)
            self._rows.pop(task.name, None)
        self.archived += members
        return members

    def archive_finished(self, *, older_than_s: float) -> list[Task]:
        """Archive every finished tree unchanged for `older_than_s`: the live set stays what is live. The marks
        of tasks set aside that no live task needs go in the same pass (TaskDB.clear_stale_deferred)."""
        done: list[Task] = []
        for root in self.finished_trees(unchanged_since=self.clock.time() - older_than_s):
            done += self.archive(root.name)
        self.db.clear_stale_deferred()
        return done

    def _touch(self, task: Task, what: str, reason: str | None, *, by: str | None = None) -> None:
        now = self.clock.time()
        task.updated_ts = now
        task.history = [*task.history, history_entry(now, what, reason, by)][-HISTORY_KEEP:]

    def add(self, task: Task, *, by: str | None = None) -> Task:
        validate_id(task.name, "task")
        check_sizes(task.name, {f: getattr(task, f) for f in (*TEXT_FIELDS, "last_result", "run")})
        if task.name in self:
            raise TaskExists(task.name, self.get(task.name).exec_state)
        if task.type not in TYPES:
            raise TaskError(f"--type must be one of {', '.join(TYPES)}, not {task.type!r}")
        if task.priority not in PRIORITIES:
            raise TaskError(f"--priority must be one of {', '.join(PRIORITIES)}, not {task.priority!r}")
        spec = task.run.to_json() if task.run is not None else None
        if spec and active_redactor().obj(spec) != spec:
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
        self._loaded[task.name] = task
        self._rows[task.name] = None
        self._touch(task, f"created ({task.type}, {task.priority})", None, by=by)
        return task

    def _place(self, task: Task, parent_name: str | None, *, moving: bool = False) -> None:
        if parent_name is None:
            task.parent, task.root, task.level = None, task.name, 1
            return
        validate_id(parent_name, "task")
        if parent_name == task.name:
            raise BadParent(f"task {task.name!r} cannot be its own parent")
        if parent_name not in self:
            raise BadParent(f"parent {parent_name!r} does not exist; `tasks.py list` shows the tasks")
        # Shared tree: the parent's row stays locked until this transaction ends, so a claimer either sees
        # the new child (and leaves the parent) or skips the parent while it is locked.
        self.db.lock_row(parent_name)
        parent = self.get(parent_name)
        if parent.exec_state == VOID:
            raise BadParent(f"parent {parent_name!r} is VOID; a void task takes no new children")
        if moving and any(a.name == task.name for a in self.ancestors(parent_name)):  # a new task has no subtree
            raise BadParent(
                f"task {task.name!r} cannot go under {parent_name!r}: {parent_name!r} is its descendant, "
                "so the task would become its own ancestor"
            )
        task.parent, task.root, task.level = parent.name, parent.root or parent.name, parent.level + 1

    def reparent(self, name: str, parent_name: str | None, *, by: str | None = None) -> Task:
        """Move a task (and its subtree) under another parent, or to the top with None."""
        task = self.get(name)
        before = task.parent
        self._place(task, parent_name, moving=True)
        self._touch(task, f"moved from {before or '(top)'} to {parent_name or '(top)'}", None, by=by)
        for child in self.descendants(name):  # parents come before their children in this list
            child.root, child.level = task.root, self.get(child.parent or name).level + 1
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
            # The lease's times: on a shared database its clock's, as the claim stamps them (one query).
            stamp = self.db.clock_now(now)
            task.started_ts = task.heartbeat_ts = task.activity_ts = stamp
            task.last_executed_ts = stamp
            task.ended_ts = None
        elif current == PROCESSING:
            task.ended_ts = now
            task.runner = None
            task.requeued = False  # the run a person handed back has ended: the next one is an ordinary one
        if wanted in (END, VOID):
            task.runner = None
            # It never runs again: no longer set aside (TaskDB.deferred), in this transaction, or the mark would
            # outlive it and pass over a task added later under its name.
            self.db.set_deferred(name, False)
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
        check_sizes(name, fields)  # only what changes: a text saved before the caps stays as it is
        for key, value in fields.items():
            if key not in FIELDS:
                raise TaskError(f"unknown task field {key!r}")
            setattr(task, key, value)
        self._touch(task, "updated " + ", ".join(sorted(fields)), None, by=by)
        return task

    def quiet_update(self, name: str, **fields: Any) -> Task:
        """A heartbeat: saved, but not worth a history entry."""
        task = self.get(name)
        for key, value in fields.items():
            setattr(task, key, value)
        return task

    def log_run(self, task: Task, *, status: str, level: str, ended: float, message: str, content: str | None) -> None:
        """A row of the document's main_logs for a run of `task` that just ended (saved with the transaction)."""
        self.store.db.log_run(
            task=task.name,
            status=status,
            level=level,
            started=task.started_ts,
            ended=ended,
            message=message,
            content=content,
        )

    def unique_name(self, base: str) -> str:
        """`base` if free, else `base-2`, `base-3`, ...; always a valid id (cut to fit 128 characters)."""
        base = safe_name(base)
        if base not in self:
            return base
        n = 2
        while True:
            suffix = f"-{n}"
            candidate = base[: 128 - len(suffix)] + suffix
            if candidate not in self:
                return candidate
            n += 1


# What a person, an agent or a command writes into a task as text, and the reasons in its history: masked as
# the task is written (DESIGN: secrets are redacted before anything is written; a key pasted into `set
# --analysis` or `mark --reason` stayed in tasks.db as typed). A task's command is refused instead (`add`):
# masked, it would run with *** in it.
_MASKED_FIELDS = (*TEXT_FIELDS, "last_result", "last_error")


def _mask_texts(task: Task) -> bool:
    """Mask the secrets in `task`'s texts and history reasons in place; True if anything changed."""
    redactor = active_redactor()
    changed = False
    for name in _MASKED_FIELDS:
        value = getattr(task, name)
        if isinstance(value, str) and (masked := redactor.text(value)) != value:
            setattr(task, name, masked)
            changed = True
    history = task.history or []
    for i, entry in enumerate(history):
        reason = entry.get("reason") if isinstance(entry, dict) else None
        if isinstance(reason, str) and (masked := redactor.text(reason)) != reason:
            history[i] = {**entry, "reason": masked}
            changed = True
    return changed


def operand(name: str) -> str:
    """`name` as it is typed at the end of a tasks.py command line (`tasks.py mark {operand(name)} end`):
    after `--` when it starts with a dash (a valid id may: `-x`), which argparse would take for an option."""
    return f"-- {name}" if name.startswith("-") else name


def safe_name(text: str) -> str:
    """Make any text a valid task id: unsafe characters become `_`, cut to 128."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "task"
    return cleaned[:128]


# -- the store -----------------------------------------------------------------------------------------


def runner_identity(host: str | None = None) -> dict[str, Any]:
    """This process as a task's runner: pid, start time, host (in fleet mode, the host's fleet id) and the
    machine's boot (state.runs.boot_id: two machines cloned from one image share a host id, not a boot)."""
    me = identify(os.getpid())
    found: dict[str, Any] = {
        "pid": os.getpid(),
        "create_time": me.create_time if me else None,
        "host": host or socket.gethostname(),
    }
    if me is not None and me.start_ticks is not None:
        found["start_ticks"] = me.start_ticks
    boot = boot_id()
    if boot is not None:
        found["boot"] = boot
    return found


class TaskStore:
    """The task tree of one state root: `<state>/tasks.db`, and the tasks' output logs under `tasks/`.

    The database is opened on first use; a tree of `tasks/<name>.json` files (written by versions before
    the database) is imported then, once, in one transaction."""

    def __init__(self, state: StateRoot | None = None, config: Config | None = None, clock: Clock = SYSTEM_CLOCK):
        self.state = (state or StateRoot.from_env()).ensure()
        self.config = config or get_config()
        self.clock = clock
        self.folder = self.state.sub(layout.TASKS)
        self.db_path = self.state.task_db
        self.problems: list[str] = []  # kept for callers that report them (nothing adds to it on SQLite)
        self.notices: list[str] = []  # things a person should hear once (the import of a JSON tree)
        self.fleet = self.config.store.url is not None
        # The runner's host: in fleet mode this host's fleet id (SELFHEAL_HOST_ID), else the hostname.
        self.host = host_id(self.config.store) if self.fleet else socket.gethostname()
        self.taken_back: list[tuple[Task, str]] = []  # the last claim's take-backs: (task, the host it had)
        self._db: TaskDB | None = None

    def _fleet_db(self) -> TaskDB:
        store = self.config.store
        database = fleet_database(store, clock=self.clock)
        if database is None:
            from ..core.fleet import down_reason  # noqa: PLC0415

            raise FleetTreeDown(down_reason(store, clock=self.clock) or "fleet database down")
        from ..state.pg import PgTaskDB  # noqa: PLC0415 - psycopg only in fleet mode

        try:
            db = PgTaskDB(database, busy_timeout_s=self.config.tasks.busy_timeout_s).open()
            self._import_into_fleet(db)
        except FleetUnavailable as exc:
            mark_down(store, exc, clock=self.clock)
            raise FleetTreeDown(str(exc)) from None
        return db

    def _import_into_fleet(self, fleet: TaskDB) -> None:
        """The task tree this host kept before fleet mode (its tasks.db, or tasks/*.json of an older version,
        first imported into tasks.db as a single host would) goes into the fleet's tree once, on first fleet
        use (`tasks.py fleet init` included): its tasks, archive and run log in one transaction, then tasks.db
        moves to tasks/fleet-import-<ts>/ (the JSON files stay in tasks/json-backup-<ts>/), said once. A name
        the fleet's tree already has is refused (TaskImportRefused, exit 2), naming it, and nothing is
        imported. A crash after the commit is finished by the next start (the import's id is in both)."""
        if not self.db_path.exists() and not _json_files(self.folder) and not _json_files(self.archive_folder):
            return  # the common case: one stat and two folder scans
        wait = self.config.tasks.busy_timeout_s
        what = "the import of this host's task tree into the fleet's"
        with file_lock(self.state.lock_file("tasks", "fleet-import"), timeout=wait, what=what):
            if not self.db_path.exists() and not _json_files(self.folder) and not _json_files(self.archive_folder):
                return  # another process of this host did it meanwhile
            local = TaskDB(self.db_path, busy_timeout_s=wait).open()
            try:
                self._import_files(local)  # an older JSON tree into tasks.db first, kept as a single host keeps it
                import_id = local.meta(FLEET_IMPORT_KEY)
                if import_id is None:
                    import_id = f"{self.host}-{os.urandom(8).hex()}"
                    with local.write():
                        local.set_meta(FLEET_IMPORT_KEY, import_id)
                done = fleet.meta(f"import:{import_id}")
                if done is None:
                    done = self._copy_tree(local, fleet, import_id)
            finally:
                local.close()
            backup = self.folder / f"fleet-import-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(self.clock.time()))}"
            ensure_dir(backup)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.db_path}{suffix}", backup / f"{self.db_path.name}{suffix}")
            fsync_dir(backup)
            fsync_dir(self.db_path.parent)
        counts = json.loads(done)
        message = (
            f"imported this host's task tree ({counts['tasks']} task(s), {counts['archived']} archived) from"
            f" {self.db_path} into the fleet's task tree; the file is kept in {backup}"
        )
        logger.info("%s", message)
        self.notices.append(message)

    def _copy_tree(self, local: TaskDB, fleet: TaskDB, import_id: str) -> str:
        """Copy tasks, archive and run log from `local` to `fleet` in one transaction; refuse a name clash."""
        tasks = list(local.iter_ordered())
        archived = local.execute(
            "SELECT task_name, root_task_id, archived_ts, log_file, record FROM tasks_archive ORDER BY id"
        ).fetchall()
        log_columns = (
            "log_type, log_level, task_name, run_start_time, run_end_time, duration_ms, run_status, run_message,"
            " run_content, created_at"
        )
        logs = local.execute(f"SELECT {log_columns} FROM main_logs ORDER BY id").fetchall()  # noqa: S608
        names = [t.name for t in tasks]
        counts = json.dumps({"host": self.host, "tasks": len(tasks), "archived": len(archived), "runs": len(logs)})
        with fleet.write():
            clash: list[str] = []
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                found = fleet.execute(f"SELECT task_name FROM tasks WHERE task_name IN ({marks})", chunk).fetchall()  # noqa: S608
                clash += sorted(r[0] for r in found)
            if clash:
                more = f" and {len(clash) - 5} more" if len(clash) > 5 else ""
                shown = ", ".join(repr(n) for n in clash[:5]) + more
                raise TaskImportRefused(
                    f"the fleet's task tree already has task(s) named {shown}: this host's task tree ({self.db_path},"
                    f" {len(tasks)} task(s)) was not imported into it and nothing changed in either; rename or void"
                    " and archive those tasks in one of the two trees, then run again"
                )
            fleet.insert_many(tasks)
            for row in archived:
                fleet.execute(
                    "INSERT INTO tasks_archive (task_name, root_task_id, archived_ts, log_file, record)"
                    " VALUES (?, ?, ?, ?, ?)",
                    row,
                )
            for row in logs:
                fleet.execute(
                    f"INSERT INTO main_logs ({log_columns}) VALUES ({', '.join('?' for _ in row)})",  # noqa: S608
                    row,
                )
            fleet.set_meta(f"import:{import_id}", counts)
        return counts

    @property
    def db(self) -> TaskDB:
        if self._db is None and self.fleet:
            self._db = self._fleet_db()
        if self._db is None:
            self._db = self._open_local(TaskDB.open)
        return self._db

    def open_to_read(self) -> None:
        """Open the tree for a command that only reads it (list, tree, show, actionable, log, a dry run, the
        health check). On a full disk or a read-only folder the state layer reads it without writing
        (TaskDB.open_to_read), and `notices` says so in one line: a person looking into it still sees the
        tree. A migration or an import of an older JSON tree, which must write, fails as before."""
        if self._db is None and not self.fleet:
            self._db = self._open_local(TaskDB.open_to_read)
            unwritable = self._db.unwritable
            if unwritable is not None:
                until = "there is space again" if unwritable.errno == errno.ENOSPC else "it can be written again"
                self.notices.append(
                    f"warning: {self.db_path}: {unwritable.reason}; the task tree was read without writing anything,"
                    f" and commands that change it fail until {until}"
                )
        self.db  # noqa: B018

    def _open_local(self, how: Callable[[TaskDB], TaskDB]) -> TaskDB:
        """tasks.db opened by `how` (TaskDB.open or TaskDB.open_to_read), an older JSON tree imported into it."""
        db = how(TaskDB(self.db_path, busy_timeout_s=self.config.tasks.busy_timeout_s))
        try:
            self._import_files(db)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def log_path(self, name: str) -> Path:
        return self.state.task_log(name)

    @property
    def archive_folder(self) -> Path:
        return self.state.task_archive

    def archived(self, name: str) -> list[dict[str, Any]]:
        """The archived records of tasks once named `name`, oldest first (with `archived_ts` and `log_file`)."""
        validate_id(name, "task")
        return self.db.archived(name)

    # -- reading ----------------------------------------------------------------------------------------

    def snapshot(self) -> TaskTree:
        """The tree for reading only: each question is answered from the database as it is when asked."""
        return TaskTree(self, writable=False)

    def get(self, name: str) -> Task:
        validate_id(name, "task")
        task = self.db.get(name)
        if task is None:
            raise UnknownTask(name, self.db.names())
        return task

    def record(self, name: str) -> dict[str, Any]:
        """A task as `tasks.py show --json` shows it (status/task-record.schema.json)."""
        return self.get(name).to_json()

    def iter_tasks(self, *, exec_state: str | None = None, task_type: str | None = None) -> Iterator[Task]:
        """Every task in run order, streamed (memory stays flat at any size)."""
        return self.db.iter_ordered(exec_state=exec_state, task_type=task_type)

    def processing(self) -> list[Task]:
        return self.db.in_state(PROCESSING)

    # -- writing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, timeout_s: float | None = None) -> Iterator[TaskTree]:
        """One write transaction: yield the tree, save what the block changed if it succeeds, else roll back."""
        db = self.db
        wait = self.config.tasks.busy_timeout_s if timeout_s is None else timeout_s
        with db.lock:
            if timeout_s is not None:
                db.set_wait(wait)
            try:
                with db.write():
                    tree = TaskTree(self, writable=True)
                    yield tree
                    tree.flush()
            except LockBusy as exc:
                if not self.fleet:  # the fleet's store says which row and why itself (no tasks.db is involved)
                    exc.args = (f"the task tree ({self.db_path}) stayed locked for {wait:g}s; try again later",)
                raise
            finally:
                if timeout_s is not None:
                    db.set_wait(self.config.tasks.busy_timeout_s)
        self._move_logs(tree._log_moves)

    def _move_logs(self, moves: list[tuple[Path, Path]]) -> None:
        if not moves:
            return
        ensure_dir(self.archive_folder)
        for source, target in moves:
            with contextlib.suppress(FileNotFoundError):
                os.replace(source, target)
        fsync_dir(self.archive_folder)
        fsync_dir(self.folder)

    def claim(
        self, types: Iterable[str] | None, runner: dict[str, Any], tag: str, *, avoid: Iterable[str] = ()
    ) -> tuple[Task, bool] | None:
        """Claim the first runnable actionable task for `runner`: one statement in autocommit (taskdb.claim_sql:
        the document's order and parent gate, the UPDATE, the history entry, RETURNING).
        Returns the task as claimed and whether a person had handed it back (its next run starts fresh), or
        None if nothing can run. The run is named `<task name[:60]>-<tag>`.

        In fleet mode the same statement says whether any running task's lease ran out (its runner's heartbeat
        is older than `tasks.lease_s` by the database's clock); if one did, they are taken back in a
        transaction of their own (`self.taken_back` lists them), and a claim that found nothing else tries
        once more. With the database down it raises FleetTreeDown (exit 4): this host claims nothing.

        A task whose last run was not attempted (its target's breaker open, its lock busy; `TaskDB.deferred`)
        is taken only when nothing else can run, so it cannot hold up the queue pass after pass; tasks named
        in `avoid` (not attempted in this process already) are not taken at all."""
        try:
            self.taken_back = []
            skip = sorted(set(avoid))
            # The tasks set aside are passed over by the claim statement itself (no round trip of its own); only
            # a claim that found nothing else asks again, taking them too.
            found = self._claim(types, runner, tag, skip=skip, pass_deferred=True)
            return found if found is not None else self._claim(types, runner, tag, skip=skip, pass_deferred=False)
        except FleetUnavailable as exc:
            mark_down(self.config.store, exc, clock=self.clock)
            raise FleetTreeDown(str(exc)) from None

    def _claim(
        self, types: Iterable[str] | None, runner: dict[str, Any], tag: str, *, skip: list[str], pass_deferred: bool
    ) -> tuple[Task, bool] | None:
        wanted = sorted(set(types)) if types is not None else None
        db = self.db
        now = self.clock.time()
        lease = self.config.tasks.lease_s if self.fleet else None
        taken = len(self.taken_back)
        entry = {"ts": utc_iso(now), "reason": "claimed by run-next", "by": f"run-next pid {runner['pid']}"}
        # (history_entry's keys; `what` the statement writes: "<the state it had> -> PROCESSING")
        for _ in range(2):
            with db.lock:
                expired, task = db.claim(
                    wanted,
                    runner=runner,
                    entry=entry,
                    tag=tag,
                    now=now,
                    lease_s=lease,
                    skip=skip,
                    pass_deferred=pass_deferred,
                )
            if expired:
                with db.lock, db.write():
                    self._take_back(db, db.expired(lease or 0.0, now), now)
            if task is not None or len(self.taken_back) == taken:
                break
            lease = None  # taken back: claim again, now that they can run
        return None if task is None else (task, task.requeued)

    def _take_back(self, db: TaskDB, expired: list[Task], now: float) -> None:
        """Running tasks whose lease ran out become NORMAL_CRASH (not counted as a failure): the pick that
        follows, here or on another host, runs them again. Their old runner's late outcome is refused."""
        lease = self.config.tasks.lease_s
        for task in expired:
            had = str((task.runner or {}).get("host") or "?")
            db_now = db.clock_now(now)
            since = db_now - (task.heartbeat_ts or task.started_ts or db_now)
            reason = (
                f"lease expired, taken back from host {had} (run {task.run_id}, no heartbeat for {since:.0f}s,"
                f" lease {lease:g}s)"
            )
            task.history = [
                *task.history,
                history_entry(now, f"{PROCESSING} -> {NORMAL_CRASH}", reason, f"claim on host {self.host}"),
            ][-HISTORY_KEEP:]
            task.exec_state, task.runner = NORMAL_CRASH, None
            task.ended_ts = task.updated_ts = now
            task.last_result = reason
            db.update_row(task_row(task))
            db.log_run(
                task=task.name,
                status="taken_back",
                level="WARNING",
                started=task.started_ts,
                ended=db_now,
                message=reason,
                content=None,
            )
            self.taken_back.append((task, had))

    def archive_if_due(self, *, older_than_s: float) -> list[Task]:
        """run-next's archiving: finished trees unchanged for `older_than_s`, looked for at most hourly."""
        now = self.clock.time()
        last = self.db.meta(ARCHIVE_KEY)
        if last is not None and 0 <= now - float(last) < min(ARCHIVE_EVERY_S, older_than_s):
            return []
        with self.transaction() as tree:
            moved = tree.archive_finished(older_than_s=older_than_s)
            self.db.set_meta(ARCHIVE_KEY, repr(now))
        return moved

    def beat(self, name: str) -> float:
        """`tasks.py beat`: an agent working on a task it marked started says it still is. Its heartbeat and
        activity become now, by the database's clock in fleet mode (as a claim's and a runner's heartbeats,
        so the lease means the same on every host). Returns the time stamped."""
        with self.transaction() as tree:
            task = tree.get(name)
            if task.exec_state != PROCESSING:
                raise TaskError(
                    f"task {name!r} is {task.exec_state}, not PROCESSING; `tasks.py mark {operand(name)} start` first"
                )
            stamp = self.db.clock_now(self.clock.time())
            tree.quiet_update(name, heartbeat_ts=stamp, activity_ts=stamp)
        return stamp

    def touch_running(self, name: str, runner: dict[str, Any], **fields: Any) -> bool:
        """A heartbeat from the task's runner: one UPDATE. False when the task is no longer this runner's
        (voided, taken over as stuck): the runner should then stop what it runs."""
        now = self.clock.time()
        return self.db.touch_running(
            name,
            runner,
            heartbeat_ts=float(fields.get("heartbeat_ts", now)),
            activity_ts=float(fields.get("activity_ts", now)),
        )

    def add_many(self, items: Iterable[tuple[str, Task]], *, by: str | None = None) -> int:
        """Add tasks all or nothing, in one transaction; `items` pairs each task with where it came from
        (`FILE line N`), which a refusal names. Returns how many were added."""
        count = 0
        with self.transaction() as tree:
            for where, task in items:
                try:
                    tree.add(task, by=by)
                except TaskTooLarge as exc:
                    raise TaskTooLarge(exc.task, exc.field, exc.size, exc.cap, where=where) from None
                except (TaskError, InvalidIdError) as exc:
                    raise TaskError(f"{where}: {exc}; nothing was added") from None
                count += 1
                if count % 1000 == 0:
                    tree.release()
        return count

    # -- the JSON tree of older versions ------------------------------------------------------------------

    def _import_files(self, db: TaskDB) -> None:
        """Import `tasks/*.json` (and `tasks/archive/*.json`) once: in one transaction, then the files move to
        `tasks/json-backup-<ts>/`. A crash before the commit leaves the files to import again; one after it,
        the moves for the next start to finish."""
        if db.meta(IMPORT_KEY) == "done":
            return
        if db.unwritable is not None:  # read without writing: an import (or recording that there is none) must write
            if _json_files(self.folder) or _json_files(self.archive_folder):
                raise db.unwritable
            return
        wait = self.config.tasks.busy_timeout_s
        with file_lock(self.state.lock_file("tasks", "import"), timeout=wait, what="the task tree's import"):
            status = db.meta(IMPORT_KEY)
            if status == "done":
                return
            if status is not None and status.startswith("moving:"):
                self._finish_import(db, self.folder / status.split(":", 1)[1])
                return
            files = _json_files(self.folder)
            archived = _json_files(self.archive_folder)
            if not files and not archived:
                with db.write():
                    db.set_meta(IMPORT_KEY, "done")
                return
            tasks = _read_tree(files, self.folder)
            old = [_read_archived(p, self.folder) for p in archived]
            backup = f"json-backup-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(self.clock.time()))}"
            with db.write():
                db.insert_many(tasks)
                now = self.clock.time()
                for path, data in old:
                    log = path.with_suffix(".log")
                    db.execute(
                        "INSERT INTO tasks_archive (task_name, root_task_id, archived_ts, log_file, record)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            data["name"],
                            data.get("root") or data["name"],
                            now,
                            str(log) if log.exists() else None,
                            json.dumps(data, sort_keys=True, default=str),
                        ),
                    )
                db.set_meta(IMPORT_KEY, f"moving:{backup}")
            self._finish_import(db, self.folder / backup, imported=len(tasks) + len(old))

    def _finish_import(self, db: TaskDB, backup: Path, imported: int | None = None) -> None:
        ensure_dir(backup)
        moved = 0
        for path in _json_files(self.folder):
            if db.exists(path.stem):
                os.replace(path, backup / path.name)
                moved += 1
        archived = _json_files(self.archive_folder)
        if archived:
            ensure_dir(backup / "archive")
            for path in archived:
                os.replace(path, backup / "archive" / path.name)
                moved += 1
        fsync_dir(backup)
        fsync_dir(self.folder)
        with db.write():
            db.set_meta(IMPORT_KEY, "done")
        count = imported if imported is not None else moved
        message = (
            f"imported the task tree of {count} task file(s) from {self.folder} into {self.db_path}; "
            f"the files are kept in {backup}"
        )
        logger.info("%s", message)
        self.notices.append(message)


def _json_files(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.name.endswith(".json") and e.name[0] != ".")
    except FileNotFoundError:
        return []


def _refuse(path: Path, problem: str, folder: Path) -> TaskImportRefused:
    return TaskImportRefused(
        f"{problem}; the task files in {folder} were not imported into the task database (nothing changed): "
        f"fix or remove {path.name}, then run again"
    )


def _read_tree(files: list[Path], folder: Path) -> list[Task]:
    tasks: dict[str, Task] = {}
    for path in files:
        try:
            data = loads(read_bytes(path))  # never through a planted link (UnsafeStateError)
        except (OSError, ValueError) as exc:
            raise _refuse(path, f"task file {path} is unreadable ({exc})", folder) from None
        if not isinstance(data, dict):
            raise _refuse(path, f"task file {path} is unreadable (expected a JSON object)", folder)
        try:
            task = Task.from_json(data, f"task file {path}", file_name=path.name)
        except (StateError, TypeError) as exc:
            raise _refuse(path, str(exc), folder) from None
        tasks[task.name] = task
    # The database keeps the tree whole (a parent always exists): a child whose parent's file is gone
    # becomes a top-level task, and levels and roots are recomputed from the parents.
    for task in tasks.values():
        if task.parent is not None and task.parent not in tasks:
            task.extra["imported_without_parent"] = task.parent
            task.parent = None

    for task in tasks.values():
        chain = [task.name]  # up to the top (or to a hand-made cycle, which is cut where it closes)
        while (up := tasks[chain[-1]].parent) is not None:
            if up in chain:
                tasks[chain[-1]].parent = None
                break
            chain.append(up)
        task.root, task.level = chain[-1], len(chain)
    return list(tasks.values())


def _read_archived(path: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    try:
        data = loads(read_bytes(path))  # never through a planted link (UnsafeStateError)
    except (OSError, ValueError) as exc:
        raise _refuse(path, f"archived task file {path} is unreadable ({exc})", folder) from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise _refuse(path, f"archived task file {path}: name: missing or not a string", folder)
    return path, data


def same_runner(recorded: dict[str, Any] | None, runner: dict[str, Any]) -> bool:
    if not recorded:
        return False
    if recorded.get("pid") != runner.get("pid") or recorded.get("host") != runner.get("host"):
        return False
    if recorded.get("boot") != runner.get("boot"):  # a clone under the same host id, booted the same way
        return False
    if recorded.get("start_ticks") is not None and runner.get("start_ticks") is not None:
        return bool(recorded["start_ticks"] == runner["start_ticks"])  # a stepped wall clock changes no tick
    return bool(recorded.get("create_time") == runner.get("create_time"))
