"""Peak memory of this process, as the benchmarks and the lab report it."""

import re
import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident memory of this process: VmHWM on Linux, else ru_maxrss. (A forked child's ru_maxrss starts at
    its parent's size; VmHWM restarts at exec, so a spawned child reports its own peak.)"""
    status = Path("/proc/self/status")
    match = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.MULTILINE) if status.exists() else None
    if match:
        return int(match.group(1)) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def peak_memory_bytes() -> int:
    """This process's peak: CUDA's peak allocation when a GPU is present (reset it with
    torch.cuda.reset_peak_memory_stats before the measured work), else peak RSS."""
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else peak_rss_bytes()


def peak_memory_kind() -> str:
    """What `peak_memory_bytes` measures here, for a results table's notes."""
    import torch

    return "torch.cuda.max_memory_allocated" if torch.cuda.is_available() else "peak RSS (VmHWM on Linux)"
