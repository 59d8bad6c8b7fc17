"""The task tree as cron runs it night after night: a task that cannot run now never holds up the rest, a
damaged row or an unusual tree never turns an answer into a traceback or a broken JSON object."""

from __future__ import annotations

import json
import sqlite3
import subprocess
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
