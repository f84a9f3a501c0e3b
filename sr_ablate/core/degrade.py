"""Degradations: MATLAB-compatible bicubic ``imresize`` and ``modcrop``, in torch.

MATLAB's ``imresize(img, 1/s, 'bicubic')`` is what SR papers use to make LR images. It is the
Keys cubic (a = -0.5), antialiased when shrinking (kernel stretched by 1/s), with symmetric
(mirror) borders, applied separably. PIL's BICUBIC is a different filter, so we write it out.
"""
from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch

from sr_ablate.core.fp32 import exact_fp32

KERNELS = ("bicubic", "bilinear", "area", "nearest")


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, halves away from zero (2.5 -> 3, -2.5 -> -3), as MATLAB's
    ``round`` and its conversion to uint8 do; ``torch.round`` sends halves to even (2.5 -> 2).
    Exact for every float (no ``floor(x + 0.5)`` error just below a half)."""
    whole = torch.trunc(x)
    frac = x - whole  # exact: the fractional part of a float is representable
    return whole + torch.sign(frac) * (frac.abs() >= 0.5)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """The uint8 values MATLAB would store: rounded half away from zero, clamped to [0, 255],
    kept as float64. Every rounding to uint8 in sr_ablate goes through here
    (docs/protocol.md#rounding-to-uint8).

    Clamped first, then rounded: the same values (a half below 0 rounds to 0 or less, one
    above 255 to 255 or more), and on [0, 255] rounding half away from zero is the floor plus
    one where the exact fraction is >= 0.5: four passes instead of ``round_half_away``'s
    seven (a 1080p frame in 35 ms instead of 130)."""
    x = img.to(torch.float64).clamp(0, 255)
    whole = x.floor()
    return whole.add_(x.sub_(whole).ge_(0.5))  # x is clamp's copy: reused for the fraction


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic kernel with a = -0.5 (MATLAB's ``cubic``), support [-2, 2]."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def triangle(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``triangle`` (bilinear) kernel, support [-1, 1]."""
    return (1 - x.abs()).clamp(min=0)


def box(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``box`` kernel: 1 on [-0.5, 0.5). Antialiased, it averages whole blocks (area)."""
    return ((x >= -0.5) & (x < 0.5)).to(x.dtype)


# name -> (kernel, support width); "area" is the antialiased box: the mean of each s x s block.
_KERNEL_FNS = {"bicubic": (cubic, 4.0), "bilinear": (triangle, 2.0), "area": (box, 1.0)}


@lru_cache(maxsize=256)
def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True,
                  kernel_name: str = "bicubic"):
    """Weights (out_len, P) float64 and input indices (out_len, P) for one dimension.

    ``scale`` is out/in (< 1 shrinks). Follows MATLAB's ``contributions``: output pixel x
    (1-based) samples input coordinate u = x/scale + 0.5*(1 - 1/scale); out-of-range indices
    are mirrored (symmetric padding); weights of each row sum to 1.
    ``nearest`` takes input pixel floor((x - 1) / scale) (0-based; OpenCV's / TensorFlow's
    INTER_NEAREST, the top-left pixel of each block when shrinking by an integer).
    """
    if kernel_name == "nearest":
        idx = torch.floor(torch.arange(out_len, dtype=torch.float64) / scale).long()
        return torch.ones(out_len, 1, dtype=torch.float64), idx.clamp(max=in_len - 1)[:, None]
    base, width = _KERNEL_FNS[kernel_name]
    if scale < 1 and antialias:
        kernel = lambda d: scale * base(scale * d)  # noqa: E731 - stretched kernel
        width = width / scale
    else:
        kernel = base
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(dim=1, keepdim=True)
    # Symmetric padding: MATLAB maps indices through [1..n, n..1] cyclically.
    aux = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    idx = aux[torch.remainder(idx.long() - 1, 2 * in_len)]
    keep = (w != 0).any(dim=0)  # drop all-zero columns, as MATLAB does
    return w[:, keep].contiguous(), idx[:, keep].contiguous()


@lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True,
                  kernel_name: str = "bicubic") -> torch.Tensor:
    """``contributions`` as a dense (out_len, in_len) float64 matrix: resizing one dimension
    is then one matrix product (mirrored taps that hit the same pixel are summed)."""
    w, idx = contributions(in_len, out_len, scale, antialias, kernel_name)
    return torch.zeros(out_len, in_len, dtype=torch.float64).scatter_add_(1, idx, w)


def _resize_dim(img: torch.Tensor, dim: int, out_len: int, scale: float, antialias: bool,
                kernel: str):
    # A matrix product instead of gathering taps: ~10x faster on CPU, one kernel on GPU.
    m = resize_matrix(img.shape[dim], out_len, scale, antialias, kernel).to(img.device, img.dtype)
    if dim == img.dim() - 1:
        return img @ m.T
    return m @ img  # dim == -2: (out, in) @ (..., in, W)


@exact_fp32()  # a float32 image's matrix products in IEEE float32, never TF32
def imresize(img: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True, kernel: str = "bicubic") -> torch.Tensor:
    """MATLAB ``imresize(img, scale, kernel)`` of a float tensor (..., H, W), any device.

    Give ``scale`` (output = ceil(H*scale), ceil(W*scale)) or ``size`` (H_out, W_out).
    ``kernel``: bicubic (default), bilinear, area (box, antialiased) or nearest.
    Values are not clamped or rounded; integer inputs are converted to float64.
    Rows are resized first, then columns (MATLAB's order for equal scales). TF32 is off
    inside (``core.fp32.exact_fp32``).
    """
    if not img.is_floating_point():
        img = img.to(torch.float64)
    h, w = img.shape[-2:]
    if size is None:
        if scale is None:
            raise ValueError("imresize needs scale or size")
        size = (math.ceil(h * scale), math.ceil(w * scale))
        sh = sw = float(scale)
    else:
        sh, sw = size[0] / h, size[1] / w
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    out = _resize_dim(img, img.dim() - 2, size[0], sh, antialias, kernel)
    return _resize_dim(out, img.dim() - 1, size[1], sw, antialias, kernel)


def crop_multiple(scale: float) -> int:
    """The HR side must be a multiple of this for ``scale``: s for integers, 3 for 1.5."""
    return Fraction(scale).limit_denominator(64).numerator


def modcrop(img: torch.Tensor, scale: float) -> torch.Tensor:
    """Crop (..., H, W) to H, W multiples of ``crop_multiple(scale)`` from the top-left."""
    m = crop_multiple(scale)
    h, w = img.shape[-2:]
    return img[..., : h - h % m, : w - w % m]


def downscale(hr: torch.Tensor, scale: float, kernel: str = "bicubic",
              quantize: bool = True) -> torch.Tensor:
    """LR image from an HR image (..., H, W) in [0, 255], H, W multiples of ``crop_multiple``.

    MATLAB ``imresize(hr, 1/scale, kernel)``. ``quantize`` rounds to uint8 values
    (``to_uint8``), as when the LR is stored as a PNG (the BasicSR/EDSR protocol).
    Returns float64 (..., H/s, W/s).
    """
    h, w = hr.shape[-2:]
    lq = imresize(hr.to(torch.float64), size=(round(h / scale), round(w / scale)), kernel=kernel)
    return to_uint8(lq) if quantize else lq


def bicubic_down(hr: torch.Tensor, scale: float, quantize: bool = True) -> torch.Tensor:
    """``downscale`` with MATLAB bicubic, the SR papers' degradation."""
    return downscale(hr, scale, "bicubic", quantize)


def bicubic_up(lq: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB bicubic upscaling of (..., h, w) to (..., h*s, w*s); float, not rounded."""
    h, w = lq.shape[-2:]
    return imresize(lq, size=(round(h * scale), round(w * scale)))


def upsampled_input(lq: torch.Tensor, scale: float, quantize: bool) -> torch.Tensor:
    """The input of a pre-upsampling model (SRCNN, VDSR) for the LR ``lq`` (..., h, w) in
    [0, 255]: MATLAB bicubic enlargement to (..., h*s, w*s), clamped to [0, 255], and rounded
    (``to_uint8``) when ``quantize``, i.e. when the LR is uint8: MATLAB ``imresize`` returns
    uint8 for a uint8 image. Training pairs and evaluation both use it
    (docs/protocol.md#pre-upsampling-input). Float64."""
    up = bicubic_up(lq.to(torch.float64), scale)
    return to_uint8(up) if quantize else up.clamp(0, 255)
