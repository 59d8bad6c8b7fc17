"""Child process for test_store: rewrite one state file forever, until killed.

Usage: store_writer.py PATH [replace|slots|journal]: store.write_json (atomic replace, the default),
store.SlotFile (in place, two slots) or store.JournaledFile (a snapshot plus a journal of changes: each
write changes step s<n % 100> to n and n itself). Prints "wrote" once the first write has completed.

store_writer.py PATH MODE --fork: the same writer, forked afresh for each line "go" read on stdin (one
interpreter start for many writers: a start is most of what a writer costs). Each writer prints
"wrote PID" after its first write and is left to be killed; this process then waits for it and prints
"ended STATUS" (its wait status), and takes the next "go".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from selfheal.state import root as store


def write_forever(path: Path, mode: str, say: Callable[[], None]) -> None:
    slots = store.SlotFile(path) if mode == "slots" else None
    journaled = store.JournaledFile(path, path.with_suffix(".journal")) if mode == "journal" else None
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
            say()
        n += 1


def main() -> None:
    path, mode = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "replace")
    if sys.argv[3:] != ["--fork"]:
        write_forever(path, mode, lambda: print("wrote", flush=True))
        return
    for line in sys.stdin:
        if line.strip() != "go":
            break
        pid = os.fork()
        if pid == 0:  # the writer: killed from outside, it never returns
            write_forever(path, mode, lambda: os.write(1, f"wrote {os.getpid()}\n".encode()))
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        print("ended", status, flush=True)


if __name__ == "__main__":
    main()
