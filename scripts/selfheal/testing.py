"""Helpers for testing code that uses self-heal (ours and users'): no waits, a fake clock, a fake model.

from selfheal.testing import FakeClock, FakeModelServer, Fault, no_waits

with FakeModelServer() as server:
    server.script("primary", Fault.http(429, retry_after=2), Fault.reset())
    client = openai.OpenAI(base_url=server.url("primary"), api_key="x", max_retries=0)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ._testing import is_testing, no_waits, set_testing

__all__ = ["FakeClock", "FakeModelServer", "FakeNvidiaSmi", "Fault", "is_testing", "no_waits", "set_testing"]


class FakeClock:
    """A clock that only moves when told to; sleep() records the wait and advances time by it."""

    def __init__(self, *, wall: float = 1_800_000_000.0, monotonic: float = 1_000.0) -> None:
        self._wall = wall
        self._mono = monotonic
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@dataclass(frozen=True)
class Fault:
    """What the fake endpoint does with one request."""

    kind: str  # reply | http | reset | hang | malformed | wrong_shape | empty | truncated
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 0.0
    content: str | None = None
    # How a streamed answer misbehaves (only when the request asks for stream=true):
    first_delay_s: float = 0.0  # silence before the first chunk (headers already sent)
    cut_after: int | None = None  # close the connection after this many chunks, no finish, no [DONE]
    stall_after: int | None = None  # after this many chunks, go quiet for `seconds`
    bad_chunk_at: int | None = None  # this chunk (0-based) is not JSON
    done: bool = True  # send the [DONE] sentinel (False: send the finish chunk, then hold the line open)
    reasoning: str | None = None  # streamed first as `reasoning_content` deltas (a thinking model)
    chunk_delay_s: float = 0.0  # pause before every chunk

    @classmethod
    def reply(cls, content: str) -> Fault:
        return cls("reply", content=content)

    @classmethod
    def truncated(cls, content: str = "The answer starts and then") -> Fault:
        """A reply cut off at the token limit (finish_reason=length)."""
        return cls("truncated", content=content)

    @classmethod
    def stream(
        cls,
        content: str | None = None,
        *,
        first_delay_s: float = 0.0,
        cut_after: int | None = None,
        stall_after: int | None = None,
        stall_s: float = 0.0,
        bad_chunk_at: int | None = None,
        done: bool = True,
        reasoning: str | None = None,
        chunk_delay_s: float = 0.0,
    ) -> Fault:
        """A streamed reply (one chunk per word) that misbehaves as told; a plain reply if not streamed.
        reasoning: words sent first as `reasoning_content` deltas; chunk_delay_s: a pause before each chunk."""
        return cls(
            "reply",
            content=content,
            first_delay_s=first_delay_s,
            cut_after=cut_after,
            stall_after=stall_after,
            seconds=stall_s,
            bad_chunk_at=bad_chunk_at,
            done=done,
            reasoning=reasoning,
            chunk_delay_s=chunk_delay_s,
        )

    @classmethod
    def http(
        cls,
        status: int,
        *,
        retry_after: float | str | None = None,
        code: str | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """An error status with an OpenAI-style error body (`{"error": {"message", "type", "code"}}`)."""
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["retry-after"] = str(retry_after)
        body = {
            "error": {
                "message": message or f"fake error {status}",
                "type": code or "fake_error",
                "param": None,
                "code": code,
            }
        }
        return cls("http", status=status, headers=hdrs, body=body)

    @classmethod
    def raw(cls, status: int, body: Any, *, headers: dict[str, str] | None = None) -> Fault:
        """An answer with this status and body, as a non-OpenAI server sends it: a dict or list goes out as
        JSON (Ollama's `{"error": "..."}`, vLLM's `{"object": "error", ...}`), a str as it is."""
        return cls("http", status=status, headers=dict(headers or {}), body=body)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection with a TCP reset before answering."""
        return cls("reset")

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Say nothing for `seconds` (or until the server stops), then answer normally."""
        return cls("hang", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def wrong_shape(cls) -> Fault:
        """200 with JSON that is not a chat completion."""
        return cls("wrong_shape")

    @classmethod
    def empty(cls) -> Fault:
        """200 with a chat completion whose content is empty."""
        return cls("empty")


class FakeModelServer:
    """A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions API, one path prefix per
    fake endpoint (`url("primary")` -> http://127.0.0.1:PORT/primary/v1). Each endpoint answers its
    scripted faults in order, then its default (a normal reply unless set_default() says otherwise).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int = 0) -> None:
        self._queues: dict[str, deque[Fault]] = defaultdict(deque)
        self._defaults: dict[str, tuple[Fault, float]] = {}
        self._outages: dict[str, tuple[float, Fault]] = {}
        self._latency: dict[str, float] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._bodies: dict[str, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=100))
        self._headers: dict[str, deque[dict[str, str]]] = defaultdict(lambda: deque(maxlen=100))
        self._no_stream_options: set[str] = set()
        self._connections = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes; with Nagle's algorithm a kept-alive client
            # would wait out a delayed ACK (40 ms) on every request after its first. No real server does.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                with server._lock:
                    server._connections += 1
                super().setup()

            def do_POST(self) -> None:
                server._handle(self)

            def do_GET(self) -> None:
                server._handle(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that gives up (a timeout, a cancelled call) resets its connection: what the
                # faults are for, not an error of the server's worth a traceback on stderr.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._httpd = Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, endpoint: str = "default") -> str:
        return f"http://127.0.0.1:{self.port}/{endpoint}/v1"

    def script(self, endpoint: str, *faults: Fault) -> None:
        with self._lock:
            self._queues[endpoint].extend(faults)

    def set_default(self, endpoint: str, fault: Fault | None, *, rate: float = 1.0) -> None:
        """What the endpoint does once its script is used up: `fault` for a share `rate` of requests
        (drawn from the server's seeded random source), a normal reply for the rest. None: always reply."""
        with self._lock:
            if fault is None:
                self._defaults.pop(endpoint, None)
            else:
                self._defaults[endpoint] = (fault, rate)

    def latency(self, endpoint: str, seconds: float) -> None:
        """Delay every answer of the endpoint by `seconds`, like a network between you and it (0: none)."""
        with self._lock:
            self._latency[endpoint] = seconds

    def outage(self, endpoint: str, seconds: float, fault: Fault | None = None) -> None:
        """For the next `seconds`, every request to the endpoint gets `fault` (default: 503)."""
        with self._lock:
            self._outages[endpoint] = (time.monotonic() + seconds, fault or Fault.http(503))

    def requests(self, endpoint: str) -> int:
        with self._lock:
            return self._counts[endpoint]

    def connections(self) -> int:
        """TCP connections accepted so far (all endpoints): a client that keeps its connection makes one."""
        with self._lock:
            return self._connections

    def bodies(self, endpoint: str) -> list[dict[str, Any]]:
        """The JSON bodies of the endpoint's last 100 requests, oldest first."""
        with self._lock:
            return list(self._bodies[endpoint])

    def headers(self, endpoint: str) -> list[dict[str, str]]:
        """The HTTP headers of the endpoint's last 100 requests (names lower-cased), oldest first."""
        with self._lock:
            return list(self._headers[endpoint])

    def reject_stream_options(self, endpoint: str, reject: bool = True) -> None:
        """Answer a request carrying `stream_options` with 400, as servers that do not know it do."""
        with self._lock:
            (self._no_stream_options.add if reject else self._no_stream_options.discard)(endpoint)

    def start(self) -> FakeModelServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-model", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving ------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = h.path.strip("/").split("/")
        endpoint = parts[0] if parts and parts[0] else "default"
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            request = json.loads(raw) if raw else {}
        except ValueError:
            request = {}
        with self._lock:
            self._counts[endpoint] += 1
            self._headers[endpoint].append({k.lower(): v for k, v in h.headers.items()})
            if isinstance(request, dict):
                self._bodies[endpoint].append(request)
            if isinstance(request, dict) and "stream_options" in request and endpoint in self._no_stream_options:
                fault = Fault.http(400, message="Unrecognized request argument supplied: stream_options")
            else:
                fault = self._next_fault(endpoint)
            delay = self._latency.get(endpoint, 0.0)
        if delay and self._stopping.wait(delay):
            return
        if fault.kind == "reset":
            with contextlib.suppress(OSError):
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.close()
            return
        if fault.kind == "hang":
            self._stopping.wait(fault.seconds)
            fault = Fault("reply")
        model = request.get("model", "fake-model") if isinstance(request, dict) else "fake-model"
        content = "" if fault.kind == "empty" else (fault.content or f"ok from {endpoint}")
        if fault.kind == "http":
            payload = fault.body.encode() if isinstance(fault.body, str) else json.dumps(fault.body).encode()
            self._send(h, fault.status, payload, fault.headers)
        elif fault.kind == "malformed":
            self._send(h, 200, b"<html>upstream proxy error</html>", {"content-type": "application/json"})
        elif fault.kind == "wrong_shape":
            self._send(h, 200, json.dumps({"result": "not a completion"}).encode(), {})
        elif isinstance(request, dict) and request.get("stream"):
            options = request.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(h, fault, content, model, usage=usage)
        else:
            finish = "length" if fault.kind == "truncated" else "stop"
            self._send(h, 200, json.dumps(_completion(content, model, finish)).encode(), {})

    def _next_fault(self, endpoint: str) -> Fault:
        """Under the lock: an outage, then the script, then the default (at its rate), else a reply."""
        outage = self._outages.get(endpoint)
        if outage is not None and time.monotonic() < outage[0]:
            return outage[1]
        queue = self._queues[endpoint]
        if queue:
            return queue.popleft()
        default = self._defaults.get(endpoint)
        if default is not None and self._random.random() < default[1]:
            return default[0]
        return Fault("reply")

    def _stream(self, h: BaseHTTPRequestHandler, fault: Fault, content: str, model: str, *, usage: bool) -> None:
        """Server-sent events as the OpenAI API sends them, one chunk per word, misbehaving as told; with
        usage asked for, a last chunk with no choices carries it (after the finish chunk, before [DONE])."""
        words = [w + " " for w in content.split(" ")]
        words[-1] = words[-1].rstrip(" ")
        thoughts = [w + " " for w in fault.reasoning.split(" ")] if fault.reasoning else []
        if thoughts:
            thoughts[-1] = thoughts[-1].rstrip(" ")
        try:
            h.send_response(200)
            h.send_header("content-type", "text/event-stream")
            h.send_header("connection", "close")
            h.end_headers()
            h.close_connection = True
            h.wfile.flush()
            if fault.first_delay_s and self._stopping.wait(fault.first_delay_s):
                return
            ident = f"chatcmpl-fake-{time.monotonic_ns()}"
            for thought in thoughts:
                if fault.chunk_delay_s and self._stopping.wait(fault.chunk_delay_s):
                    return
                h.wfile.write(_sse(_chunk(ident, model, {"reasoning_content": thought}, None)))
                h.wfile.flush()
            for i, word in enumerate(words):
                if fault.chunk_delay_s and self._stopping.wait(fault.chunk_delay_s):
                    return
                if fault.cut_after is not None and i >= fault.cut_after:
                    return  # the connection closes with the answer unfinished
                if fault.stall_after is not None and i == fault.stall_after and self._stopping.wait(fault.seconds):
                    return
                if fault.bad_chunk_at == i:
                    h.wfile.write(b"data: {this is not json\n\n")
                else:
                    h.wfile.write(_sse(_chunk(ident, model, {"content": word}, None)))
                h.wfile.flush()
            h.wfile.write(_sse(_chunk(ident, model, {}, "stop")))
            h.wfile.flush()
            if usage:
                counts = _completion(content, model)["usage"]
                h.wfile.write(_sse({**_chunk(ident, model, {}, None), "choices": [], "usage": counts}))
                h.wfile.flush()
            if fault.done:
                h.wfile.write(b"data: [DONE]\n\n")
                h.wfile.flush()
            else:
                self._stopping.wait(60)  # finished, but the line stays open without [DONE]
        except OSError:
            pass  # the client hung up

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            h.send_response(status)
            merged = {"content-type": "application/json", **{k.lower(): v for k, v in headers.items()}}
            for key, value in merged.items():
                h.send_header(key, value)
            h.send_header("content-length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass  # the client gave up (its timeout); nothing to answer


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(ident: str, model: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _completion(content: str, model: str, finish: str = "stop") -> dict[str, Any]:
    prompt_tokens, completion_tokens = 12, max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


_NVIDIA_SMI = """
import json, os
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "nvidia-smi.calls"), "a") as calls:
    calls.write("x")
path = os.path.join(here, "nvidia-smi.readings.json")
with open(path) as f:
    readings = json.load(f)
if len(readings) > 1:
    with open(path + ".tmp", "w") as f:
        json.dump(readings[1:], f)
    os.replace(path + ".tmp", path)
for index, free in enumerate(readings[0]):
    print(f"{index}, GPU-fake-{index}, {free}")
"""


class FakeNvidiaSmi:
    """A stand-in `nvidia-smi` in `folder`: put `folder` first on PATH. Each run prints the next reading
    set with `readings()` (free MiB per GPU, as GPUs 0, 1, ... with UUIDs GPU-fake-0, ...); the last one
    repeats. `calls` is how often it ran."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.path = folder / "nvidia-smi"
        self.path.write_text(f"#!{sys.executable}\n{_NVIDIA_SMI}", encoding="utf-8")
        self.path.chmod(0o700)
        (folder / "nvidia-smi.calls").write_text("", encoding="utf-8")
        self.readings([24000])

    def readings(self, *free_mb_per_gpu: list[int]) -> None:
        """What the next runs report, one list (free MiB of each GPU) per run."""
        (self.folder / "nvidia-smi.readings.json").write_text(json.dumps(list(free_mb_per_gpu)), encoding="utf-8")

    @property
    def calls(self) -> int:
        return len((self.folder / "nvidia-smi.calls").read_text(encoding="utf-8"))

    def path_env(self, path: str | None = None) -> str:
        """A PATH with this folder first."""
        rest = os.environ.get("PATH", "") if path is None else path
        return f"{self.folder}{os.pathsep}{rest}"
