"""Running the task tree: `tasks.py run-next`, what a failure escalates to, and stuck detection.

`run_next` claims the first actionable task under the tree's lock (one winner however many runners
start together), runs its command through the retry engine or its plan through the workflow runner,
streams the output into a bounded log, and keeps a heartbeat in the record while it runs. Then it marks
the task END, or escalates the failure as the fourth source document does:

* below `tasks.analyze_at_failures` failures: a failure of the infrastructure (transient, timeout,
  resource, rate_limit) is a NORMAL_CRASH that the next pass retries; any other failure is
  ERROR_FIX_PENDING with a FIX child for the failed step, which holds the task back until it is settled;
* from `analyze_at_failures` on: the failure gets a fix record (`diagnose.py`: rules, and a model asked
  for the root cause) and each problem it names gets its own FIX child (without a record, the last 50
  log lines are read by rules, `analysis.py`);
* a FIX child is reused only while nobody has worked on it (an open state); once it ended or was analysed
  and parked, the next failure gets a new one: a FIX task per failure, as the document does;
* at `tasks.solution_at_failures` (5): one SOL-<task> child holding the analysis's solution replaces the
  FIX children (they are voided), and the task gets `solution_tries` (3) more failures, tracked by the SOL
  task, before REQUIRES_MANUAL with an incident that says how to hand it back. With the SOL step off (0),
  and for FIX tasks themselves, REQUIRES_MANUAL comes at `tasks.manual_at_failures`; a SOL task has
  `solution_tries` tries of its own.

A FIX task with nothing to run is "run" by analysing its failure into a fix record and parking it as
REQUIRES_MANUAL:
the fix is applied by an agent or a person, never by executing text self-heal produced. That settles the
child, so the parent runs again; the thresholds bound how often.

`check_stuck` finds PROCESSING tasks whose runner died (NORMAL_CRASH) or shows no output or heartbeat for
`tasks.stuck_after_s` (killed by pid plus start time, `FIX-<task>-STUCK`, ERROR_FIX_PENDING, `[STUCK]`).
In fleet mode it looks only at this host's runs (a host only judges and kills its own processes); another
host's run that stopped beating is taken back by the lease (`TaskStore.claim`).

A run's outcome is recorded only while the task is still that run's (same runner, same run id): a late
finish, from a runner whose lease ran out and whose task runs again elsewhere, is refused and recorded (a
main_logs row, a `superseded` ledger event). In fleet mode an outcome that meets the database down waits
for it (`tasks.finish_wait_s`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import signal
import socket
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..core.config import Config
from ..core.ledger import Ledger
from ..core.process import OutputSink, ProcessIdentity, StopFlag, Tee, kill_tree
from ..core.redact import LineRedactor, Redactor
from ..core.runner import run_with_retry
from ..core.runs import OrphanRunning, close_dead, list_runs, new_run_id, setting_remedy, stop_orphans
from ..durable.checkpoint import TASK_DEAD_LETTER, TASK_FAILED, CheckpointUnreadable
from ..durable.incident import Incident, new_incident_id, notify, write_incident
from ..durable.workflow import WorkflowRunner, load_plan, status
from ..errors import (
    EXIT_FAILED,
    EXIT_NOT_ATTEMPTED,
    EXIT_OK,
    FleetUnavailable,
    Interrupted,
    LockBusy,
    NotAttempted,
    SelfHealError,
    StateError,
    UnsafeStateError,
)
from ..state.fixes import FixRecord, normalize
from ..state.root import iter_lines, open_append, open_read, read_bytes, write_all, write_bytes_atomic, write_json
from ..state.runs import boot_id, recorded_process_gone
from . import analysis
from .tree import (
    ACTIONABLE_STATES,
    END,
    ERROR_FIX_PENDING,
    NORMAL_CRASH,
    OPEN_STATES,
    PROCESSING,
    REQUIRES_MANUAL,
    VOID,
    RunSpec,
    Task,
    TaskError,
    TaskStore,
    TaskTree,
    operand,
    runner_identity,
    same_runner,
)

logger = logging.getLogger(__name__)
SCRIPTS = Path(__file__).resolve().parents[2]
TASKS_SCRIPT = SCRIPTS / "tasks.py"
# A FIX child in one of these still stands for its problem: the same failure again does not make another.
# Failures of what the task runs on, not of the task: the next pass retries them without a FIX task.
INFRA_CLASSES = frozenset({"transient", "timeout", "resource", "rate_limit"})
# The document's main_logs.run_status for each outcome of a run.
_RUN_STATUS = {"succeeded": "success", "not_attempted": "skipped", "interrupted": "skipped"}
# An interrupted run is put back uncounted, but this many in a row count as a failure: a task that always
# outlives what runs run-next (cron's `timeout 300 tasks.py run-next`) was retried for ever, never escalated,
# and claimed first again on each pass while the tasks behind it waited.
INTERRUPTIONS_COUNTED = 3
_INTERRUPTED = "interrupted: "  # how an interrupted run's move back to NORMAL_CRASH starts its reason
_LINE_MAX = 65536  # a partial line is held back (so a secret split across reads is still masked) up to this
_FLUSH_S = 0.2  # a task log is written at most this often (seconds), by whole lines
_FLUSH_BYTES = 1 << 20  # ...or when this much is buffered and the bound keeps all of it


# -- the bounded log -----------------------------------------------------------------------------------


class BoundedLog:
    """A task's output log (`tasks/<name>.log`): secrets masked line by line, and bounded as the source
    document bounds run_content: once it passes `max_chars` characters, only the last `keep_chars` stay.

    Characters are counted on the text as written (an undecodable byte counts as one).

    Output is buffered and written by whole lines at most every `flush_s` seconds (a background thread
    writes what a quiet command left in the buffer), so a command printing gigabytes costs one masking
    pass and one write per flush, not per read. Output that the bound would cut anyway (more than four
    bytes per character of `max_chars` behind the newest) is dropped before it is masked or written.

    More than one process may write the same log (run-next's runner and `tasks.py beat --message`), and the
    trim puts a new file in the old one's place: each write and each trim holds an exclusive flock on the
    file, and a writer that finds the path holding another file than its own (trimmed by the other process)
    opens the new one before it writes, so no line goes to a file no longer in its place.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_chars: int,
        keep_chars: int,
        redactor: Redactor | None = None,
        clock: Clock = SYSTEM_CLOCK,
        flush_s: float = _FLUSH_S,
    ) -> None:
        if keep_chars >= max_chars:
            raise ValueError("keep_chars must be smaller than max_chars")
        self.path = path
        self.max_chars = max_chars
        self.keep_chars = keep_chars
        self.redactor = redactor
        # Whole lines at a time, so a PEM key's body lines are masked even when its lines arrive apart.
        self._lines = LineRedactor(redactor)
        self.clock = clock
        self.flush_s = flush_s
        self.last_output_ts: float | None = None
        self.last_output_mono: float | None = None  # the same moment on the monotonic clock (steps do not move it)
        self.trims = 0
        self._buf = bytearray()  # output not written yet; it may end in a partial line
        self._cut = False  # the front of the buffer was dropped: what the file holds is cut away too
        # Bytes of output that surely hold more than max_chars characters (a character is at most 4 bytes).
        self._cap = 4 * (max_chars + 1) + _LINE_MAX
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None
        self._fd = self._open()
        self.chars = 0
        self._size = -1  # the file's size in bytes after our last write: another size means another writer wrote
        self._unsafe: str | None = None  # why lines were dropped: a link, FIFO or folder planted at the path mid-run
        with self._exclusive():  # counts what the file holds
            if self.chars > max_chars:
                self._replace(_tail_text(path, 4 * keep_chars))  # only the last keep_chars can stay: never read whole

    def _open(self) -> int:
        return open_append(self.path)  # never through a planted link (UnsafeStateError)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """Hold the flock of the file now at the log's path (the one our fd is on); `chars` counted again if
        another process wrote it since our last write. Yields False when the path holds what cannot be opened as
        the log (a link, FIFO or folder planted while the task runs): the caller drops its lines (said once), and
        the run goes on to record its outcome; the task's next run refuses the path."""
        ours = True
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if not self._replaced():
                break
            # Trimmed by another writer (a new file in its place): what we write goes into that one.
            try:
                fd = self._open()
            except StateError as exc:  # a link, FIFO or folder planted there: not ours to write (nor theirs)
                ours = False
                if self._unsafe is None:
                    logger.warning("task log lines dropped: %s", exc)
                self._unsafe = str(exc)
                break
            os.close(self._fd)  # releases the flock
            self._fd = fd
            self._size = -1
        try:
            size = os.fstat(self._fd).st_size
            if ours and size != self._size:
                # A character is at most 4 bytes: a file bigger than that is over the limit, and is not read whole.
                self.chars = size if size > 4 * self.max_chars else len(_tail_text(self.path, size))
                self._size = size
            yield ours
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _replaced(self) -> bool:
        """Whether the log's path now holds another file than our fd (a missing one is left as it is)."""
        try:
            there = os.lstat(self.path)
        except FileNotFoundError:
            return False
        ours = os.fstat(self._fd)
        return (there.st_ino, there.st_dev) != (ours.st_ino, ours.st_dev)

    def write(self, data: bytes) -> int:
        """Command output (an OutputSink for run_command): buffered, written by the flusher."""
        with self._lock:
            self.last_output_ts = self.clock.time()
            self.last_output_mono = self.clock.monotonic()
            self._buf += data
            if len(self._buf) > 2 * self._cap:
                # Only the newest output can survive the bound: drop the rest unread, at a line start.
                start = len(self._buf) - self._cap
                newline = self._buf.find(b"\n", start, start + _LINE_MAX)
                del self._buf[: newline + 1 if newline >= 0 else start]
                self._cut = True
            elif len(self._buf) >= _FLUSH_BYTES and self._cap > 2 * _FLUSH_BYTES:
                self._write_lines()  # a log bound far above the buffer: everything is kept, write as it comes
            if self._flusher is None and not self._closed:
                self._flusher = threading.Thread(target=self._flush_loop, name="selfheal-log-flush", daemon=True)
                self._flusher.start()
        return len(data)

    def flush(self) -> None:
        """Called after every chunk by the output pump; the flusher writes, at most every `flush_s`."""

    def sync(self) -> None:
        """Write the buffered whole lines now (a partial last line waits for its end)."""
        with self._lock:
            self._write_lines()

    def note(self, line: str) -> None:
        """A line of our own (run started, run ended): not output, so not proof of activity."""
        with self._lock:
            self._write_all()
            self._append(line.rstrip("\n").encode("utf-8", "surrogateescape") + b"\n")

    def end_line(self) -> None:
        """Write everything said so far out now (a partial last line with a newline)."""
        with self._lock:
            self._write_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._write_all()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._wake.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5)

    def _flush_loop(self) -> None:
        while not self._wake.wait(self.flush_s):
            with self._lock:
                if self._closed:
                    return
                try:
                    self._write_lines()
                except (OSError, StateError) as exc:  # a full disk: those lines miss the log; it goes on with the next
                    logger.warning("could not write the task log %s: %s", self.path, exc)

    def _write_all(self) -> None:
        if self._buf:
            if not self._buf.endswith(b"\n"):
                self._buf += b"\n"
            self._write_lines()

    def _write_lines(self) -> None:
        """Write the buffer up to its last newline (all of it once a line passes _LINE_MAX)."""
        cut = self._buf.rfind(b"\n") + 1
        if cut == 0:
            if len(self._buf) < _LINE_MAX:
                return  # held back, so a secret split across reads is still masked whole
            cut = len(self._buf)
        raw = bytes(self._buf[:cut])
        del self._buf[:cut]
        self._append(raw)

    def _append(self, raw: bytes) -> None:
        if len(raw) > self._cap:
            start = len(raw) - self._cap
            newline = raw.find(b"\n", start, start + _LINE_MAX)
            raw = raw[newline + 1 if newline >= 0 else start :]
            self._cut = True
        text = raw.decode("utf-8", "surrogateescape")
        text = self._lines.lines(text)  # whole lines: a PEM key's lines are masked even when they arrive apart
        with self._exclusive() as ours:
            if not ours:
                return
            if self._cut or self.chars + len(text) > self.max_chars:
                # Past the bound: the file becomes its last keep_chars, written whole (one trim per flush).
                old = "" if self._cut else read_bytes(self.path).decode("utf-8", "surrogateescape")
                self._cut = False
                self._replace(old + text)
                return
            data = text.encode("utf-8", "surrogateescape")
            write_all(self._fd, data, self.path, "append to")
            self.chars += len(text)
            self._size += len(data)

    def _replace(self, text: str) -> None:
        """Make the file its last keep_chars (under _exclusive: another writer waits, then opens the new file)."""
        marker = f"[self-heal: earlier output cut; this log keeps its last {self.keep_chars} characters]\n"
        body = text[-(self.keep_chars - len(marker)) :]
        newline = body.find("\n", 0, 400)  # start on a whole line when one starts near the cut
        if newline >= 0:
            body = body[newline + 1 :]
        kept = marker + body
        data = kept.encode("utf-8", "surrogateescape")
        write_bytes_atomic(self.path, data, durable=False)
        fd = self._open()  # should it fail, our fd stays a valid one (on the old file) and the next lock says so
        with contextlib.suppress(OSError):
            os.close(self._fd)  # releases the flock: a writer waiting on the old file finds it replaced
        self._fd = fd
        self.chars = len(kept)
        self._size = len(data)  # another writer may append before our next lock: that write is counted then
        self.trims += 1


def _tail_text(path: Path, max_bytes: int) -> str:
    """The last `max_bytes` bytes of a file as text (undecodable bytes kept as they are)."""
    with os.fdopen(open_read(path), "rb") as fh:  # never through a planted link (UnsafeStateError)
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - max_bytes))
        return fh.read(max_bytes).decode("utf-8", "surrogateescape")


class _Tee(Tee):
    """A task's output: into its bounded log and, with --echo, to stderr. run_command copies it to each as to a
    sink of its own (core.process.Tee): an echo written here in turn made a reader of stderr that stopped
    reading hold up the log, the timeout and a stop signal, and one that paused lose the rest of the output."""

    def __init__(self, log: BoundedLog, echo: OutputSink | None) -> None:
        super().__init__(log, echo)
        self.log = log


NOTE_MARK = "=== "
TAIL_LINE_BYTES = 64 * 1024  # a longer line of a task's log is left out of its tail


def tail_lines(path: Path, count: int = analysis.LOG_LINES, *, last_run: bool = False) -> list[str]:
    """The last `count` lines a task's commands wrote (only in its last run, if asked), without the log's
    own run markers. Read a line at a time: a line over TAIL_LINE_BYTES is shown as a note, never held whole."""
    out: deque[str] = deque(maxlen=max(count, 0))
    try:
        with os.fdopen(open_read(path), "rb") as fh:  # never through a planted link (UnsafeStateError)
            for raw in iter_lines(fh, TAIL_LINE_BYTES):
                if raw is None:
                    out.append(f"[self-heal: a line over {TAIL_LINE_BYTES} bytes left out]")
                    continue
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith(NOTE_MARK) and line.endswith(" ==="):
                    if last_run and " run " in line and " of " in line:
                        out.clear()
                    continue
                out.append(line)
    except FileNotFoundError:
        return []
    return list(out)


# -- the heartbeat -------------------------------------------------------------------------------------


class LoopStop(StopFlag):
    """run-next's own stop flag, set by the signals sent to it, for a loop of runs (`run-next --max N`).

    Each run stops on a flag of its own (`for_run`), which this one sets too. A run's heartbeat sets that one
    alone when the task stops being the run's (a person voided or ended it, self-heal took it back): that
    stops the one run and leaves this flag unset, so a person's change does not end the loop as a signal to
    run-next does."""

    def __init__(self) -> None:
        super().__init__()
        self._runs: list[StopFlag] = []

    def set(self, signum: int) -> None:
        super().set(signum)
        for run in list(self._runs):
            run.set(signum)

    @contextlib.contextmanager
    def for_run(self) -> Iterator[StopFlag]:
        run = StopFlag()
        self._runs.append(run)
        try:
            if self.signum is not None:  # a signal that came before the run began
                run.set(self.signum)
            yield run
        finally:
            self._runs.remove(run)
            run.close()


@contextlib.contextmanager
def _run_stop(given: StopFlag | None) -> Iterator[StopFlag]:
    """The stop flag of one run: its own, following a LoopStop; else the flag given (shared with the caller,
    whom a lost task then stops too), or one of its own."""
    if isinstance(given, LoopStop):
        with given.for_run() as run:
            yield run
    elif given is not None:
        yield given
    else:
        own = StopFlag()
        try:
            yield own
        finally:
            own.close()


class _Heartbeat:
    """Keeps `heartbeat_ts` (the runner lives) and `activity_ts` (the task works) current in the record.

    If the record stops being this runner's (voided by a person, taken over as stuck), it sets the run's stop
    flag so the command is stopped instead of running on unobserved.

    `activity_ts` is written as now minus how long the command has been quiet on the monotonic clock: when
    the wall clock steps (NTP, `date -s`, a laptop or VM resumed after hours), the stamp moves with it, so a
    quiet healthy run is not judged hours silent after a step forward, nor a hung one fresh after a step back.
    """

    def __init__(self, store: TaskStore, task: Task, runner: dict[str, Any], log: BoundedLog, stop: StopFlag) -> None:
        self.store = store
        self.name = task.name
        self.started = store.clock.monotonic()  # the run began (claimed) about now
        self.runner = runner
        self.log = log
        self.stop = stop
        self.interval = store.config.process.heartbeat_s
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"selfheal-heartbeat-{task.name}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=35)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def _waiting(self) -> bool:
        """In a retry wait: no output is expected, and that is not being stuck."""
        for record in list_runs(self.store.state, running_only=True):
            if record.task == self.name and record.running:
                return record.phase == "waiting"
        return False

    def beat(self) -> None:
        now = self.store.clock.time()
        quiet = self.store.clock.monotonic() - max(self.started, self.log.last_output_mono or self.started)
        activity = now - max(0.0, quiet)
        if self._waiting():
            activity = now
        try:
            mine = self.store.touch_running(self.name, self.runner, heartbeat_ts=now, activity_ts=activity)
        except (LockBusy, StateError, OSError):
            return  # a missed heartbeat is harmless; the next one retries
        if not mine:
            self.lost = True
            self.stop.set(signal.SIGTERM)
            self._done.set()


# -- results -------------------------------------------------------------------------------------------


@dataclass
class Failed:
    """Why a run failed, in the terms escalation needs."""

    error_class: str | None
    reason: str
    step: str | None = None
    exit_code: int | None = None
    needs_person: bool = False  # skip the thresholds: REQUIRES_MANUAL now (dead-letter, unreadable checkpoint)
    crash: bool = False  # the runner itself died: a system failure, retried without a FIX task
    incident: str | None = None  # an incident the workflow runner already wrote


@dataclass
class Escalation:
    state: str
    fix_tasks: list[str] = field(default_factory=list)
    incident: Incident | None = None
    incident_path: Path | None = None
    analysis: str | None = None
    voided: list[str] = field(default_factory=list)  # FIX tasks a SOL task replaced


@dataclass
class TaskRun:
    """What `run-next` did, as `tasks.py run-next --json` prints it."""

    task: str | None
    outcome: str  # nothing | succeeded | failed | analysed | not_attempted | interrupted | superseded
    message: str
    exec_state: str | None = None
    error_class: str | None = None
    exit_code: int | None = None
    retry_count: int = 0
    execution_count: int = 0
    failed_step: str | None = None
    fix_tasks: list[str] = field(default_factory=list)
    incident: str | None = None
    log: str | None = None
    duration_s: float = 0.0
    stuck: list[dict[str, Any]] = field(default_factory=list)
    fix_record: str | None = None
    verified_fixes: list[str] = field(default_factory=list)
    by_person: bool = False  # superseded: a person voided, ended or removed the task while it ran

    @property
    def exit_status(self) -> int:
        if self.outcome in ("nothing", "succeeded", "analysed"):
            return EXIT_OK
        if self.outcome == "superseded" and self.by_person:
            return EXIT_OK  # a person's deliberate change is no failure of the run; another runner's take-over is
        return EXIT_NOT_ATTEMPTED if self.outcome == "not_attempted" else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.exit_status == EXIT_OK, **vars(self), "duration_s": round(self.duration_s, 3)}


# -- escalation ----------------------------------------------------------------------------------------


def fix_name(parent: str, hint: str) -> str:
    """`FIX-<parent>-<hint>`, the parent's name shortened if the whole would pass 128 characters."""
    hint = analysis_safe(hint)[:40]
    room = 128 - len("FIX--") - len(hint)
    return f"FIX-{parent[:room]}-{hint}"


def analysis_safe(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("._-")
    return out or "step"


def _ensure_fix_child(
    tree: TaskTree,
    parent: Task,
    *,
    key: str,
    hint: str,
    title: str,
    suggestion: str,
    error: str | None,
    error_class: str | None,
    step: str | None,
    kind: str,
    fix_record: str | None = None,
) -> tuple[Task, bool]:
    """The open FIX child already tracking this problem, updated; else a new one (one parked or ended is not reused).

    A problem is the same when its key (the failed step, "stuck") or the shape of its error line matches.
    Returns (task, created).
    """
    shape = analysis.signature(title)
    for child in tree.children(parent.name):
        # Only a child nobody has worked on yet tracks the problem; once it ended or was analysed and
        # parked, the next failure is a new attempt at the fix and gets its own FIX task (the document's
        # "a FIX task per failure").
        if child.type != "fix" or child.exec_state not in OPEN_STATES:
            continue
        source = child.source or {}
        if source.get("key") == key or source.get("signature") == shape:
            tree.update(child.name, last_error=error, last_error_class=error_class, by="escalation: seen again")
            return child, False
    child = Task(
        name=tree.unique_name(fix_name(parent.name, hint)),
        type="fix",
        priority=parent.priority,
        parent=parent.name,
        display_name=f"Fix {parent.title}: {title}"[:200],
        description=f"{parent.name} failed{f' at step {step}' if step else ''} ({error_class or 'unknown'}): {title}",
        fix_suggestion=suggestion,
        success_criteria=f"{parent.name} runs{f' step {step}' if step else ''} again without this error",
        last_error=error,
        last_error_class=error_class,
        failed_step=step,
        source={"task": parent.name, "step": step, "key": key, "kind": kind, "signature": shape},
        fix_record=fix_record,
    )
    tree.add(child, by="escalation")
    return child, True


def escalate(
    tree: TaskTree,
    task: Task,
    failed: Failed,
    *,
    store: TaskStore,
    redactor: Redactor,
    log_tail: list[str],
    run_tail: list[str] | None = None,
    reason_prefix: str = "",
    diagnosis: FixRecord | None = None,
) -> Escalation:
    """Count one failure of `task` (PROCESSING) and move it where the thresholds say.

    `log_tail` is the end of the task's log (what analysis reads); `run_tail` the output of the failed run
    alone (what the record keeps as last_error), by default the same. `diagnosis`, the fix record self-heal
    made for this failure (rules, or a model at the threshold), supplies the analysis and the problems;
    without one, the rule-based reading of the log tail does.
    """
    run_tail = log_tail if run_tail is None else run_tail
    settings = store.config.tasks
    task.retry_count += 1
    failures = task.retry_count
    tail = "\n".join(run_tail[-20:])
    error = redactor.text(f"{failed.reason}\n{tail}".strip())[-settings.last_error_chars :]
    task.last_error, task.last_error_class, task.failed_step = error, failed.error_class, failed.step
    task.last_result = f"failed ({failed.error_class or 'unknown'}): {redactor.text(failed.reason)[:300]}"
    why = reason_prefix + f"failure {failures} ({failed.error_class or 'unknown'}): {redactor.text(failed.reason)}"

    def analysed() -> list[tuple[str, str, str]]:
        """(key, title, suggestion) per problem found, with the task's analysis and suggestion filled in."""
        if diagnosis is not None:
            steps = "\n".join(f"{i}. {s}" for i, s in enumerate(diagnosis.fix_steps, 1))
            problems = diagnosis.problems or [diagnosis.root_cause]
            task.analysis = redactor.text(
                f"{diagnosis.root_cause}\n(fix record {diagnosis.id}, from {diagnosis.source}, "
                f"{diagnosis.review.get('verdict')})"
                + ("".join(f"\n- {p}" for p in problems) if len(problems) > 1 else "")
            )
            task.fix_suggestion, task.fix_record = steps, diagnosis.id
            return [(f"problem:{normalize(p)}", p, steps) for p in problems]
        found = analysis.analyze(
            log_tail, error_class=failed.error_class, reason=failed.reason, failures=failures, step=failed.step
        )
        task.analysis = redactor.text(found.summary)
        task.fix_suggestion = found.problems[0].suggestion
        return [(f"problem:{p.signature}", p.title, p.suggestion) for p in found.problems]

    if failed.needs_person or failures >= needs_person_at(task, store.config):
        if failures >= settings.analyze_at_failures:
            analysed()
        tree.transition(task.name, REQUIRES_MANUAL, why, by="escalation")
        incident = _incident(task, failed, store, task.analysis, tree)
        if failed.incident:
            incident.context["workflow_incident"] = failed.incident
        path = write_incident(store.state, incident)
        task.incident = incident.id
        return Escalation(REQUIRES_MANUAL, incident=incident, incident_path=path, analysis=task.analysis)

    if task.type != "fix" and settings.solution_at_failures and failures >= settings.solution_at_failures:
        analysed()
        return _solution(tree, task, failed, error=error, why=why)

    made: list[str] = []
    if failures >= settings.analyze_at_failures:
        problems = analysed()
        holders = [
            c
            for c in tree.children(task.name)
            if diagnosis is not None
            and c.type == "fix"
            and c.exec_state in OPEN_STATES
            and c.fix_record == diagnosis.id
        ]
        if holders and len(problems) == 1:
            # A FIX task already holds this very fix record (one problem): it is tracked, not new.
            tree.update(holders[0].name, last_error=error, last_error_class=failed.error_class, by="escalation")
            problems = []
        if task.type != "fix":
            for key, title, suggestion in problems:
                child, created = _ensure_fix_child(
                    tree,
                    task,
                    key=key,
                    hint=f"A{failures}",
                    title=title[:200],
                    suggestion=suggestion,
                    error=redactor.text(title),
                    error_class=failed.error_class,
                    step=failed.step,
                    kind="analysis",
                    fix_record=diagnosis.id if diagnosis else None,
                )
                if created:
                    made.append(child.name)
        state = ERROR_FIX_PENDING if task.type != "fix" else NORMAL_CRASH
        tree.transition(task.name, state, why, by="escalation")
        return Escalation(state, made, analysis=task.analysis)

    if task.type == "fix" or failed.crash or failed.error_class in INFRA_CLASSES:
        tree.transition(task.name, NORMAL_CRASH, why, by="escalation")
        return Escalation(NORMAL_CRASH)

    step = failed.step or "command"
    errors = analysis.error_lines(run_tail)
    last_line = errors[-1].strip() if errors else next((ln.strip() for ln in reversed(run_tail) if ln.strip()), "")
    last_line = redactor.text(last_line or failed.reason)
    child, created = _ensure_fix_child(
        tree,
        task,
        key=f"step:{step}",
        hint=step,
        title=last_line[:200],
        suggestion=analysis.hint_for(error, failed.error_class),
        error=error,
        error_class=failed.error_class,
        step=failed.step,
        kind="step",
    )
    tree.transition(task.name, ERROR_FIX_PENDING, why, by="escalation")
    return Escalation(ERROR_FIX_PENDING, [child.name] if created else [])


def needs_person_at(task: Task, config: Config) -> int:
    """The failure count at which `task` goes to REQUIRES_MANUAL: for a task that gets a SOL task, its
    `solution_tries` after the SOL; for a SOL task, its `solution_tries`; else `manual_at_failures`."""
    settings = config.tasks
    if task.type == "fix":
        solution = (task.source or {}).get("kind") == "solution"
        return settings.solution_tries if solution and settings.solution_at_failures else settings.manual_at_failures
    if settings.solution_at_failures:
        return settings.solution_at_failures + settings.solution_tries
    return settings.manual_at_failures


def _solution(tree: TaskTree, task: Task, failed: Failed, *, error: str, why: str) -> Escalation:
    """The fourth document's last step before a person: one SOL task with the solution from the analysis,
    the open FIX tasks voided (it replaces them), and a few more tries of the task after it."""
    existing = next(
        (c for c in tree.children(task.name) if (c.source or {}).get("kind") == "solution" and c.exec_state != VOID),
        None,
    )
    if existing is not None:  # a try after the SOL task: tracked there, no new tasks
        tree.update(existing.name, last_error=error, last_error_class=failed.error_class, by="escalation: seen again")
        tree.transition(task.name, ERROR_FIX_PENDING, why, by="escalation")
        return Escalation(ERROR_FIX_PENDING, analysis=task.analysis)
    voided: list[str] = []
    for child in tree.children(task.name):
        if child.type == "fix" and child.exec_state not in (END, VOID):
            voided += [t.name for t in tree.void(child.name, "replaced by a SOL task", by="escalation")]
    replaced = f" (voided: {', '.join(voided)})" if voided else ""
    sol = Task(
        name=tree.unique_name(f"SOL-{task.name}"),
        type="fix",
        priority=task.priority,
        parent=task.name,
        display_name=f"Solve {task.title} after {task.retry_count} failures"[:200],
        description=(
            f"{task.name} failed {task.retry_count} times ({failed.error_class or 'unknown'}); the FIX tasks so far "
            f"did not hold{replaced}. Root cause: {task.analysis or '-'}"
        )[:4000],
        fix_suggestion=task.fix_suggestion,
        success_criteria=f"{task.name} runs through without this error",
        last_error=error,
        last_error_class=failed.error_class,
        failed_step=failed.step,
        source={"task": task.name, "step": failed.step, "key": "solution", "kind": "solution", "voided": voided},
        fix_record=task.fix_record,
    )
    tree.add(sol, by="escalation")
    tree.transition(task.name, ERROR_FIX_PENDING, why + f"; {sol.name} replaces its FIX tasks", by="escalation")
    return Escalation(ERROR_FIX_PENDING, [sol.name], analysis=task.analysis, voided=voided)


def _run_next_argv(name: str) -> list[str]:
    """`run-next --task NAME`'s arguments: a name that starts with a dash as `--task=NAME`, or argparse would
    take it for an option."""
    return ["run-next", f"--task={name}"] if name.startswith("-") else ["run-next", "--task", name]


def run_next_command(name: str) -> str:
    """`tasks.py run-next --task NAME` as a message names it (cron mails it; a person types it)."""
    return shlex.join(["tasks.py", *_run_next_argv(name)])


def resume_command(name: str, first: Iterable[str] = ()) -> str:
    """The command that hands a parked task back and runs it: a name that starts with a dash goes after `--`
    (and as `--task=NAME`), or argparse would take it for an option. `first`: children the task waits for
    (FIX-<task>-STUCK), each run before it, or its own run-next would only say it waits for them (exit 4)."""
    script = str(TASKS_SCRIPT)
    dash = name.startswith("-")
    children = [shlex.join(["python3", script, *_run_next_argv(child)]) for child in first]
    hand_back = shlex.join(["python3", script, "mark", *(["--"] if dash else []), name, "error"])
    run = shlex.join(["python3", script, *_run_next_argv(name)])
    return " && ".join([*children, hand_back, run])


def _runnable_now(tree: TaskTree, waiting: list[Task]) -> list[str]:
    """Of the children a task waits for, those `run-next --task` runs now (not running, nothing of their own
    to wait for, something to run or a FIX task to analyse), by name."""
    return [
        c.name for c in waiting if c.exec_state in ACTIONABLE_STATES and runnable(c) and not tree.waiting_on(c.name)
    ]


def _incident(task: Task, failed: Failed, store: TaskStore, summary: str | None, tree: TaskTree) -> Incident:
    now = store.clock.time()
    fixes = [c.name for c in tree.children(task.name) if c.type == "fix" and c.exec_state != "VOID"]
    first = _runnable_now(tree, tree.waiting_on(task.name))  # a stuck task's FIX-<task>-STUCK, made just now
    reason = failed.reason.strip().splitlines()[0] if failed.reason.strip() else "failed"
    return Incident(
        id=new_incident_id(task.name, now),
        task=task.name,
        kind="requires_manual",
        summary=(
            f"self-heal: task {task.name} needs a person after {task.retry_count} failure(s)"
            f" ({failed.error_class or 'unknown'}): {reason}"
        )[:400],
        error=task.last_error,
        error_class=failed.error_class,
        failed_step=failed.step,
        last_completed_step=None,
        resume_command=resume_command(task.name, first),
        context={
            "retry_count": task.retry_count,
            "execution_count": task.execution_count,
            "analysis": summary,
            "fix_tasks": fixes,
            "log": str(store.log_path(task.name)),
        },
        plan=task.run.plan if task.run is not None else None,
        created=utc_iso(now),
    )


# -- run-next ------------------------------------------------------------------------------------------


def runnable(task: Task) -> bool:
    """What run-next can do something with: a task that runs something, or a FIX task to analyse."""
    return task.run is not None or task.type == "fix"


def why_not(tree: TaskTree, task: Task) -> str | None:
    """Why `task` cannot run now, or None if it can."""
    if task.exec_state not in ACTIONABLE_STATES:
        # A parked FIX task holds a suggestion a person applies, then ends; another goes back to be run again.
        manual = (
            f"it holds a suggested fix for a person; once it is applied, `tasks.py mark {operand(task.name)} end`"
            if task.type == "fix"
            else "it needs a person; once the cause is fixed, hand it back with "
            f"`tasks.py mark {operand(task.name)} error`"
        )
        hint = {PROCESSING: "it is running", END: "it has ended", VOID: "it is void", REQUIRES_MANUAL: manual}[
            task.exec_state
        ]
        return f"task {task.name!r} is {task.exec_state}: {hint}"
    waiting = tree.waiting_on(task.name)
    if waiting:
        names = ", ".join(f"{c.name} ({c.exec_state})" for c in waiting[:5])
        ready = _runnable_now(tree, waiting)
        if not ready:
            return f"task {task.name!r} waits for its children: {names}; try later"
        commands = ", ".join(f"`{run_next_command(c)}`" for c in ready[:5])
        them = "it" if len(ready) == 1 else "them"
        return f"task {task.name!r} waits for its children: {names}; run {them} first: {commands}"
    if not runnable(task):
        return (
            f"task {task.name!r} has nothing to run (no command or plan): an agent does it and records it "
            "with `tasks.py mark`"
        )
    return None


class Diagnoser(Protocol):
    """What the runner asks of the healing layer, which sits above it (`selfheal.heal.task_runner` wires one in).

    The runner never imports the healer: a runner without one escalates by its own rules only."""

    def diagnose_run(
        self, task: Task, *, error: str, error_class: str | None, step: str | None, log_tail: list[str]
    ) -> FixRecord | None:
        """A fix record for a run of `task` that just failed."""

    def diagnose_task(self, name: str) -> FixRecord | None:
        """A fix record for the task `name` from everything recorded about it."""

    def verify_applied(self, name: str) -> list[str]:
        """Fix records applied to `name` that its successful run now verifies."""


class TaskRunner:
    """Claims and runs tasks of one store; one instance per process is enough."""

    def __init__(
        self,
        store: TaskStore,
        *,
        stop: StopFlag | None = None,
        echo: OutputSink | None = None,
        ledger: Ledger | None = None,
        diagnoser: Diagnoser | None = None,
    ) -> None:
        self.store = store
        self.config = store.config
        self.clock = store.clock
        self.stop = stop
        self.echo = echo
        self.ledger = ledger or Ledger(store.state, store.config, clock=store.clock)
        self.redactor = self.ledger.redactor
        self.diagnoser = diagnoser
        self.not_attempted: set[str] = set()  # tasks this process could not run: it does not claim them again

    def run_next(self, *, types: Iterable[str] | None = None, only: str | None = None) -> TaskRun:
        """Claim the next actionable task (or `only` that one) and run it to an outcome.

        Once the stop flag is set (a signal to run-next, before this claim or between two runs of a `--max`
        loop), nothing is claimed: the outcome is `interrupted` with no task (exit 3, as a signal during a run
        gives). A run claimed then would only be interrupted at once, one more interrupted run in the task's
        history, counted toward its "interrupted N runs in a row"."""
        runner = runner_identity(self.store.host)
        keep_days = self.config.tasks.archive_after_days

        def stopped() -> TaskRun | None:
            signum = self.stop.signum if self.stop is not None else None
            if signum is None:
                return None
            what = "a task" if only is None else f"task {only!r}"
            return TaskRun(
                None, "interrupted", f"run-next {Interrupted(signum)} before claiming {what}; nothing was claimed"
            )

        if only is not None:
            with self.store.transaction() as tree:
                task = tree.get(only)
                problem = why_not(tree, task)
                if problem is not None:
                    if task.exec_state == PROCESSING:
                        raise NotAttempted(problem + "; try later")
                    if tree.waiting_on(task.name):
                        raise NotAttempted(problem)  # it says which child to run first, or to try later
                    raise TaskError(problem)
                halted = stopped()  # under the tree's write lock, right before the claim
                if halted is not None:
                    return halted
                now = self.clock.time()
                # started_ts and the lease's heartbeat: the database's clock in fleet mode (TaskTree.transition)
                tree.transition(task.name, PROCESSING, "claimed by run-next", by=f"run-next pid {runner['pid']}")
                task.runner = runner
                task.execution_count += 1
                task.run_id = new_run_id(task.name[:60], now)
                requeued, task.requeued = task.requeued, False
        else:
            if keep_days > 0:
                self.store.archive_if_due(older_than_s=keep_days * 86400)
            tag = new_run_id(None, self.clock.time())  # the run is <name>-<stamp>-<pid>
            # Right before the claim, past anything that waits (the archive's write lock): a signal that came
            # during the claim statement itself still stops the run it claims, at once.
            halted = stopped()
            if halted is not None:
                return halted
            claim = self.store.claim(types, runner, tag, avoid=self.not_attempted)
            for old, had in self.store.taken_back:
                self.ledger.record(
                    "lease",
                    task=old.name,
                    status="taken_back",
                    reason=old.last_result,
                    from_host=had,
                    run_id=old.run_id,
                )
            if claim is None:
                what = "/".join(types) if types else "any"
                now = self.clock.time()
                running = [
                    (t.name, now - max(t.activity_ts or 0.0, t.started_ts or 0.0)) for t in self.store.processing()
                ]
                self._record_pass(running, f"no actionable task ({what} type)")
                return TaskRun(None, "nothing", f"no actionable task ({what} type)")
            task, requeued = claim
            now = task.started_ts or self.clock.time()
        claimed = task
        try:
            result = self._run_claimed(claimed, runner, requeued, now)
        except Exception as exc:
            # Running it or recording the outcome failed in self-heal itself (a full disk, a bug): never leave
            # the task PROCESSING under a runner that is about to exit; park it as a crash, then report. A path
            # of its own that is unsafe (a link or FIFO planted at its log) fails the same way on every pass:
            # it waits for a person, so the tasks behind it run meanwhile (a shared file's problem, as the
            # ledger's, is no one task's: each stays a crash).
            self._release(
                claimed.name,
                runner,
                f"self-heal failed while running it: {type(exc).__name__}: {exc}",
                manual=isinstance(exc, UnsafeStateError) and exc.path == self.store.log_path(claimed.name),
            )
            raise
        return result

    def _record_pass(self, running: list[tuple[str, float]], why: str) -> None:
        """The fourth document's run_status for a pass that ran nothing: `following` for each task still
        running (its last output N seconds ago), else `skipped`. Written under the tree's lock: a few lines."""
        for name, idle in running:
            self.ledger.record(
                "pass", task=name, status="following", reason=f"still running; last output {idle:.0f}s ago"
            )
        if not running:
            self.ledger.record("pass", status="skipped", reason=why)

    def _run_claimed(self, claimed: Task, runner: dict[str, Any], requeued: bool, now: float) -> TaskRun:
        log = BoundedLog(
            self.store.log_path(claimed.name),
            max_chars=self.config.tasks.log_max_chars,
            keep_chars=self.config.tasks.log_keep_chars,
            redactor=self.redactor,
            clock=self.clock,
        )
        started = self.clock.monotonic()
        log.note(f"{NOTE_MARK}{utc_iso(now)} run {claimed.execution_count} of {claimed.name} (pid {runner['pid']}) ===")
        with _run_stop(self.stop) as stop, _Heartbeat(self.store, claimed, runner, log, stop) as heartbeat:
            outcome, failed = self._execute(claimed, log, stop, requeued)
            # Still under the heartbeat: a model asked for a root cause may take a while.
            diagnosis = self._diagnose(claimed, outcome, failed, log)
        duration = self.clock.monotonic() - started
        log.note(f"{NOTE_MARK}{utc_iso(self.clock.time())} {outcome} after {duration:.1f}s ===")
        log.close()
        if heartbeat.lost:
            outcome = "superseded"
        waited_from = self.clock.monotonic()
        while True:
            try:
                result = self._finish(
                    claimed.name,
                    runner=runner,
                    outcome=outcome,
                    failed=failed,
                    duration=duration,
                    log=log,
                    diagnosis=diagnosis,
                    run_id=claimed.run_id,
                    started=claimed.started_ts,
                )
                break
            except FleetUnavailable as exc:
                # The shared tree is down: the run is over; its outcome waits for the database, and is refused
                # then if the lease ran out and another host took the task meanwhile.
                if self.clock.monotonic() - waited_from >= self.config.tasks.finish_wait_s:
                    raise
                logger.warning(
                    "task %s ended (%s); waiting for the fleet database to record it: %s", claimed.name, outcome, exc
                )
                self.clock.sleep(max(1.0, min(self.config.store.retry_down_s, 15.0)))
        result.duration_s = duration
        return result

    def _release(self, name: str, runner: dict[str, Any], reason: str, *, manual: bool = False) -> None:
        with contextlib.suppress(Exception), self.store.transaction() as tree:
            task = tree.get(name)
            if task.exec_state == PROCESSING and same_runner(task.runner, runner):
                task.last_result = self.redactor.text(reason)[:500]
                if manual:
                    reason += f"; fix that, then hand it back with `tasks.py mark {operand(name)} error`"
                tree.transition(name, REQUIRES_MANUAL if manual else NORMAL_CRASH, reason[:500], by="run-next")

    # -- running -------------------------------------------------------------------------------------

    def _diagnose(self, task: Task, outcome: str, failed: Failed | None, log: BoundedLog) -> FixRecord | None:
        """A fix record for this failure, when escalation will want one: a failure that reaches the analysis
        threshold, or a FIX task to analyse. Self-heal's own analysis failing never stops the outcome from
        being recorded: it is logged, and escalation falls back to reading the log by rules."""
        if self.diagnoser is None:
            return None
        analyze_at = self.config.tasks.analyze_at_failures
        try:
            if outcome == "analysed":
                parent = (task.source or {}).get("task") or task.parent
                if not parent:
                    return None
                return self.diagnoser.diagnose_task(parent)
            if outcome != "failed" or failed is None or task.type == "fix" or task.retry_count + 1 < analyze_at:
                return None
            log.end_line()  # the evidence holds the whole run, a last line without a newline included
            return self.diagnoser.diagnose_run(
                task,
                error=f"{failed.reason}\n" + "\n".join(tail_lines(log.path, 20, last_run=True)),
                error_class=failed.error_class,
                step=failed.step,
                log_tail=tail_lines(log.path, self.config.fixes.evidence_lines),
            )
        except Exception as exc:
            logger.warning("self-heal could not make a fix record for %s: %s", task.name, exc)
            return None

    def _execute(self, task: Task, log: BoundedLog, stop: StopFlag, requeued: bool) -> tuple[str, Failed | None]:
        run = task.run
        if run is None:
            return "analysed", None
        sink = _Tee(log, self.echo)
        try:
            if run.kind == "plan":
                return self._run_plan(task, run, sink, stop, requeued)
            return self._run_command(task, run, sink, stop)
        except OrphanRunning as exc:  # an earlier run's command still running: only the setting turns it on here
            return "not_attempted", Failed(None, str(exc.told(setting_remedy(self.config.files))))
        except NotAttempted as exc:  # busy elsewhere, or another refusal to start
            return "not_attempted", Failed(None, str(exc))
        except SelfHealError as exc:  # a plan that no longer loads, a checkpoint that cannot be read, ...
            manual = isinstance(exc, CheckpointUnreadable)
            log.note(f"self-heal: {exc}")
            return "failed", Failed("permanent", str(exc), step="plan", needs_person=manual)

    def _run_command(self, task: Task, run: RunSpec, sink: _Tee, stop: StopFlag) -> tuple[str, Failed | None]:
        outcome = run_with_retry(
            run.process_argv(),
            task=task.name,
            target=run.target,
            timeout_s=run.timeout_s,
            max_attempts=run.max_attempts,
            cwd=run.cwd,
            config=self.config,
            state=self.store.state,
            clock=self.clock,
            stdout=sink,
            stderr=sink,
            stop=stop,
            run_id=task.run_id,
        )
        for item in outcome.left_behind:  # a person reading the task's log should see it too
            what = "stopped" if item["stopped"] else "left running (process.keep_daemons)"
            sink.log.note(f"self-heal: the command left pid {item['pid']} ({item['cmd']}) running: {what}")
        if outcome.ok:
            return "succeeded", None
        if outcome.outcome in ("not_attempted", "interrupted"):
            return outcome.outcome, Failed(outcome.error_class, outcome.reason or outcome.stop_reason)
        reason = outcome.reason or outcome.stop_reason
        if outcome.exit_code is not None and f"exit {outcome.exit_code}" not in reason:
            reason = f"exit {outcome.exit_code}: {reason}"
        return "failed", Failed(outcome.error_class, reason, exit_code=outcome.exit_code)

    def _run_plan(
        self, task: Task, run: RunSpec, sink: _Tee, stop: StopFlag, requeued: bool
    ) -> tuple[str, Failed | None]:
        plan = load_plan(Path(str(run.plan)))
        from_step = None
        if requeued:  # a person handed it back: a parked or failed plan resumes at its first unfinished step
            data = status(task.name, state=self.store.state)
            if data is not None and data.status in (TASK_DEAD_LETTER, TASK_FAILED):
                from_step = data.first_unfinished()
        runner = WorkflowRunner(
            plan,
            task.name,
            config=self.config,
            state=self.store.state,
            clock=self.clock,
            stop=stop,
            stdout=sink,
            stderr=sink,
            resume_command=resume_command(task.name),
        )
        result = runner.run(from_step=from_step)
        if result.status == "completed":
            return "succeeded", None
        if result.status in ("not_attempted", "interrupted"):
            return result.status, Failed(None, result.message)
        failed_step = next((s for s in result.steps if s.state == "failed"), None)
        return "failed", Failed(
            failed_step.error_class if failed_step else None,
            result.message,
            step=failed_step.name if failed_step else None,
            exit_code=failed_step.exit_code if failed_step else None,
            needs_person=result.status == TASK_DEAD_LETTER,
            incident=result.incident,
        )

    # -- the outcome ---------------------------------------------------------------------------------

    def _finish(
        self,
        name: str,
        *,
        runner: dict[str, Any],
        outcome: str,
        failed: Failed | None,
        duration: float,
        log: BoundedLog,
        diagnosis: FixRecord | None = None,
        run_id: str | None = None,
        started: float | None = None,
    ) -> TaskRun:
        """Record a run's outcome, if the task is still that run's (`runner`, and `run_id` when given)."""
        escalation: Escalation | None = None
        verified = False
        with self.store.transaction() as tree:
            try:
                task = tree.get(name)
            except TaskError:
                # No command of self-heal removes a running task: a person voided it and archived its tree.
                message = f"task {name!r} was removed by a person while it ran; this run's outcome was not recorded"
                self._superseded(name, message, run_id=run_id, outcome=outcome, by_person=True)
                return TaskRun(name, "superseded", message, log=str(log.path), by_person=True)
            late = run_id is not None and task.run_id != run_id
            if late or (task.exec_state == PROCESSING and not same_runner(task.runner, runner)):
                # Another run owns the task now (its lease ran out and it was taken back): refused, and said so.
                return self._refuse_late(tree, task, runner=runner, outcome=outcome, run_id=run_id, started=started)
            if outcome == "superseded" or task.exec_state != PROCESSING or not same_runner(task.runner, runner):
                # A person's change (void, end, ...) is theirs to make: exit 0. Self-heal's own (the stuck check,
                # a claim that took the task back after its lease ran out) says this run failed: exit 3.
                ended = _run_ended_by(task)
                person = _by_person(ended)
                how = ""
                if ended is not None and ended.get("by"):
                    reason = str(ended.get("reason") or "").strip().splitlines()
                    how = f", by {ended['by']}" + (f": {reason[0][:200]}" if reason else "")
                message = (
                    f"task {name!r} was changed {'by a person ' if person else ''}while it ran (now"
                    f" {task.exec_state}{how}); this run's outcome was not recorded"
                )
                self._superseded(name, message, run_id=run_id, outcome=outcome, by_person=person)
                return TaskRun(
                    name,
                    "superseded",
                    message,
                    exec_state=task.exec_state,
                    retry_count=task.retry_count,
                    execution_count=task.execution_count,
                    log=str(log.path),
                    by_person=person,
                )
            if outcome != "not_attempted":
                tree.db.set_deferred(name, False)
            task.heartbeat_ts = self.clock.time()
            if log.last_output_ts:
                task.activity_ts = log.last_output_ts
            if outcome == "interrupted" and _interruptions_before(task) + 1 >= INTERRUPTIONS_COUNTED:
                why = failed.reason if failed else outcome
                outcome, failed = (
                    "failed",
                    Failed(
                        "timeout",
                        f"interrupted {INTERRUPTIONS_COUNTED} runs in a row (the last: {why}): its runs outlive what"
                        " runs them (a cron line's timeout?)",
                    ),
                )
            if outcome == "succeeded":
                task.last_result = f"succeeded in {duration:.1f}s"
                tree.transition(name, END, task.last_result, by="run-next")
                message = f"task {name!r} succeeded"
                verified = True
            elif outcome == "analysed":
                escalation = self._analyse_fix(tree, task, diagnosis)
                # The next step is a person's or an agent's: said with its exact command (cron mails this line).
                message = (
                    f"fix task {name!r} analysed; an agent or a person applies its fix (`tasks.py show"
                    f" {operand(name)}`), then `tasks.py mark {operand(name)} end`"
                )
            elif outcome in ("not_attempted", "interrupted"):
                # Not attempted (a breaker open, a lock busy): set aside, so the tasks behind it run first.
                if outcome == "not_attempted":
                    self.not_attempted.add(name)
                    tree.db.set_deferred(name, True)
                why = failed.reason if failed else outcome
                task.last_result = f"{outcome}: {why}"
                tree.transition(name, NORMAL_CRASH, f"{outcome}: {why} (not counted as a failure)", by="run-next")
                message = f"task {name!r} {outcome.replace('_', ' ')}: {why}; the next pass tries again"
            else:
                failed = failed or Failed(None, outcome)
                escalation = escalate(
                    tree,
                    task,
                    failed,
                    store=self.store,
                    redactor=self.redactor,
                    log_tail=tail_lines(log.path),
                    run_tail=tail_lines(log.path, last_run=True),
                    diagnosis=diagnosis,
                )
                message = f"task {name!r} failed ({failed.error_class or 'unknown'}): {failed.reason}"
                if escalation.state == REQUIRES_MANUAL:
                    message += (
                        f"; it now needs a person: once the cause is fixed, `tasks.py mark {operand(name)} error`"
                        " hands it back"
                    )
            tree.log_run(
                task,
                status=_RUN_STATUS.get(outcome, outcome),
                level="INFO" if outcome in ("succeeded", "analysed") else "ERROR",
                ended=self.clock.time(),
                message=message,
                content=str(log.path),
            )
            result = TaskRun(
                name,
                outcome,
                message,
                exec_state=task.exec_state,
                error_class=failed.error_class if failed else None,
                exit_code=failed.exit_code if failed else None,
                retry_count=task.retry_count,
                execution_count=task.execution_count,
                failed_step=failed.step if failed else None,
                log=str(log.path),
            )
        if verified and self.diagnoser is not None:
            with contextlib.suppress(Exception):  # bookkeeping of fix records never fails a run
                result.verified_fixes = self.diagnoser.verify_applied(name)
        if diagnosis is not None:
            result.fix_record = diagnosis.id
        if escalation is not None:
            announce(self.ledger, name, failed, escalation)
            result.fix_tasks = escalation.fix_tasks
            result.incident = str(escalation.incident_path) if escalation.incident_path else None
        return result

    def _superseded(self, name: str, message: str, *, run_id: str | None, outcome: str, by_person: bool) -> None:
        """The ledger's `superseded` event for a run whose task was changed under it (its outcome not recorded)."""
        self.ledger.record(
            "superseded",
            task=name,
            status="refused",
            reason=message,
            run_id=run_id,
            outcome=outcome,
            by_person=by_person,
        )

    def _refuse_late(
        self,
        tree: TaskTree,
        task: Task,
        *,
        runner: dict[str, Any],
        outcome: str,
        run_id: str | None,
        started: float | None,
    ) -> TaskRun:
        now = self.clock.time()
        owner = (task.runner or {}).get("host")
        message = (
            f"late finish of task {task.name!r} refused: run {run_id} (host {runner.get('host')}, pid "
            f"{runner.get('pid')}) ended {outcome}, but the task is now {task.exec_state}"
            + (f" under run {task.run_id}" if task.run_id and task.run_id != run_id else "")
            + (f" on host {owner}" if owner else "")
            + "; its outcome was not recorded"
        )
        tree.store.db.log_run(
            task=task.name, status="refused", level="WARNING", started=started, ended=now, message=message, content=None
        )
        self.ledger.record(
            "superseded",
            task=task.name,
            status="refused",
            reason=message,
            run_id=run_id,
            current_run_id=task.run_id,
            outcome=outcome,
        )
        return TaskRun(
            task.name,
            "superseded",
            message,
            exec_state=task.exec_state,
            retry_count=task.retry_count,
            execution_count=task.execution_count,
        )

    def _analyse_fix(self, tree: TaskTree, task: Task, diagnosis: FixRecord | None) -> Escalation:
        source = task.source or {}
        parent = tree.tasks.get(source.get("task") or task.parent or "")
        if diagnosis is not None:
            task.analysis = self.redactor.text(
                f"{diagnosis.root_cause}\n(fix record {diagnosis.id}, from {diagnosis.source}, "
                f"{diagnosis.review.get('verdict')})"
            )
            task.fix_suggestion = "\n".join(f"{i}. {s}" for i, s in enumerate(diagnosis.fix_steps, 1))
            task.success_criteria = task.success_criteria or diagnosis.success_criteria
            task.fix_record = diagnosis.id
            task.last_result = f"analysed ({diagnosis.id}); waiting for an agent or a person to apply the fix"
            tree.transition(
                task.name,
                REQUIRES_MANUAL,
                f"analysed as {diagnosis.id}; self-heal never applies a fix by itself "
                "(end it with `tasks.py mark NAME end` once applied)",
                by="run-next",
            )
            return Escalation(REQUIRES_MANUAL, analysis=task.analysis)
        lines = tail_lines(self.store.log_path(parent.name)) if parent else []
        found = analysis.analyze(
            lines or (task.last_error or "").splitlines(),
            error_class=task.last_error_class,
            reason=(task.last_error or "").strip().splitlines()[0] if task.last_error else None,
            failures=parent.retry_count if parent else 1,
            step=source.get("step"),
        )
        task.analysis = self.redactor.text(found.summary)
        task.fix_suggestion = task.fix_suggestion or found.problems[0].suggestion
        task.last_result = "analysed; waiting for an agent or a person to apply the fix"
        tree.transition(
            task.name,
            REQUIRES_MANUAL,
            "analysed; self-heal never applies a fix by itself (end it with `tasks.py mark NAME end` once applied)",
            by="run-next",
        )
        return Escalation(REQUIRES_MANUAL, analysis=task.analysis)


def announce(ledger: Ledger, name: str, failed: Failed | None, escalation: Escalation) -> None:
    """Ledger events for what escalation made, then the notification (outside the tree's lock)."""
    for fix in escalation.fix_tasks:
        ledger.record(
            "fix",
            task=name,
            step=failed.step if failed else None,
            error_class=failed.error_class if failed else None,
            status="created",
            reason=f"{fix} created",
            fix_task=fix,
        )
    incident, path = escalation.incident, escalation.incident_path
    if incident is None or path is None:
        return
    ledger.record(
        "incident",
        task=name,
        step=incident.failed_step,
        error_class=incident.error_class,
        status="requires_manual",
        reason=f"{incident.id}: {incident.summary}",
    )
    config = ledger.config
    if config.workflows.notify:
        incident.notified = notify(
            config.workflows.notify, incident, path, timeout_s=config.workflows.notify_timeout_s, clock=ledger.clock
        )
        write_json(path, incident.to_json(), durable=True)


# -- stuck detection -----------------------------------------------------------------------------------


@dataclass
class StuckFinding:
    """A PROCESSING task that is not really running. kind: stuck (no output or heartbeat for too long) or
    dead (its runner process is gone)."""

    task: str
    kind: str
    idle_s: float
    heartbeat_age_s: float
    runner: dict[str, Any] | None
    killed: list[int] = field(default_factory=list)
    fix_task: str | None = None
    exec_state: str | None = None  # after acting; None when only reported
    incident: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "idle_s": round(self.idle_s, 1), "heartbeat_age_s": round(self.heartbeat_age_s, 1)}


def _identity(record: dict[str, Any] | None) -> ProcessIdentity | None:
    if not record or not record.get("pid") or not record.get("create_time"):
        return None
    ticks = record.get("start_ticks")
    return ProcessIdentity(int(record["pid"]), float(record["create_time"]), ticks if isinstance(ticks, int) else None)


def _interruptions_before(task: Task) -> int:
    """How many of the task's last runs in a row were interrupted (read from its history, newest first)."""
    count = 0
    for entry in reversed(task.history or []):
        what = str(entry.get("what", "")) if isinstance(entry, dict) else ""
        if what.endswith("-> PROCESSING"):
            continue  # the claim of a run
        if what == f"{PROCESSING} -> {NORMAL_CRASH}" and str(entry.get("reason", "")).startswith(_INTERRUPTED):
            count += 1
            continue
        break
    return count


# The `by` of a change made by hand (a person's, or an agent's on their behalf): tasks.py's commands and
# `self_heal.py --apply`. Self-heal's own changes (run-next, escalation, check-stuck, a claim taking a task back)
# are not; anything else is not taken for a person's either.
_BY_PERSON_COMMAND = "tasks.py "  # `tasks.py mark`, `tasks.py set`, ...: a word of its own, not a prefix of a name
_BY_PERSON = frozenset({"self_heal"})


def _run_ended_by(task: Task) -> dict[str, Any] | None:
    """The history entry that took the task out of its last run (the first `PROCESSING -> ...` after the last
    claim), or None when its history does not hold it."""
    found: dict[str, Any] | None = None
    for entry in reversed(task.history or []):
        what = str(entry.get("what", "")) if isinstance(entry, dict) else ""
        if what.endswith(f"-> {PROCESSING}"):
            break
        if what.startswith(f"{PROCESSING} -> "):
            found = entry
    return found


def _by_person(entry: dict[str, Any] | None) -> bool:
    by = str(entry.get("by") or "") if entry is not None else ""
    return by in _BY_PERSON or by.startswith(_BY_PERSON_COMMAND)


def _judge(task: Task, now: float, limit: float, host: str, db_now: float | None = None) -> StuckFinding | None:
    """`now`: this host's clock, which stamps `activity_ts`; `db_now`: the clock that stamps `started_ts` and
    `heartbeat_ts` (the database's in fleet mode, so a host whose clock runs ahead does not find its own
    healthy runs silent; this host's otherwise)."""
    if task.exec_state != PROCESSING:
        return None
    db_now = now if db_now is None else db_now
    since = task.started_ts or task.updated_ts
    # A start after now: the wall clock stepped back since the claim. The run's age says nothing then; its
    # activity (restamped by each heartbeat from the runner's monotonic clock) still does.
    idle = now - (task.activity_ts or 0.0) if since > db_now else min(now - (task.activity_ts or 0.0), db_now - since)
    beat_age = db_now - max(task.heartbeat_ts or 0.0, since)
    runner = task.runner or {}
    where = runner.get("host")  # always recorded: a runner of an unknown host is not judged
    if where is not None and recorded_process_gone(
        runner.get("pid"), runner.get("create_time"), where, host, runner.get("start_ticks")
    ):
        return StuckFinding(task.name, "dead", idle, beat_age, task.runner)
    if idle > limit or beat_age > limit:
        return StuckFinding(task.name, "stuck", idle, beat_age, task.runner)
    return None


def _of_this_machine(runner: dict[str, Any] | None, host: str, boot: str | None) -> bool:
    """Whether a fleet task's runner was recorded by this host on this boot (a record without a boot, of an
    older version, by its host alone)."""
    runner = runner or {}
    return runner.get("host") == host and runner.get("boot") in (None, boot)


def _db_now(store: TaskStore, now: float) -> float | None:
    """The database's clock in fleet mode (it stamps starts and heartbeats there), moved by as much as `now`
    (the host's time the caller judges at) differs from the host's clock now; None on one host."""
    if not store.fleet:
        return None
    rows = store.db.query_many([("SELECT EXTRACT(EPOCH FROM statement_timestamp())", ())])
    return float(rows[0][0][0]) + (now - store.clock.time())


def find_stuck(store: TaskStore, *, now: float | None = None) -> list[StuckFinding]:
    """PROCESSING tasks that are stuck or whose runner died; nothing is changed (for health_check.py)."""
    now = store.clock.time() if now is None else now
    host = store.host
    limit = store.config.tasks.stuck_after_s
    # Fleet mode: only this host's runs, made on this boot; another host's run that stopped beating is the
    # lease's business. So is one recorded under this host id on another boot: a machine cloned from this
    # one's image (the same hostname, the default id), whose pids mean nothing here (they judged each other's
    # live runs dead and ran them twice), or this machine before a reboot (its runs end with their lease).
    boot = boot_id()
    mine = [t for t in store.processing() if not store.fleet or _of_this_machine(t.runner, host, boot)]
    db_now = _db_now(store, now)
    found = [_judge(t, now, limit, host, db_now) for t in mine]
    return [f for f in found if f is not None]


def check_stuck(store: TaskStore, *, now: float | None = None, ledger: Ledger | None = None) -> list[StuckFinding]:
    """Find stuck and dead runs and deal with them: kill what the runner started (checked by pid and
    start time), record the failure, and for a stuck one create `FIX-<task>-STUCK`."""
    now = store.clock.time() if now is None else now
    ledger = ledger or Ledger(store.state, store.config, clock=store.clock)
    host = store.host
    limit = store.config.tasks.stuck_after_s
    acted: list[StuckFinding] = []
    for candidate in find_stuck(store, now=now):
        escalation: Escalation | None = None
        with store.transaction() as tree:
            if candidate.task not in tree:
                continue
            task = tree.get(candidate.task)
            finding = _judge(task, now, limit, host, _db_now(store, now))  # again, under the lock: it may have moved on
            if finding is None or task.runner != candidate.runner:
                continue
            orphans = _orphans(store, task)
            if finding.kind == "dead":
                failed = Failed(
                    "unknown",
                    f"its runner (pid {(task.runner or {}).get('pid')}) died without recording an outcome",
                    crash=True,
                )
                escalation = escalate(
                    tree,
                    task,
                    failed,
                    store=store,
                    redactor=ledger.redactor,
                    log_tail=tail_lines(store.log_path(task.name)),
                )
            else:
                escalation = _stuck(tree, task, finding, store, ledger.redactor)
                finding.fix_task = escalation.fix_tasks[0] if escalation.fix_tasks else None
            finding.exec_state = task.exec_state
            if escalation.incident_path is not None:
                finding.incident = str(escalation.incident_path)
        # Killed after the record says so, so the runner sees the task is no longer its own and stands down.
        # A dead runner's command is an orphan: with process.kill_orphans off it is left for the next run
        # of the task to refuse (exit 4, naming it); a stuck runner and its command are stopped either way.
        keep = finding.kind == "dead" and not store.config.process.kill_orphans
        # The runner is stopped with what it started, never with the process group it may lead: a runner run
        # from a shell pipeline leads the group of the user's other commands (`run-next | tee log`).
        runner = [(_identity(finding.runner), False)] if finding.kind == "stuck" else []
        targets = runner + ([] if keep else [(orphan, True) for orphan in orphans])
        for identity, own_group in targets:
            if identity is not None and (finding.runner or {}).get("host", host) == host:
                finding.killed += kill_tree(identity, grace_s=store.config.process.kill_grace_s, own_group=own_group)
        finding.killed = sorted(set(finding.killed))
        ledger.record(
            "stuck",
            task=finding.task,
            status=finding.kind,
            reason=(
                f"no output for {finding.idle_s:.0f}s (limit {limit:g}s)"
                if finding.kind == "stuck"
                else f"runner pid {(finding.runner or {}).get('pid')} is gone"
            ),
            idle_s=round(finding.idle_s, 1),
            fix_task=finding.fix_task,
            killed=" ".join(map(str, finding.killed)) or None,
            state=finding.exec_state,
        )
        if escalation is not None:
            announce(ledger, finding.task, None, escalation)
        acted.append(finding)
    if store.fleet:
        _stop_orphans_others_took_over(store, ledger, {f.task for f in acted})
    return acted


def _stop_orphans_others_took_over(store: TaskStore, ledger: Ledger, handled: set[str]) -> None:
    """Fleet mode: a command this host started whose runner died keeps running (its own session) after
    another host takes the task over at the end of the lease, and nothing here judges that task any more (it
    is the other host's now): so each pass stops this host's commands of dead runs whose task is no longer
    this host's, before they can run beside the copy elsewhere. (Keep `tasks.lease_s` above the cron
    interval of `run-next`, so this pass comes before the lease ends.)"""
    if not store.config.process.kill_orphans:
        return
    host = socket.gethostname()
    ours = {t.name for t in store.processing() if (t.runner or {}).get("host") == store.host}
    dead = {
        record.task
        for record in list_runs(store.state, running_only=True)
        if record.task and record.running and record.host in (None, host) and record.supervisor_gone(host)
    }
    for task in sorted(dead - ours - handled):
        stopped = stop_orphans(store.state, task, kill=True, grace_s=store.config.process.kill_grace_s)
        close_dead(store.state, task, now=store.clock.time())  # its records: finished, crashed
        if stopped:
            ledger.record(
                "stuck",
                task=task,
                status="orphan",
                reason="its runner died and another host took the task over: this host's copy was stopped",
                killed=" ".join(str(o.pid) for o in stopped),
            )


def _orphans(store: TaskStore, task: Task) -> list[ProcessIdentity | None]:
    """Commands the task's runs started that may outlive a dead runner (they run in their own session)."""
    out: list[ProcessIdentity | None] = []
    for record in list_runs(store.state, running_only=True):
        if record.task == task.name and record.running:
            child = record.child
            out.append(
                ProcessIdentity(child.pid, child.create_time, child.start_ticks)
                if child and child.create_time
                else None
            )
    return out


def _stuck(tree: TaskTree, task: Task, finding: StuckFinding, store: TaskStore, redactor: Redactor) -> Escalation:
    settings = store.config.tasks
    task.retry_count += 1
    what = (
        f"no output for {finding.idle_s:.0f}s"
        if finding.idle_s >= finding.heartbeat_age_s
        else (f"no heartbeat for {finding.heartbeat_age_s:.0f}s")
    )
    reason = f"stuck: {what} (limit {settings.stuck_after_s:g}s); its processes were stopped"
    task.last_error, task.last_error_class = reason, "timeout"
    task.last_result = reason
    child, created = _ensure_fix_child(
        tree,
        task,
        key="stuck",
        hint="STUCK",
        title=f"hung: {what}",
        suggestion="find what the task waits on (a lock, a prompt for input, a dead peer); give its command a "
        "--timeout so a hang ends by itself",
        error=reason,
        error_class="timeout",
        step=task.failed_step,
        kind="stuck",
    )
    if task.retry_count >= needs_person_at(task, store.config):
        tree.transition(task.name, REQUIRES_MANUAL, reason, by="check-stuck")
        incident = _incident(task, Failed("timeout", reason), store, None, tree)
        path = write_incident(store.state, incident)
        task.incident = incident.id
        return Escalation(REQUIRES_MANUAL, [child.name] if created else [], incident=incident, incident_path=path)
    tree.transition(task.name, ERROR_FIX_PENDING, reason, by="check-stuck")
    return Escalation(ERROR_FIX_PENDING, [child.name] if created else [])
