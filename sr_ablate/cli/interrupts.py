"""What a run or sweep stopped by Ctrl-C or SIGTERM says and leaves behind: the exact command
that continues it, on the terminal's last line and as the KILLED run's
``sr_ablate.resume_command`` tag (what ``mlflow ui`` shows).

A single run continues with its own command plus ``resume=true``; a sweep with its own
command as typed: launched again it skips its FINISHED jobs and resumes the interrupted
ones from their checkpoints (``cli.train._job``).
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from sr_ablate.config.drivers import hide_passwords
from sr_ablate.config.hashing import config_hash
from sr_ablate.training import checkpoint

RESUME_ENV = "SR_ABLATE_RESUME_COMMAND"  # the command, for a sweep's jobs (maybe other processes)


def _key(word: str) -> str:
    return word.lstrip("+~").split("=", 1)[0]


def program() -> str:
    """How the user started sr_ablate: ``sr-ablate`` (the script) or ``python -m sr_ablate``."""
    return "sr-ablate" if Path(sys.argv[0]).name == "sr-ablate" else "python -m sr_ablate"


def resume_command(typed: list[str], sweep: bool) -> str:
    """The shell-quoted command line that continues ``typed`` (the arguments as the user gave
    them, ``--config-dir`` included). A run: with ``resume=true`` in place of any ``resume``
    setting. A sweep: the same, less ``sweep.force=true``, which would run its FINISHED jobs
    again instead of going on after them."""
    if sweep:
        words = [w for w in typed if _key(w) != "sweep.force"]
    else:
        words = [w for w in typed if _key(w) != "resume"] + ["resume=true"]
    return " ".join([program(), *map(shlex.quote, words)])


def saved(cfg, cwd: str) -> bool:
    """Whether the configuration ``cfg`` has a resumable checkpoint in ``cwd``."""
    return checkpoint.path_for(cwd, config_hash(cfg)).exists()


def tag_run(uri: str, run_id: str) -> None:
    """Leave the command that continues it on KILLED run ``run_id`` (tag
    ``sr_ablate.resume_command``; removed when the run resumes)."""
    from sr_ablate import tracking  # MLflow: only once something was tracked

    command = os.environ.get(RESUME_ENV)
    if not command:
        return
    try:
        tracking.annotate(uri, run_id, tags={tracking.RESUME_TAG: hide_passwords(command)})
    except Exception:  # e.g. the server is down: the terminal's last line says it all the same
        pass


def job_message(stop: BaseException, has_checkpoint: bool) -> str:
    """How an interrupted job ended, for the sweep's table and summary."""
    if str(stop):  # training's own words: "interrupted at step N (checkpoint saved)"
        return str(stop)
    return ("interrupted (its last checkpoint is kept)" if has_checkpoint
            else "interrupted before its first checkpoint")


def run_line(stop: BaseException, has_checkpoint: bool) -> str:
    """The last line of an interrupted single run: what was kept and how to go on."""
    command = os.environ.get(RESUME_ENV, "")
    if not has_checkpoint:
        return ("sr_ablate: interrupted before the first checkpoint: nothing to resume; "
                "the same command starts it again")
    return f"sr_ablate: {job_message(stop, True)}; to continue: {command}"


def sweep_line() -> str:
    """The last line of an interrupted sweep: the command that continues it."""
    return ("sr_ablate: sweep interrupted; to continue it (FINISHED jobs are skipped, "
            f"interrupted ones resume from their checkpoints): {os.environ.get(RESUME_ENV, '')}")
