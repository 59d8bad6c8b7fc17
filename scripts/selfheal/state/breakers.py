"""A circuit breaker's saved state (`breakers/<target>.json`, or the fleet's row): the typed record, and the
rule that an open breaker whose time is over is half-open. The moves between states are core/breaker.py's.

The file is compact JSON with sorted keys, rewritten in place under an exclusive flock by its writers and
read under a shared one (`read_breaker`). Keys of a newer version are kept (`extra`) and written back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal

from ..errors import CorruptStateError
from .records import Fields, RecordError, Spec, split
from .root import read_json_shared

BreakerStateName = Literal["closed", "open", "half_open"]
CLOSED: BreakerStateName = "closed"
OPEN: BreakerStateName = "open"
HALF_OPEN: BreakerStateName = "half_open"
STATES: tuple[BreakerStateName, ...] = (CLOSED, OPEN, HALF_OPEN)

# How far behind a time must be to be taken as a wall clock stepped back. Readers of one breaker disagree by
# a little: in fleet mode each host's clock is moved to the database's by a skew measured over a round trip
# (tens of ms on a loaded host, more now and then). A reader 50 ms behind the writer once took a breaker just
# opened as stepped back and let its probe out at once. A real step (NTP, a restored VM) is seconds or more;
# one under this only lengthens an open time by at most this much.
CLOCK_STEP_S = 5.0


@dataclass
class HeldPermit:
    """A request in flight to the target, recorded so every process (every host, in fleet mode) counts it.

    `host` None: written on a single host (the file's own host). `create_time` with `pid` identifies the
    process (a dead one's permit is forgotten); `started` is wall time."""

    pid: int
    started: float
    probe: bool = False
    eject_probe: bool = False
    host: str | None = None
    create_time: float | None = None
    start_ticks: int | None = None  # the process's start in clock ticks since boot (state.runs.start_ticks)
    boot: str | None = None  # fleet mode: the machine's boot (state.runs.boot_id): a clone shares the host id
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {
            "host": self.host,
            "pid": self.pid,
            "create_time": self.create_time,
            "started": self.started,
            "probe": self.probe,
            "eject_probe": self.eject_probe,
        }
        if self.start_ticks is not None:
            data["start_ticks"] = self.start_ticks
        if self.boot is not None:
            data["boot"] = self.boot
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path, inside: str = "") -> HeldPermit:
        f = Fields(data, where, "a permit", inside=inside)
        f.require("pid", "started")
        return cls(**f.read(_PERMIT_SPEC), extra=split(data, _PERMIT_FIELDS))


_PERMIT_FIELDS = frozenset(f.name for f in dataclasses.fields(HeldPermit)) - {"extra"}
_PERMIT_SPEC: Spec = (
    ("pid", "whole", 0),
    ("started", "number", 0.0),
    ("probe", "flag", False),
    ("eject_probe", "flag", False),
    ("host", "text?", None),
    ("create_time", "number?", None),
    ("start_ticks", "whole?", None),
    ("boot", "text?", None),
)


@dataclass
class BreakerState:
    """One target's breaker. Times are wall-clock seconds; `window` holds `[bucket start, successes,
    failures]` per time bucket of the sliding window; `permits` the requests in flight, by permit id."""

    target: str
    state: BreakerStateName = CLOSED
    consecutive_failures: int = 0
    trips: int = 0
    opened_at: float | None = None
    open_until: float | None = None
    probe_successes: int = 0
    window: list[list[float]] = field(default_factory=list)
    permits: dict[str, HeldPermit] = field(default_factory=dict)
    last_error_class: str | None = None
    last_change: float | None = None
    reason: str | None = None
    ejected_until: float | None = None
    ejected_at: float | None = None
    ejections: int = 0
    eject_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- the half-open rule: the only place that decides it ------------------------------------------------

    def is_open(self, now: float) -> bool:
        """Open and still within its open time: requests are refused without asking the target. A `now`
        before it opened (by more than CLOCK_STEP_S) means the wall clock was stepped back (NTP, a VM
        restored): its open time is taken as over, or an open time of a minute would last as long as the
        step, an hour or a day."""
        if self.state != OPEN or self.open_until is None or now >= self.open_until:
            return False
        return self.opened_at is None or now >= self.opened_at - CLOCK_STEP_S

    def effective_state(self, now: float) -> BreakerStateName:
        """The state as it stands at `now`: an open breaker whose open time is over (at `open_until` exactly,
        or with none) is half-open, since the next request will be its probe."""
        if self.state == OPEN and not self.is_open(now):
            return HALF_OPEN
        return self.state

    def is_half_open(self, now: float) -> bool:
        return self.effective_state(now) == HALF_OPEN

    def is_ejected(self, now: float) -> bool:
        """Ejected and within its time (as for is_open, a clock stepped back to before it began ends it)."""
        if self.ejected_until is None or now >= self.ejected_until:
            return False
        return self.ejected_at is None or now >= self.ejected_at - CLOCK_STEP_S

    @property
    def calls_in_window(self) -> int:
        return int(sum(bucket[1] + bucket[2] for bucket in self.window))

    @property
    def failures_in_window(self) -> float:
        return sum(bucket[2] for bucket in self.window)

    # -- the file ----------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "target": self.target,
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "trips": self.trips,
            "opened_at": self.opened_at,
            "open_until": self.open_until,
            "probe_successes": self.probe_successes,
            "window": self.window,
            "permits": {pid: permit.to_json() for pid, permit in self.permits.items()},
            "last_error_class": self.last_error_class,
            "last_change": self.last_change,
            "reason": self.reason,
            "ejected_until": self.ejected_until,
            "ejections": self.ejections,
            "eject_reason": self.eject_reason,
        }
        if self.ejected_at is not None:  # a newer field: a file without it still reads and writes back the same
            data["ejected_at"] = self.ejected_at
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path, *, target: str | None = None) -> BreakerState:
        """Check a breaker read from `where` (a file, a row); RecordError names where, the key and the value.
        `target`: the name the file or row is filed under, used when the record does not say."""
        f = Fields(data, where, "a breaker")
        f.require("state", "window", "permits")
        window = f.array("window")
        # Read on every request: checked by C-level passes (up to 60 buckets), not a loop per bucket.
        if window and not (
            _LIST.issuperset(map(type, window))
            and _THREE.issuperset(map(len, window))
            and _NUMBERS.issuperset(map(type, chain.from_iterable(window)))
        ):
            raise f.bad("window", "must be a list of [start, successes, failures]")
        permits = {str(k): HeldPermit.from_json(v, where, f"permits.{k}") for k, v in f.object("permits").items()}
        name = f.text("target", target, optional=True)
        if name is None:
            raise f.bad("target", "missing")
        state = f.choice("state", STATES)
        return cls(name, state, window=window, permits=permits, **f.read(_SPEC), extra=split(data, _FIELDS))


_FIELDS = frozenset(f.name for f in dataclasses.fields(BreakerState)) - {"extra"}
# The fields checked in one pass (target, state, window and permits are checked above).
_SPEC: Spec = (
    ("consecutive_failures", "count", 0),
    ("trips", "count", 0),
    ("opened_at", "number?", None),
    ("open_until", "number?", None),
    ("probe_successes", "count", 0),
    ("last_error_class", "text?", None),
    ("last_change", "number?", None),
    ("reason", "text?", None),
    ("ejected_until", "number?", None),
    ("ejected_at", "number?", None),
    ("ejections", "count", 0),
    ("eject_reason", "text?", None),
)


_NUMBERS = frozenset({int, float})  # exactly: a bool is not a count
_LIST, _THREE = frozenset({list}), frozenset({3})


def parse_breaker(data: Any, path: Path) -> BreakerState:
    """The breaker in a file's parsed JSON; CorruptStateError (naming the file, the key and the value) if it
    cannot be one. Nothing is moved: only writers do that."""
    try:
        return BreakerState.from_json(data, path, target=path.stem)
    except RecordError as exc:
        raise CorruptStateError(path, None, f"not a breaker: {exc.detail}") from None


def read_breaker(path: Path) -> BreakerState | None:
    """One breaker file as it stands, read under a shared lock (never half-written); None if absent.
    Raises CorruptStateError for a file that is not a breaker."""
    data = read_json_shared(path)
    return None if data is None else parse_breaker(data, path)
