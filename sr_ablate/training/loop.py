"""The training loop. It knows nothing of Hydra or MLflow: evaluation and logging are callables."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

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


class _LossWindow:
    """The training losses since the last log, on the device: their running sum (the logged
    mean) and each step's loss, so that a non-finite one is named by its own step. Read back
    to the host only by ``mean`` and ``checked_sum``, at log and checkpoint steps: no
    per-step host sync (the sum turns NaN or infinite with any non-finite loss)."""

    def __init__(self, device, loop_state: dict | None):
        state = loop_state or {}
        self.sum = torch.tensor(float(state.get("running", 0.0)), device=device)
        self.count = int(state.get("since", 0))
        self.unchecked: list[tuple[int, torch.Tensor]] = []  # (step, loss) since the last read

    def add(self, step: int, loss: torch.Tensor) -> None:
        loss = loss.detach()
        self.sum += loss
        self.count += 1
        self.unchecked.append((step, loss))

    def mean(self) -> float:
        """The window's mean loss; NonFiniteLoss naming the first bad step."""
        return self._checked((self.sum / self.count).item())

    def checked_sum(self) -> float:
        """The running sum, for a checkpoint; NonFiniteLoss as ``mean``."""
        return self._checked(self.sum.item())

    def reset(self) -> None:
        self.sum.zero_()
        self.count = 0

    def _checked(self, value: float) -> float:
        if math.isfinite(value):
            self.unchecked.clear()
            return value
        if self.unchecked:  # only now, on the way out: one more read of the kept losses
            losses = torch.stack([loss for _, loss in self.unchecked]).float()
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                i = int(bad[0, 0])
                value, step = losses[i].item(), self.unchecked[i][0]
                raise NonFiniteLoss(f"training loss is {value} at step {step}")
        step = self.unchecked[-1][0] if self.unchecked else "?"  # finite losses, huge sum
        raise NonFiniteLoss(f"training loss is {value} at step {step}")


class _Throughput:
    """``train/it_per_s``: the steps this process did since the last log over the seconds
    they took, not counting evaluation, checkpoints and logging (run inside ``paused()``)."""

    def __init__(self, step: int):
        self.step, self.since, self.paused_s = step, time.perf_counter(), 0.0

    @contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t

    def rate(self, step: int) -> float:
        """Steps per second since the last call (call it once the device has caught up)."""
        now = time.perf_counter()
        seconds = max(now - self.since - self.paused_s, 1e-9)
        rate = (step - self.step) / seconds
        self.step, self.since, self.paused_s = step, now, 0.0
        return rate


class _Step:
    """One optimiser step: forward and loss (under autocast), backward, clipping, update
    (through the fp16 ``GradScaler`` when there is one), scheduler."""

    def __init__(self, model, optimizer, loss_fn, *, device, autocast, grad_clip, clip_mode,
                 scheduler, loop_state: dict | None):
        kind = torch.device(device).type
        self.amp = (torch.autocast(kind, dtype=autocast) if autocast is not None
                    else nullcontext())
        self.scaler = torch.amp.GradScaler(kind) if autocast == torch.float16 else None
        if self.scaler is not None and (loop_state or {}).get("scaler"):
            self.scaler.load_state_dict(loop_state["scaler"])  # its loss scale, learnt so far
        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        self.grad_clip, self.clip_mode, self.scheduler = grad_clip, clip_mode, scheduler

    def __call__(self, batch: dict) -> torch.Tensor:
        lq = batch["lq"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        with self.amp:
            loss = self.loss_fn(self.model(lq), gt)
        opt, scaler, params = self.optimizer, self.scaler, self.model.parameters()
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            clip_gradients(params, opt, self.grad_clip, self.clip_mode)
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # clip the true gradients
            clip_gradients(params, opt, self.grad_clip, self.clip_mode)
            scaler.step(opt)
            scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss


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

    ``log_fn(step, metrics)`` receives ``train/loss`` (mean over the last ``log_every`` steps),
    ``train/lr``, ``train/it_per_s`` (the steps since the last log over their training time:
    evaluation, checkpoints and logging not counted) and, every ``eval_every`` steps and at
    the end, the output of ``eval_fn(model)``; ``on_eval(step, metrics)`` then sees the same
    metrics and may stop training by raising (e.g. ``sr_ablate.Stopped`` when a trial is pruned).
    The loss is read back from the device only at log and checkpoint steps (no per-step host
    sync); a NaN or infinite loss then raises ``NonFiniteLoss`` naming the step it happened
    at. The updates between that step and the read have run (on non-finite weights), but
    nothing of them is logged, evaluated or checkpointed.
    ``autocast``: run forward and loss under ``torch.autocast`` with this dtype (bf16/fp16);
    fp16 also scales the loss (``GradScaler``) so small gradients do not flush to zero.
    ``started_at`` (a ``time.time()``): the first log also holds ``time/to_first_step_s``,
    the seconds from then to the end of the first step (the job's fixed cost).
    Checkpoints: ``checkpoint_fn(step, loop_state)`` every ``checkpoint_every`` steps, at
    the end, and when ``stop_requested()`` turns true (then ``Interrupted`` is raised);
    ``loop_state`` is the running loss not yet logged and the fp16 ``GradScaler``'s state
    (its loss scale). ``start_step`` and ``loop_state`` continue a run from such a checkpoint.
    Returns the last logged value of every metric.
    """
    log_fn = log_fn or (lambda step, m: None)
    model.to(device).train()
    train_step = _Step(model, optimizer, loss_fn, device=device, autocast=autocast,
                       grad_clip=grad_clip, clip_mode=clip_mode, scheduler=scheduler,
                       loop_state=loop_state)
    losses, clock = _LossWindow(device, loop_state), _Throughput(start_step)
    last: dict[str, float] = {}
    first_step: dict[str, float] = {}
    bar = tqdm(total=steps, initial=start_step, disable=not progress, dynamic_ncols=True,
               unit="it", leave=True)
    with bar:  # closed however training ends (finished, stopped, non-finite loss)
        for step in range(start_step + 1, steps + 1):
            losses.add(step, train_step(next(batches)))
            if step == start_step + 1 and started_at is not None:
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize(device)  # once: the step has really run
                first_step = {"time/to_first_step_s": time.time() - started_at}
            bar.update(1)
            do_eval = eval_fn is not None and (
                (eval_every and step % eval_every == 0) or step == steps)
            if do_eval or step % log_every == 0 or step == steps:
                loss = losses.mean()  # the host waits for the device here: the steps ran
                metrics = {"train/loss": loss, "train/lr": optimizer.param_groups[0]["lr"],
                           "train/it_per_s": clock.rate(step), **first_step}
                losses.reset()
                first_step = {}
                with clock.paused():
                    _log(step, metrics, last, bar, log_fn, eval_fn if do_eval else None,
                         model, on_eval)
            stop = stop_requested is not None and stop_requested()
            if checkpoint_fn is not None and (stop or step == steps or (
                    checkpoint_every and step % checkpoint_every == 0)):
                state = {"running": losses.checked_sum(), "since": losses.count,
                         "scaler": train_step.scaler.state_dict() if train_step.scaler else None}
                with clock.paused():
                    checkpoint_fn(step, state)
            if stop:
                raise Interrupted(f"interrupted at step {step} (checkpoint saved)")
    return last


def _log(step: int, metrics: dict[str, float], last: dict[str, float], bar, log_fn: LogFn,
         eval_fn: EvalFn | None, model: torch.nn.Module, on_eval: LogFn | None) -> None:
    """Evaluate (when ``eval_fn``), log, show on the progress bar and call ``on_eval``."""
    if eval_fn is not None:
        metrics.update(eval_fn(model))
    log_fn(step, metrics)
    last.update(metrics)
    post = {"loss": f"{metrics['train/loss']:.4g}"}
    if "val/psnr" in last:
        post["val_psnr"] = f"{last['val/psnr']:.2f}"
    bar.set_postfix(post, refresh=False)
    if eval_fn is not None and on_eval is not None:
        on_eval(step, metrics)
