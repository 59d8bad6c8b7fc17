"""JSON5, read exactly as OpenClaw reads `openclaw.json`: with the npm `json5` package, version 2.

    from selfheal.core.json5 import JSON5Error, loads
    loads('{primary:"a/b", fallbacks: [\'x\',], /* ok */}')   # {'primary': 'a/b', 'fallbacks': ['x']}

What it accepts is what `JSON5.parse` of json5 2.2.3 accepts (https://spec.json5.org/), checked value for
value against the real package by tests/test_json5.py:

- `//` and `/* */` comments; white space: tab, LF, VT, FF, CR, space, U+00A0, U+2028, U+2029, U+FEFF and
  the Unicode space separators (Zs);
- object keys as ECMAScript identifier names (Unicode letters, `$`, `_`, `\\uXXXX` escapes) or strings;
  a repeated key: the last value wins, in the first one's place;
- strings in single or double quotes; escapes `\\' \\" \\\\ \\b \\f \\n \\r \\t \\v`, `\\0` (not before a
  digit), `\\xHH`, `\\uHHHH` (surrogate pairs joined), a backslash before a line terminator (a line
  continuation), any other escaped character standing for itself, `\\1`-`\\9` an error; LF and CR only
  escaped, U+2028 and U+2029 also raw;
- numbers: signed (`+` too), hexadecimal, a leading or trailing decimal point, an exponent, Infinity and
  NaN; no leading zeros (`01`). Integers (hexadecimal ones too) come back as `int`, the others as `float`;
- one trailing comma in an object or an array; any value at the top, nothing after it but white space and
  comments.

Objects come back as dicts, arrays as lists, as from `json.loads`. Anything else raises JSON5Error (a
ValueError) naming the line and column: "line 3, column 14: invalid character ':'". Lines are counted at
LF, as json5 counts them; columns count characters from 1. Nesting deeper than `max_depth` is an error too
(the parser keeps its own stack, so no depth ever raises RecursionError); npm's parser has no such limit.
Scanning goes by regular expressions over runs of characters: a 2 MB document takes a fraction of a second.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NoReturn, cast

__all__ = ["JSON5Error", "loads"]

DEFAULT_MAX_DEPTH = 200


class JSON5Error(ValueError):
    """Invalid JSON5. `msg` says what; `pos` is the index in the text, `lineno` and `colno` count from 1."""

    def __init__(self, msg: str, pos: int, lineno: int, colno: int) -> None:
        super().__init__(msg, pos, lineno, colno)
        self.msg = msg
        self.pos = pos
        self.lineno = lineno
        self.colno = colno

    def __str__(self) -> str:
        return f"line {self.lineno}, column {self.colno}: {self.msg}"


def _error(msg: str, text: str, pos: int) -> JSON5Error:
    return JSON5Error(msg, pos, text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos))


# The characters json5 takes for identifiers: util.isIdStartChar and util.isIdContinueChar of json5 2.2.3
# (Unicode 10's ID_Start and ID_Continue, with `$`, `_`, U+200C and U+200D), as code point ranges. Each item
# is `gap` or `gap+extra` in base 36: the range starts `gap` code points after the end of the previous one
# (after -1 for the first) and spans `extra` more. tests/test_json5.py compares them with the package's own.
_ID_START = (
    "10 s+p 4 1+p 1b a 4 5+m 1+u 1+cp 4+b e+4 7 1 3l+4 1+1 2+3 1 6 1+2 1 1+j 1+2a 1+3u 8+4l 1+11 2 7+12 "
    "20+q 5+2 19+16 z+1 1+2q 1 f+1 7+1 a+2 2 g 1+t t+2g b o+w 9+1 4 5+l 4 9 3 n+o 7+a 1h+k 1+7 1y+1h 3 i "
    "7+9 f+f 4+7 2+1 2+l 1+6 1 3+3 3 g d+1 1+2 e+1 a 8+5 4+1 2+l 1+6 1+1 1+1 1+1 v+3 1 j+2 g+8 1+2 1+l "
    "1+6 1+1 1+4 3 i f+1 n b+7 2+1 2+l 1+6 1+1 1+4 3 u+1 1+2 f h 1+5 3+2 1+3 3+1 1 1+1 3+1 3+2 3+b m 1g+7 "
    "1+2 1+m 1+f 3 q+2 5+1 u 4+7 1+2 1+m 1+9 1+4 3 w 1+1 f+1 i+7 1+2 1+14 2 g 5+2 8+2 o+5 5+h 3+n 1+8 1 "
    "2+6 1m+1b 1+1 c+6 1m+1 1 2+1 1 2 6+3 1+6 1+2 1 1 2+1 1+3 1+1 9 2+4 1 l+3 w 1r+7 1+z r+4 37+16 k g+5 "
    "4+3 3 3+1 7+2 4+c c h+11 1 5 2+16 1+98 1+3 2+6 1 1+3 2+14 1+3 2+w 1+3 2+6 1 1+3 2+e 1+1k 1+3 2+1u "
    "11+f g+2d 2+5 3+h7 2+g 1+p 5+22 3+a 7+c 1+3 e+h e+h e+c 1+2 f+1f z 4 1v+2f 8+4 2+x 1 5+1x a+u 1d+t "
    "2+4 b+17 4+p 1i+m 9+1g 2a 2l+1a h+6 1j+t d+1 a+17 q+z 15+2 a+z 2+8 2o+3 1+3 3+1 9+5b 1s+7p 2+5 2+11 "
    "2+5 2+7 1 1 1 1+u 2+1g 1+6 1 3+2 1+6 3+3 2+5 4+c 5+2 1+6 38 d g+c 2t 4 2+9 1 3+4 6 1 1 1+3 1+a 2+3 "
    "5+4 4 h+14 22f+1a 1+1a 1+3o 6+3 3+1 c+11 1 5 2+1j 7 g+m 9+6 1+6 1+6 1+6 1+6 1+6 1+6 1+6 28 d1+2 p+8 "
    "7+4 2+4 4+2d 6+2 1+2h 1+3 5+15 2+2l h+q 1h+f e8+52t 22+g6i l+wc 1v+19 2+7g 3+f a+1 k+1a g+u 2+27 "
    "13+8 2+2u 2+z 1+7 1r+a 1+2 1+3 1+m t+1f e+1d 1q+5 3 1 c+r a+m p+s 7+1a s g+4 1+9 a+4 1+14 n+2 1+7 "
    "k+m 3 3+1d 1 3+1 2+4 2 1 o+2 2+a 7+2 c+5 2+5 2+5 9+6 1+6 1+16 1+9 a+36 t+8mb c+m 4+1c 6is+a5 2+2x "
    "12+6 c+4 5 1+9 1+c 1+4 1 1+1 1+1 1+2z x+a2 i+1r 2+1h 14+b 38+4 1+3q 10+p 6+p b+2g 3+5 2+5 2+5 2+2 "
    "z+b 1+p 1+i 1+1 1+e 2+d y+3e 1x+1g 7f+s 3+1c 1b+v d+t 5+11 a+t 2+z 4+7 1+4 16+4d i+z 4+z 4+13 8+1f "
    "4c+8m 9+l a+7 48+5 2 1+17 1+1 3 2+m a+m 9+u 1t+i 1+1 a+l a+p 1y+1j 6+1 1s f+3 1+2 1+q 18+s 3+s z+7 "
    "1+r r+1h a+l a+i d+h 32+20 1j+1e d+1e ls+1g 23+18 w+o q+z 15+y 3 c+1b e+3 l 1 z+h 1+o 2c+6 1 1+3 1+e "
    "1+9 7+1a 12+7 2+1 2+l 1+6 1+1 1+4 3 i c+4 4e+1g i+3 1h+1b k+1 1 54+1a 15+3 10+1b k 1n+16 2d+p au+1r "
    "v 74 a+13 7 l b+13 2+3 1i+1k 7b+8 1+10 h 1d+t 34+6 1+1 1+11 l jd+pl 2u+32 h+5f 24c+tq 34h+g6 6nt+fs "
    "7+u 35+t i+1b g+3 v+k 5+i og+1w b 1u+c 1s+1 u+4q4 j+ky 7bh+7y 29+az 1s4+2y 5+c 3+8 7+9 4me+2c 1+1y "
    "1+1 2 2+1 2+3 1+b 1 1+6 1+1s 1+3 2+7 1+6 1+r 1+3 1+4 1 3+6 1+9f 2+o 1+o 1+u 1+o 1+u 1+o 1+u 1+o 1+u "
    "1+o 1+7 378+5g 1n+1v xo+3 1+q 1+1 1 2 1+9 1+3 1 1 6 4 1 1 1+2 1+1 1 2 1 1 1 1 1+1 1 2+3 1+6 1+3 1+3 "
    "1 1+9 1+g 5+2 1+4 1+g 3es+wye 15+378 b+65 2+4g1 e+5rk 2e7+f1"
)
_ID_CONTINUE = (
    "10 b+9 7+p 4 1+p 1b a 4 5+m 1+u 1+cp 4+b e+4 7 1 h+38 1+1 2+3 1 6 1+2 1 1+j 1+2a 1+3u 1+4 2+4l 1+11 "
    "2 7+12 9+18 1 1+1 1+1 1 8+q 5+2 t+a 5+21 4+2t 1+7 2+9 1+i 2 g+1m 2+2s e+1h 4 5+19 i+r 4+a 1h+k 1+7 "
    "m+d 1+3k 2+9 1+i 1+7 2+1 2+l 1+6 1 3+3 2+8 2+1 2+3 8 4+1 1+4 2+b a 4+2 1+5 4+1 2+l 1+6 1+1 1+1 1+1 2 "
    "1+4 4+1 2+2 3 7+3 1 7+f b+2 1+8 1+2 1+l 1+6 1+1 1+4 2+9 1+2 1+2 2 f+3 2+9 9+6 1+2 1+7 2+1 2+l 1+6 "
    "1+1 1+4 2+8 2+1 2+2 8+1 4+1 1+4 2+9 1 g+1 1+5 3+2 1+3 3+1 1 1+1 3+1 3+2 3+b 4+4 3+2 1+3 2 6 e+9 g+3 "
    "1+7 1+2 1+m 1+f 3+7 1+2 1+3 7+1 1+2 5+3 2+9 g+3 1+7 1+2 1+m 1+9 1+4 2+8 1+2 1+3 7+1 7 1+3 2+9 1+1 "
    "d+3 1+7 1+2 1+1e 1+2 1+4 5+3 7+4 2+9 a+5 2+1 1+h 3+n 1+8 1 2+6 3 4+5 1 1+7 6+9 2+1 d+1l 5+e 1+9 13+1 "
    "1 2+1 1 2 6+3 1+6 1+2 1 1 2+1 1+c 1+2 2+4 1 1+5 2+9 2+3 w n+1 6+9 b 1 1 4+9 1+z 4+j 1+h 1+z 9 1l+21 "
    "6+25 2+11 1 5 2+16 1+98 1+3 2+6 1 1+3 2+14 1+3 2+w 1+3 2+6 1 1+3 2+e 1+1k 1+3 2+1u 2+2 w+f g+2d 2+5 "
    "3+h7 2+g 1+p 5+22 3+a 7+c 1+6 b+k b+j c+c 1+2 1+1 c+2b 3 4+1 2+9 x+2 2+9 6+2f 8+16 5+1x a+u 1+b 4+b "
    "a+13 2+4 b+17 4+p 6+9 12+r 4+1q 1+s 2+a 6+9 d 8+d 1u+23 4+9 h+8 c+37 c+1j 8+9 3+1c 2+8 1z+2 1+11 "
    "6+6x 1+7u 2+5 2+11 2+5 2+7 1 1 1 1+u 2+1g 1+6 1 3+2 1+6 3+3 2+5 4+c 5+2 1+6 f+1 1d+1 j s d g+c 1f+c "
    "4 3+b h 4 2+9 1 3+4 6 1 1 1+3 1+a 2+3 5+4 4 h+14 22f+1a 1+1a 1+3o 6+8 c+11 1 5 2+1j 7 f+n 9+6 1+6 "
    "1+6 1+6 1+6 1+6 1+6 1+6 1+v 1b d1+2 p+e 1+4 2+4 4+2d 2+1 2+2 1+2h 1+3 5+15 2+2l h+q 1h+f e8+52t "
    "22+g6i l+wc 1v+19 2+7g 3+r k+1b 4+9 1+36 11+8 2+2u 2+z 1+7 1r+1c o+1f c+1x a+9 6+n 3 1 2+19 2+z c+s "
    "3+1s e+a 6+u 1+1i 9+d 2+9 6+m 3+20 o+2 2+f 2+4 a+5 2+5 2+5 9+6 1+6 1+16 1+9 a+3e 1+1 2+9 6+8mb c+m "
    "4+1c 6is+a5 2+2x 12+6 c+4 5+b 1+c 1+4 1 1+1 1+1 1+2z x+a2 i+1r 2+1h 14+b 4+f g+f 3+1 o+2 w+4 1+3q "
    "j+9 7+p 4 1+p b+2g 3+5 2+5 2+5 2+2 z+b 1+p 1+i 1+1 1+e 2+d y+3e 1x+1g 3s 3m+s 3+1c f v+v d+t 5+16 "
    "5+t 2+z 4+7 1+4 16+4d 2+9 6+z 4+z 4+13 8+1f 4c+8m 9+l a+7 48+5 2 1+17 1+1 3 2+m a+m 9+u 1t+i 1+1 a+l "
    "a+p 1y+1j 6+1 1s+3 1+1 5+7 1+2 1+q 4+2 4 w+s 3+s z+7 1+t p+1h a+l a+i d+h 32+20 1j+1e d+1e lp+1y v+9 "
    "f+1n l+o 7+9 6+1g 1+9 g+z 2 9+1w 5+2 3+a 1 z+h 1+10 6 1t+6 1 1+3 1+e 1+9 7+1m 5+9 6+3 1+7 2+1 2+l "
    "1+6 1+1 1+4 2+8 2+1 2+2 2 6 5+6 2+6 3+4 3v+22 5+9 12+1x 1 8+9 4m+1h 2+8 n+5 y+1s 3 b+9 12+1j 8+9 "
    "1i+p 3+e 4+9 9y+21 l 74+1q 8 8+1f 2+j 12+1k 7b+8 1+18 1+8 f+9 o+t 2+l 1+d 21+6 1+1 1+17 3 1+1 1+8 "
    "8+9 iu+pl 2u+32 h+5f 24c+tq 34h+g6 6nt+fs 7+u 1+9 2u+t 2+4 b+1i 9+3 c+9 9+k 5+i og+1w b+1a g+g 1s+1 "
    "u+4q4 j+ky 7bh+7y 29+az 1s4+2y 5+c 3+8 7+9 3+1 43q+4 3+5 8+7 2+6 u+3 44+2 cb+2c 1+1y 1+1 2 2+1 2+3 "
    "1+b 1 1+6 1+1s 1+3 2+7 1+6 1+r 1+3 1+4 1 3+6 1+9f 2+o 1+o 1+u 1+o 1+u 1+o 1+u 1+o 1+u 1+o 1+7 2+1d "
    "e8+1i 4+1d 8 e m+4 1+e 11s+6 1+g 2+6 1+1 1+4 1jp+5g b+6 15+22 5+9 x2+3 1+q 1+1 1 2 1+9 1+3 1 1 6 4 1 "
    "1 1+2 1+1 1 2 1 1 1 1 1+1 1 2+3 1+6 1+3 1+3 1 1+9 1+g 5+2 1+4 1+g 3es+wye 15+378 b+65 2+4g1 e+5rk "
    "2e7+f1 fhlu+6n"
)


def _always(pattern: str) -> Callable[[str, int], re.Match[str]]:
    """`match` of a pattern that matches the empty string, so never returns None."""
    return cast("Callable[[str, int], re.Match[str]]", re.compile(pattern).match)


def _ranges(spec: str) -> tuple[tuple[int, int], ...]:
    found: list[tuple[int, int]] = []
    after = 0
    for item in spec.split():
        gap, _, extra = item.partition("+")
        low = after + int(gap, 36)
        high = low + int(extra or "0", 36)
        found.append((low, high))
        after = high + 1
    return tuple(found)


def _char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


def identifier_ranges() -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """The code point ranges (inclusive) that may start an identifier, and those that may go on one."""
    return _ranges(_ID_START), _ranges(_ID_CONTINUE)


class _Names:
    """The identifier patterns over the whole Unicode tables: several hundred ranges each, which took `re`
    about 45 ms to compile at import, so they are built the first time a name holds a character outside ASCII
    (or an escape), not by every script that imports the configuration loader."""

    def __init__(self) -> None:
        start, part = (_char_class(table) for table in identifier_ranges())
        self.start = re.compile(f"[{start}]")
        self.part = re.compile(f"[{part}]")
        self.head = re.compile(f"[{start}][{part}]*").match
        self.tail = _always(f"[{part}]*")


_names: list[_Names] = []


def _unicode_names() -> _Names:
    if not _names:
        _names.append(_Names())
    return _names[0]


# The ASCII part of the tables (tests/test_json5.py checks it against them): `$`, `_` and letters start a
# name, and digits may follow.
_ASCII_HEAD = re.compile(r"[$A-Z_a-z][$0-9A-Z_a-z]*").match


def _ident_head(text: str, pos: int) -> re.Match[str] | None:
    """An identifier's characters from `pos` (its first one able to start it), or None: from the ASCII
    pattern while the name and the character after it are ASCII, else from the Unicode tables."""
    found = _ASCII_HEAD(text, pos)
    end = found.end() if found is not None else pos
    if end < len(text) and text[end] >= "\x80":
        return _unicode_names().head(text, pos)
    return found


# White space (json5's lexer: these, plus util.isSpaceSeparator: U+1680, U+2000-U+200A, U+202F, U+205F,
# U+3000) and comments.
WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_SKIP = _always(f"(?:[{re.escape(WHITESPACE)}]+|//[^\\n\\r\\u2028\\u2029]*|/\\*(?s:.*?)\\*/)*")
_DOUBLE_RUN = _always(r'[^"\\\n\r]*')
_SINGLE_RUN = _always(r"[^'\\\n\r]*")
# A whole string: runs of plain characters between escapes ("unrolled", so never backtracking much). An escape
# is a backslash and any character but a digit 1-9, `x` or `u`; or `0` before no digit; CR (and LF); `xHH`;
# `uHHHH`. The same, without the checks, splits the content for _unescape.
_VALID_ESCAPE = r"\\(?:[^0-9xu\r]|0(?![0-9])|\r\n?|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})"
_DOUBLE = re.compile(rf'"([^"\\\n\r]*(?:{_VALID_ESCAPE}[^"\\\n\r]*)*)"').match
_SINGLE = re.compile(rf"'([^'\\\n\r]*(?:{_VALID_ESCAPE}[^'\\\n\r]*)*)'").match
_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|(\r\n|.))", re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER = re.compile(
    r"([+-]?)(?:(Infinity)|NaN|0[xX]([0-9a-fA-F]+)"
    r"|((?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?))"
).match
# The common numbers, fast: up to 18 digits, maybe a fraction, and no character after them that _NUMBER
# (or an error) would have to look at.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:0|[1-9][0-9]{0,17})(\.[0-9]+)?(?![0-9.eExX])").match
_DIGITS = frozenset("0123456789")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "0": "\0",
    "\n": "",  # line continuations
    "\r": "",
    "\r\n": "",
    "\u2028": "",
    "\u2029": "",
}


def loads(text: str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The value of the JSON5 document `text`, as `JSON.parse` of the npm json5 package reads it.

    Raises JSON5Error (a ValueError) naming the line and column of the first thing it cannot read, and when
    objects and arrays nest deeper than `max_depth`."""
    end = len(text)
    stack: list[dict[str, Any] | list[Any]] = []  # the open objects and arrays, innermost last
    keys: list[str] = []  # for each open object the key its next value goes to ("" for an array)
    skip = _SKIP
    pos = skip(text, 0).end()
    while True:
        # A value starts at `pos` (white space and comments already passed).
        if pos >= end:
            raise _invalid(text, pos)
        char = text[pos]
        value: Any
        if char in {"{", "["}:
            if len(stack) >= max_depth:
                raise _error(f"objects and arrays nested deeper than {max_depth} levels", text, pos)
            pos = skip(text, pos + 1).end()
            if char == "{":
                if not text.startswith("}", pos):
                    key, pos = _key(text, pos)
                    stack.append({})
                    keys.append(key)
                    continue
                value = {}
            else:
                if not text.startswith("]", pos):
                    stack.append([])
                    keys.append("")
                    continue
                value = []
            pos += 1
        elif char in {'"', "'"}:
            value, pos = _string(text, pos)
        elif char == "n":
            value, pos = None, _literal(text, pos, "null")
        elif char == "t":
            value, pos = True, _literal(text, pos, "true")
        elif char == "f":
            value, pos = False, _literal(text, pos, "false")
        else:
            found = _PLAIN_NUMBER(text, pos)
            if found is None:
                value, pos = _number(text, pos)
            else:
                value = float(found.group()) if found.group(1) else int(found.group())
                pos = found.end()
        # The value is whole: put it in its container; close the containers whose end follows.
        while True:
            pos = skip(text, pos).end()
            if not stack:
                if pos < end:
                    raise _unexpected(text, pos)
                return value
            parent = stack[-1]
            if isinstance(parent, list):
                parent.append(value)
                closer = "]"
            else:
                parent[keys[-1]] = value
                closer = "}"
            char = text[pos] if pos < end else ""
            if char == ",":
                pos = skip(text, pos + 1).end()
                if not text.startswith(closer, pos):  # another member (one trailing comma is allowed)
                    if closer == "}":
                        keys[-1], pos = _key(text, pos)
                    break
            elif char != closer:
                raise _unexpected(text, pos)
            pos += 1
            value = stack.pop()
            keys.pop()


def _unexpected(text: str, pos: int) -> JSON5Error:
    """The error for what stands at `pos`, after white space and comments, where it cannot: a slash there
    starts no comment (or one never closed), since whole comments were passed."""
    if text.startswith("/*", pos):
        return _error("a /* comment is never closed", text, len(text))
    return _invalid(text, pos + 1 if text.startswith("/", pos) else pos)


def _invalid(text: str, pos: int) -> JSON5Error:
    if pos >= len(text):
        return _error("unexpected end of input", text, len(text))
    return _error(f"invalid character {text[pos]!r}", text, pos)


def _key(text: str, pos: int) -> tuple[str, int]:
    """A property name at `pos` and the index after the colon behind it (and the white space after that)."""
    found = _ident_head(text, pos)
    if found and not text.startswith("\\", found.end()):  # the common case: a plain identifier
        key, pos = found.group(), found.end()
    elif found or text.startswith("\\", pos):
        key, pos = _identifier(text, pos)
    elif text.startswith(('"', "'"), pos):
        key, pos = _string(text, pos)
    else:
        raise _unexpected(text, pos)
    pos = _SKIP(text, pos).end()
    if not text.startswith(":", pos):
        raise _unexpected(text, pos)
    return key, _SKIP(text, pos + 1).end()


def _identifier(text: str, pos: int) -> tuple[str, int]:
    """An identifier name (its first character already checked to be able to start one, or a backslash)."""
    parts: list[str] = []
    first = True
    while True:
        if text.startswith("\\", pos):
            if not text.startswith("u", pos + 1):
                raise _invalid(text, pos + 1)
            char = chr(_hex(text, pos + 2, 4))
            names = _unicode_names()
            if not (names.start if first else names.part).match(char):
                raise _error(f"{char!r} (escaped) cannot {'start' if first else 'be part of'} a name", text, pos)
            parts.append(char)
            pos += 6
        else:
            found = _ident_head(text, pos) if first else _unicode_names().tail(text, pos)
            if found is None:  # not reached: the caller saw a starting character
                raise _invalid(text, pos)
            parts.append(found.group())
            pos = found.end()
            if not text.startswith("\\", pos):
                return "".join(parts), pos
        first = False


def _hex(text: str, pos: int, count: int) -> int:
    for at in range(pos, pos + count):
        if text[at : at + 1] not in _HEX_DIGITS:
            raise _invalid(text, at)
    return int(text[pos : pos + count], 16)


def _string(text: str, pos: int) -> tuple[str, int]:
    """The string whose opening quote is at `pos`, and the index after its closing quote."""
    double = text.startswith('"', pos)
    run = (_DOUBLE_RUN if double else _SINGLE_RUN)(text, pos + 1)
    if text.startswith('"' if double else "'", run.end()):  # no escapes
        return run.group(), run.end() + 1
    found = (_DOUBLE if double else _SINGLE)(text, pos)
    if found is None:
        _string_error(text, pos)
    content = found.group(1)
    value = _ESCAPE.sub(_unescape, content)
    if "\\u" in content and _SURROGATE.search(value):
        # join escaped surrogate pairs into one character, as JavaScript's UTF-16 strings do
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return value, found.end()


def _unescape(escape: re.Match[str]) -> str:
    char = escape.group(3)
    if char is not None:
        return _ESCAPES.get(char, char)
    return chr(int(escape.group(1) or escape.group(2), 16))


def _string_error(text: str, pos: int) -> NoReturn:
    """Raise the error for the string at `pos`, which _DOUBLE or _SINGLE did not match."""
    quote = text[pos]
    pos += 1
    while True:
        pos = (_DOUBLE_RUN if quote == '"' else _SINGLE_RUN)(text, pos).end()
        if pos >= len(text):
            raise _error("a string is never closed", text, pos)
        char = text[pos]
        if char == quote:  # not reached: the regular expression took it
            raise _invalid(text, pos)
        if char != "\\":  # LF or CR
            raise _error(f"a line break ({char!r}) in a string: escape it", text, pos)
        char = text[pos + 1 : pos + 2]
        if char == "x":
            _hex(text, pos + 2, 2)
        elif char == "u":
            _hex(text, pos + 2, 4)
        elif char == "0" and text[pos + 2 : pos + 3] in _DIGITS:
            raise _invalid(text, pos + 2)
        elif not char or char in "123456789":  # the end of the text, or \1-\9
            raise _invalid(text, pos + 1)
        pos += 3 if text.startswith("\r\n", pos + 1) else 2  # (\x and \u: their digits are plain characters)


def _literal(text: str, pos: int, word: str) -> int:
    if text.startswith(word, pos):
        return pos + len(word)
    at = pos
    while text[at : at + 1] == word[at - pos]:
        at += 1
    raise _invalid(text, at)


def _number(text: str, pos: int) -> tuple[int | float, int]:
    found = _NUMBER(text, pos)
    if found is None:
        _number_error(text, pos)
    sign, infinity, hexadecimal, decimal = found.groups()
    after = found.end()
    value: int | float
    if decimal is not None:
        follows = text[after : after + 1]
        if follows in ("e", "E") or (follows in ("x", "X") and decimal == "0"):  # `1e`, `1e+`, `0x`
            after += 1
            if follows in ("e", "E") and text[after : after + 1] in ("+", "-"):
                after += 1
            raise _invalid(text, after)
        if "." in decimal or "e" in decimal or "E" in decimal:
            return float(sign + decimal), after
        try:
            value = int(decimal)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits): as JavaScript would
            value = float(decimal)
    elif hexadecimal is not None:
        value = int(hexadecimal, 16)
    elif infinity is not None:
        value = math.inf
    else:
        return math.nan, after
    return (-value if sign == "-" else value), after


def _number_error(text: str, pos: int) -> NoReturn:
    """Raise the error for a value at `pos` that is no number (nor anything else)."""
    at = pos + 1 if text[pos] in "+-" else pos
    char = text[at : at + 1]
    if char == "I":
        _literal(text, at, "Infinity")
    elif char == "N":
        _literal(text, at, "NaN")
    elif char == ".":
        at += 1
    elif at == pos:  # no number at all
        raise _unexpected(text, pos)
    raise _invalid(text, at)
