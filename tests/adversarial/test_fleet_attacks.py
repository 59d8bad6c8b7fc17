"""Attacks on fleet mode: the database stuck, restarted or killed under the hosts, hostile URLs, two migrators.

Every test runs against the session's real PostgreSQL (tests/helpers/postgres.py), on a fresh database.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path

import psycopg
import pytest

from conftest import call_script, run_script
from selfheal.core.breaker import Breakers
from selfheal.core.config import Config, load_config
from selfheal.core.ledger import Ledger
from selfheal.errors import UnsafeStateError
from selfheal.state import pg
from selfheal.state.root import StateRoot
from selfheal.tasks.tree import TaskStore
from selfheal.testing import FakeClock


def breakers(config: Config, name: str, tmp_path: Path, clock: FakeClock) -> Breakers:
    store = dataclasses.replace(config.store, host_id=name)
    return Breakers(StateRoot(tmp_path / name).ensure(), config.breakers, clock=clock, store=store)


def in_thread(work: object, limit_s: float) -> tuple[bool, list[object]]:
    """Run `work` in a thread; whether it ended within `limit_s`, and what it returned or raised."""
    outcome: list[object] = []

    def body() -> None:
        try:
            outcome.append(work())  # type: ignore[operator]
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout=limit_s)
    return not thread.is_alive(), outcome


def test_a_session_stuck_holding_a_breaker_row_does_not_hang_other_hosts_model_calls(
    fleet_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host stopped (or hung) inside a breaker's transaction holds its row: another host's acquire gives up
    after the lock wait and uses its own file (degraded), instead of waiting forever with a model call."""
    monkeypatch.setattr(pg, "LOCK_WAIT_S", 1.0)
    config = load_config()
    box = breakers(config, "box-1", tmp_path, clock)
    box.release(box.acquire("qwen"), ok=True)
    with psycopg.connect(fleet_url) as stuck:
        stuck.execute("SELECT data FROM selfheal_breakers WHERE target = 'qwen' FOR UPDATE")
        other = breakers(config, "box-2", tmp_path, clock)
        done, outcome = in_thread(lambda: other.acquire("qwen"), 15)
        stuck.rollback()
    assert done, "a model call hung behind another session's breaker row"
    assert not isinstance(outcome[0], BaseException), outcome
    assert (tmp_path / "box-2" / "breakers" / "qwen.json").is_file()  # it went on with this host's file


def test_our_sessions_do_not_sit_idle_inside_a_transaction_forever(fleet_url: str) -> None:
    """A process of ours stopped inside a transaction loses its session to the server after a while, so the rows
    it held are released for every other host."""
    db = pg.Database(fleet_url, "box-1")
    with db.connection() as conn:
        shown = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
    assert shown is not None and shown[0] not in ("0", "0ms"), shown


def test_the_task_trees_lock_wait_survives_a_reconnect(fleet_url: str, state: StateRoot, clock: FakeClock) -> None:
    """A long-lived runner whose connection was killed (a restart, pg_terminate_backend) reconnects with the
    tree's lock wait (tasks.busy_timeout_s), not the server's default of waiting forever."""
    store = TaskStore(state, clock=clock)
    db = store.db
    database = db.database  # type: ignore[attr-defined]
    with database.connection() as conn:
        assert conn.execute("SHOW lock_timeout").fetchone() == ("30s",)
        pid = conn.info.backend_pid
    with psycopg.connect(fleet_url, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(pg.DatabaseUnavailable):
        db.execute("SELECT 1")
    with database.connection() as conn:
        assert conn.info.backend_pid != pid
        assert conn.execute("SHOW lock_timeout").fetchone() == ("30s",)


def test_two_hosts_migrating_an_empty_database_at_once_both_end_at_the_current_version(fleet_url: str) -> None:
    """Two hosts' first connections race: one migrates under the advisory lock, the other waits and finds it
    done; each version is applied once."""
    start = threading.Barrier(4)

    def connect(n: int) -> int:
        db = pg.Database(fleet_url, f"box-{n}")
        start.wait()
        with db.connection() as conn:
            return pg.schema_version(conn)

    results: list[object] = []
    threads = [threading.Thread(target=lambda n=n: results.append(in_thread(lambda: connect(n), 60))) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r for r in results] == [(True, [pg.SCHEMA_VERSION])] * 4
    with psycopg.connect(fleet_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT version) FROM selfheal_schema").fetchone() == (
            pg.SCHEMA_VERSION,
            pg.SCHEMA_VERSION,
        )


def test_a_host_migrating_slowly_is_waited_for_not_taken_for_an_outage(
    fleet_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one host holds the migration lock longer than the sessions' lock wait, another host's first
    connection waits for it (docs/fleet.md: the others wait) instead of failing as unreachable."""
    monkeypatch.setattr(pg, "LOCK_WAIT_S", 0.5)
    with psycopg.connect(fleet_url) as migrator:
        migrator.execute("SELECT pg_advisory_xact_lock(%s)", (pg._MIGRATE_LOCK,))
        db = pg.Database(fleet_url, "box-2")

        def connect() -> int:
            with db.connection() as conn:
                return pg.schema_version(conn)

        time_ok: list[tuple[bool, list[object]]] = []
        t = threading.Thread(target=lambda: time_ok.append(in_thread(connect, 30)))
        t.start()
        time.sleep(1.5)  # past the lock wait: the waiter must still be waiting, not failed
        migrator.rollback()
        t.join()
    assert time_ok == [(True, [pg.SCHEMA_VERSION])]


SECRET = "Zq9s3cretPW"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://selfheal:pa@{SECRET}@127.0.0.1:9/selfheal",  # an unescaped @ in the password
        f"postgresql://selfheal:pa/{SECRET}@127.0.0.1:9/selfheal",  # an unescaped /
        f"postgresql://selfheal:pa {SECRET}@127.0.0.1:9/selfheal",  # a space
        f"postgresql://selfheal@127.0.0.1:9/selfheal?password='{SECRET} x'",  # quoted, with a space
        f"postgresql://selfheal@127.0.0.1:9/selfheal?password={SECRET}&bogus=1",  # and an option libpq refuses
    ],
)
@pytest.mark.parametrize("command", [("fleet", "status"), ("fleet", "init"), ("list",), ("run-next",)])
def test_a_password_in_a_malformed_url_is_never_printed(home: Path, url: str, command: tuple[str, ...]) -> None:
    """However the URL is broken (a password with an unescaped @, / or space: libpq's own messages repeat
    pieces of it), no piece of the password reaches stdout or stderr; the documented exit code comes back."""
    proc = call_script("tasks.py", *command, "--json", home=home, env={"SELFHEAL_DATABASE_URL": url})
    assert SECRET not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.returncode in ((1, 2) if command[0] == "fleet" else (2, 4)), (proc.returncode, proc.stderr)


def test_a_link_planted_at_the_spool_is_refused_and_its_target_neither_read_nor_emptied(
    fleet_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spool is replayed, then emptied: a link planted at it (to a file of the user's outside the state
    root) was followed, its target sent to the fleet as events and then cut to nothing."""
    config = load_config()
    config = dataclasses.replace(config, store=dataclasses.replace(config.store, host_id="box-1"))
    alive = Ledger(StateRoot(tmp_path / "box-1").ensure(), config)
    precious = tmp_path / "precious.jsonl"
    kept = b'{"event": "retry", "task": "mine", "ts": "2026-06-10T03:12:18Z"}\n' * 3
    precious.write_bytes(kept)
    alive.spool_path.parent.mkdir(parents=True, exist_ok=True)
    alive.spool_path.symlink_to(precious)
    with pytest.raises(UnsafeStateError, match="link"):
        alive.replay_spool()
    with caplog.at_level(logging.WARNING):
        alive.record("success", task="t")  # an event written meanwhile still reaches the fleet
    assert precious.read_bytes() == kept and alive.spool_path.is_symlink()
    with psycopg.connect(fleet_url) as conn:
        assert [e for (e,) in conn.execute("SELECT event FROM selfheal_ledger").fetchall()] == ["success"]


@pytest.mark.parametrize("plant", ["link", "fifo"])
@pytest.mark.parametrize(
    "command", [("health_check.py", "--json"), ("tasks.py", "fleet", "status", "--json")], ids=["health", "status"]
)
def test_a_link_or_fifo_at_the_spool_is_named_never_counted_through_nor_waited_on(
    fleet_url: str, home: Path, tmp_path: Path, plant: str, command: tuple[str, ...]
) -> None:
    """The health check and `tasks.py fleet status` count the events waiting in the spool: a FIFO planted there
    hung both for good (a plain open waits for a writer: the cron check never ended), and a link was followed,
    its target's lines counted as this host's events. Now the spool is named as refused, and nothing waits."""
    spool = home / "fleet" / "ledger-spool.jsonl"
    spool.parent.mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b'{"event": "retry", "task": "not-ours"}\n' * 7)
    if plant == "link":
        spool.symlink_to(victim)
    else:
        os.mkfifo(spool)

    proc = run_script(*command, home=home, env={"SELFHEAL_DATABASE_URL": fleet_url}, timeout=60)

    report = json.loads(proc.stdout)
    if command[0] == "health_check.py":
        fleet = next(c for c in report["checks"] if c["name"] == "fleet")
        said, counted = fleet["detail"], fleet["spooled"]
        assert fleet["status"] == "warn" and proc.returncode in (1, 3), proc.stdout
    else:
        said, counted = report["spool_problem"], report["spooled_events"]
        assert proc.returncode == 1, proc.stdout + proc.stderr
    assert str(spool) in said and ("link" in said if plant == "link" else "not a plain file" in said), said
    assert counted == 0, "the link's target was counted as spooled events"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert victim.read_bytes() == b'{"event": "retry", "task": "not-ours"}\n' * 7
