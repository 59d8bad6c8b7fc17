#!/usr/bin/env python3
"""Run a command under self-heal's retry policy.

Each failure is classified (transient, rate_limit, timeout, resource, format, permanent, auth, fatal,
unknown) from the exit code, the signal and the tail of the output; retryable ones are retried after a
jittered backoff, the rest stop at once. Output streams live. Every attempt is recorded in the ledger.

Exit codes: 0 succeeded; 2 usage or configuration error; 3 failed (retries exhausted, not retryable,
deadline, interrupted); 4 not attempted (the task is already running elsewhere, or the --target's
circuit breaker is open).
With --json, the command's stdout goes to stderr and stdout holds exactly one JSON object.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.core.process import StopFlag  # noqa: E402
from selfheal.core.retrying import Attempt  # noqa: E402
from selfheal.core.runner import run_with_retry  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> tuple[cli.ArgumentParser, object]:
    parser = cli.ArgumentParser(
        prog="retry_run.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: retry_run.py --task nightly-report --timeout 600 -- python3 report.py --day today",
    )
    parser.add_argument("--task", help="task id, recorded with every attempt; one run per task at a time")
    parser.add_argument(
        "--target", help="what the command talks to (a service name): its circuit breaker guards every attempt"
    )
    parser.add_argument(
        "--timeout",
        type=cli.seconds,
        metavar="S",
        help="seconds per attempt; the whole process group is killed after it",
    )
    parser.add_argument(
        "--deadline",
        type=cli.seconds,
        metavar="S",
        help="seconds for the whole run, waits included (default: retry.deadline_s)",
    )
    parser.add_argument(
        "--max-attempts", type=int, metavar="N", help="attempts for retryable failures (never retries a permanent one)"
    )
    parser.add_argument("--cwd", help="run the command in this folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every attempt on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("command", nargs="*", help="the command, after --")
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_args(argv)
    command = list(args.command)  # type: ignore[attr-defined]
    if not command:
        parser.error("no command given; put it after --, e.g. retry_run.py -- curl -fsS https://example.com")
    for name in ("timeout", "deadline"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be > 0 seconds, got {value}")
    if args.max_attempts is not None and args.max_attempts < 1:  # type: ignore[attr-defined]
        parser.error(f"--max-attempts must be >= 1, got {args.max_attempts}")  # type: ignore[attr-defined]
    cli.setup_logging()
    quiet = args.quiet or args.json  # type: ignore[attr-defined]

    def progress(attempt: Attempt) -> None:
        if quiet or attempt.error_class is None:
            return
        what = f"{attempt.error_class} ({attempt.reason})"
        if attempt.delay_s is not None:
            cli.say(
                f"attempt {attempt.number}/{attempt.max_attempts} failed: {what}; retrying in {attempt.delay_s:.1f}s"
            )
        else:
            cli.say(f"attempt {attempt.number} failed: {what}")

    stop = StopFlag()
    stop.install()
    outcome = run_with_retry(
        command,
        task=args.task,  # type: ignore[attr-defined]
        target=args.target,  # type: ignore[attr-defined]
        timeout_s=args.timeout,  # type: ignore[attr-defined]
        deadline_s=args.deadline,  # type: ignore[attr-defined]
        max_attempts=args.max_attempts,  # type: ignore[attr-defined]
        cwd=args.cwd,  # type: ignore[attr-defined]
        stdout=sys.stderr.buffer if args.json else sys.stdout.buffer,  # type: ignore[attr-defined]
        stderr=sys.stderr.buffer,
        stop=stop,
        on_attempt=progress,
    )
    if args.json:  # type: ignore[attr-defined]
        cli.emit_json(outcome.to_json())
    elif not quiet:
        n = len(outcome.attempts)
        if outcome.ok:
            if n > 1:
                cli.say(f"succeeded on attempt {n} after {outcome.duration_s:.1f}s")
        elif outcome.outcome == "not_attempted":
            cli.say(f"not attempted: {outcome.reason}")
        elif outcome.outcome == "interrupted":
            cli.say(f"stopped: {outcome.reason}; the command was terminated")
        else:
            cli.say(
                f"gave up after {n} attempt{'s' if n != 1 else ''} ({outcome.stop_reason}): "
                f"{outcome.error_class}, exit code {outcome.exit_code}"
            )
    return outcome.exit_status


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
