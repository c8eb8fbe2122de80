"""Per-user request rate limits for a process every workspace shares (off unless the admin sets them).

A token bucket per Dify `user_id`: `rate` requests per second refill it up to `burst`; a request that finds it
empty is refused at once with RateLimitedError. The admin sets ONNX_LOCAL_RATE_LIMIT (requests per second, or
`N/min`) and optionally ONNX_LOCAL_RATE_BURST (default: one second's worth, at least 1). Buckets of users not
seen for a while are dropped, so the table stays bounded whatever the number of users.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import RateLimitedError, SettingError
from engine.native import allocate_lock, monotonic

RATE_ENV = "ONNX_LOCAL_RATE_LIMIT"
BURST_ENV = "ONNX_LOCAL_RATE_BURST"
MAX_USERS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = monotonic) -> None:
        self.rate = rate_per_s
        self.burst = max(1.0, burst)
        self._clock = clock
        self._lock = allocate_lock()
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    @classmethod
    def from_environment(cls) -> RateLimiter | None:
        raw = os.environ.get(RATE_ENV, "").strip()
        if not raw:
            return None
        number, _, unit = raw.partition("/")
        try:
            rate = float(number) / (60.0 if unit.strip() in ("min", "m") else 1.0)
        except ValueError:
            raise SettingError(RATE_ENV, raw, "requests per second per user, such as 5 or 300/min") from None
        if rate <= 0 or unit.strip() not in ("", "s", "sec", "min", "m"):
            raise SettingError(RATE_ENV, raw, "requests per second per user, such as 5 or 300/min")
        burst_raw = os.environ.get(BURST_ENV, "").strip()
        try:
            burst = float(burst_raw) if burst_raw else max(1.0, rate)
        except ValueError:
            raise SettingError(BURST_ENV, burst_raw, "a number of requests, 1 or more") from None
        return cls(rate, burst)

    def admit(self, user: str | None) -> None:
        """Take one token of `user`'s bucket, or raise RateLimitedError saying when to retry."""
        key = user or ""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[key] = bucket  # most recently used last
            while len(self._buckets) > MAX_USERS:
                self._buckets.popitem(last=False)
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / self.rate
                raise RateLimitedError(
                    f"rate limit: at most {self.rate:g} requests per second per user (burst {self.burst:g}); "
                    f"retry in {wait:.1f}s"
                )
            bucket.tokens -= 1.0
