"""The package as a new user meets it: README and docs/, install, scripts, public API, manifest."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
import yaml

from conftest import PYTHON, ROOT, SCRIPTS, call_script, imported_by, run_script, script_env

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
CONFIGURATION_MD = (DOCS / "configuration.md").read_text()
SKILL_MD = (ROOT / "SKILL.md").read_text()
SCRIPT_FILES = sorted(p for p in SCRIPTS.glob("*.py"))
REFERENCES = ROOT / "references"


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


def test_readme_is_a_front_door_of_at_most_300_lines() -> None:
    """README stays short: what it is, the two commands, installing, a paragraph and a link per capability."""
    assert len(README.splitlines()) <= 300


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for a page's headings (outside code fences)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", markdown)


def test_readme_links_every_docs_page_and_each_link_resolves() -> None:
    """Every docs/*.md link in README names an existing page (and heading, if any); every page is linked."""
    linked = set()
    for link in _links(README):
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in _anchors(README), link
        if not path.startswith("docs/"):
            continue
        target = ROOT / path
        assert target.is_file(), link
        assert not anchor or anchor in _anchors(target.read_text()), link
        linked.add(target.name)
    assert linked == {p.name for p in DOCS.glob("*.md")}


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_pages_link_only_to_files_and_headings_that_exist(page: Path) -> None:
    """A docs page's relative links (to other pages, status/, skill.yaml, README) resolve, anchors included."""
    text = page.read_text()
    for link in _links(text):
        if re.match(r"[a-z]+:", link):
            continue  # an external URL
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_file(), (page.name, link)
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target.read_text()), (page.name, link)


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


def test_install_help_lists_every_option_it_accepts() -> None:
    """Each option install.sh's argument loop takes is in what --help prints, and nothing of the code is."""
    script = (ROOT / "install.sh").read_text()
    accepted = set(re.findall(r"^\s+(--[a-z-]+)\)", script, re.M))
    proc = subprocess.run(["bash", str(ROOT / "install.sh"), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    shown = set(re.findall(r"\./install\.sh (--[a-z-]+)", proc.stdout))
    assert "--no-openclaw-cron" in accepted and shown == accepted
    assert "set -euo" not in proc.stdout


@pytest.mark.parametrize("script", SCRIPT_FILES, ids=lambda p: p.name)
def test_every_script_is_documented_and_answers_help(script: Path, home: Path) -> None:
    """Each script is named in SKILL.md (as {baseDir}/scripts/...) and README, and --help exits 0."""
    assert f"{{baseDir}}/scripts/{script.name}" in SKILL_MD
    assert f"scripts/{script.name}" in README
    proc = run_script(script.name, "--help", home=home, binary=True)  # a new process: each script starts as run
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
    """docs/configuration.md's table covers every top-level section of skill.yaml's settings."""
    from selfheal.core.config import MANIFEST_KEYS

    sections = [k for k in yaml.safe_load((ROOT / "skill.yaml").read_text()) if k not in MANIFEST_KEYS]
    for section in sections:
        assert f"| `{section}" in CONFIGURATION_MD, section


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
    """Running a command does not pay for the openai import (0.7 s), nor for asyncio and ssl (15 ms: only an
    async function retried needs them), email.utils (only a Retry-After date), uuid, or secrets and hashlib
    (OpenSSL: a breaker's permit id is os.urandom's)."""
    heavy = ("openai", "asyncio", "ssl", "email.utils", "uuid", "secrets", "hashlib")
    assert imported_by("retry_run.py", "-q", "--", "true", home=home, watch=heavy) == []


@pytest.mark.parametrize(
    "argv", [["tasks.py", "list"], ["self_heal.py", "--help"], ["workflow.py", "--help"]], ids=lambda a: " ".join(a)
)
def test_scripts_that_touch_no_process_skip_psutil_and_asyncio(home: Path, argv: list[str]) -> None:
    """Listing tasks or asking for help inspects no process, awaits nothing, hashes and copies nothing: psutil,
    ctypes, asyncio, hashlib and shutil (about 30 ms of every start between them) stay unimported."""
    heavy = ("psutil", "ctypes", "asyncio", "ssl", "openai", "hashlib", "shutil")
    assert imported_by(*argv, home=home, watch=heavy) == []


def test_health_check_never_imports_openai(home: Path) -> None:
    """The cron health check does not pay for the openai import either, on a first run (settings loaded) or later."""
    env = script_env(home, OPENCLAW_STATE_DIR=str(home / "openclaw"), OPENCLAW_GATEWAY_PORT="9")
    for _ in range(2):  # the check ran (its module is there); openai was not imported
        watch = ("openai", "selfheal.observe.health")
        assert imported_by("health_check.py", "--cron", home=home, env=env, watch=watch) == ["selfheal.observe.health"]


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
    """Started with another Python, a script re-executes itself with the skill's .venv: the command it runs sees
    its parent is the venv's Python, and no guard of the hop left in its environment."""
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
            'tr "\\0" "\\n" </proc/$PPID/cmdline | head -n 1; echo "guard=${SELFHEAL_BOOTSTRAPPED:-none}"',
        ],
        capture_output=True,
        text=True,
        env=script_env(home),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(ROOT / ".venv" / "bin" / "python"), "guard=none"]


@pytest.mark.slow
def test_the_main_job_runs_and_every_scenario_behaves(home: Path, tmp_path: Path) -> None:
    """README's first command (demo.py) runs end to end here and reports every scenario as expected, in its own
    throwaway folder: nothing is written in the user's self-heal state, home or OpenClaw state folder."""
    user_home, openclaw = tmp_path / "user-home", tmp_path / "user-openclaw"
    user_home.mkdir()
    openclaw.mkdir()
    env = {"HOME": str(user_home), "OPENCLAW_STATE_DIR": str(openclaw)}
    proc = run_script("demo.py", "--json", home=home, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and len(result["scenarios"]) == 10, result["scenarios"]
    assert result["left_behind"] == []  # no process of the demo outlives it
    assert result["ledger_events"]["retry"] >= 3
    assert not any(home.iterdir()) if home.exists() else True  # the demo used its own throwaway folder
    assert list(user_home.rglob("*")) == []  # no ~/.openclaw/skills/status/self-heal.txt, nothing else
    assert list(openclaw.rglob("*")) == []


# The benchmarks whose --json says "correct": their results were checked (the redactor's output equals the
# algorithm it replaced; no claim doubled; every count exact).
CHECKED_BENCHES = (
    "checkpoint.py",
    "tasks.py",
    "health.py",
    "logscan.py",
    "fleet.py",
    "steps.py",
    "parallel.py",
    "redact.py",
)


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["overhead.py", "ledger.py", "json5_parse.py", *CHECKED_BENCHES])
def test_benchmarks_run_and_their_own_checks_pass(bench: str, request: pytest.FixtureRequest) -> None:
    """Each benchmark runs in its quick mode and its correctness checks (attempt counts, no lost event) hold;
    one round is enough for the checks (rounds only steady the figures). The fleet's runs on the session's
    PostgreSQL (its own databases there), as it would on SELFHEAL_TEST_DATABASE_URL's, not on a cluster of its own."""
    env = dict(os.environ)
    if bench == "fleet.py":
        from helpers.postgres import External

        server = request.getfixturevalue("postgres")
        env["SELFHEAL_TEST_DATABASE_URL"] = server.base_url if isinstance(server, External) else server.url()
    fewer = {
        "ledger.py": ["--rounds", "1"],
        "checkpoint.py": ["--rounds", "1"],
        "health.py": ["--rounds", "2"],
        "logscan.py": ["--rounds", "1"],
        "fleet.py": ["--rounds", "1", "--claims", "180"],
        "json5_parse.py": ["--rounds", "1"],
    }
    proc = subprocess.run(
        [PYTHON, str(ROOT / "bench" / bench), "--quick", "--json", *fewer.get(bench, [])],
        capture_output=True,
        env=env,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["machine"]["cores"]
    if bench == "ledger.py":  # its speed target is the benchmark's report, never a test's verdict (noisy machines)
        assert result["nothing_lost"]
    elif bench in CHECKED_BENCHES:
        assert result["correct"]
    elif bench == "json5_parse.py":  # the JSON5 reader gave json.loads's values for every document
        assert result["ok"] and all(r["same"] for r in result["results"])
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


def test_skill_md_is_short_starts_with_what_to_run_and_sends_details_to_references() -> None:
    """About 3 KB like OpenClaw's own skills; the body opens with the command to run; each area it points to
    has its page in references/, and every script appears in the exit-code table there."""
    assert len(SKILL_MD.encode()) < 3500
    body = SKILL_MD.split("---\n", 2)[2]
    assert body.split("\n\n", 2)[1].startswith("Run first")
    pages = set(re.findall(r"\| (\w[\w-]*\.md) \|", SKILL_MD)) | set(re.findall(r"references/([\w-]+\.md)", SKILL_MD))
    assert pages and all((REFERENCES / page).is_file() for page in pages), pages
    table = (REFERENCES / "exit-codes.md").read_text()
    for script in SCRIPT_FILES:
        assert f"| {script.name} |" in table, script.name
    assert "config.yaml" in SKILL_MD and "models.chain" in SKILL_MD and "install.sh --cron" in SKILL_MD


def test_the_description_carries_the_words_that_route_to_the_skill() -> None:
    """Only the name and description reach the model: the routing words must be there, not in the body."""
    description = yaml.safe_load(SKILL_MD.split("---\n", 2)[1])["description"].lower()
    for word in ("retry", "failover", "resume", "cron", "health", "log", "fix", "重试", "自愈"):
        assert word in description, word


@pytest.mark.parametrize(
    "argv",
    [
        ["tasks.py", "show", "ghost"],
        ["workflow.py", "status", "ghost"],
        ["snapshot.py", "restore", "ghost"],
        ["breakers.py", "reset", "ghost"],
        ["self_heal.py", "--task", "ghost"],
    ],
    ids=lambda a: a[0],
)
def test_an_unknown_name_exits_2_in_every_script(argv: list[str], home: Path) -> None:
    proc = call_script(argv[0], *argv[1:], home=home)
    assert proc.returncode == 2, proc.stderr
    assert "ghost" in proc.stderr and "Traceback" not in proc.stderr


def test_the_task_tree_commands_run_in_the_order_the_reference_gives(home: Path, tmp_path: Path) -> None:
    """references/tasks.md's block, run as written: no command is refused (exit 2) on the way."""
    block = (REFERENCES / "tasks.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert lines and all(line.startswith("python3 {baseDir}/scripts/tasks.py") for line in lines)
    codes = []
    for line in lines:
        argv = shlex.split(line.replace("{baseDir}", str(ROOT)))
        assert argv[1] == str(SCRIPTS / "tasks.py"), line
        proc = call_script("tasks.py", *argv[2:], home=home, cwd=tmp_path)  # the commands' exit codes: in-process
        codes.append(proc.returncode)
        assert proc.returncode in (0, 1, 3), (line, proc.stderr)
    assert codes[3] == 3  # flow.py does not exist here: the run fails, and show then tells why


def test_install_asks_pip_only_when_a_dependency_is_missing_or_out_of_range() -> None:
    """install.sh's check before pip: every dependency installed at a version in range skips pip (a second run,
    a cron set-up); a missing one or one out of range runs it."""
    text = (ROOT / "install.sh").read_text()
    check = text.split("<<'PYEOF' 2>/dev/null\n", 1)[1].split("PYEOF", 1)[0]

    def satisfied(*requirements: str) -> bool:
        proc = subprocess.run([PYTHON, "-c", check, *requirements], capture_output=True, text=True, check=False)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode == 0

    assert satisfied("openai>=1", "pyyaml", "psutil>=5", 'tomli; python_version < "3.0"')
    assert not satisfied("psutil<1")
    assert not satisfied("no-such-package-for-self-heal>=1")


def test_a_bug_in_a_script_exits_3_not_1_which_reads_as_an_alert(capsys: pytest.CaptureFixture[str]) -> None:
    """An unexpected exception (a bug in self-heal) exits 3, failed: 1 says the script ran and found problems
    (an alert, a degraded health), which a cron wrapper or an agent acts on. The traceback is shown for the
    report, and --json still gets one JSON object."""
    from selfheal.cli import run_main

    def main(argv: object) -> int:
        raise RuntimeError("boom in the report builder")

    assert run_main(main, ["--json"]) == 3
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": "InternalError", "message": "a bug in self-heal", "exit": 3}
    assert "RuntimeError: boom in the report builder" in err and "internal error (a bug in self-heal" in err


# -- install.sh on the machines users have, and the bootstrap ------------------------------------------------------


def test_a_script_started_by_a_script_hops_into_the_venv_too(home: Path) -> None:
    """A self-heal script run by another one (a task or workflow step `python3 {baseDir}/scripts/...`, a command
    under retry_run.py) with a Python that lacks the dependencies moves into the skill's .venv as well: the first
    script's hop must not tell its children they are already there (they said 'missing Python packages', exit 2)."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the skill's .venv is not installed here")  # pragma: no cover - install.sh makes it
    system = sys.base_prefix + "/bin/python3"
    nested = [system, str(SCRIPTS / "tasks.py"), "list", "--json"]
    proc = subprocess.run(
        [system, str(SCRIPTS / "retry_run.py"), "--json", "--max-attempts", "1", "--", *nested],
        capture_output=True,
        text=True,
        env=script_env(home),
        timeout=120,
        check=False,
    )
    assert "missing Python packages" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outcome"] == "succeeded"


def _skill_folder(where: Path, *, venv: str = "installed") -> Path:
    """A skill folder for install.sh, made in a second: the files it reads and scripts/; with venv="installed" a
    .venv as install.sh leaves it (its packages, pip included, the project's own, through a .pth), "no-pip" one
    that `python3 -m venv` leaves where Debian's python3-venv is missing, "none" none."""
    skill = where / "self-heal"
    skill.mkdir(parents=True)
    for name in ("install.sh", "pyproject.toml", "skill.yaml"):
        shutil.copy(ROOT / name, skill / name)
    shutil.copytree(SCRIPTS, skill / "scripts", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    if venv != "none":
        subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(skill / ".venv")], check=True, timeout=120)
    if venv == "installed":
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ours = subprocess.run([PYTHON, "-c", purelib], capture_output=True, text=True, check=True).stdout.strip()
        theirs = subprocess.run(
            [str(skill / ".venv" / "bin" / "python"), "-c", purelib], capture_output=True, text=True, check=True
        ).stdout.strip()
        Path(theirs, "project-packages.pth").write_text(ours + "\n")
    return skill


def _install(skill: Path, home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """install.sh of `skill`, offline (pip, if asked, fails at once), with HOME and the state folder in `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "VIRTUAL_ENV", "OPENCLAW_"))}
    env.update(HOME=str(home), PYTHON=PYTHON, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(home), PIP_CONFIG_FILE=os.devnull)
    env.update(extra)
    argv = ["bash", "-c", 'umask 022 && exec bash "$0" "$@"', str(skill / "install.sh"), *args]  # a usual umask
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its inode and modification time: what a run that wrote nothing leaves alone."""
    return {str(p.relative_to(folder)): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def test_install_run_again_writes_nothing_in_the_skill_folder(tmp_path: Path) -> None:
    """A second run finds everything in place and changes nothing there, so it also passes where the folder is
    read-only to the user who runs it (installed by its owner; the .pth was rewritten each run: Permission denied)."""
    skill, home = _skill_folder(tmp_path), tmp_path / "home"
    home.mkdir()
    first = _install(skill, home)
    assert first.returncode == 0, first.stderr
    before = _snapshot(skill)
    again = _install(skill, home)
    assert again.returncode == 0, again.stderr
    assert "creating" not in again.stderr and "packages already in .venv" in again.stderr
    assert _snapshot(skill) == before


def test_install_keeps_a_venv_that_python_3_12_or_later_made(tmp_path: Path) -> None:
    """Python 3.12 and later write `export VIRTUAL_ENV=...` (after a cygpath line) in activate: the venv is still
    taken for this folder's, not re-made on every run ('it was made for $(cygpath ...)', a minute and the network)."""
    skill, home = _skill_folder(tmp_path), tmp_path / "home"
    home.mkdir()
    activate = skill / ".venv" / "bin" / "activate"
    venv = skill / ".venv"
    as_312 = (  # what Python 3.12 and 3.13 write there
        'case "$(uname)" in\n'
        "    CYGWIN*|MSYS*|MINGW*)\n"
        f'        VIRTUAL_ENV=$(cygpath "{venv}")\n'
        "        export VIRTUAL_ENV\n"
        "        ;;\n"
        "    *)\n"
        f'        export VIRTUAL_ENV="{venv}"\n'
        "        ;;\n"
        "esac"
    )
    text = re.sub(r"(?m)^VIRTUAL_ENV=.*$", lambda _: as_312, activate.read_text(), count=1)
    assert as_312 in text
    activate.write_text(text)
    before = _snapshot(skill / ".venv")
    proc = _install(skill, home)
    assert proc.returncode == 0, proc.stderr
    assert "re-creating" not in proc.stderr and "creating" not in proc.stderr
    after = _snapshot(skill / ".venv")  # its files untouched (folders gain the .pth and the log scanner)
    assert {k: after.get(k) for k in before if not (venv / k).is_dir()} == {
        k: v for k, v in before.items() if not (venv / k).is_dir()
    }


@pytest.mark.slow
def test_install_remakes_a_venv_left_without_pip_and_says_when_pip_cannot_install(tmp_path: Path) -> None:
    """A .venv without pip (what `python3 -m venv` leaves where python3-venv is missing) is made again, not asked
    in vain ('No module named pip' on every run, for good); pip failing (offline) is exit 3 with a line that says
    what to do, not pip's exit 1 (which reads as 'ran and found problems')."""
    skill, home = _skill_folder(tmp_path, venv="no-pip"), tmp_path / "home"
    home.mkdir()
    proc = _install(skill, home)
    assert "No module named pip" not in proc.stderr
    assert f"creating {skill / '.venv'}" in proc.stderr
    assert proc.returncode == 3, proc.stderr
    assert "pip could not install the dependencies" in proc.stderr and "run this again" in proc.stderr
    pip = subprocess.run([str(skill / ".venv" / "bin" / "python"), "-c", "import pip"], check=False)
    assert pip.returncode == 0  # the venv is whole now: the next run, online, installs into it


def test_install_leaves_no_half_made_venv_when_venv_fails(tmp_path: Path) -> None:
    """`python3 -m venv` failing (Debian without python3-venv: it makes the folder, then fails at ensurepip) leaves
    no .venv to be taken for a whole one later; the message names the package to install, exit 3."""
    skill, home = _skill_folder(tmp_path, venv="none"), tmp_path / "home"
    home.mkdir()
    debian = tmp_path / "python3"
    debian.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = venv ]; then\n'
        f'    "{PYTHON}" -m venv --without-pip "$3" || exit $?\n'
        '    echo "The virtual environment was not created successfully because ensurepip is not available."\n'
        "    exit 1\n"
        "fi\n"
        f'exec "{PYTHON}" "$@"\n'
    )
    debian.chmod(0o755)
    proc = _install(skill, home, PYTHON=str(debian))
    assert proc.returncode == 3, proc.stderr
    assert "python3-venv" in proc.stderr and "Traceback" not in proc.stderr
    assert not (skill / ".venv").exists()


def test_install_makes_a_missing_openclaw_folder_private_as_openclaw_does(tmp_path: Path) -> None:
    """Where ~/.openclaw does not exist yet, install.sh makes it 0700 (OpenClaw's own mode; 0755 is flagged by
    `openclaw security audit`: 'State dir is readable by others'); an existing one keeps its mode."""
    skill, home = _skill_folder(tmp_path), tmp_path / "home"
    home.mkdir()
    proc = _install(skill, home)
    assert proc.returncode == 0, proc.stderr
    assert (home / ".openclaw").stat().st_mode & 0o777 == 0o700
    assert (home / ".openclaw" / "self-heal").stat().st_mode & 0o777 == 0o700
    (home / ".openclaw").chmod(0o750)
    assert _install(skill, home).returncode == 0
    assert (home / ".openclaw").stat().st_mode & 0o777 == 0o750


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can be handed another user's HOME")
def test_install_as_root_refuses_another_users_home(tmp_path: Path) -> None:
    """`sudo ./install.sh` where sudo keeps HOME would make the user's state folder root's, and every script that
    user runs would then be refused it: install.sh stops first, exit 2, and makes nothing."""
    skill, home = _skill_folder(tmp_path), tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    proc = _install(skill, home)
    assert proc.returncode == 2, proc.stderr
    assert f"HOME={home}, which is another user's" in proc.stderr
    assert list(home.iterdir()) == []


def test_install_cron_lines_run_from_a_folder_whose_path_has_a_space_a_quote_and_a_percent(tmp_path: Path) -> None:
    """A skill in "it's 100% mine/" with a HOME like it: a run again keeps its venv (the activate script quotes
    that path) and its three crontab lines (once each, the user's lines kept), and the fix-task line runs as cron
    runs it (cron turns each \\% back into %, sh reads the rest)."""
    skill, home = _skill_folder(tmp_path / "it's 100% mine"), tmp_path / "home of it's 100%"
    home.mkdir()
    table = tmp_path / "table"
    table.write_text("MAILTO=me@example.com\n0 3 * * * /usr/local/bin/backup\n")
    fake = tmp_path / "crontab"
    fake.write_text(
        '#!/bin/sh\ncase "$1" in\n  -l) cat "$FAKE_CRONTAB_TABLE" ;;\n  -) cat > "$FAKE_CRONTAB_TABLE" ;;\nesac\n'
    )
    fake.chmod(0o755)
    for _ in range(2):
        proc = _install(skill, home, "--cron", SELFHEAL_CRONTAB=str(fake), FAKE_CRONTAB_TABLE=str(table))
        assert proc.returncode == 0, proc.stderr
        assert "creating" not in proc.stderr
    lines = table.read_text().splitlines()
    assert lines[:2] == ["MAILTO=me@example.com", "0 3 * * * /usr/local/bin/backup"] and len(lines) == 5
    (fix,) = [line for line in lines if line.endswith("# self-heal fix tasks")]
    marker = tmp_path / "ran"
    state = home / ".openclaw" / "self-heal"
    added = subprocess.run(
        [PYTHON, str(skill / "scripts" / "tasks.py"), "add", "job", "--type", "fix", "--", "touch", str(marker)],
        env=script_env(state),
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    command = fix.split(" ", 5)[5].replace("\\%", "%")
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "tester"}
    ran = subprocess.run(["/bin/sh", "-c", command], env=bare, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert marker.exists()


def _sigint_as_at_a_terminal() -> None:
    """SIGINT back to its default in the child, as a terminal's Ctrl-C finds it: a test run started in the
    background of a shell (`cmd &`, nohup) ignores it, and an ignored SIGINT is inherited, so the demo never
    got the interrupt this test sends and ran to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _started_in(folder: Path) -> list[int]:
    """Live processes that name `folder` in their command line or environment (SELFHEAL_HOME, TMPDIR): the
    demo's, since the folder is the test's own."""
    import psutil

    needle = str(folder)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(needle in part for part in proc.info["cmdline"] or []) or any(
                needle in value for value in proc.environ().values()
            ):
                found.append(proc.pid)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_the_demo_stopped_midway_leaves_no_process_and_no_folder(home: Path, tmp_path: Path, signum: int) -> None:
    """`timeout 10 demo.py` (SIGTERM) or `kill -INT`, while its hanging command and that command's grandchild run:
    the demo stops what it started (they ran on for 10 minutes) and removes its throwaway folder (it stayed)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = script_env(home, TMPDIR=str(tmp), HOME=str(tmp_path))
    demo = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "demo.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_at_a_terminal,  # noqa: PLW1509 - only a signal disposition, before exec
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [p for p in tmp.glob("*/work/grandchild.pid") if p.read_text()]:
            assert demo.poll() is None, demo.stderr.read() if demo.stderr else ""
            time.sleep(0.05)
        assert _started_in(tmp), "the demo's hanging command is not running"
        demo.send_signal(signum)
        _, err = demo.communicate(timeout=60)
        assert demo.returncode in (130, 128 + signal.SIGTERM), err
        assert "Traceback" not in err
        assert _started_in(tmp) == []
        assert list(tmp.iterdir()) == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in _started_in(tmp):  # this test's own: they name its folder
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
