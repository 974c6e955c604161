"""What a trial used: its device, peak resident memory, CUDA memory and training speed
(summary.json's "resources", logged to the fold's MLflow run).

Peak RSS is the trial's own: the process's high-water mark (VmHWM) is reset when the trial
starts, through /proc/self/clear_refs, so a reused Ray worker does not report an earlier
trial's peak. Where the kernel does not allow the reset, the process's peak since it
started is reported instead, and `peak_rss_scope` says "process".
"""
from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

import torch

PROC = Path("/proc/self")


def start(device: torch.device) -> str:
    """Reset the peaks this trial will report; -> the peak RSS's scope ("trial" | "process")."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        (PROC / "clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return "trial"
    except OSError:
        return "process"


def _peak_rss_bytes() -> int:
    try:
        for line in (PROC / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads, " \
           f"{os.cpu_count()} cores)"


def read(device: torch.device, history: list[dict], scope: str) -> dict:
    """The trial's resources so far (call at its end)."""
    speeds = [h["images_per_s"] for h in history if isinstance(h.get("images_per_s"), (int, float))]
    out = {"device": device_name(device), "peak_rss_gib": round(_peak_rss_bytes() / 2**30, 3),
           "peak_rss_scope": scope,
           "images_per_s": round(sum(speeds) / len(speeds), 2) if speeds else None}
    if device.type == "cuda":
        out["cuda_max_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        out["cuda_max_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
    return out
