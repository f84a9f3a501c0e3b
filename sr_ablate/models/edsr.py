"""EDSR baseline (Lim et al. 2017): residual blocks without batch norm, pixel-shuffle upsampler."""
from __future__ import annotations

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # in [0, 1]


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, scaled by ``res_scale``, plus the identity. (B, C, h, w)."""

    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.res_scale = res_scale
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """EDSR: LR (B, in_channels, h, w) in [0, 1] -> SR (B, in_channels, h*s, w*s).

    Subtract the DIV2K RGB mean (RGB only; a buffer, not a parameter), head conv, ``blocks``
    residual blocks, body-tail conv plus the global skip from the head, pixel-shuffle
    upsampler (x2, x3: one conv + shuffle; x4: two x2 stages; no activation), tail conv, add
    the mean back. Defaults are EDSR baseline (1,369,859 parameters at x2); the big EDSR is
    ``channels=256, blocks=32, res_scale=0.1``.

    Args:
        in_channels: 3 for RGB, 1 for Y (no mean shift). Default 3.
        channels: feature width. Default 64.
        blocks: number of residual blocks. Default 16.
        res_scale: factor on each block's residual branch (0.1 in the big EDSR). Default 1.0.
        scale: upscaling factor, 2, 3 or 4. Default 2.
    """

    upsampled_input = False  # takes the LR image

    def __init__(self, in_channels: int = 3, channels: int = 64, blocks: int = 16,
                 res_scale: float = 1.0, scale: int = 2):
        super().__init__()
        for name, n in (("in_channels", in_channels), ("channels", channels), ("blocks", blocks)):
            if n < 1:
                raise ValueError(f"EDSR needs {name} >= 1, got {n}")
        if not 0 < res_scale <= 1:
            raise ValueError(f"EDSR needs 0 < res_scale <= 1, got {res_scale}")
        if scale not in (2, 3, 4):
            raise ValueError(f"EDSR supports scale 2, 3 or 4, got {scale}")
        self.in_channels, self.scale = in_channels, int(scale)
        mean = DIV2K_RGB_MEAN if in_channels == 3 else (0.0,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, in_channels, 1, 1))
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels, res_scale) for _ in range(blocks)],
                                  nn.Conv2d(channels, channels, 3, padding=1))
        factors = [2, 2] if self.scale == 4 else [self.scale]
        self.up = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f))
            for f in factors])
        self.tail = nn.Conv2d(channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x - self.mean)  # (B, C, h, w)
        out = self.body(feat) + feat  # global skip
        return self.tail(self.up(out)) + self.mean  # (B, in_channels, h*s, w*s)
