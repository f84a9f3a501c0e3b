"""The MLflow store: the only module that imports ``mlflow``.

Where the store is (``store_uri``), whether a server answers (``reachable``), a client that
retries while a sqlite store is locked (``client_for``), and experiments by name. The rest of
``sr_ablate.tracking`` reaches MLflow through the names exported here. Runs are addressed by
id through ``MlflowClient`` (no global active run), so in-process sweeps, parent runs and
child runs never step on each other.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag  # noqa: F401 (for runs.py)
from mlflow.exceptions import MlflowException, RestException  # noqa: F401 (for runs.py, queries.py)
from mlflow.models.signature import ModelSignature  # noqa: F401 (for models.py)
from mlflow.pyfunc import PythonModel, save_model  # noqa: F401 (for models.py)
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec  # noqa: F401 (for models.py)
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME  # noqa: F401

from sr_ablate import UserError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reports fetch many
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter about table creation
logging.getLogger("alembic").setLevel(logging.WARNING)
# a model object is pickled by reference to its class in sr_ablate (nothing of ours runs
# from the pickle that the installed package does not hold): no warning per run
logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)

def store_uri(uri: str | None, cwd: str | Path | None = None) -> str:
    """The tracking URI: ``uri`` if set, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db.
    A database URL whose driver is missing is refused here.

    The default is absolute, so it does not move when Hydra changes directories.
    """
    from sr_ablate.config.drivers import check_driver  # not on a loaded model's path
    what = "tracking.uri"
    if not uri and os.environ.get("MLFLOW_TRACKING_URI"):
        uri, what = os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    if uri:
        check_driver(uri, what)
        return uri
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def reachable(uri: str, timeout: float = 5.0, patience: float = 0.0) -> None:
    """Raise UserError (one line) when ``uri`` is an http(s) tracking server or a PostgreSQL
    store that does not answer, so a run stops before any work instead of failing after its
    training. ``patience``: seconds to keep asking a server that does not answer (a sweep's
    job: the server answered when the sweep started, and may be restarting)."""
    if uri.startswith("postgresql"):
        from sr_ablate.config.drivers import opened
        with opened(uri, "tracking.uri", timeout):  # MLflow creates its tables as it opens
            MlflowClient(uri).search_experiments(max_results=1)
        return
    if not uri.startswith(("http://", "https://")):
        return
    end, said = time.monotonic() + patience, False
    while True:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                break
        except urllib.error.HTTPError:
            break  # something answered (a proxy asking for a login, no /health route)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if time.monotonic() >= end:
                raise UserError(f"MLflow tracking server {uri} does not answer ({reason}); "
                                "start it (mlflow server --host 127.0.0.1 --port 5000) or set "
                                "tracking.uri=sqlite:///mlflow.db") from None
            if not said:
                print(f"sr_ablate: tracking server {uri} does not answer ({reason}); this "
                      f"sweep job waits up to {patience:.0f} s for it", file=sys.stderr)
                said = True
            time.sleep(2)
    if said:
        print(f"sr_ablate: tracking server {uri} answers again", file=sys.stderr)


class _Retrying:
    """An MlflowClient whose calls are retried with backoff while another process holds the
    sqlite store's lock longer than MLflow waits (20 s per call): many parallel jobs on one
    store slow down instead of failing."""
    DELAYS = (0.5, 1, 2, 4, 8, 16)

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            for delay in (*self.DELAYS, None):
                try:
                    return attr(*args, **kwargs)
                except Exception as e:  # a locked database never committed: safe to repeat
                    if delay is None or "database is locked" not in str(e):
                        raise
                    time.sleep(delay * random.uniform(1, 1.5))  # jitter: jobs retry apart
        return call


def client_for(uri: str) -> MlflowClient:
    """The client of the store at ``uri`` (retrying while a sqlite store is locked)."""
    client = MlflowClient(uri)
    return _Retrying(client) if uri.startswith("sqlite:") else client


def transient(error: Exception) -> bool:
    """True for a tracking server that does not answer (connection refused, timeout, 5xx),
    false for one that answers with a refusal (bad request, no such run)."""
    if isinstance(error, RestException):
        return error.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")
    return isinstance(error, (mlflow.exceptions.MlflowException, OSError))


def _artifact_root(uri: str) -> str | None:
    # sqlite stores otherwise put artifacts in ./mlruns of whatever the cwd is: keep them
    # next to the database instead.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def experiment_id(uri: str, name: str) -> str:
    """Create (once) or look up experiment ``name`` in the store at ``uri``; returns its id."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = _artifact_root(uri)
    try:
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except mlflow.exceptions.MlflowException:
        # another process created it between our look-up and create
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
