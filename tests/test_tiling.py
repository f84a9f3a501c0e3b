"""Tiled inference gives the whole-image pixels for every model config; the radius is measured."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MODEL_CONFIGS
from hydra.errors import InstantiationException

from sr_ablate.core.tiling import receptive_radius, tiled_forward
from sr_ablate.data import builtin_dir, read_image
from sr_ablate.training.job import instantiate_node

ATOL = 1e-5
# Shrink the models that have these keys, to keep the file fast.
SMALL = {"channels": 16, "blocks": 2}


def build(compose, overrides: list[str]):
    """A small eval-mode model of the composed config, with non-trivial batch-norm statistics."""
    cfg = compose(overrides)
    shrink = [f"model.{k}={v}" for k, v in SMALL.items()
              if k in cfg.model and not any(o.startswith(f"model.{k}=") for o in overrides)]
    if shrink:
        cfg = compose(overrides + shrink)
    torch.manual_seed(0)
    try:
        model = instantiate_node(cfg.model)
    except InstantiationException as e:  # the constructor refused, e.g. an unsupported scale
        if not isinstance(e.__cause__, ValueError):
            raise
        pytest.skip(f"{' '.join(overrides)} does not build: {e.__cause__}")
    for m in model.modules():  # a trained model's BN is not the identity; the tiles must cope
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval(), cfg.model.get("in_channels", 3)


def photo(model, channels: int) -> torch.Tensor:
    """A real 40x56 LR crop in [0, 1], plus its mirror image: (2, C, h, w) as the model takes it."""
    img = read_image(builtin_dir() / "astronaut.png", "y" if channels == 1 else "rgb")
    lq = img[:, 180:220, 200:256].float() / 255
    x = torch.stack([lq, lq.flip(-1)])
    if model.upsampled_input:
        x = F.interpolate(x, scale_factor=model.scale, mode="bicubic", align_corners=False)
    return x


def whole(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_equals_whole(compose, name, scale):
    model, c = build(compose, [f"model={name}", f"scale={scale}"])
    x = photo(model, c)
    ref = whole(model, x)
    # Tiles in LR pixels: 16 (3 x 4 tiles), 23 (does not divide 40 or 56), bigger than the image.
    unit = model.scale if model.upsampled_input else 1
    for tile in (16, 23, 100):
        out = tiled_forward(model, x, tile * unit)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0, msg=f"tile {tile * unit}")


@pytest.mark.parametrize("knobs", [
    ["scale=2", "model.upsampler=bicubic"],
    ["scale=3", "model.upsampler=bicubic"],  # x3 bicubic has a phase with zero-weight taps
    ["scale=4", "model.upsampler=bicubic", "model.global_skip=false"],
    ["scale=2", "model.global_skip=false"],
    ["scale=3", "model.head_kernel=9", "model.bn=false"],
], ids=lambda k: ",".join(k))
def test_srresnet_knobs_tile_exactly(compose, knobs):
    """Bicubic feature interpolation clamps at a tile edge: the measured radius must cover it."""
    model, c = build(compose, ["model=srresnet", *knobs])
    x = photo(model, c)[:1]
    torch.testing.assert_close(tiled_forward(model, x, 16), whole(model, x), atol=ATOL, rtol=0)


class Bicubic(torch.nn.Module):
    """Only the feature interpolation of ``upsampler=bicubic``: 4 taps, clamped at the border."""
    upsampled_input = False

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_interpolation_needs_its_taps(scale):
    """A tile edge clamps the interpolation's taps; an overlap of the measured radius hides it."""
    model = Bicubic(scale)
    x = photo(model, 3)[:1]
    assert receptive_radius(model) == 2
    torch.testing.assert_close(tiled_forward(model, x, 16), whole(model, x), atol=ATOL, rtol=0)
    assert (tiled_forward(model, x, 16, overlap=1) - whole(model, x)).abs().max() > 100 * ATOL


class Fractional(torch.nn.Module):
    """An LR-input x1.5 model (1280x720 -> 1920x1080): conv, bicubic x1.5, conv."""
    upsampled_input, scale = False, 1.5

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.tail = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(F.interpolate(self.head(x), scale_factor=1.5, mode="bicubic"))


@pytest.mark.parametrize("hw", [(40, 56), (41, 57), (7, 9)])
def test_fractional_scale_tiles_on_whole_pixels(hw):
    """Tiles start on even LR pixels (3 HR pixels) so every tile keeps the interpolation phase."""
    torch.manual_seed(0)
    model = Fractional().eval()
    x = torch.rand(1, 3, *hw)
    ref = whole(model, x)
    for tile in (5, 16, 23):
        torch.testing.assert_close(tiled_forward(model, x, tile), ref, atol=ATOL, rtol=0)


def test_bicubic_upsampler_widens_the_radius(compose):
    """2 blocks, LR pixels: pixelshuffle = head 1 + blocks 4 + body tail 1 + sub-pixel conv 1
    + HR tail 1 px (half an LR pixel, rounded up) = 8; bicubic = head 1 + blocks 4 + body tail
    1 + the interpolation's 2 taps + the HR up conv and tail 1 px each (one LR pixel) = 9."""
    pixel, _ = build(compose, ["model=srresnet"])
    bicubic, _ = build(compose, ["model=srresnet", "model.upsampler=bicubic"])
    assert (receptive_radius(pixel), receptive_radius(bicubic)) == (8, 9)


def test_too_small_overlap_differs(compose):
    """Overlap 0 leaves visible seams on a deep model: the equality tests can fail."""
    model, c = build(compose, ["model=srresnet", "model.blocks=8"])
    r = receptive_radius(model, c)
    assert r == 1 + 8 * 2 + 1 + 1 + 1  # head, 8 blocks, body tail, up conv, HR tail (rounded)
    x = photo(model, c)  # 40 x 56: tiles of 32 put seams at row 32 and column 32
    diff = (tiled_forward(model, x, 32, overlap=0) - whole(model, x)).abs()
    assert diff.max() > 1e-2
    far = (32 - r) * model.scale  # output pixels more than r LR pixels above/left of the seams
    assert diff[..., :far, :far].max() < ATOL
    # The default overlap (the radius, here wider than the tile) removes the seams.
    torch.testing.assert_close(tiled_forward(model, x, 16), whole(model, x), atol=ATOL, rtol=0)


def test_receptive_radius_grows_with_blocks(compose):
    """Each residual block adds two 3x3 convs: +2 LR pixels."""
    radii = [receptive_radius(build(compose, ["model=srresnet", f"model.blocks={b}"])[0])
             for b in (1, 2, 4)]
    assert radii == [4 + 2 * b for b in (1, 2, 4)]  # head, body tail, up conv, HR tail: 4


def test_receptive_radius_of_default_srresnet(compose):
    """SRResNet-16 x2, 3x3 head: head 1 + 16 blocks x 2 + body tail 1 + up conv 1 + tail 1 = 36.

    Narrowed to 16 channels to save time: the width does not change the radius.
    """
    model, c = build(compose, ["model=srresnet", "model.blocks=16"])
    assert receptive_radius(model, c) == 36
    assert receptive_radius(model, c) == 36  # cached
    assert model.training is False


def test_radius_restores_train_mode(compose):
    model, _ = build(compose, ["model=srresnet"])
    model.train()
    receptive_radius(model)
    assert model.training


def test_bad_arguments(compose):
    model, c = build(compose, ["model=srresnet"])
    x = torch.rand(1, c, 8, 8)
    with pytest.raises(ValueError, match="tile"):
        tiled_forward(model, x, 0)
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(model, x, 4, overlap=-1)


def test_global_operation_has_no_radius():
    class Global(torch.nn.Module):
        upsampled_input, scale = True, 1

        def forward(self, x):
            return x + x.mean(dim=(-2, -1), keepdim=True)

    with pytest.raises(ValueError, match="finite"):
        receptive_radius(Global(), 1, limit=64)


@pytest.mark.parametrize("make", [
    lambda compose: build(compose, ["model=srresnet"]),
    lambda compose: build(compose, ["model=srresnet", "scale=3", "model.upsampler=bicubic"]),
    lambda compose: build(compose, ["model=vdsr"]),
    lambda compose: (Bicubic(3), 3),
    lambda compose: (Fractional(), 3),
], ids=["srresnet", "srresnet-x3-bicubic", "vdsr", "bicubic-x3", "fractional-x1.5"])
def test_perturbation_probe_finds_the_gradient_radius(compose, make):
    """The probe of ``opaque`` models (onnxruntime: no gradients) changes one input pixel and
    sees which outputs change; on torch models it must find what the gradients find."""
    torch.manual_seed(0)
    model, c = make(compose)
    by_gradient = receptive_radius(model, c)
    opaque, _ = make(compose)  # a new instance: the radius is cached per instance
    opaque.opaque = True
    assert receptive_radius(opaque, c) == by_gradient > 0
