"""health_check.py as cron and people run it: real processes, real files, real HTTP servers on 127.0.0.1;
and install.sh --cron / --no-cron against a stand-in crontab command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.fake_gateway import LIVE, READY, FakeGateway
from helpers.openclaw import free_port

from conftest import PYTHON, ROOT, SCRIPTS, call_script, imported_by, script_env

HEALTH_CHECK = str(SCRIPTS / "health_check.py")


@pytest.fixture
def openclaw_dir(tmp_path: Path) -> Path:
    """The OpenClaw state folder the check reads (openclaw.json, skills/status), private to the test."""
    folder = tmp_path / "openclaw"
    (folder / "skills" / "status").mkdir(parents=True)
    return folder


def run(home: Path, openclaw_dir: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    # this machine's OpenClaw settings are not the test's
    env = {"OPENCLAW_STATE_DIR": str(openclaw_dir), **extra}
    drop = ("OPENCLAW_GATEWAY_PORT", "OPENCLAW_CONFIG_PATH")
    return call_script("health_check.py", *args, home=home, env=env, drop=drop)


@pytest.fixture
def configure(write_config: Callable[[str], Path]) -> Callable[[str], Path]:
    def at(url: str) -> Path:
        return write_config(f"health: {{gateway_url: '{url}', disk_min_free_mb: 0}}\n")

    return at


def test_cron_prints_only_no_reply_and_exits_0_when_operational(
    home: Path, openclaw_dir: Path, configure: Callable[[str], Path]
) -> None:
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        configure(gw.url)
        proc = run(home, openclaw_dir, "--cron")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "NO_REPLY\n", "")


def test_cron_summarises_degraded_and_down_in_at_most_five_lines_with_their_exit_codes(
    home: Path, openclaw_dir: Path, configure: Callable[[str], Path]
) -> None:
    """Gateway down but a skill reported recently: degraded, exit 1; nothing fresh either: down, exit 3."""
    url = f"http://127.0.0.1:{free_port()}"
    configure(url)
    status = openclaw_dir / "skills" / "status" / "daily-memory.txt"
    status.write_text("status=success,timestamp=Sat Mar 1 01:09:00 CST 2026\n")
    degraded = run(home, openclaw_dir, "--cron")
    lines = degraded.stdout.splitlines()
    assert degraded.returncode == 1 and 2 <= len(lines) <= 5 and degraded.stderr == ""
    assert lines[0].startswith("self-heal health: DEGRADED: the gateway is not live but skills still work")
    assert lines[1] == (
        f"gateway: not answering at {url} (health.gateway_url): connection refused (nothing listens there)"
    )

    status.unlink()
    down = run(home, openclaw_dir, "--cron")
    assert down.returncode == 3 and down.stdout.startswith("self-heal health: DOWN: ")
    assert len(down.stdout.splitlines()) <= 5


def test_json_prints_one_object_and_health_json_holds_the_same_report(
    home: Path, openclaw_dir: Path, configure: Callable[[str], Path]
) -> None:
    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:
        configure(gw.url)
        proc = run(home, openclaw_dir, "--json")
    (line,) = proc.stdout.splitlines()
    report = json.loads(line)
    assert proc.returncode == 0 and report["ok"] is True and report["mode"] == "operational"
    assert [c["name"] for c in report["checks"]] == [
        "gateway", "gateway_ready", "status_files", "runs", "tasks", "breakers", "state_root", "disk", "gpu",
    ]  # fmt: skip
    written = json.loads((home / "status" / "health.json").read_text())
    assert {k: v for k, v in written.items() if k != "config_inputs"} == report


def test_the_table_for_people_names_every_check(
    home: Path, openclaw_dir: Path, configure: Callable[[str], Path]
) -> None:
    configure(f"http://127.0.0.1:{free_port()}")
    proc = run(home, openclaw_dir)
    first, *rows = proc.stdout.splitlines()
    assert proc.returncode == 3 and first.startswith("down: the gateway is not live")
    assert [row.split()[:2] for row in rows] == [
        ["gateway", "fail"], ["gateway_ready", "skip"], ["status_files", "skip"], ["runs", "ok"],
        ["tasks", "ok"], ["breakers", "ok"], ["state_root", "ok"], ["disk", "ok"], ["gpu", "skip"],
    ]  # fmt: skip


def test_a_bad_config_value_exits_2_naming_file_key_and_value_and_keeps_the_last_report(
    home: Path, openclaw_dir: Path, write_config: Callable[[str], Path]
) -> None:
    write_config("health: {disk_min_free_mb: 0}\n")
    run(home, openclaw_dir, "--cron")
    before = (home / "status" / "health.json").read_bytes()
    config_file = write_config("health: {timeout_s: 0}\n")
    proc = run(home, openclaw_dir, "--cron")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"self-heal: {config_file}:1:10: health.timeout_s: must be > 0, got 0.0\n"
    as_json = run(home, openclaw_dir, "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"] == "ConfigError"
    assert (home / "status" / "health.json").read_bytes() == before


def test_a_bad_gateway_port_in_the_environment_exits_2_naming_it(home: Path, openclaw_dir: Path) -> None:
    proc = run(home, openclaw_dir, OPENCLAW_GATEWAY_PORT="http")
    assert proc.returncode == 2
    assert proc.stderr == (
        "self-heal: environment: OPENCLAW_GATEWAY_PORT: must be a TCP port number (1-65535), got 'http'\n"
    )


def test_cron_and_json_together_are_a_usage_error(home: Path, openclaw_dir: Path) -> None:
    proc = run(home, openclaw_dir, "--cron", "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"] == "usage"


def test_a_repeated_run_loads_no_yaml_and_no_module_it_does_not_need(home: Path, openclaw_dir: Path) -> None:
    """Cron pays for every import: once its settings are kept, a check with the gateway's port closed and
    nothing running imports neither PyYAML, nor the HTTP client, psutil, filelock, asyncio or openai; nor shutil
    (argparse's formatter would load it, and zlib, bz2 and lzma with it) or the idna codec (a str host would);
    nor, with no breaker and no run to read, the dataclass records (dataclasses pulls in inspect and ast); nor
    typing, traceback (only a crash is reported with it) or logging (only a message needs it)."""
    (openclaw_dir / "openclaw.json").write_text(json.dumps({"gateway": {"port": free_port()}}))
    heavy = (
        *("yaml", "http.client", "psutil", "filelock", "asyncio", "openai", "selfheal.core.config", "shutil"),
        *("bz2", "lzma", "encodings.idna", "dataclasses", "typing", "traceback", "logging"),
    )
    env = script_env(home, OPENCLAW_STATE_DIR=str(openclaw_dir))
    env.pop("OPENCLAW_GATEWAY_PORT", None)

    def imported() -> list[str]:
        return imported_by("health_check.py", "--cron", home=home, env=env, watch=heavy)

    assert "yaml" in imported()  # the first run loads and validates the settings
    assert imported() == []
    # With a task tree to read (sqlite3 then is imported), still none of them.
    assert call_script("tasks.py", "add", "nightly", "--", "true", home=home).returncode == 0
    assert imported() == []


def test_a_gpu_reading_loads_neither_the_model_client_nor_the_process_runner(
    home: Path, openclaw_dir: Path, tmp_path: Path
) -> None:
    """The GPU line reads nvidia-smi through the model chain's reader, without what the model chain needs
    (asyncio, openai) and without the command runner (psutil, the run records, dataclasses, typing, logging:
    about 30 ms a cron run where there is a GPU); and the reading is the one nvidia-smi gave."""
    (openclaw_dir / "openclaw.json").write_text(json.dumps({"gateway": {"port": free_port()}}))
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho '0, GPU-a, 6000, 8192'\n")
    tool.chmod(0o755)
    heavy = ("asyncio", "openai", "psutil", "selfheal.core.process", "dataclasses", "typing", "logging")
    env = script_env(home, OPENCLAW_STATE_DIR=str(openclaw_dir))
    env.pop("OPENCLAW_GATEWAY_PORT", None)
    env["PATH"] = f"{tool.parent}{os.pathsep}{env['PATH']}"
    imported_by("health_check.py", "--cron", home=home, env=env, watch=heavy)  # the settings kept
    assert imported_by("health_check.py", "--cron", home=home, env=env, watch=heavy) == []
    proc = subprocess.run([PYTHON, HEALTH_CHECK, "--json"], env=env, capture_output=True, text=True, check=False)
    (gpu,) = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "gpu"]
    assert (gpu["status"], gpu["detail"]) == ("ok", "6000 MiB free on the GPU")


def test_finished_run_records_kept_as_history_load_no_run_record_module(home: Path, openclaw_dir: Path) -> None:
    """Every task run and retry_run.py leaves its finished record in runs/ for days: with only those there,
    the check knows no run is in progress from their bytes, and imports neither the records (dataclasses,
    inspect, ast) nor typing or logging; a run still in progress is read as before."""
    (openclaw_dir / "openclaw.json").write_text(json.dumps({"gateway": {"port": free_port()}}))
    heavy = ("selfheal.core.runs", "selfheal.state.runs", "dataclasses", "typing", "logging", "traceback")
    env = script_env(home, OPENCLAW_STATE_DIR=str(openclaw_dir))
    env.pop("OPENCLAW_GATEWAY_PORT", None)
    assert call_script("tasks.py", "add", "nightly", "--", "true", home=home).returncode == 0
    assert call_script("tasks.py", "run-next", "--no-stuck-check", home=home).returncode == 0
    assert call_script("retry_run.py", "--task", "once", "--", "true", home=home).returncode == 0
    assert len(list((home / "runs").glob("*.json"))) == 2
    imported_by("health_check.py", "--cron", home=home, env=env, watch=heavy)  # the settings kept
    assert imported_by("health_check.py", "--cron", home=home, env=env, watch=heavy) == []
    proc = run(home, openclaw_dir, "--json")
    (runs,) = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "runs"]
    assert (runs["status"], runs["detail"], runs["running"]) == ("ok", "no run in progress", 0)


# -- install.sh --cron ---------------------------------------------------------------------------------------------

FAKE_CRONTAB = """#!/bin/sh
# A stand-in for crontab(1) that keeps the table in $FAKE_CRONTAB_TABLE.
case "$1" in
  -l) [ -f "$FAKE_CRONTAB_TABLE" ] || { echo "no crontab for tester" >&2; exit 1; }; cat "$FAKE_CRONTAB_TABLE" ;;
  -) cat > "$FAKE_CRONTAB_TABLE" ;;
  *) echo "fake crontab: unsupported: $*" >&2; exit 2 ;;
esac
"""
# A user's own table, in the shapes crontab(5) allows: comments, a variable, blank lines (trailing ones too, and one
# of white space only), tabs, an escaped and an unescaped %, @reboot, trailing spaces.
USER_LINES = (
    "# m h dom mon dow command\n"
    "MAILTO=me@example.com\n"
    "\n"
    "# nightly backup\n"
    "0 3 * * * /usr/local/bin/backup --to /mnt/b 100%\n"
    "@reboot\t/usr/local/bin/start-agent\t--quiet\n"
    "15 4 * * 1-5\tdate +\\%Y-\\%m-\\%d >> /tmp/stamp   \n"
    " \t\n"
    "\n"
    "\n"
)


@pytest.fixture
def crontab(tmp_path: Path) -> tuple[Path, Path]:
    """(the stand-in crontab command, its table file), the table holding a user's own lines."""
    command = tmp_path / "crontab"
    command.write_text(FAKE_CRONTAB)
    command.chmod(0o755)
    table = tmp_path / "table"
    table.write_text(USER_LINES)
    return command, table


def install(home: Path, crontab: tuple[Path, Path], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = script_env(home, SELFHEAL_CRONTAB=str(crontab[0]), FAKE_CRONTAB_TABLE=str(crontab[1]), **extra)
    env["PYTHON"] = PYTHON
    env.pop("OPENCLAW_STATE_DIR", None)  # as on a user's machine: OpenClaw's folder is ~/.openclaw...
    if "HOME" not in extra:  # ...in a HOME of the test's own, which the lines pin
        env["HOME"] = str(home.parent / "user-home")
    return subprocess.run(
        ["bash", str(ROOT / "install.sh"), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
def test_install_cron_adds_its_three_lines_however_often_it_runs_and_no_cron_removes_only_them(
    home: Path, crontab: tuple[Path, Path], tmp_path: Path
) -> None:
    """Health check, fix tasks, regular tasks: each line pins HOME, the state folder and PATH; the user's table
    stays byte for byte (its trailing blank lines too, and a comment that is not UTF-8)."""
    user = b"# caf\xe9: a comment in Latin-1\n" + USER_LINES.encode()
    crontab[1].write_bytes(user)
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    path = "/opt/node/bin:/usr/bin:/bin"
    first = install(home, crontab, "--cron", HOME=str(user_home), PATH=f"{path}:{os.environ['PATH']}")
    assert first.returncode == 0, first.stderr
    second = install(home, crontab, "--cron", HOME=str(user_home), PATH=f"{path}:{os.environ['PATH']}")
    assert second.returncode == 0, second.stderr
    assert "edited the crontab of user" in second.stderr and "--no-cron' removes exactly them" in second.stderr
    table = crontab[1].read_bytes().decode("utf-8", "surrogateescape")
    assert table.startswith(user.decode("utf-8", "surrogateescape"))  # the user's lines, untouched, in place
    ours = [line for line in table.split("\n") if "# self-heal " in line]
    venv_python = ROOT / ".venv" / "bin" / "python"
    pinned = f"HOME='{user_home}' SELFHEAL_HOME='{home}' PATH='{path}:{os.environ['PATH']}' '{venv_python}'"
    assert ours == [
        f"*/5 * * * * {pinned} '{SCRIPTS / 'health_check.py'}' --cron 2>&1 | grep -v '^NO_REPLY$'"
        " # self-heal health check",
        f"* * * * * {pinned} '{SCRIPTS / 'tasks.py'}' run-next --type fix --quiet # self-heal fix tasks",
        f"*/10 * * * * {pinned} '{SCRIPTS / 'tasks.py'}' run-next --type regular --type creative --quiet"
        " # self-heal regular tasks",
    ]
    assert crontab[1].read_bytes() == user + ("\n".join(ours) + "\n").encode()  # its three lines, and only them
    # The line for OpenClaw's own cron: no chat delivery, so a failing run records no "Channel is required".
    argv = json.dumps([str(venv_python), str(SCRIPTS / "health_check.py"), "--cron"])
    assert (
        f"openclaw cron add --name self-heal-health --every 10m --command-argv '{argv}' "
        f"--command-env 'SELFHEAL_HOME={home}' --no-deliver"
    ) in second.stderr

    removed = install(home, crontab, "--no-cron")
    assert removed.returncode == 0, removed.stderr
    assert crontab[1].read_bytes() == user
    assert install(home, crontab, "--no-cron").returncode == 0
    assert crontab[1].read_bytes() == user


@pytest.mark.slow
@pytest.mark.parametrize(
    ("line", "kind"), [("fix tasks", "fix"), ("regular tasks", "regular"), ("regular tasks", "creative")]
)
def test_the_task_runner_lines_run_as_cron_would(
    home: Path, crontab: tuple[Path, Path], tmp_path: Path, line: str, kind: str
) -> None:
    """With cron's bare environment, the fix-task line runs a fix task of the state folder install.sh set up, and
    the regular line a regular or creative one (creative tasks ran from no cron line at all)."""
    assert install(home, crontab, "--cron").returncode == 0
    (entry,) = [text for text in crontab[1].read_text().splitlines() if f"self-heal {line}" in text]
    marker = tmp_path / "ran"
    added = subprocess.run(
        [PYTHON, str(SCRIPTS / "tasks.py"), "add", "job", "--type", kind, "--", "touch", str(marker)],
        env=script_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "tester"}
    command = entry.split(" ", 5)[5]
    proc = subprocess.run(["/bin/sh", "-c", command], env=bare, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()


@pytest.mark.slow
def test_the_crontab_entry_runs_the_check_as_cron_would(
    home: Path, crontab: tuple[Path, Path], tmp_path: Path, configure: Callable[[str], Path]
) -> None:
    """The entry, run by sh with cron's bare environment, writes health.json and prints only a problem."""
    assert install(home, crontab, "--cron").returncode == 0
    (entry,) = [line for line in crontab[1].read_text().splitlines() if "self-heal health check" in line]
    command = entry.split(" ", 5)[5]
    configure(f"http://127.0.0.1:{free_port()}")
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "tester"}
    proc = subprocess.run(["/bin/sh", "-c", command], env=bare, capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.startswith("self-heal health: DOWN: ")  # no gateway here; cron would mail this
    assert json.loads((home / "status" / "health.json").read_text())["mode"] == "down"


def test_install_cron_without_a_crontab_command_says_so_and_changes_nothing(home: Path, tmp_path: Path) -> None:
    env = script_env(home, SELFHEAL_CRONTAB=str(tmp_path / "no-such-crontab"))
    proc = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "--cron"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 3
    assert f"there is no '{tmp_path / 'no-such-crontab'}' command here" in proc.stderr
    assert "installing" not in proc.stderr  # it stopped before doing anything


@pytest.mark.slow
def test_install_cron_refuses_to_rewrite_a_crontab_it_cannot_read(home: Path, crontab: tuple[Path, Path]) -> None:
    """`crontab -l` failing for another reason than "no crontab" must not be taken for an empty table."""
    crontab[0].write_text("#!/bin/sh\necho 'crontab: permission denied' >&2\nexit 1\n")
    proc = install(home, crontab, "--cron")
    assert proc.returncode == 3 and "cannot read the crontab" in proc.stderr and "nothing changed" in proc.stderr
    assert crontab[1].read_text() == USER_LINES


@pytest.mark.slow
def test_install_re_creates_a_venv_copied_from_another_folder(tmp_path: Path) -> None:
    """A skill copied with its .venv (whose scripts run the source's Python) gets a venv of its own."""
    source, skill = tmp_path / "source", tmp_path / "skill"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(source / ".venv")], check=True, timeout=120)
    skill.mkdir()
    for name in ("install.sh", "pyproject.toml", "skill.yaml"):
        shutil.copy(ROOT / name, skill / name)
    shutil.copytree(source / ".venv", skill / ".venv", symlinks=True)
    # Offline on purpose: the dependencies then fail to install, after the venv has been judged and re-made.
    env = {**script_env(tmp_path / "state"), "PYTHON": PYTHON, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}
    argv = ["bash", str(skill / "install.sh")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert f"re-creating {skill / '.venv'}: it was made for" in proc.stderr
    assert str(source / ".venv") in proc.stderr
    assert f'VIRTUAL_ENV="{skill / ".venv"}"' in (skill / ".venv" / "bin" / "activate").read_text() or (
        f"VIRTUAL_ENV='{skill / '.venv'}'" in (skill / ".venv" / "bin" / "activate").read_text()
    )
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert "re-creating" not in again.stderr  # its own venv is kept
