"""VDSR (Kim et al. 2016): a deep plain 3x3 conv net learning the residual over bicubic."""
from __future__ import annotations

import math

import torch
from torch import nn


class VDSR(nn.Module):
    """VDSR: bicubic-enlarged (B, in_channels, H, W) in [0, 1] -> SR (B, in_channels, H, W).

    ``blocks`` 3x3 convolutions in all: in_channels -> channels, (blocks - 2) x
    channels -> channels, channels -> in_channels, each but the last followed by ReLU
    (blocks=1 is a single in_channels -> in_channels conv). Weights use He (Kaiming normal,
    fan-in) initialisation and zero biases, as in the paper. The receptive radius is
    ``blocks`` pixels (41x41 for 20 layers).

    Args:
        in_channels: 1 for Y (as in the paper), 3 for RGB. Default 1.
        channels: feature width. Default 64.
        blocks: number of conv layers, first and last included. Default 20.
        residual: output = input + network(input) (the global residual). Default True.
        scale: stored only (the input is already at HR size); any scale, so one model can
            train on several scales. Default 2.
    """

    upsampled_input = True  # takes the bicubic-enlarged image, at HR size

    def __init__(self, in_channels: int = 1, channels: int = 64, blocks: int = 20,
                 residual: bool = True, scale: float = 2):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"VDSR needs blocks >= 1 conv layers, got {blocks}")
        for name, n in (("in_channels", in_channels), ("channels", channels)):
            if n < 1:
                raise ValueError(f"VDSR needs {name} >= 1, got {n}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"VDSR needs a positive, finite scale, got {scale}")
        self.in_channels, self.scale, self.residual = in_channels, scale, residual
        widths = [in_channels] + [channels] * (blocks - 1) + [in_channels]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if i < blocks - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)  # (B, in_channels, H, W)
        return x + out if self.residual else out
