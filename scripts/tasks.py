#!/usr/bin/env python3
"""The task tree: parent and child tasks, exec states, fix tasks first, and a cron runner with stuck detection.

  tasks.py add NAME [--type fix|regular|creative] [--priority P0|P1|P2] [--parent NAME] [-- CMD ...]
  tasks.py add --from FILE                                   many tasks, one JSON object a line, all or nothing
  tasks.py list | tree [NAME] | show NAME | log NAME         what there is and how it went
  tasks.py actionable [--type T] [--limit N] [--json]        what runs next, in run order
  tasks.py run-next [--type fix|regular|creative] [--task NAME]   run the next one (cron: see SKILL.md)
  tasks.py run-next --max N                                   up to N, one after another, in this process
  tasks.py mark NAME start|end|error|crash|manual|void        record a state by hand (agents, people)
  tasks.py set NAME --analysis TEXT ... | reparent NAME --parent P | beat NAME | void NAME
  tasks.py check-stuck [--dry-run] | archive [--older-than DAYS]
  tasks.py fleet init|status                                  fleet mode: the shared PostgreSQL (store.url)

Run order: fix tasks, then regular, then creative; then priority; then deeper tasks first; then oldest.
A parent runs only when each of its children is END, VOID or REQUIRES_MANUAL.

Exit codes: 0 ok (run-next: it succeeded, there was nothing to do, or a person changed the task while it
ran: its outcome is not recorded, and one line on stderr says so); 1 check-stuck found stuck tasks,
or fleet status found the fleet's database unreachable; 2 usage error (unknown task, illegal transition,
bad parent, duplicate name, a text over its size cap, a symbolic link planted under the state root); 3 the
task failed (or self-heal took it from the run: stuck, lease expired), or the task tree could not be written
(disk full, read-only: the message names the file; run-next then runs nothing; on a full disk list, tree,
show, actionable, log and check-stuck --dry-run still answer, with a warning); 4 not attempted (the tree is
locked, or the task is running or waits for its children: the message names a child to run first).
With --json, stdout holds exactly one JSON object; a task's output goes to tasks/NAME.log.
The tree lives in tasks.db under the state root (SQLite); a tree of tasks/*.json files from an older
version is imported on first use (the files are kept in tasks/json-backup-<ts>/). In fleet mode (store.url)
it lives in the fleet's PostgreSQL, shared by every host; with that database down, every command but
`fleet status` exits 4 (this host claims nothing from the shared tree until it answers). The tree a host
kept before fleet mode (tasks.db, or older tasks/*.json) is imported into the fleet's on `fleet init` or
first fleet use, once (tasks.db is kept in tasks/fleet-import-<ts>/); a name the fleet's tree already has
is refused (exit 2) and nothing is imported.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.clock import utc_iso  # noqa: E402
from selfheal.core.ledger import SPOOL, Ledger  # noqa: E402
from selfheal.core.process import become_subreaper  # noqa: E402
from selfheal.durable.workflow import load_plan  # noqa: E402
from selfheal.errors import EXIT_OK, EXIT_PROBLEMS, NotAttempted, SelfHealError, StateError  # noqa: E402
from selfheal.state.inert import inert  # noqa: E402
from selfheal.state.root import MAX_STATE_FILE_BYTES, iter_lines, loads, open_read, read_at_most  # noqa: E402
from selfheal.state.skill_status import status_path, update_status  # noqa: E402
from selfheal.tasks.run import (  # noqa: E402
    TAIL_LINE_BYTES,
    BoundedLog,
    LoopStop,
    TaskRun,
    check_stuck,
    find_stuck,
    why_not,
)
from selfheal.tasks.tree import (  # noqa: E402
    ACTIONABLE_STATES,
    END,
    EXEC_STATES,
    PRIORITIES,
    PROCESSING,
    TEXT_FIELDS,
    TYPES,
    VERBS,
    VOID,
    RunSpec,
    Task,
    TaskError,
    TaskStore,
    TaskTree,
    UnknownTask,
    check_sizes,
)

TASKS_SCRIPT = str(Path(__file__).resolve())


def _brief(task: Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "display_name": task.display_name,
        "type": task.type,
        "priority": task.priority,
        "exec_state": task.exec_state,
        "status": task.status,
        "parent": task.parent,
        "level": task.level,
        "retry_count": task.retry_count,
        "execution_count": task.execution_count,
        "updated": utc_iso(task.updated_ts) if task.updated_ts else None,
    }


def _say(message: str) -> None:
    """cli.say for text that may hold a command's output or a task's own text: its controls made inert."""
    cli.say(inert(message))


def _warn_problems(store: TaskStore) -> None:
    for problem in store.problems:
        _say(f"warning: {problem}")


# `add --from FILE`: the keys a line may have, and what each must be.
_LINE_KEYS = {
    "name": "a task name",
    "parent": "a task name",
    "type": "one of " + ", ".join(TYPES),
    "priority": "one of " + ", ".join(PRIORITIES),
    "display_name": "text",
    "description": "text",
    "success_criteria": "text",
    "fix_suggestion": "text",
    "run": "a command as a list of strings",
    "shell": "a shell command (text)",
    "workflow": "the path of a workflow plan",
    "cwd": "a folder",
    "timeout": "seconds > 0",
    "max_attempts": "a whole number >= 1",
    "target": "text",
}


def _line_task(path: str, number: int, text: str) -> Task:
    """One line of `add --from FILE` as a task; a wrong one names the file, the line, the key and the value."""

    def bad(key: str, value: Any) -> TaskError:
        return TaskError(f"{path} line {number}: {key}: must be {_LINE_KEYS[key]} (value {value!r}); nothing was added")

    try:
        data = loads(text)
    except ValueError as exc:
        raise TaskError(f"{path} line {number}: not JSON ({exc}); nothing was added") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path} line {number}: not a JSON object; nothing was added")
    for key, value in data.items():  # a JSON escape can spell a lone surrogate ("\ud800"): no store takes it
        for item in (key, *(value if isinstance(value, list) else [value])):
            why = _not_utf8(item) if isinstance(item, str) else None
            if why:
                raise TaskError(f"{path} line {number}: {ascii(key)[1:-1]}: not UTF-8 text ({why}); nothing was added")
    for key in data:
        if key not in _LINE_KEYS:
            raise TaskError(
                f"{path} line {number}: unknown key {key!r} (known: {', '.join(_LINE_KEYS)}); nothing was added"
            )
    for key in (
        "name",
        "parent",
        "display_name",
        "description",
        "success_criteria",
        "fix_suggestion",
        "shell",
        "workflow",
        "cwd",
        "target",
    ):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise bad(key, data[key])
    if not data.get("name"):
        raise bad("name", data.get("name"))
    kind = data.get("type") or ("fix" if data["name"].startswith("FIX-") else "regular")
    if kind not in TYPES:
        raise bad("type", kind)
    priority = data.get("priority") or "P1"
    if priority not in PRIORITIES:
        raise bad("priority", priority)
    argv = data.get("run")
    if argv is not None and (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)):
        raise bad("run", argv)
    if sum(data.get(k) is not None for k in ("run", "shell", "workflow")) > 1:
        raise TaskError(f"{path} line {number}: give one of run, shell or workflow; nothing was added")
    timeout = data.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise bad("timeout", timeout)
    attempts = data.get("max_attempts")
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
        raise bad("max_attempts", attempts)
    spec: dict[str, Any] | None = None
    if argv is not None:
        spec = {"kind": "argv", "argv": argv}
    elif data.get("shell") is not None:
        if not data["shell"].strip():
            raise bad("shell", data["shell"])
        spec = {"kind": "shell", "shell": data["shell"]}
    elif data.get("workflow") is not None:
        plan = Path(data["workflow"]).resolve()
        try:
            load_plan(plan)
        except SelfHealError as exc:
            raise TaskError(f"{path} line {number}: workflow: {exc}; nothing was added") from None
        spec = {"kind": "plan", "plan": str(plan)}
    elif any(data.get(k) is not None for k in ("cwd", "timeout", "max_attempts", "target")):
        raise TaskError(
            f"{path} line {number}: cwd, timeout, max_attempts and target need something to run; nothing was added"
        )
    if spec is not None:
        cwd = _folder(data["cwd"]) if data.get("cwd") else _folder(".") if spec["kind"] != "plan" else None
        if cwd == "":
            raise bad("cwd", data.get("cwd"))
        spec.update(cwd=cwd, timeout_s=timeout, max_attempts=attempts, target=data.get("target"))
    return Task(
        name=data["name"],
        type=kind,
        priority=priority,
        parent=data.get("parent"),
        display_name=data.get("display_name"),
        description=data.get("description"),
        success_criteria=data.get("success_criteria"),
        fix_suggestion=data.get("fix_suggestion"),
        run=None if spec is None else RunSpec.from_json(spec, f"task {data['name']!r}"),
    )


def _not_utf8(text: str, *, argv: bool = False) -> str | None:
    """Why `text` cannot be stored as UTF-8 text, or None: a lone surrogate (from a JSON escape), or on the
    command line (`argv`) a byte that was not UTF-8 (Python keeps it as a surrogate escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        return f"byte {char - 0xDC00:#04x}" if argv and 0xDC80 <= char <= 0xDCFF else f"lone surrogate \\u{char:04x}"
    return None


def _check_text(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse (exit 2) an option or argument that is not UTF-8 text, naming it: the tree could not store it.
    --from FILE is only a path to read, so any bytes do there."""
    for dest, value in vars(args).items():
        if dest == "from_file":
            continue
        for text in value if isinstance(value, list) else [value]:
            why = _not_utf8(text, argv=True) if isinstance(text, str) else None
            if why:
                what = {"name": "NAME", "command": "the command after --"}.get(dest, f"--{dest.replace('_', '-')}")
                parser.error(f"{what}: not UTF-8 text ({why})")


@functools.lru_cache(maxsize=256)
def _folder(text: str) -> str | None:
    """A line's `cwd` as an absolute folder ("" if it is not one); asked once per distinct value."""
    folder = Path(text).resolve()
    return str(folder) if folder.is_dir() else ""


def _lines_of(path: str) -> Iterator[tuple[str, Task]]:
    """The tasks of `add --from FILE`, read whole (at most MAX_STATE_FILE_BYTES: /dev/zero is refused, not
    read until memory runs out) before anything is added; each line parsed as it goes in."""
    try:
        with open(path, "rb") as fh:
            raw = read_at_most(fh, MAX_STATE_FILE_BYTES)
    except OSError as exc:
        raise TaskError(f"--from {path}: cannot read it ({exc.strerror})") from None
    if raw is None:
        raise TaskError(f"--from {path}: larger than {MAX_STATE_FILE_BYTES} bytes; not read, nothing was added")
    return _parsed_lines(path, raw)


def _parsed_lines(path: str, raw: bytes) -> Iterator[tuple[str, Task]]:
    for number, line in enumerate(io.BytesIO(raw), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TaskError(
                f"{path} line {number}: not UTF-8 text (byte {line[exc.start]:#04x} at column {exc.start + 1});"
                " nothing was added"
            ) from None
        if text.strip():
            yield f"{path} line {number}", _line_task(path, number, text)


def _run_spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    command = list(args.command or [])
    given = [bool(command), args.shell is not None, args.workflow is not None]
    if sum(given) > 1:
        parser.error("give one of: a command after --, --shell TEXT, or --workflow PLAN.yaml")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.max_attempts is not None and args.max_attempts < 1:
        parser.error(f"--max-attempts must be >= 1, got {args.max_attempts}")
    spec: dict[str, Any]
    if command:
        spec = {"kind": "argv", "argv": command}
    elif args.shell is not None:
        if not args.shell.strip():
            parser.error("--shell needs a command")
        spec = {"kind": "shell", "shell": args.shell}
    elif args.workflow is not None:
        plan = Path(args.workflow).resolve()
        load_plan(plan)  # a plan that cannot run is refused now, with the step and key, not at 3 a.m.
        spec = {"kind": "plan", "plan": str(plan)}
    else:
        if any(v is not None for v in (args.cwd, args.timeout, args.max_attempts, args.target, args.evidence_glob)):
            parser.error("--cwd, --timeout, --max-attempts, --target and --evidence-glob need something to run")
        return None
    cwd = Path(args.cwd).resolve() if args.cwd else Path.cwd() if spec["kind"] != "plan" else None
    if cwd is not None and not cwd.is_dir():
        parser.error(f"--cwd {args.cwd!r} is not a folder")
    spec.update(cwd=str(cwd) if cwd else None, timeout_s=args.timeout, max_attempts=args.max_attempts)
    spec["target"] = args.target
    if args.evidence_glob:
        if not all(p.strip() and "\0" not in p for p in args.evidence_glob):
            parser.error("--evidence-glob needs a file pattern, e.g. 'shots/*.png'")
        spec["evidence"] = list(args.evidence_glob)
    return spec


def _tree_lines(tree: TaskTree, roots: list[Task]) -> list[str]:
    lines: list[str] = []
    # Walked with a stack, not by recursion: a chain of thousands of levels is drawn, not a RecursionError.
    stack: list[tuple[Task, str, bool, bool]] = [(root, "", True, True) for root in reversed(roots)]
    while stack:
        task, prefix, last, top = stack.pop()
        mark = "" if top else ("└─ " if last else "├─ ")
        note = ""
        if tree.is_actionable(task):
            note = "  <- actionable"
        elif task.exec_state in ACTIONABLE_STATES and tree.waiting_on(task.name):
            note = "  (waits for children)"
        title = f"  {task.display_name}" if task.display_name else ""
        lines.append(f"{prefix}{mark}{task.name} [{task.type} {task.priority} {task.exec_state}]{title}{note}")
        kids = tree.children(task.name)
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        stack += [(child, child_prefix, i == len(kids) - 1, False) for i, child in reversed(list(enumerate(kids)))]
    return lines


# `tree --json` nests each child in its parent: deeper than this, no JSON encoder writes it (and no reader
# reads it back); `list --json` gives the same tasks flat, each with its parent and level.
MAX_JSON_LEVELS = 200


def _tree_json(tree: TaskTree, root: Task) -> dict[str, Any]:
    top = {**_brief(root), "children": []}
    stack: list[tuple[Task, dict[str, Any], int]] = [(root, top, 1)]
    while stack:
        task, node, depth = stack.pop()
        kids = tree.children(task.name)
        if kids and depth >= MAX_JSON_LEVELS:
            raise TaskError(
                f"the tree under {root.name!r} is more than {MAX_JSON_LEVELS} levels deep, more than `tree --json`"
                " nests; `tasks.py list --json` lists every task flat, each with its parent and level"
            )
        for child in kids:
            node["children"].append({**_brief(child), "children": []})
            stack.append((child, node["children"][-1], depth + 1))
    return top


def _show_lines(task: Task, tree: TaskTree, log: Path) -> list[str]:
    lines = [f"{task.name}: {task.exec_state} ({task.status})"]
    rows: list[tuple[str, Any]] = [
        ("display name", task.display_name),
        ("type / priority", f"{task.type} / {task.priority}"),
        ("parent", task.parent),
        ("root / level", f"{task.root} / {task.level}"),
        ("children", ", ".join(f"{c.name} ({c.exec_state})" for c in tree.children(task.name)) or None),
        ("runs", _describe_run(task.run)),
        ("retries / executions", f"{task.retry_count} / {task.execution_count}"),
        ("created", utc_iso(task.created_ts) if task.created_ts else None),
        ("last executed", utc_iso(task.last_executed_ts) if task.last_executed_ts else None),
        ("last result", task.last_result),
        ("last error class", task.last_error_class),
        ("failed step", task.failed_step),
        ("incident", task.incident),
        ("fix record", task.fix_record),
        ("log", str(log) if log.exists() else None),
    ]
    if task.exec_state == PROCESSING:
        rows.append(("runner", task.runner))
        rows.append(("heartbeat", utc_iso(task.heartbeat_ts) if task.heartbeat_ts else None))
        rows.append(("last activity", utc_iso(task.activity_ts) if task.activity_ts else None))
    for key, value in rows:
        if value is not None:
            lines.append(f"  {key}: {value}")
    for key in ("description", "success_criteria", "fix_suggestion", "analysis", "plan", "solution", "last_error"):
        value = getattr(task, key)
        if value:
            body = str(value).rstrip().replace("\n", "\n    ")
            lines.append(f"  {key.replace('_', ' ')}:\n    {body}")
    if task.exec_state not in (VOID, END):
        why = why_not(tree, task)
        lines.append(f"  next: {why}" if why else "  next: actionable; `tasks.py run-next` would consider it")
    return lines


def _describe_run(run: RunSpec | None) -> str | None:
    if run is None:
        return None
    if run.kind == "plan":
        return f"workflow {run.plan}"
    text = shlex.join(run.argv or ()) if run.kind == "argv" else f"sh -c {shlex.quote(str(run.shell))}"
    extras = [f"{k}={getattr(run, k)}" for k in ("cwd", "timeout_s", "max_attempts", "target") if getattr(run, k)]
    if run.evidence:
        extras.append(f"evidence={','.join(run.evidence)}")
    return text + (f" ({', '.join(extras)})" if extras else "")


class _Parser(cli.ArgumentParser):
    """tasks.py's parser (and its commands'): a refusal caused by a task name that starts with a dash (a valid
    id: `-x`), which argparse takes for an unknown option, says how to give that name."""

    def error(self, message: str) -> Any:
        words = sys.argv[1:]
        own = words[: words.index("--")] if "--" in words else words
        if any(w.startswith("-") and w.split("=")[0] not in self._option_string_actions for w in own[1:]):
            message += "; a task NAME that starts with a dash goes after -- (`tasks.py show -- -x`; `--task=-x`)"
        return super().error(message)


def build_parser() -> cli.ArgumentParser:
    parser = _Parser(prog="tasks.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="op", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        return p

    add = command("add", "create a task (NEW); what it runs goes after --, or --shell / --workflow")
    add.usage = "tasks.py add NAME [options] [-- CMD ...]"
    add.add_argument("name", nargs="?")
    add.add_argument("--from", dest="from_file", metavar="FILE", help="add the tasks of FILE: one JSON object a line")
    add.add_argument("--type", choices=TYPES, help="fix, regular or creative (default: fix for FIX-*, else regular)")
    add.add_argument("--priority", choices=PRIORITIES, help="P0, P1 or P2 (default P1)")
    add.add_argument("--parent", help="make it a child of this task")
    add.add_argument("--display-name")
    add.add_argument("--description")
    add.add_argument("--success-criteria")
    add.add_argument("--fix-suggestion")
    add.add_argument("--shell", metavar="TEXT", help="run this through /bin/sh -c (say so explicitly)")
    add.add_argument("--workflow", metavar="PLAN.yaml", help="run this workflow plan (checkpointed steps)")
    add.add_argument("--cwd", help="run the command in this folder (default: the current one)")
    add.add_argument("--timeout", type=cli.seconds, metavar="S", help="seconds per attempt")
    add.add_argument("--max-attempts", type=int, metavar="N", help="attempts for retryable failures per run")
    add.add_argument("--target", help="what the command talks to: its circuit breaker guards each attempt")
    add.add_argument(
        "--evidence-glob",
        action="append",
        metavar="PATTERN",
        help="files the command leaves that its fix record lists as evidence (e.g. 'shots/*.png'; repeatable)",
    )

    lst = command("list", "every task, in run order")
    lst.add_argument("--state", type=str.upper, metavar="EXEC_STATE", help="only tasks in this exec state")
    lst.add_argument("--type", choices=TYPES)

    tree = command("tree", "the tasks as a tree, children under parents")
    tree.add_argument("name", nargs="?", help="only this task's subtree")

    show = command("show", "one task in full")
    show.add_argument("name")

    act = command("actionable", "the tasks that can run now, in run order")
    act.add_argument("--type", choices=TYPES, action="append", help="only this type (repeatable)")
    act.add_argument("--limit", type=int, metavar="N")

    mark = command("mark", "move a task to another exec state (checked against the transition table)")
    mark.add_argument("name")
    mark.add_argument("verb", choices=sorted(VERBS), help="start, end, error, crash, manual or void")
    mark.add_argument("--reason", help="why: kept in the task's history")
    mark.add_argument("--result", help="with end: the result to record")

    void = command("void", "void a task and its unfinished children")
    void.add_argument("name")
    void.add_argument("--reason")

    setp = command("set", "record text on a task: analysis, plan, solution, ... (agents use this)")
    setp.add_argument("name")
    for key in TEXT_FIELDS:
        setp.add_argument(f"--{key.replace('_', '-')}", dest=key)
    setp.add_argument("--priority", choices=PRIORITIES)
    setp.add_argument("--type", choices=TYPES)

    rep = command("reparent", "move a task (and its subtree) under another parent, or to the top")
    rep.add_argument("name")
    where = rep.add_mutually_exclusive_group(required=True)
    where.add_argument("--parent")
    where.add_argument("--top", action="store_true")

    run = command("run-next", "run the next actionable task (checks for stuck tasks first)")
    run.add_argument("--type", choices=TYPES, action="append", help="only this type (repeatable)")
    run.add_argument("--task", help="run this task now, if it is actionable")
    run.add_argument("--echo", action="store_true", help="also copy the task's output to stderr")
    run.add_argument("--no-stuck-check", action="store_true", help="skip the stuck check before running")
    run.add_argument("-q", "--quiet", action="store_true", help="print nothing when there is nothing to do")
    run.add_argument(
        "--max",
        type=int,
        metavar="N",
        help="run up to N tasks one after another in this process (a long-lived host's loop); it stops early"
        " when nothing is actionable, on a signal, or when the tree is unreachable or locked",
    )

    stuck = command("check-stuck", "find running tasks that are stuck or dead, and deal with them")
    stuck.add_argument("--dry-run", action="store_true", help="only report")

    beat = command("beat", "an agent working on a task it marked started: 'still working' (and a log line)")
    beat.add_argument("name")
    beat.add_argument("--message")

    arch = command("archive", "move finished trees (all END or VOID) out of the live set, to the archive")
    arch.add_argument(
        "--older-than", type=cli.finite, metavar="DAYS", help="unchanged this long (default: tasks.archive_after_days)"
    )

    log = command("log", "the end of a task's output log")
    log.add_argument("name")
    log.add_argument("--lines", type=int, default=50)

    fleet = command("fleet", "fleet mode (store.url): init creates or migrates the shared database; status shows it")
    fleet.add_argument("action", choices=["init", "status"])
    return parser


# The commands that only read the tree (and `check-stuck --dry-run`): they answer on a full disk too.
READ_ONLY = frozenset({"list", "tree", "show", "actionable", "log"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    own = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if own[:1] == ["add"] and "--" in own:  # everything after add's first -- is the task's command
        cut = own.index("--")
        own, command = own[:cut], own[cut + 1 :]
    # Any other command takes -- as every Unix command does, its end of options: a task named `-x` (a valid
    # id, which `add --from` takes) is `tasks.py show -- -x`, where argparse alone refused it for good.
    args, extra = parser.parse_known_args(own)
    if extra:
        if "--" in own and not set(extra) - {"--", *own[own.index("--") + 1 :]}:
            parser.error(f"a command after -- only goes with add, not {args.op}; after -- comes a task's NAME")
        cli.ArgumentParser.error(parser, f"unrecognized arguments: {' '.join(extra)}")  # argparse's own words
    args.command = command
    _check_text(args, parser)
    cli.setup_logging()
    store = TaskStore()
    if args.op == "fleet":  # says how the database is, up or down: it needs no task tree open
        return _op_fleet(store, args, parser)
    try:
        if args.op in READ_ONLY or (args.op == "check-stuck" and args.dry_run):
            store.open_to_read()  # on a full disk too, with a warning
        else:
            store.db  # noqa: B018 - opened (and an older JSON tree imported) now, so the import is reported first
        for notice in store.notices:
            cli.say(notice)
        handler = globals()[f"_op_{args.op.replace('-', '_')}"]
        code: int = handler(store, args, parser)
    finally:
        store.close()  # a read on a full disk holds the database locked until then
    return code


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: Sequence[str] | str | None) -> None:
    if args.json:
        cli.emit_json(obj)
    elif text is not None:
        # A task's texts and its log are anyone's (an agent's, a model's, a command's output): a terminal
        # control in them (an OSC title, a screen clear, CR + erase-line) is shown, never obeyed.
        print(inert(text if isinstance(text, str) else "\n".join(text)))


def _op_add(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.from_file is not None:
        others = [
            args.name,
            args.parent,
            args.display_name,
            args.description,
            args.success_criteria,
            args.fix_suggestion,
            args.shell,
            args.workflow,
            args.cwd,
            args.timeout,
            args.max_attempts,
            args.target,
            args.type,
            args.priority,
        ]
        if any(v is not None for v in others) or args.command:
            parser.error("--from FILE takes every task from FILE: give no name or other options with it")
        count = store.add_many(_lines_of(args.from_file), by="tasks.py add --from")
        _emit(
            args, {"ok": True, "added": count, "from": args.from_file}, f"added {count} task(s) from {args.from_file}"
        )
        return EXIT_OK
    if args.name is None:
        parser.error("add needs a NAME (or --from FILE)")
    run = _run_spec(args, parser)
    kind = args.type or ("fix" if args.name.startswith("FIX-") else "regular")
    task = Task(
        name=args.name,
        type=kind,
        priority=args.priority or "P1",
        parent=args.parent,
        display_name=args.display_name,
        description=args.description,
        success_criteria=args.success_criteria,
        fix_suggestion=args.fix_suggestion,
        run=None if run is None else RunSpec.from_json(run, f"task {args.name!r}"),
    )
    with store.transaction() as tree:
        tree.add(task, by="tasks.py add")
    _emit(
        args,
        {"ok": True, "task": task.to_json()},
        f"added {task.name} ({task.type}, {task.priority}, level {task.level})",
    )
    return EXIT_OK


def _op_list(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.state and args.state not in EXEC_STATES:
        parser.error(f"--state must be one of {', '.join(EXEC_STATES)}, not {args.state!r}")
    tasks = store.iter_tasks(exec_state=args.state, task_type=args.type)  # streamed: flat memory at any size
    out = sys.stdout
    if args.json:
        # Streamed, so "ok" comes last: a row that cannot be read (edited by hand) still ends one valid object.
        out.write('{"tasks": [')
        try:
            for i, t in enumerate(tasks):
                out.write((", " if i else "") + json.dumps(_brief(t), ensure_ascii=False))
        except SelfHealError as exc:
            error = {"ok": False, "error": type(exc).__name__, "message": str(exc), "exit": exc.exit_code}
            out.write("], " + json.dumps(error, ensure_ascii=False)[1:] + "\n")
            cli.say(str(exc))
            return exc.exit_code
        out.write('], "ok": true}\n')
        return EXIT_OK
    first = next(tasks, None)
    if first is None:
        print("no tasks")
        return EXIT_OK
    print(f"{'NAME':<32} {'TYPE':<8} PRI {'EXEC_STATE':<17} RET  DISPLAY NAME")
    for t in itertools.chain([first], tasks):
        title = inert(" ".join((t.display_name or "").splitlines()))  # one row a task, its controls shown
        out.write(f"{t.name:<32} {t.type:<8} {t.priority}  {t.exec_state:<17} {t.retry_count:>3}  {title}\n")
    return EXIT_OK


def _op_tree(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    tree = store.snapshot()
    _warn_problems(store)
    roots = [tree.get(args.name)] if args.name else tree.roots()
    if args.json:
        cli.emit_json({"ok": True, "tree": [_tree_json(tree, r) for r in roots]})
    else:
        _emit(args, {}, _tree_lines(tree, roots) or "no tasks")
    return EXIT_OK


def _op_show(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    tree = store.snapshot()
    _warn_problems(store)
    try:
        task = tree.get(args.name)
    except UnknownTask:
        past = store.archived(args.name)
        if not past:
            raise
        # Finished long ago and archived: show the last one, read-only.
        data = past[-1]
        lines = [f"{args.name}: {data.get('exec_state')} (archived: {utc_iso(data['archived_ts'])})"]
        lines += [f"  {k}: {data[k]}" for k in ("last_result", "updated", "retry_count") if data.get(k) is not None]
        if data.get("log_file"):
            lines.append(f"  log: {data['log_file']}")
        _emit(args, {"ok": True, "task": data, "archived": utc_iso(data["archived_ts"])}, lines)
        return EXIT_OK
    why = why_not(tree, task)
    obj = {"ok": True, "task": task.to_json(), "actionable": why is None, "why_not": why}
    _emit(args, obj, _show_lines(task, tree, store.log_path(task.name)))
    return EXIT_OK


def _op_archive(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    days = store.config.tasks.archive_after_days if args.older_than is None else args.older_than
    if days < 0:
        parser.error(f"--older-than must be >= 0 days, got {days}")
    with store.transaction() as tree:
        moved = tree.archive_finished(older_than_s=days * 86400)
    names = sorted(t.name for t in moved)
    text = f"archived {len(names)} task(s)" + (f": {', '.join(names)}" if names else "")
    _emit(args, {"ok": True, "archived": names, "folder": str(store.archive_folder)}, text)
    return EXIT_OK


def _op_actionable(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    tree = store.snapshot()
    _warn_problems(store)
    found = tree.actionable(types=args.type, limit=args.limit)
    obj = {"ok": True, "tasks": [t.name for t in found], "details": [_brief(t) for t in found]}
    _emit(args, obj, [t.name for t in found] if found else None)
    return EXIT_OK


def _op_mark(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    wanted = VERBS[args.verb]
    check_sizes(args.name, {"last_result": args.result})
    with store.transaction() as tree:
        if wanted == VOID:
            changed = tree.void(args.name, args.reason, by="tasks.py mark")
        else:
            task = tree.transition(args.name, wanted, args.reason, by="tasks.py mark")
            if args.result is not None:
                task.last_result = args.result
            changed = [task]
    task = changed[0]
    extra = f" (and {len(changed) - 1} unfinished descendant(s))" if len(changed) > 1 else ""
    text = f"{task.name}: {task.exec_state}{extra}"
    _emit(
        args, {"ok": True, "task": task.name, "exec_state": task.exec_state, "changed": [t.name for t in changed]}, text
    )
    return EXIT_OK


def _op_void(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    args.verb, args.result = "void", None
    return _op_mark(store, args, parser)


def _op_set(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    fields = {k: getattr(args, k) for k in (*TEXT_FIELDS, "priority", "type") if getattr(args, k) is not None}
    if not fields:
        parser.error(
            "nothing to set; give at least one of " + ", ".join(f"--{k.replace('_', '-')}" for k in TEXT_FIELDS)
        )
    with store.transaction() as tree:
        task = tree.update(args.name, by="tasks.py set", **fields)
    _emit(args, {"ok": True, "task": task.to_json()}, f"{task.name}: set {', '.join(sorted(fields))}")
    return EXIT_OK


def _op_reparent(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    with store.transaction() as tree:
        task = tree.reparent(args.name, None if args.top else args.parent, by="tasks.py reparent")
    where = task.parent or "the top"
    _emit(
        args,
        {"ok": True, "task": task.name, "parent": task.parent, "level": task.level},
        f"{task.name} is now under {where}",
    )
    return EXIT_OK


def _op_run_next(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.task and args.type:
        parser.error("--task and --type do not go together")
    if args.max is not None and args.max < 1:
        parser.error(f"--max must be a whole number >= 1, got {args.max}")
    if args.max is not None and args.task:
        parser.error("--max and --task do not go together")
    stuck = [] if args.no_stuck_check else check_stuck(store)
    for finding in stuck:
        cli.say(
            f"{finding.task}: {finding.kind}; now {finding.exec_state}"
            + (f", {finding.fix_task} created" if finding.fix_task else "")
        )
    stop = LoopStop()  # each run stops on a flag of its own, which a signal to run-next sets too
    stop.install()
    cli.hurry_on(stop)  # a stalled reader of our stderr must not hold up acting on the signal
    become_subreaper()  # daemons a command starts are re-parented to us, so they can be found and stopped
    results: list[TaskRun] = []
    try:
        from selfheal.heal.diagnose import task_runner  # noqa: PLC0415 - running tasks only

        runner = task_runner(store, stop=stop, echo=sys.stderr.buffer if args.echo else None)
        for _ in range(args.max or 1):
            if results and not args.json:
                _say_run(results[-1])  # as each run ends
            try:
                results.append(runner.run_next(types=args.type, only=args.task))
            except NotAttempted as exc:  # the tree locked or unreachable (exit 4), after runs that ended well
                if not results:
                    raise
                _say(f"stopped after {len(results)} run(s): {exc}")
                break
            # Nothing left, a signal to run-next, or a run self-heal took back (stuck, its lease lost): the loop
            # ends. A run whose task a person voided or ended stopped alone: the loop goes on to the next task.
            last = results[-1]
            if (
                last.outcome == "nothing"
                or stop.signum is not None
                or (last.outcome == "superseded" and not last.by_person)
            ):
                break
    finally:
        stop.close()
    result = results[-1]
    result.stuck = [f.to_json() for f in stuck]
    _report_status(result.task, result.outcome)
    _warn_problems(store)
    if args.max is not None:
        # A pass that found nothing, or that a signal stopped before its claim, ran no task; the signal's exit (3,
        # as during a run) still counts when no run failed before it.
        ran = [r for r in results if r.task is not None]
        code = next((r.exit_status for r in results if r.exit_status), EXIT_OK)
        if args.json:
            cli.emit_json({"ok": code == EXIT_OK, "ran": len(ran), "runs": [r.to_json() for r in results]})
            _say_changed_by_person(results)
        elif result.outcome != "nothing" or not args.quiet:
            _say_run(result)
        return code
    if args.json:
        cli.emit_json(result.to_json())
        _say_changed_by_person(results[-1:])
    elif result.outcome != "nothing" or not args.quiet:
        _say_run(result)
    return result.exit_status


def _say_changed_by_person(results: list[TaskRun]) -> None:
    """With --json too, a run whose task a person changed under it says so on stderr: it exits 0, and its
    outcome was not recorded, which whoever reads the mail should know."""
    for result in results:
        if result.by_person:
            _say(result.message)


def _say_run(result: TaskRun) -> None:
    _say(result.message)  # a failure's reason is the command's last line of output
    for fix in result.fix_tasks:
        cli.say(f"created {fix}")
    if result.incident:
        cli.say(f"incident: {result.incident}")


def _report_status(task: str | None, outcome: str) -> None:
    """self-heal's line among the skills' status files: the task runner ran, and how its last run went."""
    now = time.time()
    values = {"tasks_at": utc_iso(now), "tasks_outcome": outcome, "tasks_task": task}
    try:
        update_status(values, now=now)
    except (OSError, StateError) as exc:  # the run itself is done and recorded; only this line is missing
        cli.say(f"warning: cannot write {status_path()}: {exc}")


def _op_check_stuck(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    findings = find_stuck(store) if args.dry_run else check_stuck(store)
    lines = []
    for f in findings:
        what = (
            f"no output for {f.idle_s:.0f}s"
            if f.kind == "stuck"
            else f"runner pid {(f.runner or {}).get('pid')} is gone"
        )
        line = f"{f.task}: {f.kind} ({what})"
        if not args.dry_run:
            line += f"; now {f.exec_state}"
            if f.killed:
                line += f"; killed {' '.join(map(str, f.killed))}"
            if f.fix_task:
                line += f"; {f.fix_task} created"
        lines.append(line)
    _emit(args, {"ok": not findings, "findings": [f.to_json() for f in findings]}, lines or "no stuck tasks")
    return EXIT_PROBLEMS if findings else EXIT_OK


def _op_beat(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    now = store.beat(args.name)  # the database's clock in fleet mode
    if args.message:
        log = BoundedLog(
            store.log_path(args.name),
            max_chars=store.config.tasks.log_max_chars,
            keep_chars=store.config.tasks.log_keep_chars,
            redactor=Ledger(store.state, store.config).redactor,
        )
        log.note(f"{utc_iso(now)} {args.message}")
        log.close()
    _emit(args, {"ok": True, "task": args.name, "heartbeat": utc_iso(now)}, None)
    return EXIT_OK


def _op_log(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.lines < 1:
        parser.error(f"--lines must be >= 1, got {args.lines}")
    store.get(args.name)
    path = store.log_path(args.name)
    # Read a line at a time, only the last --lines kept: the runner keeps a task's log bounded, but one
    # written by something else (a 300 MB log took 1.5 GB and 8 s read whole) must not be held.
    kept: collections.deque[str] = collections.deque(maxlen=args.lines)
    try:
        with os.fdopen(open_read(path), "rb") as fh:  # never through a planted link (exit 2)
            for raw in iter_lines(fh, TAIL_LINE_BYTES):
                kept.append(
                    f"[self-heal: a line over {TAIL_LINE_BYTES} bytes left out]"
                    if raw is None
                    else raw.decode("utf-8", "replace").rstrip("\r\n")
                )
    except FileNotFoundError:
        pass
    lines = list(kept)
    _emit(args, {"ok": True, "task": args.name, "log": str(path), "lines": lines}, lines or f"no output yet ({path})")
    return EXIT_OK


def _op_fleet(store: TaskStore, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from selfheal.core.fleet import fleet_report  # noqa: PLC0415 - the fleet command only

    config = store.config
    report = fleet_report(
        config.store, store.state.sub("fleet") / SPOOL, init=args.action == "init", lease_s=config.tasks.lease_s
    )
    if args.action == "init" and report["reachable"]:
        store.db  # noqa: B018 - the tree this host kept before fleet mode goes into the fleet's now, once
        for notice in store.notices:
            cli.say(notice)
    lines = [f"fleet database {report['url']} (this host: {report['host']})"]
    if not report["reachable"]:
        lines.append(f"fleet database unreachable: degraded ({report['error']})")
    else:
        lines.append(f"schema version {report['schema_version']}" + (" (ready)" if report["initialized"] else ""))
        for h in report["hosts"]:
            lines.append(f"  host {h['host']}: last seen {h['last_seen']} (pid {h['pid']})")
        for b in report["breakers"]:
            held = ", ".join(f"{k}: {v}" for k, v in b["permits_by_host"].items()) or "none"
            lines.append(f"  breaker {b['target']}: {b['state']}, permits held {held}")
            if b.get("unreadable"):
                lines.append(f"    unreadable: {b['unreadable']}")
        lines.append(f"  ledger: {report['ledger']['partitions']} day partition(s)")
        lines.append(f"  leases (tasks.lease_s {report['lease_s']:g}s): {len(report['leases'])} running task(s)")
        for lease in report["leases"]:
            state = "EXPIRED, the next claim takes it back" if lease["expired"] else f"{lease['expires_in_s']:g}s left"
            lines.append(
                f"    {lease['task']}: host {lease['host']} (pid {lease['pid']}), since {lease['since']},"
                f" heartbeat {lease['heartbeat']}, lease until {lease['expires']} ({state})"
            )
    if report["spooled_events"]:
        lines.append(f"{report['spooled_events']} ledger event(s) spooled on this host, waiting for the database")
    if report["spool_problem"]:
        lines.append(f"the spool of this host's ledger events cannot be counted: {report['spool_problem']}")
    _emit(args, report, lines)
    return EXIT_OK if report["reachable"] and not report["spool_problem"] else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
