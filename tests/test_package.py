"""The package as a new user meets it: README and docs/, install, scripts, public API, manifest."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
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
