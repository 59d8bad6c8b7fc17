"""Circuit breakers: when they open, how they probe and close, and that all processes share them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from conftest import SCRIPTS, call_script, script_env
from selfheal.core.breaker import CLOSED, HALF_OPEN, OPEN, BreakerOpen, Breakers, Ejected
from selfheal.core.config import Config, load_config
from selfheal.core.fleet import down_reason
from selfheal.core.ledger import Ledger
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def breakers(state: StateRoot, config: Config, clock: FakeClock) -> Breakers:
    return Breakers(state, config.breakers, clock=clock, ledger=Ledger(state, config, clock=clock))


def fail(b: Breakers, target: str = "qwen", error_class: str = "transient", times: int = 1) -> None:
    for _ in range(times):
        b.release(b.acquire(target), ok=False, error_class=error_class)


def succeed(b: Breakers, target: str = "qwen", times: int = 1) -> None:
    for _ in range(times):
        b.release(b.acquire(target), ok=True)


def test_opens_after_five_consecutive_failures(breakers: Breakers, clock: FakeClock) -> None:
    """Five counted failures in a row open it; the next request is refused until the open time is over."""
    fail(breakers, times=4)
    assert breakers.status("qwen")["state"] == CLOSED
    fail(breakers)
    with pytest.raises(BreakerOpen) as info:
        breakers.acquire("qwen")
    assert info.value.state == OPEN and info.value.retry_at == clock.time() + 60
    assert info.value.exit_code == 4


def test_a_wall_clock_stepped_back_does_not_keep_a_breaker_open_for_the_step(
    breakers: Breakers, clock: FakeClock
) -> None:
    """Opened for 60 s, then the wall clock is stepped back an hour (NTP, a VM restored from a snapshot): the
    breaker was refusing for the whole hour. Now a time before it opened ends its open time: the next request
    is its probe. The same for an ejection, and the window forgets the failures 'from the future'."""
    fail(breakers, times=5)
    with pytest.raises(BreakerOpen):
        breakers.acquire("qwen")
    clock._wall -= 3600
    probe = breakers.acquire("qwen")
    assert probe.probe
    breakers.release(probe, ok=True)
    breakers.release(breakers.acquire("gpu"), ok=False, error_class="timeout", eject="silent")
    with pytest.raises(Ejected):
        breakers.acquire("gpu", avoid_ejected=True)
    clock._wall -= 3600
    assert breakers.acquire("gpu", avoid_ejected=True).eject_probe
    assert breakers.status("gpu")["calls_in_window"] == 0


def test_a_reader_a_little_behind_still_sees_the_breaker_open(breakers: Breakers, clock: FakeClock) -> None:
    """Processes read one shared breaker with clocks a little apart (in fleet mode each moves its clock to the
    database's by a measured skew that is off by a round trip, tens of ms on a loaded host). A reader 50 ms
    behind the one that opened it took the breaker as stepped back: its probe went out at once, failed, and
    the next open time doubled (CI: no probe at all in the 2 s after the dead target came back). Nor does a
    failure counted 50 ms "in the future" leave the window."""
    fail(breakers, times=4)
    clock._wall += 0.05
    fail(breakers)  # the fifth failure, from a process whose clock reads 50 ms ahead
    clock._wall -= 0.05
    assert breakers.status("qwen")["calls_in_window"] == 5
    with pytest.raises(BreakerOpen):
        breakers.acquire("qwen")
    breakers.release(breakers.acquire("gpu"), ok=False, error_class="timeout", eject="silent")
    clock._wall -= 0.05
    with pytest.raises(Ejected):
        breakers.acquire("gpu", avoid_ejected=True)


def test_a_success_resets_the_count(breakers: Breakers) -> None:
    """Four failures, a success, four failures: still closed."""
    fail(breakers, times=4)
    succeed(breakers)
    fail(breakers, times=4)
    assert breakers.status("qwen")["state"] == CLOSED


@pytest.mark.parametrize("error_class", ["permanent", "format", "fatal", "unknown", "resource"])
def test_uncounted_classes_never_open_it(breakers: Breakers, error_class: str) -> None:
    """The caller's own mistakes (and classes not configured to count) leave the breaker alone."""
    fail(breakers, error_class=error_class, times=20)
    assert breakers.status("qwen")["state"] == CLOSED


def test_auth_opens_it_at_once(breakers: Breakers) -> None:
    """A refused key does not heal itself: one auth failure opens the breaker."""
    fail(breakers, error_class="auth")
    with pytest.raises(BreakerOpen, match="auth failure"):
        breakers.acquire("qwen")


def test_failure_rate_over_the_window_opens_it(breakers: Breakers) -> None:
    """Failures that never run 5 in a row still open it when half the window's calls fail."""
    for _ in range(3):
        fail(breakers, times=2)
        succeed(breakers)
    assert breakers.status("qwen")["state"] == CLOSED  # 6 of 9 failed: fewer calls than min_calls
    fail(breakers)  # the tenth call: 7 of 10 failed
    assert breakers.status("qwen")["state"] == OPEN


def test_old_calls_leave_the_window(breakers: Breakers, clock: FakeClock) -> None:
    """Failures older than the window do not count toward the rate."""
    for _ in range(3):
        fail(breakers, times=2)
        succeed(breakers)
    clock.advance(61)
    fail(breakers, times=2)
    assert breakers.status("qwen")["state"] == CLOSED


def test_half_open_lets_one_probe_through_and_closes_after_three(breakers: Breakers, clock: FakeClock) -> None:
    """After the open time one probe at a time is allowed; three good probes close the breaker."""
    fail(breakers, times=5)
    clock.advance(60)
    probe = breakers.acquire("qwen")
    assert probe.probe
    with pytest.raises(BreakerOpen, match="a probe is already testing it"):
        breakers.acquire("qwen")
    breakers.release(probe, ok=True)
    succeed(breakers, times=2)
    status = breakers.status("qwen")
    assert status["state"] == CLOSED and status["trips"] == 0


def test_a_failed_probe_reopens_for_longer_each_time(breakers: Breakers, clock: FakeClock) -> None:
    """Repeated trips double the open time: 60, 120, 240, 480, then the 600 s cap."""
    fail(breakers, times=5)
    waits = []
    for _ in range(5):
        status = breakers.status("qwen")
        waits.append(round(status["open_until"] - clock.time()))
        clock.advance(status["open_until"] - clock.time())
        fail(breakers)  # the probe fails
    assert waits == [60, 120, 240, 480, 600]


def test_a_target_failing_often_below_the_trip_is_ejected(breakers: Breakers) -> None:
    """2 failures in 5 calls (40%, below the 50% trip): the breaker stays closed, but a caller with another
    target to go to is turned away (Ejected); one with nowhere else to go still gets through."""
    succeed(breakers, times=3)
    fail(breakers, times=2)
    assert breakers.status("qwen")["state"] == CLOSED
    with pytest.raises(Ejected, match="2 of the last 5 calls failed"):
        breakers.acquire("qwen", avoid_ejected=True)
    breakers.release(breakers.acquire("qwen"), ok=True)


def test_an_ejection_ends_with_one_probe_and_doubles_while_it_keeps_failing(
    breakers: Breakers, clock: FakeClock
) -> None:
    """After eject_s (10 s) one probe at a time tests it; a failed probe ejects it for 20 s, then 40 s; a good
    probe brings traffic back."""
    succeed(breakers, times=3)
    fail(breakers, times=2)
    lengths = []
    for _ in range(3):
        until = breakers.status("qwen")["ejected_until"]
        lengths.append(round(until - clock.time()))
        clock.advance(until - clock.time())
        probe = breakers.acquire("qwen", avoid_ejected=True)
        assert probe.eject_probe
        with pytest.raises(Ejected, match="a probe is testing it"):
            breakers.acquire("qwen", avoid_ejected=True)
        breakers.release(probe, ok=False, error_class="transient")
    assert lengths == [10, 20, 40]
    clock.advance(80)
    breakers.release(breakers.acquire("qwen", avoid_ejected=True), ok=True)
    assert breakers.acquire("qwen", avoid_ejected=True).eject_probe is False


def test_a_caller_can_eject_a_silent_target_at_once(breakers: Breakers) -> None:
    """One silent request (the caller says so) is enough: no rate needed."""
    breakers.release(breakers.acquire("qwen"), ok=False, error_class="timeout", eject="silent")
    with pytest.raises(Ejected, match="silent"):
        breakers.acquire("qwen", avoid_ejected=True)


def test_a_probe_that_ends_without_an_answer_keeps_the_target_ejected(breakers: Breakers, clock: FakeClock) -> None:
    """A probe cancelled or cut short (released with no class: it says nothing about the target) does not end
    the ejection: the next caller with another target to go to gets the probe slot, not normal traffic."""
    breakers.release(breakers.acquire("qwen"), ok=False, error_class="timeout", eject="silent")
    clock.advance(10)
    probe = breakers.acquire("qwen", avoid_ejected=True)
    assert probe.eject_probe
    breakers.release(probe, ok=False, error_class=None)
    assert breakers.status("qwen")["eject_reason"] == "silent"
    again = breakers.acquire("qwen", avoid_ejected=True)
    assert again.eject_probe
    breakers.release(again, ok=True)
    assert breakers.status("qwen")["ejected_until"] is None
    assert breakers.acquire("qwen", avoid_ejected=True).eject_probe is False


def test_recovery_forgets_earlier_trips(breakers: Breakers, clock: FakeClock) -> None:
    """After it closes, the next trip starts again at the shortest open time."""
    fail(breakers, times=5)
    clock.advance(60)
    fail(breakers)  # probe fails: open 120 s
    clock.advance(120)
    succeed(breakers, times=3)
    fail(breakers, times=5)
    assert breakers.status("qwen")["open_until"] - clock.time() == 60


def test_in_flight_requests_count_against_the_failure_budget(breakers: Breakers) -> None:
    """With 3 failures so far, only 2 more requests may be in flight at once."""
    fail(breakers, times=3)
    first, second = breakers.acquire("qwen"), breakers.acquire("qwen")
    with pytest.raises(BreakerOpen, match="use the failure budget"):
        breakers.acquire("qwen")
    breakers.release(first, ok=True)
    breakers.release(second, ok=True)
    assert breakers.acquire("qwen")


def test_a_healthy_target_allows_any_concurrency(breakers: Breakers) -> None:
    """With no failures, in-flight requests are not limited."""
    permits = [breakers.acquire("qwen") for _ in range(50)]
    assert len(permits) == 50


def test_permit_of_a_dead_process_is_forgotten(breakers: Breakers, state: StateRoot) -> None:
    """A probe whose process died (SIGKILL mid-request) does not block the breaker forever."""
    fail(breakers, times=5)
    path = state.sub("breakers") / "qwen.json"
    data = json.loads(path.read_text())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    data.update(
        state="half_open", permits={"dead": {"pid": proc.pid, "create_time": 1.0, "started": 1e12, "probe": True}}
    )
    path.write_text(json.dumps(data))
    assert breakers.acquire("qwen").probe


def test_breakers_are_per_target(breakers: Breakers) -> None:
    """One target's failures do not touch another's breaker."""
    fail(breakers, target="qwen", times=5)
    assert breakers.acquire("phi").probe is False


def test_transitions_are_logged_and_recorded(breakers: Breakers, clock: FakeClock, home: Path) -> None:
    """Every change of state is a ledger event and a [BREAKER] log line."""
    fail(breakers, times=5)
    clock.advance(60)
    succeed(breakers, times=3)
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [(e["event"], e["status"]) for e in events] == [
        ("breaker", OPEN),
        ("breaker", HALF_OPEN),
        ("breaker", CLOSED),
    ]
    log = (home / "logs" / "selfheal.log").read_text().splitlines()
    assert log[0].endswith(
        '[BREAKER] task=- target=qwen state=open reason=transient detail="5 consecutive failures (transient)" '
        "trips=1 open_for=60s"
    )


def test_reset_closes_it(breakers: Breakers) -> None:
    """A person can close an open breaker; the reset is recorded."""
    fail(breakers, times=5)
    breakers.reset("qwen")
    status = breakers.status("qwen")
    assert (status["state"], status["reason"]) == (CLOSED, "reset by hand")
    assert breakers.acquire("qwen")


def test_corrupt_state_is_quarantined_and_the_breaker_starts_closed(
    breakers: Breakers, state: StateRoot, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable breaker file is moved aside and reported; the breaker works on."""
    fail(breakers)
    path = state.sub("breakers") / "qwen.json"
    path.write_text('{"state": "op')
    assert breakers.acquire("qwen")
    assert list(path.parent.glob("qwen.json.corrupt-*"))
    assert "unreadable" in caplog.text


def test_bad_target_names_are_refused(breakers: Breakers) -> None:
    """A target name is a file name: ../x is refused."""
    with pytest.raises(ValueError, match="invalid target id"):
        breakers.acquire("../x")


# -- across processes -----------------------------------------------------------------------------------------


def run_workers(home: Path, tmp_path: Path, n: int, outcome: str, seconds: float) -> list[dict[str, int]]:
    go = tmp_path / f"go-{outcome}"
    env = script_env(home, PYTHONPATH=str(SCRIPTS))
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPERS / "breaker_worker.py"), "dead-api", outcome, str(seconds), str(go)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(n)
    ]
    go.write_text("go")
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return results


@pytest.mark.slow
def test_four_processes_against_a_dead_target_stay_within_the_threshold(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    """Four processes hammering a dead target: at most 5 requests reach it before the breaker opens."""
    write_config("breakers: {open_s: 60}\n")
    results = run_workers(home, tmp_path, 4, "fail", 1.0)
    assert sum(r["granted"] for r in results) <= 5
    assert sum(r["refused"] for r in results) > 0


@pytest.mark.slow
def test_after_recovery_probes_pass_one_at_a_time_and_traffic_returns(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    """Once the open time is over, four processes share single probes; three successes close it."""
    write_config("breakers: {open_s: 0.3}\n")
    run_workers(home, tmp_path, 4, "fail", 0.2)
    config = load_config()
    assert Breakers(StateRoot(home), config.breakers).status("dead-api")["state"] in (OPEN, HALF_OPEN)
    results = run_workers(home, tmp_path, 4, "ok", 1.2)
    assert sum(r["probes"] for r in results) == 3  # exactly close_after probes, never two at once
    assert sum(r["granted"] for r in results) > 20  # then everyone gets through again
    assert Breakers(StateRoot(home), config.breakers).status("dead-api")["state"] == CLOSED


# -- the breaker inside retry loops ----------------------------------------------------------------------------


def test_an_open_breaker_refuses_before_calling(state: StateRoot, config: Config, clock: FakeClock) -> None:
    """With the target's breaker open, the function is not called at all and BreakerOpen says when to retry."""
    from selfheal.core.retrying import Retrier

    calls = []

    def boom() -> None:
        calls.append(1)
        raise ConnectionResetError(104, "reset")

    retrier = Retrier(target="api", breaker=True, config=config, clock=clock, state=state, max_attempts=1)
    for _ in range(5):
        with pytest.raises(ConnectionResetError):
            retrier.call(boom)
    with pytest.raises(BreakerOpen):
        retrier.call(boom)
    assert len(calls) == 5


def test_a_breaker_opening_mid_run_ends_it_with_the_last_real_error(
    state: StateRoot, config: Config, clock: FakeClock, home: Path
) -> None:
    """If another process opens the breaker between our attempts, we stop with our own last error."""
    from selfheal.core.retrying import Retrier, stop_reason_of

    other = Breakers(state, config.breakers, clock=clock)

    def flaky() -> None:
        fail(other, target="api", error_class="auth")  # meanwhile, elsewhere, the key is refused
        raise ConnectionResetError(104, "ours")

    with pytest.raises(ConnectionResetError, match="ours") as info:
        Retrier(target="api", breaker=True, config=config, clock=clock, state=state).call(flaky)
    assert stop_reason_of(info.value) == "breaker_open"
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [e["status"] for e in events if e["event"] != "breaker"] == ["retrying", "breaker_open"]


def test_breaker_needs_a_target() -> None:
    """breaker=True without a target is a programming error, reported at once."""
    from selfheal.core.retrying import Retrier

    with pytest.raises(ValueError, match="needs a target"):
        Retrier(breaker=True)


def test_async_calls_share_the_breaker(state: StateRoot, config: Config, clock: FakeClock) -> None:
    """The async loop acquires and releases permits too (off the event loop)."""
    import asyncio

    from selfheal.core.retrying import Retrier

    async def ok() -> str:
        return "fine"

    retrier = Retrier(target="api", breaker=True, config=config, clock=clock, state=state)
    assert asyncio.run(retrier.acall(ok)) == "fine"
    assert Breakers(state, config.breakers, clock=clock).status("api")["calls_in_window"] == 1


# -- scripts ---------------------------------------------------------------------------------------------------


def cli(home: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return call_script(script, *args, home=home)


def test_retry_run_target_is_refused_while_its_breaker_is_open(home: Path, tmp_path: Path) -> None:
    """After five failed runs against a target, the sixth is not attempted (exit 4) and its command never runs."""
    marker = tmp_path / "ran"
    command = ["sh", "-c", f"echo x >> {marker}; echo 'Connection refused' >&2; exit 1"]
    for _ in range(5):
        assert cli(home, "retry_run.py", "--target", "vendor", "--max-attempts", "1", "--", *command).returncode == 3
    proc = cli(home, "retry_run.py", "--json", "--target", "vendor", "--", *command)
    result = json.loads(proc.stdout)
    assert proc.returncode == 4
    assert (result["outcome"], result["stop_reason"]) == ("not_attempted", "breaker_open")
    assert "circuit breaker for 'vendor' is open" in result["reason"] and result["attempts"] == []
    assert len(marker.read_text().split()) == 5


def test_breakers_script_lists_shows_and_resets(home: Path, state: StateRoot, config: Config) -> None:
    """breakers.py lists states (exit 1 while one is open), shows one, and resets it (exit 0 after)."""
    b = Breakers(state, config.breakers)
    fail(b, target="qwen3-4b", error_class="auth")
    succeed(b, target="phi-3-mini")
    listing = cli(home, "breakers.py")
    assert listing.returncode == 1
    assert "qwen3-4b: open until" in listing.stdout and "(trip 1: auth failure)" in listing.stdout
    assert "phi-3-mini: closed" in listing.stdout
    shown = json.loads(cli(home, "breakers.py", "show", "qwen3-4b", "--json").stdout)
    assert shown["breakers"][0]["state"] == "open" and shown["ok"] is False
    assert cli(home, "breakers.py", "reset", "qwen3-4b").returncode == 0
    assert cli(home, "breakers.py").returncode == 0


def test_breakers_script_usage_errors(home: Path) -> None:
    """show without a target, or a target that is not a safe name, exits 2."""
    assert cli(home, "breakers.py", "show").returncode == 2
    bad = cli(home, "breakers.py", "reset", "../../x")
    assert bad.returncode == 2 and "invalid target id" in bad.stderr


def test_resetting_a_target_with_no_breaker_exits_2_with_the_close_names_and_creates_nothing(
    home: Path, state: StateRoot, config: Config
) -> None:
    fail(Breakers(state, config.breakers), target="qwen3-4b")
    typo = cli(home, "breakers.py", "reset", "qwen3-4")
    assert typo.returncode == 2 and "no breaker for target 'qwen3-4'; did you mean qwen3-4b?" in typo.stderr
    assert "Traceback" not in typo.stderr
    assert sorted(p.name for p in state.sub("breakers").glob("*.json")) == ["qwen3-4b.json"]
    assert cli(home, "breakers.py", "reset", "qwen3-4b").returncode == 0


def test_the_window_stays_small_however_busy_the_target(breakers: Breakers, state: StateRoot, clock: FakeClock) -> None:
    """2,000 calls within a minute: the breaker file stays a few kilobytes (counts per time bucket), so
    every update costs the same on a busy target as on a quiet one; the rate is still computed right."""
    for i in range(2000):
        clock.advance(0.025)
        if i % 4 == 0:
            fail(breakers, error_class="rate_limit")
        else:
            succeed(breakers)
    size = (state.sub("breakers") / "qwen.json").stat().st_size
    status = breakers.status("qwen")
    assert size < 8_000
    assert status["state"] == CLOSED and status["calls_in_window"] >= 1900  # 25% failing: under the 50% rate


@pytest.mark.slow
def test_readers_never_see_a_half_written_breaker_while_processes_update_it(
    home: Path, tmp_path: Path, state: StateRoot
) -> None:
    """The file is rewritten in place; a reader under the shared lock always gets a whole breaker."""
    from selfheal.core.breaker import read_breaker

    go = tmp_path / "go-readers"
    env = script_env(home, PYTHONPATH=str(SCRIPTS))
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPERS / "breaker_worker.py"), "busy-api", "ok", "1.5", str(go)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(3)
    ]
    go.write_text("go")
    path = state.sub("breakers") / "busy-api.json"
    reads = 0
    while any(p.poll() is None for p in procs):
        data = read_breaker(path)
        if data is not None:
            assert (data.target, data.state) == ("busy-api", "closed")
            reads += 1
    granted = sum(json.loads(p.communicate()[0])["granted"] for p in procs)
    final = read_breaker(path)
    assert final is not None and reads > 100
    assert sum(bucket[1] for bucket in final.window) == granted  # every success counted, none lost
    assert not list(path.parent.glob("busy-api.json.corrupt-*"))


def test_trip_forces_it_open_for_the_time_given_then_it_probes(breakers: Breakers, clock: FakeClock) -> None:
    """The second document's chaos test "force the breaker open": a closed, healthy breaker opens at once
    for exactly the time given; afterwards it probes and closes as after any trip."""
    succeed(breakers)
    breakers.trip("qwen", 30.0)
    status = breakers.status("qwen")
    assert (status["state"], status["open_until"] - status["opened_at"]) == (OPEN, 30.0)
    assert "forced open" in status["reason"]
    with pytest.raises(BreakerOpen):
        breakers.acquire("qwen")
    clock.advance(30.0)
    assert breakers.acquire("qwen").probe
    with pytest.raises(ValueError, match="above 0"):
        breakers.trip("qwen", 0)


def test_breakers_trip_makes_retry_run_wait_without_running_the_command(home: Path, tmp_path: Path) -> None:
    """`breakers.py trip vendor --for 300`: the next retry_run.py --target vendor is not attempted (exit 4)
    and its command never runs; `reset` lets it run again; a bad --for is a usage error."""
    marker = tmp_path / "ran"
    command = ["sh", "-c", f"echo x >> {marker}"]
    tripped = cli(home, "breakers.py", "trip", "vendor", "--for", "300")
    assert tripped.returncode == 0 and "vendor: open until" in tripped.stderr
    assert "forced open by breakers.py trip for 300s" in tripped.stderr
    assert cli(home, "breakers.py").returncode == 1
    assert cli(home, "retry_run.py", "--target", "vendor", "--", *command).returncode == 4
    assert not marker.exists()
    assert cli(home, "breakers.py", "reset", "vendor").returncode == 0
    assert cli(home, "retry_run.py", "--target", "vendor", "--", *command).returncode == 0
    bad = cli(home, "breakers.py", "trip", "vendor", "--for", "-1")
    assert bad.returncode == 2 and "--for" in bad.stderr and "Traceback" not in bad.stderr


# -- the saved record (state/breakers.py) ---------------------------------------------------------------------

# A breaker file exactly as the previous version writes it: open after five failures, one permit in flight.
TODAYS_FILE = (
    '{"consecutive_failures":5,"eject_reason":"5 of the last 5 calls failed within 60s","ejected_until":1800000010.0,'
    '"ejections":1,"last_change":1800000000.0,"last_error_class":"transient","open_until":1800000060.0,'
    '"opened_at":1800000000.0,"permits":{"0e7b057ff5c2":{"create_time":1799999990.5,"eject_probe":false,"host":null,'
    '"pid":4242,"probe":false,"started":1800000000.0}},"probe_successes":0,"reason":"5 consecutive failures '
    '(transient)","state":"open","target":"vendor-api","trips":1,"window":[[1800000000.0,0,5]]}'
)


def test_a_file_in_todays_shape_reads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    """The typed record reads the file the previous version wrote and encodes it to the very same bytes."""
    from selfheal.core.breaker import _encode
    from selfheal.state.breakers import BreakerState, read_breaker

    path = tmp_path / "vendor-api.json"
    path.write_text(TODAYS_FILE)
    record = read_breaker(path)
    assert isinstance(record, BreakerState)
    assert (record.state, record.open_until, record.trips, record.window) == (
        OPEN,
        1800000060.0,
        1,
        [[1800000000.0, 0, 5]],
    )
    assert record.permits["0e7b057ff5c2"].pid == 4242
    assert _encode(record) == TODAYS_FILE.encode()


def test_a_newer_versions_key_survives_a_read_modify_write(
    breakers: Breakers, state: StateRoot, clock: FakeClock
) -> None:
    """Keys this version does not know, in the breaker and in a permit, are written back as they were."""
    path = state.sub("breakers") / "vendor-api.json"
    data = json.loads(TODAYS_FILE)
    data["permits"] = {"other": {"pid": 1, "started": 1e12, "probe": False, "lease": {"v": 2}}}
    data["future"] = {"weights": [1, 2]}
    path.write_text(json.dumps(data))
    clock.advance(1800000060.0 - clock.time())
    succeed(breakers, target="vendor-api", times=breakers.settings.close_after)  # half-open, probes, closed
    saved = json.loads(path.read_text())
    assert saved["state"] == CLOSED and saved["future"] == {"weights": [1, 2]}
    assert saved["permits"]["other"]["lease"] == {"v": 2}
    breakers.reset("vendor-api")
    assert json.loads(path.read_text())["future"] == {"weights": [1, 2]}


@pytest.mark.parametrize(
    ("key", "value"),
    [("trips", "two"), ("state", "opne"), ("open_until", True), ("window", [[1, 2]]), ("permits", [])],
)
def test_a_wrong_field_is_reported_with_the_file_the_key_and_the_value(
    breakers: Breakers, state: StateRoot, key: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader names the file, the key and the value; a writer sets the file aside and starts closed."""
    from selfheal.errors import CorruptStateError
    from selfheal.state.breakers import read_breaker

    path = state.sub("breakers") / "vendor-api.json"
    path.write_text(json.dumps({**json.loads(TODAYS_FILE), key: value}))
    with pytest.raises(CorruptStateError) as caught:
        read_breaker(path)
    assert str(path) in str(caught.value) and key in str(caught.value) and repr(value) in str(caught.value)
    assert breakers.acquire("vendor-api").probe is False  # set aside: a fresh, closed breaker
    assert list(path.parent.glob("vendor-api.json.corrupt-*"))
    assert f"{key}: " in caplog.text and repr(value) in caplog.text


def test_a_permit_with_a_wrong_field_names_the_permit(tmp_path: Path) -> None:
    """A permit's own fields are checked too, and the message says which permit."""
    from selfheal.errors import CorruptStateError
    from selfheal.state.breakers import read_breaker

    data = json.loads(TODAYS_FILE)
    data["permits"]["0e7b057ff5c2"]["pid"] = "4242"
    path = tmp_path / "vendor-api.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptStateError, match=r"permits\.0e7b057ff5c2\.pid: must be a whole number \(value '4242'\)"):
        read_breaker(path)


@pytest.mark.parametrize(
    ("offset", "expected"), [(-0.001, OPEN), (0.0, HALF_OPEN), (5.0, HALF_OPEN)], ids=["before", "at", "after"]
)
def test_the_half_open_rule_at_the_edge_of_open_until(offset: float, expected: str) -> None:
    """Open until `open_until`, exactly then and after half-open (the next request probes); one rule for all."""
    from selfheal.state.breakers import BreakerState

    record = BreakerState.from_json(json.loads(TODAYS_FILE), "a literal")
    now = 1800000060.0 + offset
    assert record.effective_state(now) == expected
    assert record.is_open(now) is (expected == OPEN)
    assert record.is_half_open(now) is (expected == HALF_OPEN)


def test_exactly_at_open_until_every_reader_sees_half_open(
    breakers: Breakers, state: StateRoot, clock: FakeClock
) -> None:
    """The health check, status() and acquire() agree at the edge: the first request there is the probe."""
    from selfheal.observe.health import check_breakers

    fail(breakers, times=5)
    until = breakers.status("qwen")["open_until"]
    clock.advance(until - clock.time())
    assert check_breakers(state, clock.time()).data["not_closed"][0]["state"] == HALF_OPEN
    assert breakers.status("qwen")["state"] == HALF_OPEN
    assert breakers.acquire("qwen").probe


def test_an_open_breaker_with_no_open_until_is_half_open() -> None:
    """An open record without an end (hand-edited) is past its time: it probes rather than wedging."""
    from selfheal.state.breakers import BreakerState

    assert BreakerState("x", state=OPEN).effective_state(0.0) == HALF_OPEN


# -- fleet mode ---------------------------------------------------------------------------------------------


def _fleet_host(name: str, tmp_path: Path, clock: FakeClock) -> Breakers:
    """The breakers of one simulated host of the fleet: its own state root, the fleet's database."""
    config = load_config()
    store = dataclasses.replace(config.store, host_id=name)
    return Breakers(StateRoot(tmp_path / name).ensure(), config.breakers, clock=clock, store=store)


def test_a_statement_the_fleet_database_refuses_is_no_outage(fleet_url: str, tmp_path: Path, clock: FakeClock) -> None:
    """A breaker row the database answers and refuses (a constraint, a value it cannot hold) costs that one call
    its guard, not the host its place in the fleet: a breaker another host opened still refuses this host."""
    box1, box2 = _fleet_host("box-1", tmp_path, clock), _fleet_host("box-2", tmp_path, clock)
    fail(box1, times=5)
    with psycopg.connect(fleet_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE selfheal_breakers ADD CONSTRAINT refuse_one CHECK (target <> 'refused')")
    assert not box2.acquire("refused").recorded  # the call goes unguarded, reported once
    assert box2.store is not None and down_reason(box2.store) is None
    with pytest.raises(BreakerOpen, match="is open"):
        box2.acquire("qwen")


def test_breakers_script_resets_a_fleet_breaker_this_host_never_used(
    fleet_url: str, home: Path, tmp_path: Path, clock: FakeClock
) -> None:
    """In fleet mode `breakers.py reset NAME` on any host closes the fleet's breaker, even one only another host
    has used (no file of it here), instead of saying there is no such breaker."""
    fail(_fleet_host("box-1", tmp_path, clock), times=5)
    reset = call_script("breakers.py", "reset", "qwen", home=home, env={"SELFHEAL_DATABASE_URL": fleet_url})
    assert reset.returncode == 0, reset.stderr
    assert _fleet_host("box-1", tmp_path, clock).status("qwen")["state"] == CLOSED
