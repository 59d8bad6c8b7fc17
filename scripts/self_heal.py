#!/usr/bin/env python3
"""Turn failures into fix records: evidence, then known rules, then a model, then a second look.

  self_heal.py --task ID [--no-model]                  the last failure of a task (retry_run, workflow, task tree)
  self_heal.py --from-openclaw-logs [PATH ...] [--since 24h]   failures in OpenClaw's own logs
  self_heal.py list [--status open] | show FIX-ID | void FIX-ID
  self_heal.py --apply FIX-ID                          only allow-listed, reversible actions the skill owns
  self_heal.py --apply FIX-ID --allow-irreversible     a person's decision to also void a task (final)
  self_heal.py learnings [--workspace DIR]             .learnings/ERRORS.md entries for the workspace
                                                       (default: OpenClaw's, agents.defaults.workspace)

Records are fixes/FIX-<task>-NNN.json with a readable .md twin; the same failure again updates its record.
Nothing in a record is ever executed: fix steps are for a person or an agent, who applies them.

Exit codes: 0 done (a record written or updated; --apply applied; --from-openclaw-logs found nothing);
1 --from-openclaw-logs found failures; 2 usage (unknown task or record, bad --since, a log PATH that cannot be
read to its end: a cut or damaged archive, a .gz that is not gzip; a --workspace that is
not an existing folder: only its .learnings/ is created; an ERRORS.md that is a link, not a regular file or
not UTF-8: left as it is); 3 --apply refused
(an action not on the allow-list, a draft, nothing self-heal can do, an irreversible action without
--allow-irreversible).
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfheal._bootstrap import bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.core import openclaw_config  # noqa: E402
from selfheal.core.config import IRREVERSIBLE_ACTIONS, get_config  # noqa: E402
from selfheal.errors import EXIT_OK, EXIT_PROBLEMS  # noqa: E402
from selfheal.heal.diagnose import ApplyRefused, Healer, apply_fix, gather_openclaw, gather_task  # noqa: E402
from selfheal.observe import openclaw_logs  # noqa: E402
from selfheal.state.fixes import STATUSES, VOID, FixRecord, FixStore, render_markdown, write_learnings  # noqa: E402
from selfheal.state.inert import inert  # noqa: E402
from selfheal.state.root import NotRegularFile, StateRoot, expand_home, open_regular, read_bytes  # noqa: E402

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `24h`, `7d`, `2w` (a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="self_heal.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["list", "show", "void", "learnings"])
    parser.add_argument("fix_id", nargs="?", metavar="FIX-ID", help="with show and void")
    parser.add_argument("--task", metavar="ID", help="make or update the fix record for this task's last failure")
    parser.add_argument(
        "--from-openclaw-logs",
        nargs="*",
        metavar="PATH",
        help="read OpenClaw's logs (default: the files OpenClaw writes on this machine)",
    )
    parser.add_argument("--since", type=parse_duration, metavar="DURATION", help="with --from-openclaw-logs: e.g. 24h")
    parser.add_argument("--apply", metavar="FIX-ID", help="run the record's allow-listed, reversible actions")
    parser.add_argument(
        "--allow-irreversible",
        action="store_true",
        help="with --apply: a person's decision to also do what cannot be undone (void_task)",
    )
    parser.add_argument("--no-model", action="store_true", help="rules only: never call a model")
    parser.add_argument("--status", choices=STATUSES, help="with list: only records in this status")
    parser.add_argument("--reason", help="with void: why")
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        help="with learnings: the workspace (default: OpenClaw's agents.defaults.workspace, else its default)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _summary(record: FixRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "task": record.task,
        "status": record.status,
        "verdict": record.review.get("verdict"),
        "error_class": record.error_class,
        "kind": record.kind,
        "source": record.source,
        "occurrences": record.occurrences,
        "last_seen": record.last_seen,
        "root_cause": record.root_cause,
    }


def _describe(record: FixRecord, how: str, path: Path | None, note: str | None) -> list[str]:
    verdict = record.review.get("verdict")
    lines = [f"{record.id} ({how}; {record.source}; {verdict}; seen {record.occurrences}x)"]
    lines.append(f"  root cause: {record.root_cause}")
    lines += [f"  {i}. {step}" for i, step in enumerate(record.fix_steps, 1)]
    if record.review.get("objections"):
        lines += [f"  objection: {o}" for o in record.review["objections"]]
    if record.actions:
        final = [a for a in record.actions if a in IRREVERSIBLE_ACTIONS]
        lines.append(
            f"  self_heal.py --apply {record.id} would: {', '.join(record.actions)}"
            + (f" ({', '.join(final)} cannot be undone: only with --allow-irreversible)" if final else "")
        )
    if note:
        lines.append(f"  note: {note}")
    if path:
        lines.append(f"  record: {path.with_suffix('.md')}")
    return [inert(line) for line in lines]  # a model's or a log's text: shown, never obeyed by the terminal


def _warn_problems(store: FixStore) -> None:
    """Say on stderr which fix records could not be read (moved aside as corrupt, or with a bad field left for a
    person), each once: a record moved aside in silence looked lost."""
    for problem in dict.fromkeys(store.problems):
        cli.say(inert(f"warning: {problem}"))
    store.problems.clear()


def _log_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a log (as analyze_logs.py says it), or None. Opened non-blocking, so a
    FIFO is refused, not waited on; a pipe or a device (/dev/zero) would never end."""
    try:
        fd, _ = open_regular(path)
    except FileNotFoundError:
        return "no such log file"
    except PermissionError:
        return "permission denied"
    except NotRegularFile as exc:
        return "is a folder, not a log file" if stat.S_ISDIR(exc.mode) else "is not a regular file: a pipe or a device"
    except OSError as exc:
        return f"cannot open ({exc.strerror or exc})"
    os.close(fd)
    return None


def default_workspace(env: Mapping[str, str] | None = None) -> Path:
    """The agent's workspace, as OpenClaw finds it (docs/gateway/config-agents/workspace-and-bootstrap.md):
    `agents.defaults.workspace` in openclaw.json, else $OPENCLAW_WORKSPACE_DIR, else <state dir>/workspace."""
    env = os.environ if env is None else env
    agents = openclaw_config.read_config(env).get("agents")
    defaults = agents.get("defaults") if isinstance(agents, dict) else None
    configured = defaults.get("workspace") if isinstance(defaults, dict) else None
    if isinstance(configured, str) and configured.strip():
        value, missing = openclaw_config.expand(configured.strip(), env)
        if not missing:
            return expand_home(value, openclaw_config.openclaw_home(env))
    if env.get("OPENCLAW_WORKSPACE_DIR"):
        return expand_home(env["OPENCLAW_WORKSPACE_DIR"], openclaw_config.openclaw_home(env))
    return openclaw_config.state_dir(env) / "workspace"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = [
        args.command is not None,
        args.task is not None,
        args.from_openclaw_logs is not None,
        args.apply is not None,
    ]
    if sum(chosen) != 1:
        parser.error("give one of: --task ID, --from-openclaw-logs, --apply FIX-ID, list, show, void, learnings")
    if args.allow_irreversible and args.apply is None:
        parser.error("--allow-irreversible goes with --apply FIX-ID")
    if args.command in ("show", "void") and not args.fix_id:
        parser.error(f"{args.command} needs a FIX-ID")
    if args.since is not None and args.from_openclaw_logs is None:
        parser.error("--since goes with --from-openclaw-logs")
    cli.setup_logging()
    config = get_config()
    state = StateRoot.from_env()

    if args.task is not None:
        healer = Healer(config=config, state=state, use_model=False if args.no_model else None)
        result = healer.heal(gather_task(args.task, state=state, config=config))
        _warn_problems(healer.store)
        how = "created" if result.created else ("updated" if result.counted else "unchanged")
        if args.json:
            cli.emit_json({"ok": True, **result.to_json(), "record": result.record.to_json()})
        else:
            print("\n".join(_describe(result.record, how, result.path, result.model_note)))
        return EXIT_OK

    if args.from_openclaw_logs is not None:
        paths = [Path(p) for p in args.from_openclaw_logs] or openclaw_logs.discover()
        for path in paths:
            problem = _log_file_problem(path)
            if problem:
                parser.error(f"{path}: {problem}")
        since_ts = time.time() - args.since if args.since is not None else None
        unreadable: list[dict[str, str]] = []

        def skip(path: Path, problem: str) -> None:
            # A file found, not named: a broken archive in OpenClaw's folder does not hide the other logs' failures.
            unreadable.append({"path": str(path), "error": problem})
            cli.say(inert(f"warning: could not read {path}: {problem}; the other logs were read"))

        found, lines, malformed = gather_openclaw(
            paths, since_ts=since_ts, config=config, on_error=None if args.from_openclaw_logs else skip
        )
        healer = Healer(config=config, state=state, use_model=False if args.no_model else None)
        results = [healer.heal(evidence) for evidence in found]
        _warn_problems(healer.store)
        if args.json:
            cli.emit_json(
                {
                    "ok": not results,
                    "files": [str(p) for p in paths],
                    "lines": lines,
                    "malformed": malformed,
                    "failures": len(found),
                    "unreadable": unreadable,
                    "records": [r.to_json() for r in results],
                }
            )
        else:
            print(f"read {lines} line(s) from {len(paths)} file(s); {len(found)} failure(s)")
            for result in results:
                how = "created" if result.created else ("updated" if result.counted else "unchanged")
                print("\n".join(_describe(result.record, how, result.path, result.model_note)))
        return EXIT_PROBLEMS if results else EXIT_OK

    if args.apply is not None:
        try:
            done = apply_fix(args.apply, config=config, state=state, allow_irreversible=args.allow_irreversible)
        except ApplyRefused as exc:
            if args.json:
                cli.emit_json({"ok": False, "error": "ApplyRefused", "message": str(exc), "exit": exc.exit_code})
            cli.say(inert(str(exc)))
            return exc.exit_code
        if args.json:
            cli.emit_json({"ok": True, "id": args.apply, "applied": [vars(d) for d in done]})
        else:
            for item in done:
                print(inert(f"{item.action} {item.target}: {item.done} (undo: {item.undo})"))
        return EXIT_OK

    store = FixStore(state)
    if args.command == "list":
        records = [r for r in store.all() if args.status is None or r.status == args.status]
        _warn_problems(store)
        if args.json:
            cli.emit_json({"ok": True, "records": [_summary(r) for r in records]})
        elif not records:
            print("no fix records")
        else:
            for r in records:
                verdict = "" if r.review.get("verdict") == "ready" else " (draft)"
                cause = inert(" ".join(r.root_cause.splitlines()))[:80]
                print(f"{r.id}  {r.status}{verdict}  seen {r.occurrences}x  last {r.last_seen}  {cause}")
        return EXIT_OK
    if args.command == "show":
        record = store.get(args.fix_id)
        if args.json:
            cli.emit_json({"ok": True, "record": record.to_json()})
        else:
            # Written inert; made inert again for a record written before that (or edited by hand). A twin that
            # is gone (deleted, or an older version killed between the record and its twin) is drawn again.
            try:
                text = read_bytes(store.path(record.id).with_suffix(".md")).decode("utf-8", "replace")
            except FileNotFoundError:
                text = render_markdown(record)
            sys.stdout.write(inert(text))
        return EXIT_OK
    if args.command == "void":
        with store.locked():
            record = store.get(args.fix_id)
            record.status = VOID
            store.add_history(record, "voided" + (f": {args.reason}" if args.reason else ""))
            store.save(record)
        if args.json:
            cli.emit_json({"ok": True, "id": record.id, "status": record.status})
        else:
            print(f"{record.id}: void")
        return EXIT_OK
    # learnings
    workspace = Path(args.workspace).expanduser() if args.workspace else default_workspace()
    if args.workspace and not workspace.is_dir():
        # Only .learnings/ inside it is ours to create: a mistyped --workspace must not grow a tree elsewhere.
        why = "is not a folder" if workspace.exists() else "does not exist"
        parser.error(f"--workspace {workspace}: {why}; give the OpenClaw workspace folder")
    target = workspace / ".learnings" / "ERRORS.md"
    records = store.all()
    _warn_problems(store)
    added, updated = write_learnings(target, records)
    if args.json:
        cli.emit_json({"ok": True, "file": str(target), "added": added, "updated": updated})
    else:
        print(f"{target}: {added} entr{'y' if added == 1 else 'ies'} added, {updated} updated")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
