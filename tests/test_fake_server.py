"""The fake model endpoint users test their own automations against: each fault does what it says."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from selfheal.testing import FakeModelServer, Fault


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer(seed=3) as srv:
        yield srv


def post(
    server: FakeModelServer, endpoint: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        server.url(endpoint) + "/chat/completions",
        data=json.dumps(body or {"model": "m", "messages": []}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_faults_are_served_in_order_then_a_normal_reply(server: FakeModelServer) -> None:
    """A script is used up one request at a time; afterwards the endpoint answers normally."""
    server.script("a", Fault.http(503), Fault.http(429, retry_after=7, code="rate_limit_exceeded"))
    status, _, _ = post(server, "a")
    assert status == 503
    status, headers, body = post(server, "a")
    assert status == 429 and headers["retry-after"] == "7"
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    status, _, body = post(server, "a")
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "ok from a"
    assert server.requests("a") == 3


def test_endpoints_are_independent(server: FakeModelServer) -> None:
    """Each path prefix is its own endpoint with its own script and count."""
    server.script("a", Fault.http(500))
    assert post(server, "b")[0] == 200
    assert (server.requests("a"), server.requests("b")) == (0, 1)


def test_a_timed_outage_ends(server: FakeModelServer) -> None:
    """outage() answers 503 to everyone until it is over (a 503 burst), then the endpoint is back."""
    server.outage("a", 0.3)
    assert [post(server, "a")[0] for _ in range(3)] == [503, 503, 503]
    time.sleep(0.35)
    assert post(server, "a")[0] == 200


def test_a_default_fault_rate_is_seeded_and_roughly_kept(server: FakeModelServer) -> None:
    """set_default(rate=0.4) gives the fault to about 40% of requests, the same ones for the same seed."""
    server.set_default("a", Fault.wrong_shape(), rate=0.4)
    shapes = ["choices" not in json.loads(post(server, "a")[2]) for _ in range(200)]
    assert 60 <= sum(shapes) <= 100
    with FakeModelServer(seed=3) as again:
        again.set_default("a", Fault.wrong_shape(), rate=0.4)
        assert shapes[:20] == ["choices" not in json.loads(post(again, "a")[2]) for _ in range(20)]


def test_reset_drops_the_connection(server: FakeModelServer) -> None:
    """reset() closes the socket with an RST before any answer."""
    server.script("a", Fault.reset())
    with pytest.raises((ConnectionResetError, urllib.error.URLError, http.client.RemoteDisconnected)):
        post(server, "a")


def test_hang_ends_when_the_server_stops() -> None:
    """A hanging request does not keep the server (or the test) alive after stop()."""
    server = FakeModelServer().start()
    server.script("a", Fault.hang(3600))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /a/v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\n{}")
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    sock.close()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (Fault.malformed(), lambda body: not body.startswith(b"{")),
        (Fault.empty(), lambda body: json.loads(body)["choices"][0]["message"]["content"] == ""),
        (Fault.truncated("half"), lambda body: json.loads(body)["choices"][0]["finish_reason"] == "length"),
        (Fault.reply("custom"), lambda body: json.loads(body)["choices"][0]["message"]["content"] == "custom"),
    ],
)
def test_answer_faults(server: FakeModelServer, fault: Fault, check: Any) -> None:
    """malformed, empty, truncated and custom replies come back as described."""
    server.script("a", fault)
    assert check(post(server, "a")[2])


def test_streams_speak_server_sent_events_the_openai_client_reads(server: FakeModelServer) -> None:
    """A streamed reply is chunks of `chat.completion.chunk` ending in [DONE], readable by the real client."""
    server.script("a", Fault.stream("one two three"))
    client = openai.OpenAI(base_url=server.url("a"), api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model="m", messages=[], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three" and chunks[-1].choices[0].finish_reason == "stop"
    client.close()


def test_latency_delays_every_answer(server: FakeModelServer) -> None:
    """latency() makes an endpoint answer late, like one across a network; others are unaffected."""
    server.latency("far", 0.5)
    started = time.monotonic()
    assert post(server, "far")[0] == 200
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    post(server, "near")
    assert time.monotonic() - started < 0.5  # not delayed (a loaded machine may still take a moment)


def test_raw_faults_send_other_servers_error_shapes(server: FakeModelServer) -> None:
    """Fault.raw sends a body as non-OpenAI servers do: Ollama's {"error": "..."} or plain text."""
    server.script("a", Fault.raw(500, {"error": "model requires more system memory"}), Fault.raw(503, "Loading model"))
    status, _, body = post(server, "a")
    assert (status, json.loads(body)) == (500, {"error": "model requires more system memory"})
    status, _, body = post(server, "a")
    assert (status, body) == (503, b"Loading model")


def test_a_stream_carries_usage_only_when_asked_and_reasoning_first(server: FakeModelServer) -> None:
    """stream_options.include_usage adds a usage chunk after the finish; reasoning deltas come before the text."""
    client = openai.OpenAI(base_url=server.url("s"), api_key="x", max_retries=0)
    server.script("s", Fault.stream("two words", reasoning="hmm"), Fault.stream("two words"))
    asked = list(
        client.chat.completions.create(model="m", messages=[], stream=True, stream_options={"include_usage": True})
    )
    plain = list(client.chat.completions.create(model="m", messages=[], stream=True))
    assert getattr(asked[0].choices[0].delta, "reasoning_content", None) == "hmm"
    assert asked[-1].usage is not None and not asked[-1].choices
    assert all(chunk.usage is None for chunk in plain)
    client.close()


def test_an_endpoint_can_refuse_stream_options_and_connections_are_counted(server: FakeModelServer) -> None:
    """reject_stream_options answers 400 to a request with the option; one kept-alive client is one connection."""
    server.reject_stream_options("old")
    client = openai.OpenAI(base_url=server.url("old"), api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        client.chat.completions.create(model="m", messages=[], stream=True, stream_options={"include_usage": True})
    for _ in range(2):
        client.chat.completions.create(model="m", messages=[])
    client.close()
    assert server.requests("old") == 3 and server.bodies("old")[0]["stream_options"] == {"include_usage": True}
    assert server.connections() <= 2
