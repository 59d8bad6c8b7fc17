"""Hostile logs for analyze_logs.py and the OpenClaw log reader: each test is an attack that once broke them.

Every one asserts what a user would see: the documented exit code, no traceback, a --json report that strict
JSON parsers read, and the figures the log really holds, on both fast paths (native and Python).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import call_script


def _strict_json(text: str) -> Any:
    """The report as a strict parser reads it: `Infinity` and `NaN` are not JSON (jq, JavaScript refuse them)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _analyze(home: Path, engine: str, *args: str) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(f"analysis:\n  engine: {engine}\n")
    return call_script("analyze_logs.py", *args, home=home)


@pytest.mark.parametrize("engine", ["native", "python"])
def test_durations_too_long_to_be_a_runs_are_untimed_not_a_crash_or_infinity(
    home: Path, tmp_path: Path, engine: str
) -> None:
    """`duration=<309 digits>s` twice made the Python fast path's math.fsum raise (a traceback, exit 1), and the
    native path and a ledger's `1e308` printed `"mean_s": Infinity`, which no strict JSON parser reads. Such a
    run now counts untimed on every path; the other runs keep their durations."""
    huge = "9" * 308
    log = tmp_path / "app.log"
    log.write_text(
        f"2026-06-10T03:00:00Z [SUCCESS] task=a duration={huge}s\n"
        f"2026-06-10T03:00:01Z [SUCCESS] task=a duration={huge}s\n"
        "2026-06-10T03:00:02Z [SUCCESS] task=a duration=1e999s\n"
        "2026-06-10T03:00:03Z [SUCCESS] task=a duration=4s\n"
        '{"ts": "2026-06-10T03:00:04Z", "event": "success", "task": "b", "duration_s": 1e308}\n'
        '{"ts": "2026-06-10T03:00:05Z", "event": "success", "task": "b", "duration_s": 1e308}\n'
        '{"ts": "2026-06-10T03:00:06Z", "event": "success", "task": "b", "duration_s": 6}\n'
    )
    proc = _analyze(home, engine, "--json", str(log))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    report = _strict_json(proc.stdout)
    assert report["engine"] == engine
    assert report["runs"]["succeeded"] == 7
    assert report["durations"] == {"timed_runs": 2, "mean_s": 5.0}
    assert {r["task"]: r["max_s"] for r in report["tasks"]["slowest"]} == {"a": 4.0, "b": 6.0}
    text = _analyze(home, engine, str(log))
    assert text.returncode == 0 and "Mean run time 5.0s over 2 successful runs" in text.stdout
