"""self-heal's own status file among the other skills': ~/.openclaw/skills/status/self-heal.txt (key=value),
written by the health check and the task runner; and a gateway that serves only /health."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.fake_gateway import LIVE, FakeGateway

from conftest import call_script
from selfheal.observe import health
from selfheal.observe.health import OK, SKIP
from selfheal.state import skill_status
from selfheal.state.skill_status import read_status, status_path, update_status


def script(home: Path, name: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return call_script(name, *args, home=home, env=extra, drop=("OPENCLAW_GATEWAY_PORT",))


def test_the_health_check_writes_its_line_where_other_skills_write_theirs(home: Path, tmp_path: Path) -> None:
    """key=value in <OPENCLAW_STATE_DIR>/skills/status/self-heal.txt, 0600; the third document's health script
    (`find ~/.openclaw/skills/status -name "*.txt" -mmin -60`) counts it."""
    openclaw_dir = tmp_path / "oc"
    proc = script(home, "health_check.py", "--cron", OPENCLAW_STATE_DIR=str(openclaw_dir))
    assert proc.returncode == 3  # no gateway here, nothing else alive: down
    path = openclaw_dir / "skills" / "status" / "self-heal.txt"
    values = read_status(path)
    assert (values["status"], values["health"]) == ("success", "down")
    assert values["timestamp"].endswith("Z") and path.read_text().count("\n") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = script(home, "health_check.py", "--cron", OPENCLAW_STATE_DIR=str(openclaw_dir))
    assert again.returncode == 3  # its own fresh line is no sign that anything else is alive


def test_without_openclaw_state_dir_the_line_goes_under_home(home: Path, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "u")}
    assert status_path(env) == tmp_path / "u" / ".openclaw" / "skills" / "status" / "self-heal.txt"
    env_dir = {"OPENCLAW_STATE_DIR": str(tmp_path / "oc"), "HOME": str(tmp_path / "u")}
    assert status_path(env_dir) == tmp_path / "oc" / "skills" / "status" / "self-heal.txt"


def test_run_next_adds_the_task_runner_keys_and_keeps_the_health_ones(home: Path, tmp_path: Path) -> None:
    openclaw_dir = str(tmp_path / "oc")
    script(home, "health_check.py", "--cron", OPENCLAW_STATE_DIR=openclaw_dir)
    assert script(home, "tasks.py", "add", "job", "--", "true", OPENCLAW_STATE_DIR=openclaw_dir).returncode == 0
    ran = script(home, "tasks.py", "run-next", OPENCLAW_STATE_DIR=openclaw_dir)
    assert ran.returncode == 0, ran.stderr
    values = read_status(Path(openclaw_dir) / "skills" / "status" / "self-heal.txt")
    assert (values["health"], values["tasks_outcome"], values["tasks_task"]) == ("down", "succeeded", "job")
    nothing = script(home, "tasks.py", "run-next", "--quiet", OPENCLAW_STATE_DIR=openclaw_dir)
    assert nothing.returncode == 0
    values = read_status(Path(openclaw_dir) / "skills" / "status" / "self-heal.txt")
    assert values["tasks_outcome"] == "nothing" and "tasks_task" not in values


def test_a_link_planted_at_the_temp_name_is_named_once_and_the_line_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The temp name is random; should a planted link hold the one drawn, it is left alone (never written
    through), named in one warning, and the next name is used: the status line is not lost."""
    env = {"OPENCLAW_STATE_DIR": str(tmp_path / "oc")}
    folder = tmp_path / "oc" / "skills" / "status"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    planted = folder / f".self-heal.txt.{os.getpid()}.planted.tmp"
    os.symlink(victim, planted)
    tokens = iter(["planted", "fresh"])
    monkeypatch.setattr(skill_status, "_temp_token", lambda: next(tokens))

    with caplog.at_level(logging.WARNING):
        path = update_status({"health": "ok"}, now=0.0, env=env)

    assert read_status(path)["health"] == "ok" and victim.read_text() == "mine\n"
    assert os.path.islink(planted)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(planted) in warnings[0], warnings
    assert sorted(p.name for p in folder.iterdir()) == [planted.name, "self-heal.txt"]  # no temp file left


def test_a_dead_writers_temp_file_is_swept_and_nothing_else_in_openclaws_folder(tmp_path: Path) -> None:
    """A writer killed between its create and its rename leaves `.self-heal.txt.<pid>.<token>.tmp` behind; the
    next write removes it (its pid is gone), and leaves a live writer's and every other skill's files."""
    env = {"OPENCLAW_STATE_DIR": str(tmp_path / "oc")}
    folder = tmp_path / "oc" / "skills" / "status"
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = folder / f".self-heal.txt.{dead.pid}.{'a' * 16}.tmp"
    live = folder / f".self-heal.txt.{os.getpid()}.{'b' * 16}.tmp"
    other = folder / f".other-skill.txt.{dead.pid}.{'c' * 16}.tmp"
    for path in (stale, live, other):
        path.write_text("x")
    update_status({"health": "ok"}, now=0.0, env=env)
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, other.name, "self-heal.txt"])


def test_a_link_planted_at_the_status_file_is_not_read(tmp_path: Path) -> None:
    """The pairs are read only from our own file: a link there to someone else's file is not read (its
    contents would be copied into ours), and the next write replaces the link, never its target."""
    env = {"OPENCLAW_STATE_DIR": str(tmp_path / "oc")}
    folder = tmp_path / "oc" / "skills" / "status"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("secret=hunter2,status=owned\n")
    os.symlink(victim, folder / "self-heal.txt")
    assert read_status(folder / "self-heal.txt") == {}
    path = update_status({"health": "ok"}, now=0.0, env=env)
    assert "hunter2" not in path.read_text() and not path.is_symlink()
    assert victim.read_text() == "secret=hunter2,status=owned\n"


def test_a_fifo_planted_at_the_status_file_is_not_waited_on_and_is_replaced(tmp_path: Path) -> None:
    """A FIFO where the status line belongs would hang the cron health check for good: it reads as no pairs,
    and the next write puts a regular file in its place."""
    env = {"OPENCLAW_STATE_DIR": str(tmp_path / "oc")}
    folder = tmp_path / "oc" / "skills" / "status"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "self-heal.txt")
    assert read_status(folder / "self-heal.txt") == {}
    path = update_status({"health": "ok"}, now=0.0, env=env)
    assert stat.S_ISREG(os.lstat(path).st_mode) and read_status(path)["health"] == "ok"


def test_a_gateway_that_serves_only_health_is_live_with_the_probe_path_configured() -> None:
    """By default such a gateway reads down (/healthz is its HTML page); live_path /health and no readiness
    probe read it live."""
    with FakeGateway({"/health": LIVE}) as gw:
        base = health.Settings(gw.url, "test", 2.0, (), 3600.0, 600.0, 0, 0)
        default = health.check_gateway(base)
        configured = health.check_gateway(base._replace(live_path="/health", ready_path=None))
    assert default[0].status == "fail"
    assert [c.status for c in configured] == [OK, SKIP]
    assert gw.paths == ["/healthz", "/health"]


def test_the_probe_paths_are_checked_when_the_config_loads(home: Path, write_config: Callable[[str], Path]) -> None:
    write_config("health: {live_path: health}\n")
    proc = script(home, "health_check.py")
    assert proc.returncode == 2 and "live_path" in proc.stderr and "must be a URL path" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(status_path())  # a configuration error writes no line
