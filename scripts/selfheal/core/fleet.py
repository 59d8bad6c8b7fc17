"""Fleet mode's switch: whether this process shares state through PostgreSQL, and whether the database is up.

With no store.url nothing here touches psycopg: `fleet_database()` returns None before importing it. With
one, the first use connects (and migrates); a failure marks the database down for `store.retry_down_s`,
during which breakers and the ledger use this host's files (degraded mode) without trying again, so a
dead database costs one connect attempt per process per period, not one per request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import StateError, UsageError
from ..state.root import iter_lines, open_read
from .config import StoreSettings

if TYPE_CHECKING:
    from ..state.pg import Database

logger = logging.getLogger(__name__)

_HOSTNAME = socket.gethostname()
NO_DRIVER = "fleet mode is on (store.url) but psycopg is not installed here: run ./install.sh --fleet"
_down_lock = threading.Lock()
# url -> (monotonic time until which the database counts as down, why)
_down: dict[str, tuple[float, str]] = {}
_warned: set[str] = set()  # URLs whose outage was logged; cleared by the next success


def host_id(store: StoreSettings) -> str:
    """This host's name in the fleet: store.host_id (SELFHEAL_HOST_ID), else the hostname."""
    return store.host_id or _HOSTNAME


def fleet_database(store: StoreSettings, *, clock: Clock = SYSTEM_CLOCK) -> Database | None:
    """The shared database to use now; None when fleet mode is off or the database was down a moment ago."""
    if store.url is None:
        return None
    with _down_lock:
        down = _down.get(store.url)
        if down is not None:
            if clock.monotonic() < down[0]:
                return None
            del _down[store.url]
    try:
        from ..state.pg import database_for  # noqa: PLC0415 - psycopg only in fleet mode
    except ImportError:
        mark_down(store, NO_DRIVER, clock=clock)
        return None
    return database_for(store.url, host_id(store), store.connect_timeout_s)


def mark_down(store: StoreSettings, why: object, *, clock: Clock = SYSTEM_CLOCK) -> None:
    """The database failed: use local files for `store.retry_down_s` (logged once per outage)."""
    if store.url is None:
        return
    with _down_lock:
        first = store.url not in _warned
        _warned.add(store.url)
        _down[store.url] = (clock.monotonic() + store.retry_down_s, str(why))
    if first:
        logger.warning("fleet database unreachable, using this host's files (degraded): %s", why)


def mark_up(store: StoreSettings) -> None:
    """The database answered: the next outage is logged again."""
    if store.url in _warned:
        with _down_lock:
            _warned.discard(str(store.url))
        logger.warning("fleet database reachable again: shared state resumes")


def down_reason(store: StoreSettings, *, clock: Clock = SYSTEM_CLOCK) -> str | None:
    """Why this process is in degraded mode now, or None."""
    if store.url is None:
        return None
    with _down_lock:
        down = _down.get(store.url)
    return down[1] if down is not None and clock.monotonic() < down[0] else None


# How far the database's clock is ahead of each clock that judges shared breakers. With the system clock it
# is measured at every locking read; an injected clock (a test's) is measured once, so that advancing it still
# moves its time. Weakly keyed: a clock that is gone takes its skew with it.
_skews: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def fleet_now(clock: Clock, db_now: float | None = None) -> float:
    """The time shared breakers are judged by: `clock` moved to the database's clock (`db_now`, read with it,
    or the last skew measured for this clock; none yet: the clock's own time)."""
    if db_now is not None and (clock is SYSTEM_CLOCK or clock not in _skews):
        _skews[clock] = db_now - clock.time()
    return float(clock.time() + _skews.get(clock, 0.0))


def spooled_events(spool: Path) -> tuple[int, str | None]:
    """How many ledger events wait in this host's spool (0 when there is none), and why it could not be counted
    (None when it was). Read as a state file (state.root.open_read): a link planted there is named, never followed
    (its target's lines were counted as this host's events), and a FIFO is refused, not waited on (a plain open
    of one hung the cron health check for good); a line is never held whole (iter_lines)."""
    try:
        fd = open_read(spool)
    except FileNotFoundError:
        return 0, None
    except StateError as exc:
        return 0, str(exc)
    except OSError as exc:
        return 0, f"cannot read {spool}: {exc.strerror or exc}"
    try:
        with os.fdopen(fd, "rb") as fh:
            return sum(1 for line in iter_lines(fh) if line is None or line.strip()), None
    except OSError as exc:  # a folder there (open_read opens one; reading it is EISDIR)
        return 0, f"cannot read {spool}: {exc.strerror or exc}"


def fleet_report(
    store: StoreSettings, spool: Path, *, init: bool = False, lease_s: float = 120.0, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any]:
    """`tasks.py fleet init|status`: connect (creating or migrating the schema), then the fleet at a
    glance: hosts and their last heartbeat, breakers with the permits each host holds (and their state now:
    an open one past its time reads half_open), the ledger, and the shared task tree's leases (which host
    runs which task, since when, until when: heartbeat + `lease_s`).
    Raises UsageError when fleet mode is off; `reachable` is False (with `error`) when the database is down."""
    if store.url is None:
        raise UsageError(
            "fleet mode is off: set store.url in config.yaml or SELFHEAL_DATABASE_URL (postgresql://...),"
            " and install the driver with ./install.sh --fleet"
        )
    try:
        from ..state.pg import SCHEMA_VERSION, Database, fleet_status, leases, mask_url  # noqa: PLC0415 - psycopg only in fleet mode
    except ImportError:
        raise UsageError(NO_DRIVER) from None

    waiting, spool_problem = spooled_events(spool)
    report: dict[str, Any] = {
        "url": mask_url(store.url),  # no piece of a password, however malformed the URL
        "host": host_id(store),
        "spooled_events": waiting,
        "spool_problem": spool_problem,
        "schema_expected": SCHEMA_VERSION,
    }
    db = Database(store.url, host_id(store), store.connect_timeout_s)
    try:
        report.update(fleet_status(db), reachable=True)  # the first connection migrates the schema
        now = fleet_now(clock, report.pop("db_now", None))  # the breakers' times are the database's
        for breaker in report["breakers"]:
            record = breaker.pop("record", None)
            if record is not None:  # a bad row is shown as stored, and said unreadable; the next writer resets it
                breaker["state"] = record.effective_state(now)
        report["lease_s"] = lease_s
        report["leases"] = leases(db, lease_s)
    except StateError as exc:
        report.update(reachable=False, error=str(exc))
    finally:
        db.close()
    report["initialized"] = init and report["reachable"]
    report.setdefault("leases", None)  # unknown while the database is down
    return report
