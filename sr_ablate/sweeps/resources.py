"""How the jobs of a sweep share one machine, and what the launching process learns of them.

Hydra's launchers (serial, joblib, submitit) run the jobs; this module decides, without
importing MLflow (torch only to apply a thread count):
  * how many jobs run at once and how many threads each gets (no oversubscribed cores);
  * which GPU a job takes when several jobs share a machine with several GPUs (a lock file
    per device, so two running jobs never share one, whatever order they start in);
  * each job's outcome (ran / skipped / failed, one line, its run and final PSNR), written as
    a small file the launching process reads when the sweep ends (jobs may run in other
    processes).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

THREADS_ENV = "SR_ABLATE_THREADS"       # torch threads per job
OUTCOMES_ENV = "SR_ABLATE_OUTCOMES"     # folder the jobs write their outcomes to
DEVICE_POOL_ENV = "SR_ABLATE_DEVICE_POOL"  # folder of per-GPU lock files (parallel jobs)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_threads() -> None:
    """In a job: take the torch thread count the launching process chose, if it chose one."""
    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(int(os.environ[THREADS_ENV]))


def plan(jobs: int, requested: int | None, n_cores: int, n_gpus: int = 0) -> tuple[int, int]:
    """(jobs run at once, torch threads per job) for ``jobs`` jobs on one machine.

    ``requested``: the launcher's ``n_jobs`` if the user gave one (joblib's -1 = all cores);
    otherwise as many as there are cores, or GPUs when there are GPUs, and never more than
    the jobs. Threads split the cores evenly, at least 1.
    """
    if requested is None or requested == 0:
        parallel = n_gpus if n_gpus > 0 else n_cores
    elif requested < 0:  # joblib: -1 all cores, -2 all but one...
        parallel = max(1, n_cores + 1 + requested)
    else:
        parallel = requested
    parallel = max(1, min(parallel, jobs))
    return parallel, max(1, n_cores // parallel)


def sweep_size(overrides: list[str]) -> int:
    """Number of jobs a Hydra ``-m`` command line makes (product of the swept values)."""

    parsed = OverridesParser.create().parse_overrides(
        [o for o in overrides if not o.startswith("-")])
    return math.prod(len(list(o.sweep_string_iterator())) for o in parsed
                     if o.is_sweep_override() and not o.key_or_group.startswith("hydra"))


@contextmanager
def claim_device(pool: str | Path, n_devices: int, start: int = 0,
                 poll: float = 0.5) -> Iterator[int]:
    """Hold one of ``n_devices`` devices for the duration of the block; yields its index.

    Tries the devices from ``start`` on (e.g. the job number) and takes the first one no
    other job holds; waits when all are taken. The lock is an ``flock`` on
    ``<pool>/device<i>.lock``, released by the kernel even if the job dies.
    """
    Path(pool).mkdir(parents=True, exist_ok=True)
    while True:
        for k in range(n_devices):
            i = (start + k) % n_devices
            f = open(Path(pool) / f"device{i}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield i
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        time.sleep(poll)


def record(outcome: str, job: str, message: str = "", *, num: int = 0,
           overrides: list[str] | None = None, run_id: str = "",
           metrics: dict[str, float] | None = None, checkpoint: bool = False) -> None:
    """Note a job's outcome (``ran`` | ``skipped`` | ``failed`` | ``interrupted``: Ctrl-C or
    SIGTERM; ``checkpoint``: it left one to resume from) for the launching process,
    with what its end-of-sweep table shows: Hydra's job number, the job's overrides, its
    MLflow run (the reused one when skipped) and that run's final metrics."""
    folder = os.environ.get(OUTCOMES_ENV)
    if not folder:
        return
    path = Path(folder) / f"{uuid.uuid4().hex}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"outcome": outcome, "job": job, "message": message, "num": num,
                               "overrides": overrides or [], "run_id": run_id,
                               "metrics": metrics or {}, "checkpoint": checkpoint}))
    os.replace(tmp, path)  # the reader never sees half a file


def outcomes(folder: str | Path) -> list[dict]:
    """Every outcome the jobs recorded in ``folder``, in the sweep's job order (Hydra's job
    number), so that what a sweep reports and records lists its jobs as they were launched."""
    found = [json.loads(p.read_text()) for p in Path(folder).glob("*.json")]
    return sorted(found, key=lambda r: r.get("num", 0))


def summary(results: list[dict], jobs: int = 0) -> str:
    """One line: how many of the sweep's ``jobs`` jobs (0: as many as ``results``) ran, were
    skipped (and how to force them), failed, were interrupted, or never started (the sweep
    was stopped before them)."""
    kinds = ("ran", "skipped", "failed", "interrupted")
    count = {k: sum(r["outcome"] == k for r in results) for k in kinds}
    parts = [f"{count['ran']} ran"]
    if count["skipped"]:
        parts.append(f"{count['skipped']} skipped (a FINISHED run with the same config hash "
                     "exists; sweep.force=true runs them again)")
    if count["failed"]:
        parts.append(f"{count['failed']} failed (the error line(s) above say why)")
    if count["interrupted"]:
        kept = sum(r["outcome"] == "interrupted" and bool(r.get("checkpoint"))
                   for r in results)
        parts.append(f"{count['interrupted']} interrupted" + (
            " (checkpoint saved)" if kept == count["interrupted"] else
            f" ({kept} with a checkpoint)" if kept else " (before their first checkpoint)"))
    total = max(jobs, len(results))
    if total > len(results):
        parts.append(f"{total - len(results)} not started")
    return f"sr_ablate: {total} job(s): " + ", ".join(parts)
