"""Hostile and broken input at the model layer's edges: what a model answers, what nvidia-smi prints, what
sits in the answer cache, what openclaw.json is. A clear outcome every time: a rejected answer, an unknown
reading, a cache miss, a message naming the file; never a hang past the deadline, a traceback, or output
that is not what the docs promise."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.nvidia import alive, fake_smi

from conftest import call_script
from selfheal.models import gpu
from selfheal.models.output import OutputProblem, check_answer, strip_fences
from selfheal.testing import FakeModelServer, Fault


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as srv:
        yield srv


@pytest.fixture
def solo(server: FakeModelServer, write_config: Callable[[str], Path]) -> FakeModelServer:
    """One endpoint, no retries of a rejected answer elsewhere: its answers are what the test scripts."""
    write_config(
        "models:\n  read_timeout_base_s: 5\n  timeout_per_1k_tokens_s: 0\n  chain:\n"
        f'    - {{name: solo, base_url: "{server.url("solo")}", model: m}}\n'
    )
    return server


def no_traceback(proc: object) -> None:
    stderr = getattr(proc, "stderr", "")
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]


# -- what a model answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e400", "-1e999", "123e99999"])
def test_a_json_number_too_big_for_a_float_is_not_json_this_reader_can_give_back(number: str) -> None:
    """1e400 reads as Infinity in Python: printed back it would be `Infinity`, which no JSON reader takes."""
    with pytest.raises(OutputProblem, match="not JSON"):
        check_answer(f'{{"n": {number}}}', "stop", json_output=True)


def test_json_output_on_stdout_is_always_json_jq_can_read(home: Path, solo: FakeModelServer) -> None:
    """A model answering {"n": 1e400}: the answer is rejected (a format failure, exit 3), never printed as
    `{"n": Infinity}`; --json stays one strict JSON object either way."""
    solo.set_default("solo", Fault.reply('{"n": 1e400}'))
    proc = call_script("llm_call.py", "--json-output", "--json", "--prompt", "count", home=home)
    no_traceback(proc)
    assert "Infinity" not in proc.stdout
    report = json.loads(proc.stdout, parse_constant=lambda name: pytest.fail(f"{name} in --json"))
    assert (proc.returncode, report["ok"], report["attempts"][0]["outcome"]) == (3, False, "rejected")


@pytest.mark.parametrize("depth", [150, 800, 990])
def test_an_answer_nested_deeper_than_any_real_answer_is_rejected_not_a_crash(
    home: Path, solo: FakeModelServer, depth: int
) -> None:
    """A JSON answer of hundreds of nested arrays (a model looping on `[`) is a format failure, exit 3 with one
    JSON object; it used to pass the check and crash the redaction of --json with a RecursionError."""
    solo.set_default("solo", Fault.reply('{"a": ' + "[" * depth + "]" * depth + "}"))
    proc = call_script("llm_call.py", "--json-output", "--json", "--prompt", "nest", home=home)
    no_traceback(proc)
    report = json.loads(proc.stdout)
    assert (proc.returncode, report["ok"]) == (3, False)
    assert "nested" in report["attempts"][0]["reason"]


def test_a_fenced_answer_of_endless_white_space_is_checked_in_linear_time() -> None:
    """JSON mode's known failure, a model emitting white space until max_tokens: with no length limit
    (max_answer_chars: 0) 200,000 spaces in a fence are read in milliseconds, not minutes of backtracking."""
    content = "```json\n" + " " * 200_000 + "x"
    started = time.perf_counter()
    assert strip_fences(content) == content
    with pytest.raises(OutputProblem, match="not JSON"):
        check_answer(content, "stop", json_output=True, max_chars=0)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("text", "body"),
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('  ```json  \n\n  {"a": 1}  \n\n ```  \n', '  {"a": 1}'),
        ('```\n{"a": "```"}\n```', '{"a": "```"}'),
        ("```\n```", ""),
        ("```\nabc````", "abc`"),
        ("```json```", "```json```"),
        ("```json {} ```", "```json {} ```"),
        ("```\n", "```\n"),
        ('{"a": 1}', '{"a": 1}'),
    ],
)
def test_fences_are_stripped_as_before(text: str, body: str) -> None:
    """The linear reading of a fence gives what the regular expression gave."""
    assert strip_fences(text) == body


def test_a_schema_mismatch_names_a_huge_value_in_a_short_message() -> None:
    """A 100,000-character string that is not one of the schema's enum values: the reason (which goes to
    stderr, the ledger and --json) shows the start of it, not all of it."""
    schema = {"type": "object", "properties": {"s": {"enum": ["a", "b"], "pattern": "^z"}}}
    with pytest.raises(OutputProblem) as info:
        check_answer(json.dumps({"s": "y" * 100_000}), "stop", json_output=True, schema=schema)
    assert len(info.value.detail) < 600, len(info.value.detail)
    assert "is not one of" in info.value.detail and "does not match" in info.value.detail


# -- what nvidia-smi prints -----------------------------------------------------------------------------------


def reading(timeout_s: float | None = None, gpu_id: int | str | None = None) -> tuple[int | None, float]:
    started = time.monotonic()
    found = asyncio.run(gpu.free_mb(gpu_id, fresh=True, timeout_s=timeout_s))
    return found, time.monotonic() - started


@pytest.mark.parametrize("then", ["sleep 30", "echo '0, GPU-a, 24000'"])
def test_an_nvidia_smi_whose_child_holds_the_pipe_is_left_at_the_time_bound(
    smi_dir: Path, tmp_path: Path, then: str
) -> None:
    """A wrapper that hangs, or exits at once, with a child of its own still holding stdout: a hang is unknown
    when the caller's time is up (0.5 s), not when the child lets go (30 s); what a wrapper printed before it
    exited is read at its exit (the health check's reader always did; the model chain's waited for the child
    and lost it). Either way the child is stopped with it."""
    pidfile = tmp_path / "child.pid"
    fake_smi(smi_dir, f"sleep 30 &\necho $! > {pidfile}\n{then}")
    found, took = reading(timeout_s=0.5)
    assert found == (None if then.startswith("sleep") else 24000) and took < 3.0, (found, took)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.05)
    assert not alive(child)


def test_endless_output_from_nvidia_smi_is_not_held_in_memory(smi_dir: Path) -> None:
    """An nvidia-smi printing without end (a broken wrapper): reading stops at a cap, the reading is unknown,
    and it ends at once rather than at the 5 s bound with gigabytes held."""
    fake_smi(smi_dir, "exec yes '0, GPU-x, 24000'")
    found, took = reading()
    assert found is None and took < 4.0, took


@pytest.mark.parametrize(
    ("output", "code", "expected"),
    [
        ("", 0, None),
        ("\x00\xff garbage \x1b[31m", 0, None),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9, None),
        ("0, GPU-a, [N/A]\n", 0, None),
        ("0, GPU-a, [Not Supported]\n", 0, None),
        ("0, GPU-a, 24000\n", 3, None),
        ("0, GPU-a, 24000\n", 0, 24000),
        ("²³, GPU-a, 24000\n", 0, None),
    ],
)
def test_what_nvidia_smi_prints_is_a_number_or_unknown(
    smi_dir: Path, tmp_path: Path, output: str, code: int, expected: int | None
) -> None:
    """Garbage, nothing, a driver failure, [N/A], a non-zero exit: the free memory is unknown (None), never a
    crash; a clean line gives its number."""
    (tmp_path / "out.txt").write_bytes(output.encode("utf-8", "surrogateescape"))
    fake_smi(smi_dir, f"cat {tmp_path / 'out.txt'}\nexit {code}")
    assert reading(gpu_id=0)[0] == expected


@pytest.mark.parametrize("gpu_id", [7, "GPU-no-such", "MIG-5c8d8f3e-0000-0000-0000-000000000000"])
def test_a_gpu_nvidia_smi_does_not_report_is_unknown(
    smi_dir: Path, gpu_id: int | str, caplog: pytest.LogCaptureFixture
) -> None:
    """An index or UUID that does not exist (or a MIG instance, which --query-gpu does not list): unknown,
    with a warning naming it."""
    fake_smi(smi_dir, "echo '0, GPU-aaaa, 24000'")
    with caplog.at_level("WARNING"):
        assert reading(gpu_id=gpu_id)[0] is None
    assert repr(gpu_id) in caplog.text


# -- openclaw.json ----------------------------------------------------------------------------------------------

CLEAR = "Zq8v3LmN0pQ7rT2xWk5"  # a key of no recognisable shape: only never reading it keeps it out of output


def test_a_key_written_in_clear_in_openclaw_json_never_reaches_any_output(
    home: Path, tmp_path: Path, server: FakeModelServer
) -> None:
    """A key in clear as apiKey, in a credential header, in the `env` block and after a JSON5 syntax error:
    --show-chain (text and --json), a call, and every file under the state root hold no trace of it."""
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "openclaw.json").write_text(
        f"{{env: {{OPENROUTER_API_KEY: '{CLEAR}'}},\n"
        " models: {providers: {\n"
        f"   corp: {{baseUrl: 'https://corp.example.com/v1', apiKey: '{CLEAR}'}},\n"
        f"   hdr: {{baseUrl: 'http://10.0.0.9/v1', headers: {{Authorization: 'Bearer {CLEAR}'}}}},\n"
        f"   lan: {{baseUrl: '{server.url('lan')}'}}}}}},\n"
        " agents: {defaults: {model: {primary: 'corp/m', fallbacks: ['hdr/m', 'openrouter/x/y', 'lan/m']}}}}\n"
    )
    env = {"OPENCLAW_STATE_DIR": str(folder)}
    runs = [
        call_script("llm_call.py", "--show-chain", home=home, env=env),
        call_script("llm_call.py", "--show-chain", "--json", home=home, env=env),
        call_script("llm_call.py", "--json", "--prompt", "hi", home=home, env=env),
    ]
    for proc in runs:
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
        assert CLEAR not in proc.stdout + proc.stderr
    assert "corp/m (its apiKey is written in openclaw.json" in runs[0].stderr
    assert "hdr/m (its header Authorization is written in openclaw.json" in runs[0].stderr
    (folder / "openclaw.json").write_text(f"{{agents: {{defaults: {{model: 'corp/m'}}}}, apiKey: '{CLEAR}' x}}")
    broken = call_script("llm_call.py", "--show-chain", "--json", home=home, env=env)
    assert broken.returncode == 2 and CLEAR not in broken.stdout + broken.stderr
    for path in home.rglob("*"):
        if path.is_file():
            assert CLEAR.encode() not in path.read_bytes(), path
