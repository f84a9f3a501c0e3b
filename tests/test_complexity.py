"""Parameter counts, FLOPs against hand counts, timing, and the input size each model takes."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import MODEL_CONFIGS
from hydra.utils import instantiate

from sr_ablate.core.complexity import count_params, gflops, model_input_shape, ms_per_frame
from sr_ablate.models import SRResNet


class Stub(torch.nn.Module):
    """A 3x3 conv standing in for a model of either input kind at any scale."""

    def __init__(self, scale: float, upsampled_input: bool):
        super().__init__()
        self.scale, self.upsampled_input = scale, upsampled_input
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_count_params_is_the_sum_of_numels():
    model = SRResNet(channels=8, blocks=2)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_params(torch.nn.Conv2d(3, 8, 3)) == 8 * 3 * 9 + 8


def test_gflops_of_one_conv_is_the_hand_count():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert gflops(conv, (1, 3, 10, 10)) == pytest.approx(2 * 8 * 3 * 9 * 10 * 10 / 1e9, rel=1e-12)


def test_gflops_grow_linearly_with_blocks():
    """Each residual block adds two 64->64 3x3 convs on the LR grid."""
    shape = (1, 3, 12, 16)
    g = {b: gflops(SRResNet(blocks=b), shape) for b in (2, 4, 8)}
    per_block = 2 * (2 * 64 * 64 * 9 * 12 * 16) / 1e9
    assert g[4] - g[2] == pytest.approx(2 * per_block, rel=1e-9)
    assert g[8] - g[4] == pytest.approx(4 * per_block, rel=1e-9)


def test_gflops_leave_the_mode_alone():
    model = SRResNet(channels=8, blocks=1).train()
    gflops(model, (1, 3, 8, 8))
    assert model.training


def test_ms_per_frame_is_a_positive_time():
    model = SRResNet(channels=8, blocks=1).train()
    ms = ms_per_frame(model, (1, 3, 16, 16), warmup=1, repeats=3)
    assert ms > 0 and math.isfinite(ms)  # a wall-clock time: no exact value to expect
    assert model.training
    with pytest.raises(ValueError):
        ms_per_frame(model, (1, 3, 16, 16), repeats=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ms_per_frame_on_cuda_leaves_the_model_on_cpu():
    model = SRResNet(channels=8, blocks=1)
    assert ms_per_frame(model, (1, 3, 32, 32), device="cuda") > 0
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("scale, upsampled, expected", [
    (2, False, (1, 3, 540, 960)),
    (4, False, (1, 3, 270, 480)),
    (3, False, (1, 3, 360, 640)),
    (1.5, False, (1, 3, 720, 1280)),  # 1280x720 -> 1920x1080
    (2, True, (1, 3, 1080, 1920)),
])
def test_model_input_shape(scale, upsampled, expected):
    assert model_input_shape(Stub(scale, upsampled), (1080, 1920), 3) == expected


def conv_gflops(model, shape) -> float:
    """GFLOPs by hand: every Conv2d call of one forward pass costs 2 x (its output elements) x
    (input channels per group) x (kernel area) - a multiply-add is 2 FLOPs, biases free."""
    total = 0

    def count(m, _, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.rand(shape))
    finally:
        for h in hooks:
            h.remove()
    return total / 1e9


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_takes_its_input_shape(compose, name):
    """The shape model_input_shape gives makes the model produce the HR frame; its GFLOPs are
    the hand count of its convolutions at that shape (a recurrent conv counted per call)."""
    cfg = compose([f"model={name}", "scale=2"])
    small = [f"model.{k}={v}" for k, v in {"channels": 8, "blocks": 1}.items() if k in cfg.model]
    cfg = compose([f"model={name}", "scale=2", *small])
    model = instantiate(cfg.model).eval()
    c = cfg.model.get("in_channels", 3)
    shape = model_input_shape(model, (24, 32), c)
    assert shape == ((1, c, 24, 32) if model.upsampled_input else (1, c, 12, 16))
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (1, c, 24, 32)
    assert gflops(model, shape) == pytest.approx(conv_gflops(model, shape), rel=1e-12)
