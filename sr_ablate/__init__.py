"""sr_ablate: an experiment-tracking ablation harness for single-image super-resolution."""

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input from the user: the message is one line naming the problem and the fix."""
