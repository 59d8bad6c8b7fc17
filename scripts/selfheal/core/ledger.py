"""The retry ledger (ledger/YYYY-MM-DD.jsonl) and the human log (logs/selfheal.log).

One event becomes one JSON line with every DESIGN.md field and one log line in the source documents'
format, e.g. `2026-06-10T03:12:18Z [RETRY] task=doc-gen-587 model=Qwen3-4B reason=timeout attempt=1/3
delay=5s`. Both are appended whole, under a lock, after secrets are masked. A write that fails (disk
full) is logged and counted, never raised: the ledger must not be what breaks a user's run.

Fleet mode (store.url): each event also gets an `event_id` and goes to the fleet's ledger table. While
the database is down it waits in this host's spool (fleet/ledger-spool.jsonl); the next event written
with the database up first replays the spool, under the spool's lock, then empties it. The table keeps
(event_id, ts) unique, so a replay cut short and done again still lands each event once. An event the
database refuses for its data (not an outage: the database stays up for this process) is set aside to
fleet/ledger-refused.jsonl, with one warning naming it, so it never holds the spool back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_day, utc_iso
from ..errors import FleetUnavailable, StateError, UnsafeStateError
from ..state import layout
from ..state.root import (
    StateRoot,
    append_line,
    ensure_dir,
    file_lock,
    loads,
    open_dir,
    open_file,
    open_read,
    open_rewrite,
    unlink,
)
from .config import Config, LogSettings
from .fleet import fleet_database, host_id, mark_down, mark_up
from .redact import Redactor, active, redactor_for

logger = logging.getLogger(__name__)

# Every event carries all of these (null where they do not apply), in this order.
FIELDS = (
    "ts",
    "event",
    "task",
    "step",
    "target",
    "model",
    "attempt",
    "max_attempts",
    "error_class",
    "reason",
    "status",
    "exit_code",
    "delay_s",
    "duration_s",
    "tokens",
    "pid",
    "host",
)

# Calls self-heal makes on its own behalf (the root-cause analysis of a failed task) are recorded under a
# task of their own, never the task they are about, so they do not count as that task's runs; the report
# leaves them out of its figures and alerts.
OWN_TASK_PREFIX = "self-heal."


def _uuid4_hex() -> str:
    """What `uuid.uuid4().hex` gives (random, version 4, RFC 4122 variant), without importing uuid and platform."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def own_task(purpose: str, task: str) -> str:
    """The task name of self-heal's own `purpose` call about `task`: `self-heal.<purpose>.<task>`, cut to
    the 128 characters a task id may have."""
    return f"{OWN_TASK_PREFIX}{purpose}.{task}"[:128]


def is_own_task(task: str | None) -> bool:
    """Whether `task` names one of self-heal's own calls (see own_task)."""
    return bool(task) and str(task).startswith(OWN_TASK_PREFIX)


# Fields whose values the skill itself produces from a fixed vocabulary: nothing there to mask.
_OURS = frozenset(
    {"ts", "event", "error_class", "status", "pid", "host", "attempt", "max_attempts", "rule", "event_id"}
)
SPOOL = "ledger-spool.jsonl"  # under <state root>/fleet/


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


_SAFE_VALUE = re.compile(r"[^\s\"=]+\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holding one is not UTF-8 text


def _val(value: Any) -> str:
    text = str(value)
    return text if _SAFE_VALUE.match(text) else json.dumps(text, ensure_ascii=False)


def format_log_line(event: Mapping[str, Any]) -> str:
    """The source documents' line format for one event."""
    kind = str(event["event"])
    parts = [str(event["ts"])[:19] + "Z", f"[{kind.upper()}]", f"task={_val(event.get('task') or '-')}"]

    def add(key: str, value: Any) -> None:
        if value is not None and value != "":
            parts.append(f"{key}={_val(value)}")

    for key in ("step", "target", "model"):
        add(key, event.get(key))
    if kind == "breaker":
        add("state", event.get("status"))
        add("reason", event.get("error_class"))
        add("detail", event.get("reason"))
    elif kind != "success":
        add("reason", event.get("error_class") or event.get("status"))
    attempt, max_attempts = event.get("attempt"), event.get("max_attempts")
    if kind == "success":
        if event.get("duration_s") is not None:
            add("duration", _num(float(event["duration_s"])) + "s")
        add("tokens", event.get("tokens"))
        if attempt is not None and attempt > 1:
            add("attempts", attempt)
    else:
        if kind == "retry" and attempt is not None:
            add("attempt", f"{attempt}/{max_attempts}" if max_attempts else attempt)
            if event.get("delay_s") is not None:
                add("delay", _num(float(event["delay_s"])) + "s")
        elif attempt is not None:
            add("attempts", attempt)
        if kind == "fallback" and event.get("status") != event.get("error_class"):
            add("why", event.get("status"))  # e.g. reason=transient why=unreachable
        add("tokens", event.get("tokens"))
    add("exit", event.get("exit_code"))
    for key, value in event.items():
        if key in FIELDS or key in ("rule", "run_id", "op", "event_id") or not isinstance(value, (str, int, float)):
            continue
        if key.endswith("_s") and isinstance(value, (int, float)):
            add(key[:-2], _num(float(value)) + "s")  # open_for_s=60.0 reads as open_for=60s
        else:
            add(key, value)
    return " ".join(parts)


class Ledger:
    """Appends events for one process. Cheap to build; builds its redactor once."""

    def __init__(
        self,
        state: StateRoot,
        config: Config,
        *,
        clock: Clock = SYSTEM_CLOCK,
        redactor: Redactor | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.clock = clock
        self.redactor = redactor or redactor_for(config)
        self.write_errors = 0
        self.host = host_id(config.store)
        self._day: tuple[str, Path] | None = None

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event to the ledger and the log; return the event as written."""
        now = self.clock.time()
        full: dict[str, Any] = dict.fromkeys(FIELDS)
        full.update(fields)
        full["ts"] = utc_iso(now, millis=True)
        full["event"] = event
        full["pid"] = os.getpid()
        full["host"] = self.host
        if self.config.store.fleet:
            full["event_id"] = _uuid4_hex()
        # Mask before cutting: a key cut in half would no longer look like a key.
        mask = self.redactor.obj
        clean = {k: v if k in _OURS or v is None or isinstance(v, (int, float)) else mask(v) for k, v in full.items()}
        limit = self.config.ledger.reason_max_chars
        if isinstance(clean.get("reason"), str) and len(clean["reason"]) > limit:
            clean["reason"] = clean["reason"][: limit - 1] + "…"
        line = json.dumps(clean, ensure_ascii=False, separators=(",", ":"), default=str)
        if _SURROGATE.search(line):
            # Half an emoji (an error text cut by JavaScript, a file name of another encoding) is not UTF-8:
            # it becomes U+FFFD, as the fleet's database stores it, not an error that loses the event.
            line = _SURROGATE.sub("\ufffd", line)
            clean = json.loads(line)
        # Each is tried on its own: a ledger that cannot be written does not cost the log line, and neither
        # costs the caller anything but one warning (StateRoot.unrecorded).
        failed = False
        # Masked above; by the process's redactor, unless this ledger was given another one.
        funnel = self.redactor is active()
        try:
            append_line(self._ledger_path(now), line.encode("utf-8"), redacted=funnel)
        except (OSError, StateError) as exc:
            failed = True
            self.state.unrecorded("the ledger", exc)
        try:
            self._log(format_log_line(clean), redacted=funnel)
        except (OSError, StateError) as exc:
            failed = True
            self.state.unrecorded("the log", exc)
        self.write_errors += failed  # events not wholly recorded
        if self.config.store.fleet:
            self._share(clean, line)
        return clean

    # -- fleet mode ------------------------------------------------------------------------------------------

    @property
    def spool_path(self) -> Path:
        return self.state.fleet_spool

    @property
    def refused_path(self) -> Path:
        """Where events the fleet database refused for their data are set aside (raw spool lines)."""
        return self.spool_path.with_name("ledger-refused.jsonl")

    def _share(self, event: dict[str, Any], line: str) -> None:
        """Send one event to the fleet's ledger, after any spooled ones; spool it if the database is down.

        An event the database refuses for its data is set aside (refused_path), never spooled: only an
        outage marks the database down and makes events wait."""
        db = fleet_database(self.config.store, clock=self.clock)
        if db is not None:
            from ..state.pg import DatabaseRefused, insert_events  # noqa: PLC0415 - psycopg only in fleet mode

            try:
                try:
                    self.replay_spool()
                except UnsafeStateError as exc:  # a link planted at the spool: left as it is; this event still goes
                    self.state.unrecorded("the fleet ledger spool", exc)
                try:
                    insert_events(db, [event], self.config.ledger.keep_days)
                except DatabaseRefused as exc:
                    self._set_aside([line.encode("utf-8")], exc)
                mark_up(self.config.store)
                return
            except FleetUnavailable as exc:
                mark_down(self.config.store, exc, clock=self.clock)
            except StateError as exc:  # not an outage (the refused file could not be written): spooled
                logger.warning("fleet ledger: event %s spooled: %s", event.get("event_id"), exc)
        try:
            ensure_dir(self.spool_path.parent)
            append_line(self.spool_path, line.encode("utf-8"))
        except (OSError, StateError) as exc:
            self.write_errors += 1
            self.state.unrecorded("the fleet ledger spool", exc)

    def _set_aside(self, lines: list[bytes], why: object) -> None:
        """Append spool lines the database refused for their data to refused_path, with one warning naming
        it. Raises StateError if that file cannot be written (the lines then stay where they were)."""
        path = self.refused_path
        try:
            ensure_dir(path.parent)
            for raw in lines:
                append_line(path, raw.rstrip(b"\n"))
        except (OSError, StateError) as exc:
            raise StateError(f"fleet ledger: cannot set refused events aside to {path}: {exc}") from None
        logger.warning(
            "fleet ledger: the database refused %d event(s) for their data; set aside to %s (the others go on): %s",
            len(lines),
            path,
            why,
        )

    def replay_spool(self) -> int:
        """Send the spooled events to the fleet's ledger and empty the spool; return how many were new there.

        An event the database refuses for its data does not hold the others back: it is set aside to
        refused_path (one warning names it) and the rest are sent. Raises StateError (DatabaseUnavailable)
        if the database fails; the spool is then left as it was.
        """
        path = self.spool_path
        try:
            # Never through a link (UnsafeStateError): one planted here would be read as events, then emptied.
            fd = open_rewrite(path, create=False)
        except FileNotFoundError:
            return 0
        try:
            if os.fstat(fd).st_size == 0:
                return 0
            db = fleet_database(self.config.store, clock=self.clock)
            if db is None:
                raise FleetUnavailable("the fleet database is down; the spool waits")
            from ..state.pg import DatabaseRefused, insert_events  # noqa: PLC0415 - psycopg only in fleet mode

            keep = self.config.ledger.keep_days
            fcntl.flock(fd, fcntl.LOCK_EX)  # the lock append_line takes: no event is added meanwhile
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            events: list[tuple[dict[str, Any], bytes]] = []
            for raw in b"".join(chunks).splitlines():
                try:
                    event = loads(raw)
                except ValueError:
                    event = None
                if isinstance(event, dict) and _replayable(event):
                    events.append((event, raw))
                elif raw.strip():
                    logger.warning("fleet ledger spool %s: dropped a line that is not an event: %.80r", path, raw)
            try:
                new = insert_events(db, [e for e, _ in events], keep)
            except DatabaseRefused:
                # One event (or more) the database will never take: each alone, the refused set aside.
                new, refused, why = 0, [], ""
                for event, raw in events:
                    try:
                        new += insert_events(db, [event], keep)
                    except DatabaseRefused as exc:
                        refused.append(raw)
                        why = str(exc)
                if refused:
                    self._set_aside(refused, why)
            os.ftruncate(fd, 0)  # only once the database has them all: a crash before this replays again
        finally:
            os.close(fd)
        logger.info("fleet ledger: replayed %d spooled events (%d new)", len(events), new)
        return new

    def _ledger_path(self, now: float) -> Path:
        day = utc_day(now)
        if self._day is None or self._day[0] != day:
            path = self.state.ledger_file(day)
            keep = self.config.ledger.keep_days
            if keep and not path.exists():  # the day's first writer clears out the days past keeping
                try:
                    prune_ledger(self.state, keep, now)
                except (OSError, StateError) as exc:  # never at the cost of the event being recorded
                    logger.warning("self-heal could not delete old ledger days under %s: %s", self.state.root, exc)
            self._day = (day, path)
        return self._day[1]

    def _log(self, line: str, *, redacted: bool = False) -> None:
        path = self.state.log_file
        size = append_line(path, line.encode("utf-8"), redacted=redacted)
        if size >= self.config.log.max_bytes:
            _rotate(path, self.config.log)


def _replayable(event: dict[str, Any]) -> bool:
    """A spool line's event has what the fleet's ledger table needs (an id, an event, a ts on a real day)."""
    ts, event_id, name = event.get("ts"), event.get("event_id"), event.get("event")
    if not (isinstance(ts, str) and isinstance(event_id, str) and event_id and isinstance(name, str) and name):
        return False
    try:
        dt.date.fromisoformat(ts[:10])
    except ValueError:
        return False
    return True


def _rotate(path: Path, settings: LogSettings) -> None:
    """Shift selfheal.log -> .1 -> .2 ..., keeping `backups` old files. Safe when several processes race."""
    with file_lock(path.with_name(path.name + ".rotate.lock")):
        folder = open_dir(path.parent, create=False)  # renames below are relative to it: no link is followed
        try:
            try:
                if os.stat(path.name, dir_fd=folder, follow_symlinks=False).st_size < settings.max_bytes:
                    return  # another process rotated it while we waited
            except FileNotFoundError:
                return
            if settings.backups == 0:
                fd = open_file(path, os.O_WRONLY | os.O_TRUNC)
                os.close(fd)
                return
            for n in range(settings.backups - 1, 0, -1):
                older = f"{path.name}.{n}"
                with contextlib.suppress(FileNotFoundError):
                    os.replace(older, f"{path.name}.{n + 1}", src_dir_fd=folder, dst_dir_fd=folder)
            os.replace(path.name, f"{path.name}.1", src_dir_fd=folder, dst_dir_fd=folder)
        finally:
            os.close(folder)
        # The log file always exists (tail and friends expect it), empty until the next event.
        with contextlib.suppress(FileExistsError):
            os.close(open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))


def iter_events(paths: list[Path]) -> Iterator[dict[str, Any] | None]:
    """Parsed ledger events from these files in order; None for each line that is not a JSON object."""
    for path in paths:
        try:
            fd = open_read(path)  # never through a planted link: that file is skipped, with a warning
        except FileNotFoundError:
            continue
        except UnsafeStateError as exc:
            logger.warning("%s", exc)
            continue
        with os.fdopen(fd, "rb") as fh:
            for raw in fh:
                try:
                    obj = loads(raw)
                except ValueError:
                    yield None
                    continue
                yield obj if isinstance(obj, dict) else None


def prune_ledger(state: StateRoot, keep_days: int, now: float) -> list[Path]:
    """Delete the ledger's day files older than `keep_days` UTC days before `now`'s; return what was deleted.

    Runs when a process starts a new day's file, so a busy host pays for it once a day, an idle one never.
    The files are named by day, so nothing is opened; several processes racing here delete each file once.
    """
    oldest = utc_day(now - keep_days * 86_400)
    gone = []
    for path in ledger_files(state):
        if path.name[:10] < oldest:
            with contextlib.suppress(FileNotFoundError):
                unlink(path)  # refuses a linked ledger folder: nothing outside the state root is deleted
                gone.append(path)
    return gone


def ledger_files(state: StateRoot) -> list[Path]:
    folder = state.sub(layout.LEDGER)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"\d{4}-\d{2}-\d{2}\.jsonl", p.name))
