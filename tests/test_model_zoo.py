"""Model-specific facts of SRCNN, recurrent SRCNN, VDSR, ESPCN and EDSR: hand-counted parameters,
skips, weight sharing, shapes at x1.5 and integer scales, and configs that match signatures."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import MODEL_CONFIGS
from hydra.utils import get_class
from omegaconf import OmegaConf

from sr_ablate.config.schema import class_keys
from sr_ablate.core.complexity import count_params, model_input_shape
from sr_ablate.core.tiling import receptive_radius, tiled_forward
from sr_ablate.models import EDSR, ESPCN, SRCNN, SRCNNRNN, VDSR
from sr_ablate.training.job import instantiate_node


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    """Parameters of a k x k convolution."""
    return cin * cout * k * k + (cout if bias else 0)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_lists_every_kwarg_with_its_default(compose, name):
    """conf/model/<name>.yaml is the signature: same keys, same defaults, scale from the root."""
    node = compose([f"model={name}"]).model
    params = inspect.signature(get_class(node._target_).__init__).parameters
    keys = [k for k in class_keys(node) if not k.startswith("_")]
    assert sorted(keys) == sorted(p for p in params if p != "self")
    # beside them, the keys the training reads (schema.ROOT_READ), at their neutral values
    assert {k: node[k] for k in node if k not in keys and not k.startswith("_")} == {
        "init": None, "init_strict": True}
    assert OmegaConf.to_container(node)["scale"] == "${scale}"
    for key in keys:
        if key != "scale":
            want = params[key].default
            got = node[key]
            assert (list(got) if OmegaConf.is_list(got) else got) == want, key


@pytest.mark.parametrize("cls, kwargs", [
    (SRCNN, {"channels": 8, "mid_channels": 4}), (SRCNN, {"residual": True, "in_channels": 3}),
    (SRCNNRNN, {"channels": 8}), (SRCNNRNN, {"residual": False, "in_channels": 3}),
    (VDSR, {"channels": 8, "blocks": 5}), (VDSR, {"blocks": 1, "in_channels": 3}),
    (ESPCN, {"channels": 8, "act": "relu"}), (ESPCN, {"scale": 1.5, "in_channels": 1}),
    (EDSR, {"channels": 8, "blocks": 2}), (EDSR, {"in_channels": 1, "res_scale": 0.1}),
], ids=lambda v: v.__name__ if isinstance(v, type) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_attributes_and_finite_output(cls, kwargs):
    model = cls(**kwargs)
    c, s = model.in_channels, model.scale
    assert "upsampled_input" in vars(cls) and c == kwargs.get("in_channels", c)
    x = torch.rand(2, c, 12, 16)
    if cls.upsampled_input:
        x = F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)
    y = model(x)
    assert y.shape == (2, c, round(12 * s), round(16 * s))
    assert torch.isfinite(y).all()


# SRCNN ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes, k2", [("[9,5,5]", 5), ("[9,1,5]", 1)])
def test_srcnn_parameter_count(compose, sizes, k2):
    model = instantiate_node(compose(["model=srcnn", f"model.kernel_sizes={sizes}"]).model)
    hand = (1 * 64 * 81 + 64) + (64 * 32 * k2 * k2 + 32) + (32 * 1 * 25 + 1)
    assert count_params(model) == hand == {5: 57281, 1: 8129}[k2]


def test_srcnn_keeps_the_size_and_residual_adds_the_input():
    torch.manual_seed(0)
    plain = SRCNN()
    residual = SRCNN(residual=True)
    residual.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 33, 21)
    with torch.no_grad():
        body = plain(x)
        assert body.shape == x.shape
        torch.testing.assert_close(residual(x), x + body)


def test_srcnn_rejects_bad_kernel_sizes():
    for sizes in ([9, 5], [9, 4, 5]):
        with pytest.raises(ValueError, match="kernel sizes"):
            SRCNN(kernel_sizes=sizes)


# Recurrent SRCNN -----------------------------------------------------------------------------

def test_rnn_shares_weights_across_steps():
    counts = {t: count_params(SRCNNRNN(steps=t)) for t in (1, 4, 10)}
    hand = conv(1, 32, 3) + conv(32, 32, 3, bias=False) + conv(32, 1, 3)
    assert set(counts.values()) == {hand}
    assert sum(isinstance(m, torch.nn.Conv2d) for m in SRCNNRNN(steps=10).modules()) == 3


def test_rnn_is_the_unrolled_recurrence_and_depends_on_steps():
    torch.manual_seed(0)
    models = {t: SRCNNRNN(steps=t) for t in (1, 2, 4)}
    for m in models.values():
        m.load_state_dict(models[4].state_dict())
    x = torch.rand(2, 1, 32, 32)
    m = models[4]
    with torch.no_grad():
        h = torch.zeros(2, 32, 32, 32)
        for _ in range(4):
            h = torch.relu(m.w_x(x) + F.conv2d(h, m.w_h.weight, padding=1))
        torch.testing.assert_close(m(x), x + m.out(h))
        outs = {t: models[t](x) for t in models}
    assert not torch.allclose(outs[1], outs[2]) and not torch.allclose(outs[2], outs[4])
    assert receptive_radius(models[1].eval(), 1) + 3 == receptive_radius(m.eval(), 1) == 5


# VDSR ----------------------------------------------------------------------------------------

def test_vdsr_has_20_layers_he_init_and_a_global_residual(compose):
    torch.manual_seed(0)
    model = instantiate_node(compose(["model=vdsr"]).model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 19
    assert count_params(model) == conv(1, 64, 3) + 18 * conv(64, 64, 3) + conv(64, 1, 3) == 665921
    w = torch.cat([c.weight.flatten() for c in convs[1:-1]])
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.02)  # He, fan-in
    with torch.no_grad():
        convs[-1].weight.zero_()
        convs[-1].bias.zero_()
        x = torch.rand(1, 1, 16, 16)
        assert torch.equal(model(x), x)
    assert receptive_radius(VDSR(channels=4).eval(), 1) == 20


# ESPCN ---------------------------------------------------------------------------------------

def test_espcn_720p_to_1080p():
    torch.manual_seed(0)
    model = ESPCN(channels=8, mid_channels=8, scale=1.5).eval()
    assert (model.p, model.q) == (3, 2)
    assert model_input_shape(model, (1080, 1920), 3) == (1, 3, 720, 1280)
    with torch.no_grad():
        y = model(torch.rand(1, 3, 720, 1280))
    assert y.shape == (1, 3, 1080, 1920) and torch.isfinite(y).all()


def test_espcn_x15_tiles_exactly_and_needs_even_sides():
    torch.manual_seed(0)
    model = ESPCN(channels=8, mid_channels=8, scale=1.5).eval()
    x = torch.rand(1, 3, 40, 58)
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == (1, 3, 60, 87)
    for tile in (10, 16, 23):
        torch.testing.assert_close(tiled_forward(model, x, tile), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.rand(1, 3, 41, 58))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_espcn_integer_scales(compose, scale):
    model = instantiate_node(compose(["model=espcn", f"scale={scale}", "model.channels=8"]).model)
    assert (model.p, model.q) == (scale, 1)
    assert model(torch.rand(1, 3, 7, 9)).shape == (1, 3, 7 * scale, 9 * scale)
    assert count_params(model) == conv(3, 8, 5) + conv(8, 32, 3) + conv(32, 3 * scale ** 2, 3)


@pytest.mark.parametrize("scale", [1.3, 0.5])
def test_espcn_rejects_scales_it_cannot_do(scale):
    with pytest.raises(ValueError, match="scale"):
        ESPCN(scale=scale)


# EDSR ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_baseline_parameter_count(compose, scale):
    model = instantiate_node(compose(["model=edsr_baseline", f"scale={scale}"]).model)
    up = [conv(64, 64 * 4, 3)] * 2 if scale == 4 else [conv(64, 64 * scale ** 2, 3)]
    hand = conv(3, 64, 3) + 16 * 2 * conv(64, 64, 3) + conv(64, 64, 3) + sum(up) + conv(64, 3, 3)
    assert count_params(model) == hand
    if scale == 2:
        assert hand == 1369859  # "1.37M" in the EDSR paper


def test_edsr_mean_shift_and_res_scale():
    torch.manual_seed(0)
    model = EDSR(channels=8, blocks=2).eval()
    assert "mean" in dict(model.named_buffers()) and "mean" not in dict(model.named_parameters())
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
        mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1).expand(1, 3, 12, 10)
        torch.testing.assert_close(model(x), mean)  # the mean is added back at the output
        assert torch.equal(EDSR(in_channels=1).mean, torch.zeros(1, 1, 1, 1))
        # res_scale=0.5 halves each block's branch: the same as halving each block's last conv
        a, b = EDSR(channels=8, blocks=2, res_scale=0.5), EDSR(channels=8, blocks=2)
        b.load_state_dict(a.state_dict())
        unscaled = b(x)
        for block in b.body[:-1]:
            block.body[-1].weight.mul_(0.5)
            block.body[-1].bias.mul_(0.5)
        torch.testing.assert_close(a(x), b(x))
        assert (a(x) - unscaled).abs().max() > 1e-4  # and it does change the output


def test_edsr_rejects_other_scales():
    with pytest.raises(ValueError, match="scale 2, 3 or 4"):
        EDSR(scale=5)
