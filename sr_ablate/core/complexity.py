"""Model cost: parameters, forward GFLOPs and milliseconds per frame.

Every figure is for **one frame at the size the model takes**: the LR image for LR-input models,
the HR-sized bicubic-enlarged image for ``upsampled_input`` models. ``model_input_shape`` turns
an HR frame size into that shape, so models of both kinds are compared at the same output size.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sr_ablate.core.cpuload import CpuLoad
from sr_ablate.core.fp32 import exact_fp32


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
        with torch.no_grad(), exact_fp32(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


@dataclass(frozen=True)
class Timing:
    """One timing of a forward pass and how disturbed it was.

    ``ms_per_frame``: the fastest of the timed passes (ms); ``spread``: median / fastest - 1
    (0.2 = the median pass took 20% longer); ``load``: the part of the usable CPUs' time other
    processes took while timing, in [0, 1] (``core.cpuload``; NaN off Linux); ``passes``: how
    many passes were timed; ``cores``: CPUs this process may use."""
    ms_per_frame: float
    spread: float
    load: float
    passes: int
    cores: int


def ms_per_frame(model: nn.Module, input_shape: tuple, warmup: int = 2, repeats: int = 5,
                 device: str | torch.device | None = None, min_seconds: float = 0.0) -> Timing:
    """Wall-clock milliseconds of one forward pass on an input of ``input_shape``: the fastest
    of the timed passes, with their spread and the machine's load meanwhile (``Timing``).

    ``input_shape`` as in ``gflops`` (LR size for LR-input models, HR size for
    ``upsampled_input`` ones). Eval mode, ``torch.inference_mode``, ``warmup`` untimed passes,
    then ``repeats`` timed ones, more while the timed passes took less than ``min_seconds``
    together (the load is read over that interval: /proc/stat counts in 1/100 s); on CUDA
    each pass is bracketed by ``torch.cuda.synchronize()``. ``device``: where to time
    (default: the model's device); a copy of the model is moved there, the model itself is
    left where it is. TF32 off, as in evaluation (``core.fp32.exact_fp32``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    param = next(model.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else here
    net = model if device == here else copy.deepcopy(model).to(device)
    x = _input(net, input_shape, device)
    cuda = device.type == "cuda"

    def forward() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        net(x)
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t) * 1e3

    was_training = net.training
    net.eval()
    times: list[float] = []
    try:
        # timed as evaluation and upscale run it: IEEE float32, no TF32
        with torch.inference_mode(), exact_fp32():
            for _ in range(warmup):
                forward()
            with CpuLoad() as load:
                while len(times) < repeats or sum(times) < 1e3 * min_seconds:
                    times.append(forward())
    finally:
        net.train(was_training)
    # the minimum, not the mean or median: other work only ever adds time to a pass, so the
    # fastest pass is the least disturbed estimate of what the model itself costs
    fastest = min(times)
    return Timing(ms_per_frame=fastest, spread=statistics.median(times) / fastest - 1,
                  load=load.share, passes=len(times), cores=load.cores)
