#!/usr/bin/env python3
"""Multi-step tasks that survive crashes: run a YAML plan step by step, checkpointing each step.

  workflow.py run PLAN.yaml [--task ID] [--from STEP] [--restart]   run, or resume where it stopped
  workflow.py status ID                                              where a task stands
  workflow.py reset ID                                               forget its progress: next run starts over

Completed steps never run again; a step in flight when the process died runs again. A step that fails
for good stops the task: completed steps are compensated in reverse and an incident file (with the
command that resumes the task) is written under incidents/.

A task id that already completed runs nothing (exit 1, so a cron line with a fixed --task does not look
fine forever): give each run its own id with a field, --task 'report-{date}' ({date}, {hour}, {time},
{week}, {month}, in UTC), or run it again with --restart.

Exit codes: 0 completed (or status/reset done); 1 already completed earlier, nothing run; 2 usage or plan
error, the status of an unknown task, or a symbolic link planted under the state root; 3 failed,
interrupted, parked as dead-letter, an unreadable checkpoint, or a checkpoint that cannot be written (disk
full, read-only: the step does not run); 4 not attempted (the task is running elsewhere, or a breaker is
open). With --json, step output goes to stderr and stdout holds exactly one JSON object.
"""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.core.process import StopFlag, become_subreaper  # noqa: E402
from selfheal.durable.checkpoint import Checkpoints  # noqa: E402
from selfheal.durable.workflow import (  # noqa: E402
    Progress,
    WorkflowRunner,
    load_plan,
    reset,
    status,
    task_id_from_template,
)
from selfheal.errors import EXIT_OK, InvalidIdError, UsageError  # noqa: E402
from selfheal.state.checkpoints import Checkpoint  # noqa: E402
from selfheal.state.root import StateRoot, validate_id  # noqa: E402


def _progress_printer() -> Any:
    """`[2/6] analyze` lines with elapsed time on a terminal; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        return None

    def show(event: Progress) -> None:
        where = f"[{event.index}/{event.total}] {event.step}"
        if event.kind == "start":
            sys.stderr.write(f"self-heal: {where} ...\n")
        elif event.kind == "done":
            sys.stderr.write(f"self-heal: {where} done in {event.elapsed_s or 0:.1f}s\n")
        elif event.kind == "skip":
            sys.stderr.write(f"self-heal: {where} already done\n")
        elif event.kind == "compensate":
            sys.stderr.write(f"self-heal: undoing {event.step} ({event.index}/{event.total})\n")
        else:
            sys.stderr.write(f"self-heal: {where} FAILED: {event.detail}\n")
        sys.stderr.flush()

    return show


class UnknownWorkflowTask(UsageError):
    """`status` of a task with no checkpoint (exit 2, as tasks.py show of an unknown task)."""

    def __init__(self, task: str, known: Sequence[str]) -> None:
        close = difflib.get_close_matches(task, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        super().__init__(f"no checkpoint for task {task!r}{hint}")


def _status_lines(data: Checkpoint) -> list[str]:
    lines = [f"task {data.task}: {data.status} (plan {data.plan.path or data.plan.name})"]
    for name in data.order:
        step = data.steps[name]
        detail = f"{step.attempts} attempt(s)" if step.attempts else "not started"
        if step.duration_s is not None:
            detail += f", {step.duration_s:.1f}s"
        if step.reason and step.state != "done":
            detail += f": {step.reason}"
        lines.append(f"  {name}: {step.state} ({detail})")
    if data.incident:
        lines.append(f"incident: {data.incident}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="workflow.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a plan, or resume it where it stopped")
    run.add_argument("plan", help="the YAML plan file")
    run.add_argument(
        "--task",
        help="task id (default: the plan's name); the same id resumes. Fields for cron lines, in UTC: "
        "'report-{date}', {hour}, {time}, {week}, {month}",
    )
    run.add_argument("--from", dest="from_step", metavar="STEP", help="run this step and the later ones again")
    run.add_argument("--restart", action="store_true", help="forget earlier progress (even an unreadable checkpoint)")
    run.add_argument("--json", action="store_true", help="print one JSON object with every step")
    for name, text in (("status", "where a task stands"), ("reset", "forget a task's progress")):
        command = sub.add_parser(name, help=text)
        command.add_argument("task")
        command.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    cli.setup_logging()

    if args.command == "status":
        data = status(args.task)
        if data is None:
            raise UnknownWorkflowTask(args.task, Checkpoints(StateRoot.from_env()).tasks())
        if args.json:
            cli.emit_json({"ok": True, **data.to_json()})
        else:
            print("\n".join(_status_lines(data)))
        return EXIT_OK
    if args.command == "reset":
        forgot = reset(args.task)
        if args.json:
            cli.emit_json({"ok": True, "task": args.task, "reset": forgot})
        else:
            cli.say(
                f"task {args.task!r}: "
                + ("progress forgotten; the next run starts over" if forgot else "nothing to forget")
            )
        return EXIT_OK

    plan = load_plan(Path(args.plan))
    if args.task:
        task = task_id_from_template(args.task, now=time.time())
    else:
        task = plan.name
        try:
            validate_id(task, "task")
        except InvalidIdError:
            # Said as where the id came from: the user typed no id, and would not know "invalid task id ...".
            raise UsageError(
                f"{args.plan}: the plan's name {task!r} cannot be a task id (1-128 characters from A-Z a-z 0-9 . _ -, "
                "no leading dot); give one with --task, e.g. --task 'weekly-report-{date}'"
            ) from None
    stop = StopFlag()
    stop.install()
    cli.hurry_on(stop)  # a stalled reader of our stderr must not hold up acting on the signal
    become_subreaper()  # daemons a command starts are re-parented to us, so they can be found and stopped
    runner = WorkflowRunner(
        plan,
        task,
        stop=stop,
        stdout=sys.stderr.buffer if args.json else sys.stdout.buffer,
        stderr=sys.stderr.buffer,
        progress=_progress_printer(),
    )
    result = runner.run(from_step=args.from_step, restart=args.restart)
    if args.json:
        cli.emit_json(result.to_json())
    elif result.already_completed:
        cli.say(f"task {task}: {result.message}")
    else:
        cli.say(f"task {task}: {result.status}: {result.message}")
        if result.compensated:
            cli.say(f"compensated: {', '.join(result.compensated)}")
        if result.compensation_failures:
            cli.say(f"COMPENSATION FAILED for: {', '.join(result.compensation_failures)}")
        if result.incident:
            cli.say(f"incident: {result.incident}")
            cli.say(f"after fixing the cause, resume with: {result.resume_command}")
    return result.exit_status


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
