"""Hostile step results and crashes at the wrong moment, against durable workflows: a secret in a step's
output, outputs JSON cannot hold, outputs and errors too big for a checkpoint, a SIGKILL during
compensation. Each one once broke something a user running workflows unattended would notice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.config import Config, load_config
from selfheal.durable import workflow as workflow_module
from selfheal.durable.workflow import (
    MAX_STEP_OUTPUTS_BYTES,
    MAX_TASK_OUTPUTS_BYTES,
    StepContext,
    Workflow,
    WorkflowRunner,
    load_plan,
    status,
)
from selfheal.errors import NotAttempted, UsageError

pytestmark = pytest.mark.slow


@pytest.fixture
def fast(write_config: Any) -> Config:
    write_config("retry: {jitter: none}\npolicies:\n  unknown: {base_s: 0.01}\nprocess: {kill_grace_s: 1}\n")
    return load_config()


def checkpoint_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((home / "checkpoints").iterdir()) if p.is_file())


def test_a_secret_a_step_prints_never_reaches_the_checkpoints_journal(tmp_path: Path, home: Path) -> None:
    """A step whose kept stdout holds an API key: the key is masked in every checkpoint file, the journal
    of per-step saves included (it was written there in the clear)."""
    key = "sk-proj-" + "0123456789abcdef" * 2
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        textwrap.dedent(
            f"""\
            steps:
              - name: first
                shell: "echo 'Incorrect API key provided: {key}'"
                outputs: {{stdout: true}}
              - name: second
                shell: "true"
                inputs: [first.stdout]
            """
        )
    )
    env = script_env(home)
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / "workflow.py"), "run", str(plan), "--task", "wf"], env=env, check=False
    )
    assert proc.returncode == 0
    assert (home / "checkpoints" / "wf.journal").stat().st_size > 0  # the per-step saves really were journaled
    assert key.encode() not in checkpoint_bytes(home)
    assert b"Incorrect API key provided" in checkpoint_bytes(home)


class Node:
    def __str__(self) -> str:
        return "a node"


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("half an emoji \ud83d", "half an emoji \\ud83d"),  # a JavaScript string cut mid-pair
        (10**5000, "<int: 16610 bits>"),  # more digits than Python turns into text
    ],
    ids=["lone-surrogate", "huge-int"],
)
def test_a_function_step_returning_text_json_cannot_hold_is_done_and_its_checkpoint_loads(
    fast: Config, value: Any, kept: str
) -> None:
    """A value JSON (UTF-8) cannot hold is kept as text and the step counts as done, as the docs say; it
    used to crash the run after the step's side effects, leaving it to run again."""
    wf = Workflow("odd")
    seen: list[Any] = []

    @wf.step
    def produce(ctx: StepContext) -> dict[str, Any]:
        return {"value": value, "label \udcff": 1}

    @wf.step
    def consume(ctx: StepContext) -> None:
        seen.append(ctx.outputs["produce"])

    result = wf.run(config=fast)
    assert result.status == "completed", result.message
    assert seen == [{"value": kept, "label \\udcff": 1}]
    assert sorted(result.steps[0].converted) == ["label \\udcff", "value"]
    loaded = status("odd")
    assert loaded is not None and loaded.steps["produce"].outputs == seen[0]


def test_a_function_step_returning_a_cycle_or_deep_nesting_is_done(fast: Config) -> None:
    """A dict that contains itself, and a list nested 10,000 deep: kept as text where they stop being JSON,
    instead of a RecursionError after the step ran."""
    cycle: dict[str, Any] = {"name": "root"}
    cycle["self"] = cycle
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    wf = Workflow("loops")

    @wf.step
    def produce(ctx: StepContext) -> dict[str, Any]:
        return {"cycle": cycle, "deep": deep, "node": Node()}

    result = wf.run(config=fast)
    assert result.status == "completed", result.message
    outputs = result.steps[0].outputs
    assert outputs["cycle"] == {"name": "root", "self": "<dict: a cycle>"}
    assert outputs["node"] == "<Node: a node>"
    assert "cycle.self" in result.steps[0].converted
    loaded = status("loops")
    assert loaded is not None and loaded.steps["produce"].outputs == outputs


def test_outputs_too_big_for_a_checkpoint_fail_the_step_clearly_and_it_is_undone(fast: Config, home: Path) -> None:
    """A step returning 20 MB: the checkpoint took it and could never be read again (over the state-file
    limit), so every later run and status failed. Now the step fails with a message naming the size and
    the limit, it is compensated (it ran), and the checkpoint stays small and readable."""
    undone: list[str] = []
    wf = Workflow("big")

    @wf.step(compensate=lambda ctx: undone.append(ctx.step))
    def export(ctx: StepContext) -> dict[str, Any]:
        return {"rows": "x" * (20 * 1024 * 1024)}

    @wf.step
    def never(ctx: StepContext) -> None:
        raise AssertionError("must not run")

    result = wf.run(config=fast)
    assert result.status == "failed" and undone == ["export"]
    assert str(MAX_STEP_OUTPUTS_BYTES) in result.message
    assert "write them to a file" in result.message
    loaded = status("big")
    assert loaded is not None and loaded.steps["export"].outputs == {}
    assert len(checkpoint_bytes(home)) < 1024 * 1024


def test_many_steps_each_under_the_limit_cannot_together_outgrow_the_checkpoint(
    fast: Config, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty steps each under the per-step limit (900 KB of 1 MiB) made a checkpoint no run could read back.
    The step that would take the task over its total fails, naming the limit; the checkpoint stays readable,
    and a resume (the outputs now written to a file) goes on from there. (Limits a tenth of the real ones, so
    the test writes a tenth as much.)"""
    monkeypatch.setattr(workflow_module, "MAX_TASK_OUTPUTS_BYTES", MAX_TASK_OUTPUTS_BYTES // 10)
    monkeypatch.setattr(workflow_module, "MAX_STEP_OUTPUTS_BYTES", MAX_STEP_OUTPUTS_BYTES // 10)
    wf = Workflow("wide")
    size = 90 * 1024
    small = {"on": False}

    def make(i: int) -> Any:
        def produce(ctx: StepContext) -> dict[str, Any]:
            return {"rows": "s" if small["on"] else str(i % 10) * size}

        produce.__name__ = f"part{i:02d}"
        return produce

    for i in range(20):
        wf.step(make(i))
    result = wf.run(config=fast)
    assert result.status == "failed" and str(MAX_TASK_OUTPUTS_BYTES // 10) in result.message
    loaded = status("wide")
    assert loaded is not None
    done = [name for name in loaded.order if loaded.steps[name].state == "done"]
    assert len(done) == MAX_TASK_OUTPUTS_BYTES // 10 // (size + 12) and done == loaded.order[: len(done)]
    small["on"] = True
    again = wf.run(config=fast)
    assert again.status == "completed", again.message
    assert [s.outputs["rows"] for s in again.steps][len(done) :] == ["s"] * (20 - len(done))


def test_a_huge_error_message_is_cut_before_it_is_written(fast: Config, home: Path) -> None:
    """A function step failing with a 30 MB message: its reason is cut to ledger.reason_max_chars in the
    checkpoint and the incident (it made a 120 MB checkpoint that no run could read)."""
    wf = Workflow("loud")

    @wf.step(max_attempts=1)
    def shout(ctx: StepContext) -> None:
        raise ValueError("y" * (30 * 1024 * 1024))

    result = wf.run(config=fast)
    assert result.status == "failed"
    loaded = status("loud")
    assert loaded is not None
    reason = loaded.steps["shout"].reason or ""
    assert reason.startswith("ValueError: yyy") and reason.endswith("…") and len(reason) == fast.ledger.reason_max_chars
    assert len(checkpoint_bytes(home)) < 1024 * 1024
    assert sum(p.stat().st_size for p in (home / "incidents").iterdir()) < 1024 * 1024


def test_a_compensation_failing_with_a_huge_message_holding_a_key_is_cut_and_masked(fast: Config, home: Path) -> None:
    """A compensation function failing with a 30 MB message that holds an API key: what the step, the result
    and the incident keep is masked and cut to ledger.reason_max_chars. The message was kept whole: a 120 MB
    checkpoint that no later run or `status` could read, and the key in the result's JSON."""
    key = "sk-proj-" + "0123456789abcdef" * 2
    wf = Workflow("loud-undo")

    def undo(ctx: StepContext) -> None:
        raise RuntimeError(f"refund refused for {key}: " + "z" * (30 * 1024 * 1024))

    @wf.step(compensate=undo)
    def charge(ctx: StepContext) -> dict[str, Any]:
        return {"receipt": "R-1"}

    @wf.step
    def email(ctx: StepContext) -> None:
        raise ValueError("the mail server refused the sender")

    result = wf.run(config=fast)
    assert result.status == "failed" and result.compensation_failures == ["charge"]
    shown = json.dumps(result.to_json())
    assert key not in shown and "refund refused for" in shown
    loaded = status("loud-undo")  # raised StateError: the checkpoint was too big to read
    assert loaded is not None and loaded.steps["charge"].state == "compensation_failed"
    reason = loaded.steps["charge"].reason or ""
    assert "RuntimeError: refund refused for" in reason and len(reason) <= fast.ledger.reason_max_chars + 40
    assert len(checkpoint_bytes(home)) < 1024 * 1024
    assert sum(p.stat().st_size for p in (home / "incidents").iterdir()) < 1024 * 1024


class Unprintable(Exception):
    """An exception whose text cannot be made (a broken __str__, as some wrapped C errors have)."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_step_and_a_compensation_raising_an_exception_with_no_text_fail_cleanly(fast: Config) -> None:
    """A step raising an exception whose str() fails is a failed step like any other: the done steps are
    compensated and the reason names the exception's type. It was a RuntimeError traceback out of run(),
    the earlier steps left as they were and the step `running`."""
    undone: list[str] = []
    wf = Workflow("mute")

    def undo_first(ctx: StepContext) -> None:
        undone.append("first")

    def undo_second(ctx: StepContext) -> None:
        raise Unprintable

    wf.step(lambda ctx: None, name="first", compensate=undo_first)
    wf.step(lambda ctx: None, name="second", compensate=undo_second)

    @wf.step(max_attempts=1)
    def third(ctx: StepContext) -> None:
        raise Unprintable

    result = wf.run(config=fast)
    assert result.status == "failed" and undone == ["first"]
    assert result.compensation_failures == ["second"] and result.compensated == ["first"]
    assert result.steps[2].reason == "Unprintable: Unprintable()"
    assert "Unprintable: Unprintable()" in (result.steps[1].reason or "")


def test_a_compensation_left_running_by_a_sigkill_is_stopped_before_it_runs_again(tmp_path: Path, home: Path) -> None:
    """SIGKILL while a compensation command runs: the next run stops the one left behind before undoing
    the step again (both ran at once, the undo twice in parallel)."""
    work = tmp_path / "work"
    work.mkdir()
    plan = work / "plan.yaml"
    plan.write_text(
        textwrap.dedent(
            """\
            steps:
              - name: book
                shell: "echo booked >> log"
                compensate_shell: "echo undo-start >> log; sleep 5; echo undo-end >> log"
              - name: pay
                shell: "exit 2"
                retry: {max_attempts: 1}
            """
        )
    )
    argv = [PYTHON, str(SCRIPTS / "workflow.py"), "run", str(plan), "--task", "t"]
    env = script_env(home)
    log = work / "log"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "undo-start" in log.read_text()):
            assert time.monotonic() < deadline, "the compensation never started"
            assert first.poll() is None, "the first run ended before its compensation started"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    second = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 3, second.stderr
    # The one left behind was stopped: one undo started again and ran to its end, never two at once.
    assert log.read_text().split() == ["booked", "undo-start", "undo-start", "undo-end"]


def test_a_plan_in_a_folder_named_in_another_encoding_is_refused_clearly(tmp_path: Path, home: Path) -> None:
    """A plan under a folder whose name is Latin-1 (byte 0xff): exit 2 naming it, no traceback and no
    checkpoint (the checkpoint write crashed on the path, after the lock was taken)."""
    folder = tmp_path / "rapports-\udcff"  # Python's surrogate escape: the byte 0xff on disk
    folder.mkdir()
    plan = folder / "plan.yaml"
    plan.write_text("steps:\n  - {name: a, shell: 'echo a >> log'}\n")
    proc = call_script("workflow.py", "run", str(plan), "--task", "t", home=home)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not UTF-8" in proc.stderr and "rapports-\\udcff" in proc.stderr
    assert not (folder / "log").exists()
    assert call_script("workflow.py", "status", "t", home=home).returncode == 2


def test_a_second_process_running_the_same_task_is_refused_with_exit_4(tmp_path: Path, home: Path) -> None:
    """Two real processes, one task id: while the first is inside a step, a second `run` and a `reset` exit 4
    naming the task and run nothing; the first finishes, its step run once."""
    work = tmp_path / "work"
    work.mkdir()
    plan = work / "plan.yaml"
    plan.write_text(
        "steps:\n"
        "  - {name: a, shell: 'echo a >> log; while [ ! -e go ]; do sleep 0.05; done'}\n"
        "  - {name: b, shell: 'echo b >> log'}\n"
    )
    argv = [PYTHON, str(SCRIPTS / "workflow.py"), "run", str(plan), "--task", "t"]
    env = script_env(home)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (work / "log").exists():
            assert time.monotonic() < deadline and first.poll() is None, "the first run never started its step"
            time.sleep(0.05)
        second = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        reset = subprocess.run(
            [PYTHON, str(SCRIPTS / "workflow.py"), "reset", "t"], env=env, capture_output=True, text=True, check=False
        )
        (work / "go").touch()
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 4 and "'t'" in second.stderr and "Traceback" not in second.stderr, second.stderr
    assert reset.returncode == 4 and "Traceback" not in reset.stderr, reset.stderr
    assert first.returncode == 0, err
    assert (work / "log").read_text().split() == ["a", "b"]


@pytest.mark.parametrize(("make", "what"), [("mkdir -p out", "a folder"), ("mkfifo out", "a FIFO (named pipe)")])
def test_an_output_that_is_not_a_file_fails_the_step_naming_it(
    tmp_path: Path, home: Path, make: str, what: str
) -> None:
    """`outputs: {files: [out]}` where the step made a folder or a named pipe: the step fails (permanent, so
    it is undone), naming the path and what it is, exit 3. A folder was a traceback that left the step
    `running` for every later run to repeat; a pipe hung the run for good, deaf to SIGTERM, in open()."""
    work = tmp_path / "work"
    work.mkdir()
    plan = work / "plan.yaml"
    plan.write_text(
        "steps:\n"
        f"  - {{name: make, shell: 'echo ran >> log; {make}', compensate: [sh, -c, 'echo undone >> log'],\n"
        "     outputs: {files: [out]}}\n"
        "  - {name: after, shell: 'echo after >> log'}\n"
    )
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / "workflow.py"), "run", str(plan), "--task", "t", "--json"],
        env=script_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    result = json_of(proc.stdout)
    assert result["status"] == "failed" and result["compensated"] == ["make"]
    step = result["steps"][0]
    assert step["state"] == "failed" and step["error_class"] == "permanent"
    assert f"{work / 'out'} is {what}, not a file" in step["reason"]
    assert (work / "log").read_text().split() == ["ran", "undone"]
    data = status("t")
    assert data is not None and data.status == "failed"


def json_of(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON object, got: {stdout!r}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_no_step_can_be_named_like_a_steps_compensation_or_fallback_in_the_ledger(tmp_path: Path, home: Path) -> None:
    """The ledger names a step's compensation and fallback `<step>/compensate` and `<step>/fallback`, so the
    log report can tell them from a step of the user's: that holds only while no step's name holds `/`, in a
    plan or from Python."""
    plan = tmp_path / "plan.yaml"
    plan.write_text("steps:\n  - {name: pay/compensate, run: [true]}\n", encoding="utf-8")
    proc = call_script("workflow.py", "run", str(plan), home=home)
    assert proc.returncode == 2 and "steps[0].name" in proc.stderr
    wf = Workflow("marks")
    with pytest.raises(UsageError):
        wf.step(lambda ctx: None, name="pay/fallback")


def test_outputs_whose_key_order_would_outgrow_the_checkpoint_fail_the_step_clearly(
    fast: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys out of sorted order are kept with their order, which can take as much room as the keys: that room
    is counted in the step's limit, so such outputs fail the step naming the limit instead of making a
    checkpoint too big to read. The same keys in sorted order need no order and fit. (Limits a tenth of the
    real ones.)"""
    monkeypatch.setattr(workflow_module, "MAX_STEP_OUTPUTS_BYTES", MAX_STEP_OUTPUTS_BYTES // 10)
    keys = [f"k{i:06d}" for i in range(6000)]  # 72 KB as JSON, its order 60 KB more: over 102 KB together

    def make(name: str, ordered: list[str]) -> Workflow:
        wf = Workflow(name)
        wf.step(lambda ctx: dict.fromkeys(ordered, 0), name="export")
        return wf

    unsorted = make("unsorted", keys[::-1]).run(config=fast)
    assert unsorted.status == "failed" and str(MAX_STEP_OUTPUTS_BYTES // 10) in unsorted.message
    assert make("in-order", keys).run(config=fast).status == "completed"


def test_a_step_left_running_with_kill_orphans_off_names_the_setting_that_turns_it_on(
    tmp_path: Path, home: Path, write_config: Any
) -> None:
    """process.kill_orphans: false, and the run is SIGKILLed inside a step whose command lives on: the next
    run, from workflow.py and from Python, starts nothing beside it (exit 4, OrphanRunning) and says how to
    have it stopped: the setting in config.yaml, not retry_run.py's --no-kill-orphans, a flag neither has."""
    config_file = write_config("process: {kill_orphans: false, kill_grace_s: 1}\n")
    work = tmp_path / "work"
    work.mkdir()
    plan = work / "plan.yaml"
    plan.write_text("steps:\n  - {name: a, shell: 'echo $$ >> pids; exec sleep 300'}\n")
    argv = [PYTHON, str(SCRIPTS / "workflow.py"), "run", str(plan), "--task", "t"]
    first = subprocess.Popen(argv, env=script_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = work / "pids"
    try:
        deadline = time.monotonic() + 60
        while not (pids.exists() and pids.read_text().strip()):
            assert time.monotonic() < deadline and first.poll() is None, "the step never started"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    left = int(pids.read_text().split()[0])
    try:
        again = call_script("workflow.py", "run", str(plan), "--task", "t", home=home)
        with pytest.raises(NotAttempted) as python:
            WorkflowRunner(load_plan(plan), "t", config=load_config()).run()
    finally:
        os.kill(left, signal.SIGKILL)
    assert again.returncode == 4 and "Traceback" not in again.stderr, again.stderr
    for message in (again.stderr, str(python.value)):
        assert f"pid {left}" in message and "--no-kill-orphans" not in message, message
        assert f"set process.kill_orphans: true in {config_file}" in message, message
    assert pids.read_text().split() == [str(left)]  # nothing started beside it
