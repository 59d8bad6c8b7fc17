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
from pathlib import Path

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
