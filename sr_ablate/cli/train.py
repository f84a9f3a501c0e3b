"""``sr-ablate [overrides]`` trains one configuration; ``-m`` sweeps over several;
``sweep=<name | path.yaml>`` runs a study's sweep file (a grid, or an Optuna search).

Before Hydra starts, the overrides are composed and checked, so bad input costs one line
and no MLflow run. A sweep gets one MLflow parent run that all its jobs sit under; a job
that fails is reported in one line and the others still run; a job whose configuration
already has a FINISHED run (same config hash) is skipped unless ``sweep.force=true``; one
that was interrupted (its checkpoint is there) resumes its own MLflow run. Each run ends
with one line on stdout, its PSNR against bicubic (``summary.run_line``); a grid sweep ends
with a table of its jobs (``summary.sweep_table``), and its parent run lists the earlier runs
it reused (and holds a pointer child run for each). A run or sweep stopped by Ctrl-C ends
with the command that continues it (``interrupts``); output keeps going nowhere, not into an
error, once the reader of a pipe (``| tee``) is gone (``streams``). ``trainer=quick`` says at
the start that it checks the pipeline, not a design.
Jobs run one after another, or in parallel with ``hydra/launcher=joblib`` (threads and
GPUs shared out by ``resources.plan`` / ``resources.claim_device``).
``--config-dir DIR`` (``-cd DIR``, or ``$SR_ABLATE_CONFIG_DIR``) adds the user's config folder
to both compositions: the checks (``validation.compose``) and Hydra's run (its own flag).
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig

from sr_ablate import UserError
from sr_ablate.cli import interrupts, streams, sweep_parent
from sr_ablate.config import CONF_DIR, CONFIG_DIR_ENV, split_config_dir, validation
from sr_ablate.config.hashing import config_hash
from sr_ablate.sweeps import grid, resources
from sr_ablate.training import clock, speed, summary
from sr_ablate.training.loop import Interrupted, NonFiniteLoss

CWD = os.getcwd()  # before Hydra can change directories: the MLflow store lives here
# ``sr_ablate.tracking`` (MLflow), ``training.job`` and ``optuna_study`` are imported where they
# are used: importing MLflow and Optuna costs seconds that ``--help`` and bad input need not pay.


def _job(cfg, multirun: bool) -> None:
    """One Hydra job: skip it if already done, else run it on its share of the machine."""
    with streams.guarded():  # a joblib worker's own stdout/stderr may lose their reader too
        _job_guarded(cfg, multirun)


def _job_guarded(cfg, multirun: bool) -> None:
    from sr_ablate import tracking
    from sr_ablate.training.init import settle
    from sr_ablate.training.job import resume_interrupted, run_job

    started = clock.job_clock()
    hc = HydraConfig.get()
    job = " ".join(hc.overrides.task) or "(defaults)"
    opened: list[str] = []  # the job's MLflow run id, once run_job() has opened it

    def record(outcome: str, message: str = "", run_id: str = "", metrics=None,
               kept: bool = False) -> None:
        resources.record(outcome, job, message, num=hc.job.num if multirun else 0,
                         overrides=list(hc.overrides.task),
                         run_id=run_id or (opened[0] if opened else ""), metrics=metrics,
                         checkpoint=kept)

    def run() -> dict:
        return run_job(cfg, cwd=CWD, overrides=list(hc.overrides.task),
                       choices=validation.group_choices(hc.runtime.choices),
                       started_at=started, on_start=opened.append)

    try:
        settle(cfg, CWD)  # model.init's weights: their SHA-256 is part of the config hash
        if multirun and not cfg.sweep.force:
            uri = tracking.store_uri(cfg.tracking.uri, CWD)
            done = tracking.finished_run(uri, cfg.tracking.experiment, config_hash(cfg))
            if done:
                print(f"skip {job}: FINISHED run {done} has the same config hash "
                      "(sweep.force=true runs it again)", file=sys.stderr)
                tracking.link_reused(uri, done)  # shown under this sweep's parent in the UI
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
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: its run ended KILLED, checkpoint saved
        kept = interrupts.saved(cfg, CWD)
        record("interrupted", interrupts.job_message(e, kept), kept=kept)
        if kept and opened:
            interrupts.tag_run(tracking.store_uri(cfg.tracking.uri, CWD), opened[0])
        raise
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
        return argv, spec, tmp, validation.validate(argv, files=True, then=_init_fits)
    extra = [a for a in sys.argv[1:]
             if not a.startswith("sweep=") and a not in ("-m", "--multirun")]
    cfg = None
    for check_argv in grid.checks(spec, extra):
        checked = validation.validate(check_argv, files=True, then=_init_fits)
        cfg = cfg or checked
    return argv, spec, tmp, cfg


def _init_fits(cfg) -> None:
    """``model.init``'s weights read and fitted to the model before Hydra starts or a sweep's
    parent run opens (a bad one is one line); sets ``model.init_sha256``."""
    if cfg.model.get("init") is not None or "init_sha256" in cfg.model:
        from sr_ablate.training.init import check_fits  # MLflow: only when it is needed
        check_fits(cfg, CWD)


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
    typed = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, config_dir = config_dir_option(typed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *argv]  # _checked reads the user's overrides from sys.argv
    multirun = any(a in ("-m", "--multirun") for a in argv) or any(
        a.startswith("sweep=") for a in argv)
    saved = {k: os.environ.get(k) for k in (CONFIG_DIR_ENV, interrupts.RESUME_ENV)}
    if config_dir is not None:
        os.environ[CONFIG_DIR_ENV] = config_dir
    os.environ[interrupts.RESUME_ENV] = interrupts.resume_command(typed, multirun)
    try:
        with streams.guarded():  # `... | tee log` then Ctrl-C: the interrupt path still runs
            return _main(argv, config_dir)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
        sweep = (sweep_parent.open_sweep(cfg, argv, spec, CWD) if multirun and cfg is not None
                 else None)
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

    code, status, stop = 0, None, None
    try:
        if sweep is not None and "hydra/launcher=joblib" in argv:
            t = cfg.trainer  # auto speed settings measured once, not by parallel jobs at once
            speed.prepare(t.precision, t.channels_last, t.device,
                          int(os.environ.get(resources.THREADS_ENV, 0)) or None)
        task()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt as e:
        code, status, stop = 130, "KILLED", e
    finally:
        results = resources.outcomes(sweep.outcomes) if sweep else []
        if sweep is not None:
            sweep_parent.close_sweep(sweep, results, code, status)
        if tmp is not None:
            tmp.cleanup()
    if stop is not None:  # the last line: how to go on from here
        if sweep is not None:
            line = interrupts.sweep_line()
        elif cfg is not None:
            line = interrupts.run_line(stop, isinstance(stop, Interrupted)
                                       or interrupts.saved(cfg, CWD))
        else:  # Hydra's own flags (--cfg, --info): nothing was training
            line = "sr_ablate: interrupted"
        print(line, file=sys.stderr, flush=True)
    return code or (2 if any(r["outcome"] == "failed" for r in results) else 0)
