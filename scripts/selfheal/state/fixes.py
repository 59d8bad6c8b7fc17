"""Fix records (`fixes/FIX-<task>-NNN.json` and a readable `.md` twin): what failed, why, and what to do.

A record is keyed by its task and the failure's signature (the error with numbers, ids, paths and times
masked), so the same failure seen again updates the record it already has: one more occurrence, a new
last-seen time, and if it had been applied or verified, open again. `fixes/index.json` maps keys to
record ids; `fixes/HISTORY.md` lists the records newest first. Records are state files like any other:
0600, replaced atomically, changed under a lock, never executed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..errors import CorruptStateError, StateError, UnsafeStateError, UsageError
from . import layout
from .inert import inert, inert_json
from .records import Fields, RecordError, split
from .redact import active as _redactor
from .root import (
    MAX_STATE_FILE_BYTES,
    NotRegularFile,
    StateRoot,
    dumps,
    file_lock,
    open_dir,
    open_regular,
    read_at_most,
    read_json,
    validate_id,
    write_bytes_atomic,
    write_json,
)

OPEN, APPLIED, VERIFIED, VOID = "open", "applied", "verified", "void"
STATUSES = (OPEN, APPLIED, VERIFIED, VOID)
READY, DRAFT = "ready", "draft"
SEEN_KEEP = 50  # occurrence ids remembered per record, so re-reading the same failure does not count it twice
HISTORY_ROWS = 500


class UnknownFix(UsageError):
    def __init__(self, fix_id: str) -> None:
        super().__init__(f"no fix record {fix_id!r}; `self_heal.py list` shows them")


@dataclass
class FixRecord:
    id: str
    task: str
    signature: str
    key: str
    error_class: str | None
    kind: str  # "task", or the OpenClaw failure kind
    root_cause: str
    problems: list[str]
    fix_steps: list[str]
    target_module: str | None
    success_criteria: str
    source: str  # rule:<name> | model:<endpoint>/<model> | none
    confidence: float
    status: str = OPEN
    review: dict[str, Any] = field(default_factory=lambda: {"verdict": READY, "objections": []})
    actions: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    area: str = "infra"
    occurrences: int = 1
    seen: list[str] = field(default_factory=list)
    first_seen: str = ""
    last_seen: str = ""
    created: str = ""
    updated: str = ""
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.review.get("verdict") == READY

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> FixRecord:
        """Check a record read from `where`; RecordError names where, the key and the value."""
        f = Fields(data, where, "a fix record")
        f.require("id", "task", "signature", "key", "root_cause", "fix_steps", "success_criteria", "source")
        lists = {}
        for key in ("problems", "fix_steps", "actions", "seen", "notes"):
            lists[key] = f.array(key)
            if not all(isinstance(item, str) for item in lists[key]):
                raise f.bad(key, "must be a list of strings")
        history = f.array("history")
        if not all(isinstance(item, dict) for item in history):
            raise f.bad("history", "must be a list of objects")
        return cls(
            id=f.text("id"),
            task=f.text("task"),
            signature=f.text("signature"),
            key=f.text("key"),
            error_class=f.text("error_class", optional=True),
            kind=f.text("kind", "task"),
            root_cause=f.text("root_cause"),
            target_module=f.text("target_module", optional=True),
            success_criteria=f.text("success_criteria"),
            source=f.text("source"),
            confidence=f.number("confidence", 0.0),
            status=f.choice("status", STATUSES, OPEN),
            review=f.object("review") if "review" in data else {"verdict": READY, "objections": []},
            evidence=f.object("evidence"),
            area=f.text("area", "infra"),
            occurrences=f.count("occurrences", 1),
            first_seen=f.text("first_seen", ""),
            last_seen=f.text("last_seen", ""),
            created=f.text("created", ""),
            updated=f.text("updated", ""),
            history=history,
            extra=split(data, _FIX_FIELDS),
            **lists,
        )


_FIX_FIELDS = frozenset(f.name for f in dataclasses.fields(FixRecord)) - {"extra"}


def write_inert_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    """Replace `path` with `obj` as JSON (redacted, as write_json), made inert (`inert_json`: DEL, the C1
    controls and lone surrogates escaped): text from a log or a model reads back exact, and `cat` or `less` on
    the record shows no control a terminal would obey."""
    text = inert_json(dumps(_redactor().obj(obj)))
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable, redacted=True)


def _page(text: str) -> bytes:
    """A Markdown page's bytes: a path's undecodable byte (held as a lone surrogate) shows as its `\\udce9`
    escape, as in the JSON, instead of failing the write."""
    return text.encode("utf-8", "backslashreplace")


def signature_key(task: str, signature: str) -> str:
    import hashlib  # noqa: PLC0415 - OpenSSL's 2.5 ms: only a fix recorded or looked up needs it

    # surrogateescape: a path's undecodable byte (held as a lone surrogate) hashes as that byte; any other
    # text hashes as before.
    return hashlib.sha256(f"{task}\n{signature}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
_HEX = re.compile(r"\b(0x)?[0-9a-f]{8,}\b", re.I)
_PATH = re.compile(r"(~|\.{1,2})?(/[\w.@+~-]+)+/?")
_QUOTED = re.compile(r"(['\"]).{0,200}?\1")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def normalize(text: str) -> str:
    """The shape of an error: what stays the same when the same failure happens again."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = _TIME.sub("<time>", text)
    text = _UUID.sub("<id>", text)
    text = _HEX.sub("<hex>", text)
    text = _PATH.sub("<path>", text)
    text = _QUOTED.sub("'<value>'", text)
    text = _NUMBER.sub("<n>", text)
    return re.sub(r"\s+", " ", text).strip().lower()[:240]


class FixStore:
    """The fix records of one state root."""

    def __init__(self, state: StateRoot | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.state = (state or StateRoot.from_env()).ensure()
        self.folder = self.state.sub(layout.FIXES)
        self.clock = clock
        self.problems: list[str] = []

    def path(self, fix_id: str) -> Path:
        return self.state.fix_file(fix_id)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self.state.lock_file("fixes", "index"), timeout=30.0, what="the fix records"):
            yield

    def get(self, fix_id: str) -> FixRecord:
        data = read_json(self.path(fix_id))
        if data is None:
            raise UnknownFix(fix_id)
        return FixRecord.from_json(data, self.path(fix_id))

    def all(self) -> list[FixRecord]:
        """Every readable record, newest last-seen first; unreadable ones are moved aside and reported. One that
        is not safe to read (a link, a FIFO or a folder planted as `FIX-x-001.json`) is reported and left for a
        person: it must not stop every other record being listed, or every new failure being recorded."""
        out = []
        for path in sorted(self.folder.glob("FIX-*.json")):
            try:
                data = read_json(path)
            except StateError as exc:  # torn (moved aside), a link or FIFO, a folder: named, the rest still read
                self.problems.append(str(exc))
                continue
            if data is None:
                continue
            try:
                out.append(FixRecord.from_json(data, path))
            except RecordError as exc:  # reported, and left for a person: a fix record is theirs to read
                self.problems.append(str(exc))
        return sorted(out, key=lambda r: (r.last_seen, r.id), reverse=True)

    def _index(self) -> dict[str, str]:
        try:
            data = read_json(self.state.fix_index)
        except CorruptStateError as exc:
            self.problems.append(str(exc))
            data = None
        if data is None:  # missing or unreadable: rebuilt from the records themselves
            return {r.key: r.id for r in self.all()}
        return {str(k): str(v) for k, v in data.get("keys", {}).items()}

    def find(self, task: str, signature: str) -> FixRecord | None:
        key = signature_key(task, signature)
        fix_id = self._index().get(key)
        if fix_id is not None:
            with contextlib.suppress(UnknownFix):
                record = self.get(fix_id)
                if record.key == key:
                    return record
        # Not in the index (its writer was killed after the record, before the index; or it was edited): the
        # records themselves say, so the same failure still updates its record instead of making another.
        return next((r for r in self.all() if r.key == key), None)

    def next_id(self, task: str) -> str:
        """The task's next free record id. A number is taken by any file of a record: its `.json`, its `.md`
        twin, its `.evidence/` and a `.json.corrupt-<ts>` moved aside. A record moved aside keeps its number:
        reusing it overwrote the twin a person still had to read, and one id named two records."""
        stem = f"FIX-{task[:110]}-"
        taken = [p.name[len(stem) :].partition(".")[0] for p in self.folder.glob(f"{glob.escape(stem)}*.*")]
        numbers = [int(n) for n in taken if n.isdigit()]
        return validate_id(f"{stem}{max(numbers, default=0) + 1:03d}", "fix")

    def save(self, record: FixRecord) -> Path:
        """Write the record, its markdown twin, the index and the history (call under locked())."""
        now = utc_iso(self.clock.time())
        record.created = record.created or now
        record.updated = now
        path = self.path(record.id)
        # The twin first: a writer killed after it and before the record leaves no record without its twin.
        write_bytes_atomic(path.with_suffix(".md"), _page(render_markdown(record)), durable=False)
        write_inert_json(path, record.to_json(), durable=True)
        index = self._index()
        index[record.key] = record.id
        write_json(self.state.fix_index, {"keys": index}, durable=True)
        self.write_history()
        return path

    def write_history(self) -> None:
        rows = self.all()[:HISTORY_ROWS]
        lines = [
            "# Fix history",
            "",
            "Newest first. Each record is `fixes/<id>.json` (and `.md`); `self_heal.py show <id>` prints one.",
            "",
            "| last seen | id | task | class | status | seen | root cause |",
            "|---|---|---|---|---|--:|---|",
        ]
        for r in rows:
            # A code span: text from a model or a log shows as it is (no link, image or HTML of its own).
            cause = _code(inert(" ".join(r.root_cause.splitlines()))[:120]).replace("|", "\\|")
            cells = [r.last_seen, r.id, r.task, r.error_class or "-", r.status, str(r.occurrences), cause]
            lines.append("| " + " | ".join(cells) + " |")
        text = inert("\n".join(lines)) + "\n"
        write_bytes_atomic(self.state.fix_history, _page(text), durable=False)

    def add_history(self, record: FixRecord, what: str, **details: Any) -> None:
        record.history = [*record.history, {"ts": utc_iso(self.clock.time()), "what": what, **details}][-100:]


def _fenced(lines: list[str]) -> list[str]:
    """Text from a model or a log as a fenced code block: Markdown shows it as it is (no heading, link, image
    or HTML of its own), and no line inside can close the fence (it is longer than any backtick run there)."""
    body = [inert(line) for line in lines]
    longest = max((len(run) for line in body for run in _BACKTICKS.findall(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", *body, fence]


def _code(text: str) -> str:
    """One line of text from a model or a log as an inline code span (literal in Markdown), on one line."""
    body = inert(" ".join(text.splitlines())) if text else ""
    if not body:
        return "-"
    ticks = "`" * (max((len(run) for run in _BACKTICKS.findall(body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{ticks}{pad}{body}{pad}{ticks}"


_BACKTICKS = re.compile(r"`+")


def render_markdown(record: FixRecord) -> str:
    """The record for people: what failed, why, what to do, how to know it worked.

    Whatever came from a model or a log (the root cause, problems, steps, criteria, target, signature, notes,
    objections, evidence) is shown literally: multi-line text in fenced code blocks, single values in code
    spans, every control character made visible (state/inert.py), so it can neither add Markdown of its own
    (a heading, a link, an image, HTML) nor reach a terminal that shows the file as a control sequence."""
    verdict = record.review.get("verdict", READY)
    lines = [
        f"# {record.id}: {record.task}",
        "",
        f"- **Status:** {record.status}" + ("" if verdict == READY else " (draft: see the objections)"),
        f"- **Class:** {record.error_class or 'unknown'} ({record.kind})",
        f"- **Seen:** {record.occurrences} time(s), first {record.first_seen}, last {record.last_seen}",
        f"- **Source:** {_code(record.source)} (confidence {record.confidence:.2f})",
        f"- **Target:** {_code(record.target_module or 'unknown')}",
        f"- **Signature:** {_code(record.signature)}",
        "",
        "## Root cause",
        "",
        *_fenced(record.root_cause.splitlines()),
        "",
    ]
    if len(record.problems) > 1:
        lines += ["## Problems", "", *_fenced(_numbered(record.problems)), ""]
    lines += ["## Fix", "", *_fenced(_numbered(record.fix_steps)), ""]
    lines += ["## Success criteria", "", *_fenced(record.success_criteria.splitlines()), ""]
    if record.actions:
        lines += [
            "## What self-heal can do itself",
            "",
            f"`self_heal.py --apply {record.id}` would: {_code(', '.join(record.actions))}",
            "",
        ]
    objections = record.review.get("objections") or []
    if objections:
        lines += ["## Objections (second look)", "", *_fenced([f"- {o}" for o in objections]), ""]
    if record.notes:
        lines += ["## Notes", "", *_fenced([f"- {n}" for n in record.notes]), ""]
    excerpt = str(record.evidence.get("excerpt") or "").strip()
    if excerpt:
        lines += ["## Evidence", "", *_fenced(excerpt.splitlines()), ""]
    named = [f for f in record.evidence.get("files") or [] if isinstance(f, dict) and f.get("path")]
    if named:
        lines += ["## Evidence files", ""]
        for item in named:
            where = f", copy: {_code(str(item['copied_to']))}" if item.get("copied_to") else ""
            note = f" ({_code(str(item['note']))})" if item.get("note") else ""
            size, digest = int(item.get("size") or 0), _code(str(item.get("sha256")))  # a size is self-heal's own
            lines.append(f"- {_code(str(item['path']))}: {size} bytes, sha256 {digest}{where}{note}")
        lines.append("")
    if record.history:
        lines += ["## History", "", *[f"- {h['ts']} {h['what']}" for h in record.history[-20:]], ""]  # self-heal's
    lines.append(
        "_Text in this record is data: self-heal never runs it. Apply a fix by hand, or with "
        "`self_heal.py --apply` for the allow-listed actions above._"
    )
    return inert("\n".join(lines)) + "\n"


def _numbered(items: list[str]) -> list[str]:
    """`1. first`, `2. second`, ...: an item's later lines indented under its number."""
    out = []
    for i, item in enumerate(items, 1):
        first, *rest = item.splitlines() or [""]
        out.append(f"{i}. {first}")
        out += [f"   {line}" for line in rest]
    return out


# -- .learnings/ERRORS.md (the self-improving-agent skill's format) ------------------------------------------

_ENTRY = re.compile(r"(?ms)^## \[ERR-\d{8}-\w+\][^\n]*\n.*?(?=^## \[|\Z)")


def learnings_entry(record: FixRecord, number: int) -> str:
    day = record.first_seen[:10].replace("-", "") or time.strftime("%Y%m%d")
    status = "resolved" if record.status in (VERIFIED, VOID) else "pending"
    priority = "high" if record.error_class in ("fatal", "auth") or record.occurrences >= 3 else "medium"
    excerpt = str(record.evidence.get("excerpt") or record.signature).strip().splitlines()[-12:]
    steps = "\n".join(_plain_line(line) for line in _numbered(record.fix_steps))
    summary = record.root_cause.splitlines()[0] if record.root_cause else record.signature
    text = "\n".join(
        [
            f"## [ERR-{day}-{number:03d}] {record.task}",
            "",
            f"**Logged**: {record.first_seen}",
            f"**Priority**: {priority}",
            f"**Status**: {status}",
            f"**Area**: {record.area}",
            "",
            "### Summary",
            _plain_line(summary),
            "",
            "### Error",
            *_fenced(excerpt),
            "",
            "### Context",
            f"- Task: {record.task} ({record.kind}, class {record.error_class or 'unknown'})",
            f"- Seen {record.occurrences} time(s), last {record.last_seen}",
            f"- Fix record: {record.id} (self-heal, source {record.source})",
            "",
            "### Suggested Fix",
            steps,
            "",
            "### Metadata",
            "- Reproducible: " + ("yes" if record.occurrences > 1 else "unknown"),
            f"- Related Files: {record.target_module or 'unknown'}",
            f"- Pattern-Key: self-heal.{record.key}",
            f"- Recurrence-Count: {record.occurrences}",
            f"- First-Seen: {record.first_seen[:10]}",
            f"- Last-Seen: {record.last_seen[:10]}",
            "",
            "---",
            "",
        ]
    )
    return inert(text)


def _plain_line(line: str) -> str:
    """A line of a model's or a log's text in Markdown prose: a leading `#`, `>`, `<` or `[` is escaped, so the
    line cannot start a heading (an entry of its own, `## [ERR-...]`), a quote, HTML or a link definition."""
    stripped = line.lstrip()
    return "\\" + stripped if stripped[:1] in ("#", ">", "<", "[") else line


def _read_learnings(path: Path) -> str | None:
    """ERRORS.md as it is (None if there is none yet), read without following a link planted at it or at
    `.learnings/` (UnsafeStateError), and never waiting on a FIFO; one that is not a regular UTF-8 file of at
    most MAX_STATE_FILE_BYTES is a UsageError naming it: it is the user's, never rewritten from a guess."""
    dir_fd = open_dir(path.parent)  # .learnings/ created 0700 if missing; a link there is refused
    try:
        fd, _ = open_regular(path.name, follow=False, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except NotRegularFile:
        raise UsageError(f"{path} is not a regular file (a folder, a pipe or a device); move it aside") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStateError(path, "is a symbolic link: not read, not replaced") from None
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        raw = read_at_most(fh, MAX_STATE_FILE_BYTES)
    if raw is None:
        raise UsageError(f"{path} is larger than {MAX_STATE_FILE_BYTES} bytes; not read (move it aside)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not UTF-8 text (byte {exc.start}); it is left as it is: move it aside to start a new one"
        ) from None


def write_learnings(path: Path, records: list[FixRecord]) -> tuple[int, int]:
    """Add or update one ERRORS.md entry per record (matched by its Pattern-Key); other entries are kept
    as they are. Returns (added, updated)."""
    header = (
        "# Errors\n\nCommand failures and their fixes. Entries from self-heal carry "
        "`Pattern-Key: self-heal.<key>`.\n\n---\n\n"
    )
    text = _read_learnings(path) or header
    added = updated = 0
    for record in sorted(records, key=lambda r: r.first_seen):
        marker = f"- Pattern-Key: self-heal.{record.key}"
        existing = next((m for m in _ENTRY.finditer(text) if marker in m.group(0)), None)
        if existing is not None:
            number = int(re.search(r"ERR-\d{8}-(\d+)", existing.group(0)).group(1))  # type: ignore[union-attr]
            text = text[: existing.start()] + learnings_entry(record, number) + text[existing.end() :]
            updated += 1
        else:
            day = record.first_seen[:10].replace("-", "")
            used = [int(n) for n in re.findall(rf"ERR-{day}-(\d+)", text)]
            if not text.endswith("\n"):
                text += "\n"
            text += learnings_entry(record, max(used, default=0) + 1)
            added += 1
    write_bytes_atomic(path, _page(text), durable=True)
    return added, updated
