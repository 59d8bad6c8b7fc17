"""A run's record (`runs/<run-id>.json`) as a typed record, and the one rule that says whether a recorded
process still lives: the same pid with the same start time, on this host. Keeping the record current is
core/runs.py's (RunRecord); judging a run stuck, observe/health.py's.

psutil is imported only inside `live_process`, when a process is actually looked up: reading records (the
health check with no run in progress, a status listing) does not pay for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .records import Fields, split

if TYPE_CHECKING:
    import psutil

RUNNING, FINISHED = "running", "finished"
# How far a process's start time may differ from the recorded one and still be the same process (seconds):
# psutil derives it from boot time and clock ticks, which can round differently between reads.
START_TIME_SLACK_S = 0.01


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux: /proc/<pid>/stat, field 22), or None
    where that cannot be read. Unlike the start time in seconds since the epoch (psutil's, derived from the
    boot time the kernel reports, which moves when the wall clock is stepped: NTP, `date -s`, a VM resumed),
    it never changes for a live process, so it is what tells a recorded process from another with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
        return int(raw[raw.rindex(b")") + 2 :].split()[19])  # fields after the name start at field 3
    except (OSError, ValueError, IndexError):
        return None


def live_process(pid: int, create_time: float, ticks: int | None = None) -> psutil.Process | None:
    """The running process with this pid and start time, or None if it ended, is a zombie, or the pid now
    belongs to another process. The one place a recorded process is looked up. With `ticks` (its start
    in clock ticks since boot, as recorded), that decides, whatever the wall clock did since; without
    (an older record, or no /proc), the start time in seconds since the epoch does."""
    import psutil  # noqa: PLC0415 - 15 ms at import: only when a process is looked up

    try:
        proc = psutil.Process(pid)
        now = start_ticks(pid) if ticks is not None else None
        if now is not None:
            if now != ticks:
                return None
        elif abs(proc.create_time() - create_time) > START_TIME_SLACK_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def recorded_process_gone(
    pid: Any, create_time: Any, host: str | None = None, this_host: str | None = None, ticks: Any = None
) -> bool:
    """Liveness, decided once for every record that names a process (a run's supervisor or child, a task's
    runner, a breaker's permit): the process is known gone only when it was recorded on this host (or with
    no host), with its start time, and no process with that pid and start time runs. Anything else (another
    host's process, a record without a start time) cannot be judged here and is not called gone."""
    if host is not None and this_host is not None and host != this_host:
        return False
    if not pid or not create_time:
        return False
    recorded = ticks if isinstance(ticks, int) and not isinstance(ticks, bool) else None
    return live_process(int(pid), float(create_time), recorded) is None


@dataclass(frozen=True)
class ProcessRef:
    """A process as recorded: pid and start time (seconds since the epoch; None when it could not be read)."""

    pid: int
    create_time: float | None = None
    start_ticks: int | None = None  # its start in clock ticks since boot (see start_ticks); None: not read
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # a newer version's keys, kept

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"pid": self.pid, "create_time": self.create_time}
        if self.start_ticks is not None:
            data["start_ticks"] = self.start_ticks
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path, inside: str) -> ProcessRef:
        f = Fields(data, where, "a process", inside=inside)
        f.require("pid")
        return cls(
            pid=f.whole("pid"),
            create_time=f.number("create_time", optional=True),
            start_ticks=f.whole("start_ticks", optional=True),
            extra=split(data, ("pid", "create_time", "start_ticks")),
        )


@dataclass
class RunState:
    """One run of a command (retry_run.py, a workflow step, a task). Times ending in `_ts` are wall-clock
    seconds; `started` and `last_heartbeat` are their UTC ISO copies for people reading the file.

    `phase`: starting, running (a child is up), waiting (a backoff before `next_attempt_ts`) or finished."""

    run_id: str
    task: str | None = None
    target: str | None = None
    argv: list[str] = field(default_factory=list)
    status: str = RUNNING
    host: str | None = None
    supervisor: ProcessRef | None = None
    child: ProcessRef | None = None
    phase: str = "starting"
    next_attempt_ts: float | None = None
    attempt: int = 0
    started: str | None = None
    started_ts: float | None = None
    last_heartbeat: str | None = None
    last_heartbeat_ts: float | None = None
    last_output_ts: float | None = None
    ended_ts: float | None = None
    exit_code: int | None = None
    outcome: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def supervisor_gone(self, this_host: str) -> bool:
        """Its supervising process is known to have died (see recorded_process_gone)."""
        sup = self.supervisor
        return sup is not None and recorded_process_gone(
            sup.pid, sup.create_time, self.host, this_host, sup.start_ticks
        )

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["supervisor"] = self.supervisor.to_json() if self.supervisor else None
        data["child"] = self.child.to_json() if self.child else None
        data["argv"] = list(self.argv)
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> RunState:
        """Check a run record read from `where`; RecordError names where, the key and the value."""
        f = Fields(data, where, "a run record")
        f.require("run_id")
        argv = f.array("argv")
        if not all(isinstance(a, str) for a in argv):
            raise f.bad("argv", "must be a list of strings")
        sup, child = f.object("supervisor", optional=True), f.object("child", optional=True)
        return cls(
            run_id=f.text("run_id"),
            task=f.text("task", optional=True),
            target=f.text("target", optional=True),
            argv=argv,
            status=f.text("status", RUNNING),
            host=f.text("host", optional=True),
            supervisor=None if sup is None else ProcessRef.from_json(sup, where, "supervisor"),
            child=None if child is None else ProcessRef.from_json(child, where, "child"),
            phase=f.text("phase", "starting"),
            next_attempt_ts=f.number("next_attempt_ts", optional=True),
            attempt=f.count("attempt"),
            started=f.text("started", optional=True),
            started_ts=f.number("started_ts", optional=True),
            last_heartbeat=f.text("last_heartbeat", optional=True),
            last_heartbeat_ts=f.number("last_heartbeat_ts", optional=True),
            last_output_ts=f.number("last_output_ts", optional=True),
            ended_ts=f.number("ended_ts", optional=True),
            exit_code=f.whole("exit_code", optional=True),
            outcome=f.text("outcome", optional=True),
            extra=split(data, _FIELDS),
        )


_FIELDS = frozenset(f.name for f in dataclasses.fields(RunState)) - {"extra"}


_boot: list[str | None] = []  # this process's reading of boot_id(), once


def boot_id() -> str | None:
    """This boot of this machine (Linux's random boot id, read once a process); None where there is none.
    Machines cloned from one image share a hostname, the default fleet host id, but never a boot id: a
    record in the fleet's database (a task's runner, a breaker permit) made on another boot is not judged
    by this machine's process table, where the other machine's pid means nothing."""
    if not _boot:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
                _boot.append(fh.read().strip() or None)
        except OSError:
            _boot.append(None)
    return _boot[0]
