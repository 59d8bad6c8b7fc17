"""The state root and every file under it.

Writes are atomic (temp file in the same folder, fsync, os.replace); files are 0600 and folders 0700;
an id becomes part of a path only after validation; a file that cannot be parsed is moved aside to
`<name>.corrupt-<ts>` and reported, never silently reset. Appends are one whole line per write, under
an exclusive lock on the file itself. Everything written passes the process's redactor (state/redact.py)
first: no secret reaches a file, whoever the writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ..errors import CorruptStateError, InvalidIdError, LockBusy, StateError
from .redact import active as _redactor

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


def fsync_dir(path: Path) -> None:
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


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True, redacted: bool = False) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never a mix.

    `durable` adds fsync of the file and its folder, so the new content survives a power cut. The data
    is redacted first, unless the caller says it already was (`redacted`).
    """
    if not redacted:
        data = _redactor().data(data)
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
        fsync_dir(path.parent)


def dumps(obj: Any) -> str:
    """The JSON form of state files: sorted keys, indented, ending in a newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    """Replace `path` with `obj` as JSON, every string in it redacted."""
    write_bytes_atomic(path, dumps(_redactor().obj(obj)).encode("utf-8"), durable=durable, redacted=True)


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


def read_json_shared(path: Path) -> dict[str, Any] | None:
    """A JSON-object file that its writers rewrite in place under an exclusive flock (breakers/*.json),
    read under a shared one, so never half-written; None if absent. Nothing is moved aside here (only a
    writer, holding the lock, may do that): a file that is not a JSON object raises CorruptStateError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
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
        data = json.loads(raw)
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
            with path.open("rb") as fh:
                read = os.fstat(fh.fileno())
                capped = read_at_most(fh, MAX_STATE_FILE_BYTES)
            if capped is None:
                limit = MAX_STATE_FILE_BYTES
                raise StateError(
                    f"state file {path} is larger than {limit} bytes; not read (move it aside to continue)"
                )
            raw = capped
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
    """The bytes of `path`, refused (StateError naming the file and the limit) when it is over `max_bytes`.
    FileNotFoundError and IsADirectoryError propagate."""
    with path.open("rb") as fh:
        raw = read_at_most(fh, max_bytes)
    if raw is None:
        raise StateError(f"{what} {path} is larger than {max_bytes} bytes; not read (move it aside to continue)")
    return raw


_SLOT_MIN = 4096
_EMPTY_SLOT = b'{"seq":0}'


def _sha256(data: bytes) -> str:
    import hashlib  # noqa: PLC0415 - loading OpenSSL costs 2 ms that only checkpoints need

    return hashlib.sha256(data).hexdigest()


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


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
        except IsADirectoryError as exc:
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
        fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.pwrite(fd, slot.ljust(self._size), 1 if target == 0 else 2 + self._size)
            _datasync(fd)
        finally:
            os.close(fd)
        self._seq, self._newest = seq, target


def _read_slot(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    try:
        slot = json.loads(raw.rstrip(b" "))
    except (UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(slot, dict) and isinstance(slot.get("seq"), int) and isinstance(slot.get("doc"), dict)):
        return None
    if slot.get("sha256") != _sha256(_canonical(slot["doc"])):
        return None
    return slot["seq"], slot["doc"]


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
        import filelock  # noqa: PLC0415

        with filelock.FileLock(str(path) + ".lock"):
            yield


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float = -1, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive cross-process lock on `path`; timeout 0 fails at once with LockBusy."""
    # Imported here: it costs about 30 ms, and readers of state files (the health check) never lock.
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
