"""Recurrent SRCNN: one convolutional recurrence, unrolled for a fixed number of steps."""
from __future__ import annotations

import math

import torch
from torch import nn


class SRCNNRNN(nn.Module):
    """Recurrent SRCNN: bicubic-enlarged (B, in_channels, H, W) in [0, 1] -> same shape.

    h_t = ReLU(W_x * x + W_h * h_{t-1} + b) for t = 1..steps with h_0 = 0, where W_x
    (in_channels -> channels) and W_h (channels -> channels) are 3x3 convolutions whose weights
    are shared across the steps; the output is a 3x3 convolution of h_steps back to
    in_channels (plus the input when ``residual``). The parameter count does not depend on
    ``steps``; the receptive radius is steps + 1 pixels. Fully convolutional: trains on 32x32
    patches and runs on any size.

    Args:
        in_channels: 1 for Y, 3 for RGB. Default 1.
        channels: width of the hidden state. Default 32.
        steps: recurrence steps T (each applies W_h once more). Default 4.
        residual: add the input to the output (learn the residual over bicubic). Default True.
        scale: stored only (the input is already at HR size); any scale. Default 2.
    """

    upsampled_input = True  # takes the bicubic-enlarged image, at HR size

    def __init__(self, in_channels: int = 1, channels: int = 32, steps: int = 4,
                 residual: bool = True, scale: float = 2):
        super().__init__()
        for name, n in (("in_channels", in_channels), ("channels", channels), ("steps", steps)):
            if n < 1:
                raise ValueError(f"SRCNNRNN needs {name} >= 1, got {n}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"SRCNNRNN needs a positive, finite scale, got {scale}")
        self.in_channels, self.scale = in_channels, scale
        self.steps, self.residual = steps, residual
        self.w_x = nn.Conv2d(in_channels, channels, 3, padding=1)  # carries the bias b
        self.w_h = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.out = nn.Conv2d(channels, in_channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drive = self.w_x(x)  # (B, channels, H, W): W_x x + b, the same at every step
        h = self.act(drive)  # t = 1: W_h h_0 = 0
        for _ in range(self.steps - 1):
            h = self.act(drive + self.w_h(h))
        out = self.out(h)  # (B, in_channels, H, W)
        return x + out if self.residual else out
