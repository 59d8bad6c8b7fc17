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

from ..errors import CorruptStateError, InvalidIdError, LockBusy, StateError

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
        fsync_dir(path.parent)


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
            raw = self.path.read_bytes()
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
        body = _canonical(doc)
        seq = self._seq + 1
        slot = b'{"seq":%d,"sha256":"%s","doc":' % (seq, _sha256(body).encode()) + body + b"}"
        if self._newest is None or len(slot) > self._size:
            size = max(_SLOT_MIN, -(-2 * len(slot) // _SLOT_MIN) * _SLOT_MIN)
            data = b"[" + slot.ljust(size) + b"," + _EMPTY_SLOT.ljust(size) + b"]\n"
            write_bytes_atomic(self.path, data, durable=True)
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
            raw = self.journal.read_bytes()
        except FileNotFoundError:
            raw = b""
        length = n = 0
        while True:
            end = raw.find(b"\n", length)
            if end < 0:
                break
            changes = _journal_entry(raw[length:end], base, n + 1)
            if changes is None:
                break
            for path, value in changes:
                _apply(doc, path, value)
            length, n = end + 1, n + 1
        self._length, self._n, self._base = length, n, base
        return doc

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
                os.truncate(self.journal, 0)

    def update(self, doc: dict[str, Any], changes: list[tuple[list[str], Any]]) -> None:
        """Save `doc`, which differs from the last save by `changes` ((key path, new value) pairs):
        one journal line and one fdatasync; the whole document when the journal is due to be folded in."""
        if self._base is None:
            self.write(doc)
            return
        body = _canonical([[list(path), value] for path, value in changes])
        line = b'{"base":%d,"n":%d,"sha256":"%s","changes":' % (self._base, self._n + 1, _sha256(body).encode())
        line += body + b"}\n"
        if self._length + len(line) > max(_JOURNAL_MIN, self.slots.slot_bytes):
            self.write(doc)
            return
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            if self._n == 0 or os.fstat(fd).st_size != self._length:
                os.ftruncate(fd, self._length)  # a torn tail, or lines of an older snapshot: never read past
            view = memoryview(line)
            offset = self._length
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            _datasync(fd)
        finally:
            os.close(fd)
        self._length += len(line)
        self._n += 1


def _journal_entry(raw: bytes, base: int, n: int) -> list[tuple[list[str], Any]] | None:
    """The changes of one journal line if it is whole, checks out and follows on; else None."""
    try:
        entry = json.loads(raw)
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
