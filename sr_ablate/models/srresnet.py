"""SRResNet (Ledig et al. 2017) with the ablation study's knobs as keyword arguments."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """conv3x3 - [BN] - PReLU - conv3x3 - [BN], plus the identity. (B, C, h, w) -> same."""

    def __init__(self, channels: int, bn: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(channels)) if bn else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), norm(), nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1), norm(),
        )

    def forward(self, x):
        return x + self.body(x)


class SRResNet(nn.Module):
    """SRResNet: LR (B, in_channels, h, w) in [0, 1] -> SR (B, in_channels, h*s, w*s).

    Args:
        in_channels: 3 for RGB, 1 for Y. Default 3.
        channels: feature width. Default 64.
        blocks: number of residual blocks. Default 16.
        scale: upscaling factor, 2, 3 or 4. Default 2.
        global_skip: add the head's features to the body's output (the long skip). Default True.
        upsampler: ``pixelshuffle`` (sub-pixel conv stages) or ``bicubic`` (bicubic feature
            interpolation, then conv). Default ``pixelshuffle``.
        bn: batch normalisation inside the residual blocks. Default True.
        head_kernel: kernel size of the first and last conv; 9 as in the SRGAN paper. Default 3.
    """

    upsampled_input = False  # takes the LR image, not a bicubic-enlarged one

    def __init__(self, in_channels: int = 3, channels: int = 64, blocks: int = 16, scale: int = 2,
                 global_skip: bool = True, upsampler: str = "pixelshuffle", bn: bool = True,
                 head_kernel: int = 3):
        super().__init__()
        if upsampler not in ("pixelshuffle", "bicubic"):
            raise ValueError(f"upsampler must be 'pixelshuffle' or 'bicubic', got {upsampler!r}")
        if scale not in (2, 3, 4):
            raise ValueError(f"SRResNet supports scale 2, 3 or 4, got {scale}")
        for name, n in (("in_channels", in_channels), ("channels", channels), ("blocks", blocks)):
            if n < 1:
                raise ValueError(f"SRResNet needs {name} >= 1, got {n}")
        if head_kernel < 1 or head_kernel % 2 == 0:
            raise ValueError(f"SRResNet needs an odd head_kernel (the output keeps the input's "
                             f"size), e.g. 3 or 9; got {head_kernel}")
        self.in_channels, self.scale = in_channels, scale
        self.global_skip, self.upsampler = global_skip, upsampler
        pad = head_kernel // 2
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, head_kernel, padding=pad),
                                  nn.PReLU(channels))
        self.body = nn.Sequential(*[ResidualBlock(channels, bn) for _ in range(blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                       nn.BatchNorm2d(channels) if bn else nn.Identity())
        if upsampler == "pixelshuffle":
            # x4 is two x2 stages; x2 and x3 one stage each.
            factors = [2] * int(math.log2(scale)) if scale in (2, 4) else [3]
            self.up = nn.Sequential(*[
                nn.Sequential(nn.Conv2d(channels, channels * f * f, 3, padding=1),
                              nn.PixelShuffle(f), nn.PReLU(channels))
                for f in factors])
        else:
            self.up = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels))
        self.tail = nn.Conv2d(channels, in_channels, head_kernel, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)  # (B, C, h, w)
        out = self.body_tail(self.body(feat))
        if self.global_skip:
            out = out + feat
        if self.upsampler == "bicubic":
            out = F.interpolate(out, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.tail(self.up(out))  # (B, in_channels, h*s, w*s)
