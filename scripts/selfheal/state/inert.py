"""Text from logs and models made inert before a person's terminal or a Markdown file shows it.

A log line or a model's answer may hold terminal control sequences: an OSC title (`ESC ] 0 ; ... BEL`), a
screen clear (`ESC [ 2 J`), an OSC 8 hyperlink, `CR` + `ESC [ K` that rewrites the line shown, the one-byte
C1 CSI (U+009B), BEL. Printed raw, they take over the terminal of whoever reads the report or the record.
`inert()` replaces every control character but newline and tab with a visible stand-in:

- C0 controls (U+0000-U+001F) and a carriage return not followed by a newline: the Unicode control
  picture U+2400 + n (ESC shows as `␛`, BEL as `␇`, a lone CR as `␍`); CR LF is kept;
- DEL (U+007F): `␡` (U+2421);
- C1 controls (U+0080-U+009F): a `\\x9b`-style escape.

The rest of the text is unchanged, so a line stays readable and greppable. JSON needs none of this: the
encoder writes C0 controls as `\\u001b` escapes, and `inert_json()` escapes what it leaves raw.
"""

from __future__ import annotations

import re

_TABLE: dict[int, str] = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)}
_TABLE[0x7F] = "\u2421"
_TABLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")
_LONE_CR = re.compile("\r(?!\n)")
# What JSON's encoder (ensure_ascii=False) leaves raw: DEL, the C1 controls, and lone surrogates (a byte of a
# path that is not UTF-8, as Python holds it). Only strings can hold them, so an escape is always inside one.
_JSON_RAW = re.compile("[\x7f-\x9f\ud800-\udfff]")


def inert(text: str) -> str:
    """`text` with every control character but `\\n`, `\\t` and the CR of a CR LF replaced by a visible
    stand-in (see the module's docstring); text without one is returned as it is."""
    if not _CONTROL.search(text):
        return text
    return _LONE_CR.sub("\u240d", text).translate(_TABLE)


def inert_json(text: str) -> str:
    """JSON text (ensure_ascii=False) with DEL, the C1 controls and lone surrogates written as `\\u009b`-style
    escapes: no control a terminal obeys reaches `cat` or `less`, the text is UTF-8 a strict reader (jq)
    takes, and it reads back exactly the same."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


__all__ = ["inert", "inert_json"]
