"""Settings: skill.yaml's defaults, deep-merged with the user's config.yaml, loaded into frozen dataclasses.

Defaults live only in skill.yaml; the dataclasses below give no default for any setting, so a setting
missing from skill.yaml is a load error, not a silent fallback. Every error names the file, the key
path, the value and, where the YAML has one, the line.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
import re
import stat
import threading
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError
from ..state import layout
from ..state.redact import MIN_SECRET_CHARS, Redactor, install, mask_url_password
from ..state.root import NotRegularFile, open_regular, read_at_most, resolve_state_root
from . import openclaw_config
from .openclaw_config import deep_merge

log = logging.getLogger(__name__)

ErrorClass = Literal[
    "transient", "rate_limit", "timeout", "resource", "format", "permanent", "auth", "fatal", "unknown"
]
ERROR_CLASSES: tuple[str, ...] = typing.get_args(ErrorClass)
Jitter = Literal["full", "equal", "decorrelated", "none"]
ScanEngine = Literal["auto", "native", "python"]

logger = logging.getLogger(__name__)

SKILL_ROOT = Path(__file__).resolve().parents[3]
SKILL_YAML = SKILL_ROOT / "skill.yaml"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")


def _check_url(value: object) -> str | None:
    if isinstance(value, str) and re.match(r"https?://[^\s/@]*@", value):
        return "must not hold a user name or password: a key comes from the variable api_key_env names"
    if not isinstance(value, str) or not re.match(r"https?://[^\s/:]+(:\d{1,5})?(/\S*)?\Z", value):
        return "must be an http:// or https:// URL with a host"
    return None


_DB_URL = re.compile(r"postgres(ql)?://(?P<auth>[^@/\s]*@)?[^\s/]*(/[^\s?]*)?(\?\S*)?\Z")

# Each configuration class's resolved annotations and its fields by YAML key: the same for every load, and
# `typing.get_type_hints` (which compiles every annotation string anew) was half of a load's time when it
# ran on each visit of a class (about 100 a load, for 26 classes).
_SHAPES: dict[type[Any], tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]] = {}


def _shape(cls: type[Any]) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    shape = _SHAPES.get(cls)
    if shape is None:
        by_key = {(f.metadata.get("key") or f.name): f for f in dataclasses.fields(cls) if f.init}
        shape = _SHAPES[cls] = (typing.get_type_hints(cls), by_key)
    return shape


def check_database_url(value: object, *, password_allowed: bool = False) -> str | None:
    """Why `value` cannot be the fleet database's URL, or None. A password may come only from the environment."""
    match = _DB_URL.match(value) if isinstance(value, str) else None
    if not match:
        return "must be a postgresql:// URL, e.g. postgresql://selfheal@db.example:5432/selfheal"
    # The user info runs to the last @ before the query: a password with an unescaped / or @ in it
    # (`postgresql://u:pa/ss@db/x`) leaves no @ in the first part the pattern reads, yet holds one.
    before_query = str(value).split("?", 1)[0].split("://", 1)[-1]
    auth = (match.group("auth") or "") + (before_query.rsplit("@", 1)[0] if "@" in before_query else "")
    has_password = ":" in auth or re.search(r"[?&]password=", str(value)) is not None
    if has_password and not password_allowed:
        return "must not hold a password: set SELFHEAL_DATABASE_PASSWORD (or PGPASSWORD) in the environment instead"
    return None


def _check_path(value: object) -> str | None:
    if value is not None and not (isinstance(value, str) and re.match(r"/[\w./-]*\Z", value)):
        return "must be a URL path starting with /, e.g. /healthz"
    return None


def _check_argv(value: object) -> str | None:
    if not value:
        return "must be a non-empty argument list, e.g. [openclaw, gateway, restart]"
    return None


def _check_env_name(value: object) -> str | None:
    if value is not None and not (isinstance(value, str) and _ENV_NAME.match(value)):
        return "must be an environment variable name (letters, digits, underscore)"
    return None


# Header names that carry credentials: their values must come from the environment (`${VAR}`), as keys do.
SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|session|password", re.I)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def written_credential(name: str, value: str) -> bool:
    """Whether a header carries a credential written out rather than read from the environment (`${VAR}`)."""
    return bool(SECRET_HEADER.search(name)) and not openclaw_config.variables(value)


def header_problem(name: str, text: str) -> str | None:
    """What is wrong with a header an endpoint is configured to send (config.yaml's or openclaw.json's)."""
    if not _HEADER_NAME.match(name):
        return f"{name!r} is not an HTTP header name"
    if "\n" in text or "\r" in text:
        return f"the value of {name} must be one line"
    if written_credential(name, text):
        # Worded so that no `name: word` pair forms after a secret-looking word: the redactor would mask the rest.
        return (
            f"header {name} holds a credential written out; give its value as ${{VARIABLE}} "
            "(keys come only from the environment)"
        )
    return None


def _check_headers(value: object) -> str | None:
    if not isinstance(value, Mapping):
        return None
    for name, text in value.items():
        problem = header_problem(name, text)
        if problem is not None:
            return problem
    return None


def _check_id(value: object) -> str | None:
    if not (isinstance(value, str) and _ID.match(value)):
        return "must be 1-128 characters from A-Z a-z 0-9 . _ - with no leading dot"
    return None


def _check_status(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return None
    if isinstance(value, str) and re.fullmatch(r"[1-5]xx", value):
        return None
    return 'must be an HTTP status (100-599) or a class like "5xx"'


def _check_errno(value: object) -> str | None:
    return None if isinstance(value, str) and re.fullmatch(r"E[A-Z0-9]+", value) else "must be like ECONNRESET"


def _check_signal(value: object) -> str | None:
    return None if isinstance(value, str) and re.fullmatch(r"SIG[A-Z0-9]+", value) else "must be like SIGKILL"


def _meta(
    *,
    lo: float | None = None,
    hi: float | None = None,
    gt: float | None = None,
    regex: bool = False,
    check: Callable[[object], str | None] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "gt": gt, "regex": regex, "check": check, "key": key}


# --- the settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """How one error class is retried. Delays in seconds."""

    attempts: int = field(metadata=_meta(lo=1, hi=1000))
    base_s: float = field(metadata=_meta(lo=0, hi=86400))
    multiplier: float = field(metadata=_meta(lo=1, hi=100))
    cap_s: float = field(metadata=_meta(lo=0, hi=86400))
    # Unset means retry.jitter; the loader fills it in, so a loaded Policy always names its jitter.
    # A number f (0 < f <= 1) is "the delay, plus or minus f of it" (the second document's 0.25, the third's 0.1).
    jitter: Jitter | float | None = field(default=None, metadata=_meta(gt=0, hi=1))


@dataclass(frozen=True)
class Policies:
    transient: Policy
    rate_limit: Policy
    timeout: Policy
    resource: Policy
    format: Policy
    permanent: Policy
    auth: Policy
    fatal: Policy
    unknown: Policy

    def for_class(self, error_class: str) -> Policy:
        policy: Policy = getattr(self, error_class)
        return policy


@dataclass(frozen=True)
class RetrySettings:
    deadline_s: float = field(metadata=_meta(gt=0, hi=30 * 86400))
    retry_after_cap_s: float = field(metadata=_meta(lo=0, hi=86400))
    jitter: Jitter | float = field(metadata=_meta(gt=0, hi=1))
    notify: tuple[str, ...]


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = field(metadata=_meta(lo=1, hi=10_000))
    window_s: float = field(metadata=_meta(gt=0, hi=86400))
    failure_rate: float = field(metadata=_meta(gt=0, hi=1))
    min_calls: int = field(metadata=_meta(lo=1, hi=100_000))
    open_s: float = field(metadata=_meta(gt=0, hi=86400))
    open_multiplier: float = field(metadata=_meta(lo=1, hi=100))
    open_max_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))
    half_open_probes: int = field(metadata=_meta(lo=1, hi=1000))
    close_after: int = field(metadata=_meta(lo=1, hi=1000))
    counted_classes: tuple[ErrorClass, ...]
    open_at_once: tuple[ErrorClass, ...]
    stale_permit_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))
    eject_failure_rate: float = field(metadata=_meta(gt=0, hi=1))
    eject_min_calls: int = field(metadata=_meta(lo=1, hi=100_000))
    eject_s: float = field(metadata=_meta(gt=0, hi=86400))
    eject_max_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))


@dataclass(frozen=True)
class WorkflowSettings:
    max_resumes_without_progress: int = field(metadata=_meta(lo=1, hi=1000))
    output_tail_chars: int = field(metadata=_meta(lo=0, hi=10_000_000))
    notify: tuple[str, ...]
    notify_timeout_s: float = field(metadata=_meta(gt=0, hi=3600))
    # A plan whose steps say `after:` runs this many of its ready steps at once (each a thread).
    max_parallel: int = field(metadata=_meta(lo=1, hi=256))


@dataclass(frozen=True)
class TaskSettings:
    analyze_at_failures: int = field(metadata=_meta(lo=1, hi=1000))
    manual_at_failures: int = field(metadata=_meta(lo=1, hi=1000))
    solution_at_failures: int = field(metadata=_meta(lo=0, hi=1000))
    solution_tries: int = field(metadata=_meta(lo=1, hi=1000))
    stuck_after_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))
    log_max_chars: int = field(metadata=_meta(lo=1000, hi=1_000_000_000))
    log_keep_chars: int = field(metadata=_meta(lo=100, hi=1_000_000_000))
    last_error_chars: int = field(metadata=_meta(lo=100, hi=1_000_000))
    archive_after_days: float = field(metadata=_meta(lo=0, hi=36500))
    busy_timeout_s: float = field(metadata=_meta(gt=0, hi=3600))
    # Fleet mode: a running task whose runner's heartbeat (the database's clock) is older than this is taken
    # back by the next claim on any host and runs again; more than two process.heartbeat_s.
    lease_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))
    # Fleet mode: a run that ended while the database was down waits this long for it to record its outcome.
    finish_wait_s: float = field(metadata=_meta(lo=0, hi=7 * 86400))


@dataclass(frozen=True)
class WatchdogSettings:
    """The gateway watchdog (health_check.py restarts a gateway it finds down): off unless enabled."""

    enabled: bool
    restart_argv: tuple[str, ...] = field(metadata=_meta(check=_check_argv))
    max_restarts_per_hour: int = field(metadata=_meta(lo=1, hi=60))
    backoff_s: float = field(metadata=_meta(lo=0, hi=3600))
    startup_grace_s: float = field(metadata=_meta(lo=0, hi=3600))
    restart_timeout_s: float = field(metadata=_meta(gt=0, hi=3600))
    keep_configs: int = field(metadata=_meta(lo=1, hi=100))


@dataclass(frozen=True)
class CronRetrySettings:
    """Failed OpenClaw cron jobs run again (`openclaw cron run`): only the jobs listed, by name or id."""

    jobs: tuple[str, ...]
    max_retries: int = field(metadata=_meta(lo=1, hi=100))
    backoff_s: float = field(metadata=_meta(lo=0, hi=86400))
    timeout_s: float = field(metadata=_meta(gt=0, hi=3600))


@dataclass(frozen=True)
class HealthSettings:
    """health_check.py: where the gateway answers, how old a status file may be, what counts as stuck or low."""

    # Unset means http://127.0.0.1:<port>, the port from OPENCLAW_GATEWAY_PORT, gateway.port or 18789.
    gateway_url: str | None = field(metadata=_meta(check=_check_url))
    live_path: str = field(metadata=_meta(check=_check_path))
    ready_path: str | None = field(metadata=_meta(check=_check_path))
    timeout_s: float = field(metadata=_meta(gt=0, hi=60))
    status_max_age_minutes: float = field(metadata=_meta(gt=0, hi=30 * 24 * 60))
    status_dirs: tuple[str, ...]
    stuck_after_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))
    disk_min_free_mb: int = field(metadata=_meta(lo=0, hi=1_000_000_000))
    watchdog: WatchdogSettings
    cron_retry: CronRetrySettings


def _check_baselines(value: object) -> str | None:
    if isinstance(value, Mapping) and all(
        _check_id(k) is None and isinstance(v, (int, float)) and 0 < v < math.inf for k, v in value.items()
    ):
        return None
    return "must map task ids to a positive number of seconds"


@dataclass(frozen=True)
class AnalysisSettings:
    """analyze_logs.py: the window it reads by default, the alert rules of the second source document, limits."""

    since_s: float = field(metadata=_meta(gt=0, hi=3650 * 86400))
    success_rate_p1: float = field(metadata=_meta(lo=0, hi=1))
    breaker_trips_per_hour_p2: int = field(metadata=_meta(lo=0, hi=1_000_000))
    fallback_rate_p2: float = field(metadata=_meta(lo=0, hi=1000))
    mean_time_factor_p3: float = field(metadata=_meta(gt=1, hi=1000))
    recent_s: float = field(metadata=_meta(gt=0, hi=365 * 86400))
    min_runs: int = field(metadata=_meta(lo=1, hi=1_000_000))
    baselines: Mapping[str, float] = field(metadata=_meta(check=_check_baselines))
    top: int = field(metadata=_meta(lo=1, hi=1000))
    max_line_bytes: int = field(metadata=_meta(lo=1024, hi=1 << 30))
    max_tasks: int = field(metadata=_meta(lo=10, hi=10_000_000))
    workers: int = field(metadata=_meta(lo=0, hi=256))
    # auto: the native scanner where install.sh built it, else Python; native: it or an error; python: never it.
    engine: ScanEngine
    openclaw_chains_exhausted_p1: int = field(metadata=_meta(lo=0, hi=1_000_000))
    openclaw_failed_turns_p2: int = field(metadata=_meta(lo=0, hi=1_000_000))
    openclaw_cron_failed_runs_p2: int = field(metadata=_meta(lo=0, hi=1_000_000))
    openclaw_skill_invalid_p3: int = field(metadata=_meta(lo=0, hi=1_000_000))


@dataclass(frozen=True)
class SnapshotSettings:
    keep: int = field(metadata=_meta(lo=0, hi=1_000_000))


@dataclass(frozen=True)
class ProcessSettings:
    kill_grace_s: float = field(metadata=_meta(lo=0, hi=600))
    heartbeat_s: float = field(metadata=_meta(gt=0, hi=3600))
    drain_s: float = field(metadata=_meta(lo=0, hi=600))
    tail_bytes: int = field(metadata=_meta(lo=1024, hi=64 * 1024 * 1024))
    keep_finished_runs_days: float = field(metadata=_meta(lo=0, hi=3650))
    kill_orphans: bool
    keep_daemons: bool


@dataclass(frozen=True)
class LedgerSettings:
    reason_max_chars: int = field(metadata=_meta(lo=20, hi=100_000))
    keep_days: int = field(metadata=_meta(lo=0, hi=36_500))


@dataclass(frozen=True)
class StoreSettings:
    """Fleet mode: where hosts share breakers and the ledger (PostgreSQL); unset url means this host alone."""

    # Checked by the loader (its message masks a password), not by field metadata.
    url: str | None
    # Unset means the host's name; SELFHEAL_HOST_ID overrides it.
    host_id: str | None = field(metadata=_meta(check=_check_id))
    connect_timeout_s: float = field(metadata=_meta(gt=0, hi=600))
    retry_down_s: float = field(metadata=_meta(lo=0, hi=86400))
    remote_permit_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))

    @property
    def fleet(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class LogSettings:
    max_bytes: int = field(metadata=_meta(lo=4096))
    backups: int = field(metadata=_meta(lo=0, hi=100))


@dataclass(frozen=True)
class RedactSettings:
    env_names: str = field(metadata=_meta(regex=True))
    patterns: tuple[str, ...] = field(metadata=_meta(regex=True))


@dataclass(frozen=True)
class ModelEndpoint:
    name: str = field(metadata=_meta(check=_check_id))
    base_url: str = field(metadata=_meta(check=_check_url))
    model: str
    api_key_env: str | None = field(default=None, metadata=_meta(check=_check_env_name))
    # Unset means models.read_timeout_base_s.
    read_timeout_base_s: float | None = field(default=None, metadata=_meta(gt=0, hi=86400))
    # Unset means unknown: a too-long request only moves to entries that declare a larger window.
    context_tokens: int | None = field(default=None, metadata=_meta(lo=1))
    # Unset means not local: no GPU memory check before calling it.
    local: bool | None = None
    # Unset means models.stream_first_token_s: how long a stream may take to its first token here.
    first_token_s: float | None = field(default=None, metadata=_meta(gt=0, hi=86400))
    # The GPU it runs on (index or UUID), for the memory check; unset: the roomiest. Implies local.
    gpu: int | str | None = field(default=None, metadata=_meta(lo=0))
    # Headers sent with every request; `${VAR}` in a value is read from the environment at the call.
    headers: Mapping[str, str] = field(default_factory=dict, metadata=_meta(check=_check_headers), hash=False)


@dataclass(frozen=True)
class ModelCache:
    """models.cache: keep checked answers this long, at most this many (the oldest go first)."""

    ttl_s: float = field(default=3600.0, metadata=_meta(gt=0, hi=365 * 86400))
    max_entries: int = field(default=1000, metadata=_meta(lo=1, hi=1_000_000))


@dataclass(frozen=True)
class ModelSettings:
    read_timeout_base_s: float = field(metadata=_meta(gt=0, hi=86400))
    timeout_per_1k_tokens_s: float = field(metadata=_meta(lo=0, hi=3600))
    expected_tokens: int = field(metadata=_meta(lo=1, hi=10_000_000))
    connect_timeout_s: float = field(metadata=_meta(gt=0, hi=600))
    deadline_s: float = field(metadata=_meta(gt=0, hi=86400))
    max_wait_before_fallback_s: float = field(metadata=_meta(lo=0, hi=3600))
    stream_first_token_s: float = field(metadata=_meta(gt=0, hi=86400))
    stream_idle_s: float = field(metadata=_meta(gt=0, hi=86400))
    stream_usage_grace_s: float = field(metadata=_meta(lo=0, hi=60))
    gpu_free_mb_min: int = field(metadata=_meta(lo=0))
    gpu_poll_s: float = field(metadata=_meta(gt=0, hi=3600))
    simplify_max_prompt_chars: int = field(metadata=_meta(lo=100))
    simplify_split_parts: int = field(metadata=_meta(lo=0, hi=50))
    max_answer_chars: int = field(metadata=_meta(lo=0))
    rules_fallback: tuple[str, ...]
    chain: tuple[ModelEndpoint, ...]
    # Off (None) unless set: a model's answer is usually wanted fresh (the state it reads has changed).
    cache: ModelCache | None = None


@dataclass(frozen=True)
class Rule:
    """One classification rule: every condition given must match; lists match any of their items."""

    name: str = field(metadata=_meta(check=_check_id))
    error_class: ErrorClass = field(metadata=_meta(key="class"))
    reason: str | None = None
    status: tuple[int | str, ...] = field(default=(), metadata=_meta(check=_check_status))
    error_code: tuple[str, ...] = ()
    header: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    exception: tuple[str, ...] = ()
    errno: tuple[str, ...] = field(default=(), metadata=_meta(check=_check_errno))
    exit_code: tuple[int, ...] = field(default=(), metadata=_meta(lo=0, hi=255))
    signal: tuple[str, ...] = field(default=(), metadata=_meta(check=_check_signal))
    pattern: str | None = field(default=None, metadata=_meta(regex=True))


@dataclass(frozen=True)
class ClassifySettings:
    tail_chars: int = field(metadata=_meta(lo=100, hi=1_000_000))
    extra_rules: tuple[Rule, ...]
    rules: tuple[Rule, ...]

    @property
    def ordered_rules(self) -> tuple[Rule, ...]:
        """The user's rules first, then the shipped ones."""
        return self.extra_rules + self.rules


FIX_ACTIONS = (
    "reset_breaker",
    "quarantine_checkpoint",
    "requeue_task",
    "void_task",
    "rerun_task",
    "restore_openclaw_config",
)
# The allowed actions that cannot be undone: `self_heal.py --apply` does them only when a person adds
# --allow-irreversible, and a model's proposal that names one is never marked ready.
IRREVERSIBLE_ACTIONS = ("void_task",)
FIX_KINDS = ("lane_error", "fallback_exhausted", "cron_failed", "skill_invalid", "cli_failed")
FixAction = Literal[
    "reset_breaker", "quarantine_checkpoint", "requeue_task", "void_task", "rerun_task", "restore_openclaw_config"
]
FixKind = Literal["lane_error", "fallback_exhausted", "cron_failed", "skill_invalid", "cli_failed"]
FixArea = Literal["frontend", "backend", "infra", "tests", "docs", "config"]


@dataclass(frozen=True)
class FixRule:
    """A known failure and its fix: every condition given must match; lists match any of their items."""

    name: str = field(metadata=_meta(check=_check_id))
    root_cause: str
    fix_steps: tuple[str, ...]
    success_criteria: str
    confidence: float = field(metadata=_meta(lo=0, hi=1))
    error_class: tuple[ErrorClass, ...] = field(default=(), metadata=_meta(key="class"))
    kind: tuple[FixKind, ...] = ()
    status: tuple[int, ...] = field(default=(), metadata=_meta(lo=100, hi=599))
    pattern: str | None = field(default=None, metadata=_meta(regex=True))
    fallback_configured: bool | None = None
    models_tried_max: int | None = field(default=None, metadata=_meta(lo=1, hi=1000))  # an exhausted chain's steps
    actions: tuple[FixAction, ...] = ()
    area: FixArea = "infra"


@dataclass(frozen=True)
class TargetKeyword:
    """fixes.target_keywords: when `pattern` is found in a failure's text, the fix belongs in `target`."""

    pattern: str = field(metadata=_meta(regex=True))
    target: str


@dataclass(frozen=True)
class FixSettings:
    use_model: bool
    model_at_failures: int = field(metadata=_meta(lo=1, hi=1000))
    model_deadline_s: float = field(metadata=_meta(gt=0, hi=3600))
    min_confidence: float = field(metadata=_meta(lo=0, hi=1))
    evidence_lines: int = field(metadata=_meta(lo=1, hi=10_000))
    # A file a task names as evidence (its run spec's `evidence` patterns) is copied under the fix's folder
    # only up to this size (0: never copied; listed with its size and SHA-256 either way).
    evidence_copy_max_bytes: int = field(metadata=_meta(lo=0, hi=1 << 30))
    target_keywords: tuple[TargetKeyword, ...]
    extra_rules: tuple[FixRule, ...]
    rules: tuple[FixRule, ...]

    @property
    def ordered_rules(self) -> tuple[FixRule, ...]:
        """The user's rules first, then the shipped ones."""
        return self.extra_rules + self.rules


@dataclass(frozen=True)
class Manifest:
    """skill.yaml's description of the skill itself; not overridable by users."""

    name: str
    version: str
    description: str
    state_root: str
    scripts: Mapping[str, str]
    prompts: tuple[str, ...]
    schedules: Mapping[str, str]


@dataclass(frozen=True)
class Config:
    retry: RetrySettings
    policies: Policies
    breakers: BreakerSettings
    workflows: WorkflowSettings
    tasks: TaskSettings
    health: HealthSettings
    analysis: AnalysisSettings
    snapshots: SnapshotSettings
    process: ProcessSettings
    ledger: LedgerSettings
    store: StoreSettings
    log: LogSettings
    redact: RedactSettings
    models: ModelSettings
    classify: ClassifySettings
    fixes: FixSettings
    manifest: Manifest = field(compare=False)
    files: tuple[str, ...] = field(default=(), compare=False)
    # Whether the user's settings name models.chain (if not, the chain is built from OpenClaw's models).
    chain_configured: bool = field(default=False, compare=False)


MANIFEST_KEYS = frozenset(f.name for f in dataclasses.fields(Manifest))


# --- reading YAML with positions -----------------------------------------------------------------------

Marks = dict[str, tuple[str, int, int]]
_Marks = Marks


# A settings file is a few kilobytes; one bigger than this is a mistake, and is never read whole.
CONFIG_MAX_BYTES = 1024 * 1024
# Mapping keys and items in one file, aliases expanded: far above any real file, far below a YAML bomb.
CONFIG_MAX_NODES = 100_000


def read_yaml(path: Path, marks: _Marks) -> object:
    """Parse one YAML file; record `key.path -> (file, line, column)` for every mapping key and item."""
    try:
        # Non-blocking, then checked: a FIFO or a device named as the settings file is refused, not waited on.
        fd, _ = open_regular(path)
        with os.fdopen(fd, "rb") as fh:
            os.set_blocking(fd, True)
            capped = read_at_most(fh, CONFIG_MAX_BYTES)
        if capped is None:
            raise ConfigError(f"larger than {CONFIG_MAX_BYTES} bytes; a settings file is a few kilobytes", file=path)
        text = capped.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except NotRegularFile as exc:
        if stat.S_ISDIR(exc.mode):
            raise ConfigError("is a folder, not a settings file", file=path) from None
        raise ConfigError("is not a regular file (a pipe or a device?): not read", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _walk_marks(node, "", str(path), marks, within=[], count=[0])
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"YAML syntax error: {problem}",
            file=path,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=path) from None
    finally:
        loader.dispose()


def _walk_marks(
    node: yaml.Node, prefix: str, file: str, marks: _Marks, *, within: list[yaml.Node], count: list[int]
) -> None:
    """Record the marks under `node`; refuse an alias that contains itself and a file that expands too far."""
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if any(node is outer for outer in within):
            raise ConfigError(
                "a YAML alias refers to a node that contains it (a recursive alias)",
                file=file,
                key=prefix or None,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
            )
        count[0] += len(node.value)
        if count[0] > CONFIG_MAX_NODES:
            raise ConfigError(f"more than {CONFIG_MAX_NODES} keys and items once aliases are expanded", file=file)
        within = [*within, node]
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                raise ConfigError(
                    "duplicate key",
                    file=file,
                    key=path,
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                )
            seen.add(key)
            marks[path] = (file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk_marks(value_node, path, file, marks, within=within, count=count)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            marks[path] = (file, item.start_mark.line + 1, item.start_mark.column + 1)
            _walk_marks(item, path, file, marks, within=within, count=count)


# --- converting plain data into the dataclasses ----------------------------------------------------------


class _Converter:
    def __init__(self, marks: _Marks, default_file: str) -> None:
        self.marks = marks
        self.default_file = default_file

    def unknown_key(self, parent: str, key: str, known: Iterable[str]) -> ConfigError:
        """The error for `key`, which `parent` does not have, at the key's own line. The key is named in the
        message, not as the last part of the key path: `api_key: unknown key` would read to the redactor as
        a secret and its value."""
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        found = self.error(f"{parent}.{key}" if parent else key, "")
        return ConfigError(
            f"unknown key {key!r}{hint}", file=found.file, key=parent or None, line=found.line, column=found.column
        )

    def error(self, path: str, message: str, value: object = dataclasses.MISSING) -> ConfigError:
        probe = path
        while probe and probe not in self.marks:
            probe = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", probe) if re.search(r"[.\[]", probe) else ""
        file, line, column = (
            self.marks.get(probe, (self.default_file, None, None))
            if probe
            else (
                self.default_file,
                None,
                None,
            )
        )
        if value is not dataclasses.MISSING:
            message = f"{message}, got {value!r}"
        return ConfigError(message, file=file, key=path or "<top>", value=value, line=line, column=column)

    def dataclass(self, cls: type[Any], data: object, path: str) -> Any:
        if not isinstance(data, dict):
            raise self.error(path, "must be a mapping", data)
        hints, by_key = _shape(cls)
        for key in data:
            if key not in by_key:
                raise self.unknown_key(path, str(key), by_key)
        kwargs: dict[str, Any] = {}
        for key, f in by_key.items():
            sub = f"{path}.{key}" if path else key
            if key not in data:
                has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                if has_default:
                    continue
                raise self.error(sub, "missing key")
            value = self.value(hints[f.name], data[key], sub)
            self.check(f.metadata, value, sub)
            kwargs[f.name] = value
        return cls(**kwargs)

    def check(self, meta: Mapping[str, Any], value: object, path: str) -> None:
        if not meta:
            return
        items: tuple[object, ...] = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if isinstance(value, tuple) else path
            if item is None:
                continue
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if meta["lo"] is not None and item < meta["lo"]:
                    raise self.error(where, f"must be >= {meta['lo']}", item)
                if meta["hi"] is not None and item > meta["hi"]:
                    raise self.error(where, f"must be <= {meta['hi']}", item)
                if meta["gt"] is not None and item <= meta["gt"]:
                    raise self.error(where, f"must be > {meta['gt']}", item)
            if meta["regex"] and isinstance(item, str):
                try:
                    re.compile(item)
                except re.error as exc:
                    raise self.error(where, f"not a valid regular expression ({exc})", item) from None
            if meta["check"] is not None:
                problem = meta["check"](item)
                if problem:
                    # A mapping's problem names its entry; its repr would show a header's value.
                    raise self.error(where, problem, dataclasses.MISSING if isinstance(item, Mapping) else item)

    def value(self, tp: Any, value: object, path: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(typing.cast(type[Any], tp), value, path)
        if origin in (Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            problems = []
            for option in options:
                try:
                    return self.value(option, value, path)
                except ConfigError as exc:
                    problems.append(exc)
            if len(problems) == 1:
                raise problems[0]
            raise self.error(path, "must be " + " or ".join(_type_name(o) for o in options), value)
        if origin is Literal:
            if value not in args:
                raise self.error(path, "must be one of " + ", ".join(map(str, args)), value)
            return value
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(path, "must be true or false", value)
            return value
        if tp is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.error(path, "must be a whole number", value)
            return value
        if tp is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                raise self.error(path, "must be a number", value)
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise self.error(path, "must be a string", value)
            return value
        if origin is tuple:
            if value is None:
                value = []
            if not isinstance(value, list):
                raise self.error(path, "must be a list", value)
            return tuple(self.value(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
        if origin in (Mapping, dict, typing.Mapping):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise self.error(path, "must be a mapping", value)
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise self.error(path, "keys must be strings", key)
                out[key] = self.value(args[1], item, f"{path}.{key}")
            return types.MappingProxyType(out)
        if tp is Any:
            return value
        raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug in this module


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if tp is float:
        return "a number"
    return getattr(tp, "__name__", str(tp))


# --- loading -------------------------------------------------------------------------------------------------


def user_config_path(env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The user's config file, and whether the user named it explicitly (then it must exist)."""
    env = os.environ if env is None else env
    named = env.get("SELFHEAL_CONFIG")
    if named:
        return Path(named).expanduser(), True
    return layout.config_file(resolve_state_root(env)), False


GIVEN = "<settings given to load_config>"  # the "file" named in errors about settings passed as a dict

# Settings renamed: (the mapping's path, old key, new key). The old name is still read, with a warning.
_RENAMED = (("models", "timeout_s", "read_timeout_base_s"), ("models.chain[]", "timeout_s", "read_timeout_base_s"))


def load_config(
    source: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    skill_yaml: Path | None = None,
    user_file: str | os.PathLike[str] | None = None,
) -> Config:
    """Load skill.yaml, merge the user's settings over it and validate; raise ConfigError naming the culprit.

    source: the user's settings as a mapping (shaped like config.yaml), or the path of a YAML file; by
    default the user's config.yaml ($SELFHEAL_CONFIG, else config.yaml in the state root) if it exists.
    """
    env = os.environ if env is None else env
    skill_yaml = skill_yaml or SKILL_YAML
    if source is not None and user_file is not None:
        raise TypeError("give the user's settings once: as source or as user_file")
    given: Mapping[str, Any] | None = None
    if isinstance(source, Mapping):
        given = source
    elif source is not None:
        user_file = source
    marks: _Marks = {}
    base = read_yaml(skill_yaml, marks)
    if not isinstance(base, dict):
        raise ConfigError("must be a mapping of settings", file=skill_yaml)
    _retries_as_attempts(base, marks, str(skill_yaml))
    files = [str(skill_yaml)]

    if given is not None:
        user_path, required = Path(GIVEN), False
    elif user_file is None:
        user_path, required = user_config_path(env)
    else:
        user_path, required = Path(user_file).expanduser(), True
    user: object = None
    if given is not None or required or _there(user_path):
        user_marks: _Marks = {}
        given_paths: list[str] = []
        if given is not None:
            user = copy.deepcopy(dict(given))
            given_paths = _paths(user, "")  # no positions: errors name GIVEN as the file
        else:
            user = read_yaml(user_path, user_marks)
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError("must be a mapping of settings", file=user_path, value=user)
        _rename_old_keys(user, user_marks, str(user_path))
        for key in user:
            if key in MANIFEST_KEYS:
                file, line, column = user_marks.get(str(key), (str(user_path), None, None))
                raise ConfigError(
                    "is part of the skill's manifest and cannot be overridden",
                    file=file,
                    key=str(key),
                    line=line,
                    column=column,
                )
        # A user's key or list replaces skill.yaml's below it, so its positions replace them too.
        for path in [*user_marks, *given_paths]:
            for stale in [m for m in marks if m == path or m.startswith((path + ".", path + "["))]:
                del marks[stale]
        marks.update(user_marks)
        files.append(str(user_path))

    # `retries: N` (the source documents' count) and `attempts: N+1` are one setting: each file is read in
    # attempts before merging (skill.yaml's above), so a user's count replaces skill.yaml's either way.
    if user:
        for note in _document_shapes(typing.cast(dict[str, Any], user), marks, str(user_file)):
            logger.info("%s", note)
        _retries_as_attempts(typing.cast(dict[str, Any], user), marks, str(user_file))
    manifest_data = {k: v for k, v in base.items() if k in MANIFEST_KEYS}
    shipped = {k: v for k, v in base.items() if k not in MANIFEST_KEYS}
    order: list[str] | None = None
    openclaw_json = openclaw_json_path(env)
    # The first source document's `task_policies`: in config.yaml (where OpenClaw never sees it), else in
    # openclaw.json (where the document put it); a layer between skill.yaml and the user's other settings.
    policies_file = str(user_file)
    task_policies = user.pop("task_policies", None) if isinstance(user, dict) else None
    if task_policies is not None and not isinstance(task_policies, dict):
        raise ConfigError("must be a mapping (default_retry, model_fallbacks)", file=policies_file, key="task_policies")
    if task_policies is None:
        policies_file = str(openclaw_json)
        task_policies = _openclaw_task_policies(openclaw_json, env)
        if task_policies is not None:
            files.append(str(openclaw_json))
    if task_policies is not None:
        layer, order, notes = _task_policies_layer(task_policies, shipped, policies_file)
        shipped = typing.cast(dict[str, Any], deep_merge(shipped, layer))
        for note in notes:
            logger.info("%s", note)
    settings = deep_merge(shipped, user or {})
    user_models = user.get("models") if isinstance(user, dict) else None
    if order and not (isinstance(user_models, dict) and "chain" in user_models):  # config.yaml's own chain wins
        models = typing.cast(dict[str, Any], settings)["models"]
        models["chain"], note = _chain_in_order(list(models.get("chain") or []), order, policies_file)
        logger.info("%s", note)
    conv = _Converter(marks, str(user_path) if user else str(skill_yaml))
    manifest = conv.dataclass(Manifest, manifest_data, "")
    config = _build_config(conv, typing.cast(dict[str, Any], settings), manifest, tuple(files))
    user_models = user.get("models") if isinstance(user, dict) else None
    if isinstance(user_models, dict) and "chain" in user_models:
        config = dataclasses.replace(config, chain_configured=True)
    return _store_from_env(config, env)


def _paths(value: object, prefix: str) -> list[str]:
    """Every key path in a mapping, as the YAML reader names them (`a.b`, `a.list[0]`)."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            found += [path, *_paths(item, path)]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            path = f"{prefix}[{i}]"
            found += [path, *_paths(item, path)]
    return found


def _rename_old_keys(user: dict[str, Any], marks: _Marks, file: str) -> None:
    """Read a renamed setting under its old name too, saying once (a warning) what it is called now."""
    for where, old, new in _RENAMED:
        head, _, rest = where.partition(".")
        holders: list[tuple[str, object]] = [(head, user.get(head))]
        if rest == "chain[]":
            chain = user.get(head, {}).get("chain") if isinstance(user.get(head), dict) else None
            holders = [(f"{head}.chain[{i}]", e) for i, e in enumerate(chain)] if isinstance(chain, list) else []
        for path, holder in holders:
            if not isinstance(holder, dict) or old not in holder:
                continue
            if new in holder:
                line, column = marks.get(f"{path}.{old}", (file, None, None))[1:]
                raise ConfigError(
                    f"is the old name of {new}, which is set too: keep {new}",
                    file=file,
                    key=f"{path}.{old}",
                    line=line,
                    column=column,
                )
            holder[new] = holder.pop(old)
            if f"{path}.{old}" in marks:
                marks[f"{path}.{new}"] = marks.pop(f"{path}.{old}")
            log.warning("%s: %s.%s is now called %s.%s (the old name still works)", file, path, old, path, new)


# The first source document's retry levels, and the classes each one stands for there: immediate retry for
# 502/504, timeouts and connection resets; delayed retry for GPU memory, malformed output and rate limits.
_IMMEDIATE = ("transient", "timeout")
_DELAYED = ("resource", "format", "rate_limit")


def _document_shapes(user: dict[str, Any], marks: _Marks, file: str) -> list[str]:
    """Rewrite the first source document's config shapes, pasted into the user's file, as ours, in place:
    `retry_policy: {immediate_retry, delayed_retry}` becomes `policies`, and `models: {primary, fallbacks}`
    becomes `models.chain`. Returns one line per translation saying what it became."""
    notes: list[str] = []

    def bad(key: str, message: str, value: object) -> ConfigError:
        where = marks.get(key, (file, None, None))
        return ConfigError(
            f"{message}, got {value!r}", file=where[0], key=key, value=value, line=where[1], column=where[2]
        )

    def number(level: dict[str, Any], key: str, path: str, *, whole: bool = False) -> float | None:
        value = level.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value < 0:
            raise bad(f"{path}.{key}", "must be a whole number >= 1" if whole else "must be a number >= 0", value)
        return value

    if "retry_policy" in user:
        shape = user.pop("retry_policy")
        if not isinstance(shape, dict) or set(shape) - {"immediate_retry", "delayed_retry"}:
            raise bad("retry_policy", "must be a mapping with immediate_retry and/or delayed_retry", shape)
        policies = user.setdefault("policies", {})
        if not isinstance(policies, dict):
            raise bad("policies", "must be a mapping", policies)
        keys = {
            "immediate_retry": {"max_attempts", "delay_seconds"},
            "delayed_retry": {"max_attempts", "backoff_factor", "initial_delay", "max_delay"},
        }
        for level_name, classes in (("immediate_retry", _IMMEDIATE), ("delayed_retry", _DELAYED)):
            level = shape.get(level_name)
            if level is None:
                continue
            path = f"retry_policy.{level_name}"
            if not isinstance(level, dict) or set(level) - keys[level_name]:
                raise bad(path, f"must be a mapping with {', '.join(sorted(keys[level_name]))}", level)
            ours: dict[str, Any] = {}
            attempts = number(level, "max_attempts", path, whole=True)
            if attempts is not None:
                if attempts < 1:
                    raise bad(f"{path}.max_attempts", "must be a whole number >= 1", attempts)
                ours["attempts"] = attempts
            if level_name == "immediate_retry":
                delay = number(level, "delay_seconds", path)
                if delay is not None:  # a fixed delay: no growth, capped at itself
                    ours.update(base_s=float(delay), multiplier=1.0, cap_s=float(delay))
            else:
                for theirs, mine in (
                    ("initial_delay", "base_s"),
                    ("backoff_factor", "multiplier"),
                    ("max_delay", "cap_s"),
                ):
                    value = number(level, theirs, path)
                    if value is not None:
                        ours[mine] = float(value)
                if "base_s" in ours and "cap_s" not in ours:
                    # No cap given: the longest wait its attempts reach, so the class's own cap cannot cut it.
                    growth = ours.get("multiplier", 2.0) ** (max(int(ours.get("attempts", 2)), 2) - 2)
                    ours["cap_s"] = ours["base_s"] * growth
            for cls in classes:
                mine_now = policies.setdefault(cls, {})
                if not isinstance(mine_now, dict):
                    raise bad(f"policies.{cls}", "must be a mapping", mine_now)
                for key, value in ours.items():
                    if key == "attempts" and "retries" in mine_now:
                        continue
                    mine_now.setdefault(key, value)  # the user's own `policies` entry wins
            shown = ", ".join(f"{k}={v:g}" for k, v in ours.items())
            notes.append(f"{file}: retry_policy.{level_name} became policies {'/'.join(classes)}: {shown}")

    models = user.get("models")
    if isinstance(models, dict) and ("primary" in models or "fallbacks" in models):
        if "chain" in models:
            raise bad("models.primary", "give models.chain or the primary/fallbacks shape, not both", models["primary"])
        entries = [models.pop("primary")] if "primary" in models else []
        fallbacks = models.pop("fallbacks", None) or []
        if not isinstance(fallbacks, list):
            raise bad("models.fallbacks", "must be a list of {name, endpoint}", fallbacks)
        chain = []
        for i, entry in enumerate([*entries, *fallbacks]):
            path = "models.primary" if entries and i == 0 else f"models.fallbacks[{i - len(entries)}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "endpoint" not in entry:
                raise bad(path, "must be a mapping with name and endpoint", entry)
            rest = {k: v for k, v in entry.items() if k not in ("name", "endpoint", "model")}
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", entry["name"]).strip(".-")[:128] or f"model-{i + 1}"
            chain.append(
                {
                    "name": name.lower(),
                    "base_url": entry["endpoint"],
                    "model": entry.get("model") or entry["name"],
                    **rest,
                }
            )
        models["chain"] = chain
        notes.append(f"{file}: models.primary/fallbacks became models.chain: {' -> '.join(e['name'] for e in chain)}")
    return notes


def openclaw_json_path(env: Mapping[str, str]) -> Path:
    """OpenClaw's own config file, where OpenClaw finds it (core.openclaw_config.config_path)."""
    return openclaw_config.config_path(env)


_warned_task_policies: set[str] = set()


def _there(path: Path) -> bool:
    """Whether the user's config.yaml is there; a folder on its way this user cannot look into (a state folder
    made by root with sudo, say) is a ConfigError naming it (exit 2), not an "internal error"."""
    try:
        return path.exists()
    except PermissionError:
        raise ConfigError(
            f"cannot look into {path.parent} (permission denied): is it another user's? Make it this user's, or"
            " set SELFHEAL_HOME to a folder of this user's",
            file=path,
        ) from None


def _openclaw_task_policies(path: Path, env: Mapping[str, str]) -> dict[str, Any] | None:
    """`task_policies` of openclaw.json (the first source document puts its retry settings there), or None
    when the file or the key is missing. The file is read as OpenClaw reads it (JSON5, includes); one that
    cannot be read is OpenClaw's business, so it is skipped. OpenClaw itself refuses an unknown top-level key
    (its gateway will not start), so the key is used but the user is told, once per process, to move it."""
    if not path.is_file():
        return None
    try:
        data = openclaw_config.read_openclaw_json(path, env)
    except ConfigError as exc:
        logger.debug("%s; its task_policies (if any) are not used", exc)
        return None
    found = data.get("task_policies")
    if not isinstance(found, dict):
        return None
    if str(path) not in _warned_task_policies:
        _warned_task_policies.add(str(path))
        logger.warning(
            "%s: task_policies is used, but OpenClaw refuses unknown keys in openclaw.json (its gateway will not "
            "start): move it to self-heal's config.yaml (%s), where it means the same",
            path,
            user_config_path(env)[0],
        )
    return found


def _task_policies_layer(
    policies: dict[str, Any], base: dict[str, Any], file: str
) -> tuple[dict[str, Any], list[str] | None, list[str]]:
    """openclaw.json's `task_policies` as a settings layer over skill.yaml (the user's config.yaml goes over
    it): `default_retry: {max_attempts, backoff: {initial, factor, max}}` for every class skill.yaml retries,
    and `model_fallbacks: [model names]`, the chain's order (returned apart: it applies to the merged chain)."""

    def bad(key: str, message: str, value: object) -> ConfigError:
        return ConfigError(f"{message}, got {value!r}", file=file, key=f"task_policies.{key}", value=value)

    layer: dict[str, Any] = {}
    notes: list[str] = []
    default = policies.get("default_retry")
    if default is not None:
        if not isinstance(default, dict) or set(default) - {"max_attempts", "backoff"}:
            raise bad("default_retry", "must be a mapping with max_attempts and backoff", default)
        ours: dict[str, Any] = {}
        attempts = default.get("max_attempts")
        if attempts is not None:
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
                raise bad("default_retry.max_attempts", "must be a whole number >= 1", attempts)
            ours["attempts"] = attempts
        backoff = default.get("backoff") or {}
        if not isinstance(backoff, dict) or set(backoff) - {"initial", "factor", "max"}:
            raise bad("default_retry.backoff", "must be a mapping with initial, factor, max", backoff)
        for theirs, mine, low in (("initial", "base_s", 0), ("factor", "multiplier", 1), ("max", "cap_s", 0)):
            value = backoff.get(theirs)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise bad(f"default_retry.backoff.{theirs}", f"must be a number >= {low}", value)
            ours[mine] = float(value)
        shipped = base.get("policies") or {}
        retried = [c for c, p in shipped.items() if isinstance(p, dict) and int(p.get("attempts", 1)) > 1]
        layer["policies"] = {c: dict(ours) for c in retried}
        shown = ", ".join(f"{k}={v:g}" for k, v in ours.items())
        notes.append(f"{file}: task_policies.default_retry became policies {'/'.join(retried)}: {shown}")
    order = policies.get("model_fallbacks")
    if order is not None and (not isinstance(order, list) or not all(isinstance(n, str) and n for n in order)):
        raise bad("model_fallbacks", "must be a list of model names", order)
    return layer, order, notes


def _chain_in_order(chain: list[Any], order: list[str], file: str) -> tuple[list[Any], str]:
    """The chain's entries named in `order` (by model or endpoint name), in that order; the rest left out."""
    by_name: dict[str, Any] = {}
    for entry in chain:
        if isinstance(entry, dict):
            for key in ("model", "name"):
                if isinstance(entry.get(key), str):
                    by_name.setdefault(entry[key], entry)
    picked = [by_name[n] for n in order if n in by_name]
    unknown = [n for n in order if n not in by_name]
    if not picked:
        return (
            chain,
            f"{file}: task_policies.model_fallbacks names no model of models.chain ({', '.join(order)}): not used",
        )
    note = f"{file}: task_policies.model_fallbacks ordered models.chain: {' -> '.join(str(e['name']) for e in picked)}"
    if unknown:
        note += f" (not in models.chain, so left out: {', '.join(unknown)})"
    return picked, note


def _retries_as_attempts(layer: dict[str, Any], marks: _Marks, file: str) -> None:
    """Rewrite each `policies.<class>.retries: N` of one settings file as `attempts: N + 1` (the first try
    plus N retries), in place; giving both in one policy, or a bad N, is an error naming the key."""
    policies = layer.get("policies")
    if not isinstance(policies, dict):
        return
    for name, policy in policies.items():
        if not isinstance(policy, dict) or "retries" not in policy:
            continue
        key = f"policies.{name}.retries"
        where = marks.get(key, (file, None, None))
        retries = policy.pop("retries")
        if "attempts" in policy:
            raise ConfigError(
                "give retries (tries after the first) or attempts (every try), not both",
                file=where[0],
                key=key,
                value=retries,
                line=where[1],
                column=where[2],
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 999:
            raise ConfigError(
                f"must be a whole number from 0 to 999, got {retries!r}",
                file=where[0],
                key=key,
                value=retries,
                line=where[1],
                column=where[2],
            )
        policy["attempts"] = retries + 1
        mark = marks.get(key)
        if mark is not None:
            marks[f"policies.{name}.attempts"] = mark


def _store_from_env(config: Config, env: Mapping[str, str]) -> Config:
    """SELFHEAL_DATABASE_URL and SELFHEAL_HOST_ID override store.url and store.host_id."""
    url = env.get("SELFHEAL_DATABASE_URL") or None
    host = env.get("SELFHEAL_HOST_ID") or None
    if url is None and host is None:
        return config
    if url is not None:
        # The variable is the environment, so a password in it is allowed (and masked like any URL's).
        problem = check_database_url(url, password_allowed=True)
        if problem:
            raise ConfigError(problem, key="SELFHEAL_DATABASE_URL", file="<environment>")
    if host is not None and _check_id(host):
        raise ConfigError(str(_check_id(host)), key="SELFHEAL_HOST_ID", file="<environment>", value=host)
    store = dataclasses.replace(config.store, url=url or config.store.url, host_id=host or config.store.host_id)
    return dataclasses.replace(config, store=store)


def _build_config(conv: _Converter, settings: dict[str, Any], manifest: Manifest, files: tuple[str, ...]) -> Config:
    hints = _shape(Config)[0]
    known = {f.name for f in dataclasses.fields(Config)} - {"manifest", "files", "chain_configured"}
    for key in settings:
        if key not in known:
            raise conv.unknown_key("", str(key), sorted(known))
    parts = {}
    for name in sorted(known):
        if name not in settings:
            raise conv.error(name, "missing key")
        parts[name] = conv.value(hints[name], settings[name], name)
    config = Config(**parts, manifest=manifest, files=files)

    # Fill each policy's jitter from retry.jitter, so every loaded policy is complete.
    default_jitter = config.retry.jitter
    filled = {
        f.name: dataclasses.replace(p, jitter=p.jitter or default_jitter)
        for f in dataclasses.fields(Policies)
        for p in [getattr(config.policies, f.name)]
    }
    config = dataclasses.replace(config, policies=Policies(**filled))

    names: dict[str, str] = {}
    for group in ("rules", "extra_rules"):  # shipped first, so a clash is reported at the user's rule
        for i, rule in enumerate(getattr(config.classify, group)):
            path = f"classify.{group}[{i}]"
            if rule.name in names:
                raise conv.error(f"{path}.name", f"duplicate rule name (also at {names[rule.name]})", rule.name)
            names[rule.name] = path
            if not (
                rule.status
                or rule.error_code
                or rule.header
                or rule.exception
                or rule.errno
                or rule.exit_code
                or rule.signal
                or rule.pattern
            ):
                raise conv.error(path, "a rule needs at least one condition")
    fix_names: dict[str, str] = {}
    for group, fix_rules in (("extra_rules", config.fixes.extra_rules), ("rules", config.fixes.rules)):
        for i, fix_rule in enumerate(fix_rules):
            path = f"fixes.{group}[{i}]"
            if fix_rule.name in fix_names:
                raise conv.error(
                    f"{path}.name", f"duplicate rule name (also at {fix_names[fix_rule.name]})", fix_rule.name
                )
            fix_names[fix_rule.name] = path
            if not (fix_rule.error_class or fix_rule.kind or fix_rule.status or fix_rule.pattern):
                raise conv.error(path, "a rule needs at least one condition: class, kind, status or pattern")
            if not fix_rule.fix_steps:
                raise conv.error(f"{path}.fix_steps", "a rule needs at least one fix step")
    if config.tasks.log_keep_chars >= config.tasks.log_max_chars:
        raise conv.error(
            "tasks.log_keep_chars", "must be smaller than tasks.log_max_chars", config.tasks.log_keep_chars
        )
    if config.tasks.lease_s <= 2 * config.process.heartbeat_s:
        raise conv.error(
            "tasks.lease_s",
            f"must be more than twice process.heartbeat_s ({config.process.heartbeat_s:g}s), or a running task's"
            " lease would run out between its heartbeats",
            config.tasks.lease_s,
        )
    if config.tasks.solution_at_failures and config.tasks.solution_at_failures < config.tasks.analyze_at_failures:
        raise conv.error(
            "tasks.solution_at_failures",
            "must be 0 (no SOL task) or at least tasks.analyze_at_failures",
            config.tasks.solution_at_failures,
        )
    if config.tasks.manual_at_failures < config.tasks.analyze_at_failures:
        raise conv.error(
            "tasks.manual_at_failures", "must be at least tasks.analyze_at_failures", config.tasks.manual_at_failures
        )
    if config.store.url is not None:
        problem = check_database_url(config.store.url)
        if problem:
            raise conv.error("store.url", problem, mask_url_password(config.store.url))
    seen_models: set[str] = set()
    for i, endpoint in enumerate(config.models.chain):
        if endpoint.name in seen_models:
            raise conv.error(f"models.chain[{i}].name", "duplicate endpoint name", endpoint.name)
        seen_models.add(endpoint.name)
    return config


_cache_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str, str], tuple[tuple[float | None, ...], Config]] = {}


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return None


def get_config(env: Mapping[str, str] | None = None) -> Config:
    """load_config(), cached per process until skill.yaml or the user's file changes."""
    env = os.environ if env is None else env
    user_file, _ = user_config_path(env)
    openclaw_json = openclaw_json_path(env)
    key = (
        str(SKILL_YAML),
        str(user_file),
        str(openclaw_json),
        env.get("SELFHEAL_DATABASE_URL", ""),
        env.get("SELFHEAL_HOST_ID", ""),
    )
    stamp = (_mtime(SKILL_YAML), _mtime(user_file), _mtime(openclaw_json))
    with _cache_lock:
        hit = _cache.get(key)
        if hit and hit[0] == stamp:
            return hit[1]
    config = load_config(env=env)
    with _cache_lock:
        _cache[key] = (stamp, config)
    redactor_for(config)  # from now on everything this process writes is masked as these settings say
    return config


# --- the process's redactor, as the settings say ---------------------------------------------------------

_redactors: dict[tuple[object, ...], Redactor] = {}


def redactor_for(config: Config) -> Redactor:
    """The Redactor for these settings and the environment as it is now: built once per distinct pair
    (it compiles patterns and reads every secret-looking variable), so a Ledger per call stays cheap.
    It becomes the process's redactor: every file and stream written from now on goes through it."""
    keys = model_keys(config)
    key = (config.redact, tuple(keys), frozenset(os.environ.items()))
    found = _redactors.get(key)
    if found is None:
        if len(_redactors) > 16:  # the environment keeps changing (tests): do not grow without bound
            _redactors.clear()
        found = _redactors[key] = Redactor(
            env_names=config.redact.env_names, patterns=config.redact.patterns, extra_values=keys
        )
    install(found)
    return found


def model_keys(config: Config) -> list[str]:
    """The values of the key variables the model chain names: masked even if their names look harmless."""
    keys = [os.environ.get(e.api_key_env, "") for e in config.models.chain if e.api_key_env]
    for entry in config.models.chain:  # and of the variables its headers read
        for text in entry.headers.values():
            keys += [os.environ.get(name, "") for name in openclaw_config.variables(text)]
        keys += _url_secret_values(entry.base_url)
    return keys


def _url_secret_values(url: str) -> list[str]:
    """The values of environment variables a base URL carries beyond its host and path: in its query, fragment
    or user info (`?code=${FUNC_CODE}` in openclaw.json, expanded when the chain is built). A credential there
    is masked whatever its variable is called; one named like a secret already was."""
    parts = urllib.parse.urlsplit(url)
    carried = "\n".join((parts.query, parts.fragment, parts.username or "", parts.password or ""))
    if not carried.strip():
        return []
    return [value for value in os.environ.values() if len(value) >= MIN_SECRET_CHARS and value in carried]
