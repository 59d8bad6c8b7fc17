"""MB/s of the redactor on a command's output: the one-pass hint against the scan it replaced, same run.

Three kinds of text, each 8 MB generated from a fixed seed: plain log lines (`2026-06-10T03:12:18Z [INFO]
task=doc-gen-587 step 4211 processed 17 items ok duration=4.2s`, every line different), text dense with
trigger words (OpenClaw's JSON log lines from the fixtures, with `key=`, `token`, `://`, `Bearer`,
`password` and a planted secret in one line of ten), and binary noise (random bytes, decoded as the runner
decodes them). Each is fed to `LineRedactor` in 64 KiB reads, as `retry_run.py` passes a command's output
on, by the redactor as it is ("new") and by one that runs the old algorithm ("old": every shape's trigger
words searched across the whole text, then every line redacted on its own); both outputs must be equal.
Best of --rounds.

End to end: `retry_run.py -q` running a command that prints SIZE bytes of plain log lines (a 1 MB file of
different lines, printed over and over), its stdout to /dev/null, against the bare runner: a Python process
that starts the same command and copies its output in 64 KiB reads, with no redaction. --against PATH
also times another checkout's retry_run.py (the code before a change) in the same run.

    .venv/bin/python bench/redact.py [--size 500M] [--rounds 3] [--against OTHER_CHECKOUT] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from selfheal.state.redact import _BUILTIN, MASK, LineRedactor, Redactor, _keep_pre  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "openclaw-logs"
READ = 65536
_BARE = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)\n"
    "while chunk := os.read(p.stdout.fileno(), 65536):\n"
    "    os.write(1, chunk)\n"
    "sys.exit(p.wait())\n"
)


class OldRedactor(Redactor):
    """The algorithm before the one-pass hint (kept in tests/test_redact.py as the reference too)."""

    def _text(self, value: str) -> str:
        if self._literal is not None and any(v in value for v in self._values):
            value = self._literal.sub(MASK, value)
        lowered = value.lower()
        for (_, triggers), shape in zip(_BUILTIN, self._builtin, strict=True):
            if any(t in lowered for t in triggers):
                value = shape.sub(_keep_pre, value)
        for shape in self._user:
            value = shape.sub(_keep_pre, value)
        return value

    def marks(self, text: str) -> None:
        return None


def plain_lines(size: int, rng: random.Random) -> bytes:
    out: list[str] = []
    total = 0
    while total < size:
        line = (
            f"2026-06-10T03:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z [INFO] task=doc-gen-{rng.randrange(1000)}"
            f" step {rng.randrange(100000)} processed {rng.randrange(100)} items ok duration={rng.random() * 9:.1f}s\n"
        )
        out.append(line)
        total += len(line)
    return "".join(out).encode()


def dense_lines(size: int, rng: random.Random) -> bytes:
    fixture = [
        line
        for path in sorted(FIXTURES.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
    ] or ['{"msg": "GET https://api.example.com/v1 token=abc key=1"}\n']
    extra = [
        "curl -H 'Authorization: Bearer abcdefgh12345678' https://api.example.com/v1?key=abc&token=x\n",
        "retry with api_key=sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX after 401: password is incorrect\n",
        "max_tokens=1024 prompt_tokens=12 completion_tokens=33 key=cache:user:42 token_type=bearer\n",
    ]
    out: list[str] = []
    total = 0
    while total < size:
        line = rng.choice(extra) if rng.random() < 0.1 else rng.choice(fixture)
        out.append(line)
        total += len(line)
    return "".join(out).encode()


def noise(size: int, rng: random.Random) -> bytes:
    return rng.randbytes(size)


def stream(redactor: Redactor, data: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    lines = LineRedactor(redactor)
    out = [lines.feed(data[i : i + READ].decode("utf-8", "surrogateescape")) for i in range(0, len(data), READ)]
    out.append(lines.finish())
    return "".join(out), time.perf_counter() - started


_TIME_OTHER = (
    "import sys, time\n"
    "from selfheal.state.redact import LineRedactor, Redactor\n"
    "data, rounds = open(sys.argv[1], 'rb').read(), int(sys.argv[2])\n"
    "best = float('inf')\n"
    "for _ in range(rounds):\n"
    "    started = time.perf_counter()\n"
    "    lines = LineRedactor(Redactor(env={}))\n"
    "    for i in range(0, len(data), 65536):\n"
    "        lines.feed(data[i : i + 65536].decode('utf-8', 'surrogateescape'))\n"
    "    lines.finish()\n"
    "    best = min(best, time.perf_counter() - started)\n"
    "print(best)\n"
)


def time_other(root: Path, data: bytes, rounds: int) -> float:
    """Seconds (best of `rounds`) of another checkout's redactor on `data`, in a process of its own."""
    with tempfile.NamedTemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        env = {**os.environ, "PYTHONPATH": str(root / "scripts")}
        out = subprocess.run(
            [sys.executable, "-c", _TIME_OTHER, fh.name, str(rounds)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return float(out.stdout.strip().splitlines()[-1])


def measure_kinds(rounds: int, size: int, against: Path | None = None) -> list[dict[str, float | str]]:
    rng = random.Random(7)
    rows: list[dict[str, float | str]] = []
    for kind, make in (("plain log lines", plain_lines), ("dense with triggers", dense_lines), ("binary noise", noise)):
        data = make(size, rng)
        new, old = Redactor(env={}), OldRedactor(env={})
        best = {"new": float("inf"), "old": float("inf")}
        for _ in range(rounds):
            out_new, t_new = stream(new, data)
            out_old, t_old = stream(old, data)
            if out_new != out_old:
                raise SystemExit(f"{kind}: the new redactor's output differs from the old one's")
            best["new"], best["old"] = min(best["new"], t_new), min(best["old"], t_old)
        mb = len(data) / 1e6
        row: dict[str, float | str] = {"kind": kind, "old": mb / best["old"], "new": mb / best["new"]}
        if against is not None:  # the previous checkout's own redactor, not this file's rebuild of its algorithm
            row["against"] = mb / time_other(against, data, rounds)
        rows.append(row)
    return rows


def _timed(argv: list[str], home: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env["SELFHEAL_HOME"] = home
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def measure_end_to_end(size: int, against: Path | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "lines.log"
        sample.write_bytes(plain_lines(1_000_000, random.Random(11)))
        repeats = max(1, size // sample.stat().st_size)
        shell = f"for i in $(seq {repeats}); do cat {sample}; done"
        command = ["/bin/sh", "-c", shell]
        out = {"bytes": float(repeats * sample.stat().st_size)}
        out["bare"] = _timed([sys.executable, "-c", _BARE, *command], tmp)
        for name, root in (("retry_run", ROOT), ("retry_run (against)", against)):
            if root is not None:
                with tempfile.TemporaryDirectory() as home:
                    out[name] = _timed([sys.executable, str(root / "scripts/retry_run.py"), "-q", "--", *command], home)
    return out


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="500M", help="bytes the end-to-end command prints (default 500M)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each redactor run (the best counts)")
    parser.add_argument("--against", type=Path, help="another checkout whose redactor and retry_run.py are timed too")
    parser.add_argument("--quick", action="store_true", help="1 MB of each kind, 20 MB end to end, one round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.size = 1, "20M"
    against = args.against.resolve() if args.against else None
    kinds = measure_kinds(args.rounds, 1_000_000 if args.quick else 8_000_000, against)
    e2e = measure_end_to_end(_size(args.size), against)
    if args.json:
        print(json.dumps({"machine": machine(), "correct": True, "kinds": kinds, "end_to_end": e2e}, indent=2))
        return 0
    print(machine_line())
    headers = ["text", "old MB/s", "new MB/s", "new / old"]
    rows_kinds = [
        [str(r["kind"]), f"{r['old']:.1f}", f"{r['new']:.1f}", f"{float(r['new']) / float(r['old']):.1f}x"]
        for r in kinds
    ]
    if against is not None:
        headers += ["--against MB/s", "new / --against"]
        for row, r in zip(rows_kinds, kinds, strict=True):
            row += [f"{r['against']:.1f}", f"{float(r['new']) / float(r['against']):.1f}x"]
    print(markdown_table(headers, rows_kinds))
    print()
    mb = e2e["bytes"] / 1e6
    rows = [[name, f"{e2e[name]:.1f}", f"{mb / e2e[name]:.0f}"] for name in e2e if name != "bytes"]
    print(f"End to end, {mb:.0f} MB of log lines:")
    print(markdown_table(["runner", "s", "MB/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
