"""The gateway watchdog (opt-in): restart a gateway found down, leave a starting one alone, back off, give up
with a fix record that offers the last-known-good openclaw.json; and a killed real gateway brought back."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers.fake_gateway import LIVE, READY, FakeGateway
from helpers.openclaw import OpenClaw, free_port

from conftest import PYTHON, SCRIPTS, SHARED_GATEWAY, SharedGateway, script_env
from selfheal.clock import utc_iso
from selfheal.core.config import Config
from selfheal.core.ledger import iter_events, ledger_files
from selfheal.heal.diagnose import apply_fix
from selfheal.heal.watchdog import config_changed_since_good, good_configs, keep_good_config, watch
from selfheal.observe.health import run_health_check
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock


class Restarts:
    """A stand-in for `openclaw gateway restart`: records each call."""

    def __init__(self, code: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.code = code

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, self.code, "", "" if self.code == 0 else "Gateway service disabled.")


def enabled(config: Config, **changes: Any) -> Config:
    dog = dataclasses.replace(config.health.watchdog, enabled=True, **changes)
    return dataclasses.replace(config, health=dataclasses.replace(config.health, watchdog=dog, disk_min_free_mb=0))


@pytest.fixture
def openclaw_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "openclaw.json").write_text(json.dumps({"logging": {"file": str(tmp_path / "oc.log")}}))
    return folder


def env_for(openclaw_dir: Path, url: str) -> dict[str, str]:
    return {
        "SELFHEAL_HOME": os.environ["SELFHEAL_HOME"],
        "OPENCLAW_STATE_DIR": str(openclaw_dir),
        "HOME": str(openclaw_dir.parent),
        "PATH": "/usr/bin:/bin",
        "OPENCLAW_GATEWAY_PORT": url.rsplit(":", 1)[1],
    }


def check(state: StateRoot, env: dict[str, str], clock: FakeClock) -> Any:
    return run_health_check(state, env=env, clock=clock)


def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def watchdog_events(state: StateRoot) -> list[dict[str, Any]]:
    return [e for e in iter_events(ledger_files(state)) if e["event"] == "watchdog"]


def test_a_gateway_found_down_is_restarted_with_the_configured_command_and_recorded(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    env = env_for(openclaw_dir, down_url())
    restarts = Restarts()
    outcome = watch(check(state, env, clock), state, enabled(config), env=env, clock=clock, run=restarts)
    assert outcome.action == "restarted"
    assert restarts.calls == [["openclaw", "gateway", "restart"]]
    (event,) = watchdog_events(state)
    assert (event["task"], event["status"], event["attempt"]) == ("openclaw-gateway", "restarted", 1)


def test_restarts_give_it_time_back_off_and_stop_at_the_hourly_cap_with_a_fix_record(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    env = env_for(openclaw_dir, down_url())
    cfg = enabled(config, max_restarts_per_hour=3, backoff_s=120.0, startup_grace_s=90.0)
    restarts = Restarts(code=1)
    actions = []
    for step in (0, 30, 100, 30, 200, 50, 50, 300):  # seconds between checks
        clock.advance(step)
        actions.append(watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts).action)
    assert actions == [
        "restart_failed",  # t=0
        "starting",  # t=30: within the grace of our own restart
        "restart_failed",  # t=130: past 120 s of backoff
        "starting",  # t=160
        "waiting",  # t=360: the second restart (t=130) is followed by at least 240 s
        "restart_failed",  # t=410
        "starting",  # t=460
        "gave_up",  # t=760: three restarts this hour and still down
    ]
    assert len(restarts.calls) == 3
    clock.advance(60)
    assert watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts).action == "gave_up"
    assert len(restarts.calls) == 3  # no fourth restart within the hour
    statuses = [e["status"] for e in watchdog_events(state)]
    assert statuses == ["restart_failed"] * 3 + ["gave_up"]  # the second give-up is the same record, not counted


def break_the_config_until_it_gives_up(state: StateRoot, cfg: Config, clock: FakeClock, openclaw_dir: Path) -> Any:
    """openclaw.json broken and the gateway down: the restart fails twice and the watchdog gives up with a fix
    record; its outcome."""
    (openclaw_dir / "openclaw.json").write_text("{ broken")
    env = env_for(openclaw_dir, down_url())
    restarts = Restarts(code=1)
    watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts)
    clock.advance(600)
    outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts)
    assert outcome.action == "gave_up" and outcome.fix_id
    return outcome


def test_a_gateway_openclaw_logged_as_starting_is_left_alone(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path, tmp_path: Path
) -> None:
    env = env_for(openclaw_dir, down_url())
    start = {
        "0": '{"subsystem":"gateway"}',
        "1": "starting...",
        "_meta": {"logLevelName": "INFO"},
        "time": utc_iso(clock.time() - 20, millis=True),
        "message": "starting...",
    }
    (tmp_path / "oc.log").write_text(json.dumps(start) + "\n")
    restarts = Restarts()
    outcome = watch(check(state, env, clock), state, enabled(config), env=env, clock=clock, run=restarts)
    assert outcome.action == "starting" and "logged a start 20s ago" in outcome.detail
    assert restarts.calls == []
    clock.advance(100)  # past the grace: a start that never became ready
    assert watch(check(state, env, clock), state, enabled(config), env=env, clock=clock, run=restarts).action == (
        "restarted"
    )


def test_a_config_change_that_broke_the_start_is_offered_back_and_restored_only_by_apply(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    cfg = enabled(config, max_restarts_per_hour=1, keep_configs=2)
    config_file = openclaw_dir / "openclaw.json"
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env = env_for(openclaw_dir, gw.url)
        for n in range(3):  # three healthy checks, each with another good config
            config_file.write_text(json.dumps({"gateway": {"port": int(gw.url.rsplit(":", 1)[1])}, "n": n}))
            clock.advance(60)
            assert watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=Restarts()).action == "healthy"
    good = good_configs(state)
    assert len(good) == 2 and json.loads(good[0].read_text())["n"] == 2  # the newest two kept
    outcome = break_the_config_until_it_gives_up(state, cfg, clock, openclaw_dir)
    record = json.loads((state.sub("fixes") / f"{outcome.fix_id}.json").read_text())
    assert record["actions"] == ["restore_openclaw_config"]
    assert str(good[0]) in record["fix_steps"][0]
    assert config_file.read_text() == "{ broken"  # nothing restored without a person's --apply
    (done,) = apply_fix(outcome.fix_id, config=cfg, state=state, clock=clock)
    assert json.loads(config_file.read_text())["n"] == 2
    kept = next(openclaw_dir.glob("openclaw.json.before-restore-*"))
    assert kept.read_text() == "{ broken" and str(kept) in done.undo


def test_the_watchdog_is_off_unless_enabled(home: Path, tmp_path: Path) -> None:
    """health_check.py with the default settings only looks: no watchdog line, no restart."""
    env = script_env(home, OPENCLAW_STATE_DIR=str(tmp_path / "oc"), OPENCLAW_GATEWAY_PORT=str(free_port()))
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / "health_check.py"), "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 3 and "watchdog" not in json.loads(proc.stdout)


@pytest.mark.slow
@SHARED_GATEWAY
@pytest.mark.replaces_shared_gateway
def test_a_killed_real_gateway_is_brought_back_once(
    openclaw: OpenClaw, shared_gateways: SharedGateway, tmp_path: Path, home: Path, write_config: Any
) -> None:
    """SIGKILL leaves no shutdown line: the next check finds it down and restarts it once; the check after that
    finds it live. The gateway is the shared one (its start is the expensive part: onboarding and start-up, about
    20 s of CPU). The restart command asks for the gateway as `systemctl restart` asks systemd: it leaves its
    environment where the test, standing in for the service manager, finds it, and the test starts `openclaw
    gateway run` with exactly that environment (HOME, PATH to Node: what the watchdog passes on); that gateway,
    the test's own child, is then the shared one for the tests after this one."""
    gateway = shared_gateways.get()
    openclaw_home, port = gateway.home, gateway.port
    status = openclaw_home / ".openclaw" / "skills" / "status" / "self-heal.txt"
    status_before = status.read_bytes() if status.exists() else None
    request = tmp_path / "restart-request"
    restart = tmp_path / "restart.sh"
    restart.write_text(f"#!/bin/sh\nenv -0 >{request}.tmp && mv {request}.tmp {request}\n")
    restart.chmod(0o755)
    write_config(
        f"health: {{disk_min_free_mb: 0, watchdog: {{enabled: true, restart_argv: ['{restart}'],"
        " startup_grace_s: 120}}\n"
    )
    env = {**openclaw.env(openclaw_home), "SELFHEAL_HOME": str(home)}

    def health() -> dict[str, Any]:
        proc = subprocess.run(
            [PYTHON, str(SCRIPTS / "health_check.py"), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return dict(json.loads(proc.stdout))

    try:
        assert health()["watchdog"]["action"] == "healthy"
        os.killpg(gateway.proc.pid, signal.SIGKILL)
        gateway.proc.wait(timeout=30)
        first = health()
        assert first["mode"] != "operational" and first["watchdog"]["action"] == "restarted", first
        assert request.exists(), "the watchdog did not run the restart command"
        given = dict(item.split("=", 1) for item in request.read_text().split("\0") if "=" in item)
        assert given["HOME"] == str(openclaw_home)
        shared_gateways.replace(openclaw.start_gateway(openclaw_home, port, env=given))
        second = health()  # at once: the restarted gateway is still starting
        assert second["watchdog"]["action"] in ("starting", "healthy")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if json.loads(answer.read()).get("ok") is True:
                        break
            except OSError:
                pass
            time.sleep(1)
        assert health()["watchdog"]["action"] == "healthy"
        restarts = [e for e in iter_events(ledger_files(StateRoot(home))) if e["event"] == "watchdog"]
        assert [e["status"] for e in restarts] == ["restarted"]
    finally:  # the shared gateway's status folder as this test found it
        if status_before is None:
            status.unlink(missing_ok=True)
        else:
            status.write_bytes(status_before)


# -- the kept openclaw.json is the user's own file -------------------------------------------------------------

TOKEN = "3f9a1c2b7d8e4f6a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e"


def config_with_token(config_file: Path, url: str, **extra: Any) -> bytes:
    doc = {"gateway": {"port": int(url.rsplit(":", 1)[1]), "auth": {"mode": "token", "token": TOKEN}}, **extra}
    data = (json.dumps(doc, indent=2) + "\n").encode()
    config_file.write_bytes(data)
    return data


def test_the_kept_config_is_the_users_file_byte_for_byte_and_copied_only_when_it_changes(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    """A config holding the gateway token: three healthy checks keep one copy, the file's exact bytes (0600)."""
    cfg = enabled(config)
    config_file = openclaw_dir / "openclaw.json"
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env = env_for(openclaw_dir, gw.url)
        data = config_with_token(config_file, gw.url)
        for _ in range(3):
            clock.advance(1.1)
            assert watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=Restarts()).action == "healthy"
    (kept,) = good_configs(state)
    assert kept.read_bytes() == data and TOKEN in kept.read_text()
    assert kept.stat().st_mode & 0o777 == 0o600
    assert config_changed_since_good(state, env) is None  # the live file is the kept one


def test_a_restore_puts_back_the_exact_bytes_with_the_real_token(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    cfg = enabled(config, max_restarts_per_hour=1)
    config_file = openclaw_dir / "openclaw.json"
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env = env_for(openclaw_dir, gw.url)
        data = config_with_token(config_file, gw.url)
        assert watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=Restarts()).action == "healthy"
    outcome = break_the_config_until_it_gives_up(state, cfg, clock, openclaw_dir)
    apply_fix(outcome.fix_id, config=cfg, state=state, clock=clock)
    assert config_file.read_bytes() == data  # the real token, not "***"


# -- a restart under way, a short stall --------------------------------------------------------------------------


def log_line(subsystem: str, message: str, at: float) -> str:
    return json.dumps(
        {
            "0": json.dumps({"subsystem": subsystem}),
            "1": message,
            "_meta": {"logLevelName": "INFO"},
            "time": utc_iso(at, millis=True),
            "message": message,
        }
    )


def test_a_restart_the_user_started_is_left_alone(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path, tmp_path: Path
) -> None:
    """What `openclaw gateway restart` logs (SIGUSR2, shutdown, restart mode; no `starting...`) is a restart
    under way: not restarted on top within startup_grace_s, then restarted if it never became ready."""
    env = env_for(openclaw_dir, down_url())
    t = clock.time()
    lines = [
        log_line("gateway", "gateway ready", t - 3600),
        log_line("gateway", "received SIGUSR2; restarting", t - 6.2),
        log_line("gateway/shutdown", "shutdown completed cleanly in 99ms", t - 6.1),
    ]
    log = tmp_path / "oc.log"
    log.write_text("\n".join(lines) + "\n")
    restarts = Restarts()
    cfg = enabled(config, startup_grace_s=60.0)
    outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts)
    assert outcome.action == "starting" and "logged a restart 6s ago" in outcome.detail
    restart_mode = "restart mode: in-process restart (container: use in-process restart to keep PID 1 alive)"
    log.write_text("\n".join([*lines, log_line("gateway", restart_mode, t - 6.0)]) + "\n")
    clock.advance(30)
    outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts)
    assert outcome.action == "starting" and "logged a restart 36s ago" in outcome.detail
    assert restarts.calls == []
    clock.advance(60)  # past the grace: a restart that never became ready
    assert watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts).action == "restarted"
    assert len(restarts.calls) == 1


class StallOver(FakeClock):
    """A fake clock whose first sleep (the watchdog's wait before its second probe) ends the gateway's stall."""

    def __init__(self, gateway: FakeGateway) -> None:
        super().__init__()
        self.gateway = gateway

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.gateway.routes["/healthz"] = LIVE


def test_a_gateway_live_again_on_a_second_probe_is_not_restarted(
    state: StateRoot, config: Config, openclaw_dir: Path
) -> None:
    stalled = (503, "application/json", b'{"ok":false}')
    with FakeGateway({"/healthz": stalled, "/readyz": READY}) as gw:
        clock = StallOver(gw)
        env = env_for(openclaw_dir, gw.url)
        report = check(state, env, clock)
        assert report.check("gateway").status != "ok"
        restarts = Restarts()
        outcome = watch(report, state, enabled(config), env=env, clock=clock, run=restarts)
    assert outcome.action == "healthy" and "second probe" in outcome.detail
    assert restarts.calls == [] and clock.waits == [2.5]
    assert watchdog_events(state) == []


def test_a_clock_stepped_back_does_not_hold_the_next_restart_off_for_the_whole_step(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    """A restart, then the wall clock stepped back an hour: it read "restarted -3600s ago" and stayed "starting"
    for the hour; the restart from before the step is no guide, so the next check restarts."""
    env = env_for(openclaw_dir, down_url())
    restarts = Restarts(code=1)
    cfg = enabled(config)
    assert watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts).action == "restart_failed"
    clock.advance(-3600)
    outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts)
    assert outcome.action == "restart_failed", outcome.detail
    assert len(restarts.calls) == 2


def test_a_corrupt_restart_history_is_moved_aside_and_nothing_is_restarted_that_check(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    """Not a silent reset of the hourly cap: the file is moved aside, the check says so; the next one starts afresh."""
    env = env_for(openclaw_dir, down_url())
    history = state.status_file("watchdog")
    history.parent.mkdir(exist_ok=True)
    history.write_text('{"restarts": [')
    restarts = Restarts()
    outcome = watch(check(state, env, clock), state, enabled(config), env=env, clock=clock, run=restarts)
    assert (outcome.action, restarts.calls) == ("blocked", [])
    assert "watchdog.json" in outcome.detail and list(history.parent.glob("watchdog.json.corrupt-*"))
    assert (
        watch(check(state, env, clock), state, enabled(config), env=env, clock=clock, run=restarts).action
        == "restarted"
    )


def test_a_restart_history_with_entries_that_are_no_times_keeps_the_real_ones(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    """`true`, NaN, 1e400 (infinity, as JSON reads it), a 400-digit number and a string among the restart times:
    the 400-digit one ended in an OverflowError traceback. Now each is skipped and the real restart a minute
    ago still gives the gateway its startup grace."""
    env = env_for(openclaw_dir, down_url())
    history = state.status_file("watchdog")
    history.parent.mkdir(exist_ok=True)
    odd = ["true", "NaN", "1e400", "1" + "0" * 400, '"x"']
    history.write_text(f'{{"restarts": [{", ".join(odd)}, {clock.time() - 60}]}}')
    restarts = Restarts()
    outcome = watch(check(state, env, clock), state, enabled(config), env=env, clock=clock, run=restarts)
    assert (outcome.action, restarts.calls) == ("starting", [])


def test_the_newest_good_config_stays_newest_after_the_clock_is_stepped_back(
    state: StateRoot, clock: FakeClock, openclaw_dir: Path
) -> None:
    """The copies were named by the wall clock: after a step back the new copy sorted oldest and was pruned at
    once, so the "last-known-good" offered for a restore was an older file than the one the gateway last ran."""
    env = {"OPENCLAW_STATE_DIR": str(openclaw_dir), "HOME": str(openclaw_dir.parent)}
    config_file = openclaw_dir / "openclaw.json"
    for n in range(3):
        config_file.write_text(json.dumps({"version": n}))
        keep_good_config(state, env, keep=3, now=clock.time())
        clock.advance(60)
    clock.advance(-86_400)
    config_file.write_text(json.dumps({"version": "after the step"}))
    keep_good_config(state, env, keep=3, now=clock.time())
    kept = good_configs(state)
    assert len(kept) == 3
    assert kept[0].read_bytes() == config_file.read_bytes()
    assert config_changed_since_good(state, env) is None


@pytest.mark.slow
def test_a_restart_command_that_leaves_the_gateway_running_in_the_background_returns_at_once(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path, tmp_path: Path
) -> None:
    """A restart command of the user's own (`nohup openclaw gateway run &`) exits 0 at once, but the gateway it
    starts keeps its output open: the check waited on that output for all of `restart_timeout_s` (120 s), then
    called the restart failed ("exit None"). Now it is done when the command is."""
    env = env_for(openclaw_dir, down_url())
    pid_file = tmp_path / "gateway.pid"
    argv = ["sh", "-c", f"sleep 30 & echo $! > '{pid_file}'; echo gateway started"]
    cfg = enabled(config, restart_argv=tuple(argv), restart_timeout_s=20.0)
    started = time.monotonic()
    try:
        outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock)
    finally:
        if pid_file.exists():  # the "gateway" this test's command started
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert time.monotonic() - started < 10
    assert outcome.action == "restarted", outcome.detail
    (event,) = watchdog_events(state)
    assert event["status"] == "restarted"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["/nonexistent/restart-gateway"], "No such file or directory"),
        (["sh", "-c", 'w=disabled; echo "Gateway service $w." >&2; exit 1'], "Gateway service disabled."),
    ],
)
def test_a_restart_that_fails_says_why(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path, argv: list[str], said: str
) -> None:
    """ "ran /nonexistent/restart-gateway (exit None)" told nobody what went wrong; the reason is in the line now."""
    env = env_for(openclaw_dir, down_url())
    outcome = watch(check(state, env, clock), state, enabled(config, restart_argv=tuple(argv)), env=env, clock=clock)
    assert outcome.action == "restart_failed"
    assert said in outcome.detail and "exit None" not in outcome.detail


@pytest.mark.parametrize("log", ["gone", "fifo"])
def test_a_log_gone_or_no_file_where_openclaws_log_is_does_not_stop_the_watchdog(
    state: StateRoot,
    config: Config,
    clock: FakeClock,
    openclaw_dir: Path,
    tmp_path: Path,
    log: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watchdog reads OpenClaw's newest log for a start in progress. A log rotated away between being listed
    and being looked at raised FileNotFoundError (a traceback in the health check); a FIFO listed as a log
    must not block the read. Neither is a log: the gateway, down, is restarted as if nothing was logged."""
    import threading

    from selfheal.observe import openclaw_logs

    listed = tmp_path / f"openclaw-{log}.log"
    if log == "fifo":
        os.mkfifo(listed)
    monkeypatch.setattr(openclaw_logs, "discover", lambda env, **_: [listed])  # as listed a moment before
    env = env_for(openclaw_dir, down_url())
    restarts = Restarts()
    outcomes: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcomes.append(
            watch(check(state, env, clock), state, enabled(config), env=env, clock=clock, run=restarts)
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the read it is stuck in, so the thread can end
        with open(os.open(listed, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
    assert outcomes and outcomes[0].action == "restarted", "the watchdog hung or raised"
    assert len(restarts.calls) == 1


# -- the restart command's output: logs/gateway-restart.out, never a pipe -----------------------------------------


def restart_output(state: StateRoot) -> Path:
    return state.root / "logs" / "gateway-restart.out"


def wait_for_line(path: Path, wanted: str, within_s: float = 20.0) -> str:
    """The file's text once it holds the line `wanted` (a handshake with a process that prints), else its text."""
    deadline = time.monotonic() + within_s
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if wanted in text.splitlines():
            break
        time.sleep(0.05)
    return text


@pytest.mark.slow
def test_a_gateway_the_restart_command_leaves_in_the_background_lives_on_and_its_lines_reach_the_file(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path, tmp_path: Path
) -> None:
    """`nohup openclaw gateway run &` in a script: the gateway inherited the restart command's output, a pipe the
    check closed when the command exited, and died of SIGPIPE at its next line (Node dies on EPIPE). The output is
    a file now: the gateway lives on, and what it prints after the restart lands there."""
    env = env_for(openclaw_dir, down_url())
    pid_file = tmp_path / "gateway.pid"
    gateway = tmp_path / "gateway.sh"
    gateway.write_text(f"echo $$ > '{pid_file}'\ni=0\nwhile :; do i=$((i+1)); echo tick $i; sleep 0.1; done\n")
    argv = ["sh", "-c", f"nohup sh '{gateway}' & echo gateway started"]
    cfg = enabled(config, restart_argv=tuple(argv), restart_timeout_s=20.0)
    try:
        outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock)
        assert outcome.action == "restarted", outcome.detail
        text = wait_for_line(restart_output(state), "tick 20")  # printed two seconds after the restart returned
    finally:
        if pid_file.exists():  # the "gateway" this test's command started
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert "gateway started" in text.splitlines()
    assert "tick 20" in text.splitlines(), text[-300:]


def test_the_restart_output_file_holds_only_the_latest_restart(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path, tmp_path: Path
) -> None:
    """Each restart empties the file first: it holds that restart's output, not every restart's since install."""
    env = env_for(openclaw_dir, down_url())
    count = tmp_path / "count"
    argv = ["sh", "-c", f"echo x >> '{count}'; echo restart number $(wc -l < '{count}')"]
    cfg = enabled(config, restart_argv=tuple(argv))
    assert watch(check(state, env, clock), state, cfg, env=env, clock=clock).action == "restarted"
    assert restart_output(state).read_text().split() == ["restart", "number", "1"]
    clock.advance(600)  # past the grace and the backoff
    assert watch(check(state, env, clock), state, cfg, env=env, clock=clock).action == "restarted"
    assert restart_output(state).read_text().split() == ["restart", "number", "2"]
    assert restart_output(state).stat().st_mode & 0o777 == 0o600


def test_a_restart_stopped_at_its_timeout_keeps_what_it_printed(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path
) -> None:
    """A restart command that hangs is killed after restart_timeout_s; what it printed before is kept for the
    person (watchdog.json, the fix record), not just "timed out"."""
    env = env_for(openclaw_dir, down_url())
    argv = ["sh", "-c", 'w=manager; echo "waiting for the service $w"; exec sleep 30']
    cfg = enabled(config, restart_argv=tuple(argv), restart_timeout_s=0.5)
    outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock)
    assert outcome.action == "restart_failed" and "stopped after 0.5s" in outcome.detail
    kept = json.loads((state.root / "status" / "watchdog.json").read_text())
    assert "waiting for the service manager" in kept["last_output"]


@pytest.mark.parametrize("gateway", ["live", "down"])
def test_a_restart_output_file_over_its_cap_is_emptied_at_the_next_check(
    state: StateRoot, config: Config, clock: FakeClock, openclaw_dir: Path, gateway: str
) -> None:
    """A gateway left printing into logs/gateway-restart.out for weeks would fill the disk: a check that reaches the
    watchdog (live or down) empties a file past 16 MiB; one under it is left as it is."""
    from selfheal.heal import watchdog

    out = restart_output(state)
    out.write_bytes(b"tick\n")
    os.truncate(out, watchdog.RESTART_OUTPUT_CAP + 1)  # sparse: no 16 MiB written
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env = env_for(openclaw_dir, gw.url if gateway == "live" else down_url())
        cfg = enabled(config, startup_grace_s=90.0)
        restarts = Restarts()
        clock.advance(10)
        if gateway == "down":  # a restart just now: this check only looks ("starting"), it runs nothing
            watchdog_json = state.root / "status" / "watchdog.json"
            watchdog_json.write_text(json.dumps({"restarts": [clock.time() - 5]}))
        outcome = watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts)
        assert outcome.action == ("healthy" if gateway == "live" else "starting"), outcome.detail
        assert restarts.calls == []
        assert out.stat().st_size == 0
        out.write_bytes(b"tick\n" * 10)
        watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=restarts)
    assert out.read_bytes() == b"tick\n" * 10
