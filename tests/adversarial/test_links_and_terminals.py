"""Hard links at SQLite's side files and at the status file's temp name; inputs that never end; control
sequences in logs and model answers.

- A hard link planted at `tasks.db-shm` (or -wal, -journal) had SQLite write 32 KiB of shared memory into
  the victim file it shares an inode with: refused now, exit 2, the file named.
- The status file's temp name (`~/.openclaw/skills/status/.self-heal.txt.<pid>.tmp`) was predictable and
  opened with O_TRUNC: a hard link planted there for the next pids had the victim truncated and rewritten.
- `analyze_logs.py /dev/zero` (a FIFO, /dev/urandom) never returned; `self_heal.py --from-openclaw-logs`
  called them "no such log file".
- An OpenClaw log line or a model's answer holding ESC sequences (a window title, a screen clear, an OSC 8
  hyperlink, CR + erase line, the one-byte C1 CSI, BEL) reached the terminal and the fix records raw, and a
  model's `# Heading` or `[link](...)` became Markdown of the record.

Each case runs the real scripts as a user would.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, call_script, run_script
from selfheal.testing import FakeModelServer, Fault

pytestmark = pytest.mark.slow

VICTIM = b"the victim's own file: must never change\n"


def plant_victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM)
    return victim


# -- SQLite's side files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["-shm", "-wal", "-journal"])
def test_a_hard_link_at_a_sqlite_side_file_is_refused_and_the_victim_is_untouched(
    suffix: str, home: Path, tmp_path: Path
) -> None:
    """`ln victim tasks.db-shm`, then `tasks.py add`: SQLite would map the victim as its shared memory."""
    victim = plant_victim(tmp_path)
    home.mkdir(mode=0o700)
    side = home / f"tasks.db{suffix}"
    os.link(victim, side)

    proc = run_script("tasks.py", "add", "job", "--", "true", home=home)

    assert victim.read_bytes() == VICTIM
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{side}: it has 2 hard links" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.stat(side).st_nlink == 2, "the planted link is left for the user to look at"


def test_a_fifo_at_a_sqlite_side_file_is_refused(home: Path) -> None:
    home.mkdir(mode=0o700)
    side = home / "tasks.db-shm"
    os.mkfifo(side)

    proc = run_script("tasks.py", "add", "job", "--", "true", home=home, timeout=30)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{side}: it is not a plain file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- the status file in OpenClaw's folder ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hard", "symbolic"])
def test_links_at_the_old_status_temp_names_are_never_written_through(kind: str, home: Path, tmp_path: Path) -> None:
    """The attacker links the victim at `.self-heal.txt.<pid>.tmp` for this process's pid (the script runs in
    this process) and the next ones; the health check writes its status line (a symbolic link there made
    the write fail) and the victim stays."""
    victim = plant_victim(tmp_path)
    openclaw = tmp_path / "oc"
    folder = openclaw / "skills" / "status"
    folder.mkdir(parents=True, mode=0o700)
    plant = os.link if kind == "hard" else os.symlink
    for pid in range(os.getpid(), os.getpid() + 50):
        plant(victim, folder / f".self-heal.txt.{pid}.tmp")

    call_script("health_check.py", "--cron", home=home, env={"OPENCLAW_STATE_DIR": str(openclaw)})

    assert victim.read_bytes() == VICTIM
    written = folder / "self-heal.txt"
    assert written.read_text().startswith("status=success,")
    assert os.stat(written).st_ino != os.stat(victim).st_ino
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_status_folders_are_made_0700_under_umask_000(home: Path, tmp_path: Path) -> None:
    """Under umask 000 the folders the status file needs were made 0777: anyone could plant links there."""
    openclaw = tmp_path / "oc"
    openclaw.mkdir(mode=0o755)  # OpenClaw's own folder, as OpenClaw made it: left as it is
    old = os.umask(0)
    try:
        proc = call_script("health_check.py", "--cron", home=home, env={"OPENCLAW_STATE_DIR": str(openclaw)})
    finally:
        os.umask(old)
    assert "Traceback" not in proc.stderr
    assert stat.S_IMODE((openclaw / "skills").stat().st_mode) == 0o700
    assert stat.S_IMODE((openclaw / "skills" / "status").stat().st_mode) == 0o700
    assert stat.S_IMODE(openclaw.stat().st_mode) == 0o755
    assert stat.S_IMODE((openclaw / "skills" / "status" / "self-heal.txt").stat().st_mode) == 0o600


# -- inputs that never end ---------------------------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("which", ["fifo", "/dev/zero", "/dev/urandom"])
@pytest.mark.parametrize(
    "command",
    [("analyze_logs.py",), ("analyze_logs.py", "--json"), ("self_heal.py", "--no-model", "--from-openclaw-logs")],
    ids=["analyze", "analyze-json", "self-heal"],
)
def test_a_pipe_or_a_device_given_as_a_log_is_refused_not_read_forever(
    which: str, command: tuple[str, ...], fifo: Path, home: Path
) -> None:
    path = str(fifo) if which == "fifo" else which
    try:
        proc = run_script(*command, path, home=home, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} {path} did not return in 30 s")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}: is not a regular file: a pipe or a device" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- control sequences from logs and from models -------------------------------------------------------------------

# A window title, a screen clear, colour, the one-byte C1 CSI, an OSC 8 hyperlink, CR + erase line, backspaces, DEL,
# a device control string, BEL.
ATTACK = (
    "\x1b]0;PWNED-TITLE\x07\x1b[2J\x1b[31mRED\x1b[0m \x9b31m C1CSI "
    "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ \r\x1b[Kcarriage \x08\x08bs \x7fdel \x1bP+q\x1b\\"
)
_RAW = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")


def raw_controls(text: str) -> list[str]:
    """The control characters a terminal would obey (all but newline, tab and CR LF)."""
    return _RAW.findall(text)


@pytest.fixture
def attack_log(tmp_path: Path) -> Path:
    """OpenClaw's own log of a failing day, its error texts followed by the attack (as OpenClaw writes a
    string: JSON-escaped)."""
    source = (ROOT / "tests" / "fixtures" / "openclaw-logs" / "gateway-cron-agent-errors.jsonl").read_text()
    escaped = json.dumps(ATTACK)[1:-1]
    text = source.replace("command exited with code 1", "command exited with code 1" + escaped)
    text = text.replace("configured for openai.", "configured for openai." + escaped)
    assert text.count("PWNED-TITLE") >= 4
    path = tmp_path / "openclaw.log"
    path.write_text(text)
    return path


def strings(value: object) -> Iterator[str]:
    """Every string in a decoded JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def records_of(home: Path) -> list[str]:
    return sorted(p.stem for p in (home / "fixes").glob("FIX-*.json"))


def test_control_sequences_in_openclaw_logs_are_shown_not_obeyed(home: Path, attack_log: Path) -> None:
    report = call_script("analyze_logs.py", str(attack_log), home=home)
    assert report.returncode == 1, report.stderr
    assert "PWNED-TITLE" in report.stdout and "\u241b]0;PWNED-TITLE\u2407" in report.stdout  # shown, visibly
    assert "\\x9b31m" in report.stdout
    assert raw_controls(report.stdout + report.stderr) == []

    as_json = call_script("analyze_logs.py", str(attack_log), "--json", home=home)
    assert raw_controls(as_json.stdout) == []  # the encoder escapes them: \u001b, \u009b, \u007f
    assert any("\x1b]0;PWNED-TITLE\x07\x1b[2J" in text for text in strings(json.loads(as_json.stdout)))  # exact

    healed = call_script("self_heal.py", "--from-openclaw-logs", str(attack_log), "--no-model", home=home)
    assert healed.returncode == 1, healed.stderr
    assert "PWNED-TITLE" in healed.stdout
    assert raw_controls(healed.stdout + healed.stderr) == []
    ids = records_of(home)
    assert ids
    for name in [f"{i}.md" for i in ids] + ["HISTORY.md"]:
        assert raw_controls((home / "fixes" / name).read_text()) == [], name
    shown = [call_script("self_heal.py", "show", fix_id, home=home) for fix_id in ids]
    assert any("PWNED-TITLE" in s.stdout for s in shown)
    listed = call_script("self_heal.py", "list", home=home)
    for proc in [*shown, listed]:
        assert proc.returncode == 0, proc.stderr
        assert raw_controls(proc.stdout + proc.stderr) == []
    as_json = call_script("self_heal.py", "--from-openclaw-logs", str(attack_log), "--no-model", "--json", home=home)
    assert raw_controls(as_json.stdout) == [] and json.loads(as_json.stdout)["records"]


def test_a_record_written_before_the_fix_is_shown_inert(home: Path, attack_log: Path) -> None:
    """`show` prints the .md twin: one written raw (an older version, a hand edit) is made inert as it is shown."""
    call_script("self_heal.py", "--from-openclaw-logs", str(attack_log), "--no-model", home=home)
    fix_id = records_of(home)[0]
    md = home / "fixes" / f"{fix_id}.md"
    md.write_text(md.read_text() + ATTACK + "\n")
    shown = call_script("self_heal.py", "show", fix_id, home=home)
    assert shown.returncode == 0 and "PWNED-TITLE" in shown.stdout
    assert raw_controls(shown.stdout) == []


_HEADINGS = {
    "## Root cause",
    "## Problems",
    "## Fix",
    "## Success criteria",
    "## What self-heal can do itself",
    "## Objections (second look)",
    "## Notes",
    "## Evidence",
    "## Evidence files",
    "## History",
}


def outside_code(markdown: str) -> list[str]:
    """The lines of `markdown` outside fenced code blocks, with inline code spans cut out: what a Markdown
    viewer would render as Markdown."""
    out: list[str] = []
    fence = ""
    for line in markdown.splitlines():
        if fence:
            if line.strip() and set(line.strip()) == {"`"} and len(line.strip()) >= len(fence):
                fence = ""
            continue
        opened = re.match(r"(`{3,})[^`]*$", line)
        if opened:
            fence = opened.group(1)
            continue
        out.append(re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", line))
    assert not fence, "a fence left open"
    return out


def test_a_model_answer_with_control_sequences_and_markdown_adds_neither(
    home: Path, analyst: FakeModelServer, tmp_path: Path
) -> None:
    """A model's root cause, steps and target with ESC sequences, BEL, a heading, a link, an image, HTML and
    backtick runs meant to close the fence: the record shows them, as data, and adds no Markdown."""
    answer = {
        "root_cause": f"the frobnicator overflowed its zq buffer in frob.py {ATTACK} <img src=x onerror=alert(1)>",
        "problems": ["zq buffer fixed at 4096 rows", "<script>alert(1)</script>\n# Problem heading"],
        "fix_steps": [
            f"raise ZQ_ROWS in frob.py {ATTACK}",
            "edit frob.py\n````\n\n# Heading\n[x](http://evil.example) ![i](http://evil.example/p.png)\n```",
        ],
        "target_module": "frob.py\n# Target heading `x`",
        "success_criteria": "`````\n## Injected section\n<b>bold</b>",
        "confidence": 0.9,
    }
    analyst.set_default("analyst", Fault.reply(json.dumps(answer)))
    failed = call_script(
        "retry_run.py", "--task", "nightly", "--max-attempts", "1", "--",
        sys.executable, "-c", "import sys; sys.exit('frobnicator exploded: zq overflow at row 5000 in frob.py')",
        home=home,
    )  # fmt: skip
    assert failed.returncode == 3, failed.stderr
    healed = call_script("self_heal.py", "--task", "nightly", home=home)
    assert healed.returncode == 0, healed.stderr
    assert analyst.requests("analyst") >= 1
    assert "PWNED-TITLE" in healed.stdout and raw_controls(healed.stdout + healed.stderr) == []
    (fix_id,) = records_of(home)
    record = json.loads((home / "fixes" / f"{fix_id}.json").read_text())
    assert record["source"].startswith("model:") and ATTACK in record["root_cause"]  # the data kept exact

    md = (home / "fixes" / f"{fix_id}.md").read_text()
    assert raw_controls(md) == []
    assert "PWNED-TITLE" in md and "# Heading" in md and "<script>" in md  # shown, as text
    rendered = outside_code(md)
    headings = [line for line in rendered if line.startswith("#")]
    assert headings[0] == f"# {fix_id}: nightly" and set(headings[1:]) <= _HEADINGS, headings
    for marker in ("<img", "<script", "<b>", "](http", "PWNED", "Injected"):
        assert not [line for line in rendered if marker in line], marker
    history = (home / "fixes" / "HISTORY.md").read_text()
    assert raw_controls(history) == [] and not [line for line in outside_code(history) if "<img" in line]

    for args in (("show", fix_id), ("list",)):
        proc = call_script("self_heal.py", *args, home=home)
        assert proc.returncode == 0 and "PWNED-TITLE" in proc.stdout, proc.stderr
        assert raw_controls(proc.stdout + proc.stderr) == []

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    learned = call_script("self_heal.py", "learnings", "--workspace", str(workspace), home=home)
    assert learned.returncode == 0, learned.stderr
    errors_md = (workspace / ".learnings" / "ERRORS.md").read_text()
    assert raw_controls(errors_md) == []
    assert not re.search(r"(?m)^#+ (Heading|Injected)", errors_md)
