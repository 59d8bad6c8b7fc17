"""GPU failure scenarios, shared by bench/gpu_check.py (a real GPU) and the CI tests (a fake nvidia-smi).

Each scenario drives a `Lab`: a local model server on a GPU, a healthy fallback, and a way to take GPU
memory away and give it back. gpu_check.py's lab is a torch server, a second process holding memory and
the real nvidia-smi; the tests' lab is selfheal.testing's FakeModelServer and FakeNvidiaSmi. The
scenarios, and what counts as passing, are the same code for both:

- precheck_skip: less free memory than the floor: the local endpoint is skipped, the fallback answers,
  nothing reaches the local server.
- oom_as_500: enough free memory for the pre-check, not for the request: the server answers HTTP 500
  with torch's "CUDA out of memory"; it is `resource`, and the fallback answers at once.
- wait_without_fallback: memory short and no other endpoint: the call waits (re-reading nvidia-smi)
  until memory is given back, then the local server answers.
- oom_wait_without_fallback: an out-of-memory answer and no other endpoint: the call waits until more
  memory is free, then the local server answers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from selfheal.clock import Clock
from selfheal.core.config import Config, load_config
from selfheal.models import gpu, llm
from selfheal.state.root import StateRoot

FLOOR_MB = 1024  # models.gpu_free_mb_min in every scenario


class Lab(Protocol):
    """What the scenarios need of a GPU set-up."""

    local_url: str  # an OpenAI-compatible server on GPU 0
    fallback_url: str  # a healthy OpenAI-compatible server
    clock: Clock
    poll_s: float  # models.gpu_poll_s for the scenarios

    def squeeze(self) -> None:
        """Leave less than FLOOR_MB free on GPU 0."""

    def tight(self) -> None:
        """Leave more than FLOOR_MB free, but less than one request of the local server needs (it OOMs)."""

    def release_after(self, seconds: float) -> None:
        """Give the memory back `seconds` from now (on the lab's clock)."""

    def local_requests(self) -> int:
        """Requests the local server has received."""


@dataclass(frozen=True)
class Outcome:
    scenario: str
    expected: str
    observed: str
    ok: bool
    seconds: float


def config(lab: Lab, *, fallback: bool) -> Config:
    chain: list[dict[str, Any]] = [{"name": "local", "base_url": lab.local_url, "model": "local", "gpu": 0}]
    if fallback:
        chain.append({"name": "fallback", "base_url": lab.fallback_url, "model": "fallback"})
    return load_config(
        {
            "models": {
                "gpu_free_mb_min": FLOOR_MB,
                "gpu_poll_s": lab.poll_s,
                "deadline_s": 120,
                "read_timeout_base_s": 60,
                "timeout_per_1k_tokens_s": 0,
                "chain": chain,
            }
        }
    )


def _call(lab: Lab, *, fallback: bool) -> tuple[llm.Completion | Exception, float]:
    gpu.clear()
    with tempfile.TemporaryDirectory(prefix="selfheal-gpu-") as tmp:
        started = lab.clock.monotonic()
        try:
            result: llm.Completion | Exception = llm.complete(
                "Say ok.", config=config(lab, fallback=fallback), state=StateRoot(Path(tmp)), clock=lab.clock
            )
        except Exception as exc:  # reported as the scenario's outcome
            result = exc
        return result, lab.clock.monotonic() - started


def _seen(result: llm.Completion | Exception) -> str:
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    first = result.attempts[0]
    return f"answered by {result.endpoint}; first attempt {first.outcome} ({first.error_class})"


def precheck_skip(lab: Lab) -> Outcome:
    lab.squeeze()
    before = lab.local_requests()
    result, took = _call(lab, fallback=True)
    ok = (
        isinstance(result, llm.Completion)
        and result.endpoint == "fallback"
        and (result.attempts[0].outcome, result.attempts[0].error_class) == ("skipped", "resource")
        and lab.local_requests() == before
    )
    return Outcome("precheck_skip", "local skipped (resource), fallback answers", _seen(result), ok, took)


def oom_as_500(lab: Lab) -> Outcome:
    lab.tight()
    result, took = _call(lab, fallback=True)
    ok = (
        isinstance(result, llm.Completion)
        and result.endpoint == "fallback"
        and (result.attempts[0].outcome, result.attempts[0].error_class) == ("failed", "resource")
        and len(result.attempts) == 2
    )
    return Outcome("oom_as_500", "OOM is resource; fallback answers at once", _seen(result), ok, took)


def wait_without_fallback(lab: Lab, release_s: float) -> Outcome:
    lab.squeeze()
    lab.release_after(release_s)
    result, took = _call(lab, fallback=False)
    ok = isinstance(result, llm.Completion) and result.endpoint == "local" and took >= release_s
    return Outcome(
        "wait_without_fallback", f"waits >= {release_s:g}s for memory, then local answers", _seen(result), ok, took
    )


def oom_wait_without_fallback(lab: Lab, release_s: float) -> Outcome:
    lab.tight()
    lab.release_after(release_s)
    result, took = _call(lab, fallback=False)
    ok = (
        isinstance(result, llm.Completion)
        and result.endpoint == "local"
        and result.attempts[0].error_class == "resource"
        and took >= release_s
    )
    return Outcome(
        "oom_wait_without_fallback",
        f"OOM, waits >= {release_s:g}s for memory, then local answers",
        _seen(result),
        ok,
        took,
    )


def run_all(lab: Lab, release_s: float) -> list[Outcome]:
    scenarios: list[Callable[[], Outcome]] = [
        lambda: precheck_skip(lab),
        lambda: oom_as_500(lab),
        lambda: wait_without_fallback(lab, release_s),
        lambda: oom_wait_without_fallback(lab, release_s),
    ]
    return [scenario() for scenario in scenarios]
