"""``python -m sr_ablate [overrides]`` trains one configuration; ``-m`` sweeps over several.

Before Hydra starts, the overrides are composed and checked, so bad input costs one line
and no MLflow run. A ``-m`` sweep gets one MLflow parent run that all its jobs sit under.
"""
from __future__ import annotations

import os
import sys
import uuid

CWD = os.getcwd()  # before Hydra can change directories: the MLflow store lives here


def main() -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from sr_ablate import UserError, preflight

    argv = sys.argv[1:]
    try:
        cfg = preflight.validate(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def task(cfg):
        from sr_ablate.run import run
        try:
            hc = HydraConfig.get()
            choices = {k: v for k, v in hc.runtime.choices.items()
                       if not k.startswith("hydra") and k != "schema" and v is not None}
            return run(cfg, cwd=CWD, overrides=list(hc.overrides.task), choices=choices)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    multirun = any(a in ("-m", "--multirun") for a in argv)
    parent = None
    if multirun and cfg is not None:
        from sr_ablate import tracking
        uri = tracking.store_uri(cfg.tracking.uri, CWD)
        # Create the store and the experiment here, once, before any parallel job starts.
        parent = tracking.start_parent(uri, cfg.tracking.experiment, uuid.uuid4().hex[:12],
                                       " ".join(argv))
    ok = False
    try:
        task()
        ok = True
    except SystemExit as e:
        ok = not e.code
        return e.code if isinstance(e.code, int) else 1
    finally:
        if parent:
            tracking.end_parent(uri, parent, ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
