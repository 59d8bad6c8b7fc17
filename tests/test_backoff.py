"""Backoff delays and Retry-After parsing, case by case."""

from __future__ import annotations

import email.utils
import random

import pytest

from selfheal.core.backoff import compute_delay, exponential, parse_retry_after
from selfheal.core.config import Policy

NOW = 1_800_000_000.0


class MaxRandom(random.Random):
    """uniform() returns its upper bound: the jitter ceiling becomes observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def policy(jitter: str = "none", base: float = 1.0, mult: float = 2.0, cap: float = 30.0) -> Policy:
    return Policy(attempts=5, base_s=base, multiplier=mult, cap_s=cap, jitter=jitter)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base", "mult", "cap", "failures", "expected"),
    [
        (1.0, 2.0, 30.0, 1, 1.0),
        (1.0, 2.0, 30.0, 2, 2.0),
        (1.0, 2.0, 30.0, 3, 4.0),
        (1.0, 2.0, 30.0, 6, 30.0),  # 32 capped
        (5.0, 2.0, 120.0, 5, 80.0),  # rate_limit, 5th failure
        (5.0, 2.0, 120.0, 6, 120.0),
        (0.5, 1.5, 10.0, 3, 1.125),  # timeout policy
        (1.0, 2.0, 30.0, 10_000, 30.0),  # no overflow for absurd counts
        (1.0, 2.0, 30.0, 0, 1.0),  # counts below 1 behave as the first failure
    ],
)
def test_exponential_is_base_times_multiplier_power_capped(
    base: float, mult: float, cap: float, failures: int, expected: float
) -> None:
    """delay(n) = min(cap, base * multiplier^(n-1))."""
    assert exponential(policy(base=base, mult=mult, cap=cap), failures) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("jitter", "rng", "failures", "expected"),
    [
        ("none", None, 3, 4.0),
        ("full", MaxRandom(), 3, 4.0),
        ("full", MinRandom(), 3, 0.0),
        ("equal", MaxRandom(), 3, 4.0),
        ("equal", MinRandom(), 3, 2.0),
        ("decorrelated", MinRandom(), 3, 1.0),  # never below base
    ],
)
def test_jitter_bounds(jitter: str, rng: random.Random | None, failures: int, expected: float) -> None:
    """Each jitter mode stays within its documented range."""
    assert compute_delay(policy(jitter), failures, rng=rng) == pytest.approx(expected)


def test_decorrelated_grows_from_the_previous_delay_and_respects_the_cap() -> None:
    """Decorrelated jitter draws from [base, 3 * previous] and never passes the cap."""
    p = policy("decorrelated", base=1.0, cap=10.0)
    assert compute_delay(p, 2, rng=MaxRandom(), previous=2.0) == 6.0
    assert compute_delay(p, 3, rng=MaxRandom(), previous=6.0) == 10.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    """Full jitter, seeded: all draws inside [0, ceiling], and they spread out (not one value)."""
    rng = random.Random(7)
    draws = [compute_delay(policy("full"), 4, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    assert min(draws) < 1.0 and max(draws) > 7.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": " 12 "}, 12.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms wins, as in openai-python
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # unparseable ms falls back
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),  # a past date: no wait
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "1e400"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "\x00\xff"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Seconds, milliseconds and HTTP dates parse; garbage, negatives and infinities are ignored."""
    result = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, abs=1.0)
