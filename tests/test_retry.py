"""The retry engine: exact waits with a fake clock, stopping rules, history, async, and what it records."""

from __future__ import annotations

import asyncio
import errno
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import selfheal
from conftest import ROOT
from selfheal import _testing
from selfheal.core.config import Config, load_config
from selfheal.core.retrying import Retrier, attempts_of, retry, stop_reason_of
from selfheal.errors import NotAttempted
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock, no_waits, set_testing


@pytest.fixture
def plain(write_config: Callable[[str], Path]) -> Config:
    """Settings with jitter off, so waits are exact."""
    write_config("retry: {jitter: none}\n")
    return load_config()


class Flaky:
    """Raises the given exceptions in turn, then returns 'done'; counts calls."""

    def __init__(self, *errors: BaseException, clock: FakeClock | None = None, takes: float = 0.0) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.clock = clock
        self.takes = takes
        self.raised: list[BaseException] = []

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.takes)
        if self.errors:
            exc = self.errors.pop(0)
            self.raised.append(exc)
            raise exc
        return "done"


def reset() -> ConnectionResetError:
    return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def rate_limited(retry_after: str | None) -> openai.RateLimitError:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    headers = {"retry-after": retry_after} if retry_after else {}
    response = httpx2.Response(429, headers=headers, request=request, json={})
    return openai.RateLimitError("429", response=response, body={"code": "rate_limit_exceeded"})


def ledger_events(home: Path) -> list[dict[str, Any]]:
    files = sorted((home / "ledger").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_two_failures_then_success_waits_exactly_per_policy(plain: Config, clock: FakeClock) -> None:
    """Transient policy 1 s x2: the waits are 1 s then 2 s, and the third call's result comes back."""
    fn = Flaky(reset(), reset())
    assert Retrier(config=plain, clock=clock).call(fn) == "done"
    assert fn.calls == 3
    assert clock.waits == [1.0, 2.0]


def test_permanent_failure_runs_once_and_reraises_the_real_error(plain: Config, clock: FakeClock) -> None:
    """A permanent failure is not retried; the caller gets the original exception, with history."""
    fn = Flaky(ValueError("bad parameter"))
    with pytest.raises(ValueError, match="bad parameter") as info:
        Retrier(config=plain, clock=clock).call(fn)
    assert fn.calls == 1 and clock.waits == []
    assert [a.error_class for a in attempts_of(info.value)] == ["permanent"]
    assert stop_reason_of(info.value) == "not_retryable"


def test_exhausted_retries_raise_the_last_exception_with_every_attempt(plain: Config, clock: FakeClock) -> None:
    """After the class's attempts run out, the last real exception surfaces with the whole history."""
    fn = Flaky(reset(), reset(), reset(), reset(), reset())
    with pytest.raises(ConnectionResetError) as info:
        Retrier(config=plain, clock=clock).call(fn)
    assert info.value is fn.raised[-1]
    history = attempts_of(info.value)
    assert [a.number for a in history] == [1, 2, 3, 4]  # transient: 3 retries after the first try
    assert [a.delay_s for a in history] == [1.0, 2.0, 4.0, None]
    assert stop_reason_of(info.value) == "attempts_exhausted"
    assert any("gave up after 4 attempts" in note for note in getattr(info.value, "__notes__", []))


def test_auth_failure_is_not_retried(plain: Config, clock: FakeClock) -> None:
    """401 means a missing or wrong key: retrying cannot help."""
    request = httpx2.Request("POST", "http://x/v1")
    exc = openai.AuthenticationError("401", response=httpx2.Response(401, request=request), body=None)
    fn = Flaky(exc)
    with pytest.raises(openai.AuthenticationError):
        Retrier(config=plain, clock=clock).call(fn)
    assert fn.calls == 1


def test_deadline_stops_before_a_wait_that_would_pass_it(plain: Config, clock: FakeClock) -> None:
    """With 2.5 s left, a 2 s wait after 1 s of waiting would end past the deadline: stop instead."""
    fn = Flaky(reset(), reset(), reset())
    with pytest.raises(ConnectionResetError) as info:
        Retrier(config=plain, clock=clock, deadline_s=2.5).call(fn)
    assert fn.calls == 2
    assert clock.waits == [1.0]
    assert stop_reason_of(info.value) == "deadline"


def test_time_spent_in_attempts_counts_against_the_deadline(plain: Config, clock: FakeClock) -> None:
    """Slow attempts use up the deadline too: 5 s spent of 5.5 s leaves no room for a 1 s wait."""
    fn = Flaky(reset(), reset(), clock=clock, takes=5.0)
    with pytest.raises(ConnectionResetError):
        Retrier(config=plain, clock=clock, deadline_s=5.5).call(fn)
    assert fn.calls == 1


def test_retry_after_is_waited_exactly(plain: Config, clock: FakeClock) -> None:
    """Rate limit base is 5 s; the server asked for 7 s; we wait 7 s."""
    fn = Flaky(rate_limited("7"))
    assert Retrier(config=plain, clock=clock).call(fn) == "done"
    assert clock.waits == [7.0]


@pytest.mark.parametrize("seed", range(8))
def test_a_shorter_retry_after_is_waited_exactly_whatever_the_jitter(
    write_config: Callable[[str], Path], clock: FakeClock, seed: int
) -> None:
    """The server asked for 1 s: 1 s it is, not the 5 s base nor a jittered draw (retry.jitter full)."""
    write_config("retry: {jitter: full}\n")
    fn = Flaky(rate_limited("1"))
    Retrier(config=load_config(), clock=clock, rng=random.Random(seed)).call(fn)
    assert clock.waits == [1.0]


def test_retry_after_beyond_the_cap_ends_the_retries(plain: Config, clock: FakeClock) -> None:
    """A server asking for 10 minutes (cap 120 s) is not waited for: stop at once."""
    fn = Flaky(rate_limited("600"))
    with pytest.raises(openai.RateLimitError) as info:
        Retrier(config=plain, clock=clock).call(fn)
    assert fn.calls == 1 and clock.waits == []
    assert stop_reason_of(info.value) == "retry_after_too_long"


def test_max_attempts_overrides_retryable_classes_only(plain: Config, clock: FakeClock) -> None:
    """max_attempts=5 gives a transient failure 5 tries but a permanent one still only 1."""
    fn = Flaky(*[reset() for _ in range(10)])
    with pytest.raises(ConnectionResetError):
        Retrier(config=plain, clock=clock, max_attempts=5).call(fn)
    assert fn.calls == 5
    perm = Flaky(KeyError("x"))
    with pytest.raises(KeyError):
        Retrier(config=plain, clock=clock, max_attempts=5).call(perm)
    assert perm.calls == 1


def test_each_class_backs_off_on_its_own_count(plain: Config, clock: FakeClock) -> None:
    """A timeout after a reset starts the timeout policy at its base, not at the reset's exponent."""
    fn = Flaky(reset(), TimeoutError(), reset(), reset())
    # attempt budget: transient 4, timeout 4 (3 retries each) -> the fourth failure (transient) stops.
    with pytest.raises(ConnectionResetError):
        Retrier(config=plain, clock=clock).call(fn)
    assert clock.waits == [1.0, 0.5, 2.0]


def test_unknown_failures_get_one_retry_and_are_marked(plain: Config, clock: FakeClock) -> None:
    """An unrecognised error is retried once and recorded as unclassified."""
    fn = Flaky(RuntimeError("odd"), RuntimeError("odd"))
    with pytest.raises(RuntimeError) as info:
        Retrier(config=plain, clock=clock).call(fn)
    assert fn.calls == 2
    assert [a.rule for a in attempts_of(info.value)] == ["unclassified", "unclassified"]


def test_exceptions_outside_on_propagate_untouched(plain: Config, clock: FakeClock) -> None:
    """`on=` limits what is retried; anything else goes straight through."""
    fn = Flaky(reset())
    with pytest.raises(ConnectionResetError):
        Retrier(config=plain, clock=clock, on=(TimeoutError,)).call(fn)
    assert fn.calls == 1
    fn2 = Flaky(reset())
    assert Retrier(config=plain, clock=clock, on=lambda e: isinstance(e, OSError)).call(fn2) == "done"


def test_keyboard_interrupt_is_never_retried(plain: Config, clock: FakeClock, home: Path) -> None:
    """Ctrl-C goes through at once, and the interrupted attempt is recorded."""
    fn = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        Retrier(config=plain, clock=clock).call(fn)
    assert fn.calls == 1
    assert [(e["event"], e["status"]) for e in ledger_events(home)] == [("failed", "interrupted")]


class StoppedWhileWaiting(FakeClock):
    """A clock whose waits are stopped: Ctrl-C (or cancellation) arrives while the retry waits."""

    def __init__(self, stop: BaseException) -> None:
        super().__init__()
        self.stop = stop

    def sleep(self, seconds: float) -> None:
        raise self.stop

    async def asleep(self, seconds: float) -> None:
        raise self.stop


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_stop_during_the_wait_between_attempts_ends_the_run_in_the_ledger(
    plain: Config, home: Path, how: str
) -> None:
    """Ctrl-C (or a cancellation) while a retry waits: it goes through at once, and the run's last ledger line
    says it stopped there. It was the `retrying` line, so the run read as still retrying for ever."""
    stop: BaseException = KeyboardInterrupt() if how == "sync" else asyncio.CancelledError()
    fn = Flaky(reset(), reset())
    retrier = Retrier(config=plain, clock=StoppedWhileWaiting(stop), task="nightly")

    async def fn_async() -> str:
        return fn()

    with pytest.raises(type(stop)):
        if how == "sync":
            retrier.call(fn)
        else:
            asyncio.run(retrier.acall(fn_async))
    assert fn.calls == 1
    events = [(e["event"], e["status"]) for e in ledger_events(home)]
    assert events == [("retry", "retrying"), ("failed", "interrupted")]
    assert ledger_events(home)[-1]["reason"].endswith("(during the wait before attempt 2)")


def test_before_attempt_can_refuse(plain: Config, clock: FakeClock) -> None:
    """A gate (a circuit breaker) raising NotAttempted stops the loop before the call."""

    def gate(n: int) -> None:
        raise NotAttempted("breaker open")

    fn = Flaky()
    with pytest.raises(NotAttempted):
        Retrier(config=plain, clock=clock, before_attempt=gate).call(fn)
    assert fn.calls == 0


def test_decorator_forms_keep_the_function(plain: Config, clock: FakeClock) -> None:
    """@retry, @retry(...), and retry(...).call all work and keep name and docstring."""

    @retry
    def bare() -> int:
        """Doc."""
        return 1

    @retry(config=plain, clock=clock)
    def configured(x: int) -> int:
        return x * 2

    assert bare() == 1 and bare.__name__ == "bare" and bare.__doc__ == "Doc."
    assert configured(21) == 42
    assert retry(config=plain).call(lambda a, b: a + b, 1, b=2) == 3


# -- async ------------------------------------------------------------------------------------------------


class YieldingClock(FakeClock):
    """A fake clock whose asleep gives the event loop a turn, so interleaving can be observed."""

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.advance(seconds)
        for _ in range(3):
            await asyncio.sleep(0)


def test_async_retries_with_the_same_policy(plain: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The async loop waits the same delays, through asleep(), never time.sleep()."""
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("time.sleep called from async code"))
    clock = YieldingClock()
    calls = 0

    @retry(config=plain, clock=clock)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise reset()
        return "ok"

    ticks: list[int] = []

    async def ticker() -> None:
        for i in range(6):
            ticks.append(i)
            await asyncio.sleep(0)

    async def both() -> str:
        result, _ = await asyncio.gather(fetch(), ticker())
        return result

    assert asyncio.run(both()) == "ok"
    assert calls == 3 and clock.waits == [1.0, 2.0]
    assert len(ticks) == 6  # the other task ran while fetch waited


def test_async_gives_up_with_history(plain: Config) -> None:
    """Exhausted async retries raise the last exception with its attempts."""
    clock = FakeClock()

    async def always() -> None:
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError) as info:
        asyncio.run(Retrier(config=plain, clock=clock).acall(always))
    assert len(attempts_of(info.value)) == 4  # timeout: 3 retries


# -- the test switch ---------------------------------------------------------------------------------------


def test_no_waits_removes_waits_but_keeps_retrying(plain: Config, clock: FakeClock) -> None:
    """With the switch on, the same attempts happen with no sleeping at all."""
    fn = Flaky(reset(), reset())
    with no_waits():
        assert Retrier(config=plain, clock=clock).call(fn) == "done"
    assert fn.calls == 3 and clock.waits == []


def test_no_waits_can_cap_attempts(plain: Config, clock: FakeClock) -> None:
    """set_testing(True, attempts=1) makes every failure final, for users' fast tests."""
    set_testing(True, attempts=1)
    fn = Flaky(reset())
    with pytest.raises(ConnectionResetError):
        Retrier(config=plain, clock=clock).call(fn)
    assert fn.calls == 1


def test_environment_switch_turns_testing_on(home: Path) -> None:
    """SELFHEAL_TESTING=1 in the environment turns the switch on at import."""
    code = "import selfheal; print(selfheal.is_testing())"
    for value, expected in (("1", "True"), ("0", "False")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT / "scripts",
            capture_output=True,
            text=True,
            env={"SELFHEAL_TESTING": value, "SELFHEAL_HOME": str(home), "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout.strip()
        assert out == expected


# -- what is recorded ---------------------------------------------------------------------------------------


def test_first_try_success_without_task_writes_nothing(plain: Config, home: Path) -> None:
    """The hot path touches no files: no ledger, no log."""
    assert Retrier(config=plain).call(lambda: 1) == 1
    assert not (home / "ledger").exists() and not (home / "logs").exists()


def test_tracked_success_is_one_event(plain: Config, home: Path) -> None:
    """A task's first-try success is recorded once, with its duration."""
    Retrier(config=plain, task="report-1").call(lambda: 1)
    events = ledger_events(home)
    assert [(e["event"], e["task"], e["attempt"]) for e in events] == [("success", "report-1", 1)]
    log = (home / "logs" / "selfheal.log").read_text()
    assert "[SUCCESS] task=report-1 duration=" in log


def test_every_attempt_of_a_failing_run_is_recorded(plain: Config, clock: FakeClock, home: Path) -> None:
    """An untracked run that failed twice leaves retry, retry, success in the ledger and the log."""
    fn = Flaky(reset(), TimeoutError("read timed out"))
    Retrier(config=plain, clock=clock, target="qwen", model="Qwen3-4B").call(fn)
    events = ledger_events(home)
    assert [e["event"] for e in events] == ["retry", "retry", "success"]
    first = events[0]
    assert (first["error_class"], first["attempt"], first["max_attempts"], first["delay_s"]) == ("transient", 1, 4, 1.0)
    lines = (home / "logs" / "selfheal.log").read_text().splitlines()
    assert lines[0].endswith("[RETRY] task=- target=qwen model=Qwen3-4B reason=transient attempt=1/4 delay=1s")
    assert " [RETRY] task=- target=qwen model=Qwen3-4B reason=timeout attempt=2/4 delay=0.5s" in lines[1]
    assert "[SUCCESS]" in lines[2] and "attempts=3" in lines[2]


def test_final_failure_is_a_failed_event(plain: Config, clock: FakeClock, home: Path) -> None:
    """The last attempt of a run that gives up is FAILED, with the stop reason."""
    with pytest.raises(KeyError):
        Retrier(config=plain, clock=clock, task="t").call(Flaky(KeyError("choices")))
    (event,) = ledger_events(home)
    assert (event["event"], event["error_class"], event["status"]) == ("failed", "permanent", "not_retryable")
    assert "[FAILED] task=t reason=permanent attempts=1" in (home / "logs" / "selfheal.log").read_text()


def test_secrets_in_errors_never_reach_the_files(
    plain: Config, clock: FakeClock, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error message quoting a key or a password URL is masked in the ledger and the log."""
    monkeypatch.setenv("OPENAI_API_KEY", "local-key-1234567890")
    config = load_config()
    secret = "sk-proj-ABCDEFGHIJKLMNOPQRSTUV"
    fn = Flaky(ConnectionError(f"POST https://bob:hunter2@h/v1 with key {secret} and local-key-1234567890"))
    Retrier(config=config, clock=clock, task="t").call(fn)
    text = "".join(p.read_text() for p in (home / "ledger").glob("*")) + (home / "logs" / "selfheal.log").read_text()
    assert secret not in text and "hunter2" not in text and "local-key-1234567890" not in text
    assert "bob:***@h" in text


def test_state_files_are_private(plain: Config, clock: FakeClock, home: Path) -> None:
    """Ledger and log are created 0600, their folders 0700."""
    Retrier(config=plain, clock=clock, task="t").call(lambda: 1)
    for path in [*(home / "ledger").iterdir(), home / "logs" / "selfheal.log"]:
        assert path.stat().st_mode & 0o777 == 0o600
    assert (home / "ledger").stat().st_mode & 0o777 == 0o700


def test_bad_task_id_is_refused_before_anything_runs() -> None:
    """A task id that could escape the state root is an error at construction."""
    with pytest.raises(selfheal.InvalidIdError, match=r"\.\./\.\./etc/passwd"):
        Retrier(task="../../etc/passwd")


# -- interruptions and cancellation ---------------------------------------------------------------------------


def test_ctrl_c_and_cancellation_go_through_when_they_cannot_be_recorded(write_config: Callable[[str], Path]) -> None:
    """A config.yaml that does not load made recording the interrupted attempt raise ConfigError in place of
    KeyboardInterrupt (or a task's CancelledError): the caller's Ctrl-C handler and asyncio never saw them."""
    write_config("retry: {jitter: [\n")

    def interrupted() -> None:
        raise KeyboardInterrupt

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(KeyboardInterrupt):
        Retrier(task="t").call(interrupted)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Retrier(task="t").acall(cancelled))


class WaitForever(FakeClock):
    """A clock whose asleep() never ends by itself: only a cancellation ends the wait."""

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.Event().wait()


def test_a_task_cancelled_during_the_backoff_wait_stops_at_once(plain: Config) -> None:
    """Cancelling during the wait between attempts ends the call there: no further attempt is made."""
    clock = WaitForever()
    fn = Flaky(reset(), reset())

    async def fn_async() -> str:
        return fn()

    async def main() -> None:
        task = asyncio.create_task(Retrier(config=plain, clock=clock).acall(fn_async))
        while not clock.waits:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (fn.calls, clock.waits) == (1, [1.0])


def test_calls_cancelled_while_taking_a_breaker_permit_give_it_back(plain: Config, state: StateRoot) -> None:
    """A call cancelled while its permit was being taken (asyncio.wait_for timing out at the wrong moment) kept
    the permit for 15 minutes: four such left, one failure then made the breaker refuse every call ("1 recent
    failures and 4 requests in flight"), so the next call gave up after one attempt instead of retrying."""
    retrier = Retrier(target="vendor", breaker=True, config=plain, clock=FakeClock(), state=state)

    async def never() -> str:
        await asyncio.Event().wait()
        return "unreachable"

    fn = Flaky(reset())

    async def flaky() -> str:
        return fn()

    async def main() -> str:
        for _ in range(4):
            task = asyncio.create_task(retrier.acall(never))
            await asyncio.sleep(0)  # the call is now taking its permit, in a worker thread
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert retrier.breakers.status("vendor")["in_flight"] == 0
        return await retrier.acall(flaky)

    assert asyncio.run(main()) == "done"
    assert fn.calls == 2


# -- options a caller can get wrong ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on": [ConnectionError]}, "on= takes an exception type, a tuple of them, or a predicate"),
        ({"on": (ConnectionError, "x")}, "on= takes an exception type"),
        ({"on": int}, "on= takes an exception type"),
        ({"deadline_s": float("nan")}, "deadline_s must be a number of seconds > 0, got nan"),
        ({"deadline_s": "30"}, "deadline_s must be a number of seconds > 0, got '30'"),
        ({"max_attempts": 2.5}, "max_attempts must be a whole number >= 1, got 2.5"),
        ({"max_attempts": True}, "max_attempts must be a whole number >= 1, got True"),
        ({"classifier": "transient"}, "classifier= takes a selfheal.Classifier, got 'transient'"),
        ({"config": {"retry": {}}}, "config= takes a selfheal.Config (selfheal.load_config()), got dict"),
        ({"clock": None}, "clock= needs monotonic(), time() and sleep() (and asleep() for acall()); got None"),
        ({"rng": 42}, "rng= takes a random.Random (anything with uniform()), got 42"),
        ({"state": "/tmp/x"}, "state= takes a selfheal.StateRoot (e.g. StateRoot(path)), got '/tmp/x'"),
    ],
)
def test_bad_options_are_refused_when_given_not_at_the_first_failure(options: dict[str, Any], message: str) -> None:
    """on=[...] raised its own TypeError in place of the caller's error at the first failure; a NaN deadline
    never ended a loop (101 attempts for retries=100); max_attempts=True was one attempt; a classifier, config,
    clock or rng of the wrong kind was an AttributeError at the first failure, in place of the caller's error."""
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        Retrier(**options)


def test_a_custom_classifier_decides_and_a_class_it_makes_up_is_named(plain: Config, clock: FakeClock) -> None:
    """A caller's Classifier picks the policy (a reset it calls permanent runs once); a class that is not one of
    ERROR_CLASSES is named in a ValueError, where an AttributeError from the policies took the error's place."""

    class Fixed(selfheal.Classifier):
        def __init__(self, error_class: str) -> None:
            super().__init__(plain.classify)
            self.error_class = error_class

        def classify(self, failure: selfheal.Failure, *, now: float | None = None) -> selfheal.Classification:
            return selfheal.Classification(self.error_class, "mine", self.error_class)

    fn = Flaky(reset())
    with pytest.raises(ConnectionResetError):
        Retrier(config=plain, clock=clock, classifier=Fixed("permanent")).call(fn)
    assert fn.calls == 1
    with pytest.raises(ValueError, match="classifier Fixed gave the class 'vendor-hiccup' for ConnectionResetError"):
        Retrier(config=plain, clock=clock, classifier=Fixed("vendor-hiccup")).call(Flaky(reset()))


def test_a_classifier_that_answers_something_else_is_named(plain: Config, clock: FakeClock) -> None:
    """A classify() that returned None (a forgotten return) was "'NoneType' object has no attribute
    'error_class'", naming neither the classifier nor the failure it was asked about."""

    class Forgetful(selfheal.Classifier):
        def classify(self, failure: selfheal.Failure, *, now: float | None = None) -> selfheal.Classification:
            return None  # type: ignore[return-value]

    with pytest.raises(
        TypeError, match="classifier Forgetful gave None for ConnectionResetError, not a Classification"
    ):
        Retrier(config=plain, clock=clock, classifier=Forgetful(plain.classify)).call(Flaky(reset()))


class Unprintable(Exception):
    """An exception whose __str__ raises (a message built from a value that cannot be formatted)."""

    def __str__(self) -> str:
        raise RuntimeError("cannot format the message")


def test_an_error_outside_on_whose_str_raises_reaches_the_caller(plain: Config, clock: FakeClock, home: Path) -> None:
    """An error `on=` did not select propagates untouched: its reason was formatted with str(), and a broken
    __str__ raised a RuntimeError in its place."""
    fn = Flaky(Unprintable())
    with pytest.raises(Unprintable):
        Retrier(config=plain, clock=clock, on=ConnectionError, task="t").call(fn)
    assert fn.calls == 1
    [event] = ledger_events(home)
    assert (event["status"], event["reason"]) == ("not_selected", "Unprintable: Unprintable()")


def test_an_interruption_whose_str_raises_is_still_recorded(plain: Config, home: Path) -> None:
    """Ctrl-C of a subclass whose __str__ raises went through, but its ledger line was lost to the RuntimeError
    (one warning instead)."""

    class Stop(KeyboardInterrupt):
        def __str__(self) -> str:
            raise RuntimeError("cannot format the message")

    with pytest.raises(Stop):
        Retrier(config=plain, task="t").call(Flaky(Stop()))
    [event] = ledger_events(home)
    assert (event["status"], event["reason"]) == ("interrupted", "Stop()")


def test_record_false_with_a_breaker_writes_only_the_breakers_file(plain: Config, home: Path) -> None:
    """record=False still wrote the breaker's transitions to the ledger and the log (`[BREAKER] ... state=open`)
    once the failures tripped it; the breaker's shared file is all it may write."""
    retrier = Retrier(config=plain, record=False, target="vendor", breaker=True)
    with no_waits():
        for _ in range(4):
            with pytest.raises((ConnectionResetError, selfheal.BreakerOpen)):
                retrier.call(Flaky(*(reset() for _ in range(10))))
    assert retrier.breakers.status("vendor")["state"] == "open"
    written = sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())
    assert written == ["breakers/vendor.json", "config.yaml"]  # config.yaml: the test's own settings


def test_no_waits_in_overlapping_threads_leaves_the_switch_as_it_found_it() -> None:
    """Two threads' `with no_waits():` blocks overlapping (A in, B in, A out, B out): each restored the setting
    it had seen on entry, so waits came back inside B's block, and after both the switch stayed on for good."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def thread_a() -> None:
        with no_waits():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def thread_b() -> None:
        a_in.wait(5)
        with no_waits():
            b_in.set()
            a_out.wait(5)
            seen["inside B after A left"] = selfheal.is_testing()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"inside B after A left": True}
    assert not selfheal.is_testing()


def test_no_waits_nested_restores_each_level_and_its_attempts_cap() -> None:
    """Nested blocks: the inner cap applies inside it, the outer one again after it, nothing after both."""
    with no_waits(attempts=3):
        with no_waits(attempts=1):
            assert _testing.testing_attempts() == 1
        assert (selfheal.is_testing(), _testing.testing_attempts()) == (True, 3)
    assert (selfheal.is_testing(), _testing.testing_attempts()) == (False, None)


def test_record_false_with_a_breaker_stops_when_the_breaker_opens(plain: Config, clock: FakeClock) -> None:
    """With record=False a refusal by the breaker had no event to write, and nothing written was read as "go on":
    the loop went on calling the target past its open breaker, the attempt count frozen, until the deadline
    (5 million calls in a second under no_waits())."""
    calls = 0

    def fails() -> str:
        nonlocal calls
        calls += 1
        if calls > 20:
            raise AssertionError("called past an open breaker")
        raise reset()

    retrier = Retrier(config=plain, clock=clock, record=False, target="vendor", breaker=True, max_attempts=10)
    with pytest.raises(ConnectionResetError) as info:
        retrier.call(fails)
    assert (calls, stop_reason_of(info.value)) == (5, "breaker_open")  # failure_threshold: 5
