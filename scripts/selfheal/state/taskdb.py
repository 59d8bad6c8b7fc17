"""The task tree's database, `<state>/tasks.db`: schema, migrations, the connection, and every statement.

SQLite in WAL mode (readers never wait for the writer), `synchronous=FULL` (a claim survives a power
cut), `foreign_keys=ON` (a child always has its parent), and a busy timeout after which a writer gives
up with LockBusy (exit 4, try later). The tables follow the fourth source document: `tasks` (its
columns, named as it names them, plus ours: the run spec as JSON, the runner, heartbeats, history) and
`main_logs` (one row per run: when, how long, how it ended; the output itself stays in the bounded
`tasks/<name>.log`). `tasks_archive` keeps finished trees out of the live table; `schema_version`
and the migration list below let a newer version change the schema; a database written by a newer
version than this one is refused, never touched.

The actionable order is one query: the document's ORDER BY (type, priority, deeper first, oldest)
with its parent gate (a parent only when every child is END, VOID or REQUIRES_MANUAL), answered from a
partial index that holds only the actionable rows in that order, so a claim reads a handful of rows
however large the tree. The gate is a column of the parent's own row, `open_children` (its children not
END, VOID or REQUIRES_MANUAL), kept by triggers in the transaction that adds, moves, deletes or settles a
child (schema version 2): a claim is then one `UPDATE ... FROM (SELECT ... LIMIT 1) ... RETURNING`, and on
PostgreSQL the row lock's recheck of a concurrently changed row (READ COMMITTED) sees a child committed
after the statement began, since adding it changed the parent's row. Statements are written in the SQL
SQLite and PostgreSQL share; `sql.Dialect` holds what differs.

This module knows rows and statements; the rules (which transitions are allowed, what a claim records)
are the task layer's (`selfheal.tasks.tree`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import stat
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import EXIT_USAGE, LockBusy, StateError, StateWriteError, UnsafeStateError, UsageError
from . import layout
from .root import ensure_dir, file_lock, loads, open_file, open_rewrite, refuse_hard_links
from .sql import SQLITE, Dialect
from .taskstates import ACTIONABLE_STATES, CHILD_SETTLED, END, HISTORY_KEEP, PRIORITIES, PROCESSING, TYPES, VOID

try:
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    _HAVE_FCNTL = False
# An open file description's own lock (Linux, 64-bit: struct flock packed as "hhqqi4x"), else None.
_OFD_LOCK: int | None = (
    getattr(fcntl, "F_OFD_SETLK", None) if _HAVE_FCNTL and sys.platform == "linux" and sys.maxsize > 2**32 else None
)

TYPE_CHECKING = False  # not typing's: the health check reads this database and never imports typing
if TYPE_CHECKING:
    from typing import Any

    from .taskrecord import Task

SCHEMA_VERSION = 3
DEFERRED = "deferred:"  # meta key prefix of a task set aside (DEFERRED + name): see TaskDB.deferred()
# How long a reader that only looks (the health check) waits for a migration in progress; in WAL mode
# reads never wait for an ordinary writer.
READ_WAIT_S = 5.0

# (column, Task field, kind): kind is text, int, real, bool or json; a field of None is derived from the
# others (the document's `status` and `is_void`), written for people and tools that read the table.
COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("task_name", "name", "text"),
    ("display_name", "display_name", "text"),
    ("description", "description", "text"),
    ("task_type", "type", "text"),
    ("priority", "priority", "text"),
    ("status", None, "text"),
    ("exec_state", "exec_state", "text"),
    ("parent_task_id", "parent", "text"),
    ("root_task_id", "root", "text"),
    ("task_level", "level", "int"),
    ("fix_suggestion", "fix_suggestion", "text"),
    ("success_criteria", "success_criteria", "text"),
    ("analysis", "analysis", "text"),
    ("plan", "plan", "text"),
    ("solution", "solution", "text"),
    ("retry_count", "retry_count", "int"),
    ("is_void", None, "bool"),
    ("last_executed_ts", "last_executed_ts", "real"),
    ("last_result", "last_result", "text"),
    ("last_error", "last_error", "text"),
    ("last_error_class", "last_error_class", "text"),
    ("failed_step", "failed_step", "text"),
    ("execution_count", "execution_count", "int"),
    ("created_ts", "created_ts", "real"),
    ("updated_ts", "updated_ts", "real"),
    ("started_ts", "started_ts", "real"),
    ("ended_ts", "ended_ts", "real"),
    ("heartbeat_ts", "heartbeat_ts", "real"),
    ("activity_ts", "activity_ts", "real"),
    ("run_spec", "run", "json"),
    ("source", "source", "json"),
    ("incident", "incident", "text"),
    ("fix_record", "fix_record", "text"),
    ("requeued", "requeued", "bool"),
    ("runner", "runner", "json"),
    ("run_id", "run_id", "text"),
    ("history", "history", "json"),
    ("extra", "extra", "json"),
)
COLUMN_NAMES = tuple(c for c, _, _ in COLUMNS)
SELECT_COLUMNS = ", ".join(COLUMN_NAMES)
_INDEX = {c: i for i, c in enumerate(COLUMN_NAMES)}


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


# The fourth source document's get_actionable_tasks(): its WHERE (with the parent gate) and its ORDER BY
# (fix, regular, creative; P0, P1, P2; deeper first; oldest; then the name, so the order is total).
ACTIONABLE_IN = f"exec_state IN ({_quoted(ACTIONABLE_STATES)})"
TYPE_RANK = "CASE task_type WHEN 'fix' THEN 0 WHEN 'regular' THEN 1 ELSE 2 END"
PRIORITY_RANK = "CASE priority WHEN 'P0' THEN 0 WHEN 'P1' THEN 1 ELSE 2 END"
ORDER_BY = f"{TYPE_RANK}, {PRIORITY_RANK}, task_level DESC, created_ts, task_name"
# The same as index columns (PostgreSQL wants an expression in an index in parentheses; SQLite takes both).
INDEX_ORDER = f"({TYPE_RANK}), ({PRIORITY_RANK}), task_level DESC, created_ts, task_name"
# The parent gate: a column of the row itself (see open_children_schema), so a claim reads no child.
PARENT_GATE = "open_children = 0"
# What the column counts, from the children themselves (the migration fills it so; tests compare).
COUNT_OPEN_CHILDREN = (
    "(SELECT COUNT(*) FROM tasks c WHERE c.parent_task_id = tasks.task_name"  # noqa: S608 - constant text
    f" AND c.exec_state NOT IN ({_quoted(CHILD_SETTLED)}))"
)
RUNNABLE = "(run_spec IS NOT NULL OR task_type = 'fix')"
# What a claim may take. On PostgreSQL the claim index (tasks_claim, schema version 3 there) holds exactly these
# rows, in run order, so the first row of the index is the task to run (no sort, no filter to misjudge).
CLAIMABLE = f"{ACTIONABLE_IN} AND {PARENT_GATE} AND {RUNNABLE}"


def _schema(d: Dialect) -> list[str]:
    """tasks.db's first schema: its version table, then the task tables."""
    return [f"CREATE TABLE schema_version (version INTEGER NOT NULL, applied_ts {d.real} NOT NULL)", *task_tables(d)]


def task_tables(d: Dialect) -> list[str]:
    """The task tree's tables and indexes in dialect `d` (fleet mode: state/pg.py's migration 2 runs these)."""
    real = d.real
    return [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE tasks (
            task_name TEXT PRIMARY KEY,
            display_name TEXT,
            description TEXT,
            task_type TEXT NOT NULL CHECK (task_type IN ({_quoted(TYPES)})),
            priority TEXT NOT NULL CHECK (priority IN ({_quoted(PRIORITIES)})),
            status TEXT NOT NULL,
            exec_state TEXT NOT NULL CHECK (exec_state IN ({
            _quoted(("NEW", PROCESSING, END, VOID, "ERROR_FIX_PENDING", "NORMAL_CRASH", "REQUIRES_MANUAL"))
        })),
            parent_task_id TEXT REFERENCES tasks(task_name) {d.deferred_fk},
            root_task_id TEXT NOT NULL,
            task_level INTEGER NOT NULL CHECK (task_level >= 1),
            fix_suggestion TEXT,
            success_criteria TEXT,
            analysis TEXT,
            plan TEXT,
            solution TEXT,
            retry_count INTEGER NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
            is_void INTEGER NOT NULL DEFAULT 0,
            last_executed_ts {real},
            last_result TEXT,
            last_error TEXT,
            last_error_class TEXT,
            failed_step TEXT,
            execution_count INTEGER NOT NULL DEFAULT 0 CHECK (execution_count >= 0),
            created_ts {real} NOT NULL,
            updated_ts {real} NOT NULL,
            started_ts {real},
            ended_ts {real},
            heartbeat_ts {real},
            activity_ts {real},
            run_spec TEXT,
            source TEXT,
            incident TEXT,
            fix_record TEXT,
            requeued INTEGER NOT NULL DEFAULT 0,
            runner TEXT,
            run_id TEXT,
            history TEXT NOT NULL DEFAULT '[]',
            extra TEXT NOT NULL DEFAULT '{{}}'
        )""",
        "CREATE INDEX tasks_parent ON tasks(parent_task_id)",
        "CREATE INDEX tasks_root ON tasks(root_task_id)",
        f"CREATE INDEX tasks_running ON tasks(exec_state) WHERE exec_state = '{PROCESSING}'",
        # The queue: only actionable rows, in run order; the claim walks it and stops at the first that
        # passes the parent gate.
        f"CREATE INDEX tasks_queue ON tasks({INDEX_ORDER}) WHERE {ACTIONABLE_IN}",
        # Every row in run order: `tasks.py list` streams from it without sorting.
        f"CREATE INDEX tasks_order ON tasks({INDEX_ORDER})",
        f"""CREATE TABLE tasks_archive (
            id {d.serial_key},
            task_name TEXT NOT NULL,
            root_task_id TEXT NOT NULL,
            archived_ts {real} NOT NULL,
            log_file TEXT,
            record TEXT NOT NULL
        )""",
        "CREATE INDEX tasks_archive_name ON tasks_archive(task_name, id)",
        f"""CREATE TABLE main_logs (
            id {d.serial_key},
            log_type TEXT NOT NULL,
            log_level TEXT NOT NULL,
            task_name TEXT NOT NULL,
            run_start_time {real},
            run_end_time {real},
            duration_ms INTEGER,
            run_status TEXT NOT NULL,
            run_message TEXT,
            run_content TEXT,
            created_at {real} NOT NULL
        )""",
        "CREATE INDEX main_logs_task ON main_logs(task_name, id)",
    ]


def open_children_schema(d: Dialect) -> list[str]:
    """Schema version 2 (PostgreSQL: state/pg.py's version 3): the parent gate as a column of the parent's row.

    `open_children` counts a task's children that are not END, VOID or REQUIRES_MANUAL. Three triggers keep it
    in the transaction that changes a child: one added (open), one deleted or archived (if open), one moved
    to another parent or whose exec state crosses into or out of the settled ones. The claim's and a
    heartbeat's UPDATEs change neither, so they fire nothing. Filled here for the trees already there."""
    settled = _quoted(CHILD_SETTLED)
    out = [
        "ALTER TABLE tasks ADD COLUMN open_children INTEGER NOT NULL DEFAULT 0",
        f"UPDATE tasks SET open_children = {COUNT_OPEN_CHILDREN}",  # noqa: S608 - constant text
    ]
    if d.claim_index == "tasks_claim":
        out.append(f"CREATE INDEX tasks_claim ON tasks({INDEX_ORDER}) WHERE {CLAIMABLE}")
    return out + _open_children_triggers(
        d, settled=lambda c: f"{c} IN ({settled})", not_settled=lambda c: f"{c} NOT IN ({settled})", on_update="UPDATE"
    )


def _open_children_triggers(
    d: Dialect, *, settled: Callable[[str], str], not_settled: Callable[[str], str], on_update: str
) -> list[str]:
    """The three triggers that keep open_children, with `settled(column)` / `not_settled(column)` the test
    of an exec state and `on_update` the UPDATE event they fire on."""
    inc = "UPDATE tasks SET open_children = open_children + 1 WHERE task_name = NEW.parent_task_id"
    dec = "UPDATE tasks SET open_children = open_children - 1 WHERE task_name = OLD.parent_task_id"
    triggers = (
        ("tasks_open_insert", "INSERT", f"NEW.parent_task_id IS NOT NULL AND {not_settled('NEW.exec_state')}", inc),
        ("tasks_open_delete", "DELETE", f"OLD.parent_task_id IS NOT NULL AND {not_settled('OLD.exec_state')}", dec),
        (
            "tasks_open_update",
            on_update,
            "COALESCE(OLD.parent_task_id, '') <> COALESCE(NEW.parent_task_id, '')"
            f" OR ({settled('OLD.exec_state')}) <> ({settled('NEW.exec_state')})",
            f"{dec} AND {not_settled('OLD.exec_state')}; {inc} AND {not_settled('NEW.exec_state')}",
        ),
    )
    out: list[str] = []
    for name, event, when, body in triggers:
        out += [t.format(name=name, event=event, when=when, body=body + ";") for t in d.trigger]
    return out


def _one_of(column: str, values: Iterable[str]) -> str:
    """`column` is one of `values`, as comparisons: SQLite answers `IN` with three or more constants from a
    temporary b-tree it builds each time the expression runs (in a trigger: on every row)."""
    return "(" + " OR ".join(f"{column} = '{v}'" for v in sorted(values)) + ")"


def open_children_comparisons_schema(d: Dialect) -> list[str]:
    """Schema version 3 (SQLite): open_children's triggers tell a settled child by comparisons, not `IN`, and
    the UPDATE trigger fires only on a change of the parent or the exec state.

    A claim changes the exec state, so its UPDATE runs the trigger (its condition false: it neither moves nor
    settles a task). Version 2's condition had SQLite build and drop two temporary b-trees for its `IN` lists
    on every claim (and one per row added): about 280 KB allocated and freed, which a process that holds
    little else gives back to the kernel and faults in again, claim after claim (a quarter of a millisecond on
    the bench's machine, bench/tasks.py). The same tests, the same counts: only how they are evaluated. A
    heartbeat changes neither column and no longer runs it at all. (PostgreSQL evaluates an IN list in place;
    the fleet's schema keeps version 2's triggers.)"""
    names = ("tasks_open_insert", "tasks_open_delete", "tasks_open_update")
    out = [t.format(name=name) for name in names for t in d.drop_trigger]
    return out + _open_children_triggers(
        d,
        settled=lambda c: _one_of(c, CHILD_SETTLED),
        not_settled=lambda c: f"NOT {_one_of(c, CHILD_SETTLED)}",
        on_update="UPDATE OF parent_task_id, exec_state",
    )


# Each entry brings the schema from the version before it to its own; a new version appends one.
MIGRATIONS: tuple[tuple[int, Any], ...] = (
    (1, _schema),
    (2, open_children_schema),
    (3, open_children_comparisons_schema),
)


# -- errors ---------------------------------------------------------------------------------------------


class TaskDBUnreadable(StateError):
    """tasks.db is not a database or is damaged; it is left exactly as it is (exit 3)."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"task database {path} is unreadable ({detail}); it was left as it is. Restore it from a backup, "
            f"or move it aside (mv {path} {path}.corrupt) to start an empty task tree"
        )


class TaskDBTooNew(UsageError):
    """tasks.db was written by a newer self-heal: refused, never touched (exit 2)."""

    def __init__(self, path: Path, found: int) -> None:
        self.path = path
        self.found = found
        super().__init__(
            f"task database {path} has schema version {found}, newer than the {SCHEMA_VERSION} this self-heal "
            "knows; it was not touched: upgrade self-heal to use it"
        )


class TaskImportRefused(StateError):
    """A tasks/<name>.json file of an older version cannot be imported; nothing was imported (exit 2)."""

    exit_code = EXIT_USAGE


def translate(exc: sqlite3.Error, path: Path, busy_timeout_s: float) -> Exception:
    """The skill's error for a database error: locked (try later), unreadable, or anything else."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return LockBusy(f"the task tree ({path}) stayed locked for {busy_timeout_s:g}s; try again later")
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "encrypted" in text
    ):
        return TaskDBUnreadable(path, text)
    # A full disk or a read-only folder: the same error (exit 3, the file and the OS's words) as any state file.
    if "disk is full" in text or ("disk I/O error" in text and _no_space(path)):
        return StateWriteError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    if "readonly" in text or "read-only" in text:
        return StateWriteError(path, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    return StateError(f"task database {path}: {text}")


# What keeps open() from writing where open_to_read() can still read: a full disk, a read-only folder.
_UNWRITABLE = frozenset((errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM))


def _no_space(path: Path) -> bool:
    """Whether the database's file system is full (SQLite reports some full-disk writes as a plain I/O error)."""
    try:
        fs = os.statvfs(path.parent)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < 64 * 1024


# -- rows -----------------------------------------------------------------------------------------------


# One encoder for every column (json.dumps with options builds a new one per call: a microsecond a claim).
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode


def dumps(value: Any) -> str:
    """The JSON of a column: canonical, so equal values are equal text (the runner check compares text)."""
    return _ENCODE(value)


def task_row(task: Task) -> tuple[Any, ...]:
    """A task as a row of `tasks`, in COLUMNS order."""
    out: list[Any] = []
    for column, attr, kind in COLUMNS:
        if attr is None:
            out.append(task.status if column == "status" else int(task.is_void))
            continue
        value = getattr(task, attr)
        if kind == "json":
            if attr == "run" and value is not None:
                value = value.to_json()
            out.append(None if value is None else dumps(value))
        elif kind == "bool":
            out.append(int(bool(value)))
        else:
            out.append(value)
    return tuple(out)


# Where each field of a Task is in a row (COLUMNS order), by how it decodes; the derived columns are skipped.
_PLAIN = tuple((i, attr) for i, (_, attr, kind) in enumerate(COLUMNS) if attr and kind in ("text", "int", "real"))
_FLAGS = tuple((i, attr) for i, (_, attr, kind) in enumerate(COLUMNS) if attr and kind == "bool")
_JSON = tuple((i, attr) for i, (_, attr, kind) in enumerate(COLUMNS) if attr and kind == "json")
_RECORD: Any = None  # (RunSpec, Task), imported on the first row read


def row_task(row: Sequence[Any], path: Path) -> Task:
    """A row of `tasks` (COLUMNS order) as a task; a column that does not decode names the row and column.
    (Every claim decodes its row: the fields are read by position, no column's kind looked up on the way.)"""
    global _RECORD  # noqa: PLW0603 - the record (a dataclass: 10 ms to import) only when a row is read
    if _RECORD is None:
        from .taskrecord import RunSpec, Task  # noqa: PLC0415

        _RECORD = (RunSpec, Task)
    run_spec, task = _RECORD
    if len(row) != len(COLUMNS):
        raise ValueError(f"a row of tasks has {len(COLUMNS)} columns, not {len(row)}")
    fields: dict[str, Any] = {attr: row[i] for i, attr in _PLAIN}
    for i, attr in _FLAGS:
        raw = row[i]
        fields[attr] = None if raw is None else bool(raw)
    for i, attr in _JSON:
        raw = row[i]
        if raw is None:
            fields[attr] = None
            continue
        try:
            fields[attr] = loads(raw)
        except ValueError as exc:
            raise StateError(
                f"task database {path}: task {row[0]!r}: column {COLUMN_NAMES[i]}: invalid JSON ({exc})"
            ) from None
    if fields["extra"] is None:
        fields["extra"] = {}
    if fields["history"] is None:
        fields["history"] = []
    if fields["run"] is not None:  # what a runner will execute: checked before anything runs it
        fields["run"] = run_spec.from_json(fields["run"], f"task database {path}: task {row[0]!r}")
    return task(**fields)  # type: ignore[no-any-return]


# -- the database -----------------------------------------------------------------------------------------


def _check_side_file(side: Path) -> None:
    """A side file SQLite writes next to the database (-wal, -shm, -journal) must be absent or a plain file
    with one name: SQLite opens it without our checks and writes up to 32 KiB of shared memory into -shm, so
    a hard link planted there would have another file of the user's overwritten. UnsafeStateError names it."""
    try:
        info = os.lstat(side)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateWriteError(side, exc, "check") from exc
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(side)
        except OSError:
            raise UnsafeStateError(side, "is a symbolic link") from None
        raise UnsafeStateError(side, f"is a symbolic link (to {target})")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeStateError(side, "is not a plain file")
    refuse_hard_links(side, info)


# SQLite's lock bytes in a database file (os_unix.c): every connection holds a read lock of the SHARED range,
# and the last one to close folds the log into the file and removes the -wal only under a write lock of it.
_SHARED_FIRST = 0x40000000 + 2
_SHARED_SIZE = 510
# How often a reader of a folder it cannot write looks again while a writer comes or goes.
_READ_POLL_S = 0.01
# SQLite's answer to a read-only reader while a writer is making the -shm's index: a moment later it is made.
_INDEX_BEING_MADE = frozenset(("SQLITE_READONLY_RECOVERY", "SQLITE_READONLY_CANTINIT"))


def _hold_shared(fd: int) -> bool:
    """Take SQLite's shared lock of the database open at `fd`, released when fd is closed; False while a writer
    holds the exclusive one. On Linux the lock is the open file description's (F_OFD_SETLK): closing another fd
    of the file in this process, as SQLite does, leaves it held. Where locks are not kept (a file system that
    refuses them) the read goes on without one, as SQLite's own `immutable` would."""
    try:
        if _OFD_LOCK is not None:
            fcntl.fcntl(
                fd, _OFD_LOCK, struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, _SHARED_FIRST, _SHARED_SIZE, 0)
            )
        elif _HAVE_FCNTL:  # pragma: no cover - not Linux: a process's lock
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST, os.SEEK_SET)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
    return True


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file is at `path` and how big, to tell whether a writer changed it; None when there is none."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.lstat(path)
    except OSError:
        return False
    was = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (was.st_dev, was.st_ino)


class TaskDB:
    """One connection to tasks.db, shared by the threads of a process (a runner and its heartbeat)."""

    def __init__(self, path: Path, *, busy_timeout_s: float, dialect: Dialect = SQLITE) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.d = dialect
        self.lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._in_write = False
        # Inside write(): no transaction is open (fetch_and_commit ended it, or PostgreSQL's BEGIN waits to go
        # with the first statement); the next statement opens one.
        self._reopen = False
        self._claim_texts: dict[tuple[int | None, bool, int, bool], str] = {}
        self._runner_json: tuple[dict[str, Any] | None, str] = (None, "")
        # Why open_to_read() read the tree without writing (a full disk, a read-only folder); None after an
        # ordinary open.
        self.unwritable: StateWriteError | None = None

    # -- opening --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if "malformed JSON" in str(exc) and self._conn is not None:
                bad = self._bad_json_rows()
                if bad:  # one hand-edited row, not a damaged database: name it, keep the rest
                    raise StateError(
                        f"task database {self.path}: {'; '.join(bad)} is not valid JSON (edited by hand?); "
                        f"set that value right with sqlite3 {self.path}; the other tasks are fine"
                    ) from exc
            if self.unwritable is not None and "readonly" in str(exc):  # query_only, read where nothing is written
                raise StateWriteError(self.path, OSError(self.unwritable.errno, self.unwritable.reason)) from exc
            raise translate(exc, self.path, self.busy_timeout_s) from exc

    def _bad_json_rows(self) -> list[str]:
        """`task 'a' column history` for each (of at most 5) row whose JSON column does not parse."""
        columns = [column for column, _, kind in COLUMNS if kind == "json"]
        found: list[str] = []
        with contextlib.suppress(sqlite3.Error):
            for column in columns:
                rows = self.conn.execute(
                    f"SELECT task_name FROM tasks WHERE {column} IS NOT NULL AND json_valid({column}) = 0 LIMIT 5"  # noqa: S608
                ).fetchall()
                found += [f"task {name!r} column {column}" for (name,) in rows]
        return found[:5]

    def clock_param(self, now: float) -> float | None:
        """What `Dialect.clock`'s `?` is bound to: the host's time here (the PostgreSQL store binds None)."""
        return now

    def set_wait(self, seconds: float) -> None:
        """How long a writer waits for a lock from now on."""
        self.execute(self.d.wait_lock.format(ms=int(seconds * 1000)))

    def open(self) -> TaskDB:
        """Connect, refuse a newer schema before writing anything, then migrate to this version."""
        ensure_dir(self.path.parent)
        # SQLite follows links: refuse one planted at the database or its side files (a symbolic link, a hard
        # link to a file elsewhere, a FIFO or device), create the file 0600 without following one, and have
        # SQLite refuse a link that appears in between (nofollow).
        self._check_side_files()
        self._create_whole()
        os.close(open_rewrite(self.path, create=False))
        uri = "file:" + urllib.parse.quote(str(self.path)) + "?nofollow=1"
        with self.errors():
            conn = sqlite3.connect(
                uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            try:
                found = self._version(conn)
                if found > SCHEMA_VERSION:
                    raise TaskDBTooNew(self.path, found)
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA synchronous=FULL")
                if found < SCHEMA_VERSION:
                    conn.execute("PRAGMA journal_mode=WAL")
                    self._migrate(conn)
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return self

    def open_to_read(self) -> TaskDB:
        """open(), for a reader that writes nothing (tasks.py's listings and dry runs, the health check), which
        also reads the tree where nothing can be written: a full disk, a read-only folder (ext4's
        errors=remount-ro after a disk fault, a read-only mount, a folder the user may not write). Readers of a
        WAL database share an index of the log in tasks.db-shm, which the first of them makes and fills; there
        it cannot, and open() fails (StateWriteError). The tree is then read without writing:

        - on a full disk, in exclusive locking mode: SQLite keeps that index in this process's memory, and
          still reads what tasks.db-wal holds (https://sqlite.org/wal.html#noshm); the price is that the
          database is locked to other processes while this one has it open, a reader's moment (they wait for
          it as for any writer);
        - on a read-only folder, read-only: with the -wal and -shm a writer made, SQLite reads them as they are
          (under its locks of the -shm, so a writer still at work elsewhere is read as consistently as from
          a writable folder); with no -wal, the tree is copied whole into memory and read from there
          (_copy_whole). A -wal left without its -shm cannot be read (SQLite would have to rebuild the index);
          that fails with the folder's error. A writer that may still exist (through another mount, a user
          who may write the folder) can come or go while this looks: then it looks again.

        tasks.db itself must be a plain file with one name, as open() requires (UnsafeStateError).
        `query_only`: a statement that would write fails with the error that made the read necessary.
        (Closing after a full-disk read, SQLite folds what tasks.db-wal holds into tasks.db, as the last
        connection always does; on a full disk that fails as safely, the log kept.) `unwritable` keeps that
        error, for the caller to say the tree was read without writing. A tree that must first be made or
        migrated fails with that error; one of a newer schema is refused (TaskDBTooNew), as open() refuses it."""
        try:
            return self.open()
        except StateWriteError as exc:
            if exc.errno not in _UNWRITABLE or self.d is not SQLITE or not os.path.lexists(self.path):
                raise
            unwritable = exc
        self._check_side_files()
        if unwritable.errno == errno.ENOSPC:
            conn = self._connect_to_read("mode=rw&nofollow=1", unwritable, exclusive=True)  # never made here
        else:
            conn = self._read_unwritable_folder(unwritable)
        self._conn = conn
        self.unwritable = unwritable
        return self

    def _connect_to_read(
        self, params: str, unwritable: StateWriteError, *, exclusive: bool = False
    ) -> sqlite3.Connection:
        """A query_only connection to tasks.db opened with these URI parameters, its schema this version's."""
        uri = "file:" + urllib.parse.quote(str(self.path)) + "?" + params
        with self.errors():
            conn = sqlite3.connect(
                uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            try:
                if exclusive:
                    conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # before the first read: no shared memory
                self._check_to_read(conn, unwritable)
            except BaseException:
                conn.close()
                raise
        return conn

    def _check_to_read(self, conn: sqlite3.Connection, unwritable: StateWriteError) -> None:
        conn.execute("PRAGMA query_only=ON")
        found = self._version(conn)
        if found > SCHEMA_VERSION:
            raise TaskDBTooNew(self.path, found)
        if found < SCHEMA_VERSION:
            raise unwritable  # its migration must write first

    def _read_unwritable_folder(self, unwritable: StateWriteError) -> sqlite3.Connection:
        """The tree on a folder this process cannot write: through the -wal and -shm while the -wal holds a
        commit, else from a whole copy of tasks.db (an empty -wal holds nothing to fold in: a writer opening
        the tree makes it before its -shm). A writer may come or go between the look and the read (its -shm
        removed before its -wal as it closes, or not yet made as it opens; its index half made): the files are
        looked at again, until the busy timeout (then LockBusy, exit 4); a -wal that stays without its -shm is
        refused, naming both."""
        wal = self.path.with_name(self.path.name + "-wal")
        shm = self.path.with_name(self.path.name + "-shm")
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            self._check_side_files()
            fd = self._open_plain()
            try:
                seen = _identity(wal)
                empty = seen is None or seen[1] == 0
                copy = self._copy_whole(fd, wal, seen, deadline) if empty else None
            finally:
                os.close(fd)
            if copy is not None:
                try:
                    with self.errors():
                        self._check_to_read(copy, unwritable)
                except BaseException:
                    copy.close()
                    raise
                return copy
            if empty:  # a writer committed during the copy: its -wal is read next
                self._look_again(deadline, wait=False)
                continue
            before = (seen, os.path.lexists(shm))
            try:
                return self._connect_to_read("mode=ro&nofollow=1", unwritable)
            except StateError as exc:
                half_made = getattr(exc.__cause__, "sqlite_errorname", "") in _INDEX_BEING_MADE
                if type(exc) is not StateError and not half_made:  # too new, torn, locked: as open() says it
                    raise
                self._look_again(deadline, wait=True)
                if half_made or (_identity(wal), os.path.lexists(shm)) != before:
                    continue
                # A -wal without its -shm: SQLite cannot rebuild the index here.
                why = f"{unwritable.reason}, and its {wal.name} cannot be read without {shm.name}"
                raise StateWriteError(self.path, OSError(unwritable.errno, why)) from exc

    def _open_plain(self) -> int:
        """A read-only fd of tasks.db, refused (UnsafeStateError) as open() refuses it: a link of either kind
        (a second name may be another user's tree), or anything but a plain file."""
        fd = open_file(self.path, os.O_RDONLY, doing="read")  # a plain file, reached through no link
        try:
            refuse_hard_links(self.path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _copy_whole(
        self, fd: int, wal: Path, seen: tuple[int, int, int] | None, deadline: float
    ) -> sqlite3.Connection | None:
        """tasks.db copied into an in-memory database, or None when a writer changed the -wal (`seen` before:
        absent or empty) or replaced tasks.db meanwhile: its log is then read instead.

        SQLite cannot read a WAL database here without a -shm, except as `immutable`: no lock, no -shm, every
        page read as it is at that moment. A writer through another mount folds its commits into tasks.db as
        it closes, and a connection kept open that way read part of the tree before a commit and part after:
        a listing torn between two moments (or a page half written, taken for a damaged database). So the
        whole file is copied at once, under SQLite's own shared lock of it (_hold_shared): the last writer to
        close folds its log in only under the exclusive one, and leaves its -wal while this holds the lock,
        so a -wal as empty after the copy as before it (the same file, or none) means no commit was folded in
        during it. (A checkpoint that truncates the log, which nothing here asks for, could fold one in and
        leave the -wal empty again; its time stamp changes with it, at the file system's granularity.) The copy costs
        the tree's size in memory, for a reader's moment."""
        while not _hold_shared(fd):  # a writer folding its log in now: a moment
            self._look_again(deadline, wait=True)
        if _identity(wal) != seen:
            return None
        uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=ro&immutable=1&nofollow=1"
        copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            with self.errors():
                source = sqlite3.connect(uri, uri=True, check_same_thread=False)
                try:
                    source.backup(copy)
                    # Before closing the source: where the lock is a process's (not Linux), its close drops it.
                    whole = _identity(wal) == seen and _same_file(fd, self.path)
                finally:
                    source.close()
        except BaseException:
            copy.close()
            raise
        if not whole:
            copy.close()
            return None
        return copy

    def _look_again(self, deadline: float, *, wait: bool) -> None:
        """Before looking at the files again: LockBusy past the deadline, else a moment's wait if `wait`."""
        if time.monotonic() >= deadline:
            raise LockBusy(f"the task tree ({self.path}) stayed locked for {self.busy_timeout_s:g}s; try again later")
        if wait:
            time.sleep(_READ_POLL_S)

    def _check_side_files(self) -> None:
        for suffix in ("-wal", "-shm", "-journal"):
            _check_side_file(self.path.with_name(self.path.name + suffix))

    def _create_whole(self) -> None:
        """A new database is made whole under another name and renamed into place, under a lock every creator
        takes: tasks.db is never seen half made, so one that is empty (0 bytes) was cut short by something
        else, and is refused (TaskDBUnreadable) rather than taken for a new, empty tree."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        if info is not None:
            if stat.S_ISREG(info.st_mode) and info.st_size == 0:
                raise TaskDBUnreadable(
                    self.path, "it is empty (0 bytes): cut short, not new; if this host never had a task, delete it"
                )
            return
        lock = layout.lock_file(self.path.parent, "create", self.path.name)
        ensure_dir(lock.parent)
        with file_lock(lock, what=f"creating {self.path}"):
            if os.path.lexists(self.path):
                return  # another process made it while this one waited
            n = int.from_bytes(os.urandom(4), "little")  # `.name.pid.n.tmp`: a dead creator's is swept (root.py)
            temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{n}.tmp")
            fd = open_rewrite(temp)
            try:
                with self.errors():
                    conn = sqlite3.connect(
                        "file:" + urllib.parse.quote(str(temp)) + "?nofollow=1", uri=True, isolation_level=None
                    )
                    try:
                        conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: tasks.db opens in WAL mode
                        conn.execute("PRAGMA synchronous=FULL")
                        self._migrate(conn)
                    finally:
                        conn.close()  # the last connection: its WAL is folded in and removed
                os.fsync(fd)
                os.rename(temp, self.path)
            finally:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                for suffix in ("-journal", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp.with_name(temp.name + suffix))

    def _version(self, conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(self.d.begin_write)
        try:
            found = self._version(conn)  # again, under the write lock: another process may have done it
            for version, statements in MIGRATIONS:
                if version <= found:
                    continue
                for statement in statements(self.d):
                    conn.execute(statement)
                conn.execute(
                    self.d.sql("INSERT INTO schema_version (version, applied_ts) VALUES (?, ?)"), (version, _now())
                )
                _log("task database %s: schema version %d", self.path, version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"task database {self.path} is not open")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.unwritable = None

    def execute(self, statement: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self.errors():
            if self._in_write and self._reopen:
                self._reopen = False
                self.conn.execute(self.d.begin_write)
            return self.conn.execute(self.d.sql(statement), tuple(params))

    def query_many(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Several queries, each one's rows (PostgreSQL: one message, one round trip)."""
        return [self.execute(statement, params).fetchall() for statement, params in statements]

    def fetch_and_commit(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """The last statement of a write transaction and its COMMIT (PostgreSQL: one round trip); its rows.
        A statement after it in the same write() block starts a new transaction."""
        with self.lock:
            rows = self.execute(statement, params).fetchall()
            if self._in_write:
                with self.errors():
                    self.conn.execute("COMMIT")
                self._reopen = True
            return rows

    # -- transactions -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction (the write lock from its first statement); rolled back on any error."""
        with self.lock:
            if self._in_write:
                yield
                return
            self._in_write = True
            try:
                self._begin()
                yield
            except BaseException:
                self._in_write = False
                if not self._reopen:  # a transaction is open
                    self._rollback()
                self._reopen = False
                raise
            self._in_write = False
            if self._reopen:  # nothing open: fetch_and_commit committed it, or nothing was sent
                self._reopen = False
                return
            try:
                self._commit()
            except BaseException:
                self._rollback()
                raise

    def _begin(self) -> None:
        self.execute(self.d.begin_write)

    def _commit(self) -> None:
        self.execute("COMMIT")

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    # -- reading tasks ------------------------------------------------------------------------------------

    def _tasks(self, where: str = "", params: Sequence[Any] = (), *, order: bool = True) -> list[Task]:
        tail = f" WHERE {where}" if where else ""
        tail += f" ORDER BY {ORDER_BY}" if order else ""
        rows = self.execute(f"SELECT {SELECT_COLUMNS} FROM tasks{tail}", params).fetchall()  # noqa: S608
        return [row_task(r, self.path) for r in rows]

    def get(self, name: str) -> Task | None:
        row = self.execute(f"SELECT {SELECT_COLUMNS} FROM tasks WHERE task_name = ?", (name,)).fetchone()  # noqa: S608
        return None if row is None else row_task(row, self.path)

    def exists(self, name: str) -> bool:
        return self.execute("SELECT 1 FROM tasks WHERE task_name = ?", (name,)).fetchone() is not None

    def names(self) -> list[str]:
        return [r[0] for r in self.execute("SELECT task_name FROM tasks ORDER BY task_name")]

    def count(self) -> int:
        return int(self.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])

    def children(self, name: str) -> list[Task]:
        return self._tasks("parent_task_id = ?", (name,))

    def waiting_on(self, name: str) -> list[Task]:
        """The children that keep `name` from running (not END, VOID or REQUIRES_MANUAL), in run order."""
        return self._tasks(f"parent_task_id = ? AND exec_state NOT IN ({_quoted(CHILD_SETTLED)})", (name,))

    def roots(self) -> list[Task]:
        return self._tasks("parent_task_id IS NULL")

    def in_state(self, exec_state: str) -> list[Task]:
        return self._tasks("exec_state = ?", (exec_state,), order=False)

    def actionable_sql(
        self, types: Sequence[str] | None, *, runnable: bool, limit: int | None
    ) -> tuple[str, list[Any]]:
        """The document's get_actionable_tasks() as one query: the columns of the tasks that may run, in order."""
        where = [ACTIONABLE_IN, PARENT_GATE]
        params: list[Any] = []
        if types is not None:
            where.append(f"task_type IN ({', '.join('?' for _ in types)})")
            params += list(types)
        if runnable:
            where.append(RUNNABLE)
        hint = self.d.queue_hint.format(index="tasks_queue")
        sql = f"SELECT {SELECT_COLUMNS} FROM tasks{hint} WHERE {' AND '.join(where)} ORDER BY {ORDER_BY}"  # noqa: S608
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return sql, params

    def actionable(
        self, types: Sequence[str] | None = None, *, runnable: bool = False, limit: int | None = None
    ) -> list[Task]:
        sql, params = self.actionable_sql(types, runnable=runnable, limit=limit)
        return [row_task(r, self.path) for r in self.execute(sql, params).fetchall()]

    def claim_sql(
        self,
        types: Sequence[str] | None,
        *,
        runner: str,
        entry: str,
        tag: str,
        now: float,
        lease_s: float | None = None,
        skip: Sequence[str] = (),
        pass_deferred: bool = False,
    ) -> tuple[str, list[Any]]:
        """The claim as one statement: the first runnable actionable task in the document's order (the parent
        gate is a column of its row; the pick reads Dialect.claim_index in that order) becomes
        PROCESSING under `runner` (JSON), one more execution, its run id `<name[:60]>-<tag>`, `entry` (a JSON
        object) appended to its history with `what` filled in; the row as it now is comes back, and with
        `lease_s` one more column: whether any running task's lease ran out. On PostgreSQL the pick's FOR
        UPDATE SKIP LOCKED skips a row another host holds, and a row changed since the statement began is
        checked again once locked (a child added meanwhile raised its open_children): the next row is taken.
        Tasks named in `skip` are passed over, and with `pass_deferred` those set aside (see deferred()): in
        the same statement, so it costs no round trip of its own."""
        key = (None if types is None else len(types), lease_s is not None, len(skip), pass_deferred)
        statement = self._claim_texts.get(key)
        if statement is None:
            statement = self._claim_texts[key] = self._claim_text(
                key[0], with_lease=key[1], skip=key[2], pass_deferred=pass_deferred
            )
        at = self.clock_param(now)
        tail = [at, lease_s] if lease_s is not None else []
        return statement, [runner, at, at, at, at, at, entry, "-" + tag, *(types or ()), *skip, *tail]

    def _claim_text(self, types: int | None, *, with_lease: bool, skip: int = 0, pass_deferred: bool = False) -> str:
        """claim_sql's statement for `types` task types (None: any type), with the lease column or without,
        passing over `skip` named tasks and, with `pass_deferred`, those set aside."""
        where = [CLAIMABLE]
        if types is not None:
            where.append(f"task_type IN ({', '.join('?' for _ in range(types))})")
        if skip:
            where.append(f"task_name NOT IN ({', '.join('?' for _ in range(skip))})")
        if pass_deferred:  # meta's primary key: one lookup per row the pick looks at
            where.append(f"NOT EXISTS (SELECT 1 FROM meta WHERE meta.key = '{DEFERRED}' || tasks.task_name)")  # noqa: S608
        pick = (
            f"SELECT task_name FROM tasks{self.d.queue_hint.format(index=self.d.claim_index)}"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY {ORDER_BY} LIMIT 1{self.d.claim_lock}"
        )
        c = self.d.clock
        history = self.d.claim_history.format(keep=HISTORY_KEEP, keep_less_one=HISTORY_KEEP - 1)
        returning = SELECT_COLUMNS
        if with_lease:
            returning += f", {self._lease_ran_out()}"
        return (
            f"UPDATE tasks SET exec_state = '{PROCESSING}', status = 'running', runner = ?,"  # noqa: S608
            f" execution_count = execution_count + 1, started_ts = {c}, heartbeat_ts = {c},"
            f" activity_ts = {c}, last_executed_ts = {c}, ended_ts = NULL, updated_ts = {c}, history = {history},"
            f" run_id = substr(task_name, 1, 60) || ? WHERE task_name = ({pick}) RETURNING {returning}"
        )

    def claim(
        self,
        types: Sequence[str] | None,
        *,
        runner: dict[str, Any],
        entry: dict[str, Any],
        tag: str,
        now: float,
        lease_s: float | None = None,
        skip: Sequence[str] = (),
        pass_deferred: bool = False,
    ) -> tuple[bool, Task | None]:
        """The claim (claim_sql): outside write() a statement of its own (autocommit: one round trip on
        PostgreSQL, as a bare SKIP LOCKED loop); inside, part of that transaction. Returns whether a running
        task's lease ran out (when `lease_s` is given: a hint read without a lock; taking them back is a
        transaction of its own, see expired()) and the task claimed, or None."""
        if self._runner_json[0] != runner:  # the same runner claims again and again: its JSON is kept
            self._runner_json = (dict(runner), dumps(runner))
        statement, params = self.claim_sql(
            types,
            runner=self._runner_json[1],
            entry=dumps(entry),
            tag=tag,
            now=now,
            lease_s=lease_s,
            skip=skip,
            pass_deferred=pass_deferred,
        )
        rows = self._claim_rows(statement, params)
        if not rows:
            if lease_s is None:
                return False, None
            ran_out = self.execute(f"SELECT {self._lease_ran_out()}", (self.clock_param(now), lease_s)).fetchone()
            return bool(ran_out[0]), None
        row = rows[0]
        if lease_s is None:
            return False, row_task(row, self.path)
        return bool(row[-1]), row_task(row[:-1], self.path)

    def _claim_rows(self, statement: str, params: Sequence[Any]) -> list[Any]:
        """The claim statement's rows (PgTaskDB reads them in binary, and translates its own errors)."""
        with self.errors():  # SQLite commits (autocommit) as the statement finishes: inside fetchall
            return self.execute(statement, params).fetchall()

    def recount_open_children(self) -> None:
        """Set every task's open_children from its children (after rows were inserted children first)."""
        self.execute(
            f"UPDATE tasks SET open_children = {COUNT_OPEN_CHILDREN} WHERE open_children <> {COUNT_OPEN_CHILDREN}"  # noqa: S608
        )

    def lock_row(self, name: str) -> None:
        """Lock a task's row until the transaction ends (where the dialect has row locks; SQLite's write
        lock already covers it)."""
        if self.d.row_lock:
            self.execute(f"SELECT 1 FROM tasks WHERE task_name = ?{self.d.row_lock}", (name,))  # noqa: S608

    def expired(self, lease_s: float, now: float) -> list[Task]:
        """PROCESSING tasks whose runner's last heartbeat is older than `lease_s` (by the database's clock
        where it has one), locked for the claim that takes them back; a row another claimer holds is skipped."""
        rows = self.execute(*self._expired_sql(lease_s, now)).fetchall()
        return [row_task(r, self.path) for r in rows]

    def _expired_sql(self, lease_s: float, now: float) -> tuple[str, Sequence[Any]]:
        """The running tasks whose lease ran out, locked (skipping a row another claimer holds) for the take-back."""
        where = f"exec_state = '{PROCESSING}' AND heartbeat_ts < {self.d.clock} - ?"
        return (
            f"SELECT {SELECT_COLUMNS} FROM tasks WHERE {where} ORDER BY task_name{self.d.claim_lock}",  # noqa: S608
            (self.clock_param(now), lease_s),
        )

    def _lease_ran_out(self) -> str:
        """Whether any running task's lease ran out (two `?`: the clock's, then the lease in seconds), as the
        oldest heartbeat of the running tasks against the lease: MIN over the lease index (PostgreSQL's
        tasks_lease) reads its first entry whatever the planner thinks of the table. (`EXISTS (... heartbeat_ts <
        ...)` cost the fleet's claim about 80 µs of server CPU each: bench/fleet.py.)"""
        oldest = f"(SELECT MIN(heartbeat_ts) FROM tasks WHERE exec_state = '{PROCESSING}')"  # noqa: S608
        return f"COALESCE({oldest} < {self.d.clock} - ?, FALSE)"

    def clock_now(self, now: float) -> float:
        """The time the claim and heartbeats stamp: `now` (the host's) or the database's clock."""
        if self.d.clock == "?":  # the host's clock: nothing to ask
            return now
        return float(self.execute(f"SELECT {self.d.clock}", (self.clock_param(now),)).fetchone()[0])

    def iter_ordered(
        self, *, exec_state: str | None = None, task_type: str | None = None, batch: int = 500
    ) -> Iterator[Task]:
        """Every task in run order, a batch at a time (memory stays flat however many there are).

        Read in one read transaction, so the listing is one consistent moment of the tree."""
        where, params = [], []
        if exec_state is not None:
            where.append("exec_state = ?")
            params.append(exec_state)
        if task_type is not None:
            where.append("task_type = ?")
            params.append(task_type)
        tail = f" WHERE {' AND '.join(where)}" if where else ""
        cursor = self.execute(f"SELECT {SELECT_COLUMNS} FROM tasks{tail} ORDER BY {ORDER_BY}", params)  # noqa: S608
        while True:
            with self.errors():
                rows = cursor.fetchmany(batch)
            if not rows:
                return
            for row in rows:
                yield row_task(row, self.path)

    def finished_roots(self, unchanged_before: float) -> list[str]:
        """Roots whose whole tree is END or VOID and unchanged since `unchanged_before` (wall seconds)."""
        rows = self.execute(
            "SELECT root_task_id FROM tasks GROUP BY root_task_id"  # noqa: S608 - constant text
            f" HAVING SUM(CASE WHEN exec_state IN ({_quoted((END, VOID))}) THEN 0 ELSE 1 END) = 0"
            " AND MAX(updated_ts) < ? ORDER BY root_task_id",
            (unchanged_before,),
        ).fetchall()
        return [r[0] for r in rows]

    # -- writing tasks ------------------------------------------------------------------------------------

    def insert(self, task: Task) -> None:
        marks = ", ".join("?" for _ in COLUMNS)
        self.execute(f"INSERT INTO tasks ({SELECT_COLUMNS}) VALUES ({marks})", task_row(task))  # noqa: S608

    def insert_many(self, tasks: Iterable[Task]) -> None:
        """Insert tasks in any order (a child before its parent too: the foreign key is checked at commit),
        then count each parent's open children again."""
        marks = ", ".join("?" for _ in COLUMNS)
        with self.errors():
            self.conn.executemany(
                self.d.sql(f"INSERT INTO tasks ({SELECT_COLUMNS}) VALUES ({marks})"),  # noqa: S608
                (task_row(t) for t in tasks),
            )
        self.recount_open_children()

    def update_row(self, row: tuple[Any, ...]) -> None:
        sets = ", ".join(f"{c} = ?" for c in COLUMN_NAMES[1:])
        self.execute(f"UPDATE tasks SET {sets} WHERE task_name = ?", (*row[1:], row[0]))  # noqa: S608

    def insert_row(self, row: tuple[Any, ...]) -> None:
        marks = ", ".join("?" for _ in COLUMNS)
        self.execute(f"INSERT INTO tasks ({SELECT_COLUMNS}) VALUES ({marks})", row)  # noqa: S608

    def delete(self, names: Sequence[str]) -> None:
        """Delete tasks by name, with their marks in meta (a task set aside: see deferred()), so a task added
        later under the same name starts afresh."""
        for name in names:
            self.execute("DELETE FROM tasks WHERE task_name = ?", (name,))
            self.delete_meta(DEFERRED + name)

    def touch_running(self, name: str, runner: dict[str, Any], *, heartbeat_ts: float, activity_ts: float) -> bool:
        """A heartbeat: only while the task is PROCESSING under this very runner. False otherwise."""
        with self.lock:
            cursor = self.execute(
                f"UPDATE tasks SET heartbeat_ts = {self.d.clock}, activity_ts = ?"  # noqa: S608 - constant text
                f" WHERE task_name = ? AND exec_state = '{PROCESSING}' AND runner = ?",
                (self.clock_param(heartbeat_ts), activity_ts, name, dumps(runner)),
            )
            return cursor.rowcount == 1

    # -- the archive, the run log, meta ---------------------------------------------------------------------

    def archive(self, task: Task, *, archived_ts: float, log_file: str | None) -> None:
        record = task.to_json()
        self.execute(
            "INSERT INTO tasks_archive (task_name, root_task_id, archived_ts, log_file, record) VALUES (?, ?, ?, ?, ?)",
            (task.name, task.root, archived_ts, log_file, dumps(record)),
        )

    def archived(self, name: str) -> list[dict[str, Any]]:
        """The archived records of tasks once named `name`, oldest first, each with `archived` and `log_file`."""
        rows = self.execute(
            "SELECT archived_ts, log_file, record FROM tasks_archive WHERE task_name = ? ORDER BY id", (name,)
        ).fetchall()
        out = []
        for archived_ts, log_file, record in rows:
            data: dict[str, Any] = json.loads(record)
            data["archived_ts"], data["log_file"] = archived_ts, log_file
            out.append(data)
        return out

    def log_run(
        self,
        *,
        task: str,
        status: str,
        level: str,
        started: float | None,
        ended: float,
        message: str,
        content: str | None,
    ) -> None:
        """One row of the document's main_logs for a run (the output itself is in the task's log file)."""
        duration = int((ended - started) * 1000) if started else None
        if duration is not None and not 0 <= duration < 2**31:
            duration = None  # two clocks that disagree (a host's and a shared database's): no duration
        self.execute(
            "INSERT INTO main_logs (log_type, log_level, task_name, run_start_time, run_end_time, duration_ms,"
            " run_status, run_message, run_content, created_at) VALUES ('task', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (level, task, started, ended, duration, status, message[:500], content, ended),
        )

    def runs(self, task: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.execute(
            "SELECT run_start_time, run_end_time, duration_ms, run_status, run_message FROM main_logs"
            " WHERE task_name = ? ORDER BY id DESC LIMIT ?",
            (task, limit),
        ).fetchall()
        keys = ("run_start_time", "run_end_time", "duration_ms", "run_status", "run_message")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]

    def meta(self, key: str) -> str | None:
        row = self.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete_meta(self, key: str) -> None:
        self.execute("DELETE FROM meta WHERE key = ?", (key,))

    # A task whose run was not attempted (its target's breaker open, its lock busy) is set aside: the claim
    # passes over it while anything else can run, so it cannot hold the queue (meta `deferred:<name>`).

    def deferred(self) -> list[str]:
        """The tasks set aside, by name."""
        rows = self.execute("SELECT key FROM meta WHERE key LIKE ? ORDER BY key", (DEFERRED + "%",)).fetchall()
        return [r[0][len(DEFERRED) :] for r in rows]

    def set_deferred(self, name: str, deferred: bool) -> None:
        """Set `name` aside (or no longer); the marks of tasks that can no longer be claimed go too."""
        if not deferred:
            self.delete_meta(DEFERRED + name)
            return
        self.set_meta(DEFERRED + name, "1")
        self.execute(
            f"DELETE FROM meta WHERE key LIKE ? AND substr(key, {len(DEFERRED) + 1}) NOT IN"  # noqa: S608
            f" (SELECT task_name FROM tasks WHERE {ACTIONABLE_IN} OR exec_state = '{PROCESSING}')",
            (DEFERRED + "%",),
        )

    def clear_stale_deferred(self) -> None:
        """Delete the marks of names no task has, or whose task is END or VOID (it can never run again): left
        by a version that kept them when a task left, they would pass over a new task of that name. One
        statement over meta's few rows; a mark of a task that may still run (REQUIRES_MANUAL handed back) stays."""
        self.execute(
            f"DELETE FROM meta WHERE key LIKE ? AND substr(key, {len(DEFERRED) + 1}) NOT IN"  # noqa: S608
            f" (SELECT task_name FROM tasks WHERE exec_state NOT IN ({_quoted((END, VOID))}))",
            (DEFERRED + "%",),
        )


def _log(message: str, *args: object) -> None:
    import logging  # noqa: PLC0415 - the health check reads this database and never logs: 10 ms it need not pay

    logging.getLogger(__name__).info(message, *args)


def _now() -> float:
    import time  # noqa: PLC0415 - only when a schema is created

    return time.time()
