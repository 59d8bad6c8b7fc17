"""Child process for test_fleet: record retry events as host $SELFHEAL_HOST_ID for SECONDS, then make sure
every spooled event has reached the fleet's ledger.

Usage: fleet_ledger_writer.py SECONDS GO_FILE (state root from $SELFHEAL_HOME, the database from
$SELFHEAL_DATABASE_URL). Touches READY_FILE once connected, waits for GO_FILE, writes an event every
few milliseconds whatever the database does, then replays its spool until the database takes it
(up to 60 s). Prints {"written": N, "spooled_at_most": M} as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from selfheal.core.config import load_config
from selfheal.core.ledger import Ledger
from selfheal.errors import StateError
from selfheal.state.root import StateRoot


def main() -> None:
    seconds, go = float(sys.argv[1]), Path(sys.argv[2])
    ledger = Ledger(StateRoot.from_env().ensure(), load_config())
    ledger.record("start", task="writer")
    Path(os.environ["READY_FILE"]).touch()
    while not go.exists():
        time.sleep(0.005)
    written, spooled = 1, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ledger.record("retry", task="writer", error_class="transient", attempt=1, max_attempts=3, seq=written)
        written += 1
        if ledger.spool_path.exists():
            spooled = max(spooled, sum(1 for _ in ledger.spool_path.open("rb")))
        time.sleep(0.004)
    deadline = time.monotonic() + 60
    while True:
        try:
            ledger.replay_spool()
            break
        except StateError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    print(json.dumps({"written": written, "spooled_at_most": spooled}), flush=True)


if __name__ == "__main__":
    main()
