"""Circuit breakers shared by every process on the host: one JSON file per target, changed under a lock.

closed: requests pass. After `failure_threshold` consecutive counted failures, or a failure rate of
`failure_rate` over the last `window_s` with at least `min_calls` calls, or one failure of an
`open_at_once` class (a refused key), it opens.
open: requests are refused (BreakerOpen, a NotAttempted) until `open_s` has passed; each trip
without a recovery in between multiplies that time by `open_multiplier`, up to `open_max_s`.
half_open: up to `half_open_probes` requests at once, across all processes, test the target;
`close_after` successes close it, one counted failure opens it again.

Once failures have started, requests still in flight count against what is left of the failure
budget, so concurrent callers cannot overshoot the threshold against a dead target. A permit whose
process died (pid and start time no longer match) is forgotten, so a crash never wedges a breaker.

Every request reads and updates its target's file, so the file is cheap to change: it is rewritten in
place under an exclusive `flock` of the file itself (compact JSON, no temporary file, no rename, no
fsync), and read under a shared one. A process killed mid-write leaves a file the next reader cannot
parse: that file is moved aside (reported) and the breaker starts closed, which costs at most a few
requests. `read_breaker()` reads one for anyone else (the health check).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..errors import CorruptStateError, NotAttempted
from ..state.redact import active as active_redactor
from ..state.root import FILE_MODE, StateRoot, ensure_dir, read_json_shared, validate_id, write_bytes_atomic
from .config import BreakerSettings
from .ledger import Ledger
from .process import ProcessIdentity, identify, still_running

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# The sliding window is kept as counts per time bucket ([start, successes, failures]), about this many
# per window: its size, and the cost of every update, stay the same however many calls are made.
_BUCKETS_PER_WINDOW = 60


def _calls(window: list[list[float]]) -> int:
    return int(sum(bucket[1] + bucket[2] for bucket in window))


class BreakerOpen(NotAttempted):
    """The target's breaker refused this request; `retry_at` (wall time) says when to ask again."""

    def __init__(self, target: str, state: str, retry_at: float | None, why: str) -> None:
        self.target = target
        self.state = state
        self.retry_at = retry_at
        when = f"; retry after {utc_iso(retry_at)}" if retry_at else ""
        super().__init__(f"circuit breaker for {target!r} is {state.replace('_', '-')}: {why}{when}")


@dataclass(frozen=True)
class Permit:
    """Leave to send one request to a target; give it back with Breakers.release()."""

    target: str
    id: str
    probe: bool


@functools.lru_cache(maxsize=4)
def _identity_of(pid: int) -> ProcessIdentity | None:
    """A process (pid and start time, for its permits), looked up once: this one, by os.getpid()."""
    return identify(pid)


def _encode(data: dict[str, Any]) -> bytes:
    """The file's bytes (rewritten in place, not through the state root's helpers: redacted here)."""
    return json.dumps(active_redactor().obj(data), sort_keys=True, separators=(",", ":")).encode()


def _decode(raw: bytes, path: Path) -> dict[str, Any] | None:
    """The breaker in `raw`, None for an empty (new) file; CorruptStateError if it cannot be one."""
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptStateError(path, None, f"invalid JSON: {exc}") from None
    return _checked(data, path)


def _checked(data: object, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or "state" not in data or "window" not in data or "permits" not in data:
        raise CorruptStateError(path, None, "not a breaker")
    return data


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_breaker(path: Path) -> dict[str, Any] | None:
    """One breaker file as it stands, read under a shared lock (never half-written); None if absent.
    Raises CorruptStateError for a file that is not a breaker (nothing is moved: only writers do that)."""
    data = read_json_shared(path)
    return None if data is None else _checked(data, path)


def _fresh(target: str) -> dict[str, Any]:
    return {
        "target": target,
        "state": CLOSED,
        "consecutive_failures": 0,
        "trips": 0,
        "opened_at": None,
        "open_until": None,
        "probe_successes": 0,
        "window": [],
        "permits": {},
        "last_error_class": None,
        "last_change": None,
        "reason": None,
    }


class Breakers:
    """The breakers under one state root. Cheap to build; every method reads the shared state fresh."""

    def __init__(
        self,
        state: StateRoot,
        settings: BreakerSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        ledger: Ledger | None = None,
    ) -> None:
        self.state = state
        self.settings = settings
        self.clock = clock
        self.ledger = ledger
        self._me = _identity_of(os.getpid())

    # -- the file --------------------------------------------------------------------------------------------

    def _path(self, target: str) -> Any:
        return self.state.sub("breakers") / f"{validate_id(target, 'target')}.json"

    @contextlib.contextmanager
    def _locked(self, target: str) -> Iterator[dict[str, Any]]:
        """The target's state, read under its file's exclusive lock; whatever the block leaves in it is
        written back in place before the lock is released."""
        path = self._path(target)
        ensure_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = _read_fd(fd)
            try:
                data = _decode(raw, path) or _fresh(target)
            except CorruptStateError as exc:
                moved = _set_aside(path, raw, self.clock.time())
                logger.warning("%s; set aside as %s; the breaker for %r starts closed", exc, moved, target)
                data = _fresh(target)
                raw = b""
            before = data["state"]
            self._expire(data)
            yield data
            new = _encode(data)
            if new != raw:  # a refused request, or a look, changes nothing: no write
                os.pwrite(fd, new, 0)
                os.ftruncate(fd, len(new))
        finally:
            os.close(fd)  # releases the lock
        if data["state"] != before and self.ledger is not None:
            fields: dict[str, Any] = {"reason": data.get("reason"), "trips": data.get("trips")}
            if data["state"] == OPEN:
                fields["error_class"] = data.get("last_error_class")
                fields["open_for_s"] = round(data["open_until"] - data["opened_at"], 3)
            self.ledger.record("breaker", target=target, status=data["state"], **fields)

    def _load(self, target: str) -> dict[str, Any]:
        """The target's state as last written, or a fresh closed breaker (an unreadable file is dealt
        with by the next writer, under the exclusive lock)."""
        try:
            return read_breaker(self._path(target)) or _fresh(target)
        except CorruptStateError:
            return _fresh(target)

    def _expire(self, data: dict[str, Any]) -> None:
        """Drop window entries older than the window, and permits whose process is gone or too old."""
        now = self.clock.time()
        horizon = now - self.settings.window_s
        data["window"] = [bucket for bucket in data["window"] if bucket[0] >= horizon]
        stale = now - self.settings.stale_permit_s
        kept = {}
        for pid_key, permit in data["permits"].items():
            owner = ProcessIdentity(permit["pid"], permit["create_time"]) if permit.get("create_time") else None
            if permit["started"] >= stale and (owner is None or still_running(owner) is not None):
                kept[pid_key] = permit
        data["permits"] = kept

    def _move(self, data: dict[str, Any], state: str, reason: str) -> None:
        now = self.clock.time()
        data["state"] = state
        data["reason"] = reason
        data["last_change"] = now
        if state == OPEN:
            data["trips"] += 1
            s = self.settings
            open_for = min(s.open_max_s, s.open_s * s.open_multiplier ** (data["trips"] - 1))
            data["opened_at"] = now
            data["open_until"] = now + open_for
            data["probe_successes"] = 0
        elif state == HALF_OPEN:
            data["probe_successes"] = 0
        else:  # closed: a full recovery forgets the trips
            data.update(trips=0, consecutive_failures=0, opened_at=None, open_until=None, probe_successes=0)

    # -- the public operations -------------------------------------------------------------------------------

    def acquire(self, target: str) -> Permit:
        """A permit to call `target` now, or BreakerOpen."""
        s = self.settings
        # Most requests to a target whose breaker is open are refused: that needs no lock, because a
        # file replaced atomically is always read whole. Only the move to half-open takes the lock.
        seen = self._load(target)
        if seen["state"] == OPEN and self.clock.time() < (seen["open_until"] or 0):
            raise BreakerOpen(target, OPEN, seen["open_until"], seen.get("reason") or "open")
        with self._locked(target) as data:
            now = self.clock.time()
            if data["state"] == OPEN:
                if now < data["open_until"]:
                    raise BreakerOpen(target, OPEN, data["open_until"], data.get("reason") or "open")
                self._move(data, HALF_OPEN, "open period over; probing")
            in_flight = list(data["permits"].values())
            probe = data["state"] == HALF_OPEN
            if probe and sum(1 for p in in_flight if p["probe"]) >= s.half_open_probes:
                raise BreakerOpen(target, HALF_OPEN, None, "a probe is already testing it")
            failures = data["consecutive_failures"]
            if not probe and failures and len(in_flight) >= s.failure_threshold - failures:
                raise BreakerOpen(
                    target,
                    CLOSED,
                    None,
                    f"{failures} recent failures and {len(in_flight)} requests in flight use the failure budget",
                )
            permit = Permit(target, secrets.token_hex(6), probe)
            data["permits"][permit.id] = {
                "pid": os.getpid(),
                "create_time": self._me.create_time if self._me else None,
                "started": now,
                "probe": probe,
            }
        return permit

    def release(self, permit: Permit, *, ok: bool, error_class: str | None = None) -> None:
        """Report how the request went. Only `counted_classes` failures count against the target."""
        s = self.settings
        with self._locked(permit.target) as data:
            data["permits"].pop(permit.id, None)
            now = self.clock.time()
            counted = not ok and error_class in s.counted_classes
            if ok or counted:
                self._count(data, now, ok=ok)
            if counted:
                data["last_error_class"] = error_class
            state = data["state"]
            if state == HALF_OPEN and permit.probe:
                if ok:
                    data["probe_successes"] += 1
                    if data["probe_successes"] >= s.close_after:
                        self._move(data, CLOSED, f"{data['probe_successes']} probes succeeded")
                elif counted:
                    self._move(data, OPEN, f"probe failed ({error_class})")
            elif state == CLOSED:
                if ok:
                    data["consecutive_failures"] = 0
                elif counted:
                    data["consecutive_failures"] += 1
                    why = self._trip_reason(data, error_class)
                    if why:
                        self._move(data, OPEN, why)

    def _trip_reason(self, data: dict[str, Any], error_class: str | None) -> str | None:
        s = self.settings
        if error_class in s.open_at_once:
            return f"{error_class} failure"
        if data["consecutive_failures"] >= s.failure_threshold:
            return f"{data['consecutive_failures']} consecutive failures ({error_class})"
        calls = _calls(data["window"])
        if calls >= s.min_calls:
            failed = sum(bucket[2] for bucket in data["window"])
            if failed / calls >= s.failure_rate:
                return f"{failed} of the last {calls} calls failed within {s.window_s:g}s"
        return None

    def _count(self, data: dict[str, Any], now: float, *, ok: bool) -> None:
        """Add one call to the current time bucket of the window."""
        width = self.settings.window_s / _BUCKETS_PER_WINDOW
        start = now - now % width
        window = data["window"]
        if not window or window[-1][0] != start:
            window.append([start, 0, 0])
        window[-1][1 if ok else 2] += 1

    def status(self, target: str) -> dict[str, Any]:
        """The target's breaker as it stands now (an open one past its time reads as half_open)."""
        with self._locked(target) as data:
            view = dict(data)
        if view["state"] == OPEN and self.clock.time() >= view["open_until"]:
            view["state"] = HALF_OPEN
        view["in_flight"] = len(view.pop("permits"))
        view["calls_in_window"] = _calls(view.pop("window"))
        return view

    def targets(self) -> list[str]:
        folder = self.state.sub("breakers")
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))

    def reset(self, target: str) -> None:
        """Close the breaker and forget its history (a person's decision, recorded in the ledger)."""
        with self._locked(target) as data:
            permits = data["permits"]
            data.clear()
            data.update(_fresh(target), permits=permits, reason="reset by hand", last_change=self.clock.time())


def _set_aside(path: Path, raw: bytes, now: float) -> Path | None:
    """Keep an unreadable breaker's bytes as <name>.corrupt-<time> (the file itself is rewritten in place)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        write_bytes_atomic(target, raw, durable=False)
    except OSError:
        return None
    return target
