"""What a model answered, checked before anyone is told it succeeded: empty, cut short, not JSON, wrong shape.

Pure functions; the fallback chain turns a problem found here into a `format` failure.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..state.root import read_at_most

# The opening line of a fence that wraps a whole answer: ```, a language tag, a line break. Only the opening is a
# regular expression: a lazy body before a closing fence backtracks quadratically over white space, and a model
# looping on white space (JSON mode's known failure) sends hundreds of thousands of it.
_FENCE_OPEN = re.compile(r"\s*```[\w-]*\s*\n")
# Deeper than any answer a caller can use: a model looping on `[` or `{`. Deeper ones are refused before any
# recursive code (the redaction of --json, the cache) walks them and runs out of stack.
MAX_JSON_DEPTH = 100
# How much of a value from the answer a schema problem shows: the reason goes to stderr, the ledger and --json.
_SHOWN_CHARS = 80

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
    opening = _FENCE_OPEN.match(text)
    closed = text.rstrip()
    if opening is None or not closed.endswith("```") or len(closed) - 3 < opening.end():
        return text
    return text[opening.end() : len(closed) - 3].rstrip()


def _not_json(name: str) -> Any:
    """NaN and Infinity: Python's reader takes them, JSON has no such values (the answer would be printed
    as JSON no other reader takes, and a NaN passes every comparison a caller makes)."""
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number too big for a float (1e400) reads as Infinity: refused like the word itself."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is too large for a number JSON readers take")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest deeper than `limit` levels (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _brief(value: Any) -> str:
    """A value from the answer as a message shows it: its repr, cut to _SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


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
        data = json.loads(body, parse_constant=_not_json, parse_float=_finite)
    except ValueError as exc:
        raise OutputProblem(f"not JSON: {exc}") from None
    except RecursionError:
        raise OutputProblem("not JSON this reader can hold: nested too deeply") from None
    if _depth_over(data, MAX_JSON_DEPTH):
        raise OutputProblem(f"JSON nested deeper than {MAX_JSON_DEPTH} levels: not an answer anyone can use")
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
        problems.append(f"{where}: {_brief(value)} is not one of {_brief(schema['enum'])}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: {_brief(value)} does not match {_brief(schema['pattern'])}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{where}: shorter than {schema['minLength']} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: {_brief(value)} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: {_brief(value)} is above {schema['maximum']}")
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


# A schema is a few kilobytes; one bigger than this is a mistake (or /dev/zero), and is never read whole.
SCHEMA_MAX_BYTES = 1024 * 1024


def load_schema(path: Path) -> dict[str, Any]:
    """Read a schema file; a file that is missing, over SCHEMA_MAX_BYTES, not JSON, not an object, or not a
    schema that schema_problems can check (a keyword of the wrong kind: `{"type": 5}`) is a usage error
    (exit 2) naming the file and the keyword."""
    try:
        with path.open("rb") as fh:
            raw = read_at_most(fh, SCHEMA_MAX_BYTES)
    except OSError as exc:
        raise UsageError(f"schema file {path}: cannot read it ({exc.strerror})") from None
    if raw is None:
        raise UsageError(f"schema file {path}: larger than {SCHEMA_MAX_BYTES} bytes; not read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"schema file {path}: not UTF-8 text") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"schema file {path}: not JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"schema file {path}: nested too deeply to be a schema") from None
    if not isinstance(schema, dict):
        raise UsageError(f"schema file {path}: must be a JSON object (a JSON Schema), got {type(schema).__name__}")
    try:
        problem = _schema_problem(schema, "$")
    except RecursionError:
        problem = "nested too deeply to be a schema"
    if problem is not None:
        raise UsageError(f"schema file {path}: {problem}")
    return schema


def _shown(value: Any) -> str:
    """A value of the schema as JSON, cut to 80 characters: the message names it, never prints a whole file."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _schema_problem(schema: Any, where: str) -> str | None:
    """The first keyword of `schema` (at `where`, `$.properties.name` style) that schema_problems could not
    use, as `WHERE: KEYWORD: must be ... (value ...)`; None if every keyword it checks is of the right kind.
    Keywords it does not check (`title`, `$schema`, ...) are left alone."""
    if not isinstance(schema, dict):
        return f"{where}: must be a schema (a JSON object), got {_shown(schema)}"

    def bad(keyword: str, what: str) -> str:
        return f"{where}: {keyword}: must be {what} (value {_shown(schema[keyword])})"

    if "type" in schema:
        declared = schema["type"]
        names = declared if isinstance(declared, list) and declared else [declared]
        for name in names:
            if not isinstance(name, str):
                return bad("type", f"a type name or a list of them ({', '.join(_TYPES)})")
            if name not in _TYPES:
                return f"{where}: type: unknown type {name!r} (use {', '.join(_TYPES)})"
    if "enum" in schema and not isinstance(schema["enum"], list):
        return bad("enum", "a list of values")
    if "required" in schema and not (
        isinstance(schema["required"], list) and all(isinstance(k, str) for k in schema["required"])
    ):
        return bad("required", "a list of key names")
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            return bad("pattern", "a regular expression (text)")
        try:
            re.compile(schema["pattern"])
        except re.error as exc:
            return bad("pattern", f"a regular expression ({exc})")
    for keyword in ("minimum", "maximum"):
        if keyword in schema and not _number(schema[keyword]):
            return bad(keyword, "a number")
    if "minLength" in schema and not (
        isinstance(schema["minLength"], int) and not isinstance(schema["minLength"], bool) and schema["minLength"] >= 0
    ):
        return bad("minLength", "a whole number >= 0")
    if "properties" in schema:
        if not isinstance(schema["properties"], dict):
            return bad("properties", "an object of schemas by key")
        for key, sub in schema["properties"].items():
            problem = _schema_problem(sub, f"{where}.properties.{key}")
            if problem is not None:
                return problem
    if "items" in schema:
        return _schema_problem(schema["items"], f"{where}.items")
    return None
