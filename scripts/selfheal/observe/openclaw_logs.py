"""Reading OpenClaw's own logs: where they are, what a line says, and which lines are failures.

OpenClaw writes JSON lines (tslog): `time`, `message`, numbered arguments (`"0"` names the subsystem or
module as a JSON string, `"1"` is usually the structured object) and `_meta.logLevelName`. By default
they go to /tmp/openclaw/openclaw-YYYY-MM-DD.log, or to `logging.file` of ~/.openclaw/openclaw.json.

The failures worth acting on, as OpenClaw 2026.9 writes them:
* `lane task error: lane=... durationMs=... error="..."` (ERROR): an agent turn failed;
* `model fallback decision` with `fallbackStepFinalOutcome: "chain_exhausted"` (WARN): every model of
  the agent's chain failed, and `fallbackConfigured` says whether there was any fallback at all;
* `cron: job run returned error status` (WARN): a cron job failed (logged more than once per run: one
  failure per job and trace);
* `Skipping invalid skill.` (WARN): a SKILL.md OpenClaw refused to load;
* `[openclaw] Reason: ...` (ERROR): why a CLI command failed.

Everything here is read-only and never raises on a bad line: a line that is not an OpenClaw JSON object
is counted by the caller as malformed and skipped.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from ..state.root import MAX_LINE_BYTES, iter_lines

DEFAULT_LOG_DIR = Path("/tmp/openclaw")  # noqa: S108 - where OpenClaw itself writes, read only
LANE_ERROR = "lane_error"
FALLBACK_EXHAUSTED = "fallback_exhausted"
CRON_FAILED = "cron_failed"
SKILL_INVALID = "skill_invalid"
CLI_FAILED = "cli_failed"
FAILURE_KINDS = (LANE_ERROR, FALLBACK_EXHAUSTED, CRON_FAILED, SKILL_INVALID, CLI_FAILED)

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass(frozen=True)
class Record:
    """One OpenClaw log line, parsed."""

    time: str
    level: str
    subsystem: str | None
    message: str
    data: Mapping[str, Any]
    trace: str | None = None


@dataclass(frozen=True)
class Failure:
    """A failure OpenClaw logged, with what self-heal needs to explain it."""

    kind: str
    time: str
    summary: str  # one line for a report
    error: str  # the error text itself (what a signature is computed from)
    key: str  # equal for log lines that describe the same failure (a cron run logged twice)
    status: int | None = None  # an HTTP status, when OpenClaw gave one
    reason: str | None = None  # OpenClaw's own reason word (auth, rate_limit, ...), when given
    model: str | None = None
    job: str | None = None
    fallback_configured: bool | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def _subsystem(first: Any) -> str | None:
    if isinstance(first, str) and first.startswith("{"):
        try:
            named = json.loads(first)
        except ValueError:
            return None
        if isinstance(named, dict):
            value = named.get("subsystem") or named.get("module")
            return str(value) if value else None
    return None


def parse(obj: Any) -> Record | None:
    """A Record from one decoded JSON line, or None if it is not an OpenClaw (tslog) line."""
    if not isinstance(obj, dict):
        return None
    meta = obj.get("_meta")
    if not isinstance(meta, dict) or "logLevelName" not in meta:
        return None
    data = obj.get("1")
    message = obj.get("message")
    if not isinstance(message, str):
        message = str(obj.get("2") or obj.get("0") or "")
    return Record(
        time=str(obj.get("time") or meta.get("date") or ""),
        level=str(meta.get("logLevelName")),
        subsystem=_subsystem(obj.get("0")),
        message=message,
        data=data if isinstance(data, dict) else {},
        trace=obj.get("traceId") if isinstance(obj.get("traceId"), str) else None,
    )


def parse_line(line: bytes | str) -> Record | None:
    try:
        return parse(json.loads(line))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _kv(text: str) -> dict[str, str]:
    out = {}
    for key, raw in _KV.findall(text):
        value = raw
        if raw.startswith('"'):
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw[1:-1]
        out[key] = value
    return out


def failure(record: Record) -> Failure | None:
    """The failure this line reports, or None when it reports none of the known kinds."""
    msg, data = record.message, record.data
    if msg.startswith("lane task error"):
        fields = _kv(msg)
        error = fields.get("error", msg)
        lane = fields.get("lane", "?")
        return Failure(
            LANE_ERROR,
            record.time,
            f"agent turn failed in lane {lane}: {error}",
            error,
            key=f"lane:{lane}:{record.time}",
            detail={"lane": lane, "duration_ms": fields.get("durationMs"), "error_name": data.get("errorName")},
        )
    if data.get("event") == "model_fallback_decision" and data.get("fallbackStepFinalOutcome") == "chain_exhausted":
        model = data.get("requestedModel") or data.get("candidateModel")
        provider = data.get("requestedProvider") or data.get("candidateProvider")
        full = f"{provider}/{model}" if provider and model else model
        error = str(data.get("errorPreview") or data.get("fallbackStepFromFailureDetail") or data.get("reason") or "")
        configured = data.get("fallbackConfigured")
        summary = f"model fallback chain exhausted at {full} ({data.get('reason')}, status {data.get('status')})"
        if configured is False:
            summary += "; no fallback models are configured"
        return Failure(
            FALLBACK_EXHAUSTED,
            record.time,
            summary,
            error,
            key=f"fallback:{data.get('runId') or record.time}",
            status=data.get("status") if isinstance(data.get("status"), int) else None,
            reason=str(data.get("reason")) if data.get("reason") else None,
            model=str(full) if full else None,
            fallback_configured=configured if isinstance(configured, bool) else None,
            detail={k: data.get(k) for k in ("runId", "sessionId", "attempt", "total", "errorHash") if k in data},
        )
    if msg.startswith("cron: job run returned error status") or (
        record.subsystem == "cron" and record.level in ("WARN", "ERROR") and "error" in data and "jobId" in data
    ):
        job = str(data.get("jobName") or data.get("jobId") or "?")
        error = str(data.get("error") or msg)
        diagnostics = data.get("diagnosticsSummary")
        return Failure(
            CRON_FAILED,
            record.time,
            f"cron job {job} failed: {error}",
            error,
            key=f"cron:{data.get('jobId')}:{record.trace or record.time}",
            job=job,
            detail={"job_id": data.get("jobId"), "diagnostics": diagnostics}
            if diagnostics
            else {"job_id": data.get("jobId")},
        )
    if msg.startswith("Skipping invalid skill") and data.get("filePath"):
        error = str(data.get("error") or "invalid skill")
        return Failure(
            SKILL_INVALID,
            record.time,
            f"OpenClaw skipped the skill at {data.get('filePath')}: {error}",
            error,
            key=f"skill:{data.get('filePath')}:{error}",
            detail={"file": data.get("filePath"), "source": data.get("source")},
        )
    if record.level in ("ERROR", "FATAL") and msg.startswith("[openclaw] Reason: "):
        error = msg[len("[openclaw] Reason: ") :]
        return Failure(CLI_FAILED, record.time, f"openclaw command failed: {error}", error, key=f"cli:{record.time}")
    return None


def failures(records: Iterable[Record]) -> list[Failure]:
    """The distinct failures in these records, in log order (a failure logged twice counts once)."""
    seen: set[str] = set()
    out = []
    for record in records:
        found = failure(record)
        if found is not None and found.key not in seen:
            seen.add(found.key)
            out.append(found)
    return out


def timestamp(text: str) -> float | None:
    """Seconds since the epoch for OpenClaw's `2026-11-21T00:04:51.782+00:00` (or a trailing Z)."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- where the logs are ------------------------------------------------------------------------------------


def _loose_json(text: str) -> Any:
    """openclaw.json is JSON5 in practice (comments, trailing commas): enough of it to find logging.file."""
    try:
        return json.loads(text)
    except ValueError:
        stripped = re.sub(r"/\*.*?\*/", "", re.sub(r"(?m)^\s*//.*$", "", text), flags=re.S)
        stripped = re.sub(r",(\s*[}\]])", r"\1", stripped)
        try:
            return json.loads(stripped)
        except ValueError:
            return None


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("OPENCLAW_CONFIG_PATH"):
        return Path(env["OPENCLAW_CONFIG_PATH"]).expanduser()
    state = env.get("OPENCLAW_STATE_DIR")
    base = Path(state).expanduser() if state else Path(env.get("HOME") or Path.home()) / ".openclaw"
    return base / "openclaw.json"


def read_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """~/.openclaw/openclaw.json as a dict ({} when missing or unreadable)."""
    try:
        data = _loose_json(config_path(env).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def discover(env: Mapping[str, str] | None = None, *, log_dir: Path = DEFAULT_LOG_DIR) -> list[Path]:
    """OpenClaw's log files on this machine: `logging.file` if configured, and the default folder's."""
    found: list[Path] = []
    logging_conf = read_config(env).get("logging")
    configured = logging_conf.get("file") if isinstance(logging_conf, dict) else None
    if isinstance(configured, str) and configured:
        path = Path(configured).expanduser()
        found += sorted(path.parent.glob(path.name + "*")) if path.parent.is_dir() else []
    if log_dir.is_dir():
        found += sorted(log_dir.glob("openclaw-*.log*"))
    unique: dict[Path, None] = {}
    for path in found:
        if path.is_file():
            unique[path] = None
    return list(unique)


def open_log(path: Path) -> BinaryIO:
    """A log file for reading as bytes, gunzipped when it ends in .gz."""
    if path.suffix == ".gz":
        return typing.cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def read_records(paths: Iterable[Path], *, max_line: int = MAX_LINE_BYTES) -> Iterator[Record | None]:
    """Every line of these files as a Record, None for a line that is not one (for counting). A line over
    `max_line` bytes is one that is not: read past in pieces, never held whole."""
    for path in paths:
        with open_log(path) as fh:
            for line in iter_lines(fh, max_line):
                if line is None:
                    yield None
                elif line.strip():
                    yield parse_line(line)
