#!/usr/bin/env python3
"""Check that OpenClaw and the work around it are alive: gateway, status files, runs, breakers, state root, disk, GPU.

  health_check.py            one line per check, and the mode: operational, degraded or down
  health_check.py --cron     NO_REPLY when operational, else a summary of at most 5 lines (OpenClaw's cron)
  health_check.py --json     one JSON object: the mode and every check (what status/health.json holds)

Every run writes status/health.json under the state root and self-heal's line in
~/.openclaw/skills/status/self-heal.txt; a change of mode also writes a [HEALTH] line to the ledger and
logs/selfheal.log. No process is touched, unless the gateway watchdog is enabled (health.watchdog.enabled,
off by default): then a gateway found down is restarted with `openclaw gateway restart` (rate-limited, in
the ledger), and a fix record is written when restarts do not help.
Exit codes: 0 operational; 1 degraded (the gateway is down but skills still work, or a check warns);
2 usage or configuration error; 3 down (the gateway is down and nothing shows the skills at work, or the
state root is another user's). Symbolic links found under the state root, and folders open to other users,
warn (degraded).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from selfheal._bootstrap import bootstrap

TYPE_CHECKING = False  # not typing's: the cron check never imports typing (see selfheal/__init__.py)
if TYPE_CHECKING:
    from typing import Any

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.observe.health import CRON_MAX_LINES, NO_REPLY, run_health_check  # noqa: E402
from selfheal.state.inert import inert  # noqa: E402
from selfheal.state.root import StateRoot  # noqa: E402

NOTE_MAX_CHARS = 300  # one watchdog or cron-retry line: what OpenClaw's CLI printed can run to pages


def _note(text: str) -> str:
    """A watchdog or cron-retry line for a terminal or cron's mail: one line, its controls shown, never obeyed.

    It quotes others: the job names `openclaw cron list` gives, what the CLI printed when it failed (a Node
    error of many lines, ESC sequences and all)."""
    text = " ".join(text.split())
    return inert(text if len(text) <= NOTE_MAX_CHARS else text[: NOTE_MAX_CHARS - 1] + "…")


def _with_notes(text: str, notes: list[str], *, cron: bool) -> str:
    """The report's text with the watchdog's and the cron retry's lines; for `--cron`, within CRON_MAX_LINES.

    Under cron they follow the summary's first line (a restart matters more than the checks' details), and
    what does not fit is counted on the last line, as the summary counts the checks it leaves out."""
    if not notes:
        return text
    lines = [] if text == NO_REPLY else text.split("\n")
    if not cron:
        return "\n".join(lines + notes)
    lines = lines[:1] + notes + lines[1:]
    if len(lines) > CRON_MAX_LINES:
        shown = lines[: CRON_MAX_LINES - 1]
        lines = [*shown, f"and {len(lines) - len(shown)} more line(s): health_check.py shows them"]
    return "\n".join(lines)


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
    state = StateRoot.from_env()
    report = run_health_check(state)
    extra: dict[str, Any] = {}
    notes: list[str] = []
    if report.settings.watchdog:  # opt-in; the configuration is loaded only then
        from selfheal.core.config import get_config  # noqa: PLC0415
        from selfheal.heal.watchdog import watch  # noqa: PLC0415

        watched = watch(report, state, get_config(), env=os.environ)
        extra["watchdog"] = watched.to_json()
        if watched.action != "healthy":
            notes.append(_note(f"watchdog: {watched.action}: {watched.detail}"))
    gateway = report.check("gateway")
    if report.settings.cron_retry and gateway is not None and gateway.status == "ok":  # OpenClaw's cron needs it
        from selfheal.core.config import get_config  # noqa: PLC0415
        from selfheal.heal.cron_retry import CronBusy, CronUnavailable, retry_failed_jobs  # noqa: PLC0415

        try:
            retried = retry_failed_jobs(state, get_config(), env=os.environ)
        except CronBusy as exc:  # the other check does it: nothing for cron's mail, said where a person looks
            retried = []
            if not args.cron:
                notes.append(_note(f"cron retry: {exc}"))
        except CronUnavailable as exc:
            retried = []
            notes.append(_note(f"cron retry: {exc}"))
        extra["cron_retry"] = [r.to_json() for r in retried]
        notes += [_note(f"cron retry: {r.job}: {r.detail}") for r in retried if r.action == "retried"]
    if args.json:
        cli.emit_json({**report.to_json(), **extra})
    else:
        text = _with_notes(report.cron_text() if args.cron else report.table(), notes, cron=args.cron)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    return report.exit_code


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
