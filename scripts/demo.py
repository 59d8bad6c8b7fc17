#!/usr/bin/env python3
"""See self-heal work on this machine, with nothing external: flaky, broken and hanging commands, a job
killed mid-step, a task tree with a failure, its fix task and a stuck task, and misbehaving model
endpoints, each run through the real scripts and the Python API, then what the ledger recorded.

It uses a throwaway folder (removed afterwards unless --keep) for self-heal's state and OpenClaw's, so your own
ledger, settings and ~/.openclaw are neither read nor written.
Takes about fifteen seconds. Exit 0 when every scenario behaved as it should, 3 otherwise; stopped midway
(Ctrl-C: 130, SIGTERM: 143) it stops what it started and removes its folder all the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfheal._bootstrap import bootstrap

bootstrap()

import openai  # noqa: E402

from selfheal import cli  # noqa: E402
from selfheal.core.config import load_config  # noqa: E402
from selfheal.core.retrying import Attempt, Retrier, attempts_of  # noqa: E402
from selfheal.models.llm import complete  # noqa: E402
from selfheal.state.root import StateRoot  # noqa: E402
from selfheal.testing import FakeModelServer, Fault  # noqa: E402

HERE = Path(__file__).resolve().parent


def _cut(text: str, limit: int) -> str:
    """Text for one line of the demo's report: whole when short, else cut at a word with an ellipsis."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(") + "..."


# The user's own settings, which the demo neither reads nor uses: their config.yaml, their fleet database.
_USERS_OWN = ("SELFHEAL_CONFIG", "SELFHEAL_DATABASE_URL", "SELFHEAL_DATABASE_PASSWORD", "SELFHEAL_HOST_ID")


def _openclaw_state(home: Path) -> Path:
    """The demo's OpenClaw state folder, beside its self-heal state folder."""
    return home.parent / "openclaw"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of every process the demo starts, and of the settings it loads itself: self-heal's state
    folder and OpenClaw's (its openclaw.json, its skills/status/) in the demo's folder, and none of the user's
    OPENCLAW_* variables or self-heal settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_") and k not in _USERS_OWN}
    openclaw = _openclaw_state(home)
    env.update(SELFHEAL_HOME=str(home), OPENCLAW_HOME=str(openclaw.parent), OPENCLAW_STATE_DIR=str(openclaw))
    env.update(extra)
    return env


def _retry_run(home: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "retry_run.py"), "--json", *args],
        check=False,
        capture_output=True,
        env=_env(home),
        timeout=120,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    result["_exit"] = proc.returncode
    return result


def _flaky_command(work: Path, failures: int, message: str, code: int) -> list[str]:
    script = work / f"flaky_{failures}_{code}.py"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, sys
        counter = pathlib.Path(__file__).with_suffix(".count")
        n = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(n + 1))
        if n < {failures}:
            sys.exit(print({message!r}, file=sys.stderr) or {code})
        print("report written")
        """)
    )
    return [sys.executable, str(script)]


def _attempts(result: dict[str, Any]) -> str:
    parts = []
    for a in result["attempts"]:
        if a["error_class"] is None:
            parts.append(f"#{a['number']} ok")
        else:
            wait = f", waited {a['delay_s']:.2f}s" if a["delay_s"] is not None else ""
            parts.append(f"#{a['number']} {a['error_class']}{wait}")
    return "; ".join(parts)


def _scenarios(home: Path, work: Path) -> list[tuple[str, bool, str]]:
    """Run each scenario; return (title, behaved as expected, what happened)."""
    out: list[tuple[str, bool, str]] = []

    r = _retry_run(
        home,
        "--task",
        "nightly-report",
        "--",
        *_flaky_command(work, 2, "curl: (7) Failed to connect: Connection refused", 7),
    )
    out.append(
        (
            "A flaky command (connection refused twice) is retried with backoff and succeeds",
            r["ok"] and len(r["attempts"]) == 3,
            _attempts(r),
        )
    )

    r = _retry_run(home, "--task", "broken-job", "--", *_flaky_command(work, 9, "SyntaxError: invalid syntax", 1))
    out.append(
        (
            "A permanent failure (a syntax error) is stopped at once, not retried",
            not r["ok"] and len(r["attempts"]) == 1 and r["error_class"] == "permanent",
            f"{_attempts(r)}; exit code {r['_exit']} ({r['stop_reason']})",
        )
    )

    pidfile = work / "grandchild.pid"
    r = _retry_run(
        home,
        "--task",
        "hung-export",
        "--timeout",
        "1",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        f"sleep 600 & echo $! > {pidfile}; sleep 600",
    )
    grandchild = int(pidfile.read_text()) if pidfile.exists() else -1
    gone = not _alive(grandchild)
    out.append(
        (
            "A hanging command is killed at its timeout, with the grandchild it spawned",
            r["error_class"] == "timeout" and gone,
            f"timed out after {r['attempts'][0]['duration_s']:.1f}s; grandchild {grandchild} "
            + ("killed" if gone else "STILL RUNNING"),
        )
    )

    out.append(_workflow_scenario(home, work))
    out.append(_task_tree_scenario(home, work))
    out.append(_chain_scenario(home))
    out.append(_model_scenario(home))
    out.append(_fix_record_scenario(home))
    out.append(_health_scenario(home))
    out.append(_log_scenario(home))
    return out


def _script(home: Path, name: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One of the skill's scripts with --json, as a user runs it; its JSON and exit code."""
    proc = subprocess.run(
        [sys.executable, str(HERE / name), *args, "--json"],
        check=False,
        capture_output=True,
        env=_env(home, **(env or {})),
        timeout=120,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    result["_exit"] = proc.returncode
    return result


def _fix_record_scenario(home: Path) -> tuple[str, bool, str]:
    """self_heal.py on the broken job of scenario 2: a fix record from the rules, no model needed."""
    r = _script(home, "self_heal.py", "--task", "broken-job", "--no-model")
    steps = r.get("fix_steps") or []
    ok = r.get("source") == "rule:syntax-error" and r.get("verdict") == "ready" and bool(steps)
    detail = (
        f"{r.get('id')} ({r.get('source')}): {_cut(r.get('root_cause', '?'), 90)}; "
        f"fix: {_cut(steps[0], 90) if steps else '?'}"
        " (text for a person: nothing in a record is ever run)"
    )
    return "A failure becomes a fix record: evidence, a known rule, a fix a person can apply", ok, detail


def _health_scenario(home: Path) -> tuple[str, bool, str]:
    """health_check.py with no gateway running here, while another skill still reports: degraded."""
    status = _openclaw_state(home) / "skills" / "status"
    status.mkdir(parents=True, exist_ok=True)  # the task runner's own line may be there already
    (status / "weekly-report.txt").write_text("status=success,timestamp=now\n")
    port = _closed_port()
    r = _script(home, "health_check.py", env={"OPENCLAW_GATEWAY_PORT": str(port)})
    checks = {c["name"]: c for c in r.get("checks", [])}
    ok = r.get("mode") == "degraded" and r["_exit"] == 1 and checks.get("gateway", {}).get("status") == "fail"
    warned = [f"{name} ({_cut(c['detail'], 90)})" for name, c in checks.items() if c["status"] in ("warn", "fail")]
    detail = (
        f"mode {r.get('mode')} (exit {r['_exit']}): the gateway is not running here, but a skill still reports, "
        f"so the skills work on (graceful degradation); {len(checks)} checks in {r.get('duration_s', 0) * 1000:.0f} ms;"
        f" not ok: {'; '.join(warned)}"
    )
    return "The health check tells a dead gateway from dead work", ok, detail


def _log_scenario(home: Path) -> tuple[str, bool, str]:
    """analyze_logs.py over everything this demo recorded."""
    ledger = sorted(str(p) for p in (home / "ledger").glob("*.jsonl"))
    r = _script(home, "analyze_logs.py", *ledger)
    runs = r.get("runs", {})
    reasons = ", ".join(f"{x['reason']} {x['count']}" for x in r.get("failure_reasons", [])[:4])
    alerts = [f"{a.get('priority')} {_cut(a.get('message', ''), 90)}" for a in r.get("alerts", [])]
    ok = runs.get("finished", 0) >= 10 and r.get("lines", {}).get("malformed", 1) == 0
    detail = (
        f"{runs.get('finished')} runs, {100 * (runs.get('success_rate') or 0):.0f}% succeeded, "
        f"{runs.get('retries')} retries; top failure reasons: {reasons}; "
        f"fallback rate {100 * (r.get('fallback', {}).get('rate') or 0):.0f}%; "
        + (f"alerts: {'; '.join(alerts)}" if alerts else "no alert")
    )
    return "The log analysis sums up the night", ok, detail


def _closed_port() -> int:
    """A loopback port nothing listens on (the demo's stand-in for a stopped gateway)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _workflow_scenario(home: Path, work: Path) -> tuple[str, bool, str]:
    """workflow.py: step 2 asks a model whose primary fails (a 503, then a refused key) and falls over;
    the job is killed (SIGKILL) in step 3 and resumed; step 4 fails for good and the rest is undone."""
    folder = work / "report-job"
    folder.mkdir()
    ask = shlex.join([sys.executable, str(HERE / "llm_call.py"), "--task", "weekly-report", "--prompt", "Sum up."])
    commands = {
        "fetch": "echo fetch >> journal",
        "analyze": f"{ask} > summary.txt && echo analyze >> journal",
        "chart": "test -e go || { touch waiting; exec sleep 600; }; echo chart >> journal",
        "publish": "test -e fixed || { echo 'publish: /srv/www: permission denied' >&2; exit 77; }; "
        "echo publish >> journal",
    }
    lines = ["steps:"]
    for name, command in commands.items():
        lines += [
            f"  - name: {name}",
            f"    shell: {json.dumps(command)}",
            f"    compensate: [sh, -c, 'echo undo-{name} >> journal']",
        ]
    plan = folder / "plan.yaml"
    plan.write_text("\n".join(lines) + "\n")
    with FakeModelServer() as server:
        # The job's own settings: its model chain is the fake endpoint (primary, then a fallback).
        settings = folder / "job-config.yaml"
        settings.write_text(
            "policies: {transient: {base_s: 0.2}}\nmodels:\n  chain:\n"
            f'    - {{name: qwen3-4b-job, base_url: "{server.url("primary")}", model: Qwen3-4B}}\n'
            f'    - {{name: qwen1.5-0.5b-job, base_url: "{server.url("fallback")}", model: Qwen1.5-0.5B}}\n'
        )
        server.script("primary", Fault.http(503), Fault.http(401, code="invalid_api_key"))
        env = _env(home, SELFHEAL_CONFIG=str(settings))
        argv = [sys.executable, str(HERE / "workflow.py"), "run", str(plan), "--task", "weekly-report"]
        job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
        deadline = time.monotonic() + 60
        while not (folder / "waiting").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        job.kill()  # the machine dies in the middle of step 3
        job.wait()
        (folder / "go").write_text("")
        resumed = subprocess.run([*argv, "--json"], env=env, capture_output=True, check=False, timeout=120)
        primary_hits = server.requests("primary")
    result = json.loads(resumed.stdout)
    journal = (folder / "journal").read_text().split()
    summary = (folder / "summary.txt").read_text().strip() if (folder / "summary.txt").exists() else ""
    events = _events(home, "weekly-report")
    incident = result.get("incident")
    ok = (
        journal == ["fetch", "analyze", "chart", "undo-chart", "undo-analyze", "undo-fetch"]
        and result["status"] == "failed"
        and bool(incident)
        and summary == "ok from fallback"
        and primary_hits == 2
        and {"retry", "breaker", "fallback", "resume", "compensate"} <= set(events)
    )
    detail = (
        f"step 2 asked the model: the primary answered 503 (retried), then refused the key (its breaker "
        f"opened), and the fallback answered ({summary!r}); the job was killed in step 3 and the same command "
        f"resumed it there (steps 1-2 not repeated); step 4 then failed for good "
        f"({result['steps'][3]['error_class']}), so steps 3, 2, 1 were undone in that order and an incident "
        f"was written with the command that resumes it: {Path(incident).name if incident else '?'}"
    )
    return (
        "A multi-step job rides out a model outage and a crash, and undoes its work when it cannot finish",
        ok,
        detail,
    )


def _events(home: Path, task: str) -> list[str]:
    """The kinds of the ledger events of one task (and of the breakers, which name no task), in order."""
    out = []
    for path in sorted((home / "ledger").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("task") in (task, None):
                out.append(str(event["event"]))
    return out


def _tasks(home: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "tasks.py"), *args, "--json"],
        check=False,
        capture_output=True,
        env=_env(home),
        timeout=120,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    result["_exit"] = proc.returncode
    return result


def _task_tree_scenario(home: Path, work: Path) -> tuple[str, bool, str]:
    """tasks.py: a child before its parent, a failure that becomes a FIX task, a fix, and a stuck task."""
    folder = work / "task-tree"
    folder.mkdir()
    # Only for this demo: stuck after 2 s of silence instead of 10 minutes.
    (home / "config.yaml").write_text("tasks: {stuck_after_s: 2}\nprocess: {heartbeat_s: 0.5, kill_grace_s: 1}\n")
    flow = f"test -e {folder}/fixed || {{ echo \"ModuleNotFoundError: No module named 'pandas'\" >&2; exit 1; }}"
    _tasks(home, "add", "TC-FLOW-001", "--display-name", "end-to-end run", "--shell", flow)
    _tasks(home, "add", "fetch", "--parent", "TC-FLOW-001", "--shell", "echo fetched")
    first = _tasks(home, "run-next")  # the child: deeper tasks first, and the parent waits for it
    failed = _tasks(home, "run-next")  # the parent fails: ERROR_FIX_PENDING and a FIX task
    fix_name = (failed.get("fix_tasks") or ["?"])[0]
    analysed = _tasks(home, "run-next", "--type", "fix")  # the FIX task jumps the queue: analysed, for a person
    suggestion = _tasks(home, "show", fix_name).get("task", {}).get("fix_suggestion") or ""
    (folder / "fixed").write_text("")  # the person applies the fix...
    _tasks(home, "mark", fix_name, "end")  # ...and says so
    ended = _tasks(home, "run-next")

    _tasks(home, "add", "silent", "--shell", "sleep 600")  # hangs without a word
    runner = subprocess.Popen(
        [sys.executable, str(HERE / "tasks.py"), "run-next"],
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.5)  # 2 s of silence once it runs; a loaded machine may take longer to start it
    stuck = _tasks(home, "check-stuck")
    deadline = time.monotonic() + 60
    while not stuck.get("findings") and time.monotonic() < deadline:
        time.sleep(0.5)
        stuck = _tasks(home, "check-stuck")
    try:
        runner.wait(timeout=30)
    except subprocess.TimeoutExpired:  # never found stuck: the scenario fails, nothing is left running
        runner.kill()
        runner.wait()
        _tasks(home, "check-stuck")  # finds the runner dead and stops the command it left
    finding = (stuck.get("findings") or [{}])[0]
    (home / "config.yaml").unlink()
    ok = (
        first.get("task") == "fetch"
        and failed.get("exec_state") == "ERROR_FIX_PENDING"
        and fix_name == "FIX-TC-FLOW-001-command"
        and analysed.get("exec_state") == "REQUIRES_MANUAL"
        and "module" in suggestion
        and ended.get("exec_state") == "END"
        and finding.get("fix_task") == "FIX-silent-STUCK"
        and bool(finding.get("killed"))
        and not any(_alive(pid) for pid in finding.get("killed", []))
    )
    detail = (
        f"the child ran before its parent; the parent failed and got {fix_name}, which ran first and was "
        f'analysed ("{_cut(suggestion, 60)}"); once a person fixed it, the parent ended. A task silent for '
        f"{finding.get('idle_s', '?')}s was found stuck: pids {finding.get('killed')} killed, "
        f"{finding.get('fix_task')} created"
    )
    return "A task tree runs fixes first, and finds the task that hangs", ok, detail


def _chain_scenario(home: Path) -> tuple[str, bool, str]:
    """llm_call's fallback chain: a primary that answers in the wrong shape, then refuses its key."""
    with FakeModelServer() as server:
        (home).mkdir(parents=True, exist_ok=True)
        (home / "config.yaml").write_text(
            "models:\n  chain:\n"
            f'    - {{name: qwen3-4b, base_url: "{server.url("qwen3-4b")}", model: Qwen3-4B-Thinking-2507}}\n'
            f'    - {{name: qwen1.5-0.5b, base_url: "{server.url("qwen1.5-0.5b")}", model: Qwen1.5-0.5B}}\n'
        )
        config = load_config(env=_env(home))
        server.script("qwen3-4b", Fault.wrong_shape(), Fault.wrong_shape())
        server.set_default("qwen3-4b", Fault.http(401, code="invalid_api_key"))
        answers = [
            complete("Summarise the night.", config=config, state=StateRoot(home), task="night-summary")
            for _ in range(4)
        ]
        primary_hits = server.requests("qwen3-4b")
    (home / "config.yaml").unlink()
    correct = sum(a.content == "ok from qwen1.5-0.5b" for a in answers)
    rejected = sum(1 for a in answers for t in a.attempts if t.outcome == "rejected")
    ok = correct == 4 and primary_hits == 3
    detail = (
        f"{correct}/4 answers correct, all from the fallback; {rejected} wrong-shape answers rejected (never "
        f"returned); after the 401 the breaker opened, so the primary saw {primary_hits} requests in all"
    )
    return "Model calls fall over, and a wrong answer is never passed off as a right one", ok, detail


def _model_scenario(home: Path) -> tuple[str, bool, str]:
    """The Python API around the real openai client, against the package's fake endpoint."""
    config = load_config(env=_env(home))
    state = StateRoot(home)
    with FakeModelServer() as server:
        server.script("qwen", Fault.http(429, retry_after=1, code="rate_limit_exceeded"))
        server.script("quota", Fault.http(429, code="insufficient_quota"))
        replies: list[tuple[str, str | None, float, tuple[Attempt, ...] | None]] = []
        for name in ("qwen", "quota"):
            client = openai.OpenAI(base_url=server.url(name), api_key="sk-demo", max_retries=0)
            retrier = Retrier(task=f"summary-{name}", target=name, model="Qwen3-4B", config=config, state=state)
            started = time.monotonic()
            try:
                # A lambda, not create and its arguments: mypy cannot match an overloaded function's parameters
                # (docs/python-api.md), and the reply's type stays exact.
                answer = retrier.call(
                    lambda: client.chat.completions.create(  # noqa: B023 - called in this iteration
                        model="Qwen3-4B",
                        messages=[{"role": "user", "content": "Summarise last night's runs."}],
                    )
                )
                replies.append((name, answer.choices[0].message.content, time.monotonic() - started, None))
            except openai.APIStatusError as exc:
                replies.append((name, None, time.monotonic() - started, attempts_of(exc)))
            finally:
                client.close()
        calls = {name: server.requests(name) for name in ("qwen", "quota")}
    (_, content, waited, _), (_, _, _, quota_attempts) = replies
    ok = content == "ok from qwen" and waited >= 1.0 and calls == {"qwen": 2, "quota": 1}
    detail = (
        f"429 + Retry-After: 1 -> waited {waited:.1f}s (the rate-limit policy's wait, at least the "
        "server's 1 s), then answered; "
        f"429 insufficient_quota -> {quota_attempts[0].error_class if quota_attempts else '?'}, "
        f"{calls['quota']} request, no retry"
    )
    return "Model calls: a rate limit is waited out, an exhausted quota is not retried", ok, detail


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] not in ("Z", "X")
    except OSError:
        return False


def _left_behind(base: Path, grace_s: float = 5.0) -> list[int]:
    """Processes still running that the demo started (they name its folder): there should be none."""
    import psutil  # noqa: PLC0415 - only for this last check

    needle = str(base)
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            with contextlib.suppress(psutil.Error):
                alive = proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE
                if alive and any(needle in part for part in proc.info["cmdline"] or []):
                    found.append(proc.pid)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _stop_leftovers(base: Path) -> None:
    """Kill what the demo started that still runs, when it is stopped midway (SIGTERM, Ctrl-C): a hanging command
    and its grandchild, a job it meant to kill, a script still writing in the folder about to be removed. Each names
    the demo's folder (a new random one) in its command line or its environment (SELFHEAL_HOME), so nothing the
    demo did not start is touched; psutil checks each process's start time before the signal."""
    import psutil  # noqa: PLC0415 - only on the way out

    needle = str(base)
    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and (
                any(needle in part for part in proc.info["cmdline"] or [])
                or any(needle in value for value in proc.environ().values())
            ):
                mine.append(proc)
    for proc in mine:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(mine, timeout=5)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (`timeout`, a service stop) unwinds like Ctrl-C, so the folder and the processes are cleaned up."""
    raise SystemExit(128 + signum)


def _ledger_summary(home: Path) -> tuple[Counter[str], list[str]]:
    events: Counter[str] = Counter()
    for path in sorted((home / "ledger").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            events[json.loads(line)["event"]] += 1
    log = home / "logs" / "selfheal.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return events, lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the demo's state folder and say where it is")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the results")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    base = Path(tempfile.mkdtemp(prefix="selfheal-demo-"))
    home, work = base / "state", base / "work"
    work.mkdir(parents=True)
    try:
        started = time.monotonic()
        results = _scenarios(home, work)
        events, log_lines = _ledger_summary(home)
        elapsed = time.monotonic() - started
        left = _left_behind(base)
        all_ok = all(ok for _, ok, _ in results) and not left
        if args.json:
            cli.emit_json(
                {
                    "ok": all_ok,
                    "scenarios": [{"title": t, "ok": ok, "detail": d} for t, ok, d in results],
                    "ledger_events": dict(events),
                    "duration_s": round(elapsed, 1),
                    "left_behind": left,
                    "state": str(home) if args.keep else None,
                }
            )
        else:
            print(f"self-heal demo: {len(results)} ways unattended work fails, and what self-heal did\n")
            for i, (title, ok, detail) in enumerate(results, 1):
                print(f"{i}. {title}\n   {'OK ' if ok else 'UNEXPECTED'} {detail}\n")
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(events.items()))
            print(f"The ledger recorded {sum(events.values())} events ({counts}).")
            print("The end of the log, in the source documents' format:")
            for line in log_lines[-12:]:
                print(f"   {line}")
            if left:
                print(f"\nUNEXPECTED: processes of the demo still running: {left}")
            print(f"\nDone in {elapsed:.1f}s, no process left behind." if not left else "")
            if args.keep:
                print(f"State kept in {home}")
        return 0 if all_ok else 3
    finally:
        _stop_leftovers(base)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
