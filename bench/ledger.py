"""Ledger append throughput with 4 writing processes, against plain unlocked appends timed in the same run.

Each of 4 spawned processes builds `Ledger(StateRoot(tmp).ensure(), load_config())` and calls
`ledger.record("retry", ..., writer=i, seq=n)` N times, all starting together at a barrier. Every
record() is two appends under an exclusive lock: the JSON line to ledger/<day>.jsonl and the human line
to logs/selfheal.log. Throughput is events per wall second, from the first writer's start to the last
writer's end (each times itself on time.monotonic()). Then nothing may be lost: every ledger line
parses as JSON, there are 4*N of them, each (writer, seq) pair appears exactly once, and the log holds
4*N lines.

Baseline, same processes, same rounds: each writer appends the same JSON lines (the events its record()
calls returned, serialized as the ledger serializes them) to one shared file opened with open(path, "a"),
one write + flush per line and no lock: the raw cost of one append. Its lines are checked the same way.

Target: at least 5,000 events/s with nothing lost.

    .venv/bin/python bench/ledger.py [--quick] [--json] [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

from selfheal.core.config import load_config
from selfheal.core.ledger import Ledger, iter_events, ledger_files
from selfheal.state.root import StateRoot

Span = tuple[float, float]  # a writer's start and end on time.monotonic(): one system-wide clock (Linux, macOS)

WRITERS = 4
EVENTS, ROUNDS = 5_000, 5  # default: events per writer per round, rounds
QUICK_EVENTS, QUICK_ROUNDS = 500, 3
TARGET_EPS = 5_000
TIMEOUT_S = 300.0  # the longest anyone waits at the barrier for the others


def round_dir(base: Path, k: int) -> Path:
    return base / f"round-{k}"


def writer(i: int, base: Path, *, events: int, rounds: int, barrier: Barrier, done: Queue[Span]) -> None:
    """One writing process: per round, N ledger events, then the same N lines appended plainly."""
    try:
        config = load_config()
        for k in range(rounds):
            ledger = Ledger(StateRoot(round_dir(base, k) / "selfheal").ensure(), config)
            barrier.wait()
            start = time.monotonic()
            written = [
                ledger.record(
                    "retry",
                    task=f"bench-{i}",
                    attempt=n,
                    max_attempts=3,
                    error_class="transient",
                    reason="ConnectionResetError: reset",
                    delay_s=1.0,
                    duration_s=0.01,
                    writer=i,
                    seq=n,
                )
                for n in range(events)
            ]
            done.put((start, time.monotonic()))

            lines = [json.dumps(e, ensure_ascii=False, separators=(",", ":"), default=str) + "\n" for e in written]
            with (round_dir(base, k) / "baseline.jsonl").open("a", encoding="utf-8") as fh:
                barrier.wait()
                start = time.monotonic()
                for line in lines:
                    fh.write(line)
                    fh.flush()
                done.put((start, time.monotonic()))
    except BaseException:
        barrier.abort()  # the parent and the other writers stop waiting for this one
        raise


def timed_phase(barrier: Barrier, done: Queue[Span], procs: Sequence[BaseProcess]) -> float:
    """Release the writers together; return the seconds from the first writer's start to the last one's end.

    The writers time themselves: the parent may not get a core back until they are nearly done.
    """
    barrier.wait()
    spans: list[Span] = []
    while len(spans) < WRITERS:
        try:
            spans.append(done.get(timeout=0.1))
        except queue.Empty:
            if any(proc.exitcode is not None for proc in procs):
                raise RuntimeError("a writer exited before reporting; see its traceback above") from None
    return max(end for _, end in spans) - min(start for start, _ in spans)


def check(paths: list[Path], events: int) -> dict[str, Any]:
    """Every line one whole JSON event, and each (writer, seq) pair exactly once."""
    seen: Counter[tuple[Any, Any]] = Counter()
    unparsable = 0
    for event in iter_events(paths):
        if event is None:
            unparsable += 1
        else:
            seen[event.get("writer"), event.get("seq")] += 1
    expected = {(i, n) for i in range(WRITERS) for n in range(events)}
    lines = unparsable + sum(seen.values())
    missing = len(expected - seen.keys())
    duplicated = sum(c - 1 for c in seen.values() if c > 1)
    return {
        "lines": lines,
        "unparsable": unparsable,
        "missing": missing,
        "duplicated": duplicated,
        "ok": lines == len(expected) and not (unparsable or missing or duplicated),
    }


def count_lines(paths: list[Path]) -> int:
    return sum(path.read_bytes().count(b"\n") for path in paths)


def run(events: int, rounds: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS + 1, timeout=TIMEOUT_S)
    done: Queue[Span] = ctx.Queue()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-") as tmp:
        base = Path(tmp)
        # The shipped settings for every writer (they inherit this environment), not the user's.
        os.environ["SELFHEAL_HOME"] = tmp
        os.environ.pop("SELFHEAL_CONFIG", None)
        shared = {"events": events, "rounds": rounds, "barrier": barrier, "done": done}
        procs = [ctx.Process(target=writer, args=(i, base), kwargs=shared) for i in range(WRITERS)]
        for proc in procs:
            proc.start()
        try:
            for k in range(rounds):
                selfheal_s = timed_phase(barrier, done, procs)
                baseline_s = timed_phase(barrier, done, procs)
                state = StateRoot(round_dir(base, k) / "selfheal")
                rows.append(
                    {
                        "selfheal_eps": WRITERS * events / selfheal_s,
                        "baseline_eps": WRITERS * events / baseline_s,
                        "selfheal_check": check(ledger_files(state), events),
                        "log_lines": count_lines(sorted(state.log_file.parent.glob("selfheal.log*"))),
                        "baseline_check": check([round_dir(base, k) / "baseline.jsonl"], events),
                    }
                )
        except BaseException:
            barrier.abort()  # let waiting writers exit instead of hanging until the timeout
            raise
        finally:
            for proc in procs:
                proc.join(timeout=TIMEOUT_S)
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    if failed:
        raise SystemExit(f"ledger bench: writers exited with {failed}; see their tracebacks above")

    selfheal_eps = statistics.median(r["selfheal_eps"] for r in rows)
    ratios = [r["selfheal_eps"] / r["baseline_eps"] for r in rows]
    nothing_lost = all(r["selfheal_check"]["ok"] and r["log_lines"] == WRITERS * events for r in rows)
    return {
        "benchmark": "ledger",
        "machine": machine(),
        "writers": WRITERS,
        "events_per_writer": events,
        "rounds": rounds,
        "selfheal_eps": selfheal_eps,
        "baseline_eps": statistics.median(r["baseline_eps"] for r in rows),
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "nothing_lost": nothing_lost,
        "baseline_nothing_lost": all(r["baseline_check"]["ok"] for r in rows),
        "rounds_detail": rows,
        "target": f"at least {TARGET_EPS:,} events/s with nothing lost",
        "target_met": nothing_lost and selfheal_eps >= TARGET_EPS,
    }


def report(result: dict[str, Any]) -> str:
    rounds = result["rounds_detail"]
    total = result["writers"] * result["events_per_writer"]

    def row(name: str, key: str, check_key: str) -> list[str]:
        eps = [r[key] for r in rounds]
        lost = [
            f"round {k}: {c['missing']} missing, {c['duplicated']} duplicated, {c['unparsable']} unparsable"
            for k, c in enumerate(r[check_key] for r in rounds)
            if not c["ok"]
        ]
        return [
            name,
            "; ".join(lost) or "nothing",
            f"{result[key]:,.0f}",
            f"{min(eps):,.0f}-{max(eps):,.0f}",
            f"{1e6 * result['writers'] / result[key]:.1f}",
        ]

    ratio = result["ratio"]
    log_lines = ", ".join(f"{r['log_lines']:,}" for r in rounds)
    verdict = "MET" if result["target_met"] else "NOT MET"
    return "\n".join(
        [
            f"## Ledger appends: {result['writers']} processes x {result['events_per_writer']:,} events, "
            f"{result['rounds']} rounds",
            "",
            machine_line(),
            "",
            markdown_table(
                ["appender", "lost", "events/s (median)", "range over rounds", "µs per event per writer"],
                [
                    row(
                        "self-heal Ledger.record: 2 locked appends per event (ledger + log)",
                        "selfheal_eps",
                        "selfheal_check",
                    ),
                    row(
                        "baseline: open('a') + write + flush per line, no lock, 1 append per event",
                        "baseline_eps",
                        "baseline_check",
                    ),
                ],
                text_columns=2,
            ),
            "",
            f"- self-heal ÷ baseline throughput: {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}); "
            "each record() also appends a human log line to logs/selfheal.log, so it makes 2 locked appends "
            "to the baseline's 1 unlocked one.",
            f"- lost: checked after each round; {total:,} lines expected, each whole JSON, each (writer, seq) "
            f"exactly once. self-heal log lines per round: {log_lines} "
            f"(expected {total:,}).",
            f"- target ({result['target']}): {verdict}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS} events per writer, {QUICK_ROUNDS} rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--events", type=int, help=f"events per writer per round (default {EVENTS:,})")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {ROUNDS})")
    args = parser.parse_args()
    events = args.events or (QUICK_EVENTS if args.quick else EVENTS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    if events < 1 or rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    result = run(events, rounds)
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
