"""What every script shares: argument conventions, one JSON object on stdout, errors on stderr, exit codes.

While a script's main() runs, its stdout and stderr (text and `.buffer` alike, so also the output of the
commands it streams) pass through the process's redactor line by line: nothing it prints, whatever
printed it, shows a secret. A reader that goes away (`tasks.py list | head`) ends the output quietly;
the script finishes as it would have and exits with its usual code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence

from .errors import EXIT_USAGE, SelfHealError
from .state.inert import inert_json
from .state.redact import LineRedactor
from .state.redact import active as active_redactor

TYPE_CHECKING = False  # not typing's: see selfheal/__init__.py
if TYPE_CHECKING:
    from typing import Any, BinaryIO, TextIO

PROG_PREFIX = "self-heal"


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


def setup_logging(verbose: bool = False) -> None:
    import logging  # noqa: PLC0415 - here, not at the top: 10 ms a cron script that never logs need not pay

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=f"{PROG_PREFIX}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


class RedactedBinary:
    """A binary output stream whose bytes reach the real one redacted, a whole line at a time."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.broken = False
        self._lines = LineRedactor()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        out = self._lines.feed(bytes(data).decode("utf-8", "surrogateescape"))
        if out:
            self._emit(out)
        return len(data)

    def flush(self) -> None:
        """Pushes out the lines already redacted; a partial line waits for its end (or for `finish`)."""
        if not self.broken:
            try:
                self.raw.flush()
            except (BrokenPipeError, ValueError):
                self._gone()

    def finish(self) -> None:
        rest = self._lines.finish()
        if rest:
            self._emit(rest)
        self.flush()

    def _emit(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.raw.write(text.encode("utf-8", "surrogateescape"))
        except (BrokenPipeError, ValueError):
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

    def __init__(self, original: TextIO) -> None:
        self.original = original
        self.buffer = RedactedBinary(original.buffer)

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
        redacted = RedactedText(stream)
        wrapped.append(redacted)
        setattr(sys, name, redacted)
    try:
        yield
    finally:
        for redacted in wrapped:
            redacted.buffer.finish()
        sys.stdout, sys.stderr = saved


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call a script's main() with redacted output; turn the skill's own errors into a message and their
    exit code, and a closed stdout into a quiet end."""
    json_mode = wants_json(sys.argv[1:] if argv is None else argv)
    # The settings' redactor is installed when a script loads them (get_config); until then, the default.
    with redacted_streams():
        try:
            return main(argv)
        except SelfHealError as exc:
            if json_mode:
                emit_json({"ok": False, "error": type(exc).__name__, "message": str(exc), "exit": exc.exit_code})
            say(str(exc))
            return exc.exit_code
        except KeyboardInterrupt:
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
