"""Secrets are masked before anything is written: key shapes, auth headers, URL passwords, secret env values."""

from __future__ import annotations

import random

import pytest

from selfheal.core.redact import MASK, LineRedactor, Redactor
from selfheal.state.redact import _BUILTIN, _keep_pre

SK = "sk-abcdefghijklmnopqrstuvwx"
SK_PROJ = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX"
GSK = "gsk_abcdefghijklmnopqrstuvwx"
GHP = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
HF = "hf_abcdefghijklmnopqrstuvwx"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {SK} rejected", "key *** rejected"),
        (f"OPENAI_API_KEY={SK_PROJ}", "OPENAI_API_KEY=***"),
        (f"groq {GSK}", "groq ***"),
        (f"git push with {GHP} failed", "git push with *** failed"),
        (f"hub {HF}", "hub ***"),
        ("Authorization: Bearer abcdefgh12345678", "Authorization: Bearer ***"),
        ("curl -H 'authorization: bearer eyJhbGciOi.J9.abc'", "curl -H 'authorization: bearer ***'"),
        ("authorization=Basic dXNlcjpwYXNzd29yZA==", "authorization=Basic ***"),
        ("api_key=abcd1234efgh", "api_key=***"),
        ("GET https://h/v1?api-key=abcd1234efgh&x=1", "GET https://h/v1?api-key=***&x=1"),
        ('{"password": "hunter2hunter2"}', '{"password": "***"}'),
        ("token: abcdef123456", "token: ***"),
        ("secret='s3cr3t-value'", "secret='***'"),
        ("POST https://bob:hunter2@example.com/v1 failed", "POST https://bob:***@example.com/v1 failed"),
        ("redis://default:pa55w0rd@cache:6379/0", "redis://default:***@cache:6379/0"),
    ],
    ids=[
        "sk",
        "sk-proj",
        "gsk",
        "ghp",
        "hf",
        "bearer-header",
        "bearer-lowercase",
        "basic-auth",
        "api_key",
        "api-key-in-query",
        "json-password",
        "token-colon",
        "secret-quoted",
        "url-password",
        "url-password-other-scheme",
    ],
)
def test_secret_shapes_are_masked(text: str, expected: str) -> None:
    """A key, token or password in a message is replaced by ***, keeping the label around it."""
    assert Redactor(env={}).text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "tokens=1428",
        "duration=4s",
        "task=doc-gen-587",
        "max_tokens=1024 prompt_tokens=12",
        "2026-06-10T03:12:18Z [SUCCESS] task=doc-gen-587 duration=47.2s tokens=1428",
        "2026-06-10T03:12:18Z [RETRY] task=doc-gen-587 model=Qwen3-4B reason=timeout attempt=1/3 delay=5s",
        "http://localhost:8000/v1",
        "https://api.example.com:8443/v1/chat/completions",
        "risk-assessment-for-the-quarterly-report",
        "",
        "usage: total_tokens=50 token_type: bearer; password_policy: strict",
        "ssh -p2222 host; redis://localhost:6379/0; http://localhost:8000/v1@latest",
        "monkey=banana123 desk-assessment-1234567890abcdef",
    ],
)
def test_innocuous_text_is_unchanged(text: str) -> None:
    """Ordinary log content, URLs with ports and counters named like secrets are left alone."""
    assert Redactor(env={}).text(text) == text


@pytest.mark.parametrize(
    ("env", "text", "expected"),
    [
        ({"OPENAI_API_KEY": "local-key-1234567890"}, "key local-key-1234567890 refused", "key *** refused"),
        ({"GITHUB_TOKEN": "plain-value-xyz"}, "clone with plain-value-xyz", "clone with ***"),
        ({"DB_PASSWORD": "p4ss.w0rd+(x)"}, "login p4ss.w0rd+(x) failed", "login *** failed"),
        ({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}, "aws wJalrXUtnFEMI", "aws ***"),
        ({"MY_CREDENTIALS": "abc123"}, "got abc123", "got ***"),
        ({"API_KEY": "short", "TOKEN": "abc12"}, "short and abc12 stay", "short and abc12 stay"),
        (
            {"HOME": "/home/alice", "PATH": "/usr/local/bin:/usr/bin", "LANG": "en_US.UTF-8"},
            "cd /home/alice; PATH=/usr/local/bin:/usr/bin LANG=en_US.UTF-8",
            "cd /home/alice; PATH=/usr/local/bin:/usr/bin LANG=en_US.UTF-8",
        ),
    ],
    ids=[
        "api-key-var",
        "token-var",
        "password-var-with-regex-chars",
        "secret-var",
        "credential-var-6-chars",
        "shorter-than-6-kept",
        "harmless-vars-kept",
    ],
)
def test_secret_env_values_are_masked_by_name(env: dict[str, str], text: str, expected: str) -> None:
    """The value of a variable whose name looks secret is masked wherever it appears; others are not."""
    assert Redactor(env=env).text(text) == expected


def test_longer_secret_value_is_masked_whole() -> None:
    """When one secret value contains another, the whole longer value is masked, not a fragment of it."""
    redactor = Redactor(env={"API_KEY": "abcdef", "AUTH_TOKEN": "xx-abcdef-yy"})
    assert redactor.text("use xx-abcdef-yy") == "use ***"


def test_configured_env_name_pattern_decides_which_values_are_secret() -> None:
    """A custom redact.env_names pattern masks the values it names and no longer the default ones."""
    redactor = Redactor(env_names=r"^CORP_", env={"CORP_SIGNING": "corp-signing-value", "API_KEY": "plain-api-value"})
    assert redactor.text("corp-signing-value plain-api-value") == "*** plain-api-value"


def test_extra_values_are_masked_even_with_harmless_names() -> None:
    """Values passed explicitly (the model chain's keys) are masked whatever their variable is called."""
    redactor = Redactor(env={}, extra_values=["model-key-value-42", ""])
    assert redactor.text("sent model-key-value-42") == "sent ***"


def test_configured_patterns_are_masked() -> None:
    """A user's redact.patterns regex masks its matches in addition to the built-in shapes."""
    redactor = Redactor(env={}, patterns=[r"INT-\d{6}"])
    assert redactor.text("ticket INT-123456 and key " + SK) == "ticket *** and key ***"


def test_obj_masks_strings_at_any_depth() -> None:
    """Redactor.obj masks strings inside nested dicts, lists and tuples and leaves other values alone."""
    value = {
        "reason": f"bad key {SK}",
        "attempts": [1, {"header": "Authorization: Bearer abcdefgh12345678"}],
        "keys": (HF, "plain"),
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "none": None,
    }
    assert Redactor(env={}).obj(value) == {
        "reason": f"bad key {MASK}",
        "attempts": [1, {"header": "Authorization: Bearer ***"}],
        "keys": [MASK, "plain"],
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "none": None,
    }


def test_user_patterns_with_back_references_still_mask() -> None:
    """A user's pattern keeps its own group numbering (it is never merged into the quick pre-check)."""
    redactor = Redactor(env={}, patterns=[r"(?P<pre>ticket=)(\w)\2\w+", r"(x)\1-[0-9]{4}"])
    assert redactor.text("ticket=zzTOP1234 and xx-9876") == "ticket=*** and ***"


PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1\nq2w3e4r5t6y7u8i9o0\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl ok", "jwt *** ok"),
        ("id AKIAIOSFODNN7EXAMPLE denied", "id *** denied"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key = ***"),
        ("deploy --token abcd1234 --region eu", "deploy --token *** --region eu"),
        ("mysql --password hunter2hunter2 -h db", "mysql --password *** -h db"),
        ("client --api-key=abcd1234efgh", "client --api-key=***"),
        ('argv ["deploy", "--token", "abcd1234"]', 'argv ["deploy", "--token", "***"]'),
        ("curl -u admin:s3cr3tpass https://x", "curl -u admin:*** https://x"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "***"),
        ("slack xoxb-1234567890-abcdefghijkl", "slack ***"),
        (f"key:\n{PEM}\nafter", "key:\n***\nafter"),
        ('{"pem": "-----BEGIN PRIVATE KEY-----\\nMIIEv\\nABCD\\n-----END PRIVATE KEY-----"}', '{"pem": "***"}'),
        ("cut -----BEGIN EC PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1\nq2w3e4", "cut ***"),
    ],
    ids=[
        "jwt",
        "aws-key-id",
        "aws-secret",
        "flag-space",
        "flag-password",
        "flag-equals",
        "flag-in-json-list",
        "curl-user",
        "github-pat",
        "slack",
        "pem-multi-line",
        "pem-in-json",
        "pem-cut-off",
    ],
)
def test_more_secret_shapes_are_masked(text: str, expected: str) -> None:
    """JWTs, AWS keys, secret command-line options, curl's -u and PEM private keys are masked."""
    assert Redactor(env={}).text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DB_PASSWORD=Hunter2Hunter2xyz ./migrate", "DB_PASSWORD=*** ./migrate"),
        ('{"client_secret": "cs_live_ABCDEF1234567890"}', '{"client_secret": "***"}'),
        ('{"refresh_token": "1//0gQwErTyUiOp1234567"}', '{"refresh_token": "***"}'),
        ('{"openai_api_key": "plainvalue1234567890"}', '{"openai_api_key": "***"}'),
        ("SECRET_KEY=django-insecure-abcdef123456", "SECRET_KEY=***"),
        ('{"access_key": "abcdefghijk12345"}', '{"access_key": "***"}'),
        ("redis://:RedisPass12345@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("https://bob:pa/ss12345word@example.com/x", "https://bob:***@example.com/x"),
        ("OPENAI_KEY_sk-proj-AbCdEfGhIjKlMnOpQrSt1234", "OPENAI_KEY_***"),
        ("mysql -u root -pHunter2Secret db", "mysql -u root -p*** db"),
        ("sshpass -p Hunter2Secret ssh host", "sshpass -p *** ssh host"),
        ("key AIzaSyA-abcdefghijklmnopqrstuvwxyz12345 used", "key *** used"),
        ("npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "***"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBGabc\n-----END PGP PRIVATE KEY BLOCK-----", "***"),
        ("tail:\nZZZbodyline2xyzABCDEF\nMIIEowIBAAKCAQEAabcdefghijk\n-----END RSA PRIVATE KEY-----\n", "tail:\n***\n"),
    ],
    ids=[
        "prefixed-password",
        "client-secret",
        "refresh-token",
        "prefixed-api-key",
        "secret-key",
        "access-key",
        "url-empty-user",
        "url-slash-password",
        "key-after-underscore",
        "mysql-p",
        "sshpass",
        "google",
        "npm",
        "pgp",
        "pem-head-cut-off",
    ],
)
def test_shapes_a_review_found_leaking_are_masked(text: str, expected: str) -> None:
    """Secret names with a prefix (DB_PASSWORD, client_secret), URLs with an empty user or a / in the
    password, keys glued after an underscore, mysql/sshpass passwords, Google and npm keys, PGP blocks and a
    PEM body whose BEGIN line was cut off."""
    assert Redactor(env={}).text(text) == expected


def test_a_secret_where_an_overlong_line_is_cut_is_still_masked() -> None:
    """A line over max_line arrives in 64 KiB reads: wherever the secret falls, the piece boundary never
    splits it from what introduces it."""
    redactor = Redactor(env={})
    for pad in range(65400, 65600, 7):
        for prefix in ("Authorization: Bearer ", "--token ", "api_key=", "sk-proj-"):
            stream = LineRedactor(redactor)
            data = "x" * pad + " " + prefix + "Q" * 40 + " tail\n"
            out = "".join(stream.feed(data[i : i + 65536]) for i in range(0, len(data), 65536)) + stream.finish()
            assert "Q" * 8 not in out and out.endswith(" tail\n"), (pad, prefix)


@pytest.mark.parametrize(
    "text",
    [
        'deploy --token "$DEPLOY_TOKEN"',
        'curl -u "$USER:$PASS" https://x',
        "password=${DB_PASSWORD}",
        "--token-file /run/secrets/token",
        "update-user --user-agent curl",
        "asia-pacific region",
    ],
)
def test_references_to_secrets_are_not_secrets(text: str) -> None:
    """A $VARIABLE reference, an option that only names a secret's file, and look-alike words stay."""
    assert Redactor(env={}).text(text) == text


def test_a_variable_named_like_a_key_is_masked() -> None:
    """MY_SERVICE_KEY's value is masked by its name alone; KEYBOARD_LAYOUT's is not."""
    redactor = Redactor(env={"MY_SERVICE_KEY": "svc-value-123", "KEYBOARD_LAYOUT": "dvorak-intl"})
    assert redactor.text("svc-value-123 dvorak-intl") == "*** dvorak-intl"


def test_argv_masks_the_item_after_a_secret_flag() -> None:
    """In a command's argument list the value after --token or --password is masked, -u keeps the user."""
    argv = ["deploy", "--token", "abcd1234", "-u", "bob:hunter22", "--password", "$FROM_ENV", "plain"]
    assert Redactor(env={}).argv(argv) == [
        "deploy",
        "--token",
        "***",
        "-u",
        "bob:***",
        "--password",
        "$FROM_ENV",
        "plain",
    ]


def test_a_pem_key_streamed_line_by_line_is_masked_whole() -> None:
    """A private key arriving in pieces, split inside lines, leaves none of its body lines in the output."""
    lines = LineRedactor(Redactor(env={}))
    text = f"before\n{PEM}\nafter\n"
    out = "".join(lines.feed(text[i : i + 7]) for i in range(0, len(text), 7)) + lines.finish()
    assert out == "before\n***\n***\nafter\n"
    assert "MIIE" not in out and "q2w3" not in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login failed: password hunter2hunter2", "login failed: password ***"),
        ("passwd S3cr3tPassw0rd!", "passwd ***"),
        ("the password is hunter2hunter2 and more", "the password is *** and more"),
        ("with password 'p@ssword'", "with password '***'"),
        ("PGPASSWORD=s3cretpw psql -h db", "PGPASSWORD=*** psql -h db"),
        ("export PGPASSWORD='s3cretpw'", "export PGPASSWORD='***'"),
        ("postgres://user:pass@host/db", "postgres://user:***@host/db"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
        (
            "POST https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnopqrstuvwx 404",
            "POST https://hooks.slack.com/services/*** 404",
        ),
        (
            "https://discord.com/api/webhooks/123456789012345678/abcdEFGH_ijkl-mnop0123",
            "https://discord.com/api/webhooks/123456789012345678/***",
        ),
        (
            "GET https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage 401",
            "GET https://api.telegram.org/bot***/sendMessage 401",
        ),
        ("bot token 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "bot token ***"),
        ("stripe sk_live_51HabcdefghijklmnopQRSTUV", "stripe ***"),
        ("signing whsec_ABCDEFGHIJKLMNOPQRSTUVWXYZ123456", "signing ***"),
        ("anthropic sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWX_abc-def", "anthropic ***"),
        ("openrouter sk-or-v1-0123456789abcdef0123456789abcdef", "openrouter ***"),
        ('{"body": "{\\"api_key\\": \\"abcd1234efgh5678\\"}"}', '{"body": "{\\"api_key\\": \\"***\\"}"}'),
        ('[\\"--token\\", \\"abcd1234efgh\\"]', '[\\"--token\\", \\"***\\"]'),
        ('{\\"Authorization\\": \\"Basic dXNlcjpwYXNz\\"}', '{\\"Authorization\\": \\"Basic ***\\"}'),
        ("GET /geocode?address=x&key=abcd1234efgh5678 403", "GET /geocode?address=x&key=*** 403"),
        ("GET /maps?key=abcd1234efgh5678", "GET /maps?key=***"),
        ("GET /v1/x?api%5Fkey=abcd1234efgh5678", "GET /v1/x?api%5Fkey=***"),
        ("GET /v1/x?token%3Dabcd1234efgh5678%26page%3D2", "GET /v1/x?token%3D***%26page%3D2"),
        ("next=https%3A%2F%2Fx%3Fapi_key%3Dabcd1234efgh5678", "next=https%3A%2F%2Fx%3Fapi_key%3D***"),
        ("next=https%3A%2F%2Fbob%3Ahunter2pass%40host%2F", "next=https%3A%2F%2Fbob%3A***%40host%2F"),
    ],
    ids=[
        "prose-password",
        "prose-passwd",
        "prose-password-is",
        "prose-password-quoted",
        "pgpassword",
        "pgpassword-export",
        "postgres-url",
        "basic-auth",
        "slack-webhook",
        "discord-webhook",
        "telegram-url",
        "telegram-token",
        "stripe",
        "stripe-webhook-secret",
        "anthropic",
        "openrouter",
        "json-in-json-string",
        "flag-in-escaped-json-list",
        "authorization-in-escaped-json",
        "query-key",
        "query-key-first",
        "query-name-percent-encoded",
        "query-separator-percent-encoded",
        "query-in-encoded-url",
        "url-password-percent-encoded",
    ],
)
def test_shapes_users_meet_are_masked(text: str, expected: str) -> None:
    """A password in prose, PGPASSWORD, webhook and bot URLs, provider keys, keys in escaped JSON and in
    query strings (percent-encoded too) are masked."""
    assert Redactor(env={}).text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "password is incorrect",
        "password for user bob",
        "Password expired! Please reset it",
        "passwd root",
        "password reset requested by alice",
        "the passwords did not match (attempt 2)",
        "cache key=user:1234 hit",
        "password $DB_PASSWORD unset",
        "GET https://api.telegram.org/file/ ok",
    ],
)
def test_words_after_password_that_are_not_secrets_stay(text: str) -> None:
    """Prose after `password` is masked only when it looks like a password; a bare `key=` outside a query
    string is not a secret's name."""
    assert Redactor(env={}).text(text) == text


# -- the fast path against the algorithm it replaced -------------------------------------------------------

# Secrets of every shape (a line each), planted in the generated corpus.
_PLANTS = (
    SK,
    SK_PROJ,
    GSK,
    GHP,
    HF,
    "sk_live_51HabcdefghijklmnopQRSTUV",
    "sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWX_abc-def",
    "Authorization: Bearer abcdefgh12345678",
    "authorization=Basic dXNlcjpwYXNzd29yZA==",
    "api_key=abcd1234efgh",
    '{"password": "hunter2hunter2"}',
    '{\\"api_key\\": \\"abcd1234efgh5678\\"}',
    "token: abcdef123456",
    "https://bob:hunter2@example.com/v1",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
    "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "deploy --token abcd1234 --region eu",
    "curl -u admin:s3cr3tpass https://x",
    "mysql -u root -pHunter2Secret db",
    "sshpass -p Hunter2Secret ssh host",
    "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
    "npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "password hunter2hunter2",
    "PGPASSWORD=s3cretpw",
    "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnopqrstuvwx",
    "https://discord.com/api/webhooks/123456789012345678/abcdEFGH_ijkl-mnop0123",
    "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe",
    "?a=1&key=abcd1234efgh5678",
    "next=https%3A%2F%2Fbob%3Ahunter2pass%40host%2F",
    "svc-value-123456",
    PEM,
    "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----",
)
# What surrounds them: log words, trigger words with nothing secret after them, multi-byte characters
# (İ is the one character whose lower case is longer), line ends of every kind.
_FILLER = (
    "2026-06-10T03:12:18Z [INFO] task=doc-gen-587 duration=47.2s tokens=1428",
    "key",
    "key=",
    "token",
    "password is incorrect",
    "://",
    "Bearer",
    "-u",
    "api",
    "secret",
    "ghp_",
    "sk-",
    "eyJ",
    "ASIA",
    ":AA",
    "%3A%2F%2F",
    "é",
    "日本語",
    "🙂",
    "İ",
    "\u212a",
    "Σ",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "\x0b",
    "\u2028",
    '"',
    "\\",
    "x" * 300,
)


def _reference_text(redactor: Redactor, value: str) -> str:
    """The algorithm before the one-pass hint: every shape's triggers searched across the whole text."""
    if redactor._literal is not None and any(v in value for v in redactor._values):
        value = redactor._literal.sub(MASK, value)
    lowered = value.lower()
    for (_, triggers), shape in zip(_BUILTIN, redactor._builtin, strict=True):
        if any(t in lowered for t in triggers):
            value = shape.sub(_keep_pre, value)
    for shape in redactor._user:
        value = shape.sub(_keep_pre, value)
    return value


class _ReferenceRedactor(Redactor):
    def _text(self, value: str) -> str:
        return _reference_text(self, value)

    def marks(self, text: str) -> None:
        return None  # every line redacted on its own, as LineRedactor did


def _corpus(seed: int, size: int) -> bytes:
    """Generated text with planted secrets at random places and across every 64 KiB piece boundary."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        part = rng.choice(_PLANTS) if rng.random() < 0.15 else rng.choice(_FILLER)
        parts.append(part)
        length += len(part.encode())
    data = "".join(parts).encode("utf-8")
    for boundary in range(65536, len(data), 65536):  # a secret straddling each piece boundary
        plant = rng.choice(_PLANTS).encode()
        at = boundary - rng.randrange(len(plant))
        data = data[:at] + plant + data[at:]
    return data


@pytest.mark.parametrize("seed", range(4))
def test_redaction_is_the_same_as_the_algorithm_it_replaced(seed: int) -> None:
    """Over generated text dense with planted secrets, trigger words, multi-byte characters and line ends,
    text() of every 64 KiB piece and of every line, and the line redactor fed 64 KiB reads, give exactly
    what the old scan of every trigger across the whole text gave."""
    env = {"MY_SERVICE_KEY": "svc-value-123456"}
    new, old = Redactor(env=env), _ReferenceRedactor(env=env)
    data = _corpus(seed, 600_000)
    text = data.decode("utf-8", "surrogateescape")
    for start in range(0, len(text), 65536):
        piece = text[start : start + 65536]
        assert new.text(piece) == _reference_text(old, piece), start
    for line in text.splitlines(keepends=True)[:3000]:
        assert new.text(line) == _reference_text(old, line), line
    outputs = []
    for redactor in (new, old):
        stream = LineRedactor(redactor)
        pieces = [
            stream.feed(data[i : i + 65536].decode("utf-8", "surrogateescape")) for i in range(0, len(data), 65536)
        ]
        outputs.append("".join(pieces) + stream.finish())
    assert outputs[0] == outputs[1]
    assert outputs[0].count(MASK) > 1000  # the corpus is dense with secrets: this compared masked text


def test_configured_patterns_still_apply_to_every_line_of_a_stream() -> None:
    """With redact.patterns set, a streamed line with no built-in trigger is still masked by them."""
    stream = LineRedactor(Redactor(env={}, patterns=[r"^INT-\d{6}"]))
    assert stream.feed("plain line\nINT-123456 at a line start\n") == "plain line\n*** at a line start\n"


def test_a_prose_password_where_an_overlong_line_is_cut_is_still_masked() -> None:
    """A line over max_line is never cut between `password` (or `password is`) and the password."""
    redactor = Redactor(env={})
    for pad in range(126930, 126980, 3):  # the first cut: at white space before 128 KiB - 4 KiB
        for prefix in ("password ", "password is ", "passwd "):
            stream = LineRedactor(redactor)
            data = "x" * pad + " login with " + prefix + "Qq1" * 14 + " " + "y" * 70000 + " tail\n"
            out = "".join(stream.feed(data[i : i + 65536]) for i in range(0, len(data), 65536)) + stream.finish()
            assert "Qq1Qq1" not in out and out.endswith(" tail\n"), (pad, prefix)
