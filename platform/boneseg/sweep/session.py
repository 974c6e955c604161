"""A Ray session for the sweep's and the search's driver: Ray reached or started (a local
Ray, or `address` / RAY_ADDRESS behind the cluster's token), its resources checked against
one trial's, Ray's own noise sent to its session log, and Ray shut down afterwards."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from boneseg.core.config import Config
from boneseg.errors import ConfigError
from boneseg.sweep.cluster import auth_env_for, ray_start_error
from boneseg.sweep.quiet import ray_noise_to_log
from boneseg.sweep.storage import Storage

# read by Ray while the sweep runs: only the legacy reporter honours verbose=0 (no boxed
# tables; the Tracker prints one line per event). Set for the sweep alone (`scoped_env`).
RAY_ENV = {"RAY_AIR_NEW_OUTPUT": "0"}


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


def check_resources(cfg: Config) -> None:
    import ray

    have = ray.cluster_resources()
    need = {"CPU": cfg.sweep.cpus_per_trial, "GPU": cfg.sweep.gpus_per_trial}
    for k, v in need.items():
        if v and have.get(k, 0) < v:
            raise ConfigError(f"sweep: each trial asks for {v} {k} but the Ray cluster has {have.get(k, 0)}. "
                              f"Lower sweep.{'cpus' if k == 'CPU' else 'gpus'}_per_trial or add nodes.")


def connect(address: str | None, dashboard: bool = False) -> str | None:
    """`dashboard` (sweep.dashboard) starts Ray's dashboard with a local Ray, on 127.0.0.1
    only (behind Ray's token authentication); a cluster's dashboard is the head node's
    (`ray start --head --include-dashboard=true`), not the driver's to choose."""
    import ray

    # keep the driver's output readable: Ray's own logs go to its session folder
    try:
        ctx = ray.init(address=address, include_dashboard=dashboard if address is None else None,
                       dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=True,
                       logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        raise ConfigError(ray_start_error(exc, address)) from None  # one line, no traceback
    url = getattr(ctx, "dashboard_url", None)
    if dashboard and address is None and url:
        print(f"boneseg sweep: Ray dashboard on http://{url} (Ray's token: `ray get-auth-token`)",
              file=sys.stderr)
        return url
    return None


def on_ray(cfg: Config, address: str | None, storage: Storage, run):
    """`run()` on Ray (`address`, else RAY_ADDRESS, else a local Ray) with enough resources
    for one trial, Ray's own noise in its session log; Ray shut down afterwards."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    with scoped_env({**RAY_ENV, **auth_env_for(address)}):
        connect(address, cfg.sweep.dashboard)
        try:
            check_resources(cfg)
            ctx = ray.get_runtime_context()
            quiet_log = Path(ctx.get_temp_dir()) / ctx.get_session_name() / "logs" / "boneseg-driver.log"
            with ray_noise_to_log(storage.where, quiet_log):
                return run()
        finally:
            ray.shutdown()
