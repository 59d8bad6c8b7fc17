"""The package as a new user meets it: README, install, scripts, public API, manifest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from conftest import PYTHON, ROOT, SCRIPTS, script_env

README = (ROOT / "README.md").read_text()
SKILL_MD = (ROOT / "SKILL.md").read_text()
SCRIPT_FILES = sorted(p for p in SCRIPTS.glob("*.py"))


def quick_start() -> list[str]:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one_exactly() -> None:
    """README's quick start: the main job, then the tests; .ci/run runs that test command verbatim."""
    main_job, tests = quick_start()
    assert main_job == "./install.sh && .venv/bin/python scripts/demo.py"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines
    assert tests.startswith("./install.sh --dev")


def test_install_reads_the_same_dependencies_with_or_without_tomllib() -> None:
    """install.sh parses pyproject.toml with tomllib, or a fallback on Python 3.10: both must agree."""
    script = (ROOT / "install.sh").read_text()
    parser = script.split("<<'PYEOF'\n", 1)[1].split("PYEOF", 1)[0]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]
    blocker = "import sys\nsys.modules['tomllib'] = None\n"  # makes `import tomllib` raise ImportError
    for prelude in ("", blocker):
        out = subprocess.run(
            [sys.executable, "-c", prelude + parser, str(ROOT / "pyproject.toml"), "1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out == expected


def test_install_rejects_unknown_options() -> None:
    """A typo in an install flag stops with exit 2 instead of doing something else."""
    proc = subprocess.run(["bash", str(ROOT / "install.sh"), "--deev"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "unknown option '--deev'" in proc.stderr


@pytest.mark.parametrize("script", SCRIPT_FILES, ids=lambda p: p.name)
def test_every_script_is_documented_and_answers_help(script: Path, home: Path) -> None:
    """Each script is named in SKILL.md (as {baseDir}/scripts/...) and README, and --help exits 0."""
    assert f"{{baseDir}}/scripts/{script.name}" in SKILL_MD
    assert f"scripts/{script.name}" in README
    proc = subprocess.run([PYTHON, str(script), "--help"], capture_output=True, env=script_env(home), check=False)
    assert proc.returncode == 0 and b"usage:" in proc.stdout


def test_skill_yaml_names_scripts_that_exist() -> None:
    """Every script the manifest lists exists, and every script is listed."""
    manifest = yaml.safe_load((ROOT / "skill.yaml").read_text())
    listed = set(manifest["scripts"].values())
    assert all((ROOT / path).is_file() for path in listed)
    assert listed == {f"scripts/{p.name}" for p in SCRIPT_FILES}
    assert manifest["name"] == "self-heal"


def test_skill_md_frontmatter_is_what_openclaw_accepts() -> None:
    """name, a one-line description under 160 characters, metadata as one JSON object; no other keys."""
    front = SKILL_MD.split("---\n", 2)[1]
    data = yaml.safe_load(front)
    allowed = {
        "name",
        "description",
        "homepage",
        "user-invocable",
        "disable-model-invocation",
        "command-dispatch",
        "command-tool",
        "command-arg-mode",
        "license",
        "allowed-tools",
        "metadata",
    }
    assert set(data) <= allowed
    assert data["name"] == "self-heal"
    assert "\n" not in data["description"] and len(data["description"]) < 160
    meta_line = next(line for line in front.splitlines() if line.startswith("metadata:"))
    meta = json.loads(meta_line.split(":", 1)[1])
    assert meta["openclaw"]["requires"]["bins"] == ["python3"] and meta["openclaw"]["emoji"]
    assert len(SKILL_MD.splitlines()) < 500


def test_every_settings_section_is_documented() -> None:
    """README's configuration table covers every top-level section of skill.yaml's settings."""
    from selfheal.core.config import MANIFEST_KEYS

    sections = [k for k in yaml.safe_load((ROOT / "skill.yaml").read_text()) if k not in MANIFEST_KEYS]
    for section in sections:
        assert f"| `{section}" in README, section


def test_public_api_survives_submodule_imports() -> None:
    """`selfheal.retry` stays the decorator even after every submodule has been imported."""
    code = (
        "import importlib, pkgutil, selfheal\n"
        "for m in pkgutil.walk_packages(selfheal.__path__, 'selfheal.'):\n"
        "    importlib.import_module(m.name)\n"
        "missing = [n for n in selfheal.__all__ if not hasattr(selfheal, n)]\n"
        "assert not missing, missing\n"
        "assert callable(selfheal.retry) and not isinstance(selfheal.retry, type(selfheal))\n"
        "assert callable(selfheal.classify_error)\n"
        "print('ok')"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_import_is_lazy() -> None:
    """`import selfheal` loads none of the dependencies, so cron paths and the bootstrap stay cheap."""
    code = (
        "import sys, selfheal\nprint(sorted(m for m in ('yaml', 'filelock', 'psutil', 'openai') if m in sys.modules))"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_retry_run_never_imports_openai(home: Path) -> None:
    """Running a command does not pay for the openai import (0.7 s)."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['retry_run.py', '-q', '--', 'true']\n"
        "try:\n    runpy.run_path('retry_run.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('openai' in sys.modules)"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, env=script_env(home), check=False
    )
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stderr


def test_health_check_never_imports_openai(home: Path) -> None:
    """The cron health check does not pay for the openai import either, on a first run (settings loaded) or later."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['health_check.py', '--cron']\n"
        "try:\n    runpy.run_path('health_check.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('openai' in sys.modules, 'selfheal.observe.health' in sys.modules)"
    )
    env = script_env(home, OPENCLAW_STATE_DIR=str(home / "openclaw"), OPENCLAW_GATEWAY_PORT="9")
    for _ in range(2):
        proc = subprocess.run([PYTHON, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, env=env, check=False)
        assert proc.stdout.strip().splitlines()[-1] == "False True", proc.stderr


def test_scripts_without_dependencies_say_how_to_install(tmp_path: Path, home: Path) -> None:
    """A script started by a Python without the dependencies prints the install command and exits 2."""
    bare = tmp_path / "bare"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    env = script_env(home, SELFHEAL_BOOTSTRAPPED="1")  # do not hop into the project's .venv
    proc = subprocess.run(
        [str(bare / "bin" / "python"), str(SCRIPTS / "retry_run.py"), "--", "true"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert re.search(r"missing Python packages .*; run: bash .*/install\.sh", proc.stderr)


def test_scripts_hop_into_the_skill_venv(home: Path) -> None:
    """Started with another Python, a script re-executes itself with the skill's .venv (which marks the hop)."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the skill's .venv is not installed here")  # pragma: no cover - install.sh makes it
    proc = subprocess.run(
        [
            sys.base_prefix + "/bin/python3",
            str(SCRIPTS / "retry_run.py"),
            "-q",
            "--",
            "sh",
            "-c",
            "echo hopped=${SELFHEAL_BOOTSTRAPPED:-no}",
        ],
        capture_output=True,
        text=True,
        env=script_env(home),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hopped=1"


@pytest.mark.slow
def test_the_main_job_runs_and_every_scenario_behaves(home: Path) -> None:
    """README's first command (demo.py) runs end to end here and reports every scenario as expected."""
    proc = subprocess.run(
        [PYTHON, str(SCRIPTS / "demo.py"), "--json"],
        capture_output=True,
        text=True,
        env=script_env(home),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and len(result["scenarios"]) == 10, result["scenarios"]
    assert result["left_behind"] == []  # no process of the demo outlives it
    assert result["ledger_events"]["retry"] >= 3
    assert not any(home.iterdir()) if home.exists() else True  # the demo used its own throwaway folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "bench", ["overhead.py", "ledger.py", "checkpoint.py", "tasks.py", "health.py", "logscan.py", "steps.py"]
)
def test_benchmarks_run_and_their_own_checks_pass(bench: str) -> None:
    """Each benchmark runs in its quick mode and its correctness checks (attempt counts, no lost event) hold."""
    proc = subprocess.run(
        [PYTHON, str(ROOT / "bench" / bench), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["machine"]["cores"]
    if bench == "ledger.py":
        assert result["nothing_lost"] and result["target_met"]
    elif bench in ("checkpoint.py", "tasks.py", "health.py", "logscan.py", "steps.py"):
        assert result["correct"]
    else:
        assert all(r["attempts"] in (None, 3 * r["calls"]) for r in result["results"])


def test_skill_yaml_and_skill_md_agree_and_name_only_files_that_exist() -> None:
    """The manifest and SKILL.md describe the same skill: name, version, scripts, prompts, schedules."""
    import selfheal

    manifest = yaml.safe_load((ROOT / "skill.yaml").read_text())
    front = yaml.safe_load(SKILL_MD.split("---\n", 2)[1])
    assert manifest["name"] == front["name"] == "self-heal"
    assert manifest["version"] == selfheal.__version__
    prompts = {f"config/prompts/{p.name}" for p in (ROOT / "config" / "prompts").glob("*.txt")}
    assert set(manifest["prompts"]) == prompts and all((ROOT / p).is_file() for p in prompts)
    named_in_skill_md = set(re.findall(r"\{baseDir\}/scripts/(\w+\.py)", SKILL_MD))
    assert named_in_skill_md == {Path(p).name for p in manifest["scripts"].values()}
    for name, line in manifest["schedules"].items():
        fields = line.split()
        assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields), (name, line)
