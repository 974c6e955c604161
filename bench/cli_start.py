"""How long `boneseg` takes to start, and how much memory it takes, per command.

Each command runs in a fresh process (`python -m boneseg.cli ...` on the checkout's
platform/ folder), 3 times; the table shows the median wall time and the peak RSS (from
wait4). Goals: `boneseg --help` and `boneseg config` under 1 s and 150 MB; commands that
need torch pay for it alone.

    python bench/cli_start.py [--baseline DIR] [--repeat 3]

--baseline DIR measures the checkout in DIR (e.g. a `git worktree` of an earlier commit)
side by side and prints the ratios baseline / this checkout.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["config"], ["import", "--help"], ["segment", "--help"], ["evaluate", "--help"],
            ["train", "--help"]]


def measure(checkout: Path, argv: list[str], repeat: int) -> tuple[float, float]:
    """(median seconds, max peak MiB) of `boneseg argv` run from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "platform")}
    secs, peaks = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "boneseg.cli", *argv], cwd=checkout, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        secs.append(time.perf_counter() - t0)
        peaks.append(usage.ru_maxrss / 1024)  # KiB on Linux
        proc.returncode = os.waitstatus_to_exitcode(status)
    return statistics.median(secs), max(peaks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="an earlier checkout to measure side by side")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    head = "| command | time | peak RSS |"
    if args.baseline:
        head = "| command | baseline time | time | ratio | baseline peak | peak | ratio |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for argv in COMMANDS:
        s, m = measure(ROOT, argv, args.repeat)
        name = "boneseg " + " ".join(argv)
        if args.baseline:
            bs, bm = measure(args.baseline, argv, args.repeat)
            print(f"| `{name}` | {bs:.2f} s | {s:.2f} s | {bs / s:.1f}x | {bm:.0f} MiB | {m:.0f} MiB "
                  f"| {bm / m:.1f}x |")
        else:
            print(f"| `{name}` | {s:.2f} s | {m:.0f} MiB |")
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} CPUs; median of {args.repeat} runs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
