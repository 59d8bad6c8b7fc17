"""The task tree on SQLite (tasks.db): concurrent claims, the import of a JSON tree, bulk add, and what
happens to a database that is damaged, locked or too new. Real processes, real SIGKILL, real locks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.config import load_config
from selfheal.state.root import StateRoot, write_json
from selfheal.state.taskdb import SCHEMA_VERSION
from selfheal.tasks.tree import END, NEW, PROCESSING, Task, TaskStore
from selfheal.testing import FakeClock

TASKS = str(SCRIPTS / "tasks.py")
HELPERS = Path(__file__).resolve().parent / "helpers"


def tasks(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return call_script("tasks.py", *args, home=home)


def open_store(home: Path) -> TaskStore:
    return TaskStore(StateRoot(home), load_config())


def names_in_db(home: Path) -> list[str]:
    store = open_store(home)
    try:
        return store.db.names()
    finally:
        store.close()


# -- concurrent runners ----------------------------------------------------------------------------------


def test_six_runner_processes_run_each_task_of_a_tree_exactly_once_and_none_starves(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    write_config("process: {heartbeat_s: 0.2}\n")
    journal = tmp_path / "journal"
    store = open_store(home)
    with store.transaction() as tree:
        for p in range(6):
            tree.add(Task(name=f"parent-{p}", run={"kind": "shell", "shell": f"echo parent-{p} >> {journal}"}))
            for c in range(4):
                cmd = f"echo child-{p}-{c} >> {journal}; sleep 0.2"
                tree.add(Task(name=f"child-{p}-{c}", parent=f"parent-{p}", run={"kind": "shell", "shell": cmd}))
    store.close()
    go = tmp_path / "go"
    env = script_env(home, PYTHONPATH=str(SCRIPTS))
    workers = [
        subprocess.Popen(
            [PYTHON, str(HELPERS / "task_worker.py"), str(go)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(6)
    ]
    time.sleep(1.0)  # every worker has started and waits for the go
    go.touch()
    outs = []
    for worker in workers:
        out, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err.decode()
        outs.append(json.loads(out))
    ran = [name for o in outs for name in o["ran"]]
    lines = journal.read_text().splitlines()
    expected = {f"parent-{p}" for p in range(6)} | {f"child-{p}-{c}" for p in range(6) for c in range(4)}
    assert sorted(ran) == sorted(expected)  # each claimed once...
    assert sorted(lines) == sorted(expected)  # ...and run once
    assert all(o["ran"] for o in outs), outs  # every runner got work: none starved
    for p in range(6):  # and each parent ran after all of its children
        assert lines.index(f"parent-{p}") > max(lines.index(f"child-{p}-{c}") for c in range(4))
    store = open_store(home)
    assert {t.exec_state for t in store.iter_tasks()} == {END}
    assert len(store.db.execute("SELECT * FROM main_logs").fetchall()) == 30  # one row per run
    store.close()


# -- the JSON tree of older versions ------------------------------------------------------------------------


def write_json_tree(home: Path, count: int, *, clock: FakeClock | None = None) -> list[Task]:
    """A tree as versions before tasks.db kept it: tasks/<name>.json, one file per task."""
    clock = clock or FakeClock()
    folder = StateRoot(home).ensure().sub("tasks")
    made: list[Task] = []
    for i in range(count):
        parent = made[i // 2] if i and i % 3 else None
        task = Task(
            name=f"old-{i:05d}",
            priority=("P0", "P1", "P2")[i % 3],
            parent=parent.name if parent else None,
            root=parent.root if parent else f"old-{i:05d}",
            level=parent.level + 1 if parent else 1,
            run={"kind": "argv", "argv": ["true"], "cwd": "/"},
            exec_state=END if i % 5 == 0 else NEW,
            retry_count=i % 4,
            created_ts=clock.time() + i,
            updated_ts=clock.time() + i,
            history=[{"ts": "2026-01-01T00:00:00Z", "what": "created (regular, P1)"}],
        )
        write_json(folder / f"{task.name}.json", task.to_json(), durable=False)
        made.append(task)
    return made


def test_a_json_tree_is_imported_once_on_first_use_and_its_files_kept(home: Path) -> None:
    made = write_json_tree(home, 40)
    first = tasks(home, "list", "--json")
    assert first.returncode == 0, first.stderr
    assert "imported the task tree of 40 task file(s)" in first.stderr
    listed = {t["name"]: t for t in json.loads(first.stdout)["tasks"]}
    assert set(listed) == {t.name for t in made}
    store = open_store(home)
    for task in made:
        got = store.get(task.name)
        assert (got.parent, got.level, got.exec_state, got.retry_count, got.run, got.history) == (
            task.parent,
            task.level,
            task.exec_state,
            task.retry_count,
            task.run,
            task.history,
        )
    store.close()
    assert not list((home / "tasks").glob("*.json"))
    (backup,) = (home / "tasks").glob("json-backup-*")
    assert len(list(backup.glob("*.json"))) == 40
    again = tasks(home, "list")
    assert again.returncode == 0 and "imported" not in again.stderr  # reported once


@pytest.mark.slow
def test_a_sigkill_during_the_import_loses_nothing_and_the_next_start_completes_it(home: Path) -> None:
    made = write_json_tree(home, 3000)
    for delay in (0.3, 0.5, 0.7, 0.9, 1.2):
        proc = subprocess.Popen([PYTHON, TASKS, "list", "--json"], env=script_env(home), stdout=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Whatever the moment: every task is in the database or still in its file (or both), never neither.
        in_files = {p.stem for p in (home / "tasks").glob("*.json")}
        in_backup = {p.stem for p in (home / "tasks").glob("json-backup-*/*.json")}
        assert in_files | in_backup == {t.name for t in made}
        in_db = set(names_in_db(home)) if (home / "tasks.db").exists() else set()
        assert in_db in (set(), {t.name for t in made})  # one transaction: all or nothing
    done = tasks(home, "list", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["tasks"]) == 3000
    assert not list((home / "tasks").glob("*.json"))
    assert len(list((home / "tasks").glob("json-backup-*/*.json"))) == 3000


def test_an_import_stopped_between_its_commit_and_its_file_moves_is_finished_by_the_next_start(home: Path) -> None:
    write_json_tree(home, 5)
    assert len(names_in_db(home)) == 5  # the first use imports
    (backup,) = (home / "tasks").glob("json-backup-*")
    for path in backup.glob("*.json"):  # as a SIGKILL right after the commit leaves it
        os.replace(path, home / "tasks" / path.name)
    db = sqlite3.connect(home / "tasks.db")
    db.execute("UPDATE meta SET value = ? WHERE key = 'json_import'", (f"moving:{backup.name}",))
    db.commit()
    db.close()
    done = tasks(home, "list", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["tasks"]) == 5 and "imported" in done.stderr
    assert not list((home / "tasks").glob("*.json")) and len(list(backup.glob("*.json"))) == 5


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"name": "old-00003", "exec_state": ', "old-00003.json is unreadable"),
        (
            json.dumps({**Task(name="old-00003").to_json(), "exec_state": "DONE"}),
            "old-00003.json: exec_state: must be one of NEW, PROCESSING, END, ERROR_FIX_PENDING, NORMAL_CRASH, "
            "REQUIRES_MANUAL, VOID (value 'DONE')",
        ),
        (
            json.dumps({**Task(name="old-00003").to_json(), "run": {"kind": "argv", "argv": [1, 2]}}),
            "old-00003.json: run.argv: must be a non-empty list of strings without NUL bytes (value [1, 2])",
        ),
    ],
)
def test_a_json_tree_that_cannot_be_imported_whole_is_refused_naming_the_file_and_nothing_is_lost(
    home: Path, content: str, expected: str
) -> None:
    write_json_tree(home, 10)
    bad = home / "tasks" / "old-00003.json"
    bad.write_text(content)
    before = {p.name: p.read_bytes() for p in (home / "tasks").iterdir()}
    refused = tasks(home, "list")
    assert refused.returncode == 2, refused.stderr
    assert expected in refused.stderr and "not imported" in refused.stderr and "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in (home / "tasks").iterdir()} == before  # nothing moved or changed
    db = sqlite3.connect(home / "tasks.db")
    assert db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0  # not half of it either
    db.close()
    bad.write_text(json.dumps(Task(name="old-00003", created_ts=1.0, updated_ts=1.0).to_json()))
    fixed = tasks(home, "list", "--json")
    assert fixed.returncode == 0 and len(json.loads(fixed.stdout)["tasks"]) == 10


# -- bulk add ---------------------------------------------------------------------------------------------------


def test_add_from_a_file_adds_every_line_in_one_go(home: Path, tmp_path: Path) -> None:
    lines = [
        {"name": "flow", "display_name": "end to end", "run": ["true"]},
        {"name": "fetch", "parent": "flow", "priority": "P0", "run": ["echo", "fetched"], "timeout": 30},
        {"name": "FIX-flow-x", "parent": "flow", "shell": "true"},
        {"name": "idea", "type": "creative"},
    ]
    source = tmp_path / "tasks.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    done = tasks(home, "add", "--from", str(source), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True, "added": 4, "from": str(source)}
    listed = [t["name"] for t in json.loads(tasks(home, "list", "--json").stdout)["tasks"]]
    assert listed == ["FIX-flow-x", "fetch", "flow", "idea"]
    store = open_store(home)
    fetch = store.get("fetch")
    assert fetch.run is not None
    assert (fetch.parent, fetch.level, fetch.priority, fetch.run.to_json()) == (
        "flow",
        2,
        "P0",
        {
            "kind": "argv",
            "argv": ["echo", "fetched"],
            "cwd": os.getcwd(),
            "timeout_s": 30,
            "max_attempts": None,
            "target": None,
        },
    )
    assert store.get("FIX-flow-x").type == "fix"
    store.close()


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ({"name": "d", "colour": "red"}, "line 4: unknown key 'colour'"),
        # a key named like a credential is named whole, not read by the redactor as a secret and its value
        ({"name": "d", "token": "red"}, "line 4: unknown key 'token'"),
        ({"name": "d", "priority": "P9"}, "line 4: priority: must be one of P0, P1, P2 (value 'P9')"),
        ({"name": "d", "run": "true"}, "line 4: run: must be a command as a list of strings (value 'true')"),
        ({"name": "a"}, "line 4: task 'a' already exists"),
        ({"name": "d", "parent": "nosuch"}, "line 4: parent 'nosuch' does not exist"),
        ({"name": "../d"}, "line 4: invalid task id '../d'"),
        ("not json", "line 4: not JSON"),
    ],
)
def test_add_from_a_file_is_all_or_nothing(home: Path, tmp_path: Path, bad_line: Any, expected: str) -> None:
    tasks(home, "add", "existing")
    source = tmp_path / "tasks.jsonl"
    good = [{"name": "a"}, {"name": "b", "parent": "a"}, {"name": "c", "parent": "b"}]
    text = [json.dumps(x) for x in good] + [bad_line if isinstance(bad_line, str) else json.dumps(bad_line)]
    source.write_text("\n".join([*text, json.dumps({"name": "e"})]) + "\n")
    refused = tasks(home, "add", "--from", str(source))
    assert refused.returncode == 2, refused.stderr
    assert f"{source} {expected}" in refused.stderr and "nothing was added" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert names_in_db(home) == ["existing"]


def test_add_from_a_file_refuses_other_options_and_a_missing_file(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_text(json.dumps({"name": "a"}) + "\n")
    for args, text in (
        (["add", "x", "--from", str(source)], "give no name or other options"),
        (["add", "--from", str(source), "--priority", "P0"], "give no name or other options"),
        (["add", "--from", str(tmp_path / "nosuch.jsonl")], f"--from {tmp_path / 'nosuch.jsonl'}: cannot read it"),
    ):
        proc = tasks(home, *args)
        assert proc.returncode == 2 and text in proc.stderr, (args, proc.stderr)
    assert names_in_db(home) == []


# -- a damaged, locked or newer database ---------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_reported_and_left_as_it_is(home: Path) -> None:
    StateRoot(home).ensure()
    (home / "tasks.db").write_bytes(b"these are not the tasks you are looking for\n" * 100)
    before = (home / "tasks.db").read_bytes()
    for args in (["list"], ["add", "x"], ["run-next"]):
        proc = tasks(home, *args)
        assert proc.returncode == 3, (args, proc.stderr)
        assert f"task database {home / 'tasks.db'} is unreadable (file is not a database)" in proc.stderr
        assert "left as it is" in proc.stderr and "Traceback" not in proc.stderr
    assert (home / "tasks.db").read_bytes() == before
    health = subprocess.run(
        [PYTHON, str(SCRIPTS / "health_check.py"), "--json"],
        env=script_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    check = next(c for c in json.loads(health.stdout)["checks"] if c["name"] == "tasks")
    assert check["status"] == "warn" and "is unreadable" in check["detail"]


def test_a_damaged_database_is_reported_as_malformed_not_a_traceback(home: Path) -> None:
    store = open_store(home)
    store.add_many((f"t{i}", Task(name=f"task-{i:04d}", description="x" * 400)) for i in range(400))
    store.close()
    path = home / "tasks.db"
    data = bytearray(path.read_bytes())
    page = 4096
    for start in range(2 * page, len(data) - page, 3 * page):  # scribble over a third of the pages
        data[start + 8 : start + page] = os.urandom(page - 8)
    path.write_bytes(bytes(data))
    proc = tasks(home, "list")
    assert proc.returncode == 3, proc.stderr
    assert f"task database {path} is unreadable" in proc.stderr and "Traceback" not in proc.stderr


def test_a_tasks_db_cut_to_nothing_is_refused_not_taken_for_a_new_empty_tree(home: Path) -> None:
    """A new database is made whole under another name and renamed into place, so an empty tasks.db was cut
    short by something else: every command refuses it (exit 3) and leaves it, where it once became an empty
    tree and every task was silently forgotten."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:  # each its own process, as cron runs them
        cmd = [PYTHON, str(SCRIPTS / "tasks.py"), *args]
        return subprocess.run(cmd, env=script_env(home), capture_output=True, text=True, timeout=60, check=False)

    assert run("add", "kept", "--", "true").returncode == 0
    (home / "tasks.db").write_bytes(b"")
    for args in (["list"], ["run-next", "--json"], ["add", "other", "--", "true"]):
        proc = run(*args)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert "is empty (0 bytes): cut short, not new" in proc.stderr
    assert (home / "tasks.db").stat().st_size == 0


def test_processes_starting_a_tree_at_once_make_one_database_and_lose_no_task(home: Path) -> None:
    StateRoot(home).ensure()
    procs = [
        subprocess.Popen(
            [PYTHON, str(SCRIPTS / "tasks.py"), "add", f"t{i}", "--", "true"],
            env=script_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert sorted(names_in_db(home)) == [f"t{i}" for i in range(6)]
    assert not [p.name for p in home.iterdir() if p.name.endswith(".tmp")]


def test_one_hand_edited_row_is_named_and_the_database_is_not_called_damaged(home: Path) -> None:
    for name in ("a", "b"):
        assert tasks(home, "add", name, "--", "true").returncode == 0
    with sqlite3.connect(home / "tasks.db") as conn:
        conn.execute("UPDATE tasks SET history = '{not json' WHERE task_name = 'a'")
    proc = tasks(home, "run-next", "--json")
    assert proc.returncode == 3
    message = json.loads(proc.stdout)["message"]
    assert "task 'a' column history is not valid JSON" in message and "unreadable" not in message


def test_a_write_lock_held_past_the_busy_timeout_is_exit_4_try_later_and_readers_still_read(
    home: Path, write_config: Callable[[str], Path]
) -> None:
    write_config("tasks: {busy_timeout_s: 0.5}\n")
    assert tasks(home, "add", "first").returncode == 0
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(home / 'tasks.db')!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\nprint('held', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        blocked = tasks(home, "add", "second")
        assert blocked.returncode == 4, blocked.stderr
        assert "stayed locked for 0.5s; try again later" in blocked.stderr and "Traceback" not in blocked.stderr
        assert time.monotonic() - started < 20
        listed = tasks(home, "list", "--json")  # WAL: a reader never waits for the writer
        assert listed.returncode == 0 and [t["name"] for t in json.loads(listed.stdout)["tasks"]] == ["first"]
    finally:
        holder.kill()
        holder.wait()
    assert tasks(home, "add", "second").returncode == 0


def test_a_database_from_a_newer_schema_is_refused_and_never_touched(home: Path) -> None:
    assert tasks(home, "add", "kept").returncode == 0
    db = sqlite3.connect(home / "tasks.db")
    db.execute("INSERT INTO schema_version (version, applied_ts) VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    before = (home / "tasks.db").read_bytes()
    for args in (["list"], ["add", "x"], ["run-next"]):
        proc = tasks(home, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert (
            f"task database {home / 'tasks.db'} has schema version {SCHEMA_VERSION + 1}, "
            f"newer than the {SCHEMA_VERSION} this self-heal knows; it was not touched" in proc.stderr
        )
    assert (home / "tasks.db").read_bytes() == before


def old_tree(home: Path, versions: int) -> None:
    """A tasks.db as a self-heal of schema version `versions` left it: the tree p (a (a1 NEW), b END), each
    task running `true`."""
    from selfheal.state.sql import SQLITE
    from selfheal.state.taskdb import MIGRATIONS

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(home / "tasks.db")
    db.execute("PRAGMA journal_mode=WAL")
    for version, statements in MIGRATIONS[:versions]:
        for statement in statements(SQLITE):
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version, applied_ts) VALUES (?, 0)", (version,))
    for name, parent, exec_state in (("p", None, "NEW"), ("a", "p", "NEW"), ("b", "p", "END"), ("a1", "a", "NEW")):
        db.execute(
            "INSERT INTO tasks (task_name, task_type, priority, status, exec_state, parent_task_id, root_task_id,"
            " task_level, created_ts, updated_ts, run_spec) VALUES (?, 'regular', 'P1', 'pending', ?, ?, 'p', 1, 1, 1,"
            ' \'{"kind": "argv", "argv": ["true"]}\')',
            (name, exec_state, parent),
        )
    db.commit()
    db.close()


def test_a_tasks_db_of_schema_version_1_gets_its_parent_gate_column_filled(home: Path) -> None:
    """Migration 2 on a tasks.db written by the version before: open_children counted for the trees already
    there (the parent gate of the claim), and kept from then on by its triggers."""
    old_tree(home, 1)
    store = open_store(home)
    assert store.db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,) == (3,)
    rows = store.db.execute("SELECT task_name, open_children FROM tasks ORDER BY task_name").fetchall()
    assert rows == [("a", 1), ("a1", 0), ("b", 0), ("p", 1)]
    assert [t.name for t in store.snapshot().actionable()] == ["a1"]
    with store.transaction() as tree:
        tree.transition("a1", "VOID")
    assert [t.name for t in store.snapshot().actionable()] == ["a"]
    store.close()


def trigger_programs(store: TaskStore, statement: str, params: Any = ()) -> dict[str, list[str]]:
    """The opcodes of each trigger program SQLite runs for `statement` (EXPLAIN lists them after its own)."""
    programs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for row in store.db.execute("EXPLAIN " + statement, params):
        if row[1] == "Init" and str(row[5] or "").startswith("-- TRIGGER "):  # (addr, opcode, p1, p2, p3, p4, ...)
            current = programs.setdefault(str(row[5])[len("-- TRIGGER ") :], [])
        elif current is not None:
            current.append(row[1])
    return programs


def test_a_tasks_db_of_schema_version_2_gets_triggers_that_build_no_temporary_table(home: Path) -> None:
    """Migration 3: open_children's triggers test a settled child by comparisons, so the trigger a claim runs
    builds no temporary b-tree (version 2's `IN` lists built two a claim: a quarter of a millisecond, as a young
    process gave the memory back and faulted it in again); the counts stay right through every change."""
    old_tree(home, 2)
    store = open_store(home)
    assert store.db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (3,)
    sql, params = store.db.claim_sql(None, runner="{}", entry="{}", tag="t", now=0.0, pass_deferred=True)
    programs = trigger_programs(store, sql, params)
    assert list(programs) == ["tasks_open_update"] and "OpenEphemeral" not in programs["tasks_open_update"]
    texts = [r[0] for r in store.db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name")]
    assert len(texts) == 3 and not any(" IN (" in t for t in texts), texts
    counts = "SELECT task_name, open_children FROM tasks WHERE open_children <> 0 ORDER BY task_name"
    assert store.db.execute(counts).fetchall() == [("a", 1), ("p", 1)]
    claimed, _ = store.claim(None, {"pid": 1, "host": "h"}, "r1")  # type: ignore[misc]
    assert claimed.name == "a1" and store.db.execute(counts).fetchall() == [("a", 1), ("p", 1)]  # still open
    with store.transaction() as tree:
        tree.transition("a1", END)
        tree.add(Task(name="c", parent="p", run={"kind": "argv", "argv": ["true"]}))
        tree.reparent("c", "a")
    assert store.db.execute(counts).fetchall() == [("a", 1), ("p", 1)]
    with store.transaction() as tree:
        tree.void("c")
    assert store.db.execute(counts).fetchall() == [("p", 1)]
    store.close()


def test_a_claim_reads_no_more_than_the_queue_needs(home: Path) -> None:
    """The claim's pick and the listing of actionable tasks walk the queue index in run order: no sort of
    every actionable task."""
    store = open_store(home)
    for types in (None, ["fix"]):
        sql, params = store.db.claim_sql(types, runner="{}", entry="{}", tag="t", now=0.0)
        plan = " / ".join(row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX tasks_queue" in plan and "TEMP B-TREE" not in plan, plan
    sql, params = store.db.actionable_sql(["fix"], runnable=False, limit=None)
    plan = " / ".join(row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql, params))
    store.close()
    assert "USING INDEX tasks_queue" in plan and "TEMP B-TREE" not in plan, plan


def test_a_heartbeat_touches_only_its_own_running_task(home: Path, clock: FakeClock) -> None:
    store = TaskStore(StateRoot(home).ensure(), load_config(), clock)
    with store.transaction() as tree:
        tree.add(Task(name="t", run={"kind": "argv", "argv": ["true"]}))
    me = {"pid": os.getpid(), "create_time": 1.0, "host": "here"}
    claimed = store.claim(None, me, "run")
    assert claimed is not None and claimed[0].exec_state == PROCESSING and claimed[0].run_id == "t-run"
    assert store.touch_running("t", me, heartbeat_ts=5.0, activity_ts=4.0)
    assert (store.get("t").heartbeat_ts, store.get("t").activity_ts) == (5.0, 4.0)
    assert not store.touch_running("t", {**me, "pid": os.getpid() + 1}, heartbeat_ts=9.0, activity_ts=9.0)
    assert store.get("t").heartbeat_ts == 5.0


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"kind": "argv", "argv": "touch oops"}, "run.argv: must be a list (value 'touch oops')"),
        ({"kind": "argv", "argv": []}, "run.argv: must be a non-empty list of strings"),
        ({"kind": "exec", "argv": ["true"]}, "run.kind: must be one of argv, shell, plan"),
        ({"kind": "shell", "shell": "true", "timeout_s": 0}, "run.timeout_s: must be a number > 0"),
        ({"kind": "argv", "argv": ["true"], "max_attempts": True}, "run.max_attempts: must be a whole number"),
        ({"kind": "shell", "shell": "echo a\u0000b"}, "run.shell: must be a non-empty string without NUL"),
    ],
)
def test_a_hand_edited_run_spec_is_refused_naming_task_and_key_before_anything_runs(
    home: Path, tmp_path: Path, run: dict[str, Any], message: str
) -> None:
    """What a runner executes is checked when the row is read: a wrong run spec stops run-next with the task,
    the key and the value (exit 3), and nothing is started."""
    marker = tmp_path / "ran"
    assert tasks(home, "add", "job", "--", "touch", str(marker)).returncode == 0
    db = sqlite3.connect(home / "tasks.db")
    with db:
        db.execute("UPDATE tasks SET run_spec = ? WHERE task_name = 'job'", (json.dumps(run),))
    db.close()
    proc = tasks(home, "run-next")
    assert proc.returncode == 3, proc.stderr
    assert "task 'job'" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_run_spec_from_a_newer_version_keeps_its_keys(home: Path, tmp_path: Path) -> None:
    """A key of the run spec this version does not know is kept, and the task still runs."""
    marker = tmp_path / "ran"
    assert tasks(home, "add", "job", "--", "touch", str(marker)).returncode == 0
    db = sqlite3.connect(home / "tasks.db")
    with db:
        (raw,) = db.execute("SELECT run_spec FROM tasks WHERE task_name = 'job'").fetchone()
        spec = {**json.loads(raw), "sandbox": "gvisor"}
        db.execute("UPDATE tasks SET run_spec = ? WHERE task_name = 'job'", (json.dumps(spec),))
    db.close()
    assert tasks(home, "run-next").returncode == 0
    assert marker.exists()
    job = open_store(home).get("job").run
    assert job is not None and job.extra == {"sandbox": "gvisor"} and job.argv == ("touch", str(marker))
    db = sqlite3.connect(home / "tasks.db")
    (raw,) = db.execute("SELECT run_spec FROM tasks WHERE task_name = 'job'").fetchone()
    db.close()
    assert json.loads(raw) == spec  # written back by the run as it was read, the newer key included
