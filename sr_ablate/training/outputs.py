"""What a finished run leaves in MLflow besides metrics: the resolved config, per-image
metrics, a bicubic | SR | HR comparison crop, the final weights; and the model's cost
(parameters, GFLOPs, ms per frame)."""
from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from sr_ablate.core import complexity
from sr_ablate.core.degrade import bicubic_up, crop_multiple, to_uint8
from sr_ablate.core.evaluate import (
    Evaluator,
    bicubic_metric,
    colorize_y,
    model_channels,
    model_input,
    reference,
    to_metric,
)
from sr_ablate.core.metrics import psnr, shave
from sr_ablate.inference.trained import Trained
from sr_ablate.tracking import log_model
from sr_ablate.training import checkpoint


def crop_box(ev: Evaluator, crop: int = 96) -> tuple[int, int, int, int]:
    """(x, y, w, h) in HR pixels of the centre crop of the set's first image that the
    comparison image shows: ``crop`` pixels square, less when the image is smaller."""
    h, w = ev.images[0][1].shape[-2:]
    c = min(crop, h, w)
    return (w - c) // 2, (h - c) // 2, c, c


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
    x, y, w, h = crop_box(ev, crop)
    tiles = [to_uint8(t[:, y:y + h, x:x + w]).to(torch.uint8) for t in (bic, sr, gt)]
    return torch.cat(tiles, dim=-1)


def crop_scores(ev: Evaluator, crop: int = 96) -> tuple[dict[str, float], dict[str, str]]:
    """PSNR (dB) of the comparison crop of the SR output and of bicubic, scored as the
    evaluation scores whole images (the protocol's metric space, e.g. Y; ``ceil(scale)``
    pixels shaved from the crop's edges): metrics ``<set>/crop_psnr`` and
    ``<set>/crop_bicubic_psnr``; and tags naming the crop: ``comparison.image`` (the
    image's name in the set) and ``comparison.box`` (``x,y,w,h`` in HR pixels)."""
    (name, hr), out = ev.images[0], ev.last_outputs[0]
    x, y, w, h = box = crop_box(ev, crop)
    b, ref = math.ceil(ev.scale), reference(hr, ev.protocol)

    def score(img: torch.Tensor) -> float:
        return psnr(shave(img[:, y:y + h, x:x + w], b), shave(ref[:, y:y + h, x:x + w], b))
    metrics = {f"{ev.prefix}/crop_psnr": score(to_metric(out, hr, ev.protocol)),
               f"{ev.prefix}/crop_bicubic_psnr": score(bicubic_metric(hr, ev.scale, ev.protocol))}
    return metrics, {"comparison.image": name, "comparison.box": ",".join(map(str, box))}


def save_png(img: torch.Tensor, path: Path) -> None:
    arr = img.permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def log_outputs(log, cfg: DictConfig, model, evaluators: list[Evaluator], steps: int,
                ema=None) -> None:
    """Artifacts: resolved config, per-image metrics, comparison image (with the PSNR of its
    crops and tags naming it, ``crop_scores``), and (unless
    ``tracking.checkpoint=false``) the final weights, as ``checkpoints/final.pt`` and as the
    MLflow Model ``model``. With an ``ema`` (``training.ema.EMA``) the released weights are
    the average's: ``final.pt``'s ``model`` (what every loader takes), the MLflow Model;
    the raw weights stay in ``final.pt`` as ``model_raw``."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        with open(tmp / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["set", *evaluators[0].per_image[0]])
            writer.writeheader()
            for ev in evaluators:
                writer.writerows({"set": ev.prefix, **row} for row in ev.per_image)
        save_png(comparison_image(evaluators[0]), tmp / "comparison.png")
        scores, names = crop_scores(evaluators[0])
        log.set_tags(names)
        log.log_metrics(steps, scores)
        for name in ("config.yaml", "per_image.csv", "comparison.png"):
            log.log_artifact(tmp / name)
        if cfg.tracking.checkpoint:
            out = ema.model if ema is not None else model
            weights = {"model": out.state_dict(), "config": OmegaConf.to_container(
                cfg, resolve=True), "step": steps}
            if ema is not None:
                weights["model_raw"] = model.state_dict()
            checkpoint.save_atomic(weights, tmp / "final.pt")
            log.log_artifact(tmp / "final.pt", "checkpoints")
            # the same weights as an MLflow Model: load_model("runs:/<id>/model"), serving
            log_model(log, tmp / "final.pt", Trained.of(out, cfg.scale, log.run_id))


def complexity_metrics(model, cfg: DictConfig, device) -> tuple[dict[str, float], dict[str, str]]:
    """model/params, model/gflops and model/ms_per_frame at ``eval.frame``, and tags saying so.

    Beside the timing (the fastest of at least 5 passes and 0.2 s), how disturbed it was:
    ``model/ms_per_frame_spread`` (median pass / fastest - 1) and ``model/ms_per_frame_load``
    (part of the usable CPUs' time other processes took meanwhile, 0..1; Linux only); the
    report marks timings taken under load (``report.timings``)."""
    m = crop_multiple(cfg.scale)  # e.g. a 256 frame is measured as 255 at x1.5 (LR 170)
    frame = tuple(x - x % m for x in cfg.eval.frame)
    shape = complexity.model_input_shape(model, frame, model_channels(model))
    # 0.2 s at least: the load is read from /proc/stat, which counts in 1/100 s
    t = complexity.ms_per_frame(model, shape, warmup=1, repeats=5, device=device,
                                min_seconds=0.2)
    metrics = {"model/params": complexity.count_params(model),
               "model/gflops": complexity.gflops(model, shape),
               "model/ms_per_frame": t.ms_per_frame,
               "model/ms_per_frame_spread": t.spread,
               "model/s_per_30_frames": 30 * t.ms_per_frame / 1000}  # the live-SR project's
    if not math.isnan(t.load):
        metrics["model/ms_per_frame_load"] = t.load
    return metrics, {"model.input_shape": "x".join(map(str, shape)),
                     "model.frame_hw": "x".join(map(str, frame))}
