"""What Ray's dashboard costs the sweep's embedded start-up: `ray.init()` + a first task +
`ray.shutdown()` of a local Ray, with `include_dashboard` False and True, side by side and
interleaved, each in a fresh process (printed times and their ratio, not asserted).

    python bench/ray_startup.py --reps 5

Also prints whether Ray's dashboard dependencies (ray[default]) are installed: without
them a local Ray cannot start a dashboard at all, and with them it starts its per-node
agents even when the dashboard is off.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = r"""
import json, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(include_dashboard={dash}, dashboard_host="127.0.0.1", log_to_driver=False, logging_level="ERROR")
ray.get(ray.remote(lambda: 1).remote())
t2 = time.perf_counter()
ray.shutdown()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "init_first_task_s": t2 - t1, "shutdown_s": t3 - t2,
                  "total_s": t3 - t0}))
"""


def has_default_extras() -> bool:
    try:
        import aiohttp  # noqa: F401
        import opencensus  # noqa: F401
        return True
    except ImportError:
        return False


def probe(dash: bool) -> dict:
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "", "PATH": "/usr/bin:/bin"}
    code = PROBE.replace("{dash}", str(dash))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    extras = has_default_extras()
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(a.reps):  # interleaved, so drift hits both alike
        for dash in (False, True):
            runs[dash].append(probe(dash))
    print(f"ray[default] extras installed: {extras}")
    print("| include_dashboard | median total s | median init + first task s | errors |")
    print("| --- | ---: | ---: | ---: |")
    med = {}
    for dash, rows in runs.items():
        ok = [r for r in rows if "error" not in r]
        errors = [r["error"] for r in rows if "error" in r]
        med[dash] = statistics.median(r["total_s"] for r in ok) if ok else float("nan")
        init = statistics.median(r["init_first_task_s"] for r in ok) if ok else float("nan")
        why = f": {errors[0]}" if errors else ""
        print(f"| {dash} | {med[dash]:.2f} | {init:.2f} | {len(errors)}{why} |")
    print(f"dashboard on / off: {med[True] / med[False]:.2f}x")


if __name__ == "__main__":
    main()
