"""Bad and hostile inputs to the scripts: a clear message naming the culprit, the documented exit code,
never a traceback; memory that stays flat whatever the size of a line; a closed stdout ends quietly."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PYTHON, SCRIPTS, call_script, script_env

pytestmark = pytest.mark.slow

MB = 1024 * 1024
# Peak memory a script may use on any input; it reads a few MiB at a time whatever the line length.
RSS_BOUND_MB = 200

# Runs one script and reports its exit code and peak RSS (ru_maxrss, KiB on Linux) from a wrapper of its
# own, so other children of the test process do not count. The address-space limit keeps a script that
# does hold a huge line whole from taking the machine's memory with it (it then fails, as it should).
_MEASURE = """
import resource, subprocess, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
proc = subprocess.run(sys.argv[1:], capture_output=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stdout.write(f"{proc.returncode} {peak}\\n")
sys.stderr.write(proc.stderr.decode("utf-8", "replace")[-3000:])
"""


def run(home: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The script's main() in this process: these tests check its message and exit code. The memory bound
    and the closed stdout are about the process and the pipe: those start it as one."""
    return call_script(script, *args, home=home)


def clean_exit(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """The documented exit code, a message naming what was wrong, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])


def one_huge_line(path: Path, size: int) -> Path:
    """An OpenClaw log: a real failure line, one line of `size` bytes, and the failure again after it."""
    failure = json.dumps(
        {
            "0": '{"subsystem":"diagnostic"}',
            "2": 'lane task error: lane=main durationMs=5 error="upstream 503 from the provider"',
            "_meta": {"date": "2026-11-21T00:04:51.782Z", "logLevelName": "ERROR"},
            "time": "2026-11-21T00:04:51.782Z",
        }
    )
    # The huge line is itself a failure OpenClaw could log: an error message of many key=value pairs.
    chunk = b"k=v " * (MB // 4)
    with path.open("wb") as fh:
        fh.write(failure.encode() + b"\n" + b'{"0":"{\\"subsystem\\":\\"diagnostic\\"}","2":"lane task error: ')
        for _ in range(size // MB):
            fh.write(chunk)
        fh.write(
            b'","_meta":{"logLevelName":"ERROR"},"time":"2026-11-21T00:04:55.000Z"}\n'
            + failure.replace("503", "502").replace("51.782", "59.001").encode()
            + b"\n"
        )
    return path


def test_a_huge_openclaw_log_line_is_read_in_flat_memory(home: Path, tmp_path: Path) -> None:
    """self_heal.py on a log with one 64 MiB line stays under the memory bound, counts the line as
    malformed and still finds the failures on both sides of it (the line used to be parsed whole: GBs)."""
    log = one_huge_line(tmp_path / "openclaw-2026-11-21.log", 64 * MB)
    proc = subprocess.run(
        [
            PYTHON,
            "-c",
            _MEASURE,
            PYTHON,
            str(SCRIPTS / "self_heal.py"),
            "--from-openclaw-logs",
            str(log),
            "--no-model",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=script_env(home),
        timeout=300,
        check=False,
    )
    code, peak_kib = (int(x) for x in proc.stdout.split())
    assert code == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert peak_kib < RSS_BOUND_MB * 1024, f"peak RSS {peak_kib // 1024} MiB"
    # The failure before the huge line and the one after it (the same failure, seen twice).
    (record,) = (json.loads(p.read_text()) for p in (home / "fixes").glob("FIX-*.json"))
    assert record["occurrences"] == 2


def test_binary_input_is_refused_or_counted_never_a_traceback(home: Path, tmp_path: Path) -> None:
    """Random bytes as an OpenClaw log, a plan, a config and a snapshot's messages: counted as malformed
    lines or refused with exit 2 naming the file."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(256 * 1024) + b"\0\xff\xfe" * 1000)
    proc = run(home, "self_heal.py", "--from-openclaw-logs", str(blob), "--no-model", "--json")
    clean_exit(proc, 0)
    assert json.loads(proc.stdout)["malformed"] > 0
    clean_exit(run(home, "analyze_logs.py", "--json", str(blob)), 0)
    clean_exit(run(home, "workflow.py", "run", str(blob)), 2, str(blob))
    clean_exit(run(home, "snapshot.py", "save", "s1", "--messages-file", str(blob)), 2, str(blob))
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_bytes(blob.read_bytes())
    clean_exit(run(home, "tasks.py", "list"), 2, "config.yaml")


def test_a_recursive_yaml_alias_in_the_config_is_a_clean_usage_error(
    home: Path, write_config: Callable[[str], Path]
) -> None:
    """A config.yaml whose alias contains itself: exit 2 naming the file, the key and the problem."""
    path = write_config("retry: &loop\n  again: *loop\n")
    for script, args in (("tasks.py", ("list",)), ("retry_run.py", ("--", "true")), ("health_check.py", ())):
        clean_exit(run(home, script, *args), 2, str(path), "retry.again", "recursive")


def test_a_yaml_alias_bomb_in_the_config_is_refused(home: Path, write_config: Callable[[str], Path]) -> None:
    """A config.yaml of nested aliases that expands to billions of items is refused, not expanded."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write_config("\n".join(levels) + "\n")
    clean_exit(run(home, "tasks.py", "list"), 2, str(path), "aliases")


def plan(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('steps:\n  - {name: a, run: ["echo", "bad\\0arg"]}\n', "steps[0].run[1]"),
        ('steps:\n  - {name: a, shell: "echo \\0"}\n', "steps[0].shell"),
        ("steps:\n  - {name: a, run: [true]}\n", "steps[0].run[0]"),
        ("steps:\n  - {name: a, run: [sleep, 1]}\n", "steps[0].run[1]"),
        ("steps:\n  - {name: a, run: [echo], timeout: .nan}\n", "steps[0].timeout"),
        ("steps:\n  - {name: a, run: [echo], timeout: .inf}\n", "steps[0].timeout"),
    ],
    ids=["nul-in-argv", "nul-in-shell", "bool-as-command", "number-as-arg", "nan-timeout", "inf-timeout"],
)
def test_a_bad_plan_is_refused_before_anything_runs(home: Path, tmp_path: Path, body: str, named: str) -> None:
    """A NUL byte, a non-string argv item, a nan or infinite timeout: exit 2 naming the plan and the key;
    no checkpoint is left behind, so a rerun does not climb."""
    path = plan(tmp_path, body)
    for _ in range(2):
        clean_exit(run(home, "workflow.py", "run", str(path), "--task", "t"), 2, str(path), named)
    assert not list((home / "checkpoints").glob("t*")) if (home / "checkpoints").exists() else True
    status = run(home, "workflow.py", "status", "t", "--json")
    assert "running" not in status.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
@pytest.mark.parametrize(
    "command",
    [
        ("retry_run.py", "--timeout", "{}", "--", "true"),
        ("retry_run.py", "--deadline", "{}", "--", "true"),
        ("tasks.py", "add", "t", "--timeout", "{}", "--", "true"),
        ("llm_call.py", "--prompt", "hi", "--timeout", "{}"),
    ],
    ids=["retry_run-timeout", "retry_run-deadline", "tasks-add-timeout", "llm_call-timeout"],
)
def test_a_timeout_must_be_finite_and_positive(home: Path, command: tuple[str, ...], value: str) -> None:
    """nan and inf would switch a timeout off: every script refuses them (and 0, and negatives) with exit 2."""
    script, *args = command
    at = args.index("{}")
    # `--timeout -inf` would read as an option: the = form passes every value the same way.
    argv = [*args[: at - 1], f"{args[at - 1]}={value}", *args[at + 1 :]]
    clean_exit(run(home, script, *argv), 2, args[at - 1], repr(value))


def test_a_closed_stdout_ends_quietly(home: Path) -> None:
    """`tasks.py list | head` with the reader gone: no BrokenPipeError traceback, the usual exit code."""
    for i in range(3):
        long_texts = ("--display-name", "x" * 1000, "--description", "y" * 30000)  # under their caps (tasks.md)
        proc = run(home, "tasks.py", "add", f"task-{i}", *long_texts, "--", "true")
        assert proc.returncode == 0, proc.stderr
    for args in (("list",), ("list", "--json"), ("show", "task-0")):
        child = subprocess.Popen(
            [PYTHON, str(SCRIPTS / "tasks.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=script_env(home),
        )
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # the reader is gone before the first line is written
        err = child.stderr.read().decode()
        assert child.wait(timeout=60) == 0, err
        assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_an_oversized_snapshot_is_refused_not_read(home: Path) -> None:
    """A snapshot file over the documented size is refused with a message naming it; nothing reads it whole."""
    from selfheal.state.root import MAX_STATE_FILE_BYTES

    folder = home / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    big = folder / "huge.json"
    with big.open("wb") as fh:
        fh.write(b'{"messages": ["')
        fh.truncate(MAX_STATE_FILE_BYTES + MB)
    proc = run(home, "snapshot.py", "restore", "huge")
    assert proc.returncode in (2, 3), proc.stderr
    assert "Traceback" not in proc.stderr and "huge.json" in proc.stderr and "larger than" in proc.stderr


def test_an_oversized_messages_file_is_refused_not_read(home: Path, tmp_path: Path) -> None:
    """snapshot.py save with a messages file over the state-file limit: exit 2 naming it, nothing saved."""
    from selfheal.state.root import MAX_STATE_FILE_BYTES

    big = tmp_path / "messages.json"
    with big.open("wb") as fh:
        fh.write(b"[")
        fh.truncate(MAX_STATE_FILE_BYTES + MB)
    clean_exit(run(home, "snapshot.py", "save", "s1", "--messages-file", str(big)), 2, str(big), "larger than")
    assert not (home / "sessions" / "s1.json").exists()


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("llm_call.py", ("--prompt-file", "-")),
        ("snapshot.py", ("save", "s1", "--messages-file", "-")),
    ],
)
def test_reading_a_closed_standard_input_is_a_usage_error(home: Path, script: str, args: tuple[str, ...]) -> None:
    """`-` for a file with standard input closed (`<&-`, a daemon's cron line): exit 2 saying so, with --json one
    object, never a traceback (Python leaves sys.stdin None then)."""
    child = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", PYTHON, str(SCRIPTS / script), *args, "--json"],
        capture_output=True,
        text=True,
        env=script_env(home),
        timeout=60,
        check=False,
    )
    clean_exit(child, 2, "standard input is closed")
    assert json.loads(child.stdout)["exit"] == 2
    assert not (home / "sessions" / "s1.json").exists()


def test_a_closed_stdout_or_stderr_never_becomes_a_state_file_or_a_commands_output(home: Path, tmp_path: Path) -> None:
    """Run with stdout closed (`>&-`): Python left sys.stdout None (every script ended in a traceback), and the
    first file the script opened took descriptor 1, so what was printed, and the stdout of the command it ran,
    could land in a state file. The closed descriptors are /dev/null from the start: each script does its work
    and exits as it would, its printed output dropped; no state file holds a line of it."""
    marker, command = "PRINTED-BY-42", "echo PRINTED-BY-$((6 * 7))"  # the output, not the command's own text

    def closed(redirect: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", f'exec "$@" {redirect}', "sh", PYTHON, *argv],
            capture_output=True,
            text=True,
            env=script_env(home),
            timeout=60,
            check=False,
        )

    ran = closed(">&-", str(SCRIPTS / "retry_run.py"), "--task", "t", "--", "sh", "-c", command)
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr
    added = closed(">&-", str(SCRIPTS / "tasks.py"), "add", "job", "--", "sh", "-c", command)
    assert added.returncode == 0 and "Traceback" not in added.stderr, added.stderr
    done = closed(">&- 2>&-", str(SCRIPTS / "tasks.py"), "run-next")
    assert done.returncode == 0
    listed = call_script("tasks.py", "list", "--json", home=home)
    assert [t["status"] for t in json.loads(listed.stdout)["tasks"]] == ["completed"]
    polluted = [p for p in home.rglob("*") if p.is_file() and p.suffix != ".log" and marker.encode() in p.read_bytes()]
    assert polluted == []  # the task's own log (tasks/job.log) holds its output, as it should
