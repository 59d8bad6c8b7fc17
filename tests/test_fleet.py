"""Fleet mode: several hosts share breakers (and the ledger) through one real PostgreSQL.

Hosts are simulated by SELFHEAL_HOST_ID and a state root each; the server is the session's throwaway
cluster (tests/helpers/postgres.py), started once, never skipped.
"""

from __future__ import annotations

import calendar
import contextlib
import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import psycopg
import pytest
from helpers.postgres import Cluster

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.breaker import CLOSED, OPEN, BreakerOpen, Breakers
from selfheal.core.config import Config, StoreSettings, load_config, mask_url_password
from selfheal.core.fleet import down_reason
from selfheal.core.ledger import Ledger
from selfheal.errors import ConfigError
from selfheal.state import pg
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock

HELPERS = Path(__file__).resolve().parent / "helpers"

if TYPE_CHECKING:
    from helpers.postgres import External


def host(config: Config, name: str, tmp_path: Path, clock: FakeClock) -> Breakers:
    """The breakers of one simulated host: its own state root, the fleet's database."""
    store = dataclasses.replace(config.store, host_id=name)
    return Breakers(StateRoot(tmp_path / name).ensure(), config.breakers, clock=clock, store=store)


def fail(b: Breakers, target: str = "qwen", times: int = 1) -> None:
    for _ in range(times):
        b.release(b.acquire(target), ok=False, error_class="transient")


# -- settings ---------------------------------------------------------------------------------------------


def test_the_database_url_comes_from_the_environment_or_config(
    fleet_url: str, write_config: Callable[[str], Path]
) -> None:
    """SELFHEAL_DATABASE_URL turns fleet mode on; SELFHEAL_HOST_ID names the host."""
    assert load_config().store.url == fleet_url
    assert load_config(env={"SELFHEAL_HOST_ID": "box-2", "SELFHEAL_HOME": "/nonexistent"}).store.host_id == "box-2"
    assert load_config(env={"SELFHEAL_HOME": "/nonexistent"}).store.url is None


@pytest.mark.parametrize(
    "password", ["hunter2secret", "hunter/2secret", "hunter@2secret", "hunter 2secret", "hunter?2secret"]
)
def test_a_password_in_the_config_file_is_refused_and_not_repeated(
    write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    """A password belongs in the environment: config.yaml's url with one stops the load, masked in the message.
    One holding an unescaped / passed as no password at all (the user info was read only up to the first /),
    one with @ or a space was shown in the message, and so was one with a ? (the mask stopped at it)."""
    write_config(f"store: {{url: 'postgresql://selfheal:{password}@db.example/selfheal'}}\n")
    with pytest.raises(ConfigError) as err:
        load_config()
    assert "must not hold a password" in str(err.value) or "must be a postgresql:// URL" in str(err.value)
    assert not [piece for piece in password.replace("/", " ").replace("@", " ").split() if piece in str(err.value)]
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", "mysql://db.example/x")
    write_config("{}\n")
    with pytest.raises(ConfigError, match="SELFHEAL_DATABASE_URL: must be a postgresql:// URL"):
        load_config()


SECRET = "Zq9s3cretPW"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://selfheal:pa?{SECRET}@127.0.0.1:9/selfheal",  # a ?: config's mask stopped at it
        f"postgresql://selfheal@127.0.0.1:9/selfheal?password='x {SECRET}'",  # quoted, a space: config's showed it
        f"postgresql://selfheal@127.0.0.1:9/selfheal?password=ab&{SECRET}",  # an unescaped &: libpq repeats the rest
        f"postgresql://selfheal:pa@{SECRET}@127.0.0.1:9/selfheal",  # an unescaped @: libpq takes the rest as the host
        f"postgresql://selfheal:pa/{SECRET}@127.0.0.1:9/selfheal",
        f"postgresql://selfheal:pa {SECRET}@127.0.0.1:9/selfheal",
    ],
)
def test_no_piece_of_a_database_urls_password_is_shown(url: str) -> None:
    """The URL as messages show it (core's and state's names for the one masker) and libpq's own message about
    it hold no piece of its password, however it is broken."""
    with pytest.raises(pg.DatabaseUnavailable) as err, pg.Database(url, "box-1", connect_timeout_s=2).connection():
        pass
    shown = {"libpq": str(err.value), "state": pg.mask_url(url), "core": mask_url_password(url)}
    assert {where: text for where, text in shown.items() if SECRET in text} == {}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://selfheal:pw123@db.example:5432/selfheal?sslmode=require",
            "postgresql://selfheal:***@db.example:5432/selfheal?sslmode=require",
        ),
        (  # state's mask took the options after the password with it
            "postgresql://selfheal@db.example:5432/selfheal?password=pw123&sslmode=require",
            "postgresql://selfheal@db.example:5432/selfheal?password=***&sslmode=require",
        ),
        (  # an @ in the query: state's mask took the port and the word "password" for pieces of a password
            "postgresql://selfheal@db.example:5432/selfheal?password=pw@123",
            "postgresql://selfheal@db.example:5432/selfheal?password=***",
        ),
    ],
)
def test_a_masked_database_url_shows_all_but_the_password(url: str, shown: str) -> None:
    """The masked URL still says which server, port, database and options: only the password is gone."""
    assert pg.mask_url(url) == shown
    assert mask_url_password(url) == shown


def test_single_host_mode_never_imports_psycopg(home: Path) -> None:
    """Without a database URL, the breaker module and the cron health check leave psycopg unloaded."""
    code = (
        "import runpy, sys\n"
        "import selfheal.core.breaker, selfheal.core.ledger\n"
        f"sys.argv = ['health_check.py', '--cron']\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPTS / 'health_check.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('PSYCOPG=%s\\n' % any(m.split('.')[0] == 'psycopg' for m in sys.modules))\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code], env=script_env(home, PYTHONPATH=str(SCRIPTS)), capture_output=True, text=True, check=False
    )
    assert "PSYCOPG=False" in proc.stderr, proc.stderr


# -- the schema -------------------------------------------------------------------------------------------


def test_the_schema_is_created_once_and_versioned(fleet_url: str) -> None:
    """The first connection migrates an empty database; later ones find it at the current version."""
    with psycopg.connect(fleet_url, autocommit=True) as conn:
        assert pg.schema_version(conn) == 0
        assert pg.migrate(conn) == 0
        assert pg.migrate(conn) == pg.SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM selfheal_schema").fetchone() == (pg.SCHEMA_VERSION,)


def test_a_newer_schema_is_refused(fleet_url: str) -> None:
    """A database migrated by a newer self-heal is not written by an older one."""
    with psycopg.connect(fleet_url, autocommit=True) as conn:
        pg.migrate(conn)
        conn.execute("INSERT INTO selfheal_schema (version) VALUES (%s)", (pg.SCHEMA_VERSION + 1,))
    db = pg.Database(fleet_url, "h1")
    with pytest.raises(pg.DatabaseUnavailable, match="newer than this self-heal"), db.connection():
        pass


# -- shared breakers --------------------------------------------------------------------------------------


def test_a_breaker_opened_by_one_host_refuses_the_others(fleet_url: str, tmp_path: Path, clock: FakeClock) -> None:
    """Five failures seen by box-1 open the target's breaker for box-2 and box-3 too."""
    config = load_config()
    boxes = [host(config, f"box-{n}", tmp_path, clock) for n in (1, 2, 3)]
    fail(boxes[0], times=5)
    for box in boxes[1:]:
        with pytest.raises(BreakerOpen, match="is open"):
            box.acquire("qwen")
        assert box.status("qwen")["state"] == OPEN
    assert boxes[2].targets() == ["qwen"]


def test_failures_from_several_hosts_add_up(fleet_url: str, tmp_path: Path, clock: FakeClock) -> None:
    """Two failures on each of three hosts are six in a row for the fleet: the breaker opens."""
    config = load_config()
    boxes = [host(config, f"box-{n}", tmp_path, clock) for n in (1, 2, 3)]
    for box in boxes[:2]:
        fail(box, times=2)
    assert boxes[2].status("qwen")["state"] == CLOSED
    fail(boxes[2], times=1)
    with pytest.raises(BreakerOpen):
        boxes[0].acquire("qwen")


def test_another_hosts_probe_holds_the_slot_until_it_expires(fleet_url: str, tmp_path: Path, clock: FakeClock) -> None:
    """A probe taken by a host that then went silent blocks other probes for store.remote_permit_s, no longer."""
    config = load_config()
    box1, box2 = host(config, "box-1", tmp_path, clock), host(config, "box-2", tmp_path, clock)
    fail(box1, times=5)
    clock.advance(config.breakers.open_s)
    probe = box2.acquire("qwen")  # box-2 probes, then its host dies
    assert probe.probe and probe.shared
    with pytest.raises(BreakerOpen, match="a probe is already testing it"):
        box1.acquire("qwen")
    clock.advance(config.store.remote_permit_s + 1)
    assert box1.acquire("qwen").probe


def test_a_permit_held_on_a_machine_cloned_under_the_same_host_id_still_counts(
    fleet_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines speaking as one host id (cloned, sharing the hostname): the clone looked its twin's permit
    up in its own process table, found no such process, and forgot it, so more requests went to a failing
    target than the breaker allows. A fleet permit carries its machine's boot: one of another boot lasts
    store.remote_permit_s, as another host's does."""
    from selfheal.state import runs

    config = load_config()
    box = host(config, "box", tmp_path, clock)
    fail(box, times=4)  # four failures in a row: one request more may be in flight
    box.acquire("qwen")
    monkeypatch.setattr(runs, "_boot", ["a-machine-cloned-from-this-one"])
    monkeypatch.setattr(runs, "live_process", lambda *args, **kwargs: None)  # none of this machine's processes
    clone = host(config, "box", tmp_path / "clone", clock)
    with pytest.raises(BreakerOpen, match="in flight use the failure budget"):
        clone.acquire("qwen")
    clock.advance(config.store.remote_permit_s + 1)
    clone.acquire("qwen")


def test_a_dead_database_falls_back_to_the_hosts_files(
    home: Path, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the database unreachable, a host's breaker still works, on its own file, and says so once."""
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", f"postgresql:///x?host={tmp_path}/no-such-socket-dir&user=nobody")
    config = load_config()
    box = host(config, "box-1", tmp_path, clock)
    with caplog.at_level(logging.WARNING):
        fail(box, times=5)
        with pytest.raises(BreakerOpen):
            box.acquire("qwen")
    assert (tmp_path / "box-1" / "breakers" / "qwen.json").is_file()
    assert [r.message for r in caplog.records].count(
        next(r.message for r in caplog.records if "degraded" in r.message)
    ) == 1


def test_a_fresh_store_setting_is_used_over_the_ledgers(fleet_url: str, state: StateRoot, clock: FakeClock) -> None:
    """store= given to Breakers wins: a single-host store keeps the breaker in the host's file."""
    config = load_config()
    local = StoreSettings(url=None, host_id=None, connect_timeout_s=3, retry_down_s=15, remote_permit_s=120)
    fail(Breakers(state, config.breakers, clock=clock, store=local), times=5)
    assert (state.sub("breakers") / "qwen.json").is_file()
    assert Breakers(state, config.breakers, clock=clock, store=config.store).status("qwen")["state"] == CLOSED


# -- across hosts and processes -------------------------------------------------------------------------


def run_fleet(tmp_path: Path, hosts: int, per_host: int, outcome: str, seconds: float, url: str | None) -> list[Any]:
    """hosts x per_host worker processes hammering one target, each host with its own state root."""
    go = tmp_path / f"go-{outcome}"
    probes = tmp_path / f"probes-{outcome}"
    ready = tmp_path / f"ready-{outcome}"
    probes.mkdir()
    ready.mkdir()
    procs = []
    for h in range(hosts):
        home = tmp_path / f"host-{h}"
        home.mkdir(exist_ok=True)
        (home / "config.yaml").write_text((tmp_path / "config.yaml").read_text())
        extra = {
            "PYTHONPATH": str(SCRIPTS),
            "SELFHEAL_HOST_ID": f"host-{h}",
            "PROBE_DIR": str(probes),
            "READY_DIR": str(ready),
        }
        if url:
            extra["SELFHEAL_DATABASE_URL"] = url
        env = script_env(home, **extra)
        procs += [
            subprocess.Popen(
                [sys.executable, str(HELPERS / "breaker_worker.py"), "dead-api", outcome, str(seconds), str(go)],
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
            for _ in range(per_host)
        ]
    deadline = time.monotonic() + 120
    while len(list(ready.iterdir())) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.write_text(str(time.time() + 0.5))  # every phase starts at the same wall time in every process
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return results


@pytest.mark.slow
def test_three_hosts_of_four_processes_against_a_dead_target_stay_within_the_threshold_and_probes(
    fleet_url: str, tmp_path: Path
) -> None:
    """Once a target has failed anywhere in the fleet, 12 processes on 3 hosts send it at most the rest of
    failure_threshold (5) requests; once the open time is over, one probe at a time, and close_after (3)
    good probes let the whole fleet through again. (With each host on its own files, as before fleet
    mode, the same run lets 4 + 5 + 5 requests through.)"""
    # The open period is three times the dead phase: a request asked for at the end of the dead phase and
    # answered late (a round trip to the database on a loaded machine) must not find it over already.
    (tmp_path / "config.yaml").write_text("breakers: {open_s: 1.2}\n")
    config = load_config(user_file=tmp_path / "config.yaml")
    seen_by = Breakers(StateRoot(tmp_path / "host-0").ensure(), config.breakers, store=config.store)
    fail(seen_by, "dead-api")  # the target has just started failing: host-0 saw it
    results = run_fleet(tmp_path, 3, 4, "fail:0.4+ok:2.0", 0, fleet_url)
    dead, alive = [r[0] for r in results], [r[1] for r in results]
    # Should one still be answered after the open period, it is a probe, which the closed breaker's budget
    # does not cover (seen once in many runs with 0.8 s of open period, on a machine at load 12).
    assert 1 + sum(r["granted"] - r["probes"] for r in dead) <= 5, results
    assert sum(r["refused"] for r in dead) > 0
    assert sum(r["probes"] for r in alive) == 3, results
    assert max(r["max_probes_at_once"] for r in alive) == 1
    assert sum(r["granted"] for r in alive) > 20, results
    assert seen_by.status("dead-api")["state"] == CLOSED


def test_install_fleet_adds_the_driver_and_dev_has_it_too() -> None:
    """install.sh --fleet installs psycopg (with or without tomllib); --dev does too, for the tests."""
    import tomllib

    from conftest import ROOT

    parser = (ROOT / "install.sh").read_text().split("<<'PYEOF'\n", 1)[1].split("PYEOF", 1)[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for prelude in ("", "import sys\nsys.modules['tomllib'] = None\n"):
        out = subprocess.run(
            [sys.executable, "-c", prelude + parser, str(ROOT / "pyproject.toml"), "0", "1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out == project["dependencies"] + project["optional-dependencies"]["fleet"]
    assert any(dep.startswith("psycopg[binary]") for dep in project["optional-dependencies"]["dev"])


# -- the fleet's ledger -----------------------------------------------------------------------------------


def ledger_of(config: Config, name: str, root: Path, **store: Any) -> Ledger:
    """The ledger of one simulated host: its own state root, the fleet's database."""
    config = dataclasses.replace(config, store=dataclasses.replace(config.store, host_id=name, **store))
    return Ledger(StateRoot(root / name).ensure(), config)


def fleet_rows(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT event_id, host, event FROM selfheal_ledger ORDER BY ts").fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_every_hosts_events_reach_the_fleets_ledger(fleet_url: str, tmp_path: Path) -> None:
    """Events from two hosts land in one table, each once, naming its host; the local files keep theirs."""
    config = load_config()
    one, two = ledger_of(config, "box-1", tmp_path), ledger_of(config, "box-2", tmp_path)
    first = one.record("retry", task="t1", error_class="timeout", attempt=1)
    two.record("failed", task="t2", error_class="auth")
    rows = fleet_rows(fleet_url)
    assert [(h, e) for _, h, e in rows] == [("box-1", "retry"), ("box-2", "failed")]
    assert rows[0][0] == first["event_id"]
    local = [json.loads(line) for line in one.state.ledger_file(first["ts"][:10]).read_text().splitlines()]
    assert [e["event_id"] for e in local] == [first["event_id"]]
    assert "event_id" not in one.state.log_file.read_text()  # the human log line stays as it was


def test_events_written_while_the_database_is_down_are_spooled_and_replayed_once(
    fleet_url: str, tmp_path: Path
) -> None:
    """With the database unreachable, events wait in the host's spool; the first event written once it
    answers sends them first; a replay repeated (a crash before the spool was emptied) adds nothing."""
    config = load_config()
    dead = ledger_of(config, "box-1", tmp_path, url=f"postgresql:///x?host={tmp_path}/none&user=nobody")
    for n in range(5):
        dead.record("retry", task="t", attempt=n)
    spooled = dead.spool_path.read_bytes()
    assert spooled.count(b"\n") == 5
    alive = ledger_of(config, "box-1", tmp_path)
    alive.record("success", task="t")
    rows = fleet_rows(fleet_url)
    assert [e for _, _, e in rows] == ["retry"] * 5 + ["success"]
    assert alive.spool_path.read_bytes() == b""
    alive.spool_path.write_bytes(spooled)  # as if the last replay died after the database had them
    assert alive.replay_spool() == 0
    assert fleet_rows(fleet_url) == rows
    assert alive.spool_path.read_bytes() == b""


def test_a_nul_in_an_event_reaches_the_fleets_ledger_as_a_replacement_and_the_database_stays_up(
    fleet_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's text and jsonb cannot hold U+0000: an event whose reason has one (a command's stderr) is
    stored with U+FFFD there, and kept as it was in the host's own ledger. Nothing is spooled, nothing says
    the database is unreachable, and the next event goes straight in."""
    config = load_config()
    one = ledger_of(config, "box-1", tmp_path)
    with caplog.at_level(logging.WARNING):
        first = one.record("failed", task="t\x00", reason="exit 1: boom\x00zero", error_class="unknown")
        one.record("success", task="t")
    assert not [r.message for r in caplog.records], caplog.text
    assert not one.spool_path.exists() or one.spool_path.read_bytes() == b""
    assert down_reason(one.config.store) is None
    with psycopg.connect(fleet_url) as conn:
        rows = conn.execute("SELECT event_id, task, data FROM selfheal_ledger ORDER BY ts").fetchall()
    assert [(r[0], r[1], r[2]["reason"]) for r in rows[:1]] == [
        (first["event_id"], "t\ufffd", "exit 1: boom\ufffdzero")
    ]
    assert len(rows) == 2
    local = one.state.ledger_file(first["ts"][:10]).read_text().splitlines()
    assert json.loads(local[0])["reason"] == "exit 1: boom\x00zero"


def test_a_spooled_event_the_database_refuses_is_set_aside_and_the_others_are_replayed(
    fleet_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One spooled event the database refuses for its data (a time that is no time) does not hold the spool
    back: it goes to fleet/ledger-refused.jsonl, named in one warning, the others reach the fleet's ledger, and
    the database is not taken for down."""
    config = load_config()
    dead = ledger_of(config, "box-1", tmp_path, url=f"postgresql:///x?host={tmp_path}/none&user=nobody")
    for n in range(3):
        dead.record("retry", task="t", attempt=n)
    lines = dead.spool_path.read_bytes().splitlines()
    bad = json.loads(lines[1])
    bad["ts"] = bad["ts"][:11] + "25:61:00.000Z"
    bad_line = json.dumps(bad).encode()
    dead.spool_path.write_bytes(b"\n".join([lines[0], bad_line, lines[2]]) + b"\n")
    alive = ledger_of(config, "box-1", tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        alive.record("success", task="t")
    ids = [json.loads(line)["event_id"] for line in (lines[0], lines[2])]
    assert [(i, e) for i, _, e in fleet_rows(fleet_url)] == [
        (ids[0], "retry"),
        (ids[1], "retry"),
        (mock.ANY, "success"),
    ]
    assert alive.spool_path.read_bytes() == b""
    assert alive.refused_path.read_bytes() == bad_line + b"\n"
    warnings = [r.message for r in caplog.records]
    assert len(warnings) == 1 and str(alive.refused_path) in warnings[0], warnings
    assert down_reason(alive.config.store) is None


def test_day_partitions_past_keeping_are_dropped(fleet_url: str) -> None:
    """The ledger table has one partition per UTC day; starting a new day drops those past ledger.keep_days."""
    now = time.time()
    old = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 10 * 86400)), "event": "retry"}
    db = pg.Database(fleet_url, "box-1")
    assert pg.insert_events(db, [{**old, "event_id": "a"}], keep_days=90) == 1
    assert pg.insert_events(db, [{**old, "event_id": "b"}], keep_days=5) == 0  # past keeping: not written
    new = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)), "event": "retry", "event_id": "c"}
    assert pg.insert_events(pg.Database(fleet_url, "box-1"), [new], keep_days=5) == 1
    with psycopg.connect(fleet_url) as conn:
        assert pg.ledger_partitions(conn) == ["selfheal_ledger_" + new["ts"][:10].replace("-", "")]
    assert [e for e, _, _ in fleet_rows(fleet_url)] == ["c"]


def test_analyze_logs_reads_the_fleets_ledger_and_filters_by_host(fleet_url: str, tmp_path: Path, home: Path) -> None:
    """analyze_logs.py counts every host's events from the fleet's ledger; --host keeps one host's."""
    config = load_config()
    for name, failures in (("box-1", 2), ("box-2", 3)):
        ledger = ledger_of(config, name, tmp_path)
        for _ in range(failures):
            ledger.record("failed", task=f"job-{name}", error_class="transient")

    def failed(*extra: str) -> int:
        proc = call_script("analyze_logs.py", "--json", *extra, home=home, env={"SELFHEAL_DATABASE_URL": fleet_url})
        assert proc.returncode in (0, 1), proc.stderr
        report = json.loads(proc.stdout)
        assert report["inputs"][0]["path"].startswith("fleet ledger")
        return int(report["events"]["failed"])

    assert failed() == 5
    assert failed("--host", "box-2") == 3
    proc = call_script("analyze_logs.py", "--host", "box-2", home=home)
    assert proc.returncode == 2 and "needs fleet mode" in proc.stderr and "Traceback" not in proc.stderr


def analyzed(config: Config, state: StateRoot, tmp_path: Path, **bounds: Any) -> dict[str, Any]:
    """analyze_logs' report over `state`'s ledger (the fleet's, in fleet mode), no OpenClaw logs."""
    from selfheal.observe.logreport import analyze

    quiet = tmp_path / "no-openclaw-logs"
    quiet.mkdir(mode=0o700, exist_ok=True)
    env = {"SELFHEAL_HOME": str(state.root), "OPENCLAW_STATE_DIR": str(tmp_path / "openclaw-state")}
    return analyze(config=config, state=state, env=env, openclaw_dir=quiet, **bounds)


def test_the_fleets_ledger_read_in_pages_gives_the_report_the_hosts_files_give(
    fleet_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of many times the fleet read's page (pg.FETCH_ROWS) reads every event once, in order: the
    report from the fleet's ledger is the report from the host's own files, figure for figure."""
    config = load_config()
    ledger = ledger_of(config, "box-1", tmp_path, url=fleet_url)
    for n in range(23):
        model = ("qwen", "phi")[n % 2]
        ledger.record("retry", task=f"job-{n % 3}", model=model, error_class="timeout", attempt=1, max_attempts=3)
        if n % 4 == 0:
            ledger.record("fallback", task=f"job-{n % 3}", model=model, error_class="auth", reason="401")
        ledger.record(("success", "failed")[n % 5 == 0], task=f"job-{n % 3}", model=model, duration_s=n / 10)
    monkeypatch.setattr(pg, "FETCH_ROWS", 4)
    now = time.time()
    bounds = {"since": int(now - 3600), "now": now}
    from_fleet = analyzed(ledger.config, ledger.state, tmp_path, **bounds)
    files_only = dataclasses.replace(ledger.config, store=dataclasses.replace(ledger.config.store, url=None))
    from_files = analyzed(files_only, ledger.state, tmp_path, **bounds)
    assert [i["path"] for i in from_fleet["inputs"]] == ["fleet ledger (PostgreSQL)"]
    assert from_fleet["inputs"][0]["lines"] == 23 * 2 + 6 == from_files["lines"]["total"]
    assert {k: v for k, v in from_fleet.items() if k != "inputs"} == {
        k: v for k, v in from_files.items() if k != "inputs"
    }


@pytest.fixture
def restartable(postgres: Cluster | External, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, str]]:
    """A server the test may stop and start, and a fresh database on it (fleet mode on): the session's own
    cluster, or one of the test's own where SELFHEAL_TEST_DATABASE_URL names a server someone else runs.
    Left stopped by the test, it is started again."""
    cluster = postgres if isinstance(postgres, Cluster) else Cluster()
    try:
        url = cluster.new_database()
        monkeypatch.setenv("SELFHEAL_DATABASE_URL", url)
        yield cluster, url
    finally:
        if cluster is not postgres:
            cluster.destroy()
        elif not (cluster.data / "postmaster.pid").exists():
            cluster.start()


def three_failures_each(fleet_url: str, tmp_path: Path) -> tuple[Ledger, Ledger]:
    """Two hosts' ledgers in the fleet, three failed events each."""
    config = load_config()
    one = ledger_of(config, "box-1", tmp_path, url=fleet_url)
    other = ledger_of(config, "box-2", tmp_path, url=fleet_url)
    for _ in range(3):
        one.record("failed", task="job", error_class="transient")
        other.record("failed", task="job", error_class="transient")
    return one, other


def between_pages(monkeypatch: pytest.MonkeyPatch, then: Callable[[pg.Database], None]) -> None:
    """Read the fleet's ledger in pages of 2 events, calling `then` once the first page is in hand."""
    monkeypatch.setattr(pg, "FETCH_ROWS", 2)
    real = pg.fetch_events

    def paused(db: pg.Database, **bounds: Any) -> Any:
        for n, event in enumerate(real(db, **bounds), 1):
            if n == 2:
                then(db)
            yield event

    monkeypatch.setattr(pg, "fetch_events", paused)


def test_a_fleet_connection_lost_between_pages_is_read_again_and_counts_each_event_once(
    fleet_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends the session after the first page of the fleet's ledger was read: the next page is read
    again on a new connection, and the report counts the fleet's six events, none twice and none of this
    host's files beside them (it used to fall back to this host's three)."""
    one, _ = three_failures_each(fleet_url, tmp_path)

    def terminated(db: pg.Database) -> None:
        with db.connection() as conn:
            pid = conn.info.backend_pid
        with psycopg.connect(fleet_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    between_pages(monkeypatch, terminated)
    report = analyzed(one.config, one.state, tmp_path, since=int(time.time() - 3600))
    assert [(i["path"], i.get("error")) for i in report["inputs"]] == [("fleet ledger (PostgreSQL)", None)]
    assert report["events"]["failed"] == 6 == report["lines"]["total"]


def test_a_fleet_database_restarted_between_pages_is_read_whole(
    restartable: tuple[Cluster, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stops and starts again (an operator's restart) between two pages of the fleet's ledger:
    the read goes on from the page it was at, and the report is the fleet's, each event once."""
    cluster, url = restartable
    one, _ = three_failures_each(url, tmp_path)

    def restarted(db: pg.Database) -> None:
        cluster.stop()
        cluster.start()

    between_pages(monkeypatch, restarted)
    report = analyzed(one.config, one.state, tmp_path, since=int(time.time() - 3600))
    assert [(i["path"], i.get("error")) for i in report["inputs"]] == [("fleet ledger (PostgreSQL)", None)]
    assert report["events"]["failed"] == 6 == report["lines"]["total"]


def test_a_fleet_database_that_stays_down_after_a_page_counts_only_the_hosts_own_files(
    restartable: tuple[Cluster, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stops after the first page of the fleet's ledger was read and is still down when the page is
    tried again: the report says the database was unreachable and counts this host's files alone, none of the
    page already read beside them."""
    cluster, url = restartable
    one, _ = three_failures_each(url, tmp_path)
    between_pages(monkeypatch, lambda db: cluster.stop())
    report = analyzed(one.config, one.state, tmp_path, since=int(time.time() - 3600))
    fleet = report["inputs"][0]
    assert fleet["path"] == "fleet ledger (PostgreSQL)" and fleet["lines"] == 0
    assert fleet["error"].startswith("fleet database unreachable: degraded")
    assert [i["source"] for i in report["inputs"][1:]] == ["ledger"]
    assert report["events"]["failed"] == 3 == report["lines"]["total"]


@pytest.mark.slow
def test_analyzing_a_large_fleet_window_holds_a_page_of_it_not_all_of_it(
    fleet_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8,000 events of 5 KB each (40 MB of ledger) in the window, read in pages of 500: the analysis counts
    every one while its peak memory stays under half the window's size (a read held whole took three times
    the size: every row, then every line, then the lines joined)."""
    import tracemalloc

    config = load_config()
    config = dataclasses.replace(config, store=dataclasses.replace(config.store, url=fleet_url, host_id="box-1"))
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    db = pg.Database(fleet_url, "box-1")
    assert pg.insert_events(db, [{"ts": f"{day}T00:00:00.000Z", "event": "start", "event_id": "seed"}], 90) == 1
    db.close()
    count, pad = 8_000, 5_000
    with psycopg.connect(fleet_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO selfheal_ledger (ts, event_id, host, event, task, target, error_class, data)"
            " SELECT t, 'e' || n, 'box-1', 'failed', 'job', NULL, 'transient', jsonb_build_object("
            " 'ts', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'event', 'failed',"
            " 'task', 'job', 'error_class', 'transient', 'reason', 'boom', 'host', 'box-1', 'event_id', 'e' || n,"
            " 'note', repeat('x', %s))"
            " FROM generate_series(1, %s) AS n, LATERAL (SELECT %s::timestamptz + n * interval '1 ms') AS at(t)",
            (pad, count, f"{day} 00:00:00+00"),
        )
    since = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    state = StateRoot(tmp_path / "box-1").ensure()
    monkeypatch.setattr(pg, "FETCH_ROWS", 500)
    tracemalloc.start()
    try:
        report = analyzed(config, state, tmp_path, since=since, until=since + 86400, now=since + 86400)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["events"]["failed"] == count
    assert peak < count * pad / 2, f"peak {peak / 1e6:.1f} MB for a {count * pad / 1e6:.0f} MB window"


def test_health_check_says_the_fleet_database_is_unreachable(home: Path, tmp_path: Path) -> None:
    """A fleet host whose database does not answer reports degraded mode, and how many events wait."""
    env = {"SELFHEAL_DATABASE_URL": f"postgresql:///x?host={tmp_path}/none&user=nobody"}
    proc = call_script("health_check.py", "--json", home=home, env=env)
    fleet = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "fleet")
    assert fleet["status"] == "warn"
    assert fleet["detail"].startswith("fleet database unreachable: degraded")
    assert proc.returncode in (1, 3)


def test_health_check_asks_a_database_that_never_answers_once_not_once_per_check(home: Path, tmp_path: Path) -> None:
    """A server that takes the connection and never answers: the fleet check waits its connect timeout, and
    the task check after it knows the database is down instead of waiting again."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text("store: {connect_timeout_s: 1}\n")
    port = listener.getsockname()[1]
    env = {"SELFHEAL_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/x"}
    try:
        proc = call_script("health_check.py", "--json", home=home, env=env)
        checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
        assert checks["fleet"]["status"] == "warn"
        assert len(accepted) == 1, f"{len(accepted)} connections: the database was asked again"
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


@pytest.mark.slow
def test_restarting_postgresql_mid_run_loses_and_doubles_no_event(
    postgres: Cluster | External, fleet_url: str, tmp_path: Path
) -> None:
    """Three hosts write events while the server stops (fast shutdown) and starts again: afterwards the
    fleet's ledger holds every event each host wrote, each exactly once."""
    cluster = postgres if isinstance(postgres, Cluster) else Cluster()
    go = tmp_path / "go"
    procs = []
    for n in range(3):
        root = tmp_path / f"host-{n}"
        root.mkdir()
        (root / "config.yaml").write_text("store: {retry_down_s: 0.2}\n")
        env = script_env(
            root,
            PYTHONPATH=str(SCRIPTS),
            SELFHEAL_DATABASE_URL=fleet_url,
            SELFHEAL_HOST_ID=f"host-{n}",
            READY_FILE=str(tmp_path / f"ready-{n}"),
        )
        procs.append(
            subprocess.Popen(
                [PYTHON, str(HELPERS / "fleet_ledger_writer.py"), "4", str(go)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{n}").exists() for n in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    time.sleep(1.0)
    cluster.stop()
    time.sleep(1.0)
    cluster.start()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert any(r["spooled_at_most"] for r in results)  # the outage really happened to the writers
    with psycopg.connect(fleet_url) as conn:
        per_host = dict(
            conn.execute("SELECT host, count(*) FROM selfheal_ledger WHERE event <> 'breaker' GROUP BY host").fetchall()
        )
        distinct = conn.execute("SELECT count(DISTINCT event_id), count(*) FROM selfheal_ledger").fetchone()
    assert per_host == {f"host-{n}": r["written"] for n, r in enumerate(results)}
    assert distinct is not None and distinct[0] == distinct[1]


# -- tasks.py fleet -----------------------------------------------------------------------------------------


def tasks_fleet(home: Path, action: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tasks.py fleet ACTION --json`, its main() in this process: these tests check its report and exit code."""
    return call_script("tasks.py", "fleet", action, "--json", home=home, env=env)


def test_fleet_init_creates_the_schema_and_status_shows_hosts_and_breakers(
    fleet_url: str, home: Path, tmp_path: Path, clock: FakeClock
) -> None:
    """`tasks.py fleet init` readies an empty database; `status` lists the hosts seen and who holds permits."""
    proc = tasks_fleet(home, "init", SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID="box-1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["initialized"] and report["schema_version"] == pg.SCHEMA_VERSION
    config = load_config()
    host(config, "box-2", tmp_path, clock).acquire("qwen")
    report = json.loads(tasks_fleet(home, "status", SELFHEAL_DATABASE_URL=fleet_url, SELFHEAL_HOST_ID="box-1").stdout)
    assert [h["host"] for h in report["hosts"]] == ["box-1", "box-2"]
    assert report["breakers"] == [{"target": "qwen", "state": "closed", "permits_by_host": {"box-2": 1}}]


def test_fleet_status_shows_an_open_breaker_past_its_time_as_half_open(
    fleet_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    """The fleet's listing applies the record's half-open rule, as the health check and breakers.py do."""
    from selfheal.core.fleet import fleet_report

    config = load_config()
    box = host(config, "box-1", tmp_path, clock)
    box.trip("qwen", 30.0)
    spool = tmp_path / "spool.jsonl"
    assert fleet_report(config.store, spool, clock=clock)["breakers"][0]["state"] == OPEN
    clock.advance(30.0)
    assert fleet_report(config.store, spool, clock=clock)["breakers"][0]["state"] == "half_open"


def test_fleet_status_names_a_breaker_row_that_does_not_read_and_still_lists_the_others(
    fleet_url: str, home: Path, tmp_path: Path, clock: FakeClock
) -> None:
    """A row whose record is wrong (a permit without its pid) is listed as stored and said unreadable, with the
    key, as every reader of a breaker reports it; the healthy rows' permits are counted from their records."""
    config = load_config()
    host(config, "box-2", tmp_path, clock).acquire("qwen")
    with psycopg.connect(fleet_url) as conn:
        (good,) = conn.execute("SELECT data FROM selfheal_breakers WHERE target = 'qwen'").fetchone()
        bad = {**good, "target": "vllm", "permits": {"p1": {"host": "box-3", "started": 1.0}}}  # no pid
        conn.execute(
            "INSERT INTO selfheal_breakers (target, state, data) VALUES ('vllm', 'closed', %s)", (json.dumps(bad),)
        )
    report = json.loads(tasks_fleet(home, "status", SELFHEAL_DATABASE_URL=fleet_url).stdout)
    text = call_script("tasks.py", "fleet", "status", home=home, env={"SELFHEAL_DATABASE_URL": fleet_url}).stdout
    by_target = {b["target"]: b for b in report["breakers"]}
    assert by_target["qwen"]["permits_by_host"] == {"box-2": 1}
    assert by_target["vllm"]["permits_by_host"] == {} and "permits.p1.pid: missing" in by_target["vllm"]["unreadable"]
    assert "breaker vllm: closed, permits held none\n    unreadable: fleet breaker row: permits.p1.pid" in text


def test_fleet_status_without_fleet_mode_or_database_says_why(home: Path, tmp_path: Path) -> None:
    """No URL: exit 2 naming the setting; an unreachable database: exit 1, degraded, the password masked."""
    proc = tasks_fleet(home, "status")
    assert proc.returncode == 2 and "SELFHEAL_DATABASE_URL" in proc.stderr and "Traceback" not in proc.stderr
    dead = f"postgresql://someone:s3cretpw@/x?host={tmp_path}/none"
    proc = tasks_fleet(home, "status", SELFHEAL_DATABASE_URL=dead)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["reachable"] is False and "s3cretpw" not in proc.stdout + proc.stderr


def test_self_heal_sees_a_tasks_failures_from_every_host(fleet_url: str, tmp_path: Path) -> None:
    """A task that failed on box-1 has its evidence on box-2 too: self_heal reads the fleet's ledger."""
    from selfheal.heal.diagnose import task_events

    config = load_config()
    ledger_of(config, "box-1", tmp_path).record("failed", task="nightly-report", error_class="timeout", attempt=3)
    ledger_of(config, "box-3", tmp_path).record("retry", task="other-task", error_class="timeout")
    here = StateRoot(tmp_path / "box-2").ensure()
    events = task_events(here, "nightly-report", config=config)
    assert [(e["host"], e["event"], e["error_class"]) for e in events] == [("box-1", "failed", "timeout")]
    assert task_events(here, "nightly-report") == []  # this host's own files know nothing of it


def test_health_check_reports_the_fleets_breakers(fleet_url: str, home: Path, tmp_path: Path, clock: FakeClock) -> None:
    """In fleet mode the health check reads the fleet's breakers: one opened by another host shows here."""
    config = load_config()
    fail(host(config, "box-2", tmp_path, clock), "vendor-api", times=5)
    env = {"SELFHEAL_DATABASE_URL": fleet_url, "SELFHEAL_HOST_ID": "box-1"}
    proc = call_script("health_check.py", "--json", home=home, env=env)
    assert proc.stdout, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["fleet"]["status"] == "ok" and checks["fleet"]["hosts"] == ["box-1", "box-2"]
    assert checks["breakers"]["status"] == "warn" and checks["breakers"]["detail"].startswith("vendor-api open")


def test_breakers_ride_out_a_database_restart_on_the_hosts_files_and_come_back(
    postgres: Cluster | External, fleet_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    """PostgreSQL stops mid-run: the host's breaker goes on from its own file (and opens there); once the
    server is back and store.retry_down_s has passed, the fleet's row is used again, and a probe taken from
    it before the outage no longer holds the probe slot."""
    cluster = postgres if isinstance(postgres, Cluster) else Cluster()
    config = load_config()
    box = host(config, "box-1", tmp_path, clock)
    fail(box, times=5)  # open in the fleet
    clock.advance(config.breakers.open_s)
    probe = box.acquire("qwen")  # the fleet's single probe slot
    assert probe.probe and probe.shared
    cluster.stop()
    try:
        box.release(probe, ok=True)  # lands on the file: the row cannot be reached
        fail(box, times=5)
        with pytest.raises(BreakerOpen, match="is open"):
            box.acquire("qwen")
        assert (tmp_path / "box-1" / "breakers" / "qwen.json").is_file()
    finally:
        cluster.start()
    clock.advance(config.store.retry_down_s + 1)
    again = box.acquire("qwen")  # the fleet's row again: half-open, and the old probe is gone from it
    assert again.shared and again.probe


def test_fleet_mode_without_the_driver_degrades_and_says_how_to_fix_it(home: Path) -> None:
    """A URL set but psycopg missing (no install.sh --fleet): calls go on from this host's files, events
    are spooled, and the health check and `tasks.py fleet status` name the fix."""
    code = (
        "import runpy, sys\n"
        "sys.modules['psycopg'] = None\n"  # makes `import psycopg` raise ImportError
        "from selfheal.core.breaker import Breakers\n"
        "from selfheal.core.config import load_config\n"
        "from selfheal.core.ledger import Ledger\n"
        "from selfheal.state.root import StateRoot\n"
        "config = load_config()\n"
        "state = StateRoot.from_env().ensure()\n"
        "ledger = Ledger(state, config)\n"
        "b = Breakers(state, config.breakers, ledger=ledger)\n"
        "b.release(b.acquire('qwen'), ok=True)\n"
        "ledger.record('retry', task='t')\n"
        "print(ledger.spool_path.read_text().count('\\n'))\n"
        f"sys.argv = ['health_check.py', '--json']\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPTS / 'health_check.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    env = script_env(home, PYTHONPATH=str(SCRIPTS), SELFHEAL_DATABASE_URL="postgresql://selfheal@db.invalid/x")
    proc = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    spooled, report = proc.stdout.split("\n", 1)
    assert spooled == "1"  # the event waits in the spool for a driver and a database
    fleet = next(c for c in json.loads(report)["checks"] if c["name"] == "fleet")
    assert fleet["status"] == "warn" and "./install.sh --fleet" in fleet["detail"]
    assert "./install.sh --fleet" in proc.stderr  # the warning logged once for the calls


def test_a_process_in_use_keeps_its_hosts_heartbeat_fresh(fleet_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """selfheal_hosts.last_seen moves on while a host works, not only when it connects (every HEARTBEAT_S)."""
    db = pg.Database(fleet_url, "box-1")

    def last_seen() -> object:
        with psycopg.connect(fleet_url) as conn:
            row = conn.execute("SELECT last_seen FROM selfheal_hosts WHERE host = 'box-1'").fetchone()
        return row[0] if row else None

    pg.breaker_targets(db)
    first = last_seen()
    pg.breaker_targets(db)
    assert last_seen() == first  # within HEARTBEAT_S: no extra statement
    monkeypatch.setattr(pg, "HEARTBEAT_S", 0.0)
    pg.breaker_targets(db)
    assert last_seen() > first  # type: ignore[operator]


def test_an_open_breaker_refuses_without_waiting_for_the_row_lock(
    fleet_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    """Once a process has seen the fleet's breaker open, its refusals read the row without locking it, so a
    fleet of refused callers never queues behind the row's lock."""
    import threading

    config = load_config()
    box1, box2 = host(config, "box-1", tmp_path, clock), host(config, "box-2", tmp_path, clock)
    fail(box1, times=5)
    with pytest.raises(BreakerOpen):
        box2.acquire("qwen")  # box-2 learns that it is open
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            box2.acquire("qwen")
        except BaseException as exc:
            outcome.append(exc)

    with psycopg.connect(fleet_url) as holder:
        holder.execute("SELECT data FROM selfheal_breakers WHERE target = 'qwen' FOR UPDATE")
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(timeout=5)  # only a failing run waits this long
        done = not asking.is_alive()
        holder.rollback()
    asking.join()
    assert done and isinstance(outcome[0], BreakerOpen)


@pytest.mark.parametrize("ahead_s", [600.0, -600.0])
def test_a_breaker_opened_by_a_host_with_a_wrong_clock_is_open_for_its_own_time_for_everyone(
    fleet_url: str, tmp_path: Path, ahead_s: float
) -> None:
    """Open times of a shared breaker are kept in the database's time: a host 10 minutes ahead no longer holds
    it open 10 minutes for everyone, and one 10 minutes behind no longer lets probes through at once."""
    import time as _time

    config = load_config()
    config = dataclasses.replace(config, breakers=dataclasses.replace(config.breakers, open_s=5.0))
    skewed = host(config, "skewed", tmp_path, FakeClock(wall=_time.time() + ahead_s))
    right_clock = FakeClock(wall=_time.time())
    right = host(config, "right", tmp_path, right_clock)
    skewed.release(skewed.acquire("qwen"), ok=False, error_class="auth")  # opens at once
    with pytest.raises(BreakerOpen) as refused:
        right.acquire("qwen")
    assert refused.value.retry_at is not None and 0 < refused.value.retry_at - right_clock.time() <= 6.0
    right_clock.advance(5.5)
    right.release(right.acquire("qwen"), ok=True)  # the open time is over: a probe goes through


def test_a_host_id_another_machine_used_a_moment_ago_is_said_once(
    fleet_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cloned machines share a hostname, the default host id: when another boot spoke as this host within the
    last two heartbeats, one warning says so (fleet status and the ledger cannot tell the two apart); this machine's own
    processes, on the same boot, never trigger it."""
    import logging

    def connect_as_clone() -> None:
        db = pg.Database(fleet_url, "clone", 5.0)
        with db.connection():
            pass  # the connection records this process, and this boot, as the host
        db.close()

    pg._warned_twins.discard("clone")
    with caplog.at_level(logging.WARNING):
        connect_as_clone()
        connect_as_clone()
    assert "was used" not in caplog.text  # the same boot: no twin
    with psycopg.connect(fleet_url, autocommit=True) as conn:
        conn.execute("UPDATE selfheal_hosts SET boot = 'another-machine' WHERE host = 'clone'")
    with caplog.at_level(logging.WARNING):
        connect_as_clone()
        connect_as_clone()
    assert caplog.text.count("fleet host id 'clone' was used") == 1 and "SELFHEAL_HOST_ID" in caplog.text
