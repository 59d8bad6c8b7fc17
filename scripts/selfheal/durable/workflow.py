"""Multi-step tasks that survive crashes: run steps in order, checkpoint each, resume where it stopped,
compensate in reverse when it cannot finish, and hand a person an incident when nothing else helps.

Steps are commands (a YAML plan, `workflow.py run PLAN.yaml`) or Python functions (`Workflow`). One
engine runs both:

- Before a step starts, its checkpoint says it is running, with its attempt count; after it ends, the
  checkpoint says done, with its outputs. Both writes are durable, so a crash never repeats a completed
  step and never resets a step's retry budget.
- On the next run with the same task id, completed steps are skipped. A step that was in flight runs
  again (at least once): first the child process it left behind, if still alive, is stopped (matched
  by pid and start time, never by name); unless the step declared `complete_if_outputs_exist` and its
  output files are all there.
- A step that fails for good (not retryable, or retries spent) stops the task: the completed steps'
  compensations run in reverse order, an incident is written with the exact command that resumes the
  task, and an optional notification is sent. Steps that were compensated run again on resume.
- A task resumed more than `workflows.max_resumes_without_progress` times without a step completing
  is parked as dead-letter with an incident, instead of looping through cron forever.
- A step may name the earlier steps it waits for (`after: [a, b]`; without it, the step before it). In
  a plan where some step does, each step starts once those are done, up to `workflows.max_parallel` at
  a time, each in a thread (saves serialized under one lock); a failure stops new starts, lets the
  running steps finish, and compensation undoes the finished steps in the reverse order they finished.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import logging
import math
import os
import re
import shlex
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar, overload

from ..clock import SYSTEM_CLOCK, Clock, utc_iso
from ..core.breaker import BreakerOpen
from ..core.classify import safe_str
from ..core.config import CONFIG_MAX_BYTES, Config, Marks, get_config, read_yaml
from ..core.ledger import Ledger
from ..core.process import OutputSink, StopFlag
from ..core.retrying import Retrier, attempts_of, stop_reason_of
from ..core.runner import RunOutcome, recover_runs, run_with_retry
from ..core.runs import OrphanRunning, new_run_id, setting_remedy, stop_orphans
from ..errors import (
    EXIT_FAILED,
    EXIT_NOT_ATTEMPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    ConfigError,
    Interrupted,
    StateError,
    UsageError,
)
from ..state.checkpoints import PlanRef, key_order
from ..state.redact import active as redactor
from ..state.root import (
    NotRegularFile,
    StateRoot,
    file_lock,
    lock_is_held,
    open_regular,
    read_input,
    validate_id,
    write_json,
)
from .checkpoint import (
    COMPENSATED,
    COMPENSATION_FAILED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    TASK_COMPENSATING,
    TASK_COMPLETED,
    TASK_DEAD_LETTER,
    TASK_FAILED,
    TASK_INTERRUPTED,
    TASK_RUNNING,
    Checkpoint,
    Checkpoints,
    CheckpointUnreadable,
    StepRecord,
)
from .incident import Incident, new_incident_id, notify, write_incident

SCRIPTS = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)
_OUTPUT_NAMES = ("stdout", "files")
# What the ledger's `step` says for a step's compensation and fallback (`fetch/compensate`): a step's name never
# holds `/` (validate_id, load_plan), so no step of the user's can read as one (`fetch.compensate` could be a
# step of its own). observe/logscan.py reads them by the same mark.
COMPENSATION_STEP = "/compensate"
FALLBACK_STEP = "/fallback"
# A step's outputs live in its checkpoint, which every resume reads whole: more than this (as JSON) fails the
# step, as a payload over Temporal's limit does, so the checkpoint stays far below the state-file limit
# (state.root.MAX_STATE_FILE_BYTES: a bigger checkpoint could never be read again, and its two slots hold
# the document twice over).
MAX_STEP_OUTPUTS_BYTES = 1024 * 1024
# And all of a task's steps together: the checkpoint file holds the document about four times over.
MAX_TASK_OUTPUTS_BYTES = 8 * 1024 * 1024
# Nesting deeper than this in a function step's outputs is kept as text (JSON's writer would overflow the stack).
_MAX_OUTPUT_DEPTH = 100


# A function step given a timeout (a Plan built by hand: Workflow.step takes none). There is no sound way to
# bound it: a Python thread cannot be stopped from outside, and abandoning it while the workflow compensates
# would undo the step's effects as it goes on making them. A command is its own process group, which a
# timeout kills.
_NO_FUNCTION_TIMEOUT = (
    "step {step!r} of workflow {workflow!r}: a function step cannot have a timeout (a Python function cannot be "
    "stopped safely from outside); run the work as a command step, whose timeout kills its process group, or "
    "bound it inside the function (a client's own timeout, or selfheal.run_with_retry(argv, timeout_s=...))"
)


class PlanError(ConfigError):
    """A plan file is wrong; the message names the file, line, step and key."""


class PlanChanged(UsageError):
    """The plan's steps are not the ones the checkpoint was made with."""


# -- steps ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command: an argv list, or a shell string (only when the plan says `shell:` explicitly)."""

    argv: tuple[str, ...] = ()
    shell: str | None = None

    def to_argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.shell] if self.shell is not None else list(self.argv)

    def describe(self) -> str:
        return self.shell if self.shell is not None else shlex.join(self.argv)


StepFunction = Callable[["StepContext"], Any]
# A step function as the user typed it: the decorator gives it back with its own type.
_F = TypeVar("_F", bound=StepFunction)


@dataclass(frozen=True)
class Step:
    """One named step: what it runs, how it is undone, and what it leaves for later steps."""

    name: str
    run: Command | StepFunction
    compensate: Command | StepFunction | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    keep_stdout: bool = False
    output_files: tuple[str, ...] = ()
    complete_if_outputs_exist: bool = False
    inputs: tuple[tuple[str, str], ...] = ()  # (step, output) pairs this step reads
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    # Run when the step fails for good: its result stands in for the step's (cached data, a simpler result),
    # and the step is marked as done by its fallback (the second document's FallbackChain for a step).
    fallback: Command | StepFunction | None = None
    # What the step talks to: each attempt passes that target's circuit breaker, shared with every other
    # process (the second document's engine: a breaker per step). Open: the run pauses, exit 4.
    target: str | None = None
    # The earlier steps this one waits for (`after: [a, b]`); None: the step just before it, as always.
    # A plan where any step says `after` runs each step once its own are done, several at once
    # (workflows.max_parallel); `after: []` starts at once.
    after: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    steps: tuple[Step, ...]
    path: Path | None = None
    digest: str | None = None
    notify: tuple[str, ...] | None = None

    @property
    def parallel(self) -> bool:
        """Some step names what it waits for: steps whose waits are over run at the same time."""
        return any(s.after is not None for s in self.steps)

    def waits_for(self) -> dict[str, tuple[str, ...]]:
        """Each step's dependencies: its `after` (or the step before it) and the steps it reads from."""
        waits: dict[str, tuple[str, ...]] = {}
        previous: tuple[str, ...] = ()
        for step in self.steps:
            own = step.after if step.after is not None else previous
            waits[step.name] = tuple(dict.fromkeys([*own, *(source for source, _ in step.inputs)]))
            previous = (step.name,)
        return waits


@dataclass
class StepContext:
    """What a function step gets: who it is, which attempt this is, and what earlier steps produced."""

    task: str
    step: str
    attempt: int
    idempotency_key: str
    outputs: dict[str, dict[str, Any]]


# -- plans from YAML --------------------------------------------------------------------------------------

_STEP_KEYS = {
    "name",
    "run",
    "shell",
    "compensate",
    "compensate_shell",
    "timeout",
    "retry",
    "outputs",
    "complete_if_outputs_exist",
    "inputs",
    "cwd",
    "env",
    "fallback",
    "fallback_shell",
    "target",
    "after",
}


def load_plan(path: Path) -> Plan:
    """Read and check a plan file; every problem is a PlanError naming the file, line, step and key."""
    where, changed = _utf8(str(path.absolute()))
    if changed:  # a folder named in another encoding: the checkpoint and the resume command could not name it
        raise PlanError(f"its path is not UTF-8 text ({where}); rename the file or its folder", file=path)
    marks: Marks = {}
    try:
        data = read_yaml(path, marks)
    except ConfigError as exc:
        raise PlanError(exc.detail, file=exc.file, key=exc.key, line=exc.line, column=exc.column) from None
    try:
        # The user's file, wherever it is: its folder is never checked or changed (that is for state folders).
        text = read_input(path, CONFIG_MAX_BYTES, what="plan")
    except (OSError, StateError) as exc:
        raise PlanError(f"cannot read it again: {exc}", file=path) from None

    def fail(key: str, message: str, value: object = None, *, at: str | None = None) -> PlanError:
        """The error for `key`, at the line of `at` (the key's own line when not given)."""
        mark = marks.get(key if at is None else at)
        shown = f", got {value!r}" if value is not None else ""
        return PlanError(
            message + shown, file=path, key=key, line=mark[1] if mark else None, column=mark[2] if mark else None
        )

    if not isinstance(data, dict):
        raise fail("", "a plan is a mapping with a `steps` list")
    unknown = sorted(set(data) - {"name", "steps", "notify"})
    if unknown:
        # The key is named in the message, not as the key path: `token: unknown key` reads to the redactor as
        # a secret and its value.
        raise fail("", f"unknown key {unknown[0]!r} (a plan has name, steps, notify)", at=unknown[0])
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise fail("steps", "must be a non-empty list of steps")
    steps: list[Step] = []
    seen: dict[str, int] = {}
    # Every step's position, so an input naming a later step is reported as the cycle it is.
    positions = {
        raw["name"]: i
        for i, raw in reversed(list(enumerate(steps_data)))
        if isinstance(raw, dict) and isinstance(raw.get("name"), str)
    }
    for i, raw in enumerate(steps_data):
        where = f"steps[{i}]"
        if not isinstance(raw, dict):
            raise fail(where, "a step is a mapping with at least `name` and `run`")
        name = raw.get("name")
        label = f"{where} ({name})" if isinstance(name, str) else where
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", name):
            raise fail(f"{where}.name", "a step needs a name of letters, digits, . _ -", name)
        if name in seen:
            raise fail(f"{where}.name", f"duplicate step name (also steps[{seen[name]}])", name)
        seen[name] = i
        extra = sorted(set(raw) - _STEP_KEYS)
        if extra:
            raise fail(
                where,
                f"unknown key {extra[0]!r} in step {name!r} (a step has {', '.join(sorted(_STEP_KEYS))})",
                at=f"{where}.{extra[0]}",
            )
        run = _command(raw, "run", "shell", where=where, label=label, fail=fail)
        if run is None:
            raise fail(f"{where}.run", f'{label}: missing command (run: [argv...], or shell: "...")')
        compensate = _command(raw, "compensate", "compensate_shell", where=where, label=label, fail=fail)
        fallback = _command(raw, "fallback", "fallback_shell", where=where, label=label, fail=fail)
        timeout = raw.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise fail(f"{where}.timeout", f"{label}: must be a number of seconds above 0 (finite)", timeout)
        retry = raw.get("retry") or {}
        if not isinstance(retry, dict) or set(retry) - {"max_attempts", "retries"} or len(retry) > 1:
            raise fail(
                f"{where}.retry",
                f"{label}: must be a mapping with max_attempts (every try) or retries (tries after the first)",
                retry,
            )
        max_attempts = retry.get("max_attempts")
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise fail(f"{where}.retry.max_attempts", f"{label}: must be a whole number >= 1", max_attempts)
        retries = retry.get("retries")
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise fail(f"{where}.retry.retries", f"{label}: must be a whole number >= 0", retries)
            max_attempts = retries + 1
        outputs = raw.get("outputs") or {}
        if not isinstance(outputs, dict) or set(outputs) - set(_OUTPUT_NAMES):
            raise fail(
                f"{where}.outputs", f"{label}: must be a mapping with stdout (true/false) and files (a list)", outputs
            )
        files = outputs.get("files") or []
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            raise fail(f"{where}.outputs.files", f"{label}: must be a list of file paths", files)
        keep_stdout = outputs.get("stdout", False)
        if not isinstance(keep_stdout, bool):
            raise fail(f"{where}.outputs.stdout", f"{label}: must be true or false", keep_stdout)
        done_if = raw.get("complete_if_outputs_exist", False)
        if not isinstance(done_if, bool) or (done_if and not files):
            raise fail(
                f"{where}.complete_if_outputs_exist",
                f"{label}: must be true or false, and needs outputs.files",
                done_if,
            )
        inputs = _inputs(
            raw.get("inputs") or [], where=where, label=label, positions=positions, earlier=steps, fail=fail
        )
        after = _after(raw.get("after"), where=where, label=label, positions=positions, mine=i, fail=fail)
        target = raw.get("target")
        if target is not None and (
            not isinstance(target, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", target)
        ):
            raise fail(f"{where}.target", f"{label}: a breaker's name, of letters, digits, . _ -", target)
        cwd = raw.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
            raise fail(f"{where}.cwd", f"{label}: must be a folder path (with no NUL character)", cwd)
        env = raw.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, (str, int, float)) and not isinstance(v, bool)
            for k, v in env.items()
        ):
            raise fail(f"{where}.env", f"{label}: must map names to values", env)
        if any("\0" in f"{k}{v}" for k, v in env.items()):
            raise fail(f"{where}.env", f"{label}: a name or value holds a NUL character, which no command can be given")
        steps.append(
            Step(
                name=name,
                run=run,
                compensate=compensate,
                timeout_s=float(timeout) if timeout else None,
                max_attempts=max_attempts,
                keep_stdout=keep_stdout,
                output_files=tuple(files),
                complete_if_outputs_exist=done_if,
                inputs=inputs,
                cwd=cwd,
                env={k: str(v) for k, v in env.items()},
                fallback=fallback,
                target=target,
                after=after,
            )
        )
    plan_name = data.get("name") or path.stem
    if not isinstance(plan_name, str):
        raise fail("name", "must be a string", plan_name)
    template = data.get("notify")
    if template is not None and (not isinstance(template, list) or not all(isinstance(a, str) for a in template)):
        raise fail("notify", "must be an argv list, e.g. [openclaw, message, send, --text, '{summary}']", template)
    import hashlib  # noqa: PLC0415 - OpenSSL's 2.5 ms: only a plan loaded needs it, not `tasks.py list`

    return Plan(
        plan_name,
        tuple(steps),
        path.resolve(),
        hashlib.sha256(text).hexdigest(),
        tuple(template) if template is not None else None,
    )


def _command(
    raw: dict[str, Any], argv_key: str, shell_key: str, *, where: str, label: str, fail: Callable[..., PlanError]
) -> Command | None:
    argv, shell = raw.get(argv_key), raw.get(shell_key)
    if argv is not None and shell is not None:
        raise fail(f"{where}.{shell_key}", f"{label}: give {argv_key} (an argv list) or {shell_key}, not both")
    if shell is not None:
        if not isinstance(shell, str) or not shell.strip():
            raise fail(f"{where}.{shell_key}", f"{label}: must be a shell command string", shell)
        if "\0" in shell:
            raise fail(f"{where}.{shell_key}", f"{label}: holds a NUL character, which no command can be given")
        return Command(shell=shell)
    if argv is None:
        return None
    if not isinstance(argv, list) or not argv:
        raise fail(
            f"{where}.{argv_key}", f"{label}: must be a non-empty argv list (use {shell_key}: for a shell string)", argv
        )
    for j, item in enumerate(argv):
        if not isinstance(item, str):
            # YAML reads `true`, `1` and `~` as a boolean, a number and null: quote them to pass them as text.
            raise fail(
                f"{where}.{argv_key}[{j}]",
                f"{label}: an argv item must be a string (quote it: '{json.dumps(item)}')",
                item,
            )
        if "\0" in item:
            raise fail(f"{where}.{argv_key}[{j}]", f"{label}: holds a NUL character, which no command can be given")
    return Command(argv=tuple(argv))


def _after(
    raw: object,
    *,
    where: str,
    label: str,
    positions: Mapping[str, int],
    mine: int,
    fail: Callable[..., PlanError],
) -> tuple[str, ...] | None:
    """`after: [a, b]`: earlier steps this one waits for (a list, so the plan stays a list read top down)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise fail(f"{where}.after", f"{label}: must be a list of earlier steps' names, e.g. [fetch, parse]", raw)
    names: list[str] = []
    for j, name in enumerate(raw):
        key = f"{where}.after[{j}]"
        if not isinstance(name, str) or name not in positions:
            raise fail(key, f"{label}: no step named {name!r}", name)
        if positions[name] >= mine:
            raise fail(
                key,
                f"{label}: a cycle: {name!r} is not an earlier step (list a step after the ones it waits for)",
                name,
            )
        if name in names:
            raise fail(key, f"{label}: {name!r} is listed twice", name)
        names.append(name)
    return tuple(names)


def _inputs(
    raw: object,
    *,
    where: str,
    label: str,
    positions: Mapping[str, int],
    earlier: Sequence[Step],
    fail: Callable[..., PlanError],
) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise fail(f"{where}.inputs", f"{label}: must be a list like [fetch.stdout]", raw)
    out = []
    variables: dict[str, str] = {}  # each input's variable -> the input that has it
    mine = len(earlier)
    for j, ref in enumerate(raw):
        key = f"{where}.inputs[{j}]"
        # The output is what follows the last dot: a step's name may hold dots itself (`fetch.v2.stdout`).
        if not isinstance(ref, str) or "." not in ref:
            raise fail(key, f"{label}: an input is STEP.OUTPUT, e.g. fetch.stdout", ref)
        step, _, output = ref.rpartition(".")
        if step not in positions:
            raise fail(key, f"{label}: no step named {step!r}", ref)
        if positions[step] >= mine:
            raise fail(
                key, f"{label}: a cycle: {step!r} does not run before this step, so its outputs do not exist yet", ref
            )
        source = earlier[positions[step]]
        if (
            output not in _OUTPUT_NAMES
            or (output == "stdout" and not source.keep_stdout)
            or (output == "files" and not source.output_files)
        ):
            raise fail(key, f"{label}: step {step!r} declares no output {output!r}", ref)
        # Names differing only in case or in `-` against `_` give one variable: one value would silently
        # stand in for the other.
        variable = _env_name(step, output)
        if variable in variables and variables[variable] != ref:
            raise fail(key, f"{label}: {ref!r} and {variables[variable]!r} would both be ${variable}; rename a step")
        variables[variable] = ref
        out.append((step, output))
    return tuple(out)


# -- results ---------------------------------------------------------------------------------------------


@dataclass
class StepReport:
    name: str
    state: str
    attempts: int
    duration_s: float | None
    exit_code: int | None
    error_class: str | None
    reason: str | None
    outputs: dict[str, Any]
    converted: list[str] = field(default_factory=list)  # outputs that were not JSON, kept as their text
    fallback: bool = False  # done by its fallback, not by itself: a fallback result


@dataclass
class WorkflowResult:
    task: str
    status: str  # completed | failed | interrupted | dead_letter | not_attempted
    steps: list[StepReport]
    resumed: bool
    message: str
    incident: str | None = None
    compensated: list[str] = field(default_factory=list)
    compensation_failures: list[str] = field(default_factory=list)
    already_completed: bool = False  # the task id had completed before: nothing ran this time
    resume_command: str | None = None  # what resumes the task once the cause is fixed (as its incident says)

    @property
    def exit_status(self) -> int:
        if self.status == TASK_COMPLETED:
            # Nothing ran: a cron line with a fixed --task would otherwise look fine forever (see
            # task_id_from_template), so this is a problem found (1), not a success.
            return EXIT_PROBLEMS if self.already_completed else EXIT_OK
        return EXIT_NOT_ATTEMPTED if self.status == "not_attempted" else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.status == TASK_COMPLETED and not self.already_completed,
            "task": self.task,
            "status": self.status,
            "already_completed": self.already_completed,
            "message": self.message,
            "resumed": self.resumed,
            "incident": self.incident,
            "compensated": self.compensated,
            "compensation_failures": self.compensation_failures,
            "resume_command": self.resume_command,
            "steps": [vars(s) for s in self.steps],
        }


@dataclass(frozen=True)
class Progress:
    """An event for a progress display: a step starting, ending, skipped, or being compensated."""

    kind: str  # start | done | skip | failed | compensate
    index: int  # 1-based
    total: int
    step: str
    detail: str = ""
    elapsed_s: float | None = None


# -- the engine ------------------------------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(
        self, error_class: str | None, reason: str, exit_code: int | None = None, status: str | None = None
    ) -> None:
        self.error_class = error_class
        self.reason = reason
        self.exit_code = exit_code
        self.status = status
        super().__init__(reason)


class _Paused(Exception):
    """The step could not start now (a breaker is open): stop, nothing failed, try later."""


def _now_iso(clock: Clock) -> str:
    return utc_iso(clock.time())


class WorkflowRunner:
    """Runs one task of a plan to completion, or to a clean stop, keeping its checkpoint current."""

    def __init__(
        self,
        plan: Plan,
        task: str,
        *,
        config: Config | None = None,
        state: StateRoot | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stop: StopFlag | None = None,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        progress: Callable[[Progress], None] | None = None,
        resume_command: str | None = None,
    ) -> None:
        for step in plan.steps:
            if step.timeout_s is not None and not isinstance(step.run, Command):
                raise UsageError(_NO_FUNCTION_TIMEOUT.format(step=step.name, workflow=plan.name))
        self.plan = plan
        self.task = validate_id(task, "task")
        self.config = config or get_config()
        self.state = (state or StateRoot.from_env()).ensure()
        self.clock = clock
        self.stop = stop
        self.stdout = stdout
        self.stderr = stderr
        self.progress = progress or (lambda event: None)
        self.checkpoints = Checkpoints(self.state)
        self.ledger = Ledger(self.state, self.config, clock=clock)
        self._own_resume = resume_command is None  # ours: `--from STEP` can be added to it
        self.resume_command = resume_command or self._default_resume_command()
        self.data = self._fresh()
        self._done_outputs: dict[str, dict[str, Any]] | None = None
        self._output_sizes: dict[str, int] | None = None  # of the steps done, as JSON; and their sum:
        self._outputs_total = 0
        self._stalled_before = 0  # resumes_without_progress before this run counted itself
        # Steps of a parallel plan run in threads: the checkpoint (its journal) and the outputs are changed
        # under this lock, so saves are written one at a time and each sees whole records.
        self._lock = threading.RLock()

    @property
    def _python(self) -> bool:
        """A Workflow of Python functions, run by Workflow.run or WorkflowRunner.run: its messages name their
        arguments (restart=True, from_step=), not workflow.py's flags, which run no such workflow."""
        return self.plan.path is None

    def _default_resume_command(self) -> str:
        if self._python:
            return f"(re-run the Python workflow {self.plan.name!r} with task={self.task!r})"
        script = SCRIPTS / "workflow.py"
        return shlex.join(["python3", str(script), "run", str(self.plan.path), "--task", self.task])

    def _resume_at(self, step: str | None) -> str:
        """The command that runs the task again from `step`, keeping the steps done: what resumes a parked
        (dead-letter) task, which the plain command only reports as parked again. A caller's own resume
        command is kept as it is."""
        if step is None or not self._own_resume:
            return self.resume_command
        if self._python:
            return f"(re-run the Python workflow {self.plan.name!r} with task={self.task!r}, from_step={step!r})"
        return f"{self.resume_command} --from {shlex.quote(step)}"

    # -- the checkpoint ----------------------------------------------------------------------------------

    def _fresh(self) -> Checkpoint:
        now = _now_iso(self.clock)
        return Checkpoint(
            task=self.task,
            plan=PlanRef(self.plan.name, str(self.plan.path) if self.plan.path else None, self.plan.digest),
            order=[s.name for s in self.plan.steps],
            steps={s.name: StepRecord() for s in self.plan.steps},
            created=now,
            updated=now,
        )

    def _save(self, *steps: str) -> None:
        """Durably. `steps`: saving after a change to these steps only (and the task's own fields), which
        costs the size of the change; with none named, the whole checkpoint is written."""
        with self._lock:
            self.data.updated = _now_iso(self.clock)
            if not steps:
                self._done_outputs = self._output_sizes = None  # anything may have changed
            self.checkpoints.save(self.task, self.data, steps if steps else None)

    def _save_task(self) -> None:
        """Durably, after a change to the task's own fields only (status, counters), not to any step."""
        with self._lock:
            self.data.updated = _now_iso(self.clock)
            self.checkpoints.save(self.task, self.data, ())

    def _step(self, name: str) -> StepRecord:
        return self.data.steps[name]

    def _outputs(self) -> dict[str, dict[str, Any]]:
        """The outputs of the steps done so far (a copy; kept up to date as steps finish, so a step of a
        10,000-step plan does not walk every step to find them)."""
        with self._lock:
            if self._done_outputs is None:
                steps = self.data.steps
                self._done_outputs = {n: steps[n].outputs for n in self.data.order if steps[n].state == DONE}
            return dict(self._done_outputs)

    def _function_outputs(self, extra: Mapping[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """The outputs of the steps done (and `extra`) as a function's ctx.outputs: a copy all the way down.
        A step may change what it was given; the done steps' own outputs (what later steps read, what their
        compensation is given, what the checkpoint keeps) must stay what those steps returned, as a resume
        after a crash reads them. They are JSON, so a JSON round trip copies them, in C."""
        outputs = {**self._outputs(), **(extra or {})}
        copied: dict[str, dict[str, Any]] = json.loads(json.dumps(outputs, ensure_ascii=False))
        return copied

    # -- run --------------------------------------------------------------------------------------------

    def run(self, *, from_step: str | None = None, restart: bool = False) -> WorkflowResult:
        """Run (or resume) the task. One run per task at a time: another one raises LockBusy (exit 4)."""
        if from_step is not None and from_step not in {s.name for s in self.plan.steps}:
            if self._python:
                raise UsageError(f"from_step={from_step!r}: workflow {self.plan.name!r} has no step of that name")
            raise UsageError(f"--from: the plan has no step named {from_step!r}")
        with file_lock(self.state.lock_file("workflow", self.task), timeout=0, what=f"task {self.task!r}"):
            return self._run(from_step=from_step, restart=restart)

    def _run(self, *, from_step: str | None, restart: bool) -> WorkflowResult:
        if restart:
            self.checkpoints.remove(self.task)
        try:
            existing = self.checkpoints.load(self.task)
        except CheckpointUnreadable as exc:
            if not self._python:
                raise
            raise CheckpointUnreadable(exc.task, exc.cause, python=True) from exc.__cause__
        self._done_outputs = self._output_sizes = None
        resumed = existing is not None
        self.data = existing if existing is not None else self._fresh()
        if existing is not None:
            self._check_same_steps()
            status = self.data.status
            if status == TASK_COMPLETED and from_step is None:
                again = (
                    "restart=True; for a scheduled run, give each run its own task id, e.g. "
                    "task=f'NAME-{datetime.date.today()}'"
                    if self._python
                    else "--restart (or `workflow.py reset TASK`); for a cron line, give each run its own id, "
                    "e.g. --task 'NAME-{date}'"
                )
                result = self._result(
                    TASK_COMPLETED,
                    resumed,
                    f"already completed at {self.data.updated}; nothing was run. To run it again: {again}",
                )
                result.already_completed = True
                return result
            if status == TASK_DEAD_LETTER and from_step is None:  # --from is a person's explicit restart
                how = (
                    "(from_step=: the steps done are kept), or with restart=True to start over"
                    if self._python
                    else "(--from: the steps done are kept), or `workflow.py reset` to start over"
                )
                result = self._result(
                    TASK_DEAD_LETTER,
                    resumed,
                    "parked as dead-letter; read its incident, fix the cause, then run it again from the step it "
                    f"was stuck on {how}",
                )
                result.resume_command = self._resume_at(self.data.first_unfinished())
                return result
        if from_step is not None:
            self._restart_from(from_step)
        self.data.runs += 1
        self._stalled_before = self.data.resumes_without_progress
        if resumed:
            stalled = self._count_resume()
            if stalled:
                return self._dead_letter()
        # First what a dead run left running (a step's command, or a compensation's) is stopped: nothing runs
        # twice at once.
        self._recover_in_flight()
        if self.data.status == TASK_COMPENSATING:  # a crash during compensation: finish it first
            return self._fail(None, _StepFailed(None, "resumed an interrupted compensation"), resumed)
        if self.data.status == TASK_FAILED:
            self._reopen_failed()
        self.data.status = TASK_RUNNING
        self._save()
        if self.plan.parallel:
            return self._run_parallel(resumed)
        total = len(self.plan.steps)
        for index, step in enumerate(self.plan.steps, 1):
            record = self._step(step.name)
            if record.state == DONE:
                self.progress(Progress("skip", index, total, step.name, "done earlier"))
                continue
            started = self.clock.monotonic()
            self.progress(Progress("start", index, total, step.name))
            try:
                self._run_step(step, record)
            except (Interrupted, KeyboardInterrupt) as exc:
                record.state = PENDING  # it did not finish; it runs again next time
                self.data.status = TASK_INTERRUPTED
                self._save(step.name)
                self.progress(Progress("failed", index, total, step.name, str(exc), self.clock.monotonic() - started))
                why = str(exc) or "interrupted"
                return self._result(TASK_INTERRUPTED, resumed, f"{why} during step {step.name!r}; run again to resume")
            except _Paused as exc:
                record.state = PENDING
                self._not_counted()
                self._save(step.name)
                self.progress(Progress("failed", index, total, step.name, str(exc)))
                return self._result("not_attempted", resumed, f"step {step.name!r} not attempted: {exc}; try later")
            except _StepFailed as exc:
                self.progress(Progress("failed", index, total, step.name, exc.reason, self.clock.monotonic() - started))
                return self._fail(step, exc, resumed)
            self.progress(Progress("done", index, total, step.name, elapsed_s=record.duration_s))
        self.data.status = TASK_COMPLETED
        self.data.resumes_without_progress = 0
        self._save_task()
        return self._result(TASK_COMPLETED, resumed, f"completed all {total} steps")

    def _run_parallel(self, resumed: bool) -> WorkflowResult:
        """A plan whose steps say what they wait for: each step starts once those are done, up to
        workflows.max_parallel at a time, each in a thread of its own (a command step's process is its
        own). A step that fails for good stops new steps from starting; the running ones finish (a stop
        signal reaches their processes through the run's stop flag), then every step that finished is
        compensated, last finished first. A crash leaves the running ones marked running: the next run
        stops what they left behind and runs only those again."""
        waits = self.plan.waits_for()
        total = len(self.plan.steps)
        index = {s.name: i for i, s in enumerate(self.plan.steps, 1)}
        pending: list[Step] = []
        # Steps done and saved: a step's record says done a moment before its thread has saved it and
        # published its outputs, so what waits for it goes by this set, filled as each thread ends.
        finished: set[str] = set()
        for step in self.plan.steps:
            if self._step(step.name).state == DONE:
                finished.add(step.name)
                self.progress(Progress("skip", index[step.name], total, step.name, "done earlier"))
            else:
                pending.append(step)
        running: dict[Future[None], tuple[Step, float]] = {}
        failed: tuple[Step, _StepFailed] | None = None
        halted: tuple[str, str] | None = None  # (status, message): interrupted, or a breaker open
        crashed: BaseException | None = None  # anything else (the checkpoint cannot be written): raised
        limit = self.config.workflows.max_parallel
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix=f"selfheal-{self.task[:20]}") as pool:
            while True:
                if failed is None and halted is None and crashed is None:
                    for step in list(pending):
                        if len(running) >= limit:
                            break
                        if all(d in finished for d in waits[step.name]):
                            pending.remove(step)
                            self.progress(Progress("start", index[step.name], total, step.name))
                            future = pool.submit(self._run_step, step, self._step(step.name))
                            running[future] = (step, self.clock.monotonic())
                if not running:
                    break
                try:
                    ended, _ = wait(running, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:  # no stop flag installed (the Python API): ask the steps to stop
                    if self.stop is not None:
                        self.stop.set(int(signal.SIGINT))
                    halted = halted or (TASK_INTERRUPTED, "interrupted")
                    continue
                for future in ended:
                    step, started = running.pop(future)
                    record = self._step(step.name)
                    where = (index[step.name], total, step.name)
                    exc = future.exception()
                    if exc is None:
                        finished.add(step.name)
                        self.progress(Progress("done", *where, elapsed_s=record.duration_s))
                    elif isinstance(exc, (Interrupted, KeyboardInterrupt)):
                        record.state = PENDING  # it did not finish; it runs again next time
                        self._save(step.name)
                        self.progress(Progress("failed", *where, str(exc), self.clock.monotonic() - started))
                        why = str(exc) or "interrupted"
                        halted = halted or (TASK_INTERRUPTED, f"{why} during step {step.name!r}; run again to resume")
                    elif isinstance(exc, _Paused):
                        record.state = PENDING
                        self._not_counted()
                        self._save(step.name)
                        self.progress(Progress("failed", *where, str(exc)))
                        halted = halted or ("not_attempted", f"step {step.name!r} not attempted: {exc}; try later")
                    elif isinstance(exc, _StepFailed):
                        self.progress(Progress("failed", *where, exc.reason, self.clock.monotonic() - started))
                        failed = failed or (step, exc)
                    else:
                        crashed = crashed or exc
        if crashed is not None:
            raise crashed
        if failed is not None:
            return self._fail(failed[0], failed[1], resumed)
        if halted is not None:
            if halted[0] == TASK_INTERRUPTED:
                self.data.status = TASK_INTERRUPTED
                self._save_task()
            return self._result(halted[0], resumed, halted[1])
        self.data.status = TASK_COMPLETED
        self.data.resumes_without_progress = 0
        self._save_task()
        return self._result(TASK_COMPLETED, resumed, f"completed all {total} steps")

    def _check_same_steps(self) -> None:
        names = [s.name for s in self.plan.steps]
        if self.data.order != names:
            raise PlanChanged(
                f"task {self.task!r} was checkpointed with steps {self.data.order}, but the plan now has "
                f"{names}; to start over with the new plan, run again with "
                + ("restart=True" if self._python else "--restart")
            )
        self.data.plan.digest = self.plan.digest  # a fixed command in the same steps is fine

    def _restart_from(self, name: str) -> None:
        found = False
        for step in self.plan.steps:
            found = found or step.name == name
            if found:
                record = self._step(step.name)
                record.state, record.attempts, record.outputs = PENDING, 0, {}
                record.error_class = record.reason = None
        self.data.status = TASK_RUNNING
        self.data.resumes_without_progress = 0
        self.data.done_at_last_run = self.data.done_count()

    def _count_resume(self) -> bool:
        """Count this run as a resume; True when it is one too many without progress."""
        done = self.data.done_count()
        if done > self.data.done_at_last_run:
            self.data.resumes_without_progress = 0
        else:
            self.data.resumes_without_progress += 1
        self.data.done_at_last_run = done
        nxt = self.data.first_unfinished()
        self.ledger.record(
            "resume",
            task=self.task,
            step=nxt,
            status="resumed",
            reason=f"{done} of {len(self.data.order)} steps done; "
            f"{self.data.resumes_without_progress} resume(s) without progress",
        )
        return self.data.resumes_without_progress > self.config.workflows.max_resumes_without_progress

    def _not_counted(self) -> None:
        """This run paused at a step whose breaker is open: nothing was attempted, so it is no resume without
        progress. Cron running the task again while the breaker stays open is waiting for it, and would
        otherwise park the task as dead-letter, for a person to reset (and the reset runs the completed steps
        again), when the next run after the breaker closes would have finished it."""
        with self._lock:
            self.data.resumes_without_progress = self._stalled_before

    def _reopen_failed(self) -> None:
        """Running a failed task again (after a fix): the failed step and the undone ones run again."""
        for record in self.data.steps.values():
            if record.state in (FAILED, COMPENSATED, COMPENSATION_FAILED):
                # A person chose to run it again: a fresh budget. (A crash resume keeps the count; cron
                # re-running a failing task is caught by max_resumes_without_progress instead.)
                record.state, record.attempts = PENDING, 0
                record.error_class = record.reason = None
        self.data.incident = None

    def _recover_in_flight(self) -> None:
        """A step marked running belongs to a run that died: stop what it left behind, then decide. Then
        the care of earlier runs of the task that steps leave to us (they run with lock=False): whatever
        else a dead runner left running, its records, pruning."""
        try:
            self._recover_steps()
            recover_runs(
                self.state,
                self.task,
                kill_orphans=self.config.process.kill_orphans,
                config=self.config,
                clock=self.clock,
            )
        except OrphanRunning as exc:  # only the setting turns it on here: workflow.py and Python have no flag
            raise exc.told(setting_remedy(self.config.files)) from None

    def _recover_steps(self) -> None:
        for step in self.plan.steps:
            record = self._step(step.name)
            if record.state != RUNNING:
                continue
            self._stop_orphan(record.run_id)
            if step.complete_if_outputs_exist and all(self._path(step, f).exists() for f in step.output_files):
                try:
                    outputs = self._collect_outputs(step, "")
                except _NotAFile as exc:  # not the files it makes: not complete, so it runs again
                    logger.warning("task %s step %s: not counted complete on resume: %s", self.task, step.name, exc)
                else:
                    record.state, record.outputs = DONE, outputs
                    record.reason = "found complete on resume"
                    self._sequence(record)
                    continue
            record.state = PENDING

    def _stop_orphan(self, run_id: str | None) -> None:
        """What the step's dead run left running is stopped (or, kill_orphans off, OrphanRunning: exit 4)."""
        if run_id:
            process = self.config.process
            stop_orphans(
                self.state,
                self.task,
                kill=process.kill_orphans,
                grace_s=process.kill_grace_s,
                clock=self.clock,
                run_id=run_id,
                any_runner=True,  # we hold the task's lock: whoever ran this step is gone (or was us)
            )

    # -- one step -----------------------------------------------------------------------------------------

    def _run_step(self, step: Step, record: StepRecord) -> None:
        prior = record.attempts
        # One durable save says "running" and counts the first attempt; each retry saves its own count.
        record.state, record.attempts, record.started = RUNNING, prior + 1, _now_iso(self.clock)
        record.ended = record.exit_code = record.error_class = record.reason = None
        record.ran = record.compensated = False
        record.run_id = new_run_id(f"{self.task[:40]}.{step.name[:40]}", self.clock.time())
        self._save(step.name)
        started = self.clock.monotonic()

        def persist_attempt(number: int) -> None:
            if number != record.attempts:  # on disk before the attempt starts: a crash never resets the budget
                record.attempts = number
                self._save(step.name)

        stdout_tail = ""
        try:
            if isinstance(step.run, Command):
                stdout_tail = self._run_command(step, step.run, record, persist_attempt, prior)
            else:
                self._run_function(step, step.run, record, persist_attempt, prior)
        except _Paused:
            # Its breaker refused the first attempt: none was made, so none is spent (cron running the task
            # while the breaker stays open would use up the step's retry budget without ever running it).
            record.attempts = prior
            raise
        except _StepFailed as failure:
            if step.fallback is None:
                raise
            self._run_fallback(step, record, failure)
            self._finish(record, started)
            self._save()
            return
        missing = [f for f in step.output_files if not self._path(step, f).exists()]
        if missing:
            self._failed_after_running(record, f"step succeeded but did not produce {', '.join(missing)}")
        if isinstance(step.run, Command):
            try:
                record.outputs = self._collect_outputs(step, stdout_tail)
            except _NotAFile as exc:
                self._failed_after_running(record, f"step succeeded but {exc}")
        too_big = self._too_big(
            step.name, record.outputs, "a command" if isinstance(step.run, Command) else "a function"
        )
        if too_big:
            record.state, record.outputs, record.error_class, record.reason = FAILED, {}, "permanent", too_big
            self._sequence(record)  # it ran: undone in the order it finished
            raise _StepFailed("permanent", too_big)
        self._finish(record, started)
        with self._lock:
            if self._done_outputs is not None:
                self._done_outputs[step.name] = record.outputs
            self._save(step.name)

    def _failed_after_running(self, record: StepRecord, reason: str) -> NoReturn:
        """The step's command ran to success but its outputs are not there as declared: a permanent
        failure, recorded on the step (the report and `status` name it), undone like a step that finished."""
        record.state, record.error_class, record.reason = FAILED, "permanent", self._reason(reason)
        self._sequence(record)  # it ran: undone in the order it finished
        raise _StepFailed("permanent", record.reason)

    def _too_big(self, name: str, outputs: dict[str, Any], what: str) -> str | None:
        """Why these outputs of step `name` cannot go into the checkpoint (over MAX_STEP_OUTPUTS_BYTES, or
        taking the task's over MAX_TASK_OUTPUTS_BYTES), or None: then they are counted as the step's."""
        size = _outputs_size(outputs)
        how = "lower workflows.output_tail_chars" if what == "a command" else "write them to a file and return its path"
        if size > MAX_STEP_OUTPUTS_BYTES:
            return (
                f"the step's outputs are {size} bytes as JSON, over the {MAX_STEP_OUTPUTS_BYTES} a checkpoint keeps "
                f"per step ({what} returned them): {how}"
            )
        with self._lock:
            sizes = self._output_sizes
            if sizes is None:
                steps = self.data.steps
                done = (n for n in self.data.order if steps[n].state == DONE and steps[n].outputs)
                sizes = self._output_sizes = {n: _outputs_size(steps[n].outputs) for n in done}
                self._outputs_total = sum(sizes.values())
            total = self._outputs_total - sizes.get(name, 0) + size
            if total > MAX_TASK_OUTPUTS_BYTES:
                return (
                    f"with this step's {size} bytes, the task's outputs would be {total} bytes as JSON, over the "
                    f"{MAX_TASK_OUTPUTS_BYTES} its checkpoint keeps ({what} returned them): {how}"
                )
            sizes[name], self._outputs_total = size, total
        return None

    def _finish(self, record: StepRecord, started: float) -> None:
        """The step is done; `started` is the monotonic time it started."""
        record.state, record.ended = DONE, _now_iso(self.clock)
        record.duration_s = round(self.clock.monotonic() - started, 3)
        self._sequence(record)

    def _sequence(self, record: StepRecord) -> None:
        """In a parallel plan, number the step among those finished: compensation goes by these, last first."""
        if self.plan.parallel:
            with self._lock:
                record.done_seq = 1 + max((r.done_seq or 0 for r in self.data.steps.values()), default=0)

    def _run_fallback(self, step: Step, record: StepRecord, failure: _StepFailed) -> None:
        """The step failed for good: run its fallback; its result becomes the step's, marked as a fallback
        result. A fallback that fails too leaves the step failed, with the step's own error."""
        why = f"{failure.error_class or 'unknown'}: {failure.reason}"
        backup = step.fallback
        try:
            if isinstance(backup, Command):
                outcome = self._retry_command(step, backup, step.name + FALLBACK_STEP)
                if not outcome.ok:
                    raise RuntimeError(f"{outcome.error_class}: {outcome.reason} (exit {outcome.exit_code})")
                keep = self.config.workflows.output_tail_chars
                stdout = outcome.stdout_tail[-keep:].rstrip("\n") if keep else ""
                if any(not self._path(step, f).exists() for f in step.output_files):
                    raise RuntimeError(f"it did not produce {', '.join(step.output_files)}")
                outputs = self._collect_outputs(step, stdout)
            elif backup is not None:
                context = StepContext(
                    self.task, step.name, 1, f"{self.task}/{step.name}/fallback", self._function_outputs()
                )
                value = self._retrier(step.name + FALLBACK_STEP).call(backup, context)
                outputs = _outputs_of(value, [])
            too_big = self._too_big(step.name, outputs, "the fallback")
            if too_big:
                raise RuntimeError(too_big)
        except Exception as exc:
            self.ledger.record(
                "fallback",
                task=self.task,
                step=step.name,
                error_class=failure.error_class,
                status="failed",
                reason=f"the fallback failed too ({safe_str(exc)}); the step's error: {why}",
            )
            raise failure from exc
        record.state, record.error_class, record.reason = RUNNING, failure.error_class, f"fallback used after: {why}"
        record.outputs = outputs if step.keep_stdout or not isinstance(backup, Command) else {}
        record.fallback = True
        self.ledger.record(
            "fallback",
            task=self.task,
            step=step.name,
            error_class=failure.error_class,
            status="fallback_used",
            reason=f"the step's fallback answered for it after: {why}",
        )

    def _step_env(self, step: Step) -> dict[str, str]:
        outputs = self._outputs()
        env = dict(os.environ, **step.env)
        env.update(
            SELFHEAL_TASK=self.task,
            SELFHEAL_STEP=step.name,
            SELFHEAL_IDEMPOTENCY_KEY=f"{self.task}/{step.name}",
        )
        with self._lock:  # steps starting at once write the one outputs file in turn
            env["SELFHEAL_OUTPUTS_FILE"] = str(self.checkpoints.save_outputs(self.task, outputs))
        for source, output in step.inputs:
            value = outputs.get(source, {}).get(output)
            if output == "files" and isinstance(value, list):
                value = os.pathsep.join(str(f["path"]) for f in value)
            env[_env_name(source, output)] = "" if value is None else str(value)
        return env

    def _cwd(self, step: Step) -> Path:
        base = self.plan.path.parent if self.plan.path is not None else Path.cwd()
        return base / step.cwd if step.cwd else base

    def _path(self, step: Step, relative: str) -> Path:
        return self._cwd(step) / relative

    def _retry_command(self, step: Step, command: Command, name: str, **extra: Any) -> RunOutcome:
        """A command of `step` (its own, or its compensation, named `name` in the ledger) under the retry
        policy, in the step's folder with its environment; the task's lock is already held by this run."""
        return run_with_retry(
            command.to_argv(),
            task=self.task,
            step=name,
            lock=False,
            timeout_s=step.timeout_s,
            cwd=str(self._cwd(step)),
            config=self.config,
            state=self.state,
            clock=self.clock,
            stdout=self.stdout,
            stderr=self.stderr,
            stop=self.stop,
            env=self._step_env(step),
            **extra,
        )

    def _run_command(
        self, step: Step, command: Command, record: StepRecord, persist: Callable[[int], None], prior: int
    ) -> str:
        outcome = self._retry_command(
            step,
            command,
            step.name,
            run_id=record.run_id,
            max_attempts=step.max_attempts,
            prior_attempts=prior,
            before_attempt=persist,
            target=step.target,
        )
        record.exit_code = outcome.exit_code
        if outcome.ok:
            record.ran = True
            keep = self.config.workflows.output_tail_chars
            # Trailing newlines dropped, as the shell's $(...) does: the value often becomes a variable.
            return outcome.stdout_tail[-keep:].rstrip("\n") if keep else ""
        if outcome.outcome == "interrupted":
            raise Interrupted(_signum(outcome.signal))
        if outcome.outcome == "not_attempted":
            raise _Paused(outcome.reason or "not attempted")
        record.state, record.error_class, record.reason = FAILED, outcome.error_class, outcome.reason
        raise _StepFailed(outcome.error_class, outcome.reason or "failed", outcome.exit_code, outcome.stop_reason)

    def _retrier(self, step: str, **options: Any) -> Retrier:
        """The retry policy a function of this task runs under (a step's, its fallback's, its compensation's:
        `step` as the ledger names it), recorded in this run's ledger, on its clock and state root."""
        return Retrier(
            task=self.task,
            step=step,
            config=self.config,
            clock=self.clock,
            state=self.state,
            ledger=self.ledger,
            **options,
        )

    def _run_function(
        self, step: Step, fn: StepFunction, record: StepRecord, persist: Callable[[int], None], prior: int
    ) -> None:
        context = StepContext(self.task, step.name, prior + 1, f"{self.task}/{step.name}", self._function_outputs())

        def before(number: int) -> None:
            context.attempt = number
            persist(number)

        retrier = self._retrier(
            step.name,
            max_attempts=step.max_attempts,
            prior_attempts=prior,
            before_attempt=before,
            target=step.target,
            breaker=step.target is not None,
        )
        try:
            value = retrier.call(fn, context)
        except BreakerOpen as exc:
            raise _Paused(str(exc)) from exc
        except Exception as exc:
            history = attempts_of(exc)
            record.state = FAILED
            record.error_class = history[-1].error_class if history else "unknown"
            record.reason = self._reason(_error_text(exc))
            raise _StepFailed(record.error_class, record.reason, None, stop_reason_of(exc)) from exc
        # The step ran: whatever it returned, its side effects happened, so it must stay compensable.
        record.ran = True
        converted: list[str] = []
        outputs = _outputs_of(value, converted)
        if converted:
            # The second source document's checkpoint manager does the same: a value JSON cannot hold is
            # kept as its text, so the step still counts as done (and can be compensated).
            record.converted = converted
            logger.warning(
                "task %s step %s returned values that are not JSON, kept as text: %s",
                self.task,
                step.name,
                ", ".join(converted),
            )
        record.outputs = outputs

    def _reason(self, text: str) -> str:
        """A failure's reason as the ledger keeps it: masked, then cut to ledger.reason_max_chars (an error
        message of many megabytes would make a checkpoint too big to read back), UTF-8 it can hold."""
        limit = self.config.ledger.reason_max_chars
        # Masked before it is cut (a key cut in half no longer looks like one), but not all of a huge message.
        text, _ = _utf8(redactor().text(text[: limit + 4096]))
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def _collect_outputs(self, step: Step, stdout_tail: str) -> dict[str, Any]:
        """A command step's outputs, keys in sorted order (as _describe_file's): as the checkpoint keeps them,
        so they read the same after a resume with no key order saved beside them at every save."""
        outputs: dict[str, Any] = {}
        if step.output_files:
            outputs["files"] = [_describe_file(self._path(step, f)) for f in step.output_files]
        if step.keep_stdout:
            outputs["stdout"] = stdout_tail
        return outputs

    # -- when it cannot finish ------------------------------------------------------------------------

    def _fail(self, step: Step | None, error: _StepFailed, resumed: bool) -> WorkflowResult:
        """Compensate the completed steps in reverse, write the incident, notify; report failed."""
        self.data.status = TASK_COMPENSATING
        self._save()
        compensated, failures = self._compensate()
        failed_step = step.name if step is not None else self.data.first_failed()
        if failed_step is not None:
            record = self._step(failed_step)
            error = _StepFailed(
                record.error_class or error.error_class, record.reason or error.reason, record.exit_code, error.status
            )
        self.data.status = TASK_FAILED
        incident = self._incident("failed", error, failed_step, compensated, failures)
        self._save()
        message = f"step {failed_step!r} failed ({error.error_class}): {error.reason}" if failed_step else error.reason
        result = self._result(TASK_FAILED, resumed, message)
        result.incident, result.compensated = incident, compensated
        result.compensation_failures = [f["step"] for f in failures]
        return result

    def _compensate(self) -> tuple[list[str], list[dict[str, Any]]]:
        compensated: list[str] = []
        failures: list[dict[str, Any]] = []
        done_steps = [s for s in self.plan.steps if s.compensate is not None and self._step(s.name).undo_due]
        if self.plan.parallel:  # steps that ran at once are undone in the reverse order they finished in
            done_steps.sort(key=lambda s: self._step(s.name).done_seq or 0)
        total = len(done_steps)
        if total:
            # One event per compensation triggered (the report's compensation rate), then one per step.
            self.ledger.record(
                "compensate", task=self.task, status="started", reason=f"{total} step(s) to undo, last first"
            )
        for index, step in enumerate(reversed(done_steps), 1):
            record = self._step(step.name)
            self.progress(Progress("compensate", index, total, step.name))
            try:
                self._run_compensation(step, record)
            except Exception as exc:  # recorded and escalated in the incident, never hidden
                # Masked and cut as a step's own failure is: a compensation's error of many megabytes made a
                # checkpoint no run could read again, and the result showed a key it held.
                error = self._reason(safe_str(exc))
                record.state, record.reason = COMPENSATION_FAILED, self._reason(f"compensation failed: {error}")
                failures.append({"step": step.name, "error": error})
                self.ledger.record("compensate", task=self.task, step=step.name, status="failed", reason=error)
            else:
                # A step that ran but then failed its checks keeps saying failed (the incident names it).
                if record.state == DONE:
                    record.state = COMPENSATED
                else:
                    record.compensated = True
                compensated.append(step.name)
                self.ledger.record("compensate", task=self.task, step=step.name, status="compensated")
            self._save()
        return compensated, failures

    def _run_compensation(self, step: Step, record: StepRecord) -> None:
        undo = step.compensate
        if isinstance(undo, Command):
            outcome = self._retry_command(step, undo, step.name + COMPENSATION_STEP)
            if not outcome.ok:
                raise RuntimeError(f"{outcome.error_class}: {outcome.reason} (exit {outcome.exit_code})")
            return
        if undo is not None:
            context = StepContext(
                self.task,
                step.name,
                1,
                f"{self.task}/{step.name}/compensate",
                self._function_outputs({step.name: record.outputs}),
            )
            try:
                self._retrier(step.name + COMPENSATION_STEP).call(undo, context)
            except Exception as exc:  # named by its type, as a step's own failure is
                raise RuntimeError(_error_text(exc)) from exc

    def _dead_letter(self) -> WorkflowResult:
        self.data.status = TASK_DEAD_LETTER
        limit = self.config.workflows.max_resumes_without_progress
        error = _StepFailed(
            None,
            f"resumed {self.data.resumes_without_progress} times without a step completing "
            f"(limit {limit}); parked instead of retrying forever",
        )
        nxt = self.data.first_unfinished()
        incident = self._incident("dead_letter", error, nxt, [], [], resume=self._resume_at(nxt))
        self._save()
        result = self._result(TASK_DEAD_LETTER, True, error.reason)
        result.incident, result.resume_command = incident, self._resume_at(nxt)
        return result

    def _incident(
        self,
        kind: str,
        error: _StepFailed,
        failed_step: str | None,
        compensated: list[str],
        failures: list[dict[str, Any]],
        *,
        resume: str | None = None,
    ) -> str:
        done = [n for n in self.data.order if self._step(n).state in (DONE, COMPENSATED)]
        what = f"step {failed_step}" if failed_step else "the task"
        summary = (
            f"self-heal: task {self.task} {'failed' if kind == 'failed' else 'parked'} at {what}"
            f" ({error.error_class or kind}): {error.reason}"[:400]
        )
        if compensated:
            summary += f"; compensated {', '.join(compensated)}"
        if failures:
            summary += f"; COMPENSATION FAILED for {', '.join(f['step'] for f in failures)}"
        incident = Incident(
            id=new_incident_id(self.task, self.clock.time()),
            task=self.task,
            kind=kind,
            summary=summary,
            error=error.reason,
            error_class=error.error_class,
            failed_step=failed_step,
            last_completed_step=done[-1] if done else None,
            resume_command=resume or self.resume_command,
            compensated=compensated,
            compensation_failures=failures,
            context=self._outputs(),
            plan=str(self.plan.path) if self.plan.path else self.plan.name,
            created=_now_iso(self.clock),
        )
        path = write_incident(self.state, incident)
        template = self.plan.notify if self.plan.notify is not None else self.config.workflows.notify
        if template:
            incident.notified = notify(
                template, incident, path, timeout_s=self.config.workflows.notify_timeout_s, clock=self.clock
            )
            write_json(path, incident.to_json(), durable=True)
        self.data.incident = incident.id
        self.ledger.record(
            "incident",
            task=self.task,
            step=failed_step,
            error_class=error.error_class,
            status=kind,
            reason=f"{incident.id}: {error.reason}",
        )
        return str(path)

    def _result(self, status: str, resumed: bool, message: str) -> WorkflowResult:
        steps = []
        for name in self.data.order:
            r = self._step(name)
            steps.append(
                StepReport(
                    name,
                    r.state,
                    r.attempts,
                    r.duration_s,
                    r.exit_code,
                    r.error_class,
                    r.reason,
                    r.outputs,
                    list(r.converted or []),
                    bool(r.fallback),
                )
            )
        incident = self.data.incident
        path = str(self.state.incident_file(incident)) if incident else None
        return WorkflowResult(
            self.task, status, steps, resumed, message, incident=path, resume_command=self.resume_command
        )


def _outputs_of(value: Any, converted: list[str]) -> dict[str, Any]:
    """A function step's return value as its outputs: a dict's items, or {"value": value}; JSON throughout."""
    raw = value if isinstance(value, dict) else ({} if value is None else {"value": value})
    outputs: dict[str, Any] = {}
    for k, v in raw.items():
        key, changed = _utf8(str(k))
        if changed:
            converted.append(key)
        outputs[key] = _as_json(v, key, converted, (id(raw),))
    return outputs


def _as_json(value: Any, where: str, converted: list[str], inside: tuple[int, ...] = ()) -> Any:
    """`value` as JSON can hold it: a datetime or date becomes its ISO text, any other object
    `<Type: text>` (the second source document's form), text UTF-8 cannot hold its escaped form, a container
    that holds itself (or nests past _MAX_OUTPUT_DEPTH) `<dict: a cycle>`; `where` names each converted value.
    `inside`: the ids of the containers `value` is in."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        text, changed = _utf8(value)
        if changed:
            converted.append(where)
        return text
    if isinstance(value, int):
        try:
            int.__repr__(value)  # past sys.get_int_max_str_digits (4,300 digits) there is no text for it, nor JSON
        except ValueError:
            converted.append(where)
            return f"<int: {value.bit_length()} bits>"
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # NaN and infinity are not JSON
            converted.append(where)
            return str(value)
        return value
    if isinstance(value, (dict, list, tuple)):
        if id(value) in inside or len(inside) > _MAX_OUTPUT_DEPTH:
            converted.append(where)
            return f"<{type(value).__name__}: {'a cycle' if id(value) in inside else 'nested too deep'}>"
        within = (*inside, id(value))
        if isinstance(value, dict):
            items = {}
            for k, v in value.items():
                key, changed = _utf8(str(k))
                if changed:
                    converted.append(f"{where}.{key}")
                items[key] = _as_json(v, f"{where}.{key}", converted, within)
            return items
        return [_as_json(v, f"{where}[{i}]", converted, within) for i, v in enumerate(value)]
    converted.append(where)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    try:
        text = str(value)
    except Exception as exc:  # a __str__ that fails: its type still says what it was
        text = f"(no text: {type(exc).__name__})"
    return _utf8(f"<{type(value).__name__}: {text}>")[0]


def _error_text(exc: BaseException) -> str:
    """A function's exception as a step's reason: its type, then its text (`ValueError: bad id`), never raising
    (some wrapped C errors' __str__ fails: core.classify.safe_str)."""
    return f"{type(exc).__name__}: {safe_str(exc)}"


def _utf8(text: str) -> tuple[str, bool]:
    """`text` as UTF-8 can hold it (a lone surrogate, half an emoji, becomes `\\ud83d`), and whether it changed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8"), True
    return text, False


def _outputs_size(outputs: dict[str, Any]) -> int:
    """Bytes the outputs take in the checkpoint, as JSON: with the order of their keys where it is kept
    beside them (state.checkpoints.key_order), which can take as much room as the keys themselves."""
    size = len(json.dumps(outputs, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))
    order = key_order(outputs)
    if order is not None:
        size += len(json.dumps(order, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return size


def _env_name(step: str, output: str) -> str:
    return "SELFHEAL_IN_" + re.sub(r"[^A-Za-z0-9]", "_", f"{step}_{output}").upper()


class _NotAFile(Exception):
    """A declared output file that cannot be described: not a regular file, or not readable."""


def _describe_file(path: Path) -> dict[str, Any]:
    """The file's path, size and SHA-256; _NotAFile, naming it, for anything but a readable regular file.

    Opened without blocking and checked on the open descriptor: a named pipe would block open() until a
    writer came (a hang no SIGTERM ends, since the handler only sets the stop flag), a device read forever,
    and a folder cannot be read at all."""
    import hashlib  # noqa: PLC0415

    try:
        fd, _ = open_regular(path)
    except NotRegularFile as exc:
        raise _NotAFile(f"the output {path} is {exc.kind}, not a file") from None
    except OSError as exc:
        raise _NotAFile(f"cannot read the output {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
        except OSError as exc:
            raise _NotAFile(f"cannot read the output {path}: {exc.strerror or exc}") from None
    return {"path": str(path), "sha256": digest.hexdigest(), "size": size}


def _signum(name: str | None) -> int:
    try:
        return int(signal.Signals[name]) if name else int(signal.SIGTERM)
    except KeyError:
        return int(signal.SIGTERM)


# -- task ids for cron lines ----------------------------------------------------------------------------

_ID_FIELDS = {
    "date": "%Y-%m-%d",
    "hour": "%Y-%m-%dT%H",
    "time": "%Y-%m-%dT%H%M%S",
    "week": "%G-W%V",
    "month": "%Y-%m",
}


def task_id_from_template(template: str, *, now: float) -> str:
    """`report-{date}` -> `report-2026-06-10`: a task id per run for a cron line (a fixed id completes once
    and then runs nothing). Fields, in UTC: {date}, {hour} (2026-06-10T03), {time} (2026-06-10T031218),
    {week} (2026-W24), {month}. A template without braces is returned as it is; the result is validated."""
    if "{" not in template and "}" not in template:
        return validate_id(template, "task")
    when = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc)
    names = set(re.findall(r"\{([^{}]*)\}", template))
    unknown = sorted(n for n in names if n not in _ID_FIELDS)
    if unknown or re.sub(r"\{[^{}]*\}", "", template).count("{") or re.sub(r"\{[^{}]*\}", "", template).count("}"):
        what = f"{{{unknown[0]}}}" if unknown else "an unmatched brace"
        raise UsageError(
            f"--task {template!r}: {what} is not a field; use {', '.join('{' + n + '}' for n in _ID_FIELDS)}"
        )
    task = re.sub(r"\{([^{}]*)\}", lambda m: when.strftime(_ID_FIELDS[m.group(1)]), template)
    return validate_id(task, "task")


def _step_name(func: object, name: str | None, workflow: str) -> str:
    """The step's name: `name=`, else the function's own; a lambda, a functools.partial or an object with
    __call__ has none that could be a step's (the checkpoint knows steps by name), so it must be given."""
    own = getattr(func, "__name__", None)
    if name is not None:
        return name
    if isinstance(own, str) and own != "<lambda>":
        return own
    what = "a lambda" if own == "<lambda>" else f"{type(func).__name__} {func!r}"
    raise UsageError(
        f"workflow {workflow!r}: {what} has no name a step can have; give it one: wf.step(fn, name='fetch')"
    )


def _not_a_step_function(value: object) -> str | None:
    """Why `value` cannot be a step's function (or its compensation or fallback), or None. The engine calls it
    once per attempt and takes what it returns: a coroutine or generator function returns at once, before
    its body has run, so what it does would be neither retried nor known to have happened."""
    if not callable(value):
        return f"takes a function of a StepContext, got {value!r}"
    call = value if inspect.isroutine(value) or isinstance(value, functools.partial) else type(value).__call__
    label = getattr(value, "__qualname__", None) or repr(value)
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return (
            f"{label} is a coroutine function; a step is a plain function (run the coroutine inside it, "
            "e.g. return asyncio.run(fetch(ctx)))"
        )
    if inspect.isgeneratorfunction(call):
        return f"{label} is a generator function, which returns before its body runs; return a list instead"
    return None


# -- status and reset -----------------------------------------------------------------------------------


def status(task: str, *, state: StateRoot | None = None) -> Checkpoint | None:
    """The task's checkpoint as it stands (None if it never ran); unreadable raises CheckpointUnreadable.

    A checkpoint left `running` by a runner that is gone (SIGKILL, a reboot, the OOM killer: nothing
    could save `interrupted`) reads `interrupted`, as the next run will treat it: the task's lock is free.
    """
    root = state or StateRoot.from_env()
    data = Checkpoints(root).load(validate_id(task, "task"))
    if data is not None and data.status == TASK_RUNNING and lock_is_held(root.lock_file("workflow", task)) is False:
        data.status = TASK_INTERRUPTED
    return data


def reset(task: str, *, state: StateRoot | None = None) -> bool:
    """Forget the task's progress so the next run starts over; refused (LockBusy) while it runs."""
    root = state or StateRoot.from_env()
    with file_lock(root.lock_file("workflow", validate_id(task, "task")), timeout=0, what=f"task {task!r}"):
        return Checkpoints(root).remove(task)


# -- the Python API ------------------------------------------------------------------------------------


class Workflow:
    """A workflow of Python functions, each step a function of a StepContext returning its outputs.

    wf = Workflow("weekly-report")

    @wf.step(compensate=delete_draft)
    def draft(ctx): ...; return {"path": "/tmp/draft.md"}

    result = wf.run(task="weekly-report-2026-47")   # resumes by itself after a crash
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps: list[Step] = []

    @overload
    def step(
        self,
        fn: _F,
        *,
        name: str | None = None,
        compensate: StepFunction | None = None,
        max_attempts: int | None = None,
        retries: int | None = None,
        fallback: StepFunction | None = None,
        target: str | None = None,
        after: Sequence[str] | None = None,
    ) -> _F: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        compensate: StepFunction | None = None,
        max_attempts: int | None = None,
        retries: int | None = None,
        fallback: StepFunction | None = None,
        target: str | None = None,
        after: Sequence[str] | None = None,
    ) -> Callable[[_F], _F]: ...

    def step(
        self,
        fn: _F | None = None,
        *,
        name: str | None = None,
        compensate: StepFunction | None = None,
        max_attempts: int | None = None,
        retries: int | None = None,
        fallback: StepFunction | None = None,
        target: str | None = None,
        after: Sequence[str] | None = None,
    ) -> _F | Callable[[_F], _F]:
        """Add `fn` as the next step (`@wf.step`, or `@wf.step(name=..., compensate=...)`), returning it
        unchanged. Whatever the engine could never call is refused here (UsageError, exit 2), not when the
        step's turn comes: by then the earlier steps have run, and failing would compensate them.

        A function step has no timeout, and the workflow no deadline that could end one: a Python function
        cannot be stopped safely from outside its thread, and leaving it running while the workflow
        compensates would undo its effects while it goes on making them. Work that may hang belongs in a
        process: a plan's command step with `timeout:` (each attempt's process group is killed when it runs
        out), or, inside the function, selfheal.run_with_retry(argv, timeout_s=...) or a client's own timeout."""
        if isinstance(fn, str):  # `@wf.step("fetch")`: the name given where the function goes
            raise UsageError(f"@wf.step({fn!r}) takes a function; to name the step, write @wf.step(name={fn!r})")
        if retries is not None:
            if max_attempts is not None:
                raise UsageError("give retries or max_attempts, not both (retries=N is max_attempts=N + 1)")
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise UsageError(f"retries must be a whole number >= 0, got {retries!r}")
            max_attempts = retries + 1
        elif max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise UsageError(f"max_attempts must be a whole number >= 1, got {max_attempts!r}")
        if target is not None:
            validate_id(target, "target")
        if isinstance(after, str) or (after is not None and not all(isinstance(a, str) for a in after)):
            # A string is a sequence too: after="fetch" would wait for steps "f", "e", "t"...
            raise UsageError(f"after= takes a list of earlier steps' names, e.g. after=['fetch'], got {after!r}")

        def add(func: _F) -> _F:
            step_name = validate_id(_step_name(func, name, self.name), "step")
            for role, value in (("", func), ("compensate=: ", compensate), ("fallback=: ", fallback)):
                problem = _not_a_step_function(value) if value is not None else None
                if problem:
                    raise UsageError(f"step {step_name!r} of workflow {self.name!r}: {role}{problem}")
            if any(s.name == step_name for s in self._steps):
                raise UsageError(f"workflow {self.name!r} already has a step named {step_name!r}")
            known = {s.name for s in self._steps}
            waits = tuple(after) if after is not None else None
            for other in waits or ():
                if other not in known:
                    raise UsageError(
                        f"step {step_name!r}: after={other!r} is not an earlier step of workflow {self.name!r}"
                    )
            self._steps.append(
                Step(
                    step_name,
                    func,
                    compensate=compensate,
                    max_attempts=max_attempts,
                    fallback=fallback,
                    target=target,
                    after=waits,
                )
            )
            return func

        return add(fn) if fn is not None else add

    @property
    def plan(self) -> Plan:
        return Plan(self.name, tuple(self._steps))

    def run(
        self,
        task: str | None = None,
        *,
        from_step: str | None = None,
        restart: bool = False,
        config: Config | None = None,
        state: StateRoot | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stop: StopFlag | None = None,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        progress: Callable[[Progress], None] | None = None,
        resume_command: str | None = None,
    ) -> WorkflowResult:
        """Run or resume `task` (default: the workflow's name). from_step: run that step and the later ones
        again; restart: forget the task's progress and start over. The other options are WorkflowRunner's, named
        here (not `**options`) so that mypy finds a misspelt one before it runs."""
        runner = WorkflowRunner(
            self.plan,
            task or self.name,
            config=config,
            state=state,
            clock=clock,
            stop=stop,
            stdout=stdout,
            stderr=stderr,
            progress=progress,
            resume_command=resume_command,
        )
        return runner.run(from_step=from_step, restart=restart)
