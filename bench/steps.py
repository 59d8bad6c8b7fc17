"""Workflow steps per second as a plan grows: 20, 1,000 and 10,000 trivial steps, checkpointed as they run.

The work: a plan of N steps that do nothing, run from a fresh checkpoint by `WorkflowRunner` in one
process: `command` steps run `true` (a process per step: what a YAML plan costs) and `python` steps are
functions of the `Workflow` API that return None (no process: the checkpoint's own cost shows). Each step
saves the checkpoint durably before it starts and after it ends, as every workflow does.

A cell runs until its plan completes or `--budget` seconds pass (a 10,000-step plan of the old code would
take many minutes); steps/s is the steps completed over the time they took, on time.perf_counter(). The
checkpoint is as big as the plan from the first step on (every step has its record), so the rate over
the first part of a long plan is its rate. Each cell runs in its own process on its own state root;
--against PATH runs the same cells with another checkout's library (the code before a change) in the
same run, so both are measured on the same machine at the same moment.

Checked: a cell that completes reports status completed with every step done, and `status()` reads the
checkpoint back with every step done.

Target: steps/s at 10,000 steps within 2x of steps/s at 20 (a save costs the same at any plan size): the
rate at the largest plan over the rate at the smallest, per kind of step, at least 0.5 (1 is flat).

    .venv/bin/python bench/steps.py [--quick] [--json] [--budget S] [--against OTHER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
SIZES, QUICK_SIZES = (20, 1000, 10_000), (20, 200)
TARGET = 2.0  # the largest plan's rate at most this many times below the smallest's

DRIVER = r"""
import json, sys, time
from pathlib import Path
from selfheal.durable.workflow import Command, Plan, Step, Workflow, WorkflowRunner, status
from selfheal.state.root import StateRoot

kind, n, budget, home = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
state = StateRoot(home).ensure()
if kind == "command":
    steps = tuple(Step(f"s{i}", Command(argv=("true",))) for i in range(n))
    plan = Plan("bench", steps)
else:
    wf = Workflow("bench")
    for i in range(n):
        wf.step(lambda ctx: None, name=f"s{i}")
    plan = wf.plan
done = 0
started = time.perf_counter()
last = started

class Budget(Exception):
    pass

def progress(event):
    global done, last
    if event.kind == "done":
        done += 1
        last = time.perf_counter()
        if last - started > budget:
            raise Budget

runner = WorkflowRunner(plan, "bench", state=state, progress=progress)
completed = False
try:
    result = runner.run()
    completed = result.status == "completed"
except Budget:
    pass
checked = True
if completed:
    data = status("bench", state=state)
    checked = data is not None and all(data.steps[f"s{i}"].state == "done" for i in range(n))
print(json.dumps({"done": done, "seconds": last - started, "completed": completed, "checked": checked}))
"""


def cell(root: Path, kind: str, n: int, budget: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
        env["SELFHEAL_HOME"] = home
        env["PYTHONPATH"] = os.pathsep.join([str(root / "scripts"), env.get("PYTHONPATH", "")])
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, kind, str(n), str(budget), home],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{root} {kind} {n}: {proc.stderr[-2000:]}")
        out: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    out["steps_per_s"] = out["done"] / out["seconds"] if out["seconds"] > 0 else 0.0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 and 200 steps, 5 s per cell")
    parser.add_argument("--budget", type=float, default=None, help="seconds per cell at most (default 30)")
    parser.add_argument("--against", type=Path, help="another checkout to time in the same run (the baseline)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    budget = args.budget if args.budget is not None else (5.0 if args.quick else 30.0)
    roots = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, root in roots.items():
        for kind in ("python", "command"):
            for n in sizes:
                results.setdefault(name, {})[f"{kind} {n}"] = cell(root, kind, n, budget)
    correct = all(r["checked"] for cells in results.values() for r in cells.values())
    this = results["this"]
    ratio = {
        k: this[f"{k} {sizes[0]}"]["steps_per_s"] / this[f"{k} {sizes[-1]}"]["steps_per_s"]
        for k in ("python", "command")
    }
    # The baseline is the smallest plan's rate: the rate at the largest over it (1: flat; the target: >= 0.5).
    rate_ratio = {k: 1 / v for k, v in ratio.items()}
    target_met = all(v >= 1 / TARGET for v in rate_ratio.values())
    if args.json:
        out = {"machine": machine(), "results": results, "slowdown": ratio, "rate_ratio": rate_ratio}
        print(json.dumps({**out, "target_met": target_met, "correct": correct}, indent=2))
        return 0 if correct else 1
    print(machine_line())
    rows = []
    for key in this:
        row = [key, f"{this[key]['steps_per_s']:.0f}"]
        if "against" in results:
            row.append(f"{results['against'][key]['steps_per_s']:.0f}")
        rows.append(row)
    headers = ["plan", "steps/s"] + (["steps/s (against)"] if "against" in results else [])
    print(markdown_table(headers, rows))
    print(
        f"rate at {sizes[-1]:,} steps over the rate at {sizes[0]} (baseline; 1 is flat): "
        + ", ".join(f"{k} {v:.2f}x" for k, v in rate_ratio.items())
        + f"; target (within {TARGET:g}x, at least {1 / TARGET:.2f}x): "
        + ("MET" if target_met else "NOT MET")
    )
    print("checks: " + ("passed" if correct else "FAILED"))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
