"""What a model answered, checked before anyone is told it succeeded: empty, cut short, not JSON, wrong shape.

Pure functions; the fallback chain turns a problem found here into a `format` failure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import UsageError

_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(?P<body>.*?)\n?\s*```\s*$", re.DOTALL)

_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


class OutputProblem(ValueError):
    """The answer is not usable as asked; `detail` says why (it becomes the failure's reason)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


def strip_fences(text: str) -> str:
    """The body of a ```json ... ``` block that wraps the whole answer, else the text unchanged."""
    match = _FENCE.match(text)
    return match.group("body") if match else text


def check_answer(
    content: str | None,
    finish_reason: str | None,
    *,
    json_output: bool = False,
    schema: dict[str, Any] | None = None,
    max_chars: int = 0,
) -> dict[str, Any] | None:
    """Raise OutputProblem unless the answer is complete, at most `max_chars` characters long (0: any
    length), and, if asked, a JSON object matching `schema`.

    Returns the parsed object for JSON output, else None.
    """
    if content is None or not content.strip():
        raise OutputProblem("empty answer")
    if max_chars and len(content) > max_chars:
        raise OutputProblem(f"answer too long: {len(content)} characters, over the limit of {max_chars}")
    if finish_reason == "length":
        raise OutputProblem("answer cut off at the token limit (finish_reason=length)")
    if not json_output:
        return None
    body = strip_fences(content)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise OutputProblem(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OutputProblem(f"JSON, but a {type(data).__name__}, not an object")
    if schema is not None:
        problems = schema_problems(data, schema)
        if problems:
            raise OutputProblem("does not match the schema: " + "; ".join(problems[:5]))
    return data


def schema_problems(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Problems of `value` against a JSON Schema subset: type, enum, required, properties, items,
    pattern, minimum, maximum, minLength. Empty when it matches."""
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_is(value, name) for name in names):
            return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{where}: shorter than {schema['minLength']} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: {value} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: {value} is above {schema['maximum']}")
    if isinstance(value, dict):
        problems += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += schema_problems(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{where}[{i}]")
    return problems


def _is(value: Any, name: str) -> bool:
    kind = _TYPES.get(name)
    if kind is None:
        return False
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, kind)


def load_schema(path: Path) -> dict[str, Any]:
    """Read a schema file; a file that is missing, not JSON, or not an object is a usage error (exit 2)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"schema file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"schema file {path}: not UTF-8 text") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"schema file {path}: not JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"schema file {path}: must be a JSON object (a JSON Schema), got {type(schema).__name__}")
    unknown = [t for t in _declared_types(schema) if t not in _TYPES]
    if unknown:
        raise UsageError(f"schema file {path}: unknown type {unknown[0]!r} (use {', '.join(_TYPES)})")
    return schema


def _declared_types(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return []
    found: list[str] = []
    declared = schema.get("type")
    found += declared if isinstance(declared, list) else [declared] if isinstance(declared, str) else []
    for sub in schema.get("properties", {}).values():
        found += _declared_types(sub)
    found += _declared_types(schema.get("items"))
    return found
