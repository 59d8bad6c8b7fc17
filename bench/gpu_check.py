"""GPU failures for real: self-heal's pre-check, a CUDA out-of-memory answer, and waiting for memory.

Needs a CUDA device, nvidia-smi and torch (in this Python); without them it says so and exits 2. It starts
1. a GPU-backed OpenAI-compatible server (a child process): each request allocates --need-gib on GPU 0,
   touches it and frees it, then answers "ok from local"; an allocation that fails answers HTTP 500 with
   torch's own message ("CUDA out of memory. Tried to allocate ...");
2. a second process that holds GPU memory on command (so the server, and nvidia-smi, see less free);
3. a healthy fallback (selfheal.testing.FakeModelServer),
and runs the scenarios of bench/gpu_scenarios.py (the same code the CI tests run against a fake
nvidia-smi): pre-check skip, OOM as 500, waiting for memory without a fallback (after a pre-check, and
after an OOM). Prints a table; exit 0 when every scenario passed, 1 when one did not.

    python bench/gpu_check.py [--need-gib 4] [--release-after 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import gpu_scenarios
from _common import machine, machine_line, markdown_table

from selfheal.clock import SYSTEM_CLOCK
from selfheal.testing import FakeModelServer

SERVER = r"""
import json, sys, torch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
need = int(float(sys.argv[1]) * 2**30)
count = 0
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        global count
        count += 1
        self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            block = torch.empty(need, dtype=torch.uint8, device="cuda:0")
            block.fill_(1)
            torch.cuda.synchronize()
            del block
            torch.cuda.empty_cache()
            status, body = 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "local",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok from local"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            status, body = 500, {"error": {"message": str(exc), "type": "server_error", "code": None}}
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
    def do_GET(self):
        raw = json.dumps({"requests": count}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
torch.cuda.init()
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""

HOG = r"""
import sys, torch
held = None
print("ready", flush=True)
for line in sys.stdin:
    word, _, arg = line.strip().partition(" ")
    held = None
    torch.cuda.empty_cache()
    if word == "hold":
        held = torch.empty(int(arg) * 2**20, dtype=torch.uint8, device="cuda:0")
        held.fill_(1)
        torch.cuda.synchronize()
    print("done", flush=True)
"""


def requirements() -> str | None:
    """Why this cannot run here, or None."""
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi on PATH (no NVIDIA driver here)"
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"torch does not import in {sys.executable} (install torch with CUDA support)"
    if probe.stdout.strip() != "True":
        return "torch sees no CUDA device"
    return None


def free_mib() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


class RealLab:
    """GPU 0, a torch server on it, and a process that holds memory on command."""

    def __init__(self, need_gib: float, fallback: FakeModelServer) -> None:
        self.need_mib = int(need_gib * 1024)
        self.clock = SYSTEM_CLOCK
        self.poll_s = 0.5
        self.fallback_url = fallback.url("fallback")
        self.server = subprocess.Popen([sys.executable, "-c", SERVER, str(need_gib)], stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None
        self.port = int(self.server.stdout.readline())
        self.local_url = f"http://127.0.0.1:{self.port}/v1"
        self.hog = subprocess.Popen(
            [sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self.hog.stdout is not None
        self.hog.stdout.readline()
        self._lock = threading.Lock()

    def _tell(self, line: str) -> None:
        assert self.hog.stdin is not None and self.hog.stdout is not None
        with self._lock:
            self.hog.stdin.write(line + "\n")
            self.hog.stdout.readline()

    def _leave_free(self, mib: int) -> None:
        self._tell("free")
        self._tell(f"hold {max(free_mib() - mib, 0)}")

    def squeeze(self) -> None:
        self._leave_free(gpu_scenarios.FLOOR_MB // 2)

    def tight(self) -> None:
        self._leave_free(max(gpu_scenarios.FLOOR_MB * 2, self.need_mib // 2))

    def release_after(self, seconds: float) -> None:
        threading.Timer(seconds, self._tell, args=("free",)).start()

    def local_requests(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as answer:
            data: dict[str, Any] = json.loads(answer.read())
        return int(data["requests"])

    def close(self) -> None:
        for proc in (self.hog, self.server):  # our own children
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--need-gib", type=float, default=4.0, help="GPU memory one request allocates (default 4)")
    parser.add_argument("--release-after", type=float, default=3.0, help="seconds before memory comes back")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    why = requirements()
    if why is not None:
        sys.stderr.write(f"gpu_check: cannot run here: {why}. It needs a CUDA GPU, nvidia-smi and torch.\n")
        return 2
    with FakeModelServer() as fallback:
        lab = RealLab(args.need_gib, fallback)
        try:
            started = time.perf_counter()
            outcomes = gpu_scenarios.run_all(lab, args.release_after)
            wall = time.perf_counter() - started
        finally:
            lab.close()
    if args.json:
        print(json.dumps({"machine": machine(), "wall_s": wall, "outcomes": [o.__dict__ for o in outcomes]}))
    else:
        print(machine_line())
        rows = [[o.scenario, "pass" if o.ok else "FAIL", f"{o.seconds:.2f}", o.expected, o.observed] for o in outcomes]
        print(markdown_table(["scenario", "result", "seconds", "expected", "observed"], rows, text_columns=5))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
