"""Tracking: MLflow runs, their metrics and artifacts (``store`` is the one module that
imports ``mlflow``; ``outbox`` keeps metrics while a tracking server does not answer).

The names below are the package's interface: ``from sr_ablate import tracking`` then
``tracking.run(...)``, ``tracking.runs_frame(...)``.
"""
from sr_ablate.tracking.queries import (
                                        fetch_artifact,
                                        finished_run,
                                        metric_history,
                                        run_metrics,
                                        runs_frame,
                                        sweep_definition,
)
from sr_ablate.tracking.runs import (
                                        FAILED_TAG,
                                        PARENT_ENV,
                                        RESUME_TAG,
                                        REUSED_FROM,
                                        REUSED_TAG,
                                        SWEEP_ENV,
                                        RunLog,
                                        annotate,
                                        end_if_running,
                                        end_parent,
                                        find_parent,
                                        link_reused,
                                        record_failed,
                                        record_reused,
                                        run,
                                        start_parent,
                                        sweep_parent,
)
from sr_ablate.tracking.store import client_for, experiment_id, git_commit, reachable, store_uri

__all__ = ["ALIAS", "FAILED_TAG", "PARENT_ENV", "RESUME_TAG", "REUSED_FROM", "REUSED_TAG",
           "SWEEP_ENV", "RunLog", "annotate", "client_for", "end_if_running", "end_parent",
           "experiment_id", "fetch_artifact", "find_parent", "finished_run", "git_commit",
           "link_reused", "load_trained", "log_model",
           "metric_history", "reachable", "record_failed", "record_reused", "register", "run",
           "run_metrics", "runs_frame", "start_parent", "store_uri", "sweep_definition",
           "sweep_parent", "weights_file"]

_MODELS = ("ALIAS", "load_trained", "log_model", "register", "weights_file")


def __getattr__(name: str):
    # the trained-model names import torch (~1.2 s): ``report`` and the sweep parents, which
    # use none of them, do not pay for it
    if name in _MODELS:
        from sr_ablate.tracking import models
        return getattr(models, name)
    raise AttributeError(f"module 'sr_ablate.tracking' has no attribute {name!r}")
