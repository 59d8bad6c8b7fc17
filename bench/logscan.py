"""Time `analyze_logs.py --json` on a 400 MB log against an awk one-liner that only counts failure reasons.

The log: the source documents' format (`2024-03-15T14:22:18 [RETRY] task=doc-gen-587 model=Qwen3-4B
reason=timeout attempt=1/3 delay=5s`, `[SUCCESS] task=... duration=47.2s tokens=1428`, plus the skill's
[FAILED], [FALLBACK] and [BREAKER] lines), written from a fixed seed into a temporary folder: runs of
2,000 tasks (`doc-gen-1` ... `doc-gen-2000`), four in flight at a time and their lines interleaved, each
run trying Qwen3-4B up to 3 times (20% of attempts fail, with the first document's reasons: timeout,
format_error, transient, oom, rate_limit, auth), then falling back along the chain (Qwen1.5-0.5B,
Phi-3-mini); 5 failures in a row on a model trip its breaker. The generator counts what it writes.

Candidates, run as processes one after the other, their order rotating from round to round:
* awk (the baseline): `awk '/\\[(RETRY|FAILED)\\]/{if (match($0, /reason=[A-Za-z0-9_]+/)) ...}'`, counting
  failure reasons only, as the first source document's grep recipe does;
* `analyze_logs.py --json FILE`: the whole report, as shipped (workers: one per CPU; the native scanner where
  install.sh built it, which the report's `engine` says and the table's title line repeats);
* the same with `analysis.workers: 1` (one process), for the cost per core;
* the same with `analysis.engine: python`: the pure-Python fast path, what a machine without a C compiler runs;
* awk again, doing the least the report needs from each line (`AWK_REPORT`: per task the count, sum and
  maximum of the durations; every failure's task, model and reason; fallbacks; breaker trips per hour;
  no check of the line's shape or time), for what the baseline's tool itself takes for this report;
* the first source document's own Python analyser (a per-line loop, failure reasons only), for scale.

Bytecode is written once before timing (the benchmark's own environment drops PYTHONDONTWRITEBYTECODE, and
one untimed run of each Python candidate comes first), as it is for a user: an installed copy compiles its
modules on its first run. Time is wall time per run (time.perf_counter around the process); peak memory is
the largest sum of the proportional set sizes (PSS: a page shared by a process and its forked worker counted
once, halved between them) of the process and its children, sampled every 5 ms with psutil (RSS where there is
no PSS), in one more run of each candidate after the timed rounds: reading a process's PSS takes CPU the
process measured would otherwise have, so a timed run is never watched. The ratio is the median of the
per-round ratios to awk. Checked: analyze_logs's failure reasons equal awk's, and both equal the generator's
counts; its totals equal the generator's.

Target: at most 1.5 times awk's wall time, under 100 MB peak.

`--before DIR`: DIR is another checkout of the skill (an earlier commit, for instance); its
`analyze_logs.py` is timed too, with its own library first on the path, as one more candidate in the same
rotation, and its report must equal this checkout's (the "before" figure of a change, from the same run).

A second log, INFO-heavy, is measured the same way beside it: the same events with untracked lines between
them, 55% of all lines (`[INFO]`, `[DEBUG]`, `[WARN]` with fields of their own), as in a real gateway log.
Its target: at most 3 times awk's failure-reason count, under 100 MB; every count still exact.

    .venv/bin/python bench/logscan.py [--quick] [--json] [--size MB] [--rounds R] [--keep] [--before DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
ANALYZE = ROOT / "scripts" / "analyze_logs.py"
SEED = 20261121
SIZE_MB, QUICK_SIZE_MB = 400, 4
ROUNDS, QUICK_ROUNDS = 5, 2
TARGET_RATIO, TARGET_RSS_MB = 1.5, 100
TARGET_RATIO_INFO = 3.0
INFO_SHARE = 0.55
INFO_LINES = (
    "[INFO] task={task} model=Qwen3-4B msg=request_sent tokens_in={n}",
    "[INFO] gateway event loop: ok max={n}ms p99=22ms util=0.006",
    "[DEBUG] task={task} step=fetch endpoint=http://127.0.0.1:8000/v1 attempt=1 reason=none",
    "[WARN] task={task} slow response from qwen3-4b after {n}ms",
    "[INFO] heartbeat task={task} pid={n}",
)
TASKS = 2000
IN_FLIGHT = 4
CHAIN = ("Qwen3-4B", "Qwen1.5-0.5B", "Phi-3-mini")
TARGETS = ("qwen3-4b", "qwen1.5-0.5b", "phi-3-mini")
REASONS = ("timeout", "format_error", "transient", "oom", "rate_limit", "auth")
WEIGHTS = (30, 20, 20, 12, 12, 6)
FAIL_RATE = (0.20, 0.10, 0.05)
AWK_PROGRAM = (
    r"/\[(RETRY|FAILED)\]/{ if (match($0, /reason=[A-Za-z0-9_]+/)) c[substr($0, RSTART+7, RLENGTH-7)]++ }"
    r" END { for (r in c) print c[r], r }"
)
# The least the report takes from each line, in awk: what awk itself costs for the report (no validation).
AWK_REPORT = (
    r'$2 == "[SUCCESS]" { t = substr($3, 6); d = substr($4, 10) + 0; n[t]++; s[t] += d; if (d > m[t]) m[t] = d; next }'
    r' $2 == "[RETRY]" || $2 == "[FAILED]" { f[$2 " " $3 " " $4 " " $5]++; next }'
    r' $2 == "[FALLBACK]" { fb[$3 " " $4 " " $5 " " $6]++; next }'
    r' $2 == "[BREAKER]" { if ($5 == "state=open") trips[substr($1, 1, 13) " " $4]++; next }'
    r" { other[$2]++ }"
    r' END { for (k in f) { split(k, a, " "); r[substr(a[4], 8)] += f[k] } for (x in r) print r[x], x }'
)
# The first source document's analyser, as printed there (made runnable: the file is the first argument).
DOC_ANALYSER = """
import re, sys
from collections import defaultdict
error_stats = defaultdict(int)
with open(sys.argv[1]) as f:
    for line in f:
        if '[RETRY]' in line or '[FAILED]' in line:
            reason = re.search(r'reason=(\\w+)', line)
            if reason:
                error_stats[reason.group(1)] += 1
for reason, count in sorted(error_stats.items(), key=lambda x: -x[1]):
    print(count, reason)
"""


@dataclass
class Written:
    """What the generator wrote."""

    bytes: int = 0
    lines: int = 0
    events: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # of [RETRY] and [FAILED]
    other_tags: Counter[str] = field(default_factory=Counter)  # [INFO] and the other untracked lines


def _run(rng: random.Random, out: Written, failures: list[int]) -> list[str]:
    """One run's lines (without time): retries on the primary, fallbacks along the chain, success or failure."""
    task = f"doc-gen-{rng.randint(1, TASKS)}"
    lines = []
    for m, model in enumerate(CHAIN):
        for attempt in range(1, 4):
            if rng.random() >= FAIL_RATE[m]:
                failures[m] = 0
                lines.append(f"[SUCCESS] task={task} duration={rng.uniform(2, 90):.1f}s tokens={rng.randint(80, 3000)}")
                out.events["success"] += 1
                return lines
            reason = rng.choices(REASONS, WEIGHTS)[0]
            failures[m] += 1
            if failures[m] == 5:
                lines.append(f"[BREAKER] task=- target={TARGETS[m]} state=open reason={reason} trips=1 open_for=60s")
                out.events["breaker"] += 1
            if attempt < 3 and reason != "auth":
                lines.append(f"[RETRY] task={task} model={model} reason={reason} attempt={attempt}/3 delay=5s")
                out.events["retry"] += 1
                out.reasons[reason] += 1
                continue
            if m + 1 < len(CHAIN):
                lines.append(
                    f"[FALLBACK] task={task} target={TARGETS[m]} model={model} reason={reason} attempts={attempt}"
                )
                out.events["fallback"] += 1
                break
            lines.append(f"[FAILED] task={task} model={model} reason={reason} attempts={attempt}")
            out.events["failed"] += 1
            out.reasons[reason] += 1
            return lines
    return lines  # pragma: no cover - the last model always ends the run


def generate(path: Path, size: int, seed: int = SEED, *, info_share: float = 0.0) -> Written:
    """Write about `size` bytes of log to `path`, deterministically; return what was written.

    `info_share`: the share of lines that are untracked ([INFO], [DEBUG], [WARN]) between the events."""
    rng = random.Random(seed)
    out = Written()
    failures = [0] * len(CHAIN)
    runs: list[list[str]] = [_run(rng, out, failures) for _ in range(IN_FLIGHT)]
    clock = 1_780_272_000  # 2026-06-01T00:00:00 UTC
    with path.open("w", encoding="ascii", newline="\n") as fh:
        chunk: list[str] = []
        while out.bytes < size:
            clock += rng.random() < 0.6
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S ", time.gmtime(clock))
            if info_share and rng.random() < info_share:
                text = rng.choice(INFO_LINES).format(task=f"doc-gen-{rng.randint(1, TASKS)}", n=rng.randint(5, 5000))
                out.other_tags[text[1 : text.index("]")]] += 1
                line = stamp + text + "\n"
            else:
                slot = rng.randrange(IN_FLIGHT)
                if not runs[slot]:
                    runs[slot] = _run(rng, out, failures)
                line = stamp + runs[slot].pop(0) + "\n"
            chunk.append(line)
            out.bytes += len(line)
            out.lines += 1
            if len(chunk) == 20_000:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))
    # Runs cut off at the end of the file: what they did not write is not counted.
    for pending in runs:
        for line in pending:
            event = line[1 : line.index("]")].lower()
            out.events[event] -= 1
            if event in ("retry", "failed"):
                out.reasons[line.split("reason=")[1].split()[0]] -= 1
    out.events, out.reasons = +out.events, +out.reasons
    return out


def _memory(p: psutil.Process) -> int:
    """PSS where the system has it (pages shared with forked workers counted once), else RSS."""
    try:
        return int(p.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):  # pragma: no cover - not Linux
        return int(p.memory_info().rss)


class PeakRss:
    """The largest sum of memory (PSS on Linux) over a process and its descendants, sampled every 5 ms."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):  # it may end between the listing and the look
                        total += _memory(p)
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            self._stop.wait(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(argv: list[str], env: dict[str, str], *, sample: bool = False) -> tuple[float, int, str]:
    """Run a command; return its wall time, peak memory (bytes, with its children; 0 unless `sample`) and stdout.

    Sampling reads /proc/PID/smaps_rollup of every process every 5 ms, which takes CPU from the processes
    measured on a small machine: runs that are timed are not sampled, and runs that are sampled are not timed.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sampler = PeakRss(proc.pid) if sample else None
    stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - start
    peak = sampler.stop() if sampler else 0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {stderr.decode(errors='replace')[-2000:]}")
    return elapsed, peak, stdout.decode()


def counts(text: str) -> dict[str, int]:
    """`count reason` lines, as awk and the document's analyser print them."""
    return {r: int(n) for n, r in (line.split() for line in text.splitlines() if line.strip())}


def awk_version(awk: str) -> str:
    for flag in ("--version", "-W version", "-V"):
        proc = subprocess.run([awk, *flag.split()], capture_output=True, text=True, check=False)
        first = (proc.stdout or proc.stderr).splitlines()[:1]
        if proc.returncode == 0 and first:
            return first[0].strip()
    return awk  # pragma: no cover - an awk that names no version


def measure(
    awk: str, size_mb: float, rounds: int, *, keep: bool, info_share: float, before: Path | None = None
) -> dict[str, Any]:
    """Generate one log and time every candidate on it; the result with its checks and the target."""
    target_ratio = TARGET_RATIO_INFO if info_share else TARGET_RATIO
    work = Path(tempfile.mkdtemp(prefix="selfheal-logscan-"))
    try:
        log = work / "seed-format.log"
        started = time.perf_counter()
        written = generate(log, int(size_mb * 1_000_000), info_share=info_share)
        generated_s = time.perf_counter() - started
        single = work / "single.yaml"
        single.write_text("analysis: {workers: 1}\n")
        in_python = work / "python.yaml"
        in_python.write_text("analysis: {engine: python}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode as a user has it (written by the untimed runs)
        env["SELFHEAL_HOME"] = str(work / "state")
        candidates = {
            "awk": ([awk, AWK_PROGRAM, str(log)], env),
            "analyze_logs": ([sys.executable, str(ANALYZE), "--json", str(log)], env),
            "analyze_logs_1_process": (
                [sys.executable, str(ANALYZE), "--json", str(log)],
                {**env, "SELFHEAL_CONFIG": str(single)},
            ),
            "analyze_logs_python": (
                [sys.executable, str(ANALYZE), "--json", str(log)],
                {**env, "SELFHEAL_CONFIG": str(in_python)},
            ),
            "document_analyser": ([sys.executable, "-c", DOC_ANALYSER, str(log)], env),
            "awk_report": ([awk, AWK_REPORT, str(log)], env),
        }
        if before is not None:
            old_env = {**env, "PYTHONPATH": str(before / "scripts")}
            old_script = str(before / "scripts" / "analyze_logs.py")
            candidates["analyze_logs_before"] = ([sys.executable, old_script, "--json", str(log)], old_env)
        subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=True)  # into the page cache first
        warm = work / "warm.log"
        warm.write_text("2026-06-01T00:00:00 [INFO] bytecode\n")
        for argv, run_env in candidates.values():  # each Python candidate once on a tiny log, untimed
            if argv[0] == sys.executable:
                timed([*argv[:-1], str(warm)], run_env)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        peaks: dict[str, int] = dict.fromkeys(candidates, 0)
        outputs: dict[str, str] = {}
        names = list(candidates)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                argv, run_env = candidates[name]
                elapsed, _, out = timed(argv, run_env)
                times[name].append(elapsed)
                outputs[name] = out
        for name in names:  # memory: one more run each, watched, and not timed
            argv, run_env = candidates[name]
            _, peaks[name], _ = timed(argv, run_env, sample=True)
        ratios = [a / b for a, b in zip(times["analyze_logs"], times["awk"], strict=True)]
        ratios_single = [a / b for a, b in zip(times["analyze_logs_1_process"], times["awk"], strict=True)]
        ratios_python = [a / b for a, b in zip(times["analyze_logs_python"], times["awk"], strict=True)]
        ratios_doc = [a / b for a, b in zip(times["document_analyser"], times["awk"], strict=True)]
        ratios_awk_report = [a / b for a, b in zip(times["awk_report"], times["awk"], strict=True)]
        report = json.loads(outputs["analyze_logs"])
        single_report = json.loads(outputs["analyze_logs_1_process"])
        python_report = json.loads(outputs["analyze_logs_python"])
        aside = ("window", "engine")  # the time it ran; which fast path read the lines
        ours = {row["reason"]: row["count"] for row in report["failure_reasons"]}
        awk_counts = counts(outputs["awk"])
        checks = {
            "reasons_equal_awk": ours == awk_counts,
            "awk_equals_generator": awk_counts == dict(written.reasons),
            "document_analyser_equals_generator": counts(outputs["document_analyser"]) == dict(written.reasons),
            "awk_report_equals_generator": counts(outputs["awk_report"]) == dict(written.reasons),
            "events_equal_generator": report["events"] == dict(written.events),
            "other_tags_equal_generator": report["other_tags"] == dict(written.other_tags),
            "lines_equal_generator": report["lines"]["total"] == written.lines and report["lines"]["malformed"] == 0,
            "one_process_same_report": {k: v for k, v in single_report.items() if k != "window"}
            == {k: v for k, v in report.items() if k != "window"},
            "python_engine_same_report": python_report["engine"] == "python"
            and {k: v for k, v in python_report.items() if k not in aside}
            == {k: v for k, v in report.items() if k not in aside},
        }
        if before is not None:
            earlier = json.loads(outputs["analyze_logs_before"])
            checks["before_same_report"] = {k: v for k, v in earlier.items() if k not in aside} == {
                k: v for k, v in report.items() if k not in aside
            }
        rss_mb = peaks["analyze_logs"] / 1e6  # PSS summed over the process and its workers
        ratio = statistics.median(ratios)
        result: dict[str, Any] = {
            "machine": {**machine(), "awk": awk_version(awk)},
            "file": {
                "bytes": log.stat().st_size,
                "lines": written.lines,
                "seed": SEED,
                "generated_s": round(generated_s, 2),
                "events": dict(written.events),
                "untracked_share": round(sum(written.other_tags.values()) / max(1, written.lines), 3),
            },
            "rounds": rounds,
            "results": {
                name: {
                    "median_s": round(statistics.median(times[name]), 3),
                    "min_s": round(min(times[name]), 3),
                    "max_s": round(max(times[name]), 3),
                    "peak_mb": round(peaks[name] / 1e6, 1),
                }
                for name in candidates
            },
            "ratio": {"median": round(ratio, 2), "min": round(min(ratios), 2), "max": round(max(ratios), 2)},
            "ratio_one_process": {
                "median": round(statistics.median(ratios_single), 2),
                "min": round(min(ratios_single), 2),
                "max": round(max(ratios_single), 2),
            },
            "engine": report["engine"],
            "ratio_python_engine": round(statistics.median(ratios_python), 2),
            "ratio_document_analyser": round(statistics.median(ratios_doc), 2),
            "ratio_awk_report": round(statistics.median(ratios_awk_report), 2),
            "checks": checks,
            "correct": all(checks.values()),
            "target": {
                "ratio": target_ratio,
                "rss_mb": TARGET_RSS_MB,
                "ratio_met": ratio <= target_ratio,
                "rss_met": rss_mb < TARGET_RSS_MB,
            },
        }
        if keep:
            result["file"]["path"] = str(log)
        result["times"] = times
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def show(title: str, result: dict[str, Any], rounds: int) -> None:
    """One log's results as a markdown table, with its checks and target."""
    times = result["times"]
    print(
        f"\n{title}: {result['file']['bytes'] / 1e6:.0f} MB, {result['file']['lines']:,} lines "
        f"({result['file']['untracked_share']:.0%} untracked; seed {SEED}); {rounds} rounds, order rotating; "
        f"analyze_logs.py's engine: {result['engine']}"
    )
    labels = {
        "awk": "awk one-liner: failure reasons only (baseline)",
        "analyze_logs": "`analyze_logs.py --json`: the whole report",
        "analyze_logs_1_process": "the same, `analysis.workers: 1`",
        "analyze_logs_python": "the same, `analysis.engine: python` (no native scanner)",
        "document_analyser": "the first document's Python analyser: reasons only",
        "awk_report": "awk taking what the report needs from each line (no validation)",
        "analyze_logs_before": "`analyze_logs.py --json` of the `--before` checkout",
    }
    rows = []
    for name, label in labels.items():
        if name not in result["results"]:
            continue
        res = result["results"][name]
        vs_awk = [a / b for a, b in zip(times[name], times["awk"], strict=True)]
        rows.append(
            [
                label,
                f"{res['median_s']:.2f} ({res['min_s']:.2f}-{res['max_s']:.2f})",
                f"{statistics.median(vs_awk):.2f}x ({min(vs_awk):.2f}-{max(vs_awk):.2f})",
                f"{res['peak_mb']:.0f}",
            ]
        )
    print(markdown_table(["run", "wall s, median (min-max)", "vs awk, median (min-max)", "peak MB (PSS)"], rows))
    print(f"checks: {result['checks']}")
    met = result["target"]
    rss_mb = result["results"]["analyze_logs"]["peak_mb"]
    print(
        f"target <= {met['ratio']}x awk: {'met' if met['ratio_met'] else 'NOT met'} ({result['ratio']['median']}x); "
        f"peak < {TARGET_RSS_MB} MB: {'met' if met['rss_met'] else 'NOT met'} ({rss_mb:.0f} MB)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_SIZE_MB} MB log, {QUICK_ROUNDS} rounds")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--size", type=float, metavar="MB", help=f"log size (default {SIZE_MB})")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the generated log and print where it is")
    parser.add_argument(
        "--before", type=Path, metavar="DIR", help="another checkout whose analyze_logs.py is timed beside this one"
    )
    args = parser.parse_args()
    size_mb = args.size or (QUICK_SIZE_MB if args.quick else SIZE_MB)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    awk = shutil.which("awk")
    if awk is None:
        sys.stderr.write("awk is not installed: the baseline cannot run\n")
        return 2

    if args.before is not None and not (args.before / "scripts" / "analyze_logs.py").is_file():
        sys.stderr.write(f"--before {args.before}: no scripts/analyze_logs.py there\n")
        return 2
    before = args.before.resolve() if args.before is not None else None
    result = measure(awk, size_mb, rounds, keep=args.keep, info_share=0.0, before=before)
    result["info_heavy"] = measure(awk, size_mb, rounds, keep=args.keep, info_share=INFO_SHARE, before=before)
    result["correct"] = result["correct"] and result["info_heavy"]["correct"]
    if args.json:
        print(json.dumps(result))
        return 0
    print(machine_line() + f", {result['machine']['awk']}")
    for title, res in (("Seed-format log", result), ("INFO-heavy log", result["info_heavy"])):
        show(title, res, rounds)
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
