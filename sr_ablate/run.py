"""Composition root: the one place that turns a config into objects and runs them.

``run(cfg)`` = build (data, model, optimiser, loss) -> track -> fit -> evaluate -> log.
Everything that can fail on bad input is built *before* the MLflow run opens, so bad input
leaves no run behind; a failure after that ends the run FAILED.
"""
from __future__ import annotations

import csv
import os
import random
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sr_ablate import data, tracking
from sr_ablate.config import check, flatten
from sr_ablate.evaluate import PROTOCOL, Evaluator
from sr_ablate.train import fit


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def comparison_image(evaluator: Evaluator, crop: int = 96) -> torch.Tensor:
    """bicubic | SR | HR of the centre crop of the first validation image, (C, crop, 3*crop) uint8."""
    from sr_ablate.degrade import bicubic_up
    from sr_ablate.evaluate import quantize

    pair, sr = evaluator.pairs[0], evaluator.last_outputs[0]
    bic = quantize(bicubic_up(pair.lq.to(torch.float64), evaluator.scale))
    h, w = pair.gt.shape[-2:]
    c = min(crop, h, w)
    y, x = (h - c) // 2, (w - c) // 2
    tiles = [t[:, y:y + c, x:x + c].to(torch.uint8) for t in (bic, sr, pair.gt)]
    return torch.cat(tiles, dim=-1)


def save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image
    arr = img.permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def run(cfg: DictConfig, *, cwd: str | None = None, overrides: list[str] | None = None,
        choices: dict[str, str] | None = None) -> dict:
    """Train and evaluate one configuration, logging to MLflow; returns the final metrics.

    ``overrides`` (as typed, e.g. ``model.blocks=8``) and ``choices`` (config group options,
    e.g. ``{"loss": "l2"}``) are recorded too; the latter as params named after the group.
    """
    check(cfg)
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    t = cfg.trainer
    train_pairs, val_pairs = data.build(cfg.data, scale=cfg.scale, patch_size=t.patch_size,
                                        quantize=cfg.degradation.quantize)
    model = instantiate(cfg.model).to(device)
    optimizer = instantiate(cfg.optim)(model.parameters())
    loss_fn = instantiate(cfg.loss)
    evaluator = Evaluator(val_pairs, cfg.scale)
    batches = data.batches(train_pairs, scale=cfg.scale, patch_size=t.patch_size,
                           batch_size=t.batch_size, seed=cfg.seed, device=device)

    uri = tracking.store_uri(cfg.tracking.uri, cwd)
    params = {**(choices or {}), **flatten(cfg)}
    tags = {**PROTOCOL, "overrides": " ".join(overrides or []), "device": str(device)}
    name = " ".join(overrides) if overrides else None
    with tracking.run(uri, cfg.tracking.experiment, params=params, tags=tags, name=name) as log:
        log.log_metrics(0, {"model/params": sum(p.numel() for p in model.parameters())})
        result = fit(model, batches, optimizer, steps=t.steps, loss_fn=loss_fn, eval_fn=evaluator,
                     log_fn=log.log_metrics, eval_every=t.eval_every, log_every=t.log_every,
                     grad_clip=t.grad_clip, device=device, progress=t.progress)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            with open(tmp / "per_image.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(evaluator.per_image[0]))
                writer.writeheader()
                writer.writerows(evaluator.per_image)
            save_png(comparison_image(evaluator), tmp / "comparison.png")
            for name_ in ("config.yaml", "per_image.csv", "comparison.png"):
                log.log_artifact(tmp / name_)
            if cfg.tracking.checkpoint:
                save_atomic({"model": model.state_dict(), "config": OmegaConf.to_container(
                    cfg, resolve=True), "step": t.steps}, tmp / "final.pt")
                log.log_artifact(tmp / "final.pt", "checkpoints")
    result["model/params"] = sum(p.numel() for p in model.parameters())
    return result
