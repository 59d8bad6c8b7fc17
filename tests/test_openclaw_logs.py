"""Reading OpenClaw's own logs: the real fixture files from OpenClaw 2026.9.6."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from conftest import ROOT
from selfheal.observe import openclaw_logs as oc

FIXTURES = ROOT / "tests" / "fixtures" / "openclaw-logs"


def records(name: str) -> list[oc.Record]:
    found = list(oc.read_records([FIXTURES / name]))
    assert all(r is not None for r in found), f"{name}: a real OpenClaw line failed to parse"
    return [r for r in found if r is not None]


def test_every_line_of_the_real_logs_parses_with_its_level_and_subsystem() -> None:
    gateway = records("gateway-cron-agent-errors.jsonl")
    assert len(gateway) == 79
    levels = {r.level for r in gateway}
    assert {"INFO", "WARN", "ERROR"} <= levels
    assert {"cron", "diagnostic", "model-fallback/decision"} <= {r.subsystem for r in gateway}


def test_the_gateway_log_yields_one_cron_failure_two_lane_errors_one_exhausted_chain_one_cli_failure() -> None:
    found = oc.failures(records("gateway-cron-agent-errors.jsonl"))
    kinds = [f.kind for f in found]
    assert kinds.count(oc.CRON_FAILED) == 1  # logged twice for one run (same job, same trace)
    assert kinds.count(oc.LANE_ERROR) == 2  # the main lane and the session lane of one turn
    assert kinds.count(oc.FALLBACK_EXHAUSTED) == 1
    assert kinds.count(oc.CLI_FAILED) == 1
    cron = next(f for f in found if f.kind == oc.CRON_FAILED)
    assert cron.job == "oc-selfheal-health-fail" and cron.error == "command exited with code 1"
    assert "Connection refused" in str(cron.detail["diagnostics"])
    chain = next(f for f in found if f.kind == oc.FALLBACK_EXHAUSTED)
    assert (chain.model, chain.status, chain.reason, chain.fallback_configured) == (
        "openai/gpt-6-astra",
        401,
        "auth",
        False,
    )
    assert "no fallback models are configured" in chain.summary
    lane = next(f for f in found if f.kind == oc.LANE_ERROR)
    assert lane.error == "No route-compatible authentication source is configured for openai."
    assert lane.detail["lane"] == "main"


def test_skill_load_failures_are_found_with_the_file_and_the_reason() -> None:
    found = [f for f in oc.failures(records("cli-skills-commands.jsonl")) if f.kind == oc.SKILL_INVALID]
    assert [Path(str(f.detail["file"])).parent.name for f in found] == ["oc-broken", "oc-nodesc"]
    assert found[1].error == "description is required"


def test_lines_that_are_not_openclaw_lines_are_none_not_errors() -> None:
    for line in (b"", b"garbage", b"\xff\xfe\x00", b'{"no": "meta"}', b"[1, 2]", b'{"_meta": 5}', b"{" * 5000):
        assert oc.parse_line(line) is None


def test_discovery_finds_the_configured_file_and_gzipped_rotations(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".openclaw").mkdir(parents=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    (home / ".openclaw" / "openclaw.json").write_text(
        '// JSON5, as OpenClaw accepts\n{"logging": {"file": "' + str(logs) + '/oc.log",},}\n'
    )
    (logs / "oc.log").write_bytes((FIXTURES / "cli-day2.jsonl").read_bytes())
    with gzip.open(logs / "oc.log.1.gz", "wb") as fh:
        fh.write((FIXTURES / "cli-day1.jsonl").read_bytes())
    default_dir = tmp_path / "tmp-openclaw"
    default_dir.mkdir()
    (default_dir / "openclaw-2026-11-20.log").write_text("")
    found = oc.discover({"HOME": str(home)}, log_dir=default_dir)
    assert [p.name for p in found] == ["oc.log", "oc.log.1.gz", "openclaw-2026-11-20.log"]
    assert len([r for r in oc.read_records(found) if r is not None]) == 6 + 11
    assert oc.discover({"HOME": str(tmp_path / "nobody")}, log_dir=tmp_path / "none") == []


def test_timestamps_read_both_offset_forms() -> None:
    assert oc.timestamp("2026-11-21T00:04:51.782+00:00") == oc.timestamp("2026-11-21T00:04:51.782Z")
    assert oc.timestamp("yesterday") is None
    assert json.dumps(oc.timestamp("2026-11-21T00:00:00Z")) == "1795219200.0"
