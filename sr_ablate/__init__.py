"""sr_ablate: an experiment-tracking ablation harness for single-image super-resolution."""

__version__ = "0.1.0"

import time as _time

IMPORTED_AT = _time.time()  # fallback for the process start where /proc is missing


class UserError(Exception):
    """Bad input from the user: the message is one line naming the problem and the fix."""


class Stopped(Exception):
    """Training stopped on purpose before its budget (e.g. a trial pruned by Optuna): the
    MLflow run ends KILLED with the reason in its ``sr_ablate.stopped`` tag."""
