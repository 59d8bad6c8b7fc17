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
from .root import ensure_dir, write_bytes_atomic

STATUS_FILE_NAME = "self-heal.txt"
_UNSAFE = re.compile(r"[,\n\r=]+")  # a value holding these would read back as more pairs


def status_folder(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    state = env.get("OPENCLAW_STATE_DIR")
    base = Path(state).expanduser() if state else Path(env.get("HOME") or Path.home()) / ".openclaw"
    return base / "skills" / "status"


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
    ensure_dir(path.parent)
    line = ",".join(f"{k}={v}" for k, v in ordered.items()) + "\n"
    write_bytes_atomic(path, line.encode("utf-8"), durable=False)  # rewritten on every run
    return path


__all__ = ["STATUS_FILE_NAME", "read_status", "status_folder", "status_path", "update_status"]
