"""MLflow runs as they open and end: a run's logging handle, sweep parent runs, the tags a
sweep leaves on its parent (reused runs, failed jobs) and the pointer runs it shows them by."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sr_ablate import Stopped, UserError
from sr_ablate.tracking.outbox import Outbox
from sr_ablate.tracking.store import (
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    Metric,
    MlflowClient,
    MlflowException,
    Param,
    RunTag,
    client_for,
    experiment_id,
    git_commit,
    transient,
)

PARENT_ENV = "SR_ABLATE_PARENT_RUN_ID"
SWEEP_ENV = "SR_ABLATE_SWEEP_ID"
RESUME_TAG = "sr_ablate.resume_command"  # on a KILLED run: the command that continues it
OUTBOX_TAG = "sr_ablate.outbox"  # .writes, .batches, .retries, .slowest_ms: a server's cost


class RunLog:
    """Logging handle of one open run: ``log_metrics`` is the ``log`` hook ``fit`` calls.

    With a tracking server (http/https), metrics go through an ``Outbox``: a server that
    stops answering mid-run does not stop training, and its metrics are sent once it is
    back; ``flush`` says what is still unsent (a checkpoint keeps it: ``resend``)."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str = ""):
        self.client, self.run_id = client, run_id
        self.outbox = Outbox(lambda batch: client.log_batch(run_id, metrics=batch), transient,
                             f"tracking server {uri}") if uri.startswith("http") else None

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if self.outbox is not None:
            self.outbox.put(items)
        else:
            self.client.log_batch(self.run_id, metrics=items)

    @property
    def server_down(self) -> bool:
        return self.outbox is not None and self.outbox.down_since is not None

    def unsent(self) -> list[tuple]:
        """Metrics not yet known to be stored, as (key, value, timestamp, step)."""
        items = self.outbox.unsent() if self.outbox is not None else []
        return [(m.key, m.value, m.timestamp, m.step) for m in items]

    def flush(self, timeout: float | None) -> list[tuple]:
        """Wait up to ``timeout`` seconds for every metric to be stored; returns the unsent."""
        if self.outbox is not None:
            self.outbox.flush(timeout)
        return self.unsent()

    def resend(self, unsent: list[tuple]) -> None:
        """Log a checkpoint's unsent metrics, those the store lacks (a step after the last
        one it holds of that key): none is lost, none is stored twice."""
        last: dict[str, int] = {}
        items = []
        for key, value, timestamp, step in unsent:
            if key not in last:
                last[key] = self.last_step(key)
            if step > last[key]:
                items.append(Metric(key, value, timestamp, step))
        for i in range(0, len(items), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def last_step(self, key: str = "train/loss") -> int:
        """The highest step ``key`` was logged at (-1 if never): where a resumed run's
        logging picks up, so no step is logged twice."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)),
                   default=-1)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def outbox_tags(self) -> dict[str, str]:
        """What sending metrics to the server cost this run (``OUTBOX_TAG``.writes, .batches,
        .retries, .slowest_ms); none without a server."""
        if self.outbox is None:
            return {}
        st = self.outbox.stats
        return {f"{OUTBOX_TAG}.writes": str(st["writes"]),
                f"{OUTBOX_TAG}.batches": str(st["batches"]),
                f"{OUTBOX_TAG}.retries": str(st["retries"]),
                f"{OUTBOX_TAG}.slowest_ms": f"{st['slowest_s'] * 1000:.1f}"}


@contextmanager
def run(uri: str, experiment: str, *, params: dict, tags: dict, name: str | None = None,
        parent_run_id: str | None = None, resume_run_id: str | None = None
        ) -> Iterator[RunLog]:
    """Open a run, yield its ``RunLog``; it ends FINISHED, FAILED on error, KILLED on Ctrl-C.
    ``resume_run_id``: reopen that run instead (its params and tags stay as they are)."""
    # a stale id would hijack the run (docs/protocol.md#mlflow-pitfalls)
    os.environ.pop("MLFLOW_RUN_ID", None)
    client = client_for(uri)
    if resume_run_id:
        try:
            held_run = client.get_run(resume_run_id)
        except MlflowException:
            raise UserError(f"the checkpoint belongs to MLflow run {resume_run_id}, which is "
                            f"not in {uri}; use the same tracking.uri or resume=false") from None
        held = held_run.info.experiment_id
        if held != experiment_id(uri, experiment):
            held_name = client.get_experiment(held).name
            raise UserError(f"the checkpoint belongs to MLflow run {resume_run_id} of experiment "
                            f"{held_name!r}, not {experiment!r}; pass "
                            f"tracking.experiment={held_name} or resume=false")
        client.update_run(resume_run_id, status="RUNNING")
        client.set_tag(resume_run_id, "sr_ablate.resumed", "true")
        if RESUME_TAG in held_run.data.tags:  # being done: no longer a thing to do
            client.delete_tag(resume_run_id, RESUME_TAG)
        if os.environ.get(PARENT_ENV):  # resumed by a new launch of its sweep: it belongs there
            client.set_tag(resume_run_id, MLFLOW_PARENT_RUN_ID, os.environ[PARENT_ENV])
            client.set_tag(resume_run_id, "sr_ablate.sweep_id", os.environ[SWEEP_ENV])
        with _ending(client, RunLog(client, resume_run_id, uri)) as log:
            yield log
        return
    tags = dict(tags)
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV)
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if os.environ.get(SWEEP_ENV):
        tags["sr_ablate.sweep_id"] = os.environ[SWEEP_ENV]
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if name:
        tags[MLFLOW_RUN_NAME] = name
    r = client.create_run(experiment_id(uri, experiment), tags={k: str(v) for k, v in tags.items()},
                          run_name=name)
    run_id = r.info.run_id
    try:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            client.log_batch(run_id, params=items[i:i + 100])
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    with _ending(client, RunLog(client, run_id, uri)) as log:
        yield log


@contextmanager
def _ending(client: MlflowClient, log: RunLog) -> Iterator[RunLog]:
    """End the run by how the block ends: FINISHED, KILLED (pruned, Ctrl-C, SIGTERM) or
    FAILED with the reason as a tag. When the server is down the run cannot be ended: the
    error that stopped it is raised as it is, not hidden behind a connection error."""
    run_id = log.run_id

    def settle() -> None:  # metrics still on their way go first: no run ends without them
        if log.outbox is not None and not log.server_down:
            log.flush(60)

    def end(tag: str, text: str, status: str) -> None:
        if log.server_down:
            return
        try:
            settle()
        except Exception:
            pass  # what could not be sent is said below, when the outbox closes
        try:
            client.set_tag(run_id, tag, text[:5000])
            client.set_terminated(run_id, status)
        except Exception as e:
            print(f"sr_ablate: could not mark run {run_id} {status} "
                  f"({' '.join(str(e).split())[:200]})", file=sys.stderr)

    try:
        yield log
    except Stopped as e:  # on purpose (pruned): not a failure, not finished either
        end("sr_ablate.stopped", str(e), "KILLED")
        raise
    except KeyboardInterrupt as e:
        end("sr_ablate.stopped", str(e) or "interrupted (Ctrl-C)", "KILLED")
        raise
    except BaseException as e:  # why, in one line (a non-finite loss says at which step)
        end("sr_ablate.error", f"{type(e).__name__}: {e}", "FAILED")
        raise
    else:
        try:
            settle()
        except Exception as e:  # the server refused metrics: the run is not complete
            end("sr_ablate.error", f"{type(e).__name__}: {e}", "FAILED")
            raise
        if log.outbox is not None:
            log.set_tags(log.outbox_tags())
        client.set_terminated(run_id, "FINISHED")
    finally:
        if log.outbox is not None:
            log.outbox.close()
            lost = len(log.unsent())
            if lost:  # said out loud; a checkpoint holds them when the run can be resumed
                print(f"sr_ablate: {lost} metric values of run {run_id} were not sent: "
                      "its tracking server did not answer", file=sys.stderr)


def start_parent(uri: str, experiment: str, sweep_id: str, definition: str,
                 tags: dict[str, str] | None = None, name: str | None = None) -> str:
    """Create the parent run of a sweep (with extra ``tags``) and export its id for the child
    jobs; returns the id."""
    client = client_for(uri)
    r = client.create_run(experiment_id(uri, experiment), run_name=name or f"sweep-{sweep_id}",
                          tags={**(tags or {}), "sr_ablate.sweep_id": sweep_id,
                                "sr_ablate.role": "sweep", "sr_ablate.sweep": definition})
    os.environ[PARENT_ENV] = r.info.run_id
    os.environ[SWEEP_ENV] = sweep_id
    return r.info.run_id


def sweep_parent() -> str | None:
    """The parent run the runs of this process go under (a sweep's job), or None."""
    return os.environ.get(PARENT_ENV) or None


REUSED_TAG = "sr_ablate.reused_run_ids"


def record_reused(uri: str, parent_run_id: str, run_ids: list[str]) -> None:
    """List on a sweep's parent run (tag ``sr_ablate.reused_run_ids``, full ids separated by
    spaces) the FINISHED runs it reused instead of running their configurations again: they
    are part of the sweep's results though they sit under an earlier sweep's parent."""
    ids = list(dict.fromkeys(run_ids))
    if ids:
        client_for(uri).set_tag(parent_run_id, REUSED_TAG, " ".join(ids))


REUSED_FROM = "sr_ablate.reused_from"
NOTE = "mlflow.note.content"  # the UI's "Description" of a run


def link_reused(uri: str, run_id: str) -> str | None:
    """Show FINISHED run ``run_id``, which a sweep reused instead of running its
    configuration again, under the sweep's parent run; returns the pointer run's id (None
    outside a sweep).

    ``mlflow ui`` nests runs by the ``mlflow.parentRunId`` tag, and a run has one parent: the
    reused run stays under the sweep that made it. So a small FINISHED child run stands for
    it here, named ``<its name> (reused)``, tagged ``sr_ablate.reused_from=<run_id>``, with
    its params and final metrics (the sweep's columns in the UI) and a description that links
    it. It holds no config hash, artifacts or curves: a skip check never finds it, and
    ``runs_frame`` leaves it out, so that nothing counts a configuration twice."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return None
    client = client_for(uri)
    original = client.get_run(run_id)
    name = original.data.tags.get(MLFLOW_RUN_NAME) or original.info.run_name or run_id[:8]
    sweep = original.data.tags.get("sr_ablate.sweep_id")
    note = (f"Reused, not run again: this configuration already had the FINISHED run "
            f"[{name}](#/experiments/{original.info.experiment_id}/runs/{run_id}) "
            f"(`{run_id}`{f', sweep {sweep}' if sweep else ''}) with the same config hash. "
            "Its params and final metrics are copied here; its curves, artifacts and model "
            "are in that run.")
    tags = {MLFLOW_PARENT_RUN_ID: parent, REUSED_FROM: run_id, NOTE: note,
            "sr_ablate.sweep_id": os.environ.get(SWEEP_ENV, ""),
            MLFLOW_RUN_NAME: f"{name} (reused)"}
    if "overrides" in original.data.tags:
        tags["overrides"] = original.data.tags["overrides"]
    r = client.create_run(original.info.experiment_id, tags=tags, run_name=f"{name} (reused)")
    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in original.data.params.items()]
    metrics = [Metric(k, v, now, 0) for k, v in original.data.metrics.items()]
    try:
        for i in range(0, len(params), 100):  # log_batch: at most 100 params, 1000 metrics
            client.log_batch(r.info.run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(r.info.run_id, metrics=metrics[i:i + 1000])
    finally:  # never left RUNNING: a half-copied pointer still points
        client.set_terminated(r.info.run_id, "FINISHED")
    return r.info.run_id


FAILED_TAG = "sr_ablate.failed_jobs"


def record_failed(uri: str, parent_run_id: str, failures: list[tuple[str, str]]) -> None:
    """List on a sweep's parent run (tag ``sr_ablate.failed_jobs``, JSON [[job overrides,
    one-line error], ...]) the jobs that failed, including those that failed before their
    own run opened (bad input, missing VGG19 weights): the report names them as missing."""
    if failures:
        text = json.dumps([list(f) for f in failures])
        # MLflow tags hold up to 8000 characters; the errors are one line each
        client_for(uri).set_tag(parent_run_id, FAILED_TAG, text[:7999])


def end_parent(uri: str, run_id: str, ok: bool, status: str | None = None) -> None:
    """Close a sweep's parent run: ``status`` if given, else FINISHED when every child
    finished (or was stopped on purpose, e.g. pruned), else FAILED."""
    client = client_for(uri)
    if status is None:
        children = client.search_runs([client.get_run(run_id).info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
        ok = ok and all(c.info.status == "FINISHED" or "sr_ablate.stopped" in c.data.tags
                        for c in children)
        status = "FINISHED" if ok else "FAILED"
    client.set_terminated(run_id, status)
    os.environ.pop(PARENT_ENV, None)
    os.environ.pop(SWEEP_ENV, None)


def find_parent(uri: str, experiment: str, tags: dict[str, str], definition: str) -> str:
    """The parent run carrying ``tags`` (e.g. an Optuna study and its storage), made RUNNING
    again; created if there is none. Several workers starting at once agree on the oldest.
    Its id is exported for the child runs, as ``start_parent`` does."""
    client = client_for(uri)
    exp = experiment_id(uri, experiment)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())

    def existing():
        return client.search_runs([exp], filter_string=query, order_by=["attributes.start_time"])
    runs = existing()
    if not runs:
        sweep_id = uuid.uuid4().hex[:12]
        start_parent(uri, experiment, sweep_id, definition, tags,
                     name=f"sweep-{tags.get('optuna.study', sweep_id)}")
        runs = existing()
        for r in runs[1:]:  # lost a race with another worker: keep only the oldest
            if r.data.tags.get("sr_ablate.sweep_id") == sweep_id:
                client.delete_run(r.info.run_id)
    parent = runs[0]
    if parent.info.status != "RUNNING":
        client.update_run(parent.info.run_id, status="RUNNING")
    os.environ[PARENT_ENV] = parent.info.run_id
    os.environ[SWEEP_ENV] = parent.data.tags["sr_ablate.sweep_id"]
    return parent.info.run_id


def end_if_running(uri: str, run_id: str, status: str) -> None:
    """End a run left RUNNING by a process that died (e.g. SIGKILL) with ``status``."""
    client = client_for(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status)


def annotate(uri: str, run_id: str, tags: dict | None = None, metrics: dict | None = None,
             artifacts: list[str | Path] = ()) -> None:
    """Add tags, metrics (step 0) and artifact files to an existing run (open or ended)."""
    log = RunLog(client_for(uri), run_id)
    if tags:
        log.set_tags(tags)
    if metrics:
        log.log_metrics(0, metrics)
    for path in artifacts:
        log.log_artifact(path)
