"""Child process for test_llm_call: make CALLS model calls through the chain, print who answered.

Usage: llm_worker.py CALLS GO_FILE  (config comes from SELFHEAL_HOME/config.yaml)
Prints one JSON object: {"primary": n, "backup": n, "failed": n}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from selfheal.models.llm import ModelCallFailed, NoEndpointAvailable, complete


def main() -> None:
    calls, go = int(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    counts = {"primary": 0, "backup": 0, "failed": 0}
    for _ in range(calls):
        try:
            counts[complete("hi").endpoint] += 1
        except (ModelCallFailed, NoEndpointAvailable):
            counts["failed"] += 1
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
