"""Fleet mode against a database that stops answering: a statement never blocks for ever.

A backend stopped with SIGSTOP (the kernel still ACKs its socket, so TCP keepalive notices nothing) and a
network path on 127.0.0.1 that stops forwarding both turn into the fleet layer's outage within the bound
(state/pg.py: the lock wait + ANSWER_WAIT_S + DROP_GRACE_S), made small here; the next use reconnects. The
server is a real PostgreSQL of this machine (tests/helpers/postgres.py): one of its backends must be signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from helpers.postgres import Cluster

from selfheal.core.config import load_config
from selfheal.state import pg
from selfheal.state.root import StateRoot
from selfheal.tasks.tree import FleetTreeDown, Task, TaskStore, runner_identity
from selfheal.testing import FakeClock

if TYPE_CHECKING:
    from helpers.postgres import External


@pytest.fixture
def cluster(postgres: Cluster | External) -> Iterator[Cluster]:
    """A server on this machine (the session's, or a private one when the session's is elsewhere)."""
    if isinstance(postgres, Cluster):
        yield postgres
        return
    own = Cluster()
    try:
        yield own
    finally:
        own.destroy()


def small_bound(
    monkeypatch: pytest.MonkeyPatch, *, lock_wait_s: float = 0.5, answer_s: float = 0.5, grace_s: float = 0.5
) -> float:
    """Make the fleet's statement bound small for the test; return it (seconds)."""
    monkeypatch.setattr(pg, "LOCK_WAIT_S", lock_wait_s)
    monkeypatch.setattr(pg, "ANSWER_WAIT_S", answer_s, raising=False)
    monkeypatch.setattr(pg, "DROP_GRACE_S", grace_s, raising=False)
    return lock_wait_s + answer_s + grace_s


def timed(work: Callable[[], object], limit_s: float) -> tuple[float | None, object]:
    """Run `work` in a thread: its seconds (None if it still ran after `limit_s`) and what it returned or raised."""
    outcome: list[object] = []

    def body() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(timeout=limit_s)
    took = None if thread.is_alive() else time.monotonic() - start
    return took, (outcome[0] if outcome else None)


class Proxy:
    """A TCP port on 127.0.0.1 forwarding to the server's Unix socket, until `freeze`: then what either side sends
    is dropped, while both connections stay open and the kernel acknowledges it (a hung server, or a network
    path that loses everything); `thaw` lets new traffic through again."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.thaw()
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client = self.listener.accept()[0]
                server = socket.socket(socket.AF_UNIX)
                server.connect(str(self.target))
                self.sockets += [client, server]
                for src, dst in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.closed:
                    return
                if self.flowing.is_set():
                    dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def test_a_stopped_backend_is_an_outage_within_the_bound_and_the_next_read_reconnects(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A breaker read whose backend is stopped (SIGSTOP: the socket stays open and ACKed, nothing answers)
    raises DatabaseUnavailable, saying it got no answer, within the bound, instead of waiting for ever; once
    the backend runs again, the next read opens a new session and works."""
    bound = small_bound(monkeypatch)
    db = pg.Database(cluster.new_database(), "box-1")
    assert pg.read_breaker_row(db, "qwen")[0] is None
    with db.connection() as conn:
        backend = conn.info.backend_pid
    os.kill(backend, signal.SIGSTOP)
    try:
        took, outcome = timed(lambda: pg.read_breaker_row(db, "qwen"), 3 * bound)
    finally:
        os.kill(backend, signal.SIGCONT)
    assert took is not None, f"a breaker read against a stopped backend still waited after {3 * bound:.1f}s"
    assert isinstance(outcome, pg.DatabaseUnavailable), outcome
    assert "no answer" in str(outcome)
    assert pg.read_breaker_row(db, "qwen")[0] is None
    with db.connection() as conn:
        assert conn.info.backend_pid != backend


def test_a_claim_through_a_network_path_that_stops_forwarding_is_refused_within_the_bound(
    cluster: Cluster,
    home: Path,
    state: StateRoot,
    write_config: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over TCP (keepalive and tcp_user_timeout set), a path that goes silent mid-session: the task claim
    raises FleetTreeDown (this host claims nothing) within the bound; once the path forwards again and
    store.retry_down_s is over, the next claim takes the task."""
    bound = small_bound(monkeypatch)
    write_config("tasks: {busy_timeout_s: 0.5}\nstore: {retry_down_s: 5}\n")
    (sock,) = cluster.socket_dir.glob(".s.PGSQL.*[0-9]")
    proxy = Proxy(sock)
    name = cluster.new_database().split("///", 1)[1].split("?", 1)[0]
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", f"postgresql://{cluster.user}@127.0.0.1:{proxy.port}/{name}")
    clock = FakeClock()
    store = TaskStore(state, load_config(), clock)
    try:
        with store.transaction() as tree:
            tree.add(Task(name="job", run={"kind": "shell", "shell": "true"}))
        proxy.freeze()
        took, outcome = timed(lambda: store.claim(None, runner_identity(store.host), "t1"), 3 * bound)
        assert took is not None, f"a claim through a silent network path still waited after {3 * bound:.1f}s"
        assert isinstance(outcome, FleetTreeDown) and "no answer" in str(outcome), outcome
        proxy.thaw()
        clock.advance(6)
        claimed = store.claim(None, runner_identity(store.host), "t2")
        assert claimed is not None and claimed[0].name == "job"
    finally:
        proxy.close()


def test_a_statement_the_server_runs_too_long_is_ended_by_the_server_itself(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers but runs a statement past the bound: the server cancels it (statement_timeout),
    so the work stops there too, and the caller gets the outage within the bound."""
    bound = small_bound(monkeypatch, grace_s=2.0)  # the server's cancel comes well before the client would drop
    url = cluster.new_database()
    db = pg.Database(url, "box-1")

    def slow() -> object:
        with db.connection() as conn:
            return conn.execute("SELECT pg_sleep(30)").fetchone()

    took, outcome = timed(slow, 3 * bound)
    assert took is not None, f"a 30 s statement still ran after {3 * bound:.1f}s"
    assert isinstance(outcome, pg.DatabaseUnavailable) and "statement timeout" in str(outcome), outcome
    with psycopg.connect(url) as conn:
        running = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")
        assert running.fetchone() == (0,)


def test_intended_waits_longer_than_the_answer_bound_are_not_cut(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is on top of the waits the layer means to make: a breaker row held 1 s under a 2 s lock wait
    with 0.1 s of answer bound, and another host migrating the schema for twice the whole bound, are waited for."""
    small_bound(monkeypatch, lock_wait_s=2.0, answer_s=0.1)
    url = cluster.new_database()
    db = pg.Database(url, "box-1")
    with pg.locked_breaker(db, "qwen") as row:
        row.data = {"state": "closed"}
    with psycopg.connect(url) as holder:
        holder.execute("SELECT data FROM selfheal_breakers WHERE target = 'qwen' FOR UPDATE")
        threading.Timer(1.0, holder.rollback).start()

        def wait_for_row() -> object:
            with pg.locked_breaker(db, "qwen") as row:
                return row.data

        took, outcome = timed(wait_for_row, 10)
    assert outcome == {"state": "closed"}, outcome
    assert took is not None and took >= 0.9
    bound = small_bound(monkeypatch, lock_wait_s=0.3, answer_s=0.2, grace_s=0.3)
    fresh = cluster.new_database()
    with psycopg.connect(fresh) as migrator:
        migrator.execute("SELECT pg_advisory_xact_lock(%s)", (pg._MIGRATE_LOCK,))
        threading.Timer(2 * bound, migrator.rollback).start()
        took, outcome = timed(lambda: pg.read_breaker_row(pg.Database(fresh, "box-2"), "qwen")[0], 10)
    assert outcome is None and took is not None and took >= 2 * bound - 0.1, outcome


def test_the_bound_costs_no_thread_per_statement(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hundred statements on two connections start one thread in all (the process's watchdog, if it was not
    running yet), not a thread or a timer each."""
    starts: list[str] = []
    real_start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        starts.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    dbs = [pg.Database(cluster.new_database(), f"box-{n}") for n in (1, 2)]
    for _ in range(100):
        for db in dbs:
            pg.read_breaker_row(db, "qwen")
    assert starts in ([], ["selfheal-fleet-watchdog"])
