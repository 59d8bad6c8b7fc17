"""Log analysis: every input format counted exactly, bad input survived, the alert rules, the script's contract.

Logs with known counts are generated here from a seed, next to the counts they must give; the OpenClaw
fixtures are the real files of OpenClaw 2026.9.6 in tests/fixtures/openclaw-logs.
"""

from __future__ import annotations

import calendar
import dataclasses
import gzip
import io
import json
import math
import os
import random
import re
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.loglines import fuzz_line

from conftest import PYTHON, ROOT, SCRIPTS, call_script, imported_by, script_env
from selfheal.core.classify import Failure, classify_error
from selfheal.core.config import Config, load_config
from selfheal.core.ledger import Ledger
from selfheal.errors import UsageError
from selfheal.observe import logscan, native
from selfheal.observe.logreport import analyze, parse_when, render_text, scan_engine
from selfheal.observe.logscan import InputError, Window, iter_blocks, parse_time, range_regex, signature
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock

FIXTURES = ROOT / "tests" / "fixtures" / "openclaw-logs"
GATEWAY = FIXTURES / "gateway-cron-agent-errors.jsonl"
ANALYZE = str(SCRIPTS / "analyze_logs.py")
T0 = calendar.timegm((2026, 6, 10, 0, 0, 0, 0, 0, 0))
LATER = T0 + 365 * 86400  # "now" for logs that are all in the past
MODELS = ("Qwen3-4B", "Qwen1.5-0.5B", "Phi-3-mini")
REASONS = ("timeout", "format_error", "oom", "transient", "rate_limit", "auth")


def iso(ts: float, zone: str = "Z") -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + zone


# --- a seed-format log with known counts -----------------------------------------------------------------------


@dataclass
class Expected:
    lines: int = 0
    events: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # of [RETRY] and [FAILED], as the documents count
    retries: Counter[str] = field(default_factory=Counter)
    durations: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    models: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    trips: Counter[int] = field(default_factory=Counter)  # per clock hour
    fallbacks: int = 0


def seed_log(seed: int, runs: int, *, zone: str = "Z", start: int = T0) -> tuple[list[str], Expected]:
    """Runs of the first source document's kind: retries, then a success or a failure; fallbacks, breakers."""
    rng = random.Random(seed)
    out: list[str] = []
    exp = Expected()
    t = start

    def emit(line: str, event: str) -> None:
        out.append(line)
        exp.lines += 1
        exp.events[event] += 1

    for _ in range(runs):
        task = f"doc-gen-{rng.randint(1, 40)}"
        model = rng.choice(MODELS)
        for attempt in range(1, 4):
            t += rng.randint(1, 9)
            ts = iso(t, zone)
            reason = rng.choice(REASONS)
            if attempt < 3 and rng.random() < 0.3:
                emit(f"{ts} [RETRY] task={task} model={model} reason={reason} attempt={attempt}/3 delay=5s", "retry")
                exp.reasons[reason] += 1
                exp.retries[task] += 1
                exp.models[model]["retry"] += 1
                continue
            if rng.random() < 0.12:
                emit(f"{ts} [FAILED] task={task} reason={reason} attempts={attempt}", "failed")
                exp.reasons[reason] += 1
            else:
                duration = round(rng.uniform(0.5, 95), rng.choice((0, 1, 2)))
                tokens = rng.randint(100, 3000)
                emit(f"{ts} [SUCCESS] task={task} duration={duration:g}s tokens={tokens}", "success")
                exp.durations[task].append(float(f"{duration:g}"))
            break
        if rng.random() < 0.05:
            t += 1
            emit(f"{iso(t, zone)} [FALLBACK] task={task} target=qwen3-4b model=Qwen3-4B reason=transient", "fallback")
            exp.models["Qwen3-4B"]["fallback"] += 1
            exp.fallbacks += 1
        if rng.random() < 0.03:
            t += 1
            state = rng.choice(("open", "open", "half_open", "closed"))
            detail = '"5 consecutive failures (transient)"'
            emit(
                f"{iso(t, zone)} [BREAKER] task=- target=qwen3-4b state={state} reason=transient detail={detail}",
                "breaker",
            )
            if state == "open":
                exp.trips[t // 3600] += 1
    return out, exp


def write(path: Path, lines: list[str], *, end: str = "\n") -> Path:
    path.write_text("".join(line + end for line in lines), encoding="utf-8")
    return path


def report_of(*paths: Path | str, config: Config | None = None, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("now", LATER)
    return analyze([str(p) for p in paths], config=config or load_config(), **kwargs)


def with_analysis(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, analysis=dataclasses.replace(config.analysis, **changes))


def check_counts(report: dict[str, Any], exp: Expected) -> None:
    """Every figure of a seed-format log against what the generator wrote."""
    assert report["lines"]["total"] == exp.lines
    assert report["lines"]["malformed"] == 0
    assert report["events"] == dict(exp.events)
    assert {r["reason"]: r["count"] for r in report["failure_reasons"]} == dict(exp.reasons)
    assert report["failure_reasons_total"] == sum(exp.reasons.values())
    assert report["runs"]["finished"] == exp.events["success"] + exp.events["failed"]
    assert report["fallback"]["events"] == exp.fallbacks
    most = sorted(exp.retries.items(), key=lambda kv: (-kv[1], kv[0]))[:10]  # ties by name
    assert [(r["task"], r["retries"]) for r in report["tasks"]["most_retried"]] == most
    means = {task: math.fsum(v) / len(v) for task, v in exp.durations.items()}
    slowest = sorted(means.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [r["task"] for r in report["tasks"]["slowest"]] == [task for task, _ in slowest]
    for row, (_, mean) in zip(report["tasks"]["slowest"], slowest, strict=True):
        assert row["mean_s"] == pytest.approx(mean, abs=6e-4)  # the report rounds to milliseconds
    assert {r["model"]: r["retry"] for r in report["models"]} == {m: c["retry"] for m, c in exp.models.items()}
    assert report["breakers"]["trips"] == sum(exp.trips.values())
    assert report["breakers"]["max_per_hour"] == max(exp.trips.values(), default=0)


# --- the formats, counted exactly --------------------------------------------------------------------------------


def test_a_generated_seed_log_is_counted_exactly(tmp_path: Path) -> None:
    """Every figure of a seed-format log with known counts: events, reasons, tasks, durations, models, breakers."""
    lines, exp = seed_log(1, 3000)
    check_counts(report_of(write(tmp_path / "a.log", lines)), exp)


@pytest.mark.parametrize("zone", ["Z", "", ".250Z"], ids=["skill-log", "source-documents", "millis"])
def test_timestamps_with_or_without_a_zone_are_read_the_same(tmp_path: Path, zone: str) -> None:
    """The skill's `...Z` lines and the documents' zone-less ones (UTC) give the same counts."""
    lines, exp = seed_log(2, 800, zone=zone)
    check_counts(report_of(write(tmp_path / "a.log", lines)), exp)


def test_crlf_line_ends_and_a_missing_final_newline_change_nothing(tmp_path: Path) -> None:
    lines, exp = seed_log(3, 500)
    path = tmp_path / "a.log"
    path.write_bytes("\r\n".join(lines).encode())  # no newline after the last line
    check_counts(report_of(path), exp)


def test_a_gzipped_log_gives_the_same_report_as_the_plain_one(tmp_path: Path) -> None:
    lines, exp = seed_log(4, 1500)
    plain = write(tmp_path / "a.log", lines)
    with gzip.open(tmp_path / "a.log.gz", "wb") as fh:
        fh.write(plain.read_bytes())
    zipped = report_of(tmp_path / "a.log.gz")
    check_counts(zipped, exp)
    assert zipped["events"] == report_of(plain)["events"]


@pytest.mark.parametrize("engine", ["python", "native"])
def test_small_blocks_and_key_folds_do_not_change_any_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """Blocks of a few lines and a fold of the pending keys every few lines: the same exact figures, with either
    fast path (the report says which read the lines)."""
    lines, exp = seed_log(5, 1200)
    path = write(tmp_path / "a.log", lines)
    monkeypatch.setattr(logscan, "_MAX_KEYS", 7)
    monkeypatch.setattr(logscan, "_MAX_DURATIONS", 5)
    monkeypatch.setitem(logscan.iter_blocks.__kwdefaults__, "block_bytes", 512)
    blocks: list[int] = []
    folds: list[int] = []
    real_blocks, real_fold = logscan.iter_blocks, logscan.Tally.fold
    monkeypatch.setattr(logscan, "iter_blocks", lambda *a, **k: (blocks.append(1) or b for b in real_blocks(*a, **k)))
    monkeypatch.setattr(logscan.Tally, "fold", lambda self: folds.append(1) or real_fold(self))
    report = report_of(path, config=with_analysis(load_config(), max_line_bytes=512, engine=engine))
    check_counts(report, exp)
    assert report["engine"] == engine
    assert len(blocks) > 100  # blocks of about 512 to 1024 bytes: a few lines each
    assert len(folds) > 50  # the pending keys folded every few blocks


def info_heavy(seed: int, runs: int) -> tuple[list[str], Expected, Counter[str]]:
    """A seed log with untracked lines between its events (55% of lines, as in a real gateway log)."""
    lines, exp = seed_log(seed, runs)
    rng = random.Random(seed)
    out: list[str] = []
    tags: Counter[str] = Counter()
    for line in lines:
        ts = line.split(" ", 1)[0]
        while rng.random() < 0.55:
            tag = rng.choice(("INFO", "INFO", "DEBUG", "WARN", "NOTICE_X"))
            body = rng.choice(
                (
                    " task=doc-gen-1 model=Qwen3-4B reason=timeout msg=calling",
                    ' endpoint=http://127.0.0.1:8000/v1 note="a quoted value" duration=3.5s',
                    " duration=1.5s",
                    "",
                )
            )
            out.append(f"{ts} [{tag}]{body}")
            tags[tag] += 1
        out.append(line)
    exp.lines = len(out)
    return out, exp, tags


def test_untracked_tags_are_counted_on_the_fast_path_without_reading_a_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[INFO], [DEBUG], [WARN] lines are counted by tag and never parsed: the careful path is not reached."""
    lines, exp, tags = info_heavy(21, 600)
    path = write(tmp_path / "info.log", lines)
    careful: list[bytes] = []
    real = logscan.Tally.add_line
    monkeypatch.setattr(logscan.Tally, "add_line", lambda self, raw, info: careful.append(raw) or real(self, raw, info))
    report = report_of(path)
    check_counts(report, exp)
    assert report["other_tags"] == dict(tags)
    assert not [line for line in careful if re.search(rb"\[(INFO|DEBUG|WARN|NOTICE_X)\]", line)]


def test_untracked_tags_outside_the_window_are_outside() -> None:
    text = f"{iso(T0)} [INFO] a\n{iso(T0 + 7200)} [INFO] b\n{iso(T0 + 7200)} [DEBUG]\n"
    tally = logscan.Tally(load_config().analysis, load_config().classify, Window(since=T0 + 3600))
    scan = logscan.Scan(tally, logscan.fast_pattern(Window(since=T0 + 3600)), 1 << 20)
    scan.read_stream(io.BytesIO(text.encode()), logscan.InputInfo("x", "explicit"))
    tally.fold()
    assert (tally.lines, tally.outside, dict(tally.other_tags)) == (3, 1, {"INFO": 1, "DEBUG": 1})


def test_the_gateway_fixture_gives_its_known_failures() -> None:
    """1 failed cron run (logged twice), 1 failed turn (2 lane error lines), 1 exhausted chain, 7 ERROR lines."""
    report = report_of(GATEWAY)
    oc = report["openclaw"]
    assert (oc["cron_failed"], oc["failed_turns"], oc["fallback_exhausted"], oc["cli_failed"]) == (1, 1, 1, 1)
    assert oc["lane_error_lines"] == 2
    assert oc["skill_invalid"] == 0
    assert oc["levels"]["ERROR"] == 7
    assert oc["lines"] == report["lines"]["total"] == 79
    assert report["lines"]["malformed"] == 0
    chain = oc["chains"][0]
    assert chain["fallback_configured"] is False
    assert [(m["model"], m["status"], m["error_class"]) for m in chain["models"]] == [
        ("openai/gpt-6-astra", 401, "auth")
    ]
    assert oc["turns"][0]["chain"] == chain  # the turn's lane errors and its chain are one failure
    assert oc["cron_jobs"][0]["job"] == "oc-selfheal-health-fail"


def test_every_openclaw_fixture_is_read_without_a_malformed_line() -> None:
    report = report_of(*sorted(FIXTURES.glob("*.jsonl")))
    assert report["lines"]["total"] == report["openclaw"]["lines"] == 79 + 11 + 6 + 13
    assert report["lines"]["malformed"] == 0
    assert report["openclaw"]["skill_invalid"] == 2  # oc-broken and oc-nodesc in the skills commands log
    assert [i["lines"] for i in report["inputs"]] == [11, 6, 13, 79]  # cli-day1, cli-day2, cli-skills, gateway


def test_every_openclaw_error_line_is_counted_where_a_person_sees_it() -> None:
    """Per fixture, the ERROR lines of the JSON itself: each is a lane error line, a failed CLI command's line or
    an other error; each failed command is listed with its message, and its error is in the text report."""
    cli_failed = {"cli-day1.jsonl": 2, "cli-day2.jsonl": 0, "cli-skills-commands.jsonl": 2, GATEWAY.name: 1}
    for path in sorted(FIXTURES.glob("*.jsonl")):
        objs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        errors = [o for o in objs if o["_meta"]["logLevelName"] in ("ERROR", "FATAL")]
        report = report_of(path)
        oc = report["openclaw"]
        assert oc["lane_error_lines"] + oc["cli_error_lines"] + oc["other_errors"] == len(errors), path.name
        assert oc["cli_failed"] == len(oc["cli"]) == cli_failed[path.name], path.name
        shown = [line for c in oc["cli"] for line in c["lines"]]
        lanes = [o["message"] for o in errors if o["message"].startswith("lane task error")]
        assert sorted(shown + lanes) == sorted(o["message"] for o in errors), path.name
        text = render_text(report)
        assert all(f"CLI command failed {c['time']}: {c['error']}" in text for c in oc["cli"]), path.name
    day1 = report_of(FIXTURES / "cli-day1.jsonl")
    assert [c["error"] for c in day1["openclaw"]["cli"]][1] == "archive is missing SKILL.md"
    assert "archive is missing SKILL.md" in {row["signature"] for row in day1["unclassified"]["signatures"]}


def test_an_openclaw_error_line_of_no_known_kind_goes_to_unclassified_with_its_text(tmp_path: Path) -> None:
    def line(message: str, error: str) -> str:
        return json.dumps(
            {
                "0": '{"subsystem":"gateway/ws"}',
                "1": {"error": error},
                "2": message,
                "_meta": {"logLevelName": "ERROR", "name": '{"subsystem":"gateway/ws"}', "parentNames": ["openclaw"]},
                "time": "2026-11-21T00:06:00.000+00:00",
                "message": message,
            }
        )

    path = write(
        tmp_path / "oc.log",
        [line("plugin registry entry vanished", "weather-kit"), line("upstream failed", "connect ECONNREFUSED")],
    )
    report = report_of(path)
    oc = report["openclaw"]
    assert (oc["other_errors"], oc["cli_failed"], oc["failed_turns"]) == (2, 0, 0)
    assert [(e["subsystem"], e["error"]) for e in oc["errors"]] == [
        ("gateway/ws", "plugin registry entry vanished: weather-kit"),
        ("gateway/ws", "upstream failed: connect ECONNREFUSED"),
    ]
    rows = {row["signature"]: row for row in report["unclassified"]["signatures"]}
    assert list(rows) == ["plugin registry entry vanished: weather-kit"]  # a rule reads the refused connection
    assert rows["plugin registry entry vanished: weather-kit"]["sources"] == ["openclaw"]
    assert report["unclassified"]["count"] == 1
    assert "error 2026-11-21T00:06:00.000+00:00 (gateway/ws): plugin registry entry vanished" in render_text(report)


def test_openclaw_lines_mixed_into_a_seed_log_are_still_found(tmp_path: Path) -> None:
    """Detection is per line: one file holding both formats gives both sets of figures."""
    lines, exp = seed_log(6, 400)
    gateway = GATEWAY.read_text().splitlines()
    mixed = lines[:200] + gateway + lines[200:]
    report = report_of(write(tmp_path / "mixed.log", mixed))
    assert report["events"] == dict(exp.events)
    assert report["openclaw"]["cron_failed"] == 1 and report["openclaw"]["failed_turns"] == 1


def test_ledger_events_are_read_and_the_log_of_the_same_state_is_not_counted_twice(
    state: StateRoot, config: Config, clock: FakeClock, tmp_path: Path
) -> None:
    """Default inputs: the ledger, not the log beside it (the same events); the log when there is no ledger."""
    clock._wall = T0 + 3600
    ledger = Ledger(state, config, clock=clock)
    for i in range(6):
        ledger.record("retry", task="nightly", target="vendor", error_class="timeout", reason="timed out", attempt=1)
        clock.advance(10)
        ledger.record("success", task="nightly", target="vendor", duration_s=12.5 + i, attempt=2)
        clock.advance(10)
    ledger.record("failed", task="nightly", target="vendor", error_class="auth", reason="HTTP 401", attempt=1)
    ledger.record("breaker", target="vendor", status="open", error_class="auth", reason="a refused key")
    empty = tmp_path / "no-openclaw"
    kwargs: dict[str, Any] = {"config": config, "state": state, "now": T0 + 7200, "openclaw_dir": empty}
    from_ledger = analyze(None, env={"HOME": str(tmp_path)}, **kwargs)
    assert [i["source"] for i in from_ledger["inputs"]] == ["ledger"]
    assert from_ledger["events"] == {"success": 6, "retry": 6, "breaker": 1, "failed": 1}
    assert from_ledger["tasks"]["slowest"][0] == {"task": "nightly", "runs": 6, "mean_s": 15.0, "max_s": 17.5}
    assert from_ledger["breakers"]["trips"] == 1
    for path in state.sub("ledger").iterdir():
        path.unlink()
    from_log = analyze(None, env={"HOME": str(tmp_path)}, **kwargs)
    assert [i["source"] for i in from_log["inputs"]] == ["log"]
    for key in ("events", "failure_reasons", "runs", "tasks", "breakers"):
        assert from_log[key] == from_ledger[key], key


def test_a_link_planted_in_the_ledger_or_the_skills_log_is_not_followed(
    state: StateRoot, config: Config, tmp_path: Path
) -> None:
    """The ledger's day files and logs/selfheal.log* are state files: a symbolic link planted there is reported in
    `inputs` and not read (analyze_logs.py followed it out of the state root and counted what it pointed at)."""
    outside = tmp_path / "outside.jsonl"
    event = {"ts": iso(T0), "event": "failed", "task": "planted", "error_class": "unknown", "reason": "LEAKED"}
    outside.write_text(json.dumps(event) + "\n", encoding="utf-8")
    kwargs: dict[str, Any] = {"config": config, "state": state, "env": {"HOME": str(tmp_path)}, "now": T0 + 60}
    kwargs["openclaw_dir"] = tmp_path / "none"
    ledger = state.sub("ledger")
    ledger.mkdir(exist_ok=True)
    (ledger / "2026-06-10.jsonl").symlink_to(outside)
    report = analyze(None, **kwargs)
    assert report["events"] == {} and "LEAKED" not in json.dumps(report)
    assert [(i["source"], "symbolic link" in (i.get("error") or "")) for i in report["inputs"]] == [("ledger", True)]
    (ledger / "2026-06-10.jsonl").unlink()
    ledger.rmdir()
    logs = state.sub("logs")
    logs.mkdir(exist_ok=True)
    (logs / "selfheal.log.1").symlink_to(write(tmp_path / "outside.log", runs("planted", "ff")))
    report = analyze(None, **kwargs)
    assert report["events"] == {} and "planted" not in json.dumps(report["tasks"])
    assert [(i["source"], "symbolic link" in (i.get("error") or "")) for i in report["inputs"]] == [("log", True)]


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_utf8_byte_order_mark_does_not_cost_the_first_line(tmp_path: Path, engine: str) -> None:
    """A log saved by an editor that starts it with a BOM (Windows Notepad, PowerShell's Out-File) read its first
    line as malformed: its event was lost. The BOM is no part of the first line, on every path."""
    config = with_analysis(load_config(), engine=engine)
    bom = "\ufeff"
    seed = write(tmp_path / "seed.log", [bom + runs("t", "f")[0], *runs("t", "s", start=T0 + 1)], end="\r\n")
    event = {"ts": iso(T0), "event": "failed", "task": "t", "error_class": "timeout", "status": "failed"}
    ledger = write(tmp_path / "ledger.jsonl", [bom + json.dumps(event)])
    for path in (seed, ledger):
        report = report_of(path, config=config)
        assert report["lines"]["malformed"] == 0, path.name
        assert report["events"]["failed"] == 1, path.name
        assert report["inputs"][0]["first"] == iso(T0), path.name
    gz = tmp_path / "seed.log.gz"
    gz.write_bytes(gzip.compress(seed.read_bytes()))
    assert report_of(gz, config=config)["events"] == {"failed": 1, "success": 1}


def test_default_inputs_cover_the_last_day_unless_told_otherwise(
    state: StateRoot, config: Config, clock: FakeClock, tmp_path: Path
) -> None:
    clock._wall = T0
    ledger = Ledger(state, config, clock=clock)
    ledger.record("success", task="old", duration_s=1.0)
    clock.advance(3 * 86400)
    ledger.record("success", task="new", duration_s=1.0)
    kwargs: dict[str, Any] = {"config": config, "state": state, "env": {"HOME": str(tmp_path)}}
    kwargs["openclaw_dir"] = tmp_path / "none"
    recent = analyze(None, now=T0 + 3 * 86400 + 60, **kwargs)
    assert recent["events"] == {"success": 1} and recent["tasks"]["slowest"][0]["task"] == "new"
    everything = analyze(None, now=T0 + 3 * 86400 + 60, since=None, default_since=False, **kwargs)
    assert everything["events"] == {"success": 2}


# --- the time window -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("2026-06-10T00:00:00", "2026-06-10T00:00:10"),
        ("2019-12-31T23:59:59", "2020-01-01T00:00:01"),
        ("2026-09-30T09:59:59", "2026-10-01T10:00:00"),
        ("2026-06-10T00:00:05", None),
        (None, "2026-06-10T00:00:05"),
    ],
)
def test_the_window_regex_agrees_with_comparing_seconds(since: str | None, until: str | None) -> None:
    """The C-level window and a plain comparison of seconds agree at every second around the bounds."""
    lo = int(parse_time(since)) if since else None
    hi = int(parse_time(until)) if until else None
    pattern = re.compile(range_regex(lo, hi) or "")
    probes = {t + d for t in (lo, hi) if t is not None for d in range(-3, 4)}
    probes |= {t + d for t in (lo, hi) if t is not None for d in (-86400, -3600, 3600, 86400 * 40)}
    for ts in sorted(probes):
        text = iso(ts, "")
        inside = (lo is None or ts >= lo) and (hi is None or ts < hi)
        assert bool(pattern.match(text)) == inside, (text, since, until)
        assert bool(pattern.match(text.replace("T", " "))) == inside


def test_since_and_until_count_lines_to_the_second_on_both_paths(tmp_path: Path) -> None:
    """Lines on each side of both bounds, read by the fast path (UTC) and the careful path (+02:00, [BREAKER])."""
    lines = []
    for offset in (-1, 0, 1, 98, 99, 100):
        t = T0 + offset
        lines.append(f"{iso(t)} [RETRY] task=a model=m reason=timeout attempt=1/3")
        local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t + 7200)) + "+02:00"
        lines.append(f"{local} [FAILED] task=b reason=auth attempts=1")
        lines.append(f"{iso(t)} [BREAKER] task=- target=t state=open reason=auth")
        lines.append(json.dumps({"ts": iso(t).replace("Z", ".000Z"), "event": "success", "task": "c", "duration_s": 2}))
    report = report_of(write(tmp_path / "a.log", lines), since=T0, until=T0 + 100)
    assert report["events"] == {"retry": 4, "failed": 4, "breaker": 4, "success": 4}
    assert report["lines"]["outside_window"] == 8
    assert report["lines"]["malformed"] == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", LATER - 86400),
        ("30m", LATER - 1800),
        ("7d", LATER - 7 * 86400),
        ("90", LATER - 90),
        ("2026-06-10", T0),
        ("2026-06-10T03:00Z", T0 + 3 * 3600),
        ("2026-06-10 05:00:00+02:00", T0 + 3 * 3600),
        ("all", None),
    ],
)
def test_times_on_the_command_line(text: str, expected: int | None) -> None:
    assert parse_when(text, now=LATER) == expected


@pytest.mark.parametrize("text", ["yesterday", "24x", "2026-13-01", ""])
def test_a_bad_time_is_a_usage_error_naming_it(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(repr(text))):
        parse_when(text, now=LATER)


# --- bad input ----------------------------------------------------------------------------------------------------


def test_garbage_binary_junk_and_truncated_json_are_counted_as_malformed(tmp_path: Path) -> None:
    lines, exp = seed_log(7, 600)
    junk = [
        "garbage",
        "\x00\x01\x02 binary \xff junk",
        '{"ts": "2026-06-10T00:00:00.000Z", "event": "retry", "task"',  # truncated
        '{"no": "known fields"}',
        "[1, 2, 3]",
        "2026-99-99T99:99:99Z [RETRY] task=x reason=timeout",  # a time that does not exist
        "{" * 5000,
        "[RETRY] task=x reason=timeout",  # no time at all
    ]
    rng = random.Random(0)
    mixed = list(lines)
    for item in junk:
        mixed.insert(rng.randrange(len(mixed)), item)
    raw = "\n".join(mixed).encode("utf-8", "surrogateescape") + b"\n\n  \n" + bytes(range(256)).replace(b"\n", b"")
    (tmp_path / "a.log").write_bytes(raw)
    report = report_of(tmp_path / "a.log")
    assert report["lines"]["malformed"] == len(junk) + 1
    assert report["lines"]["blank"] == 2
    assert report["lines"]["total"] == exp.lines + len(junk) + 3
    assert report["events"] == dict(exp.events)


def test_over_long_lines_are_skipped_wherever_they_fall(tmp_path: Path) -> None:
    """Mid-block, across blocks, and at the end without a newline: each is one malformed line, nothing else is lost."""
    lines, exp = seed_log(8, 300)
    long_line = "x" * 5000
    body = [*lines[:100], long_line, *lines[100:200], "y" * 50_000, *lines[200:]]
    path = tmp_path / "a.log"
    path.write_text("\n".join(body) + "\n" + "z" * 9000)
    config = with_analysis(load_config(), max_line_bytes=2048)
    for block in (1024, 4096, 1 << 20):
        with path.open("rb") as fh:
            tally = logscan.Tally(config.analysis, config.classify, Window())
            scan = logscan.Scan(tally, logscan.fast_pattern(Window()), 2048)
            info = logscan.InputInfo(str(path), "explicit")
            pieces = list(iter_blocks(fh, block_bytes=block, max_line=2048))
            assert max(len(view) for view, _ in pieces) <= block + 2048 + 2
            fh.seek(0)
            scan.read_stream(fh, info)
        tally.fold()
        assert (tally.malformed, tally.events) == (3, exp.events), block


def test_blocks_hold_exactly_the_input_lines(tmp_path: Path) -> None:
    """Random lines and block sizes: the blocks give back every line in order, the long ones left out and counted."""
    rng = random.Random(9)
    for _ in range(40):
        lines = [os.urandom(rng.choice((0, 1, 5, 40, 300))).hex()[: rng.randrange(0, 400)] for _ in range(60)]
        data = "\n".join(lines) + rng.choice(("", "\n"))
        cap = rng.choice((50, 120, 400))
        block = rng.choice((1, 7, 64, 500, 4096))
        got: list[str] = []
        skipped = 0
        for view, left_out in iter_blocks(io.BytesIO(data.encode()), block_bytes=block, max_line=cap):
            skipped += left_out
            got += bytes(view).decode().split("\n")[1:]
        expected = data.split("\n")
        if data.endswith("\n"):
            expected.pop()
        assert got == [x for x in expected if len(x) <= cap]
        assert skipped == sum(1 for x in expected if len(x) > cap)


@pytest.mark.slow
def test_a_2_gb_file_without_a_newline_is_one_malformed_line_in_flat_memory(tmp_path: Path, home: Path) -> None:
    """2 GiB of NUL bytes, no newline (a sparse file): one malformed line, the process stays under 100 MB."""
    path = tmp_path / "huge.log"
    with path.open("wb") as fh:
        fh.truncate(2 << 30)
    code = (
        "import json, resource, subprocess, sys\n"
        f"p = subprocess.run([sys.executable, {ANALYZE!r}, '--json', {str(path)!r}], capture_output=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout.decode(), 'rss_mb': rss}))\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=script_env(home), timeout=300, check=True
    )
    result = json.loads(proc.stdout)
    report = json.loads(result["out"])
    assert result["rc"] == 0
    assert report["lines"] == {
        "total": 1,
        "malformed": 1,
        "blank": 0,
        "outside_window": 0,
        "other_tasks": 0,
        "own_events": 0,
    }
    assert result["rss_mb"] < 100


def test_a_corrupt_gzip_named_on_the_command_line_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    lines, _ = seed_log(10, 2000)
    data = gzip.compress("\n".join(lines).encode())
    (tmp_path / "cut.log.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "flipped.log.gz").write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:])
    (tmp_path / "fake.log.gz").write_text("not gzip at all\n")
    for name in ("cut.log.gz", "flipped.log.gz", "fake.log.gz"):
        with pytest.raises(InputError, match=re.escape(str(tmp_path / name))):
            report_of(tmp_path / name)


def test_an_unreadable_discovered_log_is_reported_and_the_rest_analysed(
    state: StateRoot, config: Config, tmp_path: Path
) -> None:
    """A corrupt rotation in OpenClaw's log folder does not stop the report (nobody asked for that file)."""
    folder = tmp_path / "openclaw"
    folder.mkdir()
    (folder / "openclaw-2026-11-21.log").write_bytes(GATEWAY.read_bytes())
    (folder / "openclaw-2026-11-20.log.gz").write_bytes(gzip.compress(GATEWAY.read_bytes())[:300])
    report = analyze(
        None,
        config=config,
        state=state,
        env={"HOME": str(tmp_path)},
        now=LATER,
        since=None,
        default_since=False,
        openclaw_dir=folder,
    )
    errors = {Path(i["path"]).name: i.get("error") for i in report["inputs"]}
    assert errors["openclaw-2026-11-21.log"] is None
    assert "gzip" in errors["openclaw-2026-11-20.log.gz"]
    assert report["openclaw"]["cron_failed"] == 1


# --- the alert rules -----------------------------------------------------------------------------------------------


def runs(task: str, outcomes: str, *, start: int = T0, duration: float = 10.0, zone: str = "Z") -> list[str]:
    """One line per run: s = success (with `duration`), f = failed, b = breaker trip, r = retry, F = fallback."""
    words = {
        "s": f"[SUCCESS] task={task} duration={duration:g}s",
        "f": f"[FAILED] task={task} reason=timeout",
        "r": f"[RETRY] task={task} reason=timeout",
        "F": f"[FALLBACK] task={task} target=primary reason=transient",
        "b": "[BREAKER] task=- target=primary state=open reason=transient",
    }
    return [f"{iso(start + i, zone)} {words[c]}" for i, c in enumerate(outcomes)]


def rules(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["priority"], a["rule"]) for a in report["alerts"]]


def test_p1_when_the_success_rate_is_under_90_percent(tmp_path: Path) -> None:
    assert rules(report_of(write(tmp_path / "a.log", runs("t", "s" * 9 + "f")))) == []  # 90% exactly
    report = report_of(write(tmp_path / "b.log", runs("t", "s" * 8 + "ff")))
    assert rules(report) == [("P1", "success_rate")]
    assert report["alerts"][0]["value"] == 0.8


def test_p2_when_more_than_10_breakers_trip_within_one_clock_hour(tmp_path: Path) -> None:
    ten = runs("t", "b" * 10, start=T0 + 100) + runs("t", "b" * 10, start=T0 + 3600)
    assert rules(report_of(write(tmp_path / "a.log", ten))) == []
    eleven = runs("t", "b" * 11, start=T0 + 3595)  # 11 in a row, but 5 in one clock hour and 6 in the next
    assert rules(report_of(write(tmp_path / "b.log", eleven))) == []
    report = report_of(write(tmp_path / "c.log", runs("t", "b" * 11, start=T0 + 3600)))
    assert rules(report) == [("P2", "breaker_trips_per_hour")]
    assert report["breakers"]["peak_hour"] == iso(T0 + 3600)


def test_p2_when_fallbacks_exceed_20_percent_of_runs(tmp_path: Path) -> None:
    assert rules(report_of(write(tmp_path / "a.log", runs("t", "FF" + "s" * 10)))) == []  # 20% exactly
    assert rules(report_of(write(tmp_path / "b.log", runs("t", "FFF" + "s" * 10)))) == [("P2", "fallback_rate")]


def test_p3_when_a_tasks_recent_mean_is_over_twice_its_earlier_mean(tmp_path: Path) -> None:
    """Baseline: the task's mean before the recent hour (10 s); recent mean 25 s; another task stays steady."""
    now = T0 + 10 * 3600
    lines = runs("slow", "s" * 5, start=T0, duration=10) + runs("slow", "sss", start=now - 600, duration=25)
    lines += runs("steady", "s" * 5, start=T0, duration=10) + runs("steady", "sss", start=now - 600, duration=19)
    report = report_of(write(tmp_path / "a.log", lines), now=now)
    assert rules(report) == [("P3", "mean_time")]
    (row,) = report["alerts"][0]["tasks"]
    assert row == {
        "task": "slow",
        "recent_runs": 3,
        "recent_mean_s": 25.0,
        "baseline_s": 10.0,
        "baseline": "mean of 5 earlier runs",
        "factor": 2.5,
    }
    # The same lines read as an older log (now a year later): nothing is recent, nothing to judge.
    assert rules(report_of(tmp_path / "a.log", now=LATER)) == []


def test_p3_recent_period_ends_at_until(tmp_path: Path) -> None:
    lines = runs("slow", "s" * 5, start=T0, duration=10) + runs("slow", "sss", start=T0 + 5000, duration=30)
    report = report_of(write(tmp_path / "a.log", lines), until=T0 + 5010)
    assert rules(report) == [("P3", "mean_time")]


def test_p3_uses_a_configured_baseline(tmp_path: Path) -> None:
    now = T0 + 3600
    path = write(tmp_path / "a.log", runs("job", "sss", start=now - 100, duration=50, zone=""))
    assert rules(report_of(path, now=now)) == []  # no earlier runs: no baseline to compare with
    config = with_analysis(load_config(), baselines={"job": 20.0})
    report = report_of(path, now=now, config=config)
    assert rules(report) == [("P3", "mean_time")]
    assert report["alerts"][0]["tasks"][0]["baseline"] == "configured"


def test_thresholds_come_from_the_users_config(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    write_config("analysis: {success_rate_p1: 0.5, min_runs: 20}\n")
    path = write(tmp_path / "a.log", runs("t", "s" * 8 + "ff"))
    assert rules(report_of(path, config=load_config())) == []
    write_config("analysis: {success_rate_p1: 0.5}\n")
    assert rules(report_of(path, config=load_config())) == []
    write_config("analysis: {success_rate_p1: 0.95}\n")
    assert rules(report_of(path, config=load_config())) == [("P1", "success_rate")]


def test_a_bad_threshold_in_config_names_the_key(write_config: Callable[[str], Path]) -> None:
    path = write_config("analysis: {fallback_rate_p2: -1}\n")
    with pytest.raises(UsageError, match=rf"{re.escape(str(path))}:1:.*analysis.fallback_rate_p2: must be >= 0"):
        load_config()


# --- unclassified errors and suggested rules ------------------------------------------------------------------------


def test_unclassified_errors_are_grouped_by_shape_with_a_rule_that_classifies_them(
    state: StateRoot, config: Config, clock: FakeClock, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    clock._wall = T0
    ledger = Ledger(state, config, clock=clock)
    for n in (31, 47, 1200):
        ledger.record(
            "retry",
            task="sync",
            error_class="unknown",
            rule="unclassified",
            reason=f"vendor queue /srv/q{n}/in is full after {n} tries",
        )
    ledger.record("failed", task="sync", error_class="unknown", reason="Upstream replied QUOTA_HOLD for acct 991")
    report = analyze([str(p) for p in state.sub("ledger").iterdir()], config=config, now=LATER)
    groups = {row["signature"]: row for row in report["unclassified"]["signatures"]}
    assert set(groups) == {"vendor queue <path> is full after <n> tries", "Upstream replied QUOTA_HOLD for acct <n>"}
    full = groups["vendor queue <path> is full after <n> tries"]
    assert full["count"] == 3 and full["sources"] == ["ledger"]
    assert full["suggested_rule"]["class"] == "unknown"  # nothing in its words says what it is: a person decides
    # The suggestion, pasted into config.yaml with a class chosen, loads and classifies every sample.
    snippet = yaml.safe_load(full["yaml"])
    snippet["classify"]["extra_rules"][0]["class"] = "transient"
    write_config(yaml.safe_dump(snippet))
    settings = load_config().classify
    for sample in full["samples"]:
        assert classify_error(Failure(source="log", text=sample), settings=settings).error_class == "transient"
    assert (
        classify_error(Failure(source="log", text="vendor queue /x/y is fine"), settings=settings).rule
        != (snippet["classify"]["extra_rules"][0]["name"])
    )


def test_seed_reasons_no_rule_knows_are_unclassified_with_a_guessed_class(tmp_path: Path) -> None:
    """`format_error` is no class and no rule reads it; `oom` is read by a rule; `unknown` has nothing to go on."""
    lines = [f"{iso(T0 + i)} [RETRY] task=t reason={r}" for i, r in enumerate(["format_error", "oom", "timeout"] * 2)]
    lines.append(f"{iso(T0 + 9)} [FAILED] task=t reason=unknown")
    report = report_of(write(tmp_path / "a.log", lines))
    rows = {row["signature"]: row for row in report["unclassified"]["signatures"]}
    assert set(rows) == {"format_error", "unknown"}
    assert rows["format_error"]["count"] == 2
    assert rows["format_error"]["suggested_rule"] == {
        "name": "log-format-error",
        "class": "format",
        "pattern": "(?i)format_error",
    }
    assert rows["unknown"]["suggested_rule"] is None


def test_openclaw_errors_no_rule_knows_get_a_rule_suggestion() -> None:
    report = report_of(GATEWAY)
    rows = {row["signature"]: row for row in report["unclassified"]["signatures"]}
    auth = rows["No route-compatible authentication source is configured for openai."]
    assert auth["count"] == 1  # the CLI's reason line; the turn is classified by its chain's HTTP 401
    assert auth["suggested_rule"]["class"] == "auth"
    assert "command exited with code <n>" in rows  # the cron job
    assert report["unclassified"]["count"] == 2


@pytest.mark.parametrize(
    ("reason", "guess"),
    [
        ("set an authored value for logging", "unknown"),
        ("could not generate the summary", "unknown"),
        ("tokenizer vocabulary missing for qwen", "unknown"),
        ("auth refused for acct 7", "auth"),
        ("the token expired", "auth"),
        ("authorization header refused", "auth"),
        ("RateLimitError from upstream", "rate_limit"),
        ("rate limited by vendor", "rate_limit"),
    ],
)
def test_a_suggested_rules_class_is_guessed_from_whole_words(tmp_path: Path, reason: str, guess: str) -> None:
    """ "authored", "generate" and "tokenizer" hold auth, rate and token but say nothing about credentials or
    rate limits: the guess reads whole words."""
    line = {"ts": iso(T0), "event": "failed", "task": "t", "error_class": "unknown", "reason": reason}
    report = report_of(write(tmp_path / "a.log", [json.dumps(line)]))
    (row,) = report["unclassified"]["signatures"]
    assert row["suggested_rule"]["class"] == guess


def test_secrets_in_error_texts_never_reach_the_report(tmp_path: Path) -> None:
    key = "sk-proj-" + "A1b2C3d4" * 4
    line = json.dumps(
        {
            "ts": "2026-06-10T00:00:00.000Z",
            "event": "failed",
            "task": "t",
            "error_class": "unknown",
            "reason": f"call failed with Authorization: Bearer {key} at https://u:hunter22@host/x",
        }
    )
    report = report_of(write(tmp_path / "a.log", [line]))
    text = json.dumps(report) + render_text(report)
    assert key not in text and "hunter22" not in text
    assert "***" in report["unclassified"]["signatures"][0]["samples"][0]


def test_signatures_mask_what_varies() -> None:
    assert signature("timeout after 31s on /srv/a/b") == signature("timeout after 47.5s on /srv/c/d")
    assert signature('no key "abc" at 2026-06-10T03:12:18Z') == 'no key "<text>" at <time>'
    assert signature("request 3f2a9c0d1e8b7a65 failed") == "request <hex> failed"


# --- tasks, workers, memory ---------------------------------------------------------------------------------------


def test_task_narrows_every_figure_to_one_task(tmp_path: Path) -> None:
    lines, exp = seed_log(11, 1500)
    task = exp.retries.most_common(1)[0][0]
    report = report_of(write(tmp_path / "a.log", lines), task=task)
    assert report["tasks"]["count"] == 1
    assert report["runs"]["retries"] == exp.retries[task]
    assert report["runs"]["succeeded"] == len(exp.durations[task])
    assert report["lines"]["other_tasks"] > 0


def test_workers_give_the_same_report_as_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file split between forked workers, its cuts falling anywhere, OpenClaw duplicates across a cut included;
    the native engine and the Python fast path give the same report, in one process or several."""
    lines, exp = seed_log(12, 4000)
    gateway = GATEWAY.read_text().splitlines()
    body = [*lines[:1000], *gateway, *lines[1000:3000], *gateway[:40], *lines[3000:3500], "x" * 60_000, *lines[3500:]]
    path = write(tmp_path / "a.log", body)
    config = with_analysis(load_config(), max_line_bytes=16384)  # above every real OpenClaw line
    one = report_of(path, config=with_analysis(config, workers=1, engine="python"))
    assert one["lines"]["malformed"] == 1
    monkeypatch.setattr(logscan, "PARALLEL_MIN_BYTES", 1)
    for workers, engine in ((1, "native"), (2, "python"), (2, "native"), (3, "native"), (7, "python"), (40, "native")):
        many = report_of(path, config=with_analysis(config, workers=workers, engine=engine))
        assert many["engine"] == engine
        assert {k: v for k, v in many.items() if k not in ("inputs", "engine")} == {
            k: v for k, v in one.items() if k not in ("inputs", "engine")
        }
        assert many["inputs"][0]["lines"] == one["inputs"][0]["lines"] == len(body)
    assert one["events"]["retry"] == exp.events["retry"]


@pytest.mark.parametrize("engine", ["native", "python"])
def test_a_file_rotated_while_workers_read_it_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """OpenClaw renames its log when it passes 100 MB, the size at which the workers split it: each worker
    opened the path again, found the fresh empty file there, and the lines of every part but the first were
    lost without a word. They read the file this process opened, whatever the path now names."""
    lines, exp = seed_log(13, 3000)
    path = write(tmp_path / "openclaw-2026-11-21.log", lines)
    monkeypatch.setattr(logscan, "PARALLEL_MIN_BYTES", 1)
    cut = logscan.split_points

    def rotated_meanwhile(fh: Any, size: int, parts: int, *, window: int) -> list[int]:
        cuts = cut(fh, size, parts, window=window)
        path.rename(tmp_path / "openclaw-2026-11-21.1.log")
        path.write_text(f"{iso(T0)} [RETRY] task=fresh model=m reason=timeout\n" * 2)
        return cuts

    monkeypatch.setattr(logscan, "split_points", rotated_meanwhile)
    report = report_of(path, config=with_analysis(load_config(), workers=4, engine=engine))
    assert report["engine"] == engine
    assert report["inputs"][0]["lines"] == len(lines)
    assert report["events"]["retry"] == exp.events["retry"]


@pytest.mark.parametrize("engine", ["native", "python"])
def test_tables_keyed_by_a_lines_words_are_bounded_and_their_totals_stay_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """A distinct model, reason, target, tag or breaker hour on every line: each table grew with the input (3
    million distinct `model=` values took 2 GB). Each now keeps its max_tasks biggest keys, on the fast paths and
    the careful path (JSON lines) alike, while reading too; the totals stay exact and the report says what went."""
    n = 400
    lines = [f"{iso(T0 + i)} [RETRY] task=t model=m{i} reason=r{i} attempt=1/3" for i in range(n)]
    lines += [f"{iso(T0 + i)} [RETRY] task=t model=busy reason=timeout" for i in range(50)]
    lines += [f"{iso(T0 + i)} [TAG_{''.join(chr(65 + int(d)) for d in str(i))}] x" for i in range(n)]
    lines += [f"{iso(T0 + i * 3600)} [BREAKER] target=x{i} state=open" for i in range(n)]
    lines += [
        json.dumps({"ts": iso(T0 + i), "event": "fallback", "target": f"g{i}", "reason": f"f{i}"}) for i in range(n)
    ]
    monkeypatch.setattr(logscan, "_PRUNE_EVERY", 64)
    config = with_analysis(load_config(), max_tasks=10, engine=engine)
    window = Window()
    tally = logscan.Tally(config.analysis, config.classify, window)
    scan = logscan.Scan(tally, logscan.fast_pattern(window), 4096, engine=scan_engine(config.analysis))
    biggest = 0
    add_line = tally.add_line

    def watched(raw: bytes, info: logscan.InputInfo) -> None:
        nonlocal biggest
        add_line(raw, info)
        biggest = max(biggest, *(len(getattr(tally, name)) for name in logscan.BOUNDED_TABLES))

    monkeypatch.setattr(tally, "add_line", watched)
    scan.read_stream(io.BytesIO("\n".join(lines).encode()), logscan.InputInfo("x", "explicit"))
    tally.fold()
    assert biggest <= 2 * 10 + 64  # while reading, not only at the end
    assert all(len(getattr(tally, name)) <= 2 * 10 for name in logscan.BOUNDED_TABLES)

    report = report_of(write(tmp_path / "a.log", lines), config=config)
    assert report["events"] == {"retry": n + 50, "breaker": n, "fallback": n}
    assert report["failure_reasons_total"] == n + 50 and report["breakers"]["trips"] == n
    assert report["failure_reasons"][0] == {"reason": "timeout", "count": 50, "share": round(50 / (n + 50), 4)}
    assert report["models"][0]["model"] == "busy" and report["breakers"]["max_per_hour"] == 1
    assert report["let_go"]["by_model"]["keys"] >= n - 20 and report["let_go"]["other_tags"]["events"] >= n - 20
    assert "the least frequent keys were let go" in render_text(report)


def test_many_tasks_are_bounded_and_the_report_says_so(tmp_path: Path) -> None:
    """More tasks than max_tasks: the least active are let go; totals, reasons and models stay exact."""
    lines = [f"{iso(T0 + i)} [RETRY] task=t{i} model=m reason=timeout" for i in range(600)]
    lines += [f"{iso(T0 + 1000 + i)} [RETRY] task=busy model=m reason=timeout" for i in range(50)]
    config = with_analysis(load_config(), max_tasks=10)
    report = report_of(write(tmp_path / "a.log", lines), config=config)
    assert report["events"] == {"retry": 650}
    assert report["models"][0]["retry"] == 650
    assert report["tasks"]["folded"] > 0 and report["tasks"]["count"] <= 20
    assert report["tasks"]["most_retried"][0] == {
        "task": "busy",
        "retries": 50,
        "runs": 0,
        "failed": 0,
        "retries_per_run": None,
    }


# --- the script ---------------------------------------------------------------------------------------------------


def run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return call_script("analyze_logs.py", *args, home=home, env=env)


def test_json_is_one_object_and_an_alert_exits_1(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "a.log", runs("t", "s" * 8 + "ff"))
    proc = run(home, "--json", str(path))
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False and rules(report) == [("P1", "success_rate")]
    calm = run(home, "--json", str(write(tmp_path / "b.log", runs("t", "s" * 10))))
    assert calm.returncode == 0 and json.loads(calm.stdout)["ok"] is True


def test_the_text_report_leads_with_the_alerts(tmp_path: Path, home: Path) -> None:
    lines, _ = seed_log(13, 300)
    proc = run(home, str(write(tmp_path / "a.log", lines + runs("t", "f" * 60, start=T0 + 86400))), str(GATEWAY))
    assert proc.returncode == 1
    out = proc.stdout
    assert out.index("ALERTS") < out.index("Runs:") < out.index("Top failure reasons")
    assert "P1 success rate" in out
    assert "OpenClaw: 79 lines" in out and "1 failed cron run in 1 job" in out and "1 failed agent turn (2 lane" in out
    assert "a rule for config.yaml" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing.log"], "{tmp}/missing.log: no such file"),
        (["{tmp}"], "{tmp}: is a folder, not a log file"),
        (["--since", "last tuesday", "{tmp}/a.log"], "--since 'last tuesday': use a duration"),
        (["--task", "../etc", "{tmp}/a.log"], "invalid task id '../etc'"),
        (["--since", "2h", "--until", "3h", "{tmp}/a.log"], "must be before --until"),
    ],
)
def test_usage_errors_exit_2_with_a_message_and_no_traceback(
    tmp_path: Path, home: Path, args: list[str], message: str
) -> None:
    write(tmp_path / "a.log", runs("t", "s"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run(home, *argv)
    assert proc.returncode == 2
    assert message.replace("{tmp}", str(tmp_path)) in proc.stderr
    assert "Traceback" not in proc.stderr
    as_json = run(home, "--json", *argv)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["ok"] is False


@pytest.mark.parametrize("since", ["800000d", "99999999d", "9" * 400 + "d", "0999-12-31"])
def test_a_since_before_the_year_1000_reads_as_all(tmp_path: Path, home: Path, since: str) -> None:
    """Older than any log line and than the scanners' four-digit years: every line counts, --json still one
    object, no traceback (800000d raised ValueError building the time bound, 9...9d OverflowError)."""
    path = write(tmp_path / "a.log", runs("t", "sf"))
    proc = run(home, "--json", "--since", since, str(path))
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert report["window"]["since"] is None and report["runs"]["finished"] == 2
    assert run(home, "--since", since, "--until", "all", str(path)).returncode in (0, 1)


@pytest.mark.parametrize("until", ["800000d", "9" * 400 + "d"])
def test_an_until_before_the_year_1000_exits_2_naming_it(tmp_path: Path, home: Path, until: str) -> None:
    path = write(tmp_path / "a.log", runs("t", "s"))
    proc = run(home, "--json", "--since", "all", "--until", until, str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["message"] == (
        f"--until {until!r}: before the year 1000, so nothing could be in the window; use a later time"
    )


@pytest.mark.parametrize("engine", ["native", "python"])
def test_an_until_after_the_year_9999_reads_as_none_and_such_a_since_exits_2(
    tmp_path: Path, home: Path, engine: str
) -> None:
    """`9999-12-31T23:59:59-01:00` is in the year 10000, past the scanners' four-digit years: the Python fast
    path read such an --until as the year 1000 (no line in the window) and such a --since as all of them."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(f"analysis:\n  engine: {engine}\n")
    path = write(tmp_path / "a.log", runs("t", "sf"))
    late = "9999-12-31T23:59:59-01:00"
    proc = run(home, "--json", "--until", late, str(path))
    report = json.loads(proc.stdout)
    assert report["engine"] == engine and report["window"]["until"] is None
    assert report["runs"]["finished"] == 2 and report["lines"]["outside_window"] == 0
    proc = run(home, "--json", "--since", late, str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["message"] == (
        f"--since {late!r}: after the year 9999, so nothing could be in the window; use an earlier time"
    )


def test_a_file_that_cannot_be_opened_is_a_usage_error_naming_it(tmp_path: Path, home: Path) -> None:
    (tmp_path / "loop.log").symlink_to("loop.log")
    write(tmp_path / "plain.log", runs("t", "s"))
    for path, problem in ((tmp_path / "loop.log", "cannot open"), (tmp_path / "plain.log" / "x", "cannot open")):
        proc = run(home, str(path))
        assert proc.returncode == 2 and f"{path}: {problem}" in proc.stderr and "Traceback" not in proc.stderr


def test_permission_denied_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "a.log", runs("t", "s"))
    config = load_config()
    real_open = os.open

    def refuse(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(name) == str(path):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InputError, match=re.escape(f"{path}: permission denied")):
        report_of(path, config=config)


def test_stdin_is_read_with_a_dash(tmp_path: Path, home: Path) -> None:
    lines, exp = seed_log(14, 200)
    proc = subprocess.run(
        [PYTHON, ANALYZE, "--json", "-"],
        input="\n".join(lines),
        capture_output=True,
        text=True,
        env=script_env(home),
        timeout=60,
        check=False,
    )
    report = json.loads(proc.stdout)
    assert report["events"] == dict(exp.events)
    assert report["engine"] == "native"  # install.sh built it, and the script found it in its venv


def test_the_script_never_imports_openai(home: Path) -> None:
    watch = ("openai", "selfheal.observe.logreport")  # the script ran; openai was not imported
    assert imported_by("analyze_logs.py", "--json", str(GATEWAY), home=home, watch=watch) == [
        "selfheal.observe.logreport"
    ]


def test_the_report_gives_the_compensation_rate_of_the_second_document(
    state: StateRoot, config: Config, tmp_path: Path
) -> None:
    """The second document's compensation_trigger_rate: a workflow run that undid its steps counts once,
    its undone steps each; the same figures come from the ledger and from the log."""
    from selfheal.durable.workflow import StepContext, Workflow

    def order(ctx: StepContext) -> dict[str, str]:
        return {"order_id": "ORD-12345"}

    def charge(ctx: StepContext) -> bool:
        return True

    def email(ctx: StepContext) -> None:
        raise ValueError("Email service unavailable")

    saga = Workflow("saga")
    saga.step(order, compensate=lambda ctx: None)
    saga.step(charge, compensate=lambda ctx: None)
    saga.step(email)
    assert saga.run(config=config, state=state).status == "failed"
    fine = Workflow("fine")
    fine.step(order, compensate=lambda ctx: None)
    assert fine.run(config=config, state=state).status == "completed"

    kwargs: dict[str, Any] = {"config": config, "state": state, "openclaw_dir": tmp_path / "none", "env": {}}
    report = analyze(None, **kwargs)
    finished = report["runs"]["finished"]
    assert report["compensation"] == {
        "triggered": 1,
        "steps_compensated": 2,
        "steps_failed": 0,
        "rate": round(1 / finished, 4),
    }
    assert not [a for a in report["alerts"] if "compensat" in a["rule"]]  # the document sets no alert for it
    assert "Compensation triggered 1 times" in render_text(report)
    for path in state.sub("ledger").iterdir():
        path.unlink()
    assert analyze(None, **kwargs)["compensation"] == report["compensation"]


# The log lines a workflow writes (workflow.py run, real processes): a step that failed and had its done step
# undone, and a step answered by its fallback. A compensation or a fallback is a command of the step's run,
# named `<step>/compensate` and `<step>/fallback` (a mark no step's name can hold).
SAGA_LINES = [
    "[SUCCESS] task=wf2 step=a duration=4s",
    "[FAILED] task=wf2 step=b reason=permanent attempts=1 exit=2",
    "[COMPENSATE] task=wf2 reason=started",
    "[SUCCESS] task=wf2 step=a/compensate duration=30s",
    "[COMPENSATE] task=wf2 step=a reason=compensated",
    "[INCIDENT] task=wf2 step=b reason=permanent",
    "[FAILED] task=wf3 step=a reason=permanent attempts=1 exit=2",
    "[SUCCESS] task=wf3 step=a/fallback duration=2s",
    "[FALLBACK] task=wf3 step=a reason=permanent why=fallback_used",
    "[SUCCESS] task=wf3 step=b duration=6s",
    "[FAILED] task=wf4 step=a reason=permanent attempts=1 exit=2",
    "[RETRY] task=wf4 step=a/fallback reason=transient attempt=1/4 delay=1s exit=1",
    "[FAILED] task=wf4 step=a/fallback reason=permanent attempts=2 exit=2",
    '[FALLBACK] task=wf4 step=a reason=permanent why=failed detail="the fallback failed too"',
    "[FAILED] task=wf5 step=x reason=permanent attempts=1 exit=2",
    "[COMPENSATE] task=wf5 reason=started",
    "[FAILED] task=wf5 step=w/compensate reason=permanent attempts=1 exit=1",
    "[COMPENSATE] task=wf5 step=w reason=failed",
]


def _as_ledger(line: str, ts: str) -> str:
    """A SAGA_LINES line as the ledger's JSON line of the same event."""
    tag, _, rest = line.partition("] ")
    fields = dict(part.split("=", 1) for part in re.findall(r'\w+=(?:"[^"]*"|\S+)', rest))
    event = tag.lstrip("[").lower()
    obj: dict[str, Any] = {"ts": ts, "event": event, "task": fields["task"], "step": fields.get("step")}
    if event == "success":
        obj["duration_s"] = float(fields["duration"].rstrip("s"))
        obj["status"] = "succeeded"
    elif event == "compensate":
        obj["status"] = fields["reason"]
    elif event == "fallback":
        obj["error_class"], obj["status"] = fields["reason"], fields["why"]
    else:
        obj["error_class"] = fields["reason"]
    return json.dumps(obj)


@pytest.mark.parametrize("engine", ["python", "native", "ledger"])
def test_a_workflow_steps_compensation_and_fallback_commands_are_no_runs_of_their_own(
    tmp_path: Path, engine: str
) -> None:
    """Six step runs, 3 failed: the undo of a done step (`a/compensate`) is no successful run of its own (a real
    failed workflow read 2 of 3 runs succeeded), an undo that failed no second failure; a step its fallback
    answered is one run that succeeded with a fallback (not a failed run and a successful one); one whose
    fallback failed too, one failed run. It read 10 runs, 50%. The undo's 30 s is no run time."""
    lines = [f"{iso(T0 + i)} {line}" for i, line in enumerate(SAGA_LINES)]
    if engine == "ledger":
        lines = [_as_ledger(line, iso(T0 + i)) for i, line in enumerate(SAGA_LINES)]
    path = write(tmp_path / "wf.log", lines)
    config = with_analysis(load_config(), engine="native" if engine == "native" else "python")
    report = report_of(path, config=config)
    assert report["runs"]["finished"] == 6
    assert report["runs"]["succeeded"] == 3  # wf2.a, wf3.a (by its fallback), wf3.b
    assert report["runs"]["failed"] == 3  # wf2.b, wf4.a, wf5.x
    assert report["runs"]["success_rate"] == 0.5
    assert report["runs"]["retries"] == 1
    assert report["fallback"] == {"events": 2, "rate": round(2 / 6, 4), "reasons": {"permanent": 2}}
    assert report["compensation"]["rate"] == round(2 / 6, 4)
    assert report["durations"] == {"timed_runs": 3, "mean_s": 4.0}
    slowest = {r["task"]: (r["runs"], r["mean_s"]) for r in report["tasks"]["slowest"]}
    assert slowest == {"wf2": (1, 4.0), "wf3": (2, 4.0)}
    (wf4,) = report["tasks"]["most_retried"]
    assert wf4 == {"task": "wf4", "retries": 1, "runs": 1, "failed": 1, "retries_per_run": 1.0}
    assert "Runs: 6 finished, 50.0% succeeded" in render_text(report)


@pytest.mark.parametrize("engine", ["python", "native", "ledger"])
def test_a_step_the_user_named_like_a_compensation_or_fallback_is_a_run_of_its_own(tmp_path: Path, engine: str) -> None:
    """Steps named `pay.compensate` and `fetch.fallback` by the user (valid step names) are runs like any: they
    were read as a compensation (no run, no run time) and a fallback (whose success cancelled the failed
    run before it: 0 failed runs of 2)."""
    named = [
        "[FAILED] task=wf6 step=send reason=permanent attempts=1 exit=2",
        "[SUCCESS] task=wf6 step=pay.compensate duration=5s",
        "[SUCCESS] task=wf6 step=fetch.fallback duration=7s",
        "[FAILED] task=wf7 step=load.fallback reason=permanent attempts=1 exit=2",
    ]
    lines = [f"{iso(T0 + i)} {line}" for i, line in enumerate(named)]
    if engine == "ledger":
        lines = [_as_ledger(line, iso(T0 + i)) for i, line in enumerate(named)]
    config = with_analysis(load_config(), engine="native" if engine == "native" else "python")
    report = report_of(write(tmp_path / "wf.log", lines), config=config)
    assert (report["runs"]["finished"], report["runs"]["succeeded"], report["runs"]["failed"]) == (4, 2, 2)
    assert report["durations"] == {"timed_runs": 2, "mean_s": 6.0}


def test_a_workflows_own_commands_are_told_from_steps_named_like_them_in_its_ledger(
    state: StateRoot, config: Config, tmp_path: Path
) -> None:
    """A real workflow's ledger: its compensation and fallback are recorded as `pay/compensate` and
    `a/fallback`, so its own steps named `pay.compensate` and `b.fallback` count as the runs they are: 5 runs,
    4 succeeded (it read 3 runs, all succeeded: both of the user's steps were taken for the workflow's own)."""
    from selfheal.durable.workflow import StepContext, Workflow

    def ok(ctx: StepContext) -> None:
        pass

    def fails(ctx: StepContext) -> None:
        raise ValueError("the channel does not exist")

    saga = Workflow("saga")
    saga.step(ok, name="pay", compensate=ok)
    saga.step(ok, name="pay.compensate")
    saga.step(fails, name="send")
    assert saga.run(config=config, state=state).status == "failed"
    rescue = Workflow("rescue")
    rescue.step(fails, name="a", fallback=ok)
    rescue.step(ok, name="b.fallback")
    assert rescue.run(config=config, state=state).status == "completed"

    events = [json.loads(line) for path in state.sub("ledger").iterdir() for line in path.read_text().splitlines()]
    steps = {(e["task"], e["step"]) for e in events if e["event"] == "success"}
    assert {("saga", "pay/compensate"), ("saga", "pay.compensate"), ("rescue", "a/fallback")} <= steps
    kwargs: dict[str, Any] = {"config": config, "state": state, "openclaw_dir": tmp_path / "none", "env": {}}
    runs = analyze(None, **kwargs)["runs"]
    assert (runs["finished"], runs["succeeded"], runs["failed"]) == (5, 4, 1)


def test_a_rate_just_past_its_threshold_raises_its_alert_though_it_rounds_to_it(tmp_path: Path) -> None:
    """22,499 of 25,000 runs (89.996%) is under 90%, and 10,001 fallbacks in 50,000 runs (20.002%) over 20%:
    the rates are compared exactly, not as the report rounds them (to 0.9 and 0.2, which raised nothing), and
    the message does not say that 90.0% is under 90%."""
    lines = runs("t", "s" * 22_499 + "f" * 2_501)
    report = report_of(write(tmp_path / "a.log", lines))
    assert rules(report) == [("P1", "success_rate")]
    (alert,) = report["alerts"]
    assert alert["value"] == 22_499 / 25_000
    assert alert["message"].startswith("success rate 89.996% is under 90%")
    lines = runs("t", "F" * 10_001 + "s" * 50_000)
    report = report_of(write(tmp_path / "b.log", lines))
    assert rules(report) == [("P2", "fallback_rate")]
    assert "(20.002%, over 20%)" in report["alerts"][0]["message"]


def test_a_models_fallbacks_are_failed_attempts_in_its_failure_share(tmp_path: Path) -> None:
    """A model that failed and fell over to the next in half its calls failed half its attempts (it read 0.0%);
    the rules engine answering for a chain is its success, not its failure."""
    lines = [
        "[FALLBACK] task=c1 target=a model=m-a reason=transient attempts=1",
        "[SUCCESS] task=c1 target=b model=m-b duration=1s",
        "[SUCCESS] task=c2 target=a model=m-a duration=1s",
        "[FALLBACK] task=c3 target=a model=m-a reason=auth attempts=1",
        "[FAILED] task=c3 target=b model=m-b reason=permanent attempts=1",
        "[FALLBACK] task=c3 target=rules model=canned reason=rules",
        "[SUCCESS] task=c4 target=a model=m-a duration=1s",
    ]
    report = report_of(write(tmp_path / "a.log", [f"{iso(T0 + i)} {line}" for i, line in enumerate(lines)]))
    models = {r["model"]: r for r in report["models"]}
    assert models["m-a"]["failure_share"] == 0.5
    assert models["m-b"]["failure_share"] == 0.5
    assert (models["canned"]["success"], models["canned"]["fallback"], models["canned"]["failure_share"]) == (1, 0, 0.0)
    targets = {r["target"]: r["failure_share"] for r in report["targets"]}
    assert targets == {"a": 0.5, "b": 0.5, "rules": 0.0}
    assert "m-a: 2 ok, 0 retried, 0 failed, 2 fell back (50.0% of attempts failed)" in render_text(report)


# --- OpenClaw's own failures ----------------------------------------------------------------------------------------

FAILURES = ROOT / "tests" / "fixtures" / "openclaw-failures" / "agent-chains-cron.jsonl"


def test_openclaw_failures_are_counted_per_turn_chain_and_cron_job() -> None:
    """10 lane error lines are 5 turns; 8 cron lines are 4 runs of 2 jobs; each chain names each model tried."""
    oc = report_of(FAILURES)["openclaw"]
    assert (oc["failed_turns"], oc["lane_error_lines"], oc["fallback_exhausted"], oc["single_model_chains"]) == (
        5,
        10,
        3,
        1,
    )
    assert [(j["job"], j["failed_runs"]) for j in oc["cron_jobs"]] == [
        ("nightly-report", 3),
        ("oc-selfheal-health-fail", 1),
    ]
    nightly = oc["cron_jobs"][0]
    assert (nightly["first"], nightly["last"]) == ("2026-11-22T09:40:00.000+00:00", "2026-11-22T10:20:00.000+00:00")
    assert "No such file or directory" in nightly["diagnostics"]
    quota = oc["chains"][0]["models"]
    assert [(m["model"], m["status"], m["error_class"]) for m in quota] == [
        ("vllm/qwen3-4b", 429, "rate_limit"),
        ("backup/qwen-0.5b", 402, "fatal"),
    ]


def test_openclaw_failures_raise_alerts_with_thresholds_from_the_config(config: Config) -> None:
    report = report_of(FAILURES)
    assert report["ok"] is False
    assert set(rules(report)) == {
        ("P1", "openclaw_chain_exhausted"),
        ("P2", "openclaw_failed_turns"),
        ("P2", "openclaw_cron_failed"),
    }
    text = " ".join(a["message"] for a in report["alerts"])
    assert "nightly-report 3x" in text and "only one model was tried" in text
    quiet = dataclasses.replace(
        config.analysis,
        openclaw_chains_exhausted_p1=4,
        openclaw_failed_turns_p2=0,
        openclaw_cron_failed_runs_p2=4,
    )
    calm = analyze([str(FAILURES)], config=dataclasses.replace(config, analysis=quiet))
    assert calm["ok"] is True and calm["alerts"] == []


def test_analyze_logs_exits_1_for_openclaws_own_failures(home: Path) -> None:
    proc = run(home, "--json", str(FAILURES))
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["openclaw"]["failed_turns"] == 5
    text = run(home, str(FAILURES)).stdout
    assert (
        "chain exhausted 2026-11-22T09:00:03.040+00:00: vllm/qwen3-4b: rate_limit, status 429; backup/qwen-0.5b: fatal"
        in text
    )
    assert "cron job nightly-report: 3 failed run(s)" in text and "No such file or directory" in text


def test_openclaw_failure_lines_beyond_the_memory_cap_are_counted_as_not_grouped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Memory stays bounded however many failures a log holds: the lines past the cap are said, not held."""
    monkeypatch.setattr(logscan, "_MAX_OPENCLAW_FAILURES", 4)
    oc = report_of(FAILURES)["openclaw"]
    assert oc["not_grouped"] == 10 + 2 + 3 + 8 - 4  # lane, next_fallback, chain_exhausted, cron lines; 4 held
    assert oc["failed_turns"] <= 2


# --- the fast path against the careful path, line for line ------------------------------------------------------


class _EveryLineWhole:
    """A block pattern that hands every line to the careful path (blank ones as empty rows, as the fast one does)."""

    pattern = re.compile(rb"\n(?:()()([^\n]+)|)")

    def findall(self, block: memoryview) -> list[tuple[bytes, bytes, bytes]]:
        return self.pattern.findall(block)


def _figures(tally: logscan.Tally) -> dict[str, Any]:
    tally.fold()
    tasks = {
        name: (s.retries, s.successes, s.failures, s.fallbacks, s.timed, round(s.total_s, 6), s.max_s, s.recent_timed)
        for name, s in tally.tasks.items()
    }
    return {
        "lines": (tally.lines, tally.malformed, tally.blank, tally.outside, tally.timed, round(tally.total_s, 6)),
        "events": dict(tally.events),
        "not_runs": dict(tally.not_runs),
        "other_tags": dict(tally.other_tags),
        "reasons": dict(tally.reasons),
        "fallback_reasons": dict(tally.fallback_reasons),
        "by_model": {k: dict(v) for k, v in tally.by_model.items()},
        "by_target": {k: dict(v) for k, v in tally.by_target.items()},
        "tasks": tasks,
        "trips": dict(tally.trips_by_hour),
        "unclassified": {k: v.count for k, v in tally.unclassified.items()},
        "openclaw": tally.openclaw_lines,
    }


def _native_engine() -> native.Engine:
    engine, why = native.engine("native")
    assert engine is not None, f"the native log scanner is not built here ({why}): install.sh builds it"
    return engine


def _scan_all(data: bytes, window: Window, *, max_line: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The figures of `data` read by the Python fast path, by the native engine, and by the careful path alone
    (blocks of at least the `block_bytes` set, and at most that plus `max_line`)."""
    config = with_analysis(load_config(), max_line_bytes=max_line)
    out = []
    for pattern, engine in (
        (logscan.fast_pattern(window), None),
        (logscan.fast_pattern(window), _native_engine()),
        (_EveryLineWhole(), None),
    ):
        tally = logscan.Tally(config.analysis, config.classify, window)
        scan = logscan.Scan(tally, pattern, max_line, engine=engine)
        scan.read_stream(io.BytesIO(data), logscan.InputInfo("x", "explicit"))
        out.append(_figures(tally))
    return out[0], out[1], out[2]


def _scan_both(data: bytes, window: Window, *, max_line: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures of `data` read by the fast paths and by the careful path alone: the Python fast path and the
    native engine must read the same."""
    fast, in_c, careful = _scan_all(data, window, max_line=max_line)
    assert in_c == fast
    return fast, careful


def _edge_lines(t: int) -> list[bytes]:
    """Lines where the fast path could go wrong: every one must read as the careful path reads it."""
    ts = iso(t).encode()
    bare = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)).encode()
    return [
        ts + b" [INFO] " + b"x" * 6000 + b" [RETRY] task=long model=M reason=timeout",  # tag deep in a long line
        ts + b" [RETRY] task=over model=M reason=timeout " + b"y" * 6100,  # over the longest line read: malformed
        ts + b" [INFO] msg=calling " + ts + b" [FAILED] task=inner reason=oom",  # a whole line inside another
        b"garbage " + ts + b" [RETRY] task=a model=M reason=timeout",  # the tag not at the line's start
        b" " + ts + b" [RETRY] task=a model=M reason=timeout",
        ts + b"  [RETRY] task=a model=M reason=timeout",
        ts + b" [RETRY] task=crlf model=M reason=timeout attempt=1/3\r",  # CRLF
        ts + b" [INFO]\r",
        ts + b" [SUCCESS] task=crlf duration=2.5s\r",
        ts + b" [RETRY] task=bad\xff\xfeutf model=M\xc3 reason=time\xffout",  # invalid UTF-8 in a tracked line
        ts + b" [INF\xffO] task=a",
        ts + b" [INFO] \xff\xfe\xfd",
        ts[:5] + b"13" + ts[7:] + b" [INFO] month 13",  # timestamps out of range
        ts[:11] + b"24" + ts[13:] + b" [RETRY] task=a model=M reason=timeout",
        ts[:-1] + b".250Z [INFO] fraction",  # other timestamp forms: the careful path converts them
        bare + b"+02:00 [RETRY] task=zone model=M reason=oom",
        bare + b" [DEBUG] no zone",
        ts + b" [INFO]x",  # tags the fast path must not take
        ts + b" [info] lower case",
        ts + b" [INFOX] longer",
        ts + b" [I] one letter",
        ts + b" [WARNING] not coded",
        ts + b" [INCIDENT] task=a reason=timeout",
        ts + b" [INFO] duration=1.5s",  # an untracked line that looks timed
        ts + b" [NOTICE_X] duration=3s task=a",
        ts + b" [SUCCESS] task=q duration=1.2.3s",  # an unreadable duration
        ts + b' [SUCCESS] task="quoted task" duration=4s',
        ts + b" [RETRY] model=M task=order reason=timeout",
        ts + b" [RETRY] task=word model=M reason=oom stray",  # a bare word after the key's fields
        ts + b" [FALLBACK] task=word target=t model=M reason=oom attempts=2 stray",
        bare + b" [SUCCESS] task=plain duration=3.5s tokens=9",  # the timestamp's other forms, each way
        bare + b".5 [RETRY] task=frac model=M reason=oom",
        bare + b".25Z [SUCCESS] task=frac duration=1.5s",
        bare + b". [INFO] a dot alone",
        bare + b"Z[INFO] no space",
        bare + b".25ZZ [INFO] two zones",
        ts + b" [INFO]",  # a bare tag, and untracked tags with a duration
        ts + b" [WARN] duration=2s",
        ts + b" [NOTICE] duration=x",
        ts + b" [BREAKER] task=- target=qwen3-4b state=open reason=transient",
        ts + b" [SUCCESS] task=late tokens=9 duration=1.5s",  # a duration after another field
        ts + b" [SUCCESS] task=unit duration=1.5sec",  # a duration of other shapes
        ts + b" [SUCCESS] task=bare duration=15 tokens=3",
        ts + b" [SUCCESS] task=twice duration=2s tokens=1 duration=3s",
        ts + b" [RETRY] task=after attempt=2 reason=oom model=M",  # key fields after another field
        ts + b" [FALLBACK] task=empty reason= model=M",
        ts + b' [RETRY] task="a"model=M reason=oom',  # a quote ends a value there
        ts + b" [RETRY] task=a\x1cb model=M reason=oom",  # Unicode's white space ends one too
        ts + b" [RETRY] task=a\xc2\xa0b model=M reason=oom",
        ts + b" [RETRY] task=\xe4\xb8\xad\xe6\x96\x87 model=M reason=oom",  # other UTF-8 does not
        ts + b" [FAILED] task=detail reason=zqxwv detail=boom",  # the careful path files it under its detail
        ts + b" [SUCCESS] task=wf step=a/compensate duration=9s",  # a workflow step's own commands: no runs
        ts + b" [FAILED] task=wf step=a/fallback reason=oom",
        ts + b" [SUCCESS] task=wf step=a/fallback duration=2s tokens=1",
        ts + b" [SUCCESS] task=wf step=a/fallback.x duration=2s",
        ts + b" [SUCCESS] task=wf step=a.compensate duration=3s",  # steps of the user's named so: runs
        ts + b" [FAILED] task=wf step=a.fallback reason=oom",
        ts + b" [FALLBACK] task=wf target=rules model=canned reason=rules",
        b"",
        b"   \t",
        b'{"ts": "' + ts + b'", "event": "retry", "task": "j", "error_class": "timeout"}',
        b"{not json",
    ]


@pytest.mark.parametrize("block", [64, 700, 1 << 20], ids=["tiny-blocks", "lines-across-blocks", "one-block"])
@pytest.mark.parametrize("bounded", ["recent", "none", "since-until"])
def test_the_fast_path_reads_every_edge_as_the_careful_path_does(
    monkeypatch: pytest.MonkeyPatch, block: int, bounded: str
) -> None:
    """Tricky lines among ordinary ones, in blocks of several sizes (lines cut across every block boundary),
    with and without a window: the same figures as reading every line on the careful path. `none` is a
    whole file with no recent period in it (the whole-file pattern, `_WHOLE_FILE`: what a file read after
    the fact gets, block by block); `recent` looks for a recent period on every line."""
    monkeypatch.setitem(logscan.iter_blocks.__kwdefaults__, "block_bytes", block)
    lines, _ = seed_log(30, 60)
    rng = random.Random(30)
    data: list[bytes] = []
    for i, line in enumerate(lines):
        t = T0 + i * 40
        data.append(line.encode())
        if i % 3 == 0:
            data += rng.sample(_edge_lines(t), 4)
        if i % 5 == 0:
            data.append(f"{iso(t)} [{rng.choice(('INFO', 'DEBUG', 'WARN', 'ERROR', 'TRACE'))}] n={i}".encode())
    text = b"\n".join(data) + b"\n"
    window = {
        "recent": Window(recent=(T0 + 1500, LATER)),
        "none": Window(),
        "since-until": Window(T0 + 600, T0 + 1800, (T0 + 1500, T0 + 1800)),
    }[bounded]
    fast, careful = _scan_both(text, window, max_line=6100)
    assert fast == careful
    assert fast["lines"][0] == len(data)
    assert fast["other_tags"] and fast["events"]


def test_dates_that_do_not_exist_and_fractions_at_a_bound_read_the_same_on_every_path() -> None:
    """February 30 and the year 0000 are malformed on every path (never rolled over into March), February 29
    exists only in leap years, and a fraction never carries a line into the next second: the window's bounds
    and the recent period judge each line by the second its text names. (Found by review: the fast paths
    compared the text's digits, the careful path the rolled-over or rounded-up time.)"""
    lines = []
    for day in ("2026-02-28", "2026-02-29", "2026-02-30", "2026-02-31", "2024-02-29", "2026-04-31", "0000-01-01"):
        for clock in ("00:00:00", "12:00:00", "23:59:59"):
            lines.append(f"{day}T{clock} [SUCCESS] task=d duration=1s".encode())
            lines.append(f"{day} {clock} [INFO] x".encode())
    for stamp in ("2026-03-01T00:00:59.999999999Z", "2026-02-28T11:59:59.999999999", "2026-03-01T12:00:00.0000001Z"):
        lines += [
            f"{stamp} [SUCCESS] task=f duration=2s".encode(),
            f"{stamp} [RETRY] task=f model=m reason=oom".encode(),
        ]
    data = b"\n".join(lines)
    feb28, mar1 = calendar.timegm((2026, 2, 28, 12, 0, 0)), calendar.timegm((2026, 3, 1, 0, 1, 0))
    windows = (
        Window(),
        Window(since=mar1 - 60),
        Window(recent=(feb28, mar1 + 39_540)),
        Window(feb28, mar1, (feb28, mar1)),
    )
    for window in windows:
        fast, careful = _scan_both(data, window, max_line=4096)
        assert fast == careful, window
    whole, _ = _scan_both(data, Window(), max_line=4096)
    assert whole["lines"][1] == 2 * 3 * 5  # Feb 29, 30 and 31 of 2026, April 31, the year 0000: malformed
    assert whole["tasks"]["d"][1] == 2 * 3  # Feb 28, and 2024's Feb 29; none of the others


@pytest.mark.parametrize("block", [4096, 1 << 21], ids=["small-blocks", "one-block"])
@pytest.mark.parametrize("bounded", ["recent", "none", "since-until"])
def test_lines_put_together_at_random_read_the_same_on_every_path(
    monkeypatch: pytest.MonkeyPatch, bounded: str, block: int
) -> None:
    """Thousands of lines assembled from pieces of real ones and near misses (a fixed seed): the Python fast path,
    the native engine and the careful path give the same figures. Whatever a fast path cannot read exactly it
    must hand to the careful path. (This found lines the Python fast path had read otherwise than the careful
    one: a key field or a duration after another field, a duration of another shape.)"""
    monkeypatch.setitem(logscan.iter_blocks.__kwdefaults__, "block_bytes", block)
    rng = random.Random(bounded)
    data = [
        fuzz_line(rng, T0 + i) if rng.random() < 0.97 else rng.choice((b"", b"{not json", b"\xff\xfe"))
        for i in range(10_000)
    ]
    window = {
        "recent": Window(recent=(T0 + 1500, LATER)),
        "none": Window(),
        "since-until": Window(T0 + 600, T0 + 3000, (T0 + 2000, T0 + 3000)),
    }[bounded]
    fast, careful = _scan_both(b"\n".join(data), window, max_line=4096)
    assert fast == careful
    assert fast["lines"][0] == len(data)
    assert fast["events"] and fast["other_tags"] and fast["lines"][1] > 100  # every kind of line was there


def test_a_block_with_the_recent_periods_day_is_read_with_the_recent_period_and_one_without_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks of old lines skip looking for the recent period; blocks that hold its day look for it: P3's
    recent durations are the same as line by line, old and recent successes of one task kept apart."""
    monkeypatch.setitem(logscan.iter_blocks.__kwdefaults__, "block_bytes", 256)
    recent_start = T0 + 40 * 86400
    old = [f"{iso(T0 + i * 60)} [SUCCESS] task=t duration={i % 7 + 1}s" for i in range(50)]
    new = [f"{iso(recent_start + i * 60)} [SUCCESS] task=t duration={i % 5 + 20}s" for i in range(30)]
    text = ("\n".join([*old, *new]) + "\n").encode()
    window = Window(recent=(recent_start + 10 * 60, recent_start + 86400))
    fast, careful = _scan_both(text, window, max_line=300)
    assert fast == careful
    assert fast["tasks"]["t"][7] == 20  # the recent period's successes, from its 11th minute

    pattern = logscan.fast_pattern(window)
    used: list[str] = []

    class Spy:
        def __init__(self, name: str, real: re.Pattern[bytes]) -> None:
            self.name, self.real = name, real

        def findall(self, block: memoryview) -> list[tuple[bytes, bytes, bytes]]:
            used.append(self.name)
            return self.real.findall(block)

    pattern.full, pattern.without_recent = Spy("full", pattern.full), Spy("without", pattern.without_recent)  # type: ignore[assignment]
    tally = logscan.Tally(load_config().analysis, load_config().classify, window)
    logscan.Scan(tally, pattern, 300).read_stream(io.BytesIO(text), logscan.InputInfo("x", "explicit"))
    assert used[0] == "without" and used[-1] == "full" and used == sorted(used, reverse=True)
    # A recent period of more than a few days is looked for on every line.
    long_period = logscan.fast_pattern(Window(recent=(T0, T0 + 30 * 86400)))
    assert long_period.without_recent is long_period.full


def test_duration_texts_are_converted_once_each_and_a_bad_one_is_an_error() -> None:
    seconds = logscan._Seconds()
    assert seconds[b"47.2"] == 47.2 and seconds[b"47.2"] == 47.2 and list(seconds) == [b"47.2"]
    with pytest.raises(ValueError):
        seconds[b"1.2.3"]
    assert b"1.2.3" not in seconds
