"""Healing under attack: the gateway watchdog and the cron retry with their memory planted or broken, two
watchdogs at once, and self_heal.py reading a planted FIFO as a log.

- A link (or a FIFO) planted at `status/watchdog.json` read as "no restarts yet", and the restart history
  could not be written back: every health check restarted the gateway again (the hourly cap never held) and
  then ended with the link's error. The same at `status/cron_retry.json` ran a failed cron job again at
  every check, its retry count never kept.
- Two health checks at once (a slow one from cron and one by hand) both found the gateway down and both
  restarted it: two restarts within the startup grace, one on top of the other.
- `self_heal.py --task ID` read every `logs/selfheal.log*` by its name: a FIFO planted there hung it for
  good, and a link was followed out of the state root.

Each case runs the real code: real files, links and FIFOs, real processes for the concurrent checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.openclaw import free_port

from conftest import PYTHON, SCRIPTS, script_env
from selfheal.core.config import Config, load_config
from selfheal.core.ledger import Ledger, iter_events, ledger_files
from selfheal.heal.cron_retry import CronUnavailable, retry_failed_jobs
from selfheal.heal.watchdog import watch
from selfheal.observe.health import run_health_check
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock

pytestmark = pytest.mark.slow


def watchdog_config(home: Path, restart_argv: list[str]) -> Config:
    """The user's config.yaml with the watchdog on (no disk check: the test machine's disk is not the case)."""
    (home / "config.yaml").write_text(
        "health:\n  disk_min_free_mb: 0\n  watchdog:\n    enabled: true\n"
        f"    restart_argv: {json.dumps(restart_argv)}\n",
        encoding="utf-8",
    )
    return load_config()


def gateway_env(home: Path, tmp_path: Path) -> dict[str, str]:
    """A gateway that is down: nothing listens on its port; OpenClaw's folder is the test's own."""
    openclaw = tmp_path / "oc"
    openclaw.mkdir(exist_ok=True)
    (openclaw / "openclaw.json").write_text(json.dumps({"logging": {"file": str(tmp_path / "oc.log")}}))
    return {
        "SELFHEAL_HOME": str(home),
        "OPENCLAW_STATE_DIR": str(openclaw),
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "OPENCLAW_GATEWAY_PORT": str(free_port()),
    }


class Restarts:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_planted_watchdog_memory_stops_the_restarts_instead_of_resetting_the_hourly_cap(
    home: Path, state: StateRoot, tmp_path: Path, clock: FakeClock, planted: str
) -> None:
    """Restarts every check, the cap never held: now none, and the outcome names the planted file."""
    config = watchdog_config(home, ["openclaw", "gateway", "restart"])
    env = gateway_env(home, tmp_path)
    memory = state.root / "status" / "watchdog.json"
    memory.parent.mkdir(exist_ok=True)
    if planted == "link":
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text('{"restarts": []}')
        memory.symlink_to(elsewhere)
    else:
        os.mkfifo(memory)
    restarts = Restarts()
    outcomes = []
    for _ in range(3):
        clock.advance(600)  # past the grace and any backoff: a restart would be due each time
        outcomes.append(
            watch(run_health_check(state, env=env, clock=clock), state, config, env=env, clock=clock, run=restarts)
        )
    assert restarts.calls == []
    assert {o.action for o in outcomes} == {"blocked"}
    assert str(memory) in outcomes[0].detail


def test_a_planted_cron_retry_memory_runs_no_job_again(
    state: StateRoot, config: Config, tmp_path: Path, clock: FakeClock
) -> None:
    """A failed job ran again at every check, its retries never counted: now none runs; the error names the file."""
    import dataclasses

    retry = dataclasses.replace(config.health.cron_retry, jobs=("nightly",), max_retries=1, backoff_s=60.0)
    cfg = dataclasses.replace(config, health=dataclasses.replace(config.health, cron_retry=retry))
    memory = state.root / "status" / "cron_retry.json"
    memory.parent.mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    memory.symlink_to(elsewhere)
    failed = {"lastRunStatus": "error", "lastRunAtMs": (clock.time() - 3600) * 1000}
    listing = json.dumps({"jobs": [{"id": "j1", "name": "nightly", "enabled": True, "state": failed}]})
    runs: list[list[str]] = []

    def cli(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if argv[1:3] == ["cron", "run"]:
            runs.append(argv)
        return subprocess.CompletedProcess(argv, 0, listing if argv[1:3] == ["cron", "list"] else "{}", "")

    for _ in range(3):
        clock.advance(600)
        with pytest.raises(CronUnavailable, match=r"cron_retry\.json"):
            retry_failed_jobs(state, cfg, env={}, clock=clock, run=cli)
    assert runs == []
    assert elsewhere.read_text() == "{}"


def two_health_checks_at_once(env: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """`health_check.py --json` started twice at once (the crontab's check and OpenClaw cron's in the same
    minute): each one's (stdout, stderr)."""
    argv = [PYTHON, str(SCRIPTS / "health_check.py"), "--json"]
    checks = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    return [c.communicate(timeout=60) for c in checks]


def test_two_health_checks_at_once_restart_the_gateway_once(home: Path, state: StateRoot, tmp_path: Path) -> None:
    """Both found it down and both ran the restart command: now the second sees the first at work and waits."""
    marker = tmp_path / "restarts"
    marker.mkdir()
    # The restart command leaves one file per run and takes a moment, as `openclaw gateway restart` does.
    restart = [
        PYTHON,
        "-c",
        f"import os, time; open(os.path.join({str(marker)!r}, str(os.getpid())), 'w'); time.sleep(2)",
    ]
    watchdog_config(home, restart)
    env = {**script_env(home), **gateway_env(home, tmp_path)}
    outputs = two_health_checks_at_once(env)
    actions = sorted(json.loads(out)["watchdog"]["action"] for out, _ in outputs)
    assert len(list(marker.iterdir())) == 1, actions
    assert actions in (["restarted", "starting"], ["busy", "restarted"])
    for _, err in outputs:
        assert b"Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs")
def test_a_fifo_planted_among_the_logs_does_not_hang_self_heal(home: Path, state: StateRoot) -> None:
    """`self_heal.py --task ID` hung for good on a FIFO named logs/selfheal.log.1; now it is skipped and named."""
    config = load_config()
    Ledger(state, config).record("failed", task="nightly", error_class="permanent", reason="ValueError: bad row 7")
    (state.root / "logs").mkdir(exist_ok=True)
    os.mkfifo(state.root / "logs" / "selfheal.log.1")
    outside = home.parent / "outside.log"
    outside.write_text("2026-06-10T03:12:18Z [FAILED] task=nightly reason=LEAKED-FROM-OUTSIDE\n")
    (state.root / "logs" / "selfheal.log.2").symlink_to(outside)
    done = subprocess.run(
        [PYTHON, str(SCRIPTS / "self_heal.py"), "--task", "nightly", "--no-model", "--json"],
        capture_output=True,
        text=True,
        env=script_env(home),
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)["record"]
    assert "LEAKED-FROM-OUTSIDE" not in json.dumps(record)
    assert "Traceback" not in done.stderr
    events = [e for e in iter_events(ledger_files(state)) if e["event"] == "fix"]
    assert events and events[-1]["task"] == "nightly"


def test_a_fix_record_moved_aside_as_corrupt_keeps_its_id_and_its_readable_twin(home: Path, state: StateRoot) -> None:
    """A fix record broken by a hand edit was moved aside in silence, and the next failure of its task took its
    id: FIX-nightly-001 named two records, and the broken one's .md twin (all a person had left to read) was
    overwritten. Now the next record takes the next number and self_heal.py says what was moved aside."""
    config = load_config()
    ledger = Ledger(state, config)
    ledger.record("failed", task="nightly", error_class="permanent", reason="ValueError: bad row in vendor feed")
    first = subprocess.run(
        [PYTHON, str(SCRIPTS / "self_heal.py"), "--task", "nightly", "--no-model", "--json"],
        capture_output=True, text=True, env=script_env(home), timeout=30, check=False,
    )  # fmt: skip
    assert json.loads(first.stdout)["id"] == "FIX-nightly-001", first.stderr
    fixes = state.root / "fixes"
    twin = (fixes / "FIX-nightly-001.md").read_text(encoding="utf-8")
    (fixes / "FIX-nightly-001.json").write_text('{"id": "FIX-nightly-001", "task": ', encoding="utf-8")
    ledger.record("failed", task="nightly", error_class="permanent", reason="KeyError: 'customer_id' missing")
    second = subprocess.run(
        [PYTHON, str(SCRIPTS / "self_heal.py"), "--task", "nightly", "--no-model", "--json"],
        capture_output=True, text=True, env=script_env(home), timeout=30, check=False,
    )  # fmt: skip
    assert second.returncode == 0 and "Traceback" not in second.stderr, second.stderr
    assert json.loads(second.stdout)["id"] == "FIX-nightly-002"
    assert (fixes / "FIX-nightly-001.md").read_text(encoding="utf-8") == twin
    moved = [p.name for p in fixes.glob("FIX-nightly-001.json.corrupt-*")]
    assert len(moved) == 1 and f"{fixes / 'FIX-nightly-001.json'}" in second.stderr and moved[0] in second.stderr


@pytest.mark.parametrize("planted", ["link", "folder"])
def test_a_link_planted_among_the_fix_records_is_named_and_every_other_failure_still_recorded(
    home: Path, state: StateRoot, tmp_path: Path, planted: str
) -> None:
    """A symbolic link named like a record (fixes/FIX-other-001.json) made `list`, `learnings` and every
    `--task` of any task exit 2: one planted file stopped self-heal recording anything. Now it is not read,
    named on stderr, and left for a person; the other records are listed and new failures recorded."""
    config = load_config()
    Ledger(state, config).record("failed", task="nightly", error_class="permanent", reason="ValueError: bad row 7")
    fixes = state.root / "fixes"
    fixes.mkdir(mode=0o700, exist_ok=True)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"id": "FIX-other-001", "root_cause": "LEAKED-FROM-OUTSIDE"}), encoding="utf-8")
    if planted == "link":
        (fixes / "FIX-other-001.json").symlink_to(outside)
    else:  # a folder named like a record stopped them too (exit 3, "is a folder")
        (fixes / "FIX-other-001.json").mkdir()
    for args in (["--task", "nightly", "--no-model"], ["list"], ["learnings", "--workspace", str(tmp_path)]):
        done = subprocess.run(
            [PYTHON, str(SCRIPTS / "self_heal.py"), *args, "--json"],
            capture_output=True, text=True, env=script_env(home), timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
        why = "symbolic link" if planted == "link" else "is a folder"
        assert f"{fixes / 'FIX-other-001.json'}" in done.stderr and why in done.stderr, args
        assert "LEAKED-FROM-OUTSIDE" not in done.stdout
    listed = json.loads(done.stdout)
    assert listed["added"] == 1  # the nightly record, into .learnings/ERRORS.md
    planted_at = fixes / "FIX-other-001.json"
    assert planted_at.is_symlink() if planted == "link" else planted_at.is_dir()
    assert outside.read_text(encoding="utf-8").count("LEAKED") == 1


@pytest.mark.parametrize("planted", ["fifo", "zero"])
def test_an_openclaw_json_that_is_a_fifo_or_endless_does_not_hang_the_watchdogs_healthy_check(
    home: Path, state: StateRoot, tmp_path: Path, planted: str
) -> None:
    """With the watchdog on and the gateway live, every check copied openclaw.json as last-known-good by reading
    it whole: a FIFO there hung the cron check for good, a link to /dev/zero read until memory ran out. Now it
    is not copied, and the check ends as any healthy check does."""
    from helpers.fake_gateway import LIVE, READY, FakeGateway

    watchdog_config(home, ["openclaw", "gateway", "restart"])
    env = {**script_env(home), **gateway_env(home, tmp_path)}
    config_file = Path(env["OPENCLAW_STATE_DIR"]) / "openclaw.json"
    config_file.unlink()
    if planted == "fifo":
        os.mkfifo(config_file)
    else:
        config_file.symlink_to("/dev/zero")
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env["OPENCLAW_GATEWAY_PORT"] = gw.url.rsplit(":", 1)[1]
        proc = subprocess.run(
            [PYTHON, str(SCRIPTS / "health_check.py"), "--json"], env=env, capture_output=True, timeout=30, check=False
        )
    assert b"Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["watchdog"]["action"] == "healthy"
    assert not list((home / "openclaw-config").glob("*"))


def test_two_health_checks_at_once_run_a_failed_cron_job_again_once(
    home: Path, state: StateRoot, tmp_path: Path
) -> None:
    """The system crontab's check and the same check in OpenClaw's cron both fire at :00: both read "no retry
    yet" and both ran the failed nightly job again (a report mailed twice), and the retry was counted once. Now
    one retries it and the other leaves it to that one."""
    from helpers.fake_gateway import LIVE, READY, FakeGateway

    marker = tmp_path / "runs"
    marker.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "openclaw"
    failed = {"lastRunStatus": "error", "lastRunAtMs": 1_000_000}  # long ago: a retry is due
    listing = json.dumps({"jobs": [{"id": "j1", "name": "nightly", "enabled": True, "state": failed}]})
    fake.write_text(
        f"#!{PYTHON}\nimport os, sys, time\n"
        f"if sys.argv[1:3] == ['cron', 'list']:\n    print({listing!r})\n"
        f"else:\n    open(os.path.join({str(marker)!r}, str(os.getpid())), 'w'); time.sleep(2)\n"
    )
    fake.chmod(0o755)
    (home / "config.yaml").write_text("health:\n  disk_min_free_mb: 0\n  cron_retry:\n    jobs: [nightly]\n")
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env = {
            **script_env(home),
            **gateway_env(home, tmp_path),
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "OPENCLAW_GATEWAY_PORT": gw.url.rsplit(":", 1)[1],
        }
        outputs = two_health_checks_at_once(env)
    for _, err in outputs:
        assert b"Traceback" not in err
    assert len(list(marker.iterdir())) == 1, [json.loads(out).get("cron_retry") for out, _ in outputs]
    memory = json.loads((state.root / "status" / "cron_retry.json").read_text())
    assert memory["j1"]["retries"] == 1


@pytest.mark.parametrize("target", ["a file", "nothing"])
def test_a_link_planted_at_the_restart_output_is_never_written_through_and_never_blocks_the_restart(
    home: Path, state: StateRoot, tmp_path: Path, clock: FakeClock, target: str
) -> None:
    """logs/gateway-restart.out takes the restart command's output: a link planted there (to a file of the user's,
    or to nothing yet) is refused, the restart still runs with its output thrown away, and the outcome says so
    once. The check that bounds the file's size never truncates through the link either."""
    from selfheal.heal.watchdog import RESTART_OUTPUT_CAP

    ran = tmp_path / "ran"
    config = watchdog_config(home, ["sh", "-c", f"echo written through the link; touch '{ran}'"])
    env = gateway_env(home, tmp_path)
    out = state.root / "logs" / "gateway-restart.out"
    elsewhere = tmp_path / "users-file"
    if target == "a file":
        elsewhere.write_bytes(b"the user's own\n")
        os.truncate(elsewhere, RESTART_OUTPUT_CAP + 1)  # past the cap: the size check must not empty it
    out.symlink_to(elsewhere)
    clock.advance(600)
    outcome = watch(run_health_check(state, env=env, clock=clock), state, config, env=env, clock=clock)
    assert ran.exists(), "the restart command did not run"
    assert outcome.action == "restarted", outcome.detail
    assert outcome.detail.count(str(out)) == 1 and "link" in outcome.detail, outcome.detail
    assert out.is_symlink()
    if target == "a file":
        assert elsewhere.stat().st_size == RESTART_OUTPUT_CAP + 1
        with elsewhere.open("rb") as fh:
            assert fh.read(15) == b"the user's own\n"
    else:
        assert not elsewhere.exists()
