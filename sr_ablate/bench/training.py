"""Training throughput for ``python -m sr_ablate bench``: three loops over one model.

- ``bare_its``: fwd + bwd + optimiser step on one batch already in memory (the ceiling);
- ``full_its``: sr_ablate's path: patch sampling from the images (``data.batches``) + ``fit``
  + logging every ``log_every`` steps into a real sqlite MLflow store;
- ``lightning_its``: a PyTorch Lightning ``Trainer`` fed by the same patch sampler through a
  ``DataLoader`` and logging to MLflow, as a lightning-hydra-template user would run it.
All share the model, optimiser and loss built from the Hydra config (one name end to end).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sr_ablate import data
from sr_ablate.config import validation
from sr_ablate.core.evaluate import model_channels
from sr_ablate.training.job import instantiate_node
from sr_ablate.training.loop import Every, Hooks, fit

# name -> (overrides, batch, LR patch): the shapes of docs/protocol.md#benchmark-shapes; VDSR at
# batch 16 x 40^2 instead of 64 x 41^2 to keep a round of the benchmark near 10 s on 2 cores.
MODELS = {
    "SRResNet-16": (["model=srresnet", "model.blocks=16"], 16, 24),
    "VDSR-20": (["model=vdsr"], 16, 20),
    "ESPCN": (["model=espcn"], 64, 32),
}


@dataclass
class Setup:
    """One model ready to train. ``pool``: a few batches held in memory (float32 [0, 1]) that
    the bare loop cycles through: training on one batch only overfits it until its tiny
    gradients go denormal, which slowed that loop down by ~10% over a benchmark on this CPU."""
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    batches: Iterator[dict]
    pool: list[tuple[torch.Tensor, torch.Tensor]]
    lr: float
    device: torch.device


def setup(name: str, overrides: list[str], batch: int, patch: int, *, scale: int = 2,
          device: str = "cpu", channels_last: bool = False, on_device: bool = False) -> Setup:
    """Compose ``overrides`` with Hydra and build what ``run`` would build for them.
    ``on_device`` (``data.on_device``): patches cut on the device instead of on the host
    and copied over each step (the same batches: compare their ``full_its``)."""

    cfg = validation.compose([*overrides, f"scale={scale}", "data=builtin"])
    torch.manual_seed(0)
    device = torch.device(device)
    model = instantiate_node(cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = instantiate_node(cfg.optim)(model.parameters())
    loss_fn = instantiate_node(cfg.loss).to(device)
    pairs = data.training_pairs(data.training_files(cfg.data)[0], scales=[scale],
                                patch_size=patch,
                                color="y" if model_channels(model) == 1 else "rgb",
                                upsampled=model.upsampled_input)
    batches = data.batches(pairs, patch_size=patch, batch_size=batch, seed=0, device=device,
                           on_device=on_device)
    pool = [(b["lq"], b["gt"]) for b in (next(batches) for _ in range(8))]
    return Setup(name, model, optimizer, loss_fn, batches, pool, cfg.optim.lr, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_its(s: Setup, steps: int, autocast: torch.dtype | None = None, model=None) -> float:
    """it/s of the bare loop on the batches in memory; ``model``: e.g. a compiled wrapper."""
    model = s.model if model is None else model
    amp = torch.autocast(s.device.type, autocast) if autocast else nullcontext()
    _sync(s.device)
    t = time.perf_counter()
    for i in range(steps):
        lq, gt = s.pool[i % len(s.pool)]
        with amp:
            loss = s.loss_fn(model(lq), gt)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
    loss.item()
    return steps / (time.perf_counter() - t)


def full_its(s: Setup, steps: int, log_fn, log_every: int = 10) -> float:
    """it/s of sr_ablate's ``fit`` with patch sampling and logging (evaluation off)."""
    _sync(s.device)
    t = time.perf_counter()
    fit(s.model, s.batches, s.optimizer, s.loss_fn, steps=steps, hooks=Hooks(log=log_fn),
        every=Every(log=log_every), progress=False, device=s.device)
    _sync(s.device)
    return steps / (time.perf_counter() - t)


def lightning_its(s: Setup, steps: int, tracking_uri: str, log_every: int = 10,
                  warmup: int = 3) -> float:
    """Steady-state it/s of a Lightning ``Trainer`` (``warmup`` steps left out of the timing,
    so its set-up is not counted against it)."""
    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.loss_fn = s.model, s.loss_fn

        def training_step(self, batch, _):
            loss = self.loss_fn(self.model(batch["lq"]), batch["gt"])
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=s.lr)

    class Patches(torch.utils.data.IterableDataset):
        def __iter__(self):
            for b in s.batches:  # already batched: the loader passes them through
                yield {"lq": b["lq"].cpu(), "gt": b["gt"].cpu()}

    class Clock(L.Callback):
        times: list[float] = []

        def on_train_batch_end(self, trainer, *args):
            _sync(s.device)
            self.times.append(time.perf_counter())

    clock = Clock()
    clock.times = []
    trainer = L.Trainer(
        max_steps=warmup + steps, accelerator="gpu" if s.device.type == "cuda" else "cpu",
        devices=1, logger=MLFlowLogger("lightning", tracking_uri=tracking_uri),
        log_every_n_steps=log_every, callbacks=[clock], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), torch.utils.data.DataLoader(Patches(), batch_size=None))
    return steps / (clock.times[-1] - clock.times[warmup - 1])


class GpuUtilisation:
    """``with GpuUtilisation(device) as u:`` samples the GPU's utilisation every 0.2 s while
    the block runs; ``u.mean()`` is their mean ("n/a" on CPU or without nvidia-ml-py)."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.error = device, [], None

    def __enter__(self):
        self.stop = threading.Event()
        if self.device.type == "cuda":
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception as e:  # pynvml missing or no permission: say so, once
                self.error = f"n/a ({type(e).__name__}; pip install nvidia-ml-py)"
                return

    def __exit__(self, *exc):
        self.stop.set()
        return False

    def mean(self) -> str:
        if self.error or not self.samples:
            return self.error or "n/a"
        return f"{sum(self.samples) / len(self.samples):.0f}%"


def step_gflop(s: Setup) -> float:
    """GFLOP of one training step (forward + backward), counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        s.loss_fn(s.model(s.pool[0][0]), s.pool[0][1]).backward()
    s.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def matmul_peak(device: torch.device, n: int = 2048, seconds: float = 1.0,
                dtype: torch.dtype = torch.float32) -> float:
    """Measured GFLOP/s of an n x n matrix product (best of repeated runs for ``seconds``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best
