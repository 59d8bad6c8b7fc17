"""Failed OpenClaw cron jobs run again, opt-in per job, with backoff and a cap, through `openclaw cron run`;
a job not listed is never touched. Against a stand-in CLI, then the real one in a real gateway."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.openclaw import Gateway, OpenClaw

from conftest import PYTHON, SCRIPTS, SHARED_GATEWAY
from selfheal.core.config import Config
from selfheal.core.ledger import iter_events, ledger_files
from selfheal.heal.cron_retry import CronUnavailable, retry_failed_jobs
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock


class FakeCli:
    """`openclaw cron list --all --json` answers `jobs`; `openclaw cron run ID` is recorded. With `fails_at`
    (the test's clock), each run it starts fails, as a job that always fails does: its state then shows a
    failed run that started a moment after the `cron run`."""

    def __init__(self, jobs: list[dict[str, Any]], *, list_code: int = 0, fails_at: FakeClock | None = None) -> None:
        self.jobs = jobs
        self.runs: list[str] = []
        self.list_code = list_code
        self.fails_at = fails_at

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if argv[1:3] == ["cron", "list"]:
            out = json.dumps({"jobs": self.jobs})
            return subprocess.CompletedProcess(argv, self.list_code, out, "gateway closed (1006)")
        self.runs.append(argv[3])
        if self.fails_at is not None:
            for found in self.jobs:
                if found["id"] == argv[3]:
                    found["state"]["lastRunAtMs"] = (self.fails_at.time() + 0.05) * 1000
                    found["state"]["lastRunStatus"] = found["status"] = "error"
        return subprocess.CompletedProcess(argv, 0, '{"ok": true}', "")


def job(job_id: str, name: str, status: str, at_s: float, *, next_s: float | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"lastRunStatus": status, "lastRunAtMs": at_s * 1000}
    if next_s is not None:
        state["nextRunAtMs"] = next_s * 1000
    return {"id": job_id, "name": name, "enabled": True, "status": status, "state": state}


def listed(config: Config, *jobs: str, **changes: Any) -> Config:
    retry = dataclasses.replace(config.health.cron_retry, jobs=jobs, **changes)
    return dataclasses.replace(config, health=dataclasses.replace(config.health, cron_retry=retry))


def test_only_listed_jobs_whose_last_run_failed_are_run_again(
    state: StateRoot, config: Config, clock: FakeClock
) -> None:
    failed_at = clock.time() - 600
    cli = FakeCli(
        [
            job("id-1", "nightly-report", "error", failed_at),
            job("id-2", "not-mine", "error", failed_at),
            job("id-3", "backup", "ok", failed_at),
        ]
    )
    done = retry_failed_jobs(state, listed(config, "nightly-report", "id-3"), env={}, clock=clock, run=cli)
    assert cli.runs == ["id-1"]  # not-mine is not listed; backup did not fail
    assert {r.job: r.action for r in done} == {"nightly-report": "retried", "backup": "ok"}
    (event,) = [e for e in iter_events(ledger_files(state)) if e["event"] == "cron_retry"]
    assert event["task"] == "openclaw-cron-nightly-report" and "openclaw cron run id-1" in event["reason"]


def test_retries_back_off_and_stop_at_the_cap_and_a_new_failure_starts_again(
    state: StateRoot, config: Config, clock: FakeClock
) -> None:
    cfg = listed(config, "nightly-report", max_retries=2, backoff_s=300.0)
    start = clock.time()
    cli = FakeCli([job("id-1", "nightly-report", "error", start - 10, next_s=start + 2400)])
    actions = []
    for step in (0, 300, 300, 300, 600, 1200):
        clock.advance(step)
        actions.append(retry_failed_jobs(state, cfg, env={}, clock=clock, run=cli)[0].action)
    # t=0: 290 s after the failure; t=300: retry 1; t=600: 300 s later, but the second waits 600 s; t=900:
    # retry 2; then the cap.
    assert actions == ["waiting", "retried", "waiting", "retried", "exhausted", "exhausted"]
    assert cli.runs == ["id-1", "id-1"]
    # it failed again on its own schedule: a run that started at its next slot, not a retry's
    cli.jobs = [job("id-1", "nightly-report", "error", start + 2400, next_s=start + 4800)]
    clock.advance(300)
    assert retry_failed_jobs(state, cfg, env={}, clock=clock, run=cli)[0].action == "retried"


def test_a_job_that_always_fails_is_retried_max_retries_times_per_episode_not_on_every_check(
    state: StateRoot, config: Config, clock: FakeClock
) -> None:
    """Each retry's own failure is a newer failed run: it is that retry's result, not a new episode."""
    cfg = listed(config, "nightly-report", max_retries=3, backoff_s=2.0)
    start = clock.time()
    cli = FakeCli([job("id-1", "nightly-report", "error", start - 1, next_s=start + 86400)], fails_at=clock)
    actions = []
    for _ in range(20):  # a check every 3 s for a minute
        clock.advance(3)
        actions.append(retry_failed_jobs(state, cfg, env={}, clock=clock, run=cli)[0].action)
    assert len(cli.runs) == 3
    # retry 1 at +3 s (2 s after the failure), retry 2 waits 4 s (+9), retry 3 waits 8 s (+18); then none
    assert actions[:6] == ["retried", "waiting", "retried", "waiting", "waiting", "retried"]
    assert set(actions[6:]) == {"exhausted"}
    events = [e for e in iter_events(ledger_files(state)) if e["event"] == "cron_retry"]
    assert [e["attempt"] for e in events] == [1, 2, 3]
    # its next scheduled run fails too: that is a new episode, with its own retries
    cli.jobs[0]["state"].update(lastRunAtMs=(start + 86400) * 1000, nextRunAtMs=(start + 2 * 86400) * 1000)
    clock.advance(86400 - clock.time() + start + 5)
    assert retry_failed_jobs(state, cfg, env={}, clock=clock, run=cli)[0].action == "retried"
    assert len(cli.runs) == 4
    # and a success ends the episode
    cli.jobs[0]["state"]["lastRunStatus"] = cli.jobs[0]["status"] = "ok"
    assert retry_failed_jobs(state, cfg, env={}, clock=clock, run=cli)[0].action == "ok"


def test_a_disabled_job_or_one_running_now_is_not_run(state: StateRoot, config: Config, clock: FakeClock) -> None:
    off = job("id-1", "nightly-report", "error", clock.time() - 600)
    off["enabled"] = False
    running = job("id-2", "backup", "error", clock.time() - 600)
    running["state"]["runningAtMs"] = (clock.time() - 5) * 1000
    cli = FakeCli([off, running])
    done = retry_failed_jobs(
        state, listed(config, "nightly-report", "backup", backoff_s=0.0), env={}, clock=clock, run=cli
    )
    assert cli.runs == []
    assert {r.job: r.action for r in done} == {"nightly-report": "disabled", "backup": "waiting"}


def test_nothing_is_asked_when_no_job_is_listed_and_a_silent_gateway_is_said(
    state: StateRoot, config: Config, clock: FakeClock
) -> None:
    cli = FakeCli([job("id-1", "nightly-report", "error", 0)])
    assert retry_failed_jobs(state, config, env={}, clock=clock, run=cli) == [] and cli.runs == []
    with pytest.raises(CronUnavailable, match="gateway closed"):
        retry_failed_jobs(state, listed(config, "x"), env={}, clock=clock, run=FakeCli([], list_code=1))


@pytest.mark.slow
@SHARED_GATEWAY
def test_a_listed_failed_job_is_run_again_in_a_real_gateway_and_an_unlisted_one_is_not(
    openclaw: OpenClaw, shared_gateway: Gateway, home: Path, write_config: Any
) -> None:
    openclaw_home = shared_gateway.home
    write_config("health: {disk_min_free_mb: 0, cron_retry: {jobs: [flaky-export], backoff_s: 0}}\n")
    env = {**openclaw.env(openclaw_home), "SELFHEAL_HOME": str(home)}

    def runs(job_id: str) -> int:
        entries = json.loads(openclaw.run(openclaw_home, "cron", "runs", "--id", job_id).stdout)["entries"]
        return len([e for e in entries if e.get("action") == "finished"])

    ids = {}
    try:
        for name in ("flaky-export", "not-listed"):
            added = openclaw.run(
                openclaw_home,
                *("cron", "add", "--name", name, "--every", "24h", "--no-deliver"),
                *("--command-argv", json.dumps(["sh", "-c", "exit 1"])),
            )
            ids[name] = json.loads(added.stdout)["id"]
            openclaw.run(openclaw_home, "cron", "run", ids[name])
            shared_gateway.wait_runs(ids[name], 1)
        proc = subprocess.run(
            [PYTHON, str(SCRIPTS / "health_check.py"), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        result = json.loads(proc.stdout)
        assert [r["action"] for r in result["cron_retry"]] == ["retried"], result.get("cron_retry")
        shared_gateway.wait_runs(ids["flaky-export"], 2)
        assert runs(ids["flaky-export"]) == 2
        assert runs(ids["not-listed"]) == 1
    finally:
        for job_id in ids.values():
            openclaw.run(openclaw_home, "cron", "rm", job_id)


@pytest.mark.parametrize(
    "printed",
    ['Config warnings: plugins.entries.x: unknown\n{"jobs": []}', '{"jobs": null}', '{"jobs": {"a": 1}}', "\x00\xff"],
)
def test_a_cron_list_that_is_not_a_job_list_is_reported_not_a_traceback(
    state: StateRoot, config: Config, clock: FakeClock, printed: str
) -> None:
    """A banner before the JSON or `jobs: null` ended the health check in a traceback; now CronUnavailable says so."""

    def cli(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, printed, "")

    with pytest.raises(CronUnavailable, match="openclaw cron list printed no"):
        retry_failed_jobs(state, listed(config, "nightly-report"), env={}, clock=clock, run=cli)


def test_a_hand_edited_retry_count_is_taken_as_the_cap_reached_not_a_crash(
    state: StateRoot, config: Config, clock: FakeClock
) -> None:
    """`"retries": "x"` or `"failed_at": "y"` in status/cron_retry.json ended in a ValueError traceback."""
    failed_at = clock.time() - 3600
    memory = state.status_file("cron_retry")
    memory.parent.mkdir(exist_ok=True)
    memory.write_text(json.dumps({"id-1": {"retries": "x", "failed_at": "y", "last": None}}))
    cli = FakeCli([job("id-1", "nightly-report", "error", failed_at)])
    (done,) = retry_failed_jobs(state, listed(config, "nightly-report"), env={}, clock=clock, run=cli)
    assert (done.action, cli.runs) == ("exhausted", [])


@pytest.mark.parametrize("value", ["NaN", "1e400", "true", "1" + "0" * 400])
def test_a_retry_count_that_is_no_finite_number_is_taken_as_the_cap_reached(
    state: StateRoot, config: Config, clock: FakeClock, value: str
) -> None:
    """`true` is no count, NaN and 1e400 (infinity, as JSON reads it) no time; a 400-digit count ended in an
    OverflowError traceback."""
    memory = state.status_file("cron_retry")
    memory.parent.mkdir(exist_ok=True)
    failed_at = clock.time() - 3600
    memory.write_text(json.dumps({"id-1": {"retries": "@", "failed_at": failed_at}}).replace('"@"', value))
    cli = FakeCli([job("id-1", "nightly-report", "error", failed_at)])
    (done,) = retry_failed_jobs(state, listed(config, "nightly-report"), env={}, clock=clock, run=cli)
    assert (done.action, cli.runs) == ("exhausted", [])


def test_a_job_time_from_openclaw_that_is_no_finite_number_is_not_a_crash(
    state: StateRoot, config: Config, clock: FakeClock
) -> None:
    """A failed job whose `lastRunAtMs` is a 400-digit number (or NaN) in `cron list`'s answer: retried as one
    whose failed run's time is unknown, not an OverflowError traceback."""
    cli = FakeCli([job("id-1", "nightly-report", "error", 0.0)])
    cli.jobs[0]["state"]["lastRunAtMs"] = 10**400
    (done,) = retry_failed_jobs(state, listed(config, "nightly-report"), env={}, clock=clock, run=cli)
    assert (done.action, cli.runs) == ("retried", ["id-1"])


FAKE_OPENCLAW = """\
import json, os, sys, time
args = sys.argv[1:]
if args[:2] == ["cron", "list"]:
    if os.environ["FAKE_CRON"] == "broken":
        sys.stderr.write("Error: gateway closed (1008): unauthorized\\n\\x1b]0;owned\\x07\\x1b[2J" + "\\nhint" * 8)
        sys.exit(1)
    failed = {"lastRunStatus": "error", "lastRunAtMs": (time.time() - 3600) * 1000}
    jobs = [{"id": f"id-{n}", "name": f"job-{n}\\x1b[31m", "enabled": True, "state": failed} for n in range(7)]
    print(json.dumps({"jobs": jobs}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("cron", ["broken", "seven-failed-jobs"])
def test_what_the_cron_retry_says_in_cron_output_is_inert_and_within_five_lines(
    home: Path, state: StateRoot, tmp_path: Path, cron: str
) -> None:
    """`cron list`'s multi-line error (ESC sequences included) went to cron's mail as it was, a title change
    and a cleared screen obeyed; seven retried jobs printed seven lines. `--cron` keeps its 5 lines, inert."""
    from helpers.fake_gateway import LIVE, READY, FakeGateway
    from helpers.scripts import script_env

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "openclaw"
    fake.write_text(f"#!{PYTHON}\n{FAKE_OPENCLAW}")
    fake.chmod(0o755)
    jobs = ", ".join(f"id-{n}" for n in range(7))  # by id: their names carry an ESC sequence
    (home / "config.yaml").write_text(f"health:\n  disk_min_free_mb: 0\n  cron_retry:\n    jobs: [{jobs}]\n")
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env = script_env(
            home,
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            OPENCLAW_GATEWAY_PORT=gw.url.rsplit(":", 1)[1],
            OPENCLAW_STATE_DIR=str(tmp_path / "oc"),
            FAKE_CRON=cron,
        )
        proc = subprocess.run(
            [PYTHON, str(SCRIPTS / "health_check.py"), "--cron"], env=env, capture_output=True, text=True, check=False
        )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert 1 <= len(lines) <= 5, proc.stdout
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert lines[0].startswith("cron retry: ")
    if cron == "broken":
        assert "gateway closed (1008): unauthorized" in lines[0] and "␛" in lines[0]
    else:
        assert lines[-1].startswith("and 3 more") and "health_check.py" in lines[-1]
