"""The sweep driver's MLflow writes survive a server that is down or restarting.

`RetryingClient` wraps an MlflowClient: a call that fails because the server cannot be
reached (connection refused or reset, a 502/503/504, a timeout) is retried with
exponential backoff (0.5 s doubling to 8 s) until `outage_s` has passed since the first
failure, then `TrackingOutage` says so in one line. MLflow's own per-request retries
are kept short in the driver (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1), so this is the one
place that waits. Other errors (a 400, a 401/403) are raised at once.

Exactly once: logging the same metric (key, step, timestamp, value), param or tag again
is a no-op in MLflow's stores, and artifacts overwrite. The one write that is not
idempotent is creating a run, if the server created it but the answer was lost:
`create_run` therefore tags each new run with a fresh `boneseg.create_key` and, after a
retried creation, keeps the oldest run with that key and deletes the others.
"""
from __future__ import annotations

import os
import sys
import time
import uuid

from boneseg.core.retry import with_backoff

TRANSIENT = ("Max retries exceeded", "Connection refused", "Connection reset", "ConnectionError",
             "RemoteDisconnected", "Read timed out", "timed out", "error code 502", "error code 503",
             "error code 504", "Bad Gateway", "Service Unavailable", "Gateway Timeout")
CREATE_KEY = "boneseg.create_key"


def say(msg: str) -> None:
    print(f"tracking: {msg}", file=sys.stderr, flush=True)


class TrackingOutage(Exception):
    """The tracking server stayed unreachable for longer than tracking.outage_s."""


def is_transient(exc: Exception) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(k in text for k in TRANSIENT)


class RetryingClient:
    def __init__(self, client, outage_s: float = 120.0, uri: str = "", sleep=time.sleep):
        self._client, self.outage_s, self.uri, self._sleep = client, outage_s, uri, sleep
        self.retries = 0  # calls retried, for tests and the log
        if uri.startswith(("http://", "https://")):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

    def _call(self, name: str, /, *args, **kwargs):  # positional: a method may take `name=` itself
        where = self.uri or "the tracking URI"

        def tell(event: str, detail) -> None:
            if event == "down":
                say(f"MLflow at {where} unreachable ({type(detail).__name__}); "
                         f"retrying for up to {self.outage_s:.0f} s")
            else:
                say(f"MLflow answers again after {detail:.0f} s; {name} went through")

        def gave_up(exc: Exception, seconds: float) -> TrackingOutage:
            return TrackingOutage(
                f"MLflow at {where} unreachable for {self.outage_s:.0f} s "
                f"(tracking.outage_s; last error {type(exc).__name__}). The sweep stopped; trials "
                "that finished are kept. Start the server, then run the same command to resume.")

        out, retries = with_backoff(lambda: getattr(self._client, name)(*args, **kwargs), is_transient,
                                    self.outage_s, self._sleep, tell, gave_up)
        self.retries += retries
        return out

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *a, **kw: self._call(name, *a, **kw)

    def create_run(self, experiment_id, tags=None, run_name=None, **kw):
        key = uuid.uuid4().hex
        before = self.retries
        tags = {**(tags or {}), CREATE_KEY: key}
        run = self._call("create_run", experiment_id, tags=tags, run_name=run_name, **kw)
        if self.retries > before:  # the server may have created it more than once
            found = self._call("search_runs", [experiment_id], f"tags.`{CREATE_KEY}` = '{key}'",
                               order_by=["attributes.start_time ASC"], max_results=10)
            for extra in found[1:]:
                self._call("delete_run", extra.info.run_id)
            run = found[0] if found else run
        return run


def outage_message(exc: BaseException) -> str | None:
    """The TrackingOutage message, if that is what stopped Tune (it may arrive wrapped)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, TrackingOutage):
            return str(seen)
        if "TrackingOutage" in f"{type(seen).__name__}: {seen}":
            text = str(seen)
            return text[text.find("MLflow at"):].splitlines()[0] if "MLflow at" in text else text
        seen = seen.__cause__ or seen.__context__
    return None
