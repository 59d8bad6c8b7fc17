"""tasks.py as users and cron run it: real runner processes, real races, real kills, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.config import load_config
from selfheal.state.root import StateRoot, write_json
from selfheal.state.runs import live_process, start_ticks
from selfheal.tasks.run import check_stuck
from selfheal.tasks.tree import PROCESSING, Task, TaskStore

TASKS = str(SCRIPTS / "tasks.py")


@pytest.fixture(autouse=True)
def fast(write_config: Callable[[str], Path]) -> None:
    """No real retry waits, a short kill grace and a quick heartbeat, so runs end (and are seen) quickly."""
    write_config(
        """
        retry: {jitter: none}
        policies:
          transient: {base_s: 0.01}
          unknown: {attempts: 1}
          permanent: {attempts: 1}
        process: {kill_grace_s: 1, heartbeat_s: 0.2}
        fixes: {use_model: false}
        """
    )


def tasks(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """tasks.py in this process (conftest's call_script): the same main(), arguments, streams and exit code."""
    return call_script("tasks.py", *args, home=home, cwd=cwd)


def start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, TASKS, *args],
        env=script_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON object, got: {proc.stdout!r} / {proc.stderr!r}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def record(home: Path, name: str) -> dict[str, Any]:
    """A task as `tasks.py show --json` shows it, read through the store (tasks.db)."""
    store = TaskStore(StateRoot(home), load_config())
    try:
        return store.record(name)
    finally:
        store.close()


def everything(home: Path) -> dict[str, Any]:
    """Every row of the task database and every file under tasks/: equal before and after means unchanged."""
    store = TaskStore(StateRoot(home), load_config())
    try:
        rows = {
            table: store.db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608 - our own tables
            for table in ("tasks", "tasks_archive", "main_logs", "meta")
        }
    finally:
        store.close()
    return {"rows": rows, "files": {p.name: p.read_bytes() for p in (home / "tasks").iterdir() if p.is_file()}}


def ledger(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((home / "ledger").glob("*.jsonl")) for line in f.read_text().splitlines()]


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (FileNotFoundError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def tree_pids(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def gone(procs: list[psutil.Process], timeout: float = 15.0) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


# -- running -------------------------------------------------------------------------------------------


def test_run_next_runs_fix_tasks_first_and_records_each_outcome(home: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    assert tasks(home, "add", "report", "--shell", f"echo report >> {journal}; echo made the report").returncode == 0
    assert tasks(home, "add", "FIX-db", "--", "sh", "-c", f"echo fix >> {journal}").returncode == 0

    first = tasks(home, "run-next", "--json")
    assert first.returncode == 0, first.stderr
    result = as_json(first)
    assert (result["ok"], result["task"], result["outcome"], result["exec_state"]) == (
        True,
        "FIX-db",
        "succeeded",
        "END",
    )
    second = as_json(tasks(home, "run-next", "--json"))
    assert (second["task"], second["exec_state"], second["execution_count"]) == ("report", "END", 1)
    third = tasks(home, "run-next", "--json")
    assert (third.returncode, as_json(third)["outcome"]) == (0, "nothing")
    assert journal.read_text().splitlines() == ["fix", "report"]

    rec = record(home, "report")
    assert (rec["exec_state"], rec["status"], rec["retry_count"], rec["runner"]) == ("END", "completed", 0, None)
    assert rec["last_result"].startswith("succeeded in ")
    log = (home / "tasks" / "report.log").read_text()
    assert "made the report" in log and "run 1 of report" in log
    shown = tasks(home, "log", "report")
    assert "made the report" in shown.stdout
    # Quiet when there is nothing to do, as cron wants.
    quiet = tasks(home, "run-next", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_a_failing_task_escalates_through_fix_tasks_to_a_person(home: Path, tmp_path: Path) -> None:
    tasks(home, "add", "etl", "--priority", "P0", "--", "sh", "-c", "echo 'KeyError: price' >&2; exit 1")
    failed = tasks(home, "run-next", "--json")
    assert failed.returncode == 3
    result = as_json(failed)
    assert (result["task"], result["exec_state"], result["retry_count"]) == ("etl", "ERROR_FIX_PENDING", 1)
    assert result["fix_tasks"] == ["FIX-etl-command"]
    assert as_json(tasks(home, "actionable", "--json"))["tasks"] == ["FIX-etl-command"]  # the parent waits
    fix = record(home, "FIX-etl-command")
    assert (fix["type"], fix["priority"], fix["parent"], fix["level"]) == ("fix", "P0", "etl", 2)
    assert "KeyError: price" in fix["last_error"]

    analysed = as_json(tasks(home, "run-next", "--type", "fix", "--json"))
    assert (analysed["task"], analysed["outcome"], analysed["exec_state"]) == (
        "FIX-etl-command",
        "analysed",
        "REQUIRES_MANUAL",
    )
    assert "KeyError" in record(home, "FIX-etl-command")["analysis"]
    assert as_json(tasks(home, "actionable", "--json"))["tasks"] == ["etl"]  # a settled child frees the parent

    # The document's loop: each failure makes a FIX task, the fix cron analyses it, the task runs again; at 5
    # a SOL task replaces the FIX tasks; 3 more failures and it needs a person.
    outcomes = []
    for _ in range(7):
        outcomes.append(as_json(tasks(home, "run-next", "--type", "regular", "--json")))
        tasks(home, "run-next", "--type", "fix", "--json")
    assert [o["retry_count"] for o in outcomes] == [2, 3, 4, 5, 6, 7, 8]
    assert [o["exec_state"] for o in outcomes] == ["ERROR_FIX_PENDING"] * 6 + ["REQUIRES_MANUAL"]
    assert [o["fix_tasks"] for o in outcomes] == [
        ["FIX-etl-command-2"],
        ["FIX-etl-A3"],
        ["FIX-etl-A4"],
        ["SOL-etl"],
    ] + [[]] * 3
    assert {record(home, n)["exec_state"] for n in ("FIX-etl-command", "FIX-etl-A3", "FIX-etl-A4")} == {"VOID"}
    incident = json.loads(Path(outcomes[-1]["incident"]).read_text())
    assert incident["task"] == "etl" and "run-next --task etl" in incident["resume_command"]
    events = ledger(home)
    made = [e["fix_task"] for e in events if e["event"] == "fix" and e.get("fix_task")]
    assert made == ["FIX-etl-command", "FIX-etl-command-2", "FIX-etl-A3", "FIX-etl-A4", "SOL-etl"]
    assert [e["event"] for e in events].count("incident") == 1
    # Its failures were explained in one fix record (rules, as the model is off here), seen at each analysis.
    records = {e["fix_id"] for e in events if e.get("fix_id")}
    assert records == {"FIX-etl-001"} and record(home, "etl")["fix_record"] == "FIX-etl-001"

    # A person fixes it and hands it back: a fresh budget, and it runs at once when asked.
    tasks(home, "set", "etl", "--solution", "added the price column")
    handed = tasks(home, "mark", "etl", "error", "--reason", "schema fixed")
    assert handed.returncode == 0 and record(home, "etl")["retry_count"] == 0
    rec = record(home, "etl")
    assert rec["solution"] == "added the price column" and rec["history"][-1]["reason"] == "schema fixed"


@pytest.mark.parametrize("runners", [2, 6])
def test_runners_started_together_run_one_task_once(home: Path, tmp_path: Path, runners: int) -> None:
    """They all reach the claim at about the same time; the tree's lock lets exactly one take the task."""
    journal = tmp_path / "journal"
    script = f"import time; open({str(journal)!r}, 'a').write('ran\\n'); time.sleep(0.5)"
    tasks(home, "add", "once", "--", PYTHON, "-c", script)
    procs = [start(home, "run-next", "--json") for _ in range(runners)]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert sorted(o["outcome"] for o in outs) == ["nothing"] * (runners - 1) + ["succeeded"], outs
    assert journal.read_text() == "ran\n"
    assert record(home, "once")["execution_count"] == 1


def test_the_output_log_stays_bounded_with_a_command_printing_5_mb(home: Path) -> None:
    code = "import sys\nfor i in range(100000): sys.stdout.write(f'line {i:06d} ' + 'x' * 40 + '\\n')\nprint('THE END')"
    tasks(home, "add", "chatty", "--", PYTHON, "-c", code)
    done = tasks(home, "run-next", "--json")
    assert as_json(done)["exec_state"] == "END", done.stderr
    text = (home / "tasks" / "chatty.log").read_text()
    assert 70_000 < len(text) <= 100_000
    assert text.startswith("[self-heal: earlier output cut; this log keeps its last 80000 characters]")
    assert "line 099999 " in text and "THE END" in text


def test_a_plan_task_resumes_through_the_workflow_runner(home: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        textwrap.dedent(
            f"""
            name: nightly
            steps:
              - name: fetch
                shell: "echo fetch >> {tmp_path}/journal"
              - name: publish
                shell: "test -e {tmp_path}/ready || {{ echo 'FileNotFoundError: ready' >&2; exit 1; }};
                  echo publish >> {tmp_path}/journal"
            """
        )
    )
    tasks(home, "add", "nightly", "--workflow", str(plan))
    first = as_json(tasks(home, "run-next", "--json"))
    assert (first["exec_state"], first["failed_step"], first["fix_tasks"]) == (
        "ERROR_FIX_PENDING",
        "publish",
        ["FIX-nightly-publish"],
    )
    (tmp_path / "ready").touch()
    tasks(home, "mark", "FIX-nightly-publish", "end", "--result", "created the ready file")
    second = as_json(tasks(home, "run-next", "--json"))
    assert (second["task"], second["exec_state"]) == ("nightly", "END")
    assert (tmp_path / "journal").read_text().splitlines() == ["fetch", "publish"]  # fetch never ran twice


def test_a_parked_plan_handed_back_by_a_person_resumes_at_its_unfinished_step(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    write_config(
        "policies: {unknown: {attempts: 1}}\nworkflows: {max_resumes_without_progress: 1}\n"
        "process: {kill_grace_s: 1, heartbeat_s: 0.2}\n"
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"steps:\n  - name: one\n    shell: 'echo one >> {tmp_path}/journal'\n"
        f"  - name: two\n    shell: 'test -e {tmp_path}/ready && echo two >> {tmp_path}/journal'\n"
    )
    tasks(home, "add", "parked", "--workflow", str(plan))
    for _ in range(10):
        if record(home, "parked")["exec_state"] == "REQUIRES_MANUAL":
            break
        tasks(home, "run-next")
    rec = record(home, "parked")
    assert rec["exec_state"] == "REQUIRES_MANUAL" and rec["incident"]
    (tmp_path / "ready").touch()
    assert tasks(home, "mark", "parked", "error").returncode == 0
    resumed = as_json(tasks(home, "run-next", "--task", "parked", "--json"))
    assert resumed["exec_state"] == "END", resumed
    assert (tmp_path / "journal").read_text().splitlines() == ["one", "two"]


# -- stuck and dead runs ---------------------------------------------------------------------------------


def test_a_hanging_task_is_found_stuck_and_its_whole_process_tree_is_killed(
    home: Path, write_config: Callable[[str], Path]
) -> None:
    write_config(
        "process: {kill_grace_s: 1, heartbeat_s: 0.2}\ntasks: {stuck_after_s: 1}\n"  # stuck after 1 s without output
    )
    tasks(home, "add", "hangs", "--", "sh", "-c", "sleep 300 & sleep 300; wait")
    runner = start(home, "run-next", "--json")
    wait_until(lambda: record(home, "hangs")["exec_state"] == "PROCESSING", what="the claim")

    def both_sleeps() -> list[psutil.Process] | None:
        procs = tree_pids(runner.pid)
        return procs if len([p for p in procs if p.name() == "sleep"]) == 2 else None

    procs = wait_until(both_sleeps, what="the command and its background child")
    time.sleep(1.3)  # the only real wait: past stuck_after_s with no output

    checked = tasks(home, "check-stuck", "--json")
    assert checked.returncode == 1, checked.stderr
    (finding,) = as_json(checked)["findings"]
    assert (finding["task"], finding["kind"], finding["fix_task"]) == ("hangs", "stuck", "FIX-hangs-STUCK")
    assert {p.pid for p in procs} <= set(finding["killed"])
    assert gone(procs)
    out, _ = runner.communicate(timeout=30)
    rec = record(home, "hangs")
    assert (rec["exec_state"], rec["retry_count"], rec["runner"]) == ("ERROR_FIX_PENDING", 1, None)
    assert record(home, "FIX-hangs-STUCK")["parent"] == "hangs"
    assert "[STUCK] task=hangs reason=stuck" in (home / "logs" / "selfheal.log").read_text()
    # The runner stood down: it did not overwrite what the stuck check decided.
    assert "run-next" not in rec["history"][-1].get("by", "")
    # A run taken over as stuck is a real problem, not a person's change: it stays a failure (exit 3; its exit
    # status itself went to gone(), which reaped the runner).
    assert (json.loads(out)["outcome"], json.loads(out)["ok"]) == ("superseded", False), out


def test_a_stuck_runner_started_in_a_shell_pipeline_is_stopped_without_the_users_other_commands(
    home: Path, write_config: Callable[[str], Path]
) -> None:
    """`tasks.py run-next | tee log` from a shell: the runner leads the process group of the user's `tee`
    too. The stuck check stops the runner and what it started, never the rest of that group."""
    write_config("process: {kill_grace_s: 1, heartbeat_s: 0.2}\ntasks: {stuck_after_s: 1}\n")
    tasks(home, "add", "hangs", "--", "sleep", "300")
    # The runner leads a new process group (as a shell's job does), and a process of the user's joins it.
    runner = subprocess.Popen(
        [PYTHON, TASKS, "run-next", "--json"],
        env=script_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=os.setpgrp,  # noqa: PLW1509 - a new group, as a shell gives a job
    )
    group = runner.pid
    neighbour = subprocess.Popen(["sleep", "300"], preexec_fn=lambda: os.setpgid(0, group))  # noqa: PLW1509
    try:
        wait_until(lambda: record(home, "hangs")["exec_state"] == "PROCESSING", what="the claim")
        command = wait_until(
            lambda: next((p for p in tree_pids(runner.pid) if p.name() == "sleep"), None), what="the command"
        )
        time.sleep(1.3)  # the only real wait: past stuck_after_s with no output
        checked = tasks(home, "check-stuck", "--json")
        (finding,) = as_json(checked)["findings"]
        assert finding["kind"] == "stuck" and {runner.pid, command.pid} <= set(finding["killed"])
        assert neighbour.pid not in finding["killed"]
        runner.wait(timeout=30)
        assert neighbour.poll() is None  # the user's process lives on
    finally:
        neighbour.kill()
        neighbour.wait()
        if runner.poll() is None:
            runner.kill()
            runner.wait()


STEPPED = """
import os, runpy, sys
import psutil._pslinux as linux
real = linux.boot_time
linux.boot_time = lambda: real() + float(os.environ["CLOCK_STEP_S"])  # what a stepped wall clock does to btime
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("step_s", [1.0, -30.0, 3600.0])
def test_a_stepped_wall_clock_does_not_make_a_live_runner_look_dead(
    home: Path, write_config: Callable[[str], Path], step_s: float
) -> None:
    """NTP, `date -s` or a resumed VM steps the wall clock, and every process's start time in seconds since
    the epoch moves with it: the runner and its command are still told apart from a reused pid by their start
    in clock ticks since boot, so the stuck check finds nothing to kill and the task finishes once."""
    write_config("process: {kill_grace_s: 1, heartbeat_s: 0.2}\n")
    tasks(home, "add", "long", "--", "sh", "-c", "sleep 3; echo done")
    runner = start(home, "run-next", "--json")
    try:
        wait_until(lambda: record(home, "long")["exec_state"] == "PROCESSING", what="the claim")
        wait_until(lambda: any(p.name() == "sleep" for p in tree_pids(runner.pid)), what="the command")
        env = script_env(home) | {"CLOCK_STEP_S": str(step_s)}
        checked = subprocess.run(
            [PYTHON, "-c", STEPPED, str(TASKS), "check-stuck", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0 and as_json(checked)["findings"] == [], checked.stdout + checked.stderr
        out, _ = runner.communicate(timeout=60)
        assert runner.returncode == 0 and record(home, "long")["exec_state"] == "END", out
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()


STEPPABLE = """
import os, runpy, sys, time
real = time.time
def stepped():  # the wall clock as NTP, `date -s` or a resumed VM leaves it: moved by what the file says
    try:
        with open(os.environ["CLOCK_STEP_FILE"]) as fh:
            return real() + float(fh.read() or 0)
    except (OSError, ValueError):
        return real()
time.time = stepped
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
def test_a_run_is_judged_stuck_by_the_time_it_really_was_quiet_after_the_wall_clock_steps(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path], step_s: float
) -> None:
    """The wall clock steps while a task runs (a laptop or VM resumed after hours, NTP at last reachable):
    a quiet but healthy run is not killed as hours silent after a step forward, and a hung one is still found
    after a step back (its silence is measured on the runner's monotonic clock, not between wall stamps)."""
    write_config("process: {kill_grace_s: 1, heartbeat_s: 0.2}\ntasks: {stuck_after_s: 2}\n")
    hangs = step_s < 0
    tasks(home, "add", "quiet", "--", "sh", "-c", "echo started; sleep 300" if hangs else "echo started; sleep 4")
    step = tmp_path / "step"
    runner = subprocess.Popen(
        [PYTHON, "-c", STEPPABLE, TASKS, "run-next", "--json"],
        env=script_env(home) | {"CLOCK_STEP_FILE": str(step)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: "started" in (home / "tasks" / "quiet.log").read_text(), what="the command's output")
        step.write_text(str(step_s))
        # The runner's heartbeat has seen the step: it stamps the stepped time.
        wait_until(lambda: abs(record(home, "quiet")["heartbeat_ts"] - (time.time() + step_s)) < 1, what="a beat")
        if hangs:
            time.sleep(2.5)  # the only real wait: past stuck_after_s without output
        store = TaskStore(StateRoot(home), load_config())
        try:
            found = check_stuck(store, now=time.time() + step_s)
        finally:
            store.close()
        assert [(f.task, f.kind) for f in found] == ([("quiet", "stuck")] if hangs else [])
        out, err = runner.communicate(timeout=60)
        rec = record(home, "quiet")
        assert rec["exec_state"] == ("ERROR_FIX_PENDING" if hangs else "END"), out + err
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()


def test_a_recorded_process_is_told_apart_by_its_start_in_ticks_when_it_has_one() -> None:
    me = os.getpid()
    ticks = start_ticks(me)
    assert isinstance(ticks, int) and ticks > 0
    now = psutil.Process(me).create_time()
    assert live_process(me, now - 5000.0, ticks) is not None  # the wall clock moved: still the same process
    assert live_process(me, now, ticks + 1) is None  # another start: another process with this pid
    assert live_process(me, now - 5000.0) is None  # an older record without ticks: the start time decides


def test_a_process_that_reuses_the_recorded_pid_is_left_alone(home: Path, state: StateRoot) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        real = psutil.Process(stranger.pid).create_time()
        store = TaskStore(state, load_config())
        with store.transaction() as tree:
            tree.add(Task(name="old-run", run={"kind": "argv", "argv": ["true"]}))
            tree.transition("old-run", PROCESSING)
            tree.quiet_update(
                "old-run",
                runner={"pid": stranger.pid, "create_time": real - 1000, "host": socket.gethostname()},
                activity_ts=time.time() - 10_000,
                heartbeat_ts=time.time() - 10_000,
            )
        # Its run record also names the pid as its command, with the old start time.
        write_json(
            state.run_file("old-run-1"),
            {"task": "old-run", "status": "running", "child": {"pid": stranger.pid, "create_time": real - 1000}},
        )
        (finding,) = check_stuck(store)
        assert (finding.kind, finding.killed) == ("dead", [])
        assert stranger.poll() is None and psutil.Process(stranger.pid).status() != psutil.STATUS_ZOMBIE
        assert store.get("old-run").exec_state == "NORMAL_CRASH"  # its runner is gone: a crash, retried
    finally:
        stranger.kill()
        stranger.wait()


def test_a_runner_killed_with_sigkill_is_found_dead_and_its_orphaned_command_is_stopped(home: Path) -> None:
    tasks(home, "add", "orphaned", "--", "sh", "-c", "echo started; sleep 300")
    runner = start(home, "run-next")
    wait_until(lambda: "started" in (home / "tasks" / "orphaned.log").read_text(), what="the command's output")
    command = [p for p in tree_pids(runner.pid)[1:]]
    runner.send_signal(signal.SIGKILL)
    runner.communicate(timeout=10)
    assert all(p.is_running() for p in command)  # in its own session, it outlived the runner

    checked = as_json(tasks(home, "check-stuck", "--json"))
    (finding,) = checked["findings"]
    assert (finding["kind"], finding["exec_state"]) == ("dead", "NORMAL_CRASH")
    assert gone(command)
    rec = record(home, "orphaned")
    assert rec["retry_count"] == 1 and "died without recording an outcome" in rec["last_error"]
    assert as_json(tasks(home, "actionable", "--json"))["tasks"] == ["orphaned"]  # retried on the next pass


def handles_sigterm(pid: int) -> bool:
    """Whether the process catches SIGTERM now (SigCgt in /proc/PID/status): run-next's stop flag is installed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.mark.parametrize(
    "how", [("run-next",), ("run-next", "--max", "2"), ("run-next", "--task", "one")], ids=["one", "max", "task"]
)
def test_a_signal_to_run_next_before_its_claim_claims_nothing(home: Path, tmp_path: Path, how: tuple[str, ...]) -> None:
    """SIGTERM to run-next after it set up its stop flag and before it claimed a task (a `--max` loop between two
    runs): it claims nothing and exits 3, as a signal during a run does, naming the signal. It used to claim the
    next task and interrupt it at once: a needless interrupted run in the task's history, counted toward its
    "interrupted 3 runs in a row"."""
    journal = tmp_path / "journal"
    for name in ("one", "two"):
        assert tasks(home, "add", name, "--shell", f"echo {name} >> {journal}").returncode == 0
    # The tree's write lock, held: run-next waits for it before it claims (the first pass in a home also looks for
    # finished trees to archive, in a write transaction), so the signal lands before the claim whatever the pace.
    holder = sqlite3.connect(home / "tasks.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        runner = start(home, *how, "--json")
        wait_until(lambda: handles_sigterm(runner.pid), what="run-next to handle SIGTERM")
        runner.send_signal(signal.SIGTERM)
    finally:
        holder.close()
    out, err = runner.communicate(timeout=30)
    result = json.loads(out)
    stopped = result["runs"][-1] if "runs" in result else result
    assert (runner.returncode, result["ok"], stopped["task"], stopped["outcome"]) == (3, False, None, "interrupted"), (
        out + err
    )
    assert "SIGTERM" in stopped["message"] and "nothing was claimed" in stopped["message"]
    if "runs" in result:
        assert (result["ran"], len(result["runs"])) == (0, 1)
    assert not journal.exists()
    for name in ("one", "two"):
        task = record(home, name)
        assert (task["exec_state"], task["execution_count"]) == ("NEW", 0), task
        assert not any("interrupted" in (entry.get("reason") or "") for entry in task["history"]), task


def test_a_task_whose_runs_are_interrupted_again_and_again_counts_as_failing(home: Path, tmp_path: Path) -> None:
    """A task that always outlives what runs run-next (cron's `timeout 300 tasks.py run-next` sending SIGTERM)
    was put back uncounted after each interruption and claimed first again on the next pass: retried for ever,
    never escalated, and the tasks behind it waited. The third interruption in a row counts as a failure."""
    started = tmp_path / "started"
    assert tasks(home, "add", "export", "--shell", f"touch {started}; exec sleep 300").returncode == 0
    for run in range(1, 4):
        started.unlink(missing_ok=True)
        runner = start(home, "run-next", "--json")
        wait_until(started.exists, what="the command to start")
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=30)
        task = record(home, "export")
        if run < 3:
            assert json.loads(out)["outcome"] == "interrupted", out + err
            assert task["retry_count"] == 0 and task["exec_state"] == "NORMAL_CRASH", task
        else:
            assert json.loads(out)["outcome"] == "failed", out + err
            assert task["retry_count"] == 1 and "interrupted 3 runs in a row" in task["last_result"], task


@pytest.mark.parametrize(
    ("change", "state"), [(("void", "unwanted"), "VOID"), (("mark", "unwanted", "end"), "END")], ids=["void", "end"]
)
def test_a_person_voiding_or_ending_a_running_task_stops_its_command_and_is_no_failure(
    home: Path, change: tuple[str, ...], state: str
) -> None:
    """A person's deliberate change is not a failure of the runner: run-next exits 0 (cron mailed exit 3 as one),
    says on stderr in one line that a person changed the task and its outcome was not recorded, and the ledger
    keeps a `superseded` event."""
    tasks(home, "add", "unwanted", "--", "sh", "-c", "echo going; sleep 300")
    runner = start(home, "run-next", "--json")
    wait_until(lambda: "going" in (home / "tasks" / "unwanted.log").read_text(), what="the command's output")
    command = tree_pids(runner.pid)[1:]
    assert tasks(home, *change, "--reason", "not needed").returncode == 0
    out, err = runner.communicate(timeout=30)
    assert json.loads(out)["outcome"] == "superseded" and runner.returncode == 0, out + err
    (line,) = err.splitlines()
    assert "'unwanted'" in line and "by a person" in line and f"now {state}" in line and "not recorded" in line
    assert gone(command)
    assert record(home, "unwanted")["exec_state"] == state
    events = [e for e in ledger(home) if e["event"] == "superseded"]
    assert [(e["task"], e["status"]) for e in events] == [("unwanted", "refused")], events


def test_an_agent_keeps_its_own_task_alive_with_beats(home: Path) -> None:
    tasks(home, "add", "agent-work")
    assert tasks(home, "mark", "agent-work", "start").returncode == 0
    before = record(home, "agent-work")["heartbeat_ts"]
    time.sleep(0.05)
    beat = tasks(home, "beat", "agent-work", "--message", "halfway through")
    assert beat.returncode == 0, beat.stderr
    rec = record(home, "agent-work")
    assert rec["heartbeat_ts"] > before and rec["activity_ts"] == rec["heartbeat_ts"]
    assert "halfway through" in (home / "tasks" / "agent-work.log").read_text()
    tasks(home, "mark", "agent-work", "end")
    refused = tasks(home, "beat", "agent-work")
    assert refused.returncode == 2 and "is END, not PROCESSING" in refused.stderr


def test_a_beat_that_trims_the_log_while_run_next_writes_it_loses_none_of_the_runners_later_lines(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    """`beat --message` pushes a running task's log past its bound and trims it (a new file in its place) while
    run-next still writes the log: every line the command prints after the trim, and the runner's closing
    note, must reach the log a person reads (they went to the old file, unlinked, and were lost)."""
    write_config(
        "process: {kill_grace_s: 1, heartbeat_s: 0.2}\nfixes: {use_model: false}\n"
        "tasks: {log_max_chars: 2000, log_keep_chars: 1800}\n"
    )
    ready, beaten = tmp_path / "ready", tmp_path / "beaten"
    script = (
        f'for i in $(seq 1 30); do echo "early line $i"; done; touch {ready};'
        f" while [ ! -e {beaten} ]; do sleep 0.05; done;"
        ' for i in 1 2 3 4 5; do echo "later line $i"; done'
    )
    assert tasks(home, "add", "writer", "--shell", script).returncode == 0
    runner = start(home, "run-next", "--json")
    log = home / "tasks" / "writer.log"
    wait_until(lambda: ready.exists() and "early line 30" in log.read_text(), what="the command's first lines")
    beat = tasks(home, "beat", "writer", "--message", "agent: " + "still working. " * 110)
    assert beat.returncode == 0, beat.stderr
    assert "earlier output cut" in log.read_text()  # the beat's line took the log past its bound
    beaten.touch()
    out, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, out + err
    text = log.read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("later line")] == [f"later line {i}" for i in range(1, 6)]
    assert "still working." in text and "succeeded after" in text


def test_a_stuck_task_that_needs_a_person_has_a_resume_command_that_runs_it(
    home: Path, write_config: Callable[[str], Path]
) -> None:
    """A task found stuck gets FIX-<task>-STUCK and, at the threshold, an incident: its resume command, followed
    as written, must run the task, not stop at exit 4 because the FIX child has not run yet; and the exit 4 of
    `run-next --task` names the FIX child and the command that runs it."""
    write_config(
        "retry: {jitter: none}\nfixes: {use_model: false}\n"
        "tasks: {stuck_after_s: 1, analyze_at_failures: 1, solution_at_failures: 0, manual_at_failures: 1}\n"
    )
    assert tasks(home, "add", "hangs", "--", "sh", "-c", "echo done").returncode == 0
    assert tasks(home, "mark", "hangs", "start").returncode == 0  # running, silent
    store = TaskStore(StateRoot(home), load_config())
    try:
        (finding,) = check_stuck(store, now=time.time() + 60)
    finally:
        store.close()
    assert (finding.exec_state, finding.fix_task) == ("REQUIRES_MANUAL", "FIX-hangs-STUCK")
    incident = json.loads(Path(str(finding.incident)).read_text())
    assert "FIX-hangs-STUCK" in incident["resume_command"]

    assert tasks(home, "mark", "hangs", "error").returncode == 0
    waiting = tasks(home, "run-next", "--task", "hangs")
    assert waiting.returncode == 4 and "`tasks.py run-next --task FIX-hangs-STUCK`" in waiting.stderr, waiting.stderr
    assert tasks(home, "mark", "hangs", "manual").returncode == 0  # as the incident left it

    done = subprocess.run(  # noqa: S602 - the incident's own command, as a person would paste it
        incident["resume_command"], shell=True, env=script_env(home), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert record(home, "hangs")["exec_state"] == "END"


# -- the command line --------------------------------------------------------------------------------------


def test_bad_input_on_the_command_line_is_refused_and_changes_nothing(home: Path, tmp_path: Path) -> None:
    tasks(home, "add", "parent")
    tasks(home, "add", "child", "--parent", "parent")
    tasks(home, "add", "finished")
    tasks(home, "mark", "finished", "end")
    bad_plan = tmp_path / "bad.yaml"
    bad_plan.write_text("steps:\n  - name: s1\n    command: [echo]\n    timeout: -1\n")
    before = everything(home)
    cases = [
        (["mark", "nosuch", "end"], "no task named 'nosuch'"),
        (["show", "chlid"], "did you mean 'child'?"),
        (["mark", "finished", "start"], "'finished' is END and cannot become PROCESSING"),
        (["add", "child"], "task 'child' already exists"),
        (["add", "x", "--parent", "nosuch"], "parent 'nosuch' does not exist"),
        (["reparent", "parent", "--parent", "child"], "would become its own ancestor"),
        (["add", "../x"], "invalid task id '../x'"),
        (["add", "x", "--shell", "true", "--", "true"], "give one of"),
        (["add", "x", "--workflow", str(bad_plan)], "timeout"),
        (["add", "x", "--priority", "P7"], "invalid choice"),
        (["run-next", "--task", "finished"], "'finished' is END"),
        (["mark", "finished", "restart"], "invalid choice"),
    ]
    for args, text in cases:
        proc = tasks(home, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert text in proc.stderr, (args, proc.stderr)
        assert proc.stdout == ""
    as_json_error = tasks(home, "mark", "nosuch", "end", "--json")
    assert as_json(as_json_error)["ok"] is False and as_json_error.returncode == 2
    assert everything(home) == before


def test_a_parent_waiting_for_children_is_not_attempted_when_asked_by_name(home: Path) -> None:
    tasks(home, "add", "parent", "--", "true")
    tasks(home, "add", "child", "--parent", "parent", "--", "true")
    proc = tasks(home, "run-next", "--task", "parent")
    assert proc.returncode == 4 and "waits for its children: child (NEW)" in proc.stderr


def test_list_tree_and_show_describe_the_tree(home: Path) -> None:
    tasks(home, "add", "TC-FLOW-001", "--display-name", "end to end", "--", "true")
    tasks(home, "add", "step-a", "--parent", "TC-FLOW-001", "--priority", "P0", "--", "true")
    tasks(home, "add", "idea", "--type", "creative")
    tree = tasks(home, "tree").stdout.splitlines()
    assert tree == [
        "TC-FLOW-001 [regular P1 NEW]  end to end  (waits for children)",
        "└─ step-a [regular P0 NEW]  <- actionable",
        "idea [creative P1 NEW]  <- actionable",
    ]
    listed = as_json(tasks(home, "list", "--json"))["tasks"]
    assert [t["name"] for t in listed] == ["step-a", "TC-FLOW-001", "idea"]
    assert [
        t["name"] for t in as_json(tasks(home, "list", "--state", "new", "--type", "creative", "--json"))["tasks"]
    ] == ["idea"]
    shown = tasks(home, "show", "TC-FLOW-001").stdout
    assert "children: step-a (NEW)" in shown and "waits for its children" in shown
    idea = as_json(tasks(home, "show", "idea", "--json"))
    assert idea["actionable"] is False and "nothing to run" in idea["why_not"]
    # run-next leaves an agent's task (nothing to run) alone, but `actionable` lists it for the agent.
    assert as_json(tasks(home, "actionable", "--json"))["tasks"] == ["step-a", "idea"]
    assert os.stat(home / "tasks.db").st_mode & 0o777 == 0o600


def test_show_tells_how_to_hand_back_a_parked_task_by_its_name(home: Path) -> None:
    """A parked FIX task is ended once its fix is applied (`mark FIX-... end`); another parked task goes back
    with `mark <its name> error`: `show` says which, with the task's own name."""
    tasks(home, "add", "FIX-etl-001", "--type", "fix")
    tasks(home, "add", "etl", "--", "true")
    for name in ("FIX-etl-001", "etl"):
        tasks(home, "mark", name, "manual")
    fix = as_json(tasks(home, "show", "FIX-etl-001", "--json"))["why_not"]
    assert "`tasks.py mark FIX-etl-001 end`" in fix and "NAME" not in fix
    plain = as_json(tasks(home, "show", "etl", "--json"))["why_not"]
    assert "`tasks.py mark etl error`" in plain and "NAME" not in plain
    # What it says works.
    assert tasks(home, "mark", "FIX-etl-001", "end").returncode == 0


def test_archive_moves_finished_trees_and_show_still_finds_them(home: Path) -> None:
    tasks(home, "add", "finished", "--", "true")
    assert as_json(tasks(home, "run-next", "--json"))["exec_state"] == "END"
    tasks(home, "add", "open")
    moved = as_json(tasks(home, "archive", "--older-than", "0", "--json"))
    assert moved["archived"] == ["finished"]
    assert [t["name"] for t in as_json(tasks(home, "list", "--json"))["tasks"]] == ["open"]
    shown = tasks(home, "show", "finished")
    assert shown.returncode == 0 and "END (archived:" in shown.stdout
    assert tasks(home, "add", "finished", "--", "true").returncode == 0  # the name is free again


def test_heartbeats_and_activity_stay_current_while_a_task_runs(home: Path, tmp_path: Path) -> None:
    """The command ticks until the test has seen what it waits for (a fixed 1.5 s run was too short to see
    three beats on a loaded machine, where each look at the record takes a while)."""
    done = tmp_path / "done"
    code = (
        "import os, sys, time\nfor i in range(600):\n    print('tick', i, flush=True)\n"
        "    if os.path.exists(sys.argv[1]): break\n    time.sleep(0.1)"
    )
    tasks(home, "add", "ticking", "--", PYTHON, "-c", code, str(done))
    runner = start(home, "run-next", "--json")
    seen: list[tuple[float, float]] = []
    try:
        while runner.poll() is None and not done.exists():
            try:
                rec = record(home, "ticking")
            except (ValueError, FileNotFoundError):
                continue
            if rec["exec_state"] == "PROCESSING" and rec["heartbeat_ts"]:
                seen.append((rec["heartbeat_ts"], rec["activity_ts"]))
            if len({b for b, _ in seen}) >= 3 and len({a for _, a in seen}) >= 2:
                done.touch()
            time.sleep(0.05)
    finally:
        done.touch()
    assert json.loads(runner.communicate(timeout=60)[0])["exec_state"] == "END"
    beats = sorted({b for b, _ in seen})
    activity = sorted({a for _, a in seen})
    assert len(beats) >= 3, seen  # every process.heartbeat_s (0.2 s here)
    assert len(activity) >= 2 and activity[-1] > activity[0]  # output moved it


def test_a_task_waiting_between_retries_is_not_stuck(home: Path, write_config: Callable[[str], Path]) -> None:
    """A retry wait (a resource policy waits minutes) is silence by design, not a hang."""
    write_config(
        "retry: {jitter: none}\npolicies: {transient: {attempts: 2, base_s: 2.5}}\n"
        "process: {kill_grace_s: 1, heartbeat_s: 0.2}\ntasks: {stuck_after_s: 1}\n"
    )
    tasks(home, "add", "backing-off", "--", "sh", "-c", "echo 'Connection refused' >&2; exit 1")
    runner = start(home, "run-next", "--json")
    wait_until(
        lambda: any(
            json.loads(p.read_text()).get("phase") == "waiting" for p in (home / "runs").glob("backing-off*.json")
        ),
        what="the retry wait",
    )
    time.sleep(1.5)  # past stuck_after_s, all of it in the retry wait
    checked = tasks(home, "check-stuck", "--json")
    assert (checked.returncode, as_json(checked)["findings"]) == (0, [])
    result = json.loads(runner.communicate(timeout=30)[0])
    assert (result["exec_state"], result["error_class"]) == ("NORMAL_CRASH", "transient")  # ran to its end


def test_run_next_max_runs_tasks_one_after_another_in_one_process_until_none_is_left(
    home: Path, tmp_path: Path
) -> None:
    """`run-next --max N`: a long-lived host's loop in one process; children before their parent, one JSON
    object for all the runs, and it stops at the first pass with nothing to do (or after N runs)."""
    journal = tmp_path / "journal"
    for name, parent in (("top", None), ("kid-1", "top"), ("kid-2", "top")):
        added = tasks(
            home, "add", name, *(["--parent", parent] if parent else []), "--shell", f"echo {name} >> {journal}"
        )
        assert added.returncode == 0, added.stderr
    tasks(home, "add", "later", "--priority", "P2", "--shell", f"echo later >> {journal}")
    two = tasks(home, "run-next", "--max", "2", "--json")
    assert two.returncode == 0, two.stderr
    report = json.loads(two.stdout)
    assert report["ok"] and report["ran"] == 2 and [r["outcome"] for r in report["runs"]] == ["succeeded"] * 2
    assert journal.read_text().splitlines() == ["kid-1", "kid-2"]
    rest = tasks(home, "run-next", "--max", "10")
    assert rest.returncode == 0, rest.stderr
    assert journal.read_text().splitlines() == ["kid-1", "kid-2", "top", "later"]
    assert "task 'top' succeeded" in rest.stderr and "task 'later' succeeded" in rest.stderr
    assert "no actionable task" in rest.stderr  # the pass that found nothing ended the loop
    for bad, message in (
        (["--max", "0"], "--max must be a whole number >= 1, got 0"),
        (["--max", "2", "--task", "top"], "--max and --task do not go together"),
    ):
        refused = tasks(home, "run-next", *bad)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr


@pytest.mark.parametrize("stopped_by", ["a person", "a signal"])
def test_run_next_max_goes_on_after_a_person_voids_the_running_task_but_not_after_a_signal(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path], stopped_by: str
) -> None:
    """`run-next --max 2`: a person voiding the task being run stops that run (exit 0 for it) and the loop goes on
    to the next task (it stopped there, leaving the next task for another pass); SIGTERM to run-next itself
    still ends the loop after the run it stopped."""
    write_config("process: {kill_grace_s: 1, heartbeat_s: 0.2}\nfixes: {use_model: false}\n")
    journal = tmp_path / "journal"
    assert tasks(home, "add", "unwanted", "--", "sh", "-c", "echo going; sleep 300").returncode == 0
    assert tasks(home, "add", "wanted", "--shell", f"echo wanted >> {journal}").returncode == 0
    runner = start(home, "run-next", "--max", "2", "--json")
    wait_until(lambda: "going" in (home / "tasks" / "unwanted.log").read_text(), what="the command's output")
    if stopped_by == "a person":
        assert tasks(home, "void", "unwanted", "--reason", "not needed").returncode == 0
    else:
        runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=30)
    report = json.loads(out)
    outcomes = [r["outcome"] for r in report["runs"]]
    if stopped_by == "a person":
        assert (runner.returncode, outcomes) == (0, ["superseded", "succeeded"]), out + err
        assert journal.read_text().splitlines() == ["wanted"]
        assert (record(home, "unwanted")["exec_state"], record(home, "wanted")["exec_state"]) == ("VOID", "END")
    else:
        assert runner.returncode != 0 and outcomes == ["interrupted"], out + err
        assert not journal.exists() and record(home, "wanted")["exec_state"] != "END"


def test_a_task_named_like_an_option_is_reached_after_a_double_dash_and_its_hints_work(
    home: Path, tmp_path: Path
) -> None:
    """A name may start with a dash (`add --from`, the API): every command reaches it after `--`, as any
    Unix command takes an operand that looks like an option, and the commands self-heal suggests for it run."""
    lines = tmp_path / "tasks.jsonl"
    lines.write_text(json.dumps({"name": "-x", "run": ["true"]}) + "\n")
    assert tasks(home, "add", "--from", str(lines)).returncode == 0
    shown = tasks(home, "show", "--json", "--", "-x")
    assert shown.returncode == 0 and as_json(shown)["task"]["name"] == "-x", shown.stderr
    assert tasks(home, "mark", "--", "-x", "manual").returncode == 0
    hint = as_json(tasks(home, "show", "--json", "--", "-x"))["why_not"].split("`")[1]
    assert hint == "tasks.py mark -- -x error"
    handed_back = tasks(home, *hint.split()[1:])
    assert handed_back.returncode == 0 and "-x: ERROR_FIX_PENDING" in handed_back.stdout, handed_back.stderr
    ran = tasks(home, "run-next", "--task=-x", "--json")
    assert (ran.returncode, as_json(ran)["exec_state"]) == (0, "END"), ran.stderr
    for command in (("tree", "--", "-x"), ("log", "--", "-x"), ("set", "--analysis", "a", "--", "-x")):
        assert tasks(home, *command).returncode == 0, command
    assert tasks(home, "void", "--", "-x").returncode == 0
    # After --, add still takes the task's command: never a name.
    refused = tasks(home, "show", "-x")
    assert refused.returncode == 2 and "tasks.py show -- -x" in refused.stderr, refused.stderr


def test_a_name_already_taken_says_what_frees_it_and_that_works(home: Path) -> None:
    """`add` of a name the tree holds says how a name becomes free (its tree finished and archived); it once
    said "void it first", and a void task keeps its name."""
    assert tasks(home, "add", "nightly", "--", "true").returncode == 0
    taken = tasks(home, "add", "nightly", "--", "true")
    assert taken.returncode == 2 and "void it first" not in taken.stderr, taken.stderr
    assert "already exists (NEW)" in taken.stderr and "`tasks.py archive --older-than 0`" in taken.stderr
    assert tasks(home, "void", "nightly").returncode == 0
    assert tasks(home, "archive", "--older-than", "0").returncode == 0
    assert tasks(home, "add", "nightly", "--", "true").returncode == 0


def test_each_step_of_the_escalation_says_the_command_that_comes_next(
    home: Path, write_config: Callable[[str], Path]
) -> None:
    """A FIX task analysed says how to end it once its fix is applied; a task that now needs a person says
    how to hand it back: the exact command, which works (cron mails these lines; a person acts on them)."""
    tasks(home, "add", "etl", "--", "sh", "-c", "echo 'KeyError: price' >&2; exit 1")
    assert tasks(home, "run-next").returncode == 3
    analysed = tasks(home, "run-next", "--type", "fix")
    assert analysed.returncode == 0 and "`tasks.py mark FIX-etl-command end`" in analysed.stderr, analysed.stderr
    write_config(
        """
        retry: {jitter: none}
        policies: {unknown: {attempts: 1}}
        fixes: {use_model: false}
        tasks: {analyze_at_failures: 1, solution_at_failures: 0, manual_at_failures: 2}
        """
    )
    parked = tasks(home, "run-next", "--json")
    assert as_json(parked)["exec_state"] == "REQUIRES_MANUAL"
    assert "`tasks.py mark etl error`" in as_json(parked)["message"]
    assert "`tasks.py mark etl error`" in tasks(home, "run-next", "--task", "etl").stderr  # refused: says it too
    assert tasks(home, "mark", "FIX-etl-command", "end").returncode == 0
    assert tasks(home, "mark", "etl", "error").returncode == 0
