"""Seconds to stream a task's big output: `tasks.py run-next` against `retry_run.py` and a bare runner, same run.

The work: one command printing SIZE bytes of 100-character lines (`head -c SIZE /dev/zero | tr '\\0' x |
fold -w 100`). Baseline, the bare runner: a Python process that starts the same command and copies its
output to /dev/null in 64 KiB reads, with no redaction (bench/redact.py's `_BARE`). `retry_run.py -q`
streams it to /dev/null through the redactor; `tasks.py run-next` streams it into the task's bounded log
(secrets masked, the last 80,000 characters kept) under the same retry engine. Each is run as a process,
as cron runs it, on its own fresh state root, timed on time.perf_counter() including the interpreter's
start. --rounds R (default 3) runs every candidate R times, in an order that rotates from round to round;
each time is the median over the rounds, each ratio the median of the per-round ratios. --against PATH also
times the scripts of another checkout (the code before a change) in the same rounds, so both are measured
on the same machine at the same moment.

Checked: each run exits 0, and run-next's log ends with the command's last line and stays bounded.

Target: run-next within 2x of retry_run.

    .venv/bin/python bench/stream.py [--size 2G] [--rounds 3] [--against OTHER_CHECKOUT] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table
from redact import _BARE

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2.0


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env["SELFHEAL_HOME"] = home
    return env


def _timed(argv: list[str], home: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=_env(home), stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def bare(shell: str) -> float:
    with tempfile.TemporaryDirectory() as home:
        return _timed([sys.executable, "-c", _BARE, "/bin/sh", "-c", shell], home)


def retry_run(root: Path, shell: str) -> float:
    with tempfile.TemporaryDirectory() as home:
        return _timed([sys.executable, str(root / "scripts/retry_run.py"), "-q", "--", "/bin/sh", "-c", shell], home)


def run_next(root: Path, shell: str) -> float:
    python = sys.executable
    with tempfile.TemporaryDirectory() as home:
        add = [python, str(root / "scripts/tasks.py"), "add", "big", "--shell", shell]
        subprocess.run(add, env=_env(home), stdout=subprocess.DEVNULL, check=True)
        seconds = _timed([python, str(root / "scripts/tasks.py"), "run-next"], home)
        log = (Path(home) / "tasks" / "big.log").read_text()
        if len(log) > 100_000 or "x" * 100 not in log.splitlines()[-3:-1]:
            raise SystemExit(f"{root}: the task log is not what it should be ({len(log)} characters)")
    return seconds


def measure(roots: dict[str, Path], size: str, rounds: int) -> dict[str, Any]:
    """Every candidate once per round, in rotating order; seconds per run, by candidate."""
    shell = f"head -c {size} /dev/zero | tr '\\0' x | fold -w 100"
    candidates: list[tuple[str, Callable[[], float]]] = [("bare", lambda: bare(shell))]
    for name, root in roots.items():
        candidates.append((f"{name} retry_run", lambda root=root: retry_run(root, shell)))
        candidates.append((f"{name} run_next", lambda root=root: run_next(root, shell)))
    runs: dict[str, list[float]] = {key: [] for key, _ in candidates}
    for r in range(rounds):
        k = r % len(candidates)
        for key, fn in candidates[k:] + candidates[:k]:
            runs[key].append(fn())
    return runs


def ratio(a: list[float], b: list[float]) -> dict[str, float]:
    per_round = [x / y for x, y in zip(a, b, strict=True)]
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="2G", help="bytes to print, as head -c takes them (default 2G)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each candidate (default 3; medians)")
    parser.add_argument("--against", type=Path, help="another checkout to time in the same run (the code before)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    roots = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    runs = measure(roots, args.size, args.rounds)
    med = statistics.median
    results: dict[str, dict[str, Any]] = {}
    for name in roots:
        rr, rn = runs[f"{name} retry_run"], runs[f"{name} run_next"]
        results[name] = {
            "retry_run": med(rr),
            "run_next": med(rn),
            "retry_run_runs": rr,
            "run_next_runs": rn,
            "run_next_vs_retry_run": ratio(rn, rr),
            "retry_run_vs_bare": ratio(rr, runs["bare"]),
            "run_next_vs_bare": ratio(rn, runs["bare"]),
        }
    this = results["this"]["run_next_vs_retry_run"]["median"]
    out = {
        "machine": machine(),
        "size": args.size,
        "rounds": args.rounds,
        "bare": {"seconds": med(runs["bare"]), "runs": runs["bare"]},
        "results": results,
        "target": f"run-next within {TARGET:g}x of retry_run",
        "target_met": this <= TARGET,
        "correct": True,  # every run exited 0 and run-next's log was checked (a failure stops the benchmark)
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def cell(q: dict[str, float]) -> str:
        return f"{q['median']:.1f}x ({q['min']:.1f}-{q['max']:.1f})"

    print(machine_line())
    print(f"{args.size} printed, {args.rounds} rounds; seconds: median (range); ratios: median of per-round ratios\n")
    b = runs["bare"]
    rows = [["bare runner (Python, 64 KiB reads, no redaction)", f"{med(b):.1f} ({min(b):.1f}-{max(b):.1f})", "1", ""]]
    for name, r in results.items():
        rr, rn = r["retry_run_runs"], r["run_next_runs"]
        rows.append(
            [
                f"{name}: retry_run.py -q",
                f"{med(rr):.1f} ({min(rr):.1f}-{max(rr):.1f})",
                cell(r["retry_run_vs_bare"]),
                "1",
            ]
        )
        rows.append(
            [
                f"{name}: tasks.py run-next",
                f"{med(rn):.1f} ({min(rn):.1f}-{max(rn):.1f})",
                cell(r["run_next_vs_bare"]),
                cell(r["run_next_vs_retry_run"]),
            ]
        )
    print(markdown_table(["runner", "s", "vs bare runner", "vs retry_run"], rows))
    verdict = "MET" if out["target_met"] else "NOT MET"
    print(f"\ntarget ({out['target']}): {verdict} ({this:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
