"""Failure classification: a finished command, a Python exception or an HTTP answer becomes one error class.

Everything is first reduced to a `Failure` (the evidence), then the ordered rules of skill.yaml are
tried; the first rule whose every condition matches names the class. No rule matching means `unknown`,
which is retried once and recorded as unclassified so the log analysis can suggest a rule.
"""

from __future__ import annotations

import builtins
import errno as errno_mod
import functools
import re
import signal as signal_mod
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..state.root import loads
from .backoff import parse_retry_after
from .config import ClassifySettings, Rule, get_config

_EMPTY: Mapping[str, str] = MappingProxyType({})
_CHAIN_LIMIT = 16
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")
_TEXT_LIMIT = 8000
# Python 3.11's exception groups; on 3.10 there are none (an empty tuple: isinstance() is always False).
_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())


@dataclass(frozen=True)
class Failure:
    """The evidence of one failed attempt, whatever produced it."""

    source: str  # "exception" | "command" | "http"
    text: str = ""
    exception_types: tuple[str, ...] = ()
    errnos: tuple[str, ...] = ()
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    error_codes: tuple[str, ...] = ()
    exit_code: int | None = None
    signal: str | None = None
    timed_out: bool = False
    detail: str = ""  # the one line that best says what went wrong, if known
    message: str = ""  # the server's own words (its error body's message), when it answered with one

    # -- constructors --------------------------------------------------------------------------------------

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        """Evidence from an exception and its __cause__/__context__ chain (openai, httpx, OSError ...).

        An exception group holding one exception (what `asyncio.TaskGroup` raises when one task failed) is
        read as that exception first, then the group: the group's own words never say what went wrong.
        A group of several stays the group (no one member speaks for the others)."""
        chain = _exception_chain(exc)
        member = _only_member(exc)
        if member is not exc:
            seen = {id(item) for item in chain}
            chain = [item for item in _exception_chain(member) if id(item) not in seen] + chain
        types: list[str] = []
        errnos: list[str] = []
        texts: list[str] = []
        status: int | None = None
        headers: Mapping[str, str] = _EMPTY
        codes: list[str] = []
        for item in chain:
            types.extend(_type_names(type(item)))
            text = safe_str(item)
            number = item.errno if isinstance(item, OSError) and isinstance(item.errno, int) else None
            if number is None:  # a library that wrapped the OSError often keeps only its message
                match = _ERRNO_TEXT.search(text)
                number = int(match.group(1)) if match else None
            name = errno_mod.errorcode.get(number) if number is not None else None
            if name:
                errnos.append(name)
            if text:
                texts.append(f"{type(item).__name__}: {text}")
            if status is None:
                status, headers = _http_from(item)
            codes.extend(_codes_from(item))
        message = ""
        if status is not None:
            body = _body_text(chain)
            codes.extend(c for c in _codes_from_body(body) if c not in codes)
            # Some clients keep only "Error code: 500" as the message; the server's words are in the body.
            message = _body_message(body)
            if message and not any(message in t for t in texts):
                texts.append(message)
        return cls(
            source="exception",
            text=" | ".join(texts)[:_TEXT_LIMIT],
            exception_types=tuple(dict.fromkeys(types)),
            errnos=tuple(dict.fromkeys(errnos)),
            status=status,
            headers=headers,
            error_codes=tuple(dict.fromkeys(codes)),
            message=message,
        )

    @classmethod
    def from_command(
        cls,
        *,
        exit_code: int | None,
        stderr_tail: str = "",
        stdout_tail: str = "",
        timed_out: bool = False,
        tail_chars: int = 4000,
    ) -> Failure:
        """Evidence from a finished command: a negative exit code means it died of that signal."""
        sig = None
        code = exit_code
        if exit_code is not None and exit_code < 0:
            sig = _signal_name(-exit_code)
            code = None
        elif exit_code is not None and exit_code > 128:
            # A shell, `docker run` or `timeout -s KILL` says "my command died of signal N" as 128 + N: exit
            # 137 is the OOM killer's SIGKILL, 139 a segfault. The code stays, for rules that name it.
            sig = _shell_signal(exit_code - 128)
        # Traceback frames are where the code was, not what went wrong: "line 429" or a `timeout=30`
        # argument in a frame said rate_limit or timeout of a plain bug.
        text = _tail(_without_frames(stderr_tail), tail_chars)
        if stdout_tail:
            text = text + "\n" + _tail(_without_frames(stdout_tail), max(tail_chars // 2, 1))
        return cls(
            source="command",
            text=text,
            exception_types=_with_builtin_bases(traceback_exception_types(text)),
            exit_code=code,
            signal=sig,
            timed_out=timed_out,
            headers=_headers_from_text(text),
            detail=_last_meaningful_line(stderr_tail) or _last_meaningful_line(stdout_tail),
        )

    @classmethod
    def from_http(cls, status: int, headers: Mapping[str, str] | None = None, body: str | bytes = "") -> Failure:
        """Evidence from an HTTP answer: status, headers and the error object in the body."""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return cls(
            source="http",
            text=text[:_TEXT_LIMIT],
            status=status,
            headers=MappingProxyType({k.lower(): v for k, v in (headers or {}).items()}),
            error_codes=tuple(_codes_from_body(text)),
        )

    def evidence_key(self) -> tuple[object, ...]:
        """Everything rules can look at, as a hashable key."""
        return (
            self.source,
            self.text,
            self.exception_types,
            self.errnos,
            self.status,
            tuple(sorted(self.headers.items())),
            self.error_codes,
            self.exit_code,
            self.signal,
        )

    @functools.cached_property
    def _bare_types(self) -> frozenset[str]:
        return frozenset(t.rpartition(".")[2] for t in self.exception_types)

    @functools.cached_property
    def _package_types(self) -> frozenset[tuple[str, str]]:
        return frozenset((t.split(".", 1)[0], t.rpartition(".")[2]) for t in self.exception_types if "." in t)

    def retry_after(self, *, now: float) -> float | None:
        return parse_retry_after(self.headers, now=now) if self.headers else None

    def summary(self) -> str:
        """One line for a ledger's `reason`: what happened, most specific first."""
        parts = []
        if self.timed_out:
            parts.append("timed out")
        if self.signal and self.exit_code is not None:
            parts.append(f"exit {self.exit_code} (killed by {self.signal})")
        elif self.signal:
            parts.append(f"killed by {self.signal}")
        elif self.exit_code is not None:
            parts.append(f"exit {self.exit_code}")
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        line = self.detail or (self.text if self.source != "command" else "")
        if line:
            parts.append(line)
        return ": ".join(parts) if parts else "failed"


@dataclass(frozen=True)
class Classification:
    """The class of one failure, the rule that said so, and what the server asked for."""

    error_class: str
    rule: str
    reason: str
    retry_after_s: float | None = None

    @property
    def unclassified(self) -> bool:
        return self.rule == UNCLASSIFIED


UNCLASSIFIED = "unclassified"


# --- rules ---------------------------------------------------------------------------------------------------


class _CompiledRule:
    __slots__ = (
        "codes",
        "errnos",
        "error_class",
        "exceptions_bare",
        "exceptions_full",
        "exit_codes",
        "headers",
        "name",
        "pattern",
        "reason",
        "signals",
        "status_exact",
        "status_hundreds",
    )

    def __init__(self, rule: Rule) -> None:
        self.name = rule.name
        self.error_class = rule.error_class
        self.reason = rule.reason or rule.error_class
        self.status_exact = frozenset(s for s in rule.status if isinstance(s, int))
        self.status_hundreds = frozenset(int(s[0]) for s in rule.status if isinstance(s, str))
        self.codes = frozenset(c.lower() for c in rule.error_code)
        self.headers = tuple((k.lower(), v.lower()) for k, v in rule.header.items())
        # "pkg.Name" matches pkg.Name and pkg.sub.module.Name: the package and the class, not the path.
        self.exceptions_full = frozenset((e.split(".")[0], e.rpartition(".")[2]) for e in rule.exception if "." in e)
        self.exceptions_bare = frozenset(e for e in rule.exception if "." not in e)
        self.errnos = frozenset(rule.errno)
        self.exit_codes = frozenset(rule.exit_code)
        self.signals = frozenset(rule.signal)
        self.pattern = re.compile(rule.pattern) if rule.pattern else None

    def matches(self, f: Failure) -> bool:
        if self.status_exact or self.status_hundreds:
            if f.status is None:
                return False
            if f.status not in self.status_exact and f.status // 100 not in self.status_hundreds:
                return False
        if self.codes and not any(c.lower() in self.codes for c in f.error_codes):
            return False
        for name, want in self.headers:
            if f.headers.get(name, "").strip().lower() != want:
                return False
        if (self.exceptions_full or self.exceptions_bare) and (
            self.exceptions_bare.isdisjoint(f._bare_types) and self.exceptions_full.isdisjoint(f._package_types)
        ):
            return False
        if self.errnos and not any(e in self.errnos for e in f.errnos):
            return False
        if self.exit_codes and f.exit_code not in self.exit_codes:
            return False
        if self.signals and f.signal not in self.signals:
            return False
        return not (self.pattern is not None and not self.pattern.search(f.text))


class Classifier:
    """Applies the ordered rules; build one per loaded configuration and reuse it."""

    _MEMO_SIZE = 256

    def __init__(self, settings: ClassifySettings) -> None:
        self.settings = settings
        self._rules = tuple(_CompiledRule(r) for r in settings.ordered_rules)
        # A retry loop meets the same failure again and again; the same evidence always gets the same
        # rule, so the match is remembered (Retry-After is not: a date's distance depends on now).
        self._memo: dict[tuple[object, ...], tuple[str, str, str]] = {}

    def classify(self, failure: Failure, *, now: float | None = None) -> Classification:
        retry_after = failure.retry_after(now=time.time() if now is None else now)
        if failure.timed_out:
            # Our own per-attempt timeout fired: that is a timeout whatever the output says.
            return Classification("timeout", "attempt-timeout", "timeout", retry_after)
        key = failure.evidence_key()
        found = self._memo.get(key)
        if found is None:
            found = next(
                ((r.error_class, r.name, r.reason) for r in self._rules if r.matches(failure)),
                ("unknown", UNCLASSIFIED, "unknown"),
            )
            if len(self._memo) >= self._MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = found
        return Classification(found[0], found[1], found[2], retry_after)

    def classify_exception(self, exc: BaseException, *, now: float | None = None) -> Classification:
        return self.classify(Failure.from_exception(exc), now=now)


_classifiers: dict[int, Classifier] = {}


def classifier_for(settings: ClassifySettings) -> Classifier:
    """One compiled Classifier per settings object (settings are immutable, so identity is enough)."""
    found = _classifiers.get(id(settings))
    if found is None or found.settings is not settings:
        found = _classifiers[id(settings)] = Classifier(settings)
    return found


# --- evidence helpers ----------------------------------------------------------------------------------------


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < _CHAIN_LIMIT:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


_TYPE_NAMES: dict[type, tuple[str, ...]] = {}


def _type_names(tp: type[BaseException]) -> tuple[str, ...]:
    """Every class in the MRO as `module.Name` (private module parts dropped; builtins bare). Cached."""
    found = _TYPE_NAMES.get(tp)
    if found is not None:
        return found
    names: list[str] = []
    for klass in tp.__mro__:
        if klass is object:
            continue
        module = ".".join(p for p in (klass.__module__ or "").split(".") if not p.startswith("_"))
        qual = klass.__qualname__
        names.append(qual if module in ("", "builtins") else f"{module}.{qual}")
    if len(_TYPE_NAMES) > 1024:  # exception classes made on the fly must not grow this forever
        _TYPE_NAMES.clear()
    found = _TYPE_NAMES[tp] = tuple(names)
    return found


def _only_member(exc: BaseException) -> BaseException:
    """The one exception at the bottom of (nested) exception groups of one member each; else `exc` itself."""
    found = exc
    for _ in range(_CHAIN_LIMIT):
        if not isinstance(found, _GROUP) or len(found.exceptions) != 1:
            break
        found = found.exceptions[0]
    return exc if isinstance(found, _GROUP) else found


def safe_str(exc: BaseException) -> str:
    """str(exc), never raising: a broken __str__ (or __repr__) must not hide the failure it describes."""
    try:
        return str(exc)
    except Exception:
        try:
            return repr(exc)
        except Exception:
            return "(str() and repr() failed)"


def _http_from(exc: BaseException) -> tuple[int | None, Mapping[str, str]]:
    """Status and lower-cased headers from openai/httpx/requests-style errors, if any."""
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or isinstance(status, bool):
        status = getattr(response, "status_code", None)
    raw_headers = getattr(response, "headers", None)
    if not isinstance(status, int) or isinstance(status, bool):
        # The standard library's urllib.error.HTTPError (and aiohttp's ClientResponseError) carry the status
        # and the headers themselves: without them a 403 read as a permission problem, a 409 as unknown, and
        # the server's Retry-After went unheard.
        try:
            status, raw_headers = getattr(exc, "status", None), getattr(exc, "headers", None)
        except Exception:  # a property that fails is just absent evidence
            return None, _EMPTY
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            return None, _EMPTY
    headers: dict[str, str] = {}
    if raw_headers is not None:
        try:
            headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        except Exception:  # a foreign headers object we cannot read is just absent evidence
            headers = {}
    return status, MappingProxyType(headers)


def _codes_from(exc: BaseException) -> list[str]:
    codes = []
    for attr in ("code", "type"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and value:
            codes.append(value)
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        codes.extend(_codes_in_mapping(body))
    return codes


def _body_text(chain: list[BaseException]) -> str:
    for item in chain:
        response = getattr(item, "response", None)
        text = getattr(response, "text", None)
        if isinstance(text, str):
            return text[:_TEXT_LIMIT]
    return ""


def _body_message(text: str) -> str:
    """The error text of a body: its `error.message`, `message`, `error` or `detail` (FastAPI) string, else
    the raw text, so words kept under any other key (`{"detail": [...]}`, `{"status": ..., "why": ...}`) are
    still read."""
    text = text.strip()
    if not text:
        return ""
    try:
        body = loads(text) if text[0] in "{[" else None
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        error = body.get("error")
        said = error.get("message") if isinstance(error, Mapping) else error
        for found in (said, body.get("message"), body.get("detail")):
            if isinstance(found, str) and found:
                return found[:_TEXT_LIMIT]
    return text[:_TEXT_LIMIT]


def _codes_in_mapping(body: Mapping[Any, Any]) -> list[str]:
    codes = []
    error = body.get("error", body)
    if isinstance(error, Mapping):
        for key in ("code", "type"):
            value = error.get(key)
            if isinstance(value, str) and value:
                codes.append(value)
    elif isinstance(error, str) and error:
        codes.append(error)
    return codes


def _codes_from_body(text: str) -> list[str]:
    if not text or "{" not in text:
        return []
    try:
        body = loads(text)
    except ValueError:
        return []
    return _codes_in_mapping(body) if isinstance(body, Mapping) else []


def _signal_name(num: int) -> str:
    try:
        return signal_mod.Signals(num).name
    except ValueError:
        return f"SIG{num}"


def _shell_signal(num: int) -> str | None:
    """The name of signal `num` as a shell reports it in an exit code, None if no such signal."""
    try:
        return signal_mod.Signals(num).name
    except ValueError:
        return None


_FRAME = re.compile(r'^[ \t]+File "[^"\n]*", line \d+')


def _without_frames(text: str) -> str:
    """`text` less the frames of Python tracebacks (each `File "...", line N` line and the indented source
    and `^^^` lines under it); the Traceback line and the exception line stay."""
    if 'File "' not in text:
        return text
    out: list[str] = []
    in_frame = False
    for line in text.splitlines(keepends=True):
        if _FRAME.match(line):
            in_frame = True
        elif not (in_frame and line[:1] in (" ", "\t")):
            in_frame = False
            out.append(line)
    return "".join(out)


def _tail(text: str, limit: int) -> str:
    return text[-limit:] if len(text) > limit else text


_TRACEBACK_HEAD = "Traceback (most recent call last):"
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s.*)?$")


def traceback_exception_types(text: str) -> tuple[str, ...]:
    """Exception type names ending the Python tracebacks in a command's output, the last one first."""
    if _TRACEBACK_HEAD not in text:
        return ()
    found: list[str] = []
    in_trace = False
    for line in text.splitlines():
        if line.startswith(_TRACEBACK_HEAD):
            in_trace = True
            continue
        if in_trace and line and not line[0].isspace():
            match = _EXC_LINE.match(line)
            if match and not line.startswith(("During handling", "The above exception")):
                found.append(match.group(1))
            in_trace = False
    return tuple(reversed(dict.fromkeys(found)))


def _with_builtin_bases(names: tuple[str, ...]) -> tuple[str, ...]:
    """Add the MRO of builtin exception names (ConnectionRefusedError -> ConnectionError, OSError ...).

    Only builtins are resolved: importing a module named in a command's output would run its code.
    """
    out: list[str] = []
    for name in names:
        out.append(name)
        found = getattr(builtins, name, None) if "." not in name else None
        if isinstance(found, type) and issubclass(found, BaseException):
            out.extend(_type_names(found))
    return tuple(dict.fromkeys(out))


_RETRY_AFTER_TEXT = re.compile(r"(?im)^\s*(retry-after(?:-ms)?)\s*:\s*(\S+)\s*$")


def _headers_from_text(text: str) -> Mapping[str, str]:
    """A command that prints HTTP headers (curl -i) can pass on a Retry-After."""
    found = {m.group(1).lower(): m.group(2) for m in _RETRY_AFTER_TEXT.finditer(text)}
    return MappingProxyType(found) if found else _EMPTY


def _last_meaningful_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        stripped = line.strip()
        if stripped:
            return stripped[:300]
    return ""


def classify_error(error: BaseException | Failure, *, settings: ClassifySettings | None = None) -> Classification:
    """Classify an exception or a Failure with the loaded settings (or the `settings` given)."""
    if settings is None:
        settings = get_config().classify
    failure = error if isinstance(error, Failure) else Failure.from_exception(error)
    return classifier_for(settings).classify(failure)
