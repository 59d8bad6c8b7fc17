"""Child process for test_store: rewrite one state file with store.write_json forever, until killed.

Usage: store_writer.py PATH. Prints "wrote" once the first write has completed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfheal import store


def main() -> None:
    path = Path(sys.argv[1])
    pad = "x" * 50_000
    n = 0
    while True:
        store.write_json(path, {"n": n, "pad": pad})
        if n == 0:
            sys.stdout.write("wrote\n")
            sys.stdout.flush()
        n += 1


if __name__ == "__main__":
    main()
