"""The retry core against real failures it once misread: real commands through retry_run.py, each checked
for the class a user sees in the JSON and how many times the command ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from conftest import call_script


def _run(home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = call_script("retry_run.py", "--json", *args, home=home)
    return proc.returncode, json.loads(proc.stdout)


def test_an_out_of_memory_kill_reported_by_a_shell_as_exit_137_is_resource(home: Path) -> None:
    """`sh -c 'job; exit $?'` (or `docker run`) turns the OOM killer's SIGKILL into exit 137: that is `resource`
    (a wait for memory), with the exit code kept, not an `unknown` retried a second later."""
    job = f"{sys.executable} -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'; exit $?"
    code, result = _run(home, "--max-attempts", "1", "--", "sh", "-c", job)
    assert code == 3
    assert (result["error_class"], result["rule"]) == ("resource", "killed-by-sigkill")
    assert (result["exit_code"], result["signal"]) == (137, "SIGKILL")


def test_a_bug_at_line_429_of_a_script_is_not_a_rate_limit(home: Path, tmp_path: Path) -> None:
    """A script whose traceback passes through lines 429 and 503 (and a `timeout=` argument) failed of a bug: it
    is not retried six times over minutes as a rate limit, nor as an outage or a timeout."""
    lines = [""] * 600
    lines[0] = "class ReportError(Exception): pass"
    lines[427:429] = ["def main():", "    fetch('http://x', timeout=30)"]  # line 429
    lines[501:503] = [
        "def fetch(url, timeout):",
        "    raise ReportError(\"column 'date' missing in sheet\")",
    ]  # line 503
    lines[599] = "main()"
    script = tmp_path / "report.py"
    script.write_text("\n".join(lines) + "\n")
    code, result = _run(home, "--max-attempts", "1", "--", sys.executable, str(script))
    assert code == 3
    assert result["reason"] == "exit 1: ReportError: column 'date' missing in sheet"
    assert result["error_class"] == "unknown"
