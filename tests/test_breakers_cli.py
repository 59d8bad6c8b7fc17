"""breakers.py against bad input: an open time beyond any date, a target with no breaker; and a breaker file
that already holds a time beyond any date does not crash the scripts that read it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.openclaw import free_port

from conftest import call_script
from selfheal.clock import utc_iso
from selfheal.state.root import StateRoot


def cli(home: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return call_script(script, *args, home=home, env=env)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("value", ["1e300", "inf", "31622401"])
def test_trip_for_longer_than_366_days_exits_2_naming_the_value_and_saves_nothing(
    home: Path, state: StateRoot, value: str
) -> None:
    proc = cli(home, "breakers.py", "trip", "api", "--for", value, "--json")
    no_traceback(proc)
    assert proc.returncode == 2 and json.loads(proc.stdout)["ok"] is False
    assert f"--for {float(value):g}: at most 31622400 seconds (366 days)" in proc.stderr
    assert not list(state.sub("breakers").glob("api.json*"))
    at_most = cli(home, "breakers.py", "trip", "api", "--for", "31622400")
    assert at_most.returncode == 0 and "api: open until " in at_most.stderr


def test_show_of_a_target_with_no_breaker_exits_2_with_the_close_names_and_creates_nothing(
    home: Path, state: StateRoot
) -> None:
    assert cli(home, "breakers.py", "trip", "typo", "--for", "60").returncode == 0
    proc = cli(home, "breakers.py", "show", "typo3", "--json")
    no_traceback(proc)
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {
        "ok": False,
        "error": "UnknownTarget",
        "message": "no breaker for target 'typo3'; did you mean typo?",
        "exit": 2,
    }
    assert sorted(p.name for p in state.sub("breakers").iterdir()) == ["typo.json"]


def test_show_gives_times_in_utc_and_none_as_a_dash_while_json_keeps_the_numbers(home: Path, state: StateRoot) -> None:
    """`show` is read by a person: a tripped breaker's times are dates, not epoch floats; --json keeps them."""
    assert cli(home, "breakers.py", "trip", "api", "--for", "60").returncode == 0
    shown = dict(line.split(": ", 1) for line in cli(home, "breakers.py", "show", "api").stdout.splitlines())
    view = json.loads(cli(home, "breakers.py", "show", "api", "--json").stdout)["breakers"][0]
    assert shown["open_until"] == utc_iso(view["open_until"]) and shown["opened_at"] == utc_iso(view["opened_at"])
    assert view["open_until"] - view["opened_at"] == pytest.approx(60)
    assert shown["ejected_until"] == "-" and view["ejected_until"] is None
    assert shown["reason"] == "forced open by breakers.py trip for 60s"


def test_show_with_no_breakers_at_all_lists_none_and_creates_nothing(home: Path, state: StateRoot) -> None:
    proc = cli(home, "breakers.py", "show", "api")
    assert proc.returncode == 2 and "no breaker for target 'api'; breakers: none yet" in proc.stderr
    folder = state.sub("breakers")
    assert not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize(
    ("ts", "shown"),
    [(1e300, "far-future"), (-1e300, "far-past"), (float("nan"), "invalid-time"), (253402300800.0, "far-future")],
)
def test_utc_iso_never_raises_on_a_time_no_date_can_hold(ts: float, shown: str) -> None:
    assert utc_iso(ts) == shown and utc_iso(ts, millis=True) == shown


def test_utc_iso_still_writes_the_last_and_first_representable_seconds() -> None:
    assert utc_iso(253402300799.0) == "9999-12-31T23:59:59Z"
    assert utc_iso(-62135596800.0) == "0001-01-01T00:00:00Z"
    assert utc_iso(1.5, millis=True) == "1970-01-01T00:00:01.500Z"


@pytest.fixture
def planted(state: StateRoot) -> Path:
    """A breaker open until 1e300 s, as an older version's `trip --for 1e300` (or a hand edit) left it."""
    path = state.breaker_file("api")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "target": "api",
        "state": "open",
        "consecutive_failures": 0,
        "trips": 1,
        "opened_at": 1_700_000_000.0,
        "open_until": 1e300,
        "last_change": 1_700_000_000.0,
        "reason": "forced open by breakers.py trip for 1e+300s",
        "window": [],
        "permits": {},
    }
    path.write_text(json.dumps(record))
    path.chmod(0o600)
    return path


def test_a_stored_open_time_beyond_any_date_is_listed_not_a_crash(home: Path, planted: Path) -> None:
    listing = cli(home, "breakers.py")
    no_traceback(listing)
    assert listing.returncode == 1 and "api: open until far-future" in listing.stdout
    shown = cli(home, "breakers.py", "show", "api", "--json")
    assert shown.returncode == 1 and json.loads(shown.stdout)["breakers"][0]["open_until"] == 1e300


def test_health_check_reads_a_stored_open_time_beyond_any_date(
    home: Path, tmp_path: Path, planted: Path, write_config: Callable[[str], Path]
) -> None:
    write_config(f"health: {{gateway_url: 'http://127.0.0.1:{free_port()}', disk_min_free_mb: 0}}\n")
    openclaw_dir = tmp_path / "openclaw"
    (openclaw_dir / "skills" / "status").mkdir(parents=True)
    env = {"OPENCLAW_STATE_DIR": str(openclaw_dir)}
    drop = ("OPENCLAW_GATEWAY_PORT", "OPENCLAW_CONFIG_PATH")
    as_json = call_script("health_check.py", "--json", home=home, env=env, drop=drop)
    no_traceback(as_json)
    (check,) = [c for c in json.loads(as_json.stdout)["checks"] if c["name"] == "breakers"]
    assert check["status"] == "warn" and "api open until far-future" in check["detail"]
    cron = call_script("health_check.py", "--cron", home=home, env=env, drop=drop)
    no_traceback(cron)
    assert cron.returncode == 3 and "breakers: api open until far-future" in cron.stdout


def test_retry_run_waits_on_a_stored_open_time_beyond_any_date(home: Path, tmp_path: Path, planted: Path) -> None:
    marker = tmp_path / "ran"
    proc = cli(home, "retry_run.py", "--json", "--target", "api", "--", "sh", "-c", f"echo x > {marker}")
    no_traceback(proc)
    result = json.loads(proc.stdout)
    assert proc.returncode == 4 and (result["outcome"], result["stop_reason"]) == ("not_attempted", "breaker_open")
    assert "retry after far-future" in result["reason"] and not marker.exists()
