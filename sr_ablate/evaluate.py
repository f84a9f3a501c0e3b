"""Evaluation on whole validation images with the papers' protocol (design notes section 2).

Protocol used here (``modern``, BasicSR/EDSR): the LR is the MATLAB-bicubic down-scaled HR,
quantised to uint8; the model output is quantised to uint8; PSNR/SSIM on the Y channel
(BT.601, float) with ``scale`` pixels shaved from each edge, per image, then averaged.
The bicubic baseline (MATLAB bicubic up-scaling of the same LR) is scored the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sr_ablate.data import Pair
from sr_ablate.degrade import bicubic_up
from sr_ablate.metrics import psnr, rgb_to_y, shave, ssim

PROTOCOL = {
    "eval.protocol": "modern",
    "eval.color_space": "y_bt601",
    "eval.crop": "scale",
    "eval.lr_source": "matlab_bicubic_on_the_fly_uint8",
    "eval.ssim": "gaussian11_sigma1.5_valid_float64",
}


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Round and clamp to uint8 values, kept as float64 (as saving a PNG would)."""
    return img.to(torch.float64).round().clamp(0, 255)


def score(out: torch.Tensor, gt: torch.Tensor, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of (C, H, W) images in [0, 255] on Y, ``scale`` pixels shaved."""
    y_out, y_gt = shave(rgb_to_y(out), scale), shave(rgb_to_y(gt), scale)
    return psnr(y_out, y_gt), ssim(y_out, y_gt)


@torch.no_grad()
def super_resolve(model: torch.nn.Module, lq: torch.Tensor, scale: int) -> torch.Tensor:
    """Run ``model`` on one whole LR image (C, h, w) in [0, 255]; returns (C, h*s, w*s) in [0, 255].

    Pre-upsampling models (``model.upsampled_input``) get the MATLAB-bicubic enlarged image.
    """
    device = next(model.parameters()).device
    x = lq.to(torch.float64)
    if getattr(model, "upsampled_input", False):
        x = quantize(bicubic_up(x, scale))
    out = model((x / 255).float().unsqueeze(0).to(device))[0]
    return out.clamp(0, 1).to("cpu", torch.float64) * 255


@dataclass
class Evaluator:
    """Callable ``eval_fn(model) -> {"val/psnr", "val/ssim", "val/bicubic_psnr", "val/bicubic_ssim"}``.

    After a call, ``per_image`` holds one dict per image and ``last_outputs`` the SR images.
    The bicubic baseline is computed once and reused.
    """
    pairs: list[Pair]
    scale: int
    prefix: str = "val"
    per_image: list[dict] = field(default_factory=list)
    last_outputs: list[torch.Tensor] = field(default_factory=list)
    _bicubic: list[tuple[float, float]] | None = None

    def bicubic(self) -> list[tuple[float, float]]:
        if self._bicubic is None:
            self._bicubic = [score(quantize(bicubic_up(p.lq.to(torch.float64), self.scale)),
                                   p.gt, self.scale) for p in self.pairs]
        return self._bicubic

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        rows, outs = [], []
        for pair, (bp, bs) in zip(self.pairs, self.bicubic()):
            out = quantize(super_resolve(model, pair.lq, self.scale))
            p, s = score(out, pair.gt, self.scale)
            rows.append({"image": pair.name, "psnr": p, "ssim": s,
                         "bicubic_psnr": bp, "bicubic_ssim": bs})
            outs.append(out)
        model.train(was_training)
        self.per_image, self.last_outputs = rows, outs
        n = len(rows)
        return {f"{self.prefix}/{k}": sum(r[k] for r in rows) / n
                for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
