"""The log scanner's native engine: `_logscan.c`, built by install.sh where a C compiler exists, loaded with ctypes.

It does what `logscan`'s block pattern and `Tally.add_rows` do together (one pass over a block, the rows
counted per key in C) and hands every line it does not read to the careful path, as the pattern does. It is
optional: with no compiler, a failed build, a source changed since the build or `analysis.engine: python`,
the pure-Python fast path gives the same figures (the tests hold both to the careful path, line for line).

The library lives in the virtual environment (`<venv>/lib/selfheal/logscan-<crc>.so`), named after the CRC-32
of the source it was built from and its compiler flags, so a checkout updated without a new build never loads a
stale one. It is loaded only if this user (or root) owns it and its folder and neither is writable by others.
Sums of durations agree with the careful path's to floating-point rounding (the report rounds them); every
count is exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple

from .logscan import utc_digits

SOURCE = Path(__file__).with_name("_logscan.c")
CFLAGS = ("-O2", "-std=c99", "-shared", "-fPIC")
_HEADER = struct.Struct("=IIQQ")  # key length, flags (1: timed), count, durations
_TIMED = 1


def library_path(prefix: str | os.PathLike[str] | None = None) -> Path:
    """Where the library built from today's source lives in the environment `prefix` (default: this one)."""
    crc = zlib.crc32(" ".join(CFLAGS).encode() + b"\n" + SOURCE.read_bytes())  # the source and how it is built
    return Path(prefix if prefix is not None else sys.prefix) / "lib" / "selfheal" / f"logscan-{crc:08x}.so"


def build(prefix: str | os.PathLike[str] | None = None, *, compiler: str | None = None) -> tuple[Path | None, str]:
    """Build the library for `prefix` unless it is there: (its path, what was done), or (None, why not)."""
    target = library_path(prefix)
    if target.is_file():
        return target, "up to date"
    cc = compiler or os.environ.get("CC") or next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
    if not cc:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".logscan-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        try:
            done = subprocess.run(  # the user's own compiler, on our own source
                [*cc.split(), *CFLAGS, "-o", tmp, str(SOURCE)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{cc} could not run ({exc})"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return None, f"{cc} failed (exit {done.returncode}): {last}"
        os.chmod(tmp, 0o700)  # loaded by this user only
        if _open(Path(tmp)) is None:
            return None, f"{cc} built a library this Python cannot load"
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for old in target.parent.glob("logscan-*.so"):  # the builds of earlier sources
        if old != target:
            with contextlib.suppress(OSError):
                old.unlink()
    return target, "built"


def _safe(path: Path) -> bool:
    """Whether this user (or root) owns the file and its folder, and neither is writable by others."""
    uid = os.getuid()
    for p in (path, path.parent):
        st = os.stat(p)
        if st.st_uid not in (uid, 0) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def _open(path: Path) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, res, args in (
        ("ls_new", vp, (i64, i64, i64, i64, ctypes.c_uint64)),
        ("ls_free", None, (vp,)),
        ("ls_scan", i64, (vp, vp, i64)),
        ("ls_careful", vp, (vp,)),
        ("ls_last_lines", i64, (vp,)),
        ("ls_pending_keys", i64, (vp,)),
        ("ls_pending_bytes", i64, (vp,)),
        ("ls_export_size", i64, (vp,)),
        ("ls_export", None, (vp, vp)),
    ):
        try:
            fn = getattr(lib, name)
        except AttributeError:
            return None
        fn.restype, fn.argtypes = res, args
    return lib


_loaded: dict[Path, ctypes.CDLL | None] = {}


def load(prefix: str | os.PathLike[str] | None = None) -> tuple[ctypes.CDLL | None, str]:
    """The library built from today's source: (it, "") or (None, why not)."""
    try:
        path = library_path(prefix)
    except OSError as exc:
        return None, f"cannot read {SOURCE.name} ({exc.strerror})"
    if path in _loaded:
        lib = _loaded[path]
        return lib, "" if lib else "it did not load"
    if not path.is_file():
        return None, "not built here (install.sh builds it where a C compiler exists)"
    if not _safe(path):
        return None, f"{path} or its folder is not this user's alone: not loaded"
    lib = _loaded[path] = _open(path)
    return lib, "" if lib else f"{path} did not load"


def _digits(ts: int | None) -> int:
    """A bound (epoch seconds) as the number YYYYMMDDhhmmss the library compares timestamps with (the digits the
    Python fast path's range regexes compare); -1: none."""
    return -1 if ts is None else int(utc_digits(ts))


class Timed(NamedTuple):
    """A key's durations: how many, their sum (math.fsum's, exactly), the longest."""

    key: bytes
    n: int
    total: float
    longest: float


class Engine:
    """The native engine for one analysis: makes a counter per Tally (each worker process has its own)."""

    name = "native"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def counter(self, since: int | None, until: int | None, recent: tuple[int, int] | None) -> Counter:
        return Counter(self.lib, since, until, recent)


class Counter:
    """One scanner: the pending keys and durations of the blocks it has read, until `export`."""

    def __init__(self, lib: ctypes.CDLL, since: int | None, until: int | None, recent: tuple[int, int] | None) -> None:
        self._lib = lib
        start, end = recent if recent else (None, None)
        seed = int.from_bytes(os.urandom(8), "little")  # a hash seed of this process's own: no crafted collisions
        self._h = lib.ls_new(_digits(since), _digits(until), _digits(start), _digits(end), seed)
        if not self._h:
            raise MemoryError("the native log scanner could not start")

    def __del__(self) -> None:
        h, self._h = getattr(self, "_h", None), None
        if h:
            self._lib.ls_free(h)

    def scan(self, block: memoryview) -> tuple[int, list[bytes]]:
        """Count one block (it starts with a newline): (its lines, the lines left for the careful path)."""
        lib, n = self._lib, len(block)
        try:
            data: ctypes.Array[ctypes.c_char] | bytes = (ctypes.c_char * n).from_buffer(block)
        except TypeError:  # a read-only buffer: copied
            data = bytes(block)
        try:
            careful = lib.ls_scan(self._h, data, n)
        finally:
            del data  # the view must not stay exported: its buffer is reused for the next block
        if careful == -2:
            raise ValueError("a block for the native log scanner must start with a newline")
        if careful < 0:
            raise MemoryError("the native log scanner ran out of memory")
        lines: list[bytes] = []
        if careful:
            offsets = (ctypes.c_int64 * (2 * careful)).from_address(lib.ls_careful(self._h))
            lines = [bytes(block[a:b]) for a, b in zip(offsets[::2], offsets[1::2], strict=True)]
        return lib.ls_last_lines(self._h), lines

    def pending(self) -> tuple[int, int]:
        """The distinct keys held since the last export (timed or not), and the bytes they take."""
        return int(self._lib.ls_pending_keys(self._h)), int(self._lib.ls_pending_bytes(self._h))

    def export(self) -> tuple[dict[bytes, int], list[Timed]]:
        """The pending keys' counts, and the timed keys' figures, each in the order first seen; then none held."""
        size = self._lib.ls_export_size(self._h)
        counts: dict[bytes, int] = {}
        timed: list[Timed] = []
        if not size:
            return counts, timed
        out = bytearray(size)
        buf = (ctypes.c_char * size).from_buffer(out)
        self._lib.ls_export(self._h, buf)
        del buf
        view, pos, unpack = memoryview(out), 0, _HEADER.unpack_from
        while pos < size:
            length, flags, count, partials = unpack(out, pos)
            pos += _HEADER.size
            key = bytes(view[pos : pos + length])
            pos += (length + 7) & ~7
            if flags & _TIMED:
                values = view[pos : pos + 8 * (partials + 1)].cast("d")
                timed.append(Timed(key, count, math.fsum(values[1:]), values[0]))
                pos += 8 * (partials + 1)
            else:
                counts[key] = count
        return counts, timed


def engine(choice: str) -> tuple[Engine | None, str]:
    """The engine `analysis.engine` asks for: (Engine, "") or (None, why the Python one reads the logs)."""
    if choice == "python":
        return None, "analysis.engine is python"
    lib, why = load()
    return (Engine(lib), "") if lib else (None, why)
