#!/usr/bin/env python3
"""Run a command under self-heal's retry policy.

Each failure is classified (transient, rate_limit, timeout, resource, format, permanent, auth, fatal,
unknown) from the exit code, the signal and the tail of the output; retryable ones are retried after a
jittered backoff, the rest stop at once. Output streams live. Every attempt is recorded in the ledger.

When it fails for good (retries spent, not retryable, deadline), the notification command of --notify
(or the setting retry.notify) is run with a one-line summary: an argv whose {summary}, {task} and
{command} are filled in, never run through a shell.

One run per --task: a run whose runner was killed (SIGKILL) may leave its command running; the next run
of the task stops it first (or, with --no-kill-orphans, refuses with exit 4 naming its pid). Processes a
command leaves running when it ends or times out (background jobs, daemons that double-fork and call
setsid) are found, reported on stderr and in the JSON (left_behind), and stopped unless --keep-daemons.

Exit codes: 0 succeeded; 2 usage or configuration error (a --cwd that is not a folder, checked before anything
runs), or an unsafe state root (another user's, or a symbolic link planted at the task's lock file); 3 failed
(retries exhausted, not retryable, deadline, interrupted, or the task's lock file could not be created); 4 not
attempted (the task is already running elsewhere, an earlier run's command is still running and
--no-kill-orphans was given, or the --target's circuit breaker is open).
A record that cannot be written (ledger, log, run record, breaker: a planted link, a full or read-only
disk) never stops the command: it runs, one warning on stderr says what was not recorded and why, and
the exit code is what the command earned.
With --json, the command's stdout goes to stderr and stdout holds exactly one JSON object.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.core.config import get_config  # noqa: E402
from selfheal.core.process import StopFlag, become_subreaper  # noqa: E402
from selfheal.core.retrying import Attempt  # noqa: E402
from selfheal.core.runner import RunOutcome, run_with_retry  # noqa: E402
from selfheal.core.runs import OrphanRunning, setting_remedy  # noqa: E402
from selfheal.durable.incident import run_notifier  # noqa: E402


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
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-attempts", type=int, metavar="N", help="attempts for retryable failures (never retries a permanent one)"
    )
    budget.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="retries after the first try, as the source documents count (N + 1 attempts)",
    )
    parser.add_argument(
        "--notify",
        metavar="CMD",
        help="when it fails for good, run CMD (split like a shell line, never run by one) with {summary} "
        "filled in, e.g. --notify 'openclaw message send --text {summary}' (default: retry.notify)",
    )
    parser.add_argument("--cwd", help="run the command in this folder")
    parser.add_argument(
        "--no-kill-orphans",
        action="store_true",
        help="if an earlier run of --task died leaving its command running, exit 4 naming it instead of "
        "stopping it (default: process.kill_orphans)",
    )
    parser.add_argument(
        "--keep-daemons",
        action="store_true",
        help="report processes the command leaves running, but do not stop them (default: process.keep_daemons)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with every attempt on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("command", nargs="*", help="the command, after --")
    return parser, parser.parse_args(argv)


def ending(outcome: RunOutcome) -> str:
    """How the last attempt ended: its exit code, or (none when a signal stopped it) the signal."""
    if outcome.exit_code is not None:
        return f"exit code {outcome.exit_code}"
    if outcome.signal is None:
        return "no exit code"
    timed_out = bool(outcome.attempts and outcome.attempts[-1].get("timed_out"))
    return f"killed by {outcome.signal}" + (" at the timeout" if timed_out else "")


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
    retries = args.retries  # type: ignore[attr-defined]
    if retries is not None and retries < 0:
        parser.error(f"--retries must be >= 0, got {retries}")
    max_attempts = retries + 1 if retries is not None else args.max_attempts  # type: ignore[attr-defined]
    notify_text = args.notify  # type: ignore[attr-defined]
    try:
        notify_argv = shlex.split(notify_text) if notify_text is not None else None
    except ValueError as exc:
        parser.error(f"--notify {notify_text!r}: {exc}")
    if notify_argv is not None and not notify_argv:
        parser.error("--notify needs a command")
    folder = args.cwd  # type: ignore[attr-defined]
    if folder is not None and not os.path.isdir(folder):
        # Checked before anything runs: the child's failed chdir would read as a permanent failure (exit 3).
        why = "is not a folder" if os.path.exists(folder) else "does not exist"
        parser.error(f"--cwd {folder}: {why}")
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
    cli.hurry_on(stop)  # a stalled reader of our stderr must not hold up acting on the signal
    become_subreaper()  # daemons the command starts are re-parented to us, so they can be found and stopped
    try:
        outcome = run_with_retry(
            command,
            task=args.task,  # type: ignore[attr-defined]
            target=args.target,  # type: ignore[attr-defined]
            timeout_s=args.timeout,  # type: ignore[attr-defined]
            deadline_s=args.deadline,  # type: ignore[attr-defined]
            max_attempts=max_attempts,
            cwd=args.cwd,  # type: ignore[attr-defined]
            stdout=sys.stderr.buffer if args.json else sys.stdout.buffer,  # type: ignore[attr-defined]
            stderr=sys.stderr.buffer,
            stop=stop,
            on_attempt=progress,
            kill_orphans=False if args.no_kill_orphans else None,  # type: ignore[attr-defined]
            keep_daemons=True if args.keep_daemons else None,  # type: ignore[attr-defined]
        )
    except OrphanRunning as exc:
        if not args.no_kill_orphans:  # type: ignore[attr-defined]
            raise
        remedy = "run without --no-kill-orphans"
        if not get_config().process.kill_orphans:  # then the setting keeps it off too
            remedy = f"{setting_remedy(get_config().files)} and {remedy}"
        raise exc.told(remedy) from None
    notified = None
    template = notify_argv if notify_argv is not None else list(get_config().retry.notify)
    if template and outcome.outcome == "failed":
        summary = (
            f"self-heal: {args.task or shlex.join(command)[:80]} failed after {len(outcome.attempts)} attempt(s) "  # type: ignore[attr-defined]
            f"({outcome.stop_reason}): {outcome.error_class}, {ending(outcome)}: {outcome.reason}"
        )[:500]
        values = {"summary": summary, "task": args.task or "", "command": shlex.join(command)}  # type: ignore[attr-defined]
        notified = run_notifier(template, values, timeout_s=get_config().workflows.notify_timeout_s)
    if args.json:  # type: ignore[attr-defined]
        cli.emit_json({**outcome.to_json(), **({"notified": notified} if notified is not None else {})})
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
                f"{outcome.error_class}, {ending(outcome)}"
            )
    return outcome.exit_status


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
