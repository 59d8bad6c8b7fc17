"""Log lines put together at random for the tests that hold the scanner's fast paths to its careful path."""

from __future__ import annotations

import random
import time


def fuzz_line(rng: random.Random, t: int) -> bytes:
    """A line put together from pieces of real lines and near misses: timestamps in and out of shape and around
    the window's bounds, tags tracked and not, key fields in and out of order, durations of every form,
    stray bytes, tabs, carriage returns."""
    when = time.gmtime(t + rng.randrange(-3, 4))
    stamp = time.strftime(rng.choice(("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")), when).encode()
    stamp = rng.choice(
        (
            stamp,
            stamp,
            stamp[:5] + rng.choice((b"13", b"00", b"02")) + stamp[7:],
            stamp[:8] + rng.choice((b"31", b"32", b"00", b"3\xff")) + stamp[10:],
            stamp[:11] + rng.choice((b"24", b"23", b"2a")) + stamp[13:],
            stamp[:17] + rng.choice((b"60", b"59")),
            stamp[:-1],
            b"x" + stamp,
        )
    )
    stamp += rng.choice((b"", b"", b"Z", b".5", b".250Z", b".", b".Z", b"ZZ", b"+02:00", b",5", b".999999999Z"))
    gap = rng.choice((b" ", b" ", b" ", b"  ", b"\t", b""))
    tag = rng.choice(
        (
            b"RETRY",
            b"SUCCESS",
            b"FAILED",
            b"FALLBACK",
            b"BREAKER",
            b"RESUME",
            b"FIX",
            b"STUCK",
            b"INCIDENT",
            b"INFO",
            b"INFO",
            b"DEBUG",
            b"WARN",
            b"ERROR",
            b"TRACE",
            b"NOTICE",
            b"VERBOSE",
            b"CRITICAL",
            b"NOTICE_X",
            b"INFOX",
            b"I",
            b"X",
            b"info",
            b"RETRYX",
            b"A_B",
            b"",
            b"INF\xffO",
            b"WARNING",
        )
    )
    head = stamp + gap + rng.choice((b"[" + tag + b"]", b"[" + tag + b"]", b"[" + tag, tag + b"]"))
    values = (
        *(b"a", b"doc-gen-7", b"Qwen3-4B", b"timeout", b"oom", b"-", b"x\xffy", b'"q r"', b"", b"=", b"a\tb"),
        *(
            b'"a"b=c',
            b'"a"model=m',
            b'x"y',
            b"a\x1cb",
            b"a\xc2\xa0reason=b",
            b"\xe3\x80\x80",
            b"\xe4\xb8\xad\xe6\x96\x87",
        ),
        *(b"\xe2\x80\x8bzw", b"\xe2\x80\xa8", b"\xc2\xa9", b"\xe1\x9a\x80", b"a\x85b", b"url=http://h/?model=x"),
    )  # quotes, Unicode's white space and its near misses (the careful path reads fields on decoded text)
    duration = rng.choice(
        (b"1.5", b"47", b".5", b"1.", b".", b"1.2.3", b"0.1234567890123456789", b"9" * 25, b"00012.50", b"3e2", b"")
    )
    names = (b"task", b"task", b"model", b"reason", b"step", b"target", b"attempt", b"note", b"Task", b"task_id")
    fields = [name + b"=" + rng.choice(values) for name in rng.sample(names, rng.randrange(0, 5))]
    if rng.random() < 0.6:
        fields.insert(0, b"task=" + rng.choice(values))
    if rng.random() < 0.4:
        fields.insert(rng.randrange(len(fields) + 1), b"duration=" + duration + rng.choice((b"s", b"s", b"sec", b"")))
    if rng.random() < 0.1:
        fields.append(b"stray")
    body = rng.choice((b" ", b" ", b"  ", b"\t", b"")).join(fields)
    line = head + (rng.choice((b" ", b" ", b"")) + body if fields else b"")
    return line + rng.choice((b"", b"", b"", b"\r", b" ", b"\t", b"\r\r"))
