"""Retrying failed OpenClaw cron jobs the user listed (`health.cron_retry.jobs`), through OpenClaw's own CLI.

OpenClaw backs off the *schedule* of a recurring job that keeps failing, and a daily job that failed at
02:00 does not run again before its next slot. For the jobs named in the list (by name or id), and only
those, a job whose last run ended in `error` is run again with `openclaw cron run <id>`. A disabled job
(`enabled: false`) is never run, and none while a run of it is under way (`runningAtMs`).

A failure episode starts with a failed run and lasts until the job's last run succeeds: at most
`max_retries` retries per episode, the n-th waiting at least `backoff_s * 2**(n-1)` after the failed run or
the retry before. A retry's own failure does not start a new episode: a failed run that started at or after
the retry we triggered and before the job's next scheduled run as `cron list` gave it then
(`state.nextRunAtMs`) is that retry's result (without a next scheduled time, every later failure is). Only a
failed run that is clearly not ours, a scheduled one at or after that slot, starts a new episode. Each retry
is a `cron_retry` ledger event. What the retried run does is OpenClaw's: its outcome shows in the job's
next status.

The episodes are kept in `status/cron_retry.json`: they are what caps the retries, so when that file cannot
be read (a link or FIFO planted there, a file moved aside as corrupt) no job is run that check
(CronUnavailable, the file named), never a retry on an empty memory. One health check at a time reads, runs
and writes them (a lock under `locks/`): the system crontab's check and the same check in OpenClaw's cron fire
at the same minute, and both ran a failed job again, the retry counted once. The second is CronBusy. A
`cron list` answer that is not the JSON job list is CronUnavailable too, with what it printed, not a traceback.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..core.config import Config
from ..core.ledger import Ledger
from ..errors import LockBusy, StateError
from ..state.root import StateRoot, file_lock, json_number, loads, read_json, write_json

RETRY_FILE = "cron_retry"  # status/cron_retry.json: per job, its failure episode: retries, when, and the next slot
CLOCK_SLACK_S = 1.0  # a retry's run starts after we asked for it; this much earlier still counts as ours
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Retried:
    """One listed job and what was done about it: retried | waiting | exhausted | ok | disabled."""

    job: str
    job_id: str
    action: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"job": self.job, "job_id": self.job_id, "action": self.action, "detail": self.detail}


class CronUnavailable(RuntimeError):
    """`openclaw cron list` failed (no gateway answering, no openclaw on PATH)."""


class CronBusy(CronUnavailable):
    """Another health check is retrying the listed jobs right now: this one leaves them to it."""


def _jobs(listed: str) -> list[dict[str, Any]]:
    """The jobs of `openclaw cron list --json`; CronUnavailable when it printed anything but a job list."""
    try:
        data = loads(listed or "{}")
    except ValueError:
        raise CronUnavailable(f"openclaw cron list printed no JSON: {listed.strip()[:200]!r}") from None
    jobs = data.get("jobs", []) if isinstance(data, dict) else data
    if not isinstance(jobs, list):
        raise CronUnavailable(f"openclaw cron list printed no job list: {listed.strip()[:200]!r}")
    return [j for j in jobs if isinstance(j, dict) and j.get("id")]


def _state(job: Mapping[str, Any]) -> Mapping[str, Any]:
    found = job.get("state")
    return found if isinstance(found, dict) else {}


def _seconds(value: Any) -> float | None:
    found = json_number(value)
    return None if found is None else found / 1000


def _failed_run(job: Mapping[str, Any]) -> float | None:
    """When the job's last run (its start) failed, in epoch seconds; None when its last run did not fail."""
    state = _state(job)
    status = state.get("lastRunStatus") or state.get("lastStatus") or job.get("lastRunStatus")
    if status != "error" and job.get("status") != "error":
        return None
    found = _seconds(state.get("lastRunAtMs"))
    return found if found is not None else (_seconds(job.get("lastRunAtMs")) or 0.0)


def _readable(seen: Mapping[str, Any]) -> bool:
    """Whether every time and count in a job's memory is a number (or absent)."""
    keys = ("since", "failed_at", "retries", "last", "retried_at", "next_at")
    return all(seen.get(k) is None or json_number(seen[k]) is not None for k in keys)


def _ours(seen: Mapping[str, Any], failed_at: float) -> bool:
    """Whether a newer failed run is the result of the retry we started: it started at or after that retry
    and before the job's next scheduled run as it stood then (unknown: counted as ours, so the cap holds)."""
    retried_at = json_number(seen.get("retried_at"))
    if retried_at is None or failed_at < retried_at - CLOCK_SLACK_S:
        return False
    next_at = json_number(seen.get("next_at"))
    return next_at is None or failed_at < next_at


def retry_failed_jobs(
    state: StateRoot,
    config: Config,
    *,
    env: Mapping[str, str],
    clock: Clock = SYSTEM_CLOCK,
    run: Runner = subprocess.run,
    openclaw: Sequence[str] = ("openclaw",),
) -> list[Retried]:
    """Look at the listed jobs once; retry those whose last run failed and whose turn it is.

    CronBusy when another health check is at it now; CronUnavailable when nothing can be retried this check."""
    settings = config.health.cron_retry
    wanted = set(settings.jobs)
    if not wanted:
        return []
    held = contextlib.ExitStack()
    try:  # one check at a time: two that both read "not retried yet" would both run the job
        held.enter_context(file_lock(state.lock_file("cron-retry", "jobs"), timeout=0, what="the cron retry"))
    except LockBusy:
        raise CronBusy("another health check is retrying the listed jobs now; left to it") from None
    except StateError as exc:
        raise CronUnavailable(f"no job is retried: the cron retry's lock cannot be taken ({exc})") from None
    try:
        return _retry_failed_jobs(state, config, env=env, clock=clock, run=run, openclaw=openclaw)
    finally:
        held.close()


def _retry_failed_jobs(
    state: StateRoot,
    config: Config,
    *,
    env: Mapping[str, str],
    clock: Clock,
    run: Runner,
    openclaw: Sequence[str],
) -> list[Retried]:
    """retry_failed_jobs under its lock."""
    settings = config.health.cron_retry
    wanted = set(settings.jobs)
    timeout = settings.timeout_s

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run([*openclaw, *args], capture_output=True, text=True, timeout=timeout, check=False, env=dict(env))

    try:  # first: without the episodes, the cap cannot hold (a link planted there would mean a retry every check)
        memory = read_json(state.status_file(RETRY_FILE)) or {}
    except StateError as exc:
        raise CronUnavailable(f"no job is retried: the retry counts cannot be read ({exc})") from None
    try:
        listed = cli("cron", "list", "--all", "--json")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CronUnavailable(f"openclaw cron list: {exc}") from None
    if listed.returncode != 0:
        raise CronUnavailable(f"openclaw cron list failed: {(listed.stderr or listed.stdout).strip()[-300:]}")
    jobs = _jobs(listed.stdout)
    now = clock.time()
    ledger = Ledger(state, config, clock=clock)
    out = []
    for job in jobs:
        job_id, name = str(job["id"]), str(job.get("name") or job["id"])
        if job_id not in wanted and name not in wanted:
            continue  # never a job the user did not list
        if job.get("enabled") is False:
            memory.pop(job_id, None)
            out.append(Retried(name, job_id, "disabled", "the job is disabled in OpenClaw; never run"))
            continue
        failed_at = _failed_run(job)
        if failed_at is None:
            memory.pop(job_id, None)  # it succeeded: the failure episode is over
            out.append(Retried(name, job_id, "ok", "its last run did not fail"))
            continue
        found = memory.get(job_id)
        seen: dict[str, Any] | None = dict(found) if isinstance(found, dict) else None
        if found is not None and (seen is None or not _readable(seen)):
            # Our own memory of it, edited by hand into nonsense: the cap taken as reached (a person looks),
            # never a new episode (that would be a retry storm with every bad edit).
            memory[job_id] = {"since": failed_at, "failed_at": failed_at, "retries": settings.max_retries}
            out.append(Retried(name, job_id, "exhausted", f"its entry in {RETRY_FILE}.json was unreadable: {found!r}"))
            continue
        if seen is None or (failed_at > (json_number(seen.get("failed_at")) or 0.0) and not _ours(seen, failed_at)):
            # A failure episode starts: the first failure seen, or a scheduled run that failed again.
            seen = {"since": failed_at, "failed_at": failed_at, "retries": 0, "last": failed_at}
        else:
            seen["failed_at"] = max(failed_at, json_number(seen.get("failed_at")) or 0.0)
        memory[job_id] = seen
        retries = int(json_number(seen.get("retries")) or 0)
        if retries >= settings.max_retries:
            out.append(Retried(name, job_id, "exhausted", f"retried {retries} times since its run failed"))
            continue
        if _seconds(_state(job).get("runningAtMs")) is not None:
            out.append(Retried(name, job_id, "waiting", "a run of it is under way"))
            continue
        due = (json_number(seen.get("last")) or failed_at) + settings.backoff_s * 2**retries
        if now < due:
            out.append(Retried(name, job_id, "waiting", f"next retry in {due - now:.0f}s"))
            continue
        try:
            done = cli("cron", "run", job_id)
            code, said = done.returncode, (done.stdout + done.stderr).strip()[-300:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            code, said = None, str(exc)
        seen.update(retries=retries + 1, last=now, retried_at=now, next_at=_seconds(_state(job).get("nextRunAtMs")))
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
