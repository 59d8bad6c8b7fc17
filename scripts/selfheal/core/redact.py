"""Secrets never reach a file: API keys, bearer tokens, passwords in URLs and secret env values are masked."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Shapes of secrets that need no context to recognise. A `pre` group is kept; the rest is masked.
_BUILTIN = (
    # OpenAI-style and similar prefixed keys: sk-..., sk-proj-..., gsk_..., xoxb-..., ghp_..., hf_...
    r"\b(?:sk|pk|rk|gsk|xox[abpr]|ghp|gho|ghs|github_pat|hf)[-_][A-Za-z0-9_\-]{16,}",
    # Authorization headers and bearer tokens.
    r"(?i)(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}",
    r"(?i)(?P<pre>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:basic\s+|token\s+)?)(?!bearer\s)[^\s\"']{8,}",
    # key=value, key: value and "key": "value" forms with secret-ish key names.
    r"""(?i)(?P<pre>\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|token|secret|password|passwd|pwd)"""
    r"""[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)[^\s&,;\"'}]{4,}""",
    # Passwords in URLs: scheme://user:password@host keeps the user, masks the password.
    r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]+(?=@)",
)


def _keep_pre(match: re.Match[str]) -> str:
    return (match.groupdict().get("pre") or "") + MASK


def _combined(patterns: list[str]) -> re.Pattern[str] | None:
    """All patterns as one alternation, for a quick yes/no; None if they cannot be combined."""
    parts = []
    for pattern in patterns:
        body = pattern.replace("(?P<pre>", "(?:")
        flags = re.match(r"\(\?([aiLmsux]+)\)", body)
        parts.append(f"(?{flags.group(1)}:{body[flags.end() :]})" if flags else f"(?:{body})")
    try:
        return re.compile("|".join(parts))
    except re.error:  # pragma: no cover - the built-in shapes combine; kept so a future one cannot break masking
        return None


class Redactor:
    """Masks secrets in text. Built once per process from the settings and the environment."""

    def __init__(
        self,
        *,
        env_names: str = r"(?i)(api[_-]?key|token|secret|passw(or)?d|credential|auth)",
        patterns: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        extra_values: Iterable[str] = (),
    ) -> None:
        env = os.environ if env is None else env
        name_re = re.compile(env_names)
        values = {v for k, v in env.items() if name_re.search(k) and len(v) >= 6}
        values.update(v for v in extra_values if v and len(v) >= 6)
        # Longest first, so a value that contains another is masked whole.
        literal = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
        self._literal = re.compile(literal) if literal else None
        self._builtin = [re.compile(p) for p in _BUILTIN]
        # Users' patterns always run in full: combining them would renumber their groups.
        self._user = [re.compile(p) for p in patterns]
        # One pass that says whether a built-in shape or a secret value could be present; most text has none.
        self._any = _combined([*_BUILTIN, *([literal] if literal else [])])

    def text(self, value: str) -> str:
        if len(value) < 6:
            return value
        if self._any is None or self._any.search(value):
            if self._literal is not None:
                value = self._literal.sub(MASK, value)
            for shape in self._builtin:
                value = shape.sub(_keep_pre, value)
        for shape in self._user:
            value = shape.sub(_keep_pre, value)
        return value

    def obj(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.obj(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.obj(v) for v in value]
        return value
