"""Child process for test_store: rewrite one state file forever, until killed.

Usage: store_writer.py PATH [replace|slots]: store.write_json (atomic replace, the default) or
store.SlotFile (in place, two slots). Prints "wrote" once the first write has completed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfheal.state import root as store


def main() -> None:
    path = Path(sys.argv[1])
    slots = store.SlotFile(path) if sys.argv[2:] == ["slots"] else None
    pad = "x" * 50_000
    n = 0
    while True:
        if slots is not None:
            slots.write({"n": n, "pad": pad})
        else:
            store.write_json(path, {"n": n, "pad": pad})
        if n == 0:
            sys.stdout.write("wrote\n")
            sys.stdout.flush()
        n += 1


if __name__ == "__main__":
    main()
