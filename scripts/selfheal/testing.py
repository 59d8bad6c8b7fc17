"""Helpers for testing code that uses self-heal (ours and users'): no waits, a fake clock, a fake model.

from selfheal.testing import FakeClock, FakeModelServer, Fault, no_waits

with FakeModelServer() as server:
    server.script("primary", Fault.http(429, retry_after=2), Fault.reset())
    client = openai.OpenAI(base_url=server.url("primary"), api_key="x", max_retries=0)
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._testing import is_testing, no_waits, set_testing

__all__ = ["FakeClock", "FakeModelServer", "Fault", "is_testing", "no_waits", "set_testing"]


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

    kind: str  # reply | http | reset | hang | malformed | wrong_shape | empty
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 0.0
    content: str | None = None

    @classmethod
    def reply(cls, content: str) -> Fault:
        return cls("reply", content=content)

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

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._queues: dict[str, deque[Fault]] = defaultdict(deque)
        self._defaults: dict[str, Fault] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

            def do_GET(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
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

    def set_default(self, endpoint: str, fault: Fault | None) -> None:
        with self._lock:
            if fault is None:
                self._defaults.pop(endpoint, None)
            else:
                self._defaults[endpoint] = fault

    def requests(self, endpoint: str) -> int:
        with self._lock:
            return self._counts[endpoint]

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
            queue = self._queues[endpoint]
            fault = queue.popleft() if queue else self._defaults.get(endpoint, Fault("reply"))
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
        if fault.kind == "http":
            self._send(h, fault.status, json.dumps(fault.body).encode(), fault.headers)
        elif fault.kind == "malformed":
            self._send(h, 200, b"<html>upstream proxy error</html>", {"content-type": "application/json"})
        elif fault.kind == "wrong_shape":
            self._send(h, 200, json.dumps({"result": "not a completion"}).encode(), {})
        else:
            content = "" if fault.kind == "empty" else (fault.content or f"ok from {endpoint}")
            model = request.get("model", "fake-model") if isinstance(request, dict) else "fake-model"
            self._send(h, 200, json.dumps(_completion(content, model)).encode(), {})

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


def _completion(content: str, model: str) -> dict[str, Any]:
    prompt_tokens, completion_tokens = 12, max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
