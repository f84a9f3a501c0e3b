"""ESPCN (Shi et al. 2016): features on the LR grid, then depth-to-space; also rational scales."""
from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn


class ESPCN(nn.Module):
    """ESPCN: LR (B, in_channels, h, w) in [0, 1] -> SR (B, in_channels, h*s, w*s).

    conv5x5(channels) - act - conv3x3(mid_channels) - act - conv3x3(in_channels * p * p) -
    depth-to-space by p. An integer scale s uses p = s. A rational scale p/q (q <= 8, e.g.
    1.5 = 3/2, the live 1280x720 -> 1920x1080 model) first folds each q x q block into
    channels (space-to-depth, in_channels * q * q channels), so the convolutions run on an
    (h/q, w/q) grid; then h and w must be multiples of q (ValueError otherwise), and the
    output is (h*p/q, w*p/q).

    Args:
        in_channels: 3 for RGB, 1 for Y. Default 3.
        channels: width of the first (5x5) layer. Default 64.
        mid_channels: width of the second (3x3) layer. Default 32.
        act: ``tanh`` (as in the paper) or ``relu``. Default ``tanh``.
        scale: upscaling factor >= 1: an integer (2, 3, 4) or a ratio p/q with q <= 8
            (1.5). Default 2.
    """

    upsampled_input = False  # takes the LR image

    def __init__(self, in_channels: int = 3, channels: int = 64, mid_channels: int = 32,
                 act: str = "tanh", scale: float = 2):
        super().__init__()
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
        if act not in acts:
            raise ValueError(f"act must be 'tanh' or 'relu', got {act!r}")
        for name, n in (("in_channels", in_channels), ("channels", channels),
                        ("mid_channels", mid_channels)):
            if n < 1:
                raise ValueError(f"ESPCN needs {name} >= 1, got {n}")
        if not math.isfinite(scale):
            raise ValueError(f"ESPCN needs a finite scale, got {scale}")
        ratio = Fraction(scale).limit_denominator(8)
        if ratio < 1 or abs(float(ratio) - scale) > 1e-9:
            raise ValueError(f"ESPCN needs a scale >= 1 that is an integer or a ratio p/q with "
                             f"q <= 8 (e.g. 1.5); got {scale}")
        self.in_channels, self.scale = in_channels, scale
        self.p, self.q = ratio.numerator, ratio.denominator
        self.fold = nn.PixelUnshuffle(self.q)  # identity for integer scales
        self.body = nn.Sequential(
            nn.Conv2d(in_channels * self.q ** 2, channels, 5, padding=2), acts[act](),
            nn.Conv2d(channels, mid_channels, 3, padding=1), acts[act](),
            nn.Conv2d(mid_channels, in_channels * self.p ** 2, 3, padding=1),
        )
        self.shuffle = nn.PixelShuffle(self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.q or w % self.q:
            raise ValueError(f"ESPCN at scale {self.scale} needs input sides that are multiples "
                             f"of {self.q}; got {h}x{w}")
        feat = self.body(self.fold(x))  # (B, in_channels * p * p, h/q, w/q)
        return self.shuffle(feat)  # (B, in_channels, h*p/q, w*p/q)
