"""Reading logs fast: the skill's ledger and log, the source documents' lines, and OpenClaw's JSON lines.

Every input is read the same way, in blocks of `BLOCK_BYTES` with memory that does not grow with the
file, and each line is recognised on its own:

* `2026-06-10T03:12:18Z [RETRY] task=doc-gen-587 model=Qwen3-4B reason=timeout attempt=1/3 delay=5s`: the
  skill's log and the source documents' format (a timestamp without a zone is UTC);
* `{"ts": ..., "event": "retry", ...}`: the skill's ledger;
* `{"time": ..., "_meta": {"logLevelName": ...}, ...}`: OpenClaw's logs (see `openclaw_logs`);
* anything else that is not blank is malformed: counted and skipped. So is a line longer than
  `analysis.max_line_bytes`, which is never held in memory whole.

Speed comes from not touching lines one by one in Python. The common lines ([RETRY], [SUCCESS], [FAILED],
[FALLBACK] of the log format) are matched by one compiled pattern over the whole block, which also
applies the time window; each gives a short key (tag, task, step, target, model, reason) and, on
[SUCCESS], a duration. Keys are counted with `Counter.update` and durations grouped per key with
`array.append` through `map`, both in C; the keys are read back in Python once per distinct key, not once
per line. Every other line (JSON lines, [BREAKER] and the rarer tags, other time zones, malformed lines)
comes back whole from the same pattern and is read in Python, where it is rare. A big plain file can be
split at newlines between forked worker processes, whose figures are merged (`Tally.merge`).
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import gc
import gzip
import io
import json
import math
import operator
import os
import pickle
import re
import stat
import sys
import time
import typing
import zlib
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress, pairwise
from pathlib import Path
from typing import Any, Protocol

from ..core.classify import Classifier, Failure
from ..core.config import ERROR_CLASSES, AnalysisSettings, ClassifySettings
from ..core.ledger import OWN_TASK_PREFIX
from ..core.redact import Redactor
from ..errors import UnsafeStateError, UsageError
from ..state.root import NotRegularFile, open_read, open_regular
from . import openclaw_logs as oc

BLOCK_BYTES = 2 * 1024 * 1024  # read size; a block's parsed rows take about 3 times this
_MAX_KEYS = 250_000  # distinct fast-path keys held (about 40 MB at most) before they are folded
_MAX_DURATIONS = 500_000  # durations held (8 bytes each) before they are folded per task
_MAX_NATIVE_BYTES = 64 << 20  # the native engine's pending keys (with their figures) folded beyond this many bytes
_MAX_SIGNATURES = 500  # distinct unclassified signatures kept; the rest are counted together
_MAX_OPENCLAW_FAILURES = 20_000  # OpenClaw failure lines held (about 1 KB each) to group into turns; more: counted
_PRUNE_EVERY = 65_536  # careful-path lines between two checks that the tables keyed by a line's words are bounded
# The tables keyed by what a line names (a model, a reason word, a tag, an hour): like the tasks, each keeps its
# `analysis.max_tasks` biggest keys once it holds twice that many (3 million distinct `model=` values took 2 GB).
BOUNDED_TABLES = (
    "reasons",
    "fallback_reasons",
    "by_model",
    "by_target",
    "other_tags",
    "trips_by_hour",
    "trips_by_target",
    "openclaw_levels",
    "compensations",
)
# The longest duration a run is timed with (seconds): 2**53, the most the native engine reads exactly. A longer
# one (`duration=1e308s`, 400 digits) is no run's: the run counts untimed on every path. So no sum of durations
# can overflow (two 1e308s made math.fsum raise, and the JSON report said Infinity).
MAX_DURATION_S = float(2**53)

EVENTS = ("retry", "success", "failed", "fallback", "breaker", "resume", "compensate", "incident", "fix", "stuck")
FAILURE_EVENTS = frozenset({"retry", "failed"})  # what the source documents count as failures
_FAILED_ATTEMPTS = frozenset({"retry", "failed", "fallback"})  # whose error may be unclassified
# A workflow runs a step's compensation and its fallback as commands of their own, named `<step>/compensate`
# and `<step>/fallback` in the ledger (durable/workflow.py): parts of the step's run, not runs of their own.
# A step's name never holds `/`, so a step the user named `pay.compensate` is a run like any. (Ledgers written
# before the mark named them `<step>.compensate`: those lines read as runs of a step named so, as they must
# for a step that is one; the compensation figures come from the [COMPENSATE] events, which are unchanged.)
COMPENSATION_SUFFIX = "/compensate"
FALLBACK_SUFFIX = "/fallback"
# The words a log line's `reason=` takes when the ledger had no error class but a status (format_log_line).
STATUS_WORDS = frozenset(
    {
        "retrying",
        "succeeded",
        "not_retryable",
        "attempts_exhausted",
        "deadline",
        "retry_after_too_long",
        "not_selected",
        "interrupted",
        "breaker_open",
        "unreachable",
        "silent",
        "wait_too_long",
        "context_length_exceeded",
        "failed",
        "dead_letter",
        "requires_manual",
    }
)

# --- the fast path: one pattern over a whole block -------------------------------------------------------------

# The fast path takes UTC times only (Z, or no zone as in the source documents); any other offset, and any
# line it cannot read in full, goes to the careful path, which converts it.
# A date that exists (the careful path rejects the others: parse_time), February 29 left to the careful path
# (leap years), the year 0000 too; so the digits compare as the times do.
_DATE = rb"(?!0000)\d{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
_TS_SECONDS = _DATE + rb"[T ](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
_TS_UTC = _TS_SECONDS + rb"(?:\.\d+)?Z?"
_COMMON = rb"(?:RETRY|SUCCESS|FAILED|FALLBACK)"
_KEY_FIELD = rb"(?:step|target|model|reason)"
# A value's bytes on the fast path: none that would make the careful path read the fields otherwise. It reads
# fields with `_FIELD` on the decoded text, where a value ends at any white space (Unicode's too: the separators
# \x1c-\x1f, and characters whose UTF-8 starts with \xc2, \xe1, \xe2 or \xe3, such as NBSP; a line with any of
# those bytes in a value goes to the careful path, those of other characters stay here) and a value that starts
# with a quote ends at the closing one (`task="a"model=m` holds two fields there).
_V = rb'[^\s"\x1c-\x1f\xc2\xe1\xe2\xe3]'
# Possessive: a line whose run of key fields is followed by neither another field nor its end (a bare word)
# goes whole to the careful path; giving fields back would read it with fewer fields than that path does.
_KEY = rb"task=" + _V + rb"+(?: " + _KEY_FIELD + rb"=" + _V + rb"+)*+"
# The key's end, checked by lookahead: an optional plain duration right after the run (`duration=47.2s`), then
# fields of plain values, none of them a key field or a duration, to the line's end. So the fast path reads a
# line's task, step, target, model and reason from the run of those fields right after the tag, and its
# duration from a `duration=...s` right after them, as every line of the skill's log and of the source
# documents is written; a line with a key field or a duration anywhere else (`task=a attempt=2 reason=oom`,
# `tokens=9 duration=2s`), a `detail=` (the careful path files an unclassified error under it), a duration of
# another shape (`duration=2.5sec`, `duration=47`), a quoted value or odd spacing goes to the careful path,
# which reads every field: the fast path never reads a line otherwise than that path does (the tests hold it
# to that, line for line).
_AFTER = rb"(?= |\r?(?:\n|\Z))"
_REST_FIELD = rb" (?!(?:task|step|target|model|reason|duration|detail)=)[a-z_]+=" + _V + rb"*+"
_KEY_END = rb"(?=(?: duration=[\d.]+s" + _AFTER + rb")?(?:" + _REST_FIELD + rb")*+\r?(?:\n|\Z))"
_DURATION = rb"(?: duration=([\d.]+)s|)"  # an alternation with nothing: fewer steps than an optional group
# A tag the report only counts ([INFO], [DEBUG], [WARN], ...: most of a busy log): its key is the tag and
# `]`, and nothing of the line after it is read. The tags the report reads stay out of it. The commonest
# such tags have a one-byte key instead, their first letter: CPython keeps a single bytes object for each
# byte value, so their rows allocate no key and hash it once (`CODE_TAGS` reads the key back).
_TRACKED = rb"(?:RETRY|SUCCESS|FAILED|FALLBACK|BREAKER|RESUME|COMPENSATE|INCIDENT|FIX|STUCK)\]"
_TAG_END = rb"(?= |\r?(?:\n|\Z))"
CODE_TAGS = {
    tag[:1].encode(): tag for tag in ("INFO", "DEBUG", "WARN", "ERROR", "TRACE", "NOTICE", "VERBOSE", "CRITICAL")
}
# One lookahead each, the tag's end inside it (a lookahead nested in another costs a step more on every line).
_CODED_TAG = b"|".join(code + b"(?=" + tag[1:].encode() + rb"\](?: |\r?(?:\n|\Z)))" for code, tag in CODE_TAGS.items())
_UNCODED_TAG = rb"(?!" + _TRACKED + rb")[A-Z][A-Z_]*\]" + _TAG_END
_OTHER_TAG = rb"(?<=\[)(?:" + _CODED_TAG + b"|" + _UNCODED_TAG + b")"

# The pattern of a whole file (no time window, no recent period): the commonest case, kept to the fewest steps
# per line, each measured (`re` spends a few nanoseconds a step, and every line takes them all): the
# timestamp's optional parts as one alternation after the seconds, the plain ` [` first, instead of two
# optional groups that every line tries. (Tried and dropped: the commonest untracked tags as literal keys,
# `INFO]`, to save their lookahead: the pattern was faster, but counting five fresh bytes a line instead of
# CPython's one shared byte object cost more than it saved.)
_WHOLE_FILE = (
    rb"\n(?:" + _TS_SECONDS + rb"(?: |Z |\.\d+Z? )\["
    b"("
    + _COMMON
    + rb"\] "
    + _KEY
    + _KEY_END
    + b"|"
    + _CODED_TAG
    + b"|"
    + _UNCODED_TAG
    + b")"
    + _DURATION
    + rb"|([^\n]+)|)"
)

# Positions after which the 14 digits of `YYYY-MM-DDTHH:MM:SS` have a separator.
_SEPARATORS = {3: "-", 5: "-", 7: "[T ]", 9: ":", 11: ":"}


def utc_digits(ts: int) -> str:
    """The 14 digits `YYYYMMDDhhmmss` of `ts` (epoch seconds, UTC): what both fast paths compare a line's time
    with (the range regexes below, and the native scanner's bounds)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(ts))


def _at_least(ts: int) -> str:
    """A regex matching 19-character timestamps (UTC, to the second) at or after `ts`."""
    d = utc_digits(ts)

    def rest(i: int) -> str:
        if i == len(d):
            return ""
        same = d[i] + _SEPARATORS.get(i, "") + rest(i + 1)
        return f"(?:{same}|[{int(d[i]) + 1}-9])" if d[i] != "9" else same

    return rest(0)


def _before(ts: int) -> str:
    """A regex matching 19-character timestamps (UTC, to the second) strictly before `ts`."""
    d = utc_digits(ts)

    def rest(i: int) -> str:
        if i == len(d):
            return "(?!)"
        same = d[i] + _SEPARATORS.get(i, "") + rest(i + 1)
        return f"(?:{same}|[0-{int(d[i]) - 1}])" if d[i] != "0" else same

    return rest(0)


def range_regex(since: int | None, until: int | None) -> str | None:
    """A lookahead body for timestamps in [since, until) (epoch seconds), or None for no bound at all."""
    parts = []
    if since is not None:
        parts.append(f"(?={_at_least(since)})")
    if until is not None:
        parts.append(f"(?={_before(until)})")
    return "".join(parts) or None


@dataclass(frozen=True)
class Window:
    """Which lines count: [since, until) in whole epoch seconds (None: unbounded); `recent` for the P3 rule."""

    since: int | None = None
    until: int | None = None
    recent: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # The fast paths count a recent [SUCCESS] before they look at the window: the period lies inside it.
        if self.recent is None:
            return
        start, end = self.recent
        if (self.since is not None and start < self.since) or (self.until is not None and end > self.until):
            raise ValueError(f"the recent period {self.recent} is not inside the window [{self.since}, {self.until})")

    def contains(self, ts: int) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def is_recent(self, ts: int) -> bool:
        return self.recent is not None and self.recent[0] <= ts < self.recent[1]


def fast_pattern(window: Window) -> FastPattern:
    """The block pattern of a window (see `FastPattern`)."""
    return FastPattern(window)


def _block_pattern(window: Window, *, recent: bool) -> re.Pattern[bytes]:
    """The block pattern: every line gives a row (key, duration, line).

    A common line in the window gives its key (`RETRY] task=x model=m reason=r`) and, on [SUCCESS], its
    duration; a [SUCCESS] in the recent period keeps its bracket (`[SUCCESS] task=x`) so its durations
    stay apart for P3; an untracked tag gives its key (`NOTICE_X]`, or one byte for the commonest, `I` for
    [INFO]); a log-format line outside the window gives the key `]`; every other non-empty line comes back
    whole as `line`; a blank line gives nothing. With no bound and no recent period (a whole file read), the
    pattern is `_WHOLE_FILE`, where the timestamp is followed by the tag directly; otherwise the timestamp's
    prefix and the key are paired by lookbehind (what the prefix consumed), so one group serves every kind of
    key.
    """
    inside = range_regex(window.since, window.until)
    period = range_regex(*window.recent) if recent and window.recent else None
    if not inside and not period:
        return re.compile(_WHOLE_FILE)
    prefixes = []
    keys_list = [rb"(?<=\[)" + _COMMON + rb"\] " + _KEY + _KEY_END, _OTHER_TAG]
    if period:
        prefixes.append(b"(?=" + period.encode() + b")" + _TS_UTC + rb" (?=\[SUCCESS\] task=)")
        keys_list.append(rb"(?<= )\[SUCCESS\] " + _KEY + _KEY_END)
    if inside:
        prefixes.append(b"(?=" + inside.encode() + b")" + _TS_UTC + rb" \[")
        prefixes.append(b"(?!" + inside.encode() + b")" + _TS_UTC + rb" \[[A-Z]+(?=\] )")
        keys_list.append(rb"(?<=[A-Z])\]")
    else:
        prefixes.append(_TS_UTC + rb" \[")
    pattern = rb"\n(?:(?:" + b"|".join(prefixes) + rb")(" + b"|".join(keys_list) + rb")" + _DURATION + rb"|([^\n]+)|)"
    return re.compile(pattern)


_MAX_RECENT_DAYS = 3  # a longer recent period is looked for on every line


class FastPattern:
    """The block pattern of a window, picked per block: the one that looks for the recent period (P3) only
    for a block that holds a line of one of its days.

    Looking for the recent period costs about a sixth of the pattern's time on every line; a log read after
    the fact (or a block of yesterday's lines) has none, and one search for the days' dates
    (`\\nYYYY-MM-DD`, both timestamp forms) says so. A block where one of those dates appears anywhere at a
    line's start is read with the full pattern, which checks each line: the same rows either way.
    """

    def __init__(self, window: Window) -> None:
        self.full = _block_pattern(window, recent=True)
        self.without_recent = self.full
        self._days: re.Pattern[bytes] | None = None
        if window.recent:
            start, end = window.recent
            first, last = start // 86400, (end - 1) // 86400
            if last - first < _MAX_RECENT_DAYS:
                days = (time.strftime("%Y-%m-%d", time.gmtime(d * 86400)).encode() for d in range(first, last + 1))
                self._days = re.compile(rb"\n(?:" + b"|".join(days) + b")")
                self.without_recent = _block_pattern(window, recent=False)

    def findall(self, block: memoryview | bytes) -> list[tuple[bytes, bytes, bytes]]:
        """The rows of one block (`_block_pattern`)."""
        if self._days is None or self._days.search(block):
            return self.full.findall(block)
        return self.without_recent.findall(block)


# --- the careful path: one line at a time ----------------------------------------------------------------------

_TS_PARTS = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d+))?\s?(Z|[+-]\d\d:?\d\d)?\Z")
_LOG_LINE = re.compile(
    rb"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?\s?(?:Z|[+-]\d\d:?\d\d)?) \[([A-Z][A-Z_]*)\](?: (.*))?\Z"
)
_FIELD = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_time(text: str) -> float | None:
    """Epoch seconds for ISO-8601 text (`2026-06-10T03:12:18Z`, `.123+08:00`, no zone: UTC), else None."""
    m = _TS_PARTS.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= month <= 12 and year >= 1 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return None  # a date that does not exist (February 30, the year 0) is not rolled over into another
    if not (hour < 24 and minute < 60 and second < 60):
        return None
    try:
        ts = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        ts -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    # A fraction never carries into the next second (`59.999999999` is not `00`: math.floor gives the second
    # the text names, as the fast paths compare it), however the float rounds.
    return ts + frac if ts + frac < ts + 1 else math.nextafter(float(ts + 1), -math.inf)


def parse_fields(text: str) -> dict[str, str]:
    """`key=value` pairs of a log line; "quoted values" are JSON strings."""
    out: dict[str, str] = {}
    for key, raw in _FIELD.findall(text):
        value = raw
        if raw.startswith('"'):
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw[1:-1]
        out.setdefault(key, str(value))
    return out


# --- what is counted --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TaskStats:
    """One task's figures in the window. Durations in seconds, from its [SUCCESS] events."""

    retries: int = 0
    successes: int = 0
    failures: int = 0
    fallbacks: int = 0
    timed: int = 0  # successes that carried a duration
    total_s: float = 0.0
    max_s: float = 0.0
    recent_timed: int = 0
    recent_total_s: float = 0.0

    @property
    def events(self) -> int:
        return self.retries + self.successes + self.failures + self.fallbacks


@dataclass
class Signature:
    """Unclassified errors that read the same once numbers, ids, paths and quoted values are masked."""

    text: str
    count: int = 0
    samples: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    status: int | None = None


@dataclass
class InputInfo:
    """What one input gave: its lines, and why it could not be read to the end, if it could not."""

    path: str
    source: str  # "explicit" | "ledger" | "log" | "openclaw"
    lines: int = 0
    malformed: int = 0
    error: str | None = None
    first: float | None = None
    last: float | None = None


class Tally:
    """Every figure the report needs, updated block by block; its memory is bounded, not its input."""

    def __init__(
        self,
        settings: AnalysisSettings,
        classify: ClassifySettings,
        window: Window,
        *,
        task: str | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.settings = settings
        self.window = window
        self.task = task
        self.redactor = redactor or Redactor()
        self._classify = classify
        self._classifier = Classifier(classify)
        # Fast path: keys and durations waiting to be folded.
        self._keys: Counter[bytes] = Counter()
        self._durations: defaultdict[bytes, array[float]] = defaultdict(_doubles)
        self._native: BlockCounter | None = None  # the native engine's counter, holding its own pending keys
        self._held_durations = 0
        self._word_known: dict[str, bool] = {}
        self._seconds = _Seconds()
        self._shapes: dict[str, tuple[str, str]] = {}  # error text -> (redacted, signature)
        # Lines.
        self.lines = 0
        self.malformed = 0
        self.blank = 0
        self.outside = 0  # well-formed lines outside the time window
        self.other_tasks = 0  # events of tasks other than --task
        # [SUCCESS] and [FAILED] events that end no run (see `_count`): finished runs are the others.
        self.not_runs: Counter[str] = Counter()
        self.compensations: Counter[str] = Counter()  # compensate events by status
        self.own_events = 0  # events of self-heal's own calls (core.ledger.own_task), left out of every figure
        self._python_lines = 0  # lines the fast path handed to Python (blank ones included)
        # Events.
        self.events: Counter[str] = Counter()
        self.other_tags: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.fallback_reasons: Counter[str] = Counter()
        self.by_model: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.by_target: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.tasks: dict[str, TaskStats] = {}
        self.tasks_folded = 0
        self.folded_max_events = 0
        self.let_go: Counter[str] = Counter()  # per bounded table: the keys let go to bound memory
        self.let_go_events: Counter[str] = Counter()  # and the events they held (so totals stay exact)
        self._careful_lines = 0
        self.timed = 0
        self.total_s = 0.0
        self.trips_by_hour: Counter[int] = Counter()
        self.trips_by_target: Counter[str] = Counter()
        self.unclassified: dict[str, Signature] = {}
        self.unclassified_other = 0
        # OpenClaw.
        self.openclaw_lines = 0
        self.openclaw_levels: Counter[str] = Counter()
        # OpenClaw's failure lines, grouped at the end (`openclaw_summary`): a turn, a chain or a cron run is
        # logged on several lines, possibly on both sides of a worker's cut.
        self.openclaw_found: list[oc.Failure] = []
        self.openclaw_dropped = 0
        self._openclaw_summary: oc.Summary | None = None

    # -- several processes -------------------------------------------------------------------------------------

    _NOT_SENT = ("_classifier", "_classify", "redactor", "settings", "_seconds", "_shapes", "_native")

    def spawn(self) -> Tally:
        """An empty Tally that counts the same way (for a worker's share of the inputs)."""
        return Tally(self.settings, self._classify, self.window, task=self.task, redactor=self.redactor)

    def __getstate__(self) -> dict[str, Any]:
        """What a worker sends back: its figures, folded; the settings and compiled helpers stay home."""
        self.fold()
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_SENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # only ever merged into a whole Tally, never used on its own

    def merge(self, other: Tally) -> None:
        """Add the figures of another Tally (a worker's share of the same inputs) to these."""
        self.fold()
        for name in (
            "lines",
            "malformed",
            "blank",
            "outside",
            "other_tasks",
            "own_events",
            "tasks_folded",
            "timed",
            "openclaw_lines",
            "unclassified_other",
            "openclaw_dropped",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.total_s += other.total_s
        self.folded_max_events = max(self.folded_max_events, other.folded_max_events)
        for name in (
            "events",
            "other_tags",
            "trips_by_hour",
            "trips_by_target",
            "openclaw_levels",
            "reasons",
            "fallback_reasons",
            "compensations",
            "not_runs",
            "let_go",
            "let_go_events",
        ):
            getattr(self, name).update(getattr(other, name))
        for mine, theirs in ((self.by_model, other.by_model), (self.by_target, other.by_target)):
            for key, counts in theirs.items():
                mine[key].update(counts)
        for name, stats in other.tasks.items():
            own = self.tasks.get(name)
            if own is None:
                self.tasks[name] = stats
                continue
            for f in (
                "retries",
                "successes",
                "failures",
                "fallbacks",
                "timed",
                "total_s",
                "recent_timed",
                "recent_total_s",
            ):
                setattr(own, f, getattr(own, f) + getattr(stats, f))
            own.max_s = max(own.max_s, stats.max_s)
        for sig in other.unclassified.values():
            entry = self.unclassified.get(sig.text)
            if entry is None:
                if len(self.unclassified) >= _MAX_SIGNATURES:
                    self.unclassified_other += sig.count
                    continue
                self.unclassified[sig.text] = sig
                continue
            entry.count += sig.count
            entry.sources |= sig.sources
            entry.samples = (entry.samples + [x for x in sig.samples if x not in entry.samples])[:2]
        room = _MAX_OPENCLAW_FAILURES - len(self.openclaw_found)
        self.openclaw_found += other.openclaw_found[: max(0, room)]
        self.openclaw_dropped += max(0, len(other.openclaw_found) - max(0, room))
        self._prune_tasks()

    # -- the fast path -------------------------------------------------------------------------------------------

    def add_rows(self, rows: list[tuple[bytes, bytes, bytes]]) -> list[bytes]:
        """Count one block's pattern rows; return the lines that need the careful path."""
        if not rows:
            return []
        self.lines += len(rows)
        keys, durations, lines = zip(*rows, strict=True)
        # A [SUCCESS] with a duration is counted with its duration, per key (a table of a few thousand
        # tasks, kept in cache); only the other keys go to the big table of every (task, model, reason).
        empty_before = self._keys[b""]  # blank lines and lines for the careful path: most blocks have none
        self._keys.update(compress(keys, map(operator.not_, durations)))
        if any(durations):
            timed_keys: Iterable[bytes] = compress(keys, durations)
            try:
                values = list(map(self._seconds.__getitem__, filter(None, durations)))
                readable = max(values) <= MAX_DURATION_S
            except ValueError:
                readable = False
            if not readable:  # a duration like 1.2.3s or 400 digits: the event counts, untimed, as on the careful path
                pairs = [(k, _seconds(d.decode())) for k, d in zip(keys, durations, strict=True) if d]
                self._keys.update(k for k, v in pairs if v is None)
                timed_keys, values = [k for k, v in pairs if v is not None], [v for _, v in pairs if v is not None]
            # array.append through map: the grouping by key runs in C, one dict lookup per duration.
            deque(map(array.append, map(self._durations.__getitem__, timed_keys), values), maxlen=0)
            self._held_durations += len(values)
            if self._held_durations > _MAX_DURATIONS:
                self._fold_durations()
        careful = list(filter(None, lines)) if self._keys[b""] != empty_before else []
        self._python_lines += len(careful)
        if len(self._keys) > _MAX_KEYS:
            self.fold()
        return careful

    def add_block(self, block: memoryview, engine: BlockEngine) -> list[bytes]:
        """Count one block with the native engine (what `add_rows` does with the pattern's rows); return the
        lines that need the careful path."""
        if self._native is None:
            self._native = engine.counter(self.window.since, self.window.until, self.window.recent)
        lines, careful = self._native.scan(block)
        self.lines += lines
        self._python_lines += len(careful)
        keys, held = self._native.pending()
        if keys > _MAX_KEYS or held > _MAX_NATIVE_BYTES:  # long keys (a task name of a kilobyte) fold sooner
            self.fold()
        return careful

    def _take_native(self) -> None:
        """The native engine's pending keys: the timed ones folded (as `_fold_durations` folds), the others
        moved to the ones `fold` reads."""
        if self._native is None:
            return
        counts, timed = self._native.export()
        for key, n, total, longest in timed:
            self._fold_timed(key, n, total, longest)
        self._keys.update(counts)

    def fold(self) -> None:
        """Fold the fast path's pending keys and durations into the figures: once per distinct key, not per line.

        Called at the end, and whenever more than `_MAX_KEYS` distinct keys are pending (memory stays bounded
        whatever the number of tasks; each fold costs a few microseconds per distinct key).
        """
        self._take_native()
        self._fold_durations()
        keys, self._keys = self._keys, Counter()
        # The empty key: blank lines, and the lines the careful path read (counted there).
        self.blank += keys.pop(b"", 0) - self._python_lines
        self._python_lines = 0
        self.outside += keys.pop(b"]", 0)
        count, parse = self._count, _parse_key
        for key, n in keys.items():
            if key[-1:] == b"]" or key in CODE_TAGS:  # an untracked tag: counted, never read
                self.other_tags[_untracked_tag(key)] += n
                continue
            _, event, fields = parse(key)
            count(
                event,
                n,
                task=fields.get("task"),
                step=fields.get("step"),
                target=fields.get("target"),
                model=fields.get("model"),
                reason=fields.get("reason"),
                source="log",
            )
        self._prune_tasks()

    def _fold_durations(self) -> None:
        for key, values in self._durations.items():
            if values:
                self._fold_timed(key, len(values), math.fsum(values), max(values))
        self._durations.clear()
        self._held_durations = 0

    def _fold_timed(self, key: bytes, n: int, total: float, longest: float) -> None:
        """One timed key's `n` rows: their durations add up to `total`, the longest `longest`."""
        if key == b"]":  # `[INFO] duration=...s` outside the window
            self.outside += n
            return
        if key[-1:] == b"]" or key in CODE_TAGS:  # `[INFO] duration=...s`: an untracked tag that looked timed
            self.other_tags[_untracked_tag(key)] += n
            return
        recent, event, fields = _parse_key(key)
        task = fields.get("task")
        step = fields.get("step")
        counted = self._count(
            event,
            n,
            task=task,
            step=step,
            target=fields.get("target"),
            model=fields.get("model"),
            reason=fields.get("reason"),
            source="log",
        )
        if counted and event == "success" and not _is_compensation(step):
            self.duration(task if task != "-" else None, n, total, longest, recent=recent)

    # -- the careful path ---------------------------------------------------------------------------------------

    def add_line(self, raw: bytes, info: InputInfo) -> None:
        """One line the fast path did not take: a rarer log line, a JSON line, a blank or malformed one."""
        self._careful_lines += 1
        if self._careful_lines % _PRUNE_EVERY == 0:
            self._prune_tasks()
        line = raw.strip()
        if not line:
            self.blank += 1  # only white space
            return
        if line[:1] == b"{":
            self._json_line(line, info)
            return
        m = _LOG_LINE.match(line)
        ts = parse_time(m.group(1).decode("ascii")) if m else None
        if m is None or ts is None:
            self._malformed(info)
            return
        self._stamp(info, ts)
        if not self.window.contains(math.floor(ts)):
            self.outside += 1
            return
        tag = m.group(2).decode("ascii")
        event = tag.lower()
        if event not in EVENTS:  # the tag decides before any field is read
            self.other_tags[tag] += 1
            return
        fields = parse_fields(m.group(3).decode("utf-8", "replace")) if m.group(3) else {}
        duration = _seconds(fields.get("duration", "").rstrip("s")) if event == "success" else None
        self.event(
            event,
            task=fields.get("task"),
            step=fields.get("step"),
            target=fields.get("target"),
            model=fields.get("model"),
            reason=fields.get("state") if event == "breaker" else fields.get("reason"),
            detail=fields.get("detail"),
            ts=ts,
            duration=duration,
            source="log",
        )

    def _json_line(self, line: bytes, info: InputInfo) -> None:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            self._malformed(info)
            return
        if not isinstance(obj, dict):
            self._malformed(info)
            return
        if isinstance(obj.get("_meta"), dict):
            record = oc.parse(obj)
            ts = oc.timestamp(record.time) if record else None
            if record is None or ts is None:
                self._malformed(info)
                return
            self._stamp(info, ts)
            if not self.window.contains(math.floor(ts)):
                self.outside += 1
                return
            self._openclaw(record)
            return
        event, ts_text = obj.get("event"), obj.get("ts")
        ts = parse_time(ts_text) if isinstance(ts_text, str) else None
        if not isinstance(event, str) or ts is None:
            self._malformed(info)
            return
        self._stamp(info, ts)
        if not self.window.contains(math.floor(ts)):
            self.outside += 1
            return
        if event not in EVENTS:
            self.other_tags[event.upper()] += 1
            return
        error_class = _str(obj.get("error_class"))
        status = _str(obj.get("status"))
        duration = obj.get("duration_s")
        self.event(
            event,
            task=_str(obj.get("task")),
            step=_str(obj.get("step")),
            target=_str(obj.get("target")),
            model=_str(obj.get("model")),
            # The word the log line shows as reason=: the class, else the status (ledger.format_log_line).
            reason=status if event == "breaker" else (error_class or status),
            detail=_str(obj.get("reason")),
            unclassified=error_class == "unknown" or obj.get("rule") == "unclassified",
            ts=ts,
            duration=_seconds(duration) if isinstance(duration, (int, float)) and event == "success" else None,
            source="ledger",
        )

    def _malformed(self, info: InputInfo) -> None:
        self.malformed += 1
        info.malformed += 1

    @staticmethod
    def _stamp(info: InputInfo, ts: float) -> None:
        if info.first is None:
            info.first = ts
        info.last = ts

    # -- one event, whichever path it came by --------------------------------------------------------------------

    def event(
        self,
        event: str,
        *,
        task: str | None,
        step: str | None = None,
        target: str | None = None,
        model: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
        unclassified: bool | None = None,
        ts: float | None = None,
        duration: float | None = None,
        source: str,
    ) -> None:
        """One event read by the careful path. `reason` is the word a log line shows as reason= (class or status)."""
        counted = self._count(
            event,
            1,
            task=task,
            step=step,
            target=target,
            model=model,
            reason=reason,
            source=source,
            detail=detail,
            unclassified=unclassified,
        )
        if not counted:
            return
        if event == "breaker" and reason == "open" and ts is not None:
            self.trips_by_hour[math.floor(ts) // 3600] += 1
            self.trips_by_target[target or "?"] += 1
        if duration is not None and duration >= 0 and ts is not None and not _is_compensation(step):
            recent = self.window.is_recent(math.floor(ts))
            self.duration(task if task and task != "-" else None, 1, duration, duration, recent=recent)

    def _count(
        self,
        event: str,
        n: int,
        *,
        task: str | None,
        target: str | None,
        model: str | None,
        reason: str | None,
        source: str,
        step: str | None = None,
        detail: str | None = None,
        unclassified: bool | None = None,
    ) -> bool:
        """Count `n` events of one kind; False when --task leaves them out, or when they are self-heal's own.

        A run ends in a [SUCCESS] or a [FAILED], except those of a workflow step's own commands: its
        compensation's (undoing a done step after a later one failed: the failed step ended that run) and its
        fallback's, whose success answers for the step, so the step's [FAILED] before it ended no run, and
        whose failure leaves that [FAILED] the run's end. Those go to `not_runs`, and a task's figures count
        them so. The events themselves, their retries and their reasons count as any."""
        if task == "-" or not task:
            task = None
        elif task.startswith(OWN_TASK_PREFIX) and task != self.task:
            # self-heal's own calls (its root-cause analysis of a failed task) are not the user's runs.
            self.own_events += n
            return False
        if self.task is not None and task != self.task:
            self.other_tasks += n
            return False
        self.events[event] += n
        ended: str | None = event  # how this event ends the task's run: success, failed, or (None) not at all
        if event in ("success", "failed") and step:
            if _is_compensation(step) or (event == "failed" and step.endswith(FALLBACK_SUFFIX)):
                self.not_runs[event] += n
                ended = None
            elif event == "success" and step.endswith(FALLBACK_SUFFIX):
                self.not_runs["failed"] += n  # the step's own [FAILED]: its fallback answered for it
                ended = "rescued"
        # The rules engine answering for a chain every model failed (models/llm.py) is that engine's success.
        per_key = "success" if event == "fallback" and reason == "rules" else event
        if reason:
            if event in FAILURE_EVENTS:
                self.reasons[reason] = self.reasons.get(reason, 0) + n
            elif event == "fallback":
                self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + n
        if model:
            self.by_model[model][per_key] += n
        if target and target != "-":
            self.by_target[target][per_key] += n
        if event == "compensate" and reason:
            self.compensations[reason] += n  # started (one per failed workflow run), compensated, failed
        if task is not None:
            stats = self.tasks.get(task)
            if stats is None:
                stats = self.tasks[task] = TaskStats()
            if ended == "success":
                stats.successes += n
            elif ended == "rescued":
                stats.successes += n
                stats.failures -= n  # a fold may meet it before the step's [FAILED]: the sum is what counts
            elif event == "retry":
                stats.retries += n
            elif ended == "failed":
                stats.failures += n
            elif event == "fallback":
                stats.fallbacks += n
        if event in _FAILED_ATTEMPTS:
            if unclassified is None:
                unclassified = reason is not None and not self._known_word(reason)
            if unclassified:
                self.add_unclassified(detail or reason or "unknown", source, n=n)
        return True

    def duration(self, task: str | None, count: int, total: float, longest: float, *, recent: bool) -> None:
        """`count` durations of one task (None: of no task) adding up to `total`, the longest `longest`."""
        self.timed += count
        self.total_s += total
        if task is None or (self.task is not None and task != self.task):
            return
        stats = self.tasks.get(task)
        if stats is None:
            stats = self.tasks[task] = TaskStats()
        stats.timed += count
        stats.total_s += total
        stats.max_s = max(stats.max_s, longest)
        if recent:
            stats.recent_timed += count
            stats.recent_total_s += total

    def _known_word(self, word: str) -> bool:
        """Whether a reason word names a class or status, or one of the classification rules reads it."""
        known = self._word_known.get(word)
        if known is None:
            if word in ERROR_CLASSES or word in STATUS_WORDS:
                known = word != "unknown"
            else:
                known = not self._classifier.classify(Failure(source="log", text=word), now=0).unclassified
            if len(self._word_known) < 10_000:
                self._word_known[word] = known
        return known

    def add_unclassified(self, text: str, source: str, *, n: int = 1, status: int | None = None) -> str | None:
        """Count an error no rule classifies under its signature; return the signature (None: not grouped)."""
        shaped = self._shapes.get(text)
        if shaped is None:  # the same reason word comes back for every (task, model) key of a fold
            redacted = self.redactor.text(text.strip())[:500]
            shaped = (redacted, signature(redacted))
            if len(self._shapes) < 10_000:
                self._shapes[text] = shaped
        text, sig = shaped
        entry = self.unclassified.get(sig)
        if entry is None:
            if len(self.unclassified) >= _MAX_SIGNATURES:
                self.unclassified_other += n
                return None
            entry = self.unclassified[sig] = Signature(sig, status=status)
        entry.count += n
        entry.sources.add(source)
        if len(entry.samples) < 2 and text not in entry.samples:
            entry.samples.append(text)
        return sig

    def _prune_tasks(self) -> None:
        """Keep the most active tasks, and the biggest keys of each table keyed by a line's words, when there are
        too many to hold; the report says how many were let go."""
        limit = self.settings.max_tasks
        for name in BOUNDED_TABLES:
            table = getattr(self, name)
            if len(table) > 2 * limit:
                weigh = _weight_of_counts if name in ("by_model", "by_target") else _weight
                ranked = sorted(table.items(), key=weigh, reverse=True)
                self.let_go[name] += len(ranked) - limit
                self.let_go_events[name] += sum(map(weigh, ranked[limit:]))
                table.clear()
                dict.update(table, ranked[:limit])  # Counter.update would count the pairs themselves
        if len(self.tasks) <= 2 * limit:
            return
        ranked = sorted(self.tasks.items(), key=lambda item: item[1].events, reverse=True)
        for _, stats in ranked[limit:]:
            self.tasks_folded += 1
            self.folded_max_events = max(self.folded_max_events, stats.events)
        self.tasks = dict(ranked[:limit])

    # -- OpenClaw ---------------------------------------------------------------------------------------------------

    def _openclaw(self, record: oc.Record) -> None:
        self.openclaw_lines += 1
        self.openclaw_levels[record.level] += 1
        found = oc.failure(record)
        if found is None:
            return
        if self.task is not None and found.job != self.task:
            if found.kind != oc.FALLBACK_STEP:
                self.other_tasks += 1
            return
        if len(self.openclaw_found) >= _MAX_OPENCLAW_FAILURES:
            self.openclaw_dropped += 1
            return
        self.openclaw_found.append(found)

    def openclaw_class(self, error: str, status: int | None, reason: str | None) -> str | None:
        """The error class of an OpenClaw failure (None: no rule and no reason word says)."""
        return oc.error_class(self._classifier, error, status, reason)

    def openclaw_summary(self) -> oc.Summary:
        """OpenClaw's failures per turn, chain and cron job; their unclassified errors counted once each."""
        if self._openclaw_summary is not None:
            return self._openclaw_summary
        summary = self._openclaw_summary = oc.summarize(self.openclaw_found)
        errors: list[tuple[str, int | None, str | None, int]] = [
            (t.error, t.chain.status if t.chain else None, t.chain.reason if t.chain else None, 1)
            for t in summary.turns
        ]
        errors += [
            (c.error, c.status, c.reason, 1) for c in summary.chains if not any(t.chain is c for t in summary.turns)
        ]
        errors += [(e, None, None, n) for job in summary.cron for e, n in job.errors.items()]
        errors += [(c.error, None, None, 1) for c in summary.cli]
        errors += [(f.error, None, None, 1) for f in summary.errors]  # ERROR lines of no known kind
        for error, status, reason, n in errors:
            if error and self.openclaw_class(error, status, reason) is None:
                self.add_unclassified(error, "openclaw", n=n, status=status)
        return summary


def _weight(item: tuple[Any, int]) -> int:
    return item[1]


def _weight_of_counts(item: tuple[Any, Counter[str]]) -> int:
    return sum(item[1].values())


def _parse_key(key: bytes) -> tuple[bool, str, dict[str, str]]:
    """(recent, event, fields) of a fast-path key such as `[SUCCESS] task=x model=m`."""
    text = key.decode("utf-8", "replace")
    recent = text.startswith("[")
    tag, _, rest = text.lstrip("[").partition("] ")
    fields: dict[str, str] = {}
    for part in rest.split(" "):  # plain values, one space apart (`_V`, `_KEY_END`): as parse_fields reads them
        name, _, value = part.partition("=")
        fields.setdefault(name, value)  # the first of a repeated field, as parse_fields reads it
    return recent, tag.lower(), fields


def _untracked_tag(key: bytes) -> str:
    """The tag of an untracked tag's fast-path key: `NOTICE_X]`, or the one byte of a common tag (`I`: INFO)."""
    return CODE_TAGS.get(key) or key[:-1].decode("ascii")


class _Seconds(dict[bytes, float]):
    """Durations as floats, each distinct text converted once (a dict lookup instead of float() per line).

    A log's durations repeat (`47.2`): the first 20,000 distinct texts are kept, the rest converted each
    time. A text that is not a number raises ValueError, as float() does."""

    def __missing__(self, text: bytes) -> float:
        value = float(text)
        if len(self) < 20_000:
            self[text] = value
        return value


def _doubles() -> array[float]:
    return array("d")


def _is_compensation(step: str | None) -> bool:
    """Whether a step name is a workflow step's compensation command (`<step>/compensate`)."""
    return step is not None and step.endswith(COMPENSATION_SUFFIX)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _seconds(value: str | float | None) -> float | None:
    """A run's duration in seconds, from its text or a ledger's number; None when it is none (not a number,
    negative, or over `MAX_DURATION_S`)."""
    try:
        seconds = float(value) if value or value == 0 else None
    except (ValueError, OverflowError):  # OverflowError: a ledger's integer of hundreds of digits
        return None
    return seconds if seconds is not None and 0 <= seconds <= MAX_DURATION_S else None


# --- signatures of unclassified errors ----------------------------------------------------------------------------

_MASKS = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I), "<url>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ][\d:.]+(?:Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"(?<![\w.-])(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?"), "<path>"),
    (re.compile(r'"[^"\n]*"'), '"<text>"'),
    (re.compile(r"'[^'\n]*'"), "'<text>'"),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"(?<![A-Za-z])\d+(?:\.\d+)?"), "<n>"),
)
_SPACE = re.compile(r"\s+")


def signature(text: str) -> str:
    """The shape of an error message: URLs, times, ids, paths, quoted values and numbers masked.

    `timeout after 31s on /srv/a/b` and `timeout after 47s on /srv/c/d` share one signature.
    """
    out = _SPACE.sub(" ", text.strip())[:300]
    for pattern, mask in _MASKS:
        out = pattern.sub(mask, out)
    return out


# --- reading ---------------------------------------------------------------------------------------------------


class RowPattern(Protocol):
    """What the scan needs of a block pattern: the rows (key, duration, line) of a block (`FastPattern`)."""

    def findall(self, block: memoryview, /) -> list[tuple[bytes, bytes, bytes]]: ...


class BlockCounter(Protocol):
    """What a Tally needs of the native engine's counter (`native.Counter`): blocks in, pending keys out."""

    def scan(self, block: memoryview, /) -> tuple[int, list[bytes]]: ...

    def pending(self) -> tuple[int, int]: ...

    def export(self) -> tuple[dict[bytes, int], Iterable[tuple[bytes, int, float, float]]]: ...


class BlockEngine(Protocol):
    """What the scan needs of the native engine (`native.Engine`): a counter per Tally, bounds in epoch seconds."""

    name: str

    def counter(self, since: int | None, until: int | None, recent: tuple[int, int] | None, /) -> BlockCounter: ...


class Readable(Protocol):
    """What the block reader needs of a file: readinto (files, gzip, stdin, a byte range of a file)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class InputError(UsageError):
    """An input named on the command line cannot be read as a log; the message names the file."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@contextlib.contextmanager
def open_input(path: str, *, follow_links: bool = True) -> Iterator[Readable]:
    """A log for reading as bytes: `-` is stdin; gzip (by name or by its magic bytes) is decompressed.

    `follow_links=False` for a state file (the ledger's day files, logs/selfheal.log*): opened as the state layer
    opens one (open_read), so a symbolic link there, or at a folder above it up to the state root (`ledger ->
    /elsewhere`), is refused, never followed out of the state root."""
    if path == "-":
        yield typing.cast(Readable, sys.stdin.buffer)  # a BufferedReader: it has readinto
        return
    p = Path(path)
    # Opened non-blocking (a FIFO with no writer would hang the open, /dev/zero a read), then anything but a
    # plain file is refused before a byte is read: a folder, a pipe, a device, a socket.
    try:
        if follow_links:
            fh = open(path, "rb", opener=lambda name, _flags: open_regular(name)[0])  # noqa: SIM115
        else:
            fh = os.fdopen(_open_state_file(p), "rb")
    except UnsafeStateError as exc:
        if exc.path != p:  # a folder above it: the message names that folder and what it is
            raise InputError(path, str(exc)) from None
        if exc.problem.startswith("is a symbolic link"):
            raise InputError(
                path, "is a symbolic link: not followed (state files are never read through a link)"
            ) from None
        raise InputError(path, "is not a regular file: a pipe or a device") from None
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except NotRegularFile as exc:
        if stat.S_ISDIR(exc.mode):
            raise InputError(path, "is a folder, not a log file") from None
        raise InputError(path, "is not a regular file: a pipe or a device") from None
    except OSError as exc:
        if not follow_links and exc.errno == errno.ELOOP:
            raise InputError(
                path, "is a symbolic link: not followed (state files are never read through a link)"
            ) from None
        raise InputError(path, f"cannot open ({exc.strerror or exc})") from None
    if getattr(os, "O_NONBLOCK", 0):  # open_regular leaves it set; cleared as before (a regular file ignores it)
        try:
            os.set_blocking(fh.fileno(), True)
        except BaseException:
            fh.close()
            raise
    with fh:
        try:
            magic = fh.read(2)
            fh.seek(0)
        except OSError as exc:
            raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                yield gz
        elif p.suffix == ".gz":
            raise InputError(path, "not gzip data, though the name ends in .gz")
        else:
            yield fh


def _open_state_file(path: Path) -> int:
    """An fd of the state file `path` for reading (state.root.open_read: no link followed from the state root
    down, no FIFO waited on); a folder there is NotRegularFile, as open_regular says it."""
    fd = open_read(path)
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise NotRegularFile(path, mode)
    return fd


_BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which some editors put at the start of a text file


def iter_blocks(
    fh: Readable, *, block_bytes: int = BLOCK_BYTES, max_line: int, at_start: bool = True
) -> Iterator[tuple[memoryview, int]]:
    """Whole lines in blocks of about `block_bytes`, and how many over-long lines were left out before each.

    Each view starts with "\\n" and holds complete lines without the newline that ends the last one (the
    last line of the input needs none). A line longer than `max_line` bytes is left out and counted: one
    that does not fit in the buffer is read past in pieces, never held whole. Read and decompression
    errors propagate. A view is valid until the next one is asked for.

    `at_start`: `fh` begins at the start of its input, so a UTF-8 byte order mark there (a log saved by Windows
    Notepad or PowerShell) is dropped: it is no part of the first line, which would otherwise read as malformed.
    A worker's share of a file, which begins inside it, keeps its bytes as they are.
    """
    buf = bytearray(block_bytes + max_line + 2)
    view = memoryview(buf)
    buf[0] = 0x0A  # every line, the first included, follows a newline
    fill, long_lines, skipping = 1, 0, False
    try:
        while True:
            n = fh.readinto(view[fill:])
            if not n:
                break
            if at_start:
                fill += n
                if fill < 1 + len(_BOM):  # a pipe may give fewer bytes than the mark at first
                    continue
                at_start = False
                if buf[1 : 1 + len(_BOM)] == _BOM:
                    buf[1 : fill - len(_BOM)] = buf[1 + len(_BOM) : fill]  # a copy: source and target overlap
                    fill -= len(_BOM)
            elif skipping:  # inside an over-long line: drop what was read, up to its newline
                cut = buf.find(b"\n", fill, fill + n)
                if cut < 0:
                    continue
                skipping = False
                rest = buf[cut + 1 : fill + n]  # a copy: source and target overlap
                buf[1 : 1 + len(rest)] = rest
                fill = 1 + len(rest)
            else:
                fill += n
            if fill < block_bytes:
                continue
            end = buf.rfind(b"\n", 1, fill)
            if end > 0:
                for piece, skipped in _without_long_lines(buf, view, end, max_line):
                    yield piece, long_lines + skipped
                    long_lines = 0
                tail = buf[end:fill]
                buf[: len(tail)] = tail
                fill = len(tail)
            if fill - 1 > max_line:  # a line longer than the cap, still going: skip to its end
                long_lines += 1
                skipping, fill = True, 1
        end = fill - 1 if buf[fill - 1] == 0x0A else fill  # the input's final newline ends its last line
        if not skipping and end > 0:
            for piece, skipped in _without_long_lines(buf, view, end, max_line):
                yield piece, long_lines + skipped
                long_lines = 0
        if long_lines:
            yield view[:0], long_lines
    finally:
        view.release()


def _without_long_lines(buf: bytearray, view: memoryview, end: int, max_line: int) -> Iterator[tuple[memoryview, int]]:
    """view[:end] in pieces that leave out lines longer than `max_line`, each with the count left out before it.

    A line longer than the cap covers a whole aligned stretch of half the cap, so probing one newline per
    stretch (a memchr over about one line) finds every candidate; a block of short lines costs a few probes.
    """
    half = max(1, max_line // 2)
    start, skipped, probe = 0, 0, 1
    while probe + half <= end:
        if buf.find(b"\n", probe, probe + half) >= 0:
            probe += half
            continue
        line_start = buf.rfind(b"\n", start, probe)
        line_end = buf.find(b"\n", probe + half, end)
        line_end = end if line_end < 0 else line_end
        if line_end - line_start - 1 > max_line:
            if line_start > start:
                yield view[start:line_start], skipped
                skipped = 0
            skipped += 1
            start = line_end
        probe = line_end + 1
    if end > start or skipped:
        yield view[start:end], skipped


PARALLEL_MIN_BYTES = 64 * 1024 * 1024  # a plain file at least this big is split between worker processes


class _Range:
    """The bytes [start, end) of an open file, read through readinto like a file: by position (pread), so the
    forked workers read the very file this process opened through the descriptor they share, none moving
    another's offset (a worker that opened the path again read the new file after a rotation, and lost the
    old one's lines)."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.pos, self.end = fd, start, end

    def readinto(self, view: memoryview, /) -> int:
        want = min(len(view), self.end - self.pos)
        if want <= 0:
            return 0
        if hasattr(os, "preadv"):
            n = os.preadv(self.fd, [view[:want]], self.pos)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(self.fd, want, self.pos)
            n = len(data)
            view[:n] = data
        self.pos += n
        return n


def split_points(fh: io.BufferedIOBase, size: int, parts: int, *, window: int) -> list[int]:
    """Offsets that cut a file into about equal parts, each just after a newline (0 and size included).

    Each cut looks for a newline within `window` bytes of its place (the longest line worth reading); a
    place inside a longer line gets no cut, so no line is ever split and no probe reads more than `window`.
    """
    cuts = [0]
    for i in range(1, parts):
        at = size * i // parts
        fh.seek(at)
        found = fh.read(window + 1).find(b"\n")
        if found >= 0 and cuts[-1] < at + found + 1 < size:
            cuts.append(at + found + 1)
    cuts.append(size)
    return cuts


@dataclass
class Scan:
    """Scans inputs into one Tally; `workers` > 1 splits big plain files between forked processes."""

    tally: Tally
    pattern: RowPattern
    max_line: int
    workers: int = 1
    inputs: list[InputInfo] = field(default_factory=list)
    engine: BlockEngine | None = None  # the native engine, which then reads every block instead of `pattern`

    def read(self, path: str, source: str, *, strict: bool) -> None:
        """Read one input; `strict` (named by the user) raises InputError, else the error is recorded."""
        info = InputInfo(path, source)
        self.inputs.append(info)
        try:
            # The ledger and the skill's log are state files: never read through a link planted there.
            with open_input(path, follow_links=source not in ("ledger", "log")) as fh:
                size = _plain_size(fh)
                if (
                    self.workers > 1
                    and size >= PARALLEL_MIN_BYTES
                    and isinstance(fh, io.BufferedReader)
                    and hasattr(os, "fork")
                ):
                    self._read_parallel(fh, size, info)
                else:
                    self.read_stream(fh, info)
        except InputError as exc:
            if strict:
                raise
            info.error = exc.problem
        except (OSError, EOFError, zlib.error) as exc:
            problem = _read_problem(exc)
            if strict:
                raise InputError(path, problem) from None
            info.error = problem

    def read_stream(self, fh: Readable, info: InputInfo, tally: Tally | None = None, *, at_start: bool = True) -> None:
        """Scan `fh` into `tally` (this scan's own by default); `at_start`: `fh` begins at its input's start."""
        tally = tally or self.tally
        findall = self.pattern.findall
        was_enabled = gc.isenabled()
        gc.disable()  # the rows are a block's worth of fresh tuples, none in a cycle; collections only cost
        try:
            for block, long_lines in iter_blocks(fh, max_line=self.max_line, at_start=at_start):
                before = tally.lines
                if long_lines:
                    tally.lines += long_lines
                    tally.malformed += long_lines
                    info.malformed += long_lines
                if len(block) <= 1:
                    info.lines += long_lines
                    continue
                if info.first is None:
                    _first_stamp(block, info)
                careful = tally.add_block(block, self.engine) if self.engine else tally.add_rows(findall(block))
                for line in careful:
                    tally.add_line(line, info)
                _last_stamp(block, info)
                info.lines += tally.lines - before
        finally:
            if was_enabled:
                gc.enable()

    def _read_parallel(self, fh: io.BufferedReader, size: int, info: InputInfo) -> None:
        """Split the file at newlines; forked workers scan the later parts while this process scans the first."""
        cuts = split_points(fh, size, self.workers, window=self.max_line)
        children: list[tuple[int, int]] = []
        try:
            for start, end in pairwise(cuts[1:]):
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
                    os.close(read_end)
                    _worker(self, fh.fileno(), (start, end), info, write_end)
                os.close(write_end)
                children.append((pid, read_end))
            self.read_stream(_Range(fh.fileno(), 0, cuts[1]), info)
            self.tally.fold()  # while the workers fold theirs, not after
            for pid, read_end in children:
                with os.fdopen(read_end, "rb") as pipe:
                    payload = pipe.read()
                _, status = os.waitpid(pid, 0)
                if status != 0 or not payload:
                    raise OSError(f"a worker process failed (status {status})")
                outcome = pickle.loads(payload)  # noqa: S301 - our own forked child, over a private pipe
                if isinstance(outcome, str):
                    raise OSError(outcome)
                part, part_info = outcome
                self.tally.merge(part)
                info.lines += part_info.lines
                info.malformed += part_info.malformed
                info.last = part_info.last if part_info.last is not None else info.last
        finally:
            for pid, read_end in children:
                with contextlib.suppress(OSError):
                    os.close(read_end)
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, 0)


def _worker(scan: Scan, fd: int, span: tuple[int, int], info: InputInfo, out: int) -> None:  # pragma: no cover
    """A forked worker: scan [start, end) of the file open as `fd`, send the figures, exit without running the
    parent's code."""
    start, end = span
    code = 0
    try:
        tally = scan.tally.spawn()
        part = InputInfo(info.path, info.source)
        scan.read_stream(_Range(fd, start, end), part, tally, at_start=False)
        payload = pickle.dumps((tally, part), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # anything at all goes back to the parent, as text
        payload, code = pickle.dumps(f"worker for bytes {start}-{end}: {type(exc).__name__}: {exc}"), 1
    with os.fdopen(out, "wb") as pipe:
        pipe.write(payload)
    os._exit(code)


def _plain_size(fh: Readable) -> int:
    """The size of a regular, uncompressed file (what can be split between workers), else 0."""
    if not isinstance(fh, io.BufferedReader):
        return 0
    try:
        st = os.fstat(fh.fileno())
    except (OSError, ValueError):
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


_STAMP = re.compile(
    rb'\n(?:(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) |\{.*?"(?:ts|time)":"([^"]+)")'
)


def _first_stamp(block: memoryview, info: InputInfo) -> None:
    m = _STAMP.search(block, 0, 1 << 16)
    ts = parse_time((m.group(1) or m.group(2)).decode("ascii", "replace")) if m else None
    if ts is not None and (info.first is None or ts < info.first):
        info.first = ts


def _last_stamp(block: memoryview, info: InputInfo) -> None:
    """The time of the block's last stamped line: looked for in its last 4 KiB (a few dozen lines), then 64 KiB."""
    found = None
    for tail in (1 << 12, 1 << 16):
        for m in _STAMP.finditer(block, max(0, len(block) - tail)):
            found = m
        if found is not None or tail >= len(block):
            break
    ts = parse_time((found.group(1) or found.group(2)).decode("ascii", "replace")) if found else None
    if ts is not None:
        info.last = ts


def _read_problem(exc: BaseException) -> str:
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"corrupt or truncated gzip data ({exc})"
    if isinstance(exc, OSError):
        return f"read error ({exc.strerror or exc})"
    return str(exc)


def ledger_days(files: Iterable[Path], window: Window) -> list[Path]:
    """The ledger's day files that can hold events of the window (a file per UTC day)."""
    out = []
    for path in files:
        try:
            year, month, mday = (int(x) for x in path.stem.split("-"))
            day = calendar.timegm((year, month, mday, 0, 0, 0, 0, 0, 0))
        except (ValueError, TypeError):
            continue
        if (window.since is None or day + 86400 > window.since) and (window.until is None or day < window.until):
            out.append(path)
    return out


def log_files(log: Path) -> list[Path]:
    """The skill's log and its rotations, oldest first (selfheal.log.3 ... selfheal.log)."""
    rotated = sorted(
        (p for p in log.parent.glob(log.name + ".*") if p.name[len(log.name) + 1 :].isdigit()),
        key=lambda p: -int(p.name[len(log.name) + 1 :]),
    )
    return [*rotated, log] if log.is_file() else rotated
