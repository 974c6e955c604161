"""Reaching Ray for the sweep's driver, without importing Ray: the token-authentication
environment a driver needs to join a `ray start` cluster, and the one line that says why
Ray could not be reached or started (docs/sweep.md#clusters-and-token-authentication)."""
from __future__ import annotations

import os
from pathlib import Path

from boneseg.core.redact import redact


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
