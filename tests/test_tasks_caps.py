"""Size caps on what a person, an agent or a script writes into a task: every way in refuses a text one byte
over its cap (exit 2, the field, its size and the cap named, nothing written) and takes one at the cap; a
tree saved before the caps, with larger texts, still loads, lists and runs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import call_script
from selfheal.core.config import load_config
from selfheal.state.root import StateRoot
from selfheal.tasks.tree import SIZE_CAPS, Task, TaskStore, TaskTooLarge
from selfheal.testing import FakeClock

TITLE, TEXT, COMMAND = SIZE_CAPS["display_name"], SIZE_CAPS["description"], SIZE_CAPS["run"]


def tasks(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return call_script("tasks.py", *args, home=home)


def rows(home: Path) -> list[tuple[Any, ...]]:
    """Every row of the task table (empty before the first task): 'nothing written' means this is unchanged."""
    db = home / "tasks.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM tasks ORDER BY task_name").fetchall()


def text(size: int) -> str:
    """`size` bytes of UTF-8 text, with multi-byte characters in it: the cap counts bytes, not characters."""
    head = "é€😀"  # 2 + 3 + 4 bytes
    return head + "x" * (size - len(head.encode()))


def refusal(proc: subprocess.CompletedProcess[str], field: str, size: int, cap: int) -> str:
    """The message of a refused text, checked to name the field, its size and the cap, with exit 2."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = json.loads(proc.stdout)["message"]
    assert f"{field}: {size} bytes, over the cap of {cap} bytes" in message, message
    return str(message)


def test_the_caps_fit_what_each_field_is_for() -> None:
    """A title is a line, a text a few pages, a command an argv Linux can still exec (128 KiB an argument)."""
    assert SIZE_CAPS["display_name"] == 1024
    for field in ("description", "success_criteria", "fix_suggestion", "analysis", "plan", "solution", "last_result"):
        assert SIZE_CAPS[field] == 65536
    linux_argument_max = 131072  # MAX_ARG_STRLEN: exec refuses one argument longer than this (E2BIG)
    assert SIZE_CAPS["run"] == SIZE_CAPS["shell"] == 65536 < linux_argument_max
    assert SIZE_CAPS["target"] == 128


# -- tasks.py add ----------------------------------------------------------------------------------------

ADD_FIELDS = [
    ("display_name", "--display-name", TITLE),
    ("description", "--description", TEXT),
    ("success_criteria", "--success-criteria", TEXT),
    ("fix_suggestion", "--fix-suggestion", TEXT),
    ("shell", "--shell", COMMAND),
    ("target", "--target", SIZE_CAPS["target"]),
]


@pytest.mark.parametrize(("field", "option", "cap"), ADD_FIELDS, ids=[f for f, _, _ in ADD_FIELDS])
def test_add_refuses_a_text_one_byte_over_its_cap_and_writes_nothing(
    home: Path, field: str, option: str, cap: int
) -> None:
    assert tasks(home, "add", "first", "--", "true").returncode == 0
    before = rows(home)
    value = "x" * (cap + 1) if field == "target" else text(cap + 1)
    extra = [] if field == "shell" else ["--", "true"]
    message = refusal(tasks(home, "add", "big", option, value, "--json", *extra), field, cap + 1, cap)
    assert "task 'big'" in message and "nothing was written" in message
    assert rows(home) == before


@pytest.mark.parametrize(("field", "option", "cap"), ADD_FIELDS, ids=[f for f, _, _ in ADD_FIELDS])
def test_add_takes_a_text_at_its_cap(home: Path, field: str, option: str, cap: int) -> None:
    value = "x" * cap if field == "target" else text(cap)
    extra = [] if field == "shell" else ["--", "true"]
    proc = tasks(home, "add", "big", option, value, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    task = json.loads(tasks(home, "show", "big", "--json").stdout)["task"]
    assert (task["run"][field] if field in ("shell", "target") else task[field]) == value


def test_add_measures_a_command_as_exec_does_each_argument_and_its_nul(home: Path) -> None:
    """`-- CMD ...`: the arguments' bytes plus one NUL each, the count the kernel's argument limit uses."""
    at_cap = ["printf", text(COMMAND - len(b"printf") - 2)]  # two NULs
    assert tasks(home, "add", "fits", "--json", "--", *at_cap).returncode == 0
    over = [*at_cap[:-1], at_cap[-1] + "x"]
    refusal(tasks(home, "add", "big", "--json", "--", *over), "run", COMMAND + 1, COMMAND)
    assert [r[0] for r in rows(home)] == ["fits"]


def test_add_refuses_evidence_patterns_over_their_cap(home: Path) -> None:
    cap = SIZE_CAPS["evidence"]
    patterns = ["a" * 99] * (cap // 100) + ["c" * (cap % 100 - 1)]  # each pattern's bytes and a NUL: the cap
    argv = [arg for p in patterns for arg in ("--evidence-glob", p)]
    assert tasks(home, "add", "fits", "--json", *argv, "--", "true").returncode == 0
    refusal(tasks(home, "add", "big", "--json", *argv, "--evidence-glob", "b", "--", "true"), "evidence", cap + 2, cap)


# -- tasks.py add --from FILE ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "cap"),
    [("display_name", TITLE), ("description", TEXT), ("shell", COMMAND), ("run", COMMAND)],
)
def test_add_from_refuses_a_line_over_a_cap_and_adds_none_of_the_batch(
    home: Path, tmp_path: Path, key: str, cap: int
) -> None:
    def line(name: str, size: int) -> str:
        value: Any = ["printf", text(size - len(b"printf") - 2)] if key == "run" else text(size)
        entry = {"name": name, key: value} if key in ("shell", "run") else {"name": name, key: value, "shell": "true"}
        return json.dumps(entry, ensure_ascii=False)

    source = tmp_path / "tasks.jsonl"
    source.write_text(f"{line('a', cap)}\n{line('b', cap + 1)}\n", encoding="utf-8")
    message = refusal(tasks(home, "add", "--from", str(source), "--json"), key, cap + 1, cap)
    assert message.startswith(f"{source} line 2: task 'b': ") and message.endswith("; nothing was added")
    assert rows(home) == []

    source.write_text(f"{line('a', cap)}\n{line('b', cap)}\n", encoding="utf-8")
    assert tasks(home, "add", "--from", str(source)).returncode == 0
    assert [r[0] for r in rows(home)] == ["a", "b"]


# -- tasks.py set, mark --result -------------------------------------------------------------------------

SET_FIELDS = [
    (f, f"--{f.replace('_', '-')}", TITLE if f == "display_name" else TEXT)
    for f in ("display_name", "description", "success_criteria", "fix_suggestion", "analysis", "plan", "solution")
]


@pytest.mark.parametrize(("field", "option", "cap"), SET_FIELDS, ids=[f for f, _, _ in SET_FIELDS])
def test_set_refuses_a_text_over_its_cap_and_takes_one_at_it(home: Path, field: str, option: str, cap: int) -> None:
    assert tasks(home, "add", "job", "--", "true").returncode == 0
    before = rows(home)
    message = refusal(tasks(home, "set", "job", option, text(cap + 1), "--json"), field, cap + 1, cap)
    assert "task 'job'" in message
    assert rows(home) == before
    assert tasks(home, "set", "job", option, text(cap)).returncode == 0
    assert json.loads(tasks(home, "show", "job", "--json").stdout)["task"][field] == text(cap)


def test_mark_refuses_a_result_over_its_cap_and_the_state_stays(home: Path) -> None:
    assert tasks(home, "add", "job").returncode == 0
    assert tasks(home, "mark", "job", "start").returncode == 0
    before = rows(home)
    refusal(tasks(home, "mark", "job", "end", "--result", text(TEXT + 1), "--json"), "last_result", TEXT + 1, TEXT)
    assert rows(home) == before
    assert tasks(home, "mark", "job", "end", "--result", text(TEXT)).returncode == 0
    task = json.loads(tasks(home, "show", "job", "--json").stdout)["task"]
    assert (task["exec_state"], task["last_result"]) == ("END", text(TEXT))


# -- the Python API --------------------------------------------------------------------------------------


@pytest.fixture
def store(state: StateRoot, clock: FakeClock) -> TaskStore:
    return TaskStore(state, load_config(), clock)


def test_the_api_refuses_an_oversize_task_and_rolls_the_transaction_back(store: TaskStore) -> None:
    with pytest.raises(TaskTooLarge) as caught, store.transaction() as tree:
        tree.add(Task(name="ok"))
        tree.add(Task(name="big", description=text(TEXT + 1)))
    assert (caught.value.field, caught.value.size, caught.value.cap, caught.value.exit_code) == (
        "description",
        TEXT + 1,
        TEXT,
        2,
    )
    assert store.db.names() == []
    with store.transaction() as tree:
        tree.add(Task(name="big", description=text(TEXT), run={"kind": "shell", "shell": text(COMMAND)}))
    assert store.get("big").description == text(TEXT)


def test_the_api_refuses_an_oversize_update_and_add_many_an_oversize_item(store: TaskStore) -> None:
    with store.transaction() as tree:
        tree.add(Task(name="job"))
    with pytest.raises(TaskTooLarge, match="plan: 65537 bytes"), store.transaction() as tree:
        tree.update("job", plan=text(TEXT + 1))
    assert store.get("job").plan is None
    items = [("api 1", Task(name="a")), ("api 2", Task(name="b", display_name=text(TITLE + 1)))]
    with pytest.raises(TaskTooLarge, match=r"^api 2: task 'b': display_name: 1025 bytes.*; nothing was added$"):
        store.add_many(items)
    assert store.db.names() == ["job"]


# -- a tree saved before the caps ------------------------------------------------------------------------


def test_a_task_saved_before_the_caps_with_larger_texts_still_loads_lists_and_runs(home: Path, tmp_path: Path) -> None:
    """The caps stop texts from growing; they never refuse state already there (here written by hand, as an
    older version would have written it)."""
    marker = tmp_path / "ran"
    assert tasks(home, "add", "old", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')").returncode == 0
    big = "y" * (4 * TEXT)
    with sqlite3.connect(home / "tasks.db") as conn:
        conn.execute(
            "UPDATE tasks SET display_name = ?, description = ?, fix_suggestion = ?, analysis = ?",
            (big, big, big, big),
        )

    listed = json.loads(tasks(home, "list", "--json").stdout)
    assert [t["display_name"] for t in listed["tasks"]] == [big]
    assert tasks(home, "tree").returncode == 0
    assert json.loads(tasks(home, "show", "old", "--json").stdout)["task"]["description"] == big
    assert tasks(home, "set", "old", "--solution", "pinned it").returncode == 0  # another field: no refusal
    proc = tasks(home, "run-next", "--json")
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert json.loads(tasks(home, "show", "old", "--json").stdout)["task"]["exec_state"] == "END"
