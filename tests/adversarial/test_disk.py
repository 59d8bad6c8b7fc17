"""A full disk or a read-only state folder never costs the user's job, and never ends in a traceback.

Records (ledger, log, run record, breaker) that cannot be written: the command still runs, one warning
says what was not recorded and why, and the exit code is the command's. Commands whose whole job is to
write state (tasks.py add, snapshot.py save) fail with exit 3 and a message naming the file and the OS
error; a workflow step or a task whose checkpoint or claim cannot be written does not run (exit 3).

Each case runs twice: in-process with ENOSPC injected at the write calls for files under the state root,
and as real processes against a real full tmpfs (or a read-only bind mount).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import call_script

pytestmark = pytest.mark.slow

ENOSPC_TEXT = os.strerror(errno.ENOSPC)
EROFS_TEXT = os.strerror(errno.EROFS)


# -- the user's side: what each script is asked to do ------------------------------------------------------------


def marker_cmd(marker: Path, code: int = 0) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w'); raise SystemExit({code})"]


def plan_file(folder: Path, marker: Path) -> Path:
    plan = folder / "plan.yaml"
    plan.write_text(
        textwrap.dedent(f"""
        steps:
          - name: one
            run: {json.dumps(marker_cmd(marker))}
        """)
    )
    return plan


def messages_file(folder: Path) -> Path:
    path = folder / "messages.json"
    path.write_text('[{"role": "user", "content": "hello"}]')
    return path


# -- in-process, with the fault injected -------------------------------------------------------------------------


@pytest.fixture
def disk_full(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to make every write to a file under the state root fail with ENOSPC, as a full disk does."""

    def under_home(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(str(home))
        except OSError:
            return False

    real_write, real_pwrite = os.write, os.pwrite

    def write(fd: int, data: bytes) -> int:
        if under_home(fd):
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        return real_write(fd, data)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if under_home(fd):
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        return real_pwrite(fd, data, offset)

    def start() -> None:
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "pwrite", pwrite)

    return start


def main_of(name: str) -> Callable[[list[str]], int]:
    module = __import__(name)
    return lambda argv: int(module.cli.run_main(module.main, argv))


def test_retry_run_runs_the_command_on_a_full_disk_with_one_warning(
    home: Path,
    tmp_path: Path,
    disk_full: Callable[[], None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing can be recorded, yet the command runs, its exit code is kept, and one warning says why."""
    marker = tmp_path / "ran"
    main_of("retry_run")(["--", sys.executable, "-c", "print('hi')"])  # the state root exists, as it would
    disk_full()

    code = main_of("retry_run")(["--task", "job", "--target", "api", "--", *marker_cmd(marker)])

    assert code == 0 and marker.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "could not record" in warnings[0] and ENOSPC_TEXT in warnings[0] and str(home) in warnings[0]


def test_retry_run_keeps_a_failing_commands_exit_status_on_a_full_disk(
    home: Path, tmp_path: Path, disk_full: Callable[[], None]
) -> None:
    marker = tmp_path / "ran"
    main_of("retry_run")(["--", "true"])
    disk_full()
    assert main_of("retry_run")(["--max-attempts", "1", "--", *marker_cmd(marker, code=2)]) == 3
    assert marker.exists()


@pytest.mark.parametrize(
    ("script", "argv"),
    # (tasks add writes through SQLite's own C code, which this fault at os.write cannot reach: a real full
    # tmpfs and a read-only mount test it below.)
    [("snapshot", lambda tmp: ["save", "s1", "--messages-file", str(messages_file(tmp))])],
    ids=["snapshot-save"],
)
def test_a_command_whose_job_is_to_write_state_fails_clearly_on_a_full_disk(
    script: str,
    argv: Callable[[Path], list[str]],
    home: Path,
    tmp_path: Path,
    disk_full: Callable[[], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 3, and the message names the file under the state root and the OS error: no traceback."""
    main_of("retry_run")(["--", "true"])
    capsys.readouterr()
    disk_full()
    code = main_of(script)(argv(tmp_path))
    err = capsys.readouterr().err
    assert code == 3, err
    assert ENOSPC_TEXT in err and str(home) in err


def test_a_workflow_step_does_not_run_when_its_checkpoint_cannot_be_written(
    home: Path, tmp_path: Path, disk_full: Callable[[], None], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    plan = plan_file(tmp_path, marker)
    main_of("retry_run")(["--", "true"])
    capsys.readouterr()
    disk_full()
    code = main_of("workflow")(["run", str(plan), "--task", "wf"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert not marker.exists(), "a step that could not be resumed must not run"
    assert ENOSPC_TEXT in err and str(home / "checkpoints") in err


def test_run_next_does_not_run_a_task_it_cannot_claim(
    home: Path, tmp_path: Path, disk_full: Callable[[], None], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    assert main_of("tasks")(["add", "job", "--", *marker_cmd(marker)]) == 0
    capsys.readouterr()
    disk_full()
    code = main_of("tasks")(["run-next"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert not marker.exists()
    assert ENOSPC_TEXT in err and str(home / "tasks") in err


# -- real processes, a real full tmpfs and a real read-only mount ------------------------------------------------


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def mounted_tmpfs(at: Path, size: str) -> Iterator[Path]:
    at.mkdir()
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(at))
    try:
        yield at
    finally:
        sh("umount", "-l", str(at))


def fill(folder: Path) -> None:
    """Write until the filesystem says it is full."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def script(home: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The script's main() in this process (its commands still run as processes): these tests check its exit
    code, its message and what it ran."""
    return call_script(name, *args, home=home)


Breaker = Callable[[], None]


@pytest.fixture
def full_home(tmp_path: Path) -> Iterator[tuple[Path, Breaker]]:
    """A state root on a real 256 KiB tmpfs; calling the breaker fills the tmpfs up."""
    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        yield mnt / "state", lambda: fill(mnt)


@pytest.fixture
def readonly_home(tmp_path: Path) -> Iterator[tuple[Path, Breaker]]:
    """A state root; calling the breaker bind-mounts it read-only over itself."""
    home = tmp_path / "state"
    mounted: list[bool] = []

    def read_only() -> None:
        sh("mount", "--bind", str(home), str(home))
        mounted.append(True)
        sh("mount", "-o", "remount,ro,bind", str(home))

    yield home, read_only
    if mounted:
        sh("umount", "-l", str(home))


def prepared(request: pytest.FixtureRequest, where: str, tmp_path: Path) -> tuple[Path, Path]:
    """The state root as a first run leaves it, with task `job` added; then made unwritable."""
    home, break_it = request.getfixturevalue(where)
    marker = tmp_path / "ran"
    assert script(home, "retry_run.py", "--task", "first", "--", "true").returncode == 0
    assert script(home, "tasks.py", "add", "job", "--", *marker_cmd(marker)).returncode == 0
    gc.collect()  # the scripts ran in this process: their database connections close (WALs folded) before
    break_it()
    return home, marker


@pytest.mark.parametrize("where", ["full_home", "readonly_home"])
def test_retry_run_runs_the_command_when_the_state_folder_cannot_be_written(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A real full disk, a real read-only folder: the command runs, exit 0, one warning saying why."""
    home, marker = prepared(request, where, tmp_path)
    why = ENOSPC_TEXT if where == "full_home" else EROFS_TEXT

    proc = script(home, "retry_run.py", "--task", "first", "--target", "api", "--", *marker_cmd(marker))

    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "could not record" in line]
    assert len(lines) == 1 and why in lines[0], proc.stderr


@pytest.mark.parametrize("where", ["full_home", "readonly_home"])
def test_state_writing_commands_fail_clearly_when_the_state_folder_cannot_be_written(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """tasks add, snapshot save, workflow run, tasks run-next: exit 3, the file and the OS error, nothing run."""
    home, marker = prepared(request, where, tmp_path)
    why = ENOSPC_TEXT if where == "full_home" else EROFS_TEXT
    plan = plan_file(tmp_path, marker)
    runs = {
        "tasks add": script(home, "tasks.py", "add", "other", "--", "true"),
        "snapshot save": script(home, "snapshot.py", "save", "s1", "--messages-file", str(messages_file(tmp_path))),
        "workflow run": script(home, "workflow.py", "run", str(plan), "--task", "wf"),
        "tasks run-next": script(home, "tasks.py", "run-next"),
    }
    for what, proc in runs.items():
        assert "Traceback" not in proc.stderr, f"{what}: {proc.stderr}"
        assert proc.returncode == 3, f"{what}: {proc.stderr}"
        assert why in proc.stderr and str(home) in proc.stderr, f"{what}: {proc.stderr}"
    assert not marker.exists(), "neither the workflow step nor the task may run"


# -- the health check on a full disk -------------------------------------------------------------------------------


def stuck_task(home: Path, name: str) -> None:
    """Task `name` PROCESSING under a runner that has died (as a SIGKILLed run-next leaves it)."""
    from test_records import dead_process

    from selfheal.core.config import load_config
    from selfheal.state.root import StateRoot
    from selfheal.tasks.tree import PROCESSING, Task, TaskStore

    pid, create_time = dead_process()
    store = TaskStore(StateRoot(home), load_config())
    try:
        with store.transaction() as tree:
            tree.add(Task(name=name, run={"kind": "argv", "argv": ["true"]}))
            tree.transition(name, PROCESSING)
            tree.quiet_update(name, runner={"pid": pid, "create_time": create_time, "host": socket.gethostname()})
    finally:
        store.close()


@pytest.mark.parametrize(("gateway", "mode", "code"), [("live", "DEGRADED", 1), ("down", "DOWN", 3)])
def test_the_cron_health_check_names_a_stuck_task_on_a_full_disk(
    tmp_path: Path, gateway: str, mode: str, code: int
) -> None:
    """A full disk at 3 a.m. is when the health check is needed most. It still reads the task tree (without
    writing: it says so) and names the task whose runner died, says what it could not write, and exits with the
    mode's code (1 degraded, 3 down) after its summary of at most 5 lines; no traceback, the tree untouched. (It
    warned "the task tree cannot be read: ... No space left on device" and named no stuck task.)"""
    from helpers.fake_gateway import LIVE, READY, FakeGateway
    from helpers.openclaw import free_port

    with (
        mounted_tmpfs(tmp_path / "mnt", "256k") as mnt,
        FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw,
    ):
        home, openclaw = mnt / "state", mnt / "openclaw"  # ~/.openclaw on the same disk, as it is by default
        home.mkdir(mode=0o700)
        url = gw.url if gateway == "live" else f"http://127.0.0.1:{free_port()}"
        (home / "config.yaml").write_text(f"health: {{gateway_url: '{url}'}}\n")
        env = {"OPENCLAW_STATE_DIR": str(openclaw)}
        drop = ("OPENCLAW_GATEWAY_PORT", "OPENCLAW_CONFIG_PATH")
        assert call_script("health_check.py", "--cron", home=home, env=env, drop=drop).returncode in (1, 3)
        stuck_task(home, "nightly-export")
        fill(mnt)
        db = (home / "tasks.db").read_bytes()

        proc = call_script("health_check.py", "--cron", home=home, env=env, drop=drop)
        shown = call_script("health_check.py", "--json", home=home, env=env, drop=drop)
        assert (home / "tasks.db").read_bytes() == db

    assert "Traceback" not in proc.stderr + shown.stderr, proc.stderr + shown.stderr
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"self-heal health: {mode}") and len(lines) <= 5, lines
    where = f"the task tree was read without writing ({home / 'tasks.db'}: {ENOSPC_TEXT})"
    assert f"tasks: 1 stuck: nightly-export (runner gone); {where}" in lines, lines
    tail = [line for line in lines if " more (" in line]  # never `see health.json`: it could not be written
    assert all(line.endswith(f"({home / 'status' / 'health.json'} could not be written)") for line in tail), lines
    report = json.loads(shown.stdout)
    assert (shown.returncode, report["exit_code"]) == (code, code)
    tasks_check = next(c for c in report["checks"] if c["name"] == "tasks")
    assert [s["task"] for s in tasks_check["stuck"]] == ["nightly-export"], tasks_check
    health_file = next(c for c in report["checks"] if c["name"] == "health_file")
    assert ENOSPC_TEXT in health_file["detail"] and str(home / "status" / "health.json") in health_file["detail"]


def test_the_health_check_names_a_stuck_task_on_a_read_only_folder(tmp_path: Path) -> None:
    """A disk ext4 remounted read-only after a fault: the check still reads the task tree (saying it read
    without writing, and why) and names the task whose runner died; the tree is untouched. (It warned "the
    task tree cannot be read: ... Read-only file system" and named no stuck task.)"""
    from helpers.fake_gateway import LIVE, READY, FakeGateway
    from test_state_layer import read_only

    home, openclaw = tmp_path / "state", tmp_path / "openclaw"
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        home.mkdir(mode=0o700)
        (home / "config.yaml").write_text(f"health: {{gateway_url: '{gw.url}'}}\n")
        env = {"OPENCLAW_STATE_DIR": str(openclaw)}
        drop = ("OPENCLAW_GATEWAY_PORT", "OPENCLAW_CONFIG_PATH")
        stuck_task(home, "nightly-export")
        gc.collect()
        db = (home / "tasks.db").read_bytes()
        with read_only(home):
            shown = call_script("health_check.py", "--json", home=home, env=env, drop=drop)
        assert (home / "tasks.db").read_bytes() == db

    assert "Traceback" not in shown.stderr, shown.stderr
    report = json.loads(shown.stdout)
    assert (shown.returncode, report["mode"]) == (1, "degraded"), report["reason"]
    tasks_check = next(c for c in report["checks"] if c["name"] == "tasks")
    assert [s["task"] for s in tasks_check["stuck"]] == ["nightly-export"], tasks_check
    assert f"the task tree was read without writing ({home / 'tasks.db'}: {EROFS_TEXT})" in tasks_check["detail"]
