"""Planted links under the state root: every writer refuses them, names them, and writes nothing through them.

An attacker who can write into the state root (a loose 0777 folder, another user on the host) plants a
symbolic link where self-heal will write next, pointing at a file of the victim's. Each case runs the
real scripts as a user would and checks that the victim's file is byte for byte what it was, that the
message names the link, that the exit code is the documented one, and that nothing printed a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.fake_gateway import LIVE, READY, FakeGateway
from test_watchdog import Restarts, break_the_config_until_it_gives_up, check, enabled, env_for

from conftest import call_script
from selfheal.core.config import Config
from selfheal.heal.watchdog import good_configs, watch
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock

pytestmark = pytest.mark.slow

VICTIM = b"the victim's own file: must never change\n"


def script(home: Path, name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The script's main() in this process (the commands it runs are real processes): these tests check its
    exit code, its message and the files it leaves."""
    return call_script(name, *args, home=home, env=env)


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


@dataclass
class Case:
    """Where the link goes (relative to the state root), and what a user runs that writes there."""

    link: str
    run: Callable[[Path, Path], subprocess.CompletedProcess[str]]  # (home, work folder)
    code: int  # the documented exit code
    runs_command: bool  # whether the user's command still runs (the link was only a record)
    stream: str = "stderr"  # where the message naming the link goes (the health check's report: stdout)


def retry(*extra: str) -> Callable[[Path, Path], subprocess.CompletedProcess[str]]:
    def go(home: Path, work: Path) -> subprocess.CompletedProcess[str]:
        marker = work / "ran"
        return script(home, "retry_run.py", *extra, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")

    return go


def workflow(home: Path, work: Path) -> subprocess.CompletedProcess[str]:
    plan = work / "plan.yaml"
    plan.write_text(
        textwrap.dedent(f"""
        steps:
          - name: one
            run: [{json.dumps(sys.executable)}, "-c", "open({str(work / "ran")!r}, 'w')"]
        """)
    )
    return script(home, "workflow.py", "run", str(plan), "--task", "wf")


def task_run(home: Path, work: Path) -> subprocess.CompletedProcess[str]:
    added = script(home, "tasks.py", "add", "job", "--", sys.executable, "-c", f"open({str(work / 'ran')!r}, 'w')")
    assert added.returncode == 0, added.stderr
    return script(home, "tasks.py", "run-next")


def task_add(home: Path, work: Path) -> subprocess.CompletedProcess[str]:
    return script(home, "tasks.py", "add", "job", "--", "true")


def snapshot_save(home: Path, work: Path) -> subprocess.CompletedProcess[str]:
    messages = work / "messages.json"
    messages.write_text('[{"role": "user", "content": "hello"}]')
    return script(home, "snapshot.py", "save", "s1", "--messages-file", str(messages))


def self_heal(home: Path, work: Path) -> subprocess.CompletedProcess[str]:
    failed = script(home, "retry_run.py", "--task", "job", "--max-attempts", "1", "--", "sh", "-c", "exit 2")
    assert failed.returncode == 3, failed.stderr
    return script(home, "self_heal.py", "--task", "job", "--no-model")


def health(home: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """health_check.py with a live, ready gateway: only what it finds under the state root can fail it."""
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        home.mkdir(mode=0o700, exist_ok=True)
        (home / "config.yaml").write_text(f"health: {{gateway_url: '{gw.url}', disk_min_free_mb: 0}}\n")
        (work / "openclaw").mkdir(exist_ok=True)
        return script(home, "health_check.py", *args, OPENCLAW_STATE_DIR=str(work / "openclaw"))


CASES = {
    # Records: the user's command still runs; one warning names the link; the command's exit code.
    "breaker": Case("breakers/api.json", retry("--target", "api"), 0, True),
    "ledger-day": Case(f"ledger/{today()}.jsonl", retry("--task", "job"), 0, True),
    "log": Case("logs/selfheal.log", retry("--task", "job"), 0, True),
    # State a run cannot do without: refused before the command runs (exit 2, like a configuration error).
    "lock": Case("locks/task-job.lock", retry("--task", "job"), 2, False),
    "checkpoint": Case("checkpoints/wf.json", workflow, 2, False),
    "checkpoint-journal": Case("checkpoints/wf.journal", workflow, 2, False),
    "task-log": Case("tasks/job.log", task_run, 2, False),
    "task-record": Case("tasks/job.json", task_add, 2, False),
    "task-db": Case("tasks.db", task_add, 2, False),
    "task-db-wal": Case("tasks.db-wal", task_add, 2, False),
    "fix-index": Case("fixes/index.json", self_heal, 2, False),
    "session": Case("sessions/s1.json", snapshot_save, 2, False),
    # The health check's own file: reported as a problem of the check (degraded, exit 1).
    "status": Case("status/health.json", health, 1, False, "stdout"),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_planted_file_link_is_refused_named_and_the_victim_is_untouched(
    case: Case, home: Path, tmp_path: Path
) -> None:
    """Whatever the script, nothing is written through a link planted at the file it writes."""
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM)
    home.mkdir(mode=0o700)
    link = home / case.link
    link.parent.mkdir(mode=0o700, exist_ok=True)
    os.symlink(victim, link)

    proc = case.run(home, work)

    assert victim.read_bytes() == VICTIM
    assert os.path.islink(link), "the planted link is left for the user to look at"
    assert str(link) in getattr(proc, case.stream), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == case.code, proc.stdout + proc.stderr
    assert (work / "ran").exists() == case.runs_command


def test_a_planted_link_among_run_records_is_named_and_nothing_is_read_through_it(home: Path, tmp_path: Path) -> None:
    """A link in runs/ that looks like a dead run of the task is reported; the run goes on; the victim stays."""
    victim = tmp_path / "victim.json"
    record = {
        "run_id": "job-1",
        "task": "job",
        "status": "running",
        "host": socket.gethostname(),
        "supervisor": {"pid": 999_999, "create_time": 1.0},
    }
    victim.write_text(json.dumps(record))
    before = victim.read_bytes()
    home.mkdir(mode=0o700)
    (home / "runs").mkdir(mode=0o700)
    link = home / "runs" / "job-1.json"
    os.symlink(victim, link)

    proc = script(home, "retry_run.py", "--task", "job", "--", "true")

    assert proc.returncode == 0, proc.stderr
    assert str(link) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert victim.read_bytes() == before


@pytest.mark.parametrize(
    ("folder", "run", "code", "runs_command"),
    [
        ("ledger", retry("--task", "job"), 0, True),
        ("checkpoints", workflow, 2, False),
        ("sessions", snapshot_save, 2, False),
        ("incidents", workflow, 2, False),
        ("tasks", task_add, 2, False),
    ],
    ids=["ledger", "checkpoints", "sessions", "incidents", "tasks"],
)
def test_a_planted_folder_link_is_refused_and_nothing_lands_in_its_target(
    folder: str,
    run: Callable[[Path, Path], subprocess.CompletedProcess[str]],
    code: int,
    runs_command: bool,
    home: Path,
    tmp_path: Path,
) -> None:
    """`ledger -> /somewhere/else`: nothing is created in /somewhere/else, and the link is named."""
    work = tmp_path / "work"
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(VICTIM)
    home.mkdir(mode=0o700)
    link = home / folder
    os.symlink(elsewhere, link)

    proc = run(home, work)

    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep"]
    assert (elsewhere / "keep").read_bytes() == VICTIM
    assert str(link) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stderr
    assert (work / "ran").exists() == runs_command


def test_a_loose_state_root_is_tightened_once_with_a_warning(home: Path, tmp_path: Path) -> None:
    """A 0777 state root (anyone could plant links in it) is made 0700, and the user is told once."""
    home.mkdir()
    os.chmod(home, 0o777)  # noqa: S103 - the attack under test
    (home / "ledger").mkdir()
    os.chmod(home / "ledger", 0o757)  # noqa: S103

    first = script(home, "retry_run.py", "--", "true")
    second = script(home, "retry_run.py", "--", "true")

    assert first.returncode == 0 and second.returncode == 0
    assert (os.stat(home).st_mode & 0o777, os.stat(home / "ledger").st_mode & 0o777) == (0o700, 0o700)
    assert str(home) in first.stderr and "0777" in first.stderr and "0757" in first.stderr
    assert second.stderr == ""


def test_a_state_root_owned_by_another_user_is_refused(home: Path, tmp_path: Path) -> None:
    """Root's retry_run never uses a state root that `nobody` owns: exit 2, the folder named, nothing run."""
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    marker = tmp_path / "ran"

    proc = script(home, "retry_run.py", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")

    assert proc.returncode == 2, proc.stderr
    assert str(home) in proc.stderr and "another user" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert os.listdir(home) == []


def test_the_health_check_reports_a_planted_link_and_a_loose_root(home: Path, tmp_path: Path) -> None:
    """health_check names what it found (it changes nothing): degraded, with the link in the reason."""
    (home / "breakers").mkdir(parents=True, mode=0o700)
    link = home / "breakers" / "api.json"
    os.symlink(tmp_path / "victim", link)
    os.chmod(home, 0o770)  # noqa: S103
    (tmp_path / "work").mkdir()

    proc = health(home, tmp_path / "work", "--json")

    report = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    assert report["mode"] == "degraded"
    check = next(c for c in report["checks"] if c["name"] == "state_root")
    assert check["status"] == "warn" and str(link) in check["detail"] and "0770" in check["detail"]
    assert os.path.islink(link), "links are left for a person to look at"


def test_the_health_check_is_down_when_another_user_owns_the_state_root(home: Path, tmp_path: Path) -> None:
    """Nothing self-heal does could be recorded there: down (exit 3), and the reason says why."""
    (tmp_path / "work").mkdir()
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    proc = script(home, "health_check.py", "--json", OPENCLAW_STATE_DIR=str(tmp_path / "work"))
    report = json.loads(proc.stdout)
    assert proc.returncode == 3, proc.stderr
    assert report["mode"] == "down" and str(home) in report["reason"] and "another user" in report["reason"]
    assert os.listdir(home) == []


def test_a_planted_link_is_never_read_through_either(home: Path, tmp_path: Path) -> None:
    """`snapshot.py restore` of a session whose file is a link to someone else's snapshot prints none of it."""
    other = tmp_path / "other-home"
    messages = tmp_path / "messages.json"
    messages.write_text('[{"role": "user", "content": "private words of another user"}]')
    assert script(other, "snapshot.py", "save", "s1", "--messages-file", str(messages)).returncode == 0
    victim = other / "sessions" / "s1.json"
    home.mkdir(mode=0o700)
    (home / "sessions").mkdir(mode=0o700)
    link = home / "sessions" / "s1.json"
    os.symlink(victim, link)

    proc = script(home, "snapshot.py", "restore", "s1")

    assert "private words" not in proc.stdout + proc.stderr
    assert proc.returncode == 2 and str(link) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.path.islink(link)


def test_a_task_log_planted_as_a_link_is_not_shown_by_tasks_log(home: Path, tmp_path: Path) -> None:
    """`tasks.py log NAME` never prints the file a planted tasks/NAME.log points at."""
    victim = tmp_path / "victim"
    victim.write_text("secret words of another user\n")
    assert script(home, "tasks.py", "add", "job", "--", "true").returncode == 0
    link = home / "tasks" / "job.log"
    os.symlink(victim, link)

    proc = script(home, "tasks.py", "log", "job")

    assert "secret words" not in proc.stdout + proc.stderr
    assert proc.returncode == 2 and str(link) in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("folder", ["ledger", "logs"])
def test_the_log_report_never_reads_the_ledger_or_the_log_through_a_linked_folder(
    folder: str, home: Path, tmp_path: Path
) -> None:
    """`ledger -> /elsewhere` (or `logs -> ...`): analyze_logs.py read /elsewhere's files as this host's ledger or
    log (only a link at the file itself was refused), and reported another tree's failures as ours. Now the
    input names the link, and nothing of the target is counted or shown."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if folder == "ledger":
        event = {"ts": stamp, "event": "failed", "task": "victim-task", "error_class": "permanent", "status": "failed"}
        (elsewhere / f"{today()}.jsonl").write_text(json.dumps(event) + "\n")
    else:
        (elsewhere / "selfheal.log").write_text(f"{stamp} [FAILED] task=victim-task reason=permanent attempts=1\n")
    home.mkdir(mode=0o700)
    link = home / folder
    os.symlink(elsewhere, link)

    proc = script(home, "analyze_logs.py", "--json", OPENCLAW_STATE_DIR=str(tmp_path / "openclaw"))

    report = json.loads(proc.stdout)
    assert "victim-task" not in proc.stdout + proc.stderr
    assert report["runs"]["failed"] == 0, report["runs"]
    (read,) = [i for i in report["inputs"] if i["source"] in ("ledger", "log")]
    assert str(link) in read["error"] and "symbolic link" in read["error"], read
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stderr


@pytest.mark.parametrize("where", ["file", "folder"])
def test_the_health_check_never_reads_its_own_status_files_through_a_link(
    where: str, home: Path, tmp_path: Path
) -> None:
    """`status/other.json -> victim` (or `status -> /elsewhere`): the health check read the victim as one of
    self-heal's own status files and reported what it says (`status=crashed`) as a failure of ours. Now the link
    is named as unreadable, and nothing of the target is read."""
    work = tmp_path / "work"
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "other.json"
    victim.write_text('{"status": "crashed"}\n')
    home.mkdir(mode=0o700)
    if where == "file":
        (home / "status").mkdir(mode=0o700)
        link = home / "status" / "other.json"
        os.symlink(victim, link)
    else:
        link = home / "status"
        os.symlink(elsewhere, link)

    proc = health(home, work, "--json")

    check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "status_files")
    assert "crashed" not in proc.stdout + proc.stderr, check
    assert check["status"] == "warn" and str(link) in check["detail"] and "symbolic link" in check["detail"], check
    assert victim.read_text() == '{"status": "crashed"}\n'
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_a_restore_never_reads_the_kept_openclaw_json_through_a_link(
    state: StateRoot, config: Config, clock: FakeClock, home: Path, tmp_path: Path
) -> None:
    """`self_heal.py --apply` of the watchdog's record puts the last-known-good openclaw.json back: a link planted
    at the kept copy (openclaw-config/openclaw-<ts>.json -> another file of the user's) was read through and its
    target written over openclaw.json. Now the copy is refused and named (exit 2), and nothing is restored."""
    openclaw_dir = tmp_path / "oc"
    openclaw_dir.mkdir()
    config_file = openclaw_dir / "openclaw.json"
    cfg = enabled(config, max_restarts_per_hour=1)
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        env = env_for(openclaw_dir, gw.url)
        config_file.write_text(json.dumps({"gateway": {"port": int(gw.url.rsplit(":", 1)[1])}}))
        assert watch(check(state, env, clock), state, cfg, env=env, clock=clock, run=Restarts()).action == "healthy"
    outcome = break_the_config_until_it_gives_up(state, cfg, clock, openclaw_dir)
    (kept,) = good_configs(state)
    victim = tmp_path / "other.json"
    victim.write_text('{"private": "words of another file"}\n')
    kept.unlink()
    kept.symlink_to(victim)

    proc = script(home, "self_heal.py", "--apply", str(outcome.fix_id))

    assert config_file.read_text() == "{ broken", "the link's target was restored as openclaw.json"
    assert not list(openclaw_dir.glob("openclaw.json.before-restore-*"))
    assert str(kept) in proc.stderr and "symbolic link" in proc.stderr, proc.stderr
    assert "words of another file" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert kept.is_symlink() and victim.read_text() == '{"private": "words of another file"}\n'


def test_a_link_or_folder_among_the_kept_openclaw_json_copies_is_left_alone(home: Path, tmp_path: Path) -> None:
    """A healthy check keeps openclaw.json and prunes the older copies in openclaw-config/: a folder planted among
    them made every healthy check end in a traceback (IsADirectoryError, exit 3), and a link there was deleted as
    a copy. Now neither counts as a copy: both are left for a person, and the copy is kept."""
    work = tmp_path / "work"
    (work / "openclaw").mkdir(parents=True)
    (work / "openclaw" / "openclaw.json").write_text('{"gateway": {"mode": "local"}}\n')
    victim = tmp_path / "victim.json"
    victim.write_bytes(VICTIM)
    kept = home / "openclaw-config"
    kept.mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    planted_folder = kept / "openclaw-2000-01-01T000000Z.json"
    planted_folder.mkdir()
    planted_link = kept / "openclaw-2000-01-02T000000Z.json"
    planted_link.symlink_to(victim)
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        (home / "config.yaml").write_text(
            f"health: {{gateway_url: '{gw.url}', disk_min_free_mb: 0, watchdog: {{enabled: true, keep_configs: 1}}}}\n"
        )
        proc = script(home, "health_check.py", "--json", OPENCLAW_STATE_DIR=str(work / "openclaw"))

    assert "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["watchdog"]["action"] == "healthy", proc.stdout
    assert planted_folder.is_dir() and planted_link.is_symlink() and victim.read_bytes() == VICTIM
    copies = [p for p in kept.iterdir() if p not in (planted_folder, planted_link)]
    assert [p.read_text() for p in copies] == ['{"gateway": {"mode": "local"}}\n']
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "planted", ["fleet/ledger-spool.jsonl", "openclaw-config/openclaw-2026-01-01T000000Z.json", "model-cache/x.json"]
)
def test_the_health_check_names_links_in_the_folders_made_on_first_use(
    planted: str, home: Path, tmp_path: Path
) -> None:
    """fleet/, openclaw-config/ and model-cache/ are made when first used, not with the rest: the state_root
    check looked only into the others, and said the root held no links while one waited in these."""
    (tmp_path / "work").mkdir()
    home.mkdir(mode=0o700)
    link = home / planted
    link.parent.mkdir(mode=0o700)
    os.symlink(tmp_path / "victim", link)

    proc = health(home, tmp_path / "work", "--json")

    check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "state_root")
    assert check["status"] == "warn" and str(link) in check["detail"], check
    assert proc.returncode == 1, proc.stdout + proc.stderr
