"""Time to claim the next actionable task: self-heal's task files against the same claim in SQLite.

The work: a tree of N tasks (N = 100, 1000, 5000; --quick: 100, 1000) built from a fixed seed: each
task has a random type and priority, half of them a random earlier task as parent, and 60% of them are
already END or VOID (a tree in use, before archiving). A claim finds the first actionable task in the
fourth source document's order (type, priority, deeper level, oldest, name; a parent only when every
child is END, VOID or REQUIRES_MANUAL) and marks it PROCESSING, durably, with one winner however many
processes claim at once. K claims (--claims, 20) run back to back, each taking the next task.

self-heal (the target): `TaskStore.transaction()`: take locks/tasks-tree.lock, read every
tasks/<name>.json, pick with `TaskTree.actionable()`, `transition(..., PROCESSING)`, write that one
record atomically with fsync (what `tasks.py run-next` does before it runs anything).

Baseline: stdlib sqlite3, WAL, synchronous=FULL, one `tasks` table with the same rows, indexes on
parent and exec_state; a claim is BEGIN IMMEDIATE (the write lock: one winner), one SELECT with the
document's ORDER BY and a NOT EXISTS subquery for the parent gate, LIMIT 1, an UPDATE, COMMIT.

Context rows: the read-only listing (read every file and order them; SQLite: the same SELECT without
LIMIT); a self-heal claim on the tree archived down to its live set (the trees with work left), which
is what `tasks.archive_after_days` keeps in place; and `tasks.py actionable --json` run as a process,
as cron and agents run it (interpreter start, configuration, the listing), timed once per round.

Each round restores both stores from untimed templates, then times the K claims of every candidate on
time.perf_counter(); the order of the candidates rotates from round to round. A candidate's time per
claim is the median over rounds of its per-round mean; the ratio is the median of per-round ratios.

Checked: both stores claim the very same tasks in the very same order (the ordering rules agree with
the SQL of the source document), and every claimed task is PROCESSING afterwards in both.

No target ratio: SQLite answers from an index, self-heal reads one file per task, so its cost grows
with the live set. The figure that matters is the absolute cost of a claim for the tree sizes a cron
runner meets, next to the ~100 ms a Python process takes to start.

    .venv/bin/python bench/tasks.py [--quick] [--json] [--claims K] [--rounds R]
"""

from __future__ import annotations

import argparse
import functools
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
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

from selfheal.core.config import load_config
from selfheal.state.root import StateRoot
from selfheal.tasks.tree import END, PRIORITIES, PROCESSING, TYPES, VOID, Task, TaskStore
from selfheal.testing import FakeClock

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SIZES, QUICK_SIZES = (100, 1000, 5000), (100, 1000)
CLAIMS, ROUNDS, QUICK_ROUNDS = 20, 5, 2
SEED = 20261121

_WHERE_AND_ORDER = """
  WHERE exec_state IN ('NEW', 'ERROR_FIX_PENDING', 'NORMAL_CRASH')
    AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent = t.name
                    AND c.exec_state NOT IN ('END', 'VOID', 'REQUIRES_MANUAL'))
  ORDER BY CASE type WHEN 'fix' THEN 0 WHEN 'regular' THEN 1 ELSE 2 END,
           CASE priority WHEN 'P0' THEN 0 WHEN 'P1' THEN 1 ELSE 2 END,
           level DESC, created_ts, name
"""
# The source document's get_actionable_tasks(), as SQL: the order and the parent gate.
ACTIONABLE_SQL = "SELECT name FROM tasks t" + _WHERE_AND_ORDER  # noqa: S608 - constant text
CLAIM_SQL = "SELECT name FROM tasks t" + _WHERE_AND_ORDER + " LIMIT 1"  # noqa: S608 - constant text


def build_tasks(n: int) -> list[Task]:
    rng = random.Random(SEED + n)
    out: list[Task] = []
    for i in range(n):
        parent = out[rng.randrange(i)] if i and rng.random() < 0.5 else None
        task = Task(
            name=f"task-{i:05d}",
            type=rng.choice(TYPES),
            priority=rng.choice(PRIORITIES),
            parent=parent.name if parent else None,
            root=parent.root if parent else f"task-{i:05d}",
            level=parent.level + 1 if parent else 1,
            created_ts=1_800_000_000.0 + i,
            updated_ts=1_800_000_000.0 + i,
        )
        roll = rng.random()
        task.exec_state = END if roll < 0.45 else VOID if roll < 0.6 else "NEW"
        out.append(task)
    return out


def make_file_store(folder: Path, tasks: list[Task]) -> None:
    store = TaskStore(StateRoot(folder).ensure(), load_config(), FakeClock())
    with store.transaction() as tree:
        for task in tasks:
            tree.tasks[task.name] = task
            tree.changed[task.name] = task


def make_sqlite(path: Path, tasks: list[Task]) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE tasks (name TEXT PRIMARY KEY, type TEXT, priority TEXT, exec_state TEXT, parent TEXT,"
        " level INTEGER, created_ts REAL, updated_ts REAL, runner_pid INTEGER)"
    )
    db.execute("CREATE INDEX tasks_parent ON tasks(parent)")
    db.execute("CREATE INDEX tasks_state ON tasks(exec_state)")
    db.executemany(
        "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        [(t.name, t.type, t.priority, t.exec_state, t.parent, t.level, t.created_ts, t.updated_ts) for t in tasks],
    )
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


class FileClaims:
    def __init__(self, folder: Path) -> None:
        self.store = TaskStore(StateRoot(folder), load_config())
        self.claimed: list[str] = []

    def claim(self) -> None:
        with self.store.transaction() as tree:
            task = tree.actionable(limit=1)[0]
            tree.transition(task.name, PROCESSING, "bench")
        self.claimed.append(task.name)

    def listing(self) -> int:
        return len(self.store.snapshot().actionable())

    def states(self, names: list[str]) -> list[str]:
        return [self.store.get(n).exec_state for n in names]


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

    def listing(self) -> int:
        return len(self.db.execute(ACTIONABLE_SQL).fetchall())

    def states(self, names: list[str]) -> list[str]:
        return [self.db.execute("SELECT exec_state FROM tasks WHERE name = ?", (n,)).fetchone()[0] for n in names]

    def close(self) -> None:
        self.db.close()


def cli_actionable(home: Path) -> None:
    """`tasks.py actionable --json` as cron or an agent runs it: a new Python process, config, the listing."""
    env = {**os.environ, "SELFHEAL_HOME": str(home)}
    env.pop("SELFHEAL_CONFIG", None)
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "tasks.py"), "actionable", "--json"], env=env, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())


def timed(fn: Callable[[], object], k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - start) / k


def run_size(n: int, claims: int, rounds: int, work: Path) -> dict[str, Any]:
    tasks = build_tasks(n)
    unfinished_roots = {t.root for t in tasks if t.exec_state not in (END, VOID)}
    live = [t for t in tasks if t.root in unfinished_roots]  # what archiving leaves: trees with work left
    templates = work / f"templates-{n}"
    make_file_store(templates / "files", tasks)
    make_file_store(templates / "live", live)
    make_sqlite(templates / "tasks.db", tasks)
    per: dict[str, list[float]] = {k: [] for k in ("files", "sqlite", "files_live", "list_files", "list_sqlite", "cli")}
    ratios: list[float] = []
    correct = True
    orders: list[str] = []
    for r in range(rounds):
        here = work / f"round-{n}-{r}"
        shutil.copytree(templates, here)
        files, live_files = FileClaims(here / "files"), FileClaims(here / "live")
        sql = SqliteClaims(here / "tasks.db")
        jobs: dict[str, tuple[Callable[[], object], int]] = {
            "files": (files.claim, claims),
            "sqlite": (sql.claim, claims),
            "files_live": (live_files.claim, claims),
            "list_files": (files.listing, 5),
            "list_sqlite": (sql.listing, 5),
            "cli": (functools.partial(cli_actionable, here / "files"), 1),
        }
        names = list(jobs)
        names = names[r % len(names) :] + names[: r % len(names)]
        got = {name: timed(*jobs[name]) for name in names}
        for name, value in got.items():
            per[name].append(value)
        ratios.append(got["files"] / got["sqlite"])
        correct = correct and files.claimed == sql.claimed == live_files.claimed
        correct = correct and set(files.states(files.claimed)) == {PROCESSING} == set(sql.states(sql.claimed))
        orders.append(",".join(files.claimed[:3]))
        sql.close()
        shutil.rmtree(here)
    us = {k: statistics.median(v) * 1e6 for k, v in per.items()}
    return {
        "tasks": n,
        "live_tasks": len(live),
        "claims_per_round": claims,
        "rounds": rounds,
        "us_per_claim": {k: round(us[k], 1) for k in ("files", "files_live", "sqlite")},
        "us_per_listing": {"files": round(us["list_files"], 1), "sqlite": round(us["list_sqlite"], 1)},
        "us_cli_actionable": round(us["cli"], 1),
        "ratio_files_to_sqlite": round(statistics.median(ratios), 2),
        "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "same_claims_in_same_order": correct,
        "first_claims": orders[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--claims", type=int, default=CLAIMS)
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    work = Path(tempfile.mkdtemp(prefix="selfheal-bench-tasks-"))
    try:
        results = [run_size(n, args.claims, rounds, work) for n in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    correct = all(r["same_claims_in_same_order"] for r in results)
    if args.json:
        print(json.dumps({"machine": machine(), "results": results, "correct": correct}))
    else:
        rows = [
            [
                f"{r['tasks']} ({r['live_tasks']} live)",
                f"{r['us_per_claim']['files'] / 1000:.2f}",
                f"{r['us_per_claim']['sqlite'] / 1000:.2f}",
                f"{r['ratio_files_to_sqlite']:.1f}x ({r['ratio_range'][0]:.1f}-{r['ratio_range'][1]:.1f})",
                f"{r['us_per_claim']['files_live'] / 1000:.2f}",
                f"{r['us_per_listing']['files'] / 1000:.2f} / {r['us_per_listing']['sqlite'] / 1000:.2f}",
                f"{r['us_cli_actionable'] / 1000:.0f}",
            ]
            for r in results
        ]
        print(machine_line())
        print(
            markdown_table(
                [
                    "tasks in the tree",
                    "self-heal claim (ms)",
                    "SQLite FULL claim (ms)",
                    "ratio",
                    "self-heal, archived to the live set (ms)",
                    "listing: self-heal / SQLite (ms)",
                    "`tasks.py actionable` process (ms)",
                ],
                rows,
            )
        )
        print(f"same claims in the same order in both: {correct}")
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
