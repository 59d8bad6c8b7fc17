"""The task tree: records, checked transitions, the source document's run order, escalation, the bounded log.

In-process and on a fake clock; the tests that run real runners and kill real processes are in
test_tasks_run.py.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from selfheal.core.config import Config, load_config
from selfheal.core.ledger import Ledger
from selfheal.core.redact import Redactor
from selfheal.errors import InvalidIdError
from selfheal.state.root import StateRoot
from selfheal.tasks.run import BoundedLog, Failed, escalate, find_stuck, fix_name, tail_lines
from selfheal.tasks.tree import (
    END,
    ERROR_FIX_PENDING,
    EXEC_STATES,
    NEW,
    NORMAL_CRASH,
    PROCESSING,
    REQUIRES_MANUAL,
    TRANSITIONS,
    VOID,
    BadParent,
    IllegalTransition,
    Task,
    TaskExists,
    TaskStore,
    TaskTree,
    UnknownTask,
)
from selfheal.testing import FakeClock


@pytest.fixture
def store(state: StateRoot, clock: FakeClock) -> TaskStore:
    return TaskStore(state, load_config(), clock)


def files(store: TaskStore) -> dict[str, Any]:
    """Every row of the task database and every file under tasks/: 'nothing changed' means this is equal
    before and after."""
    rows = {
        table: store.db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608 - our own tables
        for table in ("tasks", "tasks_archive", "main_logs", "meta")
    }
    return {"rows": rows, "files": {p.name: p.read_bytes() for p in sorted(store.folder.iterdir()) if p.is_file()}}


def add(store: TaskStore, clock: FakeClock, name: str, **fields: Any) -> Task:
    clock.advance(1)  # each task a second younger than the one before
    with store.transaction() as tree:
        return tree.add(Task(name=name, **fields))


def put_state(store: TaskStore, name: str, exec_state: str) -> None:
    """Force a state for a test setup (bypassing the table on purpose)."""
    with store.transaction() as tree:
        tree.quiet_update(name, exec_state=exec_state)


# -- records -------------------------------------------------------------------------------------------


def test_a_task_record_holds_every_field_of_the_source_document(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "TC-FLOW-001", display_name="end to end", priority="P0", success_criteria="report sent")
    add(store, clock, "child", parent="TC-FLOW-001")
    data = store.record("child")
    for key in (
        "name",
        "display_name",
        "description",
        "type",
        "priority",
        "status",
        "exec_state",
        "parent",
        "root",
        "level",
        "run",
        "success_criteria",
        "fix_suggestion",
        "analysis",
        "plan",
        "solution",
        "retry_count",
        "execution_count",
        "last_result",
        "last_error",
        "is_void",
        "created",
        "updated",
        "last_executed",
    ):
        assert key in data, key
    assert (data["parent"], data["root"], data["level"], data["status"]) == ("TC-FLOW-001", "TC-FLOW-001", 2, "pending")
    assert oct(store.db_path.stat().st_mode & 0o777) == "0o600"
    # The source document's columns, under its own names, in the database.
    columns = {row[1] for row in store.db.execute("PRAGMA table_info(tasks)")}
    assert {"task_name", "task_type", "parent_task_id", "root_task_id", "task_level", "status", "is_void"} <= columns
    parent = store.get("TC-FLOW-001")
    assert (parent.display_name, parent.priority, parent.success_criteria) == ("end to end", "P0", "report sent")


def test_keys_written_by_a_newer_version_survive_an_update(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "job")
    store.db.execute("UPDATE tasks SET extra = ? WHERE task_name = 'job'", ('{"future_field": {"x": 1}}',))
    with store.transaction() as tree:
        tree.transition("job", PROCESSING)
    assert store.record("job")["future_field"] == {"x": 1}
    assert store.get("job").exec_state == PROCESSING


def test_a_hand_edit_the_rules_do_not_allow_is_refused_by_the_database(store: TaskStore, clock: FakeClock) -> None:
    """A state, type or priority outside the documented ones cannot reach the table, so no reader meets it."""
    import sqlite3

    add(store, clock, "odd")
    for column, value in (("exec_state", "DONE"), ("task_type", "urgent"), ("priority", "P9")):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            store.db.conn.execute(f"UPDATE tasks SET {column} = ? WHERE task_name = 'odd'", (value,))  # noqa: S608
    assert store.get("odd").exec_state == NEW


# -- transitions ---------------------------------------------------------------------------------------


ALLOWED = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(EXEC_STATES, EXEC_STATES)))
def test_every_transition_is_allowed_or_refused_by_the_table(
    store: TaskStore, clock: FakeClock, current: str, wanted: str
) -> None:
    add(store, clock, "t")
    put_state(store, "t", current)
    before = files(store)
    if (current, wanted) in ALLOWED:
        with store.transaction() as tree:
            tree.transition("t", wanted, "test")
        assert store.get("t").exec_state == wanted
        assert store.get("t").history[-1]["what"] == f"{current} -> {wanted}"
    else:
        with pytest.raises(IllegalTransition) as caught, store.transaction() as tree:
            tree.transition("t", wanted)
        assert f"'t' is {current} and cannot become {wanted}" in str(caught.value)
        assert caught.value.exit_code == 2
        assert files(store) == before


def test_the_source_documents_forbidden_moves_are_refused() -> None:
    assert PROCESSING not in TRANSITIONS[END]
    assert TRANSITIONS[VOID] == frozenset()
    assert NEW not in set().union(*TRANSITIONS.values())  # nothing goes back to NEW


def test_handing_a_task_back_from_requires_manual_gives_it_a_fresh_budget(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "t")
    with store.transaction() as tree:
        tree.quiet_update("t", exec_state=REQUIRES_MANUAL, retry_count=5)
    with store.transaction() as tree:
        tree.transition("t", ERROR_FIX_PENDING, "fixed the import path", by="ops")
    task = store.get("t")
    assert (task.exec_state, task.retry_count, task.requeued) == (ERROR_FIX_PENDING, 0, True)
    assert task.history[-1] == {
        "ts": task.history[-1]["ts"],
        "what": "REQUIRES_MANUAL -> ERROR_FIX_PENDING",
        "reason": "fixed the import path",
        "by": "ops",
    }


def test_voiding_a_task_voids_its_unfinished_descendants_but_not_finished_ones(
    store: TaskStore, clock: FakeClock
) -> None:
    add(store, clock, "p")
    add(store, clock, "done", parent="p")
    add(store, clock, "open", parent="p")
    add(store, clock, "grandchild", parent="open")
    add(store, clock, "other")
    put_state(store, "done", END)
    with store.transaction() as tree:
        voided = tree.void("p", "cancelled")
    assert sorted(t.name for t in voided) == ["grandchild", "open", "p"]
    states = {t.name: t.exec_state for t in store.snapshot().tasks.values()}
    assert states == {"p": VOID, "done": END, "open": VOID, "grandchild": VOID, "other": NEW}


# -- bad input: clear message, nothing changed ----------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message_and_nothing_changes(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "root")
    add(store, clock, "mid", parent="root")
    add(store, clock, "leaf", parent="mid")
    add(store, clock, "gone")
    put_state(store, "gone", VOID)
    before = files(store)
    cases: list[tuple[Callable[[TaskTree], object], type[Exception], str]] = [
        (lambda t: t.transition("nosuch", END), UnknownTask, "no task named 'nosuch'"),
        (lambda t: t.transition("lef", END), UnknownTask, "did you mean 'leaf'?"),
        (lambda t: t.add(Task(name="mid")), TaskExists, "task 'mid' already exists (NEW)"),
        (lambda t: t.add(Task(name="x", parent="nosuch")), BadParent, "parent 'nosuch' does not exist"),
        (lambda t: t.add(Task(name="x", parent="gone")), BadParent, "parent 'gone' is VOID"),
        (lambda t: t.add(Task(name="../etc")), InvalidIdError, "invalid task id '../etc'"),
        (lambda t: t.add(Task(name="x", type="urgent")), Exception, "--type must be one of fix, regular, creative"),
        (lambda t: t.add(Task(name="x", priority="P9")), Exception, "--priority must be one of P0, P1, P2"),
        (lambda t: t.reparent("root", "leaf"), BadParent, "would become its own ancestor"),
        (lambda t: t.reparent("mid", "mid"), BadParent, "cannot be its own parent"),
        (lambda t: t.reparent("mid", "nosuch"), BadParent, "parent 'nosuch' does not exist"),
        (lambda t: t.transition("gone", NEW), IllegalTransition, "'gone' is VOID and cannot become NEW"),
    ]
    for action, error, text in cases:
        with pytest.raises(error) as caught, store.transaction() as tree:
            tree.transition("root", PROCESSING)  # a change made earlier in the same transaction...
            action(tree)
        assert text in str(caught.value)
        assert files(store) == before  # ...is not saved either


def test_reparenting_moves_the_whole_subtree_and_fixes_levels_and_roots(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "a")
    add(store, clock, "b")
    add(store, clock, "b1", parent="b")
    add(store, clock, "b11", parent="b1")
    with store.transaction() as tree:
        tree.reparent("b", "a")
    tree = store.snapshot()
    got = {n: (tree.tasks[n].parent, tree.tasks[n].root, tree.tasks[n].level) for n in ("b", "b1", "b11")}
    assert got == {"b": ("a", "a", 2), "b1": ("b", "a", 3), "b11": ("b1", "a", 4)}
    with store.transaction() as tree:
        tree.reparent("b1", None)
    tree = store.snapshot()
    assert (tree.tasks["b1"].root, tree.tasks["b1"].level, tree.tasks["b11"].root, tree.tasks["b11"].level) == (
        "b1",
        1,
        "b1",
        2,
    )


# -- the run order ------------------------------------------------------------------------------------


def test_actionable_order_is_type_then_priority_then_deeper_then_older(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "creative-p0", type="creative", priority="P0")
    add(store, clock, "regular-p2-old", priority="P2")
    add(store, clock, "regular-p1-top", priority="P1")
    add(store, clock, "parent", priority="P1")
    add(store, clock, "regular-p1-child", parent="parent", priority="P1")
    add(store, clock, "regular-p1-grandchild", parent="regular-p1-child", priority="P1")
    add(store, clock, "regular-p2-new", priority="P2")
    add(store, clock, "FIX-late", priority="P2", type="fix")
    add(store, clock, "fix-p0", type="fix", priority="P0")
    add(store, clock, "crashed", priority="P1")
    put_state(store, "crashed", NORMAL_CRASH)
    add(store, clock, "to-fix", priority="P0")
    put_state(store, "to-fix", ERROR_FIX_PENDING)
    tree = store.snapshot()
    assert [t.name for t in tree.actionable()] == [
        "fix-p0",  # fix before everything, P0 before P2
        "FIX-late",
        "to-fix",  # regular P0
        "regular-p1-grandchild",  # regular P1, level 3 before level 1 (the parents wait: see the gate)
        "regular-p1-top",  # level 1, older than "crashed"
        "crashed",
        "regular-p2-old",  # P2, older first
        "regular-p2-new",
        "creative-p0",  # creative last, whatever its priority
    ]
    assert [t.name for t in tree.actionable(types=["regular"], limit=2)] == ["to-fix", "regular-p1-grandchild"]
    assert [t.name for t in tree.actionable(types=["fix"])] == ["fix-p0", "FIX-late"]


@pytest.mark.parametrize(
    ("child_states", "parent_runs"),
    [
        ((NEW,), False),
        ((PROCESSING,), False),
        ((ERROR_FIX_PENDING,), False),
        ((NORMAL_CRASH,), False),
        ((END,), True),
        ((VOID,), True),
        ((REQUIRES_MANUAL,), True),
        ((END, VOID, REQUIRES_MANUAL), True),
        ((END, NEW), False),
        ((), True),
    ],
)
def test_a_parent_runs_only_when_every_child_is_end_void_or_requires_manual(
    store: TaskStore, clock: FakeClock, child_states: tuple[str, ...], parent_runs: bool
) -> None:
    add(store, clock, "parent")
    for i, state in enumerate(child_states):
        add(store, clock, f"c{i}", parent="parent")
        put_state(store, f"c{i}", state)
    tree = store.snapshot()
    names = [t.name for t in tree.actionable()]
    assert ("parent" in names) is parent_runs
    # A child runs unless it needs a person (or is not in a runnable state at all).
    for i, state in enumerate(child_states):
        assert (f"c{i}" in names) is (state in (NEW, ERROR_FIX_PENDING, NORMAL_CRASH))


def test_the_gate_looks_at_children_only_not_grandchildren_through_a_settled_child(
    store: TaskStore, clock: FakeClock
) -> None:
    add(store, clock, "p")
    add(store, clock, "c", parent="p")
    add(store, clock, "g", parent="c")
    put_state(store, "c", REQUIRES_MANUAL)
    names = [t.name for t in store.snapshot().actionable()]
    assert names == ["g", "p"]  # the source document's rule, exactly: c needs a person, so p may run


# -- escalation ----------------------------------------------------------------------------------------


def fail(
    store: TaskStore,
    name: str,
    failed: Failed,
    tail: list[str] | None = None,
) -> Any:
    with store.transaction() as tree:
        tree.transition(name, PROCESSING)
    with store.transaction() as tree:
        return escalate(
            tree,
            tree.get(name),
            failed,
            store=store,
            redactor=Redactor(env={}),
            log_tail=tail or [failed.reason],
        )


def test_a_first_business_failure_is_error_fix_pending_with_a_fix_child_for_the_step(
    store: TaskStore, clock: FakeClock
) -> None:
    add(store, clock, "report", priority="P0", display_name="nightly report")
    esc = fail(store, "report", Failed("permanent", "exit 2: bad flag", step="render"), ["render: unknown flag --x"])
    tree = store.snapshot()
    assert tree.tasks["report"].exec_state == ERROR_FIX_PENDING
    assert esc.fix_tasks == ["FIX-report-render"]
    fix = tree.tasks["FIX-report-render"]
    assert (fix.type, fix.priority, fix.parent, fix.level, fix.exec_state) == ("fix", "P0", "report", 2, NEW)
    assert "unknown flag" in (fix.description or "") and fix.success_criteria
    assert fix.fix_suggestion  # a hint from the error class / text
    # The parent waits for its fix; the fix task jumps the queue.
    assert [t.name for t in tree.actionable()] == ["FIX-report-render"]
    # The same failure again is tracked by the same fix task, not a second one.
    put_state(store, "report", ERROR_FIX_PENDING)
    esc = fail(store, "report", Failed("permanent", "exit 2: bad flag", step="render"), ["render: unknown flag --x"])
    assert esc.fix_tasks == []
    assert [t.name for t in store.snapshot().children("report")] == ["FIX-report-render"]


def test_an_infrastructure_failure_is_a_normal_crash_without_a_fix_task(store: TaskStore, clock: FakeClock) -> None:
    for cls in ("transient", "timeout", "resource", "rate_limit"):
        add(store, clock, f"job-{cls}")
        esc = fail(store, f"job-{cls}", Failed(cls, "503 from upstream"))
        task = store.get(f"job-{cls}")
        assert (task.exec_state, task.retry_count, esc.fix_tasks) == (NORMAL_CRASH, 1, [])


def test_from_three_failures_each_distinct_problem_gets_its_own_fix_task(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "etl")
    with store.transaction() as tree:
        tree.quiet_update("etl", retry_count=2)
    tail = [
        "loading 1200 rows",
        "ModuleNotFoundError: No module named 'pandas'",
        "retrying",
        "ConnectionRefusedError: [Errno 111] Connection refused (db at 10.0.0.5:5432)",
        "ConnectionRefusedError: [Errno 111] Connection refused (db at 10.0.0.5:5433)",
    ]
    esc = fail(store, "etl", Failed("unknown", "exit 1"), tail)
    task = store.get("etl")
    assert task.retry_count == 3 and task.exec_state == ERROR_FIX_PENDING
    assert task.analysis and "2 distinct problem(s)" in task.analysis
    assert esc.fix_tasks == ["FIX-etl-A3", "FIX-etl-A3-2"]
    tree = store.snapshot()
    titles = [tree.tasks[n].display_name or "" for n in esc.fix_tasks]
    assert "Connection refused" in titles[0]  # the most recent problem first
    assert "No module named" in titles[1]
    assert "module is missing" in (tree.tasks["FIX-etl-A3-2"].fix_suggestion or "")


def test_failure_four_gets_a_new_fix_task_once_the_third_ones_was_worked_on(store: TaskStore, clock: FakeClock) -> None:
    """A FIX task per failure, as the fourth document does: failure 3's FIX task was analysed and parked, so the
    same problem at failure 4 gets a new one (an untouched FIX task keeps tracking it: see the first-failure test)."""
    add(store, clock, "etl")
    with store.transaction() as tree:
        tree.quiet_update("etl", retry_count=2)
    tail = ["ModuleNotFoundError: No module named 'pandas'"]
    assert fail(store, "etl", Failed("unknown", "exit 1"), tail).fix_tasks == ["FIX-etl-A3"]
    put_state(store, "FIX-etl-A3", REQUIRES_MANUAL)
    assert fail(store, "etl", Failed("unknown", "exit 1"), tail).fix_tasks == ["FIX-etl-A4"]
    assert store.get("FIX-etl-A3").exec_state == REQUIRES_MANUAL  # kept as the record of the earlier attempt


def test_at_five_failures_a_sol_task_replaces_the_fix_tasks_and_after_three_more_a_person_is_needed(
    store: TaskStore, clock: FakeClock, state: StateRoot
) -> None:
    """The fourth document's ladder at 5: a SOL task with the solution, the old FIX tasks voided, no REQUIRES_MANUAL
    yet; the task then gets 3 more tries (tracked by the SOL task, no new FIX tasks) and at 8 needs a person."""
    add(store, clock, "sync")
    add(store, clock, "FIX-sync-A4", type="fix", parent="sync")
    add(store, clock, "FIX-sync-A3", type="fix", parent="sync")
    put_state(store, "FIX-sync-A3", REQUIRES_MANUAL)  # analysed earlier and parked
    with store.transaction() as tree:
        tree.quiet_update("sync", retry_count=4)
    esc = fail(store, "sync", Failed("unknown", "exit 1: disk quota"), ["error: disk quota exceeded"])
    tree = store.snapshot()
    assert (tree.tasks["sync"].exec_state, tree.tasks["sync"].retry_count) == (ERROR_FIX_PENDING, 5)
    assert esc.fix_tasks == ["SOL-sync"] and esc.incident_path is None
    assert sorted(esc.voided) == ["FIX-sync-A3", "FIX-sync-A4"]
    assert {tree.tasks[n].exec_state for n in esc.voided} == {VOID}
    sol = tree.tasks["SOL-sync"]
    assert (sol.type, sol.parent, sol.exec_state, (sol.source or {})["kind"]) == ("fix", "sync", NEW, "solution")
    assert sol.fix_suggestion and "disk quota" in (sol.last_error or "")
    assert [t.name for t in tree.actionable()] == ["SOL-sync"]  # the task waits for its solution
    for n in (6, 7):
        put_state(store, "SOL-sync", REQUIRES_MANUAL)  # analysed: settled, so the task runs again
        esc = fail(store, "sync", Failed("unknown", "exit 1: disk quota"), ["error: disk quota exceeded"])
        assert (store.get("sync").exec_state, esc.fix_tasks, esc.incident_path) == (ERROR_FIX_PENDING, [], None), n
    esc = fail(store, "sync", Failed("unknown", "exit 1: disk quota"), ["error: disk quota exceeded"])
    task = store.get("sync")
    assert task.exec_state == REQUIRES_MANUAL and task.retry_count == 8
    assert esc.incident_path is not None and esc.incident_path.exists()
    incident = json.loads(esc.incident_path.read_text())
    assert incident["task"] == "sync" and incident["kind"] == "requires_manual"
    assert "needs a person after 8 failure(s)" in incident["summary"]
    assert "mark sync error" in incident["resume_command"] and "run-next --task sync" in incident["resume_command"]
    assert task.incident == incident["id"]
    assert not store.snapshot().actionable()


def test_a_sol_task_gets_its_own_three_tries_before_it_needs_a_person(store: TaskStore, clock: FakeClock) -> None:
    """A SOL task that runs something and keeps failing needs a person after 3 failures (the document's "3 more")."""
    add(store, clock, "sync")
    add(store, clock, "SOL-sync", type="fix", parent="sync", source={"kind": "solution", "task": "sync"})
    states = [fail(store, "SOL-sync", Failed("permanent", "still broken")).state for _ in range(3)]
    assert states == [NORMAL_CRASH, NORMAL_CRASH, REQUIRES_MANUAL]


def test_without_a_sol_step_five_failures_need_a_person(
    write_config: Callable[[str], Path], state: StateRoot, clock: FakeClock
) -> None:
    """tasks.solution_at_failures: 0 turns the SOL step off: manual_at_failures (5) applies, as before."""
    write_config("tasks: {solution_at_failures: 0}\n")
    store = TaskStore(state, load_config(), clock)
    add(store, clock, "sync")
    with store.transaction() as tree:
        tree.quiet_update("sync", retry_count=4)
    assert fail(store, "sync", Failed("unknown", "exit 1")).state == REQUIRES_MANUAL


def test_two_incidents_for_one_task_in_the_same_second_both_get_valid_ids(state: StateRoot) -> None:
    from selfheal.durable.incident import Incident, new_incident_id, write_incident

    paths = []
    for _ in range(3):
        incident = Incident(new_incident_id("job", 1_800_000_000), "job", "failed", "s", None, None, None, None, "x")
        paths.append(write_incident(state, incident))
    assert [p.stem for p in paths] == ["job-20270115T080000Z", "job-20270115T080000Z-2", "job-20270115T080000Z-3"]
    assert all(json.loads(p.read_text())["id"] == p.stem for p in paths)


def test_fix_tasks_never_spawn_fix_tasks_of_their_own(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "FIX-x-1", type="fix")
    for n in range(1, 5):
        esc = fail(store, "FIX-x-1", Failed("permanent", "still broken"))
        assert esc.fix_tasks == []
        expected = REQUIRES_MANUAL if n >= 5 else NORMAL_CRASH
        assert store.get("FIX-x-1").exec_state == expected
    fail(store, "FIX-x-1", Failed("permanent", "still broken"))
    assert store.get("FIX-x-1").exec_state == REQUIRES_MANUAL
    assert store.snapshot().children("FIX-x-1") == []


def test_thresholds_come_from_configuration(
    write_config: Callable[[str], Path], state: StateRoot, clock: FakeClock
) -> None:
    write_config("tasks: {analyze_at_failures: 1, manual_at_failures: 2, solution_at_failures: 0}\n")
    store = TaskStore(state, load_config(), clock)
    add(store, clock, "t")
    fail(store, "t", Failed("permanent", "exit 1"), ["TypeError: x"])
    assert store.get("t").analysis  # analysed from the first failure
    put_state(store, "t", ERROR_FIX_PENDING)
    fail(store, "t", Failed("permanent", "exit 1"), ["TypeError: x"])
    assert store.get("t").exec_state == REQUIRES_MANUAL


def test_secrets_in_a_failure_never_reach_the_task_record(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "t")
    key = "sk-" + "A1b2C3d4" * 4
    with store.transaction() as tree:
        tree.transition("t", PROCESSING)
    with store.transaction() as tree:
        escalate(
            tree,
            tree.get("t"),
            Failed("auth", f"401 for key {key}"),
            store=store,
            redactor=Redactor(env={}),
            log_tail=[f"Authorization: Bearer {key}", "openai.AuthenticationError: invalid key"],
        )
    text = json.dumps([store.record(n) for n in store.db.names()])
    assert key not in text and "***" in text
    raw = b"".join(p.read_bytes() for p in store.db_path.parent.glob("tasks.db*"))
    assert key.encode() not in raw


def test_fix_names_stay_valid_ids_for_long_task_names() -> None:
    name = fix_name("x" * 128, "step with spaces/and slashes")
    assert len(name) <= 128 and name.startswith("FIX-x") and name.endswith("step_with_spaces_and_slashes")


# -- the bounded log -----------------------------------------------------------------------------------


def test_the_log_keeps_the_last_80k_characters_once_it_passes_100k(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path / "t.log", max_chars=100_000, keep_chars=80_000)
    lines = [f"line {i:07d} {'x' * 40}\n".encode() for i in range(100_000)]  # ~5.3 MB
    for start in range(0, len(lines), 1000):
        log.write(b"".join(lines[start : start + 1000]))
        assert log.chars <= 100_000
    log.close()
    text = (tmp_path / "t.log").read_text()
    assert 70_000 < len(text) <= 100_000
    assert text.startswith("[self-heal: earlier output cut; this log keeps its last 80000 characters]\n")
    assert text.endswith(lines[-1].decode())
    body = text.splitlines()[1:]
    assert all(line.startswith("line ") for line in body)  # cut on a line boundary
    assert [int(line.split()[1]) for line in body] == list(range(100_000 - len(body), 100_000))
    assert log.trims <= 5  # trimming is amortised: the file is not rewritten for every 20k characters


class _CountingRedactor(Redactor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chars = 0

    def text(self, value: str) -> str:
        self.chars += len(value)
        return super().text(value)


def test_a_task_printing_50_mb_masks_only_the_output_its_log_keeps(tmp_path: Path) -> None:
    """Masking every byte of a big output made run-next 40x slower than retry_run; what the bound cuts
    anyway is dropped unread, and what stays is still masked."""
    secret = "s3cr3t-value-123456"
    redactor = _CountingRedactor(env={"MY_API_KEY": secret})
    log = BoundedLog(tmp_path / "t.log", max_chars=100_000, keep_chars=80_000, redactor=redactor)
    chunk = (b"x" * 99 + b"\n") * 655  # 65,500 bytes, as a pipe delivers them
    for _ in range(800):  # 52 MB
        log.write(chunk)
    log.write(f"the end, key {secret}\n".encode())
    log.close()
    text = (tmp_path / "t.log").read_text()
    assert text.endswith("the end, key ***\n") and secret not in text
    assert 70_000 < len(text) <= 100_000
    assert redactor.chars < 2_000_000  # under 4% of the output, however much more of it there is


def test_the_log_counts_characters_not_bytes(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path / "t.log", max_chars=1_000, keep_chars=800)
    for _ in range(300):
        log.write("日本語\n".encode())  # 4 characters, 10 bytes
    log.close()
    text = (tmp_path / "t.log").read_text()
    assert len(text) <= 1_000 < len(text.encode())  # within the bound in characters, past it in bytes
    assert text.endswith("日本語\n")


def test_a_secret_split_across_two_reads_is_still_masked(tmp_path: Path) -> None:
    secret = "s3cr3t-value-123456"
    log = BoundedLog(
        tmp_path / "t.log", max_chars=10_000, keep_chars=8_000, redactor=Redactor(env={"MY_API_KEY": secret})
    )
    log.write(b"connecting with s3cr3t-va")
    log.write(b"lue-123456 now\nok\n")
    log.close()
    text = (tmp_path / "t.log").read_text()
    assert secret not in text and "connecting with *** now" in text


def test_tail_lines_skip_run_markers_and_can_stop_at_the_last_run(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path / "t.log", max_chars=10_000, keep_chars=8_000)
    log.note("=== 2026-01-01T00:00:00Z run 1 of t (pid 1) ===")
    log.write(b"first\n")
    log.note("=== 2026-01-01T00:00:01Z failed after 1.0s ===")
    log.note("=== 2026-01-01T00:10:00Z run 2 of t (pid 2) ===")
    log.write(b"second\n")
    log.close()
    assert tail_lines(tmp_path / "t.log") == ["first", "second"]
    assert tail_lines(tmp_path / "t.log", last_run=True) == ["second"]


# -- stuck, judged on a fake clock ----------------------------------------------------------------------


def test_a_running_task_without_output_or_heartbeat_for_too_long_is_stuck(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "agent-task")
    with store.transaction() as tree:
        tree.transition("agent-task", PROCESSING)  # started by hand: no runner to watch, only its heartbeats
    clock.advance(599)
    assert find_stuck(store) == []
    clock.advance(2)
    (finding,) = find_stuck(store)
    assert (finding.task, finding.kind, round(finding.idle_s)) == ("agent-task", "stuck", 601)
    assert store.get("agent-task").exec_state == PROCESSING  # find_stuck only reports


def test_a_heartbeat_without_output_does_not_keep_a_task_from_being_stuck(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "t")
    with store.transaction() as tree:
        tree.transition("t", PROCESSING)
    start = clock.time()
    for _ in range(7):
        clock.advance(100)
        with store.transaction() as tree:
            tree.quiet_update("t", heartbeat_ts=clock.time(), activity_ts=start)
    assert [f.kind for f in find_stuck(store)] == ["stuck"]
    with store.transaction() as tree:
        tree.quiet_update("t", activity_ts=clock.time())  # output again
    assert find_stuck(store) == []


def test_config_for_tasks_is_checked_across_keys(write_config: Callable[[str], Path]) -> None:
    from selfheal.errors import ConfigError

    path = write_config("tasks: {log_max_chars: 1000, log_keep_chars: 1000}\n")
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert str(path) in str(caught.value) and "tasks.log_keep_chars" in str(caught.value)
    write_config("tasks: {analyze_at_failures: 4, manual_at_failures: 3}\n")
    with pytest.raises(ConfigError, match=r"tasks\.manual_at_failures"):
        load_config()


def test_ledger_fix_and_stuck_events_match_the_documented_format(state: StateRoot, config: Config) -> None:
    from selfheal.models.output import schema_problems

    ledger = Ledger(state, config)
    schema = json.loads((Path(__file__).parents[1] / "status" / "ledger-event.schema.json").read_text())
    for event in (
        ledger.record("fix", task="t", status="created", reason="FIX-t-x created", fix_task="FIX-t-x"),
        ledger.record("stuck", task="t", status="stuck", reason="no output for 601s", idle_s=601.0),
        ledger.record("stuck", task="t", status="dead", reason="runner pid 4 is gone"),
        ledger.record("incident", task="t", status="requires_manual", reason="t-1: needs a person"),
    ):
        assert schema_problems(event, schema) == [], event
    log = state.log_file.read_text()
    assert "[FIX] task=t reason=created fix_task=FIX-t-x" in log
    assert "[STUCK] task=t reason=stuck idle=601s" in log
    assert os.stat(state.log_file).st_mode & 0o777 == 0o600


def test_a_pass_with_nothing_to_run_records_skipped_or_following_as_the_document_does(
    store: TaskStore, clock: FakeClock, state: StateRoot
) -> None:
    """The fourth document's run_status: a pass that finds nothing writes `skipped`; while a task is still
    running, `following` for it instead (and no `skipped`)."""
    from selfheal.models.output import schema_problems
    from selfheal.tasks.run import TaskRunner

    def passes() -> list[dict[str, Any]]:
        lines = [line for f in sorted(state.sub("ledger").glob("*.jsonl")) for line in f.read_text().splitlines()]
        return [e for e in map(json.loads, lines) if e["event"] == "pass"]

    assert TaskRunner(store).run_next().outcome == "nothing"
    assert [(e["task"], e["status"]) for e in passes()] == [(None, "skipped")]
    add(store, clock, "export")
    put_state(store, "export", PROCESSING)
    with store.transaction() as tree:
        tree.quiet_update("export", activity_ts=clock.time() - 42)
    assert TaskRunner(store).run_next().outcome == "nothing"
    assert [(e["task"], e["status"]) for e in passes()][1:] == [("export", "following")]
    assert "last output 42s ago" in passes()[-1]["reason"]
    schema = json.loads((Path(__file__).parents[1] / "status" / "ledger-event.schema.json").read_text())
    assert all(schema_problems(e, schema) == [] for e in passes())
    assert "[PASS] task=- reason=skipped" in state.log_file.read_text()


def test_a_run_whose_task_another_runner_took_back_stays_a_failure(store: TaskStore, clock: FakeClock) -> None:
    """Exit 0 for a run whose outcome was not recorded is for a person's change only: a task taken back by a
    claim (its lease ran out) is a real problem, exit 3, and says nothing of a person."""
    from selfheal.tasks.run import TaskRunner
    from selfheal.tasks.tree import runner_identity

    add(store, clock, "slow", run={"kind": "argv", "argv": ["true"]})
    runner = runner_identity(store.host)
    claimed = store.claim(None, runner, "t1")
    assert claimed is not None
    task = claimed[0]
    with store.db.lock, store.db.write():
        store._take_back(store.db, [store.get("slow")], clock.time())
    log = BoundedLog(store.log_path("slow"), max_chars=10_000, keep_chars=5_000)
    result = TaskRunner(store)._finish(
        "slow",
        runner=runner,
        outcome="superseded",
        failed=None,
        duration=1.0,
        log=log,
        run_id=task.run_id,
        started=task.started_ts,
    )
    log.close()
    assert (result.outcome, result.exit_status, store.get("slow").exec_state) == ("superseded", 3, NORMAL_CRASH)
    assert "person" not in result.message


# -- archiving finished trees ----------------------------------------------------------------------------


def test_finished_trees_move_to_the_archive_and_free_their_names(store: TaskStore, clock: FakeClock) -> None:
    add(store, clock, "done-tree")
    add(store, clock, "done-child", parent="done-tree")
    add(store, clock, "half-done")
    add(store, clock, "half-child", parent="half-done")
    add(store, clock, "fresh")
    for name in ("done-tree", "half-done"):
        put_state(store, name, END)
    put_state(store, "done-child", VOID)
    store.log_path("done-tree").write_text("its output\n")
    clock.advance(8 * 86400)
    with store.transaction() as tree:
        tree.transition("fresh", END)  # finished just now: stays live a while
    with store.transaction() as tree:
        moved = tree.archive_finished(older_than_s=7 * 86400)
    assert sorted(t.name for t in moved) == ["done-child", "done-tree"]
    assert sorted(store.snapshot().tasks) == ["fresh", "half-child", "half-done"]  # a NEW child keeps its tree
    archived = sorted(p.name for p in store.archive_folder.iterdir())
    assert len(archived) == 1 and archived[0].startswith("done-tree.") and archived[0].endswith(".log")
    (record,) = store.archived("done-tree")
    assert record["exec_state"] == END and record["log_file"] == str(store.archive_folder / archived[0])
    assert [r["exec_state"] for r in store.archived("done-child")] == [VOID]
    assert (store.archive_folder / archived[0]).read_text() == "its output\n"
    assert not store.log_path("done-tree").exists()
    # The name is free for a new task, and archiving it again later keeps both.
    add(store, clock, "done-tree")
    put_state(store, "done-tree", END)
    clock.advance(8 * 86400)
    with store.transaction() as tree:
        tree.archive_finished(older_than_s=7 * 86400)
    assert len(store.archived("done-tree")) == 2


def test_run_next_archives_old_finished_trees_as_it_claims(store: TaskStore, clock: FakeClock) -> None:
    from selfheal.tasks.run import TaskRunner

    add(store, clock, "old")
    put_state(store, "old", END)
    clock.advance(30 * 86400)
    result = TaskRunner(store).run_next()
    assert result.outcome == "nothing"
    assert "old" not in store.snapshot() and store.archived("old")


def open_children(store: TaskStore) -> dict[str, int]:
    """Each task's open_children column, checked against a count of its children done here."""
    from selfheal.state.taskdb import COUNT_OPEN_CHILDREN

    rows = store.db.execute(
        f"SELECT task_name, open_children, {COUNT_OPEN_CHILDREN} FROM tasks ORDER BY task_name"  # noqa: S608
    ).fetchall()
    assert [(name, kept) for name, kept, _ in rows] == [(name, counted) for name, _, counted in rows]
    return {name: kept for name, kept, _ in rows if kept}


def test_the_parent_gate_column_stays_right_through_every_change_of_a_child(store: TaskStore, clock: FakeClock) -> None:
    """open_children (the claim's parent gate) follows adding, claiming, finishing, voiding, handing back
    (REQUIRES_MANUAL and requeued), moving, archiving and deleting children, and a JSON import's any order."""
    add(store, clock, "p", run={"kind": "argv", "argv": ["true"]})
    add(store, clock, "q")
    for name in ("a", "b", "c"):
        add(store, clock, name, parent="p", run={"kind": "argv", "argv": ["true"]})
    add(store, clock, "a1", parent="a", run={"kind": "argv", "argv": ["true"]})
    assert open_children(store) == {"a": 1, "p": 3}
    runner = {"pid": 1, "create_time": 1.0, "host": "here"}
    claimed = store.claim(None, runner, "t1")  # the deepest first: a1 (its gate is shut for nobody)
    assert claimed is not None and claimed[0].name == "a1" and open_children(store) == {"a": 1, "p": 3}
    with store.transaction() as tree:
        tree.transition("a1", END)  # settled: a opens
    assert open_children(store) == {"p": 3}
    with store.transaction() as tree:
        tree.void("b")
        tree.transition("c", PROCESSING)
        tree.transition("c", ERROR_FIX_PENDING)
        tree.transition("c", REQUIRES_MANUAL)  # settled for its parent
    assert open_children(store) == {"p": 1}
    with store.transaction() as tree:
        tree.transition("c", ERROR_FIX_PENDING, "handed back")  # requeued: open again
        assert tree.get("c").requeued
    assert open_children(store) == {"p": 2}
    with store.transaction() as tree:
        tree.reparent("c", "q")  # moved: p loses it, q gains it
    assert open_children(store) == {"p": 1, "q": 1}
    with store.transaction() as tree:
        tree.reparent("a", None)
        tree.add(Task(name="late", parent="q"))
    assert open_children(store) == {"q": 2}
    with store.transaction() as tree:
        tree.void("q")  # q and its open children: nothing open is left under anyone
    assert open_children(store) == {}
    with store.transaction() as tree:
        tree.transition("a", PROCESSING)
        tree.transition("a", END)
        tree.add(Task(name="open-under-p", parent="p"))
    assert open_children(store) == {"p": 1}
    with store.transaction():
        store.db.delete(["open-under-p"])  # a row deleted while open
    assert open_children(store) == {}
    clock.advance(8 * 86400)
    with store.transaction() as tree:
        moved = tree.archive_finished(older_than_s=7 * 86400)
    assert {"a", "a1"} <= {t.name for t in moved} and open_children(store) == {}
    # A tree inserted children first (as an import may): counted again once all are in.
    kids = [Task(name=f"k{i}", parent="top", root="top", level=2) for i in range(3)]
    with store.db.write():
        store.db.insert_many([*kids, Task(name="top")])
    assert open_children(store) == {"top": 3}
    assert store.claim(None, runner, "t2") is not None  # p: its gate is open again
    assert store.get("p").exec_state == PROCESSING


def test_a_claim_appends_its_history_entry_and_keeps_the_newest(store: TaskStore, clock: FakeClock) -> None:
    """The claim writes its history entry in its own statement: the same entry as before, the newest
    HISTORY_KEEP kept, whatever state the task came from."""
    from selfheal.tasks.tree import HISTORY_KEEP

    add(store, clock, "t", run={"kind": "argv", "argv": ["true"]})
    runner = {"pid": 7, "create_time": 1.0, "host": "here"}
    for n in range(HISTORY_KEEP + 3):
        claimed = store.claim(None, runner, f"r{n}")
        assert claimed is not None and claimed[0].run_id == f"t-r{n}"
        assert claimed[0].history[-1] == {
            "ts": claimed[0].history[-1]["ts"],
            "what": f"{NEW if n == 0 else NORMAL_CRASH} -> {PROCESSING}",
            "reason": "claimed by run-next",
            "by": "run-next pid 7",
        }
        with store.transaction() as tree:
            tree.transition("t", NORMAL_CRASH, f"crash {n}")
    history = store.get("t").history
    assert len(history) == HISTORY_KEEP and history[-1]["reason"] == f"crash {HISTORY_KEEP + 2}"
    assert history[-2]["what"] == f"{NORMAL_CRASH} -> {PROCESSING}"
