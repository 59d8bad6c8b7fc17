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

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..clock import utc_iso
from .root import open_regular, openclaw_state_dir

# Not `typing.TYPE_CHECKING`: the cron health check writes this file and never imports typing (or logging).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

STATUS_FILE_NAME = "self-heal.txt"
_MAX_READ = 65536  # our status line is a few hundred bytes
_TEMP_TRIES = 5  # temp names tried before giving up (each one random: a clash means a planted file)
_UNSAFE = re.compile(r"[,\n\r=]+")  # a value holding these would read back as more pairs


def status_folder(env: Mapping[str, str] | None = None) -> Path:
    return openclaw_state_dir(env) / "skills" / "status"


def status_path(env: Mapping[str, str] | None = None) -> Path:
    return status_folder(env) / STATUS_FILE_NAME


def read_status(path: Path) -> dict[str, str]:
    """The pairs of our own status file ({} when it is missing or unreadable)."""
    try:  # never through a link planted at it (it would read, and then rewrite, someone else's file)
        fd, _ = open_regular(path, follow=False)  # a FIFO or a folder there: NotRegularFile, an OSError
        try:
            text = os.read(fd, _MAX_READ).decode("utf-8")
        finally:
            os.close(fd)
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
    """Replace `path` atomically. The folder is OpenClaw's, shared with the other skills: folders that are
    missing are made 0700 (whatever the umask), one that exists is left as OpenClaw has it (the state root's
    0700 rule is for our own folders). The temp file has an unpredictable name and is created new
    (O_CREAT|O_EXCL|O_NOFOLLOW, 0600), so a link planted at it (symbolic or hard) is never written through;
    the rename replaces a link planted at `path` itself, never the file it points to."""
    _make_folders(path.parent)
    _sweep(path)
    fd, tmp = _create_temp(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _make_folders(folder: Path) -> None:
    """Create `folder` and its missing parents 0700, whatever the umask; existing ones are left alone."""
    missing = []
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for made in reversed(missing):
        try:
            os.mkdir(made, 0o700)
        except FileExistsError:
            continue  # another writer made it in between: theirs, as it is
        os.chmod(made, 0o700)  # mkdir's mode passed through the umask (000 leaves 0700, 0777 leaves 0000)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new temp file next to `path` (fd, path): `.<name>.<pid>.<random>.tmp`, created 0600 with O_EXCL and
    O_NOFOLLOW. A name taken by something planted there (a link, a hard link) is named in one warning and
    another name is tried; the last error is raised after _TEMP_TRIES names."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(_TEMP_TRIES):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{_temp_token()}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            if os.path.islink(tmp):
                _log().warning("%s is a symbolic link (planted?); left alone, not written through", tmp)
            else:
                _log().warning("%s already exists (planted?); left alone, not written", tmp)
            if attempt == _TEMP_TRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _sweep(path: Path) -> None:
    """Remove temp files of ours (`.<name>.<pid>.<token>.tmp`) whose writer is dead: one killed between its
    create and its rename leaves one in OpenClaw's folder; nothing else there is touched."""
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid, _, token = name[len(prefix) : -len(".tmp")].partition(".")
            if not (pid.isdigit() and len(token) == 16 and entry.is_file(follow_symlinks=False)):
                continue
            try:
                os.kill(int(pid), 0)
                continue  # its writer may still be writing
            except ProcessLookupError:
                pass
            except OSError:
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _temp_token() -> str:
    return os.urandom(8).hex()


def _log() -> logging.Logger:
    import logging  # noqa: PLC0415 - only on a warning: the cron health check need not pay for it

    return logging.getLogger(__name__)


__all__ = ["STATUS_FILE_NAME", "read_status", "status_folder", "status_path", "update_status"]
