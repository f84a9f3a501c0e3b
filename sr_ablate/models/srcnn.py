"""SRCNN (Dong et al. 2014/2016): three convolutions on the bicubic-enlarged image."""
from __future__ import annotations

import math

import torch
from torch import nn


class SRCNN(nn.Module):
    """SRCNN: bicubic-enlarged (B, in_channels, H, W) in [0, 1] -> SR (B, in_channels, H, W).

    conv(k1, channels) - ReLU - conv(k2, mid_channels) - ReLU - conv(k3, in_channels).
    The convolutions are padded ('same', k // 2) so the output has the input's size; the
    original trained with valid convolutions on 33x33 patches and a 21x21 target. Weights use
    PyTorch's default initialisation (the paper drew them from N(0, 0.001)).

    Args:
        in_channels: 1 for Y (as in the paper), 3 for RGB. Default 1.
        channels: filters of the first layer (n1). Default 64.
        mid_channels: filters of the second layer (n2). Default 32.
        kernel_sizes: the three kernel sizes (f1, f2, f3), odd; [9, 1, 5] is SRCNN 9-1-5.
            Default [9, 5, 5].
        residual: add the input to the output, so the network learns the residual over
            bicubic. Default False.
        scale: stored only (the input is already at HR size); any scale. Default 2.
    """

    upsampled_input = True  # takes the bicubic-enlarged image, at HR size

    def __init__(self, in_channels: int = 1, channels: int = 64, mid_channels: int = 32,
                 kernel_sizes: list[int] = [9, 5, 5], residual: bool = False,  # noqa: B006
                 scale: float = 2):
        super().__init__()
        for name, n in (("in_channels", in_channels), ("channels", channels),
                        ("mid_channels", mid_channels)):
            if n < 1:
                raise ValueError(f"SRCNN needs {name} >= 1, got {n}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"SRCNN needs a positive, finite scale, got {scale}")
        if any(v != int(v) for v in kernel_sizes):
            raise ValueError(f"SRCNN needs whole kernel sizes, e.g. [9, 5, 5]; got "
                             f"{list(kernel_sizes)}")
        k = tuple(int(v) for v in kernel_sizes)
        if len(k) != 3 or any(v < 1 or v % 2 == 0 for v in k):
            raise ValueError(f"SRCNN needs three odd kernel sizes, e.g. [9, 5, 5]; got {list(k)}")
        self.in_channels, self.scale, self.residual = in_channels, scale, residual
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, k[0], padding=k[0] // 2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, mid_channels, k[1], padding=k[1] // 2), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, in_channels, k[2], padding=k[2] // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)  # (B, in_channels, H, W)
        return x + out if self.residual else out
