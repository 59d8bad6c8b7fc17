"""The user's own files are the user's: a plan is read wherever it lies, and the folder that holds it is never
checked, tightened or refused. Only the state root's folders must be self-heal's user's and 0700; a plan in a
shared 1777 folder, an ordinary 0755 project folder, a folder another user owns, or reached through a link the
user made, is read as it is, and every folder's mode and owner stay what they were."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import call_script

pytestmark = pytest.mark.slow

PLAN = 'steps:\n  - {name: a, shell: "echo a >> journal"}\n'
BAD_PLAN = "steps:\n  - {name: a, run: [x]}\n  - {name: a, run: [y]}\n"


def script(home: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The script's main() in this process: these tests check its exit code, its message and the folders."""
    return call_script(name, *args, home=home)


def looks(folder: Path) -> tuple[int, int]:
    """A folder's full mode (sticky bit included) and owner."""
    info = os.stat(folder)
    return info.st_mode & 0o7777, info.st_uid


def project(tmp_path: Path, name: str, mode: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    os.chmod(folder, mode)
    (folder / "plan.yaml").write_text(PLAN)
    (folder / "bad.yaml").write_text(BAD_PLAN)
    return folder


@pytest.mark.parametrize("mode", [0o1777, 0o755], ids=["sticky-1777", "project-0755"])
def test_running_adding_or_checking_a_plan_leaves_its_folders_mode_as_it_was(
    home: Path, tmp_path: Path, mode: int
) -> None:
    """workflow.py run (a good plan and a bad one) and tasks.py add --workflow read the plan, change nothing
    about its folder and warn about nothing."""
    folder = project(tmp_path, "shared", mode)
    before = looks(folder)

    ran = script(home, "workflow.py", "run", str(folder / "plan.yaml"), "--task", "s1")
    assert ran.returncode == 0, ran.stderr
    assert (folder / "journal").read_text() == "a\n"
    bad = script(home, "workflow.py", "run", str(folder / "bad.yaml"), "--task", "s2")
    assert bad.returncode == 2 and "duplicate step name" in bad.stderr, bad.stderr
    added = script(home, "tasks.py", "add", "nightly", "--workflow", str(folder / "plan.yaml"))
    assert added.returncode == 0, added.stderr

    assert looks(folder) == before
    for proc in (ran, bad, added):
        assert "tightened" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr


def test_a_plan_in_a_folder_another_user_owns_is_read_and_run(home: Path, tmp_path: Path) -> None:
    """A plan kept in `nobody`'s folder runs (the tests run as root, who may read it); the folder stays nobody's."""
    folder = project(tmp_path, "theirs", 0o755)
    os.chown(folder, 65534, 65534)
    os.chown(folder / "plan.yaml", 65534, 65534)
    before = looks(folder)

    ran = script(home, "workflow.py", "run", str(folder / "plan.yaml"), "--task", "t1")
    added = script(home, "tasks.py", "add", "theirs", "--workflow", str(folder / "plan.yaml"))

    assert ran.returncode == 0 and "another user" not in ran.stderr, ran.stderr
    assert added.returncode == 0, added.stderr
    assert looks(folder) == before


def test_a_plan_reached_through_a_link_the_user_made_is_read(home: Path, tmp_path: Path) -> None:
    """The state root's no-link rule is for state files: a plan linked from another folder is the user's choice."""
    folder = project(tmp_path, "plans", 0o755)
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(folder / "plan.yaml", work / "plan.yaml")

    ran = script(home, "workflow.py", "run", str(work / "plan.yaml"), "--task", "l1")

    assert ran.returncode == 0, ran.stderr
    assert (folder / "journal").read_text() == "a\n"  # steps run beside the plan itself


def test_the_state_root_is_still_tightened_when_a_plan_is_read(home: Path, tmp_path: Path) -> None:
    """Leaving the user's folders alone does not loosen the state root's own rule."""
    folder = project(tmp_path, "shared", 0o1777)
    home.mkdir()
    os.chmod(home, 0o777)  # noqa: S103 - the attack the rule is for

    ran = script(home, "workflow.py", "run", str(folder / "plan.yaml"), "--task", "s1")

    assert ran.returncode == 0, ran.stderr
    assert looks(home)[0] == 0o700 and looks(folder)[0] == 0o1777
    assert str(home) in ran.stderr and "tightened" in ran.stderr


def test_a_state_root_that_is_a_shared_sticky_folder_is_refused_never_tightened(tmp_path: Path) -> None:
    """SELFHEAL_HOME=/tmp, or a link to it, run as root (as many VPS users run OpenClaw): /tmp is root's own,
    so its 1777 was 'tightened' to 0700 and every other program on the machine lost its temp folder. A folder
    with the sticky bit is every user's: refused (exit 2) with what to do, and left as it was."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # noqa: S103 - the shared folder the rule is for
    for home in (shared, tmp_path / "link-to-tmp"):
        if home != shared:
            home.symlink_to(shared)
        ran = script(home, "retry_run.py", "--", "true")
        assert ran.returncode == 2, ran.stderr
        assert "shared by every user" in ran.stderr and "Traceback" not in ran.stderr
        assert looks(shared)[0] == 0o1777
