"""An Optuna sweep file's ``optuna:`` part: its checks, and the sampler, pruner, storage and
search space it names (``optuna_study`` starts the study, ``optuna_worker`` runs trials)."""
from __future__ import annotations

import inspect
import json
import re
import warnings

import optuna
import sqlalchemy

from sr_ablate import UserError
from sr_ablate.config.drivers import hide_passwords, opened

OPTUNA_KEYS = {"trials", "objectives", "params", "sampler", "pruner", "storage", "seeds",
               "max_failure_rate", "heartbeat"}
METRIC = re.compile(r"^(train/(loss|lr|it_per_s)|model/(params|gflops|ms_per_frame|"
                    r"s_per_30_frames)|[^/]+/(psnr|ssim|bicubic_psnr|bicubic_ssim|seconds))$")
# sweep.* settings and where/how-to-show settings may change between workers and resumes
VOLATILE = ("sweep.", "trainer.progress=", "trainer.device=", "data.on_device=", "tracking.")


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


def make_component(kind: str, cfg: dict | None, names: dict, **extra):
    """Build a sampler or pruner from ``{name: <short name>, **kwargs}``."""

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
    return make_component("sampler", cfg, SAMPLERS,
                 **({} if seed is None else {"seed": seed + trial_number}))


def storage(url: str, heartbeat: int, on_stale=None):
    """An Optuna RDB storage with heartbeats: a dead worker's trial is failed after two
    missed beats, queued again with the same parameters, and ``on_stale(trial)`` called."""
    # heartbeats and their retry are "experimental" in Optuna: one warning per worker, no news
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    # optuna >= 4.9 names it RetryHeartbeatStaleTrialCallback (the old name warns)
    retry_cb = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback",
                       getattr(optuna.storages, "RetryFailedTrialCallback", None))(max_retry=3)

    def retry(study, trial):
        retry_cb(study, trial)
        if on_stale is not None:
            on_stale(trial)

    # optuna 5 renamed failed_trial_callback
    key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
           inspect.signature(optuna.storages.RDBStorage).parameters else "failed_trial_callback")
    # sqlite: wait for another worker's lock; PostgreSQL: a dead host fails in 10 s, not
    # TCP's minutes, and a connection the server dropped (restart) is replaced, not used
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else \
        {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        with opened(url, "sweep.storage"):
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                              heartbeat_interval=heartbeat,
                                              grace_period=2 * heartbeat, **{key: retry})
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"sweep.storage: cannot open {redact(url)}: {first}") from None


def redact(url: str) -> str:
    """The URL without its password (for logs and MLflow tags); UserError if not a URL."""
    try:
        sqlalchemy.engine.make_url(url)
        return hide_passwords(url)
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
