"""Fix records under attack: controls in the .json files, a writer killed between the record and its index, a
model that answers NaN, and a planted `.learnings/ERRORS.md`.

- DEL and the C1 controls (the one-byte CSI U+009B among them) from a log reached `fixes/FIX-*.json` and
  `incidents/*.json` raw (the encoder escapes only C0): `cat` on a record let the log drive the terminal.
- A self_heal.py killed after writing a new record and before the index: the same failure, seen again, made
  a second record (`FIX-<task>-002`) instead of updating the first; a record whose `.md` twin was gone made
  `show` end in a traceback.
- A model answering `"confidence": NaN` passed every comparison, so its fix was marked ready whatever
  `fixes.min_confidence` said, and `--json` printed `NaN`, which is not JSON.
- `learnings` read ERRORS.md before checking it: a FIFO (or a link to one) planted there hung it for ever,
  a link to /dev/zero filled memory, and a folder or a non-UTF-8 file there ended in a traceback.

Each case runs the real code as a user would: real processes, a real SIGKILL, the package's fake endpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PYTHON, SCRIPTS, call_script, run_script, script_env
from selfheal.core.config import Config, load_config
from selfheal.durable.incident import Incident, write_incident
from selfheal.heal.diagnose import Evidence, Healer
from selfheal.state.fixes import FixStore
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock, FakeModelServer, Fault

pytestmark = pytest.mark.slow

_RAW_C1_OR_DEL = re.compile("[\x7f-\x9f]")
HOSTILE = "ValueError: bad row \x9b2J\x1b]0;PWNED\x07 \x7f\x85 in batch 7"


def evidence(error: str = HOSTILE, *, task: str = "nightly", occurrence: str = "run-1") -> Evidence:
    return Evidence(
        task=task, kind="task", error=error, error_class="unknown", occurrence=occurrence, failures=1,
        log_tail=[f"loading {error}"],
    )  # fmt: skip


def test_del_and_c1_controls_are_escaped_in_the_json_records_and_read_back_exact(
    state: StateRoot, config: Config
) -> None:
    """`cat fixes/FIX-nightly-001.json` shows `\\u009b`, not a CSI the terminal obeys; the text reads back as it was."""
    record = Healer(config=config, state=state, use_model=False).heal(evidence()).record
    raw = (state.root / "fixes" / f"{record.id}.json").read_text(encoding="utf-8")
    assert _RAW_C1_OR_DEL.findall(raw) == []
    assert "\\u009b2J" in raw and "\\u007f\\u0085" in raw
    assert HOSTILE in json.loads(raw)["evidence"]["excerpt"]  # exact, once decoded
    assert FixStore(state).get(record.id).signature == record.signature


def test_a_path_that_is_not_utf8_in_the_error_is_escaped_in_the_record_not_a_crash(
    state: StateRoot, config: Config
) -> None:
    """An error naming `/data/caf\\xe9.csv` (Python holds the byte as a lone surrogate): the record is written
    as UTF-8 with the byte's JSON escape, and reads back the same (the write raised UnicodeEncodeError)."""
    error = "FileNotFoundError: /data/caf\udce9.csv"
    record = Healer(config=config, state=state, use_model=False).heal(evidence(error)).record
    raw = (state.root / "fixes" / f"{record.id}.json").read_bytes().decode("utf-8")  # strict: jq reads it
    assert "caf\\udce9" in raw and error in json.loads(raw)["evidence"]["excerpt"]


def test_an_incident_keeps_del_and_c1_escaped_too(state: StateRoot) -> None:
    incident = Incident(
        id="nightly-20261121T031218Z", task="nightly", kind="failed", summary=HOSTILE, error=HOSTILE,
        error_class="fatal", failed_step="load", last_completed_step=None, resume_command="workflow.py run plan.yaml",
    )  # fmt: skip
    path = write_incident(state, incident)
    raw = path.read_text(encoding="utf-8")
    assert _RAW_C1_OR_DEL.findall(raw) == [] and json.loads(raw)["error"] == HOSTILE


_KILL_BEFORE_INDEX = """
import os, signal, sys
from pathlib import Path
from selfheal.core.config import load_config
from selfheal.heal.diagnose import Evidence, Healer
from selfheal.state import fixes
from selfheal.state.root import StateRoot

real = fixes.write_json
def write_json(path, obj, **kw):
    if path.name == "index.json":  # the record is written: killed before the index says so
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, obj, **kw)
fixes.write_json = write_json
state = StateRoot(Path(os.environ["SELFHEAL_HOME"])).ensure()
Healer(config=load_config(), state=state, use_model=False).heal(Evidence(
    task="nightly", kind="task", error="ValueError: bad row 7", error_class="unknown", occurrence="run-1", failures=1
))
"""


def test_a_writer_killed_between_the_record_and_the_index_leaves_one_record_for_the_failure(
    home: Path, state: StateRoot, config: Config
) -> None:
    Healer(config=config, state=state, use_model=False).heal(evidence("KeyError: 'price'", task="other"))
    env = script_env(home, PYTHONPATH=str(SCRIPTS))
    killed = subprocess.run([PYTHON, "-c", _KILL_BEFORE_INDEX], env=env, capture_output=True, check=False)
    assert killed.returncode == -9, killed.stderr
    assert (home / "fixes" / "FIX-nightly-001.json").exists()

    again = Healer(config=config, state=state, use_model=False).heal(
        evidence("ValueError: bad row 12", occurrence="run-2")
    )
    assert (again.record.id, again.record.occurrences, again.created) == ("FIX-nightly-001", 2, False)
    assert sorted(p.name for p in (home / "fixes").glob("FIX-nightly-*.json")) == ["FIX-nightly-001.json"]
    shown = call_script("self_heal.py", "show", "FIX-nightly-001", home=home)
    assert shown.returncode == 0 and "# FIX-nightly-001: nightly" in shown.stdout


def test_show_draws_a_record_whose_markdown_twin_is_gone(home: Path, state: StateRoot, config: Config) -> None:
    record = Healer(config=config, state=state, use_model=False).heal(evidence()).record
    (home / "fixes" / f"{record.id}.md").unlink()
    shown = call_script("self_heal.py", "show", record.id, home=home)
    assert shown.returncode == 0, shown.stderr
    assert f"# {record.id}: nightly" in shown.stdout and "Traceback" not in shown.stderr
    assert _RAW_C1_OR_DEL.findall(shown.stdout) == []


def test_a_model_answering_nan_confidence_is_not_taken_and_the_record_stays_json(
    home: Path, state: StateRoot, analyst: FakeModelServer
) -> None:
    answer = textwrap.dedent(
        """
        {"root_cause": "the frobnicator overflowed its zq buffer", "problems": ["the zq buffer is too small"],
         "fix_steps": ["raise ZQ_ROWS in frob.py"], "target_module": "frob.py",
         "success_criteria": "no zq overflow", "confidence": NaN}
        """
    )
    analyst.script("analyst", Fault.reply(answer))
    record = (
        Healer(config=load_config(), state=state, clock=FakeClock())
        .heal(evidence("frobnicator exploded: zq overflow"))
        .record
    )
    # NaN is Python's, not JSON's: the answer is refused as malformed (it passed every comparison, so it reached
    # any min_confidence), and the record is written from the rules alone.
    assert record.source != "model:analyst/analyst-7b" and "NaN" not in json.dumps(record.to_json())
    assert analyst.requests("analyst") == 2  # the answer, and the chain's one stricter retry

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    strict((home / "fixes" / f"{record.id}.json").read_text())
    strict(call_script("self_heal.py", "show", record.id, "--json", home=home).stdout)


def _one_record(home: Path) -> None:
    Healer(config=load_config(), state=StateRoot(home).ensure(), use_model=False).heal(evidence())


@pytest.mark.parametrize(
    ("plant", "why"),
    [
        (lambda p: os.symlink(p.parent / "pipe", p), "symbolic link"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: p.write_bytes(b"# Errors\n\xff\xfe not text \x80\n"), "not UTF-8"),
    ],
    ids=["link-to-a-fifo", "fifo", "folder", "not-utf8"],
)
def test_learnings_refuses_a_planted_errors_md_without_reading_through_it(
    home: Path, tmp_path: Path, plant: Callable[[Path], None], why: str
) -> None:
    """Exit 2 naming the file, at once (a FIFO is never waited on), and the file left exactly as it was."""
    _one_record(home)
    target = tmp_path / "workspace" / ".learnings" / "ERRORS.md"
    target.parent.mkdir(parents=True)
    os.mkfifo(target.parent / "pipe")
    plant(target)
    before = os.lstat(target)
    content = target.read_bytes() if target.is_file() and not target.is_symlink() else None
    done = run_script("self_heal.py", "learnings", "--workspace", str(tmp_path / "workspace"), home=home, timeout=60)
    assert done.returncode == 2, done.stderr
    assert str(target) in done.stderr and why in done.stderr and "Traceback" not in done.stderr
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if content is not None:
        assert target.read_bytes() == content


def test_learnings_go_to_the_workspace_openclaw_json_names(home: Path, tmp_path: Path) -> None:
    """`agents.defaults.workspace` in openclaw.json is where the agent reads them, not ~/.openclaw/workspace."""
    _one_record(home)
    openclaw = Path(os.environ["OPENCLAW_STATE_DIR"])
    openclaw.mkdir(parents=True, exist_ok=True)
    (tmp_path / "agent").mkdir()
    (openclaw / "openclaw.json").write_text(
        json.dumps({"agents": {"defaults": {"workspace": str(tmp_path / "agent")}}})
    )
    done = call_script("self_heal.py", "learnings", "--json", home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["file"] == str(tmp_path / "agent" / ".learnings" / "ERRORS.md")
    assert "FIX-nightly-001" in (tmp_path / "agent" / ".learnings" / "ERRORS.md").read_text()
    assert not (openclaw / "workspace").exists()
