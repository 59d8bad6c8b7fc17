"""Child process for test_llm_call: make CALLS model calls through the chain, print who answered.

Usage: llm_worker.py CALLS GO_FILE [PROCESSES]  (config comes from SELFHEAL_HOME/config.yaml)
Each of PROCESSES processes (default 1) prints one JSON line: {"primary": n, "backup": n, "failed": n}. They are
forked from this one after the library (and openai) is imported, before GO_FILE exists: separate processes making
their calls at once, for one interpreter start (the start and the imports were most of what a worker cost).
The first process is one of them; it exits 1 if another did not exit 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from selfheal.models.llm import ModelCallFailed, NoEndpointAvailable, complete


def work(calls: int, go: Path) -> None:
    while not go.exists():
        time.sleep(0.001)
    counts = {"primary": 0, "backup": 0, "failed": 0}
    for _ in range(calls):
        try:
            counts[complete("hi").endpoint] += 1
        except (ModelCallFailed, NoEndpointAvailable):
            counts["failed"] += 1
    os.write(1, (json.dumps(counts) + "\n").encode())  # one write of a short line: never interleaved with another's


def main() -> None:
    calls, go = int(sys.argv[1]), Path(sys.argv[2])
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    children: list[int] = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:  # a worker of its own (random reseeds itself in a forked child)
            children = []
            break
        children.append(pid)
    work(calls, go)
    failed = [pid for pid in children if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
