"""``python -m sr_ablate [overrides]`` trains one configuration; ``-m`` sweeps over several;
``sweep=<name>`` runs the study in ``sweeps/<name>.yaml`` (a grid, or an Optuna search).

Before Hydra starts, the overrides are composed and checked, so bad input costs one line
and no MLflow run. A sweep gets one MLflow parent run that all its jobs sit under; a job
that fails is reported in one line and the others still run; a job whose configuration
already has a FINISHED run (same config hash) is skipped unless ``sweep.force=true``; one
that was interrupted (its checkpoint is there) resumes its own MLflow run. Each run ends
with one line on stdout, its PSNR against bicubic (``summary.run_line``); a grid sweep ends
with a table of its jobs (``summary.sweep_table``), and its parent run lists the earlier runs
it reused. ``trainer=quick`` says at the start that it checks the pipeline, not a design.
Jobs run one after another, or in parallel with ``hydra/launcher=joblib`` (threads and
GPUs shared out by ``launch.plan`` / ``launch.claim_device``).
"""
from __future__ import annotations

import os
import shutil
import sys
import traceback
import uuid
from pathlib import Path

CWD = os.getcwd()  # before Hydra can change directories: the MLflow store lives here


def _job(cfg, multirun: bool) -> None:
    """One Hydra job: skip it if already done, else run it on its share of the machine."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    from sr_ablate import UserError, launch, tracking
    from sr_ablate.config import config_hash
    from sr_ablate.preflight import group_choices
    from sr_ablate.run import resume_interrupted, run
    from sr_ablate.train import NonFiniteLoss

    started = launch.job_clock()
    hc = HydraConfig.get()
    job = " ".join(hc.overrides.task) or "(defaults)"
    choices = group_choices(hc.runtime.choices)
    opened: list[str] = []  # the job's MLflow run id, once run() has opened it

    def record(outcome: str, message: str = "", run_id: str = "", metrics=None) -> None:
        launch.record(outcome, job, message, num=hc.job.num if multirun else 0,
                      overrides=list(hc.overrides.task),
                      run_id=run_id or (opened[0] if opened else ""), metrics=metrics)

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
        launch.use_threads()
        pool, n_gpus = os.environ.get(launch.DEVICE_POOL_ENV), torch.cuda.device_count()
        if pool and n_gpus > 1 and cfg.trainer.device in ("auto", "cuda"):
            with launch.claim_device(pool, n_gpus, start=hc.job.num) as i:
                cfg.trainer.device = f"cuda:{i}"
                metrics = run(cfg, cwd=CWD, overrides=list(hc.overrides.task),
                              choices=choices, started_at=started, on_start=opened.append)
        else:
            metrics = run(cfg, cwd=CWD, overrides=list(hc.overrides.task), choices=choices,
                          started_at=started, on_start=opened.append)
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
    import torch

    from sr_ablate import launch

    if "hydra/launcher=joblib" not in argv:
        return argv
    given = [a for a in argv if a.startswith("hydra.launcher.n_jobs=")]
    requested = int(given[-1].split("=", 1)[1]) if given else None
    n_gpus = torch.cuda.device_count()
    parallel, threads = launch.plan(launch.sweep_size(argv), requested, launch.cores(), n_gpus)
    os.environ[launch.THREADS_ENV] = str(threads)
    if n_gpus > 1:
        os.environ[launch.DEVICE_POOL_ENV] = str(Path(os.environ[launch.OUTCOMES_ENV]) / "gpus")
    print(f"sr_ablate: {parallel} job(s) at a time, {threads} thread(s) each", file=sys.stderr)
    return argv if given else [*argv, f"hydra.launcher.n_jobs={parallel}"]


def main() -> int:
    import hydra

    from sr_ablate import UserError, launch, preflight, summary, sweep

    argv = sys.argv[1:]
    tmp = None
    try:
        argv, spec, tmp = sweep.expand(argv)
        if spec and spec.get("optuna"):
            from sr_ablate import search
            return search.main(spec, argv, CWD)
        if spec:
            extra = [a for a in sys.argv[1:]
                     if not a.startswith("sweep=") and a not in ("-m", "--multirun")]
            cfg = None
            for check_argv in sweep.checks(spec, extra):  # every variant composes and checks
                checked = preflight.validate(check_argv)
                cfg = cfg or checked
        else:
            cfg = preflight.validate(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    notice = summary.budget_notice(cfg.trainer) if cfg is not None else None
    if notice:
        print(notice, file=sys.stderr)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    parent = outcomes = None
    if multirun and cfg is not None:
        from sr_ablate import tracking
        uri = tracking.store_uri(cfg.tracking.uri, CWD)
        try:
            tracking.reachable(uri)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        sweep_id = uuid.uuid4().hex[:12]
        # Create the store and the experiment here, once, before any parallel job starts.
        parent = tracking.start_parent(uri, cfg.tracking.experiment, sweep_id,
                                       sweep.definition(argv, spec))
        outcomes = Path(CWD) / ".sr_ablate" / os.environ[tracking.SWEEP_ENV]
        outcomes.mkdir(parents=True)
        os.environ[launch.OUTCOMES_ENV] = str(outcomes)
        argv = _parallel(argv)
    sys.argv = [sys.argv[0], *argv]

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def task(cfg):
        _job(cfg, multirun)

    code, status = 0, None
    try:
        task()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code, status = 130, "KILLED"
        print("sr_ablate: interrupted", file=sys.stderr)
    finally:
        results = launch.outcomes(outcomes) if outcomes else []
        failed = [r for r in results if r["outcome"] == "failed"]
        if parent:
            tracking.record_reused(uri, parent, [r["run_id"] for r in results
                                                 if r["outcome"] == "skipped" and r["run_id"]])
            tracking.record_failed(uri, parent, [(r["job"], r["message"]) for r in failed])
            tracking.end_parent(uri, parent, ok=code == 0 and not failed, status=status)
            for message in dict.fromkeys(r["message"] for r in failed):
                print(f"error: {message}", file=sys.stderr)
            print(launch.summary(results), file=sys.stderr)
            if results:  # the sweep's results, on stdout like each run's line
                print(summary.sweep_table(results, sweep_id), flush=True)
            shutil.rmtree(outcomes, ignore_errors=True)
            if not any(outcomes.parent.iterdir()):
                outcomes.parent.rmdir()
        if tmp is not None:
            tmp.cleanup()
    return code or (2 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
