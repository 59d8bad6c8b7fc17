"""The prompt templates in config/prompts/, filled with named values."""

from __future__ import annotations

import functools
import string
from pathlib import Path

from ..core.config import SKILL_ROOT
from ..errors import ConfigError

PROMPTS = SKILL_ROOT / "config" / "prompts"


@functools.lru_cache(maxsize=32)
def _template(name: str) -> tuple[str, frozenset[str]]:
    path = PROMPTS / name
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"prompt template missing ({exc.strerror})", file=path) from None
    fields = frozenset(f for _, f, _, _ in string.Formatter().parse(text) if f)
    return text, fields


def render(name: str, /, **values: object) -> str:
    """Fill `config/prompts/<name>`; every placeholder it names must be given, and only those."""
    text, fields = _template(name)
    missing = sorted(fields - set(values))
    if missing:
        raise ConfigError(f"names placeholders the code does not supply: {', '.join(missing)}", file=PROMPTS / name)
    return text.format_map({k: v for k, v in values.items() if k in fields})


def path_of(name: str) -> Path:
    return PROMPTS / name
