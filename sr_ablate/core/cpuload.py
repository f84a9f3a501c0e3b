"""How busy the machine was with *other* work while something was being timed.

A timing taken while other processes compete for the CPUs is slower by an amount that depends
on them, not on the model (a busy 2-core machine measured 832 ms for a model that takes 153 ms
idle), so a timing is recorded with this figure beside it.

``CpuLoad`` reads, around a block of code, the busy time of the CPUs this process may run on
(``/proc/stat``: user, nice, system, irq, softirq and steal ticks) and this process's own CPU
time; ``share`` is the part of those CPUs' time that went to anything else:

    share = (busy ticks of the allowed CPUs - this process's CPU time) / all their ticks

in [0, 1]: 0 on an otherwise idle machine, 0.5 when others kept half of the cores busy. It is
measured over the same interval as the timing, unlike the 1-minute load average, which lags a
minute behind and cannot see a burst of a few seconds. Linux only (``/proc/stat``); elsewhere
``share`` is NaN. /proc/stat counts in ticks of 1/100 s, so an interval of 0.2 s on 2 CPUs
is read to about ±0.05.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

STAT = Path("/proc/stat")


def allowed_cpus() -> set[int]:
    """The CPU numbers this process may run on (its affinity); all of them off Linux."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity call
        return set(range(os.cpu_count() or 1))


def cpu_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) ticks since boot of the CPUs ``cpus``, from /proc/stat; None without it.

    Busy: user + nice + system + irq + softirq + steal (time a hypervisor gave to other
    machines counts as taken by others); total adds idle and iowait. guest and guest_nice are
    already inside user and nice, so they are not added again."""
    try:
        lines = STAT.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
    return (busy, total) if total else None


class CpuLoad:
    """Context manager: ``with CpuLoad() as load: ...``; afterwards ``load.share`` is the part
    of the allowed CPUs' time that other processes used meanwhile, in [0, 1] (NaN off Linux),
    ``load.cores`` the number of CPUs this process may use, ``load.seconds`` the wall time."""

    def __init__(self):
        self.cores = len(allowed_cpus())
        self.share = math.nan
        self.seconds = math.nan

    def __enter__(self) -> CpuLoad:
        self._cpus = allowed_cpus()
        self._ticks = cpu_ticks(self._cpus)
        self._own = time.process_time()  # every thread of this process, ns resolution
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t
        own = time.process_time() - self._own
        ticks = cpu_ticks(self._cpus)
        if self._ticks is None or ticks is None or ticks[1] <= self._ticks[1]:
            return
        hz = os.sysconf("SC_CLK_TCK")
        busy = (ticks[0] - self._ticks[0]) / hz
        total = (ticks[1] - self._ticks[1]) / hz
        # clipped: ticks are sampled, our own CPU time is exact, so the difference can dip
        # a tick below zero on an idle machine
        self.share = min(1.0, max(0.0, (busy - own) / total))
