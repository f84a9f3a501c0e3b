"""The training loop. It knows nothing of Hydra or MLflow: a step's numerics are one object
(``Numerics``), and what happens around the steps (evaluate, log, checkpoint, stop) are the
few methods of ``Hooks``, called at the cadence of ``Every``."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm import tqdm

from sr_ablate.training.step import Numerics, Step

Metrics = dict[str, float]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Training stopped at a step boundary on SIGINT/SIGTERM, after its checkpoint."""


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


@dataclass
class Every:
    """Cadence in optimiser steps: log, evaluate (0: at the end only), checkpoint (0: at
    every evaluation). The last step always logs, evaluates and checkpoints."""
    log: int = 10
    eval: int = 0
    checkpoint: int = 0


class Hooks:
    """What happens around the steps: the loop calls these methods, each a callable given
    here or nothing (a subclass may override them instead). ``evaluate(model)`` -> metrics,
    every ``Every.eval`` steps and at the end (no evaluation without one); ``log(step,
    metrics)`` at log steps, with the evaluation's metrics when there was one;
    ``evaluated(step, metrics)`` after each evaluation may raise to stop training
    (``sr_ablate.Stopped`` when a trial is pruned); ``checkpoint(step, loop_state)`` at
    checkpoint steps; ``stop()`` is polled after every step (true: a checkpoint, then
    ``Interrupted``)."""

    def __init__(self, *, evaluate: Callable[[torch.nn.Module], Metrics] | None = None,
                 log: Callable[[int, Metrics], None] | None = None,
                 evaluated: Callable[[int, Metrics], None] | None = None,
                 checkpoint: Callable[[int, dict], None] | None = None,
                 stop: Callable[[], bool] | None = None):
        self._evaluate, self._log, self._evaluated = evaluate, log, evaluated
        self._checkpoint, self._stop = checkpoint, stop

    @property
    def evaluates(self) -> bool:
        return self._evaluate is not None

    def evaluate(self, model: torch.nn.Module) -> Metrics:
        return self._evaluate(model) if self._evaluate else {}

    def log(self, step: int, metrics: Metrics) -> None:
        if self._log:
            self._log(step, metrics)

    def evaluated(self, step: int, metrics: Metrics) -> None:
        if self._evaluated:
            self._evaluated(step, metrics)

    def checkpoint(self, step: int, loop_state: dict) -> None:
        if self._checkpoint:
            self._checkpoint(step, loop_state)

    def stop_requested(self) -> bool:
        return bool(self._stop and self._stop())


def fit(model: torch.nn.Module, batches: Iterator[dict], optimizer: torch.optim.Optimizer,
        loss_fn: Callable, *, steps: int, numerics: Numerics | None = None,
        every: Every | None = None, hooks: Hooks | None = None, scheduler=None,
        device: str | torch.device = "cpu", progress: bool = True,
        resume: dict | None = None, started_at: float | None = None) -> dict[str, float]:
    """Train ``model`` for ``steps`` optimiser steps on ``batches`` ({"lq", "gt"} in [0, 1]).

    ``numerics``: how a step computes (precision, clipping, accumulation, EMA: ``Numerics``);
    ``scheduler`` (a torch LR scheduler, or None) is stepped after every optimiser step.
    ``every``/``hooks``: what happens around the steps (``Every``, ``Hooks``). Logged metrics:
    ``train/loss`` (mean over the steps since the last log), ``train/lr``, ``train/it_per_s``
    (those steps over their training time: evaluation, checkpoints and logging not counted)
    and, at evaluation steps, ``hooks.evaluate(model)``'s.
    The loss is read back from the device only at log and checkpoint steps (no per-step host
    sync); a NaN or infinite loss then raises ``NonFiniteLoss`` naming the step it happened
    at. The updates between that step and the read have run (on non-finite weights), but
    nothing of them is logged, evaluated or checkpointed.
    ``started_at`` (a ``time.time()``): the first log also holds ``time/to_first_step_s``,
    the seconds from then to the end of the first step (the job's fixed cost).
    A checkpoint's ``loop_state`` holds the running loss not yet logged, the fp16
    ``GradScaler``'s state (its loss scale) and the EMA's weights; ``resume`` ({"step",
    "loop"} of such a checkpoint) continues from it.
    Returns the last logged value of every metric.
    """
    n, every, hooks = numerics or Numerics(), every or Every(), hooks or Hooks()
    start_step = resume["step"] if resume else 0
    loop_state = resume["loop"] if resume else None
    model.to(device).train()
    train_step = Step(model, optimizer, loss_fn, n, device=device, scheduler=scheduler,
                       loop_state=loop_state)
    losses, clock = _LossWindow(device, loop_state), _Throughput(start_step)
    last: dict[str, float] = {}
    first_step: dict[str, float] = {}
    bar = tqdm(total=steps, initial=start_step, disable=not progress, dynamic_ncols=True,
               unit="it", leave=True)
    with bar:  # closed however training ends (finished, stopped, non-finite loss)
        for step in range(start_step + 1, steps + 1):
            losses.add(step, train_step(batches, step))
            if step == start_step + 1 and started_at is not None:
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize(device)  # once: the step has really run
                first_step = {"time/to_first_step_s": time.time() - started_at}
            bar.update(1)
            do_eval = hooks.evaluates and ((every.eval and step % every.eval == 0)
                                           or step == steps)
            if do_eval or step % every.log == 0 or step == steps:
                loss = losses.mean()  # the host waits for the device here: the steps ran
                metrics = {"train/loss": loss, "train/lr": optimizer.param_groups[0]["lr"],
                           "train/it_per_s": clock.rate(step), **first_step}
                losses.reset()
                first_step = {}
                with clock.paused():
                    _log(step, metrics, last, bar, hooks, model, do_eval)
            stop = hooks.stop_requested()
            cadence = every.checkpoint or every.eval
            if stop or step == steps or (cadence and step % cadence == 0):
                state = {"running": losses.checked_sum(), "since": losses.count,
                         **train_step.state()}
                with clock.paused():
                    hooks.checkpoint(step, state)
            if stop:
                raise Interrupted(f"interrupted at step {step} (checkpoint saved)")
    return last


def _log(step: int, metrics: dict[str, float], last: dict[str, float], bar, hooks: Hooks,
         model: torch.nn.Module, do_eval: bool) -> None:
    """Evaluate (when ``do_eval``), log, show on the progress bar, then ``hooks.evaluated``."""
    if do_eval:
        metrics.update(hooks.evaluate(model))
    hooks.log(step, metrics)
    last.update(metrics)
    post = {"loss": f"{metrics['train/loss']:.4g}"}
    if "val/psnr" in last:
        post["val_psnr"] = f"{last['val/psnr']:.2f}"
    bar.set_postfix(post, refresh=False)
    if do_eval:
        hooks.evaluated(step, metrics)
