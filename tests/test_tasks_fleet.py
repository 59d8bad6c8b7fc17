"""Fleet mode's task tree with real hosts: three runner processes, each with its own SELFHEAL_HOST_ID and state
root, share one real PostgreSQL (tests/helpers/postgres.py, never skipped). Each task's command appends its
name to a journal, so the journal counts executions, not claims.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from test_formats import check, schema

from conftest import PYTHON, SCRIPTS, script_env
from selfheal.core.config import Config, load_config
from selfheal.state import pg
from selfheal.state.root import StateRoot
from selfheal.tasks.run import BoundedLog, TaskRun, TaskRunner
from selfheal.tasks.tree import END, NORMAL_CRASH, PROCESSING, Task, TaskStore, runner_identity

HELPERS = Path(__file__).resolve().parent / "helpers"
HOSTS = ("box-1", "box-2", "box-3")
FAST = "process: {heartbeat_s: 0.2}\ntasks: {lease_s: 2.0}\n"


def start_hosts(tmp_path: Path, fleet_url: str, go: Path, *, config: str = FAST) -> dict[str, subprocess.Popen[bytes]]:
    """One long-lived runner process per host (claiming and running until the tree is done), each waiting
    for `go`."""
    workers = {}
    for host in HOSTS:
        home = tmp_path / host
        home.mkdir(mode=0o700)
        (home / "config.yaml").write_text(config)
        env = script_env(home, PYTHONPATH=str(SCRIPTS), SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID=host)
        workers[host] = subprocess.Popen(
            [PYTHON, str(HELPERS / "fleet_task_worker.py"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    return workers


def results(workers: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
    out = {}
    for host, worker in workers.items():
        stdout, stderr = worker.communicate(timeout=170)
        assert worker.returncode == 0, stderr.decode()[-3000:]
        out[host] = {**json.loads(stdout), "stderr": stderr.decode()}
    return out


def store_of(config: Config, host: str, root: Path) -> TaskStore:
    """A simulated host's task store in this process: its host id and state root, the fleet's database."""
    return TaskStore(
        (StateRoot(root / host)).ensure(),
        dataclasses.replace(config, store=dataclasses.replace(config.store, host_id=host)),
    )


def shell(line: str) -> dict[str, Any]:
    return {"kind": "shell", "shell": line}


# Outages: the runs' leases (10 s) outlast the restart, so no running task is taken back meanwhile; a host
# that found the database down tries it again after 0.2 s.
RESTART = "process: {heartbeat_s: 0.5}\ntasks: {lease_s: 10.0}\nstore: {retry_down_s: 0.2}\n"


@pytest.mark.slow
def test_three_hosts_run_a_thousand_task_tree_once_each_through_a_postgresql_restart(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 tasks (40 roots, 4 children each, 5 grandchildren each child) on three long-lived host
    processes; PostgreSQL is stopped once a third of the tree has run, kept down for 2 s (each host meets
    it: its claims refused with FleetTreeDown, or its run's outcome waiting for the database), then started
    again. Each task runs exactly once (its command
    appends its name to the journal), each parent after every one of its children, every host works, and
    every ledger event each host wrote (its own files) is in the fleet's ledger exactly once: those sent
    while the database was down were spooled and replayed. The cluster is this test's own, so that
    stopping it disturbs no other test."""
    from helpers.postgres import Cluster

    cluster = Cluster()
    try:
        fleet_url = cluster.new_database()
        monkeypatch.setenv("SELFHEAL_DATABASE_URL", fleet_url)
        journal = tmp_path / "journal"
        expected: dict[str, list[str]] = {}  # task -> its children
        tasks = []
        for r in range(40):
            root = f"r{r}"
            tasks.append(Task(name=root, run=shell(f"echo {root} >> {journal}")))
            expected[root] = []
            for c in range(4):
                child = f"{root}-c{c}"
                tasks.append(Task(name=child, parent=root, run=shell(f"echo {child} >> {journal}")))
                expected[root].append(child)
                expected[child] = []
                for g in range(5):
                    grandchild = f"{child}-g{g}"
                    tasks.append(Task(name=grandchild, parent=child, run=shell(f"echo {grandchild} >> {journal}")))
                    expected[child].append(grandchild)
                    expected[grandchild] = []
        assert len(expected) == 1000
        store = TaskStore(StateRoot(home).ensure(), load_config())
        assert store.add_many((f"task {n}", t) for n, t in enumerate(tasks)) == 1000
        store.close()
        go = tmp_path / "go"
        workers = start_hosts(tmp_path, fleet_url, go, config=RESTART)
        go.touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 330):
            time.sleep(0.02)
        cluster.stop()
        ran_before = len(journal.read_text().splitlines())
        time.sleep(2.0)  # the outage: longer than a host's retry_down_s and its finish retries, within the lease
        cluster.start()
        ran = results(workers)
        lines = journal.read_text().splitlines()
        assert ran_before < 1000
        assert sorted(lines) == sorted(expected)  # each task ran exactly once...
        assert sorted(n for r in ran.values() for n in r["ran"]) == sorted(expected)  # ...for one claim
        assert all(r["ran"] for r in ran.values()), {h: len(r["ran"]) for h, r in ran.items()}  # every host worked
        # Each host met the outage: a claim refused (FleetTreeDown) or a run's outcome waiting for the database.
        for host, r in ran.items():
            assert r["down"] or "waiting for the fleet database to record it" in r["stderr"], (
                host,
                r["stderr"][-2000:],
            )
        position = {name: i for i, name in enumerate(lines)}
        for parent, children in expected.items():
            for child in children:
                assert position[child] < position[parent], (child, parent)
        local: list[str] = []
        for host in HOSTS:
            state = StateRoot(tmp_path / host)
            assert not state.fleet_spool.exists() or state.fleet_spool.stat().st_size == 0  # replayed
            for path in sorted(state.sub("ledger").glob("*.jsonl")):
                local += [json.loads(line)["event_id"] for line in path.read_text().splitlines()]
        assert len(local) == len(set(local)) and len(local) >= 1000
        with psycopg.connect(fleet_url) as conn:
            assert conn.execute("SELECT DISTINCT exec_state FROM tasks").fetchall() == [(END,)]
            assert conn.execute(
                "SELECT count(*), count(DISTINCT task_name) FROM main_logs WHERE run_status = 'success'"
            ).fetchone() == (1000, 1000)
            # A claim whose reply the stop cut off is taken back after its lease, never run twice.
            assert conn.execute(
                "SELECT count(*) FROM tasks WHERE execution_count <> 1 AND task_name NOT IN"
                " (SELECT task_name FROM main_logs WHERE run_status = 'taken_back')"
            ).fetchone() == (0,)
            shared = [r[0] for r in conn.execute("SELECT event_id FROM selfheal_ledger").fetchall()]
        assert sorted(shared) == sorted(local)  # no event lost, none doubled
    finally:
        cluster.destroy()


def test_a_sigkilled_hosts_task_is_taken_back_after_its_lease_and_finishes_once(
    fleet_url: str, home: Path, tmp_path: Path
) -> None:
    """The host running `slow` dies (SIGKILL, its command too). After tasks.lease_s (2 s here) another host's
    claim takes the task back and runs it again: it starts twice and finishes once. The dead runner's finish,
    arriving late with its old run id, is refused and recorded; the new run's END stays."""
    journal, starts = tmp_path / "journal", tmp_path / "starts"
    store = TaskStore(StateRoot(home).ensure(), load_config())
    with store.transaction() as tree:
        tree.add(
            Task(
                name="slow",
                priority="P0",
                run=shell(f"echo slow >> {starts}; sleep 1.5; echo slow >> {journal}"),
            )
        )
        for i in range(6):
            tree.add(Task(name=f"quick-{i}", run=shell(f"echo quick-{i} >> {journal}")))
    go = tmp_path / "go"
    workers = start_hosts(tmp_path, fleet_url, go)
    go.touch()
    deadline = time.monotonic() + 60
    while not (starts.exists() and starts.read_text()):  # the command has started on some host
        assert time.monotonic() < deadline, "slow never started"
        time.sleep(0.02)
    old = store.get("slow")
    assert old.exec_state == PROCESSING and old.runner is not None
    victim = str(old.runner["host"])
    worker = psutil.Process(workers[victim].pid)
    for proc in [*worker.children(recursive=True), worker]:  # the whole host: its runner and the command
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    workers[victim].wait(10)
    survivors = {h: w for h, w in workers.items() if h != victim}
    ran = results(survivors)

    assert starts.read_text().splitlines() == ["slow", "slow"]  # it ran again...
    assert sorted(journal.read_text().splitlines()) == [
        "quick-0",
        "quick-1",
        "quick-2",
        "quick-3",
        "quick-4",
        "quick-5",
        "slow",
    ]  # ...and finished once
    assert "slow" in [n for r in ran.values() for n in r["ran"]]
    now = store.get("slow")
    assert now.exec_state == END and now.execution_count == 2 and now.run_id != old.run_id
    taken = [h for h in now.history if h["what"] == f"{PROCESSING} -> {NORMAL_CRASH}"]
    assert len(taken) == 1 and f"lease expired, taken back from host {victim} (run {old.run_id}" in taken[0]["reason"]

    # The killed runner's finish arrives late (as if its process had only been frozen): refused, recorded.
    config = load_config()
    config = dataclasses.replace(config, store=dataclasses.replace(config.store, host_id=victim))
    late = TaskStore(StateRoot(tmp_path / victim), config)
    log = BoundedLog(late.log_path("slow"), max_chars=10_000, keep_chars=5_000)
    result = TaskRunner(late)._finish(
        "slow",
        runner=old.runner,
        outcome="failed",
        failed=None,
        duration=1.0,
        log=log,
        run_id=old.run_id,
        started=old.started_ts,
    )
    log.close()
    assert result.outcome == "superseded" and "refused" in result.message
    after = store.get("slow")
    assert (after.exec_state, after.run_id, after.retry_count) == (END, now.run_id, now.retry_count)
    statuses = [r["run_status"] for r in store.db.runs("slow")]
    assert statuses == ["taken_back", "success", "refused"]
    events = [
        json.loads(line)
        for p in sorted((tmp_path / victim / "ledger").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert [e["run_id"] for e in events if e["event"] == "superseded" and e["status"] == "refused"] == [old.run_id]
    # The claim that took it back recorded a `lease` event on its host; both kinds follow the ledger's schema.
    everywhere = [
        json.loads(line)
        for host in HOSTS
        for p in sorted((tmp_path / host / "ledger").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    leases = [e for e in everywhere if e["event"] == "lease"]
    assert len(leases) == 1 and leases[0]["status"] == "taken_back" and leases[0]["from_host"] == victim
    assert leases[0]["host"] != victim and leases[0]["run_id"] == old.run_id
    for event in [*leases, *[e for e in everywhere if e["event"] == "superseded"]]:
        assert check(event, schema("ledger-event.schema.json")) == [], event


@pytest.mark.parametrize("taker", ["box-b", "box-a"])
def test_a_runner_that_lost_its_lease_stops_its_command_and_its_outcome_is_refused(
    fleet_url: str, tmp_path: Path, taker: str
) -> None:
    """box-a runs `long` (its heartbeat every second); its lease is made to run out and box-b's claim takes
    the task back. box-a's next heartbeat finds the task no longer its own: it stops its own command (the
    command's last line never comes) and its outcome is refused, leaving box-b's run as it is. The same when
    the taker is a machine cloned from box-a's under its host id, whose runner has box-a's pid and start (the
    clone booted the same way) but not its boot: box-a took the clone's claim for its own and ran on."""
    marks = tmp_path / "marks"
    config = load_config()
    config = dataclasses.replace(
        config,
        process=dataclasses.replace(config.process, heartbeat_s=1.0),
        tasks=dataclasses.replace(config.tasks, lease_s=60.0),
    )
    a = TaskStore(
        StateRoot(tmp_path / "box-a").ensure(),
        dataclasses.replace(config, store=dataclasses.replace(config.store, host_id="box-a")),
    )
    with a.transaction() as tree:
        tree.add(Task(name="long", run=shell(f"echo start >> {marks}; sleep 6; echo done >> {marks}")))
    got: list[TaskRun] = []
    thread = threading.Thread(target=lambda: got.append(TaskRunner(a).run_next()))
    thread.start()
    deadline = time.monotonic() + 30
    while not (marks.exists() and marks.read_text()):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.02)

    b = TaskStore(
        StateRoot(tmp_path / "taker").ensure(),
        dataclasses.replace(config, store=dataclasses.replace(config.store, host_id=taker)),
    )
    b._db = pg.PgTaskDB(pg.Database(fleet_url, taker), busy_timeout_s=5).open()  # its own connection
    runner = runner_identity(taker)
    if taker == "box-a":
        runner["boot"] = "a-machine-cloned-from-this-one"
    claimed = None
    for _ in range(20):  # box-a's heartbeat may land between the two: age it again
        with psycopg.connect(fleet_url, autocommit=True) as conn:
            conn.execute("UPDATE tasks SET heartbeat_ts = heartbeat_ts - 120 WHERE task_name = 'long'")
        claimed = b.claim(None, runner, "on-box-b")
        if claimed is not None:
            break
    assert claimed is not None and claimed[0].run_id == "long-on-box-b"
    thread.join(30)
    assert not thread.is_alive()
    (result,) = got
    assert result.outcome == "superseded" and "refused" in result.message, result
    assert marks.read_text().splitlines() == ["start"]  # stopped: its last line never came
    now = b.get("long")
    assert (now.exec_state, now.run_id, now.runner) == (PROCESSING, "long-on-box-b", runner)


def test_a_dead_runners_command_is_stopped_on_its_host_once_another_host_took_the_task_over(
    fleet_url: str, tmp_path: Path
) -> None:
    """Host a's runner is SIGKILLed; its command runs on in its own session. After the lease, host b takes the
    task over and runs it. Nothing judges the task on host a any more (it is b's now), so a's next pass stops
    a's copy: the two never run side by side for longer than a's cron interval."""
    pidfile = tmp_path / "a-command.pid"
    envs = {}
    for host in ("a", "b"):
        home = tmp_path / host
        home.mkdir(mode=0o700)
        (home / "config.yaml").write_text(FAST)
        envs[host] = script_env(home, SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID=host)

    def tasks(host: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [PYTHON, str(SCRIPTS / "tasks.py"), *args]
        return subprocess.run(cmd, env=envs[host], capture_output=True, text=True, timeout=60, check=False)

    # On host a the command records itself and runs long; on b it is quick.
    script = f'if [ "$SELFHEAL_HOST_ID" = a ]; then echo $$ > {pidfile}; exec sleep 120; fi; echo done'
    assert tasks("a", "add", "job", "--shell", script).returncode == 0
    runner = subprocess.Popen([PYTHON, str(SCRIPTS / "tasks.py"), "run-next"], env=envs["a"])
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the command never started on host a"
        time.sleep(0.05)
    command = psutil.Process(int(pidfile.read_text()))
    runner.send_signal(signal.SIGKILL)
    runner.wait(10)
    time.sleep(2.5)  # past tasks.lease_s (2 s): the task is free for another host
    taken = tasks("b", "run-next", "--json")
    assert taken.returncode == 0 and json.loads(taken.stdout)["exec_state"] == END, taken.stdout + taken.stderr
    assert command.is_running() and command.status() != psutil.STATUS_ZOMBIE  # a's copy still runs (the problem)
    checked = tasks("a", "check-stuck")
    assert checked.returncode in (0, 1), checked.stderr
    command.wait(10)  # stopped
    assert not command.is_running() or command.status() == psutil.STATUS_ZOMBIE


SKEWED = """
import runpy, sys, time
real, ahead = time.time, float(sys.argv[1])
time.time = lambda: real() + ahead  # this host's clock runs ahead of the database's
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_host_whose_clock_runs_ahead_does_not_find_its_own_healthy_run_stuck(fleet_url: str, tmp_path: Path) -> None:
    """Starts and heartbeats are stamped with the database's clock: a host 120 s ahead (stuck_after_s 60)
    judges their age by that clock too, so its running task is not killed as silent."""
    home = tmp_path / "a"
    home.mkdir(mode=0o700)
    (home / "config.yaml").write_text("process: {heartbeat_s: 0.2}\ntasks: {lease_s: 2.0, stuck_after_s: 60}\n")
    env = script_env(home, SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID="a")
    started = tmp_path / "started"

    def skewed(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [PYTHON, "-c", SKEWED, "120", str(SCRIPTS / "tasks.py"), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)

    assert skewed("add", "steady", "--shell", f"touch {started}; sleep 3; echo done").returncode == 0
    runner = subprocess.Popen(
        [PYTHON, "-c", SKEWED, "120", str(SCRIPTS / "tasks.py"), "run-next", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    checked = skewed("check-stuck", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["findings"] == [], checked.stdout + checked.stderr
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0 and json.loads(out)["exec_state"] == END, out


# A machine cloned from this one's image: the same hostname (so the same default host id), another boot, and
# a process table of its own, where none of this machine's processes runs.
CLONE = """
import runpy, sys
from selfheal.state import runs
runs._boot[:] = ["a-machine-cloned-from-this-one"]
runs.live_process = lambda *args, **kwargs: None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_machine_cloned_under_the_same_host_id_does_not_judge_its_twins_live_run_dead(
    fleet_url: str, tmp_path: Path
) -> None:
    """Two machines speaking as one host id (cloned, sharing the hostname): the clone looked up its twin's
    runner pid in its own process table, found it gone, and failed the live run as 'its runner died' (the
    task then ran again: twice at once). A runner is recorded with its machine's boot; a run of this host id
    on another boot is the lease's business, as another host's is."""
    env = {}
    for machine in ("a", "clone"):
        home = tmp_path / machine
        home.mkdir(mode=0o700)
        (home / "config.yaml").write_text("process: {heartbeat_s: 0.2}\ntasks: {lease_s: 30.0}\n")
        env[machine] = script_env(
            home, PYTHONPATH=str(SCRIPTS), SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID="box"
        )
    started, journal = tmp_path / "started", tmp_path / "journal"
    tasks = str(SCRIPTS / "tasks.py")
    added = subprocess.run(
        [PYTHON, tasks, "add", "nightly", "--shell", f"touch {started}; sleep 3; echo ran >> {journal}"],
        env=env["a"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    runner = subprocess.Popen([PYTHON, tasks, "run-next", "--json"], env=env["a"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    checked = subprocess.run(
        [PYTHON, "-c", CLONE, tasks, "check-stuck", "--json"],
        env=env["clone"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0 and json.loads(checked.stdout)["findings"] == [], checked.stdout + checked.stderr
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0 and json.loads(out)["exec_state"] == END, out
    assert journal.read_text() == "ran\n"


def test_a_nul_in_a_commands_output_is_recorded_and_escalates_as_on_sqlite(fleet_url: str, tmp_path: Path) -> None:
    """A command whose stderr holds a NUL byte: its failure is recorded in the shared tree and it escalates
    (ERROR_FIX_PENDING and a FIX child), as on a single host's SQLite tree; its events reach the fleet's
    ledger (U+FFFD for the NUL), nothing is spooled and nothing says the database is unreachable."""
    command = 'printf "boom\\000zero\\n" >&2; exit 1'
    outcomes = {}
    for mode in ("sqlite", "fleet"):
        home = tmp_path / mode
        home.mkdir(mode=0o700)
        fleet = {"SELFHEAL_DATABASE_URL": fleet_url} if mode == "fleet" else {}
        env = script_env(home, SELFHEAL_HOST_ID="box-n", **fleet)

        def tasks(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
            cmd = [PYTHON, str(SCRIPTS / "tasks.py"), *args]
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)

        assert tasks("add", "nulout", "--shell", command).returncode == 0
        ran = tasks("run-next", "--task", "nulout")
        assert "unreachable" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
        rows = json.loads(tasks("list", "--json").stdout)["tasks"]
        outcomes[mode] = (ran.returncode, sorted((t["name"], t["exec_state"]) for t in rows))
        spool = home / "fleet" / "ledger-spool.jsonl"
        assert not spool.exists() or spool.read_bytes() == b"", spool.read_text()
    assert outcomes["fleet"] == outcomes["sqlite"]
    assert ("nulout", "ERROR_FIX_PENDING") in outcomes["fleet"][1], outcomes
    with psycopg.connect(fleet_url) as conn:
        reasons = [r[0] for r in conn.execute("SELECT data->>'reason' FROM selfheal_ledger WHERE task = 'nulout'")]
        (error,) = conn.execute("SELECT last_error FROM tasks WHERE task_name = 'nulout'").fetchone() or (None,)
    assert any(r and "boom\ufffdzero" in r for r in reasons), reasons
    assert "\x00" not in str(error) and "boom" in str(error)


def test_a_nul_in_a_description_from_a_file_is_stored_with_a_replacement_as_sqlite_stores_it_whole(
    fleet_url: str, tmp_path: Path
) -> None:
    """`add --from` with "\\u0000" in a description: accepted in fleet mode as on SQLite (exit 0); SQLite keeps
    the NUL, the fleet's row holds U+FFFD where it was."""
    source = tmp_path / "tasks.jsonl"
    source.write_text('{"name": "a", "description": "x\\u0000y"}\n')
    for mode in ("sqlite", "fleet"):
        home = tmp_path / mode
        home.mkdir(mode=0o700)
        fleet = {"SELFHEAL_DATABASE_URL": fleet_url} if mode == "fleet" else {}
        env = script_env(home, SELFHEAL_HOST_ID="box-n", **fleet)
        cmd = [PYTHON, str(SCRIPTS / "tasks.py"), "add", "--from", str(source)]
        added = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert added.returncode == 0, added.stderr
        cmd = [PYTHON, str(SCRIPTS / "tasks.py"), "show", "a", "--json"]
        shown = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
        task = json.loads(shown.stdout)
        assert task.get("task", task)["description"] == ("x\ufffdy" if fleet else "x\x00y")
    with psycopg.connect(fleet_url) as conn:
        assert conn.execute("SELECT description FROM tasks WHERE task_name = 'a'").fetchone() == ("x\ufffdy",)
