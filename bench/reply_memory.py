"""Peak memory of a model call whose server sends far too much: self-heal against the bare `openai` client.

A local model server gone wrong can send gigabytes: one JSON reply of SIZE bytes, one server-sent-events
line of SIZE bytes, or a stream of SIZE bytes of small text deltas that never finishes its answer. The
server is a process of its own (its memory is not counted); each client is a fresh process, and its peak
is its own maximum resident set (getrusage), interpreter and imports included. A small reply gives the
floor.

- baseline: `openai.OpenAI(max_retries=0).chat.completions.create(...)` as a caller writes it (a stream
  read to its end, the text joined).
- self-heal: `selfheal.complete(...)` with the big endpoint first and a good one (the package's fake
  server, in the same process) second: the answer must come from the good one.

Target: self-heal's peak under 150 MB in every case; the baseline's grows with SIZE.

    .venv/bin/python bench/reply_memory.py [--size 200M] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
CASES = ("small", "json", "sse-line", "sse-many")
TARGET_MB = 150


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1:].upper() in units else int(text)


def serve(case: str, size: int) -> None:
    """Answer every request with the case's reply; print the port first."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    block = b"a" * (1 << 20)
    while True:
        conn, _ = listener.accept()
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                got = conn.recv(65536)
                if not got:
                    raise OSError("closed")
                data += got
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            if case in ("small", "json"):
                pre = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
                pre += b'"finish_reason":"stop","message":{"role":"assistant","content":"'
                post = b'"}}]}'
                n = 2 if case == "small" else size
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                conn.sendall(b"content-length: %d\r\nconnection: close\r\n\r\n" % (len(pre) + n + len(post)) + pre)
                _send_a(conn, block, n)
                conn.sendall(post)
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            pre = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
            pre += b'"finish_reason":null,"delta":{"content":"'
            if case == "sse-line":
                conn.sendall(pre)
                _send_a(conn, block, size)
                conn.sendall(b'"}}]}\n\n')
            else:
                event = pre + b"a" * 64 + b'"}}]}\n\n'
                many = event * 1000
                sent = 0
                while sent < size:
                    conn.sendall(many)
                    sent += len(many)
            conn.sendall(b"data: [DONE]\n\n")
        except OSError:
            pass
        finally:
            conn.close()


def _send_a(conn: socket.socket, block: bytes, n: int) -> None:
    while n > 0:
        k = min(n, len(block))
        conn.sendall(block[:k])
        n -= k


def client(system: str, case: str, port: int) -> None:
    """One call; print {peak_mb, ok, detail}."""
    url = f"http://127.0.0.1:{port}/v1"
    stream = case.startswith("sse")
    ok, detail = False, ""
    try:
        if system == "baseline":
            import openai

            bare = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
            messages: list = [{"role": "user", "content": "hi"}]
            if stream:
                text = "".join(
                    c.choices[0].delta.content or ""
                    for c in bare.chat.completions.create(model="m", messages=messages, stream=True)
                    if c.choices
                )
            else:
                text = bare.chat.completions.create(model="m", messages=messages).choices[0].message.content or ""
            ok, detail = True, f"{len(text):,} characters held"
        else:
            sys.path.insert(0, str(ROOT / "scripts"))
            import selfheal
            from selfheal.testing import FakeModelServer

            os.environ["SELFHEAL_HOME"] = tempfile.mkdtemp() + "/self-heal"
            with FakeModelServer() as fake:
                config = selfheal.load_config(
                    {
                        "models": {
                            "chain": [
                                {"name": "big", "base_url": url, "model": "m"},
                                {"name": "good", "base_url": fake.url("good"), "model": "m"},
                            ]
                        }
                    }
                )
                done = selfheal.complete("hi", config=config, stream=stream)
                big = [a.reason for a in done.attempts if a.endpoint == "big"]
                if case == "small":
                    ok, detail = done.endpoint == "big", "answered by the server"
                else:
                    ok, detail = done.endpoint == "good", f"big refused: {big[0] if big else '?'}; good answered"
    except Exception as exc:  # the baseline's failure is a result too
        detail = f"{type(exc).__name__}: {str(exc)[:80]}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": round(peak, 1), "ok": ok, "detail": detail}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="200M", help="bytes the server sends (K, M, G suffixes)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, metavar=("SYSTEM", "CASE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if args.client:
        client(args.client[0], args.client[1], int(args.client[2]))
        return 0
    size = _size(args.size)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "OPENCLAW_"))}
    results: dict[str, dict[str, dict]] = {}
    for case in CASES:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", case, str(size)], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            results[case] = {}
            for system in ("baseline", "self-heal"):
                out = subprocess.run(
                    [sys.executable, __file__, "--client", system, case, str(port)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                results[case][system] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            server.kill()
            server.wait()
    if args.json:
        print(json.dumps({"machine": machine(), "size": size, "results": results}, indent=2))
        return 0
    print(machine_line())
    print(f"Server sends {size / (1 << 20):g} MiB per reply.\n")
    rows = []
    met = True
    for case in CASES:
        base, ours = results[case]["baseline"], results[case]["self-heal"]
        met = met and ours["ok"] and ours["peak_mb"] < TARGET_MB
        rows.append(
            [
                case,
                base["detail"],
                ours["detail"],
                f"{base['peak_mb']:.0f}",
                f"{ours['peak_mb']:.0f}",
                f"{ours['peak_mb'] / base['peak_mb']:.2f}x",
            ]
        )
    headers = ["reply", "openai", "self-heal", "openai peak MB", "self-heal peak MB", "ratio"]
    print(markdown_table(headers, rows, text_columns=3))
    print(f"\nTarget (self-heal under {TARGET_MB} MB, answered by the good endpoint): {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
