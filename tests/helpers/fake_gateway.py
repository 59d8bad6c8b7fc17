"""A stand-in for the OpenClaw gateway's HTTP probes: a real HTTP server on 127.0.0.1, in a thread.

    with FakeGateway({"/healthz": LIVE, "/readyz": READY}) as gw:   # a live, ready gateway
        ...gw.url...
    with FakeGateway({}) as other:                                    # 200 and an HTML page for every path

Paths not in `routes` get what the real gateway's control UI gives an unknown path: 200 with an HTML page.
`paths` records what was asked, in order.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
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
