"""Where a job's fixed cost (``time/to_first_step_s``) counts from."""
from __future__ import annotations

import os
import time

from sr_ablate import IMPORTED_AT

_jobs_in_process = 0


def process_start() -> float:
    """Wall-clock time (``time.time()``) this process started, from /proc (10 ms ticks);
    where there is no /proc, the time sr_ablate was imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return IMPORTED_AT


def job_clock() -> float:
    """Where a job's fixed cost counts from: the process start for a process's first job
    (imports included), the call itself for the next jobs of a sweep in the same process."""
    global _jobs_in_process
    _jobs_in_process += 1
    return process_start() if _jobs_in_process == 1 else time.time()
