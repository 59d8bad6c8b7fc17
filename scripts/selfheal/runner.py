"""A command run under the retry policy: what `retry_run.py` does, as a library call.

Each attempt runs the command in its own process group with its output streamed live; a failure is
classified from its exit code, signal and output tail; the policy decides the wait; the run record
stays current for health checks; and the ledger gets one event per attempt.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .classify import Failure
from .clock import SYSTEM_CLOCK, Clock
from .config import Config, get_config
from .errors import EXIT_FAILED, EXIT_OK, Interrupted, LockBusy, SelfHealError
from .ledger import Ledger
from .process import CommandResult, StopFlag, run_command
from .retrying import STOP_INTERRUPTED, STOP_SUCCEEDED, Attempt, Retrier, stop_reason_of
from .runs import RunRecord, new_run_id, prune_finished, running_for_task
from .store import StateRoot, file_lock, validate_id


class CommandFailed(SelfHealError):
    """A command attempt failed; carries its result and the evidence for classification."""

    def __init__(self, result: CommandResult, failure: Failure) -> None:
        self.result = result
        self.selfheal_failure = failure
        super().__init__(failure.summary())


@dataclass
class RunOutcome:
    """The result of a whole retried run, as `retry_run.py --json` prints it."""

    ok: bool
    outcome: str  # succeeded | failed | interrupted
    stop_reason: str
    run_id: str
    task: str | None
    target: str | None
    argv: list[str]
    exit_code: int | None
    signal: str | None
    error_class: str | None
    rule: str | None
    reason: str | None
    duration_s: float
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "outcome": self.outcome,
            "stop_reason": self.stop_reason,
            "run_id": self.run_id,
            "task": self.task,
            "target": self.target,
            "command": self.argv,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "error_class": self.error_class,
            "rule": self.rule,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
            "attempts": self.attempts,
        }


class _StoppableClock:
    """The clock, but a retry wait ends at once (with Interrupted) when a stop signal arrives."""

    def __init__(self, clock: Clock, stop: StopFlag | None) -> None:
        self._clock = clock
        self._stop = stop

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def time(self) -> float:
        return self._clock.time()

    def sleep(self, seconds: float) -> None:
        if self._stop is None:
            self._clock.sleep(seconds)
        elif self._stop.wait(seconds):
            raise Interrupted(self._stop.signum or 15)

    async def asleep(self, seconds: float) -> None:  # pragma: no cover - commands are run synchronously
        await self._clock.asleep(seconds)


def run_with_retry(
    argv: list[str],
    *,
    task: str | None = None,
    target: str | None = None,
    timeout_s: float | None = None,
    deadline_s: float | None = None,
    max_attempts: int | None = None,
    cwd: str | None = None,
    config: Config | None = None,
    state: StateRoot | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    stop: StopFlag | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> RunOutcome:
    """Run `argv` until it succeeds or the policy says stop. Raises LockBusy if the task is running
    elsewhere, ConfigError/InvalidIdError for bad input; the command's own failure is in the outcome."""
    if not argv:
        raise ValueError("no command given")
    if task is not None:
        validate_id(task, "task")
    if target is not None:
        validate_id(target, "target")
    config = config or get_config()
    state = (state or StateRoot.from_env()).ensure()
    spec: dict[str, Any] = {
        "argv": argv,
        "task": task,
        "target": target,
        "timeout_s": timeout_s,
        "deadline_s": deadline_s,
        "max_attempts": max_attempts,
        "cwd": cwd,
        "config": config,
        "state": state,
        "clock": clock,
        "rng": rng,
        "stdout": stdout,
        "stderr": stderr,
        "stop": stop,
        "on_attempt": on_attempt,
        "env": env,
    }
    if task is None:
        return _run(**spec)
    try:
        with file_lock(state.lock_file("task", task), timeout=0, what=f"task {task!r}"):
            return _run(**spec)
    except LockBusy as exc:
        holder = running_for_task(state, task)
        if holder is not None:
            sup = holder.get("supervisor") or {}
            exc.holder = f"run {holder.get('run_id')}, pid {sup.get('pid')}"
            exc.args = (f"task {task!r} is already running (run {holder.get('run_id')}, pid {sup.get('pid')})",)
        raise


def _run(
    *,
    argv: list[str],
    task: str | None,
    target: str | None,
    timeout_s: float | None,
    deadline_s: float | None,
    max_attempts: int | None,
    cwd: str | None,
    config: Config,
    state: StateRoot,
    clock: Clock,
    rng: random.Random | None,
    stdout: BinaryIO | None,
    stderr: BinaryIO | None,
    stop: StopFlag | None,
    on_attempt: Callable[[Attempt], None] | None,
    env: Mapping[str, str] | None,
) -> RunOutcome:
    proc_cfg = config.process
    ledger = Ledger(state, config, clock=clock)
    redactor = ledger.redactor
    safe_argv = [redactor.text(a) for a in argv]
    run_id = new_run_id(task, clock.time())
    prune_finished(state, older_than_s=proc_cfg.keep_finished_runs_days * 86400, now=clock.time())
    record = RunRecord(
        state, run_id=run_id, task=task, target=target, argv=safe_argv, heartbeat_s=proc_cfg.heartbeat_s, clock=clock
    )
    record.start()

    attempts: list[dict[str, Any]] = []
    last: dict[str, CommandResult] = {}

    def collect(attempt: Attempt) -> None:
        item = attempt.to_dict()
        item["reason"] = redactor.text(item["reason"])
        result = last.get("result")
        if result is not None:
            item["exit_code"] = result.exit_code if result.exit_code is None or result.exit_code >= 0 else None
            item["output_bytes"] = result.stdout_bytes + result.stderr_bytes
        attempts.append(item)
        if attempt.delay_s is not None:
            record.waiting(attempt.delay_s)
        if on_attempt is not None:
            on_attempt(attempt)

    retrier = Retrier(
        task=task,
        target=target,
        deadline_s=deadline_s,
        max_attempts=max_attempts,
        config=config,
        clock=_StoppableClock(clock, stop),
        rng=rng,
        state=state,
        before_attempt=record.attempt,
        on_attempt=collect,
        ledger=ledger,
        fields={"run_id": run_id, "op": os.path.basename(argv[0])},
    )
    deadline = retrier.deadline_s if retrier.deadline_s is not None else config.retry.deadline_s
    started = clock.monotonic()
    base_env = dict(os.environ if env is None else env)

    def once() -> CommandResult:
        remaining = deadline - (clock.monotonic() - started)
        per_attempt = remaining if timeout_s is None else min(timeout_s, remaining)
        child_env = dict(base_env, SELFHEAL_RUN_ID=run_id, SELFHEAL_ATTEMPT=str(record.data["attempt"]))
        if task is not None:
            child_env["SELFHEAL_TASK"] = task
        result = run_command(
            argv,
            timeout_s=max(per_attempt, 0.001),
            env=child_env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            tail_bytes=proc_cfg.tail_bytes,
            kill_grace_s=proc_cfg.kill_grace_s,
            drain_s=proc_cfg.drain_s,
            stop=stop,
            on_start=record.child_started,
            on_tick=record.tick,
            tick_s=min(1.0, proc_cfg.heartbeat_s),
            clock=clock,
        )
        last["result"] = result
        if result.interrupted_by is not None:
            raise Interrupted(result.interrupted_by)
        if not result.ok:
            failure = Failure.from_command(
                exit_code=result.exit_code,
                stderr_tail=result.text_tail("stderr"),
                stdout_tail=result.text_tail("stdout"),
                timed_out=result.timed_out,
                tail_chars=config.classify.tail_chars,
            )
            raise CommandFailed(result, failure)
        return result

    def outcome(ok: bool, kind: str, stop_reason: str, exc: BaseException | None) -> RunOutcome:
        result = last.get("result")
        code = result.exit_code if result is not None else None
        failed = attempts[-1] if attempts and not ok else None
        return RunOutcome(
            ok=ok,
            outcome=kind,
            stop_reason=stop_reason,
            run_id=run_id,
            task=task,
            target=target,
            argv=safe_argv,
            exit_code=code if code is None or code >= 0 else None,
            signal=(failed or {}).get("signal") if failed else None,
            error_class=(failed or {}).get("error_class"),
            rule=(failed or {}).get("rule"),
            reason=(failed or {}).get("reason") if failed else (redactor.text(str(exc)) if exc else None),
            duration_s=clock.monotonic() - started,
            attempts=attempts,
        )

    try:
        retrier.call(once)
    except CommandFailed as exc:
        result_out = outcome(False, "failed", stop_reason_of(exc) or "failed", exc)
    except Interrupted as exc:
        if not getattr(exc, "selfheal_recorded", False):
            ledger.record(
                "failed",
                task=task,
                target=target,
                reason=str(exc),
                status=STOP_INTERRUPTED,
                attempt=record.data["attempt"],
                run_id=run_id,
            )
        result_out = outcome(False, "interrupted", STOP_INTERRUPTED, exc)
        result_out.signal = exc.signame
        result_out.reason = str(exc)
    else:
        result_out = outcome(True, "succeeded", STOP_SUCCEEDED, None)
    record.finish(result_out.outcome, result_out.exit_code)
    return result_out
