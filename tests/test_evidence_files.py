"""Files a failing task leaves as evidence (the fourth document's screenshots of browser errors): named by
the run spec (`tasks.py add --evidence-glob`), listed in the fix record with size and SHA-256, the small
regular ones copied under the state root; a link is never read, a secret never copied, nothing uploaded."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import call_script
from selfheal.heal.evidence_files import MAX_FILES, find_files, keep_files
from selfheal.state.records import RecordError
from selfheal.state.root import StateRoot
from selfheal.state.taskrecord import RunSpec

SECRET = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture(autouse=True)
def fast(write_config: Callable[[str], Path]) -> None:
    write_config(
        """
        retry: {jitter: none}
        policies:
          unknown: {attempts: 1}
          permanent: {attempts: 1}
        tasks: {analyze_at_failures: 1}
        fixes: {use_model: false, evidence_copy_max_bytes: 1000}
        """
    )


def tasks(home: Path, *args: str, cwd: Path | None = None) -> Any:
    return call_script("tasks.py", *args, home=home, cwd=cwd)


def fix_record(home: Path) -> dict[str, Any]:
    (path,) = sorted((home / "fixes").glob("FIX-*.json"))
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_a_run_spec_names_its_evidence_and_a_bad_one_is_refused() -> None:
    spec = RunSpec.from_json({"kind": "shell", "shell": "x", "evidence": ["shots/*.png"]}, "t.json")
    assert spec.evidence == ("shots/*.png",) and spec.to_json()["evidence"] == ["shots/*.png"]
    assert "evidence" not in RunSpec.from_json({"kind": "shell", "shell": "x"}, "t.json").to_json()
    with pytest.raises(RecordError, match=r"t\.json.*run\.evidence.*file patterns"):
        RunSpec.from_json({"kind": "shell", "shell": "x", "evidence": "shots/*.png"}, "t.json")


def test_a_failed_runs_fix_record_lists_its_evidence_and_copies_the_small_files(home: Path, tmp_path: Path) -> None:
    work = tmp_path / "job"
    work.mkdir()
    (tmp_path / "outside.txt").write_text("not evidence")
    (tmp_path / "page.src").write_text(f"<html>token {SECRET}</html>")  # a command line may not hold one
    script = (
        "mkdir -p shots; printf 'PNG-error-page' > shots/error.png; "
        "head -c 5000 /dev/zero > shots/big.png; "
        f"ln -sf {tmp_path / 'outside.txt'} shots/link.png; "
        f"cp {tmp_path / 'page.src'} dump.html; "
        "echo 'browser: TimeoutError: page did not load' >&2; exit 1"
    )
    added = tasks(
        home, "add", "scrape", "--evidence-glob", "shots/*.png", "--evidence-glob", "*.html", "--shell", script,
        cwd=work,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    shown = tasks(home, "show", "scrape")
    assert "evidence=shots/*.png,*.html" in shown.stdout
    assert tasks(home, "run-next").returncode == 3
    files = {Path(f["path"]).name: f for f in fix_record(home)["evidence"]["files"]}
    assert sorted(files) == ["big.png", "dump.html", "error.png", "link.png"]

    small = files["error.png"]
    assert small["size"] == 14 and small["sha256"] == hashlib.sha256(b"PNG-error-page").hexdigest()
    copy = Path(small["copied_to"])
    assert copy.read_bytes() == b"PNG-error-page" and copy.parent.parent == home / "fixes"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and stat.S_IMODE(copy.parent.stat().st_mode) == 0o700

    big = files["big.png"]
    assert big["size"] == 5000 and big["sha256"] == hashlib.sha256(bytes(5000)).hexdigest()
    assert "copied_to" not in big and "evidence_copy_max_bytes" in big["note"]

    link = files["link.png"]
    assert link["symlink"] is True and link["sha256"] is None and "copied_to" not in link

    dump = files["dump.html"]
    assert "copied_to" not in dump and "secret" in dump["note"] and dump["sha256"]
    everything = "".join(p.read_text(errors="replace") for p in (home / "fixes").rglob("*") if p.is_file())
    assert SECRET not in everything and "not evidence" not in everything
    twin = next((home / "fixes").glob("FIX-*.md")).read_text()
    assert "## Evidence files" in twin and "error.png`: 14 bytes" in twin  # the path as code: it is data


def test_a_task_without_evidence_patterns_writes_no_files_key(home: Path, tmp_path: Path) -> None:
    tasks(home, "add", "plain", "--shell", "echo boom >&2; exit 1", cwd=tmp_path)
    assert tasks(home, "run-next").returncode == 3
    assert "files" not in fix_record(home)["evidence"]


def test_evidence_glob_needs_something_to_run(home: Path) -> None:
    refused = tasks(home, "add", "nothing", "--evidence-glob", "*.png")
    assert refused.returncode == 2 and "--evidence-glob need something to run" in refused.stderr


def test_only_the_newest_files_are_listed(tmp_path: Path) -> None:
    for i in range(MAX_FILES + 3):
        path = tmp_path / f"shot-{i:02d}.png"
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    files = find_files(["*.png"], tmp_path)
    assert len(files) == MAX_FILES + 1 and files[-1]["more"] == 3
    assert Path(files[0]["path"]).name == f"shot-{MAX_FILES + 2:02d}.png"


def test_a_file_swapped_for_a_fifo_after_it_was_listed_is_not_copied_nor_waited_on(
    state: StateRoot, tmp_path: Path
) -> None:
    """Between the listing and the copy a FIFO put in a screenshot's place would hang the copy for good: it is
    noted as no longer a regular file, and nothing is copied."""
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"PNG")
    files = find_files(["*.png"], tmp_path)
    shot.unlink()
    os.mkfifo(shot)
    (kept,) = keep_files(state, "FIX-shot-001", files, 1000)
    assert kept["note"] == f"could not be read again: {shot} is no longer a regular file"
    assert "copied_to" not in kept


def test_the_analysis_reads_local_evidence_and_talks_only_to_the_configured_model(
    write_config: Callable[[str], Path], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """004-37 (web search to enrich the analysis) is not done: every connection the analysis opens goes to
    the chain's endpoint, and the evidence files stay on the machine (listed by path and hash)."""
    from selfheal.core.config import load_config
    from selfheal.heal.diagnose import Evidence, Healer
    from selfheal.state.root import StateRoot
    from selfheal.testing import FakeClock, FakeModelServer, Fault

    shot = tmp_path / "shot.png"
    shot.write_bytes(b"PNG")
    analysis = {
        "root_cause": "the page did not load because the login form timed out",
        "problems": ["the login form times out"],
        "fix_steps": ["raise the login wait in flow.py to 30 s"],
        "target_module": "flow.py",
        "success_criteria": "the flow logs in",
        "confidence": 0.8,
    }
    connected: list[Any] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        connected.append(address)
        return real_connect(self, address)

    with FakeModelServer() as server:
        server.script("analyst", Fault.reply(json.dumps(analysis)))
        write_config(
            "retry: {jitter: none}\nfixes: {use_model: true}\n"
            "models:\n  read_timeout_base_s: 2\n  timeout_per_1k_tokens_s: 0\n  deadline_s: 20\n"
            f'  chain:\n    - {{name: analyst, base_url: "{server.url("analyst")}", model: analyst-7b}}\n'
        )
        monkeypatch.setattr(socket.socket, "connect", connect)
        found = Evidence(
            task="e2e",
            kind="task",
            error="TimeoutError: page did not load",
            error_class="timeout",
            occurrence="run-1",
            failures=3,
            files=find_files(["*.png"], tmp_path),
        )
        record = Healer(config=load_config(), state=StateRoot(home), clock=FakeClock()).heal(found).record
        assert server.requests("analyst") == 1
    assert record.source == "model:analyst/analyst-7b"
    assert connected and all(tuple(a)[:2] == ("127.0.0.1", server.port) for a in connected)
    (listed,) = record.evidence["files"]
    assert listed["path"] == str(shot) and Path(listed["copied_to"]).read_bytes() == b"PNG"
