"""The state root and every file under it.

Writes are atomic (temp file in the same folder, fsync, os.replace); files are 0600 and folders 0700;
an id becomes part of a path only after validation; a file that cannot be parsed is moved aside to
`<name>.corrupt-<ts>` and reported, never silently reset. Appends are one whole line per write, under
an exclusive lock on the file itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock

from .errors import CorruptStateError, InvalidIdError, LockBusy, StateError

try:  # POSIX: lock the appended file itself, no side lock file needed.
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    _HAVE_FCNTL = False

FILE_MODE = 0o600
DIR_MODE = 0o700
SUBDIRS = (
    "ledger",
    "logs",
    "breakers",
    "checkpoints",
    "tasks",
    "fixes",
    "incidents",
    "sessions",
    "status",
    "runs",
    "locks",
)

_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")


def resolve_state_root(env: Mapping[str, str] | None = None) -> Path:
    """$SELFHEAL_HOME, else $OPENCLAW_STATE_DIR/self-heal, else ~/.openclaw/self-heal."""
    env = os.environ if env is None else env

    def expand(value: str) -> Path:
        # `~` means the HOME of the environment given, not necessarily this process's.
        if value.startswith("~") and env.get("HOME") and value[1:2] in ("", "/"):
            return Path(env["HOME"] + value[1:])
        return Path(value).expanduser()

    if env.get("SELFHEAL_HOME"):
        return expand(env["SELFHEAL_HOME"])
    if env.get("OPENCLAW_STATE_DIR"):
        return expand(env["OPENCLAW_STATE_DIR"]) / "self-heal"
    return expand("~/.openclaw/self-heal")


def validate_id(value: str, kind: str = "task") -> str:
    """Return `value` if it is safe as a file name: [A-Za-z0-9._-]{1,128}, no leading dot."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidIdError(kind, str(value))
    return value


def ensure_dir(path: Path) -> Path:
    """Create `path` and any missing parents as 0700 folders; leave existing folders' modes alone.

    (mkdir's `parents=True` would give the parents the umask's mode, often 0755.)
    """
    if path.is_dir():
        return path
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"cannot create folder {folder}: {exc.strerror}") from exc
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never a mix.

    `durable` adds fsync of the file and its folder, so the new content survives a power cut.
    """
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def dumps(obj: Any) -> str:
    """The JSON form of state files: sorted keys, indented, ending in a newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    write_bytes_atomic(path, dumps(obj).encode("utf-8"), durable=durable)


def quarantine(path: Path, now: float | None = None) -> Path | None:
    """Move an unreadable file aside as `<name>.corrupt-<ts>` and return where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON-object state file; None if absent. Unparseable: quarantine, then CorruptStateError.

    Only the file that was read is moved aside: if a writer replaced it meanwhile, the new one is read.
    """
    for _ in range(3):
        try:
            with path.open("rb") as fh:
                read = os.fstat(fh.fileno())
                raw = fh.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise StateError(f"state file {path} is a folder") from exc
        try:
            obj = json.loads(raw.decode("utf-8"))
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
            raise CorruptStateError(path, quarantine(path), problem or "unreadable")
    raise CorruptStateError(path, None, "replaced while being read, three times in a row")


def append_line(path: Path, line: bytes) -> int:
    """Append one line under an exclusive lock on the file, in a single write; return the new size.

    If the file does not end in a newline (a writer died mid-line on some other system), a newline is
    written first, so the damage stays confined to that one line and this line stays whole.
    """
    if not line.endswith(b"\n"):
        line += b"\n"
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileNotFoundError:
        ensure_dir(path.parent)
        fd = os.open(path, flags, FILE_MODE)
    try:
        with _locked_fd(fd, path):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            return size + len(line)
    finally:
        os.close(fd)  # also releases the lock


@contextlib.contextmanager
def _locked_fd(fd: int, path: Path) -> Iterator[None]:
    if _HAVE_FCNTL:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the caller closes fd
        yield
    else:  # pragma: no cover - Windows
        with filelock.FileLock(str(path) + ".lock"):
            yield


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float = -1, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive cross-process lock on `path`; timeout 0 fails at once with LockBusy."""
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


class StateRoot:
    """The folder that holds everything self-heal knows, with one accessor per kind of file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StateRoot:
        return cls(resolve_state_root(env))

    def ensure(self) -> StateRoot:
        """Create the root and its folders (0700) if missing."""
        ensure_dir(self.root)
        for name in SUBDIRS:
            ensure_dir(self.root / name)
        return self

    def sub(self, name: str) -> Path:
        return self.root / name

    def ledger_file(self, day: str) -> Path:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            raise ValueError(f"ledger day must be YYYY-MM-DD, got {day!r}")
        return self.root / "ledger" / f"{day}.jsonl"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "selfheal.log"

    def run_file(self, run_id: str) -> Path:
        return self.root / "runs" / f"{validate_id(run_id, 'run')}.json"

    def lock_file(self, kind: str, ident: str) -> Path:
        return self.root / "locks" / f"{kind}-{validate_id(ident, kind)}.lock"

    def status_file(self, name: str) -> Path:
        return self.root / "status" / f"{validate_id(name, 'status')}.json"
