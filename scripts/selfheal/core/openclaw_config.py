"""OpenClaw's configuration file, openclaw.json: where it is, and one reader for every part that needs it.

The file is $OPENCLAW_CONFIG_PATH, else $OPENCLAW_STATE_DIR/openclaw.json, else ~/.openclaw/openclaw.json.
OpenClaw's docs write it as JSON5 (comments, trailing commas, bare keys), which is read too. The model chain
(`openclaw_chain`) needs it read or an error naming the file (`read_openclaw_json`); the log discovery and the
gateway's port (`observe`) take what can be read and carry on without it (`read_config`: {}).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where OpenClaw's configuration lives."""
    env = os.environ if env is None else env
    if env.get("OPENCLAW_CONFIG_PATH"):
        return Path(env["OPENCLAW_CONFIG_PATH"]).expanduser()
    state = env.get("OPENCLAW_STATE_DIR")
    base = Path(state).expanduser() if state else Path(env.get("HOME") or Path.home()) / ".openclaw"
    return base / "openclaw.json"


def read_openclaw_json(path: Path) -> dict[str, Any]:
    """openclaw.json as a mapping: JSON, or the JSON5 its docs write (comments, trailing commas, bare keys)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it ({getattr(exc, 'strerror', None) or exc})", file=path) from None
    try:
        data = json.loads(text)
    except ValueError:
        try:  # JSON5 minus its comments is YAML's flow style, near enough for a config file
            data = yaml.safe_load(_strip_comments(text))
        except yaml.YAMLError as exc:
            raise ConfigError(f"is neither JSON nor JSON5 ({str(exc).splitlines()[0]})", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError("must be one JSON object", file=path)
    return data


def _strip_comments(text: str) -> str:
    """Drop // and /* */ comments outside strings."""
    out: list[str] = []
    i, n = 0, len(text)
    quote: str | None = None
    while i < n:
        c = text[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            out.append(c)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def read_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """openclaw.json as a mapping, or {} when it is missing, unreadable or not one JSON (or JSON5) object."""
    try:
        return read_openclaw_json(config_path(env))
    except ConfigError:
        return {}
