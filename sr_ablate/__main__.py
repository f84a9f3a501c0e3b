"""``python -m sr_ablate [overrides]`` trains one configuration; ``-m`` sweeps over several;
``sweep=<name>`` runs the study in ``sweeps/<name>.yaml``.

Before Hydra starts, the overrides are composed and checked, so bad input costs one line
and no MLflow run. A sweep gets one MLflow parent run that all its jobs sit under; a job
that fails on bad input (e.g. missing VGG weights) is reported and the others still run.
"""
from __future__ import annotations

import os
import sys
import uuid

CWD = os.getcwd()  # before Hydra can change directories: the MLflow store lives here
FAILED: list[str] = []  # one-line errors of failed jobs (in-process launcher)


def main() -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from sr_ablate import UserError, preflight, sweep

    argv = sys.argv[1:]
    tmp = None
    try:
        argv, spec, tmp = sweep.expand(argv)
        if spec:
            extra = [a for a in sys.argv[1:]
                     if not a.startswith("sweep=") and a not in ("-m", "--multirun")]
            cfg = None
            for check_argv in sweep.checks(spec, extra):  # every variant composes and checks
                checked = preflight.validate(check_argv)
                cfg = cfg or checked
            sys.argv = [sys.argv[0], *argv]
        else:
            cfg = preflight.validate(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    multirun = any(a in ("-m", "--multirun") for a in argv)

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def task(cfg):
        from sr_ablate.run import run
        try:
            hc = HydraConfig.get()
            choices = {k: v for k, v in hc.runtime.choices.items()
                       if not k.startswith("hydra") and k not in ("schema", "study_variant")
                       and v is not None}
            return run(cfg, cwd=CWD, overrides=list(hc.overrides.task), choices=choices)
        except UserError as e:
            if str(e) not in FAILED:
                print(f"error: {e}", file=sys.stderr)
            FAILED.append(str(e))
            if not multirun:
                sys.exit(2)

    parent = None
    if multirun and cfg is not None:
        from sr_ablate import tracking
        uri = tracking.store_uri(cfg.tracking.uri, CWD)
        definition = open(spec["path"]).read() if spec else " ".join(argv)
        # Create the store and the experiment here, once, before any parallel job starts.
        parent = tracking.start_parent(uri, cfg.tracking.experiment, uuid.uuid4().hex[:12],
                                       definition)
    ok = False
    try:
        task()
        ok = not FAILED
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        if parent:
            tracking.end_parent(uri, parent, ok)
        if tmp is not None:
            tmp.cleanup()
    if FAILED:
        print(f"sr_ablate: {len(FAILED)} job(s) failed (see the error line above); "
              "the other jobs ran", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
