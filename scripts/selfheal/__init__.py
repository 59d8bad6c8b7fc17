"""self-heal: keep unattended agent work alive through failures.

The public API is what `__all__` lists. Names load on first use, so `import selfheal` stays cheap for
cron scripts and works even before the dependencies are installed (scripts need that to say so).

The library is layered; a module imports only from its own package and from lower layers, never from a
higher layer or a peer of its rank, and nothing imports in a circle (tests/test_layers.py enforces it):

    0  errors, clock, _testing, _bootstrap, _typing   the base: no imports from the package
    1  state/      every file and table format: the state root, paths, records, the task store
    2  core/       configuration, classification, backoff, retrying, breakers, the ledger, processes, runs
    3  models/     the fallback chain, answer checks, prompts
       durable/    workflows, checkpoints, snapshots, incidents
    4  tasks/      the task tree's rules, its runner, escalation, stuck detection
    5  observe/    health, log reading (ours, the source documents', OpenClaw's), the report
    6  heal/       evidence, rules, the healer, applying fixes (above the runner it hands fixes to)
    7  cli, testing, this module   what scripts and tests use
"""

from __future__ import annotations

import importlib

# Not `typing.TYPE_CHECKING`: importing typing costs the cron health check 2.5 ms; mypy and ruff treat
# a module-level TYPE_CHECKING = False as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "retry": "core.retrying",
    "Retrier": "core.retrying",
    "Attempt": "core.retrying",
    "attempts_of": "core.retrying",
    "stop_reason_of": "core.retrying",
    "Budget": "core.retrying",
    "classify_error": "core.classify",
    "Failure": "core.classify",
    "Classification": "core.classify",
    "Classifier": "core.classify",
    "Config": "core.config",
    "load_config": "core.config",
    "get_config": "core.config",
    "ERROR_CLASSES": "core.config",
    "StateRoot": "state.root",
    "run_with_retry": "core.runner",
    "RunOutcome": "core.runner",
    "CommandFailed": "core.runner",
    "set_testing": "_testing",
    "no_waits": "_testing",
    "is_testing": "_testing",
    "SelfHealError": "errors",
    "UsageError": "errors",
    "ConfigError": "errors",
    "InvalidIdError": "errors",
    "StateError": "errors",
    "CorruptStateError": "errors",
    "NotAttempted": "errors",
    "LockBusy": "errors",
    "Interrupted": "errors",
    "complete": "models.llm",
    "acomplete": "models.llm",
    "astream": "models.llm",
    "StreamText": "models.llm",
    "StreamRestart": "models.llm",
    "StreamDone": "models.llm",
    "Completion": "models.llm",
    "ModelAttempt": "models.llm",
    "ModelCallFailed": "models.llm",
    "ContentRefused": "models.llm",
    "NoEndpointAvailable": "models.llm",
    "Breakers": "core.breaker",
    "BreakerOpen": "core.breaker",
    "Workflow": "durable.workflow",
    "WorkflowRunner": "durable.workflow",
    "WorkflowResult": "durable.workflow",
    "StepContext": "durable.workflow",
    "load_plan": "durable.workflow",
}

__all__ = [
    "ERROR_CLASSES",
    "Attempt",
    "BreakerOpen",
    "Breakers",
    "Budget",
    "Classification",
    "Classifier",
    "CommandFailed",
    "Completion",
    "Config",
    "ConfigError",
    "ContentRefused",
    "CorruptStateError",
    "Failure",
    "Interrupted",
    "InvalidIdError",
    "LockBusy",
    "ModelAttempt",
    "ModelCallFailed",
    "NoEndpointAvailable",
    "NotAttempted",
    "Retrier",
    "RunOutcome",
    "SelfHealError",
    "StateError",
    "StateRoot",
    "StepContext",
    "StreamDone",
    "StreamRestart",
    "StreamText",
    "UsageError",
    "Workflow",
    "WorkflowResult",
    "WorkflowRunner",
    "__version__",
    "acomplete",
    "astream",
    "attempts_of",
    "classify_error",
    "complete",
    "get_config",
    "is_testing",
    "load_config",
    "load_plan",
    "no_waits",
    "retry",
    "run_with_retry",
    "set_testing",
    "stop_reason_of",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'selfheal' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from ._testing import is_testing, no_waits, set_testing
    from .core.breaker import BreakerOpen, Breakers
    from .core.classify import Classification, Classifier, Failure, classify_error
    from .core.config import ERROR_CLASSES, Config, get_config, load_config
    from .core.retrying import Attempt, Budget, Retrier, attempts_of, retry, stop_reason_of
    from .core.runner import CommandFailed, RunOutcome, run_with_retry
    from .durable.workflow import StepContext, Workflow, WorkflowResult, WorkflowRunner, load_plan
    from .errors import (
        ConfigError,
        CorruptStateError,
        Interrupted,
        InvalidIdError,
        LockBusy,
        NotAttempted,
        SelfHealError,
        StateError,
        UsageError,
    )
    from .models.llm import (
        Completion,
        ContentRefused,
        ModelAttempt,
        ModelCallFailed,
        NoEndpointAvailable,
        StreamDone,
        StreamRestart,
        StreamText,
        acomplete,
        astream,
        complete,
    )
    from .state.root import StateRoot
