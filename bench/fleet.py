"""Fleet mode's cost: a model call's breaker and a ledger event, on PostgreSQL against this host's files.

Breaker: one process calls `Breakers.acquire(target)` then `release(permit, ok=True)` N times, the work
a model call adds for its breaker; once with single-host settings (the file under flock, the baseline)
and once in fleet mode (one row per target under SELECT ... FOR UPDATE). Cost per call is wall time / N.

Ledger: one process calls `Ledger.record("retry", ...)` N times; the baseline writes this host's files
(the ledger line and the log line), fleet mode writes the same files and the event to the fleet's table
(one INSERT in autocommit). Rate is events per wall second.

Round trips to the server, which is what fleet mode costs on a quiet machine: a breaker's acquire and
release are one transaction each, two round trips per transaction (state/pg.py), so four per model
call; a ledger event is one.

Each figure is the median of the rounds; both modes run in the same process, alternating, in the same
run. The server is a throwaway cluster on a Unix socket (tests/helpers/postgres.py, fsync off), or the
one SELFHEAL_TEST_DATABASE_URL names; over a network every fleet figure adds the round trips.
Correctness: every fleet event is in the table exactly once, and the breaker ends closed.

Claims: 6 worker processes claim every task of a fresh table of N tasks (runnable, flat) until none is
left, three ways, each round in turn: self-heal's claim on PostgreSQL (`TaskStore.claim` in fleet mode:
one autocommit UPDATE ... WHERE task_name = (the document's pick, its parent gate a column of the row, FOR
UPDATE SKIP LOCKED) RETURNING the row and whether a lease ran out), a bare loop on the same table (one autocommit
`UPDATE tasks ... WHERE task_name = (SELECT task_name ... ORDER BY <the document's order> LIMIT 1 FOR
UPDATE SKIP LOCKED) RETURNING task_name`), and self-heal's claim on SQLite (the default, one host's
tasks.db). Rate is N / wall seconds from the go signal to the last worker done; with it the CPU time per
claim of the workers and of their server backends (/proc, when the server runs on this machine), which the
load of a shared machine hardly moves. Correctness: each task claimed exactly once (0 double claims), none
left.

Ledger read (`--ledger-read`): analyze_logs' report over a window of N events of about 1 KB each in the
fleet's ledger, two ways, each in its own process, alternating by round: the read as it is (state.pg.fetch_events,
pages of FETCH_ROWS rows, streamed into the scan) and the read it replaced, the baseline (every row fetched
at once, every line built, the lines joined, then scanned). Figure: the growth of the process's peak resident
memory during the analysis (VmHWM after it over VmRSS before it, the peak reset first), and its wall time.
Correctness: both count every event, and their reports are the same.

    .venv/bin/python bench/fleet.py [--quick] [--json] [--calls N] [--rounds R] [--claims N] [--claims-only]
    .venv/bin/python bench/fleet.py --ledger-read [--quick] [--json] [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from selfheal.core.breaker import CLOSED, Breakers  # noqa: E402
from selfheal.core.config import Config, load_config  # noqa: E402
from selfheal.core.ledger import Ledger  # noqa: E402
from selfheal.state.root import StateRoot  # noqa: E402

CALLS, ROUNDS = 2_000, 5
QUICK_CALLS, QUICK_ROUNDS = 200, 3
CLAIMS, QUICK_CLAIMS, WORKERS = 3_000, 600, 6
CLAIM_MODES = ("selfheal_pg", "bare_pg", "selfheal_sqlite")
READ_EVENTS, QUICK_READ_EVENTS, READ_PAD = 100_000, 20_000, 900  # events in the window; padding, bytes each
READ_MODES = ("paged", "whole")


def with_url(config: Config, url: str | None, host: str) -> Config:
    return dataclasses.replace(config, store=dataclasses.replace(config.store, url=url, host_id=host))


def breaker_round(state: StateRoot, config: Config, calls: int) -> float:
    """Seconds per acquire + release."""
    breakers = Breakers(state, config.breakers, store=config.store)
    breakers.release(breakers.acquire("bench-model"), ok=True)  # connect and create the row first
    start = time.perf_counter()
    for _ in range(calls):
        breakers.release(breakers.acquire("bench-model"), ok=True)
    return (time.perf_counter() - start) / calls


def ledger_round(state: StateRoot, config: Config, calls: int, tag: str) -> float:
    """Events per second."""
    ledger = Ledger(state, config)
    ledger.record("start", task="bench")
    start = time.perf_counter()
    for n in range(calls):
        ledger.record("retry", task="bench", error_class="transient", attempt=1, max_attempts=3, seq=n, round=tag)
    return calls / (time.perf_counter() - start)


# -- claims -------------------------------------------------------------------------------------------------


def bare_claim_sql() -> str:
    """The bare SKIP LOCKED claim, on the same table, in the same order, with nothing else."""
    from selfheal.state.taskdb import ACTIONABLE_IN, ORDER_BY

    return (
        "UPDATE tasks SET exec_state = 'PROCESSING', status = 'running', runner = %s, run_id = %s,"  # noqa: S608
        " execution_count = execution_count + 1, started_ts = EXTRACT(EPOCH FROM clock_timestamp()),"
        " heartbeat_ts = EXTRACT(EPOCH FROM clock_timestamp())"
        f" WHERE task_name = (SELECT task_name FROM tasks WHERE {ACTIONABLE_IN} ORDER BY {ORDER_BY}"
        " LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING task_name"
    )


def backend_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a server backend has used so far; 0 when it cannot be read (another machine)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def claim_worker(mode: str, go: str, where: str, host: str) -> None:
    """One claiming process: waits for `go`, claims until nothing is left, prints the names it got and the CPU
    time it and its server backend used meanwhile."""
    names: list[str] = []
    backend: int | None = None
    if mode == "bare_pg":
        import psycopg

        conn = psycopg.connect(where, autocommit=True)
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        statement, n = bare_claim_sql(), 0
        while not os.path.exists(go):
            time.sleep(0.001)
        cpu, server = time.process_time(), backend_cpu_s(backend)
        while True:
            n += 1
            row = conn.execute(statement, (json.dumps({"host": host, "pid": os.getpid()}), f"{host}-{n}")).fetchone()
            if row is None:
                break
            names.append(row[0])
    else:
        from selfheal.tasks.tree import TaskStore, runner_identity

        url = where if mode == "selfheal_pg" else None
        base = load_config(env={"SELFHEAL_HOME": tempfile.mkdtemp(prefix="selfheal-bench-")})
        state = StateRoot(Path(where) if url is None else Path(tempfile.mkdtemp(prefix="selfheal-bench-")))
        store = TaskStore(state.ensure(), with_url(base, url, host))
        db = store.db
        if url is not None:
            with db.database.connection() as pg_conn:  # type: ignore[attr-defined]
                backend = pg_conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        runner, n = runner_identity(host), 0
        while not os.path.exists(go):
            time.sleep(0.001)
        cpu, server = time.process_time(), backend_cpu_s(backend)
        while True:
            n += 1
            got = store.claim(None, runner, f"{host}-{n}")
            if got is None:
                break
            names.append(got[0].name)
    used = {"client_cpu_s": time.process_time() - cpu, "server_cpu_s": backend_cpu_s(backend) - server}
    sys.stdout.write(json.dumps({"names": names, **used}) + "\n")


def seed_tasks(config: Config, state: StateRoot, count: int) -> None:
    from selfheal.tasks.tree import Task, TaskStore

    store = TaskStore(state, config)
    tasks = (
        (
            f"line {i}",
            Task(name=f"task-{i:06d}", priority=("P0", "P1", "P2")[i % 3], run={"kind": "argv", "argv": ["true"]}),
        )
        for i in range(count)
    )
    store.add_many(tasks, by="bench")
    store.close()


def claims_round(mode: str, where: str, count: int) -> dict[str, Any]:
    """Claims per second with WORKERS processes; the names each claimed, checked for doubles."""
    go = Path(tempfile.mkdtemp(prefix="selfheal-bench-go-")) / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env["PYTHONPATH"] = str(ROOT / "scripts")
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--claim-worker", mode, str(go), where, f"bench-{k}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(WORKERS)
    ]
    time.sleep(2.0)  # every worker connected and waits for the go
    start = time.perf_counter()
    go.touch()
    names: list[str] = []
    per_worker = []
    client = server = 0.0
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise RuntimeError(f"claim worker ({mode}) failed: {err.decode()[-2000:]}")
        report = json.loads(out)
        got = report["names"]
        client += report["client_cpu_s"]
        server += report["server_cpu_s"]
        names += got
        per_worker.append(len(got))
    wall = time.perf_counter() - start
    return {
        "per_s": count / wall,
        "claimed": len(names),
        "double": len(names) - len(set(names)),
        "missing": count - len(set(names)),
        "per_worker": per_worker,
        "client_cpu_us": client / count * 1e6,
        "server_cpu_us": server / count * 1e6,
    }


def run_claims(server: Any, count: int, rounds: int) -> dict[str, Any]:
    base = load_config(env={"SELFHEAL_HOME": tempfile.mkdtemp(prefix="selfheal-bench-")})
    rates: dict[str, list[float]] = {m: [] for m in CLAIM_MODES}
    cpu: dict[str, list[tuple[float, float]]] = {m: [] for m in CLAIM_MODES}
    doubles = missing = 0
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-claims-") as tmp:
        for k in range(rounds):
            for mode in CLAIM_MODES:
                if mode == "selfheal_sqlite":
                    state = StateRoot(Path(tmp) / f"sqlite-{k}").ensure()
                    seed_tasks(with_url(base, None, "bench-seed"), state, count)
                    where = str(state.root)
                else:
                    where = server.new_database()
                    seed_tasks(
                        with_url(base, where, "bench-seed"), StateRoot(Path(tmp) / f"seed-{mode}-{k}").ensure(), count
                    )
                got = claims_round(mode, where, count)
                rates[mode].append(got["per_s"])
                cpu[mode].append((got["client_cpu_us"], got["server_cpu_us"]))
                doubles += got["double"]
                missing += got["missing"]
    med = {m: statistics.median(v) for m, v in rates.items()}
    paired = [pg / bare for pg, bare in zip(rates["selfheal_pg"], rates["bare_pg"], strict=True)]
    cpu_med = {
        m: {"client": round(statistics.median(c for c, _ in v)), "server": round(statistics.median(s for _, s in v))}
        for m, v in cpu.items()
    }
    pg_cpu, bare_cpu = cpu_med["selfheal_pg"], cpu_med["bare_pg"]
    return {
        "claims": count,
        "workers": WORKERS,
        "rounds": rounds,
        "claims_per_s": {m: round(v) for m, v in med.items()},
        "claims_per_s_rounds": {m: [round(x) for x in v] for m, v in rates.items()},
        "selfheal_vs_bare": round(med["selfheal_pg"] / med["bare_pg"], 2),
        # Each round's self-heal rate over the bare rate of the same round (the load of the machine drifts
        # less within a round than across rounds), its median; and the CPU per claim, which load hardly moves.
        "selfheal_vs_bare_per_round": round(statistics.median(paired), 2),
        "cpu_us_per_claim": cpu_med,
        "bare_vs_selfheal_cpu": round(
            (bare_cpu["client"] + bare_cpu["server"]) / max(1, pg_cpu["client"] + pg_cpu["server"]), 2
        ),
        "pg_vs_sqlite": round(med["selfheal_pg"] / med["selfheal_sqlite"], 2),
        "double_claims": doubles,
        "unclaimed": missing,
    }


# -- the ledger read ----------------------------------------------------------------------------------------


def seed_ledger(url: str, count: int) -> tuple[int, int]:
    """`count` failed events of about 1 KB each on yesterday's partition; the window that holds them all."""
    import calendar

    import psycopg

    from selfheal.state import pg

    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    db = pg.Database(url, "bench-seed")
    pg.insert_events(db, [{"ts": f"{day}T00:00:00.000Z", "event": "start", "event_id": "seed"}], 90)
    db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO selfheal_ledger (ts, event_id, host, event, task, target, error_class, data)"
            " SELECT t, 'e' || n, 'box-' || n %% 7, 'failed', 'job-' || n %% 50, 'qwen', 'transient',"
            " jsonb_build_object('ts', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
            " 'event', 'failed', 'task', 'job-' || n %% 50, 'target', 'qwen', 'model', 'Qwen3-4B',"
            " 'error_class', 'transient', 'reason', 'connection reset', 'attempts', 3, 'duration_s', n %% 90,"
            " 'host', 'box-' || n %% 7, 'event_id', 'e' || n, 'note', repeat('x', %s))"
            " FROM generate_series(1, %s) AS n, LATERAL (SELECT %s::timestamptz + n * interval '1 ms') AS at(t)",
            (READ_PAD, count, f"{day} 00:00:00+00"),
        )
        conn.execute("VACUUM ANALYZE selfheal_ledger")
    since = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    return since, since + 86400


def whole_read(scan: Any, config: Config, window: Any, host: str | None) -> bool:
    """The baseline: the fleet ledger read as it was before pages (one statement, every row fetched at once,
    every event made a line, the lines joined, then scanned)."""
    import io

    from selfheal.core.fleet import fleet_database
    from selfheal.observe.logscan import InputInfo

    db = fleet_database(config.store)
    assert db is not None
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT data FROM selfheal_ledger WHERE ts >= to_timestamp(%s::float8) AND ts < to_timestamp(%s::float8)"
            " ORDER BY ts, event_id",
            (window.since, window.until),
        ).fetchall()
    lines = [json.dumps(dict(data), ensure_ascii=False) for (data,) in rows]
    info = InputInfo("fleet ledger (PostgreSQL)", "ledger")
    scan.inputs.append(info)
    scan.read_stream(io.BytesIO("\n".join(lines).encode("utf-8") + b"\n"), info)
    return True


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def read_worker(mode: str, url: str, since: str, until: str) -> None:
    """One analysis of the window in this process (`mode`: paged or whole); prints its peak memory growth (kB),
    its wall time and its report's figures."""
    from selfheal.observe import logreport

    home = Path(tempfile.mkdtemp(prefix="selfheal-bench-"))
    config = with_url(load_config(env={"SELFHEAL_HOME": str(home)}), url, "bench-reader")
    state = StateRoot(home).ensure()
    quiet = home / "no-openclaw-logs"
    quiet.mkdir(mode=0o700)
    env = {"SELFHEAL_HOME": str(home), "OPENCLAW_STATE_DIR": str(home / "openclaw")}
    if mode == "whole":
        logreport.read_fleet_ledger = whole_read
    with contextlib.suppress(OSError):  # the peak so far (the imports') is not the analysis's: reset it
        Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    report = logreport.analyze(
        config=config, state=state, env=env, openclaw_dir=quiet, since=int(since), until=int(until), now=int(until)
    )
    seconds = time.perf_counter() - start
    report.pop("inputs")
    out = {"peak_growth_kb": _status_kb("VmHWM") - before, "seconds": seconds, "report": report}
    sys.stdout.write(json.dumps(out) + "\n")


def run_ledger_read(server: Any, count: int, rounds: int) -> dict[str, Any]:
    """Peak memory and time of analyze_logs over the fleet's ledger: paged against the whole read, same window."""
    from selfheal.state.pg import FETCH_ROWS

    url = server.new_database()
    since, until = seed_ledger(url, count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env["PYTHONPATH"] = str(ROOT / "scripts")
    got: dict[str, list[dict[str, Any]]] = {m: [] for m in READ_MODES}
    for k in range(rounds):
        for mode in READ_MODES if k % 2 == 0 else READ_MODES[::-1]:
            proc = subprocess.run(
                [sys.executable, __file__, "--read-worker", mode, url, str(since), str(until)],
                env=env,
                capture_output=True,
                check=False,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"ledger read worker ({mode}) failed: {proc.stderr.decode()[-2000:]}")
            got[mode].append(json.loads(proc.stdout))
    reports = [json.dumps(r["report"], sort_keys=True) for m in READ_MODES for r in got[m]]
    counted = {m: [r["report"]["events"].get("failed", 0) for r in got[m]] for m in READ_MODES}
    peak = {m: statistics.median(r["peak_growth_kb"] for r in got[m]) / 1024 for m in READ_MODES}
    secs = {m: statistics.median(r["seconds"] for r in got[m]) for m in READ_MODES}
    return {
        "events": count,
        "event_bytes": READ_PAD + 300,
        "page_rows": FETCH_ROWS,
        "rounds": rounds,
        "peak_growth_mb": {m: round(v, 1) for m, v in peak.items()},
        "peak_growth_mb_rounds": {m: [round(r["peak_growth_kb"] / 1024, 1) for r in got[m]] for m in READ_MODES},
        "whole_vs_paged_memory": round(peak["whole"] / max(peak["paged"], 0.1), 1),
        "seconds": {m: round(v, 2) for m, v in secs.items()},
        "paged_vs_whole_time": round(secs["paged"] / secs["whole"], 2),
        "correct": len(set(reports)) == 1 and all(c == [count] * rounds for c in counted.values()),
    }


def render_ledger_read(r: dict[str, Any]) -> str:
    rows = [
        [label, f"{r['peak_growth_mb'][mode]:.1f}", f"{r['seconds'][mode]:.2f}"]
        for mode, label in (
            ("paged", f"paged (fetch_events, {r['page_rows']:,} rows a page, streamed into the scan)"),
            ("whole", "whole (the read before: every row, every line, then the lines joined)"),
        )
    ]
    return (
        f"{machine_line()}\nLedger read: analyze_logs over {r['events']:,} fleet events of about"
        f" {r['event_bytes']} bytes, {r['rounds']} rounds, medians\n\n"
        + markdown_table(["", "peak memory growth (MB)", "wall s"], rows)
        + f"\n\nwhole over paged, memory: {r['whole_vs_paged_memory']}x; paged over whole, time:"
        f" {r['paged_vs_whole_time']:.2f}x; same report: {r['correct']}"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--claim-worker":
        claim_worker(*sys.argv[2:6])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--read-worker":
        read_worker(*sys.argv[2:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS} calls x {QUICK_ROUNDS} rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--claims", type=int, help=f"tasks claimed per round ({CLAIMS}; --quick {QUICK_CLAIMS})")
    parser.add_argument("--claims-only", action="store_true", help="only the claims part")
    parser.add_argument("--ledger-read", action="store_true", help="only the fleet ledger read's peak memory")
    parser.add_argument(
        "--events", type=int, help=f"events in the read's window ({READ_EVENTS}; --quick {QUICK_READ_EVENTS})"
    )
    args = parser.parse_args()
    calls = args.calls or (QUICK_CALLS if args.quick else CALLS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    claims = args.claims or (QUICK_CLAIMS if args.quick else CLAIMS)

    from helpers.postgres import Cluster, External

    external = os.environ.get("SELFHEAL_TEST_DATABASE_URL")
    server: Cluster | External = External(external) if external else Cluster()
    try:
        if args.ledger_read:
            events = args.events or (QUICK_READ_EVENTS if args.quick else READ_EVENTS)
            read = run_ledger_read(server, events, args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS))
            print(json.dumps({"machine": machine(), **read}) if args.json else render_ledger_read(read))
            return 0 if read["correct"] else 1
        result: dict[str, Any] = {"machine": machine(), "correct": True}
        if not args.claims_only:
            result = run(server.new_database(), calls, rounds)
        result["claims"] = run_claims(server, claims, rounds)
        result["correct"] = (
            result["correct"] and not result["claims"]["double_claims"] and not result["claims"]["unclaimed"]
        )
    finally:
        server.destroy()
    if args.json:
        print(json.dumps(result))
    else:
        print(render(result))
    return 0 if result["correct"] else 1


def run(url: str, calls: int, rounds: int) -> dict[str, Any]:
    import psycopg

    base = load_config(env={"SELFHEAL_HOME": tempfile.mkdtemp(prefix="selfheal-bench-")})
    local, fleet = with_url(base, None, "bench-host"), with_url(base, url, "bench-host")
    times: dict[str, list[float]] = {"breaker_file": [], "breaker_pg": [], "ledger_file": [], "ledger_pg": []}
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-") as tmp:
        for k in range(rounds):
            state = StateRoot(Path(tmp) / f"round-{k}").ensure()
            times["breaker_file"].append(breaker_round(state, local, calls))
            times["breaker_pg"].append(breaker_round(state, fleet, calls))
            times["ledger_file"].append(ledger_round(state, local, calls, f"file-{k}"))
            times["ledger_pg"].append(ledger_round(state, fleet, calls, f"pg-{k}"))
        closed = Breakers(StateRoot(Path(tmp) / "round-0"), fleet.breakers, store=fleet.store).status("bench-model")
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM selfheal_ledger WHERE event = 'retry'"
        ).fetchone()
    expected = rounds * calls
    correct = got == (expected, expected) and closed["state"] == CLOSED
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "machine": machine(),
        "calls": calls,
        "rounds": rounds,
        "breaker_us_per_call": {
            "file": round(med["breaker_file"] * 1e6, 1),
            "postgresql": round(med["breaker_pg"] * 1e6, 1),
        },
        "breaker_ratio": round(med["breaker_pg"] / med["breaker_file"], 2),
        "ledger_events_per_s": {"file": round(med["ledger_file"]), "file_and_postgresql": round(med["ledger_pg"])},
        "ledger_ratio": round(med["ledger_file"] / med["ledger_pg"], 2),
        "fleet_events": {"expected": expected, "rows": got[0] if got else None, "distinct": got[1] if got else None},
        "correct": correct,
    }


def render(r: dict[str, Any]) -> str:
    c = r["claims"]
    u = c["cpu_us_per_claim"]
    claim_rows = [
        [label, f"{c['claims_per_s'][mode]:,}", f"{u[mode]['client']}", f"{u[mode]['server']}"]
        for mode, label in (
            ("selfheal_pg", "self-heal's claim, PostgreSQL (fleet mode)"),
            ("bare_pg", "bare UPDATE ... (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING, same table"),
            ("selfheal_sqlite", "self-heal's claim, SQLite (the default, one host)"),
        )
    ]
    claims = (
        f"Claims: {c['claims']} tasks x {c['rounds']} rounds, {c['workers']} worker processes, medians (claims/s)\n\n"
        + markdown_table(["", "claims/s", "client CPU µs/claim", "server CPU µs/claim"], claim_rows)
        + f"\n\nself-heal vs bare on PostgreSQL: {c['selfheal_vs_bare']:.0%} (median of the rounds' own ratios:"
        f" {c['selfheal_vs_bare_per_round']:.0%}; bare's CPU per claim over self-heal's, client and server:"
        f" {c['bare_vs_selfheal_cpu']:.0%}); PostgreSQL vs SQLite:"
        f" {c['pg_vs_sqlite']:.2f}x; double claims: {c['double_claims']}; left unclaimed: {c['unclaimed']}"
    )
    if "breaker_us_per_call" not in r:
        return f"{machine_line()}\n\n{claims}\n\ncorrect={r['correct']}"
    rows = [
        [
            "breaker, acquire + release (µs per model call)",
            f"{r['breaker_us_per_call']['file']:.0f}",
            f"{r['breaker_us_per_call']['postgresql']:.0f}",
            f"{r['breaker_ratio']:.1f}x",
        ],
        [
            "ledger, record() (events/s)",
            f"{r['ledger_events_per_s']['file']:,}",
            f"{r['ledger_events_per_s']['file_and_postgresql']:,}",
            f"{r['ledger_ratio']:.1f}x slower",
        ],
    ]
    table = markdown_table(["", "this host's files", "fleet (PostgreSQL)", "fleet vs files"], rows)
    checks = f"{r['fleet_events']['rows']} of {r['fleet_events']['expected']} events in the table, each once"
    head = f"{machine_line()}\n{r['calls']} calls x {r['rounds']} rounds, medians"
    return f"{head}\n\n{table}\n\nChecks: {checks}\n\n{claims}\n\ncorrect={r['correct']}"


if __name__ == "__main__":
    sys.exit(main())
