"""Reading OpenClaw's own logs: the real fixture files from OpenClaw 2026.9.6."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from selfheal.core.classify import Classifier
from selfheal.core.config import Config
from selfheal.heal.diagnose import gather_openclaw
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
    """Line by line: the cron run logged twice is one line's failure; both lanes of the turn are there."""
    found = oc.failures(records("gateway-cron-agent-errors.jsonl"))
    kinds = [f.kind for f in found]
    assert kinds.count(oc.CRON_FAILED) == 1  # logged twice for one run (same job, same trace)
    assert kinds.count(oc.LANE_ERROR) == 2  # the main lane and the session lane of one turn
    assert kinds.count(oc.FALLBACK_EXHAUSTED) == 1
    assert kinds.count(oc.CLI_FAILED) == 5  # the five lines of one failed command
    assert len(oc.summarize(found).cli) == 1
    cron = next(f for f in found if f.kind == oc.CRON_FAILED)
    assert cron.job == "oc-selfheal-health-fail" and cron.error == "command exited with code 1"
    assert "Connection refused" in str(cron.detail["diagnostics"])
    chain = next(f for f in found if f.kind == oc.FALLBACK_EXHAUSTED)
    assert [(s.model, s.status, s.reason) for s in chain.steps] == [("openai/gpt-6-astra", 401, "auth")]
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


def test_discovery_finds_openclaws_own_archives_of_the_configured_file(tmp_path: Path) -> None:
    """OpenClaw renames a full `logging.file` to `<stem>.1<.ext>` (logger.ts, rotatedLogPath), and a file named by
    a date rolls over to each day's: both were missed (only `oc.log*` was looked for), so the failures of every
    hour before the last rotation went unreported."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("oc.log", "oc.1.log", "oc.5.log", "oc.log.1.gz", "other.log", "oc-notes.txt"):
        (logs / name).write_text("")
    home = tmp_path / "home"
    (home / ".openclaw").mkdir(parents=True)
    conf = home / ".openclaw" / "openclaw.json"
    env = {"HOME": str(home), "TMPDIR": str(tmp_path / "no-tmp")}
    conf.write_text(json.dumps({"logging": {"file": str(logs / "oc.log")}}))
    found = oc.discover(env, log_dir=tmp_path / "none")
    assert [p.name for p in found] == ["oc.1.log", "oc.5.log", "oc.log", "oc.log.1.gz"]

    daily = tmp_path / "daily"
    daily.mkdir()
    for name in ("openclaw-2026-11-20.log", "openclaw-2026-11-21.log", "openclaw-2026-11-21.1.log", "x.log"):
        (daily / name).write_text("")
    conf.write_text(json.dumps({"logging": {"file": str(daily / "openclaw-2026-01-01.log")}}))
    found = oc.discover(env, log_dir=tmp_path / "none")
    assert [p.name for p in found] == [
        "openclaw-2026-11-20.log",
        "openclaw-2026-11-21.1.log",
        "openclaw-2026-11-21.log",
    ]


def test_discovery_reads_the_folder_openclaw_writes_to_not_a_planted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenClaw writes to /tmp/openclaw only if it is its user's folder, not a link, that no one else can write;
    else to `$TMPDIR/openclaw-<uid>`. Another user's /tmp/openclaw (planted logs of failures that never were)
    was read, and the fallback folder, where OpenClaw's logs then are, never."""
    preferred, tmp = tmp_path / "openclaw", tmp_path / "tmp"
    monkeypatch.setitem(oc.log_folders.__kwdefaults__, "preferred", preferred)
    preferred.mkdir()
    (preferred / "openclaw-2026-11-21.log").write_text("")
    fallback = tmp / f"openclaw-{os.getuid()}"
    fallback.mkdir(parents=True)
    (fallback / "openclaw-2026-11-22.log").write_text("")
    env = {"HOME": str(tmp_path / "nobody"), "TMPDIR": f"{tmp}/"}

    def names() -> list[str]:
        return [p.name for p in oc.discover(env)]

    assert names() == ["openclaw-2026-11-21.log", "openclaw-2026-11-22.log"]
    preferred.chmod(0o777)  # a folder others can write to: OpenClaw does not use it
    assert names() == ["openclaw-2026-11-22.log"]
    assert oc.discover(env, log_dir=preferred) == []
    preferred.chmod(0o700)
    preferred.rename(tmp_path / "planted")
    preferred.symlink_to(tmp_path / "planted")  # a link: OpenClaw does not follow it
    assert names() == ["openclaw-2026-11-22.log"]


def test_timestamps_read_both_offset_forms() -> None:
    assert oc.timestamp("2026-11-21T00:04:51.782+00:00") == oc.timestamp("2026-11-21T00:04:51.782Z")
    assert oc.timestamp("yesterday") is None
    assert json.dumps(oc.timestamp("2026-11-21T00:00:00Z")) == "1795219200.0"


# -- from lines to failures: turns, chains, cron jobs -------------------------------------------------------------

FAILURES = ROOT / "tests" / "fixtures" / "openclaw-failures" / "agent-chains-cron.jsonl"


def summary() -> oc.Summary:
    found = [r for r in oc.read_records([FAILURES]) if r is not None]
    return oc.summarize(oc.failures(found))


def test_a_failed_turn_counts_once_though_each_of_its_lanes_logs_it() -> None:
    """10 lane error lines (a turn's own lane and its session lane) are 5 failed turns."""
    s = summary()
    assert (len(s.turns), s.lane_lines) == (5, 10)
    assert [t.lanes for t in s.turns][:1] == [["main", "session:agent:main:main"]]
    assert summary().turns == oc.summarize(reversed(oc.failures(r for r in oc.read_records([FAILURES]) if r))).turns


def test_an_exhausted_chain_names_every_model_tried_with_its_own_status_and_reason() -> None:
    """The 402 came from the fallback, not the primary: each step keeps its model, status and reason."""
    chains = summary().chains
    assert len(chains) == 3
    assert [(s.model, s.status, s.reason) for s in chains[0].steps] == [
        ("vllm/qwen3-4b", 429, "rate_limit"),
        ("backup/qwen-0.5b", 402, "rate_limit"),
    ]
    assert "vllm/qwen3-4b (rate_limit, status 429), backup/qwen-0.5b (rate_limit, status 402)" in chains[0].summary


def lane_error(lane: str, at: str, error: str, *, duration_ms: int, full_argument: bool = True) -> oc.Record:
    """A `lane task error` line as OpenClaw's file logger writes it (logger.ts): the error between quotes, not
    escaped; `message` cut at 4096 characters with `...(truncated)`, the argument `"2"` whole."""
    text = f'lane task error: lane={lane} durationMs={duration_ms} error="{error}"'
    message = text if len(text) <= 4096 else text[:4096] + oc.TRUNCATED
    obj: dict[str, Any] = {
        "0": '{"subsystem":"diagnostic"}',
        "1": {"errorName": "Error"},
        "_meta": {"logLevelName": "ERROR", "name": '{"subsystem":"diagnostic"}', "parentNames": ["openclaw"]},
        "time": at,
        "message": message,
    }
    if full_argument:
        obj["2"] = text
    record = oc.parse(json.loads(json.dumps(obj)))
    assert record is not None
    return record


@pytest.mark.parametrize("full_argument", [True, False], ids=["argument-kept", "message-only"])
def test_a_lane_errors_text_is_read_whole_though_it_holds_quotes_or_was_cut(full_argument: bool) -> None:
    """OpenClaw writes the error between quotes without escaping it: a provider's JSON body (`400 {"type":...}`)
    was read as `400 {`, and a message cut at 4096 characters as its first word less a letter. Each turn's two
    lanes still make one turn, though each lane's message is cut at its own length."""
    body = '400 {"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}'
    page = "502 Bad Gateway: <html>" + "upstream connect error " * 300 + "</html>"
    lines = []
    for i, error in enumerate((body, page)):
        for lane, ms in (("main", 400), ("session:agent:main:main", 450)):
            lines.append(
                lane_error(
                    lane, f"2026-11-21T00:0{i}:51.{ms}+00:00", error, duration_ms=ms, full_argument=full_argument
                )
            )
    s = oc.summarize(oc.failures(lines))
    assert (len(s.turns), s.lane_lines) == (2, 4)
    assert s.turns[0].error == body and s.turns[0].lanes == ["main", "session:agent:main:main"]
    if full_argument:
        assert s.turns[1].error == page
    else:  # as much of it as OpenClaw kept
        assert s.turns[1].error.startswith("502 Bad Gateway: <html>upstream connect error")
        assert s.turns[1].error.endswith(oc.TRUNCATED) and len(s.turns[1].error) > 4000


def test_a_402_quota_is_fatal_though_openclaw_calls_it_a_rate_limit(config: Config) -> None:
    classifier = Classifier(config.classify)
    quota, rate = summary().chains[0].steps[1], summary().chains[0].steps[0]
    assert oc.error_class(classifier, quota.error, quota.status, quota.reason) == "fatal"
    assert oc.error_class(classifier, rate.error, rate.status, rate.reason) == "rate_limit"
    assert oc.error_class(classifier, "something odd", None, "billing") == "fatal"  # OpenClaw's word, when ours fail
    assert oc.error_class(classifier, "something odd", None, None) is None


def test_a_chain_that_had_fallbacks_but_tried_one_model_is_found() -> None:
    single = summary().single_model_chains()
    assert [c.model for c in single] == ["openai/gpt-6-astra"]
    assert "fallbacks are configured but only one model was tried" in single[0].summary


def test_failed_cron_runs_are_counted_per_job_with_first_last_and_openclaws_diagnosis() -> None:
    jobs = {j.job: j for j in summary().cron}
    nightly = jobs["nightly-report"]
    assert (nightly.runs, nightly.first, nightly.last) == (
        3,
        "2026-11-22T09:40:00.000+00:00",
        "2026-11-22T10:20:00.000+00:00",
    )
    assert nightly.errors == {"command exited with code 2": 3}
    assert "nightly_report.py': [Errno 2] No such file or directory" in str(nightly.diagnostics)
    assert jobs["oc-selfheal-health-fail"].runs == 1
    assert summary().cron_runs == 4


def test_earlier_steps_come_from_next_fallback_lines_when_previous_attempts_is_missing() -> None:
    """Older OpenClaw lines carry no previousAttempts: the run's `next_fallback` decisions give the first steps."""
    lines = []
    for r in oc.read_records([FAILURES]):
        assert r is not None
        data = {k: v for k, v in r.data.items() if k != "previousAttempts"}
        lines.append(oc.Record(r.time, r.level, r.subsystem, r.message, data))
    chain = oc.summarize(oc.failures(lines)).chains[0]
    assert [s.model for s in chain.steps] == ["vllm/qwen3-4b", "backup/qwen-0.5b"]


# -- every ERROR line: failed CLI commands and errors of no known kind ------------------------------------------


def error_lines(name: str) -> list[dict[str, Any]]:
    """The ERROR and FATAL lines of a fixture, read straight from its JSON."""
    lines = [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]
    return [o for o in lines if o["_meta"]["logLevelName"] in ("ERROR", "FATAL")]


def test_every_error_line_of_the_real_logs_is_a_lane_error_a_cli_line_or_an_other_error() -> None:
    """Counted from the JSON itself: no ERROR line of any fixture is lost (11 in all, 7 of them the CLI's)."""
    total = 0
    for path in sorted(FIXTURES.glob("*.jsonl")):
        expected = error_lines(path.name)
        s = oc.summarize(oc.failures(records(path.name)))
        assert s.lane_lines + s.cli_lines + len(s.errors) == len(expected), path.name
        console = [o["message"] for o in expected if o["_meta"]["path"]["method"].startswith("console.")]
        assert [m for c in s.cli for m in c.detail["messages"]] == console, path.name
        total += len(expected)
    assert total == 11


def test_a_cli_commands_own_error_is_a_failed_command_with_its_message() -> None:
    """`openclaw skills install` prints its error on its own (no `[openclaw] Reason:` line): still a failure."""
    day1 = oc.summarize(oc.failures(records("cli-day1.jsonl")))
    assert [c.error for c in day1.cli] == [
        "Skill already exists at /home/agent/.openclaw/workspace/skills/oc-testskill. Re-run with force/update.",
        "archive is missing SKILL.md",
    ]
    skills = oc.summarize(oc.failures(records("cli-skills-commands.jsonl")))
    assert [c.error for c in skills.cli] == [
        "Unsupported git skill spec: git:/home/agent/testrepo2",
        "archive is missing SKILL.md",
    ]
    assert all(r.console for r in records("cli-day1.jsonl"))  # the CLI's console, forwarded to the log


def test_openclaws_five_line_banner_is_one_failed_command_named_by_its_reason() -> None:
    """The CLI command failed / Reason / Debug / Try / Help, within 4 ms: one command, its error the reason."""
    s = oc.summarize(oc.failures(records("gateway-cron-agent-errors.jsonl")))
    assert (len(s.cli), s.cli_lines, s.errors) == (1, 5, [])
    assert s.cli[0].error == "No route-compatible authentication source is configured for openai."
    assert s.cli[0].detail["messages"][0] == "[openclaw] The CLI command failed."
    assert s.cli[0].detail["messages"][-1] == "[openclaw] Help: openclaw --help"


def other_error(message: str, level: str = "ERROR", **data: Any) -> dict[str, Any]:
    """A subsystem's ERROR line as OpenClaw writes it (tslog), of no kind self-heal knows."""
    return {
        "0": '{"subsystem":"gateway/ws"}',
        "1": data,
        "2": message,
        "_meta": {
            "logLevelName": level,
            "name": '{"subsystem":"gateway/ws"}',
            "parentNames": ["openclaw"],
            "path": {"method": "logToFile"},
        },
        "time": "2026-11-21T00:06:00.000+00:00",
        "message": message,
    }


def test_an_error_line_of_no_known_kind_is_kept_with_its_text() -> None:
    lines = [
        oc.parse(other_error("plugin registry entry vanished", error="weather-kit")),
        oc.parse(other_error("gateway state lost", level="FATAL")),
        oc.parse({**other_error("all fine"), "_meta": {"logLevelName": "INFO"}}),
    ]
    s = oc.summarize(oc.failures(r for r in lines if r is not None))
    assert [(f.kind, f.error, f.detail["subsystem"]) for f in s.errors] == [
        (oc.OTHER_ERROR, "plugin registry entry vanished: weather-kit", "gateway/ws"),
        (oc.OTHER_ERROR, "gateway state lost", "gateway/ws"),
    ]
    assert (s.cli, s.turns, s.cron) == ([], [], [])


def test_failed_cli_commands_of_the_real_logs_become_evidence_for_fix_records(config: Config) -> None:
    """`self_heal.py --from-openclaw-logs`: one cli_failed evidence per failed command, with its message."""
    found, lines, _ = gather_openclaw([FIXTURES / "cli-day1.jsonl"], config=config)
    assert lines == 11
    assert [(e.task, e.kind, e.error) for e in found] == [
        (
            "openclaw-cli",
            oc.CLI_FAILED,
            "Skill already exists at /home/agent/.openclaw/workspace/skills/oc-testskill. Re-run with force/update.",
        ),
        ("openclaw-cli", oc.CLI_FAILED, "archive is missing SKILL.md"),
    ]
    gateway = gather_openclaw([FIXTURES / "gateway-cron-agent-errors.jsonl"], config=config)[0]
    assert [e.error for e in gateway if e.kind == oc.CLI_FAILED] == [
        "No route-compatible authentication source is configured for openai."
    ]
