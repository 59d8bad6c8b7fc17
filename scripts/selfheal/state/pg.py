"""Fleet mode's PostgreSQL: the connection, the schema and its migrations, and every statement the fleet runs.

This is the only module that imports psycopg, and only fleet mode imports it (store.url or
SELFHEAL_DATABASE_URL set), so a single host's cron health check never pays for it. The password comes
from the environment only (SELFHEAL_DATABASE_PASSWORD, or libpq's own PGPASSWORD), never from a file.

Tables (schema version in selfheal_schema; migrations run in order, once, under an advisory lock):
    selfheal_hosts      one row per host: first and last seen, the pid that last connected
    selfheal_breakers   one row per target: the breaker's state (core/breaker.py's record) as jsonb,
                        changed only under SELECT ... FOR UPDATE
    selfheal_ledger     the fleet's ledger, append-only, partitioned by UTC day (selfheal_ledger_YYYYMMDD);
                        (event_id, ts) is unique, so an event replayed from a host's spool lands once
    tasks, tasks_archive, main_logs, meta
                        the shared task tree (version 2): taskdb's own tables, created by taskdb's
                        statements in the POSTGRESQL dialect; PgTaskDB runs taskdb's statements on them;
                        version 3 adds taskdb's open_children column and its triggers (the parent gate)

Text the fleet writes never carries NUL: PostgreSQL's text and jsonb cannot hold U+0000 (nor a lone surrogate,
which is not UTF-8), so every string bound to a statement, and every string inside a jsonb value, has each
such character replaced by U+FFFD (pg_text, applied by the connection's own dumpers: ledger events, task rows
and breaker rows alike). The hosts' files keep the text as it was.

A statement the database refuses for its values (psycopg's DataError or IntegrityError) raises
DatabaseRefused: a StateError, not an outage (PgTaskDB's statements raise StateError for these, and for
ProgrammingError, themselves). Every other psycopg error becomes DatabaseUnavailable and closes the
connection; the next use reconnects.

No use of the connection waits for ever (Database.bound_s): the server ends a statement that runs past its lock
wait + ANSWER_WAIT_S (statement_timeout), and DROP_GRACE_S later the process's watchdog thread shuts the socket
down itself, for a server that cannot (a stopped or hung backend, a network path that drops everything: the
peer's kernel still acknowledges, so TCP keepalive sees nothing wrong, and psycopg's cancel needs an answer too).
Over TCP, keepalive and tcp_user_timeout find a peer that is gone (a crash, a partition) sooner.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

from ..errors import FleetUnavailable, LockBusy, StateError
from .breakers import BreakerState
from .redact import mask_url_password, mask_url_password_in
from .runs import boot_id
from .sql import POSTGRESQL
from .taskdb import TaskDB, open_children_schema, row_task, task_tables

if TYPE_CHECKING:
    from psycopg.abc import Buffer

    from .taskrecord import Task

logger = logging.getLogger(__name__)
_warned_twins: set[str] = set()  # host ids already said to be used by two machines


SCHEMA_VERSION = 4
HEARTBEAT_S = 60.0  # a process in use refreshes its host's last_seen at most this often (one statement)
# How long a statement waits for a row another session holds before the fleet counts as unreachable, where the task
# tree set none (PgTaskDB.set_wait): a host stuck inside a transaction (stopped, hung) must not hang every other
# host's model calls on the breaker row it holds. And how long a session of ours may sit idle inside a
# transaction before the server ends it, releasing its rows: no transaction waits on anything but the database.
LOCK_WAIT_S = 5.0
IDLE_IN_TRANSACTION_S = 60.0
FETCH_ROWS = 2_000  # rows a page of the fleet ledger's read holds (fetch_events): about 1 to 4 MB of events
MIGRATE_WAIT_S = 120.0  # a host migrating the schema holds the others this long at most (the advisory lock)
# How long a statement may run past its lock wait before the server ends it (statement_timeout): none of the
# fleet's is meant to come near it, but a slow server's must end, and the server's own cancel stops its work too.
ANSWER_WAIT_S = 30.0
# How much later the process drops the connection itself (its socket shut down, so psycopg's blocked read fails):
# the server could not even cancel (a stopped or hung backend, a network path that drops everything).
DROP_GRACE_S = 5.0
# Over TCP: probes after this long idle, this often, this many unanswered, and at most this long with data
# unacknowledged (libpq's keepalives_* and tcp_user_timeout; ignored on a Unix socket). A peer that is gone is
# found within about 25 s, idle or mid-statement; a live server's kernel answers them, so no wait is cut. The
# URL's own values win.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
TCP_USER_TIMEOUT_S = 25.0
_MIGRATE_LOCK = 0x5E1F_4EA1  # pg_advisory_xact_lock key: one host migrates, the others wait and see it done
_PARTITION_LOCK = 0x5E1F_4EA2

# Each version's statements, applied in one transaction.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE selfheal_hosts (
            host text PRIMARY KEY,
            first_seen timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now(),
            pid integer
        )""",
        """CREATE TABLE selfheal_breakers (
            target text PRIMARY KEY,
            state text NOT NULL DEFAULT 'closed',
            data jsonb,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text
        )""",
        """CREATE TABLE selfheal_ledger (
            ts timestamptz NOT NULL,
            event_id text NOT NULL,
            host text NOT NULL,
            event text NOT NULL,
            task text,
            target text,
            error_class text,
            data jsonb NOT NULL,
            PRIMARY KEY (event_id, ts)
        ) PARTITION BY RANGE (ts)""",
        "CREATE INDEX selfheal_ledger_ts ON selfheal_ledger (ts)",
        "CREATE INDEX selfheal_ledger_host_ts ON selfheal_ledger (host, ts)",
    ),
    # The task tree: the very tables (and indexes) of tasks.db, written by taskdb in this dialect; and the
    # leases' index (the claim's sweep for heartbeats past tasks.lease_s reads only the expired rows).
    2: (
        *task_tables(POSTGRESQL),
        "CREATE INDEX tasks_lease ON tasks (heartbeat_ts) WHERE exec_state = 'PROCESSING'",
    ),
    # The parent gate as a column of the parent's row, kept by triggers (taskdb's schema version 2): the
    # claim becomes one statement whose row lock rechecks the gate.
    3: tuple(open_children_schema(POSTGRESQL)),
    # Which boot of which machine last spoke as each host: two machines using one host id are told.
    4: ("ALTER TABLE selfheal_hosts ADD COLUMN boot text",),
}

_PARTITION = re.compile(r"selfheal_ledger_(\d{4})(\d{2})(\d{2})\Z")
mask_url = mask_url_password  # the fleet database's URL as messages show it (state/redact.py: no piece of a password)


class DatabaseUnavailable(FleetUnavailable):
    """The fleet database could not be reached, or failed during a statement; local files take over."""


class DatabaseRefused(StateError):
    """The fleet database answered and refused a statement for its values (a data or constraint error): not
    an outage, so nothing falls back to local files for it; the statement's transaction was rolled back."""


# The statement failed for what it holds, not because the database is away.
_REFUSALS = (psycopg.DataError, psycopg.IntegrityError)

# What PostgreSQL's text and jsonb cannot hold: NUL, and a lone surrogate (a str that is not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def pg_text(text: str) -> str:
    """`text` as the fleet database stores it: each NUL or lone surrogate replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text) if _UNSTORABLE.search(text) else text


def pg_value(value: Any) -> Any:
    """A JSON value with pg_text applied to every string in it, keys included."""
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, Mapping):
        return {pg_text(str(k)) if isinstance(k, str) else k: pg_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [pg_value(v) for v in value]
    return value


def _json_dumps(obj: Any) -> str:
    return json.dumps(pg_value(obj))


class _TextDumper(StrDumperUnknown):
    """str as text (psycopg's default dumper), through pg_text."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(pg_text(obj))


class _TextBinaryDumper(StrBinaryDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(pg_text(obj))


def storable(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Make `conn` write every string, and every string in a jsonb value, through pg_text."""
    conn.adapters.register_dumper(str, _TextBinaryDumper)
    conn.adapters.register_dumper(str, _TextDumper)  # registered last: the one a %s placeholder takes
    set_json_dumps(_json_dumps, context=conn)
    return conn


@dataclass
class Database:
    """One process's connection to the fleet database: opened on first use, reopened after a failure,
    used by one thread at a time. Build it with database_for() to share it within the process."""

    url: str
    host: str
    connect_timeout_s: float = 3.0
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _conn: psycopg.Connection[Any] | None = field(default=None, init=False, repr=False)
    _pid: int = field(default=0, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _days: set[str] = field(default_factory=set, init=False, repr=False)
    _beat: float = field(default=0.0, init=False, repr=False)
    # The lock wait of this process's sessions: the task tree's (tasks.busy_timeout_s, PgTaskDB.set_wait) once
    # set, else LOCK_WAIT_S; applied again to each new connection, so a reconnect never waits forever.
    lock_wait_s: float = field(default_factory=lambda: LOCK_WAIT_S, init=False, repr=False)
    answer_wait_s: float = field(default_factory=lambda: ANSWER_WAIT_S, init=False, repr=False)
    drop_grace_s: float = field(default_factory=lambda: DROP_GRACE_S, init=False, repr=False)
    _dropped: float | None = field(default=None, init=False, repr=False)  # the bound the watchdog cut a use at

    def bound_s(self, wait_s: float | None = None) -> float:
        """How long one use of the connection (a statement, or the few of one block) may take before the
        connection is dropped (seconds): the lock wait (`wait_s`, else the session's), the server's own
        statement_timeout past it, and the grace after that."""
        return (self.lock_wait_s if wait_s is None else wait_s) + self.answer_wait_s + self.drop_grace_s

    def timeouts(self) -> tuple[str, str]:
        """The session's lock_timeout and statement_timeout, as set_config takes them."""
        return f"{round(self.lock_wait_s * 1000)}ms", f"{round((self.lock_wait_s + self.answer_wait_s) * 1000)}ms"

    def _connect(self) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            # libpq's minimum is 2 s; a stopped local server refuses at once anyway.
            "connect_timeout": max(2, round(self.connect_timeout_s)),
            "application_name": f"self-heal@{self.host}"[:63],
        }
        for key, value in _tcp_settings().items():
            if not re.search(rf"[?&]{key}=", self.url):
                kwargs[key] = value
        password = self.env.get("SELFHEAL_DATABASE_PASSWORD")
        if password:
            kwargs["password"] = password
        conn = storable(psycopg.connect(self.url, **kwargs))
        self._dropped = None
        outer = _watchdog.arm(self, conn, self.bound_s())
        try:
            # Set by statement, not by the startup packet's `options`, which a pooler (PgBouncer) refuses.
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                (*self.timeouts(), f"{round(IDLE_IN_TRANSACTION_S * 1000)}ms"),
            )
            if schema_version(conn) != SCHEMA_VERSION:
                _watchdog.arm(self, conn, self.bound_s(MIGRATE_WAIT_S))  # another host may be migrating: wait
                migrate(conn)
                _watchdog.arm(self, conn, self.bound_s())
            self._heartbeat(conn)
        except BaseException:
            conn.close()
            raise
        finally:
            _watchdog.disarm(self, outer)
        return conn

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        """This host's row in selfheal_hosts: last seen now, by this process, on this boot of this machine.
        Another boot that spoke as this host within the last two heartbeats is another machine using the same
        host id (cloned machines share a hostname, the default id): said once per process. (The two no longer
        judge each other's runners dead: runners and permits carry their boot, state.runs.boot_id.)"""
        boot = boot_id()
        found = conn.execute(
            "WITH before AS (SELECT boot, EXTRACT(EPOCH FROM now() - last_seen) AS age FROM selfheal_hosts"
            " WHERE host = %s)"
            " INSERT INTO selfheal_hosts (host, pid, boot) VALUES (%s, %s, %s)"
            " ON CONFLICT (host) DO UPDATE SET last_seen = now(), pid = EXCLUDED.pid, boot = EXCLUDED.boot"
            " RETURNING (SELECT boot FROM before), (SELECT age FROM before)",
            (self.host, self.host, os.getpid(), boot),
        ).fetchone()
        self._beat = time.monotonic()
        other, age = (found[0], float(found[1])) if found and found[1] is not None else (None, 0.0)
        twin = bool(other and boot and other != boot and age < 2 * HEARTBEAT_S)
        if twin and self.host not in _warned_twins:
            _warned_twins.add(self.host)
            logger.warning(
                "fleet host id %r was used %.0fs ago by another machine (or by this one before a reboot): "
                "give each host its own SELFHEAL_HOST_ID, or fleet status and the ledger cannot tell them apart",
                self.host,
                age,
            )

    def holds_connection(self) -> bool:
        """Whether this process has a connection open from before (the next use need not connect): one lost
        since (a restart, a killed session) is found only when it is used."""
        return self._conn is not None and not self._conn.closed and self._pid == os.getpid()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """The open connection (autocommit), for this thread alone while the block runs."""
        with self._lock:
            try:
                if self._conn is not None and self._pid != os.getpid():
                    # A forked child never uses, nor closes, its parent's socket: closing it (which
                    # garbage collection would do) would end the parent's session too.
                    _inherited.append(self._conn)
                    self._conn = None
                if self._conn is None or self._conn.closed:
                    self._conn = None
                    self._conn = self._connect()
                    self._pid = os.getpid()
                conn, watchdog = self._conn, _watchdog  # the bound, inline (bounded()): about 1.3 µs a use
                outer = watchdog.arm(self, conn, self.lock_wait_s + self.answer_wait_s + self.drop_grace_s)
                try:
                    if time.monotonic() - self._beat >= HEARTBEAT_S:
                        self._heartbeat(conn)
                    yield conn
                finally:
                    watchdog.disarm(self, outer)
            except _REFUSALS as exc:
                # The database answered: not an outage. A connection left inside a transaction is not reused.
                left = self._conn
                if left is None or left.closed or left.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self.close()
                raise DatabaseRefused(self._said(exc)) from None
            except psycopg.Error as exc:
                said = self._said(exc)
                self.close()
                raise DatabaseUnavailable(said) from None

    @contextlib.contextmanager
    def bounded(self, conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
        """`conn`, dropped by the watchdog if the block runs past bound_s(): a lock and a dict entry, no thread."""
        outer = _watchdog.arm(self, conn, self.bound_s())
        try:
            yield conn
        finally:
            _watchdog.disarm(self, outer)

    def _said(self, exc: BaseException) -> str:
        """psycopg's message, for people: no piece of the URL's password; or what the watchdog did."""
        said = mask_url_password_in(str(exc).strip(), self.url)
        if self._dropped is not None:
            said = (
                f"no answer within {self._dropped:g}s (the server, or the network path to it, hung): the connection"
                f" was dropped ({said})"
            )
        return f"fleet database {mask_url(self.url)}: {said}"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._days.clear()
            self._dropped = None
            if conn is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    conn.close()


_Armed = tuple[float, float, "Database", "psycopg.Connection[Any]"]  # deadline (monotonic), seconds, whose, which


class _Watchdog:
    """The process's one thread that drops a connection whose use ran past its bound: it shuts the socket down,
    so the read or write psycopg is blocked in fails at once (OperationalError, then DatabaseUnavailable).

    A use arms it (its deadline, under a lock) and disarms it; the thread sleeps until the earliest deadline
    armed, woken only when a use arms one earlier than that (the first after an idle spell), so the normal
    path costs a lock and a dict entry each way, and no thread or timer of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._armed: dict[int, _Armed] = {}  # id(db) -> its deadline
        self._wake = math.inf  # when the thread looks next
        self._thread: threading.Thread | None = None

    def arm(self, db: Database, conn: psycopg.Connection[Any], seconds: float) -> _Armed | None:
        """Drop `conn` unless disarmed within `seconds`; returns what was armed for `db` before (a use around
        this one), for disarm to put back."""
        deadline = time.monotonic() + seconds
        with self._lock:
            outer = self._armed.get(id(db))
            self._armed[id(db)] = (deadline, seconds, db, conn)
            if deadline < self._wake:  # the thread sleeps past it (or for ever, idle): wake it to sleep less
                self._wake = deadline
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="selfheal-fleet-watchdog", daemon=True)
                    self._thread.start()
                self._cond.notify()
        return outer

    def disarm(self, db: Database, outer: _Armed | None = None) -> None:
        with self._lock:
            if outer is None:
                self._armed.pop(id(db), None)
                return
            self._armed[id(db)] = outer
            if outer[0] < self._wake:
                self._wake = outer[0]
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, seconds, db, conn) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[key]
                        db._dropped = seconds  # the caller's DatabaseUnavailable says so (and is logged once)
                        _shut_down(conn)
                self._wake = min((armed[0] for armed in self._armed.values()), default=math.inf)
                self._cond.wait(None if self._wake == math.inf else self._wake - now)


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Shut `conn`'s socket down both ways (on a duplicate of its descriptor: libpq's own stays open until it
    closes the connection); the other end sees it closed too."""
    with contextlib.suppress(OSError, psycopg.Error):
        dup = os.dup(conn.fileno())
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            raise
        with sock:
            sock.shutdown(socket.SHUT_RDWR)


def _tcp_settings() -> dict[str, int]:
    """libpq's TCP settings for the fleet's connections: tcp_user_timeout only where libpq has it (12 and later)."""
    settings = dict(KEEPALIVES)
    if psycopg.pq.version() >= 120000:
        settings["tcp_user_timeout"] = round(TCP_USER_TIMEOUT_S * 1000)
    return settings


_watchdog = _Watchdog()


def _new_watchdog() -> None:
    """A forked child has none of its parent's threads: it starts its own on first use."""
    global _watchdog  # noqa: PLW0603 - one per process is the point
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_new_watchdog)
_plan_names = itertools.count(1)
_databases: dict[tuple[str, str, int], Database] = {}
_inherited: list[psycopg.Connection[Any]] = []  # a forked child's copies of its parent's connections, kept open
_databases_lock = threading.Lock()


def database_for(url: str, host: str, connect_timeout_s: float) -> Database:
    """The process's Database for this URL and host (one connection each, reused)."""
    key = (url, host, os.getpid())
    with _databases_lock:
        found = _databases.get(key)
        if found is None:
            found = _databases[key] = Database(url, host, connect_timeout_s)
        return found


# -- the task tree ------------------------------------------------------------------------------------------


class PgTaskDB(TaskDB):
    """The fleet's task tree: taskdb's statements, in the POSTGRESQL dialect, on this process's connection.

    Transactions are taskdb's (BEGIN ... COMMIT on the autocommit connection); a connection lost inside one
    fails the transaction (DatabaseUnavailable) instead of going on, outside it, on a new connection. The
    claim's and the heartbeats' times come from the database's clock (the host's time is bound as NULL).
    """

    def __init__(self, database: Database, *, busy_timeout_s: float) -> None:
        super().__init__(Path(f"{mask_url(database.url)}#tasks"), busy_timeout_s=busy_timeout_s, dialect=POSTGRESQL)
        self.database = database
        self._tx: psycopg.Connection[Any] | None = None
        self._plans: dict[str, str] = {}  # statement -> its prepared name on _plans_conn
        self._plans_conn: psycopg.Connection[Any] | None = None
        self._spelled: dict[str, str] = {}  # statement -> as psycopg takes it (the claim's, every time)
        self._claim_cursor: psycopg.Cursor[Any] | None = None  # the claim's, on the connection it was made on

    def clock_param(self, now: float) -> float | None:
        return None

    def set_wait(self, seconds: float) -> None:
        """The lock wait (and the statement_timeout past it), for this session and for every connection the
        process opens after it (a reconnect)."""
        self.database.lock_wait_s = seconds
        self.execute(
            "SELECT set_config('lock_timeout', ?, false), set_config('statement_timeout', ?, false)",
            self.database.timeouts(),
        )

    def open(self) -> PgTaskDB:
        """Connect (creating or migrating the schema, state/pg.py's migrations) and set the lock wait."""
        self.set_wait(self.busy_timeout_s)
        return self

    def close(self) -> None:
        """The connection is the process's (database_for), shared with breakers and the ledger: kept open."""

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._send([(statement, params)])

    def query_many(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        cursor = self._send(statements)
        out = []
        for _ in statements:
            out.append(cursor.fetchall())
            cursor.nextset()
        return out

    def fetch_and_commit(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._send([(statement, params)], commit=True).fetchall())

    def _claim_rows(self, statement: str, params: Sequence[Any]) -> list[Any]:
        """The claim's rows, asked for in binary: the server sends a float as its 8 bytes rather than its
        shortest text, and the client takes them as they are (the same values; each side spends about 20 µs
        less on a claim's row, bench/fleet.py). On a cursor kept for the claim, and read under the lock."""
        with self.lock:
            return list(self._send([(statement, params)], binary=True).fetchall())

    def _send(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool = False, binary: bool = False
    ) -> Any:
        """Run `statements` as one message (a BEGIN waiting to be sent goes first, a COMMIT last when asked):
        one round trip. Returns the cursor at the first statement's result. With `binary`, a statement sent
        alone comes back in binary, on the claim's cursor (several in one message come back as text)."""
        with self.lock, self.database.connection() as conn:
            begin = self._in_write and self._reopen
            if self._in_write and not begin and conn is not self._tx:
                raise DatabaseUnavailable(
                    f"fleet database {mask_url(self.database.url)}: the connection was lost inside a transaction;"
                    " nothing of it was written"
                )
            commit = commit and self._in_write
            if begin:
                self._reopen, self._tx = False, conn  # open now, even if a statement fails: rolled back then
            try:
                cursor: Any
                if len(statements) == 1 and not begin and not commit:
                    text = self._spelled.get(statements[0][0])
                    if text is None:
                        text = self._spelled[statements[0][0]] = self.d.sql(statements[0][0])
                    if binary:
                        cursor = self._claim_cursor
                        if cursor is None or cursor.connection is not conn or cursor.closed:
                            cursor = self._claim_cursor = conn.cursor()
                        cursor.execute(text, tuple(statements[0][1]), binary=True)
                    else:
                        cursor = conn.execute(text, tuple(statements[0][1]))
                else:
                    cursor = self._one_message(conn, statements, begin=begin, commit=commit)
            except psycopg.errors.LockNotAvailable:
                raise LockBusy(
                    f"the fleet's task tree (a row another host holds, for over {self.busy_timeout_s:g}s)"
                ) from None
            except psycopg.errors.DeadlockDetected:
                # Two transactions each waited on a row the other held (a child settled while its parent is
                # voided): the database rolled this one back; nothing of it was written.
                raise LockBusy(
                    "the fleet's task tree: another host was changing the same rows in the other order (a deadlock"
                    " the database broke by rolling this transaction back); nothing of it was written: try again"
                ) from None
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
                # The database answered and refused the statement: not an outage; the transaction rolls back.
                said = mask_url_password_in(str(exc).strip(), self.database.url)
                raise StateError(f"fleet task tree {self.path}: {said}") from None
            if commit:
                self._reopen, self._tx = True, None
            return cursor

    def _one_message(
        self,
        conn: psycopg.Connection[Any],
        statements: Sequence[tuple[str, Sequence[Any]]],
        *,
        begin: bool,
        commit: bool,
    ) -> Any:
        """Several statements in one message (one round trip), each on a plan this connection prepared the
        first time it sent that statement (PREPARE ... AS, then EXECUTE with the values bound on this side,
        as locked_breaker binds them): no statement is planned again. The cursor is at the first result."""
        if conn is not self._plans_conn:
            self._plans, self._plans_conn = {}, conn
        head: list[str] = []
        body: list[str] = ["BEGIN"] if begin else []
        values: list[Any] = []
        new: list[str] = []
        for statement, params in statements:
            name = self._plans.get(statement)
            if name is None:
                name = self._plans[statement] = f"selfheal_task_{next(_plan_names)}"
                new.append(statement)
                head.append(f"PREPARE {name} AS {_numbered(statement)}")
            body.append(f"EXECUTE {name}({', '.join('%s' for _ in params)})" if params else f"EXECUTE {name}")
            values += list(params)
        if commit:
            body.append("COMMIT")
        cursor = psycopg.ClientCursor(conn)
        try:
            cursor.execute("; ".join(head + body), values)
        except BaseException:
            for statement in new:  # maybe never prepared: prepared again (under a new name) next time
                self._plans.pop(statement, None)
            raise
        for _ in range(len(head) + (1 if begin else 0)):
            cursor.nextset()
        return cursor

    def insert_many(self, tasks: Iterable[Task]) -> None:
        from .taskdb import COLUMNS, SELECT_COLUMNS, task_row  # noqa: PLC0415

        marks = ", ".join("?" for _ in COLUMNS)
        self.execute("SELECT 1")  # a BEGIN waiting to be sent goes now
        with self.lock, self.database.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                self.d.sql(f"INSERT INTO tasks ({SELECT_COLUMNS}) VALUES ({marks})"),  # noqa: S608
                [task_row(t) for t in tasks],
            )
        self.recount_open_children()

    def _begin(self) -> None:
        """BEGIN goes with the transaction's first statement (one round trip fewer)."""
        self._reopen, self._tx = True, None

    def _commit(self) -> None:
        tx, self._tx = self._tx, None
        with self.database.connection() as conn:
            if conn is not tx:
                raise DatabaseUnavailable(
                    f"fleet database {mask_url(self.database.url)}: the connection was lost before the commit;"
                    " nothing of the transaction was written"
                )
            conn.execute("COMMIT")

    def _rollback(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None and not tx.closed:
            with contextlib.suppress(Exception), self.database.bounded(tx):
                tx.execute("ROLLBACK")


def _numbered(statement: str) -> str:
    """A statement written with `?` as PREPARE takes it: $1, $2, ... (and `%` doubled for the client-side binding)."""
    parts = statement.replace("%", "%%").split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def leases(db: Database, lease_s: float) -> list[dict[str, Any]]:
    """The shared tree's running tasks: which host runs each, since when, and when its lease runs out
    (its last heartbeat plus `lease_s`, by the database's clock)."""
    from .taskdb import SELECT_COLUMNS  # noqa: PLC0415

    with db.connection() as conn:
        if conn.execute("SELECT to_regclass('tasks') IS NULL").fetchone() == (True,):
            return []
        now = float(conn.execute("SELECT EXTRACT(EPOCH FROM statement_timestamp())").fetchone()[0])  # type: ignore[index]
        rows = conn.execute(
            f"SELECT {SELECT_COLUMNS} FROM tasks WHERE exec_state = 'PROCESSING' ORDER BY started_ts, task_name"  # noqa: S608
        ).fetchall()
    out = []
    for row in rows:
        task = row_task(row, Path(f"{mask_url(db.url)}#tasks"))
        runner = task.runner or {}
        beat = task.heartbeat_ts or task.started_ts or now
        out.append(
            {
                "task": task.name,
                "host": runner.get("host"),
                "pid": runner.get("pid"),
                "run_id": task.run_id,
                "since": _iso(task.started_ts),
                "heartbeat": _iso(task.heartbeat_ts),
                "expires": _iso(beat + lease_s),
                "expires_in_s": round(beat + lease_s - now, 1),
                "expired": beat + lease_s < now,
            }
        )
    return out


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- schema -------------------------------------------------------------------------------------------------


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The version the database is at; 0 for a database self-heal never used."""
    row = conn.execute("SELECT to_regclass('selfheal_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT max(version) FROM selfheal_schema").fetchone()
    return int(got[0]) if got and got[0] is not None else 0


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to SCHEMA_VERSION (each migration once, fleet-wide); return the version found before."""
    if schema_version(conn) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    with conn.transaction():
        # Another host migrating holds the lock: wait for it (not the session's short lock wait), boundedly.
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
            (f"{round(MIGRATE_WAIT_S * 1000)}ms", f"{round((MIGRATE_WAIT_S + ANSWER_WAIT_S) * 1000)}ms"),
        )
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS selfheal_schema"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = schema_version(conn)
        if before > SCHEMA_VERSION:
            raise DatabaseUnavailable(
                f"the fleet database's schema is version {before}, newer than this self-heal's {SCHEMA_VERSION}:"
                " upgrade self-heal on this host"
            )
        for version in range(before + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO selfheal_schema (version) VALUES (%s)", (version,))
            logger.info("fleet database migrated to schema version %d", version)
    return before


# -- breakers -----------------------------------------------------------------------------------------------


@dataclass
class BreakerRow:
    """A breaker's row, locked until the transaction ends: `data` is None for a target never seen."""

    target: str
    data: dict[str, Any] | None
    now: float | None = None  # the database's clock at the locking read (seconds since the epoch)


@contextlib.contextmanager
def locked_breaker(db: Database, target: str) -> Iterator[BreakerRow]:
    """The target's row under FOR UPDATE; what the block leaves in `row.data` is written back if changed.

    Every model call passes here twice, so each transaction is two round trips: BEGIN, the row's creation
    if missing and the locking read go as one message, and so do the UPDATE and the COMMIT (a client-side
    cursor binds the values, quoted by psycopg).
    """
    with db.connection() as conn:
        cur = psycopg.ClientCursor(conn)
        try:
            cur.execute(
                "BEGIN; INSERT INTO selfheal_breakers (target) VALUES (%s) ON CONFLICT DO NOTHING;"
                " SELECT data, EXTRACT(EPOCH FROM statement_timestamp()) FROM selfheal_breakers"
                " WHERE target = %s FOR UPDATE",
                (target, target),
            )
            while cur.nextset():
                pass
            found = cur.fetchone()
            before = found[0] if found else None
            row = BreakerRow(target, None if before is None else dict(before), float(found[1]) if found else None)
            yield row
            if row.data is not None and row.data != before:
                cur.execute(
                    "UPDATE selfheal_breakers SET data = %s, state = %s, updated_at = now(), updated_by = %s"
                    " WHERE target = %s; COMMIT",
                    (Jsonb(row.data), str(row.data.get("state")), db.host, target),
                )
            else:
                cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                cur.execute("ROLLBACK")
            raise


def read_breaker_row(db: Database, target: str) -> tuple[dict[str, Any] | None, float]:
    """The target's breaker as last committed (no lock), None if the fleet has none; and the database's clock."""
    with db.connection() as conn:
        found = conn.execute(
            "SELECT (SELECT data FROM selfheal_breakers WHERE target = %s), EXTRACT(EPOCH FROM statement_timestamp())",
            (target,),
        ).fetchone()
    if found is None:  # pragma: no cover - a SELECT without FROM always gives one row
        raise DatabaseUnavailable("the breaker query returned no row")
    return (dict(found[0]) if found[0] is not None else None), float(found[1])


def breaker_targets(db: Database) -> list[str]:
    with db.connection() as conn:
        return [r[0] for r in conn.execute("SELECT target FROM selfheal_breakers ORDER BY target").fetchall()]


# -- the ledger ---------------------------------------------------------------------------------------------


def _day_of(ts: str) -> str:
    return ts[:10]


def _partition_name(day: str) -> str:
    return "selfheal_ledger_" + day.replace("-", "")


def _ensure_partition(db: Database, conn: psycopg.Connection[Any], day: str, keep_days: int) -> None:
    """Create `day`'s partition if missing; the first to create one drops the days past keeping."""
    if day in db._days:
        return
    start = dt.date.fromisoformat(day)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_partition_name(day),)).fetchone()
        if not (exists and exists[0]):
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF selfheal_ledger FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(_partition_name(day)),
                    sql.Literal(f"{start.isoformat()} 00:00:00+00"),
                    sql.Literal(f"{(start + dt.timedelta(days=1)).isoformat()} 00:00:00+00"),
                )
            )
            if keep_days:
                _drop_partitions(conn, (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=keep_days)))
    db._days.add(day)


def _drop_partitions(conn: psycopg.Connection[Any], before: dt.date) -> list[str]:
    dropped = []
    for name in ledger_partitions(conn):
        match = _PARTITION.match(name)
        if match and dt.date(*map(int, match.groups())) < before:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            dropped.append(name)
            logger.info("fleet ledger: dropped %s (past ledger.keep_days)", name)
    return dropped


def ledger_partitions(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'selfheal_ledger' ORDER BY c.relname"
    ).fetchall()
    return [str(r[0]) for r in rows]


def prune_ledger_partitions(db: Database, keep_days: int, today: dt.date) -> list[str]:
    """Drop the ledger's day partitions older than `keep_days` days before `today`; return their names."""
    with db.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
        dropped = _drop_partitions(conn, today - dt.timedelta(days=keep_days))
    db._days.clear()
    return dropped


def insert_events(db: Database, events: Sequence[Mapping[str, Any]], keep_days: int) -> int:
    """Append ledger events (each with `event_id`, `ts`, `host`, `event`); return how many were new.
    An event already there (a replay) is skipped, so each lands once however often it is sent."""
    if not events:
        return 0
    oldest = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=keep_days)).isoformat() if keep_days else ""
    rows = [e for e in events if _day_of(str(e["ts"])) >= oldest]
    with db.connection() as conn:
        for day in sorted({_day_of(str(e["ts"])) for e in rows}):
            _ensure_partition(db, conn, day, keep_days)
        params = [
            (
                e["ts"],
                e["event_id"],
                e.get("host") or db.host,
                e["event"],
                e.get("task"),
                e.get("target"),
                e.get("error_class"),
                Jsonb(dict(e)),
            )
            for e in rows
        ]
        statement = (
            "INSERT INTO selfheal_ledger (ts, event_id, host, event, task, target, error_class, data)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        )
        if len(params) == 1:
            return conn.execute(statement, params[0]).rowcount
        with conn.transaction(), conn.cursor() as cur:
            new = 0
            for p in params:
                cur.execute(statement, p)
                new += cur.rowcount
            return new


def fetch_events(
    db: Database,
    *,
    since: float | None = None,
    until: float | None = None,
    host: str | None = None,
    task: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The fleet's ledger events in time order, optionally one host's or one task's, within [since, until)
    (epoch seconds).

    Read in pages of FETCH_ROWS rows, each its own statement after the last row of the one before (ts, then
    event_id: the order, and unique): a week of a busy fleet is never held whole, each page is one bounded use
    of the connection, and the caller's pace between pages holds neither the connection nor a transaction.
    Each page sees the ledger as it is then: an event written during the read is in it if it sorts after
    the page being read, as it would be in a read started a moment later.

    A page whose connection was lost since the page before (a database restart, a killed session) is read once
    more on a new connection: it starts after the last row taken, so nothing is yielded twice. The read ends,
    raising, on a second outage for the page, on an outage while connecting for it (the database is away just
    now: trying again at once would only wait again), and on a statement the database refused (DatabaseRefused:
    not an outage)."""
    filters = [
        (since is not None, "ts >= to_timestamp(%(since)s::float8)"),
        (until is not None, "ts < to_timestamp(%(until)s::float8)"),
        (host is not None, "host = %(host)s::text"),
        (task is not None, "task = %(task)s::text"),
    ]
    where = [clause for wanted, clause in filters if wanted]
    # Only the filters given, so that each condition can use the ts and (host, ts) indexes whatever plan the
    # server keeps for the statement; the page after the first one starts past its last row.
    first = _page_statement(where)
    after = _page_statement([*where, "ts >= %(ts)s AND (ts > %(ts)s OR event_id > %(id)s)"])
    page = FETCH_ROWS
    params: dict[str, Any] = {"since": since, "until": until, "host": host, "task": task, "rows": page}
    statement = first
    while True:
        for retry in (False, True):
            # A connection open before this page may have been lost while the caller held the last one; a page
            # that had to connect found the database away just now.
            held = db.holds_connection()
            try:
                with db.connection() as conn, conn.cursor() as cur:
                    rows = cur.execute(statement, params).fetchall()
                break
            except DatabaseUnavailable as exc:
                if retry or not held:
                    raise
                logger.info("fleet ledger read: connection lost between pages, reading the page again (%s)", exc)
        for _, _, data in rows:
            yield dict(data)
        if len(rows) < page:
            return
        statement = after
        params["ts"], params["id"] = rows[-1][0], rows[-1][1]
        del rows  # let go before the next page is fetched: one page held at a time


def _page_statement(where: Sequence[str]) -> str:
    return (
        "SELECT ts, event_id, data FROM selfheal_ledger"  # noqa: S608 - the clauses are fetch_events' own text
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY ts, event_id LIMIT %(rows)s"
    )


# -- the fleet at a glance ----------------------------------------------------------------------------------


def fleet_status(db: Database) -> dict[str, Any]:
    """Schema version, hosts and their last heartbeat, breakers with the permits each host holds, ledger size."""
    with db.connection() as conn:
        hosts = [
            {"host": h, "first_seen": f.isoformat(), "last_seen": s.isoformat(), "pid": p}
            for h, f, s, p in conn.execute(
                "SELECT host, first_seen, last_seen, pid FROM selfheal_hosts ORDER BY host"
            ).fetchall()
        ]
        breakers = []
        for target, state, data in conn.execute(
            "SELECT target, state, data FROM selfheal_breakers ORDER BY target"
        ).fetchall():
            held: dict[str, int] = {}
            entry: dict[str, Any] = {"target": target, "state": state, "permits_by_host": held, "record": None}
            try:  # the breaker's own record, checked as every reader checks it; a bad row is shown as stored
                record = BreakerState.from_json(data, "fleet breaker row", target=target) if data else None
            except StateError as exc:
                entry["unreadable"] = str(exc)
            else:
                entry["record"] = record
                for permit in record.permits.values() if record is not None else ():
                    held[permit.host or "?"] = held.get(permit.host or "?", 0) + 1
            breakers.append(entry)
        db_now = float(conn.execute("SELECT EXTRACT(EPOCH FROM statement_timestamp())").fetchone()[0])  # type: ignore[index]
        partitions = ledger_partitions(conn)
        counted = conn.execute(
            "SELECT host, count(*) FROM selfheal_ledger WHERE ts > now() - interval '1 day' GROUP BY host ORDER BY host"
        ).fetchall()
        return {
            "schema_version": schema_version(conn),
            "db_now": db_now,
            "hosts": hosts,
            "breakers": breakers,
            "ledger": {"partitions": len(partitions), "events_last_day": {str(h): int(n) for h, n in counted}},
        }
