"""The training loop. It knows nothing of Hydra or MLflow: evaluation and logging are callables."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable, Iterator

import torch
from tqdm import tqdm

LogFn = Callable[[int, dict[str, float]], None]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Training stopped at a step boundary on SIGINT/SIGTERM, after its checkpoint."""


def clip_gradients(params, optimizer: torch.optim.Optimizer, value: float | None,
                   mode: str = "norm") -> None:
    """Clip gradients: ``norm`` (total L2 norm <= value), ``value`` (each in [-value, value])
    or ``adjustable`` (VDSR: each in [-value/lr, value/lr] with the current learning rate)."""
    if not value:
        return
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, value)
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    elif mode == "adjustable":
        torch.nn.utils.clip_grad_value_(params, value / optimizer.param_groups[0]["lr"])
    else:
        raise ValueError(f"clip mode must be norm, value or adjustable, got {mode!r}")


def fit(model: torch.nn.Module, batches: Iterator[dict], optimizer: torch.optim.Optimizer, *,
        steps: int, loss_fn: Callable, eval_fn: EvalFn | None = None, log_fn: LogFn | None = None,
        eval_every: int = 0, log_every: int = 10, grad_clip: float | None = None,
        clip_mode: str = "norm", scheduler=None, device: str | torch.device = "cpu",
        progress: bool = True, on_eval: LogFn | None = None,
        started_at: float | None = None, autocast: torch.dtype | None = None,
        start_step: int = 0, loop_state: dict | None = None,
        checkpoint_fn: Callable[[int, dict], None] | None = None, checkpoint_every: int = 0,
        stop_requested: Callable[[], bool] | None = None) -> dict[str, float]:
    """Train ``model`` for ``steps`` optimiser steps on ``batches`` ({"lq", "gt"} in [0, 1]).

    ``scheduler`` (a torch LR scheduler, or None) is stepped after every optimiser step;
    gradients are clipped by ``clip_gradients(grad_clip, clip_mode)``.

    ``log_fn(step, metrics)`` receives ``train/loss`` (mean over the last ``log_every`` steps)
    and, every ``eval_every`` steps and at the end, the output of ``eval_fn(model)``;
    ``on_eval(step, metrics)`` then sees the same metrics and may stop training by raising
    (e.g. ``sr_ablate.Stopped`` when a trial is pruned).
    The loss is read back from the device only when logging (no per-step host sync).
    ``autocast``: run forward and loss under ``torch.autocast`` with this dtype (bf16/fp16);
    fp16 also scales the loss (``GradScaler``) so small gradients do not flush to zero.
    ``started_at`` (a ``time.time()``): the first log also holds ``time/to_first_step_s``,
    the seconds from then to the end of the first step (the job's fixed cost).
    Checkpoints: ``checkpoint_fn(step, loop_state)`` every ``checkpoint_every`` steps, at
    the end, and when ``stop_requested()`` turns true (then ``Interrupted`` is raised);
    ``loop_state`` is the running loss not yet logged and the fp16 ``GradScaler``'s state
    (its loss scale). ``start_step`` and ``loop_state``
    continue a run from such a checkpoint.
    Returns the last logged value of every metric.
    """
    log_fn = log_fn or (lambda step, m: None)
    model.to(device).train()
    kind = torch.device(device).type
    amp = torch.autocast(kind, dtype=autocast) if autocast is not None else nullcontext()
    scaler = torch.amp.GradScaler(kind) if autocast == torch.float16 else None
    if scaler is not None and (loop_state or {}).get("scaler"):
        scaler.load_state_dict(loop_state["scaler"])  # its loss scale, as learnt so far
    last: dict[str, float] = {}
    running = torch.tensor(float((loop_state or {}).get("running", 0.0)), device=device)
    since = int((loop_state or {}).get("since", 0))
    bar = tqdm(total=steps, initial=start_step, disable=not progress, dynamic_ncols=True,
               unit="it", leave=True)
    with bar:  # closed however training ends (finished, stopped, non-finite loss)
        t0 = time.perf_counter()
        for step in range(start_step + 1, steps + 1):
            batch = next(batches)
            lq = batch["lq"].to(device, non_blocking=True)
            gt = batch["gt"].to(device, non_blocking=True)
            with amp:
                loss = loss_fn(model(lq), gt)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                clip_gradients(model.parameters(), optimizer, grad_clip, clip_mode)
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradients
                clip_gradients(model.parameters(), optimizer, grad_clip, clip_mode)
                scaler.step(optimizer)
                scaler.update()
            if scheduler is not None:
                scheduler.step()
            running += loss.detach()
            since += 1
            if step == start_step + 1 and started_at is not None:
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize(device)  # once: the step has really run
                first_step = {"time/to_first_step_s": time.time() - started_at}
            bar.update(1)
            do_eval = eval_fn is not None and (
                (eval_every and step % eval_every == 0) or step == steps)
            if do_eval or step % log_every == 0 or step == steps:
                value = (running / since).item()
                if not math.isfinite(value):
                    raise NonFiniteLoss(f"training loss is {value} at step {step}")
                metrics = {"train/loss": value, "train/lr": optimizer.param_groups[0]["lr"]}
                if step - start_step == since and started_at is not None:  # the first log
                    metrics.update(first_step)
                running.zero_()
                since = 0
                if do_eval:
                    metrics.update(eval_fn(model))
                metrics["train/it_per_s"] = step / (time.perf_counter() - t0)
                log_fn(step, metrics)
                last.update(metrics)
                post = {"loss": f"{value:.4g}"}
                if "val/psnr" in last:
                    post["val_psnr"] = f"{last['val/psnr']:.2f}"
                bar.set_postfix(post, refresh=False)
                if do_eval and on_eval is not None:
                    on_eval(step, metrics)
            stop = stop_requested is not None and stop_requested()
            if checkpoint_fn is not None and (stop or step == steps or (
                    checkpoint_every and step % checkpoint_every == 0)):
                checkpoint_fn(step, {"running": running.item(), "since": since,
                                     "scaler": scaler.state_dict() if scaler else None})
            if stop:
                raise Interrupted(f"interrupted at step {step} (checkpoint saved)")
    return last
