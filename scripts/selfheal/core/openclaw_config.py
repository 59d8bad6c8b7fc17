"""OpenClaw's configuration file, openclaw.json: where it is, and one reader for every part that needs it.

Where, as OpenClaw 2026.9.6 finds it: $OPENCLAW_CONFIG_PATH, else $OPENCLAW_STATE_DIR/openclaw.json, else
<home>/.openclaw/openclaw.json, where <home> is $OPENCLAW_HOME, else $HOME.

How it is read, as OpenClaw reads it: JSON5 (`core.json5`, the grammar of the npm json5 package OpenClaw
parses it with), then every `$include` resolved (docs/gateway/config-secrets-env.md): one file replaces the
object that names it, a list of files is deep-merged in order, the object's other keys are merged over the
result; paths are relative to the including file and must stay inside the folder of openclaw.json (or a root
in $OPENCLAW_INCLUDE_ROOTS); at most 10 levels, 2 MB a file, no cycle. `${VAR}` in a string is OpenClaw's
environment substitution: `expand()` does it where a value is used (upper-case names only, `$${VAR}` is a
literal `${VAR}`, an unset or empty variable leaves the value unusable).

The model chain (`models.openclaw_chain`) needs the file read or an error naming the file
(`read_openclaw_json`); the log discovery, the gateway's port and the source documents' `task_policies` take
what can be read and carry on without it (`read_config`: {}).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..state import root
from . import json5

MAX_INCLUDE_DEPTH = 10
MAX_INCLUDE_BYTES = 2 * 1024 * 1024
# openclaw.json itself: far above any real configuration, low enough that a wrong file is refused, not read.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_MAX_PATH_CHARS = 4096
_VAR = re.compile(r"\$?\$\{([A-Z_][A-Z0-9_]*)\}")


# OpenClaw's home and state folder are found in the state layer (self-heal's own state lives in that folder).
openclaw_home = root.openclaw_home
state_dir = root.openclaw_state_dir


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where OpenClaw's configuration lives."""
    env = os.environ if env is None else env
    found = env.get("OPENCLAW_CONFIG_PATH")
    return root.expand_home(found, openclaw_home(env)) if found else state_dir(env) / "openclaw.json"


def not_a_file(path: Path) -> str | None:
    """What `path` is when it is there but is no regular file (links followed: the user's own file may be
    one): "a FIFO", "a folder"...; None when it is a file or is not there."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else root.file_kind(mode)


def read_raw(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of an OpenClaw configuration file, or ConfigError naming why not: not there or unreadable,
    not a regular file, over `limit`. Opened without blocking and checked before a byte is read: a FIFO (or
    /dev/zero) put where the file belongs would hang every reader, the cron health check among them, for
    good. A link is followed: the user's own file may be one."""
    try:
        fd, _ = root.open_regular(path)
    except root.NotRegularFile as exc:
        raise ConfigError(f"is {exc.kind}, not a configuration file", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read it ({exc.strerror or exc})", file=path) from None
    with os.fdopen(fd, "rb") as handle:
        try:
            raw = handle.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read it ({exc.strerror or exc})", file=path) from None
    if len(raw) > limit:
        raise ConfigError(f"is over {limit // (1024 * 1024)} MB: not a configuration file", file=path)
    return raw


def _read_text(path: Path, limit: int) -> str:
    raw = read_raw(path, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read it (not UTF-8 text at byte {exc.start})", file=path) from None


def _parse(path: Path, limit: int) -> Any:
    text = _read_text(path, limit)
    try:
        return json5.loads(text)
    except json5.JSON5Error as exc:
        raise ConfigError(f"is neither JSON nor JSON5 ({exc})", file=path) from None


def deep_merge(base: Any, over: Any) -> Any:
    """`over` merged into `base`: mappings key by key, anything else in `over` replaces what `base` had (as
    OpenClaw merges includes; the settings files merge the same way, core.config)."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else value
        return merged
    return over


class _Includes:
    """Resolves `$include` as OpenClaw does; remembers every file read (for the callers' change stamps)."""

    def __init__(self, top: Path, env: Mapping[str, str]) -> None:
        self.files: list[Path] = [top]
        roots = [top.parent.resolve()]
        for item in (env.get("OPENCLAW_INCLUDE_ROOTS") or "").split(os.pathsep):
            if item.strip() and os.path.isabs(item.strip()):
                roots.append(Path(item.strip()).resolve())
        self.roots = roots
        # Each file's resolved content, by its path and how deep it was named: includes that share files (a
        # diamond, or one naming the next eight times) are read once each, not once per path to them, which is
        # exponential in the depth. Safe to reuse: a file resolved once without a cycle has none below it that
        # leads back to any file naming it, and the depth is part of the key, so the 10-level bound holds.
        self.done: dict[tuple[Path, int], Any] = {}

    def resolve(self, value: Any, here: Path, chain: tuple[Path, ...], where: str) -> Any:
        if isinstance(value, list):
            return [self.resolve(item, here, chain, f"{where}[{i}]") for i, item in enumerate(value)]
        if not isinstance(value, dict):
            return value
        if "$include" not in value:
            return {
                key: self.resolve(item, here, chain, f"{where}.{key}" if where else key) for key, item in value.items()
            }
        spec = value["$include"]
        names = spec if isinstance(spec, list) else [spec]
        if not names or not all(isinstance(name, str) for name in names):
            raise ConfigError(f"{where or 'the top'}: $include must be a path or a list of paths", file=chain[-1])
        merged: Any = None
        for name in names:
            included = self._load(name, here, chain, where)
            merged = included if merged is None else deep_merge(merged, included)
        rest = {key: item for key, item in value.items() if key != "$include"}
        if rest:
            merged = deep_merge(merged if merged is not None else {}, self.resolve(rest, here, chain, where))
        return merged

    def _load(self, name: str, here: Path, chain: tuple[Path, ...], where: str) -> Any:
        who = chain[-1]
        if "\0" in name or len(name) >= _MAX_PATH_CHARS:
            raise ConfigError(f"{where or 'the top'}: $include {name[:80]!r} is not a usable path", file=who)
        target = (here / name).resolve()
        if len(str(target)) >= _MAX_PATH_CHARS:
            raise ConfigError(f"{where or 'the top'}: $include {name[:80]!r} is not a usable path", file=who)
        if not any(target == root or root in target.parents for root in self.roots):
            raise ConfigError(
                f"{where or 'the top'}: $include {name!r} is outside {self.roots[0]} "
                "(OpenClaw reads includes only there, or in $OPENCLAW_INCLUDE_ROOTS)",
                file=who,
            )
        if target in chain:
            raise ConfigError(f"{where or 'the top'}: $include {name!r} includes itself (a cycle)", file=who)
        if len(chain) > MAX_INCLUDE_DEPTH:
            raise ConfigError(f"{where or 'the top'}: includes nest over {MAX_INCLUDE_DEPTH} levels", file=who)
        if not target.is_file():
            what = not_a_file(target)
            problem = f"{target} is {what}, not a file" if what else f"no such file {target}"
            raise ConfigError(f"{where or 'the top'}: $include {name!r}: {problem}", file=who)
        if (target, len(chain)) in self.done:
            return self.done[target, len(chain)]
        if target not in self.files:
            self.files.append(target)
        found = self.resolve(_parse(target, MAX_INCLUDE_BYTES), target.parent, (*chain, target), where)
        self.done[target, len(chain)] = found
        return found


def read_openclaw_files(path: Path, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """openclaw.json as one mapping, its `$include`s resolved; and every file it was read from."""
    env = os.environ if env is None else env
    includes = _Includes(path, env)
    data = includes.resolve(_parse(path, MAX_CONFIG_BYTES), path.parent, (path.resolve(),), "")
    if not isinstance(data, dict):
        raise ConfigError("must be one JSON object", file=path)
    return data, tuple(includes.files)


def read_openclaw_json(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """openclaw.json as a mapping (JSON5, includes resolved), or ConfigError naming the file and the problem."""
    return read_openclaw_files(path, env)[0]


def read_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """openclaw.json as a mapping, or {} when it is missing, unreadable or not one JSON (or JSON5) object."""
    try:
        return read_openclaw_json(config_path(env), env)
    except ConfigError:
        return {}


def expand(value: str, env: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """OpenClaw's `${VAR}` substitution in one string: (the value, the variables it needs that are unset or
    empty). Upper-case names only; `$${VAR}` stands for a literal `${VAR}`."""
    missing: list[str] = []

    def one(found: re.Match[str]) -> str:
        if found.group(0).startswith("$$"):
            return found.group(0)[1:]
        name = found.group(1)
        if not env.get(name):
            missing.append(name)
            return found.group(0)
        return env[name]

    return _VAR.sub(one, value), tuple(dict.fromkeys(missing))


def variables(value: str) -> tuple[str, ...]:
    """The variables a string's `${VAR}`s name (escaped `$${VAR}`s left out)."""
    return tuple(dict.fromkeys(m.group(1) for m in _VAR.finditer(value) if not m.group(0).startswith("$$")))
