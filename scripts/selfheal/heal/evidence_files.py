"""Files a failing task left as evidence (the fourth source document's screenshots of browser errors):
the task's run spec names them (`evidence: ["shots/*.png"]`, `tasks.py add --evidence-glob`), and its fix
record lists each match with its size and SHA-256.

A match is read without following a link (O_NOFOLLOW): a symbolic link is listed as one, never read nor
copied. A regular file no larger than `fixes.evidence_copy_max_bytes` (1 MiB) is copied under the state
root, `fixes/<FIX-id>.evidence/`, 0600 in a 0700 folder, unless it holds anything the secret masking would
change (then it is listed, not copied: a masked copy would not be the evidence). Nothing is uploaded or
sent anywhere: the analysis reads local evidence only.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..state.redact import active as redactor
from ..state.root import NotRegularFile, StateRoot, ensure_dir, open_regular, write_bytes_atomic

MAX_FILES = 20  # per failure: a pattern that matches a whole folder of old screenshots lists the newest 20


def find_files(patterns: Sequence[str], cwd: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The files matching `patterns` (relative to `cwd`, or absolute), newest first, at most MAX_FILES: each
    with its path, size, modification time and SHA-256 (a link: its target, and nothing read)."""
    found: dict[str, os.stat_result] = {}
    for pattern in patterns:
        for match in glob.glob(os.path.join(os.fspath(cwd), pattern), recursive=True):
            with contextlib.suppress(OSError):
                info = os.lstat(match)
                if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                    found[os.path.abspath(match)] = info
    ordered = sorted(found.items(), key=lambda item: (-item[1].st_mtime_ns, item[0]))
    files = [_describe(path, info) for path, info in ordered[:MAX_FILES]]
    if len(ordered) > MAX_FILES:
        files.append({"more": len(ordered) - MAX_FILES, "note": f"only the newest {MAX_FILES} are listed"})
    return files


def _describe(path: str, info: os.stat_result) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": path,
        "modified": datetime.datetime.fromtimestamp(info.st_mtime, tz=datetime.timezone.utc).isoformat(),
    }
    if stat.S_ISLNK(info.st_mode):
        with contextlib.suppress(OSError):
            entry["link_to"] = os.readlink(path)
        entry.update(symlink=True, size=None, sha256=None, note="a symbolic link: not read, not copied")
        return entry
    try:
        digest, size = _hash(path)
    except OSError as exc:
        entry.update(size=info.st_size, sha256=None, note=f"could not be read: {exc.strerror or exc}")
        return entry
    entry.update(size=size, sha256=digest)
    return entry


def _open(path: str) -> int:
    """The file itself, never what a link (planted since it was listed) points to."""
    try:
        fd, _ = open_regular(path, follow=False)
    except NotRegularFile:
        raise OSError(f"{path} is no longer a regular file") from None
    return fd


def _hash(path: str) -> tuple[str, int]:
    import hashlib  # noqa: PLC0415 - OpenSSL's 2.5 ms: only evidence kept needs it, not every script

    digest, size = hashlib.sha256(), 0
    fd = _open(path)
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def keep_files(state: StateRoot, fix_id: str, files: list[dict[str, Any]], max_bytes: int) -> list[dict[str, Any]]:
    """Copy the small regular files of `files` under the fix's evidence folder; return the list with
    `copied_to` (or a `note` saying why not) on each."""
    folder = state.fix_file(fix_id, ".evidence")
    kept: list[dict[str, Any]] = []
    for number, listed in enumerate(files, 1):
        entry = dict(listed)
        kept.append(entry)
        if entry.get("sha256") is None:
            continue
        if entry["size"] > max_bytes:
            entry["note"] = f"larger than fixes.evidence_copy_max_bytes ({max_bytes}): listed, not copied"
            continue
        try:
            fd = _open(entry["path"])
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            entry["note"] = f"could not be read again: {exc.strerror or exc}"
            continue
        import hashlib  # noqa: PLC0415

        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            entry["note"] = "changed since it was listed: not copied"
            continue
        if redactor().data(data) != data:
            entry["note"] = "holds what looks like a secret: listed, not copied"
            continue
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(entry["path"]).name).lstrip(".")[:100] or "file"
        target = folder / f"{number:02d}-{name}"
        ensure_dir(folder)
        write_bytes_atomic(target, data, durable=False, redacted=True)  # checked above: nothing to mask
        entry["copied_to"] = str(target)
    return kept
