"""Conversation snapshots (sessions/<id>.json): the last messages and state of a session, to resume it.

A session saves a snapshot at its checkpoints; a crash handler or a watchdog marks it interrupted;
on the next start, list_snapshots(interrupted_only=True) names the sessions to offer for recovery and
restore() gives back their messages and state. Saving again makes a session live again.

Every write replaces the whole file atomically and durably (0600), and every read-modify-write holds
the session's lock, so a save and a mark from different processes never lose one another. A file that
cannot be used as a snapshot is moved aside as `<id>.json.corrupt-<ts>` and reported (with the key and
value that are wrong), never reset. The record itself is state/snapshots.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..core.config import get_config
from ..errors import CorruptStateError, StateError, UsageError
from ..state import layout
from ..state.records import RecordError
from ..state.root import MAX_STATE_FILE_BYTES, StateRoot, dumps, file_lock, quarantine, read_json, unlink, write_json
from ..state.snapshots import Snapshot, SnapshotInfo

__all__ = [
    "NoSnapshot",
    "Snapshot",
    "SnapshotInfo",
    "SnapshotList",
    "delete",
    "list_snapshots",
    "mark_interrupted",
    "restore",
    "save",
]


class NoSnapshot(UsageError):
    """The session was never saved (or was deleted): a usage error (exit 2), as an unknown task is everywhere."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"no snapshot for session {session_id!r}")


class SnapshotList(list[SnapshotInfo]):
    """Snapshots, newest first. `skipped` holds one message per file that could not be read (corrupt
    ones were moved aside); the listing never fails because of them."""

    def __init__(self, items: Iterable[SnapshotInfo] = (), skipped: Iterable[str] = ()) -> None:
        super().__init__(items)
        self.skipped = list(skipped)


# -- validation -----------------------------------------------------------------------------------------------


def _check_object(obj: Mapping[Any, Any], where: str) -> None:
    """Every key a string and every value strict JSON (no NaN, no cycles, nothing stringified by accident)."""
    for key, value in obj.items():
        if not isinstance(key, str):
            raise UsageError(f"{where} has a key that is not a string: {key!r}")
        try:
            text = json.dumps({key: value}, allow_nan=False, sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}[{key!r}] cannot be stored as JSON: {exc}") from None
        _check_text(text, f"{where}[{key!r}]")


def _check_text(text: str, where: str) -> None:
    """The file is written as UTF-8: a lone surrogate (half an emoji, as JavaScript cuts a string; a byte of
    another encoding on the command line) is refused here, naming where it is, not by the write after every
    other check passed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise UsageError(f"{where} holds {bad}, which is not UTF-8 text") from None


def _check_messages(messages: object) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise UsageError(f"messages must be a list of message objects, not {type(messages).__name__}")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise UsageError(f"{where} must be an object with 'role' and 'content', not {type(message).__name__}")
        if not isinstance(message.get("role"), str):
            raise UsageError(f"{where}['role'] must be a string")
        # None: an assistant message that only calls tools has `"content": null` in the OpenAI format.
        if "content" not in message or not isinstance(message["content"], (str, list, type(None))):
            raise UsageError(f"{where}['content'] must be a string or a list")
        _check_object(message, where)
    return messages


def _check_state(state: object) -> dict[str, Any]:
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise UsageError(f"state must be a JSON object (a dict), not {type(state).__name__}")
    _check_object(state, "state")
    return state


# -- the files ------------------------------------------------------------------------------------------------


def _path(root: StateRoot, session_id: str) -> Path:
    return root.session_file(session_id)


def _lock(root: StateRoot, session_id: str) -> contextlib.AbstractContextManager[None]:
    return file_lock(root.lock_file("session", session_id), what=f"session {session_id!r}")


def _load(root: StateRoot, session_id: str) -> Snapshot | None:
    path = _path(root, session_id)
    data = read_json(path)  # unparseable: quarantined, CorruptStateError
    if data is None:
        return None
    try:
        return Snapshot.from_json(data, path, session_id=session_id)
    except RecordError as exc:
        raise CorruptStateError(path, quarantine(path), f"not a snapshot: {exc.detail}") from None


def _root(root: StateRoot | None) -> StateRoot:
    return root if root is not None else StateRoot.from_env()


def _check_size(session_id: str, data: dict[str, Any], advice: str) -> None:
    """UsageError if `data` as written would be over what a snapshot file may hold: it would be written, and then
    refused by every restore, so the session could not be resumed at all."""
    size = len(dumps(data).encode("utf-8"))
    if size > MAX_STATE_FILE_BYTES:
        raise UsageError(
            f"session {session_id!r}: the snapshot would be {size} bytes, over the {MAX_STATE_FILE_BYTES} a "
            f"snapshot file may hold; {advice}. Nothing was saved"
        )


# -- the API --------------------------------------------------------------------------------------------------


def save(
    session_id: str,
    messages: list[dict[str, Any]],
    *,
    state: dict[str, Any] | None = None,
    keep: int | None = None,
    interrupted: bool = False,
    clock: Clock = SYSTEM_CLOCK,
    root: StateRoot | None = None,
) -> Snapshot:
    """Save the last `keep` (default: snapshots.keep, 100) messages and `state`, replacing the snapshot.

    The session is live again afterwards, unless `interrupted` is true: then it stays (or becomes)
    interrupted, keeping the time and reason of an earlier mark. Bad input raises UsageError naming
    the message index or state key.
    """
    root = _root(root)
    path = _path(root, session_id)
    keep = get_config().snapshots.keep if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise UsageError(f"keep must be a whole number of messages, 0 or more, not {keep!r}")
    messages = _check_messages(messages)
    state = _check_state(state)
    with _lock(root, session_id):
        now = clock.time()
        interrupted_at, reason = (now if interrupted else None), ""
        if interrupted:
            with contextlib.suppress(CorruptStateError):  # a corrupt one is moved aside; this save replaces it
                before = _load(root, session_id)
                if before is not None and before.interrupted:
                    interrupted_at, reason = before.interrupted_at, before.reason
        snapshot = Snapshot(
            session_id=session_id,
            saved=now,
            message_count=len(messages),
            messages=messages[-keep:] if keep else [],
            state=state,
            interrupted=interrupted,
            interrupted_at=interrupted_at,
            reason=reason,
        )
        data = snapshot.to_json()
        _check_size(session_id, data, f"keep fewer messages (keep={keep}) or less state")
        write_json(path, data)
    return snapshot


def restore(session_id: str, *, root: StateRoot | None = None) -> Snapshot | None:
    """The session's snapshot; None if it was never saved. A corrupt file is moved aside: CorruptStateError."""
    return _load(_root(root), session_id)


def mark_interrupted(
    session_id: str, *, reason: str = "", clock: Clock = SYSTEM_CLOCK, root: StateRoot | None = None
) -> Snapshot:
    """Mark the session interrupted now, with `reason`; NoSnapshot (a UsageError) if it was never saved, and a
    UsageError, the snapshot unchanged, if the reason would take it over what a snapshot file may hold."""
    root = _root(root)
    if not isinstance(reason, str):
        raise UsageError(f"reason must be text, not {type(reason).__name__}")
    _check_text(reason, "reason")
    with _lock(root, session_id):
        before = _load(root, session_id)
        if before is None:
            raise NoSnapshot(session_id)
        after = dataclasses.replace(before, interrupted=True, interrupted_at=clock.time(), reason=reason)
        data = after.to_json()
        _check_size(session_id, data, f"give a shorter reason ({len(reason)} characters)")
        write_json(_path(root, session_id), data)
    return after


def delete(session_id: str, *, root: StateRoot | None = None) -> bool:
    """Forget the session's snapshot (after it ended normally); False if there was none."""
    root = _root(root)
    with _lock(root, session_id):
        try:
            unlink(_path(root, session_id))  # a linked sessions/ folder is refused
        except FileNotFoundError:
            return False
    return True


def list_snapshots(
    *, interrupted_only: bool = False, clock: Clock = SYSTEM_CLOCK, root: StateRoot | None = None
) -> SnapshotList:
    """Every snapshot (or only the interrupted ones), newest first by `since`; see SnapshotList.skipped."""
    root = _root(root)
    folder = root.sub(layout.SESSIONS)
    now = clock.time()
    infos: list[SnapshotInfo] = []
    skipped: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            snapshot = _load(root, path.stem)
        except (StateError, UsageError, OSError) as exc:  # corrupt, a folder, unreadable, a name not an id
            skipped.append(f"{path}: {exc}")
            continue
        if snapshot is not None and (snapshot.interrupted or not interrupted_only):
            infos.append(snapshot.info(now))
    infos.sort(key=lambda i: (-i.since, i.session_id))
    return SnapshotList(infos, skipped)
