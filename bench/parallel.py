"""Wall time of a plan of independent steps run one after another (the baseline: a plan without `after`)
and at once (`after: []`, workflows.max_parallel), and of a model call answered by the endpoint against
one answered from models.cache; each pair timed in the same run.

Plans: K command steps (default 8), each `sleep S` (default 0.25 s), run by `WorkflowRunner` from a fresh
checkpoint on its own state root: `sequential` has no `after` (as every plan before), `parallel` gives each
step `after: []`, with max_parallel 4 (the default). The ideal: K x S sequential, ceil(K / 4) x S parallel,
plus per-step process and checkpoint costs. Each plan runs R rounds (default 3); the median is reported.

Model calls: `complete()` through the real openai client against selfheal.testing.FakeModelServer on
localhost, N calls (default 50) of one prompt with models.cache off (each call a request) and on (the first
call a request, the rest hits), timed on time.perf_counter(); the median per call is reported.

Checked: every plan completes with every step done, each step's journal line once; with the cache on, the
server saw one request; with it off, N.

Target: the parallel plan within 1.5x of the ideal ceil(K / 4) x S; a cache hit faster than a request.

    .venv/bin/python bench/parallel.py [--quick] [--json] [--steps K] [--sleep S] [--rounds R] [--calls N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from selfheal.core.config import load_config  # noqa: E402
from selfheal.durable.workflow import WorkflowRunner, load_plan  # noqa: E402
from selfheal.models.llm import complete  # noqa: E402
from selfheal.state.root import StateRoot  # noqa: E402
from selfheal.testing import FakeModelServer  # noqa: E402


def run_plan(folder: Path, steps: int, sleep: float, parallel: bool) -> tuple[float, bool]:
    lines = ["steps:"]
    for i in range(steps):
        after = ", after: []" if parallel else ""
        lines.append(f'  - {{name: s{i}, shell: "sleep {sleep}; echo s{i} >> journal"{after}}}')
    plan_file = folder / "plan.yaml"
    plan_file.write_text("\n".join(lines) + "\n")
    (folder / "journal").unlink(missing_ok=True)
    state = StateRoot(folder / "state").ensure()
    task = f"bench-{'par' if parallel else 'seq'}-{time.monotonic_ns()}"
    started = time.perf_counter()
    result = WorkflowRunner(load_plan(plan_file), task, state=state, config=load_config()).run()
    seconds = time.perf_counter() - started
    journal = (folder / "journal").read_text().split()
    ok = result.status == "completed" and sorted(journal) == sorted(f"s{i}" for i in range(steps))
    return seconds, ok


def time_calls(folder: Path, calls: int, cache: bool) -> tuple[float, bool]:
    with FakeModelServer() as server:
        config_file = folder / f"config-{cache}.yaml"
        config_file.write_text(
            "models:\n"
            + ("  cache: {ttl_s: 3600, max_entries: 100}\n" if cache else "")
            + f'  chain:\n    - {{name: primary, base_url: "{server.url("primary")}", model: m}}\n'
        )
        os.environ["SELFHEAL_CONFIG"] = str(config_file)
        config = load_config()
        state = StateRoot(folder / f"state-{cache}").ensure()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            complete("What failed last night?", config=config, state=state)
            times.append(time.perf_counter() - started)
        expected = 1 if cache else calls
        return statistics.median(times[1:] if cache else times), server.requests("primary") == expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 20 calls")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    calls = args.calls or (20 if args.quick else 50)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["SELFHEAL_HOME"] = str(home)
        os.environ.pop("SELFHEAL_CONFIG", None)
        plans: dict[str, list[float]] = {"sequential": [], "parallel": []}
        correct = True
        for _ in range(rounds):
            for name, times in plans.items():  # both in each round, so drift hits them alike
                seconds, ok = run_plan(Path(tmp), args.steps, args.sleep, name == "parallel")
                times.append(seconds)
                correct = correct and ok
        miss, ok_miss = time_calls(Path(tmp), calls, cache=False)
        hit, ok_hit = time_calls(Path(tmp), calls, cache=True)
        correct = correct and ok_miss and ok_hit
    seq, par = statistics.median(plans["sequential"]), statistics.median(plans["parallel"])
    ideal = math.ceil(args.steps / 4) * args.sleep
    met = par <= 1.5 * ideal and hit < miss
    result: dict[str, Any] = {
        "machine": machine(),
        "steps": args.steps,
        "sleep_s": args.sleep,
        "sequential_s": seq,
        "parallel_s": par,
        "ideal_parallel_s": ideal,
        "call_request_ms": miss * 1000,
        "call_cached_ms": hit * 1000,
        "target_met": met,
        "correct": correct,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if correct else 1
    print(machine_line())
    rows = [
        [f"{args.steps} steps of sleep {args.sleep:g}, one after another (baseline)", f"{seq:.2f} s"],
        [f"the same with after: [] (max_parallel 4; ideal {ideal:.2f} s)", f"{par:.2f} s"],
        ["model call, answered by the endpoint (baseline)", f"{miss * 1000:.2f} ms"],
        ["model call, answered from models.cache", f"{hit * 1000:.2f} ms"],
    ]
    print(markdown_table(["case", "median"], rows))
    print(f"speed-up {seq / par:.1f}x; target {'met' if met else 'NOT MET'}")
    print("checks: " + ("passed" if correct else "FAILED"))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
