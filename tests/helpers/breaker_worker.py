"""Child process for test_breaker: call a target through its breaker until told to stop.

Usage: breaker_worker.py TARGET OUTCOME SECONDS GO_FILE
OUTCOME is `fail` (every call fails as transient) or `ok`. Waits for GO_FILE, then for SECONDS keeps
asking for permits; prints one line per permit granted (`granted probe=0|1`) and per refusal
(`refused`), as JSON counts at the end.
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


def main() -> None:
    target, outcome, seconds, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
    config = load_config()
    breakers = Breakers(StateRoot.from_env(), config.breakers)
    while not go.exists():
        time.sleep(0.001)
    counts = {"granted": 0, "probes": 0, "refused": 0}
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
        time.sleep(0.003)  # the request itself
        breakers.release(permit, ok=outcome == "ok", error_class=None if outcome == "ok" else "transient")
    print(json.dumps(counts), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
