"""What every script shares: argument conventions, one JSON object on stdout, errors on stderr, exit codes.

While a script's main() runs, its stdout and stderr (text and `.buffer` alike, so also the output of the
commands it streams) pass through the process's redactor line by line: nothing it prints, whatever
printed it, shows a secret. A reader that goes away (`tasks.py list | head`) ends the output quietly;
the script finishes as it would have and exits with its usual code. A reader that stops reading (cron's
`2>&1 | mailer` stuck, a frozen gateway) holds a script's diagnostics up at most `STALL_S` (its stdout too,
in a script that handles SIGTERM itself), and not at all once it is stopping (`hurry_on`, Ctrl-C): what it
does not take is dropped, and said with the next line it does.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .errors import EXIT_FAILED, EXIT_USAGE, SelfHealError
from .state.inert import inert_json
from .state.redact import JAMMED_S, OUTPUT_LOCK, LineRedactor, nonblocking_twin, reader_may_stall
from .state.redact import active as active_redactor

TYPE_CHECKING = False  # not typing's: see selfheal/__init__.py
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Protocol, TextIO

    class Stopping(Protocol):
        """What `hurry_on` watches: core.process.StopFlag (not imported here: 20 ms every script would pay)."""

        @property
        def signum(self) -> int | None: ...

        @property
        def fileno(self) -> int: ...


PROG_PREFIX = "self-heal"
# Seconds one of our own diagnostic lines (stderr; stdout too in a script that handles SIGTERM itself) waits
# for a reader of our pipe, socket or terminal that takes nothing at all. A live reader (a shell pipeline,
# cron's mailer, the gateway) takes a pipe's worth far sooner, so a slow one still gets every line; one that
# takes nothing this long has stopped (hung, SIGSTOPped, a terminal held by Ctrl-S), and waiting on would
# hold what the script does next (the next attempt, acting on a signal, its exit) for it. It bounds each
# stretch without progress, not a line, and a reader found stalled is not waited for again until it takes
# something.
STALL_S = 2.0
_PIPE_BUF = select.PIPE_BUF  # bytes: one write this size to a pipe that polls writable never waits
_POLL_SLICE_MS = 200  # the longest one wait for a reader goes without Python looking for a signal
_stop: Stopping | None = None  # set by hurry_on: once it is set, our lines wait for no reader
_interrupted = False  # Ctrl-C ended main(): its last words wait for no reader either


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized as shutil.get_terminal_size would size it, without importing shutil:
    argparse imports it (and with it zlib, bz2 and lzma) for every parser it builds, help asked or not,
    and the cron health check pays for every module it loads."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_columns(fallback: int = 80) -> int:
    """$COLUMNS, else the terminal's width, else `fallback` (shutil.get_terminal_size's rule)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or fallback


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line message, and emits a JSON error when --json was asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        if wants_json(sys.argv[1:]):
            emit_json({"ok": False, "error": "usage", "message": message, "exit": EXIT_USAGE})
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def seconds(text: str) -> float:
    """argparse type of a duration: a finite number of seconds above 0 (nan and inf would switch it off)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds (a finite number), got {text!r}")
    return value


def finite(text: str) -> float:
    """argparse type of a plain number: finite (not nan, not inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def wants_json(argv: Sequence[str]) -> bool:
    """--json among our own options (not in a command given after `--`)."""
    args = list(argv)
    own = args[: args.index("--")] if "--" in args else args
    return "--json" in own


def emit_json(obj: dict[str, Any]) -> None:
    """Exactly one JSON object on stdout, every string in it redacted."""
    clean = active_redactor().obj(obj)
    text = json.dumps(clean, ensure_ascii=False, sort_keys=False, default=str)
    # No control from a log reaches a terminal (the one-byte CSI among them), and the output is strict UTF-8.
    sys.stdout.write(inert_json(text) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """A diagnostic line for people, on stderr."""
    sys.stderr.write(f"{PROG_PREFIX}: {message}\n")
    sys.stderr.flush()


def hurry_on(stop: Stopping) -> None:
    """From the moment `stop` is set (SIGTERM, Ctrl-C routed to a StopFlag), the script's own lines go only
    as far as their reader takes them at once: a stalled reader must not keep a stopping script from
    stopping. A wait already under way for the reader ends when the signal comes."""
    global _stop  # noqa: PLW0603 - one stop flag per process, as there is one stderr
    _stop = stop


def setup_logging(verbose: bool = False) -> None:
    import logging  # noqa: PLC0415 - here, not at the top: 10 ms a cron script that never logs need not pay

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=f"{PROG_PREFIX}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


class RedactedBinary:
    """A binary output stream whose bytes reach the real one redacted, a whole line at a time.

    To a pipe, socket or terminal, the lines are written straight to the descriptor, each piece only after
    poll() says the reader has room for it (at most PIPE_BUF, under OUTPUT_LOCK), so a reader that stopped
    reading costs a wait of at most `stall_s` and never a write that blocks: a blocked write would not act on
    a signal (Python retries it), and bytes left in `raw`'s BufferedWriter would block Python's flush of it
    at exit. O_NONBLOCK is no option: the file description is shared with the shell and its other processes.
    A terminal is written through a description of its own that is non-blocking (`nonblocking_twin`): one
    that polls writable may have a single byte of room.
    Nothing is kept between writes (what is not taken is dropped, counted in `dropped`), so the order of what
    arrives holds also against the command output that core.process writes to the same descriptor.

    A write to a file or device that fails (ENOSPC on a full disk, EFBIG, EIO) is no reader going away: the
    output is incomplete, and `failed` keeps why, for run_main to say.

    `stall_s` None (stdout: the script's result, not a diagnostic): no bound while SIGTERM simply ends the
    script and Ctrl-C interrupts the wait (`analyze_logs.py | less`, a person on the first page for a
    minute, gets every line); STALL_S once the script handles SIGTERM itself and must stay responsive."""

    def __init__(self, raw: BinaryIO, *, stall_s: float | None = STALL_S) -> None:
        self.raw = raw
        self.broken = False
        self.stall_s = stall_s
        self.dropped = 0  # bytes of our lines a reader that stopped reading never got
        self.failed: OSError | None = None  # why a write to a file or device failed: the output is incomplete
        self._lines = LineRedactor()
        try:
            fd = raw.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream: it cannot stall
            fd = -1
        self._fd = fd if fd >= 0 and reader_may_stall(fd) else None
        self._ready = select.poll()  # whether the reader has room now (built once: it is asked for every line)
        self._out = self._fd  # where the pieces are written: the descriptor, or a terminal's non-blocking twin
        if self._fd is not None:
            self._ready.register(self._fd, select.POLLOUT)
            twin = nonblocking_twin(self._fd)
            self._out = self._fd if twin is None else twin
        self._stalled = False  # the reader took nothing for stall_s: not waited for until it takes again
        self._unsaid = 0  # bytes dropped that no note has told the reader about yet
        self._midline = False  # what the reader last got ends inside a line
        self._lock = threading.RLock()  # one line at a time, whole, across threads (a heartbeat's warning)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        out = self._lines.feed(bytes(data).decode("utf-8", "surrogateescape"))
        if out:
            self._emit(out)
        return len(data)

    def flush(self) -> None:
        """Pushes out the lines already redacted; a partial line waits for its end (or for `finish`)."""
        if not self.broken and self._fd is None:  # to a pipe, socket or terminal each line went out at once
            try:
                self.raw.flush()
            except (OSError, ValueError) as exc:
                self._lost(exc)

    def finish(self) -> None:
        rest = self._lines.finish()
        if rest:
            self._emit(rest)
        self.flush()

    def release(self) -> None:
        """Close the terminal's non-blocking twin, if one was opened (the stream is no longer written)."""
        if self._out is not None and self._out != self._fd:
            with contextlib.suppress(OSError):
                os.close(self._out)
        self._out = self._fd

    def _emit(self, text: str) -> None:
        if self.broken:
            return
        data = text.encode("utf-8", "surrogateescape")
        try:
            if self._fd is None:
                self.raw.write(data)
            else:
                self._deliver(self._fd, data)
        except (OSError, ValueError) as exc:
            self._lost(exc)

    def _deliver(self, fd: int, data: bytes) -> None:
        """Write `data` to the reader as it takes it; what it does not take in time is dropped, and the next
        line that gets through is preceded by a note saying how much."""
        with self._lock:
            head = b""
            if self._unsaid:
                note = (
                    f"{PROG_PREFIX}: WARNING: {self._unsaid} bytes of self-heal's own messages were not delivered: "
                    "the reader of this stream stopped reading\n"
                )
                head = (b"\n" if self._midline else b"") + note.encode()
            if head:
                data = head + data
            sent = self._send(fd, data)
            if sent >= len(head):
                self._unsaid = 0
            lost = len(data) - max(sent, len(head))
            self._unsaid += lost
            self.dropped += lost
            if sent:
                self._midline = data[sent - 1 : sent] != b"\n"

    def _send(self, fd: int, data: bytes) -> int:
        """Bytes of `data` written: all of it unless the reader took nothing for `stall_s` (or had already
        stalled), or the script is stopping (hurry_on) and the reader does not take it at once."""
        stop = _stop
        waiter: select.poll | None = None  # the reader's room, or the stop signal: whichever comes first
        pause = select.poll()  # the stop signal alone: the wait when the room polled is too little after all
        since: float | None = None  # when the reader was first found without room since it last took some
        out = fd if self._out is None else self._out
        sent = 0
        while sent < len(data):
            jammed = False  # polled writable, yet nothing fit (a terminal with one byte of room for a CR LF)
            with OUTPUT_LOCK:  # core.process._Sink polls and writes the same descriptor: never between the two
                if self._ready.poll(0):  # also POLLERR, POLLHUP: then the write says why (EPIPE)
                    try:
                        sent += os.write(out, data[sent : sent + _PIPE_BUF])
                    except BlockingIOError:
                        jammed = True
                    else:
                        since = None
                        self._stalled = False
                        continue
            if self._stalled or _interrupted or (stop is not None and stop.signum is not None):
                break
            now = time.monotonic()
            since = now if since is None else since
            bound = self.stall_s
            if bound is None and callable(signal.getsignal(signal.SIGTERM)):  # a StopFlag's, say: not ended by it
                bound = STALL_S
            left = None if bound is None else since + bound - now
            if left is not None and left <= 0:
                self._stalled = True
                break
            if waiter is None:
                waiter = select.poll()
                waiter.register(fd, select.POLLOUT)
                if stop is not None:
                    waiter.register(stop.fileno, select.POLLIN)
                    pause.register(stop.fileno, select.POLLIN)
            # In slices: a signal that comes after Python last looked for one and before poll() starts does not
            # interrupt it (its handler, Ctrl-C's KeyboardInterrupt, runs only when Python looks again), so an
            # unbounded poll() could outlast the Ctrl-C meant to end it.
            slice_ms = _POLL_SLICE_MS if left is None else min(_POLL_SLICE_MS, max(1, math.ceil(left * 1000)))
            # Jammed, the descriptor polls writable at once: a short pause instead, or the wait would spin.
            poller, slice_ms = (pause, min(slice_ms, math.ceil(JAMMED_S * 1000))) if jammed else (waiter, slice_ms)
            for ready_fd, events in poller.poll(slice_ms):
                if ready_fd != fd and events & select.POLLNVAL:  # the stop flag was closed: nothing to wait on
                    waiter.unregister(ready_fd)
                    pause.unregister(ready_fd)
        return sent

    def _lost(self, exc: OSError | ValueError) -> None:
        """A write failed. To a pipe, socket or terminal: the reader went away (EPIPE, a hang-up), and the rest
        goes nowhere, quietly. To a file or device: the output is incomplete (ENOSPC, EFBIG, EIO), which is kept
        in `failed`; the rest goes nowhere either. EBADF or ValueError: the stream was closed under us."""
        if self._fd is None and isinstance(exc, OSError) and exc.errno != errno.EBADF and self.failed is None:
            self.failed = exc
        self._gone()

    def _gone(self) -> None:
        """The reader went away: the rest of the output goes nowhere, silently (also at interpreter exit)."""
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.raw.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class RedactedText:
    """sys.stdout or sys.stderr, redacted: text goes through the same line redactor as `.buffer`."""

    def __init__(self, original: TextIO, *, stall_s: float | None = STALL_S) -> None:
        self.original = original
        self.buffer = RedactedBinary(original.buffer, stall_s=stall_s)

    def write(self, text: str) -> int:
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = text.encode("utf-8", "replace")
        self.buffer.write(data)
        return len(text)

    def flush(self) -> None:
        self.buffer.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


@contextlib.contextmanager
def redacted_streams() -> Iterator[None]:
    """sys.stdout and sys.stderr pass through the redactor while this lasts."""
    saved = sys.stdout, sys.stderr
    wrapped: list[RedactedText] = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, RedactedText) or not hasattr(stream, "buffer"):
            continue
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            stream.flush()
        redacted = RedactedText(stream, stall_s=None if name == "stdout" else STALL_S)
        wrapped.append(redacted)
        setattr(sys, name, redacted)
    try:
        yield
    finally:
        for redacted in wrapped:
            redacted.buffer.finish()
            redacted.buffer.release()
        sys.stdout, sys.stderr = saved


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call a script's main() with redacted output; turn the skill's own errors into a message and their
    exit code, and a closed stdout into a quiet end."""
    json_mode = wants_json(sys.argv[1:] if argv is None else argv)
    # The settings' redactor is installed when a script loads them (get_config); until then, the default.
    with redacted_streams():
        return _delivered(_outcome(main, argv, json_mode))


def _delivered(code: int) -> int:
    """`code`, once the script's stdout is written out; if that failed (a file on a full disk), one line saying
    so on stderr and 3 (failed), unless `code` says already that the run was not a success."""
    out = sys.stdout
    if not isinstance(out, RedactedText):
        return code
    out.buffer.finish()
    failed = out.buffer.failed
    if failed is None:
        return code
    say(
        f"standard output could not be written ({failed.strerror or failed}): what this run printed there is "
        "incomplete; free space where it goes, or send it elsewhere"
    )
    return code or EXIT_FAILED


def _outcome(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None, json_mode: bool) -> int:
    """main()'s exit code, or the one its error or interruption calls for (said on stderr)."""
    try:
        return main(argv)
    except SelfHealError as exc:
        if json_mode:
            emit_json({"ok": False, "error": type(exc).__name__, "message": str(exc), "exit": exc.exit_code})
        say(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        global _interrupted  # noqa: PLW0603
        _interrupted = True
        say("interrupted")
        return 130
    except BrokenPipeError:
        return 0  # written straight to a closed pipe: there is no one left to tell
    except Exception:
        import traceback  # noqa: PLC0415 - 2 ms at every start; only a crash needs it

        sys.stderr.write(traceback.format_exc())  # a bug: shown (redacted) for the report
        if json_mode:
            emit_json({"ok": False, "error": "InternalError", "message": "a bug in self-heal", "exit": 3})
        say("internal error (a bug in self-heal, not in what it ran): the traceback above is for the report")
        # 3, failed: not 1, which says the script ran and found problems (an alert, a degraded health)
        # and a cron wrapper or agent would act on as one.
        return 3
