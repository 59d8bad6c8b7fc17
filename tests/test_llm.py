"""The fallback chain, through the real openai client against a real fake endpoint: each fault, each decision."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, ROOT
from selfheal.core.breaker import Breakers
from selfheal.core.config import Config, load_config
from selfheal.errors import ConfigError
from selfheal.models import gpu, llm
from selfheal.models.llm import (
    ContentRefused,
    ModelCallFailed,
    NoEndpointAvailable,
    acomplete,
    complete,
)
from selfheal.state.root import StateRoot
from selfheal.testing import FakeClock, FakeModelServer, FakeNvidiaSmi, Fault

FAST = """
retry: {{jitter: {jitter}}}
models:
  read_timeout_base_s: 1.0
  timeout_per_1k_tokens_s: 0.0
  connect_timeout_s: 0.5
  deadline_s: 20
  stream_first_token_s: 1.0
  stream_idle_s: 0.5
  chain:
{entries}
"""


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as srv:
        yield srv


def dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def chain(server: FakeModelServer, write_config: Callable[[str], Path]) -> Callable[..., Config]:
    """chain("primary", "backup", ...) points models.chain at the fake server's endpoints (or a dead port)."""

    def make(*names: str, extra: str = "", jitter: str = "none", **per_entry: dict[str, Any]) -> Config:
        lines = []
        for name in names:
            url = dead_url() if name.startswith("dead") else server.url(name)
            fields = {"name": name, "base_url": url, "model": f"model-{name}", **per_entry.get(name, {})}
            lines.append("    - " + json.dumps(fields))
        write_config(FAST.format(entries="\n".join(lines), jitter=jitter) + extra)
        return load_config()

    return make


def ask(config: Config, clock: FakeClock, **options: Any) -> llm.Completion:
    return complete("Summarise the night.", config=config, clock=clock, **options)


def kept_text(events: list[llm.StreamEvent]) -> str:
    """The text a caller of astream() shows: each StreamText added, each StreamRestart's discard taken back."""
    kept = ""
    for event in events:
        if isinstance(event, llm.StreamText):
            kept += event.text
        elif isinstance(event, llm.StreamRestart):
            kept = kept[: len(kept) - event.discard_chars]
    return kept


def outcomes(result: llm.Completion | ModelCallFailed | NoEndpointAvailable) -> list[tuple[str, str, str | None]]:
    return [(a.endpoint, a.outcome, a.error_class) for a in result.attempts]


# -- the happy path -----------------------------------------------------------------------------------------------


def test_a_healthy_primary_answers(chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer) -> None:
    """The first endpoint answers: its name, its model and its usage come back; no fallback."""
    result = ask(chain("primary", "backup"), clock)
    assert (result.content, result.endpoint, result.model, result.fallback_used) == (
        "ok from primary",
        "primary",
        "model-primary",
        False,
    )
    assert result.usage and result.usage["total_tokens"] > 0
    assert server.requests("backup") == 0


# -- retry here, or move on ---------------------------------------------------------------------------------------


def test_transient_errors_are_retried_on_the_same_endpoint(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """Two 503s: short waits (1 s, 2 s) on the primary, which then answers."""
    server.script("primary", Fault.http(503), Fault.http(503))
    result = ask(chain("primary", "backup"), clock)
    assert result.endpoint == "primary" and server.requests("primary") == 3
    assert clock.waits == [1.0, 2.0]
    assert outcomes(result) == [("primary", "failed", "transient")] * 2 + [("primary", "answered", None)]


def test_a_dead_endpoint_is_left_at_once(chain: Callable[..., Config], clock: FakeClock) -> None:
    """Connection refused: no retry on that address, the next endpoint answers, nobody waited."""
    result = ask(chain("dead-primary", "backup"), clock)
    assert (result.endpoint, result.fallback_used) == ("backup", True)
    assert outcomes(result)[0] == ("dead-primary", "failed", "transient")
    assert clock.waits == []


def test_a_silent_endpoint_is_left_at_once(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A read timeout with nothing received: one try, then the fallback (retrying would double the wait)."""
    server.script("primary", Fault.hang(30))
    result = ask(chain("primary", "backup"), clock)
    assert result.endpoint == "backup" and server.requests("primary") == 1
    assert outcomes(result)[0] == ("primary", "failed", "timeout")


def test_a_refused_key_moves_on_and_opens_the_breaker(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """401: straight to the fallback; the breaker opens at once, so later calls do not reach the primary."""
    server.set_default("primary", Fault.http(401, code="invalid_api_key"))
    config = chain("primary", "backup")
    for _ in range(4):
        assert ask(config, clock).endpoint == "backup"
    assert server.requests("primary") == 1


def test_a_long_retry_after_moves_on_and_a_short_one_is_waited_out_on_the_last_endpoint(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """With a fallback, a 5 s rate-limit wait is not worth it; alone, the primary is waited for (at least
    the Retry-After)."""
    server.script("primary", Fault.http(429, retry_after=3, code="rate_limit_exceeded"))
    assert ask(chain("primary", "backup"), clock).endpoint == "backup"
    server.script("solo", Fault.http(429, retry_after=7, code="rate_limit_exceeded"))
    result = ask(chain("solo"), clock)
    assert result.endpoint == "solo" and clock.waits == [7.0]


@pytest.mark.parametrize("seed", range(6))
def test_a_retry_after_within_the_fallback_wait_is_waited_exactly(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, seed: int
) -> None:
    """429 asking for 2 s with max_wait_before_fallback_s 2: the primary is retried after exactly 2 s, every
    time, whatever the jitter draws (retry.jitter full): never a coin toss between waiting and falling over."""
    config = chain("primary", "backup", jitter="full")
    server.script("primary", Fault.http(429, retry_after=2, code="rate_limit_exceeded"))
    result = ask(config, clock, rng=random.Random(seed))
    assert (result.endpoint, clock.waits, server.requests("backup")) == ("primary", [2.0], 0)
    assert result.attempts[0].delay_s == 2.0


def test_retry_after_beyond_the_cap_is_not_waited_for(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A 10-minute Retry-After ends the attempts on that endpoint even when it is the only one."""
    server.script("solo", Fault.http(429, retry_after=600))
    with pytest.raises(ModelCallFailed) as info:
        ask(chain("solo"), clock)
    assert clock.waits == [] and server.requests("solo") == 1
    assert info.value.exit_code == 3


def test_an_exhausted_quota_moves_on(chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer) -> None:
    """insufficient_quota is fatal for that provider: no retry there, the fallback answers."""
    server.script("primary", Fault.http(429, code="insufficient_quota"))
    result = ask(chain("primary", "backup"), clock)
    assert outcomes(result)[0] == ("primary", "failed", "fatal") and result.endpoint == "backup"


def test_a_too_long_request_goes_only_to_a_larger_context(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """context_length_exceeded: never again on that model, nor on one no larger; the larger one answers."""
    server.script("small", Fault.http(400, code="context_length_exceeded"))
    config = chain(
        "small",
        "same",
        "big",
        small={"context_tokens": 4096},
        same={"context_tokens": 4096},
        big={"context_tokens": 131072},
    )
    result = ask(config, clock)
    assert result.endpoint == "big"
    assert (server.requests("small"), server.requests("same")) == (1, 0)
    assert outcomes(result)[1] == ("same", "skipped", None)


def test_a_content_policy_refusal_is_a_clean_error(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """The provider's refusal comes back in its own words; no other endpoint is asked."""
    server.script("primary", Fault.http(400, code="content_policy_violation", message="Your request was rejected"))
    with pytest.raises(ContentRefused, match="Your request was rejected"):
        ask(chain("primary", "backup"), clock)
    assert server.requests("backup") == 0


# -- answers are checked ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (Fault.empty(), "empty answer"),
        (Fault.truncated(), "cut off"),
        (Fault.malformed(), "Expecting value"),
        (Fault.reply("x" * 10_001), "answer too long: 10001 characters, over the limit of 10000"),
    ],
)
def test_a_bad_answer_is_retried_once_simplified_then_falls_over(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, bad: Fault, words: str
) -> None:
    """A wrong, empty, cut-off or unparseable answer is never returned: one simplified retry, then the fallback."""
    server.script("primary", bad, bad)
    result = ask(chain("primary", "backup"), clock)
    assert result.content == "ok from backup"
    first, second = result.attempts[:2]
    assert first.error_class == second.error_class == "format" and words in first.reason
    assert (first.simplified, second.simplified) == (False, True)


def test_a_reply_that_is_not_a_chat_completion_moves_on_at_once(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """200 with JSON that is no chat completion is the server's doing, not the model's: no simplified retry
    there while another endpoint is left; alone, it still gets its one simplified retry."""
    server.script("primary", Fault.wrong_shape())
    result = ask(chain("primary", "backup"), clock)
    assert (result.content, server.requests("primary")) == ("ok from backup", 1)
    assert "wrong shape" in result.attempts[0].reason
    server.script("solo", Fault.wrong_shape())
    assert ask(chain("solo"), clock).content == "ok from solo" and server.requests("solo") == 2


@pytest.mark.parametrize("stream", [False, True], ids=["reply", "stream-line"])
def test_a_reply_far_over_any_answer_is_read_no_further_and_moves_on(
    chain: Callable[..., Config],
    clock: FakeClock,
    server: FakeModelServer,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    """A server gone wrong sends far too much (gigabytes, in the field): the body, or one line of a stream, is
    read only up to the cap, never held whole, and the reply counts as the server's fault: the next endpoint
    answers at once."""
    monkeypatch.setattr(llm, "MAX_REPLY_BYTES", 64 * 1024)
    text = "a" * 200_000
    if stream:
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        chunk["choices"] = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
        huge = Fault.raw(200, f"data: {json.dumps(chunk)}\n\n", headers={"content-type": "text/event-stream"})
    else:
        message = {"role": "assistant", "content": text}
        body = {"id": "x", "object": "chat.completion", "created": 1, "model": "m"}
        body["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        huge = Fault.raw(200, body)
    server.set_default("primary", huge)
    result = ask(chain("primary", "backup"), clock, stream=stream)
    assert (result.content, server.requests("primary")) == ("ok from backup", 1)
    what = "a line of the stream" if stream else "the reply"
    assert result.attempts[0].reason == f"too large: {what} is over 64 KiB"


def test_a_streamed_answer_over_the_length_limit_is_not_read_to_its_end(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """An answer over models.max_answer_chars is malformed however long it goes on: the stream is left as
    soon as it passes the limit, not held to its end, and the simplified retry follows as for any long answer."""
    words = " ".join(f"word{i}" for i in range(400))
    server.script("primary", Fault.stream(words), Fault.stream("short"))
    pieces: list[str] = []
    result = ask(chain("primary", extra="  max_answer_chars: 100\n"), clock, stream=True, on_text=pieces.append)
    assert result.content == "short" and result.attempts[0].error_class == "format"
    assert result.attempts[0].reason == "answer too long: over 100 characters, the limit (read no further)"
    # What reached the caller before the stream was left: the words up to the limit, not all 400.
    assert 90 < len("".join(pieces)) - len("short") <= 100


def test_an_out_of_memory_endpoint_is_cooled_down(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """After a CUDA OOM the next calls skip the local server for a while instead of asking it again."""
    server.set_default("gpu", Fault.http(500, message=TORCH_OOM))
    config = chain("gpu", "backup")
    assert [ask(config, clock).endpoint for _ in range(3)] == ["backup"] * 3
    assert server.requests("gpu") == 1


def test_the_simplified_retry_is_stricter(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """The retry after a bad JSON answer adds a strict instruction, drops the temperature to 0, trims the prompt."""
    seen: list[dict[str, Any]] = []
    original = server._handle

    def spy(h: Any) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length)
        seen.append(json.loads(body))
        h.rfile = __import__("io").BytesIO(body)
        original(h)

    server._handle = spy  # type: ignore[method-assign]
    server.script("primary", Fault.reply("not json at all"), Fault.reply('{"status": "ok"}'))
    long_prompt = "x" * 10_000
    result = complete(long_prompt, json_output=True, temperature=0.9, config=chain("primary"), clock=clock)
    assert result.data == {"status": "ok"}
    first, second = seen
    assert first["temperature"] == 0.9 and second["temperature"] == 0.0
    assert len(second["messages"][-2]["content"]) == 4000 and len(first["messages"][-1]["content"]) == 10_000
    assert "could not be used" in second["messages"][-1]["content"]


def test_a_long_prompt_is_split_into_numbered_sub_questions_on_the_simplified_retry(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """The first document's "split the long prompt into sub-questions": after a bad answer, a prompt over
    the limit with several paragraphs comes back as numbered parts within the limit, none left out."""
    seen: list[dict[str, Any]] = []
    original = server._handle

    def spy(h: Any) -> None:
        body = h.rfile.read(int(h.headers.get("content-length") or 0))
        seen.append(json.loads(body))
        h.rfile = __import__("io").BytesIO(body)
        original(h)

    server._handle = spy  # type: ignore[method-assign]
    server.script("primary", Fault.empty(), Fault.reply("1. up 15%. 2. salaries. 3. cloud."))
    questions = ["Summarise the Q3 revenue. " * 60, "List the three largest costs. " * 60, "Suggest one saving. " * 60]
    result = complete("\n\n".join(questions), config=chain("primary"), clock=clock)
    assert result.content.startswith("1. up 15%")
    user = seen[1]["messages"][-2]["content"]
    assert "split into 3 parts" in user and len(user) <= 4000
    assert [line[:12] for line in user.splitlines() if line[:1].isdigit()] == [
        "1. Summarise",
        "2. List the ",
        "3. Suggest o",
    ]


def test_json_output_strips_fences_and_checks_the_schema(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A fenced JSON object is accepted; one missing a required key is a format failure."""
    schema = {
        "type": "object",
        "required": ["title", "score"],
        "properties": {"title": {"type": "string"}, "score": {"type": "number"}},
    }
    server.script("primary", Fault.reply('```json\n{"title": "Q3", "score": 0.9}\n```'))
    result = ask(chain("primary"), clock, json_output=True, schema=schema)
    assert result.data == {"title": "Q3", "score": 0.9}
    server.script("primary", Fault.reply('{"title": "Q3"}'), Fault.reply('{"title": "Q3", "score": "high"}'))
    with pytest.raises(ModelCallFailed) as info:
        ask(chain("primary"), clock, json_output=True, schema=schema)
    reasons = [a.reason for a in info.value.attempts]
    assert "missing 'score'" in reasons[0] and "expected number" in reasons[1]


# -- when nothing works -------------------------------------------------------------------------------------------


def test_every_endpoint_failing_is_an_error_with_every_attempt(chain: Callable[..., Config], clock: FakeClock) -> None:
    """Nothing answered: ModelCallFailed (exit 3) lists what each endpoint did; no answer is invented."""
    with pytest.raises(ModelCallFailed) as info:
        ask(chain("dead-a", "dead-b"), clock)
    assert [(a.endpoint, a.outcome) for a in info.value.attempts] == [("dead-a", "failed"), ("dead-b", "failed")]
    assert info.value.exit_code == 3 and info.value.to_json()["ok"] is False


def test_every_breaker_open_means_not_attempted(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """With every endpoint's breaker open nothing is sent: NoEndpointAvailable, exit 4."""
    config = chain("primary", "backup")
    breakers = Breakers(StateRoot(home), config.breakers, clock=clock)
    for name in ("primary", "backup"):
        breakers.release(breakers.acquire(name), ok=False, error_class="auth")
    with pytest.raises(NoEndpointAvailable) as info:
        ask(config, clock)
    assert info.value.exit_code == 4
    assert server.requests("primary") == server.requests("backup") == 0


def test_the_deadline_bounds_the_whole_call(chain: Callable[..., Config], server: FakeModelServer) -> None:
    """A call with a 0.3 s deadline against an endpoint that answers in 5 s fails with the deadline, in time."""
    server.script("slow", Fault.hang(5))
    config = chain("slow", extra="")
    with pytest.raises(ModelCallFailed, match="deadline"):
        complete("hi", config=config, deadline_s=0.3)


@pytest.mark.parametrize(
    ("yaml_chain", "words"),
    [
        ("  chain: []\n", "no endpoints"),
        (
            '  chain:\n    - {name: a, base_url: "http://127.0.0.1:9/v1", model: m, '
            "api_key_env: SELFHEAL_TEST_NO_KEY}\n",
            "takes its key from $SELFHEAL_TEST_NO_KEY, which is not set",
        ),
        (
            '  chain:\n    - {name: a, base_url: "http://127.0.0.1:9/v1", model: m, '
            'headers: {X-Token: "${SELFHEAL_TEST_NO_KEY}"}}\n',
            "sends the header X-Token from $SELFHEAL_TEST_NO_KEY, which is not set",
        ),
        (
            '  chain:\n    - {name: a, base_url: "http://127.0.0.1:9/v1", model: m, '
            'headers: {X-Token: "${SELFHEAL_TEST_TWO_LINES}"}}\n',
            "sends the header X-Token from $SELFHEAL_TEST_TWO_LINES, whose value is not one line",
        ),
    ],
)
def test_a_chain_that_cannot_work_is_refused_before_any_request(
    write_config: Callable[[str], Path], yaml_chain: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty chain, a missing key variable, or a header whose variable is missing or of many lines (it would
    fail every request, and the HTTP library's error quotes the value: a token, often) is a configuration
    error (exit 2), found up front; the value is never shown."""
    monkeypatch.setenv("SELFHEAL_TEST_TWO_LINES", "tok-secret-1\r\nX-Injected: 1")
    write_config("models:\n" + yaml_chain)
    with pytest.raises(ConfigError, match=words.replace("$", r"\$")) as info:
        complete("hi", config=load_config())
    assert info.value.exit_code == 2 and "tok-secret-1" not in str(info.value)


# -- streams ------------------------------------------------------------------------------------------------------


def test_a_stream_delivers_text_as_it_arrives(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """Chunks reach on_text in order and the answer is their sum."""
    server.script("primary", Fault.stream("the quick brown fox"))
    pieces: list[str] = []
    result = ask(chain("primary"), clock, stream=True, on_text=pieces.append)
    assert pieces == ["the ", "quick ", "brown ", "fox"] and result.content == "the quick brown fox"
    assert result.finish_reason == "stop" and result.discarded_chars == 0


@pytest.mark.parametrize(
    "broken",
    [
        Fault.stream("one two three four", cut_after=2),
        Fault.stream("one two three four", stall_after=2, stall_s=30),
    ],
    ids=["cut", "stalled"],
)
def test_a_broken_stream_is_discarded_and_retried_from_the_start(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, broken: Fault
) -> None:
    """A stream cut or stalled midway: the caller is told to drop the partial text, and the retry answers whole."""
    server.script("primary", broken, Fault.stream("fresh full answer"))
    pieces: list[str] = []
    restarts: list[str] = []
    result = ask(chain("primary"), clock, stream=True, on_text=pieces.append, on_restart=restarts.append)
    assert result.content == "fresh full answer"
    assert len(restarts) == 1 and result.discarded_chars == len("one two ")
    assert "".join(pieces) == "one two fresh full answer"


def test_a_stream_that_never_starts_falls_over(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """No first token within the limit: the endpoint is silent, the fallback answers."""
    server.script("primary", Fault.stream("late", first_delay_s=30))
    result = ask(chain("primary", "backup"), clock, stream=True)
    assert result.endpoint == "backup" and server.requests("primary") == 1


def test_a_malformed_chunk_fails_the_attempt_cleanly(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A chunk that is not JSON ends that attempt (never a half answer); the retry answers."""
    server.script("primary", Fault.stream("a b c", bad_chunk_at=1), Fault.stream("clean"))
    result = ask(chain("primary"), clock, stream=True)
    assert result.content == "clean" and result.attempts[0].outcome == "failed"


def test_a_finished_stream_without_done_is_finalised_at_once(
    chain: Callable[..., Config], server: FakeModelServer
) -> None:
    """finish_reason arrived but no [DONE] and the line stays open: the answer is complete, no waiting."""
    server.script("primary", Fault.stream("all there", done=False))
    result = complete("hi", config=chain("primary"), stream=True, deadline_s=3)
    assert result.content == "all there"


def test_a_stream_reports_usage(chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer) -> None:
    """The request asks for usage (stream_options.include_usage) and the usage chunk after the finish is read."""
    server.script("primary", Fault.stream("four words right here"))
    result = ask(chain("primary"), clock, stream=True)
    assert result.usage and result.usage["total_tokens"] > 0
    assert server.bodies("primary")[-1]["stream_options"] == {"include_usage": True}


def test_a_server_rejecting_stream_options_is_asked_without_them_from_then_on(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """400 for stream_options: asked again at once without it (no attempt lost, no fallback), and later calls
    to that endpoint leave it out."""
    server.reject_stream_options("old")
    config = chain("old", "backup")
    first = ask(config, clock, stream=True)
    assert (first.endpoint, first.content, server.requests("old"), len(first.attempts)) == ("old", "ok from old", 2, 1)
    ask(config, clock, stream=True)
    assert server.requests("old") == 3 and "stream_options" not in server.bodies("old")[-1]


def test_reasoning_deltas_count_as_activity(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A thinking model streams reasoning for 1.8 s before its first text (first-token limit 1 s): it is
    working, not silent, and its answer is kept."""
    server.script("primary", Fault.stream("the answer", reasoning="one two three four five six", chunk_delay_s=0.3))
    result = complete("hi", config=chain("primary", "backup"), stream=True)  # the real clock: limits are real
    assert (result.endpoint, result.content) == ("primary", "the answer")


def test_the_first_token_limit_can_be_set_per_endpoint(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A local thinking model given first_token_s 3 may take 1.5 s to start (the default limit here is 1 s)."""
    server.script("slow", Fault.stream("late but fine", first_delay_s=1.5))
    result = ask(chain("slow", "backup", slow={"first_token_s": 3.0}), clock, stream=True)
    assert (result.endpoint, result.content) == ("slow", "late but fine")


def test_a_stream_that_stalls_after_text_moves_to_the_next_endpoint_at_once(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """Stalled mid-answer: no second wait on the same endpoint; the caller is told to drop the partial text
    and the fallback answers."""
    server.script("primary", Fault.stream("one two three four", stall_after=2, stall_s=30))
    restarts: list[str] = []
    result = ask(chain("primary", "backup"), clock, stream=True, on_restart=restarts.append)
    assert (result.endpoint, server.requests("primary"), len(restarts)) == ("backup", 1, 1)
    assert result.discarded_chars == len("one two ") and clock.waits == []


def test_astream_yields_text_restarts_and_the_completion(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """The async iterator: text as it comes, a restart saying how much to drop, then the Completion; applying
    the restarts gives exactly the answer."""
    server.script("primary", Fault.stream("one two three four", stall_after=2, stall_s=30))
    config = chain("primary", "backup")

    async def collect() -> list[llm.StreamEvent]:
        return [event async for event in llm.astream("hi", config=config, clock=clock)]

    events = asyncio.run(collect())
    kept = kept_text(events)
    done = events[-1]
    assert isinstance(done, llm.StreamDone) and kept == done.completion.content == "ok from backup"
    assert [type(e).__name__ for e in events[:3]] == ["StreamText", "StreamText", "StreamRestart"]
    assert events[2] == llm.StreamRestart(len("one two "), events[2].reason) and "stalled" in events[2].reason
    assert done.completion.ttft_s is not None


# -- breakers and recovery -----------------------------------------------------------------------------------------


def test_traffic_returns_to_a_recovered_primary(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """Primary down: the breaker opens and calls go to the backup; after the open time a probe finds it well
    and, three good probes later, the primary serves again."""
    config = chain("primary", "backup")
    server.outage("primary", 3600, Fault.http(503))
    served = [ask(config, clock).endpoint for _ in range(3)]
    assert served == ["backup"] * 3
    primary_hits = server.requests("primary")
    server.outage("primary", 0)
    clock.advance(61)
    served = [ask(config, clock).endpoint for _ in range(5)]
    assert served == ["primary"] * 5
    assert server.requests("primary") == primary_hits + 5


def test_a_primary_failing_often_below_the_trip_is_passed_over_then_probed_back(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """3 good calls, then two 503s (2 of 5 calls failed: 40%, below the breaker's 50%): the call moves to the
    backup at once instead of retrying, and the next calls skip the primary for 10 s; then one probe finds it
    well and traffic returns."""
    config = chain("primary", "backup")
    assert [ask(config, clock).endpoint for _ in range(3)] == ["primary"] * 3
    server.script("primary", Fault.http(503), Fault.http(503))
    assert ask(config, clock).endpoint == "backup" and server.requests("primary") == 5
    skipped = ask(config, clock)
    assert skipped.endpoint == "backup" and server.requests("primary") == 5
    assert skipped.attempts[0].outcome == "skipped" and "ejected" in skipped.attempts[0].reason
    clock.advance(10)
    assert [ask(config, clock).endpoint for _ in range(2)] == ["primary", "primary"]


def test_a_primary_often_answering_what_is_not_a_chat_completion_is_passed_over(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """3 good calls, then two replies with no choices (2 of 5: the server failing, not the prompt): each call
    is answered by the backup, and the next calls skip the primary until its cooldown ends."""
    config = chain("primary", "backup")
    assert [ask(config, clock).endpoint for _ in range(3)] == ["primary"] * 3
    server.script("primary", Fault.wrong_shape(), Fault.wrong_shape())
    assert [ask(config, clock).endpoint for _ in range(2)] == ["backup", "backup"]
    assert server.requests("primary") == 5
    skipped = ask(config, clock)
    assert skipped.endpoint == "backup" and server.requests("primary") == 5
    assert skipped.attempts[0].outcome == "skipped" and "ejected" in skipped.attempts[0].reason
    clock.advance(10)
    assert ask(config, clock).endpoint == "primary"


def test_answers_failing_the_callers_check_never_count_against_the_endpoint(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """Not JSON where JSON was asked for is the prompt's problem as much as the model's: however often it
    happens, the endpoint is never passed over for it (only the simplified retry and the fallback help)."""
    config = chain("primary", "backup")
    assert [ask(config, clock).endpoint for _ in range(3)] == ["primary"] * 3
    server.script("primary", *[Fault.reply("not json")] * 4)
    server.script("backup", *[Fault.reply('{"ok": true}')] * 2)
    for _ in range(2):
        assert ask(config, clock, json_output=True).endpoint == "backup"
    assert server.requests("primary") == 7
    assert ask(config, clock).endpoint == "primary"
    assert Breakers(StateRoot(home), config.breakers, clock=clock).status("primary")["eject_reason"] is None


def test_a_silent_primary_is_cooled_down_so_the_next_call_does_not_wait_for_it(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """Nothing before the read timeout: the backup answers, and the next call goes straight to the backup."""
    server.set_default("primary", Fault.hang(30))
    config = chain("primary", "backup")
    assert ask(config, clock).endpoint == "backup"
    assert ask(config, clock).endpoint == "backup" and server.requests("primary") == 1


# -- records -------------------------------------------------------------------------------------------------------


def test_a_tracked_call_records_each_attempt(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """Retry, fallback and success events name the endpoint and model; the log has a [FALLBACK] line."""
    server.script("primary", Fault.http(503), Fault.http(401))
    ask(chain("primary", "backup"), clock, task="weekly-report")
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    calls = [(e["event"], e["target"], e["model"]) for e in events if e["event"] != "breaker"]
    assert calls == [
        ("retry", "primary", "model-primary"),
        ("fallback", "primary", "model-primary"),
        ("success", "backup", "model-backup"),
    ]
    log = (home / "logs" / "selfheal.log").read_text()
    assert "[FALLBACK] task=weekly-report target=primary model=model-primary reason=auth" in log


def test_a_calls_success_records_the_whole_calls_time_as_a_run_does(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """The [SUCCESS] event is what analyze_logs.py's run times read: the whole call (its retries and their
    waits), as retry_run.py records a run, not the last attempt alone (0.01 s for a call of several seconds)."""
    server.script("primary", Fault.http(503), Fault.http(503))
    result = ask(chain("primary"), clock, task="weekly-report")
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    (success,) = [e for e in events if e["event"] == "success"]
    assert clock.waits == [1.0, 2.0] and success["duration_s"] >= 3.0
    assert result.attempts[-1].duration_s < 1.0  # the answering attempt's own time stays its own


def test_an_untracked_first_try_success_writes_nothing(
    chain: Callable[..., Config], clock: FakeClock, home: Path
) -> None:
    """No task, no failure: no ledger, no log (only the breaker's state file)."""
    ask(chain("primary"), clock)
    assert not (home / "ledger").exists()


def call_ends(home: Path, task: str) -> list[tuple[str, str | None]]:
    """The task's model-call events in the ledger, in order: (event, target), breaker events left out."""
    events = [
        json.loads(line) for f in sorted((home / "ledger").glob("*.jsonl")) for line in f.read_text().splitlines()
    ]
    return [(e["event"], e["target"]) for e in events if e["task"] == task and e["event"] != "breaker"]


def ledger_events(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((home / "ledger").glob("*.jsonl")) for line in f.read_text().splitlines()]


def runs_counted(home: Path, task: str) -> dict[str, Any]:
    """analyze_logs' run figures for one task, from the ledger."""
    from selfheal.observe.logreport import analyze

    paths = [str(p) for p in sorted((home / "ledger").glob("*.jsonl"))]
    runs: dict[str, Any] = analyze(paths, task=task, config=load_config())["runs"]
    return runs


@pytest.mark.parametrize(("primary_then", "end"), [(None, "success"), (Fault.http(401), "failed")])
def test_a_passed_over_endpoint_asked_last_ends_the_call_once(
    chain: Callable[..., Config],
    clock: FakeClock,
    server: FakeModelServer,
    home: Path,
    primary_then: Fault | None,
    end: str,
) -> None:
    """The primary is passed over (ejected), the backup, last in the chain, fails, and the primary is asked after
    all: the backup's failure is a [FALLBACK] to it, and the primary's answer (or failure) the call's one end,
    so analyze_logs counts one run, not a failed one beside it."""
    config = chain("primary", "backup")
    assert [ask(config, clock).endpoint for _ in range(3)] == ["primary"] * 3
    server.script("primary", Fault.http(503), Fault.http(503))
    assert ask(config, clock).endpoint == "backup"  # the primary is ejected for 10 s
    server.script("backup", Fault.http(401))
    if primary_then is not None:
        server.script("primary", primary_then)
    try:
        result: llm.Completion | ModelCallFailed = ask(config, clock, task="nightly")
    except ModelCallFailed as exc:
        result = exc
    assert [(a.endpoint, a.outcome) for a in result.attempts] == [
        ("primary", "skipped"),
        ("backup", "failed"),
        ("primary", "answered" if end == "success" else "failed"),
    ]
    assert call_ends(home, "nightly") == [("fallback", "backup"), (end, "primary")]
    runs = runs_counted(home, "nightly")
    assert (runs["finished"], runs["succeeded"], runs["failed"]) == (1, int(end == "success"), int(end == "failed"))


def test_a_call_cut_by_its_deadline_with_a_rules_fallback_ends_once(
    write_config: Callable[[str], Path], server: FakeModelServer, tmp_path: Path, home: Path
) -> None:
    """The only model silent until the call's deadline, and a rules fallback with no time left to answer: the
    model's cut attempt is a [FALLBACK] to the rules, whose [FAILED] ends the call; one failed run, not two."""
    server.set_default("primary", Fault.hang(30))
    rules = tmp_path / "rules.py"
    rules.write_text("print('rule-based')\n")
    entries = "    - " + json.dumps({"name": "primary", "base_url": server.url("primary"), "model": "m"})
    write_config(
        FAST.format(entries=entries, jitter="none").replace(
            "models:\n", f"models:\n  rules_fallback: [{PYTHON}, {rules}]\n"
        )
    )
    with pytest.raises(ModelCallFailed):
        complete("hi", config=load_config(), deadline_s=0.3, task="nightly")
    assert call_ends(home, "nightly") == [("fallback", "primary"), ("failed", "rules")]
    runs = runs_counted(home, "nightly")
    assert (runs["finished"], runs["failed"]) == (1, 1)


def test_a_call_whose_endpoints_left_are_all_skipped_after_a_fallback_ends_failed_once(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """The primary refuses the key and the chain moves on, but the backup's breaker is open: nothing else is
    asked, and the call still ends in one [FAILED] (naming why the rest was not asked), so analyze_logs counts
    the failed run instead of a lone [FALLBACK] that ends none."""
    config = chain("primary", "backup")
    breakers = Breakers(StateRoot(home), config.breakers, clock=clock)
    breakers.release(breakers.acquire("backup"), ok=False, error_class="auth")
    server.script("primary", Fault.http(401))
    with pytest.raises(ModelCallFailed) as info:
        ask(config, clock, task="nightly")
    assert [(a.endpoint, a.outcome) for a in info.value.attempts] == [("primary", "failed"), ("backup", "skipped")]
    assert call_ends(home, "nightly") == [("fallback", "primary"), ("failed", None)]
    log = (home / "logs" / "selfheal.log").read_text()
    assert re.search(r"\[FAILED\] task=nightly .*reason=auth", log), log
    runs = runs_counted(home, "nightly")
    assert (runs["finished"], runs["failed"]) == (1, 1)


def test_a_cached_answer_after_a_fallback_ends_the_call_once(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """The primary refuses the key and the backup's answer is in models.cache: the primary's [FALLBACK] is
    followed by the hit and the call's one [SUCCESS] (status cached), so analyze_logs counts one run that
    succeeded, not a lone [FALLBACK] that ends none."""
    cache = "  cache: {ttl_s: 60, max_entries: 10}\n"  # under models:
    assert ask(chain("backup", extra=cache), clock).endpoint == "backup"  # stored under the backup's key
    config = chain("primary", "backup", extra=cache)
    server.script("primary", Fault.http(401))
    result = ask(config, clock, task="nightly")
    assert (result.endpoint, result.cached, server.requests("backup")) == ("backup", True, 1)
    assert call_ends(home, "nightly") == [("fallback", "primary"), ("cache_hit", "backup"), ("success", "backup")]
    log = (home / "logs" / "selfheal.log").read_text()
    assert re.search(r"\[SUCCESS\] task=nightly .*target=backup", log), log
    runs = runs_counted(home, "nightly")
    assert (runs["finished"], runs["succeeded"], runs["failed"]) == (1, 1, 0)


@pytest.mark.parametrize("sizes", [("only",), ("small", "big")])
def test_a_request_too_long_for_the_last_model_ends_the_call_once(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path, sizes: tuple[str, ...]
) -> None:
    """context_length_exceeded on the chain's last entry, no rules fallback: its failure is the call's one
    [FAILED], naming the endpoint that refused the request, and analyze_logs counts one failed run."""
    for name in sizes:
        server.script(name, Fault.http(400, code="context_length_exceeded"))
    config = chain(*sizes, small={"context_tokens": 4096}, big={"context_tokens": 131072})
    with pytest.raises(ModelCallFailed, match="too long for every model"):
        ask(config, clock, task="nightly")
    last = sizes[-1]
    assert call_ends(home, "nightly") == [*(("fallback", n) for n in sizes[:-1]), ("failed", last)]
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    (end,) = [e for e in events if e["event"] == "failed"]
    assert (end["status"], end["error_class"]) == ("context_length_exceeded", "permanent")
    runs = runs_counted(home, "nightly")
    assert (runs["finished"], runs["failed"]) == (1, 1)


# -- async, and the GPU check --------------------------------------------------------------------------------------


def test_acomplete_and_complete_inside_a_running_loop(chain: Callable[..., Config], clock: FakeClock) -> None:
    """The async form works in an event loop, and the sync form still works when called from one."""
    config = chain("primary")

    async def both() -> tuple[str, str]:
        a = await acomplete("hi", config=config, clock=clock)
        b = complete("hi", config=config, clock=clock)
        return a.content, b.content

    assert asyncio.run(both()) == ("ok from primary", "ok from primary")


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvidiaSmi]:
    """A fake nvidia-smi first on PATH; what it reports is set by the test."""
    fake = FakeNvidiaSmi(tmp_path / "bin")
    monkeypatch.setenv("PATH", fake.path_env())
    gpu.clear()
    yield fake
    gpu.clear()


@pytest.mark.parametrize(("free_mib", "answered_by"), [(512, "backup"), (24000, "gpu")])
def test_a_local_endpoint_is_skipped_while_gpu_memory_is_short(
    chain: Callable[..., Config], clock: FakeClock, smi: FakeNvidiaSmi, free_mib: int, answered_by: str
) -> None:
    """nvidia-smi reporting less free memory than the floor skips the local endpoint (class resource)."""
    smi.readings([free_mib])
    result = ask(chain("gpu", "backup", gpu={"local": True}), clock)
    assert result.endpoint == answered_by
    if answered_by == "backup":
        assert (result.attempts[0].outcome, result.attempts[0].error_class) == ("skipped", "resource")


@pytest.mark.parametrize(("which", "answered_by"), [(0, "gpu"), (1, "backup"), ("GPU-fake-1", "backup"), (None, "gpu")])
def test_the_memory_check_reads_the_gpu_the_endpoint_runs_on(
    chain: Callable[..., Config], clock: FakeClock, smi: FakeNvidiaSmi, which: int | str | None, answered_by: str
) -> None:
    """GPU 0 roomy, GPU 1 full: an endpoint on GPU 1 (by index or UUID) is skipped; one on GPU 0, or one
    naming no GPU (the roomiest stands in), is called."""
    smi.readings([24000, 512])
    entry: dict[str, Any] = {"local": True} if which is None else {"gpu": which}
    assert ask(chain("gpu", "backup", gpu=entry), clock).endpoint == answered_by


def test_with_no_endpoint_left_a_short_gpu_is_waited_for(
    chain: Callable[..., Config], clock: FakeClock, smi: FakeNvidiaSmi, server: FakeModelServer
) -> None:
    """The only endpoint's GPU is short: nvidia-smi is re-read every gpu_poll_s (5 s) until it has room,
    then the request goes out (instead of giving up at once)."""
    smi.readings([512], [512], [2048])
    result = ask(chain("gpu", gpu={"gpu": 0}), clock)
    assert (result.endpoint, clock.waits, server.requests("gpu")) == ("gpu", [5.0, 5.0], 1)


def test_a_gpu_that_stays_short_ends_in_not_attempted_within_the_deadline(
    chain: Callable[..., Config], clock: FakeClock, smi: FakeNvidiaSmi, server: FakeModelServer
) -> None:
    """Memory never frees: the wait ends with the call's deadline (20 s here), nothing was sent: exit 4."""
    smi.readings([512])
    with pytest.raises(NoEndpointAvailable, match=r"waited 20s") as info:
        ask(chain("gpu", gpu={"gpu": 0}), clock)
    assert (sum(clock.waits), server.requests("gpu"), info.value.exit_code) == (20.0, 0, 4)


TORCH_OOM = "CUDA out of memory. Tried to allocate 8.00 GiB (GPU 0; 23.65 GiB total capacity)"


def test_gpu_out_of_memory_as_500_falls_over_at_once(
    chain: Callable[..., Config], clock: FakeClock, smi: FakeNvidiaSmi, server: FakeModelServer
) -> None:
    """A local server's CUDA OOM (HTTP 500) is `resource`: retrying at once cannot help, the fallback answers
    without any wait."""
    server.script("gpu", Fault.http(500, message=TORCH_OOM))
    result = ask(chain("gpu", "backup", gpu={"gpu": 0}), clock)
    assert (result.endpoint, clock.waits, server.requests("gpu")) == ("backup", [], 1)
    assert outcomes(result)[0] == ("gpu", "failed", "resource")


def test_gpu_out_of_memory_with_no_endpoint_left_waits_for_memory(
    chain: Callable[..., Config], clock: FakeClock, smi: FakeNvidiaSmi, server: FakeModelServer
) -> None:
    """Alone, an OOM'd local endpoint is retried once its GPU has room again (re-read every 5 s), not at once."""
    smi.readings([4000], [512], [512], [8000])
    server.script("gpu", Fault.http(500, message=TORCH_OOM))
    result = ask(chain("gpu", gpu={"gpu": 0}), clock, deadline_s=300)
    assert (result.endpoint, clock.waits, server.requests("gpu")) == ("gpu", [5.0, 5.0, 5.0], 2)


def test_a_model_still_loading_is_waited_for_when_alone(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """llama.cpp's 503 "Loading model": with a fallback, move on; alone, wait as the resource policy says
    (60 s, equal jitter: 30-60 s), not the 1 s of a passing 503."""
    loading = Fault.raw(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
    server.script("primary", loading)
    assert ask(chain("primary", "backup"), clock).endpoint == "backup" and clock.waits == []
    server.script("solo", loading)
    result = ask(chain("solo"), clock, deadline_s=300)
    assert result.endpoint == "solo" and len(clock.waits) == 1 and 30.0 <= clock.waits[0] <= 60.0


def test_failure_reasons_carry_no_unrelated_chained_errors(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A stream cut is reported as itself, not with leftovers of the sync wrapper's own bookkeeping."""
    server.script("primary", Fault.stream("one two three", cut_after=1), Fault.stream("fine"))
    result = ask(chain("primary"), clock, stream=True)
    assert result.attempts[0].reason == "StreamCut: stream ended before the answer was complete (4 characters received)"


@pytest.mark.parametrize(
    "given", [{"prompt": ""}, {"prompt": " \n\t"}, {"messages": []}], ids=["empty", "blank", "no-messages"]
)
def test_an_empty_prompt_is_refused_before_any_request(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, given: dict[str, Any]
) -> None:
    """As llm_call.py refuses an empty prompt (exit 2), the library call it documents as the same call refuses one:
    it was sent, and each endpoint was asked to answer nothing."""
    with pytest.raises(ValueError, match="nothing was sent"):
        complete(config=chain("primary"), clock=clock, **given)
    assert server.requests("primary") == 0


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            r"messages\[0\] \(user\): content must be text",
        ),
        ([{"role": "user", "content": "hi"}, {"content": "x"}], r"messages\[1\]: no role"),
    ],
    ids=["content-parts", "no-role"],
)
def test_messages_the_chain_cannot_send_as_text_are_named_before_any_request(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, given: list[dict[str, Any]], said: str
) -> None:
    """Content given as parts (an openai user's image message) failed deep inside the chain with a TypeError; it
    is named, by its index, before any request."""
    with pytest.raises(ValueError, match=said):
        complete(messages=given, config=chain("primary"), clock=clock)
    assert server.requests("primary") == 0


def test_an_openai_users_messages_with_a_name_are_sent_as_given(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    given = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi", "name": "ops"}]
    assert complete(messages=given, config=chain("primary"), clock=clock).content == "ok from primary"


def test_a_cancelled_call_gives_its_breaker_permit_back(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """Cancelling a call mid-request (asyncio.wait_for in the caller's code) leaves no permit in flight,
    so the breaker's probes are not blocked by a request that no longer exists."""
    config = chain("primary")
    server.script("primary", Fault.hang(30))

    async def impatient() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(acomplete("hi", config=config, clock=clock), 0.3)

    asyncio.run(impatient())
    status = Breakers(StateRoot(home), config.breakers, clock=clock).status("primary")
    assert status["in_flight"] == 0 and status["state"] == "closed"


@pytest.mark.parametrize("fallback_first", [False, True], ids=["asked-first", "after-a-fallback"])
def test_a_call_for_a_task_cancelled_midway_ends_once_as_interrupted(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path, fallback_first: bool
) -> None:
    """A call for a task cancelled while a model is silent (the caller's own timeout; llm_call.py's SIGTERM cancels
    it the same way): its one end is a [FAILED] with status interrupted, so analyze_logs counts the task's run as
    failed, not lost; after a [FALLBACK] it was left with no end at all."""
    config = chain("primary", "backup")
    if fallback_first:
        server.script("primary", Fault.http(401))
        server.script("backup", Fault.hang(30))
    else:
        server.script("primary", Fault.hang(30))

    async def impatient() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(acomplete("hi", config=config, clock=clock, task="nightly"), 0.5)

    asyncio.run(impatient())
    asked = "backup" if fallback_first else "primary"
    before = [("fallback", "primary")] if fallback_first else []
    assert call_ends(home, "nightly") == [*before, ("failed", asked)]
    statuses = [e["status"] for e in ledger_events(home) if e["event"] == "failed"]
    assert statuses == ["interrupted"], statuses
    runs = runs_counted(home, "nightly")
    assert (runs["finished"], runs["succeeded"], runs["failed"]) == (1, 0, 1)


def test_ctrl_c_during_a_sync_call_cancels_it_and_gives_its_permit_back(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, home: Path
) -> None:
    """complete() runs on the calling thread's own loop; Ctrl-C there ends the request at once and the
    breaker shows nothing in flight (a dangling permit would block the probes of a half-open breaker)."""
    import signal
    import threading

    config = chain("primary")
    server.script("primary", Fault.hang(30))
    # A real SIGINT to the main thread, as a terminal's Ctrl-C is: it wakes the loop's selector at once
    # (_thread.interrupt_main only sets a flag, seen when the selector next wakes, late under load).
    # A process started in the background (CI) inherits SIGINT ignored, and Python then keeps it ignored:
    # put back the handler an interactive terminal's python has, for this test only.
    main = threading.main_thread().ident
    assert main is not None
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt_once_the_request_hangs() -> None:  # not before: the hang would be left for the next request
        deadline = time.monotonic() + 30
        while server.requests("primary") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)

    try:
        threading.Thread(target=interrupt_once_the_request_hangs, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            complete("hi", config=config, clock=clock)
    finally:
        signal.signal(signal.SIGINT, previous)
    status = Breakers(StateRoot(home), config.breakers, clock=clock).status("primary")
    assert status["in_flight"] == 0
    assert ask(config, clock).content == "ok from primary"  # the thread's loop still works afterwards


def test_sync_calls_from_several_threads_at_once(chain: Callable[..., Config], clock: FakeClock) -> None:
    """Each thread runs its calls on a loop of its own; none waits for another's."""
    from concurrent.futures import ThreadPoolExecutor

    config = chain("primary")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(config, clock).content, range(12)))
    assert answers == ["ok from primary"] * 12


# -- the API -----------------------------------------------------------------------------------------------------


def test_load_config_takes_a_dict_or_a_str_path(tmp_path: Path) -> None:
    """Settings can be given as a mapping or as a path in a str; a bad value in a mapping is named clearly."""
    assert load_config({"models": {"deadline_s": 5}}).models.deadline_s == 5.0
    path = tmp_path / "mine.yaml"
    path.write_text("models: {deadline_s: 7}\n")
    assert load_config(str(path)).models.deadline_s == 7.0
    assert load_config(user_file=str(path)).models.deadline_s == 7.0
    with pytest.raises(ConfigError, match=r"settings given to load_config.*models\.deadline_s.*must be > 0"):
        load_config({"models": {"deadline_s": -1}})


def test_the_old_name_of_the_read_timeout_still_works_with_a_note(
    write_config: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """models.timeout_s is now read_timeout_base_s (it is the base of the read timeout, not all of it): the old
    name is read, and a one-line warning says so; both names at once is an error."""
    write_config("models:\n  timeout_s: 12\n")
    with caplog.at_level("WARNING"):
        config = load_config()
    assert config.models.read_timeout_base_s == 12.0
    assert "models.timeout_s is now called models.read_timeout_base_s" in caplog.text
    with pytest.raises(ConfigError, match="keep read_timeout_base_s"):
        load_config({"models": {"timeout_s": 1, "read_timeout_base_s": 2}})


def test_a_failed_call_carries_the_http_status_and_the_provider_code(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """The caller can branch on .status and .code without digging through the attempts."""
    server.script("solo", Fault.http(401, code="invalid_api_key"))
    with pytest.raises(ModelCallFailed) as info:
        ask(chain("solo"), clock)
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    assert info.value.to_json()["status"] == 401


def test_a_content_refusal_carries_only_the_providers_words(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """provider_reason is what the provider said, without our own 'HTTP 400: BadRequestError ...' prefix."""
    server.script("primary", Fault.http(400, code="content_policy_violation", message="Your request was rejected"))
    with pytest.raises(ContentRefused) as info:
        ask(chain("primary"), clock)
    assert info.value.provider_reason == "Your request was rejected"
    assert (info.value.status, info.value.code) == (400, "content_policy_violation")


def test_acomplete_reuses_its_clients_within_an_event_loop(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """Three calls in one event loop share one client, so one kept-alive connection serves them all."""
    config = chain("primary")

    async def three() -> None:
        for _ in range(3):
            await acomplete("hi", config=config, clock=clock)

    asyncio.run(three())
    assert (server.requests("primary"), server.connections()) == (3, 1)


# -- bench/gpu_check.py's scenarios, against a fake nvidia-smi ----------------------------------------------------


class FakeLab:
    """bench/gpu_scenarios.py's Lab made of the fake server and the fake nvidia-smi, on the fake clock."""

    def __init__(self, server: FakeModelServer, smi: FakeNvidiaSmi, clock: FakeClock) -> None:
        self.server, self.smi, self.clock = server, smi, clock
        self.local_url, self.fallback_url = server.url("local"), server.url("fallback")
        self.poll_s = 5.0
        self.free = 24000

    def squeeze(self) -> None:
        self.free = 512
        self.smi.readings([self.free])

    def tight(self) -> None:
        self.free = 2048  # above the 1024 MiB floor: the pre-check passes, the request runs out of memory
        self.smi.readings([self.free])
        self.server.script("local", Fault.http(500, message=TORCH_OOM))

    def release_after(self, seconds: float) -> None:
        polls = math.ceil(seconds / self.poll_s)  # the pre-check, then a reading per poll
        self.smi.readings(*([[self.free]] * polls), [24000])

    def local_requests(self) -> int:
        return self.server.requests("local")


def test_the_gpu_check_scenarios_pass_against_a_fake_nvidia_smi(
    server: FakeModelServer, smi: FakeNvidiaSmi, clock: FakeClock
) -> None:
    """The very scenarios bench/gpu_check.py runs on a real GPU: pre-check skip, OOM as 500, and waiting for
    memory (after a short pre-check, and after an OOM) with no fallback."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_scenarios
    finally:
        sys.path.remove(str(ROOT / "bench"))
    outcomes = gpu_scenarios.run_all(FakeLab(server, smi, clock), release_s=10.0)
    assert [(o.scenario, o.ok) for o in outcomes] == [
        ("precheck_skip", True),
        ("oom_as_500", True),
        ("wait_without_fallback", True),
        ("oom_wait_without_fallback", True),
    ], outcomes
    assert [round(o.seconds) for o in outcomes[2:]] == [10, 10]


def test_when_every_model_fails_the_rules_fallback_answers_marked_as_rules(
    write_config: Callable[[str], Path], clock: FakeClock, tmp_path: Path, home: Path
) -> None:
    """The second document's chain ends in a rule engine: with every endpoint down, models.rules_fallback gets
    the prompt on stdin and its answer comes back marked by_rules; a rules command that fails changes nothing."""
    rules = tmp_path / "rules.py"
    rules.write_text("import sys\nprint('rule-based: ' + sys.stdin.read().split()[0])\n")
    entries = "    - " + json.dumps({"name": "dead", "base_url": dead_url(), "model": "m"})
    write_config(
        FAST.format(entries=entries, jitter="none").replace(
            "models:\n", f"models:\n  rules_fallback: [{PYTHON}, {rules}]\n"
        )
    )
    result = ask(load_config(), clock)
    assert (result.content, result.endpoint, result.by_rules, result.fallback_used) == (
        "rule-based: Summarise",
        "rules",
        True,
        True,
    )
    assert result.attempts[-1].outcome == "answered" and result.to_json()["by_rules"] is True
    # In the ledger the call ends as the rules engine ended it: the last model's failure is a fallback to it,
    # and its answer the call's success (it read as a failed call that had been answered).
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [(e["event"], e["target"]) for e in events if e["event"] != "breaker"][-2:] == [
        ("fallback", "dead"),
        ("success", "rules"),
    ]
    assert "[SUCCESS] task=- target=rules" in (home / "logs" / "selfheal.log").read_text()
    rules.write_text("raise SystemExit(1)\n")
    with pytest.raises(ModelCallFailed):
        ask(load_config(), clock)
    events = [json.loads(line) for f in (home / "ledger").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [(e["event"], e["target"]) for e in events if e["event"] != "breaker"][-2:] == [
        ("fallback", "dead"),
        ("failed", "rules"),
    ]
    assert events[-1]["reason"].startswith("every model failed, and the rules fallback gave no answer: ")


# -- keys, deadlines and streams at their edges ----------------------------------------------------------------------

KEY = "Zq9xLmP4tR7wK2vBq8Yc"  # no recognisable shape: only its being the chain's key can mask it


@pytest.fixture
def keyed(chain: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Config]:
    """chain(...) whose every entry takes its key from $VLLM_BEARER (a name the secret-name rule misses)."""
    monkeypatch.setenv("VLLM_BEARER", KEY)

    def make(*names: str) -> Config:
        return chain(*names, **{name: {"api_key_env": "VLLM_BEARER"} for name in names})

    return make


def test_a_key_the_server_echoes_is_masked_in_every_error(
    keyed: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A 401 or a refusal quoting the key that was sent: the key is nowhere in the error (message, repr,
    to_json(), each attempt's reason, the provider's reason); the rest of the server's words are."""
    server.set_default("primary", Fault.http(401, code="invalid_api_key", message=f"Incorrect API key: {KEY}."))
    with pytest.raises(ModelCallFailed) as refused_key:
        ask(keyed("primary"), clock)
    server.script("other", Fault.http(400, code="content_policy_violation", message=f"refused for {KEY}"))
    with pytest.raises(ContentRefused) as refused_content:
        ask(keyed("other"), clock)
    for error in (refused_key.value, refused_content.value):
        shown = [str(error), repr(error), json.dumps(error.to_json()), *(a.reason for a in error.attempts)]
        assert not [text for text in shown if KEY in text], shown
    assert "Incorrect API key: ***." in refused_key.value.attempts[0].reason
    assert refused_content.value.provider_reason == "refused for ***"


def test_a_key_in_the_models_answer_is_masked_also_when_a_stream_splits_it(
    keyed: Callable[..., Config], clock: FakeClock, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model echoing the key: the answer has it masked; streamed, so does the text on_text got, also when
    the key arrives in two chunks (the start of a key is held back until the next chunk shows what it is)."""
    server.script("primary", Fault.reply(f"your key is {KEY}"))
    assert ask(keyed("primary"), clock).content == "your key is ***"
    spaced = "Zq9xLmP4 tR7wK2vBq8Yc"  # the fake streams a word per chunk: this key comes in two
    monkeypatch.setenv("VLLM_BEARER", spaced)
    server.script("primary", Fault.stream(f"your key is {spaced} ok"))
    pieces: list[str] = []
    result = ask(keyed("primary"), clock, stream=True, on_text=pieces.append)
    assert result.content == "".join(pieces) == "your key is *** ok"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_each_asyncio_run_closes_its_connection_when_its_loop_ends(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A script calling asyncio.run(acomplete(...)) again and again: each loop's client and connection are
    closed as that loop ends, so the process's open files do not grow with the number of calls."""
    import gc
    import os

    config = chain("primary")
    asyncio.run(acomplete("hi", config=config, clock=clock))
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        asyncio.run(acomplete("hi", config=config, clock=clock))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before < 5
    assert server.requests("primary") == 11 and len(llm._loop_clients) <= 1


def test_threads_that_called_complete_and_ended_leave_no_connection_behind(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A service that calls complete() from a new thread per job: each ended thread's loop and connection are
    closed when the next thread starts its own, so open files do not grow with the number of threads."""
    import gc
    import os
    import threading

    config = chain("primary")

    def one() -> None:
        ask(config, clock)

    def in_a_thread() -> None:
        thread = threading.Thread(target=one)
        thread.start()
        thread.join()

    in_a_thread()
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        in_a_thread()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before < 5
    assert server.requests("primary") == 21
    assert sum(not t.is_alive() for _, _, t in llm._private._thread_loops) <= 1


@pytest.fixture
def drops_after_finish() -> Iterator[str]:
    """An endpoint whose stream sends the whole answer and its finish_reason, then drops the connection in the
    middle of the chunked encoding (no usage, no [DONE], no last chunk), as a proxy or a restarting server
    does. Yields its base URL."""
    import threading

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        piece = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        data = b"data: " + json.dumps(piece).encode() + b"\n\n"
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += conn.recv(65536)
                head, _, body = received.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                for word in ("The ", "whole ", "answer."):
                    conn.sendall(chunk({"content": word}))
                conn.sendall(chunk({}, "stop"))
                time.sleep(0.05)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    listener.close()


def test_a_stream_dropped_after_its_finish_reason_is_a_complete_answer(
    write_config: Callable[[str], Path], clock: FakeClock, server: FakeModelServer, drops_after_finish: str
) -> None:
    """The model said it was done; the connection then broke before the stream's formal end: the answer is
    complete and kept (not thrown away, retried and answered by the backup)."""
    entries = [
        {"name": "primary", "base_url": drops_after_finish, "model": "m"},
        {"name": "backup", "base_url": server.url("backup"), "model": "b"},
    ]
    write_config(FAST.format(entries="\n".join("    - " + json.dumps(e) for e in entries), jitter="none"))
    restarts: list[str] = []
    result = ask(load_config(), clock, stream=True, on_restart=restarts.append)
    assert (result.endpoint, result.content, restarts) == ("primary", "The whole answer.", [])
    assert outcomes(result) == [("primary", "answered", None)]


def test_a_hung_primary_leaves_time_for_the_backup_when_the_deadline_is_shorter_than_its_read_timeout(
    chain: Callable[..., Config], server: FakeModelServer
) -> None:
    """Deadline 1 s, read timeout 5 s (llm_call.py --timeout 20 with the 40 s default is the same): the
    hung primary gets its share, half of the deadline, and is ejected as silent; the backup answers in time,
    and the next call goes straight to the backup."""
    server.set_default("primary", Fault.hang(30))
    config = chain("primary", "backup", primary={"read_timeout_base_s": 5})
    started = time.monotonic()
    result = complete("hi", config=config, deadline_s=1.0)
    assert result.endpoint == "backup" and time.monotonic() - started < 1.0
    assert outcomes(result)[0] == ("primary", "failed", "timeout")
    assert "its share of the call's deadline" in result.attempts[0].reason
    again = complete("hi", config=config, deadline_s=1.0)
    assert (again.endpoint, again.attempts[0].outcome, server.requests("primary")) == ("backup", "skipped", 1)


def test_waiting_for_gpu_memory_counts_nvidia_smis_own_time_against_the_deadline(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvidia-smi taking 1 s a run (no persistence mode) and memory that never frees: the wait still ends
    at the call's 6 s deadline, every run is bounded by the time left, and the wait reported is the real one."""
    bounds: list[float | None] = []

    async def slow_reading(which: int | str | None, *, fresh: bool = False, timeout_s: float | None = None) -> int:
        bounds.append(timeout_s)
        clock.advance(1.0)
        return 512

    monkeypatch.setattr(gpu, "free_mb", slow_reading)
    started = clock.monotonic()
    with pytest.raises(NoEndpointAvailable, match=r"waited 5s"):
        ask(chain("gpu", gpu={"gpu": 0}, extra="  gpu_poll_s: 1\n"), clock, deadline_s=6)
    assert clock.monotonic() - started <= 6.0 and server.requests("gpu") == 0
    assert bounds and all(b is not None and 0 < b <= 6.0 for b in bounds), bounds


def test_a_hanging_rules_fallback_is_stopped_with_its_children_at_the_deadline(
    write_config: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """rules_fallback `sh -c '...; sleep 5'` (a child that holds the pipe) and a 0.5 s deadline: the whole
    process group is killed when the deadline passes, and the warning says why it could not answer."""
    entries = "    - " + json.dumps({"name": "dead", "base_url": dead_url(), "model": "m"})
    rules = json.dumps(["sh", "-c", "cat >/dev/null; sleep 5; echo late"])
    write_config(
        FAST.format(entries=entries, jitter="none").replace("models:\n", f"models:\n  rules_fallback: {rules}\n")
    )
    started = time.monotonic()
    with caplog.at_level("WARNING"), pytest.raises(ModelCallFailed):
        complete("hi", config=load_config(), deadline_s=0.5)
    assert time.monotonic() - started < 1.5
    assert re.search(r"the rules fallback sh could not answer: \S", caplog.text), caplog.text


def test_a_stream_answered_by_the_rules_fallback_carries_the_rules_answer(
    write_config: Callable[[str], Path], clock: FakeClock, server: FakeModelServer
) -> None:
    """Every model failed after some streamed text, and the rules fallback answered: the stream says to drop
    that text and then carries the rules' answer, so the text kept is the answer StreamDone holds."""
    server.set_default("primary", Fault.stream("partial words here", cut_after=2))
    entries = "    - " + json.dumps({"name": "primary", "base_url": server.url("primary"), "model": "m"})
    rules = json.dumps([PYTHON, "-c", "import sys; sys.stdin.read(); print('rules answer')"])
    text = FAST.format(entries=entries, jitter="none").replace("models:\n", f"models:\n  rules_fallback: {rules}\n")
    write_config(text + "policies: {transient: {retries: 0}}\n")
    config = load_config()

    async def collect() -> list[llm.StreamEvent]:
        return [event async for event in llm.astream("hi", config=config, clock=clock)]

    events = asyncio.run(collect())
    kept = kept_text(events)
    done = events[-1]
    assert isinstance(done, llm.StreamDone) and done.completion.by_rules
    assert kept == done.completion.content == "rules answer"


@pytest.mark.parametrize("deadline", [0, -5, math.nan])
def test_a_deadline_that_is_not_a_positive_number_of_seconds_is_refused(
    chain: Callable[..., Config], server: FakeModelServer, deadline: float
) -> None:
    """deadline_s 0, negative or NaN is the caller's mistake, named as such: not "no endpoint available"."""
    with pytest.raises(ValueError, match=f"deadline_s must be > 0, got {deadline}"):
        complete("hi", config=chain("primary"), deadline_s=deadline)
    assert server.requests("primary") == 0


def test_a_server_rejecting_stream_options_with_422_is_asked_without_them_from_then_on(
    chain: Callable[..., Config], clock: FakeClock, server: FakeModelServer
) -> None:
    """A FastAPI-style server refuses the field it does not know with 422 ("extra inputs are not permitted"),
    not 400: asked again at once without it, and later calls leave it out."""
    forbidden = {
        "detail": [
            {"type": "extra_forbidden", "loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted"}
        ]
    }
    server.script("strict", Fault.raw(422, forbidden))
    config = chain("strict", "backup")
    first = ask(config, clock, stream=True)
    assert (first.endpoint, server.requests("strict"), len(first.attempts)) == ("strict", 2, 1)
    ask(config, clock, stream=True)
    assert server.requests("strict") == 3 and "stream_options" not in server.bodies("strict")[-1]
