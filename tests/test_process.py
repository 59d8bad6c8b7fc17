"""Running commands: live streaming, bounded tails, group kills, identity-checked kills, drains."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from selfheal.core.process import (
    CommandResult,
    ProcessIdentity,
    StopFlag,
    identify,
    kill_tree,
    run_command,
    still_running,
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def test_output_is_streamed_to_the_sinks_and_kept_as_a_tail() -> None:
    """Both streams reach their sinks whole; the result keeps the last bytes of each for classification."""
    out, err = io.BytesIO(), io.BytesIO()
    code = "import sys\nfor i in range(2000): print(i)\nprint('boom', file=sys.stderr)\nsys.exit(4)"
    result = run_command([sys.executable, "-c", code], stdout=out, stderr=err, tail_bytes=1024)
    assert result.exit_code == 4 and not result.ok
    assert out.getvalue() == b"".join(f"{i}\n".encode() for i in range(2000))
    assert err.getvalue() == b"boom\n"
    assert len(result.stdout_tail) == 1024 and result.stdout_tail.endswith(b"1999\n")
    assert result.stdout_bytes == len(out.getvalue())


def test_non_utf8_bytes_pass_through_untouched() -> None:
    """Output that is not UTF-8 is forwarded byte for byte; only the text view replaces bad bytes."""
    out = io.BytesIO()
    result = run_command(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'caf\\xe9 \\xff\\xfe ok')"], stdout=out
    )
    assert out.getvalue() == b"caf\xe9 \xff\xfe ok"
    assert result.text_tail("stdout") == "caf\ufffd \ufffd\ufffd ok"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A hanging command and the grandchild it spawned are both gone after the timeout."""
    pidfile = tmp_path / "gc.pid"
    script = f"sleep 300 & echo $! > {pidfile}; sleep 300"
    result = run_command(["sh", "-c", script], timeout_s=0.5, kill_grace_s=2.0)
    grandchild = int(pidfile.read_text())
    assert result.timed_out and result.exit_code == -signal.SIGTERM
    assert not alive(grandchild)


def test_timeout_also_kills_a_descendant_that_left_the_group(tmp_path: Path) -> None:
    """A grandchild that called setsid() escapes killpg, but not the recorded descendant list."""
    pidfile = tmp_path / "escapee.pid"
    script = f"setsid sleep 300 & echo $! > {pidfile}; sleep 300"
    result = run_command(["sh", "-c", script], timeout_s=0.5, kill_grace_s=2.0, tick_s=0.1)
    escapee = int(pidfile.read_text())
    assert result.timed_out
    assert not alive(escapee)


def test_a_command_ignoring_sigterm_gets_sigkill_after_the_grace() -> None:
    """SIGTERM is asked politely; SIGKILL follows when it is ignored."""
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)"
    )
    result = run_command([sys.executable, "-c", code], timeout_s=1.0, kill_grace_s=0.3)
    assert result.timed_out and result.exit_code == -signal.SIGKILL


def test_stop_flag_interrupts_and_kills(tmp_path: Path) -> None:
    """A stop request (a signal to the supervisor) ends the command at once and says which signal."""
    stop = StopFlag()
    timer = threading.Timer(0.3, stop.set, args=(signal.SIGTERM,))
    timer.start()
    try:
        result = run_command(["sleep", "300"], stop=stop, kill_grace_s=2.0)
    finally:
        timer.cancel()
        stop.close()
    assert result.interrupted_by == signal.SIGTERM and not result.ok


def test_background_child_holding_the_pipe_does_not_hang_the_run(tmp_path: Path) -> None:
    """A command that exits leaving a background child with its stdout open returns after the drain; the
    child is reported as left behind, and stopped."""
    pidfile = tmp_path / "bg.pid"
    holder: dict[str, object] = {}
    script = f"sleep 300 & echo $! > {pidfile}; echo started"

    def go() -> None:
        holder["result"] = run_command(["sh", "-c", script], drain_s=0.2)

    thread = threading.Thread(target=go)
    thread.start()
    thread.join(timeout=30)
    try:
        assert not thread.is_alive(), "run_command waited for the background child's pipe"
        result = holder["result"]
        assert isinstance(result, CommandResult) and result.exit_code == 0
        pid = int(wait_for_file(pidfile))
        assert [(x.pid, x.cmd, x.stopped) for x in result.left_behind] == [(pid, "sleep 300", True)]
        assert not alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(wait_for_file(pidfile)), signal.SIGKILL)


def test_a_background_child_is_reported_and_kept_when_asked(tmp_path: Path) -> None:
    """keep_daemons: what the command leaves running is reported, not stopped."""
    pidfile = tmp_path / "bg.pid"
    result = run_command(["sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}"], keep_daemons=True)
    pid = int(wait_for_file(pidfile))
    try:
        assert result.ok and [(x.pid, x.stopped) for x in result.left_behind] == [(pid, False)]
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_reader_that_goes_away_does_not_stop_the_command() -> None:
    """If our own stdout breaks (the reader of a pipe quit), the command still runs to the end."""

    class Broken(io.BytesIO):
        def write(self, data: object) -> int:
            raise BrokenPipeError

    result = run_command([sys.executable, "-c", "print('x' * 100000); print('end')"], stdout=Broken())
    assert result.exit_code == 0 and result.stdout_tail.endswith(b"end\n")


def test_missing_command_is_a_result_not_an_exception() -> None:
    """A command that does not exist comes back as exit 127 with a message, like a shell would say."""
    result = run_command(["/nonexistent/tool", "--x"])
    assert result.exit_code == 127 and result.start_error and "command not found" in result.start_error


@pytest.mark.parametrize(("folder", "why"), [("missing", "No such file or directory"), ("file", "Not a directory")])
def test_a_folder_the_command_cannot_run_in_is_named_not_called_command_not_found(
    tmp_path: Path, folder: str, why: str
) -> None:
    """A cwd that is gone (or a file) fails the start like a command that cannot run (126), naming the folder:
    the command itself exists, so "command not found" (127) would send whoever reads it the wrong way."""
    (tmp_path / "file").write_text("")
    cwd = str(tmp_path / folder)
    result = run_command([sys.executable, "-c", "pass"], cwd=cwd)
    assert result.exit_code == 126
    assert result.start_error == f"{sys.executable}: cannot run in folder {cwd}: {why}"
    assert b"command not found" not in result.stderr_tail


def test_on_tick_reports_last_output_time() -> None:
    """The tick callback sees when the command last printed something."""
    seen: list[float | None] = []
    code = "import time\nprint('a', flush=True)\ntime.sleep(0.4)"
    run_command([sys.executable, "-c", code], on_tick=seen.append, tick_s=0.05)
    assert any(t is not None for t in seen)


def test_kill_tree_kills_the_recorded_process_and_its_children(tmp_path: Path) -> None:
    """kill_tree stops a process we recorded and whatever it started."""
    pidfile = tmp_path / "c.pid"
    proc = subprocess.Popen(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], start_new_session=True)
    child = int(wait_for_file(pidfile))
    identity = identify(proc.pid)
    assert identity is not None
    killed = kill_tree(identity, grace_s=2.0)
    proc.wait(timeout=10)
    assert proc.pid in killed and not alive(child)


def test_kill_tree_leaves_a_reused_pid_alone() -> None:
    """A recorded pid whose start time differs belongs to someone else now: it is not touched."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        real = identify(proc.pid)
        assert real is not None
        stranger = ProcessIdentity(pid=proc.pid, create_time=real.create_time - 1000.0)
        assert still_running(stranger) is None
        assert kill_tree(stranger, grace_s=0.1) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_fifty_megabytes_of_output_keeps_memory_bounded() -> None:
    """50 MB through the pipe: all of it forwarded, only the tail kept."""

    class Counter(io.RawIOBase):
        n = 0

        def write(self, data: object) -> int:
            size = len(data)  # type: ignore[arg-type]
            self.n += size
            return size

    sink = Counter()
    code = "import sys\nchunk = b'y' * 65536\nfor _ in range(800): sys.stdout.buffer.write(chunk)"
    result = run_command([sys.executable, "-c", code], stdout=sink, tail_bytes=4096)  # type: ignore[arg-type]
    assert sink.n == 800 * 65536 == result.stdout_bytes
    assert len(result.stdout_tail) == 4096


def test_a_stop_requested_before_the_command_starts_keeps_it_from_starting(tmp_path: Path) -> None:
    """A stop signal that came while the runner got ready (stopping an earlier run's orphan, which takes up to
    the kill grace, taking the lock, between attempts) ends the run without starting the command: it was
    started and stopped an instant later, its first side effects done."""
    marker = tmp_path / "ran"
    stop = StopFlag()
    stop.set(signal.SIGTERM)
    try:
        result = run_command(["sh", "-c", f"echo started > {marker}"], stop=stop)
    finally:
        stop.close()
    assert result.interrupted_by == signal.SIGTERM and not result.ok and result.exit_code is None
    assert result.identity is None and not marker.exists()


# -- a reader of our output that stops reading -----------------------------------------------------------

FLOOD = ["sh", "-c", "yes | head -c 50000000"]  # far more than a pipe holds: it fills the moment no one reads


@contextlib.contextmanager
def stalled_pipe() -> Iterator[tuple[io.BufferedWriter, int]]:
    """Our output as a real pipe whose reader never reads (a hung gateway, cron's stuck mailer): a sink over
    its write end, and its read end, closed at the end so a write blocked on it cannot outlive the test."""
    read_end, write_end = os.pipe()
    sink = os.fdopen(write_end, "wb")
    try:
        yield sink, read_end
    finally:
        os.close(read_end)  # a write still blocked on the pipe gets EPIPE and ends
        with contextlib.suppress(OSError):
            sink.close()


def run_in_thread(**kwargs: Any) -> tuple[threading.Thread, list[CommandResult]]:
    results: list[CommandResult] = []
    thread = threading.Thread(target=lambda: results.append(run_command(**kwargs)), daemon=True)
    thread.start()
    return thread, results


def test_a_timeout_is_enforced_while_the_reader_of_our_output_has_stopped_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reader of our stdout stops reading: the timeout still stops the command within its bound plus the
    grace, what the reader did get is the output's start in order, and one warning says the rest was dropped."""
    with stalled_pipe() as (sink, read_end):
        started = time.monotonic()
        thread, results = run_in_thread(argv=FLOOD, stdout=sink, timeout_s=0.5, kill_grace_s=0.5)
        thread.join(timeout=5)
        elapsed = time.monotonic() - started
        assert not thread.is_alive(), "run_command waited on the stalled reader past its timeout"
        os.set_blocking(read_end, False)
        got = os.read(read_end, 1 << 20)
        fd = sink.fileno()
    result = results[0]
    assert result.timed_out and result.exit_code is not None and result.exit_code < 0
    assert elapsed < 0.5 + 0.5 + 2.0
    assert got and got == b"y\n" * (len(got) // 2)  # what got through is the output's start, whole and in order
    assert result.output_dropped > 0
    notes = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert notes == [
        f"{result.output_dropped} bytes of the output of sh were not delivered to descriptor {fd}"
        ": its reader stopped reading"
    ]


def test_a_stop_signal_is_acted_on_while_the_reader_of_our_output_has_stopped_reading() -> None:
    """SIGTERM to the runner (the stop flag) stops the command at once, though its output cannot be written."""
    stop = StopFlag()
    timer = threading.Timer(0.3, stop.set, args=(signal.SIGTERM,))
    try:
        with stalled_pipe() as (sink, _read_end):
            timer.start()
            started = time.monotonic()
            thread, results = run_in_thread(argv=FLOOD, stdout=sink, stop=stop, kill_grace_s=0.5)
            thread.join(timeout=5)
            elapsed = time.monotonic() - started
            assert not thread.is_alive(), "run_command waited on the stalled reader after the stop signal"
    finally:
        timer.cancel()
        stop.close()
    assert results[0].interrupted_by == signal.SIGTERM and not results[0].timed_out
    assert elapsed < 0.3 + 0.5 + 2.0


def test_a_command_that_ended_is_not_held_past_its_timeout_by_a_reader_that_stopped_reading() -> None:
    """The command wrote a little more than the pipes and our buffer hold, and exited: with its reader stalled,
    the run ends at the timeout all the same, with the command's own exit code and the rest reported dropped."""
    # 340 KB, then exit 0: our buffer (256 KiB) and the stalled pipe (64 KiB) take most, the command's pipe the rest
    code = "import sys\nfor _ in range(340): sys.stdout.write('x' * 999 + '\\n')"
    with stalled_pipe() as (sink, _read_end):
        started = time.monotonic()
        thread, results = run_in_thread(argv=[sys.executable, "-c", code], stdout=sink, timeout_s=1.0)
        thread.join(timeout=6)
        elapsed = time.monotonic() - started
        assert not thread.is_alive(), "run_command waited on the stalled reader past its timeout"
    result = results[0]
    assert result.exit_code == 0 and not result.timed_out and result.stdout_bytes == 340_000
    assert 0 < result.output_dropped < 340_000 and elapsed < 1.0 + 3.0


SLOW_READER = """
import sys, time
out = open(sys.argv[1], "wb")
got = 0
while True:
    data = sys.stdin.buffer.read1(1024)
    if not data:
        break
    out.write(data)
    got += len(data)
    if got % (64 * 1024) < len(data):
        time.sleep(0.01)
    if got >= 2_000_000 and got - len(data) < 2_000_000:
        time.sleep(0.5)  # a pause far past the drain time: output still owed must wait for it, not be dropped
"""


def test_a_slow_reader_gets_every_byte_in_order(tmp_path: Path) -> None:
    """A reader that takes 1 KB at a time, pausing, gets all 5 MB of a command that wrote it and exited long
    before it was read: backpressure holds the command, nothing is dropped, and the command still succeeds."""
    received = tmp_path / "received"
    reader = subprocess.Popen([sys.executable, "-c", SLOW_READER, str(received)], stdin=subprocess.PIPE)
    assert reader.stdin is not None
    code = "import sys\nfor i in range(500_000): sys.stdout.write(f'{i:9d}\\n')"
    try:
        result = run_command([sys.executable, "-c", code], stdout=reader.stdin, timeout_s=60, drain_s=0.05)
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)
    assert result.ok and result.output_dropped == 0
    assert received.read_bytes() == b"".join(f"{i:9d}\n".encode() for i in range(500_000))


def test_output_written_straight_to_a_pipe_is_redacted() -> None:
    """Output copied to a pipe of ours passes the process's line redactor, a secret split between two writes
    included, as every script's stdout does."""
    read_end, write_end = os.pipe()
    code = "import sys, time\nsys.stdout.write('key=sk-proj-'); sys.stdout.flush(); time.sleep(0.05)\nprint('A' * 40)"
    with os.fdopen(write_end, "wb") as sink:
        result = run_command([sys.executable, "-c", code], stdout=sink)
    with os.fdopen(read_end, "rb") as got:
        text = got.read()
    assert result.ok and text.endswith(b"\n") and b"AAAAAAAAAAAA" not in text
