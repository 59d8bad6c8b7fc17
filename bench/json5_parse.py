"""Reading openclaw.json: self-heal's pure-Python JSON5 reader against the stdlib's C json, same run.

openclaw.json is JSON5 (OpenClaw parses it with npm json5), so selfheal.core.json5 reads it. Each document is
built as JSON (so json.loads can read the same text as the baseline): a realistic openclaw.json, one of
2 MB indented like a config, and 2 MB of a million tiny values (the worst case per byte). Each round parses
the document once with each reader, back to back, the first reader alternating from round to round, so
drift (and the garbage collector's state) hits both alike; the times given are the medians over the rounds,
the ratio is the median of the per-round ratios (JSON5 reader over json.loads), with their range. Both are
timed in this process; checks: both give equal values.

    python bench/json5_parse.py [--rounds 5] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from _common import machine, machine_line, markdown_table

from selfheal.core import json5

CONFIG: dict[str, Any] = {
    "logging": {"file": "/home/me/.openclaw/logs/openclaw.log", "level": "info"},
    "gateway": {"port": 18789, "auth": {"token": "${OPENCLAW_GATEWAY_TOKEN}"}},
    "agents": {
        "defaults": {
            "model": {"primary": "local/qwen3-4b", "fallbacks": ["openrouter/deepseek/deepseek-chat", "groq/llama"]},
            "models": {f"p{i}/model-{i}": {"alias": f"m{i}", "params": {"temperature": 0.2}} for i in range(20)},
        }
    },
    "models": {
        "providers": {
            f"p{i}": {
                "baseUrl": f"http://10.0.0.{i}:8000/v1",
                "apiKey": f"${{P{i}_KEY}}",
                "models": [{"id": f"model-{i}", "contextWindow": 32768, "name": f"Model {i}"}],
            }
            for i in range(20)
        }
    },
}


def documents(quick: bool) -> list[tuple[str, str]]:
    size = 200_000 if quick else 2_000_000
    config = json.dumps(CONFIG, indent=2)
    indented = "[" + ",\n".join([config] * (size // len(config) + 1)) + "]"
    tiny = "[" + ",".join(["1"] * (size // 2)) + "]"
    return [("openclaw.json (4 KB)", config), (f"indented config ({size // 1000} KB)", indented),
            (f"tiny values ({size // 1000} KB)", tiny)]  # fmt: skip


def timed(parse: Callable[[str], Any], text: str) -> float:
    started = time.perf_counter()
    parse(text)
    return time.perf_counter() - started


def compared(text: str, rounds: int) -> tuple[list[float], list[float]]:
    """Per round, json.loads's seconds and the JSON5 reader's, timed back to back in alternating order."""
    base, mine = [], []
    for r in range(rounds):
        if r % 2 == 0:
            base.append(timed(json.loads, text))
            mine.append(timed(json5.loads, text))
        else:
            mine.append(timed(json5.loads, text))
            base.append(timed(json.loads, text))
    return base, mine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="documents of 200 KB instead of 2 MB")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    rows, results, ok = [], [], True
    for name, text in documents(args.quick):
        same = json5.loads(text) == json.loads(text)
        ok = ok and same
        bases, mines = compared(text, args.rounds)
        ratios = [m / b for m, b in zip(mines, bases, strict=True)]
        base, mine, ratio = statistics.median(bases), statistics.median(mines), statistics.median(ratios)
        results.append(
            {
                "document": name,
                "json_s": base,
                "json5_s": mine,
                "ratio": ratio,
                "ratio_range": [min(ratios), max(ratios)],
                "same": same,
            }
        )
        spread = f"{ratio:.1f}x ({min(ratios):.1f}-{max(ratios):.1f})"
        rows.append([name, f"{base * 1000:.2f} ms", f"{mine * 1000:.2f} ms", spread, "yes" if same else "NO"])
    if args.json:
        print(json.dumps({"machine": machine(), "rounds": args.rounds, "results": results, "ok": ok}))
    else:
        print(machine_line())
        print(
            f"{args.rounds} rounds in one process, the two readers alternating; times: medians; "
            "ratio: median of the per-round ratios (range)\n"
        )
        print(markdown_table(["document", "json.loads (C)", "selfheal.core.json5", "ratio", "same values"], rows))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
