#!/usr/bin/env python3
"""Report on failures: the skill's ledger and log, the source documents' log lines, OpenClaw's own logs.

With no PATH, reads the ledger of the last `analysis.since_s` (24 h) and OpenClaw's logs (/tmp/openclaw,
or logging.file of ~/.openclaw/openclaw.json); each PATH (plain or .gz, `-` for stdin) is read whole
unless --since/--until are given. Totals, success rate, retries per task, top failure reasons, per model
and per target, breaker trips per hour, fallback rate, slowest tasks; OpenClaw's failed agent turns (per
turn, not per log line), exhausted fallback chains (each model tried, with its status and class) and failed
cron jobs (per job, with OpenClaw's diagnosis); unclassified errors with a suggested rule; the alert rules,
OpenClaw's own failures included (thresholds `analysis.openclaw_*`).

A --since before the year 1000 (`800000d`) reads as `all`: no log line is older, and the scanners compare
four-digit years. A --until that far back, or a duration too long to be a number, is a usage error. Likewise a
--until after the year 9999 (`9999-12-31T23:59:59-01:00`) reads as none, and a --since that late is a usage error.

Exit codes: 0 no alert; 1 an alert was raised; 2 usage (a bad flag or time, a PATH that cannot be read).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.core.config import get_config  # noqa: E402
from selfheal.errors import EXIT_OK, EXIT_PROBLEMS, UsageError  # noqa: E402
from selfheal.observe.logreport import analyze, parse_when, render_text  # noqa: E402
from selfheal.state.inert import inert  # noqa: E402
from selfheal.state.root import validate_id  # noqa: E402

# 1000-01-01T00:00:00Z (epoch seconds): the first time with a four-digit year, which the log scanners' time
# bounds are written in; before it they could not be built (a negative year raised ValueError).
EARLIEST_TS = -30_610_224_000
# 10000-01-01T00:00:00Z: the first time with a five-digit year, where those bounds end (the Python fast path read
# a --since there as the year 1000: every line in the window; a --until, none).
LATEST_TS = 253_402_300_800


def _when(text: str, *, now: float, flag: str) -> int | None:
    """--since/--until as epoch seconds (None: unbounded); one older than EARLIEST_TS is `all` for --since and
    a usage error for --until (nothing could be before it); one at LATEST_TS or later is none for --until and a
    usage error for --since (nothing could be after it)."""
    try:
        ts = parse_when(text, now=now, flag=flag)
    except OverflowError:  # a duration of hundreds of digits: float infinity
        ts = EARLIEST_TS - 1
    if ts is None or EARLIEST_TS <= ts < LATEST_TS:
        return ts
    if ts >= LATEST_TS:
        if flag == "--until":
            return None
        raise UsageError(
            f"{flag} {text!r}: after the year 9999, so nothing could be in the window; use an earlier time"
        )
    if flag == "--since":
        return None
    raise UsageError(f"{flag} {text!r}: before the year 1000, so nothing could be in the window; use a later time")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="analyze_logs.py",
        description=__doc__.split("\n\n")[0],
        epilog="examples: analyze_logs.py --since 6h | analyze_logs.py /var/log/app/openclaw.log.gz --task doc-gen-587",
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="log files to read (default: the ledger and OpenClaw's logs)"
    )
    parser.add_argument(
        "--since", metavar="WHEN", help="24h, 30m, 7d, an ISO date or time, or all (as is one before the year 1000)"
    )
    parser.add_argument("--until", metavar="WHEN", help="the same forms; default now (also ends P3's recent period)")
    parser.add_argument("--task", metavar="ID", help="only this task's events (and OpenClaw cron jobs of that name)")
    parser.add_argument(
        "--host", metavar="NAME", help="fleet mode: only this host's events from the fleet's ledger (SELFHEAL_HOST_ID)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    cli.setup_logging()
    now = time.time()
    since = _when(args.since, now=now, flag="--since") if args.since else None
    until = _when(args.until, now=now, flag="--until") if args.until else None
    if args.task is not None:
        validate_id(args.task)
    if args.host is not None:
        validate_id(args.host, "host")
    report = analyze(
        args.paths or None,
        since=since,
        until=until,
        task=args.task,
        config=get_config(),
        now=now,
        default_since=args.since is None,
        host=args.host,
    )
    for item in report["inputs"]:
        if item.get("error") and not args.json:
            cli.say(inert(f"could not read {item['path']}: {item['error']}"))
    if args.json:
        cli.emit_json(report)
    else:
        sys.stdout.write(render_text(report))
    return EXIT_PROBLEMS if report["alerts"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
