"""The failure report of analyze_logs.py: which logs to read, the figures, the alerts, rule suggestions.

Default inputs are the skill's ledger (the day files that overlap the window) and OpenClaw's own logs
(`openclaw_logs.discover`). The skill's log (`logs/selfheal.log` and its rotations) holds the same
events as the ledger, so it is read only when there is no ledger at all; reading both would count each
event twice. Paths given explicitly are read as given, whatever they hold.

In fleet mode the ledger read is the fleet's (every host's events, from PostgreSQL; `host` keeps one
host's); when the database cannot be reached, this host's own files are read instead and the input says so.

Alerts follow the second source document (all thresholds in skill.yaml `analysis`):
* P1 when the success rate (successes / finished runs, a run being finished by [SUCCESS] or [FAILED]) is
  under `success_rate_p1`;
* P2 when more than `breaker_trips_per_hour_p2` breakers trip (open) within one clock hour (UTC);
* P2 when fallbacks per finished run exceed `fallback_rate_p2`;
* P3 when a task's mean duration over the recent period (the last `recent_s` before --until, default
  now) exceeds `mean_time_factor_p3` times its baseline: `baselines[task]` when configured, else its
  mean over the rest of the window. P1, the fallback rule and P3 wait for `min_runs` runs.

Events of self-heal's own calls (task `self-heal.<purpose>.<task>`, core.ledger.own_task: the root-cause
analysis of a failed task) are left out of every figure and alert, and counted in `lines.own_events`.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import ledger as ledger_mod
from ..core.config import ERROR_CLASSES, AnalysisSettings, Config, get_config
from ..core.fleet import fleet_database, mark_down
from ..core.redact import Redactor
from ..errors import StateError, UsageError
from ..state.inert import inert
from ..state.root import StateRoot
from . import openclaw_logs as oc
from .logscan import InputInfo, Scan, Signature, Tally, Window, fast_pattern, ledger_days, log_files, parse_time

if TYPE_CHECKING:
    from .native import Engine

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, now: float, flag: str = "--since") -> int | None:
    """A point in time from `24h` / `30m` / `7d` (that long before now), ISO-8601, or `all` (None)."""
    value = text.strip()
    if value.lower() in ("all", "any", "ever"):
        return None
    m = _DURATION.match(value)
    if m:
        return int(now - float(m.group(1)) * _UNITS[m.group(2)])
    if re.fullmatch(r"\d{4}-\d\d-\d\d", value):
        value += "T00:00:00"
    value = re.sub(r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d)(?=Z|[+-]\d\d:?\d\d|$)", r"\1:00", value)  # no seconds
    ts = parse_time(value)
    if ts is None:
        raise UsageError(
            f"{flag} {text!r}: use a duration like 30m, 24h or 7d, a date or time like 2026-06-10T03:00Z, or all"
        )
    return int(ts)


def make_window(*, since: int | None, until: int | None, recent_s: float, now: float) -> Window:
    """The window, and its recent period for P3: the last `recent_s` before `until` (or now), inside the window."""
    if since is not None and until is not None and since >= until:
        raise UsageError(f"--since ({_iso(since)}) must be before --until ({_iso(until)})")
    end = until if until is not None else int(now) + 1
    start = end - int(recent_s)
    if since is not None:
        start = max(start, since)
    return Window(since, until, (start, end) if start < end else None)


def default_inputs(
    state: StateRoot, env: Mapping[str, str], window: Window, *, openclaw_dir: Path | None = None
) -> list[tuple[str, str]]:
    """(path, source) of the ledger's day files in the window, else the skill's log, and OpenClaw's logs (those
    of `openclaw_dir` instead of the folders OpenClaw's logger writes to, when given)."""
    days = ledger_mod.ledger_files(state)
    found = [(str(p), "ledger") for p in ledger_days(days, window)]
    if not days:
        found += [(str(p), "log") for p in log_files(state.log_file)]
    found += [(str(p), "openclaw") for p in oc.discover(env, log_dir=openclaw_dir)]
    return found


def analyze(
    paths: Sequence[str] | None = None,
    *,
    since: int | None = None,
    until: int | None = None,
    task: str | None = None,
    config: Config | None = None,
    env: Mapping[str, str] | None = None,
    now: float | None = None,
    state: StateRoot | None = None,
    default_since: bool = True,
    openclaw_dir: Path | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    """Read the logs and return the report (a JSON-ready dict). Raise UsageError for an unreadable PATH.

    `since`/`until` are epoch seconds. With no `paths`, the default inputs are read, and `since` defaults
    to `analysis.since_s` before now (unless `default_since` is False); explicit paths are read whole
    unless a bound is given.
    """
    config = config or get_config()
    if host is not None and (paths is not None or not config.store.fleet):
        raise UsageError(
            "--host picks one host's events from the fleet's ledger: it needs fleet mode (store.url or"
            " SELFHEAL_DATABASE_URL) and no PATH"
        )
    env = os.environ if env is None else env
    now = time.time() if now is None else now
    settings = config.analysis
    if paths is None and since is None and default_since:
        since = int(now - settings.since_s)
    window = make_window(since=since, until=until, recent_s=settings.recent_s, now=now)
    redactor = Redactor(env_names=config.redact.env_names, patterns=config.redact.patterns, env=env)
    tally = Tally(settings, config.classify, window, task=task, redactor=redactor)
    workers = settings.workers or os.cpu_count() or 1
    scan = Scan(tally, fast_pattern(window), settings.max_line_bytes, workers=workers, engine=scan_engine(settings))
    if paths is None:
        state = state or StateRoot.from_env(env)
        fleet_read = config.store.fleet and read_fleet_ledger(scan, config, window, host)
        for path, source in default_inputs(state, env, window, openclaw_dir=openclaw_dir):
            if fleet_read and source in ("ledger", "log"):
                continue  # this host's events are in the fleet's ledger too
            scan.read(path, source, strict=False)
    else:
        for path in paths:
            scan.read(path, "explicit", strict=True)
    tally.fold()
    return build_report(tally, scan, config, window, task=task)


def scan_engine(settings: AnalysisSettings) -> Engine | None:
    """The native engine where `analysis.engine` lets it read and it is built; UsageError if `native` is asked
    for and it cannot be had."""
    if settings.engine == "python":
        return None
    from . import native  # noqa: PLC0415 - ctypes only for a log analysis

    engine, why = native.engine(settings.engine)
    if engine is None and settings.engine == "native":
        raise UsageError(f"analysis.engine is native, but the native log scanner cannot be used: {why}")
    return engine


def read_fleet_ledger(scan: Scan, config: Config, window: Window, host: str | None) -> bool:
    """Feed the fleet's ledger events in the window (one host's, if `host`) to the scan; False, with the
    input's error saying why, if the database cannot be read (then this host's files are read instead).

    The events stream in, a page at a time (state.pg.fetch_events), into figures of their own that join the
    scan's only once the read is whole: a database lost halfway (past the one retry of a page fetch_events
    makes) leaves no half of the fleet's events counted beside this host's files."""
    info = InputInfo("fleet ledger (PostgreSQL)" + (f", host {host}" if host else ""), "ledger")
    db = fleet_database(config.store)
    if db is not None:
        from ..state.pg import fetch_events  # noqa: PLC0415 - psycopg only in fleet mode

        part = scan.tally.spawn()
        try:
            events = fetch_events(db, since=window.since, until=window.until, host=host)
            scan.read_stream(_JsonLines(events), info, part)
        except StateError as exc:
            mark_down(config.store, exc)
        else:
            scan.tally.merge(part)
            scan.inputs.append(info)
            return True
        info = InputInfo(info.path, info.source)  # what the failed read had counted is not this input's
    info.error = "fleet database unreachable: degraded; this host's own ledger was read instead"
    scan.inputs.append(info)
    return False


class _JsonLines:
    """Events as the ledger's lines (one JSON object each), read as a file is read (readinto): one event's
    line is held at a time, beside whatever page of events the iterator holds."""

    def __init__(self, events: Iterator[Mapping[str, Any]]) -> None:
        self._events = events
        self._line = memoryview(b"")

    def readinto(self, buffer: memoryview, /) -> int:
        filled = 0
        while filled < len(buffer):
            if not self._line:
                event = next(self._events, None)
                if event is None:
                    break
                self._line = memoryview((json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))
            n = min(len(buffer) - filled, len(self._line))
            buffer[filled : filled + n] = self._line[:n]
            self._line = self._line[n:]
            filled += n
        return filled


# --- the figures ----------------------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _counts(counter: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _per_key(table: Mapping[str, Mapping[str, int]], top: int, name: str) -> list[dict[str, Any]]:
    """Event counts per model (or target), most failures first. The failure share needs successes that name
    the model: the source documents' [SUCCESS] lines do not, so with none at all it is left out (null).
    A [FALLBACK] naming a model is its failed attempt (the chain moved on from it), so it is one of its failures."""
    rows: list[dict[str, Any]] = []
    named_successes = any(events.get("success", 0) for events in table.values())
    for key, events in table.items():
        failures = events.get("retry", 0) + events.get("failed", 0) + events.get("fallback", 0)
        attempts = (failures + events.get("success", 0)) if named_successes else 0
        rows.append(
            {
                name: key,
                "retry": events.get("retry", 0),
                "success": events.get("success", 0),
                "failed": events.get("failed", 0),
                "fallback": events.get("fallback", 0),
                "failure_share": _rate(failures, attempts),
            }
        )
    rows.sort(key=lambda r: (-(r["retry"] + r["failed"] + r["fallback"]), -r["success"], r[name]))
    return rows[:top]


def build_report(
    tally: Tally, scan: Scan, config: Config, window: Window, *, task: str | None = None
) -> dict[str, Any]:
    settings = config.analysis
    top = settings.top
    events = tally.events
    # A workflow step's compensation and fallback commands end no run of their own (Tally._count).
    succeeded = events["success"] - tally.not_runs["success"]
    failed = max(0, events["failed"] - tally.not_runs["failed"])
    finished = succeeded + failed
    failures_total = sum(tally.reasons.values()) + tally.let_go_events["reasons"]

    most_retried = sorted(
        ((name, s) for name, s in tally.tasks.items() if s.retries),
        key=lambda item: (-item[1].retries, item[0]),
    )[:top]
    slowest = sorted(
        ((name, s) for name, s in tally.tasks.items() if s.timed),
        key=lambda item: (-(item[1].total_s / item[1].timed), item[0]),
    )[:top]

    peak_hour, peak = (None, 0)
    if tally.trips_by_hour:
        peak_hour, peak = max(tally.trips_by_hour.items(), key=lambda kv: (kv[1], -kv[0]))
    busiest = sorted(tally.trips_by_hour.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    report: dict[str, Any] = {
        "window": {
            "since": _iso(window.since),
            "until": _iso(window.until),
            "recent": [_iso(window.recent[0]), _iso(window.recent[1])] if window.recent else None,
            "task": task,
        },
        "inputs": [
            {
                "path": i.path,
                "source": i.source,
                "lines": i.lines,
                "malformed": i.malformed,
                "first": _iso(i.first),
                "last": _iso(i.last),
                **({"error": i.error} if i.error else {}),
            }
            for i in scan.inputs
        ],
        "engine": scan.engine.name if scan.engine else "python",  # which fast path read the lines (same figures)
        "lines": {
            "total": tally.lines,
            "malformed": tally.malformed,
            "blank": tally.blank,
            "outside_window": tally.outside,
            "other_tasks": tally.other_tasks,
            "own_events": tally.own_events,
        },
        "events": {name: events[name] for name in sorted(events, key=lambda e: (-events[e], e))},
        "other_tags": _counts(tally.other_tags),
        "runs": {
            "finished": finished,
            "succeeded": succeeded,
            "failed": failed,
            "success_rate": _rate(succeeded, finished),
            "retries": events["retry"],
            "retries_per_run": _rate(events["retry"], finished),
        },
        "failure_reasons": [
            {"reason": r, "count": n, "share": _rate(n, failures_total)}
            for r, n in sorted(tally.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        ],
        "failure_reasons_total": failures_total,
        "fallback": {
            "events": events["fallback"],
            "rate": _rate(events["fallback"], finished),
            "reasons": _counts(tally.fallback_reasons),
        },
        "compensation": {
            # The second document's compensation_trigger_rate: workflow runs that had to undo steps, per
            # finished run. The document gives it no alert rule, so none is raised.
            "triggered": tally.compensations["started"],
            "steps_compensated": tally.compensations["compensated"],
            "steps_failed": tally.compensations["failed"],
            "rate": _rate(tally.compensations["started"], finished),
        },
        "models": _per_key(tally.by_model, top, "model"),
        "targets": _per_key(tally.by_target, top, "target"),
        "tasks": {
            "count": len(tally.tasks),
            "folded": tally.tasks_folded,
            "folded_max_events": tally.folded_max_events,
            "most_retried": [
                {
                    "task": name,
                    "retries": s.retries,
                    "runs": s.successes + max(0, s.failures),
                    "failed": max(0, s.failures),
                    "retries_per_run": _rate(s.retries, s.successes + max(0, s.failures)),
                }
                for name, s in most_retried
            ],
            "slowest": [
                {
                    "task": name,
                    "runs": s.timed,
                    "mean_s": round(s.total_s / s.timed, 3),
                    "max_s": round(s.max_s, 3),
                }
                for name, s in slowest
            ],
        },
        "durations": {
            "timed_runs": tally.timed,
            "mean_s": round(tally.total_s / tally.timed, 3) if tally.timed else None,
        },
        "breakers": {
            "trips": sum(tally.trips_by_hour.values()) + tally.let_go_events["trips_by_hour"],
            "max_per_hour": peak,
            "peak_hour": _iso(peak_hour * 3600) if peak_hour is not None else None,
            "by_target": _counts(tally.trips_by_target),
            "busiest_hours": [{"hour": _iso(h * 3600), "trips": n} for h, n in busiest],
        },
        "openclaw": _openclaw(tally, top),
        "unclassified": _unclassified(tally, top),
        # Per table keyed by a line's words (models, reasons, tags, ...): the keys let go to bound memory.
        "let_go": {
            name: {"keys": n, "events": tally.let_go_events[name]} for name, n in sorted(tally.let_go.items()) if n
        },
    }
    report["alerts"] = alerts(report, tally, config)
    report["ok"] = not report["alerts"]
    return {"ok": report.pop("ok"), **report}


def _chain(tally: Tally, chain: oc.Failure) -> dict[str, Any]:
    red = tally.redactor.text
    return {
        "time": chain.time,
        "run_id": chain.run_id,
        "fallback_configured": chain.fallback_configured,
        "single_model": chain.fallback_configured is True and len(chain.steps) <= 1,
        "models": [
            {
                "model": step.model,
                "status": step.status,
                "reason": step.reason,
                "error_class": tally.openclaw_class(step.error, step.status, step.reason),
                "error": red(step.error)[:300],
            }
            for step in chain.steps
        ],
        "summary": red(chain.summary),
    }


def _openclaw(tally: Tally, top: int) -> dict[str, Any]:
    """OpenClaw's own failures: per failed turn, per exhausted chain (each model tried), per cron job, per
    failed CLI command, and every other ERROR line."""
    summary = tally.openclaw_summary()
    red = tally.redactor.text
    return {
        "lines": tally.openclaw_lines,
        "levels": _counts(tally.openclaw_levels),
        "failed_turns": len(summary.turns),
        "lane_error_lines": summary.lane_lines,
        "fallback_exhausted": len(summary.chains),
        "single_model_chains": len(summary.single_model_chains()),
        "cron_failed": summary.cron_runs,
        "cron_jobs_failing": len(summary.cron),
        "skill_invalid": len(summary.skills),
        "cli_failed": len(summary.cli),
        "cli_error_lines": summary.cli_lines,
        "other_errors": len(summary.errors),
        "not_grouped": tally.openclaw_dropped,
        "turns": [
            {
                "time": t.time,
                "error": red(t.error)[:300],
                "lanes": t.lanes,
                "lines": t.lines,
                "chain": _chain(tally, t.chain) if t.chain else None,
            }
            for t in summary.turns[-top:]
        ],
        "chains": [_chain(tally, c) for c in summary.chains[-top:]],
        "cron_jobs": [
            {
                "job": j.job,
                "job_id": j.job_id,
                "failed_runs": j.runs,
                "first": j.first,
                "last": j.last,
                "last_error": red(j.last_error)[:300],
                "errors": {red(e)[:300]: n for e, n in j.errors.items()},
                "diagnostics": red(j.diagnostics)[:500] if j.diagnostics else None,
            }
            for j in summary.cron[:top]
        ],
        "skills": [
            {"time": f.time, "file": f.detail.get("file"), "error": red(f.error)[:300]} for f in summary.skills[-top:]
        ],
        "cli": [
            {
                "time": f.time,
                "error": red(f.error)[:300],
                "lines": [red(str(m))[:300] for m in f.detail.get("messages", [])],
            }
            for f in summary.cli[-top:]
        ],
        "errors": [
            {"time": f.time, "subsystem": f.detail.get("subsystem"), "error": red(f.error)[:300]}
            for f in summary.errors[-top:]
        ],
    }


# --- alerts -----------------------------------------------------------------------------------------------------


def alerts(report: Mapping[str, Any], tally: Tally, config: Config) -> list[dict[str, Any]]:
    """The second source document's alert rules over the report's figures, thresholds from skill.yaml."""
    s = config.analysis
    out: list[dict[str, Any]] = []
    runs = report["runs"]
    # The rates are judged exactly, not as the report rounds them: 22,499 of 25,000 runs (89.996%) rounds to 0.9
    # there, and is under 90% all the same.
    finished = runs["finished"]
    success = runs["succeeded"] / finished if finished else None
    if finished >= s.min_runs and success is not None and success < s.success_rate_p1:
        out.append(
            {
                "priority": "P1",
                "rule": "success_rate",
                "value": success,
                "threshold": s.success_rate_p1,
                "message": f"success rate {_pct_apart(success, s.success_rate_p1)} is under {s.success_rate_p1:.0%} "
                f"({runs['succeeded']} of {finished} finished runs succeeded)",
            }
        )
    breakers = report["breakers"]
    if breakers["max_per_hour"] > s.breaker_trips_per_hour_p2:
        over = sum(1 for n in tally.trips_by_hour.values() if n > s.breaker_trips_per_hour_p2)
        out.append(
            {
                "priority": "P2",
                "rule": "breaker_trips_per_hour",
                "value": breakers["max_per_hour"],
                "threshold": s.breaker_trips_per_hour_p2,
                "message": f"{breakers['max_per_hour']} breaker trips in the hour from {breakers['peak_hour']} "
                f"(more than {s.breaker_trips_per_hour_p2}; {over} such hour(s))",
            }
        )
    rate = report["fallback"]["events"] / finished if finished else None
    if finished >= s.min_runs and rate is not None and rate > s.fallback_rate_p2:
        out.append(
            {
                "priority": "P2",
                "rule": "fallback_rate",
                "value": rate,
                "threshold": s.fallback_rate_p2,
                "message": f"fallback used {report['fallback']['events']} times in {finished} finished runs "
                f"({_pct_apart(rate, s.fallback_rate_p2)}, over {s.fallback_rate_p2:.0%})",
            }
        )
    out += openclaw_alerts(report["openclaw"], s)
    slow = slow_tasks(tally, config)
    if slow:
        worst = slow[0]
        out.append(
            {
                "priority": "P3",
                "rule": "mean_time",
                "value": worst["factor"],
                "threshold": s.mean_time_factor_p3,
                "tasks": slow[: s.top],
                "message": f"{len(slow)} task(s) slower than {s.mean_time_factor_p3:g}x their baseline lately; "
                f"{worst['task']}: {worst['recent_mean_s']:g}s against {worst['baseline_s']:g}s "
                f"({worst['baseline']})",
            }
        )
    return out


def openclaw_alerts(oc_: Mapping[str, Any], s: AnalysisSettings) -> list[dict[str, Any]]:
    """Alerts for OpenClaw's own failures (thresholds `analysis.openclaw_*`, 0 turns a rule off)."""
    out: list[dict[str, Any]] = []
    chains = oc_["fallback_exhausted"]
    if s.openclaw_chains_exhausted_p1 and chains >= s.openclaw_chains_exhausted_p1:
        last = oc_["chains"][-1] if oc_["chains"] else None
        models = ", ".join(f"{m['model']} ({m['error_class'] or m['reason']})" for m in last["models"]) if last else "?"
        out.append(
            {
                "priority": "P1",
                "rule": "openclaw_chain_exhausted",
                "value": chains,
                "threshold": s.openclaw_chains_exhausted_p1,
                "message": f"OpenClaw: every model of the agent's chain failed in {chains} turn(s); last: {models}"
                + ("; fallbacks are configured but only one model was tried" if oc_["single_model_chains"] else ""),
            }
        )
    turns = oc_["failed_turns"]
    if s.openclaw_failed_turns_p2 and turns >= s.openclaw_failed_turns_p2:
        out.append(
            {
                "priority": "P2",
                "rule": "openclaw_failed_turns",
                "value": turns,
                "threshold": s.openclaw_failed_turns_p2,
                "message": f"OpenClaw: {turns} agent turn(s) failed ({oc_['lane_error_lines']} lane error lines)",
            }
        )
    failing = [
        j
        for j in oc_["cron_jobs"]
        if s.openclaw_cron_failed_runs_p2 and j["failed_runs"] >= s.openclaw_cron_failed_runs_p2
    ]
    if failing:
        jobs = ", ".join(f"{j['job']} {j['failed_runs']}x" for j in failing)
        out.append(
            {
                "priority": "P2",
                "rule": "openclaw_cron_failed",
                "value": max(j["failed_runs"] for j in failing),
                "threshold": s.openclaw_cron_failed_runs_p2,
                "jobs": failing,
                "message": f"OpenClaw: {len(failing)} cron job(s) failing: {jobs}",
            }
        )
    if s.openclaw_skill_invalid_p3 and oc_["skill_invalid"] >= s.openclaw_skill_invalid_p3:
        out.append(
            {
                "priority": "P3",
                "rule": "openclaw_skill_invalid",
                "value": oc_["skill_invalid"],
                "threshold": s.openclaw_skill_invalid_p3,
                "message": f"OpenClaw skipped {oc_['skill_invalid']} invalid skill(s)",
            }
        )
    return out


def slow_tasks(tally: Tally, config: Config) -> list[dict[str, Any]]:
    """P3: tasks whose mean over the recent period exceeds the factor times their baseline, worst first."""
    s = config.analysis
    out: list[dict[str, Any]] = []
    for name, stats in tally.tasks.items():
        if stats.recent_timed < s.min_runs:
            continue
        recent_mean = stats.recent_total_s / stats.recent_timed
        if name in s.baselines:
            baseline, source = s.baselines[name], "configured"
        else:
            earlier = stats.timed - stats.recent_timed
            if earlier < s.min_runs:
                continue
            baseline, source = (stats.total_s - stats.recent_total_s) / earlier, f"mean of {earlier} earlier runs"
        if baseline > 0 and recent_mean > s.mean_time_factor_p3 * baseline:
            out.append(
                {
                    "task": name,
                    "recent_runs": stats.recent_timed,
                    "recent_mean_s": round(recent_mean, 3),
                    "baseline_s": round(baseline, 3),
                    "baseline": source,
                    "factor": round(recent_mean / baseline, 2),
                }
            )
    out.sort(key=lambda r: (-r["factor"], r["task"]))
    return out


# --- unclassified errors and the rules that would classify them ---------------------------------------------

_PLACEHOLDERS = {
    "<url>": r"\S+",
    "<time>": r"\S+",
    "<id>": r"[0-9a-fA-F-]+",
    "<path>": r"\S+",
    '"<text>"': r'"[^"]*"',
    "'<text>'": r"'[^']*'",
    "<hex>": r"[0-9a-fA-F]+",
    "<n>": r"\d+(?:\.\d+)?",
}
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in sorted(_PLACEHOLDERS, key=len, reverse=True)))
# Words that point at a class, strongest first. Only a guess for a person to check: never applied.
# Whole words where a short one sits inside common ones: "authored", "generate", "tokenizer".
_CLASS_HINTS = (
    (
        "auth",
        r"\bauth(?:entic\w*|ori[sz]\w*)?\b|credential|api[ _-]?key|unauthori[sz]ed|forbidden|permission denied"
        r"|\b40[13]\b|\btoken\b",
    ),
    ("rate_limit", r"\brate(?:[ _-]?limit\w*)?\b|quota|too many|throttl|\b429\b"),
    ("timeout", r"time[ds]? ?out|deadline"),
    ("resource", r"memory|\boom\b|disk|no space|gpu|cuda"),
    ("transient", r"connect|reset|refused|unavailable|temporar|network|unreachable|\b50[0-4]\b|gateway|eof"),
    ("format", r"json|format|pars(e|ing)|schema|malformed|decod"),
    ("permanent", r"not found|no such|invalid|syntax|unsupported|required|exit(ed)?( with)? code|usage"),
)


_META = re.compile(r"([.^$*+?{}\[\]\\|()])")


def _escape(text: str) -> str:
    """re.escape for people: only the characters that mean something in a pattern are escaped."""
    return _META.sub(r"\\\1", text)


def suggest_rule(sig: Signature) -> dict[str, Any] | None:
    """A classify.extra_rules entry whose pattern matches this signature's messages, or None if too vague."""
    literal = _PLACEHOLDER.sub(" ", sig.text)
    if len(re.sub(r"[\W_]+", "", literal)) < 4 or sig.text in ERROR_CLASSES:
        return None  # nothing distinctive once the variable parts are masked, or a bare `reason=unknown`
    pieces = []
    last = 0
    for m in _PLACEHOLDER.finditer(sig.text):
        pieces.append(_escape(sig.text[last : m.start()]))
        pieces.append(_PLACEHOLDERS[m.group(0)])
        last = m.end()
    pieces.append(_escape(sig.text[last:]))
    pattern = "(?i)" + "".join(pieces).strip()
    # Long messages: the first 120 characters' worth of pattern is distinctive enough and stays readable.
    if len(pattern) > 160:
        pattern = pattern[:160]
        pattern = pattern[: pattern.rfind(" ")] if " " in pattern[40:] else pattern
        pattern = pattern.rstrip("\\")
    try:
        compiled = re.compile(pattern)
    except re.error:
        compiled = None
    if compiled is None or not all(compiled.search(sample) for sample in sig.samples or [sig.text]):
        words = max(re.split(r"<[a-z]+>|\"<text>\"|'<text>'", sig.text), key=len).strip()
        pattern = "(?i)" + _escape(words)
    lowered = sig.text.lower()
    guess = next((cls for cls, hint in _CLASS_HINTS if re.search(hint, lowered)), "unknown")
    name = "-".join(re.findall(r"[a-z0-9]+", _PLACEHOLDER.sub(" ", lowered))[:5])[:60].strip("-") or "unclassified"
    rule: dict[str, Any] = {"name": f"log-{name}", "class": guess, "pattern": pattern}
    if sig.status is not None:
        rule["status"] = [sig.status]
    return rule


def rule_yaml(rule: Mapping[str, Any]) -> str:
    """The rule as a config.yaml snippet; the class is a guess from its words."""
    pattern = "'" + str(rule["pattern"]).replace("'", "''") + "'"
    lines = [
        "classify:",
        "  extra_rules:",
        f"    - name: {rule['name']}",
        f"      class: {rule['class']}        # guessed from its words: check it",
        f"      pattern: {pattern}",
    ]
    if "status" in rule:
        lines.append(f"      status: {list(rule['status'])}")
    return "\n".join(lines) + "\n"


def _unclassified(tally: Tally, top: int) -> dict[str, Any]:
    ranked = sorted(tally.unclassified.values(), key=lambda sig: (-sig.count, sig.text))
    rows = []
    for sig in ranked[:top]:
        rule = suggest_rule(sig)
        rows.append(
            {
                "signature": sig.text,
                "count": sig.count,
                "sources": sorted(sig.sources),
                "samples": list(sig.samples),
                "suggested_rule": rule,
                "yaml": rule_yaml(rule) if rule else None,
            }
        )
    return {
        "count": sum(sig.count for sig in tally.unclassified.values()) + tally.unclassified_other,
        "signatures": rows,
        "more_signatures": max(0, len(ranked) - top),
        "not_grouped": tally.unclassified_other,
    }


# --- for people -------------------------------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _things(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _pct_apart(value: float, threshold: float) -> str:
    """`value` as a percentage with as many decimals as it takes to differ from `threshold` shown alike (at
    most 6): an alert's rate past its line never reads as the line itself (`89.996% is under 90%`)."""
    for places in range(1, 7):
        shown = f"{value:.{places}%}"
        if shown != f"{threshold:.{places}%}":
            return shown
    return f"{value:.6%}"


def render_text(report: Mapping[str, Any]) -> str:
    """The report as text for a terminal or a chat message."""
    out: list[str] = []
    w = report["window"]
    span = f"{w['since'] or 'the beginning'} .. {w['until'] or 'now'}"
    lines = report["lines"]
    out.append(f"Log analysis, {span}: {_n(lines['total'])} lines from {len(report['inputs'])} input(s)")
    if w["task"]:
        out.append(f"  task {w['task']} only ({_n(lines['other_tasks'])} events of other tasks left out)")
    if lines.get("own_events"):
        out.append(f"  {_n(lines['own_events'])} events of self-heal's own calls (self-heal.*) left out")
    for item in report["inputs"]:
        if item.get("error"):
            out.append(f"  could not read {item['path']}: {item['error']}")
    if report["alerts"]:
        out.append("")
        out.append("ALERTS")
        for alert in report["alerts"]:
            out.append(f"  {alert['priority']} {alert['message']}")
            for row in alert.get("tasks", [])[1:]:
                out.append(f"     {row['task']}: {row['recent_mean_s']:g}s against {row['baseline_s']:g}s")
    runs = report["runs"]
    per_run = "-" if runs["retries_per_run"] is None else f"{runs['retries_per_run']:.2f}"
    out.append("")
    out.append(
        f"Runs: {_n(runs['finished'])} finished, {_pct(runs['success_rate'])} succeeded; "
        f"{_n(runs['retries'])} retries ({per_run} per run); "
        f"fallback {_n(report['fallback']['events'])} times ({_pct(report['fallback']['rate'])} of runs)"
    )
    comp = report["compensation"]
    if comp["triggered"]:
        out.append(
            f"Compensation triggered {_n(comp['triggered'])} times ({_pct(comp['rate'])} of runs): "
            f"{_n(comp['steps_compensated'])} steps undone, {_n(comp['steps_failed'])} undo(s) failed"
        )
    if report["durations"]["mean_s"] is not None:
        mean, timed = report["durations"]["mean_s"], report["durations"]["timed_runs"]
        out.append(f"Mean run time {mean:.1f}s over {_n(timed)} successful runs")
    if report["failure_reasons"]:
        out.append("Top failure reasons ([RETRY] and [FAILED]):")
        out.extend(f"  - {r['reason']}: {_n(r['count'])} ({_pct(r['share'])})" for r in report["failure_reasons"])
    for title, key, name in (("By model", "models", "model"), ("By target", "targets", "target")):
        if report[key]:
            out.append(f"{title}:")
            out.extend(
                f"  - {r[name]}: {r['success']} ok, {r['retry']} retried, {r['failed']} failed, "
                f"{r['fallback']} fell back"
                + (f" ({_pct(r['failure_share'])} of attempts failed)" if r["failure_share"] is not None else "")
                for r in report[key]
            )
    tasks = report["tasks"]
    if tasks["most_retried"]:
        out.append("Most retried tasks:")
        out.extend(
            f"  - {r['task']}: {r['retries']} retries, {r['runs']} runs, {r['failed']} failed"
            for r in tasks["most_retried"]
        )
    if tasks["slowest"]:
        out.append("Slowest tasks (mean of successful runs):")
        out.extend(
            f"  - {r['task']}: {r['mean_s']:g}s (max {r['max_s']:g}s, {r['runs']} runs)" for r in tasks["slowest"]
        )
    if tasks["folded"]:
        out.append(
            f"  ({tasks['folded']} less active tasks with at most {tasks['folded_max_events']} events each "
            "were let go to bound memory: their figures may be incomplete)"
        )
    if report["let_go"]:
        out.append(
            "  (to bound memory, the least frequent keys were let go: "
            + ", ".join(f"{_n(v['keys'])} of {name} ({_n(v['events'])} events)" for name, v in report["let_go"].items())
            + "; the totals stay exact)"
        )
    b = report["breakers"]
    if b["trips"]:
        by = ", ".join(f"{t} {n}" for t, n in b["by_target"].items())
        out.append(
            f"Breakers: {b['trips']} trips ({by}); at most {b['max_per_hour']} in the hour from {b['peak_hour']}"
        )
    oc_ = report["openclaw"]
    if oc_["lines"]:
        out.append(
            f"OpenClaw: {_n(oc_['lines'])} lines ({', '.join(f'{k} {v}' for k, v in oc_['levels'].items())}); "
            f"{_things(oc_['failed_turns'], 'failed agent turn')} ({oc_['lane_error_lines']} lane error lines), "
            f"{_things(oc_['fallback_exhausted'], 'exhausted fallback chain')}, "
            f"{_things(oc_['cron_failed'], 'failed cron run')} in {_things(oc_['cron_jobs_failing'], 'job')}, "
            f"{_things(oc_['cli_failed'], 'failed CLI command')}, {_things(oc_['skill_invalid'], 'invalid skill')}"
            + (f", {_things(oc_['other_errors'], 'other error')}" if oc_["other_errors"] else "")
        )
        for chain in oc_["chains"]:
            tried = "; ".join(
                f"{m['model']}: {m['error_class'] or m['reason'] or '?'}, status {m['status']}" for m in chain["models"]
            )
            out.append(f"  chain exhausted {chain['time']}: {tried}")
        for job in oc_["cron_jobs"]:
            out.append(
                f"  cron job {job['job']}: {job['failed_runs']} failed run(s) {job['first']} .. {job['last']}: "
                f"{job['last_error']}" + (f"; OpenClaw's diagnosis: {job['diagnostics']}" if job["diagnostics"] else "")
            )
        for cli in oc_["cli"]:
            out.append(f"  CLI command failed {cli['time']}: {cli['error']}")
        for err in oc_["errors"]:
            out.append(f"  error {err['time']} ({err['subsystem'] or 'openclaw'}): {err['error']}")
    unc = report["unclassified"]
    if unc["count"]:
        out.append(
            f"Unclassified errors: {_n(unc['count'])} in {len(unc['signatures']) + unc['more_signatures']} shape(s)"
        )
        for row in unc["signatures"]:
            out.append(f"  - {row['count']}x {row['signature']}  [{', '.join(row['sources'])}]")
            if row["yaml"]:
                out.append("    a rule for config.yaml (not applied; check the class first):")
                out.extend("      " + line for line in row["yaml"].splitlines())
    out.append(
        f"Lines: {_n(lines['total'])} read, {_n(lines['malformed'])} malformed, {_n(lines['blank'])} blank, "
        f"{_n(lines['outside_window'])} outside the window"
    )
    # Log lines are an attacker's text: their control sequences (a title, a screen clear, a hyperlink) are
    # shown, not obeyed (state/inert.py). The JSON report keeps them, escaped by the encoder.
    return inert("\n".join(out)) + "\n"


__all__ = ["analyze", "build_report", "default_inputs", "make_window", "parse_when", "render_text", "suggest_rule"]
