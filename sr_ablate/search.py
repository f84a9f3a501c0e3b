"""Optuna sweeps: ``python -m sr_ablate sweep=<study>`` for a sweep file with an ``optuna:`` part.

Optuna (>= 4) is driven directly, not through Hydra's sweeper plugin (which pins optuna < 3
and can neither prune nor resume). Each worker process loops: ask the study for a trial,
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

import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sr_ablate import Stopped, UserError

OPTUNA_KEYS = {"trials", "objectives", "params", "sampler", "pruner", "storage", "seeds",
               "max_failure_rate", "heartbeat"}
METRIC = re.compile(r"^(train/(loss|lr|it_per_s)|model/(params|gflops|ms_per_frame|"
                    r"s_per_30_frames)|[^/]+/(psnr|ssim|bicubic_psnr|bicubic_ssim|seconds))$")
# sweep.* settings and where/how-to-show settings may change between workers and resumes
VOLATILE = ("sweep.", "trainer.progress=", "trainer.device=", "tracking.")


def check_spec(spec: dict) -> dict:
    """The ``optuna:`` part of a sweep file, checked and with defaults filled in."""
    where = f"{spec['path']}: optuna"
    opt = dict(spec["optuna"])
    unknown = set(opt) - OPTUNA_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; it holds "
                        f"{', '.join(sorted(OPTUNA_KEYS))}")
    if spec.get("grid") or spec.get("variants"):
        raise UserError(f"{spec['path']}: an optuna sweep has no grid or variants; put fixed "
                        "settings under 'overrides' and searched ones under optuna.params")
    objectives = opt.get("objectives") or {}
    if not objectives or len(objectives) > 2 or any(
            d not in ("maximize", "minimize") for d in objectives.values()):
        raise UserError(f"{where}.objectives: give one or two logged metrics with a direction, "
                        "e.g. {{val/psnr: maximize, model/ms_per_frame: minimize}}")
    for name in objectives:
        if not METRIC.match(name):
            raise UserError(f"{where}.objectives: {name!r} is not a metric runs log; use e.g. "
                            "val/psnr, val/ssim, model/ms_per_frame, model/params, train/loss")
    if not opt.get("params"):
        raise UserError(f"{where}.params: give the search space, e.g. "
                        "optim.lr: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}")
    for key, p in opt["params"].items():
        if key == "seed":
            raise UserError(f"{where}.params: do not search over the seed; list repeats in "
                            "optuna.seeds instead")
        ok = isinstance(p, dict) and (
            (p.get("type") in ("float", "int") and {"low", "high"} <= set(p)
             and set(p) <= {"type", "low", "high", "log", "step"})
            or (p.get("type") == "categorical" and set(p) == {"type", "choices"}
                and p["choices"]))
        if not ok:
            raise UserError(f"{where}.params.{key}: give {{type: float|int, low, high, [log], "
                            "[step]}} or {{type: categorical, choices: [...]}}")
    if opt.get("pruner") and len(objectives) > 1:
        raise UserError(f"{where}.pruner: Optuna cannot prune a two-objective study; "
                        "drop the pruner or one objective")
    opt.setdefault("sampler", {"name": "tpe", "seed": 0})
    opt.setdefault("seeds", [0])
    opt.setdefault("max_failure_rate", 0.5)
    opt.setdefault("heartbeat", 30)
    return opt


def _make(kind: str, cfg: dict | None, names: dict, **extra):
    """Build a sampler or pruner from ``{name: <short name>, **kwargs}``."""
    import optuna

    module = optuna.samplers if kind == "sampler" else optuna.pruners
    cfg = dict(cfg or {"name": "none"})
    name = cfg.pop("name", None)
    if name not in names:
        raise UserError(f"optuna.{kind}: unknown name {name!r}; use one of {', '.join(names)}")
    try:
        return getattr(module, names[name])(**cfg, **extra)
    except (TypeError, ValueError, ImportError) as e:
        raise UserError(f"optuna.{kind} {name}: {e}; see Optuna's {names[name]}") from None


SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "nsga2": "NSGAIISampler",
            "qmc": "QMCSampler", "gp": "GPSampler", "cmaes": "CmaEsSampler"}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
           "successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
           "threshold": "ThresholdPruner", "wilcoxon": "WilcoxonPruner"}


def sampler_for(opt: dict, trial_number: int):
    """The sampler, seeded per trial (seed + trial number): a serial study is reproducible,
    a resumed one does not redraw its first points, and parallel workers never draw alike."""
    cfg = dict(opt["sampler"])
    seed = cfg.pop("seed", None)
    return _make("sampler", cfg, SAMPLERS,
                 **({} if seed is None else {"seed": seed + trial_number}))


def storage(url: str, heartbeat: int, on_stale=None):
    """An Optuna RDB storage with heartbeats: a dead worker's trial is failed after two
    missed beats, queued again with the same parameters, and ``on_stale(trial)`` called."""
    import optuna
    import sqlalchemy

    retry_cb = optuna.storages.RetryFailedTrialCallback(max_retry=3)

    def retry(study, trial):
        retry_cb(study, trial)
        if on_stale is not None:
            on_stale(trial)
    import inspect
    key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
           inspect.signature(optuna.storages.RDBStorage).parameters else "failed_trial_callback")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                          grace_period=2 * heartbeat, **{key: retry})
    except ImportError as e:
        raise UserError(f"sweep.storage: the database driver is missing ({e.name}); "
                        f"pip install it (e.g. psycopg2-binary for postgresql)") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"sweep.storage: cannot open {redact(url)}: {first}") from None


def redact(url: str) -> str:
    """The URL without its password (for logs and MLflow tags); UserError if not a URL."""
    import sqlalchemy
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"sweep.storage={url!r} is not a database URL; use e.g. "
                        "sqlite:///optuna.db or postgresql://user:password@host/db") from None


def space_overrides(params: dict) -> list[list[str]]:
    """Override lists that touch every end of the search space (checked before trial 0)."""
    out = []
    for key, p in params.items():
        values = p["choices"] if p["type"] == "categorical" else [p["low"], p["high"]]
        out += [[f"{key}={_text(v)}"] for v in values]
    return out


def _text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def suggest(trial, params: dict) -> list[str]:
    """The trial's overrides, drawn from the search space."""
    out = []
    for key, p in params.items():
        if p["type"] == "categorical":
            v = trial.suggest_categorical(key, p["choices"])
        else:
            fn = trial.suggest_float if p["type"] == "float" else trial.suggest_int
            v = fn(key, p["low"], p["high"], log=p.get("log", False),
                   **({"step": p["step"]} if "step" in p else {}))
        out.append(f"{key}={_text(v)}")
    return out


def definition(spec: dict, opt: dict, extra: list[str]) -> str:
    """What makes a study this study: resuming with another definition is refused."""
    fixed = [o for o in [*(spec.get("overrides") or []), *extra] if not o.startswith(VOLATILE)]
    return json.dumps({"overrides": fixed, "objectives": opt["objectives"],
                       "params": opt["params"], "seeds": opt["seeds"],
                       "sampler": opt["sampler"], "pruner": opt.get("pruner")}, sort_keys=True)


def main(spec: dict, extra: list[str], cwd: str) -> int:
    """Check the sweep, then work on its study (or start ``sweep.workers`` processes that do)."""
    from sr_ablate import launch, preflight

    opt = check_spec(spec)
    base = [*(spec.get("overrides") or []), *extra, f"study={spec['study']}",
            f"tracking.experiment={spec['study']}"]
    cfg = preflight.validate(base)
    for more in space_overrides(opt["params"]):  # both ends of every range, every choice
        preflight.validate(base + more)
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
    threads = max(1, launch.cores() // cfg.sweep.workers)
    env = {**os.environ, launch.THREADS_ENV: str(threads)}
    cmd = [sys.executable, "-m", "sr_ablate", *sys.argv[1:], "sweep.workers=1"]
    print(f"sr_ablate: {cfg.sweep.workers} workers on study {worker.name}, {threads} "
          "thread(s) each", file=sys.stderr)
    procs = [subprocess.Popen(cmd, env=env) for _ in range(cfg.sweep.workers)]
    return max(p.wait() for p in procs)


class Worker:
    """One process working on the study until it holds the requested finished trials."""

    def __init__(self, spec, opt, base, extra, cfg, url, trials, cwd):
        from sr_ablate import tracking

        self.spec, self.opt, self.base, self.cwd, self.url, self.trials = \
            spec, opt, base, cwd, url, trials
        self.name = spec["study"]
        self.objectives = list(opt["objectives"])
        self.definition = definition(spec, opt, extra)
        self.uri = tracking.store_uri(cfg.tracking.uri, cwd)
        self.tags = {"optuna.study": self.name, "optuna.storage": redact(url)}
        self.current = None

    def open(self):
        import optuna
        from sr_ablate import tracking

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial
        study = optuna.create_study(
            study_name=self.name, storage=storage(self.url, self.opt["heartbeat"], self.stale),
            load_if_exists=True, directions=list(self.opt["objectives"].values()),
            sampler=sampler_for(self.opt, 0), pruner=_make("pruner", self.opt.get("pruner"),
                                                           PRUNERS))
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
        from sr_ablate import tracking
        for run_id in trial.user_attrs.get("mlflow_run_ids", []):
            tracking.end_if_running(self.uri, run_id, "KILLED")
        print(f"trial {trial.number}: its worker stopped answering; queued again",
              file=sys.stderr)

    def work(self, study, parent) -> int:
        import warnings

        import optuna
        from optuna.trial import TrialState as S

        from sr_ablate import launch, tracking

        if os.environ.get(launch.THREADS_ENV):
            import torch
            torch.set_num_threads(int(os.environ[launch.THREADS_ENV]))
        rate = self.opt["max_failure_rate"]
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        try:
            while True:
                optuna.storages.fail_stale_trials(study)  # trials of dead workers: re-queued
                ts = study.get_trials(deepcopy=False)
                done = sum(t.state in (S.COMPLETE, S.PRUNED) for t in ts)
                failed = sum(t.state == S.FAIL and "sr_ablate.error" in t.user_attrs for t in ts)
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
                if done + sum(t.state == S.RUNNING for t in ts) >= self.trials:
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

    def objective(self, trial):
        from sr_ablate import preflight, tracking
        from sr_ablate.run import run

        trial.study.sampler = sampler_for(self.opt, trial.number)
        self.current = trial.number
        overrides = suggest(trial, self.opt["params"])
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("mlflow_run_ids", [])  # a re-queued trial copied its original's
        trial.set_user_attr("sr_ablate.worker", f"{socket.gethostname()}:{os.getpid()}")
        run_ids: list[str] = []

        def on_start(run_id):
            run_ids.append(run_id)
            trial.set_user_attr("mlflow_run_ids", run_ids)

        tags = {**self.tags, "optuna.trial_number": str(trial.number)}
        values = []
        for i, seed in enumerate(self.opt["seeds"]):
            typed = [*overrides, f"seed={seed}"]
            try:
                preflight.validate(self.base + typed)
                cfg, choices = preflight.compose_job(self.base + typed)
                result = run(cfg, cwd=self.cwd, overrides=typed, choices=choices, tags=tags,
                             on_start=on_start, on_eval=self.pruning(trial) if i == 0 else None)
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
        import optuna
        from sr_ablate import tracking

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
        from optuna.trial import TrialState as S

        from sr_ablate import tracking

        ts = study.get_trials(deepcopy=False)
        complete = [t for t in ts if t.state == S.COMPLETE]
        counts = {s.name.lower(): sum(t.state == s for t in ts) for s in (S.COMPLETE, S.PRUNED,
                                                                           S.FAIL)}
        best = study.best_trials if complete else []
        line = ", ".join(f"{n} {k}" for k, n in counts.items())
        print(f"optuna study {self.name}: {line}; best: " + ("; ".join(
            f"trial {t.number} " + ", ".join(f"{k}={v:.4g}" for k, v in
                                             zip(self.objectives, t.values)) for t in best)
            or "none") + f" (storage {redact(self.url)})", file=sys.stderr)
        if any(t.state == S.RUNNING for t in ts):
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
