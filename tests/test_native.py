"""The native log scanner: built where a C compiler exists, loaded only when it is this source's and this user's
alone, and never needed (the Python fast path reads the same figures; test_analyze_logs holds both to the
careful path, line for line)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

from selfheal.core.config import load_config
from selfheal.errors import UsageError
from selfheal.observe import native
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
    assert counter.pending() == 0 and counter.export() == ({}, [])


def test_a_block_must_start_with_a_newline() -> None:
    """As every block iter_blocks yields does: anything else is refused, nothing counted."""
    engine, _ = native.engine("native")
    assert engine is not None
    counter = engine.counter(None, None, None)
    with pytest.raises(ValueError, match="must start with a newline"):
        counter.scan(memoryview(bytearray(f"{T0} [INFO] x".encode())))
    assert counter.pending() == 0
