"""A stand-in for the OpenClaw gateway's HTTP probes: a real HTTP server on 127.0.0.1, in a thread.

    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:   # a live, ready gateway
        ...gw.url...
    with FakeGateway({}) as other:                                    # 200 and an HTML page for every path

Paths not in `routes` get what the real gateway's control UI gives an unknown path: 200 with an HTML page.
`paths` records what was asked, in order.

    with drip_gateway(every_s=0.05) as url:                           # a valid live answer, a byte at a time
        ...url...
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = tuple[int, str, bytes]  # status, content type, body
HTML = b"<!doctype html><html><body>OpenClaw Control</body></html>"
LIVE: Route = (200, "application/json; charset=utf-8", b'{"ok":true,"status":"live"}')
READY: Route = (200, "application/json; charset=utf-8", b'{"ready":true,"failing":[]}')


class FakeGateway:
    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                status, ctype, body = outer.routes.get(self.path, (200, "text/html; charset=utf-8", HTML))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits for the loop to look up, 0.5 s by default.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> FakeGateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@contextlib.contextmanager
def drip_gateway(every_s: float, route: Route = LIVE) -> Iterator[str]:
    """A server that answers each request with `route`, a valid answer, one byte every `every_s` seconds:
    every socket read on the client side gets a byte well within a per-read timeout. Yields its URL."""
    status, ctype, body = route
    answer = (
        f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)

    def drip(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            for i in range(len(answer)):
                if stop.wait(every_s):
                    return
                conn.sendall(answer[i : i + 1])

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()
