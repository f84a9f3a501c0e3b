"""One optimiser step and its numerics: precision (autocast, the fp16 loss scaler), gradient
clipping, accumulation over micro-batches, the weights' moving average. ``loop.fit`` runs it."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from sr_ablate.training.ema import EMA


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


@dataclass
class Numerics:
    """How one optimiser step computes. ``autocast``: forward and loss under
    ``torch.autocast`` with this dtype (bf16/fp16; fp16 also scales the loss with a
    ``GradScaler`` so small gradients do not flush to zero); ``grad_clip``/``clip_mode``: see
    ``clip_gradients``; ``accumulate``: micro-batches per optimiser step, each loss scaled by
    1/N (N = 1 runs exactly the single-batch step); ``ema``: a moving average updated after
    every optimiser step (``training.ema.EMA``), or None."""
    autocast: torch.dtype | None = None
    grad_clip: float | None = None
    clip_mode: str = "norm"
    accumulate: int = 1
    ema: EMA | None = None


class Step:
    """One optimiser step: ``accumulate`` micro-batches of forward and loss (under autocast)
    and backward, then clipping, the update (through the fp16 ``GradScaler`` when there is
    one), the scheduler and the EMA. Returns the step's loss (mean over its micro-batches)."""

    def __init__(self, model, optimizer, loss_fn, numerics: Numerics, *, device, scheduler,
                 loop_state: dict | None):
        kind = torch.device(device).type
        n = numerics
        self.amp = (torch.autocast(kind, dtype=n.autocast) if n.autocast is not None
                    else nullcontext())
        self.scaler = torch.amp.GradScaler(kind) if n.autocast == torch.float16 else None
        state = loop_state or {}
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])  # its loss scale, learnt so far
        if n.ema is not None and state.get("ema"):
            n.ema.load_state_dict(state["ema"])
        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        self.n, self.scheduler = n, scheduler

    def state(self) -> dict:
        """What a checkpoint needs of the step beyond model and optimiser."""
        return {"scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.n.ema.state_dict() if self.n.ema is not None else None}

    def _loss(self, batch: dict) -> torch.Tensor:
        lq = batch["lq"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        with self.amp:
            return self.loss_fn(self.model(lq), gt)

    def __call__(self, batches: Iterator[dict], step: int) -> torch.Tensor:
        opt, scaler, n = self.optimizer, self.scaler, self.n
        opt.zero_grad(set_to_none=True)
        total = None
        for _ in range(n.accumulate):
            loss = self._loss(next(batches))
            if n.accumulate > 1:  # N = 1 runs exactly the single-batch step
                loss = loss / n.accumulate
            (loss if scaler is None else scaler.scale(loss)).backward()
            total = loss.detach() if total is None else total + loss.detach()
        params = self.model.parameters()
        if scaler is None:
            clip_gradients(params, opt, n.grad_clip, n.clip_mode)
            opt.step()
        else:
            scaler.unscale_(opt)  # clip the true gradients
            clip_gradients(params, opt, n.grad_clip, n.clip_mode)
            scaler.step(opt)
            scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if n.ema is not None:
            n.ema.update(step)
        return total
