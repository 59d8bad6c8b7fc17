"""Runs that are killed, and commands that will not die: one copy per task, and no daemon outlives its run.

Real processes throughout: retry_run.py as cron starts it, SIGKILL sent to it, commands that double-fork
and call setsid() to escape their process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import PYTHON, SCRIPTS, script_env

RETRY_RUN = str(SCRIPTS / "retry_run.py")

# Appends its pid to `pids`, notes which earlier copies are alive beside it in `seen`, then sleeps.
ONE_COPY = textwrap.dedent("""
    import os, pathlib, sys, time
    pids, seen, seconds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), float(sys.argv[3])
    with pids.open("a") as f:
        f.write(f"{os.getpid()}\\n")
    def live(pid):
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] not in "ZX"
        except OSError:
            return False
    others = [int(p) for p in pids.read_text().split() if int(p) != os.getpid()]
    with seen.open("a") as f:
        f.write(json.dumps([p for p in others if live(p)]) + "\\n")
    time.sleep(seconds)
""").replace("import os,", "import json, os,")

# Forks a child that calls setsid() and forks the daemon, then exits at once: the daemon belongs to no
# process group or tree of the command. The daemon writes its pid and sleeps; the command sleeps `argv[2]`.
DAEMON = textwrap.dedent("""
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            fd = os.open(os.devnull, os.O_RDWR)
            for stream in (0, 1, 2):
                os.dup2(fd, stream)
            with open(sys.argv[1] + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(sys.argv[1] + ".tmp", sys.argv[1])
            time.sleep(300)
        os._exit(0)
    time.sleep(float(sys.argv[2]))
    print("command done")
""")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def retry_run(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [PYTHON, RETRY_RUN, *args], check=False, capture_output=True, env=script_env(home), timeout=timeout
    )


def as_json(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON object, got {proc.stdout!r} ({proc.stderr!r})"
    result: dict[str, Any] = json.loads(lines[0])
    return result


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids a test may leave alive when it fails; killed afterwards whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def killed_runner_leaves_its_command(home: Path, tmp_path: Path, leftovers: list[int]) -> int:
    """retry_run --task nightly runs the one-copy command; SIGKILL the runner; its command lives on."""
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    runner = subprocess.Popen(
        [PYTHON, RETRY_RUN, "--task", "nightly", "--", PYTHON, "-c", ONE_COPY, str(pids), str(seen), "300"],
        env=script_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: seen.exists() and seen.read_text().count("\n") == 1, "the first copy to start")
    first = int(pids.read_text().split()[0])
    leftovers.append(first)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    time.sleep(0.2)
    assert alive(first), "the command should outlive its SIGKILLed runner (that is the problem)"
    return first


def test_a_sigkilled_runs_command_is_stopped_by_the_next_run_so_one_copy_runs(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    """The next run of the task finds the orphan (its runner is dead, it is not), stops it, then runs."""
    first = killed_runner_leaves_its_command(home, tmp_path, leftovers)
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    done = retry_run(home, "--json", "--task", "nightly", "--", PYTHON, "-c", ONE_COPY, str(pids), str(seen), "0.5")
    result = as_json(done)
    assert done.returncode == 0, done.stderr
    second = int(pids.read_text().split()[1])
    assert [json.loads(line) for line in seen.read_text().splitlines()] == [[], []]  # never beside the first
    assert not alive(first)
    assert [(o["pid"], o["run_id"].startswith("nightly-")) for o in result["orphans_stopped"]] == [(first, True)]
    assert f"stopping pid {first}" in done.stderr.decode()
    assert second != first


def test_no_kill_orphans_refuses_with_exit_4_naming_the_orphans_pid(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    """Told not to kill, the next run starts nothing, exits 4 and says which pid is still running."""
    first = killed_runner_leaves_its_command(home, tmp_path, leftovers)
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    argv = ["--task", "nightly", "--no-kill-orphans", "--", PYTHON, "-c", ONE_COPY, str(pids), str(seen), "0.5"]
    refused = retry_run(home, "--json", *argv)
    assert refused.returncode == 4
    result = as_json(refused)
    assert result["ok"] is False and f"pid {first}" in result["message"]
    assert f"pid {first}" in refused.stderr.decode() and "Traceback" not in refused.stderr.decode()
    assert alive(first) and pids.read_text().split() == [str(first)]  # left alone, nothing started
    again = retry_run(home, *argv)  # and it keeps saying so: the record still names the orphan
    assert again.returncode == 4 and f"pid {first}".encode() in again.stderr


def test_a_daemon_started_in_the_first_second_is_killed_at_the_timeout_and_reported(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    """Double fork + setsid escapes the process group and the descendant snapshot; not the subreaper."""
    pidfile = tmp_path / "daemon.pid"
    done = retry_run(
        home, "--json", "--timeout", "2", "--max-attempts", "1", "--", PYTHON, "-c", DAEMON, str(pidfile), "60"
    )
    daemon = int(pidfile.read_text())
    leftovers.append(daemon)
    result = as_json(done)
    assert done.returncode == 3 and result["error_class"] == "timeout"
    wait_until(lambda: not alive(daemon), "the daemon to be gone", timeout=5)
    assert [(d["pid"], d["stopped"]) for d in result["left_behind"]] == [(daemon, True)]


def test_a_successful_command_that_leaves_a_daemon_is_reported_and_the_daemon_stopped(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    pidfile = tmp_path / "daemon.pid"
    done = retry_run(home, "--json", "--", PYTHON, "-c", DAEMON, str(pidfile), "0.5")
    daemon = int(pidfile.read_text())
    leftovers.append(daemon)
    result = as_json(done)
    assert done.returncode == 0 and result["ok"] is True
    assert not alive(daemon)
    assert [(d["pid"], d["stopped"]) for d in result["left_behind"]] == [(daemon, True)]
    assert "DAEMON" not in result["left_behind"][0]["cmd"] and result["left_behind"][0]["cmd"]
    assert f"left pid {daemon}" in done.stderr.decode()


# retry_run.py under a wall clock stepped back 30 s once the command has started (as NTP or `date -s` would):
# every start time in seconds since the epoch read after that is 30 s earlier. argv[1]: the file whose
# existence marks the step; the rest: retry_run.py and its arguments.
STEPPED_RUN = textwrap.dedent("""
    import os, runpy, sys
    import psutil._pslinux as linux
    real, mark = linux.boot_time, sys.argv[1]
    linux.boot_time = lambda: real() - (30.0 if os.path.exists(mark) else 0.0)
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_a_daemon_left_while_the_wall_clock_is_stepped_back_is_still_the_commands_and_stopped(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    """The daemon starts after the step, so its start in seconds since the epoch reads older than the command's:
    by clock ticks since boot it is younger, so it is still known as the command's own, reported and stopped."""
    pidfile, mark = tmp_path / "daemon.pid", tmp_path / "stepped"
    daemon_file = tmp_path / "daemon.py"
    daemon_file.write_text(DAEMON.replace("sys.argv[2]", "'0.5'"))
    # The command marks the step once it runs (its start was read before), waits, then leaves the daemon.
    script = "import sys, time; open(sys.argv[2], 'w').close(); time.sleep(0.5); exec(open(sys.argv[3]).read())"
    command = [PYTHON, "-c", script, str(pidfile), str(mark), str(daemon_file)]
    done = subprocess.run(
        [PYTHON, "-c", STEPPED_RUN, str(mark), RETRY_RUN, "--json", "--", *command],
        check=False,
        capture_output=True,
        env=script_env(home),
        timeout=60,
    )
    daemon = int(pidfile.read_text())
    leftovers.append(daemon)
    result = as_json(done)
    assert done.returncode == 0 and result["ok"] is True, done.stderr
    assert not alive(daemon)
    assert [(d["pid"], d["stopped"]) for d in result["left_behind"]] == [(daemon, True)]


def test_keep_daemons_reports_the_daemon_and_leaves_it_running(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    pidfile = tmp_path / "daemon.pid"
    done = retry_run(home, "--json", "--keep-daemons", "--", PYTHON, "-c", DAEMON, str(pidfile), "0.5")
    daemon = int(pidfile.read_text())
    leftovers.append(daemon)
    result = as_json(done)
    assert done.returncode == 0
    assert alive(daemon)
    assert [(d["pid"], d["stopped"]) for d in result["left_behind"]] == [(daemon, False)]
    assert f"left pid {daemon}" in done.stderr.decode()


def test_run_next_stops_a_daemon_its_task_leaves_and_says_so_in_the_task_log(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    """The task runner is a subreaper too: the daemon is stopped, and the task's log names it."""
    pidfile = tmp_path / "daemon.pid"
    env = script_env(home)
    tasks = [PYTHON, str(SCRIPTS / "tasks.py")]
    subprocess.run(
        [*tasks, "add", "starts-a-daemon", "--", PYTHON, "-c", DAEMON, str(pidfile), "0.5"], env=env, check=True
    )
    done = subprocess.run([*tasks, "run-next", "--json"], env=env, capture_output=True, timeout=60, check=False)
    daemon = int(pidfile.read_text())
    leftovers.append(daemon)
    assert done.returncode == 0 and as_json(done)["exec_state"] == "END", done.stderr
    assert not alive(daemon)
    log = (home / "tasks" / "starts-a-daemon.log").read_text()
    assert f"the command left pid {daemon} (" in log and "running: stopped" in log


def test_with_kill_orphans_off_run_next_refuses_while_a_dead_runners_command_runs(
    home: Path, tmp_path: Path, leftovers: list[int], write_config: Callable[[str], Path]
) -> None:
    """process.kill_orphans: false. The runner is SIGKILLed; the next run-next (which checks for stuck
    tasks first) leaves its command alone, runs nothing beside it, and says which pid is in the way."""
    write_config("process: {kill_orphans: false, kill_grace_s: 1}\n")
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    env = script_env(home)
    tasks = [PYTHON, str(SCRIPTS / "tasks.py")]
    subprocess.run(
        [*tasks, "add", "nightly", "--", PYTHON, "-c", ONE_COPY, str(pids), str(seen), "300"], env=env, check=True
    )
    runner = subprocess.Popen([*tasks, "run-next"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: seen.exists() and seen.read_text().count("\n") == 1, "the first copy to start")
    first = int(pids.read_text().split()[0])
    leftovers.append(first)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    again = subprocess.run([*tasks, "run-next", "--json"], env=env, capture_output=True, timeout=60, check=False)
    result = as_json(again)
    assert again.returncode == 4 and result["outcome"] == "not_attempted", again.stderr
    assert f"pid {first}" in result["message"]
    assert alive(first) and pids.read_text().split() == [str(first)]


# A subreaper (as every script is) running a command in one thread while the process starts others: another
# workflow step's command, a function step's subprocess. argv: none. Prints what the command's run reported
# left behind, whether the long sibling survived it, and the exit status the quick sibling's Popen got.
SIBLINGS = textwrap.dedent("""
    import json, subprocess, sys, threading, time
    from selfheal.core.process import become_subreaper, run_command
    assert become_subreaper()
    result = {}
    def run():
        result["r"] = run_command([sys.executable, "-c", "import time; time.sleep(1.5)"], tick_s=0.1)
    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)  # the command has started: what follows is younger than it, and a child of this process
    sleeper = subprocess.Popen(["sleep", "30"])
    quick = subprocess.Popen(["sh", "-c", "exit 7"])
    thread.join()
    alive = sleeper.poll() is None
    code = quick.wait()
    sleeper.kill()
    sleeper.wait()
    print(json.dumps({"left": [d.pid for d in result["r"].left_behind], "sleeper": sleeper.pid,
                      "alive": alive, "quick": code}))
""")


def test_a_command_never_takes_a_process_its_runner_started_beside_it_for_its_own() -> None:
    """In a subreaper every child younger than a command was taken for a daemon the command had left: a
    parallel workflow step's process was stopped when its sibling step ended (the next run found it failed,
    'killed by SIGTERM'), and a sibling's exit status was reaped from under its Popen, which then read 0: a
    failed step passed as done (CI once completed a task whose steps never finished). Only a process that
    carries the command's own mark in its environment is adopted, and only what the command's run knows as
    its own is reaped."""
    done = subprocess.run(
        [PYTHON, "-c", SIBLINGS], check=False, capture_output=True, env=script_env(Path("/nonexistent")), timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["left"] == [] and report["alive"], report
    assert report["quick"] == 7, report
