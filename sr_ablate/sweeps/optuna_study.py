"""Optuna sweeps: ``sr-ablate sweep=<study>`` for a sweep file with an ``optuna:`` part.

Optuna (>= 4) is driven directly, not through Hydra's sweeper plugin (which pins optuna < 3
and can neither prune nor resume). This module checks the sweep file (``optuna_spec``) and starts
the workers; each worker process (``optuna_worker``) loops: ask the study for a trial,
compose the trial's config with Hydra's compose API, ``run`` it in-process (an MLflow child
run), report every evaluation to the pruner, tell the result. The study lives in an RDB
storage (default ``sqlite:///<cwd>/optuna.db``; ``postgresql://...`` for many machines), so:
  * re-running the command resumes the study until it holds ``trials`` finished (complete or
    pruned) trials; a trial whose worker died is found by its stale heartbeat, marked failed
    and re-queued with the same parameters;
  * any number of workers (``sweep.workers=N`` here, or the same command on other machines)
    share the study;
  * a trial that crashes or diverges is failed, and the sweep goes on until more than
    ``max_failure_rate`` of the trials tried have failed.
The sweep's MLflow parent run holds the definition, the study name and storage and, at the
end, the best trial(s); trial number and MLflow run id are stored on each other.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sr_ablate import UserError, tracking
from sr_ablate.config import validation
from sr_ablate.sweeps import resources
from sr_ablate.sweeps.optuna_spec import check_spec, space_overrides
from sr_ablate.sweeps.optuna_worker import Worker
from sr_ablate.training import speed


def main(spec: dict, extra: list[str], cwd: str) -> int:
    """Check the sweep, then work on its study (or start ``sweep.workers`` processes that do)."""
    opt = check_spec(spec)
    base = [*(spec.get("overrides") or []), *extra, f"study={spec['study']}",
            f"tracking.experiment={spec['study']}"]
    cfg = validation.validate(base, files=True)
    for more in space_overrides(opt["params"]):  # both ends of every range, every choice
        validation.validate(base + more, files=True)
    tracking.reachable(tracking.store_uri(cfg.tracking.uri, cwd))
    trials = opt.get("trials") if cfg.sweep.trials is None else cfg.sweep.trials
    if not isinstance(trials, int) or trials < 1:
        raise UserError(f"{spec['path']}: optuna.trials (or sweep.trials=N) must be a "
                        "positive number of trials")
    url = cfg.sweep.storage or opt.get("storage") or \
        f"sqlite:///{Path(cwd).resolve() / 'optuna.db'}"
    worker = Worker(spec, opt, base, extra, cfg, url, trials, cwd)
    study, parent = worker.open()  # storage, study and MLflow parent exist before workers start
    if cfg.sweep.workers == 1:
        return worker.work(study, parent)
    threads = max(1, resources.cores() // cfg.sweep.workers)
    t = cfg.trainer  # auto speed settings measured once, before the workers start
    speed.prepare(t.precision, t.channels_last, t.device, threads)
    env = {**os.environ, resources.THREADS_ENV: str(threads)}
    cmd = [sys.executable, "-m", "sr_ablate", *sys.argv[1:], "sweep.workers=1"]
    print(f"sr_ablate: {cfg.sweep.workers} workers on study {worker.name}, {threads} "
          "thread(s) each", file=sys.stderr)
    procs = [subprocess.Popen(cmd, env=env) for _ in range(cfg.sweep.workers)]
    return max(p.wait() for p in procs)
