"""Image-quality metrics as SR papers compute them (float64, one image at a time).

Inputs are single images (C, H, W) with values in [0, 255]; C is 3 (RGB) or 1 (gray / Y).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R BT.601 as MATLAB rgb2ycbcr (studio range): [Y, Cb, Cr] = offset + YCBCR @ rgb / 255,
# rgb in [0, 255]. The one copy of these coefficients (evaluation imports them).
LUMA = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64)
YCBCR = torch.stack([LUMA, torch.tensor([-37.797, -74.203, 112.0], dtype=torch.float64),
                     torch.tensor([112.0, -93.786, -18.214], dtype=torch.float64)])
Y_OFFSET = 16.0
YCBCR_OFFSET = torch.tensor([Y_OFFSET, 128.0, 128.0], dtype=torch.float64).view(3, 1, 1)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma as MATLAB ``rgb2ycbcr``: (3, H, W) in [0, 255] -> (1, H, W) in [16, 235].

    Kept as float (not rounded). A 1-channel input is returned unchanged: gray images are
    evaluated on their gray values, not squeezed into 16-235.
    """
    if img.shape[-3] == 1:
        return img.to(torch.float64)
    rgb = img.to(torch.float64) / 255.0
    coef = LUMA.to(img.device).view(3, 1, 1)
    return Y_OFFSET + (rgb * coef).sum(dim=-3, keepdim=True)


def shave(img: torch.Tensor, border: int) -> torch.Tensor:
    """Remove ``border`` pixels from every edge of (..., H, W)."""
    if not border:
        return img
    return img[..., border: img.shape[-2] - border, border: img.shape[-1] - border]


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 255.0) -> float:
    """PSNR in dB of two images (C, H, W) with values in [0, peak]; float64; inf when equal."""
    mse = torch.mean((a.to(torch.float64) - b.to(torch.float64)) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, peak: float = 255.0) -> float:
    """SSIM (Wang et al. 2004) of (C, H, W) images in [0, peak], averaged over channels.

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering (no padding),
    mean of the SSIM map, float64. Images must be at least 11x11.
    """
    x = a.to(torch.float64).unsqueeze(1)  # (C, 1, H, W): channels as a batch
    y = b.to(torch.float64).unsqueeze(1)
    g = _gaussian_window(device=x.device)
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(t):  # separable valid filtering
        return F.conv2d(F.conv2d(t, gh), gw)

    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=(1, 2, 3)).mean().item()
