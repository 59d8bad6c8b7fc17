"""The task tree on SQLite: a claim against raw SQLite doing the document's claim, and 100,000 tasks.

Part 1, the claim. A tree of N tasks (N = 100, 1000, 5000; --quick: 100, 1000) built from a fixed seed:
each task has a random type and priority, half of them a random earlier task as parent, and 60% of them
are already END or VOID (a tree in use, before archiving). A claim finds the first actionable task in
the fourth source document's order (type, priority, deeper level, oldest, name; a parent only when
every child is END, VOID or REQUIRES_MANUAL) and marks it PROCESSING, durably, with one winner however
many processes claim at once. K claims (--claims, 20) run back to back, each taking the next task.

self-heal (the target): what `tasks.py run-next` does before it runs anything: `archive_if_due` (a
meta read, as archiving ran within the hour) and `TaskStore.claim` (BEGIN IMMEDIATE, the actionable
query on the queue index, UPDATE ... RETURNING with the runner, history and run id, COMMIT), on
tasks.db with WAL and synchronous=FULL.

Baseline: stdlib sqlite3, WAL, synchronous=FULL, one `tasks` table with the same rows, an index on
parent (for the gate) and the index self-heal's claim reads (taskdb.py's tasks_queue): the actionable rows
only, keyed by the document's order (the type and priority CASE expressions, level DESC, created_ts,
name), named with INDEXED BY as self-heal's SQLite dialect names it, so the ratio measures self-heal's
own overhead, not a missing index; a claim is BEGIN IMMEDIATE (the write lock: one winner), one SELECT
with the document's ORDER BY and a NOT EXISTS subquery for the parent gate, LIMIT 1, an UPDATE, COMMIT.
Target: self-heal within 2x of it at every size. Each round restores both databases from untimed
templates, then times the K claims of each, in alternating order; a time per claim is the median over
rounds of the per-round mean; the ratio is the median of per-round ratios. Each claim's CPU time (this
process's user + system) is shown next to it: the commit's fsync is most of a claim's wall time and the
disk's, so where other jobs load the disk the CPU is what tells the two claims apart (TMPDIR=/dev/shm puts
the databases on tmpfs, where an fsync costs nothing). Checked: both claim the very
same tasks in the very same order, and every claimed task is PROCESSING afterwards in both.

Part 2, 100,000 tasks (--big N to change; 0 to skip): loaded with `tasks.py add --from FILE` (one
process, one transaction: wall time and peak RSS), then `tasks.py run-next --json` as cron runs it (a
new process: wall time and peak RSS, with the claim inside it timed in-process as part 1 does, against
the raw SQLite claim on the same 100,000 rows), `tasks.py list --json` peak RSS at 1,000 and at 100,000
tasks (flat: streamed), and the health check's cold start (`health_check.py --cron`, the setting of
bench/health.py: a gateway port where nothing listens, so every run ends DEGRADED) on that state root
against `python -c pass`. Targets: a claim under 100 ms and run-next under 60 MB RSS; list flat; the
health check within 5x of the bare interpreter. Each process is started by a small helper process and reaped
with wait4() (a child of this benchmark would inherit its large peak RSS): its peak RSS (ru_maxrss) is its
own, and its CPU time (user + system) is reported next to the wall time, as the wall time of a process
on a busy machine says more about the machine than about the process.

    .venv/bin/python bench/tasks.py [--quick] [--json] [--claims K] [--rounds R] [--big N] [--sizes 100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

from selfheal.core.config import load_config
from selfheal.state.root import StateRoot
from selfheal.tasks.tree import END, PRIORITIES, PROCESSING, TYPES, VOID, Task, TaskStore

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
SIZES, QUICK_SIZES = (100, 1000, 5000), (100, 1000)
CLAIMS, ROUNDS, QUICK_ROUNDS = 20, 5, 2
BIG = 100_000
SEED = 20261121
CLAIM_TARGET, RSS_TARGET_MB, HEALTH_TARGET, RATIO_TARGET = 0.100, 60.0, 5.0, 2.0

_ACTIONABLE = "exec_state IN ('NEW', 'ERROR_FIX_PENDING', 'NORMAL_CRASH')"
_ORDER = (
    "CASE type WHEN 'fix' THEN 0 WHEN 'regular' THEN 1 ELSE 2 END,"
    " CASE priority WHEN 'P0' THEN 0 WHEN 'P1' THEN 1 ELSE 2 END,"
    " level DESC, created_ts, name"
)
# The index self-heal's claim reads (state/taskdb.py's tasks_queue), on the baseline's columns: only the
# actionable rows, in the document's order, so the first row that passes the gate is the one to claim.
QUEUE_INDEX = (
    "CREATE INDEX tasks_queue ON tasks((CASE type WHEN 'fix' THEN 0 WHEN 'regular' THEN 1 ELSE 2 END),"
    " (CASE priority WHEN 'P0' THEN 0 WHEN 'P1' THEN 1 ELSE 2 END), level DESC, created_ts, name)"
    f" WHERE {_ACTIONABLE}"
)
_WHERE_AND_ORDER = f"""
  WHERE {_ACTIONABLE}
    AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent = t.name
                    AND c.exec_state NOT IN ('END', 'VOID', 'REQUIRES_MANUAL'))
    AND (runs = 1 OR type = 'fix')
  ORDER BY {_ORDER}
"""  # noqa: S608 - constant text
# The source document's get_actionable_tasks(), as SQL: the order and the parent gate (and, as run-next
# does, only tasks with something to run), read from the queue index as self-heal's claim reads its own.
CLAIM_SQL = "SELECT name FROM tasks t INDEXED BY tasks_queue" + _WHERE_AND_ORDER + " LIMIT 1"  # noqa: S608
RUNNER = {"pid": os.getpid(), "create_time": 1.0, "host": "bench"}


def build_tasks(n: int, *, finished: bool = True) -> list[Task]:
    rng = random.Random(SEED + n)
    out: list[Task] = []
    for i in range(n):
        parent = out[rng.randrange(i)] if i and rng.random() < 0.5 else None
        task = Task(
            name=f"task-{i:06d}",
            type=rng.choice(TYPES),
            priority=rng.choice(PRIORITIES),
            parent=parent.name if parent else None,
            root=parent.root if parent else f"task-{i:06d}",
            level=parent.level + 1 if parent else 1,
            run={"kind": "argv", "argv": ["true"], "cwd": "/"},
            created_ts=1_800_000_000.0 + i,
            updated_ts=1_800_000_000.0 + i,
        )
        roll = rng.random() if finished else 1.0
        task.exec_state = END if roll < 0.45 else VOID if roll < 0.6 else "NEW"
        out.append(task)
    return out


def make_store(folder: Path, tasks: list[Task]) -> None:
    store = TaskStore(StateRoot(folder).ensure(), load_config())
    with store.db.write():
        store.db.insert_many(tasks)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def make_sqlite(path: Path, tasks: list[Task]) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE tasks (name TEXT PRIMARY KEY, type TEXT, priority TEXT, exec_state TEXT, parent TEXT,"
        " level INTEGER, created_ts REAL, updated_ts REAL, runs INTEGER, runner_pid INTEGER)"
    )
    db.execute("CREATE INDEX tasks_parent ON tasks(parent)")
    db.execute(QUEUE_INDEX)
    db.executemany(
        "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        [
            (t.name, t.type, t.priority, t.exec_state, t.parent, t.level, t.created_ts, t.updated_ts, int(bool(t.run)))
            for t in tasks
        ],
    )
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


class StoreClaims:
    """What run-next does before it runs a task, on self-heal's store."""

    def __init__(self, folder: Path) -> None:
        self.store = TaskStore(StateRoot(folder), load_config())
        self.store.archive_if_due(older_than_s=7 * 86400)  # the hourly look, done before timing
        self.claimed: list[str] = []

    def claim(self) -> None:
        self.store.archive_if_due(older_than_s=7 * 86400)
        got = self.store.claim(None, RUNNER, "bench")
        if got is None:
            raise RuntimeError("nothing to claim")
        self.claimed.append(got[0].name)

    def states(self, names: list[str]) -> list[str]:
        return [self.store.get(n).exec_state for n in names]

    def close(self) -> None:
        self.store.close()


class SqliteClaims:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.claimed: list[str] = []

    def claim(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        (name,) = self.db.execute(CLAIM_SQL).fetchone()
        self.db.execute(
            "UPDATE tasks SET exec_state = 'PROCESSING', runner_pid = ?, updated_ts = ? WHERE name = ?",
            (12345, time.time(), name),
        )
        self.db.execute("COMMIT")
        self.claimed.append(name)

    def states(self, names: list[str]) -> list[str]:
        return [self.db.execute("SELECT exec_state FROM tasks WHERE name = ?", (n,)).fetchone()[0] for n in names]

    def close(self) -> None:
        self.db.close()


def timed(fn: Callable[[], object], k: int) -> tuple[float, float]:
    """Seconds per call: wall, and this process's CPU (user + system), which leaves out the wait for the disk."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(k):
        fn()
    return (time.perf_counter() - start) / k, (time.process_time() - cpu) / k


def claims_at(tasks: list[Task], claims: int, rounds: int, work: Path, label: str) -> dict[str, Any]:
    templates = work / f"templates-{label}"
    make_store(templates / "store", tasks)
    make_sqlite(templates / "raw.db", tasks)
    per: dict[str, list[float]] = {"store": [], "sqlite": []}
    cpu: dict[str, list[float]] = {"store": [], "sqlite": []}
    ratios: list[float] = []
    correct = True
    for r in range(rounds):
        here = work / f"round-{label}-{r}"
        shutil.copytree(templates, here)
        ours, raw = StoreClaims(here / "store"), SqliteClaims(here / "raw.db")
        order = [("store", ours.claim), ("sqlite", raw.claim)]
        got = {name: timed(fn, claims) for name, fn in (order if r % 2 == 0 else order[::-1])}
        for name, (wall, used) in got.items():
            per[name].append(wall)
            cpu[name].append(used)
        ratios.append(got["store"][0] / got["sqlite"][0])
        correct = correct and ours.claimed == raw.claimed
        correct = correct and set(ours.states(ours.claimed)) == {PROCESSING} == set(raw.states(raw.claimed))
        ours.close()
        raw.close()
        shutil.rmtree(here)
    shutil.rmtree(templates)
    ms = {k: statistics.median(v) * 1000 for k, v in per.items()}
    cpu_ratios = [a / b for a, b in zip(cpu["store"], cpu["sqlite"], strict=True) if b > 0]
    return {
        "tasks": len(tasks),
        "claims_per_round": claims,
        "rounds": rounds,
        "ms_per_claim": {k: round(v, 3) for k, v in ms.items()},
        "cpu_ms_per_claim": {k: round(statistics.median(v) * 1000, 3) for k, v in cpu.items()},
        "cpu_ratio": round(statistics.median(cpu_ratios), 2) if cpu_ratios else None,
        "ratio": round(statistics.median(ratios), 2),
        "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "target_met": statistics.median(ratios) <= RATIO_TARGET,
        "same_claims_in_same_order": correct,
    }


@dataclass
class Measured:
    wall_s: float
    cpu_s: float  # user + system: what the process itself cost, whatever else the machine was doing
    peak_mb: float
    stdout: bytes


# Runs the measured command as its own child and reports what wait4() says of it. A child forked from (or
# vfork-spawned by) this benchmark would inherit its peak RSS, which is large here; this helper is small.
_HELPER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as fh:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}, fh)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], env: dict[str, str], ok: Callable[[int, bytes], bool]) -> Measured:
    """One process: its wall time, CPU time (user + system) and peak RSS (ru_maxrss), from wait4()."""
    fd, report = tempfile.mkstemp(prefix="selfheal-bench-rusage-")
    os.close(fd)
    proc = subprocess.run([PYTHON, "-c", _HELPER, report, *cmd], env=env, capture_output=True, check=False)
    if not ok(proc.returncode, proc.stdout):
        raise SystemExit(
            f"unexpected result from {cmd[1:]}: exit {proc.returncode}: {proc.stdout[:300]!r} {proc.stderr[:500]!r}"
        )
    got = json.loads(Path(report).read_text())
    os.unlink(report)
    return Measured(got["wall"], got["cpu"], got["maxrss_kb"] / 1024, proc.stdout)


def health_compare(env: dict[str, str], work: Path, rounds: int) -> dict[str, Any]:
    """`health_check.py --cron` on the state root of `env` (with its task tree), on one without a task
    tree, and `python -c pass`, interleaved; wall and CPU times."""
    from health import degraded  # bench/health.py's setting for the health check

    # The health check: its bytecode and kept settings first, untimed; then alternating with the bare start.
    health_cmd, bare_cmd = [PYTHON, str(SCRIPTS / "health_check.py"), "--cron"], [PYTHON, "-c", "pass"]

    def healthy(code: int, out: bytes) -> bool:
        return degraded(subprocess.CompletedProcess([], code, out.decode(), ""))

    no_tree = dict(env, SELFHEAL_HOME=str(work / "no-tree"))  # the same check where there is no task tree
    for _ in range(3):
        measured(health_cmd, env, healthy)
        measured(health_cmd, no_tree, healthy)
    bare: list[Measured] = []
    check: list[Measured] = []
    without: list[Measured] = []
    for i in range(max(rounds * 4, 10)):
        runs3 = [(bare_cmd, env, bare), (health_cmd, env, check), (health_cmd, no_tree, without)]
        for cmd, where, into in runs3 if i % 2 == 0 else runs3[::-1]:
            expect = (lambda c, _o: c == 0) if cmd is bare_cmd else healthy
            into.append(measured(cmd, where, expect))
    med = statistics.median
    ratios = [h.wall_s / b.wall_s for h, b in zip(check, bare, strict=True)]
    cpu_ratio = med(m.cpu_s for m in check) / med(m.cpu_s for m in bare)
    return {
        "health_ms": round(med(m.wall_s for m in check) * 1000, 1),
        "bare_python_ms": round(med(m.wall_s for m in bare) * 1000, 1),
        "health_ratio": round(med(ratios), 2),
        "health_cpu_ms": round(med(m.cpu_s for m in check) * 1000, 1),
        "bare_python_cpu_ms": round(med(m.cpu_s for m in bare) * 1000, 1),
        "health_cpu_ratio": round(cpu_ratio, 2),
        "health_without_tree_ms": round(med(m.wall_s for m in without) * 1000, 1),
        "health_without_tree_cpu_ms": round(med(m.cpu_s for m in without) * 1000, 1),
        "targets_met": {
            "health_within_5x": med(ratios) <= HEALTH_TARGET,
            "health_cpu_within_5x": cpu_ratio <= HEALTH_TARGET,
        },
    }


def big_tree(n: int, work: Path, claims: int, rounds: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from health import prepare  # bench/health.py's setting for the health check

    env = prepare(work)
    state = Path(env["SELFHEAL_HOME"])
    tasks = build_tasks(n, finished=False)
    lines = work / "tasks.jsonl"
    with lines.open("w") as fh:
        for t in tasks:
            row = {"name": t.name, "type": t.type, "priority": t.priority, "run": ["true"], "cwd": "/"}
            fh.write(json.dumps({**row, "parent": t.parent} if t.parent else row) + "\n")
    tasks_py = str(SCRIPTS / "tasks.py")
    added = measured([PYTHON, tasks_py, "add", "--from", str(lines)], env, lambda c, _o: c == 0)
    template = work / "template"
    shutil.copytree(state, template)

    def run_next() -> Measured:
        shutil.rmtree(state)
        shutil.copytree(template, state)
        return measured(
            [PYTHON, tasks_py, "run-next", "--json", "--no-stuck-check"], env, lambda c, o: c == 0 and b'"END"' in o
        )

    runs = [run_next() for _ in range(rounds)]
    # The claim alone, timed in-process against the raw SQLite claim on the same rows (as in part 1).
    claim = claims_at(tasks, claims, rounds, work, "big")

    def list_rss(folder: Path) -> float:
        listing = [PYTHON, tasks_py, "list", "--json"]
        return measured(listing, dict(env, SELFHEAL_HOME=str(folder)), lambda c, _o: c == 0).peak_mb

    small = work / "small"
    make_store(small, build_tasks(1000, finished=False))
    list_small = statistics.median(list_rss(small) for _ in range(3))
    list_big = statistics.median(list_rss(state) for _ in range(3))
    health = health_compare(env, work, rounds)
    med = statistics.median
    run_s = med(m.wall_s for m in runs)
    run_mb = max(m.peak_mb for m in runs)
    return {
        "tasks": n,
        "bulk_add_s": round(added.wall_s, 2),
        "bulk_add_cpu_s": round(added.cpu_s, 2),
        "bulk_add_peak_mb": round(added.peak_mb, 1),
        "run_next_process_ms": round(run_s * 1000, 1),
        "run_next_cpu_ms": round(med(m.cpu_s for m in runs) * 1000, 1),
        "run_next_peak_mb": round(run_mb, 1),
        "claim_ms": claim["ms_per_claim"]["store"],
        "raw_sqlite_claim_ms": claim["ms_per_claim"]["sqlite"],
        "claim_ratio": claim["ratio"],
        "same_claims_in_same_order": claim["same_claims_in_same_order"],
        "list_peak_mb": {"1000": round(list_small, 1), str(n): round(list_big, 1)},
        **{k: v for k, v in health.items() if k != "targets_met"},
        "targets_met": {
            "claim_under_100ms": claim["ms_per_claim"]["store"] / 1000 < CLAIM_TARGET,
            "run_next_under_60mb": run_mb < RSS_TARGET_MB,
            "list_flat": list_big < list_small * 1.25,
            **health["targets_met"],
        },
    }


def health_only(n: int, work: Path, rounds: int, *, as_json: bool) -> int:
    from health import prepare  # bench/health.py's setting for the health check

    try:
        env = prepare(work)
        make_store(Path(env["SELFHEAL_HOME"]), build_tasks(n, finished=False))
        got = health_compare(env, work, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if as_json:
        print(json.dumps({"machine": machine(), "tasks": n, **got, "correct": True}))
        return 0
    print(machine_line())
    rows = [
        [f"`health_check.py --cron`, {n:,} tasks", f"{got['health_ms']:.0f}", f"{got['health_cpu_ms']:.0f}"],
        [
            "`health_check.py --cron`, no task tree",
            f"{got['health_without_tree_ms']:.0f}",
            f"{got['health_without_tree_cpu_ms']:.0f}",
        ],
        ["`python -c pass`", f"{got['bare_python_ms']:.0f}", f"{got['bare_python_cpu_ms']:.0f}"],
    ]
    print(markdown_table(["", "wall (ms)", "CPU (ms)"], rows))
    print(f"ratio to the bare interpreter: wall {got['health_ratio']:.2f}x, CPU {got['health_cpu_ratio']:.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--claims", type=int, default=CLAIMS)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--big", type=int, help=f"tasks in part 2 (default {BIG}; --quick 0: skipped)")
    parser.add_argument("--sizes", help="part 1's tree sizes, comma-separated (empty: skip part 1)")
    parser.add_argument(
        "--health-only", type=int, metavar="N", help="only the health check, on N tasks loaded directly (no bulk add)"
    )
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes is not None:
        sizes = tuple(int(x) for x in args.sizes.split(",") if x.strip())
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    big = args.big if args.big is not None else (0 if args.quick else BIG)
    work = Path(tempfile.mkdtemp(prefix="selfheal-bench-tasks-"))
    if args.health_only is not None:
        return health_only(args.health_only, work, rounds, as_json=args.json)
    try:
        results = [claims_at(build_tasks(n), args.claims, rounds, work, str(n)) for n in sizes]
        large = big_tree(big, work, args.claims, rounds) if big else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    correct = all(r["same_claims_in_same_order"] for r in results) and (
        large is None or large["same_claims_in_same_order"]
    )
    ratio_met = all(r["target_met"] for r in results)
    if args.json:
        out = {"machine": machine(), "results": results, "big": large, "correct": correct}
        print(json.dumps({**out, "ratio_target_met": ratio_met}))
        return 0 if correct else 1
    print(machine_line())
    rows = [
        [
            str(r["tasks"]),
            f"{r['ms_per_claim']['store']:.3f}",
            f"{r['ms_per_claim']['sqlite']:.3f}",
            f"{r['ratio']:.2f}x ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})",
            f"{r['cpu_ms_per_claim']['store']:.3f} / {r['cpu_ms_per_claim']['sqlite']:.3f} ({r['cpu_ratio']}x)",
        ]
        for r in results
    ]
    if large is not None:
        rows.append(
            [
                f"{large['tasks']} (all live)",
                f"{large['claim_ms']:.3f}",
                f"{large['raw_sqlite_claim_ms']:.3f}",
                f"{large['claim_ratio']:.2f}x",
                "",
            ]
        )
    head = ["tasks in the tree", "self-heal claim (ms)", "raw SQLite claim (ms)", "ratio", "CPU ms, self-heal / raw"]
    print(markdown_table(head, rows))
    if results:
        missed = [f"{r['tasks']} ({r['ratio']:.2f}x)" for r in results if not r["target_met"]]
        verdict = "MET" if ratio_met else "NOT MET at " + ", ".join(missed)
        print(f"target (self-heal's claim within {RATIO_TARGET:g}x of raw SQLite's at every size): {verdict}")
    if large is not None:
        n = large["tasks"]
        bare, bare_cpu = large["bare_python_ms"], large["bare_python_cpu_ms"]
        health = f"{large['health_ms']:.0f} ms ({large['health_ratio']:.1f}x `python -c pass`, {bare:.0f} ms)"
        health_cpu = f"{large['health_cpu_ms']:.0f} ms ({large['health_cpu_ratio']:.1f}x, {bare_cpu:.0f} ms)"
        print()
        print(
            markdown_table(
                ["at " + f"{n:,}" + " tasks", "wall", "CPU (user + system)", "peak RSS"],
                [
                    [
                        "`tasks.py add --from FILE` (all of them)",
                        f"{large['bulk_add_s']:.1f} s",
                        f"{large['bulk_add_cpu_s']:.1f} s",
                        f"{large['bulk_add_peak_mb']:.0f} MB",
                    ],
                    [
                        "`tasks.py run-next --json` (claim, run `true`, record)",
                        f"{large['run_next_process_ms']:.0f} ms",
                        f"{large['run_next_cpu_ms']:.0f} ms",
                        f"{large['run_next_peak_mb']:.0f} MB",
                    ],
                    ["`tasks.py list --json`, 1,000 tasks", "", "", f"{large['list_peak_mb']['1000']:.0f} MB"],
                    [f"`tasks.py list --json`, {n:,} tasks", "", "", f"{large['list_peak_mb'][str(n)]:.0f} MB"],
                    ["`health_check.py --cron`", health, health_cpu, ""],
                    [
                        "`health_check.py --cron`, no task tree (for comparison)",
                        f"{large['health_without_tree_ms']:.0f} ms",
                        f"{large['health_without_tree_cpu_ms']:.0f} ms",
                        "",
                    ],
                ],
            )
        )
        print(f"targets: {large['targets_met']}")
    print(f"same claims in the same order in both: {correct}")
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
