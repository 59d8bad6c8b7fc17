"""Independent steps at once (the second document's section 6.3): `after:` in a plan, `after=` in the
Python API, bounded by workflows.max_parallel. Overlap is proved by handshakes (a barrier, files), never
by timing."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.config import Config, load_config
from selfheal.durable.checkpoint import Checkpoints
from selfheal.durable.workflow import PlanError, Progress, StepContext, Workflow, WorkflowRunner, load_plan
from selfheal.errors import UsageError
from selfheal.state.root import StateRoot

WORKFLOW = str(SCRIPTS / "workflow.py")


@pytest.fixture
def fast(write_config: Callable[[str], Path]) -> Config:
    write_config(
        "retry: {jitter: none}\npolicies:\n  transient: {base_s: 0.01}\n  unknown: {base_s: 0.01}\n"
        "process: {kill_grace_s: 1}\nworkflows: {max_parallel: 2}\n"
    )
    return load_config()


def write_plan(folder: Path, text: str) -> Path:
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def journal(folder: Path) -> list[str]:
    path = folder / "journal"
    return path.read_text().splitlines() if path.exists() else []


def handshake(me: str, other: str) -> str:
    """A shell step that says it started, then waits (bounded) for the other step to say so too: it
    fails unless both run at the same time."""
    return (
        f"touch {me}.started; i=0; while [ ! -e {other}.started ]; do i=$((i+1)); "
        f"[ $i -gt 2000 ] && exit 1; sleep 0.01; done; echo {me} >> journal; echo {me}-out"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "steps:\n  - {name: a, run: [x], after: [b]}\n  - {name: b, run: [y]}\n",
            "steps[0].after[0]: steps[0] (a): a cycle",
        ),
        ("steps:\n  - {name: a, run: [x], after: [a]}\n", "a cycle: 'a' is not an earlier step"),
        ("steps:\n  - {name: a, run: [x], after: [zz]}\n", "steps[0].after[0]: steps[0] (a): no step named 'zz'"),
        (
            "steps:\n  - {name: a, run: [x]}\n  - {name: b, run: [y], after: a}\n",
            "steps[1].after: steps[1] (b): must be a list",
        ),
        ("steps:\n  - {name: a, run: [x]}\n  - {name: b, run: [y], after: [a, a]}\n", "'a' is listed twice"),
    ],
)
def test_bad_after_names_the_step_and_key(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan(write_plan(tmp_path, text))
    assert words in str(caught.value)


def test_a_plan_without_after_is_sequential_and_one_with_it_says_what_each_step_waits_for(tmp_path: Path) -> None:
    plain = load_plan(write_plan(tmp_path, "steps:\n  - {name: a, run: [x]}\n  - {name: b, run: [y]}\n"))
    assert not plain.parallel and plain.waits_for() == {"a": (), "b": ("a",)}
    plan = load_plan(
        write_plan(
            tmp_path,
            """
            steps:
              - {name: a, run: [x], outputs: {stdout: true}}
              - {name: b, run: [y], after: []}
              - {name: c, run: [z], after: [b], inputs: [a.stdout]}
              - {name: d, run: [w]}
            """,
        )
    )
    assert plan.parallel and plan.waits_for() == {"a": (), "b": (), "c": ("b", "a"), "d": ("c",)}


def test_independent_command_steps_run_at_once_and_a_later_step_reads_both(tmp_path: Path, fast: Config) -> None:
    plan = write_plan(
        tmp_path,
        f"""
        steps:
          - {{name: a, shell: "{handshake("a", "b")}", outputs: {{stdout: true}}}}
          - {{name: b, shell: "{handshake("b", "a")}", outputs: {{stdout: true}}, after: []}}
          - name: c
            shell: 'echo "c $SELFHEAL_IN_A_STDOUT $SELFHEAL_IN_B_STDOUT" >> journal'
            after: [a, b]
            inputs: [a.stdout, b.stdout]
        """,
    )
    result = WorkflowRunner(load_plan(plan), "par", config=fast).run()
    assert result.status == "completed", result.message
    entries = journal(tmp_path)
    assert sorted(entries[:2]) == ["a", "b"] and entries[2:] == ["c a-out b-out"]
    saved = Checkpoints(StateRoot.from_env()).load("par")
    assert saved is not None and sorted(saved.steps[n].done_seq or 0 for n in "abc") == [1, 2, 3]
    assert saved.steps["c"].done_seq == 3


def test_the_same_handshake_fails_in_a_plan_without_after(tmp_path: Path, fast: Config) -> None:
    """The handshake proves overlap: run one after the other, the first step gives up waiting."""
    plan = write_plan(
        tmp_path,
        f"""
        steps:
          - {{name: a, shell: "{handshake("a", "b").replace("2000", "20")}"}}
          - {{name: b, shell: "{handshake("b", "a")}"}}
        """,
    )
    result = WorkflowRunner(load_plan(plan), "seq", config=fast).run()
    assert result.status == "failed" and result.steps[0].state == "failed" and journal(tmp_path) == []


def test_python_steps_overlap_up_to_max_parallel(fast: Config) -> None:
    """Three independent steps, max_parallel 2: two meet at a barrier (only possible at once), the third
    starts after one of them ends; no more than two are ever in flight."""
    barrier = threading.Barrier(2, timeout=10)
    guard = threading.Lock()
    active = [0, 0]  # now, peak
    wf = Workflow("bounded")

    def body(ctx: StepContext) -> dict[str, Any]:
        with guard:
            active[0] += 1
            active[1] = max(active)
        try:
            if ctx.step != "third":
                barrier.wait()
            return {"who": ctx.step}
        finally:
            with guard:
                active[0] -= 1

    wf.step(body, name="first", after=[])
    wf.step(body, name="second", after=[])
    wf.step(body, name="third", after=[])

    @wf.step(after=["first", "second", "third"])
    def gather(ctx: StepContext) -> dict[str, Any]:
        return {"all": sorted(v["who"] for v in ctx.outputs.values())}

    result = wf.run(config=fast)
    assert result.status == "completed", result.message
    assert active[1] == 2
    assert result.steps[3].outputs == {"all": ["first", "second", "third"]}


def test_python_after_must_name_an_earlier_step() -> None:
    wf = Workflow("bad")
    with pytest.raises(UsageError, match="after='later' is not an earlier step"):
        wf.step(lambda ctx: None, name="first", after=["later"])


def test_a_failure_stops_new_steps_lets_the_running_one_finish_and_undoes_in_finishing_order(
    fast: Config,
) -> None:
    """`slow` is running when `broken` fails: it finishes, `never` (waiting for it) does not start, and the
    steps are undone last finished first: slow, then quick (plan order would undo quick last anyway, so
    `quick` is listed after `slow` in the plan to tell the two orders apart)."""
    undone: list[str] = []
    broke = threading.Event()  # set when the runner has seen `broken` fail (its progress event)
    quick_done = threading.Event()
    ran: list[str] = []
    wf = Workflow("saga")

    def undo(ctx: StepContext) -> None:
        undone.append(ctx.step)

    @wf.step(compensate=undo, after=[])
    def slow(ctx: StepContext) -> dict[str, Any]:
        assert quick_done.wait(10) and broke.wait(10)
        ran.append("slow")
        return {"n": 1}

    @wf.step(compensate=undo, after=[])
    def quick(ctx: StepContext) -> None:
        ran.append("quick")
        quick_done.set()

    @wf.step(after=["quick"])
    def broken(ctx: StepContext) -> None:
        raise ValueError("the target refused it")

    @wf.step(compensate=undo, after=["slow"])
    def never(ctx: StepContext) -> None:
        ran.append("never")

    def progress(event: Progress) -> None:
        if event.kind == "failed" and event.step == "broken":
            broke.set()

    result = wf.run(config=fast, progress=progress)
    assert result.status == "failed" and "broken" in result.message
    assert ran == ["quick", "slow"]
    assert undone == ["slow", "quick"] and result.compensated == ["slow", "quick"]
    assert {s.name: s.state for s in result.steps} == {
        "slow": "compensated",
        "quick": "compensated",
        "broken": "failed",
        "never": "pending",
    }


def test_journal_writes_of_steps_finishing_at_once_stay_whole(fast: Config, write_config: Any) -> None:
    write_config("workflows: {max_parallel: 8}\n")
    config = load_config()
    wf = Workflow("many")
    for i in range(24):
        wf.step(lambda ctx: {"step": ctx.step, "pad": "x" * 500}, name=f"s{i:02d}", after=[])
    assert wf.run(config=config).status == "completed"
    state = StateRoot.from_env()
    journal_file = Checkpoints(state).journal_path("many")
    if journal_file.exists():  # each line a whole JSON record, however the threads interleaved
        for line in journal_file.read_text().splitlines():
            json.loads(line)
    saved = Checkpoints(state).load("many")
    assert saved is not None and all(r.state == "done" for r in saved.steps.values())
    assert sorted(r.done_seq or 0 for r in saved.steps.values()) == list(range(1, 25))
    assert all(saved.steps[n].outputs == {"step": n, "pad": "x" * 500} for n in saved.order)


def test_sigkill_mid_group_resumes_only_the_unfinished_steps(tmp_path: Path, home: Path, fast: Config) -> None:
    """Real processes: a and b finish while c hangs; SIGKILL the runner; the next run stops what c left,
    runs c (and then d) only: a and b never run again."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: a, shell: "echo a >> journal"}
          - {name: b, shell: "echo b >> journal", after: []}
          - {name: c, shell: "echo c-start >> journal; test -e go || exec sleep 300; echo c >> journal", after: []}
          - {name: d, shell: "echo d >> journal", after: [a, b, c]}
        """,
    )
    proc = subprocess.Popen(
        [PYTHON, WORKFLOW, "run", str(plan), "--task", "killed"],
        env=script_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def states() -> dict[str, str]:
        try:
            saved = Checkpoints(StateRoot(home)).load("killed")
        except Exception:  # mid-write from the other process: look again
            return {}
        return {n: r.state for n, r in saved.steps.items()} if saved else {}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        "c-start" in journal(tmp_path)
        and states().get("a") == "done"
        and states().get("b") == "done"
        and any(json.loads(p.read_text()).get("child") for p in (home / "runs").glob("killed.c-*.json"))
    ):
        time.sleep(0.02)
    assert states() == {"a": "done", "b": "done", "c": "running", "d": "pending"}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (tmp_path / "go").write_text("")
    done = call_script("workflow.py", "run", str(plan), "--task", "killed", "--json", home=home)
    assert json.loads(done.stdout)["status"] == "completed", done.stdout + done.stderr
    entries = journal(tmp_path)
    assert sorted(entries) == sorted(["a", "b", "c-start", "c-start", "c", "d"])
    assert entries[-1] == "d"


def test_sigterm_stops_every_running_step_and_the_next_run_finishes_them(
    tmp_path: Path, home: Path, fast: Config
) -> None:
    """SIGTERM while two steps run: the stop flag reaches both processes, exit 3 (interrupted); the next run
    runs both again (neither had finished) and completes."""
    import psutil

    hang = "echo {0}-start >> journal; test -e go || exec sleep 300; echo {0} >> journal"
    plan = write_plan(
        tmp_path,
        f"""
        steps:
          - {{name: a, shell: "{hang.format("a")}"}}
          - {{name: b, shell: "{hang.format("b")}", after: []}}
        """,
    )
    proc = subprocess.Popen(
        [PYTHON, WORKFLOW, "run", str(plan), "--task", "term"],
        env=script_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def children() -> list[dict[str, Any]]:
        found = []
        for path in (home / "runs").glob("term.*.json"):
            with contextlib.suppress(ValueError, OSError):
                child = json.loads(path.read_text()).get("child")
                if child:
                    found.append(child)
        return found

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(children()) < 2:
        time.sleep(0.02)
    running = children()
    assert len(running) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 3
    for child in running:
        assert not psutil.pid_exists(child["pid"]) or psutil.Process(child["pid"]).create_time() != child["create_time"]
    (tmp_path / "go").write_text("")
    done = call_script("workflow.py", "run", str(plan), "--task", "term", "--json", home=home)
    assert json.loads(done.stdout)["status"] == "completed", done.stdout + done.stderr
    assert sorted(journal(tmp_path)) == ["a", "a-start", "a-start", "b", "b-start", "b-start"]


def test_runs_paused_by_a_steps_open_breaker_are_not_counted_toward_dead_letter(
    tmp_path: Path, home: Path, fast: Config
) -> None:
    """In a parallel plan too: while one step's breaker stays open, each cron run pauses (exit 4) without
    parking the task or spending the step's attempts; once it closes, the next run finishes the task."""
    plan = write_plan(
        tmp_path,
        """
        steps:
          - {name: a, shell: "echo a >> journal", after: []}
          - {name: b, shell: "echo b >> journal", after: [], target: mailer}
          - {name: c, shell: "echo c >> journal", after: [a, b]}
        """,
    )
    assert call_script("breakers.py", "trip", "mailer", "--for", "600", home=home).returncode == 0
    for _ in range(fast.workflows.max_resumes_without_progress + 3):
        paused = call_script("workflow.py", "run", str(plan), "--task", "t", home=home)
        assert paused.returncode == 4, paused.stderr
    data = Checkpoints(StateRoot(home)).load("t")
    assert data is not None and data.resumes_without_progress == 0 and data.steps["b"].attempts == 0
    assert call_script("breakers.py", "reset", "mailer", home=home).returncode == 0
    done = call_script("workflow.py", "run", str(plan), "--task", "t", home=home)
    assert done.returncode == 0, done.stderr
    assert journal(tmp_path) == ["a", "b", "c"]
