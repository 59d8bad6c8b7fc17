"""Answer checks and prompt templates: pure functions, case by case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfheal.errors import ConfigError, UsageError
from selfheal.models import prompts
from selfheal.models.output import (
    SCHEMA_MAX_BYTES,
    OutputProblem,
    check_answer,
    load_schema,
    schema_problems,
    strip_fences,
)


@pytest.mark.parametrize(
    ("text", "body"),
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('```\n{"a": 1}\n```', '{"a": 1}'),
        ('  ```JSON\n{"a": 1}```  ', '{"a": 1}'),
        ('{"a": 1}', '{"a": 1}'),
        ('Sure! ```json\n{"a": 1}\n```', 'Sure! ```json\n{"a": 1}\n```'),  # prose outside: not stripped
    ],
)
def test_strip_fences(text: str, body: str) -> None:
    """Only a fence wrapping the whole answer is removed."""
    assert strip_fences(text) == body


@pytest.mark.parametrize(
    ("content", "finish", "json_output", "words"),
    [
        (None, "stop", False, "empty answer"),
        ("   \n", "stop", False, "empty answer"),
        ("half an ans", "length", False, "cut off at the token limit"),
        ("not json", "stop", True, "not JSON"),
        ("[1, 2]", "stop", True, "a list, not an object"),
        ('Sure! ```json\n{"a": 1}\n```', "stop", True, "not JSON"),
        ('{"confidence": NaN}', "stop", True, "not JSON: NaN is not a JSON value"),
        ('{"score": -Infinity}', "stop", True, "not JSON: -Infinity is not a JSON value"),
        ("[" * 100_000 + "]" * 100_000, "stop", True, "nested too deeply"),
    ],
    ids=["none", "blank", "cut", "prose", "list", "prose-fence", "nan", "infinity", "deep"],
)
def test_unusable_answers_are_problems(content: str | None, finish: str, json_output: bool, words: str) -> None:
    """Empty, cut off, not JSON (NaN and Infinity are Python's, not JSON's; nesting too deep to read is a
    refusal, not a RecursionError out of the call), not an object: each is refused with a reason."""
    with pytest.raises(OutputProblem, match=words):
        check_answer(content, finish, json_output=json_output)


def test_usable_answers_pass() -> None:
    """Text passes as is; JSON comes back parsed."""
    assert check_answer("fine", "stop") is None
    assert check_answer('```json\n{"ok": true}\n```', None, json_output=True) == {"ok": True}


def test_an_answer_over_the_length_limit_is_a_problem() -> None:
    """The first document's check: more than 10,000 characters is not accepted; exactly the limit is."""
    assert check_answer("x" * 10_000, "stop", max_chars=10_000) is None
    with pytest.raises(OutputProblem, match="answer too long: 10001 characters, over the limit of 10000"):
        check_answer("x" * 10_001, "stop", max_chars=10_000)
    assert check_answer("x" * 10_001, "stop") is None  # 0: no limit


SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "score", "tags"],
    "properties": {
        "title": {"type": "string", "minLength": 2},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["ops", "dev"]}},
        "id": {"type": "string", "pattern": "^T-[0-9]+$"},
        "n": {"type": "integer"},
    },
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"title": "Q3", "score": 0.5, "tags": ["ops"]}, None),
        ({"title": "Q3", "score": 0.5}, "$: missing 'tags'"),
        ({"title": "Q", "score": 0.5, "tags": []}, "$.title: shorter than 2"),
        ({"title": "Q3", "score": 1.5, "tags": []}, "$.score: 1.5 is above 1"),
        ({"title": "Q3", "score": "high", "tags": []}, "$.score: expected number, got str"),
        ({"title": "Q3", "score": 0.1, "tags": ["sales"]}, "$.tags[0]: 'sales' is not one of"),
        ({"title": "Q3", "score": 0.1, "tags": [], "id": "X-1"}, "$.id: 'X-1' does not match"),
        ({"title": "Q3", "score": 0.1, "tags": [], "n": True}, "$.n: expected integer, got bool"),
        ([], "$: expected object, got list"),
    ],
)
def test_schema_problems(value: Any, problem: str | None) -> None:
    """The JSON Schema subset: types (bool is not a number), required, enum, pattern, bounds, items."""
    problems = schema_problems(value, SCHEMA)
    if problem is None:
        assert problems == []
    else:
        assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"type": "strng"}', "unknown type 'strng'"),
    ],
)
def test_bad_schema_files_are_usage_errors(tmp_path: Path, text: str, words: str) -> None:
    """A schema file that cannot be used is refused (exit 2) with its name."""
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=words) as info:
        load_schema(path)
    assert str(path) in str(info.value) and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": 5}, "$: type: must be a type name or a list of them"),
        ({"type": ["string", None]}, "$: type: must be a type name or a list of them"),
        ({"type": []}, "$: type: must be a type name or a list of them"),
        ({"properties": {"a": {"type": "strng"}}}, "$.properties.a: type: unknown type 'strng'"),
        ({"properties": {"a": True}}, "$.properties.a: must be a schema (a JSON object), got true"),
        ({"properties": ["a"]}, "$: properties: must be an object of schemas by key"),
        ({"items": [{"type": "string"}]}, "$.items: must be a schema (a JSON object)"),
        ({"items": {"enum": "abc"}}, "$.items: enum: must be a list of values"),
        ({"required": "name"}, '$: required: must be a list of key names (value "name")'),
        ({"pattern": "("}, "$: pattern: must be a regular expression (missing ), unterminated subpattern"),
        ({"pattern": 7}, "$: pattern: must be a regular expression (text) (value 7)"),
        ({"minimum": "1"}, '$: minimum: must be a number (value "1")'),
        ({"maximum": True}, "$: maximum: must be a number (value true)"),
        ({"minLength": -1}, "$: minLength: must be a whole number >= 0 (value -1)"),
        ({"minLength": 1.5}, "$: minLength: must be a whole number >= 0 (value 1.5)"),
    ],
)
def test_a_schema_file_that_is_json_but_no_schema_names_the_file_and_the_keyword(
    tmp_path: Path, schema: dict[str, Any], words: str
) -> None:
    """JSON the checker could not use (it would raise TypeError on the model's first answer, and every
    endpoint would be called for nothing) is refused at load, exit 2, naming the file and the keyword."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(UsageError) as info:
        load_schema(path)
    assert str(info.value).startswith(f"schema file {path}: ") and words in str(info.value)
    assert info.value.exit_code == 2


def test_a_schema_keyword_of_any_size_is_named_in_a_short_message(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"enum": "x" * 100_000}))
    with pytest.raises(UsageError, match="enum: must be a list of values") as info:
        load_schema(path)
    assert len(str(info.value)) < 300


def test_a_schema_nested_deeper_than_json_can_parse_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("[" * 100_000)
    with pytest.raises(UsageError, match="nested too deeply") as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_a_schema_file_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    """/dev/zero, or a file over SCHEMA_MAX_BYTES: refused by size, never read whole."""
    path = tmp_path / "big.json"
    with path.open("wb") as fh:
        fh.write(b'{"type": "object", "description": "')
        fh.truncate(SCHEMA_MAX_BYTES + 1)
    for source in (path, Path("/dev/zero")):
        with pytest.raises(UsageError, match=f"larger than {SCHEMA_MAX_BYTES} bytes") as info:
            load_schema(source)
        assert str(info.value).startswith(f"schema file {source}: ")


def test_every_shipped_prompt_renders_with_what_the_code_supplies() -> None:
    """The prompt files name exactly the placeholders the code fills."""
    assert "JSON object" in prompts.render("json_answer.txt", schema_hint="")
    text = prompts.render("simplify_json.txt", problem="not JSON", schema_hint=" with the keys: a (string)")
    assert "not JSON" in text and "a (string)" in text
    assert "200 words" in prompts.render("simplify_text.txt", problem="empty answer", max_words=200)
    assert "1. a" in prompts.render("simplify_split.txt", count=2, parts="1. a\n2. b")


def test_a_template_asking_for_an_unknown_placeholder_fails_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A placeholder the code does not supply is an error naming the file and the name."""
    (tmp_path / "x.txt").write_text("Hello {name}, your {role}.")
    monkeypatch.setattr(prompts, "PROMPTS", tmp_path)
    prompts._template.cache_clear()
    with pytest.raises(ConfigError, match="names placeholders the code does not supply: role") as info:
        prompts.render("x.txt", name="Ada")
    assert "x.txt" in str(info.value)
    prompts._template.cache_clear()
