"""Resumable checkpoints: everything a run needs to go on exactly where it stopped.

One file per configuration (by config hash) under ``<cwd>/.sr_ablate/checkpoints/``, written
to a temporary file and renamed (a crash never leaves a half-written one), read back with
``torch.load(weights_only=True)`` (no code runs from a checkpoint file).
"""
from __future__ import annotations

import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from sr_ablate import UserError
from sr_ablate.inference.trained import load_weights


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file.
    A failed write (disk full) removes the temporary file, keeps the previous checkpoint and
    raises UserError (one line)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        for attempt in range(2):  # a finishing job of the same sweep may remove an empty folder
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.save(obj, tmp)
                break
            except FileNotFoundError:
                if attempt:
                    raise
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        kept = "the previous checkpoint is kept; " if path.exists() else ""
        raise UserError(f"cannot write checkpoint {path} ({reason}); {kept}free disk space "
                        "there (or run from a folder with room) and resume with resume=true"
                        ) from None


def remove(path: Path) -> None:
    """Delete a finished run's checkpoint, and its folders once empty."""
    path.unlink(missing_ok=True)
    for folder in (path.parent, path.parent.parent):
        try:
            folder.rmdir()
        except OSError:  # not empty (other checkpoints, a sweep's outcome files) or gone
            break


def path_for(cwd: str | Path | None, config_hash: str) -> Path:
    return Path(cwd or os.getcwd()) / ".sr_ablate" / "checkpoints" / f"{config_hash}.pt"


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: Path) -> dict:
    """A checkpoint written by ``save_atomic``; UserError (one line) if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}); delete it to "
                        "start this configuration afresh, or run without resume=true") from None


def restore(state: dict, path: Path, model, optimizer, scheduler, batches) -> None:
    """Put a resumable checkpoint's model, optimiser, scheduler and sampler states back;
    UserError (one line) when the file is no resumable checkpoint of this configuration."""
    missing = [k for k in ("model", "optimizer", "scheduler", "batches", "rng", "step", "loop",
                           "run_id") if k not in (state if isinstance(state, dict) else {})]
    if missing:
        raise UserError(f"{path} is not a resumable checkpoint (no {', '.join(missing)}); "
                        "delete it to start this configuration afresh, or run without "
                        "resume=true")
    load_weights(model, state["model"], path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["batches"])
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
        raise UserError(f"{path} was written with other optimiser, scheduler or data "
                        f"settings ({type(e).__name__}); delete it, or run without "
                        "resume=true") from None


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Yields ``stop_requested()``: true once SIGINT or SIGTERM arrived. Training then ends at
    the end of its step, with a checkpoint; a second signal stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # signal handlers can only be set from the main thread
        return
    got: list[int] = []

    def handler(signum, frame):
        if got:
            raise KeyboardInterrupt
        got.append(signum)
        print(f"sr_ablate: {signal.Signals(signum).name}: stopping after this step with a "
              "checkpoint (again to stop at once)", file=sys.stderr)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(got)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
