#!/usr/bin/env python3
"""Save, restore and list conversation snapshots, so an interrupted session can be resumed.

  snapshot.py save ID --messages-file F [--state-file F] [--keep N]
                                        F is a JSON file (messages: `-` reads stdin); keeps the last N messages
  snapshot.py restore ID                print the snapshot (messages and state) as JSON
  snapshot.py list [--interrupted]      every snapshot (or only interrupted ones), newest first
  snapshot.py mark-interrupted ID [--reason TEXT]
  snapshot.py delete ID                 forget it (after the session ended normally)

Every subcommand takes --json: one JSON object on stdout.
Exit codes: 0 ok; 2 usage (bad id, unreadable or invalid file, text that is not UTF-8, a snapshot over
the 64 MiB a snapshot file may hold, no snapshot for ID on restore or mark-interrupted, a symbolic link
planted under the state root); 3 failed (a corrupt snapshot: moved aside
as <ID>.json.corrupt-<time>; the snapshot could not be written: disk full or read-only, the file named).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfheal._bootstrap import CLOSED_AT_START, bootstrap

bootstrap()

from selfheal import cli  # noqa: E402
from selfheal.clock import utc_iso  # noqa: E402
from selfheal.durable import snapshot  # noqa: E402
from selfheal.errors import EXIT_OK, UsageError  # noqa: E402
from selfheal.state.inert import inert, inert_json  # noqa: E402
from selfheal.state.root import MAX_STATE_FILE_BYTES, dumps, loads, read_at_most  # noqa: E402


def _read_json_file(name: str, *, stdin_ok: bool = False) -> Any:
    """The parsed content of file `name` (`-`: stdin); UsageError naming the file if it is missing or not JSON."""
    label = "stdin" if name == "-" and stdin_ok else name
    try:
        if label == "stdin":
            if sys.stdin is None or 0 in CLOSED_AT_START:  # descriptor 0 closed (`<&-`): /dev/null since bootstrap
                raise UsageError("--messages-file -: standard input is closed; no messages to read")
            raw: bytes | None = sys.stdin.buffer.read(MAX_STATE_FILE_BYTES + 1)
            raw = None if raw is not None and len(raw) > MAX_STATE_FILE_BYTES else raw
        else:
            with Path(name).open("rb") as fh:
                raw = read_at_most(fh, MAX_STATE_FILE_BYTES)
        if raw is None:  # a snapshot this big could not be saved, and would not be read back
            raise UsageError(f"{label} is larger than {MAX_STATE_FILE_BYTES} bytes; a snapshot is refused")
        return loads(raw)
    except OSError as exc:
        raise UsageError(f"cannot read {label}: {exc.strerror}") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise UsageError(f"{label} is not valid JSON: {exc}") from None


def _age(seconds: float) -> str:
    """`42s`, `7m`, `3h05m`, `2d04h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _one_line(text: str) -> str:
    """A reason as a table cell: its controls made inert (one copied from a log may hold an escape sequence that
    retitles or rewrites the reader's terminal) and its lines joined, so it cannot pass for a row of its own."""
    return " ".join(inert(text).splitlines())


def _table(infos: Sequence[snapshot.SnapshotInfo]) -> list[str]:
    rows = [("SESSION", "STATE", "SINCE", "AGE", "MESSAGES", "REASON")]
    for i in infos:
        state = "interrupted" if i.interrupted else "saved"
        rows.append((i.session_id, state, utc_iso(i.since), _age(i.age_s), str(i.message_count), _one_line(i.reason)))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[5]]).rstrip() for row in rows]


def _summary(snap: snapshot.Snapshot) -> dict[str, Any]:
    """The snapshot without its messages and state, plus how many messages it kept."""
    summary = {k: v for k, v in snap.to_json().items() if k not in ("messages", "state")}
    return {**summary, "kept": len(snap.messages)}


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__.split("\n\n")
    parser = cli.ArgumentParser(prog="snapshot.py", description=doc[0], epilog=doc[-1])
    common = cli.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("save", parents=[common], help="save a session's messages and state")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--messages-file", required=True, metavar="F", help="JSON list of messages; - reads stdin")
    p.add_argument("--state-file", metavar="F", help="JSON object of state to keep with them")
    p.add_argument("--keep", type=int, metavar="N", help="messages kept (default: snapshots.keep in the settings, 100)")
    p = sub.add_parser("restore", parents=[common], help="print a session's snapshot")
    p.add_argument("session_id", metavar="ID")
    p = sub.add_parser("list", parents=[common], help="list snapshots, newest first")
    p.add_argument("--interrupted", action="store_true", help="only interrupted sessions")
    p = sub.add_parser("mark-interrupted", parents=[common], help="mark a session interrupted")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--reason", default="", help="why, shown by list")
    p = sub.add_parser("delete", parents=[common], help="forget a session's snapshot")
    p.add_argument("session_id", metavar="ID")
    args = parser.parse_args(argv)

    if args.action == "save":
        messages = _read_json_file(args.messages_file, stdin_ok=True)
        state = _read_json_file(args.state_file) if args.state_file else None
        try:
            saved = snapshot.save(args.session_id, messages, state=state, keep=args.keep)
        except UsageError as exc:
            # The library names the place in the data (messages[3]['role']); the user also needs the file.
            text = str(exc)
            messages_label = "stdin" if args.messages_file == "-" else args.messages_file
            source = {"messages": messages_label, "state": args.state_file}.get(re.split(r"\W", text, maxsplit=1)[0])
            if source is None:
                raise
            raise UsageError(f"{source}: {text}") from None
        if args.json:
            cli.emit_json({"ok": True, **_summary(saved)})
        else:
            cli.say(f"saved session {saved.session_id}: {len(saved.messages)} of {saved.message_count} message(s)")
    elif args.action == "restore":
        found = snapshot.restore(args.session_id)
        if found is None:
            raise snapshot.NoSnapshot(args.session_id)
        if args.json:
            cli.emit_json({"ok": True, "snapshot": found.to_json()})
        else:
            # A C1 control (U+009B, the one-byte CSI) that JSON leaves raw, escaped: it reads back the same.
            sys.stdout.write(inert_json(dumps(found.to_json())))
    elif args.action == "list":
        infos = snapshot.list_snapshots(interrupted_only=args.interrupted)
        for problem in infos.skipped:
            cli.say(f"skipped {problem}")
        if args.json:
            cli.emit_json({"ok": True, "snapshots": [i.to_json() for i in infos], "skipped": infos.skipped})
        elif infos:
            print("\n".join(_table(infos)))
        else:
            print("no interrupted sessions" if args.interrupted else "no snapshots")
    elif args.action == "mark-interrupted":
        marked = snapshot.mark_interrupted(args.session_id, reason=args.reason)
        if args.json:
            cli.emit_json({"ok": True, **_summary(marked)})
        else:
            cli.say(f"marked session {marked.session_id} interrupted")
    else:
        deleted = snapshot.delete(args.session_id)
        if args.json:
            cli.emit_json({"ok": True, "deleted": deleted})
        else:
            cli.say(f"deleted session {args.session_id}" if deleted else f"no snapshot for session {args.session_id}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
