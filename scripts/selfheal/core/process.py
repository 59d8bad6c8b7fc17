"""Running commands and stopping them: process groups, bounded output tails, identity-checked kills.

A command runs in a new session (its own process group). Its output is streamed to our sinks as it
arrives while the last `tail_bytes` of each stream are kept for classification. A timeout or a stop
signal sends SIGTERM to the whole group, then SIGKILL after a grace period, and also kills descendants
that left the group, each checked by pid and process start time so a reused pid is never touched.

Daemons: a descendant that double-forks and calls setsid() leaves both the group and the tree. On Linux a
runner that called `become_subreaper()` gets such processes re-parented to itself, so they are found
(its children that carry the command's mark, below) and stopped with the command; elsewhere, or without
it, what is found is the process group and the descendants seen at each tick (about once a second).
Whatever is still alive when the command ends is reported as left behind and stopped, unless asked to keep it.

The mark: each command's environment gets SELFHEAL_COMMAND_TAG, a value of its own that its descendants
inherit. A child of the runner is adopted only when it carries the command's tag: the runner's own other
children (another step's command run in parallel, a function step's subprocess, a child caught between
fork and exec) are younger than the command too, and one was once stopped as the command's daemon, its
exit status reaped from under its Popen, which then read 0.

Pid reuse: once the command is reaped its pid (and its group's id, once the group is empty) may go to the
next fork. From then on nothing is looked up or signalled by that number: not its children, not its group
(a member found there counts only if it started before the reap or carries the tag), and no process
remembered by pid alone is reaped or signalled without its start time matching.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..clock import SYSTEM_CLOCK, Clock
from ..state.redact import JAMMED_S, OUTPUT_LOCK, LineRedactor, nonblocking_twin, reader_may_stall
from ..state.runs import live_process, start_ticks

if TYPE_CHECKING:
    import psutil
else:

    class _LazyPsutil:
        """psutil, imported on first use (10 ms at start-up that `tasks.py list` or `--help` need not pay): the
        first attribute read imports it and puts the module itself in this one's place."""

        def __getattr__(self, name: str) -> object:
            import psutil as module  # noqa: PLC0415

            globals()["psutil"] = module
            return getattr(module, name)

    psutil = _LazyPsutil()

logger = logging.getLogger(__name__)

_READ_CHUNK = 65536
COMMAND_TAG = "SELFHEAL_COMMAND_TAG"  # in each command's environment: which run_command started it (above)
_EXIT_POLL_S = 0.02
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_PR_GET_CHILD_SUBREAPER = 37
_CMD_CHARS = 200  # a left-behind process's command line is cut to this in reports
_PIPE_BUF = select.PIPE_BUF  # bytes: a write this size to a pipe that polls writable never waits (_Sink)
_PENDING_MAX = 256 * 1024  # bytes of output held for a slow reader before the command's pipes stop being read
_WRITE_LOCK = OUTPUT_LOCK  # one poll-then-write at a time in this process (parallel steps, the scripts' diagnostics)


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux 3.4+): orphaned descendants, daemons that double-forked
    and called setsid() included, are re-parented to it instead of to init, so they can be found and
    stopped. True if it took effect. Scripts call it in their main(); a library user opts in, because
    it changes who must reap orphaned processes for the rest of the process's life."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # noqa: PLC0415 - 2 ms; only the scripts that run commands call this

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # noqa: PLC0415

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        return bool(libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value)
    except (OSError, AttributeError):
        return False


class OutputSink(Protocol):
    """Where a command's output goes: a binary file (sys.stdout.buffer), or anything with these two."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class Tee:
    """Output for several places at once (a task's log, and stderr as an echo). run_command copies a
    command's output to each as to a sink of its own, so a reader of one that stops reading holds up neither
    the others nor the timeout, and a slow one loses nothing (`_Sink`); written to directly, each gets it in turn."""

    def __init__(self, *targets: OutputSink | None) -> None:
        self.targets = [target for target in targets if target is not None]

    def write(self, data: bytes, /) -> int:
        for target in self.targets:
            target.write(data)
        return len(data)

    def flush(self) -> None:
        for target in self.targets:
            target.flush()


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when `pid` exits (Linux 5.3+), else None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as the skill recorded it: pid plus start time (seconds since the epoch, as psutil gives)."""

    pid: int
    create_time: float
    # Its start in clock ticks since boot (state.runs.start_ticks): what identifies it when the wall clock
    # is stepped; None where it cannot be read.
    start_ticks: int | None = None

    def to_dict(self) -> dict[str, float | int]:
        data: dict[str, float | int] = {"pid": self.pid, "create_time": self.create_time}
        if self.start_ticks is not None:
            data["start_ticks"] = self.start_ticks
        return data


def identify(pid: int) -> ProcessIdentity | None:
    try:
        return ProcessIdentity(pid, psutil.Process(pid).create_time(), start_ticks(pid))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def still_running(identity: ProcessIdentity) -> psutil.Process | None:
    """The live process with this identity, or None if it ended or its pid now belongs to another
    (state.runs.live_process: the one rule)."""
    return live_process(identity.pid, identity.create_time, identity.start_ticks)


def kill_tree(
    identity: ProcessIdentity, *, grace_s: float, clock: Clock = SYSTEM_CLOCK, own_group: bool = True
) -> list[int]:
    """Stop a recorded process and everything under it: SIGTERM, then SIGKILL after `grace_s`.

    `own_group`: the skill started this process as the leader of a process group of its own (a command it
    runs), so the members of that group that left the tree are stopped too. False for a process that may lead
    a group someone else made (a runner started from a shell pipeline, `run-next | tee log`, leads the group
    of the user's `tee`): only it and its descendants are stopped.

    Returns the pids signalled. Does nothing if the pid now belongs to a different process.
    """
    root = still_running(identity)
    if root is None:
        return []
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = [root]
    # A command started by the skill leads its own process group: members that left the tree are in it.
    group = identity.pid if own_group and _leads_group(identity.pid) else None
    if group is not None:
        known = {p.pid for p in procs}
        procs += [p for p in _group_members(group) if p.pid not in known]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    for proc in procs:
        _send(proc, signal.SIGTERM)
    alive = _wait_gone(procs, grace_s, clock)
    if alive and group is not None and _group_held(group, identity, alive):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for proc in alive:
        _send(proc, signal.SIGKILL)
    _wait_gone(alive, 1.0, clock)
    return sorted({p.pid for p in procs})


def _send(proc: psutil.Process, signum: int) -> bool:
    """Signal `proc` if it is still the process psutil saw (pid and start time); True if sent. Where pidfds
    exist (Linux 5.3+) the check and the signal reach the same process: psutil's own check is followed by a
    kill() by pid, and a process that died in between (its parent reaps at once) may have passed its pid on."""
    opener, sender = getattr(os, "pidfd_open", None), getattr(signal, "pidfd_send_signal", None)
    if opener is None or sender is None:
        try:
            proc.send_signal(signum)
            return True
        except psutil.Error:
            return False
    try:
        fd = opener(proc.pid)
    except OSError:
        return False
    try:
        if not proc.is_running():  # the pid was another's already when the fd was opened
            return False
        sender(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _group_held(pgid: int, leader: ProcessIdentity, alive: list[psutil.Process]) -> bool:
    """Whether process group `pgid` is still the one we signalled: its leader still runs, or one of the
    processes known to be ours (pid and start time) is still in it. A group id stays taken while the group
    has a member; once empty (the leader died at the SIGTERM and was reaped, what is left had left the group)
    it may be given to a stranger's new group, which must not get our SIGKILL."""
    if still_running(leader) is not None:
        return True
    for proc in alive:
        with contextlib.suppress(psutil.Error, OSError):
            if proc.is_running() and os.getpgid(proc.pid) == pgid:
                return True
    return False


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live processes in process group `pgid` (a scan of every process: only when one is known to exist)."""
    try:
        os.killpg(pgid, 0)
    except OSError:
        return []
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def describe(proc: psutil.Process) -> str:
    """A process's command line for a report, cut to a readable length."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        cmd = "?"
    return cmd[:_CMD_CHARS]


@dataclass(frozen=True)
class LeftBehind:
    """A process a command left running (a daemon, a background job), and whether it was stopped."""

    pid: int
    cmd: str
    stopped: bool

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "cmd": self.cmd, "stopped": self.stopped}


def _wait_gone(procs: list[psutil.Process], timeout_s: float, clock: Clock) -> list[psutil.Process]:
    """Wait until these processes are dead; return the ones still alive after `timeout_s`.

    A zombie counts as dead: it has exited and only waits for its parent (or init) to reap it.
    """

    def living(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = clock.monotonic() + timeout_s
    alive = [p for p in procs if living(p)]
    while alive and clock.monotonic() < deadline:
        clock.sleep(_EXIT_POLL_S)
        alive = [p for p in alive if living(p)]
    return alive


class StopFlag:
    """Set by a signal handler; wakes a select() at once through a self-pipe. One per process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    @property
    def fileno(self) -> int:
        return self._r

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        with contextlib.suppress(OSError):
            os.write(self._w, b"\0")

    def install(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> None:
        """Route these signals to the flag (main thread only)."""
        for sig in signals:
            signal.signal(sig, lambda signum, _frame: self.set(signum))

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as the flag is set."""
        if self.signum is not None:
            return True
        deadline = time.monotonic() + max(0.0, seconds)
        with selectors.DefaultSelector() as sel:
            sel.register(self._r, selectors.EVENT_READ)
            while self.signum is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sel.select(left)
                self.drain()
        return self.signum is not None

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._r, 512):
                pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class CommandResult:
    """How one run of a command ended. exit_code is negative when a signal ended it (as subprocess says)."""

    argv: list[str]
    exit_code: int | None
    duration_s: float
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    timed_out: bool = False
    interrupted_by: int | None = None
    start_error: str | None = None
    identity: ProcessIdentity | None = None
    killed: list[int] = field(default_factory=list)
    left_behind: list[LeftBehind] = field(default_factory=list)
    output_dropped: int = 0  # bytes of output a reader of ours that stopped reading never got (_Sink)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.interrupted_by is None

    def text_tail(self, which: str) -> str:
        raw = self.stdout_tail if which == "stdout" else self.stderr_tail
        return raw.decode("utf-8", "replace")


class _Tail:
    """The last `limit` bytes of a stream, trimmed in amortised O(1)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.buf += chunk
        if len(self.buf) > 2 * self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def value(self) -> bytes:
        return bytes(self.buf[-self.limit :])


class _Sink:
    """One of our own output streams, to which a command's output is copied.

    A pipe, socket or terminal (the reader is another process: a shell pipeline, the OpenClaw gateway, cron's
    mailer) may stop reading. A write to it would then block, and the supervising loop with it: no timeout,
    no stop signal acted on (a signal only sets the stop flag, and Python retries the interrupted write). So
    the loop never writes to such a descriptor more than it surely takes: a poll() for writability, then at
    most PIPE_BUF bytes, which a pipe with room fits whole (a socket that polls writable has at least that much
    room; a terminal may have one byte, so it is written through a non-blocking description of its own, which
    takes what fits: `state.redact.nonblocking_twin`). The bytes wait here meanwhile, at most `_PENDING_MAX`:
    past that the command's pipes are not read, so a slow reader slows the command down and loses nothing
    (backpressure), and a stalled one leaves it blocked until its timeout or a stop signal. O_NONBLOCK on the
    inherited descriptor is not an option: the file description is shared with the shell and with every other
    process it was handed to. A writer thread is not either: one blocked in sys.stdout's BufferedWriter holds
    its lock, and at exit Python's flush of sys.stdout would hang on it, or abort the interpreter.

    Writing to the descriptor bypasses the target object, so the bytes pass the process's line redactor here,
    as the scripts' streams do (cli.redacted_streams). Anything else (a file, /dev/null, a task's log, an
    in-memory buffer) cannot stall and is written through the target as it comes.
    A reader that went away (EPIPE) is dropped; the command keeps running."""

    def __init__(self, target: OutputSink | None) -> None:
        self.target = target
        self.fd = _stall_prone_fd(target)
        self.pending = bytearray()
        self.dropped = 0  # bytes given up on: over the bound while the command was being stopped, or at the end
        self._lines = LineRedactor() if self.fd is not None else None
        self._poll: select.poll | None = None
        self._out = self.fd  # where the pieces are written: the descriptor, or a terminal's non-blocking twin
        # A terminal that polled writable took nothing (one byte of room, a line end needing two): not asked
        # again before this time (monotonic), or the loop would spin on it.
        self.jammed_until: float | None = None
        if self.fd is not None:
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLOUT)
            twin = nonblocking_twin(self.fd)
            self._out = self.fd if twin is None else twin
            with contextlib.suppress(OSError, ValueError):
                # What the target still buffers goes first; after this it is bypassed.
                target.flush()  # type: ignore[union-attr]

    @property
    def full(self) -> bool:
        return len(self.pending) >= _PENDING_MAX

    def write(self, chunk: bytes) -> None:
        if self.target is None:
            return
        if self._lines is None:
            try:
                self.target.write(chunk)
                self.target.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.target = None
            return
        self._queue(self._lines.feed(chunk.decode("utf-8", "surrogateescape")))
        self.push()

    def finish(self) -> None:
        """The command's output is complete: its last line, if it had no newline, is held back no longer."""
        if self._lines is not None and self.target is not None:
            self._queue(self._lines.finish())
            self.push()

    def _queue(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        room = 2 * _PENDING_MAX - len(self.pending)  # reached only while the command is stopped (read on)
        if len(data) > room:
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self.pending += data

    @property
    def writable(self) -> bool:
        """Whether there is something to write and a reader to write to (the loop waits for its room)."""
        return bool(self.pending) and self.target is not None and self.jammed_until is None

    def push(self) -> None:
        """Write what the reader takes now, without waiting for it."""
        if self.fd is None or self._out is None or self._poll is None or self.target is None:
            return
        if self.jammed_until is not None and time.monotonic() < self.jammed_until:
            return
        self.jammed_until = None
        try:
            while self.pending:
                with _WRITE_LOCK:  # another thread's write to the same pipe must not come between poll and write
                    if not self._poll.poll(0):
                        return
                    written = os.write(self._out, self.pending[:_PIPE_BUF])
                del self.pending[:written]
        except BlockingIOError:  # a terminal's twin: less room than the poll promised
            self.jammed_until = time.monotonic() + JAMMED_S
        except OSError:  # the reader went away (EPIPE), or the descriptor was closed under us
            self.pending.clear()
            self.target = None

    def close(self) -> None:
        """Close the terminal's non-blocking twin, if one was opened (the command's output is all delivered)."""
        if self._out is not None and self._out != self.fd:
            with contextlib.suppress(OSError):
                os.close(self._out)
        self._out = self.fd

    def give_up(self) -> int:
        """Drop what the reader has not taken (it stopped reading); how many bytes were dropped in all."""
        self.push()
        self.dropped += len(self.pending)
        self.pending.clear()
        return self.dropped


def _targets(target: OutputSink | None) -> list[OutputSink | None]:
    """The places output for `target` goes, each to get a `_Sink` of its own (a `Tee`: each of its targets)."""
    return list(target.targets) if isinstance(target, Tee) else [target]


def _stall_prone_fd(target: OutputSink | None) -> int | None:
    """The descriptor under `target` if its reader may stop reading (see `state.redact.reader_may_stall`), else None."""
    fileno = getattr(target, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.BytesIO and its kind have no descriptor
        return None
    return fd if isinstance(fd, int) and reader_may_stall(fd) else None


def _would_block(fd: int) -> bool:
    """Whether a write to `fd` would wait now for a reader that is not reading."""
    if not reader_may_stall(fd):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return not poller.poll(0)


def run_command(
    argv: list[str],
    *,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdout: OutputSink | None = None,
    stderr: OutputSink | None = None,
    tail_bytes: int = 65536,
    kill_grace_s: float = 5.0,
    drain_s: float = 2.0,
    stop: StopFlag | None = None,
    on_start: Callable[[ProcessIdentity | None], None] | None = None,
    on_tick: Callable[[float | None], None] | None = None,
    tick_s: float = 1.0,
    keep_daemons: bool = False,
    clock: Clock = SYSTEM_CLOCK,
) -> CommandResult:
    """Run `argv` to completion (or until timeout or stop), streaming its output; never raises for the
    command's own failure, which is in the result. stdin is /dev/null: unattended commands must not wait
    for a person. `on_tick(last_output_wall_time)` is called about every `tick_s` while it runs.

    Processes the command leaves running when it ends (background jobs, daemons) are in `left_behind`;
    they are stopped (SIGTERM, SIGKILL after `kill_grace_s`) unless `keep_daemons`. `on_start` is called
    with the command's identity before any of its output is read, so a caller can record it first.
    """
    started = clock.monotonic()
    if stop is not None and stop.signum is not None:
        # Asked to stop while the runner got ready (an orphan being stopped, a lock, a wait): never start it.
        return CommandResult(argv=list(argv), exit_code=None, duration_s=0.0, interrupted_by=stop.signum)
    tracker = _Descendants(os.urandom(8).hex())
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**(os.environ if env is None else env), COMMAND_TAG: tracker.tag},
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        if cwd is not None and (exc.filename == cwd or not os.path.isdir(cwd)):
            # The child could not change to the folder (subprocess names it as the error's filename): the
            # command itself may well exist, so this is no "command not found".
            where = f"cannot run in folder {cwd}: {exc.strerror or exc}"
            return CommandResult(
                argv=list(argv),
                exit_code=126,
                duration_s=clock.monotonic() - started,
                stderr_tail=f"{argv[0]}: {where}\n".encode(),
                start_error=f"{argv[0]}: {where}",
            )
        problem = "command not found" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
        return CommandResult(
            argv=list(argv),
            exit_code=127 if exc.errno == errno.ENOENT else 126,
            duration_s=clock.monotonic() - started,
            stderr_tail=f"{argv[0]}: {problem}\n".encode(),
            start_error=f"{argv[0]}: {problem}",
        )
    except (ValueError, TypeError) as exc:  # a NUL byte or a non-text item: no such command can exist
        problem = f"cannot be started ({exc})"
        return CommandResult(
            argv=[str(a) for a in argv],
            exit_code=126,
            duration_s=clock.monotonic() - started,
            stderr_tail=f"{argv[0]!r}: {problem}\n".encode(),
            start_error=f"{argv[0]!r}: {problem}",
        )
    identity = identify(proc.pid)
    tracker.leader = proc.pid
    tracker.since = identity.create_time if identity is not None else time.time()
    tracker.since_ticks = identity.start_ticks if identity is not None else None
    if on_start is not None:
        on_start(identity)
    if proc.stdout is None or proc.stderr is None:  # pragma: no cover - PIPE was asked for
        raise RuntimeError("subprocess pipes missing")
    out_tail, err_tail = _Tail(tail_bytes), _Tail(tail_bytes)
    tails = {proc.stdout.fileno(): out_tail, proc.stderr.fileno(): err_tail}
    out_sinks = [_Sink(target) for target in _targets(stdout)]
    # One sink per destination, so output bound for one place (--json sends both streams to stderr) stays in order.
    ours = {sink.fd: sink for sink in out_sinks if sink.fd is not None}
    err_sinks = out_sinks if stderr is stdout else [_Sink(target) for target in _targets(stderr)]
    err_sinks = [ours.get(sink.fd, sink) if sink.fd is not None else sink for sink in err_sinks]
    sinks = {proc.stdout.fileno(): out_sinks, proc.stderr.fileno(): err_sinks}
    outputs = {sink.fd: sink for sink in (*out_sinks, *err_sinks) if sink.fd is not None}
    for fd in tails:
        os.set_blocking(fd, False)

    sel = selectors.DefaultSelector()
    if stop is not None:
        sel.register(stop.fileno, selectors.EVENT_READ)
    exit_fd = _pidfd(proc.pid)  # readable when the child exits, so an exit is seen at once
    if exit_fd is not None:
        sel.register(exit_fd, selectors.EVENT_READ)
    open_fds = set(tails)
    watched: dict[int, int] = {}  # the command's pipes and our outputs in the selector now -> the events asked

    def watch(fd: int, events: int) -> None:
        if watched.get(fd, 0) == events:
            return
        if not events:
            sel.unregister(fd)
            del watched[fd]
        elif fd in watched:
            sel.modify(fd, events)
            watched[fd] = events
        else:
            sel.register(fd, events)
            watched[fd] = events

    deadline = started + timeout_s if timeout_s is not None else None
    timed_out = False
    interrupted_by: int | None = None
    kill_at: float | None = None  # when SIGKILL follows the SIGTERM already sent
    exited_at: float | None = None
    drain_from = 0.0  # the drain time after the exit counts from here: not while a slow reader holds reading up
    done_at: float | None = None  # the command's output is complete (or no longer waited for); now only delivered
    dropped = 0  # bytes of output not delivered: its reader stopped reading (_Sink)
    last_output: float | None = None
    next_tick = started + tick_s
    killed: list[int] = []
    left: dict[int, str] = {}  # pid -> command line of what was running beside the command when it was stopped
    try:
        while True:
            now = clock.monotonic()
            # Stopping the command, or its time is up: output owed to a reader that is not reading is dropped
            # instead of holding the command's pipes (and the run) for it.
            hurry = (
                kill_at is not None
                or (stop is not None and stop.signum is not None)
                or (deadline is not None and now >= deadline)
            )
            held = False  # a pipe of the command's is not read: its output waits for a slow reader
            for fd in tails:
                reading = fd in open_fds and done_at is None and (hurry or not any(sink.full for sink in sinks[fd]))
                held = held or (fd in open_fds and done_at is None and not reading)
                watch(fd, selectors.EVENT_READ if reading else 0)
            waits = [next_tick - now]
            for fd, sink in outputs.items():
                if sink.jammed_until is not None and time.monotonic() >= sink.jammed_until:
                    sink.push()  # its pause is over: try it again
                watch(fd, selectors.EVENT_WRITE if sink.writable else 0)
                if sink.jammed_until is not None:
                    waits.append(sink.jammed_until - time.monotonic())
            if held and exited_at is not None:
                drain_from = now
            if deadline is not None and kill_at is None and now < deadline:
                waits.append(deadline - now)
            if kill_at is not None:
                waits.append(kill_at - now)
            if exited_at is not None and done_at is None:
                waits.append(drain_from + drain_s - now)
            elif exit_fd is None and not open_fds and exited_at is None:
                waits.append(_EXIT_POLL_S)  # no pidfd: poll for the exit once the pipes are closed
            for key, _ in sel.select(max(0.0, min(waits))):
                fd = key.fd
                if stop is not None and fd == stop.fileno:
                    stop.drain()
                    continue
                if fd == exit_fd:
                    sel.unregister(fd)
                    continue
                if fd in outputs:
                    outputs[fd].push()
                    continue
                try:
                    chunk = os.read(fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    watch(fd, 0)
                    open_fds.discard(fd)
                    continue
                tails[fd].add(chunk)
                for sink in sinks[fd]:
                    sink.write(chunk)
                last_output = clock.time()

            now = clock.monotonic()
            if exited_at is None:
                before = _boot_ticks(), time.time()  # read before the reap: what started earlier is no stranger
                if proc.poll() is not None:
                    exited_at = drain_from = now
                    tracker.leader_reaped(*before)
            if done_at is None and exited_at is not None and (not open_fds or now >= drain_from + drain_s):
                # Done; output still held open by a leftover background child is not waited for.
                done_at = now
                for sink in outputs.values():
                    sink.finish()
            if done_at is not None:
                owed = [sink for sink in outputs.values() if sink.pending and sink.target is not None]
                if not owed:
                    break
                if (
                    hurry
                    or (stop is not None and stop.signum is not None)
                    or (deadline is not None and now >= deadline)
                ):
                    # The reader stopped reading: what it is owed cannot wait past the timeout or a stop.
                    for sink in owed:
                        sink.give_up()
                    break
            if kill_at is None and exited_at is None:
                signum = None
                if stop is not None and stop.signum is not None:
                    interrupted_by = signum = stop.signum
                elif deadline is not None and now >= deadline:
                    timed_out = True
                    signum = signal.SIGTERM
                if signum is not None:
                    left.update(tracker.others(escaped_only=True))
                    killed += tracker.signal(signum)
                    kill_at = now + kill_grace_s
            elif kill_at is not None and now >= kill_at and exited_at is None:
                killed += tracker.signal(signal.SIGKILL)
                kill_at = now + 3600  # sent; now only wait for the exit
            if now >= next_tick:
                next_tick = now + tick_s
                if exited_at is None:
                    tracker.remember()
                if on_tick is not None:
                    on_tick(last_output)
        if on_tick is not None:
            on_tick(last_output)
        for fd, sink in outputs.items():
            if sink.dropped:
                dropped += sink.dropped
                if not _would_block(2):  # a note to a stderr that stopped being read would wait for it in turn
                    logger.warning(
                        "%d bytes of the output of %s were not delivered to %s: its reader stopped reading",
                        sink.dropped,
                        argv[0],
                        {1: "stdout", 2: "stderr"}.get(fd, f"descriptor {fd}"),
                    )
        if kill_at is not None:
            # The leader is gone, but whatever it left in its group or spawned must not outlive the kill.
            left.update(tracker.others(escaped_only=True))
            killed += tracker.signal(signal.SIGKILL)
            _wait_gone(tracker.known(), kill_grace_s, clock)
        exit_code = proc.wait()
        if kill_at is None:
            left.update(tracker.others())
            if left and not keep_daemons:
                killed += tracker.stop(kill_grace_s, clock)
    finally:
        sel.close()
        for sink in outputs.values():
            sink.close()
        if exit_fd is not None:
            os.close(exit_fd)
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        if proc.returncode is None:  # we are being torn down by an exception: leave nothing behind
            tracker.signal(signal.SIGKILL)
            proc.wait()
        tracker.reap()
    left_behind = [LeftBehind(pid, cmd, stopped=not tracker.running(pid)) for pid, cmd in sorted(left.items())]
    for item in left_behind:
        logger.info(
            "command %s left pid %d (%s) running; %s",
            argv[0],
            item.pid,
            item.cmd,
            "stopped" if item.stopped else "kept",
        )
    return CommandResult(
        argv=list(argv),
        exit_code=exit_code,
        duration_s=clock.monotonic() - started,
        stdout_tail=out_tail.value(),
        stderr_tail=err_tail.value(),
        stdout_bytes=out_tail.total,
        stderr_bytes=err_tail.total,
        timed_out=timed_out,
        interrupted_by=interrupted_by,
        identity=identity,
        killed=sorted(set(killed)),
        left_behind=left_behind,
        output_dropped=dropped,
    )


def _boot_ticks() -> int | None:
    """Now, in clock ticks since boot (the unit of state.runs.start_ticks); None where there is no such clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None or not hasattr(os, "sysconf"):
        return None
    try:
        return int(time.clock_gettime(boottime) * os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _Descendants:
    """What a command started, found every way available: its process group, its descendants as seen at
    each tick (they stay known after calling setsid()), and, in a subreaper, the processes re-parented to
    us since it started (daemons whose parent exited). Each is checked by pid and start time when signalled."""

    def __init__(self, tag: str) -> None:
        self.tag = tag  # the command's COMMAND_TAG: what a child of ours must carry to be adopted
        self.leader = 0
        self.since = 0.0  # the command's start time: anything adopted must be younger
        self.since_ticks: int | None = None  # the same in clock ticks since boot (a stepped clock moves no tick)
        # Set when the command was reaped: clock ticks since boot and wall time read just before. Its pid and
        # group id are free from then on; what starts later may be anyone's.
        self.reaped: tuple[int | None, float] | None = None
        self.procs: dict[int, psutil.Process] = {}
        self.adopted: set[int] = set()
        self.subreaper = is_subreaper()
        self._me = psutil.Process() if self.subreaper else None

    def younger(self, proc: psutil.Process) -> bool:
        """Whether `proc` started no earlier than the command (so it may be the command's): by clock ticks
        since boot where both are known, else by the start time in seconds since the epoch."""
        ticks = start_ticks(proc.pid) if self.since_ticks is not None else None
        if ticks is not None and self.since_ticks is not None:
            return ticks >= self.since_ticks - 1
        return bool(proc.create_time() >= self.since - 0.01)

    def leader_reaped(self, ticks: int | None, wall: float) -> None:
        self.reaped = (ticks, wall)

    def before_reap(self, proc: psutil.Process) -> bool:
        """Whether `proc` started before the command was reaped (so before its pid and group id were free)."""
        if self.reaped is None:
            return True
        ticks, wall = self.reaped
        started = start_ticks(proc.pid) if ticks is not None else None
        if started is not None and ticks is not None:
            return started < ticks  # a tick begun before the reap may have seen a stranger start after it
        return bool(proc.create_time() < wall)

    def remember(self) -> None:
        """Snapshot the command's descendants (and what we adopted), so one that calls setsid() is still known."""
        # A reaped command's pid may be a stranger's now: its children are not the command's (the command's
        # own were re-parented when it ended).
        roots = [self.leader] if self.reaped is None else []
        if self._me is not None:
            with contextlib.suppress(psutil.Error):
                for child in self._me.children():
                    if child.pid == self.leader or child.pid in self.procs:
                        continue
                    with contextlib.suppress(psutil.Error, OSError):
                        if self.younger(child) and self.marked(child):
                            self.adopted.add(child.pid)
                            self.procs[child.pid] = child
                roots += [pid for pid in self.adopted if pid in self.procs]
        for root in roots:
            try:
                for child in psutil.Process(root).children(recursive=True):
                    known = self.procs.get(child.pid)
                    if known is None or known != child:  # new, or its pid reused since (psutil: pid + start)
                        self.procs[child.pid] = child
            except psutil.Error:
                pass

    def marked(self, proc: psutil.Process) -> bool:
        """Whether `proc` carries this command's tag in its environment, so descends from the command (a
        process of another user, or a zombie, cannot be read: not ours to adopt)."""
        return proc.environ().get(COMMAND_TAG) == self.tag

    def known(self) -> list[psutil.Process]:
        return list(self.procs.values())

    def running(self, pid: int) -> bool:
        """Whether the process known by this pid still runs (checked by its start time, not the bare pid)."""
        proc = self.procs.get(pid)
        if proc is None:
            return _alive(pid)
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def others(self, *, escaped_only: bool = False) -> dict[int, str]:
        """Live processes beyond the command itself, with their command lines; `escaped_only`: only those
        that left its process group (daemons), not its ordinary children."""
        self.remember()
        found = {p.pid: p for p in self.procs.values() if p.pid != self.leader}
        if self.reaped is not None or not _alive(self.leader):  # a live leader's group: its descendants, found
            for member in _group_members(self.leader):
                with contextlib.suppress(psutil.Error, OSError):
                    # Younger than the command: its own; and, once it is reaped, started before that or
                    # marked (the group id may have gone to a stranger's group since).
                    if self.younger(member) and (self.before_reap(member) or self.marked(member)):
                        found.setdefault(member.pid, member)
                        self.procs.setdefault(member.pid, member)
        out = {}
        for pid, proc in found.items():
            with contextlib.suppress(psutil.Error, OSError):
                if escaped_only and os.getpgid(pid) == self.leader:
                    continue
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out[pid] = describe(proc)
        return out

    def signal(self, signum: int, *, group: bool = True) -> list[int]:
        """Signal the command's group (while its leader's pid is still ours: not reaped) and every process
        known, each checked by pid and start time."""
        self.remember()
        hit = []
        if group and self.reaped is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.leader, signum)
                hit.append(self.leader)
        for pid, proc in list(self.procs.items()):
            # Checked by start time before signalling, so a pid reused by a stranger is left alone.
            if _send(proc, signum):
                hit.append(pid)
            else:
                del self.procs[pid]
        return hit

    def stop(self, grace_s: float, clock: Clock) -> list[int]:
        """SIGTERM everything left, SIGKILL what is still alive after `grace_s`."""
        # The command is reaped, so its pid (and group id) may be reused: signal only the processes known.
        hit = self.signal(signal.SIGTERM, group=False)
        self._reap()
        if _wait_gone(self.known(), grace_s, clock):
            hit += self.signal(signal.SIGKILL, group=False)
            _wait_gone(self.known(), 1.0, clock)
        return hit

    def _reap(self) -> None:
        for pid in list(self.adopted):
            proc = self.procs.get(pid)
            try:
                if proc is not None and proc != psutil.Process(pid):  # ended, reaped elsewhere, pid reused
                    done = pid
                else:
                    done, _ = os.waitpid(pid, os.WNOHANG)
            except (ChildProcessError, psutil.Error):
                done = pid
            if done:
                self.adopted.discard(pid)

    def reap(self) -> None:
        """Collect the exit status of the command's processes re-parented to us that ended (adopted, or seen
        among its descendants), so no zombie is left in our table. Never another child of ours: its Popen
        would read 0 for whatever status it exited with."""
        self._reap()
        if self._me is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in self._me.children():
                # Only the very process known (pid and start time): one of the command's that ended and was
                # reaped may have passed its pid to a child the runner started since (a sibling's Popen).
                if child.pid == self.leader or self.procs.get(child.pid) != child:
                    continue
                with contextlib.suppress(psutil.Error, ChildProcessError):
                    if child.status() == psutil.STATUS_ZOMBIE and self.younger(child):
                        os.waitpid(child.pid, os.WNOHANG)
