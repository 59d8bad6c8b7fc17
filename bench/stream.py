"""Seconds to stream a task's big output: `tasks.py run-next` against `retry_run.py` in the same run.

The work: one command printing SIZE bytes of 100-character lines (`head -c SIZE /dev/zero | tr '\\0' x |
fold -w 100`). `retry_run.py -q` streams it to /dev/null; `tasks.py run-next` streams it into the task's
bounded log (secrets masked, the last 80,000 characters kept) under the same retry engine. Each is run
as a process, as cron runs it, on its own fresh state root, timed on time.perf_counter() including the
interpreter's start. --against PATH also times the scripts of another checkout (the code before a change)
in the same run, so both are measured on the same machine at the same moment.

Checked: each run exits 0, and run-next's log ends with the command's last line and stays bounded.

Target: run-next within 2x of retry_run.

    .venv/bin/python bench/stream.py [--size 2G] [--against OTHER_CHECKOUT] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _timed(argv: list[str], home: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env["SELFHEAL_HOME"] = home
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def measure(root: Path, size: str) -> dict[str, float]:
    python = sys.executable
    shell = f"head -c {size} /dev/zero | tr '\\0' x | fold -w 100"
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as home:
        out["retry_run"] = _timed(
            [python, str(root / "scripts/retry_run.py"), "-q", "--", "/bin/sh", "-c", shell], home
        )
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
        env["SELFHEAL_HOME"] = home
        subprocess.run(
            [python, str(root / "scripts/tasks.py"), "add", "big", "--shell", shell],
            env=env,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        out["run_next"] = _timed([python, str(root / "scripts/tasks.py"), "run-next"], home)
        log = (Path(home) / "tasks" / "big.log").read_text()
        if len(log) > 100_000 or "x" * 100 not in log.splitlines()[-3:-1]:
            raise SystemExit(f"{root}: the task log is not what it should be ({len(log)} characters)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="2G", help="bytes to print, as head -c takes them (default 2G)")
    parser.add_argument("--against", type=Path, help="another checkout to time in the same run (the baseline)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {"this": measure(ROOT, args.size)}
    if args.against is not None:
        results["against"] = measure(args.against.resolve(), args.size)
    if args.json:
        print(json.dumps({"machine": machine(), "size": args.size, "results": results}, indent=2))
        return 0
    print(machine_line())
    rows = [
        [name, f"{r['retry_run']:.1f}", f"{r['run_next']:.1f}", f"{r['run_next'] / r['retry_run']:.1f}x"]
        for name, r in results.items()
    ]
    print(markdown_table(["code", "retry_run s", "run-next s", "ratio"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
