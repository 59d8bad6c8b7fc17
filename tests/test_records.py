"""Typed records of the state root (state/records.py and the records beside it): reading checks each field and
names the file, the key and the value; keys of a newer version are kept; run liveness is one rule."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from selfheal.core.runs import close_dead, list_runs
from selfheal.state.records import Fields, RecordError
from selfheal.state.root import StateRoot
from selfheal.state.runs import ProcessRef, RunState, live_process, recorded_process_gone

# A run record exactly as the previous version writes it (runs/<run-id>.json, indented, sorted keys).
TODAYS_RUN = """{
  "argv": [
    "report",
    "--all"
  ],
  "attempt": 1,
  "child": null,
  "ended_ts": null,
  "exit_code": null,
  "host": "vm",
  "last_heartbeat": "2027-01-15T08:00:00Z",
  "last_heartbeat_ts": 1800000000.0,
  "last_output_ts": null,
  "next_attempt_ts": null,
  "outcome": null,
  "phase": "running",
  "run_id": "nightly-20261205T070000Z-4242",
  "started": "2027-01-15T08:00:00Z",
  "started_ts": 1800000000.0,
  "status": "running",
  "supervisor": {
    "create_time": 1796457252.55,
    "pid": 4984
  },
  "target": "vendor-api",
  "task": "nightly"
}
"""


def dead_process() -> tuple[int, float]:
    """The pid and start time of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    create_time = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return proc.pid, create_time


# -- the shared field checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("getter", "value", "why"),
    [
        ("number", True, "must be a number"),
        ("count", -1, "must be a whole number >= 0"),
        ("count", 1.5, "must be a whole number >= 0"),
        ("text", 3, "must be a string"),
        ("flag", "yes", "must be true or false"),
        ("array", {}, "must be a list"),
        ("object", [], "must be an object"),
    ],
)
def test_a_field_of_the_wrong_kind_is_named_with_where_and_its_value(getter: str, value: Any, why: str) -> None:
    """Every check raises the same error, naming where the record came from, the key and the value."""
    with pytest.raises(RecordError) as info:
        getattr(Fields({"k": value}, "runs/x.json"), getter)("k")
    assert str(info.value) == f"runs/x.json: k: {why} (value {value!r})"
    assert (info.value.key, info.value.value) == ("k", value)


def test_a_missing_field_takes_its_default_and_null_only_where_allowed() -> None:
    """An older version's record lacks newer fields (the default is used); null passes only if optional."""
    fields = Fields({"a": None}, "here")
    assert (fields.count("missing"), fields.array("missing"), fields.number("a", optional=True)) == (0, [], None)
    with pytest.raises(RecordError, match=r"here: a: must be a number or null \(value 'x'\)"):
        Fields({"a": "x"}, "here").number("a", optional=True)
    with pytest.raises(RecordError, match="must be a number"):
        fields.number("a")


def test_a_nested_record_names_its_key_path() -> None:
    with pytest.raises(RecordError, match=r"f\.json: steps\.s1\.attempts: must be"):
        Fields({"attempts": "2"}, "f.json", inside="steps.s1").count("attempts")


# -- run records -------------------------------------------------------------------------------------------


def test_a_run_record_in_todays_shape_reads_and_writes_back_the_same(tmp_path: Path) -> None:
    """The previous version's file becomes a typed record and, written again, the same document."""
    record = RunState.from_json(json.loads(TODAYS_RUN), "a literal")
    assert (record.task, record.attempt, record.supervisor and record.supervisor.pid) == ("nightly", 1, 4984)
    assert record.to_json() == json.loads(TODAYS_RUN)


def test_a_newer_versions_keys_survive_closing_a_dead_run(home: Path) -> None:
    """close_dead reads, changes and writes back a record: keys it does not know are written back as they were."""
    state = StateRoot(home).ensure()
    pid, create_time = dead_process()
    data = json.loads(TODAYS_RUN)
    data.update(host=socket.gethostname(), supervisor={"pid": pid, "create_time": create_time, "uid": 1000})
    data["cgroup"] = "/user.slice/run-1"
    path = state.run_file(data["run_id"])
    path.write_text(json.dumps(data))
    assert close_dead(state, "nightly", now=1800000100.0) == [data["run_id"]]
    saved = json.loads(path.read_text())
    assert (saved["status"], saved["outcome"], saved["cgroup"]) == ("finished", "crashed", "/user.slice/run-1")
    assert saved["supervisor"] == {"pid": pid, "create_time": create_time, "uid": 1000}  # nested keys kept too


def test_a_run_record_with_a_wrong_field_is_set_aside_and_named(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """list_runs skips it, moves it aside and logs the file, the key and the value."""
    state = StateRoot(home).ensure()
    path = state.run_file("nightly-20261205T070000Z-4242")
    path.write_text(json.dumps({**json.loads(TODAYS_RUN), "attempt": "one"}))
    with caplog.at_level(logging.WARNING):
        assert list_runs(state) == []
    assert f"{path}: attempt: must be a whole number >= 0 (value 'one')" in caplog.text
    assert not path.exists() and list(path.parent.glob(f"{path.name}.corrupt-*"))


def test_a_run_record_rewritten_or_removed_is_listed_as_it_now_is(home: Path) -> None:
    """list_runs keeps what it parsed while a file is unchanged (a runner lists the records several times a
    run): a record replaced on disk is listed as it now is, a removed one is gone, and changing a listed
    record changes nothing the next listing returns."""
    state = StateRoot(home).ensure()
    first = json.loads(TODAYS_RUN)
    path = state.run_file(first["run_id"])
    path.write_text(json.dumps(first))
    (listed,) = list_runs(state)
    assert (listed.status, listed.attempt) == ("running", first["attempt"])
    listed.status, listed.argv[:] = "finished", ["changed"]  # a caller's own copy
    (again,) = list_runs(state)
    assert (again.status, again.argv) == ("running", first["argv"])
    path.write_text(json.dumps({**first, "attempt": first["attempt"] + 1, "status": "finished"}))  # same inode
    (rewritten,) = list_runs(state)
    assert (rewritten.status, rewritten.attempt) == ("finished", first["attempt"] + 1)
    path.unlink()
    assert list_runs(state) == []


def test_a_tasks_dead_runs_are_found_among_other_tasks_history_and_only_its_own(home: Path) -> None:
    """close_dead closes only the task's own dead runs among other tasks' records, even for a task whose name
    begins like another's ("nightly" and "nightly-eu")."""
    state = StateRoot(home).ensure()
    pid, create_time = dead_process()
    for task in ("nightly", "nightly-eu", "other"):
        data = {**json.loads(TODAYS_RUN), "task": task, "run_id": f"{task}-20261205T070000Z-{pid}"}
        data.update(host=socket.gethostname(), supervisor={"pid": pid, "create_time": create_time})
        state.run_file(data["run_id"]).write_text(json.dumps(data))
    assert len(list_runs(state)) == 3  # read once: what this process keeps of them must not hide a change
    assert close_dead(state, "nightly", now=1800000100.0) == [f"nightly-20261205T070000Z-{pid}"]
    by_task = {r.task: (r.status, r.outcome) for r in list_runs(state)}
    assert by_task == {
        "nightly": ("finished", "crashed"),
        "nightly-eu": ("running", None),
        "other": ("running", None),
    }
    assert close_dead(state, "nightly-eu", now=1800000100.0) == [f"nightly-eu-20261205T070000Z-{pid}"]


def test_only_running_records_are_listed_for_the_checks_and_no_text_in_one_passes_it_as_finished(
    home: Path,
) -> None:
    """The checks (a run in progress, dead runs, orphans, the health check) list only running records and
    leave the finished history unparsed, judged by its bytes; a running record whose command or a newer
    version's nested key says `"status": "finished"` is still running."""
    from selfheal.state.root import write_json

    state = StateRoot(home).ensure()
    base = json.loads(TODAYS_RUN)
    tricky = {**base, "run_id": "tricky-1", "argv": ["sh", "-c", 'echo \'\n  "status": "finished"\'']}
    nested = {**base, "run_id": "nested-1", "future": {"status": "finished"}}
    done = {**base, "run_id": "done-1", "status": "finished", "outcome": "succeeded"}
    for record in (tricky, nested, done):
        write_json(state.run_file(record["run_id"]), record)
    assert sorted(r.run_id for r in list_runs(state, running_only=True)) == ["nested-1", "tricky-1"]
    assert sorted(r.run_id for r in list_runs(state)) == ["done-1", "nested-1", "tricky-1"]
    assert sorted(r.run_id for r in list_runs(state, running_only=True)) == ["nested-1", "tricky-1"]


# -- the liveness rule -------------------------------------------------------------------------------------


def test_a_recorded_process_is_alive_only_with_its_own_start_time() -> None:
    """Same pid and start time: alive; the same pid with another start time (a reused pid): gone."""
    me = psutil.Process()
    assert live_process(me.pid, me.create_time()) is not None
    assert not recorded_process_gone(me.pid, me.create_time(), socket.gethostname(), socket.gethostname())
    assert live_process(me.pid, me.create_time() - 5) is None
    assert recorded_process_gone(me.pid, me.create_time() - 5)


def test_a_process_is_called_gone_only_when_it_can_be_judged_here() -> None:
    """An exited process of this host is gone; one of another host, or without a start time, is not judged."""
    pid, create_time = dead_process()
    here = socket.gethostname()
    assert recorded_process_gone(pid, create_time, here, here)
    assert recorded_process_gone(pid, create_time, None, here)  # no host recorded: this one's
    assert not recorded_process_gone(pid, create_time, "another-host", here)
    assert not recorded_process_gone(pid, None, here, here)
    run = RunState.from_json({**json.loads(TODAYS_RUN), "host": here}, "a literal")
    run.supervisor = ProcessRef(pid, create_time)
    assert run.supervisor_gone(here) and not run.supervisor_gone("elsewhere")


def test_the_records_import_nothing_heavy() -> None:
    """Reading state (a health check, a status listing) loads neither psutil nor a model client."""
    code = (
        "import sys, selfheal.state.records, selfheal.state.runs, selfheal.state.breakers,"
        " selfheal.state.checkpoints, selfheal.state.taskrecord, selfheal.state.fixes;"
        " print(sorted(m for m in ('psutil', 'openai', 'httpx', 'psycopg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- incidents ---------------------------------------------------------------------------------------------

# An incident exactly as the previous version writes it (a workflow's step failed, one step compensated).
TODAYS_INCIDENT: dict[str, Any] = {
    "id": "six-20261205T070000Z",
    "task": "six",
    "kind": "failed",
    "summary": "self-heal: task six failed at step s4 (permanent): exit 1",
    "error": "exit 1",
    "error_class": "permanent",
    "failed_step": "s4",
    "last_completed_step": "s3",
    "resume_command": "python3 workflow.py run plan.yaml --task six",
    "compensated": ["s3"],
    "compensation_failures": [{"step": "s2", "error": "exit 2"}],
    "context": {"s1": {"stdout": "ok"}},
    "plan": "/home/agent/plan.yaml",
    "created": "2026-12-05T07:00:00Z",
    "notified": {"ok": True, "exit_code": 0, "at": "2026-12-05T07:00:01Z"},
}


def test_an_incident_in_todays_shape_reads_back_the_same_and_keeps_newer_keys(home: Path) -> None:
    from selfheal.durable.incident import read_incident, write_incident
    from selfheal.state.incidents import Incident

    state = StateRoot(home).ensure()
    state.incident_file("six-20261205T070000Z").write_text(json.dumps({**TODAYS_INCIDENT, "ticket": "OPS-7"}))
    incident = read_incident(state, "six-20261205T070000Z")
    assert incident is not None and incident.failed_step == "s4" and incident.extra == {"ticket": "OPS-7"}
    assert incident.to_json() == {**TODAYS_INCIDENT, "ticket": "OPS-7"}
    incident.id = "six-again"
    saved = json.loads(write_incident(state, incident).read_text())
    assert saved["ticket"] == "OPS-7"
    assert Incident.from_json(TODAYS_INCIDENT, "a literal").to_json() == TODAYS_INCIDENT


def test_an_incident_with_a_wrong_field_names_the_file_the_key_and_the_value(home: Path) -> None:
    from selfheal.durable.incident import read_incident
    from selfheal.errors import CorruptStateError

    state = StateRoot(home).ensure()
    path = state.incident_file("six-20261205T070000Z")
    path.write_text(json.dumps({**TODAYS_INCIDENT, "compensated": "s3"}))
    with pytest.raises(CorruptStateError, match=r"compensated: must be a list \(value 's3'\)") as info:
        read_incident(state, "six-20261205T070000Z")
    assert str(path) in str(info.value) and info.value.quarantined_to is not None


# -- fix records -------------------------------------------------------------------------------------------

TODAYS_FIX: dict[str, Any] = {
    "id": "FIX-nightly-001",
    "task": "nightly",
    "signature": "connection refused to <path>",
    "key": "0123456789abcdef",
    "error_class": "transient",
    "kind": "task",
    "root_cause": "the database was down",
    "problems": ["the database was down"],
    "fix_steps": ["start the database", "run the task again"],
    "target_module": None,
    "success_criteria": "the task completes",
    "source": "rule:connection_refused",
    "confidence": 0.8,
    "status": "open",
    "review": {"verdict": "ready", "objections": []},
    "actions": ["requeue_task"],
    "evidence": {"excerpt": "ECONNREFUSED"},
    "area": "infra",
    "occurrences": 2,
    "seen": ["2026-12-05T07:00:00Z"],
    "first_seen": "2026-12-05T07:00:00Z",
    "last_seen": "2026-12-05T07:10:00Z",
    "created": "2026-12-05T07:00:01Z",
    "updated": "2026-12-05T07:10:01Z",
    "notes": [],
    "history": [{"ts": "2026-12-05T07:00:01Z", "what": "created"}],
}


def test_a_fix_record_in_todays_shape_reads_back_the_same_and_keeps_newer_keys() -> None:
    from selfheal.state.fixes import FixRecord

    record = FixRecord.from_json({**TODAYS_FIX, "owner": "ops"}, "fixes/FIX-nightly-001.json")
    assert (record.occurrences, record.ready, record.extra) == (2, True, {"owner": "ops"})
    assert record.to_json() == {**TODAYS_FIX, "owner": "ops"}


def test_a_fix_record_with_a_wrong_field_is_reported_by_the_listing_and_the_others_still_show(home: Path) -> None:
    """The store lists the readable records and names the file, the key and the value of the bad one."""
    from selfheal.state.fixes import FixStore

    store = FixStore(StateRoot(home))
    store.folder.joinpath("FIX-nightly-001.json").write_text(json.dumps(TODAYS_FIX))
    bad = store.folder / "FIX-nightly-002.json"
    bad.write_text(json.dumps({**TODAYS_FIX, "id": "FIX-nightly-002", "occurrences": "2"}))
    assert [r.id for r in store.all()] == ["FIX-nightly-001"]
    assert store.problems == [f"{bad}: occurrences: must be a whole number >= 0 (value '2')"]
    with pytest.raises(RecordError, match="occurrences"):
        store.get("FIX-nightly-002")


# -- a task's run spec --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "argv", "argv": ["python3", "job.py"], "cwd": "/srv", "timeout_s": 30, "max_attempts": None,
         "target": None},
        {"kind": "shell", "shell": "make report", "cwd": "/srv", "timeout_s": None, "max_attempts": 2,
         "target": "shop-api"},
        {"kind": "plan", "plan": "/srv/flow.yaml", "cwd": None, "timeout_s": None, "max_attempts": None,
         "target": None},
        {"kind": "argv", "argv": ["true"]},  # an older version wrote no options
        {"kind": "argv", "argv": ["true"], "cwd": "/", "sandbox": "gvisor"},  # a newer one, a key of its own
    ],
)  # fmt: skip
def test_a_run_spec_reads_typed_and_writes_back_in_the_shape_it_was_read(spec: dict[str, Any]) -> None:
    from selfheal.state.taskrecord import RunSpec, Task

    run = RunSpec.from_json(json.loads(json.dumps(spec)), "tasks.db: task 'job'")
    assert run.kind == spec["kind"] and getattr(run, run.kind)  # the kind's own key, read
    assert run.to_json() == spec and list(run.to_json()) == list(spec)
    task = Task.from_json({"name": "job", "run": spec}, "tasks/job.json")
    assert task.run == run and task.to_json()["run"] == spec
    if run.kind == "argv":
        assert run.process_argv() == spec["argv"]
    elif run.kind == "shell":
        assert run.process_argv() == ["/bin/sh", "-c", "make report"]


@pytest.mark.parametrize(
    ("spec", "key", "why"),
    [
        ({"argv": ["true"]}, "run.kind", "missing"),
        ({"kind": "docker", "argv": ["true"]}, "run.kind", "must be one of argv, shell, plan"),
        ({"kind": "argv", "argv": "true"}, "run.argv", "must be a list"),
        ({"kind": "argv", "argv": ["true"], "shell": "true"}, "run.shell", "cannot also have shell"),
        ({"kind": "shell", "shell": " "}, "run.shell", "non-empty string"),
        ({"kind": "argv", "argv": ["true"], "timeout_s": 0}, "run.timeout_s", "> 0"),
        ({"kind": "argv", "argv": ["true"], "max_attempts": 0}, "run.max_attempts", ">= 1"),
        ({"kind": "argv", "argv": ["true"], "cwd": 7}, "run.cwd", "must be a string"),
    ],
)
def test_a_wrong_run_spec_is_named_with_where_key_and_value(spec: dict[str, Any], key: str, why: str) -> None:
    from selfheal.state.taskrecord import RunSpec, Task

    with pytest.raises(RecordError) as caught:
        RunSpec.from_json(spec, "tasks.db: task 'job'")
    assert caught.value.where == "tasks.db: task 'job'" and caught.value.key == key and why in caught.value.why
    with pytest.raises(RecordError, match=key.replace(".", r"\.")):
        Task(name="job", run=spec)  # type: ignore[arg-type]  # a mapping given in code is checked the same way


def test_a_run_spec_made_in_code_is_held_to_the_same_rules() -> None:
    from selfheal.state.taskrecord import RunSpec

    assert RunSpec.command(["report", "--all"], timeout_s=60).to_json() == {
        "kind": "argv", "argv": ["report", "--all"], "cwd": None, "timeout_s": 60, "max_attempts": None,
        "target": None,
    }  # fmt: skip
    for wrong in (
        lambda: RunSpec("argv"),
        lambda: RunSpec("shell", shell=""),
        lambda: RunSpec.command(["x"], timeout_s=-1),
        lambda: RunSpec.command(["x"], max_attempts=0),
    ):
        with pytest.raises(ValueError, match="run spec"):
            wrong()
    with pytest.raises(ValueError, match="plan"):
        RunSpec("plan", plan="/srv/flow.yaml").process_argv()
