"""``sr-ablate [overrides]`` trains one configuration; ``-m`` sweeps over several;
``sweep=<name | path.yaml>`` runs a study's sweep file (a grid, or an Optuna search).

Before Hydra starts, the overrides are composed and checked, so bad input costs one line
and no MLflow run. A sweep gets one MLflow parent run that all its jobs sit under; a job
that fails is reported in one line and the others still run; a job whose configuration
already has a FINISHED run (same config hash) is skipped unless ``sweep.force=true``; one
that was interrupted (its checkpoint is there) resumes its own MLflow run. Each run ends
with one line on stdout, its PSNR against bicubic (``summary.run_line``); a grid sweep ends
with a table of its jobs (``summary.sweep_table``), and its parent run lists the earlier runs
it reused. ``trainer=quick`` says at the start that it checks the pipeline, not a design.
Jobs run one after another, or in parallel with ``hydra/launcher=joblib`` (threads and
GPUs shared out by ``resources.plan`` / ``resources.claim_device``).
``--config-dir DIR`` (``-cd DIR``, or ``$SR_ABLATE_CONFIG_DIR``) adds the user's config folder
to both compositions: the checks (``validation.compose``) and Hydra's run (its own flag).
"""
from __future__ import annotations

import os
import shutil
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig

from sr_ablate import UserError
from sr_ablate.config import CONF_DIR, CONFIG_DIR_ENV, split_config_dir, validation
from sr_ablate.config.hashing import config_hash
from sr_ablate.sweeps import grid, resources
from sr_ablate.training import clock, speed, summary
from sr_ablate.training.loop import NonFiniteLoss

CWD = os.getcwd()  # before Hydra can change directories: the MLflow store lives here
# ``sr_ablate.tracking`` (MLflow), ``training.job`` and ``optuna_study`` are imported where they
# are used: importing MLflow and Optuna costs seconds that ``--help`` and bad input need not pay.


def _job(cfg, multirun: bool) -> None:
    """One Hydra job: skip it if already done, else run it on its share of the machine."""
    from sr_ablate import tracking
    from sr_ablate.training.job import resume_interrupted, run_job

    started = clock.job_clock()
    hc = HydraConfig.get()
    job = " ".join(hc.overrides.task) or "(defaults)"
    opened: list[str] = []  # the job's MLflow run id, once run_job() has opened it

    def record(outcome: str, message: str = "", run_id: str = "", metrics=None) -> None:
        resources.record(outcome, job, message, num=hc.job.num if multirun else 0,
                         overrides=list(hc.overrides.task),
                         run_id=run_id or (opened[0] if opened else ""), metrics=metrics)

    def run() -> dict:
        return run_job(cfg, cwd=CWD, overrides=list(hc.overrides.task),
                       choices=validation.group_choices(hc.runtime.choices),
                       started_at=started, on_start=opened.append)

    try:
        if multirun and not cfg.sweep.force:
            uri = tracking.store_uri(cfg.tracking.uri, CWD)
            done = tracking.finished_run(uri, cfg.tracking.experiment, config_hash(cfg))
            if done:
                print(f"skip {job}: FINISHED run {done} has the same config hash "
                      "(sweep.force=true runs it again)", file=sys.stderr)
                record("skipped", done, done, tracking.run_metrics(uri, done))
                return
        if multirun:
            resume_interrupted(cfg, CWD)
        resources.use_threads()
        pool, n_gpus = os.environ.get(resources.DEVICE_POOL_ENV), torch.cuda.device_count()
        if pool and n_gpus > 1 and cfg.trainer.device in ("auto", "cuda"):
            with resources.claim_device(pool, n_gpus, start=hc.job.num) as i:
                cfg.trainer.device = f"cuda:{i}"
                metrics = run()
        else:
            metrics = run()
        record("ran", metrics=metrics)
    except (UserError, NonFiniteLoss) as e:
        message = str(e) if isinstance(e, UserError) else (
            f"{e}; the run ended FAILED - lower optim.lr or set trainer.grad_clip")
        # in a sweep the launching process prints each distinct error once, at the end
        print(f"job failed: {job}" if multirun else f"error: {message}", file=sys.stderr)
        record("failed", message)
        if not multirun:
            sys.exit(2 if isinstance(e, UserError) else 1)
    except Exception as e:
        if not multirun:
            raise
        traceback.print_exc()
        print(f"job failed: {job}", file=sys.stderr)
        record("failed", f"{type(e).__name__}: {e}")


def _parallel(argv: list[str]) -> list[str]:
    """For ``hydra/launcher=joblib``: pick n_jobs (unless given) and threads per job, and
    hand GPUs out one per job when there are several."""
    if "hydra/launcher=joblib" not in argv:
        return argv
    given = [a for a in argv if a.startswith("hydra.launcher.n_jobs=")]
    requested = int(given[-1].split("=", 1)[1]) if given else None
    n_gpus = torch.cuda.device_count()
    parallel, threads = resources.plan(resources.sweep_size(argv), requested, resources.cores(),
                                       n_gpus)
    os.environ[resources.THREADS_ENV] = str(threads)
    if n_gpus > 1:
        os.environ[resources.DEVICE_POOL_ENV] = str(
            Path(os.environ[resources.OUTCOMES_ENV]) / "gpus")
    print(f"sr_ablate: {parallel} job(s) at a time, {threads} thread(s) each", file=sys.stderr)
    return argv if given else [*argv, f"hydra.launcher.n_jobs={parallel}"]


def _checked(argv: list[str]):
    """(argv for Hydra, sweep file spec or None, its temporary folder, the first composed
    config or None for Hydra's own flags); every variant of a sweep file composes and checks."""
    argv, spec, tmp = grid.expand(argv)
    if spec and spec.get("optuna"):
        return argv, spec, tmp, None
    if not spec:
        return argv, spec, tmp, validation.validate(argv)
    extra = [a for a in sys.argv[1:]
             if not a.startswith("sweep=") and a not in ("-m", "--multirun")]
    cfg = None
    for check_argv in grid.checks(spec, extra):
        checked = validation.validate(check_argv)
        cfg = cfg or checked
    return argv, spec, tmp, cfg


@dataclass
class Sweep:
    """A running ``-m`` sweep: its MLflow parent run and the folder its jobs report to."""
    uri: str
    sweep_id: str
    parent: str
    outcomes: Path


def _open_sweep(cfg, argv: list[str], spec) -> Sweep:
    from sr_ablate import tracking

    uri = tracking.store_uri(cfg.tracking.uri, CWD)
    tracking.reachable(uri)
    sweep_id = uuid.uuid4().hex[:12]
    # Create the store and the experiment here, once, before any parallel job starts.
    parent = tracking.start_parent(uri, cfg.tracking.experiment, sweep_id,
                                   grid.definition(argv, spec))
    outcomes = Path(CWD) / ".sr_ablate" / os.environ[tracking.SWEEP_ENV]
    outcomes.mkdir(parents=True)
    os.environ[resources.OUTCOMES_ENV] = str(outcomes)
    return Sweep(uri, sweep_id, parent, outcomes)


def _close_sweep(sw: Sweep, results: list[dict], code: int, status: str | None) -> None:
    """Record reused runs and failed jobs on the parent, end it, print the sweep's table."""
    from sr_ablate import tracking

    failed = [r for r in results if r["outcome"] == "failed"]
    tracking.record_reused(sw.uri, sw.parent, [r["run_id"] for r in results
                                               if r["outcome"] == "skipped" and r["run_id"]])
    tracking.record_failed(sw.uri, sw.parent, [(r["job"], r["message"]) for r in failed])
    tracking.end_parent(sw.uri, sw.parent, ok=code == 0 and not failed, status=status)
    for message in dict.fromkeys(r["message"] for r in failed):
        print(f"error: {message}", file=sys.stderr)
    print(resources.summary(results), file=sys.stderr)
    if results:  # the sweep's results, on stdout like each run's line
        print(summary.sweep_table(results, sw.sweep_id), flush=True)
    shutil.rmtree(sw.outcomes, ignore_errors=True)
    if not any(sw.outcomes.parent.iterdir()):
        sw.outcomes.parent.rmdir()


def config_dir_option(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--config-dir DIR`` / ``--config-dir=DIR`` / ``-cd DIR``, and the
    folder as an absolute path (the last one given, as Hydra takes it; else
    ``$SR_ABLATE_CONFIG_DIR``, else None). UserError when it is not a folder."""
    rest, given = split_config_dir(argv)
    where = "--config-dir" if given is not None else f"${CONFIG_DIR_ENV}"
    given = given if given is not None else os.environ.get(CONFIG_DIR_ENV) or None
    if given is None:
        return rest, None
    folder = Path(given).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{where} {given}: no such folder; give a folder that holds config "
                        "groups, e.g. DIR/model/mynet.yaml for model=mynet")
    return rest, str(folder)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, config_dir = config_dir_option(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *argv]  # _checked reads the user's overrides from sys.argv
    before = os.environ.get(CONFIG_DIR_ENV)
    if config_dir is not None:
        os.environ[CONFIG_DIR_ENV] = config_dir
    try:
        return _main(argv, config_dir)
    finally:
        if before is None:
            os.environ.pop(CONFIG_DIR_ENV, None)
        else:
            os.environ[CONFIG_DIR_ENV] = before


def _main(argv: list[str], config_dir: str | None) -> int:
    tmp = None
    try:
        argv, spec, tmp, cfg = _checked(argv)
        if spec and spec.get("optuna"):
            from sr_ablate.sweeps import optuna_study
            return optuna_study.main(spec, argv, CWD)
        notice = summary.budget_notice(cfg.trainer) if cfg is not None else None
        if notice:
            print(notice, file=sys.stderr)
        multirun = any(a in ("-m", "--multirun") for a in argv)
        sweep = _open_sweep(cfg, argv, spec) if multirun and cfg is not None else None
    except UserError as e:
        if tmp is not None:
            tmp.cleanup()
        print(f"error: {e}", file=sys.stderr)
        return 2
    if sweep is not None:
        argv = _parallel(argv)
    # Hydra's own --config-dir puts the folder after conf/ in its search path, as compose() does
    sys.argv = [sys.argv[0], *argv, *([f"--config-dir={config_dir}"] if config_dir else [])]

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    def task(cfg):
        _job(cfg, multirun)

    code, status = 0, None
    try:
        if sweep is not None and "hydra/launcher=joblib" in argv:
            t = cfg.trainer  # auto speed settings measured once, not by parallel jobs at once
            speed.prepare(t.precision, t.channels_last, t.device,
                          int(os.environ.get(resources.THREADS_ENV, 0)) or None)
        task()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code, status = 130, "KILLED"
        print("sr_ablate: interrupted", file=sys.stderr)
    finally:
        results = resources.outcomes(sweep.outcomes) if sweep else []
        if sweep is not None:
            _close_sweep(sweep, results, code, status)
        if tmp is not None:
            tmp.cleanup()
    return code or (2 if any(r["outcome"] == "failed" for r in results) else 0)
