"""A command run under the retry policy: what `retry_run.py` does, as a library call.

Each attempt runs the command in its own process group with its output streamed live; a failure is
classified from its exit code, signal and output tail; the policy decides the wait; the run record
stays current for health checks; and the ledger gets one event per attempt.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    EXIT_FAILED,
    EXIT_NOT_ATTEMPTED,
    EXIT_OK,
    Interrupted,
    LockBusy,
    SelfHealError,
    StateError,
    UnsafeStateError,
)
from ..state.root import StateRoot, file_lock, validate_id
from .breaker import BreakerOpen
from .classify import Failure
from .config import Config, get_config
from .ledger import Ledger
from .process import CommandResult, OutputSink, StopFlag, run_command
from .retrying import STOP_INTERRUPTED, STOP_SUCCEEDED, Attempt, Retrier, stop_reason_of
from .runs import (
    Orphan,
    OrphanRunning,
    RunRecord,
    close_dead,
    new_run_id,
    prune_finished,
    running_for_task,
    setting_remedy,
    stop_orphans,
)

logger = logging.getLogger(__name__)


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
    outcome: str  # succeeded | failed | interrupted | not_attempted
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
    stdout_tail: str = ""  # the last attempt's, decoded; for callers (a workflow step's outputs), not the JSON
    left_behind: list[dict[str, Any]] = field(default_factory=list)  # processes attempts left running
    orphans_stopped: list[Orphan] = field(default_factory=list)  # an earlier run's, found before starting

    @property
    def exit_status(self) -> int:
        if self.ok:
            return EXIT_OK
        return EXIT_NOT_ATTEMPTED if self.outcome == "not_attempted" else EXIT_FAILED

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
            "left_behind": self.left_behind,
            "orphans_stopped": [o.to_dict() for o in self.orphans_stopped],
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
    argv: Sequence[str],
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
    stdout: OutputSink | None = None,
    stderr: OutputSink | None = None,
    stop: StopFlag | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    env: Mapping[str, str] | None = None,
    step: str | None = None,
    run_id: str | None = None,
    lock: bool = True,
    prior_attempts: int = 0,
    before_attempt: Callable[[int], None] | None = None,
    kill_orphans: bool | None = None,
    keep_daemons: bool | None = None,
) -> RunOutcome:
    """Run `argv` until it succeeds or the policy says stop. Raises LockBusy if the task is running
    elsewhere, ConfigError/InvalidIdError for bad input; the command's own failure is in the outcome.

    timeout_s bounds each attempt, deadline_s the whole run (default retry.deadline_s); stdout/stderr
    receive the command's output as it arrives; `stop` (set by a signal handler) interrupts the run.
    For a workflow step: `step` is recorded with every event, `run_id` names the run record, `lock=False`
    leaves the task lock to the caller (and with it the care of earlier runs: their orphans, their
    records, pruning; done once per workflow run, not at every step), `prior_attempts` continues an
    attempt count from before a crash, and `before_attempt(n)` runs before attempt n starts (to persist it).

    With a task, a command an earlier run left running when its runner died is stopped first (or, with
    `kill_orphans=False`, OrphanRunning is raised: exit 4). Processes an attempt leaves behind are
    stopped unless `keep_daemons`; both default to the process.* settings.
    """
    if isinstance(argv, (str, bytes)):  # a Sequence too, of one-letter arguments
        raise TypeError(
            f"argv is a list of arguments, not a command line (got {argv!r}); for a shell line pass ['sh', '-c', LINE]"
        )
    argv = list(argv)  # a tuple too
    if not argv:
        raise ValueError("no command given")
    if task is not None:
        validate_id(task, "task")
    if target is not None:
        validate_id(target, "target")
    if run_id is not None:
        validate_id(run_id, "run")
    config = config or get_config()
    state = _usable_state(state or StateRoot.from_env())
    run = _CommandRun(
        argv,
        task=task,
        target=target,
        timeout_s=timeout_s,
        deadline_s=config.retry.deadline_s if deadline_s is None else deadline_s,
        max_attempts=max_attempts,
        cwd=cwd,
        config=config,
        state=state,
        clock=clock,
        rng=rng,
        stdout=stdout,
        stderr=stderr,
        stop=stop,
        on_attempt=on_attempt,
        env=env,
        step=step,
        run_id=run_id,
        prior_attempts=prior_attempts,
        before_attempt=before_attempt,
        recover=lock,
        kill_orphans=config.process.kill_orphans if kill_orphans is None else kill_orphans,
        keep_daemons=config.process.keep_daemons if keep_daemons is None else keep_daemons,
    )
    try:
        if task is None or not lock:
            return run.execute()
        with file_lock(state.lock_file("task", task), timeout=0, what=f"task {task!r}"):
            return run.execute()
    except OrphanRunning as exc:  # said as the one who turned the stopping off: this caller, or the setting
        raise exc.told("pass kill_orphans=True" if kill_orphans is False else setting_remedy(config.files)) from None
    except LockBusy as exc:  # the task's lock: only with a task
        holder = running_for_task(state, task) if task is not None else None
        if holder is not None:
            pid = holder.supervisor.pid if holder.supervisor else None
            exc.holder = f"run {holder.run_id}, pid {pid}"
            exc.args = (f"task {task!r} is already running ({exc.holder})",)
        raise


def _usable_state(state: StateRoot) -> StateRoot:
    """The state root, its folders made ready. A root that is not the user's own (another user's folder, a
    link where the root should be) is refused; any other problem (a linked or read-only folder, a full disk)
    only costs records, so the command still runs and the problem is reported once."""
    try:
        return state.ensure()
    except UnsafeStateError as exc:
        if exc.path == state.root:
            raise
        state.unrecorded("anything under the state root", exc)
    except StateError as exc:
        state.unrecorded("anything under the state root", exc)
    return state


def recover_runs(
    state: StateRoot, task: str | None, *, kill_orphans: bool, config: Config, clock: Clock = SYSTEM_CLOCK
) -> list[Orphan]:
    """Before a run: prune old finished run records; for a task, stop what an earlier run whose runner
    died left running (one copy only; OrphanRunning if `kill_orphans` is off), then mark those records
    crashed. Returns the orphans stopped."""
    proc = config.process
    prune_finished(state, older_than_s=proc.keep_finished_runs_days * 86400, now=clock.time())
    if task is None:
        return []
    # First what it left running (recorded in its run record, which close_dead clears).
    orphans = stop_orphans(state, task, kill=kill_orphans, grace_s=proc.kill_grace_s, clock=clock)
    close_dead(state, task, now=clock.time())  # an earlier run of this task whose process died says so now
    return orphans


def _exit_code(result: CommandResult | None) -> int | None:
    """The command's own exit code; None if it never ran or a signal ended it (that is in `signal`)."""
    if result is None or result.exit_code is None or result.exit_code < 0:
        return None
    return result.exit_code


class _CommandRun:
    """One retry_run: the run record, the ledger, the retrier, and what each attempt did."""

    def __init__(
        self,
        argv: list[str],
        *,
        task: str | None,
        target: str | None,
        timeout_s: float | None,
        deadline_s: float,
        max_attempts: int | None,
        cwd: str | None,
        config: Config,
        state: StateRoot,
        clock: Clock,
        rng: random.Random | None,
        stdout: OutputSink | None,
        stderr: OutputSink | None,
        stop: StopFlag | None,
        on_attempt: Callable[[Attempt], None] | None,
        env: Mapping[str, str] | None,
        step: str | None = None,
        run_id: str | None = None,
        prior_attempts: int = 0,
        before_attempt: Callable[[int], None] | None = None,
        recover: bool = True,
        kill_orphans: bool = True,
        keep_daemons: bool = False,
    ) -> None:
        self.recover, self.kill_orphans, self.keep_daemons = recover, kill_orphans, keep_daemons
        self.orphans: list[Orphan] = []
        self.left_behind: list[dict[str, Any]] = []
        self.argv, self.task, self.target, self.cwd = argv, task, target, cwd
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.config, self.state, self.clock = config, state, clock
        self.stdout, self.stderr, self.stop, self.on_attempt = stdout, stderr, stop, on_attempt
        self.env = dict(os.environ if env is None else env)
        self.ledger = Ledger(state, config, clock=clock)
        self.redactor = self.ledger.redactor
        self.safe_argv = self.redactor.argv(argv)
        self.run_id = run_id or new_run_id(task, clock.time())
        self.before_attempt = before_attempt
        self.record = RunRecord(
            state,
            run_id=self.run_id,
            task=task,
            target=target,
            argv=self.safe_argv,
            heartbeat_s=config.process.heartbeat_s,
            clock=clock,
        )
        self.attempts: list[dict[str, Any]] = []
        self.last: CommandResult | None = None
        self.started = clock.monotonic()
        self.retrier = Retrier(
            task=task,
            target=target,
            step=step,
            deadline_s=deadline_s,
            max_attempts=max_attempts,
            config=config,
            clock=_StoppableClock(clock, stop),
            rng=rng,
            state=state,
            before_attempt=self._before_attempt,
            on_attempt=self._attempted,
            ledger=self.ledger,
            fields={"run_id": self.run_id, "op": os.path.basename(argv[0])},
            breaker=target is not None,
            prior_attempts=prior_attempts,
        )

    def execute(self) -> RunOutcome:
        if self.recover:
            self.orphans = recover_runs(
                self.state, self.task, kill_orphans=self.kill_orphans, config=self.config, clock=self.clock
            )
        self.record.start()
        self.started = self.clock.monotonic()
        try:
            self.retrier.call(self._once)
        except BreakerOpen as exc:  # refused before the first attempt: nothing ran
            outcome = self._outcome("not_attempted", "breaker_open")
            outcome.reason = str(exc)
        except CommandFailed as exc:
            outcome = self._outcome("failed", stop_reason_of(exc) or "failed")
        except Interrupted as exc:
            if not getattr(exc, "selfheal_recorded", False):  # it came during a wait, not an attempt
                self.ledger.record(
                    "failed",
                    task=self.task,
                    target=self.target,
                    reason=str(exc),
                    status=STOP_INTERRUPTED,
                    attempt=self.record.data.attempt,
                    run_id=self.run_id,
                )
            outcome = self._outcome("interrupted", STOP_INTERRUPTED)
            outcome.signal, outcome.reason = exc.signame, str(exc)
        else:
            outcome = self._outcome("succeeded", STOP_SUCCEEDED)
        self.record.finish(outcome.outcome, outcome.exit_code)
        return outcome

    def _once(self) -> CommandResult:
        """One attempt: run the command within what is left of the deadline; raise if it failed."""
        remaining = self.deadline_s - (self.clock.monotonic() - self.started)
        per_attempt = remaining if self.timeout_s is None else min(self.timeout_s, remaining)
        env = dict(self.env, SELFHEAL_RUN_ID=self.run_id, SELFHEAL_ATTEMPT=str(self.record.data.attempt))
        if self.task is not None:
            env["SELFHEAL_TASK"] = self.task
        proc = self.config.process
        result = self.last = run_command(
            self.argv,
            timeout_s=max(per_attempt, 0.001),
            env=env,
            cwd=self.cwd,
            stdout=self.stdout,
            stderr=self.stderr,
            tail_bytes=proc.tail_bytes,
            kill_grace_s=proc.kill_grace_s,
            drain_s=proc.drain_s,
            stop=self.stop,
            on_start=self.record.child_started,
            on_tick=self.record.tick,
            tick_s=min(1.0, proc.heartbeat_s),
            keep_daemons=self.keep_daemons,
            clock=self.clock,
        )
        for item in result.left_behind:
            cmd = self.redactor.text(item.cmd)
            self.left_behind.append(dict(item.to_dict(), cmd=cmd, attempt=self.record.data.attempt))
            logger.warning(
                "%sthe command left pid %d (%s) running: %s",
                f"task {self.task}: " if self.task else "",
                item.pid,
                cmd,
                "stopped" if item.stopped else "left running (keep_daemons)",
            )
        if result.interrupted_by is not None:
            raise Interrupted(result.interrupted_by)
        if not result.ok:
            failure = Failure.from_command(
                exit_code=result.exit_code,
                stderr_tail=result.text_tail("stderr"),
                stdout_tail=result.text_tail("stdout"),
                timed_out=result.timed_out,
                tail_chars=self.config.classify.tail_chars,
            )
            raise CommandFailed(result, failure)
        return result

    def _before_attempt(self, number: int) -> None:
        if self.before_attempt is not None:
            self.before_attempt(number)
        self.record.attempt(number)

    def _attempted(self, attempt: Attempt) -> None:
        item = attempt.to_dict()
        item["reason"] = self.redactor.text(item["reason"])
        if self.last is not None:
            item["exit_code"] = _exit_code(self.last)
            item["output_bytes"] = self.last.stdout_bytes + self.last.stderr_bytes
        self.attempts.append(item)
        if attempt.delay_s is not None:
            self.record.waiting(attempt.delay_s)
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    def _outcome(self, kind: str, stop_reason: str) -> RunOutcome:
        ok = kind == "succeeded"
        failed = self.attempts[-1] if self.attempts and not ok else {}
        return RunOutcome(
            ok=ok,
            outcome=kind,
            stop_reason=stop_reason,
            run_id=self.run_id,
            task=self.task,
            target=self.target,
            argv=self.safe_argv,
            exit_code=_exit_code(self.last),
            signal=failed.get("signal"),
            error_class=failed.get("error_class"),
            rule=failed.get("rule"),
            reason=failed.get("reason"),
            duration_s=self.clock.monotonic() - self.started,
            attempts=self.attempts,
            stdout_tail=self.last.text_tail("stdout") if self.last is not None else "",
            left_behind=self.left_behind,
            orphans_stopped=self.orphans,
        )
