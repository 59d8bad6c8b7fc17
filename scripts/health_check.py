#!/usr/bin/env python3
"""Check that OpenClaw and the work around it are alive: gateway, status files, runs, breakers, state root, disk, GPU.

  health_check.py            one line per check, and the mode: operational, degraded or down
  health_check.py --cron     NO_REPLY when operational, else a summary of at most 5 lines (OpenClaw's cron)
  health_check.py --json     one JSON object: the mode and every check (what status/health.json holds)

Every run writes status/health.json under the state root; a change of mode also writes a [HEALTH] line to
the ledger and logs/selfheal.log. Nothing else is changed and no process is touched.
Exit codes: 0 operational; 1 degraded (the gateway is down but skills still work, or a check warns);
2 usage or configuration error; 3 down (the gateway is down and nothing shows the skills at work, or the
state root is another user's). Symbolic links found under the state root, and folders open to other users,
warn (degraded).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.observe.health import run_health_check  # noqa: E402
from selfheal.state.root import StateRoot  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="health_check.py",
        description=__doc__.split("\n\n")[0],
        epilog="example (system crontab): */5 * * * * .venv/bin/python scripts/health_check.py --cron",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--cron", action="store_true", help="print only NO_REPLY when operational, else at most 5 summary lines"
    )
    output.add_argument("--json", action="store_true", help="print one JSON object with every check")
    args = parser.parse_args(argv)
    report = run_health_check(StateRoot.from_env())
    if args.json:
        cli.emit_json(report.to_json())
    else:
        sys.stdout.write((report.cron_text() if args.cron else report.table()) + "\n")
        sys.stdout.flush()
    return report.exit_code


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
