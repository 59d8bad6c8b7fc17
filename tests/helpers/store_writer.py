"""Child process for test_store: rewrite one state file forever, until killed.

Usage: store_writer.py PATH [replace|slots|journal]: store.write_json (atomic replace, the default),
store.SlotFile (in place, two slots) or store.JournaledFile (a snapshot plus a journal of changes: each
write changes step s<n % 100> to n and n itself). Prints "wrote" once the first write has completed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfheal.state import root as store


def main() -> None:
    path = Path(sys.argv[1])
    slots = store.SlotFile(path) if sys.argv[2:] == ["slots"] else None
    journaled = store.JournaledFile(path, path.with_suffix(".journal")) if sys.argv[2:] == ["journal"] else None
    pad = "x" * 50_000
    n = 0
    if journaled is not None:
        doc = journaled.read() or {"n": -1, "pad": pad, "steps": {}}
        n = doc["n"] + 1
    said = False
    while True:
        if journaled is not None:
            doc["n"] = n
            doc["steps"][f"s{n % 100}"] = n
            journaled.update(doc, [(["steps", f"s{n % 100}"], n), (["n"], n)])
        elif slots is not None:
            slots.write({"n": n, "pad": pad})
        else:
            store.write_json(path, {"n": n, "pad": pad})
        if not said:
            said = True
            sys.stdout.write("wrote\n")
            sys.stdout.flush()
        n += 1


if __name__ == "__main__":
    main()
