"""retry_run.py as users run it: real processes, real files, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import PYTHON, SCRIPTS, call_script, run_script, script_env
from selfheal import cli

RETRY_RUN = str(SCRIPTS / "retry_run.py")


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """retry_run.py's main() in this process (its command still runs as a real process): the tests that
    check its report, exit code, messages and files. The signals, the live stream on a real pipe and the
    background runs below start it as a process."""
    return call_script("retry_run.py", *args, home=home, env=env, binary=True)


def start(home: Path, *args: str) -> subprocess.Popen[bytes]:
    """retry_run.py in the background, its output discarded."""
    return subprocess.Popen(
        [PYTHON, RETRY_RUN, *args], env=script_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def as_json(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON object, got: {proc.stdout!r}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def ledger(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((home / "ledger").glob("*.jsonl")) for line in f.read_text().splitlines()]


def flaky_script(tmp_path: Path, failures: int, stderr: str = "Connection refused", code: int = 1) -> list[str]:
    """A command that fails `failures` times (counter file), then succeeds."""
    counter = tmp_path / "count"
    script = tmp_path / "flaky.py"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, sys
        p = pathlib.Path({str(counter)!r})
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        if n < {failures}:
            print({stderr!r}, file=sys.stderr)
            sys.exit({code})
        print("all good")
        """)
    )
    return [sys.executable, str(script)]


@pytest.fixture
def plain(write_config: Callable[[str], Path]) -> Path:
    """No jitter, so waits are exact."""
    return write_config("retry: {jitter: none}\n")


def test_fails_twice_then_succeeds_on_attempt_three_with_the_policy_waits(
    tmp_path: Path, home: Path, plain: Path
) -> None:
    """A transient failure twice, then success: exit 0, three attempts, waits of 1 s and 2 s."""
    proc = run(home, "--json", "--task", "nightly", "--", *flaky_script(tmp_path, 2), env={"SELFHEAL_TESTING": "1"})
    result = as_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert result["ok"] and result["outcome"] == "succeeded"
    assert [a["error_class"] for a in result["attempts"]] == ["transient", "transient", None]
    assert [a["delay_s"] for a in result["attempts"]] == [1.0, 2.0, None]
    assert [e["event"] for e in ledger(home)] == ["retry", "retry", "success"]
    assert b"all good" in proc.stderr  # with --json the command's stdout goes to stderr
    assert (tmp_path / "count").read_text() == "3"


def test_waits_really_happen_without_the_test_switch(
    tmp_path: Path, home: Path, write_config: Callable[[str], Path]
) -> None:
    """Without SELFHEAL_TESTING the waits are real: the run lasts at least their sum."""
    write_config("retry: {jitter: none}\npolicies:\n  transient: {base_s: 0.2}\n")
    started = time.monotonic()
    proc = run(home, "--json", "--", *flaky_script(tmp_path, 2))
    elapsed = time.monotonic() - started
    assert proc.returncode == 0
    assert [a["delay_s"] for a in as_json(proc)["attempts"]] == [0.2, 0.4, None]
    assert elapsed >= 0.6


def test_permanent_failure_runs_exactly_once(tmp_path: Path, home: Path) -> None:
    """A syntax error is not worth repeating: one attempt, exit 3, the command's code in the JSON."""
    proc = run(home, "--json", "--", *flaky_script(tmp_path, 5, stderr="SyntaxError: invalid syntax", code=2))
    result = as_json(proc)
    assert proc.returncode == 3
    assert (result["outcome"], result["stop_reason"], result["error_class"]) == ("failed", "not_retryable", "permanent")
    assert result["exit_code"] == 2 and len(result["attempts"]) == 1
    assert (tmp_path / "count").read_text() == "1"


def test_exhausted_retries_exit_3_and_say_so(tmp_path: Path, home: Path, plain: Path) -> None:
    """A command that keeps failing transiently stops after the class's attempts (3 retries: 4 attempts)."""
    proc = run(home, "--", *flaky_script(tmp_path, 10), env={"SELFHEAL_TESTING": "1"})
    assert proc.returncode == 3
    assert b"gave up after 4 attempts (attempts_exhausted): transient, exit code 1" in proc.stderr
    assert b"attempt 1/4 failed: transient (exit 1: Connection refused); retrying in 1.0s" in proc.stderr


def test_max_attempts_flag(tmp_path: Path, home: Path) -> None:
    """--max-attempts gives a retryable failure more (or fewer) tries."""
    proc = run(home, "--json", "--max-attempts", "5", "--", *flaky_script(tmp_path, 4), env={"SELFHEAL_TESTING": "1"})
    assert proc.returncode == 0 and len(as_json(proc)["attempts"]) == 5


def test_retries_flag_counts_as_the_documents_do(tmp_path: Path, home: Path) -> None:
    """--retries 3 is the first try plus 3 retries; with --max-attempts too it is a usage error."""
    env = {"SELFHEAL_TESTING": "1"}
    proc = run(home, "--json", "--retries", "3", "--", *flaky_script(tmp_path, 10), env=env)
    assert proc.returncode == 3 and len(as_json(proc)["attempts"]) == 4
    both = run(home, "--retries", "1", "--max-attempts", "2", "--", "true")
    assert both.returncode == 2 and b"not allowed with" in both.stderr


def test_notify_runs_when_retries_run_out_with_the_summary_as_one_argument(
    tmp_path: Path, home: Path, write_config: Any
) -> None:
    """The first document's notify_admin("Task failed after retries"): --notify runs once when it fails
    for good, the summary as one argument (quotes and $ in it stay text); not on success; retry.notify too."""
    out = tmp_path / "message"
    notify = f"sh -c 'printf %s \"$1\" >> {out}' notify {{summary}}"
    env = {"SELFHEAL_TESTING": "1"}
    proc = run(home, "--json", "--task", "doc-gen-588", "--notify", notify, "--", *flaky_script(tmp_path, 10), env=env)
    assert proc.returncode == 3 and as_json(proc)["notified"]["ok"]
    message = out.read_text()
    assert message.startswith("self-heal: doc-gen-588 failed after 4 attempt(s) (attempts_exhausted): transient")
    out.unlink()
    assert run(home, "--notify", notify, "--", "true").returncode == 0 and not out.exists()
    write_config(f"retry: {{notify: [sh, -c, 'printf %s \"$1\" > {out}', notify, '{{summary}}']}}\n")
    assert run(home, "--", "sh", "-c", "echo '$(rm -rf /)' >&2; exit 2").returncode == 3
    assert "failed after 2 attempt(s)" in out.read_text() and "$(rm -rf /)" in out.read_text()
    bad = run(home, "--notify", "'unclosed", "--", "true")
    assert bad.returncode == 2 and b"--notify" in bad.stderr and b"Traceback" not in bad.stderr


def test_command_not_found(home: Path) -> None:
    """A missing program is a permanent failure, reported with the shell's exit code."""
    result = as_json(run(home, "--json", "--", "/no/such/program"))
    assert result["error_class"] == "permanent" and result["exit_code"] == 127
    assert "command not found" in result["reason"]


def test_timeout_kills_the_command_and_its_grandchildren(tmp_path: Path, home: Path) -> None:
    """A hanging command that spawned a grandchild: both are killed at the per-attempt timeout."""
    pidfile = tmp_path / "gc.pid"
    proc = run(
        home,
        "--json",
        "--timeout",
        "0.5",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        f"sleep 300 & echo $! > {pidfile}; sleep 300",
    )
    result = as_json(proc)
    assert proc.returncode == 3
    assert result["error_class"] == "timeout" and result["attempts"][0]["timed_out"]
    assert (
        not psutil.pid_exists(int(pidfile.read_text())) or psutil.Process(int(pidfile.read_text())).status() == "zombie"
    )


def _stalled_run(home: Path, tmp_path: Path, *args: str, stalled: str) -> tuple[int, float, bytes, bytes]:
    """retry_run.py as a process whose `stalled` stream ("stdout", "stderr", or "both": cron's `2>&1 | mailer`)
    is a pipe no one reads (a hung gateway, cron's stuck mailer), the other a file: its exit code, seconds
    taken, stdout and stderr."""
    read_end, write_end = os.pipe()
    files = {name: (tmp_path / name).open("wb") for name in ("stdout", "stderr")}
    names = ("stdout", "stderr") if stalled == "both" else (stalled,)
    streams: dict[str, Any] = dict(files, **dict.fromkeys(names, write_end))
    started = time.monotonic()
    proc = subprocess.Popen(
        [PYTHON, RETRY_RUN, *args], env=script_env(home), stdout=streams["stdout"], stderr=streams["stderr"]
    )
    os.close(write_end)
    try:
        code = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"retry_run.py ran on {time.monotonic() - started:.0f}s, its reader stalled") from None
    finally:
        os.close(read_end)
        for f in files.values():
            f.close()
    elapsed = time.monotonic() - started
    return code, elapsed, (tmp_path / "stdout").read_bytes(), (tmp_path / "stderr").read_bytes()


FLOOD = ["sh", "-c", "yes | head -c 50000000"]  # more than a pipe holds: it is full the moment no one reads


def test_the_timeout_fires_while_the_reader_of_stdout_has_stopped_reading(tmp_path: Path, home: Path) -> None:
    """Its stdout's reader stops reading: the --timeout still stops the command on time, retry_run exits 3
    and says the undelivered output was dropped, on one line."""
    code, elapsed, _, err = _stalled_run(
        home, tmp_path, "--task", "t", "--timeout", "1", "--max-attempts", "1", "--", *FLOOD, stalled="stdout"
    )
    assert code == 3 and elapsed < 1 + 5
    text = err.decode()
    assert "killed by SIGTERM at the timeout" in text
    assert len([line for line in text.splitlines() if "not delivered" in line and "stdout" in line]) == 1


def test_with_json_the_timeout_fires_while_the_reader_of_stderr_has_stopped_reading(tmp_path: Path, home: Path) -> None:
    """With --json the command's output goes to stderr; a stalled stderr holds the run up no more than a
    stalled stdout does, and the one JSON object still reaches stdout."""
    code, elapsed, out, _ = _stalled_run(
        home, tmp_path, "--json", "--timeout", "1", "--max-attempts", "1", "--", *FLOOD, stalled="stderr"
    )
    assert code == 3 and elapsed < 1 + 5
    result = json.loads(out)
    assert result["error_class"] == "timeout" and result["attempts"][0]["timed_out"]


def test_the_timeout_and_the_retries_go_on_while_the_reader_of_both_streams_has_stopped_reading(
    tmp_path: Path, home: Path
) -> None:
    """cron's set-up, both streams into one pipe whose reader stalls (`2>&1 | mailer`): each attempt is still
    stopped at its --timeout, the progress line between attempts waits for the reader a bounded while and no
    more, and retry_run exits 3 instead of hanging on its own diagnostics until the reader thaws or dies."""
    code, elapsed, _, _ = _stalled_run(
        home, tmp_path, "--task", "t", "--timeout", "1", "--max-attempts", "2", "--", *FLOOD, stalled="both"
    )
    # two attempts of 1 s, the wait between them (0.5 s), and the progress line's bounded wait for the reader
    assert code == 3 and elapsed < 2 * 1 + 0.5 + cli.STALL_S + 3


@pytest.mark.parametrize(
    ("args", "ending"),
    [
        (["--timeout", "0.3", "--", "sleep", "30"], "timeout, killed by SIGTERM at the timeout"),
        (["--", "sh", "-c", "kill -KILL $$"], ", killed by SIGKILL"),
        (["--", "sh", "-c", "exit 4"], ", exit code 4"),
    ],
)
def test_giving_up_says_how_the_last_attempt_ended(home: Path, args: list[str], ending: str) -> None:
    """A command stopped by a signal has no exit code: the last line names the signal, not `exit code None`."""
    proc = run(home, "--max-attempts", "1", *args)
    last = proc.stderr.decode().strip().splitlines()[-1]
    assert proc.returncode == 3 and last.startswith("self-heal: gave up after 1 attempt")
    assert last.endswith(ending) and "None" not in last


def test_deadline_bounds_the_whole_run(tmp_path: Path, home: Path, write_config: Callable[[str], Path]) -> None:
    """--deadline stops retrying when the next wait would not fit."""
    write_config("retry: {jitter: none}\npolicies:\n  transient: {base_s: 5}\n")
    started = time.monotonic()
    result = as_json(run(home, "--json", "--deadline", "1", "--", *flaky_script(tmp_path, 5)))
    assert result["stop_reason"] == "deadline" and len(result["attempts"]) == 1
    assert time.monotonic() - started < 5  # it did not sit out a wait past the deadline


def test_the_command_sees_its_attempt_and_task(tmp_path: Path, home: Path) -> None:
    """SELFHEAL_TASK, SELFHEAL_RUN_ID and SELFHEAL_ATTEMPT let a command recognise a repeat."""
    out = tmp_path / "seen"
    code = (
        "import os\n"
        "e = os.environ\n"
        "line = ' '.join([e['SELFHEAL_TASK'], e['SELFHEAL_ATTEMPT'], e['SELFHEAL_RUN_ID']])\n"
        f"open({str(out)!r}, 'a').write(line + '\\n')\n"
        "raise SystemExit(75)"
    )
    run(home, "--task", "job-7", "--", sys.executable, "-c", code, env={"SELFHEAL_TESTING": "1"})
    lines = [line.split() for line in out.read_text().splitlines()]
    assert [(t, a) for t, a, _ in lines] == [("job-7", "1"), ("job-7", "2"), ("job-7", "3"), ("job-7", "4")]
    assert len({r for _, _, r in lines}) == 1 and lines[0][2].startswith("job-7-")


def test_output_streams_live(tmp_path: Path, home: Path) -> None:
    """The command's output appears while it runs, not at the end."""
    marker = tmp_path / "go"
    code = (
        "import os, time\n"
        "print('first', flush=True)\n"
        f"while not os.path.exists({str(marker)!r}): time.sleep(0.01)\n"
        "print('second')"
    )
    proc = subprocess.Popen(
        [PYTHON, RETRY_RUN, "--", sys.executable, "-c", code], stdout=subprocess.PIPE, env=script_env(home)
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"first\n"  # arrives before the command is allowed to finish
    marker.write_text("1")
    assert proc.stdout.read() == b"second\n"
    assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_non_utf8_and_large_output_pass_through(home: Path) -> None:
    """50 MB of binary output is forwarded byte-exact, and the JSON report stays small."""
    code = (
        "import sys\n"
        "sys.stdout.buffer.write(b'\\xff\\xfe' * 25_000_000)\n"
        "sys.stderr.buffer.write(b'bad \\xe9 byte\\n')\n"
        "sys.exit(3)"
    )
    proc = run_script("retry_run.py", "--max-attempts", "1", "--", sys.executable, "-c", code, home=home, binary=True)
    assert proc.stdout == b"\xff\xfe" * 25_000_000
    assert proc.returncode == 3
    report = as_json(run(home, "--json", "--max-attempts", "1", "--", sys.executable, "-c", code))
    assert report["reason"] == "exit 3: bad \ufffd byte"
    assert report["attempts"][0]["output_bytes"] == 50_000_000 + len("bad \xe9 byte\n".encode("latin-1"))
    assert len(json.dumps(report)) < 5_000


def test_run_record_tracks_the_live_child(tmp_path: Path, home: Path, write_config: Callable[[str], Path]) -> None:
    """While a command runs, its run record names the child (pid + start time) and keeps beating."""
    write_config("process: {heartbeat_s: 0.1}\n")
    proc = start(home, "--task", "watched", "--", "sleep", "3")
    try:
        record = _wait_record(home, lambda r: r.get("child") is not None)
        child = psutil.Process(record["child"]["pid"])
        assert child.name() == "sleep" and abs(child.create_time() - record["child"]["create_time"]) < 0.01
        assert record["status"] == "running" and record["task"] == "watched"
        first_beat = record["last_heartbeat_ts"]
        later = _wait_record(home, lambda r: r["last_heartbeat_ts"] > first_beat)
        assert later["status"] == "running"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    final = _wait_record(home, lambda r: r["status"] == "finished")
    assert final["outcome"] == "interrupted"


def _wait_record(home: Path, ok: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (home / "runs").glob("*.json") if (home / "runs").exists() else []:
            try:
                record: dict[str, Any] = json.loads(path.read_text())
            except (ValueError, FileNotFoundError):
                continue
            if ok(record):
                return record
        time.sleep(0.02)
    raise AssertionError("run record never reached the expected state")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_stops_the_child_and_leaves_a_consistent_ledger(home: Path, sig: signal.Signals) -> None:
    """SIGTERM or Ctrl-C during a run: the child group is killed, exit 3, the ledger says interrupted."""
    proc = subprocess.Popen(
        [PYTHON, RETRY_RUN, "--json", "--task", "long", "--", "sleep", "300"],
        env=script_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    record = _wait_record(home, lambda r: r.get("child") is not None)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    result = json.loads(out)
    assert result["outcome"] == "interrupted" and result["signal"] == sig.name
    child_pid = record["child"]["pid"]
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == "zombie"
    events = ledger(home)
    assert events[-1]["status"] == "interrupted" and events[-1]["task"] == "long"
    for path in (home / "ledger").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line)


def test_signal_during_a_backoff_wait_ends_it_at_once(
    tmp_path: Path, home: Path, write_config: Callable[[str], Path]
) -> None:
    """A stop request while waiting 60 s between attempts does not wait the 60 s out."""
    write_config("retry: {jitter: none}\npolicies:\n  transient: {base_s: 60, cap_s: 60}\n")
    proc = subprocess.Popen(
        [PYTHON, RETRY_RUN, "--json", "--", *flaky_script(tmp_path, 5)],
        env=script_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    waiting = _wait_record(home, lambda r: r.get("phase") == "waiting")
    assert waiting["child"] is None and waiting["next_attempt_ts"] > waiting["last_heartbeat_ts"] + 50
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)  # far less than the 60 s wait
    result = json.loads(out)
    assert proc.returncode == 3 and result["outcome"] == "interrupted"
    assert [e["status"] for e in ledger(home)] == ["retrying", "interrupted"]


def test_a_second_run_of_the_same_task_is_not_attempted(home: Path) -> None:
    """Cron overlap: while a task runs, another run of it exits 4 and names the running one."""
    first = start(home, "--task", "exclusive", "--", "sleep", "300")
    try:
        record = _wait_record(home, lambda r: r.get("child") is not None)
        second = run(home, "--json", "--task", "exclusive", "--", "true")
        assert second.returncode == 4
        message = as_json(second)["message"]
        assert "already running" in message and record["run_id"] in message
    finally:
        first.terminate()
        first.wait(timeout=30)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--task", "../../etc/passwd", "--", "true"], b"invalid task id '../../etc/passwd'"),
        (["--task", ".hidden", "--", "true"], b"invalid task id"),
        (["--target", "a/b", "--", "true"], b"invalid target id"),
        (["--timeout", "-1", "--", "true"], b"--timeout: must be > 0 seconds"),
        (["--max-attempts", "0", "--", "true"], b"--max-attempts must be >= 1"),
        ([], b"no command given"),
        (["--bogus", "--", "true"], b"unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(home: Path, args: list[str], words: bytes) -> None:
    """Bad flags and unsafe ids are refused before anything runs."""
    proc = run(home, *args)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert not (home / "ledger").exists()


@pytest.mark.parametrize(("folder", "why"), [("missing", "does not exist"), ("file", "is not a folder")])
def test_a_cwd_that_is_not_a_folder_exits_2_naming_it_before_anything_runs(
    home: Path, tmp_path: Path, folder: str, why: str
) -> None:
    """Not a permanent failure of the command (exit 3, "command not found"): a usage error, nothing run or
    recorded, and --json still one object."""
    (tmp_path / "file").write_text("")
    cwd = str(tmp_path / folder)
    marker = tmp_path / "ran"
    proc = run(home, "--json", "--cwd", cwd, "--", "sh", "-c", f"echo x > {marker}")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert as_json(proc) == {"ok": False, "error": "usage", "message": f"--cwd {cwd}: {why}", "exit": 2}
    assert not marker.exists() and not (home / "ledger").exists()


def test_bad_configuration_exits_2_naming_file_and_line(home: Path, write_config: Callable[[str], Path]) -> None:
    """A broken config.yaml stops the run with its path and line, and --json still gives one object."""
    path = write_config("policies:\n  transient:\n    base_s: -5\n")
    proc = run(home, "--json", "--", "true")
    assert proc.returncode == 2
    result = as_json(proc)
    assert result["ok"] is False and f"{path}:3:5: policies.transient.base_s: must be >= 0" in result["message"]


def test_broken_yaml_exits_2(home: Path, write_config: Callable[[str], Path]) -> None:
    """YAML that does not parse names the line and column."""
    path = write_config("retry: {deadline_s: 5\n")
    proc = run(home, "--", "true")
    assert proc.returncode == 2 and f"{path}:2:1: YAML syntax error".encode() in proc.stderr


def test_a_commands_own_json_flag_is_not_ours(home: Path) -> None:
    """`--json` after `--` belongs to the command; our stdout then carries the command's output only."""
    proc = run(home, "--", sys.executable, "-c", "import sys; print(sys.argv[1:])", "--json")
    assert proc.returncode == 0 and proc.stdout == b"['--json']\n"


def test_secrets_in_the_command_line_are_not_recorded(home: Path) -> None:
    """A key on the command line is masked in the run record, the JSON and the ledger."""
    key = "sk-live-0123456789abcdefghij"
    proc = run(home, "--json", "--task", "t", "--", "sh", "-c", f"echo 'auth failed for {key}' >&2; exit 1")
    assert key.encode() not in proc.stdout
    for path in [*(home / "runs").glob("*.json"), *(home / "ledger").glob("*.jsonl"), home / "logs" / "selfheal.log"]:
        assert key not in path.read_text()


def test_help_exits_0(home: Path) -> None:
    """--help describes the script and its flags."""
    proc = run(home, "--help")
    assert proc.returncode == 0 and b"--max-attempts" in proc.stdout


def test_finished_runs_are_pruned(home: Path, write_config: Callable[[str], Path]) -> None:
    """Old finished run records are removed when a new run starts; running ones are kept."""
    write_config("process: {keep_finished_runs_days: 0}\n")
    run(home, "--", "true")
    run(home, "--", "true")
    assert len(list((home / "runs").glob("*.json"))) == 1


def test_library_refuses_a_zero_deadline(home: Path) -> None:
    """run_with_retry(deadline_s=0) is a caller's mistake, refused rather than replaced by the default."""
    from selfheal.core.runner import run_with_retry

    with pytest.raises(ValueError, match="deadline_s must be a number of seconds > 0"):
        run_with_retry(["true"], deadline_s=0)


def test_library_runs_a_tuple_and_refuses_a_command_line_given_as_one_string(home: Path, tmp_path: Path) -> None:
    """argv as a tuple runs like a list; a string would have been split into one-letter arguments (`"touch x"`
    ran `t`), so it is refused before anything runs, saying how to run a shell line."""
    from selfheal.core.runner import run_with_retry

    made = tmp_path / "made"
    assert run_with_retry(("touch", str(made)), max_attempts=1).ok and made.exists()
    with pytest.raises(TypeError, match=r"not a command line .*\['sh', '-c', LINE\]"):
        run_with_retry(f"touch {tmp_path / 'never'}", max_attempts=1)
    assert not (tmp_path / "never").exists()


def test_a_run_whose_process_was_killed_is_marked_crashed_by_the_next_run_of_its_task(home: Path) -> None:
    """SIGKILL leaves a record saying `running`; the next run of the task closes it, so no health check
    mistakes it for live work (and a run of another task leaves it alone)."""
    proc = subprocess.Popen(
        [PYTHON, RETRY_RUN, "--task", "killed", "--", "sleep", "300"], env=script_env(home), stdout=subprocess.DEVNULL
    )
    record = _wait_record(home, lambda r: r.get("child") is not None)
    proc.kill()
    proc.wait(timeout=10)
    psutil.Process(record["child"]["pid"]).kill()  # the command outlived it (its own session); end it too
    assert run(home, "--task", "other", "--", "true").returncode == 0
    path = home / "runs" / f"{record['run_id']}.json"
    assert json.loads(path.read_text())["status"] == "running"
    assert run(home, "--task", "killed", "--", "true").returncode == 0
    closed = json.loads(path.read_text())
    assert (closed["status"], closed["outcome"], closed["child"]) == ("finished", "crashed", None)
