"""A rule-based reading of why a task keeps failing: distinct problems in its log tail, each with a hint.

The fourth source document hands a task that failed three times to a model for root-cause analysis over
the last 50 log lines, and makes one FIX task per problem found. This is the same reading done by rules:
error lines are grouped by their shape (numbers, paths, hex and quoted values masked), so "timeout after
31s" and "timeout after 47s" are one problem, and each problem gets a suggestion from its error class or
from what it says. Model-backed analysis (self_heal.py) can replace it; nothing here executes anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LOG_LINES = 50  # how much of the log tail is read, as in the source document
MAX_PROBLEMS = 5

_ERRORISH = re.compile(
    r"(?i)(\b(error|exception|traceback|fail(ed|ure)?|fatal|denied|refused|timed? ?out|not found|no such|"
    r"killed|cannot|can't|unable|invalid|missing|abort(ed)?|panic|segmentation fault|out of memory)\b|"
    r"^\s*[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b)"
)
_NOISE = re.compile(r"(?i)^\s*(file \"|at |\^+\s*$|during handling|the above exception|traceback \(most recent)")

# What a class of failure usually needs; the same vocabulary as the error classes in DESIGN.md.
CLASS_HINTS = {
    "transient": "the service it talks to was unreachable or failing (5xx, reset, refused): check that it is up; "
    "the next run retries by itself",
    "rate_limit": "the service is rate-limiting: lower the request rate or raise the quota",
    "timeout": "it ran out of time: find what makes it slow, or give the task a longer --timeout",
    "resource": "the machine ran short of memory or disk: free some, or run it at a quieter time",
    "format": "a model answered in the wrong shape: tighten the prompt or the output schema",
    "permanent": "the command or its input is wrong (it failed the same way each time): fix it; retrying will not help",
    "auth": "the credentials were refused: check the key in its environment variable (never in a file)",
    "fatal": "it cannot work as configured (quota, billing, unsupported model, hardware): a person must change "
    "something",
    "unknown": "read the log tail below; the failure matched no known pattern",
}

# Hints from what the error says, tried in order; the first match wins over the class hint.
TEXT_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"(?i)ModuleNotFoundError|ImportError|No module named"),
        "a Python module is missing or not on the path: install it in the environment the task runs in, "
        "or fix sys.path / PYTHONPATH",
    ),
    (
        re.compile(r"(?i)NameError|is not defined"),
        "a name is used before it exists: often an import that moved; check the imports of the failing file",
    ),
    (
        re.compile(r"(?i)command not found|No such file or directory|FileNotFoundError"),
        "a file or program the task needs is missing: check the path and the task's working folder",
    ),
    (re.compile(r"(?i)permission denied|PermissionError|EACCES"), "a permission is missing on a file or folder"),
    (
        re.compile(r"(?i)connection refused|ECONNREFUSED|could not connect"),
        "nothing is listening where the task connects: start the service or fix its address",
    ),
    (
        re.compile(r"(?i)KeyError|TypeError|AttributeError|ValueError"),
        "the data is not in the shape the code expects: compare the input with what the failing line reads",
    ),
    (
        re.compile(r"(?i)selector|element not found|not visible|playwright|browser"),
        "a page element was not found: the page probably changed; update the selector",
    ),
    (re.compile(r"(?i)no space left|ENOSPC|disk full"), "the disk is full: free space, then run it again"),
    (
        re.compile(r"(?i)out of memory|MemoryError|OOM|CUDA out of memory"),
        "memory ran out: smaller batches, or run it when nothing else is",
    ),
)


@dataclass(frozen=True)
class Problem:
    signature: str  # the masked line: equal for the same problem on different runs
    title: str  # the last actual line, for people
    count: int
    suggestion: str


@dataclass(frozen=True)
class Analysis:
    summary: str
    problems: tuple[Problem, ...]
    lines_read: int


def signature(line: str) -> str:
    """The shape of an error line: what stays the same when the same problem happens again."""
    text = line.strip().lower()
    text = re.sub(r"(['\"]).*?\1", "'…'", text)
    text = re.sub(r"(/[\w.@+-]+)+/?", "PATH", text)
    text = re.sub(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b", "X", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return re.sub(r"\s+", " ", text)[:200]


def hint_for(text: str, error_class: str | None) -> str:
    for pattern, hint in TEXT_HINTS:
        if pattern.search(text):
            return hint
    return CLASS_HINTS.get(error_class or "unknown", CLASS_HINTS["unknown"])


def error_lines(lines: Iterable[str]) -> list[str]:
    return [line.rstrip() for line in lines if line.strip() and _ERRORISH.search(line) and not _NOISE.match(line)]


def analyze(
    log_tail: Sequence[str],
    *,
    error_class: str | None,
    reason: str | None,
    failures: int,
    step: str | None = None,
) -> Analysis:
    """Group the error lines of the last LOG_LINES lines into problems, most recent first."""
    lines = list(log_tail)[-LOG_LINES:]
    groups: dict[str, list[str]] = {}
    last_seen: dict[str, int] = {}
    for i, line in enumerate(lines):
        if error_lines([line]):
            sig = signature(line)
            groups.setdefault(sig, []).append(line.strip())
            last_seen[sig] = i
    # Most recent first: the line that ended the run is the likeliest cause.
    ordered = sorted(groups, key=lambda sig: -last_seen[sig])
    problems = [
        Problem(sig, groups[sig][-1][:300], len(groups[sig]), hint_for(groups[sig][-1], error_class))
        for sig in ordered[:MAX_PROBLEMS]
    ]
    if not problems:
        text = reason or f"failed with class {error_class or 'unknown'}"
        problems = [Problem(signature(text), text[:300], 1, hint_for(text, error_class))]
    where = f" at step {step}" if step else ""
    head = f"failed {failures} times{where}; last class {error_class or 'unknown'}"
    if reason:
        head += f": {reason[:200]}"
    body = [f"{i}. {p.title} (seen {p.count}x) -> {p.suggestion}" for i, p in enumerate(problems, 1)]
    summary = "\n".join([head, f"{len(problems)} distinct problem(s) in the last {len(lines)} log lines:", *body])
    return Analysis(summary, tuple(problems), len(lines))
