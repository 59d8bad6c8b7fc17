"""The task tree in fleet mode: the same store on a real PostgreSQL (tests/helpers/postgres.py, never skipped).

The core behaviours of test_tasks.py run again here, unchanged, with this module's `store` fixture (a
TaskStore in fleet mode: state/pg.py's PgTaskDB, taskdb's statements in the POSTGRESQL dialect); then what
only a shared tree has: claims on the database's clock, leases taken back, late finishes refused, a child
added while its parent is being claimed, and the database down.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_tasks import (
    test_a_claim_appends_its_history_entry_and_keeps_the_newest,
    test_a_first_business_failure_is_error_fix_pending_with_a_fix_child_for_the_step,
    test_a_parent_runs_only_when_every_child_is_end_void_or_requires_manual,
    test_actionable_order_is_type_then_priority_then_deeper_then_older,
    test_at_five_failures_a_sol_task_replaces_the_fix_tasks_and_after_three_more_a_person_is_needed,
    test_bad_input_is_refused_with_a_clear_message_and_nothing_changes,
    test_finished_trees_move_to_the_archive_and_free_their_names,
    test_reparenting_moves_the_whole_subtree_and_fixes_levels_and_roots,
    test_run_next_archives_old_finished_trees_as_it_claims,
    test_the_gate_looks_at_children_only_not_grandchildren_through_a_settled_child,
    test_the_parent_gate_column_stays_right_through_every_change_of_a_child,
    test_voiding_a_task_voids_its_unfinished_descendants_but_not_finished_ones,
)

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.config import Config, load_config
from selfheal.errors import ConfigError, StateError
from selfheal.state import pg
from selfheal.state.root import StateRoot
from selfheal.tasks.run import BoundedLog, TaskRunner, find_stuck
from selfheal.tasks.tree import END, NEW, NORMAL_CRASH, PROCESSING, FleetTreeDown, Task, TaskStore, runner_identity
from selfheal.testing import FakeClock

# The core behaviours of the SQLite store, run here on PostgreSQL (pytest collects them in this module, where
# `store` is the fleet's).
SAME_AS_SQLITE = (
    test_a_claim_appends_its_history_entry_and_keeps_the_newest,
    test_a_first_business_failure_is_error_fix_pending_with_a_fix_child_for_the_step,
    test_a_parent_runs_only_when_every_child_is_end_void_or_requires_manual,
    test_actionable_order_is_type_then_priority_then_deeper_then_older,
    test_at_five_failures_a_sol_task_replaces_the_fix_tasks_and_after_three_more_a_person_is_needed,
    test_bad_input_is_refused_with_a_clear_message_and_nothing_changes,
    test_finished_trees_move_to_the_archive_and_free_their_names,
    test_reparenting_moves_the_whole_subtree_and_fixes_levels_and_roots,
    test_run_next_archives_old_finished_trees_as_it_claims,
    test_the_gate_looks_at_children_only_not_grandchildren_through_a_settled_child,
    test_the_parent_gate_column_stays_right_through_every_change_of_a_child,
    test_voiding_a_task_voids_its_unfinished_descendants_but_not_finished_ones,
)


@pytest.fixture
def store(fleet_url: str, state: StateRoot, clock: FakeClock) -> TaskStore:
    return TaskStore(state, load_config(), clock)


def host_store(config: Config, host: str, root: Path, clock: FakeClock | None = None, **tasks: float) -> TaskStore:
    """The task store of one simulated host: its own state root and host id, the fleet's database."""
    config = dataclasses.replace(
        config,
        store=dataclasses.replace(config.store, host_id=host),
        tasks=dataclasses.replace(config.tasks, **tasks),
    )
    return TaskStore(StateRoot(root / host).ensure(), config, clock or FakeClock())


_runs = itertools.count(1)


def run_tag() -> str:
    """A claim's run tag (the run id is `<task>-<tag>`): a new one each time."""
    return f"run{next(_runs)}"


# -- the store on PostgreSQL -------------------------------------------------------------------------------


def test_the_fleet_tree_lives_in_postgresql_and_no_tasks_db_is_written(store: TaskStore, fleet_url: str) -> None:
    """Fleet mode: the tables are in the fleet's database (schema version 3), tasks.db is never created."""
    with store.transaction() as tree:
        tree.add(Task(name="shared", run={"kind": "shell", "shell": "true"}))
    assert not store.db_path.exists()
    with psycopg.connect(fleet_url) as conn:
        assert pg.schema_version(conn) == pg.SCHEMA_VERSION == 4
        assert conn.execute("SELECT task_name, exec_state FROM tasks").fetchall() == [("shared", NEW)]
    assert type(store.db).__name__ == "PgTaskDB"


def test_a_fleet_tree_of_schema_version_2_gets_its_parent_gate_column_filled(
    fleet_url: str, state: StateRoot, clock: FakeClock
) -> None:
    """Migration 3 on a database written by the version before: open_children counted for the trees already
    there, and kept from then on by its triggers."""
    with psycopg.connect(fleet_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "CREATE TABLE selfheal_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version in (1, 2):
            for statement in pg.MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO selfheal_schema (version) VALUES (%s)", (version,))
        for name, parent, exec_state in (("p", None, NEW), ("a", "p", NEW), ("b", "p", END), ("a1", "a", PROCESSING)):
            conn.execute(
                "INSERT INTO tasks (task_name, task_type, priority, status, exec_state, parent_task_id, root_task_id,"
                " task_level, created_ts, updated_ts, run_spec) VALUES (%s, 'regular', 'P1', 'pending', %s, %s, 'p',"
                " 1, 1, 1, %s)",
                (name, exec_state, parent, json.dumps({"kind": "argv", "argv": ["true"]})),
            )
    store = TaskStore(state, load_config(), clock)
    assert store.claim(None, runner_identity(store.host), run_tag()) is None  # a waits on a1, p on a
    with psycopg.connect(fleet_url) as conn:
        assert pg.schema_version(conn) == pg.SCHEMA_VERSION  # migrated on to the latest
        rows = conn.execute("SELECT task_name, open_children FROM tasks ORDER BY task_name").fetchall()
    assert rows == [("a", 1), ("a1", 0), ("b", 0), ("p", 1)]
    with store.transaction() as tree:
        tree.transition("a1", END)
    claimed, _ = store.claim(None, runner_identity(store.host), run_tag())  # type: ignore[misc]
    assert claimed.name == "a"


def test_a_claim_and_heartbeats_are_stamped_with_the_databases_clock(
    store: TaskStore, clock: FakeClock, fleet_url: str
) -> None:
    """The host's clock (a fake one here, years off) never reaches started_ts or heartbeat_ts."""
    clock.advance(-10 * 365 * 86400)
    with store.transaction() as tree:
        tree.add(Task(name="t", run={"kind": "shell", "shell": "true"}))
    with psycopg.connect(fleet_url) as conn:
        (db_now,) = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()  # type: ignore[misc]
    runner = runner_identity(store.host)
    claimed, _ = store.claim(None, runner, run_tag())  # type: ignore[misc]
    assert claimed.exec_state == PROCESSING and claimed.runner == runner and runner["host"] == store.host
    assert abs((claimed.started_ts or 0) - db_now) < 60 and abs((claimed.heartbeat_ts or 0) - db_now) < 60
    assert store.touch_running("t", runner, activity_ts=clock.time())
    assert abs((store.get("t").heartbeat_ts or 0) - db_now) < 60
    assert not store.touch_running("t", {**runner, "pid": runner["pid"] + 1})  # another runner: not its task


def test_a_claimed_task_is_the_same_as_the_task_read_back(store: TaskStore) -> None:
    """The claim's row comes back in binary, a read in text: the same task, to the last bit of every time."""
    with store.transaction() as tree:
        tree.add(Task(name="job", priority="P0", description="d\u00e9j\u00e0", run={"kind": "argv", "argv": ["true"]}))
        tree.add(
            Task(name="kid", parent="job", source={"task": "job", "step": 1}, run={"kind": "shell", "shell": "true"})
        )
    claimed, requeued = store.claim(None, runner_identity(store.host), run_tag())  # type: ignore[misc]
    assert claimed.name == "kid" and requeued is False
    assert claimed == store.get("kid") and claimed.source == {"task": "job", "step": 1}
    assert isinstance(claimed.started_ts, float) and isinstance(claimed.execution_count, int)


def test_json_columns_a_person_edited_read_as_written_and_a_broken_one_is_named(
    store: TaskStore, fleet_url: str
) -> None:
    """A claim reads its row's JSON columns as they are: a value edited by hand (spaces, new lines) reads the
    same as one self-heal wrote, and one that is no JSON is named with its task and column."""
    with store.transaction() as tree:
        tree.add(Task(name="t", run={"kind": "argv", "argv": ["true"]}))
        tree.add(Task(name="u", run={"kind": "argv", "argv": ["true"]}))
    with psycopg.connect(fleet_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tasks SET run_spec = %s, history = %s, extra = %s WHERE task_name = 't'",
            (' {"kind": "argv",\n "argv": ["true"]} ', '[\n  {"ts": "t0", "what": "-> NEW"}\n]\n', ' {"k": [1, 2]}'),
        )
        conn.execute("UPDATE tasks SET extra = '{\"k\": 1} trailing' WHERE task_name = 'u'")
    claimed, _ = store.claim(None, runner_identity(store.host), run_tag(), avoid=["u"])  # type: ignore[misc]
    assert claimed.name == "t" and claimed.run is not None and claimed.run.argv == ("true",)
    assert claimed.extra == {"k": [1, 2]}
    assert [h["what"] for h in claimed.history] == ["-> NEW", f"{NEW} -> {PROCESSING}"]
    with pytest.raises(StateError, match=r"task 'u': column extra: invalid JSON \(Extra data"):
        store.get("u")


def test_a_lease_that_ran_out_is_taken_back_by_a_claim_that_found_another_task(fleet_url: str, tmp_path: Path) -> None:
    """The claim's own row says a lease ran out (the oldest heartbeat of the running tasks): the task is
    taken back while the claim runs another; with every lease held it says nothing."""
    config = load_config()
    a = host_store(config, "box-a", tmp_path, lease_s=60.0)
    b = host_store(config, "box-b", tmp_path, lease_s=60.0)
    with a.transaction() as tree:
        for name in ("t1", "t2", "t3"):
            tree.add(Task(name=name, run={"kind": "shell", "shell": "true"}))
    first, _ = a.claim(None, runner_identity(a.host), run_tag())  # type: ignore[misc]
    second, _ = b.claim(None, runner_identity(b.host), run_tag())  # type: ignore[misc]
    assert b.taken_back == [] and {first.name, second.name} == {"t1", "t2"}
    with psycopg.connect(fleet_url) as conn:  # a's last heartbeat, 61 s ago by the database's clock
        conn.execute("UPDATE tasks SET heartbeat_ts = heartbeat_ts - 61 WHERE task_name = %s", (first.name,))
    third, _ = b.claim(None, runner_identity(b.host), run_tag())  # type: ignore[misc]
    assert third.name == "t3" and [(t.name, host) for t, host in b.taken_back] == [(first.name, "box-a")]
    assert b.get(first.name).exec_state == NORMAL_CRASH and b.get(second.name).exec_state == PROCESSING


def test_beat_and_run_next_task_and_mark_start_stamp_the_databases_clock(
    store: TaskStore, clock: FakeClock, fleet_url: str
) -> None:
    """`tasks.py beat`, `run-next --task NAME` and `mark NAME start` stamp the lease's first times as the claim
    does: the host's clock (a fake one here, years off) never reaches started_ts, heartbeat_ts or activity_ts."""
    from selfheal.tasks.run import TaskRunner

    clock.advance(-10 * 365 * 86400)
    with store.transaction() as tree:
        tree.add(Task(name="agent-work"))
        tree.add(Task(name="direct", run={"kind": "argv", "argv": ["true"]}))
    with psycopg.connect(fleet_url) as conn:
        (db_now,) = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()  # type: ignore[misc]

    def near(ts: float | None) -> bool:
        return ts is not None and abs(ts - db_now) < 60

    with store.transaction() as tree:
        started = tree.transition("agent-work", PROCESSING, "an agent started it")
    assert near(started.started_ts) and near(started.heartbeat_ts) and near(started.activity_ts)
    with psycopg.connect(fleet_url, autocommit=True) as conn:  # its heartbeat, an hour old
        conn.execute("UPDATE tasks SET heartbeat_ts = heartbeat_ts - 3600, activity_ts = activity_ts - 3600")
    stamp = store.beat("agent-work")
    beaten = store.get("agent-work")
    assert near(stamp) and beaten.heartbeat_ts == beaten.activity_ts == stamp

    result = TaskRunner(store).run_next(only="direct")
    assert result.outcome == "succeeded"
    ran = store.get("direct")
    assert near(ran.started_ts) and near(ran.last_executed_ts)


def test_a_lease_older_than_tasks_lease_s_is_taken_back_and_the_late_finish_is_refused(
    fleet_url: str, tmp_path: Path
) -> None:
    """Host a claims and stops beating; host b's claim takes the task back (NORMAL_CRASH, history and
    main_logs say from whom) and runs it (execution_count 2); a's late finish is refused and recorded."""
    config = load_config()
    a = host_store(config, "box-a", tmp_path, lease_s=60.0)
    b = host_store(config, "box-b", tmp_path, lease_s=60.0)
    with a.transaction() as tree:
        tree.add(Task(name="job", run={"kind": "shell", "shell": "true"}))
    old_runner = runner_identity(a.host)
    first, _ = a.claim(None, old_runner, run_tag())  # type: ignore[misc]
    assert b.claim(None, runner_identity(b.host), run_tag()) is None  # a's lease holds
    with psycopg.connect(fleet_url) as conn:  # a's last heartbeat, 61 s ago by the database's clock
        conn.execute("UPDATE tasks SET heartbeat_ts = heartbeat_ts - 61 WHERE task_name = 'job'")
    new_runner = runner_identity(b.host)
    second, _ = b.claim(None, new_runner, run_tag())  # type: ignore[misc]
    assert [(t.name, host) for t, host in b.taken_back] == [("job", "box-a")]
    assert second.name == "job" and second.execution_count == 2 and second.runner == new_runner
    assert second.run_id != first.run_id
    took = [h for h in second.history if h["what"] == f"{PROCESSING} -> {NORMAL_CRASH}"]
    assert len(took) == 1 and took[0]["reason"].startswith(
        f"lease expired, taken back from host box-a (run {first.run_id}"
    )
    assert not a.touch_running("job", old_runner)  # a's heartbeat now tells it to stop its command

    # a's runner ends after all and reports: refused, recorded, b's run untouched.
    late_runner = TaskRunner(a)
    log = BoundedLog(a.log_path("job"), max_chars=10_000, keep_chars=5_000)
    result = late_runner._finish(
        "job",
        runner=old_runner,
        outcome="succeeded",
        failed=None,
        duration=1.0,
        log=log,
        run_id=first.run_id,
        started=first.started_ts,
    )
    log.close()
    assert result.outcome == "superseded" and "late finish" in result.message and "refused" in result.message
    now = b.get("job")
    assert (now.exec_state, now.run_id, now.runner) == (PROCESSING, second.run_id, new_runner)
    runs = b.db.runs("job")
    assert [r["run_status"] for r in runs] == ["taken_back", "refused"]
    assert first.run_id in runs[1]["run_message"] and second.run_id in runs[1]["run_message"]
    events = [
        json.loads(line) for p in sorted(a.state.sub("ledger").glob("*.jsonl")) for line in p.read_text().splitlines()
    ]
    refused = [e for e in events if e["event"] == "superseded"]
    assert len(refused) == 1 and refused[0]["status"] == "refused" and refused[0]["run_id"] == first.run_id


def test_a_child_added_while_its_parent_is_claimed_never_leaves_a_claimed_parent_with_an_open_child(
    store: TaskStore, fleet_url: str
) -> None:
    """Two connections: one adds a child to `p` and holds its transaction open; a claim meanwhile skips the
    locked parent; once the child is committed, the parent waits for it; a claim that holds the parent
    first makes the adder wait, and the child then lands under a running parent (as on SQLite)."""
    with store.transaction() as tree:
        tree.add(Task(name="p", run={"kind": "shell", "shell": "true"}))
        tree.add(Task(name="other", run={"kind": "shell", "shell": "true"}, priority="P2"))
    config = load_config()
    adder = TaskStore(store.state, config, FakeClock())
    claimer = TaskStore(StateRoot(store.state.root.parent / "claimer").ensure(), config, FakeClock())
    # Each store of one process shares its connection (database_for): give the adder its own.
    adder._db = pg.PgTaskDB(pg.Database(fleet_url, "adder"), busy_timeout_s=5).open()
    claimer._db = pg.PgTaskDB(pg.Database(fleet_url, "claimer"), busy_timeout_s=5).open()
    runner = runner_identity("claimer")
    with adder.transaction() as tree:
        tree.add(Task(name="late-child", parent="p", run={"kind": "shell", "shell": "true"}))
        claimed, _ = claimer.claim(None, runner, run_tag())  # type: ignore[misc]
        assert claimed.name == "other"  # p is locked by the adder: skipped, not waited for
    claimed, _ = claimer.claim(None, runner, run_tag())  # type: ignore[misc]
    assert claimed.name == "late-child"  # the child first; p waits for it
    assert claimer.claim(None, runner, run_tag()) is None

    # The other way round: the claim's transaction holds p; the adder waits for it, then adds under it.
    with store.transaction() as tree:
        tree.add(Task(name="q", run={"kind": "shell", "shell": "true"}))
    entered = threading.Event()
    added: list[str] = []

    def add_child() -> None:
        entered.wait(10)
        with adder.transaction() as tree:
            tree.add(Task(name="q-child", parent="q", run={"kind": "shell", "shell": "true"}))
        added.append(tree.get("q").exec_state)

    thread = threading.Thread(target=add_child)
    thread.start()
    with claimer.db.lock, claimer.db.write():
        _, picked = claimer.db.claim(None, runner=runner, entry={}, tag="q-run", now=0.0)
        assert picked is not None and picked.name == "q"
        entered.set()
        thread.join(0.5)
        assert thread.is_alive()  # the adder waits on q's row lock
    thread.join(10)
    assert added == [PROCESSING]


def test_a_child_committed_after_the_claim_began_shuts_the_parents_gate_at_its_row_lock(
    store: TaskStore, fleet_url: str
) -> None:
    """The claim is one statement; its snapshot may predate a child that another host commits before the
    statement locks the parent's row. Adding the child raised the parent's open_children (a trigger, in the
    child's transaction), so the lock's recheck of the changed row (READ COMMITTED) finds the gate shut.
    The window is made wide here: the adder holds p's row, its child added and not committed, and the claim
    runs with a waiting FOR UPDATE instead of SKIP LOCKED, so it starts, waits on p, and looks at p again
    once the adder commits. (SKIP LOCKED meets the very same recheck when the commit falls between the
    statement's start and its lock.) A gate that read the children (NOT EXISTS) would see none here."""
    with store.transaction() as tree:
        tree.add(Task(name="p", priority="P0", run={"kind": "shell", "shell": "true"}))
    adder = TaskStore(store.state, load_config(), FakeClock())
    adder._db = pg.PgTaskDB(pg.Database(fleet_url, "adder"), busy_timeout_s=30).open()
    waiting = pg.PgTaskDB(pg.Database(fleet_url, "claimer"), busy_timeout_s=30).open()
    waiting.d = waiting.d._replace(claim_lock=" FOR UPDATE")
    got: list[Any] = []

    def claim() -> None:
        got.append(waiting.claim(None, runner=runner_identity("claimer"), entry={}, tag="w", now=0.0))

    thread = threading.Thread(target=claim)
    with adder.transaction() as tree, psycopg.connect(fleet_url, autocommit=True) as watch:
        tree.add(Task(name="c", parent="p", run={"kind": "shell", "shell": "true"}))
        tree.flush()  # the child's row and p's open_children written, p's row locked until the commit
        thread.start()
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and not watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'self-heal@claimer'"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
        ):
            pass
        assert time.monotonic() < deadline, "the claim never waited on p's row"
    thread.join(30)
    assert got == [(False, None)]  # p's gate shut at the lock; c came after the claim's snapshot
    assert store.get("p").exec_state == NEW
    claimed, _ = store.claim(None, runner_identity(store.host), run_tag())  # type: ignore[misc]
    assert claimed.name == "c"


# -- settings, outages, fleet status ------------------------------------------------------------------------


def test_lease_s_must_outlast_two_heartbeats(write_config: Callable[[str], Path]) -> None:
    write_config("process: {heartbeat_s: 10}\ntasks: {lease_s: 15}\n")
    with pytest.raises(ConfigError, match=r"tasks\.lease_s.*twice process\.heartbeat_s") as err:
        load_config()
    assert "15" in str(err.value)


def test_with_the_database_down_run_next_claims_nothing_and_says_so(home: Path, tmp_path: Path) -> None:
    """Exit 4 (try later), the reason, and what happens to running tasks; no traceback, no tasks.db."""
    dead = f"postgresql://someone:s3cretpw@/x?host={tmp_path}/none"
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / "tasks.py"), "run-next"],
        env=script_env(home, SELFHEAL_DATABASE_URL=dead),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 4, proc.stderr
    assert "fleet's task tree is unreachable" in proc.stderr and "claims no task" in proc.stderr
    assert "Traceback" not in proc.stderr and "s3cretpw" not in proc.stderr
    assert not (home / "tasks.db").exists()


def test_the_health_check_says_this_host_claims_nothing_while_the_database_is_down(home: Path, tmp_path: Path) -> None:
    env = script_env(home, SELFHEAL_DATABASE_URL=f"postgresql:///x?host={tmp_path}/none&user=nobody")
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / "health_check.py"), "--json"], env=env, capture_output=True, text=True, check=False
    )
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["fleet"]["status"] == "warn"
    assert "claims no task from the shared task tree" in checks["fleet"]["detail"]
    assert checks["tasks"]["status"] == "warn" and "claims no task" in checks["tasks"]["detail"]
    assert "Traceback" not in proc.stderr


def test_the_health_check_reads_this_hosts_runs_from_the_shared_tree(
    fleet_url: str, home: Path, tmp_path: Path
) -> None:
    a = host_store(load_config(), "box-a", tmp_path)
    with a.transaction() as tree:
        tree.add(Task(name="running", run={"kind": "shell", "shell": "true"}))
    a.claim(None, {"pid": 2**22 + 7, "create_time": 1.0, "host": "box-a"}, run_tag())  # a runner that is gone
    for host, status in (("box-b", "ok"), ("box-a", "warn")):
        env = script_env(home, SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID=host)
        proc = subprocess.run(
            [PYTHON, str(SCRIPTS / "health_check.py"), "--json"], env=env, capture_output=True, text=True, check=False
        )
        tasks = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "tasks")
        assert tasks["status"] == status, (host, tasks)
    assert "running (runner gone)" in tasks["detail"]


def test_a_store_whose_database_went_down_raises_fleet_tree_down_at_the_claim(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.db  # noqa: B018 - connected
    database = store.db.database  # type: ignore[attr-defined]
    monkeypatch.setattr(database, "url", database.url.replace("host=", "host=/nonexistent"))
    database.close()
    with pytest.raises(FleetTreeDown, match="claims no task"):
        store.claim(None, runner_identity(store.host), run_tag())


def test_fleet_status_lists_the_leases_held(fleet_url: str, home: Path, tmp_path: Path) -> None:
    """`tasks.py fleet status`: which host runs which task, since when, and when its lease runs out."""
    a = host_store(load_config(), "box-a", tmp_path)
    with a.transaction() as tree:
        tree.add(Task(name="long-job", run={"kind": "shell", "shell": "true"}))
    a.claim(None, runner_identity(a.host), run_tag())
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / "tasks.py"), "fleet", "status", "--json"],
        env=script_env(home, SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID="box-b"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (lease,) = report["leases"]
    assert (lease["task"], lease["host"], lease["expired"]) == ("long-job", "box-a", False)
    assert report["lease_s"] == 120.0 and 100 < lease["expires_in_s"] <= 120
    assert lease["since"] and lease["expires"] > lease["heartbeat"]
    text = subprocess.run(
        [PYTHON, str(SCRIPTS / "tasks.py"), "fleet", "status"],
        env=script_env(home, SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID="box-b"),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "long-job: host box-a" in text and "lease until" in text


def test_stuck_detection_looks_only_at_this_hosts_runs(fleet_url: str, tmp_path: Path) -> None:
    """Another host's silent run is the lease's business, never this host's to judge or kill."""
    config = load_config()
    a = host_store(config, "box-a", tmp_path, stuck_after_s=1.0)
    b = host_store(config, "box-b", tmp_path, stuck_after_s=1.0)
    with a.transaction() as tree:
        tree.add(Task(name="quiet", run={"kind": "shell", "shell": "true"}))
    a.claim(None, runner_identity(a.host), run_tag())
    later = a.clock.time() + 3600
    assert find_stuck(b, now=later) == []
    assert [f.task for f in find_stuck(a, now=later)] == ["quiet"]


@pytest.mark.parametrize("taken_meanwhile", [False, True])
def test_a_run_that_ends_while_the_database_is_down_records_its_outcome_once_it_is_back(
    store: TaskStore, clock: FakeClock, fleet_url: str, tmp_path: Path, taken_meanwhile: bool
) -> None:
    """The command finished; the database is down, so the outcome waits (tasks.finish_wait_s) and is written
    when it answers again. If another host took the task back meanwhile (the lease ran out), it is refused."""
    with store.transaction() as tree:
        tree.add(Task(name="t", run={"kind": "shell", "shell": "true"}))
    runner = runner_identity(store.host)
    claimed, _ = store.claim(None, runner, run_tag())  # type: ignore[misc]
    database = store.db.database  # type: ignore[attr-defined]
    good = database.url
    database.url = good.replace("host=", "host=/nonexistent")
    database.close()
    waits: list[float] = []
    real_sleep = clock.sleep

    def database_back(seconds: float) -> None:
        waits.append(seconds)
        real_sleep(seconds)
        database.url = good
        if taken_meanwhile:
            with psycopg.connect(fleet_url) as conn:
                conn.execute("UPDATE tasks SET heartbeat_ts = heartbeat_ts - 600 WHERE task_name = 't'")
            other = host_store(load_config(), "box-b", tmp_path)
            other._db = pg.PgTaskDB(pg.Database(fleet_url, "box-b"), busy_timeout_s=5).open()  # its own connection
            assert other.claim(None, runner_identity("box-b"), run_tag()) is not None

    clock.sleep = database_back  # type: ignore[method-assign]
    result = TaskRunner(store)._run_claimed(claimed, runner, False, claimed.started_ts or 0.0)
    assert waits  # it waited for the database
    task = store.get("t")
    if taken_meanwhile:
        assert result.outcome == "superseded" and "refused" in result.message
        assert task.exec_state == PROCESSING and task.runner and task.runner["host"] == "box-b"
    else:
        assert result.outcome == "succeeded" and task.exec_state == END


# -- a host's own tree, imported into the fleet's --------------------------------------------------------------


def single_host(home: Path, clock: FakeClock) -> TaskStore:
    """This host's store as it was before fleet mode: tasks.db under its state root."""
    config = load_config()
    return TaskStore(
        StateRoot(home).ensure(), dataclasses.replace(config, store=dataclasses.replace(config.store, url=None)), clock
    )


def test_a_hosts_own_task_tree_is_imported_into_the_fleets_once_on_fleet_init(
    home: Path, fleet_url: str, clock: FakeClock
) -> None:
    """`tasks.py fleet init` on a host with a tasks.db: its tasks (with their parent gates), archive and run
    log go into the fleet's tree in one go, said once; tasks.db is kept in tasks/fleet-import-<ts>/."""
    local = single_host(home, clock)
    with local.transaction() as tree:
        tree.add(Task(name="old-parent", run={"kind": "argv", "argv": ["true"]}))
        tree.add(Task(name="old-child", parent="old-parent", run={"kind": "argv", "argv": ["true"]}))
        tree.add(Task(name="done", run={"kind": "argv", "argv": ["true"]}))
        tree.transition("done", PROCESSING)
        tree.log_run(tree.get("done"), status="success", level="INFO", ended=clock.time(), message="ok", content=None)
        tree.transition("done", END)
    clock.advance(8 * 86400)
    with local.transaction() as tree:
        tree.archive_finished(older_than_s=7 * 86400)
    local.close()
    env = {"SELFHEAL_DATABASE_URL": fleet_url}
    first = call_script("tasks.py", "fleet", "init", home=home, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("imported this host's task tree (2 task(s), 1 archived)") == 1, first.stderr
    assert not (home / "tasks.db").exists()
    (backup,) = (home / "tasks").glob("fleet-import-*")
    assert (backup / "tasks.db").is_file() and str(backup) in first.stderr
    with psycopg.connect(fleet_url) as conn:
        assert conn.execute("SELECT task_name, open_children FROM tasks ORDER BY 1").fetchall() == [
            ("old-child", 0),
            ("old-parent", 1),
        ]
        assert conn.execute("SELECT task_name FROM tasks_archive").fetchall() == [("done",)]
        assert conn.execute("SELECT task_name, run_status FROM main_logs").fetchall() == [("done", "success")]
    again = call_script("tasks.py", "list", "--json", home=home, env=env)
    assert again.returncode == 0 and "imported" not in again.stderr  # once
    assert {t["name"] for t in json.loads(again.stdout)["tasks"]} == {"old-child", "old-parent"}


def test_an_older_json_tree_is_imported_into_the_fleets_on_first_fleet_use(store: TaskStore, home: Path) -> None:
    """tasks/*.json of a version before tasks.db: kept in tasks/json-backup-<ts>/ as a single host keeps
    them, and the tree lands in the fleet's, on the first command in fleet mode."""
    from test_taskdb import write_json_tree

    made = write_json_tree(home, 12)
    assert {t.name for t in store.iter_tasks()} == {t.name for t in made}
    assert any("imported the task tree of 12 task file(s)" in n for n in store.notices)
    assert any("imported this host's task tree (12 task(s), 0 archived)" in n for n in store.notices)
    assert not list((home / "tasks").glob("*.json")) and len(list((home / "tasks").glob("json-backup-*/*.json"))) == 12
    for task in made:
        got = store.get(task.name)
        assert (got.parent, got.level, got.exec_state, got.history) == (
            task.parent,
            task.level,
            task.exec_state,
            task.history,
        )


def test_a_hosts_tree_with_a_name_the_fleet_has_is_refused_and_nothing_is_imported(
    home: Path, fleet_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    """A clash is exit 2 naming the task, with no traceback; the fleet's tree and this host's stay as they were."""
    other = host_store(load_config(), "box-other", tmp_path)
    with other.transaction() as tree:
        tree.add(Task(name="nightly-report"))
    local = single_host(home, clock)
    with local.transaction() as tree:
        tree.add(Task(name="nightly-report"))
        tree.add(Task(name="mine"))
    local.close()
    refused = call_script("tasks.py", "list", home=home, env={"SELFHEAL_DATABASE_URL": fleet_url})
    assert refused.returncode == 2, refused.stderr
    assert "the fleet's task tree already has task(s) named 'nightly-report'" in refused.stderr
    assert "nothing changed" in refused.stderr and "Traceback" not in refused.stderr
    with psycopg.connect(fleet_url) as conn:
        assert conn.execute("SELECT task_name FROM tasks").fetchall() == [("nightly-report",)]
    assert (home / "tasks.db").exists() and not list((home / "tasks").glob("fleet-import-*"))
    assert single_host(home, clock).get("mine").name == "mine"  # the host's own tree, whole


def test_a_deadlock_between_two_hosts_is_lock_busy_try_later_and_nothing_of_it_is_written(
    store: TaskStore, fleet_url: str
) -> None:
    """Settling a child now changes its parent's row (the gate column): a host changing the parent and then
    the child, against one settling the child (which then waits on the parent), is a deadlock. The database
    rolls one back; when it is this host's, the store says LockBusy (exit 4, try later), not a traceback."""
    from selfheal.errors import LockBusy

    with store.transaction() as tree:
        tree.add(Task(name="p"))
        tree.add(Task(name="c", parent="p"))
    store.db.execute("SET deadlock_timeout = '100ms'")  # this host finds the deadlock first: its transaction goes
    other = psycopg.connect(fleet_url, autocommit=True)
    other.execute("SET deadlock_timeout = '30s'")
    waiting = threading.Event()
    done: list[str] = []

    def settle_child() -> None:
        with other.transaction():
            waiting.set()
            other.execute("UPDATE tasks SET exec_state = 'END', status = 'done' WHERE task_name = 'c'")
        done.append("committed")

    thread = threading.Thread(target=settle_child)
    broke = "a deadlock the database broke by rolling this transaction back"
    with pytest.raises(LockBusy, match=broke), store.transaction() as tree:
        tree.update("p", description="changed on this host")
        tree.flush()  # p's row locked
        thread.start()
        waiting.wait(10)
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and not store.db.execute("SELECT 1 FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()").fetchone()
        ):
            pass
        tree.update("c", description="and its child")
        tree.flush()  # waits on the other host, which waits on p: the database breaks the cycle here
    thread.join(30)
    other.close()
    assert done == ["committed"]
    assert store.get("p").description is None and store.get("c").exec_state == END
    assert store.db.execute("SELECT open_children FROM tasks WHERE task_name = 'p'").fetchone() == (0,)
