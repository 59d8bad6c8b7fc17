"""Self-heal: a failure becomes a fix record. Evidence first, rules second, a model third, a second look last.

1. **Evidence.** For a task id: its ledger events, the last lines of its log, its last error, the exit
   codes and classes of its attempts, its checkpoint and task record. For OpenClaw: the failures its
   own logs report (`openclaw_logs`).
2. **Signature.** The error with numbers, ids, paths, quoted values and times masked (`fixes.normalize`):
   the same failure seen again updates its record instead of making another.
3. **Rules** (`fixes.rules` in skill.yaml, the user's `fixes.extra_rules` first): known failures and
   their fixes, no model needed.
4. **A model** for what no rule explains, or once a failure has happened `fixes.model_at_failures`
   times: the prompts in config/prompts/, through the skill's own fallback chain; the answer must parse
   into the record's fields (one stricter retry is the chain's own); otherwise, or with no endpoint
   reachable, the record is written from the rules alone and says so.
5. **A second look** at a model's fix: does the root cause explain the evidence, do the steps touch the
   target module, is anything destructive or irreversible, is it confident enough. A fix that fails
   stays a draft with the objections attached.

Model text is data: it is stored, shown and redacted, never executed, never put into a command.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..core import openclaw_config
from ..core.breaker import Breakers
from ..core.classify import classifier_for
from ..core.config import FIX_ACTIONS, IRREVERSIBLE_ACTIONS, Config, FixRule, TargetKeyword, get_config
from ..core.fleet import fleet_database, mark_down
from ..core.ledger import Ledger, iter_events, ledger_files, own_task
from ..core.redact import Redactor
from ..durable.checkpoint import Checkpoints, CheckpointUnreadable, StepRecord
from ..errors import ConfigError, CorruptStateError, SelfHealError, StateError, UsageError
from ..models.prompts import render
from ..observe import openclaw_logs
from ..state.fixes import (
    APPLIED,
    DRAFT,
    OPEN,
    READY,
    SEEN_KEEP,
    VERIFIED,
    FixRecord,
    FixStore,
    normalize,
    signature_key,
)
from ..state.root import (
    StateRoot,
    iter_lines,
    open_read,
    quarantine,
    read_capped,
    validate_id,
    write_bytes_atomic,
)
from ..tasks.analysis import hint_for
from ..tasks.run import TaskRunner, tail_lines
from ..tasks.tree import ERROR_FIX_PENDING, NORMAL_CRASH, REQUIRES_MANUAL, Task, TaskStore, UnknownTask, safe_name
from ..tasks.tree import VOID as TASK_VOID
from .evidence_files import find_files, keep_files

logger = logging.getLogger(__name__)

EXCERPT_CHARS = 4000
# A line of a task's log longer than this is left out of the evidence (it is never read whole).
MAX_EVIDENCE_LINE_BYTES = 64 * 1024
FIX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["root_cause", "problems", "fix_steps", "target_module", "success_criteria", "confidence"],
    "properties": {
        "root_cause": {"type": "string", "minLength": 1},
        "problems": {"type": "array", "items": {"type": "string"}},
        "fix_steps": {"type": "array", "items": {"type": "string"}},
        "target_module": {"type": "string"},
        "success_criteria": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "actions": {"type": "array", "items": {"type": "string"}},
    },
}
# What the second look calls destructive or irreversible, wherever it appears in a proposed fix.
DESTRUCTIVE = re.compile(
    r"(?i)\brm\s+-[a-z]*[rf]|\brmdir\b|\bmkfs\b|\bdd\s+if=|\bshred\b|>\s*/dev/sd|\bdrop\s+(table|database|schema)\b|"
    r"\btruncate\s+table\b|\bdelete\s+from\b|\bgit\s+(push\s+(-f|--force)|reset\s+--hard|clean\s+-[a-z]*f)|"
    r"\bchmod\s+(-R\s+)?777\b|\bchown\s+-R\b|curl[^|\n]*\|\s*(ba|z)?sh\b|wget[^|\n]*\|\s*(ba|z)?sh\b|\bsudo\b|"
    r"\bkill\s+-9\b|\bkillall\b|\bpkill\b|\bshutdown\b|\breboot\b|\bformat\s+[a-z]:|\brm\s+-rf\b|"
    r"\bdelete (all|every)\b|\bwipe\b|\bpurge\b|:\(\)\s*\{|\beval\b|\bexec\(|os\.system|subprocess"
)
_FRAME = re.compile(r'File "(?P<path>[^"]+)", line (?P<line>\d+)')
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}")
_STOP = frozenset(
    [
        "this",
        "that",
        "with",
        "from",
        "have",
        "been",
        "were",
        "when",
        "what",
        "which",
        "there",
        "their",
        "about",
        "after",
        "before",
        "could",
        "would",
        "should",
        "error",
        "errors",
        "failed",
        "failure",
        "exit",
        "code",
        "line",
        "file",
        "task",
        "none",
        "true",
        "false",
        "null",
    ]
)


@dataclass
class Evidence:
    """What is known about one failure."""

    task: str
    kind: str  # "task", or an OpenClaw failure kind
    error: str  # the error, as precisely as known
    error_class: str | None
    occurrence: str  # identifies this occurrence, so reading it twice does not count it twice
    failures: int  # how often this task has failed so far, as far as the evidence says
    log_tail: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    step: str | None = None
    target: str | None = None
    model: str | None = None
    job: str | None = None
    file: str | None = None
    status: int | None = None
    fallback_configured: bool | None = None
    models_tried: int | None = None  # how many models an exhausted OpenClaw chain tried
    checkpoint: dict[str, Any] | None = None
    task_record: dict[str, Any] | None = None
    command: list[str] | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)  # files the task named as evidence (found, not read)

    def signature(self) -> str:
        return f"{self.kind}:{self.error_class or 'unknown'}:{normalize(self.error)}"

    def excerpt(self, redactor: Redactor) -> str:
        parts = [self.error.strip(), *self.log_tail[-20:]]
        text = "\n".join(dict.fromkeys(p for p in parts if p))
        return redactor.text(text)[-EXCERPT_CHARS:]


class NoEvidence(UsageError):
    def __init__(self, task: str) -> None:
        super().__init__(
            f"nothing is known about task {task!r}: no ledger events, task record or checkpoint carry that id"
        )


# -- evidence ----------------------------------------------------------------------------------------------


def _brief(event: dict[str, Any]) -> dict[str, Any]:
    keep = ("ts", "event", "step", "target", "model", "attempt", "error_class", "reason", "status", "exit_code")
    return {k: event.get(k) for k in keep if event.get(k) is not None}


def task_events(
    state: StateRoot, task: str, *, limit: int = 200, days: int = 14, config: Config | None = None
) -> list[dict[str, Any]]:
    """The task's last `limit` ledger events, oldest first, from the last `days` ledger files; in fleet mode
    from the fleet's ledger (every host's), unless its database is down."""
    found: deque[dict[str, Any]] = deque(maxlen=limit)
    if config is not None and config.store.fleet:
        db = fleet_database(config.store)
        if db is not None:
            from ..state.pg import fetch_events  # noqa: PLC0415 - psycopg only in fleet mode

            try:
                found.extend(fetch_events(db, since=time.time() - days * 86_400, task=task))
                return list(found)
            except StateError as exc:
                mark_down(config.store, exc)
                found.clear()
    for event in iter_events(ledger_files(state)[-days:]):
        if event is not None and event.get("task") == task:
            found.append(event)
    return list(found)


def _log_lines_for(state: StateRoot, task: str, lines: int) -> list[str]:
    """The task's own log (a task of the tree), else its lines in logs/selfheal.log."""
    own = state.task_log(task)
    try:
        fd = open_read(own)  # never through a planted link (UnsafeStateError)
    except FileNotFoundError:
        pass
    else:
        tail: deque[str] = deque(maxlen=lines)
        with os.fdopen(fd, "rb") as fh:
            for raw in iter_lines(fh, MAX_EVIDENCE_LINE_BYTES):
                if raw is None:
                    tail.append("[self-heal: a line too long to keep was left out]")
                    continue
                ln = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not (ln.startswith("=== ") and ln.endswith(" ===")):
                    tail.append(ln)
        return list(tail)
    found: deque[str] = deque(maxlen=lines)
    needle = f" task={task} "
    for path in sorted(state.log_file.parent.glob(state.log_file.name + "*"), reverse=True):
        try:
            # As a state file: a FIFO planted as `selfheal.log.1` would hang this for good, a link lead outside.
            with os.fdopen(open_read(path), "rb") as fh:
                for raw in iter_lines(fh, MAX_EVIDENCE_LINE_BYTES):
                    line = "" if raw is None else raw.decode("utf-8", "replace").rstrip("\r\n")
                    if needle in line + " " or line.endswith(f" task={task}"):
                        found.append(line)
        except StateError as exc:
            logger.warning("%s not read for the evidence: %s", path, exc)
        except OSError:
            continue
    return list(found)


def gather_task(task: str, *, state: StateRoot, config: Config) -> Evidence:
    """Everything the state root knows about the last failure of `task`."""
    validate_id(task, "task")
    lines = config.fixes.evidence_lines
    record: dict[str, Any] | None = None
    try:
        record = TaskStore(state, config).get(task).to_json()
    except (UnknownTask, StateError, CorruptStateError):
        record = None
    checkpoint: dict[str, Any] | None = None
    failed_name: str | None = None
    failed_step: StepRecord | None = None
    try:
        data = Checkpoints(state).load(task)
    except CheckpointUnreadable as exc:
        data = None
        checkpoint = {"status": "unreadable", "error": str(exc)}
    if data is not None:
        failed_name = data.first_failed()
        failed_step = data.steps[failed_name] if failed_name else None
        checkpoint = {"status": data.status, "failed_step": failed_name, "incident": data.incident}
    events = task_events(state, task, config=config)
    if record is None and checkpoint is None and not events:
        raise NoEvidence(task)
    failures = [e for e in events if e.get("event") in ("failed", "retry", "stuck", "incident")]
    last_failed = next((e for e in reversed(events) if e.get("event") in ("failed", "stuck")), None)
    last_any = failures[-1] if failures else None
    log_tail = _log_lines_for(state, task, lines)

    error = ""
    error_class = None
    if record and record.get("last_error"):
        error = str(record["last_error"])
        error_class = record.get("last_error_class")
    elif failed_step is not None and failed_step.reason:
        error, error_class = failed_step.reason, failed_step.error_class
    elif checkpoint and checkpoint.get("status") == "unreadable":
        error, error_class = str(checkpoint["error"]), "fatal"
    elif last_any is not None:
        error, error_class = str(last_any.get("reason") or ""), last_any.get("error_class")
    if not error and log_tail:
        error = log_tail[-1]
    if last_failed is not None and not error_class:
        error_class = last_failed.get("error_class")
    occurrence = str(
        (last_failed or last_any or {}).get("ts")
        or (record or {}).get("updated")
        or (checkpoint or {}).get("incident")
        or normalize(error)
    )
    count = int((record or {}).get("retry_count") or 0) or sum(1 for e in events if e.get("event") == "failed")
    target = next((e.get("target") for e in reversed(events) if e.get("target")), None)
    model = next((e.get("model") for e in reversed(events) if e.get("model")), None)
    run = (record or {}).get("run") or {}
    command: list[str] | None = None
    if run.get("kind") == "argv":
        command = [str(a) for a in run["argv"]]
    elif run.get("shell"):
        command = ["sh", "-c", str(run["shell"])]
    parent = (record or {}).get("parent")
    if parent and (record or {}).get("type") == "fix":
        # A FIX or SOL task runs nothing itself (or little): the failure it is about is in its parent's output.
        with contextlib.suppress(OSError, ValueError):
            store = TaskStore(state, config)
            log_tail = [*log_tail, *tail_lines(store.log_path(str(parent)), lines, last_run=True)][-lines:]
            if command is None:
                parent_run = store.get(str(parent)).run
                if parent_run is not None and parent_run.kind == "argv":
                    command = parent_run.process_argv()
    brief = {k: record.get(k) for k in ("exec_state", "retry_count", "type", "parent")} if record else None
    return Evidence(
        task=task,
        kind="task",
        error=_first_line_with_detail(error),
        error_class=error_class,
        occurrence=occurrence,
        failures=max(count, 1),
        log_tail=log_tail,
        events=[_brief(e) for e in events[-20:]],
        exit_codes=[int(e["exit_code"]) for e in events if isinstance(e.get("exit_code"), int)][-10:],
        classes=[str(e["error_class"]) for e in events if e.get("error_class")][-10:],
        step=(record or {}).get("failed_step") or failed_name or (last_failed or {}).get("step"),
        target=target,
        model=model,
        checkpoint=checkpoint,
        task_record=brief,
        command=command,
        detail={"error_text": error} if error.count("\n") else {},
        files=_named_files(run),
    )


def evidence_from_run(
    task: Task, *, error: str, error_class: str | None, step: str | None, log_tail: list[str]
) -> Evidence:
    """Evidence of a run that just failed, before its record says so (what run-next knows at that moment)."""
    command = task.run.process_argv() if task.run is not None and task.run.kind == "argv" else None
    files = _named_files(task.run.to_json() if task.run is not None else None)
    return Evidence(
        task=task.name,
        kind="task",
        error=_first_line_with_detail(error),
        error_class=error_class,
        occurrence=task.run_id or utc_iso(task.updated_ts),
        failures=task.retry_count + 1,
        log_tail=log_tail,
        step=step,
        command=command,
        task_record={"exec_state": task.exec_state, "retry_count": task.retry_count + 1, "type": task.type},
        detail={"error_text": error} if error.count("\n") else {},
        files=files,
    )


def _named_files(run: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The files a task's run spec names as evidence (`evidence` patterns, relative to its cwd or plan)."""
    patterns = (run or {}).get("evidence")
    if not run or not isinstance(patterns, list) or not patterns:
        return []
    plan = run.get("plan") if run.get("kind") == "plan" else None
    cwd = run.get("cwd") or (str(Path(str(plan)).parent) if plan else os.getcwd())
    return find_files([str(p) for p in patterns], str(cwd))


def _first_line_with_detail(error: str) -> str:
    """The error's most telling line: a Python exception line if there is one, else the first line."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line):
            return line
    return lines[0]


def openclaw_task(failure: openclaw_logs.Failure) -> str:
    """A task id for an OpenClaw failure: the cron job, the skill, or the agent."""
    if failure.kind == openclaw_logs.CRON_FAILED:
        return safe_name(f"openclaw-cron-{failure.job or 'job'}")[:100]
    if failure.kind == openclaw_logs.SKILL_INVALID:
        folder = Path(str(failure.detail.get("file") or "skill")).parent.name
        return safe_name(f"openclaw-skill-{folder}")[:100]
    if failure.kind == openclaw_logs.CLI_FAILED:
        return "openclaw-cli"
    return "openclaw-agent"


# Which step of an exhausted chain a fix record is about: the failure waiting does not cure comes first.
_SEVERITY = ("fatal", "auth", "permanent", "resource", "format", "rate_limit", "timeout", "transient", "unknown")


def _worst_step(
    steps: Sequence[openclaw_logs.Step], classify: Callable[[openclaw_logs.Step], str | None]
) -> tuple[openclaw_logs.Step | None, str | None]:
    ranked = [(step, classify(step)) for step in steps]
    if not ranked:
        return None, None
    return min(ranked, key=lambda sc: _SEVERITY.index(sc[1]) if sc[1] in _SEVERITY else len(_SEVERITY))


def gather_openclaw(
    paths: Sequence[Path],
    *,
    since_ts: float | None = None,
    config: Config,
    on_error: Callable[[Path, str], None] | None = None,
) -> tuple[list[Evidence], int, int]:
    """Evidence for OpenClaw's failures in these logs: one per failed turn (or exhausted chain), one per run
    of a failed cron job (so a job's record counts its runs), one per invalid skill and failed CLI command.
    Returns (evidence, lines, malformed). A file that cannot be read raises UsageError naming it, or with
    `on_error` is told there and the rest read (`openclaw_logs.read_records`)."""
    lines = malformed = 0

    def records() -> Iterator[openclaw_logs.Record]:
        # A stream: only the failures found are kept, so memory does not grow with the log.
        nonlocal lines, malformed
        for record in openclaw_logs.read_records(paths, max_line=config.analysis.max_line_bytes, on_error=on_error):
            lines += 1
            if record is None:
                malformed += 1
                continue
            if since_ts is not None:
                ts = openclaw_logs.timestamp(record.time)
                if ts is not None and ts < since_ts:
                    continue
            yield record

    classifier = classifier_for(config.classify)
    found_lines = list(openclaw_logs.failures(records()))
    summary = openclaw_logs.summarize(found_lines)

    def classify(step: openclaw_logs.Step) -> str | None:
        return openclaw_logs.error_class(classifier, step.error, step.status, step.reason)

    out = []
    taken = set()
    for turn in summary.turns:
        if turn.chain is not None:
            taken.add(turn.chain.key)
            out.append(_chain_evidence(turn.chain, classify, lanes=turn.lanes))
            continue
        cls = openclaw_logs.error_class(classifier, turn.error, None, None)
        out.append(
            Evidence(
                task="openclaw-agent",
                kind=openclaw_logs.LANE_ERROR,
                error=turn.error,
                error_class=cls,
                occurrence=f"turn:{turn.time}",
                failures=1,
                log_tail=[f"agent turn failed ({turn.lines} lane error lines: {', '.join(turn.lanes)}): {turn.error}"],
                detail={"lanes": turn.lanes, "duration_ms": turn.duration_ms},
            )
        )
    out += [_chain_evidence(c, classify) for c in summary.chains if c.key not in taken]
    for job in summary.cron:
        runs = [f for f in found_lines if f.kind == openclaw_logs.CRON_FAILED and _job_of(f) == (job.job_id or job.job)]
        for run in runs:
            # OpenClaw's own diagnosis (the command's error output) says more than "exited with code 2".
            error = f"{run.error}: {run.diagnostics}" if run.diagnostics else run.error
            cls = openclaw_logs.error_class(classifier, error, None, None)
            out.append(
                Evidence(
                    task=safe_name(f"openclaw-cron-{job.job}")[:100],
                    kind=openclaw_logs.CRON_FAILED,
                    error=error,
                    error_class=cls,
                    occurrence=run.key,
                    failures=job.runs,
                    log_tail=[
                        f"cron job {job.job}: {job.runs} failed run(s) from {job.first} to {job.last}",
                        *([f"diagnostics: {run.diagnostics}"] if run.diagnostics else []),
                    ],
                    target=job.job,
                    job=job.job,
                    detail={"job_id": job.job_id, "diagnostics": run.diagnostics, "runs": job.runs},
                )
            )
    for found in [*summary.skills, *summary.cli]:
        out.append(
            Evidence(
                task=openclaw_task(found),
                kind=found.kind,
                error=found.error,
                error_class=openclaw_logs.error_class(classifier, found.error, found.status, found.reason),
                occurrence=found.key,
                failures=1,
                log_tail=[found.summary],
                file=str(found.detail.get("file")) if found.detail.get("file") else None,
                detail=dict(found.detail),
            )
        )
    return out, lines, malformed


def _job_of(f: openclaw_logs.Failure) -> str:
    return str(f.detail.get("job_id") or f.job or "?")


def _chain_evidence(
    chain: openclaw_logs.Failure, classify: Callable[[openclaw_logs.Step], str | None], *, lanes: Sequence[str] = ()
) -> Evidence:
    """An exhausted chain, about the step whose failure matters most (a quota beats a rate limit)."""
    worst, cls = _worst_step(chain.steps, classify)
    tail = [f"every model of the chain failed (run {chain.run_id or '?'}):"]
    tail += [
        f"  {i}. {s.model}: {classify(s) or 'unknown'} (status {s.status}, OpenClaw's reason {s.reason}): {s.error}"
        for i, s in enumerate(chain.steps, 1)
    ]
    if chain.fallback_configured is True and len(chain.steps) <= 1:
        tail.append("fallbacks are configured but only one model was tried")
    if lanes:
        tail.append(f"the turn logged lane errors in: {', '.join(lanes)}")
    return Evidence(
        task="openclaw-agent",
        kind=openclaw_logs.FALLBACK_EXHAUSTED,
        error=worst.error if worst else chain.error,
        error_class=cls,
        occurrence=chain.key,
        failures=1,
        log_tail=tail,
        target=worst.model if worst else chain.model,
        model=worst.model if worst else chain.model,
        status=worst.status if worst else chain.status,
        fallback_configured=chain.fallback_configured,
        models_tried=len(chain.steps),
        detail={
            **dict(chain.detail),
            "models": [
                {"model": s.model, "status": s.status, "reason": s.reason, "class": classify(s)} for s in chain.steps
            ],
        },
    )


# -- rules ----------------------------------------------------------------------------------------------------


def rule_matches(rule: FixRule, evidence: Evidence, text: str) -> bool:
    if rule.error_class and evidence.error_class not in rule.error_class:
        return False
    if rule.kind and evidence.kind not in rule.kind:
        return False
    if rule.status and evidence.status not in rule.status:
        return False
    if rule.fallback_configured is not None and evidence.fallback_configured is not rule.fallback_configured:
        return False
    if rule.models_tried_max is not None and (
        evidence.models_tried is None or evidence.models_tried > rule.models_tried_max
    ):
        return False
    return not (rule.pattern and not re.search(rule.pattern, text))


def match_rule(rules: Iterable[FixRule], evidence: Evidence) -> FixRule | None:
    """The first rule that explains the error itself; failing that, the first that the log tail explains."""
    ordered = list(rules)
    for text in (evidence.error, "\n".join([evidence.error, *evidence.log_tail])):
        for rule in ordered:
            if rule_matches(rule, evidence, text):
                return rule
    return None


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(template: str, values: Mapping[str, str | None]) -> str:
    """Put values into a rule's text: `{name}` only (no attribute or index access, unlike str.format)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1)) or f"<{m.group(1)}>", template)


def infer_target_module(
    evidence: Evidence, *, env: Mapping[str, str] | None = None, keywords: Sequence[TargetKeyword] = ()
) -> str | None:
    """Where a fix belongs, as the fourth source document's infer_target_module() and
    infer_target_from_error() guess it: the last frame of the traceback in the project's own code, a
    `fixes.target_keywords` entry whose words the failure contains, what an OpenClaw failure points at,
    the script the task runs, or a skill whose name the task carries. The whole failure is read: the
    error with its traceback, and the output of the task (for a FIX or SOL task, its parent's)."""
    text = "\n".join([*evidence.log_tail, evidence.error, str(evidence.detail.get("error_text") or "")])
    frames = [
        (m.group("path"), m.group("line"))
        for m in _FRAME.finditer(text)
        if not re.search(r"site-packages|dist-packages|/lib/python3\.\d+/|<frozen|<string>", m.group("path"))
    ]
    if frames:
        return f"{frames[-1][0]}:{frames[-1][1]}"
    for entry in keywords:
        if re.search(entry.pattern, text):
            return entry.target
    if evidence.kind == openclaw_logs.SKILL_INVALID and evidence.file:
        return evidence.file
    if evidence.kind in (openclaw_logs.FALLBACK_EXHAUSTED, openclaw_logs.LANE_ERROR):
        return f"{openclaw_config.config_path(env)} (agents.defaults.model)"
    if evidence.kind == openclaw_logs.CRON_FAILED:
        return f"openclaw cron job {evidence.job}"
    for part in evidence.command or []:
        if part.endswith((".py", ".sh", ".js", ".yaml", ".yml")):
            return part
    skills = openclaw_config.config_path(env).parent / "skills"
    wanted = evidence.task.lower().replace("-", "_")
    if skills.is_dir():
        for folder in sorted(skills.iterdir()):
            name = folder.name.lower().replace("-", "_")
            if len(name) >= 4 and name in wanted and (folder / "SKILL.md").exists():
                return str(folder)
    return None


def _values(evidence: Evidence, config: Config, module: str | None) -> dict[str, str | None]:
    # The chain model calls use (the user's OpenClaw models when config.yaml sets none), not only config.yaml's:
    # a record about an OpenClaw model named no variable ("that holds the provider's key").
    from ..models.openclaw_chain import resolve  # noqa: PLC0415 - only when a record is written

    try:
        chain = resolve(config).entries
    except SelfHealError:  # an openclaw.json that cannot be read: the record is written all the same
        chain = config.models.chain
    key_env = next(
        (e.api_key_env for e in chain if e.api_key_env and e.name in (evidence.target, evidence.model)),
        None,
    )
    return {
        "task": evidence.task,
        "error": evidence.error[:300],
        "error_class": evidence.error_class,
        "target": evidence.target or "the service it calls",
        "model": evidence.model or "the model",
        "job": evidence.job,
        "file": evidence.file,
        "module": module or "the failing module",
        "key_env": key_env or "that holds the provider's key",
    }


# -- the model --------------------------------------------------------------------------------------------------


@dataclass
class ModelAnswer:
    data: dict[str, Any] | None
    source: str | None
    note: str | None


def ask_model(
    evidence: Evidence,
    *,
    rule: FixRule | None,
    module: str | None,
    redactor: Redactor,
    config: Config,
    state: StateRoot,
    clock: Clock = SYSTEM_CLOCK,
) -> ModelAnswer:
    """Root-cause analysis by the model chain; never raises for the model's failures (they become a note)."""
    from ..models import llm  # noqa: PLC0415 - openai costs ~0.4 s to import: only when a model is asked

    hint = f"{rule.name}: {fill(rule.root_cause, _values(evidence, config, module))}" if rule else "none"
    try:
        system = render("fix_analysis_system.txt")
        user = render(
            "fix_analysis_user.txt",
            task=evidence.task,
            kind=evidence.kind,
            error_class=evidence.error_class or "unknown",
            signature=evidence.signature(),
            failures=evidence.failures,
            error=redactor.text(evidence.error)[:2000],
            log_tail=redactor.text("\n".join(evidence.log_tail))[-6000:] or "(none)",
            events=redactor.text("\n".join(str(e) for e in evidence.events[-10:])) or "(none)",
            target_hint=module or "unknown",
            rule_hint=hint,
        )
        answer = llm.complete(
            user,
            system=system,
            json_output=True,
            schema=FIX_SCHEMA,
            temperature=0.2,
            task=own_task("diagnose", evidence.task),  # not the task's own run: kept out of its figures
            deadline_s=config.fixes.model_deadline_s,
            config=config,
            state=state,
            clock=clock,
        )
    except llm.NoEndpointAvailable as exc:
        return ModelAnswer(None, None, f"no model endpoint was available ({exc}); written from the rules alone")
    except llm.ModelCallFailed as exc:
        what = "answered in the wrong shape, also after a stricter retry" if exc.error_class == "format" else "failed"
        return ModelAnswer(None, None, f"the model analysis {what} ({exc}); written from the rules alone")
    except ConfigError as exc:
        return ModelAnswer(None, None, f"the model chain is not usable ({exc}); written from the rules alone")
    except SelfHealError as exc:
        return ModelAnswer(None, None, f"the model analysis failed ({exc}); written from the rules alone")
    return ModelAnswer(answer.data, f"model:{answer.endpoint}/{answer.model}", None)


# -- the second look ---------------------------------------------------------------------------------------------


def second_look(
    root_cause: str,
    steps: Sequence[str],
    *,
    module: str | None,
    confidence: float,
    evidence: Evidence,
    config: Config,
) -> list[str]:
    """Objections to a proposed fix; none means it may be marked ready."""
    objections = []
    seen = {w.lower() for w in _WORD.findall(" ".join([evidence.error, evidence.error_class or ""]))} - _STOP
    said = {w.lower() for w in _WORD.findall(root_cause)}
    if seen and not (seen & said) and (evidence.error_class or "") not in root_cause.lower():
        objections.append(
            "the root cause does not mention anything the evidence shows "
            f"(the error says: {evidence.error[:120]!r}); it may explain a different failure"
        )
    if module and module not in ("unknown", "") and steps:
        names = {module, Path(module.split(":")[0]).name, Path(module.split(":")[0]).stem}
        if not any(n and n in step for step in steps for n in names):
            objections.append(f"no fix step touches the target module {module!r}")
    for i, text in enumerate([root_cause, *steps]):
        found = DESTRUCTIVE.search(text)
        if found:
            where = "the root cause" if i == 0 else f"step {i}"
            objections.append(f"{where} proposes something destructive or irreversible ({found.group(0)!r})")
    if not steps:
        objections.append("it proposes no fix steps")
    if confidence < config.fixes.min_confidence:
        objections.append(
            f"its confidence {confidence:.2f} is below fixes.min_confidence {config.fixes.min_confidence}"
        )
    return objections


# -- healing --------------------------------------------------------------------------------------------------


@dataclass
class HealResult:
    record: FixRecord
    created: bool
    counted: bool  # this occurrence was new (not already in the record)
    model_note: str | None = None
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.record.id,
            "task": self.record.task,
            "created": self.created,
            "counted": self.counted,
            "status": self.record.status,
            "verdict": self.record.review.get("verdict"),
            "source": self.record.source,
            "error_class": self.record.error_class,
            "actions": self.record.actions,
            "occurrences": self.record.occurrences,
            "root_cause": self.record.root_cause,
            "fix_steps": self.record.fix_steps,
            "path": str(self.path) if self.path else None,
            "note": self.model_note,
        }


class Healer:
    """Turns Evidence into fix records in one state root."""

    def __init__(
        self,
        *,
        config: Config | None = None,
        state: StateRoot | None = None,
        clock: Clock = SYSTEM_CLOCK,
        use_model: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or get_config()
        self.state = (state or StateRoot.from_env()).ensure()
        self.clock = clock
        self.use_model = self.config.fixes.use_model if use_model is None else use_model
        self.env = env
        self.store = FixStore(self.state, clock=clock)
        self.ledger = Ledger(self.state, self.config, clock=clock)
        self.redactor = self.ledger.redactor

    def heal(self, evidence: Evidence) -> HealResult:
        # Secrets go first: the error feeds the signature, the rule texts, the model's prompt and the files.
        evidence.error = self.redactor.text(evidence.error)
        evidence.log_tail = [self.redactor.text(line) for line in evidence.log_tail]
        if evidence.detail.get("error_text"):
            evidence.detail["error_text"] = self.redactor.text(str(evidence.detail["error_text"]))
        signature = evidence.signature()
        module = infer_target_module(evidence, env=self.env, keywords=self.config.fixes.target_keywords)
        rule = match_rule(self.config.fixes.ordered_rules, evidence)
        with self.store.locked():
            existing = self.store.find(evidence.task, signature)
        occurrences = (existing.occurrences if existing else 0) + (
            0 if existing and evidence.occurrence in existing.seen else 1
        )
        has_model = existing is not None and existing.source.startswith("model:")
        wanted = rule is None or max(occurrences, evidence.failures) >= self.config.fixes.model_at_failures
        answer = ModelAnswer(None, None, None)
        if self.use_model and wanted and not has_model:
            # Outside the lock: a model call may take a while, and other failures must still be recorded.
            answer = ask_model(
                evidence,
                rule=rule,
                module=module,
                redactor=self.redactor,
                config=self.config,
                state=self.state,
                clock=self.clock,
            )
        elif wanted and not self.use_model and not has_model:
            answer = ModelAnswer(None, None, "model analysis is off (--no-model / fixes.use_model); rules only")
        with self.store.locked():
            existing = self.store.find(evidence.task, signature)  # again: another process may have written it
            return self._write(
                evidence, signature=signature, module=module, rule=rule, answer=answer, existing=existing
            )

    def _write(
        self,
        evidence: Evidence,
        *,
        signature: str,
        module: str | None,
        rule: FixRule | None,
        answer: ModelAnswer,
        existing: FixRecord | None,
    ) -> HealResult:
        now = utc_iso(self.clock.time())
        values = _values(evidence, self.config, module)
        counted = existing is None or evidence.occurrence not in existing.seen
        record = existing or FixRecord(
            id=self.store.next_id(evidence.task),
            task=evidence.task,
            signature=signature,
            key=signature_key(evidence.task, signature),
            error_class=evidence.error_class,
            kind=evidence.kind,
            root_cause="",
            problems=[],
            fix_steps=[],
            target_module=module,
            success_criteria="",
            source="none",
            confidence=0.0,
            occurrences=0,
            first_seen=now,
        )
        if counted:
            record.occurrences += 1
            record.seen = [*record.seen, evidence.occurrence][-SEEN_KEEP:]
            record.last_seen = now
            if record.status in (APPLIED, VERIFIED):
                record.notes.append(f"{now}: seen again after it was {record.status}; open again")
                self.store.add_history(record, f"reopened: the failure came back after it was {record.status}")
                record.status = OPEN
        record.evidence = {
            "excerpt": evidence.excerpt(self.redactor),
            "exit_codes": evidence.exit_codes,
            "classes": evidence.classes,
            "events": self.redactor.obj(evidence.events[-10:]),
            "checkpoint": evidence.checkpoint,
            "task_record": evidence.task_record,
            "step": evidence.step,
            "target": evidence.target,
            "model": evidence.model,
            "job": evidence.job,
            "file": evidence.file,
            "failures": evidence.failures,
        }
        if evidence.files:  # the files the task named: listed; the small ones copied under fixes/<id>.evidence/
            record.evidence["files"] = keep_files(
                self.state, record.id, evidence.files, self.config.fixes.evidence_copy_max_bytes
            )
        record.target_module = module or record.target_module
        if answer.data is not None:
            self._from_model(record, answer, evidence, module)
        elif existing is None or not existing.source.startswith("model:"):
            self._from_rule(record, rule, values, evidence)
        if answer.note and answer.note not in record.notes:
            record.notes.append(answer.note)
        if existing is None:
            self.store.add_history(record, f"created from {record.source}")
        elif counted:
            self.store.add_history(record, f"seen again (occurrence {record.occurrences})")
        path = self.store.save(record)
        if existing is None or counted:
            self.ledger.record(
                "fix",
                task=evidence.task,
                step=evidence.step,
                error_class=evidence.error_class,
                status="created" if existing is None else "seen_again",
                reason=f"{record.id}: {record.root_cause}",
                fix_id=record.id,
                source=record.source,
                occurrences=record.occurrences,
            )
        return HealResult(record, existing is None, counted, answer.note, path)

    def _from_rule(
        self, record: FixRecord, rule: FixRule | None, values: dict[str, str | None], evidence: Evidence
    ) -> None:
        if rule is None:
            record.root_cause = f"no known rule explains this failure: {evidence.error[:300] or evidence.signature()}"
            record.problems = [record.root_cause]
            record.fix_steps = [
                hint_for(evidence.error, evidence.error_class),
                "read the evidence below; once the cause is known, add a rule to fixes.extra_rules so the next "
                "occurrence is explained at once",
            ]
            record.success_criteria = f"{evidence.task} runs without this error"
            record.source, record.confidence, record.actions, record.area = "none", 0.2, [], "infra"
            record.review = {"verdict": DRAFT, "objections": ["no rule and no model analysis explain it yet"]}
            return
        record.root_cause = fill(rule.root_cause, values)
        record.problems = [record.root_cause]
        record.fix_steps = [fill(s, values) for s in rule.fix_steps]
        record.success_criteria = fill(rule.success_criteria, values)
        record.source, record.confidence = f"rule:{rule.name}", rule.confidence
        # The actions are on the skill's own tasks and breakers: none of them touches what OpenClaw runs.
        actions: list[str] = [] if evidence.kind in openclaw_logs.FAILURE_KINDS else list(rule.actions)
        record.actions, record.area = actions, rule.area
        record.review = {"verdict": READY, "objections": [], "by": "a shipped or user rule"}

    def _from_model(self, record: FixRecord, answer: ModelAnswer, evidence: Evidence, module: str | None) -> None:
        data = answer.data or {}
        # The model's words are data: redacted, length-limited, stored; never run, never put in a command.
        clean = self.redactor.text
        root = clean(str(data["root_cause"]))[:2000]
        steps = [clean(str(s))[:1000] for s in data.get("fix_steps", [])][:12]
        problems = [clean(str(p))[:500] for p in data.get("problems", [])][:8] or [root]
        proposed_module = clean(str(data.get("target_module") or ""))[:300] or None
        target = module or proposed_module
        confidence = float(data.get("confidence", 0.0))
        if not math.isfinite(confidence):  # NaN passes every comparison: it would reach any min_confidence
            confidence = 0.0
        record.root_cause, record.fix_steps, record.problems = root, steps, problems
        record.success_criteria = clean(str(data.get("success_criteria") or ""))[:500]
        record.target_module = target
        record.source, record.confidence, record.area = answer.source or "model", confidence, "backend"
        proposed = [clean(str(a))[:100] for a in data.get("actions", [])][:10]
        record.actions = proposed
        objections = second_look(
            root, steps, module=target, confidence=confidence, evidence=evidence, config=self.config
        )
        refused = [a for a in proposed if a not in FIX_ACTIONS]
        if refused:
            objections.append(f"it proposes actions self-heal does not allow: {', '.join(refused)}")
        final = [a for a in proposed if a in IRREVERSIBLE_ACTIONS]
        if final:
            objections.append(
                f"it proposes what cannot be undone ({', '.join(final)}): only a person decides that "
                f"(tasks.py void {record.task} --reason ...)"
            )
        record.review = {
            "verdict": DRAFT if objections else READY,
            "objections": objections,
            "by": "the second look (rules)",
        }


# -- --apply: only what the skill owns, only what can be undone -------------------------------------------------


@dataclass
class Applied:
    action: str
    target: str
    done: str
    undo: str
    reversible: bool = True


class ApplyRefused(SelfHealError):
    """The record asks for something --apply will not do; nothing was done."""


def apply_fix(
    record_id: str,
    *,
    config: Config | None = None,
    state: StateRoot | None = None,
    clock: Clock = SYSTEM_CLOCK,
    allow_irreversible: bool = False,
) -> list[Applied]:
    """Run the record's allow-listed actions, record each with how to undo it, mark it applied.

    Refused (ApplyRefused, nothing done) when any action is not on the allow-list, when a model-proposed
    fix is still a draft, when the record has no actions, or when an action cannot be undone
    (IRREVERSIBLE_ACTIONS) and a person did not say `allow_irreversible`."""
    config = config or get_config()
    state = (state or StateRoot.from_env()).ensure()
    store = FixStore(state, clock=clock)
    record = store.get(record_id)
    if record.status != OPEN:
        raise ApplyRefused(f"{record.id} is {record.status}, not open; nothing to apply")
    refused = [a for a in record.actions if a not in FIX_ACTIONS]
    if refused:
        raise ApplyRefused(
            f"{record.id} asks for actions self-heal does not perform: {', '.join(map(repr, refused))}; "
            f"only {', '.join(FIX_ACTIONS)} are allowed. Nothing was done; the rest is a suggestion for a person"
        )
    if not record.ready:
        raise ApplyRefused(
            f"{record.id} is a draft ({'; '.join(record.review.get('objections') or [])}); nothing was done"
        )
    if not record.actions:
        raise ApplyRefused(f"{record.id} has nothing self-heal can do itself; its fix steps are for a person")
    final = [a for a in record.actions if a in IRREVERSIBLE_ACTIONS]
    if final and not allow_irreversible:
        raise ApplyRefused(
            f"{record.id} asks for what cannot be undone ({', '.join(final)}); --apply does only reversible "
            f"actions. Nothing was done; if a person decides it, run: self_heal.py --apply {record.id} "
            "--allow-irreversible"
        )
    for action in record.actions:  # every action's refusal before any is done: refused means nothing was done
        _check_one(action, record, config, state, clock)
    done = [_apply_one(action, record, config, state, clock) for action in record.actions]
    with store.locked():
        fresh = store.get(record.id)
        for item in done:
            how = "reversible" if item.reversible else "irreversible, allowed by --allow-irreversible"
            store.add_history(fresh, f"applied {item.action} on {item.target} ({how}): {item.done}", undo=item.undo)
        fresh.status = APPLIED
        store.save(fresh)
    Ledger(state, config, clock=clock).record(
        "fix",
        task=record.task,
        status="applied",
        reason=f"{record.id}: " + "; ".join(f"{d.action} {d.target}" for d in done),
        fix_id=record.id,
    )
    return done


def _check_one(action: str, record: FixRecord, config: Config, state: StateRoot, clock: Clock) -> None:
    """ApplyRefused if `action` cannot be done on what the record names (checked again as it is done)."""
    task = record.task
    if action == "restore_openclaw_config":
        _good_copy(record)
    elif action == "reset_breaker":
        target = str(record.evidence.get("target") or "")
        if not target or target not in Breakers(state, config.breakers).targets():
            raise ApplyRefused(f"{record.id}: no breaker named {target or '(none)'} to reset; nothing was done")
    elif action == "quarantine_checkpoint":
        if not Checkpoints(state).path(task).exists():
            raise ApplyRefused(f"{record.id}: task {task} has no checkpoint to move aside; nothing was done")
    elif action in ("requeue_task", "void_task"):
        try:
            before = TaskStore(state, config, clock).get(task).exec_state
        except UnknownTask:
            raise ApplyRefused(f"{record.id}: {task} is not a task of the task tree; nothing was done") from None
        if action == "requeue_task" and before not in (REQUIRES_MANUAL, NORMAL_CRASH):
            raise ApplyRefused(
                f"{record.id}: {task} is {before}; only a parked or crashed task is re-queued; nothing was done"
            )


def _apply_one(action: str, record: FixRecord, config: Config, state: StateRoot, clock: Clock) -> Applied:
    task = record.task
    if action == "restore_openclaw_config":
        return _restore_config(record, clock)
    if action == "reset_breaker":
        target = str(record.evidence.get("target") or "")
        breakers = Breakers(state, config.breakers, ledger=Ledger(state, config, clock=clock))
        if not target or target not in breakers.targets():
            raise ApplyRefused(f"{record.id}: no breaker named {target or '(none)'} to reset; nothing was done")
        before = breakers.status(target)["state"]
        breakers.reset(target)
        return Applied(
            action, target, f"closed (was {before})", "none needed: it opens again by itself if the failures return"
        )
    if action == "quarantine_checkpoint":
        path = Checkpoints(state).path(task)
        if not path.exists():
            raise ApplyRefused(f"{record.id}: task {task} has no checkpoint to move aside; nothing was done")
        moved = quarantine(path, clock.time())
        return Applied(
            action, task, f"moved {path.name} to {moved}", f"mv {shlex.quote(str(moved))} {shlex.quote(str(path))}"
        )
    store = TaskStore(state, config, clock)
    if action in ("requeue_task", "void_task"):
        with store.transaction() as tree:
            if task not in tree:
                raise ApplyRefused(f"{record.id}: {task} is not a task of the task tree; nothing was done")
            before = tree.get(task).exec_state
            if action == "void_task":
                tree.void(task, f"self_heal --apply {record.id}", by="self_heal")
                return Applied(
                    action,
                    task,
                    f"{before} -> {TASK_VOID}",
                    f"VOID is final: re-create it with `tasks.py add {task} ...`",
                    reversible=False,
                )
            if before not in (REQUIRES_MANUAL, NORMAL_CRASH):
                raise ApplyRefused(f"{record.id}: {task} is {before}; only a parked or crashed task is re-queued")
            tree.transition(task, ERROR_FIX_PENDING, f"self_heal --apply {record.id}", by="self_heal")
        return Applied(action, task, f"{before} -> {ERROR_FIX_PENDING}", f"tasks.py mark {task} manual")
    if action == "rerun_task":
        result = task_runner(store).run_next(only=task)
        return Applied(
            action,
            task,
            f"ran it: {result.outcome} ({result.exec_state})",
            "none needed: it ran the task's own command once more, as its next scheduled run would",
        )
    raise ApplyRefused(f"{record.id}: unknown action {action!r}; nothing was done")  # pragma: no cover - checked above


def _good_copy(record: FixRecord) -> tuple[Path, bytes]:
    """The record's last-known-good copy of openclaw.json (kept under the state root's openclaw-config/) and its
    bytes. Read as a state file: a link planted at it or at its folder is refused (UnsafeStateError, exit 2; its
    target was written over openclaw.json), a FIFO is never waited on. ApplyRefused when there is none."""
    good, current = record.evidence.get("good_config"), record.evidence.get("config")
    none = ApplyRefused(f"{record.id}: no last-known-good openclaw.json to restore; nothing was done")
    if not good or not current:
        raise none
    path = Path(str(good))
    try:
        return path, read_capped(path, what="last-known-good openclaw.json")
    except (FileNotFoundError, IsADirectoryError):
        raise none from None


def _restore_config(record: FixRecord, clock: Clock) -> Applied:
    """Put the last-known-good openclaw.json back; the current file is kept beside it (the undo)."""
    good, data = _good_copy(record)
    target = Path(str(record.evidence.get("config")))
    kept = target.with_name(f"{target.name}.before-restore-{utc_iso(clock.time()).replace(':', '')}")
    if target.exists():
        import shutil  # noqa: PLC0415 - 3 ms (bz2, lzma) every script that imports the healer paid

        shutil.copy2(target, kept)
    write_bytes_atomic(target, data, redacted=True)  # the user's own file, byte for byte
    return Applied(
        "restore_openclaw_config",
        str(target),
        f"restored from {good}; the replaced file is {kept}",
        f"cp {shlex.quote(str(kept))} {shlex.quote(str(target))}",
    )


def verify_applied(task: str, *, state: StateRoot, clock: Clock = SYSTEM_CLOCK) -> list[str]:
    """The task just succeeded: its applied fix records are verified. Returns their ids."""
    store = FixStore(state, clock=clock)
    done = []
    with store.locked():
        for record in store.all():
            if record.task == task and record.status == APPLIED:
                record.status = VERIFIED
                store.add_history(record, "verified: the task succeeded after the fix was applied")
                store.save(record)
                done.append(record.id)
    return done


@dataclass
class TaskDiagnoser:
    """The healer as the task runner's `Diagnoser`: fix records for failed runs and FIX tasks."""

    config: Config
    state: StateRoot
    clock: Clock = SYSTEM_CLOCK
    _healer: Healer | None = None

    def healer(self) -> Healer:
        if self._healer is None:
            self._healer = Healer(config=self.config, state=self.state, clock=self.clock)
        return self._healer

    def diagnose_run(
        self, task: Task, *, error: str, error_class: str | None, step: str | None, log_tail: list[str]
    ) -> FixRecord | None:
        evidence = evidence_from_run(task, error=error, error_class=error_class, step=step, log_tail=log_tail)
        return self.healer().heal(evidence).record

    def diagnose_task(self, name: str) -> FixRecord | None:
        return self.healer().heal(gather_task(name, state=self.state, config=self.config)).record

    def verify_applied(self, name: str) -> list[str]:
        return verify_applied(name, state=self.state, clock=self.clock)


def task_runner(store: TaskStore, **kwargs: Any) -> TaskRunner:
    """A task runner whose failures become fix records (the runner itself knows nothing of healing)."""
    return TaskRunner(store, diagnoser=TaskDiagnoser(store.config, store.state, store.clock), **kwargs)
