"""What every script shares: argument conventions, one JSON object on stdout, errors on stderr, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import EXIT_USAGE, SelfHealError

PROG_PREFIX = "self-heal"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line message, and emits a JSON error when --json was asked for."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        if wants_json(sys.argv[1:]):
            emit_json({"ok": False, "error": "usage", "message": message})
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def wants_json(argv: Sequence[str]) -> bool:
    """--json among our own options (not in a command given after `--`)."""
    args = list(argv)
    own = args[: args.index("--")] if "--" in args else args
    return "--json" in own


def emit_json(obj: dict[str, Any]) -> None:
    """Exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, sort_keys=False, default=str) + "\n")
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


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call a script's main(); turn the skill's own errors into a message and their exit code."""
    json_mode = wants_json(sys.argv[1:] if argv is None else argv)
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
