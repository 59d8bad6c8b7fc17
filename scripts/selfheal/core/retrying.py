"""The retry engine: classify each failure, wait as its class's policy says, stop when it says stop.

    @selfheal.retry(task="weekly-report")
    def fetch(): ...

    selfheal.retry(target="qwen").call(lambda: client.chat.completions.create(model=..., messages=...))

(A lambda, not `.call(client.chat.completions.create, model=...)`: mypy cannot match the arguments of an
overloaded function such as the openai client's create, so that form is a type error under --strict.)

Every loop is bounded by a whole-operation deadline. A Retry-After from the server is a floor on the
wait, and a Retry-After beyond the configured cap ends the retries. When retries run out, the last real
exception is re-raised with the attempt history attached (`attempts_of(exc)`), never a vague wrapper.
A first-try success with no task id writes nothing; any run with a task id, or any run that failed at
least once, leaves one ledger event per attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import random
import types
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from .. import _testing
from ..clock import SYSTEM_CLOCK, Clock
from ..state.root import StateRoot, validate_id
from .backoff import compute_delay
from .breaker import BreakerOpen, Breakers, Permit
from .classify import Classification, Classifier, Failure, classifier_for, safe_str
from .config import ERROR_CLASSES, Config, Policies, RetrySettings, get_config
from .ledger import Ledger

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# A predicate is only ever given an Exception (Ctrl-C, SystemExit and cancellation always come through), so it
# may be typed `(exc: Exception) -> bool`, as stamina's are; one taking BaseException fits too.
ExceptionFilter = type[BaseException] | tuple[type[BaseException], ...] | Callable[[Exception], bool]

# Why a retry loop stopped, as written in the ledger and the JSON results.
STOP_SUCCEEDED = "succeeded"
STOP_NOT_RETRYABLE = "not_retryable"
STOP_EXHAUSTED = "attempts_exhausted"
STOP_DEADLINE = "deadline"
STOP_RETRY_AFTER = "retry_after_too_long"
STOP_NOT_SELECTED = "not_selected"
STOP_INTERRUPTED = "interrupted"
STOP_BREAKER_OPEN = "breaker_open"


@dataclass(frozen=True)
class Attempt:
    """One try: how it ended and what followed. Durations and delays in seconds."""

    number: int
    error_class: str | None  # None: it succeeded
    rule: str | None
    reason: str
    duration_s: float
    max_attempts: int
    delay_s: float | None = None  # the wait that followed; None when nothing followed
    retry_after_s: float | None = None
    exit_code: int | None = None
    signal: str | None = None
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float
    max_attempts: int
    stop_reason: str | None = None


def attempts_of(exc: BaseException) -> tuple[Attempt, ...]:
    """The attempt history a retry loop attached to the exception it re-raised (empty if none)."""
    history = getattr(exc, "selfheal_attempts", ())
    return tuple(history) if isinstance(history, tuple) else ()


def stop_reason_of(exc: BaseException) -> str | None:
    """Why the retry loop that re-raised `exc` stopped (`not_retryable`, `attempts_exhausted`, `deadline`,
    `breaker_open`, ...: the ledger's `status`), or None if no retry loop raised it."""
    reason = getattr(exc, "selfheal_stop_reason", None)
    return reason if isinstance(reason, str) else None


class Budget:
    """The pure decision part of a retry loop: given a classified failure, retry (after how long) or stop.

    Shared by the function retrier and the command runner; holds no I/O.
    """

    def __init__(
        self,
        policies: Policies,
        settings: RetrySettings,
        *,
        started: float,
        deadline_s: float | None = None,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policies = policies
        self.settings = settings
        self.started = started
        self.deadline_s = settings.deadline_s if deadline_s is None else deadline_s
        self.max_attempts = max_attempts
        self.rng = rng
        self._failures: dict[str, int] = {}
        self._previous: dict[str, float] = {}

    def remaining(self, now: float) -> float:
        """Seconds left before the whole-operation deadline."""
        return self.deadline_s - (now - self.started)

    def budget_for(self, error_class: str) -> int:
        policy = self.policies.for_class(error_class)
        if policy.attempts <= 1:
            return 1  # never retried: no override can make a permanent failure worth repeating
        budget = self.max_attempts if self.max_attempts is not None else policy.attempts
        capped = _testing.testing_attempts()
        return min(budget, capped) if capped is not None else budget

    def decide(self, classification: Classification, *, attempt: int, now: float) -> Decision:
        """After failed attempt number `attempt` (1-based) of the run: retry after a delay, or stop."""
        cls = classification.error_class
        policy = self.policies.for_class(cls)
        if policy.attempts <= 1:
            return Decision(False, 0.0, 1, STOP_NOT_RETRYABLE)
        budget = self.budget_for(cls)
        if attempt >= budget:
            return Decision(False, 0.0, budget, STOP_EXHAUSTED)
        retry_after = classification.retry_after_s
        if retry_after is not None and retry_after > self.settings.retry_after_cap_s:
            return Decision(False, 0.0, budget, STOP_RETRY_AFTER)
        n = self._failures.get(cls, 0) + 1
        self._failures[cls] = n
        if retry_after is not None:
            # The server said when to come back: that, exactly. A jittered backoff on top would make the
            # wait (and whether a caller falls over rather than wait) a coin toss.
            delay = retry_after
        else:
            delay = compute_delay(policy, n, rng=self.rng, previous=self._previous.get(cls))
        self._previous[cls] = delay
        if delay >= self.remaining(now):
            return Decision(False, delay, budget, STOP_DEADLINE)
        return Decision(True, delay, budget)


def _selected(on: ExceptionFilter, exc: Exception) -> bool:
    if isinstance(on, (type, tuple)):
        return isinstance(exc, on)
    return bool(on(exc))


def _check_filter(on: object) -> None:
    """Refuse an `on=` that is not an exception type, a tuple of them, or a predicate, when it is given: found
    only at the first failure, it replaced the caller's real error with a TypeError of its own."""
    types = on if isinstance(on, tuple) else (on,) if isinstance(on, type) else None
    if types is None and callable(on):
        return
    if types is None or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise TypeError(f"on= takes an exception type, a tuple of them, or a predicate; got {on!r}")


def _check_parts(*, config: object, clock: object, rng: object, classifier: object, state: object) -> None:
    """Refuse an injected part of the wrong kind when it is given: each is first used at the first failure,
    where its AttributeError took the place of the caller's real error."""
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config= takes a selfheal.Config (selfheal.load_config()), got {type(config).__name__}")
    if not all(callable(getattr(clock, name, None)) for name in ("monotonic", "time", "sleep")):
        raise TypeError(f"clock= needs monotonic(), time() and sleep() (and asleep() for acall()); got {clock!r}")
    if rng is not None and not callable(getattr(rng, "uniform", None)):
        raise TypeError(f"rng= takes a random.Random (anything with uniform()), got {rng!r}")
    if classifier is not None and not callable(getattr(classifier, "classify", None)):
        raise TypeError(f"classifier= takes a selfheal.Classifier, got {classifier!r}")
    if state is not None and not isinstance(state, StateRoot):
        raise TypeError(f"state= takes a selfheal.StateRoot (e.g. StateRoot(path)), got {state!r}")


def _is_async(fn: object) -> bool:
    """A coroutine function, or an object whose __call__ is one (inspect alone misses those)."""
    if inspect.iscoroutinefunction(fn):
        return True
    return not isinstance(fn, type) and inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


# What a function's code says when calling it returns before its body has run (or failed).
_DEFERRED = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def _check_callable(fn: object, *, sync: bool) -> None:
    """Refuse what a retry around the call could never retry. A generator function returns at once and fails
    later, while it is iterated; so does a coroutine function given to call() (not acall()): wrapped, it would
    look guarded and never retry. A plain function or method is told apart by its code's flags, in well under
    a microsecond (this runs on every call())."""
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType) and not code.co_flags & _DEFERRED:
        return
    name = getattr(fn, "__qualname__", repr(fn))
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"self-heal cannot retry the generator function {name}: it fails while it is iterated, after the "
            "call has returned; retry the code that iterates it (e.g. a function that returns list(...))"
        )
    if sync and _is_async(fn):
        raise TypeError(f"{name} is a coroutine function: use `await retrier.acall(fn, ...)`, not call()")


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread, off the event loop. Cancelled meanwhile, it still waits for fn to end (a
    locked file update: milliseconds) before the cancellation goes on, so the caller knows what fn did: a
    breaker permit it took is given back, not held for `stale_permit_s` by a process that is still alive."""
    import asyncio  # noqa: PLC0415 - 15 ms (ssl included) that a retry of a plain command need not pay

    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            if future.done():
                raise
            cancelled = exc
            continue
        except BaseException:
            if cancelled is not None:
                raise cancelled from None  # the cancellation is what the caller asked for; never lost
            raise
        if cancelled is not None:
            raise cancelled
        return result


class Retrier:
    """A configured retry loop for functions: `.call(fn, ...)`, `await .acall(fn, ...)`, or a decorator.

    task: the task id recorded with every event (validated, it may become a file name).
    target: what is being called (an endpoint name); recorded, and used by circuit breakers.
    on: which exceptions are retried at all (types, or a predicate given each Exception); others propagate at once.
    deadline_s / max_attempts: override retry.deadline_s and the class policies' attempts.
    retries: the same as max_attempts, counted as the source documents count (`max_retries=3`: the first
        try and 3 retries, 4 attempts); giving both is refused.
    config, clock, rng, classifier, state: injectable; default to the loaded settings and the real clock.
    record: False writes no ledger events at all.
    before_attempt: called with the attempt number before each try; may raise NotAttempted.
    on_attempt: called with each finished Attempt (failed or not), e.g. to show progress.
    ledger: where events go (default: a Ledger on the state root); fields: extra fields for every event.
    prior_attempts: attempts already spent on this operation before (e.g. before a crash): numbering
        and the class budgets continue from there, so a restart never resets a retry budget.
    breaker: pass every attempt through `target`'s circuit breaker, shared by all processes on the host:
        an open breaker refuses the first attempt with BreakerOpen, or ends a run already under way
        with its last real error. Off by default: it costs two locked file updates per call.
    """

    def __init__(
        self,
        *,
        task: str | None = None,
        target: str | None = None,
        step: str | None = None,
        model: str | None = None,
        on: ExceptionFilter = Exception,
        deadline_s: float | None = None,
        max_attempts: int | None = None,
        retries: int | None = None,
        config: Config | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        classifier: Classifier | None = None,
        state: StateRoot | None = None,
        record: bool = True,
        before_attempt: Callable[[int], None] | None = None,
        on_attempt: Callable[[Attempt], None] | None = None,
        ledger: Ledger | None = None,
        fields: Mapping[str, Any] | None = None,
        breaker: bool = False,
        prior_attempts: int = 0,
    ) -> None:
        if prior_attempts < 0:
            raise ValueError(f"prior_attempts must be >= 0, got {prior_attempts}")
        if task is not None:
            validate_id(task, "task")
        if breaker and target is None:
            raise ValueError("breaker=True needs a target: the breaker is the target's")
        if target is not None and breaker:
            validate_id(target, "target")
        if retries is not None:
            if max_attempts is not None:
                raise ValueError("give retries or max_attempts, not both (retries=N is max_attempts=N + 1)")
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
            max_attempts = retries + 1
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be a whole number >= 1, got {max_attempts!r}")
        # `not > 0`, not `<= 0`: NaN compares false both ways, and a NaN deadline never ended a loop.
        if deadline_s is not None and not (
            isinstance(deadline_s, (int, float)) and not isinstance(deadline_s, bool) and deadline_s > 0
        ):
            raise ValueError(f"deadline_s must be a number of seconds > 0, got {deadline_s!r}")
        _check_filter(on)
        _check_parts(config=config, clock=clock, rng=rng, classifier=classifier, state=state)
        self.task = task
        self.target = target
        self.step = step
        self.model = model
        self.on = on
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        self._config = config
        self.clock = clock
        self.rng = rng
        self._classifier = classifier
        self._state = state
        self.record = record
        self.before_attempt = before_attempt
        self.on_attempt = on_attempt
        self._ledger = ledger
        self.fields = dict(fields or {})
        self.breaker = breaker
        self.prior_attempts = prior_attempts
        self.breaker_target = target if breaker else None
        self._breakers: Breakers | None = None

    # -- lazily loaded parts: nothing is read from disk until something fails or a task is tracked --------

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = get_config()
        return self._config

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            self._classifier = classifier_for(self.config.classify)
        return self._classifier

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self._state or StateRoot.from_env(), self.config, clock=self.clock)
        return self._ledger

    @property
    def breakers(self) -> Breakers:
        if self._breakers is None:
            self._breakers = Breakers(
                self._state or StateRoot.from_env(),
                self.config.breakers,
                clock=self.clock,
                ledger=self.ledger if self.record else None,  # record=False: only the breaker's own file
            )
        return self._breakers

    def budget(self, started: float) -> Budget:
        return Budget(
            self.config.policies,
            self.config.retry,
            started=started,
            deadline_s=self.deadline_s,
            max_attempts=self.max_attempts,
            rng=self.rng,
        )

    def classify(self, exc: BaseException) -> tuple[Classification, Failure]:
        failure = getattr(exc, "selfheal_failure", None)
        if not isinstance(failure, Failure):
            failure = Failure.from_exception(exc)
        classification = self.classifier.classify(failure, now=self.clock.time())
        if not isinstance(classification, Classification):
            raise TypeError(
                f"classifier {type(self.classifier).__name__} gave {classification!r} for {type(exc).__name__}, "
                "not a Classification"
            )
        if classification.error_class not in ERROR_CLASSES:  # a caller's classifier: said here, not as an
            raise ValueError(  # AttributeError from deep in the policies that took the place of the error
                f"classifier {type(self.classifier).__name__} gave the class {classification.error_class!r} for "
                f"{type(exc).__name__}; the classes are {', '.join(ERROR_CLASSES)}"
            )
        return classification, failure

    # -- the loop, in two colours ------------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call `fn(*args, **kwargs)` under the policy; return its result or raise its last exception."""
        _check_callable(fn, sync=True)
        run = _Run(self, getattr(fn, "__qualname__", None))
        try:
            while True:
                if run.begin():
                    if run.refusal is not None:
                        self._write(run.refusal)
                    raise run.stopped_by_breaker()
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    record, decision = run.failed(exc)
                    if record is not None:
                        self._write(record)
                    run.settle()
                    if not decision.retry:
                        run.give_up(exc, decision)
                        raise
                    if not _testing.is_testing():
                        try:
                            self.clock.sleep(decision.delay_s)
                        except BaseException as stop:
                            self._stopped_waiting(run, stop)
                            raise
                    continue
                except BaseException as exc:
                    self._interrupted(run, exc)
                    raise
                record = run.succeeded()
                if record is not None:
                    self._write(record)
                run.settle()
                return result
        except BaseException:
            run.abandon()
            raise

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """The async twin of call(): waits with the clock's asleep(), writes the ledger off the loop."""
        _check_callable(fn, sync=False)
        run = _Run(self, getattr(fn, "__qualname__", None))
        # The breaker's shared state is a locked file: its updates go to a thread, off the event loop.
        offload = self.breaker_target is not None
        try:
            while True:
                refused = (await _off_loop(run.begin)) if offload else run.begin()
                if refused:
                    if run.refusal is not None:
                        await _off_loop(self._write, run.refusal)
                    raise run.stopped_by_breaker()
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    record, decision = await _off_loop(run.failed, exc) if offload else run.failed(exc)
                    if record is not None:
                        await _off_loop(self._write, record)
                    if offload:
                        await _off_loop(run.settle)
                    if not decision.retry:
                        run.give_up(exc, decision)
                        raise
                    if not _testing.is_testing():
                        try:
                            await self.clock.asleep(decision.delay_s)
                        except BaseException as stop:
                            self._stopped_waiting(run, stop)  # cancellation: no awaiting now, write and go
                            raise
                    continue
                except BaseException as exc:
                    self._interrupted(run, exc)  # cancellation: no awaiting now, write and go
                    raise
                record = run.succeeded()
                if record is not None:
                    await _off_loop(self._write, record)
                if offload:
                    await _off_loop(run.settle)
                return result
        except BaseException:
            run.abandon()  # cancelled between attempts, or while a permit was being taken: give it back
            raise

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Use the retrier as a decorator (sync or async functions and methods; a classmethod or staticmethod
        under it too). A generator function is refused: see _check_callable()."""
        if isinstance(fn, (classmethod, staticmethod)):
            # Under @classmethod the function is not callable (or, under @staticmethod, a plain function
            # wrapper would bind self): wrap the function inside and put it back in the same kind of method.
            wrapped: Any = type(fn)(self(fn.__func__))
            return wrapped  # type: ignore[no-any-return]
        if not callable(fn):
            raise TypeError(f"retry() takes its options as keywords (e.g. retry(task=...)); {fn!r} is not a function")
        is_async = _is_async(fn)
        _check_callable(fn, sync=not is_async)
        if is_async:

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def _write(self, record: tuple[str, dict[str, Any]]) -> None:
        event, fields = record
        self.ledger.record(event, **fields)

    def _interrupted(self, run: _Run, exc: BaseException) -> None:
        """Record an attempt cut short by Ctrl-C, SystemExit or cancellation. Whatever goes wrong while
        recording it (a config.yaml that does not load, a state root that cannot be used) is logged, never
        raised: it would take the place of the interruption, and a caller's `except KeyboardInterrupt` or
        asyncio's cancellation would never see it."""
        try:
            record = run.interrupted(exc)
            if record is not None:
                self._write(record)
        except Exception as error:
            log.warning("self-heal could not record the interrupted attempt (%s): %s", type(exc).__name__, error)

    def _stopped_waiting(self, run: _Run, exc: BaseException) -> None:
        """Record a run stopped by Ctrl-C, SystemExit, cancellation or a signal during the wait before its next
        attempt: its last ledger line was the retry it waited for, so without this one the run read as still
        retrying for ever. An Exception from the clock is no stop: it propagates, not recorded here. Errors
        while recording are logged, never raised (see _interrupted)."""
        if isinstance(exc, Exception):
            return
        try:
            record = run.stopped_waiting(exc)
            if record is not None:
                self._write(record)
        except Exception as error:
            log.warning("self-heal could not record the stop during a wait (%s): %s", type(exc).__name__, error)


class _Run:
    """The state of one call of a Retrier: attempts so far, the budget, what to record."""

    def __init__(self, retrier: Retrier, op: str | None) -> None:
        self.r = retrier
        self.op = op
        self.started = retrier.clock.monotonic()
        self.attempt = retrier.prior_attempts
        self.attempt_started = self.started
        self.history: list[Attempt] = []
        self._budget: Budget | None = None
        self.permit: Permit | None = None
        self.refusal: tuple[str, dict[str, Any]] | None = None  # the event of a refusal by the breaker
        self.outcome: tuple[bool, str | None] = (True, None)  # of the last attempt, for the breaker
        self.last_error: Exception | None = None
        # Tracked runs record every attempt; untracked ones start recording at their first failure.
        self.tracked = retrier.record and retrier.task is not None

    @property
    def budget(self) -> Budget:
        if self._budget is None:  # made at the first failure: the success path loads no settings
            self._budget = self.r.budget(self.started)
        return self._budget

    def begin(self) -> bool:
        """Start the next attempt; True when the breaker refused it (then write `refusal` unless it is None,
        and raise stopped_by_breaker()). The first attempt's refusal is raised at once as BreakerOpen.

        A bool, not the event itself: with record=False there is no event, and "nothing to write" was read
        as "go on", so the loop kept calling the target past its open breaker."""
        self.attempt += 1
        if self.r.breaker_target is not None:
            try:
                self.permit = self.r.breakers.acquire(self.r.breaker_target)
            except BreakerOpen as exc:
                if self.last_error is None:
                    raise
                self.attempt -= 1
                if self.r.record:
                    self.refusal = (
                        "failed",
                        self._fields(
                            error_class=self.history[-1].error_class, reason=str(exc), status=STOP_BREAKER_OPEN
                        ),
                    )
                return True
        if self.r.before_attempt is not None:
            self.r.before_attempt(self.attempt)
        self.attempt_started = self.r.clock.monotonic()
        return False

    def stopped_by_breaker(self) -> Exception:
        """The last real error, marked as stopped by the breaker (call after begin() returned True)."""
        error = self.last_error
        if error is None:  # pragma: no cover - begin() raises instead when nothing failed yet
            raise RuntimeError("stopped_by_breaker() before any failure")
        self.give_up(error, Decision(False, 0.0, self.attempt, STOP_BREAKER_OPEN))
        return error

    def settle(self) -> None:
        """Tell the breaker how the attempt went; after its event is written, so the log reads in order."""
        self._release(ok=self.outcome[0], error_class=self.outcome[1])

    def _release(self, *, ok: bool, error_class: str | None) -> None:
        if self.permit is not None:
            permit, self.permit = self.permit, None
            self.r.breakers.release(permit, ok=ok, error_class=error_class)

    def _fields(self, **extra: Any) -> dict[str, Any]:
        fields = {
            "task": self.r.task,
            "step": self.r.step,
            "target": self.r.target,
            "model": self.r.model,
            "attempt": self.attempt,
            "op": self.op,
            **self.r.fields,
        }
        fields.update(extra)
        return fields

    def failed(self, exc: Exception) -> tuple[tuple[str, dict[str, Any]] | None, Decision]:
        now = self.r.clock.monotonic()
        duration = now - self.attempt_started
        if not _selected(self.r.on, exc):
            classification, failure = Classification("permanent", "not-selected", "permanent"), None
            decision = Decision(False, 0.0, self.attempt, STOP_NOT_SELECTED)
        else:
            classification, failure = self.r.classify(exc)
            decision = self.budget.decide(classification, attempt=self.attempt, now=now)
        self.last_error = exc
        self.outcome = (False, classification.error_class)
        # Not str(exc): a broken __str__ raised in place of an error that `on=` said to pass on untouched.
        reason = failure.summary() if failure is not None else f"{type(exc).__name__}: {safe_str(exc)}"
        attempt = Attempt(
            number=self.attempt,
            error_class=classification.error_class,
            rule=classification.rule,
            reason=reason,
            duration_s=duration,
            max_attempts=decision.max_attempts,
            delay_s=decision.delay_s if decision.retry else None,
            retry_after_s=classification.retry_after_s,
            exit_code=failure.exit_code if failure is not None else None,
            signal=failure.signal if failure is not None else None,
            timed_out=failure.timed_out if failure is not None else False,
        )
        self.history.append(attempt)
        if self.r.on_attempt is not None:
            self.r.on_attempt(attempt)
        if not self.r.record:
            return None, decision
        self.tracked = True
        fields = self._fields(
            max_attempts=decision.max_attempts,
            error_class=classification.error_class,
            rule=classification.rule,
            reason=reason,
            status="retrying" if decision.retry else decision.stop_reason,
            exit_code=failure.exit_code if failure is not None else None,
            delay_s=round(decision.delay_s, 3) if decision.retry else None,
            duration_s=round(duration, 3),
        )
        if failure is not None and failure.signal:
            fields["signal"] = failure.signal
        return ("retry" if decision.retry else "failed", fields), decision

    def give_up(self, exc: BaseException, decision: Decision) -> None:
        history = tuple(self.history)
        try:
            exc.selfheal_attempts = history  # type: ignore[attr-defined]
            exc.selfheal_stop_reason = decision.stop_reason  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__
            return
        if len(history) > 1 and hasattr(exc, "add_note"):
            classes = ", ".join(a.error_class or "?" for a in history)
            exc.add_note(
                f"self-heal: gave up after {len(history)} attempts ({classes}) in "
                f"{self.r.clock.monotonic() - self.started:.1f}s: {decision.stop_reason}"
            )

    def abandon(self) -> None:
        """The run ends by an exception outside an attempt (cancelled between attempts, or while a breaker
        permit was being taken): a permit still held is given back, saying nothing about the target."""
        try:
            self._release(ok=False, error_class=None)
        except Exception as error:
            log.warning("self-heal could not give back a circuit breaker permit: %s", error)

    def interrupted(self, exc: BaseException) -> tuple[str, dict[str, Any]] | None:
        """An attempt cut short by a signal, Ctrl-C or cancellation: always worth a ledger line."""
        self._release(ok=False, error_class=None)  # an interruption says nothing about the target
        if not self.r.record:
            return None
        with contextlib.suppress(AttributeError):
            exc.selfheal_recorded = True  # type: ignore[attr-defined]
        duration = self.r.clock.monotonic() - self.attempt_started
        reason = safe_str(exc) or type(exc).__name__
        return "failed", self._fields(
            error_class=None, reason=reason, status=STOP_INTERRUPTED, duration_s=round(duration, 3)
        )

    def stopped_waiting(self, exc: BaseException) -> tuple[str, dict[str, Any]] | None:
        """A stop during the wait before attempt `attempt + 1` (no attempt was running): worth a ledger line."""
        if not self.r.record:
            return None
        with contextlib.suppress(AttributeError):
            exc.selfheal_recorded = True  # type: ignore[attr-defined]
        reason = f"{safe_str(exc) or type(exc).__name__} (during the wait before attempt {self.attempt + 1})"
        return "failed", self._fields(error_class=None, reason=reason, status=STOP_INTERRUPTED)

    def succeeded(self) -> tuple[str, dict[str, Any]] | None:
        now = self.r.clock.monotonic()
        self.outcome = (True, None)
        if self.r.on_attempt is not None:
            self.r.on_attempt(
                Attempt(
                    number=self.attempt,
                    error_class=None,
                    rule=None,
                    reason="ok",
                    duration_s=now - self.attempt_started,
                    max_attempts=self.attempt,
                )
            )
        if not self.tracked:
            return None
        return "success", self._fields(
            status=STOP_SUCCEEDED, duration_s=round(now - self.started, 3), max_attempts=None
        )


@overload
def retry(fn: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def retry(
    fn: None = None,
    /,
    *,
    task: str | None = ...,
    target: str | None = ...,
    step: str | None = ...,
    model: str | None = ...,
    on: ExceptionFilter = ...,
    deadline_s: float | None = ...,
    max_attempts: int | None = ...,
    retries: int | None = ...,
    config: Config | None = ...,
    clock: Clock = ...,
    rng: random.Random | None = ...,
    classifier: Classifier | None = ...,
    state: StateRoot | None = ...,
    record: bool = ...,
    before_attempt: Callable[[int], None] | None = ...,
    on_attempt: Callable[[Attempt], None] | None = ...,
    ledger: Ledger | None = ...,
    fields: Mapping[str, Any] | None = ...,
    breaker: bool = ...,
    prior_attempts: int = ...,
) -> Retrier: ...


def retry(fn: Callable[P, T] | None = None, /, **options: Any) -> Callable[P, T] | Retrier:
    """`@retry`, `@retry(task=...)`, or `retry(task=...).call(fn, *args)`: see Retrier for the options."""
    retrier = Retrier(**options)
    if fn is not None:
        return retrier(fn)
    return retrier
