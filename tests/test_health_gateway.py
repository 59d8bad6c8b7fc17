"""The health check against a real OpenClaw 2026.9.6 gateway, run offline on a loopback port
(tests/helpers/openclaw.py), and inside that gateway's own cron."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.openclaw import Gateway, OpenClaw, free_port

from conftest import PYTHON, ROOT, SCRIPTS, SHARED_GATEWAY, script_env

pytestmark = pytest.mark.slow


def health_check(home: Path, openclaw_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """health_check.py as the user who runs OpenClaw would: their HOME, so the port comes from their openclaw.json."""
    env = script_env(home, HOME=str(openclaw_home))
    for name in ("OPENCLAW_STATE_DIR", "OPENCLAW_CONFIG_PATH", "OPENCLAW_GATEWAY_PORT"):
        env.pop(name, None)
    return subprocess.run(
        [PYTHON, str(SCRIPTS / "health_check.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def no_disk_minimum(write_config: Callable[[str], Path]) -> None:
    """This machine's free space is not what these tests are about."""
    write_config("health: {disk_min_free_mb: 0}\n")


@SHARED_GATEWAY
@pytest.mark.stops_shared_gateway
def test_a_real_gateway_is_operational_and_once_stopped_degraded_or_down(
    shared_gateway: Gateway, home: Path, no_disk_minimum: None
) -> None:
    gateway = shared_gateway
    openclaw_home = gateway.home
    status = openclaw_home / ".openclaw" / "skills" / "status"
    up = health_check(home, openclaw_home, "--cron")
    assert (up.returncode, up.stdout) == (0, "NO_REPLY\n"), up.stdout + up.stderr
    report = json.loads(health_check(home, openclaw_home, "--json").stdout)
    live = report["checks"][0]
    config_file = openclaw_home / ".openclaw" / "openclaw.json"
    assert (live["status"], live["url"]) == ("ok", gateway.url)
    assert live["source"] == f"gateway.port in {config_file}"  # onboard wrote gateway.port there
    status.mkdir(parents=True, exist_ok=True)
    (status / "daily-memory.txt").write_text("status=success,timestamp=now\n")
    gateway.stop()
    assert gateway.proc.returncode is not None and gateway.left_behind() == []

    degraded = health_check(home, openclaw_home, "--cron")
    assert degraded.returncode == 1
    assert degraded.stdout.startswith("self-heal health: DEGRADED: the gateway is not live but skills still work")
    (status / "daily-memory.txt").unlink()
    down = health_check(home, openclaw_home, "--cron")
    assert down.returncode == 3 and down.stdout.startswith("self-heal health: DOWN: ")
    log = (home / "logs" / "selfheal.log").read_text()
    assert [line.split(" ", 2)[2] for line in log.splitlines()] == [
        "task=- reason=operational",
        "task=- reason=degraded was=operational checks=gateway:fail",
        "task=- reason=down was=degraded checks=gateway:fail",
    ]


def cron_runs(openclaw: OpenClaw, gateway: Gateway, job: str, count: int) -> list[dict[str, Any]]:
    """The job's finished runs as `openclaw cron runs` prints them, once there are `count` of them (runs are
    queued; this only waits for them)."""
    gateway.wait_runs(job, count)
    runs = json.loads(openclaw.run(gateway.home, "cron", "runs", "--id", job).stdout)["entries"]
    return sorted((r for r in runs if r.get("action") == "finished"), key=lambda r: r["ts"])


@SHARED_GATEWAY
def test_openclaw_cron_runs_the_line_install_prints_and_reads_its_exit_code(
    openclaw: OpenClaw, shared_gateway: Gateway, tmp_path: Path, home: Path, no_disk_minimum: None
) -> None:
    """The `openclaw cron add` line install.sh --cron prints is accepted by a real gateway; run there, the check
    is `ok` with NO_REPLY (nothing posted) while all is well, and `error` with its summary when a skill fails."""
    fake_crontab = tmp_path / "crontab"
    fake_crontab.write_text(
        '#!/bin/sh\n[ "$1" = -l ] && { echo "no crontab for tester" >&2; exit 1; }\ncat >/dev/null\n'
    )
    fake_crontab.chmod(0o755)
    installed = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "--cron"],
        env=script_env(home, SELFHEAL_CRONTAB=str(fake_crontab), PYTHON=PYTHON),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    (printed,) = [line.strip() for line in installed.stderr.splitlines() if line.strip().startswith("openclaw cron")]
    openclaw_home = shared_gateway.home  # the job runs in the gateway, with its HOME: its status files count
    status = openclaw_home / ".openclaw" / "skills" / "status"
    job = json.loads(openclaw.run(openclaw_home, *shlex.split(printed)[1:]).stdout)
    try:
        assert (
            job["payload"]
            == {
                "kind": "command",
                "argv": [str(ROOT / ".venv" / "bin" / "python"), str(SCRIPTS / "health_check.py"), "--cron"],
                "env": {"SELFHEAL_HOME": str(home)},
            }
            or job["payload"]["argv"][-1] == "--cron"
        )
        openclaw.run(openclaw_home, "cron", "run", job["id"])
        (first,) = cron_runs(openclaw, shared_gateway, job["id"], 1)
        assert (first["status"], first["diagnostics"]["summary"]) == ("ok", "NO_REPLY")

        status.mkdir(parents=True, exist_ok=True)
        (status / "tiktok-poster.txt").write_text("status=error,last_run=now\n")
        openclaw.run(openclaw_home, "cron", "run", job["id"])
        second = cron_runs(openclaw, shared_gateway, job["id"], 2)[-1]
        assert second["status"] == "error"
        assert second["diagnostics"]["summary"].startswith("self-heal health: DEGRADED: 1 check(s) warn"), second
    finally:
        (status / "tiktok-poster.txt").unlink(missing_ok=True)
        openclaw.run(openclaw_home, "cron", "rm", job["id"])


@SHARED_GATEWAY
def test_install_openclaw_cron_registers_the_three_jobs_in_a_running_gateway_once(
    openclaw: OpenClaw, shared_gateway: Gateway, tmp_path: Path, home: Path
) -> None:
    """--openclaw-cron adds the health check and both task runners through the real CLI, without chat delivery;
    run again, it keeps them as they are (same ids, still three); --no-openclaw-cron removes them and nothing
    else; with no gateway it exits 4 and registers nothing."""
    openclaw_home = shared_gateway.home

    def install(option: str, where: Path = openclaw_home) -> subprocess.CompletedProcess[str]:
        env = openclaw.env(where, SELFHEAL_HOME=str(home), PYTHON=PYTHON)
        argv = ["bash", str(ROOT / "install.sh"), option]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)

    def listed() -> tuple[list[dict[str, Any]], list[str]]:
        """`openclaw cron list`: self-heal's jobs by name, and the ids of everyone else's."""
        answer = json.loads(openclaw.run(openclaw_home, "cron", "list", "--all", "--json").stdout)
        jobs = answer["jobs"] if isinstance(answer, dict) else answer
        ours = sorted((j for j in jobs if j["name"].startswith("self-heal-")), key=lambda j: j["name"])
        return ours, sorted(j["id"] for j in jobs if not j["name"].startswith("self-heal-"))

    def ours() -> list[dict[str, Any]]:
        return listed()[0]

    others = listed()[1]
    try:
        first = install("--openclaw-cron")
        assert first.returncode == 0, first.stderr
        assert "(3 added or replaced" in first.stderr
        jobs = ours()
        assert [j["name"] for j in jobs] == ["self-heal-fix-tasks", "self-heal-health", "self-heal-regular-tasks"]
        fix = jobs[0]
        assert fix["payload"]["argv"][1:] == [str(SCRIPTS / "tasks.py"), "run-next", "--type", "fix", "--quiet"]
        assert fix["payload"]["env"]["SELFHEAL_HOME"] == str(home)
        assert fix["schedule"]["expr"] == "* * * * *"
        assert all(j.get("delivery", {}).get("mode") in (None, "none") for j in jobs), jobs

        again = install("--openclaw-cron")
        assert again.returncode == 0 and "(0 added or replaced" in again.stderr, again.stderr
        assert [j["id"] for j in ours()] == [j["id"] for j in jobs]  # kept as they were, ids and history
    finally:
        removed = install("--no-openclaw-cron")
    assert removed.returncode == 0, removed.stderr
    assert listed() == ([], others)  # only self-heal's jobs went

    nowhere = openclaw.sandbox(tmp_path / "no-gateway")  # a config naming a port where nothing listens
    config = nowhere / ".openclaw" / "openclaw.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "gateway": {"port": free_port()}}))
    down = install("--openclaw-cron", nowhere)
    assert down.returncode == 4 and "the OpenClaw gateway does not answer" in down.stderr
