"""selfheal.core.json5 reads openclaw.json exactly as OpenClaw does: with the npm json5 package (2.2.3).

Unit cases for each rule of the format and for invalid input, then a differential test against the real
package from the pinned OpenClaw install (the `openclaw` fixture, tests/helpers/openclaw.py): one run of
OpenClaw's own Node parses a batch of hand-written cases, seeded random documents using every feature and
random mutations of them (often invalid), and both sides must agree value for value and on what is invalid.
The same run checks the identifier tables against the package's own and white space over the whole BMP.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.openclaw import OpenClaw

from selfheal.core.json5 import _ASCII_HEAD, WHITESPACE, JSON5Error, identifier_ranges, loads

ID_START_RANGES, ID_CONTINUE_RANGES = identifier_ranges()

# -- comparing values ---------------------------------------------------------------------------------------


def same(got: Any, want: Any) -> bool:
    """Equal, and of the same type: int is not float, NaN equals NaN, -0.0 is not 0.0, key order ignored."""
    if isinstance(want, float):
        if not isinstance(got, float):
            return False
        if math.isnan(want):
            return math.isnan(got)
        return got == want and math.copysign(1, got) == math.copysign(1, want)
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    return type(got) is type(want) and got == want


def same_as_npm(got: Any, tagged: Any) -> bool:
    """`got` (from loads) against a value from npm json5 as the Node script tags it: numbers as {"n": String(v)}
    ("-0" for negative zero), arrays as {"a": [...]}, objects as {"o": [[key, value], ...]}. npm returns JS
    numbers: an int must equal one numerically; a float must also match NaN and the sign of zero."""
    if tagged is None or isinstance(tagged, (bool, str)):
        return type(got) is type(tagged) and got == tagged
    if "n" in tagged:
        number = float(tagged["n"])
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return False
        if isinstance(got, int):  # Python ints have no -0: 0 stands for npm's 0 and -0 alike
            try:
                return float(got) == number
            except OverflowError:
                return number == math.copysign(math.inf, got)
        if math.isnan(number):
            return math.isnan(got)
        return got == number and math.copysign(1, got) == math.copysign(1, number)
    if "a" in tagged:
        items = tagged["a"]
        return isinstance(got, list) and len(got) == len(items) and all(map(same_as_npm, got, items))
    members = dict(tagged["o"])
    return (
        isinstance(got, dict)
        and got.keys() == members.keys()
        and all(same_as_npm(got[k], v) for k, v in members.items())
    )


# -- the rules, one by one ------------------------------------------------------------------------------------

NAN = math.nan
INF = math.inf
WS_SAMPLES = [
    "\t", "\n", "\r", "\r\n", "\v", "\f", " ", "\u00a0", "\u2028", "\u2029", "\ufeff",
    "\u1680", "\u2000", "\u2005", "\u200a", "\u202f", "\u205f", "\u3000",
]  # fmt: skip

VALID: list[tuple[str, Any]] = [
    # what YAML misread
    ('{primary:"a/b"}', {"primary": "a/b"}),
    ("{a:'Bob\\'s'}", {"a": "Bob's"}),
    ("{\ta:\t'x',\n\tb:\t1}", {"a": "x", "b": 1}),
    ("{url: 'http://example.com/a'} // comment", {"url": "http://example.com/a"}),
    # comments
    ("// first\n{a:1} // last", {"a": 1}),
    ("/* a */ [1, /* b */ 2] /* c */", [1, 2]),
    ("/***/1", 1),
    ("/* ** / * */ 1", 1),
    ("/* line\n * two */ 1", 1),
    ("1 // no line break after it", 1),
    ("1 //", 1),
    ("// a\r1", 1),
    ("// a\u20281", 1),
    ("// a\u20291", 1),
    ("{a /* here */ : /* and */ 1 /* and */ , /* too */ }", {"a": 1}),
    ("[1//x\n,2]", [1, 2]),
    # white space
    *((f"{ws}[{ws}1{ws},{ws}]{ws}", [1]) for ws in WS_SAMPLES),
    ("\ufeff{a:1}", {"a": 1}),
    ("{a:1,\rb:2}", {"a": 1, "b": 2}),
    # keys
    ("{$:1, _:2, a1$_:3, $a:4, _0:5}", {"$": 1, "_": 2, "a1$_": 3, "$a": 4, "_0": 5}),
    ("{ümlaut:1, 日本:2, ℵ:3, Ⅻ:4, a٣:5, é\u0301:6}", {"ümlaut": 1, "日本": 2, "ℵ": 3, "Ⅻ": 4, "a٣": 5, "é\u0301": 6}),
    ("{𐀀:1}", {"𐀀": 1}),
    ("{a\u200cb:1, a\u200d:2}", {"a\u200cb": 1, "a\u200d": 2}),
    (
        "{\\u0061:1, a\\u0062c:2, \\u0024:3, \\u005f:4, a\\u200c:5, a\\u0030:6}",
        {"a": 1, "abc": 2, "$": 3, "_": 4, "a\u200c": 5, "a0": 6},
    ),
    ("{\\u00e9t\\u00E9:1}", {"été": 1}),
    (
        "{null:1, true:2, false:3, Infinity:4, NaN:5, if:6}",
        {"null": 1, "true": 2, "false": 3, "Infinity": 4, "NaN": 5, "if": 6},
    ),
    ("{'a b':1, \"c:d\":2, '':3, '1':4}", {"a b": 1, "c:d": 2, "": 3, "1": 4}),
    ("{ a : 1 }", {"a": 1}),
    ("{a:1,}", {"a": 1}),
    ("{}", {}),
    ("{ }", {}),
    ("{a:1, b:2, a:3}", {"a": 3, "b": 2}),
    ("{__proto__:1, constructor:2}", {"__proto__": 1, "constructor": 2}),
    # arrays and nesting
    ("[]", []),
    ("[ ]", []),
    ("[1,]", [1]),
    ("[[],[[]],{}]", [[], [[]], {}]),
    ("{a:{b:[{c:[]}]}}", {"a": {"b": [{"c": []}]}}),
    ("[null,true,false]", [None, True, False]),
    # strings
    ("'\\b\\f\\n\\r\\t\\v\\0'", "\b\f\n\r\t\v\0"),
    ("'\\'\\\"\\\\'", "'\"\\"),
    ("'\\x41\\xfF\\u00e9\\u00E9'", "A\xff\u00e9\u00e9"),
    ("'\\uD83D\\uDE00'", "😀"),
    ("'\\ud83d\\ude00!'", "😀!"),
    ("'\\uD800'", "\ud800"),
    ("'\\uDE00\\uD83D'", "\ude00\ud83d"),
    ("'a\\\nb'", "ab"),
    ("'a\\\rb'", "ab"),
    ("'a\\\r\nb'", "ab"),
    ("'a\\\u2028b'", "ab"),
    ("'a\\\u2029b'", "ab"),
    ("'\\q\\ \\/\\a\\é\\😀'", "q /aé😀"),
    ("'\\0x'", "\0x"),
    ("'a\u2028b\u2029c'", "a\u2028b\u2029c"),
    ("'tab\there \x01 \x7f'", "tab\there \x01 \x7f"),
    ('"it\'s"', "it's"),
    ("'say \"hi\"'", 'say "hi"'),
    ("''", ""),
    ('""', ""),
    ("'// not a comment /* nor this */'", "// not a comment /* nor this */"),
    # numbers
    ("0", 0),
    ("-0", 0),
    ("0.0", 0.0),
    ("-0.0", -0.0),
    ("-.0", -0.0),
    (".5", 0.5),
    ("5.", 5.0),
    ("+5", 5),
    ("-5", -5),
    ("+.5", 0.5),
    ("1e3", 1000.0),
    ("1E+3", 1000.0),
    ("1e-3", 0.001),
    ("0e0", 0.0),
    ("0.e5", 0.0),
    ("5.e2", 500.0),
    (".5e1", 5.0),
    ("1e400", INF),
    ("-1e400", -INF),
    ("0x1F", 31),
    ("0XaB", 171),
    ("-0x10", -16),
    ("+0x10", 16),
    ("0x" + "f" * 20, 16**20 - 1),
    ("12345678901234567890123", 12345678901234567890123),
    ("Infinity", INF),
    ("-Infinity", -INF),
    ("+Infinity", INF),
    ("NaN", NAN),
    ("-NaN", NAN),
    ("+NaN", NAN),
    ("[1,-2.5,0x1,.1,1.,+1e1]", [1, -2.5, 1, 0.1, 1.0, 10.0]),
    ("{a:-Infinity,b:NaN,}", {"a": -INF, "b": NAN}),
    # any value at the top
    ('"str"', "str"),
    ("'str'", "str"),
    ("true", True),
    ("false", False),
    ("null", None),
    ("  42  ", 42),
]

INVALID: list[str] = [
    # nothing, or not closed
    "", "   ", "// only a comment", "/* */", "{", "[", "{a:1", "[1", "[1,", "{a:1,", "{a", "{a:",
    # structure
    "{a}", "{a:}", "{:1}", "{a:1,,}", "[1,,]", "[,]", "{,}", "[1 2]", "{a:1 b:2}", "{\"a\" 1}", "{a::1}",
    "{a:1]", "[1}", "{a=1}", "[1;2]",
    # keys
    "{a-b:1}", "{1a:1}", "{0:1}", "{-a:1}", "{a b:1}", "{@:1}", "{a.b:1}", "{٣:1}", "{\u200c:1}", "{\u0301:1}",
    "{\\u0030:1}", "{a\\u002d:1}", "{\\x61:1}", "{\\u:1}", "{\\u00:1}", "{\\ud800:1}", "{a\\u:1}", "{\\U0061:1}",
    "{a\\:1}", "{\\", "{true}", "{null:}",
    # numbers
    "01", "00", "-01", "+01", "0x", "0xg", "-0x", "0x1.5", "1e", "1e+", "1E-", "1.e", ".", ".e1", "-", "+", "- 1",
    "--1", "+-1", "-+1", "1.2.3", "1..", "Infinity1", "infinity", "INFINITY", "NAN", "nan", "Inf", "-Infinit",
    "-NaNa", "0b1", "0o7", "1_000", "١", "1e1.5", "0x1e+1", "$1", "5e", "+.", "-.", ".-1", "-I", "-N",
    # literals
    "nul", "nulll", "True", "undefined", "tru e", "n", "fals", "nullnull",
    # strings
    '"abc', "'abc", '"a\nb"', "'a\rb'", "'\\1'", "'\\9'", "'\\01'", "'\\00'", "'\\x4'", "'\\xg0'", "'\\u12'",
    "'\\u12g4'", "'\\", "'\\'", "\"'", "'\"", '"a" "b"', "'a'b'", "'\\x'", "'\\u'",
    # comments
    "/", "1 /", "/* unterminated", "1 /* x", "/ / x", "1 /x", "# c\n1", "1 #", "/*/ 1", "<!-- -->1",
    # after the value
    "1 2", "{} {}", "[]]", "{}}", "null,", "1,", "[1]x", "'a' 'b'", "1 }",
    # characters that are not white space in json5
    "\u180e1", "\u200b1", "\x001", "\x851", "\u00851", "\u30001\u3000x",
]  # fmt: skip


@pytest.mark.parametrize(("text", "want"), VALID, ids=[repr(t)[:40] for t, _ in VALID])
def test_valid_documents_read_to_their_values(text: str, want: Any) -> None:
    got = loads(text)
    assert same(got, want), f"{text!r} read as {got!r}, want {want!r}"


@pytest.mark.parametrize("text", INVALID, ids=[repr(t)[:40] for t in INVALID])
def test_invalid_documents_raise_json5error(text: str) -> None:
    with pytest.raises(JSON5Error, match=r"^line \d+, column \d+: "):
        loads(text)


def test_the_error_names_line_and_column() -> None:
    text = "{\n  a: 1,\n  b: [1, 2, :],\n}"
    with pytest.raises(JSON5Error) as caught:
        loads(text)
    error = caught.value
    assert str(error) == "line 3, column 13: invalid character ':'"
    assert (error.lineno, error.colno, error.pos, error.msg) == (3, 13, text.rindex(":"), "invalid character ':'")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes: crosses process boundaries intact
    assert (type(copy), str(copy), copy.pos) == (JSON5Error, str(error), error.pos)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1, column 1: unexpected end of input"),
        ("{a:1,\r\nb:", "line 2, column 3: unexpected end of input"),
        ("[1,\n  01]", "line 2, column 4: invalid character '1'"),
        ("'abc", "line 1, column 5: a string is never closed"),
        ("{a: 'x\ny'}", "line 1, column 7: a line break ('\\n') in a string: escape it"),
        ("1 /* x", "line 1, column 7: a /* comment is never closed"),
        ("{\\u0030:1}", "line 1, column 2: '0' (escaped) cannot start a name"),
        ("{a\\u002d:1}", "line 1, column 3: '-' (escaped) cannot be part of a name"),
        ("'\\x4'", 'line 1, column 5: invalid character "\'"'),
        ("'\\1'", "line 1, column 3: invalid character '1'"),
        ("'\\01'", "line 1, column 4: invalid character '1'"),
        ("Infinite", "line 1, column 8: invalid character 'e'"),
        ("1e+", "line 1, column 4: unexpected end of input"),
        ("1ex", "line 1, column 3: invalid character 'x'"),
        ("0x", "line 1, column 3: unexpected end of input"),
        ("-x", "line 1, column 2: invalid character 'x'"),
        (".x", "line 1, column 2: invalid character 'x'"),
        ("x", "line 1, column 1: invalid character 'x'"),
        ("1 /x", "line 1, column 4: invalid character 'x'"),
    ],
)
def test_error_messages(text: str, message: str) -> None:
    with pytest.raises(JSON5Error) as caught:
        loads(text)
    assert str(caught.value) == message


def test_integers_stay_int_and_the_rest_float() -> None:
    values = loads("[1, -1, +1, 0x10, -0xA, 10000000000000000000000, 1.0, 1e2, .1, 1., Infinity, NaN]")
    assert [type(v) for v in values] == [int] * 6 + [float] * 6
    assert loads("1" * 5000) == math.inf  # beyond int()'s digit limit: a float, as JavaScript reads it


def test_duplicate_keys_keep_the_first_place_and_the_last_value() -> None:
    value = loads("{a:1, b:2, 'a':3, \\u0061:4}")
    assert value == {"a": 4, "b": 2}
    assert list(value) == ["a", "b"]
    assert type(value) is dict


def test_nesting_deeper_than_max_depth_is_an_error_not_a_recursion_error() -> None:
    assert loads("[" * 200 + "]" * 200) is not None
    assert loads("{a:" * 199 + "[]" + "}" * 199) is not None
    for deep in ("[" * 201 + "]" * 201, "{a:" * 200 + "{}" + "}" * 200, "[" * 100_000):
        with pytest.raises(JSON5Error, match="nested deeper than 200 levels"):
            loads(deep)
    with pytest.raises(JSON5Error, match="deeper than 3 levels"):
        loads("[[[[]]]]", max_depth=3)
    assert loads("[[[]]]", max_depth=3) == [[[]]]
    assert loads("1", max_depth=0) == 1
    nested = loads("[" * 50_000 + "]" * 50_000, max_depth=50_000)  # its own stack: no recursion at all
    for _ in range(49_999):
        nested = nested[0]
    assert nested == []


def test_a_large_dense_document_and_a_long_string_read_whole() -> None:
    """2 MB using every feature densely, long comments, a long string of escapes: read to the right values.
    (Its speed is measured in bench/json5_parse.py, not here.)"""
    gen = Generator(random.Random(2))
    block = ",\n".join(gen.document() for _ in range(300))
    copies = 2_000_000 // len(block) + 1
    text = "[" + ",\n".join([block] * copies) + "]"
    text += "\n// " + "x" * 100_000 + "\n/*" + "* /" * 50_000 + "*/"  # long comments too
    long_string = "'" + "ab\\n\\u00e9\\\n" * 50_000 + "'"
    assert len(loads(text)) == 300 * copies
    assert loads(long_string) == "ab\né" * 50_000


def test_the_ascii_names_pattern_is_the_ascii_part_of_the_identifier_tables() -> None:
    """Names in ASCII are read by a small pattern, the Unicode tables only when a name holds more: the small
    one must take exactly the ASCII characters the tables take, as first character and after it."""
    for table, first in ((ID_START_RANGES, True), (ID_CONTINUE_RANGES, False)):
        in_table = {chr(cp) for low, high in table for cp in range(low, min(high, 127) + 1)}
        taken = {chr(cp) for cp in range(128) if _ASCII_HEAD(chr(cp) if first else "a" + chr(cp), 0)}
        ends = {c for c in taken if _ASCII_HEAD(c if first else "a" + c, 0).end() == (1 if first else 2)}  # type: ignore[union-attr]
        assert ends == in_table, f"{'start' if first else 'part'}: {sorted(ends ^ in_table)}"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("{abc\u00e9d:1}", "abc\u00e9d"),  # an ASCII start going on outside ASCII
        ("{\u00e9t\u00e9:1}", "\u00e9t\u00e9"),  # a name starting outside ASCII
        ("{a\u200cb:1}", "a\u200cb"),  # ZWNJ: part of a name, not a start
        ("{abc\u00a0:1}", "abc"),  # NBSP after a name: white space, not part of it
        ("{ab\\u00e9c:1}", "ab\u00e9c"),  # an escape inside
        ("{$_9:1}", "$_9"),
    ],
)
def test_names_crossing_from_ascii_to_unicode_read_whole(text: str, key: str) -> None:
    assert loads(text) == {key: 1}


def test_names_outside_ascii_are_still_refused_where_they_cannot_start_or_go_on() -> None:
    with pytest.raises(JSON5Error, match="invalid character"):
        loads("{\u200cab:1}")  # ZWNJ cannot start a name
    with pytest.raises(JSON5Error):
        loads("{ab\u00a0c:1}")  # white space inside a name: two tokens


# -- the differential test against npm json5 ----------------------------------------------------------------


class Generator:
    """Random JSON5 documents that use every feature of the format, from a seeded Random."""

    SPACES = (*WS_SAMPLES, "// comment\n", "/* c */", "/* multi\n * line */", "//\r", "// x\u2028", "/**/")
    KEY_STARTS = ("a", "Z", "$", "_", "é", "ñ", "π", "日", "ℵ", "Ⅻ", "𐀀", "\\u0061", "\\u00e9", "\\u0024", "\\u005F")
    KEY_PARTS = (*KEY_STARTS, "0", "9", "\u200c", "\u200d", "٣", "\u0301", "\\u0030", "\\u200C", "\\u200d")
    WORDS = ("null", "true", "false", "Infinity", "NaN", "__proto__", "constructor", "toString", "if")
    TEXT = (
        "a", "b", " ", "Z", "é", "日", "😀", "\t", "\u2028", "\u2029", "\u00a0", "/", "*", "//", "/*", "*/", "{", "}",
        "[", "]", ",", ":", "#", "\x01", "\x7f", "\ufeff", "\u200b",
    )  # fmt: skip
    ESCAPES = (
        "\\'", '\\"', "\\\\", "\\b", "\\f", "\\n", "\\r", "\\t", "\\v", "\\0", "\\/", "\\a", "\\ ", "\\é", "\\😀",
        "\\\n", "\\\r", "\\\r\n", "\\\u2028", "\\\u2029", "\\u00e9", "\\uD83D\\uDE00", "\\ud800", "\\uDFFF", "\\x41",
        "\\xfF", "\\0a", "\\u2028", "\\x00",
    )  # fmt: skip

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def space(self) -> str:
        r = self.rnd.random()
        if r < 0.5:
            return ""
        if r < 0.8:
            return " "
        return "".join(self.rnd.choice(self.SPACES) for _ in range(self.rnd.randint(1, 3)))

    def number(self) -> str:
        r = self.rnd
        digits = str(r.randint(0, 10 ** r.randint(0, 25)))
        forms: list[Callable[[], str]] = [
            lambda: digits,
            lambda: "0",
            lambda: r.choice(["0x", "0X"]) + format(r.getrandbits(r.randint(1, 80)), r.choice("xX")),
            lambda: f"{digits}.{r.randint(0, 10**6)}",
            lambda: f".{r.randint(0, 99999)}",
            lambda: f"{digits}.",
            lambda: (
                r.choice([digits, f"{digits}.{r.randint(0, 99)}", f".{r.randint(0, 9)}", "0", "0."])
                + r.choice("eE")
                + r.choice(["", "+", "-"])
                + str(r.randint(0, 400))
            ),
            lambda: "Infinity",
            lambda: "NaN",
        ]
        return r.choice(["", "", "", "-", "+"]) + r.choice(forms)()

    def string(self) -> str:
        r = self.rnd
        quote = r.choice("'\"")
        parts = []
        for _ in range(r.randint(0, 8)):
            kind = r.random()
            if kind < 0.4:
                parts.append(r.choice(self.TEXT))
            elif kind < 0.5:
                parts.append("\"'".replace(quote, ""))
            elif kind < 0.8:
                parts.append(r.choice(self.ESCAPES))
            elif kind < 0.9:
                parts.append(f"\\x{r.randrange(256):02{r.choice('xX')}}")
            else:
                parts.append(f"\\u{r.randrange(0x10000):04{r.choice('xX')}}")
        return quote + "".join(parts) + quote

    def key(self, pool: list[str]) -> str:
        r = self.rnd
        kind = r.random()
        if kind < 0.15 and pool:
            return r.choice(pool)  # a duplicate
        if kind < 0.3:
            key = self.string()
        elif kind < 0.4:
            key = r.choice(self.WORDS)
        else:
            key = r.choice(self.KEY_STARTS) + "".join(r.choice(self.KEY_PARTS) for _ in range(r.randint(0, 5)))
        pool.append(key)
        return key

    def value(self, depth: int = 0) -> str:
        r = self.rnd
        kind = r.random()
        if depth >= 5 or kind < 0.45:
            scalar = r.random()
            if scalar < 0.4:
                return self.number()
            if scalar < 0.85:
                return self.string()
            return r.choice(["null", "true", "false"])
        items: list[str] = []
        if kind < 0.7:
            for _ in range(r.randint(0, 5)):
                items.append(self.space() + self.value(depth + 1) + self.space())
            open_, close = "[", "]"
        else:
            pool: list[str] = []
            for _ in range(r.randint(0, 5)):
                key = self.key(pool)
                items.append(f"{self.space()}{key}{self.space()}:{self.space()}{self.value(depth + 1)}{self.space()}")
            open_, close = "{", "}"
        trailing = "," + self.space() if items and r.random() < 0.3 else ""
        return open_ + ",".join(items) + trailing + self.space() + close

    def document(self) -> str:
        return self.space() + self.value() + self.space()

    NASTY = (*",:{}[]\"'\\/*\n\r019xeE.+-INu$_\t# a", "\u2028", "\u00a0", "\u200c", "é", "//", "/*", "*/", "\\u")

    def mutate(self, text: str) -> str:
        r = self.rnd
        for _ in range(r.randint(1, 3)):
            at = r.randint(0, len(text))
            op = r.randrange(5)
            if op == 0:
                text = text[:at] + text[at + 1 :]
            elif op in (1, 2):
                text = text[:at] + r.choice(self.NASTY) + text[at:]
            elif op == 3:
                text = text[: max(at, 1)]
            else:
                text = text[:at] + text[at : at + r.randint(1, 6)] + text[at:]
        return text


NODE_SCRIPT = r"""
'use strict'
const fs = require('fs')
const path = require('path')
const main = require.resolve('json5', {paths: [process.argv[2]]})  // as OpenClaw's own `import JSON5` finds it
const JSON5 = require(main)
const util = require(path.join(path.dirname(main), 'util.js'))
const version = require(path.join(path.dirname(main), '..', 'package.json')).version
console.warn = () => {}  // json5 warns about a raw U+2028/U+2029 in a string

function tag (v) {
    if (v === null || typeof v === 'boolean' || typeof v === 'string') return v
    if (typeof v === 'number') return {n: Object.is(v, -0) ? '-0' : String(v)}
    if (Array.isArray(v)) return {a: v.map(tag)}
    return {o: Object.keys(v).map(k => [k, tag(v[k])])}
}

function ranges (test) {
    const found = []
    let start = -1
    for (let cp = 0; cp <= 0x110000; cp++) {
        const yes = cp < 0x110000 && test(String.fromCodePoint(cp))
        if (yes && start < 0) start = cp
        if (!yes && start >= 0) { found.push([start, cp - 1]); start = -1 }
    }
    return found
}

function valid (text) {
    try { JSON5.parse(text); return true } catch (e) { return false }
}

const inputs = JSON.parse(fs.readFileSync(0, 'utf8'))
const results = inputs.map(text => {
    try {
        return [true, tag(JSON5.parse(text))]
    } catch (e) {
        if (!(e instanceof SyntaxError)) throw e
        return [false, e.message]
    }
})
const inArray = []  // BMP characters c for which `[c]` is valid: white space and the digits
for (let cp = 0; cp < 0x10000; cp++) if (valid('[' + String.fromCharCode(cp) + ']')) inArray.push(cp)
process.stdout.write(JSON.stringify({
    version, results, inArray,
    idStart: ranges(util.isIdStartChar),
    idContinue: ranges(util.isIdContinueChar),
}))
"""


def tricky_inputs() -> list[str]:
    """Hand-written cases: every unit case above, plus characters at the edges of the identifier tables."""
    cases = [text for text, _ in VALID] + INVALID
    rnd = random.Random(5)
    for table in (ID_START_RANGES, ID_CONTINUE_RANGES):
        for low, high in rnd.sample(table, 40):
            for cp in {low - 1, low, high, high + 1} - {-1, 0x110000}:
                cases += [f"{{{chr(cp)}:1}}", f"{{a{chr(cp)}:1}}"]
                if cp < 0x10000:
                    cases += [f"{{\\u{cp:04x}:1}}", f"{{a\\u{cp:04X}:1}}"]
    return cases


def npm_json5(openclaw: OpenClaw, inputs: list[str], tmp_path: Path) -> dict[str, Any]:
    """Run the batch through JSON5.parse of the json5 that OpenClaw resolves, on OpenClaw's pinned Node."""
    script = tmp_path / "json5_batch.js"
    script.write_text(NODE_SCRIPT)
    node = openclaw.bin_dirs[0] / "node"
    assert node.is_file(), f"the pinned Node is not where tests/helpers/openclaw.py puts it: {node}"
    proc = subprocess.run(
        [str(node), str(script), str(openclaw.root / "node_modules" / "openclaw")],
        input=json.dumps(inputs),
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.slow
def test_reads_exactly_what_npm_json5_reads(openclaw: OpenClaw, tmp_path: Path) -> None:
    gen = Generator(random.Random(20260906))
    documents = [gen.document() for _ in range(250)]
    mutated = [gen.mutate(gen.document()) for _ in range(250)]
    inputs = tricky_inputs() + documents + mutated
    npm = npm_json5(openclaw, inputs, tmp_path)

    pinned = json.loads((openclaw.root / "node_modules" / "openclaw" / "package.json").read_text())
    assert npm["version"] == pinned["dependencies"]["json5"] == "2.2.3"
    assert len(npm["results"]) == len(inputs) > 900

    disagreements = []
    for text, (npm_ok, npm_value) in zip(inputs, npm["results"], strict=True):
        try:
            ours: Any = loads(text)
        except JSON5Error as exc:
            if npm_ok:
                disagreements.append(f"{text!r}: we raised {exc}; npm read {npm_value!r}")
            continue
        if not npm_ok:
            disagreements.append(f"{text!r}: we read {ours!r}; npm raised {npm_value}")
        elif not same_as_npm(ours, npm_value):
            disagreements.append(f"{text!r}: we read {ours!r}; npm read {npm_value!r}")
    assert not disagreements, f"{len(disagreements)} disagreements:\n" + "\n".join(disagreements[:20])

    valid = [ok for ok, _ in npm["results"]]
    assert sum(valid[-len(mutated) :]) < 0.8 * len(mutated)  # the mutations do reach the errors
    assert all(valid[len(inputs) - len(mutated) - len(documents) : len(inputs) - len(mutated)])

    # Identifier characters: our tables are the package's, all of Unicode; white space: the whole BMP.
    assert [tuple(r) for r in npm["idStart"]] == list(ID_START_RANGES)
    assert [tuple(r) for r in npm["idContinue"]] == list(ID_CONTINUE_RANGES)
    in_array = []
    for cp in range(0x10000):
        try:
            loads(f"[{chr(cp)}]")
        except JSON5Error:
            continue
        in_array.append(cp)
    assert in_array == npm["inArray"]
    assert {chr(cp) for cp in in_array} == set(WHITESPACE) | set("0123456789")
