"""Multi-step workflows: plans, checkpoints, resume after a crash, compensation, incidents, dead-letter."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.config import Config, load_config
from selfheal.core.runs import RunRecord
from selfheal.durable.checkpoint import Checkpoints, CheckpointUnreadable
from selfheal.durable.workflow import (
    PlanChanged,
    PlanError,
    StepContext,
    Workflow,
    WorkflowRunner,
    load_plan,
    status,
    task_id_from_template,
)
from selfheal.errors import LockBusy, UsageError
from selfheal.state.root import StateRoot, file_lock

WORKFLOW = str(SCRIPTS / "workflow.py")


@pytest.fixture
def fast(write_config: Callable[[str], Path]) -> Config:
    """No retry waits and short kill grace, so failing steps end quickly."""
    write_config(
        "retry: {jitter: none}\npolicies:\n  transient: {base_s: 0.01}\n  unknown: {base_s: 0.01}\n"
        "process: {kill_grace_s: 1}\n"
    )
    return load_config()


def write_plan(folder: Path, text: str, name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def journal(folder: Path) -> list[str]:
    path = folder / "journal"
    return path.read_text().splitlines() if path.exists() else []


def run_in_background(home: Path, plan: Path, task: str = "t", **popen: Any) -> subprocess.Popen[bytes]:
    """`workflow.py run PLAN --task TASK` as a process of its own (a session of its own unless the caller says
    otherwise: os.killpg stops it and its steps)."""
    popen.setdefault("start_new_session", True)
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([PYTHON, WORKFLOW, "run", str(plan), "--task", task], env=script_env(home), **popen)


def wait_for_journal(folder: Path, line: str, also: Callable[[], bool] = lambda: True) -> None:
    """Until the journal holds `line` (and `also()` is true), at most 20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (line in journal(folder) and also()):
        time.sleep(0.02)


def step_cmd(name: str, fail_unless: str | None = None) -> str:
    """A shell step that appends its name to the journal (after checking a precondition file)."""
    traceback = f"Traceback (most recent call last):\\n  File job.py\\nValueError: {name} cannot run yet"
    guard = f"test -e {fail_unless} || {{ printf '{traceback}\\n' >&2; exit 1; }}; " if fail_unless else ""
    return f"{guard}echo {name} >> journal"


def six_steps(folder: Path, failing: int | None = 4) -> Path:
    lines = ["name: six", "steps:"]
    for i in range(1, 7):
        guard = "fixed" if i == failing else None
        lines += [
            f"  - name: s{i}",
            f'    shell: "{step_cmd(f"s{i}", guard)}"',
            f"    compensate: [sh, -c, 'echo undo-s{i} >> journal']",
        ]
    return write_plan(folder, "\n".join(lines) + "\n")


def run(plan: Path, task: str | None = None, config: Config | None = None, **options: Any) -> Any:
    return WorkflowRunner(load_plan(plan), task or load_plan(plan).name, config=config).run(**options)


# -- plans ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("steps: []\n", "steps: must be a non-empty list of steps"),
        ("steps:\n  - {name: a}\n", "steps[0].run: steps[0] (a): missing command"),
        ("steps:\n  - {name: a, run: [x]}\n  - {name: a, run: [y]}\n", "steps[1].name: duplicate step name"),
        ("steps:\n  - {name: a, run: x}\n", "steps[0].run: steps[0] (a): must be a non-empty argv list"),
        ("steps:\n  - {name: a, run: [x], shell: y}\n", "give run (an argv list) or shell, not both"),
        ("steps:\n  - {name: a, run: [x], inputs: [a.stdout], outputs: {stdout: true}}\n", "a cycle"),
        (
            "steps:\n  - {name: a, run: [x], inputs: [b.stdout]}\n  - {name: b, run: [y], outputs: {stdout: true}}\n",
            "a cycle: 'b' does not run before this step",
        ),
        (
            "steps:\n  - {name: a, run: [x]}\n  - {name: b, run: [y], inputs: [a.stdout]}\n",
            "step 'a' declares no output 'stdout'",
        ),
        ("steps:\n  - {name: a, run: [x], inputs: [zz.files]}\n", "no step named 'zz'"),
        ("steps:\n  - {name: a, run: [x], timeout: -3}\n", "steps[0].timeout: steps[0] (a): must be a number"),
        ("steps:\n  - {name: a, run: [x], retry: {max_attempts: 0}}\n", "must be a whole number >= 1"),
        ("steps:\n  - {name: a, run: [x], retry: {retries: -1}}\n", "steps[0].retry.retries: steps[0] (a): must be"),
        ("steps:\n  - {name: a, run: [x], retry: {retries: 1, max_attempts: 2}}\n", "max_attempts (every try) or"),
        ("steps:\n  - {name: a, run: [x], colour: red}\n", "steps[0]: unknown key 'colour' in step 'a'"),
        ("colour: red\nsteps:\n  - {name: a, run: [x]}\n", "unknown key 'colour' (a plan has"),
        ("steps:\n  - {name: ../etc, run: [x]}\n", "steps[0].name: a step needs a name"),
        ("steps:\n  - {name: a, run: [x], complete_if_outputs_exist: true}\n", "needs outputs.files"),
        ("steps: [\n", "YAML syntax error"),
        (
            "steps:\n  - {name: a-b, run: [x], outputs: {stdout: true}}\n"
            "  - {name: a_b, run: [y], outputs: {stdout: true}}\n"
            "  - {name: c, run: [z], inputs: [a-b.stdout, a_b.stdout]}\n",
            "steps[2].inputs[1]: steps[2] (c): 'a_b.stdout' and 'a-b.stdout' would both be $SELFHEAL_IN_A_B_STDOUT",
        ),
    ],
)
def test_bad_plans_name_the_step_and_key(tmp_path: Path, text: str, words: str) -> None:
    """Every plan mistake is refused before anything runs, naming the file, step and key."""
    path = write_plan(tmp_path, text)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert words in str(info.value) and str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_plan_errors_carry_the_line(tmp_path: Path) -> None:
    """The message points at the line of the offending step key."""
    path = write_plan(tmp_path, "steps:\n  - name: a\n    run: [x]\n  - name: b\n    run: [y]\n    timeout: 0\n")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert info.value.line == 6


# -- running and resuming -----------------------------------------------------------------------------------


def test_steps_run_in_order_and_pass_outputs(tmp_path: Path, fast: Config) -> None:
    """Later steps read earlier outputs (a variable per input, and the outputs file)."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - name: fetch
            run: [sh, -c, "echo rows=42; printf data > data.csv"]
            outputs: {stdout: true, files: [data.csv]}
          - name: report
            shell: >-
              echo "$SELFHEAL_IN_FETCH_STDOUT $SELFHEAL_IN_FETCH_FILES" > report.txt;
              cat "$SELFHEAL_OUTPUTS_FILE" > seen.json
            inputs: [fetch.stdout, fetch.files]
    """,
    )
    result = run(plan, config=fast)
    assert result.status == "completed" and result.exit_status == 0
    assert (tmp_path / "report.txt").read_text() == f"rows=42 {tmp_path / 'data.csv'}\n"
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["fetch"]["stdout"] == "rows=42" and seen["fetch"]["files"][0]["size"] == 4


def test_a_step_whose_name_holds_a_dot_can_be_read_as_an_input(tmp_path: Path, fast: Config) -> None:
    """A step name may hold a dot (`fetch.v2`), so `fetch.v2.stdout` is that step's stdout: the output is what
    follows the last dot (it was refused as not STEP.OUTPUT, so the step could never be read)."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: fetch.v2, run: [echo, rows=42], outputs: {stdout: true}}
          - {name: report, shell: 'echo "$SELFHEAL_IN_FETCH_V2_STDOUT" > report.txt', inputs: [fetch.v2.stdout]}
    """,
    )
    assert load_plan(plan).steps[1].inputs == (("fetch.v2", "stdout"),)
    assert run(plan, config=fast).status == "completed"
    assert (tmp_path / "report.txt").read_text() == "rows=42\n"


def test_a_completed_task_is_not_run_again(tmp_path: Path, fast: Config) -> None:
    """Running the same task again after it completed runs nothing."""
    plan = six_steps(tmp_path, failing=None)
    run(plan, config=fast)
    again = run(plan, config=fast)
    assert again.status == "completed" and "already completed" in again.message and again.already_completed
    assert again.exit_status == 1 and not again.to_json()["ok"]
    assert journal(tmp_path) == [f"s{i}" for i in range(1, 7)]


def test_each_step_gets_a_stable_idempotency_key(tmp_path: Path, fast: Config) -> None:
    """SELFHEAL_IDEMPOTENCY_KEY is task/step, the same on every attempt and every resume."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - name: charge
            shell: 'echo "$SELFHEAL_IDEMPOTENCY_KEY $SELFHEAL_ATTEMPT" >> keys; test $SELFHEAL_ATTEMPT -ge 2 || exit 75'
    """,
    )
    run(plan, "order-17", config=fast)
    assert (tmp_path / "keys").read_text().split("\n")[:2] == ["order-17/charge 1", "order-17/charge 2"]


def test_failing_step_four_of_six_compensates_three_two_one_and_writes_an_incident(
    tmp_path: Path, fast: Config, home: Path
) -> None:
    """Step 4 fails for good: steps 3, 2, 1 are undone in that order; the incident says how to resume."""
    result = run(six_steps(tmp_path), config=fast)
    assert result.status == "failed" and result.exit_status == 3
    assert journal(tmp_path) == ["s1", "s2", "s3", "undo-s3", "undo-s2", "undo-s1"]
    assert result.compensated == ["s3", "s2", "s1"]
    incident = json.loads(Path(result.incident).read_text())
    assert (incident["task"], incident["failed_step"], incident["error_class"]) == ("six", "s4", "permanent")
    assert incident["last_completed_step"] == "s3" and incident["compensated"] == ["s3", "s2", "s1"]
    assert "s4 cannot run yet" in incident["error"]
    assert incident["resume_command"].endswith(f"workflow.py run {tmp_path / 'plan.yaml'} --task six")
    log = (home / "logs" / "selfheal.log").read_text()
    assert log.count("[COMPENSATE] task=six reason=started") == 1  # the compensation, then each step undone
    assert log.count("[COMPENSATE] task=six step=") == 3 and "[INCIDENT] task=six step=s4" in log


def test_the_incidents_resume_command_completes_the_task_after_the_fix(
    tmp_path: Path, fast: Config, home: Path
) -> None:
    """Running the incident's command, as written, after fixing the cause finishes the task."""
    result = run(six_steps(tmp_path), config=fast)
    command = json.loads(Path(result.incident).read_text())["resume_command"]
    (tmp_path / "fixed").write_text("")
    done = subprocess.run(command, shell=True, env=script_env(home), cwd=tmp_path, capture_output=True, check=False)  # noqa: S602 - the incident's own command
    assert done.returncode == 0, done.stderr
    assert journal(tmp_path)[6:] == ["s1", "s2", "s3", "s4", "s5", "s6"]  # the undone steps ran again


def test_a_failed_compensation_is_recorded_and_escalated(tmp_path: Path, fast: Config) -> None:
    """An undo that fails is never hidden: the step says so, the others are still undone, the incident shouts."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: a, shell: "echo a >> journal", compensate: [sh, -c, "echo undo-a >> journal"]}
          - {name: b, shell: "echo b >> journal", compensate: [sh, -c, "echo 'PermissionError: no' >&2; exit 1"]}
          - {name: c, shell: "echo 'ValueError: bad' >&2; exit 1"}
    """,
    )
    result = run(plan, config=fast)
    assert result.compensated == ["a"] and result.compensation_failures == ["b"]
    incident = json.loads(Path(result.incident).read_text())
    assert "COMPENSATION FAILED for b" in incident["summary"]
    assert incident["compensation_failures"][0]["step"] == "b"
    assert {s.name: s.state for s in result.steps}["b"] == "compensation_failed"


def test_resume_kills_the_orphaned_child_and_reruns_the_step(tmp_path: Path, fast: Config, home: Path) -> None:
    """A step in flight when its workflow died: its still-running child is stopped, then the step runs again."""
    plan = six_steps(tmp_path, failing=None)
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    state = StateRoot(home).ensure()
    record = RunRecord(state, run_id="six.s2-dead", task="six", target=None, argv=["sleep"], heartbeat_s=10)
    record.start()
    record.child_started(__import__("selfheal.core.process", fromlist=["identify"]).identify(orphan.pid))
    runner = WorkflowRunner(load_plan(plan), "six", config=fast)
    data = runner._fresh()
    data.steps["s1"].state, data.steps["s1"].attempts = "done", 1
    data.steps["s2"].state, data.steps["s2"].attempts, data.steps["s2"].run_id = "running", 1, "six.s2-dead"
    data.done_at_last_run = 1
    Checkpoints(state).save("six", data)
    result = runner.run()
    assert result.status == "completed" and result.resumed
    assert orphan.wait(timeout=10) == -signal.SIGTERM
    assert journal(tmp_path) == ["s2", "s3", "s4", "s5", "s6"]


def test_an_in_flight_step_whose_outputs_exist_counts_as_done(tmp_path: Path, fast: Config, home: Path) -> None:
    """complete_if_outputs_exist: a step that finished its files before the crash is not run again."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - name: export
            shell: "echo export >> journal; echo x > export.csv"
            outputs: {files: [export.csv]}
            complete_if_outputs_exist: true
          - {name: mail, shell: "echo mail >> journal"}
    """,
    )
    (tmp_path / "export.csv").write_text("x\n")
    runner = WorkflowRunner(load_plan(plan), "exp", config=fast)
    data = runner._fresh()
    data.steps["export"].state, data.steps["export"].attempts = "running", 1
    Checkpoints(StateRoot(home).ensure()).save("exp", data)
    assert runner.run().status == "completed"
    assert journal(tmp_path) == ["mail"]


def test_an_in_flight_step_whose_output_is_a_folder_is_run_again_not_counted_done(
    tmp_path: Path, fast: Config, home: Path
) -> None:
    """complete_if_outputs_exist, but a folder stands where its file should be: the step is not complete, so it
    runs again (the resume was a traceback that left the step running for every later run to repeat)."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - name: export
            shell: "echo export >> journal; rmdir export.csv; echo x > export.csv"
            outputs: {files: [export.csv]}
            complete_if_outputs_exist: true
    """,
    )
    (tmp_path / "export.csv").mkdir()
    runner = WorkflowRunner(load_plan(plan), "exp", config=fast)
    data = runner._fresh()
    data.steps["export"].state, data.steps["export"].attempts = "running", 1
    Checkpoints(StateRoot(home).ensure()).save("exp", data)
    assert runner.run().status == "completed"
    assert journal(tmp_path) == ["export"]


def test_a_step_may_count_retries_as_the_documents_do(tmp_path: Path) -> None:
    """`retry: {retries: 3}` is the first try plus 3 retries: 4 attempts."""
    plan = write_plan(tmp_path, "steps:\n  - {name: a, run: [x], retry: {retries: 3}}\n")
    assert load_plan(plan).steps[0].max_attempts == 4


def test_a_crash_does_not_reset_a_steps_retry_budget(tmp_path: Path, fast: Config, home: Path) -> None:
    """Three of four attempts (transient: 3 retries) spent before the crash: after it, just one more."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: flaky, shell: "echo try >> journal; echo 'Connection refused' >&2; exit 1"}
    """,
    )
    runner = WorkflowRunner(load_plan(plan), "budget", config=fast)
    data = runner._fresh()
    data.steps["flaky"].state, data.steps["flaky"].attempts = "running", 3
    Checkpoints(StateRoot(home).ensure()).save("budget", data)
    result = runner.run()
    assert result.status == "failed" and journal(tmp_path) == ["try"]
    assert result.steps[0].attempts == 4


def test_resumes_without_progress_park_the_task_as_dead_letter(tmp_path: Path, fast: Config, home: Path) -> None:
    """A task that keeps being resumed without a step completing is parked with an incident, and stays parked."""
    plan = six_steps(tmp_path, failing=None)
    runner = WorkflowRunner(load_plan(plan), "stuck", config=fast)
    data = runner._fresh()
    data.steps["s1"].state, data.steps["s1"].attempts = "running", 1
    data.resumes_without_progress = fast.workflows.max_resumes_without_progress
    Checkpoints(StateRoot(home).ensure()).save("stuck", data)
    result = runner.run()
    assert result.status == "dead_letter" and result.exit_status == 3
    assert json.loads(Path(result.incident).read_text())["kind"] == "dead_letter"
    assert journal(tmp_path) == []
    again = WorkflowRunner(load_plan(plan), "stuck", config=fast).run()
    assert again.status == "dead_letter" and journal(tmp_path) == []


def test_a_parked_tasks_resume_command_resumes_it_keeping_its_completed_steps(
    tmp_path: Path, fast: Config, home: Path
) -> None:
    """Dead-letter: the command the incident and the run's last line give resumes the task once run as written,
    at the step it was stuck on (the completed ones do not run again). It was the plain run command, which
    only says `parked` again, while the message beside it said to reset, which runs every step again."""
    plan = six_steps(tmp_path, failing=None)
    runner = WorkflowRunner(load_plan(plan), "stuck", config=fast)
    data = runner._fresh()
    for name in ("s1", "s2"):
        data.steps[name].state, data.steps[name].attempts = "done", 1
    data.steps["s3"].state, data.steps["s3"].attempts = "running", 1
    data.done_at_last_run = 2
    data.resumes_without_progress = fast.workflows.max_resumes_without_progress
    Checkpoints(StateRoot(home).ensure()).save("stuck", data)
    parked = cli(home, "run", str(plan), "--task", "stuck")
    assert parked.returncode == 3 and "dead_letter" in parked.stderr
    stuck = status("stuck")
    assert stuck is not None and stuck.incident is not None
    command = json.loads((home / "incidents" / f"{stuck.incident}.json").read_text())["resume_command"]
    assert parked.stderr.rstrip().endswith(f"resume with: {command}")
    again = cli(home, "run", str(plan), "--task", "stuck")
    assert again.returncode == 3 and again.stderr.rstrip().endswith(f"resume with: {command}")
    done = subprocess.run(command, shell=True, env=script_env(home), cwd=tmp_path, capture_output=True, check=False)  # noqa: S602 - the incident's own command
    assert done.returncode == 0, done.stderr
    assert journal(tmp_path) == ["s3", "s4", "s5", "s6"]


def test_runs_paused_by_an_open_breaker_are_not_resumes_without_progress(tmp_path: Path, home: Path) -> None:
    """Cron runs the task every few minutes while its step's breaker stays open: each run pauses (exit 4, nothing
    attempted) and none counts toward dead-letter or spends the step's retry budget; once the breaker closes,
    the same line finishes the task without running the completed step again. (The fifth paused run parked
    the task for a person to reset, and the reset ran the completed step again; each pause took an attempt.)"""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: pay, shell: "echo pay >> journal"}
          - {name: notify, shell: "echo notify >> journal", target: mailer}
    """,
    )
    assert call_script("breakers.py", "trip", "mailer", "--for", "600", home=home).returncode == 0
    for _ in range(6):
        paused = cli(home, "run", str(plan), "--task", "t")
        assert paused.returncode == 4 and "mailer" in paused.stderr, paused.stderr
    data = status("t")
    assert data is not None and data.resumes_without_progress == 0 and not data.incident
    assert data.steps["notify"].attempts == 0  # no retry budget spent on attempts never made
    assert call_script("breakers.py", "reset", "mailer", home=home).returncode == 0
    done = cli(home, "run", str(plan), "--task", "t")
    assert done.returncode == 0, done.stderr
    assert journal(tmp_path) == ["pay", "notify"]


@pytest.mark.parametrize("content", [b"", b'{"task": "t", "ste', b"\x00\xff garbage", b"[1, 2]", b'{"task": "other"}'])
def test_an_unreadable_checkpoint_stops_everything_until_told(
    tmp_path: Path, fast: Config, home: Path, content: bytes
) -> None:
    """Empty, truncated, binary or foreign checkpoints are moved aside; nothing runs until --restart."""
    plan = six_steps(tmp_path, failing=None)
    path = Checkpoints(StateRoot(home).ensure()).path("t")
    path.write_bytes(content)
    with pytest.raises(CheckpointUnreadable, match="--restart") as info:
        run(plan, "t", config=fast)
    assert info.value.exit_code == 3
    assert journal(tmp_path) == [] and list(path.parent.glob("t.json.corrupt-*"))
    assert run(plan, "t", config=fast, restart=True).status == "completed"


def test_a_plan_with_other_steps_is_refused_but_a_fixed_command_resumes(tmp_path: Path, fast: Config) -> None:
    """Renamed or reordered steps cannot resume a checkpoint; the same steps with a fixed command can."""
    run(six_steps(tmp_path), "t", config=fast)
    renamed = write_plan(tmp_path, (tmp_path / "plan.yaml").read_text().replace("s6", "s7"), "renamed.yaml")
    with pytest.raises(PlanChanged):
        run(renamed, "t", config=fast)
    (tmp_path / "fixed").write_text("")
    assert run(tmp_path / "plan.yaml", "t", config=fast).status == "completed"


def test_from_step_runs_it_and_the_later_ones_again(tmp_path: Path, fast: Config) -> None:
    """--from s5 repeats s5 and s6 only."""
    plan = six_steps(tmp_path, failing=None)
    run(plan, config=fast)
    run(plan, config=fast, from_step="s5")
    assert journal(tmp_path)[6:] == ["s5", "s6"]


def test_one_run_per_task(tmp_path: Path, fast: Config, home: Path) -> None:
    """While a task runs elsewhere, another run of it is not attempted (LockBusy, exit 4)."""
    state = StateRoot(home).ensure()
    with file_lock(state.lock_file("workflow", "six")), pytest.raises(LockBusy):
        run(six_steps(tmp_path), config=fast)


def test_the_notification_gets_the_summary_as_one_argument(tmp_path: Path, fast: Config) -> None:
    """notify: the summary (with its error text) is one argv element, never shell text."""
    sink = tmp_path / "notified.json"
    dump = f"import json,sys; json.dump(sys.argv[1:], open('{sink}', 'w'))"
    plan = write_plan(
        tmp_path,
        f"""
        notify: ["{sys.executable}", "-c", "{dump}", "{{summary}}", "{{incident}}"]
        steps:
          - {{name: a, shell: "echo '$(touch PWNED); rm -rf ~' >&2; exit 1"}}
    """,
    )
    result = run(plan, config=fast)
    summary, incident_path = json.loads(sink.read_text())
    assert "$(touch PWNED); rm -rf ~" in summary and incident_path == result.incident
    assert not (tmp_path / "PWNED").exists()
    assert json.loads(Path(result.incident).read_text())["notified"]["ok"] is True


# -- the CLI ------------------------------------------------------------------------------------------------


def cli(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return call_script("workflow.py", *args, home=home, cwd=cwd)


def test_cli_run_status_reset(tmp_path: Path, home: Path, fast: Config) -> None:
    """run --json gives one object with every step; status shows where it stands; reset starts it over."""
    plan = six_steps(tmp_path)
    proc = cli(home, "run", str(plan), "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 3 and result["status"] == "failed" and result["incident"]
    assert [s["state"] for s in result["steps"]][:4] == ["compensated", "compensated", "compensated", "failed"]
    status = cli(home, "status", "six")
    assert status.returncode == 0 and "s4: failed" in status.stdout
    assert json.loads(cli(home, "status", "six", "--json").stdout)["status"] == "failed"
    assert cli(home, "reset", "six").returncode == 0
    assert cli(home, "status", "six").returncode == 2  # an unknown task is a usage error, as in tasks.py show


def test_cli_a_fixed_task_id_run_again_by_cron_says_it_ran_nothing(tmp_path: Path, home: Path) -> None:
    """A cron line with a fixed --task: the second run says the task already completed, runs nothing and
    exits 1 (not a silent 0); --restart runs it again."""
    plan = write_plan(tmp_path, 'steps:\n  - {name: build, shell: "echo build >> journal"}\n')
    assert cli(home, "run", str(plan), "--task", "weekly-report").returncode == 0
    again = cli(home, "run", str(plan), "--task", "weekly-report")
    assert again.returncode == 1
    assert "task weekly-report: already completed at" in again.stderr and "nothing was run" in again.stderr
    assert "--task 'NAME-{date}'" in again.stderr
    assert json.loads(cli(home, "run", str(plan), "--task", "weekly-report", "--json").stdout)["already_completed"]
    assert journal(tmp_path) == ["build"]
    assert cli(home, "run", str(plan), "--task", "weekly-report", "--restart").returncode == 0
    assert journal(tmp_path) == ["build", "build"]


def test_cli_a_dated_task_id_gives_each_days_cron_run_its_own_task(tmp_path: Path, home: Path) -> None:
    """--task 'report-{date}' becomes report-<today, UTC>: each day's run is a task of its own."""
    plan = write_plan(tmp_path, 'steps:\n  - {name: build, shell: "echo build >> journal"}\n')
    before = time.strftime("%Y-%m-%d", time.gmtime())
    proc = cli(home, "run", str(plan), "--task", "report-{date}", "--json")
    after = time.strftime("%Y-%m-%d", time.gmtime())
    assert proc.returncode == 0 and json.loads(proc.stdout)["task"] in (f"report-{before}", f"report-{after}")
    bad = cli(home, "run", str(plan), "--task", "report-{day}")
    assert bad.returncode == 2 and "{day} is not a field" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("report-{date}", "report-2027-01-15"),
        ("sync-{hour}", "sync-2027-01-15T08"),
        ("snap-{time}", "snap-2027-01-15T080000"),
        ("weekly-{week}", "weekly-2027-W02"),
        ("monthly-{month}", "monthly-2027-01"),
        ("fixed-id", "fixed-id"),
    ],
)
def test_task_id_templates(template: str, expected: str) -> None:
    """Each field of a task id template, in UTC."""
    assert task_id_from_template(template, now=1_800_000_000.0) == expected


def test_cli_bad_plan_exits_2(tmp_path: Path, home: Path) -> None:
    """A broken plan exits 2 with the file, line and key; nothing runs."""
    plan = write_plan(tmp_path, "steps:\n  - {name: a, run: [x]}\n  - {name: a, run: [y]}\n")
    proc = cli(home, "run", str(plan))
    assert proc.returncode == 2 and f"{plan}:3:" in proc.stderr and "duplicate step name" in proc.stderr


@pytest.mark.parametrize(
    ("file", "text", "name"),
    [
        ("plan.yaml", "name: weekly report\n", "weekly report"),
        ("weekly report.yaml", "", "weekly report"),
    ],
)
def test_cli_a_plan_name_that_cannot_be_a_task_id_names_the_plan_and_the_flag(
    tmp_path: Path, home: Path, file: str, text: str, name: str
) -> None:
    """No --task: the plan's name (or its file's) is the task id. One that cannot be says where it came from and
    what to do (it said only "invalid task id 'weekly report'", an id the user never typed), exit 2."""
    plan = write_plan(tmp_path, text + 'steps:\n  - {name: a, shell: "echo a >> journal"}\n', name=file)
    proc = cli(home, "run", str(plan))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{plan}: the plan's name {name!r} cannot be a task id" in proc.stderr
    assert "give one with --task" in proc.stderr and journal(tmp_path) == []


def test_cli_an_unknown_key_named_like_a_credential_is_named_whole(tmp_path: Path, home: Path) -> None:
    """`token:` in a step is a typo the user must be able to read: the message names the key whole, at its
    line, instead of the redactor reading `steps[0].token: ...` as a secret and masking the message."""
    plan = write_plan(tmp_path, "steps:\n  - name: a\n    token: abc\n    run: [x]\n")
    proc = cli(home, "run", str(plan))
    assert proc.returncode == 2, proc.stderr
    assert f"{plan}:3:5: steps[0]: unknown key 'token' in step 'a'" in proc.stderr and "***" not in proc.stderr


def test_sigterm_stops_the_step_and_the_next_run_resumes(tmp_path: Path, home: Path, fast: Config) -> None:
    """SIGTERM mid-step: the step's processes stop, exit 3 (interrupted); the next run finishes the task."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: a, shell: "echo a >> journal"}
          - {name: b, shell: "test -e go || { echo waiting >> journal; exec sleep 300; }; echo b >> journal"}
    """,
    )
    proc = run_in_background(home, plan, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=False)
    wait_for_journal(
        tmp_path,
        "waiting",
        lambda: any(json.loads(p.read_text()).get("child") for p in (home / "runs").glob("t.b-*.json")),
    )
    records = [json.loads(p.read_text()) for p in (home / "runs").glob("t.b-*.json")]
    child = next(r["child"] for r in records if r.get("child"))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert not psutil.pid_exists(child["pid"]) or psutil.Process(child["pid"]).create_time() != child["create_time"]
    (tmp_path / "go").write_text("")
    assert cli(home, "run", str(plan), "--task", "t").returncode == 0
    assert journal(tmp_path) == ["a", "waiting", "b"]


def test_status_of_a_task_whose_runner_was_killed_says_interrupted_not_running(tmp_path: Path, home: Path) -> None:
    """A SIGKILLed runner could not save `interrupted`: status must not go on saying "running" for ever.
    While the runner lives it says running; once it is gone, interrupted, and the next run resumes it."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: a, shell: "echo a >> journal"}
          - {name: b, shell: "test -e go || { echo waiting >> journal; exec sleep 300; }; echo b >> journal"}
    """,
    )
    proc = run_in_background(home, plan)
    try:
        wait_for_journal(tmp_path, "waiting")
        live = cli(home, "status", "t")
        assert live.returncode == 0 and live.stdout.startswith("task t: running"), live.stdout
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its step: nothing is left to save a word
        proc.wait(timeout=10)
    gone = cli(home, "status", "t")
    assert gone.returncode == 0 and gone.stdout.startswith("task t: interrupted"), gone.stdout
    assert json.loads(cli(home, "status", "t", "--json").stdout)["status"] == "interrupted"
    (tmp_path / "go").write_text("")
    assert cli(home, "run", str(plan), "--task", "t").returncode == 0
    assert journal(tmp_path) == ["a", "waiting", "b"]


def test_a_second_run_of_a_running_task_names_the_process_that_holds_it(tmp_path: Path, home: Path) -> None:
    """Two runs of one task: the second is not attempted (exit 4) and says which process has it, so a person
    can tell a live run from a stuck one before killing anything (it said only "task 't' is busy")."""
    plan = write_plan(tmp_path, 'steps:\n  - {name: a, shell: "echo started >> journal; exec sleep 300"}\n')
    first = run_in_background(home, plan)
    try:
        wait_for_journal(tmp_path, "started")
        second = cli(home, "run", str(plan), "--task", "t")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert second.returncode == 4, second.stderr
    assert f"task 't' is busy (held by pid {first.pid}: " in second.stderr
    assert f"workflow.py run {plan} --task t); try again later" in second.stderr


def test_status_of_an_unknown_task_exits_2_with_the_close_name(tmp_path: Path, home: Path) -> None:
    plan = write_plan(tmp_path, 'steps:\n  - {name: a, shell: "true"}\n')
    assert cli(home, "run", str(plan), "--task", "weekly").returncode == 0
    proc = cli(home, "status", "weekyl", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {
        "ok": False,
        "error": "UnknownWorkflowTask",
        "message": "no checkpoint for task 'weekyl'; did you mean 'weekly'?",
        "exit": 2,
    }


def pay_then_wait(folder: Path) -> Path:
    """A payment, then a step that waits (until the test writes `go`): the shape of the report of a step paid twice."""
    return write_plan(
        folder,
        """
        steps:
          - {name: pay, shell: "echo paid >> count"}
          - {name: b, shell: "test -e go || exec sleep 60"}
    """,
    )


def paid(folder: Path) -> list[str]:
    path = folder / "count"
    return path.read_text().splitlines() if path.exists() else []


def refused_as_set_aside(proc: subprocess.CompletedProcess[str], task: str) -> None:
    """Exit 3, nothing run, the file set aside named, and how to start over."""
    assert proc.returncode == 3, proc.stderr
    assert "is unreadable" in proc.stderr and "Nothing was run" in proc.stderr, proc.stderr
    assert re.search(rf"moved to \S*/checkpoints/{task}\.json\.corrupt-\d{{8}}T\d{{6}}Z\)", proc.stderr), proc.stderr
    assert "--restart" in proc.stderr and "workflow.py reset" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_checkpoint_torn_after_a_sigkill_keeps_refusing_so_cron_never_pays_twice(tmp_path: Path, home: Path) -> None:
    """SIGKILL during step b, then half the checkpoint lost: the next run refuses (exit 3, the file set aside),
    and so does every run after it (what cron does next) and status; the payment ran once. Only --restart
    runs it again, and after that the task is an ordinary one."""
    plan = pay_then_wait(tmp_path)
    proc = subprocess.Popen(
        [PYTHON, WORKFLOW, "run", str(plan), "--task", "d1"],
        env=script_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    child: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + 20
        while child is None and time.monotonic() < deadline:
            records = [json.loads(p.read_text()) for p in (home / "runs").glob("d1.b-*.json")]
            child = next((r["child"] for r in records if r.get("child")), None)
            time.sleep(0.02)
        assert child is not None, "step b never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        checkpoint = home / "checkpoints" / "d1.json"
        with checkpoint.open("r+b") as fh:
            fh.truncate(checkpoint.stat().st_size // 2)

        for args in (("run", str(plan), "--task", "d1"), ("run", str(plan), "--task", "d1"), ("status", "d1")):
            refused_as_set_aside(cli(home, *args), "d1")
        refused_as_set_aside(cli(home, "run", str(plan), "--task", "d1"), "d1")
        assert paid(tmp_path) == ["paid"]

        (tmp_path / "go").write_text("")
        assert cli(home, "run", str(plan), "--task", "d1", "--restart").returncode == 0
        assert paid(tmp_path) == ["paid", "paid"]  # asked for: --restart
        again = cli(home, "run", str(plan), "--task", "d1")
        assert again.returncode == 1 and "already completed" in again.stderr
        assert [p.name.endswith(".cleared") for p in checkpoint.parent.glob("d1.json.corrupt-*")] == [True]
    finally:
        proc.kill()
        proc.wait()
        if child is not None:
            with contextlib.suppress(psutil.Error):
                left = psutil.Process(child["pid"])
                if left.create_time() == child["create_time"]:
                    left.kill()


def test_status_that_sets_a_torn_checkpoint_aside_does_not_let_the_next_run_start_over(
    tmp_path: Path, home: Path
) -> None:
    """`workflow.py status` is what finds the checkpoint torn (and moves it aside): the next run still refuses."""
    plan = pay_then_wait(tmp_path)
    (tmp_path / "go").write_text("")
    path = Checkpoints(StateRoot(home).ensure()).path("d2")
    path.write_bytes(b'{"task": "d2", "ste')
    refused_as_set_aside(cli(home, "status", "d2"), "d2")
    assert json.loads(cli(home, "status", "d2", "--json").stdout)["ok"] is False
    refused_as_set_aside(cli(home, "run", str(plan), "--task", "d2"), "d2")
    assert paid(tmp_path) == []


def test_reset_clears_a_set_aside_checkpoint_and_keeps_its_bytes(tmp_path: Path, home: Path) -> None:
    """After a refusal, `workflow.py reset` is the user saying start over: the next run runs every step once, and
    the unreadable file is still there to read, renamed .cleared."""
    plan = pay_then_wait(tmp_path)
    (tmp_path / "go").write_text("")
    path = Checkpoints(StateRoot(home).ensure()).path("d3")
    path.write_bytes(b"\x00\xff torn")
    refused_as_set_aside(cli(home, "run", str(plan), "--task", "d3"), "d3")
    assert cli(home, "reset", "d3").returncode == 0
    assert cli(home, "run", str(plan), "--task", "d3").returncode == 0
    assert paid(tmp_path) == ["paid"]
    (kept,) = path.parent.glob("d3.json.corrupt-*")
    assert kept.name.endswith(".cleared") and kept.read_bytes() == b"\x00\xff torn"


# -- the Python API -----------------------------------------------------------------------------------------


def test_python_workflow_passes_outputs_and_compensates_in_reverse(fast: Config) -> None:
    """Function steps get earlier outputs; a permanent failure undoes the done steps, last first."""
    undone: list[str] = []
    wf = Workflow("py")

    @wf.step(compensate=lambda ctx: undone.append(f"undo {ctx.step} {ctx.outputs[ctx.step]['id']}"))
    def create(ctx: StepContext) -> dict[str, Any]:
        return {"id": 7}

    @wf.step(compensate=lambda ctx: undone.append(f"undo {ctx.step}"))
    def enrich(ctx: StepContext) -> dict[str, Any]:
        return {"id": ctx.outputs["create"]["id"] + 1}

    @wf.step
    def publish(ctx: StepContext) -> None:
        raise ValueError("the channel does not exist")

    result = wf.run(config=fast)
    assert result.status == "failed" and undone == ["undo enrich", "undo create 7"]
    assert result.steps[2].error_class == "permanent"


def test_python_workflow_retries_transient_errors_and_resumes(fast: Config) -> None:
    """A transient error in a function step is retried; a run cut short resumes at the step it was on."""
    calls: list[str] = []
    wf = Workflow("py2")

    @wf.step
    def first(ctx: StepContext) -> None:
        calls.append("first")

    @wf.step
    def second(ctx: StepContext) -> None:
        calls.append(f"second#{ctx.attempt}")
        if ctx.attempt == 1:
            raise ConnectionResetError(104, "reset")
        if ctx.attempt == 2 and "stop" not in calls:
            calls.append("stop")
            raise KeyboardInterrupt

    assert wf.run(config=fast).status == "interrupted"
    assert wf.run(config=fast).status == "completed"
    assert calls == ["first", "second#1", "second#2", "stop", "second#3"]


def test_a_step_returning_a_datetime_is_done_and_refunded_when_a_later_step_fails(fast: Config) -> None:
    """The second document's saga: the charge returns when it happened (a datetime); the email fails;
    the charge is refunded and the order deleted, and the datetime is kept as its ISO text."""
    undone: list[str] = []
    wf = Workflow("saga")

    @wf.step(compensate=lambda ctx: undone.append(f"delete {ctx.outputs['create_order']['order_id']}"))
    def create_order(ctx: StepContext) -> dict[str, Any]:
        return {"order_id": "ORD-12345"}

    @wf.step(compensate=lambda ctx: undone.append(f"refund {ctx.outputs['create_order']['order_id']}"))
    def charge_payment(ctx: StepContext) -> dict[str, Any]:
        return {"charged_at": datetime.datetime(2026, 3, 15, 14, 22, 18), "receipt": Path("/tmp/r.pdf")}

    @wf.step
    def send_confirmation(ctx: StepContext) -> None:
        raise ValueError("Email service unavailable")

    result = wf.run(config=fast)
    assert result.status == "failed"
    assert undone == ["refund ORD-12345", "delete ORD-12345"]
    assert result.compensated == ["charge_payment", "create_order"]
    charge = result.steps[1]
    assert charge.outputs == {"charged_at": "2026-03-15T14:22:18", "receipt": "<PosixPath: /tmp/r.pdf>"}
    assert charge.converted == ["charged_at", "receipt"]


def test_a_command_that_ran_but_left_no_output_file_is_compensated(tmp_path: Path, fast: Config) -> None:
    """A step whose command succeeded but did not write its declared output failed after its side effect
    happened: it is undone too, before the steps before it."""
    plan = write_plan(
        tmp_path,
        """\
        name: charge
        steps:
          - name: order
            shell: "echo order >> journal"
            compensate: [sh, -c, "echo undo-order >> journal"]
          - name: charge
            shell: "echo charge >> journal"
            compensate: [sh, -c, "echo refund >> journal"]
            outputs: {files: [receipt.pdf]}
        """,
    )
    result = run(plan, config=fast)
    assert result.status == "failed" and result.compensated == ["charge", "order"]
    assert journal(tmp_path) == ["order", "charge", "refund", "undo-order"]


def test_a_step_that_fails_for_good_can_fall_back_to_cached_data(tmp_path: Path, fast: Config, home: Path) -> None:
    """The second document's _fallback_cached_data: the fetch fails for good, its fallback answers from the cache,
    the step is done and marked as a fallback result, the next step reads that, and a [FALLBACK] is logged."""
    (tmp_path / "cache.json").write_text('{"revenue": 1000000}')
    plan = write_plan(
        tmp_path,
        """\
        steps:
          - name: fetch_external_data
            shell: "echo 'HTTP Error 404: Not Found' >&2; exit 1"
            fallback: [cat, cache.json]
            outputs: {stdout: true}
          - name: report
            shell: "echo \\"report from $SELFHEAL_IN_FETCH_EXTERNAL_DATA_STDOUT\\" >> journal"
            inputs: [fetch_external_data.stdout]
        """,
    )
    result = run(plan, config=fast)
    assert result.status == "completed"
    fetch = result.steps[0]
    assert (fetch.state, fetch.fallback, fetch.error_class) == ("done", True, "permanent")
    assert fetch.outputs == {"stdout": '{"revenue": 1000000}'}
    assert journal(tmp_path) == ['report from {"revenue": 1000000}']
    assert (
        "[FALLBACK] task=plan step=fetch_external_data reason=permanent" in (home / "logs" / "selfheal.log").read_text()
    )


def test_a_failing_fallback_leaves_the_step_failed_with_its_own_error(tmp_path: Path, fast: Config) -> None:
    """When the fallback fails too, the step fails as it would have, compensation and incident included."""
    plan = write_plan(
        tmp_path,
        """\
        steps:
          - {name: a, shell: "echo a >> journal", compensate: [sh, -c, "echo undo-a >> journal"]}
          - {name: b, shell: "echo 'SyntaxError: x' >&2; exit 1", fallback_shell: "exit 3"}
        """,
    )
    result = run(plan, config=fast)
    assert result.status == "failed" and result.steps[1].error_class == "permanent"
    assert not result.steps[1].fallback and journal(tmp_path) == ["a", "undo-a"]


def test_python_step_fallback_gives_a_simplified_result(fast: Config) -> None:
    """The document's _fallback_simple_summary: a function step's fallback result stands in for it, marked."""
    wf = Workflow("summary")

    def simple(ctx: StepContext) -> dict[str, str]:
        return {"report": "Simplified summary: revenue 1000000"}

    @wf.step(fallback=simple)
    def generate_complex_report(ctx: StepContext) -> dict[str, str]:
        raise ValueError("the template is broken")

    result = wf.run(config=fast)
    assert result.status == "completed" and result.steps[0].fallback
    assert result.steps[0].outputs == {"report": "Simplified summary: revenue 1000000"}


class Undo:
    """A callable object: no __name__ of its own, so it needs name= as a step."""

    def __call__(self, ctx: StepContext) -> dict[str, Any]:
        return {"step": ctx.step}


async def fetch_async(ctx: StepContext) -> None:
    return None


def fetch_lines(ctx: StepContext) -> Any:
    yield "line"


def returns_one(ctx: StepContext) -> int:
    return 1


@pytest.mark.parametrize(
    ("declare", "words"),
    [
        (lambda wf: wf.step("fetch"), "@wf.step(name='fetch')"),
        (lambda wf: wf.step(functools.partial(returns_one)), "name="),
        (lambda wf: wf.step(Undo()), "name="),
        (lambda wf: wf.step(lambda ctx: 1), "name="),
        (lambda wf: wf.step(fetch_async), "fetch_async is a coroutine function"),
        (lambda wf: wf.step(fetch_lines), "fetch_lines is a generator function"),
        (lambda wf: wf.step(returns_one, compensate="undo_fetch"), "compensate="),
        (lambda wf: wf.step(returns_one, fallback=fetch_async), "fallback=: fetch_async is a coroutine"),
        (lambda wf: wf.step(returns_one, max_attempts=0), "max_attempts"),
        (lambda wf: wf.step(returns_one, max_attempts="3"), "max_attempts"),
        (lambda wf: wf.step(returns_one, after="first"), "after= takes a list"),
    ],
    ids=[
        "name-as-function",
        "partial",
        "callable-object",
        "lambda",
        "async",
        "generator",
        "compensate-text",
        "async-fallback",
        "no-attempts",
        "attempts-text",
        "after-text",
    ],
)
def test_a_step_that_could_never_run_is_refused_where_it_is_declared(
    fast: Config, declare: Callable[[Workflow], Any], words: str
) -> None:
    """A step the engine can never call is refused by wf.step() with a UsageError (exit 2) saying what to
    write: it used to be an AttributeError traceback, or, for an async step, a failure at run time after
    the earlier steps had run, which were then compensated (a refund for a typo)."""
    undone: list[str] = []
    wf = Workflow("declared")

    @wf.step(compensate=lambda ctx: undone.append("undo first"))
    def first(ctx: StepContext) -> None:
        return None

    with pytest.raises(UsageError) as info:
        declare(wf)
    assert words in str(info.value) and info.value.exit_code == 2
    assert [s.name for s in wf.plan.steps] == ["first"] and undone == []


def test_a_partial_or_a_callable_object_is_a_step_once_named(fast: Config) -> None:
    """functools.partial and objects with __call__ have no __name__: given name=, they run like functions."""
    wf = Workflow("named")
    wf.step(functools.partial(returns_one), name="one")
    wf.step(Undo(), name="obj")
    result = wf.run(config=fast)
    assert result.status == "completed", result.message
    assert [s.outputs for s in result.steps] == [{"value": 1}, {"step": "obj"}]


def test_a_step_changing_the_outputs_it_reads_changes_no_other_steps(fast: Config) -> None:
    """ctx.outputs is the step's own copy: a step that edits what an earlier step returned does not change
    that step's outputs, what later steps read, or what its compensation is given (it refunded the wrong
    order, and a resume after a crash read the original)."""
    undone: list[Any] = []
    seen: list[Any] = []
    wf = Workflow("mutate")

    @wf.step(compensate=lambda ctx: undone.append(ctx.outputs["order"]))
    def order(ctx: StepContext) -> dict[str, Any]:
        return {"id": 7, "lines": [{"sku": "a"}]}

    @wf.step
    def enrich(ctx: StepContext) -> None:
        ctx.outputs["order"]["id"] = 99
        ctx.outputs["order"]["lines"][0]["sku"] = "b"
        ctx.outputs.pop("order")

    @wf.step
    def publish(ctx: StepContext) -> None:
        seen.append(ctx.outputs["order"])
        raise ValueError("the channel does not exist")

    result = wf.run(config=fast)
    assert result.status == "failed"
    original = {"id": 7, "lines": [{"sku": "a"}]}
    assert seen == [original] and undone == [original]
    assert result.steps[0].outputs == original


def test_mypy_strict_accepts_a_documented_workflow_and_keeps_the_step_types(tmp_path: Path) -> None:
    """The docs' workflow under mypy --strict: @wf.step and @wf.step(compensate=...) keep the function's
    type (the decorator was typed Any: "Untyped decorator makes function untyped", an error under --strict)."""
    from helpers.scripts import mypy_strict

    program = tmp_path / "user_workflow.py"
    program.write_text(
        textwrap.dedent(
            """\
            from __future__ import annotations

            from typing import Any

            import selfheal

            wf = selfheal.Workflow("weekly-report")


            def undo(ctx: selfheal.StepContext) -> None:
                print(ctx.outputs["draft"]["id"])


            @wf.step(compensate=undo, retries=3, after=[])
            def draft(ctx: selfheal.StepContext) -> dict[str, Any]:
                return {"id": ctx.idempotency_key}


            @wf.step
            def publish(ctx: selfheal.StepContext) -> None:
                return None


            reveal_type(draft)
            result: selfheal.WorkflowResult = wf.run(task="weekly-report-2026-47")
            """
        )
        + f"# run {uuid.uuid4().hex}: new text each run, so mypy's kept cache never stands in for checking it\n"
    )
    lines = mypy_strict(program, tmp_path)
    assert [line for line in lines if ": error:" in line] == [], lines
    revealed = 'Revealed type is "def (ctx: selfheal.durable.workflow.StepContext) -> dict[str, Any]"'
    assert any(revealed in line for line in lines), lines


# -- crashes at random moments --------------------------------------------------------------------------------


@pytest.mark.slow
def test_fifty_sigkills_never_lose_or_repeat_a_completed_step(tmp_path: Path, home: Path, write_config: Any) -> None:
    """A 20-step plan killed with SIGKILL at random moments 50 times and resumed each time: every step is in
    the journal once, except at most one repeat of the step in flight at each kill."""
    write_config("workflows: {max_resumes_without_progress: 1000}\n")
    lines = ["steps:"] + [f'  - {{name: s{i:02d}, shell: "sleep 0.3; echo s{i:02d} >> journal"}}' for i in range(20)]
    plan = write_plan(tmp_path, "\n".join(lines) + "\n")
    rng = random.Random(5)
    kills = 0
    while kills < 50:
        proc = subprocess.Popen(
            [PYTHON, WORKFLOW, "run", str(plan), "--task", "chaos"],
            env=script_env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Start-up takes a few tenths of a second, so kills land in start-up, in resume, and in steps; the
        # plan holds more work (6 s) than fifty such windows can finish.
        time.sleep(rng.uniform(0.1, 0.5))
        if proc.poll() is not None:
            break  # it finished before this kill (then the assertion on `kills` below fails)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    final = cli(home, "run", str(plan), "--task", "chaos", "--json")
    assert json.loads(final.stdout)["status"] == "completed"
    entries = journal(tmp_path)
    counts = {name: entries.count(name) for name in set(entries)}
    assert sorted(counts) == [f"s{i:02d}" for i in range(20)]
    repeats = sum(n - 1 for n in counts.values())
    assert repeats <= kills
    assert kills == 50


def test_on_a_terminal_each_step_shows_its_number_and_time(tmp_path: Path, home: Path) -> None:
    """With stderr on a terminal, progress reads `[i/n] name ...` then `done in Xs`; piped, it stays quiet."""
    import os
    import pty

    plan = six_steps(tmp_path, failing=None)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [PYTHON, WORKFLOW, "run", str(plan)], env=script_env(home), stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the terminal closed: the run ended
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    shown = b"".join(chunks).decode()
    assert "[1/6] s1 ..." in shown and re.search(r"\[6/6\] s6 done in \d+\.\ds", shown)
    piped = cli(home, "run", str(plan), "--task", "other")
    assert "[1/6]" not in piped.stderr


@pytest.mark.slow
def test_a_long_plan_saves_each_step_as_a_journal_line_not_the_whole_checkpoint(
    fast: Config, home: Path, state: StateRoot
) -> None:
    """A 400-step workflow: the whole checkpoint is written a handful of times (it was 800), each step's
    saves are journal lines, and status and a resume still see every step done."""
    wf = Workflow("long")
    ran: list[int] = []
    for i in range(400):
        wf.step(lambda ctx, i=i: ran.append(i) or {"i": i}, name=f"s{i}")
    result = wf.run(task="long", config=fast)
    assert result.status == "completed" and ran == list(range(400))
    snapshot = json.loads((home / "checkpoints" / "long.json").read_text())
    assert max(slot["seq"] for slot in snapshot) < 10  # full writes; the rest went to long.journal
    data = status("long")
    assert data is not None and all(data.steps[f"s{i}"].state == "done" for i in range(400))
    assert data.steps["s399"].outputs == {"i": 399} and data.status == "completed"
    again = wf.run(task="long", config=fast)
    assert again.status == "completed" and ran == list(range(400))  # nothing ran twice


# -- the saved record (state/checkpoints.py) ------------------------------------------------------------------


def todays_checkpoint(plan: Path) -> dict[str, Any]:
    """A checkpoint exactly as the previous version saves it: step `a` done, `b` never started."""
    return {
        "task": "t",
        "plan": {"name": "two", "path": str(plan), "digest": "0" * 64},
        "status": "interrupted",
        "order": ["a", "b"],
        "steps": {
            "a": {
                "state": "done",
                "attempts": 1,
                "run_id": "t.a-20261205T070000Z-4242",
                "outputs": {"stdout": "hello"},
                "started": "2026-12-05T07:00:00Z",
                "ended": "2026-12-05T07:00:01Z",
                "duration_s": 1.25,
                "exit_code": 0,
                "error_class": None,
                "reason": None,
                "ran": True,
                "compensated": False,
            },
            "b": {
                "state": "pending",
                "attempts": 0,
                "run_id": None,
                "outputs": {},
                "started": None,
                "ended": None,
                "duration_s": None,
                "exit_code": None,
                "error_class": None,
                "reason": None,
            },
        },
        "runs": 1,
        "resumes_without_progress": 0,
        "done_at_last_run": 0,
        "created": "2026-12-05T07:00:00Z",
        "updated": "2026-12-05T07:00:01Z",
        "incident": None,
    }


def two_steps(folder: Path) -> Path:
    return write_plan(
        folder,
        """
        name: two
        steps:
          - {name: a, shell: "echo a >> journal; echo hello", outputs: {stdout: true}}
          - {name: b, shell: "echo b >> journal"}
    """,
    )


def test_a_checkpoint_in_todays_shape_reads_back_exactly_and_resumes(tmp_path: Path, fast: Config, home: Path) -> None:
    """The typed record turns the previous version's document into the same document, and a run resumes it."""
    from selfheal.state.checkpoints import Checkpoint

    plan = two_steps(tmp_path)
    literal = todays_checkpoint(plan)
    assert Checkpoint.from_json(json.loads(json.dumps(literal)), "a literal").to_json() == literal
    path = Checkpoints(StateRoot(home).ensure()).path("t")
    path.write_text(json.dumps(literal))  # a plain JSON file, as written before the two-slot format
    assert run(plan, "t", config=fast).status == "completed"
    assert journal(tmp_path) == ["b"]


def test_a_newer_versions_keys_survive_a_run_of_the_checkpoint(tmp_path: Path, fast: Config, home: Path) -> None:
    """Keys this version does not know, in the task, its plan and a step, are saved back as they were."""
    plan = two_steps(tmp_path)
    literal = todays_checkpoint(plan)
    literal["lease"] = {"holder": "host-b"}
    literal["plan"]["signature"] = "sig"
    literal["steps"]["a"]["cost_usd"] = 0.25
    literal["steps"]["b"]["cost_usd"] = 0.5
    Checkpoints(StateRoot(home).ensure()).path("t").write_text(json.dumps(literal))
    assert run(plan, "t", config=fast).status == "completed"
    saved = Checkpoints(StateRoot(home)).load("t")
    assert saved is not None
    data = saved.to_json()
    assert data["lease"] == {"holder": "host-b"} and data["plan"]["signature"] == "sig"
    assert (data["steps"]["a"]["cost_usd"], data["steps"]["b"]["cost_usd"]) == (0.25, 0.5)
    assert data["steps"]["b"]["state"] == "done"


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [
        (lambda d: d["steps"]["a"].update(attempts="three"), "steps.a.attempts", "three"),
        (lambda d: d.update(status="paused"), "status", "paused"),
        (lambda d: d.update(order=["a"]), "order", ["a"]),
        (lambda d: d["plan"].update(path=7), "plan.path", 7),
    ],
    ids=["step-attempts", "status", "order", "plan-path"],
)
def test_a_checkpoint_with_a_wrong_field_names_the_file_the_key_and_the_value(
    tmp_path: Path, fast: Config, home: Path, change: Callable[[dict[str, Any]], None], key: str, value: Any
) -> None:
    """A wrong field makes the checkpoint unreadable like a torn one (moved aside, nothing run), and says which."""
    plan = two_steps(tmp_path)
    literal = todays_checkpoint(plan)
    change(literal)
    path = Checkpoints(StateRoot(home).ensure()).path("t")
    path.write_text(json.dumps(literal))
    with pytest.raises(CheckpointUnreadable) as info:
        run(plan, "t", config=fast)
    message = str(info.value)
    assert str(path) in message and f"{key}: " in message and repr(value) in message
    assert journal(tmp_path) == [] and list(path.parent.glob("t.json.corrupt-*"))


# -- outputs keep their order ---------------------------------------------------------------------------


def test_a_steps_outputs_keep_the_order_it_gave_them_after_a_resume(fast: Config) -> None:
    """The outputs a step returned come back in its own key order, nested dicts too, after a resume reads them
    from the checkpoint (the checkpoint's writer sorts keys: they came back key-sorted)."""
    given = {"zeta": 1, "alpha": {"y": [{"k": 1, "b": 2}], "b": 2}, "mid": 3}
    seen: list[str] = []
    wf = Workflow("ordered")

    @wf.step
    def build(ctx: StepContext) -> dict[str, Any]:
        return given

    @wf.step
    def use(ctx: StepContext) -> None:
        seen.append(json.dumps(ctx.outputs["build"]))
        if len(seen) == 1:
            raise KeyboardInterrupt

    assert wf.run(config=fast).status == "interrupted"
    result = wf.run(config=fast)
    assert result.status == "completed" and result.resumed
    assert seen == [json.dumps(given)] * 2
    assert json.dumps(result.steps[0].outputs) == json.dumps(given)
    saved = status("ordered")
    assert saved is not None and json.dumps(saved.steps["build"].outputs) == json.dumps(given)


def test_a_command_steps_outputs_read_the_same_after_a_resume(tmp_path: Path, fast: Config, home: Path) -> None:
    """A command step's outputs (stdout, and each file's path, size and SHA-256) are listed in the same order
    by the run that made them and by `status` after it: they came back in another order once re-read."""
    (tmp_path / "out.txt").write_text("x")
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: a, shell: "echo hi", outputs: {stdout: true, files: [out.txt]}}
    """,
    )
    ran = cli(home, "run", str(plan), "--task", "t", "--json")
    assert ran.returncode == 0, ran.stderr
    shown = cli(home, "status", "t", "--json")
    assert shown.returncode == 0, shown.stderr
    made = json.loads(ran.stdout)["steps"][0]["outputs"]
    assert json.dumps(json.loads(shown.stdout)["steps"]["a"]["outputs"]) == json.dumps(made)


# -- from Python, messages name the Python way ----------------------------------------------------------


CLI_WORDS = ("--restart", "--from", "--task", "workflow.py")


def python_two_steps(name: str = "py-msg", fail: bool = False) -> Workflow:
    wf = Workflow(name)

    @wf.step
    def a(ctx: StepContext) -> None:
        pass

    @wf.step
    def b(ctx: StepContext) -> None:
        if fail:
            raise ValueError("no such channel")

    return wf


def test_from_python_a_completed_task_says_restart_true_not_the_cli_flags(fast: Config) -> None:
    """Run again after it completed: the message names Workflow.run's restart=True, not --restart or reset."""
    wf = python_two_steps()
    wf.run(config=fast)
    again = wf.run(config=fast)
    assert again.already_completed and "restart=True" in again.message
    assert not [w for w in CLI_WORDS if w in again.message], again.message


def test_from_python_a_parked_task_says_from_step_and_restart(fast: Config, home: Path) -> None:
    """Dead-letter: the message names from_step= and restart=True (the CLI's --from and reset mean nothing here)."""
    wf = python_two_steps("py-parked")
    runner = WorkflowRunner(wf.plan, "py-parked", config=fast)
    data = runner._fresh()
    data.steps["a"].state, data.steps["a"].attempts = "running", 1
    data.resumes_without_progress = fast.workflows.max_resumes_without_progress + 1
    data.status = "dead_letter"
    Checkpoints(StateRoot(home).ensure()).save("py-parked", data)
    parked = wf.run(task="py-parked", config=fast)
    assert parked.status == "dead_letter"
    assert "from_step=" in parked.message and "restart=True" in parked.message
    assert not [w for w in CLI_WORDS if w in parked.message], parked.message
    assert parked.resume_command is not None and "from_step='a'" in parked.resume_command


def test_from_python_an_unknown_from_step_names_the_argument(fast: Config) -> None:
    """from_step= naming no step: the error says from_step=, not --from."""
    with pytest.raises(UsageError, match=r"from_step='zz'") as info:
        python_two_steps().run(config=fast, from_step="zz")
    assert not [w for w in CLI_WORDS if w in str(info.value)], str(info.value)


def test_from_python_other_steps_than_the_checkpoints_say_restart_true(fast: Config) -> None:
    """A workflow whose steps changed since its checkpoint: start over with restart=True (not --restart)."""
    python_two_steps("py-changed", fail=True).run(config=fast)
    other = Workflow("py-changed")

    @other.step
    def c(ctx: StepContext) -> None:
        pass

    with pytest.raises(PlanChanged, match=r"restart=True") as info:
        other.run(config=fast)
    assert not [w for w in CLI_WORDS if w in str(info.value)], str(info.value)
    assert other.run(config=fast, restart=True).status == "completed"


def test_from_python_an_unreadable_checkpoint_says_restart_true(fast: Config, home: Path) -> None:
    """A torn checkpoint of a Python workflow: the error says restart=True, and that does start it over."""
    path = Checkpoints(StateRoot(home).ensure()).path("py-torn")
    path.write_bytes(b'{"task": "py-to')
    wf = python_two_steps("py-torn")
    with pytest.raises(CheckpointUnreadable, match=r"restart=True") as info:
        wf.run(config=fast)
    assert info.value.exit_code == 3
    assert not [w for w in CLI_WORDS if w in str(info.value)], str(info.value)
    assert wf.run(config=fast, restart=True).status == "completed"


def test_the_cli_keeps_its_own_words(tmp_path: Path, fast: Config, home: Path) -> None:
    """The same situations from workflow.py name its flags: --restart, reset, --from."""
    plan = six_steps(tmp_path, failing=None)
    assert cli(home, "run", str(plan), "--task", "t").returncode == 0
    again = cli(home, "run", str(plan), "--task", "t")
    assert again.returncode == 1 and "--restart (or `workflow.py reset TASK`)" in again.stderr
    unknown = cli(home, "run", str(plan), "--task", "t", "--from", "zz")
    assert unknown.returncode == 2 and "--from: the plan has no step named 'zz'" in unknown.stderr
    renamed = write_plan(tmp_path, plan.read_text().replace("s6", "s7"), "renamed.yaml")
    changed = cli(home, "run", str(renamed), "--task", "t")
    assert changed.returncode == 2 and "run again with --restart" in changed.stderr
    Checkpoints(StateRoot(home).ensure()).path("torn").write_bytes(b'{"task": "to')
    torn = cli(home, "run", str(plan), "--task", "torn")
    assert torn.returncode == 3 and "--restart (or `workflow.py reset TASK` first)" in torn.stderr


# -- a function step has no timeout ----------------------------------------------------------------------


def test_a_timeout_on_a_function_step_is_refused_not_ignored(fast: Config) -> None:
    """A Step whose run is a function, given timeout_s, is refused before anything runs (it was silently
    ignored: the step could hang past it). The message says what bounds work: a command step's timeout."""
    from selfheal.durable.workflow import Plan, Step

    ran: list[str] = []

    def first(ctx: StepContext) -> None:
        ran.append("first")

    def hangs(ctx: StepContext) -> None:
        ran.append("hangs")

    plan = Plan("bounded", (Step("first", first), Step("hangs", hangs, timeout_s=5)))
    with pytest.raises(UsageError, match=r"step 'hangs'.*timeout.*command") as info:
        WorkflowRunner(plan, "bounded", config=fast).run()
    assert info.value.exit_code == 2 and ran == []


def test_a_hanging_command_inside_a_function_step_is_bounded_the_documented_way(fast: Config) -> None:
    """docs/workflows.md's way for a function step: run the work that may hang as a command with a timeout;
    its process group is stopped, the step fails as `timeout`, and the done step is compensated."""
    import selfheal

    undone: list[str] = []
    wf = Workflow("bounded-by-a-process")

    @wf.step(compensate=lambda ctx: undone.append("undo first"))
    def first(ctx: StepContext) -> None:
        pass

    @wf.step(max_attempts=1)
    def fetch(ctx: StepContext) -> None:
        outcome = selfheal.run_with_retry([PYTHON, "-c", "import time; time.sleep(60)"], timeout_s=0.2, max_attempts=1)
        if not outcome.ok:
            raise TimeoutError(f"fetch: {outcome.error_class}: {outcome.reason}")

    result = wf.run(config=fast)
    assert result.status == "failed" and result.steps[1].error_class == "timeout"
    assert undone == ["undo first"]


def test_a_hand_edited_outputs_order_changes_no_value_and_the_checkpoint_still_reads(
    tmp_path: Path, fast: Config, home: Path
) -> None:
    """`outputs_order` only puts keys back in order: one naming keys that are not there, or holding entries of
    the wrong shape, loses no output and makes nothing unreadable; the keys it names come first."""
    plan = two_steps(tmp_path)
    literal = todays_checkpoint(plan)
    literal["steps"]["a"]["outputs"] = {"a": 1, "b": {"x": 1, "y": 2}, "c": 3}
    literal["steps"]["a"]["outputs_order"] = ["c", "gone", 7, ["b", ["y", "x"]], ["b", "twice"], [1, 2]]
    Checkpoints(StateRoot(home).ensure()).path("t").write_text(json.dumps(literal))
    loaded = status("t")
    assert loaded is not None
    assert json.dumps(loaded.steps["a"].outputs) == json.dumps({"c": 3, "b": {"y": 2, "x": 1}, "a": 1})
    assert run(plan, "t", config=fast).status == "completed"
