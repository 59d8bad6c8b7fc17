"""The scripts' own stdout and stderr on a real pipe whose reader is slow, stalls, or is frozen (cron's
`2>&1 | mailer`): every line reaches a live reader in order, and a stalled one costs a bounded wait."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PYTHON, SCRIPTS, script_env
from selfheal import cli

TASKS = str(SCRIPTS / "tasks.py")


@contextlib.contextmanager
def full_pipe() -> Iterator[tuple[cli.RedactedBinary, int]]:
    """Our output as a real pipe that no one has read yet and that holds not one byte more (its reader
    stopped), wrapped as the scripts wrap stderr; and the pipe's read end."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # only to fill it here: the wrapper sees a blocking pipe, as inherited
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"." * 65536)
    os.set_blocking(write_end, True)
    raw = os.fdopen(write_end, "wb")
    try:
        yield cli.RedactedBinary(raw, stall_s=0.3), read_end
    finally:
        raw.close()
        os.close(read_end)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            out += chunk
    os.set_blocking(fd, True)
    return bytes(out)


def test_a_line_to_a_stalled_reader_waits_the_bound_then_is_dropped_and_said_when_it_reads_again() -> None:
    """The reader stopped: a line waits `stall_s`, no more, and is dropped; the next one does not wait at
    all; once the reader takes again, the next line arrives after a note saying how much was lost."""
    with full_pipe() as (stream, read_end):
        started = time.monotonic()
        stream.write(b"first\n")
        first = time.monotonic() - started
        stream.write(b"second\n")
        second = time.monotonic() - first - started
        assert 0.25 < first < 2 and second < 0.1
        assert stream.dropped == len(b"first\nsecond\n")
        drain(read_end)
        stream.write(b"third\n")
        got = drain(read_end).decode()
    assert got.endswith("third\n") and "first" not in got and "second" not in got
    assert "13 bytes of self-heal's own messages were not delivered" in got


def test_a_stop_signal_ends_a_wait_for_a_stalled_reader_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line waiting for a stalled reader stops waiting the moment the script is told to stop (hurry_on),
    not at the end of the bound; and later lines do not wait at all."""

    class Flag:
        def __init__(self) -> None:
            self.signum: int | None = None
            self.fileno, self._w = os.pipe()

    flag = Flag()
    monkeypatch.setattr(cli, "_stop", None)
    cli.hurry_on(flag)
    with full_pipe() as (stream, _):
        stream.stall_s = 30.0
        threading.Timer(0.2, lambda: (setattr(flag, "signum", signal.SIGTERM), os.write(flag._w, b"\0"))).start()
        started = time.monotonic()
        stream.write(b"stopped: interrupted\n")
        assert time.monotonic() - started < 2
        stream.write(b"exit\n")
        assert time.monotonic() - started < 2
    os.close(flag.fileno)
    os.close(flag._w)


SLOW_READER = """
import os, sys, time
time.sleep(float(sys.argv[2]))  # the reader pauses first (a busy mailer), then reads a little at a time
out = bytearray()
while chunk := os.read(0, 1024):
    out += chunk
    time.sleep(0.001)
open(sys.argv[1], "wb").write(out)
"""


def test_a_slow_reader_gets_every_line_in_order(tmp_path: Path) -> None:
    """A reader that takes 1 KB at a time gets all 2000 lines (more than a pipe holds), in order."""
    received = tmp_path / "received"
    reader = subprocess.Popen([sys.executable, "-c", SLOW_READER, str(received), "0.2"], stdin=subprocess.PIPE)
    assert reader.stdin is not None
    stream = cli.RedactedBinary(reader.stdin, stall_s=5.0)
    _write_numbered(stream, reader, received)


def test_stdout_waits_for_a_reader_that_pauses_in_a_script_that_sigterm_simply_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`analyze_logs.py | less`, the person reading the first page for a while: a script's stdout is its
    result, not a diagnostic, so where nothing needs the script to stay responsive (SIGTERM ends it, Ctrl-C
    interrupts the wait) it waits for the reader as long as it lives, and no line is lost."""
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_DFL)
    monkeypatch.setattr(cli, "STALL_S", 0.3)  # a pause of 1 s would be a stall on stderr
    received = tmp_path / "received"
    reader = subprocess.Popen([sys.executable, "-c", SLOW_READER, str(received), "1"], stdin=subprocess.PIPE)
    assert reader.stdin is not None
    stream = cli.RedactedBinary(reader.stdin, stall_s=None)
    _write_numbered(stream, reader, received)


def test_stdout_of_a_script_that_handles_sigterm_itself_waits_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that routes SIGTERM to a stop flag of its own (run-next, workflow.py) must stay responsive: its
    stdout waits for a stalled reader no longer than its stderr would."""
    monkeypatch.setattr(signal, "getsignal", lambda signum: lambda *_: None)
    monkeypatch.setattr(cli, "STALL_S", 0.3)
    with full_pipe() as (stream, _):
        stream.stall_s = None
        started = time.monotonic()
        stream.write(b"{}\n")
        assert time.monotonic() - started < 2 and stream.dropped == 3


def _write_numbered(stream: cli.RedactedBinary, reader: subprocess.Popen[bytes], received: Path) -> None:
    """Write 2000 numbered lines through `stream` to `reader`; check it got them all, in order."""
    assert reader.stdin is not None
    for n in range(2000):
        stream.write(f"self-heal: line {n:05d} {'x' * 60}\n".encode())
    stream.finish()
    reader.stdin.close()
    reader.wait(timeout=30)
    lines = received.read_bytes().decode().splitlines()
    assert [line.split()[2] for line in lines] == [f"{n:05d}" for n in range(2000)]
    assert stream.dropped == 0


ECHOED = "for n in $(seq 1 20000); do echo line-$n-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done"  # 780 KB


def test_run_next_echo_to_a_reader_that_pauses_loses_nothing(home: Path, tmp_path: Path) -> None:
    """`tasks.py run-next --echo 2>&1 | reader`, the reader busy for longer than a line of ours waits for a
    stalled one: the echo is the command's output, held back (the command waits) and not dropped, so the
    reader gets every line of it, in order."""
    added = subprocess.run(
        [PYTHON, TASKS, "add", "echoed", "--shell", ECHOED], env=script_env(home), capture_output=True, check=False
    )
    assert added.returncode == 0, added.stderr
    received = tmp_path / "received"
    reader = subprocess.Popen(
        [sys.executable, "-c", SLOW_READER, str(received), str(cli.STALL_S + 1)], stdin=subprocess.PIPE
    )
    assert reader.stdin is not None
    run = subprocess.run(
        [PYTHON, TASKS, "run-next", "--echo"],
        env=script_env(home),
        stdout=reader.stdin,
        stderr=reader.stdin,
        timeout=60,
        check=False,
    )
    reader.stdin.close()
    reader.wait(timeout=30)
    assert run.returncode == 0
    lines = [line for line in received.read_bytes().decode().splitlines() if line.startswith("line-")]
    assert [line.split("-")[1] for line in lines] == [str(n) for n in range(1, 20001)]


FLOODING_SCRIPT = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, file=open(sys.argv[1], "w"), all_threads=True)  # why, if it hangs
from selfheal import cli
def main(argv):
    for n in range(100000):
        print(f"line {n} " + "x" * 40)
    return 0
sys.exit(cli.run_main(main))
"""


def why_still_running(process: subprocess.Popen[bytes], stacks: Path) -> str:
    """What the kernel and Python say a process that outlived its signal is doing: its signal dispositions
    and mask (an inherited ignore or block), where it sleeps, and its threads' stacks (faulthandler)."""
    proc = Path(f"/proc/{process.pid}")
    status = [line for line in (proc / "status").read_text().splitlines() if line.startswith(("State", "Sig", "Shd"))]
    wchan = (proc / "wchan").read_text()
    process.send_signal(signal.SIGUSR1)
    time.sleep(1)
    return "\n".join([*status, f"wchan: {wchan}", stacks.read_text() if stacks.exists() else "(no stacks)"])


def test_ctrl_c_while_stdout_waits_for_a_stalled_reader_exits_130_at_once(tmp_path: Path) -> None:
    """`tasks.py list 2>&1 | less`, less gone still (SIGSTOP): Ctrl-C ends the wait for the reader, and the
    last word (`interrupted`) does not wait for it in turn: exit 130 at once, no traceback, no hang at exit."""
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    reader.send_signal(signal.SIGSTOP)
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    script = subprocess.Popen(
        [PYTHON, "-c", FLOODING_SCRIPT, str(tmp_path / "stacks.txt")],
        env=env,
        stdout=reader.stdin,
        stderr=reader.stdin,
        # As from a terminal: a test run in the background (`nohup ... &`, as CI may be) hands its children
        # SIGINT ignored, and Python keeps it so; the script then never saw the Ctrl-C this test sends.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - one call, no locks
    )
    reader.stdin.close()
    try:
        # Until the pipe is full and the script waits for the reader in poll() (a fixed half second was not
        # enough on a loaded machine: the interrupt could come while the script was still starting).
        deadline = time.monotonic() + 30
        wchan = Path(f"/proc/{script.pid}/wchan")
        while time.monotonic() < deadline and "poll" not in (wchan.read_text() if wchan.exists() else ""):
            time.sleep(0.02)
        started = time.monotonic()
        script.send_signal(signal.SIGINT)
        try:
            assert script.wait(timeout=10) == 130
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 10 s after Ctrl-C:\n{why_still_running(script, tmp_path / 'stacks.txt')}")
        assert time.monotonic() - started < cli.STALL_S
    finally:
        script.kill()
        script.wait()
        reader.send_signal(signal.SIGCONT)
        reader.kill()
        reader.wait()
