"""Upscaling pictures with a trained model: uint8 arrays in, uint8 arrays out.

What SR papers show is what comes out: a Y-channel model upscales the BT.601 luma (MATLAB
``rgb2ycbcr`` on uint8, as it was trained) and the chroma comes from the MATLAB-bicubic
upscale of the RGB image; gray images stay gray (an RGB model sees three equal channels and
its output goes back to gray with the normalised luma weights); an alpha channel is upscaled
bicubically. Rounding to uint8 is MATLAB's (``core.degrade.to_uint8``).

Large images are tiled when whole-image inference would not fit in the memory at hand, with
the pixels of whole-image inference to float rounding (``core.tiling``: after rounding to
uint8, about 1 value in 100,000 may differ by one level).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from sr_ablate import UserError
from sr_ablate.core.degrade import bicubic_up, to_uint8, upsampled_input
from sr_ablate.core.evaluate import colorize_y, to_gray
from sr_ablate.core.fp32 import exact_fp32
from sr_ablate.core.metrics import rgb_to_y
from sr_ablate.core.tiling import (
    bytes_per_input_pixel,
    largest_tile,
    receptive_radius,
    tiled_forward,
)
from sr_ablate.inference.trained import Trained

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_SHARE = 0.5  # of the free memory, what one forward pass may take before tiling
# Smaller tiles would be mostly context (SRResNet-16's radius is 36 px a side). A pass of this
# tile may take more than MEMORY_SHARE: the rest of the free memory is the margin for it.
MIN_TILE = 32


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's own count, else MemAvailable of /proc/meminfo."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def auto_tile(trained: Trained, shape: tuple[int, ...], device: torch.device,
              free: int | None = None, overlap: int | None = None) -> int:
    """0 (whole image) when a forward pass over input ``shape`` (B, C, h, w) fits in
    MEMORY_SHARE of the free memory, else the largest tile side (input pixels) whose pass
    *with its context* fits: tile + 2 x ``overlap`` on a side (None: the receptive radius,
    as ``tiled_forward`` takes it). At least MIN_TILE, even where that pass is larger."""
    per_px = bytes_per_input_pixel(trained.model, shape[1]) * shape[0]
    budget = MEMORY_SHARE * (free_memory(device) if free is None else free)
    if per_px * shape[-2] * shape[-1] <= budget:
        return 0
    if overlap is None:
        overlap = radius(trained, shape[1])
    side = math.isqrt(int(budget / per_px))  # the largest square pass that fits
    return max(MIN_TILE, largest_tile(trained.model, side, overlap))


def radius(trained: Trained, channels: int) -> int:
    """``receptive_radius`` of the network; UserError (one line) for one without a finite
    radius (a global operation), which tiles cannot reproduce without ``overlap=``."""
    try:
        return receptive_radius(trained.model, channels)
    except ValueError as e:
        why = str(e).replace("; ", ", ")  # one "; " in the line: before it the problem
        raise UserError(f"cannot tile {trained.source}: {why}; pass overlap=N (context pixels "
                        "per tile side) or tile=0") from None


def choose_tile(trained: Trained, h: int, w: int, batch: int = 1,
                overlap: int | None = None) -> int:
    """``auto_tile`` for a (h, w) picture, on the model's device: 0 or a tile side."""
    device = next(trained.model.parameters()).device
    if trained.upsampled_input:  # the network runs on the enlarged picture
        h, w = round(h * trained.scale), round(w * trained.scale)
    return auto_tile(trained, (batch, trained.channels, h, w), device, overlap=overlap)


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision} is not one of fp32, bf16, fp16")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision=fp16 needs a CUDA device; use precision=fp32 (or bf16)")


@exact_fp32()  # the memory and radius probes, the enlargement and the network
def forward(trained: Trained, x: torch.Tensor, tile: int | None = None,
            overlap: int | None = None, precision: str = "fp32") -> torch.Tensor:
    """The network on a batch of model inputs (B, channels, h, w) in [0, 255] float: returns
    (B, channels, h*s, w*s) float64 in [0, 255], not rounded. Pre-upsampling models get the
    bicubic-enlarged input rounded to uint8, as for a uint8 LR in training and evaluation.
    ``tile``: None chooses (``auto_tile``), 0 is whole-image, N tiles of N input pixels.
    ``precision`` fp32 is IEEE float32: autocast and TF32 off (``core.fp32.exact_fp32``; the
    caller's settings are back afterwards); bf16/fp16 autocast the network."""
    param = next(trained.model.parameters())
    device = param.device
    check_precision(precision, device)
    if trained.upsampled_input:
        x = upsampled_input(x.to(torch.float64), trained.scale, quantize=True)
    # float32 division by 255 is the float64 one rounded once (k/255 is never a tie): the
    # same input, in a third of the memory traffic of a video frame
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.to(torch.float64) / 255).float()
    if tile is None:
        tile = auto_tile(trained, tuple(x.shape), device, overlap=overlap)
    if tile and overlap is None:
        overlap = radius(trained, x.shape[1])
    dtype = PRECISIONS[precision]
    # fp32 even when called inside an autocast region, as evaluation is
    cast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
            else torch.autocast(device.type, enabled=False))
    with torch.no_grad(), cast:
        if tile:
            y = tiled_forward(trained.model, x, tile, overlap)
        else:
            y = trained.model(x.to(device))
    # float64 * 255 of a float32 is exact; in place: one 1080p batch is large
    return y.to("cpu", torch.float64).clamp_(0, 1).mul_(255)


def _planes(img: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H, W) / (H, W, 1|2|3|4) uint8 -> colour (1 or 3, H, W) uint8 and alpha (1, H, W)."""
    if img.dtype != np.uint8:
        raise UserError(f"the image is {img.dtype}, not uint8; give 8-bit pixel values 0-255")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4) or 0 in img.shape:
        raise UserError(f"an image is an H x W or H x W x C array with C = 1, 2, 3 or 4; got "
                        f"shape {tuple(img.shape)}")
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    if t.shape[0] in (2, 4):
        return t[:-1], t[-1:]
    return t, None


def upscale_array(trained: Trained, img: np.ndarray, tile: int | None = None,
                  overlap: int | None = None, precision: str = "fp32") -> np.ndarray:
    """Upscale one picture. ``img``: (H, W) gray, or (H, W, C) with C = 1 gray, 2 gray +
    alpha, 3 RGB, 4 RGBA; uint8. Returns uint8 of the same layout with H and W times the
    scale (rounded as MATLAB ``imresize`` sizes them). x1.5 needs even H and W."""
    color, alpha = _planes(img)
    c = color.shape[0]
    if trained.channels == 1 and c == 3:  # Y model: luma through the net, chroma bicubic
        y = to_uint8(rgb_to_y(color))
        out = colorize_y(forward(trained, y[None], tile, overlap, precision)[0],
                         bicubic_up(color.to(torch.float64), trained.scale))
    elif trained.channels == 3 and c == 1:  # RGB model on a gray picture: gray out
        out = to_gray(forward(trained, color.expand(3, -1, -1)[None], tile, overlap,
                              precision)[0])
    else:
        out = forward(trained, color[None], tile, overlap, precision)[0]
    if alpha is not None:
        out = torch.cat([out, bicubic_up(alpha.to(torch.float64), trained.scale)])
    arr = to_uint8(out).to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[..., 0] if img.ndim == 2 else arr


def upscale_frames(trained: Trained, frames: np.ndarray, tile: int | None = None,
                   precision: str = "fp32") -> np.ndarray:
    """A batch of RGB video frames (B, H, W, 3) uint8 -> (B, H*s, W*s, 3) uint8, in one
    forward pass per batch (tiled per ``auto_tile`` when the batch would not fit)."""
    rgb = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # uint8
    if trained.channels == 1:
        return np.stack([upscale_array(trained, f, tile, None, precision) for f in frames])
    out = forward(trained, rgb, tile, None, precision)
    return to_uint8(out).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
