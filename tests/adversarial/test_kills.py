"""Runs that are killed, and commands that will not die: one copy per task, and no daemon outlives its run.

Real processes throughout: retry_run.py as cron starts it, SIGKILL sent to it, commands that double-fork
and call setsid() to escape their process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import PYTHON, SCRIPTS, script_env
from selfheal.core import process
from selfheal.core.process import CommandResult, ProcessIdentity, identify, kill_tree, run_command
from selfheal.core.runner import run_with_retry
from selfheal.core.runs import OrphanRunning, stop_orphans
from selfheal.state.root import StateRoot, write_json
from selfheal.state.runs import ProcessRef, RunState

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
    # The way to have it stopped is the flag this run was given; the setting is on and need not change.
    assert "or run without --no-kill-orphans to have it stopped" in result["message"], result["message"]
    assert "process.kill_orphans" not in result["message"]
    assert alive(first) and pids.read_text().split() == [str(first)]  # left alone, nothing started
    again = retry_run(home, *argv)  # and it keeps saying so: the record still names the orphan
    assert again.returncode == 4 and f"pid {first}".encode() in again.stderr


def test_a_python_caller_that_turned_the_stopping_off_is_told_its_own_argument(
    home: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    """run_with_retry(kill_orphans=False) refuses beside an orphan (NotAttempted, exit 4) and names the argument
    that has it stopped, not a command-line flag the caller never had."""
    first = killed_runner_leaves_its_command(home, tmp_path, leftovers)
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    with pytest.raises(OrphanRunning) as refused:
        run_with_retry([PYTHON, "-c", ONE_COPY, str(pids), str(seen), "0"], task="nightly", kill_orphans=False)
    message = str(refused.value)
    assert refused.value.exit_code == 4 and f"pid {first}" in message, message
    assert "or pass kill_orphans=True to have it stopped" in message and "--no-kill-orphans" not in message, message
    assert alive(first) and pids.read_text().split() == [str(first)]


def test_kill_orphans_off_in_the_settings_names_the_setting_not_only_the_flag(
    home: Path, tmp_path: Path, leftovers: list[int], write_config: Callable[[str], Path]
) -> None:
    """process.kill_orphans: false in config.yaml and no --no-kill-orphans: the refusal (exit 4) says the setting
    keeps the orphan alive; it told the user to run without a flag they had not given."""
    first = killed_runner_leaves_its_command(home, tmp_path, leftovers)
    config_file = write_config("process: {kill_orphans: false}\n")
    pids, seen = tmp_path / "pids", tmp_path / "seen"
    refused = retry_run(home, "--json", "--task", "nightly", "--", PYTHON, "-c", ONE_COPY, str(pids), str(seen), "0")
    result = as_json(refused)
    assert refused.returncode == 4 and f"pid {first}" in result["message"], refused.stderr
    assert f"process.kill_orphans: true in {config_file}" in result["message"], result["message"]
    assert alive(first) and pids.read_text().split() == [str(first)]


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
    tasks first) leaves its command alone, runs nothing beside it, and says which pid is in the way and that
    the setting turns the stopping on (not retry_run.py's --no-kill-orphans: tasks.py has no such flag)."""
    config_file = write_config("process: {kill_orphans: false, kill_grace_s: 1}\n")
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
    assert f"set process.kill_orphans: true in {config_file}" in result["message"], result["message"]
    assert "--no-kill-orphans" not in result["message"] + again.stderr.decode()
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


# -- pid reuse: the kernel hands a finished process's pid to the next fork; forced here through ns_last_pid


def _can_force_pids() -> bool:
    """Whether this test may choose the next pid (root in its pid namespace: /proc/sys/kernel/ns_last_pid)."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "r+") as fh:
            fh.write(fh.read().strip())
        return True
    except OSError:
        return False


needs_pid_control = pytest.mark.skipif(not _can_force_pids(), reason="cannot choose the next pid here (not root)")


def force_next_pid(pid: int) -> None:
    """The next process forked on this machine gets `pid` (unless another fork comes first: callers check)."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
        fh.write(str(pid - 1))


def gone(pid: int) -> bool:
    """The pid is free: the process ended and was reaped."""
    return not os.path.exists(f"/proc/{pid}")


def _stranger_takes_the_commands_pid(tmp_path: Path, leftovers: list[int], timeout: float | None) -> bool:
    """One try of the test below; False if another fork took the freed pid first."""
    escapee = tmp_path / "escapee.pid"
    # The escapee ignores SIGTERM (so it outlives the timeout's SIGTERM) and holds the command's output open.
    script = f"setsid sh -c 'trap \"\" TERM; echo $$ > {escapee}; exec sleep 300' & sleep 0.3"
    if timeout is not None:
        script += "; exec sleep 300"  # the command itself, alone in its group, waits for the timeout
    started: list[ProcessIdentity | None] = []
    results: list[CommandResult] = []

    def run() -> None:
        results.append(
            run_command(
                ["sh", "-c", script],
                timeout_s=timeout,
                drain_s=3.0,
                kill_grace_s=0.5,
                tick_s=0.1,
                on_start=started.append,
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: bool(started), "the command to start")
    leader = started[0].pid if started[0] else 0
    wait_until(lambda: gone(leader) or not thread.is_alive(), "the command's pid to be freed or its run to end")
    stranger = None
    if thread.is_alive():  # its pid is free while its run goes on: hand it to a stranger
        force_next_pid(leader)
        stranger = subprocess.Popen(
            ["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True
        )
    thread.join(timeout=30)
    if escapee.exists():
        leftovers.append(int(escapee.read_text()))
    if stranger is None:
        return True  # the pid stayed the command's until its run ended: nothing could be mistaken for it
    assert stranger.stdout is not None
    child = int(stranger.stdout.readline())
    leftovers.extend([stranger.pid, child])
    try:
        if stranger.pid != leader:
            return False
        assert alive(child), "the stranger's child was stopped as the command's daemon"
        assert stranger.poll() is None, "the stranger's group was killed with the command's"
        assert child not in [item.pid for item in results[0].left_behind]
        return True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


@needs_pid_control
@pytest.mark.parametrize("timeout", [None, 0.5], ids=["ends", "times-out"])
def test_a_stranger_given_the_finished_commands_pid_is_never_taken_for_what_the_command_left(
    tmp_path: Path, leftovers: list[int], timeout: float | None
) -> None:
    """The command ends (or is stopped at its timeout) while an escaped child of its own still holds its
    output open. Its pid, reaped, went to the next fork: a stranger leading a session of its own, with a
    child. The stranger's child was taken for a daemon the command left (looked up as the children of the
    command's pid), reported and stopped; at a timeout the stranger's whole group got the SIGKILL meant for
    the command's. Neither is touched now."""
    for _ in range(5):
        if _stranger_takes_the_commands_pid(tmp_path, leftovers, timeout):
            return
    pytest.skip("another process took the freed pid every time")


# A subreaper running a command that starts a short-lived child, while the same process starts another
# child (a sibling workflow step's, a function step's) that is given that child's pid once it is reaped.
# argv: the file for the short-lived child's pid. Prints the sibling's exit status as its Popen read it.
REUSED_BY_SIBLING = textwrap.dedent("""
    import json, os, subprocess, sys, threading, time
    from selfheal.core.process import become_subreaper, run_command
    assert become_subreaper()
    pidfile = sys.argv[1]
    for _ in range(5):
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        thread = threading.Thread(
            target=run_command, args=(["sh", "-c", f"sleep 0.4 & echo $! > {pidfile}; sleep 1.5"],),
            kwargs={"tick_s": 0.05},
        )
        thread.start()
        while not (os.path.exists(pidfile) and open(pidfile).read().strip()):
            time.sleep(0.01)
        short = int(open(pidfile).read())
        while os.path.exists(f"/proc/{short}"):  # it ends, and its parent (the command's shell) reaps it
            time.sleep(0.005)
        with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
            fh.write(str(short - 1))
        sibling = subprocess.Popen(["sh", "-c", "exit 7"])
        thread.join()
        code = sibling.wait()
        if sibling.pid == short:
            print(json.dumps({"sibling": code}))
            break
    else:
        print(json.dumps({"sibling": None}))
""")


@needs_pid_control
def test_a_siblings_exit_status_is_not_reaped_when_it_inherits_the_pid_of_a_commands_finished_child(
    tmp_path: Path,
) -> None:
    """A command's short-lived child, seen and remembered, ends; its pid goes to a child the runner starts
    beside the command. When the command's run ended, it reaped that zombie as its own (the pid was in its
    list), and the sibling's Popen read 0 for its exit 7: a failed step passed as done."""
    done = subprocess.run(
        [PYTHON, "-c", REUSED_BY_SIBLING, str(tmp_path / "short.pid")],
        check=False,
        capture_output=True,
        env=script_env(Path("/nonexistent")),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    if report["sibling"] is None:
        pytest.skip("another process took the freed pid every time")
    assert report["sibling"] == 7, report


def _stranger_takes_the_orphans_pid(tmp_path: Path, leftovers: list[int]) -> bool:
    """One try of the test below; False if another fork took the freed pid first."""
    escapee = tmp_path / "escapee.pid"
    escapee.unlink(missing_ok=True)
    script = f"setsid sh -c 'trap \"\" TERM; echo $$ > {escapee}; exec sleep 300' & exec sleep 300"
    command = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    wait_until(lambda: escapee.exists() and bool(escapee.read_text().strip()), "the escapee to start")
    leftovers.append(int(escapee.read_text()))
    identity = identify(command.pid)
    assert identity is not None
    thread = threading.Thread(target=kill_tree, args=(identity,), kwargs={"grace_s": 2.0})
    thread.start()
    command.wait(timeout=10)  # its parent reaps it at the SIGTERM: the pid is free again
    force_next_pid(command.pid)
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    leftovers.append(stranger.pid)
    thread.join(timeout=30)
    try:
        if stranger.pid != command.pid:
            return False
        assert stranger.poll() is None, "the stranger's group got the SIGKILL meant for the command's"
        assert not alive(int(escapee.read_text()))
        return True
    finally:
        stranger.kill()
        stranger.wait()


@needs_pid_control
def test_stopping_an_orphan_never_kills_the_group_of_a_stranger_given_its_pid(
    tmp_path: Path, leftovers: list[int]
) -> None:
    """An earlier run's command dies at the SIGTERM while a child of its own that left its group ignores it;
    the command's pid, reaped by its parent, goes to a stranger leading a group of its own. The SIGKILL sent
    to the command's group after the grace went to the stranger's group."""
    for _ in range(5):
        if _stranger_takes_the_orphans_pid(tmp_path, leftovers):
            return
    pytest.skip("another process took the freed pid every time")


def freed(pid: int) -> bool:
    """The pid of a process not started by this one is free. Reaped here if it was re-parented to this process:
    a test process that ran a script in-process (call_script) is a subreaper from then on."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return gone(pid)


def _stranger_takes_an_orphans_childs_pid(attempt: int, monkeypatch: pytest.MonkeyPatch, leftovers: list[int]) -> bool:
    """One try of the test below; False if another fork took the freed pid first."""
    state = StateRoot.from_env().ensure()
    run_id = f"t-dead-{attempt}"
    runner = subprocess.Popen(["true"])  # the dead runner: ended, reaped
    runner_identity = identify(runner.pid)
    runner.wait()
    env = dict(os.environ, SELFHEAL_RUN_ID=run_id)
    command = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], env=env, start_new_session=True)
    wait_until(lambda: bool(psutil.Process(command.pid).children()), "the command's child")
    child = psutil.Process(command.pid).children()[0].pid
    leftovers.extend([command.pid, child])
    identity = identify(command.pid)
    assert identity is not None and runner_identity is not None
    record = RunState(
        run_id=run_id,
        task="t",
        host=socket.gethostname(),
        supervisor=ProcessRef(runner_identity.pid, runner_identity.create_time, runner_identity.start_ticks),
        child=ProcessRef(identity.pid, identity.create_time, identity.start_ticks),
    )
    write_json(state.run_file(run_id), record.to_json())
    strangers: list[subprocess.Popen[bytes]] = []

    def stop_then_reuse(who: ProcessIdentity, **kwargs: Any) -> list[int]:
        hit = kill_tree(who, **kwargs)
        if who.pid == command.pid:  # the command's tree is stopped: its child is dead, and its pid is free
            command.wait(timeout=10)
            wait_until(lambda: freed(child), "the child's pid to be freed")
            force_next_pid(child)
            strangers.append(subprocess.Popen(["sleep", "300"]))
            leftovers.append(strangers[0].pid)
        return hit

    with monkeypatch.context() as patch:
        patch.setattr(process, "kill_tree", stop_then_reuse)
        stopped = stop_orphans(state, "t", kill=True, grace_s=1.0)
    assert [o.pid for o in stopped] == [command.pid]
    assert not alive(command.pid)  # its child died with it (its pid may be the stranger's now)
    try:
        if not strangers or strangers[0].pid != child:
            return False
        assert strangers[0].poll() is None, "the stranger was stopped as the dead run's process"
        return True
    finally:
        for stranger in strangers:
            stranger.kill()
            stranger.wait()


@needs_pid_control
def test_an_orphans_process_that_ends_while_another_is_stopped_is_not_confused_with_a_stranger_given_its_pid(
    home: Path, monkeypatch: pytest.MonkeyPatch, leftovers: list[int]
) -> None:
    """A dead run left two processes (its command and the command's child, both carrying its run id). They
    are stopped one after the other; the child dies with its parent's tree, and its pid goes to a stranger
    before its turn comes. It was then looked up by the pid, its start read from the stranger, and the
    stranger was stopped as the orphan."""
    for attempt in range(5):
        if _stranger_takes_an_orphans_childs_pid(attempt, monkeypatch, leftovers):
            return
    pytest.skip("another process took the freed pid every time")


# A command that writes its pid, then floods its output.
FLOOD = ["sh", "-c", "echo $$ > flood.pid; exec yes"]


@contextlib.contextmanager
def flooding_into_a_frozen_reader(
    argv: list[str], home: Path, leftovers: list[int], *, both_streams: bool
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`argv` (a script running FLOOD) with its stdout, and its stderr too when `both_streams` (cron's `2>&1 |
    mailer`), into a pipe whose reader is frozen (SIGSTOP) once the command has started, and the pipe given time
    to fill: every write of the script to it would now wait for the reader. Yields (the script, the command's
    pid); the reader is thawed and killed afterwards."""
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    leftovers.append(reader.pid)
    assert reader.stdin is not None
    runner = subprocess.Popen(
        argv,
        cwd=home.parent,
        env=script_env(home),
        stdout=reader.stdin,
        stderr=reader.stdin if both_streams else subprocess.PIPE,
    )
    leftovers.append(runner.pid)
    reader.stdin.close()
    pidfile = home.parent / "flood.pid"
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the command to start")
    command = int(pidfile.read_text())
    leftovers.append(command)
    reader.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.3)  # the pipe fills
        yield runner, command
    finally:
        reader.send_signal(signal.SIGCONT)
        reader.kill()
        reader.wait()


def test_sigterm_is_acted_on_while_the_reader_of_its_output_is_sigstopped(home: Path, leftovers: list[int]) -> None:
    """The process reading retry_run's stdout is frozen (SIGSTOP) with the pipe full: SIGTERM to retry_run
    still stops the command's group at once and retry_run exits 3, without waiting for the reader to thaw."""
    argv = [PYTHON, RETRY_RUN, "--task", "flood", "--", *FLOOD]
    with flooding_into_a_frozen_reader(argv, home, leftovers, both_streams=False) as (runner, command):
        started = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        try:
            _, err = runner.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            raise AssertionError("retry_run did not act on SIGTERM while its reader was stopped") from None
        assert runner.returncode == 3 and time.monotonic() - started < 6
        assert not alive(command)
        assert b"stopped: " in err and b"Traceback" not in err


@pytest.mark.parametrize("script", ["retry_run", "run-next --echo"])
def test_sigterm_is_acted_on_while_the_one_reader_of_both_streams_is_sigstopped(
    home: Path, leftovers: list[int], script: str
) -> None:
    """cron's set-up, `2>&1 | mailer`, with the mailer frozen (SIGSTOP) and the pipe full: SIGTERM still stops
    the command's group at once and the script exits 3, though its own last words (`stopped: ...`, the
    dropped-output warning) cannot reach the reader: they are not waited for once it is stopping, and
    nothing is left in a buffer for Python's final flush to wait on."""
    if script == "retry_run":
        argv = [PYTHON, RETRY_RUN, "--task", "flood", "--", *FLOOD]
    else:
        tasks = str(SCRIPTS / "tasks.py")
        added = subprocess.run(
            [PYTHON, tasks, "add", "flood", "--", *FLOOD],
            cwd=home.parent,
            env=script_env(home),
            capture_output=True,
            check=False,
        )
        assert added.returncode == 0, added.stderr
        argv = [PYTHON, tasks, "run-next", "--echo"]
    with flooding_into_a_frozen_reader(argv, home, leftovers, both_streams=True) as (runner, command):
        started = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(timeout=8)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{script} did not act on SIGTERM while its stderr's reader was stopped") from None
        assert runner.returncode == 3 and time.monotonic() - started < 6
        assert not alive(command)
