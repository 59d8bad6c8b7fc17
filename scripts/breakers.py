#!/usr/bin/env python3
"""Show or reset the circuit breakers that self-heal keeps per target (model endpoints, services).

  breakers.py                 every breaker: state, failures, open until
  breakers.py show TARGET     one breaker in full
  breakers.py reset TARGET    close it and forget its history (after you fixed the cause)
  breakers.py reset --all
  breakers.py trip TARGET [--for SECONDS]   force it open (chaos testing: does everything fail over or wait?)
                              at most 366 days (31622400 s)

Exit codes: 0 ok (all closed, or reset or trip done); 1 at least one breaker is open or half-open; 2 usage (a
target with no breaker for show or reset: the message names the close ones; a --for out of range).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.clock import utc_iso  # noqa: E402
from selfheal.core.breaker import Breakers, UnknownTarget  # noqa: E402
from selfheal.core.config import get_config  # noqa: E402
from selfheal.core.ledger import Ledger  # noqa: E402
from selfheal.errors import EXIT_OK, EXIT_PROBLEMS  # noqa: E402
from selfheal.state.breakers import CLOSED  # noqa: E402
from selfheal.state.root import StateRoot, validate_id  # noqa: E402

# The longest `trip --for`: a year and a day is already "until someone resets it"; far beyond that, the open
# time stops being a date (1e300 s overflowed every reader of the breaker).
MAX_TRIP_S = 366 * 86_400


def _line(view: dict[str, Any]) -> str:
    """`qwen3-4b: open until 2026-11-21T03:13:00Z (trip 2: 5 consecutive failures (transient))`."""
    line = f"{view['target']}: {view['state'].replace('_', '-')}"
    if view["state"] == CLOSED:
        failures = view.get("consecutive_failures")
        return line + (f", {failures} recent failure(s)" if failures else "")
    if view.get("open_until"):
        line += f" until {utc_iso(view['open_until'])}"
    return line + f" (trip {view.get('trips')}: {view.get('reason')})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="breakers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", choices=["list", "show", "reset", "trip"], default="list")
    parser.add_argument("target", nargs="?", help="the breaker's target name")
    parser.add_argument("--all", action="store_true", help="with reset: every breaker")
    parser.add_argument(
        "--for",
        dest="open_for",
        type=float,
        metavar="SECONDS",
        help="with trip: how long it stays open (default: breakers.open_s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.open_for is not None and (args.action != "trip" or not args.open_for > 0):
        parser.error("--for goes with trip and is a number of seconds above 0")
    if args.open_for is not None and not args.open_for <= MAX_TRIP_S:
        parser.error(
            f"--for {args.open_for:g}: at most {MAX_TRIP_S} seconds (366 days); reset the breaker by hand sooner"
        )
    if args.action in ("show", "reset", "trip") and not (args.target or (args.action == "reset" and args.all)):
        parser.error(f"{args.action} needs a TARGET" + (" or --all" if args.action == "reset" else ""))
    cli.setup_logging()
    config = get_config()
    state = StateRoot.from_env()
    breakers = Breakers(state, config.breakers, ledger=Ledger(state, config))

    if args.action == "trip":
        breakers.trip(args.target, args.open_for, reason="forced open by breakers.py trip")
        view = breakers.status(args.target)
        if args.json:
            cli.emit_json({"ok": True, "tripped": args.target, "breaker": view})
        else:
            cli.say(_line(view))
        return EXIT_OK

    if args.action == "reset":
        targets = breakers.targets() if args.all else [args.target]
        for target in targets:
            breakers.reset(target, existing_only=True)
        if args.json:
            cli.emit_json({"ok": True, "reset": targets})
        else:
            cli.say(f"reset {len(targets)} breaker(s): {', '.join(targets) or 'none'}")
        return EXIT_OK

    if args.action == "show":
        # status() of a target with no breaker would write a fresh closed one: a typo would read as healthy.
        known = breakers.targets()
        if validate_id(args.target, "target") not in known:
            raise UnknownTarget(args.target, known)
    targets = [args.target] if args.action == "show" else breakers.targets()
    views = [breakers.status(t) for t in targets]
    not_closed = [v["target"] for v in views if v["state"] != CLOSED]
    if args.json:
        cli.emit_json({"ok": not not_closed, "breakers": views})
    elif args.action == "show":
        for key, value in views[0].items():
            print(f"{key}: {_shown(key, value)}")
    elif not views:
        print("no breakers yet")
    else:
        for view in views:
            print(_line(view))
    return EXIT_PROBLEMS if not_closed else EXIT_OK


_TIMES = ("opened_at", "open_until", "last_change", "ejected_until")


def _shown(key: str, value: object) -> str:
    """A field of `show` as a person reads it: times in UTC (the JSON keeps the epoch seconds), none as -."""
    if value is None:
        return "-"
    if key in _TIMES and isinstance(value, (int, float)):
        return utc_iso(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
