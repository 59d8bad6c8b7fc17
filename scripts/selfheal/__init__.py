"""self-heal: keep unattended agent work alive through failures.

The public API is what `__all__` lists. Names load on first use, so `import selfheal` stays cheap for
cron scripts and works even before the dependencies are installed (scripts need that to say so).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "retry": "retrying",
    "Retrier": "retrying",
    "Attempt": "retrying",
    "attempts_of": "retrying",
    "stop_reason_of": "retrying",
    "Budget": "retrying",
    "classify_error": "classify",
    "Failure": "classify",
    "Classification": "classify",
    "Classifier": "classify",
    "Config": "config",
    "load_config": "config",
    "get_config": "config",
    "ERROR_CLASSES": "config",
    "StateRoot": "store",
    "run_with_retry": "runner",
    "RunOutcome": "runner",
    "CommandFailed": "runner",
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
    "complete": "llm",
    "acomplete": "llm",
    "Completion": "llm",
    "ModelAttempt": "llm",
    "ModelCallFailed": "llm",
    "ContentRefused": "llm",
    "NoEndpointAvailable": "llm",
    "Breakers": "breaker",
    "BreakerOpen": "breaker",
    "Workflow": "workflow",
    "WorkflowRunner": "workflow",
    "WorkflowResult": "workflow",
    "StepContext": "workflow",
    "load_plan": "workflow",
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
    "UsageError",
    "Workflow",
    "WorkflowResult",
    "WorkflowRunner",
    "__version__",
    "acomplete",
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
    from .breaker import BreakerOpen, Breakers
    from .classify import Classification, Classifier, Failure, classify_error
    from .config import ERROR_CLASSES, Config, get_config, load_config
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
    from .llm import (
        Completion,
        ContentRefused,
        ModelAttempt,
        ModelCallFailed,
        NoEndpointAvailable,
        acomplete,
        complete,
    )
    from .retrying import Attempt, Budget, Retrier, attempts_of, retry, stop_reason_of
    from .runner import CommandFailed, RunOutcome, run_with_retry
    from .store import StateRoot
    from .workflow import StepContext, Workflow, WorkflowResult, WorkflowRunner, load_plan
