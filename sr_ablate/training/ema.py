"""An exponential moving average (EMA) of a model's weights: ``trainer.ema`` (the decay d,
0 = off) and ``trainer.ema_start`` (steps before averaging starts).

After optimiser step t the average is ``ema = d * ema + (1 - d) * w`` for t > ema_start, and
a copy of the weights ``w`` until then (an average started at the random initialisation would
carry d^t of it: 0.999^2400 = 9 % after a whole ``trainer=cpu`` run). The copy is its own
``nn.Module`` in fp32 whatever the autocast precision (it is what evaluation, ``final.pt``
and the released model use); its update is a few fused device ops, with no host sync.
Buffers that are not floating point (BatchNorm's step counter) are copied, never averaged.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch


class EMA:
    """The averaged copy ``model`` of ``source``; ``update(step)`` after every optimiser step."""

    def __init__(self, source: torch.nn.Module, decay: float, start: int = 0):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.start = decay, start
        self.model = copy.deepcopy(source).float().eval().requires_grad_(False)
        ours = [*self.model.parameters(), *self.model.buffers()]
        theirs = [*source.parameters(), *source.buffers()]
        floating = [i for i, t in enumerate(ours) if t.is_floating_point()]
        self._avg = [ours[i] for i in floating], [theirs[i] for i in floating]
        self._copy = ([t for i, t in enumerate(ours) if i not in floating],
                      [t for i, t in enumerate(theirs) if i not in floating])

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimiser step ``step`` (1-based)."""
        ours, theirs = self._avg
        theirs = [t.float() for t in theirs]  # a no-op for fp32 weights (autocast keeps them)
        if step <= self.start:
            torch._foreach_copy_(ours, theirs)
        else:  # ema + (1 - d)(w - ema) = d * ema + (1 - d) * w
            torch._foreach_lerp_(ours, theirs, 1.0 - self.decay)
        if self._copy[0]:
            torch._foreach_copy_(*self._copy)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start": self.start, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


def released(evaluate: Callable[[torch.nn.Module], dict[str, float]], model: torch.nn.Module,
             ema: EMA | None) -> Callable[[], dict[str, float]]:
    """Scores of the weights a run releases: ``model``'s, or with an EMA the average's plus
    ``<set>/psnr_raw``, the raw weights' PSNR beside it (what the EMA bought). The raw weights
    are scored first: evaluators keep their last outputs (per_image.csv, the comparison
    crops), which must be the released weights'."""
    def score() -> dict[str, float]:
        if ema is None:
            return evaluate(model)
        raw = {f"{k}_raw": v for k, v in evaluate(model).items() if k.endswith("/psnr")}
        return {**evaluate(ema.model), **raw}
    return score
