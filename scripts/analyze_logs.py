#!/usr/bin/env python3
"""Report on failures: the skill's ledger and log, the source documents' log lines, OpenClaw's own logs.

With no PATH, reads the ledger of the last `analysis.since_s` (24 h) and OpenClaw's logs (/tmp/openclaw,
or logging.file of ~/.openclaw/openclaw.json); each PATH (plain or .gz, `-` for stdin) is read whole
unless --since/--until are given. Totals, success rate, retries per task, top failure reasons, per model
and per target, breaker trips per hour, fallback rate, slowest tasks; OpenClaw's failed agent turns (per
turn, not per log line), exhausted fallback chains (each model tried, with its status and class) and failed
cron jobs (per job, with OpenClaw's diagnosis); unclassified errors with a suggested rule; the alert rules,
OpenClaw's own failures included (thresholds `analysis.openclaw_*`).

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
from selfheal.errors import EXIT_OK, EXIT_PROBLEMS  # noqa: E402
from selfheal.observe.logreport import analyze, parse_when, render_text  # noqa: E402
from selfheal.state.root import validate_id  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="analyze_logs.py",
        description=__doc__.split("\n\n")[0],
        epilog="examples: analyze_logs.py --since 6h | analyze_logs.py /var/log/app/openclaw.log.gz --task doc-gen-587",
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="log files to read (default: the ledger and OpenClaw's logs)"
    )
    parser.add_argument("--since", metavar="WHEN", help="24h, 30m, 7d, an ISO date or time, or all")
    parser.add_argument("--until", metavar="WHEN", help="the same forms; default now (also ends P3's recent period)")
    parser.add_argument("--task", metavar="ID", help="only this task's events (and OpenClaw cron jobs of that name)")
    parser.add_argument(
        "--host", metavar="NAME", help="fleet mode: only this host's events from the fleet's ledger (SELFHEAL_HOST_ID)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    cli.setup_logging()
    now = time.time()
    since = parse_when(args.since, now=now) if args.since else None
    until = parse_when(args.until, now=now, flag="--until") if args.until else None
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
            cli.say(f"could not read {item['path']}: {item['error']}")
    if args.json:
        cli.emit_json(report)
    else:
        sys.stdout.write(render_text(report))
    return EXIT_PROBLEMS if report["alerts"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
