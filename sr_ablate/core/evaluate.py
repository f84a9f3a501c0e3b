"""Evaluation on whole images with the papers' protocols (design notes section 2).

Two protocols (``eval.protocol``), both on whole images, ``scale`` pixels shaved from each
edge, PSNR (peak 255) and SSIM per image in float64, then averaged over images:

- ``modern`` (BasicSR/EDSR): degrade the RGB image, round the LR to uint8, round the output
  to uint8, convert both to Y (BT.601, float) at metric time.
- ``classic`` (the MATLAB code behind the bicubic/SRCNN/VDSR tables): convert the HR image to
  Y first, rounded to uint8 (``rgb2ycbcr`` on uint8), degrade and upscale in floating point
  (the LR is *not* rounded), round the output to uint8, compare with the HR Y.
  RGB models get the float (unrounded) RGB LR; their output is rounded, then converted to Y.

Rounding to uint8 is MATLAB's, halves away from zero (``core.degrade.to_uint8``). Pre-upsampling
models (SRCNN, VDSR) get the bicubic-enlarged LR, rounded to uint8 exactly when the LR is
(``modern``), as their training pairs are (docs/protocol.md#pre-upsampling-input).

``eval.color=rgb`` scores the RGB channels instead of Y. Gray images are scored on their gray
values (never squeezed into 16-235); an RGB model sees them as 3 equal channels and its
output is turned back to gray with the normalised luma weights.
The bicubic baseline (MATLAB bicubic up-scaling of the same LR) is scored the same way.

Everything here runs in IEEE float32/float64 whatever the training precision: autocast off
around the model, and TF32 off for the model, the bicubic baseline and the metrics
(``core.fp32.exact_fp32``; the caller's settings are back afterwards).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sr_ablate.core.degrade import bicubic_up, downscale, to_uint8, upsampled_input
from sr_ablate.core.digest import sha256_file
from sr_ablate.core.fp32 import exact_fp32
from sr_ablate.core.metrics import LUMA, YCBCR, YCBCR_OFFSET, psnr, rgb_to_y, shave, ssim
from sr_ablate.core.tiling import tiled_forward


@dataclass(frozen=True)
class Protocol:
    """How an evaluation is done; ``tags()`` is what runs record to be comparable."""
    name: str = "modern"     # modern | classic
    color: str = "y"         # y | rgb
    kernel: str = "bicubic"  # LR degradation of the evaluation images
    ssim_impl: str = "gaussian11_sigma1.5_valid_float64"

    @property
    def uint8_lr(self) -> bool:
        """Whether the LR (and a pre-upsampling model's enlarged input) is rounded to uint8."""
        return self.name == "modern"

    def tags(self) -> dict[str, str]:
        lr = "uint8" if self.uint8_lr else "float"
        return {"eval.protocol": self.name, "eval.color_space": f"{self.color}_bt601"
                if self.color == "y" else "rgb", "eval.crop": "scale",
                "eval.lr_source": f"matlab_{self.kernel}_on_the_fly_{lr}",
                "eval.ssim": self.ssim_impl}


def colorize_y(y: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """RGB (3, H, W) float64 with the luma ``y`` (1, H, W), BT.601 studio range [16, 235]
    as ``rgb_to_y``, and the chroma (Cb, Cr) of ``rgb`` (3, H, W) in [0, 255]: a Y-channel
    model's output in colour, as papers show it (MATLAB rgb2ycbcr then ycbcr2rgb).
    Not rounded or clamped: values can leave [0, 255] where Y and chroma disagree."""
    m, off = YCBCR.to(rgb.device), YCBCR_OFFSET.to(rgb.device)
    ycc = torch.einsum("ij,jhw->ihw", m, rgb.to(torch.float64) / 255) + off
    ycc = torch.cat([y.to(ycc), ycc[1:]])
    return 255 * torch.einsum("ij,jhw->ihw", torch.linalg.inv(m), ycc - off)


def to_gray(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, H, W) with luma weights normalised to sum 1 (equal channels stay)."""
    w = (LUMA / LUMA.sum()).to(img.device).view(3, 1, 1)
    return (img.to(torch.float64) * w).sum(dim=-3, keepdim=True)


def reference(hr: torch.Tensor, p: Protocol) -> torch.Tensor:
    """The HR image (C, H, W) uint8 in the protocol's metric space, float64."""
    if p.color == "rgb" or hr.shape[0] == 1:
        return hr.to(torch.float64)
    y = rgb_to_y(hr)
    return to_uint8(y) if p.name == "classic" else y


def model_input(hr: torch.Tensor, scale: float, p: Protocol, channels: int) -> torch.Tensor:
    """The LR image (channels, h, w) in [0, 255] float64 that the model gets for ``hr``."""
    src = hr.to(torch.float64)
    if channels == 1 and hr.shape[0] == 3:
        src = to_uint8(rgb_to_y(hr))  # Y models: MATLAB rgb2ycbcr on uint8
    elif channels == 3 and hr.shape[0] == 1:
        src = src.expand(3, -1, -1)
    return downscale(src, scale, p.kernel, quantize=p.uint8_lr)


def to_metric(out: torch.Tensor, hr: torch.Tensor, p: Protocol) -> torch.Tensor:
    """Model/bicubic output (C, H, W) in [0, 255] -> the protocol's metric space."""
    out = to_uint8(out)
    if hr.shape[0] == 1 and out.shape[0] == 3:
        out = to_uint8(to_gray(out))
    if p.color == "y":
        return rgb_to_y(out)
    return out


def bicubic_metric(hr: torch.Tensor, scale: float, p: Protocol) -> torch.Tensor:
    """The bicubic baseline of ``hr`` (C, H, W) uint8 in the protocol's metric space. It is
    the protocol's own pipeline, whatever a model takes: classic Y works on the rounded Y;
    otherwise the image's own channels."""
    base = 1 if (p.name == "classic" and p.color == "y") else hr.shape[0]
    return to_metric(bicubic_up(model_input(hr, scale, p, base), scale), hr, p)


def score(out: torch.Tensor, ref: torch.Tensor, scale: float) -> tuple[float, float]:
    """(PSNR, SSIM) of two metric-space images with ``ceil(scale)`` pixels shaved."""
    b = int(-(-scale // 1))
    a, r = shave(out, b), shave(ref, b)
    return psnr(a, r), ssim(a, r)


@torch.no_grad()
@exact_fp32()
def super_resolve(model: torch.nn.Module, lq: torch.Tensor, scale: float,
                  tile: int = 0, quantize: bool = True) -> torch.Tensor:
    """Run ``model`` on one whole LR image (C, h, w) in [0, 255]; returns (C, H, W) in [0, 255].

    Pre-upsampling models (``model.upsampled_input``) get the MATLAB-bicubic enlarged image,
    rounded to uint8 when ``quantize`` (a uint8 LR), as their training pairs are
    (``upsampled_input``). ``tile`` > 0 runs tiles of that many input pixels (the whole-image
    output to float rounding: ``core.tiling``).
    """
    device = next(model.parameters()).device
    x = lq.to(torch.float64)
    if getattr(model, "upsampled_input", False):
        x = upsampled_input(x, scale, quantize)
    x = (x / 255).float().unsqueeze(0).to(device)
    # fp32 whatever the training precision, even when called inside an autocast region
    with torch.autocast(device.type, enabled=False):
        out = tiled_forward(model, x, tile)[0] if tile else model(x)[0]
    return out.float().clamp(0, 1).to("cpu", torch.float64) * 255


@dataclass
class Evaluator:
    """Callable ``evaluator(model) -> {"<prefix>/psnr", "<prefix>/ssim", "<prefix>/bicubic_psnr",
    "<prefix>/bicubic_ssim", "<prefix>/seconds"}`` over whole HR images.

    ``images``: (name, HR (C, H, W) uint8) pairs, modcropped, C = 3 or 1 (gray).
    After a call, ``per_image`` holds one dict per image and ``last_outputs`` the SR images
    in [0, 255] (model channels). The bicubic baseline is computed once per channel count.
    """
    images: list[tuple[str, torch.Tensor]]
    scale: float
    protocol: Protocol = Protocol()
    prefix: str = "val"
    tile: int = 0
    final: bool = False   # run once, after the last step (eval.final_sets), not at every eval
    per_image: list[dict] = field(default_factory=list)
    last_outputs: list[torch.Tensor] = field(default_factory=list)
    _cache: dict = field(default_factory=dict)

    @exact_fp32()
    def inputs(self, channels: int) -> list[tuple[torch.Tensor, torch.Tensor, float, float]]:
        """(LR input, reference, bicubic PSNR, bicubic SSIM) per image, for a model with
        ``channels`` input channels; computed once."""
        if channels not in self._cache:
            rows = []
            p = self.protocol
            for _, hr in self.images:
                lq = model_input(hr, self.scale, p, channels)
                ref = reference(hr, p)
                bic = bicubic_metric(hr, self.scale, p)
                rows.append((lq, ref, *score(bic, ref, self.scale)))
            self._cache[channels] = rows
        return self._cache[channels]

    @exact_fp32()  # one switch for the whole evaluation; super_resolve's nests inside it
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:  # back in its mode however evaluation ends (e.g. out of memory on a large image)
            rows, outs = self._run(model)
        finally:
            model.train(was_training)
        self.per_image, self.last_outputs = rows, outs
        return {**self.summary(rows), f"{self.prefix}/seconds": time.perf_counter() - t0}

    def _run(self, model: torch.nn.Module) -> tuple[list[dict], list[torch.Tensor]]:
        """Per-image rows and SR outputs of ``model`` (already in eval mode)."""
        rows, outs = [], []
        inputs = self.inputs(model_channels(model))
        for (name, hr), (lq, ref, bp, bs) in zip(self.images, inputs):
            out = super_resolve(model, lq, self.scale, self.tile, self.protocol.uint8_lr)
            p, s = score(to_metric(out, hr, self.protocol), ref, self.scale)
            rows.append({"image": name, "psnr": p, "ssim": s, "bicubic_psnr": bp,
                         "bicubic_ssim": bs})
            outs.append(out)
        return rows, outs

    def summary(self, rows: list[dict],
                keys=("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")) -> dict[str, float]:
        """Mean over images of each of ``keys``, as ``<prefix>/<key>``."""
        n = len(rows)
        return {f"{self.prefix}/{k}": sum(r[k] for r in rows) / n for k in keys}

    def bicubic_only(self, channels: int = 3) -> tuple[dict[str, float], list[dict]]:
        """The bicubic baseline alone (``model=bicubic``): metrics and per-image rows."""
        t0 = time.perf_counter()
        rows = [{"image": name, "psnr": bp, "ssim": bs} for (name, _), (_, _, bp, bs)
                in zip(self.images, self.inputs(channels))]
        out = {**self.summary(rows, ("psnr", "ssim")),
               f"{self.prefix}/seconds": time.perf_counter() - t0}
        return out, rows


def model_channels(model: torch.nn.Module) -> int:
    """Input channels of a model: its ``in_channels`` attribute, else its first Conv2d's."""
    if getattr(model, "in_channels", None):
        return model.in_channels
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    raise ValueError("cannot tell the model's input channels: no Conv2d found")


def files_sha256(paths: list[Path]) -> str:
    """One SHA-256 over the names and bytes of ``paths`` (sorted): identifies an evaluation set."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode() + b"\0" + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def fingerprint(protocol: Protocol, set_hashes: dict[str, str]) -> dict[str, str]:
    """Tags that make runs comparable: protocol, a hash per evaluation set, and
    ``eval.fingerprint`` over both (the scale is a design factor, not part of it)."""
    tags = {**protocol.tags(), **{f"eval.{name}.sha256": h for name, h in set_hashes.items()}}
    tags["eval.fingerprint"] = hashlib.sha256(
        json.dumps(tags, sort_keys=True).encode()).hexdigest()[:16]
    return tags
