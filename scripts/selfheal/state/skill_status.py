"""self-heal's own status file among the other skills': `~/.openclaw/skills/status/self-heal.txt`.

The third source document's skills each write one line of `key=value` pairs there
(`status=success,timestamp=...`), and its health script counts the files modified in the last hour.
self-heal writes the same: the health check after each run, the task runner after each `run-next`.
Each writer updates its own keys and keeps the others'. The folder follows OpenClaw's state folder:
`$OPENCLAW_STATE_DIR/skills/status`, else `~/.openclaw/skills/status` (HOME from the environment given).

Two writers at the same moment may each miss the other's latest keys until their next run: the file is
replaced whole (atomically) and the next write of either carries both again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..clock import utc_iso
from .root import openclaw_state_dir

STATUS_FILE_NAME = "self-heal.txt"
_UNSAFE = re.compile(r"[,\n\r=]+")  # a value holding these would read back as more pairs


def status_folder(env: Mapping[str, str] | None = None) -> Path:
    return openclaw_state_dir(env) / "skills" / "status"


def status_path(env: Mapping[str, str] | None = None) -> Path:
    return status_folder(env) / STATUS_FILE_NAME


def read_status(path: Path) -> dict[str, str]:
    """The pairs of our own status file ({} when it is missing or unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    pairs: dict[str, str] = {}
    for part in text.strip().split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = value.strip()
    return pairs


def update_status(values: Mapping[str, str | None], *, now: float, env: Mapping[str, str] | None = None) -> Path:
    """Set these keys (None removes one) and `status=success,timestamp=...`; return the file written (0600).

    `status` says self-heal itself is running; what it found is in the other keys."""
    path = status_path(env)
    pairs = read_status(path)
    for key, value in values.items():
        if value is None:
            pairs.pop(key, None)
        else:
            pairs[key] = _UNSAFE.sub(" ", value).strip()
    pairs["status"] = "success"
    pairs["timestamp"] = utc_iso(now)
    ordered = {"status": pairs.pop("status"), "timestamp": pairs.pop("timestamp"), **pairs}
    line = ",".join(f"{k}={v}" for k, v in ordered.items()) + "\n"
    _replace(path, line.encode("utf-8"))  # rewritten on every run
    return path


def _replace(path: Path, data: bytes) -> None:
    """Replace `path` atomically. The folder is OpenClaw's, shared with the other skills: it is made if
    missing but its mode is left as OpenClaw has it (the state root's 0700 rule is for our own folders).
    The temp file is created without following a link, and the rename replaces a planted link itself,
    never the file it points to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


__all__ = ["STATUS_FILE_NAME", "read_status", "status_folder", "status_path", "update_status"]
