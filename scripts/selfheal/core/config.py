"""Settings: skill.yaml's defaults, deep-merged with the user's config.yaml, loaded into frozen dataclasses.

Defaults live only in skill.yaml; the dataclasses below give no default for any setting, so a setting
missing from skill.yaml is a load error, not a silent fallback. Every error names the file, the key
path, the value and, where the YAML has one, the line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import threading
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError
from ..state.redact import Redactor, install
from ..state.root import read_at_most, resolve_state_root

ErrorClass = Literal[
    "transient", "rate_limit", "timeout", "resource", "format", "permanent", "auth", "fatal", "unknown"
]
ERROR_CLASSES: tuple[str, ...] = typing.get_args(ErrorClass)
Jitter = Literal["full", "equal", "decorrelated", "none"]

SKILL_ROOT = Path(__file__).resolve().parents[3]
SKILL_YAML = SKILL_ROOT / "skill.yaml"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")


def _check_url(value: object) -> str | None:
    if not isinstance(value, str) or not re.match(r"https?://[^\s/:]+(:\d{1,5})?(/\S*)?\Z", value):
        return "must be an http:// or https:// URL with a host"
    return None


def _check_env_name(value: object) -> str | None:
    if value is not None and not (isinstance(value, str) and _ENV_NAME.match(value)):
        return "must be an environment variable name (letters, digits, underscore)"
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
    jitter: Jitter | None = None


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
    jitter: Jitter


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


@dataclass(frozen=True)
class WorkflowSettings:
    max_resumes_without_progress: int = field(metadata=_meta(lo=1, hi=1000))
    output_tail_chars: int = field(metadata=_meta(lo=0, hi=10_000_000))
    notify: tuple[str, ...]
    notify_timeout_s: float = field(metadata=_meta(gt=0, hi=3600))


@dataclass(frozen=True)
class TaskSettings:
    analyze_at_failures: int = field(metadata=_meta(lo=1, hi=1000))
    manual_at_failures: int = field(metadata=_meta(lo=1, hi=1000))
    stuck_after_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))
    log_max_chars: int = field(metadata=_meta(lo=1000, hi=1_000_000_000))
    log_keep_chars: int = field(metadata=_meta(lo=100, hi=1_000_000_000))
    last_error_chars: int = field(metadata=_meta(lo=100, hi=1_000_000))
    archive_after_days: float = field(metadata=_meta(lo=0, hi=36500))


@dataclass(frozen=True)
class HealthSettings:
    """health_check.py: where the gateway answers, how old a status file may be, what counts as stuck or low."""

    # Unset means http://127.0.0.1:<port>, the port from OPENCLAW_GATEWAY_PORT, gateway.port or 18789.
    gateway_url: str | None = field(metadata=_meta(check=_check_url))
    timeout_s: float = field(metadata=_meta(gt=0, hi=60))
    status_max_age_minutes: float = field(metadata=_meta(gt=0, hi=30 * 24 * 60))
    status_dirs: tuple[str, ...]
    stuck_after_s: float = field(metadata=_meta(gt=0, hi=7 * 86400))
    disk_min_free_mb: int = field(metadata=_meta(lo=0, hi=1_000_000_000))


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


@dataclass(frozen=True)
class LedgerSettings:
    reason_max_chars: int = field(metadata=_meta(lo=20, hi=100_000))
    keep_days: int = field(metadata=_meta(lo=0, hi=36_500))


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
    # Unset means models.timeout_s.
    timeout_s: float | None = field(default=None, metadata=_meta(gt=0, hi=86400))
    # Unset means unknown: a too-long request only moves to entries that declare a larger window.
    context_tokens: int | None = field(default=None, metadata=_meta(lo=1))
    # Unset means not local: no GPU memory check before calling it.
    local: bool | None = None


@dataclass(frozen=True)
class ModelSettings:
    timeout_s: float = field(metadata=_meta(gt=0, hi=86400))
    timeout_per_1k_tokens_s: float = field(metadata=_meta(lo=0, hi=3600))
    expected_tokens: int = field(metadata=_meta(lo=1, hi=10_000_000))
    connect_timeout_s: float = field(metadata=_meta(gt=0, hi=600))
    deadline_s: float = field(metadata=_meta(gt=0, hi=86400))
    max_wait_before_fallback_s: float = field(metadata=_meta(lo=0, hi=3600))
    stream_first_token_s: float = field(metadata=_meta(gt=0, hi=86400))
    stream_idle_s: float = field(metadata=_meta(gt=0, hi=86400))
    gpu_free_mb_min: int = field(metadata=_meta(lo=0))
    simplify_max_prompt_chars: int = field(metadata=_meta(lo=100))
    chain: tuple[ModelEndpoint, ...]


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


FIX_ACTIONS = ("reset_breaker", "quarantine_checkpoint", "requeue_task", "void_task", "rerun_task")
# The allowed actions that cannot be undone: `self_heal.py --apply` does them only when a person adds
# --allow-irreversible, and a model's proposal that names one is never marked ready.
IRREVERSIBLE_ACTIONS = ("void_task",)
FIX_KINDS = ("lane_error", "fallback_exhausted", "cron_failed", "skill_invalid", "cli_failed")
FixAction = Literal["reset_breaker", "quarantine_checkpoint", "requeue_task", "void_task", "rerun_task"]
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
    actions: tuple[FixAction, ...] = ()
    area: FixArea = "infra"


@dataclass(frozen=True)
class FixSettings:
    use_model: bool
    model_at_failures: int = field(metadata=_meta(lo=1, hi=1000))
    model_deadline_s: float = field(metadata=_meta(gt=0, hi=3600))
    min_confidence: float = field(metadata=_meta(lo=0, hi=1))
    evidence_lines: int = field(metadata=_meta(lo=1, hi=10_000))
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
    log: LogSettings
    redact: RedactSettings
    models: ModelSettings
    classify: ClassifySettings
    fixes: FixSettings
    manifest: Manifest = field(compare=False)
    files: tuple[str, ...] = field(default=(), compare=False)


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
        with path.open("rb") as fh:
            capped = read_at_most(fh, CONFIG_MAX_BYTES)
        if capped is None:
            raise ConfigError(f"larger than {CONFIG_MAX_BYTES} bytes; a settings file is a few kilobytes", file=path)
        text = capped.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
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


def deep_merge(base: object, over: object) -> object:
    """Mappings merge key by key; anything else in `over` replaces what `base` had."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return over


# --- converting plain data into the dataclasses ----------------------------------------------------------


class _Converter:
    def __init__(self, marks: _Marks, default_file: str) -> None:
        self.marks = marks
        self.default_file = default_file

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
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        by_key = {(f.metadata.get("key") or f.name): f for f in fields if f.init}
        for key in data:
            if key not in by_key:
                sub = f"{path}.{key}" if path else str(key)
                close = difflib.get_close_matches(str(key), list(by_key), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(sub, f"unknown key{hint}")
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
                    raise self.error(where, problem, item)

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
    return getattr(tp, "__name__", str(tp))


# --- loading -------------------------------------------------------------------------------------------------


def user_config_path(env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The user's config file, and whether the user named it explicitly (then it must exist)."""
    env = os.environ if env is None else env
    named = env.get("SELFHEAL_CONFIG")
    if named:
        return Path(named).expanduser(), True
    return resolve_state_root(env) / "config.yaml", False


def load_config(
    *,
    env: Mapping[str, str] | None = None,
    skill_yaml: Path | None = None,
    user_file: Path | None = None,
) -> Config:
    """Load skill.yaml, merge the user's config over it and validate; raise ConfigError naming the culprit."""
    env = os.environ if env is None else env
    skill_yaml = skill_yaml or SKILL_YAML
    marks: _Marks = {}
    base = read_yaml(skill_yaml, marks)
    if not isinstance(base, dict):
        raise ConfigError("must be a mapping of settings", file=skill_yaml)
    files = [str(skill_yaml)]

    if user_file is None:
        user_file, required = user_config_path(env)
    else:
        required = True
    user: object = None
    if required or user_file.exists():
        user_marks: _Marks = {}
        user = read_yaml(user_file, user_marks)
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError("must be a mapping of settings", file=user_file, value=user)
        for key in user:
            if key in MANIFEST_KEYS:
                file, line, column = user_marks[str(key)]
                raise ConfigError(
                    "is part of the skill's manifest and cannot be overridden",
                    file=file,
                    key=str(key),
                    line=line,
                    column=column,
                )
        # A user's key or list replaces skill.yaml's below it, so its positions replace them too.
        for path in user_marks:
            for stale in [m for m in marks if m == path or m.startswith((path + ".", path + "["))]:
                del marks[stale]
        marks.update(user_marks)
        files.append(str(user_file))

    manifest_data = {k: v for k, v in base.items() if k in MANIFEST_KEYS}
    settings = deep_merge({k: v for k, v in base.items() if k not in MANIFEST_KEYS}, user or {})
    conv = _Converter(marks, str(user_file) if user else str(skill_yaml))
    manifest = conv.dataclass(Manifest, manifest_data, "")
    return _build_config(conv, typing.cast(dict[str, Any], settings), manifest, tuple(files))


def _build_config(conv: _Converter, settings: dict[str, Any], manifest: Manifest, files: tuple[str, ...]) -> Config:
    hints = typing.get_type_hints(Config)
    known = {f.name for f in dataclasses.fields(Config)} - {"manifest", "files"}
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise conv.error(str(key), "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
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
    if config.tasks.manual_at_failures < config.tasks.analyze_at_failures:
        raise conv.error(
            "tasks.manual_at_failures", "must be at least tasks.analyze_at_failures", config.tasks.manual_at_failures
        )
    seen_models: set[str] = set()
    for i, endpoint in enumerate(config.models.chain):
        if endpoint.name in seen_models:
            raise conv.error(f"models.chain[{i}].name", "duplicate endpoint name", endpoint.name)
        seen_models.add(endpoint.name)
    return config


_cache_lock = threading.Lock()
_cache: dict[tuple[str, str], tuple[tuple[float | None, ...], Config]] = {}


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return None


def get_config(env: Mapping[str, str] | None = None) -> Config:
    """load_config(), cached per process until skill.yaml or the user's file changes."""
    env = os.environ if env is None else env
    user_file, _ = user_config_path(env)
    key = (str(SKILL_YAML), str(user_file))
    stamp = (_mtime(SKILL_YAML), _mtime(user_file))
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
    keys = _model_keys(config)
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


def _model_keys(config: Config) -> list[str]:
    """The values of the key variables the model chain names: masked even if their names look harmless."""
    return [os.environ.get(e.api_key_env, "") for e in config.models.chain if e.api_key_env]
