"""Secrets never reach a file or a stream: the one funnel every write goes through.

`Redactor` masks key shapes, auth headers, passwords in URLs and on command lines, AWS keys, PEM private
keys and the values of secret-looking environment variables. The state root's write helpers
(state/root.py) and the scripts' stdout and stderr (cli.py) pass everything through `active()`, the
process-wide redactor: core installs the one built from the settings and the model chain's key
variables (`install`); until then a default one, built from the environment, is used.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import threading
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from itertools import accumulate

TYPE_CHECKING = False  # not typing's: see selfheal/__init__.py
if TYPE_CHECKING:
    from typing import Any

MASK = "***"

# The default of redact.env_names (skill.yaml says the same): names of variables whose values are secret.
DEFAULT_ENV_NAMES = r"(?i)(api[_-]?key|(^|_)key$|token|secret|passw(or)?d|passphrase|credential|auth)"
# A secret value shorter than this is not masked on its own: it would mask ordinary words.
MIN_SECRET_CHARS = 6
# Strings up to this long are remembered with their redacted form, up to this many of them.
_MEMO_CHARS = 512
_MEMO_ENTRIES = 4096

_PEM_BEGIN = r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
# Characters of a PEM body: base64, line breaks (also as the \n of a JSON string) and header lines.
_PEM_BODY = r"(?:[A-Za-z0-9+/=\s:,.\-]|\\[nrt])*"

# An optional quote before or after a key name, escaped too: a JSON document held in a JSON string
# ({\"api_key\": \"...\"}) writes its quotes as \".
_Q = r"""(?:\\*[\"'])?"""
# A character of a secret value: a backslash too, unless it escapes the quote that ends the value.
_VALUE = r"""(?:[^\s\"'\\]|\\+(?=[^\s\"'\\]))"""
# The same in a key=value pair, which also ends at & , ; } (a URL's query string, a list, JSON) and at %26
# (an & percent-encoded).
_PAIR_VALUE = r"""(?:(?!%26)(?:[^\s&,;\"'}\\]|\\+(?=[^\s&,;\"'}\\])))"""

# Shapes of secrets that need no context to recognise (a value that is a `$VARIABLE` is a reference, not a
# secret, and is left alone), each with the (lower-case) strings one of which any match contains: a
# shape's regex runs only on text holding one of them, so text without secrets (nearly all of it) costs one
# pass of `_HINT` (below), not a regex pass per shape. A `pre` group is kept; the rest is masked.
_KEY_PREFIXES = (
    "sk", "pk", "rk", "gsk", "xoxa", "xoxb", "xoxp", "xoxr", "ghp", "gho", "ghs", "ghu", "ghr", "whsec"
)  # fmt: skip
# AWS access key ids: upper case, made of common letters (a case-sensitive hint finds them, `_CASED_HINTS`).
_AWS_KEY_ID = r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"
# Telegram bot tokens (123456789:AA...), bare or in api.telegram.org/bot<token>/.
_TELEGRAM_BOT = r"(?<![0-9])[0-9]{5,}:AA[A-Za-z0-9_\-]{30,}"
_BUILTIN: tuple[tuple[str, tuple[str, ...]], ...] = (
    # A PEM private key, whole: to its END line, or (cut off) as far as its body goes.
    (rf"{_PEM_BEGIN}(?:[\s\S]*?{_PEM_END}|{_PEM_BODY})", ("private key-----", "private key block-----")),
    # The end of one whose BEGIN line was cut off (a tail kept of long output): its body lines up to END.
    (
        rf"(?m)^(?:[A-Za-z0-9+/=]{{16,}}[ \t]*(?:\r?\n|\\n))+{_PEM_END}",
        ("private key-----", "private key block-----"),
    ),
    # OpenAI-style and similar prefixed keys: sk-..., sk-proj-..., sk-ant-..., sk-or-v1-..., sk_live_...,
    # gsk_..., xoxb-..., ghp_..., hf_..., whsec_...
    (
        r"(?<![A-Za-z0-9])(?:sk|pk|rk|gsk|xox[abpr]|ghp|gho|ghs|ghu|ghr|whsec|github_pat|hf|glpat)[-_]"
        r"[A-Za-z0-9_\-]{16,}",
        (*(p + sep for p in (*_KEY_PREFIXES, "hf") for sep in "-_"), "github_pat_", "glpat"),
    ),
    # JSON Web Tokens: three base64url parts, the first two starting with {" encoded.
    (r"\beyJ[A-Za-z0-9_\-]{6,}\.eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*", ("eyj",)),
    # AWS access key ids, and the secret next to aws_secret_access_key.
    (_AWS_KEY_ID, ("akia", "asia", "agpa", "aida", "aroa")),
    (
        rf"""(?i)(?P<pre>aws_?secret_?(?:access_?)?key{_Q}\s*[:=]\s*{_Q})[A-Za-z0-9/+=]{{16,}}""",
        ("aws_secret", "awssecret"),
    ),
    # Authorization headers and bearer tokens.
    (r"(?i)(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}", ("bearer",)),
    (
        rf"(?i)(?P<pre>\bauthorization{_Q}\s*[:=]\s*{_Q}(?:basic\s+|token\s+)?)(?!bearer\s){_VALUE}{{8,}}",
        ("authorization",),
    ),
    # Command-line options that take a secret: --token VALUE, --password=VALUE, --api-key VALUE, also as
    # items of a JSON or Python list ("--token", "VALUE").
    (
        r"""(?i)(?P<pre>(?<![\w-])--?(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|password|passwd|secret"""
        rf"""|client[_-]?secret|private[_-]?key)(?:=|\s+|\\*[\"']\s*,\s*){_Q})(?!\*\*\*|\$){_VALUE}{{4,}}""",
        ("-api", "-access", "-auth", "-token", "-password", "-passwd", "-secret", "-client", "-private"),
    ),
    # curl -u user:password (and --user): keeps the user, masks the password.
    (
        r"""(?P<pre>(?<![\w-])(?:-u|--user)(?:=|\s+|[\"']\s*,\s*)[\"']?[^\s:\"']+:)(?!\$)[^\s\"']+""",
        ("-u=", "-u ", "-u\t", '-u"', "-u'", "--user"),
    ),
    # key=value, key: value and "key": "value" forms with secret-ish key names, in a URL's query string too,
    # percent-encoded or not (?api_key=, &token=, &key=, token%3D..., api%5Fkey=).
    # The name may have a prefix (DB_PASSWORD, PGPASSWORD, openai_api_key, client_secret, GITHUB_TOKEN) but no
    # suffix (prompt_tokens, token_type and password_policy are not secrets); a bare `key` only as a
    # query parameter (?key=, &key=: Google's API key).
    (
        r"""(?i)(?P<pre>(?:(?<![A-Za-z0-9])|(?<=%[0-9a-f][0-9a-f]))(?=[acdeikprst])"""
        r"""(?:api(?:[_-]|%5f)?key|apikey|(?:access|private|secret|signing|encryption)(?:[_-]|%5f)?key"""
        r"""|(?:access|auth|refresh|id)(?:[_-]|%5f)?token|token|secret|(?:pg)?password|passwd|passphrase|pwd"""
        r"""|credentials?|(?:(?<=[?&])|(?<=%26)|(?<=%3f))key)"""
        rf"""{_Q}\s*(?:[:=]|%3[ad])\s*{_Q})(?!\*\*\*|\$){_PAIR_VALUE}{{4,}}""",
        ("api", "key", "token", "secret", "passw", "passphrase", "pwd", "credential"),
    ),
    # A password written as prose: `password hunter2hunter2`, `passwd is S3cr3t!x`: what follows is masked
    # when it looks like one (six characters or more with a letter and a digit, or a letter and a symbol
    # inside it), not `password is incorrect` or `password for user bob`.
    (
        r"""(?i)(?P<pre>(?<![A-Za-z0-9])(?:passw(?:or)?d|passphrase)(?:[ \t]+(?:is|was))?[ \t]+[\"'`]?)"""
        r"""(?!\$)(?=[^\s\"'`]*[A-Za-z])(?=[^\s\"'`]*(?:[0-9]|[!@#$%^&*+=?~][^\s\"'`]))[^\s\"'`]{6,}""",
        ("passw", "passphrase"),
    ),
    # Passwords in URLs: scheme://user:password@host keeps the user, masks the password.
    # (An empty user, redis://:pw@host, too; a password may hold a `/`, unless what looks like one is a
    # port and a path: http://host:8080/a@b.)
    (r"(?P<pre>://[^\s:/@]*:)(?!\d+/)[^\s@]+(?=@)", ("://",)),
    # The same percent-encoded (a URL passed as a query parameter): https%3A%2F%2Fuser%3A***%40host.
    (
        r"(?i)(?P<pre>%3a%2f%2f(?:(?!%3a|%40|%2f)[^\s:/@])*%3a)(?!\d+%2f)(?:(?!%40)[^\s@/])+(?=%40)",
        ("%3a%2f%2f",),
    ),
    # Webhook URLs, whose path is the secret: Slack's and Discord's.
    (r"(?P<pre>hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9_/\-]+", ("hooks.slack.com/",)),
    (r"(?i)(?P<pre>discord(?:app)?\.com/api/(?:v\d+/)?webhooks/[0-9]+/)[A-Za-z0-9_\-]+", ("discord",)),
    # Telegram: api.telegram.org/bot<token>/ (whatever the token looks like), and a bot token anywhere.
    (r"(?P<pre>api\.telegram\.org/(?:file/)?bot)[^/\s?#\"']+", ("telegram.org/",)),
    (_TELEGRAM_BOT, (":aa",)),
    # mysql -pPASSWORD (the password glued to -p) and sshpass -p PASSWORD.
    (r"(?P<pre>\bmysql(?:dump|admin|import|check|show)?\b[^\n]*?\s-p)(?!\$)[^\s\"']+", ("mysql",)),
    (r"(?P<pre>\bsshpass\b(?:\s+-[a-oq-z]\S*)*\s+-p\s*)(?!\$)[^\s\"']+", ("sshpass",)),
    # Google API keys, npm tokens.
    (r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}", ("aiza",)),
    (r"(?<![A-Za-z0-9])npm_[A-Za-z0-9]{36}", ("npm_",)),
)
# Shapes whose triggers are all common letters but whose regex is case-sensitive: found by what their
# matches hold, case and all (every match of the shape matches its hint), not by `_HINT`.
_CASED_HINTS = {_AWS_KEY_ID: "A(?:KIA|SIA|GPA|IDA|ROA)", _TELEGRAM_BOT: ":AA"}

# Finding which triggers a text holds, in one pass: each trigger is looked for where its rarest character
# occurs (characters ranked rarest first, by their frequency in logs and JSON), that character matched and
# the rest of the trigger checked around it. A match consumes one character, so no occurrence of a
# trigger hides another's; a match at p means some trigger with the character at p as its anchor is there.
_RARE_FIRST = "zqxj%\t'_ykbw-pc/"


def _anchor(trigger: str) -> int:
    """Where in `trigger` the character to look for is: its rarest, by `_RARE_FIRST` (else its first)."""
    ranks = [_RARE_FIRST.find(c) % (len(_RARE_FIRST) + 1) for c in trigger]
    return ranks.index(min(ranks))


def _hint_pattern(triggers: Iterable[str]) -> str:
    by_char: dict[str, dict[str, list[str]]] = {}
    for trigger in sorted(set(triggers)):
        at = _anchor(trigger)
        by_char.setdefault(trigger[at], {}).setdefault(trigger[:at], []).append(trigger[at + 1 :])
    parts = []
    for char, by_before in by_char.items():
        alternatives = []
        for before, afters in by_before.items():
            behind = f"(?<={re.escape(before + char)})" if before else ""
            ahead = "" if "" in afters else "(?=" + "|".join(map(re.escape, afters)) + ")"
            alternatives.append(behind + ahead)
        parts.append(re.escape(char) + ("" if "" in alternatives else "(?:" + "|".join(alternatives) + ")"))
    return "|".join(parts)


# Each shape's triggers by the character they are looked for at: [(shape index, trigger, its offset)].
_BY_ANCHOR: dict[str, list[tuple[int, str, int]]] = {}
for _index, (_shape, _triggers) in enumerate(_BUILTIN):
    if _shape not in _CASED_HINTS:
        for _trigger in _triggers:
            _BY_ANCHOR.setdefault(_trigger[_anchor(_trigger)], []).append((_index, _trigger, _anchor(_trigger)))
_HINT = _hint_pattern(t for _, ts in _BUILTIN if _ not in _CASED_HINTS for t in ts)
# A trigger whose anchor occurs more often than this is looked for in the whole text, not at each place.
_FEW_HITS = 4

# The patterns below compile when first used, not at import, as the shapes do (_compiled): most processes
# never mask a command's arguments, a PEM key or an overlong line, and the cron health check pays for every
# pattern compiled at its start.


@functools.cache
def _secret_flag() -> re.Pattern[str]:
    """An argv item after which the next item is a secret (`--token`, `VALUE`)."""
    return re.compile(
        r"(?i)--?(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|password|passwd|secret|client[_-]?secret"
        r"|private[_-]?key)\Z"
    )


@functools.cache
def _user_flag() -> re.Pattern[str]:
    """An argv item after which the next item is a user:password (`-u`)."""
    return re.compile(r"(?:-u|--user)\Z")


@functools.cache
def _pem_open() -> re.Pattern[str]:
    return re.compile(rf"{_PEM_BEGIN}(?![\s\S]*{_PEM_END})")


@functools.cache
def _pem_close() -> re.Pattern[str]:
    return re.compile(_PEM_END)


_COMPILED_SHAPES: list[re.Pattern[str] | None] = [None] * len(_BUILTIN)


def _compiled(index: int) -> re.Pattern[str]:
    """A built-in shape's regex, compiled the first time a text triggers it, once per process: compiling all
    of them took about 11 ms of every start (the cron health check's whole budget is about 75 ms), and most
    processes only ever trigger a few (a URL's `://`, a `token`)."""
    pattern = _COMPILED_SHAPES[index]
    if pattern is None:  # two threads may both compile it: the same pattern, either kept
        pattern = _COMPILED_SHAPES[index] = re.compile(_BUILTIN[index][0])
    return pattern


def _keep_pre(match: re.Match[str]) -> str:
    return (match.groupdict().get("pre") or "") + MASK


class Redactor:
    """Masks secrets in text. Built once per process from the settings and the environment."""

    def __init__(
        self,
        *,
        env_names: str = DEFAULT_ENV_NAMES,
        patterns: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        extra_values: Iterable[str] = (),
    ) -> None:
        env = os.environ if env is None else env
        name_re = re.compile(env_names)
        values = {v for k, v in env.items() if name_re.search(k) and len(v) >= MIN_SECRET_CHARS}
        values.update(v for v in extra_values if v and len(v) >= MIN_SECRET_CHARS)
        # Longest first, so a value that contains another is masked whole.
        self._values = tuple(sorted(values, key=len, reverse=True))
        literal = "|".join(re.escape(v) for v in self._values)
        self._literal = re.compile(literal) if literal else None
        self._hint = re.compile(_HINT)
        self._cased = [(i, re.compile(_CASED_HINTS[p])) for i, (p, _) in enumerate(_BUILTIN) if p in _CASED_HINTS]
        self._user = [re.compile(p) for p in patterns]
        self._memo: dict[str, str] = {}

    def text(self, value: str) -> str:
        if len(value) < MIN_SECRET_CHARS:
            return value
        if len(value) > _MEMO_CHARS:
            return self._text(value)
        # State files repeat the same short strings write after write (names, states, commands).
        found = self._memo.get(value)
        if found is None:
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            found = self._memo[value] = self._text(value)
        return found

    def _text(self, value: str) -> str:
        if self._literal is not None and any(v in value for v in self._values):
            value = self._literal.sub(MASK, value)
        for index in self._shapes_in(value):
            value = _compiled(index).sub(_keep_pre, value)
        for shape in self._user:
            value = shape.sub(_keep_pre, value)
        return value

    def _shapes_in(self, value: str) -> list[int]:
        """The built-in shapes whose triggers `value` holds, in order: one pass of the hint finds the places
        where a trigger may be, and each candidate trigger is confirmed there (or, where its anchor character
        is everywhere, in the whole text)."""
        lowered = value.lower()
        hits: dict[str, list[int]] = {}
        for match in self._hint.finditer(lowered):
            hits.setdefault(lowered[match.start()], []).append(match.start())
        found = {index for index, cased in self._cased if cased.search(value)}
        for char, places in hits.items():
            for index, trigger, at in _BY_ANCHOR[char]:
                if index in found:
                    continue
                if len(places) > _FEW_HITS:
                    if trigger in lowered:
                        found.add(index)
                elif any(p >= at and lowered.startswith(trigger, p - at) for p in places):
                    found.add(index)
        return sorted(found)

    @functools.cached_property
    def _builtin(self) -> list[re.Pattern[str]]:
        """Every built-in shape's regex, compiled (for the reference algorithm the tests and benchmarks keep)."""
        return [_compiled(index) for index in range(len(_BUILTIN))]

    def marks(self, text: str) -> list[tuple[int, int]] | None:
        """Spans of `text` that may hold something to mask (a trigger of a shape, a secret value): a line of
        `text` with none of them is masked by nothing. None where that cannot be told (configured patterns,
        which may match anything)."""
        if self._user:
            return None
        # U+0130 is the one character whose lower case is two: as `i` it keeps the places and hides no trigger.
        lowered = (text.replace("\u0130", "i") if "\u0130" in text else text).lower()
        spans = [(m.start(), m.start() + 1) for m in self._hint.finditer(lowered)]
        for _, cased in self._cased:
            spans.extend(m.span() for m in cased.finditer(text))
        if self._literal is not None and any(v in text for v in self._values):
            spans.extend(m.span() for m in self._literal.finditer(text))
        return spans

    def obj(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.obj(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, str) for v in value):
                return self.argv(value)
            return [self.obj(v) for v in value]
        return value

    def argv(self, items: Iterable[str]) -> list[str]:
        """A command's arguments: each item redacted, and the item after a secret-taking flag masked."""
        out: list[str] = []
        after: str | None = None
        for item in items:
            if after == "secret" and item and not item.startswith("$"):
                out.append(MASK)
            elif after == "user" and ":" in item:
                out.append(item.split(":", 1)[0] + ":" + MASK)
            else:
                out.append(self.text(item))
            after = "secret" if _secret_flag().match(item) else "user" if _user_flag().match(item) else None
        return out

    def data(self, raw: bytes) -> bytes:
        """Redact bytes that hold text (undecodable bytes pass through unchanged)."""
        text = raw.decode("utf-8", "surrogateescape")
        clean = self.text(text)
        return raw if clean is text or clean == text else clean.encode("utf-8", "surrogateescape")


# A line over max_line is released in pieces, each ending at white space at least this far from the end of
# what has arrived: the rest waits for more, so a secret near the cut is seen whole with what introduces it.
_KEEP_CHARS = 4096


@functools.cache
def _introduces() -> re.Pattern[str]:
    """What, at the end of a piece, introduces a secret that would then start the next piece: not a place to cut."""
    return re.compile(
        r"(?i)(?:[:=]|\bbearer|\bbasic|\btoken|--?[\w-]*(?:key|token|password|secret|passwd)|-[pu]"
        r"|(?:passw(?:or)?d|passphrase)(?:\s+(?:is|was))?)\Z"
    )


def _split_point(buf: str, limit: int) -> int:
    """Where to cut a line too long to hold whole: after white space at or before `limit` that does not
    follow something introducing a secret (`Bearer`, `--token`, `key=`); at `limit` when there is none."""
    limit = max(limit, 1)
    end = limit
    for _ in range(64):
        space = max(buf.rfind(" ", 0, end), buf.rfind("\t", 0, end))
        if space <= 0:
            break
        before = buf[max(0, space - 64) : space].rstrip()
        if not _introduces().search(before):
            return space + 1
        end = space
    return limit


class LineRedactor:
    """Redacts a stream of text that arrives in pieces: whole lines at a time, so a secret split between two
    writes is still seen whole, and a PEM private key spread over many lines is masked from its BEGIN line
    to its END line. A line longer than `max_line` characters is released in pieces of that size."""

    def __init__(self, redactor: Redactor | None = None, *, max_line: int = 65536) -> None:
        self._redactor = redactor
        self.max_line = max_line
        self._pending = ""
        self._in_pem = False

    def feed(self, text: str) -> str:
        """The redacted complete lines of what has arrived so far; a partial last line waits for its end."""
        buf = self._pending + text
        cut = buf.rfind("\n") + 1
        if cut == 0 and len(buf) <= self.max_line:
            self._pending = buf
            return ""
        if cut == 0:
            cut = _split_point(buf, len(buf) - _KEEP_CHARS)
        self._pending = buf[cut:]
        return self.lines(buf[:cut])

    def finish(self) -> str:
        """Whatever is left (a last line without its newline), redacted."""
        rest, self._pending = self._pending, ""
        return self.lines(rest) if rest else ""

    def lines(self, block: str) -> str:
        """Redact complete lines (the block ends at a line end, or is the last piece of the stream)."""
        redactor = self._redactor or active()
        spans = None if self._in_pem or "PRIVATE KEY" in block else redactor.marks(block)
        if spans is None:
            return self._each_line(redactor, block)
        if not spans:
            return block
        # Only the lines holding a mark can change: each is redacted on its own, as `_each_line` would.
        lines = block.splitlines(keepends=True)
        ends = list(accumulate(map(len, lines)))
        dirty: set[int] = set()
        for start, end in spans:
            dirty.update(range(bisect_right(ends, start), bisect_right(ends, end - 1) + 1))
        for i in dirty:
            lines[i] = redactor.text(lines[i])
        return "".join(lines)

    def _each_line(self, redactor: Redactor, block: str) -> str:
        """Redact `block` line by line, following a PEM private key from its BEGIN line to its END line."""
        out: list[str] = []
        for raw in block.splitlines(keepends=True):
            line = raw
            if self._in_pem:
                end = _pem_close().search(line)
                if end is None:
                    continue  # a line of the key's body: left out
                self._in_pem = False
                line = MASK + line[end.end() :]
            elif _pem_open().search(line):
                self._in_pem = True
                clean = redactor.text(line)
                out.append(clean if clean.endswith("\n") or not line.endswith("\n") else clean + "\n")
                continue
            out.append(redactor.text(line))
        return "".join(out)


# -- a database URL's password ----------------------------------------------------------------------------
# Patterns as strings, compiled (and cached by `re`) on first use: only fleet mode and a bad store.url use them.

# A `password=` of a URL's query or a libpq connection string: quoted, to its closing quote (or the end); else
# to white space or the next `&name=` (an unescaped & with no `=` after it is part of the password).
_PW_VALUE = r"(password\s*=\s*)(?:'[^']*'?|(?:(?!&[\w.-]+=)\S)+)"
_QUERY_PW = r"[?&]password=((?:(?!&[\w.-]+=).)*)"
# scheme://user:password@ in a message (a URL other than the one whose password is known).
_USERINFO_PW = r"(://[^:@/\s]*:)[^@/\s]*@"
# What follows `host:` when it is a port (and a path with no @), not a password: `db:5432/x?...`.
_PORT = r"\d+(?:/[^@]*)?(?:\?|\Z)"
# Where libpq cuts a URL it cannot read into the host, port, database and options its messages repeat.
_URL_CUTS = r"[\s@/:?#&'\"=]+"
_MIN_PIECE_CHARS = 3  # a shorter piece of a password is not masked on its own: it would mask ordinary text


def url_password_pieces(url: str) -> list[str]:
    """What of a database URL no message may show, longest first: its password (of the user info, or a
    `password=` of the query), percent-decoded too, and each piece of it that libpq, cutting a URL it cannot
    read, repeats as a host, port, database or option (`failed to resolve host 'ss@db.example'`).

    The user info's password runs from the first `:` to an `@`: the last one before the query, and the last one
    of all, both (a password may hold an unescaped `@`, `/`, `?` or space, where libpq stops at the first `@` or
    `/`); a `:` that starts a port (`db:5432/x`) starts none."""
    from urllib.parse import unquote  # noqa: PLC0415 - only here, off every other process's start

    rest = url.split("://", 1)[-1]
    found = re.findall(_QUERY_PW, rest)
    user, colon, after = rest.partition(":")
    if colon and not re.search(r"[/?\s]", user) and not re.match(_PORT, after):
        found += [span.rsplit("@", 1)[0] for span in (after.split("?", 1)[0], after) if "@" in span]
    pieces: set[str] = set()
    for secret in found:
        for whole in (secret, unquote(secret)):
            pieces.add(whole)
            pieces.update(p for p in re.split(_URL_CUTS, whole) if len(p) >= _MIN_PIECE_CHARS)
    return sorted((p for p in pieces if len(p) >= 2), key=len, reverse=True)


def mask_url_password_in(text: str, url: str) -> str:
    """`text` (a message about `url`, or `url` itself) with every piece of `url`'s password, and the password of
    any other URL or `password=` in it, replaced by ***."""
    text = re.sub(_USERINFO_PW, rf"\1{MASK}@", re.sub(_PW_VALUE, rf"\1{MASK}", text))
    for piece in url_password_pieces(url):
        text = text.replace(piece, MASK)
    return text


def mask_url_password(url: str) -> str:
    """A database URL as messages show it: no piece of its password, everything else as written."""
    return mask_url_password_in(url, url)


# -- the process-wide redactor ----------------------------------------------------------------------------

_lock = threading.Lock()
_installed: Redactor | None = None
# Held for one poll-then-write to a pipe, socket or terminal of ours, by every thread: the command output
# pump (core.process._Sink) and the scripts' diagnostics (cli.RedactedBinary) alike. A poll that says
# writable promises room for one PIPE_BUF write, not two: another thread's write between the poll and the
# write would leave this one waiting on a reader that may never read again.
OUTPUT_LOCK = threading.Lock()


def reader_may_stall(fd: int) -> bool:
    """Whether `fd` is a pipe, FIFO, socket or terminal: another process reads it, and may stop reading (the
    writes OUTPUT_LOCK guards). Files, /dev/null and other devices take every write at once."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


# The pause before a terminal that polled writable but took nothing (one byte of room, a CR LF to write) is tried
# again through its twin: without it, the wait for room would spin (cli's and core.process's writers).
JAMMED_S = 0.02


def nonblocking_twin(fd: int) -> int | None:
    """For a terminal at `fd`: a second open file description of it, non-blocking and close-on-exec, to write
    to after poll() said the terminal is writable; None for anything else, or where none can be opened.

    A terminal polls writable with a single byte of room, so the PIPE_BUF write a pipe takes whole after the
    same poll waits on a terminal for the rest, for good if its reader froze (a hung terminal emulator or ssh
    client): no timeout or stop acted on. Through the twin the write takes what fits and returns. Its own
    description, reopened through /proc: O_NONBLOCK on the inherited one would be the shell's too."""
    try:
        if not os.isatty(fd):
            return None
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def install(redactor: Redactor | None) -> None:
    """Make `redactor` the one every write of this process goes through; None: a default one, built from
    the environment as it is at the next write (core's `redactor_for` installs the configured one)."""
    global _installed  # noqa: PLW0603 - one funnel per process is the point
    with _lock:
        _installed = redactor


def active() -> Redactor:
    """The installed redactor (on the hot path of every write: one global read)."""
    global _installed  # noqa: PLW0603
    found = _installed
    if found is None:
        with _lock:
            found = _installed = _installed or Redactor()
    return found
