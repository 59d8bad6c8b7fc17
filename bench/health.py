"""Wall time of one health check, as cron runs it, against a bare interpreter start in the same run.

The work: `.venv/bin/python scripts/health_check.py --cron`, a new process each time (that is how cron and
OpenClaw's cron run it), on a state root and an OpenClaw folder of its own: openclaw.json names a gateway
port where nothing listens, and skills/status holds 200 fresh status files (150 `key=value` .txt, 50
.json) that the check reads. So the gateway check fails, the skills still report, and every run ends
DEGRADED (exit 1) with its two-line summary: checked on every run.

Baseline: `.venv/bin/python -c pass`, the same interpreter, the same environment. Bytecode is written
once before timing (the benchmark's own environment drops PYTHONDONTWRITEBYTECODE), as it is for a
user. Each round times the baseline and the check back to back, in alternating order; the ratio is the
median of the per-round ratios. Target: at most 5 times the bare interpreter.

Context rows, same rounds: the first run after the settings changed (the configuration is loaded and
validated: PyYAML and the config loader), and a run against a live gateway (a local HTTP server
answering /healthz and /readyz as OpenClaw does; the check reports operational: NO_REPLY, exit 0).

With `--tasks N`, the state root first gets a task tree of N tasks (bench/tasks.py's tree, loaded
directly) and then one `tasks.py run-next`, as a user's has: the task run leaves its finished record in
runs/ (kept for days), its log and its ledger lines. That is the setting bench/tasks.py's full run measures
the check in (on the state left by its run-nexts), in well under a minute.

    .venv/bin/python bench/health.py [--quick] [--json] [--rounds R] [--tasks N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
CHECK = str(ROOT / "scripts" / "health_check.py")
STATUS_FILES = 200
TARGET = 5.0


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prepare(tmp: Path) -> dict[str, str]:
    """A state root and an OpenClaw folder with 200 fresh status files; the environment to run in."""
    openclaw = tmp / "openclaw"
    status = openclaw / "skills" / "status"
    status.mkdir(parents=True)
    (openclaw / "openclaw.json").write_text(json.dumps({"gateway": {"port": closed_port()}}))
    for i in range(STATUS_FILES):
        if i % 4 == 3:
            (status / f"skill-{i:03d}.json").write_text(json.dumps({"status": "success", "posts": i}))
        else:
            (status / f"skill-{i:03d}.txt").write_text(f"status=success,timestamp=Sat Mar 1 01:09:00 CST 2026,n={i}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "OPENCLAW_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(SELFHEAL_HOME=str(tmp / "state"), OPENCLAW_STATE_DIR=str(openclaw), HOME=str(tmp))
    return env


class LiveGateway:
    """What OpenClaw's gateway answers on /healthz and /readyz, from a thread of this process."""

    def __enter__(self) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"ok":true,"status":"live"}' if self.path == "/healthz" else b'{"ready":true,"failing":[]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def timed(cmd: list[str], env: dict[str, str], expect: Callable[[subprocess.CompletedProcess[str]], bool]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if not expect(proc):
        raise SystemExit(f"unexpected result from {cmd[1:]}: exit {proc.returncode}, {proc.stdout!r} {proc.stderr!r}")
    return elapsed


def degraded(proc: subprocess.CompletedProcess[str]) -> bool:
    lines = proc.stdout.splitlines()
    return proc.returncode == 1 and lines[0].startswith("self-heal health: DEGRADED") and len(lines) <= 5


def operational(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == 0 and proc.stdout == "NO_REPLY\n"


def with_tree(env: dict[str, str], n: int) -> None:
    """N tasks loaded directly into the state root, then one task run as cron runs it (tasks.py run-next)."""
    from tasks import build_tasks, make_store  # bench/tasks.py's tree: imported only when asked for

    make_store(Path(env["SELFHEAL_HOME"]), build_tasks(n, finished=False))
    tasks_py = str(ROOT / "scripts" / "tasks.py")
    timed([PYTHON, tasks_py, "run-next", "--no-stuck-check", "--quiet"], env, lambda p: p.returncode == 0)


def run(rounds: int, n_tasks: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="selfheal-bench-health-") as tmp_name:
        tmp = Path(tmp_name)
        env = prepare(tmp)
        if n_tasks:
            with_tree(env, n_tasks)
        bare_cmd = [PYTHON, "-c", "pass"]
        check_cmd = [PYTHON, CHECK, "--cron"]
        health_json = tmp / "state" / "status" / "health.json"
        config = tmp / "state" / "config.yaml"
        for _ in range(3):  # bytecode, the state folder, the kept settings
            timed(check_cmd, env, degraded)
            timed(bare_cmd, env, lambda p: p.returncode == 0)
        bare: list[float] = []
        warm: list[float] = []
        cold: list[float] = []
        live: list[float] = []
        ratios: list[float] = []
        with LiveGateway() as url:
            # A state root of its own: health.json keeps the settings of one environment (this one's port).
            live_env = dict(env, OPENCLAW_GATEWAY_PORT=url.rsplit(":", 1)[1], SELFHEAL_HOME=str(tmp / "live"))
            timed(check_cmd, live_env, operational)
            for i in range(rounds):
                if i % 2:
                    w = timed(check_cmd, env, degraded)
                    b = timed(bare_cmd, env, lambda p: p.returncode == 0)
                else:
                    b = timed(bare_cmd, env, lambda p: p.returncode == 0)
                    w = timed(check_cmd, env, degraded)
                bare.append(b)
                warm.append(w)
                ratios.append(w / b)
                # A changed config.yaml: this run loads and validates the configuration again.
                config.write_text(f"# round {i}\nhealth: {{disk_min_free_mb: 0}}\n")
                cold.append(timed(check_cmd, env, degraded))
                live.append(timed(check_cmd, live_env, operational))
        written = json.loads(health_json.read_text())
        correct = written["mode"] == "degraded" and len(written["checks"]) == 9  # state_root included
    med = statistics.median
    return {
        "machine": machine(),
        "rounds": rounds,
        "status_files": STATUS_FILES,
        "tasks": n_tasks,
        "bare_ms": round(med(bare) * 1000, 2),
        "check_ms": round(med(warm) * 1000, 2),
        "ratio": round(med(ratios), 2),
        "target": TARGET,
        "target_met": med(ratios) <= TARGET,
        "settings_reloaded_ms": round(med(cold) * 1000, 2),
        "settings_reloaded_ratio": round(med(cold) / med(bare), 2),
        "gateway_live_ms": round(med(live) * 1000, 2),
        "gateway_live_ratio": round(med(live) / med(bare), 2),
        "correct": correct,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 rounds instead of 40")
    parser.add_argument("--rounds", type=int, help="rounds (default 40; --quick 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--tasks",
        type=int,
        default=0,
        metavar="N",
        help="a task tree of N tasks and one task run first (default: none)",
    )
    args = parser.parse_args()
    result = run(args.rounds or (8 if args.quick else 40), args.tasks)
    if args.json:
        print(json.dumps(result))
        return 0
    tree = f", {args.tasks:,} tasks and one task run" if args.tasks else ""
    rows = [
        ["`python3 -c pass` (baseline)", f"{result['bare_ms']:.1f}", "1"],
        [f"`health_check.py --cron`, gateway port closed, {STATUS_FILES} status files{tree}",
         f"{result['check_ms']:.1f}", f"**{result['ratio']:.2f}x**"],
        ["the same, first run after a settings change (YAML loaded and validated)",
         f"{result['settings_reloaded_ms']:.1f}", f"{result['settings_reloaded_ratio']:.2f}x"],
        ["the same, gateway live (operational: NO_REPLY)", f"{result['gateway_live_ms']:.1f}",
         f"{result['gateway_live_ratio']:.2f}x"],
    ]  # fmt: skip
    print(markdown_table(["run", "ms (median)", "vs bare interpreter"], rows))
    verdict = "met" if result["target_met"] else "NOT met"
    print(f"\nTarget: at most {TARGET:g}x the bare interpreter: {verdict}. Rounds: {result['rounds']}.")
    print(machine_line())
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
