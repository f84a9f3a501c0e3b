"""What a finished run leaves in MLflow besides metrics: the resolved config, per-image
metrics, a bicubic | SR | HR comparison crop, the final weights; and the model's cost
(parameters, GFLOPs, ms per frame)."""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from sr_ablate.core import complexity
from sr_ablate.core.degrade import bicubic_up, crop_multiple, to_uint8
from sr_ablate.core.evaluate import Evaluator, colorize_y, model_channels, model_input
from sr_ablate.inference.trained import Trained
from sr_ablate.tracking import log_model
from sr_ablate.training import checkpoint


def comparison_image(ev: Evaluator, crop: int = 96) -> torch.Tensor:
    """bicubic | SR | HR of the centre crop of the set's first image, (C, crop, 3*crop) uint8.

    A Y-channel model on a colour image is shown in colour (C = 3), as papers show it: its Y
    with the Cb/Cr of the bicubic upscale of the RGB LR; bicubic and HR tiles in RGB."""
    (_, hr), sr = ev.images[0], ev.last_outputs[0]
    c_model = sr.shape[0]
    gt = hr.to(torch.float64).expand(c_model, -1, -1) if hr.shape[0] == 1 else hr.to(torch.float64)
    if c_model == 1 and hr.shape[0] == 3:
        # the RGB LR an RGB model would get under this protocol: its bicubic lends the chroma
        bic = to_uint8(bicubic_up(model_input(hr, ev.scale, ev.protocol, 3), ev.scale))
        sr = colorize_y(sr, bic)
    else:
        lq = ev.inputs(c_model)[0][0]  # the LR the model saw, computed once by the evaluator
        bic = to_uint8(bicubic_up(lq, ev.scale))
    h, w = gt.shape[-2:]
    c = min(crop, h, w)
    y, x = (h - c) // 2, (w - c) // 2
    tiles = [to_uint8(t[:, y:y + c, x:x + c]).to(torch.uint8) for t in (bic, sr, gt)]
    return torch.cat(tiles, dim=-1)


def save_png(img: torch.Tensor, path: Path) -> None:
    arr = img.permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def log_outputs(log, cfg: DictConfig, model, evaluators: list[Evaluator], steps: int) -> None:
    """Artifacts: resolved config, per-image metrics, comparison image, and (unless
    ``tracking.checkpoint=false``) the final weights, as ``checkpoints/final.pt`` and as the
    MLflow Model ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        with open(tmp / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["set", *evaluators[0].per_image[0]])
            writer.writeheader()
            for ev in evaluators:
                writer.writerows({"set": ev.prefix, **row} for row in ev.per_image)
        save_png(comparison_image(evaluators[0]), tmp / "comparison.png")
        for name in ("config.yaml", "per_image.csv", "comparison.png"):
            log.log_artifact(tmp / name)
        if cfg.tracking.checkpoint:
            checkpoint.save_atomic({"model": model.state_dict(), "config": OmegaConf.to_container(
                cfg, resolve=True), "step": steps}, tmp / "final.pt")
            log.log_artifact(tmp / "final.pt", "checkpoints")
            # the same weights as an MLflow Model: load_model("runs:/<id>/model"), serving
            log_model(log, tmp / "final.pt", Trained.of(model, cfg.scale, log.run_id))


def complexity_metrics(model, cfg: DictConfig, device) -> tuple[dict[str, float], dict[str, str]]:
    """model/params, model/gflops and model/ms_per_frame at ``eval.frame``, and tags saying so."""
    m = crop_multiple(cfg.scale)  # e.g. a 256 frame is measured as 255 at x1.5 (LR 170)
    frame = tuple(x - x % m for x in cfg.eval.frame)
    shape = complexity.model_input_shape(model, frame, model_channels(model))
    ms = complexity.ms_per_frame(model, shape, warmup=1, repeats=3, device=device)
    metrics = {"model/params": complexity.count_params(model),
               "model/gflops": complexity.gflops(model, shape), "model/ms_per_frame": ms,
               "model/s_per_30_frames": 30 * ms / 1000}  # how the live-SR project judged it
    return metrics, {"model.input_shape": "x".join(map(str, shape)),
                     "model.frame_hw": "x".join(map(str, frame))}
