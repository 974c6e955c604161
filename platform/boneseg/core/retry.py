"""Waiting out a service that is down or restarting: one backoff loop for every client that
needs it (the sweep's MLflow writes, `tracking/retry`; its storage, `sweep/storage`)."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")
FIRST_WAIT_S, LAST_WAIT_S = 0.5, 8.0


def with_backoff(call: Callable[[], T], transient: Callable[[Exception], bool], outage_s: float,
                 sleep: Callable[[float], object], say: Callable[[str, Exception | float], None],
                 gave_up: Callable[[Exception, float], Exception]) -> tuple[T, int]:
    """(`call()`, how many times it was retried). A failure that `transient` accepts is retried
    with backoff (0.5 s doubling to 8 s) until `outage_s` has passed since the first one; then
    `gave_up(error, seconds)` is raised. `say("down", error)` once when the first failure comes,
    `say("up", seconds)` once when a call goes through after it. Other errors are raised at once."""
    first, wait, retries = None, FIRST_WAIT_S, 0
    while True:
        try:
            out = call()
        except Exception as exc:
            if not transient(exc):
                raise
            now = time.monotonic()
            if first is None:
                first = now
                say("down", exc)
            if now - first > outage_s:
                raise gave_up(exc, now - first) from None
            retries += 1
            sleep(wait)
            wait = min(wait * 2, LAST_WAIT_S)
            continue
        if first is not None:
            say("up", time.monotonic() - first)
        return out, retries
