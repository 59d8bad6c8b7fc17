"""The state root and every file under it.

Writes are atomic (temp file in the same folder, fsync, os.replace); files are 0600 and folders 0700;
an id becomes part of a path only after validation; a file that cannot be parsed is moved aside to
`<name>.corrupt-<ts>` and reported, never silently reset. Appends are one whole line per write, under
an exclusive lock on the file itself. Everything written passes the process's redactor (state/redact.py)
first: no secret reaches a file, whoever the writer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ..errors import (
    CorruptStateError,
    InvalidIdError,
    LockBusy,
    StateError,
    StateWriteError,
    UnsafeStateError,
    UsageError,
)
from . import layout
from .redact import active as _redactor

TYPE_CHECKING = False  # not typing's: see selfheal/__init__.py
if TYPE_CHECKING:
    import logging
    from typing import IO, Any

try:  # POSIX: lock the appended file itself, no side lock file needed.
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    _HAVE_FCNTL = False

FILE_MODE = 0o600
DIR_MODE = 0o700

StrPath = str | os.PathLike[str]
_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")


def _logger() -> logging.Logger:
    """This module's logger; logging is imported on the first message (2 ms the cron health check need not pay)."""
    import logging  # noqa: PLC0415

    return logging.getLogger(__name__)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
# Temp files of atomic writes are named `.<name>.<pid>.<ns>.tmp`; one older than this is a dead writer's.
TEMP_MAX_AGE_S = 300.0
# A folder's dead temp files are looked for at most this often per process (on a write in that folder).
_SWEEP_EVERY_S = 60.0
_TEMP_RE = re.compile(r"\..+\.\d+\.\d+\.tmp\Z")
_swept: dict[Path, float] = {}
# Every state root built in this process: below one, no component of a path is followed if it is a link.
_roots: set[Path] = set()


def _home(env: Mapping[str, str]) -> Path:
    """The HOME of the environment given (not necessarily this process's)."""
    return Path(env.get("HOME") or Path.home())


def openclaw_home(env: Mapping[str, str] | None = None) -> Path:
    """The home OpenClaw's paths start from (its help/environment.md): $OPENCLAW_HOME (`~` in it is
    $HOME), else $HOME."""
    env = os.environ if env is None else env
    found = env.get("OPENCLAW_HOME")
    if not found:
        return _home(env)
    if found == "~" or found.startswith("~/"):
        return _home(env) / found[2:]
    return Path(found).expanduser()


def expand_home(value: str, home: Path) -> Path:
    """`value` with a leading `~` meaning `home` (not necessarily this process's)."""
    if value == "~" or value.startswith("~/"):
        return home / value[2:]
    return Path(value).expanduser()


def openclaw_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """OpenClaw's state folder, where OpenClaw keeps it: $OPENCLAW_STATE_DIR (`~` in it is OpenClaw's home),
    else <OpenClaw's home>/.openclaw."""
    env = os.environ if env is None else env
    found = env.get("OPENCLAW_STATE_DIR")
    return expand_home(found, openclaw_home(env)) if found else openclaw_home(env) / ".openclaw"


def resolve_state_root(env: Mapping[str, str] | None = None) -> Path:
    """$SELFHEAL_HOME, else self-heal/ in OpenClaw's state folder ($OPENCLAW_STATE_DIR, else
    $OPENCLAW_HOME/.openclaw, else ~/.openclaw)."""
    env = os.environ if env is None else env
    if env.get("SELFHEAL_HOME"):
        root = expand_home(env["SELFHEAL_HOME"], _home(env))
        if not root.is_absolute():
            # Taken as it stands it would be a folder of the working folder: another state root (another task
            # tree, other breakers) for each folder a script is run from, cron's ($HOME) included.
            raise UsageError(
                f"SELFHEAL_HOME={env['SELFHEAL_HOME']}: not an absolute path; give the whole path (or one starting"
                " with ~/), so every script finds the same state folder whatever folder it runs from"
            )
        return root
    return openclaw_state_dir(env) / "self-heal"


def validate_id(value: str, kind: str = "task") -> str:
    """Return `value` if it is safe as a file name: [A-Za-z0-9._-]{1,128}, no leading dot."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidIdError(kind, str(value))
    return value


def register_root(root: Path) -> None:
    """Below `root`, every folder and file is opened without following symbolic links, and every folder must
    be this user's and 0700 (StateRoot does this). Folders walked before, when no state root held them, were
    not checked: they are walked again."""
    root = Path(os.path.abspath(root))
    if root not in _roots:
        _roots.add(root)
        _plans.clear()
        prefix = os.fspath(root) + os.sep
        with _dirs_lock:
            for key in [k for k in _dirs if k == os.fspath(root) or k.startswith(prefix)]:
                os.close(_dirs.pop(key)[0])


# How open_dir walks to a folder, by the folder's absolute path: where it starts, the names below, and
# whether the start is a state root (checked). Path arithmetic costs more than the walk's system calls.
_plans: dict[str, tuple[Path, tuple[str, ...], bool]] = {}


def _plan(path: StrPath) -> tuple[Path, tuple[str, ...], bool]:
    key = os.fspath(path)
    plan = _plans.get(key)
    if plan is None:
        full = Path(os.path.abspath(key))
        root = _root_of(full)
        # Not under a state root (a test's own folder): only the last component is opened without following
        # a link, and no folder is checked: a folder that is not self-heal's is never refused nor changed.
        plan = (full.parent, (full.name,), False) if root is None else (root, full.relative_to(root).parts, True)
        if os.path.isabs(key):  # a relative one depends on the working folder
            if len(_plans) > 4096:
                _plans.clear()
            _plans[key] = plan
    return plan


def _root_of(path: Path) -> Path | None:
    if path in _roots:
        return path
    for parent in path.parents:
        if parent in _roots:
            return parent
    return None


def _link_problem(name: str, dir_fd: int) -> str | None:
    """Why the entry `name` in the folder `dir_fd` is not a plain file or folder of ours, or None."""
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        try:
            return f"is a symbolic link (to {os.readlink(name, dir_fd=dir_fd)})"
        except OSError:
            return "is a symbolic link"
    return None


def _link_problem_at(folder: str, name: str) -> str | None:
    try:
        dir_fd = open_dir(folder, create=False)
    except OSError:
        return None
    try:
        return _link_problem(name, dir_fd)
    finally:
        os.close(dir_fd)


def _check_folder(fd: int, where: _Where) -> None:
    """A state folder must be this user's and 0700: looser modes are tightened (once, with a warning)."""
    if not hasattr(os, "geteuid"):  # pragma: no cover - Windows has no modes to speak of
        return
    info = os.fstat(fd)
    me = os.geteuid()
    if info.st_uid == me and not info.st_mode & 0o077:
        return
    path = _where(where)
    if info.st_uid != me:
        raise UnsafeStateError(path, f"is owned by another user (uid {info.st_uid}, not {me})")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_ISVTX:
        # /tmp, /var/tmp, /dev/shm: a folder shared by every user, ours only when we run as root. Tightened,
        # it would break every other program on the machine; it is no place for state either.
        raise UnsafeStateError(path, f"is a folder shared by every user (mode {mode:04o}); give self-heal its own")
    if mode & 0o077:
        try:
            os.fchmod(fd, DIR_MODE)
        except OSError as exc:
            raise StateWriteError(path, exc, "tighten the mode of") from exc
        _logger().warning("state folder %s was mode %04o, open to other users; tightened to 0700", path, mode)


def _open_base(path: Path, create: bool, check: bool) -> int:
    """The folder a walk starts from (the state root itself may be reached through a link the user chose)."""
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except FileNotFoundError:
        if not create:
            raise
        _make_dirs(path)
        fd = _open_existing_base(path)
    except NotADirectoryError as exc:
        raise UnsafeStateError(path, "is not a folder") from exc
    if check:
        try:
            _check_folder(fd, path)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _make_dirs(path: Path) -> None:
    if not os.path.isdir(path):
        missing = []
        probe = path
        while not os.path.lexists(probe) and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):  # mkdir's parents=True would give them the umask's mode, often 0755
            try:
                os.mkdir(folder, DIR_MODE)
            except FileExistsError:
                pass
            except OSError as exc:
                raise StateWriteError(folder, exc, "create the folder") from exc


def _open_existing_base(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except NotADirectoryError as exc:
        raise UnsafeStateError(path, "is not a folder") from exc


_Where = Path | tuple[Path, tuple[str, ...]]  # a folder's path, or its start and the names below (made on demand)


def _where(where: _Where) -> Path:
    return where if isinstance(where, Path) else where[0].joinpath(*where[1])


def _open_child_dir(parent_fd: int, name: str, where: _Where, create: bool, check: bool = True) -> int:
    """The folder `name` in `parent_fd`, never through a link; with `check` (a folder under a state root), it
    must be this user's and 0700 (_check_folder)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateWriteError(_where(where), exc, "create the folder") from exc
        return _open_child_dir(parent_fd, name, where, create=False, check=check)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise UnsafeStateError(_where(where), _link_problem(name, parent_fd) or "is not a folder") from None
        raise
    if check:
        try:
            _check_folder(fd, where)
        except BaseException:
            os.close(fd)
            raise
    return fd


def open_dir(path: StrPath, *, create: bool = True) -> int:
    """An fd of the folder `path` (created 0700 if missing and `create`), reached without following a
    symbolic link at any component below its state root; each of those folders must be this user's
    (looser modes are tightened); a folder under no state root is never checked, refused or changed.
    Raises UnsafeStateError for a link or a foreign folder, StateWriteError if a folder cannot be created,
    FileNotFoundError if one is missing and not `create`. The caller closes it.

    A folder walked once is remembered (its fd, device and inode): the next call only checks, with one
    lstat, that the name still leads to that same folder, and hands out a duplicate of the fd. Only a
    walk proves a folder safe; the check proves it is still the folder proved safe (a link or another
    folder put in its place has another inode, and is walked, so refused)."""
    key = os.fspath(path)
    with _dirs_lock:
        cached = _cached_dir(key)
        if cached is not None:
            return os.dup(cached)
    fd = _walk(path, create)
    if os.path.isabs(key):
        info = os.fstat(fd)
        with _dirs_lock:
            if key not in _dirs:
                if len(_dirs) >= _DIRS_KEPT:  # a process that writes into many roots (a test run)
                    for old, _ in _dirs.values():
                        os.close(old)
                    _dirs.clear()
                _dirs[key] = (os.dup(fd), (info.st_dev, info.st_ino))
    return fd


def _cached_dir(key: str) -> int | None:
    """The remembered fd of folder `key` if the name still leads to that folder (hold _dirs_lock)."""
    cached = _dirs.get(key)
    if cached is None:
        return None
    fd, ident = cached
    try:
        now = os.lstat(key)
    except OSError:
        now = None
    if now is not None and (now.st_dev, now.st_ino) == ident and stat.S_ISDIR(now.st_mode):
        return fd
    del _dirs[key]
    os.close(fd)
    return None


def _walk(path: StrPath, create: bool) -> int:
    base, parts, check = _plan(path)
    fd = _open_base(base, create, check)
    try:
        for n, name in enumerate(parts):
            child = _open_child_dir(fd, name, (base, parts[: n + 1]), create, check)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


_DIRS_KEPT = 32
_dirs: dict[str, tuple[int, tuple[int, int]]] = {}
_dirs_lock = threading.Lock()


def _forget_dirs_in_child() -> None:
    global _dirs_lock  # noqa: PLW0603 - a lock held by another thread at fork() would never be released
    _dirs_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_dirs_in_child)


def ensure_dir(path: Path) -> Path:
    """Create `path` and any missing parents as 0700 folders; under a state root, refuse a linked folder
    and tighten a loose one (see open_dir)."""
    os.close(open_dir(path))
    return path


class NotRegularFile(OSError):
    """open_regular's refusal: the path is there but is no regular file. `mode` is its st_mode, `kind` says what it
    is (file_kind: "a folder", "a FIFO (named pipe)", "a device"...); each caller names the refusal its own way."""

    def __init__(self, path: StrPath, mode: int) -> None:
        self.mode = mode
        self.kind = file_kind(mode)
        super().__init__(f"{os.fspath(path)} is {self.kind}, not a regular file")


def open_regular(
    path: StrPath,
    flags: int = os.O_RDONLY,
    mode: int = FILE_MODE,
    *,
    follow: bool = True,
    dir_fd: int | None = None,
    folders: bool = False,
) -> tuple[int, os.stat_result]:
    """An fd of `path` (opened for reading unless `flags` say otherwise) and its fstat, only if it is a regular file
    (or a folder, with `folders`): anything else is NotRegularFile, its fd closed.

    Opened O_NONBLOCK: a FIFO planted where a file belongs would otherwise hang the open until a writer came, the
    cron health check's for good (on a regular file the flag changes nothing, and it is left set). O_NOCTTY: a
    terminal is refused, never made this process's controlling one on the way. The check is on the open fd, so
    what was checked is what is read. `follow=False` adds O_NOFOLLOW (a state file: a link is ELOOP); `dir_fd` and
    `mode` are os.open's. The open's own OSError (missing, denied, ELOOP) comes through as it is."""
    extra = _CLOEXEC | _NONBLOCK | _NOCTTY | (0 if follow else _NOFOLLOW)
    fd = os.open(path, flags | extra, mode, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) or (folders and stat.S_ISDIR(info.st_mode))):
            raise NotRegularFile(path, info.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def refuse_hard_links(path: StrPath, info: os.stat_result) -> None:
    """UnsafeStateError for a state file with more than one name: a hard link planted there would have what is
    written to it land in another file of the user's (or a file read there be another user's)."""
    if info.st_nlink > 1:
        raise UnsafeStateError(Path(path), f"has {info.st_nlink} hard links (one may point outside the state root)")


def open_file(path: Path, flags: int, mode: int = FILE_MODE, *, doing: str = "write") -> int:
    """Open the state file `path` with `flags`, never through a symbolic link (at the file or at a folder
    above it, up to the state root), and only if it is a plain file with one name (a hard link planted to
    some other file is refused too). Missing folders are created when `flags` has O_CREAT.

    Raises UnsafeStateError for a link, StateWriteError for an OS error (disk full, read-only), and
    FileNotFoundError when the file is missing and not to be created."""
    creating = bool(flags & os.O_CREAT)
    folder, name = os.path.split(os.fspath(path))
    opened: tuple[int, os.stat_result] | None = None
    try:
        with _dirs_lock:  # the common case: the folder was walked before, open right in it
            cached = _cached_dir(folder)
            if cached is not None:
                opened = open_regular(name, flags, mode, follow=False, dir_fd=cached)
        if opened is None:
            dir_fd = open_dir(folder, create=creating)
            try:
                opened = open_regular(name, flags, mode, follow=False, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
    except FileNotFoundError:
        raise
    except NotRegularFile:
        raise UnsafeStateError(path, "is not a plain file") from None
    except OSError as exc:
        if isinstance(exc, StateError):
            raise
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise UnsafeStateError(path, _link_problem_at(folder, name) or "is a symbolic link") from None
        if exc.errno == errno.EISDIR:  # opened to write: refused by the open itself, before open_regular's check
            raise UnsafeStateError(path, "is a folder, not a plain file") from None
        raise StateWriteError(path, exc, doing) from exc
    fd, info = opened
    if flags & (os.O_WRONLY | os.O_RDWR):
        try:
            refuse_hard_links(path, info)
            if info.st_mode & 0o077:  # an older version's, or made under umask 000: state files are 0600
                with contextlib.suppress(OSError):
                    os.fchmod(fd, FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
    return fd


def open_append(path: Path) -> int:
    """An fd for appending to `path` (created 0600), never through a link; see open_file."""
    return open_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, doing="append to")


def open_rewrite(path: Path, *, create: bool = True) -> int:
    """An fd for rewriting `path` in place (created 0600 if `create`), never through a link; see open_file."""
    return open_file(path, os.O_RDWR | (os.O_CREAT if create else 0), doing="write")


def open_read(path: Path) -> int:
    """An fd for reading the state file `path`, never through a symbolic link (at the file or at a folder
    above it, up to the state root): UnsafeStateError names the link, or a FIFO, socket or device planted
    there (opened without blocking: a FIFO would hang the reader, the cron health check, for good);
    StateWriteError (doing "read") for an OS error such as a file another user left unreadable;
    FileNotFoundError if absent. A folder is opened (its reader says it is one)."""
    folder, name = os.path.split(os.fspath(path))
    opened: tuple[int, os.stat_result] | None = None
    try:
        with _dirs_lock:
            cached = _cached_dir(folder)
            if cached is not None:
                try:
                    opened = open_regular(name, follow=False, dir_fd=cached, folders=True)
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
        if opened is None:  # not walked before, or a link there: the walk names it
            dir_fd = open_dir(folder, create=False)
            try:
                opened = open_regular(name, follow=False, dir_fd=dir_fd, folders=True)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeStateError(path, _link_problem(name, dir_fd) or "is a symbolic link") from None
                raise
            finally:
                os.close(dir_fd)
    except (FileNotFoundError, StateError):
        raise
    except NotRegularFile:
        raise UnsafeStateError(path, "is not a plain file") from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise StateWriteError(path, exc, "read") from exc
        raise
    return opened[0]


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, as a message names it ("is a folder, not ..."): its st_mode."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_bytes(path: Path) -> bytes:
    """The whole state file `path` (FileNotFoundError if absent), never read through a symbolic link."""
    fd = open_read(path)
    try:
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def unlink(path: Path) -> None:
    """Delete the state file `path` (a link is deleted itself, never what it points to); FileNotFoundError
    if absent. A linked folder above it is refused, so nothing outside the state root is deleted."""
    dir_fd = open_dir(path.parent, create=False)
    try:
        os.unlink(path.name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def write_all(fd: int, data: bytes, path: Path, doing: str = "write") -> None:
    """Write all of `data` to `fd`; an OS error (disk full) becomes StateWriteError naming `path`."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError as exc:
        raise StateWriteError(path, exc, doing) from exc


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    _fsync_fd(fd)
    os.close(fd)


def _fsync_fd(fd: int) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders
        os.fsync(fd)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True, redacted: bool = False) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never a mix.

    `durable` adds fsync of the file and its folder, so the new content survives a power cut. The temp
    file is created in the same folder (reached without following links) with O_EXCL|O_NOFOLLOW; a link
    planted at `path` is refused, not replaced. Raises UnsafeStateError or StateWriteError. The data is
    redacted first, unless the caller says it already was (`redacted`).
    """
    if not redacted:
        data = _redactor().data(data)
    try:
        dir_fd = open_dir(path.parent)
    except OSError as exc:
        if isinstance(exc, StateError):
            raise
        raise StateWriteError(path, exc) from exc
    try:
        problem = _link_problem(path.name, dir_fd)
        if problem:
            raise UnsafeStateError(path, problem)
        tmp = f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, FILE_MODE, dir_fd=dir_fd)
        except OSError as exc:
            raise StateWriteError(path, exc) from exc
        try:
            try:
                write_all(fd, data, path)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            if isinstance(exc, OSError) and not isinstance(exc, StateError):
                raise StateWriteError(path, exc) from exc
            raise
        if durable:
            _fsync_fd(dir_fd)
        _sweep_temps(dir_fd, path.parent)
    finally:
        os.close(dir_fd)


def _sweep_temps(dir_fd: int, folder: Path, now: float | None = None) -> list[str]:
    """Delete the temp files that writers killed mid-write left in this folder: only ones older than
    TEMP_MAX_AGE_S (a live writer's is milliseconds old), and at most once a minute per folder."""
    mono = time.monotonic()
    last = _swept.get(folder)
    if last is not None and mono - last < _SWEEP_EVERY_S:
        return []
    _swept[folder] = mono
    now = time.time() if now is None else now
    gone = []
    try:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(".tmp") and _TEMP_RE.match(entry.name)):
                    continue
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > TEMP_MAX_AGE_S:
                        os.unlink(entry.name, dir_fd=dir_fd)
                        gone.append(entry.name)
                except OSError:
                    continue
    except OSError:  # a folder we cannot list: the write itself went well, so say nothing
        return gone
    if gone:
        _logger().info("removed %d stale temp file(s) of killed writers in %s", len(gone), folder)
    return gone


def dumps(obj: Any) -> str:
    """The JSON form of state files: sorted keys, indented, ending in a newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def top_level_is(path: Path, key: str, value: str) -> bool:
    """Whether the JSON state file at `path`, as write_json writes it (sorted keys, indented by 2), holds
    `key`: `value` at its top level, from its first MiB of bytes alone (no parse): that key on a line of its own
    cannot occur inside a string (a newline there is written as \\n) nor as a nested key (indented further).
    Any trouble reading it (gone, a planted link, unreadable): False, and a full read deals with it."""
    needle = f"\n  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}".encode()
    try:
        fd = open_read(path)
    except (OSError, StateError):
        return False
    try:
        return needle in os.read(fd, 1 << 20)
    except OSError:
        return False
    finally:
        os.close(fd)


def loads(data: str | bytes | bytearray) -> Any:
    """json.loads, with JSON nested deeper than the parser recurses (`[[[[...`, 60 KB of it) refused as the
    ValueError any other bad JSON raises. The C parser raises RecursionError there, which no reader's
    `except ValueError` caught: one planted state file or ledger line, one hostile HTTP error body, crashed
    whatever read it. Every reader of JSON that this process did not write goes through here."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None


def json_number(value: object) -> float | None:
    """`value` as a float when it is a finite JSON number, else None: a bool is no number, and NaN, infinity (JSON's
    `1e400`) and an integer past float's range are no time or count. For what self-heal reads back from its own
    status files (health.json, watchdog.json, cron_retry.json), which a person may edit, and from OpenClaw's JSON."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int of 309 digits or more
        return None
    return number if math.isfinite(number) else None


def _json_bytes(text: str) -> bytes:
    """JSON text as UTF-8. A lone surrogate (a file name's undecodable byte, `/home/x\\udcff`, as Python reads
    paths and the environment) cannot be UTF-8: it is written as its JSON escape, which reads back the same."""
    return text.encode("utf-8", "backslashreplace")  # the only characters JSON leaves raw are in its strings


def write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    """Replace `path` with `obj` as JSON, every string in it redacted."""
    write_bytes_atomic(path, _json_bytes(dumps(_redactor().obj(obj))), durable=durable, redacted=True)


def quarantine(path: Path, now: float | None = None) -> Path | None:
    """Move an unreadable file aside as `<name>.corrupt-<ts>` and return where it went (None if it is gone).
    Done inside its folder, reached as open_dir reaches it (never through a link); StateWriteError if it
    cannot be moved (a state root remounted read-only after a disk error)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    try:
        dir_fd = open_dir(path.parent, create=False)
    except FileNotFoundError:
        return None
    try:
        name = f"{path.name}.corrupt-{stamp}"
        n = 1
        while _lexists(name, dir_fd):
            n += 1
            name = f"{path.name}.corrupt-{stamp}-{n}"
        try:
            os.replace(path.name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateWriteError(path, exc, "move aside") from exc
    finally:
        os.close(dir_fd)
    return path.with_name(name)


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def read_json_shared(path: Path) -> dict[str, Any] | None:
    """A JSON-object file that its writers rewrite in place under an exclusive flock (breakers/*.json),
    read under a shared one, so never half-written; None if absent. Nothing is moved aside here (only a
    writer, holding the lock, may do that): a file that is not a JSON object raises CorruptStateError."""
    try:
        fd = open_read(path)
    except FileNotFoundError:
        return None
    try:
        if _HAVE_FCNTL:
            fcntl.flock(fd, fcntl.LOCK_SH)
        chunks: list[bytes] = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)  # releases the lock
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        data = loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptStateError(path, None, f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptStateError(path, None, f"expected a JSON object, found {type(data).__name__}")
    return data


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON-object state file; None if absent. Unparseable: quarantine, then CorruptStateError.

    Only the file that was read is moved aside: if a writer replaced it meanwhile, the new one is read.
    """
    for _ in range(3):
        try:
            fd = open_read(path)
        except FileNotFoundError:
            return None
        try:
            read = os.fstat(fd)
            if stat.S_ISDIR(read.st_mode):
                raise StateError(f"state file {path} is a folder")
            chunks: list[bytes] = []
            size = 0
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_STATE_FILE_BYTES:
                    raise StateError(
                        f"state file {path} is larger than {MAX_STATE_FILE_BYTES} bytes; not read (move it aside "
                        "to continue)"
                    )
            raw = b"".join(chunks)
        finally:
            os.close(fd)
        try:
            obj = loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            problem: str | None = "empty file" if not raw.strip() else f"invalid JSON: {exc}"
        else:
            if isinstance(obj, dict):
                return obj
            problem = f"expected a JSON object, found {type(obj).__name__}"
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return None
        if (current.st_ino, current.st_dev) == (read.st_ino, read.st_dev):
            try:
                moved = quarantine(path)
            except StateWriteError as exc:  # still unreadable, and said so: never a crash of the reader
                raise CorruptStateError(path, None, f"{problem}; not moved aside: {exc.reason}") from None
            raise CorruptStateError(path, moved, problem or "unreadable")
    raise CorruptStateError(path, None, "replaced while being read, three times in a row")


# Lines longer than this are never held whole by a reader of logs (ours, OpenClaw's, a task's output).
MAX_LINE_BYTES = 1024 * 1024
# A state file (checkpoint, snapshot, run record) bigger than this is refused, not read: the skill writes
# none that large, so one is damage or a plant, and reading it whole could take all the memory there is.
MAX_STATE_FILE_BYTES = 64 * 1024 * 1024


def iter_lines(fh: IO[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """Each line of `fh` (with its newline), or None for a line longer than `max_line` bytes, which is read
    past in pieces and never held whole: memory stays at about `max_line`, whatever the input."""
    while True:
        line = fh.readline(max_line + 1)
        if not line:
            return
        if len(line) <= max_line or line.endswith(b"\n"):  # (max_line bytes and the newline still fit)
            yield line
            continue
        # Over the cap: drop the rest of this line, a piece at a time.
        while not line.endswith(b"\n"):
            line = fh.readline(max_line)
            if not line:
                break
        yield None


def read_at_most(fh: IO[bytes], max_bytes: int) -> bytes | None:
    """All of `fh`, or None as soon as it proves longer than `max_bytes` (never more is held)."""
    size = os.fstat(fh.fileno()).st_size
    if size > max_bytes:
        return None
    # One read of the size the file has (no buffer of max_bytes allocated), then whatever it grew by.
    chunks = [fh.read(size + 1)]
    total = len(chunks[0])
    while chunks[-1] and total <= max_bytes:
        chunks.append(fh.read(min(65536, max_bytes + 1 - total)))
        total += len(chunks[-1])
    return None if total > max_bytes else b"".join(chunks)


def read_capped(path: Path, max_bytes: int = MAX_STATE_FILE_BYTES, *, what: str = "state file") -> bytes:
    """The bytes of the state file `path`, refused (StateError naming the file and the limit) when it is over
    `max_bytes`. FileNotFoundError and IsADirectoryError propagate. A file the user gave: read_input."""
    with os.fdopen(open_read(path), "rb") as fh:  # never through a planted link (UnsafeStateError)
        raw = read_at_most(fh, max_bytes)
    if raw is None:
        raise StateError(f"{what} {path} is larger than {max_bytes} bytes; not read (move it aside to continue)")
    return raw


def read_input(path: Path, max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of a file the user gave (a plan), refused (StateError naming the file and the limit) when it
    is over `max_bytes`. It is the user's file, not state: it is opened as the user named it (links followed)
    and its folder is never checked, refused or changed, wherever it is. FileNotFoundError and
    IsADirectoryError propagate."""
    with open(path, "rb") as fh:  # a plain open: none of the state root's rules apply
        raw = read_at_most(fh, max_bytes)
    if raw is None:
        raise StateError(f"{what} {path} is larger than {max_bytes} bytes; not read")
    return raw


_SLOT_MIN = 4096
_EMPTY_SLOT = b'{"seq":0}'


def _sha256(data: bytes) -> str:
    import hashlib  # noqa: PLC0415 - loading OpenSSL costs 2 ms that only checkpoints need

    return hashlib.sha256(data).hexdigest()


def _canonical(doc: Any) -> bytes:
    return _json_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))


class SlotFile:
    """A JSON document saved durably by overwriting, in place, the older of two fixed-size slots.

    An atomic replace (temp file, fsync, rename, fsync of the folder) costs two fsyncs and a metadata
    commit; a checkpoint written after every step of a workflow does not need them. This file is a JSON
    array of two slots, each an object padded with spaces to the slot size:

        [{"seq":8,"sha256":"...","doc":{...}}        ,{"seq":7,"sha256":"...","doc":{...}}        ]

    so `jq 'max_by(.seq).doc'` reads it. A save writes the next sequence number into the slot that holds
    the older one and calls fdatasync: the file's size and layout never change, so no metadata needs
    committing. A save torn by a crash damages only the slot being written; the reader takes the valid
    slot (whole JSON, matching SHA-256) with the highest sequence number, i.e. the previous save. A
    document that outgrows its slot is written to a new file, with bigger slots, by atomic replace.
    One writer at a time (the caller holds a lock); readers need none.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seq = 0  # of the newest valid slot
        self._newest: int | None = None  # which slot holds it
        self._size = 0  # bytes per slot
        self._known = False

    def read(self) -> dict[str, Any] | None:
        """The newest saved document, or None if there is none. A file with no valid slot is moved aside
        (CorruptStateError). A plain JSON object (a file written before slots existed) is read as such."""
        try:
            raw = read_capped(self.path, what="checkpoint")
        except FileNotFoundError:
            self._known = True
            self._seq, self._newest, self._size = 0, None, 0
            return None
        except IsADirectoryError as exc:  # reading a folder's fd fails with EISDIR
            raise StateError(f"state file {self.path} is a folder") from exc
        if raw[:1] != b"[":
            doc = read_json(self.path)  # an older plain file; the next save converts it
            self._known = True
            self._seq, self._newest, self._size = 0, None, 0
            return doc
        size, rest = divmod(len(raw) - 4, 2)
        best: tuple[int, int, dict[str, Any]] | None = None
        if not rest and size >= len(_EMPTY_SLOT) and raw[1 + size : 2 + size] == b",":
            for index, start in enumerate((1, 2 + size)):
                found = _read_slot(raw[start : start + size])
                if found is not None and (best is None or found[0] > best[0]):
                    best = (found[0], index, found[1])
        if best is None:
            raise CorruptStateError(self.path, quarantine(self.path), "no valid checkpoint slot")
        self._known = True
        self._seq, self._newest, self._size = best[0], best[1], size
        return best[2]

    def write(self, doc: dict[str, Any]) -> None:
        """Save `doc` durably: in place with one fdatasync, or (first save, outgrown slots) by atomic replace."""
        if not self._known:
            with contextlib.suppress(CorruptStateError):
                self.read()
        body = _canonical(_redactor().obj(doc))
        seq = self._seq + 1
        slot = b'{"seq":%d,"sha256":"%s","doc":' % (seq, _sha256(body).encode()) + body + b"}"
        if self._newest is None or len(slot) > self._size:
            size = max(_SLOT_MIN, -(-2 * len(slot) // _SLOT_MIN) * _SLOT_MIN)
            data = b"[" + slot.ljust(size) + b"," + _EMPTY_SLOT.ljust(size) + b"]\n"
            write_bytes_atomic(self.path, data, durable=True, redacted=True)
            self._seq, self._newest, self._size = seq, 0, size
            return
        target = 1 - self._newest
        fd = open_rewrite(self.path, create=False)
        try:
            _pwrite_all(fd, slot.ljust(self._size), 1 if target == 0 else 2 + self._size, self.path)
            try:
                _datasync(fd)
            except OSError as exc:
                raise StateWriteError(self.path, exc) from exc
        finally:
            os.close(fd)
        self._seq, self._newest = seq, target

    @property
    def seq(self) -> int | None:
        """The sequence number of the newest save, once read or written; None for no slotted save yet."""
        return self._seq if self._known and self._newest is not None else None

    @property
    def slot_bytes(self) -> int:
        return self._size


_JOURNAL_MIN = 65536  # a journal is folded into its snapshot once past this, or past the snapshot's slot size


class JournaledFile:
    """A JSON document saved as a SlotFile snapshot plus an append-only journal of changes to it, so a
    save costs the size of the change, not of the document (a workflow of 10,000 steps saves one step).

    The journal (`<name>.journal`) holds one line per save, each naming the snapshot it applies to (the
    SlotFile's sequence number), its own number (1, 2, ...) and the SHA-256 of its changes:

        {"base":8,"n":3,"sha256":"...","changes":[[["steps","s3"],{...}],[["status"],"running"]]}

    A save appends a line and calls fdatasync. A reader applies, in order, the lines that follow on from
    its snapshot and stops at the first that does not (torn by a crash, or left from an older snapshot),
    so a crash mid-save falls back to the previous save. Once the journal outgrows max(64 KiB, a snapshot
    slot), the next save writes the whole document as a new snapshot and empties the journal (its old
    lines name the old snapshot, so emptying it needs no fsync). One writer at a time (the caller holds a
    lock); the writer reads before it appends, and cuts off a torn tail first.
    """

    def __init__(self, path: Path, journal: Path) -> None:
        self.path = path
        self.journal = journal
        self.slots = SlotFile(path)
        self._length = 0  # bytes of valid journal that follow on from the snapshot
        self._n = 0  # lines in it
        self._base: int | None = None  # the snapshot they apply to; None: unknown, the next save is whole

    def read(self) -> dict[str, Any] | None:
        """The document as last saved (snapshot plus journal); None if there is none. A snapshot with no
        valid slot raises CorruptStateError (moved aside), as SlotFile.read does."""
        self._base = None
        doc = self.slots.read()
        base = self.slots.seq
        if doc is None or base is None:
            return doc
        try:
            raw = read_bytes(self.journal)  # never through a planted link (UnsafeStateError)
        except FileNotFoundError:
            raw = b""
        length = n = 0
        while True:
            end = raw.find(b"\n", length)
            if end < 0:
                break
            changes = _journal_entry(raw[length:end], base, n + 1)
            if changes is None:
                if _later_entry(raw, end + 1, base, n + 1):
                    # A crash tears only the last line: a bad line with a good later save after it is damage,
                    # and replaying up to it would silently lose those saves (a finished step run again).
                    self._set_aside(f"journal line {n + 1} is damaged and later saves follow it")
                break
            for path, value in changes:
                _apply(doc, path, value)
            length, n = end + 1, n + 1
        self._length, self._n, self._base = length, n, base
        return doc

    def _set_aside(self, detail: str) -> None:
        """Move the snapshot and the journal aside together, and raise CorruptStateError."""
        moved = quarantine(self.path)
        quarantine(self.journal)
        raise CorruptStateError(self.path, moved, detail)

    def write(self, doc: dict[str, Any]) -> None:
        """Save the whole document as a new snapshot and empty the journal."""
        if self._base is None:
            # A journal this writer did not read (its snapshot was moved aside, or never read) could
            # follow on from the new snapshot's number by chance: it goes first.
            self._empty_journal()
        self.slots.write(doc)
        self._empty_journal()  # its lines name the previous snapshot now: no reader applies them
        self._length, self._n, self._base = 0, 0, self.slots.seq

    def _empty_journal(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.journal.stat().st_size:
                fd = open_rewrite(self.journal, create=False)  # never truncates a planted link's target
                try:
                    os.ftruncate(fd, 0)
                finally:
                    os.close(fd)

    def update(self, doc: dict[str, Any] | Callable[[], dict[str, Any]], changes: list[tuple[list[str], Any]]) -> None:
        """Save `doc`, which differs from the last save by `changes` ((key path, new value) pairs):
        one journal line and one fdatasync; the whole document when the journal is due to be folded in.
        `doc` may be a function that builds it, called only then (a typed record's to_json)."""
        if self._base is None:
            self.write(doc() if callable(doc) else doc)
            return
        # Masked as the snapshot is (SlotFile.write): the journal is a state file as much.
        body = _canonical(_redactor().obj([[list(path), value] for path, value in changes]))
        line = b'{"base":%d,"n":%d,"sha256":"%s","changes":' % (self._base, self._n + 1, _sha256(body).encode())
        line += body + b"}\n"
        if self._length + len(line) > max(_JOURNAL_MIN, self.slots.slot_bytes):
            self.write(doc() if callable(doc) else doc)
            return
        fd = open_rewrite(self.journal)  # never through a planted link (UnsafeStateError)
        try:
            try:
                if self._n == 0 or os.fstat(fd).st_size != self._length:
                    os.ftruncate(fd, self._length)  # a torn tail, or lines of an older snapshot: never read past
            except OSError as exc:
                raise StateWriteError(self.journal, exc) from exc
            _pwrite_all(fd, line, self._length, self.journal)  # a full disk: the caller learns which file
            try:
                _datasync(fd)
            except OSError as exc:
                raise StateWriteError(self.journal, exc) from exc
        finally:
            os.close(fd)
        self._length += len(line)
        self._n += 1


def _journal_entry(raw: bytes, base: int, n: int) -> list[tuple[list[str], Any]] | None:
    """The changes of one journal line if it is whole, checks out and follows on; else None."""
    try:
        entry = loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("base") != base or entry.get("n") != n:
        return None
    changes = entry.get("changes")
    if not isinstance(changes, list) or entry.get("sha256") != _sha256(_canonical(changes)):
        return None
    out = []
    for item in changes:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list) and item[0]):
            return None
        out.append((item[0], item[1]))
    return out


def _later_entry(raw: bytes, start: int, base: int, after: int) -> bool:
    """Whether a whole line from `start` on is a save of this snapshot numbered after `after` that checks out."""
    for line in raw[start:].split(b"\n")[:-1]:  # the part after the last newline is not a whole line
        try:
            entry = loads(line)
        except (UnicodeDecodeError, ValueError):
            continue
        n = entry.get("n") if isinstance(entry, dict) and entry.get("base") == base else None
        if isinstance(n, int) and n > after and _journal_entry(line, base, n) is not None:
            return True
    return False


def _apply(doc: dict[str, Any], path: list[str], value: Any) -> None:
    target = doc
    for key in path[:-1]:
        nxt = target.get(key)
        if not isinstance(nxt, dict):
            nxt = target[key] = {}
        target = nxt
    target[path[-1]] = value


def _read_slot(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    try:
        slot = loads(raw.rstrip(b" "))
    except (UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(slot, dict) and isinstance(slot.get("seq"), int) and isinstance(slot.get("doc"), dict)):
        return None
    if slot.get("sha256") != _sha256(_canonical(slot["doc"])):
        return None
    return slot["seq"], slot["doc"]


def _pwrite_all(fd: int, data: bytes, offset: int, path: Path) -> None:
    """Write all of `data` at `offset`: a short write (a disk filling up) is carried on, never taken for the
    whole; an OS error becomes StateWriteError naming `path`."""
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    except OSError as exc:
        raise StateWriteError(path, exc) from exc


def _datasync(fd: int) -> None:
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
    sync(fd)


def append_line(path: Path, line: bytes, *, redacted: bool = False) -> int:
    """Append one line under an exclusive lock on the file, in a single write; return the new size.

    If the file does not end in a newline (a writer died mid-line on some other system), a newline is
    written first, so the damage stays confined to that one line and this line stays whole. The line is
    redacted first, unless the caller says it already was (`redacted`: by the process's redactor).
    """
    if not redacted:
        line = _redactor().data(line)
    if not line.endswith(b"\n"):
        line += b"\n"
    fd = open_append(path)
    try:
        with _locked_fd(fd, path):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            write_all(fd, line, path, "append to")
            return size + len(line)
    finally:
        os.close(fd)  # also releases the lock


@contextlib.contextmanager
def _locked_fd(fd: int, path: Path) -> Iterator[None]:
    if _HAVE_FCNTL:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the caller closes fd
        yield
    else:  # pragma: no cover - Windows
        import filelock  # noqa: PLC0415

        with filelock.FileLock(str(path) + ".lock"):
            yield


_LOCK_POLL_S = 0.05


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float = -1, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive cross-process lock on `path`; timeout 0 fails at once with LockBusy."""
    if not _HAVE_FCNTL:  # pragma: no cover - Windows
        import filelock  # noqa: PLC0415

        ensure_dir(path.parent)
        lock = filelock.FileLock(str(path), timeout=timeout, mode=FILE_MODE)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockBusy(what or str(path)) from None
        try:
            yield
        finally:
            lock.release()
        return
    try:
        fd = open_rewrite(path)
    except StateWriteError as exc:
        # A read-only state folder: an existing lock file can still be locked (flock needs no write access).
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        try:
            fd = open_file(path, os.O_RDONLY, doing="lock")
        except FileNotFoundError:
            raise exc from None
    try:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    raise LockBusy(what or str(path), holder=lock_holder(path)) from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holders(path: Path) -> tuple[list[int], bytes | None] | None:
    """The pids /proc/locks gives for the flock on `path` (empty: nobody holds it), and the lock's key there
    (`fe:00:12345`, device and inode; None where the device cannot be told); None when it cannot be told. Read,
    never by taking the lock: a probe that takes it, however briefly, could turn away a run starting at that
    moment (LockBusy, "running elsewhere"). The device is the one /proc/locks prints, its file system's (from
    the mount the file is reached through, /proc/self/mountinfo), not stat's st_dev, which differs on overlayfs
    and btrfs; inode numbers alone repeat across file systems (two tmpfs mounts number their files alike), and
    a stranger's lock there read as this one held. Where the device cannot be told, the inode alone is matched
    (a false match only reads as held)."""
    try:
        inode = os.lstat(path).st_ino
    except FileNotFoundError:
        return [], None
    except OSError:
        return None
    try:
        with open("/proc/locks", "rb") as table:
            text = table.read(1 << 22)
    except OSError:
        return None
    found = _lock_key(path)
    key = None if found is None or found[1] != inode else found[0]
    # "1: FLOCK  ADVISORY  WRITE 2264 00:1a:12345 0 EOF" ("->" marks a waiter, which holds nothing)
    wanted = str(inode).encode()
    return [
        int(fields[4])
        for fields in (line.split() for line in text.splitlines())
        if len(fields) >= 6
        and fields[1] == b"FLOCK"
        and (fields[5] == key if key is not None else fields[5].rsplit(b":", 1)[-1] == wanted)
        and fields[4].isdigit()
    ], key


def _lock_key(path: Path) -> tuple[bytes, int] | None:
    """`path`'s lock key as /proc/locks prints it (`MAJOR:MINOR:INODE`, the first two of its file system's device,
    in hex) and the inode it names, or None (no /proc, an older kernel without mnt_id). Opened O_PATH: nothing
    is read, a FIFO does not block, a link is not followed."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, AttributeError):  # AttributeError: no O_PATH (not Linux)
        return None
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as fh:
            info = dict(line.split(b":", 1) for line in fh.read(4096).splitlines() if b":" in line)
        mount = info[b"mnt_id"].strip()
        inode = int(info[b"ino"]) if b"ino" in info else os.fstat(fd).st_ino
        with open("/proc/self/mountinfo", "rb") as fh:
            for line in fh:
                fields = line.split(None, 3)
                if len(fields) >= 3 and fields[0] == mount:
                    major, minor = (int(n) for n in fields[2].split(b":"))
                    return f"{major:02x}:{minor:02x}:{inode}".encode(), inode
    except (OSError, KeyError, ValueError):
        pass
    finally:
        os.close(fd)
    return None


def _holds_flock(pid: int, key: bytes) -> bool | None:
    """Whether process `pid` holds the flock `key` through one of its descriptors, from the lock lines of its
    /proc/<pid>/fdinfo (a description's own locks); None when that cannot be read (another user's process)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except FileNotFoundError:
        return False  # gone
    except OSError:
        return None
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as fh:
                text = fh.read(1 << 16)
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(b"lock:"):
                fields = line.split()
                if b"FLOCK" in fields and key in fields and b"->" not in fields:
                    return True
    return False


def _flock_holder(key: bytes) -> int | None:
    """The first process found holding the flock `key`, among those whose descriptors this one may read."""
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return None
    return next((pid for pid in pids if _holds_flock(pid, key)), None)


def lock_is_held(path: Path) -> bool | None:
    """Whether some process holds `path`'s file_lock now: True, False, or None when it cannot be told
    (read from /proc/locks: _lock_holders)."""
    found = _lock_holders(path)
    return None if found is None else bool(found[0])


def lock_holder(path: Path) -> str | None:
    """Who holds `path`'s file_lock, for a person: `pid 1234: python3 workflow.py run ...` (its command line
    shortened, its controls inert), or None when it cannot be told. /proc/locks gives the pid that took the
    lock, which may have exited while a process it started holds it through the same open file description
    (its pid perhaps a stranger's since): that pid is named only if it still holds the lock, else the process
    that does (found through /proc/<pid>/fdinfo), else nobody. Said, never acted on."""
    found = _lock_holders(path)
    if not found or not found[0]:
        return None
    pids, key = found
    pid: int | None = pids[0]
    if key is not None and _holds_flock(pids[0], key) is False:
        pid = _flock_holder(key)
        if pid is None:
            return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode("utf-8", "replace") for a in fh.read(4096).split(b"\0") if a]
    except OSError:
        return f"pid {pid}"
    if not argv:
        return f"pid {pid}"
    from .inert import inert  # noqa: PLC0415 - only when a lock is busy

    shown = " ".join([os.path.basename(argv[0]), *argv[1:]])
    return f"pid {pid}: {inert(shown if len(shown) <= 160 else shown[:157] + '...')}"


class StateRoot:
    """The folder that holds everything self-heal knows, with one accessor per kind of file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        register_root(root)
        self._unrecorded: list[str] = []

    def unrecorded(self, what: str, exc: BaseException) -> None:
        """A record (ledger, log, run record, breaker) could not be written: the work goes on without it.
        The first one per StateRoot is a warning saying what and why; the rest are logged at debug level."""
        self._unrecorded.append(f"{what}: {exc}")
        if len(self._unrecorded) == 1:
            _logger().warning("could not record %s (%s); carrying on without it", what, exc)
        else:
            _logger().debug("could not record %s (%s)", what, exc)

    @property
    def problems(self) -> list[str]:
        """What could not be recorded so far, one line each (see unrecorded())."""
        return list(self._unrecorded)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StateRoot:
        return cls(resolve_state_root(env))

    def ensure(self) -> StateRoot:
        """Create the root and its folders (0700) if missing; refuse linked or foreign ones (UnsafeStateError),
        tighten loose modes; StateWriteError if one cannot be created (read-only, disk full)."""
        try:
            fd = open_dir(self.root)
        except OSError as exc:
            if isinstance(exc, StateError):
                raise
            raise StateWriteError(self.root, exc, "open the folder") from exc
        try:
            for name in layout.SUBDIRS:
                try:
                    os.close(_open_child_dir(fd, name, self.root / name, create=True))
                except OSError as exc:
                    if isinstance(exc, StateError):
                        raise
                    raise StateWriteError(self.root / name, exc, "open the folder") from exc
        finally:
            os.close(fd)
        return self

    # -- where each kind of file lives (state/layout.py); ids are validated before they become names ------

    def sub(self, name: str) -> Path:
        """One of the state folders (layout.SUBDIRS, or layout.FLEET)."""
        return layout.folder(self.root, name)

    @property
    def config_file(self) -> Path:
        return layout.config_file(self.root)

    def ledger_file(self, day: str) -> Path:
        return layout.ledger_file(self.root, day)

    @property
    def log_file(self) -> Path:
        return layout.log_file(self.root)

    def breaker_file(self, target: str) -> Path:
        return layout.breaker_file(self.root, validate_id(target, "target"))

    def checkpoint_file(self, task: str, kind: str = "") -> Path:
        return layout.checkpoint_file(self.root, validate_id(task, "task"), kind)

    @property
    def task_db(self) -> Path:
        return layout.task_db(self.root)

    def task_log(self, task: str) -> Path:
        return layout.task_log(self.root, validate_id(task, "task"))

    @property
    def task_archive(self) -> Path:
        return layout.task_archive(self.root)

    def run_file(self, run_id: str) -> Path:
        return layout.run_file(self.root, validate_id(run_id, "run"))

    def lock_file(self, kind: str, ident: str) -> Path:
        return layout.lock_file(self.root, kind, validate_id(ident, kind))

    def fix_file(self, fix_id: str, suffix: str = ".json") -> Path:
        return layout.fix_file(self.root, validate_id(fix_id, "fix"), suffix)

    @property
    def fix_index(self) -> Path:
        return layout.fix_index(self.root)

    @property
    def fix_history(self) -> Path:
        return layout.fix_history(self.root)

    def incident_file(self, incident_id: str) -> Path:
        return layout.incident_file(self.root, validate_id(incident_id, "incident"))

    def session_file(self, session_id: str) -> Path:
        return layout.session_file(self.root, validate_id(session_id, "session"))

    def status_file(self, name: str) -> Path:
        return layout.status_file(self.root, validate_id(name, "status"))

    def model_cache_file(self, key: str) -> Path:
        """A cached model answer; `key` is the request's hash (hex)."""
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"a model cache key is a SHA-256 in hex, got {key!r}")
        return layout.model_cache_file(self.root, key)

    @property
    def fleet_spool(self) -> Path:
        return layout.fleet_spool(self.root)
