"""Planted secrets of every shape never come out: not in any file under the state root, not on any stream.

One secret of each shape is planted where a real one turns up: in the environment (the model chain's key
under a harmless name, a `MY_SERVICE_KEY`), in a command's output and stderr, in a command's arguments
(plan args, task args), in an endpoint's 401 body that echoes the key it was sent, in OpenClaw's log, in
a session snapshot. Every script is run on them; then every file under the state root (and the
workspace's learnings) and every captured stdout and stderr is searched for every planted value.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import call_script
from selfheal.testing import FakeModelServer, Fault

pytestmark = pytest.mark.slow


def _hex(n: int) -> str:
    return secrets.token_hex(n)


@dataclass
class Planted:
    """Lines that carry secrets, and the secret values themselves (what must never be found)."""

    lines: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def add(self, line: str, *values: str) -> None:
        self.lines.append(line)
        self.values.extend(values)


def plant() -> Planted:
    p = Planted()
    chain_key = f"chainkey{_hex(10)}"  # the model chain's key, under a name that does not look secret
    service = f"svc{_hex(10)}"  # MY_SERVICE_KEY: secret by its name only
    p.env = {"BACKEND_ACCESS": chain_key, "MY_SERVICE_KEY": service}
    p.add(f"using backend key {chain_key}", chain_key)
    p.add(f"service answered for {service}", service)
    sk = f"sk-proj-{_hex(16)}"
    p.add(f"Incorrect API key provided: {sk}", sk)
    ghp = f"ghp_{_hex(18)}"
    p.add(f"git push https://github.com with {ghp}", ghp)
    pat = f"github_pat_{_hex(20)}"
    p.add(f"token {pat} expired", pat)
    slack = f"xoxb-{_hex(6)}-{_hex(8)}"
    p.add(f"slack said no to {slack}", slack)
    jwt_sig = _hex(16)
    jwt = f"eyJhbGciOiJIUzI1NiJ9.eyJ{_hex(10)}.{jwt_sig}"
    p.add(f"session {jwt} rejected", jwt, jwt_sig)
    bearer = f"tok{_hex(12)}"
    p.add(f"Authorization: Bearer {bearer}", bearer)
    basic = base64.b64encode(f"admin:{_hex(8)}".encode()).decode()
    p.add(f"authorization: Basic {basic}", basic)
    url_pw = f"pw{_hex(8)}"
    p.add(f"fatal: could not read from https://deploy:{url_pw}@git.example.com/repo.git", url_pw)
    flag_token = f"tk{_hex(8)}"
    p.add(f"ran: deploy --token {flag_token} --region eu", flag_token)
    flag_pw = f"pa{_hex(8)}"
    p.add(f"ran: mysql --password {flag_pw} -h db", flag_pw)
    flag_key = f"ak{_hex(8)}"
    p.add(f"ran: client --api-key={flag_key}", flag_key)
    curl_pw = f"cu{_hex(8)}"
    p.add(f"curl -u admin:{curl_pw} https://api.example.com/", curl_pw)
    akia = "AKIA" + _hex(8).upper()
    p.add(f"aws: access key {akia} is not valid", akia)
    aws_secret = f"wJalr{_hex(17)}/K7MDENG"
    p.add(f"aws_secret_access_key = {aws_secret}", aws_secret)
    body = [f"MII{_hex(30)}" for _ in range(3)]
    p.add("\n".join(["-----BEGIN RSA PRIVATE KEY-----", *body, "-----END RSA PRIVATE KEY-----"]), *body)
    # Shapes a review found leaking (session 22): prefixed names, an empty URL user, a key glued after `_`,
    # and a key where a line over 64 KiB is cut into pieces.
    redis_pw = f"Rp{_hex(8)}"
    p.add(f"redis.exceptions.ConnectionError: Error 111 connecting to redis://:{redis_pw}@localhost:6379.", redis_pw)
    db_pw = f"Db{_hex(8)}"
    p.add(f"env: DB_PASSWORD={db_pw} ./migrate.sh failed", db_pw)
    client_secret = f"cs_{_hex(10)}"
    p.add(f'oauth: {{"client_secret": "{client_secret}", "grant": "refresh"}}', client_secret)
    glued = f"sk-proj-{_hex(16)}"
    p.add(f"OPENAI_KEY_{glued} rejected", glued)
    long_key = f"sk-proj-{_hex(20)}"
    p.add("x" * (65536 * 2 - 30) + f" {long_key} at the end of a very long line", long_key)
    # Shapes users meet that leaked until the redactor's shapes review: a password in prose, libpq's
    # variable, webhook URLs whose path is the secret, a Telegram bot's URL, a key in JSON held in a JSON
    # string, a bare `key` query parameter, a URL password percent-encoded in a redirect.
    prose = f"hunter{_hex(6)}"
    p.add(f"login failed for admin with password {prose}", prose)
    pg = f"Pg{_hex(8)}"
    p.add(f"PGPASSWORD={pg} psql -h db -c 'select 1'", pg)
    slack_hook = _hex(12)
    p.add(f"POST https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{slack_hook} 404", slack_hook)
    discord_hook = f"dH{_hex(30)}"
    p.add(f"discord: https://discord.com/api/webhooks/123456789012345678/{discord_hook}", discord_hook)
    telegram = f"AA{_hex(17)}x"
    p.add(f"GET https://api.telegram.org/bot123456789:{telegram}/sendMessage: 401", telegram)
    escaped = f"ej{_hex(8)}"
    p.add(f'{{"body": "{{\\"api_key\\": \\"{escaped}\\"}}"}}', escaped)
    query_key = f"qk{_hex(8)}"
    p.add(f"GET https://maps.example.com/geocode?address=x&key={query_key} 403", query_key)
    encoded_pw = f"ep{_hex(8)}"
    p.add(f"redirect to /login?next=https%3A%2F%2Fbob%3A{encoded_pw}%40internal%2F", encoded_pw)
    return p


class Runner:
    """Runs scripts as a user would (their main() in this process: call_script keeps what they and the
    commands they start write to either stream) and keeps every stdout and stderr."""

    def __init__(self, home: Path, env: dict[str, str], cwd: Path) -> None:
        self.home = home
        self.env = env
        self.cwd = cwd
        self.streams: list[tuple[str, str]] = []

    def __call__(self, script: str, *args: str, ok: tuple[int, ...] = (0, 1, 3)) -> subprocess.CompletedProcess[str]:
        proc = call_script(script, *args, home=self.home, env=self.env, cwd=self.cwd)
        where = (
            f"run {len(self.streams) // 2 + 1} ({script} {args[0] if args else ''})"  # not the args: they hold secrets
        )
        self.streams += [(f"stdout of {where}", proc.stdout), (f"stderr of {where}", proc.stderr)]
        assert proc.returncode in ok, (where, proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (where, proc.stderr[-2000:])
        return proc


def leaks(planted: Planted, places: list[tuple[str, str]]) -> list[str]:
    return [f"{value!r} in {where}" for where, text in places for value in planted.values if value in text]


def files_under(*roots: Path) -> list[tuple[str, str]]:
    out = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out.append((str(path), path.read_bytes().decode("utf-8", "replace")))
    return out


def test_no_planted_secret_reaches_any_file_or_stream(
    home: Path, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    """Every script run on planted secrets of every shape leaves none of them in a file or on a stream."""
    planted = plant()
    with FakeModelServer() as server:
        # The endpoint refuses the key and echoes it back, as OpenAI's 401 does.
        chain_key = planted.env["BACKEND_ACCESS"]
        server.set_default("main", Fault.http(401, code="invalid_api_key", message=f"Incorrect API key: {chain_key}"))
        write_config(
            f"""
            models:
              timeout_s: 2
              timeout_per_1k_tokens_s: 0
              chain:
                - {{name: main, base_url: "{server.url("main")}", model: qwen, api_key_env: BACKEND_ACCESS}}
            fixes:
              model_at_failures: 1
            """
        )
        work = tmp_path / "work"
        work.mkdir()
        leak = work / "leak.sh"
        text = "\n".join(planted.lines)
        leak.write_text(f"cat <<'EOF'\n{text}\nEOF\ncat >&2 <<'EOF'\n{text}\nEOF\nexit 3\n")
        args = [planted.lines[10].split("ran: ")[1], planted.lines[11].split("ran: ")[1]]
        argv = ["sh", str(leak), *" ".join(args).split()]
        run = Runner(home, planted.env, work)

        run("retry_run.py", "--task", "rr", "--max-attempts", "1", "--", *argv)
        run("retry_run.py", "--json", "--task", "rr", "--max-attempts", "1", "--", *argv)

        plan = work / "plan.yaml"
        plan.write_text(
            textwrap.dedent(
                f"""
                name: leaky
                steps:
                  - name: first
                    run: {json.dumps(argv)}
                """
            )
        )
        run("workflow.py", "run", str(plan), "--task", "wf")
        run("workflow.py", "status", "wf", "--json")

        # A task's command is kept to be run again: one holding a secret is refused, not saved masked.
        refused = run("tasks.py", "add", "leaky", "--", *argv, ok=(2,))
        assert "holds a secret" in refused.stderr and "environment" in refused.stderr
        run("tasks.py", "add", "leaky", "--", "sh", str(leak))
        run("tasks.py", "run-next", "--task", "leaky", "--echo")
        for verb in (("list", "--json"), ("show", "leaky"), ("log", "leaky")):
            run("tasks.py", *verb)

        run("llm_call.py", "--json", "--task", "llmjob", "--prompt", f"summarise {planted.lines[2]}")
        run("breakers.py", "reset", "main")  # the 401 opened it; each call below must read the body again
        run("llm_call.py", "--task", "llmjob", "--prompt", "again")

        openclaw_log = work / "openclaw.log"
        error = "; ".join(planted.lines[:-1]).replace('"', "'")
        openclaw_log.write_text(
            json.dumps(
                {
                    "0": '{"subsystem":"diagnostic"}',
                    "1": {"errorName": "Error"},
                    "2": f'lane task error: lane=main durationMs=10 error="{error}"',
                    "_meta": {"date": "2026-11-21T00:04:51.782Z", "logLevelName": "ERROR"},
                    "time": "2026-11-21T00:04:51.782Z",
                }
            )
            + "\n"
        )
        for task in ("rr", "wf", "llmjob"):
            run("breakers.py", "reset", "main")
            run("self_heal.py", "--task", task)
        run("self_heal.py", "--from-openclaw-logs", str(openclaw_log), "--no-model", "--json")
        run("self_heal.py", "list")
        workspace = tmp_path / "workspace"
        workspace.mkdir()
        run("self_heal.py", "learnings", "--workspace", str(workspace))

        messages = work / "messages.json"
        messages.write_text(json.dumps([{"role": "user", "content": line} for line in planted.lines]))
        run("snapshot.py", "save", "sess", "--messages-file", str(messages))
        run("snapshot.py", "restore", "sess", "--json")

        run("analyze_logs.py", "--json", str(openclaw_log))
        run("analyze_logs.py")
        run("health_check.py", "--json", ok=(0, 1, 2, 3))
        assert server.requests("main") >= 5  # the 401 body really was read, by llm_call and the healer

    found = leaks(planted, run.streams + files_under(home, workspace))
    assert found == []
    # The runs really happened and were recorded (an empty state root would pass the search trivially).
    assert list((home / "fixes").glob("FIX-*.json")) and list((home / "tasks").glob("*.log"))
    assert (workspace / ".learnings" / "ERRORS.md").exists()


def test_a_notification_command_never_gets_a_planted_secret(home: Path, tmp_path: Path) -> None:
    """retry_run.py --notify fills {summary} and {command} into a command that sends them on (a chat, a
    mail): a secret on the failed command's line or in its last line of output reaches it masked."""
    planted = plant()
    sk, flag_token = planted.values[2], planted.values[11]
    out = tmp_path / "message"
    notify = f'sh -c \'printf "%s\\n" "$@" >> {out}\' notify {{summary}} {{command}}'
    command = ["sh", "-c", f"echo 'Incorrect API key provided: {sk}' >&2; exit 2", "deploy", "--token", flag_token]
    run = Runner(home, planted.env, tmp_path)
    proc = run("retry_run.py", "--json", "--notify", notify, "--", *command, ok=(3,))
    assert json.loads(proc.stdout)["notified"]["ok"]
    message = out.read_text()
    assert "failed after" in message and "deploy --token" in message  # the notifier ran, with both values
    assert leaks(planted, [("the notification's arguments", message), *run.streams]) == []
