"""Training pairs: each HR image degraded once (MATLAB ``imresize``) into its model input.

Pairs are cached per process (``memo``), so the next jobs of a sweep start without decoding
and degrading again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sr_ablate import UserError
from sr_ablate.core.degrade import downscale, upsampled_input
from sr_ablate.data.images import load_images


@dataclass
class Pair:
    """One HR image ``gt`` (C, H, W) uint8 and its model input ``lq``: the LR (C, H/s, W/s)
    or, for pre-upsampling models, the bicubic-enlarged LR (C, H, W); uint8 or float."""
    name: str
    gt: torch.Tensor
    lq: torch.Tensor
    scale: float = 2


def make_pairs(images: list[tuple[str, torch.Tensor]], scale: float, kernel: str = "bicubic",
               quantize: bool = True, upsampled: bool = False,
               device: str | torch.device = "cpu") -> list[Pair]:
    """Degrade each HR image once (MATLAB ``imresize`` with ``kernel``, design notes section 2).

    ``upsampled``: for pre-upsampling models (SRCNN, VDSR) the input is the LR image enlarged
    back to HR size with MATLAB bicubic, computed on the whole image (no patch-border effects)
    by ``upsampled_input``, the function evaluation uses: rounded to uint8 with ``quantize``.
    ``device``: where the resizing runs (the training GPU: a large folder degrades in seconds);
    the pairs are kept on the CPU, where patches are cut.
    """
    pairs = []
    for name, gt in images:
        lq = downscale(gt.to(device), scale, kernel, quantize)
        if upsampled:
            lq = upsampled_input(lq, scale, quantize)
        lq = lq.to(torch.uint8) if quantize else lq.float()
        pairs.append(Pair(name, gt, lq.cpu(), scale))
    return pairs


_pairs: dict[tuple, list[Pair]] = {}


def memo(cache: dict, key: tuple, make, keep: int = 8):
    """``cache[key]``, made by ``make()`` on a miss. Images are decoded and degraded once
    per process, so the next jobs of a sweep start without that cost; at most ``keep``
    entries (a sweep over scales or degradations holds a few)."""
    if key not in cache:
        if len(cache) >= keep:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def files_key(paths: list[Path]) -> tuple:
    """Identifies a list of files as they are now (a changed file is a new key)."""
    return tuple((str(p), p.stat().st_mtime_ns) for p in paths)


def training_pairs(train: list[Path], *, scales: list[float], patch_size: int, color: str = "rgb",
          kernel: str = "bicubic", quantize: bool = True, upsampled: bool = False,
          device: str | torch.device = "cpu"):
    """Training pairs per scale {scale: [Pair]} from the HR files ``train``; ``color``: rgb |
    y for the training images."""
    pairs = {}
    for scale in scales:
        if (patch_size * scale) % 1:
            raise UserError(f"trainer.patch_size={patch_size} x scale={scale} is not a whole "
                            "number of HR pixels; use an even trainer.patch_size")
        hr = load_images(train, scale, color, min_size=int(patch_size * scale),
                         why=f"a training patch (trainer.patch_size={patch_size} x "
                             f"scale={scale:g})", fix="lower trainer.patch_size or remove the "
                             "image")
        key = (files_key(train), scale, color, kernel, quantize, upsampled)
        pairs[scale] = memo(_pairs, key, lambda hr=hr, scale=scale: make_pairs(
            hr, scale, kernel, quantize, upsampled, device))
    return pairs


