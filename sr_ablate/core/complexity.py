"""Model cost: parameters, forward GFLOPs and milliseconds per frame.

Every figure is for **one frame at the size the model takes**: the LR image for LR-input models,
the HR-sized bicubic-enlarged image for ``upsampled_input`` models. ``model_input_shape`` turns
an HR frame size into that shape, so models of both kinds are compared at the same output size.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def model_input_shape(model: nn.Module, hr_hw: tuple[int, int],
                      in_channels: int) -> tuple[int, int, int, int]:
    """(1, C, h, w) the model takes to produce an HR frame of ``hr_hw`` = (H, W).

    ``upsampled_input`` models take (1, C, H, W); LR-input models take
    (1, C, round(H / scale), round(W / scale)), e.g. 1080x1920 at scale 1.5 -> 720x1280.
    """
    hr_h, hr_w = hr_hw
    if getattr(model, "upsampled_input", False):
        return (1, in_channels, hr_h, hr_w)
    return (1, in_channels, round(hr_h / model.scale), round(hr_w / model.scale))


def _input(model: nn.Module, input_shape: tuple, device=None) -> torch.Tensor:
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    if device is None:
        device = param.device if param is not None else "cpu"
    return torch.rand(input_shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def gflops(model: nn.Module, input_shape: tuple) -> float:
    """Forward GFLOPs (1e9 floating-point operations) for one input of ``input_shape``.

    ``input_shape`` is what the model takes, (1, C, H, W): the LR size for LR-input models,
    the HR size for ``upsampled_input`` ones (see ``model_input_shape``). Counted in eval mode
    under no_grad with ``torch.utils.flop_counter.FlopCounterMode``: a multiply-add is 2 FLOPs;
    only matmul/convolution-type ops are counted (not biases, activations, normalisation,
    additions or interpolation), which is the convention of SR papers' FLOP tables.
    """
    x = _input(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def ms_per_frame(model: nn.Module, input_shape: tuple, warmup: int = 2, repeats: int = 5,
                 device: str | torch.device | None = None) -> float:
    """Median wall-clock milliseconds of one forward pass on an input of ``input_shape``.

    ``input_shape`` as in ``gflops`` (LR size for LR-input models, HR size for
    ``upsampled_input`` ones). Eval mode, ``torch.inference_mode``, ``warmup`` untimed passes,
    then the median of ``repeats`` timed ones; on CUDA each pass is bracketed by
    ``torch.cuda.synchronize()``. ``device``: where to time (default: the model's device); a
    copy of the model is moved there, the model itself is left where it is.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    param = next(model.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else here
    net = model if device == here else copy.deepcopy(model).to(device)
    x = _input(net, input_shape, device)
    cuda = device.type == "cuda"
    was_training = net.training
    net.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                if cuda:
                    torch.cuda.synchronize(device)
                t = time.perf_counter()
                net(x)
                if cuda:
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append((time.perf_counter() - t) * 1e3)
    finally:
        net.train(was_training)
    return statistics.median(times)
