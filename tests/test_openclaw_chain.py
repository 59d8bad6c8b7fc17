"""The user's OpenClaw models as self-heal's chain: openclaw.json read and resolved the way OpenClaw 2026.9.6
reads it (its docs in the npm package, its bundled provider manifests), checked against the real package."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from selfheal.core.config import load_config
from selfheal.core.openclaw_config import config_path, expand, read_openclaw_json, state_dir
from selfheal.errors import ConfigError
from selfheal.models import openclaw_chain
from selfheal.models.llm import complete
from selfheal.models.openclaw_chain import BUNDLED, Chain
from selfheal.state.root import resolve_state_root
from selfheal.state.skill_status import status_folder
from selfheal.testing import FakeModelServer, Fault


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """write(text, {name: text}): openclaw.json (and files beside it) in a state folder; the environment."""

    def make(text: str, files: dict[str, str] | None = None) -> dict[str, str]:
        folder = tmp_path / "oc"
        folder.mkdir(exist_ok=True)
        (folder / "openclaw.json").write_text(text)
        for name, body in (files or {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(body)
        return {"OPENCLAW_STATE_DIR": str(folder), "HOME": str(tmp_path / "home")}

    return make


def chain_of(env: dict[str, str]) -> Chain:
    found = openclaw_chain.chain_from_openclaw(env)
    assert found is not None
    return found


def rows(chain: Chain) -> list[tuple[str, str, str | None]]:
    return [(e.model, e.base_url, e.api_key_env) for e in chain.entries]


# -- the file, read as OpenClaw reads it -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{\n\tagents: {\n\t\tdefaults: {\n\t\t\tmodel: { primary: "openrouter/a/b" },\n\t\t},\n\t},\n}\n',
        '{agents:{defaults:{model:{primary:"openrouter/a/b"}}}}',
        "{agents: {defaults: {model: {primary: 'openrouter/a/b'}, models: {'openrouter/a/b': {alias: 'Bob\\'s'}}}}}",
    ],
    ids=["tabs", "no-spaces", "escaped-quote"],
)
def test_json5_as_openclaw_accepts_it_is_read(write: Callable[..., dict[str, str]], text: str) -> None:
    """Tabs, a bare key right before its value, an escaped quote in single quotes: all valid to OpenClaw
    (YAML standing in for JSON5 misread every one)."""
    env = write(text) | {"OPENROUTER_API_KEY": "sk-or"}
    assert rows(chain_of(env)) == [("a/b", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY")]


def test_includes_are_resolved_as_openclaw_documents_them(write: Callable[..., dict[str, str]]) -> None:
    """One file replaces the object naming it; a list is deep-merged in order; the object's own keys go over
    the result; nested includes are relative to the file that names them."""
    env = write(
        '// split up\n{agents: {$include: "./parts/agents.json5"},'
        ' models: {$include: ["./m1.json5", "./m2.json5"], mode: "merge"}}',
        {
            "parts/agents.json5": '{defaults: {$include: "./defaults.json5"}}',
            "parts/defaults.json5": '{model: {primary: "lan/qwen3", fallbacks: ["lan/small"]}}',
            "m1.json5": '{providers: {lan: {baseUrl: "http://10.0.0.5:8000/v1",'
            ' models: [{id: "qwen3", contextTokens: 32768}]}}}',
            "m2.json5": '{providers: {lan: {models: [{id: "qwen3", contextTokens: 16384}, {id: "small"}]}}}',
        },
    )
    found = chain_of(env)
    assert [(e.model, e.base_url, e.context_tokens) for e in found.entries] == [
        ("qwen3", "http://10.0.0.5:8000/v1", 16384),  # the later file's list replaced the earlier one's
        ("small", "http://10.0.0.5:8000/v1", None),
    ]


@pytest.mark.parametrize(
    ("top", "files", "problem"),
    [
        ('{agents: {$include: "../outside.json5"}}', {}, "is outside"),
        ('{agents: {$include: "./a.json5"}}', {"a.json5": '{x: {$include: "./openclaw.json"}}'}, "includes itself"),
        ('{agents: {$include: "./missing.json5"}}', {}, "no such file"),
        ("{agents: {$include: 3}}", {}, "must be a path"),
    ],
    ids=["outside", "cycle", "missing", "not-a-path"],
)
def test_a_bad_include_is_an_error_naming_the_file(
    write: Callable[..., dict[str, str]], top: str, files: dict[str, str], problem: str
) -> None:
    env = write(top, files)
    (Path(env["OPENCLAW_STATE_DIR"]).parent / "outside.json5").write_text("{}")
    with pytest.raises(ConfigError, match=problem) as caught:
        openclaw_chain.chain_from_openclaw(env)
    assert "openclaw.json" in str(caught.value) or ".json5" in str(caught.value)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_something_other_than_a_file_in_place_of_openclaw_json_is_named_never_waited_on(
    write: Callable[..., dict[str, str]], kind: str
) -> None:
    """A FIFO (which would hang the reader for good), a folder or a link to /dev/zero where openclaw.json
    belongs: a configuration error saying what is there (exit 2), not skill.yaml's chain in silence, and
    the readers that carry on without the file (the gateway's port, the log discovery) get {} at once."""
    import os

    from selfheal.core.openclaw_config import read_config

    env = write("{}")
    path = Path(env["OPENCLAW_STATE_DIR"]) / "openclaw.json"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    what = {"fifo": r"a FIFO \(named pipe\)", "folder": "a folder", "device": "a device"}[kind]
    config = load_config(env=env)
    with pytest.raises(ConfigError, match=f"openclaw.json: is {what}, not a configuration file"):
        openclaw_chain.resolve(config, env)
    with pytest.raises(ConfigError, match=what):
        openclaw_chain.chain_from_openclaw(env)
    assert read_config(env) == {}


def test_an_include_that_is_a_fifo_is_named_as_one(write: Callable[..., dict[str, str]]) -> None:
    """`$include: "./models.json5"` naming a FIFO: the error says it is a FIFO (it is there; "no such file"
    sent the user looking for a typo), and nothing waits on it."""
    import os

    env = write('{agents: {defaults: {model: "lan/q"}}, models: {$include: "./models.json5"}}')
    os.mkfifo(Path(env["OPENCLAW_STATE_DIR"]) / "models.json5")
    with pytest.raises(ConfigError, match=r"models\.json5 is a FIFO \(named pipe\), not a file"):
        openclaw_chain.chain_from_openclaw(env)


def test_an_include_root_named_by_the_environment_is_allowed(
    write: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "agents.json5").write_text('{defaults: {model: "lan/qwen3"}}')
    env = write(
        f'{{agents: {{$include: "{shared}/agents.json5"}}, models: {{providers: {{lan: {{baseUrl: "http://10.1.1.1/v1"}}}}}}}}'
    )
    env["OPENCLAW_INCLUDE_ROOTS"] = str(shared)
    assert rows(chain_of(env)) == [("qwen3", "http://10.1.1.1/v1", None)]


def test_where_openclaw_json_is_follows_openclaw_home(tmp_path: Path) -> None:
    """OPENCLAW_HOME replaces HOME for OpenClaw's paths (help/environment.md), self-heal's state folder among
    them; the explicit ones still win."""
    env = {"HOME": "/h", "OPENCLAW_HOME": "/srv/oc"}
    assert config_path(env) == Path("/srv/oc/.openclaw/openclaw.json")
    assert state_dir({"HOME": "/h", "OPENCLAW_HOME": "~/svc"}) == Path("/h/svc/.openclaw")
    assert config_path({**env, "OPENCLAW_STATE_DIR": "~/st"}) == Path("/srv/oc/st/openclaw.json")
    assert config_path({**env, "OPENCLAW_CONFIG_PATH": "/x.json"}) == Path("/x.json")
    # self-heal's own state and status file live in the same OpenClaw folder
    assert resolve_state_root(env) == Path("/srv/oc/.openclaw/self-heal")
    assert status_folder(env) == Path("/srv/oc/.openclaw/skills/status")
    assert resolve_state_root({**env, "SELFHEAL_HOME": "~/sh"}) == Path("/h/sh")


def test_environment_substitution_follows_openclaw_rules() -> None:
    env = {"HOST": "gpu-box", "EMPTY": "", "lower": "x"}
    assert expand("http://${HOST}:8000/v1", env) == ("http://gpu-box:8000/v1", ())
    assert expand("$${HOST} ${EMPTY} ${lower} ${NOPE}", env) == ("${HOST} ${EMPTY} ${lower} ${NOPE}", ("EMPTY", "NOPE"))


# -- each reference, resolved as OpenClaw resolves it --------------------------------------------------------------


def test_aliases_and_bare_model_ids_are_resolved(write: Callable[..., dict[str, str]]) -> None:
    """An alias of agents.defaults.models first, then the one provider listing that id; two providers listing
    it is ambiguous, and said so."""
    env = write(
        json.dumps(
            {
                "agents": {
                    "defaults": {
                        "models": {"openrouter/deepseek/deepseek-chat": {"alias": "DS"}},
                        "model": {"primary": "ds", "fallbacks": ["qwen3", "shared"]},
                    }
                },
                "models": {
                    "providers": {
                        "lan": {"baseUrl": "http://192.168.1.9:8000/v1", "models": [{"id": "qwen3"}, {"id": "shared"}]},
                        "lan2": {"baseUrl": "http://192.168.1.10:8000/v1", "models": [{"id": "shared"}]},
                    }
                },
            }
        )
    ) | {"OPENROUTER_API_KEY": "sk-or"}
    found = chain_of(env)
    assert rows(found) == [
        ("deepseek/deepseek-chat", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        ("qwen3", "http://192.168.1.9:8000/v1", None),
    ]
    assert "alias 'ds'" in found.sources[0] and "model id of models.providers.lan" in found.sources[1]
    assert found.unusable == ("shared (not provider/model, and 2 providers list it)",)


def test_a_bundled_provider_moved_behind_a_proxy_keeps_its_own_api(write: Callable[..., dict[str, str]]) -> None:
    """Only baseUrl given for anthropic: still Anthropic's Messages API (OpenClaw posts /v1/messages), not a
    chat endpoint; a provider id OpenClaw does not bundle defaults to the chat API."""
    env = write(
        '{models: {providers: {anthropic: {baseUrl: "http://127.0.0.1:9/"}, mine: {baseUrl: "http://127.0.0.1:9/v1"}}},'
        ' agents: {defaults: {model: {primary: "anthropic/claude-sonnet-4-6", fallbacks: ["mine/m"]}}}}'
    ) | {"ANTHROPIC_API_KEY": "sk-ant"}
    found = chain_of(env)
    assert rows(found) == [("m", "http://127.0.0.1:9/v1", None)]
    assert found.unusable == ("anthropic/claude-sonnet-4-6 (speaks Anthropic's Messages API, not the OpenAI chat API)",)


def test_a_models_own_api_and_base_url_win_over_its_providers(write: Callable[..., dict[str, str]]) -> None:
    env = write(
        '{models: {providers: {zen: {baseUrl: "http://127.0.0.1:9/v1", apiKey: "${ZEN_KEY}", models: ['
        '{id: "claude", api: "anthropic-messages"}, {id: "qwen", baseUrl: "http://127.0.0.1:10/v1"}]}}},'
        ' agents: {defaults: {model: {primary: "zen/claude", fallbacks: ["zen/qwen"]}}}}'
    ) | {"ZEN_KEY": "k"}
    found = chain_of(env)
    assert rows(found) == [("qwen", "http://127.0.0.1:10/v1", "ZEN_KEY")]
    assert found.unusable == ("zen/claude (speaks Anthropic's Messages API, not the OpenAI chat API)",)


def test_variables_in_a_base_url_are_substituted_and_a_missing_one_is_named(
    write: Callable[..., dict[str, str]],
) -> None:
    text = (
        '{models: {providers: {gw: {baseUrl: "${GW_URL}/v1", apiKey: "${GW_KEY}"}}},'
        ' agents: {defaults: {model: "gw/gpt-4o-mini"}}}'
    )
    env = write(text) | {"GW_KEY": "k"}
    assert chain_of(env).unusable == ("gw/gpt-4o-mini (its baseUrl needs $GW_URL, which is not set)",)
    assert rows(chain_of(env | {"GW_URL": "https://gw.example.com"})) == [
        ("gpt-4o-mini", "https://gw.example.com/v1", "GW_KEY")
    ]


@pytest.mark.parametrize(
    ("base", "api_key", "usable"),
    [
        ("http://192.168.1.50:8080/v1", None, True),
        ("http://gpu-box:8080/v1", None, True),
        ("http://studio.local:8080/v1", None, True),
        ("http://[fd00::5]:8080/v1", None, True),
        ("https://llm.example.com/v1", None, False),
        ("http://[2606:4700::1111]:8080/v1", None, False),
        ("https://ollama.example.com", "ollama-local", True),
    ],
    ids=["private", "bare-host", "dot-local", "ula-ipv6", "public", "public-ipv6", "marker"],
)
def test_servers_on_the_private_network_need_no_key(
    write: Callable[..., dict[str, str]], base: str, api_key: str | None, usable: bool
) -> None:
    """OpenClaw's own rule: loopback, private, .local and bare host names need no real key; `ollama-local`
    means no key. A public server whose key variable is unset cannot be used."""
    spec: dict[str, Any] = {"baseUrl": base, "api": "ollama" if api_key else "openai-completions"}
    if api_key:
        spec["apiKey"] = api_key
    env = write(json.dumps({"models": {"providers": {"box": spec}}, "agents": {"defaults": {"model": "box/qwen3"}}}))
    found = chain_of(env)
    if usable:
        assert [e.api_key_env for e in found.entries] == [None] and not found.unusable
        assert found.entries[0].local is None  # the GPU check is for this machine only
    else:
        assert found.unusable == ("box/qwen3 ($BOX_API_KEY is not set)",)


def test_headers_come_along_and_credentials_in_them_only_from_the_environment(
    write: Callable[..., dict[str, str]],
) -> None:
    env = write(
        "{models: {providers: {"
        ' corp: {baseUrl: "https://gw.example.com/v1", apiKey: "${CORP_KEY}",'
        '        headers: {"x-api-key": "${CORP_TOKEN}", "X-Title": "self-heal"}},'
        ' leak: {baseUrl: "https://gw.example.com/v1", apiKey: "${CORP_KEY}", headers: {"x-api-key": "tok-123"}}}},'
        ' agents: {defaults: {model: {primary: "corp/gpt-4o", fallbacks: ["leak/gpt-4o"]}}}}'
    ) | {"CORP_KEY": "k", "CORP_TOKEN": "tok-from-env"}
    found = chain_of(env)
    assert [dict(e.headers) for e in found.entries] == [{"x-api-key": "${CORP_TOKEN}", "X-Title": "self-heal"}]
    assert "tok-123" not in found.unusable_line()
    assert found.unusable == (
        "leak/gpt-4o (its header x-api-key is written in openclaw.json (self-heal reads credentials only from "
        "the environment: write it as ${VAR}))",
    )


def test_a_header_no_request_can_carry_makes_its_model_unusable(write: Callable[..., dict[str, str]]) -> None:
    """The checks config.yaml's headers get hold for openclaw.json's: a name HTTP does not allow, or a value of
    many lines (written, or read from a variable), would fail every request with an error quoting the value."""
    env = write(
        "{models: {providers: {"
        ' a: {baseUrl: "https://a.example.com/v1", apiKey: "${K}", headers: {"X Title": "self-heal"}},'
        ' b: {baseUrl: "https://b.example.com/v1", apiKey: "${K}", headers: {"X-Title": "one\\ntwo"}},'
        ' c: {baseUrl: "https://c.example.com/v1", apiKey: "${K}", headers: {"X-Auth-Token": "${TWO_LINES}"}},'
        ' d: {baseUrl: "https://d.example.com/v1", apiKey: "${K}", headers: {"X-Title": "self-heal"}}}},'
        ' agents: {defaults: {model: {primary: "a/m", fallbacks: ["b/m", "c/m", "d/m"]}}}}'
    ) | {"K": "k", "TWO_LINES": "tok-secret-2\r\nX-Injected: 1"}
    found = chain_of(env)
    assert [e.base_url for e in found.entries] == ["https://d.example.com/v1"]
    assert found.unusable == (
        "a/m (a header it sends is not valid: 'X Title' is not an HTTP header name)",
        "b/m (a header it sends is not valid: the value of X-Title must be one line)",
        "c/m (its header X-Auth-Token reads a variable whose value is not one line)",
    )
    assert "tok-secret-2" not in found.unusable_line()


def test_bundled_openai_compatible_providers_need_no_provider_entry(write: Callable[..., dict[str, str]]) -> None:
    """nvidia and huggingface, with their own key variables (HF_TOKEN, not HUGGINGFACE_API_KEY)."""
    env = write(
        '{agents: {defaults: {model: {primary: "nvidia/meta/llama-3.3-70b-instruct",'
        ' fallbacks: ["huggingface/Qwen/Qwen3-8B"]}}}}'
    )
    env |= {"NVIDIA_API_KEY": "nv", "HF_TOKEN": "hf"}
    assert rows(chain_of(env)) == [
        ("meta/llama-3.3-70b-instruct", "https://integrate.api.nvidia.com/v1", "NVIDIA_API_KEY"),
        ("Qwen/Qwen3-8B", "https://router.huggingface.co/v1", "HF_TOKEN"),
    ]


def test_a_secret_kept_elsewhere_is_named_as_the_reason(write: Callable[..., dict[str, str]]) -> None:
    env = write(
        '{models: {providers: {p: {baseUrl: "https://x.example.com/v1",'
        ' apiKey: {source: "file", provider: "f", id: "/k"}}}},'
        ' agents: {defaults: {model: "p/m"}}}'
    )
    assert chain_of(env).unusable == (
        "p/m (its apiKey is a file secret (self-heal reads keys only from the environment))",
    )


def test_an_openclaw_provider_that_authenticates_by_header_gets_it_on_every_request(
    write: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's x-api-key is read from the environment at the call and sent by the real openai client."""
    with FakeModelServer() as server:
        env = write(
            json.dumps(
                {
                    "models": {
                        "providers": {
                            "corp": {
                                "baseUrl": server.url("corp"),
                                "headers": {"x-api-key": "${CORP_TOKEN}", "X-Title": "self-heal"},
                            }
                        }
                    },
                    "agents": {"defaults": {"model": "corp/gpt-4o"}},
                }
            )
        )
        for name, value in (env | {"CORP_TOKEN": "tok-from-env-123"}).items():
            monkeypatch.setenv(name, value)
        answer = complete("hi", config=load_config())
        assert answer.endpoint == "corp-gpt-4o" and answer.content == "ok from corp"
        sent = server.headers("corp")[-1]
        assert sent["x-api-key"] == "tok-from-env-123" and sent["x-title"] == "self-heal"


# -- resolve(): which chain a call uses --------------------------------------------------------------------------


def test_an_openclaw_json_naming_no_model_leaves_skill_yamls_chain(write: Callable[..., dict[str, str]]) -> None:
    """A fresh config (logging and gateway only) is no reason to stop every model call."""
    env = write('{logging: {file: "/tmp/x.log"}, gateway: {port: 18789}}')
    config = load_config(env=env)
    found = openclaw_chain.resolve(config, env)
    assert found.entries == config.models.chain and found.entries
    assert "names no agents.defaults.model" in found.sources[0]


def test_a_key_set_after_the_first_call_is_seen(write: Callable[..., dict[str, str]]) -> None:
    """The file is read once while it is unchanged, but the chain is built from the environment each time."""
    env = write(
        '{models: {providers: {corp: {baseUrl: "https://gw.example.com/v1", apiKey: "${CORP_TOKEN}"}}},'
        ' agents: {defaults: {model: "corp/m"}}}'
    )
    config = load_config(env=env)
    with pytest.raises(ConfigError, match=r"\$CORP_TOKEN is not set"):
        openclaw_chain.resolve(config, env)
    assert [e.api_key_env for e in openclaw_chain.resolve(config, env | {"CORP_TOKEN": "t"}).entries] == ["CORP_TOKEN"]


def test_task_policies_are_read_from_config_yaml_and_openclaw_json_ones_get_a_warning(
    write: Callable[..., dict[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenClaw refuses unknown keys in openclaw.json (its gateway will not start), so the user is told to move
    `task_policies`; in config.yaml it means the same."""
    policies = {"default_retry": {"max_attempts": 4, "backoff": {"initial": 5, "factor": 2, "max": 60}}}
    env = write(json.dumps({"task_policies": policies}))
    with caplog.at_level(logging.WARNING):
        from_openclaw = load_config(env=env)
    assert "OpenClaw refuses unknown keys" in caplog.text and "config.yaml" in caplog.text
    own = tmp_path / "config.yaml"
    own.write_text(json.dumps({"task_policies": policies}))
    from_yaml = load_config(env={"HOME": str(tmp_path / "h"), "SELFHEAL_CONFIG": str(own)})
    assert from_yaml.policies.transient == from_openclaw.policies.transient
    assert from_yaml.policies.transient.attempts == 4


# -- against the real OpenClaw ---------------------------------------------------------------------------------


def _manifests(root: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((root / "node_modules" / "openclaw" / "dist" / "extensions").glob("*/openclaw.plugin.json")):
        data = json.loads(path.read_text())
        catalog = (data.get("modelCatalog") or {}).get("providers") or {}
        env_vars = {p["id"]: p.get("envVars") or [] for p in (data.get("setup") or {}).get("providers") or []}
        for pid in data.get("providers") or []:
            found[pid] = {**(catalog.get(pid) or {}), "envVars": env_vars.get(pid, [])}
    return found


def test_the_bundled_providers_match_the_real_openclaw(openclaw: Any) -> None:
    """Each provider OpenClaw 2026.9.6 bundles with a base URL or an API is in the table with the same ones,
    and its key variables are the manifest's (in OpenClaw's order of preference)."""
    manifests = _manifests(openclaw.root)
    assert len(manifests) > 15
    for pid, manifest in manifests.items():
        if not manifest.get("baseUrl") and not manifest.get("api"):
            continue
        assert pid in BUNDLED, pid
        mine = BUNDLED[pid]
        assert (mine.base_url, mine.api) == (manifest["baseUrl"], manifest["api"]), pid
    for pid, mine in BUNDLED.items():
        if pid in manifests and manifests[pid]["envVars"]:
            assert set(mine.key_vars) <= set(manifests[pid]["envVars"]), pid


def test_the_real_openclaw_reads_the_same_models_from_these_shapes(openclaw: Any, tmp_path: Path) -> None:
    """JSON5 written tightly, an include and an alias: OpenClaw's `config get` returns the model refs that
    self-heal resolved, so both read the same file the same way."""
    home = openclaw.sandbox(tmp_path)
    folder = home / ".openclaw"
    (folder / "agents.json5").write_text(
        "{defaults:{models:{'openrouter/a/b':{alias:'Bob\\'s'}},\n\tmodel:{primary:\"Bob's\",fallbacks:['lan/q']}}}"
    )
    (folder / "openclaw.json").write_text(
        json.dumps({"logging": {"file": str(home / "oc.log")}})[:-1]
        + ', agents: {$include: "./agents.json5"}, models: {providers: {lan: {baseUrl: "http://10.0.0.5:8000/v1",'
        ' api: "openai-completions", models: [{id: "q", name: "q"}]}}}}'
    )
    env = {"HOME": str(home), "OPENROUTER_API_KEY": "sk-or"}
    found = chain_of(env)
    assert rows(found) == [
        ("a/b", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        ("q", "http://10.0.0.5:8000/v1", None),
    ]
    got = subprocess.run(
        [str(openclaw.executable), "config", "get", "agents.defaults", "--json"],
        env=openclaw.env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    theirs = json.loads(got.stdout)
    mine = read_openclaw_json(folder / "openclaw.json", env)["agents"]["defaults"]
    assert theirs["model"] == mine["model"] == {"primary": "Bob's", "fallbacks": ["lan/q"]}
    assert theirs["models"] == mine["models"] == {"openrouter/a/b": {"alias": "Bob's"}}


def test_a_header_credential_echoed_in_an_answer_is_masked_like_a_key(
    write: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variables a provider's headers read are the chain's secrets as much as its key variables: a model
    or server echoing one in its answer gets it masked, as the redactor masks it everywhere else."""
    with FakeModelServer() as server:
        env = write(
            json.dumps(
                {
                    "models": {
                        "providers": {
                            "corp": {"baseUrl": server.url("corp"), "headers": {"x-api-key": "${CORP_TOKEN}"}}
                        }
                    },
                    "agents": {"defaults": {"model": "corp/gpt-4o"}},
                }
            )
        )
        for name, value in (env | {"CORP_TOKEN": "tok-from-env-123"}).items():
            monkeypatch.setenv(name, value)
        server.script("corp", Fault.reply("you sent tok-from-env-123, thanks"))
        answer = complete("hi", config=load_config())
        assert "tok-from-env-123" not in answer.content and "***" in answer.content


@pytest.mark.parametrize(
    ("provider", "reason"),
    [
        ('{baseUrl: "ftp://10.0.0.1/v1"}', "its baseUrl is not an http:// or https:// URL with a host"),
        ('{baseUrl: "http://[::1/v1"}', "its baseUrl is not an http:// or https:// URL with a host"),
        ('{baseUrl: "http://10.0.0.1:99999/v1"}', "its baseUrl is not an http:// or https:// URL with a host"),
        ('{baseUrl: "not a url", apiKey: "${K}"}', "its baseUrl is not an http:// or https:// URL with a host"),
        ('{baseUrl: "http://10.0.0.1/v1", api: ["openai-completions"]}', "its api is not the name of an API"),
    ],
    ids=["ftp", "bad-ipv6", "bad-port", "no-host", "api-list"],
)
def test_a_provider_no_request_can_reach_is_unusable_with_a_plain_reason(
    write: Callable[..., dict[str, str]], provider: str, reason: str
) -> None:
    """A base URL the openai client cannot send to, or an `api` that is not a name: one line says why,
    before any request (it was each request's `transient` failure, exit 3, or "unhashable type: 'list'")."""
    env = write(f'{{models: {{providers: {{p: {provider}}}}}, agents: {{defaults: {{model: "p/m"}}}}}}') | {"K": "k-1"}
    chain = chain_of(env)
    assert chain.entries == () and chain.unusable == (f"p/m ({reason})",)


def test_variables_in_model_references_are_substituted_as_openclaw_does(write: Callable[..., dict[str, str]]) -> None:
    """`primary: "${PRIMARY}"`: OpenClaw substitutes variables in every string (its `models status` reports
    the model the variable names), so the chain follows; an unset one makes that reference unusable, named."""
    env = write(
        '{agents: {defaults: {model: {primary: "${PRIMARY}", fallbacks: ["lan/${FB}"]}}},'
        ' models: {providers: {lan: {baseUrl: "http://10.0.0.5:8000/v1"}}}}'
    )
    chain = chain_of(env | {"PRIMARY": "lan/big", "FB": "small"})
    assert [e.model for e in chain.entries] == ["big", "small"] and chain.unusable == ()
    assert "agents.defaults.model.primary = '${PRIMARY}'" in chain.sources[0]
    assert chain_of(env | {"FB": "small"}).unusable == ("${PRIMARY} (it needs $PRIMARY, which is not set)",)


# -- keys and headers as OpenClaw's SecretInput fields take them -------------------------------------------------


def test_a_dollar_name_shorthand_names_the_variable_as_braces_do(write: Callable[..., dict[str, str]]) -> None:
    """`apiKey: "$CORP_KEY"` and a header `"$CORP_TOKEN"` are env SecretRefs to OpenClaw (its `$NAME`
    shorthand): read from the environment, not refused as a key written in the file nor sent as the text."""
    env = write(
        '{models: {providers: {corp: {baseUrl: "https://gw.example.com/v1", apiKey: "$CORP_KEY",'
        ' headers: {"x-api-key": " $CORP_TOKEN ", "X-Org": "$CORP_ORG"}}}},'
        ' agents: {defaults: {model: "corp/m"}}}'
    ) | {"CORP_KEY": "k-1", "CORP_TOKEN": "tok-from-env", "CORP_ORG": "acme"}
    found = chain_of(env)
    assert found.unusable == ()
    assert rows(found) == [("m", "https://gw.example.com/v1", "CORP_KEY")]
    assert dict(found.entries[0].headers) == {"x-api-key": "${CORP_TOKEN}", "X-Org": "${CORP_ORG}"}


@pytest.mark.parametrize(
    "api_key",
    [
        '{source: "env", provider: "default", id: "Zq8v3LmN0pQ7rT2xWk5"}',
        '{source: "env", id: "k3y with spaces Zq8v3LmN0pQ7rT2xWk5"}',
    ],
    ids=["pasted-key", "not-a-name"],
)
def test_an_env_secretref_whose_id_is_no_variable_name_is_refused_without_quoting_it(
    write: Callable[..., dict[str, str]], api_key: str
) -> None:
    """A key pasted where the variable's name belongs (OpenClaw refuses an id that is not an upper-case
    name): the reason says so, and the id, which may be the key itself, is in no line self-heal prints."""
    env = write(
        f'{{models: {{providers: {{p: {{baseUrl: "https://x.example.com/v1", apiKey: {api_key}}}}}}},'
        ' agents: {defaults: {model: "p/m"}}}'
    )
    found = chain_of(env)
    assert found.unusable == (
        "p/m (its apiKey is an env SecretRef whose id is not an environment variable name (A-Z, 0-9, _))",
    )
    assert "Zq8v3LmN0pQ7rT2xWk5" not in found.unusable_line()


@pytest.mark.parametrize("written", ["sk-local", "lmstudio", "ds4-local", "Zq8v3LmN0pQ7rT2xWk5"])
def test_a_key_written_for_a_local_server_is_not_read_and_the_model_is_used(
    write: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    """OpenClaw's own local examples write `apiKey: "sk-local"` (or "lmstudio", "ds4-local") for a server
    on this machine: the server needs no key, so the model is used, with no key sent (the text is never
    read); on a public server a written key still makes the model unusable."""
    with FakeModelServer() as server:
        env = write(
            json.dumps(
                {
                    "models": {
                        "providers": {
                            "local": {"baseUrl": server.url("local"), "apiKey": written},
                            "public": {"baseUrl": "https://llm.example.com/v1", "apiKey": written},
                        }
                    },
                    "agents": {"defaults": {"model": {"primary": "public/m", "fallbacks": ["local/m"]}}},
                }
            )
        )
        found = chain_of(env)
        assert [(e.name, e.api_key_env) for e in found.entries] == [("local-m", None)]
        assert found.unusable == (
            "public/m (its apiKey is written in openclaw.json (self-heal reads keys only from the environment))",
        )
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        answer = complete("hi", config=load_config())
        assert answer.endpoint == "local-m"
        assert written not in json.dumps(server.headers("local")[-1])


def test_provider_ids_are_matched_without_regard_to_case_as_openclaw_does(
    write: Callable[..., dict[str, str]],
) -> None:
    """OpenClaw lower-cases provider ids: "OpenRouter/a/b" is the bundled openrouter, and "lan/q" finds a
    provider written `LAN` in models.providers."""
    env = write(
        '{models: {providers: {LAN: {baseUrl: "http://10.0.0.5:8000/v1"}}},'
        ' agents: {defaults: {model: {primary: "OpenRouter/a/b", fallbacks: ["lan/q"]}}}}'
    ) | {"OPENROUTER_API_KEY": "sk-or"}
    found = chain_of(env)
    assert found.unusable == ()
    assert rows(found) == [
        ("a/b", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        ("q", "http://10.0.0.5:8000/v1", None),
    ]


def test_a_provider_whose_key_is_in_an_auth_profile_says_so(write: Callable[..., dict[str, str]]) -> None:
    """OpenClaw keeps keys and OAuth tokens of `auth.profiles` in its own store, which self-heal never reads:
    the reason names the profile and the variable that would do, not only "$OPENAI_API_KEY is not set"
    (OpenClaw itself works, so the bare line read as a self-heal bug)."""
    env = write(
        '{auth: {profiles: {"openai:personal": {provider: "OpenAI", mode: "oauth"},'
        ' "anthropic:default": {provider: "anthropic", mode: "api_key"}}},'
        ' agents: {defaults: {model: {primary: "openai/gpt-5.4", fallbacks: ["openrouter/a/b"]}}}}'
    )
    assert chain_of(env).unusable == (
        "openai/gpt-5.4 ($OPENAI_API_KEY is not set; its key is in OpenClaw's auth profile 'openai:personal',"
        " which self-heal does not read)",
        "openrouter/a/b ($OPENROUTER_API_KEY is not set)",
    )


def test_a_key_openclaw_json_sets_in_env_vars_is_not_used_and_the_reason_says_what_to_export(
    write: Callable[..., dict[str, str]],
) -> None:
    """OpenClaw's `env.vars` gives its own processes keys written in openclaw.json. self-heal takes keys only
    from its environment, never from a file: the model is not used, and the reason says where the key is and
    what to export (it said only "$OPENROUTER_API_KEY is not set", which read as wrong: OpenClaw works). The
    key itself is never shown."""
    env = write(
        '{env: {vars: {OPENROUTER_API_KEY: "sk-or-v1-written-in-the-file-0123456789"}},'
        ' agents: {defaults: {model: {primary: "openrouter/a/b"}}}}'
    )
    chain = chain_of(env)
    assert chain.entries == ()
    assert chain.unusable == (
        "openrouter/a/b ($OPENROUTER_API_KEY is not set; openclaw.json's env.vars sets it for OpenClaw, but"
        " self-heal takes keys only from its own environment: export OPENROUTER_API_KEY where self-heal runs)",
    )
    assert "written-in-the-file" not in chain.unusable_line()
