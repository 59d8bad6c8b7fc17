"""Child process for test_taskdb: one task runner, as a cron `run-next` loop would be.

Usage: task_worker.py GO_FILE. Waits until GO_FILE exists (so every worker starts together), then claims
and runs tasks until no task is open any more; prints one JSON line: the tasks it ran, and how many times
the tree was busy (LockBusy, which it retries, as cron would on its next pass).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from selfheal.errors import LockBusy
from selfheal.tasks.run import TaskRunner
from selfheal.tasks.tree import TaskStore

OPEN = ("NEW", "PROCESSING", "ERROR_FIX_PENDING", "NORMAL_CRASH")


def main() -> None:
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.005)
    store = TaskStore()
    runner = TaskRunner(store)
    ran: list[str] = []
    busy = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            result = runner.run_next()
        except LockBusy:
            busy += 1
            continue
        if result.task is not None:
            ran.append(result.task)
            continue
        marks = ", ".join("?" for _ in OPEN)
        left = store.db.execute(f"SELECT COUNT(*) FROM tasks WHERE exec_state IN ({marks})", OPEN).fetchone()[0]  # noqa: S608
        if not left:
            break
        time.sleep(0.02)  # the rest are running, or parents wait for them
    sys.stdout.write(json.dumps({"ran": ran, "busy": busy}) + "\n")


if __name__ == "__main__":
    main()
