"""llm_call.py as users and cron run it, and the chain shared by several processes at once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, SCRIPTS, call_script, script_env
from selfheal.core.breaker import Breakers
from selfheal.core.config import load_config
from selfheal.state.root import StateRoot
from selfheal.testing import FakeModelServer, Fault

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as srv:
        yield srv


@pytest.fixture
def two(server: FakeModelServer, write_config: Callable[[str], Path]) -> Callable[[str], Path]:
    """Point the chain at primary and backup on the fake server, with extra YAML appended."""

    def make(extra: str = "") -> Path:
        return write_config(
            "models:\n  read_timeout_base_s: 2\n  timeout_per_1k_tokens_s: 0\n  chain:\n"
            f'    - {{name: primary, base_url: "{server.url("primary")}", model: qwen}}\n'
            f'    - {{name: backup, base_url: "{server.url("backup")}", model: phi}}\n' + extra
        )

    make()
    return make


def call(home: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return call_script("llm_call.py", *args, home=home, stdin=stdin, env=env)


def test_the_answer_goes_to_stdout_and_the_story_to_stderr(home: Path, two: Any, server: FakeModelServer) -> None:
    """A fallback answer prints as plain text; stderr says which model answered and why."""
    server.script("primary", Fault.http(503, retry_after=9))
    proc = call(home, "--prompt", "Summarise last night")
    assert proc.returncode == 0 and proc.stdout == "ok from backup\n"
    assert "answered by backup (phi) (fallback after 1 failed attempt(s))" in proc.stderr


def test_a_primary_passed_over_is_named_with_why_not_counted_as_a_failed_attempt(
    home: Path, two: Any, server: FakeModelServer
) -> None:
    """An open breaker skips the primary without a request: stderr says so, not "after 0 failed attempts"."""
    config = load_config()
    breakers = Breakers(StateRoot(home), config.breakers)
    breakers.release(breakers.acquire("primary"), ok=False, error_class="auth")
    proc = call(home, "--prompt", "hi")
    assert proc.returncode == 0 and proc.stdout == "ok from backup\n"
    assert "answered by backup (phi) (fallback after primary skipped: " in proc.stderr, proc.stderr
    assert "failed attempt" not in proc.stderr and server.requests("primary") == 0


def test_json_report_has_every_attempt(home: Path, two: Any, server: FakeModelServer) -> None:
    """--json: one object with the answer, the model that answered, and each failed attempt as a failure."""
    server.script("primary", Fault.empty(), Fault.empty())
    result = json.loads(call(home, "--json", "--prompt", "hi").stdout)
    assert result["ok"] and result["endpoint"] == "backup" and result["fallback_used"]
    assert [(a["endpoint"], a["outcome"]) for a in result["attempts"]] == [
        ("primary", "rejected"),
        ("primary", "rejected"),
        ("backup", "answered"),
    ]


def test_json_output_prints_the_parsed_object(home: Path, two: Any, server: FakeModelServer, tmp_path: Path) -> None:
    """--json-output with a schema prints the checked JSON object, ready for jq."""
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}))
    server.script("primary", Fault.reply('Here it is: ```json\n{"n": 3}\n```'), Fault.reply('```json\n{"n": 3}\n```'))
    proc = call(home, "--json-output", "--schema", str(schema), "--prompt", "count")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"n": 3}


def test_prompt_from_stdin(home: Path, two: Any) -> None:
    """--prompt-file - reads the prompt from standard input."""
    assert call(home, "--prompt-file", "-", stdin="what happened?").returncode == 0


def test_streamed_text_and_a_restart_notice(home: Path, two: Any, server: FakeModelServer) -> None:
    """--stream prints as it arrives; a cut stream is declared void on stderr before the new answer."""
    server.script("primary", Fault.stream("half of it", cut_after=2), Fault.stream("the whole answer"))
    proc = call(home, "--stream", "--prompt", "hi")
    assert proc.returncode == 0
    assert proc.stdout.startswith("half of ") and proc.stdout.rstrip().endswith("the whole answer")
    assert "the text above is void" in proc.stderr


def test_a_stream_answered_by_the_rules_fallback_prints_the_rules_answer(
    home: Path, two: Callable[[str], Path], server: FakeModelServer
) -> None:
    """--stream, every model cut off midway, models.rules_fallback answering: the partial text is declared
    void and the rules' answer is printed (not just the newline after nothing)."""
    rules = json.dumps([PYTHON, "-c", "import sys; sys.stdin.read(); print('rules answer')"])
    two(f"  rules_fallback: {rules}\npolicies: {{transient: {{retries: 0}}}}\n")
    for name in ("primary", "backup"):
        server.set_default(name, Fault.stream("partial words here", cut_after=2))
    proc = call(home, "--stream", "--prompt", "hi")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("rules answer"), proc.stdout
    assert "the text above is void" in proc.stderr and "answered by rules" in proc.stderr


def test_every_endpoint_failing_exits_3_with_the_attempts(home: Path, two: Any, server: FakeModelServer) -> None:
    """Nothing usable anywhere: exit 3, and --json still gives one object listing each failure."""
    for name in ("primary", "backup"):
        server.set_default(name, Fault.http(400, code="invalid_request"))
    proc = call(home, "--json", "--prompt", "hi")
    result = json.loads(proc.stdout)
    assert proc.returncode == 3 and result["ok"] is False and result["error"] == "ModelCallFailed"
    assert len(result["attempts"]) == 2


def test_every_breaker_open_exits_4(home: Path, two: Any, server: FakeModelServer) -> None:
    """All breakers open: nothing is sent, exit 4 (try later)."""
    config = load_config()
    breakers = Breakers(StateRoot(home), config.breakers)
    for name in ("primary", "backup"):
        breakers.release(breakers.acquire(name), ok=False, error_class="auth")
    proc = call(home, "--json", "--prompt", "hi")
    assert proc.returncode == 4 and json.loads(proc.stdout)["error"] == "NoEndpointAvailable"
    assert server.requests("primary") == server.requests("backup") == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--prompt", "hi", "--schema", "{schema}"], "--schema needs --json-output"),
        (["--prompt", "hi", "--json-output", "--schema", "{schema}"], "not JSON"),
        (["--prompt", "hi", "--json-output", "--schema", "/no/such/schema.json"], "cannot read it"),
        (["--prompt-file", "/no/such/prompt.txt"], "prompt file /no/such/prompt.txt"),
        (["--prompt-file", "/dev/zero"], "prompt file /dev/zero: larger than 16777216 bytes"),  # not read whole
        (["--prompt-file", "{latin1}"], "not UTF-8 text (byte 3)"),
        (["--prompt", "hi", "--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["--prompt", "hi", "--task", "../x"], "invalid task id"),
        ([], "one of the arguments --prompt --prompt-file is required"),
        # A prompt file an earlier step left empty: a call (and its cost) for nothing, answered as if asked.
        (["--prompt-file", "{empty}"], "prompt file {empty}: empty; nothing was sent"),
        (["--prompt", " \n"], "--prompt: empty; nothing was sent"),
    ],
)
def test_bad_input_exits_2(
    home: Path, two: Any, server: FakeModelServer, tmp_path: Path, args: list[str], words: str
) -> None:
    """Bad flags and files are refused with a message naming them, before any request."""
    schema = tmp_path / "bad.json"
    schema.write_text("{not json")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1") + b"\xe9")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")

    def filled(text: str) -> str:
        return text.replace("{schema}", str(schema)).replace("{latin1}", str(latin1)).replace("{empty}", str(empty))

    proc = call(home, *[filled(a) for a in args])
    assert proc.returncode == 2 and filled(words) in proc.stderr, proc.stderr
    assert server.requests("primary") == server.requests("backup") == 0


def test_missing_key_variable_exits_2(home: Path, server: FakeModelServer, write_config: Callable[[str], Path]) -> None:
    """An endpoint whose key variable is unset is a configuration error naming the variable."""
    write_config(
        f'models:\n  chain:\n    - {{name: p, base_url: "{server.url("p")}", model: m, api_key_env: MY_KEY}}\n'
    )
    proc = call(home, "--prompt", "hi")
    assert proc.returncode == 2 and "$MY_KEY, which is not set" in proc.stderr
    assert call(home, "--prompt", "hi", MY_KEY="secret-value").returncode == 0


def test_malformed_base_url_exits_2(home: Path, write_config: Callable[[str], Path]) -> None:
    """A base URL without a scheme is caught when the settings load."""
    write_config("models:\n  chain:\n    - {name: p, base_url: 'localhost:8000/v1', model: m}\n")
    proc = call(home, "--prompt", "hi")
    assert proc.returncode == 2 and "models.chain[0].base_url: must be an http:// or https:// URL" in proc.stderr


# -- several processes, one chain ----------------------------------------------------------------------------


def run_workers(home: Path, tmp_path: Path, n: int, calls: int, tag: str) -> list[dict[str, int]]:
    go = tmp_path / f"go-{tag}"
    env = script_env(home, PYTHONPATH=str(SCRIPTS), SELFHEAL_TESTING="1")
    argv = [PYTHON, str(HELPERS / "llm_worker.py"), str(calls), str(go), str(n)]  # n processes, forked from one
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    go.write_text("go")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == n, out
    return results


@pytest.mark.slow
def test_four_processes_through_a_dead_endpoint(
    home: Path, tmp_path: Path, two: Callable[[str], Path], server: FakeModelServer
) -> None:
    """Four processes at once: the dead primary sees at most the breaker threshold plus the allowed probes,
    every call still gets the backup's answer; after recovery the breaker closes and traffic returns (the
    unreachable primary is also ejected). The open time and the ejection are long, so however slowly a loaded
    machine runs the first round, no probe is due during it; then they are moved to now, as if they had passed."""
    two("breakers: {open_s: 60, eject_s: 60}\n")
    server.set_default("primary", Fault.reset())
    first = run_workers(home, tmp_path, 4, 5, "down")
    assert sum(r["backup"] for r in first) == 20 and sum(r["failed"] for r in first) == 0
    assert server.requests("primary") <= 5
    hits_while_down = server.requests("primary")
    server.set_default("primary", None)
    breakers = Breakers(StateRoot(home), load_config().breakers)
    with breakers._locked("primary") as (record, _):  # the open time and the ejection pass
        assert record.state == "open"
        record.open_until = time.time()
        if record.ejected_until is not None:
            record.ejected_until = time.time()
    second = run_workers(home, tmp_path, 4, 5, "up")
    assert sum(r["failed"] for r in second) == 0
    assert server.requests("primary") > hits_while_down + 3  # probes, then everyone again
    state = Breakers(StateRoot(home), load_config().breakers).status("primary")
    assert state["state"] == "closed"


# -- the user's OpenClaw models ----------------------------------------------------------------------------------

OPENCLAW_JSON5 = """{
  // written as OpenClaw's docs write it: JSON5
  agents: {
    defaults: {
      model: {
        primary: "local/qwen3",
        fallbacks: ["anthropic/claude-sonnet-4-5", "backup/small-model",],
      },
    },
  },
  models: {
    mode: "merge",
    providers: {
      local: {baseUrl: "LOCAL_URL", api: "openai-completions", models: [{id: "qwen3", contextWindow: 32768}]},
      backup: {baseUrl: "BACKUP_URL", apiKey: "${BACKUP_KEY}"},
      /* a provider self-heal cannot call */
      gem: {baseUrl: "https://example.invalid/v1", api: "google-generative-ai"},
    },
  },
}
"""


@pytest.fixture
def openclaw_home(tmp_path: Path, server: FakeModelServer) -> Path:
    """An OpenClaw state folder whose openclaw.json names a local model, Anthropic and a keyed backup."""
    folder = tmp_path / "openclaw"
    folder.mkdir()
    text = OPENCLAW_JSON5.replace("LOCAL_URL", server.url("local")).replace("BACKUP_URL", server.url("backup"))
    (folder / "openclaw.json").write_text(text)
    return folder


def test_with_no_chain_configured_the_users_openclaw_models_answer(
    home: Path, openclaw_home: Path, server: FakeModelServer
) -> None:
    """No config.yaml chain: OpenClaw's primary answers, with its fallback behind it; one stderr line names
    the model that cannot be used and why."""
    server.script("local", Fault.http(401, code="invalid_api_key"))
    env = {"OPENCLAW_STATE_DIR": str(openclaw_home), "BACKUP_KEY": "sk-backup-secret-123"}
    proc = call(home, "--prompt", "hi", **env)
    assert proc.returncode == 0 and proc.stdout == "ok from backup\n", proc.stderr
    unusable = [line for line in proc.stderr.splitlines() if "not used from openclaw.json" in line]
    assert len(unusable) == 1 and "anthropic/claude-sonnet-4-5 (speaks Anthropic's Messages API" in unusable[0]
    assert server.bodies("local")[-1]["model"] == "qwen3" and server.bodies("backup")[-1]["model"] == "small-model"
    assert "sk-backup-secret-123" not in proc.stdout + proc.stderr


def test_show_chain_says_where_each_entry_came_from(home: Path, openclaw_home: Path, write_config: Any) -> None:
    """--show-chain --json: each entry with its source in openclaw.json and its key variable's name, never
    the key; a config.yaml chain wins over OpenClaw's."""
    env = {"OPENCLAW_STATE_DIR": str(openclaw_home), "BACKUP_KEY": "sk-backup-secret-123"}
    proc = call(home, "--show-chain", "--json", **env)
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and [(e["name"], e["api_key_env"]) for e in result["chain"]] == [
        ("local-qwen3", None),
        ("backup-small-model", "BACKUP_KEY"),
    ]
    assert "agents.defaults.model.primary = 'local/qwen3'" in result["chain"][0]["source"]
    assert "agents.defaults.model.fallbacks[1]" in result["chain"][1]["source"]
    assert any("anthropic/claude-sonnet-4-5" in u for u in result["unusable"])
    assert "sk-backup-secret-123" not in proc.stdout + proc.stderr
    write_config('models:\n  chain:\n    - {name: mine, base_url: "http://127.0.0.1:9/v1", model: m}\n')
    mine = json.loads(call(home, "--show-chain", "--json", **env).stdout)
    assert [e["name"] for e in mine["chain"]] == ["mine"] and "config.yaml" in mine["chain"][0]["source"]


@pytest.mark.parametrize("output", ["--json", "text"])
def test_a_credential_a_base_url_carries_is_masked_whatever_its_variable_is_called(
    home: Path, tmp_path: Path, output: str
) -> None:
    """openclaw.json's `baseUrl: "https://.../v1?code=${FUNC_CODE}"` (an Azure Functions key): --show-chain
    printed the URL with the code in it, its variable's name being no secret's. A value a base URL carries in
    its query, fragment or user info is masked in every output, as the key variables are."""
    folder = tmp_path / "oc"
    folder.mkdir()
    provider = {
        "baseUrl": "https://corp.example.com/v1?code=${FUNC_CODE}",
        "api": "openai-completions",
        "apiKey": "${CORP_LLM}",
        "models": [{"id": "m1"}],
    }
    config = {"models": {"providers": {"corp": provider}}, "agents": {"defaults": {"model": {"primary": "corp/m1"}}}}
    (folder / "openclaw.json").write_text(json.dumps(config))
    env = {"OPENCLAW_STATE_DIR": str(folder), "FUNC_CODE": "zq81xk2Lm0pQrs", "CORP_LLM": "harmless-value-123"}
    proc = call(home, "--show-chain", *([output] if output == "--json" else []), **env)
    assert proc.returncode == 0, proc.stderr
    assert "https://corp.example.com/v1?code=***" in proc.stdout
    assert "zq81xk2Lm0pQrs" not in proc.stdout + proc.stderr


def test_openclaw_models_none_of_which_can_be_used_are_a_config_error(
    home: Path, openclaw_home: Path, server: FakeModelServer
) -> None:
    """A hosted backup without its key and a provider of another API: exit 2 naming each model and why."""
    path = openclaw_home / "openclaw.json"
    text = path.read_text().replace('primary: "local/qwen3"', 'primary: "gem/gemini-pro"')
    path.write_text(text.replace(server.url("backup"), "https://backup.example.invalid/v1"))
    proc = call(home, "--prompt", "hi", OPENCLAW_STATE_DIR=str(openclaw_home))
    assert proc.returncode == 2
    assert "none of OpenClaw's models can be used" in proc.stderr and "$BACKUP_KEY is not set" in proc.stderr
    assert "gem/gemini-pro (speaks Google's Gemini API, not the OpenAI chat API)" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- as a script users pipe into and stop ------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--prompt", "--system"])
def test_command_line_text_that_is_not_utf_8_is_refused_before_any_request(
    home: Path, two: Any, server: FakeModelServer, option: str
) -> None:
    """A byte of another encoding on the command line (Latin-1 `café`, as Python holds it: a lone surrogate)
    exits 2 naming the option, before a request: not a "permanent" failure of every endpoint in the ledger."""
    args = ["--prompt", "caf\udce9"] if option == "--prompt" else ["--prompt", "hi", "--system", "caf\udce9"]
    proc = call(home, "--json", *args)
    assert proc.returncode == 2, proc.stderr
    assert f"{option}: not UTF-8 text (character 3)" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["exit"] == 2
    assert server.requests("primary") == server.requests("backup") == 0
    assert not (home / "ledger").exists() or not any((home / "ledger").iterdir())


def test_every_failure_json_carries_its_exit_code(home: Path, two: Any, server: FakeModelServer) -> None:
    """--json failures give `exit` as every other error object does: 3 when every endpoint failed, 4 when every
    breaker was open."""
    for name in ("primary", "backup"):
        server.set_default(name, Fault.http(400, code="invalid_request"))
    failed = call(home, "--json", "--prompt", "hi")
    assert failed.returncode == 3 and json.loads(failed.stdout)["exit"] == 3
    breakers = Breakers(StateRoot(home), load_config().breakers)
    for name in ("primary", "backup"):
        breakers.release(breakers.acquire(name), ok=False, error_class="auth")
    closed = call(home, "--json", "--prompt", "hi")
    assert closed.returncode == 4 and json.loads(closed.stdout)["exit"] == 4


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_during_a_call_ends_it_with_exit_3_and_one_json_object(
    home: Path, two: Any, server: FakeModelServer, signum: int
) -> None:
    """`timeout`, a service stop, a closed terminal or Ctrl-C while the model is silent: the call ends at once with
    exit 3 (failed: interrupted, as retry_run.py's), one JSON object saying so, no traceback, and the breaker
    holds no permit of the process that is gone."""
    server.set_default("primary", Fault.hang(30))
    # A background process inherits SIGINT ignored (and, under nohup, SIGHUP), and Python keeps them so: a
    # terminal's Ctrl-C and hang-up are not ignored.
    as_from_a_terminal = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
        " signal.signal(signal.SIGHUP, signal.SIG_DFL); os.execv(*sys.argv[1:2], sys.argv[1:])"
    )
    child = subprocess.Popen(
        [PYTHON, "-c", as_from_a_terminal, PYTHON, str(SCRIPTS / "llm_call.py"), "--json", "--prompt", "hi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(home),
    )
    deadline = time.monotonic() + 30
    while server.requests("primary") == 0 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.01)
    child.send_signal(signum)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 3, (child.returncode, err)
    assert "Traceback" not in err and f"interrupted by {signal.Signals(signum).name}" in err, err
    report = json.loads(out)
    assert report["ok"] is False and report["error"] == "Interrupted" and report["exit"] == 3
    assert Breakers(StateRoot(home), load_config().breakers).status("primary")["in_flight"] == 0
