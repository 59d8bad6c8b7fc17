"""LiteLLM's side of bench/failover.py, run in its own virtual environment.

LiteLLM (1.110.2) requires `openai>=2.20,<4` (its venv has openai 3.63.0, the project's version) and
two dozen other packages (pydantic, httpx, aiohttp, tokenizers, boto3, ...); installed beside self-heal they
could move the versions the project is built and tested on. So it lives in bench/.venv-litellm and
failover.py talks to this script over a pipe:

    bench/.venv-litellm/bin/python bench/litellm_worker.py --version      # prints LiteLLM's version
    bench/.venv-litellm/bin/python bench/litellm_worker.py                 # then, on stdin:
    {"primary": URL, "fallback": URL, "timeout_s": T, "model": M, "messages": [...], "api_key": K, "stream": B}
    ask            -> one JSON line: {"text": "..."} or {"text": null} or {"error": "ExceptionName"}
    (end of input)  -> exits

Standard library plus LiteLLM only; no self-heal code runs here.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from typing import Any


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network for its model-cost map
    import litellm

    if sys.argv[1:] == ["--version"]:
        print(version("litellm"))
        return
    litellm.suppress_debug_info = True  # else it prints a help banner on every exception
    spec = json.loads(sys.stdin.readline())

    def deployment(name: str) -> dict[str, Any]:
        params = {
            "model": f"openai/{spec['model']}",
            "api_base": spec[name],
            "api_key": spec["api_key"],
            "timeout": spec["timeout_s"],
        }
        return {"model_name": name, "litellm_params": params}

    router = None  # made on the first ask, inside the timed request, as every system makes its clients
    for line in sys.stdin:
        if line.strip() != "ask":
            continue
        if router is None:
            router = litellm.Router(
                model_list=[deployment("primary"), deployment("fallback")],
                fallbacks=[{"primary": ["fallback"]}],
                timeout=spec["timeout_s"],
            )
        try:
            if spec.get("stream"):
                parts = []
                for chunk in router.completion(model="primary", messages=spec["messages"], stream=True):
                    choices = getattr(chunk, "choices", None)
                    delta = getattr(choices[0], "delta", None) if choices else None
                    text = getattr(delta, "content", None)
                    if isinstance(text, str):
                        parts.append(text)
                answer: dict[str, Any] = {"text": "".join(parts)}
            else:
                response = router.completion(model="primary", messages=spec["messages"])
                choices = getattr(response, "choices", None)
                message = getattr(choices[0], "message", None) if choices else None
                content = getattr(message, "content", None)
                answer = {"text": content if isinstance(content, str) else None}
        except Exception as exc:
            answer = {"error": type(exc).__name__}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
