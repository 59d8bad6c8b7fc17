"""Child process for test_tasks_fleet: one host's task runner in fleet mode, as its cron `run-next` loop would be.

Usage: fleet_task_worker.py GO_FILE. The environment names the host (SELFHEAL_HOST_ID), its state
root (SELFHEAL_HOME) and the fleet's database (SELFHEAL_DATABASE_URL). Waits until GO_FILE exists (so every
host starts together), then claims and runs tasks from the shared tree until no task is open any more; prints
one JSON line: the tasks it ran, how often the tree was busy (LockBusy, retried as cron would), and how often
the database was down (FleetTreeDown, exit 4 for `run-next`: tried again, as the next cron pass would).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from selfheal.errors import FleetUnavailable, LockBusy
from selfheal.tasks.run import TaskRunner
from selfheal.tasks.tree import FleetTreeDown, TaskStore

OPEN = ("NEW", "PROCESSING", "ERROR_FIX_PENDING", "NORMAL_CRASH")


def main() -> None:
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.005)
    store = TaskStore()
    runner = TaskRunner(store)
    ran: list[str] = []
    busy = down = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        try:
            result = runner.run_next()
            if result.task is not None:
                ran.append(result.task)
                continue
            marks = ", ".join("?" for _ in OPEN)
            left = store.db.execute(f"SELECT COUNT(*) FROM tasks WHERE exec_state IN ({marks})", OPEN).fetchone()[0]  # noqa: S608
        except LockBusy:
            busy += 1
            continue
        except (FleetTreeDown, FleetUnavailable):  # the database is down: this host claims nothing meanwhile
            down += 1
            time.sleep(0.1)
            continue
        if not left:
            break
        time.sleep(0.05)  # the rest are running, parents wait for them, or a lease has yet to run out
    sys.stdout.write(json.dumps({"ran": ran, "busy": busy, "down": down}) + "\n")


if __name__ == "__main__":
    main()
