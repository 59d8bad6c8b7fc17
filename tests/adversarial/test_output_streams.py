"""The scripts' own output where it cannot be delivered: a file on a full disk, a terminal nobody reads, and
standard descriptors closed when a script starts.

- `health_check.py --json > status.json` on a full disk (or `> /dev/full`) exited 0 with nothing written
  and nothing said when the output was large; when it was small, the failure came at the last flush as two
  tracebacks and "a bug in self-heal", exit 120. Now one line says standard output could not be written,
  and why, and the exit is 3.
- A terminal whose reader stopped (a frozen terminal emulator or ssh client): poll() calls a terminal
  writable with a single byte of room, and the PIPE_BUF write that followed waited for the rest for good.
  A script's diagnostics hung it there, and `retry_run.py --timeout 2` never timed its command out. Now a
  terminal is written without waiting (a non-blocking description of its own), as a pipe is.
- A script started with `<&-` or `2>&-` had the descriptor put on /dev/null, but not for what it runs: the
  command started with that descriptor closed again, and its first file took the number.

Each case runs a real process on a real pipe, terminal or device.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, SCRIPTS, script_env

pytestmark = pytest.mark.slow

PRINTING_SCRIPT = """
import sys
from selfheal import cli
def main(argv):
    for n in range(int(sys.argv[1])):
        print(f"line {n} " + "x" * 40)
    return 0
sys.exit(cli.run_main(main))
"""


def python_env(**extra: str) -> dict[str, str]:
    """Our package importable; Python's own stdout buffering as a user has it (not PYTHONUNBUFFERED)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONPATH": str(SCRIPTS), **extra}


# -- a file that cannot be written ------------------------------------------------------------------------------


@pytest.mark.parametrize("lines", [1, 100_000], ids=["small, failing at the last flush", "large, failing at once"])
def test_stdout_to_a_full_device_says_so_once_and_exits_3(lines: int) -> None:
    """/dev/full fails every write with ENOSPC, as a file on a full disk does."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [PYTHON, "-c", PRINTING_SCRIPT, str(lines)],
            stdout=full,
            stderr=subprocess.PIPE,
            env=python_env(),
            timeout=120,
            check=False,
        )
    said = proc.stderr.decode()
    assert proc.returncode == 3, said
    assert "Traceback" not in said and "a bug in self-heal" not in said
    (line,) = said.splitlines()
    assert "standard output" in line and os.strerror(28) in line


def test_a_scripts_json_to_a_full_disk_exits_3(home: Path, tmp_path: Path) -> None:
    """A real script's result into a file on a full disk (a file limited by RLIMIT_FSIZE: the same EFBIG a
    quota gives, without mounting anything; breakers.py writes no file of its own to be limited too)."""
    out = tmp_path / "breakers.json"

    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))

    with out.open("wb") as handle:
        proc = subprocess.run(
            [PYTHON, str(SCRIPTS / "breakers.py"), "list", "--json"],
            stdout=handle,
            stderr=subprocess.PIPE,
            env={k: v for k, v in script_env(home).items() if k != "PYTHONUNBUFFERED"},
            preexec_fn=limit,
            timeout=60,
            check=False,
        )
    said = proc.stderr.decode()
    assert proc.returncode == 3, said
    assert "Traceback" not in said
    assert "standard output could not be written" in said and os.strerror(27) in said


# -- a terminal nobody reads ------------------------------------------------------------------------------------


def test_a_terminal_that_stops_reading_holds_a_scripts_diagnostics_the_bound_not_for_good() -> None:
    """Lines to a terminal whose reader is frozen: each stretch without progress waits cli.STALL_S at most,
    then the lines are dropped; the script finishes instead of hanging in a write."""
    script = """
import sys
from selfheal import cli
def main(argv):
    for n in range(5000):
        cli.say(f"line {n} " + "x" * 70)
    return 0
sys.exit(cli.run_main(main))
"""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [PYTHON, "-c", script], stdout=subprocess.DEVNULL, stderr=slave, env=python_env(), start_new_session=True
        )
        os.close(slave)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
            proc.wait()
    finally:
        os.close(master)


def test_retry_run_times_its_command_out_with_its_output_on_a_terminal_nobody_reads(home: Path) -> None:
    """`retry_run.py --timeout 2 -- yes` in a terminal that froze: the command's output filled the terminal,
    the copy of it waited in a write, and the timeout never came."""
    master, slave = os.openpty()
    try:
        started = time.monotonic()
        proc = subprocess.Popen(
            [PYTHON, str(SCRIPTS / "retry_run.py"), "--timeout", "2", "--max-attempts", "1", "--", "yes", "output"],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=script_env(home),
            start_new_session=True,
        )
        os.close(slave)
        try:
            assert proc.wait(timeout=60) == 3
        finally:
            proc.kill()
            proc.wait()
        assert time.monotonic() - started < 50  # not the test's own limit: the command's timeout acted
    finally:
        os.close(master)


# -- descriptors closed at start --------------------------------------------------------------------------------


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_a_command_a_script_runs_gets_dev_null_where_the_script_got_a_closed_descriptor(
    closed: int, tmp_path: Path
) -> None:
    """`health_check.py <&-` runs `openclaw cron run` with stdin inherited: it started with descriptor 0
    closed, and the first file it opened became its standard input."""
    seen = tmp_path / "seen"
    child = (  # what the command has at that number, written to a file it opens only after looking
        "import os, sys\n"
        "try:\n"
        f"    found = os.readlink('/proc/self/fd/{closed}')\n"
        "except OSError:\n"
        "    found = 'closed'\n"
        "open(sys.argv[1], 'w').write(found)\n"
    )
    script = (
        "from selfheal._bootstrap import standard_streams; standard_streams()\n"
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {child!r}, sys.argv[1]], check=False)\n"
    )
    # The shell closes the descriptor, as `<&-` or `2>&-` would.
    subprocess.run(
        ["sh", "-c", f'exec {closed}>&-; exec "$0" -c "$1" "$2"', PYTHON, script, str(seen)],
        env=python_env(),
        timeout=60,
        check=True,
    )
    assert seen.read_text().strip() == "/dev/null"
