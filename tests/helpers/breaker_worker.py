"""Child process for test_breaker: call a target through its breaker until told to stop.

Usage: breaker_worker.py TARGET OUTCOME SECONDS GO_FILE
OUTCOME is `fail` (every call fails as transient) or `ok`, or phases like `fail:0.3+ok:2` (seconds each,
SECONDS where a phase names none; the counts are then a JSON list, one per phase). Waits for GO_FILE,
then keeps asking for permits; prints the counts of permits granted, probes and refusals as JSON at
the end, and `max_probes_at_once` when PROBE_DIR is set (each probe holds a file there while it runs, across hosts).
When GO_FILE holds a wall-clock time, the phases start at that time (not when this process sees the
file), so every process's phases line up however late each wakes; READY_DIR gets a file per process
once it is connected. Fleet mode comes from the environment (SELFHEAL_DATABASE_URL, SELFHEAL_HOST_ID), as for any user.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from selfheal.core.breaker import BreakerOpen, Breakers
from selfheal.core.config import load_config
from selfheal.state.root import StateRoot


def run_phase(breakers: Breakers, target: str, outcome: str, seconds: float, probe_dir: Path | None) -> dict[str, int]:
    counts = {"granted": 0, "probes": 0, "refused": 0, "max_probes_at_once": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            permit = breakers.acquire(target)
        except BreakerOpen:
            counts["refused"] += 1
            time.sleep(0.002)
            continue
        counts["granted"] += 1
        counts["probes"] += permit.probe
        mine = probe_dir / f"{os.getpid()}-{counts['granted']}" if probe_dir and permit.probe else None
        if mine is not None:
            mine.touch()
            at_once = len(list(mine.parent.iterdir()))
            counts["max_probes_at_once"] = max(counts["max_probes_at_once"], at_once)
        time.sleep(0.003)  # the request itself
        if mine is not None:
            mine.unlink()
        breakers.release(permit, ok=outcome == "ok", error_class=None if outcome == "ok" else "transient")
    return counts


def main() -> None:
    target, outcomes, seconds, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
    config = load_config()
    breakers = Breakers(StateRoot.from_env(), config.breakers, store=config.store)
    probe_dir = Path(os.environ["PROBE_DIR"]) if os.environ.get("PROBE_DIR") else None
    breakers.targets()  # connect (fleet mode) before the start, as a long-running process would have
    if os.environ.get("READY_DIR"):
        (Path(os.environ["READY_DIR"]) / str(os.getpid())).touch()
    while not go.exists():
        time.sleep(0.001)
    try:
        start = float(go.read_text())
    except ValueError:
        start = time.time()
    phases = []
    for phase in outcomes.split("+"):
        outcome, _, length = phase.partition(":")
        end = start + float(length or seconds)
        time.sleep(max(0.0, start - time.time()))
        phases.append(run_phase(breakers, target, outcome, end - time.time(), probe_dir))
        start = end
    print(json.dumps(phases[0] if len(phases) == 1 else phases), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
