"""A Ray session for the sweep's and the search's driver: Ray reached or started (a local
Ray, or `address` / RAY_ADDRESS behind the cluster's token), its resources checked against
one trial's, Ray's own noise sent to its session log, and Ray shut down afterwards."""
from __future__ import annotations

import os
from pathlib import Path

from boneseg.core.config import Config
from boneseg.errors import ConfigError
from boneseg.sweep.cluster import auth_env_for, connect, scoped_env  # noqa: F401 (connect: sweep/tune)
from boneseg.sweep.quiet import ray_noise_to_log
from boneseg.sweep.storage import Storage

# read by Ray while the sweep runs: only the legacy reporter honours verbose=0 (no boxed
# tables; the Tracker prints one line per event). Set for the sweep alone (`scoped_env`).
RAY_ENV = {"RAY_AIR_NEW_OUTPUT": "0"}


def check_resources(cfg: Config) -> None:
    import ray

    have = ray.cluster_resources()
    need = {"CPU": cfg.sweep.cpus_per_trial, "GPU": cfg.sweep.gpus_per_trial}
    for k, v in need.items():
        if v and have.get(k, 0) < v:
            raise ConfigError(f"sweep: each trial asks for {v} {k} but the Ray cluster has {have.get(k, 0)}. "
                              f"Lower sweep.{'cpus' if k == 'CPU' else 'gpus'}_per_trial or add nodes.")


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
