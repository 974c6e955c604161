"""Reaching Ray for a driver (the sweep's, the search's, a data stage's): the
token-authentication environment a driver needs to join a `ray start` cluster, `connect`
(Ray imported there only), and the one line that says why Ray could not be reached or
started (docs/sweep.md#clusters-and-token-authentication)."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from boneseg.core.redact import redact
from boneseg.errors import ConfigError


def auth_env_for(address: str | None) -> dict[str, str]:
    """Ray 2.59+ protects clusters with a token. A local ray.init() makes and uses one by
    itself; to join a `ray start` cluster the driver needs RAY_AUTH_MODE=token and the
    cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)."""
    if not address or "RAY_AUTH_MODE" in os.environ:
        return {}
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
        Path("~/.ray/auth_token").expanduser().is_file()
    return {"RAY_AUTH_MODE": "token"} if has_token else {}


def ray_start_error(exc: BaseException, address: str | None) -> str:
    """An unreachable cluster, a refused token, a local Ray that cannot start: one line."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    return (f"{where}: {type(exc).__name__}: {redact(first)[:300]}. Check --address / RAY_ADDRESS and the "
            "cluster's token (RAY_AUTH_MODE=token with ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
            "RAY_AUTH_TOKEN; docs/sweep.md#clusters-and-token-authentication).")


@contextlib.contextmanager
def scoped_env(values: dict[str, str]):
    """Environment variables that the user has not set, set for the block only."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


# Ray gives a new local node a fixed 30 s to register its raylet, which a machine busy with
# other work can miss; such a start is cleaned up and tried again
STARTUP_TIMEOUT = "timed out during startup"
START_TRIES = 3


def _descendants() -> set[int]:
    """This process's descendants (from /proc; none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    for d in proc.iterdir() if proc.is_dir() else ():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.add(child)
            todo.append(child)
    return out


def _kill(pids: set[int]) -> None:
    import signal

    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def connect(address: str | None, dashboard: bool = False) -> str | None:
    """`dashboard` (sweep.dashboard) starts Ray's dashboard with a local Ray, on 127.0.0.1
    only (behind Ray's token authentication); a cluster's dashboard is the head node's
    (`ray start --head --include-dashboard=true`), not the driver's to choose."""
    import ray

    # keep the driver's output readable: Ray's own logs go to its session folder
    kwargs = dict(address=address, include_dashboard=dashboard if address is None else None,
                  dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=True,
                  logging_level="WARNING")
    for attempt in range(1, START_TRIES + 1):
        before = _descendants()
        try:
            ctx = ray.init(**kwargs)
            break
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            raise ConfigError(ray_start_error(exc, address)) from None  # one line, no traceback
        except Exception as exc:
            if address is not None or STARTUP_TIMEOUT not in str(exc):
                raise
            _kill(_descendants() - before)  # the half-started node's GCS, raylet and reaper
            if attempt == START_TRIES:
                raise ConfigError(ray_start_error(exc, address) + " (a busy machine: free some cores and "
                                  "run again)") from None
            print(f"boneseg: a local Ray did not start within Ray's 30 s (a busy machine?); trying again "
                  f"({attempt}/{START_TRIES - 1})", file=sys.stderr)
    url = getattr(ctx, "dashboard_url", None)
    if dashboard and address is None and url:
        print(f"boneseg sweep: Ray dashboard on http://{url} (Ray's token: `ray get-auth-token`)",
              file=sys.stderr)
        return url
    return None
