"""Settings load from skill.yaml, merge the user's file over them, and reject bad values by name."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import call_script
from selfheal.core.config import (
    ERROR_CLASSES,
    SKILL_YAML,
    Config,
    Policies,
    deep_merge,
    get_config,
    load_config,
)
from selfheal.errors import EXIT_USAGE, ConfigError


def test_defaults_match_the_source_documents(config: Config) -> None:
    """The shipped policies carry the source documents' numbers, counted as they count them: "rate limit:
    5 retries" is 6 attempts, "timeout: 3 retries" and 5xx's 3 retries are 4."""
    p = config.policies
    assert (p.rate_limit.attempts, p.rate_limit.base_s, p.rate_limit.multiplier, p.rate_limit.cap_s) == (6, 5, 2, 120)
    assert (p.timeout.attempts, p.timeout.base_s, p.timeout.multiplier, p.timeout.cap_s) == (4, 0.5, 1.5, 10)
    assert (p.transient.attempts, p.transient.base_s, p.transient.multiplier, p.transient.cap_s) == (4, 1, 2, 30)
    assert (p.resource.attempts, p.resource.base_s, p.resource.multiplier) == (2, 60, 2)
    assert p.permanent.attempts == p.auth.attempts == p.fatal.attempts == 1
    assert p.unknown.attempts == 2


def test_a_policy_may_count_retries_or_attempts(write_config: Callable[[str], Path]) -> None:
    """`retries: N` is N + 1 attempts; a user's `attempts` replaces skill.yaml's `retries` and the other way
    round; both in one policy, or a negative count, is refused naming the file and key."""
    write_config("policies:\n  rate_limit: {attempts: 2}\n  timeout: {retries: 0}\n  unknown: {retries: 4}\n")
    p = load_config().policies
    assert (p.rate_limit.attempts, p.timeout.attempts, p.unknown.attempts) == (2, 1, 5)
    assert p.rate_limit.base_s == 5.0  # the rest of the policy still comes from skill.yaml
    path = write_config("policies:\n  timeout: {retries: 2, attempts: 3}\n")
    with pytest.raises(ConfigError, match=r"policies\.timeout\.retries: give retries .* or attempts .*, not both") as e:
        load_config()
    assert str(path) in str(e.value)
    write_config("policies:\n  timeout: {retries: -1}\n")
    with pytest.raises(ConfigError, match=r"config.yaml:2:.*policies.timeout.retries: must be a whole number"):
        load_config()


def test_the_first_documents_config_can_be_pasted(
    write_config: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The first document's `retry_policy` and `models: {primary, fallbacks}`, pasted as they are, become
    policies and the chain, with one line each saying what they became."""
    write_config(
        """
        retry_policy:
          immediate_retry: {max_attempts: 3, delay_seconds: 5}
          delayed_retry: {max_attempts: 2, backoff_factor: 2, initial_delay: 60}
        models:
          primary:
            name: Qwen3-4B-Thinking-2507
            endpoint: http://localhost:8000/v1
          fallbacks:
            - name: Qwen1.5-0.5B
              endpoint: http://backup-server:8000/v1
            - name: Phi-3-mini
              endpoint: http://127.0.0.1:5000/v1
        """
    )
    with caplog.at_level("INFO", logger="selfheal.core.config"):
        config = load_config()
    p = config.policies
    for cls in (p.transient, p.timeout):
        assert (cls.attempts, cls.base_s, cls.multiplier, cls.cap_s) == (3, 5.0, 1.0, 5.0)
    for cls in (p.resource, p.format, p.rate_limit):
        assert (cls.attempts, cls.base_s, cls.multiplier, cls.cap_s) == (2, 60.0, 2.0, 60.0)
    chain = config.models.chain
    assert [(e.name, e.base_url, e.model) for e in chain] == [
        ("qwen3-4b-thinking-2507", "http://localhost:8000/v1", "Qwen3-4B-Thinking-2507"),
        ("qwen1.5-0.5b", "http://backup-server:8000/v1", "Qwen1.5-0.5B"),
        ("phi-3-mini", "http://127.0.0.1:5000/v1", "Phi-3-mini"),
    ]
    notes = [r.getMessage() for r in caplog.records]
    assert any("retry_policy.immediate_retry became policies transient/timeout: attempts=3" in n for n in notes)
    assert any(
        "models.primary/fallbacks became models.chain: qwen3-4b-thinking-2507 -> qwen1.5-0.5b" in n for n in notes
    )


def test_a_bad_pasted_retry_policy_names_the_key(write_config: Callable[[str], Path]) -> None:
    """A mistake in the pasted shape is refused naming the file and the document's key."""
    path = write_config("retry_policy:\n  immediate_retry: {max_attempts: three}\n")
    with pytest.raises(ConfigError, match=r"retry_policy\.immediate_retry\.max_attempts: must be a whole number") as e:
        load_config()
    assert str(path) in str(e.value)


def test_task_policies_in_openclaw_json_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config: Callable[[str], Path]
) -> None:
    """The first document's openclaw.json block (comments and trailing commas as OpenClaw allows):
    default_retry sets every retried class, model_fallbacks orders the chain; config.yaml still wins."""
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tmp_path / "oc"))
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "openclaw.json").write_text(
        """{
          // the first source document's section 5.1
          "task_policies": {
            "default_retry": {"max_attempts": 3, "backoff": {"initial": 5, "factor": 2, "max": 60}},
            "model_fallbacks": ["Phi-3-mini", "Qwen3-4B-Thinking-2507", "GPT-9"],
          },
        }"""
    )
    config = load_config()
    p = config.policies
    for cls in (p.transient, p.rate_limit, p.timeout, p.resource, p.format, p.unknown):
        assert (cls.attempts, cls.base_s, cls.multiplier, cls.cap_s) == (3, 5.0, 2.0, 60.0)
    assert p.permanent.attempts == 1  # never retried stays never retried
    assert [e.model for e in config.models.chain] == ["Phi-3-mini", "Qwen3-4B-Thinking-2507"]
    write_config("policies:\n  rate_limit: {retries: 5}\n")
    assert load_config().policies.rate_limit.attempts == 6


def test_every_error_class_has_a_policy_with_a_jitter(config: Config) -> None:
    """A loaded policy always names its jitter (unset ones take retry.jitter)."""
    for name in ERROR_CLASSES:
        policy = config.policies.for_class(name)
        assert policy.jitter in ("full", "equal", "decorrelated", "none")
    assert config.policies.transient.jitter == config.retry.jitter == "full"
    assert config.policies.resource.jitter == "equal"


def test_settings_dataclasses_carry_no_defaults_of_their_own() -> None:
    """Defaults live only in skill.yaml: no setting has a default in code (optional rule/model fields aside)."""
    for cls in (Policies, *[f.type for f in dataclasses.fields(Config)]):
        if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
            continue
        if cls.__name__ in ("Rule", "ModelEndpoint", "Policy"):
            continue
        for f in dataclasses.fields(cls):
            if f.name in ("manifest", "files"):
                continue
            assert f.default is dataclasses.MISSING, f"{cls.__name__}.{f.name} has a code default"


def test_user_file_is_deep_merged(write_config: Callable[[str], Path]) -> None:
    """A user's key replaces just that key; its siblings keep skill.yaml's values."""
    write_config("""
        policies:
          transient: {attempts: 7}
        retry:
          deadline_s: 60
    """)
    config = load_config()
    assert config.policies.transient.attempts == 7
    assert config.policies.transient.base_s == 1.0
    assert config.retry.deadline_s == 60
    assert config.retry.retry_after_cap_s == 120
    assert config.files[-1].endswith("config.yaml")


def test_lists_replace_rather_than_merge(write_config: Callable[[str], Path]) -> None:
    """A list in the user's file replaces the shipped list (the model chain here)."""
    write_config("""
        models:
          chain:
            - {name: only, base_url: "http://127.0.0.1:9/v1", model: m}
    """)
    assert [e.name for e in load_config().models.chain] == ["only"]


def test_selfheal_config_names_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SELFHEAL_CONFIG points the loader at a different file."""
    other = tmp_path / "elsewhere.yaml"
    other.write_text("retry: {deadline_s: 5}\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(other))
    assert load_config().retry.deadline_s == 5


def test_selfheal_config_that_does_not_exist_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the user named explicitly must exist."""
    monkeypatch.setenv("SELFHEAL_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_config()


def test_empty_user_file_changes_nothing(write_config: Callable[[str], Path], config: Config) -> None:
    """An empty config.yaml is the same as none."""
    write_config("")
    assert load_config() == config


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("policies:\n  transient: {base_s: -1}\n", "policies.transient.base_s", "must be >= 0, got -1"),
        ("policies:\n  transiant: {attempts: 2}\n", "policies", "unknown key 'transiant' (did you mean 'transient'?)"),
        ("retyr: {}\n", None, "unknown key 'retyr' (did you mean 'retry'?)"),
        (
            "policies:\n  timeout: {attempts: three}\n",
            "policies.timeout.attempts",
            "must be a whole number, got 'three'",
        ),
        ("policies:\n  timeout: {attempts: 0}\n", "policies.timeout.attempts", "must be >= 1, got 0"),
        ("retry: {jitter: wobbly}\n", "retry.jitter", "must be one of full, equal, decorrelated, none"),
        ("retry: {deadline_s: 0}\n", "retry.deadline_s", "must be > 0"),
        ("retry: {deadline_s: true}\n", "retry.deadline_s", "must be a number, got True"),
        ("process: {tail_bytes: 10}\n", "process.tail_bytes", "must be >= 1024, got 10"),
        ("redact: {patterns: ['(unclosed']}\n", "redact.patterns[0]", "not a valid regular expression"),
        (
            "models:\n  chain:\n    - {name: a, base_url: 'localhost:8000', model: m}\n",
            "models.chain[0].base_url",
            "must be an http:// or https:// URL",
        ),
        (
            "models:\n  chain:\n    - {name: a, base_url: 'https://bob:pw@h/v1', model: m}\n",
            "models.chain[0].base_url",
            "must not hold a user name or password",
        ),
        ("models:\n  chain:\n    - {name: a, base_url: 'http://h/v1'}\n", "models.chain[0].model", "missing key"),
        (
            "models:\n  chain:\n    - {name: a, base_url: 'http://h/v1', model: m, api_key_env: 'sk-123'}\n",
            "models.chain[0].api_key_env",
            "must be an environment variable name",
        ),
        (
            "classify:\n  extra_rules:\n    - {name: x, class: sometimes}\n",
            "classify.extra_rules[0].class",
            "must be one of transient",
        ),
        (
            "classify:\n  extra_rules:\n    - {name: x, class: transient}\n",
            "classify.extra_rules[0]",
            "a rule needs at least one condition",
        ),
        (
            "classify:\n  extra_rules:\n    - {name: x, class: transient, status: [700]}\n",
            "classify.extra_rules[0].status[0]",
            "must be an HTTP status",
        ),
        (
            "classify:\n  extra_rules:\n    - {name: http-auth, class: transient, status: [418]}\n",
            "classify.extra_rules[0].name",
            "duplicate rule name (also at classify.rules[10])",
        ),
        ("name: other\n", "name", "cannot be overridden"),
        ("- just\n- a list\n", None, "must be a mapping of settings"),
    ],
)
def test_bad_values_name_file_key_and_value(
    write_config: Callable[[str], Path], text: str, key: str | None, words: str
) -> None:
    """Each bad value fails at load with the file, the key path and what is wrong."""
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert words in message
    if key is not None:
        assert key in message
    if key is None or not key.startswith("classify.rules["):
        assert str(path) in message


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("api_key: 5", "models.chain[0]: unknown key 'api_key' (did you mean 'api_key_env'?)"),
        ("token: 5", "models.chain[0]: unknown key 'token'"),
        ("password: 5", "models.chain[0]: unknown key 'password'"),
        ("headers: {x-api-key: abc123}", "models.chain[0].headers: header x-api-key holds a credential written out"),
    ],
)
def test_errors_about_a_secret_looking_key_survive_masking(home: Path, entry: str, words: str) -> None:
    """A config error about a key named like a secret (api_key, token, a credential header) reads whole on
    stderr after the redactor has passed over it, and never shows a header's value."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / "config.yaml").write_text(
        f'models: {{chain: [{{name: x, base_url: "http://h/v1", model: m, {entry}}}]}}\n', encoding="utf-8"
    )
    result = call_script("llm_call.py", "--prompt", "hi", home=home)
    assert result.returncode == EXIT_USAGE
    assert words in result.stderr
    assert "***" not in result.stderr and "abc123" not in result.stderr and "mappingproxy" not in result.stderr


def test_value_errors_carry_the_line(write_config: Callable[[str], Path]) -> None:
    """The message points at the line of the offending key in the user's file."""
    write_config("retry:\n  deadline_s: 30\npolicies:\n  transient:\n    base_s: -2\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.line == 5
    assert "config.yaml:5:" in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("retry:\n  deadline_s: [1, 2\n", 3, 1),
        ("retry: {deadline_s: 1\n", 2, 1),
        ("policies:\n\ttransient: {}\n", 2, 1),
    ],
)
def test_yaml_syntax_errors_report_line_and_column(
    write_config: Callable[[str], Path], text: str, line: int, column: int
) -> None:
    """Broken YAML names the file, the line and the column."""
    write_config(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "YAML syntax error" in str(info.value)
    assert (info.value.line, info.value.column) == (line, column)


def test_duplicate_keys_are_refused(write_config: Callable[[str], Path]) -> None:
    """YAML would silently keep the last of two equal keys; we refuse the file instead."""
    write_config("retry:\n  deadline_s: 10\n  deadline_s: 20\n")
    with pytest.raises(ConfigError, match=r"config.yaml:3:3: retry.deadline_s: duplicate key"):
        load_config()


def test_non_utf8_config_is_a_clear_error(home: Path) -> None:
    """A config file in another encoding is refused with the byte position, not a traceback."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_bytes(b"retry: {deadline_s: 5}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config()


def test_a_pipe_named_as_the_config_is_refused_not_waited_on(home: Path) -> None:
    """A FIFO in config.yaml's place would block the open until a writer came (cron would hang for good)."""
    home.mkdir(parents=True, exist_ok=True)
    os.mkfifo(home / "config.yaml")
    with pytest.raises(ConfigError, match=r"config\.yaml: is not a regular file"):
        load_config()


def test_broken_skill_yaml_is_reported_as_such(tmp_path: Path) -> None:
    """If skill.yaml itself lacks a setting, the error says so instead of inventing a default."""
    text = SKILL_YAML.read_text().replace("  deadline_s: 3600", "")
    broken = tmp_path / "skill.yaml"
    broken.write_text(text)
    with pytest.raises(ConfigError, match=r"retry.deadline_s: missing key"):
        load_config(skill_yaml=broken)


def test_get_config_reloads_when_the_file_changes(write_config: Callable[[str], Path]) -> None:
    """The per-process cache notices an edited config file."""
    path = write_config("retry: {deadline_s: 10}\n")
    assert get_config().retry.deadline_s == 10
    path.write_text("retry: {deadline_s: 20}\n")
    import os

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert get_config().retry.deadline_s == 20


def test_deep_merge_semantics() -> None:
    """Mappings merge; lists and scalars replace; the base is not modified."""
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_a_state_folder_this_user_cannot_look_into_is_named_not_an_internal_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sudo ./install.sh` keeping HOME made the state folder root's, 0700: every script of the user then died
    with a PermissionError traceback as "internal error" (exit 3) on looking for config.yaml. (Root is let in
    anywhere, so the refusal is stood in for here.)"""
    real = Path.exists

    def refused(self: Path, *args: object, **kwargs: object) -> bool:
        if self == home / "config.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "exists", refused)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.exit_code == EXIT_USAGE
    assert f"cannot look into {home} (permission denied)" in str(info.value)
