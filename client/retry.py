"""When the client retries a call (UNAVAILABLE only), how long it waits, and request ids."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Retry UNAVAILABLE with capped exponential backoff and full jitter."""

    max_attempts: int = 6
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1 for the first): a uniform draw
        up to the capped exponential ceiling."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return random.uniform(0, ceiling)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


def new_request_id() -> str:
    """A fresh id for a call that changes the server (the server replays a repeated one)."""
    return uuid.uuid4().hex
