"""Reading OpenClaw's own logs: where they are, what a line says, and which lines are failures.

OpenClaw writes JSON lines (tslog): `time`, `message`, numbered arguments (`"0"` names the subsystem or
module as a JSON string, `"1"` is usually the structured object) and `_meta.logLevelName`. By default
they go to /tmp/openclaw/openclaw-YYYY-MM-DD.log, or to `logging.file` of ~/.openclaw/openclaw.json. It
uses /tmp/openclaw only when that is a folder (not a link) of its user's that no one else can write, else
`$TMPDIR/openclaw-<uid>`; a file over `logging.maxFileBytes` is renamed to its archive `<name>.1<.ext>` (up
to `.5`), and a `logging.file` named `openclaw-YYYY-MM-DD.log` rolls over to each day's date.

The failures worth acting on, as OpenClaw 2026.9 writes them:
* `lane task error: lane=... durationMs=... error="..."` (ERROR): an agent turn failed;
* `model fallback decision` with `fallbackStepFinalOutcome: "chain_exhausted"` (WARN): every model of
  the agent's chain failed, and `fallbackConfigured` says whether there was any fallback at all. The line
  names the last model tried (`candidateProvider/candidateModel`, with its own `status` and `reason`);
  `previousAttempts` lists the models tried before it, each with its status, reason and error; the earlier
  steps are also logged on their own (`fallbackStepFinalOutcome: "next_fallback"`, same `runId`);
* `cron: job run returned error status` (WARN): a cron job failed (logged more than once per run: one
  failure per job and trace), with `diagnosticsSummary`, OpenClaw's own diagnosis of the run;
* `Skipping invalid skill.` (WARN): a SKILL.md OpenClaw refused to load;
* an ERROR (or FATAL) line the CLI wrote to its console (the root `openclaw` logger,
  `_meta.path.method` `console.forwardedConsoleCall [as error]`, the text in `"0"`): a failed CLI command.
  `openclaw skills install` prints its own error (`archive is missing SKILL.md`); a command that throws
  prints OpenClaw's banner (`[openclaw] The CLI command failed.`, `[openclaw] Reason: ...`, then `Debug:`,
  `Try:` and `Help:` hints). The lines of one command, each within `CLI_GAP_S` of the one before, are one
  failed command, its error the `Reason:` text, else its first line that is not part of the banner;
* any other ERROR (or FATAL) line: an error no rule reads (`OTHER_ERROR`), kept with its text, so that every
  ERROR line OpenClaw logs is counted somewhere.

Everything here is read-only and never raises on a bad line: a line that is not an OpenClaw JSON object
is counted by the caller as malformed and skipped.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import re
import stat
import typing
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from ..core.classify import Classifier
from ..core.classify import Failure as Evidence
from ..core.openclaw_config import read_config
from ..errors import UsageError
from ..state.root import MAX_LINE_BYTES, iter_lines, loads

DEFAULT_LOG_DIR = Path("/tmp/openclaw")  # noqa: S108 - where OpenClaw itself writes, read only
LANE_ERROR = "lane_error"
FALLBACK_EXHAUSTED = "fallback_exhausted"
CRON_FAILED = "cron_failed"
SKILL_INVALID = "skill_invalid"
CLI_FAILED = "cli_failed"
OTHER_ERROR = "other_error"  # an ERROR line none of the kinds above reads: shown, never a fix record
FALLBACK_STEP = "fallback_step"  # one model of a chain failed and the next was tried: not a failure on its own
FAILURE_KINDS = (LANE_ERROR, FALLBACK_EXHAUSTED, CRON_FAILED, SKILL_INVALID, CLI_FAILED)
SESSION_LANE_PREFIX = "session:"
ERROR_LEVELS = ("ERROR", "FATAL")
CLI_BANNER = "[openclaw] "  # OpenClaw's own lines about a CLI command that threw
CLI_REASON = "[openclaw] Reason: "
CLI_GAP_S = 1.0  # a CLI error line this close to the one before is the same command's
TRUNCATED = "...(truncated)"  # what OpenClaw puts after a log message it cut at 4096 characters
# OpenClaw's own reason words, as error classes: used only where the words of the error say nothing (its
# `rate_limit` also covers a 402 whose text says "quota", which our classifier reads as fatal).
OPENCLAW_REASONS = {
    "auth": "auth",
    "auth_permanent": "auth",
    "billing": "fatal",
    "rate_limit": "rate_limit",
    "timeout": "timeout",
    "format": "format",
    "model_not_found": "permanent",
    "context_overflow": "permanent",
    "overloaded": "transient",
}

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
    console: bool = False  # written by the CLI to its console (console.error forwarded to the log)


@dataclass(frozen=True)
class Step:
    """One model of a fallback chain that failed: `provider/model`, its HTTP status and OpenClaw's reason word."""

    model: str
    status: int | None
    reason: str | None
    error: str


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
    lane: str | None = None
    duration_ms: int | None = None
    run_id: str | None = None
    steps: tuple[Step, ...] = ()  # a chain's models in the order tried, the last one included
    diagnostics: str | None = None  # OpenClaw's own diagnosis of a failed cron run


def _subsystem(first: Any) -> str | None:
    if isinstance(first, str) and first.startswith("{"):
        try:
            named = loads(first)
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
    elif message.endswith(TRUNCATED):  # the message is cut at 4096 characters; the argument it came from is whole
        kept = message.removesuffix(TRUNCATED)
        message = next(
            (v for k, v in obj.items() if kept and k.isdigit() and isinstance(v, str) and v.startswith(kept)), message
        )
    subsystem = _subsystem(obj.get("0"))
    return Record(
        time=str(obj.get("time") or meta.get("date") or ""),
        level=str(meta.get("logLevelName")),
        subsystem=subsystem,
        message=message,
        data=data if isinstance(data, dict) else {},
        trace=obj.get("traceId") if isinstance(obj.get("traceId"), str) else None,
        console=subsystem is None and _console(meta),
    )


def _console(meta: Mapping[str, Any]) -> bool:
    """Whether a line is the CLI's console output: OpenClaw forwards console.log/error to its root logger."""
    path = meta.get("path")
    method = path.get("method") if isinstance(path, dict) else None
    if isinstance(method, str):
        return method.startswith("console.")
    return meta.get("name") == "openclaw" and not meta.get("parentNames")


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
                value = loads(raw)
            except ValueError:
                value = raw[1:-1]
        out[key] = value
    return out


def _model_ref(provider: Any, model: Any) -> str | None:
    if provider and model:
        return f"{provider}/{model}"
    return str(model) if model else None


def _status(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _word(value: Any) -> str | None:
    return str(value) if value else None


def _steps(data: Mapping[str, Any], error: str) -> tuple[Step, ...]:
    """The models a fallback decision says were tried: `previousAttempts`, then the candidate itself."""
    steps = []
    previous = data.get("previousAttempts")
    for attempt in previous if isinstance(previous, list) else []:
        if not isinstance(attempt, dict):
            continue
        model = _model_ref(attempt.get("provider"), attempt.get("model"))
        if model:
            text = attempt.get("providerErrorMessagePreview") or attempt.get("errorPreview") or ""
            steps.append(Step(model, _status(attempt.get("status")), _word(attempt.get("reason")), str(text)))
    model = _model_ref(data.get("candidateProvider"), data.get("candidateModel")) or _model_ref(
        data.get("requestedProvider"), data.get("requestedModel")
    )
    if model:
        steps.append(Step(model, _status(data.get("status")), _word(data.get("reason")), error))
    return tuple(steps)


def _fallback(record: Record) -> Failure | None:
    data = record.data
    outcome = data.get("fallbackStepFinalOutcome")
    if outcome not in ("chain_exhausted", "next_fallback"):
        return None
    error = str(
        data.get("providerErrorMessagePreview")
        or data.get("errorPreview")
        or data.get("fallbackStepFromFailureDetail")
        or data.get("reason")
        or ""
    )
    steps = _steps(data, error)
    last = steps[-1] if steps else None
    run_id = _word(data.get("runId"))
    configured = data.get("fallbackConfigured")
    if outcome == "next_fallback":
        return Failure(
            FALLBACK_STEP,
            record.time,
            f"{last.model if last else '?'} failed, trying the next model",
            error,
            key=f"step:{run_id or record.time}:{data.get('attempt')}",
            status=last.status if last else None,
            reason=last.reason if last else None,
            model=last.model if last else None,
            run_id=run_id,
            lane=_word(data.get("lane")),
            steps=steps[-1:],
        )
    tried = ", ".join(
        f"{s.model} ({s.reason or '?'}, status {s.status if s.status is not None else '?'})" for s in steps
    )
    summary = f"every model of the fallback chain failed: {tried or '?'}"
    if configured is False:
        summary += "; no fallback models are configured"
    elif configured is True and len(steps) == 1:
        summary += "; fallbacks are configured but only one model was tried"
    return Failure(
        FALLBACK_EXHAUSTED,
        record.time,
        summary,
        error,
        key=f"fallback:{run_id or record.time}",
        status=last.status if last else None,
        reason=last.reason if last else None,
        model=last.model if last else None,
        fallback_configured=configured if isinstance(configured, bool) else None,
        detail={k: data.get(k) for k in ("runId", "sessionId", "attempt", "total", "errorHash") if k in data},
        lane=_word(data.get("lane")),
        run_id=run_id,
        steps=steps,
    )


def failure(record: Record) -> Failure | None:
    """The failure this line reports, or None when it reports none of the known kinds."""
    msg, data = record.message, record.data
    if msg.startswith("lane task error"):
        # `error="..."` is the line's last field, its text not escaped (`400 {"type":"error",...}`), and cut to
        # `...(truncated)` in a message over 4096 characters: it runs to the closing quote at the line's end.
        head, quoted, error = msg.partition(' error="')
        fields = _kv(head)
        error = (error[:-1] if error.endswith('"') else error) if quoted else msg
        lane = fields.get("lane", "?")
        duration = fields.get("durationMs", "")
        return Failure(
            LANE_ERROR,
            record.time,
            f"agent turn failed in lane {lane}: {error}",
            error,
            key=f"lane:{lane}:{record.time}",
            detail={"lane": lane, "duration_ms": fields.get("durationMs"), "error_name": data.get("errorName")},
            lane=lane,
            duration_ms=int(duration) if duration.isdigit() else None,
        )
    if data.get("event") == "model_fallback_decision":
        return _fallback(record)
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
            diagnostics=str(diagnostics) if diagnostics else None,
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
    if record.level not in ERROR_LEVELS:
        return None
    if record.console or msg.startswith(CLI_BANNER):
        # One line of a failed command's output; `summarize` makes the lines of one command one failure.
        error = msg[len(CLI_REASON) :] if msg.startswith(CLI_REASON) else msg
        return Failure(
            CLI_FAILED,
            record.time,
            f"openclaw command failed: {error}",
            error,
            key=f"cli:{record.time}:{msg}",
            detail={"message": msg},
        )
    error = msg
    extra = data.get("error")
    if isinstance(extra, str) and extra and extra not in msg:
        error = f"{msg}: {extra}" if msg else extra
    where = record.subsystem or "openclaw"
    return Failure(
        OTHER_ERROR,
        record.time,
        f"OpenClaw error ({where}): {error}",
        error,
        key=f"error:{record.time}:{where}:{msg}",
        detail={"subsystem": record.subsystem, "level": record.level},
    )


def failures(records: Iterable[Record]) -> list[Failure]:
    """The distinct failure lines in these records, in log order (a line logged twice counts once)."""
    seen: set[str] = set()
    out = []
    for record in records:
        found = failure(record)
        if found is not None and found.key not in seen:
            seen.add(found.key)
            out.append(found)
    return out


# -- from lines to failures: turns, chains and cron jobs ---------------------------------------------------

TURN_SLACK_S = 1.0  # a lane error this much before its session lane's turn started still belongs to that turn
CHAIN_TO_TURN_S = 5.0  # an exhausted chain logged this close to a failed turn with the same error is that turn's


@dataclass
class Turn:
    """One failed agent turn: the lane errors it logged (a session lane and the lane it ran in), its chain."""

    time: str
    error: str
    lanes: list[str]
    lines: int
    duration_ms: int | None = None
    chain: Failure | None = None


@dataclass
class CronJob:
    """One cron job's failed runs in the window."""

    job: str
    job_id: str | None
    runs: int
    first: str
    last: str
    errors: dict[str, int]
    last_error: str
    diagnostics: str | None


@dataclass
class Summary:
    """OpenClaw's failures counted the way a person counts them: per turn, per chain, per cron job."""

    turns: list[Turn]
    chains: list[Failure]  # exhausted chains, one per run
    cron: list[CronJob]
    skills: list[Failure]
    cli: list[Failure]  # failed CLI commands, one per command
    lane_lines: int  # `lane task error` lines (a failed turn logs two or more)
    cron_lines: int
    cli_lines: int = 0  # the CLI's error lines (a command that threw logs five)
    errors: list[Failure] = field(default_factory=list)  # every other ERROR line, one each (OTHER_ERROR)

    @property
    def cron_runs(self) -> int:
        return sum(job.runs for job in self.cron)

    def single_model_chains(self) -> list[Failure]:
        """Chains that had fallbacks configured and still tried one model only."""
        return [c for c in self.chains if c.fallback_configured is True and len(c.steps) <= 1]


def error_class(classifier: Classifier, error: str, status: int | None, reason: str | None) -> str | None:
    """The class of an OpenClaw failure by its own words and status, else by OpenClaw's reason word; None: unknown.

    OpenClaw's reason is the weaker evidence: it files a 402 whose text says "quota" under `rate_limit`,
    which waiting does not cure.
    """
    evidence = (
        Evidence.from_http(status, body=error) if status else Evidence.from_command(exit_code=None, stderr_tail=error)
    )
    found = classifier.classify(evidence, now=0)
    if not found.unclassified:
        return found.error_class
    return OPENCLAW_REASONS.get(reason or "")


def _ts(text: str) -> float:
    found = timestamp(text)
    return found if found is not None else 0.0


def summarize(found: Iterable[Failure]) -> Summary:
    """Group failure lines (in any order, duplicates allowed) into turns, chains and cron jobs."""
    unique: dict[str, Failure] = {}
    for f in found:
        unique.setdefault(f.key, f)
    ordered = sorted(unique.values(), key=lambda f: _ts(f.time))
    steps_by_run: dict[str, list[Step]] = {}
    for f in ordered:
        if f.kind == FALLBACK_STEP and f.run_id:
            steps_by_run.setdefault(f.run_id, []).extend(f.steps)
    chains = []
    for f in ordered:
        if f.kind != FALLBACK_EXHAUSTED:
            continue
        earlier = steps_by_run.get(f.run_id or "")
        # An older line with no previousAttempts: the run's next_fallback lines name the earlier steps.
        chains.append(_replace_steps(f, (*earlier, *f.steps)) if len(f.steps) <= 1 and earlier else f)
    turns = _turns([f for f in ordered if f.kind == LANE_ERROR], chains)
    cron: dict[str, CronJob] = {}
    cron_lines = 0
    for f in ordered:
        if f.kind != CRON_FAILED:
            continue
        cron_lines += 1
        job_id = str(f.detail.get("job_id")) if f.detail.get("job_id") else None
        entry = cron.get(job_id or f.job or "?")
        if entry is None:
            entry = cron[job_id or f.job or "?"] = CronJob(f.job or "?", job_id, 0, f.time, f.time, {}, f.error, None)
        entry.runs += 1
        entry.last = f.time
        entry.last_error = f.error
        entry.errors[f.error] = entry.errors.get(f.error, 0) + 1
        entry.diagnostics = f.diagnostics or entry.diagnostics
    return Summary(
        turns=turns,
        chains=chains,
        cron=sorted(cron.values(), key=lambda j: (-j.runs, j.job)),
        skills=[f for f in ordered if f.kind == SKILL_INVALID],
        cli=_cli_commands([f for f in ordered if f.kind == CLI_FAILED]),
        lane_lines=sum(1 for f in ordered if f.kind == LANE_ERROR),
        cron_lines=cron_lines,
        cli_lines=sum(1 for f in ordered if f.kind == CLI_FAILED),
        errors=[f for f in ordered if f.kind == OTHER_ERROR],
    )


def _cli_commands(lines: list[Failure]) -> list[Failure]:
    """The CLI's error lines (in time order) as failed commands: a line within `CLI_GAP_S` of the one before
    is the same command's (a command that throws logs its own error, then OpenClaw's five banner lines)."""
    groups: list[list[Failure]] = []
    for f in lines:
        if groups and _ts(f.time) - _ts(groups[-1][-1].time) <= CLI_GAP_S:
            groups[-1].append(f)
        else:
            groups.append([f])
    return [_cli_command(group) for group in groups]


def _cli_command(group: list[Failure]) -> Failure:
    messages = [str(f.detail.get("message", f.error)) for f in group]
    reason = next((m[len(CLI_REASON) :] for m in messages if m.startswith(CLI_REASON)), None)
    own = next((m for m in messages if not m.startswith(CLI_BANNER)), None)
    error = reason or own or messages[0]
    return Failure(
        CLI_FAILED,
        group[0].time,
        f"openclaw command failed: {error}",
        error,
        key=f"cli:{group[0].time}",
        detail={"messages": messages},
    )


def _replace_steps(f: Failure, steps: tuple[Step, ...]) -> Failure:
    return replace(f, steps=steps)


def _turns(lane_errors: list[Failure], chains: list[Failure]) -> list[Turn]:
    """Lane errors as turns: a session lane's error takes in the inner lanes' errors of the same turn.

    OpenClaw runs a turn in its session lane, which queues it in a global lane (`main`, `cron`, ...); when
    the turn fails, the inner lane logs the error first, then the session lane, whose duration covers both.
    """
    turns: list[Turn] = []
    pending: list[tuple[float, Failure]] = []  # inner-lane errors not yet taken by a session lane
    for f in lane_errors:
        at = _ts(f.time)
        if not (f.lane or "").startswith(SESSION_LANE_PREFIX):
            pending.append((at, f))
            continue
        began = at - (f.duration_ms or 0) / 1000 - TURN_SLACK_S
        inner = [p for p in pending if _same_error(p[1].error, f.error) and began <= p[0] <= at]
        pending = [p for p in pending if p not in inner]
        lanes = [p[1].lane or "?" for p in inner] + [f.lane or "?"]
        turns.append(Turn(f.time, f.error, lanes, len(inner) + 1, f.duration_ms))
    turns += [Turn(p[1].time, p[1].error, [p[1].lane or "?"], 1, p[1].duration_ms) for p in pending]
    turns.sort(key=lambda t: _ts(t.time))
    free = list(chains)
    for turn in turns:
        at = _ts(turn.time)
        match = next(
            (c for c in free if abs(_ts(c.time) - at) <= CHAIN_TO_TURN_S and c.error and c.error in turn.error), None
        ) or next((c for c in free if abs(_ts(c.time) - at) <= CHAIN_TO_TURN_S), None)
        if match is not None:
            turn.chain = match
            free.remove(match)
    return turns


def _same_error(a: str, b: str) -> bool:
    """Whether two lanes logged the same error: one cut short (each lane's message is cut at its own length) is
    the same as the other if it begins the other."""
    if a == b:
        return True
    cut_a, cut_b = a.endswith(TRUNCATED), b.endswith(TRUNCATED)
    a, b = a.removesuffix(TRUNCATED), b.removesuffix(TRUNCATED)
    return bool(a and b) and ((cut_a and b.startswith(a)) or (cut_b and a.startswith(b)))


def timestamp(text: str) -> float | None:
    """Seconds since the epoch for OpenClaw's `2026-11-21T00:04:51.782+00:00` (or a trailing Z)."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- where the logs are ------------------------------------------------------------------------------------


_ROLLING_NAME = re.compile(r"openclaw-(?:YYYY-MM-DD|\d{4}-\d\d-\d\d)\.log")  # a logging.file that rolls daily


def log_folders(env: Mapping[str, str], *, preferred: Path = DEFAULT_LOG_DIR) -> list[Path]:
    """The folders OpenClaw's file logger writes its daily logs to, as it picks them: `preferred` and its own
    fallback, `$TMPDIR/openclaw-<uid>`, each only if it is this user's folder (not a link) that no one else can
    write. OpenClaw refuses any other (another user's /tmp/openclaw: planted logs of failures that never were)."""
    # Node's os.tmpdir(), as OpenClaw finds it; only its own folders in it are read (checked below).
    tmp = (env.get("TMPDIR") or env.get("TMP") or env.get("TEMP") or "/tmp").rstrip("/") or "/"  # noqa: S108
    return [folder for folder in (preferred, Path(tmp) / f"openclaw-{os.getuid()}") if _own_folder(folder)]


def _own_folder(folder: Path) -> bool:
    try:
        st = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _configured_files(path: Path) -> list[Path]:
    """`logging.file` and its archives: OpenClaw's own (`oc.1.log` .. `oc.5.log`; every day's file and theirs
    for a file named by a date, which rolls daily), and logrotate's (`oc.log.1`, `oc.log.2.gz`)."""
    if not path.parent.is_dir():
        return []
    if _ROLLING_NAME.fullmatch(path.name):
        return sorted(path.parent.glob("openclaw-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*.log*"))
    found = set(path.parent.glob(glob.escape(path.name) + "*"))
    if path.suffix:
        found.update(path.parent.glob(f"{glob.escape(path.stem)}.[0-9]*{glob.escape(path.suffix)}*"))
    return sorted(found)


def discover(env: Mapping[str, str] | None = None, *, log_dir: Path | None = None) -> list[Path]:
    """OpenClaw's log files on this machine: `logging.file` if configured, with its archives, and those of the
    folders its logger writes to (`log_folders`; `log_dir`: that folder instead, if it is this user's)."""
    env = os.environ if env is None else env
    found: list[Path] = []
    logging_conf = read_config(env).get("logging")
    configured = logging_conf.get("file") if isinstance(logging_conf, dict) else None
    if isinstance(configured, str) and configured:
        found += _configured_files(Path(configured).expanduser())
    folders = log_folders(env) if log_dir is None else [log_dir] if _own_folder(log_dir) else []
    for folder in folders:
        found += sorted(folder.glob("openclaw-*.log*"))
    unique: dict[Path, None] = {}
    for path in found:
        if path.is_file():
            unique[path] = None
    return list(unique)


_GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def open_log(path: Path) -> Iterator[BinaryIO]:
    """A log file for reading as bytes, gunzipped when it is gzip: known by its first bytes, as analyze_logs.py
    knows it (an archive whose name does not say so read as malformed lines, and its failures were missed). A
    `.gz` that is not gzip raises UsageError naming it."""
    with path.open("rb") as fh:
        magic = fh.read(len(_GZIP_MAGIC))
        fh.seek(0)
        if magic == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                yield typing.cast(BinaryIO, gz)
        elif path.suffix == ".gz":
            raise UsageError(f"{path}: not gzip data, though the name ends in .gz")
        else:
            yield fh


def read_problem(exc: BaseException) -> str:
    """What went wrong reading a log, for a person: a cut or damaged archive, or the read's own error."""
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"corrupt or truncated gzip data ({exc})"
    if isinstance(exc, OSError):
        return f"read error ({exc.strerror or exc})"
    return str(exc)


def read_records(
    paths: Iterable[Path],
    *,
    max_line: int = MAX_LINE_BYTES,
    on_error: Callable[[Path, str], None] | None = None,
) -> Iterator[Record | None]:
    """Every line of these files as a Record, None for a line that is not one (for counting). A line over
    `max_line` bytes is one that is not: read past in pieces, never held whole.

    A file that cannot be read to its end (gone, not gzip though named .gz, a cut or damaged archive) raises
    UsageError naming it; with `on_error`, that is told `(path, problem)` instead and the next file is read (the
    lines read before the problem stay read)."""
    for path in paths:
        try:
            with open_log(path) as fh:
                for line in iter_lines(fh, max_line):
                    if line is None:
                        yield None
                    elif line.strip():
                        yield parse_line(line)
        except UsageError as exc:
            if on_error is None:
                raise
            on_error(path, str(exc).removeprefix(f"{path}: "))
        except (OSError, EOFError, zlib.error) as exc:
            if on_error is None:
                raise UsageError(f"{path}: {read_problem(exc)}") from None
            on_error(path, read_problem(exc))
