"""One model call through the fallback chain: config.yaml's `models.chain`, else the user's OpenClaw models
(models/openclaw_chain.py), else skill.yaml's.

Endpoints are tried in order, each behind its own circuit breaker (shared by every process). On one
endpoint the failure's class policy decides between retrying there and moving on; it moves on at once
when retrying cannot help: a refused key, an unreachable, silent or stalled endpoint, an exhausted
quota, a GPU out of memory, a Retry-After beyond the cap, a wait longer than
`max_wait_before_fallback_s` while another endpoint is left, or an endpoint failing often enough to be
ejected (outlier ejection, core/breaker.py). A Retry-After within the cap is waited exactly. With no
endpoint left, a GPU short of memory is waited for (nvidia-smi, re-read). A request too long for a
model goes only to an entry with a larger `context_tokens`; a content-policy refusal ends the call with
the provider's reason. Every answer is checked (empty, cut off, not the JSON object asked for, wrong
shape) and a bad one is a `format` failure: retried once, simplified, on the same endpoint, then the
chain moves on. Nothing that failed is ever returned as an answer. All of it runs within one deadline.

The implementation is async (per-chunk stream timeouts need it); `complete()` runs it for sync callers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib
import logging
import os
import random
import re
import signal
import ssl
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import openai

from .. import _testing
from ..clock import SYSTEM_CLOCK, Clock
from ..core import openclaw_config
from ..core.backoff import exponential
from ..core.breaker import BreakerOpen, Breakers, Ejected, Permit
from ..core.classify import Classification, Failure, classifier_for
from ..core.config import Config, ModelEndpoint, get_config, model_keys
from ..core.ledger import Ledger
from ..core.retrying import Budget, Decision
from ..errors import ConfigError, NotAttempted, SelfHealError
from ..state.redact import MASK, MIN_SECRET_CHARS
from ..state.root import StateRoot, validate_id
from . import gpu, openclaw_chain
from .cache import AnswerCache, CachedAnswer, cache_key
from .output import OutputProblem, check_answer
from .prompts import render

log = logging.getLogger(__name__)

Message = dict[str, str]
# What a caller may give as `messages`: the openai client's own message dicts (ChatCompletionMessageParam) type-check
# as these; build_messages takes the roles and text content the chain sends and refuses the rest by name.
MessageIn = Mapping[str, Any]
T = TypeVar("T")

_NO_KEY = "not-needed"  # the openai client insists on a key; local servers ignore it


# -- results and errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelAttempt:
    """One request to one endpoint (or one endpoint skipped), as reported in results and errors."""

    endpoint: str
    model: str
    number: int  # attempts on this endpoint so far, this one included (0 when skipped)
    outcome: str  # answered | failed | rejected (the answer failed its check) | skipped
    error_class: str | None = None
    rule: str | None = None
    reason: str = ""
    status: int | None = None  # HTTP status, when there was one
    code: str | None = None  # the provider's error code (or type), when it gave one
    duration_s: float = 0.0
    delay_s: float | None = None  # the wait before the next attempt on this endpoint
    tokens: int | None = None
    simplified: bool = False
    discarded_chars: int = 0  # streamed text the caller saw, then had to drop

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_s"] = round(self.duration_s, 3)
        if self.delay_s is not None:
            data["delay_s"] = round(self.delay_s, 3)
        return data


@dataclass
class Completion:
    """A checked answer: its text (and parsed JSON), who gave it, and every attempt it took."""

    content: str
    data: dict[str, Any] | None
    endpoint: str
    model: str
    fallback_used: bool
    finish_reason: str | None
    usage: dict[str, int] | None
    duration_s: float
    attempts: list[ModelAttempt] = field(default_factory=list)
    # Seconds from the call's start to the first text of this answer (streamed), or to the whole answer.
    ttft_s: float | None = None
    by_rules: bool = False  # answered by models.rules_fallback (a command), not by a model
    cached: bool = False  # from models.cache: no request was sent (usage is the original answer's)

    @property
    def discarded_chars(self) -> int:
        return sum(a.discarded_chars for a in self.attempts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "content": self.content,
            "data": self.data,
            "endpoint": self.endpoint,
            "model": self.model,
            "fallback_used": self.fallback_used,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "duration_s": round(self.duration_s, 3),
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 3),
            "discarded_chars": self.discarded_chars,
            "attempts": [a.to_dict() for a in self.attempts],
            "by_rules": self.by_rules,
            "cached": self.cached,
        }


class ModelCallFailed(SelfHealError):
    """No endpoint produced a usable answer; `attempts` says what each one did. `status` and `code` are the
    HTTP status and the provider's error code of the last request that failed (None when it had none)."""

    def __init__(self, message: str, attempts: Sequence[ModelAttempt], *, error_class: str | None = None) -> None:
        self.attempts = list(attempts)
        self.error_class = error_class
        last = next((a for a in reversed(self.attempts) if a.outcome != "skipped"), None)
        self.status: int | None = last.status if last else None
        self.code: str | None = last.code if last else None
        super().__init__(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": False,
            "error": type(self).__name__,
            "message": str(self),
            "error_class": self.error_class,
            "status": self.status,
            "code": self.code,
            "attempts": [a.to_dict() for a in self.attempts],
        }


class ContentRefused(ModelCallFailed):
    """The provider refused the content (policy); not retried anywhere. `provider_reason` is its words."""

    def __init__(self, provider_reason: str, attempts: Sequence[ModelAttempt]) -> None:
        self.provider_reason = provider_reason
        super().__init__(f"the provider refused the request: {provider_reason}", attempts, error_class="permanent")


class NoEndpointAvailable(NotAttempted):
    """Every endpoint was skipped (breakers open, GPU memory short): nothing was sent; try later."""

    status: int | None = None  # nothing was sent: no HTTP status, no provider code
    code: str | None = None

    def __init__(self, attempts: Sequence[ModelAttempt]) -> None:
        self.attempts = list(attempts)
        reasons = "; ".join(f"{a.endpoint}: {a.reason}" for a in attempts)
        super().__init__(f"no model endpoint available ({reasons})")

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": False,
            "error": type(self).__name__,
            "message": str(self),
            "attempts": [a.to_dict() for a in self.attempts],
        }


class StreamStalled(TimeoutError):
    """A stream sent nothing for too long (before its first text, or between chunks)."""

    def __init__(self, seconds: float, *, received_chars: int) -> None:
        self.received_chars = received_chars
        what = "no text" if received_chars == 0 else f"no new text after {received_chars} characters"
        super().__init__(f"stream stalled: {what} for {seconds:g}s")


class StreamCut(ConnectionError):
    """A stream ended before the model said it was done."""

    def __init__(self, received_chars: int) -> None:
        self.received_chars = received_chars
        super().__init__(f"stream ended before the answer was complete ({received_chars} characters received)")


# -- the request ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    messages: tuple[Message, ...]
    json_output: bool
    schema: dict[str, Any] | None
    max_tokens: int | None
    temperature: float | None
    stream: bool

    def simplified(self, problem: str, max_prompt_chars: int, split_parts: int = 0) -> _Request:
        """The first source document's simplification: a stricter instruction, temperature 0, and a long
        prompt split into numbered sub-questions (up to `split_parts`), or else trimmed."""
        hint = _schema_hint(self.schema)
        if self.json_output:
            instruction = render("simplify_json.txt", problem=problem, schema_hint=hint)
        else:
            instruction = render("simplify_text.txt", problem=problem, max_words=200)
        messages = []
        for message in self.messages:
            content = message["content"]
            if message["role"] == "user" and len(content) > max_prompt_chars:
                content = _split_prompt(content, max_prompt_chars, split_parts) or content[:max_prompt_chars]
            messages.append({**message, "content": content})
        messages.append({"role": "system", "content": instruction})
        return _Request(tuple(messages), self.json_output, self.schema, self.max_tokens, 0.0, self.stream)


def _split_prompt(text: str, max_chars: int, max_parts: int) -> str | None:
    """`text` as numbered parts (its paragraphs, else its questions), each cut so the whole fits in
    `max_chars`; None when it does not split into 2 or more parts (or splitting is off)."""
    if max_parts < 2:
        return None
    parts = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(parts) < 2:
        parts = [p.strip() for p in re.split(r"(?<=[?？])\s*", text) if p.strip()]
    if len(parts) < 2:
        return None
    if len(parts) > max_parts:  # the rest stays with the last part, so nothing is dropped before the cut
        parts = [*parts[: max_parts - 1], "\n".join(parts[max_parts - 1 :])]
    frame = render("simplify_split.txt", count=len(parts), parts="")
    room = max(max_chars - len(frame) - 4 * len(parts), len(parts) * 20) // len(parts)
    numbered = "\n".join(f"{i}. {p if len(p) <= room else p[: room - 1] + '…'}" for i, p in enumerate(parts, 1))
    return render("simplify_split.txt", count=len(parts), parts=numbered)


def _schema_hint(schema: dict[str, Any] | None) -> str:
    if not schema or not isinstance(schema.get("properties"), dict):
        return ""
    keys = [f"{k} ({v.get('type', 'any')})" for k, v in schema["properties"].items() if isinstance(v, dict)]
    return " with the keys: " + ", ".join(keys) if keys else ""


def build_messages(
    prompt: str | None,
    messages: Sequence[MessageIn] | None,
    system: str | None,
    json_output: bool,
    schema: dict[str, Any] | None,
) -> tuple[Message, ...]:
    if (prompt is None) == (messages is None):
        raise ValueError("give either prompt or messages")
    if prompt is not None and not prompt.strip():  # as llm_call.py refuses one: each endpoint asked for nothing
        raise ValueError("the prompt is empty or blank: nothing was sent")
    if messages is not None and not messages:
        raise ValueError("messages is empty: nothing was sent")
    out: list[Message] = []
    systems = [system] if system else []
    if json_output:
        systems.append(render("json_answer.txt", schema_hint=_schema_hint(schema)))
    out += [{"role": "system", "content": text} for text in systems]
    if prompt is not None:
        out.append({"role": "user", "content": prompt})
    else:
        out += [_message(i, m) for i, m in enumerate(messages or ())]
    return tuple(out)


def _message(index: int, given: MessageIn) -> Message:
    """One of the caller's messages as the chain sends it, or ValueError naming it: the chain asks text models,
    checks and simplifies text prompts, and reads text answers, so its content must be text (parts such as
    images would fail deep inside, or be sent as something else than what was meant)."""
    role, content = given.get("role"), given.get("content")
    if not isinstance(role, str) or not role:
        raise ValueError(f"messages[{index}]: no role (system, user or assistant)")
    if not isinstance(content, str):
        raise ValueError(
            f"messages[{index}] ({role}): content must be text, got {type(content).__name__}: the chain sends text only"
        )
    return {str(key): value for key, value in given.items()}


# -- the chain ------------------------------------------------------------------------------------------------


@dataclass
class _Answer:
    content: str
    finish_reason: str | None
    usage: dict[str, int] | None
    model: str


@dataclass
class _MoveOn:
    why: str
    context_tokens: int | None = None  # set when the request was too long for this endpoint


def _unreachable(failure: Failure) -> bool:
    """Nothing listening, no route, no name: retrying the same address cannot help."""
    if {"ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN"} & set(failure.errnos):
        return True
    return any(t.rpartition(".")[2] in ("ConnectError", "ConnectTimeout", "gaierror") for t in failure.exception_types)


def _silent(error: Exception | None) -> bool:
    """The endpoint took the request and said nothing at all: waiting for it again only doubles the wait."""
    if isinstance(error, StreamStalled):
        return error.received_chars == 0
    return isinstance(error, openai.APITimeoutError)


def _is_deadline(error: Exception) -> bool:
    """asyncio's own timeout (our deadline firing), not a TimeoutError subclass from the request."""
    return type(error) in (TimeoutError, asyncio.TimeoutError)


class _KeyMask:
    """Masks the chain's API keys (core.config.model_keys: the values of its `api_key_env` variables and of
    the variables its headers read, as the redactor masks them) in what a model says: a server or a model
    echoing the key it was sent must not put it in an answer. A streamed key can arrive split over chunks,
    so text that could be the start of a key is held back until the next piece tells."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(sorted({k for k in keys if len(k) >= MIN_SECRET_CHARS}, key=len, reverse=True))
        self._pattern = re.compile("|".join(re.escape(k) for k in self.keys)) if self.keys else None

    @classmethod
    def of(cls, config: Config) -> _KeyMask:
        return cls(model_keys(config))  # the keys, and the variables the endpoints' headers read

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern is not None else value

    def split(self, held: str, piece: str) -> tuple[str, str]:
        """(the text that can go out now, the text held back) of what was held plus a new piece."""
        text = self.text(held + piece)
        hold = 0
        for key in self.keys:
            for n in range(min(len(key) - 1, len(text)), hold, -1):
                if text.endswith(key[:n]):
                    hold = n
                    break
        return text[: len(text) - hold], text[len(text) - hold :]


class _Progress:
    """What one attempt has given the caller so far: characters of text, and when the first came."""

    def __init__(self, on_text: Callable[[str], None] | None, clock: Clock, mask: _KeyMask | None = None) -> None:
        self.on_text = on_text
        self.clock = clock
        self.mask = mask or _KeyMask(())
        self.held = ""  # the end of the text so far, if it could be the start of a key
        self.delivered = 0
        self.first_at: float | None = None

    def text(self, piece: str) -> None:
        if self.first_at is None:
            self.first_at = self.clock.monotonic()
        out, self.held = self.mask.split(self.held, piece)
        self._give(out)

    def flush(self) -> None:
        """The stream is complete: what was held back was no key after all."""
        held, self.held = self.held, ""
        self._give(held)

    def _give(self, text: str) -> None:
        if not text:
            return
        self.delivered += len(text)
        if self.on_text is not None:
            self.on_text(text)


class _ChainCall:
    def __init__(
        self,
        request: _Request,
        *,
        config: Config,
        state: StateRoot,
        clock: Clock,
        rng: random.Random | None,
        task: str | None,
        deadline_s: float,
        on_text: Callable[[str], None] | None,
        on_restart: Callable[[str], None] | None,
        record: bool,
        on_discard: Callable[[int, str], None] | None = None,
        offload: bool,
        shared_clients: dict[tuple[str, str], openai.AsyncOpenAI] | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        self.request = request
        self.cache = cache
        self.offload = offload
        self.config = config
        self.models = config.models
        self.state = state
        self.clock = clock
        self.rng = rng
        self.task = task
        self.deadline_s = deadline_s
        self.on_text = on_text
        self.on_restart = on_restart
        self.on_discard = on_discard
        self.record = record
        self.ledger = Ledger(state, config, clock=clock)
        # What a server says can quote the key it was sent: reasons and messages are masked as the ledger
        # masks them, and answers have the chain's keys masked.
        self.redact = self.ledger.redactor.text
        self.mask = _KeyMask.of(config)
        self.shown = 0  # characters given to on_text since the caller was last told to drop text
        self.breakers = Breakers(state, config.breakers, clock=clock, ledger=self.ledger)
        self.classifier = classifier_for(config.classify)
        self.attempts: list[ModelAttempt] = []
        self.tracked = record and task is not None
        self.fell_back = False  # a [FALLBACK] is in the ledger: the call is recorded, and owes it its end
        self.ended = False  # the call's one [SUCCESS] or [FAILED] is in the ledger
        self.asking: ModelEndpoint | None = None  # the endpoint being asked now
        self.started = clock.monotonic()
        self.clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}
        self.shared_clients = shared_clients

    # -- helpers ---------------------------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline_s - (self.clock.monotonic() - self.started)

    def share(self, after: int) -> float:
        """How long an attempt may wait for an answer (a stream: for its first text) when `after` more
        endpoints are left: its fair share of the time left, so a silent endpoint cannot spend the whole
        deadline while others wait unasked. The last endpoint gets all of it."""
        left = max(self.remaining(), 0.001)
        return left / (after + 1)

    def show(self, piece: str) -> None:
        self.shown += len(piece)
        if self.on_text is not None:
            self.on_text(piece)

    def void(self, reason: str) -> None:
        """The text on_text got since the last restart is not the answer: tell the caller to drop it."""
        chars, self.shown = self.shown, 0
        if not chars:
            return
        if self.on_restart is not None:
            self.on_restart(reason)
        if self.on_discard is not None:
            self.on_discard(chars, reason)

    def read_timeout(self, entry: ModelEndpoint) -> float:
        """30 s + 10 s per 1k tokens asked for (the first source document's rule), within the deadline."""
        tokens = self.request.max_tokens or self.models.expected_tokens
        base = entry.read_timeout_base_s if entry.read_timeout_base_s is not None else self.models.read_timeout_base_s
        return base + self.models.timeout_per_1k_tokens_s * tokens / 1000

    def timeout(self, entry: ModelEndpoint) -> openai.Timeout:
        return openai.Timeout(self.read_timeout(entry), connect=self.models.connect_timeout_s)

    def client(self, entry: ModelEndpoint) -> openai.AsyncOpenAI:
        """The endpoint's client: from the private loop's cache (connections kept alive between sync
        calls), or made for this call alone (a caller's loop: closed when the call ends)."""
        key = os.environ.get(entry.api_key_env, "") if entry.api_key_env else _NO_KEY
        # The endpoint's own headers, their ${VAR}s read now (a key variable set since is seen, as the key is).
        headers = {name: openclaw_config.expand(value, os.environ)[0] for name, value in entry.headers.items()}
        cache = self.shared_clients if self.shared_clients is not None else self.clients
        ident = (entry.base_url, key + "".join(f"\n{n}: {v}" for n, v in sorted(headers.items())))
        found = cache.get(ident)
        if found is None:
            found = openai.AsyncOpenAI(
                base_url=entry.base_url,
                api_key=key,
                max_retries=0,  # only our policy retries
                default_headers=headers or None,
                http_client=openai.DefaultAsyncHttpxClient(
                    verify=_ssl_context(), event_hooks={"response": [_cap_body]}
                ),
            )
            cache[ident] = found
        return found

    async def io(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking state update (breaker file, ledger line; under a millisecond, locked). In a
        caller's event loop it goes to a thread; on complete()'s private loop, where nothing else waits,
        it runs inline: a thread hop costs more than the update when other threads hold the GIL."""
        if self.offload:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def close(self) -> None:
        for client in self.clients.values():  # this call's own clients; shared ones stay open
            await client.close()

    @property
    def end_owed(self) -> bool:
        """A [FALLBACK] is in the ledger and no end ([SUCCESS] or [FAILED]) yet: the call owes the ledger its end."""
        return self.fell_back and not self.ended

    async def note(self, attempt: ModelAttempt, event: str | None, **extra: Any) -> None:
        """Keep the attempt; record it in the ledger when this call is tracked (a task, or any failure)."""
        self.attempts.append(attempt)
        if event is None or not self.record:
            return
        if event != "success":
            self.tracked = True
        if not self.tracked:
            return
        self.fell_back = self.fell_back or event == "fallback"
        self.ended = self.ended or event in ("success", "failed")
        fields = {
            "task": self.task,
            "target": attempt.endpoint,
            "model": attempt.model,
            "attempt": attempt.number,
            "error_class": attempt.error_class,
            "rule": attempt.rule,
            "reason": attempt.reason or None,
            "duration_s": round(attempt.duration_s, 3),
            "tokens": attempt.tokens,
            "delay_s": round(attempt.delay_s, 3) if attempt.delay_s is not None else None,
            **extra,
        }
        await self.io(self.ledger.record, event, **fields)

    # -- the call --------------------------------------------------------------------------------------------

    async def run(self) -> Completion:
        chain = self.models.chain
        too_long_for: int | None = None  # the context window a request already proved too small for
        too_long = False
        passed_over: list[ModelEndpoint] = []  # ejected endpoints skipped while others were left
        try:
            for index, entry in enumerate(chain):
                if too_long and not (entry.context_tokens and entry.context_tokens > (too_long_for or 0)):
                    await self.note(self._skipped(entry, "its context window is not larger"), None)
                    continue
                if self.remaining() <= 0:
                    break
                final = index == len(chain) - 1
                hit = await self._cached(entry, fallback=index > 0)
                if hit is not None:
                    return hit
                after = len(chain) - index - 1
                # The last entry's failure ends the call unless an endpoint passed over is asked after it.
                ends = final and (not passed_over or too_long)
                outcome = await self._endpoint(entry, last=final, ends=ends, avoid_ejected=not final, after=after)
                if isinstance(outcome, Completion):
                    outcome.fallback_used = entry.name != chain[0].name
                    return outcome
                if outcome.why == "ejected":
                    passed_over.append(entry)
                if outcome.why == "context_length_exceeded":
                    too_long = True
                    too_long_for = max(too_long_for or 0, outcome.context_tokens or 0)
            # Everything else failed: an endpoint passed over for failing often is still better than nothing.
            for index, entry in enumerate(passed_over):
                if self.remaining() <= 0 or too_long:
                    break
                after = len(passed_over) - index - 1
                outcome = await self._endpoint(
                    entry, last=after == 0, ends=after == 0, avoid_ejected=False, after=after
                )
                if isinstance(outcome, Completion):
                    outcome.fallback_used = entry.name != chain[0].name
                    return outcome
        finally:
            await self.close()
        tried = [a for a in self.attempts if a.outcome != "skipped"]
        if not tried:
            raise NoEndpointAvailable(self.attempts)
        last = tried[-1]
        if self.end_owed and not self.models.rules_fallback:
            await self._end_unasked(last)
        if self.remaining() <= 0:
            message = f"deadline of {self.deadline_s:g}s passed; last: {last.endpoint}: {last.reason}"
        elif too_long:
            message = "the request is too long for every model in the chain"
        else:
            message = f"every endpoint failed; last: {last.endpoint} ({last.error_class}): {last.reason}"
        raise ModelCallFailed(message, self.attempts, error_class=last.error_class)

    def _key(self, entry: ModelEndpoint) -> str:
        request = self.request  # the caller's request: a simplified retry's answer stands for it
        return cache_key(
            entry,
            request.messages,
            json_output=request.json_output,
            schema=request.schema,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
        )

    async def _cached(self, entry: ModelEndpoint, *, fallback: bool) -> Completion | None:
        """The entry's cached answer to this request (models.cache), recorded as `cache_hit`; None: ask it."""
        if self.cache is None:
            return None
        hit = await self.io(self.cache.get, self._key(entry))
        if hit is None:
            return None
        age = max(self.clock.time() - hit.created, 0.0)
        if self.record:
            await self.io(
                self.ledger.record,
                "cache_hit",
                task=self.task,
                target=entry.name,
                model=hit.model,
                status="cached",
                reason=f"answer stored {age:.0f}s ago (models.cache.ttl_s {self.cache.settings.ttl_s:g})",
            )
        if self.tracked:
            # The hit answers a call that is recorded (for a task, or after a [FALLBACK]): the call's [SUCCESS]
            # ends it (a cache_hit ends no run), with the whole call's time, as a model's answer would.
            self.ended = True
            await self.io(
                self.ledger.record,
                "success",
                task=self.task,
                target=entry.name,
                model=hit.model,
                status="cached",
                reason="answered from models.cache",
                duration_s=round(self.clock.monotonic() - self.started, 3),
            )
        return Completion(
            content=hit.content,
            data=hit.data,
            endpoint=entry.name,
            model=hit.model,
            fallback_used=fallback,
            finish_reason=hit.finish_reason,
            usage=hit.usage,
            duration_s=self.clock.monotonic() - self.started,
            attempts=self.attempts,
            cached=True,
        )

    async def _store(self, entry: ModelEndpoint, answer: _Answer, data: dict[str, Any] | None) -> None:
        """Keep a checked answer (never a stream's); a cache that cannot be written is only logged."""
        if self.cache is None or self.request.stream:
            return
        stored = CachedAnswer(
            answer.content, data, answer.model or entry.model, answer.finish_reason, answer.usage, self.clock.time()
        )
        try:
            await self.io(self.cache.put, self._key(entry), stored)
        except (OSError, SelfHealError) as exc:
            log.warning("models.cache: could not store the answer: %s", exc)

    async def _end_unasked(self, last: ModelAttempt) -> None:
        """The call failed after a [FALLBACK] whose endpoints were then not asked (each skipped: its breaker
        open, ejected, short of GPU memory, the deadline passed): its one [FAILED], naming no endpoint (none was
        asked for it), with the last attempt's class, so that analyze_logs counts the failed run."""
        since: list[str] = []  # the endpoints skipped after `last`, the last attempt made
        for attempt in reversed(self.attempts):
            if attempt is last:
                break
            since.insert(0, f"{attempt.endpoint}: {attempt.reason}")
        skipped = "; ".join(since)
        why = f"the endpoints left were not asked ({skipped})" if skipped else "no endpoint was left to ask"
        self.ended = True
        await self.io(
            self.ledger.record,
            "failed",
            task=self.task,
            error_class=last.error_class,
            status="not_asked",
            reason=self.redact(why),
            duration_s=round(self.clock.monotonic() - self.started, 3),
        )

    def abandoned(self) -> None:
        """The call was cancelled midway (the caller's timeout, Ctrl-C, llm_call.py's SIGTERM): a recorded call's
        one end, [FAILED] with status interrupted, naming the endpoint it was asking. Written at once, not
        offloaded: the loop is unwinding, and what is awaited now may be cancelled too."""
        if not self.tracked or self.ended:
            return
        self.ended = True
        entry = self.asking
        try:
            self.ledger.record(
                "failed",
                task=self.task,
                target=entry.name if entry else None,
                model=entry.model if entry else None,
                status="interrupted",
                reason="interrupted: the call was abandoned, no answer",
                duration_s=round(self.clock.monotonic() - self.started, 3),
            )
        except (OSError, SelfHealError) as exc:  # a full disk: the call's end is lost, not the interruption
            log.warning("could not record the interrupted call: %s", exc)

    def _skipped(self, entry: ModelEndpoint, reason: str, error_class: str | None = None) -> ModelAttempt:
        return ModelAttempt(entry.name, entry.model, 0, "skipped", error_class=error_class, reason=reason)

    async def _endpoint(
        self, entry: ModelEndpoint, *, last: bool, ends: bool, avoid_ejected: bool, after: int = 0
    ) -> Completion | _MoveOn:
        """Ask one endpoint, retrying there as the failure's policy says. `last`: no endpoint of the chain
        follows (it gets the rest of the deadline, and waits where another would move on); `ends`: its failure
        ends the call ([FAILED]; else a [FALLBACK] to what is asked next: an endpoint passed over, the rules)."""
        self.asking = entry
        budget = Budget(
            self.config.policies,
            self.config.retry,
            started=self.started,
            deadline_s=self.deadline_s,
            rng=self.rng,
        )
        request = self.request
        number = 0
        memory_waited = False
        while True:
            try:
                permit = await self.io(self.breakers.acquire, entry.name, avoid_ejected=avoid_ejected)
            except Ejected as exc:
                await self.note(self._skipped(entry, str(exc)), None)
                return _MoveOn("ejected")
            except BreakerOpen as exc:
                await self.note(self._skipped(entry, str(exc)), None)
                return _MoveOn("breaker_open")
            lease = _Lease(self, permit)
            try:
                if _on_gpu(entry):
                    floor = self.models.gpu_free_mb_min
                    free = await gpu.free_mb(entry.gpu, timeout_s=max(self.remaining(), 0.001))
                    if free is not None and free < floor:
                        await lease.release(ok=False, error_class="resource")
                        waited = 0.0
                        if last and not memory_waited:
                            # No endpoint left to move to: wait for memory, as long as the resource
                            # policy's first wait, within the deadline.
                            memory_waited = True
                            limit = min(exponential(self.config.policies.resource, 1), self.remaining())
                            free, waited = await self._wait_for_memory(entry, limit)
                            if free is None or free >= floor:
                                continue
                        reason = f"GPU memory: {free} MiB free, below {floor} MiB"
                        if waited:
                            reason += f" (waited {waited:g}s for it)"
                        await self.note(self._skipped(entry, reason, "resource"), None)
                        return _MoveOn("resource")
                number += 1
                started = self.clock.monotonic()
                progress = _Progress(self.show, self.clock, self.mask)
                error: Exception | None = None
                left = max(self.remaining(), 0.001)
                share = None if last else self.share(after)
                # A stream's share bounds its wait for the first text (a stream under way is not cut).
                limit = left if request.stream or share is None else share
                try:
                    answer = await asyncio.wait_for(self._send(entry, request, progress, first_s=share), limit)
                    answer.content = self.mask.text(answer.content)
                    data = check_answer(
                        answer.content,
                        answer.finish_reason,
                        json_output=request.json_output,
                        schema=request.schema,
                        max_chars=self.models.max_answer_chars,
                    )
                except OutputProblem as problem:
                    classification = Classification("format", "answer-check", "format")
                    failure: Failure | None = None
                    outcome, reason, status, code = "rejected", self.redact(problem.detail), None, None
                except Exception as exc:
                    out_of_time = self.remaining() <= 0
                    if _is_deadline(exc) and (out_of_time or limit < left):
                        return await self._cut(
                            entry,
                            lease,
                            number=number,
                            started=started,
                            progress=progress,
                            out_of_time=out_of_time,
                            limit=limit,
                            left=left,
                        )
                    error = exc
                    failure = Failure.from_exception(exc)
                    classification = self.classifier.classify(failure, now=self.clock.time())
                    outcome, reason, status = "failed", self.redact(failure.summary()), failure.status
                    code = failure.error_codes[0] if failure.error_codes else None
                else:
                    progress.flush()
                    await lease.release(ok=True)
                    usage = answer.usage or {}
                    done = ModelAttempt(
                        entry.name,
                        entry.model,
                        number,
                        "answered",
                        reason="ok",
                        duration_s=self.clock.monotonic() - started,
                        tokens=usage.get("total_tokens"),
                        simplified=request is not self.request,
                    )
                    # The run's time, as retry_run.py records a run's: the whole call, its retries, waits and the
                    # endpoints before this one (the attempt's own time is the attempt's, in `attempts`).
                    await self.note(
                        done, "success", status="succeeded", duration_s=round(self.clock.monotonic() - self.started, 3)
                    )
                    await self._store(entry, answer, data)
                    return Completion(
                        content=answer.content,
                        data=data,
                        endpoint=entry.name,
                        model=answer.model or entry.model,
                        fallback_used=False,
                        finish_reason=answer.finish_reason,
                        usage=answer.usage,
                        duration_s=self.clock.monotonic() - self.started,
                        attempts=self.attempts,
                        ttft_s=None if progress.first_at is None else progress.first_at - self.started,
                    )

                # The attempt failed: decide (this endpoint again, or the next one), record the attempt, and
                # then tell the breaker, so a trip it causes is logged after the attempt that caused it.
                cls = classification.error_class
                self.void(f"{cls}: {reason}")
                attempt = ModelAttempt(
                    entry.name,
                    entry.model,
                    number,
                    outcome,
                    cls,
                    classification.rule,
                    reason,
                    status,
                    code,
                    duration_s=self.clock.monotonic() - started,
                    simplified=request is not self.request,
                    discarded_chars=progress.delivered,
                )
                settle = functools.partial(self._settle, lease, cls)
                if classification.reason == "content_policy":
                    await settle("failed", attempt, status="not_retryable")
                    said = self.redact(failure.message) if failure else ""
                    raise ContentRefused(said or reason, self.attempts)
                if classification.reason == "context_length_exceeded":
                    # Nothing is asked after the last endpoint refused the length (no endpoint passed over: none
                    # is known to be larger), so its refusal ends the call, unless the rules engine answers next.
                    ended = last and not self.models.rules_fallback
                    await settle("failed" if ended else "fallback", attempt, status="context_length_exceeded")
                    return _MoveOn("context_length_exceeded", entry.context_tokens)
                # A reply that is not a chat completion at all, or one far over any answer's size, is the
                # server failing, not the prompt: it counts against the endpoint (so one that does it often
                # is passed over), and it moves on.
                server_shape = outcome == "rejected" and reason.startswith(("wrong shape", "too large"))
                if cls == "format" and request is self.request and not (server_shape and not last):
                    # One more try here at once, simplified: a malformed answer is not the endpoint failing.
                    await settle(
                        "retry", _with_delay(attempt, 0.0), status="retrying", max_attempts=2, counts=server_shape
                    )
                    request = self.request.simplified(
                        reason, self.models.simplify_max_prompt_chars, self.models.simplify_split_parts
                    )
                    continue
                ejecting = not last and await self.io(self.breakers.would_eject, entry.name, cls)
                why, decision = self._next_step(
                    classification, failure, error, budget, number, last=last, ejecting=ejecting
                )
                if why is not None or decision is None:
                    # The last endpoint's failure ends the call, unless an endpoint passed over is asked after it,
                    # or models.rules_fallback is (then the call's end is the rules engine's: _ask_rules).
                    event = "failed" if ends and not self.models.rules_fallback else "fallback"
                    max_attempts = decision.max_attempts if decision else number
                    # Silent, stalled, unreachable or out of memory: cool it down at once, so the next calls
                    # skip it for a while (one probe brings it back).
                    eject = why if why in ("silent", "stalled", "unreachable") else None
                    if classification.reason == "out_of_memory" and not last:
                        eject = "out of memory"
                    await self.note(attempt, event, status=why, max_attempts=max_attempts)
                    await lease.release(ok=False, error_class=cls, eject=eject, counts=server_shape)
                    return _MoveOn(why or "failed")
                await settle(
                    "retry",
                    _with_delay(attempt, decision.delay_s),
                    status="retrying",
                    max_attempts=decision.max_attempts,
                )
                if classification.reason == "out_of_memory" and _on_gpu(entry):
                    # Retrying cannot free memory: wait until the endpoint's GPU has room again (at
                    # most the policy's wait), then try.
                    await self._wait_for_memory(entry, decision.delay_s, grown=True)
                else:
                    await self._sleep(decision.delay_s)
            finally:
                lease.abandon()  # cancelled, or an unexpected error: give the permit back, uncounted

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0 and not _testing.is_testing():
            await self.clock.asleep(seconds)

    async def _cut(
        self,
        entry: ModelEndpoint,
        lease: _Lease,
        *,
        number: int,
        started: float,
        progress: _Progress,
        out_of_time: bool,
        limit: float,
        left: float,
    ) -> _MoveOn:
        """An attempt cut by the call's deadline, or by its share of it (another endpoint is left). One that
        received nothing was silent for all the time it had: it is ejected (not counted: the caller chose
        the time), so the next calls do not spend their deadline on it too. One cut mid-stream was working:
        the breaker learns nothing from it."""
        silent = progress.delivered == 0
        if out_of_time:
            reason, why = f"the call's deadline of {self.deadline_s:g}s passed", "deadline"
        else:
            reason = f"no answer within {limit:.3g}s, its share of the call's deadline ({left:.3g}s were left)"
            why = "silent"
        attempt = ModelAttempt(
            entry.name,
            entry.model,
            number,
            "failed",
            "timeout",
            "deadline",
            reason,
            duration_s=self.clock.monotonic() - started,
            discarded_chars=progress.delivered,
        )
        # Out of time, nothing else is asked, but a rules fallback still ends the call ([FAILED] with no time left).
        ended = out_of_time and not self.models.rules_fallback
        await self.note(attempt, "failed" if ended else "fallback", status=why)
        await lease.release(ok=False, error_class=None, eject="silent" if silent else None)
        return _MoveOn(why)

    async def _wait_for_memory(
        self, entry: ModelEndpoint, limit_s: float, *, grown: bool = False
    ) -> tuple[int | None, float]:
        """Wait for the endpoint's GPU to have models.gpu_free_mb_min free: re-read it every models.gpu_poll_s,
        for at most `limit_s` (the policy's wait, within the deadline). nvidia-smi's own run time counts: the
        wait ends by the clock, and each run is bounded by the time left. grown: the server just ran out of
        memory with what was free, so more than that must be free too. When nvidia-smi cannot tell, the
        whole limit is waited. Returns the last free MiB (None: unknown) and how long it waited (s)."""
        floor, poll = self.models.gpu_free_mb_min, self.models.gpu_poll_s
        start = self.clock.monotonic()
        slept = 0.0  # the waits asked for: with waits switched off (tests) the clock does not move

        def elapsed() -> float:
            return max(self.clock.monotonic() - start, slept)

        free = await gpu.free_mb(entry.gpu, timeout_s=max(limit_s, 0.001))
        if free is None:
            rest = max(limit_s - elapsed(), 0.0)
            await self._sleep(rest)
            slept += rest
            return None, elapsed()
        if grown:
            floor = max(floor, free + 1)
        while elapsed() < limit_s:
            step = min(poll, limit_s - elapsed())
            await self._sleep(step)
            slept += step
            if elapsed() >= limit_s:
                break
            reading = await gpu.free_mb(entry.gpu, fresh=True, timeout_s=limit_s - elapsed())
            if reading is None and elapsed() >= limit_s:
                break  # cut by the time left: the last reading stands
            free = reading
            if free is None or free >= floor:
                break
        return free, elapsed()

    async def _settle(
        self, lease: _Lease, error_class: str, event: str, done: ModelAttempt, counts: bool = False, **fields: Any
    ) -> None:
        """Record a failed attempt, then report it to the breaker (so a trip it causes is logged after it)."""
        await self.note(done, event, **fields)
        await lease.release(ok=False, error_class=error_class, counts=counts)

    def _next_step(
        self,
        classification: Classification,
        failure: Failure | None,
        error: Exception | None,
        budget: Budget,
        number: int,
        *,
        last: bool,
        ejecting: bool = False,
    ) -> tuple[str | None, Decision | None]:
        """(None, decision): retry on this endpoint after decision.delay_s. (why, ...): move on, because why."""
        cls = classification.error_class
        # No retry here can help these, whatever the class's policy would allow.
        if cls in ("auth", "fatal", "permanent", "format"):
            return cls, None
        if failure is not None and _unreachable(failure):
            return "unreachable", None
        if _silent(error):
            return "silent", None
        if ejecting:
            # Failing often, though not enough to trip its breaker: another endpoint is the better bet.
            return "ejected", None
        if isinstance(error, StreamStalled) and not last:
            # It went quiet mid-answer: the text so far is lost either way, and another endpoint answers
            # sooner than a second wait for this one.
            return "stalled", None
        decision = budget.decide(classification, attempt=number, now=self.clock.monotonic())
        if not decision.retry:
            return decision.stop_reason, decision
        if decision.delay_s > self.models.max_wait_before_fallback_s and not last:
            return "wait_too_long", decision
        return None, decision

    async def _send(
        self, entry: ModelEndpoint, request: _Request, progress: _Progress, *, first_s: float | None = None
    ) -> _Answer:
        params: dict[str, Any] = {"model": entry.model, "messages": list(request.messages)}
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        client = self.client(entry)
        params["timeout"] = self.timeout(entry)
        try:
            if request.stream:
                return await self._stream(entry, client, params, progress, first_s=first_s)
            response = await client.chat.completions.create(**params)
        except Exception as exc:
            too_large = _too_large(exc)
            if too_large is None:
                raise
            raise too_large from None
        progress.first_at = self.clock.monotonic()
        return _answer_of(response)

    async def _stream(
        self,
        entry: ModelEndpoint,
        client: openai.AsyncOpenAI,
        params: dict[str, Any],
        progress: _Progress,
        *,
        first_s: float | None = None,
    ) -> _Answer:
        """Read a streamed answer: text goes to the caller as it comes. Usage is asked for (where the server
        accepts the option); after the finish, the stream is read on for a short grace for it, and whatever
        goes wrong from then on ends it complete. Reasoning deltas count as activity. Too long before the
        first token (`first_s`, when shorter than the endpoint's limit), or between chunks: StreamStalled."""
        first = entry.first_token_s if entry.first_token_s is not None else self.models.stream_first_token_s
        if first_s is not None:
            first = min(first, first_s)
        idle, grace = self.models.stream_idle_s, self.models.stream_usage_grace_s
        # The stream's own limits below decide; the HTTP read timeout must not cut in before them.
        read = max(self.read_timeout(entry), first, idle)
        params = {**params, "timeout": openai.Timeout(read, connect=self.models.connect_timeout_s)}
        loop = asyncio.get_running_loop()
        started = loop.time()
        key = (entry.base_url, entry.model)

        async def open_stream(with_usage: bool) -> Any:
            options: Any = {"include_usage": True} if with_usage else openai.omit
            return await client.chat.completions.create(**params, stream=True, stream_options=options)

        try:
            try:
                stream = await asyncio.wait_for(open_stream(key not in _no_stream_options), first)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                # 400 from servers that do not know the option, 422 from those that forbid extra fields
                # (pydantic's "extra inputs are not permitted").
                if key in _no_stream_options or "stream_options" not in Failure.from_exception(exc).text:
                    raise
                _no_stream_options.add(key)  # an older server: ask it without the option from now on
                stream = await asyncio.wait_for(open_stream(False), max(first - (loop.time() - started), 0.001))
        except asyncio.TimeoutError as exc:
            if isinstance(exc, StreamStalled):  # pragma: no cover - create() does not raise it
                raise
            raise StreamStalled(first, received_chars=0) from None
        parts: list[str] = []
        finish: str | None = None
        finished_at = 0.0
        usage: dict[str, int] | None = None
        model = params["model"]
        active = False  # any text or reasoning yet: from then on the idle limit applies
        received = 0
        chunks = stream.__aiter__()
        try:
            while True:
                if finish is not None:
                    limit = grace - (loop.time() - finished_at)
                    if limit <= 0:
                        break
                elif active:
                    limit = idle
                else:
                    limit = max(first - (loop.time() - started), 0.001)
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), limit)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    if finish is not None:
                        break  # complete; the server just did not send usage or [DONE] in time
                    raise StreamStalled(idle if active else first, received_chars=progress.delivered) from None
                except Exception:
                    if finish is not None:
                        break  # complete; the connection broke before the stream's formal end
                    raise
                model = getattr(chunk, "model", None) or model
                if getattr(chunk, "usage", None) is not None:
                    usage = _usage_of(chunk.usage)
                choices = getattr(chunk, "choices", None) or []
                if not choices or finish is not None:
                    continue
                delta = getattr(choices[0], "delta", None)
                text = getattr(delta, "content", None)
                if isinstance(text, str) and text:
                    active = True
                    parts.append(text)
                    received += len(text)
                    if 0 < self.models.max_answer_chars < received:
                        # Malformed already (check_answer would say so): stop reading, not hold it all.
                        limit = self.models.max_answer_chars
                        raise OutputProblem(f"answer too long: over {limit} characters, the limit (read no further)")
                    progress.text(text)
                elif _reasoning_of(delta):
                    active = True
                finish = getattr(choices[0], "finish_reason", None)
                if finish is not None:
                    finished_at = loop.time()
        finally:
            try:
                await stream.close()
            except Exception:
                if finish is None:
                    raise
            # A stream read to its end leaves the client's inner async generators to the loop's finalizer,
            # which closes them in tasks of their own: let those run now, not be found pending at exit.
            for _ in range(3):
                await asyncio.sleep(0)
        if finish is None:
            raise StreamCut(progress.delivered)
        return _Answer("".join(parts), finish, usage, model)


_no_stream_options: set[tuple[str, str]] = set()  # (base_url, model) that refused stream_options (400, 422)


def _reasoning_of(delta: Any) -> bool:
    """A thinking model's reasoning delta (`reasoning_content`, or `reasoning` on some servers)."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(delta, name, None)
        if isinstance(value, str) and value:
            return True
    return False


MAX_REPLY_BYTES = 16 * 1024 * 1024
"""A reply body (or one line of a stream) longer than this is malformed and read no further: a local
server gone wrong can send gigabytes, and the HTTP library would hold them all before any check."""

_capped_streams: dict[type, type] = {}


async def _cap_body(response: Any) -> None:
    """The HTTP client's response hook: the body is read through a counter that stops past
    MAX_REPLY_BYTES (for a stream of server-sent events, past that many bytes in one line)."""
    # The client accepts only its library's own AsyncByteStream (httpx or httpx2: whichever this openai
    # is built on) as a body, so the counter is made a subclass of it.
    base = getattr(importlib.import_module(type(response).__module__.partition(".")[0]), "AsyncByteStream", None)
    if not isinstance(base, type):  # pragma: no cover - a library without it: left uncapped
        return
    capped = _capped_streams.get(base)
    if capped is None:
        capped = _capped_streams[base] = type("_CappedBody", (_CappedBody, base), {})
    lines = response.headers.get("content-type", "").lower().startswith("text/event-stream")
    response.stream = capped(response.stream, lines=lines)


class _CappedBody:
    def __init__(self, inner: Any, *, lines: bool) -> None:
        self.inner, self.lines = inner, lines

    async def __aiter__(self) -> AsyncIterator[bytes]:
        count = 0
        async for chunk in self.inner:
            if self.lines:
                end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
                count = count + len(chunk) if end < 0 else len(chunk) - end - 1
            else:
                count += len(chunk)
            if count > MAX_REPLY_BYTES:
                what = "a line of the stream" if self.lines else "the reply"
                cap = MAX_REPLY_BYTES
                size = f"{cap / (1 << 20):g} MiB" if cap >= 1 << 20 else f"{cap / 1024:g} KiB"
                raise OutputProblem(f"too large: {what} is over {size}")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


def _too_large(exc: BaseException) -> OutputProblem | None:
    """The cap's OutputProblem behind an error the client wrapped it in (openai 1.x-2.x wrap any error
    of the read as a connection error), if it is one."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OutputProblem):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


_ssl: list[ssl.SSLContext] = []
_ssl_lock = threading.Lock()


def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process, made as openai's HTTP library makes its default one (its CA bundle,
    SSL_CERT_FILE and all). Building it loads the CA bundle, about 15 ms: far too much for every call."""
    with _ssl_lock:
        if not _ssl:
            maker = None
            for name in ("httpx2", "httpx"):  # what openai 3.x, and 1.x-2.x, are built on
                with contextlib.suppress(ImportError):
                    maker = getattr(importlib.import_module(name), "create_ssl_context", None)
                if maker is not None:
                    break
            context = maker() if maker is not None else ssl.create_default_context()
            if not isinstance(context, ssl.SSLContext):  # pragma: no cover - a future library's own type
                context = ssl.create_default_context()
            _ssl.append(context)
        return _ssl[0]


class _Lease:
    """A breaker permit held for one attempt: released exactly once, however the attempt ends."""

    def __init__(self, call: _ChainCall, permit: Permit) -> None:
        self.call = call
        self.permit: Permit | None = permit

    async def release(
        self, *, ok: bool, error_class: str | None = None, eject: str | None = None, counts: bool = False
    ) -> None:
        permit, self.permit = self.permit, None
        if permit is not None:
            await self.call.io(
                self.call.breakers.release, permit, ok=ok, error_class=error_class, eject=eject, counts=counts
            )

    def abandon(self) -> None:
        """Give back a permit still held (the attempt was cancelled): it says nothing about the endpoint,
        and a permit left behind would block the breaker's probes until it went stale."""
        permit, self.permit = self.permit, None
        if permit is not None:
            self.call.breakers.release(permit, ok=False, error_class=None)


def _with_delay(attempt: ModelAttempt, delay: float) -> ModelAttempt:
    data = asdict(attempt)
    data["delay_s"] = delay
    return ModelAttempt(**data)


def _usage_of(usage: Any) -> dict[str, int] | None:
    if usage is None:
        return None
    out = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, key, None)
        if isinstance(value, int):
            out[key] = value
    return out or None


def _answer_of(response: Any) -> _Answer:
    """The text of a chat completion; an answer without one is the wrong shape (a format problem)."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise OutputProblem("wrong shape: the answer has no choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise OutputProblem("wrong shape: the message content is not text")
    return _Answer(
        content or "",
        getattr(choices[0], "finish_reason", None),
        _usage_of(getattr(response, "usage", None)),
        getattr(response, "model", None) or "",
    )


def _on_gpu(entry: ModelEndpoint) -> bool:
    """Whether the endpoint runs on this machine's GPU (its memory is checked before each request)."""
    return bool(entry.local) or entry.gpu is not None


_told: set[str] = set()


def chain_config(config: Config) -> Config:
    """The configuration with the chain a call uses: config.yaml's models.chain if the user set one, else
    the user's OpenClaw models (openclaw.json), else skill.yaml's. Models of openclaw.json that cannot be
    used are named once per process, in one warning."""
    chain = openclaw_chain.resolve(config)
    line = chain.unusable_line()
    if line and line not in _told:
        _told.add(line)
        log.warning("%s", line)
    return openclaw_chain.with_chain(config, chain)


def _variables_of(value: str) -> str:
    return " and ".join(f"${name}" for name in openclaw_config.variables(value)) or "its value"


def check_chain(config: Config, env: Mapping[str, str] | None = None) -> None:
    """Refuse a chain that cannot work, before any request: empty, a key variable that is not set, or a
    header whose variable is not set or not one line."""
    env = os.environ if env is None else env
    files = config.files[-1] if config.files else None
    if not config.models.chain:
        raise ConfigError("no endpoints: add at least one to models.chain", file=files, key="models.chain")
    for i, entry in enumerate(config.models.chain):
        if entry.api_key_env and not env.get(entry.api_key_env):
            raise ConfigError(
                f"endpoint {entry.name!r} takes its key from ${entry.api_key_env}, which is not set "
                "(export it, or remove api_key_env for an endpoint that needs no key)",
                file=files,
                key=f"models.chain[{i}].api_key_env",
            )
        for name, value in entry.headers.items():
            text, missing = openclaw_config.expand(value, env)
            if missing or "\n" in text or "\r" in text:
                # An HTTP header is one line: a value of many would fail every request, and its error
                # would show the value (a credential, often).
                why = (
                    f"${missing[0]}, which is not set"
                    if missing
                    else f"{_variables_of(value)}, whose value is not one line"
                )
                raise ConfigError(
                    f"endpoint {entry.name!r} sends the header {name} from {why}",
                    file=files,
                    key=f"models.chain[{i}].headers.{name}",
                )


# -- the public API -------------------------------------------------------------------------------------------


async def acomplete(
    prompt: str | None = None,
    *,
    messages: Sequence[MessageIn] | None = None,
    system: str | None = None,
    json_output: bool = False,
    schema: dict[str, Any] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stream: bool = False,
    on_text: Callable[[str], None] | None = None,
    on_restart: Callable[[str], None] | None = None,
    task: str | None = None,
    deadline_s: float | None = None,
    config: Config | None = None,
    state: StateRoot | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    record: bool = True,
    cache: bool = True,
    _offload: bool = True,
    _shared_clients: dict[tuple[str, str], openai.AsyncOpenAI] | None = None,
    _on_discard: Callable[[int, str], None] | None = None,
) -> Completion:
    """Ask the chain; return the first checked answer or raise ModelCallFailed / NoEndpointAvailable.

    prompt or messages: what to ask. system: a system message. json_output: the answer must be one JSON
    object (code fences are stripped); schema: a JSON Schema it must match. stream: deliver text to
    `on_text` as it arrives. on_text gets every piece of every attempt, also of one that fails later:
    then `on_restart(reason)` is called (before any text of the next attempt) and everything on_text
    got since the previous restart must be dropped. astream() says the same as events.
    deadline_s: the whole call (default models.deadline_s). task: recorded with every attempt.
    cache: use models.cache when it is configured (off by default; never for a stream); False: ask anew.
    """
    if deadline_s is not None and not (isinstance(deadline_s, (int, float)) and deadline_s > 0):
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    config = chain_config(config or get_config())
    check_chain(config)
    if _shared_clients is None:
        # A caller's event loop: its clients are kept for the loop's life (connections reused between calls).
        _shared_clients = await _clients_of_this_loop()
    if task is not None:
        validate_id(task, "task")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    request = _Request(
        build_messages(prompt, messages, system, json_output, schema),
        json_output,
        schema,
        max_tokens,
        temperature,
        stream,
    )
    root = state or StateRoot.from_env()
    settings = config.models.cache
    answers = AnswerCache(root, settings, clock) if cache and settings is not None and not stream else None
    call = _ChainCall(
        request,
        config=config,
        state=root,
        clock=clock,
        rng=rng,
        task=task,
        deadline_s=config.models.deadline_s if deadline_s is None else deadline_s,
        on_text=on_text,
        on_restart=on_restart,
        record=record,
        offload=_offload,
        shared_clients=_shared_clients,
        on_discard=_on_discard,
        cache=answers,
    )
    try:
        return await call.run()
    except (asyncio.CancelledError, KeyboardInterrupt):
        call.abandoned()
        raise
    except (ModelCallFailed, NoEndpointAvailable) as exc:
        if not config.models.rules_fallback or isinstance(exc, ContentRefused):
            raise
        limit = min(config.models.read_timeout_base_s, call.remaining())
        answer = await _ask_rules(
            config,
            request,
            exc.attempts,
            clock,
            state=state,
            task=task,
            limit_s=limit,
            started_s=call.started,
            record=record,
        )
        if answer is None:
            raise
        answer.content = call.mask.text(answer.content)
        if stream:
            # The stream carries the rules' answer too: after the caller drops any text still on show, the
            # text it keeps is the answer (as for a model's).
            call.void("every model failed; the rules fallback answers")
            call.show(answer.content)
        return answer


async def _ask_rules(
    config: Config,
    request: _Request,
    attempts: list[ModelAttempt],
    clock: Clock,
    *,
    state: StateRoot | None,
    task: str | None,
    limit_s: float,
    started_s: float | None = None,
    record: bool = True,
) -> Completion | None:
    """The second document's last strategy, a rule engine: `models.rules_fallback` (an argv) gets the
    prompt on stdin and answers on stdout within `limit_s` (the read timeout, within the call's deadline),
    checked like a model's answer; None when it cannot answer. It runs in a session of its own, so a
    command that starts others (`sh -c ...`) is stopped whole.

    Its outcome ends the call in the ledger, as a model's answer or final failure would: [SUCCESS] target=rules
    (the whole call's time, from `started_s`), or [FAILED] target=rules with the last model's class. The chain's
    last model was recorded as a [FALLBACK] to it; a failed call read as failed though the rules answered.
    `record=False` (the caller's): nothing is written."""
    argv = list(config.models.rules_fallback)
    ledger = Ledger((state or StateRoot.from_env()), config, clock=clock) if record else None
    last_class = attempts[-1].error_class if attempts else None

    def gave_none(why: str) -> None:  # recorded as the call's end; the caller raises the models' failure
        if ledger is None:
            return
        ledger.record(
            "failed",
            task=task,
            target="rules",
            model=os.path.basename(argv[0]),
            error_class=last_class,
            status="rules_failed",
            reason=f"every model failed, and the rules fallback gave no answer: {why}",
        )

    prompt = "\n\n".join(m["content"] for m in request.messages if m["role"] == "user")
    started = clock.monotonic()
    name = os.path.basename(argv[0])
    log = logging.getLogger(__name__)
    if limit_s <= 0:
        log.warning("the rules fallback %s was not asked: no time left of the call's deadline", name)
        gave_none("no time left of the call's deadline")
        return None
    proc: asyncio.subprocess.Process | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        out, _ = await asyncio.wait_for(proc.communicate(prompt.encode("utf-8")), limit_s)
    except (OSError, asyncio.TimeoutError) as exc:
        why = f"no answer within {limit_s:.3g}s" if isinstance(exc, asyncio.TimeoutError) else None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the children that hold the pipe too
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        why = why or f"{type(exc).__name__}: {exc}"
        log.warning("the rules fallback %s could not answer: %s", name, why)
        gave_none(why)
        return None
    content = out.decode("utf-8", "replace").strip()
    try:
        if proc.returncode != 0:
            raise OutputProblem(f"exit {proc.returncode}")
        data = check_answer(
            content,
            "stop",
            json_output=request.json_output,
            schema=request.schema,
            max_chars=config.models.max_answer_chars,
        )
    except OutputProblem as problem:
        log.warning("the rules fallback %s gave no usable answer: %s", name, problem.detail)
        gave_none(f"no usable answer ({problem.detail})")
        return None
    duration = clock.monotonic() - started
    done = ModelAttempt("rules", name, 1, "answered", duration_s=duration)
    if ledger is not None:
        ledger.record(
            "success",
            task=task,
            target="rules",
            model=name,
            status="rules",
            reason="every model failed; the rules fallback answered",
            duration_s=round(clock.monotonic() - (started if started_s is None else started_s), 3),
        )
    return Completion(content, data, "rules", name, True, "stop", None, duration, [*attempts, done], by_rules=True)


@dataclass(frozen=True)
class StreamText:
    """A piece of the answer, as it arrives (a StreamRestart may later take it back)."""

    text: str


@dataclass(frozen=True)
class StreamRestart:
    """The attempt that sent the last `discard_chars` characters failed: drop them; the next StreamText
    starts the answer afresh (from another attempt or endpoint)."""

    discard_chars: int
    reason: str


@dataclass(frozen=True)
class StreamDone:
    """The checked answer; its content equals the text kept after applying every restart."""

    completion: Completion


StreamEvent = StreamText | StreamRestart | StreamDone


async def astream(
    prompt: str | None = None,
    *,
    messages: Sequence[MessageIn] | None = None,
    system: str | None = None,
    json_output: bool = False,
    schema: dict[str, Any] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    task: str | None = None,
    deadline_s: float | None = None,
    config: Config | None = None,
    state: StateRoot | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    record: bool = True,
    cache: bool = True,
) -> AsyncIterator[StreamEvent]:
    """Stream a call through the chain as events: StreamText as it arrives, StreamRestart when an attempt
    that already sent text is abandoned, and finally StreamDone with the Completion. Options are
    acomplete()'s, named here so that mypy finds a misspelt one (stream is implied; on_text/on_restart are
    not taken: the events carry them). A failed call raises from the iteration, after the events that came
    before; leaving the loop early cancels the call."""
    queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()

    def text(piece: str) -> None:
        queue.put_nowait(StreamText(piece))

    def discard(chars: int, reason: str) -> None:
        queue.put_nowait(StreamRestart(chars, reason))

    call = asyncio.ensure_future(
        acomplete(
            prompt,
            messages=messages,
            system=system,
            json_output=json_output,
            schema=schema,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=True,
            on_text=text,
            task=task,
            deadline_s=deadline_s,
            config=config,
            state=state,
            clock=clock,
            rng=rng,
            record=record,
            cache=cache,
            _on_discard=discard,
        )
    )
    call.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while True:
            event = await queue.get()
            if event is None:
                yield StreamDone(call.result())
                return
            yield event
    finally:
        if not call.done():
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call


Clients = dict[tuple[str, str], openai.AsyncOpenAI]


class _LoopClients:
    """A caller's event loop's clients, and the async generator that closes them when the loop shuts down."""

    def __init__(self, clients: Clients, closer: AsyncGenerator[None, None]) -> None:
        self.clients = clients
        self.closer = closer


# Weak keys, but the clients hold their loop (through their connections): an entry goes when its loop shuts
# down (the closer below), or, for a loop closed without shutting down its async generators, at the next call.
_loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()


async def _clients_of_this_loop() -> Clients:
    """The running loop's clients, kept for the loop's life, so calls in one loop reuse their connections.
    asyncio.run() (and any loop that shuts down its async generators before closing) closes them and their
    connections as it ends: a script calling asyncio.run(acomplete(...)) over and over leaves nothing open."""
    loop = asyncio.get_running_loop()
    for closed in [held for held in list(_loop_clients) if held.is_closed()]:
        _loop_clients.pop(closed, None)
    found = _loop_clients.get(loop)
    if found is None:
        clients: Clients = {}
        closer = _close_with_the_loop(clients)
        await closer.__anext__()  # started: the loop now knows it, and closes it at shutdown_asyncgens()
        found = _loop_clients[loop] = _LoopClients(clients, closer)
    return found.clients


async def _close_with_the_loop(clients: Clients) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):
            _loop_clients.pop(asyncio.get_running_loop(), None)
        await _close_clients(list(clients.values()))
        clients.clear()


async def _close_clients(clients: Iterable[openai.AsyncOpenAI]) -> None:
    """Close each client (its connections); one that fails to close does not keep the others open."""
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


class _ThreadLoop(threading.local):
    """A calling thread's own event loop and clients, kept between its complete() calls."""

    loop: asyncio.AbstractEventLoop | None = None
    pid: int = 0
    clients: Clients


class _PrivateLoop:
    """Where sync complete() calls run. A thread with no event loop of its own runs the call on a loop of
    its own, kept between calls (no hand-off to another thread, which costs milliseconds when threads
    compete for the GIL); a thread inside a running event loop (async code calling the sync API) hands
    it to one event loop in a daemon thread. Either way the clients are kept, so HTTP connections (and
    TLS sessions) are reused as a long-lived openai client's are, and a caller's own loop is never used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self.clients: Clients = {}
        self._local = _ThreadLoop()
        # Each calling thread's loop and clients, with the thread: a thread that has ended leaves them
        # behind (its connections open), so the next thread to make a loop closes those first.
        self._thread_loops: list[tuple[asyncio.AbstractEventLoop, Clients, threading.Thread]] = []
        self._registered = False

    def run(self, make: Callable[[Clients], Coroutine[Any, Any, T]]) -> T:
        try:
            asyncio.get_running_loop()
            inside_a_loop = True
        except RuntimeError:
            inside_a_loop = False
        if not inside_a_loop:  # (called outside the except: its RuntimeError must not chain onto failures)
            return self._run_here(make)
        loop, clients = self._ensure()
        future = asyncio.run_coroutine_threadsafe(make(clients), loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C while waiting: cancel the call too (it gives its permits back)
            raise

    def _run_here(self, make: Callable[[Clients], Coroutine[Any, Any, T]]) -> T:
        local = self._local
        if local.loop is None or local.pid != os.getpid() or local.loop.is_closed():  # first use, or a fork
            local.loop, local.pid, local.clients = asyncio.new_event_loop(), os.getpid(), {}
            with self._lock:
                ended = [held for held in self._thread_loops if not held[2].is_alive()]
                self._thread_loops = [held for held in self._thread_loops if held[2].is_alive()]
                self._thread_loops.append((local.loop, local.clients, threading.current_thread()))
                if not self._registered:
                    atexit.register(self._shutdown)
                    self._registered = True
            for held_loop, held_clients, _ in ended:  # threads that called complete() and have ended
                _close_loop(held_loop, held_clients)
        loop = local.loop
        task = loop.create_task(make(local.clients))
        try:
            return loop.run_until_complete(task)
        except BaseException as exc:
            if not task.done():  # Ctrl-C while it ran: cancel the call too (it gives its permits back)
                task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(task)
            if not isinstance(exc, Exception):
                # Ctrl-C can land anywhere inside the HTTP stack, e.g. between a connection pool's taking
                # its lock and the try that gives it back: the pool then makes every later request wait out
                # its timeout. The thread's next call starts on a fresh loop with fresh clients.
                self._discard_thread_loop()
            raise

    def _discard_thread_loop(self) -> None:
        local = self._local
        loop, clients = local.loop, list(local.clients.values())
        local.loop, local.clients = None, {}
        with self._lock:
            self._thread_loops = [held for held in self._thread_loops if held[0] is not loop]
        if loop is None or loop.is_closed():
            return

        with contextlib.suppress(BaseException):  # best effort: a poisoned pool may not close in time
            loop.run_until_complete(asyncio.wait_for(_close_clients(clients), 1.0))
        with contextlib.suppress(BaseException):
            loop.close()

    def _ensure(self) -> tuple[asyncio.AbstractEventLoop, dict[tuple[str, str], openai.AsyncOpenAI]]:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # first use, or a forked child
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="selfheal-llm", daemon=True).start()
                self._loop, self._pid, self.clients = loop, os.getpid(), {}
                if not self._registered:
                    atexit.register(self._shutdown)
                    self._registered = True
            return self._loop, self.clients

    def _shutdown(self) -> None:
        loop, clients = self._loop, list(self.clients.values())
        if loop is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_close_clients(clients), loop).result(timeout=2)
            loop.call_soon_threadsafe(loop.stop)
        # Loops of threads that called complete(): closed here only if they are not running (a thread still
        # inside a call at exit keeps its loop; the process is ending anyway).
        for thread_loop, thread_clients, _ in self._thread_loops:
            _close_loop(thread_loop, thread_clients)


def _close_loop(loop: asyncio.AbstractEventLoop, clients: Clients) -> None:
    """Close a loop that no call is running on, and its clients (their connections); best effort."""
    if loop.is_running() or loop.is_closed():
        return
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.wait_for(_close_clients(list(clients.values())), 2.0))
    with contextlib.suppress(Exception):
        loop.close()


_private = _PrivateLoop()


def complete(
    prompt: str | None = None,
    *,
    messages: Sequence[MessageIn] | None = None,
    system: str | None = None,
    json_output: bool = False,
    schema: dict[str, Any] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stream: bool = False,
    on_text: Callable[[str], None] | None = None,
    on_restart: Callable[[str], None] | None = None,
    task: str | None = None,
    deadline_s: float | None = None,
    config: Config | None = None,
    state: StateRoot | None = None,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    record: bool = True,
    cache: bool = True,
) -> Completion:
    """The sync form of acomplete(): the same options, named here so that mypy finds a misspelt one. Runs on a
    private event loop, so connections are reused between calls, and it is safe to call from async code too
    (it blocks only the caller)."""
    # On the private loop nothing else waits, so state updates run inline (_offload=False).
    return _private.run(
        lambda clients: acomplete(
            prompt,
            messages=messages,
            system=system,
            json_output=json_output,
            schema=schema,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=stream,
            on_text=on_text,
            on_restart=on_restart,
            task=task,
            deadline_s=deadline_s,
            config=config,
            state=state,
            clock=clock,
            rng=rng,
            record=record,
            cache=cache,
            _offload=False,
            _shared_clients=clients,
        )
    )
