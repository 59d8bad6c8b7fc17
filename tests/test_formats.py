"""What the skill writes matches the documented formats in status/ (checked against real output)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, ROOT, call_script
from selfheal.models.output import schema_problems

OPENCLAW_LOG = ROOT / "tests" / "fixtures" / "openclaw-logs" / "gateway-cron-agent-errors.jsonl"


def check(value: Any, schema: dict[str, Any]) -> list[str]:
    """The library's JSON Schema checker (its negative control is the first test below)."""
    return schema_problems(value, schema)


def schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "status" / name).read_text())
    return data


def test_the_validator_catches_a_bad_event() -> None:
    """A negative control: an event with a wrong type and a missing field is reported."""
    problems = check({"ts": "yesterday", "event": "maybe", "pid": "x"}, schema("ledger-event.schema.json"))
    assert any("missing 'task'" in p for p in problems)
    assert any("'maybe' is not one of" in p for p in problems)
    assert any("does not match" in p for p in problems)


@pytest.fixture
def real_run(tmp_path: Path, home: Path) -> Path:
    """A real retry_run.py run that fails, retries, and ends: ledger, log and run record on disk."""
    counter = tmp_path / "n"
    code = (
        f"import pathlib, sys\np = pathlib.Path({str(counter)!r})\nn = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\nsys.exit(75 if n < 1 else 0)"
    )
    first = call_script(
        "retry_run.py", "--task", "fmt", "--", PYTHON, "-c", code, home=home, env={"SELFHEAL_TESTING": "1"}
    )
    first.check_returncode()
    call_script("retry_run.py", "--max-attempts", "1", "--", "false", home=home)
    return home


def test_ledger_events_match_the_schema(real_run: Path) -> None:
    """Every event written by real runs validates against status/ledger-event.schema.json."""
    events = [json.loads(line) for f in (real_run / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(events) == 3
    for event in events:
        assert check(event, schema("ledger-event.schema.json")) == []


def test_run_records_match_the_schema(real_run: Path) -> None:
    """Every run record validates against status/run-record.schema.json."""
    records = [json.loads(p.read_text()) for p in (real_run / "runs").glob("*.json")]
    assert len(records) == 2
    for record in records:
        assert check(record, schema("run-record.schema.json")) == []


def test_log_lines_follow_the_documented_format(real_run: Path) -> None:
    """Each log line is `<UTC time> [TAG] key=value ...`, as status/README.md shows."""
    lines = (real_run / "logs" / "selfheal.log").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[(RETRY|SUCCESS|FAILED)\] task=\S+( \w+=\S+)*", line), (
            line
        )


def test_workflow_events_match_the_schema(tmp_path: Path, home: Path) -> None:
    """A workflow that fails, compensates, writes an incident and is resumed writes only schema-valid events."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "steps:\n"
        "  - {name: a, shell: 'echo a', compensate: [sh, -c, 'echo undo']}\n"
        "  - {name: b, shell: 'test -e ok || { echo \"SyntaxError: x\" >&2; exit 1; }'}\n"
    )
    for _ in range(2):
        call_script("workflow.py", "run", str(plan), home=home, cwd=tmp_path)
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {"compensate", "incident", "resume"} <= {e["event"] for e in events}
    for event in events:
        assert check(event, schema("ledger-event.schema.json")) == []


def test_task_records_and_task_events_match_the_schemas(tmp_path: Path, home: Path) -> None:
    """A task tree that runs, fails, makes a fix task, analyses it and succeeds writes schema-valid records."""
    marker = tmp_path / "fixed"

    def run(*args: str) -> None:
        call_script("tasks.py", *args, home=home, env={"SELFHEAL_TESTING": "1"})

    run("add", "fmt-task", "--display-name", "format check", "--shell", f"test -e {marker} || exit 1")
    run("add", "fmt-child", "--parent", "fmt-task", "--type", "creative", "--priority", "P2")
    run("mark", "fmt-child", "void")
    run("run-next")  # fails: ERROR_FIX_PENDING and a FIX child
    run("run-next")  # the FIX child: analysed, REQUIRES_MANUAL
    marker.touch()
    run("run-next")  # succeeds: END
    shown = [
        call_script("tasks.py", "show", name, "--json", home=home)
        for name in ("fmt-task", "fmt-child", "FIX-fmt-task-command")
    ]
    for proc in shown:
        proc.check_returncode()
    records = [json.loads(p.stdout)["task"] for p in shown]
    assert {r["exec_state"] for r in records} == {"END", "VOID", "REQUIRES_MANUAL"}
    for record in records:
        assert check(record, schema("task-record.schema.json")) == [], record["name"]
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert "fix" in {e["event"] for e in events}
    for event in events:
        assert check(event, schema("ledger-event.schema.json")) == []


def test_fix_records_and_their_events_match_the_schemas(home: Path) -> None:
    """self_heal.py on a real failure and on OpenClaw's real log writes schema-valid records and events."""
    call_script(
        "retry_run.py", "--task", "fmt-fix", "--max-attempts", "1", "--", "sh", "-c",
        "echo 'HTTP 429 Too Many Requests' >&2; exit 1", home=home,
    )  # fmt: skip
    for args in (["--task", "fmt-fix"], ["--from-openclaw-logs", str(OPENCLAW_LOG)]):
        call_script("self_heal.py", *args, "--no-model", home=home)
    records = [json.loads(p.read_text()) for p in (home / "fixes").glob("FIX-*.json")]
    assert len(records) >= 4
    for record in records:
        assert check(record, schema("fix-record.schema.json")) == [], record["id"]
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {"created"} <= {e["status"] for e in events if e["event"] == "fix"}
    for event in events:
        assert check(event, schema("ledger-event.schema.json")) == []
