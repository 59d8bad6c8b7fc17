"""The task tree as cron runs it night after night: a task that cannot run now never holds up the rest, a
damaged row or an unusual tree never turns an answer into a traceback or a broken JSON object."""

from __future__ import annotations

import errno
import gc
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import call_script


@pytest.fixture(autouse=True)
def quiet(write_config: Callable[[str], Path]) -> None:
    """No real retry waits and no model asked for a root cause."""
    write_config("retry: {jitter: none}\nfixes: {use_model: false}\n")


def tasks(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return call_script("tasks.py", *args, home=home)


def test_a_task_whose_breaker_is_open_does_not_starve_the_tasks_behind_it(home: Path, tmp_path: Path) -> None:
    """A P0 task whose target's breaker stays open is set aside after a pass that could not run it: the next
    passes run the tasks behind it, `--max` does not spin on it, and once the breaker closes it runs."""
    journal = tmp_path / "journal"
    assert call_script("breakers.py", "trip", "api", "--for", "3600", home=home).returncode == 0
    assert (
        tasks(home, "add", "hot", "--priority", "P0", "--target", "api", "--shell", f"echo hot >> {journal}").returncode
        == 0
    )
    for name in ("cold-1", "cold-2"):
        assert tasks(home, "add", name, "--priority", "P2", "--shell", f"echo {name} >> {journal}").returncode == 0
    first = tasks(home, "run-next", "--json")
    assert (first.returncode, json.loads(first.stdout)["task"]) == (4, "hot"), first.stderr
    second = tasks(home, "run-next", "--json")
    assert (second.returncode, json.loads(second.stdout)["task"]) == (0, "cold-1"), second.stderr
    loop = tasks(home, "run-next", "--max", "50", "--json")
    runs = [(r["task"], r["outcome"]) for r in json.loads(loop.stdout)["runs"]]
    assert runs == [("cold-2", "succeeded"), ("hot", "not_attempted"), (None, "nothing")]
    assert journal.read_text().splitlines() == ["cold-1", "cold-2"]
    assert call_script("breakers.py", "reset", "api", home=home).returncode == 0
    last = tasks(home, "run-next", "--json")
    assert (last.returncode, json.loads(last.stdout)["task"]) == (0, "hot"), last.stderr
    assert journal.read_text().splitlines() == ["cold-1", "cold-2", "hot"]


@pytest.mark.parametrize("leaves", [("void", "hot"), ("mark", "hot", "end")], ids=["voided", "ended"])
def test_a_task_set_aside_then_finished_by_a_person_leaves_no_mark_on_a_new_task_of_its_name(
    home: Path, leaves: tuple[str, ...]
) -> None:
    """A task set aside (its breaker open) that a person voids or ends kept its `deferred:` mark after its tree
    was archived: a new task added later under the same name started out passed over, run after every other."""
    assert call_script("breakers.py", "trip", "api", "--for", "3600", home=home).returncode == 0
    assert tasks(home, "add", "hot", "--priority", "P0", "--target", "api", "--", "true").returncode == 0
    assert tasks(home, "run-next").returncode == 4  # not attempted: set aside
    assert tasks(home, *leaves).returncode == 0
    assert tasks(home, "archive", "--older-than", "0").returncode == 0
    assert tasks(home, "add", "cold", "--priority", "P2", "--", "true").returncode == 0
    assert tasks(home, "add", "hot", "--priority", "P0", "--", "true").returncode == 0
    first = tasks(home, "run-next", "--json")
    assert (first.returncode, json.loads(first.stdout)["task"]) == (0, "hot"), first.stdout


def test_a_mark_left_for_a_name_no_task_has_is_cleared_by_the_archive_pass(home: Path) -> None:
    """A `deferred:` mark of a name the tree no longer holds (left by a version that did not clear it) goes at
    the next archive pass, so a task added under that name later runs in its turn."""
    assert tasks(home, "add", "cold", "--priority", "P2", "--", "true").returncode == 0
    with sqlite3.connect(home / "tasks.db") as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('deferred:hot', '1')")
    assert tasks(home, "archive", "--older-than", "0").returncode == 0
    assert tasks(home, "add", "hot", "--priority", "P0", "--", "true").returncode == 0
    first = tasks(home, "run-next", "--json")
    assert (first.returncode, json.loads(first.stdout)["task"]) == (0, "hot"), first.stdout


def test_list_json_with_a_row_edited_by_hand_is_still_one_valid_json_object(home: Path) -> None:
    """`list --json` streams; a row whose JSON column no longer parses ends it with exit 3 and one object
    that says so (the rows before it kept), never half an object followed by a second one."""
    for name in ("a", "b"):
        assert tasks(home, "add", name, "--", "true").returncode == 0
    with sqlite3.connect(home / "tasks.db") as conn:
        conn.execute("UPDATE tasks SET history = '[{bad' WHERE task_name = 'b'")
    proc = tasks(home, "list", "--json")
    assert proc.returncode == 3
    assert len(proc.stdout.splitlines()) == 1, proc.stdout
    listed = json.loads(proc.stdout)
    assert listed["ok"] is False and listed["exit"] == 3
    assert "task 'b': column history: invalid JSON" in listed["message"] and listed["message"] in proc.stderr
    assert [t["name"] for t in listed["tasks"]] == ["a"]
    assert json.loads(tasks(home, "actionable", "--json").stdout)["ok"] is False  # one object there too


def test_a_chain_thousands_of_levels_deep_is_drawn_and_refused_as_nested_json_without_a_traceback(
    home: Path, tmp_path: Path
) -> None:
    """`tree` walks without recursion (1,500 levels: Python's limit is 1,000); `tree --json`, which nests each
    child in its parent, refuses past MAX_JSON_LEVELS with exit 2, naming `list --json` instead."""
    lines = [{"name": f"d{i}", **({"parent": f"d{i - 1}"} if i else {})} for i in range(1500)]
    source = tmp_path / "chain.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert tasks(home, "add", "--from", str(source)).returncode == 0
    drawn = tasks(home, "tree")
    assert drawn.returncode == 0, drawn.stderr[-500:]
    shown = drawn.stdout.splitlines()
    assert len(shown) == 1500 and shown[0].startswith("d0 [") and shown[-1].lstrip(" └─").startswith("d1499 [")
    nested = tasks(home, "tree", "--json")
    assert nested.returncode == 2 and "Traceback" not in nested.stderr
    refused = json.loads(nested.stdout)
    assert refused["ok"] is False and "more than 200 levels deep" in refused["message"]
    assert "list --json" in refused["message"]
    near = json.loads(tasks(home, "tree", "d1490", "--json").stdout)  # a subtree within the bound is nested
    depth, node = 1, near["tree"][0]
    while node["children"]:
        depth, node = depth + 1, node["children"][0]
    assert (depth, node["name"]) == (10, "d1499")


CONTROLS = ("\x1b", "\x07", "\x9b", "\r\x1b")


def test_control_sequences_in_a_tasks_text_or_output_never_reach_the_terminal(home: Path) -> None:
    """A description, a display name or a command's output may hold terminal controls (an OSC title, a screen
    clear, the one-byte CSI, BEL): every text `tasks.py` prints shows them as visible stand-ins, never raw."""
    title = "report \x1b]0;pwned\x07 \x1b[2J"
    command = r"printf 'Error: \033[31mred\033[0m \302\233 2J \007 done\r\033[Kfake OK\n'; exit 1"
    added = tasks(home, "add", "esc", "--display-name", title, "--description", title, "--shell", command)
    assert added.returncode == 0, added.stderr
    ran = tasks(home, "run-next")
    assert ran.returncode == 3, ran.stderr
    assert "exit 1: \u241b[Kfake OK" in ran.stderr  # shown, its ESC as a visible stand-in
    for proc in (
        ran,
        tasks(home, "show", "esc"),
        tasks(home, "show", "FIX-esc-command"),
        tasks(home, "list"),
        tasks(home, "tree"),
        tasks(home, "log", "esc"),
        tasks(home, "actionable"),
    ):
        for stream in (proc.stdout, proc.stderr):
            assert not any(c in stream for c in CONTROLS), (proc.args, stream)
    assert "\u241b]0;pwned\u2407" in tasks(home, "show", "esc").stdout


def planted(path: Path, plant: str, victim: Path) -> None:
    """Put what an attacker plants at `path`: a link to `victim`, a FIFO, or a folder."""
    if plant == "symlink":
        path.symlink_to(victim)
    elif plant == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize("plant", ["symlink", "fifo", "folder"])
def test_a_link_or_fifo_planted_at_a_tasks_log_parks_that_task_and_the_queue_runs_on(
    home: Path, tmp_path: Path, plant: str
) -> None:
    """Nothing is written through a planted link or into a FIFO at `tasks/NAME.log` (exit 2, naming it), and
    that task waits for a person (REQUIRES_MANUAL) instead of being claimed and refused by every pass while
    every task behind it waits forever. A folder there was that crash loop: exit 3 at every pass, the task back
    to NORMAL_CRASH with no retry counted, the task behind it never run."""
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    assert tasks(home, "add", "first", "--priority", "P0", "--", "echo", "first").returncode == 0
    assert tasks(home, "add", "second", "--", "echo", "second").returncode == 0
    log = home / "tasks" / "first.log"
    log.parent.mkdir(exist_ok=True)
    planted(log, plant, victim)
    refused = tasks(home, "run-next", "--json")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert str(log) in json.loads(refused.stdout)["message"]
    shown = json.loads(tasks(home, "show", "first", "--json").stdout)["task"]
    assert shown["exec_state"] == "REQUIRES_MANUAL" and str(log) in shown["last_result"], shown
    nxt = tasks(home, "run-next", "--json")
    assert (nxt.returncode, json.loads(nxt.stdout)["task"]) == (0, "second"), nxt.stderr
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("plant", ["symlink", "fifo", "folder"])
def test_a_link_fifo_or_folder_planted_at_a_running_tasks_log_loses_its_lines_not_the_runs_outcome(
    home: Path, tmp_path: Path, plant: str
) -> None:
    """A link, FIFO or folder put in place of `tasks/NAME.log` while the task runs is never written through; the
    lines after it are lost (said on stderr, naming the path), but the command's success is recorded (END, exit
    0): it was parked as "self-heal failed while running it" (exit 2 or 3), its success lost, so a person
    handing it back ran its effects twice."""
    from conftest import PYTHON, SCRIPTS, script_env

    victim, ready, go = tmp_path / "victim", tmp_path / "ready", tmp_path / "go"
    victim.write_text("keep me\n")
    os.mkfifo(ready)
    os.mkfifo(go)
    script = f"echo going; echo > {ready}; read line < {go}; echo after"  # each FIFO waits for the test
    assert tasks(home, "add", "job", "--shell", script).returncode == 0
    runner = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "tasks.py"), "run-next", "--json"],
        env=script_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = home / "tasks" / "job.log"
    try:
        subprocess.run(["cat", str(ready)], timeout=30, check=True, capture_output=True)  # it runs: its log is open
        log.unlink()
        planted(log, plant, victim)
        subprocess.run(["sh", "-c", f"echo on > {go}"], timeout=30, check=True)
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert (runner.returncode, json.loads(out)["outcome"]) == (0, "succeeded"), out + err
    assert "Traceback" not in err and str(log) in err  # the lost lines are said, naming the path
    assert json.loads(tasks(home, "show", "job", "--json").stdout)["task"]["exec_state"] == "END"
    assert victim.read_text() == "keep me\n"
    assert {"symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO, "folder": stat.S_ISDIR}[plant](os.lstat(log).st_mode)


def test_a_huge_log_written_by_something_else_is_shown_by_its_tail_in_bounded_memory(
    home: Path, tmp_path: Path
) -> None:
    """`tasks.py log NAME` read the whole file and split it: a 300 MB log (written by something other than the
    runner, which keeps logs bounded) took 1.5 GB and 8 s. Now a line at a time, the last --lines kept."""

    from conftest import PYTHON, SCRIPTS, script_env

    assert call_script("tasks.py", "add", "export", "--shell", "true", home=home).returncode == 0
    log = home / "tasks" / "export.log"
    log.parent.mkdir(exist_ok=True)
    line = b"x" * 999 + b"\n"
    with log.open("wb") as fh:
        for _ in range(120):
            fh.write(line * 1000)  # 120 MB in all
        fh.write(b"y" * 3_000_000 + b"\n")  # one line longer than any tail shows
        fh.write(b"the last line\n")
    measure = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(done.returncode); print(done.stdout)"
    )
    out = subprocess.run(
        [sys.executable, "-c", measure, PYTHON, str(SCRIPTS / "tasks.py"), "log", "export", "--lines", "3", "--json"],
        capture_output=True,
        text=True,
        env=script_env(home),
        timeout=120,
        check=True,
    ).stdout.splitlines()
    peak_kb, code, shown = int(out[0]), int(out[1]), json.loads(out[2])
    assert code == 0
    assert shown["lines"][1:] == ["[self-heal: a line over 65536 bytes left out]", "the last line"]
    assert peak_kb < 100 * 1024, f"{peak_kb} KB"


# -- a full disk -----------------------------------------------------------------------------------------

READS = (
    ("list",),
    ("list", "--json"),
    ("tree",),
    ("tree", "--json"),
    ("actionable", "--json"),
    ("show", "job", "--json"),
    ("log", "job"),
    ("check-stuck", "--dry-run"),
)


@pytest.mark.slow
def test_the_read_commands_answer_on_a_unwritable_with_one_warning(tmp_path: Path) -> None:
    """Someone looking into a full disk at 3 a.m. still sees the task tree: every read command answers (exit 0,
    one warning line that says the disk is full), tasks.db is not changed, and once space is freed the tree
    is written again as before. (SQLite's shared-memory file, which WAL readers need, cannot grow on a full
    disk: every command exited 3.)"""
    from test_disk import ENOSPC_TEXT, fill, mounted_tmpfs

    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        home = mnt / "state"
        assert tasks(home, "add", "job", "--display-name", "nightly report", "--", "true").returncode == 0
        assert tasks(home, "add", "step", "--parent", "job", "--", "true").returncode == 0
        gc.collect()  # the scripts ran in this process: their connections close (the WAL folded in) first
        fill(mnt)
        db = (home / "tasks.db").read_bytes()

        answers = {args: tasks(home, *args) for args in READS}
        for args, proc in answers.items():
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
            warnings = proc.stderr.splitlines()
            assert len(warnings) == 1 and ENOSPC_TEXT in warnings[0] and "read" in warnings[0], (args, warnings)
        assert [t["name"] for t in json.loads(answers[("list", "--json")].stdout)["tasks"]] == ["step", "job"]
        assert "nightly report" in answers[("list",)].stdout
        tree = json.loads(answers[("tree", "--json")].stdout)["tree"]
        assert [(t["name"], [c["name"] for c in t["children"]]) for t in tree] == [("job", ["step"])]
        assert json.loads(answers[("actionable", "--json")].stdout)["tasks"] == ["step"]
        assert json.loads(answers[("show", "job", "--json")].stdout)["why_not"] is not None
        assert (home / "tasks.db").read_bytes() == db

        refused = tasks(home, "add", "more", "--", "true")  # a change still fails clearly (test_disk.py)
        assert refused.returncode == 3 and ENOSPC_TEXT in refused.stderr, refused.stderr
        (mnt / "filler").unlink()
        assert tasks(home, "add", "more", "--", "true").returncode == 0
        listed = tasks(home, "list", "--json")
        assert listed.stderr == "" and len(json.loads(listed.stdout)["tasks"]) == 3


@pytest.mark.slow
def test_a_unwritable_read_sees_changes_still_in_the_write_ahead_log(tmp_path: Path) -> None:
    """A writer that died before SQLite folded its last commit into tasks.db left it in tasks.db-wal: the
    read on a full disk reads that log too, so it shows the tree as committed, not as it was before."""
    from test_disk import fill, mounted_tmpfs

    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        home = mnt / "state"
        assert tasks(home, "add", "job", "--display-name", "before", "--", "true").returncode == 0
        gc.collect()
        crash = (
            "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            " c.execute(\"UPDATE tasks SET display_name = 'committed' WHERE task_name = 'job'\"); os._exit(0)"
        )
        subprocess.run([sys.executable, "-c", crash, str(home / "tasks.db")], check=True)
        assert (home / "tasks.db-wal").stat().st_size > 0
        os.truncate(home / "tasks.db-shm", 0)  # its shared memory must be made again: no room for it
        fill(mnt)

        proc = tasks(home, "list", "--json")
        assert proc.returncode == 0, proc.stderr
        assert [t["display_name"] for t in json.loads(proc.stdout)["tasks"]] == ["committed"]


@pytest.mark.slow
def test_the_state_layer_reads_a_unwritables_tree_without_writing_and_names_the_unwritable(tmp_path: Path) -> None:
    """TaskDB.open_to_read(), which every reader of the tree opens it with (tasks.py's read commands, the health
    check): where open() fails on a full disk, it reads the tree as committed (the write-ahead log too), keeps
    the full disk's error in `unwritable` for the caller to say so, and refuses a statement that would write;
    nothing committed is lost, and once there is room the tree opens as ever."""
    from test_disk import ENOSPC_TEXT, fill, mounted_tmpfs

    from selfheal.errors import StateWriteError
    from selfheal.state.taskdb import READ_WAIT_S, TaskDB

    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        home = mnt / "state"
        assert tasks(home, "add", "job", "--display-name", "before", "--", "true").returncode == 0
        gc.collect()
        path = home / "tasks.db"
        normal = TaskDB(path, busy_timeout_s=READ_WAIT_S).open_to_read()
        assert normal.unwritable is None  # room to spare: an ordinary open
        normal.close()
        crash = (
            "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            " c.execute(\"UPDATE tasks SET display_name = 'committed' WHERE task_name = 'job'\"); os._exit(0)"
        )
        subprocess.run([sys.executable, "-c", crash, str(path)], check=True)
        os.truncate(home / "tasks.db-shm", 0)
        fill(mnt)
        with pytest.raises(StateWriteError, match=ENOSPC_TEXT):
            TaskDB(path, busy_timeout_s=READ_WAIT_S).open()

        db = TaskDB(path, busy_timeout_s=READ_WAIT_S).open_to_read()
        try:
            assert db.unwritable is not None
            assert (db.unwritable.errno, str(db.unwritable)) == (errno.ENOSPC, f"cannot write {path}: {ENOSPC_TEXT}")
            task = db.get("job")
            assert task is not None and task.display_name == "committed"
            with pytest.raises(StateWriteError) as refused:
                db.execute("UPDATE tasks SET display_name = 'changed'")
            assert str(refused.value) == f"cannot write {path}: {ENOSPC_TEXT}"
        finally:
            db.close()

        (mnt / "filler").unlink()
        db = TaskDB(path, busy_timeout_s=READ_WAIT_S).open_to_read()
        try:
            task = db.get("job")
            assert db.unwritable is None and task is not None and task.display_name == "committed"
        finally:
            db.close()


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["newer", "older", "none"])
def test_a_tree_that_must_first_be_made_or_migrated_is_not_read_on_a_unwritable(tmp_path: Path, tree: str) -> None:
    """A tree of an older schema (its migration must write) or none at all (it must be made) fails with the full
    disk's error (exit 3); one of a newer schema is refused as open() refuses it (exit 2). Nothing is changed."""
    from test_disk import ENOSPC_TEXT, fill, mounted_tmpfs
    from test_taskdb import old_tree

    from selfheal.errors import StateWriteError
    from selfheal.state.taskdb import READ_WAIT_S, SCHEMA_VERSION, TaskDB, TaskDBTooNew

    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        home = mnt / "state"
        home.mkdir(mode=0o700)
        path = home / "tasks.db"
        if tree == "older":
            old_tree(home, SCHEMA_VERSION - 1)
        elif tree == "newer":
            assert tasks(home, "add", "kept").returncode == 0
            gc.collect()
            conn = sqlite3.connect(path)
            conn.execute("INSERT INTO schema_version (version, applied_ts) VALUES (?, 0)", (SCHEMA_VERSION + 1,))
            conn.commit()
            conn.close()
        fill(mnt)
        # (SQLite's first try, the ordinary open, leaves an empty tasks.db-shm: it holds nothing, and takes no room.)
        before = {p.name: p.read_bytes() for p in home.glob("tasks.db*") if p.name != "tasks.db-shm"}

        with pytest.raises((StateWriteError, TaskDBTooNew)) as caught:
            TaskDB(path, busy_timeout_s=READ_WAIT_S).open_to_read()

        if tree == "newer":
            assert isinstance(caught.value, TaskDBTooNew) and caught.value.exit_code == 2
        else:
            assert isinstance(caught.value, StateWriteError) and caught.value.exit_code == 3
            assert str(caught.value) == f"cannot write {path}: {ENOSPC_TEXT}"
        assert {p.name: p.read_bytes() for p in home.glob("tasks.db*") if p.name != "tasks.db-shm"} == before


# -- a read-only folder ------------------------------------------------------------------------------------------


def crash_after_a_commit(path: Path) -> None:
    """A writer that commits and dies before SQLite folds its commit into tasks.db: it is in tasks.db-wal."""
    crash = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
        " c.execute(\"UPDATE tasks SET display_name = 'committed' WHERE task_name = 'job'\"); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", crash, str(path)], check=True)
    assert (path.parent / "tasks.db-wal").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("left", ["folded", "in the write-ahead log"])
def test_the_read_commands_answer_on_a_read_only_folder_with_one_warning(tmp_path: Path, left: str) -> None:
    """ext4 remounts a disk read-only after a fault (errors=remount-ro): every read command still answers (exit
    0, one warning naming the read-only folder), a commit the last writer left in tasks.db-wal included; a
    change fails clearly (exit 3); no file is changed. (Every command exited 3: "cannot write tasks.db".)"""
    from test_disk import EROFS_TEXT
    from test_state_layer import read_only

    home = tmp_path / "state"
    assert tasks(home, "add", "job", "--display-name", "before", "--", "true").returncode == 0
    assert tasks(home, "add", "step", "--parent", "job", "--", "true").returncode == 0
    gc.collect()  # the scripts ran in this process: their connections close (the WAL folded in) first
    if left == "in the write-ahead log":
        crash_after_a_commit(home / "tasks.db")
    files = {p.name: p.read_bytes() for p in home.glob("tasks.db*")}

    with read_only(home):
        answers = {args: tasks(home, *args) for args in READS}
        refused = tasks(home, "add", "more", "--", "true")

    for args, proc in answers.items():
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
        warnings = proc.stderr.splitlines()
        assert len(warnings) == 1 and EROFS_TEXT in warnings[0] and "can be written again" in warnings[0], warnings
    shown = [t["display_name"] for t in json.loads(answers[("list", "--json")].stdout)["tasks"]]
    assert shown == [None, "committed" if left == "in the write-ahead log" else "before"]
    assert json.loads(answers[("actionable", "--json")].stdout)["tasks"] == ["step"]
    assert refused.returncode == 3 and EROFS_TEXT in refused.stderr, refused.stderr
    assert {p.name: p.read_bytes() for p in home.glob("tasks.db*")} == files


@pytest.mark.slow
def test_a_write_ahead_log_without_its_index_on_a_read_only_folder_is_refused_naming_both(tmp_path: Path) -> None:
    """SQLite cannot rebuild tasks.db-shm where nothing is written, and reading tasks.db alone would show the tree
    without the commit in tasks.db-wal: the read fails (exit 3), naming the folder's error and the two files."""
    from test_disk import EROFS_TEXT
    from test_state_layer import read_only

    home = tmp_path / "state"
    assert tasks(home, "add", "job", "--display-name", "before", "--", "true").returncode == 0
    gc.collect()
    crash_after_a_commit(home / "tasks.db")
    (home / "tasks.db-shm").unlink()

    with read_only(home):
        proc = tasks(home, "list")

    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{home / 'tasks.db'}: {EROFS_TEXT}, and its tasks.db-wal cannot be read without tasks.db-shm" in (
        proc.stderr
    )
    assert "before" not in proc.stdout


def test_a_secret_typed_into_a_tasks_texts_is_masked_before_the_tree_is_written(home: Path, tmp_path: Path) -> None:
    """A key pasted into a title, a description, an agent's analysis or a person's reason and result is masked
    in tasks.db (and its write-ahead log), as in every other state file; `show` says *** where it was."""
    key = "sk-" + "a1B2c3D4e5" * 4
    token = "ghp_" + "Z9y8X7w6V5" * 4
    added = tasks(
        home, "add", "leaky", "--display-name", f"rotate {key}", "--description", f"Bearer {token}", "--", "true"
    )
    assert added.returncode == 0, added.stderr
    lines = tmp_path / "more.jsonl"
    lines.write_text(json.dumps({"name": "more", "fix_suggestion": f"export KEY={key}"}) + "\n")
    assert tasks(home, "add", "--from", str(lines)).returncode == 0
    agent = tasks(home, "set", "leaky", "--analysis", f"the key {key} expired", "--solution", f"use {token}")
    assert agent.returncode == 0, agent.stderr
    done = tasks(home, "mark", "leaky", "end", "--reason", f"rotated {key}", "--result", f"new token {token}")
    assert done.returncode == 0, done.stderr
    stored = b"".join(path.read_bytes() for path in home.glob("tasks.db*"))
    assert key.encode() not in stored and token.encode() not in stored
    assert key[:12].encode() not in stored  # not even its start
    task = json.loads(tasks(home, "show", "leaky", "--json").stdout)["task"]
    assert "***" in task["analysis"] and "***" in task["last_result"] and "***" in task["history"][-1]["reason"]


# -- a read-only view of a tree another process writes -------------------------------------------------------------


def a_wide_tree(home: Path, tmp_path: Path, title: str, count: int = 300) -> None:
    """`count` tasks titled `title ...`, enough of them to fill many pages of tasks.db."""
    lines = tmp_path / "wide.jsonl"
    lines.write_text(
        "".join(json.dumps({"name": f"t{i:03d}", "display_name": f"{title} " + "x" * 200}) + "\n" for i in range(count))
    )
    assert tasks(home, "add", "--from", str(lines)).returncode == 0
    gc.collect()


def retitle_every_task(path: Path, title: str) -> None:
    """Another process changes every task in one commit and closes, as the last connection: SQLite folds the
    commit into tasks.db and removes tasks.db-wal."""
    change = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
        " c.execute(\"UPDATE tasks SET display_name = ? || ' ' || substr(display_name, instr(display_name, ' ') + 1)\","
        " (sys.argv[2],)); c.close()"
    )
    subprocess.run([sys.executable, "-c", change, str(path), title], check=True)
    assert not (path.parent / "tasks.db-wal").exists()


@pytest.mark.slow
def test_a_listing_through_a_read_only_view_is_one_moment_of_the_tree_while_another_process_writes_it(
    tmp_path: Path,
) -> None:
    """With no tasks.db-wal on a folder it cannot write, the reader read tasks.db as unchanging (`immutable`), so
    a writer through another mount that folded a commit into the file mid-listing tore it: part old titles, part
    new, in what iter_ordered promises is one moment of the tree (and a page half written could read as a
    damaged database). The listing is now the tree as it was when the reader opened it, whole."""
    from test_state_layer import read_only_view

    from selfheal.state.taskdb import READ_WAIT_S, TaskDB

    home = tmp_path / "state"
    a_wide_tree(home, tmp_path, "old")
    with read_only_view(home, tmp_path / "view") as view:
        db = TaskDB(view / "tasks.db", busy_timeout_s=READ_WAIT_S).open_to_read()
        try:
            assert db.unwritable is not None and db.unwritable.errno == errno.EROFS
            listing = db.iter_ordered(batch=1)
            first = next(listing)
            retitle_every_task(home / "tasks.db", "new")
            titles = [first.display_name, *(t.display_name for t in listing)]
            again = db.get("t299")
        finally:
            db.close()
        after = tasks(view, "list", "--json")

    assert len(titles) == 300 and {(t or "").split()[0] for t in titles} == {"old"}
    assert again is not None and (again.display_name or "").startswith("old ")
    # The next reader sees the commit.
    assert after.returncode == 0, after.stderr
    assert {t["display_name"].split()[0] for t in json.loads(after.stdout)["tasks"]} == {"new"}


@pytest.mark.slow
def test_a_writer_that_closes_while_a_read_only_view_opens_the_tree_is_no_missing_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader saw a writer's tasks.db-wal, and the writer closed (its -wal and -shm removed) before SQLite
    opened them: the read failed (exit 3) with "its tasks.db-wal cannot be read without tasks.db-shm", about files
    no longer there. The reader looks again, and reads the tree the writer left."""
    from test_state_layer import read_only_view

    from selfheal.state.taskdb import READ_WAIT_S, TaskDB

    home = tmp_path / "state"
    a_wide_tree(home, tmp_path, "old", count=3)
    path = home / "tasks.db"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            " c.execute(\"UPDATE tasks SET display_name = 'new'\"); print('open', flush=True);"
            " sys.stdin.readline(); c.close()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline() == "open\n"
    assert (home / "tasks.db-wal").exists() and (home / "tasks.db-shm").exists()
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def writer_closes_first(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if writer.poll() is None:
            assert writer.stdin is not None
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.wait(timeout=60) == 0
        return connect(database, *args, **kwargs)

    with read_only_view(home, tmp_path / "view") as view:
        monkeypatch.setattr(sqlite3, "connect", writer_closes_first)
        try:
            db = TaskDB(view / "tasks.db", busy_timeout_s=READ_WAIT_S).open_to_read()
            try:
                titles = {t.display_name for t in db.iter_ordered()}
            finally:
                db.close()
        finally:
            monkeypatch.setattr(sqlite3, "connect", connect)
            if writer.poll() is None:
                writer.kill()
                writer.wait()

    assert titles == {"new"}
    assert not (home / "tasks.db-wal").exists()


@pytest.mark.slow
def test_a_task_tree_hard_linked_to_another_file_is_refused_on_a_read_only_folder_too(tmp_path: Path) -> None:
    """open() refuses a tasks.db with a second name (one may be another user's tree), but on a read-only folder
    open() fails first with the folder's error, and the read went on through the link: `tasks.py list` showed
    the other file's tasks. It is refused by name there too (exit 2), nothing listed."""
    from test_state_layer import read_only_view

    home = tmp_path / "state"
    a_wide_tree(home, tmp_path, "theirs", count=2)
    other = tmp_path / "theirs.db"
    os.replace(home / "tasks.db", other)
    os.link(other, home / "tasks.db")

    with read_only_view(home, tmp_path / "view") as view:
        proc = tasks(view, "list", "--json")

    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{view / 'tasks.db'}: it has 2 hard links" in proc.stderr, proc.stderr
    assert "theirs" not in proc.stdout
