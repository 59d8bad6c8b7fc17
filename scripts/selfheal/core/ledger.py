"""The retry ledger (ledger/YYYY-MM-DD.jsonl) and the human log (logs/selfheal.log).

One event becomes one JSON line with every DESIGN.md field and one log line in the source documents'
format, e.g. `2026-06-10T03:12:18Z [RETRY] task=doc-gen-587 model=Qwen3-4B reason=timeout attempt=1/3
delay=5s`. Both are appended whole, under a lock, after secrets are masked. A write that fails (disk
full) is logged and counted, never raised: the ledger must not be what breaks a user's run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock

from ..clock import SYSTEM_CLOCK, Clock, utc_day, utc_iso
from ..errors import StateError
from ..state.root import StateRoot, append_line
from .config import Config, LogSettings
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

_HOST = socket.gethostname()
# Fields whose values the skill itself produces from a fixed vocabulary: nothing there to mask.
_OURS = frozenset({"ts", "event", "error_class", "status", "pid", "host", "attempt", "max_attempts", "rule"})


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


_SAFE_VALUE = re.compile(r"[^\s\"=]+\Z")


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
        if key in FIELDS or key in ("rule", "run_id", "op") or not isinstance(value, (str, int, float)):
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
        self._day: tuple[str, Path] | None = None

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event to the ledger and the log; return the event as written."""
        now = self.clock.time()
        full: dict[str, Any] = dict.fromkeys(FIELDS)
        full.update(fields)
        full["ts"] = utc_iso(now, millis=True)
        full["event"] = event
        full["pid"] = os.getpid()
        full["host"] = _HOST
        # Mask before cutting: a key cut in half would no longer look like a key.
        mask = self.redactor.obj
        clean = {k: v if k in _OURS or v is None or isinstance(v, (int, float)) else mask(v) for k, v in full.items()}
        limit = self.config.ledger.reason_max_chars
        if isinstance(clean.get("reason"), str) and len(clean["reason"]) > limit:
            clean["reason"] = clean["reason"][: limit - 1] + "…"
        line = json.dumps(clean, ensure_ascii=False, separators=(",", ":"), default=str)
        try:
            # Masked above; by the process's redactor, unless this ledger was given another one.
            funnel = self.redactor is active()
            append_line(self._ledger_path(now), line.encode("utf-8"), redacted=funnel)
            self._log(format_log_line(clean), redacted=funnel)
        except (OSError, StateError) as exc:
            self.write_errors += 1
            logger.warning("self-heal could not write its ledger under %s: %s", self.state.root, exc)
        return clean

    def _ledger_path(self, now: float) -> Path:
        day = utc_day(now)
        if self._day is None or self._day[0] != day:
            path = self.state.ledger_file(day)
            keep = self.config.ledger.keep_days
            if keep and not path.exists():  # the day's first writer clears out the days past keeping
                try:
                    prune_ledger(self.state, keep, now)
                except OSError as exc:  # never at the cost of the event being recorded
                    logger.warning("self-heal could not delete old ledger days under %s: %s", self.state.root, exc)
            self._day = (day, path)
        return self._day[1]

    def _log(self, line: str, *, redacted: bool = False) -> None:
        path = self.state.log_file
        size = append_line(path, line.encode("utf-8"), redacted=redacted)
        if size >= self.config.log.max_bytes:
            _rotate(path, self.config.log)


def _rotate(path: Path, settings: LogSettings) -> None:
    """Shift selfheal.log -> .1 -> .2 ..., keeping `backups` old files. Safe when several processes race."""
    with filelock.FileLock(str(path) + ".rotate.lock", mode=0o600):
        try:
            if path.stat().st_size < settings.max_bytes:
                return  # another process rotated it while we waited
        except FileNotFoundError:
            return
        if settings.backups == 0:
            os.truncate(path, 0)
            return
        for n in range(settings.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
        # The log file always exists (tail and friends expect it), empty until the next event.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def iter_events(paths: list[Path]) -> Iterator[dict[str, Any] | None]:
    """Parsed ledger events from these files in order; None for each line that is not a JSON object."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError), path.open("rb") as fh:
            for raw in fh:
                try:
                    obj = json.loads(raw)
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
                path.unlink()
                gone.append(path)
    return gone


def ledger_files(state: StateRoot) -> list[Path]:
    folder = state.sub("ledger")
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"\d{4}-\d{2}-\d{2}\.jsonl", p.name))
