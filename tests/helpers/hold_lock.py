"""Child process for test_store: hold store.file_lock(PATH) until stdin closes.

Usage: hold_lock.py PATH. Prints "locked" once the lock is held.
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfheal.state import root as store


def main() -> None:
    with store.file_lock(Path(sys.argv[1])):
        sys.stdout.write("locked\n")
        sys.stdout.flush()
        sys.stdin.read()


if __name__ == "__main__":
    main()
