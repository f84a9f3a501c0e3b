"""The Optuna worker: one process working on a study until it holds the requested number of
finished trials (``optuna_study`` checks the sweep file and starts it).

Each trial is asked from the storage, composed with Hydra's compose API, ``run`` in-process as
an MLflow child run of the study's parent run, reported to the pruner at every evaluation, and
told back; one line per trial says how it ended.
"""
from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from sr_ablate import Stopped, UserError, tracking
from sr_ablate.config import validation
from sr_ablate.sweeps import resources
from sr_ablate.sweeps.optuna_spec import (
    PRUNERS,
    definition,
    make_component,
    redact,
    sampler_for,
    storage,
    suggest,
)
from sr_ablate.training import clock
from sr_ablate.training.init import settle
from sr_ablate.training.job import resume_interrupted, run_job


class Worker:
    """One process working on the study until it holds the requested finished trials."""

    def __init__(self, spec, opt, base, extra, cfg, url, trials, cwd):
        self.spec, self.opt, self.base, self.cwd, self.url, self.trials = \
            spec, opt, base, cwd, url, trials
        self.name = spec["study"]
        self.objectives = list(opt["objectives"])
        self.definition = definition(spec, opt, extra)
        self.uri = tracking.store_uri(cfg.tracking.uri, cwd)
        self.tags = {"optuna.study": self.name, "optuna.storage": redact(url)}
        self.current = None

    def open(self):
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial
        study = optuna.create_study(
            study_name=self.name, storage=storage(self.url, self.opt["heartbeat"], self.stale),
            load_if_exists=True, directions=list(self.opt["objectives"].values()),
            sampler=sampler_for(self.opt, 0),
            pruner=make_component("pruner", self.opt.get("pruner"), PRUNERS))
        have = study.user_attrs.get("sr_ablate.definition")
        if have is None:
            study.set_user_attr("sr_ablate.definition", self.definition)
        elif have != self.definition:
            raise UserError(f"optuna study {self.name!r} in {redact(self.url)} was started with "
                            f"another definition ({have}); resume it with the same sweep file "
                            "and overrides, or use another sweep.storage")
        text = Path(self.spec["path"]).read_text() + f"\n# study definition: {self.definition}\n"
        parent = tracking.find_parent(self.uri, self.name, {**self.tags,
                                      "sr_ablate.role": "sweep"}, text)
        study.set_user_attr("mlflow_parent_run_id", parent)
        return study, parent

    def stale(self, trial) -> None:
        """A dead worker's trial: its MLflow run(s) end KILLED instead of staying RUNNING."""
        for run_id in trial.user_attrs.get("mlflow_run_ids", []):
            tracking.end_if_running(self.uri, run_id, "KILLED")
        print(f"trial {trial.number}: its worker stopped answering; queued again",
              file=sys.stderr)

    def work(self, study, parent) -> int:
        resources.use_threads()
        rate = self.opt["max_failure_rate"]
        try:
            while True:
                optuna.storages.fail_stale_trials(study)  # trials of dead workers: re-queued
                ts = study.get_trials(deepcopy=False)
                done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts)
                failed = sum(t.state == TrialState.FAIL and "sr_ablate.error" in t.user_attrs
                             for t in ts)
                if done >= self.trials:
                    break
                tried = done + failed
                if failed >= self.trials or (failed and tried >= min(self.trials, 3)
                                             and failed / tried > rate):
                    print(f"error: optuna study {self.name}: {failed} of {tried} trials "
                          f"failed (more than optuna.max_failure_rate={rate}); see the "
                          "FAILED runs in MLflow, fix the search space or raise the rate",
                          file=sys.stderr)
                    tracking.end_parent(self.uri, parent, ok=False, status="FAILED")
                    return 1
                if done + sum(t.state == TrialState.RUNNING for t in ts) >= self.trials:
                    time.sleep(min(5, self.opt["heartbeat"]))  # others hold the last trials
                    continue
                study.sampler = sampler_for(self.opt, len(ts))
                study.optimize(self.objective, n_trials=1)
        except KeyboardInterrupt:
            self.requeue(study)
            tracking.end_parent(self.uri, parent, ok=False, status="KILLED")
            raise
        self.finish(study, parent)
        return 0

    def requeue(self, study) -> None:
        """Queue the interrupted trial again, so a resumed study loses nothing."""
        if self.current is not None:
            t = study.trials[self.current]
            if t.state.name == "FAIL" and "sr_ablate.error" not in t.user_attrs:
                study.enqueue_trial(t.params, user_attrs={"sr_ablate.retry_of": t.number})

    def surplus(self, trial) -> bool:
        """Two workers that check the study at the same instant may both ask for its last
        trial; the later-numbered one steps back, so the study ends with exactly ``trials``
        finished ones."""
        ts = trial.study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in ts)
        return done + ahead >= self.trials

    def objective(self, trial):
        if self.surplus(trial):  # ends FAIL, not counted as a failure nor as finished
            trial.set_user_attr("sr_ablate.surplus", True)
            print(f"trial {trial.number}: not needed, the study's last trials are taken",
                  file=sys.stderr)
            return math.nan if len(self.objectives) == 1 else [math.nan] * len(self.objectives)
        trial.study.sampler = sampler_for(self.opt, trial.number)
        self.current = trial.number
        overrides = suggest(trial, self.opt["params"])
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("mlflow_run_ids", [])  # a re-queued trial copied its original's
        trial.set_user_attr("sr_ablate.worker", f"{socket.gethostname()}:{os.getpid()}")
        run_ids: list[str] = []

        tags = {**self.tags, "optuna.trial_number": str(trial.number)}

        def on_start(run_id):
            run_ids.append(run_id)
            trial.set_user_attr("mlflow_run_ids", run_ids)
            tracking.annotate(self.uri, run_id, tags=tags)  # a resumed run joins this trial

        values = []
        for i, seed in enumerate(self.opt["seeds"]):
            typed = [*overrides, f"seed={seed}"]
            started = clock.job_clock()
            try:
                validation.validate(self.base + typed)
                cfg, choices = validation.compose_job(self.base + typed)
                settle(cfg, self.cwd)  # model.init_sha256, before the hash resume looks up
                resume_interrupted(cfg, self.cwd)  # a re-queued trial that had a checkpoint
                result = run_job(cfg, cwd=self.cwd, overrides=typed, choices=choices, tags=tags,
                             on_start=on_start, on_eval=self.pruning(trial) if i == 0 else None,
                             started_at=started)
            except Stopped as e:
                return self.end(trial, run_ids, "PRUNED", str(e))
            except Exception as e:  # crashed or diverged: this trial fails, the study goes on
                message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                trial.set_user_attr("sr_ablate.error", message)
                return self.end(trial, run_ids, "FAIL", message)
            missing = [k for k in self.objectives if k not in result]
            if missing:
                raise UserError(f"objective {missing[0]!r} is not logged by these runs; "
                                f"logged: {', '.join(sorted(result))}")
            values.append([float(result[k]) for k in self.objectives])
        mean = [sum(v) / len(v) for v in zip(*values)]
        shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.objectives, mean))
        self.end(trial, run_ids, "COMPLETE", shown)
        return mean[0] if len(mean) == 1 else mean

    def end(self, trial, run_ids: list[str], state: str, message: str):
        """Say how a trial ended, here and on its MLflow run(s); returns its Optuna value."""
        for run_id in run_ids:
            tracking.annotate(self.uri, run_id, tags={"optuna.state": state})
        overrides = " ".join(trial.user_attrs.get("overrides", []) or
                             [f"{k}={v}" for k, v in trial.params.items()])
        print(f"trial {trial.number} {state.lower()}: {message} ({overrides})", file=sys.stderr)
        if state == "PRUNED":
            raise optuna.TrialPruned(message)
        if state == "FAIL":
            return math.nan if len(self.objectives) == 1 else [math.nan] * len(self.objectives)
        return None

    def pruning(self, trial):
        """on_eval for ``run``: report the objective, stop the run when the pruner says so."""
        if not self.opt.get("pruner") or len(self.objectives) > 1:
            return None
        key = self.objectives[0]

        def on_eval(step: int, metrics: dict) -> None:
            if key not in metrics:
                return
            trial.report(float(metrics[key]), step)
            if trial.should_prune():
                raise Stopped(f"pruned at step {step} ({key}={metrics[key]:.4g})")
        return on_eval

    def finish(self, study, parent) -> None:
        """Best trial(s) onto the parent run, which ends FINISHED once no trial still runs."""
        ts = study.get_trials(deepcopy=False)
        complete = [t for t in ts if t.state == TrialState.COMPLETE]
        fail = [t for t in ts if t.state == TrialState.FAIL]
        counts = {"complete": len(complete),
                  "pruned": sum(t.state == TrialState.PRUNED for t in ts),
                  "fail": sum("sr_ablate.error" in t.user_attrs for t in fail),
                  # a worker that died or was stopped: the trial was queued again
                  "requeued": sum("sr_ablate.error" not in t.user_attrs and
                                  "sr_ablate.surplus" not in t.user_attrs for t in fail)}
        best = study.best_trials if complete else []
        line = ", ".join(f"{n} {k}" for k, n in counts.items())
        print(f"optuna study {self.name}: {line}; best: " + ("; ".join(
            f"trial {t.number} " + ", ".join(f"{k}={v:.4g}" for k, v in
                                             zip(self.objectives, t.values)) for t in best)
            or "none") + f" (storage {redact(self.url)})", file=sys.stderr)
        if any(t.state == TrialState.RUNNING for t in ts):
            return  # another worker is still on a trial: it closes the parent run
        tags = {"optuna.best_trials": ",".join(str(t.number) for t in best),
                "optuna.best_run_ids": ",".join(
                    ",".join(t.user_attrs.get("mlflow_run_ids", [])) for t in best),
                "optuna.trials": str(len(ts)), **{f"optuna.{k}": str(n) for k, n in
                                                   counts.items()}}
        metrics = {f"best/{k}": v for k, v in zip(self.objectives, best[0].values)} \
            if len(best) == 1 else {}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trials.csv"
            study.trials_dataframe().to_csv(path, index=False)
            tracking.annotate(self.uri, parent, tags=tags, metrics=metrics, artifacts=[path])
        tracking.end_parent(self.uri, parent, ok=True, status="FINISHED")
