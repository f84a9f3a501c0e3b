"""Every model config builds, runs forward and backward with the right shape and no NaN; each
SRResNet knob, set through the config, does to the network what its name says."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MODEL_CONFIGS

from sr_ablate.core.complexity import count_params
from sr_ablate.training.job import instantiate_node


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_model_forward_backward(compose, name, scale):
    cfg = compose([f"model={name}", f"scale={scale}"])
    model = instantiate_node(cfg.model)
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


# SRResNet's knobs, each built through the config path (compose + instantiate_node) and judged by
# what the network does, not by its parameter count alone.

def srresnet(compose, *knobs, channels=8, blocks=2):
    """A small SRResNet from ``model=srresnet`` plus ``knobs``, as a run would build it."""
    cfg = compose(["model=srresnet", f"model.channels={channels}", f"model.blocks={blocks}",
                   *knobs])
    torch.manual_seed(0)
    return instantiate_node(cfg.model)


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def srresnet_params(c=8, blocks=2, bn=True, k=3, upsampler="pixelshuffle", scale=2) -> int:
    """SRResNet's parameters counted by hand from the paper's layout (PReLU: one slope per
    channel; BN: a scale and a shift per channel)."""
    bn_params = 2 * c if bn else 0
    head = conv(3, c, k) + c
    block = 2 * conv(c, c, 3) + c + 2 * bn_params
    body_tail = conv(c, c, 3) + bn_params
    if upsampler == "pixelshuffle":
        stages = [2, 2] if scale == 4 else [scale]
        up = sum(conv(c, c * f * f, 3) + c for f in stages)
    else:
        up = conv(c, c, 3) + c
    return head + blocks * block + body_tail + up + conv(c, 3, k)


def identity_path(m):
    """Set the weights so that every layer outside the residual body passes features through:
    the head copies the image into the first 3 channels, the body's last conv is zero (the
    body adds nothing), each upsampling conv copies each channel to all its sub-pixels, PReLU
    slopes are 1 and the tail reads the first 3 channels back. The output is then the image
    carried by the global skip through the upsampler alone - or zero without the skip."""
    k = m.head[0].kernel_size[0]
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for act in (x for x in m.modules() if isinstance(x, torch.nn.PReLU)):
            act.weight.fill_(1.0)
        for c in range(3):
            m.head[0].weight[c, c, k // 2, k // 2] = 1
            m.tail.weight[c, c, k // 2, k // 2] = 1
        for up in (x for x in m.up.modules() if isinstance(x, torch.nn.Conv2d)):
            per = up.out_channels // up.in_channels  # f*f sub-pixels per channel (1: bicubic)
            for c in range(up.in_channels):
                up.weight[c * per:(c + 1) * per, c, 1, 1] = 1
    return m.eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_global_skip_carries_the_head_features_past_the_body(compose, scale):
    """global_skip=true (the default) adds the head's features to the body's output: with the
    body silenced, the pixel-shuffle path turns them into the nearest-neighbour upscale of the
    input. global_skip=false from the config drops them: the same weights give zero."""
    x = torch.rand(2, 3, 6, 5)
    on = identity_path(srresnet(compose, f"scale={scale}"))
    off = identity_path(srresnet(compose, f"scale={scale}", "model.global_skip=false"))
    assert on.global_skip is True and off.global_skip is False
    with torch.no_grad():
        torch.testing.assert_close(on(x), F.interpolate(x, scale_factor=scale, mode="nearest"),
                                   atol=0, rtol=0)
        assert torch.equal(off(x), torch.zeros(2, 3, 6 * scale, 5 * scale))


def test_global_skip_from_the_config_adds_or_drops_the_head_features(compose):
    """Same (random) weights, global_skip from the config: the outputs differ by exactly what
    the skip adds, tail(up(body + head)) vs tail(up(body))."""
    on = srresnet(compose, "model.bn=false").eval()
    off = srresnet(compose, "model.bn=false", "model.global_skip=false").eval()
    off.load_state_dict(on.state_dict())
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        feat = on.head(x)
        body = on.body_tail(on.body(feat))
        torch.testing.assert_close(on(x), on.tail(on.up(body + feat)))
        torch.testing.assert_close(off(x), on.tail(on.up(body)))
        assert (on(x) - off(x)).abs().max() > 1e-3


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_upsampler_interpolates_instead_of_pixel_shuffle(compose, scale):
    """upsampler=bicubic has no PixelShuffle and enlarges the features bicubically: on the
    identity path its output is the bicubic upscale of the input, where pixelshuffle's is the
    nearest-neighbour one (one shuffle per x2 stage, one x3)."""
    bicubic = srresnet(compose, f"scale={scale}", "model.upsampler=bicubic")
    shuffle = srresnet(compose, f"scale={scale}")
    assert not any(isinstance(m, torch.nn.PixelShuffle) for m in bicubic.modules())
    assert [m.upscale_factor for m in shuffle.modules() if isinstance(m, torch.nn.PixelShuffle)] \
        == {2: [2], 3: [3], 4: [2, 2]}[scale]
    assert count_params(bicubic) == srresnet_params(upsampler="bicubic", scale=scale)
    assert count_params(shuffle) == srresnet_params(scale=scale)
    x = torch.rand(2, 3, 7, 6)
    with torch.no_grad():
        out = identity_path(bicubic)(x)
        assert out.shape == (2, 3, 7 * scale, 6 * scale)
        torch.testing.assert_close(out, F.interpolate(x, scale_factor=scale, mode="bicubic",
                                                      align_corners=False))
        assert (identity_path(shuffle)(x) - out).abs().max() > 1e-2


def test_bn_on_adds_batch_norm_that_behaves_differently_in_training(compose):
    """bn=true: a BatchNorm after each block conv and after the body's last conv, and the
    training-mode output (batch statistics) differs from the eval-mode one (running
    statistics); bn=false: no BatchNorm, and train and eval give the same output."""
    x = torch.rand(4, 3, 8, 8)
    for bn, count in ((True, 2 * 2 + 1), (False, 0)):
        m = srresnet(compose, f"model.bn={str(bn).lower()}")
        assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) == count
        assert count_params(m) == srresnet_params(bn=bn)
        with torch.no_grad():
            train, evaluated = m.train()(x), m.eval()(x)
        assert torch.equal(train, evaluated) is (not bn)


def test_head_kernel_9_widens_the_first_and_last_conv(compose):
    """head_kernel=9 (SRGAN) makes the first and the last conv 9x9 (padding 4: same size out);
    the convolutions in between stay 3x3."""
    m = srresnet(compose, "model.head_kernel=9")
    assert m.head[0].kernel_size == m.tail.kernel_size == (9, 9)
    assert m.head[0].padding == m.tail.padding == (4, 4)
    inner = [c for c in [*m.body.modules(), *m.body_tail.modules(), *m.up.modules()]
             if isinstance(c, torch.nn.Conv2d)]
    assert len(inner) == 2 * 2 + 1 + 1 and all(c.kernel_size == (3, 3) for c in inner)
    assert count_params(m) == srresnet_params(k=9)
    assert m(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    # one LR pixel changed reaches 4 HR pixels further out than with the 3x3 head and tail
    radius = {}
    for k in (3, 9):
        net = srresnet(compose, f"model.head_kernel={k}", "model.bn=false").eval()
        x = torch.rand(1, 3, 32, 32)
        y = x.clone()
        y[..., 16, 16] += 1
        with torch.no_grad():
            changed = (net(x) - net(y)).abs().sum((0, 1)) > 0
        rows = changed.any(1).nonzero()
        radius[k] = int(rows.max() - rows.min()) // 2
    # the 9x9 head adds 3 LR pixels (6 HR), the 9x9 tail 3 HR pixels
    assert radius[9] - radius[3] == 9


def test_blocks_sets_the_number_of_residual_blocks(compose):
    for blocks in (1, 8):
        m = srresnet(compose, blocks=blocks)
        assert len(m.body) == blocks
        assert count_params(m) == srresnet_params(blocks=blocks)


def test_default_srresnet_parameter_count(compose):
    """64 channels, 16 blocks, BN, 3x3 head and tail, x2 pixel shuffle: 1,375,235 parameters,
    counted by hand."""
    m = instantiate_node(compose(["model=srresnet"]).model)
    assert count_params(m) == srresnet_params(c=64, blocks=16) == 1375235
