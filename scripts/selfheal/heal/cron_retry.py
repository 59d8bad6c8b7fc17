"""Retrying failed OpenClaw cron jobs the user listed (`health.cron_retry.jobs`), through OpenClaw's own CLI.

OpenClaw backs off the *schedule* of a recurring job that keeps failing, and a daily job that failed at
02:00 does not run again before its next slot. For the jobs named in the list (by name or id), and only
those, a job whose last run ended in `error` is run again with `openclaw cron run <id>`: at most
`max_retries` times per failed run (a newer failed run starts the count again), the n-th retry waiting at
least `backoff_s * 2**(n-1)` after that run or the retry before. Each retry is a `cron_retry` ledger event.
What the retried run does is OpenClaw's: its outcome shows in the job's next status.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..core.config import Config
from ..core.ledger import Ledger
from ..errors import StateError
from ..state.root import StateRoot, read_json, write_json

RETRY_FILE = "cron_retry"  # status/cron_retry.json: per job, the failed run being retried and its retries
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Retried:
    """One listed job and what was done about it: retried | waiting | exhausted | ok."""

    job: str
    job_id: str
    action: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"job": self.job, "job_id": self.job_id, "action": self.action, "detail": self.detail}


class CronUnavailable(RuntimeError):
    """`openclaw cron list` failed (no gateway answering, no openclaw on PATH)."""


def _jobs(listed: str) -> list[dict[str, Any]]:
    data = json.loads(listed or "{}")
    jobs = data.get("jobs", []) if isinstance(data, dict) else data
    return [j for j in jobs if isinstance(j, dict) and j.get("id")]


def _failed_run(job: Mapping[str, Any]) -> float | None:
    """When the job's last run failed (epoch seconds), or None when its last run did not fail."""
    found = job.get("state")
    state: Mapping[str, Any] = found if isinstance(found, dict) else {}
    status = state.get("lastRunStatus") or state.get("lastStatus") or job.get("lastRunStatus")
    if status != "error" and job.get("status") != "error":
        return None
    at = state.get("lastRunAtMs") or job.get("lastRunAtMs")
    return float(at) / 1000 if isinstance(at, (int, float)) else 0.0


def retry_failed_jobs(
    state: StateRoot,
    config: Config,
    *,
    env: Mapping[str, str],
    clock: Clock = SYSTEM_CLOCK,
    run: Runner = subprocess.run,
    openclaw: Sequence[str] = ("openclaw",),
) -> list[Retried]:
    """Look at the listed jobs once; retry those whose last run failed and whose turn it is."""
    settings = config.health.cron_retry
    wanted = set(settings.jobs)
    if not wanted:
        return []
    timeout = settings.timeout_s

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run([*openclaw, *args], capture_output=True, text=True, timeout=timeout, check=False, env=dict(env))

    try:
        listed = cli("cron", "list", "--all", "--json")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CronUnavailable(f"openclaw cron list: {exc}") from None
    if listed.returncode != 0:
        raise CronUnavailable(f"openclaw cron list failed: {(listed.stderr or listed.stdout).strip()[-300:]}")
    try:
        memory = read_json(state.status_file(RETRY_FILE)) or {}
    except StateError:
        memory = {}
    now = clock.time()
    ledger = Ledger(state, config, clock=clock)
    out = []
    for job in _jobs(listed.stdout):
        job_id, name = str(job["id"]), str(job.get("name") or job["id"])
        if job_id not in wanted and name not in wanted:
            continue  # never a job the user did not list
        failed_at = _failed_run(job)
        if failed_at is None:
            memory.pop(job_id, None)
            out.append(Retried(name, job_id, "ok", "its last run did not fail"))
            continue
        seen = memory.get(job_id) if isinstance(memory.get(job_id), dict) else None
        if seen is None or seen.get("failed_at") != failed_at:
            seen = {"failed_at": failed_at, "retries": 0, "last": failed_at}
        retries = int(seen["retries"])
        if retries >= settings.max_retries:
            out.append(Retried(name, job_id, "exhausted", f"retried {retries} times since its run failed"))
            memory[job_id] = seen
            continue
        due = float(seen["last"]) + settings.backoff_s * 2**retries
        if now < due:
            out.append(Retried(name, job_id, "waiting", f"next retry in {due - now:.0f}s"))
            memory[job_id] = seen
            continue
        try:
            done = cli("cron", "run", job_id)
            code, said = done.returncode, (done.stdout + done.stderr).strip()[-300:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            code, said = None, str(exc)
        seen = {"failed_at": failed_at, "retries": retries + 1, "last": now}
        memory[job_id] = seen
        ledger.record(
            "cron_retry",
            task=f"openclaw-cron-{name}",
            status="started" if code == 0 else "not_started",
            reason=f"openclaw cron run {job_id} (retry {retries + 1} of {settings.max_retries}): exit {code} {said}",
            attempt=retries + 1,
        )
        out.append(Retried(name, job_id, "retried", f"retry {retries + 1}: openclaw cron run exit {code}"))
    write_json(state.status_file(RETRY_FILE), memory, durable=False)
    return out
