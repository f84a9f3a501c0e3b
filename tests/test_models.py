"""Every model config builds, runs forward and backward with the right shape and no NaN."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import MODEL_CONFIGS


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_model_forward_backward(compose, name, scale):
    cfg = compose([f"model={name}", f"scale={scale}"])
    model = instantiate(cfg.model)
    c = cfg.model.get("in_channels", 3)
    h, w = 12, 10
    x = torch.rand(2, c, h, w)
    if model.upsampled_input:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic")
    y = model(x)
    assert y.shape == (2, c, h * scale, w * scale)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("knob", ["model.upsampler=bicubic",
                                  "model.bn=false", "model.head_kernel=9", "model.blocks=8"])
def test_srresnet_knobs_change_the_network(compose, knob):
    base = instantiate(compose(["model=srresnet"]).model)
    other = instantiate(compose(["model=srresnet", knob]).model)
    x = torch.rand(1, 3, 8, 8)
    assert other(x).shape == base(x).shape == (1, 3, 16, 16)
    assert (sum(p.numel() for p in base.parameters())
            != sum(p.numel() for p in other.parameters()))


def test_global_skip_is_used(compose):
    """Zeroing the body changes the output only through the skip when global_skip is on."""
    m = instantiate(compose(["model.bn=false", "model.blocks=1"]).model).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        for p in list(m.body.parameters()) + list(m.body_tail.parameters()):
            p.zero_()
        with_skip = m(x)
        m.global_skip = False
        without = m(x)
    assert not torch.allclose(with_skip, without)
