"""Child process for test_ledger: record COUNT retry events as writer WRITER once GO_FILE exists.

Usage: ledger_writer.py WRITER COUNT GO_FILE (state root from $SELFHEAL_HOME). Prints "ready" when
set up, then waits for GO_FILE so every writer starts at the same moment. Exits 1 if any write failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from selfheal.core.config import load_config
from selfheal.core.ledger import Ledger
from selfheal.state.root import StateRoot


def main() -> None:
    writer, count, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    ledger = Ledger(StateRoot.from_env(), load_config())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while not go.exists():
        time.sleep(0.001)
    for seq in range(count):
        ledger.record(
            "retry",
            task=f"w{writer}",
            error_class="transient",
            attempt=1,
            max_attempts=3,
            delay_s=1.0,
            writer=writer,
            seq=seq,
        )
    sys.exit(1 if ledger.write_errors else 0)


if __name__ == "__main__":
    main()
