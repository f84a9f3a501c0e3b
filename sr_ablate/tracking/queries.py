"""Reading the MLflow store: runs as a table, metric histories, artifacts, a finished run
by config hash."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sr_ablate.tracking.runs import REUSED_FROM
from sr_ablate.tracking.store import MlflowException, client_for


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of one run."""
    return dict(client_for(uri).get_run(run_id).data.metrics)


def finished_run(uri: str, experiment: str, config_hash: str) -> str | None:
    """Id of a FINISHED run of ``experiment`` whose config hash is ``config_hash``, if any
    (a run that trained it, never a sweep's pointer to one: ``runs.link_reused``)."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], max_results=10, filter_string=(
        f"tags.`sr_ablate.config_hash` = '{config_hash}' and attributes.status = 'FINISHED'"))
    return next((r.info.run_id for r in runs if REUSED_FROM not in r.data.tags), None)


def runs_frame(uri: str, experiment: str | None = None, parents: bool = False):
    """All child/single runs (not sweep parents) as a pandas DataFrame, one row per run.
    A sweep's pointer to a run it reused (tag ``sr_ablate.reused_from``) is no run of its
    own and is left out: each trained configuration is one row, wherever it is shown.

    Columns: ``run_id``, ``status``, ``experiment``, params under their own names
    (``model.blocks``), latest metrics under theirs (``val/psnr``), and tags prefixed ``tag:``.
    Param values are strings, as MLflow stores them. ``parents=True``: sweep parent runs
    too (``tag:sr_ablate.role`` is ``sweep``), whose tags say what the sweep is
    (``tag:sr_ablate.sweep``) and which earlier runs it reused (``tag:sr_ablate.reused_run_ids``).
    """
    client = client_for(uri)
    exps = client.search_experiments()
    if experiment:
        exps = [e for e in exps if e.name == experiment]
    rows = []
    for e in exps:
        for r in client.search_runs([e.experiment_id], max_results=50000):
            if r.data.tags.get("sr_ablate.role") == "sweep" and not parents or (
                    REUSED_FROM in r.data.tags):
                continue
            row = {"run_id": r.info.run_id, "status": r.info.status, "experiment": e.name,
                   "start_time": r.info.start_time, "end_time": r.info.end_time}
            row.update(r.data.params)
            row.update(r.data.metrics)
            row.update({f"tag:{k}": v for k, v in r.data.tags.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def sweep_definition(uri: str, sweep_id: str) -> str | None:
    """The definition (sweep file or command line) held by the parent run of ``sweep_id``."""
    client = client_for(uri)
    for e in client.search_experiments():
        for r in client.search_runs([e.experiment_id], max_results=1, filter_string=(
                f"tags.`sr_ablate.sweep_id` = '{sweep_id}' and tags.`sr_ablate.role` = 'sweep'")):
            return r.data.tags.get("sr_ablate.sweep")
    return None


def fetch_artifact(uri: str, run_id: str, path: str, dst: str | Path) -> Path | None:
    """Download artifact ``path`` of a run into ``dst``; None when the run has no such file."""
    try:
        return Path(client_for(uri).download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError):
        return None


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric of one run, by step."""
    hist = client_for(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in hist)
