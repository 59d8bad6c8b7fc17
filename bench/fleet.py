"""Fleet mode's cost: a model call's breaker and a ledger event, on PostgreSQL against this host's files.

Breaker: one process calls `Breakers.acquire(target)` then `release(permit, ok=True)` N times, the work
a model call adds for its breaker; once with single-host settings (the file under flock, the baseline)
and once in fleet mode (one row per target under SELECT ... FOR UPDATE). Cost per call is wall time / N.

Ledger: one process calls `Ledger.record("retry", ...)` N times; the baseline writes this host's files
(the ledger line and the log line), fleet mode writes the same files and the event to the fleet's table
(one INSERT in autocommit). Rate is events per wall second.

Round trips to the server, which is what fleet mode costs on a quiet machine: a breaker's acquire and
release are one transaction each, two round trips per transaction (state/pg.py), so four per model
call; a ledger event is one.

Each figure is the median of the rounds; both modes run in the same process, alternating, in the same
run. The server is a throwaway cluster on a Unix socket (tests/helpers/postgres.py, fsync off), or the
one SELFHEAL_TEST_DATABASE_URL names; over a network every fleet figure adds the round trips.
Correctness: every fleet event is in the table exactly once, and the breaker ends closed.

    .venv/bin/python bench/fleet.py [--quick] [--json] [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from selfheal.core.breaker import CLOSED, Breakers  # noqa: E402
from selfheal.core.config import Config, load_config  # noqa: E402
from selfheal.core.ledger import Ledger  # noqa: E402
from selfheal.state.root import StateRoot  # noqa: E402

CALLS, ROUNDS = 2_000, 5
QUICK_CALLS, QUICK_ROUNDS = 200, 3


def with_url(config: Config, url: str | None, host: str) -> Config:
    return dataclasses.replace(config, store=dataclasses.replace(config.store, url=url, host_id=host))


def breaker_round(state: StateRoot, config: Config, calls: int) -> float:
    """Seconds per acquire + release."""
    breakers = Breakers(state, config.breakers, store=config.store)
    breakers.release(breakers.acquire("bench-model"), ok=True)  # connect and create the row first
    start = time.perf_counter()
    for _ in range(calls):
        breakers.release(breakers.acquire("bench-model"), ok=True)
    return (time.perf_counter() - start) / calls


def ledger_round(state: StateRoot, config: Config, calls: int, tag: str) -> float:
    """Events per second."""
    ledger = Ledger(state, config)
    ledger.record("start", task="bench")
    start = time.perf_counter()
    for n in range(calls):
        ledger.record("retry", task="bench", error_class="transient", attempt=1, max_attempts=3, seq=n, round=tag)
    return calls / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS} calls x {QUICK_ROUNDS} rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int)
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    calls = args.calls or (QUICK_CALLS if args.quick else CALLS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)

    from helpers.postgres import Cluster, External

    external = os.environ.get("SELFHEAL_TEST_DATABASE_URL")
    server: Cluster | External = External(external) if external else Cluster()
    try:
        url = server.new_database()
        result = run(url, calls, rounds)
    finally:
        server.destroy()
    if args.json:
        print(json.dumps(result))
    else:
        print(render(result))
    return 0 if result["correct"] else 1


def run(url: str, calls: int, rounds: int) -> dict[str, Any]:
    import psycopg

    base = load_config(env={"SELFHEAL_HOME": tempfile.mkdtemp(prefix="selfheal-bench-")})
    local, fleet = with_url(base, None, "bench-host"), with_url(base, url, "bench-host")
    times: dict[str, list[float]] = {"breaker_file": [], "breaker_pg": [], "ledger_file": [], "ledger_pg": []}
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-") as tmp:
        for k in range(rounds):
            state = StateRoot(Path(tmp) / f"round-{k}").ensure()
            times["breaker_file"].append(breaker_round(state, local, calls))
            times["breaker_pg"].append(breaker_round(state, fleet, calls))
            times["ledger_file"].append(ledger_round(state, local, calls, f"file-{k}"))
            times["ledger_pg"].append(ledger_round(state, fleet, calls, f"pg-{k}"))
        closed = Breakers(StateRoot(Path(tmp) / "round-0"), fleet.breakers, store=fleet.store).status("bench-model")
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM selfheal_ledger WHERE event = 'retry'"
        ).fetchone()
    expected = rounds * calls
    correct = got == (expected, expected) and closed["state"] == CLOSED
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "machine": machine(),
        "calls": calls,
        "rounds": rounds,
        "breaker_us_per_call": {
            "file": round(med["breaker_file"] * 1e6, 1),
            "postgresql": round(med["breaker_pg"] * 1e6, 1),
        },
        "breaker_ratio": round(med["breaker_pg"] / med["breaker_file"], 2),
        "ledger_events_per_s": {"file": round(med["ledger_file"]), "file_and_postgresql": round(med["ledger_pg"])},
        "ledger_ratio": round(med["ledger_file"] / med["ledger_pg"], 2),
        "fleet_events": {"expected": expected, "rows": got[0] if got else None, "distinct": got[1] if got else None},
        "correct": correct,
    }


def render(r: dict[str, Any]) -> str:
    rows = [
        [
            "breaker, acquire + release (µs per model call)",
            f"{r['breaker_us_per_call']['file']:.0f}",
            f"{r['breaker_us_per_call']['postgresql']:.0f}",
            f"{r['breaker_ratio']:.1f}x",
        ],
        [
            "ledger, record() (events/s)",
            f"{r['ledger_events_per_s']['file']:,}",
            f"{r['ledger_events_per_s']['file_and_postgresql']:,}",
            f"{r['ledger_ratio']:.1f}x slower",
        ],
    ]
    table = markdown_table(["", "this host's files", "fleet (PostgreSQL)", "fleet vs files"], rows)
    checks = f"{r['fleet_events']['rows']} of {r['fleet_events']['expected']} events in the table, each once"
    head = f"{machine_line()}\n{r['calls']} calls x {r['rounds']} rounds, medians"
    return f"{head}\n\n{table}\n\nChecks: {checks}; correct={r['correct']}"


if __name__ == "__main__":
    sys.exit(main())
