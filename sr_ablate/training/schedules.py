"""Learning-rate schedules: linear warm-up in front of any schedule, and cosine annealing with
restarts (BasicSR's ``CosineAnnealingRestartLR``).

Every ``t`` below counts optimiser steps from 0: step ``t`` updates the weights with the
learning rate the scheduler set after ``t`` calls of ``step()`` (``loop.fit`` calls it after
every optimiser step, as torch schedulers expect).

Warm-up (``sched.warmup_steps`` = W, ``sched.warmup_start`` = a, both read by the composition
root, ``schema.ROOT_READ``): for ``t < W`` the learning rate is the schedule's own,
``s(t)``, times ``a + (1 - a) * t / W``; from ``t = W`` on it is ``s(t)``. So step 0 runs at
``a * lr`` (``a = 0``: a step at lr 0, which moves no weight, only the optimiser's running
statistics such as Adam's moments) and the rise ends on the schedule's own value, with no
jump. The rise is a straight line where the schedule is flat over the warm-up (sched=none,
step before its first drop); under a decaying schedule it bends with it.

The schedule's clock starts at step 0, not after the warm-up: the warm-up scales the first W
values of the schedule instead of delaying it. Why: (1) a schedule keeps its meaning in steps
of the run: cosine's ``T_max: ${trainer.steps}`` still reaches eta_min on the last step, step
still drops at ``step_size``, and cosine_restarts' periods still have to cover
``trainer.steps``, not ``trainer.steps - W``; (2) turning warm-up on changes the first W
learning rates only, so a warm-up ablation compares the warm-up and nothing else; (3) BasicSR
counts its scheduler from 0 under warm-up too, so its recipes carry over. The price: under a
decaying schedule the warm-up peaks at ``s(W)``, slightly below ``optim.lr``. BasicSR differs
in one detail: during its warm-up the lr is ``optim.lr * t / W`` whatever the schedule, and
jumps to the schedule's value at W; here it is the schedule's value scaled, so it is
continuous.

Without warm-up (``sched.warmup_steps: 0``) the scheduler is exactly the one ``cfg.sched``
builds (torch's own class, or None for sched=none): the same learning rates, the same
checkpoint contents, the same config hash as before warm-up existed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


class CosineRestarts(LRScheduler):
    """Cosine annealing with restarts (BasicSR's ``CosineAnnealingRestartLR``).

    Period i starts at step ``c_i = p_0 + ... + p_{i-1}`` and lasts ``p_i`` steps; for
    ``c_i <= t < c_i + p_i``::

        lr(t) = eta_min + w_i * (base_lr - eta_min) * (1 + cos(pi * (t - c_i) / p_i)) / 2

    so each period restarts at ``eta_min + w_i * (base_lr - eta_min)`` and decays towards
    ``eta_min``. Past the last period the lr stays at ``eta_min`` (the last period's end).
    BasicSR counts step ``c_i`` itself into period i-1 (lr ``eta_min`` there), so its
    restarts come one step later than these; a period here is exactly ``p_i`` steps long.
    Closed form in ``t``: a checkpoint's ``last_epoch`` is all a resumed run needs.

    Args:
        periods: length of each period in optimiser steps, each >= 1; their sum must cover
            ``trainer.steps`` (``config.checks``).
        restart_weights: the peak of each period as a fraction of ``base_lr - eta_min``, each
            in (0, 1]; one per period. Default: 1 for every period.
        eta_min: the learning rate each period decays to. Default 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, periods: Sequence[int],
                 restart_weights: Sequence[float] | None = None, eta_min: float = 0.0):
        # plain lists: a checkpoint holds this object's __dict__ and loads weights_only
        self.periods = [int(p) for p in periods]
        self.restart_weights = ([1.0] * len(self.periods) if restart_weights is None
                                else [float(w) for w in restart_weights])
        self.eta_min = float(eta_min)
        if not self.periods:
            raise ValueError("sched.periods is empty; give at least one period, e.g. "
                             "sched.periods=[${trainer.steps}]")
        if len(self.restart_weights) != len(self.periods):
            raise ValueError(f"sched.periods has {len(self.periods)} periods but "
                             f"sched.restart_weights has {len(self.restart_weights)} weights; "
                             "give one weight per period")
        if min(self.periods) < 1:
            raise ValueError(f"sched.periods={self.periods} holds a period under 1 step")
        if not all(0 < w <= 1 for w in self.restart_weights):
            raise ValueError(f"sched.restart_weights={self.restart_weights} must each be in "
                             "(0, 1]")
        self.starts = [sum(self.periods[:i]) for i in range(len(self.periods))]
        super().__init__(optimizer)

    def factor(self, t: int) -> tuple[float, float]:
        """(w_i, cosine term in [0, 1]) at step ``t``: lr = eta_min + w_i * term * (base -
        eta_min)."""
        for start, p, w in zip(self.starts, self.periods, self.restart_weights):
            if t < start + p:
                return w, (1 + math.cos(math.pi * (t - start) / p)) / 2
        return 0.0, 0.0  # past the last period: eta_min

    def get_lr(self) -> list[float]:
        w, term = self.factor(self.last_epoch)
        return [self.eta_min + w * term * (base - self.eta_min) for base in self.base_lrs]


class Warmup:
    """Linear warm-up in front of ``schedule`` (see the module docstring): step ``t < W``
    runs at ``s(t) * (warmup_start + (1 - warmup_start) * t / W)``, then at ``s(t)``.

    ``schedule``: a torch LR scheduler on ``optimizer``, built before this, or None for a
    constant learning rate (sched=none). It keeps its own learning rates: before each of its
    steps the optimiser's lr is set back to the schedule's unscaled value, since torch's
    schedulers (CosineAnnealingLR, StepLR) compute the next lr from the current one.
    ``state_dict``/``load_state_dict`` hold the schedule's state as well (checkpoint resume).

    Args:
        warmup_steps: W, optimiser steps the rise lasts, >= 1.
        warmup_start: the first step's fraction of the schedule's lr, in [0, 1]. Default 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRScheduler | None = None,
                 warmup_steps: int = 1, warmup_start: float = 0.0):
        if warmup_steps < 1:
            raise ValueError(f"sched.warmup_steps={warmup_steps}: Warmup needs at least 1 step")
        self.optimizer, self.schedule = optimizer, schedule
        self.warmup_steps, self.warmup_start = int(warmup_steps), float(warmup_start)
        self.step_count = 0  # optimiser steps taken
        self.own = [g["lr"] for g in optimizer.param_groups]  # the schedule's, unscaled
        self._apply()

    def factor(self) -> float:
        """The warm-up's multiplier at the current step, in [warmup_start, 1]."""
        t, w, a = self.step_count, self.warmup_steps, self.warmup_start
        return 1.0 if t >= w else a + (1 - a) * t / w

    def _apply(self) -> None:
        f = self.factor()
        for group, lr in zip(self.optimizer.param_groups, self.own):
            group["lr"] = lr * f

    def step(self) -> None:
        """After an optimiser step: the schedule steps from its own lr, then it is scaled."""
        if self.schedule is not None:
            for group, lr in zip(self.optimizer.param_groups, self.own):
                group["lr"] = lr
            self.schedule.step()
            self.own = [g["lr"] for g in self.optimizer.param_groups]
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rates the next optimiser step uses, one per parameter group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "own": list(self.own),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """After ``optimizer.load_state_dict`` (``checkpoint.restore``'s order)."""
        self.step_count, self.own = int(state["step_count"]), list(state["own"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        self._apply()


def warm_up(optimizer: torch.optim.Optimizer, schedule: LRScheduler | None, sched):
    """The run's scheduler: ``schedule`` (built from ``cfg.sched``; None for sched=none)
    behind the warm-up that ``sched`` (the ``cfg.sched`` node) asks for with
    ``warmup_steps``/``warmup_start``; ``schedule`` itself when ``warmup_steps`` is 0 or
    absent (a config folder's own sched file written before warm-up existed)."""
    steps = sched.get("warmup_steps", 0) or 0
    if not steps:
        return schedule
    return Warmup(optimizer, schedule, warmup_steps=steps,
                  warmup_start=sched.get("warmup_start", 0.0))
