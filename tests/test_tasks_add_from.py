"""`tasks.py add --from FILE` against files that are not lines of JSON text: binary bytes, an endless or
oversized file. Exit 2 naming the file (and the line), no traceback, nothing added."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import call_script
from selfheal.core.config import load_config
from selfheal.state.root import MAX_STATE_FILE_BYTES, StateRoot
from selfheal.tasks.tree import TaskStore


def tasks(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return call_script("tasks.py", *args, home=home)


def names_in_db(home: Path) -> list[str]:
    store = TaskStore(StateRoot(home), load_config())
    try:
        return store.db.names()
    finally:
        store.close()


def test_a_binary_file_exits_2_naming_the_file_and_line_and_adds_nothing(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "bin.txt"
    source.write_bytes(b"\xff\xfe\x00b\x00i\x00n\n")
    proc = tasks(home, "add", "--from", str(source), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = json.loads(proc.stdout)["message"]
    assert message == f"{source} line 1: not UTF-8 text (byte 0xff at column 1); nothing was added"
    assert names_in_db(home) == []


def test_a_line_that_is_not_utf8_after_good_lines_adds_none_of_them(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_bytes(b'{"name": "a"}\n{"name": "b"}\n{"name": "c\xe9"}\n')
    proc = tasks(home, "add", "--from", str(source))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{source} line 3: not UTF-8 text (byte 0xe9 at column 12); nothing was added" in proc.stderr
    assert names_in_db(home) == []


def test_an_endless_file_is_refused_at_the_cap_not_read_until_memory_runs_out(home: Path) -> None:
    proc = tasks(home, "add", "--from", "/dev/zero", "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["message"] == (
        f"--from /dev/zero: larger than {MAX_STATE_FILE_BYTES} bytes; not read, nothing was added"
    )


def test_a_file_over_the_cap_is_refused_by_its_size_unread(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "huge.jsonl"
    with source.open("wb") as fh:
        fh.write(b'{"name": "a"}\n')
        fh.truncate(MAX_STATE_FILE_BYTES + 1)  # sparse: no disk, and read_at_most looks at the size first
    proc = tasks(home, "add", "--from", str(source))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--from {source}: larger than {MAX_STATE_FILE_BYTES} bytes" in proc.stderr
    assert names_in_db(home) == []


def test_an_option_that_is_not_utf8_exits_2_naming_it_and_adds_nothing(home: Path) -> None:
    """`add x --description $'bad\\xffbyte'`: a byte the command line could not decode is refused (exit 2,
    naming the option), not a UnicodeEncodeError traceback from the store."""
    proc = tasks(home, "add", "x", "--description", "bad\udcffbyte", "--", "true")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--description: not UTF-8 text (byte 0xff)" in proc.stderr
    proc = tasks(home, "add", "y", "--", "echo", "\udce9")
    assert proc.returncode == 2 and "the command after --: not UTF-8 text (byte 0xe9)" in proc.stderr, proc.stderr
    assert names_in_db(home) == []


def test_a_lone_surrogate_in_a_line_exits_2_naming_the_line_and_key(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_text('{"name": "a"}\n{"name": "b", "description": "\\ud800"}\n')
    proc = tasks(home, "add", "--from", str(source), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["message"] == (
        f"{source} line 2: description: not UTF-8 text (lone surrogate \\ud800); nothing was added"
    )
    assert names_in_db(home) == []
