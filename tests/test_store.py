"""State files: safe ids, the state root, atomic private writes, quarantined corruption, whole-line appends, locks."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS, call_script
from selfheal.errors import CorruptStateError, InvalidIdError, LockBusy, UnsafeStateError, UsageError
from selfheal.state import root as store
from selfheal.state.root import (
    StateRoot,
    append_line,
    file_lock,
    read_json,
    resolve_state_root,
    validate_id,
    write_bytes_atomic,
    write_json,
)

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run the test under umask 0, the most permissive a user could have."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def child_env(home: Path) -> dict[str, str]:
    """A minimal environment for a child Python that imports selfheal from this checkout."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SCRIPTS), "SELFHEAL_HOME": str(home)}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- ids ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["a", "doc-gen-587", "A.b_c-9", "_private", "v1.2.3", "x" * 128], ids=lambda v: v[:20]
)
def test_safe_ids_are_accepted(value: str) -> None:
    """Ids of 1-128 letters, digits, dot, underscore and dash (no leading dot) come back unchanged."""
    assert validate_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "../../etc/passwd",
        "..",
        ".",
        ".hidden",
        "a/b",
        "a\\b",
        "",
        "x" * 129,
        "name with space",
        "naïve",
        "任务",
        "a\x00b",
        "abc\n",
    ],
    ids=[
        "traversal",
        "dotdot",
        "dot",
        "hidden",
        "slash",
        "backslash",
        "empty",
        "129-chars",
        "space",
        "non-ascii-latin",
        "non-ascii-cjk",
        "nul",
        "trailing-newline",
    ],
)
def test_unsafe_ids_are_refused_by_name(value: str) -> None:
    """An id that could escape its folder or is not a plain file name is a usage error (exit 2) naming it."""
    with pytest.raises(InvalidIdError) as info:
        validate_id(value, "run")
    assert info.value.exit_code == 2
    assert info.value.value == value
    assert repr(value) in str(info.value)
    assert "run id" in str(info.value)


# -- the state root -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SELFHEAL_HOME": "/srv/sh", "OPENCLAW_STATE_DIR": "/srv/oc"}, "/srv/sh"),
        ({"OPENCLAW_STATE_DIR": "/srv/oc"}, "/srv/oc/self-heal"),
        ({"SELFHEAL_HOME": "", "OPENCLAW_STATE_DIR": "/srv/oc"}, "/srv/oc/self-heal"),
        ({}, "{home}/.openclaw/self-heal"),
        ({"SELFHEAL_HOME": "~/custom"}, "{home}/custom"),
        ({"OPENCLAW_STATE_DIR": "~/oc"}, "{home}/oc/self-heal"),
    ],
    ids=["selfheal-home-wins", "openclaw-dir", "empty-selfheal-home-ignored", "default", "tilde", "tilde-openclaw"],
)
def test_state_root_precedence(
    env: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SELFHEAL_HOME beats OPENCLAW_STATE_DIR/self-heal, which beats ~/.openclaw/self-heal."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_state_root(env) == Path(expected.format(home=tmp_path))


@pytest.mark.parametrize("value", ["state", "./state", "../x/state"])
def test_a_relative_selfheal_home_is_refused_naming_it(value: str, tmp_path: Path, home: Path) -> None:
    """SELFHEAL_HOME=state would be a different state root in each folder a script is run from (cron runs in
    $HOME): another task tree, other breakers, silently. It is refused (exit 2) before anything is made."""
    with pytest.raises(UsageError, match=f"SELFHEAL_HOME={re.escape(value)}: not an absolute path") as info:
        resolve_state_root({"SELFHEAL_HOME": value, "HOME": str(tmp_path)})
    assert info.value.exit_code == 2
    proc = call_script("tasks.py", "add", "job", "--", "true", home=home, env={"SELFHEAL_HOME": value}, cwd=tmp_path)
    assert proc.returncode == 2 and "not an absolute path" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made in the working folder


# -- atomic writes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"task": "doc-gen-587", "attempt": 2, "ok": True, "none": None},
        {"nested": {"list": [1, 2.5, "三"], "emoji": "✓"}, "big": "x" * 200_000},
    ],
    ids=["empty", "flat", "nested-unicode-large"],
)
def test_write_json_round_trips(obj: dict[str, object], tmp_path: Path) -> None:
    """What write_json stores, read_json gives back equal."""
    path = tmp_path / "f.json"
    write_json(path, obj)
    assert read_json(path) == obj


@pytest.mark.parametrize("data", [b"", b"hello\n", bytes(range(256)) * 1000], ids=["empty", "text", "binary"])
def test_write_bytes_atomic_round_trips(data: bytes, tmp_path: Path) -> None:
    """The file holds exactly the bytes given, replacing what was there."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"previous content that is longer than some of the new ones")
    write_bytes_atomic(path, data)
    assert path.read_bytes() == data


@pytest.mark.parametrize("existing_mode", [None, 0o644, 0o666], ids=["new", "replacing-0644", "replacing-0666"])
@pytest.mark.usefixtures("open_umask")
def test_written_files_are_private_even_with_open_umask(existing_mode: int | None, tmp_path: Path) -> None:
    """Under umask 0, a written state file is 0600, also when it replaces a world-readable one."""
    path = tmp_path / "f.json"
    if existing_mode is not None:
        path.write_text("{}")
        path.chmod(existing_mode)
    write_json(path, {"a": 1})
    assert mode(path) == 0o600


@pytest.mark.usefixtures("open_umask")
def test_created_folders_are_private_even_with_open_umask(home: Path) -> None:
    """Every folder a write creates (not only the last one) is 0700 under umask 0."""
    assert not home.exists()
    write_json(home / "checkpoints" / "task-1" / "step.json", {"a": 1})
    modes = {
        p.relative_to(home.parent).as_posix(): oct(mode(p))
        for p in (home, home / "checkpoints", home / "checkpoints" / "task-1")
    }
    assert modes == {"state": "0o700", "state/checkpoints": "0o700", "state/checkpoints/task-1": "0o700"}


def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    """After many rewrites the folder holds only the state file itself."""
    path = tmp_path / "f.json"
    for i in range(20):
        write_json(path, {"i": i})
        write_json(path, {"i": i}, durable=False)
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def _fail_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: object, dst: object, **dir_fds: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", replace)


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)


def _fail_write_halfway(monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls = 0

    def write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize(
    "fail", [_fail_write_halfway, _fail_fsync, _fail_replace], ids=["disk-full-mid-write", "fsync", "replace"]
)
def test_failed_write_keeps_the_old_file_and_no_temp(
    fail: Callable[[pytest.MonkeyPatch], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails part-way raises, leaves the previous content intact and no temp file behind."""
    path = tmp_path / "f.json"
    write_json(path, {"v": "old"})
    before = path.read_bytes()
    fail(monkeypatch)
    with pytest.raises(OSError):
        write_json(path, {"v": "new", "pad": "x" * 100_000})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


# -- reading and quarantine ---------------------------------------------------------------------------------------


def test_missing_state_file_reads_as_none(tmp_path: Path) -> None:
    """A state file that was never written is simply absent: None, no error."""
    assert read_json(tmp_path / "nope.json") is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"task": "doc-gen-587", "attempt": ',
        b"not json at all",
        b"",
        b"  \n",
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        b'{"task": "caf\xe9"}',
        b"\xff\xfe\x00\x00",
    ],
    ids=["truncated", "garbage", "empty", "whitespace", "array", "string", "null", "latin-1", "binary"],
)
def test_corrupt_state_file_is_quarantined_and_reported(raw: bytes, tmp_path: Path) -> None:
    """An unreadable file raises CorruptStateError naming it and where its untouched bytes were moved."""
    path = tmp_path / "run.json"
    path.write_bytes(raw)
    with pytest.raises(CorruptStateError) as info:
        read_json(path)
    moved = info.value.quarantined_to
    assert moved is not None
    assert re.fullmatch(r"run\.json\.corrupt-\d{8}T\d{6}Z", moved.name)
    assert moved.parent == tmp_path
    assert moved.read_bytes() == raw
    assert not path.exists()
    assert str(path) in str(info.value) and str(moved) in str(info.value)


def test_second_corruption_in_the_same_second_keeps_both_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two corrupt versions of one file quarantined within a second get distinct names; neither is lost."""
    monkeypatch.setattr(store.time, "time", lambda: 1_781_061_138.25)
    path = tmp_path / "run.json"
    moved = []
    for raw in (b"{first", b"{second"):
        path.write_bytes(raw)
        with pytest.raises(CorruptStateError) as info:
            read_json(path)
        moved.append(info.value.quarantined_to)
    assert moved[0] != moved[1]
    assert [m.read_bytes() for m in moved] == [b"{first", b"{second"]


# -- appends -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "line", "expected"),
    [
        (None, b'{"a":1}', b'{"a":1}\n'),
        (None, b'{"a":1}\n', b'{"a":1}\n'),
        (b'{"a":1}\n', b'{"b":2}', b'{"a":1}\n{"b":2}\n'),
        (b"", b'{"b":2}', b'{"b":2}\n'),
    ],
    ids=["adds-newline", "keeps-one-newline", "appends-after", "empty-file"],
)
def test_append_line_writes_one_terminated_line(
    existing: bytes | None, line: bytes, expected: bytes, tmp_path: Path
) -> None:
    """Each append adds exactly one newline-terminated line after what was there."""
    path = tmp_path / "x.jsonl"
    if existing is not None:
        path.write_bytes(existing)
    append_line(path, line)
    assert path.read_bytes() == expected


def test_append_after_a_torn_line_starts_a_fresh_line(tmp_path: Path) -> None:
    """If a writer died mid-line, the next record still lands whole on its own line."""
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"seq":1}\n{"seq":2,"ta')
    append_line(path, b'{"seq":3}')
    lines = path.read_bytes().split(b"\n")
    assert lines == [b'{"seq":1}', b'{"seq":2,"ta', b'{"seq":3}', b""]
    assert json.loads(lines[2]) == {"seq": 3}


@pytest.mark.usefixtures("open_umask")
def test_appended_file_is_private(tmp_path: Path) -> None:
    """A file created by append_line is 0600 even under umask 0."""
    path = tmp_path / "x.jsonl"
    append_line(path, b"x")
    assert mode(path) == 0o600


# -- locks -------------------------------------------------------------------------------------------------------


def _start_holder(lock: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [PYTHON, str(HELPERS / "hold_lock.py"), str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert holder.stdout is not None
    if holder.stdout.readline() != b"locked\n":
        holder.kill()
        holder.wait()
        pytest.fail("the lock-holding child did not take the lock")
    return holder


def test_lock_held_by_another_process_is_busy_at_once(state: store.StateRoot, child_env: dict[str, str]) -> None:
    """With timeout 0, a lock another process holds fails at once with LockBusy (exit 4) naming what is busy."""
    lock = state.lock_file("task", "doc-gen-587")
    holder = _start_holder(lock, child_env)
    try:
        with pytest.raises(LockBusy) as info, file_lock(lock, timeout=0, what="task doc-gen-587"):
            pytest.fail("got a lock another process holds")
        assert info.value.exit_code == 4
        assert "task doc-gen-587 is busy" in str(info.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_lock_of_a_killed_holder_is_free(state: store.StateRoot, child_env: dict[str, str]) -> None:
    """A lock whose holder was SIGKILLed can be taken at once: no stale lock outlives its process."""
    lock = state.lock_file("task", "doc-gen-587")
    holder = _start_holder(lock, child_env)
    holder.kill()
    holder.wait(timeout=30)
    taken = False
    with file_lock(lock, timeout=0):
        taken = True
    assert taken


# -- crash safety with real processes --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replace", "slots", "journal"])
def test_sigkill_during_writes_never_leaves_a_corrupt_file(
    tmp_path: Path, child_env: dict[str, str], mode: str
) -> None:
    """A writer SIGKILLed at 50 random moments always leaves a complete, readable state file (atomic
    replace, the two-slot file, and the snapshot plus journal checkpoints use, which must also read back
    as one consistent save: every change up to its `n`, none after)."""
    path = tmp_path / "state.json"
    rng = random.Random(20260610)
    problems: list[str] = []
    readers: dict[str, Callable[[Path], Any]] = {
        "replace": read_json,
        "slots": lambda p: store.SlotFile(p).read(),
        "journal": lambda p: store.JournaledFile(p, p.with_suffix(".journal")).read(),
    }
    read = readers[mode]
    # One interpreter forks a fresh writer process for each round (a start is most of what a writer costs);
    # each is a real process, killed with a real SIGKILL at a random moment of its writing.
    forker = subprocess.Popen(
        [PYTHON, str(HELPERS / "store_writer.py"), str(path), mode, "--fork"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env,
        text=True,
    )
    assert forker.stdin is not None and forker.stdout is not None
    try:
        for round_no in range(50):
            forker.stdin.write("go\n")
            forker.stdin.flush()
            said, pid = forker.stdout.readline().split()
            assert said == "wrote", "the writer failed before its first write"
            time.sleep(rng.uniform(0, 0.030))
            os.kill(int(pid), signal.SIGKILL)
            ended, status = forker.stdout.readline().split()
            assert ended == "ended" and os.WIFSIGNALED(int(status)), f"round {round_no}: the writer exited on its own"
            assert os.WTERMSIG(int(status)) == signal.SIGKILL, f"round {round_no}: ended by {status}"
            try:
                obj = read(path)
            except CorruptStateError as exc:
                problems.append(f"round {round_no}: {exc}")
                continue
            keys = {"n", "pad", "steps"} if mode == "journal" else {"n", "pad"}
            if obj is None or set(obj) != keys or not isinstance(obj["n"], int) or obj["pad"] != "x" * 50_000:
                problems.append(f"round {round_no}: incomplete object {str(obj)[:80]}")
            elif mode == "journal":
                n = obj["n"]
                expected = {f"s{m % 100}": m for m in range(max(0, n - 99), n + 1)}
                if obj["steps"] != expected:
                    problems.append(f"round {round_no}: steps do not match n={n}")
    finally:
        forker.stdin.close()
        forker.wait(timeout=30)
        forker.stdout.close()
    if mode == "journal":
        assert json.loads(path.read_text()) and store.JournaledFile(path, path.with_suffix(".journal")).read()
    assert problems == []


def test_tilde_means_the_given_environments_home(tmp_path: Path) -> None:
    """With an explicit environment, `~` expands to its HOME, not the calling process's."""
    env = {"HOME": str(tmp_path)}
    assert resolve_state_root(env) == tmp_path / ".openclaw" / "self-heal"
    assert resolve_state_root({**env, "SELFHEAL_HOME": "~/sh"}) == tmp_path / "sh"


def test_a_file_replaced_while_being_read_is_not_quarantined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that saw a torn write must not move aside the good file a writer put in its place."""
    path = tmp_path / "state.json"
    path.write_text('{"half": ')
    real_stat = os.stat

    def writer_wins(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(target) == path and not getattr(writer_wins, "done", False):
            writer_wins.done = True  # type: ignore[attr-defined]
            write_json(path, {"whole": True})
        return real_stat(target, *args, **kwargs)

    monkeypatch.setattr(store.os, "stat", writer_wins)
    assert read_json(path) == {"whole": True}
    assert not list(tmp_path.glob("state.json.corrupt-*"))


# -- the two-slot file checkpoints use --------------------------------------------------------------------


def slots_of(path: Path) -> list[dict[str, Any]]:
    """The file is a JSON array of its two slots."""
    value: list[dict[str, Any]] = json.loads(path.read_text())
    return value


def test_slot_file_round_trips_and_stays_plain_json(tmp_path: Path) -> None:
    """What was saved last is read back, and the file itself parses as JSON (jq can read it)."""
    path = tmp_path / "ck.json"
    slots = store.SlotFile(path)
    for n in range(3):
        slots.write({"n": n, "text": "naïve ✓"})
    assert store.SlotFile(path).read() == {"n": 2, "text": "naïve ✓"}
    assert sorted(s["seq"] for s in slots_of(path)) == [2, 3]
    assert max(slots_of(path), key=lambda s: s["seq"])["doc"]["n"] == 2
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_torn_slot_falls_back_to_the_previous_save_and_is_written_next(tmp_path: Path) -> None:
    """Garbage in the newest slot (a crash mid-write): the reader gets the save before it, and the next
    save goes into the torn slot, never over the only good one."""
    path = tmp_path / "ck.json"
    first = store.SlotFile(path)
    first.write({"n": 1})
    first.write({"n": 2})
    raw = bytearray(path.read_bytes())
    newest = raw.index(b'"seq":2')
    raw[newest : newest + 40] = b"\x00" * 40
    path.write_bytes(bytes(raw))
    again = store.SlotFile(path)
    assert again.read() == {"n": 1}
    again.write({"n": 3})
    assert store.SlotFile(path).read() == {"n": 3}
    assert {s["doc"]["n"] for s in slots_of(path)} == {1, 3}


def test_a_slot_whose_content_does_not_match_its_hash_is_not_trusted(tmp_path: Path) -> None:
    """Valid JSON with an altered document fails the SHA-256 check: the other slot is used."""
    path = tmp_path / "ck.json"
    slots = store.SlotFile(path)
    slots.write({"n": 1})
    slots.write({"n": 2})
    path.write_bytes(path.read_bytes().replace(b'"n":2', b'"n":9'))
    assert store.SlotFile(path).read() == {"n": 1}


def test_a_document_that_outgrows_its_slot_gets_a_bigger_file(tmp_path: Path) -> None:
    """A save larger than the slot rewrites the file with bigger slots (by atomic replace)."""
    path = tmp_path / "ck.json"
    slots = store.SlotFile(path)
    slots.write({"small": 1})
    size = path.stat().st_size
    slots.write({"big": "y" * 50_000})
    assert path.stat().st_size > size and store.SlotFile(path).read() == {"big": "y" * 50_000}
    slots.write({"small": 2})
    assert store.SlotFile(path).read() == {"small": 2}


def test_a_file_with_no_valid_slot_is_quarantined(tmp_path: Path) -> None:
    """Both slots unreadable: moved aside and reported, never silently reset."""
    path = tmp_path / "ck.json"
    path.write_text("[" + "x" * 5000 + "," + "y" * 5000 + "]\n")
    with pytest.raises(CorruptStateError, match="no valid checkpoint slot"):
        store.SlotFile(path).read()
    assert list(tmp_path.glob("ck.json.corrupt-*"))


def test_a_plain_json_file_is_read_and_converted_on_the_next_save(tmp_path: Path) -> None:
    """A checkpoint from before slots existed is still read; the next save turns it into slots."""
    path = tmp_path / "ck.json"
    write_json(path, {"old": True})
    slots = store.SlotFile(path)
    assert slots.read() == {"old": True}
    slots.write({"new": True})
    assert store.SlotFile(path).read() == {"new": True} and path.read_bytes()[:1] == b"["


# -- temp files of killed writers --------------------------------------------------------------------------------


_KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from selfheal.state import root as store
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # die between the temp file and the rename
store.write_json(Path(sys.argv[1]), {"n": 1})
"""


@pytest.mark.slow
def test_a_killed_writers_temp_file_is_removed_by_the_next_write_in_its_folder(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """A writer SIGKILLed before its rename leaves `.name.<pid>.<ns>.tmp`; once it is older than a few minutes
    the next write in that folder deletes it. A fresh one (a live writer's) is left alone."""
    folder = tmp_path / "runs"
    folder.mkdir()
    child = subprocess.run(
        [PYTHON, "-c", _KILLED_MID_WRITE, str(folder / "a.json")], env=child_env, check=False, timeout=60
    )
    assert child.returncode == -signal.SIGKILL
    (left,) = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    old = time.time() - 3600  # an hour: long dead
    os.utime(left, (old, old))
    live = folder / f".b.json.{os.getpid()}.{time.monotonic_ns()}.tmp"
    live.write_text("being written")

    write_json(folder / "c.json", {"n": 2})

    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, "c.json"])


# -- nothing is written outside the state root ------------------------------------------------------------------


def test_a_hard_link_planted_at_an_appended_file_is_refused(state: StateRoot, tmp_path: Path) -> None:
    """A second name for some other file (same filesystem) is no way around O_NOFOLLOW: appends refuse it."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"mine\n")
    os.link(victim, state.log_file)
    with pytest.raises(UnsafeStateError, match="hard links"):
        append_line(state.log_file, b"planted")
    assert victim.read_bytes() == b"mine\n"


def test_every_writer_refuses_a_linked_folder_between_the_root_and_the_file(state: StateRoot, tmp_path: Path) -> None:
    """`runs -> elsewhere`: atomic writes, appends and locks all refuse, and nothing appears elsewhere, even
    when the real folder was written to (and its descriptor remembered) before the link took its place."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = state.sub("runs") / "x.json"
    write_json(target, {"a": 0})
    append_line(state.sub("runs") / "y.log", b"line")
    os.rename(state.sub("runs"), tmp_path / "old-runs")
    os.symlink(elsewhere, state.sub("runs"))
    for write in (
        lambda: write_json(target, {"a": 1}),
        lambda: append_line(target, b"line"),
        lambda: file_lock(target).__enter__(),
    ):
        with pytest.raises(UnsafeStateError, match=re.escape(str(state.sub("runs")))):
            write()
    assert list(elsewhere.iterdir()) == []


# -- the snapshot plus journal checkpoints use ----------------------------------------------------------


def big_doc(steps: int) -> dict[str, Any]:
    return {"status": "running", "steps": {f"s{i}": {"state": "pending", "attempts": 0} for i in range(steps)}}


def test_a_journaled_save_writes_the_change_not_the_document(tmp_path: Path) -> None:
    """At step 10,000 a save appends one short line; the 400 KB snapshot is not touched."""
    path, journal = tmp_path / "t.json", tmp_path / "t.journal"
    file = store.JournaledFile(path, journal)
    doc = big_doc(10_000)
    file.write(doc)
    snapshot = path.read_bytes()
    assert len(snapshot) > 400_000
    for i in (9_998, 9_999):
        doc["steps"][f"s{i}"] = {"state": "done", "attempts": 1}
        doc["status"] = f"step {i}"
        before = journal.stat().st_size if journal.exists() else 0
        file.update(doc, [(["steps", f"s{i}"], doc["steps"][f"s{i}"]), (["status"], doc["status"])])
        assert journal.stat().st_size - before < 300
    assert path.read_bytes() == snapshot
    assert store.JournaledFile(path, journal).read() == doc
    assert journal.stat().st_mode & 0o777 == 0o600


def test_a_torn_journal_line_falls_back_to_the_previous_save_and_is_cut_off_by_the_next(tmp_path: Path) -> None:
    path, journal = tmp_path / "t.json", tmp_path / "t.journal"
    file = store.JournaledFile(path, journal)
    doc = big_doc(3)
    file.write(doc)
    for n in range(3):
        doc["steps"][f"s{n}"] = {"state": "done", "attempts": 1}
        file.update(doc, [(["steps", f"s{n}"], doc["steps"][f"s{n}"])])
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-20])  # the last save torn by a crash
    again = store.JournaledFile(path, journal)
    read = again.read()
    assert read is not None and read["steps"]["s2"] == {"state": "pending", "attempts": 0}
    assert read["steps"]["s1"] == {"state": "done", "attempts": 1}
    read["status"] = "resumed"
    again.update(read, [(["status"], "resumed")])
    assert store.JournaledFile(path, journal).read() == read  # the torn tail was cut off, not read past


def test_a_torn_last_journal_line_ends_the_replay(tmp_path: Path) -> None:
    """A crash mid-save tears the last line only: the save before it is what was saved."""
    path, journal = tmp_path / "t.json", tmp_path / "t.journal"
    file = store.JournaledFile(path, journal)
    file.write({"n": 0})
    for n in (1, 2):
        file.update({"n": n}, [(["n"], n)])
    journal.write_bytes(journal.read_bytes()[:-9])
    assert store.JournaledFile(path, journal).read() == {"n": 1}


def test_a_damaged_journal_line_with_later_saves_after_it_is_corruption_not_a_shorter_history(
    tmp_path: Path,
) -> None:
    """Replaying up to a damaged line would drop the good saves after it (a finished step would run again):
    the snapshot and the journal are set aside together and the read is refused."""
    path, journal = tmp_path / "t.json", tmp_path / "t.journal"
    file = store.JournaledFile(path, journal)
    file.write({"n": 0})
    for n in (1, 2):
        file.update({"n": n}, [(["n"], n)])
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0].replace(b'[[["n"],1]]', b'[[["n"],7]]') + lines[1])
    with pytest.raises(CorruptStateError, match="journal line 1 is damaged and later saves follow it"):
        store.JournaledFile(path, journal).read()
    assert not path.exists() and not journal.exists()
    assert [p.name.split(".corrupt-")[0] for p in sorted(tmp_path.iterdir())] == ["t.journal", "t.json"]


def test_lines_of_an_older_snapshot_left_after_a_fold_are_not_corruption(tmp_path: Path) -> None:
    """Emptying the journal after a fold is not synced: lines naming the previous snapshot may survive a crash.
    They follow on from nothing and are ignored."""
    path, journal = tmp_path / "t.json", tmp_path / "t.journal"
    file = store.JournaledFile(path, journal)
    file.write({"n": 0})
    for n in (1, 2):
        file.update({"n": n}, [(["n"], n)])
    old_lines = journal.read_bytes()
    file.write({"n": 5})
    journal.write_bytes(old_lines)  # as if the truncation was lost
    assert store.JournaledFile(path, journal).read() == {"n": 5}


def test_the_journal_is_folded_into_the_snapshot_once_it_outgrows_it(tmp_path: Path) -> None:
    path, journal = tmp_path / "t.json", tmp_path / "t.journal"
    file = store.JournaledFile(path, journal)
    doc: dict[str, Any] = {"n": 0, "steps": {}}
    file.write(doc)
    for n in range(1, 2_000):
        doc["n"] = n
        doc["steps"][f"s{n % 50}"] = "y" * 40
        file.update(doc, [(["n"], n), (["steps", f"s{n % 50}"], "y" * 40)])
        assert journal.stat().st_size <= max(65536, store.SlotFile(path).read() and file.slots.slot_bytes)
    assert store.JournaledFile(path, journal).read() == doc
    assert json.loads(path.read_text())  # the snapshot is still a JSON array of two slots


def test_a_stale_journal_from_a_snapshot_moved_aside_is_never_applied(tmp_path: Path) -> None:
    """A new snapshot numbered like the old one must not pick up the old one's journal lines."""
    path, journal = tmp_path / "t.json", tmp_path / "t.journal"
    file = store.JournaledFile(path, journal)
    file.write({"n": 0})
    file.update({"n": 1}, [(["n"], 1)])
    path.unlink()  # moved aside (quarantine_checkpoint)
    fresh = store.JournaledFile(path, journal)
    assert fresh.read() is None
    fresh.write({"fresh": True})
    assert store.JournaledFile(path, journal).read() == {"fresh": True}
