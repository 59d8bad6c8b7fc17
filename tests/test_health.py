"""The health check's library: each check against real files, real processes and real HTTP servers on 127.0.0.1,
the mode they add up to, and what one run writes. Time is a FakeClock; nothing sleeps."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers.fake_gateway import LIVE, READY, FakeGateway, Route, drip_gateway
from helpers.openclaw import free_port

from conftest import ROOT, call_script
from selfheal.core.breaker import Breakers
from selfheal.core.config import load_config
from selfheal.core.runs import RunRecord
from selfheal.errors import ConfigError
from selfheal.models.output import schema_problems
from selfheal.observe import health
from selfheal.observe.health import DEGRADED, DOWN, FAIL, OK, OPERATIONAL, SKIP, WARN, Check, run_health_check
from selfheal.state.root import StateRoot, write_json
from selfheal.tasks.tree import PROCESSING, Task, TaskStore
from selfheal.testing import FakeClock


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    """A live, ready gateway."""
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        yield gw


@pytest.fixture
def env(tmp_path: Path, home: Path) -> dict[str, str]:
    """What the check sees: this test's state root, an OpenClaw folder of its own, a PATH with no nvidia-smi."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "openclaw").mkdir()
    return {
        "SELFHEAL_HOME": str(home),
        "OPENCLAW_STATE_DIR": str(tmp_path / "openclaw"),
        "HOME": str(tmp_path),
        "PATH": str(tmp_path / "bin"),
    }


@pytest.fixture
def skills_status(env: dict[str, str]) -> Path:
    """Other skills' status folder (~/.openclaw/skills/status)."""
    folder = Path(env["OPENCLAW_STATE_DIR"]) / "skills" / "status"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def settings_for(write_config: Callable[[str], Path]) -> Callable[..., None]:
    """Point the check at a gateway URL; no disk minimum unless asked (this machine's free space is not the test's)."""

    def configure(url: str, disk_min_free_mb: int = 0) -> None:
        write_config(f"health:\n  gateway_url: {url}\n  disk_min_free_mb: {disk_min_free_mb}\n")

    return configure


def put(folder: Path, name: str, text: str, clock: FakeClock, age_s: float = 0.0) -> Path:
    """A status file last modified `age_s` before the fake clock's now."""
    path = folder / name
    path.write_text(text)
    stamp = clock.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def check(report: health.Report, name: str) -> Check:
    found = report.check(name)
    assert found is not None, name
    return found


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- the gateway --------------------------------------------------------------------------------------------


def settings(url: str, **changes: Any) -> health.Settings:
    base = health.Settings(url, "test", 2.0, (), 3600.0, 600.0, 0, 0)
    return base._replace(**changes)


def test_a_gateway_answering_openclaws_json_is_live_and_ready(gateway: FakeGateway) -> None:
    """200 with {"ok": true} on /healthz is live; {"ready": true} on /readyz is ready."""
    live, ready = health.check_gateway(settings(gateway.url))
    assert (live.status, ready.status) == (OK, OK)
    assert live.detail.startswith(f"live at {gateway.url}")
    assert gateway.paths == ["/healthz", "/readyz"]


def test_a_page_answering_200_with_html_is_not_a_healthy_gateway() -> None:
    """What answers 200 on every path with an HTML page is not OpenClaw's health endpoint: the check fails."""
    with FakeGateway({}) as other:
        live, ready = health.check_gateway(settings(other.url))
    assert live.status == FAIL
    assert "HTTP 200 with text/html" in live.detail and "not OpenClaw's JSON" in live.detail
    assert ready.status == SKIP


def test_nothing_listening_fails_as_connection_refused() -> None:
    url = closed_url()
    live, ready = health.check_gateway(settings(url))
    assert live.status == FAIL and "connection refused" in live.detail and url in live.detail
    assert ready.status == SKIP


@pytest.mark.parametrize(
    ("healthz", "expected"),
    [
        ((200, "application/json", b'{"ok":false,"status":"draining"}'), '"ok": false'),
        ((503, "application/json", b'{"ok":true}'), "HTTP 503"),
        ((200, "application/json", b"[1, 2]"), "not OpenClaw's JSON"),
        ((200, "application/json", b"not json"), "not OpenClaw's JSON"),
    ],
)
def test_healthz_answers_other_than_ok_true_fail(healthz: Route, expected: str) -> None:
    with FakeGateway({"/healthz": healthz}) as gw:
        (live, _) = health.check_gateway(settings(gw.url))
    assert live.status == FAIL and expected in live.detail


def test_a_live_gateway_that_is_not_ready_warns_with_what_fails() -> None:
    """/readyz answering 503 {"ready": false, "failing": [...]} is reported as readiness, not liveness."""
    starting = (503, "application/json", b'{"ready":false,"failing":["startup-sidecars"],"uptimeMs":517}')
    with FakeGateway({"/healthz": LIVE, "/readyz": starting}) as gw:
        live, ready = health.check_gateway(settings(gw.url))
    assert live.status == OK
    assert ready.status == WARN and ready.detail == "not ready (HTTP 503): failing: startup-sidecars"


def test_a_gateway_that_accepts_but_never_answers_fails_after_the_timeout() -> None:
    """A hung gateway is down, found within the configured timeout (0.2 s here), not after a TCP default."""
    with socketserver_that_never_answers() as url:
        live, _ = health.check_gateway(settings(url, timeout_s=0.2))
    assert live.status == FAIL and "no answer within 0.2 s" in live.detail


def test_a_gateway_that_drips_its_answer_fails_at_the_timeout_for_the_whole_request() -> None:
    """A valid answer sent a byte every 0.05 s (about 5 s in all) never trips a per-read timeout: the timeout
    (0.4 s here) bounds the whole request, connect, send and read together."""
    with drip_gateway(every_s=0.05) as url:
        started = time.monotonic()
        live, _ = health.check_gateway(settings(url, timeout_s=0.4))
        took = time.monotonic() - started
    assert live.status == FAIL and "no answer within 0.4 s" in live.detail, live.detail
    assert took < 1.0


@contextlib.contextmanager
def socketserver_that_never_answers() -> Iterator[str]:
    """A port whose connections complete in the kernel's backlog and are never read or answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- where the gateway is -----------------------------------------------------------------------------------


def write_openclaw_json(env: Mapping[str, str], text: str) -> Path:
    path = Path(env["OPENCLAW_STATE_DIR"]) / "openclaw.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("env_port", "json_text", "user_url", "expected"),
    [
        ("5555", '{"gateway": {"port": 6666}}', None, ("http://127.0.0.1:5555", "OPENCLAW_GATEWAY_PORT")),
        (None, '// JSON5\n{"gateway": {"port": 6666,},}', None, ("http://127.0.0.1:6666", "gateway.port in")),
        (None, '{"logging": {}}', None, ("http://127.0.0.1:18789", "OpenClaw's default port")),
        (
            "5555",
            '{"gateway": {"port": 6666}}',
            "http://10.0.0.2:7000/",
            ("http://10.0.0.2:7000", "health.gateway_url"),
        ),
    ],
)
def test_the_gateway_is_found_in_openclaws_order_of_precedence(
    env: dict[str, str],
    write_config: Callable[[str], Path],
    env_port: str | None,
    json_text: str,
    user_url: str | None,
    expected: tuple[str, str],
) -> None:
    """health.gateway_url, else OPENCLAW_GATEWAY_PORT, else gateway.port in openclaw.json, else 18789."""
    write_openclaw_json(env, json_text)
    if env_port:
        env["OPENCLAW_GATEWAY_PORT"] = env_port
    if user_url:
        write_config(f"health: {{gateway_url: '{user_url}'}}\n")
    url, source = health.gateway_url(load_config(env=env), env)
    assert url == expected[0] and source.startswith(expected[1])


def test_a_bad_gateway_port_names_where_it_came_from(env: dict[str, str]) -> None:
    path = write_openclaw_json(env, '{"gateway": {"port": "eighty"}}')
    with pytest.raises(ConfigError, match=rf"{path}: gateway.port: must be a TCP port number .*got 'eighty'"):
        health.gateway_url(load_config(env=env), env)
    env["OPENCLAW_GATEWAY_PORT"] = "70000"
    with pytest.raises(ConfigError, match=r"environment: OPENCLAW_GATEWAY_PORT: .* got '70000'"):
        health.gateway_url(load_config(env=env), env)


def test_settings_are_reused_until_one_of_their_inputs_changes(
    env: dict[str, str], write_config: Callable[[str], Path]
) -> None:
    """The settings kept in health.json are used while skill.yaml, config.yaml, openclaw.json and the
    environment are unchanged; changing any of them loads (and validates) everything again."""
    config_file = write_config("health: {status_max_age_minutes: 30}\n")
    write_openclaw_json(env, '{"gateway": {"port": 6666}}')
    first, inputs, loaded = health.resolve_settings(env, None)
    assert loaded is not None and first.status_max_age_s == 1800
    previous = {"settings": first.to_json(), "config_inputs": inputs}

    again, _, loaded = health.resolve_settings(env, previous)
    assert loaded is None and again == first

    config_file.write_text("health: {status_max_age_minutes: 45}\n")
    changed, _, loaded = health.resolve_settings(env, previous)
    assert loaded is not None and changed.status_max_age_s == 2700

    _, inputs, _ = health.resolve_settings(env, previous)
    previous = {"settings": changed.to_json(), "config_inputs": inputs}
    write_openclaw_json(env, '{"gateway": {"port": 7777}}')
    moved, _, loaded = health.resolve_settings(env, previous)
    assert loaded is not None and moved.gateway_url == "http://127.0.0.1:7777"

    env["OPENCLAW_GATEWAY_PORT"] = "8888"
    by_env, _, loaded = health.resolve_settings(env, previous)
    assert loaded is not None and by_env.gateway_url == "http://127.0.0.1:8888"


def test_kept_settings_of_another_shape_are_not_trusted(env: dict[str, str]) -> None:
    """A health.json written by another version (a setting missing) makes the run load the settings afresh."""
    settings, inputs, _ = health.resolve_settings(env, None)
    older = {k: v for k, v in settings.to_json().items() if k != "stuck_after_s"}
    again, _, loaded = health.resolve_settings(env, {"settings": older, "config_inputs": inputs})
    assert loaded is not None and again == settings


def test_a_bad_value_is_reported_on_the_first_run_after_the_edit(
    env: dict[str, str], state: StateRoot, write_config: Callable[[str], Path], clock: FakeClock
) -> None:
    """A warm run reads no YAML, but an edit invalidates what it kept: the bad value is named at once."""
    write_config("health: {disk_min_free_mb: 0}\n")
    run_health_check(state, env=env, clock=clock)
    config_file = write_config("health: {disk_min_free_mb: -5}\n")
    with pytest.raises(ConfigError) as caught:
        run_health_check(state, env=env, clock=clock)
    assert str(caught.value) == f"{config_file}:1:10: health.disk_min_free_mb: must be >= 0, got -5"


# -- status files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status=success,timestamp=Sat Mar 1 01:09:00 CST 2026\n",
         {"status": "success", "timestamp": "Sat Mar 1 01:09:00 CST 2026"}),
        ("posts=4,account=en,last_run=Sat Mar 1\n", {"posts": "4", "account": "en", "last_run": "Sat Mar 1"}),
        ("# written by cron\nstatus = ok\n\nnote=a, b and c\n", {"status": "ok", "note": "a, b and c"}),
        ("url=http://x/?a=1,b=2\n", {"url": "http://x/?a=1", "b": "2"}),
        ("no pairs here\n", {}),
    ],
)  # fmt: skip
def test_status_files_are_read_as_key_value_pairs_split_by_lines_and_commas(
    text: str, expected: dict[str, str]
) -> None:
    """The third source document's format: `status=success,timestamp=$(date)` on one line."""
    assert health.parse_key_values(text) == expected


def test_fresh_status_files_are_ok_and_count_as_signs_of_life(
    state: StateRoot, skills_status: Path, clock: FakeClock
) -> None:
    put(skills_status, "daily-memory.txt", "status=success,timestamp=now\n", clock, age_s=120)
    put(skills_status, "tiktok-poster.json", '{"posts": 4}', clock, age_s=59 * 60)
    put(state.sub("status"), "nightly.json", '{"status": "ok"}', clock, age_s=5)
    result, fresh = health.check_status_files(state.sub("status"), [skills_status], 3600, clock.time())
    assert (result.status, fresh) == (OK, 2)  # self-heal's own status/ is read, but is not another skill's life
    assert result.detail == "3 status file(s), all updated within 60 min (newest 5 s ago)"


def test_a_status_file_not_updated_within_the_window_is_stale(
    state: StateRoot, skills_status: Path, clock: FakeClock
) -> None:
    put(skills_status, "daily-memory.txt", "status=success\n", clock, age_s=61 * 60)
    put(skills_status, "fresh.txt", "status=success\n", clock, age_s=60)
    result, fresh = health.check_status_files(state.sub("status"), [skills_status], 3600, clock.time())
    assert (result.status, fresh) == (WARN, 1)
    assert result.detail == "1 of 2 stale (not updated for over 60 min): daily-memory.txt (61 min)"
    assert result.data["stale"] == [{"file": str(skills_status / "daily-memory.txt"), "age_s": 3660.0}]


def test_a_status_file_that_reports_a_failure_warns(state: StateRoot, skills_status: Path, clock: FakeClock) -> None:
    put(skills_status, "exporter.txt", "status=error,timestamp=now\n", clock)
    put(skills_status, "poster.json", '{"ok": false, "error": "token expired"}', clock)
    put(skills_status, "fine.txt", "status=success\n", clock)
    result, fresh = health.check_status_files(state.sub("status"), [skills_status], 3600, clock.time())
    assert (result.status, fresh) == (WARN, 3)
    assert result.detail == "failure reported by exporter.txt (status=error), poster.json (ok=false)"


def test_unreadable_status_files_are_named_and_left_where_they_are(
    state: StateRoot, skills_status: Path, clock: FakeClock
) -> None:
    """A broken status file belongs to another skill: it is reported by name, never moved or changed."""
    bad_json = put(skills_status, "a.json", "{not json", clock)
    binary = skills_status / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00status")
    prose = put(skills_status, "c.txt", "all good today\n", clock)
    result, _ = health.check_status_files(state.sub("status"), [skills_status], 3600, clock.time())
    assert result.status == WARN
    problems = {Path(u["file"]).name: u["problem"] for u in result.data["unreadable"]}
    assert problems["a.json"].startswith("is not valid JSON")
    assert problems == {"a.json": problems["a.json"], "b.txt": "is not UTF-8 text", "c.txt": "has no key=value lines"}
    assert bad_json.read_text() == "{not json" and binary.exists() and prose.exists()
    assert sorted(p.name for p in skills_status.iterdir()) == ["a.json", "b.txt", "c.txt"]


def test_a_status_file_swapped_for_a_fifo_after_the_listing_is_named_not_waited_on(tmp_path: Path) -> None:
    """The listing saw a file; by the time it is read, another skill's folder holds a FIFO there with no writer:
    the cron check names it and goes on (a plain open() waited for a writer, for good)."""
    import threading

    fifo = tmp_path / "shop.txt"
    os.mkfifo(fifo)
    found: list[tuple[dict[str, Any], str | None]] = []
    reader = threading.Thread(target=lambda: found.append(health.read_status_file(str(fifo))), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # let the blocked open go, so the test ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
        pytest.fail("read_status_file waited on a FIFO for a writer")
    assert found == [({}, "is a FIFO (named pipe), not a status file")]


def test_health_json_and_temporary_files_are_not_status_files(
    state: StateRoot, skills_status: Path, clock: FakeClock
) -> None:
    put(state.sub("status"), "health.json", '{"mode": "down"}', clock, age_s=10 * 3600)
    put(state.sub("status"), ".nightly.json.123.tmp", "{", clock)
    put(skills_status, ".poster.json", "{", clock)  # hidden: a writer's work in progress
    put(skills_status, "notes.md", "status=error", clock)
    result, fresh = health.check_status_files(state.sub("status"), [skills_status], 3600, clock.time())
    assert (result.status, fresh) == (SKIP, 0)


# -- runs in progress -------------------------------------------------------------------------------------------


def live_run(state: StateRoot, clock: FakeClock, run_id: str = "nightly-1") -> RunRecord:
    """A run record whose supervisor is this test process (alive), as retry_run.py writes it."""
    record = RunRecord(state, run_id=run_id, task="nightly", target=None, argv=["report"], heartbeat_s=10, clock=clock)
    record.start()
    record.attempt(1)
    return record


def runs_check(state: StateRoot, clock: FakeClock) -> tuple[Check, int]:
    return health.check_runs(state, 600.0, clock.time())


def test_a_run_that_keeps_beating_and_writing_is_alive(state: StateRoot, clock: FakeClock) -> None:
    record = live_run(state, clock)
    for _ in range(120):  # 20 minutes of output, a heartbeat every 10 s
        clock.advance(10)
        record.tick(last_output_ts=clock.time())
    result, live = runs_check(state, clock)
    assert (result.status, live, result.detail) == (OK, 1, "1 run(s) in progress, all moving")


def test_a_run_whose_heartbeat_stopped_is_stuck(state: StateRoot, clock: FakeClock) -> None:
    live_run(state, clock)
    clock.advance(601)
    result, live = runs_check(state, clock)
    assert (result.status, live) == (WARN, 0)
    assert result.detail == "1 of 1 run(s) in progress not moving: nightly stuck: no heartbeat for 10 min"


def test_a_run_that_beats_but_prints_nothing_is_stuck(state: StateRoot, clock: FakeClock) -> None:
    record = live_run(state, clock)
    for _ in range(61):
        clock.advance(10)
        record.tick(last_output_ts=None)
    result, _ = runs_check(state, clock)
    assert result.status == WARN and "nightly stuck: no output for 10 min (attempt 1)" in result.detail


def test_a_run_in_a_long_retry_wait_is_not_stuck_until_the_wait_is_long_over(
    state: StateRoot, clock: FakeClock
) -> None:
    """A retry wait writes no heartbeats; the record says when it ends, and only after that can it be late."""
    record = live_run(state, clock)
    record.waiting(900)
    clock.advance(899)
    assert runs_check(state, clock)[0].status == OK
    clock.advance(1 + 600 + 1)
    result, _ = runs_check(state, clock)
    assert result.status == WARN and "its retry wait ended 10 min ago and no attempt started" in result.detail


def test_a_run_whose_supervisor_is_gone_is_dead(state: StateRoot, clock: FakeClock) -> None:
    """A real process that ran the run and exited: its record still says running, so the run died."""
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = {"pid": supervisor.pid, "create_time": psutil.Process(supervisor.pid).create_time()}
    live_run(state, clock)
    path = state.run_file("nightly-1")
    write_json(path, {**json.loads(path.read_text()), "supervisor": identity})
    assert runs_check(state, clock)[0].status == OK
    supervisor.kill()
    supervisor.wait()
    result, live = runs_check(state, clock)
    assert (result.status, live) == (WARN, 0)
    assert f"nightly dead: its supervisor (pid {supervisor.pid}) is gone" in result.detail


def test_finished_runs_are_not_in_progress(state: StateRoot, clock: FakeClock) -> None:
    record = live_run(state, clock)
    record.finish("succeeded", 0)
    clock.advance(86400)
    assert runs_check(state, clock) == (
        Check("runs", OK, "no run in progress", {"running": 0, "limit_s": 600.0, "problems": []}),
        0,
    )


def test_a_stuck_run_among_finished_ones_is_still_found(state: StateRoot, clock: FakeClock) -> None:
    """Finished records are told apart by their bytes alone (state.root.top_level_is, as list_runs does);
    a run in progress among them is read and judged."""
    from selfheal.state import runs

    assert health._FINISHED == runs.FINISHED
    for i in range(3):
        live_run(state, clock, run_id=f"old-{i}").finish("succeeded", 0)
    live_run(state, clock, run_id="nightly-9")
    clock.advance(601)
    result, live = runs_check(state, clock)
    assert (result.status, live, result.data["running"]) == (WARN, 0, 1)
    assert "nightly stuck: no heartbeat for 10 min" in result.detail


# -- the task tree, breakers, disk, GPU ------------------------------------------------------------------------


def test_a_stuck_task_in_the_tree_warns_and_is_left_as_it_is(state: StateRoot, clock: FakeClock, config: Any) -> None:
    """find_stuck's verdict, read-only: the task stays PROCESSING for run-next or check-stuck to act on."""
    store = TaskStore(state, config, clock)
    me = psutil.Process()
    with store.transaction() as tree:
        tree.add(Task(name="export", run={"kind": "argv", "argv": ["true"]}))
        tree.transition("export", PROCESSING)
        tree.quiet_update(
            "export",
            runner={"pid": me.pid, "create_time": me.create_time(), "host": socket.gethostname()},
            activity_ts=clock.time(),
            heartbeat_ts=clock.time(),
        )
    before = store.record("export")
    assert health.check_tasks(state, lambda: config, clock, clock.time()).status == OK
    clock.advance(601)
    result = health.check_tasks(state, lambda: config, clock, clock.time())
    assert result.status == WARN and result.detail == "1 stuck: export (no output for 10 min)"
    assert store.record("export") == before


def test_open_and_half_open_breakers_warn_and_their_files_are_not_touched(
    state: StateRoot, clock: FakeClock, config: Any
) -> None:
    breakers = Breakers(state, config.breakers, clock=clock)
    for _ in range(5):
        breakers.release(breakers.acquire("vendor-api"), ok=False, error_class="transient")
    path = state.sub("breakers") / "vendor-api.json"
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    result = health.check_breakers(state, clock.time())
    assert result.status == WARN
    assert result.detail == "vendor-api open until 2027-01-15T08:01:00Z (5 consecutive failures (transient))"
    clock.advance(61)
    result = health.check_breakers(state, clock.time())
    assert result.status == WARN and result.detail.startswith("vendor-api half-open (")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before

    breakers.reset("vendor-api")
    assert health.check_breakers(state, clock.time()) == Check(
        "breakers", OK, "1 breaker(s), all closed", {"breakers": 1, "not_closed": [], "unreadable": []}
    )


def test_less_free_disk_than_the_minimum_warns(state: StateRoot) -> None:
    free_mb = os.statvfs(state.root).f_bavail * os.statvfs(state.root).f_frsize / 2**20
    assert health.check_disk(state.root, 0).status == OK
    low = health.check_disk(state.root, int(free_mb) + 10_000)
    assert low.status == WARN and "below health.disk_min_free_mb" in low.detail


def test_the_disk_of_a_state_root_not_yet_made_is_its_parents(tmp_path: Path) -> None:
    result = health.check_disk(tmp_path / "not" / "yet", 0)
    assert result.status == OK and result.data["path"] == str(tmp_path / "not" / "yet")


def fake_nvidia_smi(env: dict[str, str], script: str) -> None:
    tool = Path(env["PATH"]) / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


@pytest.mark.parametrize(
    ("script", "status", "detail"),
    [
        ("echo '0, GPU-a, 512, 8192'\necho '1, GPU-b, 900, 8192'\n", WARN,
         "only 900 MiB free on the roomiest of 2 GPUs, below models.gpu_free_mb_min (1024 MiB)"),
        ("echo '0, GPU-a, 6000, 8192'\n", OK, "6000 MiB free on the GPU"),
        ("echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\nexit 9\n", WARN,
         "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it could not communicate with the driver"),
    ],
)  # fmt: skip
def test_gpu_memory_comes_from_nvidia_smi_when_it_exists(
    env: dict[str, str], script: str, status: str, detail: str
) -> None:
    assert health.check_gpu(1024, env) == Check("gpu", SKIP, "no nvidia-smi on PATH", {})
    fake_nvidia_smi(env, script)
    result = health.check_gpu(1024, env)
    assert (result.status, result.detail) == (status, detail)


def test_an_nvidia_smi_whose_child_holds_the_pipe_or_that_never_stops_printing_is_bounded(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A wrapper's child holding stdout kept the cron check waiting the whole 10 s (then a warning that it did
    not answer, and the child left running); one printing without end was held whole in memory for those 10 s,
    then read as a tail until the bound. Now the answer is read when nvidia-smi exits, what it left is stopped,
    and endless output is read no further than a cap: the check ends then, and says why."""
    pidfile = tmp_path / "child.pid"
    fake_nvidia_smi(env, f"/bin/sleep 300 &\necho $! > {pidfile}\necho '0, GPU-a, 6000, 8192'\n")
    result = health.check_gpu(1024, env)
    assert (result.status, result.detail) == (OK, "6000 MiB free on the GPU")
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the wrapper's child was left running"
        time.sleep(0.05)
    fake_nvidia_smi(env, "exec /usr/bin/yes '0, GPU-a, 6000, 8192'\n")
    before, started = psutil.Process().memory_info().rss, time.monotonic()
    result = health.check_gpu(1024, env)
    assert (result.status, result.detail) == (WARN, "nvidia-smi printed over 262144 bytes: not a reading of GPUs")
    assert time.monotonic() - started < health.GPU_QUERY_TIMEOUT_S / 2
    assert psutil.Process().memory_info().rss - before < 50 * 1024 * 1024


def test_a_hanging_nvidia_smi_is_a_warning_at_the_bound(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "GPU_QUERY_TIMEOUT_S", 0.5)
    fake_nvidia_smi(env, "exec /bin/sleep 30\n")
    assert health.check_gpu(1024, env) == Check(
        "gpu", WARN, "nvidia-smi did not answer within 0.5 s", {"tool": str(Path(env["PATH"]) / "nvidia-smi")}
    )


# -- the mode -------------------------------------------------------------------------------------------------


def test_a_live_gateway_and_no_warning_is_operational(
    env: dict[str, str], state: StateRoot, gateway: FakeGateway, settings_for: Callable[..., None], clock: FakeClock
) -> None:
    settings_for(gateway.url)
    report = run_health_check(state, env=env, clock=clock)
    assert (report.mode, report.exit_code) == (OPERATIONAL, 0)
    assert report.cron_text() == "NO_REPLY"


def test_gateway_down_with_skills_still_reporting_is_degraded_and_without_them_down(
    env: dict[str, str],
    state: StateRoot,
    skills_status: Path,
    settings_for: Callable[..., None],
    clock: FakeClock,
) -> None:
    """The third document's graceful degradation: the gateway is down but status files are still fresh."""
    settings_for(closed_url())
    put(skills_status, "daily-memory.txt", "status=success\n", clock, age_s=30 * 60)
    report = run_health_check(state, env=env, clock=clock)
    assert (report.mode, report.exit_code) == (DEGRADED, 1)
    assert report.reason.startswith("the gateway is not live but skills still work (1 fresh status file(s)")

    clock.advance(31 * 60)  # the skill stopped reporting: nothing shows work any more
    report = run_health_check(state, env=env, clock=clock)
    assert (report.mode, report.exit_code) == (DOWN, 3)
    assert check(report, "status_files").status == WARN


def test_self_heals_own_bookkeeping_is_no_sign_of_life_and_never_stale(
    env: dict[str, str],
    state: StateRoot,
    settings_for: Callable[..., None],
    clock: FakeClock,
) -> None:
    """Everything under self-heal's own status/ is ours: fresh cron_retry.json and watchdog.json (or any new
    file there) do not make a dead gateway "degraded", and one written two hours ago does not warn as stale."""
    settings_for(closed_url())
    own = state.sub("status")
    put(own, "cron_retry.json", '{"id-1": {"retries": 1}}', clock, age_s=10)
    put(own, "watchdog.json", '{"restarts": [], "last_exit": 0}', clock, age_s=20)
    put(own, "some-new-file.json", "{}", clock, age_s=30)
    report = run_health_check(state, env=env, clock=clock)
    assert (report.mode, report.exit_code) == (DOWN, 3), report.reason
    assert check(report, "status_files").data["fresh"] == 0
    clock.advance(2 * 3600)  # the gateway is back; self-heal's own files were not written since
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        settings_for(gw.url)
        report = run_health_check(state, env=env, clock=clock)
    assert (report.mode, check(report, "status_files").status) == (OPERATIONAL, OK), report.reason


def test_a_live_run_also_shows_the_skills_at_work(
    env: dict[str, str], state: StateRoot, settings_for: Callable[..., None], clock: FakeClock
) -> None:
    settings_for(closed_url())
    live_run(state, clock)
    assert run_health_check(state, env=env, clock=clock).mode == DEGRADED


@pytest.mark.parametrize("problem", ["stale status file", "stuck run", "open breaker", "low disk", "failing skill"])
def test_each_warning_turns_a_live_gateway_degraded(
    env: dict[str, str],
    state: StateRoot,
    skills_status: Path,
    gateway: FakeGateway,
    settings_for: Callable[..., None],
    clock: FakeClock,
    config: Any,
    problem: str,
) -> None:
    disk_min_free_mb = 0
    name = {"stale status file": "status_files", "failing skill": "status_files", "stuck run": "runs"}.get(problem)
    if problem == "stale status file":
        put(skills_status, "poster.txt", "status=success\n", clock, age_s=2 * 3600)
    elif problem == "failing skill":
        put(skills_status, "poster.txt", "status=failed\n", clock)
    elif problem == "stuck run":
        live_run(state, clock)
        clock.advance(601)
    elif problem == "open breaker":
        name = "breakers"
        breakers = Breakers(state, config.breakers, clock=clock)
        breakers.release(breakers.acquire("vendor-api"), ok=False, error_class="auth")
    else:
        name = "disk"
        disk_min_free_mb = 1_000_000_000
    settings_for(gateway.url, disk_min_free_mb)
    report = run_health_check(state, env=env, clock=clock)
    assert (report.mode, report.exit_code) == (DEGRADED, 1)
    assert [c.name for c in report.problems()] == [name]
    assert report.reason == f"1 check(s) warn: {name}"


def test_the_cron_summary_is_at_most_five_lines_naming_the_rest() -> None:
    checks = [Check("gateway", FAIL, "not answering")] + [
        Check(f"c{i}", WARN, f"problem {i}\nsecond line") for i in range(6)
    ]
    mode, reason = health.decide(checks, 2)
    report = health.Report(
        mode, reason, tuple(checks), 0.0, 0.0, "operational", 0.0, settings("http://x"), "/s/health.json"
    )
    lines = report.cron_text().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("self-heal health: DEGRADED: the gateway is not live but skills still work")
    assert lines[1:4] == ["gateway: not answering", "c0: problem 0 second line", "c1: problem 1 second line"]
    assert lines[4] == "and 4 more (c2, c3, c4, c5): see /s/health.json"


def test_the_cron_summary_points_at_no_health_json_it_could_not_write() -> None:
    """On a full disk health.json keeps the last run's report: the summary's last line says where the rest are
    shown instead (it said `see health.json`, which held none of them)."""
    unwritten = Check("health_file", WARN, "cannot write /s/health.json: No space left on device", {"written": False})
    checks = [Check("gateway", FAIL, "not answering"), *(Check(f"c{i}", WARN, "problem") for i in range(3)), unwritten]
    mode, reason = health.decide(checks, 0)
    report = health.Report(mode, reason, tuple(checks), 0.0, 0.0, DOWN, 0.0, settings("http://x"), "/s/health.json")
    lines = report.cron_text().splitlines()
    assert lines[4] == "and 2 more (c2, health_file): health_check.py shows them (/s/health.json could not be written)"


# -- what a run writes ------------------------------------------------------------------------------------------


def log_lines(home: Path) -> list[str]:
    log = home / "logs" / "selfheal.log"
    return [line for line in log.read_text().splitlines() if "[HEALTH]" in line] if log.exists() else []


def test_every_run_writes_health_json_and_a_mode_change_writes_one_log_line(
    env: dict[str, str],
    home: Path,
    state: StateRoot,
    skills_status: Path,
    settings_for: Callable[..., None],
    clock: FakeClock,
) -> None:
    url = closed_url()
    settings_for(url)
    put(skills_status, "daily-memory.txt", "status=success\n", clock)
    for _ in range(3):
        clock.advance(60)
        report = run_health_check(state, env=env, clock=clock)
    health_json = state.status_file("health")
    assert oct(health_json.stat().st_mode & 0o777) == "0o600"
    written = json.loads(health_json.read_text())
    assert written["mode"] == DEGRADED and written["checked_ts"] == clock.time()
    assert written["mode_since_ts"] == clock.time() - 120  # degraded since the first of the three runs
    assert report.cron_text().startswith("self-heal health: DEGRADED since 2027-01-15T08:01:00Z:")
    assert log_lines(home) == [
        "2027-01-15T08:01:00Z [HEALTH] task=- reason=degraded checks=gateway:fail",
    ]
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        settings_for(gw.url)
        clock.advance(60)
        assert run_health_check(state, env=env, clock=clock).mode == OPERATIONAL
        assert run_health_check(state, env=env, clock=clock).mode == OPERATIONAL
    assert log_lines(home)[1:] == ["2027-01-15T08:04:00Z [HEALTH] task=- reason=operational was=degraded"]


def test_every_check_the_code_can_report_is_in_the_documented_schema() -> None:
    """A consumer validating health.json against the schema must not be refused a report because it holds a
    check only some set-ups produce (fleet mode, an unwritable status file): every name the code gives a
    Check is in the schema's list."""
    source = ROOT / "scripts" / "selfheal" / "observe" / "health.py"
    named = {
        node.args[0].value
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Check"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    schema = json.loads((ROOT / "status" / "health.schema.json").read_text())
    listed = set(schema["properties"]["checks"]["items"]["properties"]["name"]["enum"])
    assert {"gateway", "tasks", "fleet", "skill_status"} <= named  # the walk finds what it looks for
    assert named - listed == set()


def test_what_a_run_writes_matches_the_documented_schemas(
    env: dict[str, str], home: Path, state: StateRoot, settings_for: Callable[..., None], clock: FakeClock
) -> None:
    """status/health.json against status/health.schema.json; the [HEALTH] event against the ledger's schema."""
    settings_for(closed_url())
    run_health_check(state, env=env, clock=clock)
    health_schema = json.loads((ROOT / "status" / "health.schema.json").read_text())
    ledger_schema = json.loads((ROOT / "status" / "ledger-event.schema.json").read_text())
    assert schema_problems(json.loads(state.status_file("health").read_text()), health_schema) == []
    (event,) = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert (event["event"], event["status"]) == ("health", DOWN)
    assert schema_problems(event, ledger_schema) == []
    assert schema_problems({**event, "status": "sideways"}, ledger_schema) != []  # the check can fail


def test_a_corrupt_health_json_is_moved_aside_reported_and_replaced(
    env: dict[str, str], home: Path, state: StateRoot, settings_for: Callable[..., None], clock: FakeClock
) -> None:
    settings_for(closed_url())
    path = state.status_file("health")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"mode": "operational", "checks": [')
    report = run_health_check(state, env=env, clock=clock)
    problem = check(report, "health_file")
    (kept,) = path.parent.glob("health.json.corrupt-*")
    assert problem.status == WARN and str(path) in problem.detail and str(kept) in problem.detail
    assert kept.read_text() == '{"mode": "operational", "checks": ['  # nothing lost
    assert json.loads(path.read_text())["mode"] == DOWN
    assert report.previous_mode is None and len(log_lines(home)) == 1


@pytest.mark.parametrize("since", ["NaN", "1e400", "true", "1" + "0" * 400, "1e300"])
def test_a_mode_since_that_is_no_time_is_taken_as_since_this_run(
    env: dict[str, str], state: StateRoot, settings_for: Callable[..., None], clock: FakeClock, since: str
) -> None:
    """health.json edited (or damaged) to `"mode_since_ts": NaN` said "DOWN since invalid-time" and wrote it
    back so on every run; `true` said since 1970, 1e300 since "far-future"; a 400-digit number was a traceback.
    What is no finite number, or a time after now, says nothing about when the mode began: it holds since this run."""
    settings_for(closed_url())
    run_health_check(state, env=env, clock=clock)
    path = state.status_file("health")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "mode_since_ts": "@"}).replace('"@"', since))
    clock.advance(60)
    report = run_health_check(state, env=env, clock=clock)
    assert (report.mode, report.mode_since_ts) == (DOWN, clock.time())
    assert json.loads(path.read_text())["mode_since_ts"] == clock.time()


def test_a_check_never_changes_what_it_looks_at(
    env: dict[str, str],
    state: StateRoot,
    skills_status: Path,
    settings_for: Callable[..., None],
    clock: FakeClock,
    config: Any,
) -> None:
    """Only status/health.json, the ledger and the log are written; every other file is as it was."""
    settings_for(closed_url())
    put(skills_status, "a.txt", "status=success\n", clock, age_s=7200)
    live_run(state, clock)
    breakers = Breakers(state, config.breakers, clock=clock)
    breakers.release(breakers.acquire("svc"), ok=False, error_class="auth")
    clock.advance(3600)
    watched = [p for p in [*state.root.rglob("*"), *skills_status.iterdir()] if p.is_file()]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in watched}
    run_health_check(state, env=env, clock=clock)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in watched if p.exists()}
    assert after == before
    new = {p.relative_to(state.root).as_posix() for p in state.root.rglob("*") if p.is_file()} - {
        p.relative_to(state.root).as_posix() for p in watched if p.is_relative_to(state.root)
    }
    assert new == {"status/health.json", "logs/selfheal.log"} | {
        p.relative_to(state.root).as_posix() for p in (state.root / "ledger").glob("*.jsonl")
    }


@pytest.mark.parametrize("root", ["a file", "/dev/null"])
def test_a_state_root_that_is_no_folder_is_reported_down_without_a_traceback(
    tmp_path: Path, env: dict[str, str], root: str
) -> None:
    """SELFHEAL_HOME naming a file (a typo in a cron line): the check says the state root cannot be used (down,
    exit 3) and reads nothing under it, each problem once. (The tasks check's listing raised NotADirectoryError:
    an internal error, exit 3 with a traceback, and no summary for cron.)"""
    path = tmp_path / "notes.txt" if root == "a file" else Path(root)
    if root == "a file":
        path.write_text("not a folder\\n")
    proc = call_script("health_check.py", "--json", home=path, env={**env, "SELFHEAL_HOME": str(path)})
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert (proc.returncode, report["mode"]) == (3, "down")
    assert report["reason"] == f"the state root cannot be used: {path} is not a folder"
    by_name = {c["name"]: c for c in report["checks"]}
    assert [by_name[n]["status"] for n in ("runs", "tasks", "breakers", "state_root")] == ["skip"] * 3 + ["fail"]
    assert [c["name"] for c in report["checks"]].count("health_file") == 1
    if root == "a file":
        assert path.read_text() == "not a folder\\n"
