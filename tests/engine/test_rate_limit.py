"""Per-user token buckets: a burst, then the rate; other users unaffected; settings from the environment."""

from __future__ import annotations

import pytest

from engine.errors import RateLimitedError, SettingError
from engine.rate_limit import BURST_ENV, RATE_ENV, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_per_user() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3.0, clock)
    for _ in range(3):
        limiter.admit("alice")
    with pytest.raises(RateLimitedError, match="retry in 0.5s"):
        limiter.admit("alice")
    limiter.admit("bob")  # another user has a bucket of their own
    clock.now += 0.5
    limiter.admit("alice")  # one token refilled
    with pytest.raises(RateLimitedError):
        limiter.admit("alice")


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RATE_ENV, raising=False)
    assert RateLimiter.from_environment() is None  # off by default
    monkeypatch.setenv(RATE_ENV, "120/min")
    limiter = RateLimiter.from_environment()
    assert limiter is not None and limiter.rate == 2.0 and limiter.burst == 2.0
    monkeypatch.setenv(BURST_ENV, "10")
    assert RateLimiter.from_environment().burst == 10.0  # type: ignore[union-attr]
    monkeypatch.setenv(RATE_ENV, "fast")
    with pytest.raises(SettingError, match=RATE_ENV):
        RateLimiter.from_environment()
