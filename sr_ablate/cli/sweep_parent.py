"""A grid sweep's MLflow parent run, as ``cli.train`` opens it before Hydra launches the jobs
and closes it after them: what the sweep records on it (reused runs, failed jobs), its status,
and what the sweep says at its end (the summary line on stderr, the table on stdout)."""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from sr_ablate.sweeps import grid, resources
from sr_ablate.training import summary

# ``sr_ablate.tracking`` (MLflow) is imported where it is used, as in ``cli.train``.


@dataclass
class Sweep:
    """A running ``-m`` sweep: its MLflow parent run, the folder its jobs report to and how
    many jobs it has."""
    uri: str
    sweep_id: str
    parent: str
    outcomes: Path
    jobs: int


def open_sweep(cfg, argv: list[str], spec, cwd: str) -> Sweep:
    """Create the sweep's parent run (and the store and experiment, once, before any
    parallel job starts) and the folder its jobs write their outcomes to."""
    from sr_ablate import tracking

    uri = tracking.store_uri(cfg.tracking.uri, cwd)
    tracking.reachable(uri)
    sweep_id = uuid.uuid4().hex[:12]
    parent = tracking.start_parent(uri, cfg.tracking.experiment, sweep_id,
                                   grid.definition(argv, spec))
    outcomes = Path(cwd) / ".sr_ablate" / os.environ[tracking.SWEEP_ENV]
    outcomes.mkdir(parents=True)
    os.environ[resources.OUTCOMES_ENV] = str(outcomes)
    try:
        jobs = resources.sweep_size(argv)
    except Exception:  # Hydra's parser refused what Hydra will parse again: it says why there
        jobs = 0
    return Sweep(uri, sweep_id, parent, outcomes, jobs)


def close_sweep(sw: Sweep, results: list[dict], code: int, status: str | None) -> None:
    """Record reused runs and failed jobs on the parent, end it, print the sweep's table."""
    from sr_ablate import tracking

    failed = [r for r in results if r["outcome"] == "failed"]
    tracking.record_reused(sw.uri, sw.parent, [r["run_id"] for r in results
                                               if r["outcome"] == "skipped" and r["run_id"]])
    tracking.record_failed(sw.uri, sw.parent, [(r["job"], r["message"]) for r in failed])
    tracking.end_parent(sw.uri, sw.parent, ok=code == 0 and not failed, status=status)
    for message in dict.fromkeys(r["message"] for r in failed):
        print(f"error: {message}", file=sys.stderr)
    print(resources.summary(results, sw.jobs), file=sys.stderr)
    if results:  # the sweep's results, on stdout like each run's line
        print(summary.sweep_table(results, sw.sweep_id), flush=True)
    shutil.rmtree(sw.outcomes, ignore_errors=True)
    if not any(sw.outcomes.parent.iterdir()):
        sw.outcomes.parent.rmdir()
