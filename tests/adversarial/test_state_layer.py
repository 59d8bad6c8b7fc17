"""The state layer itself under attack: what is planted among its files, a disk that fills or turns read-only
mid-save, a file another user left, a record past the size cap, a state root whose path is not UTF-8, files
an older version left world-readable. Every reader still gets a whole file or a named refusal, never a hang
or a traceback, and the work goes on where the docs say it does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PYTHON, SCRIPTS, call_script, run_script, script_env
from selfheal.core.runs import list_runs
from selfheal.errors import CorruptStateError, LockBusy, StateWriteError
from selfheal.state import root as store
from selfheal.state.root import (
    JournaledFile,
    SlotFile,
    StateRoot,
    append_line,
    read_json,
    write_json,
)

ENOSPC_TEXT = os.strerror(errno.ENOSPC)


def enospc(fd: int, data: bytes, offset: int) -> int:
    raise OSError(errno.ENOSPC, ENOSPC_TEXT)


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def run_record(state: StateRoot, run_id: str, **fields: object) -> Path:
    path = state.run_file(run_id)
    path.write_text(json.dumps({"run_id": run_id, "task": "t", "status": "finished", **fields}))
    return path


# -- things planted among the state files -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_fifo_planted_among_run_records_is_named_and_never_hangs_the_health_check(home: Path) -> None:
    """A FIFO where a run record belongs used to block the cron health check for good (opening one for reading
    waits for a writer); now it is refused by name and the check finishes."""
    StateRoot(home).ensure()
    fifo = home / "runs" / "planted.json"
    os.mkfifo(fifo, 0o600)

    proc = run_script("health_check.py", "--json", home=home, timeout=60)

    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"{fifo}: it is not a plain file" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == proc.returncode
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # left where it is, for the user to look at


# -- a full disk mid-save ---------------------------------------------------------------------------------------


def test_a_checkpoint_save_on_a_full_disk_names_the_journal_and_keeps_the_last_save(
    state: StateRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal line the disk has no room for fails as a state write (exit 3, the file named), not as a bare
    OSError the scripts call a bug; the save before it is what reads back."""
    path, journal = state.checkpoint_file("t"), state.checkpoint_file("t", "journal")
    saved = JournaledFile(path, journal)
    saved.write({"step": 1})
    saved.update({"step": 2}, [(["step"], 2)])

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", enospc)
        with pytest.raises(StateWriteError) as info:
            saved.update({"step": 3}, [(["step"], 3)])

    assert info.value.exit_code == 3
    assert str(info.value) == f"cannot write {journal}: {ENOSPC_TEXT}"
    assert JournaledFile(path, journal).read() == {"step": 2}


@pytest.mark.slow
def test_a_workflow_whose_journal_hits_a_full_disk_stops_with_exit_3_and_resumes_once_there_is_room(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first step's save fits, the next one's journal line does not: the workflow stops before step two
    with the journal named (no 'internal error'), and a run once the disk has room finishes the rest."""
    ran = tmp_path / "ran"
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        textwrap.dedent(f"""
        steps:
          - name: one
            run: ["true"]
          - name: two
            run: ["sh", "-c", "echo two >> {ran}"]
        """)
    )
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if fd_path(fd).endswith(".journal"):
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        return real_pwrite(fd, data, offset)

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", pwrite)
        full = call_script("workflow.py", "run", str(plan), "--task", "w", home=home)
    again = call_script("workflow.py", "run", str(plan), "--task", "w", home=home)

    assert full.returncode == 3, full.stderr
    assert f"cannot write {home / 'checkpoints' / 'w.journal'}: {ENOSPC_TEXT}" in full.stderr
    assert "internal error" not in full.stderr and "Traceback" not in full.stderr
    assert again.returncode == 0, again.stderr
    assert ran.read_text() == "two\n"


def test_a_slot_save_the_disk_writes_only_part_of_is_carried_on_not_taken_for_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pwrite may write less than asked (a filling disk): the save goes on until all of the slot is written,
    where it once returned with the slot torn and the save silently lost."""
    path = tmp_path / "c.json"
    SlotFile(path).write({"step": 1})
    writer = SlotFile(path)
    writer.read()
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real_pwrite(fd, bytes(data[:100]), offset))

    writer.write({"step": 2})

    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert SlotFile(path).read() == {"step": 2}


# -- a state root remounted read-only, with a torn file in it --------------------------------------------------------


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` bind-mounted read-only over itself (as ext4's errors=remount-ro leaves a disk); root only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    sh("mount", "--bind", str(folder), str(folder))
    try:
        sh("mount", "-o", "remount,ro,bind", str(folder))
        yield
    finally:
        sh("umount", "-l", str(folder))


@contextlib.contextmanager
def read_only_view(folder: Path, at: Path) -> Iterator[Path]:
    """`folder` bind-mounted read-only at `at`, `folder` itself still writable: a reader that can only read (a
    read-only container mount, a backup host's view) while the owner's cron writes the same files; root only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    at.mkdir()
    sh("mount", "--bind", str(folder), str(at))
    try:
        sh("mount", "-o", "remount,ro,bind", str(at))
        yield at
    finally:
        sh("umount", "-l", str(at))


@pytest.mark.slow
def test_a_torn_run_record_on_a_read_only_state_root_is_named_and_the_command_still_runs(
    home: Path, tmp_path: Path
) -> None:
    """A torn record cannot be moved aside on a read-only disk: it is reported as unreadable and not moved,
    and retry_run still runs the command (the run record is what goes unrecorded), where moving it aside
    raised an OSError out of every reader of run records."""
    assert call_script("retry_run.py", "--task", "t", "--", "true", home=home).returncode == 0
    torn = home / "runs" / "torn.json"
    torn.write_bytes(b'{"run_id": "torn", "status": "runn')
    marker = tmp_path / "ran"

    with read_only(home):
        proc = call_script("retry_run.py", "--task", "t", "--", "touch", str(marker), home=home)

    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert f"state file {torn} is unreadable" in proc.stderr and "not moved aside" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert torn.read_bytes() == b'{"run_id": "torn", "status": "runn'


def test_reading_a_torn_file_that_cannot_be_moved_aside_reports_it_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_json's promise holds without the move: CorruptStateError naming the file and why it stayed."""
    path = tmp_path / "torn.json"
    path.write_bytes(b'{"a": ')

    def replace(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CorruptStateError) as info:
        read_json(path)

    assert str(path) in str(info.value) and f"not moved aside: {os.strerror(errno.EROFS)}" in str(info.value)
    assert info.value.quarantined_to is None
    assert path.read_bytes() == b'{"a": '


# -- records nobody can read, or too big to ----------------------------------------------------------------------


def _as_a_user_who_cannot_read(path: Path) -> list[str]:
    """Make `path` unreadable to the scripts run with the returned prefix: another user's 0600 file for root
    (run without the capabilities that let root read anything), mode 000 for anyone else."""
    if os.geteuid() != 0:
        path.chmod(0)
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root needs setpriv to run without its read-anything capabilities")
    os.chown(path, 65534, 65534)
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.mark.slow
def test_a_run_record_another_user_left_unreadable_is_skipped_by_name_and_tasks_still_run(
    home: Path, tmp_path: Path
) -> None:
    """A record left by a `sudo retry_run.py` (root's, 0600) once ended every later run and health check in
    'internal error' with a PermissionError; now it is named and skipped, and the command runs."""
    assert run_script("retry_run.py", "--task", "t", "--", "true", home=home).returncode == 0
    (record,) = (home / "runs").iterdir()
    prefix = _as_a_user_who_cannot_read(record)
    marker = tmp_path / "ran"
    env = script_env(home)

    proc = subprocess.run(
        [*prefix, PYTHON, str(SCRIPTS / "retry_run.py"), "--task", "t", "--", "touch", str(marker)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    health = subprocess.run(
        [*prefix, PYTHON, str(SCRIPTS / "health_check.py"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert f"cannot read {record}: {os.strerror(errno.EACCES)}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + health.stderr, health.stderr
    assert json.loads(health.stdout)["exit_code"] == health.returncode


def test_a_run_record_over_the_size_cap_is_set_aside_and_the_others_are_listed(
    state: StateRoot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One oversized record (damage: none is written that big) no longer stops every run and health check
    with exit 3: it is moved aside, named, and the readable records are listed."""
    monkeypatch.setattr(store, "MAX_STATE_FILE_BYTES", 4096)
    run_record(state, "good")
    big = run_record(state, "big", pad="x" * 10_000)

    with caplog.at_level(logging.WARNING):
        found = list_runs(state)

    assert [r.run_id for r in found] == ["good"]
    assert [p.name.split(".corrupt-")[0] for p in big.parent.glob("big.json.corrupt-*")] == ["big.json"]
    assert not big.exists()
    assert f"state file {big} is larger than 4096 bytes" in caplog.text


# -- a state root whose path is not UTF-8 ---------------------------------------------------------------------------


def test_state_files_hold_paths_that_are_not_utf8_and_read_them_back_the_same(tmp_path: Path) -> None:
    """A folder named in Latin-1 (`café` as one byte 0xe9) reaches Python as a lone surrogate: written as its
    JSON escape, read back equal, where writing it raised UnicodeEncodeError."""
    folder = str(tmp_path / "caf\udce9")
    path = tmp_path / "state.json"
    write_json(path, {"folder": folder})
    SlotFile(tmp_path / "slots.json").write({"folder": folder})

    assert read_json(path) == {"folder": folder}
    assert SlotFile(tmp_path / "slots.json").read() == {"folder": folder}
    assert b"caf\\udce9" in path.read_bytes()


def report(stdout: bytes) -> dict[str, object]:
    """The script's JSON: strict UTF-8 (as jq reads it), the path's byte written as its JSON escape."""
    parsed: dict[str, object] = json.loads(stdout.decode("utf-8"))
    return parsed


@pytest.mark.slow
def test_the_health_check_works_in_a_state_root_whose_path_is_not_utf8(tmp_path: Path) -> None:
    """The health check saves the settings it used, the state root among them: on such a path it crashed with
    'internal error' on every cron run; now it reports, and its file reads back on the next run."""
    home = tmp_path / "caf\udce9" / "state"

    first, second = (run_script("health_check.py", "--json", home=home, binary=True) for _ in range(2))

    for proc in (first, second):
        assert b"internal error" not in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr
        assert report(proc.stdout)["exit_code"] == proc.returncode
    assert report(second.stdout)["previous_mode"] == report(first.stdout)["mode"]
    assert b"caf\\udce9" in first.stdout  # the byte, escaped: the path reads back as the system has it
    assert sorted(p.name for p in (home / "status").iterdir()) == ["health.json"]


# -- files an older version (or umask 000) left open to others --------------------------------------------------


@pytest.mark.parametrize("writer", ["append", "journal"])
def test_a_world_readable_state_file_an_older_version_left_is_made_private_when_next_written(
    state: StateRoot, writer: str
) -> None:
    """Files written in place (the ledger, a checkpoint's journal) are never replaced by a new 0600 file, so
    a 0644 one stayed 0644: the next write makes it 0600."""
    if writer == "append":
        path = state.ledger_file("2026-06-10")
        path.write_text('{"event": "old"}\n')
        path.chmod(0o644)
        append_line(path, b'{"event": "new"}')
    else:
        path = state.checkpoint_file("t", "journal")
        saved = JournaledFile(state.checkpoint_file("t"), path)
        saved.write({"step": 1})
        path.write_bytes(b"")
        path.chmod(0o644)
        saved.update({"step": 2}, [(["step"], 2)])
        assert JournaledFile(state.checkpoint_file("t"), path).read() == {"step": 2}

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# JSON nested past the C parser's recursion limit: 200 KB, well under every size cap.
DEEP = "[" * 100_000 + "]" * 100_000


def test_json_nested_past_the_parsers_depth_is_bad_json_to_every_reader(home: Path, state: StateRoot) -> None:
    """json.loads raises RecursionError, not ValueError, on `[[[[...`: a state file, a ledger line, a breaker
    file planted so, an HTTP error body a hostile server sent, a task file given to `add --from` or a snapshot
    given to `save` crashed whatever read it (a traceback, exit 3). Now each is bad JSON like any other: the
    state file moved aside, the line skipped, the body classified by its status, the input refused (exit 2)."""
    from selfheal.core.classify import Failure, classify_error
    from selfheal.core.config import load_config
    from selfheal.core.ledger import Ledger, iter_events, ledger_files

    planted = state.root / "status" / "planted.json"
    planted.parent.mkdir(exist_ok=True)
    planted.write_text(DEEP)
    with pytest.raises(CorruptStateError, match="too deep"):
        read_json(planted)
    assert not planted.exists()  # moved aside, named

    Ledger(state, load_config()).record("failed", task="nightly", error_class="transient", reason="reset")
    (ledger,) = ledger_files(state)
    with ledger.open("a") as fh:
        fh.write(DEEP + "\n")
    assert [e["task"] for e in iter_events(ledger_files(state)) if e] == ["nightly"]

    failure = Failure.from_http(503, {}, '{"error": ' + DEEP + "}")
    assert classify_error(failure).error_class == "transient"

    lines = home / "tasks.jsonl"
    lines.write_text(DEEP + "\n")
    added = call_script("tasks.py", "add", "--from", str(lines), home=home)
    assert added.returncode == 2 and "line 1" in added.stderr and "Traceback" not in added.stderr, added.stderr
    messages = home / "messages.json"
    messages.write_text(DEEP)
    saved = call_script("snapshot.py", "save", "s1", "--messages-file", str(messages), home=home)
    assert saved.returncode == 2 and "not valid JSON" in saved.stderr, saved.stderr


# -- who holds a lock, read from /proc/locks ----------------------------------------------------------------------


# Takes the flock of argv[1], starts a child that inherits its descriptor and waits for a signal, says both pids,
# and exits: the child holds the lock through the description it inherited, as a command a runner started does.
HAND_ON = (
    "import fcntl, os, subprocess, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()', 'heir-of-the-lock'],"
    " pass_fds=[fd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(os.getpid(), child.pid, flush=True)\n"
)


def test_a_lock_whose_taker_exited_is_said_to_be_held_by_the_process_holding_it_now(tmp_path: Path) -> None:
    """/proc/locks gives the pid that took an flock, which may have exited while a child it started holds the lock
    through the same open file description (or its pid gone to a stranger since): LockBusy named that pid, a
    process that holds nothing. It names the process that holds the lock now."""
    lock = tmp_path / "task.lock"
    taker = subprocess.run([PYTHON, "-c", HAND_ON, str(lock)], capture_output=True, text=True, check=True, timeout=60)
    taker_pid, heir_pid = (int(p) for p in taker.stdout.split())
    try:
        with pytest.raises(LockBusy) as busy, store.file_lock(lock, timeout=0, what="task 't'"):
            pass
        held = store.lock_is_held(lock)
    finally:
        os.kill(heir_pid, 9)  # not this process's child: init reaps it

    assert held is True
    assert str(busy.value).startswith(f"task 't' is busy (held by pid {heir_pid}: python"), str(busy.value)
    assert "heir-of-the-lock" in str(busy.value)
    assert f"pid {taker_pid}" not in str(busy.value)


@pytest.mark.slow
def test_a_lock_on_another_file_system_with_the_same_inode_number_is_not_this_lock(tmp_path: Path) -> None:
    """/proc/locks was matched by inode number alone, and two file systems number their files alike (two tmpfs
    mounts: the same numbers in the same order): a stranger's lock on the other one read as this lock held, so
    `workflow.py status` said running for a run long gone, and LockBusy named the stranger. The device counts
    too: this lock is free, and nobody is named."""
    from test_disk import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "theirs", "1m") as theirs, mounted_tmpfs(tmp_path / "ours", "1m") as ours:
        (theirs / "task.lock").touch()
        (ours / "task.lock").touch()
        assert (theirs / "task.lock").stat().st_ino == (ours / "task.lock").stat().st_ino
        stranger = subprocess.Popen(
            [
                PYTHON,
                "-c",
                "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True);"
                " sys.stdin.read()",
                str(theirs / "task.lock"),
                "stranger",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert stranger.stdout is not None and stranger.stdout.readline() == "1\n"
            held = store.lock_is_held(ours / "task.lock")
            holder = store.lock_holder(ours / "task.lock")
            with store.file_lock(ours / "task.lock", timeout=0):
                taken = True
            theirs_held = store.lock_is_held(theirs / "task.lock")
        finally:
            stranger.communicate("")

    assert (held, holder, taken) == (False, None, True)
    assert theirs_held is True  # the stranger's own lock still reads as held
