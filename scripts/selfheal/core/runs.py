"""Run records (runs/<run-id>.json): what a running command is, and proof that it is still alive.

A record names the task, the supervising process and the current child (pid plus start time), when it
started, its last heartbeat and its last output. A health check compares those to now to tell a live
run from a stuck one (no output) or a dead one (heartbeat stopped, supervisor gone). The record itself
(`RunState`) and the rule that says whether a recorded process lives are state/runs.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..errors import CorruptStateError, NotAttempted, StateError, StateWriteError, UnsafeStateError
from ..state import layout
from ..state.records import RecordError
from ..state.root import StateRoot, quarantine, read_json, top_level_is, unlink, write_json
from ..state.runs import FINISHED, RUNNING, ProcessRef, RunState, live_process, start_ticks

if TYPE_CHECKING:
    import psutil

    from .process import ProcessIdentity

logger = logging.getLogger(__name__)

__all__ = ["FINISHED", "RUNNING", "Orphan", "OrphanRunning", "RunRecord", "RunState", "list_runs", "new_run_id"]


def new_run_id(task: str | None, now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    prefix = f"{task[:80]}-" if task else ""
    return f"{prefix}{stamp}-{os.getpid()}"


class RunRecord:
    """Keeps one run's record current. Heartbeats are atomic but not fsync'd: losing one to a power cut
    costs nothing, and a heartbeat every few seconds must stay cheap."""

    def __init__(
        self,
        state: StateRoot,
        *,
        run_id: str,
        task: str | None,
        target: str | None,
        argv: list[str],
        heartbeat_s: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        # Imported here: psutil costs 15 ms, and readers of run records (the health check) do not need it.
        from .process import identify  # noqa: PLC0415

        self.state = state
        self.path = state.run_file(run_id)
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self._last_write = float("-inf")
        me = identify(os.getpid())
        self.data = RunState(
            run_id=run_id,
            task=task,
            target=target,
            argv=argv,
            host=socket.gethostname(),
            supervisor=ProcessRef(me.pid, me.create_time, me.start_ticks) if me else ProcessRef(os.getpid()),
            started=utc_iso(clock.time()),
            started_ts=clock.time(),
        )

    def _write(self, *, durable: bool = False) -> None:
        now = self.clock.time()
        self.data.last_heartbeat_ts = now
        self.data.last_heartbeat = utc_iso(now)
        try:
            write_json(self.path, self.data.to_json(), durable=durable)
        except (OSError, StateError) as exc:  # only a record: the run goes on, reported once
            self.state.unrecorded("the run record", exc)
        self._last_write = self.clock.monotonic()

    def start(self) -> None:
        self._write(durable=True)

    def attempt(self, number: int) -> None:
        data = self.data
        data.attempt, data.child, data.phase, data.next_attempt_ts = number, None, "running", None
        self._write()

    def child_started(self, identity: ProcessIdentity | None) -> None:
        self.data.child = ProcessRef(identity.pid, identity.create_time, identity.start_ticks) if identity else None
        self._write()

    def waiting(self, delay_s: float) -> None:
        """Between attempts: no child, no output expected until `next_attempt_ts`."""
        data = self.data
        data.child, data.phase, data.next_attempt_ts = None, "waiting", self.clock.time() + delay_s
        self._write()

    def tick(self, last_output_ts: float | None) -> None:
        if last_output_ts is not None:
            self.data.last_output_ts = last_output_ts
        if self.clock.monotonic() - self._last_write >= self.heartbeat_s:
            self._write()

    def finish(self, outcome: str, exit_code: int | None) -> None:
        data = self.data
        data.status, data.outcome, data.exit_code, data.child = FINISHED, outcome, exit_code, None
        data.ended_ts = self.clock.time()
        self._write(durable=True)


# Parsed run records, per runs/ folder and file name, kept while the file is the same one (inode, size and
# mtime in ns): a record is only ever replaced whole, by a rename, so a changed record is a new file. A run
# lists the records several times (dead runs of its task, a run in progress, orphans), and a long-lived
# runner (`tasks.py run-next --max`, a fleet host) does so for every task; each listing used to parse every
# record kept (keep_finished_runs_days of history), so a runner grew slower with every run it made.
_parsed: dict[str, dict[str, tuple[tuple[int, int, int], RunState | None]]] = {}
_PARSED_FOLDERS = 8
_parsed_lock = threading.Lock()


def _fresh(record: RunState) -> RunState:
    """A copy a caller may change (the cached one stays as the file says)."""
    copy = object.__new__(RunState)  # as dataclasses.replace, without its 20 us of checks per record
    copy.__dict__.update(record.__dict__)
    copy.argv, copy.extra = list(record.argv), dict(record.extra)
    return copy


def list_runs(state: StateRoot, *, running_only: bool = False) -> list[RunState]:
    """Every readable run record (with `running_only`: those still running, without parsing the finished
    ones kept as history, which only their bytes are looked at); unreadable ones (torn, or with a field of
    the wrong kind: logged with the file, key and value) are moved aside and skipped. A record unchanged
    since this process last read it is not read again."""
    folder = state.sub(layout.RUNS)
    out: list[RunState] = []
    try:
        entries = sorted((e for e in os.scandir(folder) if e.name.endswith(".json")), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return out
    previous = _parsed.get(str(folder), {})
    current: dict[str, tuple[tuple[int, int, int], RunState | None]] = {}  # None: seen finished, not parsed
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = previous.get(entry.name)
        if hit is not None and hit[0] == stamp and (hit[1] is not None or running_only):
            current[entry.name] = hit
            if hit[1] is not None and (hit[1].running or not running_only):
                out.append(_fresh(hit[1]))
            continue
        path = Path(entry.path)
        if running_only and top_level_is(path, "status", FINISHED):  # finished, by its bytes: not parsed
            current[entry.name] = (stamp, None)
            continue
        try:
            data = read_json(path)
        except (UnsafeStateError, CorruptStateError, StateWriteError) as exc:  # a link, torn, unreadable to us
            logger.warning("%s; the run record was skipped", exc)
            continue
        except StateError as exc:  # over the size cap: damage (none is written that big), set aside as a bad field is
            with contextlib.suppress(OSError, StateError):
                quarantine(path)
            logger.warning("%s; the run record was set aside", exc)
            continue
        if data is None:
            continue
        try:
            record = RunState.from_json(data, path)
        except RecordError as exc:
            with contextlib.suppress(OSError, StateError):
                quarantine(path)
            logger.warning("%s; the run record was set aside", exc)
            continue
        current[entry.name] = (stamp, record)
        if record.running or not running_only:
            out.append(_fresh(record))
    with _parsed_lock:  # the heartbeat thread lists records too
        _parsed.pop(str(folder), None)
        _parsed[str(folder)] = current  # the newest last; the oldest folder is forgotten first
        while len(_parsed) > _PARSED_FOLDERS:
            del _parsed[next(iter(_parsed))]
    return out


def running_for_task(state: StateRoot, task: str) -> RunState | None:
    for record in list_runs(state, running_only=True):
        if record.task == task and record.running:
            return record
    return None


def close_dead(state: StateRoot, task: str, *, now: float) -> list[str]:
    """Mark the task's records left `running` by a supervisor that died (killed, machine restarted) as
    finished with outcome `crashed`, so nothing mistakes them for live work; return their run ids.
    Only records of this host are judged: a pid means nothing on another machine."""
    closed = []
    host = socket.gethostname()
    for record in list_runs(state, running_only=True):
        if record.task != task or not record.running or not record.supervisor_gone(host):
            continue
        record.status, record.phase, record.outcome, record.child, record.ended_ts = (
            FINISHED,
            FINISHED,
            "crashed",
            None,
            now,
        )
        with contextlib.suppress(OSError, ValueError, StateError):
            write_json(state.run_file(record.run_id), record.to_json(), durable=True)
            closed.append(record.run_id)
    return closed


def prune_finished(state: StateRoot, *, older_than_s: float, now: float) -> int:
    """Delete finished run records that ended more than `older_than_s` ago; return how many."""
    folder = state.sub(layout.RUNS)
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.glob("*.json"):
        try:
            if now - path.lstat().st_mtime < older_than_s:
                continue
            record = read_json(path)
        except (OSError, StateError):
            continue
        if record is not None and record.get("status") != RUNNING:  # only finished ones: no need to check more
            with contextlib.suppress(OSError, StateError):  # a linked runs/ folder: nothing is deleted
                unlink(path)
                removed += 1
    return removed


# -- orphans: commands whose runner died ----------------------------------------------------------------


@dataclass(frozen=True)
class Orphan:
    """A command still running for a run whose runner died (SIGKILL, OOM): nothing supervises it."""

    run_id: str
    pid: int
    cmd: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "pid": self.pid, "cmd": self.cmd}


class OrphanRunning(NotAttempted):
    """An earlier run's command is still running without its runner, and we were told not to stop it.

    `remedy` is how to have it stopped, in the words of whoever turned the stopping off: the setting
    (`setting_remedy`) unless the caller says otherwise (`told`: retry_run.py's --no-kill-orphans, the
    kill_orphans=False a Python caller passed)."""

    def __init__(self, task: str, orphans: list[Orphan], *, remedy: str = "set process.kill_orphans: true") -> None:
        self.task = task
        self.orphans = orphans
        self.remedy = remedy
        what = "; ".join(f"pid {o.pid} ({o.cmd})" for o in orphans)
        super().__init__(
            f"task {task!r} is still running without its runner: {what}, from run {orphans[0].run_id} whose "
            f"runner died. Not started beside it (kill_orphans is off); stop it yourself, or {remedy} "
            "to have it stopped"
        )

    def told(self, remedy: str) -> OrphanRunning:
        """The same refusal, saying `remedy` (the caller's way to have the orphan stopped)."""
        return OrphanRunning(self.task, self.orphans, remedy=remedy)


def setting_remedy(files: tuple[str, ...]) -> str:
    """How to have orphans stopped where the setting turned it off: the settings' last file (`Config.files`,
    the user's config.yaml when there is one) is the one that did."""
    return f"set process.kill_orphans: true in {files[-1] if files else 'config.yaml'}"


def _dead_runs(state: StateRoot, task: str, run_id: str | None, *, any_runner: bool) -> list[RunState]:
    """This host's records of `task` still `running` whose supervisor is gone (or any, with `any_runner`)."""
    host = socket.gethostname()
    out = []
    for record in list_runs(state, running_only=True):
        if record.task != task or not record.running or record.host not in (None, host):
            continue
        if run_id is not None and record.run_id != run_id:
            continue
        if any_runner or record.supervisor_gone(host):
            out.append(record)
    return out


def _orphan_processes(record: RunState) -> list[tuple[psutil.Process, ProcessIdentity]]:
    """The live processes of a dead run: its recorded child (pid and start time), and any process of ours
    whose environment carries the run's SELFHEAL_RUN_ID (a daemon that escaped it, or a child started in
    the instant before the runner recorded it). Each with its identity as read now: they are stopped one
    after another, and one may die with another's tree and its pid go to a stranger before its turn."""
    import psutil  # noqa: PLC0415

    from .process import ProcessIdentity  # noqa: PLC0415

    found: dict[int, tuple[psutil.Process, ProcessIdentity]] = {}
    child = record.child
    if child is not None and child.pid and child.create_time:
        proc = live_process(child.pid, child.create_time, child.start_ticks)
        if proc is not None:
            found[proc.pid] = (proc, ProcessIdentity(child.pid, child.create_time, child.start_ticks))
    run_id = record.run_id
    uid = os.getuid() if hasattr(os, "getuid") else None
    for proc in psutil.process_iter():
        if proc.pid in found or proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if uid is not None and proc.uids().real != uid:
                continue
            if proc.environ().get("SELFHEAL_RUN_ID") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                identity = ProcessIdentity(proc.pid, proc.create_time(), start_ticks(proc.pid))
                if proc.is_running():  # still the process read (psutil: pid and start): so are those ticks
                    found[proc.pid] = (proc, identity)
    return list(found.values())


def stop_orphans(
    state: StateRoot,
    task: str,
    *,
    kill: bool,
    grace_s: float,
    clock: Clock = SYSTEM_CLOCK,
    run_id: str | None = None,
    any_runner: bool = False,
) -> list[Orphan]:
    """Find the commands of `task` (of run `run_id`, if given) still running after their runner died, and
    stop each with its process group and descendants (SIGTERM, SIGKILL after `grace_s`); return them.
    With `kill=False`, raise OrphanRunning (exit 4) naming them instead, and change nothing.
    `any_runner`: the caller holds the task's lock, so whoever ran `run_id` is gone or was this very
    process (a workflow resuming its step in flight): its command is stopped whether or not its runner lives.

    The one place this is decided: retry_run's next run of a task, the task runner (through it) and a
    resumed workflow step all come here."""
    import psutil  # noqa: PLC0415

    from . import process  # noqa: PLC0415

    found: list[tuple[Orphan, list[ProcessIdentity]]] = []
    for record in _dead_runs(state, task, run_id, any_runner=any_runner and run_id is not None):
        live = _orphan_processes(record)
        if live:
            first = live[0][0]
            found.append((Orphan(record.run_id, first.pid, process.describe(first)), [who for _, who in live]))
    if not found:
        return []
    if not kill:
        raise OrphanRunning(task, [orphan for orphan, _ in found])
    for orphan, procs in found:
        logger.warning(
            "task %s: stopping pid %d (%s), left running by run %s whose runner died",
            task,
            orphan.pid,
            orphan.cmd,
            orphan.run_id,
        )
        for who in procs:
            with contextlib.suppress(psutil.Error):  # kill_tree checks the start time before signalling
                process.kill_tree(who, grace_s=grace_s, clock=clock)
    return [orphan for orphan, _ in found]
