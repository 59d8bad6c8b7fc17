"""The skill as OpenClaw users get it: checked by OpenClaw's own validator, installed with `openclaw skills
install` and `npx skills add`, found eligible, and working from wherever those tools put it.

The real tools (OpenClaw 2026.9.6, skills 1.7.4, on their pinned Node) come from the `openclaw` fixture,
installed on first use into a cache later runs reuse; every run uses a throwaway HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.openclaw import OpenClaw

from conftest import ROOT

pytestmark = pytest.mark.slow
SKILLS_ADD = ("--skill", "self-heal", "-a", "openclaw", "-y")


def clean_copy(dest: Path) -> Path:
    """The skill as its repository has it (tracked and new files, nothing ignored: no .venv, no caches),
    in a folder named like the skill, as OpenClaw expects."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    skill = dest / "self-heal"
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            target = skill / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return skill


@pytest.fixture(scope="module")
def skill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clean_copy(tmp_path_factory.mktemp("source"))


def validate(openclaw: OpenClaw, folder: Path) -> subprocess.CompletedProcess[str]:
    """OpenClaw's bundled validator (skill-creator's quick_validate.py) on a skill folder."""
    script = openclaw.root / "node_modules" / "openclaw" / "skills" / "skill-creator" / "scripts" / "quick_validate.py"
    assert script.is_file(), f"OpenClaw's validator is not where it used to be: {script}"
    return subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, check=False)


def test_openclaws_own_validator_accepts_the_skill(openclaw: OpenClaw, skill: Path) -> None:
    proc = validate(openclaw, skill)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout.lower()


# How SKILL.md is broken, and whether OpenClaw's loader also refuses it (the validator refuses them all;
# the loader, as of 2026.9.6, tolerates an unknown key and a name in capitals).
BROKEN: dict[str, tuple[Callable[[str], str], bool]] = {
    "no description": (
        lambda text: "\n".join(ln for ln in text.splitlines() if not ln.startswith("description:")),
        True,
    ),
    "frontmatter that is not YAML": (lambda text: text.replace("name: self-heal", "name: [self-heal", 1), True),
    "a key OpenClaw does not allow": (lambda text: text.replace("---\nname:", "---\nversion: 1\nname:", 1), False),
    "a name with capitals": (lambda text: text.replace("name: self-heal", "name: Self_Heal", 1), False),
}


@pytest.mark.parametrize("how", sorted(BROKEN))
def test_a_broken_frontmatter_is_caught(openclaw: OpenClaw, skill: Path, tmp_path: Path, how: str) -> None:
    """The negative control: the same checks fail on a SKILL.md broken in each of these ways."""
    broken = tmp_path / "self-heal"
    shutil.copytree(skill, broken)
    path = broken / "SKILL.md"
    breaks, loader_refuses = BROKEN[how]
    path.write_text(breaks(path.read_text(encoding="utf-8")), encoding="utf-8")
    proc = validate(openclaw, broken)
    assert proc.returncode != 0, f"{how}: the validator accepted it: {proc.stdout}"
    if loader_refuses:
        home = openclaw.sandbox(tmp_path)
        openclaw.run(home, "skills", "install", str(broken), check=False)
        checked = json.loads(openclaw.run(home, "skills", "check", "--json").stdout)
        assert "self-heal" not in checked["eligible"], how


def test_openclaw_installs_it_and_finds_it_eligible_and_model_visible(
    openclaw: OpenClaw, skill: Path, tmp_path: Path
) -> None:
    home = openclaw.sandbox(tmp_path)
    openclaw.run(home, "skills", "install", str(skill))
    installed = home / ".openclaw" / "workspace" / "skills" / "self-heal"
    assert (installed / "SKILL.md").is_file() and (installed / "scripts" / "retry_run.py").is_file()
    info = json.loads(openclaw.run(home, "skills", "info", "self-heal", "--json").stdout)
    assert (info["eligible"], info["modelVisible"], info["baseDir"]) == (True, True, str(installed))
    assert info["missing"] == {"bins": [], "anyBins": [], "env": [], "config": [], "os": []}
    checked = json.loads(openclaw.run(home, "skills", "check", "--json").stdout)
    assert "self-heal" in checked["eligible"] and "self-heal" in checked["modelVisible"]


def test_npx_skills_add_then_the_installed_copy_installs_and_runs_on_its_own(
    openclaw: OpenClaw, skill: Path, tmp_path: Path
) -> None:
    """`npx skills add` copies the skill into a workspace; its install.sh makes its own venv there, and its
    scripts then run from that copy, with nothing from the checkout they came from."""
    home = openclaw.sandbox(tmp_path)
    workspace = home / ".openclaw" / "workspace"  # OpenClaw's default workspace: the CLI installs into ./skills
    workspace.mkdir(parents=True, exist_ok=True)
    added = subprocess.run(
        [str(openclaw.root / "node_modules" / ".bin" / "skills"), "add", str(skill), *SKILLS_ADD],
        cwd=workspace,
        env=openclaw.env(home),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    installed = workspace / "skills" / "self-heal"
    assert (installed / "SKILL.md").is_file() and not (installed / ".git").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "VIRTUAL_ENV", "PYTHON"))}
    env["HOME"] = str(home)
    env["SELFHEAL_HOME"] = str(tmp_path / "state")
    setup = subprocess.run(
        ["bash", str(installed / "install.sh")], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    assert (installed / ".venv" / "bin" / "python").exists()
    assert "built the native log scanner into .venv" in setup.stderr  # a C compiler is on these machines
    assert len(list((installed / ".venv" / "lib" / "selfheal").glob("logscan-*.so"))) == 1

    # The system python3 starts the script; it moves itself into the copy's own venv.
    run = subprocess.run(
        ["python3", str(installed / "scripts" / "retry_run.py"), "--json", "--task", "from-copy", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["outcome"] == "succeeded"
    where = subprocess.run(
        [
            str(installed / ".venv" / "bin" / "python"),
            "-c",
            "import selfheal, sys; print(selfheal.__file__, sys.prefix)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(installed) and Path(where[1]).is_relative_to(installed)
    tree = subprocess.run(
        ["python3", str(installed / "scripts" / "tasks.py"), "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tree.returncode == 0 and json.loads(tree.stdout)["ok"], tree.stderr
    # OpenClaw itself finds the copy the skills CLI made in the workspace.
    checked = json.loads(openclaw.run(home, "skills", "check", "--json").stdout)
    assert "self-heal" in checked["eligible"]
