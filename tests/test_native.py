"""The native log scanner: built where a C compiler exists, loaded only when it is this source's and this user's
alone, and never needed (the Python fast path reads the same figures; test_analyze_logs holds both to the
careful path, line for line)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from selfheal.core.config import load_config
from selfheal.errors import UsageError
from selfheal.observe import logscan, native
from selfheal.observe.logreport import analyze, scan_engine

T0 = "2026-06-10T00:00:00Z"


def test_it_is_built_once_per_source_and_loads(tmp_path: Path) -> None:
    path, how = native.build(tmp_path)
    assert how == "built" and path is not None
    assert path.parent == tmp_path / "lib" / "selfheal" and path.stat().st_mode & 0o077 == 0
    assert native.build(tmp_path) == (path, "up to date")
    lib, why = native.load(tmp_path)
    assert lib is not None and why == ""


def test_a_library_built_from_another_source_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout updated without a new build: the old library does not match the source, so it is not used;
    the next build replaces it."""
    old, _ = native.build(tmp_path)
    edited = tmp_path / "_logscan.c"
    edited.write_bytes(native.SOURCE.read_bytes() + b"\n/* a later version */\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    lib, why = native.load(tmp_path)
    assert lib is None and "not built here" in why
    new, how = native.build(tmp_path)
    assert how == "built" and new != old
    assert sorted((tmp_path / "lib" / "selfheal").glob("logscan-*.so")) == [new]


@pytest.mark.parametrize("writable", ["library", "folder"])
def test_a_library_others_can_write_is_not_loaded(tmp_path: Path, writable: str) -> None:
    path, _ = native.build(tmp_path)
    assert path is not None
    os.chmod(path if writable == "library" else path.parent, 0o777)  # noqa: S103 - the attack itself
    lib, why = native.load(tmp_path)
    assert lib is None and "not this user's alone" in why


def test_without_a_working_compiler_nothing_is_built_and_it_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    false = shutil.which("false")
    assert false
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert native.build(tmp_path / "a") == (None, "no C compiler (cc, gcc or clang) on PATH")
    path, why = native.build(tmp_path / "b", compiler=false)
    assert path is None and why.startswith(f"{false} failed (exit 1)")
    fake = tmp_path / "fake-cc"  # "builds" a file that is no library
    fake.write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\necho junk > "$2"\n')
    fake.chmod(0o700)
    path, why = native.build(tmp_path / "c", compiler=str(fake))
    assert path is None and "cannot load" in why
    assert list((tmp_path / "c" / "lib" / "selfheal").iterdir()) == []  # no half-built file left


def test_auto_reads_with_python_where_it_is_not_built_and_native_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "a.log"
    log.write_text(f"{T0} [RETRY] task=a model=m reason=timeout\n{T0} [INFO] hello\n")
    config = load_config()
    report = analyze([str(log)], config=config, now=0)
    assert report["engine"] == "native"  # built here (install.sh, and the test session's start)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    report = analyze([str(log)], config=config, now=0)
    assert report["engine"] == "python" and report["events"] == {"retry": 1}
    settings = dataclasses.replace(config.analysis, engine="native")
    with pytest.raises(
        UsageError, match=r"^analysis\.engine is native, but the native log scanner cannot be used: not bu"
    ):
        scan_engine(settings)


def test_durations_add_up_as_math_fsum_adds_them() -> None:
    """Each task's durations are summed exactly in C (math.fsum's algorithm): the same total as Python's,
    to the last bit, where a plain sum would differ."""
    rng = random.Random(7)
    values = [rng.choice(("0.1", "0.2", "0.3", "123456.789", "0.000001", "4503599627370.497")) for _ in range(3000)]
    lines = b"\n" + b"\n".join(f"{T0} [SUCCESS] task=t duration={v}s".encode() for v in values)
    engine, why = native.engine("native")
    assert engine is not None, why
    counter = engine.counter(None, None, None)
    assert counter.scan(memoryview(bytearray(lines))) == (len(values), [])
    counts, timed = counter.export()
    assert counts == {} and len(timed) == 1
    key, n, total, longest = timed[0]
    floats = [float(v) for v in values]
    assert key == b"SUCCESS] task=t" and n == len(values) and longest == max(floats)
    assert total == math.fsum(floats) and total != sum(floats)
    assert counter.pending() == (0, 0) and counter.export() == ({}, [])


def test_a_block_must_start_with_a_newline() -> None:
    """As every block iter_blocks yields does: anything else is refused, nothing counted."""
    engine, _ = native.engine("native")
    assert engine is not None
    counter = engine.counter(None, None, None)
    with pytest.raises(ValueError, match="must start with a newline"):
        counter.scan(memoryview(bytearray(f"{T0} [INFO] x".encode())))
    assert counter.pending() == (0, 0)


def test_long_keys_are_folded_by_the_bytes_they_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Task names of a kilobyte: the pending keys are folded whenever they hold more than the bound (memory stays
    bounded by bytes, not only by the number of keys), and the figures are the Python fast path's."""
    monkeypatch.setattr(logscan, "_MAX_NATIVE_BYTES", 64 * 1024)
    monkeypatch.setitem(logscan.iter_blocks.__kwdefaults__, "block_bytes", 8192)
    log = tmp_path / "a.log"
    log.write_text("".join(f"{T0} [RETRY] task={'t' * 1000}{i} model=m reason=timeout\n" for i in range(600)))
    folds: list[int] = []
    real_fold = logscan.Tally.fold
    monkeypatch.setattr(logscan.Tally, "fold", lambda self: folds.append(1) or real_fold(self))
    config = load_config()
    config = dataclasses.replace(config, analysis=dataclasses.replace(config.analysis, max_line_bytes=4096))
    native_report = analyze([str(log)], config=config, now=0)
    assert native_report["engine"] == "native" and native_report["events"] == {"retry": 600}
    assert len(folds) >= 600 * 1000 // (64 * 1024)
    python_report = analyze(
        [str(log)],
        config=dataclasses.replace(config, analysis=dataclasses.replace(config.analysis, engine="python")),
        now=0,
    )
    assert {k: v for k, v in native_report.items() if k != "engine"} == {
        k: v for k, v in python_report.items() if k != "engine"
    }


_UNDER_SANITIZERS = r"""
import ctypes, random, sys
from pathlib import Path
from helpers.loglines import fuzz_line
from selfheal.observe import native

lib = native._open(Path(sys.argv[1]))
assert lib is not None, "the sanitized build did not load"
engine = native.Engine(lib)
t0 = 1781049600  # 2026-06-10
rng = random.Random(11)
lines = [fuzz_line(rng, t0 + i) for i in range(6000)]
lines += [rng.randbytes(rng.randrange(0, 300)) for _ in range(500)]  # bytes of every value
rng.shuffle(lines)
blocks = 0


def scan(counter, data):  # a buffer of exactly the block's bytes, from malloc: a read past its end is caught
    counter.scan(memoryview((ctypes.c_char * len(data)).from_buffer_copy(data)))


shapes = (
    b"2026-06-10T00:10:00.250Z [SUCCESS] task=t step=s target=x model=m reason=r duration=1.5s tokens=9\r",
    b"2026-06-10T00:50:00Z [RETRY] task=\xe4\xb8\xad model=\xe2\x80\x8bm reason=oom attempt=1/3",
    b"2026-06-10 00:50:00 [INFO] task=a", b"2026-06-10T00:50:00 [NOTICE_X] duration=3s", b"2026-06-10T00:50:00Z [WARN]",
)
windows = ((None, None, None), (t0 + 600, t0 + 3000, (t0 + 2000, t0 + 3000)), (None, None, (t0 + 1500, t0 + 9999)))
for bounds in windows:
    counter = engine.counter(*bounds)
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    for size in (1, 7, 100, 4096, len(data) + 1):
        pos = 0
        while pos < len(data):
            cut = data.find(b"\n", pos + size)
            cut = len(data) if cut < 0 else cut
            scan(counter, b"\n" + data[pos:cut])
            blocks += 1
            pos = cut + 1
            if blocks % 50 == 0:
                counter.export()
        counter.export()
    for line in shapes:  # every prefix of every shape, each the last line of its block
        for k in range(len(line) + 1):
            scan(counter, b"\n" + line[:k])
            blocks += 1
    counter.export()
print("blocks:", blocks)
"""


@pytest.mark.slow
def test_the_library_stays_within_its_bounds_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """The C source built with AddressSanitizer and UBSan, every error fatal: thousands of lines put together at
    random and random bytes, in blocks of every size down to a line each (each block a buffer of exactly its
    bytes, so a read one past its end is caught), in every kind of window, and every prefix of each line shape
    as the last line of a block."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler here"
    built = tmp_path / "logscan-sanitized.so"
    flags = ("-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
    subprocess.run([cc, *native.CFLAGS, *flags, "-o", str(built), str(native.SOURCE)], check=True, timeout=120)
    runtime = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    env = {
        **os.environ,
        "LD_PRELOAD": runtime.stdout.strip(),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99",
        "PYTHONMALLOC": "malloc",  # every buffer from malloc, so AddressSanitizer guards its ends
        "UBSAN_OPTIONS": "halt_on_error=1:exitcode=98",
        "PYTHONPATH": os.pathsep.join((str(ROOT / "tests"), str(ROOT / "scripts"))),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_SANITIZERS, str(built)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert int(proc.stdout.split("blocks:")[1]) > 10_000
