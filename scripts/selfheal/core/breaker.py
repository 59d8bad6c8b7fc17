"""Circuit breakers shared by every process on the host: one JSON file per target, changed under a lock.

closed: requests pass. After `failure_threshold` consecutive counted failures, or a failure rate of
`failure_rate` over the last `window_s` with at least `min_calls` calls, or one failure of an
`open_at_once` class (a refused key), it opens.
open: requests are refused (BreakerOpen, a NotAttempted) until `open_s` has passed; each trip
without a recovery in between multiplies that time by `open_multiplier`, up to `open_max_s`.
half_open: up to `half_open_probes` requests at once, across all processes, test the target;
`close_after` successes close it, one counted failure opens it again.

Below the trip, a target can be ejected (outlier ejection, as Envoy does; LiteLLM's cooldowns): when at
least `eject_failure_rate` of the window's calls failed (with `eject_min_calls` calls), or when a caller
reports it silent. While ejected, callers with somewhere else to go pass it over (`acquire(...,
avoid_ejected=True)` raises Ejected); each ejection without a clean window in between lasts twice as
long (`eject_s` up to `eject_max_s`). When it ends, one probe at a time (across processes) tests it; a
success ends the ejection, a counted failure renews it.

Once failures have started, requests still in flight count against what is left of the failure
budget, so concurrent callers cannot overshoot the threshold against a dead target. A permit whose
process died (pid and start time no longer match) is forgotten, so a crash never wedges a breaker.

Every request reads and updates its target's file, so the file is cheap to change: it is rewritten in
place under an exclusive `flock` of the file itself (compact JSON, no temporary file, no rename, no
fsync), and read under a shared one. A process killed mid-write leaves a file the next reader cannot
parse: that file is moved aside (reported) and the breaker starts closed, which costs at most a few
requests. The record itself, and the rule that an open breaker past its time is half-open, are
state/breakers.py's (`BreakerState`); `read_breaker()` there reads one for anyone else (the health check).

Fleet mode (store.url): the same record lives in one PostgreSQL row per target, changed under
`SELECT ... FOR UPDATE`, so every host shares one breaker per target. Permits carry their host: a
permit of this host is checked by pid and start time as above, one of another host is forgotten after
`store.remote_permit_s`. While the database is down, each host uses its own files (degraded mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import functools
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..errors import CorruptStateError, FleetUnavailable, NotAttempted, StateError, StateWriteError, UsageError
from ..state import layout
from ..state.breakers import (
    CLOCK_STEP_S,
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerState,
    BreakerStateName,
    HeldPermit,
    parse_breaker,
    read_breaker,
)
from ..state.records import RecordError
from ..state.redact import active as active_redactor
from ..state.root import StateRoot, loads, open_rewrite, validate_id, write_bytes_atomic
from ..state.runs import boot_id, recorded_process_gone
from .config import BreakerSettings, StoreSettings
from .fleet import fleet_database, fleet_now, host_id, mark_down, mark_up
from .ledger import Ledger
from .process import ProcessIdentity, identify

logger = logging.getLogger(__name__)

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


class Ejected(BreakerOpen):
    """The target is ejected (failing often, or silent): a caller with another target should use that."""


@dataclass(frozen=True)
class Permit:
    """Leave to send one request to a target; give it back with Breakers.release()."""

    target: str
    id: str
    probe: bool
    recorded: bool = True  # False: the breaker's file could not be used, so this call goes unguarded
    eject_probe: bool = False  # the request that tests an ejected target after its cooldown
    shared: bool = False  # granted by the fleet's database, not this host's file


@functools.lru_cache(maxsize=4)
def _identity_of(pid: int) -> ProcessIdentity | None:
    """A process (pid and start time, for its permits), looked up once: this one, by os.getpid()."""
    return identify(pid)


def _encode(data: BreakerState) -> bytes:
    """The file's bytes (rewritten in place, not through the state root's helpers: redacted here). The window
    holds only numbers (checked on read, counted here), so the redactor skips it: most of a busy file."""
    doc = data.to_json()
    window = doc.pop("window")
    doc = active_redactor().obj(doc)
    doc["window"] = window
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _decode(raw: bytes, path: Path) -> BreakerState | None:
    """The breaker in `raw`, None for an empty (new) file; CorruptStateError if it cannot be one."""
    if not raw.strip():
        return None
    try:
        data = loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptStateError(path, None, f"invalid JSON: {exc}") from None
    return parse_breaker(data, path)


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _row(data: dict[str, Any] | None, target: str) -> BreakerState:
    """The fleet's row for `target` as a record (a fresh closed breaker for a target never seen)."""
    if data is None:
        return BreakerState(target)
    return BreakerState.from_json(data, f"fleet breaker row {target!r}", target=target)


class UnknownTarget(UsageError):
    """No breaker exists for this target; the message offers the close names."""

    def __init__(self, target: str, known: Sequence[str]) -> None:
        self.target = target
        close = difflib.get_close_matches(target, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"breakers: {', '.join(known) or 'none yet'}"
        super().__init__(f"no breaker for target {target!r}; {hint}")


class Breakers:
    """The breakers under one state root. Cheap to build; every method reads the shared state fresh."""

    def __init__(
        self,
        state: StateRoot,
        settings: BreakerSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        ledger: Ledger | None = None,
        store: StoreSettings | None = None,
    ) -> None:
        self.state = state
        self.settings = settings
        self.clock = clock
        self.ledger = ledger
        # Fleet mode comes with the configuration: given, or the ledger's.
        self.store = store if store is not None else (ledger.config.store if ledger is not None else None)
        self.host = host_id(self.store) if self.store is not None else None
        self._me = _identity_of(os.getpid())
        # The machine's boot goes with permits in fleet mode only (on one host a permit of another boot is
        # simply of a process gone, found by its start time).
        self._boot = boot_id() if self.store is not None and self.store.fleet else None

    def _now(self, db_now: float | None = None) -> float:
        """The time the breakers judge by: this host's clock, moved to the database's in fleet mode (open
        times, windows and permits of a shared breaker are the fleet's: a host 10 minutes ahead once held a
        breaker open 10 minutes for everyone); core.fleet.fleet_now."""
        return fleet_now(self.clock, db_now) if self.store is not None else self.clock.time()

    # -- the file --------------------------------------------------------------------------------------------

    def _path(self, target: str) -> Any:
        return self.state.breaker_file(target)

    def _shared(self) -> Any:
        """The fleet's database to use now, or None (single host, or the database is down)."""
        return None if self.store is None else fleet_database(self.store, clock=self.clock)

    @contextlib.contextmanager
    def _locked(self, target: str) -> Iterator[tuple[BreakerState, bool]]:
        """The target's state under an exclusive lock (the fleet's row, else this host's file), and whether
        it is the fleet's; whatever the block leaves in the record is written back before the lock is
        released."""
        validate_id(target, "target")
        db = self._shared()
        if db is not None:
            from ..state.pg import locked_breaker  # noqa: PLC0415 - psycopg only in fleet mode

            ran = body_failed = False
            try:
                with locked_breaker(db, target) as row:
                    self._now(row.now)  # measures how far the database's clock is from this host's
                    try:
                        data = _row(row.data, target)
                    except RecordError as exc:  # like an unreadable file: the breaker starts closed
                        logger.warning("%s; the breaker for %r starts closed", exc, target)
                        data = BreakerState(target)
                    before = data.state
                    self._expire(data)
                    for orphan in _take_orphans(target):  # released here while the database was down
                        data.permits.pop(orphan, None)
                    ran = True
                    try:
                        yield data, True
                    except BaseException:
                        body_failed = True
                        raise
                    row.data = data.to_json()
            except StateError as exc:
                if body_failed:
                    raise
                # Only an outage moves this process to its own files. A statement the database answered and
                # refused (DatabaseRefused) is no outage: the fleet's row still holds the truth, and a host
                # judging by its own file for store.retry_down_s would let calls through a breaker open for
                # every other host.
                outage = isinstance(exc, FleetUnavailable)
                if outage:
                    mark_down(self.store, exc, clock=self.clock)  # type: ignore[arg-type]
                if ran:  # the block ran but its change could not be committed: nothing to run again
                    logger.warning("breaker %r: a change was lost with the fleet database: %s", target, exc)
                    return
                if not outage:
                    raise  # the caller reports it (acquire, release: an unrecorded call), as for a file
                # The database failed before the block ran: run it on this host's file instead, below.
            else:
                mark_up(self.store)  # type: ignore[arg-type]
                self._record_move(target, before, data)
                return
        path = self._path(target)
        fd = open_rewrite(path)  # never through a planted link (UnsafeStateError)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = _read_fd(fd)
            try:
                data = _decode(raw, path) or BreakerState(target)
            except CorruptStateError as exc:
                moved = _set_aside(path, raw, self.clock.time())  # a file name: this host's time
                logger.warning("%s; set aside as %s; the breaker for %r starts closed", exc, moved, target)
                data = BreakerState(target)
                raw = b""
            before = data.state
            self._expire(data)
            yield data, False
            new = _encode(data)
            if new != raw:  # a refused request, or a look, changes nothing: no write
                try:
                    os.pwrite(fd, new, 0)
                    os.ftruncate(fd, len(new))
                except OSError as exc:
                    raise StateWriteError(path, exc) from exc
        finally:
            os.close(fd)  # releases the lock
        self._record_move(target, before, data)

    def _record_move(self, target: str, before: str, data: BreakerState) -> None:
        if data.state == OPEN and data.open_until is not None:
            _seen_open[target] = data.open_until
        else:
            _seen_open.pop(target, None)
        if data.state != before and self.ledger is not None:
            fields: dict[str, Any] = {"reason": data.reason, "trips": data.trips}
            if data.state == OPEN:
                fields["error_class"] = data.last_error_class
                fields["open_for_s"] = round((data.open_until or 0.0) - (data.opened_at or 0.0), 3)
            self.ledger.record("breaker", target=target, status=data.state, **fields)

    def _load(self, target: str) -> BreakerState:
        """The target's state as last written, or a fresh closed breaker (an unreadable file is dealt
        with by the next writer, under the exclusive lock)."""
        db = self._shared()
        if db is not None:
            from ..state.pg import read_breaker_row  # noqa: PLC0415 - psycopg only in fleet mode

            try:
                found, db_now = read_breaker_row(db, validate_id(target, "target"))
            except FleetUnavailable as exc:
                mark_down(self.store, exc, clock=self.clock)  # type: ignore[arg-type]
            else:
                self._now(db_now)  # measures how far the database's clock is from this host's
                try:
                    return _row(found, target)
                except RecordError:  # the next writer logs it and starts the breaker closed
                    return BreakerState(target)
        try:
            return read_breaker(self._path(target)) or BreakerState(target)
        except CorruptStateError:
            return BreakerState(target)

    def _expire(self, data: BreakerState) -> None:
        """Drop window entries older than the window, and permits whose process is gone or too old."""
        now = self._now()
        horizon = now - self.settings.window_s
        # A bucket from well after now is from before the wall clock was stepped back: its calls are no guide.
        data.window = [bucket for bucket in data.window if horizon <= bucket[0] <= now + CLOCK_STEP_S]
        stale = now - self.settings.stale_permit_s
        # Another host's process cannot be looked up from here: its permit lasts store.remote_permit_s.
        remote_stale = now - self.store.remote_permit_s if self.store is not None else stale
        kept = {}
        for pid_key, permit in data.permits.items():
            # Another host's process cannot be looked up here, nor one of another machine under this host id
            # (cloned from one image, it shares the hostname): its pid means nothing in this process table.
            elsewhere = None not in (permit.boot, self._boot) and permit.boot != self._boot
            if (permit.host is not None and permit.host != self.host) or elsewhere:
                if permit.started >= max(stale, remote_stale):
                    kept[pid_key] = permit
                continue
            if permit.started >= stale and not recorded_process_gone(
                permit.pid, permit.create_time, ticks=permit.start_ticks
            ):
                kept[pid_key] = permit
        data.permits = kept

    def _move(self, data: BreakerState, state: BreakerStateName, reason: str, open_for: float | None = None) -> None:
        """Move to `state`; to open, for `open_for` seconds (default: open_s, longer with each trip)."""
        now = self._now()
        data.state = state
        data.reason = reason
        data.last_change = now
        data.probe_successes = 0
        if state == OPEN:
            data.trips += 1
            s = self.settings
            if open_for is None:
                open_for = min(s.open_max_s, s.open_s * s.open_multiplier ** (data.trips - 1))
            data.opened_at = now
            data.open_until = now + open_for
        elif state == CLOSED:  # a full recovery forgets the trips
            data.trips = data.consecutive_failures = 0
            data.opened_at = data.open_until = None

    # -- the public operations -------------------------------------------------------------------------------

    def acquire(self, target: str, *, avoid_ejected: bool = False) -> Permit:
        """A permit to call `target` now, or BreakerOpen. avoid_ejected: the caller has another target to
        go to, so an ejected one refuses it too (Ejected), but for one probe once the ejection is over.

        If the breaker's file cannot be used (a planted link, a full or read-only disk), the call is allowed
        unguarded and that is reported once (StateRoot.unrecorded): a record must never be what stops the
        user's work."""
        try:
            return self._acquire(target, avoid_ejected=avoid_ejected)
        except StateError as exc:
            self.state.unrecorded(f"the circuit breaker of {target!r}", exc)
            return Permit(target, "unrecorded", False, recorded=False)

    def _acquire(self, target: str, *, avoid_ejected: bool) -> Permit:
        s = self.settings
        # Most requests to a target whose breaker is open are refused: that needs no lock, because a
        # file replaced atomically is always read whole. Only the move to half-open takes the lock.
        # In fleet mode a read costs a round trip: it is made only while this process last saw the
        # breaker open (then a refusal takes one round trip and no row lock), else the locked read serves.
        fleet = self.store is not None and self.store.fleet
        seen = self._load(target) if not fleet or _seen_open.get(target, 0) > self._now() else None
        if seen is not None and seen.is_open(self._now()):
            raise BreakerOpen(target, OPEN, seen.open_until, seen.reason or "open")
        if avoid_ejected and seen is not None and seen.is_ejected(self._now()):
            raise Ejected(target, "ejected", seen.ejected_until, seen.eject_reason or "failing often")
        eject_probe = False
        with self._locked(target) as (data, shared):
            now = self._now()
            if avoid_ejected and data.ejected_until is not None:
                if data.is_ejected(now):
                    raise Ejected(target, "ejected", data.ejected_until, data.eject_reason or "ejected")
                if any(p.eject_probe for p in data.permits.values()):
                    raise Ejected(target, "ejected", None, "a probe is testing it after its ejection")
                eject_probe = True
            if data.is_open(now):
                _seen_open[target] = data.open_until or now
                raise BreakerOpen(target, OPEN, data.open_until, data.reason or "open")
            if data.state == OPEN and data.is_half_open(now):
                self._move(data, HALF_OPEN, "open period over; probing")
            in_flight = list(data.permits.values())
            probe = data.state == HALF_OPEN
            if probe and sum(1 for p in in_flight if p.probe) >= s.half_open_probes:
                raise BreakerOpen(target, HALF_OPEN, None, "a probe is already testing it")
            failures = data.consecutive_failures
            if not probe and failures and len(in_flight) >= s.failure_threshold - failures:
                raise BreakerOpen(
                    target,
                    CLOSED,
                    None,
                    f"{failures} recent failures and {len(in_flight)} requests in flight use the failure budget",
                )
            permit = Permit(target, os.urandom(6).hex(), probe, eject_probe=eject_probe, shared=shared)
            data.permits[permit.id] = HeldPermit(
                host=self.host,
                pid=os.getpid(),
                create_time=self._me.create_time if self._me else None,
                start_ticks=self._me.start_ticks if self._me else None,
                boot=self._boot,
                started=now,
                probe=probe,
                eject_probe=eject_probe,
            )
        return permit

    def release(
        self,
        permit: Permit,
        *,
        ok: bool,
        error_class: str | None = None,
        eject: str | None = None,
        counts: bool = False,
    ) -> None:
        """Report how the request went. Only `counted_classes` failures count against the target, and those
        the caller knows to be the target's own whatever their class (`counts`: a server whose reply is not
        a chat completion at all, where a `format` failure is usually the prompt's).
        eject: the caller found the target unfit for now (why, e.g. "silent"): eject it at once."""
        if not permit.recorded:
            return
        try:
            self._release(permit, ok=ok, error_class=error_class, eject=eject, counts=counts)
        except StateError as exc:
            self.state.unrecorded(f"the circuit breaker of {permit.target!r}", exc)

    def _release(
        self, permit: Permit, *, ok: bool, error_class: str | None, eject: str | None, counts: bool = False
    ) -> None:
        s = self.settings
        with self._locked(permit.target) as (data, shared):
            data.permits.pop(permit.id, None)
            if permit.shared and not shared:
                # Granted by the fleet's row, released while its database is down: the row still holds
                # the permit (a probe's would block probing); it is dropped there at the next chance.
                _orphans.setdefault(permit.target, set()).add(permit.id)
            now = self._now()
            counted = not ok and (counts or error_class in s.counted_classes)
            if ok or counted:
                self._count(data, now, ok=ok)
            if counted:
                data.last_error_class = error_class
            answered = ok or error_class is not None
            self._judge_ejection(data, permit, now, ok=ok, counted=counted, eject=eject, answered=answered)
            if data.state == HALF_OPEN and permit.probe:
                if ok:
                    data.probe_successes += 1
                    if data.probe_successes >= s.close_after:
                        self._move(data, CLOSED, f"{data.probe_successes} probes succeeded")
                elif counted:
                    self._move(data, OPEN, f"probe failed ({error_class})")
            elif data.state == CLOSED:
                if ok:
                    data.consecutive_failures = 0
                elif counted:
                    data.consecutive_failures += 1
                    why = self._trip_reason(data, error_class)
                    if why:
                        self._move(data, OPEN, why)

    def _judge_ejection(
        self,
        data: BreakerState,
        permit: Permit,
        now: float,
        *,
        ok: bool,
        counted: bool,
        eject: str | None,
        answered: bool = True,
    ) -> None:
        """Eject the target, or end its ejection. answered: the request came back with an outcome (ok, or a
        failure of some class); a probe that did not (cancelled, cut short: no class) says nothing about the
        target, so its ejection stands and only the probe's slot is freed for the next caller."""
        s = self.settings
        if ok and not data.failures_in_window:
            data.ejections = 0  # a clean window: the next ejection starts short again
        why = eject
        if why is None and counted and data.state == CLOSED:
            if permit.eject_probe:
                why = f"its probe failed ({data.last_error_class})"
            else:
                why = self.ejection_reason(data.window)
        if why is not None:
            if data.is_ejected(now) and not permit.eject_probe:
                return  # already ejected (a request that started before)
            data.ejections += 1
            length = min(s.eject_max_s, s.eject_s * 2 ** (data.ejections - 1))
            data.ejected_at, data.ejected_until = now, now + length
            data.eject_reason = why
            logger.info("%s ejected for %gs: %s", data.target, length, why)
        elif permit.eject_probe and answered:
            data.ejected_at = data.ejected_until = (
                None  # the probe came back without a counted failure: traffic returns
            )
            data.eject_reason = None

    def ejection_reason(self, window: list[list[float]], *, failing: bool = False) -> str | None:
        """Why the window (plus one more failure, with `failing`) calls for an ejection, or None."""
        s = self.settings
        calls = _calls(window) + (1 if failing else 0)
        failed = sum(bucket[2] for bucket in window) + (1 if failing else 0)
        if calls >= s.eject_min_calls and failed / calls >= s.eject_failure_rate:
            return f"{failed:g} of the last {calls} calls failed within {s.window_s:g}s"
        return None

    def would_eject(self, target: str, error_class: str) -> bool:
        """Whether one more failure of this class would eject the target (a cheap read, no lock)."""
        if error_class not in self.settings.counted_classes:
            return False
        seen = self._load(target)
        horizon = self._now() - self.settings.window_s
        return self.ejection_reason([b for b in seen.window if b[0] >= horizon], failing=True) is not None

    def _trip_reason(self, data: BreakerState, error_class: str | None) -> str | None:
        s = self.settings
        if error_class in s.open_at_once:
            return f"{error_class} failure"
        if data.consecutive_failures >= s.failure_threshold:
            return f"{data.consecutive_failures} consecutive failures ({error_class})"
        calls = data.calls_in_window
        if calls >= s.min_calls:
            failed = data.failures_in_window
            if failed / calls >= s.failure_rate:
                return f"{failed:g} of the last {calls} calls failed within {s.window_s:g}s"
        return None

    def _count(self, data: BreakerState, now: float, *, ok: bool) -> None:
        """Add one call to the current time bucket of the window."""
        width = self.settings.window_s / _BUCKETS_PER_WINDOW
        start = now - now % width
        window = data.window
        if not window or window[-1][0] != start:
            window.append([start, 0, 0])
        window[-1][1 if ok else 2] += 1

    def status(self, target: str) -> dict[str, Any]:
        """The target's breaker as it stands now (an open one past its time reads as half_open), as a dict
        for printing: the record's fields less its window and permits, which are counted instead."""
        with self._locked(target) as (data, _):
            view = data.to_json()
        view["state"] = data.effective_state(self._now())
        view["in_flight"] = len(view.pop("permits"))
        view["calls_in_window"] = _calls(view.pop("window"))
        return view

    def targets(self) -> list[str]:
        db = self._shared()
        if db is not None:
            from ..state.pg import breaker_targets  # noqa: PLC0415 - psycopg only in fleet mode

            try:
                return breaker_targets(db)
            except FleetUnavailable as exc:
                mark_down(self.store, exc, clock=self.clock)  # type: ignore[arg-type]
        folder = self.state.sub(layout.BREAKERS)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))

    def trip(self, target: str, open_for_s: float | None = None, *, reason: str = "forced open by hand") -> None:
        """Open the breaker now for `open_for_s` seconds (default `open_s`), whatever its state: the second
        source document's chaos test "force the breaker open". Callers are refused until then, and then it
        probes as after any trip. Recorded in the ledger like a trip."""
        length = self.settings.open_s if open_for_s is None else open_for_s
        if not length > 0:
            raise ValueError(f"open_for_s must be above 0, got {open_for_s!r}")
        with self._locked(target) as (data, _):
            self._move(data, OPEN, f"{reason} for {length:g}s", open_for=length)

    def reset(self, target: str, *, existing_only: bool = False) -> None:
        """Close the breaker and forget its history (a person's decision, recorded in the ledger).

        `existing_only`: a target with no breaker yet is an error (a typo), not a new closed breaker."""
        if existing_only:
            known = self.targets()  # the fleet's breakers in fleet mode: this host's file may never have existed
            if validate_id(target, "target") not in known:
                raise UnknownTarget(target, known)
        with self._locked(target) as (data, _):
            # A newer version's keys are kept, like everything else that is not the breaker's history.
            fresh = BreakerState(
                target, permits=data.permits, reason="reset by hand", last_change=self._now(), extra=data.extra
            )
            for f in dataclasses.fields(BreakerState):
                setattr(data, f.name, getattr(fresh, f.name))


# Until when this process last saw each target's breaker open (wall time): worth an unlocked read first.
_seen_open: dict[str, float] = {}
# Permits of this process granted by the fleet's database and released while it was down, per target.
_orphans: dict[str, set[str]] = {}


def _take_orphans(target: str) -> set[str]:
    return _orphans.pop(target, set())


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
